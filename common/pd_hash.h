/*
 * pd_hash: the 128-bit identity hash used for sample identities.
 *
 * Strings, labels and locations: two 64-bit lanes, each a multiply-fold ("mum": the 128-bit product of the
 * lane and an odd constant, high half xor low half) chain with its own seed
 * and constant. A stack folds its locations' 128-bit hashes with a
 * polynomial (h = h*P + x mod 2^64) per lane, then a final mum mix: since
 * the inputs are already uniformly distributed, two distinct stacks give
 * equal lanes with probability ~2^-63 per lane. For random-looking inputs the two lanes behave as
 * independent 64-bit hashes, so two distinct identities collide with
 * probability about 2^-128. With n identities in one stream the chance of any
 * collision is about n^2 / 2^129: for n = 250,000 that is 1e-28 per profile,
 * and a fleet computing 1e12 deltas a year of that size would expect one
 * collision every ~1e16 years. 64 bits would not do: n^2/2^65 = 1.7e-9 per
 * profile, i.e. a few collisions a year at fleet scale.
 *
 * Not a cryptographic hash: a tenant could craft collisions, but identities
 * are only compared within one of that tenant's own streams.
 */
#ifndef PD_HASH_H
#define PD_HASH_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct pd_h128 {
	uint64_t lo, hi;
} pd_h128;

#define PD_H_SEED_LO 0x243f6a8885a308d3ULL
#define PD_H_SEED_HI 0x13198a2e03707344ULL
#define PD_H_K_LO 0xa0761d6478bd642fULL
#define PD_H_K_HI 0xe7037ed1a0b428dbULL
/* Odd multipliers (= 3 mod 4) of the per-lane polynomial over location hashes. */
#define PD_H_POLY_LO 0x9e3779b97f4a7c17ULL
#define PD_H_POLY_HI 0xc2b2ae3d27d4eb4fULL

static inline uint64_t pd_mum(uint64_t a, uint64_t b)
{
	__uint128_t r = (__uint128_t)a * b;
	return (uint64_t)r ^ (uint64_t)(r >> 64);
}

static inline pd_h128 pd_h_init(uint64_t tag)
{
	pd_h128 h = {PD_H_SEED_LO ^ tag, PD_H_SEED_HI ^ (tag * PD_H_K_HI)};
	return h;
}

/* Absorbs one word into both lanes. */
static inline void pd_h_word(pd_h128 *h, uint64_t w)
{
	h->lo = pd_mum(h->lo ^ w, PD_H_K_LO);
	h->hi = pd_mum(h->hi ^ w ^ 0x8ebc6af09c88c6e3ULL, PD_H_K_HI);
}

/* Absorbs a 128-bit value: one half per lane (cheaper than two words). */
static inline void pd_h_pair(pd_h128 *h, pd_h128 v)
{
	h->lo = pd_mum(h->lo ^ v.lo, PD_H_K_LO);
	h->hi = pd_mum(h->hi ^ v.hi, PD_H_K_HI);
}

static inline pd_h128 pd_h_final(pd_h128 h)
{
	pd_h128 r;
	r.lo = pd_mum(h.lo ^ 0x589965cc75374cc3ULL, h.hi | 1);
	r.hi = pd_mum(h.hi ^ 0x1d8e4e27c47d124fULL, PD_H_K_LO ^ h.lo);
	r.lo ^= h.lo;
	r.hi ^= h.hi;
	return r;
}

static inline pd_h128 pd_h_bytes(uint64_t tag, const uint8_t *p, size_t n)
{
	pd_h128 h = pd_h_init(tag);
	size_t i = 0;
	uint64_t w;

	for (; i + 8 <= n; i += 8) {
		memcpy(&w, p + i, 8);
		pd_h_word(&h, w);
	}
	if (i < n) {
		w = 0;
		memcpy(&w, p + i, n - i);
		pd_h_word(&h, w);
	}
	pd_h_word(&h, (uint64_t)n);
	return pd_h_final(h);
}

static inline int pd_h_eq(pd_h128 a, pd_h128 b) { return a.lo == b.lo && a.hi == b.hi; }

#endif
