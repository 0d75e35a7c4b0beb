/*
 * pd_pprof: the pprof codec. Field numbers of profile.proto by name, the
 * index of one raw (inflated) profile, and the writer of a profile made of a
 * selection of the indexed one.
 *
 * The index does not decode the profile into objects: it records the span
 * (offset, length) of every top-level field in the caller's buffer, validates
 * the tables (string table, sample types, mappings, functions, locations and
 * their lines), maps their ids to table indices, and hashes each string,
 * mapping and location once (pd_hash.h) so that the delta engine can build
 * sample identities without reading the tables again. Samples are only
 * spanned here; the engine decodes them in its hash pass.
 *
 * The writer copies what a selection keeps (samples with new values,
 * marked mappings, locations, functions and strings) and remaps string
 * indices into the compacted string table; ids stay as they are, so location
 * messages and location_id fields are copied verbatim.
 *
 * No I/O, no allocation per request in steady state (arrays are kept and
 * regrown); one index per thread. The index does not own the profile bytes:
 * they must outlive every use of it.
 */
#ifndef PD_PPROF_H
#define PD_PPROF_H

#include <stddef.h>
#include <stdint.h>

#include "pd_buf.h"
#include "pd_err.h"
#include "pd_hash.h"
#include "pd_limits.h"
#include "pd_pb.h"

/* ---- profile.proto field numbers (google/pprof proto/profile.proto) ------ */
enum pd_profile_field {
	PD_PROFILE_SAMPLE_TYPE = 1,  /* repeated ValueType */
	PD_PROFILE_SAMPLE = 2,       /* repeated Sample */
	PD_PROFILE_MAPPING = 3,      /* repeated Mapping */
	PD_PROFILE_LOCATION = 4,     /* repeated Location */
	PD_PROFILE_FUNCTION = 5,     /* repeated Function */
	PD_PROFILE_STRING_TABLE = 6, /* repeated string */
	PD_PROFILE_DROP_FRAMES = 7,  /* string index */
	PD_PROFILE_KEEP_FRAMES = 8,  /* string index */
	PD_PROFILE_TIME_NANOS = 9,
	PD_PROFILE_DURATION_NANOS = 10,
	PD_PROFILE_PERIOD_TYPE = 11, /* ValueType */
	PD_PROFILE_PERIOD = 12,
	PD_PROFILE_COMMENT = 13,             /* repeated string index */
	PD_PROFILE_DEFAULT_SAMPLE_TYPE = 14, /* string index */
	PD_PROFILE_DOC_LINK = 15,            /* string index */
};
enum pd_value_type_field { PD_VALUE_TYPE_TYPE = 1, PD_VALUE_TYPE_UNIT = 2 };
enum pd_sample_field { PD_SAMPLE_LOCATION_ID = 1, PD_SAMPLE_VALUE = 2, PD_SAMPLE_LABEL = 3 };
enum pd_label_field { PD_LABEL_KEY = 1, PD_LABEL_STR = 2, PD_LABEL_NUM = 3, PD_LABEL_NUM_UNIT = 4 };
enum pd_mapping_field {
	PD_MAPPING_ID = 1,
	PD_MAPPING_MEMORY_START = 2,
	PD_MAPPING_MEMORY_LIMIT = 3,
	PD_MAPPING_FILE_OFFSET = 4,
	PD_MAPPING_FILENAME = 5,
	PD_MAPPING_BUILD_ID = 6,
	PD_MAPPING_HAS_FUNCTIONS = 7,
	PD_MAPPING_HAS_FILENAMES = 8,
	PD_MAPPING_HAS_LINE_NUMBERS = 9,
	PD_MAPPING_HAS_INLINE_FRAMES = 10,
};
enum pd_location_field {
	PD_LOCATION_ID = 1,
	PD_LOCATION_MAPPING_ID = 2,
	PD_LOCATION_ADDRESS = 3,
	PD_LOCATION_LINE = 4,
	PD_LOCATION_IS_FOLDED = 5,
};
enum pd_line_field { PD_LINE_FUNCTION_ID = 1, PD_LINE_LINE = 2, PD_LINE_COLUMN = 3 };
enum pd_function_field {
	PD_FUNCTION_ID = 1,
	PD_FUNCTION_NAME = 2,
	PD_FUNCTION_SYSTEM_NAME = 3,
	PD_FUNCTION_FILENAME = 4,
	PD_FUNCTION_START_LINE = 5,
};

