package qcow2_test

import (
	"fmt"
	"go/ast"
	"go/importer"
	"go/parser"
	"go/token"
	"go/types"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// ioCalls are the calls that mutate a file: File methods and the
// engine's helpers that issue them.
var ioCalls = map[string]bool{
	"Sync": true, "WriteAt": true, "WriteAtDurable": true, "Truncate": true, "PunchHole": true,
	"writeDurable": true, "writeZeros": true, "syncDirOf": true, "Pwrite": true,
}

// faultScope says, per source file of the engine, why its I/O sites are
// not in the fault-injection workload: they belong to paths other than
// write, flush, checkpoint, snapshot and freeze, or to the plumbing that
// passes I/O on. A file not listed here must have every I/O site hit by
// the workload (TestFaultInjectionCoversEverySite); a new site in it
// fails that test until the workload reaches it or this list says why
// it need not.
var faultScope = map[string]string{
	"file.go":            "plumbing: osFile, writeDurable and writeZeros pass on their caller's I/O",
	"sync_guard.go":      "plumbing: the guard passes on its caller's I/O",
	"file_hooks.go":      "plumbing",
	"check.go":           "img check and its repairs: offline, on an image nothing serves",
	"repair.go":          "img check -r: offline",
	"amend.go":           "img amend: offline",
	"amend_compat.go":    "img amend: offline",
	"rebase.go":          "img rebase: offline",
	"commit.go":          "img commit: offline",
	"bitmap_header.go":   "persistent bitmap directory changes (img bitmap): offline",
	"bitmap_fallback.go": "persistent bitmaps dropped at open when they cannot be kept",
	"bitmap_store.go":    "persistent bitmaps stored at close: the workload's images have none",
	"bitmap_edit.go":     "img bitmap: offline",
	"bitmap_resize.go":   "resize with bitmaps: offline",
	"compress_write.go":  "compressed writes (img convert -c): offline",
	"prealloc.go":        "preallocation at create and resize: offline",
	"raw.go":             "raw images: no qcow2 metadata to keep consistent",
	"journal_open.go":    "journal replay at open: crash_journal_test.go and sync_guard_test.go",
	"overlap.go":         "the corrupt bit, written when corruption was found: a best effort on a failed image",
}

// faultSiteScope: sites outside the workload, by file:line (a line that
// moves fails TestFaultInjectionCoversEverySite until this is updated) or
// by file:function. The plumbing the test hooks stand in for, and the known gaps
// of the workload so far, each named as one.
var faultSiteScope = map[string]string{
	"external_snapshot.go:syncDir": "the directory sync faultPlan.syncDir stands in for",
	"pread.go:103":                 "writeHost's pwrite of the descriptor: the fault file has none, so the same writes fail at pread.go's WriteAt",
	"snapshot.go:718":              "clearCopiedL2 writes only a snapshot L2 table whose entries carry OFLAG_COPIED, which check reports as corruption and which neither this engine nor QEMU writes: no valid image reaches it",
}

// ioSites lists the engine's static I/O sites as "file.go:line", the
// line of the call (as the runtime reports it to faultPlan.step): calls
// of ioCalls whose receiver, if any, is not an image (Image.WriteAt
// writes a guest, not a file: its own I/O sites are what count).
func ioSites(t *testing.T) []string {
	t.Helper()
	fset := token.NewFileSet()
	names, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	var files []*ast.File
	for _, name := range names {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	info := &types.Info{Selections: map[*ast.SelectorExpr]*types.Selection{}}
	conf := types.Config{Importer: importer.ForCompiler(fset, "source", nil)}
	if _, err := conf.Check("qcow2", fset, files, info); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, f := range files {
		for _, decl := range f.Decls {
			fd, ok := decl.(*ast.FuncDecl)
			if !ok {
				continue
			}
			ast.Inspect(fd, func(n ast.Node) bool {
				call, ok := n.(*ast.CallExpr)
				if !ok {
					return true
				}
				var fn string
				switch e := call.Fun.(type) {
				case *ast.SelectorExpr:
					fn = e.Sel.Name
					if sel := info.Selections[e]; sel != nil && guestWriter(sel.Recv()) {
						return true
					}
				case *ast.Ident:
					fn = e.Name
				}
				if !ioCalls[fn] {
					return true
				}
				pos := fset.Position(call.Lparen)
				file := filepath.Base(pos.Filename)
				if _, out := faultSiteScope[file+":"+fd.Name.Name]; out {
					return true // the whole function is out of scope
				}
				out = append(out, fmt.Sprintf("%s:%d", file, pos.Line))
				return true
			})
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// guestWriter: the engine's types whose WriteAt takes guest data.
func guestWriter(recv types.Type) bool {
	if p, ok := recv.(*types.Pointer); ok {
		recv = p.Elem()
	}
	named, ok := recv.(*types.Named)
	if !ok {
		return false
	}
	switch named.Obj().Name() {
	case "Image", "Live", "Disk", "Raw":
		return true
	}
	return false
}

// TestFaultInjectionCoversEverySite requires every I/O site of the
// engine to be reached by the fault-injection workload (and so failed
// with EIO and ENOSPC by TestFaultInjection), or be out of its scope
// (faultScope).
func TestFaultInjectionCoversEverySite(t *testing.T) {
	hit := map[string]bool{}
	for _, cfg := range faultConfigs {
		plan := newFaultPlan(0, 0)
		newFaultRun(t, cfg.create, cfg.grow, cfg.journal, plan).workload()
		for site := range plan.sites {
			hit[strings.Fields(site)[0]] = true
		}
	}
	static := ioSites(t)
	var missed []string
	inScope := 0
	for _, site := range static {
		file := strings.Split(site, ":")[0]
		if _, out := faultScope[file]; out {
			continue
		}
		if _, out := faultSiteScope[site]; out {
			continue
		}
		inScope++
		if !hit[site] {
			missed = append(missed, site)
		}
	}
	for site := range hit {
		if !slices.Contains(static, site) {
			t.Errorf("the workload did I/O at %s, which the source scan does not list", site)
		}
	}
	if len(missed) > 0 {
		t.Errorf("I/O sites the fault-injection workload does not reach: %s", strings.Join(missed, ", "))
	}
	for site := range faultSiteScope {
		if _, err := strconv.Atoi(site[strings.LastIndexByte(site, ':')+1:]); err == nil && !slices.Contains(static, site) {
			t.Errorf("faultSiteScope names %s, which is no I/O site (the code moved: update it)", site)
		}
	}
	t.Logf("%d I/O sites in the engine; %d in the write, flush, checkpoint, snapshot and freeze paths are reached (%d single sites left out: faultSiteScope)", len(static), inScope, len(faultSiteScope))
}
