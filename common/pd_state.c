/*
 * pd_state: per-stream delta state (see pd_state.h).
 *
 * Serialized layout (all integers little-endian or varint):
 *   "PDS1" | u8 flags(bit0 valid) | u64 schema | zigzag period | zigzag time
 *   | varint incarnation | varint ncols | ncols x (varint len, bytes)
 *   | varint n | n x (16-byte hash, ncols x zigzag varint) | u32 crc32
 */
#include "pd_state.h"

#include <stdlib.h>
#include <string.h>

#include "pd_crc.h"
#include "pd_pb.h"

#define PD_STATE_MAX_COLS 64

struct pd_state {
	int valid;
	uint64_t schema;
	int64_t period, time_nanos;
	uint64_t incarnation;
	uint32_t ncols, stride;
	char *names;      /* ncols NUL-terminated names, back to back */
	size_t names_len, names_alloc;
	uint32_t col_off[PD_STATE_MAX_COLS];
	uint32_t n;       /* entries used */
	size_t ent_words; /* words allocated for ent */
	uint64_t *ent;    /* n * stride words: lo, hi, values... */
	uint32_t *slots;  /* 0 = empty, else (tag << 24) | (entry index + 1) */
	uint32_t mask;    /* slots - 1 */
};

pd_state *pd_state_new(void)
{
	return calloc(1, sizeof(pd_state));
}

void pd_state_free(pd_state *s)
{
	if (!s)
		return;
	free(s->names);
	free(s->ent);
	free(s->slots);
	free(s);
}

void pd_state_clear(pd_state *s)
{
	s->valid = 0;
	s->n = 0;
	s->ncols = 0;
	s->stride = 2;
	s->names_len = 0;
	s->schema = 0;
	s->period = s->time_nanos = 0;
	s->incarnation = 0;
	if (s->slots)
		memset(s->slots, 0, ((size_t)s->mask + 1) * sizeof *s->slots);
}

int pd_state_valid(const pd_state *s) { return s->valid; }
size_t pd_state_identities(const pd_state *s) { return s->valid ? s->n : 0; }
size_t pd_state_count(const pd_state *s) { return s->n; }
size_t pd_state_ncols(const pd_state *s) { return s->ncols; }
int64_t pd_state_time_nanos(const pd_state *s) { return s->time_nanos; }
int64_t pd_state_period(const pd_state *s) { return s->period; }
uint64_t pd_state_incarnation(const pd_state *s) { return s->incarnation; }
uint64_t pd_state_schema(const pd_state *s) { return s->schema; }
const char *pd_state_col(const pd_state *s, size_t i) { return s->names + s->col_off[i]; }

size_t pd_state_mem_bytes(const pd_state *s)
{
	size_t slots = s->slots ? (size_t)s->mask + 1 : 0;
	return s->ent_words * 8 + slots * 4 + s->names_alloc + sizeof *s;
}

int64_t *pd_state_vals(pd_state *s, uint32_t i) { return (int64_t *)(s->ent + (size_t)i * s->stride + 2); }
const int64_t *pd_state_cvals(const pd_state *s, uint32_t i)
{
	return (const int64_t *)(s->ent + (size_t)i * s->stride + 2);
}

pd_h128 pd_state_hash_at(const pd_state *s, uint32_t i)
{
	pd_h128 h = {s->ent[(size_t)i * s->stride], s->ent[(size_t)i * s->stride + 1]};
	return h;
}

void pd_state_set_meta(pd_state *s, uint64_t schema, int64_t period, int64_t time_nanos,
		       uint64_t incarnation)
{
	s->valid = 1;
	s->schema = schema;
	s->period = period;
	s->time_nanos = time_nanos;
	s->incarnation = incarnation;
}

int pd_state_col_index(const pd_state *s, const char *name, size_t len)
{
	for (uint32_t i = 0; i < s->ncols; i++) {
		const char *c = s->names + s->col_off[i];
		if (strlen(c) == len && memcmp(c, name, len) == 0)
			return (int)i;
	}
	return -1;
}

static int set_names(pd_state *s, const char *const *cols, const size_t *lens, uint32_t ncols,
		     pd_err *e)
{
	size_t total = 0;
	if (ncols > PD_STATE_MAX_COLS)
		return pd_err_set(e, PD_E_LIMIT, "more than %d delta columns", PD_STATE_MAX_COLS);
	for (uint32_t i = 0; i < ncols; i++)
		total += lens[i] + 1;
	if (total > s->names_alloc) {
		char *p = realloc(s->names, total);
		if (!p)
			return pd_err_set(e, PD_E_NOMEM, "out of memory");
		s->names = p;
		s->names_alloc = total;
	}
	s->names_len = 0;
	for (uint32_t i = 0; i < ncols; i++) {
		s->col_off[i] = (uint32_t)s->names_len;
		memcpy(s->names + s->names_len, cols[i], lens[i]);
		s->names_len += lens[i];
		s->names[s->names_len++] = 0;
	}
	s->ncols = ncols;
	s->stride = 2 + ncols;
	return PD_OK;
}

