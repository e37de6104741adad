package main

import (
	"fmt"
	"strings"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
	"github.com/spf13/cobra"
)

// bitmapAction is one operation of `img bitmap`, applied in command-line
// order as qemu-img does.
type bitmapAction struct {
	op  string // add, remove, clear, enable, disable, merge
	src string // merge source bitmap
}

func newImgBitmapCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "bitmap (--merge SOURCE | --add | --remove | --clear | --enable | --disable)... [-g granularity] [-f fmt] filename bitmap",
		Short: "Add, remove, clear, enable, disable or merge persistent dirty bitmaps",
		Long: `Change the persistent dirty bitmap named bitmap in a qcow2 image, as qemu-img
bitmap does. Several operations may be given; they apply in order.

  --add          create the bitmap (enabled, unless --disable is also given)
  -g SIZE        granularity of a new bitmap (power of two, 512 B..2 GiB;
                 default: the cluster size clamped to 4 KiB..64 KiB)
  --remove       delete the bitmap and free its clusters
  --clear        reset every bit
  --enable       record guest writes in the bitmap
  --disable      stop recording guest writes
  --merge SOURCE set every bit that bitmap SOURCE (same image) has set

A bitmap that is in use (its writer crashed) can only be removed.
Merging from another image (-b) is not supported.`,
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runBitmap(cmd, args)
		},
	}
}

func runBitmap(cmd *cobra.Command, args []string) error {
	var (
		acts        []bitmapAction
		format, gra string
		pos         []string
	)
	for i := 0; i < len(args); i++ {
		a := args[i]
		val := func() (string, error) {
			if k, v, ok := strings.Cut(a, "="); ok && strings.HasPrefix(k, "--") {
				return v, nil
			}
			if i+1 >= len(args) {
				return "", failf("option '%s' requires an argument", a)
			}
			i++
			return args[i], nil
		}
		name, _, _ := strings.Cut(a, "=")
		switch name {
		case "-h", "--help":
			return cmd.Help()
		case "--add", "--remove", "--clear", "--enable", "--disable":
			acts = append(acts, bitmapAction{op: strings.TrimPrefix(name, "--")})
		case "--merge":
			v, err := val()
			if err != nil {
				return err
			}
			acts = append(acts, bitmapAction{op: "merge", src: v})
		case "-g", "--granularity":
			v, err := val()
			if err != nil {
				return err
			}
			gra = v
		case "-f":
			v, err := val()
			if err != nil {
				return err
			}
			format = v
		case "-b", "-F":
			return failf("Merging from another image (%s) is not supported", a)
		default:
			if strings.HasPrefix(a, "-") && a != "-" {
				return failf("unrecognized option '%s'", a)
			}
			pos = append(pos, a)
		}
	}
	if len(acts) == 0 {
		return failf("Need at least one of --add, --remove, --clear, --enable, --disable, or --merge")
	}
	if len(pos) != 2 {
		return failf("Expecting filename and bitmap")
	}
	var granularity int64
	add, disabled := false, false
	for _, a := range acts {
		add = add || a.op == "add"
		disabled = disabled || a.op == "disable"
	}
	if gra != "" {
		if !add {
			return failf("granularity only supported with --add")
		}
		g, _, err := parseSize(gra)
		if err != nil || g == 0 {
			return failf("Invalid granularity specified")
		}
		granularity = g
	}
	if err := checkFormat(format); err != nil {
		return err
	}
	if format == "raw" {
		return failf("Format 'raw' does not support persistent bitmaps")
	}
	filename, bitmap := pos[0], pos[1]
	img, err := qcow2.Open(filename, openOptions(false, true))
	if err != nil {
		return failf("Could not open '%s': %v", filename, err)
	}
	for _, a := range acts {
		var err error
		switch a.op {
		case "add":
			err = img.AddBitmap(bitmap, granularity, disabled)
		case "remove":
			err = img.RemoveBitmap(bitmap)
		case "clear":
			err = img.ClearBitmap(bitmap)
		case "enable", "disable":
			err = img.SetBitmapEnabled(bitmap, a.op == "enable")
		case "merge":
			err = img.MergeBitmap(bitmap, a.src)
		}
		if err != nil {
			img.Close()
			return failf("Operation %s on bitmap %s failed: %v", a.op, bitmap, err)
		}
	}
	if err := img.Close(); err != nil {
		return failf("%v", fmt.Errorf("storing the bitmaps of '%s': %w", filename, err))
	}
	return nil
}
