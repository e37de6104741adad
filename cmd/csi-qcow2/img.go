package main

import (
	"github.com/spf13/cobra"
)

// imgPolicyNote is appended to the help of every img subcommand that opens
// images: unlike the CSI driver, the CLI follows backing file names anywhere.
const imgPolicyNote = `
Backing files: img opens images with a wide policy (AllowAnyPath): a backing
file named inside an image is opened wherever it points, absolute or
relative to the image, as qemu-img does. Only use it on images you trust.
External data files are refused, and so are a chain that comes back to one of
its own files (under any name) and a chain whose metadata would take more than
512 MiB of memory (the engine's default budget).`

// imgLockNote is for the commands that only read an image and take -U.
const imgLockNote = `
Locks: the image is locked as QEMU locks it while it is read, so this fails
while another program (qemu-img, qemu-nbd, a VM, img serve or attach) has
it open for writing, and writers are kept out meanwhile. -U (--force-share)
reads it anyway, as qemu-img -U does; what is read may then be inconsistent.
`

func newImgCmd() *cobra.Command {
	img := &cobra.Command{
		Use:   "img",
		Short: "Create, inspect, check, map, resize, convert, compare and measure disk images (a qemu-img work-alike); serve and attach them over NBD",
		Long: `img mirrors the qemu-img subcommands and output formats of QEMU 7.2 for the
qcow2 and raw formats, using the pure-Go engine in pkg/qcow2.

Errors are printed as "csi-qcow2 img: ..." and exit with status 1; check uses
qemu-img check's exit statuses.

Every image file is locked while it is open, with the byte-range locks QEMU
uses (docs/engine.md, "Image locks"): an image one program writes cannot be
opened by another, QEMU included, except read-only with -U (--force-share)
where qemu-img has it; an image open read-only cannot be written meanwhile.
` + imgPolicyNote,
	}
	img.AddCommand(
		newImgCreateCmd(),
		newImgInfoCmd(),
		newImgCheckCmd(),
		newImgMapCmd(),
		newImgResizeCmd(),
		newImgConvertCmd(),
		newImgSnapshotCmd(),
		newImgCompareCmd(),
		newImgMeasureCmd(),
		newImgRebaseCmd(),
		newImgCommitCmd(),
		newImgAmendCmd(),
		newImgAttachCmd(),
		newImgDetachCmd(),
		newImgListCmd(),
		newImgServeCmd(),
		newImgBitmapCmd(),
	)
	for _, c := range img.Commands() {
		// Use already spells out each subcommand's flags, qemu-img style.
		c.DisableFlagsInUseLine = true
	}
	return img
}
