package main

import (
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// progress draws qemu-img's -p progress line, "    (12.34/100%)" redrawn in
// place with '\r', whenever the done fraction has moved by at least one
// percent. It draws nothing unless its output is a terminal, so logs and
// pipes stay clean.
type progress struct {
	mu      sync.Mutex // set is called by convert's workers
	w       io.Writer
	enabled bool
	total   int64
	done    int64
	shown   float64
}

// newProgress returns a progress bar over total bytes writing to w; it is
// active only if on is set and w is a terminal.
func newProgress(w io.Writer, on bool, total int64) *progress {
	p := &progress{w: w, enabled: on && isTerminal(w), total: total, shown: -100}
	p.draw(0)
	return p
}

// isTerminal reports whether w is a tty (TCGETS succeeds on it).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// set records that done bytes are done.
func (p *progress) set(done int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done = done
	pct := 100.0
	if p.total > 0 {
		pct = float64(p.done) * 100 / float64(p.total)
	}
	p.draw(min(pct, 100))
}

func (p *progress) draw(pct float64) {
	if !p.enabled || (pct-p.shown < 1 && pct < 100) || pct == p.shown {
		return
	}
	p.shown = pct
	fmt.Fprintf(p.w, "    (%3.2f/100%%)\r", pct)
}

// finish draws 100% and ends the line.
func (p *progress) finish() {
	if !p.enabled {
		return
	}
	p.draw(100)
	fmt.Fprintln(p.w)
}
