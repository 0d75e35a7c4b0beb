/*
 * pd_shadow: shadow verification of pdeltad's deltas. A sampled share of
 * streams has every delta computed twice: by the engine (the answer) and,
 * later, on the shadow thread, by the independent slow path (pd_slowdelta),
 * and the two are compared semantically.
 *
 * Sampling is per stream: a stream is watched when a 64-bit FNV-1a hash of
 * "tenant\0stream" falls under rate_ppm of the hash space, so a stream is
 * either watched or not, the same after a restart, and every delta of a
 * watched stream is checked (a check needs the previous upload).
 *
 * What it owns: per watched stream, the previous raw upload (refcounted,
 * shared with queued checks), and a bounded FIFO of checks. The worker that
 * finished a delta hands the case over (pd_shadow_offer: copies of the
 * upload and of the engine's output) before the answer goes out; nothing
 * else runs on the request's path. Over the memory budget (max_bytes: kept
 * uploads, queued outputs; least recently used streams give their upload up
 * first), over max_upload, or with the queue full, the check is skipped and
 * counted by reason; it never waits.
 *
 * A mismatch is counted (by sample type and reason of each difference),
 * logged once per stream with its first differences, and, when dir is set,
 * written to a quarantine case directory dir/case-<ms>-<n>/ (prev.pb.gz,
 * cur.pb.gz, engine.pb.gz, slow.pb, slow.txt, diff.txt, case.txt); the
 * oldest cases are removed past dir_max_files or dir_max_bytes. With
 * fallback > 0, the stream's next `fallback` deltas are answered by the slow
 * path (pd_shadow_fallback), the engine still running so that its state
 * stays right for when the stream returns to it.
 *
 * Threads: one shadow thread; the offer, fallback and stats calls may come
 * from any thread. One mutex, a leaf (nothing else is locked under it).
 */
#ifndef PD_SHADOW_H
#define PD_SHADOW_H

#include <stddef.h>
#include <stdint.h>

#include "pd_engine.h"
#include "pd_err.h"
#include "pd_gz.h"

typedef struct pd_shadow_opts {
	uint32_t rate_ppm;   /* 0..1000000 (0 = off) */
	uint64_t max_bytes;  /* kept uploads + queued outputs */
	uint64_t max_upload; /* larger uploads are not checked */
	size_t max_queue;    /* checks waiting for the shadow thread */
	const char *dir;     /* quarantine directory; NULL or "" = none */
	uint64_t dir_max_files, dir_max_bytes;
	uint32_t fallback; /* slow-path answers after a mismatch */
	pd_limits limits;  /* the slow path's input caps */
} pd_shadow_opts;

enum pd_shadow_skip {
	PD_SHADOW_SKIP_BUDGET, /* over max_bytes */
	PD_SHADOW_SKIP_SIZE,   /* upload over max_upload */
	PD_SHADOW_SKIP_LIMIT,  /* queue full, or a slow-path input cap */
	PD_SHADOW_SKIP_STATE,  /* no previous upload matching the engine's state */
	PD_SHADOW_SKIP__COUNT
};

const char *pd_shadow_skip_name(int reason);

#define PD_SHADOW_KINDS 32 /* distinct (sample type, reason) series; more: "_other" */

typedef struct pd_shadow_kind {
	char col[64];    /* "type/unit", "" for metadata, "_other" past the table */
	char reason[24]; /* "value", "missing", "extra", a metadata field, "status" */
	uint64_t n;
} pd_shadow_kind;

typedef struct pd_shadow_stats {
	uint64_t verified;   /* checks run to the end (equal or not) */
	uint64_t mismatches; /* of those, not equal */
	uint64_t skipped[PD_SHADOW_SKIP__COUNT];
	uint64_t bytes_held, bytes_held_max, streams, queued;
	uint64_t fallback_answers, fallback_failed;
	uint64_t quarantined, quarantine_failed, quarantine_removed;
	uint64_t cpu_ns; /* shadow thread CPU time spent in checks */
	pd_shadow_kind kinds[PD_SHADOW_KINDS];
	size_t nkinds;
} pd_shadow_stats;

/* One applied delta, as the service hands it over. */
typedef struct pd_shadow_case {
	const char *tenant, *stream;
	uint64_t seq;
	uint64_t prev_seq;         /* sequence of the state the engine diffed against (0 = none) */
	uint64_t prev_incarnation; /* incarnation that state carried */
	const pd_req *req;         /* as the engine ran it */
	int status, reason;        /* the engine's */
	const uint8_t *in;         /* the upload */
	size_t in_len;
	const uint8_t *out; /* the answer */
	size_t out_len;
} pd_shadow_case;

typedef struct pd_shadow pd_shadow;

/* shadow_dir is a directory we may write (create: made one, mode 0750, when
 * missing; else a missing one passes when its parent is a directory we may
 * write, as pdeltad --check does). PD_E_ARG naming the directory if not. */
int pd_shadow_check_dir(const char *dir, int create, pd_err *e);

/* NULL in *out when rate_ppm is 0. Checks the directory when one is set
 * (pd_shadow_check_dir, create). */
int pd_shadow_new(const pd_shadow_opts *o, pd_shadow **out, pd_err *e);
/* Stops the thread (queued checks are dropped) and frees everything. */
void pd_shadow_free(pd_shadow *sh);

int pd_shadow_watched(const pd_shadow *sh, const char *tenant, const char *stream);
/* Hands an applied delta over (copies what it keeps); never blocks on work. */
void pd_shadow_offer(pd_shadow *sh, const pd_shadow_case *c);

/*
 * When c's stream is in fallback after a mismatch: computes the delta with
 * the slow path from the kept previous upload and c->in, gzipped at level,
 * into out (appended). Returns 1 (answered; *status, *reason set), 0 (not in
 * fallback, or it could not: counted, the engine's answer stands).
 */
int pd_shadow_fallback(pd_shadow *sh, const pd_shadow_case *c, int level, pd_buf *out,
		       int *status, int *reason);

void pd_shadow_stats_get(pd_shadow *sh, pd_shadow_stats *out);

#endif
