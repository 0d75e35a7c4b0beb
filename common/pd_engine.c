/*
 * pd_engine: the delta engine (see pd_engine.h for the passes and contract).
 *
 * Everything below works on spans (offset, length) into one buffer holding
 * the raw protobuf. Tables (strings, mappings, functions, locations) are
 * validated and hashed once; samples are decoded twice (hash pass, and the
 * write pass for the samples that survive). IDs of locations, functions and
 * mappings are kept as they are, so location messages and the location_id
 * fields of samples are copied verbatim; only string indices are remapped
 * into a compacted string table.
 */
#include "pd_engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pd_hash.h"
#include "pd_pb.h"

#define OUT_FLUSH_AT (256u << 10) /* raw bytes staged before deflate() */
#define MAX_COLS 16

typedef struct span {
	uint32_t off, len;
} span;

typedef struct idmap {
	uint32_t *dense; /* dense[id] = index + 1 */
	size_t dense_cap;
	uint64_t dense_n;
	uint64_t *hk; /* open addressing when ids are sparse */
	uint32_t *hv;
	size_t hcap;
	uint32_t hmask;
	int hashed;
} idmap;

typedef struct mapinfo {
	pd_h128 h;
	uint32_t filename, build_id;
} mapinfo;

typedef struct fninfo {
	uint32_t name, sys, file;
} fninfo;

typedef struct locinfo {
	pd_h128 h;
	uint64_t id;
	uint32_t map; /* mapping index + 1, 0 = none */
} locinfo;

#define VEC(T, name)                                                                               \
	T *name;                                                                                   \
	size_t name##_cap

struct pd_engine {
	pd_limits lim;
	pd_inflater infl;
	pd_buf raw;
	const uint8_t *base;
	size_t len;
	pd_deflater defl;
	pd_buf out, scratch, scratch2;

	/* top level */
	VEC(span, st);
	VEC(span, smp);
	VEC(span, map);
	VEC(span, loc);
	VEC(span, fn);
	VEC(span, str);
	VEC(span, unk);
	VEC(int64_t, comments);
	uint32_t nst, nsmp, nmap, nloc, nfn, nstr, nunk, ncomments;
	span period_type;
	int64_t drop_frames, keep_frames, time_nanos, duration_nanos, period, default_sample_type,
		doc_link;

	/* tables */
	VEC(pd_h128, str_h);
	VEC(uint32_t, str_map);
	VEC(uint8_t, str_mark);
	VEC(uint32_t, str_cnt); /* label references per string */
	VEC(uint64_t, ids);
	VEC(mapinfo, mi);
	VEC(uint8_t, map_mark);
	VEC(fninfo, fi);
	VEC(uint8_t, fn_mark);
	VEC(locinfo, li);
	VEC(uint8_t, loc_mark);
	VEC(uint32_t, loc_cnt); /* sample references per location key (see loc_key) */
	VEC(pd_h128, lh);       /* dense ids: location hash by id */
	VEC(uint8_t, lvalid);   /* dense ids: 1 if the id exists */
	idmap loc_ids, fn_ids, map_ids;

	/* columns */
	uint32_t st_type[MAX_COLS], st_unit[MAX_COLS];
	uint8_t policy[MAX_COLS];
	uint32_t ndelta, dcol[MAX_COLS]; /* profile column of delta column k */
	int pcol[MAX_COLS];              /* previous state's column of delta column k */
	char colname_buf[MAX_COLS][512];
	uint64_t schema;

	/* per sample */
	VEC(int64_t, vals);
	VEC(uint32_t, ent_first);
	VEC(uint8_t, keep);
	VEC(pd_h128, idh);
	uint64_t ns_feed;
	int whole; /* input came whole (pd_engine_run): output deflated whole too */
};

/* ---- small utilities ---------------------------------------------------- */

/* memset for arrays that may still be NULL when empty (memset(NULL, 0, 0) is UB). */
static inline void zero(void *p, size_t n)
{
	if (n)
		memset(p, 0, n);
}

static int grow_(void **pp, size_t *cap, size_t need, size_t elsz, pd_err *e)
{
	size_t nc;
	void *p;

	if (need <= *cap)
		return PD_OK;
	nc = *cap ? *cap : 64;
	while (nc < need)
		nc *= 2;
	p = realloc(*pp, nc * elsz);
	if (!p)
		return pd_err_set(e, PD_E_NOMEM, "out of memory (%zu x %zu bytes)", nc, elsz);
	*pp = p;
	*cap = nc;
	return PD_OK;
}
#define GROW(arr, need) grow_((void **)&(arr), &arr##_cap, (need), sizeof *(arr), e)

static int malformed(pd_err *e, const char *what, size_t idx)
{
	return pd_err_set(e, PD_E_MALFORMED, "malformed profile: bad %s #%zu", what, idx);
}

static inline pd_rd span_rd(const pd_engine *g, span s)
{
	return pd_rd_make(g->base + s.off, s.len);
}

static int idmap_build(idmap *m, const uint64_t *ids, uint32_t n, const char *what, pd_err *e)
{
	uint64_t max = 0;
	for (uint32_t i = 0; i < n; i++) {
		if (ids[i] == 0)
			return pd_err_set(e, PD_E_MALFORMED, "malformed profile: %s #%u has id 0", what, i);
		if (ids[i] > max)
			max = ids[i];
	}
	m->hashed = max > 4 * (uint64_t)n + 1024;
	if (!m->hashed) {
		if (grow_((void **)&m->dense, &m->dense_cap, max + 1, sizeof *m->dense, e))
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
	}
	return PD_OK;
}

/* Returns index + 1, or 0 when id is unknown. */
static inline uint32_t idmap_get(const idmap *m, uint64_t id)
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

static void idmap_free(idmap *m)
{
	free(m->dense);
	free(m->hk);
	free(m->hv);
}

/* ---- lifecycle ------------------------------------------------------------ */

void pd_req_default(pd_req *r)
{
	memset(r, 0, sizeof *r);
	r->first_policy = PD_FIRST_KEEP;
	r->gzip_level = 1;
	r->chunk = 64 << 10;
}

const char *pd_status_name(int status)
{
	switch (status) {
	case PD_STATUS_DELTA:
		return "DELTA";
	case PD_STATUS_BASELINE:
		return "BASELINE";
	case PD_STATUS_DUPLICATE:
		return "DUPLICATE";
	default:
		return "?";
	}
}

const char *pd_reason_name(int reason)
{
	static const char *const n[] = {"-", "first", "reset", "evicted", "moved", "state-lost"};
	return reason >= 0 && reason <= PD_REASON_STATE_LOST ? n[reason] : "?";
}

pd_engine *pd_engine_new(const pd_limits *lim)
{
	pd_engine *g = calloc(1, sizeof *g);
	if (!g)
		return NULL;
	if (lim)
		g->lim = *lim;
	else
		pd_limits_default(&g->lim);
	if (g->lim.max_inflated > UINT32_MAX)
		g->lim.max_inflated = UINT32_MAX;
	if (g->lim.max_sample_types > MAX_COLS)
		g->lim.max_sample_types = MAX_COLS;
	pd_infl_init(&g->infl);
	pd_defl_init(&g->defl);
	pd_buf_init(&g->raw, g->lim.max_inflated);
	pd_buf_init(&g->out, 0);
	pd_buf_init(&g->scratch, 0);
	pd_buf_init(&g->scratch2, 0);
	return g;
}

/* Every array and buffer a request grows, as (pointer, capacity) pairs: freed
 * by pd_engine_free, released by pd_engine_trim, counted by
 * pd_engine_mem_bytes. */
#define ENGINE_VECS(X)                                                                             \
	X(st) X(smp) X(map) X(loc) X(fn) X(str) X(unk) X(comments) X(str_h) X(str_map)           \
	X(str_mark) X(str_cnt) X(loc_cnt) X(lh) X(lvalid) X(ids) X(mi) X(map_mark) X(fi)          \
	X(fn_mark) X(li) X(loc_mark) X(vals) X(ent_first) X(keep) X(idh)

static void idmap_release(idmap *m)
{
	idmap_free(m);
	memset(m, 0, sizeof *m);
}

static size_t idmap_bytes(const idmap *m)
{
	return m->dense_cap * sizeof *m->dense + m->hcap * (sizeof *m->hk + sizeof *m->hv);
}

/* Frees the growable memory; the engine stays usable (it regrows). */
static void engine_release(pd_engine *g)
{
#define RELEASE(v)                                                                                 \
	free(g->v);                                                                                \
	g->v = NULL;                                                                               \
	g->v##_cap = 0;
	ENGINE_VECS(RELEASE)
#undef RELEASE
	pd_buf_free(&g->raw);
	pd_buf_free(&g->out);
	pd_buf_free(&g->scratch);
	pd_buf_free(&g->scratch2);
	pd_buf_free(&g->defl.zout);
	idmap_release(&g->loc_ids);
	idmap_release(&g->fn_ids);
	idmap_release(&g->map_ids);
}

