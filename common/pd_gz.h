/*
 * pd_gz: bounded inflate and chunked deflate.
 *
 * Two inflate paths, one result. When the whole compressed input is in
 * memory (the server, the CLI), pd_infl_whole() inflates it with libdeflate,
 * about twice as fast as zlib on our profiles (README, "Dependencies"). When
 * the input arrives in pieces and must not be held whole (libpdelta's
 * streaming local mode), pd_infl_feed() inflates it with zlib as it comes.
 * Both detect gzip (1f 8b) vs. raw protobuf from the first byte, accept
 * concatenated gzip members, and write into a caller-owned pd_buf reused
 * across requests. The compressed input and the inflated output are capped:
 * a gzip bomb stops at the inflated cap with PD_E_LIMIT.
 *
 * The deflater writes one gzip member (some consumers, e.g. Python's
 * zlib.decompress, silently stop after the first of several). Two modes:
 * whole (the caller hands the complete output to pd_defl_finish_with(); one
 * call: at level 1, the default and the fastest, ISA-L's igzip (its own
 * level 2), about twice as fast as libdeflate's level 1 for ~3 % more bytes;
 * libdeflate at levels 2-9, and as the fallback) for callers that hold their
 * input whole anyway; streaming (zlib, for libpdelta's streaming mode, whose
 * point is never holding a profile whole). Either way compressed bytes go to
 * a sink in pieces of the chunk threshold (datadog-agent#50396's
 * flush-by-compressed-size idea). Compressor state is kept between requests:
 * no malloc per call in steady state.
 */
#ifndef PD_GZ_H
#define PD_GZ_H

#include <stddef.h>
#include <stdint.h>
#include <zlib.h>

struct libdeflate_compressor;
struct pd_isal;
struct libdeflate_decompressor;

#include "pd_buf.h"

typedef struct pd_inflater {
	z_stream zs;
	int zinit;      /* inflateInit2 done */
	int mode;       /* 0 undecided, 1 gzip, 2 raw */
	int ended;      /* saw Z_STREAM_END of the last member */
	pd_buf *out;    /* where inflated bytes go (its cap is the inflated limit) */
	size_t in_total;
	size_t max_in;
	struct libdeflate_decompressor *ld; /* whole-buffer path, made on first use */
} pd_inflater;

void pd_infl_init(pd_inflater *f);
void pd_infl_free(pd_inflater *f);
/* Starts a new input; out is reset and receives the raw protobuf bytes. */
void pd_infl_begin(pd_inflater *f, pd_buf *out, size_t max_in);
int pd_infl_feed(pd_inflater *f, const uint8_t *p, size_t n, pd_err *e);
/* Checks the input ended cleanly (complete gzip member, non-empty). */
int pd_infl_end(pd_inflater *f, pd_err *e);
/* Inflates a whole gzip input (one or more members) into out (reset first;
 * out->cap is the inflated limit). */
int pd_infl_whole(pd_inflater *f, const uint8_t *p, size_t n, pd_buf *out, pd_err *e);

typedef int (*pd_sink_fn)(void *ctx, const uint8_t *p, size_t n);

typedef struct pd_deflater {
	z_stream zs;                     /* streaming mode */
	int zinit;
	int zlevel;                      /* level zs was initialised with */
	struct pd_isal *iz;              /* whole mode, level 1: ISA-L */
	struct libdeflate_compressor *c; /* whole mode, levels 2-9 (and fallback) */
	int clevel;                      /* level c was made with */
	int level;                       /* gzip level 1..9; 0 = no gzip, pass raw bytes through */
	int whole;                       /* 1: whole mode */
	pd_buf zout; /* compressed bytes not yet handed to the sink */
	size_t chunk;
	pd_sink_fn sink;
	void *ctx;
	uint64_t total_in, total_out;
	uint64_t ns; /* time spent inside deflate() */
	uint64_t fallbacks; /* level-1 whole outputs ISA-L could not take (libdeflate did) */
} pd_deflater;

void pd_defl_init(pd_deflater *d);
void pd_defl_free(pd_deflater *d);
int pd_defl_begin(pd_deflater *d, int level, int whole, size_t chunk, pd_sink_fn sink, void *ctx,
		  pd_err *e);
/* Streaming mode only (or level 0): compresses p now. */
int pd_defl_write(pd_deflater *d, const uint8_t *p, size_t n, pd_err *e);
/* The last bytes (in whole mode: all of them) and the end of the output. */
int pd_defl_finish_with(pd_deflater *d, const uint8_t *p, size_t n, pd_err *e);

#endif
