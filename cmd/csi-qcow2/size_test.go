package main

import (
	"errors"
	"testing"
)

// The expectations come from qemu-img 7.2's create (see "Formatting ... size=").
func TestParseSize(t *testing.T) {
	good := map[string]int64{
		"0": 0, "1b": 1, "1B": 1, "1k": 1024, "1K": 1024, "1g": 1 << 30, "1G": 1 << 30,
		"0x10": 16, "1.5k": 1536, "1.25G": 1342177280, "1.0000001k": 1024, "1.k": 1024,
		"017": 17, "7E": 7 << 60, "512M": 512 << 20, "1T": 1 << 40, "1P": 1 << 50,
		"9223372036854775807": 1<<63 - 1,
	}
	for in, want := range good {
		got, _, err := parseSize(in)
		if err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "1.5", "1e3", "10kB", ".5k", "1x", "-1", "k", "0x", "0x1.5k", " 1k"} {
		if got, _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) = %d, want an error", in, got)
		}
	}
	for _, in := range []string{"8E", "9223372036854775808", "100000000000000000000"} {
		if _, _, err := parseSize(in); !errors.Is(err, errSizeRange) {
			t.Errorf("parseSize(%q): err = %v, want errSizeRange", in, err)
		}
	}
	if _, warn, err := parseSize("0x1k"); err != nil || warn == "" {
		t.Errorf("parseSize(0x1k): warning %q, err %v; want a deprecation warning", warn, err)
	}
}

func TestHumanSize(t *testing.T) {
	for in, want := range map[int64]string{
		0: "0 B", 1: "1 B", 999: "999 B", 1000: "0.977 KiB", 1024: "1 KiB", 4096: "4 KiB",
		5120: "5 KiB", 331776: "324 KiB", 1536 << 10: "1.5 MiB", 1 << 30: "1 GiB",
		1023 << 20: "0.999 GiB", 10 << 40: "10 TiB", 1 << 60: "1 EiB",
	} {
		if got := humanSize(in); got != want {
			t.Errorf("humanSize(%d) = %q, want %q", in, got, want)
		}
	}
}
