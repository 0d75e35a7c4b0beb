#!/usr/bin/env bash
# test_server_basic.sh: the real pdeltad over TLS, judged by the independent client
# (pdproto.py) and the oracle (tests/oracle/oracle.py).
#
#   - --help lists every setting (with dashes); flags take dashes and underscores; bad or
#     unknown settings (`--bogus` alone too) exit 2; a listen address without a port is
#     refused; --hash-token
#   - a tenants file without credentials is refused (--check, start, SIGHUP: the old ones
#     stay, refusal logged and counted) unless it says `allow_empty = true`
#   - every profile of heap/block/mutex/goroutine-small and heap-medium through the server:
#     statuses and outputs equal the oracle's (token auth and client-certificate auth)
#   - retry of the last request: DUPLICATE, byte-identical; stale / conflicting seq refused
#   - SIGTERM then restart on the same database between two profiles of a stream: the next
#     response is a DELTA that matches the oracle; the server exits 0
#   - /metrics and /healthz answer and count what happened; /metrics parses as Prometheus
#     text and (Accept: application/openmetrics-text) as OpenMetrics (metrics_check.py),
#     with pdeltad_build_info, process_* and per-tenant series
#   - SIGTERM with an upload open: GOODBYE, 503, the open request still answered, exit 0
#
# Env: BINDIR (default bin).
set -euo pipefail

. "$(dirname "$0")/lib.sh"
PDELTAD=$BINDIR/pdeltad
CHECK=$HERE/srv_check.py
pd_need "$PDELTAD"

pd_init server-basic
PD_LOG_TAIL=40

# Runs a srv_check.py command and adds its "N passed, N failed" to ours.
pycheck() {
	local out rc=0
	out=$("$PY" "$CHECK" "$@" 2>&1) || rc=$?
	pd_tally "$out" "srv_check.py $* (exit $rc)"
}

METRICS=http://127.0.0.1:$MPORT/metrics
HEALTHZ=http://127.0.0.1:$MPORT/healthz

# ---- setup: certificates, tokens, config ------------------------------------------------
pd_certs "$WORK/certs"
CA=$WORK/certs/ca.pem
TOKEN=tok-acme-$RANDOM$RANDOM
HASH=$(printf '%s\n' "$TOKEN" | "$PDELTAD" --hash-token)
WANT=$(printf '%s' "$TOKEN" | sha256sum | cut -d' ' -f1)
[[ $HASH == "$WANT" ]] && ok "--hash-token prints the SHA-256 of the token" || bad "--hash-token: $HASH != $WANT"
cat >"$WORK/tenants" <<EOF
# tenants of the basic test
tenant=acme role=agent token_sha256=$HASH
tenant=acme role=agent cert_cn=agent-acme
tenant=acme role=admin cert_cn=admin
EOF
pd_conf "127.0.0.1:$MPORT" "$WORK/state.db" >"$WORK/pdeltad.conf"
cat >>"$WORK/pdeltad.conf" <<EOF
tls_client_ca = $CA
workers = 2
drain_timeout_ms = 10s
db_sync = no   # the crash tests cover durability; this one wants speed
EOF
TOKCONN=(--port "$PORT" --ca "$CA" --token "$TOKEN")
CERTCONN=(--port "$PORT" --ca "$CA" --cert "$WORK/certs/agent-acme.pem" --key "$WORK/certs/agent-acme.key")

# ---- command line ------------------------------------------------------------------------
HELP=$("$PDELTAD" --help)
missing=()
for s in listen metrics_listen tls_cert tls_key tls_client_ca require_client_cert tenants db workers \
	cache_bytes stream_ttl max_connections max_inflight max_frame max_frame_preauth \
	handshake_timeout_ms frame_timeout_ms idle_timeout_ms keepalive_ms output_budget_bytes \
	drain_timeout_ms chunk_bytes gzip_level log_level max_input max_inflated max_samples max_depth; do
	grep -q -- "--${s//_/-} " <<<"$HELP" || missing+=("$s")
