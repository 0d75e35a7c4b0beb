#!/usr/bin/env bash
# test_route.sh: clients spread streams over several pdeltad nodes and fail over
# (libpdelta's --server list, client/lib/pdl_nodes.c), on a shared PostgreSQL
# (deploy/local-cluster.sh: 3 nodes + PostgreSQL on loopback).
#
#   1. 24 streams, 3 files each, `pdelta send --server H1:P1,H2:P2,H3:P3`: every node answers
#      some streams and each stream stays on one node (per-node pdeltad_requests_total);
#   2. node 2 is stopped with SIGTERM (it drains: GOODBYE) while every stream sends its next
#      3 files concurrently: all answered, by the other nodes;
#   3. node 3 is SIGKILLed while every stream sends its next file: all answered (retries on
#      node 1; a request node 3 had committed is answered DUPLICATE);
#   4. nodes 2 and 3 start again: each stream's last file goes back to its first node (the
#      per-node counts are those of step 1);
#   4b. one long-lived handle (client_run, a request every second): its stream's node drains
#      and comes back while it runs; the stream moves away on the GOODBYE and back once a
#      probe finds the node up, within the same process;
#   4c. every six-file medium sequence, one stream each, a `pdelta send` per file through
#      the list while pd_load keeps all three nodes busy (a closed loop over the small
#      sequences, its connections spread over the nodes): pd_load sees no protocol
#      violation and no unexpected status;
#   5. the oracle (tests/oracle/check_seq.py) over every stream's answers (8 files, 6 for the
#      medium ones): no interval lost, none counted twice; pdeltactl through the list: a
#      stream from its node, the listing of any node shows all 31 (shared store);
#   6. bad lists are refused with a clear error by pdelta send and pdeltactl;
#   0 (first): local-cluster.sh in a directory with a space (up, a send, stop removes it and
#      stops PostgreSQL); a start whose nodes do not come up stops PostgreSQL.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
# shellcheck source=pg_lib.sh
. "$HERE/pg_lib.sh"
pd_init route
pg_require
TOOLS=$BUILDDIR/tests/tools
pd_need "$BINDIR/pdelta" "$BINDIR/pdeltactl" "$BINDIR/pdeltad" "$TOOLS/client_run" "$TOOLS/pd_load"

CL=$WORK/cluster
chmod 755 "$WORK" # PostgreSQL runs as its own user under it
CLUSTER=(env BINDIR="$BINDIR" PG_BINDIR="$PG_BIN" bash "$ROOT/deploy/local-cluster.sh")

# ---- 0. local-cluster.sh in a directory with a space; a start that fails midway ----
alive() { local st; st=$(ps -o stat= -p "$1" 2>/dev/null) && [[ $st != Z* ]]; } # a zombie is gone
pg_running() { [[ -f $1/postmaster.pid ]] && alive "$(head -n 1 "$1/postmaster.pid")"; }
SP="$WORK/c 2"
pd_at_exit '"${CLUSTER[@]}" stop "$SP" >/dev/null 2>&1'
if "${CLUSTER[@]}" start "$SP" 1 >"$WORK/space.log" 2>&1 &&
	(. "$SP/cluster.env" && "$BINDIR/pdelta" send --server "$SERVERS" --ca "$CA" --token-file "$TOKEN_FILE" \
		--stream sp/heap -o "$WORK/sp" "$TESTDATA/profiles/heap-small/000.pb.gz") >>"$WORK/space.log" 2>&1; then
	ok "local-cluster.sh in a directory with a space: up, cluster.env sources, a send is answered"
else
	bad "local-cluster.sh in '$SP': $(tail -n 3 "$WORK/space.log")"
fi
pgpid=$(head -n 1 "$SP/pg/data/postmaster.pid" 2>/dev/null || echo none)
"${CLUSTER[@]}" stop "$SP" >>"$WORK/space.log" 2>&1
[[ ! -e $SP && $pgpid =~ ^[0-9]+$ ]] && ! alive "$pgpid" && ok "... and stop removes it, PostgreSQL stopped" ||
	bad "after stop: PostgreSQL pid $pgpid $(alive "$pgpid" && echo still running); $(ls "$SP" 2>&1 | head -n 3)"
