/*
 * pd_service: the delta service of pdeltad, without any networking.
 *
 * It owns the worker pool (one pd_engine per worker, all cores), the
 * per-stream ordering of requests, the hot-state cache (byte budget, LRU),
 * idempotency (sequence number + content hash, DESIGN §2.7), the state store
 * (pd_store.h: the response is completed only after the commit holding its
 * state), per-tenant limits, the stream TTL janitor, and the stream ops and
 * tasks the admin commands (pd_admin.h) are made of.
 * The network layer (pd_conn / pd_server) turns frames into the calls below
 * and turns completions back into frames.
 *
 * Threading contract:
 *   - pd_job_begin/_data/_submit/_cancel, pd_service_task and
 *     pd_service_stream_op are called
 *     from any event-loop thread and never block (no disk, no CPU-heavy
 *     work: _data only appends to a capped buffer).
 *   - The completion callback runs on a service thread (worker or store
 *     writer). It must not block: the network layer copies what it needs or
 *     keeps the pd_job, and bounces to its event loop (event_active).
 *   - After the completion the caller owns the job and frees it with
 *     pd_job_free() (from any thread), after it has sent the output.
 *   - Requests of one stream (tenant, name) are processed strictly in
 *     submission order, whatever connection they come from. A stream is busy
 *     from the moment a worker takes its job until that job's state commit
 *     has completed; its completions therefore also arrive in that order.
 *   - pd_service_free() waits for every submitted job (their callbacks
 *     run). Jobs may outlive it: a job can still be freed, or a begun one
 *     aborted, afterwards (the last pd_job_free releases what is left of the
 *     service). A job submitted after the workers stopped completes at once,
 *     on the caller's thread, with PD_E_BUSY / SHUTTING_DOWN; so submit or
 *     abort begun jobs before pd_service_free().
 *
 * Sequence rules (PROTOCOL.md §8, decided by pd_seq.h): a stream without state (new, expired,
 * reset by ADMIN) applies any request as a first profile; otherwise a
 * request whose incarnation differs from the stored one is applied without
 * comparing seq, and within one incarnation seq > last is applied, seq ==
 * last with the same hash is a DUPLICATE (the stored response replayed), with
 * another hash SEQ_CONFLICT, seq < last SEQ_STALE. Incarnation 0 means
 * "unknown": it takes part in that comparison like any value, but the engine
 * only forces a reset when both incarnations are non-zero (DESIGN §2.4; the
 * counter checks still detect a restart).
 */
#ifndef PD_SERVICE_H
#define PD_SERVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pd_buf.h"
#include "pd_engine.h"
#include "pd_err.h"
#include "pd_shadow.h"
#include "pd_store.h"

typedef struct pd_service pd_service;
typedef struct pd_job pd_job;

typedef struct pd_service_opts {
	unsigned workers;              /* 0 = number of online CPUs */
	/* Defaults: the pd_settings table (pd_service_opts_init). */
	size_t cache_bytes;            /* hot-state cache budget */
	int64_t stream_ttl_ms;         /* idle streams expire (0 = never) */
	uint64_t max_streams_per_tenant;
	size_t max_queued_jobs;        /* jobs admitted but not completed */
	uint64_t max_queued_bytes;     /* upload bytes of those jobs */
	size_t chunk_bytes;            /* compressed bytes per output chunk */
	int gzip_level;                /* output gzip level */
	/* Memory a worker keeps between requests (engine buffers, serialized
	 * state, admin document, read row). After a request that grew them past
	 * it (a large profile, a gzip bomb stopped at max_inflated) they are freed
	 * and the heap trimmed. 0 = free after every request. Not normalised:
	 * pd_service_opts_init sets it. */
	size_t worker_keep_bytes;
	pd_limits limits;              /* engine input limits (pd_limits_default) */
	pd_shadow_opts shadow;         /* shadow verification (limits: set from limits) */
	struct pd_store_opts store;    /* path etc. (pd_store_opts_init) */
	unsigned janitor_interval_ms;  /* TTL sweep period (default 5000) */
} pd_service_opts;

void pd_service_opts_init(pd_service_opts *o);
int pd_service_new(const pd_service_opts *o, pd_service **out, pd_err *e);
/* Stops admitting, finishes every admitted job (their callbacks run), flushes
 * the store, joins the threads, frees. */
void pd_service_free(pd_service *s);

