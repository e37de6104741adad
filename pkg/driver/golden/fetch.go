package golden

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
)

// fetched is what fetch learnt: the bytes fetched and the transport
// compression.
type fetched struct {
	n    int64
	kind string
}

// fetch downloads the source into the file at spoolPath (decompressed,
// with holes for zeros) and checks the checksum of the bytes fetched.
func (im *Importer) fetch(ctx context.Context, src Source, loc location, spoolPath string, rep *reporter) (fetched, error) {
	var body io.ReadCloser
	var length int64
	var err error
	if loc.root != "" {
		body, length, err = openFile(loc)
	} else {
		body, length, err = im.openHTTP(ctx, loc)
	}
	if err != nil {
		return fetched{}, err
	}
	defer body.Close()
	if length > im.maxDownload() {
		return fetched{}, invalidf("the source is %d bytes, more than %d (MaxDownloadBytes)", length, im.maxDownload())
	}
	rep.phase(PhaseDownload, max(length, 0))
	fr := newFetchReader(body, im.maxDownload(), rep.update)
	f, err := os.OpenFile(spoolPath, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fetched{}, err
	}
	defer f.Close()

	br := bufio.NewReaderSize(fr, 1<<20)
	dec, err := decompress(br)
	got := fetched{kind: dec.kind}
	if err == nil {
		defer dec.close()
		guard := bombGuard{kind: dec.kind, max: im.maxDecompressed(), fetched: func() int64 { return fr.n }}
		_, err = spool(ctx, dec, f, guard)
		if err == nil && dec.kind != "" {
			// Whatever follows the compressed stream is fetched (the
			// checksum covers it) but refused.
			var extra int64
			if extra, err = io.Copy(io.Discard, br); err == nil && extra > 0 {
				err = invalidf("%d bytes follow the %s stream", extra, dec.kind)
			}
		}
	}
	got.n = fr.n
	if err = fetchErr(ctx, err, fr, dec.kind); err != nil {
		// Bad content is reported as a checksum mismatch when it is one:
		// the wrong file is the likelier cause.
		if errors.Is(err, ErrInvalid) && !errors.Is(err, errTooBig) {
			if _, derr := fr.drain(); derr == nil && fr.sum() != src.SHA256 {
				got.n = fr.n
				return got, mismatch(src.SHA256, fr.sum(), fr.n)
			}
		}
		return got, err
	}
	rep.end(fr.n)
	if sum := fr.sum(); sum != src.SHA256 {
		return got, mismatch(src.SHA256, sum, fr.n)
	}
	if err := f.Sync(); err != nil {
		return got, err
	}
	return got, nil
}

// fetchErr says what a failed fetch failed of: the caller's context, the
// transport (transient), or the content (ErrInvalid).
func fetchErr(ctx context.Context, err error, fr *fetchReader, kind string) error {
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return ctx.Err()
	case fr.transErr != nil:
		return fmt.Errorf("fetching: %w", fr.transErr)
	case errors.Is(err, ErrInvalid) || hostFailure(err) || errors.As(err, new(localErr)):
		return err
	case kind != "":
		return streamErr(kind, err)
	}
	return err
}

func mismatch(want, got string, n int64) error {
	return invalidf("checksum mismatch: expected sha256 %s, got %s (of %d bytes fetched)", want, got, n)
}
