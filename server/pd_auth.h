/*
 * pd_auth: the credentials of pdeltad (the tenants file) and their lookup.
 *
 * The file has one credential per line, `key=value` words separated by
 * blanks, `#` comments:
 *
 *     tenant=acme role=agent token_sha256=<64 hex digits>
 *     tenant=acme role=admin cert_cn=admin
 *
 * A credential is a token (stored only as the SHA-256 of the token; see
 * `pdeltad --hash-token`) or a client-certificate common name (the
 * certificate itself is verified by TLS against tls_client_ca). It names one
 * tenant and one role (agent or admin). A token hash or CN may appear once.
 *
 * A file without credentials locks every client out, which is nearly always a
 * mistake (a truncated deploy, the wrong path): the server refuses it at start
 * and on SIGHUP (keeping the credentials it has) unless the file says so with
 * a line `allow_empty = true` (pd_auth_check_usable()).
 *
 * A pd_auth is immutable once loaded: a reload builds a new one and the
 * server swaps pointers (pd_server.c), so lookups never see a half-read file.
 * Token lookups compare every stored hash with CRYPTO_memcmp (constant time,
 * and no early exit on a match).
 */
#ifndef PD_AUTH_H
#define PD_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pd_err.h"
#include "pdelta_proto.h"

#define PD_TOKEN_HASH_LEN 32

typedef struct pd_auth pd_auth;

/* Who a credential names. */
typedef struct pd_principal {
	char tenant[PD_MAX_TENANT + 1];
	int role; /* enum pd_role */
} pd_principal;

/* Parses the tenants file; on error nothing is returned and e names the line. */
int pd_auth_load(const char *path, pd_auth **out, pd_err *e);
void pd_auth_free(pd_auth *a);
size_t pd_auth_count(const pd_auth *a);
/* PD_OK if a holds credentials or its file says `allow_empty = true`; else
 * PD_E_ARG with a message naming path. */
int pd_auth_check_usable(const pd_auth *a, const char *path, pd_err *e);

/* SHA-256 of a token. */
void pd_auth_hash_token(const void *token, size_t len, uint8_t out[PD_TOKEN_HASH_LEN]);
/* Lowercase hex of a hash (65 bytes with the NUL). */
void pd_auth_hex(const uint8_t h[PD_TOKEN_HASH_LEN], char out[2 * PD_TOKEN_HASH_LEN + 1]);

/* Finds the credential of a token hash / certificate CN: true and *p set, or false. */
bool pd_auth_by_token_hash(const pd_auth *a, const uint8_t h[PD_TOKEN_HASH_LEN], pd_principal *p);
bool pd_auth_by_cert_cn(const pd_auth *a, const char *cn, pd_principal *p);

const char *pd_role_name(int role);

#endif
