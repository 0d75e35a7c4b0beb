#!/usr/bin/env bash
# test_server_certs.sh: pdeltad refuses server certificates that would fail every handshake.
#
#   - --check refuses an expired certificate, one not valid yet, one whose extended key
#     usage is clientAuth only, a key of another certificate, and a client CA file whose
#     only certificate has expired; it warns (stderr) about one that expires in 5 days;
#   - SIGHUP with each of those: refused, logged, counted (pdeltad_tls_cert_refused_total,
#     pdeltad_tls_reloads_total{result="failed"}), the old certificate stays in service
#     (a client still connects and verifies it);
#   - a certificate expiring in 5 days is installed but warned about in the log and shows
#     in pdeltad_tls_cert_expiry_days.
#
# Env: BINDIR (default bin).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
pd_init certs
SERVER_VARIANTS=1 bash "$ROOT/deploy/certs/gen-certs.sh" "$WORK/certs" >/dev/null
pd_pki
C=$WORK/certs

client_ok() { # a real TLS + HELLO against the server, verifying its certificate
	"$PY" -c "import sys; sys.path.insert(0, sys.argv[1]); import pdproto
c = pdproto.Client.connect('127.0.0.1', int(sys.argv[2]), sys.argv[3], token=sys.argv[4]); c.close()" \
		"$ROOT/tests/integration" "$PORT" "$CA" "$AGENT_TOKEN"
}

check() { # check CERT KEY [more flags]: pdeltad --check's status; output in $WORK/check.out
	local cert=$1 key=$2
	shift 2
	"$BINDIR/pdeltad" --check --tls-cert "$cert" --tls-key "$key" --tenants "$WORK/tenants" \
		--db "$WORK/state.db" "$@" >"$WORK/check.out" 2>&1
}

# ---- --check ----
check "$C/server.pem" "$C/server.key" && ok "--check: the valid certificate" || bad "--check valid: $(cat "$WORK/check.out")"
for v in expired:"expired on" future:"not valid before" clientauth:"not for TLS server authentication"; do
	name=${v%%:*} want=${v#*:}
	if check "$C/server-$name.pem" "$C/server-$name.key"; then
		bad "--check accepted server-$name.pem: $(cat "$WORK/check.out")"
	elif grep -q "$want" "$WORK/check.out"; then
		ok "--check refuses server-$name.pem ($want)"
	else
		bad "--check server-$name.pem: unexpected message: $(cat "$WORK/check.out")"
	fi
done
if check "$C/server.pem" "$C/admin.key"; then bad "--check accepted a key of another certificate"
else grep -q "mismatch" "$WORK/check.out" && ok "--check refuses a key of another certificate" || bad "--check key mismatch: $(cat "$WORK/check.out")"; fi
if check "$C/server.pem" "$C/server.key" --tls-client-ca "$C/expired.pem"; then bad "--check accepted an expired client CA"
else grep -q "client CA" "$WORK/check.out" && ok "--check refuses a client CA file with no valid certificate" || bad "--check client CA: $(cat "$WORK/check.out")"; fi
check "$C/server-soon.pem" "$C/server-soon.key" && grep -q "warning: certificate .* expires in [0-9.]* days" "$WORK/check.out" &&
	ok "--check warns about a certificate that expires in 5 days" || bad "--check soon: $(cat "$WORK/check.out")"

# ---- SIGHUP: the server's files are copies we overwrite ----
cp "$C/server.pem" "$WORK/live.pem"
cp "$C/server.key" "$WORK/live.key"
cp "$C/ca.pem" "$WORK/live-ca.pem"
pd_start_server --tls_cert "$WORK/live.pem" --tls_key "$WORK/live.key" --tls_client_ca "$WORK/live-ca.pem"
days=$(pd_metric pdeltad_tls_cert_expiry_days)
"$PY" -c "import sys; sys.exit(0 if 800 < float('$days') < 830 else 1)" && ok "pdeltad_tls_cert_expiry_days = $days" ||
	bad "pdeltad_tls_cert_expiry_days = '$days'"

hup() { # hup CERT KEY [CA]: installs the files, SIGHUP, waits for the log line
	cp "$1" "$WORK/live.pem"
	cp "$2" "$WORK/live.key"
	cp "${3:-$C/ca.pem}" "$WORK/live-ca.pem"
	local n
	n=$(grep -c -E 'reload failed|reloaded TLS' "$WORK/server.log" || true)
	kill -HUP "$SERVER_PID"
	for _ in $(seq 50); do
		(($(grep -c -E 'reload failed|reloaded TLS' "$WORK/server.log" || true) > n)) && return 0
		sleep 0.1
	done
	return 1
}

refused=0
for v in expired future clientauth mismatch client-ca; do
	case $v in
	mismatch) hup "$C/server.pem" "$C/admin.key" ;;
	client-ca) hup "$C/server.pem" "$C/server.key" "$C/expired.pem" ;;
	*) hup "$C/server-$v.pem" "$C/server-$v.key" ;;
	esac
	refused=$((refused + 1))
	if tail -n 3 "$WORK/server.log" | grep -q "reload failed, keeping the current TLS files"; then
		ok "SIGHUP with $v: refused and logged"
	else
		bad "SIGHUP with $v: $(tail -n 2 "$WORK/server.log")"
	fi
	client_ok 2>"$WORK/client.err" && ok "SIGHUP with $v: the old certificate still serves" ||
		bad "SIGHUP with $v: client fails: $(tail -n 1 "$WORK/client.err")"
done
[[ $(pd_metric pdeltad_tls_cert_refused_total) == "$refused" ]] && ok "pdeltad_tls_cert_refused_total = $refused" ||
	bad "pdeltad_tls_cert_refused_total = $(pd_metric pdeltad_tls_cert_refused_total), want $refused"
[[ $(pd_metric 'pdeltad_tls_reloads_total{result="failed"}') == "$refused" ]] && ok "reloads counted as failed" ||
	bad "pdeltad_tls_reloads_total{failed} = $(pd_metric 'pdeltad_tls_reloads_total{result="failed"}')"

# A certificate that expires in 5 days is still valid: installed, with a warning.
hup "$C/server-soon.pem" "$C/server-soon.key"
tail -n 3 "$WORK/server.log" | grep -q "reloaded TLS files" && ok "SIGHUP with a certificate valid 5 more days: installed" ||
	bad "SIGHUP soon: $(tail -n 2 "$WORK/server.log")"
grep -q "WARN the server certificate .* expires in [0-9.]* days" "$WORK/server.log" && ok "expiring certificate warned in the log" ||
	bad "no expiry warning in the log"
days=$(pd_metric pdeltad_tls_cert_expiry_days)
"$PY" -c "import sys; sys.exit(0 if 4 < float('$days') <= 5 else 1)" && ok "pdeltad_tls_cert_expiry_days = $days after the reload" ||
	bad "pdeltad_tls_cert_expiry_days = '$days'"
client_ok 2>"$WORK/client.err" && ok "the new certificate serves" || bad "client after soon reload: $(tail -n 1 "$WORK/client.err")"
pd_stop_server
pd_finish
