#!/usr/bin/env bash
# End-to-end correctness of the delta engine: every real sequence, every fastdelta pair and
# every synthetic variant goes through `pdelta seq` (and some through `pdelta diff`), and each
# output is judged by the independent Python oracle (tests/oracle/check_seq.py).
#
# Env: BINDIR (default bin), PDELTA_TESTDATA=DIR an optional extra corpus (DIR/profiles/<seq>/,
#      DIR/fastdelta/*.pprof pairs) checked too, PDELTA_QUICK=1 skips the *-large sequences, PDELTA_JOBS parallel checks (default 2),
#      PDELTA_NO_GO=1 skips `go tool pprof` on the outputs.
set -euo pipefail

. "$(dirname "$0")/lib.sh"
PDELTA=$BINDIR/pdelta
ORACLE=$ROOT/tests/oracle
GOFLAG=()
[[ -n ${PDELTA_NO_GO:-} ]] && GOFLAG=(--no-go)

pd_need "$PDELTA"

pd_init engine-oracle
pd_jobs_init

check() { # check NAME [check_seq options] FILE...
	local name=$1
	shift
	pd_job "$name" "$PY" "$ORACLE/check_seq.py" --pdelta "$PDELTA" "${GOFLAG[@]}" --label "$name" "$@"
}

seq_files() { ls "$TESTDATA/profiles/$1"/*.pb.gz; }

# --- real sequences (the fixtures, then the extra corpus), biggest first so the two workers
# stay busy --------------------------------------------------------------------------------
real_seqs() { # real_seqs ROOT LABEL_PREFIX
	local root=$1 prefix=$2 s
	for s in $(ls "$root/profiles" | grep -v README | sort -t- -k2,2r); do
		[[ -d $root/profiles/$s ]] || continue
		if [[ -n ${PDELTA_QUICK:-} && $s == *-large ]]; then continue; fi
		mapfile -t files < <(ls "$root/profiles/$s"/*.pb.gz)
		gosample=()
		# go tool pprof needs ~5 s per large output: check the first and last only.
		[[ $s == *-large ]] && gosample=(--go-sample 2)
		check "$prefix$s" "${gosample[@]}" "${files[@]}"
	done
}
real_seqs "$TESTDATA" ""
EXTRA=${PDELTA_TESTDATA:-}
if [[ -n $EXTRA ]]; then
	EXTRA=$(cd "$EXTRA" && pwd)
	[[ -d $EXTRA/profiles ]] && real_seqs "$EXTRA" extra-
fi

# --- fastdelta pairs of the extra corpus (raw, uncompressed inputs) ------------------------
FD=${EXTRA:+$EXTRA/fastdelta}
if [[ -n $FD && -d $FD ]]; then
	for pair in heap.before:heap.after block.before:block.after \
		stress-failure.before:stress-failure.after stress-failure.2.before:stress-failure.2.after \
		stress-failure.3.before:stress-failure.3.after heap:heap big-heap:big-heap; do
		a=${pair%%:*} b=${pair##*:}
		check "fastdelta-$a" "$FD/$a.pprof" "$FD/$b.pprof"
		check "fastdelta-diff-$a" --mode diff "$FD/$a.pprof" "$FD/$b.pprof"
	done
fi

# --- raw (uncompressed) inputs, and a repeated profile (an all-zero delta) -----------------
RAW=$WORK/raw
mkdir -p "$RAW"
for i in 000 001 002; do gzip -dc "$TESTDATA/profiles/heap-medium/$i.pb.gz" >"$RAW/heap-$i.pprof"; done
check raw-heap-medium "$RAW"/heap-*.pprof
check raw-diff-heap-medium --mode diff "$RAW/heap-000.pprof" "$RAW/heap-001.pprof"
check same-twice "$RAW/heap-001.pprof" "$RAW/heap-001.pprof"

# --- policies and the diff command ---------------------------------------------------------
mapfile -t HS < <(seq_files heap-small)
mapfile -t BS < <(seq_files block-small)
mapfile -t HM < <(seq_files heap-medium)
check heap-small-first-drop --first drop "${HS[@]}"
check block-small-first-drop --first drop "${BS[@]}"
check heap-medium-alloc_space-gauge --type alloc_space=gauge "${HM[@]}"
check heap-small-inuse-delta --type inuse_objects=delta "${HS[@]}"
check block-small-all-gauge --type contentions=gauge --type delay=gauge "${BS[@]}"
check heap-small-diff --mode diff "${HS[@]}"
check block-small-diff --mode diff "${BS[@]}"

# --- synthetic variants --------------------------------------------------------------------
"$PY" "$ORACLE/gen_variants.py" --testdata "$TESTDATA" "$WORK/variants" >/dev/null
while IFS='|' read -r name args files; do
	eval "extra=($args)"
	read -r -a rel <<<"$files"
	check "variant-$name" "${extra[@]}" "${rel[@]/#/$WORK/variants/}"
done <"$WORK/variants/manifest.txt"

# --- inspect --json on a few files ---------------------------------------------------------
pd_job inspect "$PY" "$ORACLE/inspect_check.py" --pdelta "$PDELTA" "${HS[0]}" "$RAW/heap-002.pprof" \
	"$TESTDATA/profiles/cpu-small/000.pb.gz" "$TESTDATA/profiles/goroutine-medium/000.pb.gz"

wait

# --- summary -------------------------------------------------------------------------------
pd_jobs_tally 60 verbose
echo "test_engine_oracle: $NJOB checks run, $JOBS_FAILED failed"
pd_finish
