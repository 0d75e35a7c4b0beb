#!/usr/bin/env bash
# test_deploy.sh: the deploy files work as shipped, and the operations features.
#
#   - the image's HEALTHCHECK (taken from deploy/Dockerfile, /opt/pdelta/bin mapped to
#     $BINDIR, the image config mapped to a local copy) run under dash: 0 against a
#     running pdeltad listening on 0.0.0.0 (probed on loopback), 1 against nothing,
#     1 within its deadline against a port that accepts and never answers
#   - deploy_check.py over a `make install` tree: files the Dockerfile / k8s manifests
#     (statefulset.yaml, cluster.yaml) / unit reference exist, YAML documents parse and
#     cross-reference, README Deploy
#   - make install puts man pages in PREFIX/share/man; they render without warnings
#     and list every --help option; systemd-analyze verify is clean on the installed unit
#   - PDELTAD_<SETTING> variables: flag > environment > file; bad values name the variable
#   - log_format=json: every line one JSON object; connection lines carry connection,
#     peer, tenant, event, stream
#   - per-tenant series bounded by metrics_tenants (the second tenant lands in "_other")
#   - sd_notify: READY=1 once listening, WATCHDOG=1 under WATCHDOG_USEC, STOPPING=1 on
#     SIGTERM (when built with libsystemd; --version says which)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
pd_init deploy
pd_pki
PDELTAD=$BINDIR/pdeltad

# ---- the image's HEALTHCHECK under dash ------------------------------------------------------------------
# The container config with its paths mapped to this test's files and free ports.
mkdir -p "$WORK/etc/certs"
cp "$WORK/certs/server.pem" "$WORK/certs/server.key" "$WORK/certs/ca.pem" "$WORK/tenants" "$WORK/etc/certs/"
sed -e "s|/etc/pdelta/certs/|$WORK/etc/certs/|" -e "s|/var/lib/pdelta/|$WORK/|" \
	-e "s|0.0.0.0:7433|0.0.0.0:$PORT|" -e "s|0.0.0.0:7434|0.0.0.0:$MPORT|" \
	"$ROOT/deploy/pdeltad.container.conf" >"$WORK/etc/pdeltad.conf"
grep -q "0.0.0.0:$MPORT" "$WORK/etc/pdeltad.conf" && ok "container config listens on 0.0.0.0" ||
	bad "container config: $(grep listen "$WORK/etc/pdeltad.conf")"
"$PY" - "$ROOT/deploy/Dockerfile" "$BINDIR" "$WORK/etc/pdeltad.conf" >"$WORK/hc.argv" <<'PY'
import json, re, sys
text = re.sub(r"\\\n\s*", " ", open(sys.argv[1]).read())
cmd = json.loads(re.search(r"^HEALTHCHECK .*?CMD (\[.*\])\s*$", text, re.M).group(1))
for a in cmd:
    print(a.replace("/opt/pdelta/bin", sys.argv[2]).replace("/etc/pdelta/pdeltad.conf", sys.argv[3]))
PY
mapfile -t HC <"$WORK/hc.argv"
[[ ${HC[0]} == "$PDELTAD" ]] && ok "HEALTHCHECK runs pdeltad: ${HC[*]#$WORK}" || bad "HEALTHCHECK: ${HC[*]}"
hc() { # the command exactly as the argv, run by dash (no bash, no /dev/tcp)
	local q
	q=$(printf "'%s' " "${HC[@]}")
	timeout 10 dash -c "$q" >"$WORK/hc.out" 2>&1
}
rc=0; hc || rc=$?
[[ $rc == 1 ]] && ok "HEALTHCHECK with no server: exit 1 ($(cat "$WORK/hc.out"))" || bad "HEALTHCHECK no server: exit $rc"

"$PDELTAD" --config "$WORK/etc/pdeltad.conf" >>"$WORK/server.log" 2>&1 &
SERVER_PID=$!
pd_wait_http "http://127.0.0.1:$MPORT/healthz" "$SERVER_PID" || true
rc=0; hc || rc=$?
[[ $rc == 0 ]] && ok "HEALTHCHECK against the running container config: exit 0 ($(cat "$WORK/hc.out"))" ||
	bad "HEALTHCHECK healthy: exit $rc: $(cat "$WORK/hc.out")"
head -n1 "$WORK/server.log" | "$PY" -c 'import json,sys; json.loads(sys.stdin.readline())' 2>/dev/null &&
	ok "the container config logs JSON" || bad "container config log: $(head -n1 "$WORK/server.log")"
