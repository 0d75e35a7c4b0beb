/*
 * pd_service_admin: the admin commands of pdeltad (PROTOCOL.md §11) and the
 * small JSON writer they share.
 *
 * Listings (`streams`, `stream`, `tenants`) read committed rows from the
 * store on a worker thread. `reset` and `delete NAME` are ops in the stream's
 * own FIFO, so they run between that stream's jobs, never during one, and
 * drop the cached row when they commit. `delete prefix=` lists the names and
 * runs one such delete per stream, a bounded number at a time.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pd_service_int.h"

/* ---- JSON writer ------------------------------------------------------------------- */

#define JW_DEPTH 8

typedef struct jw {
	pd_buf *b;
	int rc;
	int depth, after_key;
	uint8_t has[JW_DEPTH];
} jw;

static void jw_init(jw *w, pd_buf *b)
{
	memset(w, 0, sizeof *w);
	w->b = b;
	pd_buf_reset(b);
}

static void jw_put(jw *w, const char *p, size_t n)
{
	if (!w->rc)
		w->rc = pd_buf_append(w->b, p, n, NULL);
}

/* Separator before a value or key: none after a key, a comma between items. */
static void jw_pre(jw *w)
{
	if (w->after_key) {
		w->after_key = 0;
		return;
	}
	if (w->depth && w->has[w->depth - 1])
		jw_put(w, ",", 1);
	if (w->depth)
		w->has[w->depth - 1] = 1;
}

static void jw_esc(jw *w, const char *s)
{
	char u[8];
	const char *run = s;

	jw_put(w, "\"", 1);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c >= 0x20 && c != '"' && c != '\\' && c != 0x7f)
			continue;
		jw_put(w, run, (size_t)(s - run));
		if (c == '"' || c == '\\') {
			u[0] = '\\';
			u[1] = (char)c;
			jw_put(w, u, 2);
		} else {
			snprintf(u, sizeof u, "\\u%04x", c);
			jw_put(w, u, 6);
		}
		run = s + 1;
	}
	jw_put(w, run, (size_t)(s - run));
	jw_put(w, "\"", 1);
}

static void jw_open(jw *w, char c)
{
	jw_pre(w);
	jw_put(w, &c, 1);
	if (w->depth < JW_DEPTH)
		w->has[w->depth] = 0;
	w->depth++;
}

static void jw_close(jw *w, char c)
{
	w->depth--;
	jw_put(w, &c, 1);
}

static void jw_key(jw *w, const char *k)
{
	jw_pre(w);
	jw_esc(w, k);
	jw_put(w, ":", 1);
	w->after_key = 1;
}

static void jw_str(jw *w, const char *s)
{
	jw_pre(w);
	jw_esc(w, s ? s : "");
}

static void jw_u64(jw *w, const char *k, uint64_t v)
{
	char t[24];
	int n = snprintf(t, sizeof t, "%llu", (unsigned long long)v);

	jw_key(w, k);
	jw_pre(w);
	jw_put(w, t, (size_t)n);
}

static void jw_i64(jw *w, const char *k, int64_t v)
{
	char t[24];
	int n = snprintf(t, sizeof t, "%lld", (long long)v);

	jw_key(w, k);
	jw_pre(w);
	jw_put(w, t, (size_t)n);
}

static void jw_kstr(jw *w, const char *k, const char *v)
{
	jw_key(w, k);
	jw_str(w, v);
}

static void jw_bool(jw *w, const char *k, int v)
{
	jw_key(w, k);
	jw_pre(w);
	jw_put(w, v ? "true" : "false", v ? 4 : 5);
}

/* NUL-terminates the document (not counted in its length). */
static int jw_end(jw *w, pd_err *e)
{
	jw_put(w, "", 1);
	if (w->rc)
		return pd_err_set(e, w->rc, "admin document too large or out of memory");
	w->b->len--;
	return PD_OK;
}

/* ---- argument parsing ---------------------------------------------------------------- */

static const char *const cmd_names[] = {"streams", "stream", "reset", "delete", "stats", "tenants"};

enum { A_TENANT = 1, A_NAME = 2, A_PREFIX = 4, A_SORT = 8, A_LIMIT = 16, A_ALL_TENANTS = 32 };
#define NKEYS 6
static const unsigned cmd_keys[] = {
	[PD_ADM_STREAMS] = A_TENANT | A_PREFIX | A_SORT | A_LIMIT | A_ALL_TENANTS,
	[PD_ADM_STREAM] = A_TENANT | A_NAME,
	[PD_ADM_RESET] = A_TENANT | A_NAME,
	[PD_ADM_DELETE] = A_TENANT | A_NAME | A_PREFIX,
	[PD_ADM_STATS] = A_TENANT,
	[PD_ADM_TENANTS] = A_TENANT | A_LIMIT,
};
/* all_tenants=true: the connection's tenant is not filled in (pd_conn), so
 * `streams` lists every tenant's streams. */
