/*
 * pd_slowdelta: the slow, independent delta path (see pd_slowdelta.h).
 *
 * Written apart from the engine on purpose: its own wire cursor, zlib for
 * gzip, plain tables, string keys, qsort and bsearch. When the engine and this
 * file disagree, one of them is wrong, and the keys say where.
 */
#include "pd_slowdelta.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define SLOW_MAX_COLS 16

/* ---- wire cursor ------------------------------------------------------------ */

enum { W_VARINT = 0, W_I64 = 1, W_LEN = 2, W_I32 = 5 };

typedef struct wcur {
	const uint8_t *p, *end;
} wcur;

static wcur wc(const uint8_t *p, size_t n)
{
	wcur c = {p, n ? p + n : p}; /* an absent field is (NULL, 0) */
	return c;
}

static int w_varint(wcur *c, uint64_t *v)
{
	uint64_t x = 0;
	for (int i = 0; i < 10; i++) {
		uint8_t b;
		if (c->p >= c->end)
			return -1;
		b = *c->p++;
		if (i == 9 && b > 1)
			return -1; /* more than 64 bits */
		x |= (uint64_t)(b & 0x7f) << (7 * i);
		if (!(b & 0x80)) {
			*v = x;
			return 0;
		}
	}
	return -1;
}

static int w_key(wcur *c, uint32_t *field, uint32_t *wt)
{
	uint64_t k;
	if (w_varint(c, &k) || (k >> 3) == 0 || (k >> 3) > 0x1fffffff)
		return -1;
	*field = (uint32_t)(k >> 3);
	*wt = (uint32_t)(k & 7);
	return 0;
}

static int w_bytes(wcur *c, const uint8_t **p, size_t *n)
{
	uint64_t l;
	if (w_varint(c, &l) || l > (uint64_t)(c->end - c->p))
		return -1;
	*p = c->p;
	*n = (size_t)l;
	c->p += l;
	return 0;
}

static int w_skip(wcur *c, uint32_t wt)
{
	uint64_t v;
	const uint8_t *p;
	size_t n;
	size_t fixed = wt == W_I64 ? 8 : wt == W_I32 ? 4 : 0;

	if (wt == W_VARINT)
		return w_varint(c, &v);
	if (wt == W_LEN)
		return w_bytes(c, &p, &n);
	if (!fixed || (size_t)(c->end - c->p) < fixed)
		return -1;
	c->p += fixed;
	return 0;
}

/* A varint field that must have the varint wire type. */
static int w_uint(wcur *c, uint32_t wt, uint64_t *v)
{
	return wt != W_VARINT || w_varint(c, v);
}

/* ---- growable things ---------------------------------------------------------- */

static int push(void **arr, size_t *n, size_t *cap, size_t elsz, const void *el)
{
	if (*n == *cap) {
		size_t nc = *cap ? *cap * 2 : 16;
		void *p = realloc(*arr, nc * elsz);
		if (!p)
			return -1;
		*arr = p;
		*cap = nc;
	}
	memcpy((char *)*arr + *n * elsz, el, elsz);
	(*n)++;
	return 0;
}
#define PUSH(arr, el) push((void **)&(arr), &arr##_n, &arr##_cap, sizeof *(arr), (el))

typedef struct sbuf {
	char *p;
	size_t n, cap;
	int oom;
} sbuf;

static void sb_add(sbuf *b, const char *s, size_t n)
{
	if (b->oom)
		return;
	if (b->n + n + 1 > b->cap) {
		size_t nc = b->cap ? b->cap : 64;
		char *p;
		while (nc < b->n + n + 1)
			nc *= 2;
		if (!(p = realloc(b->p, nc))) {
			b->oom = 1;
			return;
		}
		b->p = p;
		b->cap = nc;
	}
	memcpy(b->p + b->n, s, n);
	b->n += n;
	b->p[b->n] = 0;
}

static void sb_str(sbuf *b, const char *s) { sb_add(b, s, strlen(s)); }

/* Appends prefix and v, in hex or as a signed decimal. */
static void sb_num(sbuf *b, const char *prefix, uint64_t v, int hex)
{
	char tmp[48];
	int n = hex ? snprintf(tmp, sizeof tmp, "%s%llx", prefix, (unsigned long long)v)
		    : snprintf(tmp, sizeof tmp, "%s%lld", prefix, (long long)v);
	sb_add(b, tmp, (size_t)n);
}

/* Appends s escaped: key delimiters get a backslash, control bytes \xHH. */
static void sb_esc(sbuf *b, const uint8_t *s, size_t n)
{
	static const char delim[] = "\\;|,:+[]{}@!?/";
	for (size_t i = 0; i < n; i++) {
		char c = (char)s[i];
		if (s[i] < 0x20 || s[i] == 0x7f) {
			char tmp[8];
			snprintf(tmp, sizeof tmp, "\\x%02x", s[i]);
			sb_add(b, tmp, 4);
		} else {
			if (strchr(delim, c))
				sb_add(b, "\\", 1);
			sb_add(b, &c, 1);
		}
	}
}

/* Takes the string out of b (the caller frees it); NULL when out of memory. */
static char *sb_take(sbuf *b)
{
	char *s;
	if (b->oom) {
		free(b->p);
		return NULL;
	}
	s = b->p ? b->p : strdup("");
	b->p = NULL;
	b->n = b->cap = 0;
	return s;
}

/* ---- the decoded profile ---------------------------------------------------------- */

typedef struct row {
	char *key;
	int64_t *vals;
} row;

/* Metadata carried by a delta, as escaped strings (compared by pd_slow_compare). */
#define META_STRINGS(X)                                                                            \
	X(period_type) X(default_sample_type) X(drop_frames) X(keep_frames) X(comments) X(doc_link)

struct pd_slow_profile {
	uint32_t ncols;
	char *col[SLOW_MAX_COLS];      /* "type/unit", escaped */
	char *col_type[SLOW_MAX_COLS]; /* "type", escaped (policy lookup) */
	char *schema;                  /* sorted columns + period type: the reset check */
#define META_FIELD(f) char *f;
	META_STRINGS(META_FIELD)
#undef META_FIELD
	int64_t period, time_nanos, duration_nanos;
	row *rows;
	size_t rows_n, rows_cap;
	int status, reason;
	char why[96];
};

static void free_rows(row *rows, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(rows[i].key);
		free(rows[i].vals);
	}
	free(rows);
}

void pd_slow_free(pd_slow_profile *p)
{
	if (!p)
		return;
	for (uint32_t c = 0; c < p->ncols; c++) {
		free(p->col[c]);
		free(p->col_type[c]);
	}
	free(p->schema);
#define META_FREE(f) free(p->f);
	META_STRINGS(META_FREE)
#undef META_FREE
	free_rows(p->rows, p->rows_n);
	free(p);
}

/* ---- gzip ---------------------------------------------------------------------------- */

