/*
 * pdl_internal: what the modules of libpdelta share (never installed).
 *
 *   pdl_handle.c  options, handle, public entry points that are not
 *                 requests;
 *   pdl_conn.c    TCP + TLS connection, HELLO, frame I/O with poll()
 *                 deadlines, keepalive, fork detection, SIGPIPE guard;
 *   pdl_nodes.c   the server list: one connection per node, rendezvous
 *                 routing of streams, failover and probes of down nodes;
 *   pdl_stream.c  the per-stream table;
 *   pdl_error.c   the last error;
 *   pdl_backoff.c clock, jitter and backoff between retries;
 *   pdl_request.c delta requests over the network, the retry policy and the
 *                 public one-call and streaming API;
 *   pdl_local.c   the same requests run by the engine in process;
 *   pdl_admin.c   ADMIN commands.
 *
 * Calls go one way: handle, request and admin call conn, local, stream,
 * error and backoff; conn calls nodes, error and backoff; nodes calls conn
 * back for one node; local calls error and pdl_wall_ns. One request at a
 * time per handle, blocking calls, one connection per node (the current
 * node's lives in the handle, the others are parked in pdl_node).
 */
#ifndef PDL_INTERNAL_H
#define PDL_INTERNAL_H

#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "pd_buf.h"
#include "pd_engine.h"
#include "pd_err.h"
#include "pd_frame.h"
#include "pd_crc.h"
#include "pd_gz.h"
#include "pd_route.h"
#include "pd_slowdelta.h"
#include "pd_state.h"
#include "pdelta.h"

#define PDL_MAX_FRAME (1024u * 1024)            /* max_frame we announce in HELLO */
#define PDL_READ_SLACK (64u * 1024)             /* room for one more TLS read */
#define PDL_ADMIN_MAX_BODY (64u * 1024 * 1024)  /* cap of an admin JSON body */

/* One stream the handle has sent to: sequence numbers and local state. */
typedef struct pdl_stream {
	char *name;
	uint64_t last_seq;  /* highest seq used */
	uint64_t answered_seq; /* seq of the last complete answer (or pdelta_set_answered) */
	int has_answered;      /* sent as DELTA_BEGIN after_seq (version >= 3) */
	int is_local;       /* served in process (local mode or sticky fallback) */
	int seen_server;    /* the server answered for it at least once */
	/* Local mode: the PROTOCOL.md §8 record (I, S, H, R). */
	pd_state *state;
	int have_state;
	uint64_t inc, S;
	uint8_t H[PD_CONTENT_HASH_LEN];
	int64_t last_seen_ns;
	pd_buf R; /* last response body */
	pd_buf P; /* shadow verification: the last applied profile */
	int have_P;
	int R_status, R_reason;
	uint64_t R_in, R_out;
	struct pdl_stream *next;
} pdl_stream;

enum pdl_phase {
	PDL_IDLE = 0, /* no request */
	PDL_UPLOAD,   /* begun, being fed */
	PDL_BODY,     /* finished: result known, body to read */
	PDL_FAILED,   /* failed; pdelta_abort() or a new begin clears it */
};

/* The open request. */
typedef struct pdl_req {
	int phase;
	pdl_stream *st;
	uint64_t seq;
	int auto_seq;
	pdelta_replay_fn replay;
	void *rctx;
	const uint8_t *whole; /* pdelta_delta(): the input, replayable without a callback */
	size_t whole_len;
	uint64_t fed;         /* bytes fed by the caller (first pass) */
	uint8_t hash[PD_CONTENT_HASH_LEN];     /* SHA-256/16: protocol 1, replays, local mode */
	pd_crc128 crc;                         /* protocol 2's content hash, while fed */
	uint8_t crc_hash[PD_CONTENT_HASH_LEN]; /* ... and its result */
	int replaying;
	uint64_t refed;
	int local;
	unsigned attempts;
	int fail_code; /* PDL_FAILED: what every call returns */
	/* current network attempt */
	uint32_t id;
	int broken;      /* the attempt failed during the upload; error in h->err */
	int end_sent;    /* DATA_END (or CANCEL) sent: client half closed */
	int terminal;    /* terminal frame received: server half closed */
	int got_result;
	int stale_fixed; /* already resolved a SEQ_STALE once */
	uint64_t overload_delay_ms;
	pdelta_result meta;
	uint64_t body_seen;      /* body bytes received in this attempt */
	uint32_t crc_seen;
	uint64_t result_total;   /* RESULT.output_bytes of this attempt */
	uint64_t delivered;      /* body bytes handed to the caller */
	uint32_t crc_delivered;
	int first_result_kept;   /* meta holds the first attempt's RESULT */
	size_t local_pos;        /* local mode: read position in st->R */
	uint32_t crc_prefix;     /* CRC of the replayed bytes skipped so far */
	int restart_pending;     /* next read returns PDELTA_RESTART */
	int need_resend;         /* the body must be fetched again from its start */
	int moved;               /* fell back to local: relabel BASELINE first as moved */
	pdelta_error_info serr;  /* the error of a broken attempt / failed request */
	char smsg[512];
} pdl_req;

