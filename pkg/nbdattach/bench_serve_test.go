package nbdattach

import (
	"encoding/binary"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkServe4K drives one connection with 4 KiB READs or WRITEs kept
// 32 deep (a reader and a writer goroutine on the client side, like
// libnbd), on a raw FileBackend in the page cache; b.N requests. Its
// allocs/op are the server's and the client's per request; the CPU per
// request of the server alone is what scripts/bench-nbd.sh measures.
func BenchmarkServe4K(b *testing.B) {
	for _, write := range []bool{false, true} {
		name := "read"
		if write {
			name = "write"
		}
		b.Run(name, func(b *testing.B) {
			path := filepath.Join(b.TempDir(), "disk.raw")
			if err := os.WriteFile(path, make([]byte, 64<<20), 0o600); err != nil {
				b.Fatal(err)
			}
			fb, err := OpenFileBackend(path, false)
			if err != nil {
				b.Fatal(err)
			}
			defer fb.Close()
			tc, done := serve(b, fb, Options{})
			tc.negotiate("", false)
			const depth = 32
			slots := make(chan struct{}, depth)
			payload := make([]byte, 4096)
			req := make([]byte, requestSize+4096)
			b.ReportAllocs()
			b.ResetTimer()
			go func() {
				for i := range b.N {
					slots <- struct{}{}
					binary.BigEndian.PutUint32(req[0:], magicRequest)
					binary.BigEndian.PutUint16(req[4:], 0)
					typ, n := uint16(cmdRead), requestSize
					if write {
						typ, n = cmdWrite, requestSize+4096
						copy(req[requestSize:], payload)
					}
					binary.BigEndian.PutUint16(req[6:], typ)
					binary.BigEndian.PutUint64(req[8:], uint64(i))
					binary.BigEndian.PutUint64(req[16:], uint64(i*4096)%(64<<20))
					binary.BigEndian.PutUint32(req[24:], 4096)
					if _, err := tc.c.Write(req[:n]); err != nil {
						return
					}
				}
			}()
			hdr := make([]byte, simpleReplySize)
			data := make([]byte, 4096)
			for range b.N {
				if _, err := io.ReadFull(tc.c, hdr); err != nil {
					b.Fatal(err)
				}
				if !write {
					if _, err := io.ReadFull(tc.c, data); err != nil {
						b.Fatal(err)
					}
				}
				<-slots
			}
			b.StopTimer()
			tc.request(cmdDisc, 0, 0, 0, 0, nil)
			waitDone(b, done)
		})
	}
}
