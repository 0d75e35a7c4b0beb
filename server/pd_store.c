/*
 * pd_store: backend-neutral half of the state store (see pd_store.h).
 *
 * Owns what every backend needs the same way: the bounded write queue, the
 * single writer thread and its group commit, completions, fault injection and
 * metrics. A backend (pd_store_sqlite.c, pd_store_pg.c) only runs
 * statements, so both get group commit and backpressure the same way.
 *
 * Queue accounting: a write counts against max_queue / max_queue_bytes from
 * enqueue until its completion has returned, so memory held by in-flight
 * batches is bounded too, and pd_store_flush() can wait on a ticket counter.
 */
#include "pd_store.h"

#include <ctype.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pd_buf.h"
#include "pd_clock.h"
#include "pd_crc.h"
#include "pd_gz.h"
#include "pd_list.h"
#include "pd_log.h"
#include "pd_settings.h"

/* Rows one expire step may delete, so the writer lock is never held long. */
#define PD_STORE_EXPIRE_CHUNK 1000u

const double pd_store_hist_bounds_ms[PD_STORE_HIST_N] = {1, 2, 5, 10, 20, 50, 100, 200, 500, 1000};

enum wop_kind { WOP_PUT, WOP_DELETE, WOP_RESET, WOP_EXPIRE };

/* One queued write; the copied record's strings and blobs follow it in the
 * same allocation. */
struct wop {
	struct wop *next;
	enum wop_kind kind;
	pd_store_row rec; /* PUT; DELETE/RESET use tenant, name, last_reset_reason */
	int has_expect;
	uint64_t expect_version;
	int64_t expire_before_ms;
	uint64_t *expired_out; /* EXPIRE: rows deleted, set before done runs */
	uint64_t expired;
	pd_store_done_fn done;
	void *arg;
	size_t bytes;
	uint64_t ticket;
	uint64_t enq_ns;
	int rc;
};

struct pd_store {
	const struct pd_store_backend *ops;
	void *be;
	size_t max_row; /* largest row a put may store, see put_row() */
	struct pd_store_opts opts;

	pthread_mutex_t mu;
	pthread_cond_t cv_work; /* writer: work queued or stopping */
	pthread_cond_t cv_done; /* flushers: done_ticket advanced */
	struct wop *head, *tail;
	size_t qlen, qbytes; /* queued + in flight */
	uint64_t enq_ticket, done_ticket;
	int stopping;
	unsigned inject_faults;
	pthread_t writer;
	int writer_running;

	struct pd_store_stats st; /* under mu, except the atomics below */
	/* error log rate limit (under mu) */
	uint64_t log_last_ms; /* monotonic ms of the last error line; 0 = none yet */
	uint64_t log_pending; /* errors not logged since that line */
	uint64_t failing;     /* transactions failed since the last success */
	atomic_uint_fast64_t reads, read_errors, responses_corrupt;
};

static uint64_t mono_ns(void) { return pd_now_ns(); }

static uint64_t mono_ms(void) { return pd_now_ms(); }

static int64_t wall_ms(void) { return pd_wall_ms(); }

void pd_store_opts_init(struct pd_store_opts *o)
{
	memset(o, 0, sizeof *o);
	o->synchronous_full = 1;
	o->max_queue = (size_t)pd_setting_default(PD_SET_STORE_MAX_QUEUE);
	o->max_queue_bytes = (size_t)pd_setting_default(PD_SET_STORE_MAX_QUEUE_BYTES);
	o->max_batch = (size_t)pd_setting_default(PD_SET_STORE_MAX_BATCH);
	o->max_batch_bytes = (size_t)pd_setting_default(PD_SET_STORE_MAX_BATCH_BYTES);
	o->busy_timeout_ms = (int)pd_setting_default(PD_SET_STORE_BUSY_TIMEOUT_MS);
	o->max_readers = (size_t)pd_setting_default(PD_SET_STORE_MAX_READERS);
}

/* Zero sizes stand for the defaults, so a memset opts only needs a path. */
static void opts_fill_defaults(struct pd_store_opts *o)
{
	if (!o->max_queue)
		o->max_queue = (size_t)pd_setting_default(PD_SET_STORE_MAX_QUEUE);
	if (!o->max_queue_bytes)
		o->max_queue_bytes = (size_t)pd_setting_default(PD_SET_STORE_MAX_QUEUE_BYTES);
	if (!o->max_batch)
		o->max_batch = (size_t)pd_setting_default(PD_SET_STORE_MAX_BATCH);
	if (!o->max_batch_bytes)
		o->max_batch_bytes = (size_t)pd_setting_default(PD_SET_STORE_MAX_BATCH_BYTES);
	if (o->busy_timeout_ms <= 0)
		o->busy_timeout_ms = (int)pd_setting_default(PD_SET_STORE_BUSY_TIMEOUT_MS);
	if (!o->max_readers)
		o->max_readers = (size_t)pd_setting_default(PD_SET_STORE_MAX_READERS);
}

/* ---- records ---------------------------------------------------------------- */

void pd_store_row_free(pd_store_row *rec)
{
	free(rec->own_mem);
	memset(rec, 0, sizeof *rec);
}

