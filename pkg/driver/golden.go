package driver

import (
	"context"
	"errors"
	"path/filepath"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/csi-qcow2/csi-qcow2/pkg/driver/golden"
)

// newImporter fetches golden images into the store's images/ directory,
// with its scratch in the store's tmp/ (emptied when the store opens).
// Imports are logged with their bytes and rate, and counted.
func (d *Driver) newImporter() *golden.Importer {
	return &golden.Importer{
		Dir:              filepath.Join(d.cfg.StateDir, "images"),
		TmpDir:           filepath.Join(d.cfg.StateDir, "tmp"),
		FileRoots:        d.cfg.ImageFileRoots,
		MaxDownloadBytes: d.cfg.MaxImageBytes,
		Progress: func(p golden.Progress) {
			klog.InfoS("importing golden image", "sha256", p.SHA256, "url", p.URL, "phase", p.Phase,
				"bytes", p.Done, "total", p.Total, "bytesPerSecond", int64(p.BytesPerSecond), "final", p.Final)
		},
		Metrics: golden.Metrics{
			Finished: func(info golden.Info, err error) {
				result := "ok"
				if err != nil {
					result = "failed"
				}
				d.metrics.imports.WithLabelValues(result).Inc()
				d.metrics.imported.Add(float64(info.DownloadedBytes))
			},
		},
	}
}

// importImage is the store's ImportImage: a request's own mistake (bad
// URL, checksum, content) is InvalidArgument; anything else (network,
// disk) is Unavailable, which the CO retries.
func (d *Driver) importImage(im *golden.Importer) func(ctx context.Context, url, sha string) error {
	return func(ctx context.Context, url, sha string) error {
		_, info, err := im.Import(ctx, golden.Source{URL: url, SHA256: sha})
		switch {
		case err == nil:
			if !info.Reused {
				klog.InfoS("golden image imported", "sha256", sha, "format", info.SourceFormat,
					"compression", info.Compression, "downloaded", info.DownloadedBytes, "virtualSize", info.VirtualSize)
			}
			return nil
		case errors.Is(err, golden.ErrInvalid), errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
			return err
		}
		return status.Errorf(codes.Unavailable, "importing golden image %s: %v", sha, err)
	}
}
