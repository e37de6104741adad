package nbdattach

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
)

// growMem is a memBackend that can grow (Resizer). fail, if set, is what
// Resize returns instead of growing; lie makes Size report one byte less
// than asked after a resize; panics makes Resize panic.
type growMem struct {
	*memBackend
	resizes int
	fail    error
	lie     bool
	panics  bool
	// gate, if set, holds Resize after it announces itself on entered.
	gate, entered chan struct{}
}

func (g *growMem) Size() int64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return int64(len(g.data))
}

func (g *growMem) Resize(size int64) error {
	if g.panics {
		panic("resize bug")
	}
	if g.gate != nil {
		g.entered <- struct{}{}
		<-g.gate
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.resizes++
	if g.fail != nil {
		return g.fail
	}
	if g.lie {
		size--
	}
	g.data = append(g.data, make([]byte, size-int64(len(g.data)))...)
	return nil
}

func newGrowMem(size int) *growMem { return &growMem{memBackend: newMem(size, allCaps)} }

// A grown export takes requests past its old end on the connections that
// were open before (the kernel's, told by RECONFIGURE, and a negotiated
// one), and new connections are told the new size.
func TestResizeExportGrowsOpenAndNewConnections(t *testing.T) {
	g := newGrowMem(1 << 20)
	s := newTestServer(t, Options{}, &Export{Name: "vol", Backend: g})
	old, _ := connect(t, s)
	if size, _ := old.negotiate("vol", false); size != 1<<20 {
		t.Fatalf("negotiated size %d", size)
	}
	cli, srv := socketPair(t)
	t.Cleanup(func() { cli.Close() })
	go s.ServeTransmission(srv, "vol")
	kernel := &testClient{t: t, c: cli}

	payload := []byte("past the old end")
	for _, tc := range []*testClient{old, kernel} {
		tc.request(cmdWrite, 0, 1, 2<<20, uint32(len(payload)), payload)
		if r := tc.readReply(); r.errno != errNoSpc {
			t.Fatalf("write past the end before the resize: errno %d, want ENOSPC", r.errno)
		}
	}
	if err := s.ResizeExport("vol", 4<<20); err != nil {
		t.Fatal(err)
	}
	for i, tc := range []*testClient{old, kernel} {
		off := uint64(2<<20 + i*4096)
		tc.request(cmdWrite, 0, 2, off, uint32(len(payload)), payload)
		if r := tc.readReply(); r.errno != 0 {
			t.Fatalf("connection %d: write past the old end after the resize: errno %d", i, r.errno)
		}
		tc.request(cmdRead, 0, 3, off, uint32(len(payload)), nil)
		if r := tc.readReply(); r.errno != 0 || !bytes.Equal(r.data, payload) {
			t.Fatalf("connection %d: read back %+v", i, r)
		}
		tc.request(cmdRead, 0, 4, 4<<20-1, 2, nil)
		if r := tc.readReply(); r.errno != errInval {
			t.Fatalf("connection %d: read across the new end: errno %d, want EINVAL", i, r.errno)
		}
	}
	fresh, _ := connect(t, s)
	if size, _ := fresh.negotiate("vol", false); size != 4<<20 {
		t.Errorf("a new connection was told %d bytes, want %d", size, 4<<20)
	}
	fresh2, _ := connect(t, s)
	fresh2.hello(clientFixedNewstyle)
	fresh2.sendOpt(optExportName, []byte("vol"))
	if size := binary.BigEndian.Uint64(fresh2.read(10)); size != 4<<20 {
		t.Errorf("EXPORT_NAME told %d bytes, want %d", size, 4<<20)
	}
}

// What ResizeExport refuses leaves the export as it was: requests past
// the old end are still refused.
func TestResizeExportRefusals(t *testing.T) {
	bad := errors.New("disk full")
	cases := []struct {
		name    string
		backend Backend
		size    int64
		want    error
	}{
		{"shrink", newGrowMem(1 << 20), 1 << 19, ErrShrink},
		{"not a Resizer", newMem(1<<20, allCaps), 2 << 20, ErrNotSupported},
		{"read-only", &growMem{memBackend: newMem(1<<20, Caps{ReadOnly: true})}, 2 << 20, ErrReadOnly},
		{"backend error", &growMem{memBackend: newMem(1<<20, allCaps), fail: bad}, 2 << 20, bad},
		{"backend size differs", &growMem{memBackend: newMem(1<<20, allCaps), lie: true}, 2 << 20, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := newTestServer(t, Options{}, &Export{Name: "vol", Backend: c.backend})
			err := s.ResizeExport("vol", c.size)
			if err == nil || (c.want != nil && !errors.Is(err, c.want)) {
				t.Fatalf("ResizeExport: %v, want %v", err, c.want)
			}
			tc, _ := connect(t, s)
			if size, _ := tc.negotiate("vol", false); size != 1<<20 {
				t.Errorf("size after a refused resize: %d", size)
			}
			tc.request(cmdRead, 0, 1, 1<<20, 1, nil)
			if r := tc.readReply(); r.errno != errInval {
				t.Errorf("read past the old end after a refused resize: errno %d", r.errno)
			}
		})
	}
	s := newTestServer(t, Options{}, &Export{Name: "vol", Backend: newGrowMem(1 << 20)})
	if err := s.ResizeExport("nope", 2<<20); err == nil {
		t.Error("resized an export that does not exist")
	}
}

