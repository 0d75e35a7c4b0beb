/*
 * Unit tests of the state store (server/pd_store.h): round trip, concurrent
 * readers, group commit, fault injection, backpressure, listings, expiry,
 * compare-and-set, reopen, checksums.
 *
 * By default on the SQLite backend, each test with its own database in a temp
 * dir under /tmp, removed at exit (plus the SQLite-only cases: real
 * SQLITE_FULL, file mode, schema-1 migration, the smallest db_max_bytes).
 * With PDELTA_TEST_PG set to a libpq key=value connection string, the
 * backend-neutral tests run on PostgreSQL instead, each in its own schema
 * (search_path) dropped at exit, plus the PostgreSQL-only cases (schema
 * refusals, a role that may not read, probes, connection loss, stale pooled
 * readers);
 * tests/integration/test_store_pg.sh does that against a throwaway server.
 */
#include <libpq-fe.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <zlib.h>

#include "pd_store.h"
#include "tharness.h"
#include "tstore.h"

#define PATH_CAP 512 /* a file name, or a PostgreSQL connection string */

static char tmp_dir[64];
static int db_counter;
static const char *pg_conninfo; /* PDELTA_TEST_PG: run on PostgreSQL */

/* ---- helpers ------------------------------------------------------------------ */

/* Runs SQL on the PostgreSQL server of the tests; 1 if it succeeded. */
static int pg_sql(const char *sql)
{
	PGconn *c = PQconnectdb(pg_conninfo);
	PGresult *r = PQstatus(c) == CONNECTION_OK ? PQexec(c, sql) : NULL;
	ExecStatusType st = PQresultStatus(r);
	int ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;

	if (!ok)
		fprintf(stderr, "pg: %s: %s", sql, PQerrorMessage(c));
	PQclear(r);
	PQfinish(c);
	return ok;
}

/* The single integer a query on the tests' server returns, -1 on failure. */
static long long pg_int(const char *sql)
{
	PGconn *c = PQconnectdb(pg_conninfo);
	PGresult *r = PQstatus(c) == CONNECTION_OK ? PQexec(c, sql) : NULL;
	long long v = -1;

	if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1)
		v = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
	else
		fprintf(stderr, "pg: %s: %s", sql, PQerrorMessage(c));
	PQclear(r);
	PQfinish(c);
	return v;
}

/* SQLite: a file in tmp_dir. PostgreSQL: a fresh schema pdt_<id>, named by
 * the connection string's search_path. */
static void db_path(char *buf, size_t n, int id)
{
	char sql[128];

	if (!pg_conninfo) {
		snprintf(buf, n, "%s/s%d.db", tmp_dir, id);
		return;
	}
	snprintf(sql, sizeof sql, "DROP SCHEMA IF EXISTS pdt_%d CASCADE; CREATE SCHEMA pdt_%d", id,
		 id);
	CHECK(pg_sql(sql));
	snprintf(buf, n, "%s options='-csearch_path=pdt_%d'", pg_conninfo, id);
}

static void remove_db(const char *path)
{
	char p[128];
	static const char *const sfx[] = {"", "-wal", "-shm", "-journal"};

	for (size_t i = 0; i < sizeof sfx / sizeof sfx[0]; i++) {
		snprintf(p, sizeof p, "%s%s", path, sfx[i]);
		unlink(p);
	}
}

/* Opens a fresh store; opts may be NULL for defaults. path_out gets the file. */
static pd_store *open_fresh(struct pd_store_opts *opts, char *path_out, size_t n)
{
	db_path(path_out, n, ++db_counter);
	return th_store_open(opts, path_out);
}

/* A record whose blobs are derived from seq, so a reader can tell a torn or
 * mismatched row from a whole one. */
struct rec_buf {
	uint8_t state[4096];
	uint8_t delta[512];
	pd_store_row r;
};

static void fill_pattern(uint8_t *p, size_t n, uint64_t seq)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)(seq * 31 + i);
}

static int pattern_ok(const uint8_t *p, size_t n, uint64_t seq)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != (uint8_t)(seq * 31 + i))
			return 0;
	return 1;
}

static pd_store_row *make_rec(struct rec_buf *b, const char *tenant, const char *name,
			       uint64_t seq, size_t state_len)
{
	pd_store_row *r = &b->r;

	memset(r, 0, sizeof *r);
	if (state_len > sizeof b->state)
		state_len = sizeof b->state;
	fill_pattern(b->state, state_len, seq);
	fill_pattern(b->delta, sizeof b->delta, seq + 1);
	r->tenant = tenant;
	r->name = name;
	r->state = b->state;
	r->state_len = state_len;
	r->identities = seq * 2;
	r->state_bytes = state_len;
	r->last_seq = seq;
	memset(r->last_hash, (int)(seq & 0xff), sizeof r->last_hash);
	r->last_status = 1;
	r->last_reason = "";
	r->last_samples_in = 100 + seq;
	r->last_samples_out = 50 + seq;
	r->last_delta = b->delta;
	r->last_delta_len = sizeof b->delta;
	r->incarnation = 42;
	r->last_time_nanos = (int64_t)seq * 1000000000;
	return r;
}

/* Counts completions by outcome. */
struct done_count {
	pthread_mutex_t mu;
	int ok, store_err, notfound, state, other;
};

static void count_done(void *arg, int rc, uint64_t latency_ns)
{
	struct done_count *d = arg;

	pthread_mutex_lock(&d->mu);
	if (rc == PD_OK)
		d->ok++;
	else if (rc == PD_E_STORE)
		d->store_err++;
	else if (rc == PD_E_NOTFOUND)
		d->notfound++;
	else if (rc == PD_E_STATE)
		d->state++;
	else
		d->other++;
	pthread_mutex_unlock(&d->mu);
}

static void done_init(struct done_count *d)
{
	memset(d, 0, sizeof *d);
	pthread_mutex_init(&d->mu, NULL);
}

/* A completion that holds the writer thread until released, so tests can
 * stack writes behind it deterministically. */
struct gate {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int entered, open;
};

static void gate_init(struct gate *g)
{
	memset(g, 0, sizeof *g);
	pthread_mutex_init(&g->mu, NULL);
	pthread_cond_init(&g->cv, NULL);
}

static void gate_done(void *arg, int rc, uint64_t latency_ns)
{
	struct gate *g = arg;

	pthread_mutex_lock(&g->mu);
	g->entered = 1;
	pthread_cond_broadcast(&g->cv);
	while (!g->open)
		pthread_cond_wait(&g->cv, &g->mu);
	pthread_mutex_unlock(&g->mu);
}

static void gate_wait_entered(struct gate *g)
{
	pthread_mutex_lock(&g->mu);
	while (!g->entered)
		pthread_cond_wait(&g->cv, &g->mu);
	pthread_mutex_unlock(&g->mu);
}

static void gate_release(struct gate *g)
{
	pthread_mutex_lock(&g->mu);
	g->open = 1;
	pthread_cond_broadcast(&g->cv);
	pthread_mutex_unlock(&g->mu);
}

/* Blocks the writer inside the completion of a first write. */
static void hold_writer(pd_store *s, struct gate *g)
{
	struct rec_buf b;

	gate_init(g);
	CHECK(pd_store_put_async(s, make_rec(&b, "gate", "gate", 1, 8), gate_done, g) == PD_OK);
	gate_wait_entered(g);
}

static int put_sync(pd_store *s, const pd_store_row *r)
{
	struct done_count d;
	int rc;

	done_init(&d);
	rc = pd_store_put_async(s, r, count_done, &d);
	if (rc)
		return rc;
	pd_store_flush(s);
	return d.ok == 1 ? PD_OK : d.store_err ? PD_E_STORE : PD_E_INTERNAL;
}

