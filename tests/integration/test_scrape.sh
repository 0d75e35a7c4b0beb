#!/usr/bin/env bash
# test_scrape.sh: `pdelta scrape` end to end against live Go services (tests/workload,
# several instances on loopback ports) and a real pdeltad over TLS. Every delivery tree
# (--out-dir deltas next to --save-input inputs) is judged by the oracle
# (tests/oracle/check_tree.py: each delta equal to the oracle's for its interval, no negative
# value, no interval missing or counted twice):
#   1. through pdeltad and 2. in process (--local);
#   3. a target killed and restarted in the middle: one BASELINE reset, no negative value;
#   4. pdeltad and the agent both SIGKILLed in the middle and restarted (state file);
#   5. a targets-file edit adds and removes targets without a restart;
#   6. --push to a local Pyroscope-style receiver that is down for a while: every delta
#      arrives, in order, byte-identical, with labels and __delta__=false; a full spool drops
#      the oldest (counted), a 4xx is dropped for good (counted);
#      the agent's /metrics parses (Prometheus text) and counts what happened;
#   7. per-target bearer/basic auth and body cap;
#   9. an https target: its CA (ca=) is used; a wrong CA fails clearly and is counted;
#  10. under overload (more due than workers) every target gets its turn (oldest due first);
#      a target edited while its scrape is in flight never sends one seq twice;
#  11. target churn: removed targets' streams are freed, their state entries dropped after
#      --state-grace;
#  12. a targets-file reload with a bad label keeps the previous targets;
#  13. a second agent on the same --state exits 2 (STATE.lock);
#  14. --fallback-local: pdeltad stopped mid-run (local deltas), back (the streams return);
#  15. pdeltad restarted (the resent delta is pushed with its own from/until) and restored from
#      an older backup (BASELINE state-lost, no negative value);
#  16. --once/--count exit 1 with a summary when a scrape, a delta request or a push failed;
#  17. after a restart a delta is pushed from the scrape kept in the state file (scraped=);
#   8. bad options and targets are refused with a clear message (labels too).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
pd_init scrape
pd_pki

WL=$ROOT/${BUILD:-build/release}/pdelta-workload
bash "$ROOT/tests/workload/build.sh" "$WL" >/dev/null
PDELTA=$BINDIR/pdelta
CHECK=("$PY" "$ROOT/tests/oracle/check_tree.py")
WL_PIDS=()
AGENT_PID=
RECV_PID=
AUTH_PID=
FIX_PID=

cleanup_scrape() {
	for p in "${WL_PIDS[@]}" $AGENT_PID $RECV_PID $AUTH_PID $FIX_PID; do kill -KILL "$p" 2>/dev/null || true; done
	pd_cleanup
}
trap cleanup_scrape EXIT

# start_workload NAME [LISTEN]: a Go service; its address in $WORK/NAME.addr
start_workload() {
	local name=$1 listen=${2:-127.0.0.1:0}
	rm -f "$WORK/$name.addr"
	# the seed is the name's: a restarted target runs the same code paths, as a real one does
	"$WL" serve -listen "$listen" -addr-file "$WORK/$name.addr" -size small -seed "$(cksum <<<"$name" | cut -c1-6)" \
		>>"$WORK/$name.log" 2>&1 &
	WL_PIDS+=($!)
	eval "WLPID_$name=$!"
	for _ in $(seq 100); do [[ -s $WORK/$name.addr ]] && return 0; sleep 0.05; done
	echo "workload $name did not come up" >&2
	return 1
}
addr() { cat "$WORK/$1.addr"; }

judge() { # judge WHAT IN OUT [check_tree options]
	local what=$1 in=$2 out=$3
	shift 3
	if "${CHECK[@]}" "$@" "$in" "$out" >"$WORK/judge.out" 2>&1; then
		ok "$what: $(tail -n 1 "$WORK/judge.out")"
	else
		bad "$what: $(tail -n 1 "$WORK/judge.out")"
		head -n 30 "$WORK/judge.out"
	fi
}

start_workload w1
start_workload w2
start_workload w3
pd_start_server --workers 2
SRV=(--server "127.0.0.1:$PORT" --ca "$CA" --token-file "$WORK/agent.token")
# Each part below has its own stream names on the server (--stream-prefix tN/).
printf '%s\n' "$AGENT_TOKEN" >"$WORK/agent.token"

# --- 1. through pdeltad ----------------------------------------------------------------------
T1=$WORK/t1
"$PDELTA" scrape "${SRV[@]}" --stream-prefix t1/ --target "w1=http://$(addr w1)" --target "w2=http://$(addr w2)" \
	--types heap,allocs,mutex,block,goroutine --interval 400ms --count 5 --state "$T1/state" \
	--out-dir "$T1/out" --save-input "$T1/in" >"$T1.log" 2>"$T1.err" || bad "scrape via pdeltad exited $?"
n=$(grep -c ' seq=' "$T1.log" || true)
[[ $n -eq 50 ]] && ok "via pdeltad: 50 deliveries logged (2 targets x 5 types x 5 rounds)" ||
	bad "via pdeltad: $n deliveries logged, expected 50: $(head -n 3 "$T1.err")"
grep -q '^.* w1 heap seq=5 DELTA' "$T1.log" && ok "via pdeltad: round 5 is a DELTA" || bad "via pdeltad: no DELTA at seq 5"
judge "via pdeltad, oracle" "$T1/in" "$T1/out" --min-files 5

# A second run with the same state continues the streams (DELTA, not BASELINE), numbering on.
"$PDELTA" scrape "${SRV[@]}" --stream-prefix t1/ --target "w1=http://$(addr w1)" --types heap --once --state "$T1/state" \
	--out-dir "$T1/out" --save-input "$T1/in" >"$T1.once.log" 2>&1 || true
grep -q ' w1 heap seq=6 DELTA' "$T1.once.log" && ok "--once with --state continues the stream (seq 6 DELTA)" ||
	bad "--once with --state: $(cat "$T1.once.log")"
[[ -f $T1/out/w1/heap/005.pb.gz ]] && ok "--once wrote out/w1/heap/005.pb.gz" || bad "--once: no 005.pb.gz"

# --- 2. in process --------------------------------------------------------------------------
T2=$WORK/t2
"$PDELTA" scrape --local --target "w2=http://$(addr w2)" --target "w3=http://$(addr w3)" \
	--types heap,mutex,block,goroutine --interval 300ms --count 4 --out-dir "$T2/out" --save-input "$T2/in" \
	--keep 0 >"$T2.log" 2>"$T2.err" || bad "scrape --local exited $?"
judge "--local, oracle" "$T2/in" "$T2/out" --min-files 4

# --- 3. a target restarts in the middle --------------------------------------------------------
T3=$WORK/t3
w3addr=$(addr w3)
"$PDELTA" scrape "${SRV[@]}" --stream-prefix t3/ --target "w3=http://$w3addr" --types heap,mutex,block --interval 400ms --count 8 \
	--state "$T3/state" --out-dir "$T3/out" --save-input "$T3/in" >"$T3.log" 2>"$T3.err" &
AGENT_PID=$!
for _ in $(seq 100); do [[ -f $T3/out/w3/heap/002.pb.gz ]] && break; sleep 0.1; done
kill -KILL "$WLPID_w3"
wait "$WLPID_w3" 2>/dev/null || true
sleep 0.5
start_workload w3 "$w3addr"
wait "$AGENT_PID" || true
AGENT_PID=
grep -q 'scrape failed' "$T3.err" && ok "target down: the failed scrape is logged" ||
	echo "info: no round fell into the target's downtime"
# heap always shows the restart (its counters go back). A restarted process's mutex and block
# profiles may hold no sample of the old one yet within the remaining rounds (contention takes
# its time): then nothing went back in the inputs, and the oracle's own count is 0.
judge "target restarted, oracle (one BASELINE reset for heap, at most one for mutex/block)" "$T3/in" "$T3/out" \
	--expect-resets w3/heap=1 --expect-resets w3/mutex=0..1 --expect-resets w3/block=0..1
