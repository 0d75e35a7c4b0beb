/*
 * pd_slowdelta: an independent, deliberately simple delta path and a
 * semantic comparison of profiles, to check the engine (pd_engine) against.
 *
 * Shares no code with the engine's index, hash or diff passes: it has its own
 * wire cursor, decodes a profile (gzip or raw) into plain tables, renders each
 * sample's identity (DESIGN.md §2.2) as a readable key string, sums samples of
 * equal key (qsort + linear merge) and subtracts the previous profile's sums
 * by key. Slow and obviously right: every row owns a malloc'd key.
 *
 * The key of a sample is its frames, leaf first, joined by ';', then its
 * labels (sorted, so label order does not matter) in braces:
 *   @0x4a12f0                      a location with an address (the address is
 *                                  its identity)
 *   [file|build_id]fn|sys|file:12  an address-0 location: its mapping (when it
 *                                  has one), then its lines joined by '+';
 *                                  a line without a function is !:12
 *   ?                              an address-0 location with neither
 *   {key:str:num:unit,...}         the labels
 * Delimiters inside strings are escaped with '\', control bytes as \xHH.
 *
 * Limits are those of the engine (pd_limits): the same input is refused the
 * same way (compressed and inflated size, samples, depth, labels, string
 * length, table sizes, sample types). One limit is the slow path's own: the
 * rendered frame and key text of a profile is capped at 16 times its raw
 * size plus 64 MiB (a long function name referenced by many lines and deep
 * stacks would otherwise blow up); over it, decoding fails with PD_E_LIMIT
 * where the engine, which hashes, succeeds. A verifier counts that as a
 * skipped check, not as a mismatch.
 */
#ifndef PD_SLOWDELTA_H
#define PD_SLOWDELTA_H

#include <stddef.h>
#include <stdint.h>

#include "pd_engine.h"
#include "pd_err.h"

/* A profile as keyed rows: values summed per key, rows sorted by key. */
typedef struct pd_slow_profile pd_slow_profile;

/* Decodes a profile (gzip or raw protobuf); duplicates are summed. */
int pd_slow_decode(const void *in, size_t n, const pd_limits *lim, pd_slow_profile **out,
		   pd_err *e);
void pd_slow_free(pd_slow_profile *p);

/*
 * The delta of cur against prev (NULL: the stream's first profile) under
 * req's policies (first_policy, overrides, incarnation, producer_start_ns,
 * last_seen_ns; output fields are ignored). prev_incarnation is the
 * incarnation the stream's state carries (0 = unknown). *out gets the result
 * and its status and reason, as the engine's pd_result would say.
 */
int pd_slow_delta(const pd_slow_profile *prev, const pd_slow_profile *cur, const pd_req *req,
		  uint64_t prev_incarnation, pd_slow_profile **out, pd_err *e);

/* Status and reason of a pd_slow_delta result (enum pd_status, pd_reason). */
int pd_slow_status(const pd_slow_profile *p);
int pd_slow_reason(const pd_slow_profile *p);
const char *pd_slow_why(const pd_slow_profile *p);

/* Rows, sample types (as "type/unit") and times, for tests and tools. */
size_t pd_slow_rows(const pd_slow_profile *p);
const char *pd_slow_key(const pd_slow_profile *p, size_t row);
uint32_t pd_slow_ncols(const pd_slow_profile *p);
const char *pd_slow_col(const pd_slow_profile *p, uint32_t col);
/* Value of key in column "type/unit"; 0 and *found = 0 when absent. */
int64_t pd_slow_value(const pd_slow_profile *p, const char *key, const char *col, int *found);
int64_t pd_slow_time_nanos(const pd_slow_profile *p);
int64_t pd_slow_duration_nanos(const pd_slow_profile *p);

/* One difference found by pd_slow_compare. Pointers stay valid while both
 * profiles live. */
typedef struct pd_slow_diff {
	const char *reason; /* "value", "missing", "extra", or a metadata field name */
	const char *col;    /* sample type "type/unit" ("" for metadata) */
	const char *key;    /* sample key ("" for metadata) */
	int64_t a, b;       /* the two values (0 when absent) */
	const char *sa, *sb; /* the two strings, for string metadata (else NULL) */
} pd_slow_diff;

/*
 * Semantic equality of two delta profiles (e.g. the engine's output, decoded
 * with pd_slow_decode, and pd_slow_delta's): the same sample types in order,
 * period type, period, time_nanos, duration_nanos, default_sample_type,
 * drop_frames, keep_frames, comments, and per sample type the same value for
 * every key. Returns the number of differences (0 = equal), the first max of
 * them in diffs (in key order). Status and reason are not compared (a decoded
 * profile has none).
 */
size_t pd_slow_compare(const pd_slow_profile *a, const pd_slow_profile *b, pd_slow_diff *diffs,
		       size_t max);

/*
 * The delta as an (uncompressed) pprof, written over cur, the profile
 * (gzip or raw) delta was computed from: cur's samples whose keys survive,
 * once per key, with the delta's values; cur's other fields as they were
 * (tables not compacted), time_nanos and duration_nanos the delta's. *out is
 * malloc'd (the caller frees it).
 */
int pd_slow_encode(const void *cur, size_t n, const pd_limits *lim, const pd_slow_profile *delta,
		   uint8_t **out, size_t *outn, pd_err *e);

/* pd_slow_decode of both (prev NULL: the first profile), then pd_slow_delta. */
int pd_slow_delta_raw(const void *prev, size_t prevn, const void *cur, size_t curn,
		      const pd_req *req, uint64_t prev_incarnation, const pd_limits *lim,
		      pd_slow_profile **out, pd_err *e);

/* What pd_slow_verify found. */
#define PD_SLOW_VERDICT_DIFFS 100
typedef struct pd_slow_verdict {
	pd_slow_profile *slow, *eng; /* the slow path's delta, the answer decoded */
	size_t n;                    /* sample and metadata differences (all of them) */
	pd_slow_diff diffs[PD_SLOW_VERDICT_DIFFS]; /* the first ones */
	const char *broken; /* else: "status", "input" (refused by the slow path), "output"
			       (the answer does not decode); NULL when only samples differ */
	char what[400];     /* what broken means here */
} pd_slow_verdict;

/*
 * Checks an engine answer: out (with the engine's status and reason) against
 * the slow path's delta of cur after prev (NULL: none) under req. Returns 1
 * (a mismatch: v says what), 0 (equal), -1 (not checked: a slow-path cap or
 * out of memory). Free v with pd_slow_verdict_free whatever it returned.
 */
int pd_slow_verify(const void *prev, size_t prevn, const void *cur, size_t curn, const void *out,
		   size_t outn, const pd_req *req, uint64_t prev_incarnation, int status, int reason,
		   const pd_limits *lim, pd_slow_verdict *v);
void pd_slow_verdict_free(pd_slow_verdict *v);

/* pd_slow_verify's results counted: 1 mismatch, 0 equal (both checked), -1 not checked. */
typedef struct pd_slow_tally {
	uint64_t checked, mismatches, unchecked;
} pd_slow_tally;
void pd_slow_tally_add(pd_slow_tally *t, int verdict);

/* One line describing d (key cut to fit cap). */
void pd_slow_diff_format(const pd_slow_diff *d, char *buf, size_t cap);

#endif
