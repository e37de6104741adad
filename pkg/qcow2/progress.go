package qcow2

import (
	"context"
	"errors"
)

// Progress is what a long operation reports as it goes: Phase names the
// pass ("mappings": L2 tables walked; "refcounts": refcount blocks
// compared), Done counts its units, Total is their number when it is
// known in advance, else 0.
type Progress struct {
	Phase       string
	Done, Total int64
}

// longRun carries a long operation's cancellation and progress hook to
// the loops that do its work.
type longRun struct {
	ctx      context.Context
	progress func(Progress)
}

// step reports a unit of work done and returns the context's error once
// it is cancelled: the loops stop there, with what they did so far as
// safe to keep as any single step (a check's repairs, a rebuild that the
// dirty bit makes the next open redo).
func (r longRun) step(phase string, done, total int64) error {
	if r.ctx != nil {
		if err := r.ctx.Err(); err != nil {
			return err
		}
	}
	if r.progress != nil {
		r.progress(Progress{Phase: phase, Done: done, Total: total})
	}
	return nil
}

// cancelled reports whether err is a context's: the operation was
// stopped, not failed.
func cancelled(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}
