/*
 * Unit tests of pd_slowdelta: hand-built profiles through the slow path, its
 * comparison, and the engine checked against it; hostile inputs get errors.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "pd_buf.h"
#include "pd_engine.h"
#include "pb_build.h"
#include "pd_slowdelta.h"
#include "tharness.h"

/* ---- a tiny pprof writer ------------------------------------------------------ */

typedef struct tprof {
	pb out;
	const char *strs[64];
	int nstr;
	char keys[16][32]; /* label keys cut out of "key=value" */
	int nkeys;
} tprof;

static uint64_t S(tprof *t, const char *s)
{
	for (int i = 0; i < t->nstr; i++)
		if (strcmp(t->strs[i], s) == 0)
			return (uint64_t)i;
	t->strs[t->nstr] = s;
	return (uint64_t)t->nstr++;
}

static void value_type(tprof *t, uint32_t field, const char *type, const char *unit)
{
	pb m = {.n = 0};
	put_uint(&m, 1, S(t, type));
	put_uint(&m, 2, S(t, unit));
	put_msg(&t->out, field, &m);
}

static void function(tprof *t, uint64_t id, const char *name)
{
	pb m = {.n = 0};
	put_uint(&m, 1, id);
	put_uint(&m, 2, S(t, name));
	put_uint(&m, 4, S(t, "main.go"));
	put_msg(&t->out, 5, &m);
}

/* A location of one line (address 0: identity by function and line). */
static void location(tprof *t, uint64_t id, uint64_t fn, uint64_t line)
{
	pb m = {.n = 0}, l = {.n = 0};
	put_uint(&l, 1, fn);
	put_uint(&l, 2, line);
	put_uint(&m, 1, id);
	put_msg(&m, 4, &l);
	put_msg(&t->out, 4, &m);
}

/* A sample; labels as "key=value" strings (NULL-terminated list, or NULL). */
static void sample(tprof *t, const uint64_t *locs, int nlocs, const int64_t *vals, int nvals,
		   const char *const *labels)
{
	pb m = {.n = 0}, pk = {.n = 0};
	for (int i = 0; i < nlocs; i++)
		put_varint(&pk, locs[i]);
	put_msg(&m, 1, &pk);
	pk.n = 0;
	for (int i = 0; i < nvals; i++)
		put_varint(&pk, (uint64_t)vals[i]);
	put_msg(&m, 2, &pk);
	for (int i = 0; labels && labels[i]; i++) {
		pb l = {.n = 0};
		char *key = t->keys[t->nkeys++];
		const char *eq = strchr(labels[i], '=');
		snprintf(key, sizeof t->keys[0], "%.*s", (int)(eq - labels[i]), labels[i]);
		put_uint(&l, 1, S(t, key));
		put_uint(&l, 2, S(t, eq + 1));
		put_msg(&m, 3, &l);
	}
	put_msg(&t->out, 2, &m);
}

/* A heap profile head: 4 columns, functions f1..f3, locations 1..3 (line 10 * id). */
static void heap_head(tprof *t)
{
	memset(t, 0, sizeof *t);
	S(t, "");
	value_type(t, 1, "alloc_objects", "count");
	value_type(t, 1, "alloc_space", "bytes");
	value_type(t, 1, "inuse_objects", "count");
	value_type(t, 1, "inuse_space", "bytes");
	value_type(t, 11, "space", "bytes");
	function(t, 1, "main.f1");
	function(t, 2, "main.f2");
	function(t, 3, "main.f3");
	for (uint64_t i = 1; i <= 3; i++)
		location(t, i, i, 10 * i);
}

static void finish(tprof *t, int64_t time_nanos)
{
	for (int i = 0; i < t->nstr; i++)
		put_bytes(&t->out, 6, t->strs[i], strlen(t->strs[i]));
	put_uint(&t->out, 9, (uint64_t)time_nanos);
	put_uint(&t->out, 12, 524288);
}

static pd_slow_profile *dec(const tprof *t)
{
	pd_slow_profile *p = NULL;
	pd_err e = {0};
	if (pd_slow_decode(t->out.d, t->out.n, NULL, &p, &e))
		fprintf(stderr, "decode: %s\n", e.msg);
	return p;
}

