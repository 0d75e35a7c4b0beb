// tree.go: the synthetic call tree. A table of distinct Go functions (plain functions,
// methods, generic instantiations, closures, some with small inlinable wrappers) walks a
// "path" of table indices recursively, so the profiles the runtime writes get real stack
// variety: recursion, inlined frames (extra Line entries), method and generic symbol names.
// The last element of every path is leafStep, which hands over to the walker's leaf (the
// allocation, lock, channel, park or CPU work of one activity).
package main

import "sync"

// walker carries one walk: the path, the leaf to run at its end and the leaf's argument.
type walker struct {
	path   []uint8
	leaf   func(w *walker)
	arg    int
	keep   bool // allocLeaf retains its object
	sink   uint64
	stop   chan struct{}   // parkers wait on it
	parked *sync.WaitGroup // parkers report here before they wait
}

type step func(w *walker, d int)

// table is filled in init: the functions reference it, so a composite literal would be an
// initialisation cycle.
var table []step

// leafIndex is the table index of leafStep; paths end with it and never use it elsewhere.
var leafIndex uint8

// hop continues the walk at path position d. It is small enough to be inlined, so callers
// that use it get an extra inlined Line in their location.
func hop(w *walker, d int) { table[w.path[d]](w, d+1) }

// hop2 is a second inlinable layer on top of hop: two inlined Lines.
func hop2(w *walker, d int) {
	w.sink ^= 0x9e3779b9
	hop(w, d)
}

//go:noinline
func leafStep(w *walker, d int) { w.leaf(w) }

//go:noinline
func parseHeader(w *walker, d int) {
	w.sink += uint64(d) * 3
	table[w.path[d]](w, d+1)
}

//go:noinline
func decodeBlock(w *walker, d int) {
	w.sink = w.sink<<1 | 1
	hop(w, d)
}

//go:noinline
func scanTokens(w *walker, d int) {
	for i := 0; i < 3; i++ {
		w.sink += uint64(i)
	}
	hop2(w, d)
}

func mergeRuns(w *walker, d int) {
	w.sink ^= uint64(d)
	table[w.path[d]](w, d+1)
}

func buildIndex(w *walker, d int) {
	w.sink *= 31
	hop(w, d)
}

//go:noinline
func resolveName(w *walker, d int) {
	if w.sink&1 == 0 {
		w.sink++
	}
	table[w.path[d]](w, d+1)
}

func compactTable(w *walker, d int) {
	w.sink -= uint64(d)
	hop2(w, d)
}

//go:noinline
func hashStack(w *walker, d int) {
	w.sink = w.sink*1099511628211 ^ uint64(d)
	hop(w, d)
}

func applyPolicy(w *walker, d int) {
	w.sink |= 4
	table[w.path[d]](w, d+1)
}

//go:noinline
func encodeOutput(w *walker, d int) {
	w.sink += 7
	hop(w, d)
}

func flushBatch(w *walker, d int) {
	w.sink >>= 1
	table[w.path[d]](w, d+1)
}

//go:noinline
func visitNode(w *walker, d int) {
	w.sink ^= w.sink >> 7
	hop2(w, d)
}

func reduceValues(w *walker, d int) {
	w.sink += uint64(len(w.path))
	hop(w, d)
}

//go:noinline
func loadSegment(w *walker, d int) {
	w.sink ^= 0xff
	table[w.path[d]](w, d+1)
}

func splitRange(w *walker, d int) {
	w.sink += uint64(d * d)
	hop(w, d)
}

//go:noinline
func walkTree(w *walker, d int) {
	w.sink = ^w.sink
	table[w.path[d]](w, d+1)
}

// Methods: the symbols are main.(*walker).name.

//go:noinline
func (w *walker) fetchPage(d int) {
	w.sink += 11
	hop(w, d)
}

func (w *walker) sortKeys(d int) {
	w.sink ^= 13
	table[w.path[d]](w, d+1)
}

//go:noinline
func (w *walker) validate(d int) {
	w.sink -= 17
	hop2(w, d)
}

func (w *walker) retry(d int) {
	w.sink += 19
	table[w.path[d]](w, d+1)
}

// number is the constraint of the generic step; each instantiation with a different shape
// is a distinct function in the binary.
type number interface {
	~int | ~int32 | ~float64
}

//go:noinline
func accumulate[T number](w *walker, d int) {
	var acc T
	for i := 0; i < 4; i++ {
		acc += T(i + d)
	}
	w.sink += uint64(acc)
	hop(w, d)
}

// closures returns four distinct closures (main.closures.func1 ... func4).
func closures() []step {
	k1, k2, k3, k4 := uint64(23), uint64(29), uint64(31), uint64(37)
	return []step{
		func(w *walker, d int) {
			w.sink += k1
			hop(w, d)
		},
		func(w *walker, d int) {
			w.sink ^= k2
			table[w.path[d]](w, d+1)
		},
		func(w *walker, d int) {
			w.sink *= k3
			hop2(w, d)
		},
		func(w *walker, d int) {
			w.sink -= k4
			hop(w, d)
		},
	}
}

func init() {
	table = []step{
		parseHeader, decodeBlock, scanTokens, mergeRuns, buildIndex, resolveName,
		compactTable, hashStack, applyPolicy, encodeOutput, flushBatch, visitNode,
		reduceValues, loadSegment, splitRange, walkTree,
		(*walker).fetchPage, (*walker).sortKeys, (*walker).validate, (*walker).retry,
		accumulate[int], accumulate[int32], accumulate[float64],
	}
	table = append(table, closures()...)
	leafIndex = uint8(len(table))
	table = append(table, leafStep)
}

// numSteps is how many table entries a path may use before its final leafStep.
func numSteps() int { return int(leafIndex) }

// walk runs w along its whole path and then its leaf.
//
//go:noinline
func walk(w *walker) { table[w.path[0]](w, 1) }
