/*
 * pd_engine: the delta engine (see pd_engine.h for the passes and contract).
 *
 * The pprof codec (pd_pprof.h) indexes the raw profile into spans and
 * validated, hashed tables and writes the output; this file holds what is
 * the delta proper: sample identities (hash pass), the subtraction against
 * the previous state (diff pass), and which samples and table entries the
 * output keeps (mark pass). Samples are decoded twice (hash pass, and the
 * codec's write pass for the samples that survive).
 */
#include "pd_engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pd_clock.h"
#include "pd_hash.h"
#include "pd_pprof.h"

#define OUT_FLUSH_AT (256u << 10) /* raw bytes staged before deflate() */
#define MAX_COLS PD_PPROF_MAX_COLS
#define NO_SPAN UINT32_MAX

struct pd_engine {
	pd_limits lim;
	pd_inflater infl;
	pd_buf raw;
	pd_deflater defl;
	pd_pprof ix;     /* the current input, indexed */
	pd_pprof_out ow; /* the output being written */

	/* marks and reference counts over the index's tables */
	PD_VEC(uint32_t, str_map);
	PD_VEC(uint8_t, str_mark);
	PD_VEC(uint32_t, str_cnt); /* label and period type references per string */
	PD_VEC(uint8_t, map_mark);
	PD_VEC(uint8_t, fn_mark);
	PD_VEC(uint8_t, loc_mark);
	PD_VEC(uint32_t, loc_cnt); /* sample references per location key (see loc_key) */
	PD_VEC(uint32_t, str_bak); /* the hash pass's counts, while the mark pass tries a shortcut */
	PD_VEC(uint32_t, loc_bak);

	/* columns */
	uint8_t policy[MAX_COLS];
	uint32_t ndelta, dcol[MAX_COLS]; /* profile column of delta column k */
	int pcol[MAX_COLS];              /* previous state's column of delta column k */
	char colname_buf[MAX_COLS][512];
	uint64_t schema;

	/* per sample */
	PD_VEC(int64_t, vals);
	PD_VEC(uint32_t, ent_first);
	PD_VEC(uint8_t, keep);
	PD_VEC(pd_h128, idh);
	PD_VEC(pd_span, lspan); /* sample's packed location ids, or len NO_SPAN (labels, other forms) */
	uint64_t ns_feed;
	/* the last label's (key, str) and the hash state after absorbing them */
	uint32_t lab_key, lab_str;
	pd_h128 lab_h;
	int whole; /* input came whole (pd_engine_run): output deflated whole too */
};

/* ---- small utilities ---------------------------------------------------- */

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
	pd_pprof_init(&g->ix, &g->lim);
	pd_pprof_out_init(&g->ow);
	return g;
}

/* Every array a request grows, as (pointer, capacity) pairs (the index and the
 * output have their own): freed by pd_engine_free, released by
 * pd_engine_trim, counted by pd_engine_mem_bytes. */
#define ENGINE_VECS(X)                                                                             \
	X(str_map) X(str_mark) X(str_cnt) X(loc_cnt) X(str_bak) X(loc_bak) X(map_mark) X(fn_mark) X(loc_mark) X(vals)   \
	X(ent_first) X(keep) X(idh) X(lspan)

/* Frees the growable memory; the engine stays usable (it regrows). */
static void engine_release(pd_engine *g)
{
#define RELEASE(v) PD_VEC_FREE(g->v);
	ENGINE_VECS(RELEASE)
#undef RELEASE
	pd_buf_free(&g->raw);
	pd_pprof_out_free(&g->ow);
	pd_buf_free(&g->defl.zout);
	pd_pprof_release(&g->ix);
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
	size_t n = g->raw.alloc + pd_pprof_out_mem_bytes(&g->ow) + g->defl.zout.alloc +
		   pd_pprof_mem_bytes(&g->ix);

#define COUNT(v) n += PD_VEC_BYTES(g->v);
	ENGINE_VECS(COUNT)
#undef COUNT
	return n;
}

/* ---- index ---------------------------------------------------------------- */

/*
 * Reference counts are kept per location *key*: the id itself when ids are
 * dense (so the hot loop indexes by id, without the id -> index step), the
 * table index otherwise.
 */
