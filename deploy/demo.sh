#!/usr/bin/env bash
# demo.sh (`make demo`): pdelta on a live Go service, from a fresh clone.
#
# Installs missing packages, builds, makes dev certificates, starts the
# repository's Go workload service (tests/workload: allocates, contends on
# mutexes, blocks on channels, serves net/http/pprof on a loopback port) and
# pdeltad on a temporary SQLite store. Then `pdelta scrape` (the pull-mode
# agent) takes the cumulative heap, mutex and block profiles from the live
# service's /debug/pprof endpoints every DEMO_INTERVAL for DEMO_ROUNDS rounds,
# sends each through pdeltad (one stream per kind) and writes the deltas; the
# demo prints each delivery, the top entries of the last deltas, an agent
# restart that continues its streams, a retried request answered DUPLICATE,
# pdeltactl, /metrics, and a graceful stop. DEMO_KEEP=1 keeps the work dir.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=${DEMO_ROUNDS:-4}
INTERVAL=${DEMO_INTERVAL:-2s}

bash deploy/install-deps.sh
make -s -j2 all
WORKLOAD=build/release/pdelta-workload
bash tests/workload/build.sh "$WORKLOAD"

work=$(mktemp -d "${TMPDIR:-/tmp}/pdelta-demo.XXXXXX")
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	if [ "${DEMO_KEEP:-0}" = 1 ]; then echo "work dir kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
http_get() { # http_get URL FILE: fails on any HTTP error
	python3 - "$1" "$2" <<'PY'
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=10) as r, open(sys.argv[2], "wb") as f:
    f.write(r.read())
PY
}
wait_http() { # wait_http URL PID: until URL answers (or PID died)
	for _ in $(seq 100); do
		http_get "$1" /dev/null 2>/dev/null && return 0
		kill -0 "$2" 2>/dev/null || break
		sleep 0.1
	done
	echo "demo: $1 did not come up" >&2
	return 1
}

echo "== starting the Go workload service (tests/workload) on a loopback port"
"$WORKLOAD" serve -listen 127.0.0.1:0 -addr-file "$work/workload.addr" -size small >"$work/workload.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -s "$work/workload.addr" ] && break; sleep 0.1; done
svc=$(cat "$work/workload.addr")
wait_http "http://$svc/debug/pprof/" "${pids[0]}"
echo "   Go service at http://$svc/debug/pprof/"

port=$(free_port)
mport=$(free_port)
echo "== dev certificates (deploy/certs/gen-certs.sh) and tokens"
bash deploy/certs/gen-certs.sh "$work/certs" >/dev/null
agent_token=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
admin_token=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
{
	echo "tenant=demo role=agent token_sha256=$(printf '%s' "$agent_token" | bin/pdeltad --hash-token)"
	echo "tenant=ops role=admin token_sha256=$(printf '%s' "$admin_token" | bin/pdeltad --hash-token)"
} >"$work/tenants"

echo "== starting pdeltad on 127.0.0.1:$port (metrics on :$mport, state in $work/state.db)"
bin/pdeltad --listen "127.0.0.1:$port" --metrics_listen "127.0.0.1:$mport" \
	--tls_cert "$work/certs/server.pem" --tls_key "$work/certs/server.key" \
	--tenants "$work/tenants" --db "$work/state.db" >"$work/pdeltad.log" 2>&1 &
pids+=($!)
pdeltad_pid=$!
wait_http "http://127.0.0.1:$mport/healthz" "$pdeltad_pid"

printf '%s\n' "$agent_token" >"$work/agent.token"
scrape=(bin/pdelta scrape --server "127.0.0.1:$port" --ca "$work/certs/ca.pem" --token-file "$work/agent.token"
	--target "demo-svc=http://$svc" --types heap,mutex,block --state "$work/scrape.state"
	--out-dir "$work/out" --save-input "$work/in")
top_index() { case $1 in heap) echo alloc_space ;; *) echo delay ;; esac; }

echo "== pdelta scrape: $ROUNDS rounds, $INTERVAL apart, of /debug/pprof/{heap,mutex,block} through pdeltad"
echo "   (one line per delivery: target, type, sequence, status, bytes scraped -> delta bytes, ms)"
"${scrape[@]}" --interval "$INTERVAL" --count "$ROUNDS"

echo "== top of the last heap and mutex deltas (go tool pprof -top)"
last=$(printf '%03d' $((ROUNDS - 1))).pb.gz
for kind in heap mutex; do
	echo "-- $kind delta of the last round ($(top_index "$kind"))"
	go tool pprof -top -nodecount=6 -sample_index="$(top_index "$kind")" "$work/out/demo-svc/$kind/$last" 2>/dev/null |
		head -n 12
done
echo "-- pdelta inspect of the last heap delta"
bin/pdelta inspect "$work/out/demo-svc/heap/$last"

echo "== the agent restarts (--once, same --state): its streams continue with a DELTA, not a BASELINE"
"${scrape[@]}" --once

seq=$((ROUNDS + 1))
last=$(printf '%03d' "$ROUNDS").pb.gz
echo "== a retry of the last request (same sequence number $seq, same bytes): DUPLICATE, same delta"
inc=$(awk '$1 == "incarnation" {print $2}' "$work/scrape.state")
bin/pdelta send --server "127.0.0.1:$port" --ca "$work/certs/ca.pem" --token-file "$work/agent.token" \
	--incarnation "$inc" --stream demo-svc/heap --seq "$seq" -o "$work/retry" "$work/in/demo-svc/heap/$last"
cmp "$work/out/demo-svc/heap/$last" "$work/retry/$last" && echo "retry returned a byte-identical delta"

echo "== pdeltactl (admin token)"
ctl=(bin/pdeltactl --server "127.0.0.1:$port" --ca "$work/certs/ca.pem" --token "$admin_token")
"${ctl[@]}" streams --tenant demo
"${ctl[@]}" stream demo-svc/heap --tenant demo

echo "== /metrics (excerpt)"
python3 - "$mport" <<'PY'
import sys, urllib.request
body = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=2).read().decode()
for line in body.splitlines():
    if line.startswith(("pdeltad_requests_total", "pdeltad_streams_cached", "pdeltad_store_commits_total", "pdeltad_profile_bytes")):
        print(line)
PY

echo "== stopping pdeltad (SIGTERM drains) and the Go service"
kill -TERM "$pdeltad_pid"
wait "$pdeltad_pid" || true
tail -n 2 "$work/pdeltad.log"
echo "demo done"
