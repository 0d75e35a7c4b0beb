/*
 * pd_store: the durable per-stream state store of pdeltad (DESIGN §4, §6).
 *
 * One compact row per stream (tenant, name): the engine's opaque serialized
 * state blob plus the metadata needed for idempotency (DESIGN §2.7) and for
 * admin listings. The store is backend-neutral: callers only see the opaque
 * pd_store and the functions below; a backend (pd_store_sqlite.c, the
 * embedded default, or pd_store_pg.c, PostgreSQL shared by several nodes) is
 * a vtable at the bottom of this header.
 *
 * Writes are asynchronous and durable-before-acknowledged: pd_store_put_async()
 * copies the record and queues it for ONE writer thread that group-commits
 * (everything queued, up to a batch cap, in one transaction)
 * and only then calls each write's completion. The server sends a response
 * only from that completion, so after kill -9 every response a client got is
 * consistent with the stored state.
 *
 * A completion with rc == PD_E_STORE means "not known to be committed": the
 * batch was rolled back (the stored rows are as before), or, in rare I/O
 * failures during COMMIT, it may have reached the disk anyway. Both are safe
 * because a retried request with the same sequence and content hash either
 * recomputes (row unchanged) or is answered as DUPLICATE from the stored last
 * response (row committed). A server that computes the next request of a
 * stream from state whose write has not completed yet should use
 * pd_store_put_if_async(), so a failed earlier write cannot be skipped over.
 *
 * Thread safety:
 *   - pd_store_open()/pd_store_close(): one thread, no other call in flight.
 *   - pd_store_get(), _list(), _count_streams(), _tenant_totals(),
 *     _integrity_check(): any thread, concurrently. Each call borrows a read
 *     connection from a pool (readers never wait for the writer) and
 *     sees only committed data; it may block briefly, so call it from worker
 *     threads, not from an event loop.
 *   - pd_store_put_async(), _put_if_async(), _delete_async(), _reset_async(),
 *     _stats(), _inject_fault(): any thread, never block (a full queue is
 *     PD_E_BUSY at once).
 *   - pd_store_flush(), pd_store_expire(): any thread except the writer
 *     thread (i.e. not from a completion); they block until done.
 *   - Completions run on the writer thread, after COMMIT (or ROLLBACK)
 *     returned, in queue order. Keep them short (bounce to your event loop);
 *     they may call the *_async functions.
 *
 * The store has no read-your-writes: a get() after put_async() but before its
 * completion returns the previous committed row. The server's hot-state cache
 * holds the newer state until then.
 */
#ifndef PD_STORE_H
#define PD_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "pd_err.h"

typedef struct pd_store pd_store;

/* ---- configuration ------------------------------------------------------ */

/* Defaults: the store_* settings of the pd_settings table
 * (pd_store_opts_init); a zero size, count or timeout field in pd_store_opts
 * also stands for them. synchronous_full has no such rule: 0 means NORMAL,
 * so start from pd_store_opts_init(). */

struct pd_store_opts {
	/* Database file (SQLite), or a PostgreSQL connection string: a
	 * "postgres://" / "postgresql://" URI or libpq key=value pairs
	 * ("host=... dbname=..."); see pd_store_is_pg(). */
	const char *path;
	/* PostgreSQL: file whose first line is the password (NULL or "" =
	 * none: the connection string, PGPASSFILE or ~/.pgpass). */
	const char *password_file;
	/* 1 (default): PRAGMA synchronous=FULL, the WAL is fsynced at every
	 * commit, so acknowledged writes survive power loss. 0: NORMAL; in WAL
	 * mode that still survives a process crash (kill -9: committed frames
	 * are in the OS page cache) but the last commits may be lost on power
	 * loss or an OS crash. */
	int synchronous_full;
	size_t max_queue;       /* queued + in-flight writes; full -> PD_E_BUSY */
	size_t max_queue_bytes; /* their bytes (records are copied) */
	size_t max_batch;       /* writes per group commit */
	size_t max_batch_bytes; /* bytes per group commit (a larger single write still goes alone) */
	int busy_timeout_ms;    /* wait for a lock held by another process */
	size_t max_readers;     /* read connections; callers beyond that wait */
	/* Largest row (state + last delta + strings) a put may store, 0 = the
	 * backend's own maximum (SQLite: SQLITE_LIMIT_LENGTH, 1e9 by default).
	 * A larger put completes with PD_E_LIMIT; the rest of its batch commits. */
	uint64_t max_row_bytes;
	/* Disk budget for the database (0 = unlimited, else at least 512 KiB:
	 * smaller is refused). Past it commits fail with PD_E_STORE
	 * (SQLITE_FULL) until expire/delete frees room. */
	uint64_t max_db_bytes;
};

