/*
 * pd_pprof: the pprof codec (see pd_pprof.h): the index of one raw profile
 * and the writer of a selection of it.
 */
#include "pd_pprof.h"

#include <stdlib.h>
#include <string.h>

/* memset for arrays that may still be NULL when empty (memset(NULL, 0, 0) is UB). */
static inline void zero(void *p, size_t n)
{
	if (n)
		memset(p, 0, n);
}

static int malformed(pd_err *e, const char *what, size_t idx)
{
	return pd_err_set(e, PD_E_MALFORMED, "malformed profile: bad %s #%zu", what, idx);
}

/* ---- id maps ---------------------------------------------------------------- */

static int idmap_build_hashed(pd_idmap *m, const uint64_t *ids, uint32_t n, const char *what,
			      pd_err *e)
{
	size_t want = 16;
	while (want < (size_t)n * 2)
		want *= 2;
	if (want > m->hcap) {
		uint64_t *k = realloc(m->hk, want * sizeof *k);
		if (k)
			m->hk = k;
		uint32_t *v = realloc(m->hv, want * sizeof *v);
		if (v)
			m->hv = v;
		if (!k || !v)
			return pd_err_set(e, PD_E_NOMEM, "out of memory for id map");
		m->hcap = want;
	}
	memset(m->hv, 0, want * sizeof *m->hv);
	m->hmask = (uint32_t)(want - 1);
	for (uint32_t i = 0; i < n; i++) {
		uint32_t s = (uint32_t)pd_mum(ids[i], PD_H_K_LO) & m->hmask;
		while (m->hv[s]) {
			if (m->hk[s] == ids[i])
				return pd_err_set(e, PD_E_MALFORMED,
						  "malformed profile: duplicate %s id %llu", what,
						  (unsigned long long)ids[i]);
			s = (s + 1) & m->hmask;
		}
		m->hk[s] = ids[i];
		m->hv[s] = i + 1;
	}
	return PD_OK;
}

static int idmap_build(pd_idmap *m, const uint64_t *ids, uint32_t n, const char *what, pd_err *e)
{
	uint64_t max = 0;
	for (uint32_t i = 0; i < n; i++) {
		if (ids[i] == 0)
			return pd_err_set(e, PD_E_MALFORMED, "malformed profile: %s #%u has id 0", what, i);
		if (ids[i] > max)
			max = ids[i];
	}
	m->hashed = max > 4 * (uint64_t)n + 1024;
	if (m->hashed)
		return idmap_build_hashed(m, ids, n, what, e);
	if (pd_array_grow((void **)&m->dense, &m->dense_cap, max + 1, sizeof *m->dense, e))
		return PD_E_NOMEM;
	memset(m->dense, 0, (max + 1) * sizeof *m->dense);
	m->dense_n = max + 1;
	for (uint32_t i = 0; i < n; i++) {
		if (m->dense[ids[i]])
			return pd_err_set(e, PD_E_MALFORMED, "malformed profile: duplicate %s id %llu",
					  what, (unsigned long long)ids[i]);
		m->dense[ids[i]] = i + 1;
	}
	return PD_OK;
}

static void idmap_release(pd_idmap *m)
{
	free(m->dense);
	free(m->hk);
	free(m->hv);
	memset(m, 0, sizeof *m);
}

static size_t idmap_bytes(const pd_idmap *m)
{
	return m->dense_cap * sizeof *m->dense + m->hcap * (sizeof *m->hk + sizeof *m->hv);
}

/* ---- lifecycle ------------------------------------------------------------ */

/* Every array the index grows. */
#define PPROF_VECS(X)                                                                              \
	X(st) X(smp) X(map) X(loc) X(fn) X(str) X(unk) X(comments) X(str_h) X(ids) X(mi) X(fi)    \
	X(li) X(lh) X(lvalid)

void pd_pprof_init(pd_pprof *x, const pd_limits *lim)
{
	memset(x, 0, sizeof *x);
	x->lim = *lim;
}

void pd_pprof_release(pd_pprof *x)
{
#define RELEASE(v) PD_VEC_FREE(x->v);
	PPROF_VECS(RELEASE)
#undef RELEASE
	idmap_release(&x->loc_ids);
	idmap_release(&x->fn_ids);
	idmap_release(&x->map_ids);
}

