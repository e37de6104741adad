package store

import "time"

// Record states. A record in stateCreating is an intent: the object does
// not exist yet (lists and lookups do not show it), and Open removes it
// with the files it names unless the operation can be finished
// (recover.go).
const (
	stateCreating = "creating"
	stateReady    = "ready"
)

// Chain is what a volume or snapshot reads: an optional golden image at
// the bottom, then frozen layers bottom to top.
type Chain struct {
	Image  string   `json:"image,omitempty"`  // sha256 of the golden image
	Layers []string `json:"layers,omitempty"` // layer IDs, bottom first
}

func (c Chain) clone() Chain {
	return Chain{Image: c.Image, Layers: append([]string(nil), c.Layers...)}
}

// depth counts the files of the chain.
func (c Chain) depth() int {
	n := len(c.Layers)
	if c.Image != "" {
		n++
	}
	return n
}

// Source says what a volume was made from.
type Source struct {
	Kind string `json:"kind"` // "image", "snapshot" or "volume"
	ID   string `json:"id"`   // image sha256, snapshot ID or volume ID
}

// volumeRecord is volumes/<id>.json.
type volumeRecord struct {
	ID       string            `json:"id"`
	Name     string            `json:"name"`
	State    string            `json:"state"`
	Capacity int64             `json:"capacity"`
	Params   map[string]string `json:"params,omitempty"`
	Source   *Source           `json:"source,omitempty"`
	Chain    Chain             `json:"chain"`
	Top      string            `json:"top"` // layer ID of the writable top
	Created  time.Time         `json:"created"`
	// Pending is a change of the top's file in progress; Open finishes
	// or undoes it (recover.go).
	Pending *pending `json:"pending,omitempty"`
}

// pending operations on a volume's top.
const (
	opFreeze   = "freeze"   // the top is being frozen into Layer
	opCollapse = "collapse" // layers above Keep are being merged into the top
	opExpand   = "expand"   // the top is being grown to Size
)

type pending struct {
	Op string `json:"op"`
	// Layer: opFreeze's new frozen layer.
	Layer string `json:"layer,omitempty"`
	// Keep: opCollapse keeps this many layers of the chain.
	Keep int `json:"keep,omitempty"`
	// Size: opExpand's new size.
	Size int64 `json:"size,omitempty"`
}

// Snapshot types.
const (
	TypeExternal = "external" // a frozen layer
	TypeInternal = "internal" // a qcow2 internal snapshot in a layer
)

// snapshotRecord is snapshots/<id>.json. For an external snapshot the
// chain's last layer is its frozen layer; for an internal one it is the
// file that holds the internal snapshot (named Internal), and the rest
// of the chain is that file's backing.
type snapshotRecord struct {
	ID       string `json:"id"`
	Name     string `json:"name"`
	State    string `json:"state"`
	Type     string `json:"type"`
	Volume   string `json:"volume"` // source volume ID
	Size     int64  `json:"size"`   // virtual size at snapshot time
	Chain    Chain  `json:"chain"`
	Internal string `json:"internal,omitempty"`
	// Layer, for an internal snapshot, is the frozen layer its first
	// restore made; later restores are overlays on it. With LayerAbove it
	// stands on the whole chain (the file, frozen by then, included) and
	// holds the snapshot's content where the file changed after it;
	// without, it stands on the chain below the file and holds what the
	// snapshot holds in the file (materialize).
	Layer      string    `json:"layer,omitempty"`
	LayerAbove bool      `json:"layer_above,omitempty"`
	Created    time.Time `json:"created"`
}
