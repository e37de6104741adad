package qcow2

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"path/filepath"
)

// CollapseOptions say what Live.Collapse does.
type CollapseOptions struct {
	// Base is the path of the layer of the volume's backing chain that
	// becomes the top's backing file: every layer between the top and it
	// is dropped. It must be a qcow2 layer below the top's backing file
	// (the top's backing file itself: nothing to do).
	Base string
	// Progress, if set, is called after each step of the copy, on the
	// goroutine that runs Collapse and with no lock held.
	Progress func(CollapseProgress)
}

// CollapseProgress is how far a Collapse's copy is.
type CollapseProgress struct {
	// Done of Total guest bytes have been looked at: the bytes of the
	// ranges the dropped layers decide (what they allocate, or hide
	// behind zeros), whether or not the top defines them itself.
	Done, Total int64
	// Copied guest bytes were defined in the top by the copy (data, or
	// zero clusters); the rest the top defined already, or the guest
	// wrote meanwhile.
	Copied int64
}

// Guest bytes a Collapse maps at once (the extents of one window are held
// in memory), and the data it copies under one hold of the top's lock.
const (
	collapseWindow = 8 << 20
	collapseBatch  = 1 << 20
)

// Collapse removes the layers between the top and opts.Base from the
// volume's chain while the volume is served (QEMU's block-stream with a
// base): it copies into the top what those layers define and the top does
// not, then rewrites the top's header to name opts.Base as its backing
// file and closes the dropped layers. It returns their paths, top-most
// first; their files are left alone (the caller decides whether anything
// else still uses them). The frozen layers are never written, so a layer
// that a snapshot or another volume uses may be dropped from this volume.
//
// I/O through the handle goes on during the copy: a cluster is copied
// only if the top still leaves it to its backing file, checked under the
// top's lock, so a guest write is never overwritten by older data. The
// switch holds the handle exclusively, as Freeze does, for a last pass
// over what the copy covered, a Flush and the header rewrite.
//
// Crash safety: the copied clusters read what the old chain read, and the
// new backing file name reaches the disk only after they (data, L2
// entries, write journal checkpointed) are durable; the header itself is
// rewritten crash-safely (header_rewrite.go). So every crash state opens
// as the old chain, or as the new one with everything it needs.
//
// A cancelled context, like any error before the switch, leaves the chain
// as it was (the top keeps what was copied: it reads the same); the
// switch itself is not cancelled once under way. dropped is non-nil only
// if the top names the new base (an error then comes from closing the
// dropped layers). The top must not hold internal snapshots: they would
// read through the dropped layers. A Freeze called meanwhile waits until
// Collapse returns.
func (l *Live) Collapse(ctx context.Context, opts CollapseOptions) (dropped []string, err error) {
	l.ops.Lock()
	defer l.ops.Unlock()
	var p *collapsePlan
	if err := l.with(func(img *Image) (err error) { p, err = planCollapse(img, opts.Base); return err }); err != nil {
		return nil, err
	}
	if len(p.dropped) == 0 {
		return nil, nil
	}
	p.hook, p.batch = l.collapseHook, cmp.Or(l.collapseBatch, collapseBatch)
	prog := CollapseProgress{Total: p.total}
	report := func(done, copied int64) {
		prog.Done, prog.Copied = done, prog.Copied+copied
		if opts.Progress != nil {
			opts.Progress(prog)
		}
	}
	// Freeze cannot switch the top (ops), so l.img stays p.top.
	shared := func(fn func() error) error { return l.with(func(*Image) error { return fn() }) }
	if err := p.copy(ctx, shared, report); err != nil {
		return nil, err
	}
	return l.collapseSwitch(ctx, p)
}

// collapsePlan is a Collapse checked and planned before anything changes.
type collapsePlan struct {
	top       *Image
	hook      func(top *Image, off, n int64) // Live.collapseHook
	batch     int64                          // data bytes per step
	dropped   []*Image                       // top.backing first
	base      Disk
	baseDepth int    // the base's depth in the top's chain (the top: 0)
	name      string // the top's new backing file name
	ranges    []Range
	total     int64
}

// planCollapse finds the base in top's chain and checks everything the
// switch will need: the new backing file name opens the base under the
// top's policy and fits the header.
func planCollapse(top *Image, base string) (*collapsePlan, error) {
	if err := top.prepareWrite(); err != nil {
		return nil, err
	}
	if base == "" {
		return nil, errorf(ErrInvalid, "a collapse needs a base layer")
	}
	if top.Header().NbSnapshots > 0 {
		return nil, errorf(ErrUnsupported, "the top holds internal snapshots, which read through the layers a collapse drops")
	}
	want, err := os.Stat(base)
	if err != nil {
		return nil, fmt.Errorf("%w: base %s: %v", ErrNotInChain, base, err)
	}
	p := &collapsePlan{top: top, baseDepth: 1}
	for d := top.Backing(); ; p.baseDepth++ {
		if d == nil {
			return nil, fmt.Errorf("%w: %s is not below %s", ErrNotInChain, base, top.name)
		}
		if st, err := os.Stat(diskName(d)); err == nil && os.SameFile(st, want) {
			p.base = d
			break
		}
		img, ok := d.(*Image)
		if !ok {
			return nil, fmt.Errorf("%w: %s is not below %s", ErrNotInChain, base, top.name)
		}
		p.dropped = append(p.dropped, img)
		d = img.Backing()
	}
	if _, ok := p.base.(*Image); !ok {
		return nil, errorf(ErrUnsupported, "base %s is a raw file: a collapse keeps a qcow2 base, as the driver's layers are", base)
	}
	if len(p.dropped) == 0 {
		return p, nil
	}
	if err := p.checkName(); err != nil {
		return nil, err
	}
	top.mu.RLock()
	_, err = planHeaderRewrite(top.f, p.edit)
	top.mu.RUnlock()
	if err != nil {
		return nil, err
	}
	ranges, err := ChangedBetweenLayers(p.dropped[0], p.base)
	if err != nil {
		return nil, err
	}
	size := top.Size()
	for _, r := range ranges {
		if r.Start >= size {
			break
		}
		r.Length = min(r.End(), size) - r.Start
		p.ranges = append(p.ranges, r)
		p.total += r.Length
	}
	return p, nil
}

