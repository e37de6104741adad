package qemutest

import (
	"bufio"
	"bytes"
	"io"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// Holder is a qemu-io process that keeps an image open, and so holds
// QEMU's locks on it (and on its backing files), until Release.
type Holder struct {
	t     testing.TB
	cmd   *exec.Cmd
	stdin io.WriteCloser
	once  sync.Once
	// exited is closed when the process has exited; stderr is complete
	// then.
	exited chan struct{}
	stderr bytes.Buffer
}

// HoldImage starts qemu-io on path with its stdin kept open (args go
// before the file name: "-r" for a reader, "-r", "-U" for a forced-share
// reader, nothing for a writer) and returns once qemu-io has opened the
// image: it prints its first prompt only after the open. A qemu-io that
// cannot open the image fails the test. Release (registered as a cleanup
// too) ends it.
func HoldImage(t testing.TB, path, format string, args ...string) *Holder {
	t.Helper()
	argv := append([]string{"-f", format}, args...)
	argv = append(argv, path)
	h := &Holder{t: t, cmd: exec.Command("qemu-io", argv...), exited: make(chan struct{})}
	h.cmd.Stderr = &h.stderr
	var err error
	if h.stdin, err = h.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := h.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := h.cmd.Start(); err != nil {
		t.Fatalf("%s: %v", quoteCmd("qemu-io", argv), err)
	}
	t.Cleanup(h.Release)
	prompt := make(chan bool, 1)
	go func() {
		// The prompt has no newline: read byte by byte until it shows.
		r := bufio.NewReader(stdout)
		var seen []byte
		for {
			b, err := r.ReadByte()
			if err != nil {
				prompt <- false
				break
			}
			seen = append(seen, b)
			if strings.HasSuffix(string(seen), "qemu-io> ") {
				prompt <- true
				break
			}
		}
		io.Copy(io.Discard, r)
		h.cmd.Wait()
		close(h.exited)
	}()
	select {
	case ok := <-prompt:
		if !ok {
			<-h.exited
			t.Fatalf("%s: exited before opening the image: %s", quoteCmd("qemu-io", argv), strings.TrimSpace(h.stderr.String()))
		}
	case <-time.After(Timeout):
		t.Fatalf("%s: no prompt within %v", quoteCmd("qemu-io", argv), Timeout)
	}
	return h
}

// Release closes qemu-io's stdin, which makes it close the image and
// exit, and waits for that: the image's locks are gone when it returns.
func (h *Holder) Release() {
	h.once.Do(func() {
		h.stdin.Close()
		select {
		case <-h.exited:
		case <-time.After(Timeout):
			h.cmd.Process.Kill()
			<-h.exited
			h.t.Errorf("qemu-io did not exit within %v of its stdin closing", Timeout)
		}
	})
}