int pd_state_prepare(pd_state *s, uint32_t max_entries, const char *const *cols, const size_t *col_lens,
		     uint32_t ncols, pd_err *e)
{
	uint32_t want_slots = 16;
	int rc;

	pd_state_clear(s);
	if (max_entries >= PD_STATE_MAX_ENTRIES)
		return pd_err_set(e, PD_E_LIMIT, "more than %u identities in one stream",
				  PD_STATE_MAX_ENTRIES - 1);
	if ((rc = set_names(s, cols, col_lens, ncols, e)))
		return rc;
	if ((size_t)max_entries * s->stride > s->ent_words || !s->ent) {
		size_t words = (size_t)max_entries * s->stride;
		uint64_t *p = realloc(s->ent, (words ? words : 1) * 8);
		if (!p)
			return pd_err_set(e, PD_E_NOMEM, "out of memory for %u state entries", max_entries);
		s->ent = p;
		s->ent_words = words ? words : 1;
	}
	/* Load factor <= 3/4. */
	while ((uint64_t)want_slots * 3 < (uint64_t)max_entries * 4)
		want_slots *= 2;
	if (!s->slots || want_slots > s->mask + 1) {
		uint32_t *p = calloc(want_slots, sizeof *p);
		if (!p)
			return pd_err_set(e, PD_E_NOMEM, "out of memory for state index");
		free(s->slots);
		s->slots = p;
		s->mask = want_slots - 1;
	}
	return PD_OK;
}

/*
 * Slots keep an 8-bit tag from the hash next to a 24-bit entry index, so a
 * probe touches an entry only when the tags match: one cache miss per lookup
 * instead of one per probed slot, at 4 bytes per slot.
 */
#define SLOT_IDX(v) ((v) & 0xffffffu)
#define SLOT_TAG(h) ((uint32_t)((h).hi >> 56) << 24)

void pd_state_prefetch(const pd_state *s, pd_h128 h)
{
	if (s->slots)
		__builtin_prefetch(&s->slots[(uint32_t)h.lo & s->mask]);
}

void pd_state_prefetch_entry(const pd_state *s, pd_h128 h)
{
	uint32_t v;
	if (!s->slots)
		return;
	v = s->slots[(uint32_t)h.lo & s->mask];
	if (v && (v & 0xff000000u) == SLOT_TAG(h))
		__builtin_prefetch(s->ent + (size_t)(SLOT_IDX(v) - 1) * s->stride);
}

uint32_t pd_state_find(const pd_state *s, pd_h128 h)
{
	uint32_t i, tag = SLOT_TAG(h);
	if (!s->slots || !s->valid)
		return UINT32_MAX;
	for (i = (uint32_t)h.lo & s->mask;; i = (i + 1) & s->mask) {
		uint32_t v = s->slots[i];
		const uint64_t *en;
		if (v == 0)
			return UINT32_MAX;
		if ((v & 0xff000000u) != tag)
			continue;
		en = s->ent + (size_t)(SLOT_IDX(v) - 1) * s->stride;
		if (en[0] == h.lo && en[1] == h.hi)
			return SLOT_IDX(v) - 1;
	}
}

uint32_t pd_state_upsert(pd_state *s, pd_h128 h, int *inserted)
{
	uint32_t i, tag = SLOT_TAG(h);
	for (i = (uint32_t)h.lo & s->mask;; i = (i + 1) & s->mask) {
		uint32_t v = s->slots[i];
		uint64_t *en;
		if (v == 0) {
			en = s->ent + (size_t)s->n * s->stride;
			en[0] = h.lo;
			en[1] = h.hi;
			memset(en + 2, 0, (size_t)s->ncols * 8);
			s->slots[i] = tag | ++s->n;
			*inserted = 1;
			return s->n - 1;
		}
		if ((v & 0xff000000u) != tag)
			continue;
		en = s->ent + (size_t)(SLOT_IDX(v) - 1) * s->stride;
		if (en[0] == h.lo && en[1] == h.hi) {
			*inserted = 0;
			return SLOT_IDX(v) - 1;
		}
	}
}

static inline uint64_t zz(int64_t v) { return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63); }
static inline int64_t unzz(uint64_t v) { return (int64_t)(v >> 1) ^ -(int64_t)(v & 1); }

