package golden

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Scratch files of an import in TmpDir are named
// golden-<sha256 prefix>-<random><suffix>, so that Collect can tell them
// from anything else there.
const (
	tmpPrefix    = "golden-"
	spoolSuffix  = ".fetch.part"
	outputSuffix = ".qcow2.part"
)

// tmpName returns a fresh scratch path for an import of sha and
// registers it as in use, so that Collect leaves it alone.
func (im *Importer) tmpName(sha, suffix string) string {
	var r [8]byte
	_, _ = rand.Read(r[:]) // crypto/rand does not fail on Linux
	p := filepath.Join(im.tmpDir(), tmpPrefix+sha[:16]+"-"+hex.EncodeToString(r[:])+suffix)
	im.mu.Lock()
	if im.active == nil {
		im.active = map[string]bool{}
	}
	im.active[p] = true
	im.mu.Unlock()
	return p
}

// removeTmp removes a scratch file (if it exists) and forgets it.
func (im *Importer) removeTmp(p string) {
	if err := os.Remove(p); err == nil || errors.Is(err, fs.ErrNotExist) {
		im.mu.Lock()
		delete(im.active, p)
		im.mu.Unlock()
	}
	// A file that could not be removed stays registered: Collect leaves
	// it to its import, and the next process's Collect removes it.
}

// isScratch reports whether name is an import's scratch file name.
func isScratch(name string) bool {
	return strings.HasPrefix(name, tmpPrefix) && (strings.HasSuffix(name, spoolSuffix) || strings.HasSuffix(name, outputSuffix))
}

// Collect removes the scratch files of imports that did not finish (a
// crash, a kill) from TmpDir and returns their paths. Imports running in
// this Importer keep theirs; the driver calls it at start, before any. A
// file that cannot be removed is reported in the error and the rest are
// still tried.
func (im *Importer) Collect() ([]string, error) {
	ents, err := os.ReadDir(im.tmpDir())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, e := range ents {
		p := filepath.Join(im.tmpDir(), e.Name())
		im.mu.Lock()
		busy := im.active[p]
		im.mu.Unlock()
		if busy || !e.Type().IsRegular() || !isScratch(e.Name()) {
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, p)
	}
	return removed, errors.Join(errs...)
}