grep -q 'w3 heap seq=[0-9]* BASELINE reset' "$T3.log" && ok "target restarted: pdeltad answered BASELINE reset" ||
	bad "target restarted: no BASELINE reset in the log"

# --- 4. pdeltad and the agent killed with SIGKILL, both restarted --------------------------
T4=$WORK/t4
agent4() {
	"$PDELTA" scrape "${SRV[@]}" --stream-prefix t4/ --target "w1=http://$(addr w1)" --target "w2=http://$(addr w2)" \
		--types heap,mutex,block --interval 250ms --count "$1" --state "$T4/state" \
		--out-dir "$T4/out" --save-input "$T4/in" >>"$T4.log" 2>>"$T4.err" &
	AGENT_PID=$!
}
agent4 12
sleep 1.2
# pdeltad dies; while the agent retries its uploads (pending files written), it dies too
pd_stop_server KILL
sleep 0.6
kill -KILL "$AGENT_PID"
wait "$AGENT_PID" 2>/dev/null || true
pending=$(ls "$T4/state.pending" | wc -l)
pd_start_server --workers 2
agent4 6
wait "$AGENT_PID" || bad "agent after SIGKILL exited $?"
AGENT_PID=
judge "pdeltad and agent SIGKILLed, oracle over the whole tree" "$T4/in" "$T4/out" --min-files 6
echo "info: $pending pending upload(s) after the agent's SIGKILL; $(grep -c ' resent' "$T4.log" || true) resent, $(grep -c ' DUPLICATE' "$T4.log" || true) DUPLICATE"
[[ $(ls "$T4/state.pending" | wc -l) -eq 0 ]] && ok "no pending upload left after the restarted agent finished" ||
	bad "pending uploads left: $(ls "$T4/state.pending")"

# --- 5. targets file edited while running --------------------------------------------------------
T5=$WORK/t5
mkdir -p "$T5"
echo "w1 http://$(addr w1) label.env=test" >"$T5/targets"
"$PDELTA" scrape "${SRV[@]}" --stream-prefix t5/ --targets "$T5/targets" --types heap --interval 250ms --state "$T5/state" \
	--out-dir "$T5/out" >"$T5.log" 2>"$T5.err" &
AGENT_PID=$!
for _ in $(seq 100); do [[ -f $T5/out/w1/heap/002.pb.gz ]] && break; sleep 0.1; done
printf '# edited\nw2 http://%s\n' "$(addr w2)" >"$T5/targets.new"
mv "$T5/targets.new" "$T5/targets"
for _ in $(seq 100); do [[ -f $T5/out/w2/heap/002.pb.gz ]] && break; sleep 0.1; done
w1_at_edit=$(ls "$T5/out/w1/heap" | wc -l)
sleep 1
w1_later=$(ls "$T5/out/w1/heap" | wc -l)
echo "w1 http://$(addr w1)" >>"$T5/targets"
for _ in $(seq 100); do
	[[ $(ls "$T5/out/w1/heap" | wc -l) -gt $w1_later ]] && break
	sleep 0.1
done
kill -TERM "$AGENT_PID"
wait "$AGENT_PID" && ok "SIGTERM: the agent stops with status 0" || bad "SIGTERM: exit status $?"
AGENT_PID=
[[ -f $T5/out/w2/heap/002.pb.gz ]] && ok "targets file edit: w2 added without a restart" || bad "w2 never scraped"
[[ $w1_later -eq $w1_at_edit ]] && ok "targets file edit: w1 removed (no file after the edit)" ||
	bad "w1 still scraped after its removal ($w1_at_edit -> $w1_later files)"
grep -q ' w1 heap seq=[0-9]* DELTA' <(tail -n 3 "$T5.log") && ok "w1 re-added: continues with a DELTA (state kept)" ||
	bad "w1 re-added: $(tail -n 3 "$T5.log")"
[[ $(grep -c 'targets: reloaded' "$T5.log") -ge 2 ]] && ok "two reloads logged" || bad "reloads not logged"
echo "w9 ftp://nowhere" >"$T5/targets"
"$PDELTA" scrape "${SRV[@]}" --stream-prefix t5/ --targets "$T5/targets" --out-dir "$T5/x" --once >/dev/null 2>"$T5.bad" &&
	bad "a bad targets file was accepted" ||
	{ grep -q 'targets:1: target w9: URL .ftp://nowhere. is not http' "$T5.bad" && ok "bad targets file: clear error" ||
		bad "bad targets file: $(cat "$T5.bad")"; }

# --- 6. push to a backend that is down for a while ------------------------------------------
T6=$WORK/t6
mkdir -p "$T6"
touch "$T6/down"
"$PY" "$ROOT/tests/integration/push_receiver.py" --port-file "$T6/port" --out "$T6/recv" \
	--down-file "$T6/down" --reject-file "$T6/reject" &
RECV_PID=$!
for _ in $(seq 100); do [[ -s $T6/port ]] && break; sleep 0.05; done
PUSH=http://127.0.0.1:$(cat "$T6/port")
MPORT2=$(free_port)
printf 'w1 http://%s label.env=prod label.team=core\n' "$(addr w1)" >"$T6/targets"
"$PDELTA" scrape "${SRV[@]}" --stream-prefix t6/ --targets "$T6/targets" --types heap,mutex --interval 300ms --count 7 \
	--state "$T6/state" --out-dir "$T6/out" --push "$PUSH" --metrics-listen "127.0.0.1:$MPORT2" \
	>"$T6.log" 2>"$T6.err" &
AGENT_PID=$!
sleep 1.5
"$PY" - "$MPORT2" >"$T6/metrics" 2>&1 <<'PYEOF' || true
import sys, urllib.request
print(urllib.request.urlopen("http://127.0.0.1:%s/metrics" % sys.argv[1], timeout=5).read().decode(), end="")
PYEOF
rm -f "$T6/down"
wait "$AGENT_PID" || bad "push run exited $?"
AGENT_PID=
"$PY" - "$T6" >"$T6/check.out" 2>&1 <<'PYEOF' && ok "push: $(tail -n 1 "$T6/check.out")" || { bad "push: $(tail -n 3 "$T6/check.out")"; }
import json, os, sys
t6 = sys.argv[1]
log = [json.loads(l) for l in open(os.path.join(t6, "recv", "log.jsonl"))]
by = {}
for e in log:
    name = e["query"]["name"]
    assert "__delta__=false" in name and "env=prod" in name and "team=core" in name, name
    typ = [kv.split("=")[1] for kv in name[name.index("{") + 1:-1].split(",") if kv.startswith("pdelta_type=")][0]
    by.setdefault(typ, []).append(e)
for typ in ("heap", "mutex"):
    got = by.get(typ, [])
    outs = sorted(os.listdir(os.path.join(t6, "out", "w1", typ)))[1:]  # 000 is BASELINE first: not pushed
    assert len(got) == len(outs) == 6, (typ, len(got), len(outs))
    untils = [int(e["query"]["until"]) for e in got]
    assert untils == sorted(untils), untils
    for e, f in zip(got, outs):
        body = open(os.path.join(t6, "recv", "%06d.pb.gz" % e["n"]), "rb").read()
        assert body == open(os.path.join(t6, "out", "w1", typ, f), "rb").read(), (typ, f)
print("12 deltas received in order after the outage, byte-identical to out-dir, labels and __delta__=false")
PYEOF
grep -q 'HTTP 503 (will retry)' "$T6.err" && ok "push: the outage is logged as retryable" || bad "push: no retry logged"
if "$PY" - "$T6/metrics" <<'PYEOF' >"$T6/m.out" 2>&1; then ok "agent /metrics: $(cat "$T6/m.out")"; else bad "agent /metrics: $(tail -n 3 "$T6/m.out")"; fi
import sys
from prometheus_client.parser import text_string_to_metric_families
v = {}
for fam in text_string_to_metric_families(open(sys.argv[1]).read()):
    for s in fam.samples:
        v[(s.name, tuple(sorted(s.labels.items())))] = s.value