/* Inflates every gzip member of in into *out (malloc'd), at most max bytes. */
static int gunzip(const uint8_t *in, size_t n, uint64_t max, uint8_t **out, size_t *outn,
		  pd_err *e)
{
	z_stream zs;
	size_t cap = n * 4 < max ? n * 4 : (size_t)max, len = 0;
	uint8_t *buf = malloc(cap + 1);
	int rc = PD_OK, zr = Z_OK;

	memset(&zs, 0, sizeof zs);
	if (!buf || inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK) {
		free(buf);
		return pd_err_set(e, PD_E_NOMEM, "out of memory (inflate)");
	}
	zs.next_in = (Bytef *)(uintptr_t)in;
	zs.avail_in = (uInt)n;
	for (;;) {
		if (zr == Z_STREAM_END) {
			if (zs.avail_in == 0)
				break;
			if (zs.next_in[0] != 0x1f) {
				rc = pd_err_set(e, PD_E_MALFORMED, "trailing garbage after gzip data");
				goto out;
			}
			inflateReset(&zs);
		}
		if (len == cap) {
			uint8_t *p;
			if (cap >= max) {
				rc = pd_err_set(e, PD_E_LIMIT,
						"inflated profile exceeds the limit of %llu bytes",
						(unsigned long long)max);
				goto out;
			}
			cap = cap * 2 < max ? cap * 2 : (size_t)max;
			if (!(p = realloc(buf, cap + 1))) {
				rc = pd_err_set(e, PD_E_NOMEM, "out of memory (inflate)");
				goto out;
			}
			buf = p;
		}
		zs.next_out = buf + len;
		zs.avail_out = (uInt)(cap - len > 0x40000000 ? 0x40000000 : cap - len);
		{
			uInt room = zs.avail_out;
			zr = inflate(&zs, Z_NO_FLUSH);
			len += room - zs.avail_out;
		}
		if (zr == Z_STREAM_END || zr == Z_OK)
			continue;
		if (zr == Z_BUF_ERROR && zs.avail_out != 0) {
			rc = pd_err_set(e, PD_E_MALFORMED, "truncated gzip data");
			goto out;
		}
		if (zr != Z_BUF_ERROR) {
			rc = pd_err_set(e, PD_E_MALFORMED, "corrupt gzip data: %s",
					zs.msg ? zs.msg : "inflate error");
			goto out;
		}
	}
out:
	inflateEnd(&zs);
	if (rc) {
		free(buf);
		return rc;
	}
	*out = buf;
	*outn = len;
	return PD_OK;
}

/* ---- tables ------------------------------------------------------------------------------ */

typedef struct sref {
	const uint8_t *p;
	size_t n;
} sref;

typedef struct idx {
	uint64_t id;
	size_t i;
} idx;

typedef struct mapping {
	uint64_t id, file, build;
} mapping;

typedef struct function {
	uint64_t id, name, sys, file;
} function;

typedef struct location {
	uint64_t id;
	sref body;
	char *frame; /* rendered */
} location;

typedef struct dec {
	const pd_limits *lim;
	uint64_t budget, budget0; /* bytes of frame and key text left, and at the start */
	sref *strs, *types, *smps, *maps, *fns, *locs;
	size_t strs_n, strs_cap, types_n, types_cap, smps_n, smps_cap, maps_n, maps_cap;
	size_t fns_n, fns_cap, locs_n, locs_cap;
	uint64_t *comments;
	size_t comments_n, comments_cap, nunknown;
	sref period_type;
	uint64_t scalar[16]; /* top-level varint fields 7..15 by number */
	mapping *mt;
	function *ft;
	location *lt;
	idx *map_ids, *fn_ids, *loc_ids;
	pd_slow_profile *out;
} dec;

static void dec_free(dec *d)
{
	free(d->strs);
	free(d->types);
	free(d->smps);
	free(d->maps);
	free(d->fns);
	free(d->comments);
	free(d->mt);
	free(d->ft);
	if (d->lt)
		for (size_t i = 0; i < d->locs_n; i++)
			free(d->lt[i].frame);
	free(d->locs);
	free(d->lt);
	free(d->map_ids);
	free(d->fn_ids);
	free(d->loc_ids);
}

static int bad(pd_err *e, const char *what, size_t i)
{
	return pd_err_set(e, PD_E_MALFORMED, "malformed profile: bad %s #%zu", what, i);
}

static int nomem(pd_err *e) { return pd_err_set(e, PD_E_NOMEM, "out of memory"); }

/* Takes n bytes of the text budget; -1 when it is spent. */
static int spend(dec *d, size_t n)
{
	if (n > d->budget)
		return -1;
	d->budget -= n;
	return 0;
}

static int over_budget(const dec *d, pd_err *e)
{
	return pd_err_set(e, PD_E_LIMIT,
			  "the slow path's rendered frames and keys exceed %llu bytes (16x the profile + 64 MiB)",
			  (unsigned long long)d->budget0);
}

static int over(pd_err *e, const char *what, uint64_t limit)
{
	return pd_err_set(e, PD_E_LIMIT, "profile has more than %llu %s", (unsigned long long)limit,
			  what);
}

/* Appends a repeated message field's bytes to its list, within limit. */
static int add_ref(sref **arr, size_t *n, size_t *cap, uint64_t limit, const char *what, sref s,
		   pd_err *e)
{
	if (*n >= limit)
		return over(e, what, limit);
	return push((void **)arr, n, cap, sizeof s, &s) ? nomem(e) : PD_OK;
}

static int add_comment(dec *d, uint64_t v, pd_err *e)
{
	if (d->comments_n >= d->lim->max_table)
		return over(e, "comments", d->lim->max_table);
	return PUSH(d->comments, &v) ? nomem(e) : PD_OK;
}

static int top_comment(dec *d, wcur *c, uint32_t wt, pd_err *e)
{
	const uint8_t *p;
	size_t n;
	uint64_t v;
	int rc;

	if (wt == W_VARINT)
		return w_varint(c, &v) ? bad(e, "comment", d->comments_n) : add_comment(d, v, e);
	if (wt != W_LEN || w_bytes(c, &p, &n))
		return bad(e, "comment", d->comments_n);
	for (wcur in = wc(p, n); in.p < in.end;) {
		if (w_varint(&in, &v))
			return bad(e, "comment", d->comments_n);
		if ((rc = add_comment(d, v, e)))
			return rc;
	}
	return PD_OK;
}

static int top_message(dec *d, uint32_t f, sref s, pd_err *e)
{
	const pd_limits *l = d->lim;
	uint64_t max_types = l->max_sample_types < SLOW_MAX_COLS ? l->max_sample_types : SLOW_MAX_COLS;

	switch (f) {
	case 1:
		return add_ref(&d->types, &d->types_n, &d->types_cap, max_types, "sample types", s, e);
	case 2:
		return add_ref(&d->smps, &d->smps_n, &d->smps_cap, l->max_samples, "samples", s, e);
	case 3:
		return add_ref(&d->maps, &d->maps_n, &d->maps_cap, l->max_table, "mappings", s, e);
	case 4:
		return add_ref(&d->locs, &d->locs_n, &d->locs_cap, l->max_table, "locations", s, e);
	case 5:
		return add_ref(&d->fns, &d->fns_n, &d->fns_cap, l->max_table, "functions", s, e);
	case 6:
		if (s.n > l->max_string)
			return pd_err_set(e, PD_E_LIMIT, "string #%zu is %zu bytes, over the limit of %llu",
					  d->strs_n, s.n, (unsigned long long)l->max_string);
		return add_ref(&d->strs, &d->strs_n, &d->strs_cap, l->max_table, "strings", s, e);
	default: /* 11 */
		d->period_type = s;
		return PD_OK;
	}
}

