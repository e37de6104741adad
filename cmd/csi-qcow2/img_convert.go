package main

import (
	"bytes"
	"fmt"
	"io"
	"os"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
	"github.com/spf13/cobra"
)

// maxSparseSize is qemu-img's bound on -S (MAX_BUF_SECTORS * 512).
const maxSparseSize = 16 << 20

func newImgConvertCmd() *cobra.Command {
	var c convertCmd
	cmd := &cobra.Command{
		Use:   "convert [-q] [-p] [-c] [-n] [-f fmt] [-O output_fmt] [-B backing_file [-F backing_fmt]] [-o options] [-S sparse_size] filename output_filename",
		Short: "Copy an image to a new raw or qcow2 image, flattening its backing chain (or onto a new one with -B)",
		Long: `Copy the guest-visible content of an image (read through its whole backing
chain) into a new image without a backing file (see -B), like qemu-img convert.
output_fmt is qcow2 or raw (default raw); -o takes img create's options
except size and backing_file. An existing output file is overwritten.

Only data is written: ranges the source maps as zero are skipped, and so
is every aligned sparse_size block of read data that is all zeros (-S,
default 4k, a multiple of 512; -S 0 writes everything, fully allocating
the output). -p shows progress when stdout is a terminal.

-c (qcow2 output only) writes every cluster that is not all zeros as a
compressed cluster, with the output's compression_type (-o
compression_type=zlib|zstd); a cluster that does not compress is stored
uncompressed, as qemu-img does.

-B backing_file (qcow2 output only; -F or -o backing_fmt names its format)
makes the output an overlay on backing_file: only the clusters whose
content differs from backing_file are written, so the output reads the
same as the source whatever backing_file holds. (qemu-img instead copies
what the source's top layer allocates, assuming the source's backing
chain reads like backing_file.) -o backing_file=... is the same as -B.

-n writes into an existing output instead of creating it (-o is then
ignored); everything the source reads, zeros included, is written.
` + imgPolicyNote,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return c.run(cmd, args[0], args[1])
		},
	}
	f := cmd.Flags()
	f.StringVarP(&c.srcFmt, "format", "f", "", "source format (qcow2 or raw); probed when empty")
	f.StringVarP(&c.dstFmt, "output-format", "O", "raw", "output format: qcow2 or raw")
	f.StringArrayVarP(&c.opts, "options", "o", nil, "output format options, as for img create (-o help lists them)")
	f.StringVarP(&c.sparse, "sparse-size", "S", "4k", "zero-detection block size; 0 disables sparse output")
	f.BoolVarP(&c.progress, "progress", "p", false, "show progress")
	f.BoolVarP(&c.compress, "compress", "c", false, "compress the output clusters (qcow2 only)")
	f.BoolVarP(&c.quiet, "quiet", "q", false, "print nothing (overrides -p)")
	f.StringVarP(&c.backing, "backing", "B", "", "make the output an overlay on this backing file (qcow2 output)")
	f.StringVarP(&c.backingFmt, "backing-format", "F", "", "format of the -B backing file (qcow2 or raw)")
	f.BoolVarP(&c.noCreate, "no-create", "n", false, "write into an existing output; do not create it")
	return cmd
}

type convertCmd struct {
	srcFmt, dstFmt, sparse string
	opts                   []string
	progress, quiet        bool
	compress               bool
	backing, backingFmt    string
	noCreate               bool
}

// writeTarget is the open output image.
type writeTarget interface {
	io.WriterAt
	Flush() error
	Close() error
}

