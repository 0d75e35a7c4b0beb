/*
 * pd_table: the stream table of pd_service, its hot-state cache and the
 * pd_state pool.
 *
 * Streams are found by (tenant, name) in a chained hash table keyed with a
 * per-process random seed (clients choose stream names: no flooding one
 * chain). Every stream is on one LRU list; eviction walks it from the cold
 * end and removes idle streams (not busy, nothing queued) until the cache is
 * under its byte budget; an evicted stream is read again from the store on
 * its next request. Tenants are a second small hash table with their stream
 * counts (the per-tenant limit). pd_state objects are pooled so that steady
 * state does not allocate per request.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "pd_gz.h"
#include "pd_hash.h"
#include "pd_list.h"
#include "pd_clock.h"
#include "pd_table.h"

#define INITIAL_BUCKETS 1024u
#define INITIAL_TBUCKETS 64u

struct pd_table {
	size_t budget; /* cache bytes */
	uint64_t hseed;
	pd_stream **buckets;
	size_t nbuckets, nstreams;
	pd_stream *lru_head, *lru_tail;
	size_t cache_bytes;
	uint64_t evictions;

	pd_tenant **tbuckets;
	size_t ntbuckets, ntenants;

	pd_state **spool;
	size_t nspool, spool_cap;
};

static uint64_t str_hash(uint64_t seed, const char *p)
{
	return pd_h_bytes(seed, (const uint8_t *)p, strlen(p)).lo;
}

static uint64_t key_hash(const pd_table *s, const char *tenant, const char *name)
{
	return str_hash(s->hseed ^ str_hash(s->hseed, tenant), name);
}

int pd_table_new(size_t budget, size_t pool, pd_table **out, pd_err *e)
{
	pd_table *s = calloc(1, sizeof *s);
	uint64_t seed = 0;

	*out = NULL;
	if (!s)
		return pd_err_set(e, PD_E_NOMEM, "out of memory for the stream table");
	if (getrandom(&seed, sizeof seed, 0) != (ssize_t)sizeof seed)
		seed = (uint64_t)pd_now_ns() * 0x9e3779b97f4a7c15ULL;
	s->budget = budget;
	s->hseed = seed;
	s->nbuckets = INITIAL_BUCKETS;
	s->buckets = calloc(s->nbuckets, sizeof *s->buckets);
	s->ntbuckets = INITIAL_TBUCKETS;
	s->tbuckets = calloc(s->ntbuckets, sizeof *s->tbuckets);
	s->spool_cap = pool;
	s->spool = calloc(s->spool_cap ? s->spool_cap : 1, sizeof *s->spool);
	if (!s->buckets || !s->tbuckets || !s->spool) {
		pd_table_free(s);
		return pd_err_set(e, PD_E_NOMEM, "out of memory for the stream table");
	}
	*out = s;
	return PD_OK;
}

static void free_stream(pd_stream *st)
{
	pd_state_free(st->state);
	free(st->tenant);
	free(st);
}

void pd_table_free(pd_table *s)
{
	if (!s)
		return;
	for (pd_stream *st = s->lru_head, *nx; st; st = nx) {
		nx = st->lru_next;
		free_stream(st);
	}
	for (size_t i = 0; s->tbuckets && i < s->ntbuckets; i++)
		for (pd_tenant *t = s->tbuckets[i], *nx; t; t = nx) {
			nx = t->next;
			free(t);
		}
	for (size_t i = 0; i < s->nspool; i++)
		pd_state_free(s->spool[i]);
	free(s->buckets);
	free(s->tbuckets);
	free(s->spool);
	free(s);
}

/* ---- tenants -------------------------------------------------------------------- */

static void tenant_grow(pd_table *s)
{
	size_t nb = s->ntbuckets * 2;
	pd_tenant **b = calloc(nb, sizeof *b);

	if (!b)
		return; /* longer chains, still correct */
	for (size_t i = 0; i < s->ntbuckets; i++)
		for (pd_tenant *t = s->tbuckets[i], *nx; t; t = nx) {
			size_t k = str_hash(s->hseed, t->name) & (nb - 1);
			nx = t->next;
			t->next = b[k];
			b[k] = t;
		}
	free(s->tbuckets);
	s->tbuckets = b;
	s->ntbuckets = nb;
}

pd_tenant *pd_table_tenant(pd_table *s, const char *name, int create)
{
	size_t k = str_hash(s->hseed, name) & (s->ntbuckets - 1), len;
	pd_tenant *t;

	for (t = s->tbuckets[k]; t; t = t->next)
		if (!strcmp(t->name, name))
			return t;
	if (!create)
		return NULL;
	len = strlen(name);
	if (!(t = calloc(1, sizeof *t + len + 1)))
		return NULL;
	memcpy(t->name, name, len + 1);
	t->next = s->tbuckets[k];
	s->tbuckets[k] = t;
	if (++s->ntenants > s->ntbuckets)
		tenant_grow(s);
	return t;
}

void pd_table_each_tenant(pd_table *s, void (*fn)(void *arg, pd_tenant *ten), void *arg)
{
	for (size_t i = 0; i < s->ntbuckets; i++)
		for (pd_tenant *t = s->tbuckets[i]; t; t = t->next)
			fn(arg, t);
}

/* ---- streams -------------------------------------------------------------------- */