/* ---- delta requests ---------------------------------------------------- */
typedef struct pd_job_params {
	const char *tenant;     /* authenticated tenant (never from the client) */
	const char *stream;     /* stream name, validated by the frame codec */
	uint64_t seq;           /* per-stream sequence number (>= 1) */
	uint64_t incarnation;   /* producer incarnation, 0 = unknown */
	int64_t producer_start_ns;
	int first_policy;       /* enum pd_first */
	const pd_type_override *overrides;
	size_t noverrides;      /* copied by pd_job_begin */
	int hash_kind;          /* enum pd_content_hash: what DATA_END.hash claims */
	bool has_after;         /* the client said which seq it last had answered: */
	uint64_t after_seq;     /* a stored state older than that is BASELINE state-lost */
} pd_job_params;

/* The content hash a client sends in DATA_END (PROTOCOL.md §5, §8): protocol
 * version 1 the first 16 bytes of SHA-256, version 2 the CRC-128 of pd_gz.h.
 * Whatever the client sent, the stream keeps the server's own CRC-128 of the
 * upload as its last hash, so a retry is recognised across versions. */
enum pd_content_hash { PD_CHASH_SHA256 = 0, PD_CHASH_CRC128 = 1 };

typedef struct pd_job_result {
	int rc;            /* PD_OK or a pd_code; err.msg says why */
	pd_err err;
	int status;        /* enum pd_status: DELTA, BASELINE, DUPLICATE */
	int reason;        /* enum pd_reason */
	int orig_status;   /* = status, or for DUPLICATE the replayed status */
	/* For rc != PD_OK: the wire detail (enum pd_detail, pdelta_proto.h) and
	 * its value (PROTOCOL.md §7), e.g. SEQ_STALE + the last applied seq. */
	int detail;
	uint64_t detail_value;
	uint64_t seq;      /* the applied sequence */
	uint32_t samples_in, samples_out;
	const uint8_t *out; /* the gzipped delta profile, valid until pd_job_free */
	size_t out_len;
	uint32_t out_crc32; /* zlib crc32 of out */
	/* latency breakdown (ns): queued, engine, store commit */
	uint64_t ns_queue, ns_engine, ns_commit;
	pd_result engine;  /* engine phases (zero for DUPLICATE) */
} pd_job_result;

typedef void (*pd_job_done_fn)(void *arg, pd_job *job, const pd_job_result *res);

/* Admits a request (PD_E_BUSY when over max_queued_jobs or max_queued_bytes; PD_E_LIMIT when the
 * tenant is at max_streams_per_tenant and the stream is new is reported at
 * completion instead). */
int pd_job_begin(pd_service *s, const pd_job_params *p, pd_job **out, pd_err *e);
/* Appends uploaded bytes (as received: gzip or raw). PD_E_LIMIT past max_input;
 * PD_E_BUSY (sticky) when the service's max_queued_bytes would be exceeded and
 * other jobs hold bytes (a job alone always may finish its upload). */
int pd_job_data(pd_job *j, const void *p, size_t n, pd_err *e);
/* Upload complete: hash = the content hash of the uploaded bytes (params.hash_kind),
 * as sent by the client (the service verifies it and the length). The job
 * runs; done(arg, job, result) is called exactly once. */
void pd_job_submit(pd_job *j, const uint8_t hash[16], uint64_t total_len, pd_job_done_fn done,
		   void *arg);
/* Abandons a job that was begun but not submitted (client cancelled or
 * disconnected mid-upload): it leaves no trace. */
void pd_job_abort(pd_job *j);
/* CANCEL after submit: if no worker has taken the job yet it is skipped and
 * completes with PD_E_TIMEOUT / PD_DETAIL_CANCELLED; otherwise it runs to
 * its normal end. done is still called exactly once. Any thread, before
 * pd_job_free. */
void pd_job_cancel(pd_job *j);
void pd_job_free(pd_job *j);
/* Suggested client retry delay after PD_E_BUSY (busy/OVERLOADED value, ms):
 * the admitted jobs times the recent worker time per job, over the workers,
 * clamped to 50 .. 5000. */
uint64_t pd_service_retry_after_ms(pd_service *s);

/* ---- stream ops and tasks (the admin commands of pd_admin.h) ---------- */
/* Runs fn(arg) once on a worker thread, counted as one admin request.
 * PD_E_BUSY once shutting down (then fn never runs); pd_service_free waits
 * for fn. fn may call pd_service_stream_op and read pd_service_store. */
