/*
 * pd_guard: per-source throttling of failed authentications (brute force).
 *
 * A source is an IPv4 address or an IPv6 /64 (one host usually owns a /64;
 * IPv4-mapped IPv6 counts as IPv4): pd_guard_src_key(). Every failed HELLO
 * of a source is recorded; the n-th failure within the window is answered
 * after min(delay_ms * 2^(n-1), delay_max_ms), and the block_after-th starts
 * a block of block_ms during which every HELLO of that source is refused
 * without looking at its credentials (so guessing goes nowhere), also after
 * delay_max_ms. A source's failures are forgotten block_ms after its last
 * one. A success does not reset them (a valid token of one tenant must not
 * buy unlimited guesses at another's).
 *
 * The table is fixed-size (no allocation after pd_guard_new): open
 * addressing with a short probe; when every probed slot is in use the one
 * with the oldest failure is replaced. Pure: the caller passes the clock
 * (monotonic ms) and runs everything on one thread (the I/O loop).
 */
#ifndef PD_GUARD_H
#define PD_GUARD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct sockaddr;

#define PD_GUARD_KEY_LEN 16

typedef struct pd_guard_opts {
	uint64_t delay_ms;     /* first failure's delay; 0 = no delay */
	uint64_t delay_max_ms; /* cap of the delay (also the answer delay while blocked) */
	uint64_t block_after;  /* failures that start a block; 0 = never block */
	uint64_t block_ms;     /* block length, and how long failures are remembered */
	size_t slots;          /* sources tracked at once */
} pd_guard_opts;

typedef struct pd_guard pd_guard;

/* NULL when out of memory. */
pd_guard *pd_guard_new(const pd_guard_opts *o);
void pd_guard_free(pd_guard *g);

/* The source key of a peer address (zeros for other families). */
void pd_guard_src_key(const struct sockaddr *sa, uint8_t key[PD_GUARD_KEY_LEN]);

/* How many more ms the source is blocked; 0 = not blocked. */
uint64_t pd_guard_blocked_ms(const pd_guard *g, const uint8_t key[PD_GUARD_KEY_LEN], uint64_t now);

/* Records one failure; returns the delay (ms) before it is answered.
 * *block_started is set when this failure started a block. */
uint64_t pd_guard_fail(pd_guard *g, const uint8_t key[PD_GUARD_KEY_LEN], uint64_t now,
		       bool *block_started);

#endif
