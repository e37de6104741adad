package qcow2

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
)

// FuzzJournalReplay opens an overlay whose header says it has a journal,
// with arbitrary records after a valid header of this boot: the open
// replays what passes the checks or refuses with an error, never panics,
// and an image it opened reads and closes.
func FuzzJournalReplay(f *testing.F) {
	rec := func(vi, entry, bitmap uint64) []byte {
		b := make([]byte, journalRecordSize)
		encodeJournalRecord(b, 1, journalRecord{vi, entry, bitmap})
		return b
	}
	f.Add([]byte{})
	f.Add(rec(3, 6<<16|oflagCopied, 0))                              // a fresh cluster past the tables
	f.Add(rec(1<<40, 6<<16|oflagCopied, 0))                          // beyond the disk
	f.Add(rec(2, 0, 0))                                              // no host cluster
	f.Add(rec(2, 1<<16|oflagCopied, 0))                              // onto metadata
	f.Add(rec(2, 6<<16|oflagCompressed, 0))                          // compressed
	f.Add(append(rec(4, 6<<16|oflagCopied, 0), 1, 2, 3))             // a torn record after one
	f.Add(append(rec(5, 7<<16+512|oflagCopied, 0), rec(5, 0, 0)...)) // unaligned
	boot := [16]byte{7}
	f.Fuzz(func(t *testing.T, records []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "base.raw"), make([]byte, 1<<20), 0o644); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, "top.qcow2")
		if err := Create(path, CreateOptions{BackingFile: "base.raw", BackingFormat: "raw"}); err != nil {
			t.Fatal(err)
		}
		// Room for the records to point at: a few clusters past the end.
		fh, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], incompatJournal)
		if _, err := fh.WriteAt(b[:], hdrOffIncompat); err != nil {
			t.Fatal(err)
		}
		if err := fh.Truncate(8 << 16); err != nil {
			t.Fatal(err)
		}
		fh.Close()
		j := append(make([]byte, journalHeaderSize), records...)
		copy(j, encodeJournalHeader(1, boot))
		if err := os.WriteFile(JournalPath(path), j, 0o600); err != nil {
			t.Fatal(err)
		}
		for _, ro := range []bool{true, false} {
			img, err := Open(path, Options{ReadOnly: ro, bootID: &boot})
			if err != nil {
				continue
			}
			buf := make([]byte, img.Size())
			_, _ = img.ReadAt(buf, 0)
			_ = img.Close()
		}
	})
}
