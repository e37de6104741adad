package store

// crashPoint, when set, is called at each step of the store's operations
// where a crash leaves something to settle: the kill -9 test
// (crash_test.go) sets it in a child process and kills that process at
// one of them. Nil in the driver.
var crashPoint func(step string)

func step(name string) {
	if crashPoint != nil {
		crashPoint(name)
	}
}