int pd_store_row_reserve(pd_store_row *rec, size_t n, pd_err *e)
{
	if (pd_array_grow(&rec->own_mem, &rec->own_alloc, n, 1, NULL) == PD_OK)
		return PD_OK;
	return pd_err_set(e, PD_E_NOMEM, "out of memory reading a stream row (%zu bytes)", n);
}

/* Copies a text column, NUL-terminated, to *p. */
static const char *fill_text(const struct pd_store_result *row, int col, char **p)
{
	size_t n;
	const void *v = row->bytes(row->ctx, col, &n);
	char *out = *p;

	if (n)
		memcpy(out, v, n);
	out[n] = '\0';
	*p += n + 1;
	return out;
}

static const uint8_t *fill_blob(const struct pd_store_result *row, int col, size_t *len, char **p)
{
	const void *v = row->bytes(row->ctx, col, len);
	uint8_t *out = (uint8_t *)*p;

	if (*len)
		memcpy(out, v, *len);
	*p += *len;
	return out;
}

static void fill_fixed(pd_store_row *r, const struct pd_store_result *row)
{
	size_t hn;
	const void *h = row->bytes(row->ctx, PD_COL_HASH, &hn);

	r->version = row->u64(row->ctx, PD_COL_VERSION);
	r->identities = row->u64(row->ctx, PD_COL_IDENT);
	r->state_bytes = row->u64(row->ctx, PD_COL_STATE_BYTES);
	r->last_seq = row->u64(row->ctx, PD_COL_SEQ);
	memset(r->last_hash, 0, sizeof r->last_hash);
	if (h && hn)
		memcpy(r->last_hash, h, hn < sizeof r->last_hash ? hn : sizeof r->last_hash);
	r->last_status = (int32_t)row->u64(row->ctx, PD_COL_STATUS);
	r->last_samples_in = row->u64(row->ctx, PD_COL_IN);
	r->last_samples_out = row->u64(row->ctx, PD_COL_OUT);
	r->incarnation = row->u64(row->ctx, PD_COL_INCARN);
	r->last_time_nanos = (int64_t)row->u64(row->ctx, PD_COL_TIME);
	r->created_ms = (int64_t)row->u64(row->ctx, PD_COL_CREATED);
	r->last_seen_ms = (int64_t)row->u64(row->ctx, PD_COL_SEEN);
	r->deltas_served = row->u64(row->ctx, PD_COL_SERVED);
	r->resets = row->u64(row->ctx, PD_COL_RESETS);
}

int pd_store_row_fill(pd_store_row *r, const struct pd_store_result *row, int blobs, pd_err *e)
{
	static const int text_cols[] = {PD_COL_TENANT, PD_COL_NAME, PD_COL_REASON,
					PD_COL_RESET_REASON};
	size_t need = 0, n;
	char *p;
	int rc;

	for (size_t i = 0; i < sizeof text_cols / sizeof text_cols[0]; i++) {
		row->bytes(row->ctx, text_cols[i], &n);
		need += n + 1;
	}
	if (blobs & PD_STORE_FILL_STATE) {
		row->bytes(row->ctx, PD_COL_STATE, &n);
		need += n;
	}
	if (blobs & PD_STORE_FILL_DELTA) {
		row->bytes(row->ctx, PD_COL_DELTA, &n);
		need += n;
	}
	if ((rc = pd_store_row_reserve(r, need, e)))
		return rc;
	fill_fixed(r, row);
	p = r->own_mem;
	r->tenant = fill_text(row, PD_COL_TENANT, &p);
	r->name = fill_text(row, PD_COL_NAME, &p);
	r->last_reason = fill_text(row, PD_COL_REASON, &p);
	r->last_reset_reason = fill_text(row, PD_COL_RESET_REASON, &p);
	if (blobs & PD_STORE_FILL_STATE) {
		r->state = fill_blob(row, PD_COL_STATE, &r->state_len, &p);
	} else {
		r->state = NULL;
		r->state_len = (size_t)row->u64(row->ctx, PD_COL_STATE);
	}
	r->has_delta_crc = 0;
	r->last_delta_crc = 0;
	if (blobs & PD_STORE_FILL_DELTA) {
		r->last_delta = fill_blob(row, PD_COL_DELTA, &r->last_delta_len, &p);
		r->has_delta_crc = !row->is_null(row->ctx, PD_COL_DELTA_CRC);
		r->last_delta_crc = (uint32_t)row->u64(row->ctx, PD_COL_DELTA_CRC);
	} else {
		r->last_delta = NULL;
		r->last_delta_len = (size_t)row->u64(row->ctx, PD_COL_DELTA);
	}
	return PD_OK;
}

/* Upper estimate of the bytes a put of rec stores (values plus slack for
 * the metadata), SIZE_MAX if absurd: what is held against the backend's
 * largest row. */
static size_t row_size(const pd_store_row *r)
{
	size_t n = 512 + PD_STORE_HASH_LEN;
	const char *texts[] = {r->tenant, r->name, r->last_reason, r->last_reset_reason};

	for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++)
		n += texts[i] ? strlen(texts[i]) : 0;
	if (r->state_len > SIZE_MAX / 4 || r->last_delta_len > SIZE_MAX / 4)
		return SIZE_MAX;
	return n + r->state_len + r->last_delta_len;
}

