#!/usr/bin/env bash
# test_shadow.sh: shadow verification in pdeltad (shadow_rate, pd_shadow.h).
#
#   1. bad shadow_* values are refused with a clear error;
#   2. shadow_rate = 1 over every fixture sequence (tests/data/profiles/*): every delta
#      is checked by the slow path and no mismatch is found (nothing quarantined);
#   3. with the test-only engine (make PERTURB=1: build/perturb/bin, $PD_TEST_PERTURB
#      set) that answers one value wrong in every DELTA: the mismatch is counted in
#      /metrics by sample type and reason, logged once, quarantined (a case that
#      `pdelta diff` replays), and with shadow_fallback the stream's next deltas come
#      from the slow path and equal the oracle's.
# Env: BINDIR (default bin), PERTURB_BINDIR (default build/perturb/bin; built if absent).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
pd_init shadow
pd_pki

metric() { # metric NAME [LABELS]: the value of one sample of /metrics (0 when absent)
	"$PY" - "$MPORT" "$1" "${2:-}" <<'EOF'
import sys, urllib.request
port, name, labels = sys.argv[1], sys.argv[2], sys.argv[3]
want = name + ("{" + labels + "}" if labels else "")
body = urllib.request.urlopen("http://127.0.0.1:%s/metrics" % port, timeout=5).read().decode()
for line in body.splitlines():
    if line.split(" ")[0] == want:
        print(line.split(" ")[1]); break
else:
    print(0)
EOF
}

wait_metric() { # wait_metric NAME VALUE: up to 60 s (sanitizer builds are slow) for NAME to reach VALUE (or more)
	for _ in $(seq 600); do
		(($(metric "$1" | cut -d. -f1) >= $2)) && return 0
		sleep 0.1
	done
	return 1
}

# ---- 1. hostile settings ----------------------------------------------------------------
refused() { # refused WHAT-IN-MESSAGE FLAGS...: pdeltad --check must fail naming the setting
	local want=$1
	shift
	if "$BINDIR/pdeltad" --tls_cert "$WORK/certs/server.pem" --tls_key "$WORK/certs/server.key" \
		--tenants "$WORK/tenants" "$@" --check >"$WORK/check.out" 2>&1; then
		bad "accepted: $*"
	elif grep -q -- "$want" "$WORK/check.out"; then
		ok "refused: $* ($(head -n 1 "$WORK/check.out"))"
	else
		bad "refused without naming $want: $* ($(head -n 1 "$WORK/check.out"))"
	fi
}
refused "shadow_rate" --shadow_rate 2
refused "shadow_rate" --shadow_rate -0.1
refused "shadow_rate" --shadow_rate abc
refused "shadow_rate" --shadow_rate 0.1x
refused "shadow_rate" --shadow_rate 101%
refused "shadow_rate" --shadow_rate 0.0000001
refused "shadow_rate" --shadow_rate ""
refused "shadow_max_queue" --shadow_max_queue 0
refused "shadow_max_bytes" --shadow_max_bytes 12q
refused "shadow_dir_max_bytes" --shadow_dir_max_bytes 1k
refused "shadow_fallback" --shadow_fallback -1
PDELTAD_SHADOW_RATE=1.5 refused "PDELTAD_SHADOW_RATE" --db "$WORK/x.db"
: >"$WORK/plainfile"
if "$BINDIR/pdeltad" --listen "127.0.0.1:$PORT" --metrics_listen off --tls_cert "$WORK/certs/server.pem" \
	--tls_key "$WORK/certs/server.key" --tenants "$WORK/tenants" --db "$WORK/x.db" \
	--shadow_rate 1 --shadow_dir "$WORK/plainfile" >"$WORK/dir.out" 2>&1; then
	bad "pdeltad started with shadow_dir a plain file"
elif grep -q "shadow_dir: .* is not a directory" "$WORK/dir.out"; then
	ok "shadow_dir that is a file: refused at start ($(grep shadow_dir "$WORK/dir.out" | head -n 1))"
else
	bad "shadow_dir that is a file: $(tail -n 2 "$WORK/dir.out")"
fi
grep -q -- "--shadow-rate" <("$BINDIR/pdeltad" --help) && ok "--help lists --shadow-rate" ||
	bad "--help does not list --shadow-rate"

