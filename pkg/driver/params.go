package driver

import (
	"regexp"
	"sort"
	"strings"

	"github.com/csi-qcow2/csi-qcow2/pkg/driver/store"
)

// StorageClass and VolumeSnapshotClass parameters.
const (
	paramImageURL    = "imageURL"
	paramImageSHA256 = "imageSHA256"
	paramSnapType    = "type"
	// The CSI sidecars add parameters under this prefix (PVC and PV
	// names with --extra-create-metadata, fsType): they are not ours.
	sidecarPrefix = "csi.storage.k8s.io/"
)

var sha256Pattern = regexp.MustCompile(`^[0-9a-f]{64}$`)

// ourParams drops the sidecars' parameters and refuses any key that is
// not in known, naming it.
func ourParams(params map[string]string, known ...string) (map[string]string, error) {
	out := map[string]string{}
	var unknown []string
	for k, v := range params {
		switch {
		case strings.HasPrefix(k, sidecarPrefix):
		case contains(known, k):
			out[k] = v
		default:
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return nil, invalid("unknown parameter %q (known: %s)", unknown[0], strings.Join(known, ", "))
	}
	return out, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// volumeParams reads a StorageClass's parameters: an optional golden
// image, named by URL with its required checksum.
func volumeParams(params map[string]string) (map[string]string, *store.ImageRef, error) {
	p, err := ourParams(params, paramImageURL, paramImageSHA256)
	if err != nil {
		return nil, nil, err
	}
	url, sum := p[paramImageURL], p[paramImageSHA256]
	switch {
	case url == "" && sum == "":
		return p, nil, nil
	case url == "":
		return nil, nil, invalid("parameter %s is set but %s is not", paramImageSHA256, paramImageURL)
	case sum == "":
		return nil, nil, invalid("parameter %s needs %s, the image's SHA-256", paramImageURL, paramImageSHA256)
	case !sha256Pattern.MatchString(sum):
		return nil, nil, invalid("parameter %s %q is not 64 lowercase hex digits", paramImageSHA256, sum)
	}
	return p, &store.ImageRef{URL: url, SHA256: sum}, nil
}

// snapshotParams reads a VolumeSnapshotClass's parameters: the snapshot
// type, external by default.
func snapshotParams(params map[string]string) (string, error) {
	p, err := ourParams(params, paramSnapType)
	if err != nil {
		return "", err
	}
	switch t := p[paramSnapType]; t {
	case "", store.TypeExternal:
		return store.TypeExternal, nil
	case store.TypeInternal:
		return t, nil
	default:
		return "", invalid("parameter %s %q is neither %s nor %s", paramSnapType, t, store.TypeExternal, store.TypeInternal)
	}
}
