/*
 * pd_pb: hand-written protobuf wire-format reader and writer.
 *
 * The reader is a bounds-checked cursor over a byte span: every getter
 * returns 0 on success and -1 on malformed input (overlong varint, length
 * past the end, bad wire type); callers must check. No allocation. The
 * writer appends to a pd_buf whose room the caller reserved (pd_pbw_* with
 * an _r suffix reserve themselves).
 */
#ifndef PD_PB_H
#define PD_PB_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "pd_buf.h"

enum { PB_VARINT = 0, PB_I64 = 1, PB_LEN = 2, PB_I32 = 5 };

typedef struct pd_rd {
	const uint8_t *p, *end;
} pd_rd;

static inline pd_rd pd_rd_make(const uint8_t *p, size_t n)
{
	pd_rd r = {p, p + n};
	return r;
}

static inline int pd_rd_more(const pd_rd *r) { return r->p < r->end; }

static inline int pd_rd_varint(pd_rd *r, uint64_t *v)
{
	const uint8_t *p = r->p;
	uint64_t x;
	int shift;

	if (p < r->end && *p < 0x80) { /* fast path: one byte */
		*v = *p;
		r->p = p + 1;
		return 0;
	}
	x = 0;
	for (shift = 0; shift < 64; shift += 7) {
		uint8_t b;
		if (p >= r->end)
			return -1;
		b = *p++;
		if (shift == 63 && b > 1)
			return -1;
		x |= (uint64_t)(b & 0x7f) << shift;
		if (b < 0x80) {
			*v = x;
			r->p = p;
			return 0;
		}
	}
	return -1;
}

static inline int pd_rd_key(pd_rd *r, uint32_t *field, uint32_t *wt)
{
	uint64_t k;
	if (pd_rd_varint(r, &k) || (k >> 3) == 0 || (k >> 3) > 0x1fffffff)
		return -1;
	*field = (uint32_t)(k >> 3);
	*wt = (uint32_t)(k & 7);
	return 0;
}

static inline int pd_rd_len(pd_rd *r, const uint8_t **p, size_t *n)
{
	uint64_t l;
	if (pd_rd_varint(r, &l) || l > (uint64_t)(r->end - r->p))
		return -1;
	*p = r->p;
	*n = (size_t)l;
	r->p += l;
	return 0;
}

static inline int pd_rd_skip(pd_rd *r, uint32_t wt)
{
	uint64_t v;
	const uint8_t *p;
	size_t n;

	switch (wt) {
	case PB_VARINT:
		return pd_rd_varint(r, &v);
	case PB_I64:
		if (r->end - r->p < 8)
			return -1;
		r->p += 8;
		return 0;
	case PB_LEN:
		return pd_rd_len(r, &p, &n);
	case PB_I32:
		if (r->end - r->p < 4)
			return -1;
		r->p += 4;
		return 0;
	default:
		return -1; /* groups (3, 4) are not used by profile.proto */
	}
}

/*
 * Reads a message whose wanted fields are all varints: each field whose number
 * is set in mask (numbers below 32) goes to v[number], the last occurrence
 * winning; other fields are skipped. Every occurrence of a field set in
 * bounded must be below bound (an index into a table of that size). v[] must
 * have room for the highest wanted number and be zeroed by the caller (absent
 * fields read 0). Returns -1 on malformed input, a wanted field of another
 * wire type or an index out of bounds. Always inlined: with mask and bounded
 * constant at the call site it compiles to the hand-written loop (labels are
 * read once per sample in the hash pass).
 */
__attribute__((always_inline)) static inline int pd_rd_varints(const uint8_t *p, size_t n,
								uint32_t mask, uint32_t bounded,
								uint64_t bound, uint64_t *v)
{
	pd_rd r = pd_rd_make(p, n);
	while (pd_rd_more(&r)) {
		uint32_t f, wt;
		int bad;
		if (pd_rd_key(&r, &f, &wt))
			return -1;
		if (f < 32 && (mask >> f & 1))
			bad = wt != PB_VARINT || pd_rd_varint(&r, &v[f]) ||
			      ((bounded >> f & 1) && v[f] >= bound);
		else
			bad = pd_rd_skip(&r, wt);
		if (bad)
			return -1;
	}
	return 0;
}