size_t pd_pprof_mem_bytes(const pd_pprof *x)
{
	size_t n = idmap_bytes(&x->loc_ids) + idmap_bytes(&x->fn_ids) + idmap_bytes(&x->map_ids);
#define COUNT(v) n += PD_VEC_BYTES(x->v);
	PPROF_VECS(COUNT)
#undef COUNT
	return n;
}

/* ---- top-level spans -------------------------------------------------------- */

static int push_span(pd_span **arr, size_t *cap, uint32_t *n, uint64_t limit, const char *what,
		     pd_span s, pd_err *e)
{
	if (*n >= limit)
		return pd_err_set(e, PD_E_LIMIT, "profile has more than %llu %s",
				  (unsigned long long)limit, what);
	if (*n >= *cap && pd_array_grow((void **)arr, cap, (size_t)*n + 1, sizeof(pd_span), e))
		return PD_E_NOMEM;
	(*arr)[(*n)++] = s;
	return PD_OK;
}

/* Where each varint scalar of Profile goes, by field number (0: not a scalar). */
static const size_t scalar_at[PD_PROFILE_DOC_LINK + 1] = {
	[PD_PROFILE_DROP_FRAMES] = offsetof(pd_pprof, drop_frames),
	[PD_PROFILE_KEEP_FRAMES] = offsetof(pd_pprof, keep_frames),
	[PD_PROFILE_TIME_NANOS] = offsetof(pd_pprof, time_nanos),
	[PD_PROFILE_DURATION_NANOS] = offsetof(pd_pprof, duration_nanos),
	[PD_PROFILE_PERIOD] = offsetof(pd_pprof, period),
	[PD_PROFILE_DEFAULT_SAMPLE_TYPE] = offsetof(pd_pprof, default_sample_type),
	[PD_PROFILE_DOC_LINK] = offsetof(pd_pprof, doc_link),
};

static int push_comment(pd_pprof *x, uint64_t v, pd_err *e)
{
	if (x->ncomments >= x->lim.max_table)
		return pd_err_set(e, PD_E_LIMIT, "too many comments");
	if (PD_GROW(x->comments, (size_t)x->ncomments + 1))
		return PD_E_NOMEM;
	x->comments[x->ncomments++] = (int64_t)v;
	return PD_OK;
}

/* Comments come packed or one per field. */
static int index_comment(pd_pprof *x, pd_rd *r, uint32_t wt, pd_err *e)
{
	uint64_t v;
	const uint8_t *p;
	size_t n;
	int rc;

	if (wt == PB_VARINT) {
		if (pd_rd_varint(r, &v))
			return malformed(e, "comment", x->ncomments);
		return push_comment(x, v, e);
	}
	if (wt != PB_LEN || pd_rd_len(r, &p, &n))
		return malformed(e, "comment", x->ncomments);
	pd_rd in = pd_rd_make(p, n);
	while (pd_rd_more(&in)) {
		if (pd_rd_varint(&in, &v))
			return malformed(e, "comment", x->ncomments);
		if ((rc = push_comment(x, v, e)))
			return rc;
	}
	return PD_OK;
}

static int is_message_field(uint32_t field)
{
	return (field >= PD_PROFILE_SAMPLE_TYPE && field <= PD_PROFILE_STRING_TABLE) ||
	       field == PD_PROFILE_PERIOD_TYPE;
}

static int is_scalar_field(uint32_t field)
{
	return field <= PD_PROFILE_DOC_LINK && scalar_at[field] != 0;
}