static uint64_t get_seq(pd_store *s, const char *tenant, const char *name)
{
	pd_store_row r = {0};
	uint64_t seq = 0;

	if (pd_store_get(s, tenant, name, &r, NULL) == PD_OK)
		seq = r.last_seq;
	pd_store_row_free(&r);
	return seq;
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- tests ----------------------------------------------------------------------- */

static void test_round_trip(void)
{
	char path[PATH_CAP];
	struct rec_buf b;
	pd_store_row got = {0};
	pd_store_row *in;
	pd_store *s = open_fresh(NULL, path, sizeof path);
	pd_err e = {0};

	CHECK(s != NULL);
	if (!s)
		return;
	in = make_rec(&b, "acme", "api/heap", 7, 3000);
	in->last_reason = "first";
	in->last_status = 2;
	in->created_ms = 1111;
	in->last_seen_ms = 2222;
	in->deltas_served = 9;
	in->resets = 3;
	in->last_reset_reason = "incarnation";
	in->incarnation = UINT64_MAX; /* survives the signed INTEGER column */
	CHECK(put_sync(s, in) == PD_OK);

	CHECK(pd_store_get(s, "acme", "api/heap", &got, &e) == PD_OK);
	CHECK(!strcmp(got.tenant, "acme") && !strcmp(got.name, "api/heap"));
	CHECK(got.state_len == 3000 && pattern_ok(got.state, got.state_len, 7));
	CHECK(got.last_delta_len == 512 && pattern_ok(got.last_delta, 512, 8));
	CHECK(got.identities == 14 && got.state_bytes == 3000 && got.last_seq == 7);
	CHECK(!memcmp(got.last_hash, in->last_hash, PD_STORE_HASH_LEN));
	CHECK(got.last_status == 2 && !strcmp(got.last_reason, "first"));
	CHECK(got.last_samples_in == 107 && got.last_samples_out == 57);
	CHECK(got.incarnation == UINT64_MAX && got.last_time_nanos == 7000000000LL);
	CHECK(got.created_ms == 1111 && got.last_seen_ms == 2222);
	CHECK(got.deltas_served == 9 && got.resets == 3);
	CHECK(!strcmp(got.last_reset_reason, "incarnation"));
	CHECK(got.version == 1);

	/* Without the kept response: the same row, the response only by length. */
	{
		pd_store_row st = {0};
		CHECK(pd_store_get_state(s, "acme", "api/heap", &st, &e) == PD_OK);
		CHECK(st.state_len == 3000 && pattern_ok(st.state, st.state_len, 7));
		CHECK(st.last_delta == NULL && st.last_delta_len == 512);
		CHECK(st.last_seq == 7 && st.version == 1 && !strcmp(st.last_reason, "first") &&
		      !strcmp(st.last_reset_reason, "incarnation") &&
		      !memcmp(st.last_hash, in->last_hash, PD_STORE_HASH_LEN));
		CHECK(pd_store_get_state(s, "acme", "nope", &st, &e) == PD_E_NOTFOUND);
		CHECK(pd_store_get_response(s, "acme", "api/heap", &st, &e) == PD_OK);
		CHECK(st.last_delta_len == 512 && pattern_ok(st.last_delta, 512, 8));
		CHECK(st.state == NULL && st.state_len == 3000 && st.version == 1 && st.last_seq == 7);
		pd_store_row_free(&st);
	}

	/* An update keeps created_ms, bumps the version; empty blobs stay empty. */
	in = make_rec(&b, "acme", "api/heap", 8, 0);
	in->created_ms = 5555;
	in->last_delta_len = 0;
	in->last_delta = NULL;
	CHECK(put_sync(s, in) == PD_OK);
	CHECK(pd_store_get(s, "acme", "api/heap", &got, &e) == PD_OK); /* reuses got's memory */
	CHECK(got.last_seq == 8 && got.version == 2 && got.created_ms == 1111);
	CHECK(got.state_len == 0 && got.last_delta_len == 0);
	CHECK(got.last_seen_ms > 1000000000000LL); /* 0 meant now */

	/* Tenants are separate namespaces. */
	CHECK(pd_store_get(s, "other", "api/heap", &got, &e) == PD_E_NOTFOUND);
	CHECK(pd_store_get(s, "acme", "nope", &got, &e) == PD_E_NOTFOUND);
	CHECK(pd_store_put_async(s, &(pd_store_row){.tenant = "x"}, NULL, NULL) == PD_E_ARG);
	pd_store_row_free(&got);
	CHECK(pd_store_integrity_check(s, &e) == PD_OK);
	pd_store_close(s);
}

struct reader_arg {
	pd_store *s;
	volatile int *stop;
	int reads, bad, regress;
};

static void *reader_main(void *p)
{
	struct reader_arg *a = p;
	pd_store_row r = {0};
	uint64_t last = 0;

	while (!__atomic_load_n(a->stop, __ATOMIC_ACQUIRE)) {
		int rc = pd_store_get(a->s, "t", "hot", &r, NULL);
		if (rc == PD_E_NOTFOUND)
			continue;
		a->reads++;
		if (rc || !pattern_ok(r.state, r.state_len, r.last_seq) ||
		    !pattern_ok(r.last_delta, r.last_delta_len, r.last_seq + 1))
			a->bad++;
		if (!rc && r.last_seq < last)
			a->regress++;
		last = r.last_seq;
	}
	pd_store_row_free(&r);
	return NULL;
}

static void test_concurrent_readers(void)
{
	char path[PATH_CAP];
	struct rec_buf b;
	struct reader_arg ra[2];
	pthread_t th[2];
	volatile int stop = 0;
	pd_store *s = open_fresh(NULL, path, sizeof path);

	CHECK(s != NULL);
	if (!s)
		return;
	for (int i = 0; i < 2; i++) {
		ra[i] = (struct reader_arg){.s = s, .stop = &stop};
		pthread_create(&th[i], NULL, reader_main, &ra[i]);
	}
	for (uint64_t seq = 1; seq <= 400; seq++) {
		CHECK(pd_store_put_async(s, make_rec(&b, "t", "hot", seq, 100 + seq * 9), NULL,
					 NULL) == PD_OK);
		if (seq % 20 == 0)
			pd_store_flush(s);
	}
	pd_store_flush(s);
	__atomic_store_n(&stop, 1, __ATOMIC_RELEASE);
	for (int i = 0; i < 2; i++) {
		pthread_join(th[i], NULL);
		CHECK(ra[i].reads > 0);
		CHECK(ra[i].bad == 0);
		CHECK(ra[i].regress == 0);
	}
	CHECK(get_seq(s, "t", "hot") == 400);
	pd_store_close(s);
}

/* Completion that checks its write is already visible to a reader, i.e. that
 * it runs after COMMIT. */
struct visible_arg {
	pd_store *s;
	char name[32];
	uint64_t seq;
	int *invisible;
};

static void visible_done(void *arg, int rc, uint64_t latency_ns)
{
	struct visible_arg *v = arg;

	if (rc || get_seq(v->s, "g", v->name) < v->seq)
		(*v->invisible)++;
}

static void test_group_commit(void)
{
	enum { N = 1000, STREAMS = 50 };
	char path[PATH_CAP];
	struct rec_buf b;
	struct done_count d;
	struct pd_store_stats st;
	static struct visible_arg va[N / 100];
	int invisible = 0;
	pd_store *s = open_fresh(NULL, path, sizeof path);

	CHECK(s != NULL);
	if (!s)
		return;
	done_init(&d);
	for (int i = 0; i < N; i++) {
		char name[32];
		snprintf(name, sizeof name, "s%d", i % STREAMS);
		make_rec(&b, "g", name, (uint64_t)i + 1, 200);
		if (i % 100 == 99) {
			struct visible_arg *v = &va[i / 100];
			*v = (struct visible_arg){.s = s, .seq = (uint64_t)i + 1, .invisible = &invisible};
			snprintf(v->name, sizeof v->name, "%s", name);
			CHECK(pd_store_put_async(s, &b.r, visible_done, v) == PD_OK);
		} else {
			CHECK(pd_store_put_async(s, &b.r, count_done, &d) == PD_OK);
		}
	}
	CHECK(pd_store_flush(s) == PD_OK);
	pd_store_stats(s, &st);
	printf("group commit: %d writes in %llu commits (largest batch %llu)\n", N,
	       (unsigned long long)st.commits, (unsigned long long)st.batch_max);
	CHECK(d.ok == N - N / 100 && invisible == 0);
	CHECK(st.rows_written == N);
	CHECK(st.commits < N / 5);
	CHECK(st.batch_max > 1);
	CHECK(st.commit.count == st.commits && st.wait.count == N);
	CHECK(st.commit.le[PD_STORE_HIST_N - 1] <= st.commit.count);
	CHECK(st.commit.max_ns > 0 && st.commit.sum_ns >= st.commit.max_ns);
	CHECK(st.queue_len == 0 && st.queue_bytes == 0);
	CHECK(get_seq(s, "g", "s0") == N - STREAMS + 1);
	pd_store_close(s);
}

static void test_injected_fault(void)
{
	char path[PATH_CAP];
	struct rec_buf b;
	struct done_count d;
	struct gate g;
	struct pd_store_stats st;
	pd_store *s = open_fresh(NULL, path, sizeof path);

	CHECK(s != NULL);
	if (!s)
		return;
	CHECK(put_sync(s, make_rec(&b, "t", "a", 1, 100)) == PD_OK);

	/* Stack two writes behind the held writer so they form one batch. */
	hold_writer(s, &g);
	pd_store_inject_fault(s, 1);
	done_init(&d);
	CHECK(pd_store_put_async(s, make_rec(&b, "t", "a", 2, 100), count_done, &d) == PD_OK);
	CHECK(pd_store_put_async(s, make_rec(&b, "t", "b", 1, 100), count_done, &d) == PD_OK);
	CHECK(pd_store_delete_async(s, "t", "a", count_done, &d) == PD_OK);
	gate_release(&g);
	pd_store_flush(s);
	CHECK(d.store_err == 3 && d.ok == 0);
	CHECK(get_seq(s, "t", "a") == 1);                          /* previous value kept */
	CHECK(pd_store_get(s, "t", "b", &b.r, NULL) == PD_E_NOTFOUND); /* never inserted */
	pd_store_stats(s, &st);
	CHECK(st.errors == 1 && st.writes_failed == 3);
	CHECK(strstr(st.last_error, "injected") != NULL);

	/* The next transaction works again. */
	CHECK(put_sync(s, make_rec(&b, "t", "a", 2, 100)) == PD_OK);
	CHECK(get_seq(s, "t", "a") == 2);

	/* Error lines are rate-limited: after the recovery above, of three quick
	 * failures one is logged and two are counted as left out. */
	pd_store_inject_fault(s, 3);
	for (int i = 0; i < 3; i++)
		CHECK(put_sync(s, make_rec(&b, "t", "a", 3, 100)) == PD_E_STORE);
	pd_store_stats(s, &st);
	CHECK(st.errors == 4 && st.log_suppressed == 2);
	CHECK(st.last_error_ms > 1700000000000 && strstr(st.last_error, "injected") != NULL);
	CHECK(put_sync(s, make_rec(&b, "t", "a", 3, 100)) == PD_OK);
	CHECK(pd_store_integrity_check(s, NULL) == PD_OK);
	pd_store_close(s);
}

/* A real SQLITE_FULL from the disk budget: the batch is rolled back whole. */
static void test_disk_full(void)
{
	char path[PATH_CAP], name[32];
	struct pd_store_opts o;
	struct rec_buf b;
	struct pd_store_stats st;
	int i, rc = PD_OK;
	pd_store *s;

	pd_store_opts_init(&o);
	o.max_db_bytes = 640 << 10; /* ten 64 KiB pages: the schema and a few leaves */
	s = open_fresh(&o, path, sizeof path);
	CHECK(s != NULL);
	if (!s)
		return;
	for (i = 0; i < 400 && !rc; i++) {
		snprintf(name, sizeof name, "big%d", i);
		rc = put_sync(s, make_rec(&b, "t", name, 1, 4096));
	}
	CHECK(rc == PD_E_STORE);
	CHECK(i > 3 && i < 400);
	printf("disk full after %d rows of ~4.6 KB in a %llu-byte budget\n", i - 1,
	       (unsigned long long)o.max_db_bytes);
	CHECK(pd_store_get(s, "t", name, &b.r, NULL) == PD_E_NOTFOUND);
	pd_store_stats(s, &st);
	CHECK(st.errors == 1 && strstr(st.last_error, "full") != NULL);
	CHECK(get_seq(s, "t", "big0") == 1);
	CHECK(pd_store_integrity_check(s, NULL) == PD_OK);

	/* Deleting makes room again. */
	CHECK(put_sync(s, &(pd_store_row){.tenant = "t", .name = "big0"}) == PD_OK);
	{
		struct done_count d;
		done_init(&d);
		/* Half of the rows: whole 64 KiB pages become free. */
		for (int k = 0; k < (i - 1) / 2; k++) {
			snprintf(name, sizeof name, "big%d", k + 1);
			pd_store_delete_async(s, "t", name, count_done, &d);
		}
		pd_store_flush(s);
		CHECK(d.ok == (i - 1) / 2);
	}
	CHECK(put_sync(s, make_rec(&b, "t", "again", 1, 4096)) == PD_OK);
	pd_store_close(s);
}

/* A db_max_bytes below what SQLite needs is refused, by the probe and at
 * open, naming the minimum (it failed creating the schema, its reason cut
 * off by the schema's text); the minimum itself works. */
static void test_db_cap_minimum(void)
{
	char path[PATH_CAP];
	struct pd_store_opts o;
	struct rec_buf b;
	pd_err e = {0};
	pd_store *s = NULL;

	pd_store_opts_init(&o);
	db_path(path, sizeof path, ++db_counter);
	o.path = path;
	o.max_db_bytes = 1;
	CHECK(pd_store_probe(&o, &e) == PD_E_ARG && strstr(e.msg, "minimum of 524288 (512k)"));
	CHECK(pd_store_open(&o, &s, &e) == PD_E_ARG && !s &&
	      strstr(e.msg, "db_max_bytes 1 is below the minimum of 524288"));
	CHECK(access(path, F_OK) != 0); /* nothing created */
	o.max_db_bytes = (512 << 10) - 1;
	CHECK(pd_store_open(&o, &s, &e) == PD_E_ARG && !s);
	o.max_db_bytes = 512 << 10;
	CHECK(pd_store_probe(&o, &e) == PD_OK);
	CHECK(pd_store_open(&o, &s, &e) == PD_OK && s);
	if (!s)
		return;
	CHECK(put_sync(s, make_rec(&b, "t", "small", 1, 1000)) == PD_OK);
	CHECK(get_seq(s, "t", "small") == 1);
	pd_store_close(s);
}

/* The probe of a PostgreSQL database nobody listens for: one connection
 * attempt, its libpq reason; a malformed URI is refused before. */
static void test_probe_unreachable(void)
{
	struct pd_store_opts o;
	pd_err e = {0};

	pd_store_opts_init(&o);
	o.path = "postgresql://pdelta@127.0.0.1:1/pdelta";
	CHECK(pd_store_probe(&o, &e) == PD_E_STORE && strstr(e.msg, "cannot connect to PostgreSQL") &&
	      strstr(e.msg, "port 1"));
	o.max_db_bytes = 1 << 20;
	CHECK(pd_store_probe(&o, &e) == PD_E_ARG && strstr(e.msg, "SQLite only"));
	o.path = "postgresql:pdelta";
	CHECK(pd_store_probe(&o, &e) == PD_E_ARG && strstr(e.msg, "not a PostgreSQL URI"));
}

static void test_backpressure(void)
{
	char path[PATH_CAP];
	struct pd_store_opts o;
	struct rec_buf b;
	struct done_count d;
	struct gate g;
	struct pd_store_stats st;
	pd_store *s;

	pd_store_opts_init(&o);
	o.max_queue = 4;
	o.max_queue_bytes = 12 << 10;
	s = open_fresh(&o, path, sizeof path);
	CHECK(s != NULL);
	if (!s)
		return;
	done_init(&d);
	hold_writer(s, &g); /* the held write counts as one */
	CHECK(pd_store_put_async(s, make_rec(&b, "t", "a", 1, 10), count_done, &d) == PD_OK);
	CHECK(pd_store_put_async(s, make_rec(&b, "t", "b", 1, 10), count_done, &d) == PD_OK);
	CHECK(pd_store_put_async(s, make_rec(&b, "t", "c", 1, 4000), count_done, &d) == PD_OK);
	/* Count bound. */
	CHECK(pd_store_put_async(s, make_rec(&b, "t", "d", 1, 10), count_done, &d) == PD_E_BUSY);
	CHECK(pd_store_delete_async(s, "t", "a", count_done, &d) == PD_E_BUSY);
	pd_store_stats(s, &st);
	CHECK(st.queue_len == 4 && st.busy_rejects == 2);
	gate_release(&g);
	pd_store_flush(s);
	CHECK(d.ok == 3);

	/* Byte bound, and a write that could never fit. */
	hold_writer(s, &g);
	CHECK(pd_store_put_async(s, make_rec(&b, "t", "a", 2, 4096), count_done, &d) == PD_OK);
	CHECK(pd_store_put_async(s, make_rec(&b, "t", "b", 2, 4096), count_done, &d) == PD_OK);
	CHECK(pd_store_put_async(s, make_rec(&b, "t", "c", 2, 4096), count_done, &d) == PD_E_BUSY);
	{
		static uint8_t huge[16 << 10];
		pd_store_row r = {.tenant = "t", .name = "h", .state = huge, .state_len = sizeof huge};
		CHECK(pd_store_put_async(s, &r, count_done, &d) == PD_E_LIMIT);
	}
	gate_release(&g);
	pd_store_flush(s);
	CHECK(d.ok == 5 && d.store_err == 0);
	pd_store_stats(s, &st);
	CHECK(st.busy_rejects == 3 && st.queue_len_peak == 4);
	pd_store_close(s);
}

/* A row over max_row_bytes fails alone; its batch neighbours commit. */
static void test_row_limit(void)
{
	char path[PATH_CAP];
	struct pd_store_opts o;
	struct rec_buf b;
	struct done_count d;
	struct gate g;
	pd_store *s;

	pd_store_opts_init(&o);
	o.max_row_bytes = 2048;
	s = open_fresh(&o, path, sizeof path);
	CHECK(s != NULL);
	if (!s)
		return;
	done_init(&d);
	hold_writer(s, &g);
	CHECK(pd_store_put_async(s, make_rec(&b, "t", "a", 1, 100), count_done, &d) == PD_OK);
	CHECK(pd_store_put_async(s, make_rec(&b, "t", "big", 1, 3000), count_done, &d) == PD_OK);
	CHECK(pd_store_put_async(s, make_rec(&b, "t", "c", 1, 100), count_done, &d) == PD_OK);
	gate_release(&g);
	pd_store_flush(s);
	CHECK(d.ok == 2 && d.other == 1);
	CHECK(get_seq(s, "t", "a") == 1 && get_seq(s, "t", "c") == 1);
	CHECK(pd_store_get(s, "t", "big", &b.r, NULL) == PD_E_NOTFOUND);
	pd_store_close(s);
}

/* Collects listed names as "tenant/name," into a string. */
struct listing {
	char out[512];
	int rows, stop_after;
	int blobs_null;
};

static int list_row(void *arg, const pd_store_row *r)
{
	struct listing *l = arg;
	size_t n = strlen(l->out);

	snprintf(l->out + n, sizeof l->out - n, "%s/%s,", r->tenant, r->name);
	l->rows++;
	if (r->state || r->last_delta || r->state_len != 64 || r->last_delta_len != 512)
		l->blobs_null = 0;
	return l->stop_after && l->rows >= l->stop_after;
}

static const char *list(pd_store *s, struct listing *l, const char *tenant, const char *prefix,
			enum pd_store_sort sort, size_t limit, int stop_after)
{
	memset(l, 0, sizeof *l);
	l->blobs_null = 1;
	l->stop_after = stop_after;
	if (pd_store_list(s, tenant, prefix, sort, limit, list_row, l, NULL))
		return "(error)";
	return l->out;
}

struct totals {
	char out[256];
};

static int total_row(void *arg, const char *tenant, uint64_t streams, uint64_t bytes)
{
	struct totals *t = arg;
	size_t n = strlen(t->out);

	snprintf(t->out + n, sizeof t->out - n, "%s:%llu:%llu,", tenant,
		 (unsigned long long)streams, (unsigned long long)bytes);
	return 0;
}

static void put_seen(pd_store *s, const char *tenant, const char *name, int64_t seen)
{
	struct rec_buf b;
	pd_store_row *r = make_rec(&b, tenant, name, 1, 64);

	r->last_seen_ms = seen;
	CHECK(pd_store_put_async(s, r, NULL, NULL) == PD_OK);
}

static void test_list_and_admin(void)
{
	char path[PATH_CAP];
	struct listing l;
	struct totals t = {{0}};
	struct done_count d;
	pd_store_row r = {0};
	uint64_t n;
	pd_store *s = open_fresh(NULL, path, sizeof path);

	CHECK(s != NULL);
	if (!s)
		return;
	put_seen(s, "a", "svc/x/2", 5000);
	put_seen(s, "a", "svc/x/1", 3000);
	put_seen(s, "a", "svc/y/1", 4000);
	put_seen(s, "a", "other", 1000);
	put_seen(s, "b", "svc/x/1", 6000);
	put_seen(s, "a", "\xff\xff", 2000);
	put_seen(s, "a", "\xff", 2500);
	pd_store_flush(s);

	CHECK(!strcmp(list(s, &l, "a", "svc/x/", PD_STORE_SORT_NAME, 0, 0), "a/svc/x/1,a/svc/x/2,"));
	CHECK(l.blobs_null);
	CHECK(!strcmp(list(s, &l, "a", "svc/", PD_STORE_SORT_LAST_SEEN, 0, 0),
		      "a/svc/x/2,a/svc/y/1,a/svc/x/1,"));
	CHECK(!strcmp(list(s, &l, NULL, "svc/x/1", PD_STORE_SORT_NAME, 0, 0),
		      "a/svc/x/1,b/svc/x/1,"));
	CHECK(!strcmp(list(s, &l, NULL, NULL, PD_STORE_SORT_LAST_SEEN, 3, 0),
		      "b/svc/x/1,a/svc/x/2,a/svc/y/1,"));
	CHECK(!strcmp(list(s, &l, "a", "", PD_STORE_SORT_NAME, 0, 2), "a/other,a/svc/x/1,"));
	CHECK(!strcmp(list(s, &l, "a", "\xff", PD_STORE_SORT_NAME, 0, 0), "a/\xff,a/\xff\xff,"));
	CHECK(!strcmp(list(s, &l, "c", NULL, PD_STORE_SORT_NAME, 0, 0), ""));
	CHECK(!strcmp(list(s, &l, "a", "svc/x/10", PD_STORE_SORT_NAME, 0, 0), ""));

	CHECK(pd_store_count_streams(s, "a", &n, NULL) == PD_OK && n == 6);
	CHECK(pd_store_count_streams(s, NULL, &n, NULL) == PD_OK && n == 7);
	CHECK(pd_store_count_streams(s, "zz", &n, NULL) == PD_OK && n == 0);
	CHECK(pd_store_tenant_totals(s, NULL, total_row, &t, NULL) == PD_OK);
	CHECK(!strcmp(t.out, "a:6:384,b:1:64,"));
	memset(&t, 0, sizeof t);
	CHECK(pd_store_tenant_totals(s, "b", total_row, &t, NULL) == PD_OK);
	CHECK(!strcmp(t.out, "b:1:64,"));

	/* Delete and reset report missing streams; reset keeps idempotency data. */
	done_init(&d);
	CHECK(pd_store_delete_async(s, "a", "other", count_done, &d) == PD_OK);
	CHECK(pd_store_delete_async(s, "a", "other", count_done, &d) == PD_OK);
	CHECK(pd_store_reset_async(s, "a", "svc/y/1", "admin", count_done, &d) == PD_OK);
	CHECK(pd_store_reset_async(s, "a", "missing", "admin", count_done, &d) == PD_OK);
	pd_store_flush(s);
	CHECK(d.ok == 2 && d.notfound == 2);
	CHECK(pd_store_get(s, "a", "other", &r, NULL) == PD_E_NOTFOUND);
	CHECK(pd_store_get(s, "a", "svc/y/1", &r, NULL) == PD_OK);
	CHECK(r.state_len == 0 && r.identities == 0 && r.state_bytes == 0);
	CHECK(r.resets == 1 && !strcmp(r.last_reset_reason, "admin") && r.version == 2);
	CHECK(r.last_seq == 1 && r.last_delta_len == 512 && pattern_ok(r.last_delta, 512, 2));
	CHECK(r.last_seen_ms == 4000);
	pd_store_row_free(&r);
	pd_store_close(s);
}

static void test_expire(void)
{
	char path[PATH_CAP], name[32];
	struct pd_store_stats st;
	uint64_t n = 99, left;
	int64_t now = now_ms();
	pd_store *s = open_fresh(NULL, path, sizeof path);

	CHECK(s != NULL);
	if (!s)
		return;
	put_seen(s, "t", "ancient", 1000);
	put_seen(s, "t", "old", now - 3600 * 1000);
	put_seen(s, "t", "fresh", 0);
	/* More than one expiry chunk. */
	for (int i = 0; i < 2500; i++) {
		snprintf(name, sizeof name, "bulk%d", i);
		put_seen(s, "u", name, 2000 + i);
	}
	pd_store_flush(s);
	CHECK(pd_store_expire(s, 1500, &n, NULL) == PD_OK && n == 1);
	CHECK(pd_store_expire(s, 1500, &n, NULL) == PD_OK && n == 0);
	CHECK(pd_store_expire(s, now - 60 * 1000, &n, NULL) == PD_OK && n == 2501);
	CHECK(pd_store_count_streams(s, NULL, &left, NULL) == PD_OK && left == 1);
	CHECK(get_seq(s, "t", "fresh") == 1);
	pd_store_stats(s, &st);
	CHECK(st.expired == 2502);
	pd_store_close(s);
}

static void test_compare_and_set(void)
{
	char path[PATH_CAP];
	struct rec_buf b;
	struct done_count d;
	struct pd_store_stats st;
	pd_store_row r = {0};
	pd_store *s = open_fresh(NULL, path, sizeof path);

	CHECK(s != NULL);
	if (!s)
		return;
	done_init(&d);
	CHECK(pd_store_put_if_async(s, make_rec(&b, "t", "c", 1, 10), 0, count_done, &d) == PD_OK);
	CHECK(pd_store_put_if_async(s, make_rec(&b, "t", "c", 9, 10), 0, count_done, &d) == PD_OK);
	CHECK(pd_store_put_if_async(s, make_rec(&b, "t", "c", 2, 10), 1, count_done, &d) == PD_OK);
	CHECK(pd_store_put_if_async(s, make_rec(&b, "t", "c", 9, 10), 1, count_done, &d) == PD_OK);
	CHECK(pd_store_put_if_async(s, make_rec(&b, "t", "n", 9, 10), 5, count_done, &d) == PD_OK);
	pd_store_flush(s);
	CHECK(d.ok == 2 && d.state == 3);
	CHECK(pd_store_get(s, "t", "c", &r, NULL) == PD_OK && r.last_seq == 2 && r.version == 2);
	CHECK(pd_store_get(s, "t", "n", &r, NULL) == PD_E_NOTFOUND);
	pd_store_stats(s, &st);
	CHECK(st.conflicts == 3 && st.rows_written == 2);
	pd_store_row_free(&r);
	pd_store_close(s);
}

struct flush_probe {
	pd_store *s;
	int rc;
};

static void flush_from_writer(void *arg, int rc, uint64_t latency_ns)
{
	struct flush_probe *f = arg;
	f->rc = pd_store_flush(f->s);
}

static void test_reopen_and_close(void)
{
	char path[PATH_CAP];
	struct rec_buf b;
	struct done_count d;
	struct flush_probe fp;
	struct stat sb;
	struct pd_store_opts o;
	pd_store *s = open_fresh(NULL, path, sizeof path);
	pd_err e = {0};
	sqlite3 *db;

	CHECK(s != NULL);
	if (!s)
		return;
	/* A completion may not flush (it would wait for itself). */
	fp = (struct flush_probe){.s = s, .rc = -1};
	CHECK(pd_store_put_async(s, make_rec(&b, "t", "x", 1, 10), flush_from_writer, &fp) == PD_OK);
	pd_store_flush(s);
	CHECK(fp.rc == PD_E_ARG);

	/* Close commits what is still queued and runs the completions. */
	done_init(&d);
	for (uint64_t seq = 2; seq <= 50; seq++)
		CHECK(pd_store_put_async(s, make_rec(&b, "t", "x", seq, 1000), count_done, &d) == PD_OK);
	pd_store_close(s);
	CHECK(d.ok == 49);
	CHECK(stat(path, &sb) == 0 && (sb.st_mode & 0777) == 0600);

	pd_store_opts_init(&o);
	o.path = path;
	CHECK(pd_store_open(&o, &s, &e) == PD_OK);
	if (s) {
		pd_store_row r = {0};
		CHECK(pd_store_get(s, "t", "x", &r, NULL) == PD_OK);
		CHECK(r.last_seq == 50 && pattern_ok(r.state, r.state_len, 50));
		pd_store_row_free(&r);
		pd_store_close(s);
	}

	/* Newer schema, foreign database and a bad path are refused. */
	CHECK(sqlite3_open(path, &db) == SQLITE_OK);
	sqlite3_exec(db, "PRAGMA user_version=99", NULL, NULL, NULL);
	sqlite3_close(db);
	CHECK(pd_store_open(&o, &s, &e) == PD_E_STATE && strstr(e.msg, "newer"));
	db_path(path, sizeof path, ++db_counter);
	CHECK(sqlite3_open(path, &db) == SQLITE_OK);
	sqlite3_exec(db, "CREATE TABLE t(x)", NULL, NULL, NULL);
	sqlite3_close(db);
	CHECK(pd_store_open(&o, &s, &e) == PD_E_STATE && strstr(e.msg, "not a pdelta"));
	o.path = "/nonexistent-dir/x.db";
	CHECK(pd_store_open(&o, &s, &e) == PD_E_STORE && s == NULL);
	/* PostgreSQL connection strings go to that backend: a server that is
	 * not there is a store error naming the cause. */
	CHECK(pd_store_is_pg("postgresql://db/pdelta") && pd_store_is_pg("postgres://x"));
	CHECK(pd_store_is_pg("host=/run/pg dbname=p") && pd_store_is_pg("dbname = p"));
	CHECK(!pd_store_is_pg("state.db") && !pd_store_is_pg("./host=x") &&
	      !pd_store_is_pg("/var/lib/pdelta/x=y.db") && !pd_store_is_pg("my state.db"));
	/* any key=value word, whatever the first key (libpq judges the keys) */
	CHECK(pd_store_is_pg("password=hunter2 host=127.0.0.1 port=5432 user=pdelta dbname=pdelta"));
	CHECK(pd_store_is_pg("connect_timeout=5 host=db") && pd_store_is_pg("hosts=x"));
	CHECK(pd_store_is_pg("postgresql:pdelta") && pd_store_is_pg("postgres:x"));
	o.path = "postgresql:pdelta";
	CHECK(pd_store_open(&o, &s, &e) == PD_E_ARG && s == NULL);
	CHECK(strstr(e.msg, "not a PostgreSQL URI") && strstr(e.msg, "postgresql://"));
	o.path = "postgres:user:hunter2@db";
	CHECK(pd_store_open(&o, &s, &e) == PD_E_ARG && !strstr(e.msg, "hunter2"));
	o.path = "password=hunter2 host=127.0.0.1 port=1 connect_timeout=2 dbname=p";
	CHECK(pd_store_open(&o, &s, &e) == PD_E_STORE && s == NULL);
	CHECK(strstr(e.msg, "cannot connect to PostgreSQL") && !strstr(e.msg, "hunter2"));
	o.path = "postgresql://127.0.0.1:1/pdelta?connect_timeout=2";
	CHECK(pd_store_open(&o, &s, &e) == PD_E_STORE && s == NULL);
	CHECK(strstr(e.msg, "cannot connect to PostgreSQL") != NULL);
}

/* Flips one byte of the kept response of tenant/name behind the store's back. */
static void flip_response_byte(const char *path, const char *tenant, const char *name)
{
	sqlite3 *db;
	char sql[256];

	CHECK(sqlite3_open(path, &db) == SQLITE_OK);
	snprintf(sql, sizeof sql,
		 "UPDATE streams SET last_delta = substr(last_delta, 1, 9) || "
		 "(CASE WHEN substr(last_delta, 10, 1) = x'00' THEN x'01' ELSE x'00' END) || "
		 "substr(last_delta, 11) WHERE tenant = '%s' AND name = '%s'",
		 tenant, name);
	CHECK(sqlite3_exec(db, sql, NULL, NULL, NULL) == SQLITE_OK && sqlite3_changes(db) == 1);
	sqlite3_close(db);
}

/* The kept response is checksummed by the put and checked by every read of
 * it: a flipped byte is PD_E_STATE (counted), never the bytes; reads of the
 * state alone still work; the next put heals the row. */
static void test_response_checksum(void)
{
	char path[PATH_CAP];
	struct rec_buf b;
	struct pd_store_stats st;
	pd_store_row r = {0};
	pd_err e = {0};
	pd_store *s = open_fresh(NULL, path, sizeof path);

	CHECK(s != NULL);
	if (!s)
		return;
	CHECK(put_sync(s, make_rec(&b, "t", "c", 7, 100)) == PD_OK);
	CHECK(pd_store_get_response(s, "t", "c", &r, &e) == PD_OK);
	CHECK(r.has_delta_crc && r.last_delta_crc == crc32(0, b.delta, sizeof b.delta));
	CHECK(pattern_ok(r.last_delta, r.last_delta_len, 8));

	flip_response_byte(path, "t", "c");
	CHECK(pd_store_get_response(s, "t", "c", &r, &e) == PD_E_STATE);
	CHECK(strstr(e.msg, "checksum") != NULL && strstr(e.msg, "t/c") != NULL);
	CHECK(pd_store_get(s, "t", "c", &r, &e) == PD_E_STATE);
	CHECK(pd_store_get_state(s, "t", "c", &r, &e) == PD_OK && r.last_seq == 7);
	pd_store_stats(s, &st);
	CHECK(st.responses_corrupt == 2 && st.read_errors == 0);

	CHECK(put_sync(s, make_rec(&b, "t", "c", 8, 100)) == PD_OK);
	CHECK(pd_store_get_response(s, "t", "c", &r, &e) == PD_OK && r.last_seq == 8);
	pd_store_row_free(&r);
	pd_store_close(s);
}

/* A schema-1 database (no last_delta_crc) is migrated in place: its rows stay
 * readable, their response unchecked (has_delta_crc 0), until a put writes a
 * checksum. */
static void test_migrate_schema1(void)
{
	static const char v1[] =
		"CREATE TABLE streams (id INTEGER PRIMARY KEY, tenant TEXT NOT NULL,"
		" name TEXT NOT NULL, version INTEGER NOT NULL, identities INTEGER NOT NULL,"
		" state_bytes INTEGER NOT NULL, last_seq INTEGER NOT NULL, last_hash BLOB NOT NULL,"
		" last_status INTEGER NOT NULL, last_reason TEXT NOT NULL,"
		" last_samples_in INTEGER NOT NULL, last_samples_out INTEGER NOT NULL,"
		" incarnation INTEGER NOT NULL, last_time_nanos INTEGER NOT NULL,"
		" created_ms INTEGER NOT NULL, last_seen_ms INTEGER NOT NULL,"
		" deltas_served INTEGER NOT NULL, resets INTEGER NOT NULL,"
		" last_reset_reason TEXT NOT NULL, state BLOB NOT NULL, last_delta BLOB NOT NULL,"
		" UNIQUE (tenant, name));"
		"CREATE INDEX streams_last_seen ON streams (last_seen_ms);"
		"INSERT INTO streams VALUES (1, 't', 'old', 3, 0, 0, 5, x'00', 1, 'first', 1, 1, 9,"
		" 0, 1, 1, 1, 0, '', x'', x'1f8b0800');"
		"PRAGMA application_id=1885621364; PRAGMA user_version=1;";
	char path[PATH_CAP];
	struct rec_buf b;
	pd_store_row r = {0};
	pd_err e = {0};
	pd_store *s;
	sqlite3 *db;
	int64_t ver = 0;
	sqlite3_stmt *q;

	db_path(path, sizeof path, ++db_counter);
	CHECK(sqlite3_open(path, &db) == SQLITE_OK);
	CHECK(sqlite3_exec(db, v1, NULL, NULL, NULL) == SQLITE_OK);
	sqlite3_close(db);
	s = th_store_open(NULL, path);
	CHECK(s != NULL);
	if (!s)
		return;
	CHECK(pd_store_get_response(s, "t", "old", &r, &e) == PD_OK);
	CHECK(r.last_seq == 5 && r.version == 3 && !r.has_delta_crc && r.last_delta_len == 4);
	CHECK(put_sync(s, make_rec(&b, "t", "old", 6, 10)) == PD_OK);
	CHECK(pd_store_get_response(s, "t", "old", &r, &e) == PD_OK);
	CHECK(r.last_seq == 6 && r.has_delta_crc);
	pd_store_row_free(&r);
	pd_store_close(s);

	CHECK(sqlite3_open(path, &db) == SQLITE_OK);
	CHECK(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &q, NULL) == SQLITE_OK);
	if (sqlite3_step(q) == SQLITE_ROW)
		ver = sqlite3_column_int64(q, 0);
	sqlite3_finalize(q);
	sqlite3_close(db);
	CHECK(ver == 2);
}

