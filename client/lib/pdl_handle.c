/*
 * pdl_handle: the libpdelta handle. Options and their defaults, creation and
 * destruction, the public error and stream accessors. Requests live in
 * pdl_request.c, the connection in pdl_conn.c, the per-stream table in
 * pdl_stream.c, the last error in pdl_error.c, backoff in pdl_backoff.c, the
 * server list in pdl_nodes.c.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "pd_clock.h"
#include "pdl_internal.h"

void pdelta_opts_init(pdelta_opts *o)
{
	memset(o, 0, sizeof *o);
	o->connect_timeout_ms = 5000;
	o->io_timeout_ms = 30000;
	o->max_attempts = 5;
	o->backoff_base_ms = 100;
	o->backoff_max_ms = 5000;
	o->first_policy = PDELTA_FIRST_KEEP;
	o->chunk_bytes = 64 * 1024;
	o->max_result_bytes = 256u << 20;
}

/* ---- errors ------------------------------------------------------------------ */

const char *pdelta_strerror(int code)
{
	switch (code) {
	case PDELTA_OK: return "success";
	case PDELTA_E_NOMEM: return "out of memory";
	case PDELTA_E_MALFORMED: return "malformed profile or frame";
	case PDELTA_E_LIMIT: return "limit exceeded";
	case PDELTA_E_IO: return "connection failed or lost";
	case PDELTA_E_STATE: return "stored state unusable";
	case PDELTA_E_ARG: return "bad argument";
	case PDELTA_E_AUTH: return "authentication failed or admin role needed";
	case PDELTA_E_SEQ: return "stale or conflicting sequence number";
	case PDELTA_E_BUSY: return "server busy";
	case PDELTA_E_STORE: return "server state store failure";
	case PDELTA_E_PROTO: return "protocol violation";
	case PDELTA_E_NOTFOUND: return "not found";
	case PDELTA_E_TIMEOUT: return "timeout";
	case PDELTA_E_INTERNAL: return "internal error";
	case PDELTA_E_TLS: return "TLS setup or certificate verification failed";
	case PDELTA_RESTART: return "response restarted";
	default: return "unknown error";
	}
}

int pdelta_retryable(int code) { return code < PD_E__COUNT && pd_code_retryable(code); }

const char *pdelta_last_error(const pdelta *h) { return h ? h->errmsg : ""; }

void pdelta_last_error_info(const pdelta *h, pdelta_error_info *out) { *out = h->err; }

const char *pdelta_status_name(int status)
{
	static const char *const n[] = {"?", "DELTA", "BASELINE", "DUPLICATE"};
	return status >= 1 && status <= 3 ? n[status] : "?";
}

const char *pdelta_reason_name(int reason)
{
	static const char *const n[] = {"-", "first", "reset", "evicted", "moved", "state-lost"};
	return reason >= 0 && reason <= 5 ? n[reason] : "?";
}

/* ---- wall clock ----------------------------------------------------------------- */

int64_t pdl_wall_ns(void) { return pd_wall_ns(); }

/* ---- streams ---------------------------------------------------------------------- */

uint64_t pdelta_last_seq(const pdelta *h, const char *stream)
{
	for (const pdl_stream *st = h->streams; st; st = st->next)
		if (strcmp(st->name, stream) == 0)
			return st->last_seq;
	return 0;
}

int pdelta_set_answered(pdelta *h, const char *stream, uint64_t seq)
{
	pdl_stream *st = pdl_stream_get(h, stream, 1);

	if (!st)
		return PDELTA_E_NOMEM;
	st->answered_seq = seq;
	st->has_answered = 1;
	if (st->last_seq < seq)
		st->last_seq = seq;
	return PDELTA_OK;
}

/* ---- creation ---------------------------------------------------------------------- */

static int dup_opt(char **dst, const char *src)
{
	*dst = NULL;
	if (!src || !*src)
		return 0;
	*dst = strdup(src);
	return *dst ? 0 : -1;
}

