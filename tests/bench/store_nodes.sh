#!/usr/bin/env bash
# store_nodes.sh: server CPU per medium delta, SQLite against PostgreSQL, and one pdeltad
# node against three on the same PostgreSQL, side by side in one run on the same load
# (tests/tools/pd_load): STREAMS streams of heap-medium and mutex-medium (default 210),
# every stream seeded with its first profile, then a closed loop for BENCH_SECONDS
# (default 20) after a 3 s warm-up, once per arm with the same arguments:
#   sqlite         one node, its SQLite file
#   postgresql     one node on a throwaway PostgreSQL (tests/integration/pg_lib.sh)
#   postgresql-x3  three nodes on that PostgreSQL; pd_load spreads its connections over
#                  them (connection i to node i % 3), the streams of a connection stay on
#                  its node, as clients routing by stream do
# Every node runs 2 workers. On a 2-core machine the three nodes share the same two cores:
# the third arm is a correctness-under-load check of the shared store (no protocol
# violation, no unexpected BASELINE, no put_if conflict), not a scaling figure.
#
# Per delta it prints pdeltad's CPU (pd_load --server-pid, every node summed, the measured
# window) and, for PostgreSQL, the database server's CPU too (every process of the
# throwaway cluster, pg_lib.sh, over the whole pd_load run, divided by every answer it
# committed: seeds included), since that work left pdeltad's process. Not part of
# `make check`: `make bench-store`.
#
#   BINDIR=bin BUILD=build/release bash tests/bench/store_nodes.sh
set -euo pipefail
. "$(dirname "$0")/../integration/lib.sh"
. "$(dirname "$0")/../integration/pg_lib.sh"
BUILD=${BUILD:-build/release}
case $BUILD in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
LOAD=$BUILD/tests/tools/pd_load
[[ -x $LOAD ]] || { echo "$LOAD not built (make tools)"; exit 1; }
STREAMS=${STREAMS:-210}
SECONDS_RUN=${BENCH_SECONDS:-20}
pg_require
pd_init pgbench
pg_start
pg_createdb bench
pd_pki
printf '%s\n' "$AGENT_TOKEN" >"$WORK/token"

# CPU seconds of the PostgreSQL cluster: the postmaster with its reaped children, and the
# live backends.
pg_cpu() {
	"$PY" - "$(head -n 1 "$PG_DIR/data/postmaster.pid")" <<'PY'
import os, sys
pm, hz, total = int(sys.argv[1]), os.sysconf("SC_CLK_TCK"), 0
for pid in os.listdir("/proc"):
    if not pid.isdigit():
        continue
    try:
        f = open("/proc/%s/stat" % pid).read().rsplit(")", 1)[1].split()
    except OSError:
        continue
    ppid, ut, st, cut, cst = int(f[1]), int(f[11]), int(f[12]), int(f[13]), int(f[14])
    if int(pid) == pm:
        total += ut + st + cut + cst
    elif ppid == pm:
        total += ut + st
print("%.2f" % (total / hz))
PY
}


