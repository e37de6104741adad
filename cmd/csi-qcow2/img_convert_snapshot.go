package main

import (
	"strings"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2/convert"
)

// parseSnapshotParam parses -l's SNAPSHOT_PARAM: snapshot.id=X and/or
// snapshot.name=Y, or one ID_OR_NAME (matched against ids first, then
// names).
func parseSnapshotParam(s string) (convert.SnapshotRef, error) {
	if !strings.HasPrefix(s, "snapshot.") {
		return convert.SnapshotRef{IDOrName: s}, nil
	}
	var r convert.SnapshotRef
	for _, kv := range splitOptList(s) {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "snapshot.id":
			r.ID = v
		case "snapshot.name":
			r.Name = v
		default:
			return r, failf("Invalid parameter '%s'", k)
		}
	}
	if !r.IsSet() {
		return r, failf("Failed in parsing snapshot param '%s'", s)
	}
	return r, nil
}
