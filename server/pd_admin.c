/*
 * pd_admin: the admin commands of pdeltad (PROTOCOL.md §11) and the small
 * JSON writer they share. Uses the service through pd_service.h only.
 *
 * Listings (`streams`, `stream`, `tenants`) and `stats` run as a service
 * task on a worker thread and read committed rows from the store. `reset`
 * and `delete NAME` are the service's stream ops, in the stream's own FIFO,
 * so they run between that stream's jobs, never during one, and drop the
 * cached row when they commit. `delete prefix=` lists the names and runs one
 * such delete per stream, a bounded number at a time.
 */
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pd_admin.h"
#include "pd_state.h"
#include "pd_store.h"

/* ---- JSON writer ------------------------------------------------------------------- */

#define JW_DEPTH 8

typedef struct jw {
	pd_buf *b;
	int rc;
	int depth, after_key;
	uint8_t has[JW_DEPTH];
} jw;

/* A new document in b, at most cap bytes (send_doc frees b). */
static void jw_init(jw *w, pd_buf *b, size_t cap)
{
	memset(w, 0, sizeof *w);
	w->b = b;
	pd_buf_init(b, cap);
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

/* The answer of an admin request: unless rc says it failed, the document of
 * w (ended here); then its buffer is freed. */
static void send_doc(pd_admin_done_fn done, void *arg, int rc, pd_err *e, jw *w)
{
	if (!rc)
		rc = jw_end(w, e);
	done(arg, rc, e, rc ? NULL : (const char *)w->b->data, rc ? 0 : w->b->len);
	pd_buf_free(w->b);
}

/* "key":{"<name(i)>":v[i],...} for i in [from, to). */
static void jw_counts(jw *w, const char *key, const char *(*name)(int), const uint64_t *v, int from,
		      int to)
{
	jw_key(w, key);
	jw_open(w, '{');
	for (int i = from; i < to; i++)
		jw_u64(w, name(i), v[i]);
	jw_close(w, '}');
}

/* ---- members from a table of struct fields --------------------------------------------- */

enum jf_type { JF_U64, JF_I64, JF_STR, JF_STATUS };

typedef struct jfield {
	const char *key;
	size_t off;
	int type; /* enum jf_type */
} jfield;

/* The member type of field f of T: an int32_t is a response status, written
 * by name; a field of any other type does not compile. */
#define JF_TYPE(T, f)                                                                              \
	_Generic(((T *)0)->f, uint64_t: JF_U64, int64_t: JF_I64, const char *: JF_STR,             \
		 int32_t: JF_STATUS)
#define JF_AS(T, key, f) {key, offsetof(T, f), JF_TYPE(T, f)}
#define JF(T, f) JF_AS(T, #f, f) /* the key is the field's name */
#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

static const char *status_str(int status)
{
	static const char *const n[] = {"delta", "baseline", "duplicate"};
	return status >= 0 && status < 3 ? n[status] : "";
}

/* The members of table f, in its order, from the struct at base. */
static void jw_fields(jw *w, const void *base, const jfield *f, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		const char *p = (const char *)base + f[i].off;
		if (f[i].type == JF_U64)
			jw_u64(w, f[i].key, *(const uint64_t *)p);
		else if (f[i].type == JF_I64)
			jw_i64(w, f[i].key, *(const int64_t *)p);
		else if (f[i].type == JF_STR)
			jw_kstr(w, f[i].key, *(const char *const *)p);
		else
			jw_kstr(w, f[i].key, status_str(*(const int32_t *)p));
	}
}

/* ---- requests ---------------------------------------------------------------------------- */

enum pd_admin_cmd {
	PD_ADM_STREAMS = 0,
	PD_ADM_STREAM,
	PD_ADM_RESET,
	PD_ADM_DELETE,
	PD_ADM_STATS,
	PD_ADM_TENANTS,
};