void pd_engine_free(pd_engine *g)
{
	if (!g)
		return;
	engine_release(g);
	pd_infl_free(&g->infl);
	pd_defl_free(&g->defl);
	free(g);
}

size_t pd_engine_trim(pd_engine *g, size_t keep)
{
	size_t held = pd_engine_mem_bytes(g);

	if (held <= keep)
		return 0;
	engine_release(g);
	return held;
}

size_t pd_engine_mem_bytes(const pd_engine *g)
{
	size_t n = g->raw.alloc + g->out.alloc + g->scratch.alloc + g->scratch2.alloc +
		   g->defl.zout.alloc + idmap_bytes(&g->loc_ids) + idmap_bytes(&g->fn_ids) +
		   idmap_bytes(&g->map_ids);

#define COUNT(v) n += g->v##_cap * sizeof *g->v;
	ENGINE_VECS(COUNT)
#undef COUNT
	return n;
}

/* ---- index pass: top-level spans ------------------------------------------ */

static int push_span(pd_engine *g, span **arr, size_t *cap, uint32_t *n, uint64_t limit,
		     const char *what, span s, pd_err *e)
{
	if (*n >= limit)
		return pd_err_set(e, PD_E_LIMIT, "profile has more than %llu %s",
				  (unsigned long long)limit, what);
	if (*n >= *cap && grow_((void **)arr, cap, (size_t)*n + 1, sizeof(span), e))
		return PD_E_NOMEM;
	(*arr)[(*n)++] = s;
	return PD_OK;
}

static int index_scalar(pd_engine *g, uint32_t field, uint64_t v)
{
	switch (field) {
	case 7:
		g->drop_frames = (int64_t)v;
		break;
	case 8:
		g->keep_frames = (int64_t)v;
		break;
	case 9:
		g->time_nanos = (int64_t)v;
		break;
	case 10:
		g->duration_nanos = (int64_t)v;
		break;
	case 12:
		g->period = (int64_t)v;
		break;
	case 14:
		g->default_sample_type = (int64_t)v;
		break;
	case 15:
		g->doc_link = (int64_t)v;
		break;
	}
	return PD_OK;
}

static int push_comment(pd_engine *g, uint64_t v, pd_err *e)
{
	if (g->ncomments >= g->lim.max_table)
		return pd_err_set(e, PD_E_LIMIT, "too many comments");
	if (GROW(g->comments, (size_t)g->ncomments + 1))
		return PD_E_NOMEM;
	g->comments[g->ncomments++] = (int64_t)v;
	return PD_OK;
}

static int index_comment(pd_engine *g, pd_rd *r, uint32_t wt, pd_err *e)
{
	uint64_t v;
	const uint8_t *p;
	size_t n;
	int rc;

	if (wt == PB_VARINT) {
		if (pd_rd_varint(r, &v))
			return malformed(e, "comment", g->ncomments);
		return push_comment(g, v, e);
	}
	if (wt != PB_LEN || pd_rd_len(r, &p, &n))
		return malformed(e, "comment", g->ncomments);
	pd_rd in = pd_rd_make(p, n);
	while (pd_rd_more(&in)) {
		if (pd_rd_varint(&in, &v))
			return malformed(e, "comment", g->ncomments);
		if ((rc = push_comment(g, v, e)))
			return rc;
	}
	return PD_OK;
}

static int index_top(pd_engine *g, pd_err *e)
{
	pd_rd r = pd_rd_make(g->base, g->len);
	int rc = PD_OK;

	g->nst = g->nsmp = g->nmap = g->nloc = g->nfn = g->nstr = g->nunk = g->ncomments = 0;
	g->period_type.off = g->period_type.len = 0;
	g->drop_frames = g->keep_frames = g->time_nanos = g->duration_nanos = 0;
	g->period = g->default_sample_type = g->doc_link = 0;

	while (pd_rd_more(&r) && rc == PD_OK) {
		const uint8_t *fstart = r.p, *p;
		uint32_t field, wt;
		uint64_t v;
		size_t n;
		span s;

		if (pd_rd_key(&r, &field, &wt))
			return pd_err_set(e, PD_E_MALFORMED, "malformed profile: bad field key at byte %zu",
					  (size_t)(fstart - g->base));
		if (field == 13) {
			rc = index_comment(g, &r, wt, e);
			continue;
		}
		if ((field >= 1 && field <= 6) || field == 11) {
			if (wt != PB_LEN || pd_rd_len(&r, &p, &n))
				return pd_err_set(e, PD_E_MALFORMED,
						  "malformed profile: bad length-delimited field %u at byte %zu",
						  field, (size_t)(fstart - g->base));
			s.off = (uint32_t)(p - g->base);
			s.len = (uint32_t)n;
		} else if (field >= 7 && field <= 15) {
			if (wt != PB_VARINT || pd_rd_varint(&r, &v))
				return pd_err_set(e, PD_E_MALFORMED,
						  "malformed profile: bad varint field %u at byte %zu", field,
						  (size_t)(fstart - g->base));
			index_scalar(g, field, v);
			continue;
		} else {
			if (pd_rd_skip(&r, wt))
				return pd_err_set(e, PD_E_MALFORMED,
						  "malformed profile: bad unknown field %u at byte %zu", field,
						  (size_t)(fstart - g->base));
			s.off = (uint32_t)(fstart - g->base);
			s.len = (uint32_t)(r.p - fstart);
			rc = push_span(g, &g->unk, &g->unk_cap, &g->nunk, g->lim.max_table, "unknown fields",
				       s, e);
			continue;
		}
		switch (field) {
		case 1:
			rc = push_span(g, &g->st, &g->st_cap, &g->nst, g->lim.max_sample_types,
				       "sample types", s, e);
			break;
		case 2:
			rc = push_span(g, &g->smp, &g->smp_cap, &g->nsmp, g->lim.max_samples, "samples", s,
				       e);
			break;
		case 3:
			rc = push_span(g, &g->map, &g->map_cap, &g->nmap, g->lim.max_table, "mappings", s,
				       e);
			break;
		case 4:
			rc = push_span(g, &g->loc, &g->loc_cap, &g->nloc, g->lim.max_table, "locations", s,
				       e);
			break;
		case 5:
			rc = push_span(g, &g->fn, &g->fn_cap, &g->nfn, g->lim.max_table, "functions", s,
				       e);
			break;
		case 6:
			if (n > g->lim.max_string)
				return pd_err_set(e, PD_E_LIMIT,
						  "string #%u is %zu bytes, over the limit of %llu", g->nstr,
						  n, (unsigned long long)g->lim.max_string);
			rc = push_span(g, &g->str, &g->str_cap, &g->nstr, g->lim.max_table, "strings", s,
				       e);
			break;
		case 11:
			g->period_type = s;
			break;
		}
	}
	return rc;
}

/* ---- tables ---------------------------------------------------------------- */

static int parse_strings(pd_engine *g, pd_err *e)
{
	if (g->nstr == 0 || g->str[0].len != 0)
		return pd_err_set(e, PD_E_MALFORMED,
				  "malformed profile: string table must start with \"\"");
	if (GROW(g->str_h, g->nstr) || GROW(g->str_map, g->nstr) || GROW(g->str_mark, g->nstr) ||
	    GROW(g->str_cnt, g->nstr))
		return PD_E_NOMEM;
	for (uint32_t i = 0; i < g->nstr; i++)
		g->str_h[i] = pd_h_bytes(5, g->base + g->str[i].off, g->str[i].len);
	return PD_OK;
}

/* Reads a string index field; validates it against the table. */
static inline int str_idx(const pd_engine *g, pd_rd *r, uint32_t wt, uint32_t *out)
{
	uint64_t v;
	if (wt != PB_VARINT || pd_rd_varint(r, &v) || v >= g->nstr)
		return -1;
	*out = (uint32_t)v;
	return 0;
}

static inline int rd_u64(pd_rd *r, uint32_t wt, uint64_t *v)
{
	return wt != PB_VARINT || pd_rd_varint(r, v);
}

