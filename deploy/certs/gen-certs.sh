#!/usr/bin/env bash
# gen-certs.sh OUTDIR: a test/demo PKI for pdeltad, with the openssl CLI.
#
#   ca.pem ca.key                  the CA (tls_client_ca, and what clients trust)
#   server.pem server.key          server cert: CN localhost, SAN DNS:localhost, IP:127.0.0.1
#                                  (tls_cert, tls_key; with a `tenants` file these are the
#                                  four files of the container's /etc/pdelta/certs and of
#                                  the Kubernetes Secret pdelta-tls)
#   agent-acme.pem/.key            client cert, CN agent-acme (map it with cert_cn=agent-acme)
#   admin.pem/.key                 client cert, CN admin
#   expired.pem/.key               client cert (CN expired) signed by the CA, already expired
#   rogue-ca.pem rogue-ca.key      another CA
#   rogue.pem/.key                 client cert, CN agent-acme, signed by the rogue CA
#
# With SERVER_VARIANTS=1, also server certificates that pdeltad must refuse
# or warn about (tests of the SIGHUP reload and --check):
#   server-expired.pem/.key        expired in 2020
#   server-future.pem/.key         valid only from 2099
#   server-clientauth.pem/.key     extended key usage clientAuth only
#   server-soon.pem/.key           valid, but expires in 5 days
#
# EC P-256 keys, so it runs in well under a second. Idempotent: files that
# exist are kept (delete OUTDIR to start over). Not for production use:
# keys are written unencrypted.
set -euo pipefail

OUT=${1:?usage: gen-certs.sh OUTDIR}
DAYS=${DAYS:-825}
mkdir -p "$OUT"
cd "$OUT"
umask 077

key() { # key NAME
	[[ -s $1.key ]] || openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key" 2>/dev/null
}

ext_file() { # ext_file NAME KIND -> writes NAME.ext
	case $2 in
	ca) printf 'basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n' ;;
	server) printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n' ;;
	client) printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n' ;;
	server-clientauth) printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n' ;;
	esac >"$1.ext"
}

ca() { # ca NAME CN
	[[ -s $1.pem ]] && return
	key "$1"
	ext_file "$1" ca
	openssl req -new -x509 -key "$1.key" -subj "/CN=$2" -days "$DAYS" -sha256 \
		-extensions v3 -config <(printf '[req]\ndistinguished_name=dn\n[dn]\n[v3]\n'; cat "$1.ext") \
		-out "$1.pem" 2>/dev/null
	rm -f "$1.ext"
}

# leaf NAME CN KIND ISSUER [STARTDATE ENDDATE]   (dates YYYYMMDDHHMMSSZ)
leaf() {
	local name=$1 cn=$2 kind=$3 issuer=$4 start=${5:-} end=${6:-}
	[[ -s $name.pem ]] && return
	key "$name"
	ext_file "$name" "$kind"
	openssl req -new -key "$name.key" -subj "/CN=$cn" -out "$name.csr" 2>/dev/null
	if [[ -n $start ]]; then
		# x509 -days cannot go back in time (nor start later), so sign with
		# explicit dates through `openssl ca`'s minimal config.
		local db
		db=$(mktemp -d)
		touch "$db/index.txt"
		printf '[ca]\ndefault_ca=d\n[d]\ndatabase=%s/index.txt\nnew_certs_dir=%s\nserial=%s/serial\ndefault_md=sha256\npolicy=p\ncopy_extensions=none\n[p]\ncommonName=supplied\n' \
			"$db" "$db" "$db" >"$db/ca.cnf"
		echo 01 >"$db/serial"
		openssl ca -batch -config "$db/ca.cnf" -cert "$issuer.pem" -keyfile "$issuer.key" \
			-in "$name.csr" -startdate "$start" -enddate "$end" \
			-extfile "$name.ext" -notext -out "$name.pem" >/dev/null 2>&1
		rm -rf "$db"
	else
		openssl x509 -req -in "$name.csr" -CA "$issuer.pem" -CAkey "$issuer.key" \
			-CAcreateserial -days "$DAYS" -sha256 -extfile "$name.ext" -out "$name.pem" 2>/dev/null
	fi
	rm -f "$name.csr" "$name.ext"
}

ca ca "pdelta test CA"
leaf server localhost server ca
leaf agent-acme agent-acme client ca
leaf admin admin client ca
leaf expired expired client ca 20200101000000Z 20200102000000Z
ca rogue-ca "rogue CA"
leaf rogue agent-acme client rogue-ca
if [[ ${SERVER_VARIANTS:-0} == 1 ]]; then
	leaf server-expired localhost server ca 20200101000000Z 20200102000000Z
	leaf server-future localhost server ca 20990101000000Z 21000101000000Z
	leaf server-clientauth localhost server-clientauth ca
	DAYS=5 leaf server-soon localhost server ca
fi
rm -f ./*.srl
chmod 644 ./*.pem
echo "certificates in $(pwd)"
echo "pdeltad reads server.pem server.key ca.pem (and a tenants file: copy deploy/tenants.example"
echo "to $(pwd)/tenants); the container image and the Kubernetes Secret use these four names."