static pd_slow_profile *delta(const pd_slow_profile *prev, const pd_slow_profile *cur,
			      const pd_req *req)
{
	pd_slow_profile *o = NULL;
	pd_req def;
	pd_err e = {0};
	if (!req) {
		pd_req_default(&def);
		req = &def;
	}
	if (pd_slow_delta(prev, cur, req, 0, &o, &e))
		fprintf(stderr, "delta: %s\n", e.msg);
	return o;
}

static int64_t val(const pd_slow_profile *p, const char *key, const char *col)
{
	int found;
	int64_t v = pd_slow_value(p, key, col, &found);
	return found ? v : -999;
}

#define K1 "main.f1||main.go:10"
#define K12 "main.f1||main.go:10;main.f2||main.go:20"
static const uint64_t L1[] = {1}, L12[] = {1, 2}, L3[] = {3};

/* ---- semantics ------------------------------------------------------------------- */

static void test_first_and_delta(void)
{
	tprof a, b;
	pd_slow_profile *pa, *pb_, *d;
	pd_req req;

	heap_head(&a);
	sample(&a, L1, 1, (const int64_t[]){1, 100, 1, 100}, 4, NULL);
	sample(&a, L12, 2, (const int64_t[]){2, 200, 0, 0}, 4, NULL);
	sample(&a, L3, 1, (const int64_t[]){0, 0, 0, 0}, 4, NULL);
	finish(&a, 1000);
	heap_head(&b);
	sample(&b, L1, 1, (const int64_t[]){3, 300, 1, 100}, 4, NULL);
	sample(&b, L12, 2, (const int64_t[]){2, 200, 0, 0}, 4, NULL); /* no change: dropped */
	sample(&b, L3, 1, (const int64_t[]){0, 0, 5, 500}, 4, NULL);   /* gauge only: kept */
	finish(&b, 3000);
	pa = dec(&a);
	pb_ = dec(&b);
	CHECK(pa && pb_);
	if (!pa || !pb_)
		return;
	CHECK(pd_slow_rows(pa) == 3);

	/* first profile: kept whole (zero rows dropped), or dropped by policy */
	d = delta(NULL, pa, NULL);
	CHECK(d && pd_slow_status(d) == PD_STATUS_BASELINE && pd_slow_reason(d) == PD_REASON_FIRST);
	CHECK(d && pd_slow_rows(d) == 2 && val(d, K1, "alloc_space/bytes") == 100);
	pd_slow_free(d);
	pd_req_default(&req);
	req.first_policy = PD_FIRST_DROP;
	d = delta(NULL, pa, &req);
	CHECK(d && pd_slow_rows(d) == 0 && pd_slow_reason(d) == PD_REASON_FIRST);
	pd_slow_free(d);

	/* delta: alloc_* subtracted, inuse_* passed through */
	d = delta(pa, pb_, NULL);
	CHECK(d && pd_slow_status(d) == PD_STATUS_DELTA);
	CHECK(d && pd_slow_rows(d) == 2);
	CHECK(d && val(d, K1, "alloc_objects/count") == 2 && val(d, K1, "alloc_space/bytes") == 200);
	CHECK(d && val(d, K1, "inuse_space/bytes") == 100);
	CHECK(d && val(d, K12, "alloc_space/bytes") == -999);
	CHECK(d && val(d, "main.f3||main.go:30", "inuse_space/bytes") == 500);
	CHECK(d && pd_slow_time_nanos(d) == 3000 && pd_slow_duration_nanos(d) == 2000);
	pd_slow_free(d);

	/* override: inuse_space as a delta column */
	pd_req_default(&req);
	req.overrides = (const pd_type_override[]){{"inuse_space", PD_POLICY_DELTA}};
	req.noverrides = 1;
	d = delta(pa, pb_, &req);
	CHECK(d && val(d, K1, "inuse_space/bytes") == 0 && val(d, K1, "inuse_objects/count") == 1);
	pd_slow_free(d);
	pd_slow_free(pa);
	pd_slow_free(pb_);
}

