package main

import (
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
	"github.com/spf13/cobra"
)

func newImgSnapshotCmd() *cobra.Command {
	var (
		format, create, apply, del string
		list, quiet, share         bool
	)
	cmd := &cobra.Command{
		Use:   "snapshot [-q] [-f fmt] [-U] [-l | -a snapshot | -c snapshot | -d snapshot] filename",
		Short: "List, create, apply or delete internal snapshots of a qcow2 image",
		Long: `Work with the internal snapshots of a qcow2 image, like qemu-img snapshot:
-l lists them (the default), -c creates one, -a reverts the image to one
(found by id, then by name), -d deletes one (found by name, as qemu-img 7.2
does). Unlike qemu-img, -c refuses a name that is already taken.

Locks: -l locks the image as a reader, the others as a writer, as QEMU
does; -U (--force-share, with -l only) lists the snapshots of an image
another program writes.`,
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkFormat(format); err != nil {
				return err
			}
			n := 0
			for _, set := range []bool{list, cmd.Flags().Changed("create"), cmd.Flags().Changed("apply"), cmd.Flags().Changed("delete")} {
				if set {
					n++
				}
			}
			if n > 1 {
				return failf("Cannot mix '-l', '-a', '-c', '-d'")
			}
			if len(args) != 1 {
				return failf("Expecting one image file name")
			}
			filename := args[0]
			modify := n == 1 && !list
			if share && modify {
				return failf("Could not open '%s': force-share=on can only be used with read-only images", filename)
			}
			if format == "" {
				var err error
				if format, err = qcow2.Probe(filename); err != nil {
					return failf("Could not open '%s': %v", filename, err)
				}
			}
			switch {
			case cmd.Flags().Changed("create"):
				return snapshotModify(filename, format, create, "create", func(img *qcow2.Image) error {
					_, err := img.CreateSnapshot(create)
					return err
				})
			case cmd.Flags().Changed("apply"):
				return snapshotModify(filename, format, apply, "apply", func(img *qcow2.Image) error {
					return img.ApplySnapshot(apply)
				})
			case cmd.Flags().Changed("delete"):
				return snapshotModify(filename, format, del, "delete", func(img *qcow2.Image) error {
					// qemu-img 7.2 looks a snapshot to delete up by name only.
					snaps, err := img.Snapshots()
					if err != nil {
						return err
					}
					for _, s := range snaps {
						if s.Name == del {
							return img.DeleteSnapshot(s.ID)
						}
					}
					return qcow2.ErrSnapshotNotFound
				})
			}
			return snapshotList(cmd.OutOrStdout(), filename, format, share)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&format, "format", "f", "", "image format (qcow2 or raw); probed when empty")
	f.BoolVarP(&list, "list", "l", false, "list the snapshots")
	f.StringVarP(&create, "create", "c", "", "create a snapshot with this name")
	f.StringVarP(&apply, "apply", "a", "", "revert to this snapshot (id or name)")
	f.StringVarP(&del, "delete", "d", "", "delete the snapshot with this name")
	f.BoolVarP(&quiet, "quiet", "q", false, "print nothing on success")
	addForceShareFlag(f, &share)
	return cmd
}

// snapshotModify opens filename writable and runs op, reporting a failure
// the way qemu-img does for the action verb.
func snapshotModify(filename, format, name, verb string, op func(*qcow2.Image) error) error {
	if format != "qcow2" {
		return failf("Could not %s snapshot '%s': -95 (Operation not supported)", verb, name)
	}
	img, err := qcow2.Open(filename, openOptions(false, true))
	if err != nil {
		return failf("Could not open '%s': %v", filename, err)
	}
	err = op(img)
	if cerr := img.Close(); err == nil && cerr != nil {
		return failf("%v", cerr)
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, qcow2.ErrSnapshotNotFound) && verb == "apply":
		return failf("Could not apply snapshot '%s': Failed to load snapshot: No such file or directory", name)
	case errors.Is(err, qcow2.ErrSnapshotNotFound):
		return failf("Could not %s snapshot '%s': snapshot not found", verb, name)
	case errors.Is(err, qcow2.ErrSnapshotExists):
		return failf("Could not %s snapshot '%s': a snapshot named '%s' exists already", verb, name, name)
	}
	return failf("Could not %s snapshot '%s': %v", verb, name, err)
}

// snapshotList prints the snapshot table as qemu-img 7.2 does (nothing at
// all when there are no snapshots; dates in local time).
func snapshotList(w io.Writer, filename, format string, share bool) error {
	if format != "qcow2" {
		return nil
	}
	img, err := qcow2.Open(filename, readOptions(true, share))
	if err != nil {
		return failf("Could not open '%s': %v", filename, err)
	}
	defer img.Close()
	snaps, err := img.Snapshots()
	if err != nil {
		return failf("%v", err)
	}
	if len(snaps) == 0 {
		return nil
	}
	fmt.Fprintln(w, "Snapshot list:")
	fmt.Fprintf(w, "%-10s%-17s%8s%20s%13s%11s\n", "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT")
	for _, s := range snaps {
		ns := s.VMClock.Nanoseconds()
		secs := ns / 1e9
		clock := fmt.Sprintf("%02d:%02d:%02d.%03d", secs/3600, (secs/60)%60, secs%60, (ns/1e6)%1000)
		icount := ""
		if s.ICount != -1 {
			icount = strconv.FormatInt(s.ICount, 10)
		}
		fmt.Fprintf(w, "%-9s %-16s %8s%20s%13s%11s\n", s.ID, s.Name, humanSize(int64(s.VMStateSize)),
			s.Date.Local().Format("2006-01-02 15:04:05"), clock, icount)
	}
	return nil
}