done
((${#missing[@]} == 0)) && ok "--help lists every setting, spelled with dashes" || bad "--help misses: ${missing[*]}"
grep -Eq -- '^  --[a-z-]*_' <<<"$HELP" && bad "--help spells a flag with an underscore" ||
	ok "--help spells no flag with an underscore"
grep -q '\[127.0.0.1:7433\]' <<<"$HELP" && ok "--help shows defaults" || bad "--help shows no defaults"
rc=0
"$PDELTAD" --config "$WORK/pdeltad.conf" --no_such_setting 1 2>"$WORK/err" || rc=$?
[[ $rc == 2 ]] && grep -q no_such_setting "$WORK/err" && ok "unknown setting: exit 2 with its name" ||
	bad "unknown setting: exit $rc: $(cat "$WORK/err")"
rc=0
"$PDELTAD" --config "$WORK/pdeltad.conf" --max_frame=1k 2>"$WORK/err" || rc=$?
[[ $rc == 2 ]] && grep -q max_frame "$WORK/err" && ok "bad value: exit 2" || bad "bad value: exit $rc"
rc=0
"$PDELTAD" --config "$WORK/pdeltad.conf" --bogus 2>"$WORK/err" || rc=$?
[[ $rc == 2 ]] && grep -q "unknown setting 'bogus'" "$WORK/err" && ok "--bogus alone: unknown setting 'bogus', exit 2" ||
	bad "--bogus: exit $rc: $(cat "$WORK/err")"
# both spellings of a flag (dashes documented, underscores kept for existing deploys)
out=$("$PDELTAD" --config "$WORK/pdeltad.conf" --metrics-listen "127.0.0.1:$MPORT" --tls-cert "$WORK/certs/server.pem" \
	--max-input=1m --check 2>&1) && out2=$("$PDELTAD" --config "$WORK/pdeltad.conf" --metrics_listen "127.0.0.1:$MPORT" \
	--tls_cert "$WORK/certs/server.pem" --max_input=1m --check 2>&1) && ok "flags accept dashes and underscores" ||
	bad "flag spellings: $out ${out2:-}"
# a listen address without a port would bind a random port
for a in "--listen 127.0.0.1" "--metrics-listen 127.0.0.1" "--listen [::1]" "--listen ::1" "--listen 127.0.0.1:0" \
	"--metrics_listen 127.0.0.1:" "--listen=127.0.0.1:70000"; do
	rc=0
	# shellcheck disable=SC2086
	"$PDELTAD" --config "$WORK/pdeltad.conf" $a --check >/dev/null 2>"$WORK/err" || rc=$?
	[[ $rc == 2 ]] && grep -Eq "listen: .*(no port|port must be)" "$WORK/err" && ok "$a: refused, exit 2" ||
		bad "$a: exit $rc: $(cat "$WORK/err")"
done
out=$("$PDELTAD" --config "$WORK/pdeltad.conf" --listen "[::1]:$PORT" --metrics-listen off --check 2>&1) &&
	ok "[::1]:port and metrics off pass --check" || bad "[::1]:port: $out"
# a tenants file without credentials locks everyone out: refused unless it says allow_empty
printf '# nothing here\n' >"$WORK/empty-tenants"
rc=0
"$PDELTAD" --config "$WORK/pdeltad.conf" --tenants "$WORK/empty-tenants" --check >/dev/null 2>"$WORK/err" || rc=$?
[[ $rc == 2 ]] && grep -q "no credentials" "$WORK/err" && ok "--check: empty tenants file refused" ||
	bad "--check empty tenants: exit $rc: $(cat "$WORK/err")"
rc=0
timeout 20 "$PDELTAD" --config "$WORK/pdeltad.conf" --tenants "$WORK/empty-tenants" >/dev/null 2>"$WORK/err" || rc=$?
[[ $rc == 1 ]] && grep -q "no credentials" "$WORK/err" && ok "start with an empty tenants file: refused, exit 1" ||
	bad "start with empty tenants: exit $rc: $(cat "$WORK/err")"
printf '# no clients on purpose\nallow_empty = true\n' >"$WORK/allowed-empty"
out=$("$PDELTAD" --config "$WORK/pdeltad.conf" --tenants "$WORK/allowed-empty" --check 2>&1) &&
	grep -q "0 credentials" <<<"$out" && ok "allow_empty = true: an empty tenants file is accepted" ||
	bad "allow_empty: $out"
printf 'allow_empty = maybe\n' >"$WORK/bad-empty"
rc=0
"$PDELTAD" --config "$WORK/pdeltad.conf" --tenants "$WORK/bad-empty" --check >/dev/null 2>"$WORK/err" || rc=$?
[[ $rc == 2 ]] && grep -q "bad-empty:1" "$WORK/err" && ok "allow_empty = maybe: refused naming file:line" ||
	bad "allow_empty = maybe: exit $rc: $(cat "$WORK/err")"
# SIGHUP with an emptied tenants file: refused, the old credentials stay, counted in /metrics
cp "$WORK/tenants" "$WORK/hup-tenants"
"$PDELTAD" --config "$WORK/pdeltad.conf" --tenants "$WORK/hup-tenants" --db "$WORK/hup.db" >"$WORK/hup.log" 2>&1 &
SERVER_PID=$!
pd_wait_http "$HEALTHZ" "$SERVER_PID" || true
: >"$WORK/hup-tenants"
kill -HUP "$SERVER_PID"
sleep 0.5
pycheck metrics "$METRICS" 'pdeltad_tenants_refused_empty_total==1' 'pdeltad_tls_reloads_total{result="failed"}==1' \
	'pdeltad_credentials==3'
pycheck "${TOKCONN[@]}" seq --stream hup/heap --to 1 "$TESTDATA/profiles/heap-small"/*.pb.gz
grep -q "reload failed.*no credentials" "$WORK/hup.log" && ok "SIGHUP with an empty tenants file: refusal logged" ||
	bad "SIGHUP empty tenants: not logged: $(tail -3 "$WORK/hup.log")"
printf 'allow_empty = true\n' >"$WORK/hup-tenants"
kill -HUP "$SERVER_PID"
sleep 0.5
pycheck metrics "$METRICS" 'pdeltad_tls_reloads_total{result="ok"}==1' 'pdeltad_credentials==0'
kill -TERM "$SERVER_PID"
wait "$SERVER_PID" || true
SERVER_PID=

printf 'listen 127.0.0.1:1\n' >"$WORK/bad.conf"
rc=0
"$PDELTAD" --config "$WORK/bad.conf" 2>"$WORK/err" || rc=$?
[[ $rc == 2 ]] && grep -q 'bad.conf:1' "$WORK/err" && ok "bad config line: exit 2 naming file:line" ||
	bad "bad config line: exit $rc: $(cat "$WORK/err")"

out=$("$PDELTAD" --config "$ROOT/deploy/pdeltad.conf.example" --tls_cert "$WORK/certs/server.pem" \
	--tls_key "$WORK/certs/server.key" --tenants "$ROOT/deploy/tenants.example" --check 2>&1) &&
	ok "deploy/pdeltad.conf.example and tenants.example pass --check" || bad "examples: $out"

# ---- server lifecycle ------------------------------------------------------------------------
start_server() {
	"$PDELTAD" --config "$WORK/pdeltad.conf" "$@" >>"$WORK/server.log" 2>&1 &
	SERVER_PID=$!
	pd_wait_http "$HEALTHZ" "$SERVER_PID" && return 0
	bad "server did not start"
	return 1
}

stop_server() { # stop_server: SIGTERM, expect exit 0
	local rc=0
	kill -TERM "$SERVER_PID"
	wait "$SERVER_PID" || rc=$?
	SERVER_PID=
	[[ $rc == 0 ]] && ok "SIGTERM: server exits 0" || bad "SIGTERM: server exit status $rc"
}

start_server
pycheck healthz "$HEALTHZ" 200

# ---- every profile through the server, judged by the oracle -----------------------------------
NFILES=0
for s in heap-small block-small mutex-small goroutine-small heap-medium; do
	files=("$TESTDATA/profiles/$s"/*.pb.gz)
	NFILES=$((NFILES + ${#files[@]}))
	conn=("${TOKCONN[@]}")
	[[ $s == block-small ]] && conn=("${CERTCONN[@]}") # one sequence over client-cert auth
	pycheck "${conn[@]}" seq --stream "seq/$s" "${files[@]}"
done

# ---- retries and sequence rules ----------------------------------------------------------------
pycheck "${TOKCONN[@]}" dup --stream dup/heap "$TESTDATA/profiles/heap-small/000.pb.gz" \
	"$TESTDATA/profiles/heap-small/001.pb.gz"

# ---- metrics before the restart (the counters are per process) ----------------------------------
pycheck metrics "$METRICS" \
	"pdeltad_connections_total>=7" \
	"pdeltad_connections_authenticated_total>=7" \
	"pdeltad_requests_total{status=\"delta\"}>=$((NFILES - 10))" \
	"pdeltad_requests_total{status=\"baseline\"}>=5" \
	"pdeltad_requests_total{status=\"duplicate\"}==4" \
	"pdeltad_request_errors_total{code=\"sequence\"}==3" \
	"pdeltad_request_errors_total{code=\"malformed\"}==3" \
	"pdeltad_service_requests_total{status=\"delta\"}>=$((NFILES - 10))" \
	"pdeltad_request_duration_seconds_count{phase=\"total\"}>=$NFILES" \
	"pdeltad_store_commits_total>=1" \
	"pdeltad_streams_cached>=6" \
	"pdeltad_received_bytes_total>1000000" \
	"pdeltad_connection_closes_total{reason=\"client_goodbye\"}>=6" \
	"pdeltad_open_connections==0" \
	"pdeltad_draining==0"

# Both exposition formats parse (OpenMetrics too: no clashing names, # EOF), build info,
# process_* metrics, and the per-tenant series of the one tenant.
metrics_out=$("$PY" "$HERE/metrics_check.py" "$METRICS" --tenant acme --max-tenants 100 \
	--version "$("$PDELTAD" --version | cut -d' ' -f2)" 2>&1) && rc=0 || rc=$?
echo "$metrics_out" | grep -v 'passed,'
[[ $rc == 0 ]] && ok "metrics_check.py: $(tail -n1 <<<"$metrics_out")" || bad "metrics_check.py: $(tail -n1 <<<"$metrics_out")"

# ---- restart between two profiles of a stream ------------------------------------------------------
HEAP=("$TESTDATA/profiles/heap-small"/*.pb.gz)
pycheck "${TOKCONN[@]}" seq --stream restart/heap --to 4 "${HEAP[@]}"
stop_server
start_server
pycheck "${TOKCONN[@]}" seq --stream restart/heap --from 4 --to 5 "${HEAP[@]}"
pycheck metrics "$METRICS" "pdeltad_requests_total{status=\"delta\"}==1" \
	"pdeltad_requests_total{status=\"baseline\"}==0"
pycheck "${TOKCONN[@]}" seq --stream restart/heap --from 5 "${HEAP[@]}"

# ---- drain with an open request ------------------------------------------------------------------------
pycheck "${TOKCONN[@]}" drain --pid "$SERVER_PID" --metrics "$METRICS" "$TESTDATA/profiles/heap-small/000.pb.gz"
rc=0
wait "$SERVER_PID" || rc=$?
SERVER_PID=
[[ $rc == 0 ]] && ok "drain: server exits 0" || bad "drain: server exit status $rc"
if grep -q -E 'closed \(io_error\)| ERROR |Sanitizer|runtime error' "$WORK/server.log"; then
	bad "server log has errors: $(grep -m3 -E 'io_error| ERROR |Sanitizer|runtime error' "$WORK/server.log")"
else
	ok "server log has no errors or sanitizer reports"
fi

pd_finish
