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
#   - under `ulimit -n 64`, 100 held sockets and a /healthz request: a warning at start, both
#     listeners pause instead of spinning on accept() (the log stays small), /healthz answers
#     once the sockets close;
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

# ---- store_max_queue ----
# A write queue of one row: requests that find it full are refused busy and counted as
# limit="store_queue" (the store's own count must agree), not as max_queued_jobs.
pd_start_server --store_max_queue 1 --log_level error
printf '%s\n' "$AGENT_TOKEN" >"$WORK/token"
"$BUILDDIR/tests/tools/pd_load" --port "$PORT" --ca "$CA" --token-file "$WORK/token" \
	--seq "$TESTDATA/profiles/heap-small" --seq "$TESTDATA/profiles/mutex-small" \
	--connections 8 --streams 64 --seconds 3 --prefix sq >"$WORK/sq.out" 2>&1 || true
sq=$(pd_metric 'pdeltad_limit_hits_total{limit="store_queue"}')
sb=$(pd_metric 'pdeltad_store_busy_rejects_total')
qj=$(pd_metric 'pdeltad_limit_hits_total{limit="max_queued_jobs"}')
((${sq:-0} > 0)) && [[ $sq == "$sb" ]] && ok "store queue full: counted as limit=\"store_queue\" ($sq, the store's busy rejects $sb)" ||
	bad "store queue refusals: limit store_queue '$sq', store busy rejects '$sb'"
[[ $qj == 0 ]] && ok "none of them counted as max_queued_jobs" || bad "max_queued_jobs hits: '$qj'"
pd_stop_server

# ---- file descriptors exhausted ----
# Under `ulimit -n 64`: the start warns that max_connections does not fit; 100 held sockets
# use up the descriptors, a /healthz request waits meanwhile: both listeners pause (a line a
# second each) instead of spinning on accept(), and /healthz answers once the sockets close.
# start_limited ULIMIT_FLAGS LOG [PDELTAD FLAGS]: pdeltad under that open files limit
start_limited() {
	local lim=$1 log=$2
	shift 2
	(
		ulimit "$lim" 64
		exec "$BINDIR/pdeltad" --listen "127.0.0.1:$PORT" --metrics_listen "127.0.0.1:$MPORT" \
			--tls_cert "$WORK/certs/server.pem" --tls_key "$WORK/certs/server.key" \
			--tenants "$WORK/tenants" --db "$WORK/fd.db" "$@" >"$log" 2>&1
	) &
	SERVER_PID=$!
}
start_limited -n "$WORK/fd.log" --workers 2
pd_wait_http "http://127.0.0.1:$MPORT/healthz" "$SERVER_PID" || bad "pdeltad under ulimit -n 64 did not come up: $(tail -n 3 "$WORK/fd.log")"
grep -q 'max_connections 1024 .* exceed the open files limit 64' "$WORK/fd.log" &&
	ok "the start warns: $(grep -o 'max_connections 1024 .*hard limit 64)' "$WORK/fd.log")" || bad "no warning about the open files limit at start"
out=$("$PY" - "$PORT" "$MPORT" <<'EOF' 2>&1 || true
import socket, subprocess, sys, time
port, mport = int(sys.argv[1]), int(sys.argv[2])
held = [socket.create_connection(("127.0.0.1", port)) for _ in range(100)]
curl = subprocess.Popen(["curl", "-sS", "-m", "4", "http://127.0.0.1:%d/healthz" % mport],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
time.sleep(4)
curl.wait()
for s in held:
    s.close()
print("held", len(held))
EOF
)
lines=$(wc -l <"$WORK/fd.log")
pauses=$(grep -c 'metrics_listen: accept: .*pausing the listener' "$WORK/fd.log" || true)
[[ $out == "held 100" ]] || bad "holding 100 sockets: $out"
((lines < 200)) && ok "descriptors exhausted for 4 s: $lines log lines" || bad "descriptors exhausted for 4 s: $lines log lines ($(sort "$WORK/fd.log" | uniq -c | sort -rn | head -n 1))"
((pauses >= 1)) && ok "the metrics listener pauses ($pauses times)" || bad "the metrics listener never paused"
pd_wait_http "http://127.0.0.1:$MPORT/healthz" "$SERVER_PID" && ok "/healthz answers once the sockets are closed" ||
	bad "/healthz does not answer after the sockets closed"
pd_stop_server
# a soft limit below what max_connections needs is raised towards the hard one
start_limited -Sn "$WORK/fd2.log" --max_connections 100
pd_wait_http "http://127.0.0.1:$MPORT/healthz" "$SERVER_PID" || bad "pdeltad under ulimit -Sn 64 did not come up"
n=$(grep -c 'exceed the open files limit' "$WORK/fd2.log" || true)
grep -q 'open files limit raised from 64 to 180' "$WORK/fd2.log" && ((n == 0)) && ok "soft limit 64 raised for max_connections 100 (to 180), no warning" ||
	bad "soft limit not raised: $(grep -i 'open files' "$WORK/fd2.log")"
pd_stop_server

# ---- --hash-token ----
err=$(printf 'tok-short-1234' | "$BINDIR/pdeltad" --hash-token 2>&1 >/dev/null)
grep -q 'warning: this token has at most [0-9]* bits' <<<"$err" && ok "--hash-token warns about a short token" || bad "--hash-token short: '$err'"
err=$(printf '%s' "$(openssl rand -base64 24)" | "$BINDIR/pdeltad" --hash-token 2>&1 >/dev/null)
[[ -z $err ]] && ok "--hash-token is quiet about a 192-bit token" || bad "--hash-token long: '$err'"
pd_finish
