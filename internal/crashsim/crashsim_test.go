package crashsim

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"io"
	"sync"
	"testing"
)

func fill(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }

func TestRecorderIsAFile(t *testing.T) {
	r := NewRecorder([]byte("hello"))
	var _ File = r
	if _, err := r.WriteAt([]byte("XY"), 8); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 10)
	if n, err := r.ReadAt(got, 0); n != 10 || err != nil {
		t.Fatalf("ReadAt = %d, %v", n, err)
	}
	if want := []byte("hello\x00\x00\x00XY"); !bytes.Equal(got, want) {
		t.Fatalf("got %q want %q", got, want)
	}
	if n, err := r.ReadAt(make([]byte, 4), 8); n != 2 || err != io.EOF {
		t.Fatalf("short ReadAt = %d, %v; want 2, EOF", n, err)
	}
	if err := r.PunchHole(1, 100); err != nil { // past EOF: size unchanged
		t.Fatal(err)
	}
	if sz, _ := r.Size(); sz != 10 {
		t.Fatalf("size after punch %d", sz)
	}
	if err := r.Truncate(3); err != nil {
		t.Fatal(err)
	}
	if err := r.Truncate(6); err != nil { // regrow: the cut bytes read as zero
		t.Fatal(err)
	}
	if got := r.Bytes(); !bytes.Equal(got, []byte("h\x00\x00\x00\x00\x00")) {
		t.Fatalf("after truncates %q", got)
	}
	if err := r.Sync(); err != nil {
		t.Fatal(err)
	}
	rec := r.Recording()
	kinds := []OpKind{OpWrite, OpPunch, OpTruncate, OpTruncate, OpSync}
	if len(rec.Ops()) != len(kinds) {
		t.Fatalf("recorded %d ops: %v", len(rec.Ops()), rec.Ops())
	}
	for i, k := range kinds {
		if rec.Ops()[i].Kind != k {
			t.Fatalf("op %d is %v, want %v", i, rec.Ops()[i].Kind, k)
		}
	}
	if !bytes.Equal(rec.Replay(len(rec.Ops())), r.Bytes()) {
		t.Fatal("replay of the whole stream differs from the live file")
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.WriteAt([]byte{1}, 0); err != ErrClosed {
		t.Fatalf("write after close: %v", err)
	}
	r.Reopen()
	if _, err := r.WriteAt([]byte{1}, 0); err != nil {
		t.Fatal(err)
	}
}

func TestRecorderConcurrent(t *testing.T) {
	r := NewRecorder(nil)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 100 {
				off := int64(g*100+i) * 16
				if _, err := r.WriteAt(fill(byte(g+1), 16), off); err != nil {
					t.Error(err)
				}
				buf := make([]byte, 16)
				if _, err := r.ReadAt(buf, off); err != nil || !bytes.Equal(buf, fill(byte(g+1), 16)) {
					t.Errorf("read back %v %v", buf, err)
				}
				if i%10 == 0 {
					_ = r.Sync()
				}
			}
		}()
	}
	wg.Wait()
	rec := r.Recording()
	if got := rec.Replay(len(rec.Ops())); !bytes.Equal(got, r.Bytes()) {
		t.Fatal("replay differs from the live file")
	}
}

// TestStatesReorderAndTear shows that the generator produces the states a
// power failure can leave: later writes lost while earlier ones persist,
// multi-sector writes torn, and nothing from before a completed Sync lost.
func TestStatesReorderAndTear(t *testing.T) {
	r := NewRecorder(nil)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	_, err := r.WriteAt(fill('0', 8*SectorSize), 0) // op 0
	must(err)
	must(r.Sync())                                 // op 1
	_, err = r.WriteAt(fill('A', 4*SectorSize), 0) // op 2: sectors 0-3
	must(err)
	_, err = r.WriteAt(fill('B', SectorSize), 0) // op 3: overwrites sector 0
	must(err)
	must(r.PunchHole(6*SectorSize, SectorSize)) // op 4: sector 6 -> zeros
	must(r.Truncate(10 * SectorSize))           // op 5
	rec := r.Recording()
	states := rec.States(Plan{Seed: 1, ReorderedPerEpoch: 400, Prefixes: 6})

	var sawLaterLost, sawTorn, sawBoth, sawNone, sawPrefix, sawBoundary bool
	for _, s := range states {
		data := rec.Materialize(s)
		if !bytes.Equal(data, rec.Materialize(s)) {
			t.Fatalf("%v is not deterministic", s)
		}
		sector := func(i int) byte {
			if (i+1)*SectorSize > len(data) {
				return 'x' // absent
			}
			sec := data[i*SectorSize : (i+1)*SectorSize]
			if !bytes.Equal(sec, fill(sec[0], SectorSize)) {
				t.Fatalf("%v: sector %d is not uniform: a write tore inside a sector", s, i)
			}
			return sec[0]
		}
		switch s.Kind {
		case Boundary:
			sawBoundary = true
		case Prefix:
			sawPrefix = true
			if !bytes.Equal(data, rec.Replay(s.Crash)) {
				t.Fatalf("%v differs from the in-order replay", s)
			}
		}
		if s.Durable >= 2 { // after the sync: op 0 persisted everywhere
			for i := 1; i < 4; i++ {
				if c := sector(i); c != '0' && c != 'A' {
					t.Fatalf("%v: sector %d = %q, want '0' or 'A'", s, i, c)
				}
			}
			if c := sector(7); c != '0' {
				t.Fatalf("%v: synced sector 7 = %q", s, c)
			}
		}
		if s.Kind != Reordered || s.Crash < 4 {
			continue
		}
		s0 := sector(0)
		nA := 0
		for i := 0; i < 4; i++ {
			if sector(i) == 'A' {
				nA++
			}
		}
		switch {
		case s0 == 'A':
			sawLaterLost = true // op 3 lost (or applied before op 2), op 2 persisted
		case s0 == 'B' && nA == 3:
			sawBoth = true
		case s0 == '0' && nA == 0:
			sawNone = true
		}
		if nA > 0 && nA < 4 && s0 != 'B' {
			sawTorn = true
		}
	}
	for name, ok := range map[string]bool{
		"a later write lost while an earlier one persisted": sawLaterLost,
		"a torn multi-sector write":                         sawTorn,
		"both writes persisted":                             sawBoth,
		"neither write persisted":                           sawNone,
		"a prefix state":                                    sawPrefix,
		"a boundary state":                                  sawBoundary,
	} {
		if !ok {
			t.Errorf("never saw %s among %d states", name, len(states))
		}
	}
	if t.Failed() {
		for _, s := range states[:10] {
			t.Log(rec.Explain(s))
		}
	}
}

