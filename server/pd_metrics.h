/*
 * pd_metrics: the counters of pdeltad's network layer, their Prometheus
 * text rendering (together with pd_service_stats), and the evhttp endpoint
 * that serves /metrics and /healthz on a separate port.
 *
 * The counters are plain integers: they are only touched on the I/O loop
 * thread (connections, listener, reload). The service keeps its own
 * counters (pd_service_stats_get(), thread-safe) and both are rendered
 * together at scrape time, in the Prometheus text format or, when the
 * scraper's Accept asks for application/openmetrics-text, in OpenMetrics
 * 1.0 (counter families named without _total, `# EOF` at the end). Besides
 * pdeltad_*: pdeltad_build_info and the standard process_* gauges (read from
 * /proc/self at scrape time).
 *
 * Per-tenant counters live in a table of metrics_tenants slots plus one
 * "_other": the first tenants seen get a slot each, later ones share
 * "_other", so the series count is bounded whatever the tenants file holds. Every close has a reason and every limit hit has
 * a kind; both are enums here so that the set of label values is fixed.
 */
#ifndef PD_METRICS_H
#define PD_METRICS_H

#include <stdbool.h>
#include <stdint.h>

#include "pd_err.h"
#include "pd_service.h"
#include "pdelta_proto.h"

struct event_base;
struct evbuffer;

/* Why a connection ended (label `reason` of pdeltad_connection_closes_total). */
enum pd_close_reason {
	PD_CLOSE_PEER,              /* client closed TCP/TLS */
	PD_CLOSE_IO,                /* socket or TLS error after the handshake */
	PD_CLOSE_TLS,               /* TLS handshake failed (bad cert, not TLS...) */
	PD_CLOSE_HANDSHAKE_TIMEOUT, /* no HELLO before the handshake deadline */
	PD_CLOSE_FRAME_TIMEOUT,     /* a frame did not complete in time */
	PD_CLOSE_IDLE,              /* nothing received for idle_timeout_ms */
	PD_CLOSE_PROTOCOL,          /* undecodable or illegal frame */
	PD_CLOSE_FRAME_TOO_LARGE,   /* header announced too many bytes */
	PD_CLOSE_AUTH,              /* authentication failed */
	PD_CLOSE_VERSION,           /* no common protocol version */
	PD_CLOSE_INFLIGHT,          /* more than max_inflight open requests */
	PD_CLOSE_OUTPUT_STUCK,      /* output above budget for write_timeout_ms */
	PD_CLOSE_GOODBYE,           /* client said GOODBYE, everything finished */
	PD_CLOSE_SHUTDOWN,          /* server drain (SIGTERM) finished */
	PD_CLOSE_DRAIN_TIMEOUT,     /* drain deadline hit with requests open */
	PD_CLOSE_REVOKED,           /* credentials gone after a reload */
	PD_CLOSE_NOMEM,             /* out of memory */
	PD_CLOSE_UNAUTH_EVICTED,    /* unauthenticated, closed to make room (oldest first) */
	PD_CLOSE__COUNT
};

/* Which limit was hit (label `limit` of pdeltad_limit_hits_total). */
enum pd_limit_kind {
	PD_LIM_MAX_CONNECTIONS,    /* accepted and closed at once */
	PD_LIM_FRAME_PREAUTH,      /* frame above max_frame_preauth */
	PD_LIM_FRAME,              /* frame above max_frame */
	PD_LIM_INFLIGHT,           /* more than max_inflight */
	PD_LIM_PROFILE_BYTES,      /* upload above max_input */
	PD_LIM_HANDSHAKE_DEADLINE, /* handshake_timeout_ms */
	PD_LIM_FRAME_DEADLINE,     /* frame_timeout_ms */
	PD_LIM_REQUEST_DEADLINE,   /* request_timeout_ms */
	PD_LIM_IDLE,               /* idle_timeout_ms */
	PD_LIM_OUTPUT_BUDGET,      /* reading paused: output above budget */
	PD_LIM_WRITE_TIMEOUT,      /* output stuck above budget too long */
	PD_LIM_DRAIN_TIMEOUT,      /* drain_timeout_ms */
	PD_LIM_INPUT,              /* an engine input cap (request limit/INPUT_LIMIT) */
	PD_LIM_STREAMS,            /* max_streams_per_tenant */
	PD_LIM_QUEUE,              /* max_queued_jobs (busy/OVERLOADED) */
	PD_LIM_QUEUE_BYTES,        /* max_queued_bytes (busy/OVERLOADED) */
	PD_LIM_UNAUTH,             /* max_unauth_connections (or a full server): oldest closed */
	PD_LIM_UNAUTH_SOURCE,      /* max_unauth_per_source: the source's oldest closed */
	PD_LIM_AUTH_BLOCKED,       /* a HELLO of a source blocked after failed authentications */
	PD_LIM_STORE_QUEUE,        /* store_max_queue / _bytes: the store's write queue full */
	PD_LIM__COUNT
};

