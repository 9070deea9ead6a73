// Package handlers holds the router's handlers and the registry that routes
// name them from.
//
// Adding a handler is a file here with its options struct and constructor,
// one line in Registry, a route in the YAML with its options, and a test
// that uses package testkit/handlertest. Nothing in app or config changes.
package handlers

import "sort"

// Registry returns every handler, by the name routes use in the YAML.
func Registry() map[string]Spec {
	return map[string]Spec{
		"notification": {New: newNotification, Publishes: true},
		"webhook":      WithOptions(webhookDefaults, newWebhook),
		"audit":        WithOptions(auditDefaults, newAudit),
		"log":          WithOptions(logDefaults, newLog),
	}
}

// Names returns the registry's handler names, sorted.
func Names(r map[string]Spec) []string {
	names := make([]string, 0, len(r))
	for name := range r {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}
