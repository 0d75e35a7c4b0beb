#!/usr/bin/env bash
# capacity.sh: deltas/s per core of pdeltad for small, medium and large profiles (the
# performance issue's goal 3). For each size, a closed-loop pd_load run over the heap and
# mutex sequences of that size, every stream seeded with its first profile (--seed) so the
# run measures deltas against stored state, twice: the server pinned to CPU 1 and the load
# generator to CPU 0 ("1-core server"), then both unpinned, sharing the cores. Printed per
# run: deltas/s, deltas/s per server core, p50/p99, server CPU ms per delta, and whether p99
# is within CAP_P99_MS (default 200). Closed-loop latency is queueing (streams in flight /
# rate), so the streams per size (CAP_STREAMS_SMALL/MEDIUM/LARGE) set the p99.
#
# Env: BINDIR (default bin), BUILD (default build/release), CAP_SECONDS (default 20),
# CAP_WARMUP (default 5), CAP_SIZES (default "small medium large"; large comes from
# tests/workload/gen-large.sh into $BUILD/testdata, generated on first use).
set -euo pipefail

. "$(dirname "$0")/../integration/lib.sh"
LOAD=$BUILDDIR/tests/tools/pd_load
SECS=${CAP_SECONDS:-20}
WARM=${CAP_WARMUP:-5}
P99_MAX=${CAP_P99_MS:-200}
SIZES=${CAP_SIZES:-small medium large}
NCPU=$(nproc)

pd_need "$BINDIR/pdeltad" "$LOAD"
command -v taskset >/dev/null || { echo "capacity: taskset not found" >&2; exit 1; }
((NCPU >= 2)) || { echo "capacity: needs 2 CPUs to pin apart" >&2; exit 1; }
pd_init capacity
pd_pki
printf '%s\n' "$AGENT_TOKEN" >"$WORK/token"

seq_dir() { # seq_dir NAME: a fixture or a generated large sequence
	if [[ -d $TESTDATA/profiles/$1 ]]; then echo "$TESTDATA/profiles/$1"; else echo "$BUILDDIR/testdata/profiles/$1"; fi
}
streams_for() {
	case $1 in
	small) echo "${CAP_STREAMS_SMALL:-16}" ;;
	medium) echo "${CAP_STREAMS_MEDIUM:-8}" ;;
	large) echo "${CAP_STREAMS_LARGE:-2}" ;;
	*) echo "capacity: unknown size '$1' (small, medium, large)" >&2; exit 1 ;;
	esac
}
field() { grep '^RESULT ' "$1" | tail -n 1 | tr ' ' '\n' | sed -n "s/^$2=//p"; }

# run SIZE PLACEMENT: one closed-loop run against a fresh server; prints a table row.
run() {
	local size=$1 place=$2 srv_pin=() gen_pin=() cores=$NCPU n out rc=0
	n=$(streams_for "$size")
	if [[ $place == pinned ]]; then
		srv_pin=(taskset -c 1) gen_pin=(taskset -c 0) cores=1
	fi
	rm -f "$WORK/state.db"*
	"${srv_pin[@]}" "$BINDIR/pdeltad" --listen "127.0.0.1:$PORT" --metrics_listen "127.0.0.1:$MPORT" \
		--tls_cert "$WORK/certs/server.pem" --tls_key "$WORK/certs/server.key" \
		--tenants "$WORK/tenants" --db "$WORK/state.db" >>"$WORK/server.log" 2>&1 &
	SERVER_PID=$!
	pd_wait_http "http://127.0.0.1:$MPORT/healthz" "$SERVER_PID" || { echo "capacity: pdeltad did not start" >&2; tail -n 20 "$WORK/server.log" >&2; exit 1; }
	out=$WORK/$size-$place.out
	"${gen_pin[@]}" "$LOAD" --port "$PORT" --ca "$CA" --token-file "$WORK/token" --server-pid "$SERVER_PID" \
		--connections "$n" --streams "$n" --inflight 1 --seed --warmup "$WARM" --seconds "$SECS" \
		--seq "$(seq_dir "heap-$size")" --seq "$(seq_dir "mutex-$size")" >"$out" 2>&1 || rc=$?
	pd_stop_server
	if ((rc)) || [[ -z $(field "$out" rate) ]]; then
		echo "capacity: pd_load failed on $size ($place), exit $rc:" >&2
		tail -n 20 "$out" >&2
		exit 1
	fi
	awk -v s="$size" -v pl="$place" -v n="$n" -v c="$cores" -v max="$P99_MAX" \
		-v rate="$(field "$out" rate)" -v p50="$(field "$out" p50_ms)" -v p99="$(field "$out" p99_ms)" \
		-v resp="$(field "$out" responses)" -v cpu="$(field "$out" server_cpu_s)" 'BEGIN {
		printf "| %s | %s | %d | %.1f | %.1f | %.1f | %.1f | %.2f | %s |\n", s, pl, n, rate, rate / c,
			p50, p99, (resp > 0 ? 1000 * cpu / resp : 0), (p99 <= max ? "yes" : "no") }'
}

if [[ $SIZES == *large* ]]; then bash "$ROOT/tests/workload/gen-large.sh" "$BUILDDIR/testdata" >&2; fi
echo "pdeltad capacity ($NCPU cores, closed loop, ${WARM}s warm-up + ${SECS}s per run, seeded streams)"
echo "| size | placement | streams | deltas/s | deltas/s per server core | p50 ms | p99 ms | server CPU ms per delta | p99 <= $P99_MAX ms |"
echo "|---|---|---|---|---|---|---|---|---|"
for size in $SIZES; do
	for place in pinned shared; do run "$size" "$place"; done
done
