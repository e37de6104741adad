package main

import (
	"errors"
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"
)

// errSizeRange is returned by parseSize for values that do not fit in an
// int64; qemu-img words this case differently from a malformed size.
var errSizeRange = errors.New("size out of range")

// sizeSuffixes are qemu's binary multipliers, accepted in either case.
var sizeSuffixes = map[byte]uint{'B': 0, 'K': 10, 'M': 20, 'G': 30, 'T': 40, 'P': 50, 'E': 60}

// parseSize reads a size the way qemu-img does (qemu_strtosz): a decimal
// or 0x-prefixed hexadecimal integer, an optional decimal fraction (only
// together with a suffix other than B), and an optional suffix k, M, G, T,
// P or E (binary, case-insensitive; B means bytes). The result is rounded
// down to a whole byte. It returns a warning for hex numbers with a suffix,
// which qemu accepts but calls deprecated.
func parseSize(s string) (size int64, warning string, err error) {
	bad := fmt.Errorf("invalid size %q", s)
	rest := s
	hex := false
	var intPart string
	if len(rest) > 2 && rest[0] == '0' && (rest[1] == 'x' || rest[1] == 'X') {
		hex = true
		rest = rest[2:]
		n := strings.IndexFunc(rest, func(r rune) bool { return !strings.ContainsRune("0123456789abcdefABCDEF", r) })
		if n < 0 {
			n = len(rest)
		}
		intPart, rest = rest[:n], rest[n:]
	} else {
		n := strings.IndexFunc(rest, func(r rune) bool { return r < '0' || r > '9' })
		if n < 0 {
			n = len(rest)
		}
		intPart, rest = rest[:n], rest[n:]
	}
	if intPart == "" {
		return 0, "", bad
	}
	var frac string
	hasFrac := false
	if !hex && strings.HasPrefix(rest, ".") {
		hasFrac = true
		rest = rest[1:]
		n := strings.IndexFunc(rest, func(r rune) bool { return r < '0' || r > '9' })
		if n < 0 {
			n = len(rest)
		}
		frac, rest = rest[:n], rest[n:]
	}
	shift := uint(0)
	if rest != "" {
		if len(rest) != 1 {
			return 0, "", bad
		}
		sh, ok := sizeSuffixes[upper(rest[0])]
		if !ok {
			return 0, "", bad
		}
		shift = sh
		if hex {
			warning = "Using a multiplier suffix on hex numbers is deprecated: " + s
		}
	}
	if hasFrac && shift == 0 {
		// A fraction of a byte is meaningless; qemu refuses it.
		return 0, "", bad
	}
	base := 10
	if hex {
		base = 16
	}
	v, ok := new(big.Int).SetString(intPart, base)
	if !ok {
		return 0, "", bad
	}
	v.Lsh(v, shift)
	if frac != "" {
		f, _ := new(big.Int).SetString(frac, 10)
		f.Lsh(f, shift)
		f.Quo(f, new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(len(frac))), nil))
		v.Add(v, f)
	}
	if !v.IsInt64() {
		return 0, "", errSizeRange
	}
	return v.Int64(), warning, nil
}

func upper(c byte) byte {
	if c >= 'a' && c <= 'z' {
		return c - 'a' + 'A'
	}
	return c
}

// humanSize formats a byte count as qemu's size_to_str does: three
// significant digits and a binary unit, switching to the next unit once
// the number would reach 1000 ("1 GiB", "324 KiB", "0 B", "1.5 MiB").
func humanSize(v int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	// The exponent of v*1024/1000 in base 2, divided by 10, picks the unit.
	_, exp := math.Frexp(float64(v) / (1000.0 / 1024.0))
	i := max((exp-1)/10, 0)
	i = min(i, len(units)-1)
	d := float64(v) / float64(uint64(1)<<(10*i))
	return strconv.FormatFloat(d, 'g', 3, 64) + " " + units[i]
}
