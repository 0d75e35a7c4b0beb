/*
 * pdelta.h: libpdelta, the client library of the pdelta delta-profile service.
 *
 * An agent hands libpdelta the cumulative pprof profiles its process writes
 * (Go heap, block, mutex, ... as `runtime/pprof` writes them) and gets back
 * delta profiles: what happened since the previous profile of the same
 * stream. The work is done by a pdeltad server (TLS, proto/PROTOCOL.md) or,
 * in local mode, by the same delta engine running in this process.
 *
 * Two ways to send a profile:
 *
 *   - one call:  pdelta_delta(h, "api/heap", 0, buf, len, &res) gives the
 *     whole gzipped delta in res.data (free it with pdelta_result_free());
 *
 *   - streaming: pdelta_begin() -> pdelta_feed() ... -> pdelta_finish(), then
 *     pdelta_read() (pull) or pdelta_read_all() (callback) until the end: the
 *     agent never holds the whole profile nor the whole delta.
 *
 * Sequence numbers. Each request carries a per-stream sequence number. Pass 0
 * and the handle numbers the stream's requests 1, 2, 3, ... itself, or pass
 * your own (increasing) numbers. Each handle has a producer incarnation (a
 * random 64-bit value by default, or pdelta_opts.incarnation): the server
 * treats a new incarnation as a producer restart (BASELINE reset). If you
 * set a fixed incarnation that survives restarts and let the handle number
 * the requests, a "stale sequence" answer on the first request of a stream is
 * resolved by continuing after the server's last sequence.
 *
 * Retries. A request that fails on the transport (connection refused or
 * reset, server killed, TLS error on an established session, timeout) or
 * with an error the server marks retryable (busy, store failure, ...) is
 * sent again on a new connection after an exponential backoff with jitter,
 * with the SAME sequence number and the SAME bytes: if the server had
 * applied the first try it answers DUPLICATE with the stored response, so no
 * interval is ever lost or counted twice. Non-retryable errors (invalid
 * profile, authentication, stale sequence, ...) are returned at once.
 * pdelta_delta() holds the bytes and can always replay them. A streaming
 * request can only be replayed if pdelta_begin() was given a replay callback
 * (for a file: seek to 0 and feed it again); without one, a transport
 * failure during the upload or while waiting for the result is returned as a
 * retryable error, and it is up to you to send the same bytes with the same
 * sequence number again (res.seq / pdelta_last_seq() tell you which). While
 * the delta is being read, a retry continues where the reading stopped (the
 * replayed bytes already delivered are checked by CRC); if the server's
 * second answer differs (rare: the first one had not been committed and the
 * stream's state changed meanwhile), pdelta_read() returns PDELTA_RESTART and
 * the delta starts again from its first byte.
 *
 * Local mode. Without a server (pdelta_opts.server NULL or empty) every
 * request runs the engine in process, with the per-stream state kept in the
 * handle; outputs are byte-identical to the server's (same engine, gzip level
 * 1). With pdelta_opts.local_fallback = 1 a stream whose server stays
 * unreachable after all attempts is moved to local mode: its next response
 * is a BASELINE with reason "moved" (computed under the first-profile
 * policy), and the stream then stays local for the life of the handle (going
 * back to the server would count the local intervals twice). Local mode
 * keeps the last delta of each stream (to answer a duplicate like the
 * server does), so it holds whole deltas in memory.
 *
 * Security. TLS 1.2 or later; the server certificate and the host name (or
 * IP address) are ALWAYS verified, against pdelta_opts.ca_file or the
 * system's CA store. A token and/or a client certificate authenticate.
 *
 * Threads. One handle per thread: a handle is not thread-safe, handles are
 * independent. The library has no global state apart from OpenSSL's own
 * initialisation. SIGPIPE is blocked (for the calling thread only) while the
 * library writes to a socket, so a closed connection never kills the process.
 *
 * fork(). A child may keep using a handle inherited from its parent: the
 * library notices the new pid, drops the inherited connection WITHOUT
 * touching the parent's TLS session (no close_notify, no write; it only
 * closes its copy of the descriptor), reconnects lazily, and draws a new
 * random incarnation (unless one was set in the options): the child is a
 * new producer. The parent's connection is unaffected. Do not fork while a
 * call on the handle is in progress in another thread. A request that was
 * open (begun, not finished) at the fork is failed in the child.
 *
 * Errors. Every function returning int returns PDELTA_OK (0) or a
 * pdelta_errcode; pdelta_last_error() says what went wrong in words, and
 * pdelta_last_error_info() gives the code, whether retrying can help and the
 * server's detail.
 */
