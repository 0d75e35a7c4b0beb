#!/usr/bin/env bash
# test_server_hostile.sh: pdeltad under hostile clients (tests/integration/srv_hostile.py).
#
# Server A accepts client certificates (mTLS optional) and runs with small limits and short
# deadlines. Each attack must get the right ERROR / close, be counted in /metrics, and leave
# the server serving a normal client. Server B requires client certificates. Then SIGHUP:
# a broken certificate keeps the old one; a tenants file without a token revokes it.
#
# Env: BINDIR (default bin).
set -euo pipefail

. "$(dirname "$0")/lib.sh"
PDELTAD=$BINDIR/pdeltad
pd_need "$PDELTAD"

pd_init server-hostile
PID_A=
PID_B=

stop_pid() { # stop_pid PID: ends a server this script started
	[[ -n $1 ]] || return 0
	kill -KILL "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
}

server_logs() {
	for f in "$WORK"/server-*.log; do
		[[ -f $f ]] || continue
		echo "---- $(basename "$f") (tail) ----"
		grep -v DEBUG "$f" | tail -n 30
	done
}
pd_at_exit 'stop_pid "$PID_A"; stop_pid "$PID_B"; ((FAIL == 0)) || server_logs'

wait_healthy() { # wait_healthy PID URL
	pd_wait_http "$2" "$1" && return 0
	bad "server did not start"
	return 1
}

# ---- setup ------------------------------------------------------------------------------------
pd_certs "$WORK/certs"
CA=$WORK/certs/ca.pem
cp "$WORK/certs/server.pem" "$WORK/server.pem" # the copy SIGHUP reloads (and the test breaks)
cp "$WORK/certs/server.key" "$WORK/server.key"
TOKEN_A=tok-a-$RANDOM$RANDOM
TOKEN_B=tok-b-$RANDOM$RANDOM
TOKEN_R=tok-r-$RANDOM$RANDOM
pd_tenants "$WORK/tenants" "acme:agent:$TOKEN_A" "beta:agent:$TOKEN_B" "acme:agent:$TOKEN_R"

PORT_A=$(free_port)
MPORT_A=$(free_port)
PORT_B=$(free_port)
MPORT_B=$(free_port)
METRICS_A=http://127.0.0.1:$MPORT_A/metrics
METRICS_B=http://127.0.0.1:$MPORT_B/metrics

"$PDELTAD" --listen "127.0.0.1:$PORT_A" --metrics_listen "127.0.0.1:$MPORT_A" \
	--tls_cert "$WORK/server.pem" --tls_key "$WORK/server.key" --tls_client_ca "$CA" \
	--tenants "$WORK/tenants" --db "$WORK/a.db" --db_sync no --workers 2 \
	--max_connections 16 --max_inflight 64 --max_frame 64k --max_input 1m \
	--handshake_timeout_ms 2000 --frame_timeout_ms 1500 --request_timeout_ms 1500 \
	--keepalive_ms 1000 --idle_timeout_ms 3000 --output_budget_bytes 64k --write_timeout_ms 2000 \
	--chunk_bytes 16k --drain_timeout_ms 5s >"$WORK/server-a.log" 2>&1 &
PID_A=$!
"$PDELTAD" --listen "127.0.0.1:$PORT_B" --metrics_listen "127.0.0.1:$MPORT_B" \
	--tls_cert "$WORK/certs/server.pem" --tls_key "$WORK/certs/server.key" --tls_client_ca "$CA" \
	--require_client_cert --tenants "$WORK/tenants" --db "$WORK/b.db" --db_sync no --workers 1 \
	>"$WORK/server-b.log" 2>&1 &
PID_B=$!
wait_healthy "$PID_A" "$METRICS_A"
wait_healthy "$PID_B" "$METRICS_B"

hostile() { # hostile ATTACK [ARG]: on server A, then a normal client must still be served
	local out
	out=$("$PY" "$HERE/srv_hostile.py" --port "$PORT_A" --ca "$CA" --token "$TOKEN_A" --token-b "$TOKEN_B" \
		--token-r "$TOKEN_R" --certs "$WORK/certs" --profiles "$TESTDATA/profiles/heap-small" \
		--metrics "$METRICS_A" --pid "$PID_A" --tenants "$WORK/tenants" --server-cert "$WORK/server.pem" \
		"$@" 2>&1) || true
	pd_tally "$out"
	out=$("$PY" "$HERE/srv_hostile.py" --port "$PORT_A" --ca "$CA" --token "$TOKEN_A" \
		--profiles "$TESTDATA/profiles/heap-small" normal 2>&1) || true
	pd_tally "$(echo "$out" | sed "s/^ok   normal/ok   after $1: normal/")"
}

on_b() { # on_b ATTACK [ARG]: on server B (client certificate required)
	local out
	out=$("$PY" "$HERE/srv_hostile.py" --port "$PORT_B" --ca "$CA" --token "$TOKEN_A" --certs "$WORK/certs" \
		--profiles "$TESTDATA/profiles/heap-small" "$@" 2>&1) || true
	pd_tally "$(echo "$out" | sed "s/^\(ok   \|FAIL \)/\1[mTLS required] /")"
}

