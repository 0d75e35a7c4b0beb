#!/usr/bin/env bash
# test_pg.sh: pdeltad on the PostgreSQL backend, against a throwaway server (pg_lib.sh).
#
#   1. test_server_all_seqs.sh (every fixture sequence through pdeltad, statuses and deltas
#      equal to the oracle-checked local engine's, some outputs judged by the oracle) with
#      its pdeltad pointed at PostgreSQL: a wrapper appends --db (the last flag wins);
#   2. pg_nodes_driver.py (read its header) with TWO pdeltad nodes on one database:
#      alternate (a stream's requests alternated between the nodes; every answer judged
#      by the oracle; conflicts in /metrics), race (the same request to both at once: one
#      applies it, the other answers DUPLICATE after reloading), kill9 (a node SIGKILLed
#      and restarted under load), pgrestart (PostgreSQL restarted under load: retryable
#      errors, /healthz 503 and --healthcheck failing meanwhile, then recovery, nothing
#      acknowledged lost);
#   3. TLS to the database: a role that may only log in over TLS with a password, pdeltad with
#      sslmode=verify-full and db_password_file (every connection TLS in pg_stat_ssl; the file,
#      mode 0644, warned about once), and a wrong password refused at start with libpq's
#      message; --check: passes without creating the schema in an empty database, fails
#      (exit 1) with a wrong password, with a role that may not read the tables (PostgreSQL's
#      reason) and with a schema version 0;
#   4. an idle node: /healthz fails within 10 s of PostgreSQL going away (the writer's probe,
#      no request needed); the reconnect backoff is capped: down for ~25 s, the node is
#      healthy again within 7 s of its return, after >= 8 failed attempts;
#   5. --db 'password=... host=... dbname=...' is PostgreSQL and not logged; PostgreSQL
#      restarted under an idle node: the next send succeeds at its first attempt (the stale
#      writer connection is replaced at once), and so does one that reads the store through
#      >= 2 stale pooled read connections; a reconnect refused by a newer schema says
#      so in /healthz and once in the log.
#
# Skipped without PostgreSQL server binaries (a failure under CI=true).
# Env: BINDIR (default bin), PG_KILL_CYCLES (default 6), PG_RESTARTS (default 2).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/pg_lib.sh"
pg_require
pd_init pg
pg_start
echo "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT and $PG_SOCKDIR"

# ---- 1. every fixture sequence, oracle-checked, through pdeltad on PostgreSQL ----
pg_createdb allseqs
mkdir -p "$WORK/bin"
for b in pdelta pdeltactl; do ln -s "$BINDIR/$b" "$WORK/bin/$b"; done
cat >"$WORK/bin/pdeltad" <<WRAP
#!/bin/sh
exec "$BINDIR/pdeltad" "\$@" --db "$PG_URI"
WRAP
chmod +x "$WORK/bin/pdeltad"
if BINDIR=$WORK/bin bash "$ROOT/tests/integration/test_server_all_seqs.sh" >"$WORK/allseqs.out" 2>&1; then
	ok "every fixture sequence through pdeltad on PostgreSQL: $(tail -n 1 "$WORK/allseqs.out")"
else
	bad "test_server_all_seqs.sh on PostgreSQL:"
	grep -v '^ok' "$WORK/allseqs.out" | tail -n 20