static inline uint64_t loc_key(const pd_engine *g, uint32_t idx)
{
	return g->ix.loc_ids.hashed ? idx : g->ix.li[idx].id;
}

static size_t loc_keys(const pd_engine *g)
{
	return g->ix.loc_ids.hashed ? g->ix.nloc : g->ix.loc_ids.dense_n;
}

/* Indexes the input at g->ix.base and sizes the marks to its tables. */
static int index_all(pd_engine *g, pd_err *e)
{
	pd_pprof *x = &g->ix;
	int rc;
	if ((rc = pd_pprof_index(x, x->base, x->len, e)))
		return rc;
	if (PD_GROW(g->str_map, x->nstr) || PD_GROW(g->str_mark, x->nstr) ||
	    PD_GROW(g->str_cnt, x->nstr) || PD_GROW(g->map_mark, x->nmap) ||
	    PD_GROW(g->fn_mark, x->nfn) || PD_GROW(g->loc_mark, x->nloc) ||
	    PD_GROW(g->loc_cnt, loc_keys(g) + 1) || PD_GROW(g->str_bak, x->nstr) ||
	    PD_GROW(g->loc_bak, loc_keys(g) + 1))
		return PD_E_NOMEM;
	return PD_OK;
}

/* ---- columns and schema ---------------------------------------------------- */

static int str_eq(const pd_engine *g, uint32_t idx, const char *s)
{
	size_t n = strlen(s);
	return g->ix.str[idx].len == n && memcmp(g->ix.base + g->ix.str[idx].off, s, n) == 0;
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
	for (uint32_t c = 0; c < g->ix.nst; c++) {
		int pol = default_policy(g, g->ix.st_type[c]);
		for (size_t k = 0; k < req->noverrides; k++)
			if (str_eq(g, g->ix.st_type[c], req->overrides[k].name))
				pol = req->overrides[k].policy;
		g->policy[c] = (uint8_t)pol;
		if (pol == PD_POLICY_DELTA)
			g->dcol[g->ndelta++] = c;
		h = pd_h_init(7);
		pd_h_pair(&h, g->ix.str_h[g->ix.st_type[c]]);
		pd_h_pair(&h, g->ix.str_h[g->ix.st_unit[c]]);
		h = pd_h_final(h);
		sum.lo += h.lo;
		sum.hi += h.hi;
	}
	/* Schema: the *set* of sample types (order-free) plus the period type. */
	h = pd_h_init(8);
	pd_h_pair(&h, sum);
	{
		pd_rd r = pd_pprof_rd(&g->ix, g->ix.period_type);
		while (pd_rd_more(&r)) {
			uint32_t f, wt;
			uint64_t v;
			if (pd_rd_key(&r, &f, &wt) || wt != PB_VARINT || pd_rd_varint(&r, &v))
				break; /* validated in parse_value_types */
			if (f == PD_VALUE_TYPE_TYPE || f == PD_VALUE_TYPE_UNIT)
				pd_h_pair(&h, g->ix.str_h[v]);
		}
	}
	g->schema = pd_h_final(h).lo;
}

static size_t col_name(pd_engine *g, uint32_t c, char *buf, size_t cap)
{
	size_t tl = g->ix.str[g->ix.st_type[c]].len, ul = g->ix.str[g->ix.st_unit[c]].len;
	if (tl + ul + 2 > cap) {
		tl = tl > cap / 2 ? cap / 2 : tl;
		ul = ul > cap / 2 - 2 ? cap / 2 - 2 : ul;
	}
	memcpy(buf, g->ix.base + g->ix.str[g->ix.st_type[c]].off, tl);
	buf[tl] = '/';
	memcpy(buf + tl + 1, g->ix.base + g->ix.str[g->ix.st_unit[c]].off, ul);
	buf[tl + 1 + ul] = 0;
	return tl + 1 + ul;
}

/* ---- hash pass --------------------------------------------------------------- */