static int check_opts(const pdelta_opts *o, char *err, size_t errlen)
{
	if (o->noverrides > PD_MAX_OVERRIDES || (o->noverrides && !o->overrides)) {
		snprintf(err, errlen, "at most %d sample-type overrides", PD_MAX_OVERRIDES);
		return PDELTA_E_ARG;
	}
	for (size_t i = 0; i < o->noverrides; i++) {
		const pdelta_override *v = &o->overrides[i];
		if (!v->type || !*v->type || strlen(v->type) > PD_MAX_TYPE_NAME ||
		    (v->policy != PDELTA_POLICY_DELTA && v->policy != PDELTA_POLICY_GAUGE)) {
			snprintf(err, errlen, "override %zu: want a type name and DELTA or GAUGE", i);
			return PDELTA_E_ARG;
		}
		for (size_t j = 0; j < i; j++)
			if (strcmp(o->overrides[j].type, v->type) == 0) {
				snprintf(err, errlen, "override '%s' given twice", v->type);
				return PDELTA_E_ARG;
			}
	}
	if (o->first_policy < PDELTA_FIRST_KEEP || o->first_policy > PDELTA_FIRST_AUTO) {
		snprintf(err, errlen, "first_policy must be KEEP, DROP or AUTO");
		return PDELTA_E_ARG;
	}
	if (o->token && strlen(o->token) > PD_MAX_TOKEN) {
		snprintf(err, errlen, "token longer than %d bytes", PD_MAX_TOKEN);
		return PDELTA_E_ARG;
	}
	if (o->client_name && strlen(o->client_name) > PD_MAX_CLIENT_NAME) {
		snprintf(err, errlen, "client name longer than %d bytes", PD_MAX_CLIENT_NAME);
		return PDELTA_E_ARG;
	}
	return 0;
}

static int copy_overrides(pdelta *h, const pdelta_opts *o)
{
	pdelta_override *ov;

	h->o.overrides = NULL;
	if (!o->noverrides)
		return 0;
	ov = calloc(o->noverrides, sizeof *ov);
	h->eng_ovr = calloc(o->noverrides, sizeof *h->eng_ovr);
	if (!ov || !h->eng_ovr) {
		free(ov);
		return -1;
	}
	h->o.overrides = ov;
	for (size_t i = 0; i < o->noverrides; i++) {
		ov[i].policy = o->overrides[i].policy;
		if (!(ov[i].type = strdup(o->overrides[i].type)))
			return -1;
		h->eng_ovr[i].name = ov[i].type;
		/* map explicitly: engine and wire enums differ */
		h->eng_ovr[i].policy =
			ov[i].policy == PDELTA_POLICY_GAUGE ? PD_POLICY_GAUGE : PD_POLICY_DELTA;
	}
	return 0;
}

static int copy_strings(pdelta *h, const pdelta_opts *o)
{
	const char *key = o->key_file ? o->key_file : o->cert_file;

	if (dup_opt(&h->server, o->server) || dup_opt(&h->ca_file, o->ca_file) ||
	    dup_opt(&h->cert_file, o->cert_file) || dup_opt(&h->key_file, key) ||
	    dup_opt(&h->token, o->token) || dup_opt(&h->verify_host, o->verify_host) ||
	    dup_opt(&h->client_name, o->client_name ? o->client_name : "libpdelta"))
		return -1;
	return 0;
}

static void fill_defaults(pdelta_opts *o)
{
	pdelta_opts d;

	pdelta_opts_init(&d);
	if (!o->connect_timeout_ms)
		o->connect_timeout_ms = d.connect_timeout_ms;
	if (!o->io_timeout_ms)
		o->io_timeout_ms = d.io_timeout_ms;
	if (!o->max_attempts)
		o->max_attempts = 1;
	if (!o->chunk_bytes || o->chunk_bytes > PD_FRAME_MIN_LIMIT)
		o->chunk_bytes = o->chunk_bytes ? PD_FRAME_MIN_LIMIT : d.chunk_bytes;
	if (!o->max_result_bytes)
		o->max_result_bytes = d.max_result_bytes;
	if (o->backoff_max_ms < o->backoff_base_ms)
		o->backoff_max_ms = o->backoff_base_ms;
}

static int alloc_handle_parts(pdelta *h)
{
	h->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
	h->md = EVP_MD_CTX_new();
	if (!h->sha256 || !h->md)
		return -1;
	if (!h->server) {
		h->eng = pd_engine_new(NULL);
		h->scratch = pd_state_new();
		if (!h->eng || !h->scratch)
			return -1;
	}
	return 0;
}

