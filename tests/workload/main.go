// main.go: pdelta-workload, a Go program that produces real, varied Go pprof profiles for
// pdelta's tests. `serve` runs the workload continuously behind net/http/pprof on a loopback
// address; `write` runs it for N phases and writes N cumulative profiles per kind, the way
// runtime/pprof writes them, optionally restarting itself or changing MemProfileRate midway.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
)

func usage() {
	fmt.Fprint(os.Stderr, `usage:
  pdelta-workload serve -listen 127.0.0.1:0 [-size small|medium|large] [-seed N]
                        [-addr-file F] [-duration D] [-memrate R] [-interval D]
                        [-cpu-share F] [-allow-remote]
  pdelta-workload write -out DIR [-kinds heap,allocs,mutex,block,goroutine,cpu] [-n N]
                        [-interval D] [-size ...] [-seed N] [-memrate R]
                        [-memrate-change K:R] [-restart-at K]
`)
	os.Exit(2)
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serveMain(os.Args[2:])
	case "write":
		err = writeMain(os.Args[2:])
	default:
		usage()
	}
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		var ex exitError
		if errors.As(err, &ex) {
			os.Exit(int(ex))
		}
		fmt.Fprintln(os.Stderr, "pdelta-workload:", err)
		os.Exit(1)
	}
}

// exitError carries a child's exit status through main.
type exitError int

func (e exitError) Error() string { return "exit status " + strconv.Itoa(int(e)) }

// commonFlags are the workload options of both modes.
type commonFlags struct {
	size     string
	seed     int64
	memrate  int
	interval time.Duration
	cpuShare float64
}

func (c *commonFlags) register(fs *flag.FlagSet, interval time.Duration, cpuShare float64) {
	fs.StringVar(&c.size, "size", "small", "number of distinct stacks: small, medium or large")
	fs.Int64Var(&c.seed, "seed", 1, "seed of the paths, sizes and labels")
	fs.IntVar(&c.memrate, "memrate", 1, "runtime.MemProfileRate")
	fs.DurationVar(&c.interval, "interval", interval, "length of one phase (and of one cpu window)")
	fs.Float64Var(&c.cpuShare, "cpu-share", cpuShare, "fraction of each phase spent burning CPU (0..1)")
}

// kinds of activity a workload runs.
type activitySet struct{ alloc, lock, block, park, cpu bool }

func allActivities() activitySet { return activitySet{true, true, true, true, true} }

func newWorkload(c *commonFlags, acts activitySet) (*workload, error) {
	spec, err := parseSize(c.size)
	if err != nil {
		return nil, err
	}
	wl := &workload{}
	if acts.alloc {
		wl.alloc = newAllocator(c.seed, spec.allocPaths)
	}
	if acts.lock {
		wl.lock = newLocker(c.seed, spec.lockPaths)
		runtime.SetMutexProfileFraction(1)
	}
	if acts.block {
		wl.block = newBlocker(c.seed, spec.blockPaths)
		runtime.SetBlockProfileRate(1)
	}
	if acts.park {
		wl.park = newParkers(c.seed, spec.parkPaths)
	}
	if acts.cpu {
		wl.cpu = newBurner(c.seed, spec.burnPaths)
	}
	return wl, nil
}

// parseKindList splits "heap,mutex" and checks every name.
func parseKindList(s string) ([]string, error) {
	var out []string
	for _, k := range strings.Split(s, ",") {
		k = strings.TrimSpace(k)
		switch k {
		case "heap", "allocs", "mutex", "block", "goroutine", "cpu":
			out = append(out, k)
		case "":
		default:
			return nil, fmt.Errorf("unknown kind %q", k)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no -kinds")
	}
	return out, nil
}
