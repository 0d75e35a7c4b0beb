/*
 * pd_service: the delta service of pdeltad (see pd_service.h for the
 * contract). This file holds the lifecycle, the worker pool, the delta job
 * path (verify upload -> load stream -> sequence rules -> engine -> put_if ->
 * completion), the job pool, the queued stream ops and tasks that the admin
 * commands (pd_admin.c) use, and the TTL janitor; the stream table and
 * its cache are pd_table.
 *
 * Flow of a delta job: pd_job_begin (admission) -> pd_job_data (capped
 * buffer) -> pd_job_submit (appended to its stream's FIFO) -> a worker takes
 * the stream (busy) and runs the job -> pd_store_put_if_async -> the store
 * writer's completion swaps the new state into the cache, calls done, and
 * releases the stream (its next op becomes runnable). Errors before the put
 * complete the job on the worker. A put_if version conflict (the row changed
 * under us: TTL expiry, an unknown-outcome commit, another node) drops the
 * cached row and runs the job again from the store, at most
 * PD_SVC_CAS_RETRIES times.
 *
 * Threads: N workers, one janitor, plus the store's writer thread (which
 * runs put completions). Callers' threads only queue and signal.
 *
 * Lock order: svc->mu is the only lock of the service; it is a leaf with
 * respect to the store (never held while calling pd_store_*, whose internal
 * locks may be held while it calls our completions, which then take mu) and
 * never held while calling a caller's done callback.
 *
 * mu guards every shared field below and every call into the table, except
 * the fields of a *busy* stream's cached row (state, sequence, hash, ...),
 * which only the stream's current owner (the worker that took its op, then
 * the store completion of that op) touches. busy is set and cleared under
 * mu, which orders the owners.
 */
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "pd_clock.h"
#include "pd_crc.h"
#include "pd_gz.h"
#include "pd_list.h"
#include "pd_log.h"
#include "pd_seq.h"
#include "pd_service.h"
#include "pd_settings.h"
#include "pd_table.h"
#include "pdelta_proto.h"

#define PD_SVC_MAX_OVERRIDES 64
#define PD_SVC_STATE_POOL_PER_WORKER 2
#define PD_SVC_JOB_POOL_MAX 256
#define PD_SVC_KEEP_BUF_MAX (8u << 20) /* larger job buffers are freed, not pooled */
#define PD_SVC_CAS_RETRIES 3           /* recomputations after a put_if conflict */

/* What a queued op does. Stream ops run in their stream's FIFO; global ops in
 * the service's admin FIFO. */
enum pd_op_kind {
	PD_OP_DELTA = 0, /* stream: a delta request */
	PD_OP_STREAM,    /* stream: pd_service_stream_op (reset, delete) */
	PD_OP_TASK,      /* global: pd_service_task */
	PD_OP_FAIL,      /* global: complete a job with its preset error on a worker */
};

struct pd_job {
	pd_service *svc;
	struct pd_job *next; /* queue link */
	int kind;            /* enum pd_op_kind */
	pd_stream *st;

	/* Owned copies of the strings: tenant, stream, override names. */
	char *strs;
	size_t strs_alloc;
	const char *tenant, *stream;
	uint64_t seq, incarnation;
	int64_t producer_start_ns;
	int first_policy;
	int has_after, state_lost; /* PROTOCOL.md §8: client's last answered seq given / above ours */
	uint64_t after_seq;
	pd_type_override ovr[PD_SVC_MAX_OVERRIDES];
	size_t novr;

	/* Upload. */
	pd_buf in;
	uint64_t qbytes; /* bytes of in counted in svc->queued_bytes */
	int data_rc;
	pd_err data_err;
	uint8_t hash[16];    /* as the client sent it */
	int hash_kind;       /* enum pd_content_hash of hash */
	uint8_t content[16]; /* our CRC-128 of in: the stream's last hash once applied */
	uint64_t total_len;
	int submitted;
	atomic_int cancelled;
	pd_job_done_fn done;
	void *arg;

	/* Output and result. */
	pd_buf out;
	uint32_t crc;
	pd_job_result res;
	pd_state *next_state; /* the new state while its commit is in flight */
	int retries;
	int64_t now_ms;
	uint64_t t_submit, t_start, t_put;
	int new_stream; /* holds a tenant `pending` slot */
	pd_req req;     /* as the engine ran it (for shadow verification) */
	uint64_t prev_seq, prev_incarnation; /* the stream's before this job */
	char reset_why[96];

	/* Stream ops (stream: the name) and tasks. */
	int op; /* enum pd_stream_op */
	pd_stream_op_done_fn sdone;
	pd_task_fn task;
	void *targ;
};

typedef struct pd_worker {
	pd_service *svc;
	pthread_t tid;
	int started;
	pd_engine *eng;
	pd_state *next;  /* scratch for the engine's next state */
	pd_state *empty; /* never valid: "no previous state" */
	pd_buf ser;      /* serialized state */
	pd_store_row rec;
	EVP_MD_CTX *md_ctx;
} pd_worker;

struct pd_service {
	pd_service_opts o;
	pd_store *store;
	pd_shadow *shadow; /* NULL: shadow_rate 0 */
	EVP_MD *sha256;
	int64_t start_ms;

	pthread_mutex_t mu;
	pthread_cond_t work_cv; /* workers: runnable stream or global op */
	pthread_cond_t idle_cv; /* free: outstanding reached 0 */
	pthread_cond_t jan_cv;  /* janitor: tick or quit */
	int stopping, quit;

	pd_worker *workers;
	unsigned nworkers;
	pthread_t janitor;
	int janitor_started;

	/* Stream table and run queues. */
	pd_table *table;
	pd_stream *run_head, *run_tail;
	struct pd_job *gq_head, *gq_tail; /* global ops */

	/* Job pool (reused objects: no malloc per request in steady state). */
	struct pd_job *jpool;
	size_t njpool;

	/* Accounting. */
	uint64_t live_jobs;   /* pd_job objects handed out and not put back */
	int dead;             /* pd_service_free ran; the last job put frees the rest */
	uint64_t admitted;    /* begun, not completed */
	uint64_t queued_bytes; /* upload bytes of admitted jobs (max_queued_bytes) */
	uint64_t ewma_job_ns;  /* recent worker time per job, for the retry hint */
	uint64_t outstanding; /* submitted ops (and admin requests) not finished */
	pd_service_stats st;  /* counters (store part filled on read) */

	pd_stats_json_fn stats_hook;
	void *stats_hook_arg;
};

/* Set on the service's own threads: stream ops they issue (a prefix delete
 * fanning out, a chained op) belong to an admitted request. */
static _Thread_local int on_service_thread;

enum { SEQ_APPLY = 0, SEQ_DUPLICATE = -1 };

static const double lat_bounds_ms[10] = {1, 2, 5, 10, 20, 50, 100, 200, 500, 1000};

static int64_t now_ms(void) { return pd_wall_ms(); }

void pd_service_opts_init(pd_service_opts *o)
{
	memset(o, 0, sizeof *o);
	o->cache_bytes = (size_t)pd_setting_default(PD_SET_CACHE_BYTES);
	o->stream_ttl_ms = (int64_t)pd_setting_default(PD_SET_STREAM_TTL);
	o->max_streams_per_tenant = pd_setting_default(PD_SET_MAX_STREAMS_PER_TENANT);
	o->max_queued_jobs = (size_t)pd_setting_default(PD_SET_MAX_QUEUED_JOBS);
	o->max_queued_bytes = pd_setting_default(PD_SET_MAX_QUEUED_BYTES);
	o->chunk_bytes = (size_t)pd_setting_default(PD_SET_CHUNK_BYTES);
	o->gzip_level = (int)pd_setting_default(PD_SET_GZIP_LEVEL);
	o->worker_keep_bytes = (size_t)pd_setting_default(PD_SET_WORKER_KEEP_BYTES);
	o->janitor_interval_ms = 5000;
	pd_limits_default(&o->limits);
	pd_store_opts_init(&o->store);
	o->shadow.rate_ppm = (uint32_t)pd_setting_default(PD_SET_SHADOW_RATE);
	o->shadow.max_bytes = pd_setting_default(PD_SET_SHADOW_MAX_BYTES);
	o->shadow.max_upload = pd_setting_default(PD_SET_SHADOW_MAX_UPLOAD);
	o->shadow.max_queue = (size_t)pd_setting_default(PD_SET_SHADOW_MAX_QUEUE);
	o->shadow.dir_max_files = pd_setting_default(PD_SET_SHADOW_DIR_MAX_FILES);
	o->shadow.dir_max_bytes = pd_setting_default(PD_SET_SHADOW_DIR_MAX_BYTES);
	o->shadow.fallback = (uint32_t)pd_setting_default(PD_SET_SHADOW_FALLBACK);
}

