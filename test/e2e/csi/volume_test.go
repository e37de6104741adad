package csi

import "testing"

// A volume keeps what one pod wrote for the next pod, which stages it
// again, on both access types.
func TestVolumeKeepsDataAcrossPods(t *testing.T) {
	e := setup(t)
	for _, block := range []bool{false, true} {
		name := map[bool]string{false: "filesystem", true: "block"}[block]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			n := e.newNamespace(t)
			n.createClaim(claim{name: "vol", size: "64Mi", block: block})
			want := n.writeData("writer", "vol", block)
			if got := n.readData("reader", "vol", block); got != want {
				t.Fatalf("read %s, wrote %s", got, want)
			}
		})
	}
}
