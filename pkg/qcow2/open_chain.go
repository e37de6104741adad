package qcow2

import (
	"fmt"
	"os"
)

// openChain is what one Open shares with the opens of its backing files:
// the policy, the layers opened so far (by device and inode) and the
// memory budget. It lives for the duration of the open only.
type openChain struct {
	pol    BackingPolicy
	layers []chainLayer // top first
	budget openBudget
}

// chainLayer is one file of the chain being opened.
type chainLayer struct {
	name string
	id   fileID
	ok   bool // id is known (a host file)
}

func newOpenChain(opts Options) (*openChain, error) {
	if err := opts.Backing.validate(); err != nil {
		return nil, err
	}
	return &openChain{pol: opts.Backing, budget: newOpenBudget(opts.MemoryBudget)}, nil
}

// chainFor returns the chain an open of child's backing file belongs to:
// opts' own, or for a backing file opened outside Open (commit) a new
// chain whose first layer is the file at child.
func chainFor(child string, opts Options) (*openChain, error) {
	if opts.chain != nil {
		return opts.chain, nil
	}
	return newChainAt(child, nil, opts)
}

// newChainAt starts a chain whose top is the image name, stored in f (or
// with f nil, the file at name): for opening a backing file of an image
// that is not being opened (create, rebase).
func newChainAt(name string, f File, opts Options) (*openChain, error) {
	ch, err := newOpenChain(opts)
	if err != nil {
		return nil, err
	}
	if f != nil {
		ch.enterTop(name, f)
	} else {
		id, ok := pathFileID(name)
		ch.layers = append(ch.layers, chainLayer{name: name, id: id, ok: ok})
	}
	return ch, nil
}

// enterTop records the top image of the chain.
func (c *openChain) enterTop(name string, f File) {
	id, ok := fileIDOf(f)
	c.layers = append(c.layers, chainLayer{name: name, id: id, ok: ok})
}

// admit vets a backing file that child names (as name, opened from path)
// before anything is read from it, and records it as the next layer. It
// refuses, by identity, a file that already is a layer (a loop: A names
// A, A names B names A, or a second name of either), and a write journal.
// Under a confining policy the file must be a regular file (a FIFO or a
// device could block or have side effects).
func (c *openChain) admit(child, name, path string, f *os.File) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !c.pol.AllowAnyPath && !fi.Mode().IsRegular() {
		return fmt.Errorf("%w: backing file %q is not a regular file (%v)", ErrPolicy, name, fi.Mode().Type())
	}
	id, ok := statFileID(fi)
	if ok {
		for i, l := range c.layers {
			if l.ok && l.id == id {
				return fmt.Errorf("%w: backing loop: %s names %q, which is the same file as chain layer %d (%s)", ErrInvalid, child, name, i, l.name)
			}
		}
	}
	if err := c.refuseJournal(f, name, id, ok); err != nil {
		return err
	}
	c.layers = append(c.layers, chainLayer{name: path, id: id, ok: ok})
	return nil
}

// refuseJournal refuses a write journal as a backing file: it holds
// another image's mappings, never guest data. It is known by its magic,
// or (an empty journal has none yet) by being the journal of a layer of
// the chain or of a file an Exact policy lists.
func (c *openChain) refuseJournal(f *os.File, name string, id fileID, ok bool) error {
	var magic [len(journalMagic)]byte
	if n, _ := f.ReadAt(magic[:], 0); n == len(magic) && string(magic[:]) == journalMagic {
		return fmt.Errorf("%w: backing file %q is a write journal", ErrPolicy, name)
	}
	if !ok {
		return nil
	}
	owners := make([]string, 0, len(c.layers)+len(c.pol.Files))
	for _, l := range c.layers {
		owners = append(owners, l.name)
	}
	owners = append(owners, c.pol.Files...)
	for _, o := range owners {
		if jid, jok := pathFileID(JournalPath(o)); jok && jid == id {
			return fmt.Errorf("%w: backing file %q is the write journal of %s", ErrPolicy, name, o)
		}
	}
	return nil
}