#define PD_BIT(f) (1u << (f))
/* The string-index fields of each message, as masks of field numbers. */
#define PD_VALUE_TYPE_STRINGS (PD_BIT(PD_VALUE_TYPE_TYPE) | PD_BIT(PD_VALUE_TYPE_UNIT))
#define PD_LABEL_STRINGS (PD_BIT(PD_LABEL_KEY) | PD_BIT(PD_LABEL_STR) | PD_BIT(PD_LABEL_NUM_UNIT))
#define PD_MAPPING_STRINGS (PD_BIT(PD_MAPPING_FILENAME) | PD_BIT(PD_MAPPING_BUILD_ID))
#define PD_FUNCTION_STRINGS                                                                        \
	(PD_BIT(PD_FUNCTION_NAME) | PD_BIT(PD_FUNCTION_SYSTEM_NAME) | PD_BIT(PD_FUNCTION_FILENAME))

/* At most this many sample types (columns) per profile. */
#define PD_PPROF_MAX_COLS 16

/* ---- the index ------------------------------------------------------------ */

typedef struct pd_span {
	uint32_t off, len;
} pd_span;

/* Table ids -> index + 1: a dense array when the ids are small, open
 * addressing when they are sparse. */
typedef struct pd_idmap {
	uint32_t *dense; /* dense[id] = index + 1 */
	size_t dense_cap;
	uint64_t dense_n;
	uint64_t *hk;
	uint32_t *hv;
	size_t hcap;
	uint32_t hmask;
	int hashed;
} pd_idmap;

typedef struct pd_pprof_map {
	pd_h128 h; /* filename and build id */
	uint32_t filename, build_id;
} pd_pprof_map;

typedef struct pd_pprof_fn {
	uint32_t name, sys, file;
} pd_pprof_fn;

typedef struct pd_pprof_loc {
	pd_h128 h; /* the address, or (address 0) the mapping and the lines */
	uint64_t id;
	uint32_t map; /* mapping index + 1, 0 = none */
} pd_pprof_loc;

/* Read only for users, filled by pd_pprof_index(). */
typedef struct pd_pprof {
	pd_limits lim;
	const uint8_t *base; /* the raw profile */
	size_t len;

	/* spans of the top-level fields */
	PD_VEC(pd_span, st);  /* sample types */
	PD_VEC(pd_span, smp); /* samples */
	PD_VEC(pd_span, map);
	PD_VEC(pd_span, loc);
	PD_VEC(pd_span, fn);
	PD_VEC(pd_span, str);
	PD_VEC(pd_span, unk); /* unknown fields, key included (carried to the output) */
	PD_VEC(int64_t, comments);
	uint32_t nst, nsmp, nmap, nloc, nfn, nstr, nunk, ncomments;
	pd_span period_type;
	int64_t drop_frames, keep_frames, time_nanos, duration_nanos, period, default_sample_type,
		doc_link;

	/* tables, validated */
	PD_VEC(pd_h128, str_h); /* hash of every string */
	PD_VEC(uint64_t, ids);  /* scratch: the ids of the table being indexed */
	PD_VEC(pd_pprof_map, mi);
	PD_VEC(pd_pprof_fn, fi);
	PD_VEC(pd_pprof_loc, li);
	PD_VEC(pd_h128, lh);     /* dense location ids: location hash by id */
	PD_VEC(uint8_t, lvalid); /* dense location ids: 1 if the id exists */
	pd_idmap loc_ids, fn_ids, map_ids;
	uint32_t st_type[PD_PPROF_MAX_COLS], st_unit[PD_PPROF_MAX_COLS]; /* string indices */
} pd_pprof;

void pd_pprof_init(pd_pprof *x, const pd_limits *lim);
/* Frees the arrays; the index stays usable (it regrows). */
void pd_pprof_release(pd_pprof *x);
size_t pd_pprof_mem_bytes(const pd_pprof *x);

/* Indexes and validates the raw profile [base, base + len). On error
 * (PD_E_MALFORMED, PD_E_LIMIT, PD_E_NOMEM) e says what and where. */
int pd_pprof_index(pd_pprof *x, const uint8_t *base, size_t len, pd_err *e);

/* Returns index + 1, or 0 when id is unknown. */
static inline uint32_t pd_idmap_get(const pd_idmap *m, uint64_t id)
{
	if (!m->hashed)
		return id < m->dense_n ? m->dense[id] : 0;
	for (uint32_t s = (uint32_t)pd_mum(id, PD_H_K_LO) & m->hmask;; s = (s + 1) & m->hmask) {
		if (!m->hv[s])
			return 0;
		if (m->hk[s] == id)
			return m->hv[s];
	}
}

