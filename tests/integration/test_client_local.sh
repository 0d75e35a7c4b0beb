#!/usr/bin/env bash
# test_client_local.sh: libpdelta without a server, and the client command lines' argument checks.
#
#   - tests/unit/test_client: options, errors, local mode (one-call / push / pull give the
#     engine's exact bytes; DUPLICATE, stale, conflict; a bad profile keeps the state), call
#     order, unreachable server with retries and backoff, local fallback;
#   - tests/tools/client_mock: the network paths a real server rarely takes, against a scripted
#     mock server speaking the frame codec over TLS (resume after a lost connection, RESTART,
#     bad CRC, busy with a delay, early error + CANCEL, stale seq, PING/GOODBYE, violations,
#     peer reset while writing without SIGPIPE, failed HELLO, timeouts);
#   - `pdelta send --local` gives byte-identical outputs to `pdelta seq`, and passes the oracle;
#   - usage errors of `pdelta send` and pdeltactl exit 2 with a message;
#   - --version of pdelta, pdeltactl and pdeltad: one format, one version (also client/pdelta.h's
#     PDELTA_VERSION and pdelta.pc.in's Version), the protocol range of proto/pdelta_proto.h;
#   - `-o -` (diff, seq of one file, send of one file): the delta alone on stdout, status on stderr;
#   - `pdelta send` to a refused port says nothing was sent (not "may have been applied");
#   - client/examples/agent.c builds with `cc agent.c $(pkg-config --cflags --libs pdelta)`
#     against an install-like tree made from client/pdelta.pc.in, and its deltas match.
#
# Env: BINDIR (default bin), BUILD (default build/release).
set -uo pipefail

. "$(dirname "$0")/lib.sh"
TOOLS=$BUILDDIR/tests/tools
UNIT=$BUILDDIR/tests/unit/test_client
PROFILES=$TESTDATA/profiles
PDELTA=$BINDIR/pdelta
CTL=$BINDIR/pdeltactl

pd_need "$PDELTA" "$CTL" "$UNIT"
pd_init client-local

# The same delta: identical profile bytes once inflated (one-call and server outputs are
# deflated whole with ISA-L, streaming local mode's with zlib: common/pd_gz.h).
# shellcheck source=compare.sh
source "$HERE/compare.sh"

# ---- unit tests of the library ---------------------------------------------------------------
for s in heap-small block-small; do
	if "$UNIT" "$PROFILES/$s" >"$WORK/unit-$s.log" 2>&1; then
		ok "test_client $s: $(tail -1 "$WORK/unit-$s.log")"
	else
		bad "test_client $s"
		cat "$WORK/unit-$s.log"
	fi
done

# ---- the network paths, against a mock server ---------------------------------------------------------
if [[ -x $TOOLS/client_mock ]]; then
	pd_certs "$WORK/pki"
	if "$TOOLS/client_mock" "$WORK/pki/ca.pem" "$WORK/pki/server.pem" "$WORK/pki/server.key" \
		>"$WORK/mock.log" 2>&1; then
		ok "client_mock: $(tail -1 "$WORK/mock.log")"
	else
		bad "client_mock"
		cat "$WORK/mock.log"
	fi
fi

