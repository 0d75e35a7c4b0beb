#!/usr/bin/env bash
# test_load.sh: pdeltad under load (issue 6), driven by tests/tools/pd_load.
#
# Default (short, about 40 s): 200 TLS connections, 2,000 streams of the heap-small and
# mutex-small sequences: a closed-loop capacity run (3,000 requests) and an open-loop run at
# 150 deltas/s for 12 s; then 100 plain TCP idle sockets next to 50 connections. Checks: no
# failed request, no protocol violation, p99 under generous bounds (LOAD_P99_MS, default
# 1000 ms at the offered rate; LOAD_CAP_P99_MS, default 5000 ms in the closed loop, where
# latency is queueing), the server still healthy and its log free of errors.
#
# LOAD_FULL=1 (about 5 minutes): the issue's target: 1,000 TLS connections over 10,000
# streams of the mutex-medium and heap-medium sequences. Three runs: closed-loop capacity
# for first profiles (10,000 streams, CAP_SECONDS, default 30) and in steady state (1,000
# streams, 25 s warm-up), then LOAD_RATE (default 250) deltas/s offered for LOAD_SECONDS
# (default 60; LOAD_WARMUP adds a warm-up) with 5,000 idle sockets, after seeding every
# stream with its first profile (pd_load --seed, closed loop; LOAD_SEED=0 skips it, and the run
# then measures first profiles, BASELINE, instead of deltas), when the fd limit allows
# (raised with ulimit -n). Prints the figures; the target on 2 cores is >= 250 deltas/s and
# p99 <= 200 ms (checked only with LOAD_STRICT=1; the other p99 bounds are generous). LOAD_SOAK=SECONDS adds an open-loop soak run (LOAD_RATE, default 150)
# that prints the server's RSS every 10 s. LOAD_IDLE_AB=RATE (with LOAD_FULL=1) instead runs the
# same open-loop load at RATE three times (without, with the idle sockets, without again) and
# checks that the idle sockets do not harm p99 (within max(1.25x, +25 ms) of the larger A). LOAD_CAPACITY=0 skips the two
# closed-loop runs of LOAD_FULL. LOAD_SHADOW_AB=1 (short mode) instead measures shadow
# verification: arms shadow_rate 0, 0.001 (the default) and 1, interleaved LOAD_SHADOW_ROUNDS
# times (default 2), each a fresh server running the closed-loop capacity run and the paced
# run; prints per arm the capacity, server CPU per response, p50/p99 at the paced rate,
# server RSS and the shadow metrics (checked, skipped, CPU).
#
# Env: BINDIR (default bin), BUILD (default build/release).
set -euo pipefail

. "$(dirname "$0")/lib.sh"
PDELTAD=$BINDIR/pdeltad
LOAD=$BUILDDIR/tests/tools/pd_load
FULL=${LOAD_FULL:-0}

pd_need "$PDELTAD" "$LOAD"
pd_init load

# ---- setup -------------------------------------------------------------------------------
if ((FULL)); then
	CONNS=1000 STREAMS=10000 IDLE=5000 SECONDS_MAX=${LOAD_SECONDS:-60} REQUESTS=0
	SEQS=(mutex-medium heap-medium)
	# Client and server each need an fd per socket (+ margin); raise the soft limit.
	want=$((CONNS + IDLE + 256))
	ulimit -n "$want" 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
	if (($(ulimit -n) < want)); then
		IDLE=$(($(ulimit -n) - CONNS - 256))
		((IDLE < 0)) && IDLE=0
		echo "note: fd limit $(ulimit -n): idle sockets reduced to $IDLE"
	fi
else
	CONNS=200 STREAMS=2000 IDLE=0 SECONDS_MAX=30 REQUESTS=3000
	SEQS=(heap-small mutex-small)
fi
SEQ_ARGS=()
for s in "${SEQS[@]}"; do SEQ_ARGS+=(--seq "$TESTDATA/profiles/$s"); done