// The same size again is no change and does not reach the backend.
func TestResizeExportSameSize(t *testing.T) {
	g := newGrowMem(1 << 20)
	s := newTestServer(t, Options{}, &Export{Name: "vol", Backend: g})
	if err := s.ResizeExport("vol", 1<<20); err != nil {
		t.Fatal(err)
	}
	if g.resizes != 0 {
		t.Errorf("the backend was resized %d times", g.resizes)
	}
}

// A panic in the backend's Resize fences the export instead of ending the
// process.
func TestResizeExportPanicFences(t *testing.T) {
	g := newGrowMem(1 << 20)
	g.panics = true
	s := newTestServer(t, Options{}, &Export{Name: "vol", Backend: g})
	if err := s.ResizeExport("vol", 2<<20); err == nil {
		t.Fatal("a panicking resize succeeded")
	}
	if err := s.Fenced("vol"); !errors.Is(err, ErrFenced) {
		t.Fatalf("Fenced = %v, want ErrFenced", err)
	}
	tc, _ := connect(t, s)
	tc.negotiate("vol", false)
	tc.request(cmdRead, 0, 1, 0, 1, nil)
	if r := tc.readReply(); r.errno != errIO {
		t.Errorf("read on the fenced export: errno %d, want EIO", r.errno)
	}
}

func TestFileBackendResize(t *testing.T) {
	p := filepath.Join(t.TempDir(), "disk.raw")
	if err := os.WriteFile(p, bytes.Repeat([]byte{7}, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	b, err := OpenFileBackend(p, false)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.Resize(1 << 20); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(p); b.Size() != 1<<20 || st.Size() != 1<<20 {
		t.Fatalf("size %d, file %d, want %d", b.Size(), st.Size(), 1<<20)
	}
	got := make([]byte, 8192)
	if _, err := b.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:4096], bytes.Repeat([]byte{7}, 4096)) || !bytes.Equal(got[4096:], make([]byte, 4096)) {
		t.Error("growing changed the old data or the new range is not zero")
	}
	if err := b.Resize(4096); !errors.Is(err, ErrShrink) {
		t.Errorf("shrink: %v, want ErrShrink", err)
	}
	ro, err := OpenFileBackend(p, true)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if err := ro.Resize(2 << 20); !errors.Is(err, ErrReadOnly) {
		t.Errorf("read-only resize: %v", err)
	}
}

// CloseExport waits for a resize inside the backend, as it waits for
// requests: the caller closes the backend only after both. A closed
// export takes no resize.
func TestCloseExportWaitsForResize(t *testing.T) {
	g := newGrowMem(1 << 20)
	g.gate, g.entered = make(chan struct{}), make(chan struct{}, 1)
	s := newTestServer(t, Options{}, &Export{Name: "vol", Backend: g})
	resized := make(chan error, 1)
	go func() { resized <- s.ResizeExport("vol", 2<<20) }()
	testtools.Within(t, "the resize to reach the backend", g.entered)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := s.CloseExport(ctx, "vol"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("CloseExport during a resize: %v, want the deadline", err)
	}
	close(g.gate)
	if err := testtools.Within(t, "the resize to return", resized); err != nil {
		t.Fatal(err)
	}
	if err := s.CloseExport(context.Background(), "vol"); err != nil {
		t.Fatal(err)
	}
	if err := s.ResizeExport("vol", 4<<20); err == nil {
		t.Error("a closed export was resized")
	}
}