static int parse_value_types(pd_engine *g, pd_err *e)
{
	if (g->nst == 0)
		return pd_err_set(e, PD_E_MALFORMED, "malformed profile: no sample_type (not a profile?)");
	for (uint32_t i = 0; i <= g->nst; i++) {
		span s = i < g->nst ? g->st[i] : g->period_type;
		pd_rd r = span_rd(g, s);
		uint32_t type = 0, unit = 0;
		while (pd_rd_more(&r)) {
			uint32_t f, wt;
			int bad;
			if (pd_rd_key(&r, &f, &wt))
				return malformed(e, "sample type", i);
			if (f == 1)
				bad = str_idx(g, &r, wt, &type);
			else if (f == 2)
				bad = str_idx(g, &r, wt, &unit);
			else
				bad = pd_rd_skip(&r, wt);
			if (bad)
				return malformed(e, i < g->nst ? "sample type" : "period type", i);
		}
		if (i < g->nst) {
			g->st_type[i] = type;
			g->st_unit[i] = unit;
			for (uint32_t k = 0; k < i; k++) /* columns are matched by name */
				if (pd_h_eq(g->str_h[g->st_type[k]], g->str_h[type]) &&
				    pd_h_eq(g->str_h[g->st_unit[k]], g->str_h[unit]))
					return pd_err_set(e, PD_E_MALFORMED,
							  "malformed profile: sample types #%u and #%u are the same",
							  k, i);
		}
	}
	return PD_OK;
}

static int parse_mappings(pd_engine *g, pd_err *e)
{
	if (GROW(g->mi, g->nmap) || GROW(g->ids, g->nmap) || GROW(g->map_mark, g->nmap))
		return PD_E_NOMEM;
	for (uint32_t i = 0; i < g->nmap; i++) {
		pd_rd r = span_rd(g, g->map[i]);
		mapinfo *m = &g->mi[i];
		pd_h128 h;
		g->ids[i] = 0;
		m->filename = m->build_id = 0;
		while (pd_rd_more(&r)) {
			uint32_t f, wt;
			int bad;
			if (pd_rd_key(&r, &f, &wt))
				return malformed(e, "mapping", i);
			if (f == 1)
				bad = rd_u64(&r, wt, &g->ids[i]);
			else if (f == 5)
				bad = str_idx(g, &r, wt, &m->filename);
			else if (f == 6)
				bad = str_idx(g, &r, wt, &m->build_id);
			else
				bad = pd_rd_skip(&r, wt);
			if (bad)
				return malformed(e, "mapping", i);
		}
		h = pd_h_init(6);
		pd_h_pair(&h, g->str_h[m->filename]);
		pd_h_pair(&h, g->str_h[m->build_id]);
		m->h = pd_h_final(h);
	}
	return idmap_build(&g->map_ids, g->ids, g->nmap, "mapping", e);
}

static int parse_functions(pd_engine *g, pd_err *e)
{
	if (GROW(g->fi, g->nfn) || GROW(g->ids, g->nfn) || GROW(g->fn_mark, g->nfn))
		return PD_E_NOMEM;
	for (uint32_t i = 0; i < g->nfn; i++) {
		pd_rd r = span_rd(g, g->fn[i]);
		fninfo *fi = &g->fi[i];
		g->ids[i] = 0;
		fi->name = fi->sys = fi->file = 0;
		while (pd_rd_more(&r)) {
			uint32_t f, wt;
			int bad;
			if (pd_rd_key(&r, &f, &wt))
				return malformed(e, "function", i);
			if (f == 1)
				bad = rd_u64(&r, wt, &g->ids[i]);
			else if (f == 2)
				bad = str_idx(g, &r, wt, &fi->name);
			else if (f == 3)
				bad = str_idx(g, &r, wt, &fi->sys);
			else if (f == 4)
				bad = str_idx(g, &r, wt, &fi->file);
			else
				bad = pd_rd_skip(&r, wt);
			if (bad)
				return malformed(e, "function", i);
		}
	}
	return idmap_build(&g->fn_ids, g->ids, g->nfn, "function", e);
}

/* Validates one Line and folds it into h (when h is non-NULL). */
static int parse_line(pd_engine *g, const uint8_t *p, size_t n, pd_h128 *h)
{
	pd_rd r = pd_rd_make(p, n);
	uint64_t fid = 0, line = 0;
	while (pd_rd_more(&r)) {
		uint32_t f, wt;
		int bad;
		if (pd_rd_key(&r, &f, &wt))
			return -1;
		if (f == 1)
			bad = rd_u64(&r, wt, &fid);
		else if (f == 2)
			bad = rd_u64(&r, wt, &line);
		else
			bad = pd_rd_skip(&r, wt);
		if (bad)
			return -1;
	}
	if (fid && !idmap_get(&g->fn_ids, fid))
		return -1;
	if (h) {
		if (fid) {
			const fninfo *fi = &g->fi[idmap_get(&g->fn_ids, fid) - 1];
			pd_h_pair(h, g->str_h[fi->name]);
			pd_h_pair(h, g->str_h[fi->sys]);
			pd_h_pair(h, g->str_h[fi->file]);
		} else {
			pd_h_word(h, 0);
		}
		pd_h_word(h, line);
	}
	return 0;
}

