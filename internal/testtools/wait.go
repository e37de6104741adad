package testtools

import (
	"testing"
	"time"
)

// Patience bounds how long a test waits for something that happens at once
// on an idle machine (a server's socket appearing, a process exiting): far
// longer than a loaded 2-core host needs, so only a real hang reaches it.
const Patience = 2 * time.Minute

// WaitFor polls cond until it returns true, and fails the test, saying
// what it waited for, if that takes longer than Patience. A test waits
// on the condition itself, never on a sleep.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(Patience)
	for delay := time.Millisecond; !cond(); delay = min(2*delay, 50*time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s", Patience, what)
		}
		time.Sleep(delay)
	}
}

// Within returns the value of ch, or fails the test, saying what it waited
// for, if none arrives within Patience.
func Within[T any](t testing.TB, what string, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(Patience):
		t.Fatalf("waited %v for %s", Patience, what)
		var zero T
		return zero
	}
}