scr = v[("pdelta_scrape_scrapes_total", ())]
retry = v[("pdelta_scrape_push_errors_total", (("kind", "retryable"),))]
spool = v[("pdelta_scrape_spool_files", ())]
assert scr >= 2 and retry >= 1 and spool >= 1, (scr, retry, spool)
print("parsed; %d scrapes, %d retryable push errors, %d deltas spooled during the outage" % (scr, retry, spool))
PYEOF

# A spool that overflows while the backend is down drops the oldest, counted; a 4xx drops for good.
touch "$T6/down"
"$PDELTA" scrape --local --target "w2=http://$(addr w2)" --types heap --interval 200ms --count 6 --push-first \
	--spool "$T6/spool2" --spool-max 1 --push "$PUSH" --out-dir "$T6/out2" >"$T6.2.log" 2>"$T6.2.err" || true
grep -q 'dropped the 1 oldest' "$T6.2.err" && ok "spool over --spool-max: oldest dropped and logged" ||
	bad "spool overflow: $(tail -n 2 "$T6.2.err")"
left=$(ls "$T6/spool2" | wc -l)
[[ $left -eq 1 ]] && ok "spool bounded: 1 file left for the next run" || bad "spool: $left files left"
rm -f "$T6/down"
touch "$T6/reject"
"$PDELTA" scrape --local --target "w2=http://$(addr w2)" --types heap --once --push-first \
	--spool "$T6/spool2" --push "$PUSH" --out-dir "$T6/out2" >"$T6.3.log" 2>"$T6.3.err" || true
grep -q 'refused with HTTP 400 (permanent)' "$T6.3.err" && ok "push: 4xx is permanent, delta dropped and logged" ||
	bad "push 4xx: $(tail -n 2 "$T6.3.err")"
[[ $(ls "$T6/spool2" | wc -l) -eq 0 ]] && ok "push: a permanent refusal leaves nothing in the spool" || bad "spool not empty after 4xx"
rm -f "$T6/reject"

# A stream without a saved state (no --state, an empty file, entries without their incarnation
# line) is a first profile: the server answers BASELINE reset (a new incarnation) with the
# whole cumulative profile, already pushed by the previous run; it is not pushed again.
# pushes_of FIRST_PUSH: how many deltas of target f1 the receiver got from FIRST_PUSH on
pushes_of() { tail -n "+$1" "$T6/recv/log.jsonl" | grep -c '"name": "f1{' || true; }
fresh_run() { # fresh_run WHAT [--state FILE]: one run of 2 rounds; sets $pushed
	local from=$(($(wc -l <"$T6/recv/log.jsonl") + 1))
	"$PDELTA" scrape "${SRV[@]}" --stream-prefix t6b/ --target "f1=http://$(addr w1)" --types heap --interval 300ms \
		--count 2 "${@:2}" --out-dir "$T6/out-f1" --push "$PUSH" >"$T6.f1.log" 2>"$T6.f1.err" || bad "$1: exit $?"
	pushed=$(pushes_of "$from")
}
fresh_run "no --state"
fresh_run "no --state, again"
grep -q ' f1 heap seq=1 BASELINE reset' "$T6.f1.log" && ((pushed == 1)) &&
	ok "a run without --state: its first answer (BASELINE reset of a new incarnation) is not pushed" ||
	bad "second run without --state: $pushed pushes: $(grep seq= "$T6.f1.log")"
: >"$T6/state-f1"
fresh_run "empty state file" --state "$T6/state-f1"
grep -q ' f1 heap seq=1 BASELINE reset' "$T6.f1.log" && ((pushed == 1)) &&
	ok "an empty state file: the first answer is not pushed" || bad "empty state file: $pushed pushes"
fresh_run "state file kept" --state "$T6/state-f1"
grep -q ' f1 heap seq=3 DELTA' "$T6.f1.log" && ((pushed == 2)) &&
	ok "with the state it saved, the next run pushes both deltas" || bad "saved state: $pushed pushes: $(grep seq= "$T6.f1.log")"
printf 'stream t6b/f1/heap 4\n' >"$T6/state-f1"
fresh_run "no incarnation line" --state "$T6/state-f1"
grep -q "state file $T6/state-f1 has no incarnation line: its 1 stream entries are dropped" "$T6.f1.err" &&
	grep -q ' f1 heap seq=1 BASELINE reset' "$T6.f1.log" && ((pushed == 1)) &&
	ok "a state file without its incarnation line: entries dropped (logged), the first answer not pushed" ||
	bad "no incarnation line: $pushed pushes: $(head -n 2 "$T6.f1.err")"
state_err() { # state_err WHAT PATTERN CONTENT: the agent refuses a state file holding CONTENT
	local rc=0
	printf "$3" >"$T6/state-bad"
	"$PDELTA" scrape --local --target "f1=http://$(addr w1)" --types heap --once --state "$T6/state-bad" \
		--out-dir "$T6/out-bad" >"$T6.bad.out" 2>&1 || rc=$?
	((rc == 2)) && grep -q -- "$T6/state-bad:$2" "$T6.bad.out" && ok "state file, $1: refused ($(head -n 1 "$T6.bad.out" | cut -c1-90))" ||
		bad "state file, $1: exit $rc: $(head -n 1 "$T6.bad.out")"
}
state_err "incarnation 0" "1: 'incarnation 0': the incarnation is a number" 'incarnation 0\nstream t6b/f1/heap 3\n'
state_err "truncated mid-number" "2: truncated (no newline at the end" '# pdelta scrape state\nincarnation 145'
state_err "last stream line cut" "3: truncated" 'incarnation 14527565545761169451\nstream t6b/f1/heap 3\nstream t6b/f1/mutex 1'
state_err "incarnation past 2^64" "1: 'incarnation 18446744073709551616'" 'incarnation 18446744073709551616\n'
state_err "incarnation with a sign" "1: 'incarnation -5'" 'incarnation -5\n'
for seq in 99999999999999999999 18446744073709551615 -1 0; do
	state_err "seq $seq" "2: stream t6b/f1/heap: seq '$seq' is not a number from 1 to 2^64-2" \
		"incarnation 7\nstream t6b/f1/heap $seq\n"
done
state_err "gone time -5" "2: stream t6b/f1/heap: '-5' is not a time" 'incarnation 7\nstream t6b/f1/heap 3 -5\n'
for v in 0 -5 12x 9223372036854775808 99999999999999999999 ''; do
	state_err "scrape time '$v'" "2: stream t6b/f1/heap: 'scraped=$v' is not a time in ms since 1970" \
		"incarnation 7\nstream t6b/f1/heap 3 scraped=$v\n"
done
state_err "scrape time twice" "2: not a state line" 'incarnation 7\nstream t6b/f1/heap 3 scraped=5 scraped=6\n'
state_err "NUL byte" "2: NUL byte" 'incarnation 7\nstream t6b/f1/heap 3\0 5\n'
# scraped= (when the profile of SEQ was scraped: where the next push's interval starts) is read
# next to a gone time and next to a line of an older agent without it; one in the future (a
# clock set back) is ignored and logged, not a reason to refuse the file
now_ms=$(date +%s%3N)
printf 'incarnation 7\nstream f1/heap 3 scraped=%s\nstream f1/mutex 2 %s scraped=%s\nstream f1/block 4\n' \
	$((now_ms + 3600000)) $((now_ms - 1000)) $((now_ms - 5000)) >"$T6/state-times"
rc=0
"$PDELTA" scrape --local --target "f1=http://$(addr w1)" --types heap --once --state "$T6/state-times" \
	--out-dir "$T6/out-times" >"$T6.times.out" 2>&1 || rc=$?
