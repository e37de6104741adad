// Command benchratio reads `go test -bench` output on stdin and prints a
// Markdown table that compares each benchmark with its baseline: the
// throughput ratio variant/baseline, where 1.00 means as fast as the
// baseline.
//
// Benchmarks are named <group>/<variant> (the "Benchmark" prefix and the
// -GOMAXPROCS suffix are dropped). Within a group, variant "X-S1-S2" is
// compared with the first of "<base>-S1-S2", "<base>-S1" and "<base>"
// (-base, default "raw") that the group has; variants named like the
// baseline are baselines and get no row of their own. With -count > 1 every figure is the median
// of the runs, and ± is half the spread (max-min) relative to the median.
//
// Targets are given as -target 'glob=ratio' (path.Match syntax against
// "<group>/<variant>", first match wins); rows below their target are
// marked, and -strict makes that an exit status of 1.
//
// Usage (see scripts/bench-ratios.sh):
//
//	go test -run '^$' -bench . -count 3 ./pkg/qcow2 > bench.txt
//	go run ./internal/tools/benchratio -target 'Read/*/qcow2-*=0.9' < bench.txt
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

type targetFlag []target

type target struct {
	glob  string
	ratio float64
}

func (t *targetFlag) String() string { return fmt.Sprint(*t) }

func (t *targetFlag) Set(s string) error {
	glob, r, ok := strings.Cut(s, "=")
	if !ok {
		return fmt.Errorf("want glob=ratio, got %q", s)
	}
	if _, err := path.Match(glob, ""); err != nil {
		return fmt.Errorf("bad glob %q: %v", glob, err)
	}
	v, err := strconv.ParseFloat(r, 64)
	if err != nil || v <= 0 {
		return fmt.Errorf("bad ratio in %q", s)
	}
	*t = append(*t, target{glob, v})
	return nil
}

// result collects the runs of one benchmark.
type result struct {
	nsPerOp []float64
	mbPerS  []float64
}

// input is the parsed benchmark output.
type input struct {
	header  []string // goos, goarch, pkg, cpu lines
	order   []string // benchmark names in first-seen order
	results map[string]*result
}

var procsSuffix = regexp.MustCompile(`-\d+$`)