static inline int label_hash(pd_engine *g, const uint8_t *p, size_t n, pd_h128 *out)
{
	pd_pprof_label l;
	pd_h128 h;
	if (pd_pprof_label_read(&g->ix, p, n, &l))
		return -1;
	g->str_cnt[l.key]++;
	g->str_cnt[l.str]++;
	g->str_cnt[l.unit]++;
	if (l.key != g->lab_key || l.str != g->lab_str) {
		/* Most labels repeat their key and string (a heap profile's "bytes"
		 * numeric label on every sample): the first two steps once. */
		h = pd_h_init(4);
		pd_h_pair(&h, g->ix.str_h[l.key]);
		pd_h_pair(&h, g->ix.str_h[l.str]);
		g->lab_key = l.key;
		g->lab_str = l.str;
		g->lab_h = h;
	} else {
		h = g->lab_h;
	}
	pd_h_word(&h, l.num);
	pd_h_pair(&h, g->ix.str_h[l.unit]);
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
	uint32_t x = pd_idmap_get(&g->ix.loc_ids, id);
	if (!x)
		return -1;
	a->lo = a->lo * PD_H_POLY_LO + g->ix.li[x - 1].h.lo;
	a->hi = a->hi * PD_H_POLY_HI + g->ix.li[x - 1].h.hi;
	g->loc_cnt[loc_key(g, x - 1)]++;
	a->depth++;
	return 0;
}

/*
 * Packed location ids with dense ids (the common case): the hottest loop of
 * the engine, kept free of calls and memory round trips. Returns 0, -1
 * (malformed varint) or -2 (unknown location id).
 *
 * Ids are first read one byte per id while they take one byte (profiles
 * with fewer than 128 locations, and stacks of low ids in larger ones): no
 * id's start waits on the previous id's decode, so the loop runs at the pace
 * of the hash lanes. From the first longer id on, the rest of the field goes
 * through the branch-free 1-2 byte decoder (one exit per field, however
 * long ids and short ones mix).
 */