static void test_reset(void)
{
	tprof a, b, c;
	pd_slow_profile *pa, *pb_, *pc, *d;

	heap_head(&a);
	sample(&a, L1, 1, (const int64_t[]){5, 500, 1, 100}, 4, NULL);
	sample(&a, L12, 2, (const int64_t[]){1, 10, 1, 10}, 4, NULL);
	finish(&a, 1000);
	heap_head(&b); /* the producer restarted: one counter went back */
	sample(&b, L1, 1, (const int64_t[]){1, 100, 1, 100}, 4, NULL);
	sample(&b, L12, 2, (const int64_t[]){2, 20, 1, 10}, 4, NULL);
	finish(&b, 2000);
	heap_head(&c); /* counters fine but time went backwards */
	sample(&c, L1, 1, (const int64_t[]){6, 600, 1, 100}, 4, NULL);
	finish(&c, 500);
	pa = dec(&a);
	pb_ = dec(&b);
	pc = dec(&c);
	d = delta(pa, pb_, NULL);
	CHECK(d && pd_slow_status(d) == PD_STATUS_BASELINE && pd_slow_reason(d) == PD_REASON_RESET);
	CHECK(d && val(d, K1, "alloc_space/bytes") == 100 && val(d, K12, "alloc_space/bytes") == 20);
	CHECK(d && pd_slow_duration_nanos(d) == 0); /* the input's own */
	pd_slow_free(d);
	d = delta(pa, pc, NULL);
	CHECK(d && pd_slow_reason(d) == PD_REASON_RESET && strstr(pd_slow_why(d), "time"));
	CHECK(d && val(d, K1, "alloc_space/bytes") == 600);
	pd_slow_free(d);
	pd_slow_free(pa);
	pd_slow_free(pb_);
	pd_slow_free(pc);
}

static void test_identity(void)
{
	tprof a;
	pd_slow_profile *p;
	const char *const lab_ab[] = {"a=1", "b=2", NULL}, *const lab_ba[] = {"b=2", "a=1", NULL};
	const char *const lab_a3[] = {"a=3", NULL};

	heap_head(&a);
	location(&a, 4, 1, 10);  /* another id, same function and line as location 1 */
	location(&a, 5, 1, 11);  /* differs only in the line number */
	sample(&a, L1, 1, (const int64_t[]){1, 1, 1, 1}, 4, NULL);
	sample(&a, (const uint64_t[]){4}, 1, (const int64_t[]){2, 2, 2, 2}, 4, NULL);
	sample(&a, (const uint64_t[]){5}, 1, (const int64_t[]){4, 4, 4, 4}, 4, NULL);
	sample(&a, L12, 2, (const int64_t[]){1, 1, 1, 1}, 4, lab_ab);
	sample(&a, L12, 2, (const int64_t[]){10, 10, 10, 10}, 4, lab_ba); /* same labels, other order */
	sample(&a, L12, 2, (const int64_t[]){100, 100, 100, 100}, 4, lab_a3);
	finish(&a, 1000);
	p = dec(&a);
	CHECK(p != NULL);
	if (!p)
		return;
	CHECK(pd_slow_rows(p) == 4);
	CHECK(val(p, K1, "alloc_space/bytes") == 3);                  /* duplicates summed */
	CHECK(val(p, "main.f1||main.go:11", "alloc_space/bytes") == 4); /* line number alone */
	CHECK(val(p, K12 " {a:1:0:,b:2:0:}", "alloc_space/bytes") == 11);
	CHECK(val(p, K12 " {a:3:0:}", "alloc_space/bytes") == 100);
	pd_slow_free(p);
}

/* ---- comparison and the engine ------------------------------------------------------ */

static int sink(void *ctx, const uint8_t *p, size_t n) { return pd_buf_append(ctx, p, n, NULL); }