/* ---- PostgreSQL only ------------------------------------------------------------- */

/* SQL on one test's schema. */
static int pg_sql_in(int id, const char *stmt)
{
	char sql[512];

	snprintf(sql, sizeof sql, "SET search_path = pdt_%d; %s", id, stmt);
	return pg_sql(sql);
}

/* Reopen keeps the rows; a newer schema, a foreign table of our name and a
 * schema row of another application are refused with a clear error. */
static void test_pg_schema(void)
{
	char path[PATH_CAP], other[PATH_CAP];
	struct pd_store_opts o;
	struct rec_buf b;
	pd_err e = {0};
	pd_store *s = open_fresh(NULL, path, sizeof path);
	int id = db_counter, other_id;

	CHECK(s != NULL);
	if (!s)
		return;
	CHECK(put_sync(s, make_rec(&b, "t", "x", 5, 100)) == PD_OK);
	pd_store_close(s);
	pd_store_opts_init(&o);
	o.path = path;
	CHECK(pd_store_open(&o, &s, &e) == PD_OK);
	if (s) {
		CHECK(get_seq(s, "t", "x") == 5);
		CHECK(pd_store_integrity_check(s, &e) == PD_OK);
		pd_store_close(s);
	}
	CHECK(pg_sql_in(id, "UPDATE pdelta_schema SET version = 99"));
	CHECK(pd_store_open(&o, &s, &e) == PD_E_STATE && strstr(e.msg, "newer") && !s);
	CHECK(pg_sql_in(id, "UPDATE pdelta_schema SET application = 'other', version = 1"));
	CHECK(pd_store_open(&o, &s, &e) == PD_E_STATE && strstr(e.msg, "not a pdelta") && !s);

	db_path(other, sizeof other, other_id = ++db_counter);
	CHECK(pg_sql_in(other_id, "CREATE TABLE pdelta_streams (x int)"));
	o.path = other;
	CHECK(pd_store_open(&o, &s, &e) == PD_E_STATE && strstr(e.msg, "not a pdelta") && !s);
	o.path = path;
	CHECK(pg_sql_in(id, "UPDATE pdelta_schema SET application = 'pdelta', version = 0"));
	CHECK(pd_store_open(&o, &s, &e) == PD_E_STATE && !s &&
	      strstr(e.msg, "says version 0: not a valid schema version"));
	CHECK(pd_store_probe(&o, &e) == PD_E_STATE && strstr(e.msg, "version 0: not a valid"));
	CHECK(pg_sql_in(id, "UPDATE pdelta_schema SET version = 1"));
	o.max_db_bytes = 1 << 20;
	CHECK(pd_store_open(&o, &s, &e) == PD_E_ARG && strstr(e.msg, "SQLite only"));
}

