#!/usr/bin/env bash
# test_client_server.sh: libpdelta, `pdelta send` and pdeltactl against a real pdeltad over TLS.
#
#   - one-call, streaming (push and pull) APIs, `pdelta send` and local mode give byte-identical
#     deltas, and they match the oracle (tests/oracle/check_seq.py) over whole sequences;
#   - pdeltad is SIGKILLed several times in the middle of a sequence and restarted: the library
#     reconnects and retries, and every delta of the stream is still exact (oracle over the
#     whole sequence: no interval lost or counted twice);
#   - fork safety (tests/tools/client_fork.c);
#   - the local fallback when the server is gone;
#   - sequence rules seen from the client (DUPLICATE replays the same bytes, stale, conflict);
#   - authentication: bad token, wrong CA, host-name mismatch, mTLS, rogue client certificate;
#     token files (CRLF accepted, empty or whitespace-only refused) in `pdelta send` and pdeltactl;
#   - pdeltactl: streams/stream/reset/delete/stats/tenants as tables and --json (a delete that
#     removes nothing, a misspelled tenant too, is not-found, exit 1; a failure under --json is
#     an {"error":...} document); streams without --tenant lists every tenant; stats carries
#     per-tenant counters bounded by metrics_tenants (beta lands in "_other"); top --once
#     (text and --json) shows rates from two samples; a non-admin credential is refused with a
#     clear message.
#
#   - footprint: libpdelta.so size, the client's peak RSS and allocations per request with the
#     streaming API on heap-medium and heap-large (tests/tools/client_mem.c);
#   - with CLIENT_VALGRIND=1: the client programs under valgrind memcheck.
#
# Env: BINDIR (default bin), BUILD (default build/release), PDELTA_LARGE=1
# (also the heap-large kill test, ~1.5 min more), PDELTA_NO_GO=1 (no `go tool pprof` on outputs),
# KEEP_WORK=1, ONLY="equiv kill fork rules auth ctl footprint valgrind fallback" (a subset).
set -uo pipefail

. "$(dirname "$0")/lib.sh"
TOOLS=$BUILDDIR/tests/tools
PROFILES=$TESTDATA/profiles
PDELTA=$BINDIR/pdelta
PDELTAD=$BINDIR/pdeltad
CTL=$BINDIR/pdeltactl

pd_need "$PDELTA" "$PDELTAD" "$CTL" "$TOOLS/client_run" "$TOOLS/client_fork"
pd_init client-server

want() { [[ -z ${ONLY:-} || " $ONLY " == *" $1 "* ]]; }

# ---- PKI, credentials, server ---------------------------------------------------------------
PKI=$WORK/pki
pd_certs "$PKI"
AGENT_TOKEN=agent-$RANDOM-$RANDOM
ADMIN_TOKEN=admin-$RANDOM-$RANDOM
BETA_TOKEN=beta-$RANDOM-$RANDOM
pd_tenants "$WORK/tenants" "acme:agent:$AGENT_TOKEN" "acme:admin:$ADMIN_TOKEN" "beta:agent:$BETA_TOKEN"
SERVER=127.0.0.1:$PORT

start_server() {
	"$PDELTAD" --listen "$SERVER" --metrics_listen off --db "$WORK/state.db" \
		--tls_cert "$PKI/server.pem" --tls_key "$PKI/server.key" --tls_client_ca "$PKI/ca.pem" \
		--tenants "$WORK/tenants" --workers 2 --log_level warn --metrics-tenants 1 >>"$WORK/server.log" 2>&1 &
	SERVER_PID=$!
	pd_wait_port "$PORT" "$SERVER_PID" && return 0
	echo "pdeltad did not start; log:" >&2
	tail -20 "$WORK/server.log" >&2
	return 1
}
kill9_server() {
	kill -9 "$SERVER_PID" 2>/dev/null
	wait "$SERVER_PID" 2>/dev/null
	SERVER_PID=
}

start_server || exit 1
AUTH=(--server "$SERVER" --ca "$PKI/ca.pem" --token "$AGENT_TOKEN")
ADMIN=(--server "$SERVER" --ca "$PKI/ca.pem" --token "$ADMIN_TOKEN")

