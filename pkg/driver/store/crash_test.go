package store

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// The child process of TestKillDuringOperations: it opens the store,
// runs one run's script, and dies by SIGKILL at the crash point or after
// the delay its parent chose. Before each call it logs the call, after it
// "done", so that the parent knows which call to retry.
const crashChildEnv = "CSI_QCOW2_STORE_CRASH_CHILD"

type crashPlan struct {
	Root string
	Run  int
	// Die at the KillNth time (from 1) the step KillStep is passed;
	// "": never.
	KillStep string
	KillNth  int
	DelayUS  int64 // die after this long; 0: never
	Log      string
}

func TestCrashChild(t *testing.T) {
	env := os.Getenv(crashChildEnv)
	if env == "" {
		t.Skip("the child process of TestKillDuringOperations")
	}
	var p crashPlan
	if err := json.Unmarshal([]byte(env), &p); err != nil {
		t.Fatal(err)
	}
	die := func() { syscall.Kill(os.Getpid(), syscall.SIGKILL) }
	log, err := os.OpenFile(p.Log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	var steps []string
	seen := map[string]int{}
	crashPoint = func(step string) {
		steps = append(steps, step)
		if seen[step]++; step == p.KillStep && seen[step] == p.KillNth {
			fmt.Fprintf(log, "killed at %s\n", step)
			die()
		}
	}
	if p.DelayUS > 0 {
		time.AfterFunc(time.Duration(p.DelayUS)*time.Microsecond, die)
	}
	s, err := Open(Config{Root: p.Root, Node: "node-1", MaxChainDepth: 3})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range script(p.Run, s) {
		b, _ := json.Marshal(c)
		fmt.Fprintf(log, "call %s\n", b)
		if err := c.do(s); err != nil {
			t.Fatalf("%s %s: %v", c.Op, c.Name, err)
		}
		fmt.Fprintf(log, "done\n")
	}
	fmt.Fprintf(log, "steps %s\n", strings.Join(steps, "|"))
}

// Kill -9 of a process running the store at hundreds of points inside
// create, delete, snapshot (both types), clone, restore and merge, each
// followed by a restart and a retry of the interrupted call: every object
// ends whole or absent, what every object reads is what it should, no
// layer file is left that no record names, and every layer checks clean.
func TestKillDuringOperations(t *testing.T) {
	if testing.Short() {
		t.Skip("long: many child processes")
	}
	kills := 200
	if v := os.Getenv("CSI_QCOW2_STORE_KILLS"); v != "" {
		kills, _ = strconv.Atoi(v)
	}
	root := t.TempDir()
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	seed := rng.Uint64()
	if v := os.Getenv("CSI_QCOW2_STORE_SEED"); v != "" {
		seed, _ = strconv.ParseUint(v, 10, 64)
	}
	t.Logf("seed %d (CSI_QCOW2_STORE_SEED repeats the run)", seed)
	rng = rand.New(rand.NewPCG(seed, 7))
	// How often the last clean run passed each step, and the steps left
	// to kill at in this round, shuffled: every kind of step gets its
	// share of the kills however rare it is, at a random one of its
	// passes. A pass a run does not reach kills nothing.
	var points []killPoint
	var order []string
	spanUS := int64(0)
	steps := map[string]int{} // kills by the step they hit
	killed, run := 0, 0
	for ; killed < kills; run++ {
		p := crashPlan{Root: root, Run: run, Log: filepath.Join(t.TempDir(), "log")}
		switch {
		case len(points) == 0 || run%5 == 0:
			// Learn the points and how long a run takes now.
		case rng.IntN(8) == 0:
			p.DelayUS = 1 + rng.Int64N(spanUS)
		default:
			passes := map[string]int{}
			for _, pt := range points {
				passes[pt.step] = max(passes[pt.step], pt.nth)
			}
			if len(order) == 0 {
				order = slices.Sorted(maps.Keys(passes))
				rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
			}
			p.KillStep, order = order[0], order[1:]
			p.KillNth = 1 + rng.IntN(max(1, passes[p.KillStep]))
		}
		start := time.Now()
		out, err := runCrashChild(p)
		took := time.Since(start)
		log := readCrashLog(t, p.Log)
		var exit *exec.ExitError
		switch {
		case err == nil:
			if len(log.points) > 0 {
				points, spanUS = log.points, took.Microseconds()
			}
		case errors.As(err, &exit) && exit.Sys().(syscall.WaitStatus).Signal() == syscall.SIGKILL:
			killed++
			steps[log.killedAt]++
		default:
			t.Fatalf("run %d: child failed: %v\n%s", run, err, out)
		}
		s, err := Open(Config{Root: root, Node: "node-1", MaxChainDepth: 3})
		if err != nil {
			t.Fatalf("run %d (%+v): reopening after the kill: %v", run, p, err)
		}
		// Before the retry, the interrupted call's volume may lack the
		// content that call was to write.
		checkStore(t, s, fmt.Sprintf("run %d after the kill at %+v", run, p), log.pending == nil)
		if log.pending != nil {
			if err := log.pending.do(s); err != nil {
				t.Fatalf("run %d: retrying %+v after the kill: %v", run, *log.pending, err)
			}
			checkStore(t, s, fmt.Sprintf("run %d after retrying %s %s", run, log.pending.Op, log.pending.Name), true)
		}
		if t.Failed() {
			t.Fatalf("run %d: seed %d", run, seed)
		}
	}
	t.Logf("%d kills in %d runs (%d crash points a run); kills by step: %v", killed, run, len(points), steps)
	for _, want := range []string{"record written", "record renamed", "record removed", "top created", "frozen",
		"internal snapshot made", "layer created", "restore copying", "collapse copying", "collapsed", "expanded", "layer file collected"} {
		if steps[want] == 0 {
			t.Errorf("no kill at %q: the workload or the choice of points misses it", want)
		}
	}
	checkLayersClean(t, root, true)
}

func runCrashChild(p crashPlan) ([]byte, error) {
	b, _ := json.Marshal(p)
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+string(b))
	return cmd.CombinedOutput()
}

