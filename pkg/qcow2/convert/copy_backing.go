package convert

import (
	"bytes"
	"fmt"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// copyDiff writes to out (opened over its backing file) every cluster
// whose content in the source differs from what out reads now, i.e. from
// its backing file: clusters of zeros become zero clusters. So the target
// reads the same as the source whatever its backing file holds.
func copyDiff(in Source, out *qcow2.Image, exts []qcow2.Extent, cx copyCtx) error {
	cs := out.ClusterSize()
	spans := chunkSpans(exts, cx.lo, cx.hi, clusterChunk(cs))
	return cx.pl.run(len(spans), func(i int, scratch *[]byte) (func() error, error) {
		cx.ra.prepared(spans, i)
		s := spans[i]
		buf := scratchBuf(scratch, 2*s.n)
		src, cur := buf[:s.n], buf[s.n:]
		if err := readExtents(in, exts, src, s.off); err != nil {
			return nil, err
		}
		// Requests cover disjoint clusters, so what out reads here is
		// its backing file, whatever other workers write meanwhile.
		if _, err := out.ReadAt(cur, s.off); err != nil {
			return nil, fmt.Errorf("error while reading the backing file at byte %d: %w", s.off, err)
		}
		return func() error {
			for j := int64(0); j < s.n; j += cs {
				m := min(cs, s.n-j)
				d := src[j : j+m]
				if bytes.Equal(d, cur[j:j+m]) {
					continue
				}
				var err error
				if IsZero(d) {
					err = out.WriteZeroes(s.off+j, m, false)
				} else {
					_, err = out.WriteAt(d, s.off+j)
				}
				if err != nil {
					return fmt.Errorf("error while writing at byte %d: %w", s.off+j, err)
				}
				cx.wb.wrote(m)
			}
			cx.prog.add(s.n)
			return nil
		}, nil
	})
}
