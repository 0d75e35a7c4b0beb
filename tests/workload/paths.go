// paths.go: which call paths exist (decided by -size and -seed) and which of them are active
// in a given phase. The active set is a window that slides along the path list, so every
// phase some stacks appear for the first time and some stop growing.
package main

import (
	"fmt"
	"math/rand"
)

// sizeSpec is the number of distinct paths per activity for one -size.
type sizeSpec struct {
	allocPaths, lockPaths, blockPaths, parkPaths, burnPaths int
}

var sizes = map[string]sizeSpec{
	"small":  {allocPaths: 900, lockPaths: 2000, blockPaths: 2000, parkPaths: 500, burnPaths: 60},
	"medium": {allocPaths: 10000, lockPaths: 20000, blockPaths: 20000, parkPaths: 2500, burnPaths: 300},
	"large":  {allocPaths: 90000, lockPaths: 180000, blockPaths: 180000, parkPaths: 4000, burnPaths: 600},
}

const (
	minDepth = 4  // path functions before the leaf
	maxDepth = 30 // the runtime keeps at most 32 frames (64 for CPU)
	// keyFrames: paths are unique in their innermost elements, which the runtime keeps when
	// it truncates a deep stack (its 32 counts inlined frames too).
	keyFrames = 20
)

// genPaths returns n distinct paths; each is a sequence of table indices ending with
// leafIndex.
func genPaths(rng *rand.Rand, n int) [][]uint8 {
	seen := make(map[string]bool, n)
	paths := make([][]uint8, 0, n)
	for len(paths) < n {
		depth := minDepth + rng.Intn(maxDepth-minDepth+1)
		p := make([]uint8, depth+1)
		for i := 0; i < depth; i++ {
			p[i] = uint8(rng.Intn(numSteps()))
		}
		p[depth] = leafIndex
		key := p
		if len(key) > keyFrames {
			key = key[len(key)-keyFrames:]
		}
		if seen[string(key)] {
			continue
		}
		seen[string(key)] = true
		paths = append(paths, p)
	}
	return paths
}

// window is the sliding active set over n paths: 60 % of them, moving by 7 % a phase.
type window struct{ n, width, step int }

func newWindow(n int) window {
	return window{n: n, width: n * 60 / 100, step: (n*7 + 99) / 100}
}

func (w window) active(i, phase int) bool {
	start := (phase * w.step) % w.n
	return (i-start+w.n)%w.n < w.width
}

// activeList returns the indices active in phase.
func (w window) activeList(phase int) []int {
	out := make([]int, 0, w.width)
	for i := 0; i < w.n; i++ {
		if w.active(i, phase) {
			out = append(out, i)
		}
	}
	return out
}

// seededRand gives each activity its own stream, so the paths of one do not depend on the
// sizes of another.
func seededRand(seed int64, activity int) *rand.Rand {
	return rand.New(rand.NewSource(seed*1000003 + int64(activity)))
}

func parseSize(s string) (sizeSpec, error) {
	spec, ok := sizes[s]
	if !ok {
		return sizeSpec{}, fmt.Errorf("unknown -size %q (small, medium, large)", s)
	}
	return spec, nil
}