#ifndef PDELTA_H
#define PDELTA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The same as PD_VERSION (common/pd_version.h; checked by test_client_local). */
#define PDELTA_VERSION "1.2.0"

/* Error codes. 1..14 are the protocol's codes (PROTOCOL.md §7). */
typedef enum pdelta_errcode {
	PDELTA_OK = 0,
	PDELTA_E_NOMEM = 1,      /* out of memory (retryable) */
	PDELTA_E_MALFORMED = 2,  /* the profile is not a valid pprof, or a bad frame */
	PDELTA_E_LIMIT = 3,      /* a limit was exceeded (profile too large, ...) */
	PDELTA_E_IO = 4,         /* connection failed or lost (retryable) */
	PDELTA_E_STATE = 5,      /* stored state unusable */
	PDELTA_E_ARG = 6,        /* bad argument, bad option, call out of order */
	PDELTA_E_AUTH = 7,       /* authentication failed / admin role needed */
	PDELTA_E_SEQ = 8,        /* stale or conflicting sequence number */
	PDELTA_E_BUSY = 9,       /* server overloaded or draining (retryable) */
	PDELTA_E_STORE = 10,     /* server's state store failed (retryable) */
	PDELTA_E_PROTO = 11,     /* protocol violation */
	PDELTA_E_NOTFOUND = 12,  /* admin: no such stream / tenant */
	PDELTA_E_TIMEOUT = 13,   /* deadline exceeded (retryable) */
	PDELTA_E_INTERNAL = 14,  /* server or library bug */
	PDELTA_E_TLS = 15,       /* TLS setup or certificate verification failed */
	PDELTA_RESTART = 16,     /* pdelta_read(): not an error; discard the delta
				    bytes read so far, the delta starts again */
} pdelta_errcode;

/* Response status and BASELINE reasons (the protocol's values). */
enum { PDELTA_DELTA = 1, PDELTA_BASELINE = 2, PDELTA_DUPLICATE = 3 };
enum {
	PDELTA_REASON_NONE = 0,
	PDELTA_REASON_FIRST = 1,   /* first profile of the stream */
	PDELTA_REASON_RESET = 2,   /* producer restarted or counters went back */
	PDELTA_REASON_EVICTED = 3, /* the server had forgotten the stream's state */
	PDELTA_REASON_MOVED = 4,   /* state held elsewhere (or local fallback) */
	PDELTA_REASON_STATE_LOST = 5, /* the server's state is older than our last answer
				       * (e.g. restored from a backup): output empty, nothing
				       * counted twice; protocol version 3 */
};
/* First-profile policy (DESIGN §2.5) and per-sample-type policies. */
enum { PDELTA_FIRST_KEEP = 0, PDELTA_FIRST_DROP = 1, PDELTA_FIRST_AUTO = 2 };
enum { PDELTA_POLICY_DELTA = 1, PDELTA_POLICY_GAUGE = 2 };
enum { PDELTA_ROLE_AGENT = 1, PDELTA_ROLE_ADMIN = 2 };

typedef struct pdelta_override {
	const char *type; /* sample type name, e.g. "inuse_space" */
	int policy;       /* PDELTA_POLICY_DELTA or PDELTA_POLICY_GAUGE */
} pdelta_override;

/* Options: call pdelta_opts_init() first, then set what you need. Strings
 * and the override array are copied by pdelta_new(). */
typedef struct pdelta_opts {
	const char *server;      /* "host:port" or "[v6addr]:port"; NULL/"" = local mode;
				    or "h1:p1,h2:p2,..." (up to 64 nodes), or a name with
				    several addresses: each stream goes to one node by
				    rendezvous hashing of tenant + stream and moves to the
				    next while it is down or draining (one connection per
				    node used) */
	const char *ca_file;     /* CA bundle (PEM) for the server; NULL = system store */
	const char *cert_file;   /* client certificate chain (PEM) for mTLS; NULL = none */
	const char *key_file;    /* its private key; NULL = in cert_file */
	const char *token;       /* tenant token; NULL = client certificate only */
	const char *verify_host; /* SNI and name checked in the server's certificate;
				    NULL = the host part of server */
	const char *client_name; /* shown in server logs; NULL = "libpdelta" */
	unsigned connect_timeout_ms; /* TCP + TLS + HELLO (default 5000) */
	unsigned io_timeout_ms;      /* longest wait for the next frame of an answer, or
					for a write to progress (default 30000) */
	unsigned max_attempts;       /* tries per request, the first included (default 5) */
	unsigned backoff_base_ms;    /* delay before the first retry (default 100) */
	unsigned backoff_max_ms;     /* cap of the exponential backoff (default 5000) */
	int local_fallback;          /* 1: run in process when the server is unreachable */
	int first_policy;            /* PDELTA_FIRST_* (default KEEP) */
	const pdelta_override *overrides; /* per-sample-type policy, at most 32 */
	size_t noverrides;
	uint64_t incarnation;       /* producer incarnation; 0 = random per handle/process */
	int64_t producer_start_ns;  /* producer start (unix ns) for first=auto; 0 = unknown */
	size_t chunk_bytes;         /* upload chunk (default 65536) */
	size_t max_result_bytes;    /* largest delta pdelta_delta() holds (default 256 MiB) */
} pdelta_opts;