HEALTHZ=http://127.0.0.1:$MPORT/healthz
pd_certs "$WORK/certs"
TOKEN=tok-load-$RANDOM$RANDOM
printf '%s\n' "$TOKEN" >"$WORK/token"
printf 'tenant=load role=agent token_sha256=%s\n' "$(pd_hash "$TOKEN")" >"$WORK/tenants"
# Idle sockets must be able to sit for the whole run: the handshake deadline is
# raised above it (the default 10 s would close and the tool would reopen them),
# and the caps on unauthenticated connections (in total and per source address:
# everything here comes from 127.0.0.1) are raised above IDLE, since this test
# measures what idle sockets cost, not how they are evicted (test_server_flood).
pd_conf "127.0.0.1:$MPORT" "$WORK/state.db" >"$WORK/pdeltad.conf"
cat >>"$WORK/pdeltad.conf" <<EOF
max_connections = $((2 * (CONNS + IDLE) + 200))
max_unauth_connections = $((CONNS + IDLE + 100))
max_unauth_per_source = $((CONNS + IDLE + 100))
handshake_timeout_ms = $((SECONDS_MAX + 120))s
log_level = warn
EOF

start_server() {
	"$PDELTAD" --config "$WORK/pdeltad.conf" >>"$WORK/server.log" 2>&1 &
	SERVER_PID=$!
	pd_wait_http "$HEALTHZ" "$SERVER_PID" && return 0
	bad "server did not start"
	exit 1
}

# run_load NAME ARGS...: runs pd_load, keeps its output in $WORK/NAME.out, echoes it.
run_load() {
	local name=$1 rc=0
	shift
	"$LOAD" --port "$PORT" --ca "$WORK/certs/ca.pem" --token-file "$WORK/token" \
		--server-pid "$SERVER_PID" "$@" >"$WORK/$name.out" 2>&1 || rc=$?
	sed 's/^/    /' "$WORK/$name.out"
	return $rc
}

check_run() { # check_run NAME RC P99_BOUND
	local name=$1 rc=$2 bound=$3 p99 fatal viol
	p99=$(pd_result "$WORK/$name.out" p99_ms)
	fatal=$(pd_result "$WORK/$name.out" fatal)
	viol=$(pd_result "$WORK/$name.out" violations)
	[[ $rc == 0 ]] && ok "$name: pd_load exit 0" || bad "$name: pd_load exit $rc"
	[[ ${fatal:-x} == 0 && ${viol:-x} == 0 ]] && ok "$name: no failed request, no protocol violation" ||
		bad "$name: fatal=$fatal violations=$viol"
	if [[ -n $p99 ]] && awk -v p="$p99" -v b="$bound" 'BEGIN { exit !(p <= b) }'; then
		ok "$name: p99 $p99 ms <= $bound ms"
	else
		bad "$name: p99 ${p99:-?} ms > $bound ms"
	fi
}

start_server

