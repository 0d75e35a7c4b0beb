/* pd_limits: the limit table (defaults, names, help) shared by every binary. */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "pd_limits.h"

#define L(field, name, def, help) {name, offsetof(pd_limits, field), def, help}

const pd_limit_desc pd_limit_table[] = {
	L(max_input, "max-input", 64ULL << 20, "compressed input bytes per profile"),
	L(max_inflated, "max-inflated", 512ULL << 20, "inflated (raw protobuf) bytes per profile"),
	L(max_samples, "max-samples", 4000000, "samples per profile"),
	L(max_depth, "max-depth", 1024, "locations per sample (stack depth)"),
	L(max_string, "max-string", 1ULL << 20, "bytes per string-table entry"),
	L(max_table, "max-table", 4000000, "entries per string/location/function/mapping table"),
	L(max_labels, "max-labels", 256, "labels per sample"),
	L(max_sample_types, "max-sample-types", 16, "sample types per profile (at most 16)"),
};
const size_t pd_limit_count = sizeof pd_limit_table / sizeof pd_limit_table[0];

void pd_limits_default(pd_limits *l)
{
	for (size_t i = 0; i < pd_limit_count; i++)
		*(uint64_t *)((char *)l + pd_limit_table[i].offset) = pd_limit_table[i].def;
}

int pd_limits_set(pd_limits *l, const char *name, const char *value, pd_err *e)
{
	char *end;
	unsigned long long v;

	for (size_t i = 0; i < pd_limit_count; i++) {
		if (strcmp(pd_limit_table[i].name, name) != 0)
			continue;
		errno = 0;
		v = strtoull(value, &end, 10);
		if (errno || end == value)
			return pd_err_set(e, PD_E_ARG, "--%s: not a number: '%s'", name, value);
		if (*end == 'k' || *end == 'K')
			v <<= 10, end++;
		else if (*end == 'm' || *end == 'M')
			v <<= 20, end++;
		else if (*end == 'g' || *end == 'G')
			v <<= 30, end++;
		if (*end || v == 0)
			return pd_err_set(e, PD_E_ARG, "--%s: bad value '%s'", name, value);
		if (strcmp(name, "max-sample-types") == 0 && v > 16)
			return pd_err_set(e, PD_E_ARG, "--max-sample-types: at most 16");
		*(uint64_t *)((char *)l + pd_limit_table[i].offset) = v;
		return PD_OK;
	}
	return pd_err_set(e, PD_E_ARG, "unknown limit '%s'", name);
}