((rc == 0)) && grep -q "state file $T6/state-times:2: stream f1/heap: last scrape $((now_ms + 3600000)) ms is [0-9]* ms in the future (the clock was set back?): ignored" "$T6.times.out" &&
	grep -q "^stream f1/mutex 2 $((now_ms - 1000)) scraped=$((now_ms - 5000))\$" "$T6/state-times" &&
	grep -q '^stream f1/block 4 [0-9]*$' "$T6/state-times" &&
	awk -v lo="$now_ms" '$2 == "f1/heap" { n = split($4, a, "="); t = a[2] + 0; ok = $3 == 4 && a[1] == "scraped" && t >= lo && t < lo + 60000 }
		END { exit !ok }' "$T6/state-times" &&
	ok "state file: scraped= read (with a gone time, next to an older agent's line); one in the future ignored, logged" ||
	bad "state file scrape times: exit $rc: $(head -n 2 "$T6.times.out"); $(grep f1 "$T6/state-times" | tr '\n' ' ')"

# --- 7. per-target HTTP options: bearer and basic auth, body cap --------------------------------
T7=$WORK/t7
mkdir -p "$T7"
"$PY" - "$T7/port" "$ROOT/tests/data/profiles/heap-small/000.pb.gz" <<'PYEOF' &
import base64, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
body = open(sys.argv[2], "rb").read()
ok = {"/bearer/debug/pprof/heap": "Bearer s3cret-token",
      "/basic/debug/pprof/heap": "Basic " + base64.b64encode(b"scraper:pa55").decode(),
      "/big/debug/pprof/heap": None}
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        want = ok.get(self.path, "")
        if want == "" or (want is not None and self.headers.get("Authorization") != want):
            self.send_response(401); self.send_header("Content-Length", "0"); self.end_headers(); return
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
open(sys.argv[1] + ".tmp", "w").write(str(srv.server_address[1])); os.rename(sys.argv[1] + ".tmp", sys.argv[1])
srv.serve_forever()
PYEOF
AUTH_PID=$!
for _ in $(seq 100); do [[ -s $T7/port ]] && break; sleep 0.05; done
A=http://127.0.0.1:$(cat "$T7/port")
echo s3cret-token >"$T7/bearer"
echo scraper:pa55 >"$T7/basic"
echo wrong >"$T7/wrong"
{
	echo "b1 $A/bearer bearer_file=$T7/bearer"
	echo "b2 $A/basic basic_auth_file=$T7/basic"
	echo "b3 $A/bearer bearer_file=$T7/wrong"
	echo "b4 $A/big max_body=1k"
	echo "b5 $A/big timeout=5s"
} >"$T7/targets"
"$PDELTA" scrape --local --targets "$T7/targets" --types heap --once --out-dir "$T7/out" >"$T7.log" 2>"$T7.err" || true
grep -q ' b1 heap seq=1 BASELINE' "$T7.log" && ok "bearer_file: the target answers" || bad "bearer: $(grep b1 "$T7.err")"
grep -q ' b2 heap seq=1 BASELINE' "$T7.log" && ok "basic_auth_file: the target answers" || bad "basic: $(grep b2 "$T7.err")"
grep -q 'b3 heap scrape failed: .* HTTP 401' "$T7.err" && ok "wrong bearer token: HTTP 401 logged" || bad "wrong bearer: $(cat "$T7.err")"
grep -q 'b4 heap scrape failed: .*larger than max_body (1024 bytes)' "$T7.err" && ok "max_body=1k: refused, logged" ||
	bad "max_body: $(grep b4 "$T7.err")"
grep -q ' b5 heap seq=1' "$T7.log" && ok "the same body under the default cap is taken" || bad "b5: $(grep b5 "$T7.err")"
kill "$AUTH_PID" 2>/dev/null || true
wait "$AUTH_PID" 2>/dev/null || true
AUTH_PID=