# ---- 2. every fixture sequence, rate 1, correct engine -------------------------------------
# A queue deep enough for the whole burst: none of the checks may be skipped here.
pd_start_server --workers 2 --db_sync no --shadow_rate 1 --shadow_dir "$WORK/q1" --shadow_max_queue 1000
send=("$BINDIR/pdelta" send --server "127.0.0.1:$PORT" --ca "$CA" --token "$AGENT_TOKEN" --incarnation 7)
n=0
for dir in "$TESTDATA"/profiles/*/; do
	s=$(basename "$dir")
	files=("$dir"*.pb.gz)
	mkdir -p "$WORK/out1/$s"
	"${send[@]}" --stream "seq/$s" -o "$WORK/out1/$s" "${files[@]}" >"$WORK/send.out" 2>&1 ||
		bad "$s: pdelta send failed: $(tail -n 2 "$WORK/send.out")"
	n=$((n + ${#files[@]}))
done
if wait_metric pdeltad_shadow_verified_total "$n" && [[ $(metric pdeltad_shadow_verified_total) == "$n" ]]; then
	ok "shadow_rate 1: all $n deltas of $(ls "$TESTDATA"/profiles | wc -l) sequences checked"
else
	bad "shadow_rate 1: $(metric pdeltad_shadow_verified_total) of $n deltas checked"
fi
mm=$(metric pdeltad_shadow_mismatch_cases_total)
[[ $mm == 0 ]] && ok "no mismatch over the fixtures" || bad "$mm mismatches over the fixtures"
cases=$(find "$WORK/q1" -mindepth 1 | wc -l)
((cases == 0)) && ok "nothing quarantined" || bad "$cases files in the quarantine directory"
for r in budget size limit state; do
	v=$(metric pdeltad_shadow_skipped_total "reason=\"$r\"")
	[[ $v == 0 ]] || bad "skipped ($r): $v"
done
ok "shadow cpu $(metric pdeltad_shadow_cpu_seconds_total) s for $n checks, peak held $(metric pdeltad_shadow_bytes_held_max) bytes"
pd_stop_server TERM

# ---- 2b. the caps: a tiny budget, a tiny upload cap ------------------------------------------
pd_start_server --workers 2 --db_sync no --shadow_rate 1 --shadow_max_bytes 100k
for s in heap-medium mutex-medium block-medium goroutine-medium heap-small; do
	mkdir -p "$WORK/out3/$s"
	"${send[@]}" --stream "cap/$s" -o "$WORK/out3/$s" "$TESTDATA/profiles/$s"/*.pb.gz >/dev/null 2>&1 ||
		bad "$s: send failed under a tiny shadow budget"
done
sleep 1
held=$(metric pdeltad_shadow_bytes_held_max)
sb=$(metric pdeltad_shadow_skipped_total 'reason="budget"')
ver=$(metric pdeltad_shadow_verified_total)
if ((held <= 102400 && sb > 0 && ver > 0)); then
	ok "shadow_max_bytes 100k: peak held $held bytes, $sb skipped (budget), $ver checked"
else
	bad "shadow_max_bytes 100k: peak held $held, skipped (budget) $sb, checked $ver"
fi
pd_stop_server TERM
pd_start_server --workers 2 --db_sync no --shadow_rate 1 --shadow_max_upload 1k
"${send[@]}" --stream cap/small -o "$WORK/out3/heap-small" "$TESTDATA/profiles/heap-small"/*.pb.gz >/dev/null 2>&1 ||
	bad "send failed under a tiny upload cap"
nsmall=$(ls "$TESTDATA/profiles/heap-small" | wc -l)
ss=$(metric pdeltad_shadow_skipped_total 'reason="size"')
[[ $ss == "$nsmall" && $(metric pdeltad_shadow_verified_total) == 0 ]] &&
	ok "shadow_max_upload 1k: all $ss uploads skipped (size)" || bad "shadow_max_upload 1k: skipped (size) $ss of $nsmall"
pd_stop_server TERM

# ---- 3. a wrong engine on purpose ------------------------------------------------------------
PBIN=${PERTURB_BINDIR:-build/perturb/bin}
case $PBIN in /*) ;; *) PBIN=$ROOT/$PBIN ;; esac
if [[ ! -x $PBIN/pdeltad ]]; then
	nice make -s -C "$ROOT" PERTURB=1 -j2 "${PBIN#"$ROOT"/}/pdeltad" >/dev/null
fi
SEQ=heap-medium
files=("$TESTDATA/profiles/$SEQ"/*.pb.gz)
nf=${#files[@]}
PD_TEST_PERTURB=1 BINDIR=$PBIN pd_start_server --workers 2 --db_sync no --shadow_rate 1 \
	--shadow_dir "$WORK/q2" --shadow_fallback 100
# The baseline and the first (wrong) delta; the check runs after the answer.
mkdir -p "$WORK/out2"
"${send[@]}" --stream w/heap -o "$WORK/out2" "${files[0]}" "${files[1]}" >"$WORK/send.out" 2>&1 ||
	bad "perturbed: send failed: $(tail -n 2 "$WORK/send.out")"
if wait_metric pdeltad_shadow_mismatch_cases_total 1; then
	ok "the wrong delta is counted as a mismatch"
else
	bad "mismatch not counted: $(metric pdeltad_shadow_mismatch_cases_total)"
fi
v=$(metric pdeltad_shadow_mismatches_total 'sample_type="alloc_objects/count",reason="value"')
[[ $v == 1 ]] && ok "counted by sample type and reason (alloc_objects/count, value)" ||
	bad "mismatches{alloc_objects/count,value} = $v"
# The rest of the sequence: answered by the slow path (fallback).
"${send[@]}" --stream w/heap --seq 3 -o "$WORK/out2" "${files[@]:2}" >"$WORK/send.out" 2>&1 ||
	bad "perturbed: send (rest) failed: $(tail -n 2 "$WORK/send.out")"
fb=$(metric pdeltad_shadow_fallback_answers_total)
[[ $fb == $((nf - 2)) ]] && ok "fallback: $fb deltas answered by the slow path" ||
	bad "fallback answers: $fb, expected $((nf - 2))"
wait_metric pdeltad_shadow_verified_total "$nf" || bad "checks: $(metric pdeltad_shadow_verified_total) of $nf"
mm=$(metric pdeltad_shadow_mismatch_cases_total)
[[ $mm == 1 ]] && ok "fallback answers checked too, no new mismatch" || bad "mismatch cases: $mm"
logged=$(grep -c "shadow_mismatch\|engine and slow path differ" "$WORK/server.log" || true)
[[ $logged == 1 ]] && ok "logged once: $(grep -o 'differ on stream.*' "$WORK/server.log" | cut -c1-150)" ||
	bad "mismatch logged $logged times"
case_dir=$(find "$WORK/q2" -mindepth 1 -maxdepth 1 -name 'case-*' | head -n 1)
if [[ -n $case_dir ]]; then
	missing=
	for f in prev.pb.gz cur.pb.gz engine.pb.gz slow.pb slow.txt diff.txt case.txt; do
		[[ -s $case_dir/$f ]] || missing+=" $f"
	done
	[[ -z $missing ]] && ok "quarantined: $(basename "$case_dir") ($(ls "$case_dir" | tr '\n' ' '))" ||
		bad "case lacks:$missing"
	grep -q "value" "$case_dir/diff.txt" && ok "diff.txt names the differing value" || bad "diff.txt: $(head -n 3 "$case_dir/diff.txt")"
	# Replay with the correct engine: equal to the slow path's output, not to the engine's.
	"$ROOT/bin/pdelta" diff "$case_dir/prev.pb.gz" "$case_dir/cur.pb.gz" -o "$WORK/replay.pb.gz" >/dev/null 2>&1 ||
		bad "pdelta diff cannot replay the case"
else
	bad "no case in shadow_dir"
fi
pd_stop_server TERM

# The oracle: the answers the client got after the mismatch (slow path) are right; the
# wrong one is wrong (the test can fail); the replay equals the slow path's output.
if "$PY" - "$WORK/out2" "${case_dir:-none}" "$WORK/replay.pb.gz" "${files[@]}" >"$WORK/or.out" 2>&1 <<PYEOF; then
import os, sys
sys.path.insert(0, "$ROOT/tests/oracle")
import oracle, pprof_pb
outdir, case, replay, files = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
o = oracle.Oracle()
for i, f in enumerate(files):
    exp = o.step(oracle.resolve(pprof_pb.load(f)))
    p = pprof_pb.load(os.path.join(outdir, os.path.basename(f)))
    d = oracle.diff_sem(exp.sem, oracle.semantic(p))
    if i == 1 and not d:
        sys.exit("the perturbed delta equals the oracle's: the perturbation did nothing")
    if i != 1 and d:
        print(os.path.basename(f), *d, sep="\n  "); sys.exit(1)
    if i >= 2:
        probs = oracle.validate(p, minimal=False)
        if probs:
            print(os.path.basename(f), "invalid:", *probs, sep="\n  "); sys.exit(1)
    if i == 1:
        slow = oracle.semantic(pprof_pb.load(os.path.join(case, "slow.pb")))
        if oracle.diff_sem(exp.sem, slow):
            sys.exit("quarantined slow.pb differs from the oracle")
        if oracle.diff_sem(slow, oracle.semantic(pprof_pb.load(replay))):
            sys.exit("replay with pdelta diff differs from slow.pb")
print("ok")
PYEOF
	ok "oracle: delta 2 wrong (perturbed), fallback deltas 3..$nf right and valid, slow.pb = replay = oracle"
else
	bad "oracle: $(tail -n 5 "$WORK/or.out")"
fi

# ---- 4. pdelta seq --shadow and pdelta scrape --local --shadow --------------------------------
[[ -x $PBIN/pdelta ]] || nice make -s -C "$ROOT" PERTURB=1 -j2 "${PBIN#"$ROOT"/}/pdelta" >/dev/null
bad_seq=
for dir in "$TESTDATA"/profiles/*/; do
	"$BINDIR/pdelta" seq --shadow -o "$WORK/seq-$(basename "$dir")" "$dir"*.pb.gz >/dev/null 2>"$WORK/seq.err" ||
		bad_seq+=" $(basename "$dir")"
