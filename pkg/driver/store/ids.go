package store

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"regexp"
	"strings"
)

// Object IDs are deterministic from the CO's name, so that a retried
// Create finds what the first try made, and they name the node that owns
// the object, so that any node can tell a request for another node's
// object (the provisioner then reschedules): <kind>-<32 hex>@<node tag>.
// CSI allows 128 bytes; the longest ID here is 2+32+1+88 = 123.
const (
	volumeKind   = "v"
	snapshotKind = "s"
	maxNodeInTag = 88
)

var (
	idPattern      = regexp.MustCompile(`^([vs])-([0-9a-f]{32})@([A-Za-z0-9._-]{1,90})$`)
	nodeTagPattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,88}$`)
	layerPattern   = regexp.MustCompile(`^l-[0-9a-f]{32}$`)
	shaPattern     = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// nodeTag is the node's name where it fits an ID, else a hash of it
// (Kubernetes node names may be 253 bytes long).
func nodeTag(node string) string {
	if nodeTagPattern.MatchString(node) && !strings.HasPrefix(node, "h.") {
		return node
	}
	sum := sha256.Sum256([]byte(node))
	return "h." + hex.EncodeToString(sum[:16])
}

func objectID(kind, name, tag string) string {
	sum := sha256.Sum256([]byte(kind + "\x00" + name))
	return kind + "-" + hex.EncodeToString(sum[:16]) + "@" + tag
}

// parsedID is an ID split into its kind and owning node tag; ok is false
// for anything that is not an ID this driver makes.
type parsedID struct {
	kind, tag string
	ok        bool
}

func parseID(id string) parsedID {
	m := idPattern.FindStringSubmatch(id)
	if m == nil {
		return parsedID{}
	}
	return parsedID{kind: m[1], tag: m[3], ok: true}
}

// newLayerID names a new layer file. Layer files are never reused: an
// object that is deleted and made again gets new ones, while snapshots
// may still read the old.
func newLayerID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return "l-" + hex.EncodeToString(b[:])
}
