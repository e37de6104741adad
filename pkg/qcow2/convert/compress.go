package convert

import (
	"bytes"
	"fmt"
	"sync"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// compressBatchBytes is how much guest data one compressed write carries:
// the engine syncs once per write, so requests are gathered up to this.
const compressBatchBytes = 32 << 20

// copyCompressed copies every cluster of in that is not all zeros to out
// as a compressed cluster. The pipeline's workers read and compress in
// parallel; their batches are gathered and written by whichever worker
// commits. Ranges the source maps as zero are not read.
func copyCompressed(in Source, out *qcow2.Image, exts []qcow2.Extent, cx copyCtx) error {
	cs := out.ClusterSize()
	spans := chunkSpans(exts, cx.lo, cx.hi, clusterChunk(cs))
	var (
		mu      sync.Mutex // pending is shared by out-of-order commits
		pending *qcow2.CompressedBatch
	)
	write := func() error {
		if pending == nil || pending.Len() == 0 {
			return nil
		}
		b := pending
		pending = nil
		if err := out.WriteCompressedBatch(b); err != nil {
			return fmt.Errorf("error while writing compressed clusters: %w", err)
		}
		return nil
	}
	err := cx.pl.run(len(spans), func(i int, scratch *[]byte) (func() error, error) {
		cx.ra.prepared(spans, i)
		s := spans[i]
		if s.zero {
			return func() error { cx.prog.add(s.n); return nil }, nil
		}
		p := scratchBuf(scratch, s.n)
		if err := readExtents(in, exts, p, s.off); err != nil {
			return nil, err
		}
		var cl []qcow2.CompressedCluster
		for j := int64(0); j < s.n; j += cs {
			c := p[j:min(j+cs, s.n)]
			if !IsZero(c) {
				cl = append(cl, qcow2.CompressedCluster{Off: s.off + j, Data: bytes.Clone(c)})
			}
		}
		b, err := out.CompressClusters(cl)
		if err != nil {
			return nil, fmt.Errorf("error while compressing clusters at byte %d: %w", s.off, err)
		}
		return func() error {
			mu.Lock()
			defer mu.Unlock()
			if pending == nil {
				pending = b
			} else if err := pending.Append(b); err != nil {
				return err
			}
			cx.prog.add(s.n)
			if pending.Len() >= compressBatchBytes {
				return write()
			}
			return nil
		}, nil
	})
	if err != nil {
		return err
	}
	return write()
}
