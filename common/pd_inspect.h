/*
 * pd_inspect: facts about one profile (`pdelta inspect`): its sample types,
 * period, sizes of its tables, stack depth, and how many distinct sample
 * identities the delta engine sees in it. The profile goes through the
 * engine's full validation, so inspect refuses what a delta would refuse.
 */
#ifndef PD_INSPECT_H
#define PD_INSPECT_H

#include <stddef.h>
#include <stdint.h>

#include "pd_engine.h"
#include "pd_err.h"

typedef struct pd_inspect {
	uint32_t nsample_types;
	const char *type_name[16], *type_unit[16];
	size_t type_name_len[16], type_unit_len[16];
	const char *period_type, *period_unit;
	size_t period_type_len, period_unit_len;
	int64_t period, time_nanos, duration_nanos;
	uint64_t samples, locations, functions, mappings, strings, labels, max_depth;
	uint64_t zero_samples, addr0_locations, unique_identities;
	uint64_t bytes_in, bytes_raw;
} pd_inspect;

/* Fills out from the profile [in, in + n) (gzip or raw). The strings point
 * into the engine's buffers (or into in): valid until its next request. */
int pd_engine_inspect(pd_engine *eng, const void *in, size_t n, pd_inspect *out, pd_err *e);

#endif
