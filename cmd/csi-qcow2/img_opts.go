package main

import (
	"fmt"
	"math/bits"
	"strconv"
	"strings"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// createOpts are the -o options of img create and img convert, as typed.
// The zero value means "every option at its default".
type createOpts struct {
	set map[string]string // option name -> value as given

	size          int64
	clusterSize   int64
	refcountBits  int
	compat        string // as given ("1.1", "v3", "0.10", "v2")
	lazyRefcounts bool
	prealloc      string
	backingFile   string
	backingFmt    string
	compression   string // compression_type: "zlib" or "zstd"
	extendedL2    bool
}

// knownOpts lists the -o options each output format accepts.
var knownOpts = map[string][]string{
	"qcow2": {"size", "compat", "backing_file", "backing_fmt", "cluster_size", "extended_l2",
		"preallocation", "lazy_refcounts", "refcount_bits", "compression_type"},
	"raw": {"size", "preallocation"},
}

// optHelp is printed for -o help, in qemu-img's layout.
var optHelp = map[string]string{
	"qcow2": `Supported options:
  backing_file=<str>     - File name of a base image
  backing_fmt=<str>      - Image format of the base image
  cluster_size=<size>    - qcow2 cluster size
  compat=<str>           - Compatibility level (v2 [0.10] or v3 [1.1])
  compression_type=<str> - Compression method used for image cluster compression
  extended_l2=<bool (on/off)> - Extended L2 tables
  lazy_refcounts=<bool (on/off)> - Postpone refcount updates
  preallocation=<str>    - Preallocation mode (allowed values: off, metadata, falloc, full)
  refcount_bits=<num>    - Width of a reference count entry in bits
  size=<size>            - Virtual disk size
`,
	"raw": `Supported options:
  preallocation=<str>    - Preallocation mode (allowed values: off, falloc, full)
  size=<size>            - Virtual disk size
`,
}

// splitOptList splits qemu's "a=1,b=2" syntax, where ",," is a literal comma.
func splitOptList(s string) []string {
	var out []string
	var cur strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == ',' {
			if i+1 < len(s) && s[i+1] == ',' {
				cur.WriteByte(',')
				i++
				continue
			}
			out = append(out, cur.String())
			cur.Reset()
			continue
		}
		cur.WriteByte(s[i])
	}
	return append(out, cur.String())
}

// isHelpOpt reports whether the -o list asks for the option list.
func isHelpOpt(list []string) bool {
	for _, o := range list {
		for _, kv := range splitOptList(o) {
			if kv == "help" || kv == "?" {
				return true
			}
		}
	}
	return false
}

// parseCreateOpts parses every -o argument for output format fmtName.
func parseCreateOpts(fmtName string, list []string) (*createOpts, error) {
	o := &createOpts{set: map[string]string{}}
	allowed := knownOpts[fmtName]
	for _, arg := range list {
		for _, kv := range splitOptList(arg) {
			if kv == "" {
				continue
			}
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				return nil, fmt.Errorf("Invalid parameter '%s'", k)
			}
			known := false
			for _, a := range allowed {
				known = known || a == k
			}
			if !known {
				return nil, fmt.Errorf("Invalid parameter '%s'", k)
			}
			o.set[k] = v
		}
	}
	return o, o.validate(fmtName)
}

// parseOptBool accepts the spellings qemu accepts for a boolean option.
func parseOptBool(name, v string) (bool, error) {
	switch v {
	case "on", "yes", "true", "y":
		return true, nil
	case "off", "no", "false", "n":
		return false, nil
	}
	return false, fmt.Errorf("Parameter '%s' expects 'on' or 'off'", name)
}

