#!/usr/bin/env bash
# test_kill9.sh: pdeltad is SIGKILLed at random moments under traffic and restarted on the
# same database; every response a client received must stay consistent with the stored
# state (DESIGN §4, PROTOCOL.md §8). The work is done by kill9_driver.py (read its header):
#
#   - 4 clients x 3 streams (heap-small, block-small, mutex-small), retrying unanswered
#     requests with the same (incarnation, seq, bytes) across restarts;
#   - SIGKILL a random 50-500 ms after the server came up, KILL_CYCLES times (default 20;
#     the issue's goal is KILL_CYCLES=200);
#   - PRAGMA integrity_check after every kill;
#   - after every reconnect each stream re-sends its last answered request: DUPLICATE,
#     byte-identical (what a client received was committed);
#   - at the end every stream's responses equal tests/oracle/oracle.py's, one per seq.
#
# Env: BINDIR (default bin), KILL_CYCLES, KILL_SEED (replay a run),
# KILL_MIN_MS / KILL_MAX_MS (default 50 / 500).
# With PDELTAD_SHADOW_RATE set (e.g. 1) every server checks its deltas against the slow
# path (pd_shadow.h): the run then also fails on any mismatch logged or quarantined.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BINDIR=${BINDIR:-bin}
case $BINDIR in /*) ;; *) BINDIR=$ROOT/$BINDIR ;; esac
PDELTAD=$BINDIR/pdeltad
TESTDATA=$ROOT/tests/data  # the repository's fixtures (tests/data/README.md)
PY=/usr/bin/python3

[[ -x $PDELTAD ]] || { echo "test_kill9: $PDELTAD not built" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pdeltad-kill9.XXXXXX")
DRIVER_PID=

cleanup() {
	# The driver kills its server on every exit path; the pidfile (rewritten at each
	# start) covers the driver itself being killed.
	if [[ -n $DRIVER_PID ]]; then
		kill -KILL "$DRIVER_PID" 2>/dev/null || true
		wait "$DRIVER_PID" 2>/dev/null || true
	fi
	if [[ -s $WORK/server.pid ]]; then
		kill -KILL "$(cat "$WORK/server.pid")" 2>/dev/null || true
	fi
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

PORT=$(free_port)
bash "$ROOT/deploy/certs/gen-certs.sh" "$WORK/certs" >/dev/null
TOKEN=tok-kill9-$RANDOM$RANDOM
printf '%s\n' "$TOKEN" >"$WORK/token"
HASH=$(printf '%s\n' "$TOKEN" | "$PDELTAD" --hash-token)
printf 'tenant=kill9 role=agent token_sha256=%s\n' "$HASH" >"$WORK/tenants"
# db_sync stays at its default (yes): the test is about what the server promises as shipped.
cat >"$WORK/pdeltad.conf" <<EOF
listen = 127.0.0.1:$PORT
metrics_listen = off
tls_cert = $WORK/certs/server.pem
tls_key = $WORK/certs/server.key
tenants = $WORK/tenants
db = $WORK/state.db
workers = 2
log_level = warn
EOF

if [[ -n ${PDELTAD_SHADOW_RATE:-} ]]; then
	export PDELTAD_SHADOW_DIR=${PDELTAD_SHADOW_DIR:-$WORK/shadow}
fi
SEED_ARGS=()
[[ -n ${KILL_SEED:-} ]] && SEED_ARGS=(--seed "$KILL_SEED")
rc=0
"$PY" "$HERE/kill9_driver.py" --pdeltad "$PDELTAD" --config "$WORK/pdeltad.conf" --db "$WORK/state.db" \
	--port "$PORT" --ca "$WORK/certs/ca.pem" --token-file "$WORK/token" --testdata "$TESTDATA" \
	--log "$WORK/server.log" --pidfile "$WORK/server.pid" --cycles "${KILL_CYCLES:-20}" --min-ms "${KILL_MIN_MS:-50}" \
	--max-ms "${KILL_MAX_MS:-500}" "${SEED_ARGS[@]}" &
DRIVER_PID=$!
wait "$DRIVER_PID" || rc=$?
DRIVER_PID=
if ((rc != 0)) && [[ -f $WORK/server.log ]]; then
	echo "---- server log (tail) ----"
	tail -n 30 "$WORK/server.log"
fi
if [[ -n ${PDELTAD_SHADOW_RATE:-} ]]; then
	cases=$(find "$PDELTAD_SHADOW_DIR" -mindepth 1 -maxdepth 1 -name 'case-*' 2>/dev/null | wc -l)
	logged=$(grep -c "engine and slow path differ" "$WORK/server.log" 2>/dev/null || true)
	if ((cases > 0 || logged > 0)); then
		echo "FAIL shadow verification: $logged mismatches logged, $cases cases quarantined"
		grep "engine and slow path differ" "$WORK/server.log" | head -n 3
		rc=1
	else
		echo "ok   shadow_rate $PDELTAD_SHADOW_RATE: no mismatch logged or quarantined"
	fi
fi
exit "$rc"
