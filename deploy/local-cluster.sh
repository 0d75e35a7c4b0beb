#!/usr/bin/env bash
# local-cluster.sh: three pdeltad nodes on one PostgreSQL, all on this machine (loopback,
# one directory), to try the scale-out setup: clients route each stream to a node and fail
# over (README "Beyond one node").
#
#   local-cluster.sh start DIR [N]   a new DIR (must not exist): dev certificates, a token,
#                                    PostgreSQL (initdb, Unix socket + a free 127.0.0.1 port),
#                                    N pdeltad nodes (default 3) on free ports sharing its
#                                    database; prints the client settings and writes them to
#                                    DIR/cluster.env (SERVERS=H1:P1,..., CA, TOKEN_FILE,
#                                    ADMIN_TOKEN_FILE, METRICS_I, PORT_I, PGDATA, PG_URI)
#   local-cluster.sh node DIR I stop|kill|start   SIGTERM (drain) / SIGKILL / start node I
#   local-cluster.sh stop DIR        stops the nodes (SIGTERM) and PostgreSQL, removes DIR
#
# Env: BINDIR (default: bin next to this script's directory), PG_BINDIR (default: the
# newest /usr/lib/postgresql/*/bin, else initdb on PATH). Run as root, PostgreSQL runs as
# the `postgres` user. Nothing listens beyond 127.0.0.1 and DIR.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
BINDIR=${BINDIR:-$here/../bin}
BINDIR=$(cd "$BINDIR" && pwd)

die() { echo "local-cluster: $*" >&2; exit 1; }
free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

pg_bindir() {
	local d
	if [[ -n ${PG_BINDIR:-} ]]; then echo "$PG_BINDIR"; return; fi
	for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
		[[ -x $d/initdb && -x $d/pg_ctl ]] && { echo "$d"; return; }
	done
	command -v initdb >/dev/null || die "PostgreSQL server binaries (initdb, pg_ctl) not found"
	dirname "$(command -v initdb)"
}

as_pg() { if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }

# env_line DIR NAME VALUE: a line of DIR/cluster.env that sources back to VALUE, spaces included
env_line() { printf '%s=%q\n' "$2" "$3" >>"$1/cluster.env"; }

start_pg() { # DIR
	local dir=$1 pgb port
	pgb=$(pg_bindir)
	port=$(free_port)
	# what `stop` needs, before anything can fail
	env_line "$dir" PG_BINDIR "$pgb"
	env_line "$dir" PGDATA "$dir/pg/data"
	mkdir -p "$dir/pg"
	chmod 755 "$dir" "$dir/pg"
	if [[ $(id -u) == 0 ]]; then
		id postgres >/dev/null 2>&1 || die "running as root without a 'postgres' user"
		chown postgres: "$dir/pg"
		as_pg test -w "$dir/pg" || die "the postgres user cannot reach $dir (a parent directory is not searchable)"
	fi
	as_pg "$pgb/initdb" -D "$dir/pg/data" -U pdelta --auth=trust -E UTF8 --locale=C.UTF-8 \
		>"$dir/pg/initdb.log" 2>&1 || die "initdb failed: $(tail -n 5 "$dir/pg/initdb.log")"
	printf "listen_addresses = '127.0.0.1'\nport = %s\nunix_socket_directories = '%s'\n" \
		"$port" "$dir/pg" >>"$dir/pg/data/postgresql.conf"
	as_pg "$pgb/pg_ctl" -D "$dir/pg/data" -l "$dir/pg/server.log" -w -t 60 start >/dev/null ||
		die "PostgreSQL did not start: $(tail -n 5 "$dir/pg/server.log")"
	"$pgb/psql" -X -q -h "$dir/pg" -p "$port" -U pdelta -d postgres \
		-c "CREATE DATABASE pdelta" >/dev/null || die "CREATE DATABASE failed"
	env_line "$dir" PG_URI "postgresql://pdelta@127.0.0.1:$port/pdelta"
}

# A start that failed midway: stop what it started (nodes, PostgreSQL); DIR stays, for its
# logs, until `stop`.
start_failed() { # DIR
	local dir=$1 f
	for f in "$dir"/node*.pid; do
		[[ -f $f ]] && { kill -TERM "$(cat "$f")" 2>/dev/null || true; rm -f "$f"; }
	done
	stop_pg "$dir"
	echo "local-cluster: start failed; what it started is stopped, logs in $dir (remove it: $0 stop DIR)" >&2
}

stop_pg() { # DIR
	local dir=$1
	# shellcheck source=/dev/null
	. "$dir/cluster.env"
	if [[ -n ${PG_BINDIR:-} && -f $dir/pg/data/postmaster.pid ]]; then
		as_pg "$PG_BINDIR/pg_ctl" -D "$dir/pg/data" -m fast -w stop >/dev/null 2>&1 || true
	fi
}

