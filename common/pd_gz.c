/* pd_gz: bounded inflate / chunked deflate over libdeflate, ISA-L and zlib. See pd_gz.h. */
#include "pd_gz.h"

#include <isa-l/igzip_lib.h>
#include <libdeflate.h>
#include <stdlib.h>
#include <string.h>

#include "pd_clock.h"

void pd_infl_init(pd_inflater *f)
{
	memset(f, 0, sizeof *f);
}

void pd_infl_free(pd_inflater *f)
{
	if (f->zinit)
		inflateEnd(&f->zs);
	f->zinit = 0;
	if (f->ld)
		libdeflate_free_decompressor(f->ld);
	f->ld = NULL;
}

void pd_infl_begin(pd_inflater *f, pd_buf *out, size_t max_in)
{
	f->mode = 0;
	f->ended = 0;
	f->out = out;
	f->in_total = 0;
	f->max_in = max_in ? max_in : SIZE_MAX;
	pd_buf_reset(out);
}

static int infl_start_member(pd_inflater *f, pd_err *e)
{
	int zr = f->zinit ? inflateReset(&f->zs) : inflateInit2(&f->zs, 16 + MAX_WBITS);
	if (zr != Z_OK)
		return pd_err_set(e, PD_E_NOMEM, "inflate init failed (%d)", zr);
	f->zinit = 1;
	f->ended = 0;
	return PD_OK;
}

static int infl_gzip(pd_inflater *f, const uint8_t *p, size_t n, pd_err *e)
{
	pd_buf *o = f->out;
	int rc;

	f->zs.next_in = (Bytef *)(uintptr_t)p;
	f->zs.avail_in = (uInt)n;
	while (f->zs.avail_in > 0) {
		size_t room;
		int zr;

		if (f->ended) { /* another gzip member follows (concatenated gzip) */
			if (f->zs.next_in[0] != 0x1f)
				return pd_err_set(e, PD_E_MALFORMED, "trailing garbage after gzip data");
			if ((rc = infl_start_member(f, e)))
				return rc;
		}
		if (o->alloc - o->len < 65536 && o->len < o->cap) {
			size_t want = o->len < 65536 ? 65536 : o->len;
			if (want > o->cap - o->len)
				want = o->cap - o->len;
			if ((rc = pd_buf_reserve(o, want, e)))
				return rc;
		}
		room = o->alloc - o->len;
		if (room > o->cap - o->len)
			room = o->cap - o->len;
		if (room == 0)
			return pd_err_set(e, PD_E_LIMIT,
					  "inflated profile exceeds the limit of %zu bytes (gzip bomb?)",
					  o->cap);
		if (room > 0x40000000)
			room = 0x40000000;
		f->zs.next_out = o->data + o->len;
		f->zs.avail_out = (uInt)room;
		zr = inflate(&f->zs, Z_NO_FLUSH);
		o->len += room - f->zs.avail_out;
		if (zr == Z_STREAM_END) {
			f->ended = 1;
			continue;
		}
		if (zr == Z_BUF_ERROR && f->zs.avail_out != 0)
			break;
		if (zr != Z_OK)
			return pd_err_set(e, PD_E_MALFORMED, "corrupt gzip data: %s",
					  f->zs.msg ? f->zs.msg : "inflate error");
	}
	return PD_OK;
}

int pd_infl_feed(pd_inflater *f, const uint8_t *p, size_t n, pd_err *e)
{
	int rc;

	if (n == 0)
		return PD_OK;
	if (n > f->max_in - f->in_total)
		return pd_err_set(e, PD_E_LIMIT, "input exceeds the limit of %zu bytes", f->max_in);
	f->in_total += n;
	if (f->mode == 0) {
		f->mode = p[0] == 0x1f ? 1 : 2;
		if (f->mode == 1 && (rc = infl_start_member(f, e)))
			return rc;
	}
	if (f->mode == 2) {
		rc = pd_buf_append(f->out, p, n, e);
		if (rc == PD_E_LIMIT)
			return pd_err_set(e, PD_E_LIMIT, "profile exceeds the limit of %zu bytes",
					  f->out->cap);
		return rc;
	}
	return infl_gzip(f, p, n, e);
}

