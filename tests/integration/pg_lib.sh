# pg_lib.sh: a throwaway PostgreSQL server for the tests (source it, after
# `set -euo pipefail`; after lib.sh's pd_init when the script uses lib.sh).
#
#   pg_require             finds initdb/pg_ctl (Debian: /usr/lib/postgresql/*/bin);
#                          without them: exit 0 with "SKIP ...", or exit 1 under CI=true
#   pg_start               initdb + postgres in a new temporary directory, listening on a
#                          Unix socket in it and on a free 127.0.0.1 port; sets
#                          PG_DIR, PG_SOCKDIR, PG_PORT, PG_CONNINFO (key=value, socket),
#                          PG_URI (postgresql://, TCP); an EXIT trap stops and removes it
#                          (and then runs lib.sh's pd_cleanup if that is defined)
#   pg_stop [MODE]         pg_ctl stop -m MODE (fast); the data directory stays
#   pg_restart_server      starts it again on the same directory and port
#   pg_psql SQL            runs SQL as the superuser, prints unaligned tuples
#   pg_createdb NAME       a fresh database; sets PG_CONNINFO / PG_URI to it
#   pg_enable_tls CERT KEY TLS with this server certificate, and a role pdpass (password
#                          $PG_PASS) that may only log in over TLS with that password
#
# The server never runs as root: when the tests are root (CI), it runs as the
# `postgres` system user (runuser), in a directory that user owns.

PG_BIN=
PG_DIR=
PG_USER_RUN=()

pg_require() {
	local d
	for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
		if [[ -x $d/initdb && -x $d/pg_ctl && -x $d/postgres ]]; then
			PG_BIN=$d
			break
		fi
	done
	if [[ -z $PG_BIN ]] && command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
		PG_BIN=$(dirname "$(command -v initdb)")
	fi
	[[ -n $PG_BIN ]] && return 0
	if [[ ${CI:-} == true ]]; then
		echo "FAIL PostgreSQL server binaries (initdb, pg_ctl) not found; CI must install the 'postgresql' package (deploy/install-deps.sh)"
		exit 1
	fi
	echo "SKIP PostgreSQL server binaries (initdb, pg_ctl) not found: install the 'postgresql' package"
	echo "0 passed, 0 failed"
	exit 0
}

# Runs a command as the server's user.
pg_as() { "${PG_USER_RUN[@]}" "$@"; }

pg_free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

_pg_exit() {
	local rc=$?
	pg_stop immediate >/dev/null 2>&1 || true
	[[ -n $PG_DIR ]] && rm -rf "$PG_DIR"
	if declare -F pd_cleanup >/dev/null; then pd_cleanup; fi
	exit $rc
}

pg_start() {
	pg_require
	PG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/pdelta-pg.XXXXXX")
	trap _pg_exit EXIT
	chmod 755 "$PG_DIR"
	if [[ $(id -u) == 0 ]]; then
		id postgres >/dev/null 2>&1 || { echo "FAIL running as root without a 'postgres' user to run the server as"; exit 1; }
		chown postgres: "$PG_DIR"
		PG_USER_RUN=(runuser -u postgres --)
	fi
	PG_SOCKDIR=$PG_DIR
	PG_PORT=$(pg_free_port)
	pg_as "$PG_BIN/initdb" -D "$PG_DIR/data" -U pdelta --auth=trust -E UTF8 --locale=C.UTF-8 \
		>"$PG_DIR/initdb.log" 2>&1 || { echo "FAIL initdb:"; tail -n 20 "$PG_DIR/initdb.log"; exit 1; }
	# fsync stays on: the tests check durability.
	cat >>"$PG_DIR/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_SOCKDIR'
max_connections = 100
shared_buffers = 64MB
max_wal_size = 1GB
logging_collector = off
EOF
	pg_restart_server
	PG_SUPER="host=$PG_SOCKDIR port=$PG_PORT user=pdelta dbname=postgres"
	PG_CONNINFO=$PG_SUPER
	PG_URI="postgresql://pdelta@127.0.0.1:$PG_PORT/postgres"
}

pg_restart_server() {
	pg_as "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 start >/dev/null ||
		{ echo "FAIL postgres did not start:"; tail -n 20 "$PG_DIR/server.log"; exit 1; }
}

pg_stop() {
	[[ -n $PG_DIR && -d $PG_DIR/data ]] || return 0
	pg_as "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m "${1:-fast}" -w stop >/dev/null 2>&1 || true
}

pg_psql() {
	"$PG_BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -d "$PG_SUPER" -c "$1"
}

pg_createdb() {
	pg_psql "CREATE DATABASE \"$1\"" >/dev/null
	PG_CONNINFO="host=$PG_SOCKDIR port=$PG_PORT user=pdelta dbname=$1"
	PG_URI="postgresql://pdelta@127.0.0.1:$PG_PORT/$1"
}

pg_enable_tls() {
	install -m 600 "$1" "$PG_DIR/data/server.crt"
	install -m 600 "$2" "$PG_DIR/data/server.key"
	[[ $(id -u) == 0 ]] && chown postgres: "$PG_DIR/data/server.crt" "$PG_DIR/data/server.key"
	PG_PASS=pw-$RANDOM$RANDOM
	pg_psql "ALTER SYSTEM SET ssl = on" >/dev/null
	pg_psql "CREATE ROLE pdpass LOGIN PASSWORD '$PG_PASS'" >/dev/null
	{
		echo "hostssl all pdpass 127.0.0.1/32 scram-sha-256"
		echo "host all pdpass 127.0.0.1/32 reject"
		cat "$PG_DIR/data/pg_hba.conf"
	} >"$PG_DIR/hba.new"
	pg_as cp "$PG_DIR/hba.new" "$PG_DIR/data/pg_hba.conf"
	pg_as "$PG_BIN/pg_ctl" -D "$PG_DIR/data" reload >/dev/null
	sleep 0.5
}