/* Fills o with the defaults (synchronous_full = 1) and path = NULL. */
void pd_store_opts_init(struct pd_store_opts *o);

/* ---- the stream row ------------------------------------------------------ */

#define PD_STORE_HASH_LEN 16
#define PD_STORE_PROBE_MS 5000 /* an idle writer checks a database server this often */

/*
 * One stream's row. Blobs and strings are pointer + length.
 *
 * On put: every pointer is the caller's and only read during the call (the
 * store copies what it keeps). tenant and name are required; NULL reason
 * strings are stored as "". created_ms is only used when the row is created
 * (an update keeps the stored one); created_ms / last_seen_ms of 0 mean
 * "now". version is ignored (the store sets it).
 *
 * On get: all pointers point into memory owned by the record (own_mem),
 * valid until the next get into the same record or pd_store_row_free().
 * A zero-initialised record is ready for get; reusing one record across gets
 * avoids an allocation per read.
 *
 * Unsigned 64-bit values are stored bit-for-bit in SQLite's signed INTEGER.
 */
typedef struct pd_store_row {
	const char *tenant;
	const char *name;

	/* The engine's opaque serialized state. A reset row has state_len 0. */
	const uint8_t *state;
	size_t state_len;
	uint64_t identities;  /* sample identities in the state */
	uint64_t state_bytes; /* the engine's size accounting for this state */

	/* Idempotency (DESIGN §2.7): the last applied request and its response,
	 * so a retry gets the same bytes back as DUPLICATE. */
	uint64_t last_seq;
	uint8_t last_hash[PD_STORE_HASH_LEN]; /* content hash of that request */
	int32_t last_status;                  /* response status (engine's enum) */
	const char *last_reason;              /* "first", "reset", ... or "" */
	uint64_t last_samples_in;
	uint64_t last_samples_out;
	const uint8_t *last_delta; /* gzipped delta pprof as sent */
	size_t last_delta_len;
	/* CRC-32 of last_delta, computed by the store when it copies a put and
	 * checked by every read of the response (a mismatch is PD_E_STATE, never
	 * the bytes). Rows written before schema 2 have none: has_delta_crc 0,
	 * their response is returned unchecked. Ignored on put. */
	uint32_t last_delta_crc;
	int has_delta_crc;

	uint64_t incarnation;    /* producer incarnation */
	int64_t last_time_nanos; /* time_nanos of the last applied profile */
	int64_t created_ms;      /* unix ms */
	int64_t last_seen_ms;    /* unix ms; TTL expiry uses it */
	uint64_t deltas_served;
	uint64_t resets;
	const char *last_reset_reason;

	/* Row version: 1 when created, +1 on every put or reset. Output only;
	 * see pd_store_put_if_async(). */
	uint64_t version;

	/* Owned storage behind the pointers after a get. */
	void *own_mem;
	size_t own_alloc;
} pd_store_row;

/* Frees what a get stored in rec and zeroes it. */
void pd_store_row_free(pd_store_row *rec);

/* ---- lifecycle ------------------------------------------------------------ */

/* Opens (creating if needed) the store and starts its writer thread. A
 * database with a newer schema or of another application is refused
 * (PD_E_STATE). */
