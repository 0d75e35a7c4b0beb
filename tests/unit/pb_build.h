/*
 * pb_build.h: a tiny protobuf writer for the unit tests that build pprof
 * profiles field by field (test_engine, test_slowdelta). Fixed capacity:
 * the profiles these tests write are small.
 */
#ifndef PB_BUILD_H
#define PB_BUILD_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct pb {
	uint8_t d[1 << 16];
	size_t n;
} pb;

static inline void put_varint(pb *b, uint64_t v)
{
	while (v >= 0x80) {
		b->d[b->n++] = (uint8_t)(v | 0x80);
		v >>= 7;
	}
	b->d[b->n++] = (uint8_t)v;
}

/* wt: the wire type, 0 varint or 2 length-delimited */
static inline void put_key(pb *b, uint32_t field, int wt)
{
	put_varint(b, (uint64_t)field << 3 | (uint64_t)wt);
}

static inline void put_uint(pb *b, uint32_t field, uint64_t v)
{
	put_key(b, field, 0);
	put_varint(b, v);
}

static inline void put_bytes(pb *b, uint32_t field, const void *p, size_t n)
{
	put_key(b, field, 2);
	put_varint(b, n);
	memcpy(b->d + b->n, p, n);
	b->n += n;
}

static inline void put_msg(pb *b, uint32_t field, const pb *m) { put_bytes(b, field, m->d, m->n); }

#endif