# judge NAME OUTDIR STATUS_FILE [check_seq options] -- FILE...: the oracle on a finished run.
# check_seq.py runs `PDELTA seq ... -o DIR FILE...`; the wrapper hands it the stored outputs and
# status lines, a DUPLICATE line counting as the status of the response it replays.
judge() {
	local name=$1 out=$2 status=$3
	shift 3
	local opts=()
	while [[ $1 != -- ]]; do opts+=("$1"); shift; done
	shift
	local w=$WORK/judge-$name.sh
	cat >"$w" <<EOF
#!/usr/bin/env bash
while [[ \$# -gt 0 && \$1 != -o ]]; do shift; done
cp "$out"/* "\$2"/
sed -E 's/^([^ ]+) DUPLICATE ([^ ]+) orig=([A-Z]+)/\1 \3 \2/' "$status"
EOF
	chmod +x "$w"
	local go=(--go-sample 2)
	[[ -n ${PDELTA_NO_GO:-} || " ${opts[*]} " == *" --no-go "* ]] && go=()
	if $PY "$ROOT/tests/oracle/check_seq.py" --pdelta "$w" "${go[@]}" --label "$name" "${opts[@]}" "$@" \
		>"$WORK/judge-$name.log" 2>&1; then
		ok "oracle $name: $(tail -1 "$WORK/judge-$name.log")"
	else
		bad "oracle $name"
		head -30 "$WORK/judge-$name.log"
	fi
}

# The same delta: identical profile bytes once inflated (one-call and server outputs are
# deflated whole with ISA-L, streaming local mode's with zlib: common/pd_gz.h).
# shellcheck source=compare.sh
source "$HERE/compare.sh"

# ---- 1. the APIs agree with each other, with local mode and with the oracle ---------------------
api_equivalence() {
	local seqname=$1
	mapfile -t F < <(ls "$PROFILES/$seqname"/*.pb.gz)
	local inc=$((RANDOM * 32768 + RANDOM + 1))
	for api in onecall stream pull; do
		"$TOOLS/client_run" "${AUTH[@]}" --api $api --incarnation $inc --stream "eq/$seqname/$api" \
			-o "$WORK/eq-$seqname-$api" "${F[@]}" >"$WORK/eq-$seqname-$api.status" 2>"$WORK/eq-$seqname-$api.err" ||
			{ bad "client_run --api $api $seqname"; cat "$WORK/eq-$seqname-$api.status"; }
	done
	"$TOOLS/client_run" --local --incarnation $inc --stream s -o "$WORK/eq-$seqname-local" "${F[@]}" \
		>"$WORK/eq-$seqname-local.status" 2>/dev/null || bad "client_run --local $seqname"
	"$PDELTA" send "${AUTH[@]}" --incarnation $inc --stream "eq/$seqname/send" -o "$WORK/eq-$seqname-send" \
		"${F[@]}" >"$WORK/eq-$seqname-send.status" 2>"$WORK/eq-$seqname-send.err" ||
		{ bad "pdelta send $seqname"; cat "$WORK/eq-$seqname-send.err"; }
	for v in stream pull local send; do
		pd_check "$seqname: onecall and $v give identical deltas" same_dirs "$WORK/eq-$seqname-onecall" "$WORK/eq-$seqname-$v"
	done
	judge "$seqname-send" "$WORK/eq-$seqname-send" "$WORK/eq-$seqname-send.status" -- "${F[@]}"
}
mapfile -t HS < <(ls "$PROFILES/heap-small"/*.pb.gz)
if want equiv; then
	api_equivalence heap-small
	api_equivalence heap-medium
	api_equivalence block-medium
	api_equivalence goroutine-small
	# policies travel to the server (and agree with the oracle)
	"$PDELTA" send "${AUTH[@]}" --stream pol/drop --first drop --type inuse_objects=delta \
		-o "$WORK/pol" "${HS[@]}" >"$WORK/pol.status" 2>&1 || bad "send --first drop --type"
	judge policies "$WORK/pol" "$WORK/pol.status" --first drop --type inuse_objects=delta -- "${HS[@]}"
fi

# ---- 2. SIGKILL in the middle of a sequence -------------------------------------------------------
kill_test() {
	local seqname=$1 api=$2 kills=$3 d=$PROFILES/$1
	[[ -d $d ]] || d=$BUILDDIR/testdata/profiles/$seqname # large: make bench made it
	mapfile -t F < <(ls "$d"/*.pb.gz)
	local out=$WORK/kill-$seqname-$api
	"$TOOLS/client_run" "${AUTH[@]}" --api "$api" --stream "kill/$seqname/$api" --attempts 40 \
		--backoff 50 --backoff-max 400 --delay-ms 150 -o "$out" "${F[@]}" \
		>"$out.status" 2>"$out.err" &
	local cpid=$!
	for _ in $(seq 1 "$kills"); do
		sleep "0.$((RANDOM % 4 + 1))"
		kill -0 $cpid 2>/dev/null || break
		kill9_server
		sleep 0.$((RANDOM % 3 + 1))
		start_server || return 1
	done
	if wait $cpid; then ok "kill -9 x$kills during $seqname ($api): all requests answered"; else
		bad "kill -9 during $seqname ($api)"
		cat "$out.status" "$out.err"
	fi
	echo "  $(tail -1 "$out.err") ($(grep -c DUPLICATE "$out.status") DUPLICATE answers)"
	judge "kill-$seqname-$api" "$out" "$out.status" --no-go -- "${F[@]}"
}
if want kill; then
	kill_test heap-medium stream 4
	kill_test block-medium onecall 3
	if [[ -n ${PDELTA_LARGE:-} ]]; then kill_test heap-large pull 3; fi
fi

# ---- 3. fork -----------------------------------------------------------------------------------------
mapfile -t HM < <(ls "$PROFILES/heap-medium"/*.pb.gz)
if ! want fork; then
	:
elif "$TOOLS/client_fork" "${AUTH[@]}" "${HM[@]:0:4}" >"$WORK/fork.log" 2>&1; then
	ok "fork: $(tail -1 "$WORK/fork.log")"
else
	bad "fork"
	cat "$WORK/fork.log"
fi

# ---- 4. sequence rules from the client --------------------------------------------------------------
seq_rules() {
	local o=$WORK/rules
	mkdir -p "$o/a" "$o/b" "$o/c" "$o/d"
	"$PDELTA" send "${AUTH[@]}" --stream rules --seq 5 --incarnation 77 -o "$o/a" "${HS[0]}" "${HS[1]}" >"$o/1" 2>&1
	"$PDELTA" send "${AUTH[@]}" --stream rules --seq 6 --incarnation 77 -o "$o/b" "${HS[1]}" >"$o/2" 2>&1
	pd_check "resend of the last (seq, bytes) is DUPLICATE" grep -q "DUPLICATE - orig=DELTA" "$o/2"
	pd_check "DUPLICATE replays identical bytes" cmp -s "$o/a/$(basename "${HS[1]}")" "$o/b/$(basename "${HS[1]}")"
	"$PDELTA" send "${AUTH[@]}" --stream rules --seq 5 --incarnation 77 -o "$o/c" "${HS[0]}" >"$o/3" 2>&1
	pd_check "older seq is refused (stale, exit 1)" grep -q "ERROR sequence .*SEQ_STALE" "$o/3"
	"$PDELTA" send "${AUTH[@]}" --stream rules --seq 6 --incarnation 77 -o "$o/d" "${HS[2]}" >"$o/4" 2>&1
	pd_check "same seq, other bytes: conflict" grep -q "ERROR sequence .*SEQ_CONFLICT" "$o/4"
	pd_check "a refused file leaves no output" test ! -e "$o/d/$(basename "${HS[2]}")"
	"$PDELTA" send "${AUTH[@]}" --stream rules -o "$o/e" "${HS[2]}" >"$o/5" 2>&1
	pd_check "a new run (new incarnation) is a reset" grep -q "BASELINE reset" "$o/5"
	printf 'junk' >"$o/junk.pb.gz"
	"$PDELTA" send "${AUTH[@]}" --stream rules -o "$o/f" "$o/junk.pb.gz" "${HS[3]}" >"$o/6" 2>&1
	local rc=$?
	pd_check "invalid profile: ERROR malformed, the next file still sent, exit 1" \
		bash -c "[[ $rc == 1 ]] && grep -q '^junk.pb.gz ERROR malformed' '$o/6' && grep -q '^$(basename "${HS[3]}") ' '$o/6'"
}
want rules && seq_rules

# ---- 5. authentication and TLS -------------------------------------------------------------------------
auth_tests() {
	local o=$WORK/auth f=${HS[0]}
	local t0=$SECONDS
	"$PDELTA" send --server "$SERVER" --ca "$PKI/ca.pem" --token wrong-token --stream a -o "$o" "$f" >"$o.1" 2>&1
	local el=$((SECONDS - t0))
	pd_check "bad token: auth error, not retried (${el}s)" bash -c "grep -q 'ERROR auth' '$o.1' && grep -q AUTH_FAILED '$o.1' && (( $el < 3 ))"
	"$PDELTA" send --server "$SERVER" --ca "$PKI/rogue-ca.pem" --token "$AGENT_TOKEN" --stream a -o "$o" "$f" >"$o.2" 2>&1
	pd_check "wrong CA: certificate verification fails" grep -q "ERROR tls .*certificate verification failed" "$o.2"
	"$PDELTA" send --server "localhost:$PORT" --ca "$PKI/ca.pem" --token "$AGENT_TOKEN" --stream a -o "$o/ok" "$f" >"$o.3" 2>&1
	pd_check "host name localhost verifies" grep -q "BASELINE" "$o.3"
	"$PDELTA" send "${AUTH[@]}" --server-name wrong.example --stream a -o "$o" "$f" >"$o.4" 2>&1
	pd_check "host-name mismatch is refused" grep -q "ERROR tls .*verif" "$o.4"
	"$PDELTA" send --server "$SERVER" --ca "$PKI/ca.pem" --cert "$PKI/agent-acme.pem" --key "$PKI/agent-acme.key" \
		--stream mtls -o "$o/m" "$f" >"$o.5" 2>&1
	pd_check "mTLS client certificate authenticates" grep -q "BASELINE first" "$o.5"
	"$PDELTA" send --server "$SERVER" --ca "$PKI/ca.pem" --cert "$PKI/rogue.pem" --key "$PKI/rogue.key" \
		--stream mtls -o "$o/r" "$f" >"$o.6" 2>&1
	pd_check "rogue client certificate is refused" bash -c "! grep -q BASELINE '$o.6' && grep -q ERROR '$o.6'"
	"$PDELTA" send --server "$SERVER" --ca "$PKI/ca.pem" --token "$BETA_TOKEN" --stream eq/heap-small/send \
		-o "$o/beta" "$f" >"$o.7" 2>&1
	pd_check "another tenant's namespace is separate (BASELINE first)" grep -q "BASELINE first" "$o.7"
	# Token files: one reader and one rule for both CLIs (first line, CR/LF and trailing
	# blanks trimmed); an empty or whitespace-only file is refused before connecting.
	printf '%s\r\n' "$ADMIN_TOKEN" >"$o/tok-crlf"
	: >"$o/tok-empty"
	printf ' \t\r\n' >"$o/tok-blank"
	"$PDELTA" send --server "$SERVER" --ca "$PKI/ca.pem" --token-file "$o/tok-crlf" --stream tokfile \
		-o "$o/tf" "$f" >"$o.8" 2>&1
	pd_check "CRLF token file accepted by pdelta send" grep -q "BASELINE first" "$o.8"
	"$CTL" --server "$SERVER" --ca "$PKI/ca.pem" --token-file "$o/tok-crlf" stats >"$o.9" 2>&1
	pd_check "CRLF token file accepted by pdeltactl" grep -q "uptime" "$o.9"
	local t cli rc
	for t in empty blank; do
		for cli in send ctl; do
			if [[ $cli == send ]]; then
				"$PDELTA" send --server "$SERVER" --ca "$PKI/ca.pem" --token-file "$o/tok-$t" \
					--stream tokfile -o "$o/tf" "$f" >"$o.tf" 2>&1
			else
				"$CTL" --server "$SERVER" --ca "$PKI/ca.pem" --token-file "$o/tok-$t" stats >"$o.tf" 2>&1
			fi
			rc=$?
			pd_check "$t token file refused by $cli (exit $rc)" \
				bash -c "[[ $rc != 0 ]] && grep -q -- '--token-file: .*tok-$t is empty' '$o.tf'"
		done
	done
}
mkdir -p "$WORK/auth"
want auth && auth_tests

# ---- 6. pdeltactl -----------------------------------------------------------------------------------------
ctl_tests() {
	local o=$WORK/ctl
	mkdir -p "$o"
	"$CTL" "${ADMIN[@]}" streams --tenant acme >"$o/streams" 2>&1
	pd_check "ctl streams --tenant: table with header and our streams" \
		bash -c "head -2 '$o/streams' | grep -q '^NAME  *SEQ  *INCARNATION' && grep -q '^eq/heap-small/send ' '$o/streams'"
	"$CTL" "${ADMIN[@]}" streams >"$o/streams-all" 2>&1
	pd_check "ctl streams without --tenant: every tenant's streams, with a TENANT column" \
		bash -c "head -1 '$o/streams-all' | grep -q '^all tenants' && head -2 '$o/streams-all' | grep -q '^TENANT  *NAME  *SEQ' &&
			grep -Eq '^acme +eq/heap-small/send ' '$o/streams-all' && grep -Eq '^beta +eq/heap-small/send ' '$o/streams-all'"
	"$CTL" "${ADMIN[@]}" --json streams --prefix eq/heap-small/ >"$o/streams-all.json" 2>&1
	pd_check "ctl --json streams without --tenant: both tenants, no tenant member" $PY -c "
import json; d=json.load(open('$o/streams-all.json'))
assert 'tenant' not in d and {(s['tenant'], s['name']) for s in d['streams']} >= {('acme','eq/heap-small/send'), ('beta','eq/heap-small/send')}, d"
	"$CTL" "${ADMIN[@]}" --json streams --tenant acme --prefix eq/ --sort name --limit 3 >"$o/streams.json" 2>&1
	pd_check "ctl --json streams --prefix --limit" $PY -c "
import json,sys
d=json.load(open('$o/streams.json'))
names=[s['name'] for s in d['streams']]
assert d['tenant']=='acme' and len(names)==3 and all(n.startswith('eq/') for n in names), d
assert names==sorted(names) and d['truncated'] is True, d"
	"$CTL" "${ADMIN[@]}" stream eq/heap-small/send >"$o/stream" 2>&1
	pd_check "ctl stream NAME: key/value lines" bash -c "grep -Eq '^name +eq/heap-small/send' '$o/stream' && grep -Eq '^seq +[0-9]+' '$o/stream'"
	"$CTL" "${ADMIN[@]}" --json stream eq/heap-small/send --tenant acme >"$o/stream.json" 2>&1
	pd_check "ctl --json stream" $PY -c "
import json; d=json.load(open('$o/stream.json')); assert d['name']=='eq/heap-small/send' and d['seq']>=1, d"
	"$CTL" "${ADMIN[@]}" stream no/such/stream >"$o/nf" 2>&1
	pd_check "ctl stream of a missing stream: not found, exit 1" bash -c "[[ $? == 1 ]] && grep -q 'no such stream' '$o/nf'"
	"$CTL" "${ADMIN[@]}" --json stream no/such/stream >"$o/nf.json" 2>/dev/null
	pd_check "ctl --json of a failure: an error document, exit 1" bash -c "[[ $? == 1 ]] && $PY -c \"
import json; e=json.load(open('$o/nf.json'))['error']; assert e['command']=='stream' and e['code']==12 and 'no/such/stream' in e['message'], e\""
	"$CTL" "${ADMIN[@]}" reset eq/heap-small/send >"$o/reset" 2>&1
	pd_check "ctl reset" grep -q "reset stream 'eq/heap-small/send'" "$o/reset"
	"$PDELTA" send "${AUTH[@]}" --stream eq/heap-small/send -o "$o/after-reset" "${HS[1]}" >"$o/after" 2>&1
	pd_check "after reset the next profile is BASELINE first" grep -q "BASELINE first" "$o/after"
	"$CTL" "${ADMIN[@]}" delete eq/heap-small/send >"$o/delete" 2>&1
	pd_check "ctl delete NAME" grep -q "deleted 1 stream" "$o/delete"
	"$CTL" "${ADMIN[@]}" --json streams --tenant acme --prefix eq/heap-small/ >"$o/after-del.json" 2>&1
	pd_check "deleted stream is gone" $PY -c "
import json; d=json.load(open('$o/after-del.json')); assert 'eq/heap-small/send' not in [s['name'] for s in d['streams']], d"
	"$CTL" "${ADMIN[@]}" delete --prefix pol/ >"$o/delete2" 2>&1
	pd_check "ctl delete --prefix" grep -q "deleted 1 stream" "$o/delete2"
	# a delete that removes nothing is "not found" like stream and reset: exit 1
	"$CTL" "${ADMIN[@]}" delete eq/heap-small/send >"$o/del-nf" 2>"$o/del-nf.err"
	pd_check "ctl delete of a missing stream: not found, exit 1" \
		bash -c "[[ $? == 1 ]] && grep -q \"no such stream 'eq/heap-small/send' of tenant 'acme'\" '$o/del-nf.err' && ! grep -q deleted '$o/del-nf'"
	"$CTL" "${ADMIN[@]}" delete eq/heap-medium/send --tenant acmee >"$o/del-nt" 2>"$o/del-nt.err"
	pd_check "ctl delete with a misspelled tenant: not found, exit 1" \
		bash -c "[[ $? == 1 ]] && grep -q \"no such stream 'eq/heap-medium/send' of tenant 'acmee'\" '$o/del-nt.err'"
	"$CTL" "${ADMIN[@]}" --json delete --prefix no/such/ >"$o/del-np.json" 2>"$o/del-np.err"
	pd_check "ctl --json delete --prefix matching nothing: the document, and exit 1" \
		bash -c "[[ $? == 1 ]] && grep -q '\"deleted\":0' '$o/del-np.json' && grep -q \"no stream of tenant 'acme' starts with 'no/such/'\" '$o/del-np.err'"
	"$CTL" "${ADMIN[@]}" stats >"$o/stats" 2>&1
	pd_check "ctl stats: key/value lines" grep -Eq '^uptime_s +[0-9]+' "$o/stats"
	"$CTL" "${ADMIN[@]}" --json stats >"$o/stats.json" 2>&1
	pd_check "ctl --json stats" $PY -c "import json; d=json.load(open('$o/stats.json')); assert 'uptime_s' in d, d"
	# --metrics-tenants 1: acme (seen first) has its own counters, beta is summed under _other
	pd_check "stats by_tenant: bounded by metrics_tenants (acme, then _other)" $PY -c "
import json; d=json.load(open('$o/stats.json')); t=d['by_tenant']
assert d['metrics_tenants']==1 and set(t)=={'acme','_other'} and t['acme']['requests']>0 and t['_other']['requests']>0, t
assert d['latency']['total_le_ms']['+Inf']==d['latency']['count'], d['latency']"
	# top: two stats samples around a burst of beta's requests
	(for i in 0 1 2 3 4 5; do "$PDELTA" send --server "$SERVER" --ca "$PKI/ca.pem" --token "$BETA_TOKEN" \
		--stream "top/$i" -o "$o/top-seed" "${HS[@]:0:3}" >/dev/null 2>&1; done) &
	local burst=$!
	"$CTL" "${ADMIN[@]}" top --once --interval 1.5 >"$o/top" 2>&1
	local trc=$?
	wait $burst
	pd_check "ctl top --once: one frame with requests/s, p99, cache, queue, tenants (exit $trc)" \
		bash -c "[[ $trc == 0 ]] && grep -Eq '^requests +[0-9.]+/s +p99 ' '$o/top' && grep -q '^cache ' '$o/top' &&
			grep -q '^queue ' '$o/top' && grep -Eq '^TENANT +REQ/S' '$o/top' && grep -Eq '^_other +[1-9]' '$o/top'"
	(for i in 0 1 2 3 4 5; do "$PDELTA" send "${AUTH[@]}" --stream "top/acme$i" -o "$o/top-seed" "${HS[@]:0:3}" >/dev/null 2>&1; done) &
	burst=$!
	"$CTL" "${ADMIN[@]}" --json top --once --interval 1.5 >"$o/top.json" 2>&1
	wait $burst
	pd_check "ctl --json top --once: rates from two samples" $PY -c "
import json; d=json.load(open('$o/top.json')); t={x['tenant']: x for x in d['tenants']}
assert d['requests_per_s']>0 and d['p99_ms'] is not None and t['acme']['requests_per_s']>0, d"
	"$CTL" "${AUTH[@]}" top --once --interval 0.2 >"$o/top-agent" 2>&1
	pd_check "ctl top with an agent credential: refused, exit 1" bash -c "[[ $? == 1 ]] && grep -q 'not an admin credential' '$o/top-agent'"
	"$CTL" "${ADMIN[@]}" tenants >"$o/tenants" 2>&1
	pd_check "ctl tenants: table" bash -c "grep -q '^TENANT  *STREAMS' '$o/tenants' && grep -q '^acme ' '$o/tenants' && grep -q '^beta ' '$o/tenants'"
	"$CTL" "${ADMIN[@]}" --json tenants --limit 1 >"$o/tenants.json" 2>&1
	pd_check "ctl --json tenants --limit 1" $PY -c "import json; d=json.load(open('$o/tenants.json')); assert len(d['tenants'])==1 and d['truncated'], d"
	"$CTL" "${ADMIN[@]}" streams --tenant beta >"$o/beta" 2>&1
	pd_check "ctl streams --tenant beta" bash -c "grep -q '^tenant beta' '$o/beta' && grep -q '^eq/heap-small/send ' '$o/beta'"
	"$CTL" --server "$SERVER" --ca "$PKI/ca.pem" --cert "$PKI/admin.pem" --key "$PKI/admin.key" stats >"$o/cert" 2>&1
	pd_check "ctl with an admin client certificate" grep -Eq '^uptime_s' "$o/cert"
	for cmd in "streams" "stream eq/heap-medium/send" "reset eq/heap-medium/send" "delete eq/heap-medium/send" "stats" "tenants"; do
		# shellcheck disable=SC2086
		"$CTL" "${AUTH[@]}" $cmd >"$o/agent" 2>&1
		local rc=$?
		pd_check "agent token refused: pdeltactl $cmd (exit $rc)" \
			bash -c "[[ $rc == 1 ]] && grep -q 'not an admin credential' '$o/agent'"
	done
	"$CTL" "${ADMIN[@]}" stream eq/heap-medium/send >"$o/still" 2>&1
	pd_check "the refused reset/delete (and the misspelled tenant's delete) changed nothing" grep -Eq '^name +eq/heap-medium/send' "$o/still"
	"$CTL" "${ADMIN[@]}" bogus >"$o/bogus" 2>&1
	pd_check "ctl unknown command: usage, exit 2" bash -c "[[ $? == 2 ]]"
}
if want ctl; then
	# streams for the admin commands to list (also when the equiv section did not run)
	"$PDELTA" send "${AUTH[@]}" --stream eq/heap-small/send -o "$WORK/ctl-seed1" "${HS[@]:0:2}" >/dev/null 2>&1
	"$PDELTA" send "${AUTH[@]}" --stream eq/heap-medium/send -o "$WORK/ctl-seed2" "${HS[@]:0:2}" >/dev/null 2>&1
	for i in 1 2 3; do
		"$PDELTA" send "${AUTH[@]}" --stream "eq/extra$i" -o "$WORK/ctl-seed3" "${HS[0]}" >/dev/null 2>&1
	done
	"$PDELTA" send "${AUTH[@]}" --stream pol/drop -o "$WORK/ctl-seed4" "${HS[0]}" >/dev/null 2>&1
	"$PDELTA" send --server "$SERVER" --ca "$PKI/ca.pem" --token "$BETA_TOKEN" --stream eq/heap-small/send \
		-o "$WORK/ctl-seed5" "${HS[0]}" >/dev/null 2>&1
	ctl_tests
fi

# ---- 7. footprint -------------------------------------------------------------------------------------
footprint() {
	local so=$BUILDDIR/libpdelta.so
	echo "  libpdelta.so: $(stat -c %s "$so") bytes ($(size "$so" | awk 'NR==2{print $1}') text; stripped $(strip -o "$WORK/so.stripped" "$so" && stat -c %s "$WORK/so.stripped"))"
	# heap-large when `make bench` has generated it ($BUILD/testdata), else the medium ones only
	local seqs=(heap-medium:$PROFILES mutex-medium:$PROFILES) large=$BUILDDIR/testdata/profiles
	[[ -d $large/heap-large ]] && seqs+=("heap-large:$large")
	for sd in "${seqs[@]}"; do
		local s=${sd%%:*} dir=${sd#*:}
		for api in stream onecall; do
			"$TOOLS/client_mem" "${AUTH[@]}" --api $api "$dir/$s"/*.pb.gz >"$WORK/mem-$s-$api" 2>&1 ||
				{ bad "client_mem $s $api"; cat "$WORK/mem-$s-$api"; continue; }
			local line rss
			line=$(grep '^summary' "$WORK/mem-$s-$api")
			echo "  $s: $line"
			rss=$(sed -E 's/.*peak_rss_kb=([0-9]+).*/\1/' <<<"$line")
			if [[ $api == stream ]]; then
				pd_check "streaming $s: client peak RSS ${rss} KiB < 32 MiB" test "$rss" -lt 32768
			fi
		done
	done
}
want footprint && [[ -x $TOOLS/client_mem ]] && footprint

# ---- 8. valgrind (opt-in) -------------------------------------------------------------------------------
if [[ -n ${CLIENT_VALGRIND:-} ]] && want valgrind; then
	VG=(valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite)
	vg() { # vg NAME CMD...: no memcheck error, no definite leak
		local name=$1 log=$WORK/vg-$RANDOM.log
		shift
		if "${VG[@]}" "$@" >/dev/null 2>"$log"; then ok "valgrind: $name"; else
			bad "valgrind: $name"
			grep -v '^stats' "$log" | head -30
		fi
	}
	for api in stream pull onecall; do
		vg "client_run --api $api" "$TOOLS/client_run" "${AUTH[@]}" --api $api --stream "vg/$api" \
			-o "$WORK/vg-$api" "${HS[@]}"
	done
	vg "pdelta send" "$PDELTA" send "${AUTH[@]}" --stream vg/send -o "$WORK/vg-send" "${HS[@]}"
	vg "pdeltactl streams" "$CTL" "${ADMIN[@]}" streams
	vg "pdeltactl --json stats" "$CTL" "${ADMIN[@]}" --json stats
	vg "client_fork" "$TOOLS/client_fork" "${AUTH[@]}" "${HS[@]:0:4}"
fi

# ---- 9. local fallback when the server is gone -------------------------------------------------------
if want fallback; then
	kill9_server
	mapfile -t BS < <(ls "$PROFILES/block-small"/*.pb.gz)
	"$TOOLS/client_run" "${AUTH[@]}" --fallback --attempts 2 --backoff 20 --stream fb -o "$WORK/fb" "${BS[@]}" \
		>"$WORK/fb.status" 2>"$WORK/fb.err"
	pd_check "fallback: every file answered locally, first one BASELINE moved" \
		bash -c "grep -q 'BASELINE moved' '$WORK/fb.status' && [[ \$(grep -c 'local=1' '$WORK/fb.status') == ${#BS[@]} ]]"
	sed -i 's/BASELINE moved/BASELINE first/' "$WORK/fb.status"
	judge fallback "$WORK/fb" "$WORK/fb.status" -- "${BS[@]}"
fi

pd_finish