func (c *convertCmd) run(cmd *cobra.Command, src, dst string) error {
	if err := checkFormat(c.srcFmt); err != nil {
		return err
	}
	if err := checkFormat(c.dstFmt); err != nil {
		return err
	}
	if c.dstFmt == "" {
		c.dstFmt = "raw"
	}
	if isHelpOpt(c.opts) {
		fmt.Fprint(cmd.OutOrStdout(), optHelp[c.dstFmt])
		return nil
	}
	sparse, _, err := parseSize(c.sparse)
	if err != nil || sparse%512 != 0 || sparse > maxSparseSize {
		return failf("Invalid buffer size for sparse output specified. Valid sizes are multiples of 512 up to %d. Select 0 to disable sparse detection (fully allocates output).", maxSparseSize)
	}
	o, err := parseCreateOpts(c.dstFmt, c.opts)
	if err != nil {
		return failf("%s: %v", dst, err)
	}
	if err := c.targetOpts(o); err != nil {
		return err
	}
	if err := o.extendedL2Err(); err != nil {
		return failf("%s: error while converting qcow2: %v", dst, err)
	}
	if _, ok := o.set["size"]; ok {
		return failf("%s: the output size is the source's; -o size is not accepted", dst)
	}
	if c.compress && c.dstFmt != "qcow2" {
		return failf("Compression not supported for this file format")
	}
	if c.compress && o.prealloc != qcow2.PreallocOff {
		return failf("Compression and preallocation not supported at the same time")
	}

	in, err := qcow2.OpenDisk(src, c.srcFmt, openOptions(true, false))
	if err != nil {
		return failf("Could not open '%s': %v", src, err)
	}
	defer in.Close()
	if same(src, dst) {
		return failf("%s: the output would overwrite the source", dst)
	}
	size := in.Size()
	exts, err := in.Map(0, size)
	if err != nil {
		return failf("%s: %v", src, err)
	}

	var out writeTarget
	var qout *qcow2.Image
	if c.noCreate {
		d, err := qcow2.OpenDisk(dst, c.dstFmt, openOptions(false, false))
		if err != nil {
			return failf("Could not open '%s': %v", dst, err)
		}
		out = d
		qout, _ = d.(*qcow2.Image)
	} else {
		if err := removeExisting(dst); err != nil {
			return failf("%s: %v", dst, err)
		}
		if c.dstFmt == "raw" {
			if err = createRaw(dst, size, o.prealloc); err == nil {
				out, err = qcow2.OpenRaw(dst, false)
			}
		} else if err = qcow2.Create(dst, o.qcow2Options(size, false)); err == nil {
			// With -B the output is opened over its backing file, which
			// copyDiff compares against.
			qout, err = qcow2.Open(dst, openOptions(false, o.backingFile == ""))
			out = qout
		}
	}
	if err != nil {
		return failf("%s: %v", dst, err)
	}

	bar := newProgress(cmd.OutOrStdout(), c.progress && !c.quiet, size)
	switch {
	case c.compress:
		err = copyCompressed(in, qout, exts, size, bar)
	case c.noCreate:
		err = copyAll(in, out, exts, bar)
	case o.backingFile != "":
		err = copyDiff(in, qout, exts, bar)
	default:
		err = copyExtents(in, out, exts, sparse, bar)
	}
	if err == nil {
		err = out.Flush()
	}
	if cerr := out.Close(); err == nil && cerr != nil {
		err = failf("%s: %v", dst, cerr)
	}
	if err != nil {
		return err
	}
	bar.finish()
	return nil
}

// same reports whether two paths name the same existing file.
func same(a, b string) bool {
	sa, err1 := os.Stat(a)
	sb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(sa, sb)
}

// copyExtents copies every extent that may hold data from in to out. With
// sparse > 0, extents known to read as zeros are skipped and so is every
// sparse-aligned block of read data that is all zeros; with sparse == 0
// everything is written.
func copyExtents(in io.ReaderAt, out io.WriterAt, exts []qcow2.Extent, sparse int64, bar *progress) error {
	chunk := max(int64(2<<20), sparse)
	buf := make([]byte, chunk)
	for _, e := range exts {
		if sparse > 0 && e.Zero && !e.Data {
			bar.add(e.Length)
			continue
		}
		for off, end := e.Start, e.Start+e.Length; off < end; {
			// Keep chunks aligned so that sparse blocks are aligned too.
			n := min(end, (off/chunk+1)*chunk) - off
			p := buf[:n]
			if e.Zero && !e.Data {
				clear(p)
			} else if _, err := in.ReadAt(p, off); err != nil && err != io.EOF {
				return failf("error while reading at byte %d: %v", off, err)
			}
			if err := writeNonZero(out, p, off, sparse); err != nil {
				return err
			}
			bar.add(n)
			off += n
		}
	}
	return nil
}