type crashLog struct {
	pending  *call
	points   []killPoint // of a run that ended
	killedAt string      // the step a kill at a crash point hit ("" for a timed one)
}

// killPoint is the nth time a run passes a step.
type killPoint struct {
	step string
	nth  int
}

func readCrashLog(t *testing.T, path string) crashLog {
	var l crashLog
	b, err := os.ReadFile(path)
	if err != nil {
		return l // killed before the log was made
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "call "):
			var c call
			if err := json.Unmarshal([]byte(line[5:]), &c); err != nil {
				t.Fatal(err)
			}
			l.pending = &c
		case line == "done":
			l.pending = nil
		case strings.HasPrefix(line, "killed at "):
			l.killedAt = line[len("killed at "):]
		case strings.HasPrefix(line, "steps "):
			seen := map[string]int{}
			for _, st := range strings.Split(line[len("steps "):], "|") {
				seen[st]++
				l.points = append(l.points, killPoint{st, seen[st]})
			}
		}
	}
	return l
}

// checkStore checks what a recovered store holds: only ready records;
// every layer a record names is there and nothing else; every volume and
// snapshot reads (with content) its root's content at offset 0.
func checkStore(t *testing.T, s *Store, when string, content bool) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	ref := s.referenced()
	for id := range ref {
		if _, err := os.Stat(s.lay.layerPath(id)); err != nil {
			t.Errorf("%s: a record names layer %s: %v", when, id, err)
		}
	}
	ents, _ := os.ReadDir(s.lay.dir(layersDir))
	for _, e := range ents {
		if id := layerOfFile(e.Name()); id == "" || !ref[id] {
			t.Errorf("%s: layers/%s is named by no record", when, e.Name())
		}
	}
	for _, v := range s.volumes {
		if v.State != stateReady || v.Pending != nil {
			t.Errorf("%s: volume %s is %s, pending %v", when, v.Name, v.State, v.Pending)
			continue
		}
		got, size, err := s.readVolumeAt(v, patternLen)
		if err == nil && size != v.Capacity {
			t.Errorf("%s: volume %s records %d bytes, its top holds %d", when, v.Name, v.Capacity, size)
		}
		if err != nil {
			t.Errorf("%s: volume %s: %v", when, v.Name, err)
		} else if content && !bytes.Equal(got, pattern(rootOf(v.Name))) {
			t.Errorf("%s: volume %s does not read its content", when, v.Name)
		}
	}
	for _, sn := range s.snapshots {
		if sn.State != stateReady {
			t.Errorf("%s: snapshot %s is %s", when, sn.Name, sn.State)
			continue
		}
		got, err := s.readSnapshotAt(sn, patternLen)
		if err != nil {
			t.Errorf("%s: snapshot %s: %v", when, sn.Name, err)
		} else if content && !bytes.Equal(got, pattern(rootOf(sn.Name))) {
			t.Errorf("%s: snapshot %s does not read its content", when, sn.Name)
		}
	}
}

