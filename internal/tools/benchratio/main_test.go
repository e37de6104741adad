package main

import (
	"bytes"
	"strings"
	"testing"
)

const sample = `goos: linux
goarch: amd64
pkg: github.com/csi-qcow2/csi-qcow2/pkg/qcow2
cpu: Intel(R) Xeon(R) Processor
BenchmarkRead/4K-random/raw-2         	  100	      1000 ns/op	4096.00 MB/s	       0 B/op	       0 allocs/op
BenchmarkRead/4K-random/qcow2-falloc-2	  100	      1250 ns/op	3276.80 MB/s	      64 B/op	       2 allocs/op
BenchmarkRead/4K-random/raw-2         	  100	      1100 ns/op	3723.64 MB/s	       0 B/op	       0 allocs/op
BenchmarkRead/4K-random/qcow2-falloc-2	  100	      1150 ns/op	3561.74 MB/s	      64 B/op	       2 allocs/op
BenchmarkRead/4K-random/raw-2         	  100	      1050 ns/op	3900.95 MB/s	       0 B/op	       0 allocs/op
BenchmarkRead/4K-random/qcow2-falloc-2	  100	      1200 ns/op	3413.33 MB/s	      64 B/op	       2 allocs/op
BenchmarkWrite/4K-random/raw-sparse-2 	  100	      2000 ns/op	2048.00 MB/s
BenchmarkWrite/4K-random/raw-2        	  100	      1000 ns/op	4096.00 MB/s
BenchmarkWrite/4K-random/qcow2-sparse-2	  100	      8000 ns/op	 512.00 MB/s
BenchmarkWrite/4K-random/qcow2-sparse-lazy-2	  100	      4000 ns/op	 1024.00 MB/s	2.000 pwrites/op
BenchmarkOther-2                      	  100	      5 ns/op
PASS
`

func TestRun(t *testing.T) {
	var out bytes.Buffer
	targets := targetFlag{}
	for _, s := range []string{"Read/*/qcow2-*=0.9", "Write/*/qcow2-sparse=0.5"} {
		if err := targets.Set(s); err != nil {
			t.Fatal(err)
		}
	}
	code, err := run(strings.NewReader(sample), &out, "raw", targets, true)
	if err != nil {
		t.Fatal(err)
	}
	got := out.String()
	for _, want := range []string{
		"cpu: Intel(R) Xeon(R) Processor",
		"Median of 3 run(s)",
		// medians: raw 1050 ns, qcow2 1200 ns -> 0.875
		"| Read/4K-random | qcow2-falloc | 3413 MB/s ±4% | raw | 3901 MB/s ±5% | 0.88 | 0.90 | **below** |",
		// raw-sparse is the baseline of qcow2-sparse, not raw
		"| Write/4K-random | qcow2-sparse | 512 MB/s | raw-sparse | 2048 MB/s | 0.25 | 0.50 | **below** |",
		"| Write/4K-random | qcow2-sparse-lazy | 1024 MB/s | raw-sparse | 2048 MB/s | 0.50 |  |  |",
		"| Other | - | 5.0 ns/op | (none) |  |  |  |  |",
		"2 benchmark(s) below target.",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
	if code != 1 {
		t.Errorf("exit code %d with -strict and rows below target, want 1", code)
	}
	if strings.Contains(got, "4K-random | raw |") || strings.Contains(got, "4K-random | raw-sparse |") {
		t.Errorf("baselines got rows of their own:\n%s", got)
	}
}

func TestTargetFlag(t *testing.T) {
	var tf targetFlag
	for _, bad := range []string{"Read", "Read=x", "Read=-1", "[=0.5"} {
		if err := tf.Set(bad); err == nil {
			t.Errorf("Set(%q) accepted", bad)
		}
	}
}

func TestEmptyInput(t *testing.T) {
	if code, err := run(strings.NewReader("PASS\n"), &bytes.Buffer{}, "raw", nil, false); err == nil || code != 2 {
		t.Errorf("empty input: code %d, err %v", code, err)
	}
}