mkdir -p "$WORK/badbin" # a pdeltad that hashes tokens but never comes up
printf '#!/bin/sh\n[ "$1" = --hash-token ] && exec %q "$@"\nexit 1\n' "$BINDIR/pdeltad" >"$WORK/badbin/pdeltad"
chmod +x "$WORK/badbin/pdeltad"
FAILED="$WORK/c 3"
pd_at_exit '"${CLUSTER[@]}" stop "$FAILED" >/dev/null 2>&1'
if env BINDIR="$WORK/badbin" PG_BINDIR="$PG_BIN" bash "$ROOT/deploy/local-cluster.sh" start "$FAILED" 1 >"$WORK/failed.log" 2>&1; then
	bad "local-cluster.sh start succeeded with nodes that do not come up"
else
	! pg_running "$FAILED/pg/data" && grep -q 'start failed' "$WORK/failed.log" &&
		ok "a start that fails after PostgreSQL is up stops it ($(grep -o 'start failed.*stopped' "$WORK/failed.log"))" ||
		bad "a failed start left PostgreSQL running or said nothing: $(tail -n 2 "$WORK/failed.log")"
	"${CLUSTER[@]}" stop "$FAILED" >/dev/null 2>&1
	[[ ! -e $FAILED ]] && ok "... and stop removes its directory" || bad "stop left '$FAILED'"
fi
pd_at_exit '"${CLUSTER[@]}" stop "$CL" >/dev/null 2>&1'
"${CLUSTER[@]}" start "$CL" 3 >"$WORK/cluster.log" 2>&1 || { cat "$WORK/cluster.log"; exit 1; }
ok "deploy/local-cluster.sh: 3 nodes on one PostgreSQL"
# shellcheck source=/dev/null
. "$CL/cluster.env"