func TestStatesDeterministic(t *testing.T) {
	r := NewRecorder(nil)
	for i := range 20 {
		_, _ = r.WriteAt(fill(byte(i), 1000), int64(i*700))
		if i%6 == 5 {
			_ = r.Sync()
		}
	}
	rec := r.Recording()
	p := Plan{Seed: 42, ReorderedPerEpoch: 10, Prefixes: 5}
	a, b := rec.States(p), rec.States(p)
	if len(a) != len(b) {
		t.Fatal("state lists differ in length")
	}
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("state %d differs: %v vs %v", i, a[i], b[i])
		}
	}
	// A state materializes the same alone as after others (cache reuse).
	last := a[len(a)-1]
	fresh := r.Recording()
	if !bytes.Equal(rec.Materialize(last), fresh.Materialize(last)) {
		t.Fatal("materialize depends on what was materialized before")
	}
	if c := rec.States(Plan{Seed: 43, ReorderedPerEpoch: 10, Prefixes: 5}); len(c) == len(a) {
		same := true
		for i := range c {
			same = same && c[i] == a[i]
		}
		if same {
			t.Fatal("a different seed gave the same states")
		}
	}
}

func TestSince(t *testing.T) {
	r := NewRecorder([]byte("base"))
	_, _ = r.WriteAt([]byte("ABCD"), 0)
	_, _ = r.WriteAt([]byte("EF"), 4)
	_, _ = r.WriteAt([]byte("G"), 0)
	rec := r.Recording().Since(2)
	if got := string(rec.Base()); got != "ABCDEF" {
		t.Fatalf("base %q", got)
	}
	if len(rec.Ops()) != 1 {
		t.Fatalf("%d ops", len(rec.Ops()))
	}
	if got := string(rec.Replay(1)); got != "GBCDEF" {
		t.Fatalf("replay %q", got)
	}
}

// A toy store: a commit record in sector 0 points at a payload elsewhere
// and carries its checksum. The invariant a crash must keep: a valid
// record points at a payload with that checksum.
type toyStore struct{ f File }

const toyMagic = 0x746f7921

func (s toyStore) commit(payload []byte, off int64, barrier bool) error {
	if _, err := s.f.WriteAt(payload, off); err != nil {
		return err
	}
	if barrier {
		if err := s.f.Sync(); err != nil {
			return err
		}
	}
	rec := make([]byte, 20)
	binary.LittleEndian.PutUint32(rec[0:], toyMagic)
	binary.LittleEndian.PutUint64(rec[4:], uint64(off))
	binary.LittleEndian.PutUint32(rec[12:], uint32(len(payload)))
	binary.LittleEndian.PutUint32(rec[16:], crc32.ChecksumIEEE(payload))
	if _, err := s.f.WriteAt(rec, 0); err != nil {
		return err
	}
	return s.f.Sync()
}

// toyCheck returns "" when the image keeps the invariant.
func toyCheck(img []byte) string {
	if len(img) < 20 || binary.LittleEndian.Uint32(img) != toyMagic {
		return "" // no commit yet
	}
	off := int64(binary.LittleEndian.Uint64(img[4:]))
	n := int64(binary.LittleEndian.Uint32(img[12:]))
	sum := binary.LittleEndian.Uint32(img[16:])
	if off+n > int64(len(img)) {
		return "record points past the end of the file"
	}
	if crc32.ChecksumIEEE(img[off:off+n]) != sum {
		return "record points at a payload that did not persist"
	}
	return ""
}

