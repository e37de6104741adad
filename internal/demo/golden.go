package demo

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// goldenSize is the golden image's virtual size, and so the volumes'.
const goldenSize = 128 << 20

// helloText is the file the golden image's filesystem holds.
const helloText = "hello from the golden image\n"

// golden is a golden image served over http on loopback.
type golden struct {
	url, sha string
	srv      *http.Server
}

// makeGolden writes a raw disk image holding an ext4 filesystem with
// /hello.txt under dir, and serves dir over http on loopback.
func makeGolden(ctx context.Context, dir string) (*golden, error) {
	content := filepath.Join(dir, "content")
	if err := os.MkdirAll(content, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(content, "hello.txt"), []byte(helloText), 0o644); err != nil {
		return nil, err
	}
	img := filepath.Join(dir, "golden.raw")
	f, err := os.Create(img)
	if err != nil {
		return nil, err
	}
	err = f.Truncate(goldenSize)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		return nil, fmt.Errorf("the demo's golden image needs mkfs.ext4 (apt-get install -y e2fsprogs): %w", err)
	}
	if out, err := exec.CommandContext(ctx, mkfs, "-q", "-F", "-L", "golden", "-d", content, img).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("mkfs.ext4: %v: %s", err, out)
	}
	sha, err := fileSHA256(img)
	if err != nil {
		return nil, err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	g := &golden{
		url: fmt.Sprintf("http://%s/%s", lis.Addr(), filepath.Base(img)),
		sha: sha,
		srv: &http.Server{Handler: http.FileServer(http.Dir(dir)), ReadHeaderTimeout: 10 * time.Second},
	}
	go g.srv.Serve(lis)
	return g, nil
}

func (g *golden) close() { g.srv.Close() }

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