fi
rows=$("$PG_BIN/psql" -X -At -d "$PG_CONNINFO" -c "SELECT count(*) FROM pdelta_streams" 2>&1 || true)
[[ $rows -ge $(ls -d "$TESTDATA"/profiles/*/ | wc -l) ]] && ok "the streams are rows in PostgreSQL ($rows)" ||
	bad "expected a row per sequence in PostgreSQL, found '$rows'"

# ---- 2. two nodes on one database ----
pd_pki
printf '%s\n' "$AGENT_TOKEN" >"$WORK/token"
node_conf() { # node_conf I DB_URI
	local p=$(free_port) m=$(free_port)
	while [[ $m == "$p" ]]; do m=$(free_port); done
	cat >"$WORK/node$1.conf" <<CONF
listen = 127.0.0.1:$p
metrics_listen = 127.0.0.1:$m
tls_cert = $WORK/certs/server.pem
tls_key = $WORK/certs/server.key
tenants = $WORK/tenants
db = $2
workers = 2
log_level = warn
CONF
	NODE_ARGS+=(--config "$WORK/node$1.conf" --port "$p" --metrics-port "$m")
}
pg_ctl_cmd() { printf '%s %q -D %q -l %q -w -t 60' "${PG_USER_RUN[*]:-}" "$PG_BIN/pg_ctl" "$PG_DIR/data" "$PG_DIR/server.log"; }
drive() { # drive MODE [ARGS]
	local mode=$1
	shift
	pg_createdb "nodes_$mode"
	NODE_ARGS=()
	node_conf 1 "$PG_URI"
	node_conf 2 "$PG_CONNINFO"  # the other spelling: key=value over the Unix socket
	if "$PY" "$ROOT/tests/integration/pg_nodes_driver.py" --mode "$mode" --pdeltad "$BINDIR/pdeltad" \
		"${NODE_ARGS[@]}" --ca "$CA" --token-file "$WORK/token" --testdata "$TESTDATA" \
		--log "$WORK/server.log" --pidfile "$WORK/node.pid" "$@" >"$WORK/$mode.out" 2>&1; then
		ok "$mode: $(grep -E '^(alternate|race|kill9|pgrestart): .*(answers|conflicts)' "$WORK/$mode.out" | tail -n 1)"
	else
		bad "$mode:"
		grep -v '^ok' "$WORK/$mode.out" | tail -n 25
	fi
	for f in "$WORK"/node.pid.*; do [[ -s $f ]] && kill -KILL "$(cat "$f")" 2>/dev/null || true; done
}
# ---- 3. TLS to the database (sslmode=verify-full) and the password from db_password_file ----
pg_enable_tls "$WORK/certs/server.pem" "$WORK/certs/server.key"
pg_psql "CREATE DATABASE tlsdb OWNER pdpass" >/dev/null
printf '%s\n' "$PG_PASS" >"$WORK/dbpass"
chmod 644 "$WORK/dbpass"
tls_uri="postgresql://pdpass@127.0.0.1:$PG_PORT/tlsdb?sslmode=verify-full&sslrootcert=$CA"
pg_check() { # pg_check URI [FLAGS]: pdeltad --check on that database; output in $WORK/check.out
	local uri=$1
	shift
	"$BINDIR/pdeltad" --listen "127.0.0.1:$PORT" --metrics_listen off --tls_cert "$WORK/certs/server.pem" \
		--tls_key "$WORK/certs/server.key" --tenants "$WORK/tenants" --db "$uri" "$@" --check \
		>"$WORK/check.out" 2>&1
}
tables_in() { "$PG_BIN/psql" -X -q -At -d "$1" -c "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'pdelta%'"; }
tlsdb="host=$PG_SOCKDIR port=$PG_PORT user=pdelta dbname=tlsdb"
if pg_check "$tls_uri" --db-password-file "$WORK/dbpass" && grep -q 'configuration ok' "$WORK/check.out" &&
	[[ $(tables_in "$tlsdb") == 0 ]]; then
	ok "--check on an empty database over TLS: ok, no schema created"
else
	bad "--check on an empty database: $(tr '\n' '|' <"$WORK/check.out"), tables: $(tables_in "$tlsdb")"
fi
pd_start_server --workers 2 --db "$tls_uri" --db-password-file "$WORK/dbpass"
n=$(grep -c "WARN state store: db_password_file $WORK/dbpass has mode 0644: accessible by others" "$WORK/server.log" || true)
((n == 1)) && ok "a password file open to others is warned about once" || bad "$n warnings about the password file's mode"
send=("$BINDIR/pdelta" send --server "127.0.0.1:$PORT" --ca "$CA" --token "$AGENT_TOKEN" --incarnation 3)
if "${send[@]}" --stream tls/heap -o "$WORK/tls" "$TESTDATA"/profiles/heap-small/*.pb.gz >"$WORK/tls.out" 2>&1; then
	ok "a sequence through pdeltad on PostgreSQL over TLS with a password file: $(awk '{print $2}' "$WORK/tls.out" | sort | uniq -c | xargs)"
else
	bad "sequence over TLS to PostgreSQL: $(tail -n 3 "$WORK/tls.out")"
fi
ssl=$(pg_psql "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = 'pdeltad' AND a.usename = 'pdpass'")
[[ $ssl =~ ^[1-9][0-9]*\|[0-9]+$ && ${ssl%|*} == "${ssl#*|}" ]] && ok "every pdeltad connection to PostgreSQL is TLS (with TLS|all: $ssl)" ||
	bad "pdeltad's connections to PostgreSQL: with TLS|all = $ssl"
pd_stop_server
printf 'wrong\n' >"$WORK/dbpass"
if "$BINDIR/pdeltad" --listen "127.0.0.1:$PORT" --metrics_listen off --tls_cert "$WORK/certs/server.pem" \
	--tls_key "$WORK/certs/server.key" --tenants "$WORK/tenants" --db "$tls_uri" \
	--db-password-file "$WORK/dbpass" >"$WORK/badpw.out" 2>&1; then
	bad "pdeltad started with a wrong database password"
else
	grep -q "cannot connect to PostgreSQL.*password authentication failed" "$WORK/badpw.out" &&
		ok "a wrong database password: pdeltad refuses to start ($(grep -o 'cannot connect.*' "$WORK/badpw.out" | head -n 1))" ||
		bad "wrong password, unclear error: $(tail -n 2 "$WORK/badpw.out")"
fi
# expect_pg_check NAME PATTERN URI [FLAGS]: --check exits 1 saying PATTERN
expect_pg_check() {
	local name=$1 pattern=$2 rc=0
	shift 2
	pg_check "$@" || rc=$?
	[[ $rc == 1 ]] && grep -q "$pattern" "$WORK/check.out" && ok "--check, $name: exit 1, $(grep -o "$pattern.*" "$WORK/check.out")" ||
		bad "--check, $name: exit $rc: $(tr '\n' '|' <"$WORK/check.out")"
}
expect_pg_check "a wrong password" "password authentication failed" "$tls_uri" --db-password-file "$WORK/dbpass"
pg_psql "CREATE ROLE pdnoread LOGIN" >/dev/null
expect_pg_check "a role without SELECT" "permission denied for table pdelta_schema" \
	"host=$PG_SOCKDIR port=$PG_PORT user=pdnoread dbname=tlsdb"
"$PG_BIN/psql" -X -q -At -d "$tlsdb" -c "UPDATE pdelta_schema SET version = 0" >/dev/null
expect_pg_check "schema version 0" "pdelta_schema says version 0: not a valid schema version" "$tlsdb"
"$PG_BIN/psql" -X -q -At -d "$tlsdb" -c "UPDATE pdelta_schema SET version = 1" >/dev/null
pg_check "$tlsdb" && ok "--check passes on the database pdeltad created" || bad "--check on tlsdb: $(tr '\n' '|' <"$WORK/check.out")"

drive alternate --seconds 4
drive race --seqs heap-small,mutex-medium,goroutine-small
drive kill9 --cycles "${PG_KILL_CYCLES:-6}"
drive pgrestart --cycles "${PG_RESTARTS:-2}" --stop-cmd "$(pg_ctl_cmd) -m fast stop" --start-cmd "$(pg_ctl_cmd) start"

# ---- 4. the reconnect backoff is capped: a node whose store was down ~25 s is back within
# ~5 s of its return ----
# (the delay doubles from 0.1 s, capped at 5 s, and the writer wakes once a second: attempts
# ~1, 2, 3, 4, 6, 10, 15, 20, 25, 30 s after the loss; without the cap they would come at ~1,
# 2, 3, 4, 6, 10, 17 and 43 s: 7 failures, and up to 18 s after the return)
pg_createdb backoff
pd_start_server --db "$PG_URI"
pg_stop
# an idle node learns of the loss from its writer's probe (every 5 s), without a request
pd_wait_until "$SERVER_PID" sh -c "! curl -fsS http://127.0.0.1:$MPORT/healthz >/dev/null 2>&1" &&
	ok "PostgreSQL stopped under an idle node: /healthz fails within 10 s" ||
	bad "/healthz still ok 10 s after PostgreSQL stopped under an idle node"
sleep 24
pg_restart_server
t0=$SECONDS
for _ in $(seq 150); do
	curl -fsS "http://127.0.0.1:$MPORT/healthz" >/dev/null 2>&1 && break
	sleep 0.1
done
took=$((SECONDS - t0))
curl -fsS "http://127.0.0.1:$MPORT/healthz" >/dev/null 2>&1 && ((took <= 7)) &&
	ok "reconnected ${took} s after PostgreSQL came back (backoff cap 5 s)" ||
	bad "not reconnected within 7 s of PostgreSQL's return (took ${took} s)"
n=$(grep -o 'reconnected to PostgreSQL after [0-9]* failed attempts' "$WORK/server.log" | tail -n 1 | grep -o '[0-9][0-9]*' || echo 0)
((n >= 8)) && ok "the node kept trying while it was down ($n failed attempts)" || bad "$n failed attempts logged, want >= 8"
pd_stop_server

# ---- 5. a key=value connection string not starting with a usual keyword; PostgreSQL
# restarted under an idle node; a reconnect refused by a newer schema ----
pg_createdb idle
cd "$WORK" # a connection string taken for a SQLite file would be created here
pd_start_server --db "password=hunter2 host=127.0.0.1 port=$PG_PORT user=pdelta dbname=idle"
cd "$ROOT"
! grep -q hunter2 "$WORK/server.log" && ok "the connection string is not logged" ||
	bad "the log shows the password: $(grep -m 1 hunter2 "$WORK/server.log")"
[[ -z $(find "$WORK" -maxdepth 1 -name 'password=*') ]] && ok "password=... host=... is PostgreSQL, not a SQLite file" ||
	bad "a SQLite file named after the connection string: $(find "$WORK" -maxdepth 1 -name 'password=*')"
one=("${send[@]}" --attempts 1 --stream idle/heap -o "$WORK/idle")
"${one[@]}" "$TESTDATA/profiles/heap-small/000.pb.gz" >"$WORK/idle.out" 2>&1 || bad "idle node: first send: $(tail -n 2 "$WORK/idle.out")"
# new streams in parallel until >= 2 read connections are pooled (a new stream's first
# request reads the store)
readers() { pg_psql "SELECT count(*) FROM pg_stat_activity WHERE datname = 'idle' AND application_name = 'pdeltad' AND query LIKE 'SELECT version, tenant%'"; }
for round in $(seq 10); do
	pids=()
	for i in 1 2 3 4 5 6; do
		"${send[@]}" --stream "idle/r$round-$i" -o "$WORK/pool" "$TESTDATA/profiles/heap-small/000.pb.gz" >/dev/null 2>&1 &
		pids+=($!)
	done
	wait "${pids[@]}" || true
	(($(readers) >= 2)) && break
done
pooled=$(readers)
pg_stop
pg_restart_server
pd_wait_http "http://127.0.0.1:$MPORT/healthz" "$SERVER_PID" || true
if "${one[@]}" "$TESTDATA/profiles/heap-small/001.pb.gz" >"$WORK/idle.out" 2>&1; then
	ok "PostgreSQL restarted under an idle node: the next send succeeds at its first attempt"
else
	bad "PostgreSQL restarted under an idle node, send --attempts 1: $(tail -n 2 "$WORK/idle.out")"
fi
((pooled >= 2)) || bad "only $pooled read connections pooled before the restart (want >= 2)"
if "${send[@]}" --attempts 1 --stream idle/after-restart -o "$WORK/idle" "$TESTDATA/profiles/heap-small/000.pb.gz" \
	>"$WORK/idle.out" 2>&1; then
	ok "... and a new stream's (a store read through $pooled stale pooled read connections) too"
else
	bad "a store read after the restart, $pooled stale pooled read connections: $(tail -n 2 "$WORK/idle.out")"
fi
"$PG_BIN/psql" -X -q -At -d "$PG_CONNINFO" -c "UPDATE pdelta_schema SET version = 2" >/dev/null
pg_psql "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'pdeltad'" >/dev/null
pd_wait_until "$SERVER_PID" sh -c "curl -sS http://127.0.0.1:$MPORT/healthz | grep -q 'schema version 2 is newer'" &&
	ok "a reconnect refused by a newer schema: /healthz says why ($(curl -sS "http://127.0.0.1:$MPORT/healthz" | grep -o 'schema version.*' | head -n 1))" ||
	bad "/healthz does not say why the reconnect fails: $(curl -sS "http://127.0.0.1:$MPORT/healthz" | tr '\n' '|')"
"${one[@]}" "$TESTDATA/profiles/heap-small/002.pb.gz" >/dev/null 2>&1 && bad "a send succeeded with a newer schema"
sleep 8 # the send's errors say "unreachable"; then idle reconnect attempts fail again
curl -sS "http://127.0.0.1:$MPORT/healthz" | grep -q 'schema version 2 is newer' && ok "... also after a refused send and idle reconnect attempts" ||
	bad "/healthz after a refused send and idle reconnect attempts: $(curl -sS "http://127.0.0.1:$MPORT/healthz" | tr '\n' '|')"
n=$(grep -c 'reconnect failed: schema version 2 is newer' "$WORK/server.log" || true)
((n == 1)) && ok "the cause is logged once" || bad "the cause is logged $n times"
"$PG_BIN/psql" -X -q -At -d "$PG_CONNINFO" -c "UPDATE pdelta_schema SET version = 1" >/dev/null
pd_wait_http "http://127.0.0.1:$MPORT/healthz" "$SERVER_PID" && ok "healthy again once the schema is ours" ||
	bad "not healthy 10 s after the schema version was put back"
pd_stop_server
pd_finish
