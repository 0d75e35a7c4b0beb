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
# Capacity at the latency bound: where the closed loop's p99 is over the bound, open-loop
# runs follow (pd_load --rate, requests arriving at a fixed rate as agents send them, over
# 4x the streams so that a new request finds an idle one) at 90, 75, 60, 45 and 30 % of the
# closed loop's rate until one keeps p99 within the bound: that rate is the size's
# capacity per core at p99 <= CAP_P99_MS, printed last for each size and placement.
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

# run SIZE PLACEMENT [RATE]: one run against a fresh server, closed loop, or open at RATE
# requests/s; prints a table row and leaves the output in $WORK/SIZE-PLACEMENT[-RATE].out.
run() {
	local size=$1 place=$2 rate=${3:-} srv_pin=() gen_pin=() cores=$NCPU n out rc=0 loop=(--inflight 1)
	n=$(streams_for "$size")
	if [[ -n $rate ]]; then
		n=$((4 * n)) loop=(--rate "$rate")
	fi
	if [[ $place == pinned ]]; then
		srv_pin=(taskset -c 1) gen_pin=(taskset -c 0) cores=1
	fi
	rm -f "$WORK/state.db"*
	"${srv_pin[@]}" "$BINDIR/pdeltad" --listen "127.0.0.1:$PORT" --metrics_listen "127.0.0.1:$MPORT" \
		--tls_cert "$WORK/certs/server.pem" --tls_key "$WORK/certs/server.key" \
		--tenants "$WORK/tenants" --db "$WORK/state.db" >>"$WORK/server.log" 2>&1 &
	SERVER_PID=$!
	pd_wait_http "http://127.0.0.1:$MPORT/healthz" "$SERVER_PID" || { echo "capacity: pdeltad did not start" >&2; tail -n 20 "$WORK/server.log" >&2; exit 1; }
	out=$WORK/$size-$place${rate:+-$rate}.out
	"${gen_pin[@]}" "$LOAD" --port "$PORT" --ca "$CA" --token-file "$WORK/token" --server-pid "$SERVER_PID" \
		--connections "$n" --streams "$n" "${loop[@]}" --seed --warmup "$WARM" --seconds "$SECS" \
		--seq "$(seq_dir "heap-$size")" --seq "$(seq_dir "mutex-$size")" >"$out" 2>&1 || rc=$?
	pd_stop_server
	if ((rc)) || [[ -z $(pd_result "$out" rate) ]]; then
		echo "capacity: pd_load failed on $size ($place), exit $rc:" >&2
		tail -n 20 "$out" >&2
		exit 1
	fi
	awk -v s="$size" -v pl="$place" -v n="$n" -v c="$cores" -v max="$P99_MAX" -v loop="${rate:+open $rate/s}" \
		-v rate="$(pd_result "$out" rate)" -v p50="$(pd_result "$out" p50_ms)" -v p99="$(pd_result "$out" p99_ms)" \
		-v resp="$(pd_result "$out" responses)" -v cpu="$(pd_result "$out" server_cpu_s)" 'BEGIN {
		printf "| %s | %s | %s | %d | %.1f | %.1f | %.1f | %.1f | %.2f | %s |\n", s, pl,
			(loop == "" ? "closed" : loop), n, rate, rate / c,
			p50, p99, (resp > 0 ? 1000 * cpu / resp : 0), (p99 <= max ? "yes" : "no") }'
}

if [[ $SIZES == *large* ]]; then bash "$ROOT/tests/workload/gen-large.sh" "$BUILDDIR/testdata" >&2; fi
# at_bound SIZE PLACEMENT: the closed loop, then open-loop rates down from it until p99 fits.
at_bound() {
	local size=$1 place=$2 closed f r out cores=$NCPU
	[[ $place == pinned ]] && cores=1
	run "$size" "$place"
	out=$WORK/$size-$place.out
	closed=$(pd_result "$out" rate)
	if awk -v p="$(pd_result "$out" p99_ms)" -v m="$P99_MAX" 'BEGIN { exit !(p <= m) }'; then
		CAPS+=("$size $place: $(awk -v r="$closed" -v c="$cores" 'BEGIN { printf "%.1f", r / c }') deltas/s per core (closed loop)")
		return
	fi
	for f in 90 75 60 45 30; do
		r=$(awk -v c="$closed" -v f="$f" 'BEGIN { printf "%.1f", c * f / 100 }')
		run "$size" "$place" "$r"
		out=$WORK/$size-$place-$r.out
		# within the bound, and the offered rate was carried (pd_load drops what it cannot start:
		# a saturated server would otherwise pass on the requests it took)
		if awk -v p="$(pd_result "$out" p99_ms)" -v m="$P99_MAX" -v got="$(pd_result "$out" rate)" -v want="$r" \
			'BEGIN { exit !(p <= m && got >= 0.97 * want) }'; then
			CAPS+=("$size $place: $(awk -v r="$(pd_result "$out" rate)" -v c="$cores" 'BEGIN { printf "%.1f", r / c }') deltas/s per core (open loop at $r/s, p99 $(pd_result "$out" p99_ms) ms)")
			return
		fi
	done
	CAPS+=("$size $place: p99 over $P99_MAX ms even at 30 % of the closed loop's rate")
}

CAPS=()
echo "pdeltad capacity ($NCPU cores, ${WARM}s warm-up + ${SECS}s per run, seeded streams)"
echo "| size | placement | loop | streams | deltas/s | deltas/s per server core | p50 ms | p99 ms | server CPU ms per delta | p99 <= $P99_MAX ms |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for size in $SIZES; do
	for place in pinned shared; do at_bound "$size" "$place"; done
done
echo
echo "capacity at p99 <= $P99_MAX ms:"
printf '  %s\n' "${CAPS[@]}"