/* ---- job pool ------------------------------------------------------------------- */

static void final_free(pd_service *s);

static pd_job *job_get(pd_service *s)
{
	pd_job *j;
	pd_buf in, out;
	char *strs;
	size_t strs_alloc;

	pthread_mutex_lock(&s->mu);
	if ((j = s->jpool)) {
		s->jpool = j->next;
		s->njpool--;
	}
	s->live_jobs++;
	pthread_mutex_unlock(&s->mu);
	if (!j && !(j = calloc(1, sizeof *j))) {
		pthread_mutex_lock(&s->mu);
		s->live_jobs--;
		pthread_mutex_unlock(&s->mu);
		return NULL;
	}
	if (!j->svc)
		return j; /* new */
	/* Keep the buffers, forget everything else. */
	in = j->in;
	out = j->out;
	strs = j->strs;
	strs_alloc = j->strs_alloc;
	memset(j, 0, sizeof *j);
	j->in = in;
	j->out = out;
	j->strs = strs;
	j->strs_alloc = strs_alloc;
	return j;
}

static void trim_buf(pd_buf *b)
{
	if (b->alloc > PD_SVC_KEEP_BUF_MAX)
		pd_buf_free(b);
	pd_buf_reset(b);
}

static void job_put(pd_service *s, pd_job *j)
{
	int last;

	pd_state_free(j->next_state); /* only set if a path forgot it */
	j->next_state = NULL;
	trim_buf(&j->in);
	trim_buf(&j->out);
	pthread_mutex_lock(&s->mu);
	if (!s->dead && s->njpool < PD_SVC_JOB_POOL_MAX) {
		j->next = s->jpool;
		s->jpool = j;
		s->njpool++;
		j = NULL;
	}
	last = --s->live_jobs == 0 && s->dead;
	pthread_mutex_unlock(&s->mu);
	if (last)
		final_free(s);
	if (j) {
		pd_buf_free(&j->in);
		pd_buf_free(&j->out);
		free(j->strs);
		free(j);
	}
}

/* ---- queues --------------------------------------------------------------------- */

static void push_run(pd_service *s, pd_stream *st)
{
	if (st->busy || st->in_runq || !st->qhead)
		return;
	st->in_runq = 1;
	PD_QUEUE_PUSH(s->run_head, s->run_tail, st, run_next);
	pthread_cond_signal(&s->work_cv);
}


static void push_global(pd_service *s, pd_job *j)
{
	PD_QUEUE_PUSH(s->gq_head, s->gq_tail, j, next);
	pthread_cond_signal(&s->work_cv);
}

static void push_stream(pd_service *s, pd_stream *st, pd_job *j)
{
	j->st = st;
	PD_QUEUE_PUSH(st->qhead, st->qtail, j, next);
	s->st.jobs_queued++;
	push_run(s, st);
}

static void push_stream_front(pd_service *s, pd_stream *st, pd_job *j)
{
	PD_QUEUE_PUSH_FRONT(st->qhead, st->qtail, j, next);
	s->st.jobs_queued++;
}

static void op_done_locked(pd_service *s)
{
	if (--s->outstanding == 0)
		pthread_cond_broadcast(&s->idle_cv);
}

static void op_finished(pd_service *s)
{
	pthread_mutex_lock(&s->mu);
	op_done_locked(s);
	pthread_mutex_unlock(&s->mu);
}

static void release_stream(pd_service *s, pd_stream *st)
{
	pd_stream *victims;

	pthread_mutex_lock(&s->mu);
	st->busy = 0;
	push_run(s, st);
	victims = pd_table_evict(s->table);
	op_done_locked(s);
	pthread_mutex_unlock(&s->mu);
	pd_table_free_streams(victims);
}

/* ---- job API -------------------------------------------------------------------- */

static int job_strings(pd_job *j, const char *const *in, const char **out, size_t n, pd_err *e)
{
	size_t total = 0, off = 0;

	for (size_t i = 0; i < n; i++)
		total += in[i] ? strlen(in[i]) + 1 : 0;
	if (pd_array_grow((void **)&j->strs, &j->strs_alloc, total, 1, NULL))
		return pd_err_set(e, PD_E_NOMEM, "out of memory for request strings");
	for (size_t i = 0; i < n; i++) {
		size_t l;
		out[i] = NULL;
		if (!in[i])
			continue;
		l = strlen(in[i]) + 1;
		memcpy(j->strs + off, in[i], l);
		out[i] = j->strs + off;
		off += l;
	}
	return PD_OK;
}

static int check_params(const pd_job_params *p, pd_err *e)
{
	if (!p->tenant || !*p->tenant || !p->stream || !*p->stream)
		return pd_err_set(e, PD_E_ARG, "tenant and stream are required");
	if (strlen(p->tenant) > 1024 || strlen(p->stream) > 1024)
		return pd_err_set(e, PD_E_ARG, "tenant or stream name too long");
	if (p->noverrides > PD_SVC_MAX_OVERRIDES)
		return pd_err_set(e, PD_E_ARG, "more than %d overrides", PD_SVC_MAX_OVERRIDES);
	for (size_t i = 0; i < p->noverrides; i++)
		if (!p->overrides[i].name)
			return pd_err_set(e, PD_E_ARG, "override without a name");
	return PD_OK;
}

static int admit(pd_service *s, pd_err *e)
{
	int rc = PD_OK;

	pthread_mutex_lock(&s->mu);
	if (s->stopping) {
		rc = pd_err_set(e, PD_E_BUSY, "service shutting down");
	} else if (s->admitted >= s->o.max_queued_jobs) {
		s->st.busy_rejects++;
		rc = pd_err_set(e, PD_E_BUSY, "too many queued jobs (%zu)", s->o.max_queued_jobs);
	} else if (s->queued_bytes >= s->o.max_queued_bytes / 4 * 3) {
		/* Admits below 3/4 of the budget: the rest is headroom for uploads
		 * already admitted, which pd_job_data refuses (wasting them) only
		 * at the full budget. */
		s->st.bytes_busy_rejects++;
		rc = pd_err_set(e, PD_E_BUSY, "too many queued upload bytes (max_queued_bytes %llu)",
				(unsigned long long)s->o.max_queued_bytes);
	} else {
		s->admitted++;
	}
	pthread_mutex_unlock(&s->mu);
	return rc;
}

/* The job leaves the admitted set: its slot and its upload bytes. Holds mu. */
static void unadmit_locked(pd_service *s, pd_job *j)
{
	s->admitted--;
	s->queued_bytes -= j->qbytes;
	j->qbytes = 0;
}

static void unadmit(pd_service *s, pd_job *j)
{
	pthread_mutex_lock(&s->mu);
	unadmit_locked(s, j);
	pthread_mutex_unlock(&s->mu);
}

/* Reserves n upload bytes under max_queued_bytes. A job that is the only
 * holder of bytes may always go on: a budget below one upload still lets
 * uploads finish, one at a time. */
static int reserve_bytes(pd_service *s, pd_job *j, size_t n, pd_err *e)
{
	int rc = PD_OK;

	pthread_mutex_lock(&s->mu);
	if (s->queued_bytes + n > s->o.max_queued_bytes && s->queued_bytes > j->qbytes) {
		s->st.bytes_busy_rejects++;
		rc = pd_err_set(e, PD_E_BUSY, "too many queued upload bytes (max_queued_bytes %llu)",
				(unsigned long long)s->o.max_queued_bytes);
	} else {
		s->queued_bytes += n;
		j->qbytes += n;
	}
	pthread_mutex_unlock(&s->mu);
	return rc;
}

static int copy_params(pd_job *j, const pd_job_params *p, pd_err *e)
{
	const char *in[2 + PD_SVC_MAX_OVERRIDES], *out[2 + PD_SVC_MAX_OVERRIDES];
	int rc;

	in[0] = p->tenant;
	in[1] = p->stream;
	for (size_t i = 0; i < p->noverrides; i++)
		in[2 + i] = p->overrides[i].name;
	if ((rc = job_strings(j, in, out, 2 + p->noverrides, e)))
		return rc;
	j->tenant = out[0];
	j->stream = out[1];
	for (size_t i = 0; i < p->noverrides; i++) {
		j->ovr[i].name = out[2 + i];
		j->ovr[i].policy = p->overrides[i].policy;
	}
	j->novr = p->noverrides;
	j->seq = p->seq;
	j->has_after = p->has_after;
	j->after_seq = p->after_seq;
	j->incarnation = p->incarnation;
	j->producer_start_ns = p->producer_start_ns;
	j->first_policy = p->first_policy;
	j->hash_kind = p->hash_kind;
	return PD_OK;
}

