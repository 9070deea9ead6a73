package events

import "regexp"

// emailLike matches what could be an email address.
var emailLike = regexp.MustCompile(`[^\s"'<>,;:@]+@[^\s"'<>,;:@]+`)

// MaskEmails replaces anything like an email address in s with <email>:
// events carry them, and they are personal data wherever s is shown.
func MaskEmails(s string) string { return emailLike.ReplaceAllString(s, "<email>") }