static int index_message(pd_pprof *x, uint32_t field, pd_span s, pd_err *e)
{
	switch (field) {
	case PD_PROFILE_SAMPLE_TYPE:
		return push_span(&x->st, &x->st_cap, &x->nst, x->lim.max_sample_types,
				 "sample types", s, e);
	case PD_PROFILE_SAMPLE:
		return push_span(&x->smp, &x->smp_cap, &x->nsmp, x->lim.max_samples, "samples", s, e);
	case PD_PROFILE_MAPPING:
		return push_span(&x->map, &x->map_cap, &x->nmap, x->lim.max_table, "mappings", s, e);
	case PD_PROFILE_LOCATION:
		return push_span(&x->loc, &x->loc_cap, &x->nloc, x->lim.max_table, "locations", s, e);
	case PD_PROFILE_FUNCTION:
		return push_span(&x->fn, &x->fn_cap, &x->nfn, x->lim.max_table, "functions", s, e);
	case PD_PROFILE_STRING_TABLE:
		if (s.len > x->lim.max_string)
			return pd_err_set(e, PD_E_LIMIT,
					  "string #%u is %u bytes, over the limit of %llu", x->nstr,
					  s.len, (unsigned long long)x->lim.max_string);
		return push_span(&x->str, &x->str_cap, &x->nstr, x->lim.max_table, "strings", s, e);
	case PD_PROFILE_PERIOD_TYPE:
		x->period_type = s;
		return PD_OK;
	}
	return PD_OK;
}

static int index_top(pd_pprof *x, pd_err *e)
{
	pd_rd r = pd_rd_make(x->base, x->len);
	int rc = PD_OK;

	x->nst = x->nsmp = x->nmap = x->nloc = x->nfn = x->nstr = x->nunk = x->ncomments = 0;
	x->period_type.off = x->period_type.len = 0;
	x->drop_frames = x->keep_frames = x->time_nanos = x->duration_nanos = 0;
	x->period = x->default_sample_type = x->doc_link = 0;

	while (pd_rd_more(&r) && rc == PD_OK) {
		const uint8_t *fstart = r.p, *p;
		size_t at = (size_t)(fstart - x->base), n;
		uint32_t field, wt;
		uint64_t v;

		if (pd_rd_key(&r, &field, &wt))
			return pd_err_set(e, PD_E_MALFORMED, "malformed profile: bad field key at byte %zu",
					  at);
		if (field == PD_PROFILE_COMMENT) {
			rc = index_comment(x, &r, wt, e);
		} else if (is_message_field(field)) {
			if (wt != PB_LEN || pd_rd_len(&r, &p, &n))
				return pd_err_set(e, PD_E_MALFORMED,
						  "malformed profile: bad length-delimited field %u at byte %zu",
						  field, at);
			rc = index_message(x, field, pd_pprof_span(x, p, n), e);
		} else if (is_scalar_field(field)) {
			if (wt != PB_VARINT || pd_rd_varint(&r, &v))
				return pd_err_set(e, PD_E_MALFORMED,
						  "malformed profile: bad varint field %u at byte %zu", field,
						  at);
			*(int64_t *)((char *)x + scalar_at[field]) = (int64_t)v;
		} else {
			if (pd_rd_skip(&r, wt))
				return pd_err_set(e, PD_E_MALFORMED,
						  "malformed profile: bad unknown field %u at byte %zu", field,
						  at);
			rc = push_span(&x->unk, &x->unk_cap, &x->nunk, x->lim.max_table, "unknown fields",
				       pd_pprof_span(x, fstart, (size_t)(r.p - fstart)), e);
		}
	}
	return rc;
}

/* ---- tables ------------------------------------------------------------------ */

static int parse_strings(pd_pprof *x, pd_err *e)
{
	if (x->nstr == 0 || x->str[0].len != 0)
		return pd_err_set(e, PD_E_MALFORMED,
				  "malformed profile: string table must start with \"\"");
	if (PD_GROW(x->str_h, x->nstr))
		return PD_E_NOMEM;
	for (uint32_t i = 0; i < x->nstr; i++)
		x->str_h[i] = pd_h_bytes(5, x->base + x->str[i].off, x->str[i].len);
	return PD_OK;
}

/* Reads the varint fields in mask and strs of message s into v; the fields
 * in strs must be string indices. */
static int read_fields(const pd_pprof *x, pd_span s, uint32_t mask, uint32_t strs, uint64_t *v)
{
	return pd_rd_varints(x->base + s.off, s.len, mask | strs, strs, x->nstr, v);
}