typedef struct pdelta pdelta;

void pdelta_opts_init(pdelta_opts *o);

/* Creates a handle (no connection yet: the first request connects). On
 * failure *out is NULL and errbuf (if given) says why. */
int pdelta_new(const pdelta_opts *o, pdelta **out, char *errbuf, size_t errlen);
/* Ends the connection politely (GOODBYE) and frees everything. NULL is ok. */
void pdelta_free(pdelta *h);
/* Connects now (with the retry policy) instead of at the first request. */
int pdelta_connect(pdelta *h);
/* Whether the handle has no server (local mode). */
int pdelta_is_local(const pdelta *h);
/* The tenant and role the server announced (after a connection; "" / 0 before). */
const char *pdelta_tenant(const pdelta *h);
int pdelta_role(const pdelta *h);
uint64_t pdelta_incarnation(const pdelta *h);
/* The last sequence number used for stream (0 if none). */
uint64_t pdelta_last_seq(const pdelta *h, const char *stream);
/* Declares that seq was the last answered request of stream (a new process
 * continuing a stream: `pdelta send --after SEQ`). Also sets the next
 * automatic seq after it. Sent to the server (protocol version 3) so that it
 * can tell a state older than that (BASELINE state-lost) from a normal delta. */
int pdelta_set_answered(pdelta *h, const char *stream, uint64_t seq);

typedef struct pdelta_result {
	int status;      /* PDELTA_DELTA, PDELTA_BASELINE or PDELTA_DUPLICATE */
	int reason;      /* PDELTA_REASON_* (NONE for a DELTA) */
	int orig_status; /* = status, or for a DUPLICATE the replayed response's */
	uint64_t seq;    /* the request's sequence number (set even on failure) */
	uint64_t samples_in, samples_out;
	uint64_t bytes_in;  /* uploaded profile bytes */
	uint64_t bytes_out; /* delta bytes (pdelta_delta; streaming: once read) */
	unsigned char *data; /* pdelta_delta() only: the gzipped delta pprof */
	size_t len;
	unsigned attempts; /* tries it took (1 = no retry) */
	int local;         /* computed in process */
} pdelta_result;

/* Frees res->data; the struct can be reused. */
void pdelta_result_free(pdelta_result *res);

/* One call: sends profile[0..len) (gzipped or raw pprof) as the next
 * profile of stream (seq 0 = next sequence number of the stream) and
 * returns the gzipped delta in out->data. */
int pdelta_delta(pdelta *h, const char *stream, uint64_t seq, const void *profile, size_t len,
		 pdelta_result *out);

/* ---- streaming ------------------------------------------------------------ */

/* Replays a streaming request's input: feed the SAME bytes again from the
 * first one, with pdelta_feed(h, ...), then return 0 (non-zero: give up).
 * The library checks length and SHA-256 against the first upload. */
typedef int (*pdelta_replay_fn)(void *ctx, pdelta *h);
/* Receives the delta in chunks; (NULL, 0) means "discard what you got so far,
 * the delta starts again" (PDELTA_RESTART). Return non-zero to stop. */
typedef int (*pdelta_sink_fn)(void *ctx, const void *p, size_t n);

/* Opens a request (one at a time per handle). replay may be NULL (see the
 * retry notes above). */
int pdelta_begin(pdelta *h, const char *stream, uint64_t seq, pdelta_replay_fn replay, void *ctx);
/* The next chunk of the profile, any size. */
int pdelta_feed(pdelta *h, const void *p, size_t n);
/* Ends the upload and waits for the server's answer; out gets status and
 * counts (data stays NULL: read the delta with pdelta_read*). */
int pdelta_finish(pdelta *h, pdelta_result *out);
/* Pulls the next chunk of the delta: *p and *n are valid until the next call on
 * h. *n == 0 means the end (the delta is complete and verified) and closes
 * the request. Returns PDELTA_RESTART as described above. */