int pd_store_open(const struct pd_store_opts *opts, pd_store **out, pd_err *err);
/* What pd_store_open would find, cheaply and changing nothing (pdeltad
 * --check): PostgreSQL: one connection (connect_timeout 5 s unless the
 * connection string sets one), the schema version and that the role may
 * read the tables (no schema yet is fine: the first open creates it); the
 * options the backend refuses (PostgreSQL: db_max_bytes; SQLite: a
 * db_max_bytes below the 512 KiB it needs). SQLite: no file is opened. */
int pd_store_probe(const struct pd_store_opts *opts, pd_err *err);

/* Commits everything still queued (running its completions), stops the
 * writer and closes all connections. NULL is a no-op. */
void pd_store_close(pd_store *s);

/* ---- reads ------------------------------------------------------------------ */

/* Reads one row. PD_E_NOTFOUND when absent, PD_E_STORE on a database error,
 * PD_E_STATE when the kept response fails its checksum (the row is corrupt:
 * rec_out is then not to be used; counted in responses_corrupt). */
int pd_store_get(pd_store *s, const char *tenant, const char *name, pd_store_row *rec_out,
		 pd_err *err);
/* The same with one blob only; the other is NULL and its length is set. A
 * stream load needs the state, a retry (DUPLICATE) only the kept response. */
enum { PD_STORE_GET_STATE = 1, PD_STORE_GET_RESPONSE = 2 };
int pd_store_get_state(pd_store *s, const char *tenant, const char *name, pd_store_row *rec_out,
		       pd_err *err);
int pd_store_get_response(pd_store *s, const char *tenant, const char *name,
			  pd_store_row *rec_out, pd_err *err);

/* ---- writes (asynchronous, group-committed) -------------------------------- */

/*
 * Completion of a write: rc is PD_OK, PD_E_STORE (transaction failed,
 * retryable), PD_E_LIMIT (the row is larger than the backend can store; not
 * retryable), or per operation PD_E_NOTFOUND / PD_E_STATE as documented
 * below. latency_ns is from the enqueue to the end of the transaction (what
 * the caller waited for durability). Runs on the writer thread.
 */
typedef void (*pd_store_done_fn)(void *arg, int rc, uint64_t latency_ns);

/*
 * Queues an upsert of rec (insert, or replace every field but created_ms).
 * Returns at once: PD_OK (done, which may be NULL, will be called exactly
 * once), or, without calling done: PD_E_BUSY (queue full or store closing:
 * backpressure, retryable), PD_E_LIMIT (this record alone is larger than
 * max_queue_bytes), PD_E_ARG (missing tenant/name), PD_E_NOMEM.
 * The same return codes apply to the other *_async functions.
 */
int pd_store_put_async(pd_store *s, const pd_store_row *rec, pd_store_done_fn done,
		       void *arg);

/*
 * Conditional put (compare-and-set on the row version): applied only if the
 * stored row's version equals expect_version, with 0 meaning "the row must
 * not exist". Otherwise the row is left alone and done gets PD_E_STATE (the
 * state this put was derived from is stale: drop any cached copy and
 * recompute). This lets a server that pipelines on not-yet-committed state
 * notice that an earlier write of the same stream failed, and keeps the
 * interface ready for several nodes sharing one database (DESIGN §6).
 */
int pd_store_put_if_async(pd_store *s, const pd_store_row *rec, uint64_t expect_version,
			  pd_store_done_fn done, void *arg);

/* Queues removal of a stream's row. done gets PD_E_NOTFOUND if there was none. */
int pd_store_delete_async(pd_store *s, const char *tenant, const char *name,
			  pd_store_done_fn done, void *arg);

/*
 * Queues a reset: the state is dropped (state_len 0, identities 0,
 * state_bytes 0, last_time_nanos 0), resets += 1, last_reset_reason = reason,
 * version += 1. The row itself stays: its sequence, last request hash and
 * last response are kept so idempotency and the sequence order survive an
 * admin reset; the next profile finds no state and is a BASELINE. done gets
 * PD_E_NOTFOUND if there is no such stream.
 */
