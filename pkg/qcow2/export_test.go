package qcow2

// SetFreezeHook makes l call fn after each durable step of a Freeze
// ("settled", "linked", "created", "renamed"); an error from fn fails the
// Freeze at that point.
func SetFreezeHook(l *Live, fn func(step string) error) { l.stepHook = fn }

// CommitImages is Commit on images already open: top without its chain
// (read-only with drop), base writable. It closes both.
func CommitImages(top *Image, base Disk, drop bool) error { return commitImages(top, base, drop) }