/* The engine's delta of cur after prev (NULL = first), decoded by the slow decoder. */
static pd_slow_profile *engine_delta(const tprof *prev, const tprof *cur, pd_result *res)
{
	pd_engine *g = pd_engine_new(NULL);
	pd_state *s0 = pd_state_new(), *s1 = pd_state_new();
	pd_slow_profile *o = NULL;
	pd_buf out;
	pd_req req;
	pd_err e = {0};

	pd_buf_init(&out, 0);
	pd_req_default(&req);
	if (prev && pd_engine_run(g, prev->out.d, prev->out.n, s0, s1, &req, sink, &out, res, &e))
		goto out;
	pd_buf_reset(&out);
	if (pd_engine_run(g, cur->out.d, cur->out.n, prev ? s1 : s0, prev ? s0 : s1, &req, sink, &out,
			  res, &e) ||
	    pd_slow_decode(out.data, out.len, NULL, &o, &e))
		fprintf(stderr, "engine: %s\n", e.msg);
out:
	pd_buf_free(&out);
	pd_engine_free(g);
	pd_state_free(s0);
	pd_state_free(s1);
	return o;
}

static void test_compare(void)
{
	tprof a, b, c;
	pd_slow_profile *pa, *pb_, *pc, *slow, *eng, *wrong;
	pd_slow_diff d[4];
	pd_result res;
	const char *const lab[] = {"x=y", NULL};

	heap_head(&a);
	sample(&a, L1, 1, (const int64_t[]){1, 100, 1, 100}, 4, NULL);
	sample(&a, L12, 2, (const int64_t[]){2, 200, 2, 200}, 4, lab);
	finish(&a, 1000);
	heap_head(&b);
	sample(&b, L12, 2, (const int64_t[]){3, 300, 2, 200}, 4, lab);
	sample(&b, L1, 1, (const int64_t[]){1, 150, 1, 100}, 4, NULL);
	sample(&b, L3, 1, (const int64_t[]){1, 1, 1, 1}, 4, NULL);
	finish(&b, 2000);
	heap_head(&c); /* b with one value off by one */
	sample(&c, L12, 2, (const int64_t[]){3, 300, 2, 200}, 4, lab);
	sample(&c, L1, 1, (const int64_t[]){1, 151, 1, 100}, 4, NULL);
	sample(&c, L3, 1, (const int64_t[]){1, 1, 1, 1}, 4, NULL);
	finish(&c, 2000);
	pa = dec(&a);
	pb_ = dec(&b);
	pc = dec(&c);
	slow = delta(pa, pb_, NULL);
	eng = engine_delta(&a, &b, &res);
	CHECK(slow && eng);
	if (!slow || !eng)
		return;
	CHECK(res.status == pd_slow_status(slow) && res.reason == pd_slow_reason(slow));
	CHECK(pd_slow_compare(slow, eng, d, 4) == 0);
	CHECK(pd_slow_compare(pb_, pb_, d, 4) == 0);
	pd_slow_free(eng);
	eng = engine_delta(NULL, &a, &res); /* first profile */
	pd_slow_free(slow);
	slow = delta(NULL, pa, NULL);
	CHECK(eng && slow && pd_slow_compare(slow, eng, d, 4) == 0);

	/* a wrong delta: one value, reported with its key and both values */
	wrong = delta(pa, pc, NULL);
	pd_slow_free(slow);
	slow = delta(pa, pb_, NULL);
	CHECK(wrong && pd_slow_compare(slow, wrong, d, 4) == 1);
	CHECK(strcmp(d[0].reason, "value") == 0 && strcmp(d[0].key, K1) == 0);
	CHECK(strcmp(d[0].col, "alloc_space/bytes") == 0 && d[0].a == 50 && d[0].b == 51);
	/* a delta against the wrong profile: keys on one side only, and metadata */
	CHECK(pd_slow_compare(slow, pa, d, 4) > 4);
	CHECK(strcmp(d[0].reason, "time_nanos") == 0 && d[0].a == 2000 && d[0].b == 1000);
	{
		char line[256];
		pd_slow_diff_format(&d[0], line, sizeof line);
		CHECK(strstr(line, "time_nanos") && strstr(line, "2000"));
	}
	pd_slow_free(wrong);
	pd_slow_free(slow);
	pd_slow_free(eng);
	pd_slow_free(pa);
	pd_slow_free(pb_);
	pd_slow_free(pc);
}