static size_t str_size(const char *s)
{
	return s ? strlen(s) + 1 : 1;
}

/* Adds b to *a; 0 on overflow. */
static int size_add(size_t *a, size_t b)
{
	if (b > SIZE_MAX - *a)
		return 0;
	*a += b;
	return 1;
}

static const char *copy_str(char **dst, const char *src)
{
	size_t n = src ? strlen(src) : 0;
	char *out = *dst;

	if (n)
		memcpy(out, src, n);
	out[n] = '\0';
	*dst += n + 1;
	return out;
}

static const uint8_t *copy_blob(char **dst, const uint8_t *src, size_t n)
{
	uint8_t *out = (uint8_t *)*dst;

	if (n)
		memcpy(out, src, n);
	*dst += n;
	return out;
}

/* Size of a wop carrying a copy of rec (0 if it overflows size_t). */
static size_t wop_size(const pd_store_row *r)
{
	size_t n = sizeof(struct wop);
	int ok = size_add(&n, str_size(r->tenant)) && size_add(&n, str_size(r->name)) &&
		 size_add(&n, str_size(r->last_reason)) &&
		 size_add(&n, str_size(r->last_reset_reason)) && size_add(&n, r->state_len) &&
		 size_add(&n, r->last_delta_len);
	return ok ? n : 0;
}

/* Allocates a wop of `bytes` holding a deep copy of r. */
static struct wop *wop_new(const pd_store_row *r, size_t bytes)
{
	struct wop *w = malloc(bytes); /* the tail is written in full below: zero the head only */
	char *p;

	if (!w)
		return NULL;
	memset(w, 0, sizeof *w);
	p = (char *)(w + 1);
	w->bytes = bytes;
	w->rec = *r;
	w->rec.own_mem = NULL;
	w->rec.own_alloc = 0;
	w->rec.tenant = copy_str(&p, r->tenant);
	w->rec.name = copy_str(&p, r->name);
	w->rec.last_reason = copy_str(&p, r->last_reason);
	w->rec.last_reset_reason = copy_str(&p, r->last_reset_reason);
	w->rec.state = copy_blob(&p, r->state, r->state_len);
	w->rec.last_delta = copy_blob(&p, r->last_delta, r->last_delta_len);
	return w;
}

/* ---- queue ------------------------------------------------------------------ */

/* Builds a wop for rec, checking what can be checked without the lock. */
static int wop_make(pd_store *s, const pd_store_row *rec, struct wop **out)
{
	size_t bytes;

	*out = NULL;
	if (!s || !rec || !rec->tenant || !rec->name)
		return PD_E_ARG;
	if ((rec->state_len && !rec->state) || (rec->last_delta_len && !rec->last_delta))
		return PD_E_ARG;
	bytes = wop_size(rec);
	if (!bytes || bytes > s->opts.max_queue_bytes)
		return PD_E_LIMIT;
	*out = wop_new(rec, bytes);
	return *out ? PD_OK : PD_E_NOMEM;
}

/* Queues w or frees it. Never blocks beyond the queue mutex. */
static int enqueue(pd_store *s, struct wop *w)
{
	int rc = PD_OK;

	w->enq_ns = mono_ns();
	pthread_mutex_lock(&s->mu);
	if (s->stopping || s->qlen >= s->opts.max_queue ||
	    w->bytes > s->opts.max_queue_bytes - s->qbytes) {
		s->st.busy_rejects++;
		rc = PD_E_BUSY;
	} else {
		w->ticket = ++s->enq_ticket;
		PD_QUEUE_PUSH(s->head, s->tail, w, next);
		s->qlen++;
		s->qbytes += w->bytes;
		if (s->qlen > s->st.queue_len_peak)
			s->st.queue_len_peak = s->qlen;
		pthread_cond_signal(&s->cv_work);
	}
	pthread_mutex_unlock(&s->mu);
	if (rc)
		free(w);
	return rc;
}

static int put_common(pd_store *s, const pd_store_row *rec, int has_expect, uint64_t expect,
		      pd_store_done_fn done, void *arg)
{
	struct wop *w;
	int rc = wop_make(s, rec, &w);

	if (rc)
		return rc;
	w->kind = WOP_PUT;
	/* On our own copy: what reaches the disk is what the checksum covers. */
	w->rec.last_delta_crc = pd_crc32(0, w->rec.last_delta, w->rec.last_delta_len);
	w->rec.has_delta_crc = 1;
	w->has_expect = has_expect;
	w->expect_version = expect;
	w->done = done;
	w->arg = arg;
	return enqueue(s, w);
}

int pd_store_put_async(pd_store *s, const pd_store_row *rec, pd_store_done_fn done, void *arg)
{
	return put_common(s, rec, 0, 0, done, arg);
}

int pd_store_put_if_async(pd_store *s, const pd_store_row *rec, uint64_t expect_version,
			  pd_store_done_fn done, void *arg)
{
	return put_common(s, rec, 1, expect_version, done, arg);
}

/* Queues a write that only names a stream (delete, reset). */
static int key_op(pd_store *s, enum wop_kind kind, const char *tenant, const char *name,
		  const char *reason, pd_store_done_fn done, void *arg)
{
	pd_store_row key = {.tenant = tenant, .name = name, .last_reset_reason = reason};
	struct wop *w;
	int rc = wop_make(s, &key, &w);

	if (rc)
		return rc;
	w->kind = kind;
	w->done = done;
	w->arg = arg;
	return enqueue(s, w);
}

