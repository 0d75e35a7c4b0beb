#!/usr/bin/env bash
# demo.sh (`make demo`): installs missing packages, builds, makes dev
# certificates, starts pdeltad on a temporary SQLite store on a free loopback
# port, streams a sample sequence through it with `pdelta send`, shows the
# stream with pdeltactl and a few /metrics lines, then stops the server.
# DEMO_SEQ=heap-medium picks another sequence; DEMO_KEEP=1 keeps the work dir.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TD=${PDELTA_TESTDATA:-$ROOT/../shared/testdata}
SEQ=${DEMO_SEQ:-heap-small}

bash deploy/install-deps.sh
make -s -j2 all

work=$(mktemp -d "${TMPDIR:-/tmp}/pdelta-demo.XXXXXX")
pid=
cleanup() {
	[ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
	[ "${DEMO_KEEP:-0}" = 1 ] && echo "work dir kept: $work" || rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
mport=$(free_port)

echo "== dev certificates (deploy/certs/gen-certs.sh)"
bash deploy/certs/gen-certs.sh "$work/certs" >/dev/null
agent_token=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
admin_token=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
{
	echo "tenant=demo role=agent token_sha256=$(printf '%s' "$agent_token" | bin/pdeltad --hash-token)"
	echo "tenant=ops role=admin token_sha256=$(printf '%s' "$admin_token" | bin/pdeltad --hash-token)"
} >"$work/tenants"

echo "== starting pdeltad on 127.0.0.1:$port (metrics on :$mport, state in $work/state.db)"
bin/pdeltad --listen "127.0.0.1:$port" --metrics_listen "127.0.0.1:$mport" \
	--tls_cert "$work/certs/server.pem" --tls_key "$work/certs/server.key" \
	--tenants "$work/tenants" --db "$work/state.db" >"$work/pdeltad.log" 2>&1 &
pid=$!
for _ in $(seq 50); do
	python3 - "$mport" <<'PY' 2>/dev/null && break
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/healthz", timeout=1).read()
PY
	sleep 0.1
done

echo "== pdelta send: $SEQ ($(ls "$TD/profiles/$SEQ" | wc -l) cumulative profiles) as stream demo/$SEQ"
send=(bin/pdelta send --server "127.0.0.1:$port" --ca "$work/certs/ca.pem" --token "$agent_token"
	--stream "demo/$SEQ" --incarnation 42)
"${send[@]}" -o "$work/out" "$TD/profiles/$SEQ"/*.pb.gz

last=$(ls "$TD/profiles/$SEQ"/*.pb.gz | tail -n 1)
n=$(ls "$TD/profiles/$SEQ"/*.pb.gz | wc -l)
echo "== a retry of the last request (same sequence number $n, same bytes): DUPLICATE, same delta"
"${send[@]}" --seq "$n" -o "$work/retry" "$last"
cmp "$work/out/$(basename "$last")" "$work/retry/$(basename "$last")" && echo "retry returned byte-identical delta"

echo "== a delta opened with the local engine (pdelta inspect)"
bin/pdelta inspect "$work/out/001.pb.gz"

echo "== pdeltactl (admin token)"
ctl=(bin/pdeltactl --server "127.0.0.1:$port" --ca "$work/certs/ca.pem" --token "$admin_token")
"${ctl[@]}" streams --tenant demo
"${ctl[@]}" stream "demo/$SEQ" --tenant demo

echo "== /metrics (excerpt)"
python3 - "$mport" <<'PY'
import sys, urllib.request
body = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=2).read().decode()
for line in body.splitlines():
    if line.startswith(("pdeltad_requests_total", "pdeltad_connections_total", "pdeltad_streams_cached", "pdeltad_store_commits_total", "pdeltad_profile_bytes")):
        print(line)
PY

echo "== stopping pdeltad (SIGTERM drains)"
kill -TERM "$pid"
wait "$pid" || true
pid=
tail -n 3 "$work/pdeltad.log"
echo "demo done"