/* A role that may not read the tables is refused with PostgreSQL's reason,
 * at open and by the probe; once it may, it opens. */
static void test_pg_no_select(void)
{
	char path[PATH_CAP], sql[256];
	struct pd_store_opts o;
	pd_err e = {0};
	pd_store *s = open_fresh(NULL, path, sizeof path);
	int id = db_counter;

	CHECK(s != NULL);
	pd_store_close(s);
	snprintf(sql, sizeof sql, "DROP ROLE IF EXISTS pdt_noread; CREATE ROLE pdt_noread LOGIN; "
		 "GRANT USAGE ON SCHEMA pdt_%d TO pdt_noread", id);
	CHECK(pg_sql(sql));
	pd_store_opts_init(&o);
	snprintf(path + strlen(path), sizeof path - strlen(path), " user=pdt_noread");
	o.path = path;
	s = NULL;
	CHECK(pd_store_open(&o, &s, &e) == PD_E_STORE && !s &&
	      strstr(e.msg, "permission denied for table pdelta_schema"));
	CHECK(!strstr(e.msg, "not a pdelta"));
	CHECK(pd_store_probe(&o, &e) == PD_E_STORE &&
	      strstr(e.msg, "permission denied for table pdelta_schema"));
	CHECK(pg_sql_in(id, "GRANT SELECT ON pdelta_schema TO pdt_noread"));
	CHECK(pd_store_open(&o, &s, &e) == PD_E_STORE && !s &&
	      strstr(e.msg, "permission denied for table pdelta_streams"));
	CHECK(pg_sql_in(id, "GRANT SELECT ON pdelta_streams TO pdt_noread"));
	CHECK(pd_store_probe(&o, &e) == PD_OK);
	CHECK(pd_store_open(&o, &s, &e) == PD_OK && s);
	pd_store_close(s);
	CHECK(pg_sql("DROP OWNED BY pdt_noread; DROP ROLE pdt_noread"));
}