pd_stop_server
rc=0; hc || rc=$?
[[ $rc == 1 ]] && ok "HEALTHCHECK after the server stopped: exit 1" || bad "HEALTHCHECK stopped: exit $rc"
# A port that accepts and never answers: the deadline (2 s) decides.
"$PY" -c "
import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', $MPORT)); s.listen(4)
c = s.accept(); time.sleep(8)" &
HANG=$!
sleep 0.3
t0=$(date +%s%N)
rc=0; "$PDELTAD" --config "$WORK/etc/pdeltad.conf" --healthcheck >"$WORK/hc.out" 2>&1 || rc=$?
ms=$((($(date +%s%N) - t0) / 1000000))
kill "$HANG" 2>/dev/null || true; wait "$HANG" 2>/dev/null || true
[[ $rc == 1 ]] && ((ms < 3500)) && ok "--healthcheck against a silent port: exit 1 after $ms ms" ||
	bad "--healthcheck silent port: exit $rc after $ms ms: $(cat "$WORK/hc.out")"
rc=0; "$PDELTAD" --config "$WORK/etc/pdeltad.conf" --metrics-listen off --healthcheck >"$WORK/hc.out" 2>&1 || rc=$?
[[ $rc == 1 ]] && grep -q "off" "$WORK/hc.out" && ok "--healthcheck with metrics off: exit 1, says why" ||
	bad "--healthcheck metrics off: exit $rc"
rc=0; "$PDELTAD" --config "$WORK/etc/pdeltad.conf" --bogus 1 --healthcheck >/dev/null 2>&1 || rc=$?
[[ $rc == 1 ]] && ok "--healthcheck with a bad setting: exit 1 (never Docker's reserved 2)" || bad "--healthcheck bad setting: exit $rc"

# ---- install tree, deploy files, man pages, unit --------------------------------------------------------
PREFIX=$WORK/prefix
variant=$(basename "${BUILD:-build/release}")
san=()
[[ $variant == release ]] || san=(SANITIZER="$variant")
if make -C "$ROOT" -s "${san[@]}" install PREFIX="$PREFIX" >"$WORK/install.log" 2>&1; then
	ok "make install PREFIX=..."
else
	bad "make install: $(tail -n 5 "$WORK/install.log")"
fi
out=$("$PY" "$ROOT/tests/integration/deploy_check.py" "$ROOT" "$PREFIX" 2>&1) && rc=0 || rc=$?
echo "$out" | grep -v 'passed,'
[[ $rc == 0 ]] && ok "deploy_check.py: $(tail -n1 <<<"$out")" || bad "deploy_check.py: $(tail -n1 <<<"$out")"

for page in man8/pdeltad.8 man1/pdelta.1 man1/pdeltactl.1 man3/libpdelta.3; do
	f=$PREFIX/share/man/$page
	if [[ ! -f $f ]]; then
		bad "man page $page not installed"
		continue
	fi
	warn=$(LC_ALL=C.UTF-8 MANWIDTH=200 man --warnings -l "$f" 2>&1 >"$WORK/man.txt" | head -3)
	[[ -z $warn ]] && ok "man $page renders without warnings" || bad "man $page: $warn"