static int parse_location(pd_engine *g, uint32_t i, pd_err *e)
{
	pd_rd r = span_rd(g, g->loc[i]);
	uint64_t mid = 0, addr = 0;
	locinfo *l = &g->li[i];
	pd_h128 h;
	int pass;

	g->ids[i] = 0;
	/* Pass 0 reads scalars and validates lines; pass 1 hashes lines (addr 0). */
	for (pass = 0; pass < 2; pass++) {
		r = span_rd(g, g->loc[i]);
		if (pass == 1) {
			h = pd_h_init(2);
			if (l->map)
				pd_h_pair(&h, g->mi[l->map - 1].h);
		}
		while (pd_rd_more(&r)) {
			uint32_t f, wt;
			int bad = 0;
			const uint8_t *p;
			size_t n;
			if (pd_rd_key(&r, &f, &wt))
				return malformed(e, "location", i);
			if (f == 1 && pass == 0)
				bad = rd_u64(&r, wt, &g->ids[i]);
			else if (f == 2 && pass == 0)
				bad = rd_u64(&r, wt, &mid);
			else if (f == 3 && pass == 0)
				bad = rd_u64(&r, wt, &addr);
			else if (f == 4)
				bad = wt != PB_LEN || pd_rd_len(&r, &p, &n) ||
				      parse_line(g, p, n, pass ? &h : NULL);
			else
				bad = pd_rd_skip(&r, wt);
			if (bad)
				return malformed(e, "location", i);
		}
		if (pass == 0) {
			l->id = g->ids[i];
			l->map = mid ? idmap_get(&g->map_ids, mid) : 0;
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

/*
 * Reference counts are kept per location *key*: the id itself when ids are
 * dense (so the hot loop indexes by id, without the id -> index step), the
 * table index otherwise.
 */
static inline uint64_t loc_key(const pd_engine *g, uint32_t idx)
{
	return g->loc_ids.hashed ? idx : g->li[idx].id;
}

static size_t loc_keys(const pd_engine *g)
{
	return g->loc_ids.hashed ? g->nloc : g->loc_ids.dense_n;
}

static int build_loc_by_id(pd_engine *g, pd_err *e)
{
	if (GROW(g->loc_cnt, loc_keys(g) + 1))
		return PD_E_NOMEM;
	if (g->loc_ids.hashed)
		return PD_OK;
	if (GROW(g->lh, g->loc_ids.dense_n) || GROW(g->lvalid, g->loc_ids.dense_n))
		return PD_E_NOMEM;
	zero(g->lvalid, g->loc_ids.dense_n);
	for (uint32_t i = 0; i < g->nloc; i++) {
		g->lh[g->li[i].id] = g->li[i].h;
		g->lvalid[g->li[i].id] = 1;
	}
	return PD_OK;
}

static int parse_locations(pd_engine *g, pd_err *e)
{
	int rc;
	if (GROW(g->li, g->nloc) || GROW(g->ids, g->nloc) || GROW(g->loc_mark, g->nloc))
		return PD_E_NOMEM;
	for (uint32_t i = 0; i < g->nloc; i++)
		if ((rc = parse_location(g, i, e)))
			return rc;
	if ((rc = idmap_build(&g->loc_ids, g->ids, g->nloc, "location", e)))
		return rc;
	return build_loc_by_id(g, e);
}

static int index_all(pd_engine *g, pd_err *e)
{
	int rc;
	if ((rc = index_top(g, e)) || (rc = parse_strings(g, e)) || (rc = parse_value_types(g, e)) ||
	    (rc = parse_mappings(g, e)) || (rc = parse_functions(g, e)) ||
	    (rc = parse_locations(g, e)))
		return rc;
	return PD_OK;
}

/* ---- columns and schema ---------------------------------------------------- */

static int str_eq(const pd_engine *g, uint32_t idx, const char *s)
{
	size_t n = strlen(s);
	return g->str[idx].len == n && memcmp(g->base + g->str[idx].off, s, n) == 0;
}

static int default_policy(const pd_engine *g, uint32_t type)
{
	static const char *const delta_types[] = {"alloc_objects", "alloc_space", "contentions",
						  "delay"};
	for (size_t i = 0; i < sizeof delta_types / sizeof delta_types[0]; i++)
		if (str_eq(g, type, delta_types[i]))
			return PD_POLICY_DELTA;
	return PD_POLICY_GAUGE;
}

static void setup_columns(pd_engine *g, const pd_req *req)
{
	pd_h128 sum = {0, 0}, h;

	g->ndelta = 0;
	for (uint32_t c = 0; c < g->nst; c++) {
		int pol = default_policy(g, g->st_type[c]);
		for (size_t k = 0; k < req->noverrides; k++)
			if (str_eq(g, g->st_type[c], req->overrides[k].name))
				pol = req->overrides[k].policy;
		g->policy[c] = (uint8_t)pol;
		if (pol == PD_POLICY_DELTA)
			g->dcol[g->ndelta++] = c;
		h = pd_h_init(7);
		pd_h_pair(&h, g->str_h[g->st_type[c]]);
		pd_h_pair(&h, g->str_h[g->st_unit[c]]);
		h = pd_h_final(h);
		sum.lo += h.lo;
		sum.hi += h.hi;
	}
	/* Schema: the *set* of sample types (order-free) plus the period type. */
	h = pd_h_init(8);
	pd_h_pair(&h, sum);
	{
		pd_rd r = span_rd(g, g->period_type);
		while (pd_rd_more(&r)) {
			uint32_t f, wt;
			uint64_t v;
			if (pd_rd_key(&r, &f, &wt) || wt != PB_VARINT || pd_rd_varint(&r, &v))
				break; /* validated in parse_value_types */
			if (f == 1 || f == 2)
				pd_h_pair(&h, g->str_h[v]);
		}
	}
	g->schema = pd_h_final(h).lo;
}

static size_t col_name(pd_engine *g, uint32_t c, char *buf, size_t cap)
{
	size_t tl = g->str[g->st_type[c]].len, ul = g->str[g->st_unit[c]].len;
	if (tl + ul + 2 > cap) {
		tl = tl > cap / 2 ? cap / 2 : tl;
		ul = ul > cap / 2 - 2 ? cap / 2 - 2 : ul;
	}
	memcpy(buf, g->base + g->str[g->st_type[c]].off, tl);
	buf[tl] = '/';
	memcpy(buf + tl + 1, g->base + g->str[g->st_unit[c]].off, ul);
	buf[tl + 1 + ul] = 0;
	return tl + 1 + ul;
}

/* ---- hash pass --------------------------------------------------------------- */

static inline int label_hash(pd_engine *g, const uint8_t *p, size_t n, pd_h128 *out)
{
	pd_rd r = pd_rd_make(p, n);
	uint32_t key = 0, str = 0, unit = 0;
	uint64_t num = 0;
	pd_h128 h;
	while (pd_rd_more(&r)) {
		uint32_t f, wt;
		int bad;
		if (pd_rd_key(&r, &f, &wt))
			return -1;
		if (f == 1)
			bad = str_idx(g, &r, wt, &key);
		else if (f == 2)
			bad = str_idx(g, &r, wt, &str);
		else if (f == 3)
			bad = rd_u64(&r, wt, &num);
		else if (f == 4)
			bad = str_idx(g, &r, wt, &unit);
		else
			bad = pd_rd_skip(&r, wt);
		if (bad)
			return -1;
	}
	g->str_cnt[key]++;
	g->str_cnt[str]++;
	g->str_cnt[unit]++;
	h = pd_h_init(4);
	pd_h_pair(&h, g->str_h[key]);
	pd_h_pair(&h, g->str_h[str]);
	pd_h_word(&h, num);
	pd_h_pair(&h, g->str_h[unit]);
	*out = pd_h_final(h);
	return 0;
}


/*
 * Identity of sample i: its locations' hashes in order (a polynomial chain
 * per lane), the order-free sum of its label hashes, and the counts. Values
 * go to vals. Lanes stay in registers: this loop is the engine's hot spot.
 */
typedef struct stack_acc {
	uint64_t lo, hi;
	uint32_t depth;
} stack_acc;

static inline int fold_loc(const pd_engine *g, stack_acc *a, uint64_t id)
{
	uint32_t x = idmap_get(&g->loc_ids, id);
	if (!x)
		return -1;
	a->lo = a->lo * PD_H_POLY_LO + g->li[x - 1].h.lo;
	a->hi = a->hi * PD_H_POLY_HI + g->li[x - 1].h.hi;
	g->loc_cnt[loc_key(g, x - 1)]++;
	a->depth++;
	return 0;
}

/*
 * A location id of a packed field: 1-2 bytes in practice, decoded without a
 * data-dependent branch; p[1] is readable while p < bend1 (end of the buffer
 * minus one). Longer or truncated varints take the checked slow path.
 */
static inline int loc_id_varint(const uint8_t **pp, const uint8_t *end, const uint8_t *bend1,
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

/*
 * Packed location ids with dense ids (the common case): the hottest loop of
 * the engine, kept free of calls and memory round trips. Returns 0, -1
 * (malformed varint) or -2 (unknown location id).
 */
static int fold_locs_dense(const pd_engine *g, const uint8_t *p, const uint8_t *end, stack_acc *a)
{
	const uint8_t *bend1 = g->base + g->len - 1; /* p[1] is readable while p < bend1 */
	const pd_h128 *lh = g->lh;
	const uint8_t *valid = g->lvalid;
	const uint64_t dn = g->loc_ids.dense_n;
	uint32_t *cnt = g->loc_cnt;
	uint64_t lo = a->lo, hi = a->hi;
	uint32_t depth = a->depth, ok = 1;

	while (p < end) {
		uint64_t v;
		if (loc_id_varint(&p, end, bend1, &v))
			return -1;
		if (__builtin_expect(v >= dn, 0))
			return -2;
		ok &= valid[v]; /* checked once per sample, off the hot path */
		lo = lo * PD_H_POLY_LO + lh[v].lo;
		hi = hi * PD_H_POLY_HI + lh[v].hi;
		cnt[v]++;
		depth++;
	}
	if (!ok)
		return -2;
	a->lo = lo;
	a->hi = hi;
	a->depth = depth;
	return p == end ? 0 : -1;
}

static int fold_locs(const pd_engine *g, const uint8_t *p, size_t n, stack_acc *a)
{
	pd_rd r = pd_rd_make(p, n);
	uint64_t v;
	if (!g->loc_ids.hashed)
		return fold_locs_dense(g, p, p + n, a);
	while (pd_rd_more(&r)) {
		if (pd_rd_varint(&r, &v))
			return -1;
		if (fold_loc(g, a, v))
			return -2;
	}
	return 0;
}

static int read_values(const pd_engine *g, const uint8_t *p, const uint8_t *end, int64_t *vals,
		       uint32_t *nvals)
{
	const uint8_t *bend = g->base + g->len;
	uint32_t n = *nvals, max = g->nst;
	while (p < end) {
		uint64_t v = 0;
		if (pd_varint8(&p, end, bend, &v) || n >= max)
			return -1;
		vals[n++] = (int64_t)v;
	}
	*nvals = n;
	return 0;
}

/*
 * Identity of sample i: its locations' hashes in order (a polynomial chain
 * per lane), the order-free sum of its label hashes, and the counts. Values
 * go to vals.
 */
static int decode_sample(pd_engine *g, uint32_t i, int64_t *vals, pd_h128 *id, pd_err *e)
{
	pd_rd r = span_rd(g, g->smp[i]);
	stack_acc a = {PD_H_SEED_LO ^ 3, PD_H_SEED_HI ^ (3 * PD_H_K_HI), 0};
	uint64_t llo = 0, lhi = 0;
	uint32_t nlabels = 0, nvals = 0;
	pd_h128 h;

	while (pd_rd_more(&r)) {
		uint32_t f, wt;
		uint64_t v;
		const uint8_t *p;
		size_t n;
		int bad = 0;
		if (pd_rd_key(&r, &f, &wt))
			return malformed(e, "sample", i);
		if (f == 1 && wt == PB_LEN) {
			bad = pd_rd_len(&r, &p, &n) ? -1 : fold_locs(g, p, n, &a);
		} else if (f == 1 && wt == PB_VARINT) {
			bad = pd_rd_varint(&r, &v) ? -1 : fold_loc(g, &a, v) ? -2 : 0;
		} else if (f == 2 && wt == PB_LEN) {
			bad = pd_rd_len(&r, &p, &n) || read_values(g, p, p + n, vals, &nvals);
		} else if (f == 2 && wt == PB_VARINT) {
			bad = pd_rd_varint(&r, &v) || nvals >= g->nst;
			if (!bad)
				vals[nvals++] = (int64_t)v;
		} else if (f == 3 && wt == PB_LEN) {
			pd_h128 lh = {0, 0};
			bad = pd_rd_len(&r, &p, &n) || label_hash(g, p, n, &lh);
			llo += lh.lo; /* sum: independent of label order */
			lhi += lh.hi;
			nlabels++;
		} else if (f <= 3) {
			bad = 1; /* known field, wrong wire type */
		} else {
			bad = pd_rd_skip(&r, wt);
		}
		if (bad == -2)
			return pd_err_set(e, PD_E_MALFORMED,
					  "malformed profile: sample #%u references an unknown location id", i);
		if (bad)
			return malformed(e, "sample", i);
	}
	if (a.depth > g->lim.max_depth)
		return pd_err_set(e, PD_E_LIMIT, "sample #%u has %u locations, over the limit of %llu", i,
				  a.depth, (unsigned long long)g->lim.max_depth);
	if (nlabels > g->lim.max_labels)
		return pd_err_set(e, PD_E_LIMIT, "sample #%u has %u labels, over the limit of %llu", i,
				  nlabels, (unsigned long long)g->lim.max_labels);
	if (nvals != g->nst)
		return pd_err_set(e, PD_E_MALFORMED,
				  "malformed profile: sample #%u has %u values, expected %u", i, nvals,
				  g->nst);
	h.lo = a.lo;
	h.hi = a.hi;
	pd_h_pair(&h, (pd_h128){llo, lhi});
	pd_h_word(&h, ((uint64_t)nlabels << 32) | a.depth);
	*id = pd_h_final(h);
	return PD_OK;
}

static int hash_pass(pd_engine *g, pd_state *next, pd_err *e)
{
	const char *names[MAX_COLS];
	size_t lens[MAX_COLS];
	uint32_t nst = g->nst;
	int rc;

	for (uint32_t k = 0; k < g->ndelta; k++) {
		lens[k] = col_name(g, g->dcol[k], g->colname_buf[k], sizeof g->colname_buf[k]);
		names[k] = g->colname_buf[k];
	}
	if ((rc = pd_state_prepare(next, g->nsmp, names, lens, g->ndelta, e)))
		return rc;
	if (GROW(g->vals, (size_t)g->nsmp * nst + 1) || GROW(g->ent_first, (size_t)g->nsmp + 1) ||
	    GROW(g->keep, (size_t)g->nsmp + 1) || GROW(g->idh, (size_t)g->nsmp + 1))
		return PD_E_NOMEM;
	zero(g->str_cnt, g->nstr * sizeof *g->str_cnt);
	zero(g->loc_cnt, loc_keys(g) * sizeof *g->loc_cnt);
	for (uint32_t i = 0; i < g->nsmp; i++)
		if ((rc = decode_sample(g, i, g->vals + (size_t)i * nst, &g->idh[i], e)))
			return rc;
	/* Upserts apart from decoding, so the index can be prefetched ahead. */
	for (uint32_t i = 0; i < g->nsmp; i++) {
		int64_t *v = g->vals + (size_t)i * nst;
		uint32_t ent;
		int ins;
		int64_t *sv;

		if (i + 12 < g->nsmp)
			pd_state_prefetch(next, g->idh[i + 12]);
		ent = pd_state_upsert(next, g->idh[i], &ins);
		sv = pd_state_vals(next, ent);
		g->keep[i] = (uint8_t)ins; /* 1 = first occurrence of its identity */
		if (ins) {
			g->ent_first[ent] = i;
			for (uint32_t k = 0; k < g->ndelta; k++)
				sv[k] = v[g->dcol[k]];
			continue;
		}
		/* Duplicate identity: sum into the first occurrence (wrapping, no UB). */
		int64_t *fv = g->vals + (size_t)g->ent_first[ent] * nst;
		for (uint32_t c = 0; c < nst; c++)
			fv[c] = (int64_t)((uint64_t)fv[c] + (uint64_t)v[c]);
		for (uint32_t k = 0; k < g->ndelta; k++)
			sv[k] = (int64_t)((uint64_t)sv[k] + (uint64_t)v[g->dcol[k]]);
	}
	return PD_OK;
}

/* ---- diff pass ----------------------------------------------------------------- */

static const char *check_reset_meta(pd_engine *g, const pd_state *prev, const pd_req *req)
{
	if (req->incarnation && pd_state_incarnation(prev) &&
	    req->incarnation != pd_state_incarnation(prev))
		return "producer incarnation changed";
	if (g->schema != pd_state_schema(prev))
		return "sample types changed";
	if (g->period != pd_state_period(prev))
		return "period changed";
	if (g->time_nanos < pd_state_time_nanos(prev))
		return "time_nanos went backwards";
	if (g->ndelta != pd_state_ncols(prev))
		return "delta columns changed";
	for (uint32_t k = 0; k < g->ndelta; k++) {
		g->pcol[k] = pd_state_col_index(prev, g->colname_buf[k], strlen(g->colname_buf[k]));
		if (g->pcol[k] < 0)
			return "delta columns changed";
	}
	return NULL;
}

/* Is entry q of prev (valid: checked by the caller) identity h? */
static inline int prev_at(const pd_state *prev, uint32_t pn, int64_t q, pd_h128 h)
{
	return q >= 0 && q < (int64_t)pn && pd_h_eq(pd_state_hash_at(prev, (uint32_t)q), h);
}

/*
 * Subtracts previous values; returns 1 if a counter went backwards.
 *
 * Consecutive profiles of a process list their samples in nearly the same
 * order (Go prepends new buckets to its bucket lists and walks them in
 * order), so the previous entry of identity j is first looked for at j plus
 * the offset of the last match: a sequential read. Only when that guess
 * misses (new samples, reordering) does the lookup go through the index,
 * and only then is the index prefetched ahead.
 */
static int diff_values(pd_engine *g, const pd_state *prev, const pd_state *next)
{
	uint32_t n = (uint32_t)pd_state_count(next), pn = (uint32_t)pd_state_count(prev);
	uint32_t nst = g->nst;
	int64_t off = 0; /* expected previous index of identity j: j + off */
	for (uint32_t j = 0; j < n; j++) {
		uint32_t pj;
		pd_h128 h;
		if (j + 16 < n && !prev_at(prev, pn, (int64_t)j + 16 + off, h = pd_state_hash_at(next, j + 16)))
			pd_state_prefetch(prev, h);
		if (j + 8 < n && !prev_at(prev, pn, (int64_t)j + 8 + off, h = pd_state_hash_at(next, j + 8)))
			pd_state_prefetch_entry(prev, h);
		h = pd_state_hash_at(next, j);
		if (prev_at(prev, pn, (int64_t)j + off, h)) {
			pj = (uint32_t)((int64_t)j + off);
		} else {
			pj = pd_state_find(prev, h);
			if (pj == UINT32_MAX)
				continue;
			off = (int64_t)pj - (int64_t)j;
		}
		int64_t *v = g->vals + (size_t)g->ent_first[j] * nst;
		const int64_t *pv = pd_state_cvals(prev, pj);
		for (uint32_t k = 0; k < g->ndelta; k++) {
			int64_t cur = v[g->dcol[k]], old = pv[g->pcol[k]];
			if (cur < old)
				return 1;
			v[g->dcol[k]] = cur - old;
		}
	}
	return 0;
}

static void restore_cumulative(pd_engine *g, pd_state *next)
{
	uint32_t n = (uint32_t)pd_state_count(next);
	for (uint32_t j = 0; j < n; j++) {
		int64_t *v = g->vals + (size_t)g->ent_first[j] * g->nst;
		const int64_t *sv = pd_state_cvals(next, j);
		for (uint32_t k = 0; k < g->ndelta; k++)
			v[g->dcol[k]] = sv[k];
	}
}

#ifdef PD_TEST_PERTURB
/* Test builds only (make PERTURB=1, and $PD_TEST_PERTURB set): a wrong value
 * on purpose, +1 on the first kept sample's first column, for the tests of
 * shadow verification. */
static void perturb_one(pd_engine *g)
{
	for (uint32_t i = 0; i < g->nsmp; i++)
		if (g->keep[i]) {
			g->vals[(size_t)i * g->nst] += 1;
			return;
		}
}
#endif

static uint32_t select_samples(pd_engine *g, int drop_all)
{
	uint32_t kept = 0;
	for (uint32_t i = 0; i < g->nsmp; i++) {
		const int64_t *v = g->vals + (size_t)i * g->nst;
		int nz = 0;
		if (!g->keep[i])
			continue;
		for (uint32_t c = 0; c < g->nst && !nz; c++)
			nz = v[c] != 0;
		g->keep[i] = (uint8_t)(nz && !drop_all);
		kept += g->keep[i];
	}
	return kept;
}

/* ---- mark pass ------------------------------------------------------------------- */

static inline void mark_str(pd_engine *g, uint64_t idx)
{
	if (idx < g->nstr)
		g->str_mark[idx] = 1;
}

static void mark_msg_strings(pd_engine *g, span s, uint32_t strmask)
{
	pd_rd r = span_rd(g, s);
	while (pd_rd_more(&r)) {
		uint32_t f, wt;
		uint64_t v;
		if (pd_rd_key(&r, &f, &wt))
			return;
		if (f < 32 && (strmask >> f & 1) && wt == PB_VARINT) {
			if (pd_rd_varint(&r, &v))
				return;
			mark_str(g, v);
		} else if (pd_rd_skip(&r, wt)) {
			return;
		}
	}
}

static inline void count_label(pd_engine *g, const uint8_t *p, size_t n, uint32_t d)
{
	pd_rd r = pd_rd_make(p, n);
	while (pd_rd_more(&r)) {
		uint32_t f, wt;
		uint64_t v;
		if (pd_rd_key(&r, &f, &wt))
			return;
		if ((f == 1 || f == 2 || f == 4) && wt == PB_VARINT) {
			if (pd_rd_varint(&r, &v))
				return;
			g->str_cnt[v] += d; /* indices were validated by the hash pass */
		} else if (pd_rd_skip(&r, wt)) {
			return;
		}
	}
}

/* The ids of a packed field, validated by the hash pass, counted by id. */
static void count_locs_dense(const pd_engine *g, const uint8_t *p, const uint8_t *end, uint32_t d)
{
	const uint8_t *bend1 = g->base + g->len - 1;
	uint32_t *cnt = g->loc_cnt;
	while (p < end) {
		uint64_t v;
		if (loc_id_varint(&p, end, bend1, &v))
			return;
		cnt[v] += d;
	}
}

/* Adds d (+1 or -1 as uint32) to the reference counts of sample i. */
static void count_sample(pd_engine *g, uint32_t i, uint32_t d)
{
	pd_rd r = span_rd(g, g->smp[i]);
	const uint32_t *dense = g->loc_ids.hashed ? NULL : g->loc_ids.dense;
	while (pd_rd_more(&r)) {
		uint32_t f, wt;
		uint64_t v;
		const uint8_t *p;
		size_t n;
		if (pd_rd_key(&r, &f, &wt))
			return;
		if (f == 1 && wt == PB_LEN && !pd_rd_len(&r, &p, &n)) {
			if (dense) {
				count_locs_dense(g, p, p + n, d);
			} else {
				pd_rd in = pd_rd_make(p, n);
				while (pd_rd_more(&in) && !pd_rd_varint(&in, &v))
					g->loc_cnt[idmap_get(&g->loc_ids, v) - 1u] += d;
			}
		} else if (f == 1 && wt == PB_VARINT && !pd_rd_varint(&r, &v)) {
			g->loc_cnt[loc_key(g, idmap_get(&g->loc_ids, v) - 1)] += d;
		} else if (f == 3 && wt == PB_LEN && !pd_rd_len(&r, &p, &n)) {
			count_label(g, p, n, d);
		} else if (pd_rd_skip(&r, wt)) {
			return;
		}
	}
}

static void mark_location_refs(pd_engine *g, uint32_t i)
{
	pd_rd r = span_rd(g, g->loc[i]);
	if (g->li[i].map)
		g->map_mark[g->li[i].map - 1] = 1;
	while (pd_rd_more(&r)) {
		uint32_t f, wt;
		const uint8_t *p;
		size_t n;
		if (pd_rd_key(&r, &f, &wt))
			return;
		if (f == 4 && wt == PB_LEN && !pd_rd_len(&r, &p, &n)) {
			pd_rd lr = pd_rd_make(p, n);
			while (pd_rd_more(&lr)) {
				uint32_t lf, lwt;
				uint64_t v;
				if (pd_rd_key(&lr, &lf, &lwt))
					break;
				if (lf == 1 && lwt == PB_VARINT && !pd_rd_varint(&lr, &v)) {
					uint32_t fi = v ? idmap_get(&g->fn_ids, v) : 0;
					if (fi)
						g->fn_mark[fi - 1] = 1;
				} else if (pd_rd_skip(&lr, lwt)) {
					break;
				}
			}
		} else if (pd_rd_skip(&r, wt)) {
			return;
		}
	}
}

/*
 * The hash pass counted, per location and per label string, the samples
 * referring to it. Here the counts are brought down to the kept samples by
 * whichever is cheaper: subtracting the samples not kept (heap deltas keep
 * most samples) or recounting the kept ones (block/mutex deltas keep few).
 */
static void mark_pass(pd_engine *g, uint32_t kept)
{
	zero(g->fn_mark, g->nfn);
	zero(g->map_mark, g->nmap);
	if (g->nsmp - kept <= kept) {
		for (uint32_t i = 0; i < g->nsmp; i++)
			if (!g->keep[i])
				count_sample(g, i, UINT32_MAX);
	} else {
		zero(g->str_cnt, g->nstr * sizeof *g->str_cnt);
		zero(g->loc_cnt, loc_keys(g) * sizeof *g->loc_cnt);
		for (uint32_t i = 0; i < g->nsmp; i++)
			if (g->keep[i])
				count_sample(g, i, 1);
	}
	for (uint32_t i = 0; i < g->nloc; i++)
		g->loc_mark[i] = g->loc_cnt[loc_key(g, i)] != 0;
	for (uint32_t i = 0; i < g->nstr; i++)
		g->str_mark[i] = g->str_cnt[i] != 0;
	g->str_mark[0] = 1;
	for (uint32_t i = 0; i < g->nloc; i++)
		if (g->loc_mark[i])
			mark_location_refs(g, i);
	for (uint32_t i = 0; i < g->nfn; i++)
		if (g->fn_mark[i]) {
			mark_str(g, g->fi[i].name);
			mark_str(g, g->fi[i].sys);
			mark_str(g, g->fi[i].file);
		}
	for (uint32_t i = 0; i < g->nmap; i++)
		if (g->map_mark[i]) {
			mark_str(g, g->mi[i].filename);
			mark_str(g, g->mi[i].build_id);
		}
	for (uint32_t c = 0; c < g->nst; c++) {
		mark_str(g, g->st_type[c]);
		mark_str(g, g->st_unit[c]);
	}
	mark_msg_strings(g, g->period_type, 1u << 1 | 1u << 2);
	for (uint32_t i = 0; i < g->ncomments; i++)
		mark_str(g, (uint64_t)g->comments[i]);
	mark_str(g, (uint64_t)g->drop_frames);
	mark_str(g, (uint64_t)g->keep_frames);
	mark_str(g, (uint64_t)g->default_sample_type);
	mark_str(g, (uint64_t)g->doc_link);
	{
		uint32_t next = 0;
		for (uint32_t i = 0; i < g->nstr; i++)
			g->str_map[i] = g->str_mark[i] ? next++ : 0;
	}
}

/* ---- write pass ------------------------------------------------------------------ */

static int ow_flush(pd_engine *g, pd_err *e)
{
	int rc;
	if (g->out.len == 0)
		return PD_OK;
	rc = pd_defl_write(&g->defl, g->out.data, g->out.len, e);
	pd_buf_reset(&g->out);
	return rc;
}

/* Streaming mode hands deflate() pieces of OUT_FLUSH_AT bytes; whole mode
 * keeps the output in g->out for one libdeflate call at the end. */
static int ow_need(pd_engine *g, size_t n, pd_err *e)
{
	int rc;
	if (!g->whole && g->out.len + n > OUT_FLUSH_AT && g->out.len && (rc = ow_flush(g, e)))
		return rc;
	return pd_buf_reserve(&g->out, n, e);
}

/* Copies message s, remapping the string-index fields in strmask. */
static int reencode(pd_engine *g, pd_buf *dst, span s, uint32_t strmask, pd_err *e)
{
	pd_rd r = span_rd(g, s);
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
			if (pd_rd_varint(&r, &v) || v >= g->nstr)
				return malformed(e, "string index", 0);
			pd_pbw_key(dst, f, PB_VARINT);
			pd_pbw_varint(dst, g->str_map[v]);
		} else {
			if (pd_rd_skip(&r, wt))
				return malformed(e, "message", 0);
			pd_pbw_raw(dst, fs, (size_t)(r.p - fs));
		}
	}
	return PD_OK;
}

static int emit_len(pd_engine *g, uint32_t field, const uint8_t *p, size_t n, pd_err *e)
{
	int rc;
	if ((rc = ow_need(g, n + 16, e)))
		return rc;
	pd_pbw_key(&g->out, field, PB_LEN);
	pd_pbw_varint(&g->out, n);
	pd_pbw_raw(&g->out, p, n);
	return PD_OK;
}

static int emit_reencoded(pd_engine *g, uint32_t field, span s, uint32_t strmask, pd_err *e)
{
	int rc;
	pd_buf_reset(&g->scratch);
	if ((rc = reencode(g, &g->scratch, s, strmask, e)))
		return rc;
	return emit_len(g, field, g->scratch.data, g->scratch.len, e);
}

static int write_sample(pd_engine *g, uint32_t i, pd_err *e)
{
	pd_rd r = span_rd(g, g->smp[i]);
	const int64_t *v = g->vals + (size_t)i * g->nst;
	pd_buf *b = &g->scratch;
	size_t vlen = 0;
	int rc;

	pd_buf_reset(b);
	if ((rc = pd_buf_reserve(b, g->smp[i].len + (size_t)g->nst * 10 + 16, e)))
		return rc;
	while (pd_rd_more(&r)) {
		const uint8_t *fs = r.p, *p;
		uint32_t f, wt;
		size_t n;
		if (pd_rd_key(&r, &f, &wt))
			return malformed(e, "sample", i);
		if (f == 3 && wt == PB_LEN) {
			span ls;
			if (pd_rd_len(&r, &p, &n))
				return malformed(e, "sample", i);
			ls.off = (uint32_t)(p - g->base);
			ls.len = (uint32_t)n;
			pd_buf_reset(&g->scratch2);
			if ((rc = reencode(g, &g->scratch2, ls, 1u << 1 | 1u << 2 | 1u << 4, e)))
				return rc;
			pd_pbw_key(b, 3, PB_LEN);
			pd_pbw_varint(b, g->scratch2.len);
			pd_pbw_raw(b, g->scratch2.data, g->scratch2.len);
			continue;
		}
		if (pd_rd_skip(&r, wt))
			return malformed(e, "sample", i);
		if (f != 2) /* location ids (ids are kept) and unknown fields: verbatim */
			pd_pbw_raw(b, fs, (size_t)(r.p - fs));
	}
	for (uint32_t c = 0; c < g->nst; c++)
		vlen += pd_varint_size((uint64_t)v[c]);
	pd_pbw_key(b, 2, PB_LEN);
	pd_pbw_varint(b, vlen);
	for (uint32_t c = 0; c < g->nst; c++)
		pd_pbw_varint(b, (uint64_t)v[c]);
	return emit_len(g, 2, b->data, b->len, e);
}

static int emit_varint_field(pd_engine *g, uint32_t field, uint64_t v, pd_err *e)
{
	int rc;
	if (v == 0)
		return PD_OK;
	if ((rc = ow_need(g, 24, e)))
		return rc;
	pd_pbw_key(&g->out, field, PB_VARINT);
	pd_pbw_varint(&g->out, v);
	return PD_OK;
}

static int write_tail(pd_engine *g, int64_t duration, pd_err *e)
{
	int rc;
	if (g->ncomments) {
		size_t n = 0;
		for (uint32_t i = 0; i < g->ncomments; i++)
			n += pd_varint_size(g->str_map[g->comments[i]]);
		if ((rc = ow_need(g, n + 16, e)))
			return rc;
		pd_pbw_key(&g->out, 13, PB_LEN);
		pd_pbw_varint(&g->out, n);
		for (uint32_t i = 0; i < g->ncomments; i++)
			pd_pbw_varint(&g->out, g->str_map[g->comments[i]]);
	}
	if ((rc = emit_varint_field(g, 7, g->str_map[g->drop_frames], e)) ||
	    (rc = emit_varint_field(g, 8, g->str_map[g->keep_frames], e)) ||
	    (rc = emit_varint_field(g, 9, (uint64_t)g->time_nanos, e)) ||
	    (rc = emit_varint_field(g, 10, (uint64_t)duration, e)))
		return rc;
	if (g->period_type.len && (rc = emit_reencoded(g, 11, g->period_type, 1u << 1 | 1u << 2, e)))
		return rc;
	if ((rc = emit_varint_field(g, 12, (uint64_t)g->period, e)) ||
	    (rc = emit_varint_field(g, 14, g->str_map[g->default_sample_type], e)) ||
	    (rc = emit_varint_field(g, 15, g->str_map[g->doc_link], e)))
		return rc;
	for (uint32_t i = 0; i < g->nunk; i++) { /* unknown top-level fields are carried */
		if ((rc = ow_need(g, g->unk[i].len, e)))
			return rc;
		pd_pbw_raw(&g->out, g->base + g->unk[i].off, g->unk[i].len);
	}
	return PD_OK;
}

static int validate_scalars(pd_engine *g, pd_err *e)
{
	const int64_t refs[] = {g->drop_frames, g->keep_frames, g->default_sample_type, g->doc_link};
	for (size_t i = 0; i < sizeof refs / sizeof refs[0]; i++)
		if (refs[i] < 0 || (uint64_t)refs[i] >= g->nstr)
			return pd_err_set(e, PD_E_MALFORMED, "malformed profile: string index out of range");
	for (uint32_t i = 0; i < g->ncomments; i++)
		if (g->comments[i] < 0 || (uint64_t)g->comments[i] >= g->nstr)
			return pd_err_set(e, PD_E_MALFORMED, "malformed profile: comment out of range");
	return PD_OK;
}

static int write_pass(pd_engine *g, int64_t duration, pd_err *e)
{
	int rc;
	pd_buf_reset(&g->out);
	for (uint32_t c = 0; c < g->nst; c++)
		if ((rc = emit_reencoded(g, 1, g->st[c], 1u << 1 | 1u << 2, e)))
			return rc;
	for (uint32_t i = 0; i < g->nsmp; i++)
		if (g->keep[i] && (rc = write_sample(g, i, e)))
			return rc;
	for (uint32_t i = 0; i < g->nmap; i++)
		if (g->map_mark[i] && (rc = emit_reencoded(g, 3, g->map[i], 1u << 5 | 1u << 6, e)))
			return rc;
	for (uint32_t i = 0; i < g->nloc; i++)
		if (g->loc_mark[i] &&
		    (rc = emit_len(g, 4, g->base + g->loc[i].off, g->loc[i].len, e)))
			return rc;
	for (uint32_t i = 0; i < g->nfn; i++)
		if (g->fn_mark[i] &&
		    (rc = emit_reencoded(g, 5, g->fn[i], 1u << 2 | 1u << 3 | 1u << 4, e)))
			return rc;
	for (uint32_t i = 0; i < g->nstr; i++)
		if (g->str_mark[i] && (rc = emit_len(g, 6, g->base + g->str[i].off, g->str[i].len, e)))
			return rc;
	if ((rc = write_tail(g, duration, e)))
		return rc;
	rc = pd_defl_finish_with(&g->defl, g->out.data, g->out.len, e);
	pd_buf_reset(&g->out);
	return rc;
}

/* ---- driver ------------------------------------------------------------------- */

void pd_engine_begin(pd_engine *g)
{
	pd_infl_begin(&g->infl, &g->raw, g->lim.max_input);
	g->ns_feed = 0;
}

int pd_engine_feed(pd_engine *g, const void *p, size_t n, pd_err *e)
{
	uint64_t t0 = pd_now_ns();
	int rc = pd_infl_feed(&g->infl, p, n, e);
	g->ns_feed += pd_now_ns() - t0;
	return rc;
}

static int first_keeps(const pd_req *req)
{
	if (req->first_policy == PD_FIRST_KEEP)
		return 1;
	if (req->first_policy == PD_FIRST_DROP)
		return 0;
	/* auto: keep only if the producer started after the stream was last seen. */
	return req->producer_start_ns != 0 && req->producer_start_ns >= req->last_seen_ns;
}

static int process(pd_engine *g, const pd_state *prev, pd_state *next, const pd_req *req,
		   pd_sink_fn sink, void *ctx, pd_result *res, pd_err *e)
{
	uint64_t t0 = pd_now_ns(), t1;
	const char *why = NULL;
	int rc, drop_all = 0;
	int64_t duration;

	res->bytes_raw = g->len;
	if ((rc = index_all(g, e)) || (rc = validate_scalars(g, e)))
		return rc;
	setup_columns(g, req);
	t1 = pd_now_ns();
	res->ns_index = t1 - t0;
	if ((rc = hash_pass(g, next, e)))
		return rc;
	t0 = pd_now_ns();
	res->ns_hash = t0 - t1;
	res->samples_in = g->nsmp;
	res->identities = res->samples_unique = (uint32_t)pd_state_count(next);

	if (!pd_state_valid(prev)) {
		res->status = PD_STATUS_BASELINE;
		res->reason = PD_REASON_FIRST;
		drop_all = !first_keeps(req);
		snprintf(res->why, sizeof res->why, "first profile of the stream%s",
			 drop_all ? " (dropped by policy)" : "");
	} else if ((why = check_reset_meta(g, prev, req)) != NULL ||
		   (diff_values(g, prev, next) && (why = "a counter went backwards") != NULL)) {
		restore_cumulative(g, next);
		res->status = PD_STATUS_BASELINE;
		res->reason = PD_REASON_RESET;
		snprintf(res->why, sizeof res->why, "%s", why);
	} else {
		res->status = PD_STATUS_DELTA;
		res->reason = PD_REASON_NONE;
		res->why[0] = 0;
	}
	duration = g->duration_nanos;
	if (res->status == PD_STATUS_DELTA && g->ndelta > 0)
		duration = g->time_nanos - pd_state_time_nanos(prev);
	res->samples_out = select_samples(g, drop_all);
#ifdef PD_TEST_PERTURB
	if (res->status == PD_STATUS_DELTA && getenv("PD_TEST_PERTURB"))
		perturb_one(g);
#endif
	mark_pass(g, res->samples_out);
	t1 = pd_now_ns();
	res->ns_diff = t1 - t0;

	if ((rc = pd_defl_begin(&g->defl, req->gzip_level, g->whole, req->chunk, sink, ctx, e)) ||
	    (rc = write_pass(g, duration, e)))
		return rc;
	t0 = pd_now_ns();
	res->ns_deflate = g->defl.ns;
	res->ns_encode = (t0 - t1) - g->defl.ns;
	res->bytes_out_raw = g->defl.total_in;
	res->bytes_out = g->defl.total_out;
	res->time_nanos = g->time_nanos;
	res->duration_nanos = duration;
	pd_state_set_meta(next, g->schema, g->period, g->time_nanos,
			  req->incarnation ? req->incarnation : pd_state_incarnation(prev));
	return PD_OK;
}

int pd_engine_finish(pd_engine *g, const pd_state *prev, pd_state *next, const pd_req *req,
		     pd_sink_fn sink, void *ctx, pd_result *res, pd_err *e)
{
	int rc;

	memset(res, 0, sizeof *res);
	g->whole = 0;
	res->bytes_in = g->infl.in_total;
	if ((rc = pd_infl_end(&g->infl, e)))
		return rc;
	g->base = g->raw.data;
	g->len = g->raw.len;
	if (!g->base) {
		static const uint8_t empty[1];
		g->base = empty;
	}
	rc = process(g, prev, next, req, sink, ctx, res, e);
	res->ns_inflate = g->ns_feed;
	return rc;
}

/* Points g->base at the raw profile: inflated into g->raw, or (raw input) in place. */
static int load_input(pd_engine *g, const uint8_t *p, size_t n, pd_err *e)
{
	int rc;
	if (n > g->lim.max_input)
		return pd_err_set(e, PD_E_LIMIT, "input exceeds the limit of %llu bytes",
				  (unsigned long long)g->lim.max_input);
	if (n == 0)
		return pd_err_set(e, PD_E_MALFORMED, "empty input");
	if (p[0] == 0x1f) {
		/* The whole input is here: inflate it in one call (libdeflate). */
		if ((rc = pd_infl_whole(&g->infl, p, n, &g->raw, e)))
			return rc;
		g->base = g->raw.data;
		g->len = g->raw.len;
		return PD_OK;
	}
	if (n > g->lim.max_inflated)
		return pd_err_set(e, PD_E_LIMIT, "profile exceeds the limit of %llu bytes",
				  (unsigned long long)g->lim.max_inflated);
	g->base = p;
	g->len = n;
	return PD_OK;
}

int pd_engine_run(pd_engine *g, const void *in, size_t n, const pd_state *prev, pd_state *next,
		  const pd_req *req, pd_sink_fn sink, void *ctx, pd_result *res, pd_err *e)
{
	uint64_t t0 = pd_now_ns(), t_infl;
	int rc;

	memset(res, 0, sizeof *res);
	g->whole = 1;
	if ((rc = load_input(g, in, n, e)))
		return rc;
	t_infl = pd_now_ns() - t0;
	rc = process(g, prev, next, req, sink, ctx, res, e);
	res->bytes_in = n;
	res->ns_inflate = t_infl;
	return rc;
}

/* ---- inspect ------------------------------------------------------------------- */

static void str_ref(const pd_engine *g, uint32_t idx, const char **p, size_t *n)
{
	if (idx >= g->nstr)
		idx = 0; /* never happens for validated indices; "" otherwise */
	*p = (const char *)g->base + g->str[idx].off;
	*n = g->str[idx].len;
}

int pd_engine_inspect(pd_engine *g, const void *in, size_t n, pd_inspect *o, pd_err *e)
{
	static const pd_req req0 = {0};
	pd_state *tmp;
	int rc;

	memset(o, 0, sizeof *o);
	tmp = pd_state_new();
	if (!tmp)
		return pd_err_set(e, PD_E_NOMEM, "out of memory");
	/* Run the full validation and hash pass through a throw-away state. */
	if ((rc = load_input(g, in, n, e)) || (rc = index_all(g, e)) || (rc = validate_scalars(g, e)))
		goto out;
	setup_columns(g, &req0);
	if ((rc = hash_pass(g, tmp, e)))
		goto out;
	o->nsample_types = g->nst;
	for (uint32_t c = 0; c < g->nst && c < 16; c++) {
		str_ref(g, g->st_type[c], &o->type_name[c], &o->type_name_len[c]);
		str_ref(g, g->st_unit[c], &o->type_unit[c], &o->type_unit_len[c]);
	}
	{
		pd_rd r = span_rd(g, g->period_type);
		uint32_t t = 0, u = 0;
		while (pd_rd_more(&r)) {
			uint32_t f, wt;
			if (pd_rd_key(&r, &f, &wt))
				break;
			if ((f == 1 || f == 2) && wt == PB_VARINT) {
				if (str_idx(g, &r, wt, f == 1 ? &t : &u))
					break;
			} else if (pd_rd_skip(&r, wt)) {
				break;
			}
		}
		str_ref(g, t, &o->period_type, &o->period_type_len);
		str_ref(g, u, &o->period_unit, &o->period_unit_len);
	}
	o->period = g->period;
	o->time_nanos = g->time_nanos;
	o->duration_nanos = g->duration_nanos;
	o->samples = g->nsmp;
	o->locations = g->nloc;
	o->functions = g->nfn;
	o->mappings = g->nmap;
	o->strings = g->nstr;
	o->unique_identities = pd_state_count(tmp);
	o->bytes_in = n;
	o->bytes_raw = g->len;
	for (uint32_t i = 0; i < g->nloc; i++) {
		pd_rd r = span_rd(g, g->loc[i]);
		uint64_t addr = 0;
		while (pd_rd_more(&r)) {
			uint32_t f, wt;
			if (pd_rd_key(&r, &f, &wt))
				break;
			if (f == 3 && wt == PB_VARINT) {
				if (pd_rd_varint(&r, &addr))
					break;
			} else if (pd_rd_skip(&r, wt)) {
				break;
			}
		}
		o->addr0_locations += addr == 0;
	}
	for (uint32_t i = 0; i < g->nsmp; i++) {
		const int64_t *v = g->vals + (size_t)i * g->nst;
		pd_rd r = span_rd(g, g->smp[i]);
		uint64_t depth = 0, zero = 1;
		for (uint32_t c = 0; c < g->nst; c++)
			zero &= v[c] == 0;
		o->zero_samples += zero && g->keep[i];
		while (pd_rd_more(&r)) {
			uint32_t f, wt;
			const uint8_t *p;
			size_t len;
			uint64_t x;
			if (pd_rd_key(&r, &f, &wt))
				break;
			if (f == 1 && wt == PB_LEN && !pd_rd_len(&r, &p, &len)) {
				pd_rd lr = pd_rd_make(p, len);
				while (pd_rd_more(&lr) && !pd_rd_varint(&lr, &x))
					depth++;
			} else if (f == 1 && wt == PB_VARINT && !pd_rd_varint(&r, &x)) {
				depth++;
			} else {
				if (f == 3)
					o->labels++;
				if (pd_rd_skip(&r, wt))
					break;
			}
		}
		if (depth > o->max_depth)
			o->max_depth = depth;
	}
	rc = PD_OK;
out:
	pd_state_free(tmp);
	return rc;
}