func toyRun(t *testing.T, barrier bool) (bad int, total int, example string) {
	r := NewRecorder(make([]byte, SectorSize))
	s := toyStore{r}
	for i := range 6 {
		payload := bytes.Repeat([]byte{byte('a' + i), byte(i)}, 3*SectorSize/2+100)
		if err := s.commit(payload, int64(SectorSize*(1+8*(i%3))), barrier); err != nil {
			t.Fatal(err)
		}
	}
	rec := r.Recording()
	for _, st := range rec.States(Plan{Seed: 7, ReorderedPerEpoch: 50, Prefixes: 40}) {
		total++
		if msg := toyCheck(rec.Materialize(st)); msg != "" {
			bad++
			if example == "" {
				example = msg + "\n" + rec.Explain(st)
			}
		}
	}
	return bad, total, example
}

// TestUnsafeWriterIsCaught proves the generator can fail a test: a store
// that writes its commit record without a barrier after the payload is
// caught, and the same store with the barrier passes every state.
func TestUnsafeWriterIsCaught(t *testing.T) {
	bad, total, example := toyRun(t, false)
	if bad == 0 {
		t.Fatalf("no crash state out of %d caught the missing barrier", total)
	}
	t.Logf("unsafe writer: %d of %d states broken; e.g. %s", bad, total, example)
	if bad, total, example := toyRun(t, true); bad != 0 {
		t.Fatalf("safe writer: %d of %d states broken; e.g. %s", bad, total, example)
	}
}

// TestPointerBeforeDataCaughtByPrefix: writing the pointer before the data
// is wrong even without a power failure: a process kill between the two
// is a Prefix state.
func TestPointerBeforeDataCaughtByPrefix(t *testing.T) {
	r := NewRecorder(make([]byte, SectorSize))
	payload := fill('p', 3*SectorSize)
	rec := make([]byte, 20)
	binary.LittleEndian.PutUint32(rec[0:], toyMagic)
	binary.LittleEndian.PutUint64(rec[4:], SectorSize)
	binary.LittleEndian.PutUint32(rec[12:], uint32(len(payload)))
	binary.LittleEndian.PutUint32(rec[16:], crc32.ChecksumIEEE(payload))
	_, _ = r.WriteAt(rec, 0)
	_, _ = r.WriteAt(payload, SectorSize)
	_ = r.Sync()
	recd := r.Recording()
	caught := false
	for _, st := range recd.States(Plan{Seed: 1, Prefixes: 3, NoBoundaries: true}) {
		if toyCheck(recd.Materialize(st)) != "" {
			caught = true
		}
	}
	if !caught {
		t.Fatal("prefix states did not catch a pointer written before its data")
	}
}

// TestGroupStates: with two files on one Clock, a file's Sync orders its
// own earlier writes before everything issued later, in any file, and
// covers nothing of the other file.
func TestGroupStates(t *testing.T) {
	var c Clock
	a, b := NewRecorderOn(&c, nil), NewRecorderOn(&c, nil)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	_, err := a.WriteAt(fill('a', SectorSize), 0) // seq 0
	must(err)
	must(a.Sync())                               // seq 1: covers a's write
	_, err = b.WriteAt(fill('b', SectorSize), 0) // seq 2
	must(err)
	_, err = a.WriteAt(fill('A', SectorSize), 0) // seq 3: never synced
	must(err)
	must(b.Sync()) // seq 4: covers b's write, not a's second
	if got := c.Now(); got != 5 {
		t.Fatalf("clock at %d after 5 operations", got)
	}
	recs := []*Recording{a.Recording(), b.Recording()}
	states := GroupStates(recs, Plan{Seed: 7, ReorderedPerEpoch: 50, Prefixes: 5})
	var bWithoutA, bSyncedAUnsynced, neither bool
	for _, s := range states {
		ga, gb := recs[0].Materialize(s.Files[0]), recs[1].Materialize(s.Files[1])
		va, vb := byte(0), byte(0)
		if len(ga) > 0 {
			va = ga[0]
		}
		if len(gb) > 0 {
			vb = gb[0]
		}
		if vb == 'b' && va == 0 {
			t.Fatalf("%v: b's write (issued after a's sync) persisted without a's first write", s)
		}
		if s.Crash > 1 && va == 0 {
			t.Fatalf("%v: a's synced write lost", s)
		}
		if s.Crash > 4 && vb != 'b' {
			t.Fatalf("%v: b's synced write lost", s)
		}
		if s.Crash <= 1 && s.Kind == Boundary && (va != 0 || vb != 0) {
			t.Fatalf("%v: boundary before any sync holds data", s)
		}
		bWithoutA = bWithoutA || vb == 'b' && va == 'a'
		bSyncedAUnsynced = bSyncedAUnsynced || s.Crash > 4 && va == 'a'
		neither = neither || va == 0 && vb == 0
	}
	if !bWithoutA || !bSyncedAUnsynced || !neither {
		t.Fatalf("missing states: b without a's later write %v, b synced while a's later write lost %v, nothing %v (of %d states)",
			bWithoutA, bSyncedAUnsynced, neither, len(states))
	}
}