int pd_infl_end(pd_inflater *f, pd_err *e)
{
	if (f->mode == 0)
		return pd_err_set(e, PD_E_MALFORMED, "empty input");
	if (f->mode == 1 && !f->ended)
		return pd_err_set(e, PD_E_MALFORMED, "truncated gzip stream");
	return PD_OK;
}

/* First guess of a member's inflated size: the trailer's ISIZE when the input
 * is one member (the usual case), but never more than 64x the compressed
 * bytes (a lying ISIZE must not make us reserve memory up front; real profiles
 * inflate 2-10x) nor more than the room left under the cap. */
static size_t whole_guess(const uint8_t *p, size_t n, size_t room)
{
	size_t isize = (size_t)p[n - 4] | (size_t)p[n - 3] << 8 | (size_t)p[n - 2] << 16 |
		       (size_t)p[n - 1] << 24;
	size_t g = isize + 64;

	if (n < SIZE_MAX / 64 && g > n * 64)
		g = n * 64;
	if (g < 65536)
		g = 65536;
	return g < room ? g : room;
}

/* Inflates the member at p (n bytes left in the input) into out, growing the
 * room until it fits or the cap is reached; *used is its compressed size. */
static int whole_member(pd_inflater *f, const uint8_t *p, size_t n, pd_buf *out, size_t *used,
			pd_err *e)
{
	size_t cap_room = out->cap - out->len;
	size_t room = whole_guess(p, n, cap_room);

	for (;;) {
		size_t got = 0, in_used = 0;
		enum libdeflate_result r;
		int rc;

		if ((rc = pd_buf_reserve(out, room, e)))
			return rc;
		r = libdeflate_gzip_decompress_ex(f->ld, p, n, out->data + out->len, room, &in_used,
						  &got);
		if (r == LIBDEFLATE_SUCCESS) {
			out->len += got;
			*used = in_used;
			return PD_OK;
		}
		if (r != LIBDEFLATE_INSUFFICIENT_SPACE)
			return pd_err_set(e, PD_E_MALFORMED, "corrupt or truncated gzip data");
		if (room == cap_room)
			return pd_err_set(e, PD_E_LIMIT,
					  "inflated profile exceeds the limit of %zu bytes (gzip bomb?)",
					  out->cap);
		room = room > cap_room / 2 ? cap_room : room * 2;
	}
}

int pd_infl_whole(pd_inflater *f, const uint8_t *p, size_t n, pd_buf *out, pd_err *e)
{
	size_t off = 0;
	int rc;

	pd_buf_reset(out);
	if (!f->ld && !(f->ld = libdeflate_alloc_decompressor()))
		return pd_err_set(e, PD_E_NOMEM, "out of memory (decompressor)");
	if (out->cap == 0)
		out->cap = SIZE_MAX;
	while (off < n) {
		size_t used = 0;

		if (off > 0 && p[off] != 0x1f)
			return pd_err_set(e, PD_E_MALFORMED, "trailing garbage after gzip data");
		if (n - off < 18)
			return pd_err_set(e, PD_E_MALFORMED, "truncated gzip stream");
		if ((rc = whole_member(f, p + off, n - off, out, &used, e)))
			return rc;
		off += used;
	}
	return PD_OK;
}

void pd_defl_init(pd_deflater *d)
{
	memset(d, 0, sizeof *d);
	pd_buf_init(&d->zout, 0);
}

void pd_defl_free(pd_deflater *d)
{
	if (d->zinit)
		deflateEnd(&d->zs);
	d->zinit = 0;
	if (d->c)
		libdeflate_free_compressor(d->c);
	d->c = NULL;
	free(d->iz);
	d->iz = NULL;
	pd_buf_free(&d->zout);
}

