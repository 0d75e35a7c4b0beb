/*
 * pd_guard: the failed-authentication throttle of pdeltad (see pd_guard.h).
 */
#include "pd_guard.h"

#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define PROBE 16

typedef struct slot {
	uint8_t key[PD_GUARD_KEY_LEN];
	bool used;
	uint32_t fails;
	uint64_t last_fail, blocked_until;
} slot;

struct pd_guard {
	pd_guard_opts o;
	size_t mask; /* slots - 1, slots a power of two */
	slot *s;
};

pd_guard *pd_guard_new(const pd_guard_opts *o)
{
	pd_guard *g = calloc(1, sizeof *g);
	size_t n = 64;

	if (!g)
		return NULL;
	while (n < o->slots && n < (1u << 20))
		n <<= 1;
	g->o = *o;
	g->mask = n - 1;
	g->s = calloc(n, sizeof *g->s);
	if (!g->s) {
		free(g);
		return NULL;
	}
	return g;
}

void pd_guard_free(pd_guard *g)
{
	if (!g)
		return;
	free(g->s);
	free(g);
}

void pd_guard_src_key(const struct sockaddr *sa, uint8_t key[PD_GUARD_KEY_LEN])
{
	static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

	memset(key, 0, PD_GUARD_KEY_LEN);
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *s4 = (const struct sockaddr_in *)(const void *)sa;
		memcpy(key + 12, &s4->sin_addr, 4);
		key[0] = 4;
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)(const void *)sa;
		const uint8_t *a = s6->sin6_addr.s6_addr;
		if (memcmp(a, mapped, sizeof mapped) == 0) {
			memcpy(key + 12, a + 12, 4);
			key[0] = 4;
		} else {
			memcpy(key + 8, a, 8); /* the /64 */
			key[0] = 6;
		}
	}
}

static size_t hash_key(const uint8_t *k)
{
	uint64_t h = 1469598103934665603ull; /* FNV-1a */

	for (int i = 0; i < PD_GUARD_KEY_LEN; i++)
		h = (h ^ k[i]) * 1099511628211ull;
	return (size_t)(h ^ (h >> 29));
}

/* Remembered: failures within block_ms, or a block still running. */
static bool live(const pd_guard *g, const slot *s, uint64_t now)
{
	return s->used && (now < s->blocked_until || now - s->last_fail < g->o.block_ms);
}

static slot *find(const pd_guard *g, const uint8_t *k, uint64_t now)
{
	size_t h = hash_key(k);

	for (size_t i = 0; i < PROBE; i++) {
		slot *s = &g->s[(h + i) & g->mask];
		if (s->used && memcmp(s->key, k, PD_GUARD_KEY_LEN) == 0)
			return live(g, s, now) ? s : NULL;
	}
	return NULL;
}

/* The key's slot, else a free or forgotten one, else the oldest probed. */
static slot *claim(pd_guard *g, const uint8_t *k, uint64_t now)
{
	size_t h = hash_key(k);
	slot *free_slot = NULL, *oldest = NULL, *victim;

	for (size_t i = 0; i < PROBE; i++) {
		slot *s = &g->s[(h + i) & g->mask];
		if (s->used && memcmp(s->key, k, PD_GUARD_KEY_LEN) == 0) {
			if (!live(g, s, now))
				s->fails = 0, s->blocked_until = 0;
			return s;
		}
		if (!live(g, s, now)) {
			if (!free_slot)
				free_slot = s;
		} else if (!oldest || s->last_fail < oldest->last_fail) {
			oldest = s;
		}
	}
	victim = free_slot ? free_slot : oldest;
	memset(victim, 0, sizeof *victim);
	memcpy(victim->key, k, PD_GUARD_KEY_LEN);
	victim->used = true;
	return victim;
}

uint64_t pd_guard_blocked_ms(const pd_guard *g, const uint8_t key[PD_GUARD_KEY_LEN], uint64_t now)
{
	const slot *s = find(g, key, now);

	return s && now < s->blocked_until ? s->blocked_until - now : 0;
}

uint64_t pd_guard_fail(pd_guard *g, const uint8_t key[PD_GUARD_KEY_LEN], uint64_t now,
		       bool *block_started)
{
	slot *s = claim(g, key, now);
	uint64_t delay = g->o.delay_ms;

	*block_started = false;
	if (s->fails < UINT32_MAX)
		s->fails++;
	s->last_fail = now;
	if (g->o.block_after && s->fails >= g->o.block_after && now >= s->blocked_until) {
		s->blocked_until = now + g->o.block_ms;
		s->fails = 0; /* after the block, the count starts again */
		*block_started = true;
	}
	for (uint32_t i = 1; i < s->fails && delay < g->o.delay_max_ms; i++)
		delay *= 2;
	if (*block_started || delay > g->o.delay_max_ms)
		delay = g->o.delay_max_ms;
	return delay;
}