int pdelta_read(pdelta *h, const void **p, size_t *n);
/* Pushes the whole delta through sink; closes the request. */
int pdelta_read_all(pdelta *h, pdelta_sink_fn sink, void *ctx);
/* The open (or last) request's status and counts, e.g. after a restart. */
int pdelta_result_get(const pdelta *h, pdelta_result *out);
/* Abandons the open request, if any (the server may still apply it). */
void pdelta_abort(pdelta *h);

/* ---- admin (needs an admin credential) ---------------------------------- */

/* Runs an admin command (PROTOCOL.md §11). kv: NULL-terminated key, value
 * pairs, e.g. {"tenant", "t1", "name", "api/heap", NULL}; NULL for none. On
 * success *json is the server's JSON document (NUL-terminated, free() it)
 * and *len its length. */
int pdelta_admin(pdelta *h, const char *command, const char *const *kv, char **json, size_t *len);

/* ---- errors and counters -------------------------------------------------- */

const char *pdelta_strerror(int code);
/* Whether a code is retryable by default (a server error's flag overrides
 * it: see pdelta_last_error_info). */
int pdelta_retryable(int code);
/* What went wrong in the last failed call on h ("" if nothing did). */
const char *pdelta_last_error(const pdelta *h);

typedef struct pdelta_error_info {
	int code;        /* pdelta_errcode */
	int retryable;   /* retrying the same request can help */
	int from_server; /* the server sent this error (ERROR frame) */
	int detail;      /* the server's detail (PROTOCOL.md §7), 0 = none */
	uint64_t value;  /* the detail's value, e.g. the last applied seq */
} pdelta_error_info;
void pdelta_last_error_info(const pdelta *h, pdelta_error_info *out);

const char *pdelta_status_name(int status); /* "DELTA", "BASELINE", "DUPLICATE" */
const char *pdelta_reason_name(int reason); /* "-", "first", "reset", "evicted", "moved" */

typedef struct pdelta_stats {
	uint64_t connects;  /* connections established */
	uint64_t requests;  /* requests completed */
	uint64_t retries;   /* requests sent again */
	uint64_t duplicates; /* DUPLICATE answers */
	uint64_t resumed;   /* retries that continued a partly read delta */
	uint64_t restarts;  /* PDELTA_RESTART signalled */
	uint64_t fallbacks; /* streams moved to local mode */
	uint64_t forks;     /* forks detected */
	uint64_t bytes_sent, bytes_received; /* profile / delta bytes */
} pdelta_stats;
void pdelta_stats_get(const pdelta *h, pdelta_stats *out);

/* Shadow verification of local deltas: with it on, every delta the handle
 * computes in process is also computed by an independent slow path and the
 * two are compared (semantically). A mismatch does not fail the request (the
 * answer stays the engine's); it is counted and described here. Costs about
 * ten times the engine's time and keeps each stream's previous profile. */
int pdelta_set_shadow(pdelta *h, int on);
enum { PDELTA_SHADOW_NONE = 0, PDELTA_SHADOW_AGREED = 1, PDELTA_SHADOW_MISMATCH = 2 };
/* The verdict on the handle's last local delta (NONE: off, a DUPLICATE, not
 * checked), and the description of the last mismatch ("" when none). */
int pdelta_shadow_verdict(const pdelta *h);
const char *pdelta_shadow_last(const pdelta *h);
void pdelta_shadow_counts(const pdelta *h, uint64_t *checked, uint64_t *mismatches,
			  uint64_t *unchecked);

/* ---- pull mode: the scrape loop (`pdelta scrape`) ------------------------
 * Takes cumulative profiles from Go services over HTTP(S) (their
 * net/http/pprof endpoints, through libcurl), turns each into a delta (through
 * pdeltad, or in process) and delivers it: files, and/or an HTTP POST to a
 * Pyroscope-compatible /ingest endpoint through an on-disk spool. One stream
 * per target and profile type, named PREFIX NAME/TYPE. Sequence numbers (with
 * when each one's profile was scraped: where the next push's window starts)
 * and the incarnation are kept in a state file, and each profile is written to a
 * pending file before it is sent, so a restarted agent resends an unanswered
 * request with the same sequence number (answered DUPLICATE if it had been
 * applied) and continues its streams: no interval lost or counted twice. */

typedef struct pdelta_scrape pdelta_scrape;