# ---- pdelta send --local == pdelta seq ------------------------------------------------------------
for s in heap-small heap-medium block-small mutex-small cpu-small goroutine-small; do
	mapfile -t F < <(ls "$PROFILES/$s"/*.pb.gz)
	"$PDELTA" seq -o "$WORK/seq-$s" "${F[@]}" >/dev/null 2>&1
	"$PDELTA" send --local --stream "$s" -o "$WORK/send-$s" "${F[@]}" >"$WORK/send-$s.status" 2>&1
	pd_check "send --local $s: byte-identical to pdelta seq" same_dirs "$WORK/seq-$s" "$WORK/send-$s"
done

# the oracle on `pdelta send --local` (check_seq.py calls it as `seq [opts] -o DIR FILE...`)
cat >"$WORK/send-local.sh" <<EOF
#!/usr/bin/env bash
shift
exec "$PDELTA" send --local --stream oracle "\$@"
EOF
chmod +x "$WORK/send-local.sh"
mapfile -t HS < <(ls "$PROFILES/heap-small"/*.pb.gz)
if $PY "$ROOT/tests/oracle/check_seq.py" --pdelta "$WORK/send-local.sh" --no-go --label send-local \
	--first drop --type alloc_space=gauge "${HS[@]}" >"$WORK/oracle.log" 2>&1; then
	ok "oracle: $(tail -1 "$WORK/oracle.log")"
else
	bad "oracle on send --local"
	head -30 "$WORK/oracle.log"
fi

# ---- usage errors -----------------------------------------------------------------------------------
usage_err() { # usage_err NAME PATTERN CMD...: exit 2 and PATTERN on stderr
	local name=$1 pat=$2
	shift 2
	"$@" >"$WORK/usage.out" 2>"$WORK/usage.err"
	local rc=$?
	if [[ $rc == 2 ]] && grep -q -- "$pat" "$WORK/usage.err"; then ok "$name"; else
		bad "$name (exit $rc)"
		cat "$WORK/usage.err"
	fi
}
F0=${HS[0]}
usage_err "send without --stream" "--stream" "$PDELTA" send --local -o "$WORK/x" "$F0"
usage_err "send without --server" "--server" "$PDELTA" send --stream s -o "$WORK/x" "$F0"
usage_err "send without FILE" "FILE" "$PDELTA" send --local --stream s -o "$WORK/x"
usage_err "send --first bogus" "--first" "$PDELTA" send --local --first bogus --stream s -o "$WORK/x" "$F0"
usage_err "send --type bad" "--type" "$PDELTA" send --local --type nope --stream s -o "$WORK/x" "$F0"
usage_err "send --seq -1" "--seq" "$PDELTA" send --local --seq -1 --stream s -o "$WORK/x" "$F0"
usage_err "send --server \"\" (not a silent local run)" "--server is empty" "$PDELTA" send --server "" --stream s -o "$WORK/x" "$F0"
usage_err "send bad server address" "host:port" "$PDELTA" send --server nohost --stream s -o "$WORK/x" "$F0"
usage_err "ctl without command" "usage" "$CTL" --server 127.0.0.1:1
usage_err "ctl unknown command" "unknown command" "$CTL" --server 127.0.0.1:1 frobnicate
usage_err "ctl stream without NAME" "NAME" "$CTL" --server 127.0.0.1:1 stream
usage_err "ctl without --server" "--server" "$CTL" stats
"$PDELTA" send --local --stream s -o "$WORK/missing" /nonexistent/file.pb.gz >"$WORK/missing.out" 2>&1
pd_check "send of a missing file: ERROR line, exit 1" bash -c "[[ $? == 1 ]] && grep -q '^file.pb.gz ERROR' '$WORK/missing.out'"
"$CTL" --server 127.0.0.1:1 --ca "$WORK/none.pem" stats >"$WORK/noca.out" 2>&1
pd_check "ctl with a missing CA file: clear error" grep -q "none.pem" "$WORK/noca.out"

# ---- --version: one format and one version for the three programs ---------------------------------
want_ver=$(sed -n 's/^#define PD_VERSION "\(.*\)"/\1/p' "$ROOT/common/pd_version.h")
pmin=$(sed -n 's/^#define PD_PROTO_VERSION_MIN \([0-9]*\).*/\1/p' "$ROOT/proto/pdelta_proto.h")
pmax=$(sed -n 's/^#define PD_PROTO_VERSION \([0-9]*\).*/\1/p' "$ROOT/proto/pdelta_proto.h")
pd_check "PDELTA_VERSION (pdelta.h) and pdelta.pc.in's Version are PD_VERSION ($want_ver)" bash -c \
	"grep -q '^#define PDELTA_VERSION \"$want_ver\"' '$ROOT/client/pdelta.h' && grep -q '^Version: $want_ver\$' '$ROOT/client/pdelta.pc.in'"
version_ok() { # version_ok PROG CMD...: exit 0, one line "PROG V (protocol A..B; built D C; OpenSSL ...)"
	local prog=$1 out
	shift
	out=$("$@" 2>&1) && [[ $(wc -l <<<"$out") == 1 ]] &&
		[[ $out =~ ^$prog\ ${want_ver//./\\.}\ \(protocol\ $pmin\.\.$pmax\;\ built\ [0-9]{4}-[0-9]{2}-[0-9]{2}\ [^\;]+\;\ OpenSSL\ .*zlib\ .*\)$ ]] ||
		{ echo "  got: $out"; return 1; }
}
pd_check "pdelta --version" version_ok pdelta "$PDELTA" --version
pd_check "pdelta send --version" version_ok pdelta "$PDELTA" send --version
pd_check "pdeltactl --version" version_ok pdeltactl "$CTL" --version
if [[ -x $BINDIR/pdeltad ]]; then
	pd_check "pdeltad --version" version_ok pdeltad "$BINDIR/pdeltad" --version
	pd_check "pdeltad --version names SQLite and libevent" bash -c "'$BINDIR/pdeltad' --version | grep -q 'libevent .*SQLite '"
fi

# ---- -o -: the delta on stdout, the status line on stderr -----------------------------------------
pushd "$WORK" >/dev/null # a pdelta that took "-" for a file name writes it here, not in the tree
F1=${HS[1]}
"$PDELTA" diff "$F0" "$F1" -o "$WORK/diff-file.pb.gz" >/dev/null 2>&1
"$PDELTA" diff "$F0" "$F1" -o - >"$WORK/diff-stdout.pb.gz" 2>"$WORK/diff-stdout.err"
pd_check "diff -o -: exit 0, stdout is the delta, byte-identical to -o FILE" bash -c \
	"[[ $? == 0 ]] && cmp -s '$WORK/diff-file.pb.gz' '$WORK/diff-stdout.pb.gz'"
pd_check "diff -o -: status line on stderr" grep -q '^- DELTA ' "$WORK/diff-stdout.err"
"$PDELTA" diff "$F0" /nonexistent.pb.gz -o - >"$WORK/diff-bad.out" 2>/dev/null
pd_check "diff -o - of a missing file: exit 1, nothing on stdout" bash -c "[[ $? == 1 && ! -s '$WORK/diff-bad.out' ]]"
"$PDELTA" seq -o - "$F0" >"$WORK/seq-stdout.pb.gz" 2>"$WORK/seq-stdout.err"
pd_check "seq -o - FILE: the delta on stdout, status on stderr" bash -c \
	"cmp -s '$WORK/seq-heap-small/$(basename "$F0")' '$WORK/seq-stdout.pb.gz' && grep -q BASELINE '$WORK/seq-stdout.err'"
usage_err "seq -o - with two files" "one FILE" "$PDELTA" seq -o - "$F0" "$F1"
"$PDELTA" send --local --stream so -o - "$F0" >"$WORK/send-stdout.pb.gz" 2>"$WORK/send-stdout.err"
pd_check "send --local -o - FILE: the delta on stdout (same profile as seq), status on stderr" bash -c \
	"[[ $? == 0 ]] && grep -q '^$(basename "$F0") BASELINE' '$WORK/send-stdout.err' && cmp -s <(gzip -dc '$WORK/seq-stdout.pb.gz') <(gzip -dc '$WORK/send-stdout.pb.gz')"
usage_err "send -o - with two files" "one FILE" "$PDELTA" send --local --stream so -o - "$F0" "$F1"
popd >/dev/null

# ---- send to a refused port: nothing was sent, and the message says so ----------------------------
[[ -f $WORK/pki/ca.pem ]] || pd_certs "$WORK/pki"
NOPORT=$(free_port)
"$PDELTA" send --server "127.0.0.1:$NOPORT" --ca "$WORK/pki/ca.pem" --token t --attempts 2 --stream r \
	-o "$WORK/refused" "$F0" "$F1" >"$WORK/refused.out" 2>"$WORK/refused.err"
pd_check "send to a refused port: exit 1, says nothing was sent, not 'may have been applied'" bash -c \
	"[[ $? == 1 ]] && grep -q 'not reached, nothing of seq 1 was sent' '$WORK/refused.err' && ! grep -q 'may have been applied' '$WORK/refused.err'"

# ---- the example agent, built through pkg-config ------------------------------------------------------
agent_test() {
	local P=$WORK/prefix
	mkdir -p "$P/lib/pkgconfig" "$P/include"
	cp "$BUILDDIR/libpdelta.so" "$P/lib/libpdelta.so.1"
	ln -sf libpdelta.so.1 "$P/lib/libpdelta.so"
	cp "$ROOT/client/pdelta.h" "$P/include/"
	sed -e "s|@PREFIX@|$P|g" "$ROOT/client/pdelta.pc.in" >"$P/lib/pkgconfig/pdelta.pc"
	# shellcheck disable=SC2046
	if ! cc -O2 -Wall -Wextra -Werror -o "$WORK/agent" "$ROOT/client/examples/agent.c" \
		$(PKG_CONFIG_PATH=$P/lib/pkgconfig pkg-config --cflags --libs pdelta) 2>"$WORK/agent-cc.log"; then
		bad "example agent builds with pkg-config"
		cat "$WORK/agent-cc.log"
		return
	fi
	ok "example agent builds with cc agent.c \$(pkg-config --cflags --libs pdelta)"
	LD_LIBRARY_PATH=$P/lib "$WORK/agent" --stream a -o "$WORK/agent-out" "${HS[@]}" >"$WORK/agent.log" 2>&1
	pd_check "agent (local mode, files): deltas identical to pdelta seq" same_dirs "$WORK/seq-heap-small" "$WORK/agent-out"
	LD_LIBRARY_PATH=$P/lib "$WORK/agent" --stream w -o "$WORK/agent-watch" --watch "${HS[0]}" --count 2 \
		--interval 0 >"$WORK/agent-watch.log" 2>&1
	# same profile twice: the second delta keeps only samples with in-use (gauge) values
	pd_check "agent --watch: first BASELINE, then a DELTA" \
		bash -c "grep -q 'delta-000001.pb.gz seq=1 BASELINE first' '$WORK/agent-watch.log' && grep -q 'delta-000002.pb.gz seq=2 DELTA -' '$WORK/agent-watch.log'"
	LD_LIBRARY_PATH=$P/lib "$WORK/agent" --stream i -o "$WORK/agent-stdin" - <"${HS[0]}" >"$WORK/agent-stdin.log" 2>&1
	pd_check "agent reading stdin" same_profile "$WORK/agent-stdin/delta-000001.pb.gz" "$WORK/seq-heap-small/$(basename "${HS[0]}")"
	pd_check "libpdelta.so does not need libevent or sqlite" bash -c "! ldd '$P/lib/libpdelta.so.1' | grep -Eq 'libevent|sqlite'"
	# Only the public API is exported (client/libpdelta.map): every function of pdelta.h, no pd_* internals.
	nm -D --defined-only "$P/lib/libpdelta.so.1" | awk '$2 ~ /^[TtWw]$/ {print $3}' | sed 's/@.*//' | sort >"$WORK/exports"
	grep -oE '\bpdelta_[a-z0-9_]+ *\(' "$ROOT/client/pdelta.h" | sed 's/ *($//' | sort -u >"$WORK/api"
	pd_check "libpdelta.so exports exactly the functions of pdelta.h ($(wc -l <"$WORK/api"))" \
		cmp -s "$WORK/exports" "$WORK/api"
}
case $(basename "$BUILD") in
release | o3) agent_test ;;
*) echo "skip example agent: $BUILD is a sanitizer build (an uninstrumented program cannot load its libpdelta.so)" ;;
esac

pd_finish