done
# Every option of every --help is in its page (they are generated from it: this fails if
# the build's page is stale or the generator drops lines).
check_opts() { # page prog args...
	local page=$1 missing=()
	shift
	MANWIDTH=200 man -l "$PREFIX/share/man/$page" 2>/dev/null | sed 's/‐/-/g' >"$WORK/man.txt"
	for o in $("$BINDIR/$1" "${@:2}" 2>&1 | grep -oE -- '--[a-z][a-z0-9-]+' | sort -u); do
		grep -q -- "$o" "$WORK/man.txt" || missing+=("$o")
	done
	((${#missing[@]} == 0)) && ok "$page lists every option of $*" || bad "$page misses ${missing[*]}"
}
check_opts man8/pdeltad.8 pdeltad --help
check_opts man1/pdelta.1 pdelta send --help
check_opts man1/pdelta.1 pdelta scrape --help
check_opts man1/pdeltactl.1 pdeltactl --help
MANWIDTH=200 man -l "$PREFIX/share/man/man3/libpdelta.3" 2>/dev/null | grep -q 'pdelta_admin' &&
	ok "libpdelta.3 carries the API (pdelta_admin)" || bad "libpdelta.3 has no pdelta_admin"
UNIT=$PREFIX/lib/systemd/system/pdeltad.service
grep -q "^ExecStart=$PREFIX/bin/pdeltad " "$UNIT" && ok "installed unit runs PREFIX/bin/pdeltad" || bad "unit ExecStart: $(grep ExecStart "$UNIT")"
if command -v systemd-analyze >/dev/null; then
	out=$(cd "$WORK" && MANPATH=$PREFIX/share/man systemd-analyze verify "$UNIT" 2>&1) && rc=0 || rc=$?
	[[ $rc == 0 && -z $out ]] && ok "systemd-analyze verify: clean" || bad "systemd-analyze verify (exit $rc): $out"
else
	echo "skip systemd-analyze verify: systemd-analyze not installed"
fi

# ---- environment variables: flag > environment > file ------------------------------------------------------
DEAD=$(free_port)
pd_conf "127.0.0.1:$DEAD" "$WORK/env.db" >"$WORK/env.conf"
"$BINDIR/pdeltad" --config "$WORK/env.conf" --metrics-listen "127.0.0.1:$MPORT" >>"$WORK/server.log" 2>&1 &
SERVER_PID=$!
pd_wait_http "http://127.0.0.1:$MPORT/healthz" "$SERVER_PID" || true
rc=0; "$PDELTAD" --config "$WORK/env.conf" --healthcheck >/dev/null 2>&1 || rc=$?
[[ $rc == 1 ]] && ok "file alone: metrics_listen from the file (nothing there)" || bad "file alone: exit $rc"
rc=0; PDELTAD_METRICS_LISTEN=127.0.0.1:$MPORT "$PDELTAD" --config "$WORK/env.conf" --healthcheck >/dev/null 2>&1 || rc=$?
[[ $rc == 0 ]] && ok "PDELTAD_METRICS_LISTEN beats the file" || bad "env over file: exit $rc"
rc=0; PDELTAD_METRICS_LISTEN=127.0.0.1:$MPORT "$PDELTAD" --config "$WORK/env.conf" --metrics-listen "127.0.0.1:$DEAD" \
	--healthcheck >/dev/null 2>&1 || rc=$?
[[ $rc == 1 ]] && ok "a flag beats PDELTAD_METRICS_LISTEN" || bad "flag over env: exit $rc"
rc=0; PDELTAD_CONFIG=$WORK/env.conf PDELTAD_METRICS_LISTEN=127.0.0.1:$MPORT "$PDELTAD" --healthcheck >/dev/null 2>&1 || rc=$?
[[ $rc == 0 ]] && ok "PDELTAD_CONFIG names the config file" || bad "PDELTAD_CONFIG: exit $rc"
pd_stop_server
rc=0; PDELTAD_WORKERS=lots "$PDELTAD" --config "$WORK/env.conf" --check >/dev/null 2>"$WORK/err" || rc=$?
[[ $rc == 2 ]] && grep -q "PDELTAD_WORKERS: workers: 'lots'" "$WORK/err" && ok "a bad PDELTAD_WORKERS: exit 2 naming the variable" ||
	bad "bad env value: exit $rc: $(cat "$WORK/err")"
rc=0; PDELTAD_MAX_FRAME=1k "$PDELTAD" --config "$WORK/env.conf" --check >/dev/null 2>"$WORK/err" || rc=$?
[[ $rc == 2 ]] && grep -q "PDELTAD_MAX_FRAME" "$WORK/err" && ok "PDELTAD_MAX_FRAME is checked like the flag" || bad "env max_frame: exit $rc"
rc=0; PDELTAD_MAX_SAMPLES=x "$PDELTAD" --config "$WORK/env.conf" --check >/dev/null 2>"$WORK/err" || rc=$?
[[ $rc == 2 ]] && grep -q "PDELTAD_MAX_SAMPLES" "$WORK/err" && ok "engine limits too (PDELTAD_MAX_SAMPLES)" || bad "env engine limit: exit $rc"
"$PDELTAD" --help >"$WORK/help"
grep -q "PDELTAD_<SETTING>" "$WORK/help" && ok "--help documents PDELTAD_<SETTING>" || bad "--help: no PDELTAD_"

# ---- JSON logs, and a warning for an unknown PDELTAD_ variable -------------------------------------------------
: >"$WORK/server.log"
PDELTAD_LOG_FORMAT=json PDELTAD_NO_SUCH_THING=1 PDELTAD_METRICS_TENANTS=1 pd_start_server --log-level debug
"$BINDIR/pdelta" send --server "127.0.0.1:$PORT" --ca "$CA" --token "$AGENT_TOKEN" --stream web-1/heap \
	-o "$WORK/out" "$TESTDATA/profiles/heap-small/000.pb.gz" >"$WORK/send.out" 2>&1 ||
	bad "pdelta send: $(cat "$WORK/send.out")"
# a second tenant (ops) past metrics_tenants=1 (set through the environment): "_other"
"$BINDIR/pdelta" send --server "127.0.0.1:$PORT" --ca "$CA" --token "$ADMIN_TOKEN" --stream ops/heap \
	-o "$WORK/out2" "$TESTDATA/profiles/heap-small/000.pb.gz" >"$WORK/send.out" 2>&1 ||
	bad "pdelta send (ops): $(cat "$WORK/send.out")"
out=$("$PY" "$ROOT/tests/integration/metrics_check.py" "http://127.0.0.1:$MPORT/metrics" --tenant acme \
	--max-tenants 1 --other 2>&1) && rc=0 || rc=$?
echo "$out" | grep -v 'passed,'
[[ $rc == 0 ]] && ok "per-tenant metrics bounded by PDELTAD_METRICS_TENANTS=1: $(tail -n1 <<<"$out")" ||
	bad "per-tenant bound: $(tail -n1 <<<"$out")"
pd_stop_server
"$PY" - "$WORK/server.log" <<'PY' && ok "log_format=json: every line an object; auth/result/close carry context" || bad "JSON log lines (above)"
import json, sys
lines = open(sys.argv[1]).read().splitlines()
objs = []
for l in lines:
    try:
        objs.append(json.loads(l))
    except ValueError:
        sys.exit("not JSON: %r" % l)
assert lines and all({"time", "level", "msg"} <= o.keys() for o in objs), "time/level/msg"
ev = {o.get("event"): o for o in objs}
for e in ("auth", "result", "close"):
    assert e in ev, "no %s event in %s" % (e, sorted(k for k in ev if k))
    o = ev[e]
    assert isinstance(o["connection"], int) and o["peer"].startswith("127.0.0.1:"), o
assert any(o.get("event") == "auth" and o.get("tenant") == "acme" for o in objs), "auth of acme"
assert any(o.get("event") == "result" and o.get("stream") == "web-1/heap" for o in objs), "result of web-1/heap"
assert any("PDELTAD_NO_SUCH_THING" in o["msg"] and o["level"] == "warn" for o in objs), "no warning"
PY

# ---- sd_notify ------------------------------------------------------------------------------------------------
if "$PDELTAD" --version | grep -q "systemd yes"; then
	pkg-config --exists libsystemd && ok "--version: systemd yes (libsystemd found at build time)" ||
		bad "--version says systemd yes without libsystemd"
	: >"$WORK/server.log"
	"$PY" - "$WORK" "$PDELTAD" "$PORT" "$MPORT" <<'PY' && ok "sd_notify: READY=1 once listening, WATCHDOG=1, STOPPING=1 on SIGTERM" || bad "sd_notify (above)"
import os, signal, socket, subprocess, sys, time
work, pdeltad, port, mport = sys.argv[1:]
path = os.path.join(work, "notify.sock")
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
s.settimeout(5)
env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC="300000")
p = subprocess.Popen([pdeltad, "--listen", "127.0.0.1:" + port, "--metrics-listen", "127.0.0.1:" + mport,
                      "--tls-cert", work + "/certs/server.pem", "--tls-key", work + "/certs/server.key",
                      "--tenants", work + "/tenants", "--db", work + "/notify.db"],
                     env=env, stderr=open(work + "/server.log", "a"))
try:
    msg = s.recv(4096).decode()
    assert "READY=1" in msg, msg
    socket.create_connection(("127.0.0.1", int(port)), timeout=1).close()  # listening when READY came
    t0, dogs = time.time(), 0
    while time.time() - t0 < 1.0:
        if "WATCHDOG=1" in s.recv(4096).decode():
            dogs += 1
    assert dogs >= 3, "%d watchdog pings in 1 s at WATCHDOG_USEC=300ms" % dogs
    p.send_signal(signal.SIGTERM)
    while True:
        m = s.recv(4096).decode()
        if "STOPPING=1" in m:
            break
    assert p.wait(10) == 0
finally:
    if p.poll() is None:
        p.kill()
PY
else
	pkg-config --exists libsystemd && bad "--version: systemd no although libsystemd is installed" ||
		ok "--version: systemd no (built without libsystemd)"
fi
# Without libsystemd the notify module must still build, as no-ops.
if cc -std=c11 -D_GNU_SOURCE -Wall -Werror -I"$ROOT/server" -c "$ROOT/server/pd_notify.c" -o "$WORK/notify.o" &&
	! nm "$WORK/notify.o" | grep -q sd_notify; then
	ok "pd_notify.c builds without libsystemd (no sd_notify reference)"
else
	bad "pd_notify.c without PD_HAVE_SYSTEMD"
fi

pd_finish
