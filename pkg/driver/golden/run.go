package golden

import (
	"context"
	"fmt"
	"os"
)

// run is one import of src: fetch it into a scratch file, check its
// SHA-256, open it as an image, copy it into a new qcow2 image, and
// publish that. Whatever happens, its scratch files are gone when it
// returns, and Dir has the image or nothing new.
func (im *Importer) run(ctx context.Context, src Source, loc location) (path string, info Info, err error) {
	final := im.Path(src.SHA256)
	// Another import may have published it since the caller looked.
	if info, ok, err := im.existing(src.SHA256); err != nil {
		return "", Info{}, err
	} else if ok {
		return final, info, nil
	}
	if m := im.Metrics.Started; m != nil {
		m()
	}
	defer func() {
		if m := im.Metrics.Finished; m != nil {
			m(info, err)
		}
	}()
	for _, d := range []string{im.Dir, im.tmpDir()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return "", info, err
		}
	}
	rep := newReporter(im.Progress, src.SHA256, loc.redacted(), im.clock)

	spoolPath := im.tmpName(src.SHA256, spoolSuffix)
	defer im.removeTmp(spoolPath)
	fetched, err := im.fetch(ctx, src, loc, spoolPath, rep)
	info.DownloadedBytes, info.Compression = fetched.n, fetched.kind
	if err != nil {
		return "", info, err
	}
	im.step(ctx, "fetched")

	disk, format, err := im.openFetched(ctx, spoolPath)
	if err != nil {
		return "", info, err
	}
	info.SourceFormat, info.VirtualSize = format, disk.Size()
	out := im.tmpName(src.SHA256, outputSuffix)
	defer im.removeTmp(out) // after a publish, there is nothing left to remove
	err = build(ctx, disk, out, fetched.n, rep)
	disk.Close()
	if err != nil {
		return "", info, err
	}
	im.step(ctx, "built")
	if err := ctx.Err(); err != nil {
		return "", info, err
	}
	if err := os.Chmod(out, publishMode); err != nil {
		return "", info, err
	}
	if err := syncFile(out); err != nil {
		return "", info, fmt.Errorf("syncing %s: %w", out, err)
	}
	im.step(ctx, "synced")
	if err := ctx.Err(); err != nil {
		return "", info, err
	}
	if _, err := publish(out, final, im.Dir); err != nil {
		return "", info, err
	}
	if st, err := os.Stat(final); err == nil {
		info.AllocatedBytes = statAllocated(st)
	}
	return final, info, nil
}