// readVolumeAt reads the first n bytes of volume v, opened read-only with
// its chain, and its size; s.mu held.
func (s *Store) readVolumeAt(v *volumeRecord, n int) ([]byte, int64, error) {
	img, err := qcow2.Open(s.lay.layerPath(v.Top), qcow2.Options{ReadOnly: true, Backing: s.policy(v.Chain)})
	if err != nil {
		return nil, 0, err
	}
	defer img.Close()
	p := make([]byte, n)
	_, err = img.ReadAt(p, 0)
	return p, img.Size(), err
}

func (s *Store) readSnapshotAt(sn *snapshotRecord, n int) ([]byte, error) {
	p := make([]byte, n)
	below := sn.Chain.clone()
	below.Layers = below.Layers[:len(below.Layers)-1]
	img, err := qcow2.Open(s.lay.layerPath(sn.Chain.Layers[len(sn.Chain.Layers)-1]), qcow2.Options{ReadOnly: true, Backing: s.policy(below)})
	if err != nil {
		return nil, err
	}
	defer img.Close()
	if sn.Type == TypeInternal {
		view, err := img.OpenSnapshot(sn.Internal)
		if err != nil {
			return nil, err
		}
		_, err = view.ReadAt(p, 0)
		return p, err
	}
	_, err = img.ReadAt(p, 0)
	return p, err
}

// checkLayersClean runs the engine's check on every layer (no corruption;
// leaks are reported) and, with qemu, qemu-img check on a sample.
func checkLayersClean(t *testing.T, root string, qemu bool) {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(root, layersDir, "*.qcow2"))
	leaks := 0
	for _, f := range files {
		res, err := qcow2.Check(f, qcow2.CheckOptions{})
		if err != nil {
			t.Errorf("%s: %v", filepath.Base(f), err)
			continue
		}
		if res.Corruptions > 0 || res.CheckErrors > 0 {
			t.Errorf("%s: %d corruptions, %d check errors: %v", filepath.Base(f), res.Corruptions, res.CheckErrors, res.Messages)
		}
		leaks += res.Leaks
	}
	t.Logf("%d layer files check clean (%d leaked clusters in all)", len(files), leaks)
	if !qemu || len(files) == 0 {
		return
	}
	qemuImg := testtools.Need(t, "qemu-img")[0]
	for i := 0; i < len(files); i += max(1, len(files)/8) {
		out, err := exec.Command(qemuImg, "check", "-U", files[i]).CombinedOutput()
		var exit *exec.ExitError
		if err != nil && !(errors.As(err, &exit) && exit.ExitCode() == 3) { // 3: leaks only
			t.Errorf("qemu-img check %s: %v\n%s", filepath.Base(files[i]), err, out)
		}
	}
}