/* One target. Strings are copied by pdelta_scrape_new(). */
typedef struct pdelta_scrape_target {
	const char *name;        /* stream name part; [A-Za-z0-9._-] */
	const char *url;         /* base URL, e.g. http://10.0.0.7:6060 */
	const char *path_prefix; /* NULL = "/debug/pprof" */
	const char *labels;      /* "k=v,k2=v2" for the push sink; NULL = none. Keys
				    [A-Za-z_][A-Za-z0-9_]*, not "__..." nor pdelta_type; values
				    without , } = " or control characters; at most 2 KiB */
	const char *ca_file;     /* CA bundle for an https target; NULL = system */
	const char *bearer_token; /* Authorization: Bearer; NULL = none */
	const char *basic_auth;   /* "user:password"; NULL = none */
	unsigned timeout_ms;      /* 0 = the loop's default */
	size_t max_body;          /* largest profile accepted; 0 = the loop's default */
} pdelta_scrape_target;

typedef void (*pdelta_scrape_log_fn)(void *ctx, int is_error, const char *line);

typedef struct pdelta_scrape_opts {
	pdelta_opts delta;        /* server (or none: local mode), TLS, token, policies;
				     incarnation comes from the state file */
	const pdelta_scrape_target *targets; /* from the command line */
	size_t ntargets;
	const char *targets_file; /* one target a line (see `pdelta scrape --help`);
				     re-read when it changes; NULL = none */
	const char *types;        /* "heap,mutex,block" (default); also allocs, goroutine, cpu */
	const char *stream_prefix; /* prepended to NAME/TYPE; NULL = "" */
	unsigned interval_ms;     /* between two scrapes of a stream (default 60000) */
	unsigned count;           /* rounds per stream, 0 = until pdelta_scrape_stop() */
	unsigned concurrency;     /* scrapes in flight (default 8) */
	unsigned cpu_seconds;     /* ?seconds= of a cpu scrape (default 10) */
	unsigned timeout_ms;      /* default per-target HTTP timeout (default 10000) */
	size_t max_body;          /* default per-target body cap (default 64 MiB) */
	const char *state_file;   /* NULL = no state across runs (a temporary one) */
	const char *out_dir;      /* sink: DIR/NAME/TYPE/NNN.pb.gz; NULL = none */
	unsigned keep;            /* out_dir retention per stream, 0 = all */
	const char *save_input_dir; /* the cumulative profiles as scraped, same layout */
	const char *push_url;     /* sink: base URL of a Pyroscope-compatible server */
	const char *push_token;   /* Authorization: Bearer for the push; NULL = none */
	const char *spool_dir;    /* push spool; NULL = STATE_FILE.spool (or temporary) */
	uint64_t spool_max_bytes; /* oldest dropped (counted) beyond it (default 256 MiB) */
	unsigned push_timeout_ms; /* per POST (default 10000) */
	int push_first;           /* also push BASELINE first/evicted/moved (default 0: only
				     deltas and BASELINE resets are pushed) */
	pdelta_scrape_log_fn log; /* one line per delivery / error; NULL = stdout/stderr */
	void *log_ctx;
	uint64_t state_grace_ms;  /* a removed target's state entries are dropped after this
				     (default 24 h); the state file is locked (STATE.lock) */
	int shadow; /* local deltas checked by the slow path (pdelta_set_shadow) */
} pdelta_scrape_opts;

void pdelta_scrape_opts_init(pdelta_scrape_opts *o);
/* Checks the options, loads the state file, starts nothing yet. */
int pdelta_scrape_new(const pdelta_scrape_opts *o, pdelta_scrape **out, char *errbuf, size_t errlen);
/* Runs the loop in the calling thread (workers in their own) until every
 * stream has done `count` rounds and the spool is empty or its backend stays
 * down, or until pdelta_scrape_stop(). PDELTA_OK, or the first setup error. */
int pdelta_scrape_run(pdelta_scrape *s);
/* Asks the loop to finish the scrapes in flight and return. Async-signal-safe. */
void pdelta_scrape_stop(pdelta_scrape *s);
/* What the last (or current) pdelta_scrape_run() did: stream rounds (one
 * scrape of one target and type) that delivered their delta or had nothing to
 * deliver, rounds where the scrape, the delta request or a sink failed, and
 * deltas the push sink did not deliver: refused for good or dropped from a
 * full spool during the run, or still in the spool (for the next run). */
void pdelta_scrape_outcome(pdelta_scrape *s, uint64_t *rounds_ok, uint64_t *rounds_failed,
			   uint64_t *undelivered);
/* The loop's counters in the Prometheus text format (NUL-terminated, free()). */
char *pdelta_scrape_metrics(pdelta_scrape *s);
void pdelta_scrape_free(pdelta_scrape *s);

#ifdef __cplusplus
}
#endif

#endif