NODE_PIDS=()
NODE_PORTS=()
NODE_MPORTS=()
start_nodes() { # N DB: N pdeltad nodes on DB, 2 workers each
	local i p m
	NODE_PIDS=() NODE_PORTS=() NODE_MPORTS=()
	for ((i = 1; i <= $1; i++)); do
		p=$(free_port)
		m=$(free_port)
		while [[ $m == "$p" ]]; do m=$(free_port); done
		"$BINDIR/pdeltad" --listen "127.0.0.1:$p" --metrics_listen "127.0.0.1:$m" \
			--tls_cert "$WORK/certs/server.pem" --tls_key "$WORK/certs/server.key" \
			--tenants "$WORK/tenants" --db "$2" --workers 2 >>"$WORK/node$i.log" 2>&1 &
		NODE_PIDS+=($!)
		NODE_PORTS+=("$p")
		NODE_MPORTS+=("$m")
		pd_at_exit "kill -0 $! 2>/dev/null && kill -9 $! 2>/dev/null || true"
		pd_wait_http "http://127.0.0.1:$m/healthz" "$!" ||
			{ echo "node $i did not come up:"; tail -n 20 "$WORK/node$i.log"; exit 1; }
	done
}
stop_nodes() {
	local p
	for p in "${NODE_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${NODE_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
# the sum of metric NAME (every label set) over the nodes' saved /metrics
metric_sum() { # NAME ARM
	cat "$WORK/$2".metrics.* | awk -v n="$1" '$1 == n || index($1, n "{") == 1 { s += $2 } END { print s + 0 }'
}

join() { local IFS=,; echo "$*"; }

bench() { # bench NAME DB NODES IS_PG
	local name=$1 db=$2 nodes=$3 c0 c1 i
	start_nodes "$nodes" "$db"
	c0=$(pg_cpu)
	"$LOAD" --port "$(join "${NODE_PORTS[@]}")" --ca "$CA" --token-file "$WORK/token" \
		--server-pid "$(join "${NODE_PIDS[@]}")" \
		--seq "$TESTDATA/profiles/heap-medium" --seq "$TESTDATA/profiles/mutex-medium" \
		--connections 21 --streams "$STREAMS" --seed --warmup 3 --seconds "$SECONDS_RUN" \
		--prefix "bench-$name" >"$WORK/$name.out" 2>&1 || { cat "$WORK/$name.out"; exit 1; }
	c1=$(pg_cpu)
	for ((i = 0; i < nodes; i++)); do
		curl -fsS "http://127.0.0.1:${NODE_MPORTS[$i]}/metrics" >"$WORK/$name.metrics.$i"
	done
	stop_nodes
	sed 's/^/    /' "$WORK/$name.out"
	local resp cpu rate p99 seeds unexpected violations conflicts
	resp=$(pd_result "$WORK/$name.out" responses)
	cpu=$(pd_result "$WORK/$name.out" server_cpu_s)
	rate=$(pd_result "$WORK/$name.out" rate)
	p99=$(pd_result "$WORK/$name.out" p99_ms)
	unexpected=$(pd_result "$WORK/$name.out" unexpected)
	violations=$(pd_result "$WORK/$name.out" violations)
	conflicts=$(metric_sum pdeltad_store_conflicts_total "$name")
	seeds=$(grep -oE 'seed: [0-9]+' "$WORK/$name.out" | grep -oE '[0-9]+' | head -n 1 || echo "$STREAMS")
	awk -v n="$name" -v r="$resp" -v c="$cpu" -v rate="$rate" -v p="$p99" -v pg="$(awk -v a="$c0" -v b="$c1" 'BEGIN{print b-a}')" \
		-v seeds="${seeds:-$STREAMS}" -v is_pg="$4" -v nodes="$nodes" 'BEGIN {
		printf "%-14s %d node%s %6.1f deltas/s  p99 %6.1f ms  pdeltad CPU %5.2f ms/delta", n, nodes,
			(nodes > 1 ? "s" : " "), rate, p, 1e3 * c / r
		if (is_pg) printf "  + postgres CPU %5.2f ms/answer (%.1f s over %d answers)", 1e3 * pg / (r + seeds), pg, r + seeds
		printf "\n" }' | tee -a "$WORK/summary"
	# Group commit: writes per transaction and the time of one, from the nodes' metrics.
	awk -v n="$name" -v c="$(metric_sum pdeltad_store_commits_total "$name")" \
		-v w="$(metric_sum pdeltad_store_rows_written_total "$name")" \
		-v t="$(metric_sum pdeltad_store_commit_seconds_sum "$name")" 'BEGIN {
		printf "%-14s %d commits, %.1f writes per commit, %.2f ms per commit = %.2f ms per write\n",
			n, c, w / c, 1e3 * t / c, 1e3 * t / w }' | tee -a "$WORK/summary"
	# Correctness under load: pd_load's own checks (it exits 1 on a violation) and the store.
	echo "$name: violations $violations, unexpected $unexpected, put_if conflicts $conflicts" |
		tee -a "$WORK/summary"
	if ((violations != 0 || unexpected != 0 || conflicts != 0)); then
		echo "$name: FAILED the correctness check"
		CHECK_FAILED=1
	fi
}
CHECK_FAILED=0

bench sqlite "$WORK/state.db" 1 0
bench postgresql "$PG_URI" 1 1
bench postgresql-x3 "$PG_URI" 3 1
# One round trip of a prepared statement to this PostgreSQL (what pipelining a batch's
# statements could save per write).
"$PG_BIN/pgbench" -i -q -s 1 "$PG_CONNINFO" >/dev/null 2>&1
"$PG_BIN/pgbench" -n -S -M prepared -T 5 -c 1 -h 127.0.0.1 -p "$PG_PORT" -U pdelta bench 2>/dev/null |
	awk '/latency average/ { printf "postgresql round trip (pgbench -S, prepared, one client, TCP): %s ms\n", $4 }' |
	tee -a "$WORK/summary"
echo "---- summary ($STREAMS streams of heap-medium + mutex-medium, ${SECONDS_RUN} s closed loop, 2 workers per node) ----"
cat "$WORK/summary"
exit "$CHECK_FAILED"