int pd_store_delete_async(pd_store *s, const char *tenant, const char *name,
			  pd_store_done_fn done, void *arg)
{
	return key_op(s, WOP_DELETE, tenant, name, NULL, done, arg);
}

int pd_store_reset_async(pd_store *s, const char *tenant, const char *name, const char *reason,
			 pd_store_done_fn done, void *arg)
{
	return key_op(s, WOP_RESET, tenant, name, reason, done, arg);
}

/* ---- writer thread ---------------------------------------------------------- */

static void hist_observe(struct pd_store_hist *h, uint64_t ns)
{
	h->count++;
	h->sum_ns += ns;
	if (ns > h->max_ns)
		h->max_ns = ns;
	for (int i = 0; i < PD_STORE_HIST_N; i++)
		if ((double)ns <= pd_store_hist_bounds_ms[i] * 1e6)
			h->le[i]++;
}

/* Detaches up to max_batch writes / max_batch_bytes (at least one). */
static struct wop *take_batch(pd_store *s, size_t *n_out)
{
	struct wop *first = s->head, *last = s->head;
	size_t n = 1, bytes = first->bytes;

	/* bytes may already exceed the cap: one oversized write goes alone. */
	while (last->next && n < s->opts.max_batch && bytes < s->opts.max_batch_bytes &&
	       last->next->bytes <= s->opts.max_batch_bytes - bytes) {
		last = last->next;
		bytes += last->bytes;
		n++;
	}
	s->head = last->next;
	if (!s->head)
		s->tail = NULL;
	last->next = NULL;
	*n_out = n;
	return first;
}

/* A put. A row too large for the backend is refused before it runs, so it
 * cannot fail its batch; a compare-and-set that changed nothing met a newer
 * version. */
static int put_row(pd_store *s, const struct wop *w, int64_t now_ms, pd_err *e)
{
	const pd_store_row *r = &w->rec;
	uint64_t changed;
	int rc;

	if (row_size(r) > s->max_row)
		return pd_err_set(e, PD_E_LIMIT, "stream %s/%s: row larger than %zu bytes",
				  r->tenant, r->name, s->max_row);
	rc = s->ops->put(s->be, r, w->has_expect, w->expect_version, now_ms, &changed, e);
	if (!rc && !changed)
		return pd_err_set(e, PD_E_STATE, "stream %s/%s changed since version %llu",
				  r->tenant, r->name, (unsigned long long)w->expect_version);
	return rc;
}

/* A delete or reset; one that touched no row named no stream. */
static int key_write(pd_store *s, const struct wop *w, pd_err *e)
{
	enum pd_store_key_op op = w->kind == WOP_RESET ? PD_STORE_KEY_RESET : PD_STORE_KEY_DELETE;
	const pd_store_row *k = &w->rec;
	uint64_t changed;
	int rc = s->ops->key_write(s->be, op, k->tenant, k->name, k->last_reset_reason, &changed,
				   e);

	if (!rc && !changed)
		return pd_err_set(e, PD_E_NOTFOUND, "no stream %s/%s", k->tenant, k->name);
	return rc;
}

/* Runs one write inside the open transaction. Operation-level outcomes land
 * in w->rc; the return value is a transaction failure. */
static int apply_op(pd_store *s, struct wop *w, int64_t now_ms, pd_err *e)
{
	const struct pd_store_backend *ops = s->ops;
	int rc;

	switch (w->kind) {
	case WOP_PUT:
		rc = put_row(s, w, now_ms, e);
		break;
	case WOP_DELETE:
	case WOP_RESET:
		rc = key_write(s, w, e);
		break;
	case WOP_EXPIRE:
		rc = ops->expire(s->be, w->expire_before_ms, PD_STORE_EXPIRE_CHUNK, &w->expired, e);
		break;
	default:
		rc = pd_err_set(e, PD_E_INTERNAL, "unknown store write kind %d", (int)w->kind);
	}
	if (rc == PD_OK || rc == PD_E_NOTFOUND || rc == PD_E_STATE || rc == PD_E_LIMIT) {
		w->rc = rc;
		return PD_OK;
	}
	return rc;
}

/* One group commit: all writes of the batch, or none of them. */
static int run_batch(pd_store *s, struct wop *batch, int fault, pd_err *e)
{
	int64_t now = wall_ms();
	int rc = s->ops->begin(s->be, e);

	for (struct wop *w = batch; !rc && w; w = w->next)
		rc = apply_op(s, w, now, e);
	if (!rc && fault)
		rc = pd_err_set(e, PD_E_STORE, "injected fault: commit failed as with SQLITE_FULL");
	if (!rc)
		rc = s->ops->commit(s->be, e);
	if (rc)
		s->ops->rollback(s->be);
	return rc;
}

/* Records a store error and logs it, rate-limited (PD_STORE_LOG_INTERVAL_MS).
 * Takes mu. */
