#!/usr/bin/env bash
# Generates the large benchmark sequences heap-large, mutex-large and block-large (6 files
# each, 100k-250k samples in the last file) into OUTDIR/profiles/, for `make bench`. They
# are not committed (~20 MB compressed). Cached: nothing is done when OUTDIR/stamp records
# the same hash of the workload sources, this script and the options.
#
#   tests/workload/gen-large.sh OUTDIR
# Env: GO (default go).
set -euo pipefail

if [[ $# -ne 1 ]]; then
	echo "usage: $0 OUTDIR" >&2
	exit 2
fi
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
mkdir -p "$1"
OUTDIR=$(cd "$1" && pwd)
SEQS=(heap-large mutex-large block-large)
OPTS=(-size large -n 6 -interval 1s)

stamp=$(
	cd "$HERE"
	cat ./*.go go.mod gen-large.sh | sha256sum | cut -d' ' -f1
	echo "${SEQS[*]} ${OPTS[*]}"
)
stamp=$(echo "$stamp" | sha256sum | cut -d' ' -f1)
if [[ -f $OUTDIR/stamp && $(cat "$OUTDIR/stamp") == "$stamp" ]]; then
	echo "gen-large: $OUTDIR/profiles is up to date"
	exit 0
fi

WL=$ROOT/build/workload/pdelta-workload
"$HERE/build.sh" "$WL"
rm -f "$OUTDIR/stamp"
WORK=$(mktemp -d "$OUTDIR/tmp.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

seed=21
for s in "${SEQS[@]}"; do
	kind=${s%%-*}
	t0=$SECONDS
	"$WL" write -out "$WORK/$s" "${OPTS[@]}" -seed "$seed" -kinds "$kind"
	rm -rf "${OUTDIR:?}/profiles/$s"
	mkdir -p "$OUTDIR/profiles"
	mv "$WORK/$s/$kind" "$OUTDIR/profiles/$s"
	echo "gen-large: $s in $((SECONDS - t0)) s"
	seed=$((seed + 1))
done
echo "$stamp" >"$OUTDIR/stamp"
