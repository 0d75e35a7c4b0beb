/*
 * pd_tls: server SSL_CTX construction and client-certificate identity.
 */
#include "pd_tls.h"

#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

static const unsigned char session_ctx[] = "pdeltad";

const char *pd_tls_errors(char *buf, size_t n)
{
	unsigned long code;
	size_t used = 0;

	buf[0] = 0;
	while ((code = ERR_get_error()) != 0) {
		char one[256];
		ERR_error_string_n(code, one, sizeof one);
		if (used + 3 < n)
			used += (size_t)snprintf(buf + used, n - used, "%s%s", used ? "; " : "", one);
	}
	return buf;
}

static int fail(pd_err *e, const char *what, const char *file)
{
	char why[512];
	pd_tls_errors(why, sizeof why);
	return pd_err_set(e, PD_E_ARG, "TLS: %s %s: %s", what, file ? file : "",
			  why[0] ? why : "unknown error");
}

static time_t asn1_to_time(const ASN1_TIME *t)
{
	struct tm tm;

	if (!t || ASN1_TIME_to_tm(t, &tm) != 1)
		return 0;
	return timegm(&tm);
}

static const char *fmt_time(time_t t, char *buf, size_t n)
{
	struct tm tm;

	if (!t || !gmtime_r(&t, &tm) || !strftime(buf, n, "%Y-%m-%dT%H:%M:%SZ", &tm))
		snprintf(buf, n, "?");
	return buf;
}

double pd_tls_days_left(time_t not_after)
{
	return difftime(not_after, time(NULL)) / 86400.0;
}

static bool valid_now(const X509 *x)
{
	return X509_cmp_current_time(X509_get0_notBefore(x)) < 0 &&
	       X509_cmp_current_time(X509_get0_notAfter(x)) > 0;
}

/* A certificate the handshake would send but no client would accept is
 * refused here, before it can replace a working one. */
static int check_server_cert(SSL_CTX *ctx, const char *file, pd_tls_info *info, pd_err *e)
{
	X509 *x = SSL_CTX_get0_certificate(ctx);
	time_t nb, na;
	char when[32];

	if (!x)
		return pd_err_set(e, PD_E_ARG, "TLS: no certificate in %s", file);
	nb = asn1_to_time(X509_get0_notBefore(x));
	na = asn1_to_time(X509_get0_notAfter(x));
	info->not_after = na;
	info->cert_refused = true;
	if (X509_cmp_current_time(X509_get0_notBefore(x)) >= 0)
		return pd_err_set(e, PD_E_ARG, "TLS: certificate %s is not valid before %s", file,
				  fmt_time(nb, when, sizeof when));
	if (X509_cmp_current_time(X509_get0_notAfter(x)) <= 0)
		return pd_err_set(e, PD_E_ARG, "TLS: certificate %s expired on %s", file,
				  fmt_time(na, when, sizeof when));
	/* Key usage, extended key usage (serverAuth) and Netscape type, as a
	 * client verifying a server checks them. */
	if (X509_check_purpose(x, X509_PURPOSE_SSL_SERVER, 0) != 1)
		return pd_err_set(e, PD_E_ARG,
				  "TLS: certificate %s is not for TLS server authentication "
				  "(its key usage or extended key usage does not allow serverAuth)",
				  file);
	info->cert_refused = false;
	return PD_OK;
}

/* At least one CA in the client CA file must be valid now, or every client
 * certificate would fail verification. */
static int check_client_ca(SSL_CTX *ctx, const char *file, pd_tls_info *info, pd_err *e)
{
	STACK_OF(X509_OBJECT) *objs = X509_STORE_get0_objects(SSL_CTX_get_cert_store(ctx));
	int n = objs ? sk_X509_OBJECT_num(objs) : 0;

	for (int i = 0; i < n; i++) {
		X509 *x = X509_OBJECT_get0_X509(sk_X509_OBJECT_value(objs, i));
		if (x && valid_now(x))
			return PD_OK;
	}
	info->cert_refused = true;
	return pd_err_set(e, PD_E_ARG, "TLS: no certificate in the client CA file %s is valid now",
			  file);
}