static void store_error(pd_store *s, const char *what, const pd_err *e)
{
	uint64_t now = mono_ms(), left_out = 0;
	const char *msg = e->msg;
	int emit;

	pthread_mutex_lock(&s->mu);
	snprintf(s->st.last_error, sizeof s->st.last_error, "%s", e->msg);
	s->st.last_error_ms = wall_ms();
	emit = !s->log_last_ms || now - s->log_last_ms >= PD_STORE_LOG_INTERVAL_MS;
	if (emit) {
		left_out = s->log_pending;
		s->log_pending = 0;
		s->log_last_ms = now;
	} else {
		s->log_pending++;
		s->st.log_suppressed++;
	}
	pthread_mutex_unlock(&s->mu);
	if (!emit)
		return;
	if (!strncmp(msg, "state store: ", 13))
		msg += 13;
	if (left_out)
		pd_log(PD_LOG_ERROR, "state store: %s failed: %s (and %llu more store errors since "
		       "the previous line, not logged)", what, msg, (unsigned long long)left_out);
	else
		pd_log(PD_LOG_ERROR, "state store: %s failed: %s", what, msg);
}

/* The first commit after failed ones: says so, with what was left out. */
static void store_recovered(pd_store *s)
{
	uint64_t failed, left_out;

	pthread_mutex_lock(&s->mu);
	failed = s->failing;
	left_out = s->log_pending;
	s->failing = 0;
	s->log_pending = 0;
	s->log_last_ms = 0;
	pthread_mutex_unlock(&s->mu);
	pd_log(PD_LOG_INFO, "state store: commits succeed again after %llu failed transactions "
	       "(%llu error lines not logged)", (unsigned long long)failed,
	       (unsigned long long)left_out);
}

/* Counts the outcome of a finished batch; called with mu held. */
static void account_batch(pd_store *s, struct wop *batch, size_t n, int rc, uint64_t t0,
			  uint64_t t1)
{
	struct pd_store_stats *st = &s->st;

	if (n > st->batch_max)
		st->batch_max = n;
	for (struct wop *w = batch; w; w = w->next)
		hist_observe(&st->wait, t1 - w->enq_ns);
	if (rc) {
		st->errors++;
		st->writes_failed += n;
		s->failing++;
		return;
	}
	st->commits++;
	hist_observe(&st->commit, t1 - t0);
	for (struct wop *w = batch; w; w = w->next) {
		if (w->rc == PD_E_STATE)
			st->conflicts++;
		if (w->rc != PD_OK)
			continue;
		st->rows_written += w->kind == WOP_EXPIRE ? w->expired : 1;
		if (w->kind == WOP_EXPIRE)
			st->expired += w->expired;
	}
}

/* Runs completions in queue order (after COMMIT or ROLLBACK returned) and
 * frees the writes. */
static void complete_batch(struct wop *batch, int rc, uint64_t end_ns, size_t *bytes_out,
			   uint64_t *last_ticket)
{
	struct wop *w = batch, *next;
	size_t bytes = 0;

	for (; w; w = next) {
		next = w->next;
		if (rc) {
			w->rc = PD_E_STORE;
			w->expired = 0;
		}
		if (w->expired_out)
			*w->expired_out = w->expired;
		if (w->done)
			w->done(w->arg, w->rc, end_ns - w->enq_ns);
		bytes += w->bytes;
		*last_ticket = w->ticket;
		free(w);
	}
	*bytes_out = bytes;
}

static void writer_batch(pd_store *s, struct wop *batch, size_t n, int fault)
{
	pd_err e = {0};
	uint64_t t0 = mono_ns(), t1, last_ticket = 0;
	size_t bytes;
	int rc = run_batch(s, batch, fault, &e), recovered;
	char what[64];

	t1 = mono_ns();
	pthread_mutex_lock(&s->mu);
	recovered = !rc && s->failing;
	account_batch(s, batch, n, rc, t0, t1);
	pthread_mutex_unlock(&s->mu);
	if (rc) {
		snprintf(what, sizeof what, "commit of %zu write%s", n, n == 1 ? "" : "s");
		store_error(s, what, &e);
	} else if (recovered) {
		store_recovered(s);
	}

	complete_batch(batch, rc, t1, &bytes, &last_ticket);

	pthread_mutex_lock(&s->mu);
	s->qlen -= n;
	s->qbytes -= bytes;
	s->done_ticket = last_ticket;
	pthread_cond_broadcast(&s->cv_done);
	pthread_mutex_unlock(&s->mu);
}

/* Keeps why an idle reconnect failed as the store's last error, so /healthz
 * says why, not only that the database is unreachable (the backend logs
 * it). Takes mu. */
static void reconnect_failed(pd_store *s, const pd_err *e)
{
	pthread_mutex_lock(&s->mu);
	snprintf(s->st.last_error, sizeof s->st.last_error, "%s", e->msg);
	s->st.last_error_ms = wall_ms();
	pthread_mutex_unlock(&s->mu);
}

/* Waits for work (mu held). A backend with a database server is called when
 * the wait times out with no work: every second while it is unreachable, to
 * reconnect, so /healthz recovers without a write; every PD_STORE_PROBE_MS
 * while it is up and idle, to check the connection, so /healthz also turns
 * when the database goes away under an idle node. */