done
[[ -z $bad_seq ]] && ok "pdelta seq --shadow: every fixture sequence agrees with the slow path" ||
	bad "pdelta seq --shadow failed on:$bad_seq ($(tail -n 2 "$WORK/seq.err"))"
if PD_TEST_PERTURB=1 "$PBIN/pdelta" seq --shadow -o "$WORK/seqp" "${files[@]}" >/dev/null 2>"$WORK/seqp.err"; then
	bad "pdelta seq --shadow: the perturbed engine passed"
else
	grep -q "SHADOW MISMATCH" "$WORK/seqp.err" && ok "pdelta seq --shadow catches the perturbed engine: $(tail -n 1 "$WORK/seqp.err")" ||
		bad "pdelta seq --shadow (perturbed): $(tail -n 2 "$WORK/seqp.err")"
fi

# A target serving the fixture sequence, one file per scrape (the last one again after it).
TPORT=$(free_port)
"$PY" - "$TPORT" "${files[@]}" >/dev/null 2>&1 <<'EOF2' &
import http.server, sys
port, files, n = int(sys.argv[1]), sys.argv[2:], [0]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = open(files[min(n[0], len(files) - 1)], "rb").read()
        n[0] += 1
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
EOF2
TARGET_PID=$!
trap 'kill -KILL $TARGET_PID 2>/dev/null || true; pd_cleanup' EXIT
for _ in $(seq 50); do "$PY" -c "import socket; socket.create_connection(('127.0.0.1', $TPORT), 1)" 2>/dev/null && break; sleep 0.1; done
scrape() { # scrape BIN OUT: one run over the whole sequence
	"$1" scrape --local --shadow --target "t=http://127.0.0.1:$TPORT" --types heap --interval 50ms \
		--count "$nf" --out-dir "$2" >"$2.log" 2>"$2.err"
}
scrape "$BINDIR/pdelta" "$WORK/sc1" || bad "scrape --local --shadow exited $?: $(tail -n 2 "$WORK/sc1.err")"
n=$(grep -c ' seq=' "$WORK/sc1.log" || true)
if ((n == nf)) && ! grep -q "shadow mismatch" "$WORK/sc1.err"; then
	ok "scrape --local --shadow: $n deliveries, no mismatch"