static size_t out_cap(const pd_limits *l)
{
	uint64_t c = l->max_inflated > (SIZE_MAX >> 2) ? (SIZE_MAX >> 1) : l->max_inflated * 2;
	return (size_t)c + ((size_t)1 << 20);
}

int pd_job_begin(pd_service *s, const pd_job_params *p, pd_job **out, pd_err *e)
{
	pd_job *j;
	int rc;

	*out = NULL;
	if ((rc = check_params(p, e)) || (rc = admit(s, e)))
		return rc;
	if (!(j = job_get(s))) {
		pthread_mutex_lock(&s->mu);
		s->admitted--;
		pthread_mutex_unlock(&s->mu);
		return pd_err_set(e, PD_E_NOMEM, "out of memory for a job");
	}
	j->svc = s;
	j->kind = PD_OP_DELTA;
	j->in.cap = s->o.limits.max_input ? (size_t)s->o.limits.max_input : SIZE_MAX;
	j->out.cap = out_cap(&s->o.limits);
	if ((rc = copy_params(j, p, e))) {
		unadmit(s, j);
		job_put(s, j);
		return rc;
	}
	*out = j;
	return PD_OK;
}

int pd_job_data(pd_job *j, const void *p, size_t n, pd_err *e)
{
	pd_service *s = j->svc;
	int rc;

	if (j->data_rc)
		return pd_err_set(e, j->data_rc, "%s", j->data_err.msg);
	if ((rc = reserve_bytes(s, j, n, &j->data_err))) {
		j->data_rc = rc;
		return pd_err_set(e, rc, "%s", j->data_err.msg);
	}
	if (!(rc = pd_buf_append(&j->in, p, n, &j->data_err)))
		return PD_OK;
	if (rc == PD_E_LIMIT) {
		pd_err_set(&j->data_err, rc, "upload exceeds max_input (%llu bytes)",
			   (unsigned long long)s->o.limits.max_input);
		pthread_mutex_lock(&s->mu);
		s->st.upload_limit_hits++;
		pthread_mutex_unlock(&s->mu);
	}
	j->data_rc = rc;
	return pd_err_set(e, rc, "%s", j->data_err.msg);
}

void pd_job_submit(pd_job *j, const uint8_t hash[16], uint64_t total_len, pd_job_done_fn done,
		   void *arg)
{
	pd_service *s = j->svc;
	pd_stream *st;

	memcpy(j->hash, hash, sizeof j->hash);
	j->total_len = total_len;
	j->done = done;
	j->arg = arg;
	j->submitted = 1;
	j->t_submit = pd_now_ns();
	pthread_mutex_lock(&s->mu);
	if (s->quit) {
		/* The workers are gone (pd_service_free): fail here and now. */
		pthread_mutex_unlock(&s->mu);
		j->res.rc = pd_err_set(&j->res.err, PD_E_BUSY, "service shut down");
		j->res.detail = PD_DETAIL_SHUTTING_DOWN;
		j->res.seq = j->seq;
		unadmit(s, j);
		done(arg, j, &j->res);
		return;
	}
	s->outstanding++;
	s->st.bytes_in += j->in.len;
	st = pd_table_stream(s->table, j->tenant, j->stream, 1);
	if (st) {
		pd_table_touch(s->table, st);
		push_stream(s, st, j);
	} else {
		/* Completed on a worker: callbacks never run on the caller's thread. */
		j->kind = PD_OP_FAIL;
		j->res.rc = pd_err_set(&j->res.err, PD_E_NOMEM, "out of memory for the stream");
		push_global(s, j);
	}
	pthread_mutex_unlock(&s->mu);
}

void pd_job_abort(pd_job *j)
{
	if (!j)
		return;
	unadmit(j->svc, j);
	job_put(j->svc, j);
}

void pd_job_cancel(pd_job *j) { atomic_store(&j->cancelled, 1); }

void pd_job_free(pd_job *j)
{
	if (j)
		job_put(j->svc, j);
}

/* ---- job completion ------------------------------------------------------------ */

static int job_fail(pd_job *j, int rc, int detail, uint64_t value)
{
	j->res.rc = rc;
	j->res.err.code = rc;
	j->res.detail = detail;
	j->res.detail_value = value;
	return rc;
}

static void hist_add(uint64_t *le, uint64_t ns)
{
	for (size_t i = 0; i < 10; i++)
		if ((double)ns <= lat_bounds_ms[i] * 1e6)
			le[i]++;
	le[10]++;
}

static void count_result(pd_service *s, const pd_job *j)
{
	const pd_job_result *r = &j->res;
	pd_service_stats *st = &s->st;
	uint64_t total = pd_now_ns() - j->t_submit;

	if (r->rc) {
		st->errors_by_code[r->rc > 0 && r->rc < PD_E__COUNT ? r->rc : PD_E_INTERNAL]++;
		return;
	}
	st->requests_by_status[r->status]++;
	if (r->status == PD_STATUS_BASELINE && r->reason >= 0 && r->reason < 6)
		st->baselines_by_reason[r->reason]++;
	st->bytes_out += r->out_len;
	hist_add(st->lat_total, total);
	hist_add(st->lat_engine, r->ns_engine);
	hist_add(st->lat_commit, r->ns_commit);
	st->lat_total_sum_ns += total;
	st->lat_engine_sum_ns += r->ns_engine;
	st->lat_commit_sum_ns += r->ns_commit;
	st->lat_count++;
	/* Worker time only: the store commit runs on its own thread. */
	s->ewma_job_ns = s->ewma_job_ns ? s->ewma_job_ns - s->ewma_job_ns / 8 + r->ns_engine / 8
					: r->ns_engine;
}

static int job_sink(void *ctx, const uint8_t *p, size_t n);

static void shadow_case(const pd_job *j, pd_shadow_case *c)
{
	memset(c, 0, sizeof *c);
	c->tenant = j->tenant;
	c->stream = j->stream;
	c->seq = j->seq;
	c->prev_seq = j->prev_seq;
	c->prev_incarnation = j->prev_incarnation;
	c->req = &j->req;
	c->status = j->res.engine.status;
	c->reason = j->res.engine.reason;
	c->in = j->in.data;
	c->in_len = j->in.len;
	c->out = j->out.data;
	c->out_len = j->out.len;
}

/* An applied delta of a watched stream goes to the shadow thread (copies:
 * the answer is not held up by the check). */
static void shadow_offer(pd_service *s, const pd_job *j)
{
	pd_shadow_case c;

	if (j->res.status == PD_STATUS_DUPLICATE || j->state_lost)
		return;
	shadow_case(j, &c);
	pd_shadow_offer(s->shadow, &c);
}

/* A stream in fallback after a mismatch: its answer comes from the slow path
 * (the engine ran all the same: its next state is the one stored). */
static void shadow_fallback(pd_worker *w, pd_job *j)
{
	pd_shadow_case c;
	pd_buf alt;
	int status, reason;

	if (j->state_lost)
		return;
	shadow_case(j, &c);
	pd_buf_init(&alt, j->out.cap);
	if (pd_shadow_fallback(w->svc->shadow, &c, j->req.gzip_level, &alt, &status, &reason)) {
		pd_buf_reset(&j->out);
		j->crc = 0;
		if (!job_sink(j, alt.data, alt.len)) {
			j->res.status = j->res.orig_status = status;
			j->res.reason = reason;
		}
	}
	pd_buf_free(&alt);
}

/* The job gives back what it holds of the table: its next state (to the
 * state pool) and, for a new stream, its tenant's pending slot. Holds mu. */
static void job_return_locked(pd_service *s, pd_job *j, pd_stream *st)
{
	pd_table_state_put(s->table, j->next_state);
	j->next_state = NULL;
	if (j->new_stream)
		st->ten->pending--;
	j->new_stream = 0;
}