static void writer_wait(pd_store *s)
{
	struct timespec ts;

	if (!s->ops->reconnect) {
		pthread_cond_wait(&s->cv_work, &s->mu);
		return;
	}
	ts = pd_deadline(CLOCK_REALTIME, s->ops->healthy(s->be) ? PD_STORE_PROBE_MS : 1000);
	if (pthread_cond_timedwait(&s->cv_work, &s->mu, &ts) && !s->head && !s->stopping) {
		pd_err e = {0};

		pthread_mutex_unlock(&s->mu);
		if (s->ops->reconnect(s->be, &e))
			reconnect_failed(s, &e);
		pthread_mutex_lock(&s->mu);
	}
}

static void *writer_main(void *arg)
{
	pd_store *s = arg;

	for (;;) {
		struct wop *batch;
		size_t n;
		int fault = 0;

		pthread_mutex_lock(&s->mu);
		while (!s->head && !s->stopping)
			writer_wait(s);
		if (!s->head) {
			pthread_mutex_unlock(&s->mu);
			break; /* stopping and drained */
		}
		batch = take_batch(s, &n);
		if (s->inject_faults) {
			s->inject_faults--;
			fault = 1;
		}
		pthread_mutex_unlock(&s->mu);
		writer_batch(s, batch, n, fault);
	}
	return NULL;
}

/* The writer must not take process signals (SIGTERM, SIGHUP belong to the
 * server's event loop), so it is created with all of them blocked. */
static int start_writer(pd_store *s, pd_err *e)
{
	sigset_t all, old;
	int rc;

	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	rc = pthread_create(&s->writer, NULL, writer_main, s);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc)
		return pd_err_set(e, PD_E_NOMEM, "cannot start the store writer thread (%d)", rc);
	pthread_setname_np(s->writer, "pd-store-wr");
	s->writer_running = 1;
	return PD_OK;
}

/* ---- lifecycle -------------------------------------------------------------- */

/* "postgres:" / "postgresql:" at the start: 1 (with the length in *n) */
static int pg_scheme(const char *path, size_t *n)
{
	*n = !strncmp(path, "postgresql:", 11) ? 11 : !strncmp(path, "postgres:", 9) ? 9 : 0;
	return *n != 0;
}

/* A word of letters and underscores followed by '=' (spaces allowed before it). */
static int keyword_at(const char *p)
{
	size_t n = strspn(p, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_");

	return n && p[n + strspn(p + n, " \t")] == '=';
}

int pd_store_is_pg(const char *path)
{
	size_t n;

	if (pg_scheme(path, &n))
		return 1;
	if (*path == '/' || *path == '.')
		return 0;
	for (const char *p = path; *p; p++)
		if ((p == path || isspace((unsigned char)p[-1])) && keyword_at(p))
			return 1;
	return 0;
}

static const struct pd_store_backend *pick_backend(const char *path, pd_err *e)
{
	size_t n;

	if (!path || !*path) {
		pd_err_set(e, PD_E_ARG, "state store path is required");
		return NULL;
	}
	if (pg_scheme(path, &n) && strncmp(path + n, "//", 2)) {
		/* not echoed: it may hold a password */
		pd_err_set(e, PD_E_ARG, "database '%.*s...' is not a PostgreSQL URI: write "
			   "%.*s//[user@]host[:port]/dbname (or libpq key=value pairs)",
			   (int)n, path, (int)n, path);
		return NULL;
	}
	return pd_store_is_pg(path) ? &pd_store_pg_backend : &pd_store_sqlite_backend;
}

static unsigned env_faults(void)
{
	const char *v = getenv("PDELTA_STORE_FAIL_COMMITS");
	return v ? (unsigned)strtoul(v, NULL, 10) : 0;
}

int pd_store_open(const struct pd_store_opts *opts, pd_store **out, pd_err *err)
{
	pd_store *s;
	int rc;

	*out = NULL;
	if (!opts)
		return pd_err_set(err, PD_E_ARG, "state store options are required");
	s = calloc(1, sizeof *s);
	if (!s)
		return pd_err_set(err, PD_E_NOMEM, "out of memory opening the state store");
	s->opts = *opts;
	opts_fill_defaults(&s->opts);
	s->inject_faults = env_faults();
	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->cv_work, NULL);
	pthread_cond_init(&s->cv_done, NULL);
	atomic_init(&s->reads, 0);
	atomic_init(&s->read_errors, 0);
	atomic_init(&s->responses_corrupt, 0);

	s->ops = pick_backend(opts->path, err);
	rc = s->ops ? s->ops->open(&s->opts, &s->be, err) : PD_E_ARG;
	if (!rc) {
		s->max_row = s->ops->max_row(s->be);
		if (s->opts.max_row_bytes && s->opts.max_row_bytes < s->max_row)
			s->max_row = (size_t)s->opts.max_row_bytes;
		rc = start_writer(s, err);
	}
	if (rc) {
		pd_store_close(s);
		return rc;
	}
	s->opts.path = NULL; /* the caller's string; the backend kept its own copy */
	*out = s;
	return PD_OK;
}

int pd_store_probe(const struct pd_store_opts *opts, pd_err *err)
{
	struct pd_store_opts o = *opts;
	const struct pd_store_backend *ops = pick_backend(opts->path, err);

	if (!ops)
		return PD_E_ARG;
	opts_fill_defaults(&o);
	return ops->probe ? ops->probe(&o, err) : PD_OK;
}

