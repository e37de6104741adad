package demo

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/csi-qcow2/csi-qcow2/pkg/driver"
)

const (
	// dataBytes is how much each write step writes.
	dataBytes = 8 << 20
	// blockOffset is where the block volume's data goes.
	blockOffset = 32 << 20
	// grownSize is what the block volume is expanded to.
	grownSize = 256 << 20
)

// lifecycle drives the driver from a golden image to expanded volumes;
// teardown (in Run) deletes what it made.
func (r *run) lifecycle(ctx context.Context) error {
	var g *golden
	if err := r.step(ctx, "golden image", func() (string, error) {
		var err error
		if g, err = makeGolden(ctx, filepath.Join(r.root, "http")); err != nil {
			return "", err
		}
		r.atExit(g.close)
		return fmt.Sprintf("ext4 in a %d MiB raw disk, sha256 %s…, served at %s", goldenSize>>20, g.sha[:12], g.url), nil
	}); err != nil {
		return err
	}
	image := map[string]string{"imageURL": g.url, "imageSHA256": g.sha}
	vols := map[string]*csi.Volume{}
	if err := r.step(ctx, "CreateVolume: import + first overlay", func() (string, error) {
		v, err := r.s.createVolume(ctx, "vol-fs", mountCap("ext4"), image, nil)
		vols["vol-fs"] = v
		return "downloaded, checksum verified, converted to a qcow2 base once; vol-fs is an overlay on it", err
	}); err != nil {
		return err
	}
	if err := r.step(ctx, "CreateVolume: two more overlays", func() (string, error) {
		for _, name := range []string{"vol-block", "vol-idle"} {
			c := mountCap("ext4")
			if name == "vol-block" {
				c = blockCap()
			}
			v, err := r.s.createVolume(ctx, name, c, image, nil)
			if err != nil {
				return "", err
			}
			vols[name] = v
		}
		return "vol-block and vol-idle: new empty tops over the same base, no copy", nil
	}); err != nil {
		return err
	}

	var fsDir, dev string
	if err := r.step(ctx, "stage + publish vol-fs (ext4)", func() (string, error) {
		var err error
		if fsDir, err = r.s.attach(ctx, vols["vol-fs"].VolumeId, "vol-fs", mountCap("ext4")); err != nil {
			return "", err
		}
		hello, err := os.ReadFile(filepath.Join(fsDir, "hello.txt"))
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("mounted at %s; hello.txt reads %q", rel(r.root, fsDir), bytes.TrimSpace(hello)), nil
	}); err != nil {
		return err
	}
	if err := r.step(ctx, "stage + publish vol-block (raw block)", func() (string, error) {
		var err error
		dev, err = r.s.attach(ctx, vols["vol-block"].VolumeId, "vol-block", blockCap())
		return fmt.Sprintf("block device at %s (attach path: %s)", rel(r.root, dev), r.attachPath()), err
	}); err != nil {
		return err
	}

	notes, blockData := randomBytes(1), randomBytes(2)
	if err := r.step(ctx, "write", func() (string, error) {
		if err := writeFileSync(filepath.Join(fsDir, "notes.txt"), notes); err != nil {
			return "", err
		}
		if err := writeAtSync(dev, blockData, blockOffset); err != nil {
			return "", err
		}
		return fmt.Sprintf("%d MiB into vol-fs's notes.txt, %d MiB at %d MiB of vol-block, fsynced", dataBytes>>20, dataBytes>>20, blockOffset>>20), nil
	}); err != nil {
		return err
	}
	snaps := map[string]*csi.Snapshot{}
	for _, typ := range []string{"external", "internal"} {
		if err := r.step(ctx, "CreateSnapshot ("+typ+") of vol-fs", func() (string, error) {
			sn, err := r.s.createSnapshot(ctx, "snap-"+typ, vols["vol-fs"].VolumeId, typ)
			snaps[typ] = sn
			if typ == "external" {
				return "the top froze into a read-only layer; vol-fs goes on in a new top, still mounted", err
			}
			return "a qcow2 internal snapshot inside vol-fs's top", err
		}); err != nil {
			return err
		}
	}
	if err := r.step(ctx, "overwrite notes.txt", func() (string, error) {
		return "vol-fs changes after the snapshots", writeFileSync(filepath.Join(fsDir, "notes.txt"), randomBytes(3))
	}); err != nil {
		return err
	}
	for _, typ := range []string{"external", "internal"} {
		if err := r.step(ctx, "restore the "+typ+" snapshot", func() (string, error) {
			name := "restored-" + typ
			src := &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
				Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snaps[typ].SnapshotId}}}
			v, err := r.s.createVolume(ctx, name, mountCap("ext4"), nil, src)
			if err != nil {
				return "", err
			}
			vols[name] = v
			dir, err := r.s.attach(ctx, v.VolumeId, name, mountCap("ext4"))
			if err != nil {
				return "", err
			}
			got, err := os.ReadFile(filepath.Join(dir, "notes.txt"))
			if err != nil {
				return "", err
			}
			if !bytes.Equal(got, notes) {
				return "", fmt.Errorf("%s: notes.txt does not read what it held at the snapshot", name)
			}
			return name + " mounted: notes.txt reads as at the snapshot (sha256 " + shortSum(got) + ")", nil
		}); err != nil {
			return err
		}
	}
	if err := r.step(ctx, "clone vol-block", func() (string, error) {
		src := &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
			Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: vols["vol-block"].VolumeId}}}
		v, err := r.s.createVolume(ctx, "clone-block", blockCap(), nil, src)
		if err != nil {
			return "", err
		}
		vols["clone-block"] = v
		cdev, err := r.s.attach(ctx, v.VolumeId, "clone-block", blockCap())
		if err != nil {
			return "", err
		}
		got, err := readAt(cdev, dataBytes, blockOffset)
		if err != nil {
			return "", err
		}
		if !bytes.Equal(got, blockData) {
			return "", fmt.Errorf("clone-block does not read vol-block's data")
		}
		return "clone of the published vol-block (live freeze + overlay); its data reads the same", nil
	}); err != nil {
		return err
	}
	if err := r.step(ctx, "expand vol-block online", func() (string, error) {
		return r.expand(ctx, vols["vol-block"].VolumeId, dev, grownSize)
	}); err != nil {
		return err
	}
	if err := r.step(ctx, "expand vol-fs online (ext4)", func() (string, error) {
		switch ok, err := driver.CanGrowExt4Online(); {
		case err != nil:
			return "skipped: cannot tell whether this process may grow ext4 online: " + err.Error(), nil
		case !ok:
			return "skipped: ext4 grows online only with CAP_SYS_RESOURCE, which this process lacks", nil
		}
		return r.expand(ctx, vols["vol-fs"].VolumeId, fsDir, grownSize)
	}); err != nil {
		return err
	}
	return r.volumeTable(ctx, vols)
}