/* Completes a delta job (done is called) and releases its stream. */
static void job_finish(pd_job *j)
{
	pd_service *s = j->svc;
	pd_stream *st = j->kind == PD_OP_FAIL ? NULL : j->st;
	pd_job_result *r = &j->res;

	r->seq = j->seq;
	if (r->rc) {
		r->out = NULL;
		r->out_len = 0;
		r->out_crc32 = 0;
		if (!r->err.msg[0])
			pd_err_set(&r->err, r->rc, "%s", pd_code_name(r->rc));
	} else {
		r->out = j->out.data;
		r->out_len = j->out.len;
		r->out_crc32 = j->crc;
		r->err.code = PD_OK;
		r->err.msg[0] = 0;
	}
	if (!r->rc && st && s->shadow)
		shadow_offer(s, j);
	pthread_mutex_lock(&s->mu);
	job_return_locked(s, j, st);
	count_result(s, j);
	if (r->rc == PD_E_TIMEOUT && r->detail == PD_DETAIL_CANCELLED)
		s->st.jobs_cancelled++;
	unadmit_locked(s, j);
	if (st)
		s->st.jobs_running--; /* counters are final when done runs */
	pthread_mutex_unlock(&s->mu);
	j->done(j->arg, j, r); /* j belongs to the caller from here on */
	if (st)
		release_stream(s, st);
	else
		op_finished(s);
}

/* The put_if found another row version: forget the cached row and run the
 * job again from what the store holds. */
static void job_requeue(pd_job *j)
{
	pd_service *s = j->svc;
	pd_stream *st = j->st;
	pd_stream *victims;

	pthread_mutex_lock(&s->mu);
	job_return_locked(s, j, st);
	j->state_lost = 0; /* decided again against the reloaded row */
	j->retries++;
	s->st.store_conflicts++;
	pd_table_unload(s->table, st);
	push_stream_front(s, st, j);
	st->busy = 0;
	s->st.jobs_running--;
	push_run(s, st);
	victims = pd_table_evict(s->table);
	pthread_mutex_unlock(&s->mu);
	pd_table_free_streams(victims);
}

/* ---- delta job steps (worker, stream busy) ------------------------------------ */

static int sha256_16(pd_worker *w, const pd_buf *in, uint8_t out[16])
{
	uint8_t md[EVP_MAX_MD_SIZE];
	unsigned mdlen = 0;

	if (!EVP_DigestInit_ex(w->md_ctx, w->svc->sha256, NULL) ||
	    !EVP_DigestUpdate(w->md_ctx, in->data ? in->data : md, in->len) ||
	    !EVP_DigestFinal_ex(w->md_ctx, md, &mdlen) || mdlen < 16)
		return -1;
	memcpy(out, md, 16);
	return 0;
}

/* Length and content hash: the client's claim against the bytes. SHA-256 is
 * computed only for protocol-1 claims (~1.4 ms for a 300 KB upload here);
 * the CRC-128 always (~0.07 ms). */
static int verify_upload(pd_worker *w, pd_job *j)
{
	uint8_t md[16];

	if (j->total_len != j->in.len) {
		pd_err_set(&j->res.err, PD_E_MALFORMED, "upload length %zu, DATA_END says %llu",
			   j->in.len, (unsigned long long)j->total_len);
		return job_fail(j, PD_E_MALFORMED, PD_DETAIL_LENGTH_MISMATCH, j->in.len);
	}
	pd_crc128_of(j->in.data ? j->in.data : md, j->in.len, j->content);
	if (j->hash_kind == PD_CHASH_CRC128) {
		memcpy(md, j->content, sizeof md);
	} else if (sha256_16(w, &j->in, md)) {
		pd_err_set(&j->res.err, PD_E_INTERNAL, "SHA-256 failed");
		return job_fail(j, PD_E_INTERNAL, PD_DETAIL_NONE, 0);
	}
	if (memcmp(md, j->hash, 16)) {
		pd_err_set(&j->res.err, PD_E_MALFORMED, "upload content hash mismatch");
		return job_fail(j, PD_E_MALFORMED, PD_DETAIL_HASH_MISMATCH, 0);
	}
	return PD_OK;
}

static int reason_from_str(const char *r)
{
	static const char *const names[] = {"", "first", "reset", "evicted", "moved", "state-lost"};

	for (int i = 1; r && i < 6; i++)
		if (!strcmp(r, names[i]))
			return i;
	return PD_REASON_NONE;
}

static const char *reason_str(int reason)
{
	return reason > PD_REASON_NONE && reason <= PD_REASON_STATE_LOST ? pd_reason_name(reason) : "";
}

static void set_absent(pd_stream *st)
{
	st->exists = 0;
	st->version = st->last_seq = st->incarnation = st->deltas_served = st->resets = 0;
	st->last_status = st->last_reason = 0;
	st->last_samples_in = st->last_samples_out = 0;
	st->created_ms = st->last_seen_ms = st->last_time_nanos = 0;
	st->last_reset_reason[0] = 0;
}

/* Copies the row's metadata into the (busy) stream. The kept response stays
 * in the store: only a retry (DUPLICATE) reads it, so the cache holds states,
 * not ~200 KB of response per medium stream. */
static void fill_from_rec(pd_stream *st, const pd_store_row *r)
{
	st->exists = 1;
	st->version = r->version;
	st->last_seq = r->last_seq;
	memcpy(st->last_hash, r->last_hash, sizeof st->last_hash);
	st->incarnation = r->incarnation;
	st->deltas_served = r->deltas_served;
	st->resets = r->resets;
	st->last_status = r->last_status;
	st->last_reason = reason_from_str(r->last_reason);
	st->last_samples_in = r->last_samples_in;
	st->last_samples_out = r->last_samples_out;
	st->created_ms = r->created_ms;
	st->last_seen_ms = r->last_seen_ms;
	st->last_time_nanos = r->last_time_nanos;
	snprintf(st->last_reset_reason, sizeof st->last_reset_reason, "%s",
		 r->last_reset_reason ? r->last_reset_reason : "");
}

/* A state blob that does not deserialize (its CRC, its version) is logged,
 * counted and treated as lost: the next profile is a BASELINE `evicted`
 * (PROTOCOL.md §8), better than a stream that fails forever. */
static void state_corrupt(pd_service *s, pd_stream *st, pd_state *ps, const pd_err *why)
{
	pd_log(PD_LOG_ERROR, "stream %s/%s: stored state is corrupt (%s); the next profile is a "
	       "BASELINE (evicted, state-corrupt)", st->tenant, st->name, why->msg);
	pd_state_clear(ps);
	st->state_corrupt = 1;
	pthread_mutex_lock(&s->mu);
	s->st.states_corrupt++;
	pthread_mutex_unlock(&s->mu);
}

/* Reads the stream's row (state, metadata; not the kept response). */
static int load_stream(pd_worker *w, pd_stream *st, pd_err *e)
{
	pd_service *s = w->svc;
	pd_state *ps = NULL;
	pd_err why = {0};
	int rc = pd_store_get_state(s->store, st->tenant, st->name, &w->rec, e);

	st->state_corrupt = 0;
	if (rc == PD_E_NOTFOUND) {
		set_absent(st);
	} else if (rc) {
		return rc;
	} else if (fill_from_rec(st, &w->rec), w->rec.state_len) {
		pthread_mutex_lock(&s->mu);
		ps = pd_table_state_get(s->table);
		pthread_mutex_unlock(&s->mu);
		if (!ps)
			return pd_err_set(e, PD_E_NOMEM, "out of memory loading stream");
		if (pd_state_deserialize(ps, w->rec.state, w->rec.state_len, &why))
			state_corrupt(s, st, ps, &why);
	}
	pthread_mutex_lock(&s->mu);
	pd_table_state_put(s->table, st->state);
	st->state = ps;
	st->loaded = 1;
	pd_table_account(s->table, st);
	pthread_mutex_unlock(&s->mu);
	return PD_OK;
}

static int has_state(const pd_stream *st) { return st->state && pd_state_valid(st->state); }

/* Is this the content of the last applied request? Rows written before the
 * CRC-128 (pdeltad of protocol 1) hold the client's SHA-256 prefix instead:
 * checked only when the CRC differs at the same seq, i.e. rarely. */
struct content_probe {
	pd_worker *w;
	const pd_stream *st;
	const pd_job *j;
};

static int same_content(void *arg)
{
	const struct content_probe *c = arg;
	uint8_t md[16];

	if (!memcmp(c->j->content, c->st->last_hash, sizeof c->j->content))
		return 1;
	return !sha256_16(c->w, &c->j->in, md) && !memcmp(md, c->st->last_hash, sizeof md);
}

