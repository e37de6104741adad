package golden

import (
	"net/url"
	"path/filepath"
	"strings"
)

// Source is where a golden image comes from and what it must be.
type Source struct {
	// URL is http://, https://, or file:///path under one of
	// Importer.FileRoots.
	URL string
	// SHA256 is the checksum of the bytes URL serves, as 64 lowercase
	// hex characters. It is required: it names the imported image, so
	// imports of the same content from different URLs are one image.
	SHA256 string
}

// validSHA256 reports whether s is 64 lowercase hex characters.
func validSHA256(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// location is a checked Source URL: a remote one, or a file under a root.
type location struct {
	url  *url.URL
	root string // file: the FileRoots entry the file is under
	rel  string // file: its path relative to root, slash-separated
}

// redacted is the URL for messages and logs: without a password.
func (l location) redacted() string {
	// A query may carry a signature (an S3 presigned URL, say): logs and
	// the CO's events must not.
	u := *l.url
	if u.RawQuery != "" {
		u.RawQuery = "..."
	}
	return u.Redacted()
}

// parseSource checks src and where its URL points, without touching the
// network or the file system.
func parseSource(src Source, roots []string) (location, error) {
	if !validSHA256(src.SHA256) {
		return location{}, invalidf("sha256 %q is not 64 lowercase hex characters", clip(src.SHA256))
	}
	u, err := url.Parse(src.URL)
	if err != nil {
		return location{}, invalidf("URL %q: %v", clip(src.URL), err)
	}
	switch strings.ToLower(u.Scheme) {
	case "http", "https":
		if u.Host == "" {
			return location{}, invalidf("URL %s names no host", u.Redacted())
		}
		return location{url: u}, nil
	case "file":
		return parseFileURL(u, roots)
	case "":
		return location{}, invalidf("URL %q has no scheme (http, https or file)", clip(u.Redacted()))
	}
	return location{}, invalidf("URL scheme %q is not supported (http, https or file)", u.Scheme)
}

// parseFileURL checks a file: URL lexically: an absolute, clean path
// without "..", under one of roots. Opening it (fileroot.go) goes through
// os.Root, which also refuses symlinks out of the root.
func parseFileURL(u *url.URL, roots []string) (location, error) {
	l := location{url: u}
	switch {
	case len(roots) == 0:
		return l, invalidf("file: URLs are not allowed (no file roots are configured)")
	case u.Opaque != "":
		return l, invalidf("file: URL %q must name an absolute path (file:///...)", clip(u.String()))
	case u.Host != "" && u.Host != "localhost":
		return l, invalidf("file: URL %q names host %q; only local files can be read", clip(u.String()), u.Host)
	case u.User != nil || u.RawQuery != "" || u.Fragment != "":
		return l, invalidf("file: URL %q has a user, query or fragment", clip(u.Redacted()))
	case !strings.HasPrefix(u.Path, "/"):
		return l, invalidf("file: URL %q must name an absolute path", clip(u.String()))
	case strings.ContainsRune(u.Path, 0):
		return l, invalidf("file: URL path contains a NUL byte")
	}
	for _, part := range strings.Split(u.Path, "/") {
		if part == ".." {
			return l, invalidf("file: URL path %q contains \"..\"", clip(u.Path))
		}
	}
	path := filepath.Clean(u.Path)
	for _, root := range roots {
		root = filepath.Clean(root)
		rel, err := filepath.Rel(root, path)
		if err != nil || !filepath.IsAbs(root) || rel == "." || rel == ".." || strings.HasPrefix(rel, "../") {
			continue
		}
		l.root, l.rel = root, rel
		return l, nil
	}
	return l, invalidf("file %s is not under any of the allowed file roots", path)
}

// clip shortens caller-provided strings for messages.
func clip(s string) string {
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}