func parse(r io.Reader) (*input, error) {
	in := &input{results: map[string]*result{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		for _, h := range []string{"goos:", "goarch:", "pkg:", "cpu:"} {
			if strings.HasPrefix(line, h) && !slices.Contains(in.header, line) {
				in.header = append(in.header, line)
			}
		}
		f := strings.Fields(line)
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		if _, err := strconv.Atoi(f[1]); err != nil {
			continue // not a result line
		}
		name := procsSuffix.ReplaceAllString(strings.TrimPrefix(f[0], "Benchmark"), "")
		res := in.results[name]
		if res == nil {
			res = &result{}
			in.results[name] = res
			in.order = append(in.order, name)
		}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			switch f[i+1] {
			case "ns/op":
				res.nsPerOp = append(res.nsPerOp, v)
			case "MB/s":
				res.mbPerS = append(res.mbPerS, v)
			}
		}
	}
	return in, sc.Err()
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// spread is half of (max-min), relative to the median, in percent.
func spread(v []float64) float64 {
	if len(v) < 2 {
		return 0
	}
	m := median(v)
	if m == 0 {
		return 0
	}
	return (slices.Max(v) - slices.Min(v)) / 2 / m * 100
}

func split(name string) (group, variant string) {
	i := strings.LastIndex(name, "/")
	if i < 0 {
		return "", name
	}
	return name[:i], name[i+1:]
}

func isBase(variant, base string) bool {
	return variant == base || strings.HasPrefix(variant, base+"-")
}

// baselineOf returns the name of the benchmark variant is compared with.
func baselineOf(in *input, group, variant, base string) (string, bool) {
	prefix := group + "/"
	if group == "" {
		prefix = ""
	}
	parts := strings.Split(variant, "-")
	for k := len(parts); k > 1; k-- {
		if n := prefix + base + "-" + strings.Join(parts[1:k], "-"); in.results[n] != nil {
			return n, true
		}
	}
	n := prefix + base
	return n, in.results[n] != nil
}

func throughput(r *result) (float64, float64, string) {
	if len(r.mbPerS) > 0 {
		return median(r.mbPerS), spread(r.mbPerS), "MB/s"
	}
	return median(r.nsPerOp), spread(r.nsPerOp), "ns/op"
}

func run(stdin io.Reader, stdout io.Writer, base string, targets []target, strict bool) (int, error) {
	in, err := parse(stdin)
	if err != nil {
		return 2, err
	}
	if len(in.order) == 0 {
		return 2, fmt.Errorf("no benchmark results on stdin")
	}
	for _, h := range in.header {
		fmt.Fprintf(stdout, "%s  \n", h)
	}
	runs := 0
	for _, r := range in.results {
		runs = max(runs, len(r.nsPerOp))
	}
	fmt.Fprintf(stdout, "\nMedian of %d run(s); ratio = variant throughput / baseline throughput.\n\n", runs)
	fmt.Fprintln(stdout, "| Benchmark | Variant | Throughput | Baseline | Baseline throughput | Ratio | Target | |")
	fmt.Fprintln(stdout, "|---|---|---:|---|---:|---:|---:|---|")
	below := 0
	for _, name := range in.order {
		group, variant := split(name)
		if isBase(variant, base) {
			continue
		}
		r := in.results[name]
		v, vs, unit := throughput(r)
		shown := group
		if group == "" {
			shown, variant = variant, "-"
		}
		cells := []string{shown, variant, fmtThroughput(v, vs, unit)}
		bname, ok := baselineOf(in, group, variant, base)
		if !ok {
			cells = append(cells, "(none)", "", "", "", "")
			fmt.Fprintln(stdout, "| "+strings.Join(cells, " | ")+" |")
			continue
		}
		br := in.results[bname]
		bv, bs, bunit := throughput(br)
		// Same bytes per op on both sides: the throughput ratio is the
		// inverse ratio of the times per op.
		ratio := median(br.nsPerOp) / median(r.nsPerOp)
		_, bvariant := split(bname)
		cells = append(cells, bvariant, fmtThroughput(bv, bs, bunit), fmt.Sprintf("%.2f", ratio))
		want := 0.0
		for _, t := range targets {
			if ok, _ := path.Match(t.glob, name); ok {
				want = t.ratio
				break
			}
		}
		switch {
		case want == 0:
			cells = append(cells, "", "")
		case ratio < want:
			cells = append(cells, fmt.Sprintf("%.2f", want), "**below**")
			below++
		default:
			cells = append(cells, fmt.Sprintf("%.2f", want), "ok")
		}
		fmt.Fprintln(stdout, "| "+strings.Join(cells, " | ")+" |")
	}
	if below > 0 {
		fmt.Fprintf(stdout, "\n%d benchmark(s) below target.\n", below)
		if strict {
			return 1, nil
		}
	}
	return 0, nil
}

func fmtThroughput(v, spreadPct float64, unit string) string {
	s := fmt.Sprintf("%.0f %s", v, unit)
	if v < 100 {
		s = fmt.Sprintf("%.1f %s", v, unit)
	}
	if spreadPct > 0 {
		s += fmt.Sprintf(" ±%.0f%%", spreadPct)
	}
	return s
}

func main() {
	base := flag.String("base", "raw", "name of the baseline variant")
	strict := flag.Bool("strict", false, "exit 1 when a benchmark is below its target")
	var targets targetFlag
	flag.Var(&targets, "target", "glob=ratio: minimum ratio for benchmarks matching glob (repeatable)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: go test -bench ... | benchratio [-base raw] [-target glob=ratio]... [-strict]\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	code, err := run(os.Stdin, os.Stdout, *base, targets, *strict)
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchratio:", err)
	}
	os.Exit(code)
}
