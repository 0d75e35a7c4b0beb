#!/usr/bin/env bash
# test_store_pg.sh: the store unit tests (tests/unit/test_store.c) on the
# PostgreSQL backend, against a throwaway server (pg_lib.sh): the
# backend-neutral cases plus the PostgreSQL-only ones (schema refusals,
# checksums, two stores racing on one row, connection loss and reconnect).
# Skipped without PostgreSQL server binaries, a failure under CI=true.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
. "$ROOT/tests/integration/pg_lib.sh"
BUILD=${BUILD:-build/release}
case $BUILD in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
bin=$BUILD/tests/unit/test_store
[[ -x $bin ]] || { echo "FAIL $bin not built (make $BUILD/tests/unit/test_store)"; exit 1; }
pg_start
pg_createdb store_unit
echo "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on $PG_SOCKDIR"
PDELTA_TEST_PG="$PG_CONNINFO options='-c client_min_messages=warning'" "$bin"