// diskName is the path a layer was opened by.
func diskName(d Disk) string {
	switch d := d.(type) {
	case *Image:
		return d.name
	case *Raw:
		return d.name
	}
	return ""
}

// checkName sets the top's new backing file name, the base relative to
// the top's directory (as Freeze names layers), and checks that the top's
// policy opens the base by it.
func (p *collapsePlan) checkName() error {
	top, base := absPath(p.top.name), absPath(diskName(p.base))
	name, err := filepath.Rel(filepath.Dir(top), base)
	if err != nil {
		return err
	}
	if hasProtocolPrefix(name) {
		return errorf(ErrPolicy, "base file name %q would read as a protocol prefix", name)
	}
	f, _, err := resolveBackingFlag(top, name, p.top.opts.Backing, os.O_RDONLY)
	if err != nil {
		return err
	}
	defer f.Close()
	got, err := f.Stat()
	if err != nil {
		return err
	}
	if want, err := os.Stat(base); err != nil || !os.SameFile(got, want) {
		return errorf(ErrPolicy, "the top would name its base %q, which opens another file", name)
	}
	p.name = name
	return nil
}

// edit makes a header name the new base.
func (p *collapsePlan) edit(h *Header) { h.BackingFile, h.BackingFormat = p.name, "qcow2" }

// copy makes the top define every range of the plan the dropped layers
// decide, one window at a time. lock runs each step (the window's plan,
// then each batch) as the handle allows: under its shared lock during the
// copy, so that a Close in between ends the copy with ErrClosed, and
// directly once the handle is held. progress, called between the steps
// with no lock held, gets the bytes of the plan looked at so far and
// those copied by the last step.
func (p *collapsePlan) copy(ctx context.Context, lock func(func() error) error, progress func(done, copied int64)) error {
	var before int64 // plan bytes in the ranges done
	for _, r := range p.ranges {
		for off := r.Start; off < r.End(); {
			n := min(r.End()-off, collapseWindow)
			err := p.window(ctx, lock, off, n, func(pos, copied int64) { progress(before+pos-r.Start, copied) })
			if err != nil {
				return err
			}
			off += n
		}
		before += r.Length
	}
	return nil
}

// window copies what [off, off+n) of the top needs, in batches of at most
// p.batch bytes of data, each under lock; step gets the guest offset up to
// which the window is done and the bytes copied by each batch.
func (p *collapsePlan) window(ctx context.Context, lock func(func() error) error, off, n int64, step func(pos, copied int64)) error {
	img := p.top
	var needs []clusterNeed
	err := lock(func() error {
		if size := img.Size(); off+n > size {
			n = max(0, size-off) // the top shrank meanwhile
		}
		if n == 0 {
			return nil
		}
		exts, err := img.Map(off, n)
		needs = img.collapseNeeds(exts, p.baseDepth)
		return err
	})
	if err != nil {
		return err
	}
	if p.hook != nil && n > 0 {
		p.hook(img, off, n)
	}
	if len(needs) == 0 {
		step(off+n, 0)
	}
	for len(needs) > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		k, data := 0, int64(0)
		for ; k < len(needs) && (k == 0 || data < p.batch); k++ {
			if needs[k].data != 0 {
				data += img.cs
			}
		}
		var copied int64
		err := lock(func() (err error) { copied, err = img.collapseFill(needs[:k]); return err })
		if err != nil {
			return err
		}
		needs = needs[k:]
		pos := off + n
		if len(needs) > 0 {
			pos = max(off, needs[0].vi<<img.cb)
		}
		step(pos, copied)
	}
	return nil
}

// collapseSwitch makes the top name the base, holding the handle
// exclusively: a last pass of the copy (what the guest made the top leave
// undefined again since, by reverting to an internal snapshot say), a
// Flush that makes the copy durable and checkpoints the write journal,
// and the header rewrite. Only then does the top read through the base.
func (l *Live) collapseSwitch(ctx context.Context, p *collapsePlan) ([]string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, ErrClosed
	}
	direct := func(fn func() error) error { return fn() }
	if err := p.copy(ctx, direct, func(int64, int64) {}); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err // the last chance to leave the chain as it was
	}
	top := p.top
	if err := top.Flush(); err != nil {
		return nil, err
	}
	top.lockQuiesced()
	defer top.mu.Unlock()
	if top.hdr.NbSnapshots > 0 {
		return nil, errorf(ErrUnsupported, "an internal snapshot of the top was taken during the collapse; it would read through the layers the collapse drops")
	}
	if err := top.setBackingLocked(p.name, "qcow2"); err != nil {
		return nil, err
	}
	// The top names the base on disk: it reads through it from now on.
	// Nothing reads the dropped layers any more (the top's reads wait for
	// its lock), so they leave the chain and are closed, the base apart.
	top.backing = p.base
	p.dropped[len(p.dropped)-1].backing = nil
	names := make([]string, len(p.dropped))
	for i, d := range p.dropped {
		names[i] = d.name
	}
	if err := p.dropped[0].Close(); err != nil {
		return names, fmt.Errorf("the top names its new base, but closing the dropped layers failed: %w", err)
	}
	return names, nil
}
