#!/usr/bin/env bash
# test_server_all_seqs.sh: every fixture sequence (tests/data/profiles/*), and with
# PDELTA_TESTDATA=DIR every sequence and fastdelta pair of that extra corpus,
# through the real pdeltad over TLS (`pdelta send`), compared with the local engine
# (`pdelta seq`, which test_engine_oracle.sh judges against the independent oracle):
# statuses must be equal and every delta byte-identical (same engine, same gzip level),
# so the server's deltas are the oracle-checked ones. A few outputs are also judged by
# the oracle directly. PDELTA_QUICK=1 skips the *-large sequences.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
pd_init allseqs
pd_pki
pd_start_server --workers 2 --db_sync no

send=("$BINDIR/pdelta" send --server "127.0.0.1:$PORT" --ca "$CA" --token "$AGENT_TOKEN" --incarnation 7)

compare() { # compare NAME FILE...
	local name=$1
	shift
	local a=$WORK/srv/$name b=$WORK/loc/$name
	mkdir -p "$a" "$b"
	if ! "${send[@]}" --stream "all/$name" -o "$a" "$@" >"$WORK/send.out" 2>&1; then
		bad "$name: pdelta send failed: $(tail -n 3 "$WORK/send.out")"
		return
	fi
	"$BINDIR/pdelta" seq -o "$b" "$@" >"$WORK/seq.out" 2>&1 || { bad "$name: pdelta seq failed"; return; }
	local st_srv st_loc
	st_srv=$(awk '{print $1, $2, $3}' "$WORK/send.out")
	st_loc=$(awk '{print $1, $2, $3}' "$WORK/seq.out")
	[[ $st_srv == "$st_loc" ]] || { bad "$name: statuses differ: server [$st_srv] local [$st_loc]"; return; }
	local f diff=0
	for f in "$@"; do
		cmp -s "$a/$(basename "$f")" "$b/$(basename "$f")" || { diff=1; echo "  differs: $(basename "$f")"; }
	done
	((diff == 0)) && ok "$name: $# profiles through pdeltad, statuses equal, deltas byte-identical" ||
		bad "$name: server deltas differ from the local engine's"
}

for dir in "$TESTDATA"/profiles/*/; do
	compare "$(basename "$dir")" "$dir"*.pb.gz
done
if [[ -n $EXTRA_TESTDATA ]]; then
	for dir in "$EXTRA_TESTDATA"/profiles/*/; do
		s=$(basename "$dir")
		[[ -n ${PDELTA_QUICK:-} && $s == *-large ]] && continue
		compare "extra-$s" "$dir"*.pb.gz
	done
	fd=$EXTRA_TESTDATA/fastdelta
	for p in heap block stress-failure stress-failure.2 stress-failure.3; do
		if [[ -f $fd/$p.before.pprof ]]; then compare "fastdelta-$p" "$fd/$p.before.pprof" "$fd/$p.after.pprof"; fi
	done
fi

# The oracle directly on some server outputs (independent of the local engine).
for s in mutex-medium cpu-medium goroutine-medium allocs-medium heap-restart heap-rate fastdelta-stress-failure; do
	[[ -d $WORK/srv/$s ]] || continue
	if [[ $s == fastdelta-* ]]; then
		p=${s#fastdelta-}
		files=("$EXTRA_TESTDATA/fastdelta/$p.before.pprof" "$EXTRA_TESTDATA/fastdelta/$p.after.pprof")
	else
		files=("$TESTDATA/profiles/$s"/*.pb.gz)
	fi
	if "$PY" - "$WORK/srv/$s" "${files[@]}" >"$WORK/or.out" 2>&1 <<PYEOF; then
import os, sys
sys.path.insert(0, "$ROOT/tests/oracle")
import oracle, pprof_pb
outdir, files = sys.argv[1], sys.argv[2:]
o = oracle.Oracle()
for f in files:
    exp = o.step(oracle.resolve(pprof_pb.load(f)))
    got = oracle.semantic(pprof_pb.load(os.path.join(outdir, os.path.basename(f))))
    d = oracle.diff_sem(exp.sem, got)
    if d:
        print(os.path.basename(f), *d, sep="\n  ")
        sys.exit(1)
PYEOF
		ok "$s: server outputs equal the oracle's deltas"
	else
		bad "$s: oracle: $(tail -n 5 "$WORK/or.out")"
	fi
done

pd_stop_server TERM
pd_finish
