# lib.sh: shared helpers of the integration tests (source it, after `set -euo pipefail`).
#
#   pd_init NAME            work dir, counters, EXIT trap (kills the server, removes the dir;
#                           KEEP_WORK=1 keeps the dir)
#   pd_at_exit CMD          CMD (a string, eval'd) also runs at exit, before the above
#   pd_need PROG...         exits 1 unless each program is built
#   ok MSG / bad MSG        count a check
#   pd_check NAME CMD...    ok NAME when CMD succeeds, else bad NAME
#   pd_tally OUTPUT [WHO]   adds a helper's "N passed, N failed" line to ours, prints its other lines
#   free_port               a free 127.0.0.1 TCP port
#   pd_certs DIR            dev certificates (deploy/certs/gen-certs.sh) in DIR
#   pd_hash TOKEN           the token's token_sha256 for a tenants file
#   pd_tenants FILE TENANT:ROLE:TOKEN...
#                           a tenants file: a token_sha256 line per argument, then pd_certs'
#                           client certificates (agent-acme: agent of acme; admin: admin of acme)
#   pd_conf METRICS DB      config lines of a server on $PORT with pd_pki's certificates and
#                           $WORK/tenants, metrics_listen METRICS, database DB
#   pd_wait_http URL [PID]  until URL answers (10 s; 1 sooner if PID exits)
#   pd_wait_port PORT [PID] until 127.0.0.1:PORT accepts a TCP connection (same limits)
#   pd_wait_file FILE [PID] until FILE is not empty (same limits)
#   pd_metric NAME [DEFAULT] the value of NAME (with its labels) in $MPORT's /metrics, DEFAULT
#                           (else nothing) when absent
#   pd_jobs_init / pd_job NAME CMD... / pd_jobs_tally HEAD_LINES [verbose]
#                           a pool of $PDELTA_JOBS (default 2) background checks, each
#                           printing a "check_seq ...: N passed, N failed" line; the tally
#                           adds them to ours and shows failed jobs' logs
#   pd_pki                  dev certs in $WORK/certs; tokens + tenants file in $WORK
#                           ($AGENT_TOKEN of tenant acme, $ADMIN_TOKEN of role admin)
#   pd_start_server [FLAGS] pdeltad on $PORT (metrics on $MPORT), waits for /healthz
#   pd_stop_server [SIG]    stop it (default TERM) and wait
#   pd_finish               prints "N passed, N failed" and exits 1 on any failure
#
# Env: BINDIR (default bin), BUILD (default build/release; $BUILDDIR is its absolute path);
# PDELTA_TESTDATA=DIR names an optional extra corpus
# (DIR/profiles/<seq>/*.pb.gz, DIR/fastdelta/*.pprof) that the oracle suites also run over.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$ROOT/tests/integration
BINDIR=${BINDIR:-bin}
case $BINDIR in /*) ;; *) BINDIR=$ROOT/$BINDIR ;; esac
BUILD=${BUILD:-build/release}
case $BUILD in /*) BUILDDIR=$BUILD ;; *) BUILDDIR=$ROOT/$BUILD ;; esac
TESTDATA=$ROOT/tests/data  # the repository's fixtures (tests/data/README.md)
EXTRA_TESTDATA=${PDELTA_TESTDATA:-}
if [[ -n $EXTRA_TESTDATA ]]; then EXTRA_TESTDATA=$(cd "$EXTRA_TESTDATA" && pwd); fi
PY=/usr/bin/python3
PASS=0
FAIL=0
SERVER_PID=
PD_AT_EXIT=()

ok() { PASS=$((PASS + 1)); echo "ok   $*"; }
bad() { FAIL=$((FAIL + 1)); echo "FAIL $*"; }

pd_check() {
	local name=$1
	shift
	if "$@"; then ok "$name"; else bad "$name"; fi
}

pd_tally() {
	local line p f
	grep -v -E '^[0-9]+ passed, [0-9]+ failed$' <<<"$1" || true
	line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' <<<"$1" | tail -n 1) || true
	if [[ -z $line ]]; then
		bad "${2:-helper} printed no summary"
		return
	fi
	p=${line%% passed*}
	f=${line#*, }
	f=${f%% failed}
	PASS=$((PASS + p))
	FAIL=$((FAIL + f))
}

pd_need() {
	local b
	for b in "$@"; do
		[[ -x $b ]] || { echo "$(basename "$0" .sh): $b not built (make all)" >&2; exit 1; }
	done
}

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

pd_hash() { printf '%s' "$1" | "$BINDIR/pdeltad" --hash-token; }

pd_tenants() {
	local file=$1 entry tenant role token
	shift
	{
		for entry in "$@"; do
			IFS=: read -r tenant role token <<<"$entry"
			echo "tenant=$tenant role=$role token_sha256=$(pd_hash "$token")"
		done
		echo "tenant=acme role=agent cert_cn=agent-acme"
		echo "tenant=acme role=admin cert_cn=admin"
	} >"$file"
}

pd_conf() {
	printf '%s = %s\n' listen "127.0.0.1:$PORT" metrics_listen "$1" tls_cert "$WORK/certs/server.pem" \
		tls_key "$WORK/certs/server.key" tenants "$WORK/tenants" db "$2"
}

pd_certs() { bash "$ROOT/deploy/certs/gen-certs.sh" "$1" >/dev/null; }

# pd_wait_until PID CMD...: CMD polled every 0.1 s for 10 s; 1 when it never succeeds or PID exits.
pd_wait_until() {
	local pid=$1
	shift
	for _ in $(seq 100); do
		"$@" && return 0
		[[ -z $pid ]] || kill -0 "$pid" 2>/dev/null || return 1
		sleep 0.1
	done
	return 1
}
pd_http_ok() { "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' "$1" 2>/dev/null; }
pd_port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pd_wait_http() { pd_wait_until "${2:-}" pd_http_ok "$1"; }
pd_wait_port() { pd_wait_until "${2:-}" pd_port_open "$1"; }
pd_wait_file() { pd_wait_until "${2:-}" test -s "$1"; }

pd_metric() {
	"$PY" - "http://127.0.0.1:$MPORT/metrics" "$1" "${2:-}" <<'EOF'
import sys, urllib.request
body = urllib.request.urlopen(sys.argv[1], timeout=5).read().decode()
for line in body.splitlines():
    if line.startswith(sys.argv[2] + " "):
        print(line.split()[-1])
        break
else:
    if sys.argv[3]:
        print(sys.argv[3])
EOF
}

pd_at_exit() { PD_AT_EXIT+=("$1"); }
# pd_result FILE KEY: KEY's value on the last "RESULT k=v ..." line of FILE (pd_load's report)
pd_result() { grep '^RESULT ' "$1" | tail -n 1 | tr ' ' '\n' | sed -n "s/^$2=//p"; }

pd_cleanup() {
	local hook
	for hook in "${PD_AT_EXIT[@]}"; do eval "$hook" || true; done
	if [[ -n $SERVER_PID ]]; then
		kill -KILL "$SERVER_PID" 2>/dev/null || true
		wait "$SERVER_PID" 2>/dev/null || true
	fi
	if ((FAIL > 0)) && [[ -f $WORK/server.log ]]; then
		echo "---- server log (tail) ----"
		tail -n "${PD_LOG_TAIL:-30}" "$WORK/server.log"
	fi
	if [[ -n ${KEEP_WORK:-} ]]; then echo "work dir kept: $WORK"; else rm -rf "$WORK"; fi
}

pd_init() {
	WORK=$(mktemp -d "${TMPDIR:-/tmp}/pdelta-$1.XXXXXX")
	trap pd_cleanup EXIT
	PORT=$(free_port)
	MPORT=$(free_port)
	while [[ $MPORT == "$PORT" ]]; do MPORT=$(free_port); done
}

pd_pki() {
	pd_certs "$WORK/certs"
	CA=$WORK/certs/ca.pem
	AGENT_TOKEN=tok-agent-$(openssl rand -hex 16)
	ADMIN_TOKEN=tok-admin-$(openssl rand -hex 16)
	{
		echo "tenant=acme role=agent token_sha256=$(pd_hash "$AGENT_TOKEN")"
		echo "tenant=ops role=admin token_sha256=$(pd_hash "$ADMIN_TOKEN")"
	} >"$WORK/tenants"
}

pd_start_server() {
	"$BINDIR/pdeltad" --listen "127.0.0.1:$PORT" --metrics_listen "127.0.0.1:$MPORT" \
		--tls_cert "$WORK/certs/server.pem" --tls_key "$WORK/certs/server.key" \
		--tenants "$WORK/tenants" --db "$WORK/state.db" "$@" >>"$WORK/server.log" 2>&1 &
	SERVER_PID=$!
	pd_wait_http "http://127.0.0.1:$MPORT/healthz" "$SERVER_PID" && return 0
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

pd_jobs_init() {
	LOGS=$WORK/logs
	mkdir -p "$LOGS"
	NJOB=0
	JOBS=${PDELTA_JOBS:-2}
}

pd_job() {
	local name=$1 log
	shift
	while (($(jobs -rp | wc -l) >= JOBS)); do
		wait -n || true
	done
	NJOB=$((NJOB + 1))
	log=$(printf '%s/%03d-%s' "$LOGS" "$NJOB" "$name")
	(
		if "$@" >"$log.log" 2>&1; then echo 0 >"$log.rc"; else echo $? >"$log.rc"; fi
	) &
}

# pd_jobs_tally HEAD_LINES [verbose]: waits for the pool; a failed job (or one whose summary is
# missing) counts as a failure and shows the head of its log; verbose also prints passed jobs'
# summaries and WARN lines. Sets JOBS_FAILED.
pd_jobs_tally() {
	local rc log summary
	wait
	JOBS_FAILED=0
	for rc in "$LOGS"/*.rc; do
		log=${rc%.rc}.log
		summary=$(grep -E '^check_seq .*: [0-9]+ passed, [0-9]+ failed' "$log" | tail -1 || true)
		if [[ $summary =~ ([0-9]+)\ passed,\ ([0-9]+)\ failed ]]; then
			PASS=$((PASS + BASH_REMATCH[1]))
			FAIL=$((FAIL + BASH_REMATCH[2]))
		fi
		if [[ $(cat "$rc") != 0 ]]; then
			JOBS_FAILED=$((JOBS_FAILED + 1))
			[[ $summary =~ [1-9][0-9]*\ failed ]] || FAIL=$((FAIL + 1))
			echo "---- $(basename "$log" .log) (exit $(cat "$rc"))"
			head -"$1" "$log"
		elif [[ -n ${2:-} ]]; then
			echo "$summary"
			grep '^WARN' "$log" | head -3 || true
		fi
	done
}
