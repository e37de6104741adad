package qcow2

import (
	"encoding/binary"
	"errors"
	"reflect"
	"testing"
)

func TestBitmapDirRoundTrip(t *testing.T) {
	in := []bitmapEntry{
		{name: "b0", tableOff: 0x30000, tableSize: 1, flags: bmeFlagAuto, typ: 1, granBits: 16, extra: nil},
		{name: "a-longer-name-of-17", tableOff: 0x40000, tableSize: 2, flags: bmeFlagInUse, typ: 1, granBits: 9, extra: nil},
		{name: "x", tableOff: 0x50000, tableSize: 1, flags: 1 << 2, typ: 7, granBits: 20, extra: []byte{1, 2, 3}},
	}
	dir := encodeBitmapDir(in)
	if len(dir)%8 != 0 {
		t.Fatalf("directory of %d bytes is not padded", len(dir))
	}
	out, err := parseBitmapDir(dir, 3, 65536, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(in, out) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", out, in)
	}
	if out[0].maintainable() != true || out[2].maintainable() {
		t.Fatal("maintainable() misclassifies")
	}
}

func TestBitmapDirRejectsHostileInput(t *testing.T) {
	const cs = 65536
	good := func() []bitmapEntry {
		return []bitmapEntry{{name: "b0", tableOff: 0x30000, tableSize: 1, flags: bmeFlagAuto, typ: 1, granBits: 16}}
	}
	be := binary.BigEndian
	cases := map[string]func() ([]byte, uint32){
		"truncated entry":    func() ([]byte, uint32) { return encodeBitmapDir(good())[:20], 1 },
		"name overruns":      func() ([]byte, uint32) { d := encodeBitmapDir(good()); be.PutUint16(d[18:], 1000); return d, 1 },
		"extra overruns":     func() ([]byte, uint32) { d := encodeBitmapDir(good()); be.PutUint32(d[20:], 0xffffffff); return d, 1 },
		"more than counted":  func() ([]byte, uint32) { return encodeBitmapDir(append(good(), good()...)), 1 },
		"fewer than counted": func() ([]byte, uint32) { return encodeBitmapDir(good()), 2 },
		"table size 0":       func() ([]byte, uint32) { e := good(); e[0].tableSize = 0; return encodeBitmapDir(e), 1 },
		"table too large": func() ([]byte, uint32) {
			e := good()
			e[0].tableSize = maxBitmapTable + 1
			return encodeBitmapDir(e), 1
		},
		"table misaligned": func() ([]byte, uint32) { e := good(); e[0].tableOff = 0x30200; return encodeBitmapDir(e), 1 },
		"table at 0":       func() ([]byte, uint32) { e := good(); e[0].tableOff = 0; return encodeBitmapDir(e), 1 },
		"granularity 8":    func() ([]byte, uint32) { e := good(); e[0].granBits = 8; return encodeBitmapDir(e), 1 },
		"granularity 32":   func() ([]byte, uint32) { e := good(); e[0].granBits = 32; return encodeBitmapDir(e), 1 },
		"data too large": func() ([]byte, uint32) {
			e := good()
			e[0].tableSize = maxBitmapPhys/cs + 1
			return encodeBitmapDir(e), 1
		},
		"table too small": func() ([]byte, uint32) {
			e := good()
			e[0].granBits = 9 // 1 TiB / 512 B needs 2^31 bits: 4096 clusters
			return encodeBitmapDir(e), 1
		},
		"name too long": func() ([]byte, uint32) {
			e := good()
			e[0].name = string(make([]byte, maxBitmapNameLen+1))
			return encodeBitmapDir(e), 1
		},
	}
	for name, mk := range cases {
		dir, n := mk()
		if _, err := parseBitmapDir(dir, n, cs, 1<<40); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
	// An in-use bitmap may be smaller than the disk (a resize it missed).
	e := good()
	e[0].granBits, e[0].flags = 9, bmeFlagInUse
	if _, err := parseBitmapDir(encodeBitmapDir(e), 1, cs, 1<<40); err != nil {
		t.Errorf("in-use bitmap too small for the disk: %v", err)
	}
}

func TestBitmapExtRejectsHostileInput(t *testing.T) {
	ok := bitmapExtHeader{n: 1, dirSize: 32, dirOff: 0x20000}
	if _, err := decodeBitmapExt(ok.encode(), 65536); err != nil {
		t.Fatal(err)
	}
	for name, x := range map[string]bitmapExtHeader{
		"zero bitmaps":    {n: 0, dirSize: 32, dirOff: 0x20000},
		"too many":        {n: maxBitmaps + 1, dirSize: 32, dirOff: 0x20000},
		"empty directory": {n: 1, dirSize: 0, dirOff: 0x20000},
		"huge directory":  {n: 1, dirSize: maxBitmapDirSize + 1, dirOff: 0x20000},
		"misaligned":      {n: 1, dirSize: 32, dirOff: 0x20008},
		"at 0":            {n: 1, dirSize: 32, dirOff: 0},
	} {
		if _, err := decodeBitmapExt(x.encode(), 65536); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
	if _, err := decodeBitmapExt(make([]byte, 16), 65536); !errors.Is(err, ErrInvalid) {
		t.Errorf("short extension: %v", err)
	}
}

func TestLiveBitmapMarkAndSerialise(t *testing.T) {
	b := newLiveBitmap("b", 9, true, 1<<20) // 2048 bits
	b.mark(0, 1)
	b.mark(512*63, 512*3) // bits 63..65: across a word
	b.mark(1<<20-1, 100)  // last bit; past the end is ignored
	if got := b.count(); got != 5 {
		t.Fatalf("%d bits set, want 5", got)
	}
	want := [][2]int64{{0, 512}, {512 * 63, 512 * 3}, {1<<20 - 512, 512}}
	if got := b.ranges(1 << 20); !reflect.DeepEqual(got, want) {
		t.Fatalf("ranges %v, want %v", got, want)
	}
	// Serialised with the specification's bit order, loaded back equal.
	data := b.clusterData(0, 512)
	if data[0] != 1 || data[7] != 0x80 || data[8] != 3 {
		t.Fatalf("bit order: % x", data[:9])
	}
	c := newLiveBitmap("c", 9, true, 1<<20)
	c.loadCluster(0, data)
	if !reflect.DeepEqual(b.words, c.words) {
		t.Fatal("load(serialise) differs")
	}
	// Shrinking drops the bits past the end; growing adds clear ones.
	b.resize(512 * 64)
	if got := b.count(); got != 2 {
		t.Fatalf("after shrink: %d bits", got)
	}
	b.resize(1 << 20)
	if got := b.count(); got != 2 {
		t.Fatalf("after grow: %d bits", got)
	}
}