static const char *const key_names[NKEYS] = {"tenant", "name", "prefix", "sort", "limit",
					     "all_tenants"};

#define ADMIN_LIMIT_DEFAULT 100
#define ADMIN_LIMIT_MAX 10000

static int cmd_index(const char *cmd)
{
	for (int i = 0; cmd && i < (int)(sizeof cmd_names / sizeof cmd_names[0]); i++)
		if (!strcmp(cmd, cmd_names[i]))
			return i;
	return -1;
}

int pd_service_admin_known(const char *cmd) { return cmd_index(cmd) >= 0; }

struct admin_args {
	const char *v[NKEYS]; /* by key_names index */
	unsigned seen;
};

static int parse_kv(int cmd, const char *const *kv, struct admin_args *a, pd_err *e)
{
	memset(a, 0, sizeof *a);
	for (size_t i = 0; kv && kv[i]; i += 2) {
		int k = -1;
		for (int t = 0; t < NKEYS; t++)
			if (!strcmp(kv[i], key_names[t]))
				k = t;
		if (!kv[i + 1])
			return pd_err_set(e, PD_E_ARG, "argument %s has no value", kv[i]);
		if (k < 0 || !(cmd_keys[cmd] & (1u << k)))
			return pd_err_set(e, PD_E_ARG, "%s: unknown argument %s", cmd_names[cmd],
					  kv[i]);
		if (a->seen & (1u << k))
			return pd_err_set(e, PD_E_ARG, "argument %s given twice", kv[i]);
		a->seen |= 1u << k;
		a->v[k] = kv[i + 1];
	}
	return PD_OK;
}

static int parse_limit(const char *v, size_t *out, pd_err *e)
{
	char *end;
	unsigned long long n;

	*out = ADMIN_LIMIT_DEFAULT;
	if (!v)
		return PD_OK;
	n = strtoull(v, &end, 10);
	if (!*v || *end || *v == '-' || n < 1 || n > ADMIN_LIMIT_MAX)
		return pd_err_set(e, PD_E_ARG, "limit must be 1..%d", ADMIN_LIMIT_MAX);
	*out = (size_t)n;
	return PD_OK;
}

static int parse_sort(const char *v, int *out, pd_err *e)
{
	static const char *const names[] = {"name", "last_seen", "samples", "bytes"};

	*out = PD_ASORT_NAME;
	for (int i = 0; v && i < 4; i++)
		if (!strcmp(v, names[i])) {
			*out = i;
			return PD_OK;
		}
	if (!v)
		return PD_OK;
	return pd_err_set(e, PD_E_ARG, "sort must be name, last_seen, samples or bytes");
}

static int check_args(int cmd, const struct admin_args *a, pd_err *e)
{
	const char *tenant = a->v[0], *name = a->v[1], *prefix = a->v[2];

	if (tenant && !*tenant)
		return pd_err_set(e, PD_E_ARG, "empty tenant");
	if (a->v[5] && strcmp(a->v[5], "true") != 0)
		return pd_err_set(e, PD_E_ARG, "all_tenants must be true");
	if (a->v[5] && tenant)
		return pd_err_set(e, PD_E_ARG, "all_tenants and tenant exclude each other");
	if ((cmd == PD_ADM_STREAM || cmd == PD_ADM_RESET || cmd == PD_ADM_DELETE) && !tenant)
		return pd_err_set(e, PD_E_ARG, "%s needs a tenant", cmd_names[cmd]);
	if ((cmd == PD_ADM_STREAM || cmd == PD_ADM_RESET) && (!name || !*name))
		return pd_err_set(e, PD_E_ARG, "%s needs a name", cmd_names[cmd]);
	if (cmd == PD_ADM_DELETE && !!name == !!prefix)
		return pd_err_set(e, PD_E_ARG, "delete needs exactly one of name and prefix");
	if (cmd == PD_ADM_DELETE && ((name && !*name) || (prefix && !*prefix)))
		return pd_err_set(e, PD_E_ARG, "delete: empty name or prefix");
	return PD_OK;
}

static int is_stream_op(const pd_job *j)
{
	return j->cmd == PD_ADM_RESET || (j->cmd == PD_ADM_DELETE && j->name);
}

