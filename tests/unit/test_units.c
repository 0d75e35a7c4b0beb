/* test_units: sizes and durations (common/pd_units): accepted forms, refusals, overflow. */
#include <stdint.h>

#include "pd_units.h"
#include "tharness.h"

static uint64_t size_of(const char *v)
{
	uint64_t x = 12345;

	return pd_parse_size(v, &x) ? UINT64_MAX : x;
}

static uint64_t ms_of(const char *v)
{
	uint64_t x = 12345;

	return pd_parse_ms(v, &x) ? UINT64_MAX : x;
}

int main(void)
{
	CHECK(size_of("0") == 0);
	CHECK(size_of("512") == 512);
	CHECK(size_of("4k") == 4096);
	CHECK(size_of("64m") == 64ull << 20);
	CHECK(size_of("64MB") == 64ull << 20);
	CHECK(size_of("1g") == 1ull << 30);
	CHECK(size_of("17179869184g") == UINT64_MAX); /* 2^34 GiB overflows */
	CHECK(size_of("") == UINT64_MAX);
	CHECK(size_of("k") == UINT64_MAX);
	CHECK(size_of("-1") == UINT64_MAX);
	CHECK(size_of("1t") == 1ull << 40); /* the largest caps print as 1 TiB */
	CHECK(size_of("16777216t") == UINT64_MAX); /* 2^24 TiB overflows */
	CHECK(size_of("1p") == UINT64_MAX);
	CHECK(size_of("1kx") == UINT64_MAX);
	CHECK(size_of(" 1") == UINT64_MAX);
	CHECK(size_of(NULL) == UINT64_MAX);

	CHECK(ms_of("250") == 250);
	CHECK(ms_of("250ms") == 250);
	CHECK(ms_of("10s") == 10000);
	CHECK(ms_of("5m") == 300000);
	CHECK(ms_of("2h") == 7200000);
	CHECK(ms_of("7d") == 604800000);
	CHECK(ms_of("1.5s") == UINT64_MAX);
	CHECK(ms_of("10sec") == UINT64_MAX);
	CHECK(ms_of("s") == UINT64_MAX);
	CHECK(ms_of("99999999999999999999") == UINT64_MAX);
	CHECK(ms_of("18446744073709551d") == UINT64_MAX);
	return TH_DONE();
}