/* The probe changes nothing: a database without the schema passes and still
 * has none; a newer schema is refused as at open. */
static void test_pg_probe(void)
{
	char path[PATH_CAP], sql[128];
	struct pd_store_opts o;
	pd_err e = {0};
	pd_store *s = NULL;
	int id;

	db_path(path, sizeof path, id = ++db_counter);
	pd_store_opts_init(&o);
	o.path = path;
	CHECK(pd_store_probe(&o, &e) == PD_OK);
	snprintf(sql, sizeof sql, "SELECT count(*) FROM pg_tables WHERE schemaname = 'pdt_%d'", id);
	CHECK(pg_int(sql) == 0);
	CHECK(pd_store_open(&o, &s, &e) == PD_OK && s);
	pd_store_close(s);
	CHECK(pg_int(sql) == 2);
	CHECK(pd_store_probe(&o, &e) == PD_OK);
	CHECK(pg_sql_in(id, "UPDATE pdelta_schema SET version = 99"));
	CHECK(pd_store_probe(&o, &e) == PD_E_STATE && strstr(e.msg, "newer"));
}

/* Both blobs are checksummed: a flipped byte of the kept response is
 * PD_E_STATE on read, and the integrity check finds either. */
static void test_pg_checksums(void)
{
	char path[PATH_CAP];
	struct rec_buf b;
	pd_store_row r = {0};
	pd_err e = {0};
	pd_store *s = open_fresh(NULL, path, sizeof path);
	int id = db_counter;

	CHECK(s != NULL);
	if (!s)
		return;
	CHECK(put_sync(s, make_rec(&b, "t", "c", 7, 100)) == PD_OK);
	CHECK(put_sync(s, make_rec(&b, "t", "d", 7, 100)) == PD_OK);
	CHECK(pd_store_integrity_check(s, &e) == PD_OK);
	CHECK(pd_store_get_response(s, "t", "c", &r, &e) == PD_OK && r.has_delta_crc);
	CHECK(pg_sql_in(id, "UPDATE pdelta_streams SET last_delta = set_byte(last_delta, 9, "
			    "get_byte(last_delta, 9) # 1) WHERE name = 'c'"));
	CHECK(pd_store_get_response(s, "t", "c", &r, &e) == PD_E_STATE && strstr(e.msg, "checksum"));
	CHECK(pd_store_integrity_check(s, &e) == PD_E_STATE && strstr(e.msg, "response of t/c"));
	CHECK(put_sync(s, make_rec(&b, "t", "c", 8, 100)) == PD_OK);
	CHECK(pd_store_integrity_check(s, &e) == PD_OK);
	CHECK(pg_sql_in(id, "UPDATE pdelta_streams SET state = set_byte(state, 3, "
			    "get_byte(state, 3) # 1) WHERE name = 'c'"));
	CHECK(pd_store_integrity_check(s, &e) == PD_E_STATE && strstr(e.msg, "state of t/c"));
	pd_store_row_free(&r);
	pd_store_close(s);
}