/* Queues a prepared admin job; PD_E_BUSY when shutting down. */
static int admin_queue(pd_service *s, pd_job *j, pd_err *e)
{
	pd_stream *st = NULL;
	int rc = PD_OK;

	pthread_mutex_lock(&s->mu);
	if (s->stopping) {
		rc = pd_err_set(e, PD_E_BUSY, "service shutting down");
	} else if (is_stream_op(j) && !(st = pd_svc_stream(s, j->tenant, j->name, 1))) {
		rc = pd_err_set(e, PD_E_NOMEM, "out of memory for the stream");
	} else {
		s->outstanding++;
		s->st.admin_requests++;
		if (st) {
			j->kind = j->cmd == PD_ADM_RESET ? PD_OP_RESET : PD_OP_DELETE;
			pd_svc_lru_touch(s, st);
			pd_svc_push_stream(s, st, j);
		} else {
			j->kind = PD_OP_ADMIN;
			pd_svc_push_global(s, j);
		}
	}
	pthread_mutex_unlock(&s->mu);
	return rc;
}

int pd_service_admin(pd_service *s, const char *cmd, const char *const *kv, pd_admin_done_fn done,
		     void *arg, pd_err *e)
{
	struct admin_args a;
	const char *strs[3];
	int c = cmd_index(cmd), rc, sort;
	size_t limit;
	pd_job *j;

	if (c < 0)
		return pd_err_set(e, PD_E_ARG, "unknown admin command %s", cmd ? cmd : "(null)");
	if ((rc = parse_kv(c, kv, &a, e)) || (rc = check_args(c, &a, e)) ||
	    (rc = parse_limit(a.v[4], &limit, e)) || (rc = parse_sort(a.v[3], &sort, e)))
		return rc;
	if (!(j = pd_svc_job_get(s)))
		return pd_err_set(e, PD_E_NOMEM, "out of memory for an admin request");
	j->svc = s;
	j->cmd = c;
	j->sort = sort;
	j->limit = limit;
	j->adone = done;
	j->aarg = arg;
	if (!(rc = pd_svc_job_strings(j, a.v, strs, 3, e))) {
		j->tenant = strs[0];
		j->name = strs[1];
		j->prefix = strs[2];
		rc = admin_queue(s, j, e);
	}
	if (rc)
		pd_svc_job_put(s, j);
	return rc;
}

/* ---- rows ------------------------------------------------------------------------------ */

static const char *status_str(int status)
{
	static const char *const n[] = {"delta", "baseline", "duplicate"};
	return status >= 0 && status < 3 ? n[status] : "";
}

/* The listing fields of one stream (a copy, for the top-k sorts). */
struct srow {
	uint64_t key;
	uint64_t seq, incarnation, samples, state_bytes, deltas_served;
	int64_t last_seen_ms, created_ms;
	int32_t last_status;
	char last_reason[16];
	const char *tenant, *name;
	char *own; /* the copy of tenant and name in the top-k heap */
};

static void srow_from_rec(struct srow *r, const pd_stream_rec *rec, int sort)
{
	r->seq = rec->last_seq;
	r->incarnation = rec->incarnation;
	r->samples = rec->identities;
	r->state_bytes = rec->state_bytes;
	r->deltas_served = rec->deltas_served;
	r->last_seen_ms = rec->last_seen_ms;
	r->created_ms = rec->created_ms;
	r->last_status = rec->last_status;
	snprintf(r->last_reason, sizeof r->last_reason, "%s",
		 rec->last_reason ? rec->last_reason : "");
	r->key = sort == PD_ASORT_SAMPLES ? r->samples : r->state_bytes;
	r->tenant = rec->tenant;
	r->name = rec->name;
	r->own = NULL;
}

static void write_srow(jw *w, const struct srow *r)
{
	jw_open(w, '{');
	jw_kstr(w, "tenant", r->tenant);
	jw_kstr(w, "name", r->name);
	jw_u64(w, "seq", r->seq);
	jw_u64(w, "incarnation", r->incarnation);
	jw_i64(w, "created_ms", r->created_ms);
	jw_i64(w, "last_seen_ms", r->last_seen_ms);
	jw_u64(w, "samples", r->samples);
	jw_u64(w, "state_bytes", r->state_bytes);
	jw_u64(w, "deltas_served", r->deltas_served);
	jw_kstr(w, "last_status", status_str(r->last_status));
	jw_kstr(w, "last_reason", r->last_reason);
	jw_close(w, '}');
}

/* ---- streams ------------------------------------------------------------------------- */

struct list_ctx {
	jw *w;
	size_t limit, n;
	int sort, truncated, oom;
	struct srow *heap; /* top-k min-heap by key */
};

