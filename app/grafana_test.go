package app_test

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/eventrouter/eventrouter/app"
	"github.com/eventrouter/eventrouter/testkit/kafkatest"
)

// TestGrafanaDashboardQueriesRealMetrics holds deploy/grafana/eventrouter.json
// to a real /metrics scrape: every series a panel queries must be one the
// daemon exports, once each kind of route has handled a record.
func TestGrafanaDashboardQueriesRealMetrics(t *testing.T) {
	raw, err := os.ReadFile("../deploy/grafana/eventrouter.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Type    string `json:"type"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("the dashboard is not JSON: %v", err)
	}

	brokers := []string{kafkatest.Embedded(t)}
	hooks := &hookReceiver{}
	url := serveHooks(t, hooks)
	r := newRoute()
	routes := fmt.Sprintf(`  - name: webhook
    handler: webhook
    subscribe_topic: %[1]s
    consumer_group: %[1]s-webhook
    poison_topic: %[1]s.webhook-poison
    options:
      url: %[2]s
`, r.in, url)
	d := startDaemon(t, testConfig(t, brokers, r, routes+opsYAML), opsOptions(app.Options{}))
	base := "http://" + d.OpsAddr()
	kafkatest.Produce(t, brokers, r.in, event(1, "a@example.com"), event(1, "a@example.com"), kafkatest.Record{Value: []byte("bad")})
	var scrape string
	waitFor(t, time.Minute, "the records handled and poisoned", func() bool {
		_, scrape = get(t, base+"/metrics", true)
		handled, _ := metric(scrape, `eventrouter_messages_handled_total{route="welcome"}`)
		poisoned, _ := metric(scrape, `eventrouter_messages_poisoned_total{route="welcome"}`)
		return handled >= 2 && poisoned >= 1 && hooks.distinct() >= 2
	})
	exported := map[string]bool{}
	for _, line := range strings.Split(scrape, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		exported[strings.FieldsFunc(line, func(r rune) bool { return r == '{' || r == ' ' })[0]] = true
	}

	name := regexp.MustCompile(`\beventrouter_[a-z_]+`)
	queried := 0
	check := func(where, expr string) {
		for _, n := range name.FindAllString(expr, -1) {
			queried++
			if !exported[n] {
				t.Errorf("%s queries %s; the daemon exports no such series", where, n)
			}
		}
	}
	for _, p := range dash.Panels {
		if p.Type != "row" && len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, target := range p.Targets {
			check(fmt.Sprintf("panel %q", p.Title), target.Expr)
		}
	}
	for _, v := range dash.Templating.List {
		check("variable", v.Definition)
	}
	if queried < 10 {
		t.Errorf("the dashboard queries %d series; want the rates, lag, latency, pauses and poisoned records at least", queried)
	}
}
