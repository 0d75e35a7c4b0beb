/* pd_units: parsing of sizes and durations (see pd_units.h). */
#include "pd_units.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* The leading decimal number of v; *rest points after it. */
static int leading_u64(const char *v, uint64_t *out, const char **rest)
{
	char *end;
	unsigned long long x;

	if (!v || !isdigit((unsigned char)*v))
		return -1;
	errno = 0;
	x = strtoull(v, &end, 10);
	if (errno)
		return -1;
	*out = x;
	*rest = end;
	return 0;
}

static int scale(uint64_t *x, uint64_t m)
{
	if (*x > UINT64_MAX / m)
		return -1;
	*x *= m;
	return 0;
}

int pd_parse_size(const char *v, uint64_t *out)
{
	const char *s;
	uint64_t m = 1;

	if (leading_u64(v, out, &s))
		return -1;
	switch (tolower((unsigned char)*s)) {
	case 0: break;
	case 'k': m = (uint64_t)1 << 10; s++; break;
	case 'm': m = (uint64_t)1 << 20; s++; break;
	case 'g': m = (uint64_t)1 << 30; s++; break;
	case 't': m = (uint64_t)1 << 40; s++; break;
	default: return -1;
	}
	if (*s == 'b' || *s == 'B')
		s++;
	return *s ? -1 : scale(out, m);
}

int pd_parse_ms(const char *v, uint64_t *out)
{
	static const struct {
		const char *suffix;
		uint64_t ms;
	} units[] = {{"", 1}, {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000}};
	const char *s;

	if (leading_u64(v, out, &s))
		return -1;
	for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
		if (strcmp(s, units[i].suffix) == 0)
			return scale(out, units[i].ms);
	return -1;
}