/* Samples and labels of 128 bytes or more (their length takes two bytes in
 * the output, which the engine writes in place): a 150-deep stack of
 * two-byte location ids and a 200-character label value, next to a short
 * sample; the engine's delta and first profile agree with the slow path. */
static void long_profile(tprof *t, int64_t v, int64_t time_nanos)
{
	static uint64_t deep[150];
	static char big[220];
	const char *const lab[] = {big, NULL};
	memset(t, 0, sizeof *t);
	S(t, "");
	value_type(t, 1, "alloc_objects", "count");
	value_type(t, 1, "alloc_space", "bytes");
	value_type(t, 11, "space", "bytes");
	function(t, 1, "main.f1");
	function(t, 2, "main.f2");
	function(t, 3, "main.f3");
	for (uint64_t i = 1; i <= 200; i++)
		location(t, i, 1 + i % 3, i);
	for (int i = 0; i < 150; i++)
		deep[i] = 200 - (uint64_t)i;
	memset(big, 'v', sizeof big - 1);
	memcpy(big, "k=", 2);
	big[sizeof big - 1] = 0;
	sample(t, deep, 150, (const int64_t[]){v, 1000 * v}, 2, lab);
	sample(t, L12, 2, (const int64_t[]){v + 1, 10 * v}, 2, NULL);
	finish(t, time_nanos);
}

static void test_long_samples(void)
{
	tprof a, b;
	pd_slow_profile *pa, *pb_, *slow, *eng;
	pd_slow_diff d[4];
	pd_result res;

	long_profile(&a, 3, 1000);
	long_profile(&b, 7, 2000);
	pa = dec(&a);
	pb_ = dec(&b);
	CHECK(pa && pb_);
	for (int first = 0; first < 2 && pa && pb_; first++) {
		slow = first ? delta(NULL, pb_, NULL) : delta(pa, pb_, NULL);
		eng = engine_delta(first ? NULL : &a, &b, &res);
		CHECK(slow && eng && res.samples_out == 2);
		CHECK(slow && eng && pd_slow_compare(slow, eng, d, 4) == 0);
		pd_slow_free(slow);
		pd_slow_free(eng);
	}
	pd_slow_free(pa);
	pd_slow_free(pb_);
}

/* The engine finds a counter going back after an identity whose delta is
 * all zero (so not kept, had it been a delta): the reset still outputs it. */
static void test_reset_after_zero(void)
{
	tprof a, b;
	pd_slow_profile *pa, *pb_, *slow, *eng;
	pd_slow_diff d[4];
	pd_result res;

	heap_head(&a);
	sample(&a, L1, 1, (const int64_t[]){5, 500, 0, 0}, 4, NULL);
	sample(&a, L12, 2, (const int64_t[]){2, 20, 1, 10}, 4, NULL);
	finish(&a, 1000);
	heap_head(&b);
	sample(&b, L1, 1, (const int64_t[]){5, 500, 0, 0}, 4, NULL);
	sample(&b, L12, 2, (const int64_t[]){1, 10, 1, 10}, 4, NULL);
	finish(&b, 2000);
	pa = dec(&a);
	pb_ = dec(&b);
	slow = delta(pa, pb_, NULL);
	eng = engine_delta(&a, &b, &res);
	CHECK(eng && res.reason == PD_REASON_RESET && res.samples_out == 2);
	CHECK(eng && slow && pd_slow_compare(slow, eng, d, 4) == 0);
	pd_slow_free(eng);
	pd_slow_free(slow);
	pd_slow_free(pa);
	pd_slow_free(pb_);
}

/* A sample on location loc with one label "k" (numeric, or string str),
 * its key field given first as junk when junk is set (the last one counts). */
