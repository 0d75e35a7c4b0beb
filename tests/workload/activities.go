// activities.go: what happens at the leaves of the call tree. Each activity owns a set of
// paths and does a fixed amount of work per phase on the active ones: heap allocations (some
// retained for two phases, then released so in-use values go down), mutex contention,
// channel blocking, goroutines parked under pprof labels, CPU burning under pprof labels.
// The work per phase is fixed by the seed; only timing varies between runs.
package main

import (
	"context"
	"math/rand"
	"runtime"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

const workers = 2 // goroutines per activity; the machine may have only two cores

// runParallel calls fn for every index in list from `workers` goroutines and waits.
func runParallel(list []int, fn func(i int)) {
	var wg sync.WaitGroup
	for g := 0; g < workers; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for j := g; j < len(list); j += workers {
				fn(list[j])
			}
		}(g)
	}
	wg.Wait()
}

// ---- heap -------------------------------------------------------------------------------

// allocSizes are spread over many size classes; small ones are the most frequent.
var allocSizes = []int{8, 16, 24, 48, 64, 96, 160, 256, 384, 512, 1024, 2048, 4096, 9472, 32768}

type allocator struct {
	paths [][]uint8
	sizes [][]int // per path
	win   window
}

var (
	retainMu  sync.Mutex
	retained  [3][][]byte // by phase % 3: a phase's objects live until two phases later
	retainNow int
)

func newAllocator(seed int64, n int) *allocator {
	rng := seededRand(seed, 1)
	a := &allocator{paths: genPaths(rng, n), win: newWindow(n)}
	a.sizes = make([][]int, n)
	for i := range a.paths {
		k := 1 + rng.Intn(3)
		for j := 0; j < k; j++ {
			idx := int(float64(len(allocSizes)) * rng.Float64() * rng.Float64())
			a.sizes[i] = append(a.sizes[i], allocSizes[idx])
		}
	}
	return a
}

func (a *allocator) phase(k int) {
	retainMu.Lock()
	retainNow = k % 3
	retained[retainNow] = nil // objects of phase k-3: in-use goes down
	retainMu.Unlock()
	runParallel(a.win.activeList(k), func(i int) {
		w := &walker{path: a.paths[i], leaf: allocLeaf}
		for j, size := range a.sizes[i] {
			// Half of the paths keep their objects in one phase out of two.
			w.keep = (i+j+k)%2 == 1
			w.arg = size
			walk(w)
		}
	})
}

//go:noinline
func allocLeaf(w *walker) {
	b := make([]byte, w.arg)
	b[0] = byte(w.sink)
	if w.keep {
		retainMu.Lock()
		retained[retainNow] = append(retained[retainNow], b)
		retainMu.Unlock()
	}
}

// ---- mutex ------------------------------------------------------------------------------

type locker struct {
	paths [][]uint8
	win   window
}

func newLocker(seed int64, n int) *locker {
	return &locker{paths: genPaths(seededRand(seed, 2), n), win: newWindow(n)}
}

func (l *locker) phase(k int) {
	runParallel(l.win.activeList(k), func(i int) {
		walk(&walker{path: l.paths[i], leaf: lockLeaf, arg: i})
	})
}

// lockLeaf holds a mutex until a helper goroutine waits for it, so the Unlock below is one
// contention event with this walk's stack. Even and odd paths unlock from different call
// sites (distinct locations).
//
//go:noinline
func lockLeaf(w *walker) {
	var mu sync.Mutex
	done := make(chan struct{})
	mu.Lock()
	go contend(&mu, done)
	waitForWaiter(&mu)
	if w.arg%2 == 0 {
		mu.Unlock()
	} else {
		w.sink++
		mu.Unlock()
	}
	<-done
}

func contend(mu *sync.Mutex, done chan struct{}) {
	mu.Lock()
	mu.Unlock()
	close(done)
}

// waitForWaiter yields until mu has a parked waiter. It reads the waiter count of
// sync.Mutex.state (bits 3 and up, Go 1.19 layout); bounded, so a layout change only makes
// contention less certain.
func waitForWaiter(mu *sync.Mutex) {
	state := (*int32)(unsafe.Pointer(mu))
	for i := 0; i < 2000 && atomic.LoadInt32(state)>>3 == 0; i++ {
		runtime.Gosched()
	}
	runtime.Gosched() // let the waiter get from the waiter count into the semaphore queue
	runtime.Gosched()
}

// ---- block ------------------------------------------------------------------------------

type blocker struct {
	paths [][]uint8
	win   window
}

func newBlocker(seed int64, n int) *blocker {
	return &blocker{paths: genPaths(seededRand(seed, 3), n), win: newWindow(n)}
}

func (b *blocker) phase(k int) {
	runParallel(b.win.activeList(k), func(i int) {
		walk(&walker{path: b.paths[i], leaf: blockLeaf, arg: i})
	})
}

var never chan int

// blockLeaf receives from a goroutine it has just started, so the receive blocks (a plain
// receive or a select, depending on the path).
//
//go:noinline
func blockLeaf(w *walker) {
	c := make(chan int)
	go feed(c, w.arg)
	if w.arg%2 == 0 {
		w.sink += uint64(<-c)
		return
	}
	select {
	case v := <-c:
		w.sink += uint64(v)
	case <-never:
	}
}