void pd_store_close(pd_store *s)
{
	if (!s)
		return;
	if (s->writer_running) {
		pthread_mutex_lock(&s->mu);
		s->stopping = 1;
		pthread_cond_broadcast(&s->cv_work);
		pthread_mutex_unlock(&s->mu);
		pthread_join(s->writer, NULL);
	}
	if (s->be)
		s->ops->close(s->be);
	pthread_cond_destroy(&s->cv_done);
	pthread_cond_destroy(&s->cv_work);
	pthread_mutex_destroy(&s->mu);
	free(s);
}

/* ---- synchronous helpers ---------------------------------------------------- */

int pd_store_flush(pd_store *s)
{
	uint64_t target;

	if (s->writer_running && pthread_equal(pthread_self(), s->writer))
		return PD_E_ARG; /* would wait for itself */
	pthread_mutex_lock(&s->mu);
	target = s->enq_ticket;
	while (s->done_ticket < target)
		pthread_cond_wait(&s->cv_done, &s->mu);
	pthread_mutex_unlock(&s->mu);
	return PD_OK;
}

struct sync_wait {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int done;
	int rc;
};

static void sync_done(void *arg, int rc, uint64_t latency_ns)
{
	struct sync_wait *w = arg;

	pthread_mutex_lock(&w->mu);
	w->rc = rc;
	w->done = 1;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
}

/* Queues one expire chunk and waits for it. */
static int expire_chunk(pd_store *s, int64_t before_ms, uint64_t *n, pd_err *e)
{
	struct sync_wait sw = {.done = 0};
	pd_store_row none = {.tenant = "", .name = ""};
	struct wop *w;
	int rc = wop_make(s, &none, &w);

	if (rc)
		return pd_err_set(e, rc, "cannot queue expiry: %s", pd_code_name(rc));
	w->kind = WOP_EXPIRE;
	w->expire_before_ms = before_ms;
	w->expired_out = n;
	w->done = sync_done;
	w->arg = &sw;
	pthread_mutex_init(&sw.mu, NULL);
	pthread_cond_init(&sw.cv, NULL);
	rc = enqueue(s, w);
	if (rc) {
		pd_err_set(e, rc, "cannot queue expiry: %s", pd_code_name(rc));
		goto out;
	}
	pthread_mutex_lock(&sw.mu);
	while (!sw.done)
		pthread_cond_wait(&sw.cv, &sw.mu);
	pthread_mutex_unlock(&sw.mu);
	rc = sw.rc;
	if (rc)
		pd_err_set(e, rc, "expiry failed: %s", pd_code_name(rc));
out:
	pthread_cond_destroy(&sw.cv);
	pthread_mutex_destroy(&sw.mu);
	return rc;
}

int pd_store_expire(pd_store *s, int64_t older_than_ms, uint64_t *n_deleted, pd_err *err)
{
	uint64_t total = 0, n;
	int rc;

	if (s->writer_running && pthread_equal(pthread_self(), s->writer))
		return pd_err_set(err, PD_E_ARG, "pd_store_expire called from the writer thread");
	do {
		n = 0;
		rc = expire_chunk(s, older_than_ms, &n, err);
		total += n;
	} while (!rc && n == PD_STORE_EXPIRE_CHUNK);
	if (n_deleted)
		*n_deleted = total;
	return rc;
}

/* ---- the backends' read-connection pool -------------------------------------- */

struct pd_store_pool {
	pthread_mutex_t mu;
	pthread_cond_t cv; /* a connection came back or a slot freed */
	pd_store_conn *idle;
	size_t open, max; /* connections open (idle or borrowed), the cap */
	pd_store_conn_open_fn open_conn;
	pd_store_conn_close_fn close_conn;
	void *be;
};

pd_store_pool *pd_store_pool_new(size_t max, pd_store_conn_open_fn open,
				 pd_store_conn_close_fn close, void *be)
{
	pd_store_pool *p = calloc(1, sizeof *p);

	if (!p)
		return NULL;
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->cv, NULL);
	p->max = max;
	p->open_conn = open;
	p->close_conn = close;
	p->be = be;
	return p;
}

void pd_store_pool_free(pd_store_pool *p)
{
	if (!p)
		return;
	while (p->idle) {
		pd_store_conn *c = p->idle;
		p->idle = c->next;
		p->close_conn(c);
	}
	pthread_cond_destroy(&p->cv);
	pthread_mutex_destroy(&p->mu);
	free(p);
}

/* A slot is no longer held by an open connection. */
static void pool_slot_free(pd_store_pool *p)
{
	pthread_mutex_lock(&p->mu);
	p->open--;
	pthread_cond_signal(&p->cv);
	pthread_mutex_unlock(&p->mu);
}

int pd_store_pool_get(pd_store_pool *p, pd_store_conn **out, pd_err *e)
{
	int rc;

	*out = NULL;
	pthread_mutex_lock(&p->mu);
	while (!p->idle && p->open >= p->max)
		pthread_cond_wait(&p->cv, &p->mu);
	if (p->idle) {
		*out = p->idle;
		p->idle = p->idle->next;
		pthread_mutex_unlock(&p->mu);
		return PD_OK;
	}
	p->open++;
	pthread_mutex_unlock(&p->mu);

	rc = p->open_conn(p->be, out, e);
	if (rc) {
		*out = NULL;
		pool_slot_free(p);
	}
	return rc;
}

