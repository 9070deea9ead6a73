// Package retry classifies handler errors for the router's retry policy,
// retries transient ones with backoff, and pauses a route while something
// it depends on is down.
//
// An error is one of three kinds:
//   - permanent (Permanent): retrying cannot fix it, such as an invalid
//     event or a recipient the mail server rejects. The message goes to the
//     poison topic at once.
//   - unavailable (Unavailable): a dependency is down, such as a mail server
//     that refuses connections. The message is fine; the route waits for the
//     dependency (see Breaker) instead of using up the message's retries.
//   - anything else is transient: retried with backoff (see Policy), then
//     poisoned.
package retry

import (
	"errors"
	"time"
)

// PermanentError marks an error that retrying cannot fix.
type PermanentError struct {
	Err error
}

func (e *PermanentError) Error() string { return e.Err.Error() }

func (e *PermanentError) Unwrap() error { return e.Err }

// Permanent marks err as permanent. It returns nil for a nil err.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &PermanentError{Err: err}
}

// IsPermanent reports whether err, or an error it wraps, is permanent.
func IsPermanent(err error) bool {
	var p *PermanentError
	return errors.As(err, &p)
}

// UnavailableError marks an error that says a dependency is down, not that
// the message is bad.
type UnavailableError struct {
	// Dependency names what is down, such as "smtp" or "kafka". Only an
	// attempt that reaches it again (see Reached) resumes a paused route.
	Dependency string
	// After, when positive, is how long the dependency asked to be left
	// alone (an HTTP Retry-After, say): the route pauses at least that
	// long, up to MaxAfter.
	After time.Duration
	Err   error
}

func (e *UnavailableError) Error() string { return e.Err.Error() }

func (e *UnavailableError) Unwrap() error { return e.Err }

// Unavailable marks err as an outage of dependency. It returns nil for a
// nil err.
func Unavailable(dependency string, err error) error {
	if err == nil {
		return nil
	}
	return &UnavailableError{Dependency: dependency, Err: err}
}

// MaxAfter caps the pause a dependency may ask for with
// UnavailableFor, so that a bad Retry-After cannot stall a route for days.
const MaxAfter = 5 * time.Minute

// UnavailableFor is Unavailable for a dependency that said when to come
// back: the route pauses for at least after (at most MaxAfter). It returns
// nil for a nil err.
func UnavailableFor(dependency string, after time.Duration, err error) error {
	if err == nil {
		return nil
	}
	return &UnavailableError{Dependency: dependency, After: min(after, MaxAfter), Err: err}
}

// IsUnavailable reports whether err, or an error it wraps, is an outage.
func IsUnavailable(err error) bool {
	var u *UnavailableError
	return errors.As(err, &u)
}