int pd_store_reset_async(pd_store *s, const char *tenant, const char *name, const char *reason,
			 pd_store_done_fn done, void *arg);

/* Waits until every write queued before the call has completed (its
 * completion has returned). PD_E_ARG if called from the writer thread. */
int pd_store_flush(pd_store *s);

/*
 * TTL: deletes streams whose last_seen_ms < older_than_ms, in bounded chunks
 * (one queued write each, so the writer never holds its lock long and the
 * order with queued puts is kept). Blocks; *n_deleted gets the count.
 */
int pd_store_expire(pd_store *s, int64_t older_than_ms, uint64_t *n_deleted, pd_err *err);

/* ---- admin listings (read side, no blobs) --------------------------------- */

enum pd_store_sort {
	PD_STORE_SORT_NAME = 0,      /* tenant, name ascending */
	PD_STORE_SORT_LAST_SEEN = 1, /* most recently seen first */
};

/* Called per row; rec has state/last_delta NULL (their lengths are set) and
 * pointers valid only during the call. Return non-zero to stop. Must not call
 * back into the store. */
typedef int (*pd_store_row_fn)(void *arg, const pd_store_row *rec);

/* Lists rows of tenant (NULL = all tenants) whose name starts with prefix
 * (NULL or "" = all), in sort order, at most limit rows (0 = no limit). */
int pd_store_list(pd_store *s, const char *tenant, const char *prefix, enum pd_store_sort sort,
		  size_t limit, pd_store_row_fn fn, void *arg, pd_err *err);

/* Number of streams of tenant (NULL = all tenants). */
int pd_store_count_streams(pd_store *s, const char *tenant, uint64_t *out, pd_err *err);

/* Per-tenant aggregate: one call per tenant (only `tenant` if non-NULL),
 * in tenant order. Return non-zero to stop. */
typedef int (*pd_store_tenant_fn)(void *arg, const char *tenant, uint64_t streams,
				  uint64_t state_bytes);
int pd_store_tenant_totals(pd_store *s, const char *tenant, pd_store_tenant_fn fn, void *arg,
			   pd_err *err);

/* Runs the backend's full integrity check: PD_OK, or PD_E_STATE with the
 * first problem in err. */
int pd_store_integrity_check(pd_store *s, pd_err *err);

/* ---- metrics and tests ------------------------------------------------------ */

#define PD_STORE_HIST_N 10
/* Upper bounds (ms) of the latency buckets, Prometheus `le` style. */
extern const double pd_store_hist_bounds_ms[PD_STORE_HIST_N];

struct pd_store_hist {
	uint64_t count;
	uint64_t sum_ns;
	uint64_t max_ns;
	/* Cumulative: le[i] = observations <= pd_store_hist_bounds_ms[i]; the
	 * +Inf bucket is count. */
	uint64_t le[PD_STORE_HIST_N];
};

struct pd_store_stats {
	uint64_t commits;         /* successful transactions */
	uint64_t rows_written;    /* committed puts, deletes, resets, expired rows */
	uint64_t errors;          /* failed transactions (a batch counts once) */
	uint64_t writes_failed;   /* completions that got PD_E_STORE */
	uint64_t conflicts;       /* put_if mismatches (PD_E_STATE) */
	uint64_t busy_rejects;    /* *_async calls refused with PD_E_BUSY */
	uint64_t expired;         /* rows removed by pd_store_expire */
	uint64_t reads;           /* pd_store_get calls */
	uint64_t read_errors;     /* of which failed with PD_E_STORE */
	uint64_t responses_corrupt; /* reads whose kept response failed its checksum */
	uint64_t queue_len;       /* now: queued + in-flight writes */
	uint64_t queue_bytes;     /* now */
	uint64_t queue_len_peak;  /* since open */
	uint64_t batch_max;       /* largest group commit */
	struct pd_store_hist commit; /* BEGIN..COMMIT duration of successful commits */
	struct pd_store_hist wait;   /* enqueue..completion per write (what callers see) */
	char last_error[sizeof(((pd_err *)0)->msg)]; /* most recent store error, "" if none */
	int64_t last_error_ms;    /* its unix time, ms; 0 if none */
	uint64_t log_suppressed;  /* store error lines left out by the rate limit */
	int unreachable;          /* now: the backend lost its database (reconnecting) */
};

