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
#   - uploads refused by max_queued_bytes are counted under that limit's label;
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

# ---- max_queued_bytes ----
# 8 connections x 8 pipelined uploads of a 137 KB profile against a 1 MiB budget.
pd_start_server --max_queued_bytes 1m --log_level warn
busy=$("$PY" - "$PORT" "$CA" "$AGENT_TOKEN" "$TESTDATA/profiles/heap-medium/000.pb.gz" "$HERE" <<'EOF' || echo error
import os, sys, threading
sys.path.insert(0, sys.argv[5])
import pdproto
port, ca, token, path = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
data = open(path, "rb").read()
busy = []
def run(n):
    c = pdproto.Client.connect("127.0.0.1", port, ca, token)
    rids = set()
    for i in range(8):
        rid = c.new_id()
        c.send_delta("qb/%d-%d" % (n, i), 1, 1, data, rid)
        rids.add(rid)
    got = c.read_responses(rids)
    busy.append(sum(isinstance(g, pdproto.ProtoError) and g.detail_name == "OVERLOADED"
                    for g in got.values()))
    c.close()
ts = [threading.Thread(target=run, args=(n,)) for n in range(8)]
for t in ts:
    t.start()
for t in ts:
    t.join()
print(sum(busy) if len(busy) == 8 else "error")
EOF
)
n=$(pd_metric 'pdeltad_limit_hits_total{limit="max_queued_bytes"}')
q=$(pd_metric 'pdeltad_limit_hits_total{limit="max_queued_jobs"}')
[[ $busy =~ ^[0-9]+$ ]] && ((busy > 0)) && ok "uploads over max_queued_bytes refused ($busy)" || bad "OVERLOADED refusals: '$busy'"
[[ $n == "$busy" ]] && ok "counted as limit=\"max_queued_bytes\" ($n)" || bad "max_queued_bytes hits '$n', refusals '$busy'"
[[ $q == 0 ]] && ok "none counted as limit=\"max_queued_jobs\"" || bad "max_queued_jobs hits: '$q'"
pd_stop_server

# ---- --hash-token ----
err=$(printf 'tok-short-1234' | "$BINDIR/pdeltad" --hash-token 2>&1 >/dev/null)
grep -q 'warning: this token has at most [0-9]* bits' <<<"$err" && ok "--hash-token warns about a short token" || bad "--hash-token short: '$err'"
err=$(printf '%s' "$(openssl rand -base64 24)" | "$BINDIR/pdeltad" --hash-token 2>&1 >/dev/null)
[[ -z $err ]] && ok "--hash-token is quiet about a 192-bit token" || bad "--hash-token long: '$err'"
pd_finish