/*
 * Branch-light varint decoders for hot loops. Variable-length varints make
 * byte-at-a-time loops mispredict; these read a fixed window and compute the
 * length arithmetically. They may read past the field (never past bend, the
 * end of the whole buffer); the result is only accepted if it ends within
 * fend. Return 0 on success, -1 on malformed input.
 */
static inline int pd_varint_slow(const uint8_t **pp, const uint8_t *fend, uint64_t *v)
{
	pd_rd r = {*pp, fend};
	if (pd_rd_varint(&r, v))
		return -1;
	*pp = r.p;
	return 0;
}

static inline int pd_varint2(const uint8_t **pp, const uint8_t *fend, const uint8_t *bend,
			     uint64_t *v)
{
	const uint8_t *p = *pp;
	if (__builtin_expect(bend - p >= 2, 1)) {
		uint32_t b0 = p[0], b1 = p[1], c0 = b0 >> 7;
		if (__builtin_expect(!(c0 & (b1 >> 7)), 1)) {
			*v = (b0 & 0x7f) | ((b1 << 7) & (0u - c0) & 0x3f80u);
			p += 1 + c0;
			if (p > fend)
				return -1;
			*pp = p;
			return 0;
		}
	}
	return pd_varint_slow(pp, fend, v);
}

static inline int pd_varint8(const uint8_t **pp, const uint8_t *fend, const uint8_t *bend,
			     uint64_t *v)
{
	const uint8_t *p = *pp;
	if (__builtin_expect(bend - p >= 8, 1)) {
		uint64_t x, stop;
		memcpy(&x, p, 8); /* little-endian hosts (x86-64, arm64) */
		stop = ~x & 0x8080808080808080ULL;
		if (__builtin_expect(stop != 0, 1)) {
			unsigned bits = (unsigned)__builtin_ctzll(stop) + 1; /* 8, 16, ... 64 */
			if (bits < 64)
				x &= (1ULL << bits) - 1;
			/* Pack the 7-bit groups pairwise: 14 bits per 16, 28 per 32, 56. */
			x &= 0x7f7f7f7f7f7f7f7fULL;
			x = (x & 0x007f007f007f007fULL) | (x >> 1 & 0x3f803f803f803f80ULL);
			x = (x & 0x00003fff00003fffULL) | (x >> 2 & 0x0fffc0000fffc000ULL);
			*v = (x & 0x000000000fffffffULL) | (x >> 4 & 0x00fffffff0000000ULL);
			p += bits >> 3;
			if (p > fend)
				return -1;
			*pp = p;
			return 0;
		}
	}
	return pd_varint_slow(pp, fend, v);
}

static inline size_t pd_varint_size(uint64_t v)
{
	size_t n = 1;
	while (v >= 0x80) {
		v >>= 7;
		n++;
	}
	return n;
}

/* Writes a varint at b->data + b->len; room (10 bytes) must be reserved. */
static inline void pd_pbw_varint(pd_buf *b, uint64_t v)
{
	uint8_t *p = b->data + b->len;
	while (v >= 0x80) {
		*p++ = (uint8_t)(v | 0x80);
		v >>= 7;
	}
	*p++ = (uint8_t)v;
	b->len = (size_t)(p - b->data);
}

static inline void pd_pbw_key(pd_buf *b, uint32_t field, uint32_t wt)
{
	pd_pbw_varint(b, ((uint64_t)field << 3) | wt);
}

static inline void pd_pbw_raw(pd_buf *b, const void *p, size_t n)
{
	memcpy(b->data + b->len, p, n);
	b->len += n;
}

#endif