/* Store errors (failed transactions, failed reads) are logged with their
 * cause (the backend's message, errno text): the first at once, then at most
 * one line per PD_STORE_LOG_INTERVAL_MS carrying the count of the ones left
 * out; the first success after failed transactions is logged too. */
#define PD_STORE_LOG_INTERVAL_MS 10000

/* Consistent snapshot of the counters; thread-safe. */
void pd_store_stats(pd_store *s, struct pd_store_stats *out);

/* Test hook: the next n transactions fail as if COMMIT hit SQLITE_FULL (they
 * are rolled back, completions get PD_E_STORE). The environment variable
 * PDELTA_STORE_FAIL_COMMITS=n does the same at open, for whole-server tests. */
void pd_store_inject_fault(pd_store *s, unsigned n);

/* ---- backend interface (for pd_store_*.c only) ---------------------------- */

/*
 * What a backend implements. pd_store.c owns the queue, the writer thread,
 * group commit, completions, fault injection, metrics, the read-connection
 * pool (pd_store_pool below) and what a write's outcome means; a backend only
 * runs statements. Writer functions (begin..rollback) are called from the
 * writer thread only; read functions from any thread, concurrently.
 *
 * Inside a transaction, put/key_write/expire run one statement and report in
 * *changed (*n) the rows it touched; pd_store.c turns 0 into the
 * operation-level outcome (put_if version mismatch: PD_E_STATE; no such
 * stream: PD_E_NOTFOUND) and refuses a row larger than max_row with
 * PD_E_LIMIT before it reaches put. Any error code means the transaction
 * failed and must be rolled back (backends map database errors to
 * PD_E_STORE).
 */
enum pd_store_key_op {
	PD_STORE_KEY_DELETE, /* the row goes */
	PD_STORE_KEY_RESET,  /* the state goes (see pd_store_reset_async) */
};
struct pd_store_backend {
	const char *name;
	int (*open)(const struct pd_store_opts *o, void **be, pd_err *e);
	void (*close)(void *be);
	/* The backend's largest row (pd_store.c lowers it to max_row_bytes). */
	size_t (*max_row)(void *be);

	int (*begin)(void *be, pd_err *e);
	/* has_expect = 0: unconditional upsert; otherwise compare-and-set. */
	int (*put)(void *be, const pd_store_row *r, int has_expect, uint64_t expect_version,
		   int64_t now_ms, uint64_t *changed, pd_err *e);
	/* reason: for PD_STORE_KEY_RESET only. */
	int (*key_write)(void *be, enum pd_store_key_op op, const char *tenant, const char *name,
			 const char *reason, uint64_t *changed, pd_err *e);
	int (*expire)(void *be, int64_t older_than_ms, uint64_t max_rows, uint64_t *n,
		      pd_err *e);
	int (*commit)(void *be, pd_err *e);
	void (*rollback)(void *be);

	/* what: PD_STORE_GET_STATE and/or PD_STORE_GET_RESPONSE, the blobs to read */
	int (*get)(void *be, const char *tenant, const char *name, unsigned what,
		   pd_store_row *out, pd_err *e);
	int (*list)(void *be, const char *tenant, const char *prefix, enum pd_store_sort sort,
		    size_t limit, pd_store_row_fn fn, void *arg, pd_err *e);
	int (*count)(void *be, const char *tenant, uint64_t *out, pd_err *e);
	int (*tenant_totals)(void *be, const char *tenant, pd_store_tenant_fn fn, void *arg,
			     pd_err *e);
	int (*integrity_check)(void *be, pd_err *e);