/* One node of the server list; its connection is parked here while another
 * node's is in the handle. */
typedef struct pdl_node {
	pd_route_node addr;
	unsigned char *link; /* PDL_LINK_SIZE bytes: the parked connection */
	unsigned fails;      /* consecutive connect failures / drains */
	uint64_t retry_ms;   /* down: not tried again before (0 = up) */
} pdl_node;

struct pdelta {
	/* options (strings owned) */
	char *server, *ca_file, *cert_file, *key_file, *token, *verify_host;
	char *client_name;
	pdelta_opts o;
	pd_type_override *eng_ovr; /* engine form of o.overrides (local mode) */

	SSL_CTX *ssl_ctx;
	EVP_MD *sha256;
	EVP_MD_CTX *md;

	/* nodes (pdl_nodes.c): the current node's host, port and "host:port" */
	const char *host, *port, *peer;
	pdl_node *nodes;
	size_t nnodes, cur;
	char *dns_name;        /* a lone name: re-resolved, its addresses are the nodes */
	uint64_t dns_next_ms;
	unsigned char *blank_link; /* a closed connection, to start a node with */
	const char *route_tenant, *route_stream; /* key of the next connection, NULL = none */
	char tenant_seen[PD_MAX_TENANT + 1];     /* the tenant HELLO_OK announced */
	pid_t pid;          /* process that owns the connections */

	/* connection (from fd to next_id: one node's link, see PDL_LINK_SIZE) */
	int fd;
	SSL *ssl;
	int ready;          /* HELLO_OK received */
	int draining;       /* GOODBYE received: no new request on this connection */
	int bye_shutdown;   /* that GOODBYE said the server stops; kept until looked at */
	int read_wants_write;
	int rx_eof;         /* the read side ended; reported once the buffered frames are used */
	char rx_err[256];
	int reused;         /* a request completed on this connection before */
	uint64_t last_tx_ms, last_rx_ms, ping_sent_ms;
	int ping_out;
	uint16_t version;
	uint8_t role;
	uint32_t srv_max_frame, max_inflight, keepalive_ms, idle_timeout_ms;
	uint64_t max_profile_bytes;
	char tenant[PD_MAX_TENANT + 1];
	char server_name[PD_MAX_SERVER_NAME + 1];
	pd_buf wbuf; /* frames not yet written */
	size_t woff;
	pd_buf rbuf; /* bytes read, frames not yet consumed */
	size_t rpos;
	size_t consume; /* size of the frame last returned by pdl_next_frame */
	pd_buf dbuf;    /* DATA payload being coalesced */
	uint32_t next_id;
#define PDL_LINK_SIZE (offsetof(struct pdelta, next_id) + sizeof(uint32_t) - offsetof(struct pdelta, fd))

	pdl_req r;
	pdl_stream *streams;

	/* local mode */
	pd_engine *eng;
	pd_state *scratch;
	pd_buf lout; /* local output being written */

	uint64_t incarnation;
	int inc_auto;
	uint64_t rng;
	pdelta_stats stats;

	/* shadow verification of local deltas (pdl_local.c) */
	int shadow, shadow_verdict;
	pd_slow_tally shadow_tally;
	pd_buf shadow_in; /* the profile being fed */
	int shadow_in_lost; /* no room for that copy: not checked */
	char shadow_msg[1024];

	/* last error */
	pdelta_error_info err;
	char errmsg[512];
};