// validate checks the values and fills the typed fields.
func (o *createOpts) validate(fmtName string) error {
	if v, ok := o.set["size"]; ok {
		n, _, err := parseSize(v)
		if err != nil {
			return fmt.Errorf("Parameter 'size' expects a non-negative number below 2^63")
		}
		o.size = n
	}
	o.prealloc = qcow2.PreallocOff
	if v, ok := o.set["preallocation"]; ok {
		switch v {
		case qcow2.PreallocOff, qcow2.PreallocFalloc, qcow2.PreallocFull:
		case qcow2.PreallocMetadata:
			if fmtName == "raw" {
				return fmt.Errorf("Unsupported preallocation mode 'metadata'")
			}
		default:
			return fmt.Errorf("Parameter 'preallocation' does not accept value '%s'", v)
		}
		o.prealloc = v
	}
	if fmtName != "qcow2" {
		return nil
	}
	o.clusterSize = 65536
	if v, ok := o.set["cluster_size"]; ok {
		n, _, err := parseSize(v)
		if err != nil || n < 512 || n > 2<<20 || bits.OnesCount64(uint64(n)) != 1 {
			return fmt.Errorf("Cluster size must be a power of two between 512 and 2048k")
		}
		o.clusterSize = n
	}
	o.refcountBits = 16
	if v, ok := o.set["refcount_bits"]; ok {
		n, err := strconv.ParseUint(v, 0, 64)
		if err != nil {
			return fmt.Errorf("Parameter 'refcount_bits' expects a number")
		}
		if n == 0 || n > 64 || bits.OnesCount64(n) != 1 {
			return fmt.Errorf("Refcount width must be a power of two and may not exceed 64 bits")
		}
		o.refcountBits = int(n)
	}
	o.compat = "1.1"
	if v, ok := o.set["compat"]; ok {
		switch v {
		case "1.1", "v3":
			o.compat = "1.1"
		case "0.10", "v2":
			o.compat = "0.10"
		default:
			return fmt.Errorf("Invalid compatibility level: '%s'", v)
		}
	}
	if v, ok := o.set["lazy_refcounts"]; ok {
		b, err := parseOptBool("lazy_refcounts", v)
		if err != nil {
			return err
		}
		o.lazyRefcounts = b
	}
	if v, ok := o.set["extended_l2"]; ok {
		b, err := parseOptBool("extended_l2", v)
		if err != nil {
			return err
		}
		o.extendedL2 = b
	}
	o.compression = "zlib"
	if v, ok := o.set["compression_type"]; ok {
		if v != "zlib" && v != "zstd" {
			return fmt.Errorf("Parameter 'compression-type' does not accept value '%s'", v)
		}
		o.compression = v
	}
	if o.compat == "0.10" {
		if o.lazyRefcounts {
			return fmt.Errorf("Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)")
		}
		if o.refcountBits != 16 {
			return fmt.Errorf("Different refcount widths than 16 bits require compatibility level 1.1 or above (use version=v3 or greater)")
		}
		if o.compression != "zlib" {
			return fmt.Errorf("Non-zlib compression type is only supported with compatibility level 1.1 and above (use version=v3 or greater)")
		}
	}
	o.backingFile = o.set["backing_file"]
	o.backingFmt = o.set["backing_fmt"]
	return nil
}

// extendedL2Err is what qemu-img says about extended_l2=on with a
// geometry that cannot have it; it says so only when it creates the
// image (after create's "Formatting" line).
func (o *createOpts) extendedL2Err() error {
	switch {
	case !o.extendedL2:
		return nil
	case o.compat == "0.10":
		return fmt.Errorf("Extended L2 entries are only supported with compatibility level 1.1 and above (use version=v3 or greater)")
	case o.clusterSize < 16384:
		return fmt.Errorf("Extended L2 entries are only supported with cluster sizes of at least 16384 bytes")
	}
	return nil
}

// formattingLine is the line qemu-img create prints before creating an
// image, with the options in qemu-img 7.2's order.
func (o *createOpts) formattingLine(filename, fmtName string, size int64) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Formatting '%s', fmt=%s", filename, fmtName)
	opt := func(k, v string) { fmt.Fprintf(&b, " %s=%s", k, v) }
	given := func(k string) {
		if v, ok := o.set[k]; ok {
			opt(k, v)
		}
	}
	if fmtName == "raw" {
		opt("size", strconv.FormatInt(size, 10))
		given("preallocation")
		return b.String()
	}
	opt("cluster_size", strconv.FormatInt(o.clusterSize, 10))
	opt("extended_l2", o.setOr("extended_l2", "off"))
	given("preallocation")
	opt("compression_type", o.setOr("compression_type", "zlib"))
	opt("size", strconv.FormatInt(size, 10))
	given("compat")
	if o.backingFile != "" {
		opt("backing_file", o.backingFile)
	}
	if o.backingFmt != "" {
		opt("backing_fmt", o.backingFmt)
	}
	opt("lazy_refcounts", o.setOr("lazy_refcounts", "off"))
	opt("refcount_bits", strconv.Itoa(o.refcountBits))
	return b.String()
}

func (o *createOpts) setOr(k, def string) string {
	if v, ok := o.set[k]; ok {
		return v
	}
	return def
}

// qcow2Options turns the parsed options into the engine's CreateOptions.
func (o *createOpts) qcow2Options(size int64, unsafe bool) qcow2.CreateOptions {
	return qcow2.CreateOptions{
		Size:            size,
		ClusterSize:     o.clusterSize,
		RefcountBits:    o.refcountBits,
		Compat:          o.compat,
		LazyRefcounts:   o.lazyRefcounts,
		CompressionType: o.compression,
		ExtendedL2:      o.extendedL2,
		Preallocation:   o.prealloc,
		BackingFile:     o.backingFile,
		BackingFormat:   o.backingFmt,
		Backing:         qcow2.BackingPolicy{AllowAnyPath: true},
		Unsafe:          unsafe,
	}
}
