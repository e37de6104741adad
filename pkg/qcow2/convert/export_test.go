package convert

// SetMapWindow sets how much of the source one Map call covers and
// returns what restores it.
func SetMapWindow(n int64) func() {
	old := mapWindow
	mapWindow = n
	return func() { mapWindow = old }
}