node_start() { # DIR I
	local dir=$1 i=$2
	# shellcheck source=/dev/null
	. "$dir/cluster.env"
	local port=PORT_$i mport=METRICS_$i pid
	"$BINDIR/pdeltad" --config "$dir/node$i.conf" >>"$dir/node$i.log" 2>&1 &
	pid=$!
	echo "$pid" >"$dir/node$i.pid"
	for _ in $(seq 100); do
		/usr/bin/python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:${!mport}/healthz', timeout=1)" \
			2>/dev/null && return 0
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	die "node $i (port ${!port}) did not come up: $(tail -n 5 "$dir/node$i.log")"
}

node_signal() { # DIR I SIG
	local f=$1/node$2.pid pid
	[[ -f $f ]] || return 0
	pid=$(cat "$f")
	kill "-$3" "$pid" 2>/dev/null || true
	for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
	rm -f "$f"
}

cmd_start() { # DIR [N]
	local dir=$1 n=${2:-3} i p m servers=
	[[ $n =~ ^[1-9][0-9]?$ ]] || die "N must be 1..99"
	[[ ! -e $dir ]] || die "$dir exists"
	mkdir -p "$dir"
	dir=$(cd "$dir" && pwd)
	bash "$here/certs/gen-certs.sh" "$dir/certs" >/dev/null
	local tok adm
	tok=tok-$(openssl rand -hex 16)
	adm=tok-$(openssl rand -hex 16)
	printf '%s\n' "$tok" >"$dir/token"
	printf '%s\n' "$adm" >"$dir/admin-token"
	chmod 600 "$dir/token" "$dir/admin-token"
	{
		echo "tenant=acme role=agent token_sha256=$(printf '%s' "$tok" | "$BINDIR/pdeltad" --hash-token)"
		echo "tenant=ops role=admin token_sha256=$(printf '%s' "$adm" | "$BINDIR/pdeltad" --hash-token)"
	} >"$dir/tenants"
	: >"$dir/cluster.env"
	env_line "$dir" NODES "$n"
	trap "start_failed $(printf %q "$dir")" EXIT
	start_pg "$dir"
	# shellcheck source=/dev/null
	. "$dir/cluster.env"
	for ((i = 1; i <= n; i++)); do
		p=$(free_port)
		m=$(free_port)
		while [[ $m == "$p" ]]; do m=$(free_port); done
		printf '%s = %s\n' listen "127.0.0.1:$p" metrics_listen "127.0.0.1:$m" \
			tls_cert "$dir/certs/server.pem" tls_key "$dir/certs/server.key" \
			tenants "$dir/tenants" db "$PG_URI" workers 2 >"$dir/node$i.conf"
		env_line "$dir" "PORT_$i" "$p"
		env_line "$dir" "METRICS_$i" "$m"
		servers+=${servers:+,}127.0.0.1:$p
	done
	env_line "$dir" SERVERS "$servers"
	env_line "$dir" CA "$dir/certs/ca.pem"
	env_line "$dir" TOKEN_FILE "$dir/token"
	env_line "$dir" ADMIN_TOKEN_FILE "$dir/admin-token"
	for ((i = 1; i <= n; i++)); do node_start "$dir" "$i"; done
	trap - EXIT
	echo "cluster up in $dir: $n nodes on $PG_URI"
	printf '  pdelta send --server %s --ca %q --token-file %q --stream S -o OUT FILE...\n' \
		"$servers" "$dir/certs/ca.pem" "$dir/token"
	printf '  pdeltactl --server %s --ca %q --token-file %q streams\n' "$servers" "$dir/certs/ca.pem" \
		"$dir/admin-token"
}

cmd_stop() { # DIR
	local dir=$1 i
	[[ -f $dir/cluster.env ]] || die "$dir is not a cluster directory"
	# shellcheck source=/dev/null
	. "$dir/cluster.env"
	for ((i = 1; i <= ${NODES:-0}; i++)); do node_signal "$dir" "$i" TERM; done
	stop_pg "$dir"
	rm -rf "$dir"
}

cmd_node() { # DIR I stop|kill|start
	local dir=$1 i=$2
	[[ -f $dir/node$i.conf ]] || die "no node $i in $dir"
	case $3 in
	stop) node_signal "$dir" "$i" TERM ;;
	kill) node_signal "$dir" "$i" KILL ;;
	start) [[ -f $dir/node$i.pid ]] && die "node $i is running" || node_start "$dir" "$i" ;;
	*) die "node: stop, kill or start" ;;
	esac
}

case ${1:-} in
start) [[ $# -ge 2 ]] || die "usage: $0 start DIR [N]"; cmd_start "$2" "${3:-3}" ;;
stop) [[ $# -eq 2 ]] || die "usage: $0 stop DIR"; cmd_stop "$2" ;;
node) [[ $# -eq 4 ]] || die "usage: $0 node DIR I stop|kill|start"; cmd_node "$2" "$3" "$4" ;;
*) die "usage: $0 start DIR [N] | node DIR I stop|kill|start | stop DIR" ;;
esac