// writeNonZero writes p (guest bytes at off) to out, leaving out the
// sparse-aligned blocks that are all zeros; runs of non-zero blocks go out
// in one write. sparse == 0 writes all of p.
func writeNonZero(out io.WriterAt, p []byte, off, sparse int64) error {
	write := func(b []byte, at int64) error {
		if _, err := out.WriteAt(b, at); err != nil {
			return failf("error while writing at byte %d: %v", at, err)
		}
		return nil
	}
	if sparse == 0 {
		return write(p, off)
	}
	runStart := int64(-1) // index in p where the current non-zero run began
	for i := int64(0); i < int64(len(p)); {
		n := min(int64(len(p))-i, sparse-(off+i)%sparse)
		if isZero(p[i : i+n]) {
			if runStart >= 0 {
				if err := write(p[runStart:i], off+runStart); err != nil {
					return err
				}
				runStart = -1
			}
		} else if runStart < 0 {
			runStart = i
		}
		i += n
	}
	if runStart >= 0 {
		return write(p[runStart:], off+runStart)
	}
	return nil
}

// isZero reports whether every byte of b is zero: b[0] is zero and every
// byte equals the one before it (bytes.Equal is vectorised).
func isZero(b []byte) bool {
	return len(b) == 0 || b[0] == 0 && bytes.Equal(b[1:], b[:len(b)-1])
}

// compressBatchBytes is how much guest data one compressed batch carries:
// the engine syncs once per batch.
const compressBatchBytes = 32 << 20

// copyCompressed copies every cluster of in that is not all zeros to out
// as a compressed cluster. Ranges the source maps as zero are not read.
func copyCompressed(in io.ReaderAt, out *qcow2.Image, exts []qcow2.Extent, size int64, bar *progress) error {
	cs := out.ClusterSize()
	chunk := ceilDiv64(4<<20, cs) * cs
	buf := make([]byte, chunk)
	var batch []qcow2.CompressedCluster
	var batchBytes int64
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		if err := out.WriteCompressedClusters(batch); err != nil {
			return failf("error while compressing clusters at byte %d: %v", batch[0].Off, err)
		}
		batch, batchBytes = nil, 0
		return nil
	}
	ei := 0
	for off := int64(0); off < size; off += chunk {
		n := min(chunk, size-off)
		// Skip chunks that only zero extents cover.
		for ei < len(exts) && exts[ei].Start+exts[ei].Length <= off {
			ei++
		}
		data := false
		for j := ei; j < len(exts) && exts[j].Start < off+n; j++ {
			if exts[j].Data || !exts[j].Zero {
				data = true
				break
			}
		}
		if !data {
			bar.add(n)
			continue
		}
		p := buf[:n]
		if _, err := in.ReadAt(p, off); err != nil && err != io.EOF {
			return failf("error while reading at byte %d: %v", off, err)
		}
		for i := int64(0); i < n; i += cs {
			cl := p[i:min(i+cs, n)]
			if isZero(cl) {
				continue
			}
			batch = append(batch, qcow2.CompressedCluster{Off: off + i, Data: bytes.Clone(cl)})
			batchBytes += int64(len(cl))
		}
		if batchBytes >= compressBatchBytes {
			if err := flush(); err != nil {
				return err
			}
		}
		bar.add(n)
	}
	return flush()
}

func ceilDiv64(a, b int64) int64 { return (a + b - 1) / b }
