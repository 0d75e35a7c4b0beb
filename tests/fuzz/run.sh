#!/usr/bin/env bash
# run.sh: runs libFuzzer targets for a fixed time each.
#
#   FUZZ_SECONDS=N bash tests/fuzz/run.sh build/fuzz/fuzz_a build/fuzz/fuzz_b ...
#
# For each binary fuzz_<name>, the seeds in tests/fuzz/corpus/<name>/ (if
# any) are copied to a temporary working corpus (the checked-in corpus is
# never modified), the target runs for FUZZ_SECONDS (default 20) seconds,
# and its executions and coverage are printed.
#
# Per-target settings live in tests/fuzz/<name>.options: libFuzzer flags
# (e.g. -max_len, -fork), one or more per line, and optionally a line
# `seconds_factor=N`: that target runs N times FUZZ_SECONDS (fuzz_conn opens a
# connection per input and needs longer for the same number of executions).
# Lines starting with # are comments. A crash, leak, timeout or
# sanitizer report is a failure: the reproducer is kept under
# build/fuzz/artifacts/<name>/ and the tail of the log is shown.
# Ends with "N passed, N failed"; exits non-zero if any target failed.
set -u

here=$(cd "$(dirname "$0")" && pwd)
seconds=${FUZZ_SECONDS:-20}
pass=0
fail=0

if [ $# -eq 0 ]; then
	echo "usage: FUZZ_SECONDS=N $0 FUZZ_BINARY..." >&2
	exit 2
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/pdelta-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Last value of "<key>: N" in a libFuzzer log (e.g. cov, exec/s).
last_stat() {
	grep -o "$1: [0-9]*" "$2" | tail -n 1 | grep -o '[0-9]*$'
}

# Fills opts (libFuzzer flags) and factor (seconds_factor) from an options file.
read_options() {
	local line words
	[ -f "$1" ] || return 0
	while IFS= read -r line || [ -n "$line" ]; do
		case $line in
		'#'* | '') ;;
		seconds_factor=*) factor=${line#seconds_factor=} ;;
		*)
			read -r -a words <<<"$line"
			opts+=("${words[@]}")
			;;
		esac
	done <"$1"
}

run_one() {
	local bin=$1 base name seeds corpus log artifacts rc execs cov nseeds secs
	base=$(basename "$bin")
	name=${base#fuzz_}
	seeds=$here/corpus/$name
	corpus=$work/$name/corpus
	log=$work/$name/log
	artifacts=build/fuzz/artifacts/$name
	if [ ! -x "$bin" ]; then
		echo "FAIL $base: not an executable: $bin"
		return 1
	fi
	mkdir -p "$corpus" "$artifacts"
	nseeds=0
	if [ -d "$seeds" ]; then
		cp -R "$seeds"/. "$corpus"/ 2>/dev/null
		nseeds=$(find "$corpus" -type f | wc -l)
	fi
	local opts=() factor=1
	read_options "$here/$name.options"
	case $factor in
	'' | *[!0-9]*) factor=0 ;;
	esac
	if [ $((10#$factor)) -lt 1 ]; then
		echo "FAIL $base: seconds_factor must be a positive integer in $name.options"
		return 1
	fi
	secs=$((seconds * 10#$factor))
	echo "== $base: ${secs}s, $nseeds seeds from ${seeds#"$here"/}${opts[*]:+, options: ${opts[*]}}"
	"$bin" "${opts[@]}" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
		-print_final_stats=1 -artifact_prefix="$artifacts/" "$corpus" >"$log" 2>&1
	rc=$?
	execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | grep -o '[0-9]*$')
	# -fork=N prints no final stats: its last progress line "#N: ..." counts
	# the executions of all its jobs.
	[ -n "$execs" ] || execs=$(grep -o '^#[0-9]*:' "$log" | tail -n 1 | tr -d '#:')
	cov=$(last_stat cov "$log")
	if [ $rc -ne 0 ] || grep -q -E '^==[0-9]+==ERROR|runtime error:|deadly signal' "$log"; then
		echo "FAIL $base (exit $rc), artifacts in $artifacts/:"
		tail -n 40 "$log" | sed 's/^/    /'
		return 1
	fi
	echo "ok   $base: ${execs:-?} executions, cov ${cov:-?}, corpus $(find "$corpus" -type f | wc -l) files"
	return 0
}

for bin in "$@"; do
	if run_one "$bin"; then
		pass=$((pass + 1))
	else
		fail=$((fail + 1))
	fi
done

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
