#!/usr/bin/env bash
# test_restore.sh: restoring a database backup never double-counts for version-3 clients.
#
# Backup (sqlite3 .backup) at seq 3, continue to seq 6, restore (stop the server, copy the
# backup back, start), then send seq 7:
#   - a version-3 client that says it last had seq 6 answered (DELTA_BEGIN flag AFTER) gets
#     BASELINE state-lost with an empty profile; seq 8 is a DELTA again;
#   - `pdelta send --after 6` (libpdelta, version 3) reports BASELINE state-lost;
#   - a version-2 client gets today's answer: a DELTA over seqs 4-7 (documented: it cannot say
#     what it had, so the intervals 4-6 are delivered again);
#   - a version-2 connection that retries the state-lost request gets the replay with the
#     closest version-2 reason, evicted;
#   - flag AFTER on a version-2 connection is a protocol error.
# Env: BINDIR (default bin).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
pd_init restore
pd_pki
P=$TESTDATA/profiles/allocs-small
for i in 0 1 2 3 4 5 6 7; do cp "$P/00$i.pb.gz" "$WORK/p$i.pb.gz"; done
cp "$P/007.pb.gz" "$WORK/p8.pb.gz"

py() { "$PY" - "$ROOT/tests/integration" "$PORT" "$CA" "$AGENT_TOKEN" "$WORK" "$@"; }

run_seqs() { # run_seqs STREAM FIRST LAST: seqs FIRST..LAST (files p1..), version 3, each after the previous
	py "$@" <<'PYEOF'
import sys
sys.path.insert(0, sys.argv[1])
import pdproto
port, ca, tok, work, stream, a, b = int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6], int(sys.argv[7]), int(sys.argv[8])
c = pdproto.Client.connect("127.0.0.1", port, ca, token=tok, versions=(1, 3))
assert c.hello.version == 3, c.hello.version
for s in range(a, b + 1):
    r = c.delta(stream, s, 7, open("%s/p%d.pb.gz" % (work, s), "rb").read(), after=s - 1 if s > 1 else None)
    print(s, r.status, r.reason)
c.close()
PYEOF
}

pd_start_server
out=$(run_seqs s/v3 1 3; run_seqs s/v2 1 3; run_seqs s/retry 1 3; run_seqs s/cli 1 3)
sqlite3 "$WORK/state.db" ".backup '$WORK/backup.db'"
out+=$'\n'$(run_seqs s/v3 4 6; run_seqs s/v2 4 6; run_seqs s/retry 4 6; run_seqs s/cli 4 6)
grep -q '^6 DELTA' <<<"$out" && ok "seqs 1..6 applied before the restore" || bad "before restore: $out"
pd_stop_server
rm -f "$WORK/state.db-wal" "$WORK/state.db-shm"
cp "$WORK/backup.db" "$WORK/state.db"
pd_start_server

res=$(py <<'PYEOF'
import sys
sys.path.insert(0, sys.argv[1])
import pdproto
port, ca, tok, work = int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
data = lambda s: open("%s/p%d.pb.gz" % (work, s), "rb").read()
c3 = pdproto.Client.connect("127.0.0.1", port, ca, token=tok, versions=(1, 3))
r = c3.delta("s/v3", 7, 7, data(7), after=6)
print("v3-7", r.status, r.reason, r.samples_out)
r = c3.delta("s/v3", 8, 7, data(8), after=7)
print("v3-8", r.status, r.reason)
r = c3.delta("s/retry", 7, 7, data(7), after=6)
print("retry3-7", r.status, r.reason)
c2 = pdproto.Client.connect("127.0.0.1", port, ca, token=tok, versions=(1, 2))
r = c2.delta("s/v2", 7, 7, data(7))
print("v2-7", r.status, r.reason)
r = c2.delta("s/retry", 7, 7, data(7))
print("retry2-7", r.status, r.reason, r.orig_status)
try:
    c2.send_raw(pdproto.frame(pdproto.DELTA_BEGIN, pdproto.begin_payload("s/v2", 8, 7, after=7), 99,
                              pdproto.FLAG_AFTER))
    c2.read_response(99)
    print("v2-after accepted")
except pdproto.ProtoError as e:
    print("v2-after", e.code_name, e.detail_name)
PYEOF
)
echo "$res"
grep -q '^v3-7 BASELINE state-lost 0$' <<<"$res" && ok "version 3, after 6: seq 7 is BASELINE state-lost, empty" || bad "v3 seq 7: $res"
grep -q '^v3-8 DELTA -$' <<<"$res" && ok "version 3: seq 8 is a DELTA again" || bad "v3 seq 8: $res"
grep -q '^v2-7 DELTA -$' <<<"$res" && ok "version 2: seq 7 is a DELTA over 4-7, as before (documented)" || bad "v2 seq 7: $res"
grep -q '^retry2-7 DUPLICATE evicted BASELINE$' <<<"$res" && ok "version 2 replay of a state-lost answer says evicted" || bad "v2 replay: $res"
grep -q '^v2-after protocol BAD_FRAME$' <<<"$res" && ok "flag AFTER on version 2 is a protocol error" || bad "v2 after: $res"

"$BINDIR/pdelta" send --server "127.0.0.1:$PORT" --ca "$CA" --token "$AGENT_TOKEN" --stream s/cli \
	--incarnation 7 --seq 7 --after 6 -o "$WORK/out" "$WORK/p7.pb.gz" >"$WORK/send.out" 2>&1 || true
grep -q 'state-lost' "$WORK/send.out" && ok "pdelta send --after 6: BASELINE state-lost" || bad "pdelta send: $(cat "$WORK/send.out")"
n=$("$PY" -c "import urllib.request; t=urllib.request.urlopen('http://127.0.0.1:$MPORT/metrics').read().decode(); print([l.split()[-1] for l in t.splitlines() if l.startswith('pdeltad_baselines_total{reason=\"state-lost\"}')][0])")
((n >= 3)) && ok "pdeltad_baselines_total{reason=\"state-lost\"} = $n" || bad "state-lost baselines: $n"
pd_stop_server
pd_finish
