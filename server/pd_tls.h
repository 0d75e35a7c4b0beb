/*
 * pd_tls: the TLS glue of pdeltad (OpenSSL 3).
 *
 * Builds a server SSL_CTX from the configured files: TLS 1.2 minimum, the
 * certificate chain and key (checked against each other), and, when a
 * client CA is given, client-certificate verification (mTLS; with
 * require_client_cert a handshake without a valid client certificate fails).
 * pd_tls_ctx_new() either returns a complete context or nothing, which is
 * what makes the SIGHUP reload atomic: the server swaps the pointer only
 * when the new context (and the new tenants file) loaded. A certificate
 * that would fail every handshake (expired, not yet valid, not for server
 * authentication, not matching the key) is refused like a missing file, so a
 * reload never swaps a working certificate for a dead one. SSL_CTX is
 * reference-counted: connections made with the old one keep it alive.
 */
#ifndef PD_TLS_H
#define PD_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include <openssl/ssl.h>

#include "pd_err.h"

typedef struct pd_tls_opts {
	const char *cert;      /* PEM chain, leaf first */
	const char *key;       /* PEM private key */
	const char *client_ca; /* PEM CA bundle, "" or NULL = no client certificates */
	bool require_client_cert;
} pd_tls_opts;

/* What pd_tls_ctx_new() learnt about the files (filled on success and failure). */
typedef struct pd_tls_info {
	time_t not_after;  /* the server certificate's expiry (0 = unknown) */
	bool cert_refused; /* failed because the certificate is not usable now (dates, usage) */
} pd_tls_info;

/* Days below which a loaded server certificate is logged as expiring soon. */
#define PD_TLS_EXPIRY_WARN_DAYS 14

/*
 * Loads everything; PD_E_ARG with the OpenSSL reason on any failure. Refused
 * as well (info->cert_refused): a server certificate that is not valid yet,
 * has expired, or whose key usage / extended key usage does not allow TLS
 * server authentication; a client CA file in which no certificate is valid
 * now. info may be NULL.
 */
int pd_tls_ctx_new(const pd_tls_opts *o, SSL_CTX **out, pd_tls_info *info, pd_err *e);

/* Days from now to not_after (negative once expired). */
double pd_tls_days_left(time_t not_after);

/*
 * The common name of a client certificate that the handshake verified:
 * true with cn filled (NUL-terminated), or false when there is no verified
 * certificate or its subject has no single, printable CN.
 */
bool pd_tls_peer_cn(SSL *ssl, char *cn, size_t cap);

/* Drains OpenSSL's error queue into buf ("" if empty); returns buf. */
const char *pd_tls_errors(char *buf, size_t n);

#endif