static void label_sample(tprof *t, uint64_t loc, int64_t v, const char *junk, uint64_t num,
			 const char *str)
{
	pb m = {.n = 0}, pk = {.n = 0}, l = {.n = 0};
	put_varint(&pk, loc);
	put_msg(&m, 1, &pk);
	pk.n = 0;
	for (int64_t c = 0; c < 4; c++)
		put_varint(&pk, (uint64_t)(c < 2 ? v * (1 + 9 * c) : 0));
	put_msg(&m, 2, &pk);
	if (junk)
		put_uint(&l, 1, S(t, junk));
	put_uint(&l, 1, S(t, "k"));
	if (str)
		put_uint(&l, 2, S(t, str));
	else
		put_uint(&l, 3, num);
	put_msg(&m, 3, &l);
	put_msg(&t->out, 2, &m);
}

static void engine_matches_slow(const tprof *a, const tprof *b, uint32_t want_out)
{
	pd_slow_profile *pa = a ? dec(a) : NULL, *pb_ = dec(b), *slow, *eng;
	pd_slow_diff d[4];
	pd_result res;
	slow = delta(pa, pb_, NULL);
	eng = engine_delta(a, b, &res);
	CHECK(eng && res.samples_out == want_out);
	CHECK(eng && slow && pd_slow_compare(slow, eng, d, 4) == 0);
	pd_slow_free(eng);
	pd_slow_free(slow);
	pd_slow_free(pa);
	pd_slow_free(pb_);
}

/*
 * The mark pass recounts the kept samples until every location and string
 * the hash pass saw is reached (checked every 256 samples). Profiles of
 * more than 256 samples: the shortcut taken; a location and a string only
 * in the last sample, after labels that give their key twice (the recount
 * sees strings the hash pass does not: the reach test compares sets, not
 * sizes); the shortcut given up for the subtraction, with a location only
 * in dropped samples.
 */
static void test_mark_shortcut(void)
{
	static tprof a, b;

	heap_head(&a); /* 600 samples, one location: the recount stops early */
	for (int i = 0; i < 600; i++)
		label_sample(&a, 1 + (uint64_t)(i % 3), 1, NULL, (uint64_t)i, NULL);
	finish(&a, 1000);
	engine_matches_slow(NULL, &a, 600);

	heap_head(&a); /* location 2 and "XVALUE" only in sample 256 */
	for (int i = 0; i < 256; i++)
		label_sample(&a, 1, 1, i == 0 ? "junk_a" : i == 1 ? "junk_b" : i == 2 ? "junk_c" : NULL,
			     (uint64_t)i, NULL);
	label_sample(&a, 2, 1, NULL, 0, "XVALUE");
	finish(&a, 1000);
	engine_matches_slow(NULL, &a, 257);

	heap_head(&a); /* 400 samples grow, 20 on location 3 do not */
	heap_head(&b);
	for (int i = 0; i < 420; i++) {
		uint64_t loc = i < 400 ? 1 : 3;
		label_sample(&a, loc, 1, NULL, (uint64_t)i, NULL);
		label_sample(&b, loc, i < 400 ? 2 : 1, NULL, (uint64_t)i, NULL);
	}
	finish(&a, 1000);
	finish(&b, 2000);
	engine_matches_slow(&a, &b, 400);
}

/* ---- hostile input ------------------------------------------------------------------- */

static int refused(const void *p, size_t n, const pd_limits *lim, int code, const char *needle)
{
	pd_slow_profile *o = NULL;
	pd_err e = {0};
	int rc = pd_slow_decode(p, n, lim, &o, &e);
	if (rc != code || !strstr(e.msg, needle)) {
		fprintf(stderr, "wanted code %d '%s', got %d '%s'\n", code, needle, rc, e.msg);
		pd_slow_free(o);
		return 0;
	}
	return o == NULL;
}

