/*
 * pd_table: the stream table of pd_service and its hot-state cache.
 *
 * Streams are found by (tenant, name); each holds the cached row of its
 * stream (state, last sequence, hash, response facts) and the fields the
 * service's scheduler keeps on it (its FIFO of ops, busy, runnable). The
 * table owns the streams, the tenants (stream counts for the per-tenant
 * limit), the LRU with its byte budget and a pool of pd_state objects. It
 * knows nothing of jobs or threads and never calls back into the service.
 *
 * Not thread-safe: the caller serialises every call (pd_service holds its
 * mutex), except pd_table_free and pd_table_free_streams.
 */
#ifndef PD_TABLE_H
#define PD_TABLE_H

#include <stddef.h>
#include <stdint.h>

#include "pd_err.h"
#include "pd_state.h"
#include "pd_store.h"

struct pd_job; /* the service's op; the table only links them */

typedef struct pd_tenant {
	struct pd_tenant *next; /* hash chain */
	uint64_t committed;     /* streams stored (recounted after TTL expiry) */
	uint64_t pending;       /* new streams whose first commit is in flight */
	char name[];
} pd_tenant;

typedef struct pd_stream {
	struct pd_stream *hnext;               /* hash chain; victim list */
	struct pd_stream *lru_prev, *lru_next; /* head = most recently used */
	struct pd_stream *run_next;            /* the service's runnable FIFO */
	uint64_t hkey;
	pd_tenant *ten;
	char *tenant, *name; /* one allocation (key) */

	/* Ops waiting; busy: one is being processed (until its commit completed).
	 * A stream with any of these is never evicted. */
	struct pd_job *qhead, *qtail;
	uint8_t busy, in_runq;

	/* The cached row. loaded = 0: unknown, read the store on next use. */
	uint8_t loaded, exists;
	pd_state *state; /* NULL or not valid: no state (first profile next) */
	uint64_t version, last_seq, incarnation, deltas_served, resets;
	uint8_t last_hash[PD_STORE_HASH_LEN];
	int last_status, last_reason;
	uint64_t last_samples_in, last_samples_out;
	int64_t created_ms, last_seen_ms, last_time_nanos;
	char last_reset_reason[96];
	/* The stored state blob failed to deserialize (checksum, version): the
	 * next applied profile is a BASELINE `evicted` recorded as "state-corrupt". */
	uint8_t state_corrupt;

	size_t mem; /* what the cache budget counts for this stream */
} pd_stream;

typedef struct pd_table pd_table;

typedef struct pd_table_stats {
	uint64_t streams, tenants, cache_bytes, evictions;
} pd_table_stats;

/* budget: cache bytes past which idle streams are evicted; pool: pd_state
 * objects kept for reuse. */
int pd_table_new(size_t budget, size_t pool, pd_table **out, pd_err *e);
void pd_table_free(pd_table *t);

/* Finds a tenant; creates it when create. NULL when absent or out of memory. */
pd_tenant *pd_table_tenant(pd_table *t, const char *name, int create);
/* Calls fn for every tenant. */
void pd_table_each_tenant(pd_table *t, void (*fn)(void *arg, pd_tenant *ten), void *arg);
/* Finds (tenant, name); creates a not-loaded stream when create. NULL when
 * absent or out of memory. */
pd_stream *pd_table_stream(pd_table *t, const char *tenant, const char *name, int create);
void pd_table_touch(pd_table *t, pd_stream *st);
/* Recomputes st->mem and the cache total. */
void pd_table_account(pd_table *t, pd_stream *st);
/* Forgets the cached row (loaded = 0); the state goes to the pool. */
void pd_table_unload(pd_table *t, pd_stream *st);
/* Evicts idle LRU streams while over budget; returns them (linked by hnext)
 * for pd_table_free_streams(), which the caller may run outside its lock. */
pd_stream *pd_table_evict(pd_table *t);
/* Removes idle streams last seen before cutoff_ms (at most max looked at); same. */
pd_stream *pd_table_drop_expired(pd_table *t, int64_t cutoff_ms, size_t max);
void pd_table_free_streams(pd_stream *list);

/* State pool. get: NULL only when out of memory. put: NULL is a no-op; a
 * full pool frees the state. */
pd_state *pd_table_state_get(pd_table *t);
void pd_table_state_put(pd_table *t, pd_state *ps);

void pd_table_stats_get(const pd_table *t, pd_table_stats *out);

#endif
