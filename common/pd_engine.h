/*
 * pd_engine: the delta engine. Cumulative pprof in, delta pprof out.
 *
 * No object graph: the input is inflated once into a reusable buffer, then
 * field-selective passes run over the protobuf bytes (index and write are
 * the pprof codec's, pd_pprof.h):
 *   index  - spans of every top-level field, validated tables, id maps;
 *   hash   - 128-bit identity of every sample (pd_hash.h), duplicates summed,
 *            the next state built;
 *   diff   - delta columns minus the previous state, reset detection;
 *   mark   - locations/functions/mappings/strings the kept samples use;
 *   write  - minimal profile, string table compacted, deflated while written
 *            and handed to the caller's sink in compressed chunks.
 * Semantics are those of DESIGN.md §2 (see README "Delta semantics").
 *
 * The engine does no I/O and keeps no per-stream data: the caller passes the
 * previous state (read only) and a state object that receives the next
 * state. On any error nothing has been sent to the sink (all validation
 * happens before the write pass) and the previous state is untouched.
 * One engine per thread; buffers are reused, so steady state does no malloc.
 */
#ifndef PD_ENGINE_H
#define PD_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "pd_err.h"
#include "pd_gz.h"
#include "pd_limits.h"
#include "pd_state.h"

/* ---- request / result ---------------------------------------------------- */
enum pd_first { PD_FIRST_KEEP = 0, PD_FIRST_DROP = 1, PD_FIRST_AUTO = 2 };
enum pd_policy { PD_POLICY_DELTA = 0, PD_POLICY_GAUGE = 1 };
enum pd_status { PD_STATUS_DELTA = 0, PD_STATUS_BASELINE = 1, PD_STATUS_DUPLICATE = 2 };
enum pd_reason {
	PD_REASON_NONE = 0,
	PD_REASON_FIRST = 1,
	PD_REASON_RESET = 2,
	PD_REASON_EVICTED = 3,
	PD_REASON_MOVED = 4,
	PD_REASON_STATE_LOST = 5 /* the server's state is older than the client's last answer (service) */
};

typedef struct pd_type_override {
	const char *name; /* sample type name, e.g. "alloc_space" */
	int policy;       /* enum pd_policy */
} pd_type_override;

typedef struct pd_req {
	int first_policy; /* enum pd_first */
	const pd_type_override *overrides;
	size_t noverrides;
	uint64_t incarnation;      /* producer incarnation, 0 = unknown */
	int64_t producer_start_ns; /* for first=auto, 0 = unknown */
	int64_t last_seen_ns;      /* stream's last sighting (server), 0 = never */
	int gzip_level;            /* 1..9, 0 = raw protobuf output */
	size_t chunk;              /* compressed bytes per sink call (0 = 64 KiB) */
} pd_req;

void pd_req_default(pd_req *r);

typedef struct pd_result {
	int status; /* enum pd_status */
	int reason; /* enum pd_reason */
	char why[96];
	uint32_t samples_in, samples_unique, samples_out;
	uint32_t identities;
	uint64_t bytes_in, bytes_raw, bytes_out_raw, bytes_out;
	uint64_t ns_inflate, ns_index, ns_hash, ns_diff, ns_encode, ns_deflate;
	int64_t time_nanos, duration_nanos;
} pd_result;

const char *pd_status_name(int status);
const char *pd_reason_name(int reason);

typedef struct pd_engine pd_engine;

pd_engine *pd_engine_new(const pd_limits *lim);
void pd_engine_free(pd_engine *eng);

/* Streaming input: begin, feed chunks (gzip or raw, detected), finish. */
void pd_engine_begin(pd_engine *eng);
int pd_engine_feed(pd_engine *eng, const void *p, size_t n, pd_err *e);
int pd_engine_finish(pd_engine *eng, const pd_state *prev, pd_state *next, const pd_req *req,
		     pd_sink_fn sink, void *sink_ctx, pd_result *res, pd_err *e);
/* One call; a raw (non-gzip) input is read in place, without a copy. */
int pd_engine_run(pd_engine *eng, const void *in, size_t n, const pd_state *prev, pd_state *next,
		  const pd_req *req, pd_sink_fn sink, void *sink_ctx, pd_result *res, pd_err *e);

/* The indexed input and its sample values after the hash pass, for readers
 * of a profile that share the engine's validation and identities (inspect).
 * Valid until the engine's next request. */
struct pd_pprof;
typedef struct pd_engine_view {
	const struct pd_pprof *ix;
	const int64_t *vals;  /* ix->nst per sample; duplicates summed into the first */
	const uint8_t *first; /* 1 = first sample of its identity */
} pd_engine_view;
/* Loads, indexes and hashes one input (samples into tmp, a throw-away state);
 * no diff, no output. */
int pd_engine_index_hashed(pd_engine *eng, const void *in, size_t n, pd_state *tmp,
			   pd_engine_view *v, pd_err *e);

/* Bytes the engine holds in its growable buffers and arrays (they keep their
 * size between requests: steady state does no malloc). */
size_t pd_engine_mem_bytes(const pd_engine *eng);
/* When the engine holds more than keep bytes (one large input, a gzip bomb
 * stopped at max_inflated), frees all of it; the next request regrows what it
 * needs. Returns the bytes released (0 when under keep). */
size_t pd_engine_trim(pd_engine *eng, size_t keep);

#endif
