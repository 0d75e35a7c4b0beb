/*
 * pdl_backoff: the waits between libpdelta's retries. A monotonic clock in
 * ms, a jitter generator (splitmix64 seeded from the CSPRNG, reseeded after
 * a fork) and "equal jitter" exponential backoff.
 */
#include <errno.h>
#include <openssl/rand.h>
#include <time.h>
#include <unistd.h>

#include "pd_clock.h"
#include "pdl_internal.h"

uint64_t pdl_now_ms(void) { return pd_now_ms(); }

/* splitmix64: jitter only, seeded from the CSPRNG. */
uint64_t pdl_random64(pdelta *h)
{
	uint64_t z = (h->rng += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

uint64_t pdl_strong_random64(void)
{
	uint64_t v = 0;
	if (RAND_bytes((unsigned char *)&v, sizeof v) != 1 || v == 0)
		v = pd_now_ns() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)&v;
	return v ? v : 1;
}

static void sleep_ms(uint64_t ms)
{
	struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

/* "Equal jitter": half the exponential delay fixed, half random, so retries
 * (and probes of a down node) of many agents spread out but never come back
 * immediately. */
uint64_t pdl_backoff_delay(pdelta *h, unsigned attempt, uint64_t base_ms, uint64_t max_ms)
{
	uint64_t d = base_ms, half;

	for (unsigned i = 2; i < attempt && d < max_ms; i++)
		d *= 2;
	if (d > max_ms)
		d = max_ms;
	half = d / 2;
	return half + (half ? pdl_random64(h) % (half + 1) : 0);
}

void pdl_backoff(pdelta *h, unsigned attempt, uint64_t min_ms)
{
	uint64_t d = pdl_backoff_delay(h, attempt, h->o.backoff_base_ms, h->o.backoff_max_ms);

	if (d < min_ms)
		d = min_ms;
	if (d)
		sleep_ms(d);
}