static int parse_value_types(pd_pprof *x, pd_err *e)
{
	if (x->nst == 0)
		return pd_err_set(e, PD_E_MALFORMED, "malformed profile: no sample_type (not a profile?)");
	for (uint32_t i = 0; i <= x->nst; i++) {
		uint64_t v[PD_VALUE_TYPE_UNIT + 1] = {0};
		uint32_t type, unit;
		if (read_fields(x, i < x->nst ? x->st[i] : x->period_type, 0, PD_VALUE_TYPE_STRINGS, v))
			return malformed(e, i < x->nst ? "sample type" : "period type", i);
		if (i == x->nst)
			break;
		type = x->st_type[i] = (uint32_t)v[PD_VALUE_TYPE_TYPE];
		unit = x->st_unit[i] = (uint32_t)v[PD_VALUE_TYPE_UNIT];
		for (uint32_t k = 0; k < i; k++) /* columns are matched by name */
			if (pd_h_eq(x->str_h[x->st_type[k]], x->str_h[type]) &&
			    pd_h_eq(x->str_h[x->st_unit[k]], x->str_h[unit]))
				return pd_err_set(e, PD_E_MALFORMED,
						  "malformed profile: sample types #%u and #%u are the same",
						  k, i);
	}
	return PD_OK;
}

static int parse_mappings(pd_pprof *x, pd_err *e)
{
	if (PD_GROW(x->mi, x->nmap) || PD_GROW(x->ids, x->nmap))
		return PD_E_NOMEM;
	for (uint32_t i = 0; i < x->nmap; i++) {
		uint64_t v[PD_MAPPING_BUILD_ID + 1] = {0};
		pd_pprof_map *m = &x->mi[i];
		pd_h128 h;
		if (read_fields(x, x->map[i], PD_BIT(PD_MAPPING_ID), PD_MAPPING_STRINGS, v))
			return malformed(e, "mapping", i);
		x->ids[i] = v[PD_MAPPING_ID];
		m->filename = (uint32_t)v[PD_MAPPING_FILENAME];
		m->build_id = (uint32_t)v[PD_MAPPING_BUILD_ID];
		h = pd_h_init(6);
		pd_h_pair(&h, x->str_h[m->filename]);
		pd_h_pair(&h, x->str_h[m->build_id]);
		m->h = pd_h_final(h);
	}
	return idmap_build(&x->map_ids, x->ids, x->nmap, "mapping", e);
}

static int parse_functions(pd_pprof *x, pd_err *e)
{
	if (PD_GROW(x->fi, x->nfn) || PD_GROW(x->ids, x->nfn))
		return PD_E_NOMEM;
	for (uint32_t i = 0; i < x->nfn; i++) {
		uint64_t v[PD_FUNCTION_FILENAME + 1] = {0};
		pd_pprof_fn *fi = &x->fi[i];
		if (read_fields(x, x->fn[i], PD_BIT(PD_FUNCTION_ID), PD_FUNCTION_STRINGS, v))
			return malformed(e, "function", i);
		x->ids[i] = v[PD_FUNCTION_ID];
		fi->name = (uint32_t)v[PD_FUNCTION_NAME];
		fi->sys = (uint32_t)v[PD_FUNCTION_SYSTEM_NAME];
		fi->file = (uint32_t)v[PD_FUNCTION_FILENAME];
	}
	return idmap_build(&x->fn_ids, x->ids, x->nfn, "function", e);
}

/* Validates one Line and folds it into h (when h is non-NULL). */
static int parse_line(const pd_pprof *x, const uint8_t *p, size_t n, pd_h128 *h)
{
	uint64_t v[PD_LINE_LINE + 1] = {0};
	uint64_t fid;
	if (pd_rd_varints(p, n, PD_BIT(PD_LINE_FUNCTION_ID) | PD_BIT(PD_LINE_LINE), 0, 0, v))
		return -1;
	fid = v[PD_LINE_FUNCTION_ID];
	if (fid && !pd_idmap_get(&x->fn_ids, fid))
		return -1;
	if (h) {
		if (fid) {
			const pd_pprof_fn *fi = &x->fi[pd_idmap_get(&x->fn_ids, fid) - 1];
			pd_h_pair(h, x->str_h[fi->name]);
			pd_h_pair(h, x->str_h[fi->sys]);
			pd_h_pair(h, x->str_h[fi->file]);
		} else {
			pd_h_word(h, 0);
		}
		pd_h_word(h, v[PD_LINE_LINE]);
	}
	return 0;
}

