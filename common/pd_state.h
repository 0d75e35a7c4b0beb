/*
 * pd_state: the per-stream delta state, an opaque object.
 *
 * For each sample identity (128-bit hash) of the previous profile it holds
 * the previous cumulative values of the *delta* columns only, keyed by
 * column name ("type/unit"), plus metadata: schema fingerprint, period,
 * last time_nanos and producer incarnation. Entries live in one dense array
 * (hash + values) with a uint32 open-addressing index: 16 + 8*ncols bytes per
 * identity plus 4-11 bytes of index; the serialized form is hash + varints.
 *
 * The engine writes a new state into a caller-provided object and never
 * touches the previous one, so a failed request leaves the stored state as it
 * was. Objects are reusable (their arrays are kept between requests).
 * Not thread-safe: one thread uses one object at a time.
 */
#ifndef PD_STATE_H
#define PD_STATE_H

#include <stddef.h>
#include <stdint.h>

#include "pd_buf.h"
#include "pd_hash.h"

typedef struct pd_state pd_state;

/* Identities per stream are capped (24-bit entry index in the hash index). */
#define PD_STATE_MAX_ENTRIES (1u << 24)

pd_state *pd_state_new(void);
void pd_state_free(pd_state *s);
/* Forgets all content (the stream becomes "never seen"); keeps allocations. */
void pd_state_clear(pd_state *s);

int pd_state_valid(const pd_state *s);
size_t pd_state_identities(const pd_state *s);
size_t pd_state_ncols(const pd_state *s);
int64_t pd_state_time_nanos(const pd_state *s);
int64_t pd_state_period(const pd_state *s);
uint64_t pd_state_incarnation(const pd_state *s);
uint64_t pd_state_schema(const pd_state *s);
/* Column name i ("type/unit"), valid while s is unchanged. */
const char *pd_state_col(const pd_state *s, size_t i);
/* Bytes of heap the state holds (entries + index + names). */
size_t pd_state_mem_bytes(const pd_state *s);

/* Appends the versioned, CRC-checked serialized form to out. */
int pd_state_serialize(const pd_state *s, pd_buf *out, pd_err *e);
/* Replaces s with the content of a serialized blob; on error s is cleared. */
int pd_state_deserialize(pd_state *s, const uint8_t *p, size_t n, pd_err *e);

/* ---- used by the engine ------------------------------------------------ */
int pd_state_prepare(pd_state *s, uint32_t max_entries, const char *const *cols, const size_t *col_lens,
		     uint32_t ncols, pd_err *e);
/* Finds or inserts h; returns the entry index, *inserted = 1 if new. */
uint32_t pd_state_upsert(pd_state *s, pd_h128 h, int *inserted);
/* Entries held, valid or not (while the engine builds a state). */
size_t pd_state_count(const pd_state *s);
/* Hints the cache about a coming find/upsert of h. */
void pd_state_prefetch(const pd_state *s, pd_h128 h);
/* Second stage: once the slot is cached, prefetches the entry it points to. */
void pd_state_prefetch_entry(const pd_state *s, pd_h128 h);
/* Finds h; returns entry index or UINT32_MAX. */
uint32_t pd_state_find(const pd_state *s, pd_h128 h);
/* Values of entry i (ncols int64). */
int64_t *pd_state_vals(pd_state *s, uint32_t i);
const int64_t *pd_state_cvals(const pd_state *s, uint32_t i);
pd_h128 pd_state_hash_at(const pd_state *s, uint32_t i);
void pd_state_set_meta(pd_state *s, uint64_t schema, int64_t period, int64_t time_nanos,
		       uint64_t incarnation);
/* Index of column named name in s, or -1. */
int pd_state_col_index(const pd_state *s, const char *name, size_t len);

#endif