void pd_store_pool_put(pd_store_pool *p, pd_store_conn *c, int broken)
{
	if (broken) {
		p->close_conn(c);
		pool_slot_free(p);
		return;
	}
	pthread_mutex_lock(&p->mu);
	c->next = p->idle;
	p->idle = c;
	pthread_cond_signal(&p->cv);
	pthread_mutex_unlock(&p->mu);
}

/* ---- reads (straight to the backend) --------------------------------------- */

/* The kept response must be the bytes its put checksummed: a DUPLICATE
 * replays them to the client as valid. */
static int check_response(pd_store *s, const pd_store_row *r, pd_err *err)
{
	uint32_t crc;

	if (!r->has_delta_crc)
		return PD_OK; /* written before schema 2 */
	crc = pd_crc32(0, r->last_delta, r->last_delta_len);
	if (crc == r->last_delta_crc)
		return PD_OK;
	atomic_fetch_add_explicit(&s->responses_corrupt, 1, memory_order_relaxed);
	return pd_err_set(err, PD_E_STATE,
			  "stored response of %s/%s (seq %" PRIu64 ", %zu bytes) fails its "
			  "checksum (crc32 %08" PRIx32 ", stored %08" PRIx32 "): the row is corrupt",
			  r->tenant, r->name, r->last_seq, r->last_delta_len, crc, r->last_delta_crc);
}

static int get(pd_store *s, const char *tenant, const char *name, unsigned what,
	       pd_store_row *rec_out, pd_err *err)
{
	int rc;

	if (!tenant || !name || !rec_out)
		return pd_err_set(err, PD_E_ARG, "pd_store_get: tenant, name and record are required");
	atomic_fetch_add_explicit(&s->reads, 1, memory_order_relaxed);
	rc = s->ops->get(s->be, tenant, name, what, rec_out, err);
	if (!rc && (what & PD_STORE_GET_RESPONSE))
		rc = check_response(s, rec_out, err);
	if (rc && rc != PD_E_NOTFOUND && rc != PD_E_STATE) {
		atomic_fetch_add_explicit(&s->read_errors, 1, memory_order_relaxed);
		store_error(s, "read", err ? err : &(pd_err){rc, "(no message)"});
	}
	return rc;
}

int pd_store_get(pd_store *s, const char *tenant, const char *name, pd_store_row *rec_out,
		 pd_err *err)
{
	return get(s, tenant, name, PD_STORE_GET_STATE | PD_STORE_GET_RESPONSE, rec_out, err);
}

int pd_store_get_state(pd_store *s, const char *tenant, const char *name, pd_store_row *rec_out,
		       pd_err *err)
{
	return get(s, tenant, name, PD_STORE_GET_STATE, rec_out, err);
}

int pd_store_get_response(pd_store *s, const char *tenant, const char *name,
			  pd_store_row *rec_out, pd_err *err)
{
	return get(s, tenant, name, PD_STORE_GET_RESPONSE, rec_out, err);
}

int pd_store_list(pd_store *s, const char *tenant, const char *prefix, enum pd_store_sort sort,
		  size_t limit, pd_store_row_fn fn, void *arg, pd_err *err)
{
	if (!fn || (sort != PD_STORE_SORT_NAME && sort != PD_STORE_SORT_LAST_SEEN))
		return pd_err_set(err, PD_E_ARG, "pd_store_list: bad sort or no callback");
	return s->ops->list(s->be, tenant, prefix ? prefix : "", sort, limit, fn, arg, err);
}

int pd_store_count_streams(pd_store *s, const char *tenant, uint64_t *out, pd_err *err)
{
	return s->ops->count(s->be, tenant, out, err);
}

int pd_store_tenant_totals(pd_store *s, const char *tenant, pd_store_tenant_fn fn, void *arg,
			   pd_err *err)
{
	if (!fn)
		return pd_err_set(err, PD_E_ARG, "pd_store_tenant_totals: no callback");
	return s->ops->tenant_totals(s->be, tenant, fn, arg, err);
}

int pd_store_integrity_check(pd_store *s, pd_err *err)
{
	return s->ops->integrity_check(s->be, err);
}

/* ---- metrics and tests -------------------------------------------------------- */

void pd_store_stats(pd_store *s, struct pd_store_stats *out)
{
	pthread_mutex_lock(&s->mu);
	*out = s->st;
	out->queue_len = s->qlen;
	out->queue_bytes = s->qbytes;
	pthread_mutex_unlock(&s->mu);
	out->reads = atomic_load_explicit(&s->reads, memory_order_relaxed);
	out->read_errors = atomic_load_explicit(&s->read_errors, memory_order_relaxed);
	out->responses_corrupt = atomic_load_explicit(&s->responses_corrupt, memory_order_relaxed);
	out->unreachable = s->ops->healthy && !s->ops->healthy(s->be);
}

void pd_store_inject_fault(pd_store *s, unsigned n)
{
	pthread_mutex_lock(&s->mu);
	s->inject_faults = n;
	pthread_mutex_unlock(&s->mu);
}
