// write.go: `write` mode. Runs the workload phase by phase and after each phase writes one
// cumulative profile per kind to DIR/<kind>/NNN.pb.gz, exactly as runtime/pprof writes it
// (heap after runtime.GC(); cpu is one StartCPUProfile window covering the phase). It can
// change MemProfileRate before a given file and restart itself as a fresh process, whose
// counters start again at 0, before another.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"
)

type writeFlags struct {
	commonFlags
	out           string
	kinds         []string
	n             int
	memrateChange string
	changeAt      int // -1: none
	changeRate    int
	restartAt     int
	continueAt    int
}

func parseWriteFlags(args []string) (*writeFlags, error) {
	f := &writeFlags{changeAt: -1}
	fs := flag.NewFlagSet("write", flag.ContinueOnError)
	f.register(fs, 500*time.Millisecond, -1)
	kinds := fs.String("kinds", "heap,allocs,mutex,block,goroutine,cpu", "profiles to write")
	fs.StringVar(&f.out, "out", "", "output directory (required)")
	fs.IntVar(&f.n, "n", 8, "files per kind")
	fs.StringVar(&f.memrateChange, "memrate-change", "", "K:R: set MemProfileRate=R before file K")
	fs.IntVar(&f.restartAt, "restart-at", -1, "K: files K.. come from a new process")
	fs.IntVar(&f.continueAt, "continue-at", 0, "internal: first file number of this process")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if f.out == "" || f.n < 1 || fs.NArg() != 0 {
		return nil, errors.New("write: -out DIR is required, -n must be >= 1, no extra arguments")
	}
	var err error
	if f.kinds, err = parseKindList(*kinds); err != nil {
		return nil, err
	}
	if f.memrateChange != "" {
		k, r, ok := strings.Cut(f.memrateChange, ":")
		f.changeAt, err = strconv.Atoi(k)
		if err == nil {
			f.changeRate, err = strconv.Atoi(r)
		}
		if !ok || err != nil || f.changeRate < 1 {
			return nil, fmt.Errorf("bad -memrate-change %q (want K:R)", f.memrateChange)
		}
	}
	if f.cpuShare < 0 { // default: burn the whole phase when cpu profiles are wanted
		f.cpuShare = 0
		if f.wants("cpu") {
			f.cpuShare = 1
		}
	}
	return f, nil
}

func (f *writeFlags) wants(kind string) bool {
	for _, k := range f.kinds {
		if k == kind {
			return true
		}
	}
	return false
}

func (f *writeFlags) activities() activitySet {
	return activitySet{
		alloc: f.wants("heap") || f.wants("allocs"),
		lock:  f.wants("mutex"),
		block: f.wants("block"),
		park:  f.wants("goroutine"),
		cpu:   f.wants("cpu"),
	}
}

func writeMain(args []string) error {
	f, err := parseWriteFlags(args)
	if err != nil {
		return err
	}
	rate := f.memrate
	if f.changeAt >= 0 && f.continueAt >= f.changeAt {
		rate = f.changeRate
	}
	runtime.MemProfileRate = rate
	for _, k := range f.kinds {
		if err := os.MkdirAll(filepath.Join(f.out, k), 0o755); err != nil {
			return err
		}
	}
	wl, err := newWorkload(&f.commonFlags, f.activities())
	if err != nil {
		return err
	}
	for k := f.continueAt; k < f.n; k++ {
		if k == f.restartAt && k > f.continueAt {
			return restartSelf(args, k)
		}
		if k == f.changeAt {
			runtime.MemProfileRate = f.changeRate
		}
		if err := f.phase(wl, k); err != nil {
			return err
		}
	}
	return nil
}

// phase runs phase k (inside a CPU profile window when cpu is wanted) and writes file k of
// every kind.
func (f *writeFlags) phase(wl *workload, k int) error {
	var cpuFile *os.File
	if f.wants("cpu") {
		var err error
		if cpuFile, err = os.Create(f.path("cpu", k)); err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(cpuFile); err != nil {
			cpuFile.Close()
			return err
		}
	}
	wl.phase(k, time.Now(), f.interval, f.cpuShare)
	if cpuFile != nil {
		pprof.StopCPUProfile()
		if err := cpuFile.Close(); err != nil {
			return err
		}
	}
	if f.wants("heap") || f.wants("allocs") {
		runtime.GC()
	}
	for _, kind := range f.kinds {
		if kind == "cpu" {
			continue
		}
		if err := writeProfile(kind, f.path(kind, k)); err != nil {
			return err
		}
	}
	return nil
}

func (f *writeFlags) path(kind string, k int) string {
	return filepath.Join(f.out, kind, fmt.Sprintf("%03d.pb.gz", k))
}

// writeProfile writes what pprof.Lookup(kind).WriteTo(w, 0) writes: gzipped profile.proto.
func writeProfile(kind, path string) error {
	out, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.Lookup(kind).WriteTo(out, 0); err != nil {
		out.Close()
		return fmt.Errorf("%s: %w", path, err)
	}
	return out.Close()
}

// restartSelf runs this executable again with the same options, continuing at file k, waits
// for it and returns its exit status: the files from k on come from a fresh process.
func restartSelf(args []string, k int) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	childArgs := append([]string{"write"}, args...)
	childArgs = append(childArgs, "-continue-at", strconv.Itoa(k))
	cmd := exec.Command(exe, childArgs...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	err = cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return exitError(ee.ExitCode())
	}
	return err
}