enum pd_admin_sort { PD_ASORT_NAME, PD_ASORT_LAST_SEEN, PD_ASORT_SAMPLES, PD_ASORT_BYTES };

#define ADMIN_JSON_MAX ((size_t)64 << 20)
#define MULTI_INFLIGHT 32 /* deletes of a prefix delete in flight at a time */

/* One admin request, from pd_service_admin to its answer. */
typedef struct adm_req {
	pd_service *svc;
	int cmd;  /* enum pd_admin_cmd */
	int sort; /* enum pd_admin_sort */
	size_t limit;
	const char *tenant, *name, *prefix; /* into strs, may be NULL */
	char *strs;
	pd_admin_done_fn adone;
	void *aarg;

	/* A prefix delete: its names, deleted one stream op each, at most
	 * MULTI_INFLIGHT at a time; the last one done answers. mu: the parts
	 * finish on service threads in parallel with the fan-out. */
	pthread_mutex_t mu;
	char **names;
	size_t n, next, inflight;
	int fanning; /* the task is still starting parts */
	uint64_t deleted;
	int rc;
	pd_err err;
} adm_req;

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

/* ---- rows ------------------------------------------------------------------------------ */

#define ROW(f) JF(pd_store_row, f)
#define ROW_AS(key, f) JF_AS(pd_store_row, key, f)

/* A stream in a listing (`streams`). */
static const jfield listed_row[] = {
	ROW(tenant), ROW(name), ROW_AS("seq", last_seq), ROW(incarnation), ROW(created_ms),
	ROW(last_seen_ms), ROW_AS("samples", identities), ROW(state_bytes), ROW(deltas_served),
	ROW(last_status), ROW(last_reason),
};

/* One stream (`stream`), after its tenant and name. */
static const jfield stream_row[] = {
	ROW_AS("seq", last_seq), ROW(incarnation), ROW(created_ms), ROW(last_seen_ms),
	ROW(last_time_nanos), ROW_AS("samples", identities), ROW(state_bytes), ROW(last_status),
	ROW(last_reason), ROW(last_reset_reason), ROW(last_samples_in), ROW(last_samples_out),
	ROW_AS("last_output_bytes", last_delta_len), ROW(deltas_served), ROW(resets), ROW(version),
};

/* A listed stream: its row (valid during the store's callback only, unless
 * srow_own made it a copy) and its sort key. */
struct srow {
	uint64_t key;
	pd_store_row row;
	char *own; /* the copy's strings, in the top-k heap */
};

static void srow_from_rec(struct srow *r, const pd_store_row *rec, int sort)
{
	r->row = *rec;
	r->key = sort == PD_ASORT_SAMPLES ? rec->identities : rec->state_bytes;
	r->own = NULL;
}

static void write_srow(jw *w, const struct srow *r)
{
	jw_open(w, '{');
	jw_fields(w, &r->row, listed_row, NELEM(listed_row));
	jw_close(w, '}');
}

/* ---- streams ------------------------------------------------------------------------- */

struct list_ctx {
	jw *w;
	size_t limit, n;
	int sort, truncated, oom;
	struct srow *heap; /* top-k min-heap by key */
};

static int list_in_order(void *arg, const pd_store_row *rec)
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

/* Makes r outlive the callback: the strings a listing writes (tenant, name,
 * last_reason) copied into one allocation, the row's other pointers cleared. */
static int srow_own(struct srow *r)
{
	pd_store_row *w = &r->row;
	const char *reason = w->last_reason ? w->last_reason : "";
	size_t tl = strlen(w->tenant) + 1, nl = strlen(w->name) + 1, rl = strlen(reason) + 1;
	char *p = malloc(tl + nl + rl);

	if (!p)
		return -1;
	memcpy(p, w->tenant, tl);
	memcpy(p + tl, w->name, nl);
	memcpy(p + tl + nl, reason, rl);
	r->own = p;
	w->tenant = p;
	w->name = p + tl;
	w->last_reason = p + tl + nl;
	w->state = w->last_delta = NULL;
	w->last_reset_reason = NULL;
	w->own_mem = NULL;
	return 0;
}