/* PROTOCOL.md §8 (pd_seq): SEQ_APPLY, SEQ_DUPLICATE or a PD_E_SEQ error. */
static int check_sequence(pd_worker *w, pd_stream *st, pd_job *j)
{
	pd_seq_last last = {st->exists && has_state(st), st->incarnation, st->last_seq};
	pd_seq_req req = {j->incarnation, j->seq, j->has_after != 0, j->after_seq};
	struct content_probe probe = {w, st, j};

	switch (pd_seq_decide(&last, &req, same_content, &probe)) {
	case PD_SEQ_APPLY:
		return SEQ_APPLY;
	case PD_SEQ_APPLY_STATE_LOST:
		j->state_lost = 1;
		return SEQ_APPLY;
	case PD_SEQ_DUPLICATE:
		return SEQ_DUPLICATE;
	case PD_SEQ_CONFLICT:
		pd_err_set(&j->res.err, PD_E_SEQ, "seq %llu was already applied with other content",
			   (unsigned long long)j->seq);
		return job_fail(j, PD_E_SEQ, PD_DETAIL_SEQ_CONFLICT, st->last_seq);
	default:
		pd_err_set(&j->res.err, PD_E_SEQ, "seq %llu is older than the last applied %llu",
			   (unsigned long long)j->seq, (unsigned long long)st->last_seq);
		return job_fail(j, PD_E_SEQ, PD_DETAIL_SEQ_STALE, st->last_seq);
	}
}

#define REPLAY_REQUEUED 1

/* The kept response failed its checksum (pd_store_get_response): never
 * replayed, a non-retryable `state` error instead; later seqs are unaffected. */
static int response_corrupt(pd_service *s, pd_job *j, const pd_stream *st)
{
	pd_log(PD_LOG_ERROR, "%s; retry of seq %llu refused", j->res.err.msg,
	       (unsigned long long)j->seq);
	pthread_mutex_lock(&s->mu);
	s->st.responses_corrupt++;
	pthread_mutex_unlock(&s->mu);
	pd_err_set(&j->res.err, PD_E_STATE,
		   "the kept response of seq %llu is corrupt on the server and cannot be "
		   "replayed; later sequences are not affected",
		   (unsigned long long)st->last_seq);
	return job_fail(j, PD_E_STATE, PD_DETAIL_NONE, 0);
}

/* The stored response of the last applied request, read from its row: the
 * stream is busy with this job, so the row is normally the one its last
 * commit wrote. When it is not (another service on the same file moved the
 * stream on, an admin change or TTL expiry reached the disk behind the
 * cache), the cached stream is dropped and the job runs again from the row,
 * as after a put_if conflict: REPLAY_REQUEUED, the job is not finished here. */
static int replay_duplicate(pd_worker *w, pd_job *j, const pd_stream *st)
{
	int rc = pd_store_get_response(w->svc->store, st->tenant, st->name, &w->rec, &j->res.err);
	int stale = rc == PD_E_NOTFOUND || (rc == PD_OK && (w->rec.version != st->version ||
							      w->rec.last_seq != st->last_seq));

	if (stale && j->retries < PD_SVC_CAS_RETRIES) {
		job_requeue(j);
		return REPLAY_REQUEUED;
	}
	if (stale)
		rc = pd_err_set(&j->res.err, PD_E_STORE, "stream row changed under a retry; retry");
	if (rc == PD_E_STATE)
		return response_corrupt(w->svc, j, st);
	if (rc)
		return job_fail(j, rc, PD_DETAIL_NONE, 0);
	pd_buf_reset(&j->out);
	if (pd_buf_append(&j->out, w->rec.last_delta, w->rec.last_delta_len, &j->res.err))
		return job_fail(j, j->res.err.code, PD_DETAIL_NONE, 0);
	j->crc = pd_crc32(0, w->rec.last_delta, w->rec.last_delta_len);
	j->res.status = PD_STATUS_DUPLICATE;
	j->res.orig_status = st->last_status;
	j->res.reason = st->last_reason;
	j->res.samples_in = (uint32_t)st->last_samples_in;
	j->res.samples_out = (uint32_t)st->last_samples_out;
	return PD_OK;
}

/* A stream that is not stored yet takes a slot of its tenant's limit. */
static int reserve_new_stream(pd_service *s, pd_stream *st, pd_job *j)
{
	int rc = PD_OK;
	pd_tenant *t = st->ten;

	if (st->exists)
		return PD_OK;
	pthread_mutex_lock(&s->mu);
	if (t->committed + t->pending >= s->o.max_streams_per_tenant) {
		s->st.stream_limit_hits++;
		pd_err_set(&j->res.err, PD_E_LIMIT, "tenant %s is at its limit of %llu streams",
			   t->name, (unsigned long long)s->o.max_streams_per_tenant);
		rc = job_fail(j, PD_E_LIMIT, PD_DETAIL_STREAM_LIMIT, s->o.max_streams_per_tenant);
	} else {
		t->pending++;
		j->new_stream = 1;
	}
	pthread_mutex_unlock(&s->mu);
	return rc;
}

static int job_sink(void *ctx, const uint8_t *p, size_t n)
{
	pd_job *j = ctx;

	if (pd_buf_append(&j->out, p, n, NULL))
		return -1;
	j->crc = pd_crc32(j->crc, p, n);
	return 0;
}

static int run_engine(pd_worker *w, pd_job *j, pd_stream *st)
{
	pd_service *s = w->svc;
	pd_req req;
	uint64_t t0 = pd_now_ns();
	int rc;

	if (!w->next) {
		pthread_mutex_lock(&s->mu);
		w->next = pd_table_state_get(s->table);
		pthread_mutex_unlock(&s->mu);
		if (!w->next)
			return job_fail(j, pd_err_set(&j->res.err, PD_E_NOMEM, "out of memory"),
					PD_DETAIL_NONE, 0);
	}
	pd_req_default(&req);
	req.first_policy = j->first_policy;
	req.overrides = j->ovr;
	req.noverrides = j->novr;
	req.incarnation = j->incarnation;
	req.producer_start_ns = j->producer_start_ns;
	req.last_seen_ns = st->last_seen_ms > 0 ? st->last_seen_ms * 1000000 : 0;
	req.gzip_level = s->o.gzip_level;
	req.chunk = s->o.chunk_bytes;
	pd_buf_reset(&j->out);
	j->crc = 0;
	if (j->state_lost)
		req.first_policy = PD_FIRST_DROP; /* nothing we could output is not double */
	j->req = req;
	j->prev_seq = has_state(st) && !j->state_lost ? st->last_seq : 0;
	j->prev_incarnation = st->incarnation;
	rc = pd_engine_run(w->eng, j->in.data, j->in.len,
			   has_state(st) && !j->state_lost ? st->state : w->empty,
			   w->next, &req, job_sink, j, &j->res.engine, &j->res.err);
	j->res.ns_engine = pd_now_ns() - t0;
	if (rc == PD_E_LIMIT) {
		pthread_mutex_lock(&s->mu);
		s->st.input_limit_hits++;
		pthread_mutex_unlock(&s->mu);
		return job_fail(j, rc, PD_DETAIL_INPUT_LIMIT, 0);
	}
	if (rc)
		return job_fail(j, rc, PD_DETAIL_NONE, 0);
	j->res.status = j->res.orig_status = j->res.engine.status;
	j->res.reason = j->res.engine.reason;
	j->res.samples_in = j->res.engine.samples_in;
	j->res.samples_out = j->res.engine.samples_out;
	if (s->shadow)
		shadow_fallback(w, j);
	if (j->res.reason == PD_REASON_RESET)
		snprintf(j->reset_why, sizeof j->reset_why, "%s", j->res.engine.why);
	if (j->state_lost) {
		j->res.reason = PD_REASON_STATE_LOST;
		snprintf(j->reset_why, sizeof j->reset_why,
			 "state-lost: stored seq %llu, client had seq %llu answered",
			 (unsigned long long)st->last_seq, (unsigned long long)j->after_seq);
	} else if (st->state_corrupt && j->res.reason == PD_REASON_FIRST) {
		j->res.reason = PD_REASON_EVICTED;
		snprintf(j->reset_why, sizeof j->reset_why, "state-corrupt");
	}
	return PD_OK;
}

static void store_done(void *arg, int rc, uint64_t latency_ns);