else
	bad "scrape --local --shadow: $n deliveries; $(grep -m1 'shadow mismatch' "$WORK/sc1.err")"
fi
PD_TEST_PERTURB=1 scrape "$PBIN/pdelta" "$WORK/sc2" || true
m=$(grep -c "shadow mismatch" "$WORK/sc2.err" || true)
((m > 0)) && ok "scrape --local --shadow (perturbed): $m mismatches logged: $(grep -m1 'shadow mismatch' "$WORK/sc2.err" | cut -c1-140)" ||
	bad "scrape --local --shadow (perturbed): no mismatch logged"
if "$BINDIR/pdelta" scrape --shadow --server 127.0.0.1:1 --target "t=http://127.0.0.1:$TPORT" --once \
	--out-dir "$WORK/sc3" >/dev/null 2>"$WORK/sc3.err"; then
	bad "scrape --shadow without --local accepted"
else
	grep -q "give --local" "$WORK/sc3.err" && ok "scrape --shadow without --local refused: $(head -n 1 "$WORK/sc3.err")" ||
		bad "scrape --shadow without --local: $(head -n 1 "$WORK/sc3.err")"
fi
kill -KILL "$TARGET_PID" 2>/dev/null || true
if grep -E "Sanitizer|runtime error" "$WORK/server.log" "$WORK"/*.err >"$WORK/san" 2>/dev/null; then
	bad "sanitizer reports: $(head -n 3 "$WORK/san")"
else
	ok "no sanitizer report in the server log or the clients' stderr"
fi
pd_finish
