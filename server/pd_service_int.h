/*
 * pd_service_int: the internals shared by pd_service.c (lifecycle, workers,
 * delta jobs), pd_service_table.c (stream table, LRU cache, tenants, pools)
 * and pd_service_admin.c (admin commands). Not for other modules: they use
 * pd_service.h.
 *
 * Locking (see also the top of pd_service.c): one mutex, svc->mu, guards
 * every shared field below, except the fields of a *busy* stream's cached
 * row (state, sequence, hash, ...), which only the stream's current
 * owner (the worker that took its op, then the store completion of that op)
 * touches. busy is set and cleared under mu, which orders the owners. mu is
 * never held while calling into pd_store or a caller's callback.
 */
#ifndef PD_SERVICE_INT_H
#define PD_SERVICE_INT_H

#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>

#include "pd_service.h"

#define PD_SVC_MAX_OVERRIDES 64
#define PD_SVC_STATE_POOL_PER_WORKER 2
#define PD_SVC_JOB_POOL_MAX 256
#define PD_SVC_KEEP_BUF_MAX (8u << 20) /* larger job buffers are freed, not pooled */
#define PD_SVC_CAS_RETRIES 3           /* recomputations after a put_if conflict */

/* What a queued op does. Stream ops run in their stream's FIFO; global ops in
 * the service's admin FIFO. */
enum pd_op_kind {
	PD_OP_DELTA = 0, /* stream: a delta request */
	PD_OP_RESET,     /* stream: admin reset */
	PD_OP_DELETE,    /* stream: admin delete (also one part of a prefix delete) */
	PD_OP_ADMIN,     /* global: streams, stream, stats, tenants, delete prefix */
	PD_OP_FAIL,      /* global: complete a job with its preset error on a worker */
};

enum pd_admin_cmd {
	PD_ADM_STREAMS = 0,
	PD_ADM_STREAM,
	PD_ADM_RESET,
	PD_ADM_DELETE,
	PD_ADM_STATS,
	PD_ADM_TENANTS,
};

enum pd_admin_sort { PD_ASORT_NAME, PD_ASORT_LAST_SEEN, PD_ASORT_SAMPLES, PD_ASORT_BYTES };

typedef struct pd_tenant {
	struct pd_tenant *next; /* hash chain */
	uint64_t committed;     /* streams stored (recounted after TTL expiry) */
	uint64_t pending;       /* new streams whose first commit is in flight */
	char name[];
} pd_tenant;

/* A prefix delete: PD_OP_DELETE ops, at most PD_SVC_MULTI_INFLIGHT at a
 * time, each moving on to the next name when it is done; the last answers. */
#define PD_SVC_MULTI_INFLIGHT 32
typedef struct pd_multi {
	char **names;
	size_t n, next, inflight;
	uint64_t deleted;
	int rc;
	pd_err err;
	pd_admin_done_fn done;
	void *arg;
	char tenant[];
} pd_multi;

typedef struct pd_stream {
	struct pd_stream *hnext;               /* hash chain */
	struct pd_stream *lru_prev, *lru_next; /* head = most recently used */
	struct pd_stream *run_next;            /* runnable FIFO */
	uint64_t hkey;
	pd_tenant *ten;
	char *tenant, *name; /* one allocation (key) */

	/* Ops waiting; busy: one is being processed (until its commit completed). */
	struct pd_job *qhead, *qtail;
	uint8_t busy, in_runq;

	/* The cached row. loaded = 0: unknown, read the store on next use. */
	uint8_t loaded, exists;
	pd_state *state; /* NULL or not valid: no state (first profile next) */
	uint64_t version, last_seq, incarnation, deltas_served, resets;
	uint8_t last_hash[PD_STORE_HASH_LEN];
	int last_status, last_reason;
	uint64_t last_samples_in, last_samples_out;
	int64_t created_ms, last_seen_ms, last_time_nanos;
	char last_reset_reason[96];
	/* The stored state blob failed to deserialize (checksum, version): the
	 * next applied profile is a BASELINE `evicted` recorded as "state-corrupt". */
	uint8_t state_corrupt;

	size_t mem; /* what the cache budget counts for this stream */
} pd_stream;

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
	char reset_why[96];

	/* Admin ops. */
	int cmd;  /* enum pd_admin_cmd */
	int sort; /* enum pd_admin_sort */
	size_t limit;
	const char *name, *prefix; /* into strs, may be NULL */
	pd_admin_done_fn adone;
	void *aarg;
	pd_multi *multi;
};