/* ISA-L's own level 2 serves our level 1: on our profiles about twice as fast
 * as libdeflate's level 1 for ~3 % more bytes, and faster than ISA-L's level 1
 * on the large ones (README, "Dependencies", "Why ISA-L"). */
#define PD_ISAL_LEVEL 2
#define PD_ISAL_LEVEL_BUF ISAL_DEF_LVL2_DEFAULT

typedef struct pd_isal {
	struct isal_zstream zs;
	uint8_t level_buf[PD_ISAL_LEVEL_BUF];
} pd_isal;

static int whole_begin_ld(pd_deflater *d, int level, pd_err *e)
{
	if (d->c && d->clevel == level)
		return PD_OK;
	if (d->c)
		libdeflate_free_compressor(d->c);
	if (!(d->c = libdeflate_alloc_compressor(level)))
		return pd_err_set(e, PD_E_NOMEM, "out of memory (compressor)");
	d->clevel = level;
	return PD_OK;
}

static int whole_begin(pd_deflater *d, int level, pd_err *e)
{
	if (level != 1)
		return whole_begin_ld(d, level, e);
	/* fastest: ISA-L (libdeflate's level 1 stays the fallback, made on demand) */
	if (!d->iz && !(d->iz = calloc(1, sizeof *d->iz)))
		return pd_err_set(e, PD_E_NOMEM, "out of memory (compressor)");
	return PD_OK;
}

int pd_defl_begin(pd_deflater *d, int level, int whole, size_t chunk, pd_sink_fn sink, void *ctx,
		  pd_err *e)
{
	int zr;

	d->sink = sink;
	d->ctx = ctx;
	d->chunk = chunk ? chunk : 65536;
	d->total_in = d->total_out = 0;
	d->ns = 0;
	d->whole = whole;
	pd_buf_reset(&d->zout);
	if (level <= 0) {
		d->level = 0;
		return PD_OK;
	}
	if (level > 9)
		level = 9;
	d->level = level;
	if (whole)
		return whole_begin(d, level, e);
	if (d->zinit && d->zlevel == level) {
		zr = deflateReset(&d->zs);
	} else {
		if (d->zinit)
			deflateEnd(&d->zs);
		d->zinit = 0;
		zr = deflateInit2(&d->zs, level, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY);
	}
	if (zr != Z_OK)
		return pd_err_set(e, PD_E_NOMEM, "deflate init failed (%d)", zr);
	d->zinit = 1;
	d->level = d->zlevel = level;
	return pd_buf_reserve(&d->zout, d->chunk + 65536, e);
}

static int defl_emit(pd_deflater *d, pd_err *e)
{
	if (d->zout.len == 0)
		return PD_OK;
	if (d->sink(d->ctx, d->zout.data, d->zout.len))
		return pd_err_set(e, PD_E_IO, "output sink failed");
	d->total_out += d->zout.len;
	pd_buf_reset(&d->zout);
	return PD_OK;
}

static int defl_run(pd_deflater *d, int flush, pd_err *e)
{
	int rc;
	for (;;) {
		size_t room = d->zout.alloc - d->zout.len;
		int zr;
		uint64_t t0;

		if (room < 4096) {
			if ((rc = defl_emit(d, e)))
				return rc;
			room = d->zout.alloc - d->zout.len;
		}
		d->zs.next_out = d->zout.data + d->zout.len;
		d->zs.avail_out = (uInt)room;
		t0 = pd_now_ns();
		zr = deflate(&d->zs, flush);
		d->ns += pd_now_ns() - t0;
		d->zout.len += room - d->zs.avail_out;
		if (zr == Z_STREAM_END)
			return PD_OK;
		if (zr != Z_OK && zr != Z_BUF_ERROR)
			return pd_err_set(e, PD_E_INTERNAL, "deflate failed (%d)", zr);
		if (flush == Z_NO_FLUSH && d->zs.avail_in == 0)
			break;
		if (zr == Z_BUF_ERROR && d->zs.avail_in == 0 && flush == Z_NO_FLUSH)
			break;
	}
	if (d->zout.len >= d->chunk)
		return defl_emit(d, e);
	return PD_OK;
}

