package driver

import (
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const (
	defaultVolumeSize = 1 << 30
	sizeAlign         = 1 << 20 // what volumes are rounded up to
	minAlign          = 512     // what the image format needs
	// maxVolumeSize is the largest volume made: qcow2 allows more, but
	// past 64 TiB an L1 table alone outgrows the engine's bounds at the
	// default cluster size.
	maxVolumeSize = 64 << 40
)

// volumeSize picks the size for a capacity range: required_bytes rounded
// up to a MiB, or to 512 bytes where the limit leaves no room for a MiB.
func volumeSize(r *csi.CapacityRange) (int64, error) {
	req, lim := r.GetRequiredBytes(), r.GetLimitBytes()
	switch {
	case req < 0 || lim < 0:
		return 0, invalid("capacity_range has a negative size")
	case lim > 0 && req > lim:
		return 0, invalid("capacity_range: required_bytes %d is more than limit_bytes %d", req, lim)
	case req == 0 && lim == 0:
		return defaultVolumeSize, nil
	}
	if req == 0 {
		req = min(defaultVolumeSize, lim)
	}
	size := roundUp(req, sizeAlign)
	if lim > 0 && size > lim {
		size = roundUp(req, minAlign)
	}
	if lim > 0 && size > lim {
		return 0, status.Errorf(codes.OutOfRange, "no size of whole 512-byte sectors lies in [%d, %d]", req, lim)
	}
	if size > maxVolumeSize {
		return 0, status.Errorf(codes.OutOfRange, "%d bytes is more than the largest volume, %d", size, int64(maxVolumeSize))
	}
	return size, nil
}

func roundUp(n, to int64) int64 { return (n + to - 1) / to * to }