static void test_hostile(void)
{
	tprof a;
	pd_limits lim;
	uint8_t big[64];
	pb m = {.n = 0};

	heap_head(&a);
	sample(&a, L12, 2, (const int64_t[]){1, 1, 1, 1}, 4, NULL);
	finish(&a, 1000);
	CHECK(refused(a.out.d, 0, NULL, PD_E_MALFORMED, "empty"));
	for (size_t cut = 1; cut < a.out.n; cut++) { /* cut anywhere: decoded, or a clear error */
		pd_slow_profile *o = NULL;
		pd_err e = {0};
		int rc = pd_slow_decode(a.out.d, cut, NULL, &o, &e);
		CHECK(rc == PD_OK ? o != NULL : o == NULL && rc == PD_E_MALFORMED && e.msg[0]);
		pd_slow_free(o);
	}
	CHECK(refused(a.out.d, a.out.n - 1, NULL, PD_E_MALFORMED, "malformed"));

	/* a giant declared length */
	big[0] = 2 << 3 | 2;
	memset(big + 1, 0xff, 9);
	big[10] = 0x01;
	CHECK(refused(big, 11, NULL, PD_E_MALFORMED, "malformed"));

	/* unknown location, bad string index, wrong value count */
	heap_head(&a);
	sample(&a, (const uint64_t[]){9}, 1, (const int64_t[]){1, 1, 1, 1}, 4, NULL);
	finish(&a, 1);
	CHECK(refused(a.out.d, a.out.n, NULL, PD_E_MALFORMED, "unknown location"));
	heap_head(&a);
	sample(&a, L1, 1, (const int64_t[]){1, 1, 1}, 3, NULL);
	finish(&a, 1);
	CHECK(refused(a.out.d, a.out.n, NULL, PD_E_MALFORMED, "3 values, expected 4"));
	heap_head(&a);
	put_uint(&m, 1, 7);
	put_uint(&m, 2, 999); /* function name: no such string */
	put_msg(&a.out, 5, &m);
	finish(&a, 1);
	CHECK(refused(a.out.d, a.out.n, NULL, PD_E_MALFORMED, "function"));
	heap_head(&a);
	location(&a, 1, 1, 1); /* duplicate location id */
	finish(&a, 1);
	CHECK(refused(a.out.d, a.out.n, NULL, PD_E_MALFORMED, "duplicate location id"));

	/* a small input whose frames would render to 80 MB: over the text budget */
	{
		static char name[40001];
		pb loc = {.n = 0}, line = {.n = 0};
		memset(name, 'n', sizeof name - 1);
		heap_head(&a);
		function(&a, 9, name);
		put_uint(&line, 1, 9);
		put_uint(&loc, 1, 9);
		for (int i = 0; i < 2000; i++)
			put_msg(&loc, 4, &line);
		put_msg(&a.out, 4, &loc);
		finish(&a, 1);
		CHECK(a.out.n < 60000);
		CHECK(refused(a.out.d, a.out.n, NULL, PD_E_LIMIT, "slow path's rendered frames"));
	}

	/* limits: depth, samples, and a gzip bomb against max_inflated */
	heap_head(&a);
	sample(&a, (const uint64_t[]){1, 2, 3, 1, 2}, 5, (const int64_t[]){1, 1, 1, 1}, 4, NULL);
	sample(&a, L1, 1, (const int64_t[]){1, 1, 1, 1}, 4, NULL);
	finish(&a, 1);
	pd_limits_default(&lim);
	lim.max_depth = 4;
	CHECK(refused(a.out.d, a.out.n, &lim, PD_E_LIMIT, "5 locations"));
	pd_limits_default(&lim);
	lim.max_samples = 1;
	CHECK(refused(a.out.d, a.out.n, &lim, PD_E_LIMIT, "samples"));
	{
		size_t zn = 1 << 20, rn = 8 << 20;
		uint8_t *raw = calloc(1, rn), *z = malloc(zn);
		z_stream zs;
		memset(&zs, 0, sizeof zs);
		deflateInit2(&zs, 9, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY);
		zs.next_in = raw;
		zs.avail_in = (uInt)rn;
		zs.next_out = z;
		zs.avail_out = (uInt)zn;
		deflate(&zs, Z_FINISH);
		pd_limits_default(&lim);
		lim.max_inflated = 1 << 20;
		CHECK(refused(z, zs.total_out, &lim, PD_E_LIMIT, "inflated"));
		CHECK(refused(z, zs.total_out / 2, NULL, PD_E_MALFORMED, "truncated gzip"));
		deflateEnd(&zs);
		free(raw);
		free(z);
	}
}

/* pd_slow_encode: the delta written over cur decodes back to the same delta
 * (duplicate samples of cur written once, with the summed delta); the
 * verifier agrees with an honest answer and not with a wrong one. */