NSTREAMS=24
# every fixture sequence with the 8 files a stream sends; the six-file medium ones are
# streams NSTREAMS+1.. (step 4c)
SEQS=(heap-small allocs-small mutex-small block-small goroutine-small cpu-small heap-restart mutex-restart heap-rate)
MEDIUM=(heap-medium allocs-medium mutex-medium block-medium goroutine-medium cpu-medium)
stream() { printf 'route/%02d' "$1"; }
seqdir() { # I: stream I's fixture sequence
	if (($1 > NSTREAMS)); then
		echo "$TESTDATA/profiles/${MEDIUM[$(($1 - NSTREAMS - 1))]}"
	else
		echo "$TESTDATA/profiles/${SEQS[$(($1 % ${#SEQS[@]}))]}"
	fi
}
files() { # I FROM TO: stream I's files FROM..TO (0-based)
	ls "$(seqdir "$1")"/*.pb.gz | sed -n "$(($2 + 1)),$(($3 + 1))p"
}
nfiles() { ls "$(seqdir "$1")"/*.pb.gz | wc -l; }
send() { # I FROM TO: sends them with the stream's seq numbers, outputs and status kept
	local i=$1 s
	s=$(stream "$i")
	mkdir -p "$WORK/out/$i"
	local after=()
	(($2 > 0)) && after=(--after "$2")
	# shellcheck disable=SC2046
	"$BINDIR/pdelta" send --server "$SERVERS" --ca "$CA" --token-file "$TOKEN_FILE" --stream "$s" \
		--incarnation $((7000 + i)) --seq $(($2 + 1)) "${after[@]}" --attempts 8 \
		--connect-timeout 2000 -o "$WORK/out/$i" $(files "$i" "$2" "$3") \
		>>"$WORK/status.$i" 2>>"$WORK/err.$i"
}
send_all() { # FROM TO [bg]: every stream, one after the other or all at once
	local i pids=() rc=0
	for ((i = 0; i < NSTREAMS; i++)); do
		if [[ ${3:-} == bg ]]; then send "$i" "$1" "$2" & pids+=($!); else send "$i" "$1" "$2" || rc=1; fi
	done
	for p in "${pids[@]}"; do wait "$p" || rc=1; done
	return $rc
}
requests() { # I: node I's delta answers since it started
	local m=METRICS_$1
	"$PY" - "http://127.0.0.1:${!m}/metrics" <<'PY'
import sys, urllib.request
body = urllib.request.urlopen(sys.argv[1], timeout=5).read().decode()
print(sum(int(float(l.split()[-1])) for l in body.splitlines() if l.startswith("pdeltad_requests_total{")))
PY
}

# ---- 1. spread ----
send_all 0 2 && ok "24 streams x 3 files through the list" || bad "sends through the list failed: $(cat "$WORK"/err.* | head -5)"
total=0
for n in 1 2 3; do
	c=$(requests $n)
	HOME_COUNT[$n]=$c
	total=$((total + c))
	((c > 0 && c % 3 == 0)) && ok "node $n answered $c requests ($((c / 3)) whole streams)" ||
		bad "node $n answered $c requests (want > 0, whole streams of 3)"
done
((total == NSTREAMS * 3)) && ok "every request answered once ($total)" || bad "$total requests answered, want $((NSTREAMS * 3))"

# ---- 2. node 2 drains (SIGTERM) under load ----
send_all 3 5 bg & load=$!
sleep 0.3
"${CLUSTER[@]}" node "$CL" 2 stop
wait $load && ok "node 2 stopped (SIGTERM) under load: every request answered" ||
	bad "requests failed while node 2 drained: $(cat "$WORK"/err.* | head -5)"

# ---- 3. node 3 killed (SIGKILL) under load ----
send_all 6 6 bg & load=$!
sleep 0.2
"${CLUSTER[@]}" node "$CL" 3 kill
wait $load && ok "node 3 killed (SIGKILL) under load: every request answered" ||
	bad "requests failed after node 3 was killed: $(cat "$WORK"/err.* | head -5)"
after1=$(requests 1)
((after1 > HOME_COUNT[1])) && ok "node 1 took the moved streams ($after1 answers)" || bad "node 1 took nothing ($after1)"

# ---- 4. the nodes return, the streams move back ----
"${CLUSTER[@]}" node "$CL" 2 start
"${CLUSTER[@]}" node "$CL" 3 start
send_all 7 7 && ok "last file of every stream after the nodes returned" || bad "sends after the return failed"
for n in 2 3; do
	c=$(requests $n)
	((c == HOME_COUNT[n] / 3)) && ok "node $n back: its $c streams came back" ||
		bad "node $n answered $c after its return, want its $((HOME_COUNT[n] / 3)) streams"
done

# ---- 4b. a long-lived handle follows its node away and back ----
LIVE=$NSTREAMS # one more stream, judged with the others
before=($(requests 1) $(requests 2) $(requests 3))
send $LIVE 0 0
home=0
for n in 1 2 3; do (($(requests $n) > before[n - 1])) && home=$n; done
((home > 0)) && ok "stream $(stream $LIVE) lives on node $home" || bad "no node answered $(stream $LIVE)"
mkdir -p "$WORK/out/$LIVE"
others() { local n t=0; for n in 1 2 3; do ((n == home)) || t=$((t + $(requests $n))); done; echo $t; }
others_before=$(others)
# shellcheck disable=SC2046
"$TOOLS/client_run" --server "$SERVERS" --ca "$CA" --token "$(cat "$TOKEN_FILE")" --stream "$(stream $LIVE)" \
	--incarnation $((7000 + LIVE)) --seq 2 --attempts 8 --delay-ms 1000 -o "$WORK/out/$LIVE" \
	$(files $LIVE 1 7) >>"$WORK/status.$LIVE" 2>"$WORK/live.err" & live=$!
sleep 1.5
"${CLUSTER[@]}" node "$CL" "$home" stop
"${CLUSTER[@]}" node "$CL" "$home" start
wait $live && ok "long-lived handle: every request answered while node $home drained and returned" ||
	bad "long-lived handle failed: $(cat "$WORK/live.err")"
moved=$(($(others) - others_before))
((moved >= 1)) && ok "long-lived handle: $moved requests went to the other nodes meanwhile" ||
	bad "long-lived handle: nothing went to the other nodes while node $home drained"
c=$(requests "$home")
((c >= 1)) && ok "long-lived handle: the stream came back to node $home ($c requests after its return)" ||
	bad "long-lived handle never came back to node $home"
grep "^stats" "$WORK/live.err" | sed 's/^/  /' || true

# ---- 4c. the medium sequences through the list, the nodes under load ----
LAST=$((LIVE + ${#MEDIUM[@]}))
IFS=, read -r -a ports <<<"${SERVERS//127.0.0.1:/}"
"$TOOLS/pd_load" --port "$(IFS=,; echo "${ports[*]}")" --ca "$CA" --token-file "$TOKEN_FILE" \
	--seq "$TESTDATA/profiles/heap-small" --seq "$TESTDATA/profiles/mutex-small" \
	--connections 6 --streams 60 --inflight 8 --seconds 900 --prefix route-load \
	>"$WORK/load.out" 2>&1 & loadpid=$!
pd_at_exit "kill -9 $loadpid 2>/dev/null || true"
pd_wait_until "$loadpid" grep -q "load starts" "$WORK/load.out" ||
	bad "pd_load did not start: $(tail -n 3 "$WORK/load.out")"
medium_stream() { # I: its files one by one, one `pdelta send` each
	local n k
	n=$(nfiles "$1")
	for ((k = 0; k < n; k++)); do send "$1" "$k" "$k" || return 1; done
}
pids=()
for ((i = LIVE + 1; i <= LAST; i++)); do medium_stream "$i" & pids+=($!); done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
kill -0 "$loadpid" 2>/dev/null && ok "the medium sequences were sent while pd_load ran" ||
	bad "pd_load ended before the medium sequences were sent: $(tail -n 3 "$WORK/load.out")"
((rc == 0)) && ok "${#MEDIUM[@]} medium sequences x 6 files through the list under load" ||
	bad "medium sends failed: $(cat "$WORK"/err.* | head -5)"
kill -TERM "$loadpid" 2>/dev/null || true
wait "$loadpid" || true
grep -E '^ +(run|status|errors):' "$WORK/load.out" | sed 's/^ */  pd_load /'
res=$(grep '^RESULT ' "$WORK/load.out" | tail -n 1)
[[ $res == *" violations=0 "* && $res == *" unexpected=0 "* && $res == *" fatal=0 "* ]] &&
	ok "pd_load over the 3 nodes: no violation, no unexpected status" || bad "pd_load: ${res:-no RESULT line}"

# ---- 5. the oracle over every stream; admin through the list ----
for ((i = 0; i <= LAST; i++)); do
	w=$WORK/judge-$i.sh
	cat >"$w" <<JUDGE
#!/usr/bin/env bash
while [[ \$# -gt 0 && \$1 != -o ]]; do shift; done
cp "$WORK/out/$i"/* "\$2"/
sed -E 's/^([^ ]+) DUPLICATE ([^ ]+) orig=([A-Z]+)/\1 \3 \2/' "$WORK/status.$i"
JUDGE
	chmod +x "$w"
	if "$PY" "$ROOT/tests/oracle/check_seq.py" --pdelta "$w" --no-go --label "$(stream "$i")" \
		$(files "$i" 0 $(($(nfiles "$i") - 1))) >"$WORK/judge-$i.log" 2>&1; then
		ok "oracle $(stream "$i"): $(tail -1 "$WORK/judge-$i.log")"
	else
		bad "oracle $(stream "$i")"
		head -20 "$WORK/judge-$i.log"
	fi
done
dups=$(cat "$WORK"/status.* | grep -c DUPLICATE || true)
echo "  ($dups DUPLICATE answers)"
CTL=("$BINDIR/pdeltactl" --server "$SERVERS" --ca "$CA" --token-file "$ADMIN_TOKEN_FILE")
"${CTL[@]}" stream "$(stream 5)" --tenant acme >"$WORK/ctl.stream" 2>&1 &&
	grep -Eq '^seq +8$' "$WORK/ctl.stream" && ok "pdeltactl stream through the list (seq 8)" ||
	bad "pdeltactl stream: $(cat "$WORK/ctl.stream")"
n=$("${CTL[@]}" streams --tenant acme --prefix route/ 2>&1 | grep -c "route/" || true)
((n == LAST + 1)) && ok "pdeltactl streams through the list: all $n" || bad "pdeltactl streams listed $n"

# ---- 5b. a broken node in the list: the streams it would take move on ----
# A fourth "node" that accepts TCP and answers HTTP 400 instead of TLS (a wrong service on
# that port): the streams ranked first there fail over to the real nodes, pdeltactl too.
G=$(free_port)
"$PY" - "$G" "$WORK/broken.count" <<'EOF' &
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(64)
n = 0
while True:
    c, _ = s.accept()
    n += 1
    open(sys.argv[2], "w").write(str(n))
    try:
        c.recv(4096)
        c.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    except OSError:
        pass
    c.close()
EOF
broken=$!
pd_at_exit "kill $broken 2>/dev/null || true"
pd_wait_port "$G" "$broken" || bad "the broken node did not listen"
rc=0
for ((k = 0; k < 8; k++)); do
	"$BINDIR/pdelta" send --server "$SERVERS,127.0.0.1:$G" --ca "$CA" --token-file "$TOKEN_FILE" \
		--stream "broken/$k" -o "$WORK/broken-out" "$(files 0 0 0)" >>"$WORK/broken.status" 2>>"$WORK/broken.err" || rc=1
done
tried=$(cat "$WORK/broken.count" 2>/dev/null || echo 0)
((rc == 0)) && ok "8 streams through a list with a node that answers HTTP instead of TLS: all answered" ||
	bad "sends with a broken node in the list failed: $(head -n 3 "$WORK/broken.err")"
((tried >= 1)) && ok "the broken node was tried ($tried connections) and its streams moved on" ||
	bad "the broken node was never tried (the check proves nothing)"
"$BINDIR/pdeltactl" --server "$SERVERS,127.0.0.1:$G" --ca "$CA" --token-file "$ADMIN_TOKEN_FILE" \
	streams --tenant acme --prefix broken/ >"$WORK/broken.ctl" 2>&1 &&
	(($(grep -c 'broken/' "$WORK/broken.ctl") == 8)) && ok "pdeltactl through that list lists the 8 streams" ||
	bad "pdeltactl with a broken node in the list: $(head -n 3 "$WORK/broken.ctl")"
kill "$broken" 2>/dev/null || true

# ---- 6. bad lists ----
badlist() { # LIST WANT
	local out shown=${1:0:40}
	out=$("$BINDIR/pdelta" send --server "$1" --ca "$CA" --token-file "$TOKEN_FILE" --stream x -o "$WORK/x" \
		"$(files 0 0 0)" 2>&1) && { bad "pdelta send accepted --server '$shown'"; return; }
	[[ $out == *"$2"* ]] && ok "pdelta send --server '$shown': $2" || bad "pdelta send --server '$shown': $out"
	out=$("${CTL[@]:0:1}" --server "$1" --ca "$CA" --token-file "$ADMIN_TOKEN_FILE" stats 2>&1) &&
		{ bad "pdeltactl accepted --server '$shown'"; return; }
	[[ $out == *"$2"* ]] && ok "pdeltactl --server '$shown': $2" || bad "pdeltactl --server '$shown': $out"
}
badlist "127.0.0.1:1,,127.0.0.1:2" "empty entry"
badlist "127.0.0.1:1," "empty entry"
badlist "127.0.0.1:1,127.0.0.1:70000" "port 1..65535"
badlist "127.0.0.1:1,127.0.0.1" "want host:port"
badlist "127.0.0.1:9,127.0.0.1:9" "listed twice"
badlist "$(seq -s, -f 'n%g:7070' 1 65)" "more than 64 entries"
pd_finish