static int list_top(void *arg, const pd_store_row *rec)
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
	return strcmp(x->row.name, y->row.name);
}

static int streams_top(const adm_req *j, struct list_ctx *c, pd_err *e)
{
	int rc;

	if (!(c->heap = calloc(c->limit, sizeof *c->heap)))
		return pd_err_set(e, PD_E_NOMEM, "out of memory for the listing");
	rc = pd_store_list(pd_service_store(j->svc), j->tenant, j->prefix, PD_STORE_SORT_NAME, 0,
			   list_top, c, e);
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

static int adm_streams(const adm_req *j, jw *out, pd_err *e)
{
	struct list_ctx c = {.w = out, .limit = j->limit, .sort = j->sort};
	int rc;

	jw_open(out, '{');
	if (j->tenant)
		jw_kstr(out, "tenant", j->tenant);
	jw_key(out, "streams");
	jw_open(out, '[');
	if (j->sort == PD_ASORT_SAMPLES || j->sort == PD_ASORT_BYTES)
		rc = streams_top(j, &c, e);
	else
		rc = pd_store_list(pd_service_store(j->svc), j->tenant, j->prefix,
				   j->sort == PD_ASORT_LAST_SEEN ? PD_STORE_SORT_LAST_SEEN
								  : PD_STORE_SORT_NAME,
				   j->limit + 1, list_in_order, &c, e);
	jw_close(out, ']');
	jw_bool(out, "truncated", c.truncated);
	jw_close(out, '}');
	return rc;
}

/* ---- stream ---------------------------------------------------------------------------- */

static void cache_facts(const adm_req *j, jw *out)
{
	pd_stream_cache_facts f;

	pd_service_stream_cached(j->svc, j->tenant, j->name, &f);
	jw_bool(out, "cached", f.cached);
	jw_bool(out, "busy", f.busy);
	jw_u64(out, "queued", f.queued);
}

static void state_facts(const pd_store_row *r, jw *out)
{
	pd_state *tmp = r->state_len ? pd_state_new() : NULL;
	int ok = tmp && !pd_state_deserialize(tmp, r->state, r->state_len, NULL) &&
		 pd_state_valid(tmp);

	jw_bool(out, "has_state", ok);
	jw_u64(out, "identities", r->identities);
	jw_u64(out, "state_len", r->state_len);
	jw_u64(out, "schema", ok ? pd_state_schema(tmp) : 0);
	jw_i64(out, "period", ok ? pd_state_period(tmp) : 0);
	jw_key(out, "delta_columns");
	jw_open(out, '[');
	for (size_t i = 0; ok && i < pd_state_ncols(tmp); i++)
		jw_str(out, pd_state_col(tmp, i));
	jw_close(out, ']');
	pd_state_free(tmp);
}

static int adm_stream(const adm_req *j, jw *out, pd_err *e)
{
	pd_store_row rec = {0};
	const pd_store_row *r = &rec;
	/* The state only: the kept response is read (and checked) by retries. */
	int rc = pd_store_get_state(pd_service_store(j->svc), j->tenant, j->name, &rec, e);

	if (rc == PD_E_NOTFOUND)
		rc = pd_err_set(e, rc, "no stream %s in tenant %s", j->name, j->tenant);
	if (rc) {
		pd_store_row_free(&rec);
		return rc;
	}
	jw_open(out, '{');
	jw_kstr(out, "tenant", j->tenant);
	jw_kstr(out, "name", j->name);
	jw_fields(out, r, stream_row, NELEM(stream_row));
	state_facts(r, out);
	cache_facts(j, out);
	jw_close(out, '}');
	pd_store_row_free(&rec);
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

static int adm_tenants(const adm_req *j, jw *out, pd_err *e)
{
	struct list_ctx c = {.w = out, .limit = j->limit};
	int rc;

	jw_open(out, '{');
	jw_key(out, "tenants");
	jw_open(out, '[');
	rc = pd_store_tenant_totals(pd_service_store(j->svc), NULL, tenant_row, &c, e);
	jw_close(out, ']');
	jw_bool(out, "truncated", c.truncated);
	jw_close(out, '}');
	return rc;
}

/* ---- stats ---------------------------------------------------------------------------------- */

#define SVC(f) JF(pd_service_stats, f)
#define SVC_AS(key, f) JF_AS(pd_service_stats, key, f)
#define STORE(f) JF(struct pd_store_stats, f)

static const jfield cache_stats[] = {
	SVC(streams_cached), SVC(cache_bytes), SVC(cache_evictions), SVC(streams_expired),
	SVC(jobs_queued), SVC(jobs_running), SVC(jobs_admitted), SVC(jobs_cancelled),
	SVC(store_conflicts), SVC(admin_requests), SVC(tenants), SVC(bytes_in), SVC(bytes_out),
};
static const jfield latency_stats[] = {
	SVC_AS("count", lat_count), SVC_AS("total_sum_ns", lat_total_sum_ns),
	SVC_AS("engine_sum_ns", lat_engine_sum_ns), SVC_AS("commit_sum_ns", lat_commit_sum_ns),
};
static const jfield store_stats[] = {
	STORE(commits), STORE(rows_written), STORE(errors), STORE(writes_failed), STORE(conflicts),
	STORE(busy_rejects), STORE(expired), STORE(reads), STORE(read_errors), STORE(queue_len),
	STORE(queue_len_peak), STORE(batch_max),
	JF_AS(struct pd_store_stats, "commit_count", commit.count),
	JF_AS(struct pd_store_stats, "commit_sum_ns", commit.sum_ns),
};

static const char *le_ms_name(int i)
{
	static const char *const bounds[11] = {"1",	"2",   "5",   "10",  "20",  "50",
					       "100", "200", "500", "1000", "+Inf"};
	return bounds[i];
}

static void stats_service(jw *out, const pd_service_stats *st)
{
	uint64_t requests = 0;

	for (int i = 0; i < 3; i++)
		requests += st->requests_by_status[i];
	for (int i = 1; i < PD_E__COUNT; i++)
		requests += st->errors_by_code[i];
	jw_u64(out, "requests", requests);
	jw_counts(out, "requests_by_status", status_str, st->requests_by_status, 0, 3);
	jw_counts(out, "baselines_by_reason", pd_reason_name, st->baselines_by_reason, 1, 6);
	jw_counts(out, "errors_by_code", pd_code_name, st->errors_by_code, 1, PD_E__COUNT);
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
	jw_fields(out, st, cache_stats, NELEM(cache_stats));
	jw_key(out, "latency");
	jw_open(out, '{');
	jw_fields(out, st, latency_stats, NELEM(latency_stats));
	/* cumulative request counts at or under each bound in ms (pdeltactl top's p99) */
	jw_counts(out, "total_le_ms", le_ms_name, st->lat_total, 0, 11);
	jw_close(out, '}');
}

static void stats_store(jw *out, const struct pd_store_stats *st)
{
	jw_key(out, "store");
	jw_open(out, '{');
	jw_fields(out, st, store_stats, NELEM(store_stats));
	jw_kstr(out, "last_error", st->last_error);
	jw_close(out, '}');
}

static int adm_stats(const adm_req *j, jw *out)
{
	pd_service_stats st;
	pd_stats_json_fn hook;
	void *hook_arg;

	pd_service_stats_get(j->svc, &st);
	pd_service_stats_hook(j->svc, &hook, &hook_arg);
	jw_open(out, '{');
	jw_i64(out, "uptime_s", pd_service_uptime_ms(j->svc) / 1000);
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

static int collect_name(void *arg, const pd_store_row *rec)
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

/* The answer of a reset ({tenant, name, "reset":true}) or of a delete of a
 * name or a prefix (name NULL) ({tenant, [name,] "deleted":n}). */
static void op_answer(pd_admin_done_fn done, void *arg, int cmd, const char *tenant,
		      const char *name, uint64_t deleted)
{
	pd_buf b;
	jw w;
	pd_err e = {0};

	jw_init(&w, &b, 1 << 16);
	jw_open(&w, '{');
	jw_kstr(&w, "tenant", tenant);
	if (name)
		jw_kstr(&w, "name", name);
	if (cmd == PD_ADM_RESET)
		jw_bool(&w, "reset", 1);
	else
		jw_u64(&w, "deleted", deleted);
	jw_close(&w, '}');
	send_doc(done, arg, PD_OK, &e, &w);
}

static void req_free(adm_req *j)
{
	for (size_t i = 0; i < j->n; i++)
		free(j->names[i]);
	free(j->names);
	free(j->strs);
	pthread_mutex_destroy(&j->mu);
	free(j);
}

/* Copies the string arguments (tenant, name, prefix) into one allocation. */
static adm_req *req_new(pd_service *s, const char *const *v, pd_admin_done_fn done, void *arg)
{
	adm_req *j = calloc(1, sizeof *j);
	const char **dst[3];
	size_t total = 0, off = 0;

	if (!j)
		return NULL;
	dst[0] = &j->tenant;
	dst[1] = &j->name;
	dst[2] = &j->prefix;
	for (int i = 0; i < 3; i++)
		total += v[i] ? strlen(v[i]) + 1 : 0;
	if (!(j->strs = malloc(total ? total : 1))) {
		free(j);
		return NULL;
	}
	for (int i = 0; i < 3; i++) {
		size_t l = v[i] ? strlen(v[i]) + 1 : 0;
		if (!v[i])
			continue;
		memcpy(j->strs + off, v[i], l);
		*dst[i] = j->strs + off;
		off += l;
	}
	pthread_mutex_init(&j->mu, NULL);
	j->svc = s;
	j->adone = done;
	j->aarg = arg;
	return j;
}

/* ---- delete prefix ---------------------------------------------------------------------- */

static void multi_answer(adm_req *m)
{
	if (m->rc)
		m->adone(m->aarg, m->rc, &m->err, NULL, 0);
	else
		op_answer(m->adone, m->aarg, PD_ADM_DELETE, m->tenant, NULL, m->deleted);
	req_free(m);
}

/* A part is done: count it and move it on to the next name, or retire it. */
static const char *multi_part_done(void *arg, int rc, const pd_err *e)
{
	adm_req *m = arg;
	const char *next = NULL;
	int last;

	pthread_mutex_lock(&m->mu);
	if (rc == PD_OK)
		m->deleted++;
	else if (rc != PD_E_NOTFOUND && !m->rc) {
		m->rc = rc;
		m->err = *e;
	}
	if (m->next < m->n)
		next = m->names[m->next++];
	else
		m->inflight--;
	last = !next && m->inflight == 0 && !m->fanning;
	pthread_mutex_unlock(&m->mu);
	if (last)
		multi_answer(m);
	return next;
}

/* Starts up to MULTI_INFLIGHT deletes (mu held); each moves on by itself. */
static void multi_fan_out(adm_req *m)
{
	pd_err e = {0};

	while (m->inflight < MULTI_INFLIGHT && m->next < m->n) {
		const char *name = m->names[m->next++];
		int rc = pd_service_stream_op(m->svc, PD_STREAM_DELETE, m->tenant, name,
					      multi_part_done, m, &e);
		if (!rc) {
			m->inflight++;
		} else if (!m->rc) {
			m->rc = rc;
			m->err = e;
		}
	}
}

static void adm_delete_prefix(adm_req *m)
{
	struct name_vec nv = {0};
	pd_err e = {0};
	int rc, last;

	rc = pd_store_list(pd_service_store(m->svc), m->tenant, m->prefix, PD_STORE_SORT_NAME, 0,
			   collect_name, &nv, &e);
	if (!rc && nv.oom)
		rc = pd_err_set(&e, PD_E_NOMEM, "out of memory listing streams");
	pthread_mutex_lock(&m->mu);
	m->names = nv.v;
	m->n = nv.n;
	if (rc) {
		m->rc = rc;
		m->err = e;
	} else {
		m->fanning = 1;
		multi_fan_out(m);
		m->fanning = 0;
	}
	last = m->inflight == 0;
	pthread_mutex_unlock(&m->mu);
	if (last)
		multi_answer(m);
}

/* ---- reset / delete of one stream ------------------------------------------------------- */

/* A delete of a missing stream deleted 0; a reset of one is PD_E_NOTFOUND. */
static const char *stream_op_done(void *arg, int rc, const pd_err *err)
{
	adm_req *j = arg;
	pd_err e = *err;

	if (j->cmd == PD_ADM_DELETE && rc == PD_E_NOTFOUND)
		op_answer(j->adone, j->aarg, j->cmd, j->tenant, j->name, 0);
	else if (rc == PD_OK)
		op_answer(j->adone, j->aarg, j->cmd, j->tenant, j->name, 1);
	else {
		if (rc == PD_E_NOTFOUND)
			pd_err_set(&e, rc, "no stream %s in tenant %s", j->name, j->tenant);
		j->adone(j->aarg, rc, &e, NULL, 0);
	}
	req_free(j);
	return NULL;
}

/* ---- the other commands: a task on a worker ------------------------------------------------ */

static void admin_task(void *arg)
{
	adm_req *j = arg;
	pd_err e = {0};
	pd_buf doc;
	jw out;
	int rc = PD_OK;

	if (j->cmd == PD_ADM_DELETE) {
		adm_delete_prefix(j); /* answers and frees when its last part is done */
		return;
	}
	jw_init(&out, &doc, ADMIN_JSON_MAX);
	switch (j->cmd) {
	case PD_ADM_STREAMS:
		rc = adm_streams(j, &out, &e);
		break;
	case PD_ADM_STREAM:
		rc = adm_stream(j, &out, &e);
		break;
	case PD_ADM_TENANTS:
		rc = adm_tenants(j, &out, &e);
		break;
	default:
		rc = adm_stats(j, &out);
		break;
	}
	send_doc(j->adone, j->aarg, rc, &e, &out);
	req_free(j);
}

int pd_service_admin(pd_service *s, const char *cmd, const char *const *kv, pd_admin_done_fn done,
		     void *arg, pd_err *e)
{
	struct admin_args a;
	int c = cmd_index(cmd), rc, sort;
	size_t limit;
	adm_req *j;

	if (c < 0)
		return pd_err_set(e, PD_E_ARG, "unknown admin command %s", cmd ? cmd : "(null)");
	if ((rc = parse_kv(c, kv, &a, e)) || (rc = check_args(c, &a, e)) ||
	    (rc = parse_limit(a.v[4], &limit, e)) || (rc = parse_sort(a.v[3], &sort, e)))
		return rc;
	if (!(j = req_new(s, a.v, done, arg)))
		return pd_err_set(e, PD_E_NOMEM, "out of memory for an admin request");
	j->cmd = c;
	j->sort = sort;
	j->limit = limit;
	if (c == PD_ADM_RESET || (c == PD_ADM_DELETE && j->name))
		rc = pd_service_stream_op(s, c == PD_ADM_RESET ? PD_STREAM_RESET : PD_STREAM_DELETE,
					  j->tenant, j->name, stream_op_done, j, e);
	else
		rc = pd_service_task(s, admin_task, j, e);
	if (rc)
		req_free(j);
	return rc;
}