/* Queues the new row; the store's completion finishes the job. */
static int commit_async(pd_worker *w, pd_job *j, pd_stream *st)
{
	pd_service *s = w->svc;
	pd_store_row rec;
	int reset = j->res.reason == PD_REASON_RESET || j->res.reason == PD_REASON_EVICTED ||
		    j->res.reason == PD_REASON_STATE_LOST, rc;

	pd_buf_reset(&w->ser);
	if ((rc = pd_state_serialize(w->next, &w->ser, &j->res.err)))
		return job_fail(j, rc, PD_DETAIL_NONE, 0);
	j->now_ms = now_ms();
	memset(&rec, 0, sizeof rec);
	rec.tenant = st->tenant;
	rec.name = st->name;
	rec.state = w->ser.data;
	rec.state_len = w->ser.len;
	rec.identities = pd_state_identities(w->next);
	rec.state_bytes = pd_state_mem_bytes(w->next);
	rec.last_seq = j->seq;
	memcpy(rec.last_hash, j->content, sizeof rec.last_hash);
	rec.last_status = j->res.status;
	rec.last_reason = reason_str(j->res.reason);
	rec.last_samples_in = j->res.samples_in;
	rec.last_samples_out = j->res.samples_out;
	rec.last_delta = j->out.data;
	rec.last_delta_len = j->out.len;
	rec.incarnation = j->incarnation;
	rec.last_time_nanos = j->res.engine.time_nanos;
	rec.created_ms = st->exists ? st->created_ms : j->now_ms;
	rec.last_seen_ms = j->now_ms;
	rec.deltas_served = st->deltas_served + 1;
	rec.resets = st->resets + (uint64_t)reset;
	rec.last_reset_reason = reset ? j->reset_why : st->last_reset_reason;
	j->next_state = w->next;
	w->next = NULL;
	j->t_put = pd_now_ns();
	rc = pd_store_put_if_async(s->store, &rec, st->exists ? st->version : 0, store_done, j);
	if (rc) {
		pd_err_set(&j->res.err, rc, "state store refused the write (%s)", pd_code_name(rc));
		return job_fail(j, rc, rc == PD_E_BUSY ? PD_DETAIL_OVERLOADED : PD_DETAIL_NONE,
				rc == PD_E_BUSY ? pd_service_retry_after_ms(s) : 0);
	}
	return PD_OK;
}

/* The commit succeeded: the new state and metadata become the cached row
 * (the response stays in the store, read back only for a DUPLICATE). */
static void commit_apply(pd_service *s, pd_job *j, pd_stream *st)
{
	int reset = j->res.reason == PD_REASON_RESET || j->res.reason == PD_REASON_EVICTED ||
		    j->res.reason == PD_REASON_STATE_LOST;
	pd_state *old;

	st->version = st->exists ? st->version + 1 : 1;
	if (!st->exists)
		st->created_ms = j->now_ms;
	st->exists = 1;
	st->last_seq = j->seq;
	memcpy(st->last_hash, j->content, sizeof st->last_hash);
	st->incarnation = j->incarnation;
	st->last_status = j->res.status;
	st->last_reason = j->res.reason;
	st->last_samples_in = j->res.samples_in;
	st->last_samples_out = j->res.samples_out;
	st->last_seen_ms = j->now_ms;
	st->last_time_nanos = j->res.engine.time_nanos;
	st->deltas_served++;
	st->resets += (uint64_t)reset;
	if (reset)
		memcpy(st->last_reset_reason, j->reset_why, sizeof st->last_reset_reason);
	st->state_corrupt = 0;
	pthread_mutex_lock(&s->mu);
	old = st->state;
	st->state = j->next_state;
	j->next_state = NULL;
	pd_table_state_put(s->table, old);
	if (j->new_stream) {
		st->ten->pending--;
		st->ten->committed++;
		j->new_stream = 0;
	}
	pd_table_account(s->table, st);
	pthread_mutex_unlock(&s->mu);
}

static void store_done(void *arg, int rc, uint64_t latency_ns)
{
	pd_job *j = arg;

	j->res.ns_commit = pd_now_ns() - j->t_put;
	if (rc == PD_OK) {
		commit_apply(j->svc, j, j->st);
	} else if (rc == PD_E_STATE && j->retries < PD_SVC_CAS_RETRIES) {
		job_requeue(j);
		return;
	} else if (rc == PD_E_STATE) {
		pd_err_set(&j->res.err, PD_E_STORE, "stream changed concurrently; retry");
		job_fail(j, PD_E_STORE, PD_DETAIL_NONE, 0);
	} else {
		pd_err_set(&j->res.err, rc, "state commit failed (%s)", pd_code_name(rc));
		job_fail(j, rc, PD_DETAIL_NONE, 0);
	}
	job_finish(j);
}

/* Everything before the sequence rules: cancel, upload checks, the row. */
static int prepare(pd_worker *w, pd_job *j, pd_stream *st)
{
	int rc;

	if (atomic_load(&j->cancelled)) {
		pd_err_set(&j->res.err, PD_E_TIMEOUT, "request cancelled");
		return job_fail(j, PD_E_TIMEOUT, PD_DETAIL_CANCELLED, 0);
	}
	if (j->data_rc) {
		j->res.err = j->data_err;
		if (j->data_rc == PD_E_LIMIT)
			return job_fail(j, j->data_rc, PD_DETAIL_PROFILE_TOO_LARGE,
					w->svc->o.limits.max_input);
		return job_fail(j, j->data_rc, PD_DETAIL_NONE, 0);
	}
	if ((rc = verify_upload(w, j)))
		return rc;
	if (!st->loaded && (rc = load_stream(w, st, &j->res.err)))
		return job_fail(j, rc, PD_DETAIL_NONE, 0);
	return PD_OK;
}

static void run_delta(pd_worker *w, pd_job *j)
{
	pd_stream *st = j->st;
	int rc;

	j->t_start = pd_now_ns();
	j->res.ns_queue = j->t_start - j->t_submit;
	if (!(rc = prepare(w, j, st))) {
		rc = check_sequence(w, st, j);
		if (rc == SEQ_DUPLICATE) {
			if (replay_duplicate(w, j, st) == REPLAY_REQUEUED)
				return; /* runs again from the row */
		} else if (rc == SEQ_APPLY && !reserve_new_stream(w->svc, st, j) &&
			   !run_engine(w, j, st) && !commit_async(w, j, st)) {
			return; /* store_done finishes it */
		}
	}
	job_finish(j);
}

/* ---- stream ops and tasks (what the admin commands are made of) ------------------- */

/* Admits a stream op or a task (mu held): refused once shutting down, except
 * on the service's own threads, whose ops belong to an admitted request. */
static int admit_admin_locked(pd_service *s, pd_err *e)
{
	if (s->stopping && !on_service_thread)
		return pd_err_set(e, PD_E_BUSY, "service shutting down");
	s->outstanding++;
	if (!on_service_thread)
		s->st.admin_requests++;
	return PD_OK;
}

int pd_service_task(pd_service *s, pd_task_fn fn, void *arg, pd_err *e)
{
	pd_job *j = job_get(s);
	int rc;

	if (!j)
		return pd_err_set(e, PD_E_NOMEM, "out of memory for an admin request");
	j->svc = s;
	j->kind = PD_OP_TASK;
	j->task = fn;
	j->targ = arg;
	pthread_mutex_lock(&s->mu);
	if (!(rc = admit_admin_locked(s, e)))
		push_global(s, j);
	pthread_mutex_unlock(&s->mu);
	if (rc)
		job_put(s, j);
	return rc;
}

static void run_task(pd_job *j)
{
	pd_service *s = j->svc;

	j->task(j->targ);
	job_put(s, j);
	op_finished(s);
}

int pd_service_stream_op(pd_service *s, int op, const char *tenant, const char *name,
			 pd_stream_op_done_fn done, void *arg, pd_err *e)
{
	const char *in[2] = {tenant, name}, *out[2];
	pd_stream *st;
	pd_job *j;
	int rc;

	if (!tenant || !name || (op != PD_STREAM_RESET && op != PD_STREAM_DELETE))
		return pd_err_set(e, PD_E_ARG, "stream op needs a tenant, a name and reset or delete");
	if (!(j = job_get(s)))
		return pd_err_set(e, PD_E_NOMEM, "out of memory for an admin request");
	j->svc = s;
	j->kind = PD_OP_STREAM;
	j->op = op;
	j->sdone = done;
	j->targ = arg;
	if (!(rc = job_strings(j, in, out, 2, e))) {
		j->tenant = out[0];
		j->stream = out[1];
		pthread_mutex_lock(&s->mu);
		if (!(st = pd_table_stream(s->table, j->tenant, j->stream, 1))) {
			rc = pd_err_set(e, PD_E_NOMEM, "out of memory for the stream");
		} else if (!(rc = admit_admin_locked(s, e))) {
			pd_table_touch(s->table, st);
			push_stream(s, st, j);
		}
		pthread_mutex_unlock(&s->mu);
	}
	if (rc)
		job_put(s, j);
	return rc;
}

/* Moves a finished stream op to the next stream its caller named: the old
 * stream is released, the op stays admitted. 0 if the stream could not be
 * made (out of memory). */