static int list_in_order(void *arg, const pd_stream_rec *rec)
{
	struct list_ctx *c = arg;
	struct srow r;

	if (c->n == c->limit) {
		c->truncated = 1;
		return 1;
	}
	srow_from_rec(&r, rec, c->sort);
	write_srow(c->w, &r);
	c->n++;
	return 0;
}

static void heap_down(struct srow *h, size_t n, size_t i)
{
	for (;;) {
		size_t l = 2 * i + 1, m = i;
		struct srow t;
		if (l < n && h[l].key < h[m].key)
			m = l;
		if (l + 1 < n && h[l + 1].key < h[m].key)
			m = l + 1;
		if (m == i)
			return;
		t = h[i];
		h[i] = h[m];
		h[m] = t;
		i = m;
	}
}

static void heap_up(struct srow *h, size_t i)
{
	while (i && h[(i - 1) / 2].key > h[i].key) {
		struct srow t = h[i];
		h[i] = h[(i - 1) / 2];
		h[(i - 1) / 2] = t;
		i = (i - 1) / 2;
	}
}

static int srow_own(struct srow *r)
{
	size_t tl = strlen(r->tenant), nl = strlen(r->name);
	char *p = malloc(tl + nl + 2);

	if (!p)
		return -1;
	memcpy(p, r->tenant, tl + 1);
	memcpy(p + tl + 1, r->name, nl + 1);
	r->own = p;
	r->tenant = p;
	r->name = p + tl + 1;
	return 0;
}

static int list_top(void *arg, const pd_stream_rec *rec)
{
	struct list_ctx *c = arg;
	struct srow r;

	srow_from_rec(&r, rec, c->sort);
	if (c->n == c->limit) {
		c->truncated = 1;
		if (r.key <= c->heap[0].key)
			return 0;
		if (srow_own(&r))
			return c->oom = 1;
		free(c->heap[0].own);
		c->heap[0] = r;
		heap_down(c->heap, c->n, 0);
		return 0;
	}
	if (srow_own(&r))
		return c->oom = 1;
	c->heap[c->n] = r;
	heap_up(c->heap, c->n++);
	return 0;
}

static int srow_cmp_desc(const void *a, const void *b)
{
	const struct srow *x = a, *y = b;
	if (x->key != y->key)
		return x->key < y->key ? 1 : -1;
	return strcmp(x->name, y->name);
}

static int streams_top(pd_service *s, const pd_job *j, struct list_ctx *c, pd_err *e)
{
	int rc;

	if (!(c->heap = calloc(c->limit, sizeof *c->heap)))
		return pd_err_set(e, PD_E_NOMEM, "out of memory for the listing");
	rc = pd_store_list(s->store, j->tenant, j->prefix, PD_STORE_SORT_NAME, 0, list_top, c, e);
	if (!rc && c->oom)
		rc = pd_err_set(e, PD_E_NOMEM, "out of memory for the listing");
	qsort(c->heap, c->n, sizeof *c->heap, srow_cmp_desc);
	for (size_t i = 0; i < c->n; i++) {
		if (!rc)
			write_srow(c->w, &c->heap[i]);
		free(c->heap[i].own);
	}
	free(c->heap);
	return rc;
}

static int adm_streams(pd_worker *w, const pd_job *j, jw *out, pd_err *e)
{
	struct list_ctx c = {.w = out, .limit = j->limit, .sort = j->sort};
	int rc;

	jw_open(out, '{');
	if (j->tenant)
		jw_kstr(out, "tenant", j->tenant);
	jw_key(out, "streams");
	jw_open(out, '[');
	if (j->sort == PD_ASORT_SAMPLES || j->sort == PD_ASORT_BYTES)
		rc = streams_top(w->svc, j, &c, e);
	else
		rc = pd_store_list(w->svc->store, j->tenant, j->prefix,
				   j->sort == PD_ASORT_LAST_SEEN ? PD_STORE_SORT_LAST_SEEN
								  : PD_STORE_SORT_NAME,
				   j->limit + 1, list_in_order, &c, e);
	jw_close(out, ']');
	jw_bool(out, "truncated", c.truncated);
	jw_close(out, '}');
	return rc;
}

/* ---- stream ---------------------------------------------------------------------------- */

static void cache_facts(pd_service *s, const pd_job *j, jw *out)
{
	pd_stream *st;
	size_t queued = 0;
	int cached, busy;

	pthread_mutex_lock(&s->mu);
	st = pd_svc_stream(s, j->tenant, j->name, 0);
	cached = st && st->loaded;
	busy = st && st->busy;
	for (pd_job *q = st ? st->qhead : NULL; q; q = q->next)
		queued++;
	pthread_mutex_unlock(&s->mu);
	jw_bool(out, "cached", cached);
	jw_bool(out, "busy", busy);
	jw_u64(out, "queued", queued);
}

