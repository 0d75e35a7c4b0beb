// goscrape: the Go alternative `pdelta scrape` is compared with in the
// footprint benchmark (tests/bench/scrape_footprint.sh). It is the scrape loop
// an agent written in Go runs when it computes deltas itself (Alloy's
// pyroscope.scrape delta mode, Datadog's agent before fastdelta): every
// interval, fetch each target's cumulative profile, parse it with
// github.com/google/pprof/profile, keep the parsed previous profile of each
// stream in memory, and write the delta as Scale(-1) + Merge + Compact.
//
// Usage: goscrape -targets FILE -types heap,mutex,block -interval 10s -count N -out DIR
// (FILE: "NAME URL" lines). Prints one summary line at the end.
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/google/pprof/profile"
)

type stream struct {
	name, url string
	prev      *profile.Profile
	round     int
}

func (s *stream) step(client *http.Client, out string) error {
	resp, err := client.Get(s.url)
	if err != nil {
		return err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	cur, err := profile.ParseData(body)
	if err != nil {
		return err
	}
	res := cur
	if s.prev != nil {
		prev := s.prev.Copy()
		prev.Scale(-1)
		if res, err = profile.Merge([]*profile.Profile{prev, cur}); err != nil {
			return err
		}
		res = res.Compact()
	}
	var buf bytes.Buffer
	if err := res.Write(&buf); err != nil {
		return err
	}
	s.prev = cur
	dir := filepath.Join(out, s.name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	err = os.WriteFile(filepath.Join(dir, fmt.Sprintf("%03d.pb.gz", s.round)), buf.Bytes(), 0o644)
	s.round++
	return err
}

func main() {
	targets := flag.String("targets", "", "targets file: NAME URL lines")
	types := flag.String("types", "heap,mutex,block", "profile types")
	interval := flag.Duration("interval", 10*time.Second, "scrape interval")
	count := flag.Int("count", 3, "rounds")
	conc := flag.Int("concurrency", 8, "scrapes in flight")
	out := flag.String("out", "", "output directory")
	flag.Parse()
	f, err := os.Open(*targets)
	if err != nil {
		panic(err)
	}
	var streams []*stream
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		w := strings.Fields(sc.Text())
		if len(w) < 2 {
			continue
		}
		for _, t := range strings.Split(*types, ",") {
			streams = append(streams, &stream{name: w[0] + "/" + t, url: w[1] + "/debug/pprof/" + t})
		}
	}
	f.Close()
	client := &http.Client{Timeout: 10 * time.Second}
	errs := 0
	var mu sync.Mutex
	start := time.Now()
	for r := 0; r < *count; r++ {
		due := start.Add(time.Duration(r) * *interval)
		time.Sleep(time.Until(due))
		sem := make(chan struct{}, *conc)
		var wg sync.WaitGroup
		for _, s := range streams {
			wg.Add(1)
			sem <- struct{}{}
			go func(s *stream) {
				defer wg.Done()
				if err := s.step(client, *out); err != nil {
					mu.Lock()
					errs++
					mu.Unlock()
				}
				<-sem
			}(s)
		}
		wg.Wait()
	}
	fmt.Printf("goscrape: %d streams, %d rounds, %d errors\n", len(streams), *count, errs)
}