typedef void (*pd_task_fn)(void *arg);
int pd_service_task(pd_service *s, pd_task_fn fn, void *arg, pd_err *e);

enum pd_stream_op { PD_STREAM_RESET = 0, PD_STREAM_DELETE = 1 };
/* Called once per stream the op ran on, on a service thread, after the
 * store applied it (rc PD_OK; PD_E_NOTFOUND: no such row; else e says what
 * failed) and the stream's cached row was dropped. It returns NULL, or the
 * name of another stream of the same tenant to run the same op on next
 * (valid until this callback is called for it): a prefix delete walks its
 * names without being admitted again. */
typedef const char *(*pd_stream_op_done_fn)(void *arg, int rc, const pd_err *e);
/* Queues a reset or delete of (tenant, name) behind the stream's pending
 * jobs. Refused (done never called) with PD_E_BUSY once shutting down,
 * unless called from a task, and PD_E_NOMEM. Counted as an admin request
 * unless called from a task. */
int pd_service_stream_op(pd_service *s, int op, const char *tenant, const char *name,
			 pd_stream_op_done_fn done, void *arg, pd_err *e);

/* What the cache holds of a stream (admin `stream`). */
typedef struct pd_stream_cache_facts {
	bool cached, busy;
	uint64_t queued; /* ops waiting */
} pd_stream_cache_facts;
void pd_service_stream_cached(pd_service *s, const char *tenant, const char *name,
			      pd_stream_cache_facts *out);

/* The network layer's counters for the admin `stats` document: fn appends
 * JSON members, each preceded by a comma (`,"connections":3`), to out. Runs
 * on a worker thread. Set before the first admin call. */
typedef void (*pd_stats_json_fn)(void *arg, pd_buf *out);
void pd_service_set_stats_hook(pd_service *s, pd_stats_json_fn fn, void *arg);
void pd_service_stats_hook(pd_service *s, pd_stats_json_fn *fn, void **arg);
int64_t pd_service_uptime_ms(pd_service *s);

/* ---- metrics ------------------------------------------------------------ */
typedef struct pd_service_stats {
	uint64_t requests_by_status[3];  /* DELTA, BASELINE, DUPLICATE */
	uint64_t baselines_by_reason[6]; /* enum pd_reason */
	uint64_t errors_by_code[PD_E__COUNT];
	uint64_t streams_cached, cache_bytes, cache_evictions;
	uint64_t streams_expired;
	uint64_t jobs_queued, jobs_running; /* waiting for a worker; taken, not completed */
	uint64_t jobs_admitted;             /* begun, not completed (max_queued_jobs) */
	/* limit hits: max_queued_jobs, max_streams_per_tenant, engine input caps,
	 * pd_job_data past max_input */
	uint64_t busy_rejects, stream_limit_hits, input_limit_hits, upload_limit_hits;
	uint64_t queued_bytes;       /* upload bytes held by admitted jobs (gauge) */
	uint64_t bytes_busy_rejects; /* max_queued_bytes refusals (busy/OVERLOADED) */
	uint64_t store_conflicts; /* put_if version mismatches (job recomputed) */
	uint64_t jobs_cancelled, admin_requests;
	uint64_t tenants;         /* tenants known (with streams or activity) */
	uint64_t bytes_in, bytes_out;
	/* stored rows found corrupt: state blobs (the stream restarted from a
	 * BASELINE) and kept responses (a retry refused with `state`) */
	uint64_t states_corrupt, responses_corrupt;
	/* worker_keep_bytes: trims after a request, and the bytes they released */
	uint64_t worker_trims, worker_trimmed_bytes;
	/* latency histograms, cumulative counts per bucket (ms):
	 * 1 2 5 10 20 50 100 200 500 1000 +Inf */
	uint64_t lat_total[11], lat_engine[11], lat_commit[11];
	uint64_t lat_total_sum_ns, lat_engine_sum_ns, lat_commit_sum_ns, lat_count;
	struct pd_store_stats store;
	pd_shadow_stats shadow;
} pd_service_stats;

void pd_service_stats_get(pd_service *s, pd_service_stats *out);

/* The service's state store (for metrics and tests, e.g. pd_store_inject_fault). */
pd_store *pd_service_store(pd_service *s);

#endif