static void state_facts(pd_worker *w, const pd_stream_rec *r, jw *out)
{
	int ok = r->state_len && !pd_state_deserialize(w->tmp, r->state, r->state_len, NULL) &&
		 pd_state_valid(w->tmp);

	jw_bool(out, "has_state", ok);
	jw_u64(out, "identities", r->identities);
	jw_u64(out, "state_len", r->state_len);
	jw_u64(out, "schema", ok ? pd_state_schema(w->tmp) : 0);
	jw_i64(out, "period", ok ? pd_state_period(w->tmp) : 0);
	jw_key(out, "delta_columns");
	jw_open(out, '[');
	for (size_t i = 0; ok && i < pd_state_ncols(w->tmp); i++)
		jw_str(out, pd_state_col(w->tmp, i));
	jw_close(out, ']');
	pd_state_clear(w->tmp);
}

static int adm_stream(pd_worker *w, const pd_job *j, jw *out, pd_err *e)
{
	const pd_stream_rec *r = &w->rec;
	/* The state only: the kept response is read (and checked) by retries. */
	int rc = pd_store_get_state(w->svc->store, j->tenant, j->name, &w->rec, e);

	if (rc == PD_E_NOTFOUND)
		return pd_err_set(e, rc, "no stream %s in tenant %s", j->name, j->tenant);
	if (rc)
		return rc;
	jw_open(out, '{');
	jw_kstr(out, "tenant", j->tenant);
	jw_kstr(out, "name", j->name);
	jw_u64(out, "seq", r->last_seq);
	jw_u64(out, "incarnation", r->incarnation);
	jw_i64(out, "created_ms", r->created_ms);
	jw_i64(out, "last_seen_ms", r->last_seen_ms);
	jw_i64(out, "last_time_nanos", r->last_time_nanos);
	jw_u64(out, "samples", r->identities);
	jw_u64(out, "state_bytes", r->state_bytes);
	jw_kstr(out, "last_status", status_str(r->last_status));
	jw_kstr(out, "last_reason", r->last_reason);
	jw_kstr(out, "last_reset_reason", r->last_reset_reason);
	jw_u64(out, "last_samples_in", r->last_samples_in);
	jw_u64(out, "last_samples_out", r->last_samples_out);
	jw_u64(out, "last_output_bytes", r->last_delta_len);
	jw_u64(out, "deltas_served", r->deltas_served);
	jw_u64(out, "resets", r->resets);
	jw_u64(out, "version", r->version);
	state_facts(w, r, out);
	cache_facts(w->svc, j, out);
	jw_close(out, '}');
	return PD_OK;
}

/* ---- tenants ---------------------------------------------------------------------------- */

static int tenant_row(void *arg, const char *tenant, uint64_t streams, uint64_t state_bytes)
{
	struct list_ctx *c = arg;

	if (c->n == c->limit) {
		c->truncated = 1;
		return 1;
	}
	jw_open(c->w, '{');
	jw_kstr(c->w, "name", tenant);
	jw_u64(c->w, "streams", streams);
	jw_u64(c->w, "state_bytes", state_bytes);
	jw_close(c->w, '}');
	c->n++;
	return 0;
}

static int adm_tenants(pd_worker *w, const pd_job *j, jw *out, pd_err *e)
{
	struct list_ctx c = {.w = out, .limit = j->limit};
	int rc;

	jw_open(out, '{');
	jw_key(out, "tenants");
	jw_open(out, '[');
	rc = pd_store_tenant_totals(w->svc->store, NULL, tenant_row, &c, e);
	jw_close(out, ']');
	jw_bool(out, "truncated", c.truncated);
	jw_close(out, '}');
	return rc;
}

/* ---- stats ---------------------------------------------------------------------------------- */

static void stats_service(jw *out, const pd_service_stats *st)
{
	static const char *const reasons[] = {"none", "first", "reset", "evicted", "moved", "state-lost"};
	uint64_t requests = 0;

	for (int i = 0; i < 3; i++)
		requests += st->requests_by_status[i];
	for (int i = 1; i < PD_E__COUNT; i++)
		requests += st->errors_by_code[i];
	jw_u64(out, "requests", requests);
	jw_key(out, "requests_by_status");
	jw_open(out, '{');
	for (int i = 0; i < 3; i++)
		jw_u64(out, status_str(i), st->requests_by_status[i]);
	jw_close(out, '}');
	jw_key(out, "baselines_by_reason");
	jw_open(out, '{');
	for (int i = 1; i < 6; i++)
		jw_u64(out, reasons[i], st->baselines_by_reason[i]);
	jw_close(out, '}');
	jw_key(out, "errors_by_code");
	jw_open(out, '{');
	for (int i = 1; i < PD_E__COUNT; i++)
		jw_u64(out, pd_code_name(i), st->errors_by_code[i]);
	jw_close(out, '}');
	jw_key(out, "limit_hits");
	jw_open(out, '{');
	jw_u64(out, "queue_full", st->busy_rejects);
	jw_u64(out, "streams_per_tenant", st->stream_limit_hits);
	jw_u64(out, "engine_input", st->input_limit_hits);
	jw_u64(out, "upload", st->upload_limit_hits);
	jw_close(out, '}');
}

