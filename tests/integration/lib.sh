# lib.sh: shared helpers of the integration tests (source it, after `set -euo pipefail`).
#
#   pd_init NAME            work dir, counters, EXIT trap (kills the server, removes the dir)
#   ok MSG / bad MSG        count a check
#   free_port               a free 127.0.0.1 TCP port
#   pd_pki                  dev certs in $WORK/certs; tokens + tenants file in $WORK
#                           ($AGENT_TOKEN of tenant acme, $ADMIN_TOKEN of role admin)
#   pd_start_server [FLAGS] pdeltad on $PORT (metrics on $MPORT), waits for /healthz
#   pd_stop_server [SIG]    stop it (default TERM) and wait
#   pd_finish               prints "N passed, N failed" and exits 1 on any failure
#
# Env: BINDIR (default bin); PDELTA_TESTDATA=DIR names an optional extra corpus
# (DIR/profiles/<seq>/*.pb.gz, DIR/fastdelta/*.pprof) that the oracle suites also run over.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BINDIR=${BINDIR:-bin}
case $BINDIR in /*) ;; *) BINDIR=$ROOT/$BINDIR ;; esac
TESTDATA=$ROOT/tests/data  # the repository's fixtures (tests/data/README.md)
EXTRA_TESTDATA=${PDELTA_TESTDATA:-}
if [[ -n $EXTRA_TESTDATA ]]; then EXTRA_TESTDATA=$(cd "$EXTRA_TESTDATA" && pwd); fi
PY=/usr/bin/python3
PASS=0
FAIL=0
SERVER_PID=

ok() { PASS=$((PASS + 1)); echo "ok   $*"; }
bad() { FAIL=$((FAIL + 1)); echo "FAIL $*"; }

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

pd_cleanup() {
	if [[ -n $SERVER_PID ]]; then
		kill -KILL "$SERVER_PID" 2>/dev/null || true
		wait "$SERVER_PID" 2>/dev/null || true
	fi
	if ((FAIL > 0)) && [[ -f $WORK/server.log ]]; then
		echo "---- server log (tail) ----"
		tail -n 30 "$WORK/server.log"
	fi
	rm -rf "$WORK"
}

pd_init() {
	WORK=$(mktemp -d "${TMPDIR:-/tmp}/pdelta-$1.XXXXXX")
	trap pd_cleanup EXIT
	PORT=$(free_port)
	MPORT=$(free_port)
	while [[ $MPORT == "$PORT" ]]; do MPORT=$(free_port); done
}

pd_pki() {
	bash "$ROOT/deploy/certs/gen-certs.sh" "$WORK/certs" >/dev/null
	CA=$WORK/certs/ca.pem
	AGENT_TOKEN=tok-agent-$(openssl rand -hex 16)
	ADMIN_TOKEN=tok-admin-$(openssl rand -hex 16)
	{
		echo "tenant=acme role=agent token_sha256=$(printf '%s' "$AGENT_TOKEN" | "$BINDIR/pdeltad" --hash-token)"
		echo "tenant=ops role=admin token_sha256=$(printf '%s' "$ADMIN_TOKEN" | "$BINDIR/pdeltad" --hash-token)"
	} >"$WORK/tenants"
}

pd_start_server() {
	"$BINDIR/pdeltad" --listen "127.0.0.1:$PORT" --metrics_listen "127.0.0.1:$MPORT" \
		--tls_cert "$WORK/certs/server.pem" --tls_key "$WORK/certs/server.key" \
		--tenants "$WORK/tenants" --db "$WORK/state.db" "$@" >>"$WORK/server.log" 2>&1 &
	SERVER_PID=$!
	for _ in $(seq 100); do
		"$PY" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$MPORT/healthz', timeout=1)" \
			2>/dev/null && return 0
		kill -0 "$SERVER_PID" 2>/dev/null || break
		sleep 0.1
	done
	echo "pdeltad did not come up:" >&2
	tail -n 20 "$WORK/server.log" >&2
	return 1
}

pd_stop_server() {
	[[ -n $SERVER_PID ]] || return 0
	kill "-${1:-TERM}" "$SERVER_PID" 2>/dev/null || true
	wait "$SERVER_PID" 2>/dev/null || true
	SERVER_PID=
}

pd_finish() {
	echo "$PASS passed, $FAIL failed"
	((FAIL == 0))
}