metrics() { # metrics URL EXPR...
	pd_tally "$("$PY" "$HERE/srv_check.py" metrics "$@" 2>&1 || true)"
}

# ---- attacks on server A ------------------------------------------------------------------------
hostile normal
hostile badtoken
hostile isolation
hostile plaintcp
hostile badcert rogue
hostile badcert expired
hostile certonly agent-acme
hostile preauth-big
hostile postauth-big
hostile garbage
hostile slow-tls
hostile slow-hello
hostile maxconn 16
hostile inflight 64
hostile upload-limit
hostile request-timeout
hostile frame-timeout
hostile idle
hostile backpressure
hostile stuck

# ---- server B: client certificate required ----------------------------------------------------------
on_b badcert rogue
on_b badcert expired
on_b certonly agent-acme
on_b certonly admin
out=$("$PY" - "$PORT_B" "$CA" "$TOKEN_A" "$HERE" <<'EOF' 2>&1 || true
import sys
sys.path.insert(0, sys.argv[4])
import pdproto
try:
    pdproto.Client.connect("127.0.0.1", int(sys.argv[1]), sys.argv[2], token=sys.argv[3]).ping()
    print("FAIL [mTLS required] token without certificate accepted")
except Exception as e:  # noqa: BLE001
    print("ok   [mTLS required] token without certificate refused at TLS (%s)" % type(e).__name__)
EOF
)
echo "$out"
[[ $out == ok* ]] && PASS=$((PASS + 1)) || FAIL=$((FAIL + 1))
metrics "$METRICS_B" 'pdeltad_tls_handshakes_failed_total>=3' \
	'pdeltad_connection_closes_total{reason="tls_handshake"}>=3' \
	'pdeltad_connections_authenticated_total>=2'

# ---- reloads ----------------------------------------------------------------------------------------
hostile badreload
hostile revoke
kill -HUP "$PID_A" # the restored tenants file
sleep 0.3

# ---- everything was counted on server A -------------------------------------------------------------
metrics "$METRICS_A" \
	'pdeltad_auth_failures_total>=2' \
	'pdeltad_connection_closes_total{reason="auth"}>=2' \
	'pdeltad_connection_closes_total{reason="version"}>=1' \
	'pdeltad_request_errors_total{code="auth"}>=3' \
	'pdeltad_tls_handshakes_failed_total>=4' \
	'pdeltad_connection_closes_total{reason="tls_handshake"}>=4' \
	'pdeltad_connection_closes_total{reason="frame_too_large"}>=2' \
	'pdeltad_limit_hits_total{limit="max_frame_preauth"}>=1' \
	'pdeltad_limit_hits_total{limit="max_frame"}>=1' \
	'pdeltad_connection_closes_total{reason="protocol"}>=5' \
	'pdeltad_connection_closes_total{reason="handshake_timeout"}>=2' \
	'pdeltad_limit_hits_total{limit="handshake_timeout"}>=2' \
	'pdeltad_limit_hits_total{limit="max_connections"}>=1' \
	'pdeltad_connection_closes_total{reason="inflight"}>=1' \
	'pdeltad_limit_hits_total{limit="max_inflight"}>=1' \
	'pdeltad_limit_hits_total{limit="max_profile_bytes"}>=1' \
	'pdeltad_request_errors_total{code="limit"}>=1' \
	'pdeltad_limit_hits_total{limit="request_timeout"}>=1' \
	'pdeltad_request_errors_total{code="timeout"}>=1' \
	'pdeltad_connection_closes_total{reason="frame_timeout"}>=1' \
	'pdeltad_limit_hits_total{limit="frame_timeout"}>=1' \
	'pdeltad_connection_closes_total{reason="idle"}>=1' \
	'pdeltad_limit_hits_total{limit="idle_timeout"}>=1' \
	'pdeltad_limit_hits_total{limit="output_budget"}>=1' \
	'pdeltad_connection_closes_total{reason="output_stuck"}>=1' \
	'pdeltad_limit_hits_total{limit="write_timeout"}>=1' \
	'pdeltad_tls_reloads_total{result="failed"}==1' \
	'pdeltad_tls_reloads_total{result="ok"}==3' \
	'pdeltad_connection_closes_total{reason="revoked"}==1' \
	'pdeltad_connection_closes_total{reason="io_error"}==0'

# ---- both servers still alive, then a clean exit ---------------------------------------------------
for p in "$PID_A" "$PID_B"; do
	rc=0
	kill -0 "$p" 2>/dev/null && kill -TERM "$p" && wait "$p" || rc=$?
	[[ $rc == 0 ]] && ok "server $p survived and exits 0 on SIGTERM" || bad "server $p: exit status $rc"
done
PID_A=
PID_B=
if grep -q -E 'Sanitizer|runtime error' "$WORK"/server-*.log; then
	bad "sanitizer reports: $(grep -h -m3 -E 'Sanitizer|runtime error' "$WORK"/server-*.log)"
else
	ok "no sanitizer reports in the server logs"
fi

pd_finish