static void table_grow(pd_table *s)
{
	size_t nb = s->nbuckets * 2;
	pd_stream **b = calloc(nb, sizeof *b);

	if (!b)
		return;
	for (size_t i = 0; i < s->nbuckets; i++)
		for (pd_stream *st = s->buckets[i], *nx; st; st = nx) {
			nx = st->hnext;
			st->hnext = b[st->hkey & (nb - 1)];
			b[st->hkey & (nb - 1)] = st;
		}
	free(s->buckets);
	s->buckets = b;
	s->nbuckets = nb;
}

static void lru_unlink(pd_table *s, pd_stream *st)
{
	PD_LIST_REMOVE(s->lru_head, s->lru_tail, st, lru_prev, lru_next);
}

static void lru_push_head(pd_table *s, pd_stream *st)
{
	PD_LIST_PREPEND(s->lru_head, s->lru_tail, st, lru_prev, lru_next);
}

static pd_stream *stream_new(pd_table *s, const char *tenant, const char *name, uint64_t h)
{
	size_t tl = strlen(tenant), nl = strlen(name);
	pd_stream *st = calloc(1, sizeof *st);
	pd_tenant *ten = pd_table_tenant(s, tenant, 1);

	if (!st || !ten || !(st->tenant = malloc(tl + nl + 2))) {
		free(st);
		return NULL;
	}
	memcpy(st->tenant, tenant, tl + 1);
	st->name = st->tenant + tl + 1;
	memcpy(st->name, name, nl + 1);
	st->hkey = h;
	st->ten = ten;
	return st;
}

pd_stream *pd_table_stream(pd_table *s, const char *tenant, const char *name, int create)
{
	uint64_t h = key_hash(s, tenant, name);
	size_t k = h & (s->nbuckets - 1);
	pd_stream *st;

	for (st = s->buckets[k]; st; st = st->hnext)
		if (st->hkey == h && !strcmp(st->name, name) && !strcmp(st->tenant, tenant))
			return st;
	if (!create || !(st = stream_new(s, tenant, name, h)))
		return NULL;
	st->hnext = s->buckets[k];
	s->buckets[k] = st;
	lru_push_head(s, st);
	pd_table_account(s, st);
	if (++s->nstreams > s->nbuckets)
		table_grow(s);
	return st;
}

void pd_table_touch(pd_table *s, pd_stream *st)
{
	if (s->lru_head == st)
		return;
	lru_unlink(s, st);
	lru_push_head(s, st);
}

void pd_table_account(pd_table *s, pd_stream *st)
{
	size_t m = sizeof *st + strlen(st->tenant) + strlen(st->name) + 2;

	if (st->state)
		m += pd_state_mem_bytes(st->state);
	s->cache_bytes = s->cache_bytes - st->mem + m;
	st->mem = m;
}

void pd_table_unload(pd_table *s, pd_stream *st)
{
	pd_table_state_put(s, st->state);
	st->state = NULL;
	st->loaded = st->exists = st->state_corrupt = 0;
	pd_table_account(s, st);
}

static int stream_idle(const pd_stream *st)
{
	return !st->busy && !st->qhead && !st->in_runq;
}

/* Takes an idle stream out of the table and the LRU, onto *victims. */
static void stream_remove(pd_table *s, pd_stream *st, pd_stream **victims)
{
	pd_stream **pp = &s->buckets[st->hkey & (s->nbuckets - 1)];

	while (*pp != st)
		pp = &(*pp)->hnext;
	*pp = st->hnext;
	lru_unlink(s, st);
	s->nstreams--;
	s->cache_bytes -= st->mem;
	st->hnext = *victims;
	*victims = st;
}

pd_stream *pd_table_evict(pd_table *s)
{
	pd_stream *victims = NULL, *st = s->lru_tail, *prev;
	size_t skipped = 0;

	/* Busy streams are skipped; the walk past them is bounded so a release
	 * never scans a huge table under the lock. */
	while (st && s->cache_bytes > s->budget && skipped < 1024) {
		prev = st->lru_prev;
		if (stream_idle(st)) {
			stream_remove(s, st, &victims);
			s->evictions++;
		} else {
			skipped++;
		}
		st = prev;
	}
	return victims;
}

pd_stream *pd_table_drop_expired(pd_table *s, int64_t cutoff_ms, size_t max)
{
	pd_stream *victims = NULL, *st = s->lru_tail, *prev;

	for (size_t n = 0; st && n < max; n++, st = prev) {
		prev = st->lru_prev;
		if (stream_idle(st) && st->last_seen_ms < cutoff_ms)
			stream_remove(s, st, &victims);
	}
	return victims;
}

void pd_table_free_streams(pd_stream *list)
{
	for (pd_stream *nx; list; list = nx) {
		nx = list->hnext;
		free_stream(list);
	}
}

/* ---- pools ----------------------------------------------------------------------- */

pd_state *pd_table_state_get(pd_table *s)
{
	if (s->nspool)
		return s->spool[--s->nspool];
	return pd_state_new();
}

void pd_table_state_put(pd_table *s, pd_state *ps)
{
	if (!ps)
		return;
	if (s->nspool < s->spool_cap) {
		pd_state_clear(ps);
		s->spool[s->nspool++] = ps;
		return;
	}
	pd_state_free(ps);
}

void pd_table_stats_get(const pd_table *s, pd_table_stats *out)
{
	out->streams = s->nstreams;
	out->tenants = s->ntenants;
	out->cache_bytes = s->cache_bytes;
	out->evictions = s->evictions;
}