# ---- the runs -------------------------------------------------------------------------------
# Two load models (see pd_load.c): closed loop (every stream busy all the time, bounded by
# one request in flight per connection: measures capacity; latency is then queueing) and
# open loop at an offered rate (one profile per stream every STREAMS/RATE seconds, as agents
# send them: latency is the service time under that load).
rc=0
metric() { # metric NAME: one unlabelled sample of /metrics (0 when absent)
	"$PY" -c "
import sys, urllib.request
body = urllib.request.urlopen('http://127.0.0.1:$MPORT/metrics', timeout=5).read().decode()
print(next((l.split()[1] for l in body.splitlines() if l.split(' ')[0] == '$1'), 0))"
}
if [[ -n ${LOAD_SHADOW_AB:-} ]] && ! ((FULL)); then
	for round in $(seq "${LOAD_SHADOW_ROUNDS:-2}"); do
		for rate in 0 0.001 1; do
			name=sh_${rate}_$round
			kill -TERM "$SERVER_PID" && wait "$SERVER_PID" || true
			PDELTAD_SHADOW_RATE=$rate start_server
			echo "== shadow_rate $rate (round $round): capacity, $REQUESTS requests closed loop; paced 150 deltas/s, 10s"
			rc=0
			run_load "${name}_cap" --prefix "${name}c" --connections "$CONNS" --streams "$STREAMS" --inflight 1 \
				--requests "$REQUESTS" --seconds "$SECONDS_MAX" "${SEQ_ARGS[@]}" >/dev/null || rc=$?
			check_run "${name}_cap" "$rc" "${LOAD_CAP_P99_MS:-5000}"
			rc=0
			run_load "${name}_paced" --prefix "${name}p" --connections "$CONNS" --streams 300 --rate 150 \
				--seconds 10 "${SEQ_ARGS[@]}" >/dev/null || rc=$?
			check_run "${name}_paced" "$rc" "${LOAD_P99_MS:-1000}"
			cap=${name}_cap paced=${name}_paced
			echo "figures: shadow_rate $rate round $round: capacity $(pd_result "$WORK/$cap.out" rate) deltas/s," \
				"server CPU $(awk -v c="$(pd_result "$WORK/$cap.out" server_cpu_s)" -v n="$(pd_result "$WORK/$cap.out" responses)" \
				'BEGIN { printf "%.3f", c * 1000 / n }') ms/response; paced p50 $(pd_result "$WORK/$paced.out" p50_ms) ms" \
				"p99 $(pd_result "$WORK/$paced.out" p99_ms) ms, server CPU $(pd_result "$WORK/$paced.out" server_cpu_s) s; RSS" \
				"$(($(pd_result "$WORK/$paced.out" rss_kb) / 1024)) MB (peak $(($(pd_result "$WORK/$paced.out" hwm_kb) / 1024)) MB);" \
				"shadow: $(metric pdeltad_shadow_verified_total) checked," \
				"$(metric pdeltad_shadow_mismatch_cases_total) mismatches, cpu $(metric pdeltad_shadow_cpu_seconds_total) s," \
				"peak held $(($(metric pdeltad_shadow_bytes_held_max) / 1024)) KiB"
			"$PY" -c "import urllib.request; print(''.join(l + ' ' for l in urllib.request.urlopen('http://127.0.0.1:$MPORT/metrics').read().decode().splitlines() if l.startswith('pdeltad_shadow_skipped_total')))"
			[[ $(metric pdeltad_shadow_mismatch_cases_total) == 0 ]] || bad "shadow_rate $rate: mismatches"
		done
	done
