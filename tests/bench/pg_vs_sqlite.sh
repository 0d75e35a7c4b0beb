#!/usr/bin/env bash
# pg_vs_sqlite.sh: server CPU per medium delta, SQLite against PostgreSQL, in one run on
# the same load (tests/tools/pd_load): STREAMS streams of heap-medium and mutex-medium
# (default 200), every stream seeded with its first profile, then a closed loop for
# BENCH_SECONDS (default 20) after a 3 s warm-up, once per backend with the same arguments.
#
# Per delta it prints pdeltad's CPU (pd_load --server-pid, the measured window) and, for
# PostgreSQL, the database server's CPU too (every process of the throwaway cluster,
# pg_lib.sh, over the whole pd_load run, divided by every answer it committed: seeds
# included), since that work left pdeltad's process. Not part of `make check`.
#
#   BINDIR=bin BUILD=build/release bash tests/bench/pg_vs_sqlite.sh
set -euo pipefail
. "$(dirname "$0")/../integration/lib.sh"
. "$(dirname "$0")/../integration/pg_lib.sh"
BUILD=${BUILD:-build/release}
case $BUILD in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
LOAD=$BUILD/tests/tools/pd_load
[[ -x $LOAD ]] || { echo "$LOAD not built (make tools)"; exit 1; }
STREAMS=${STREAMS:-200}
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

field() { grep '^RESULT ' "$WORK/$1.out" | tail -n 1 | tr ' ' '\n' | sed -n "s/^$2=//p"; }

bench() { # bench NAME DB
	local name=$1 db=$2 c0 c1
	pd_start_server --workers 2 --db "$db"
	c0=$(pg_cpu)
	"$LOAD" --port "$PORT" --ca "$CA" --token-file "$WORK/token" --server-pid "$SERVER_PID" \
		--seq "$TESTDATA/profiles/heap-medium" --seq "$TESTDATA/profiles/mutex-medium" \
		--connections 20 --streams "$STREAMS" --seed --warmup 3 --seconds "$SECONDS_RUN" \
		--prefix "bench-$name" >"$WORK/$name.out" 2>&1 || { cat "$WORK/$name.out"; exit 1; }
	c1=$(pg_cpu)
	curl -fsS "http://127.0.0.1:$MPORT/metrics" >"$WORK/$name.metrics"
	pd_stop_server
	sed 's/^/    /' "$WORK/$name.out"
	local resp cpu rate p99 seeds
	resp=$(field "$name" responses)
	cpu=$(field "$name" server_cpu_s)
	rate=$(field "$name" rate)
	p99=$(field "$name" p99_ms)
	seeds=$(grep -oE 'seed: [0-9]+' "$WORK/$name.out" | grep -oE '[0-9]+' | head -n 1 || echo "$STREAMS")
	awk -v n="$name" -v r="$resp" -v c="$cpu" -v rate="$rate" -v p="$p99" -v pg="$(awk -v a="$c0" -v b="$c1" 'BEGIN{print b-a}')" \
		-v seeds="${seeds:-$STREAMS}" -v is_pg="$3" 'BEGIN {
		printf "%-10s %6.1f deltas/s  p99 %6.1f ms  pdeltad CPU %5.2f ms/delta", n, rate, p, 1e3 * c / r
		if (is_pg) printf "  + postgres CPU %5.2f ms/answer (%.1f s over %d answers)", 1e3 * pg / (r + seeds), pg, r + seeds
		printf "\n" }' | tee -a "$WORK/summary"
	# Group commit: writes per transaction and the time of one, from the server's metrics.
	awk -v n="$name" '$1 == "pdeltad_store_commits_total" { c = $2 }
		$1 == "pdeltad_store_rows_written_total" { w = $2 }
		$1 == "pdeltad_store_commit_seconds_sum" { t = $2 }
		END { printf "%-10s %d commits, %.1f writes per commit, %.2f ms per commit = %.2f ms per write\n",
			n, c, w / c, 1e3 * t / c, 1e3 * t / w }' "$WORK/$name.metrics" | tee -a "$WORK/summary"
}

bench sqlite "$WORK/state.db" 0
bench postgresql "$PG_URI" 1
# One round trip of a prepared statement to this PostgreSQL (what pipelining a batch's
# statements could save per write).
"$PG_BIN/pgbench" -i -q -s 1 "$PG_CONNINFO" >/dev/null 2>&1
"$PG_BIN/pgbench" -n -S -M prepared -T 5 -c 1 -h 127.0.0.1 -p "$PG_PORT" -U pdelta bench 2>/dev/null |
	awk '/latency average/ { printf "postgresql round trip (pgbench -S, prepared, one client, TCP): %s ms\n", $4 }' |
	tee -a "$WORK/summary"
echo "---- summary ($STREAMS streams of heap-medium + mutex-medium, ${SECONDS_RUN} s closed loop, 2 workers) ----"
cat "$WORK/summary"
