#!/usr/bin/env bash
# test_server_config.sh: what pdeltad --check and a start say about the database settings,
# shadow_dir and secret files (no PostgreSQL server needed; test_pg.sh checks a real one):
#
#   - db_max_bytes below the 512k SQLite needs: --check exit 2 and a start exit 1, both naming
#     the minimum (SQLite's reason was cut off by the schema's text); 512k starts
#   - --check with a PostgreSQL URI nobody listens on: exit 1 with libpq's reason; with a
#     listener that never answers: connect_timeout 5 s, or the URI's own connect_timeout
#   - --check and shadow_dir: a missing parent, a file, a path through a file refused (exit 2);
#     a directory that the start can create passes and is not created by --check; not checked
#     with shadow verification off (the start does not use it either)
#   - settings the backend ignores (db_password_file with SQLite, db_sync given with
#     PostgreSQL): one warning each in --check and in the start's log, none when not given
#   - a token file open to others: pdelta and pdeltactl warn, naming the file and its mode
#
# Env: BINDIR (default bin).
set -euo pipefail

. "$(dirname "$0")/lib.sh"
PDELTAD=$BINDIR/pdeltad
pd_need "$PDELTAD" "$BINDIR/pdelta" "$BINDIR/pdeltactl"
pd_init server-config
pd_pki
pd_conf off "$WORK/state.db" >"$WORK/pdeltad.conf"
check() { "$PDELTAD" --config "$WORK/pdeltad.conf" "$@" --check; }
# expect_check RC PATTERN NAME ARGS...: --check exits RC and its output matches PATTERN
expect_check() {
	local want=$1 pattern=$2 name=$3 rc=0
	shift 3
	check "$@" >"$WORK/out" 2>&1 || rc=$?
	if [[ $rc == "$want" ]] && grep -Eq -- "$pattern" "$WORK/out"; then
		ok "$name: exit $rc, $(grep -E -- "$pattern" "$WORK/out" | head -n 1)"
	else
		bad "$name: exit $rc (want $want): $(tr '\n' '|' <"$WORK/out")"
	fi
}

# ---- db_max_bytes below what SQLite needs ----
expect_check 2 'db_max_bytes 1 is below the minimum of 524288 \(512k\)' "--check db_max_bytes=1" \
	--db-max-bytes 1 --db "$WORK/cap.db"
[[ ! -e $WORK/cap.db ]] && ok "--check created no database file" || bad "--check created $WORK/cap.db"
rc=0
"$PDELTAD" --config "$WORK/pdeltad.conf" --db "$WORK/cap.db" --db-max-bytes 1 >"$WORK/out" 2>&1 || rc=$?
[[ $rc == 1 ]] && grep -q 'below the minimum of 524288 (512k) that SQLite needs' "$WORK/out" &&
	ok "a start with db_max_bytes=1: exit 1, the minimum named" ||
	bad "start with db_max_bytes=1: exit $rc: $(tr '\n' '|' <"$WORK/out")"
expect_check 0 'configuration ok' "--check db_max_bytes=512k" --db-max-bytes 512k
pd_start_server --db-max-bytes 512k && ok "pdeltad starts with db_max_bytes=512k" ||
	bad "pdeltad with db_max_bytes=512k did not start"
pd_stop_server

# ---- PostgreSQL: unreachable, and a listener that never answers ----
dead=$(free_port)
expect_check 1 'cannot connect to PostgreSQL: .*port '"$dead"' failed: Connection refused' \
	"--check with nobody listening" --db "postgresql://pdelta@127.0.0.1:$dead/pdelta"
silent=$(free_port)
"$PY" -c 'import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(16); time.sleep(120)' "$silent" &
MUTE_PID=$!
pd_at_exit 'kill "$MUTE_PID" 2>/dev/null'
pd_wait_port "$silent" "$MUTE_PID"
# timed_check MIN MAX WHAT URI: --check against the silent server gives up within [MIN, MAX) s
timed_check() {
	local min=$1 max=$2 what=$3 uri=$4 t0 took
	t0=$(date +%s.%N)
	expect_check 1 'cannot connect to PostgreSQL: .*timeout' "--check, $what" --db "$uri"
	took=$(echo "$(date +%s.%N) - $t0" | bc)
	(($(echo "$took >= $min && $took < $max" | bc))) && ok "... gave up after ${took%???????} s ($what)" ||
		bad "--check waited $took s ($what; want $min-$max)"
}
timed_check 4.5 9 "a server that never answers: the default connect_timeout of 5 s" \
	"postgresql://pdelta@127.0.0.1:$silent/pdelta"