elif ((FULL)) && [[ -n ${LOAD_IDLE_AB:-} ]]; then
	# Do idle sockets harm the others? The same open-loop run (CONNS connections, STREAMS
	# streams, LOAD_IDLE_AB deltas/s: a rate the server sustains) three times, A-B-A: without,
	# with IDLE idle sockets, without again. Each arm has its own stream names (all start from
	# first profiles); the server, its store and cache grow from arm to arm, so the two A arms
	# bracket B. B's p99 must stay within max(1.25x, +25 ms) of the larger A p99.
	((IDLE > 0)) || { bad "idle A/B: no idle sockets possible (fd limit $(ulimit -n))"; exit 1; }
	for arm in a1:0 b:"$IDLE" a2:0; do
		name=ab_${arm%%:*}
		n=${arm#*:}
		echo "== idle A/B arm ${arm%%:*}: $CONNS connections, $STREAMS streams, $LOAD_IDLE_AB deltas/s, $n idle sockets, ${SECONDS_MAX}s"
		rc=0
		run_load "$name" --prefix "$name" --connections "$CONNS" --streams "$STREAMS" --idle "$n" --rate "$LOAD_IDLE_AB" \
			--warmup "${LOAD_WARMUP:-5}" --seconds "$SECONDS_MAX" "${SEQ_ARGS[@]}" || rc=$?
		check_run "$name" "$rc" "${LOAD_P99_MS:-2000}"
	done
	pa1=$(pd_result "$WORK/ab_a1.out" p99_ms)
	pa2=$(pd_result "$WORK/ab_a2.out" p99_ms)
	pb=$(pd_result "$WORK/ab_b.out" p99_ms)
	pa=$(awk -v x="$pa1" -v y="$pa2" 'BEGIN { print (x > y ? x : y) }')
	for a in a1 b a2; do
		echo "figures: arm $a at $LOAD_IDLE_AB deltas/s offered: $(pd_result "$WORK/ab_$a.out" rate) deltas/s, p50 $(pd_result "$WORK/ab_$a.out" p50_ms) ms," \
			"p99 $(pd_result "$WORK/ab_$a.out" p99_ms) ms, server CPU $(pd_result "$WORK/ab_$a.out" server_cpu_s) s"
	done
	if awk -v a="$pa" -v b="$pb" 'BEGIN { exit !(b <= a * 1.25 || b <= a + 25) }'; then
		ok "idle A/B: p99 with $IDLE idle sockets ($pb ms) within max(1.25x, +25 ms) of $pa ms (A arms: $pa1, $pa2)"
	else
		bad "idle A/B: p99 with $IDLE idle sockets $pb ms vs $pa ms without (A arms: $pa1, $pa2)"
	fi
	grep -q "$IDLE idle sockets ($IDLE open at the end, 0 closed" "$WORK/ab_b.out" &&
		ok "idle A/B: all $IDLE idle sockets stayed open" || bad "idle A/B: idle sockets were closed"
elif ((FULL)); then
	if [[ ${LOAD_CAPACITY:-1} == 1 ]]; then
	echo "== capacity, first profiles: $CONNS connections, $STREAMS streams (${SEQS[*]}), closed loop, ${CAP_SECONDS:=30}s"
	run_load capacity --connections "$CONNS" --streams "$STREAMS" --inflight 1 \
		--seconds "$CAP_SECONDS" "${SEQ_ARGS[@]}" || rc=$?
	check_run capacity "$rc" "${LOAD_CAP_P99_MS:-60000}"
	echo "== capacity, steady state: $CONNS connections, $CONNS streams, closed loop, 25s warm-up + ${CAP_SECONDS}s"
	rc=0
	run_load steady --connections "$CONNS" --streams "$CONNS" --inflight 1 --warmup 25 \
		--seconds "$CAP_SECONDS" "${SEQ_ARGS[@]}" || rc=$?
	check_run steady "$rc" "${LOAD_CAP_P99_MS:-60000}"
	fi
	RATE=${LOAD_RATE:-250}
	echo "== target: $CONNS connections, $STREAMS streams, $RATE deltas/s offered, $IDLE idle sockets, ${SECONDS_MAX}s"
	rc=0
	SEED=()
	[[ ${LOAD_SEED:-1} == 1 ]] && SEED=(--seed)
	run_load target --connections "$CONNS" --streams "$STREAMS" --idle "$IDLE" --rate "$RATE" \
		"${SEED[@]}" --warmup "${LOAD_WARMUP:-0}" --seconds "$SECONDS_MAX" "${SEQ_ARGS[@]}" || rc=$?
	check_run target "$rc" "${LOAD_P99_MS:-2000}"
	rate=$(pd_result "$WORK/target.out" rate)
	p99=$(pd_result "$WORK/target.out" p99_ms)
	if [[ ${LOAD_CAPACITY:-1} == 1 ]]; then
		echo "figures: capacity $(pd_result "$WORK/capacity.out" rate) deltas/s (first profiles), $(pd_result "$WORK/steady.out" rate) deltas/s (steady state)"
	fi
	((${#SEED[@]})) && echo "figures: seeding (every stream's first profile, closed loop):" \
		"$(pd_result "$WORK/target.out" seed_rate) first profiles/s, server CPU $(pd_result "$WORK/target.out" seed_cpu_s) s"
	echo "figures: at $RATE offered: $rate deltas/s, p50 $(pd_result "$WORK/target.out" p50_ms) ms, p99 $p99 ms" \
		"(target on 2 cores: >= 250 deltas/s, p99 <= 200 ms)"
	if [[ ${LOAD_STRICT:-0} == 1 ]]; then
		awk -v r="$rate" 'BEGIN { exit !(r >= 245) }' && ok "target: >= 250 deltas/s" || bad "target: $rate deltas/s < 250"
		awk -v p="$p99" 'BEGIN { exit !(p <= 200) }' && ok "target: p99 <= 200 ms" || bad "target: p99 $p99 ms > 200"
	fi
else
	echo "== capacity: $CONNS connections, $STREAMS streams (${SEQS[*]}), closed loop, $REQUESTS requests"
	run_load capacity --connections "$CONNS" --streams "$STREAMS" --inflight 1 --requests "$REQUESTS" \
		--seconds "$SECONDS_MAX" "${SEQ_ARGS[@]}" || rc=$?
	check_run capacity "$rc" "${LOAD_CAP_P99_MS:-5000}"
	n=$(pd_result "$WORK/capacity.out" responses)
	[[ ${n:-0} -ge $REQUESTS ]] && ok "capacity: $n responses" || bad "capacity: only ${n:-0} of $REQUESTS responses"

	echo "== paced: $CONNS connections, 300 streams (one profile per stream every 2 s), 150 deltas/s offered, 12s"
	rc=0
	run_load paced --connections "$CONNS" --streams 300 --rate 150 --seconds 12 \
		"${SEQ_ARGS[@]}" || rc=$?
	check_run paced "$rc" "${LOAD_P99_MS:-1000}"

	echo "== idle sockets: 100 plain TCP sockets next to 50 TLS connections"
	rc=0
	run_load idle --connections 50 --streams 200 --requests 1000 --seconds 20 --idle 100 --inflight 1 \
		--seq "$TESTDATA/profiles/block-small" || rc=$?
	check_run idle "$rc" "${LOAD_CAP_P99_MS:-5000}"
	grep -q '100 idle sockets (100 open at the end, 0 closed' "$WORK/idle.out" &&
		ok "idle: 100 idle sockets stayed open" || bad "idle: idle sockets were closed"

	echo "== loopback only"
	rc=0
	"$LOAD" --host 192.0.2.1 --port "$PORT" --ca "$WORK/certs/ca.pem" --token x \
		--seq "$TESTDATA/profiles/heap-small" >"$WORK/remote.out" 2>&1 || rc=$?
	[[ $rc == 2 ]] && grep -q loopback "$WORK/remote.out" && ok "non-loopback host refused" ||
		bad "non-loopback host: exit $rc: $(cat "$WORK/remote.out")"
fi

if [[ -n ${LOAD_SOAK:-} ]]; then
	echo "== soak: ${LOAD_SOAK}s"
	rc=0
	run_load soak --connections "$CONNS" --streams "$STREAMS" --rate "${LOAD_RATE:-150}" \
		--soak "$LOAD_SOAK" "${SEQ_ARGS[@]}" || rc=$?
	check_run soak "$rc" "${LOAD_P99_MS:-2000}"
fi

# ---- the server afterwards ------------------------------------------------------------------
"$PY" -c "import urllib.request; urllib.request.urlopen('$HEALTHZ', timeout=2)" 2>/dev/null &&
	ok "server healthy after the load" || bad "server not healthy after the load"
kill -TERM "$SERVER_PID"
rc=0
wait "$SERVER_PID" || rc=$?
SERVER_PID=
[[ $rc == 0 ]] && ok "SIGTERM: server exits 0" || bad "SIGTERM: server exit $rc"
if grep -E 'ERROR|io_error|closed \((protocol|output_stuck|nomem)' "$WORK/server.log" >"$WORK/errs"; then
	bad "server log has errors: $(head -n 3 "$WORK/errs")"
else
	ok "server log has no errors"
fi

pd_finish
