/*
 * pd_gz: bounded streaming inflate and chunked streaming deflate (zlib).
 *
 * The inflater accepts its input in pieces (as it arrives from a socket or a
 * file), detects gzip (1f 8b) vs. raw protobuf from the first byte, and
 * inflates into a caller-owned pd_buf that is reused across requests. Both the
 * compressed input and the inflated output are capped: a gzip bomb stops at
 * the inflated cap with PD_E_LIMIT, having used at most that much memory.
 *
 * The deflater compresses what the writer hands it and passes compressed
 * bytes to a sink whenever they reach the chunk threshold, so an output is
 * never held whole (datadog-agent#50396's flush-by-compressed-size idea).
 * z_streams are reset, not re-created, between requests: no malloc per call.
 */
#ifndef PD_GZ_H
#define PD_GZ_H

#include <stddef.h>
#include <stdint.h>
#include <zlib.h>

#include "pd_buf.h"

typedef struct pd_inflater {
	z_stream zs;
	int zinit;      /* inflateInit2 done */
	int mode;       /* 0 undecided, 1 gzip, 2 raw */
	int ended;      /* saw Z_STREAM_END of the last member */
	pd_buf *out;    /* where inflated bytes go (its cap is the inflated limit) */
	size_t in_total;
	size_t max_in;
} pd_inflater;

void pd_infl_init(pd_inflater *f);
void pd_infl_free(pd_inflater *f);
/* Starts a new input; out is reset and receives the raw protobuf bytes. */
void pd_infl_begin(pd_inflater *f, pd_buf *out, size_t max_in);
int pd_infl_feed(pd_inflater *f, const uint8_t *p, size_t n, pd_err *e);
/* Checks the input ended cleanly (complete gzip member, non-empty). */
int pd_infl_end(pd_inflater *f, pd_err *e);

typedef int (*pd_sink_fn)(void *ctx, const uint8_t *p, size_t n);

typedef struct pd_deflater {
	z_stream zs;
	int zinit;
	int level;  /* zlib level 1..9; 0 = no gzip, pass raw bytes through */
	int zlevel; /* level zs was initialised with */
	pd_buf zout; /* compressed bytes not yet handed to the sink */
	size_t chunk;
	pd_sink_fn sink;
	void *ctx;
	uint64_t total_in, total_out;
	uint64_t ns; /* time spent inside deflate() */
} pd_deflater;

void pd_defl_init(pd_deflater *d);
void pd_defl_free(pd_deflater *d);
int pd_defl_begin(pd_deflater *d, int level, size_t chunk, pd_sink_fn sink, void *ctx, pd_err *e);
int pd_defl_write(pd_deflater *d, const uint8_t *p, size_t n, pd_err *e);
int pd_defl_finish(pd_deflater *d, pd_err *e);

uint64_t pd_now_ns(void);

#endif
