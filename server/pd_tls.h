/*
 * pd_tls: the TLS glue of pdeltad (OpenSSL 3).
 *
 * Builds a server SSL_CTX from the configured files: TLS 1.2 minimum, the
 * certificate chain and key (checked against each other), and, when a
 * client CA is given, client-certificate verification (mTLS; with
 * require_client_cert a handshake without a valid client certificate fails).
 * pd_tls_ctx_new() either returns a complete context or nothing, which is
 * what makes the SIGHUP reload atomic: the server swaps the pointer only
 * when the new context (and the new tenants file) loaded. SSL_CTX is
 * reference-counted: connections made with the old one keep it alive.
 */
#ifndef PD_TLS_H
#define PD_TLS_H

#include <stdbool.h>
#include <stddef.h>

#include <openssl/ssl.h>

#include "pd_err.h"

typedef struct pd_tls_opts {
	const char *cert;      /* PEM chain, leaf first */
	const char *key;       /* PEM private key */
	const char *client_ca; /* PEM CA bundle, "" or NULL = no client certificates */
	bool require_client_cert;
} pd_tls_opts;

/* Loads everything; PD_E_ARG with the OpenSSL reason on any failure. */
int pd_tls_ctx_new(const pd_tls_opts *o, SSL_CTX **out, pd_err *e);

/*
 * The common name of a client certificate that the handshake verified:
 * true with cn filled (NUL-terminated), or false when there is no verified
 * certificate or its subject has no single, printable CN.
 */
bool pd_tls_peer_cn(SSL *ssl, char *cn, size_t cap);

/* Drains OpenSSL's error queue into buf ("" if empty); returns buf. */
const char *pd_tls_errors(char *buf, size_t n);

#endif