static int stream_op_chain(pd_service *s, pd_job *j, const char *name)
{
	pd_stream *st = j->st, *next, *victims = NULL;

	pthread_mutex_lock(&s->mu);
	if ((next = pd_table_stream(s->table, j->tenant, name, 1))) {
		j->stream = name;
		st->busy = 0;
		push_run(s, st);
		pd_table_touch(s->table, next);
		push_stream(s, next, j);
		victims = pd_table_evict(s->table);
	}
	pthread_mutex_unlock(&s->mu);
	pd_table_free_streams(victims);
	return next != NULL;
}

/* The store applied (or refused) a reset or delete; the stream is busy: we own it. */
static void stream_op_finish(pd_job *j, int rc)
{
	pd_service *s = j->svc;
	pd_stream *st = j->st;
	const char *next;
	pd_err e = {0};

	pthread_mutex_lock(&s->mu);
	s->st.jobs_running--;
	if (rc == PD_OK) {
		pd_table_unload(s->table, st); /* the next job reads the row (or its absence) */
		if (j->op == PD_STREAM_DELETE && st->ten->committed)
			st->ten->committed--;
	}
	pthread_mutex_unlock(&s->mu);
	if (rc && rc != PD_E_NOTFOUND)
		pd_err_set(&e, rc, "state store: %s failed (%s)",
			   j->op == PD_STREAM_RESET ? "reset" : "delete", pd_code_name(rc));
	while ((next = j->sdone(j->targ, rc, &e))) {
		if (stream_op_chain(s, j, next))
			return;
		rc = pd_err_set(&e, PD_E_NOMEM, "out of memory deleting streams");
	}
	job_put(s, j);
	release_stream(s, st);
}

static void stream_op_store_done(void *arg, int rc, uint64_t latency_ns)
{
	(void)latency_ns;
	stream_op_finish(arg, rc);
}

static void run_stream_change(pd_worker *w, pd_job *j)
{
	pd_service *s = w->svc;
	int rc;

	if (j->op == PD_STREAM_RESET)
		rc = pd_store_reset_async(s->store, j->tenant, j->stream, "admin",
					  stream_op_store_done, j);
	else
		rc = pd_store_delete_async(s->store, j->tenant, j->stream, stream_op_store_done, j);
	if (rc)
		stream_op_finish(j, rc);
}

void pd_service_stream_cached(pd_service *s, const char *tenant, const char *name,
			      pd_stream_cache_facts *out)
{
	pd_stream *st;

	memset(out, 0, sizeof *out);
	pthread_mutex_lock(&s->mu);
	if ((st = pd_table_stream(s->table, tenant, name, 0))) {
		out->cached = st->loaded;
		out->busy = st->busy;
		for (pd_job *q = st->qhead; q; q = q->next)
			out->queued++;
	}
	pthread_mutex_unlock(&s->mu);
}

/* ---- workers --------------------------------------------------------------------- */

static void run_stream_op(pd_worker *w, pd_job *j)
{
	if (j->kind == PD_OP_DELTA)
		run_delta(w, j);
	else
		run_stream_change(w, j);
}

static void run_global_op(pd_worker *w, pd_job *j)
{
	if (j->kind == PD_OP_FAIL)
		job_finish(j);
	else
		run_task(j);
}

static size_t worker_held(const pd_worker *w)
{
	return pd_engine_mem_bytes(w->eng) + w->ser.alloc + w->rec.own_alloc;
}

/* Gives back what one large request grew (a gzip bomb leaves the inflate
 * buffer at max_inflated): past worker_keep_bytes everything is freed, and
 * the heap trimmed, since glibc keeps freed pages of its arenas otherwise.
 * Runs only after such a request, so steady state still does no malloc. */
static void worker_trim(pd_worker *w)
{
	pd_service *s = w->svc;
	size_t held = worker_held(w);

	if (held <= s->o.worker_keep_bytes)
		return;
	pd_engine_trim(w->eng, 0);
	pd_buf_free(&w->ser);
	pd_store_row_free(&w->rec);
#ifdef __GLIBC__
	malloc_trim(0);
#endif
	pthread_mutex_lock(&s->mu);
	s->st.worker_trims++;
	s->st.worker_trimmed_bytes += held;
	pthread_mutex_unlock(&s->mu);
}

static void *worker_main(void *arg)
{
	pd_worker *w = arg;
	pd_service *s = w->svc;
	pd_stream *st;
	pd_job *j;

	on_service_thread = 1;
	pthread_mutex_lock(&s->mu);
	for (;;) {
		if ((j = s->gq_head)) {
			if (!(s->gq_head = j->next))
				s->gq_tail = NULL;
			pthread_mutex_unlock(&s->mu);
			run_global_op(w, j);
			worker_trim(w);
			pthread_mutex_lock(&s->mu);
		} else if ((st = s->run_head)) {
			if (!(s->run_head = st->run_next))
				s->run_tail = NULL;
			st->in_runq = 0;
			j = st->qhead;
			if (!(st->qhead = j->next))
				st->qtail = NULL;
			st->busy = 1;
			s->st.jobs_queued--;
			s->st.jobs_running++;
			pthread_mutex_unlock(&s->mu);
			run_stream_op(w, j);
			worker_trim(w);
			pthread_mutex_lock(&s->mu);
		} else if (s->quit) {
			break;
		} else {
			pthread_cond_wait(&s->work_cv, &s->mu);
		}
	}
	pthread_mutex_unlock(&s->mu);
	return NULL;
}

static int worker_init(pd_service *s, pd_worker *w, pd_err *e)
{
	w->svc = s;
	pd_buf_init(&w->ser, 0);
	w->eng = pd_engine_new(&s->o.limits);
	w->next = pd_state_new();
	w->empty = pd_state_new();
	w->md_ctx = EVP_MD_CTX_new();
	if (!w->eng || !w->next || !w->empty || !w->md_ctx)
		return pd_err_set(e, PD_E_NOMEM, "out of memory for a worker");
	if (pthread_create(&w->tid, NULL, worker_main, w))
		return pd_err_set(e, PD_E_INTERNAL, "cannot start a worker thread");
	w->started = 1;
	return PD_OK;
}

static void worker_free(pd_worker *w)
{
	pd_engine_free(w->eng);
	pd_state_free(w->next);
	pd_state_free(w->empty);
	pd_buf_free(&w->ser);
	pd_store_row_free(&w->rec);
	EVP_MD_CTX_free(w->md_ctx);
}

/* ---- janitor --------------------------------------------------------------------- */

struct tcount {
	char *name;
	uint64_t n;
};

struct tcount_vec {
	struct tcount *v;
	size_t n, alloc;
	int oom;
};

static int collect_tenant(void *arg, const char *tenant, uint64_t streams, uint64_t state_bytes)
{
	struct tcount_vec *tv = arg;

	if (tv->n == tv->alloc) {
		size_t na = tv->alloc ? tv->alloc * 2 : 16;
		struct tcount *p = realloc(tv->v, na * sizeof *p);
		if (!p)
			return tv->oom = 1;
		tv->v = p;
		tv->alloc = na;
	}
	if (!(tv->v[tv->n].name = strdup(tenant)))
		return tv->oom = 1;
	tv->v[tv->n++].n = streams;
	return 0;
}

static void zero_committed(void *arg, pd_tenant *t)
{
	(void)arg;
	t->committed = 0;
}

/* Sets every tenant's stored-stream count from the store. Creations that
 * commit while the counts are read may be off by their number until the
 * next recount: the limit is exact except right around a TTL sweep. */
static int recount_tenants(pd_service *s, pd_err *e)
{
	struct tcount_vec tv = {0};
	int rc = pd_store_tenant_totals(s->store, NULL, collect_tenant, &tv, e);

	if (!rc && tv.oom)
		rc = pd_err_set(e, PD_E_NOMEM, "out of memory counting streams");
	if (!rc) {
		pthread_mutex_lock(&s->mu);
		pd_table_each_tenant(s->table, zero_committed, NULL);
		for (size_t i = 0; i < tv.n; i++) {
			pd_tenant *t = pd_table_tenant(s->table, tv.v[i].name, 1);
			if (t)
				t->committed = tv.v[i].n;
		}
		pthread_mutex_unlock(&s->mu);
	}
	for (size_t i = 0; i < tv.n; i++)
		free(tv.v[i].name);
	free(tv.v);
	return rc;
}

#define JANITOR_SCAN_MAX 4096u