static void stats_cache(jw *out, const pd_service_stats *st)
{
	static const char *const bounds[11] = {"1",	"2",   "5",   "10",  "20",  "50",
					       "100", "200", "500", "1000", "+Inf"};

	jw_u64(out, "streams_cached", st->streams_cached);
	jw_u64(out, "cache_bytes", st->cache_bytes);
	jw_u64(out, "cache_evictions", st->cache_evictions);
	jw_u64(out, "streams_expired", st->streams_expired);
	jw_u64(out, "jobs_queued", st->jobs_queued);
	jw_u64(out, "jobs_running", st->jobs_running);
	jw_u64(out, "jobs_admitted", st->jobs_admitted);
	jw_u64(out, "jobs_cancelled", st->jobs_cancelled);
	jw_u64(out, "store_conflicts", st->store_conflicts);
	jw_u64(out, "admin_requests", st->admin_requests);
	jw_u64(out, "tenants", st->tenants);
	jw_u64(out, "bytes_in", st->bytes_in);
	jw_u64(out, "bytes_out", st->bytes_out);
	jw_key(out, "latency");
	jw_open(out, '{');
	jw_u64(out, "count", st->lat_count);
	jw_u64(out, "total_sum_ns", st->lat_total_sum_ns);
	jw_u64(out, "engine_sum_ns", st->lat_engine_sum_ns);
	jw_u64(out, "commit_sum_ns", st->lat_commit_sum_ns);
	/* cumulative request counts at or under each bound in ms (pdeltactl top's p99) */
	jw_key(out, "total_le_ms");
	jw_open(out, '{');
	for (int i = 0; i < 11; i++)
		jw_u64(out, bounds[i], st->lat_total[i]);
	jw_close(out, '}');
	jw_close(out, '}');
}

static void stats_store(jw *out, const struct pd_store_stats *st)
{
	jw_key(out, "store");
	jw_open(out, '{');
	jw_u64(out, "commits", st->commits);
	jw_u64(out, "rows_written", st->rows_written);
	jw_u64(out, "errors", st->errors);
	jw_u64(out, "writes_failed", st->writes_failed);
	jw_u64(out, "conflicts", st->conflicts);
	jw_u64(out, "busy_rejects", st->busy_rejects);
	jw_u64(out, "expired", st->expired);
	jw_u64(out, "reads", st->reads);
	jw_u64(out, "read_errors", st->read_errors);
	jw_u64(out, "queue_len", st->queue_len);
	jw_u64(out, "queue_len_peak", st->queue_len_peak);
	jw_u64(out, "batch_max", st->batch_max);
	jw_u64(out, "commit_count", st->commit.count);
	jw_u64(out, "commit_sum_ns", st->commit.sum_ns);
	jw_kstr(out, "last_error", st->last_error);
	jw_close(out, '}');
}

static int adm_stats(pd_worker *w, jw *out)
{
	pd_service *s = w->svc;
	pd_service_stats st;
	pd_stats_json_fn hook;
	void *hook_arg;

	pd_service_stats_get(s, &st);
	pthread_mutex_lock(&s->mu);
	hook = s->stats_hook;
	hook_arg = s->stats_hook_arg;
	pthread_mutex_unlock(&s->mu);
	jw_open(out, '{');
	jw_i64(out, "uptime_s", (pd_svc_now_ms() - s->start_ms) / 1000);
	stats_service(out, &st);
	stats_cache(out, &st);
	stats_store(out, &st.store);
	if (hook && !out->rc)
		hook(hook_arg, out->b);
	jw_close(out, '}');
	return PD_OK;
}

/* ---- delete prefix ---------------------------------------------------------------------- */

struct name_vec {
	char **v;
	size_t n, alloc;
	int oom;
};

