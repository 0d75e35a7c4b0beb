#!/usr/bin/env bash
# run.sh: `make bench`. For every test-data sequence, pd_bench measures the
# engine (end to end gz->gz, core raw->raw, per phase, MB/s, state bytes per
# identity, mallocs per steady-state call, peak RSS, ratio to the zlib floor);
# for the last pair of each sequence, godelta (parse + scale -1 + merge with
# github.com/google/pprof, the usual way) is timed on the same input in the
# same run, and the speed-up is printed. Sequences: the repository's fixtures
# (tests/data, small and medium) and large ones that tests/workload generates
# into $BUILD/testdata on first use (cached). BENCH_REPS (default 5),
# BENCH_SEQS (default: all), BENCH_NO_GO=1 skips the baseline,
# BENCH_NO_LARGE=1 skips generating and measuring the large sequences.
set -euo pipefail
BUILD=${BUILD:-build/release}
REPS=${BENCH_REPS:-5}
LARGE=$BUILD/testdata
if [ "${BENCH_NO_LARGE:-0}" != 1 ]; then
	bash tests/workload/gen-large.sh "$LARGE" >&2
fi
seq_dir() { # the directory of sequence $1: fixture or generated
	if [ -d "tests/data/profiles/$1" ]; then echo "tests/data/profiles/$1"; else echo "$LARGE/profiles/$1"; fi
}
all_seqs() {
	(cd tests/data/profiles && for d in */; do echo "${d%/}"; done)
	[ -d "$LARGE/profiles" ] && (cd "$LARGE/profiles" && for d in */; do echo "${d%/}"; done)
	true
}
SEQS=${BENCH_SEQS:-$(all_seqs)}
bench=$BUILD/tests/bench/pd_bench
godelta=$BUILD/godelta
[ -x "$bench" ] || { echo "bench: $bench not built" >&2; exit 1; }

if [ "${BENCH_NO_GO:-0}" != 1 ] && command -v go >/dev/null && [ -d /usr/share/gocode/src/github.com/google/pprof ]; then
	(cd tests/bench/godelta && HOME=${HOME:-/tmp} GOCACHE=$(mktemp -d) GO111MODULE=off \
		GOPATH=/usr/share/gocode GOFLAGS= go build -o "$OLDPWD/$godelta" .) || godelta=
else
	godelta=
fi

echo "pdelta engine benchmark ($(nproc) cores, reps=$REPS; ms are medians per call, averaged over the pairs of a sequence)"
for s in $SEQS; do
	files=("$(seq_dir "$s")"/*.pb.gz)
	line=$("$bench" --reps "$REPS" "$s" "${files[@]}")
	extra=""
	if [ -n "$godelta" ]; then
		n=${#files[@]}
		last=("${files[$((n - 2))]}" "${files[$((n - 1))]}")
		ours=$("$bench" --reps "$REPS" "$s" "${last[@]}" | sed -E 's/.* e2e_ms=([0-9.]+).*/\1/')
		greps=$REPS
		case $s in *-large) greps=1 ;; esac
		go_ms=$("$godelta" -reps "$greps" "${last[@]}")
		extra=$(awk -v o="$ours" -v g="$go_ms" 'BEGIN { printf " | last pair: pdelta %.1f ms, go-pprof-merge %.1f ms, speedup %.1fx", o, g, g / o }')
	fi
	echo "$line$extra"
done