typedef struct pd_worker {
	pd_service *svc;
	pthread_t tid;
	int started;
	pd_engine *eng;
	pd_state *next;  /* scratch for the engine's next state */
	pd_state *empty; /* never valid: "no previous state" */
	pd_state *tmp;   /* admin `stream`: deserialized row */
	pd_buf ser;      /* serialized state */
	pd_buf json;     /* admin document */
	pd_stream_rec rec;
	EVP_MD_CTX *md_ctx;
} pd_worker;

struct pd_service {
	pd_service_opts o;
	pd_store *store;
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

	/* Stream table, LRU and run queues. */
	pd_stream **buckets;
	size_t nbuckets, nstreams;
	uint64_t hseed;
	pd_stream *lru_head, *lru_tail;
	pd_stream *run_head, *run_tail;
	struct pd_job *gq_head, *gq_tail; /* global ops */
	size_t cache_bytes;

	pd_tenant **tbuckets;
	size_t ntbuckets, ntenants;

	/* Pools (reused objects: no malloc per request in steady state). */
	pd_state **spool;
	size_t nspool, spool_cap;
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

/* ---- pd_service_table.c (callers hold mu unless noted) ---------------------- */
int pd_svc_table_init(pd_service *s, pd_err *e);
void pd_svc_table_free(pd_service *s); /* no lock: at shutdown */
pd_tenant *pd_svc_tenant(pd_service *s, const char *name, int create);
/* Finds (tenant, name); creates a not-loaded stream when create. NULL when
 * absent or out of memory. */
pd_stream *pd_svc_stream(pd_service *s, const char *tenant, const char *name, int create);
void pd_svc_lru_touch(pd_service *s, pd_stream *st);
/* Recomputes st->mem and the cache total. */
void pd_svc_account(pd_service *s, pd_stream *st);
/* Forgets the cached row (loaded = 0); the state goes to the pool. */
void pd_svc_unload(pd_service *s, pd_stream *st);
/* Evicts idle LRU streams while over budget; returns them for
 * pd_svc_free_streams() outside the lock. */
pd_stream *pd_svc_evict(pd_service *s);
/* Removes idle streams last seen before cutoff_ms (at most max); same. */
pd_stream *pd_svc_drop_expired(pd_service *s, int64_t cutoff_ms, size_t max);
void pd_svc_free_streams(pd_stream *list); /* no lock */
void pd_svc_push_run(pd_service *s, pd_stream *st);
/* State pool. get: NULL only when out of memory. put: NULL is a no-op; a
 * full pool frees the state. */
pd_state *pd_svc_state_get(pd_service *s);
void pd_svc_state_put(pd_service *s, pd_state *ps);
struct pd_job *pd_svc_job_get(pd_service *s); /* no lock */
/* no lock. After pd_service_free, the last job put frees the service. */
void pd_svc_job_put(pd_service *s, struct pd_job *j);

/* ---- pd_service.c ------------------------------------------------------------ */
int64_t pd_svc_now_ms(void);
/* Frees what outlives pd_service_free while jobs are still out: the table,
 * the pools, the mutex and the struct. */
void pd_svc_final_free(pd_service *s);
/* Appends op to the global queue and wakes a worker (mu held). */
void pd_svc_push_global(pd_service *s, struct pd_job *j);
/* Appends op to st's FIFO, making st runnable if idle (mu held). */
void pd_svc_push_stream(pd_service *s, pd_stream *st, struct pd_job *j);
/* Ends an op on a stream: releases the stream (next op runnable), evicts,
 * counts the op finished (the caller already took it out of jobs_running).
 * Takes mu. */
void pd_svc_release(pd_service *s, pd_stream *st);
/* Counts a global op finished. Takes mu. */
void pd_svc_op_finished(pd_service *s);
/* Copies a string set into j->strs; returns pointers in out[] (NULL stays NULL). */
int pd_svc_job_strings(struct pd_job *j, const char *const *in, const char **out, size_t n,
		       pd_err *e);

/* ---- pd_service_admin.c ------------------------------------------------------ */
/* Runs a global admin op / a stream reset or delete on a worker. */
void pd_svc_admin_run(pd_worker *w, struct pd_job *j);
void pd_svc_admin_stream_op(pd_worker *w, struct pd_job *j);

#endif
