#!/usr/bin/env bash
# test_server_faults.sh: pdeltad against what an attacker or a bad disk does to it.
#
#   memory  gzip bombs (4 parallel uploads that inflate past max_inflated) are refused, and the
#           memory they made the workers grow goes back: RSS (/proc/PID/status VmRSS) after the
#           bombs and after a following normal request stays under the steady-state budget of
#           README "Memory budget" (baseline + workers x worker_keep_bytes + slack), and the
#           peak (VmHWM) under the peak budget (+ workers x max_inflated)
#   corrupt a flipped byte in the kept response: the retry of that seq gets `state` (not
#           retryable), never the bytes; counted, logged; the next seq works. A flipped byte in
#           the state blob: after a restart the next profile is a BASELINE `evicted`, counted,
#           logged, recorded as state-corrupt; the one after is a DELTA again
#   full    the database at its size budget (db_max_bytes, SQLITE_FULL): store errors are
#           logged with their cause, rate-limited (one line for many), and the last one is in
#           /healthz and /metrics. As root, the same on a real full tmpfs (errno ENOSPC).
#
# ONLY=memory|corrupt|full runs one part. Env: BINDIR, PDELTA_TESTDATA (see lib.sh).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
pd_init faults
pd_pki
PROFILES=$TESTDATA/profiles
mapfile -t HS < <(ls "$PROFILES/heap-small"/*.pb.gz)
MNT=

want() { [[ -z ${ONLY:-} || ${ONLY:-} == "$1" ]]; }
send() { "$BINDIR/pdelta" send --server "127.0.0.1:$PORT" --ca "$CA" --token "$AGENT_TOKEN" \
	--attempts 1 --incarnation 7 "$@"; }
kb() { awk -v k="$1" '$1 == k":" {print $2}' "/proc/$SERVER_PID/status"; }
http_body() { "$PY" -c "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())" "$1"; }
sql() { "$PY" - "$WORK/state.db" "$@" <<'EOF'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=10)
db.execute(sys.argv[2], sys.argv[3:])
db.commit()
EOF
}
restart() { pd_stop_server TERM; pd_start_server "$@"; }
umount_tmpfs() {
	if [[ -n $MNT ]]; then
		pd_stop_server KILL
		umount "$MNT" 2>/dev/null || true
		MNT=
	fi
}
pd_at_exit umount_tmpfs

# ---- memory: gzip bombs ----------------------------------------------------------------------
if want memory; then
	W=2 INFL_MB=96 KEEP_MB=8
	"$PY" - "$WORK/bomb.gz" <<'EOF'
import sys, zlib
c = zlib.compressobj(9, zlib.DEFLATED, 31)
z = bytes(1 << 20)
with open(sys.argv[1], "wb") as f:
    for _ in range(256):  # 256 MiB of zeros, ~260 KB compressed
        f.write(c.compress(z))
    f.write(c.flush())
EOF
	pd_start_server --workers $W --db_sync no --max_inflated ${INFL_MB}m --worker_keep_bytes ${KEEP_MB}m
	send --stream mem/warm -o "$WORK/o" "${HS[@]:0:2}" >/dev/null
	base=$(kb VmRSS)
	pids=()
	for i in 1 2 3 4; do
		send --stream mem/bomb$i -o "$WORK/o" "$WORK/bomb.gz" >"$WORK/bomb$i.out" 2>&1 &
		pids+=($!)
	done
	wait "${pids[@]}" || true
	refused=$(grep -l 'INPUT_LIMIT' "$WORK"/bomb?.out | wc -l)
	((refused == 4)) && ok "memory: 4 gzip bombs refused (limit/INPUT_LIMIT)" ||
		bad "memory: $refused of 4 bombs refused: $(cat "$WORK"/bomb?.out)"
	# A worker trims right after it answered: give it a moment (the RSS must come back, and
	# stay back; without the trim it never does).
	for _ in $(seq 30); do
		after_bombs=$(kb VmRSS)
		((after_bombs <= base + W * KEEP_MB * 1024 + 24 * 1024)) && break
		sleep 0.1
	done
	send --stream mem/after -o "$WORK/o" "${HS[@]:0:3}" >/dev/null
	after_normal=$(kb VmRSS)
	peak=$(kb VmHWM)
	# README "Memory budget": between requests, each worker keeps at most worker_keep_bytes;
	# 24 MiB of slack covers allocator and TLS noise. At peak, each worker also holds up to
	# max_inflated for the inflated input.
	steady=$((base + W * KEEP_MB * 1024 + 24 * 1024))
	peak_budget=$((base + W * (INFL_MB + KEEP_MB) * 1024 + 32 * 1024))
	echo "     RSS kB: base $base, after bombs $after_bombs, after a normal request $after_normal," \
		"peak $peak; budgets: steady $steady, peak $peak_budget"
	if ldd "$BINDIR/pdeltad" 2>/dev/null | grep 'lib[at]san' >/dev/null; then
		# A sanitizer's shadow memory and quarantine make RSS meaningless: figures only.
		echo "info: sanitizer build, RSS not judged: after bombs ${after_bombs} kB, after a normal request ${after_normal} kB, peak ${peak} kB"
	else
		((after_bombs <= steady)) && ok "memory: RSS after the bombs ${after_bombs} kB <= ${steady} kB" ||
			bad "memory: RSS after the bombs ${after_bombs} kB > ${steady} kB (worker buffers kept)"
		((after_normal <= steady)) && ok "memory: RSS after a normal request ${after_normal} kB <= ${steady} kB" ||
			bad "memory: RSS after a normal request ${after_normal} kB > ${steady} kB"
		((peak <= peak_budget)) && ok "memory: peak RSS ${peak} kB <= peak budget ${peak_budget} kB" ||
			bad "memory: peak RSS ${peak} kB > peak budget ${peak_budget} kB"
	fi
	trims=$(pd_metric pdeltad_worker_trims_total 0)
	((trims >= 1)) && ok "memory: pdeltad_worker_trims_total = $trims" ||
		bad "memory: no worker trim counted"
	pd_stop_server TERM
fi

# ---- corrupt: kept response and state blob ---------------------------------------------------
if want corrupt; then
	rm -f "$WORK"/state.db*
	pd_start_server --workers 2 --db_sync no
	send --stream c/resp -o "$WORK/c1" "${HS[@]:0:2}" >/dev/null
	# Flip one byte in the middle of the kept response of seq 2.
	sql "UPDATE streams SET last_delta = substr(last_delta, 1, 99) ||
		(CASE WHEN substr(last_delta, 100, 1) = x'00' THEN x'01' ELSE x'00' END) ||
		substr(last_delta, 101) WHERE name = 'c/resp'"
	rc=0
	send --stream c/resp --seq 2 -o "$WORK/c2" "${HS[1]}" >"$WORK/c2.out" 2>&1 || rc=$?
	if ((rc != 0)) && grep -q 'state' "$WORK/c2.out" && grep -q 'corrupt' "$WORK/c2.out" &&
		! grep -q DUPLICATE "$WORK/c2.out"; then
		ok "corrupt response: retry refused with a state error (exit $rc)"
	else
		bad "corrupt response: retry answered (exit $rc): $(cat "$WORK/c2.out")"
	fi
	if [[ -f $WORK/c2/$(basename "${HS[1]}") ]] && ! gzip -t "$WORK/c2/$(basename "${HS[1]}")" 2>/dev/null; then
		bad "corrupt response: a file that fails gzip -t was written"
	else
		ok "corrupt response: no corrupt output file"
	fi
	n=$(pd_metric 'pdeltad_store_corrupt_rows_total{what="response"}' 0)
	((n == 1)) && ok "corrupt response: counted in /metrics" || bad "corrupt response: metric is $n"
	grep -q 'ERROR.*c/resp.*fails its checksum' "$WORK/server.log" && ok "corrupt response: logged" ||
		bad "corrupt response: no log line"
	out=$(send --stream c/resp --seq 3 -o "$WORK/c3" "${HS[2]}" 2>&1) && [[ $out == *DELTA* ]] &&
		ok "corrupt response: the next seq is a DELTA" || bad "corrupt response: next seq: $out"

	send --stream c/state -o "$WORK/s1" "${HS[@]:0:2}" >/dev/null
	pd_stop_server TERM
	sql "UPDATE streams SET state = substr(state, 1, 49) ||
		(CASE WHEN substr(state, 50, 1) = x'00' THEN x'01' ELSE x'00' END) ||
		substr(state, 51) WHERE name = 'c/state'"
	pd_start_server --workers 2 --db_sync no
	out=$(send --stream c/state --seq 3 -o "$WORK/s3" "${HS[2]}" 2>&1) || true
	[[ $out == *"BASELINE evicted"* ]] && ok "corrupt state: BASELINE evicted" ||
		bad "corrupt state: got [$out]"
	n=$(pd_metric 'pdeltad_store_corrupt_rows_total{what="state"}' 0)
	((n == 1)) && ok "corrupt state: counted in /metrics" || bad "corrupt state: metric is $n"
	grep -q 'ERROR stream acme/c/state: stored state is corrupt' "$WORK/server.log" &&
		ok "corrupt state: logged" || bad "corrupt state: no log line"
	reason=$("$PY" -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute(
		\"SELECT last_reset_reason FROM streams WHERE name='c/state'\").fetchone()[0])" "$WORK/state.db")
	[[ $reason == state-corrupt ]] && ok "corrupt state: recorded as state-corrupt" ||
		bad "corrupt state: last_reset_reason [$reason]"
	out=$(send --stream c/state --seq 4 -o "$WORK/s4" "${HS[3]}" 2>&1) && [[ $out == *DELTA* ]] &&
		ok "corrupt state: the next profile is a DELTA" || bad "corrupt state: next: $out"
	pd_stop_server TERM
fi

# ---- full: the database cannot grow -----------------------------------------------------------
# fill_until_full PREFIX: new streams until 6 requests failed; FAILED = how many did
fill_until_full() {
	FAILED=0
	for i in $(seq 1 200); do
		send --stream "$1$i" -o "$WORK/f" "${HS[0]}" >"$WORK/full.out" 2>&1 || FAILED=$((FAILED + 1))
		((FAILED >= 6)) && break
	done
}
check_full() { # check_full LABEL CAUSE_REGEX
	local lines
	((FAILED >= 6)) && ok "$1: $FAILED requests failed on the full database" ||
		bad "$1: the database never filled up"
	grep -q 'store' "$WORK/full.out" && ok "$1: the client is told it is a store error" ||
		bad "$1: client got $(cat "$WORK/full.out")"
	lines=$(grep -c 'ERROR state store: commit of .* failed' "$WORK/server.log" || true)
	grep -Eq "ERROR state store: commit of .* failed: .*$2" "$WORK/server.log" &&
		((lines >= 1 && lines <= 2)) && ok "$1: logged with its cause, rate-limited ($lines lines for $FAILED failures)" ||
		bad "$1: $lines log lines: $(grep 'state store' "$WORK/server.log" | head -3)"
	body=$(http_body "http://127.0.0.1:$MPORT/healthz")
	grep -Eq "^store: last error at .*$2" <<<"$body" && ok "$1: /healthz shows the last store error" ||
		bad "$1: /healthz: $body"
	ts=$(pd_metric pdeltad_store_last_error_timestamp_seconds 0)
	"$PY" -c "import sys, time; sys.exit(0 if abs(time.time() - float(sys.argv[1])) < 300 else 1)" "$ts" &&
		ok "$1: /metrics has the last store error's time" || bad "$1: last error timestamp $ts"
	body=$(http_body "http://127.0.0.1:$MPORT/metrics")
	grep -Eq "^pdeltad_store_last_error_info\{message=\".*$2" <<<"$body" &&
		ok "$1: /metrics has the last store error's message" || bad "$1: no last_error_info"
}
if want full; then
	rm -f "$WORK"/state.db*
	: >"$WORK/server.log"
	pd_start_server --workers 2 --db_sync no --db_max_bytes 1m
	fill_until_full full/
	check_full "full (db_max_bytes)" "disk is full \(sqlite 13, [0-9]+ bytes free"
	pd_stop_server TERM

	# A real full file system: a small tmpfs (needs root and mount; CI runs as root).
	MNT=$WORK/mnt
	mkdir -p "$MNT"
	if [[ $(id -u) == 0 ]] && mount -t tmpfs -o size=1536k tmpfs "$MNT" 2>/dev/null; then
		: >"$WORK/server.log"
		"$BINDIR/pdeltad" --listen "127.0.0.1:$PORT" --metrics_listen "127.0.0.1:$MPORT" \
			--tls_cert "$WORK/certs/server.pem" --tls_key "$WORK/certs/server.key" \
			--tenants "$WORK/tenants" --db "$MNT/state.db" --workers 2 --db_sync no \
			>>"$WORK/server.log" 2>&1 &
		SERVER_PID=$!
		pd_wait_http "http://127.0.0.1:$MPORT/healthz" "$SERVER_PID" || true
		fill_until_full tmpfs/
		check_full "full (tmpfs)" "disk is full \(sqlite 13, [0-9]{1,6} bytes free"
		umount_tmpfs
	else
		MNT=
		echo "skip full (tmpfs): not root or mount refused"
	fi
fi

pd_finish
