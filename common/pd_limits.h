/*
 * pd_limits: the caps on one profile (input, inflated size, tables, depth),
 * with the table that is the single source of their names, defaults and
 * --help text for every binary.
 */
#ifndef PD_LIMITS_H
#define PD_LIMITS_H

#include <stddef.h>
#include <stdint.h>

#include "pd_err.h"

typedef struct pd_limits {
	uint64_t max_input;        /* compressed input bytes */
	uint64_t max_inflated;     /* inflated (raw protobuf) bytes */
	uint64_t max_samples;      /* samples per profile */
	uint64_t max_depth;        /* locations per sample */
	uint64_t max_string;       /* bytes per string-table entry */
	uint64_t max_table;        /* strings, locations, functions, mappings each */
	uint64_t max_labels;       /* labels per sample */
	uint64_t max_sample_types; /* sample types per profile */
} pd_limits;

typedef struct pd_limit_desc {
	const char *name; /* option name without "--", e.g. "max-input" */
	size_t offset;    /* offsetof(pd_limits, field) */
	uint64_t def;
	const char *help;
} pd_limit_desc;

extern const pd_limit_desc pd_limit_table[];
extern const size_t pd_limit_count;
void pd_limits_default(pd_limits *l);
/* Sets the limit called name from a decimal string (k/m/g/t suffixes ok). */
int pd_limits_set(pd_limits *l, const char *name, const char *value, pd_err *e);

#endif
