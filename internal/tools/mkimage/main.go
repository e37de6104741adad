package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
)

func main() {
	if err := run(os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

// labels collects repeated -label KEY=VALUE flags.
type labels map[string]string

func (l labels) String() string { return fmt.Sprint(map[string]string(l)) }

func (l labels) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("label %q: want KEY=VALUE", s)
	}
	l[k] = v
	return nil
}

// run parses args and builds the image; tests call it directly.
func run(args []string, stderr io.Writer) error {
	fl := flag.NewFlagSet("mkimage", flag.ContinueOnError)
	fl.SetOutput(stderr)
	root := fl.String("root", "", "directory tree of the runtime layer (the extracted Debian packages)")
	binary := fl.String("binary", "", "the static csi-qcow2 binary, stored as "+binaryPath)
	version := fl.String("version", "", "the driver's version: the image's tag and its version label")
	repo := fl.String("name", "localhost/csi-qcow2", "the image's repository; the reference is NAME:VERSION")
	out := fl.String("out", "", "the OCI image layout tarball to write")
	epochDefault, err := sourceDateEpoch()
	if err != nil {
		return err
	}
	epoch := fl.Int64("epoch", epochDefault, "Unix time of every timestamp in the image (default $SOURCE_DATE_EPOCH, else 0)")
	lbl := labels{}
	fl.Var(lbl, "label", "KEY=VALUE label of the image config (repeatable)")
	if err := fl.Parse(args); err != nil {
		return err
	}
	if *root == "" || *binary == "" || *version == "" || *out == "" || fl.NArg() != 0 {
		return errors.New("usage: mkimage -root DIR -binary FILE -version V -out FILE [-name REPO] [-label K=V]... [-epoch N]")
	}
	ref, err := name.NewTag(*repo+":"+*version, name.StrictValidation)
	if err != nil {
		return fmt.Errorf("image reference: %w", err)
	}
	arch, err := staticArch(*binary)
	if err != nil {
		return err
	}
	lbl["org.opencontainers.image.version"] = *version
	when := time.Unix(*epoch, 0).UTC()

	tmp, err := os.MkdirTemp("", "mkimage-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	base, err := layerFrom(tmp, func(w io.Writer) error { return writeTree(w, *root, when) })
	if err != nil {
		return err
	}
	bin, err := layerFrom(tmp, func(w io.Writer) error { return writeBinary(w, *binary, when) })
	if err != nil {
		return err
	}
	// The binary is a layer of its own, on top: a rebuild of the driver
	// alone leaves the packages' layer, and its digest, as they were.
	img, err := buildImage([]layerSpec{
		{base, "Debian packages extracted by scripts/build-image.sh"},
		{bin, "csi-qcow2 " + *version + " at " + binaryPath},
	}, imageSpec{arch: arch, epoch: when, labels: lbl})
	if err != nil {
		return err
	}
	if err := writeArchive(img, ref, tmp, *out, when); err != nil {
		return err
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "mkimage: wrote %s (%s, %s)\n", *out, ref.Name(), digest)
	return nil
}

// sourceDateEpoch is $SOURCE_DATE_EPOCH (reproducible-builds.org), 0 when
// unset.
func sourceDateEpoch() (int64, error) {
	s := os.Getenv("SOURCE_DATE_EPOCH")
	if s == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("SOURCE_DATE_EPOCH=%q: %w", s, err)
	}
	return n, nil
}