func feed(c chan int, v int) { c <- v }

// ---- goroutines -------------------------------------------------------------------------

var labelKeys = []string{"tenant", "stage", "shard", "queue"}
var labelValues = []string{"alpha", "beta", "gamma", "delta", "ingest", "merge", "flush", "7", "12", "31"}

// labelsFor returns 0, 1 or 2 key/value pairs for path i, fixed by the seed.
func labelsFor(rng *rand.Rand) []string {
	n := rng.Intn(3)
	kv := make([]string, 0, 2*n)
	for j := 0; j < n; j++ {
		kv = append(kv, labelKeys[(rng.Intn(2)+2*j)%len(labelKeys)], labelValues[rng.Intn(len(labelValues))])
	}
	return kv
}

type parkers struct {
	paths  [][]uint8
	labels [][]string
	win    window
	stops  map[int]chan struct{}
	parked sync.WaitGroup
}

func newParkers(seed int64, n int) *parkers {
	rng := seededRand(seed, 4)
	p := &parkers{paths: genPaths(rng, n), win: newWindow(n), stops: map[int]chan struct{}{}}
	for range p.paths {
		p.labels = append(p.labels, labelsFor(rng))
	}
	return p
}

// phase stops the goroutines of paths that left the window and starts those that entered;
// path i has 1 + i%3 goroutines. Returns once all new goroutines are parked.
func (p *parkers) phase(k int) {
	for i, stop := range p.stops {
		if !p.win.active(i, k) {
			close(stop)
			delete(p.stops, i)
		}
	}
	for _, i := range p.win.activeList(k) {
		if p.stops[i] != nil {
			continue
		}
		stop := make(chan struct{})
		p.stops[i] = stop
		for g := 0; g <= i%3; g++ {
			p.parked.Add(1)
			go p.park(i, stop)
		}
	}
	p.parked.Wait()
}

func (p *parkers) park(i int, stop chan struct{}) {
	w := &walker{path: p.paths[i], leaf: parkLeaf, stop: stop, parked: &p.parked}
	if len(p.labels[i]) == 0 {
		walk(w)
		return
	}
	pprof.Do(context.Background(), pprof.Labels(p.labels[i]...), func(context.Context) { walk(w) })
}

//go:noinline
func parkLeaf(w *walker) {
	w.parked.Done()
	<-w.stop
}

// ---- cpu --------------------------------------------------------------------------------

type burner struct {
	paths  [][]uint8
	labels [][]string
	win    window
}

func newBurner(seed int64, n int) *burner {
	rng := seededRand(seed, 5)
	b := &burner{paths: genPaths(rng, n), win: newWindow(n)}
	for range b.paths {
		b.labels = append(b.labels, labelsFor(rng))
	}
	return b
}

// burn walks the active paths under their labels, one goroutine, until deadline.
func (b *burner) burn(k int, deadline time.Time) {
	list := b.win.activeList(k)
	if len(list) == 0 {
		return
	}
	for j := 0; time.Now().Before(deadline); j++ {
		i := list[j%len(list)]
		w := &walker{path: b.paths[i], leaf: burnLeaf, arg: 20000 + (i%7)*10000}
		if len(b.labels[i]) == 0 {
			walk(w)
			continue
		}
		pprof.Do(context.Background(), pprof.Labels(b.labels[i]...), func(context.Context) { walk(w) })
	}
}

//go:noinline
func burnLeaf(w *walker) {
	x := w.sink | 1
	for n := 0; n < w.arg; n++ {
		x = x*6364136223846793005 + 1442695040888963407
		x ^= x >> 29
	}
	w.sink = x
}

// ---- the whole workload -----------------------------------------------------------------

// workload holds the activities one process runs; nil ones are off.
type workload struct {
	alloc *allocator
	lock  *locker
	block *blocker
	park  *parkers
	cpu   *burner
}

// phase k: fixed work of every activity, then CPU burning (or sleep) until start+interval
// scaled by cpuShare, then sleep to the end of the interval.
func (wl *workload) phase(k int, start time.Time, interval time.Duration, cpuShare float64) {
	if wl.park != nil {
		wl.park.phase(k)
	}
	var wg sync.WaitGroup
	for _, fn := range []func(int){wl.allocPhase, wl.lockPhase, wl.blockPhase} {
		wg.Add(1)
		go func(fn func(int)) {
			defer wg.Done()
			fn(k)
		}(fn)
	}
	if wl.cpu != nil && cpuShare > 0 {
		wl.cpu.burn(k, start.Add(time.Duration(float64(interval)*cpuShare)))
	}
	wg.Wait()
	time.Sleep(time.Until(start.Add(interval)))
}

func (wl *workload) allocPhase(k int) {
	if wl.alloc != nil {
		wl.alloc.phase(k)
	}
}

func (wl *workload) lockPhase(k int) {
	if wl.lock != nil {
		wl.lock.phase(k)
	}
}

func (wl *workload) blockPhase(k int) {
	if wl.block != nil {
		wl.block.phase(k)
	}
}