int pd_state_serialize(const pd_state *s, pd_buf *out, pd_err *e)
{
	size_t start = out->len, need;
	uint32_t crc;
	int rc;

	need = 64 + s->names_len + (size_t)s->ncols * 11 + (size_t)s->n * (16 + (size_t)s->ncols * 10);
	if ((rc = pd_buf_reserve(out, need, e)))
		return rc;
	pd_pbw_raw(out, "PDS1", 4);
	out->data[out->len++] = (uint8_t)(s->valid ? 1 : 0);
	pd_pbw_raw(out, &s->schema, 8);
	pd_pbw_varint(out, zz(s->period));
	pd_pbw_varint(out, zz(s->time_nanos));
	pd_pbw_varint(out, s->incarnation);
	pd_pbw_varint(out, s->ncols);
	for (uint32_t i = 0; i < s->ncols; i++) {
		const char *c = s->names + s->col_off[i];
		size_t l = strlen(c);
		pd_pbw_varint(out, l);
		pd_pbw_raw(out, c, l);
	}
	pd_pbw_varint(out, s->valid ? s->n : 0);
	for (uint32_t i = 0; s->valid && i < s->n; i++) {
		const uint64_t *en = s->ent + (size_t)i * s->stride;
		pd_pbw_raw(out, en, 16);
		for (uint32_t c = 0; c < s->ncols; c++)
			pd_pbw_varint(out, zz((int64_t)en[2 + c]));
	}
	crc = pd_crc32(0, out->data + start, out->len - start);
	if ((rc = pd_buf_reserve(out, 4, e)))
		return rc;
	pd_pbw_raw(out, &crc, 4);
	return PD_OK;
}

static int deser(pd_state *s, const uint8_t *p, size_t n, pd_err *e)
{
	pd_rd r;
	uint64_t period, tn, inc, ncols, cnt;
	uint32_t crc;
	const char *names[PD_STATE_MAX_COLS];
	size_t lens[PD_STATE_MAX_COLS];
	uint64_t schema;
	int valid, rc;

	if (n < 4 + 1 + 8 + 4 || memcmp(p, "PDS1", 4) != 0)
		return pd_err_set(e, PD_E_STATE, "state blob: bad magic or too short");
	memcpy(&crc, p + n - 4, 4);
	if (crc != pd_crc32(0, p, n - 4))
		return pd_err_set(e, PD_E_STATE, "state blob: checksum mismatch");
	valid = p[4] & 1;
	memcpy(&schema, p + 5, 8);
	r = pd_rd_make(p + 13, n - 13 - 4);
	if (pd_rd_varint(&r, &period) || pd_rd_varint(&r, &tn) || pd_rd_varint(&r, &inc) ||
	    pd_rd_varint(&r, &ncols) || ncols > PD_STATE_MAX_COLS)
		return pd_err_set(e, PD_E_STATE, "state blob: bad header");
	for (uint64_t i = 0; i < ncols; i++) {
		const uint8_t *np;
		if (pd_rd_len(&r, &np, &lens[i]) || memchr(np, 0, lens[i]))
			return pd_err_set(e, PD_E_STATE, "state blob: bad column name");
		names[i] = (const char *)np;
	}
	if (pd_rd_varint(&r, &cnt) || cnt > (uint64_t)(r.end - r.p) / 16)
		return pd_err_set(e, PD_E_STATE, "state blob: bad entry count");
	if ((rc = pd_state_prepare(s, (uint32_t)cnt, names, lens, (uint32_t)ncols, e)))
		return rc;
	for (uint64_t i = 0; i < cnt; i++) {
		pd_h128 h;
		int ins;
		uint32_t idx;
		int64_t *v;
		if (r.end - r.p < 16)
			return pd_err_set(e, PD_E_STATE, "state blob: truncated entry");
		memcpy(&h, r.p, 16);
		r.p += 16;
		idx = pd_state_upsert(s, h, &ins);
		if (!ins)
			return pd_err_set(e, PD_E_STATE, "state blob: duplicate identity");
		v = pd_state_vals(s, idx);
		for (uint64_t c = 0; c < ncols; c++) {
			uint64_t x;
			if (pd_rd_varint(&r, &x))
				return pd_err_set(e, PD_E_STATE, "state blob: truncated values");
			v[c] = unzz(x);
		}
	}
	if (r.p != r.end)
		return pd_err_set(e, PD_E_STATE, "state blob: trailing bytes");
	pd_state_set_meta(s, schema, unzz(period), unzz(tn), inc);
	s->valid = valid;
	return PD_OK;
}

int pd_state_deserialize(pd_state *s, const uint8_t *p, size_t n, pd_err *e)
{
	int rc = deser(s, p, n, e);
	if (rc)
		pd_state_clear(s);
	return rc;
}
