#!/usr/bin/env bash
# Regenerates the committed profile fixtures, tests/data/profiles/<sequence>/NNN.pb.gz, with
# the Go workload program (built by build.sh into build/workload/). Each sequence comes from
# its own process so its profiles show only that activity. The binary runs from a temporary
# directory, because its path ends up in every profile's mapping table.
#
#   tests/workload/gen-fixtures.sh            (then update the table in tests/data/README.md
#                                               from the summary it prints)
# Env: GO (default go).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
DEST=$ROOT/tests/data/profiles
"$HERE/build.sh" "$ROOT/build/workload/pdelta-workload"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pdelta-workload.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
WL=$WORK/pdelta-workload
cp "$ROOT/build/workload/pdelta-workload" "$WL"

# gen NAME... -- WRITE OPTIONS: one process; kind K of it becomes sequence NAME (K-size).
gen() {
	local names=() out
	while [[ $1 != -- ]]; do
		names+=("$1")
		shift
	done
	shift
	out=$WORK/run-${names[0]}
	local t0=$SECONDS
	(cd "$WORK" && "$WL" write -out "$out" "$@")
	for n in "${names[@]}"; do
		local kind=${n%%-*}
		rm -rf "${DEST:?}/$n"
		mkdir -p "$DEST/$n"
		mv "$out/$kind"/*.pb.gz "$DEST/$n/"
	done
	echo "${names[*]}: $((SECONDS - t0)) s"
}

# gen_size SIZE N INTERVAL CPU_INTERVAL SEED: the single-activity sequences of one size, seeds
# SEED+1 (heap and allocs) to SEED+5 (cpu, which samples over its own, longer interval).
gen_size() {
	local size=$1 n=$2 cpu_interval=$4 seed=$5
	local opts=(-size "$size" -n "$n" -interval "$3")
	gen "heap-$size" "allocs-$size" -- "${opts[@]}" -seed $((seed + 1)) -kinds heap,allocs
	gen "mutex-$size" -- "${opts[@]}" -seed $((seed + 2)) -kinds mutex
	gen "block-$size" -- "${opts[@]}" -seed $((seed + 3)) -kinds block
	gen "goroutine-$size" -- "${opts[@]}" -seed $((seed + 4)) -kinds goroutine
	gen "cpu-$size" -- -size "$size" -n "$n" -interval "$cpu_interval" -seed $((seed + 5)) -kinds cpu
}

rm -rf "$DEST"
mkdir -p "$DEST"
gen_size small 8 300ms 700ms 0
S=(-size small -n 8 -interval 300ms)
gen heap-restart -- "${S[@]}" -seed 6 -kinds heap -restart-at 4
gen mutex-restart -- "${S[@]}" -seed 7 -kinds mutex -restart-at 4
gen heap-rate -- "${S[@]}" -seed 8 -kinds heap -memrate-change 4:512

gen_size medium 6 500ms 1500ms 10

"$HERE/summarize.py" "$DEST"
du -sh "$DEST"