	/* Optional, for backends with a database server (both or neither).
	 * healthy: any thread, never blocks; 0 while the database is unreachable.
	 * reconnect: the writer thread calls it when idle, about once a second
	 * while unhealthy (the backend keeps its own backoff) and every
	 * PD_STORE_PROBE_MS while healthy (the backend checks its connection);
	 * the error of a reconnect attempt that failed, else PD_OK. */
	int (*healthy)(void *be);
	int (*reconnect)(void *be, pd_err *e);
	/* Optional: pd_store_probe. */
	int (*probe)(const struct pd_store_opts *o, pd_err *e);
};

extern const struct pd_store_backend pd_store_sqlite_backend;
extern const struct pd_store_backend pd_store_pg_backend;

/* Does this store path name a PostgreSQL database? A URI with the scheme
 * postgres:// or postgresql://, or a libpq connection string: any word of the
 * form key=value ("password=x host=db", "connect_timeout=5 host=db"; libpq
 * reports an unknown key). A path that starts with '/' or '.' is a SQLite
 * file (write "./host=x" for such a file name); so is anything else.
 * pd_store_open refuses "postgres:" / "postgresql:" without "//". */
int pd_store_is_pg(const char *path);

/* Helpers shared by backends: make sure rec->own_mem holds n bytes
 * (amortised growth); returns PD_E_NOMEM on failure. */
int pd_store_row_reserve(pd_store_row *rec, size_t n, pd_err *e);

/*
 * The pool of read connections of a backend. A get returns an idle
 * connection, or opens a new one (the backend's open function) while fewer
 * than max are open, or waits for one to come back. Any thread; get may
 * block. A backend's connection struct starts with a pd_store_conn.
 */
typedef struct pd_store_conn {
	struct pd_store_conn *next; /* the pool's idle list */
} pd_store_conn;
typedef struct pd_store_pool pd_store_pool;
typedef int (*pd_store_conn_open_fn)(void *be, pd_store_conn **out, pd_err *e);
typedef void (*pd_store_conn_close_fn)(pd_store_conn *c);
/* NULL when out of memory. */
pd_store_pool *pd_store_pool_new(size_t max, pd_store_conn_open_fn open,
				 pd_store_conn_close_fn close, void *be);
/* Closes the idle connections; none may be borrowed. NULL is a no-op. */
void pd_store_pool_free(pd_store_pool *p);
/* An error only when a new connection could not be opened (its code). */
int pd_store_pool_get(pd_store_pool *p, pd_store_conn **out, pd_err *e);
/* Gives c back, or closes it when broken (a later get opens another). */
void pd_store_pool_put(pd_store_pool *p, pd_store_conn *c, int broken);
/* A backend's result row (pd_store_result), read through accessors, with its columns in this
 * order (both backends select them so); STATE and DELTA hold the blob, or
 * its length as an integer when that blob was not asked for, and DELTA_CRC
 * is only in reads of the response. */
enum pd_store_col {
	PD_COL_VERSION, PD_COL_TENANT, PD_COL_NAME, PD_COL_IDENT, PD_COL_STATE_BYTES,
	PD_COL_SEQ, PD_COL_HASH, PD_COL_STATUS, PD_COL_REASON, PD_COL_IN, PD_COL_OUT,
	PD_COL_INCARN, PD_COL_TIME, PD_COL_CREATED, PD_COL_SEEN, PD_COL_SERVED, PD_COL_RESETS,
	PD_COL_RESET_REASON, PD_COL_STATE, PD_COL_DELTA, PD_COL_DELTA_CRC
};
struct pd_store_result {
	void *ctx;
	/* bytes of a text or blob column (valid until the next call on the row) */
	const void *(*bytes)(void *ctx, int col, size_t *len);
	uint64_t (*u64)(void *ctx, int col); /* integer column, bit for bit */
	int (*is_null)(void *ctx, int col);
};
enum { PD_STORE_FILL_STATE = 1, PD_STORE_FILL_DELTA = 2 };
/* Fills rec from row: strings and the blobs named in `blobs` are copied to
 * rec's own memory; the other blobs only get their length. */
int pd_store_row_fill(pd_store_row *rec, const struct pd_store_result *row, int blobs, pd_err *e);

#endif