int pd_defl_write(pd_deflater *d, const uint8_t *p, size_t n, pd_err *e)
{
	d->total_in += n;
	if (d->level == 0) {
		d->total_out += n;
		return d->sink(d->ctx, p, n) ? pd_err_set(e, PD_E_IO, "output sink failed") : PD_OK;
	}
	d->zs.next_in = (Bytef *)(uintptr_t)p;
	d->zs.avail_in = (uInt)n;
	return defl_run(d, Z_NO_FLUSH, e);
}

/*
 * ISA-L in one stateless call. The room covers stored blocks for input that
 * does not compress (ISA-L falls back to them); if it still overflows, or
 * the input is over ISA-L's 32-bit lengths, returns 0 and the caller uses
 * libdeflate.
 */
static size_t isal_whole(pd_deflater *d, const uint8_t *p, size_t n, pd_err *e, int *rc)
{
	struct isal_zstream *z = &d->iz->zs;
	size_t room = n + n / 16 + 4096; /* < UINT32_MAX below */

	*rc = PD_OK;
	if (n > UINT32_MAX / 2)
		return 0;
	if ((*rc = pd_buf_reserve(&d->zout, room, e)))
		return 0;
	isal_deflate_stateless_init(z);
	z->level = PD_ISAL_LEVEL;
	z->level_buf = d->iz->level_buf;
	z->level_buf_size = sizeof d->iz->level_buf;
	z->gzip_flag = IGZIP_GZIP;
	z->end_of_stream = 1;
	z->flush = NO_FLUSH;
	z->next_in = (uint8_t *)(uintptr_t)p;
	z->avail_in = (uint32_t)n;
	z->next_out = d->zout.data;
	z->avail_out = (uint32_t)room;
	if (isal_deflate_stateless(z) != COMP_OK)
		return 0;
	return z->total_out;
}

/* Whole mode: one ISA-L (level 1) or libdeflate call over the complete
 * output, then the sink gets it in chunks of d->chunk bytes. */
static int whole_finish(pd_deflater *d, const uint8_t *p, size_t n, pd_err *e)
{
	static const uint8_t empty;
	size_t bound, got = 0, off;
	uint64_t t0 = pd_now_ns();
	int rc;

	if (!n)
		p = &empty; /* neither library takes a NULL input */
	if (d->level == 1 && d->iz && (got = isal_whole(d, p, n, e, &rc)) == 0 && rc)
		return rc;
	if (got == 0) {
		if (d->level == 1)
			d->fallbacks++;
		if ((rc = whole_begin_ld(d, d->level, e)))
			return rc;
		bound = libdeflate_gzip_compress_bound(d->c, n);
		if ((rc = pd_buf_reserve(&d->zout, bound, e)))
			return rc;
		got = libdeflate_gzip_compress(d->c, p, n, d->zout.data, bound);
	}
	d->ns += pd_now_ns() - t0;
	if (got == 0)
		return pd_err_set(e, PD_E_INTERNAL, "gzip compression failed");
	d->total_in += n;
	for (off = 0; off < got; off += d->chunk) {
		size_t k = got - off < d->chunk ? got - off : d->chunk;
		if (d->sink(d->ctx, d->zout.data + off, k))
			return pd_err_set(e, PD_E_IO, "output sink failed");
	}
	d->total_out += got;
	return PD_OK;
}

int pd_defl_finish_with(pd_deflater *d, const uint8_t *p, size_t n, pd_err *e)
{
	int rc;
	if (d->level > 0 && d->whole)
		return whole_finish(d, p, n, e);
	if (n && (rc = pd_defl_write(d, p, n, e)))
		return rc;
	if (d->level == 0)
		return PD_OK;
	d->zs.next_in = NULL;
	d->zs.avail_in = 0;
	if ((rc = defl_run(d, Z_FINISH, e)))
		return rc;
	return defl_emit(d, e);
}