static int fold_locs_dense(const pd_engine *g, const uint8_t *p, const uint8_t *end, stack_acc *a)
{
	const uint8_t *bend1 = g->ix.base + g->ix.len - 1; /* p[1] is readable while p < bend1 */
	const pd_h128 *lh = g->ix.lh;
	const uint8_t *valid = g->ix.lvalid;
	const uint64_t dn = g->ix.loc_ids.dense_n;
	uint32_t *cnt = g->loc_cnt;
	uint64_t lo = a->lo, hi = a->hi;
	const uint32_t lim1 = dn < 0x80 ? (uint32_t)dn : 0x80; /* ids of one byte, in range */
	uint32_t depth = a->depth, ok = 1;

	for (; p < end; p++) {
		uint32_t v = *p;
		if (v >= lim1)
			break; /* a longer id or one out of range: the decoder below takes over */
		ok &= valid[v];
		lo = lo * PD_H_POLY_LO + lh[v].lo;
		hi = hi * PD_H_POLY_HI + lh[v].hi;
		cnt[v]++;
		depth++;
	}
	while (p < end) {
		uint64_t v;
		if (pd_pprof_loc_id(&p, end, bend1, &v))
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
	if (!g->ix.loc_ids.hashed)
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
	const uint8_t *bend = g->ix.base + g->ix.len;
	uint32_t n = *nvals, max = g->ix.nst;
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
	pd_span *ls = &g->lspan[i];
	pd_rd r = pd_pprof_rd(&g->ix, g->ix.smp[i]);
	stack_acc a = {PD_H_SEED_LO ^ 3, PD_H_SEED_HI ^ (3 * PD_H_K_HI), 0};
	uint64_t llo = 0, lhi = 0;
	uint32_t nlabels = 0, nvals = 0;
	pd_h128 h;

	ls->off = 0;
	ls->len = 0;
	while (pd_rd_more(&r)) {
		uint32_t f, wt;
		uint64_t v;
		const uint8_t *p;
		size_t n;
		int bad = 0;
		if (pd_rd_key(&r, &f, &wt))
			return malformed(e, "sample", i);
		if (f == PD_SAMPLE_LOCATION_ID && wt == PB_LEN) {
			if (pd_rd_len(&r, &p, &n))
				return malformed(e, "sample", i);
			bad = fold_locs(g, p, n, &a);
			ls->len = ls->len ? NO_SPAN : (uint32_t)n; /* a second field: the slow way */
			ls->off = (uint32_t)(p - g->ix.base);
		} else if (f == PD_SAMPLE_LOCATION_ID && wt == PB_VARINT) {
			bad = pd_rd_varint(&r, &v) ? -1 : fold_loc(g, &a, v) ? -2 : 0;
			ls->len = NO_SPAN;
		} else if (f == PD_SAMPLE_VALUE && wt == PB_LEN) {
			bad = pd_rd_len(&r, &p, &n) || read_values(g, p, p + n, vals, &nvals);
		} else if (f == PD_SAMPLE_VALUE && wt == PB_VARINT) {
			bad = pd_rd_varint(&r, &v) || nvals >= g->ix.nst;
			if (!bad)
				vals[nvals++] = (int64_t)v;
		} else if (f == PD_SAMPLE_LABEL && wt == PB_LEN) {
			pd_h128 lh = {0, 0};
			bad = pd_rd_len(&r, &p, &n) || label_hash(g, p, n, &lh);
			llo += lh.lo; /* sum: independent of label order */
			lhi += lh.hi;
			nlabels++;
			ls->len = NO_SPAN;
		} else if (f <= PD_SAMPLE_LABEL) {
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
	if (nvals != g->ix.nst)
		return pd_err_set(e, PD_E_MALFORMED,
				  "malformed profile: sample #%u has %u values, expected %u", i, nvals,
				  g->ix.nst);
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
	uint32_t nst = g->ix.nst;
	int rc;

	for (uint32_t k = 0; k < g->ndelta; k++) {
		lens[k] = col_name(g, g->dcol[k], g->colname_buf[k], sizeof g->colname_buf[k]);
		names[k] = g->colname_buf[k];
	}
	if ((rc = pd_state_prepare(next, g->ix.nsmp, names, lens, g->ndelta, e)))
		return rc;
	if (PD_GROW(g->vals, (size_t)g->ix.nsmp * nst + 1) || PD_GROW(g->ent_first, (size_t)g->ix.nsmp + 1) ||
	    PD_GROW(g->keep, (size_t)g->ix.nsmp + 1) || PD_GROW(g->idh, (size_t)g->ix.nsmp + 1) ||
	    PD_GROW(g->lspan, (size_t)g->ix.nsmp + 1))
		return PD_E_NOMEM;
	zero(g->str_cnt, g->ix.nstr * sizeof *g->str_cnt);
	zero(g->loc_cnt, loc_keys(g) * sizeof *g->loc_cnt);
	g->lab_key = g->lab_str = UINT32_MAX; /* the string table is this profile's */
	for (uint32_t i = 0; i < g->ix.nsmp; i++)
		if ((rc = decode_sample(g, i, g->vals + (size_t)i * nst, &g->idh[i], e)))
			return rc;
	/* Upserts apart from decoding, so the index can be prefetched ahead. */
	for (uint32_t i = 0; i < g->ix.nsmp; i++) {
		int64_t *v = g->vals + (size_t)i * nst;
		uint32_t ent;
		int ins;
		int64_t *sv;

		if (i + 12 < g->ix.nsmp)
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
	if (g->ix.period != pd_state_period(prev))
		return "period changed";
	if (g->ix.time_nanos < pd_state_time_nanos(prev))
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
 * Subtracts previous values and selects the samples kept (*kept of them, as
 * select_samples would); returns 1 if a counter went backwards.
 *
 * Consecutive heap profiles of a process list their samples in nearly the
 * same order (Go prepends new buckets to its bucket lists and walks them in
 * order), so the previous entry of identity j is first looked for at j plus
 * the offset of the last match: a sequential read. Mutex and block profiles
 * are sorted by their values, so the order changes between profiles and
 * that guess mostly misses: while the last guesses missed, the index is
 * prefetched ahead for every entry (16 ahead for the slot, 8 ahead for the
 * entry); after a run of hits it is not touched until the next miss.
 */
static int diff_values(pd_engine *g, const pd_state *prev, const pd_state *next, uint32_t *kept)
{
	uint32_t n = (uint32_t)pd_state_count(next), pn = (uint32_t)pd_state_count(prev);
	uint32_t nst = g->ix.nst, hits = 0, nkept = 0;
	int64_t off = 0; /* expected previous index of identity j: j + off */
	for (uint32_t j = 0; j < n; j++) {
		uint32_t pj;
		pd_h128 h;
		if (hits < 16) {
			if (j + 16 < n)
				pd_state_prefetch(prev, pd_state_hash_at(next, j + 16));
			if (j + 8 < n)
				pd_state_prefetch_entry(prev, pd_state_hash_at(next, j + 8));
		}
		h = pd_state_hash_at(next, j);
		if (prev_at(prev, pn, (int64_t)j + off, h)) {
			pj = (uint32_t)((int64_t)j + off);
			hits++;
		} else {
			hits = 0;
			pj = pd_state_find(prev, h);
			if (pj != UINT32_MAX)
				off = (int64_t)pj - (int64_t)j;
		}
		int64_t *v = g->vals + (size_t)g->ent_first[j] * nst;
		if (pj != UINT32_MAX) {
			const int64_t *pv = pd_state_cvals(prev, pj);
			for (uint32_t k = 0; k < g->ndelta; k++) {
				int64_t cur = v[g->dcol[k]], old = pv[g->pcol[k]];
				if (cur < old) {
					for (uint32_t q = 0; q < j; q++) /* keep[] back to "first occurrence" */
						g->keep[g->ent_first[q]] = 1;
					return 1;
				}
				v[g->dcol[k]] = cur - old;
			}
		}
		/* select_samples' rule, while the values are at hand */
		int nz = 0;
		for (uint32_t c = 0; c < nst && !nz; c++)
			nz = v[c] != 0;
		g->keep[g->ent_first[j]] = (uint8_t)nz;
		nkept += (uint32_t)nz;
	}
	*kept = nkept;
	return 0;
}

static void restore_cumulative(pd_engine *g, pd_state *next)
{
	uint32_t n = (uint32_t)pd_state_count(next);
	for (uint32_t j = 0; j < n; j++) {
		int64_t *v = g->vals + (size_t)g->ent_first[j] * g->ix.nst;
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
	for (uint32_t i = 0; i < g->ix.nsmp; i++)
		if (g->keep[i]) {
			g->vals[(size_t)i * g->ix.nst] += 1;
			return;
		}
}
#endif

/* Which first occurrences are kept: those with a value that is not zero
 * (diff_values applies the same rule to a delta). */
static uint32_t select_samples(pd_engine *g, int drop_all)
{
	uint32_t kept = 0;
	for (uint32_t i = 0; i < g->ix.nsmp; i++) {
		const int64_t *v = g->vals + (size_t)i * g->ix.nst;
		int nz = 0;
		if (!g->keep[i])
			continue;
		for (uint32_t c = 0; c < g->ix.nst && !nz; c++)
			nz = v[c] != 0;
		g->keep[i] = (uint8_t)(nz && !drop_all);
		kept += g->keep[i];
	}
	return kept;
}

/* ---- mark pass ------------------------------------------------------------------- */

static inline void mark_str(pd_engine *g, uint64_t idx)
{
	if (idx < g->ix.nstr)
		g->str_mark[idx] = 1;
}

/* Adds d to the reference count of every string index field (in strmask)
 * of message [p, p + n), each occurrence; the indices were validated. */
static inline void count_strings(pd_engine *g, const uint8_t *p, size_t n, uint32_t strmask,
				 uint32_t d)
{
	pd_rd r = pd_rd_make(p, n);
	while (pd_rd_more(&r)) {
		uint32_t f, wt;
		uint64_t v;
		if (pd_rd_key(&r, &f, &wt))
			return;
		if (f < 32 && (strmask >> f & 1) && wt == PB_VARINT) {
			if (pd_rd_varint(&r, &v))
				return;
			g->str_cnt[v] += d;
		} else if (pd_rd_skip(&r, wt)) {
			return;
		}
	}
}

/* The ids of a packed field, validated by the hash pass, counted by id. */
static void count_locs_dense(const pd_engine *g, const uint8_t *p, const uint8_t *end, uint32_t d)
{
	const uint8_t *bend1 = g->ix.base + g->ix.len - 1;
	uint32_t *cnt = g->loc_cnt;
	for (; p < end && *p < 0x80; p++) /* one-byte ids, as in fold_locs_dense */
		cnt[*p] += d;
	while (p < end) {
		uint64_t v;
		if (pd_pprof_loc_id(&p, end, bend1, &v))
			return;
		cnt[v] += d;
	}
}

/* Adds d (+1 or -1 as uint32) to the reference counts of sample i. */
static void count_sample(pd_engine *g, uint32_t i, uint32_t d)
{
	pd_rd r = pd_pprof_rd(&g->ix, g->ix.smp[i]);
	const uint32_t *dense = g->ix.loc_ids.hashed ? NULL : g->ix.loc_ids.dense;
	const pd_span ls = g->lspan[i];
	if (dense && ls.len != NO_SPAN) { /* one packed field of ids, no labels: as the hash pass saw it */
		count_locs_dense(g, g->ix.base + ls.off, g->ix.base + ls.off + ls.len, d);
		return;
	}
	while (pd_rd_more(&r)) {
		uint32_t f, wt;
		uint64_t v;
		const uint8_t *p;
		size_t n;
		if (pd_rd_key(&r, &f, &wt))
			return;
		if (f == PD_SAMPLE_LOCATION_ID && wt == PB_LEN && !pd_rd_len(&r, &p, &n)) {
			if (dense) {
				count_locs_dense(g, p, p + n, d);
			} else {
				pd_rd in = pd_rd_make(p, n);
				while (pd_rd_more(&in) && !pd_rd_varint(&in, &v))
					g->loc_cnt[pd_idmap_get(&g->ix.loc_ids, v) - 1u] += d;
			}
		} else if (f == PD_SAMPLE_LOCATION_ID && wt == PB_VARINT && !pd_rd_varint(&r, &v)) {
			g->loc_cnt[loc_key(g, pd_idmap_get(&g->ix.loc_ids, v) - 1)] += d;
		} else if (f == PD_SAMPLE_LABEL && wt == PB_LEN && !pd_rd_len(&r, &p, &n)) {
			count_strings(g, p, n, PD_LABEL_STRINGS, d);
		} else if (pd_rd_skip(&r, wt)) {
			return;
		}
	}
}

/* Entries counted in both c and ref (the reference set: the hash pass's counts). */
static size_t both_nonzero(const uint32_t *c, const uint32_t *ref, size_t n)
{
	size_t k = 0;
	for (size_t i = 0; i < n; i++)
		k += c[i] != 0 && ref[i] != 0;
	return k;
}

/* How many of the locations and strings (but string 0, always kept) the hash
 * pass counted (loc_bak, str_bak) are counted in loc and str. Compared as
 * sets: the recount also counts strings the hash pass does not (a label
 * field given twice counts once there, the last one) and not string 0 of an
 * absent field. */
static size_t reached(const pd_engine *g, const uint32_t *loc, const uint32_t *str)
{
	size_t nstr = g->ix.nstr;
	return both_nonzero(loc, g->loc_bak, loc_keys(g)) +
	       (nstr > 1 ? both_nonzero(str + 1, g->str_bak + 1, nstr - 1) : 0);
}

/*
 * Counts the kept samples' references from zero, stopping as soon as every
 * location and string the hash pass saw referenced is referenced by a kept
 * sample (the marks need only "referenced or not": a few hundred samples
 * usually reach every location of a large profile). Gives up, with the
 * hash pass's counts restored, after budget kept samples. Returns 1 when the
 * counts are final.
 */
static int count_kept(pd_engine *g, uint32_t budget)
{
	size_t nkeys = loc_keys(g), nstr = g->ix.nstr, need;
	size_t every = (nkeys + nstr) / 4 > 256 ? (nkeys + nstr) / 4 : 256, since = 0;
	uint32_t walked = 0;

	memcpy(g->loc_bak, g->loc_cnt, nkeys * sizeof *g->loc_cnt);
	memcpy(g->str_bak, g->str_cnt, nstr * sizeof *g->str_cnt);
	need = reached(g, g->loc_bak, g->str_bak);
	zero(g->str_cnt, nstr * sizeof *g->str_cnt);
	zero(g->loc_cnt, nkeys * sizeof *g->loc_cnt);
	for (uint32_t i = 0; i < g->ix.nsmp; i++) {
		if (!g->keep[i])
			continue;
		if (walked == budget) {
			memcpy(g->loc_cnt, g->loc_bak, nkeys * sizeof *g->loc_cnt);
			memcpy(g->str_cnt, g->str_bak, nstr * sizeof *g->str_cnt);
			return 0;
		}
		count_sample(g, i, 1);
		walked++;
		/* The kept samples after this one can only add strings the hash
		 * pass left out: a label field given twice, where the last one is
		 * what every reader keeps (the earlier one is written as ""). */
		if ((++since == every || walked == budget) && reached(g, g->loc_cnt, g->str_cnt) == need)
			return 1;
		if (since == every)
			since = 0;
	}
	return 1;
}

/*
 * The hash pass counted, per location and per label string, the samples
 * referring to it. Here they are brought down to the kept samples: counted
 * again over the kept ones until every referenced entry is reached (most
 * often within the first few hundred samples), or, when that does not end
 * within a sixteenth as many samples as were dropped (some location is only
 * in dropped samples), by subtracting the dropped ones.
 */
static void mark_pass(pd_engine *g, uint32_t kept)
{
	uint32_t dropped = g->ix.nsmp - kept;

	zero(g->fn_mark, g->ix.nfn);
	zero(g->map_mark, g->ix.nmap);
	if (!count_kept(g, kept <= dropped ? UINT32_MAX : dropped / 16 > 256 ? dropped / 16 : 256)) {
		for (uint32_t i = 0; i < g->ix.nsmp; i++)
			if (!g->keep[i])
				count_sample(g, i, UINT32_MAX);
	}
	for (uint32_t i = 0; i < g->ix.nloc; i++)
		g->loc_mark[i] = g->loc_cnt[loc_key(g, i)] != 0;
	count_strings(g, g->ix.base + g->ix.period_type.off, g->ix.period_type.len,
		      PD_VALUE_TYPE_STRINGS, 1);
	for (uint32_t i = 0; i < g->ix.nstr; i++)
		g->str_mark[i] = g->str_cnt[i] != 0;
	g->str_mark[0] = 1;
	for (uint32_t i = 0; i < g->ix.nloc; i++)
		if (g->loc_mark[i]) {
			if (g->ix.li[i].map)
				g->map_mark[g->ix.li[i].map - 1] = 1;
			pd_pprof_mark_loc_functions(&g->ix, i, g->fn_mark);
		}
	for (uint32_t i = 0; i < g->ix.nfn; i++)
		if (g->fn_mark[i]) {
			mark_str(g, g->ix.fi[i].name);
			mark_str(g, g->ix.fi[i].sys);
			mark_str(g, g->ix.fi[i].file);
		}
	for (uint32_t i = 0; i < g->ix.nmap; i++)
		if (g->map_mark[i]) {
			mark_str(g, g->ix.mi[i].filename);
			mark_str(g, g->ix.mi[i].build_id);
		}
	for (uint32_t c = 0; c < g->ix.nst; c++) {
		mark_str(g, g->ix.st_type[c]);
		mark_str(g, g->ix.st_unit[c]);
	}
	for (uint32_t i = 0; i < g->ix.ncomments; i++)
		mark_str(g, (uint64_t)g->ix.comments[i]);
	mark_str(g, (uint64_t)g->ix.drop_frames);
	mark_str(g, (uint64_t)g->ix.keep_frames);
	mark_str(g, (uint64_t)g->ix.default_sample_type);
	mark_str(g, (uint64_t)g->ix.doc_link);
	{
		uint32_t next = 0;
		for (uint32_t i = 0; i < g->ix.nstr; i++)
			g->str_map[i] = g->str_mark[i] ? next++ : 0;
	}
}

/* ---- write pass ------------------------------------------------------------------ */

/* Streaming mode hands deflate() pieces of OUT_FLUSH_AT bytes; whole mode
 * keeps the output in one buffer for one libdeflate call at the end. */
static int deflate_piece(void *ctx, const uint8_t *p, size_t n, pd_err *e)
{
	return pd_defl_write(ctx, p, n, e);
}

static int write_pass(pd_engine *g, int64_t duration, pd_err *e)
{
	pd_pprof_sel sel = {g->keep,     g->map_mark, g->loc_mark, g->fn_mark, g->str_mark,
			    g->str_map, g->vals,     duration};
	pd_pprof_out *o = &g->ow;
	int rc;

	o->flush = g->whole ? NULL : deflate_piece;
	o->ctx = &g->defl;
	o->flush_at = OUT_FLUSH_AT;
	if ((rc = pd_pprof_write(&g->ix, &sel, o, e)))
		return rc;
	rc = pd_defl_finish_with(&g->defl, o->out.data, o->out.len, e);
	pd_buf_reset(&o->out);
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

/* The first-profile rule (DESIGN §2). Written out again in pd_slowdelta.c on purpose:
 * the slow path shares no decision code with the engine, so it can catch the
 * engine's mistakes. Change both together. */
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
	int rc, drop_all = 0, selected = 0;
	uint32_t kept = 0;
	int64_t duration;

	res->bytes_raw = g->ix.len;
	if ((rc = index_all(g, e)))
		return rc;
	setup_columns(g, req);
	t1 = pd_now_ns();
	res->ns_index = t1 - t0;
	if ((rc = hash_pass(g, next, e)))
		return rc;
	t0 = pd_now_ns();
	res->ns_hash = t0 - t1;
	res->samples_in = g->ix.nsmp;
	res->identities = res->samples_unique = (uint32_t)pd_state_count(next);

	if (!pd_state_valid(prev)) {
		res->status = PD_STATUS_BASELINE;
		res->reason = PD_REASON_FIRST;
		drop_all = !first_keeps(req);
		snprintf(res->why, sizeof res->why, "first profile of the stream%s",
			 drop_all ? " (dropped by policy)" : "");
	} else if ((why = check_reset_meta(g, prev, req)) != NULL ||
		   (diff_values(g, prev, next, &kept) && (why = "a counter went backwards") != NULL)) {
		restore_cumulative(g, next);
		res->status = PD_STATUS_BASELINE;
		res->reason = PD_REASON_RESET;
		snprintf(res->why, sizeof res->why, "%s", why);
	} else {
		res->status = PD_STATUS_DELTA;
		res->reason = PD_REASON_NONE;
		res->why[0] = 0;
		selected = 1;
	}
	duration = g->ix.duration_nanos;
	if (res->status == PD_STATUS_DELTA && g->ndelta > 0)
		duration = g->ix.time_nanos - pd_state_time_nanos(prev);
	res->samples_out = selected ? kept : select_samples(g, drop_all);
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
	res->time_nanos = g->ix.time_nanos;
	res->duration_nanos = duration;
	pd_state_set_meta(next, g->schema, g->ix.period, g->ix.time_nanos,
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
	g->ix.base = g->raw.data;
	g->ix.len = g->raw.len;
	if (!g->ix.base) {
		static const uint8_t empty[1];
		g->ix.base = empty;
	}
	rc = process(g, prev, next, req, sink, ctx, res, e);
	res->ns_inflate = g->ns_feed;
	return rc;
}

/* Points g->ix.base at the raw profile: inflated into g->raw, or (raw input) in place. */
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
		g->ix.base = g->raw.data;
		g->ix.len = g->raw.len;
		return PD_OK;
	}
	if (n > g->lim.max_inflated)
		return pd_err_set(e, PD_E_LIMIT, "profile exceeds the limit of %llu bytes",
				  (unsigned long long)g->lim.max_inflated);
	g->ix.base = p;
	g->ix.len = n;
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

int pd_engine_index_hashed(pd_engine *g, const void *in, size_t n, pd_state *tmp,
			   pd_engine_view *v, pd_err *e)
{
	static const pd_req req0 = {0};
	int rc;

	if ((rc = load_input(g, in, n, e)) || (rc = index_all(g, e)))
		return rc;
	setup_columns(g, &req0);
	if ((rc = hash_pass(g, tmp, e)))
		return rc;
	v->ix = &g->ix;
	v->vals = g->vals;
	v->first = g->keep;
	return PD_OK;
}