static void test_encode_verify(void)
{
	tprof a, b;
	pd_slow_profile *pa, *pb_, *d, *back = NULL;
	pd_slow_verdict v;
	uint8_t *raw = NULL;
	size_t n = 0;
	pd_req req;
	pd_err e = {0};

	heap_head(&a);
	sample(&a, L1, 1, (const int64_t[]){1, 100, 1, 100}, 4, NULL);
	sample(&a, L12, 2, (const int64_t[]){2, 200, 0, 0}, 4, NULL);
	finish(&a, 1000);
	heap_head(&b);
	sample(&b, L1, 1, (const int64_t[]){2, 200, 1, 100}, 4, NULL);
	sample(&b, L1, 1, (const int64_t[]){2, 200, 0, 0}, 4, NULL); /* a duplicate: summed */
	sample(&b, L12, 2, (const int64_t[]){2, 200, 0, 0}, 4, NULL); /* unchanged: dropped */
	sample(&b, L3, 1, (const int64_t[]){7, 700, 0, 0}, 4, NULL);  /* new */
	finish(&b, 3000);
	pa = dec(&a);
	pb_ = dec(&b);
	d = pa && pb_ ? delta(pa, pb_, NULL) : NULL;
	CHECK(d != NULL);
	if (!d)
		goto out;
	CHECK(pd_slow_encode(b.out.d, b.out.n, NULL, d, &raw, &n, &e) == PD_OK);
	CHECK(raw && pd_slow_decode(raw, n, NULL, &back, &e) == PD_OK);
	CHECK(back && pd_slow_compare(back, d, NULL, 0) == 0);
	CHECK(back && pd_slow_rows(back) == 2 && val(back, K1, "alloc_objects/count") == 3);
	CHECK(back && val(back, K1, "inuse_space/bytes") == 100 && val(back, K12, "alloc_space/bytes") == -999);
	CHECK(back && pd_slow_duration_nanos(back) == 2000 && pd_slow_time_nanos(back) == 3000);

	pd_req_default(&req);
	memset(&v, 0, sizeof v);
	CHECK(pd_slow_verify(a.out.d, a.out.n, b.out.d, b.out.n, raw, n, &req, 0, PD_STATUS_DELTA,
			     PD_REASON_NONE, NULL, &v) == 0);
	pd_slow_verdict_free(&v);
	memset(&v, 0, sizeof v); /* the right delta, but called a BASELINE */
	CHECK(pd_slow_verify(a.out.d, a.out.n, b.out.d, b.out.n, raw, n, &req, 0, PD_STATUS_BASELINE,
			     PD_REASON_RESET, NULL, &v) == 1);
	CHECK(v.broken && strcmp(v.broken, "status") == 0 && v.n == 0);
	pd_slow_verdict_free(&v);
	memset(&v, 0, sizeof v); /* cur itself as the answer: values differ */
	CHECK(pd_slow_verify(a.out.d, a.out.n, b.out.d, b.out.n, b.out.d, b.out.n, &req, 0,
			     PD_STATUS_DELTA, PD_REASON_NONE, NULL, &v) == 1);
	CHECK(v.n > 0 && !v.broken);
	pd_slow_verdict_free(&v);
	memset(&v, 0, sizeof v); /* garbage as the answer */
	CHECK(pd_slow_verify(a.out.d, a.out.n, b.out.d, b.out.n, "\x08", 1, &req, 0, PD_STATUS_DELTA,
			     PD_REASON_NONE, NULL, &v) == 1);
	CHECK(v.broken && strcmp(v.broken, "output") == 0);
	pd_slow_verdict_free(&v);
out:
	free(raw);
	pd_slow_free(back);
	pd_slow_free(d);
	pd_slow_free(pa);
	pd_slow_free(pb_);
}

int main(void)
{
	test_first_and_delta();
	test_reset();
	test_identity();
	test_compare();
	test_long_samples();
	test_reset_after_zero();
	test_mark_shortcut();
	test_hostile();
	test_encode_verify();
	return TH_DONE();
}
