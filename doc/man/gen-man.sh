#!/usr/bin/env bash
# gen-man.sh BINDIR OUTDIR: builds the man pages from doc/man/*.in.
#
# The pages' option lists are not written by hand: a line
#   @RUN prog ARGS...
# becomes the output of BINDIR/prog ARGS (a --help), and a line
#   @FILE path
# the file at path (from the repository root), both verbatim in a no-fill
# block. So a page cannot disagree with the program it was built with.
# @VERSION@ becomes the version pdeltad --version prints.
set -euo pipefail
BINDIR=${1:?usage: gen-man.sh BINDIR OUTDIR}
OUT=${2:?usage: gen-man.sh BINDIR OUTDIR}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$OUT"
version=$("$BINDIR/pdeltad" --version | cut -d' ' -f2)

# roff-safe verbatim: backslashes and dashes escaped, leading dots and quotes guarded
verbatim() {
	echo ".nf"
	echo ".ft CR"
	sed -e 's/\\/\\e/g' -e 's/-/\\-/g' -e "s/^\([.']\)/\\\\\&\1/"
	echo ".ft"
	echo ".fi"
}

for src in "$ROOT"/doc/man/*.in; do
	page=$(basename "$src" .in)
	tmp=$OUT/$page.tmp
	while IFS= read -r line || [[ -n $line ]]; do
		case $line in
		"@RUN "*)
			read -r -a cmd <<<"${line#@RUN }"
			"$BINDIR/${cmd[0]}" "${cmd[@]:1}" 2>&1 | verbatim ;;
		"@FILE "*)
			verbatim <"$ROOT/${line#@FILE }" ;;
		*)
			printf '%s\n' "${line//@VERSION@/$version}" ;;
		esac
	done <"$src" >"$tmp"
	mv "$tmp" "$OUT/$page"
done