static int collect_name(void *arg, const pd_stream_rec *rec)
{
	struct name_vec *nv = arg;

	if (nv->n == nv->alloc) {
		size_t na = nv->alloc ? nv->alloc * 2 : 64;
		char **p = realloc(nv->v, na * sizeof *p);
		if (!p)
			return nv->oom = 1;
		nv->v = p;
		nv->alloc = na;
	}
	if (!(nv->v[nv->n] = strdup(rec->name)))
		return nv->oom = 1;
	nv->n++;
	return 0;
}

static void multi_free(pd_multi *m)
{
	for (size_t i = 0; i < m->n; i++)
		free(m->names[i]);
	free(m->names);
	free(m);
}

static void deleted_answer(pd_admin_done_fn done, void *arg, const char *tenant, const char *name,
			   uint64_t n)
{
	pd_buf b;
	jw w;
	pd_err e = {0};
	int rc;

	pd_buf_init(&b, 1 << 16);
	jw_init(&w, &b);
	jw_open(&w, '{');
	jw_kstr(&w, "tenant", tenant);
	if (name)
		jw_kstr(&w, "name", name);
	jw_u64(&w, "deleted", n);
	jw_close(&w, '}');
	rc = jw_end(&w, &e);
	done(arg, rc, &e, rc ? NULL : (const char *)b.data, rc ? 0 : b.len);
	pd_buf_free(&b);
}

static void multi_answer(pd_multi *m)
{
	if (m->rc)
		m->done(m->arg, m->rc, &m->err, NULL, 0);
	else
		deleted_answer(m->done, m->arg, m->tenant, NULL, m->deleted);
	multi_free(m);
}

/* Sends part j of m to the next name's FIFO (mu held); 0 if none is left. */
static int multi_next_locked(pd_service *s, pd_multi *m, pd_job *j)
{
	pd_stream *st;

	while (m->next < m->n) {
		j->name = m->names[m->next++];
		if ((st = pd_svc_stream(s, m->tenant, j->name, 1))) {
			pd_svc_lru_touch(s, st);
			pd_svc_push_stream(s, st, j);
			return 1;
		}
		if (!m->rc)
			m->rc = pd_err_set(&m->err, PD_E_NOMEM, "out of memory deleting streams");
	}
	return 0;
}

static void adm_delete_prefix(pd_worker *w, pd_job *j)
{
	pd_service *s = w->svc;
	struct name_vec nv = {0};
	size_t tl = strlen(j->tenant), started = 0;
	pd_multi *m = calloc(1, sizeof *m + tl + 1);
	pd_job *parts[PD_SVC_MULTI_INFLIGHT];
	size_t nparts = 0;
	pd_err e = {0};
	int rc;

	if (!m) {
		j->adone(j->aarg, pd_err_set(&e, PD_E_NOMEM, "out of memory"), &e, NULL, 0);
		return;
	}
	memcpy(m->tenant, j->tenant, tl + 1);
	m->done = j->adone;
	m->arg = j->aarg;
	rc = pd_store_list(s->store, j->tenant, j->prefix, PD_STORE_SORT_NAME, 0, collect_name, &nv,
			   &e);
	if (!rc && nv.oom)
		rc = pd_err_set(&e, PD_E_NOMEM, "out of memory listing streams");
	m->names = nv.v;
	m->n = nv.n;
	if (rc) {
		m->rc = rc;
		m->err = e;
	}
	while (!rc && nparts < PD_SVC_MULTI_INFLIGHT && nparts < m->n &&
	       (parts[nparts] = pd_svc_job_get(s)))
		nparts++;
	if (!rc && m->n && !nparts)
		m->rc = pd_err_set(&m->err, PD_E_NOMEM, "out of memory deleting streams");
	pthread_mutex_lock(&s->mu);
	for (size_t i = 0; i < nparts; i++) {
		parts[i]->svc = s;
		parts[i]->kind = PD_OP_DELETE;
		parts[i]->cmd = PD_ADM_DELETE;
		parts[i]->tenant = m->tenant;
		parts[i]->multi = m;
		if (!multi_next_locked(s, m, parts[i]))
			break;
		s->outstanding++;
		m->inflight++;
		started++;
	}
	pthread_mutex_unlock(&s->mu);
	for (size_t i = started; i < nparts; i++)
		pd_svc_job_put(s, parts[i]);
	if (!started)
		multi_answer(m);
}

