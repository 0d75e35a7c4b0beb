#!/usr/bin/env bash
# test_server_flood.sh: unauthenticated clients cannot take the service (tests/integration/srv_flood.py).
#
#   - 2,000 TCP sockets that never start TLS, from 40 loopback addresses, against
#     max_connections 512: a legitimate client still connects and authenticates, ten times,
#     each within 2 s, also while the held sockets are reopened as fast as the server closes
#     them; the caps are counted in /metrics;
#   - 8 threads guessing tokens from one address: the failures are delayed, then the address
#     is blocked (a valid token from it is refused, from 127.0.0.2 accepted); fewer than 10
#     failed authentications a second are checked, none in the second half of the run;
#   - pdeltad --hash-token warns about a token under 128 bits.
# The figures (connect+HELLO ms, failed authentications checked per second) are printed.
#
# Env: BINDIR (default bin).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
pd_init flood
pd_pki
ulimit -n 8192 2>/dev/null || ulimit -n "$(ulimit -Hn)"

tally() { # tally OUTPUT: counts the helper's ok/FAIL lines as ours
	echo "$1"
	PASS=$((PASS + $(grep -c '^ok ' <<<"$1" || true)))
	FAIL=$((FAIL + $(grep -c '^FAIL ' <<<"$1" || true)))
	grep -qE '^[0-9]+ passed, [0-9]+ failed$' <<<"$1" || bad "helper printed no summary"
}

# ---- idle sockets ----
pd_start_server --max_connections 512 --log_level warn
out=$("$PY" "$ROOT/tests/integration/srv_flood.py" idle --port "$PORT" --ca "$CA" --token "$AGENT_TOKEN" \
	--sockets 2000 --sources 40 --bound 2 2>&1 || true)
tally "$out"
n=$(pd_metric 'pdeltad_limit_hits_total{limit="max_unauth_connections"}')
((${n:-0} > 1000)) && ok "max_unauth_connections hits counted ($n)" || bad "max_unauth_connections hits: '$n'"
n=$(pd_metric 'pdeltad_connection_closes_total{reason="unauth_evicted"}')
((${n:-0} > 1000)) && ok "evictions counted ($n)" || bad "unauth_evicted closes: '$n'"
(($(grep -c 'unauthenticated' "$WORK/server.log" || true) < 50)) && ok "evictions do not flood the log" ||
	bad "log lines about evictions: $(grep -c unauthenticated "$WORK/server.log")"
pd_stop_server

# ---- token guessing ----
pd_start_server --auth_fail_delay_max_ms 1s --auth_fail_block_after 10
out=$("$PY" "$ROOT/tests/integration/srv_flood.py" brute --port "$PORT" --ca "$CA" --token "$AGENT_TOKEN" \
	--threads 8 --seconds 6 --max-rate 10 2>&1 || true)
tally "$out"
[[ $(pd_metric pdeltad_auth_blocks_total) == 1 ]] && ok "pdeltad_auth_blocks_total = 1" || bad "auth blocks: $(pd_metric pdeltad_auth_blocks_total)"
n=$(pd_metric pdeltad_auth_failures_delayed_total)
((${n:-0} >= 5)) && ok "delayed failures counted ($n)" || bad "pdeltad_auth_failures_delayed_total = '$n'"
n=$(pd_metric 'pdeltad_limit_hits_total{limit="auth_blocked"}')
((${n:-0} >= 1)) && ok "HELLOs of the blocked address counted ($n)" || bad "auth_blocked hits: '$n'"
grep -q 'blocked for' "$WORK/server.log" && ok "the block is logged" || bad "no block in the log"
(($(grep -c 'closed (auth)' "$WORK/server.log" || true) <= 10 * 8)) && ok "auth failures are logged rate-limited" ||
	bad "auth failure lines: $(grep -c 'closed (auth)' "$WORK/server.log")"
pd_stop_server

# ---- --hash-token ----
err=$(printf 'tok-short-1234' | "$BINDIR/pdeltad" --hash-token 2>&1 >/dev/null)
grep -q 'warning: this token has at most [0-9]* bits' <<<"$err" && ok "--hash-token warns about a short token" || bad "--hash-token short: '$err'"
err=$(printf '%s' "$(openssl rand -base64 24)" | "$BINDIR/pdeltad" --hash-token 2>&1 >/dev/null)
[[ -z $err ]] && ok "--hash-token is quiet about a 192-bit token" || bad "--hash-token long: '$err'"
pd_finish