/* Two stores (two nodes) on one database: of two conditional puts on the
 * same version, exactly one applies, every round. */
static void test_pg_two_nodes(void)
{
	char path[PATH_CAP];
	struct pd_store_opts o;
	struct rec_buf b1, b2;
	struct done_count d1, d2;
	pd_store_row r = {0};
	pd_store *a = open_fresh(NULL, path, sizeof path), *c = NULL;
	pd_err e = {0};
	uint64_t version = 0;
	int rounds = 50, single = 1;

	pd_store_opts_init(&o);
	o.path = path;
	CHECK(a != NULL && pd_store_open(&o, &c, &e) == PD_OK);
	if (!a || !c)
		goto out;
	for (int i = 0; i < rounds; i++) {
		done_init(&d1);
		done_init(&d2);
		CHECK(pd_store_put_if_async(a, make_rec(&b1, "t", "race", 2 * (uint64_t)i + 1, 64),
					    version, count_done, &d1) == PD_OK);
		CHECK(pd_store_put_if_async(c, make_rec(&b2, "t", "race", 2 * (uint64_t)i + 2, 64),
					    version, count_done, &d2) == PD_OK);
		pd_store_flush(a);
		pd_store_flush(c);
		single &= d1.ok + d2.ok == 1 && d1.state + d2.state == 1;
		CHECK(pd_store_get(c, "t", "race", &r, NULL) == PD_OK);
		single &= r.version == version + 1 &&
			  r.last_seq == (d1.ok ? 2 * (uint64_t)i + 1 : 2 * (uint64_t)i + 2);
		version = r.version;
	}
	CHECK(single && version == (uint64_t)rounds);
out:
	pd_store_row_free(&r);
	pd_store_close(c);
	pd_store_close(a);
}

