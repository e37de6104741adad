package convert

import (
	"fmt"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// copyAll writes everything the source reads into an existing target,
// zeros included (its old content must not show through). A qcow2 target
// gets zero clusters for the source's zero ranges rather than data.
func copyAll(in Source, out qcow2.Disk, exts []qcow2.Extent, cx copyCtx) error {
	spans, _ := extentSpans(exts, copyChunk, true)
	img, isQcow2 := out.(*qcow2.Image)
	return cx.pl.run(len(spans), func(i int, scratch *[]byte) (func() error, error) {
		s := spans[i]
		p, err := readSpan(in, spans, i, scratch, cx)
		if err != nil {
			return nil, err
		}
		return func() error {
			if isQcow2 && s.zero {
				if err := img.WriteZeroes(s.off, s.n, true); err != nil {
					return fmt.Errorf("error while writing at byte %d: %w", s.off, err)
				}
			} else if err := writeOut(out, p, s.off); err != nil {
				return err
			}
			cx.wb.wrote(s.n)
			cx.prog.add(s.n)
			return nil
		}, nil
	})
}
