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

. "$(dirname "$0")/lib.sh"
PDELTAD=$BINDIR/pdeltad
pd_need "$PDELTAD"

pd_init kill9
DRIVER_PID=
# The driver kills its server on every exit path; the pidfile (rewritten at each start)
# covers the driver itself being killed.
pd_at_exit 'if [[ -n $DRIVER_PID ]]; then kill -KILL "$DRIVER_PID" 2>/dev/null; wait "$DRIVER_PID" 2>/dev/null; fi'
pd_at_exit '[[ ! -s $WORK/server.pid ]] || kill -KILL "$(cat "$WORK/server.pid")" 2>/dev/null'
trap 'exit 130' INT TERM

pd_certs "$WORK/certs"
TOKEN=tok-kill9-$RANDOM$RANDOM
printf '%s\n' "$TOKEN" >"$WORK/token"
printf 'tenant=kill9 role=agent token_sha256=%s\n' "$(pd_hash "$TOKEN")" >"$WORK/tenants"
# db_sync stays at its default (yes): the test is about what the server promises as shipped.
pd_conf off "$WORK/state.db" >"$WORK/pdeltad.conf"
cat >>"$WORK/pdeltad.conf" <<EOF
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
