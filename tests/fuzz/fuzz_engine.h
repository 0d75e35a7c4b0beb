/*
 * fuzz_engine.h: what the engine's fuzz targets (fuzz_pprof, fuzz_slowdelta)
 * share: a sink into a pd_buf and the small limits that keep each run fast
 * and reach the limit paths.
 */
#ifndef FUZZ_ENGINE_H
#define FUZZ_ENGINE_H

#include <stdint.h>

#include "pd_engine.h"

static inline int buf_sink(void *ctx, const uint8_t *p, size_t n)
{
	return pd_buf_append(ctx, p, n, NULL);
}

static inline void fuzz_limits(pd_limits *lim)
{
	pd_limits_default(lim);
	lim->max_inflated = 4 << 20;
	lim->max_samples = 100000;
	lim->max_depth = 256;
	lim->max_table = 100000;
}

#endif
