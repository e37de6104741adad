package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2/convert"
	"github.com/spf13/cobra"
)

func newImgConvertCmd() *cobra.Command {
	var c convertCmd
	cmd := &cobra.Command{
		Use:   "convert [-q] [-p] [-c] [-n] [-W] [-f fmt] [-t cache] [-O output_fmt] [-B backing_file [-F backing_fmt]] [-o options] [-l snapshot_param | -s snapshot_id_or_name] [-S sparse_size] [-m num_workers] [-U] filename output_filename",
		Short: "Copy an image to a new raw or qcow2 image, flattening its backing chain (or onto a new one with -B)",
		Long: `Copy the guest-visible content of an image (read through its whole backing
chain) into a new image without a backing file (see -B), like qemu-img convert.
output_fmt is qcow2 or raw (default raw); -o takes img create's options
except size and backing_file. An existing output file is overwritten,
unless another program has it open (its image lock refuses a writer).

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

-l snapshot_param converts an internal snapshot of a qcow2 source instead
of its current state: snapshot.id=ID, snapshot.name=NAME (both: the
snapshot must match both), or ID_OR_NAME (an id first, then a name).
-s ID_OR_NAME is the same (qemu-img's older spelling).

-m num_workers (1..16, default 8) requests are read, zero-tested and
compressed in parallel; they are written in guest order (so a qcow2
output allocates its clusters in order) unless -W allows out-of-order
writes. The output reads the same either way; without -W the output file
is also the same byte for byte whatever -m is.

-t cache: only writeback (the default here) is supported: the output is
written through the page cache, its writeback is started while copying
(sync_file_range, a hint), and it is flushed (fdatasync) once at the end,
so the command returns only when the output is durable. qemu-img
convert's own default is unsafe (no flush at all); pass -t writeback to
qemu-img to compare like with like.

-U (--force-share) reads the source even while another program writes it
(what is read may be inconsistent); the output is always locked as a
writer's, as every image is (docs/engine.md, "Image locks").
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
	f.StringVarP(&c.snapshot, "snapshot-param", "l", "", "convert this internal snapshot: snapshot.id=ID,snapshot.name=NAME or ID_OR_NAME")
	f.StringVarP(&c.snapshotS, "snapshot", "s", "", "convert this internal snapshot (ID_OR_NAME)")
	f.IntVarP(&c.workers, "workers", "m", convert.DefaultWorkers, fmt.Sprintf("parallel requests (1..%d)", convert.MaxWorkers))
	f.BoolVarP(&c.outOfOrder, "out-of-order", "W", false, "allow out-of-order writes")
	f.StringVarP(&c.cache, "cache", "t", "writeback", "output cache mode (only writeback: flush once at the end)")
	addForceShareFlag(f, &c.share)
	return cmd
}

type convertCmd struct {
	srcFmt, dstFmt, sparse string
	opts                   []string
	progress, quiet        bool
	compress               bool
	backing, backingFmt    string
	noCreate               bool
	snapshot, snapshotS    string
	workers                int
	outOfOrder, share      bool
	cache                  string
}

// run checks the flags the way qemu-img does (with its messages), opens
// the source and creates (or, with -n, opens) the output, and leaves the
// copy itself to package convert.
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
	if err != nil || sparse%512 != 0 || sparse > convert.MaxSparseSize {
		return failf("Invalid buffer size for sparse output specified. Valid sizes are multiples of 512 up to %d. Select 0 to disable sparse detection (fully allocates output).", convert.MaxSparseSize)
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
	if c.workers < 1 || c.workers > convert.MaxWorkers {
		return failf("Invalid number of coroutines. Allowed number of coroutines is between 1 and %d", convert.MaxWorkers)
	}
	if c.cache != "writeback" {
		return failf("Invalid cache option: %s (only writeback is supported: the output is flushed once at the end)", c.cache)
	}
	snap, err := c.snapshotRef()
	if err != nil {
		return err
	}

	disk, err := qcow2.OpenDisk(src, c.srcFmt, readOptions(false, c.share))
	if err != nil {
		return failf("Could not open '%s': %v", src, err)
	}
	defer disk.Close()
	if same(src, dst) {
		return failf("%s: the output would overwrite the source", dst)
	}
	var in convert.Source = disk
	if snap.IsSet() {
		if in, err = convert.Snapshot(disk, snap); errors.Is(err, convert.ErrNoSnapshot) {
			return failf("Failed to load snapshot: Can't find snapshot")
		} else if err != nil {
			return failf("Failed to load snapshot: %v", err)
		}
	}
	out, err := c.openOutput(dst, o, in.Size())
	if err != nil && c.noCreate {
		return failf("Could not open '%s': %v", dst, err)
	} else if err != nil {
		return failf("%s: %v", dst, err)
	}
	bar := newProgress(cmd.OutOrStdout(), c.progress && !c.quiet, in.Size())
	err = convert.Run(context.Background(), in, out, convert.Options{
		SparseSize: sparse, // 0 (the default's) goes with WriteAll
		WriteAll:   sparse == 0,
		Existing:   c.noCreate,
		Compress:   c.compress,
		Workers:    c.workers,
		OutOfOrder: c.outOfOrder,
		Progress:   func(done, _ int64) { bar.set(done) },
	})
	if cerr := out.Close(); err == nil && cerr != nil {
		return failf("%s: %v", dst, cerr)
	}
	if err != nil {
		return failf("%v", err)
	}
	bar.finish()
	return nil
}

// openOutput opens the existing output (-n) or creates it at size bytes,
// replacing a file in the way. With -B the qcow2 output is opened over its
// backing file, which the copy compares against.
func (c *convertCmd) openOutput(dst string, o *createOpts, size int64) (qcow2.Disk, error) {
	if c.noCreate {
		return qcow2.OpenDisk(dst, c.dstFmt, openOptions(false, false))
	}
	if err := removeExisting(dst); err != nil {
		return nil, err
	}
	if c.dstFmt == "raw" {
		if err := createRaw(dst, size, o.prealloc); err != nil {
			return nil, err
		}
		return qcow2.OpenRaw(dst, false)
	}
	if err := qcow2.Create(dst, o.qcow2Options(size, false)); err != nil {
		return nil, err
	}
	return qcow2.Open(dst, openOptions(false, o.backingFile == ""))
}

// same reports whether two paths name the same existing file.
func same(a, b string) bool {
	sa, err1 := os.Stat(a)
	sb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(sa, sb)
}

// snapshotRef returns the snapshot -l or -s names (none if neither).
func (c *convertCmd) snapshotRef() (convert.SnapshotRef, error) {
	switch {
	case c.snapshot != "" && c.snapshotS != "":
		return convert.SnapshotRef{}, failf("-l and -s name the snapshot twice; use one of them")
	case c.snapshotS != "":
		return convert.SnapshotRef{IDOrName: c.snapshotS}, nil
	case c.snapshot != "":
		return parseSnapshotParam(c.snapshot)
	}
	return convert.SnapshotRef{}, nil
}
