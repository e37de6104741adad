package qcow2

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// newTestImage creates a small image in a temp dir and returns its path.
func newTestImage(t *testing.T, opts CreateOptions) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "t.qcow2")
	if opts.Size == 0 {
		opts.Size = 4 << 20
	}
	if err := Create(p, opts); err != nil {
		t.Fatal(err)
	}
	return p
}

func patchFile(t *testing.T, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func be64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }
func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

func TestHeaderRoundTripPreservesUnknownExtensionsAndFields(t *testing.T) {
	h := &Header{Version: 3, ClusterBits: 16, Size: 1 << 30, RefcountOrder: 4,
		L1Size: 2, L1TableOffset: 3 << 16, RefcountTableOffset: 1 << 16, RefcountTableClusters: 1,
		BackingFile: "base.qcow2", BackingFormat: "qcow2",
		extraFields: []byte{1, 2, 3, 4, 5, 6, 7, 8},
		unknownExts: []headerExt{{typ: 0x12345678, data: []byte("future extension")}},
	}
	buf, err := h.encode()
	if err != nil {
		t.Fatal(err)
	}
	got, err := parseHeader(buf)
	if err != nil {
		t.Fatal(err)
	}
	if got.HeaderLength != 120 || !bytes.Equal(got.extraFields, h.extraFields) {
		t.Fatalf("extra header fields lost: length %d, %x", got.HeaderLength, got.extraFields)
	}
	if len(got.unknownExts) != 1 || got.unknownExts[0].typ != 0x12345678 || string(got.unknownExts[0].data) != "future extension" {
		t.Fatalf("unknown extension lost: %+v", got.unknownExts)
	}
	if got.BackingFile != "base.qcow2" || got.BackingFormat != "qcow2" || len(got.FeatureNames) == 0 {
		t.Fatalf("round trip: %+v", got)
	}
	again, err := got.encode()
	if err != nil || !bytes.Equal(again, buf) {
		t.Fatalf("second encode differs (err %v)", err)
	}
}

func TestOpenRefusesUnknownIncompatibleBits(t *testing.T) {
	p := newTestImage(t, CreateOptions{})
	patchFile(t, p, hdrOffIncompat, be64(1<<20))
	_, err := Open(p, Options{ReadOnly: true})
	if !errors.Is(err, ErrUnsupported) {
		t.Fatalf("want ErrUnsupported for unknown incompatible bit, got %v", err)
	}
}

func TestWritableOpenClearsAutoclearBits(t *testing.T) {
	p := newTestImage(t, CreateOptions{})
	patchFile(t, p, hdrOffAutoclear, be64(1<<7|autoclearBitmaps))
	img, err := Open(p, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if img.Header().AutoclearFeatures == 0 {
		t.Fatal("read-only open must not touch the autoclear bits")
	}
	img.Close()
	img, err = Open(p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	img.Close()
	raw, _ := os.ReadFile(p)
	if v := binary.BigEndian.Uint64(raw[hdrOffAutoclear:]); v != 0 {
		t.Fatalf("autoclear bits %#x left set after a writable open", v)
	}
}

func TestCorruptImageOpensReadOnlyOnly(t *testing.T) {
	p := newTestImage(t, CreateOptions{})
	patchFile(t, p, hdrOffIncompat, be64(incompatCorrupt))
	if _, err := Open(p, Options{}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("writable open of a corrupt image: %v", err)
	}
	img, err := Open(p, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if _, err := img.WriteAt([]byte{1}, 0); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("write to read-only image: %v", err)
	}
}

func TestHostileHeaderFieldsGetClearErrors(t *testing.T) {
	cases := []struct {
		name string
		off  int64
		val  []byte
		want error
	}{
		{"cluster bits too small", 20, be32(8), ErrInvalid},
		{"cluster bits too large", 20, be32(22), ErrInvalid},
		{"huge L1", 36, be32(1 << 30), ErrInvalid},
		{"L1 past EOF", 40, be64(1 << 40), ErrInvalid},
		{"unaligned L1", 40, be64(3<<16 + 8), ErrInvalid},
		{"huge refcount table", 56, be32(1 << 20), ErrInvalid},
		{"refcount table past EOF", 48, be64(1 << 50), ErrInvalid},
		{"too many snapshots", 60, be32(1 << 20), ErrInvalid},
		{"refcount order", 96, be32(7), ErrInvalid},
		{"version", 4, be32(4), ErrUnsupported},
		{"encryption", 32, be32(1), ErrUnsupported},
		{"virtual size", 24, be64(1 << 62), ErrInvalid},
		{"backing name past cluster", 8, be64(1<<16 - 4), ErrInvalid},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := newTestImage(t, CreateOptions{})
			if c.name == "backing name past cluster" {
				patchFile(t, p, 16, be32(100))
			}
			patchFile(t, p, c.off, c.val)
			img, err := Open(p, Options{ReadOnly: true})
			if err == nil {
				img.Close()
				t.Fatal("opened")
			}
			if !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
}