static int parse_location(pd_pprof *x, uint32_t i, pd_err *e)
{
	pd_rd r;
	uint64_t mid = 0, addr = 0;
	pd_pprof_loc *l = &x->li[i];
	pd_h128 h;
	int pass;

	x->ids[i] = 0;
	/* Pass 0 reads scalars and validates lines; pass 1 hashes lines (addr 0). */
	for (pass = 0; pass < 2; pass++) {
		r = pd_pprof_rd(x, x->loc[i]);
		if (pass == 1) {
			h = pd_h_init(2);
			if (l->map)
				pd_h_pair(&h, x->mi[l->map - 1].h);
		}
		while (pd_rd_more(&r)) {
			uint32_t f, wt;
			int bad = 0;
			const uint8_t *p;
			size_t n;
			if (pd_rd_key(&r, &f, &wt))
				return malformed(e, "location", i);
			if (f == PD_LOCATION_ID && pass == 0)
				bad = wt != PB_VARINT || pd_rd_varint(&r, &x->ids[i]);
			else if (f == PD_LOCATION_MAPPING_ID && pass == 0)
				bad = wt != PB_VARINT || pd_rd_varint(&r, &mid);
			else if (f == PD_LOCATION_ADDRESS && pass == 0)
				bad = wt != PB_VARINT || pd_rd_varint(&r, &addr);
			else if (f == PD_LOCATION_LINE)
				bad = wt != PB_LEN || pd_rd_len(&r, &p, &n) ||
				      parse_line(x, p, n, pass ? &h : NULL);
			else
				bad = pd_rd_skip(&r, wt);
			if (bad)
				return malformed(e, "location", i);
		}
		if (pass == 0) {
			l->id = x->ids[i];
			l->map = mid ? pd_idmap_get(&x->map_ids, mid) : 0;
			if (mid && !l->map)
				return pd_err_set(e, PD_E_MALFORMED,
						  "malformed profile: location #%u references unknown mapping %llu",
						  i, (unsigned long long)mid);
			if (addr) {
				h = pd_h_init(1);
				pd_h_word(&h, addr);
				l->h = pd_h_final(h);
				return PD_OK;
			}
		}
	}
	l->h = pd_h_final(h);
	return PD_OK;
}

/* With dense ids, the location hashes by id (the engine's hot loop reads them). */
static int build_loc_by_id(pd_pprof *x, pd_err *e)
{
	if (x->loc_ids.hashed)
		return PD_OK;
	if (PD_GROW(x->lh, x->loc_ids.dense_n) || PD_GROW(x->lvalid, x->loc_ids.dense_n))
		return PD_E_NOMEM;
	zero(x->lvalid, x->loc_ids.dense_n);
	for (uint32_t i = 0; i < x->nloc; i++) {
		x->lh[x->li[i].id] = x->li[i].h;
		x->lvalid[x->li[i].id] = 1;
	}
	return PD_OK;
}

static int parse_locations(pd_pprof *x, pd_err *e)
{
	int rc;
	if (PD_GROW(x->li, x->nloc) || PD_GROW(x->ids, x->nloc))
		return PD_E_NOMEM;
	for (uint32_t i = 0; i < x->nloc; i++)
		if ((rc = parse_location(x, i, e)))
			return rc;
	if ((rc = idmap_build(&x->loc_ids, x->ids, x->nloc, "location", e)))
		return rc;
	return build_loc_by_id(x, e);
}

static int validate_scalars(const pd_pprof *x, pd_err *e)
{
	const int64_t refs[] = {x->drop_frames, x->keep_frames, x->default_sample_type, x->doc_link};
	for (size_t i = 0; i < sizeof refs / sizeof refs[0]; i++)
		if (refs[i] < 0 || (uint64_t)refs[i] >= x->nstr)
			return pd_err_set(e, PD_E_MALFORMED, "malformed profile: string index out of range");
	for (uint32_t i = 0; i < x->ncomments; i++)
		if (x->comments[i] < 0 || (uint64_t)x->comments[i] >= x->nstr)
			return pd_err_set(e, PD_E_MALFORMED, "malformed profile: comment out of range");
	return PD_OK;
}