int pdelta_new(const pdelta_opts *o, pdelta **out, char *errbuf, size_t errlen)
{
	char dummy[8];
	pdelta *h;
	int rc;

	if (!errbuf || !errlen) {
		errbuf = dummy;
		errlen = sizeof dummy;
	}
	errbuf[0] = 0;
	*out = NULL;
	if ((rc = check_opts(o, errbuf, errlen)))
		return rc;
	h = calloc(1, sizeof *h);
	if (!h)
		goto nomem;
	h->fd = -1;
	h->o = *o;
	fill_defaults(&h->o);
	pd_buf_init(&h->wbuf, 0);
	pd_buf_init(&h->rbuf, PD_FRAME_HDR_LEN + PDL_MAX_FRAME + PDL_READ_SLACK);
	pd_buf_init(&h->dbuf, 0);
	pd_buf_init(&h->lout, 0);
	pd_buf_init(&h->shadow_in, 0);
	h->pid = getpid();
	h->rng = pdl_strong_random64();
	h->inc_auto = o->incarnation == 0;
	h->incarnation = o->incarnation ? o->incarnation : pdl_strong_random64();
	if (copy_strings(h, o) || copy_overrides(h, o))
		goto nomem;
	h->o.server = h->server;
	h->o.ca_file = h->ca_file;
	h->o.cert_file = h->cert_file;
	h->o.key_file = h->key_file;
	h->o.token = h->token;
	h->o.verify_host = h->verify_host;
	h->o.client_name = h->client_name;
	if (h->server && (rc = pdl_nodes_setup(h, errbuf, errlen)))
		goto fail;
	if (alloc_handle_parts(h))
		goto nomem;
	if (h->server && (rc = pdl_tls_setup(h, errbuf, errlen)))
		goto fail;
	*out = h;
	return PDELTA_OK;
nomem:
	rc = PDELTA_E_NOMEM;
	snprintf(errbuf, errlen, "out of memory");
fail:
	pdelta_free(h);
	return rc;
}

void pdelta_free(pdelta *h)
{
	pdl_stream *st, *nx;
	pdl_sigpipe g;

	if (!h)
		return;
	pdl_sigpipe_block(&g);
	pdl_fork_check(h);
	pdl_nodes_free(h);
	pdl_conn_close(h, 1);
	pdl_sigpipe_restore(&g);
	for (st = h->streams; st; st = nx) {
		nx = st->next;
		pdl_stream_free(st);
	}
	if (h->o.overrides)
		for (size_t i = 0; i < h->o.noverrides; i++)
			free((void *)(uintptr_t)h->o.overrides[i].type);
	free((void *)(uintptr_t)h->o.overrides);
	free(h->eng_ovr);
	pd_engine_free(h->eng);
	pd_state_free(h->scratch);
	EVP_MD_CTX_free(h->md);
	EVP_MD_free(h->sha256);
	SSL_CTX_free(h->ssl_ctx);
	pd_buf_free(&h->wbuf);
	pd_buf_free(&h->rbuf);
	pd_buf_free(&h->dbuf);
	pd_buf_free(&h->lout);
	pd_buf_free(&h->shadow_in);
	free(h->server);
	free(h->ca_file);
	free(h->cert_file);
	free(h->key_file);
	free(h->token);
	free(h->verify_host);
	free(h->client_name);
	free(h);
}

/* ---- accessors ---------------------------------------------------------------------- */

int pdelta_is_local(const pdelta *h) { return h->server == NULL; }
const char *pdelta_tenant(const pdelta *h) { return h->tenant; }
int pdelta_role(const pdelta *h) { return h->role; }
uint64_t pdelta_incarnation(const pdelta *h) { return h->incarnation; }
void pdelta_stats_get(const pdelta *h, pdelta_stats *out) { *out = h->stats; }

int pdelta_connect(pdelta *h)
{
	pdl_sigpipe g;
	int rc;

	if (!h->server)
		return PDELTA_OK;
	pdl_sigpipe_block(&g);
	pdl_fork_check(h);
	pdl_clear_error(h);
	rc = pdl_nodes_ensure(h);
	pdl_sigpipe_restore(&g);
	return rc;
}
