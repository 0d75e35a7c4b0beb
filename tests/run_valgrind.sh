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
td=../shared/testdata
[ -d "$td" ] || td=$(dirname "$0")/../../shared/testdata
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
if "${vg[@]}" "$BINDIR/pdelta" seq -o "$out" "$td"/profiles/heap-small/*.pb.gz "$td"/fastdelta/heap.before.pprof >/dev/null; then
	pass=$((pass + 1))
else
	fail=$((fail + 1)); echo "FAIL valgrind pdelta seq"
fi
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
