#!/usr/bin/env bash
# run_valgrind.sh: runs unit-test binaries and the pdelta CLI under valgrind
# memcheck (errors and definite leaks fail). Slow tests can be skipped by
# listing their names in VALGRIND_SKIP.
set -u
BINDIR=${BINDIR:-bin}
pass=0
fail=0
vg=(timeout "${VALGRIND_TIMEOUT:-300}" valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite)
for t in "$@"; do
	case " ${VALGRIND_SKIP:-} " in *" $(basename "$t") "*) continue ;; esac
	if "${vg[@]}" "$t" >/dev/null; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL valgrind $t"; fi
done
td=$(dirname "$0")/data/profiles
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# gzipped and raw inputs, a counter reset (restart) and a period change (rate)
gzip -dc "$td/block-small/000.pb.gz" >"$out/raw-block.pprof"
if "${vg[@]}" "$BINDIR/pdelta" seq -o "$out/a" "$td"/heap-small/*.pb.gz "$out/raw-block.pprof" >/dev/null &&
	"${vg[@]}" "$BINDIR/pdelta" seq -o "$out/b" "$td"/heap-restart/*.pb.gz >/dev/null &&
	"${vg[@]}" "$BINDIR/pdelta" seq -o "$out/c" "$td"/heap-rate/*.pb.gz >/dev/null; then
	pass=$((pass + 1))
else
	fail=$((fail + 1)); echo "FAIL valgrind pdelta seq"
fi
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
