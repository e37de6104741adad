package main

import (
	"strings"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
	"github.com/spf13/pflag"
)

// openOptions are the options every img subcommand opens images with: the
// CLI's wide backing policy (see imgPolicyNote). A read-only open never
// repairs a dirty image (info, map and convert must not change their input).
func openOptions(readOnly, noBacking bool) qcow2.Options {
	return qcow2.Options{
		ReadOnly:     readOnly,
		NoBacking:    noBacking,
		NoAutoRepair: readOnly,
		Backing:      qcow2.BackingPolicy{AllowAnyPath: true},
	}
}

// readOptions are openOptions for a read-only open; forceShare is the
// command's -U.
func readOptions(noBacking, forceShare bool) qcow2.Options {
	o := openOptions(true, noBacking)
	o.ForceShare = forceShare
	return o
}

// addForceShareFlag adds -U/--force-share to the commands that only read
// an image, where qemu-img has it.
func addForceShareFlag(f *pflag.FlagSet, forceShare *bool) {
	f.BoolVarP(forceShare, "force-share", "U", false, "open the image even while another program writes it (what is read may be inconsistent); see \"Image locks\" in docs/engine.md")
}

// checkFormat rejects formats other than the two the engine knows; "" is
// allowed and means "probe".
func checkFormat(f string) error {
	switch f {
	case "", "qcow2", "raw":
		return nil
	}
	return failf("Unknown file format '%s'", f)
}

// pathCombine resolves a backing file name against the image that names
// it, as QEMU's path_combine does: absolute names stand, relative names
// are taken relative to the directory of base (no cleaning of "..").
func pathCombine(base, name string) string {
	if name == "" || strings.HasPrefix(name, "/") {
		return name
	}
	if i := strings.LastIndexByte(base, '/'); i >= 0 {
		return base[:i+1] + name
	}
	return name
}

// layer is one image of an opened chain, top first.
type layer struct {
	disk     qcow2.Disk
	filename string // as qemu-img names it: the argument, then combined paths
}

// chainOf lists d and its backing files, naming each like qemu-img.
func chainOf(d qcow2.Disk, filename string) []layer {
	var out []layer
	for d != nil {
		out = append(out, layer{disk: d, filename: filename})
		img, ok := d.(*qcow2.Image)
		if !ok {
			break
		}
		next := img.Backing()
		if next == nil {
			break
		}
		filename = pathCombine(filename, img.Info().BackingFilename)
		d = next
	}
	return out
}