/* The top level: lists of each repeated message, scalars, comments. */
static int read_top(dec *d, const uint8_t *buf, size_t len, pd_err *e)
{
	wcur c = wc(buf, len);
	int rc = PD_OK;

	while (c.p < c.end && rc == PD_OK) {
		size_t at = (size_t)(c.p - buf);
		uint32_t f, wt;
		sref s;

		if (w_key(&c, &f, &wt))
			return pd_err_set(e, PD_E_MALFORMED, "malformed profile: bad field key at byte %zu", at);
		if (f == 13) {
			rc = top_comment(d, &c, wt, e);
		} else if ((f >= 1 && f <= 6) || f == 11) {
			if (wt != W_LEN || w_bytes(&c, &s.p, &s.n))
				return pd_err_set(e, PD_E_MALFORMED,
						  "malformed profile: bad length-delimited field %u at byte %zu", f, at);
			rc = top_message(d, f, s, e);
		} else if (f >= 7 && f <= 15) {
			if (w_uint(&c, wt, &d->scalar[f]))
				return pd_err_set(e, PD_E_MALFORMED,
						  "malformed profile: bad varint field %u at byte %zu", f, at);
		} else {
			if (w_skip(&c, wt))
				return pd_err_set(e, PD_E_MALFORMED,
						  "malformed profile: bad unknown field %u at byte %zu", f, at);
			if (++d->nunknown > d->lim->max_table)
				return over(e, "unknown fields", d->lim->max_table);
		}
	}
	return rc;
}

/* A string-table index field: varint wire type and in range. */
static int w_stri(const dec *d, wcur *c, uint32_t wt, uint64_t *v)
{
	return w_uint(c, wt, v) || *v >= d->strs_n;
}

static void sb_s(sbuf *b, const dec *d, uint64_t i)
{
	sb_esc(b, d->strs[i].p, d->strs[i].n);
}

static char *str_esc(const dec *d, uint64_t i)
{
	sbuf b = {0};
	sb_s(&b, d, i);
	return sb_take(&b);
}

/* A ValueType message: (type, unit) string indices. sig gets the strings in
 * the order met (what the engine's schema hash folds). */
static int read_value_type(const dec *d, sref s, uint64_t *type, uint64_t *unit, sbuf *sig)
{
	*type = *unit = 0;
	for (wcur c = wc(s.p, s.n); c.p < c.end;) {
		uint32_t f, wt;
		uint64_t v;
		if (w_key(&c, &f, &wt))
			return -1;
		if (f == 1 || f == 2) {
			if (w_stri(d, &c, wt, &v))
				return -1;
			*(f == 1 ? type : unit) = v;
			if (sig) {
				sb_s(sig, d, v);
				sb_add(sig, "/", 1);
			}
		} else if (w_skip(&c, wt)) {
			return -1;
		}
	}
	return 0;
}