static void wait_reachable(pd_store *s, int want, int max_ms)
{
	struct pd_store_stats st;

	for (int t = 0; t < max_ms; t += 50) {
		pd_store_stats(s, &st);
		if ((st.unreachable == 0) == want)
			return;
		usleep(50 * 1000);
	}
}

/* The server drops our idle connections (as a restart does): the next write
 * reconnects at once and succeeds (nothing of its batch had run), reads
 * replace their pooled connection. When the reconnect itself fails (here a
 * newer schema), the write fails with PD_E_STORE, the store says unreachable
 * and its last error says why, also after idle reconnect attempts; once
 * that is fixed it reconnects by itself, nothing committed lost. */
static void test_pg_connection_loss(void)
{
	static const char kill_sql[] = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
				       "WHERE application_name = 'pdeltad' AND pid <> pg_backend_pid()";
	char path[PATH_CAP];
	struct rec_buf b;
	struct pd_store_stats st;
	pd_store_row r = {0};
	pd_store *s = open_fresh(NULL, path, sizeof path);
	int id = db_counter;

	CHECK(s != NULL);
	if (!s)
		return;
	CHECK(put_sync(s, make_rec(&b, "t", "k", 1, 100)) == PD_OK);
	CHECK(get_seq(s, "t", "k") == 1);
	CHECK(pg_sql(kill_sql));
	CHECK(put_sync(s, make_rec(&b, "t", "k", 2, 100)) == PD_OK);
	pd_store_stats(s, &st);
	CHECK(st.unreachable == 0 && st.writes_failed == 0);
	CHECK(get_seq(s, "t", "k") == 2);

	CHECK(pg_sql_in(id, "UPDATE pdelta_schema SET version = 99"));
	CHECK(pg_sql(kill_sql));
	CHECK(put_sync(s, make_rec(&b, "t", "k", 3, 100)) == PD_E_STORE);
	pd_store_stats(s, &st);
	CHECK(st.unreachable == 1 && st.writes_failed == 1);
	usleep(2500 * 1000); /* idle reconnect attempts */
	pd_store_stats(s, &st);
	CHECK(st.unreachable == 1 && strstr(st.last_error, "newer") != NULL);
	CHECK(put_sync(s, make_rec(&b, "t", "k", 3, 100)) == PD_E_STORE);
	pd_store_stats(s, &st);
	CHECK(strstr(st.last_error, "newer") != NULL);
	if (!strstr(st.last_error, "newer"))
		fprintf(stderr, "last error: %s\n", st.last_error);
	CHECK(pg_sql_in(id, "UPDATE pdelta_schema SET version = 1"));
	wait_reachable(s, 1, 8000);
	pd_store_stats(s, &st);
	CHECK(st.unreachable == 0);
	CHECK(put_sync(s, make_rec(&b, "t", "k", 3, 100)) == PD_OK);
	CHECK(pd_store_get(s, "t", "k", &r, NULL) == PD_OK && r.last_seq == 3 && r.version == 3);
	pd_store_row_free(&r);
	pd_store_close(s);
}

