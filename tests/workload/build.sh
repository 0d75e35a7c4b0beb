#!/usr/bin/env bash
# Builds the Go workload program (tests/workload) into OUT, only when OUT is missing or
# older than a source file. Offline and self-contained: standard library only, no module
# downloads, its own build cache (HOME may be unset in CI). -trimpath keeps build-machine
# paths out of the binary and so out of the profiles it writes.
#
#   tests/workload/build.sh OUT
# Env: GO (default go), GOCACHE (default OUT's directory/go-cache).
set -euo pipefail

if [[ $# -ne 1 ]]; then
	echo "usage: $0 OUT" >&2
	exit 2
fi
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$1
OUTDIR=$(dirname "$OUT")
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
OUT=$OUTDIR/$(basename "$OUT")

stale=0
if [[ ! -x $OUT ]]; then
	stale=1
else
	for src in "$HERE"/*.go "$HERE"/go.mod; do
		if [[ $src -nt $OUT ]]; then
			stale=1
			break
		fi
	done
fi
((stale)) || exit 0

export GOCACHE=${GOCACHE:-$OUTDIR/go-cache}
export HOME=${HOME:-$OUTDIR}
export GOFLAGS=-mod=mod GOPROXY=off CGO_ENABLED=0
cd "$HERE"
"${GO:-go}" build -trimpath -o "$OUT.tmp" .
mv -f "$OUT.tmp" "$OUT"
echo "built $OUT"