int pd_pprof_index(pd_pprof *x, const uint8_t *base, size_t len, pd_err *e)
{
	int rc;
	x->base = base;
	x->len = len;
	if ((rc = index_top(x, e)) || (rc = parse_strings(x, e)) || (rc = parse_value_types(x, e)) ||
	    (rc = parse_mappings(x, e)) || (rc = parse_functions(x, e)) ||
	    (rc = parse_locations(x, e)) || (rc = validate_scalars(x, e)))
		return rc;
	return PD_OK;
}

/* ---- readers over an indexed profile ---------------------------------------- */

void pd_pprof_mark_loc_functions(const pd_pprof *x, uint32_t i, uint8_t *fn_mark)
{
	pd_rd r = pd_pprof_rd(x, x->loc[i]);
	while (pd_rd_more(&r)) {
		uint32_t f, wt;
		const uint8_t *p;
		size_t n;
		if (pd_rd_key(&r, &f, &wt))
			return;
		if (f == PD_LOCATION_LINE && wt == PB_LEN && !pd_rd_len(&r, &p, &n)) {
			uint64_t v[PD_LINE_FUNCTION_ID + 1] = {0};
			uint32_t fi;
			if (pd_rd_varints(p, n, PD_BIT(PD_LINE_FUNCTION_ID), 0, 0, v))
				continue; /* validated by the index */
			fi = v[PD_LINE_FUNCTION_ID] ? pd_idmap_get(&x->fn_ids, v[PD_LINE_FUNCTION_ID]) : 0;
			if (fi)
				fn_mark[fi - 1] = 1;
		} else if (pd_rd_skip(&r, wt)) {
			return;
		}
	}
}

uint64_t pd_pprof_loc_address(const pd_pprof *x, uint32_t i)
{
	uint64_t v[PD_LOCATION_ADDRESS + 1] = {0};
	if (pd_rd_varints(x->base + x->loc[i].off, x->loc[i].len, PD_BIT(PD_LOCATION_ADDRESS), 0, 0,
			  v))
		return 0;
	return v[PD_LOCATION_ADDRESS];
}

void pd_pprof_period_type(const pd_pprof *x, uint32_t *type, uint32_t *unit)
{
	uint64_t v[PD_VALUE_TYPE_UNIT + 1] = {0};
	*type = *unit = 0;
	if (read_fields(x, x->period_type, 0, PD_VALUE_TYPE_STRINGS, v))
		return;
	*type = (uint32_t)v[PD_VALUE_TYPE_TYPE];
	*unit = (uint32_t)v[PD_VALUE_TYPE_UNIT];
}

/* ---- writer -------------------------------------------------------------------- */

void pd_pprof_out_init(pd_pprof_out *o)
{
	memset(o, 0, sizeof *o);
	pd_buf_init(&o->out, 0);
}

void pd_pprof_out_free(pd_pprof_out *o)
{
	pd_buf_free(&o->out);
}

size_t pd_pprof_out_mem_bytes(const pd_pprof_out *o)
{
	return o->out.alloc;
}

/* Makes room for n bytes in o->out, handing what it holds to flush first
 * when that would pass flush_at. */
static int out_need(pd_pprof_out *o, size_t n, pd_err *e)
{
	int rc;
	if (o->flush && o->out.len + n > o->flush_at && o->out.len) {
		rc = o->flush(o->ctx, o->out.data, o->out.len, e);
		pd_buf_reset(&o->out);
		if (rc)
			return rc;
	}
	return pd_buf_reserve(&o->out, n, e);
}

/* Copies message s, remapping the string-index fields in strmask. */
static int reencode(const pd_pprof *x, const uint32_t *str_map, pd_buf *dst, pd_span s,
		    uint32_t strmask, pd_err *e)
{
	pd_rd r = pd_pprof_rd(x, s);
	int rc;
	if ((rc = pd_buf_reserve(dst, s.len + 10, e)))
		return rc;
	while (pd_rd_more(&r)) {
		const uint8_t *fs = r.p;
		uint32_t f, wt;
		uint64_t v;
		if (pd_rd_key(&r, &f, &wt))
			return malformed(e, "message", 0);
		if (f < 32 && (strmask >> f & 1) && wt == PB_VARINT) {
			if (pd_rd_varint(&r, &v) || v >= x->nstr)
				return malformed(e, "string index", 0);
			pd_pbw_key(dst, f, PB_VARINT);
			pd_pbw_varint(dst, str_map[v]);
		} else {
			if (pd_rd_skip(&r, wt))
				return malformed(e, "message", 0);
			pd_pbw_raw(dst, fs, (size_t)(r.p - fs));
		}
	}
	return PD_OK;
}