const char *pd_close_reason_name(int reason);
const char *pd_limit_name(int kind);

/* One tenant's counters (loop thread only). */
typedef struct pd_tenant_counters {
	char name[PD_MAX_TENANT + 1];
	uint64_t requests;    /* RESULT frames sent (delta, baseline, duplicate) */
	uint64_t new_streams; /* of which BASELINE first: a stream new to the server */
	uint64_t request_errors;
	uint64_t bytes_in, bytes_out; /* frame bytes after authentication */
} pd_tenant_counters;

#define PD_TENANT_OTHER "_other"

typedef struct pd_metrics {
	uint64_t start_ms;              /* wall clock at start */
	uint64_t conns_current, conns_total, conns_authenticated;
	uint64_t closes[PD_CLOSE__COUNT];
	uint64_t handshakes_failed;     /* TLS handshakes that failed */
	uint64_t auth_failed;
	uint64_t auth_failed_delayed;   /* of auth_failed: answered after a delay */
	uint64_t auth_blocks;           /* sources blocked after auth_fail_block_after failures */
	uint64_t conns_unauth;          /* open connections not authenticated yet (gauge) */
	uint64_t results[3];            /* RESULT sent: DELTA, BASELINE, DUPLICATE */
	uint64_t request_errors[PD_E__COUNT]; /* request ERROR frames by code */
	uint64_t conn_errors[PD_E__COUNT];    /* connection ERROR frames by code */
	uint64_t admin_requests;
	uint64_t cancels;
	uint64_t bytes_in, bytes_out;   /* frame bytes (header + payload) */
	uint64_t frames_in, frames_out;
	uint64_t limit_hits[PD_LIM__COUNT];
	uint64_t reloads_ok, reloads_failed;
	uint64_t reloads_refused_empty; /* of reloads_failed: tenants file without credentials */
	uint64_t reloads_refused_cert;  /* of reloads_failed: certificate not usable (dates, usage, key) */
	uint64_t orphaned_completions;  /* job finished after its connection went away */
	/* Per-tenant table: tenants[0..n_tenants) named slots, tenants[max_tenants]
	 * is "_other". Owned by the server (pd_metrics_tenants_init/fini); a
	 * struct copy shares the table, it does not copy it. */
	pd_tenant_counters *tenants;
	size_t n_tenants, max_tenants;
} pd_metrics;

int pd_metrics_tenants_init(pd_metrics *m, size_t max_tenants, pd_err *e);
void pd_metrics_tenants_fini(pd_metrics *m);
/* The slot of tenant (added while there is room, else "_other"). */
pd_tenant_counters *pd_metrics_tenant(pd_metrics *m, const char *tenant);

/* What a scrape sees; filled by the server on the loop thread. */
typedef struct pd_metrics_view {
	pd_metrics net;
	pd_service_stats svc;
	bool draining;
	uint64_t tenants_credentials;
	double cert_days_left; /* the server certificate in service: days to its expiry */
} pd_metrics_view;

enum pd_metrics_format { PD_METRICS_PROMETHEUS, PD_METRICS_OPENMETRICS };

/* Appends the exposition of v to out, in format fmt. */
int pd_metrics_render(const pd_metrics_view *v, int fmt, struct evbuffer *out);

/* The HTTP endpoint: GET /metrics and GET /healthz (200 "ok" while serving,
 * 503 "draining" while draining). snapshot fills the view at each request. */
typedef void (*pd_metrics_snapshot_fn)(void *arg, pd_metrics_view *v);
typedef struct pd_metrics_http pd_metrics_http;

int pd_metrics_http_new(struct event_base *base, const char *listen, pd_metrics_snapshot_fn fn,
			void *arg, pd_metrics_http **out, pd_err *e);
void pd_metrics_http_free(pd_metrics_http *h);

#endif