# --- 9. a fixture server: slow paths (proxied to a workload after a delay) and https ----------
T9=$WORK/t9
mkdir -p "$T9"
bash "$ROOT/deploy/certs/gen-certs.sh" "$T9/other-pki" >/dev/null # a CA that did not sign the cert
"$PY" - "$T9/port" "$WORK/certs" "$ROOT/tests/data/profiles/heap-small/000.pb.gz" <<'PYEOF' &
import os, ssl, sys, threading, time, urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
fixture = open(sys.argv[3], "rb").read()
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        # /fixture/debug/pprof/T: the fixture; /slow/MS/UPSTREAM/debug/pprof/T: MS later, the
        # profile of UPSTREAM (HOST:PORT, or "fixture")
        parts = self.path.split("/")
        if parts[1] == "fixture":
            body = fixture
        elif parts[1] == "slow":
            time.sleep(int(parts[2]) / 1000)
            body = fixture if parts[3] == "fixture" else urllib.request.urlopen(
                "http://%s/%s" % (parts[3], "/".join(parts[4:])), timeout=10).read()
        else:
            self.send_response(404); self.send_header("Content-Length", "0"); self.end_headers(); return
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
plain = ThreadingHTTPServer(("127.0.0.1", 0), H)
tls = ThreadingHTTPServer(("127.0.0.1", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(os.path.join(sys.argv[2], "server.pem"), os.path.join(sys.argv[2], "server.key"))
tls.socket = ctx.wrap_socket(tls.socket, server_side=True)
threading.Thread(target=tls.serve_forever, daemon=True).start()
open(sys.argv[1] + ".tmp", "w").write("%d %d" % (plain.server_address[1], tls.server_address[1]))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
plain.serve_forever()
PYEOF
FIX_PID=$!
for _ in $(seq 100); do [[ -s $T9/port ]] && break; sleep 0.05; done
read -r FPORT FTLS <"$T9/port" || true # no newline at its end
F=http://127.0.0.1:$FPORT

# scrape_metrics PORT: the agent's /metrics text on stdout
scrape_metrics() {
	"$PY" -c 'import sys, urllib.request; print(urllib.request.urlopen("http://127.0.0.1:%s/metrics" % sys.argv[1], timeout=5).read().decode(), end="")' "$1" 2>/dev/null || true
}
# metric_value PORT NAME_WITH_LABELS: its value, 0 when absent
metric_value() { scrape_metrics "$1" | awk -v n="$2" '$1 == n { v = $2 } END { print v + 0 }'; }
stop_agent() {
	kill -TERM "$AGENT_PID" 2>/dev/null || true
	wait "$AGENT_PID" 2>/dev/null || true
	AGENT_PID=
}

# https target: the right CA delivers; a wrong CA fails clearly and is counted
MP9=$(free_port)
{
	echo "good https://127.0.0.1:$FTLS/fixture ca=$CA"
	echo "wrongca https://127.0.0.1:$FTLS/fixture ca=$T9/other-pki/ca.pem"
} >"$T9/tls-targets"
"$PDELTA" scrape --local --targets "$T9/tls-targets" --types heap --interval 300ms --out-dir "$T9/tls-out" \
	--metrics-listen "127.0.0.1:$MP9" >"$T9/tls.log" 2>"$T9/tls.err" &
AGENT_PID=$!
for _ in $(seq 100); do
	[[ -f $T9/tls-out/good/heap/001.pb.gz && $(metric_value "$MP9" 'pdelta_scrape_failures_by_reason_total{reason="tls"}') -ge 2 ]] && break
	sleep 0.1
done
tls_fail=$(metric_value "$MP9" 'pdelta_scrape_failures_by_reason_total{reason="tls"}')
stop_agent
grep -q ' good heap seq=2 DELTA' "$T9/tls.log" && ok "https target with its CA (ca=): scraped, seq 2 DELTA" ||
	bad "https target: $(head -n 3 "$T9/tls.err")"
grep -q 'wrongca heap scrape failed: https://.*TLS: .*check the target.s CA' "$T9/tls.err" &&
	((tls_fail >= 2)) && ! grep -q ' wrongca heap seq=' "$T9/tls.log" &&
	ok "https target with a wrong CA: refused, logged as TLS, counted ($tls_fail in failures_by_reason{reason=\"tls\"})" ||
	bad "wrong CA: tls failures $tls_fail: $(grep wrongca "$T9/tls.err" | head -n 2)"

# --- 10. fairness and same-name jobs ----------------------------------------------------------
# Four slow targets (400 ms each), one worker, a 100 ms interval: more due jobs than workers.
# Oldest due first: every target gets its turn (scanning from index 0 starved all but one).
T10=$WORK/t10
mkdir -p "$T10"
for i in 1 2 3 4; do echo "s$i $F/slow/400/fixture"; done >"$T10/targets"
"$PDELTA" scrape --local --targets "$T10/targets" --types heap --interval 100ms --concurrency 1 \
	--out-dir "$T10/out" >"$T10.log" 2>"$T10.err" &
AGENT_PID=$!
sleep 5
stop_agent
counts=$(for i in 1 2 3 4; do grep -c " s$i heap seq=" "$T10.log" || true; done | tr '\n' ' ')
min=$(tr ' ' '\n' <<<"$counts" | grep . | sort -n | head -n 1)
((min >= 2)) && ok "overload (4 due, 1 worker): every target scraped, deliveries per target: $counts" ||
	bad "overload: a target starved, deliveries per target: $counts"

# A target's line edited while its (slow) scrape is in flight: the replaced target's stream
# waits for the old job; one seq is never sent twice, the tree is the oracle's.
T11=$WORK/t11
mkdir -p "$T11"
echo "e1 $F/slow/1500/$(addr w2)" >"$T11/targets"
"$PDELTA" scrape --local --targets "$T11/targets" --types heap --interval 200ms --state "$T11/state" \
	--out-dir "$T11/out" --save-input "$T11/in" >"$T11.log" 2>"$T11.err" &
AGENT_PID=$!
for _ in $(seq 100); do [[ -f $T11/out/e1/heap/000.pb.gz ]] && break; sleep 0.1; done
echo "e1 $F/slow/1500/$(addr w2) timeout=9s" >"$T11/targets.new" # the next scrape is in flight now
mv "$T11/targets.new" "$T11/targets"
for _ in $(seq 100); do [[ -f $T11/out/e1/heap/003.pb.gz ]] && break; sleep 0.1; done
stop_agent
seqs=$(grep -o ' e1 heap seq=[0-9]*' "$T11.log" | cut -d= -f2 | tr '\n' ' ')
dups=$(tr ' ' '\n' <<<"$seqs" | grep . | sort | uniq -d | tr '\n' ' ')
[[ -z $dups ]] && ! grep -q 'ERROR' "$T11.err" && grep -q 'targets: reloaded' "$T11.log" &&
	ok "target edited mid-scrape: no seq sent twice (seqs $seqs), no error" ||
	bad "target edited mid-scrape: seqs $seqs, twice: $dups; $(grep ERROR "$T11.err" | head -n 2)"
judge "target edited mid-scrape, oracle" "$T11/in" "$T11/out" --min-files 3

# --- 11. target churn: removed targets are freed, their state entries dropped after the grace --
T12=$WORK/t12
mkdir -p "$T12"
MP12=$(free_port)
echo "c0 $F/fixture" >"$T12/targets"
"$PDELTA" scrape --local --targets "$T12/targets" --types heap,mutex --interval 100ms --state "$T12/state" \
	--state-grace 1s --out-dir "$T12/out" --metrics-listen "127.0.0.1:$MP12" >"$T12.log" 2>"$T12.err" &
AGENT_PID=$!
for i in 1 2 3 4 5 6; do
	for _ in $(seq 50); do [[ -f $T12/out/c$((i - 1))/heap/000.pb.gz ]] && break; sleep 0.1; done
	echo "c$i $F/fixture" >"$T12/targets.new"
	mv "$T12/targets.new" "$T12/targets"
done
for _ in $(seq 50); do [[ -f $T12/out/c6/heap/001.pb.gz ]] && break; sleep 0.1; done
sleep 1.5
streams=$(metric_value "$MP12" pdelta_scrape_streams)
entries=$(metric_value "$MP12" pdelta_scrape_state_entries)
stop_agent
in_file=$(grep -c '^stream ' "$T12/state" || true)
((streams == 2 && entries == 2 && in_file == 2)) &&
	ok "7 targets in turn (6 removed): 2 streams in memory, 2 state entries, 2 stream lines in the state file" ||
	bad "churn: streams $streams, state entries $entries, state file lines $in_file: $(grep '^stream' "$T12/state" | head -n 4)"
grep -q 'state: c0/heap dropped' "$T12.log" && ok "churn: dropped state entries are logged" || bad "churn: no drop logged"

# --- 12. a reload with a bad label keeps the previous targets ----------------------------------
T13=$WORK/t13
mkdir -p "$T13"
MP13=$(free_port)
echo "l1 $F/fixture label.env=prod" >"$T13/targets"
"$PDELTA" scrape --local --targets "$T13/targets" --types heap --interval 200ms --out-dir "$T13/out" \
	--metrics-listen "127.0.0.1:$MP13" >"$T13.log" 2>"$T13.err" &
AGENT_PID=$!
for _ in $(seq 100); do [[ -f $T13/out/l1/heap/000.pb.gz ]] && break; sleep 0.1; done
printf '# a label value with a comma would split the pushed label set\nl1 %s label.env=a,b\n' "$F/fixture" >"$T13/targets.new"
mv "$T13/targets.new" "$T13/targets"
for _ in $(seq 50); do grep -q 'keeping the current targets' "$T13.err" && break; sleep 0.1; done
n_before=$(ls "$T13/out/l1/heap" | wc -l)
for _ in $(seq 50); do (($(ls "$T13/out/l1/heap" | wc -l) > n_before + 1)) && break; sleep 0.1; done
n_after=$(ls "$T13/out/l1/heap" | wc -l)
reload_err=$(metric_value "$MP13" pdelta_scrape_target_reload_errors_total)
# a directory in the file's place is a reload error too, not an empty file that stops every target
rm "$T13/targets"
mkdir "$T13/targets"
for _ in $(seq 50); do grep -q "cannot read targets file $T13/targets: Is a directory" "$T13.err" && break; sleep 0.1; done
n_dir=$(ls "$T13/out/l1/heap" | wc -l)
for _ in $(seq 50); do (($(ls "$T13/out/l1/heap" | wc -l) > n_dir + 1)) && break; sleep 0.1; done
n_dir_after=$(ls "$T13/out/l1/heap" | wc -l)
reload_err_dir=$(metric_value "$MP13" pdelta_scrape_target_reload_errors_total)
stop_agent
grep -q "targets: cannot read targets file $T13/targets: Is a directory (keeping the current targets)" "$T13.err" &&
	((n_dir_after > n_dir && reload_err_dir == 2)) && ! grep -q 'targets: reloaded' "$T13.log" &&
	ok "reload with a directory for the targets file: the target goes on ($n_dir -> $n_dir_after files), counted" ||
	bad "directory reload: files $n_dir -> $n_dir_after, reload errors $reload_err_dir: $(tail -n 2 "$T13.err" "$T13.log")"
grep -q "targets: $T13/targets:2: label 'env': the value may not hold , } = \" or control characters (keeping the current targets)" "$T13.err" &&
	ok "reload with a bad label: refused with file:line and the label, logged" || bad "bad label reload: $(cat "$T13.err")"
((n_after > n_before && reload_err == 1)) && ok "reload with a bad label: the previous target goes on ($n_before -> $n_after files), counted" ||
	bad "bad label reload: files $n_before -> $n_after, reload errors $reload_err"

# --- 13. one agent per state file --------------------------------------------------------------
T14=$WORK/t14
mkdir -p "$T14"
"$PDELTA" scrape --local --target "k1=$F/fixture" --types heap --interval 10s --state "$T14/state" \
	--out-dir "$T14/out" >"$T14.log" 2>"$T14.err" &
AGENT_PID=$!
for _ in $(seq 100); do [[ -s $T14/state.lock ]] && break; sleep 0.05; done
rc=0
"$PDELTA" scrape --local --target "k1=$F/fixture" --types heap --once --state "$T14/state" \
	--out-dir "$T14/out2" >"$T14.2.log" 2>"$T14.2.err" || rc=$?
((rc == 2)) && grep -q "the state file $T14/state is in use by another agent ($T14/state.lock held by pid $AGENT_PID)" "$T14.2.err" &&
	[[ ! -d $T14/out2 ]] && ok "a second agent on the same --state: exit 2, names the lock and its holder" ||
	bad "second agent on one state: exit $rc: $(cat "$T14.2.err")"
stop_agent
"$PDELTA" scrape --local --target "k1=$F/fixture" --types heap --once --state "$T14/state" \
	--out-dir "$T14/out2" >"$T14.3.log" 2>&1 && ok "the lock goes with its agent: the next one runs" ||
	bad "after the first agent: $(cat "$T14.3.log")"
# --state given as a symbolic link: the file it names is written and locked, the link stays
ln -s state "$T14/state-link"
"$PDELTA" scrape --local --target "k1=$F/fixture" --types heap --interval 10s --state "$T14/state-link" \
	--out-dir "$T14/out3" >"$T14.4.log" 2>"$T14.4.err" &
AGENT_PID=$!
for _ in $(seq 100); do [[ $(cat "$T14/state.lock" 2>/dev/null) == "$AGENT_PID" ]] && break; sleep 0.05; done
rc=0
"$PDELTA" scrape --local --target "k1=$F/fixture" --types heap --once --state "$T14/state" \
	--out-dir "$T14/out4" >"$T14.5.log" 2>&1 || rc=$?
((rc == 2)) && grep -q "($T14/state.lock held by pid $AGENT_PID)" "$T14.5.log" &&
	ok "an agent on a --state link holds the lock of the file it names" || bad "--state link, lock: exit $rc: $(head -n 1 "$T14.5.log")"
stop_agent
seq_before=$(awk '$2 == "k1/heap" { print $3 }' "$T14/state")
"$PDELTA" scrape --local --target "k1=$F/fixture" --types heap --once --state "$T14/state-link" \
	--out-dir "$T14/out3" >"$T14.6.log" 2>&1 || true
seq_after=$(awk '$2 == "k1/heap" { print $3 }' "$T14/state")
[[ -L $T14/state-link && ! -e $T14/state-link.lock && $seq_after == $((seq_before + 1)) ]] &&
	ok "--state link: the link stays, the file it names is saved (seq $seq_before -> $seq_after)" ||
	bad "--state link: link $(stat -c %F "$T14/state-link"), seq $seq_before -> $seq_after"

# --- 14. --fallback-local: pdeltad stopped mid-run, then back ----------------------------------
# While pdeltad is down the streams move to local mode (one BASELINE moved each: the whole
# profile), deltas go on locally; once it answers again the streams go back to it (one empty
# BASELINE state-lost each), then deltas through pdeltad. Everything else equals the oracle.
T15=$WORK/t15
"$PDELTA" scrape "${SRV[@]}" --fallback-local --stream-prefix t15/ --target "w1=http://$(addr w1)" --types heap,mutex \
	--interval 300ms --state "$T15/state" --out-dir "$T15/out" --save-input "$T15/in" \
	>"$T15.log" 2>"$T15.err" &
AGENT_PID=$!
for _ in $(seq 100); do [[ -f $T15/out/w1/heap/002.pb.gz ]] && break; sleep 0.1; done
pd_stop_server KILL
for _ in $(seq 200); do (($(grep -c 'BASELINE moved' "$T15.log") >= 2)) && break; sleep 0.1; done
sleep 1
pd_start_server --workers 2
for _ in $(seq 300); do (($(grep -c 'BASELINE state-lost' "$T15.log") >= 2)) && break; sleep 0.1; done
n=$(grep -c ' seq=' "$T15.log")
for _ in $(seq 100); do (($(grep -c ' seq=' "$T15.log") >= n + 4)) && break; sleep 0.1; done
stop_agent
rebase=()
for t in heap mutex; do
	for s in $(grep -E " w1 $t seq=[0-9]+ BASELINE (moved|state-lost)" "$T15.log" | grep -o 'seq=[0-9]*' | cut -d= -f2); do
		rebase+=(--rebase "w1/$t=$((s - 1))")
	done
done
moved=$(grep -c 'BASELINE moved' "$T15.log" || true)
lost=$(grep -c 'BASELINE state-lost' "$T15.log" || true)
local_deltas=$(awk '/BASELINE moved/ { m = 1 } /BASELINE state-lost/ { m = 0 } m && / DELTA / { n++ } END { print n + 0 }' "$T15.log")
((moved == 2 && lost == 2 && local_deltas >= 1)) && grep -q 'fallback: the server answers again' "$T15.log" &&
	tail -n 1 "$T15.log" | grep -q ' DELTA ' &&
	ok "--fallback-local: pdeltad down: 2 BASELINE moved, $local_deltas local deltas; back: 2 BASELINE state-lost, deltas through pdeltad" ||
	bad "--fallback-local: moved $moved, state-lost $lost, local deltas $local_deltas: $(grep -E 'BASELINE|fallback' "$T15.log" | head -n 6)"
judge "--fallback-local, oracle (moved and state-lost judged for validity)" "$T15/in" "$T15/out" "${rebase[@]}" --min-files 6

# --- 15. pdeltad restarted and restored from an older backup while the agent pushes ------------
# A plain restart: the unanswered profile is resent and its delta pushed with its own interval
# (from/until of its scrape, not of the resend). A restore: BASELINE state-lost, no negative value.
T16=$WORK/t16
mkdir -p "$T16"
# the receiver of part 6 is done: stop it before this part takes RECV_PID
kill "$RECV_PID" 2>/dev/null || true
wait "$RECV_PID" 2>/dev/null || true
"$PY" "$ROOT/tests/integration/push_receiver.py" --port-file "$T16/port" --out "$T16/recv" &
RECV_PID=$!
for _ in $(seq 100); do [[ -s $T16/port ]] && break; sleep 0.05; done
"$PDELTA" scrape "${SRV[@]}" --stream-prefix t16/ --target "w2=http://$(addr w2)" --types heap --interval 300ms --count 16 \
	--state "$T16/state" --out-dir "$T16/out" --save-input "$T16/in" --push "http://127.0.0.1:$(cat "$T16/port")" \
	>"$T16.log" 2>"$T16.err" &
AGENT_PID=$!
for _ in $(seq 100); do [[ -f $T16/out/w2/heap/002.pb.gz ]] && break; sleep 0.1; done
sqlite3 "$WORK/state.db" ".backup '$T16/backup.db'"
for _ in $(seq 100); do [[ -f $T16/out/w2/heap/004.pb.gz ]] && break; sleep 0.1; done
pd_stop_server KILL
sleep 2.5 # rounds fall into the downtime: their profile stays pending
pd_start_server --workers 2
for _ in $(seq 100); do [[ -f $T16/out/w2/heap/009.pb.gz ]] && break; sleep 0.1; done
pd_stop_server KILL
rm -f "$WORK/state.db-wal" "$WORK/state.db-shm"
cp "$T16/backup.db" "$WORK/state.db"
pd_start_server --workers 2
rc=0
wait "$AGENT_PID" || rc=$?
AGENT_PID=
# the rounds whose profile waited for the server failed: a bounded run says so
((rc == 1)) && grep -q '^pdelta scrape: [1-9][0-9]* of [0-9]* rounds failed, 0 delta(s) not pushed$' "$T16.err" &&
	ok "restore run: exit 1, $(grep -o '[0-9]* of [0-9]* rounds failed' "$T16.err") (pdeltad down)" ||
	bad "restore run exited $rc: $(tail -n 1 "$T16.err")"
kill "$RECV_PID" 2>/dev/null || true
wait "$RECV_PID" 2>/dev/null || true
RECV_PID=
lost=$(grep -o ' w2 heap seq=[0-9]* BASELINE state-lost' "$T16.log" | grep -o 'seq=[0-9]*' | cut -d= -f2)
[[ $(wc -w <<<"$lost") -eq 1 ]] && ok "pdeltad restored from an older backup: one BASELINE state-lost (seq $lost)" ||
	bad "restore: state-lost at '$lost': $(grep -E 'BASELINE|ERROR' "$T16.log" "$T16.err" | head -n 5)"
# A round due while the stream's previous profile still waits for the server (down) is
# skipped, not run twice: the next one covers its interval, so fewer than 16 files is right.
judge "pdeltad restored, oracle (no negative value, deltas equal)" "$T16/in" "$T16/out" \
	${lost:+--rebase "w2/heap=$((lost - 1))"} --min-files 12
"$PY" - "$T16" <<'PYEOF' >"$T16/check.out" 2>&1 && ok "push: $(tail -n 1 "$T16/check.out")" || bad "push intervals: $(tail -n 3 "$T16/check.out")"
import json, os, re, sys
t = sys.argv[1]
# the deltas pushed, in order: the DELTA answers of the log (a resend is marked "resent")
lines = [l for l in open(t + ".log") if re.search(r" w2 heap seq=\d+ (DELTA|DUPLICATE \S+ orig=DELTA)", l)]
pushes = [json.loads(l) for l in open(os.path.join(t, "recv", "log.jsonl"))]
assert len(pushes) == len(lines), (len(pushes), len(lines))
resent = 0
for l, p in zip(lines, pushes):
    seq = int(re.search(r"seq=(\d+)", l).group(1))
    scraped = os.path.getmtime(os.path.join(t, "in", "w2", "heap", "%03d.pb.gz" % (seq - 1)))
    until, frm = int(p["query"]["until"]), int(p["query"]["from"])
    assert abs(until - scraped) <= 1.5, ("seq", seq, "until", until, "scraped at", scraped, l)
    assert frm <= until and until - frm <= 6, ("seq", seq, frm, until)
    resent += " resent" in l
assert resent >= 1, "no delta was resent after the restart"
print("%d deltas pushed, %d of them resent after the restart: each with its scrape's from/until" % (len(pushes), resent))
PYEOF
# --- 16. exit status of a bounded run -----------------------------------------------------------
# With --once or --count, 0 only when every round delivered; 1 and a summary when a scrape, a
# delta request or a delivery failed (as `pdelta send`: 0 all sent, 1 a file failed).
T17=$WORK/t17
mkdir -p "$T17"
exit_of() { # exit_of NAME ARGS...: pdelta scrape ARGS, its output in $T17/NAME.out, its status in $rc
	local name=$1
	shift
	rc=0
	"$PDELTA" scrape "$@" >"$T17/$name.out" 2>&1 || rc=$?
}
exit_of ok --local --target "k1=$F/fixture" --types heap,mutex --once --out-dir "$T17/out-ok"
((rc == 0)) && ! grep -q 'rounds failed' "$T17/ok.out" && ok "--once, every round delivered: exit 0" ||
	bad "--once, all delivered: exit $rc: $(tail -n 2 "$T17/ok.out")"
exit_of part --local --target "k1=$F/fixture" --target "k2=http://127.0.0.1:1" --types heap --count 2 --interval 100ms \
	--timeout 1s --out-dir "$T17/out-part"
((rc == 1)) && grep -q '^pdelta scrape: 2 of 4 rounds failed, 0 delta(s) not pushed$' "$T17/part.out" &&
	ok "--count 2, one target of two down: exit 1, '2 of 4 rounds failed'" ||
	bad "--count 2, one target down: exit $rc: $(tail -n 1 "$T17/part.out")"
echo not-a-token >"$T17/bad.token"
exit_of refused --server "127.0.0.1:$PORT" --ca "$CA" --token-file "$T17/bad.token" --stream-prefix t17/ \
	--target "w1=http://$(addr w1)" --types heap --once --out-dir "$T17/out-refused"
((rc == 1)) && grep -q '^pdelta scrape: 1 of 1 rounds failed' "$T17/refused.out" &&
	ok "--once, the server refuses the agent (bad token): exit 1" ||
	bad "--once, server refused: exit $rc: $(tail -n 2 "$T17/refused.out")"
exit_of down --server "127.0.0.1:$(free_port)" --ca "$CA" --token-file "$WORK/agent.token" --stream-prefix t17/ \
	--target "w1=http://$(addr w1)" --types heap --once --state "$T17/state-down" --out-dir "$T17/out-down"
((rc == 1)) && grep -q '^pdelta scrape: 1 of 1 rounds failed' "$T17/down.out" && [[ -n $(ls "$T17/state-down.pending") ]] &&
	ok "--once, pdeltad down: exit 1, the profile stays pending" ||
	bad "--once, server down: exit $rc: $(tail -n 2 "$T17/down.out")"
exit_of nopush --local --target "k1=$F/fixture" --types heap --once --push-first --push "http://127.0.0.1:$(free_port)" \
	--spool "$T17/spool" --push-timeout 1s --out-dir "$T17/out-push"
((rc == 1)) && grep -q '^pdelta scrape: 0 of 1 rounds failed, 1 delta(s) not pushed$' "$T17/nopush.out" &&
	[[ $(ls "$T17/spool" | wc -l) -eq 1 ]] && ok "--once, the push backend down: exit 1, the delta stays in the spool" ||
	bad "--once, push down: exit $rc: $(tail -n 2 "$T17/nopush.out")"

# --- 17. push windows across restarts -----------------------------------------------------------
# An agent run from cron (--once --state, --interval 60s) pushes each delta over the interval it
# covers: from the scrape of the profile the delta is taken against (the previous run's, kept
# in the state file), not now - --interval; an older agent's line (no scraped=) falls back to
# that.
T18=$WORK/t18
mkdir -p "$T18"
"$PY" "$ROOT/tests/integration/push_receiver.py" --port-file "$T18/port" --out "$T18/recv" &
RECV_PID=$!
for _ in $(seq 100); do [[ -s $T18/port ]] && break; sleep 0.05; done
cron_run() { # cron_run N: the Nth run from cron
	"$PDELTA" scrape "${SRV[@]}" --stream-prefix t18/ --target "c1=http://$(addr w1)" --types heap --once \
		--interval 60s --state "$T18/state" --save-input "$T18/in" --push "http://127.0.0.1:$(cat "$T18/port")" \
		>>"$T18.log" 2>>"$T18.err" || bad "cron run $1 exited $?: $(tail -n 1 "$T18.err")"
}
cron_run 1
sleep 2
cron_run 2
grep -q '^stream t18/c1/heap 2 scraped=[0-9]*$' "$T18/state" && ok "state file: the last scrape time is kept with the sequence number" ||
	bad "state file after 2 runs: $(grep c1 "$T18/state")"
sleep 1
sed -i 's/ scraped=[0-9]*$//' "$T18/state" # as an older agent wrote it
cron_run 3
kill "$RECV_PID" 2>/dev/null || true
wait "$RECV_PID" 2>/dev/null || true
RECV_PID=
"$PY" - "$T18" <<'PYEOF' >"$T18/check.out" 2>&1 && ok "push windows: $(tail -n 1 "$T18/check.out")" || bad "push windows: $(tail -n 3 "$T18/check.out")"
import json, os, sys
t = sys.argv[1]
pushes = [json.loads(l) for l in open(os.path.join(t, "recv", "log.jsonl"))]
assert len(pushes) == 2, ("runs 2 and 3 push, run 1's first answer does not", len(pushes))
scraped = [os.path.getmtime(os.path.join(t, "in", "c1", "heap", "%03d.pb.gz" % i)) for i in range(3)]
frm, until = int(pushes[0]["query"]["from"]), int(pushes[0]["query"]["until"])
assert abs(frm - scraped[0]) <= 1.5 and abs(until - scraped[1]) <= 1.5, ("run 2", frm, until, scraped)
frm3, until3 = int(pushes[1]["query"]["from"]), int(pushes[1]["query"]["until"])
assert abs(until3 - scraped[2]) <= 1.5 and until3 - frm3 in (60, 61), ("run 3, no scraped=", frm3, until3)
print("after a restart the delta is pushed over [previous run's scrape, its scrape] (%d s, not 60); "
      "without scraped= over one --interval (%d s)" % (until - frm, until3 - frm3))
PYEOF

kill "$FIX_PID" 2>/dev/null || true
wait "$FIX_PID" 2>/dev/null || true
FIX_PID=

# --- 8. usage errors --------------------------------------------------------------------------
usage_err() { # usage_err WHAT PATTERN ARGS...
	local what=$1 pat=$2
	shift 2
	if "$PDELTA" scrape "$@" >"$WORK/u.out" 2>&1; then
		bad "$what: accepted"
	elif grep -q -- "$pat" "$WORK/u.out"; then
		ok "$what: refused ($(head -n 1 "$WORK/u.out" | cut -c1-80))"
	else
		bad "$what: $(head -n 1 "$WORK/u.out")"
	fi
}
usage_err "no targets" "no targets" --local --out-dir "$WORK/u"
usage_err "no sink" "nowhere to deliver" --local --target a=http://127.0.0.1:1
usage_err "no server" "give --server" --target a=http://127.0.0.1:1 --out-dir "$WORK/u"
rc=0
"$PDELTA" scrape --server "" --target a=http://127.0.0.1:1 --once --out-dir "$WORK/u" >"$WORK/u.out" 2>&1 || rc=$?
((rc == 2)) && grep -q -- '--server is empty' "$WORK/u.out" && [[ ! -d $WORK/u ]] &&
	ok "--server \"\": exit 2, refused (not a silent local run)" || bad "--server \"\": exit $rc: $(head -n 1 "$WORK/u.out")"
usage_err "bad type" "unknown profile type 'heapz'" --local --target a=http://127.0.0.1:1 --types heapz --out-dir "$WORK/u"
usage_err "bad name" "target name 'a/b'" --local --target a/b=http://127.0.0.1:1 --out-dir "$WORK/u"
usage_err "bad interval" "wants a duration" --local --target a=http://127.0.0.1:1 --interval 5x --out-dir "$WORK/u"
usage_err "dot name" "not starting with '.'" --local --target ..=http://127.0.0.1:1 --out-dir "$WORK/u"
usage_err "zero timeout" "timeouts must be above 0" --local --target a=http://127.0.0.1:1 --timeout 0 --out-dir "$WORK/u"
printf 'a http://127.0.0.1:1 timeout=0\n' >"$WORK/t0"
usage_err "zero target timeout" "timeout=0: not a duration above 0" --local --targets "$WORK/t0" --out-dir "$WORK/u"
mkdir -p "$WORK/tg-dir"
usage_err "--targets naming a directory" "cannot read targets file $WORK/tg-dir: Is a directory" \
	--local --targets "$WORK/tg-dir" --once --out-dir "$WORK/u"
mkdir -p "$WORK/st-dir"
usage_err "--state naming a directory" "cannot read state file $WORK/st-dir: Is a directory" \
	--local --target a=http://127.0.0.1:1 --state "$WORK/st-dir" --once --out-dir "$WORK/u"
printf '# no target yet\n\n' >"$WORK/tg-empty"
usage_err "empty targets file" "targets file $WORK/tg-empty lists no target" \
	--local --targets "$WORK/tg-empty" --once --out-dir "$WORK/u"
printf 'a http://127.0.0.1:1\nb http://127.0.0.1:1/x\0y\n' >"$WORK/tg-nul"
usage_err "NUL byte in a targets line" "$WORK/tg-nul:2: NUL byte at column 23" \
	--local --targets "$WORK/tg-nul" --once --out-dir "$WORK/u"
printf 'a http://127.0.0.1:1\nb http://127.0.0.1:1\0 label.x=1' >"$WORK/tg-nul-end" # was cut at the NUL
usage_err "NUL byte in a last line without its newline" "$WORK/tg-nul-end:2: NUL byte at column 21" \
	--local --targets "$WORK/tg-nul-end" --once --timeout 1s --out-dir "$WORK/u"
"$PDELTA" scrape --local --target a=http://127.0.0.1:1 --targets "$WORK/tg-empty" --types heap --once --timeout 1s \
	--out-dir "$WORK/u" >"$WORK/u.out" 2>&1 || true
! grep -q 'lists no target' "$WORK/u.out" && grep -q 'scrape failed: http://127.0.0.1:1/' "$WORK/u.out" &&
	ok "empty targets file next to --target: runs" || bad "empty targets file and --target: $(head -n 1 "$WORK/u.out")"
label_err() { # label_err WHAT PATTERN LINE: LINE as line 2 of a targets file
	printf 'x http://127.0.0.1:1\n%s\n' "$3" >"$WORK/bad-labels"
	usage_err "$1" "$WORK/bad-labels:2: $2" --local --targets "$WORK/bad-labels" --once --out-dir "$WORK/u"
}
label_err "label value with ','" "label 'env': the value may not hold" "y http://127.0.0.1:1 label.env=a,b"
label_err "label value with '}'" "label 'env': the value may not hold" "y http://127.0.0.1:1 label.env=a}"
label_err "label value with '='" "label 'env': the value may not hold" "y http://127.0.0.1:1 label.env=a=b"
label_err "label value with '\"'" "label 'env': the value may not hold" 'y http://127.0.0.1:1 label.env=a"b'
label_err "reserved label key" "label '__name__': the key is reserved" "y http://127.0.0.1:1 label.__name__=x"
label_err "label key pdelta_type" "label 'pdelta_type': the key is reserved" "y http://127.0.0.1:1 label.pdelta_type=x"
label_err "bad label key" "label '9lives': the key must be" "y http://127.0.0.1:1 label.9lives=x"
label_err "label key with '-'" "label 'team-a': the key must be" "y http://127.0.0.1:1 label.team-a=x"
label_err "label key twice" "label 'k': the key is given twice" "y http://127.0.0.1:1 label.k=1 label.kk=3 label.k=2"
label_err "empty label value" "label 'e': the value is empty" "y http://127.0.0.1:1 label.e="
label_err "label value not UTF-8" "label 'u': the value is not valid UTF-8" "y http://127.0.0.1:1 label.u=$(printf 'a\xff')"
label_err "label value, overlong UTF-8" "label 'u': the value is not valid UTF-8" "y http://127.0.0.1:1 label.u=$(printf '\xc0\xaf')"
printf 'tok\n' >"$WORK/tok"
label_err "bearer_file twice" "key 'bearer_file' given twice" \
	"y http://127.0.0.1:1 bearer_file=$WORK/tok label.k=1 bearer_file=$WORK/tok"
label_err "timeout twice" "key 'timeout' given twice" "y http://127.0.0.1:1 timeout=1s timeout=2s"
long=$(printf 'v%.0s' $(seq 1100))
label_err "labels past 2 KiB" "label 'b': the labels pass 2047 bytes" "y http://127.0.0.1:1 label.a=$long label.b=$long"
usage_err "twice" "given twice" --local --target a=http://127.0.0.1:1 --target a=http://127.0.0.1:2 --out-dir "$WORK/u"
rc=0
"$PDELTA" scrape --local --target a=http://127.0.0.1:1 --types heap --once --timeout 1s --out-dir "$WORK/u" \
	>"$WORK/u.out" 2>&1 || rc=$?
grep -q 'scrape failed: http://127.0.0.1:1/debug/pprof/heap' "$WORK/u.out" && ((rc == 1)) &&
	grep -q '^pdelta scrape: 1 of 1 rounds failed, 0 delta(s) not pushed$' "$WORK/u.out" &&
	ok "dead target with --once: logged, exit 1 with a summary" || bad "dead target: exit $rc: $(tail -n 2 "$WORK/u.out")"

pd_finish