/* qsort that takes an empty (NULL) array. */
static void sort(void *base, size_t n, size_t size, int (*cmp)(const void *, const void *))
{
	if (n > 1)
		qsort(base, n, size, cmp);
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int read_types(dec *d, pd_err *e)
{
	pd_slow_profile *o = d->out;
	char *sorted[SLOW_MAX_COLS];
	uint64_t t, u;
	sbuf sig = {0}, b = {0};

	if (d->types_n == 0)
		return pd_err_set(e, PD_E_MALFORMED, "malformed profile: no sample_type (not a profile?)");
	for (size_t i = 0; i < d->types_n; i++) {
		if (read_value_type(d, d->types[i], &t, &u, NULL))
			return bad(e, "sample type", i);
		sb_s(&b, d, t);
		sb_add(&b, "/", 1);
		sb_s(&b, d, u);
		o->col[o->ncols] = sb_take(&b);
		o->col_type[o->ncols] = str_esc(d, t);
		if (!o->col[o->ncols++] || !o->col_type[o->ncols - 1])
			return nomem(e);
		for (uint32_t k = 0; k + 1 < o->ncols; k++)
			if (strcmp(o->col[k], o->col[o->ncols - 1]) == 0)
				return pd_err_set(e, PD_E_MALFORMED,
						  "malformed profile: sample types #%u and #%zu are the same", k, i);
	}
	if (read_value_type(d, d->period_type, &t, &u, &sig)) {
		free(sig.p);
		return bad(e, "period type", 0);
	}
	sb_s(&b, d, t);
	sb_add(&b, "/", 1);
	sb_s(&b, d, u);
	o->period_type = sb_take(&b);
	memcpy(sorted, o->col, o->ncols * sizeof *sorted);
	qsort(sorted, o->ncols, sizeof *sorted, cmp_str);
	for (uint32_t k = 0; k < o->ncols; k++) {
		sb_str(&b, sorted[k]);
		sb_add(&b, ";", 1);
	}
	sb_add(&b, "period ", 7);
	if (sig.p)
		sb_str(&b, sig.p);
	free(sig.p);
	o->schema = sb_take(&b);
	return o->period_type && o->schema ? PD_OK : nomem(e);
}

static int cmp_idx(const void *a, const void *b)
{
	const idx *x = a, *y = b;
	return x->id < y->id ? -1 : x->id > y->id;
}

/* Sorted (id, index) pairs; ids must be non-zero and unique. */
static int build_ids(idx **out, const uint64_t *ids, size_t stride, size_t n, const char *what,
		     pd_err *e)
{
	idx *v = malloc((n ? n : 1) * sizeof *v);
	if (!v)
		return nomem(e);
	for (size_t i = 0; i < n; i++) {
		v[i].id = *(const uint64_t *)((const char *)ids + i * stride);
		v[i].i = i;
		if (v[i].id == 0) {
			free(v);
			return pd_err_set(e, PD_E_MALFORMED, "malformed profile: %s #%zu has id 0", what, i);
		}
	}
	qsort(v, n, sizeof *v, cmp_idx);
	for (size_t i = 1; i < n; i++)
		if (v[i].id == v[i - 1].id) {
			unsigned long long dup = v[i].id;
			free(v);
			return pd_err_set(e, PD_E_MALFORMED, "malformed profile: duplicate %s id %llu",
					  what, dup);
		}
	*out = v;
	return PD_OK;
}

/* Index of id in a table, or -1. */
static long find_id(const idx *ids, size_t n, uint64_t id)
{
	idx k = {id, 0};
	const idx *hit = n ? bsearch(&k, ids, n, sizeof k, cmp_idx) : NULL;
	return hit ? (long)hit->i : -1;
}

/* One field of a table record into rec: 0, or non-zero when it is malformed. */
typedef int (*field_fn)(const dec *d, wcur *c, uint32_t f, uint32_t wt, void *rec);

static int mapping_field(const dec *d, wcur *c, uint32_t f, uint32_t wt, void *rec)
{
	mapping *m = rec;

	if (f == 1)
		return w_uint(c, wt, &m->id);
	if (f == 5 || f == 6)
		return w_stri(d, c, wt, f == 5 ? &m->file : &m->build);
	return w_skip(c, wt);
}

static int function_field(const dec *d, wcur *c, uint32_t f, uint32_t wt, void *rec)
{
	function *fn = rec;

	if (f == 1)
		return w_uint(c, wt, &fn->id);
	if (f >= 2 && f <= 4)
		return w_stri(d, c, wt, f == 2 ? &fn->name : f == 3 ? &fn->sys : &fn->file);
	return w_skip(c, wt);
}

/* Decodes the n records raw[] field by field into table (n zeroed entries of sz bytes,
 * each starting with its uint64_t id), then indexes their ids into *ids. */
static int read_table(const dec *d, const sref *raw, size_t n, void *table, size_t sz,
		      field_fn field, idx **ids, const char *what, pd_err *e)
{
	for (size_t i = 0; i < n; i++) {
		void *rec = (char *)table + i * sz;
		for (wcur c = wc(raw[i].p, raw[i].n); c.p < c.end;) {
			uint32_t f, wt;
			if (w_key(&c, &f, &wt) || field(d, &c, f, wt, rec))
				return bad(e, what, i);
		}
	}
	return build_ids(ids, table, sz, n, what, e);
}

static int read_mappings(dec *d, pd_err *e)
{
	if (!(d->mt = calloc(d->maps_n + 1, sizeof *d->mt)))
		return nomem(e);
	return read_table(d, d->maps, d->maps_n, d->mt, sizeof *d->mt, mapping_field, &d->map_ids,
			  "mapping", e);
}

static int read_functions(dec *d, pd_err *e)
{
	if (!(d->ft = calloc(d->fns_n + 1, sizeof *d->ft)))
		return nomem(e);
	return read_table(d, d->fns, d->fns_n, d->ft, sizeof *d->ft, function_field, &d->fn_ids,
			  "function", e);
}

/* One Line of an address-0 location: fn|sys|file:line, or !:line. */
static int render_line(const dec *d, sref s, sbuf *b)
{
	uint64_t fid = 0, line = 0;
	for (wcur c = wc(s.p, s.n); c.p < c.end;) {
		uint32_t f, wt;
		int err;
		if (w_key(&c, &f, &wt))
			return -1;
		if (f == 1 || f == 2)
			err = w_uint(&c, wt, f == 1 ? &fid : &line);
		else
			err = w_skip(&c, wt);
		if (err)
			return -1;
	}
	if (fid) {
		long fi = find_id(d->fn_ids, d->fns_n, fid);
		if (fi < 0)
			return -1;
		sb_s(b, d, d->ft[fi].name);
		sb_add(b, "|", 1);
		sb_s(b, d, d->ft[fi].sys);
		sb_add(b, "|", 1);
		sb_s(b, d, d->ft[fi].file);
	} else {
		sb_add(b, "!", 1);
	}
	sb_num(b, ":", line, 0);
	return 0;
}

/* Lines of one location are joined by '+' (inlined calls). -2: over budget. */
static int add_line(const dec *d, sref s, sbuf *lines, int *nlines)
{
	if (lines->n > d->budget)
		return -2;
	if ((*nlines)++)
		sb_add(lines, "+", 1);
	return render_line(d, s, lines);
}

/* A location's frame text; every line is validated even when the address
 * alone is the identity. */
static int render_location(dec *d, size_t i, pd_err *e)
{
	location *l = &d->lt[i];
	uint64_t mid = 0, addr = 0;
	sbuf lines = {0}, b = {0};
	int nlines = 0;
	long m;

	for (wcur c = wc(l->body.p, l->body.n); c.p < c.end;) {
		uint32_t f, wt;
		sref s;
		int err;
		if (w_key(&c, &f, &wt))
			goto malformed;
		if (f >= 1 && f <= 3)
			err = w_uint(&c, wt, f == 1 ? &l->id : f == 2 ? &mid : &addr);
		else if (f == 4)
			err = wt != W_LEN || w_bytes(&c, &s.p, &s.n) ? -1 : add_line(d, s, &lines, &nlines);
		else
			err = w_skip(&c, wt);
		if (err == -2) {
			free(lines.p);
			return over_budget(d, e);
		}
		if (err)
			goto malformed;
	}
	m = mid ? find_id(d->map_ids, d->maps_n, mid) : -1;
	if (mid && m < 0) {
		free(lines.p);
		return pd_err_set(e, PD_E_MALFORMED,
				  "malformed profile: location #%zu references unknown mapping %llu", i,
				  (unsigned long long)mid);
	}
	if (addr) {
		sb_num(&b, "@0x", addr, 1);
	} else {
		if (m >= 0) {
			sb_add(&b, "[", 1);
			sb_s(&b, d, d->mt[m].file);
			sb_add(&b, "|", 1);
			sb_s(&b, d, d->mt[m].build);
			sb_add(&b, "]", 1);
		}
		if (lines.p)
			sb_str(&b, lines.p);
		if (m < 0 && !nlines)
			sb_add(&b, "?", 1);
	}
	free(lines.p);
	if (spend(d, b.n)) {
		free(b.p);
		return over_budget(d, e);
	}
	return (l->frame = sb_take(&b)) ? PD_OK : nomem(e);
malformed:
	free(lines.p);
	return bad(e, "location", i);
}

static int read_locations(dec *d, pd_err *e)
{
	int rc;
	if (!(d->lt = calloc(d->locs_n + 1, sizeof *d->lt)))
		return nomem(e);
	for (size_t i = 0; i < d->locs_n; i++) {
		d->lt[i].body = d->locs[i];
		if ((rc = render_location(d, i, e)))
			return rc;
	}
	return build_ids(&d->loc_ids, &d->lt[0].id, sizeof *d->lt, d->locs_n, "location", e);
}

static int check_scalars(dec *d, pd_err *e)
{
	static const int refs[] = {7, 8, 14, 15}; /* drop_frames, keep_frames, default type, doc link */
	for (size_t i = 0; i < sizeof refs / sizeof refs[0]; i++)
		if (d->scalar[refs[i]] >= d->strs_n)
			return pd_err_set(e, PD_E_MALFORMED, "malformed profile: string index out of range");
	for (size_t i = 0; i < d->comments_n; i++)
		if (d->comments[i] >= d->strs_n)
			return pd_err_set(e, PD_E_MALFORMED, "malformed profile: comment out of range");
	return PD_OK;
}

static int read_meta(dec *d, pd_err *e)
{
	pd_slow_profile *o = d->out;
	sbuf b = {0};

	o->time_nanos = (int64_t)d->scalar[9];
	o->duration_nanos = (int64_t)d->scalar[10];
	o->period = (int64_t)d->scalar[12];
	o->drop_frames = str_esc(d, d->scalar[7]);
	o->keep_frames = str_esc(d, d->scalar[8]);
	o->default_sample_type = str_esc(d, d->scalar[14]);
	o->doc_link = str_esc(d, d->scalar[15]);
	for (size_t i = 0; i < d->comments_n; i++) {
		if (i)
			sb_add(&b, ",", 1);
		sb_s(&b, d, d->comments[i]);
	}
	o->comments = sb_take(&b);
	if (!o->drop_frames || !o->keep_frames || !o->default_sample_type || !o->doc_link ||
	    !o->comments)
		return nomem(e);
	return PD_OK;
}

/* ---- samples ---------------------------------------------------------------------------- */

typedef struct sample_parts {
	uint64_t *locs;
	size_t locs_n, locs_cap;
	char **labels;
	size_t labels_n, labels_cap;
	size_t label_bytes;
	int64_t vals[SLOW_MAX_COLS];
	uint32_t nvals;
} sample_parts;

static void parts_reset(sample_parts *s)
{
	for (size_t i = 0; i < s->labels_n; i++)
		free(s->labels[i]);
	s->locs_n = s->labels_n = s->label_bytes = 0;
	s->nvals = 0;
}

/* A Label as key:str:num:unit (every field is part of the identity). -3: the
 * sample's labels are over the text budget. */
static int read_label(const dec *d, sref s, sample_parts *sp)
{
	uint64_t key = 0, str = 0, num = 0, unit = 0;
	sbuf b = {0};
	char *txt;

	for (wcur c = wc(s.p, s.n); c.p < c.end;) {
		uint32_t f, wt;
		int err;
		if (w_key(&c, &f, &wt))
			return -1;
		if (f == 1 || f == 2 || f == 4)
			err = w_stri(d, &c, wt, f == 1 ? &key : f == 2 ? &str : &unit);
		else if (f == 3)
			err = w_uint(&c, wt, &num);
		else
			err = w_skip(&c, wt);
		if (err)
			return -1;
	}
	sb_s(&b, d, key);
	sb_add(&b, ":", 1);
	sb_s(&b, d, str);
	sb_num(&b, ":", num, 0);
	sb_add(&b, ":", 1);
	sb_s(&b, d, unit);
	if ((sp->label_bytes += b.n) > d->budget) {
		free(b.p);
		return -3;
	}
	if (!(txt = sb_take(&b)) || PUSH(sp->labels, &txt)) {
		free(txt);
		return -2;
	}
	return 0;
}

static int add_value(const dec *d, sample_parts *sp, uint64_t v)
{
	if (sp->nvals >= d->out->ncols)
		return -1;
	sp->vals[sp->nvals++] = (int64_t)v;
	return 0;
}

/* One sample field into sp: -1 malformed, -2 out of memory. */
static int read_sample_field(const dec *d, wcur *c, uint32_t f, uint32_t wt, sample_parts *sp)
{
	const uint8_t *p;
	size_t n;
	uint64_t v;

	if ((f == 1 || f == 2) && wt == W_VARINT) {
		if (w_varint(c, &v))
			return -1;
		if (f == 2)
			return add_value(d, sp, v);
		return PUSH(sp->locs, &v) ? -2 : 0;
	}
	if ((f == 1 || f == 2) && wt == W_LEN) {
		if (w_bytes(c, &p, &n))
			return -1;
		for (wcur in = wc(p, n); in.p < in.end;) {
			if (w_varint(&in, &v))
				return -1;
			if (f == 2 && add_value(d, sp, v))
				return -1;
			if (f == 1 && PUSH(sp->locs, &v))
				return -2;
		}
		return 0;
	}
	if (f == 3 && wt == W_LEN) {
		sref s;
		if (w_bytes(c, &s.p, &s.n))
			return -1;
		return read_label(d, s, sp);
	}
	if (f <= 3)
		return -1; /* a known field with the wrong wire type */
	return w_skip(c, wt);
}

/* The key of a decoded sample: frames, then the sorted labels. *over is set
 * (and NULL returned) when the key would not fit the text budget. */
static char *sample_key(dec *d, sample_parts *sp, int *over)
{
	sbuf b = {0};
	*over = 0;
	for (size_t k = 0; k < sp->locs_n; k++) {
		if (b.n > d->budget) {
			free(b.p);
			*over = 1;
			return NULL;
		}
		if (k)
			sb_add(&b, ";", 1);
		sb_str(&b, d->lt[find_id(d->loc_ids, d->locs_n, sp->locs[k])].frame);
	}
	sort(sp->labels, sp->labels_n, sizeof *sp->labels, cmp_str);
	for (size_t k = 0; k < sp->labels_n; k++) {
		sb_add(&b, k ? "," : " {", k ? 1 : 2);
		sb_str(&b, sp->labels[k]);
	}
	if (sp->labels_n)
		sb_add(&b, "}", 1);
	if (spend(d, b.n)) {
		free(b.p);
		*over = 1;
		return NULL;
	}
	return sb_take(&b);
}

static int read_sample(dec *d, size_t i, sample_parts *sp, pd_err *e)
{
	pd_slow_profile *o = d->out;
	row r;
	int err = 0, over;

	parts_reset(sp);
	for (wcur c = wc(d->smps[i].p, d->smps[i].n); c.p < c.end && !err;) {
		uint32_t f, wt;
		err = w_key(&c, &f, &wt) ? -1 : read_sample_field(d, &c, f, wt, sp);
	}
	if (err == -2)
		return nomem(e);
	if (err == -3)
		return over_budget(d, e);
	if (err)
		return bad(e, "sample", i);
	for (size_t k = 0; k < sp->locs_n; k++)
		if (find_id(d->loc_ids, d->locs_n, sp->locs[k]) < 0)
			return pd_err_set(e, PD_E_MALFORMED,
					  "malformed profile: sample #%zu references an unknown location id", i);
	if (sp->locs_n > d->lim->max_depth)
		return pd_err_set(e, PD_E_LIMIT, "sample #%zu has %zu locations, over the limit of %llu",
				  i, sp->locs_n, (unsigned long long)d->lim->max_depth);
	if (sp->labels_n > d->lim->max_labels)
		return pd_err_set(e, PD_E_LIMIT, "sample #%zu has %zu labels, over the limit of %llu", i,
				  sp->labels_n, (unsigned long long)d->lim->max_labels);
	if (sp->nvals != o->ncols)
		return pd_err_set(e, PD_E_MALFORMED,
				  "malformed profile: sample #%zu has %u values, expected %u", i, sp->nvals,
				  o->ncols);
	r.key = sample_key(d, sp, &over);
	if (over)
		return over_budget(d, e);
	r.vals = malloc(o->ncols * sizeof *r.vals);
	if (!r.key || !r.vals || PUSH(o->rows, &r)) {
		free(r.key);
		free(r.vals);
		return nomem(e);
	}
	memcpy(r.vals, sp->vals, o->ncols * sizeof *r.vals);
	return PD_OK;
}

static int cmp_row(const void *a, const void *b)
{
	return strcmp(((const row *)a)->key, ((const row *)b)->key);
}

/* Sorts rows by key and sums rows of equal key (wrapping, as int64 would). */
static void sum_duplicates(pd_slow_profile *o)
{
	size_t w = 0;
	sort(o->rows, o->rows_n, sizeof *o->rows, cmp_row);
	for (size_t i = 0; i < o->rows_n; i++) {
		if (w && strcmp(o->rows[w - 1].key, o->rows[i].key) == 0) {
			for (uint32_t c = 0; c < o->ncols; c++)
				o->rows[w - 1].vals[c] = (int64_t)((uint64_t)o->rows[w - 1].vals[c] +
								   (uint64_t)o->rows[i].vals[c]);
			free(o->rows[i].key);
			free(o->rows[i].vals);
			continue;
		}
		o->rows[w++] = o->rows[i];
	}
	o->rows_n = w;
}

static int read_samples(dec *d, pd_err *e)
{
	sample_parts sp;
	int rc = PD_OK;

	memset(&sp, 0, sizeof sp);
	for (size_t i = 0; i < d->smps_n && rc == PD_OK; i++)
		rc = read_sample(d, i, &sp, e);
	parts_reset(&sp);
	free(sp.locs);
	free(sp.labels);
	if (rc == PD_OK)
		sum_duplicates(d->out);
	return rc;
}

static int decode_raw(dec *d, const uint8_t *buf, size_t len, pd_err *e)
{
	int rc;
	if ((rc = read_top(d, buf, len, e)))
		return rc;
	if (d->strs_n == 0 || d->strs[0].n != 0)
		return pd_err_set(e, PD_E_MALFORMED,
				  "malformed profile: string table must start with \"\"");
	if ((rc = read_types(d, e)) || (rc = read_mappings(d, e)) || (rc = read_functions(d, e)) ||
	    (rc = read_locations(d, e)) || (rc = check_scalars(d, e)) || (rc = read_meta(d, e)))
		return rc;
	return read_samples(d, e);
}

/* The raw protobuf of in after the input caps: in itself, or inflated into
 * *raw (the caller frees it). */
static int open_input(const void *in, size_t n, const pd_limits *lim, const uint8_t **p,
		      uint8_t **raw, size_t *len, pd_err *e)
{
	*p = in;
	*len = n;
	if (n > lim->max_input)
		return pd_err_set(e, PD_E_LIMIT, "input exceeds the limit of %llu bytes",
				  (unsigned long long)lim->max_input);
	if (n == 0)
		return pd_err_set(e, PD_E_MALFORMED, "empty input");
	if (n > UINT32_MAX)
		return pd_err_set(e, PD_E_LIMIT, "input over 4 GiB");
	if ((*p)[0] == 0x1f) {
		uint64_t max = lim->max_inflated < UINT32_MAX ? lim->max_inflated : UINT32_MAX;
		int rc = gunzip(*p, n, max, raw, len, e);
		*p = *raw;
		return rc;
	}
	if (n > lim->max_inflated)
		return pd_err_set(e, PD_E_LIMIT, "profile exceeds the limit of %llu bytes",
				  (unsigned long long)lim->max_inflated);
	return PD_OK;
}

static int dec_init(dec *d, const pd_limits *lim, size_t len, pd_err *e)
{
	memset(d, 0, sizeof *d);
	d->lim = lim;
	d->budget = d->budget0 = (64u << 20) + 16 * (uint64_t)len;
	return (d->out = calloc(1, sizeof *d->out)) ? PD_OK : nomem(e);
}

int pd_slow_decode(const void *in, size_t n, const pd_limits *lim, pd_slow_profile **out,
		   pd_err *e)
{
	const uint8_t *p;
	uint8_t *raw = NULL;
	size_t len = n;
	pd_limits defl;
	dec d;
	int rc;

	*out = NULL;
	if (!lim) {
		pd_limits_default(&defl);
		lim = &defl;
	}
	if ((rc = open_input(in, n, lim, &p, &raw, &len, e)))
		return rc;
	if ((rc = dec_init(&d, lim, len, e)))
		goto out;
	rc = decode_raw(&d, p, len, e);
out:
	dec_free(&d);
	free(raw);
	if (rc)
		pd_slow_free(d.out);
	else
		*out = d.out;
	return rc;
}

/* ---- the delta ------------------------------------------------------------------------ */

/* Is the escaped name esc the plain string raw? */
static int name_is(const char *esc, const char *raw)
{
	sbuf b = {0};
	int eq;
	sb_esc(&b, (const uint8_t *)raw, strlen(raw));
	sb_add(&b, "", 0);
	eq = b.p && strcmp(b.p, esc) == 0;
	free(b.p);
	return eq;
}

/* DESIGN §2.1: the four cumulative Go types are deltas, the rest gauges,
 * unless the request overrides a type by name. */
static int is_delta_column(const pd_slow_profile *p, uint32_t c, const pd_req *req)
{
	static const char *const delta_types[] = {"alloc_objects", "alloc_space", "contentions",
						  "delay"};
	int pol = PD_POLICY_GAUGE;

	for (size_t i = 0; i < sizeof delta_types / sizeof delta_types[0]; i++)
		if (name_is(p->col_type[c], delta_types[i]))
			pol = PD_POLICY_DELTA;
	for (size_t k = 0; k < req->noverrides; k++)
		if (name_is(p->col_type[c], req->overrides[k].name))
			pol = req->overrides[k].policy;
	return pol == PD_POLICY_DELTA;
}

static int col_index(const pd_slow_profile *p, const char *col)
{
	for (uint32_t c = 0; c < p->ncols; c++)
		if (strcmp(p->col[c], col) == 0)
			return (int)c;
	return -1;
}

static const row *find_row(const pd_slow_profile *p, const char *key)
{
	row k = {(char *)(uintptr_t)key, NULL};
	return p->rows_n ? bsearch(&k, p->rows, p->rows_n, sizeof k, cmp_row) : NULL;
}

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

/* The result starts as a copy of cur's metadata, without rows. */
static pd_slow_profile *copy_meta(const pd_slow_profile *cur)
{
	pd_slow_profile *o = calloc(1, sizeof *o);
	int ok = o != NULL;

	if (!o)
		return NULL;
	o->ncols = cur->ncols;
	for (uint32_t c = 0; c < cur->ncols; c++) {
		o->col[c] = dup_or_null(cur->col[c]);
		o->col_type[c] = dup_or_null(cur->col_type[c]);
		ok &= o->col[c] && o->col_type[c];
	}
	o->schema = dup_or_null(cur->schema);
	ok &= o->schema != NULL;
#define META_COPY(f)                                                                               \
	o->f = dup_or_null(cur->f);                                                                \
	ok &= o->f != NULL;
	META_STRINGS(META_COPY)
#undef META_COPY
	o->period = cur->period;
	o->time_nanos = cur->time_nanos;
	o->duration_nanos = cur->duration_nanos;
	if (!ok) {
		pd_slow_free(o);
		return NULL;
	}
	return o;
}

static const char *reset_reason(const pd_slow_profile *prev, const pd_slow_profile *cur,
				const pd_req *req, uint64_t prev_incarnation)
{
	if (req->incarnation && prev_incarnation && req->incarnation != prev_incarnation)
		return "producer incarnation changed";
	if (strcmp(prev->schema, cur->schema) != 0)
		return "sample types changed";
	if (prev->period != cur->period)
		return "period changed";
	if (cur->time_nanos < prev->time_nanos)
		return "time_nanos went backwards";
	return NULL;
}

/* vals = cur - prev in the delta columns; 1 if a counter went backwards. */
static int subtract(const pd_slow_profile *prev, const pd_slow_profile *cur, const int *is_delta,
		    const row *r, int64_t *vals)
{
	const row *pr = find_row(prev, r->key);
	for (uint32_t c = 0; c < cur->ncols; c++) {
		int pc = is_delta[c] && pr ? col_index(prev, cur->col[c]) : -1;
		int64_t old = pc >= 0 ? pr->vals[pc] : 0;
		if (r->vals[c] < old)
			return 1;
		vals[c] = r->vals[c] - old;
	}
	return 0;
}

static int all_zero(const int64_t *v, uint32_t n)
{
	for (uint32_t c = 0; c < n; c++)
		if (v[c])
			return 0;
	return 1;
}

/* Rows of cur, minus prev where delta is set, zero rows dropped. Returns 1 on
 * a counter going backwards, -1 out of memory. */
static int fill_rows(pd_slow_profile *o, const pd_slow_profile *prev, const pd_slow_profile *cur,
		     const int *is_delta, int delta)
{
	for (size_t i = 0; i < cur->rows_n; i++) {
		const row *r = &cur->rows[i];
		row nr = {NULL, malloc(cur->ncols * sizeof(int64_t))};
		if (!nr.vals)
			return -1;
		if (delta && subtract(prev, cur, is_delta, r, nr.vals)) {
			free(nr.vals);
			return 1;
		}
		if (!delta)
			memcpy(nr.vals, r->vals, cur->ncols * sizeof(int64_t));
		if (all_zero(nr.vals, cur->ncols)) {
			free(nr.vals);
			continue;
		}
		if (!(nr.key = strdup(r->key)) || PUSH(o->rows, &nr)) {
			free(nr.key);
			free(nr.vals);
			return -1;
		}
	}
	return 0;
}

/* The first-profile rule (DESIGN §2). Written out again in pd_engine.c on purpose:
 * the slow path shares no decision code with the engine, so it can catch the
 * engine's mistakes. Change both together. */
static int first_keeps(const pd_req *req)
{
	if (req->first_policy == PD_FIRST_KEEP)
		return 1;
	if (req->first_policy == PD_FIRST_DROP)
		return 0;
	return req->producer_start_ns != 0 && req->producer_start_ns >= req->last_seen_ns;
}

static void set_status(pd_slow_profile *o, int status, int reason, const char *why)
{
	o->status = status;
	o->reason = reason;
	snprintf(o->why, sizeof o->why, "%s", why);
}

int pd_slow_delta(const pd_slow_profile *prev, const pd_slow_profile *cur, const pd_req *req,
		  uint64_t prev_incarnation, pd_slow_profile **out, pd_err *e)
{
	pd_slow_profile *o = copy_meta(cur);
	int is_delta[SLOW_MAX_COLS], ndelta = 0, r = 0;
	const char *why = NULL;

	*out = NULL;
	if (!o)
		return nomem(e);
	for (uint32_t c = 0; c < cur->ncols; c++)
		ndelta += is_delta[c] = is_delta_column(cur, c, req);
	if (!prev) {
		int keep = first_keeps(req);
		set_status(o, PD_STATUS_BASELINE, PD_REASON_FIRST,
			   keep ? "first profile of the stream" : "first profile of the stream (dropped by policy)");
		r = keep ? fill_rows(o, NULL, cur, is_delta, 0) : 0;
	} else if ((why = reset_reason(prev, cur, req, prev_incarnation)) == NULL &&
		   (r = fill_rows(o, prev, cur, is_delta, 1)) == 0) {
		set_status(o, PD_STATUS_DELTA, PD_REASON_NONE, "");
		if (ndelta > 0)
			o->duration_nanos = (int64_t)((uint64_t)cur->time_nanos - (uint64_t)prev->time_nanos);
	} else if (r >= 0) {
		free_rows(o->rows, o->rows_n);
		o->rows = NULL;
		o->rows_n = o->rows_cap = 0;
		set_status(o, PD_STATUS_BASELINE, PD_REASON_RESET, why ? why : "a counter went backwards");
		r = fill_rows(o, NULL, cur, is_delta, 0);
	}
	if (r < 0) {
		pd_slow_free(o);
		return nomem(e);
	}
	*out = o;
	return PD_OK;
}

int pd_slow_delta_raw(const void *prev, size_t prevn, const void *cur, size_t curn,
		      const pd_req *req, uint64_t prev_incarnation, const pd_limits *lim,
		      pd_slow_profile **out, pd_err *e)
{
	pd_slow_profile *p = NULL, *c = NULL;
	int rc;

	*out = NULL;
	if ((!prev || !(rc = pd_slow_decode(prev, prevn, lim, &p, e))) &&
	    !(rc = pd_slow_decode(cur, curn, lim, &c, e)))
		rc = pd_slow_delta(p, c, req, prev_incarnation, out, e);
	pd_slow_free(p);
	pd_slow_free(c);
	return rc;
}

int pd_slow_verify(const void *prev, size_t prevn, const void *cur, size_t curn, const void *out,
		   size_t outn, const pd_req *req, uint64_t prev_incarnation, int status, int reason,
		   const pd_limits *lim, pd_slow_verdict *v)
{
	pd_err e = {0, ""};
	int rc = pd_slow_delta_raw(prev, prevn, cur, curn, req, prev_incarnation, lim, &v->slow, &e);

	if (rc == PD_E_LIMIT || rc == PD_E_NOMEM)
		return -1;
	if (rc) {
		v->broken = "input";
		snprintf(v->what, sizeof v->what, "slow path refused an input the engine took: %s", e.msg);
		return 1;
	}
	if (pd_slow_decode(out, outn, NULL, &v->eng, &e)) {
		v->broken = "output";
		snprintf(v->what, sizeof v->what, "engine output unreadable: %s", e.msg);
		return 1;
	}
	v->n = pd_slow_compare(v->eng, v->slow, v->diffs, PD_SLOW_VERDICT_DIFFS);
	if (status != v->slow->status || reason != v->slow->reason) {
		v->broken = "status";
		snprintf(v->what, sizeof v->what, "engine %s/%s, slow path %s/%s", pd_status_name(status),
			 pd_reason_name(reason), pd_status_name(v->slow->status),
			 pd_reason_name(v->slow->reason));
	}
	return v->n || v->broken;
}

void pd_slow_tally_add(pd_slow_tally *t, int verdict)
{
	if (verdict < 0) {
		t->unchecked++;
		return;
	}
	t->checked++;
	t->mismatches += verdict > 0;
}

void pd_slow_verdict_free(pd_slow_verdict *v)
{
	pd_slow_free(v->slow);
	pd_slow_free(v->eng);
	v->slow = v->eng = NULL;
}

/* ---- accessors ------------------------------------------------------------------------- */

int pd_slow_status(const pd_slow_profile *p) { return p->status; }
int pd_slow_reason(const pd_slow_profile *p) { return p->reason; }
const char *pd_slow_why(const pd_slow_profile *p) { return p->why; }
size_t pd_slow_rows(const pd_slow_profile *p) { return p->rows_n; }
const char *pd_slow_key(const pd_slow_profile *p, size_t i) { return p->rows[i].key; }
uint32_t pd_slow_ncols(const pd_slow_profile *p) { return p->ncols; }
const char *pd_slow_col(const pd_slow_profile *p, uint32_t c) { return p->col[c]; }
int64_t pd_slow_time_nanos(const pd_slow_profile *p) { return p->time_nanos; }
int64_t pd_slow_duration_nanos(const pd_slow_profile *p) { return p->duration_nanos; }

int64_t pd_slow_value(const pd_slow_profile *p, const char *key, const char *col, int *found)
{
	const row *r = find_row(p, key);
	int c = col_index(p, col);
	*found = r && c >= 0;
	return *found ? r->vals[c] : 0;
}

/* ---- comparison ------------------------------------------------------------------------ */

typedef struct diffs {
	pd_slow_diff *v;
	size_t max, n;
} diffs;

static void add_diff(diffs *d, const char *reason, const char *col, const char *key, int64_t a,
		     int64_t b)
{
	if (d->n < d->max) {
		pd_slow_diff x = {reason, col, key, a, b, NULL, NULL};
		d->v[d->n] = x;
	}
	d->n++;
}

static void meta_str(diffs *d, const char *name, const char *a, const char *b)
{
	if (strcmp(a, b) == 0)
		return;
	add_diff(d, name, "", "", 0, 0);
	if (d->n <= d->max) {
		d->v[d->n - 1].sa = a;
		d->v[d->n - 1].sb = b;
	}
}

static void meta_int(diffs *d, const char *name, int64_t a, int64_t b)
{
	if (a != b)
		add_diff(d, name, "", "", a, b);
}

static void compare_meta(const pd_slow_profile *a, const pd_slow_profile *b, diffs *d)
{
	sbuf sa = {0}, sb = {0};
	for (uint32_t c = 0; c < a->ncols; c++) {
		sb_str(&sa, a->col[c]);
		sb_add(&sa, ",", 1);
	}
	for (uint32_t c = 0; c < b->ncols; c++) {
		sb_str(&sb, b->col[c]);
		sb_add(&sb, ",", 1);
	}
	if ((sa.p && sb.p && strcmp(sa.p, sb.p) != 0) || !sa.p != !sb.p)
		add_diff(d, "sample_type", "", "", a->ncols, b->ncols);
	free(sa.p);
	free(sb.p);
#define META_CMP(f) meta_str(d, #f, a->f, b->f);
	META_STRINGS(META_CMP)
#undef META_CMP
	meta_int(d, "period", a->period, b->period);
	meta_int(d, "time_nanos", a->time_nanos, b->time_nanos);
	meta_int(d, "duration_nanos", a->duration_nanos, b->duration_nanos);
}

/* A row present on one side only: one difference per sample type. */
static void one_sided(diffs *d, const pd_slow_profile *p, const row *r, int side_a)
{
	for (uint32_t c = 0; c < p->ncols; c++)
		add_diff(d, side_a ? "only-a" : "only-b", p->col[c], r->key, side_a ? r->vals[c] : 0,
			 side_a ? 0 : r->vals[c]);
}

static void compare_rows(const pd_slow_profile *a, const pd_slow_profile *b, diffs *d)
{
	int bcol[SLOW_MAX_COLS];
	size_t i = 0, j = 0;

	for (uint32_t c = 0; c < a->ncols; c++)
		bcol[c] = col_index(b, a->col[c]);
	while (i < a->rows_n || j < b->rows_n) {
		int k = i == a->rows_n ? 1 : j == b->rows_n ? -1 : strcmp(a->rows[i].key, b->rows[j].key);
		if (k < 0) {
			one_sided(d, a, &a->rows[i++], 1);
		} else if (k > 0) {
			one_sided(d, b, &b->rows[j++], 0);
		} else {
			for (uint32_t c = 0; c < a->ncols; c++)
				if (bcol[c] >= 0 && a->rows[i].vals[c] != b->rows[j].vals[bcol[c]])
					add_diff(d, "value", a->col[c], a->rows[i].key, a->rows[i].vals[c],
						 b->rows[j].vals[bcol[c]]);
			i++;
			j++;
		}
	}
}

size_t pd_slow_compare(const pd_slow_profile *a, const pd_slow_profile *b, pd_slow_diff *v,
		       size_t max)
{
	diffs d = {v, max, 0};
	compare_meta(a, b, &d);
	compare_rows(a, b, &d);
	return d.n;
}

void pd_slow_diff_format(const pd_slow_diff *d, char *buf, size_t cap)
{
	if (d->sa)
		snprintf(buf, cap, "%s differs: '%s' vs '%s'", d->reason, d->sa, d->sb);
	else if (!*d->key && !*d->col)
		snprintf(buf, cap, "%s differs: %lld vs %lld", d->reason, (long long)d->a,
			 (long long)d->b);
	else
		snprintf(buf, cap, "%s %s: %lld vs %lld at %s", d->reason, d->col, (long long)d->a,
			 (long long)d->b, d->key);
}

/* ---- the encoder ----------------------------------------------------------------------- */
/*
 * A delta as pprof, written over the current profile it was computed from:
 * every top-level field of cur is copied except its samples and its times;
 * each sample of cur whose key survives in the delta is written once (the
 * first of its duplicates) with its locations and labels as they were and
 * the delta's values; time_nanos and duration_nanos are the delta's. Tables
 * (locations, functions, mappings, strings) are kept whole, not compacted.
 */

typedef sbuf wbuf;

static void wb_add(wbuf *b, const void *s, size_t n) { sb_add(b, (const char *)s, n); }

static void wb_varint(wbuf *b, uint64_t v)
{
	uint8_t tmp[10];
	size_t n = 0;
	do {
		tmp[n++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
		v >>= 7;
	} while (v);
	wb_add(b, tmp, n);
}

/* One sample of cur, its values replaced by vals. */
static void encode_sample(wbuf *b, sref s, const int64_t *vals, uint32_t ncols)
{
	wbuf body = {0}, packed = {0};

	for (wcur c = wc(s.p, s.n); c.p < c.end;) {
		const uint8_t *at = c.p;
		uint32_t f, wt;
		if (w_key(&c, &f, &wt) || w_skip(&c, wt))
			break; /* cannot happen: the decoder accepted this sample */
		if (f != 2)
			wb_add(&body, at, (size_t)(c.p - at));
	}
	for (uint32_t k = 0; k < ncols; k++)
		wb_varint(&packed, (uint64_t)vals[k]);
	wb_varint(&body, (2u << 3) | W_LEN);
	wb_varint(&body, packed.n);
	wb_add(&body, packed.p, packed.n);
	wb_varint(b, (2u << 3) | W_LEN);
	wb_varint(b, body.n);
	wb_add(b, body.p, body.n);
	b->oom |= body.oom | packed.oom;
	free(body.p);
	free(packed.p);
}

static int encode_over(dec *d, const uint8_t *buf, size_t len, const pd_slow_profile *delta,
		       wbuf *b, pd_err *e)
{
	char *done = calloc(delta->rows_n + 1, 1);
	size_t i = 0;

	if (!done)
		return nomem(e);
	for (wcur c = wc(buf, len); c.p < c.end;) {
		const uint8_t *at = c.p;
		uint32_t f, wt;
		if (w_key(&c, &f, &wt) || w_skip(&c, wt))
			break; /* cannot happen: the decoder accepted this profile */
		if (f == 9 || f == 10)
			continue;
		if (f != 2) {
			wb_add(b, at, (size_t)(c.p - at));
			continue;
		}
		const row *r = find_row(delta, d->out->rows[i].key);
		size_t k = r ? (size_t)(r - delta->rows) : 0;
		if (r && !done[k]) {
			done[k] = 1;
			encode_sample(b, d->smps[i], r->vals, delta->ncols);
		}
		i++;
	}
	free(done);
	wb_varint(b, 9u << 3);
	wb_varint(b, (uint64_t)delta->time_nanos);
	wb_varint(b, 10u << 3);
	wb_varint(b, (uint64_t)delta->duration_nanos);
	return b->oom ? nomem(e) : PD_OK;
}

int pd_slow_encode(const void *cur, size_t n, const pd_limits *lim, const pd_slow_profile *delta,
		   uint8_t **out, size_t *outn, pd_err *e)
{
	const uint8_t *p;
	uint8_t *raw = NULL;
	size_t len = n;
	pd_limits defl;
	sample_parts sp;
	wbuf b = {0};
	dec d;
	int rc = PD_OK;

	*out = NULL;
	*outn = 0;
	if (!lim) {
		pd_limits_default(&defl);
		lim = &defl;
	}
	memset(&sp, 0, sizeof sp);
	if ((rc = open_input(cur, n, lim, &p, &raw, &len, e)))
		return rc;
	if ((rc = dec_init(&d, lim, len, e)))
		goto out;
	if ((rc = read_top(&d, p, len, e)) || (rc = read_types(&d, e)) || (rc = read_mappings(&d, e)) ||
	    (rc = read_functions(&d, e)) || (rc = read_locations(&d, e)) || (rc = check_scalars(&d, e)) ||
	    (rc = read_meta(&d, e)))
		goto out;
	if (d.out->ncols != delta->ncols) {
		rc = pd_err_set(e, PD_E_ARG, "the delta's sample types are not the profile's");
		goto out;
	}
	for (size_t i = 0; i < d.smps_n && rc == PD_OK; i++)
		rc = read_sample(&d, i, &sp, e); /* rows in sample order: row i is sample i */
	if (rc == PD_OK)
		rc = encode_over(&d, p, len, delta, &b, e);
out:
	parts_reset(&sp);
	free(sp.locs);
	free(sp.labels);
	dec_free(&d);
	pd_slow_free(d.out);
	free(raw);
	if (rc) {
		free(b.p);
		return rc;
	}
	*out = b.p ? (uint8_t *)b.p : calloc(1, 1);
	*outn = b.n;
	return *out ? PD_OK : nomem(e);
}
