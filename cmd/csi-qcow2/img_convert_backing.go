package main

import (
	"bytes"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// targetOpts merges -B/-F into the -o backing options and checks them
// and -n.
func (c *convertCmd) targetOpts(o *createOpts) error {
	if c.noCreate && c.compress {
		return failf("Compression (-c) is not supported with -n")
	}
	if c.backing != "" && o.backingFile != "" && c.backing != o.backingFile {
		return failf("-B and -o backing_file name different backing files")
	}
	if c.backingFmt != "" && o.backingFmt != "" && c.backingFmt != o.backingFmt {
		return failf("-F and -o backing_fmt name different formats")
	}
	if c.backing != "" {
		o.backingFile = c.backing
	}
	if c.backingFmt != "" {
		o.backingFmt = c.backingFmt
	}
	switch {
	case o.backingFile == "" && o.backingFmt != "":
		return failf("A backing format was given without a backing file (-B)")
	case o.backingFile == "":
		return nil
	case c.dstFmt != "qcow2":
		return failf("Backing file not supported for file format '%s'", c.dstFmt)
	case o.backingFmt == "":
		return failf("Use of backing file requires explicit backing format")
	case c.noCreate:
		return failf("-B cannot be used with -n: an existing output keeps its own backing file")
	case c.compress:
		return failf("Compression with a backing file (-B) is not supported")
	}
	return checkFormat(o.backingFmt)
}

// copyDiff writes to out (opened over its backing file) every cluster
// whose content in the source differs from what out reads now, i.e. from
// its backing file: clusters of zeros become zero clusters.
func copyDiff(in convertSource, out *qcow2.Image, exts []qcow2.Extent, cx copyCtx) error {
	cs := out.ClusterSize()
	spans := chunkSpans(exts, out.Size(), ceilDiv64(copyChunk, cs)*cs)
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
			return nil, failf("error while reading the backing file at byte %d: %v", s.off, err)
		}
		return func() error {
			for j := int64(0); j < s.n; j += cs {
				m := min(cs, s.n-j)
				d := src[j : j+m]
				if bytes.Equal(d, cur[j:j+m]) {
					continue
				}
				var err error
				if isZero(d) {
					err = out.WriteZeroes(s.off+j, m, false)
				} else {
					_, err = out.WriteAt(d, s.off+j)
				}
				if err != nil {
					return failf("error while writing at byte %d: %v", s.off+j, err)
				}
				cx.wb.wrote(m)
			}
			cx.bar.add(s.n)
			return nil
		}, nil
	})
}

// copyAll writes everything the source reads into an existing output,
// zeros included (its old content must not show through).
func copyAll(in convertSource, out writeTarget, exts []qcow2.Extent, cx copyCtx) error {
	spans, _ := extentSpans(exts, copyChunk, true)
	img, isQcow2 := out.(*qcow2.Image)
	return cx.pl.run(len(spans), func(i int, scratch *[]byte) (func() error, error) {
		cx.ra.prepared(spans, i)
		s := spans[i]
		p := scratchBuf(scratch, s.n)
		if s.zero {
			clear(p)
		} else if err := readSource(in, p, s.off); err != nil {
			return nil, err
		}
		return func() error {
			if isQcow2 && s.zero {
				if err := img.WriteZeroes(s.off, s.n, true); err != nil {
					return failf("error while writing at byte %d: %v", s.off, err)
				}
			} else if err := writeOut(out, p, s.off); err != nil {
				return err
			}
			cx.wb.wrote(s.n)
			cx.bar.add(s.n)
			return nil
		}, nil
	})
}