static void janitor_tick(pd_service *s)
{
	int64_t cutoff = now_ms() - s->o.stream_ttl_ms;
	uint64_t n = 0;
	pd_stream *victims;
	pd_err e;

	if (s->o.stream_ttl_ms <= 0)
		return;
	/* Streams still busy or cached keep their version: a put_if on an
	 * expired row fails and the job is recomputed as a first profile. */
	if (pd_store_expire(s->store, cutoff, &n, &e))
		n = 0;
	pthread_mutex_lock(&s->mu);
	victims = pd_table_drop_expired(s->table, cutoff, JANITOR_SCAN_MAX);
	s->st.streams_expired += n;
	pthread_mutex_unlock(&s->mu);
	pd_table_free_streams(victims);
	if (n)
		recount_tenants(s, &e);
}

static void *janitor_main(void *arg)
{
	pd_service *s = arg;
	struct timespec ts;

	pthread_mutex_lock(&s->mu);
	while (!s->quit) {
		ts = pd_deadline(CLOCK_MONOTONIC, s->o.janitor_interval_ms);
		while (!s->quit && pthread_cond_timedwait(&s->jan_cv, &s->mu, &ts) == 0)
			;
		if (s->quit)
			break;
		pthread_mutex_unlock(&s->mu);
		janitor_tick(s);
		pthread_mutex_lock(&s->mu);
	}
	pthread_mutex_unlock(&s->mu);
	return NULL;
}

/* ---- lifecycle ---------------------------------------------------------------------- */

static void normalize_opts(pd_service_opts *o)
{
	pd_service_opts d;
	long n;

	pd_service_opts_init(&d);
	if (!o->workers) {
		n = sysconf(_SC_NPROCESSORS_ONLN);
		o->workers = n > 0 ? (unsigned)n : 1;
	}
	/* A field left 0 takes its default. */
#define OR_DEFAULT(f) (o->f = o->f ? o->f : d.f)
	OR_DEFAULT(cache_bytes);
	OR_DEFAULT(max_streams_per_tenant);
	OR_DEFAULT(max_queued_jobs);
	OR_DEFAULT(max_queued_bytes);
	OR_DEFAULT(chunk_bytes);
	OR_DEFAULT(janitor_interval_ms);
#undef OR_DEFAULT
	if (o->gzip_level < 0 || o->gzip_level > 9)
		o->gzip_level = d.gzip_level;
}

static int init_sync(pd_service *s, pd_err *e)
{
	pthread_condattr_t ca;
	int rc = 0;

	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->work_cv, NULL);
	pthread_cond_init(&s->idle_cv, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	rc = pthread_cond_init(&s->jan_cv, &ca);
	pthread_condattr_destroy(&ca);
	if (rc)
		return pd_err_set(e, PD_E_INTERNAL, "cannot create a condition variable");
	if (!(s->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL)))
		return pd_err_set(e, PD_E_INTERNAL, "OpenSSL has no SHA-256");
	return PD_OK;
}

static int start_threads(pd_service *s, pd_err *e)
{
	int rc;

	if (!(s->workers = calloc(s->nworkers, sizeof *s->workers)))
		return pd_err_set(e, PD_E_NOMEM, "out of memory for workers");
	for (unsigned i = 0; i < s->nworkers; i++)
		if ((rc = worker_init(s, &s->workers[i], e)))
			return rc;
	if (pthread_create(&s->janitor, NULL, janitor_main, s))
		return pd_err_set(e, PD_E_INTERNAL, "cannot start the janitor thread");
	s->janitor_started = 1;
	return PD_OK;
}

static void stop_threads(pd_service *s)
{
	pthread_mutex_lock(&s->mu);
	s->stopping = 1;
	while (s->outstanding)
		pthread_cond_wait(&s->idle_cv, &s->mu);
	s->quit = 1;
	pthread_cond_broadcast(&s->work_cv);
	pthread_cond_broadcast(&s->jan_cv);
	pthread_mutex_unlock(&s->mu);
	for (unsigned i = 0; s->workers && i < s->nworkers; i++)
		if (s->workers[i].started)
			pthread_join(s->workers[i].tid, NULL);
	if (s->janitor_started)
		pthread_join(s->janitor, NULL);
}

static void final_free(pd_service *s)
{
	pd_job *j;

	pd_table_free(s->table);
	while ((j = s->jpool)) {
		s->jpool = j->next;
		pd_buf_free(&j->in);
		pd_buf_free(&j->out);
		free(j->strs);
		free(j);
	}
	pthread_cond_destroy(&s->jan_cv);
	pthread_cond_destroy(&s->idle_cv);
	pthread_cond_destroy(&s->work_cv);
	pthread_mutex_destroy(&s->mu);
	free(s);
}

/* Stops everything. Jobs the caller has not freed yet keep the table, pools
 * and mutex alive; the last pd_job_free() frees them. */
static void destroy(pd_service *s)
{
	int last;

	stop_threads(s);
	pd_store_close(s->store); /* runs the last completions, joins the writer */
	s->store = NULL;
	pd_shadow_free(s->shadow);
	s->shadow = NULL;
	for (unsigned i = 0; s->workers && i < s->nworkers; i++)
		worker_free(&s->workers[i]);
	free(s->workers);
	s->workers = NULL;
	EVP_MD_free(s->sha256);
	s->sha256 = NULL;
	pthread_mutex_lock(&s->mu);
	s->dead = 1;
	last = s->live_jobs == 0;
	pthread_mutex_unlock(&s->mu);
	if (last)
		final_free(s);
}

static int start_shadow(pd_service *s, pd_err *e)
{
	s->o.shadow.limits = s->o.limits;
	return pd_shadow_new(&s->o.shadow, &s->shadow, e);
}

int pd_service_new(const pd_service_opts *o, pd_service **out, pd_err *e)
{
	pd_service *s = calloc(1, sizeof *s);
	size_t pool;
	int rc;

	*out = NULL;
	if (!s)
		return pd_err_set(e, PD_E_NOMEM, "out of memory for the service");
	s->o = *o;
	normalize_opts(&s->o);
	s->nworkers = s->o.workers;
	s->start_ms = now_ms();
	pool = (size_t)s->nworkers * PD_SVC_STATE_POOL_PER_WORKER + 2;
	if ((rc = init_sync(s, e)) || (rc = pd_table_new(s->o.cache_bytes, pool, &s->table, e)) ||
	    (rc = pd_store_open(&s->o.store, &s->store, e)) || (rc = recount_tenants(s, e)) ||
	    (rc = start_shadow(s, e)) ||
	    (rc = start_threads(s, e))) {
		destroy(s);
		return rc;
	}
	*out = s;
	return PD_OK;
}

void pd_service_free(pd_service *s)
{
	if (s)
		destroy(s);
}

void pd_service_set_stats_hook(pd_service *s, pd_stats_json_fn fn, void *arg)
{
	pthread_mutex_lock(&s->mu);
	s->stats_hook = fn;
	s->stats_hook_arg = arg;
	pthread_mutex_unlock(&s->mu);
}

void pd_service_stats_hook(pd_service *s, pd_stats_json_fn *fn, void **arg)
{
	pthread_mutex_lock(&s->mu);
	*fn = s->stats_hook;
	*arg = s->stats_hook_arg;
	pthread_mutex_unlock(&s->mu);
}

int64_t pd_service_uptime_ms(pd_service *s) { return now_ms() - s->start_ms; }

void pd_service_stats_get(pd_service *s, pd_service_stats *out)
{
	pd_table_stats ts;

	pthread_mutex_lock(&s->mu);
	*out = s->st;
	pd_table_stats_get(s->table, &ts);
	out->streams_cached = ts.streams;
	out->cache_bytes = ts.cache_bytes;
	out->cache_evictions = ts.evictions;
	out->jobs_admitted = s->admitted;
	out->queued_bytes = s->queued_bytes;
	out->tenants = ts.tenants;
	pthread_mutex_unlock(&s->mu);
	pd_store_stats(s->store, &out->store);
	pd_shadow_stats_get(s->shadow, &out->shadow);
}

pd_store *pd_service_store(pd_service *s) { return s->store; }

uint64_t pd_service_retry_after_ms(pd_service *s)
{
	uint64_t ms;

	pthread_mutex_lock(&s->mu);
	/* Time for the workers to drain the submitted backlog (uploads still
	 * arriving are bounded by max_queued_bytes); no history yet: the floor. */
	ms = s->outstanding * s->ewma_job_ns / (s->o.workers ? s->o.workers : 1) / 1000000;
	pthread_mutex_unlock(&s->mu);
	return ms < 50 ? 50 : ms > 5000 ? 5000 : ms;
}