static int load_client_ca(SSL_CTX *ctx, const pd_tls_opts *o, pd_tls_info *info, pd_err *e)
{
	STACK_OF(X509_NAME) *names;
	int mode = SSL_VERIFY_PEER;

	if (SSL_CTX_load_verify_locations(ctx, o->client_ca, NULL) != 1)
		return fail(e, "cannot load client CA", o->client_ca);
	/* The CA names sent in CertificateRequest help clients pick a cert. */
	names = SSL_load_client_CA_file(o->client_ca);
	if (!names)
		return fail(e, "no CA certificate in", o->client_ca);
	SSL_CTX_set_client_CA_list(ctx, names);
	if (check_client_ca(ctx, o->client_ca, info, e))
		return PD_E_ARG;
	if (o->require_client_cert)
		mode |= SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
	SSL_CTX_set_verify(ctx, mode, NULL);
	SSL_CTX_set_verify_depth(ctx, 8);
	return PD_OK;
}

int pd_tls_ctx_new(const pd_tls_opts *o, SSL_CTX **out, pd_tls_info *info, pd_err *e)
{
	pd_tls_info scratch;
	SSL_CTX *ctx;
	int rc = PD_OK;

	*out = NULL;
	if (!info)
		info = &scratch;
	memset(info, 0, sizeof *info);
	ERR_clear_error();
	ctx = SSL_CTX_new(TLS_server_method());
	if (!ctx)
		return fail(e, "SSL_CTX_new failed", NULL);
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	/* A peer that closes TCP without close_notify is an EOF, not an error:
	 * frames are self-delimiting, so no truncation can go unnoticed. */
	SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
					 SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_IGNORE_UNEXPECTED_EOF);
	/* Idle connections give their record buffers back. */
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	SSL_CTX_set_session_id_context(ctx, session_ctx, sizeof session_ctx - 1);
	if (SSL_CTX_use_certificate_chain_file(ctx, o->cert) != 1) {
		rc = fail(e, "cannot load certificate", o->cert);
		goto out;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, o->key, SSL_FILETYPE_PEM) != 1) {
		info->cert_refused = true; /* also how OpenSSL reports a key of another certificate */
		rc = fail(e, "cannot load private key", o->key);
		goto out;
	}
	if (SSL_CTX_check_private_key(ctx) != 1) {
		info->cert_refused = true;
		rc = fail(e, "private key does not match certificate", o->key);
		goto out;
	}
	if ((rc = check_server_cert(ctx, o->cert, info, e)))
		goto out;
	if (o->client_ca && o->client_ca[0])
		rc = load_client_ca(ctx, o, info, e);
out:
	if (rc) {
		SSL_CTX_free(ctx);
		return rc;
	}
	*out = ctx;
	return PD_OK;
}

/* Copies an ASN.1 string as UTF-8 if it is printable and fits. */
static bool printable_utf8(const ASN1_STRING *s, char *out, size_t cap)
{
	unsigned char *utf8 = NULL;
	int n = ASN1_STRING_to_UTF8(&utf8, s);
	bool ok = n > 0 && (size_t)n < cap;

	for (int i = 0; ok && i < n; i++)
		if (utf8[i] < 0x20 || utf8[i] == 0x7f)
			ok = false;
	if (ok) {
		memcpy(out, utf8, (size_t)n);
		out[n] = 0;
	}
	OPENSSL_free(utf8);
	return ok;
}

bool pd_tls_peer_cn(SSL *ssl, char *cn, size_t cap)
{
	X509 *cert = SSL_get0_peer_certificate(ssl);
	const X509_NAME *subj;
	int idx;

	cn[0] = 0;
	if (!cert || SSL_get_verify_result(ssl) != X509_V_OK)
		return false;
	subj = X509_get_subject_name(cert);
	idx = X509_NAME_get_index_by_NID(subj, NID_commonName, -1);
	if (idx < 0 || X509_NAME_get_index_by_NID(subj, NID_commonName, idx) >= 0)
		return false; /* none, or ambiguous */
	return printable_utf8(X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subj, idx)), cn, cap);
}
