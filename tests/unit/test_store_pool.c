/* test_store_pool: the backends' read-connection pool (pd_store_pool in
 * server/pd_store.c) with fake connections: reuse, the cap (a get waits for a
 * connection to come back), broken connections and failed opens give their
 * slot back, free closes the idle ones. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "pd_clock.h"
#include "pd_store.h"
#include "tharness.h"

struct fake_conn {
	pd_store_conn link; /* first, as in the backends */
	int serial;
};

struct fake_be {
	int opened, closed;
	int fail_open; /* next opens fail with PD_E_STORE */
};

static int fake_open(void *be, pd_store_conn **out, pd_err *e)
{
	struct fake_be *b = be;
	struct fake_conn *c;

	if (b->fail_open)
		return pd_err_set(e, PD_E_STORE, "fake open refused");
	c = calloc(1, sizeof *c);
	if (!c)
		return pd_err_set(e, PD_E_NOMEM, "out of memory");
	c->serial = ++b->opened;
	*out = &c->link;
	return PD_OK;
}

/* The pool calls close without its lock, from the thread that puts back or
 * frees: here always the test's main thread. */
static struct fake_be *close_counter;

static void counting_close(pd_store_conn *c)
{
	close_counter->closed++;
	free(c);
}

static int serial_of(const pd_store_conn *c) { return ((const struct fake_conn *)c)->serial; }

struct getter {
	pd_store_pool *p;
	pd_store_conn *got;
	int rc;
};

static void *get_thread(void *arg)
{
	struct getter *g = arg;

	g->rc = pd_store_pool_get(g->p, &g->got, NULL);
	return NULL;
}

/* Joins t if it finishes within ms; 0 when it did. */
static int join_within(pthread_t t, int ms)
{
	struct timespec ts = pd_deadline(CLOCK_REALTIME, ms);

	return pthread_timedjoin_np(t, NULL, &ts);
}

static void test_reuse_and_broken(void)
{
	struct fake_be be = {0};
	pd_store_pool *p = pd_store_pool_new(2, fake_open, counting_close, &be);
	pd_store_conn *a, *b, *c;
	pd_err e = {0};

	close_counter = &be;
	CHECK(p != NULL);
	CHECK(pd_store_pool_get(p, &a, &e) == PD_OK && serial_of(a) == 1);
	CHECK(pd_store_pool_get(p, &b, &e) == PD_OK && serial_of(b) == 2);
	pd_store_pool_put(p, a, 0);
	CHECK(pd_store_pool_get(p, &c, &e) == PD_OK && c == a); /* the idle one, no open */
	CHECK(be.opened == 2);
	pd_store_pool_put(p, b, 1); /* broken: closed, its slot free */
	CHECK(be.closed == 1);
	CHECK(pd_store_pool_get(p, &b, &e) == PD_OK && serial_of(b) == 3);
	pd_store_pool_put(p, b, 0);
	pd_store_pool_put(p, c, 0);
	pd_store_pool_free(p);
	CHECK(be.closed == 3); /* free closed both idle ones */
	pd_store_pool_free(NULL);
}

/* A failed open gives its slot back: with max 1, the next get must not wait. */
static void test_failed_open(void)
{
	struct fake_be be = {.fail_open = 1};
	pd_store_pool *p = pd_store_pool_new(1, fake_open, counting_close, &be);
	struct getter g = {p, NULL, -1};
	static pd_store_conn stale;
	pd_store_conn *c = &stale; /* a failed get must clear it */
	pd_err e = {0};
	pthread_t t;

	close_counter = &be;
	CHECK(pd_store_pool_get(p, &c, &e) == PD_E_STORE && c == NULL);
	EXPECT(e.code == PD_E_STORE, "error not passed on: %d %s", e.code, e.msg);
	be.fail_open = 0;
	CHECK(pthread_create(&t, NULL, get_thread, &g) == 0);
	if (join_within(t, 2000) != 0) {
		EXPECT(0, "get after a failed open waits: the slot leaked");
		return; /* the thread still waits in the pool: leave both */
	}
	CHECK(g.rc == PD_OK && g.got && serial_of(g.got) == 1);
	pd_store_pool_put(p, g.got, 0);
	pd_store_pool_free(p);
	CHECK(be.closed == 1);
}

/* At the cap a get waits until a connection comes back, then gets that one. */
static void test_cap_waits(void)
{
	struct fake_be be = {0};
	pd_store_pool *p = pd_store_pool_new(1, fake_open, counting_close, &be);
	struct getter g = {p, NULL, -1};
	pd_store_conn *a;
	pthread_t t;

	close_counter = &be;
	CHECK(pd_store_pool_get(p, &a, NULL) == PD_OK);
	CHECK(pthread_create(&t, NULL, get_thread, &g) == 0);
	if (join_within(t, 100) != ETIMEDOUT) {
		EXPECT(0, "a get over the cap did not wait");
		return;
	}
	pd_store_pool_put(p, a, 0);
	if (join_within(t, 2000) != 0) {
		EXPECT(0, "the waiting get did not get the returned connection");
		return;
	}
	CHECK(g.rc == PD_OK && g.got == a);
	CHECK(be.opened == 1);
	pd_store_pool_put(p, g.got, 0);
	pd_store_pool_free(p);
}

int main(void)
{
	test_reuse_and_broken();
	test_failed_open();
	test_cap_waits();
	return TH_DONE();
}