/* A length-delimited field written in place: len_open puts the key and a
 * one-byte length, len_close the real length, moving the body only in the
 * rare case it is 128 bytes or more (the caller reserved 16 bytes more than
 * the body needs). */
static size_t len_open(pd_buf *b, uint32_t field)
{
	pd_pbw_key(b, field, PB_LEN);
	return b->len++;
}

static void len_close(pd_buf *b, size_t at)
{
	size_t n = b->len - at - 1;
	if (n < 0x80) {
		b->data[at] = (uint8_t)n;
		return;
	}
	memmove(b->data + at + pd_varint_size(n), b->data + at + 1, n);
	b->len = at;
	pd_pbw_varint(b, n);
	b->len += n;
}

static int emit_len(pd_pprof_out *o, uint32_t field, const uint8_t *p, size_t n, pd_err *e)
{
	int rc;
	if ((rc = out_need(o, n + 16, e)))
		return rc;
	pd_pbw_key(&o->out, field, PB_LEN);
	pd_pbw_varint(&o->out, n);
	pd_pbw_raw(&o->out, p, n);
	return PD_OK;
}

static int emit_reencoded(const pd_pprof *x, const pd_pprof_sel *s, pd_pprof_out *o,
			  uint32_t field, pd_span m, uint32_t strmask, pd_err *e)
{
	size_t at;
	int rc;
	if ((rc = out_need(o, m.len + 32, e)))
		return rc;
	at = len_open(&o->out, field);
	if ((rc = reencode(x, s->str_map, &o->out, m, strmask, e)))
		return rc;
	len_close(&o->out, at);
	return PD_OK;
}

/* Sample i with its new values, written straight into the output: location
 * ids and unknown fields verbatim, labels remapped (never longer: a new
 * string index is at most the old one), the values (packed) last. */
static int write_sample(const pd_pprof *x, const pd_pprof_sel *s, pd_pprof_out *o, uint32_t i,
			pd_err *e)
{
	pd_rd r = pd_pprof_rd(x, x->smp[i]);
	const int64_t *v = s->vals + (size_t)i * x->nst;
	pd_buf *b = &o->out;
	size_t vlen = 0, at;
	int rc;

	if ((rc = out_need(o, x->smp[i].len + (size_t)x->nst * 10 + 48, e)))
		return rc;
	at = len_open(b, PD_PROFILE_SAMPLE);
	while (pd_rd_more(&r)) {
		const uint8_t *fs = r.p, *p;
		uint32_t f, wt;
		size_t n, lat;
		if (pd_rd_key(&r, &f, &wt))
			return malformed(e, "sample", i);
		if (f == PD_SAMPLE_LABEL && wt == PB_LEN) {
			if (pd_rd_len(&r, &p, &n))
				return malformed(e, "sample", i);
			lat = len_open(b, PD_SAMPLE_LABEL);
			if ((rc = reencode(x, s->str_map, b, pd_pprof_span(x, p, n), PD_LABEL_STRINGS, e)))
				return rc;
			len_close(b, lat);
			continue;
		}
		if (pd_rd_skip(&r, wt))
			return malformed(e, "sample", i);
		if (f != PD_SAMPLE_VALUE)
			pd_pbw_raw(b, fs, (size_t)(r.p - fs));
	}
	for (uint32_t c = 0; c < x->nst; c++)
		vlen += pd_varint_size((uint64_t)v[c]);
	pd_pbw_key(b, PD_SAMPLE_VALUE, PB_LEN);
	pd_pbw_varint(b, vlen);
	for (uint32_t c = 0; c < x->nst; c++)
		pd_pbw_varint(b, (uint64_t)v[c]);
	len_close(b, at);
	return PD_OK;
}

static int emit_varint_field(pd_pprof_out *o, uint32_t field, uint64_t v, pd_err *e)
{
	int rc;
	if (v == 0)
		return PD_OK;
	if ((rc = out_need(o, 24, e)))
		return rc;
	pd_pbw_key(&o->out, field, PB_VARINT);
	pd_pbw_varint(&o->out, v);
	return PD_OK;
}