/* ---- pdl_error.c ----------------------------------------------------------- */
/* Records an error on h and returns code. */
int pdl_fail(pdelta *h, int code, int retryable, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
/* Records a server ERROR frame. */
int pdl_fail_server(pdelta *h, const pd_msg_error *m);
void pdl_clear_error(pdelta *h);

/* ---- pdl_backoff.c --------------------------------------------------------- */
uint64_t pdl_now_ms(void);
/* Sleeps the backoff before attempt n (2 = first retry). */
void pdl_backoff(pdelta *h, unsigned attempt, uint64_t min_ms);
/* The jittered delay before attempt n (2 = first retry) between base and max. */
uint64_t pdl_backoff_delay(pdelta *h, unsigned attempt, uint64_t base_ms, uint64_t max_ms);
uint64_t pdl_random64(pdelta *h);
uint64_t pdl_strong_random64(void); /* never 0 */

/* ---- pdl_stream.c ---------------------------------------------------------- */
pdl_stream *pdl_stream_get(pdelta *h, const char *name, int create);
void pdl_stream_free(pdl_stream *st);

/* ---- pdl_handle.c ---------------------------------------------------------- */
int64_t pdl_wall_ns(void);

/* ---- pdl_conn.c ------------------------------------------------------------ */
int pdl_tls_setup(pdelta *h, char *errbuf, size_t errlen);
/* Connected and READY, or an error (no retry here). */
int pdl_conn_open(pdelta *h);
/* Ends the connection with GOODBYE PROTOCOL and records a non-retryable error. */
int pdl_proto_violation(pdelta *h, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* graceful: GOODBYE NORMAL + close_notify (best effort, never blocks long). */
void pdl_conn_close(pdelta *h, int graceful);
/* Drops the connection after a protocol violation (GOODBYE PROTOCOL). */
void pdl_conn_abort_proto(pdelta *h);
int pdl_connected(const pdelta *h);

/* Blocks SIGPIPE for the calling thread during library I/O. */
typedef struct pdl_sigpipe {
	sigset_t old;
	int was_pending;
} pdl_sigpipe;
void pdl_sigpipe_block(pdl_sigpipe *g);
void pdl_sigpipe_restore(const pdl_sigpipe *g);
int pdl_send_msg(pdelta *h, const pd_msg *m);
/* Writes everything queued (reading meanwhile). */
int pdl_flush(pdelta *h);
/* The next frame for a request (connection frames are handled inside).
 * wait = 0: PD_FRAME_NEED_MORE when none is buffered. m points into the read
 * buffer until the next call. */
int pdl_next_frame(pdelta *h, int wait, pd_msg *m);
uint32_t pdl_new_id(pdelta *h);

/* The current node's connection as it is: usable for a new request or not
 * (reads what arrived meanwhile: PING, GOODBYE). */
int pdl_conn_usable(pdelta *h);
/* One try on the current node: its connection if usable, else a new one. */
int pdl_conn_here(pdelta *h);
/* Drops the current connection without I/O (it belongs to a parent process). */
void pdl_conn_forget(pdelta *h);

/* ---- pdl_nodes.c ------------------------------------------------------------ */
/* Parses o.server into the node table (no I/O but the resolution of a lone name). */
int pdl_nodes_setup(pdelta *h, char *err, size_t errlen);
/* A usable connection to the node of the stream in route_tenant/route_stream,
 * failing over along its rendezvous order. */
int pdl_nodes_ready(pdelta *h);
/* Connects with the retry policy (not for requests: they count their own attempts). */
int pdl_nodes_ensure(pdelta *h);
/* One try: the open connection if it can take a request, else a new one (on
 * the only node, or on the stream's node in the list). */
int pdl_nodes_try(pdelta *h);
/* Closes every parked connection (graceful: GOODBYE) and frees the table. */
void pdl_nodes_free(pdelta *h);
/* In a forked child: drops the parked connections without I/O. */
void pdl_nodes_forked(pdelta *h);
/* Checks for a fork: in a child, drops the inherited connections without I/O. */
void pdl_fork_check(pdelta *h);

/* ---- pdl_local.c ------------------------------------------------------------ */
int pdl_local_begin(pdelta *h);
int pdl_local_feed(pdelta *h, const void *p, size_t n);
int pdl_local_finish(pdelta *h);
int pdl_local_read(pdelta *h, const void **p, size_t *n);
int pdl_local_onecall(pdelta *h, const void *p, size_t n);

#endif
