// godelta: the baseline pdelta is measured against. It computes a delta the
// usual way (what Go's net/http/pprof ?seconds= does): parse both profiles
// into object graphs with github.com/google/pprof/profile, scale the older by
// -1, merge, compact, write gzipped. It is timed on the same inputs as
// pd_bench, in the same run of `make bench`.
//
// Usage: godelta -reps N PREV CUR [PREV CUR ...]; prints the median ms per call.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"sort"
	"time"

	"github.com/google/pprof/profile"
)

func delta(prev, cur []byte) (int, error) {
	p0, err := profile.ParseData(prev)
	if err != nil {
		return 0, err
	}
	p1, err := profile.ParseData(cur)
	if err != nil {
		return 0, err
	}
	p0.Scale(-1)
	d, err := profile.Merge([]*profile.Profile{p0, p1})
	if err != nil {
		return 0, err
	}
	d = d.Compact()
	var out bytes.Buffer
	if err := d.Write(&out); err != nil {
		return 0, err
	}
	return out.Len(), nil
}

func main() {
	reps := flag.Int("reps", 3, "repetitions per pair")
	flag.Parse()
	args := flag.Args()
	if len(args) < 2 || len(args)%2 != 0 {
		fmt.Fprintln(os.Stderr, "usage: godelta -reps N PREV CUR ...")
		os.Exit(2)
	}
	total := 0.0
	for i := 0; i < len(args); i += 2 {
		prev, err := os.ReadFile(args[i])
		if err != nil {
			panic(err)
		}
		cur, err := os.ReadFile(args[i+1])
		if err != nil {
			panic(err)
		}
		var ts []float64
		for r := 0; r < *reps; r++ {
			t0 := time.Now()
			if _, err := delta(prev, cur); err != nil {
				fmt.Fprintln(os.Stderr, "godelta:", err)
				os.Exit(1)
			}
			ts = append(ts, float64(time.Since(t0).Microseconds())/1000)
		}
		sort.Float64s(ts)
		total += ts[len(ts)/2]
	}
	fmt.Printf("%.2f\n", total/float64(len(args)/2))
}
