#!/usr/bin/env bash
# install-deps.sh: installs the Debian packages pdelta needs to build, test
# and run. As root (or with sudo) it installs what is missing; otherwise it
# prints the apt-get command to run and fails.
set -euo pipefail
PKGS=(build-essential pkg-config clang libclang-rt-14-dev valgrind openssl
	libevent-dev libssl-dev zlib1g-dev libdeflate-dev libisal-dev libsqlite3-dev libcurl4-openssl-dev libsystemd-dev sqlite3 libpq-dev postgresql
	python3 python3-protobuf python3-yaml python3-prometheus-client curl golang-go golang-github-google-pprof-dev)
missing=()
for p in "${PKGS[@]}"; do
	dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
	echo "install-deps: all ${#PKGS[@]} packages present"
	exit 0
fi
echo "install-deps: missing: ${missing[*]}"
if [ "$(id -u)" -eq 0 ]; then
	SUDO=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
	SUDO=(sudo)
else
	echo "install-deps: not root and no passwordless sudo; run:" >&2
	echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
	exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
