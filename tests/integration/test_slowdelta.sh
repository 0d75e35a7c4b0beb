#!/usr/bin/env bash
# The delta engine against the independent slow path (common/pd_slowdelta.c), through
# tests/tools/slowdelta:
#   - every fixture sequence (tests/data/profiles/*, and $PDELTA_TESTDATA/profiles/* when
#     set): zero mismatches, statuses and reasons included;
#   - the check can fail: an engine delta with one value changed (decoded, changed and
#     re-encoded by the Python oracle's codec) is reported as a mismatch naming the changed
#     sample's key and sample type with both values, and the next pair's delta is reported
#     against this pair's;
#   - the slow path agrees with the Python oracle (tests/oracle) on a few sequences:
#     statuses, durations and the multiset of value tuples of every step.
#
# Env: BINDIR (default bin), BUILD (default build/release), PDELTA_TESTDATA (optional corpus).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BINDIR=${BINDIR:-bin}
BUILD=${BUILD:-build/release}
case $BINDIR in /*) ;; *) BINDIR=$ROOT/$BINDIR ;; esac
case $BUILD in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
SLOW=$BUILD/tests/tools/slowdelta
PDELTA=$BINDIR/pdelta
PY=/usr/bin/python3
DATA=$ROOT/tests/data/profiles

for b in "$SLOW" "$PDELTA"; do
	[[ -x $b ]] || { echo "test_slowdelta: $b not built" >&2; exit 1; }
done
WORK=$(mktemp -d "${TMPDIR:-/tmp}/pdelta-slow.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
pass=0
fail=0
ok() { pass=$((pass + 1)); echo "ok   $*"; }
bad() { fail=$((fail + 1)); echo "FAIL $*"; }

# --- every sequence: engine == slow path ------------------------------------------------
seqs=("$DATA"/*)
if [[ -n ${PDELTA_TESTDATA:-} && -d $PDELTA_TESTDATA/profiles ]]; then
	seqs+=("$PDELTA_TESTDATA"/profiles/*)
fi
for s in "${seqs[@]}"; do
	[[ -d $s ]] || continue
	mapfile -t files < <(ls "$s"/*.pb.gz "$s"/*.pprof 2>/dev/null | sort)
	((${#files[@]})) || continue
	if "$SLOW" "${files[@]}" >"$WORK/seq.out" 2>&1 && tail -n 1 "$WORK/seq.out" | grep -q ' 0 mismatches$'; then
		ok "$(basename "$s"): $(tail -n 1 "$WORK/seq.out")"
	else
		bad "$(basename "$s")"
		head -n 40 "$WORK/seq.out"
	fi
done

# --- the check can fail ------------------------------------------------------------------
P0=$DATA/heap-small/000.pb.gz
P1=$DATA/heap-small/001.pb.gz
P2=$DATA/heap-small/002.pb.gz
"$PDELTA" diff --level 0 "$P0" "$P1" -o "$WORK/d01.pb" >/dev/null 2>&1
"$PDELTA" diff --level 0 "$P1" "$P2" -o "$WORK/d12.pb" >/dev/null 2>&1
if "$SLOW" --check "$WORK/d01.pb" "$P0" "$P1" >"$WORK/check.out"; then
	ok "an untouched engine delta passes --check"
else
	bad "an untouched engine delta fails --check"
	cat "$WORK/check.out"
fi

# Adds 1 to alloc_space of the sample with the most frames; prints its key as the slow
# path writes it (Go locations have addresses: @0x<address> per frame, leaf first, then
# the sorted labels as key:str:num:unit).
KEY=$(PYTHONPATH=$ROOT/tests/oracle "$PY" - "$WORK/d01.pb" "$WORK/bad.pb" <<'EOF'
import sys
import pprof_pb
p = pprof_pb.load(sys.argv[1])
st = list(p.string_table)
col = [st[t.type] for t in p.sample_type].index("alloc_space")
s = max(p.sample, key=lambda x: len(x.location_id))
s.value[col] += 1
addr = {loc.id: loc.address for loc in p.location}
assert all(addr[i] for i in s.location_id)
labels = sorted("%s:%s:%d:%s" % (st[l.key], st[l.str], l.num, st[l.num_unit]) for l in s.label)
assert not any(c in "".join(labels) for c in "\\;|,+[]{}@!?/")
print(";".join("@0x%x" % addr[i] for i in s.location_id) + (" {%s}" % ",".join(labels) if labels else ""))
pprof_pb.save(p, sys.argv[2])
EOF
)
rc=0
"$SLOW" --check "$WORK/bad.pb" "$P0" "$P1" >"$WORK/bad.out" || rc=$?
if [[ $rc == 1 ]] && grep -q 'MISMATCH, 1 differences' "$WORK/bad.out" &&
	grep -qF "value alloc_space/bytes: " "$WORK/bad.out" && grep -qF " at $KEY" "$WORK/bad.out"; then
	ok "one changed value is reported with its key: $(grep -F ' at ' "$WORK/bad.out" | cut -c1-100)..."
else
	bad "one changed value (exit $rc, want 1, key $KEY)"
	cat "$WORK/bad.out"
fi
rc=0
"$SLOW" --check "$WORK/d12.pb" "$P0" "$P1" >"$WORK/next.out" || rc=$?
if [[ $rc == 1 ]] && grep -q 'time_nanos differs' "$WORK/next.out" && grep -q '^  value ' "$WORK/next.out"; then
	ok "the next pair's delta is reported: $(grep MISMATCH "$WORK/next.out")"
else
	bad "the next pair's delta (exit $rc, want 1)"
	head -n 20 "$WORK/next.out"
fi
rc=0
"$SLOW" --check "$WORK/d01.pb" "$P1" >/dev/null || rc=$?
if [[ $rc == 1 ]]; then ok "a delta is not the first profile"; else bad "a delta passed as a first profile (exit $rc)"; fi
rc=0
"$SLOW" --check "$WORK/d01.pb" "$P0" "$ROOT/README.md" >"$WORK/err.out" 2>&1 || rc=$?
if [[ $rc == 2 ]] && grep -q 'malformed' "$WORK/err.out"; then
	ok "a non-profile is an error: $(head -n 1 "$WORK/err.out")"
else
	bad "a non-profile (exit $rc, want 2)"
	cat "$WORK/err.out"
fi

# --- the slow path against the Python oracle ---------------------------------------------
for s in heap-small heap-restart mutex-restart cpu-small goroutine-small allocs-small; do
	files=("$DATA/$s"/*.pb.gz)
	"$SLOW" --dump "${files[@]}" >"$WORK/dump.out"
	if PYTHONPATH=$ROOT/tests/oracle "$PY" - "$WORK/dump.out" "${files[@]}" <<'EOF'; then
import sys
from collections import Counter
import oracle, pprof_pb

steps, cur = [], None
for line in open(sys.argv[1]):
    w = line.split()
    if w[0] == "row":
        cur[4][tuple(int(x) for x in w[1:])] += 1
    elif len(w) == 5 and w[3].startswith("keys="):
        cur = [w[0], w[1], w[2], int(w[4][len("duration="):]), Counter()]
        steps.append(cur)
# The oracle's rows by sample identity, before it folds them into its coarser semantic
# keys (frames as function/file/line): what the slow path's rows are.
ident_rows = []
fold = oracle.sem_from
def by_identity(res, vals, duration, empty=False):
    perm = [res.types.index(c) for c in sorted(res.types)]
    ident_rows[:] = [] if empty else [tuple(v[i] for i in perm) for v in vals.values() if any(v)]
    return fold(res, vals, duration, empty)
oracle.sem_from = by_identity
orc = oracle.Oracle()
bad = 0
for f, (name, status, reason, duration, rows) in zip(sys.argv[2:], steps):
    e = orc.step(oracle.resolve(pprof_pb.load(f)))
    want = Counter(ident_rows)
    if (status, reason) not in e.statuses or duration != e.sem.duration or rows != want:
        bad += 1
        print("differs at %s: slow %s %s duration %d rows %d, oracle %s duration %d rows %d" %
              (f, status, reason, duration, sum(rows.values()), e.statuses, e.sem.duration,
               sum(want.values())))
sys.exit(1 if bad or len(steps) != len(sys.argv) - 2 else 0)
EOF
		ok "oracle agrees with the slow path on $s (${#files[@]} steps)"
	else
		bad "oracle and slow path differ on $s"
	fi
done

echo "$pass passed, $fail failed"
[[ $fail == 0 ]]