static inline pd_rd pd_pprof_rd(const pd_pprof *x, pd_span s)
{
	return pd_rd_make(x->base + s.off, s.len);
}

static inline pd_span pd_pprof_span(const pd_pprof *x, const uint8_t *p, size_t n)
{
	pd_span s = {(uint32_t)(p - x->base), (uint32_t)n};
	return s;
}

/* String idx (validated or not: "" when out of range). */
static inline void pd_pprof_str(const pd_pprof *x, uint64_t idx, const char **p, size_t *n)
{
	if (idx >= x->nstr)
		idx = 0;
	*p = (const char *)x->base + x->str[idx].off;
	*n = x->str[idx].len;
}

/*
 * A location id of a packed field: 1-2 bytes in practice, decoded without a
 * data-dependent branch; p[1] is readable while p < bend1 (end of the buffer
 * minus one). Longer or truncated varints take the checked slow path.
 */
static inline int pd_pprof_loc_id(const uint8_t **pp, const uint8_t *end, const uint8_t *bend1,
				  uint64_t *v)
{
	const uint8_t *p = *pp;
	if (__builtin_expect(p < bend1 && !(p[0] & p[1] & 0x80), 1)) {
		uint32_t b0 = p[0], c0 = b0 >> 7;
		*v = (b0 & 0x7f) | ((uint32_t)(p[1] & 0x7f) << 7) * c0;
		*pp = p + 1 + c0;
		return 0;
	}
	return pd_varint_slow(pp, end, v);
}

/* A Label's fields (string indices validated against the table). -1 when malformed. */
typedef struct pd_pprof_label {
	uint32_t key, str, unit;
	uint64_t num;
} pd_pprof_label;

static inline int pd_pprof_label_read(const pd_pprof *x, const uint8_t *p, size_t n,
				      pd_pprof_label *l)
{
	uint64_t v[PD_LABEL_NUM_UNIT + 1] = {0};
	if (pd_rd_varints(p, n, PD_LABEL_STRINGS | PD_BIT(PD_LABEL_NUM), PD_LABEL_STRINGS, x->nstr, v))
		return -1;
	l->key = (uint32_t)v[PD_LABEL_KEY];
	l->str = (uint32_t)v[PD_LABEL_STR];
	l->unit = (uint32_t)v[PD_LABEL_NUM_UNIT];
	l->num = v[PD_LABEL_NUM];
	return 0;
}

/* Marks (fn_mark[index] = 1) the functions the lines of location i refer to. */
void pd_pprof_mark_loc_functions(const pd_pprof *x, uint32_t i, uint8_t *fn_mark);
/* The address of location i (0 when absent). */
uint64_t pd_pprof_loc_address(const pd_pprof *x, uint32_t i);
/* The type and unit string indices of the period type (0 when absent). */
void pd_pprof_period_type(const pd_pprof *x, uint32_t *type, uint32_t *unit);

/* ---- the writer ------------------------------------------------------------ */

/* What to write: per-table keep flags (1 = write), the compacted string
 * index of every kept string, and the values of the kept samples. */
typedef struct pd_pprof_sel {
	const uint8_t *keep_smp, *keep_map, *keep_loc, *keep_fn, *keep_str;
	const uint32_t *str_map;
	const int64_t *vals; /* nst values per sample, sample i at vals + i * nst */
	int64_t duration_nanos;
} pd_pprof_sel;

typedef int (*pd_pprof_flush_fn)(void *ctx, const uint8_t *p, size_t n, pd_err *e);

/* Output: the encoded profile accumulates in out; when flush is set, it is
 * handed to flush in pieces of about flush_at bytes, otherwise it stays in
 * out whole for the caller. */
typedef struct pd_pprof_out {
	pd_buf out;
	size_t flush_at;
	pd_pprof_flush_fn flush;
	void *ctx;
} pd_pprof_out;

void pd_pprof_out_init(pd_pprof_out *o);
void pd_pprof_out_free(pd_pprof_out *o);
size_t pd_pprof_out_mem_bytes(const pd_pprof_out *o);

/* Writes the selection of x to o (out is reset first; the tail of the output
 * is left in o->out). */
int pd_pprof_write(const pd_pprof *x, const pd_pprof_sel *s, pd_pprof_out *o, pd_err *e);

#endif
