#!/usr/bin/env bash
# scrape_footprint.sh (`make bench-scrape`): what the agent costs. FOOT_TARGETS targets
# (default 100) x 3 kinds (heap, mutex, block) at FOOT_INTERVAL (default 10s) for FOOT_ROUNDS
# rounds (default 4), spread over FOOT_INSTANCES (default 4) instances of the repository's Go
# workload service. Three agents run at the same time on the same targets, so they see the
# same machine: `pdelta scrape` through pdeltad (the normal deployment: the agent only moves
# bytes), `pdelta scrape --local` (the delta computed in the agent), and goscrape
# (tests/bench/goscrape: the Go way, parse + keep the previous profile + Scale(-1) + Merge
# in process). Each agent's peak RSS and CPU come from wait4()'s rusage. Loopback only.
set -euo pipefail
. "$(dirname "$0")/../integration/lib.sh"
pd_init footprint
pd_pki
NT=${FOOT_TARGETS:-100} NI=${FOOT_INSTANCES:-4} IV=${FOOT_INTERVAL:-10s} NR=${FOOT_ROUNDS:-4}
WL=$ROOT/${BUILD:-build/release}/pdelta-workload
bash "$ROOT/tests/workload/build.sh" "$WL" >/dev/null
GS=$ROOT/${BUILD:-build/release}/goscrape
(cd "$ROOT/tests/bench/goscrape" && HOME=${HOME:-/tmp} GOCACHE=$WORK/gocache GO111MODULE=off \
	GOPATH=/usr/share/gocode GOFLAGS= go build -o "$GS" .)
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done; pd_cleanup' EXIT
for i in $(seq 1 "$NI"); do
	"$WL" serve -listen 127.0.0.1:0 -addr-file "$WORK/w$i.addr" -size small -seed "$i" >/dev/null 2>&1 &
	PIDS+=($!)
done
for i in $(seq 1 "$NI"); do
	for _ in $(seq 100); do [[ -s $WORK/w$i.addr ]] && break; sleep 0.05; done
done
for t in $(seq 0 $((NT - 1))); do
	echo "t$(printf %03d "$t") http://$(cat "$WORK/w$((t % NI + 1)).addr")"
done >"$WORK/targets"
pd_start_server
printf '%s\n' "$AGENT_TOKEN" >"$WORK/agent.token"
echo "scrape footprint: $NT targets x 3 kinds, interval $IV, $NR rounds, $NI Go services, $(nproc) cores"
"$PY" "$ROOT/tests/bench/scrape_footprint.py" "$NT" "$NR" \
	"pdelta scrape (via pdeltad)" -- "$BINDIR/pdelta" scrape --server "127.0.0.1:$PORT" --ca "$CA" \
	--token-file "$WORK/agent.token" --targets "$WORK/targets" --interval "$IV" --count "$NR" \
	--state "$WORK/a/state" --out-dir "$WORK/a/out" --keep 2 \
	-- "pdelta scrape --local" -- "$BINDIR/pdelta" scrape --local --targets "$WORK/targets" --interval "$IV" \
	--count "$NR" --out-dir "$WORK/b/out" --keep 2 --stream-prefix b/ \
	-- "goscrape (Go: parse + Scale(-1) + Merge)" -- "$GS" -targets "$WORK/targets" -interval "$IV" \
	-count "$NR" -out "$WORK/c"