/* A part is done: count it, move on to the next name or retire (mu taken). */
static void multi_part_done(pd_service *s, pd_job *j, int rc, const pd_err *e)
{
	pd_multi *m = j->multi;
	pd_stream *st = j->st, *victims;
	int moved, last = 0;

	pthread_mutex_lock(&s->mu);
	if (rc == PD_OK)
		m->deleted++;
	else if (rc != PD_E_NOTFOUND && !m->rc) {
		m->rc = rc;
		m->err = *e;
	}
	st->busy = 0;
	s->st.jobs_running--;
	pd_svc_push_run(s, st);
	moved = multi_next_locked(s, m, j);
	if (!moved) {
		last = --m->inflight == 0;
		if (--s->outstanding == 0)
			pthread_cond_broadcast(&s->idle_cv);
	}
	victims = pd_svc_evict(s);
	pthread_mutex_unlock(&s->mu);
	pd_svc_free_streams(victims);
	if (!moved)
		pd_svc_job_put(s, j);
	if (last)
		multi_answer(m);
}

/* ---- reset / delete on the stream (the stream is busy: we own it) ------------------- */

static void stream_op_answer(pd_job *j, int rc, pd_err *e)
{
	pd_buf b;
	jw w;

	if (j->cmd == PD_ADM_DELETE) {
		if (rc == PD_OK || rc == PD_E_NOTFOUND)
			deleted_answer(j->adone, j->aarg, j->tenant, j->name, rc == PD_OK);
		else
			j->adone(j->aarg, rc, e, NULL, 0);
		return;
	}
	if (rc == PD_E_NOTFOUND)
		pd_err_set(e, rc, "no stream %s in tenant %s", j->name, j->tenant);
	if (rc) {
		j->adone(j->aarg, rc, e, NULL, 0);
		return;
	}
	pd_buf_init(&b, 1 << 16);
	jw_init(&w, &b);
	jw_open(&w, '{');
	jw_kstr(&w, "tenant", j->tenant);
	jw_kstr(&w, "name", j->name);
	jw_bool(&w, "reset", 1);
	jw_close(&w, '}');
	rc = jw_end(&w, e);
	j->adone(j->aarg, rc, e, rc ? NULL : (const char *)b.data, rc ? 0 : b.len);
	pd_buf_free(&b);
}

static void stream_op_finish(pd_job *j, int rc)
{
	pd_service *s = j->svc;
	pd_stream *st = j->st;
	pd_err e = {0};

	pthread_mutex_lock(&s->mu);
	if (!j->multi)
		s->st.jobs_running--; /* a part is counted in multi_part_done */
	if (rc == PD_OK) {
		pd_svc_unload(s, st); /* the next job reads the row (or its absence) */
		if (j->kind == PD_OP_DELETE && st->ten->committed)
			st->ten->committed--;
	}
	pthread_mutex_unlock(&s->mu);
	if (rc && rc != PD_E_NOTFOUND) {
		pd_err_set(&e, rc, "state store: %s failed (%s)",
			   j->kind == PD_OP_RESET ? "reset" : "delete", pd_code_name(rc));
	}
	if (j->multi) {
		multi_part_done(s, j, rc, &e);
		return;
	}
	stream_op_answer(j, rc, &e);
	pd_svc_job_put(s, j);
	pd_svc_release(s, st);
}

static void stream_op_store_done(void *arg, int rc, uint64_t latency_ns)
{
	stream_op_finish(arg, rc);
}

void pd_svc_admin_stream_op(pd_worker *w, pd_job *j)
{
	pd_service *s = w->svc;
	int rc;

	if (j->kind == PD_OP_RESET)
		rc = pd_store_reset_async(s->store, j->tenant, j->name, "admin", stream_op_store_done,
					  j);
	else
		rc = pd_store_delete_async(s->store, j->tenant, j->name, stream_op_store_done,
					   j);
	if (rc)
		stream_op_finish(j, rc);
}

/* ---- global admin ops --------------------------------------------------------------------- */

void pd_svc_admin_run(pd_worker *w, pd_job *j)
{
	pd_service *s = w->svc;
	pd_err e = {0};
	jw out;
	int rc = PD_OK;

	if (j->cmd == PD_ADM_DELETE) {
		adm_delete_prefix(w, j);
		goto out;
	}
	jw_init(&out, &w->json);
	switch (j->cmd) {
	case PD_ADM_STREAMS:
		rc = adm_streams(w, j, &out, &e);
		break;
	case PD_ADM_STREAM:
		rc = adm_stream(w, j, &out, &e);
		break;
	case PD_ADM_TENANTS:
		rc = adm_tenants(w, j, &out, &e);
		break;
	default:
		rc = adm_stats(w, &out);
		break;
	}
	if (!rc)
		rc = jw_end(&out, &e);
	j->adone(j->aarg, rc, &e, rc ? NULL : (const char *)w->json.data, rc ? 0 : w->json.len);
out:
	pd_svc_job_put(s, j);
	pd_svc_op_finished(s);
}