// expand grows a published volume as the external-resizer's trivial mode
// and kubelet do: only NodeExpandVolume, on the node that holds it.
func (r *run) expand(ctx context.Context, id, path string, size int64) (string, error) {
	if _, err := r.s.node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: id, VolumePath: path,
		CapacityRange: &csi.CapacityRange{RequiredBytes: size}}); err != nil {
		return "", fmt.Errorf("NodeExpandVolume: %w", err)
	}
	st, err := r.s.node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: path})
	if err != nil {
		return "", err
	}
	var total int64
	for _, u := range st.Usage {
		if u.Unit == csi.VolumeUsage_BYTES {
			total = u.Total
		}
	}
	return fmt.Sprintf("%d MiB -> %d MiB while published; NodeGetVolumeStats reports %s", goldenSize>>20, size>>20, mib(total)), nil
}

// randomBytes is dataBytes of reproducible noise (seed picks which).
func randomBytes(seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	p := make([]byte, dataBytes)
	for i := 0; i < len(p); i += 8 {
		v := rng.Uint64()
		for k := range 8 {
			p[i+k] = byte(v >> (8 * k))
		}
	}
	return p
}

func shortSum(p []byte) string {
	s := sha256.Sum256(p)
	return fmt.Sprintf("%x…", s[:6])
}

func writeFileSync(path string, p []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write(p)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func writeAtSync(path string, p []byte, off int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteAt(p, off)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func readAt(path string, n int, off int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	p := make([]byte, n)
	_, err = f.ReadAt(p, off)
	return p, err
}

func rel(root, path string) string {
	if r, err := filepath.Rel(root, path); err == nil {
		return "$DEMO/" + r
	}
	return path
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