static int write_comments(const pd_pprof *x, const uint32_t *str_map, pd_pprof_out *o, pd_err *e)
{
	size_t n = 0;
	int rc;
	for (uint32_t i = 0; i < x->ncomments; i++)
		n += pd_varint_size(str_map[x->comments[i]]);
	if ((rc = out_need(o, n + 16, e)))
		return rc;
	pd_pbw_key(&o->out, PD_PROFILE_COMMENT, PB_LEN);
	pd_pbw_varint(&o->out, n);
	for (uint32_t i = 0; i < x->ncomments; i++)
		pd_pbw_varint(&o->out, str_map[x->comments[i]]);
	return PD_OK;
}

static int write_tail(const pd_pprof *x, const pd_pprof_sel *s, pd_pprof_out *o, pd_err *e)
{
	const uint32_t *sm = s->str_map;
	int rc;
	if (x->ncomments && (rc = write_comments(x, sm, o, e)))
		return rc;
	if ((rc = emit_varint_field(o, PD_PROFILE_DROP_FRAMES, sm[x->drop_frames], e)) ||
	    (rc = emit_varint_field(o, PD_PROFILE_KEEP_FRAMES, sm[x->keep_frames], e)) ||
	    (rc = emit_varint_field(o, PD_PROFILE_TIME_NANOS, (uint64_t)x->time_nanos, e)) ||
	    (rc = emit_varint_field(o, PD_PROFILE_DURATION_NANOS, (uint64_t)s->duration_nanos, e)))
		return rc;
	if (x->period_type.len && (rc = emit_reencoded(x, s, o, PD_PROFILE_PERIOD_TYPE, x->period_type,
						       PD_VALUE_TYPE_STRINGS, e)))
		return rc;
	if ((rc = emit_varint_field(o, PD_PROFILE_PERIOD, (uint64_t)x->period, e)) ||
	    (rc = emit_varint_field(o, PD_PROFILE_DEFAULT_SAMPLE_TYPE, sm[x->default_sample_type],
				    e)) ||
	    (rc = emit_varint_field(o, PD_PROFILE_DOC_LINK, sm[x->doc_link], e)))
		return rc;
	for (uint32_t i = 0; i < x->nunk; i++) { /* unknown top-level fields are carried */
		if ((rc = out_need(o, x->unk[i].len, e)))
			return rc;
		pd_pbw_raw(&o->out, x->base + x->unk[i].off, x->unk[i].len);
	}
	return PD_OK;
}

int pd_pprof_write(const pd_pprof *x, const pd_pprof_sel *s, pd_pprof_out *o, pd_err *e)
{
	int rc;
	pd_buf_reset(&o->out);
	for (uint32_t c = 0; c < x->nst; c++)
		if ((rc = emit_reencoded(x, s, o, PD_PROFILE_SAMPLE_TYPE, x->st[c],
					 PD_VALUE_TYPE_STRINGS, e)))
			return rc;
	for (uint32_t i = 0; i < x->nsmp; i++)
		if (s->keep_smp[i] && (rc = write_sample(x, s, o, i, e)))
			return rc;
	for (uint32_t i = 0; i < x->nmap; i++)
		if (s->keep_map[i] && (rc = emit_reencoded(x, s, o, PD_PROFILE_MAPPING, x->map[i],
							   PD_MAPPING_STRINGS, e)))
			return rc;
	for (uint32_t i = 0; i < x->nloc; i++)
		if (s->keep_loc[i] && (rc = emit_len(o, PD_PROFILE_LOCATION, x->base + x->loc[i].off,
						     x->loc[i].len, e)))
			return rc;
	for (uint32_t i = 0; i < x->nfn; i++)
		if (s->keep_fn[i] && (rc = emit_reencoded(x, s, o, PD_PROFILE_FUNCTION, x->fn[i],
							  PD_FUNCTION_STRINGS, e)))
			return rc;
	for (uint32_t i = 0; i < x->nstr; i++)
		if (s->keep_str[i] && (rc = emit_len(o, PD_PROFILE_STRING_TABLE,
						     x->base + x->str[i].off, x->str[i].len, e)))
			return rc;
	return write_tail(x, s, o, e);
}