struct get_loop {
	pd_store *s;
	int n;
};

static void *get_loop_main(void *p)
{
	struct get_loop *g = p;

	for (int i = 0; i < g->n; i++)
		get_seq(g->s, "t", "stale");
	return NULL;
}

/* After a restart every pooled read connection is stale (the server closed
 * them; here pg_terminate_backend, as a restart does, on the readers only so
 * the writer's probe cannot mark the store down meanwhile): a read goes
 * through all of them to a new connection instead of failing. */
static void test_pg_stale_readers(void)
{
	static const char readers[] = "FROM pg_stat_activity WHERE application_name = 'pdeltad' "
				      "AND query LIKE 'SELECT version, tenant%'";
	char path[PATH_CAP], sql[256];
	struct pd_store_opts o;
	struct rec_buf b;
	struct get_loop g;
	pthread_t t[4];
	long long pooled = 0;
	pd_store *s;

	pd_store_opts_init(&o);
	o.max_readers = 4;
	s = open_fresh(&o, path, sizeof path);
	CHECK(s != NULL);
	if (!s)
		return;
	CHECK(put_sync(s, make_rec(&b, "t", "stale", 1, 100)) == PD_OK);
	snprintf(sql, sizeof sql, "SELECT count(*) %s", readers);
	g.s = s;
	g.n = 200;
	for (int round = 0; round < 20 && pooled < 3; round++) {
		for (int i = 0; i < 4; i++)
			pthread_create(&t[i], NULL, get_loop_main, &g);
		for (int i = 0; i < 4; i++)
			pthread_join(t[i], NULL);
		pooled = pg_int(sql);
	}
	printf("stale readers: %lld pooled read connections\n", pooled);
	CHECK(pooled >= 3);
	snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(pid) %s", readers);
	CHECK(pg_sql(sql));
	usleep(100 * 1000); /* the backends are gone */
	CHECK(get_seq(s, "t", "stale") == 1);
	CHECK(get_seq(s, "t", "stale") == 1);
	pd_store_close(s);
}

static void cleanup_dir(void)
{
	char p[128];

	for (int i = 1; i <= db_counter; i++) {
		if (pg_conninfo) {
			snprintf(p, sizeof p, "DROP SCHEMA IF EXISTS pdt_%d CASCADE", i);
			pg_sql(p);
			continue;
		}
		db_path(p, sizeof p, i);
		remove_db(p);
	}
	rmdir(tmp_dir);
}

int main(void)
{
	pg_conninfo = getenv("PDELTA_TEST_PG");
	if (pg_conninfo && !*pg_conninfo)
		pg_conninfo = NULL;
	printf("backend: %s\n", pg_conninfo ? "postgresql (PDELTA_TEST_PG)" : "sqlite");
	snprintf(tmp_dir, sizeof tmp_dir, "/tmp/pd_store_test.XXXXXX");
	if (!mkdtemp(tmp_dir)) {
		perror("mkdtemp");
		return 1;
	}
	test_round_trip();
	test_concurrent_readers();
	test_group_commit();
	test_injected_fault();
	test_backpressure();
	test_row_limit();
	test_list_and_admin();
	test_expire();
	test_compare_and_set();
	test_probe_unreachable();
	if (pg_conninfo) {
		test_pg_schema();
		test_pg_checksums();
		test_pg_two_nodes();
		test_pg_connection_loss();
		test_pg_no_select();
		test_pg_probe();
		test_pg_stale_readers();
	} else {
		test_db_cap_minimum();
		test_disk_full();
		test_reopen_and_close();
		test_response_checksum();
		test_migrate_schema1();
	}
	cleanup_dir();
	return TH_DONE();
}