timed_check 1.5 4.5 "the URI's connect_timeout=2" "postgresql://pdelta@127.0.0.1:$silent/pdelta?connect_timeout=2"

# ---- shadow_dir ----
expect_check 2 "shadow_dir: '/nonexistent-$$/x' does not exist and cannot be created \(/nonexistent-$$: No such file" \
	"--check shadow_dir with a missing parent" --shadow-dir "/nonexistent-$$/x"
touch "$WORK/afile"
expect_check 2 "shadow_dir: '$WORK/afile' is not a directory" "--check shadow_dir a file" --shadow-dir "$WORK/afile"
expect_check 2 "shadow_dir: '$WORK/afile/x': Not a directory" "--check shadow_dir through a file" \
	--shadow-dir "$WORK/afile/x"
expect_check 0 'configuration ok' "--check shadow_dir the start can create" --shadow-dir "$WORK/cases"
[[ ! -e $WORK/cases ]] && ok "--check did not create shadow_dir" || bad "--check created $WORK/cases"
expect_check 0 'configuration ok' "--check shadow_dir the start can create, trailing slash" \
	--shadow-dir "$WORK/cases/"
expect_check 0 'configuration ok' "--check shadow_dir with shadow_rate 0 (unused)" --shadow-dir "$WORK/afile" \
	--shadow-rate 0
if [[ $(id -u) != 0 ]]; then
	mkdir -m 500 "$WORK/ro"
	expect_check 2 "shadow_dir: '$WORK/ro' is not writable" "--check shadow_dir not writable" --shadow-dir "$WORK/ro"
fi

# ---- settings the backend ignores ----
printf 'secret\n' >"$WORK/dbpass"
expect_check 0 'warning: db_password_file has no effect with SQLite' "--check db_password_file with SQLite" \
	--db-password-file "$WORK/dbpass"
expect_check 1 'warning: db_sync has no effect with PostgreSQL' "--check db_sync given with PostgreSQL" \
	--db "postgresql://pdelta@127.0.0.1:$dead/pdelta" --db-sync yes
check --db "postgresql://pdelta@127.0.0.1:$dead/pdelta" >"$WORK/out" 2>&1 || true
! grep -q 'warning' "$WORK/out" && ok "no warning for settings not given" || bad "warnings: $(tr '\n' '|' <"$WORK/out")"
PDELTAD_DB_SYNC=no check >"$WORK/out" 2>&1 && ! grep -q 'warning' "$WORK/out" &&
	ok "db_sync with SQLite: no warning" || bad "db_sync with SQLite: $(tr '\n' '|' <"$WORK/out")"
pd_start_server --db-password-file "$WORK/dbpass"
n=$(grep -c 'WARN db_password_file has no effect with SQLite' "$WORK/server.log" || true)
((n == 1)) && ok "a start with db_password_file on SQLite warns once in the log" || bad "$n warnings in the log"
pd_stop_server

# ---- token files open to others ----
printf '%s\n' "$AGENT_TOKEN" >"$WORK/token"
chmod 644 "$WORK/token"
"$BINDIR/pdeltactl" --server "127.0.0.1:$dead" --ca "$CA" --token-file "$WORK/token" streams \
	>"$WORK/out" 2>&1 || true
grep -q "warning: $WORK/token has mode 0644: accessible by others" "$WORK/out" &&
	ok "pdeltactl --token-file 0644: $(grep -o 'warning: .*' "$WORK/out" | head -n 1)" ||
	bad "pdeltactl --token-file 0644: $(tr '\n' '|' <"$WORK/out")"
"$BINDIR/pdelta" send --server "127.0.0.1:$dead" --ca "$CA" --token-file "$WORK/token" --stream a/b -o "$WORK/o" \
	"$TESTDATA/profiles/heap-small/000.pb.gz" >"$WORK/out" 2>&1 || true
grep -q "warning: $WORK/token has mode 0644" "$WORK/out" && ok "pdelta send --token-file 0644 warns" ||
	bad "pdelta send --token-file 0644: $(tr '\n' '|' <"$WORK/out")"
chmod 600 "$WORK/token"
"$BINDIR/pdeltactl" --server "127.0.0.1:$dead" --ca "$CA" --token-file "$WORK/token" streams \
	>"$WORK/out" 2>&1 || true
! grep -q 'warning' "$WORK/out" && ok "pdeltactl --token-file 0600: no warning" ||
	bad "pdeltactl --token-file 0600: $(tr '\n' '|' <"$WORK/out")"
pd_finish
