/*
 * test_engine: unit tests of the delta engine on hand-built profiles.
 *
 * Profiles are built here with a tiny protobuf writer so that each case
 * (packed vs unpacked fields, label order, duplicates, resets, limits,
 * truncation) is explicit. Outputs are decoded with a separate minimal
 * reader below, not with the engine's own index.
 */
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "pd_engine.h"
#include "pd_inspect.h"
#include "pd_pb.h"
#include "pb_build.h"
#include "tharness.h"

/* ---- a tiny protobuf builder ---------------------------------------------- */
static void put_str(pb *b, const char *s) { put_bytes(b, 6, s, strlen(s)); }

/* strings: 0 "", 1 alloc_space, 2 bytes, 3 inuse_space, 4 main, 5 f, 6 g,
 * 7 file.go, 8 lbl, 9 a, 10 b, 11 key2, 12 space */
static const char *const STRS[] = {"",  "alloc_space", "bytes", "inuse_space", "main", "f", "g",
				   "file.go", "lbl", "a", "b", "key2", "space"};

typedef struct smp {
	int nloc;
	uint64_t loc[4];
	int64_t v[2];
	int nlab;
	uint64_t lab[3][2]; /* key, str */
	int packed;
} smp;

static int dup_types; /* both sample types named alloc_space/bytes (malformed) */

static void build(pb *out, const smp *s, int ns, int64_t time_nanos, int swap_types, int renumber)
{
	pb m;
	memset(out, 0, sizeof *out);
	for (int t = 0; t < 2; t++) { /* sample types */
		int which = swap_types ? 1 - t : t;
		memset(&m, 0, sizeof m);
		put_uint(&m, 1, which == 0 || dup_types ? 1 : 3);
		put_uint(&m, 2, 2);
		put_msg(out, 1, &m);
	}
	for (int i = 0; i < ns; i++) {
		memset(&m, 0, sizeof m);
		if (s[i].packed) {
			pb ids;
			memset(&ids, 0, sizeof ids);
			for (int k = 0; k < s[i].nloc; k++)
				put_varint(&ids, s[i].loc[k] + (uint64_t)renumber);
			put_key(&m, 1, 2);
			put_varint(&m, ids.n);
			memcpy(m.d + m.n, ids.d, ids.n);
			m.n += ids.n;
		} else {
			for (int k = 0; k < s[i].nloc; k++)
				put_uint(&m, 1, s[i].loc[k] + (uint64_t)renumber);
		}
		for (int t = 0; t < 2; t++)
			put_uint(&m, 2, (uint64_t)s[i].v[swap_types ? 1 - t : t]);
		for (int l = 0; l < s[i].nlab; l++) {
			pb lb;
			memset(&lb, 0, sizeof lb);
			put_uint(&lb, 1, s[i].lab[l][0]);
			put_uint(&lb, 2, s[i].lab[l][1]);
			put_msg(&m, 3, &lb);
		}
		put_msg(out, 2, &m);
	}
	for (uint64_t loc = 1; loc <= 3; loc++) { /* locations 1..3 -> functions 1..3 */
		pb line;
		memset(&m, 0, sizeof m);
		memset(&line, 0, sizeof line);
		put_uint(&m, 1, loc + (uint64_t)renumber);
		put_uint(&m, 3, 0x1000 * loc);
		put_uint(&line, 1, loc + 10);
		put_uint(&line, 2, 42);
		put_msg(&m, 4, &line);
		put_msg(out, 4, &m);
	}
	for (uint64_t f = 1; f <= 3; f++) {
		memset(&m, 0, sizeof m);
		put_uint(&m, 1, f + 10);
		put_uint(&m, 2, 3 + f);
		put_uint(&m, 4, 7);
		put_msg(out, 5, &m);
	}
	for (size_t i = 0; i < sizeof STRS / sizeof STRS[0]; i++)
		put_str(out, STRS[i]);
	put_uint(out, 9, (uint64_t)time_nanos);
	memset(&m, 0, sizeof m);
	put_uint(&m, 1, 12);
	put_uint(&m, 2, 2);
	put_msg(out, 11, &m);
	put_uint(out, 12, 512);
}

/* ---- an independent reader of outputs: sums values per stack+labels ------ */
static int rd_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
	int s = 0;
	*v = 0;
	while (*p < end && s < 64) {
		uint8_t b = *(*p)++;
		*v |= (uint64_t)(b & 0x7f) << s;
		if (b < 0x80)
			return 0;
		s += 7;
	}
	return -1;
}

typedef struct outsum {
	int nsamples;
	int64_t total[2];
	int64_t time_nanos, duration;
} outsum;

static void summarize(const uint8_t *d, size_t n, outsum *o)
{
	const uint8_t *p = d, *end = d + n;
	memset(o, 0, sizeof *o);
	while (p < end) {
		uint64_t k, v, len;
		if (rd_varint(&p, end, &k))
			return;
		if ((k & 7) == 0) {
			rd_varint(&p, end, &v);
			if (k >> 3 == 9)
				o->time_nanos = (int64_t)v;
			if (k >> 3 == 10)
				o->duration = (int64_t)v;
			continue;
		}
		rd_varint(&p, end, &len);
		if (k >> 3 == 2) {
			const uint8_t *q = p, *qe = p + len;
			o->nsamples++;
			while (q < qe) {
				uint64_t sk, sl;
				rd_varint(&q, qe, &sk);
				if ((sk & 7) == 0) {
					rd_varint(&q, qe, &sl);
					continue;
				}
				rd_varint(&q, qe, &sl);
				if (sk >> 3 == 2) {
					const uint8_t *vq = q;
					for (int t = 0; t < 2 && vq < q + sl; t++) {
						uint64_t x;
						rd_varint(&vq, q + sl, &x);
						o->total[t] += (int64_t)x;
					}
				}
				q += sl;
			}
		}
		p += len;
	}
}

static int buf_sink(void *ctx, const uint8_t *p, size_t n)
{
	return pd_buf_append(ctx, p, n, NULL);
}

static int count_sink(void *ctx, const uint8_t *p, size_t n)
{
	(void)p;
	*(size_t *)ctx += n;
	return 0;
}

static pd_engine *eng;
static pd_req req;

static int run(const pb *in, const pd_state *prev, pd_state *next, pd_buf *out, pd_result *r)
{
	pd_err e;
	pd_buf_reset(out);
	return pd_engine_run(eng, in->d, in->n, prev, next, &req, buf_sink, out, r, &e);
}

static void test_basic_delta(void)
{
	static pb p0, p1;
	smp a[] = {{2, {1, 2}, {100, 5}, 0, {{0}}, 1}, {1, {3}, {50, 0}, 0, {{0}}, 1}};
	smp b[] = {{2, {1, 2}, {130, 7}, 0, {{0}}, 1}, {1, {3}, {50, 0}, 0, {{0}}, 1},
		   {1, {2}, {10, 1}, 0, {{0}}, 1}};
	pd_state *s0 = pd_state_new(), *s1 = pd_state_new(), *s2 = pd_state_new();
	pd_buf out;
	pd_result r;
	outsum o;

	pd_buf_init(&out, 0);
	build(&p0, a, 2, 1000, 0, 0);
	build(&p1, b, 3, 3000, 0, 0);
	CHECK(run(&p0, s0, s1, &out, &r) == PD_OK);
	CHECK(r.status == PD_STATUS_BASELINE && r.reason == PD_REASON_FIRST);
	summarize(out.data, out.len, &o);
	CHECK(o.nsamples == 2 && o.total[0] == 150 && o.total[1] == 5);
	CHECK(run(&p1, s1, s2, &out, &r) == PD_OK);
	CHECK(r.status == PD_STATUS_DELTA);
	summarize(out.data, out.len, &o);
	/* alloc_space: 30 + 0 (dropped? no: inuse 0 and delta 0 -> dropped) + 10 */
	CHECK(o.nsamples == 2);
	CHECK(o.total[0] == 40);
	CHECK(o.total[1] == 8); /* inuse_space is a gauge: 7 + 1 */
	CHECK(o.time_nanos == 3000 && o.duration == 2000);
	CHECK(pd_state_identities(s2) == 3);
	pd_buf_free(&out);
	pd_state_free(s0);
	pd_state_free(s1);
	pd_state_free(s2);
}

/* Samples listed in another order than in the previous profile: new ones
 * prepended (as Go does), a run reordered, one gone. The diff looks up each
 * identity first where the last match suggests; every path must give the
 * same deltas, and a counter going back in the reordered part is a reset. */
static void test_sample_order(void)
{
	static pb p0, p1, p2;
	smp a[6] = {{1, {1}, {100, 1}, 0, {{0}}, 1},	   {1, {2}, {200, 1}, 0, {{0}}, 1},
		    {1, {3}, {300, 1}, 0, {{0}}, 1},	   {2, {1, 2}, {400, 1}, 0, {{0}}, 1},
		    {2, {2, 3}, {500, 1}, 0, {{0}}, 1}, {3, {1, 2, 3}, {600, 1}, 0, {{0}}, 1}};
	smp b[7], c[7];
	pd_state *s0 = pd_state_new(), *s1 = pd_state_new(), *s2 = pd_state_new();
	pd_buf out;
	pd_result r;
	outsum o;
	/* b: new, a0, a1, a2 (same run), a5, a4 (reordered), a3 gone, then a new tail */
	int order[5] = {0, 1, 2, 5, 4};

	memset(b, 0, sizeof b);
	b[0] = (smp){2, {3, 1}, {7, 0}, 0, {{0}}, 1};
	for (int i = 0; i < 5; i++) {
		b[i + 1] = a[order[i]];
		b[i + 1].v[0] += order[i] + 1; /* delta of a[k] is k + 1 */
	}
	b[6] = (smp){2, {3, 3}, {9, 2}, 0, {{0}}, 1};
	pd_buf_init(&out, 0);
	build(&p0, a, 6, 1000, 0, 0);
	build(&p1, b, 7, 2000, 0, 0);
	CHECK(run(&p0, s0, s1, &out, &r) == PD_OK);
	CHECK(run(&p1, s1, s2, &out, &r) == PD_OK);
	CHECK(r.status == PD_STATUS_DELTA);
	summarize(out.data, out.len, &o);
	CHECK(o.nsamples == 7);
	CHECK(o.total[0] == 7 + 1 + 2 + 3 + 6 + 5 + 9);
	CHECK(o.total[1] == 5 + 2);

	/* the same, but a[4] (reordered) went back: a reset, the profile as is */
	memcpy(c, b, sizeof c);
	c[5].v[0] = 499;
	build(&p2, c, 7, 2000, 0, 0);
	CHECK(run(&p2, s1, s2, &out, &r) == PD_OK);
	CHECK(r.status == PD_STATUS_BASELINE && r.reason == PD_REASON_RESET);
	summarize(out.data, out.len, &o);
	CHECK(o.total[0] == 7 + 101 + 202 + 303 + 606 + 499 + 9);
	pd_buf_free(&out);
	pd_state_free(s0);
	pd_state_free(s1);
	pd_state_free(s2);
}

/* Packed vs unpacked, label order, renumbered ids, swapped sample types and
 * split duplicates must all give the same identities and deltas. */
static void test_identity_invariance(void)
{
	static pb p0, p1, p2;
	smp a[] = {{3, {1, 2, 3}, {100, 5}, 2, {{8, 9}, {11, 10}}, 1}};
	smp b[] = {{3, {1, 2, 3}, {60, 3}, 2, {{11, 10}, {8, 9}}, 0},
		   {3, {1, 2, 3}, {70, 4}, 2, {{8, 9}, {11, 10}}, 0}};
	smp c[] = {{3, {1, 2, 3}, {200, 6}, 2, {{8, 9}, {11, 10}}, 1}};
	pd_state *s0 = pd_state_new(), *s1 = pd_state_new(), *s2 = pd_state_new();
	pd_buf out;
	pd_result r;
	outsum o;

	pd_buf_init(&out, 0);
	build(&p0, a, 1, 1000, 0, 0);
	build(&p1, b, 2, 2000, 1, 100); /* types swapped, ids +100, unpacked */
	CHECK(run(&p0, s0, s1, &out, &r) == PD_OK);
	CHECK(run(&p1, s1, s2, &out, &r) == PD_OK);
	CHECK(r.status == PD_STATUS_DELTA);
	CHECK(r.samples_in == 2 && r.samples_unique == 1 && r.samples_out == 1);
	summarize(out.data, out.len, &o);
	/* swapped columns: column 0 of the output is inuse_space (gauge 7),
	 * column 1 is alloc_space (130 - 100 = 30). */
	CHECK(o.nsamples == 1 && o.total[0] == 7 && o.total[1] == 30);
	/* packed ids 127, 128, 129: one byte, then two (the hash pass's one-byte
	 * loop hands the rest of the field to the 1-2 byte decoder) */
	build(&p2, c, 1, 3000, 0, 126);
	CHECK(run(&p2, s2, s1, &out, &r) == PD_OK);
	CHECK(r.status == PD_STATUS_DELTA);
	CHECK(r.samples_in == 1 && r.samples_unique == 1 && r.samples_out == 1);
	summarize(out.data, out.len, &o);
	CHECK(o.nsamples == 1 && o.total[0] == 70 && o.total[1] == 6);
	pd_buf_free(&out);
	pd_state_free(s0);
	pd_state_free(s1);
	pd_state_free(s2);
}

static void test_resets(void)
{
	static pb p0, p1;
	smp a[] = {{1, {1}, {100, 5}, 0, {{0}}, 1}, {1, {2}, {100, 5}, 0, {{0}}, 1}};
	smp b[] = {{1, {1}, {150, 5}, 0, {{0}}, 1}, {1, {2}, {90, 5}, 0, {{0}}, 1}};
	pd_state *s0 = pd_state_new(), *s1 = pd_state_new(), *s2 = pd_state_new();
	pd_buf out;
	pd_result r;
	outsum o;

	pd_buf_init(&out, 0);
	build(&p0, a, 2, 1000, 0, 0);
	build(&p1, b, 2, 2000, 0, 0);
	CHECK(run(&p0, s0, s1, &out, &r) == PD_OK);
	CHECK(run(&p1, s1, s2, &out, &r) == PD_OK);
	CHECK(r.status == PD_STATUS_BASELINE && r.reason == PD_REASON_RESET);
	summarize(out.data, out.len, &o);
	CHECK(o.total[0] == 240); /* the current profile as is, never negative */
	/* time going backwards */
	build(&p1, a, 2, 500, 0, 0);
	CHECK(run(&p1, s1, s2, &out, &r) == PD_OK);
	CHECK(r.reason == PD_REASON_RESET);
	/* incarnation change */
	req.incarnation = 7;
	build(&p1, a, 2, 3000, 0, 0);
	CHECK(run(&p1, s1, s2, &out, &r) == PD_OK); /* s1 has no incarnation: delta */
	CHECK(r.status == PD_STATUS_DELTA);
	req.incarnation = 8;
	CHECK(run(&p1, s2, s0, &out, &r) == PD_OK);
	CHECK(r.reason == PD_REASON_RESET);
	req.incarnation = 0;
	/* first-profile drop policy */
	pd_state_clear(s0);
	req.first_policy = PD_FIRST_DROP;
	CHECK(run(&p0, s0, s1, &out, &r) == PD_OK);
	summarize(out.data, out.len, &o);
	CHECK(r.reason == PD_REASON_FIRST && o.nsamples == 0 && pd_state_identities(s1) == 2);
	req.first_policy = PD_FIRST_KEEP;
	/* per-type override: alloc_space as gauge -> passes through */
	{
		pd_type_override ov = {"alloc_space", PD_POLICY_GAUGE};
		req.overrides = &ov;
		req.noverrides = 1;
		CHECK(run(&p0, s0, s1, &out, &r) == PD_OK);
		CHECK(run(&p0, s1, s2, &out, &r) == PD_OK);
		summarize(out.data, out.len, &o);
		CHECK(r.status == PD_STATUS_DELTA && o.total[0] == 200);
		req.overrides = NULL;
		req.noverrides = 0;
	}
	pd_buf_free(&out);
	pd_state_free(s0);
	pd_state_free(s1);
	pd_state_free(s2);
}

/* Every truncation of a valid profile is refused (or still valid), never
 * crashes, never writes to the sink on error, never touches prev. */
static void test_truncation_and_limits(void)
{
	static pb p0, big;
	smp a[] = {{3, {1, 2, 3}, {100, 5}, 1, {{8, 9}}, 1}, {1, {2}, {7, 1}, 0, {{0}}, 0}};
	pd_state *s0 = pd_state_new(), *s1 = pd_state_new(), *s2 = pd_state_new();
	size_t sunk;
	pd_result r;
	pd_err e;
	int refused = 0, sink_on_error = 0;

	build(&p0, a, 2, 1000, 0, 0);
	{
		pd_buf out;
		pd_buf_init(&out, 0);
		CHECK(run(&p0, s0, s1, &out, &r) == PD_OK);
		pd_buf_free(&out);
	}
	for (size_t cut = 0; cut < p0.n; cut++) {
		sunk = 0;
		int rc = pd_engine_run(eng, p0.d, cut, s1, s2, &req, count_sink, &sunk, &r, &e);
		if (rc) {
			refused++;
			sink_on_error += sunk != 0;
			CHECK(e.msg[0] != 0);
		}
	}
	CHECK(refused > (int)p0.n / 2);
	CHECK(sink_on_error == 0);
	CHECK(pd_state_identities(s1) == 2); /* prev untouched */
	/* depth limit */
	{
		pd_limits lim;
		pd_engine *small;
		pd_limits_default(&lim);
		lim.max_depth = 2;
		small = pd_engine_new(&lim);
		CHECK(pd_engine_run(small, p0.d, p0.n, s0, s2, &req, count_sink, &sunk, &r, &e) ==
		      PD_E_LIMIT);
		pd_engine_free(small);
		/* inspect shares the input limits of the delta path */
		lim.max_inflated = 64;
		small = pd_engine_new(&lim);
		{
			pd_inspect ins;
			CHECK(pd_engine_inspect(small, p0.d, p0.n, &ins, &e) == PD_E_LIMIT);
		}
		pd_engine_free(small);
		lim.max_inflated = 1 << 20;
		lim.max_depth = 100;
		lim.max_samples = 1;
		small = pd_engine_new(&lim);
		CHECK(pd_engine_run(small, p0.d, p0.n, s0, s2, &req, count_sink, &sunk, &r, &e) ==
		      PD_E_LIMIT);
		pd_engine_free(small);
	}
	/* duplicate sample type names (found by fuzz_pprof: made a retry a reset) */
	dup_types = 1;
	build(&big, a, 2, 1000, 0, 0);
	dup_types = 0;
	CHECK(pd_engine_run(eng, big.d, big.n, s0, s2, &req, count_sink, &sunk, &r, &e) ==
	      PD_E_MALFORMED);
	CHECK(strstr(e.msg, "sample types") != NULL);
	/* unknown location id */
	{
		smp bad[] = {{1, {9}, {1, 1}, 0, {{0}}, 1}};
		build(&big, bad, 1, 1, 0, 0);
		CHECK(pd_engine_run(eng, big.d, big.n, s0, s2, &req, count_sink, &sunk, &r, &e) ==
		      PD_E_MALFORMED);
		CHECK(strstr(e.msg, "unknown location") != NULL);
	}
	/* packed id 0 (never a location) after one-byte ids: the one-byte loop must refuse it
	 * as the general decoder does */
	{
		smp bad[] = {{3, {1, 2, 0}, {1, 1}, 0, {{0}}, 1}, {1, {0}, {1, 1}, 0, {{0}}, 1}};
		for (int k = 0; k < 2; k++) {
			build(&big, &bad[k], 1, 1, 0, 0);
			CHECK(pd_engine_run(eng, big.d, big.n, s0, s2, &req, count_sink, &sunk, &r, &e) ==
			      PD_E_MALFORMED);
			CHECK(e.msg[0] != 0);
		}
	}
	pd_state_free(s0);
	pd_state_free(s1);
	pd_state_free(s2);
}

/* gz = gzip of mib MiB of zeros (~1 KiB per MiB). */
static void make_bomb(pd_buf *gz, int mib)
{
	static uint8_t zeros[1 << 16];
	z_stream z;
	int n = mib * 16;

	pd_buf_init(gz, 0);
	memset(&z, 0, sizeof z);
	deflateInit2(&z, 9, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY);
	pd_buf_reserve(gz, 1 << 20, NULL);
	for (int i = 0; i < n; i++) {
		z.next_in = zeros;
		z.avail_in = sizeof zeros;
		z.next_out = gz->data + gz->len;
		z.avail_out = (uInt)(gz->alloc - gz->len);
		deflate(&z, i == n - 1 ? Z_FINISH : Z_NO_FLUSH);
		gz->len = gz->alloc - z.avail_out;
	}
	deflateEnd(&z);
}

/* A gzip bomb stops at the inflated cap with a limit error. */
static void test_gzip_bomb(void)
{
	pd_limits lim;
	pd_engine *small;
	pd_state *s0 = pd_state_new(), *s1 = pd_state_new();
	pd_buf gz;
	size_t sunk = 0;
	pd_result r;
	pd_err e;

	make_bomb(&gz, 64);
	pd_limits_default(&lim);
	lim.max_inflated = 1 << 20;
	small = pd_engine_new(&lim);
	CHECK(pd_engine_run(small, gz.data, gz.len, s0, s1, &req, count_sink, &sunk, &r, &e) ==
	      PD_E_LIMIT);
	CHECK(strstr(e.msg, "gzip bomb") != NULL);
	CHECK(pd_engine_mem_bytes(small) < (2u << 20));
	pd_engine_free(small);
	pd_buf_free(&gz);
	pd_state_free(s0);
	pd_state_free(s1);
}

/* What a bomb grew (the inflate buffer up to max_inflated) is released by
 * pd_engine_trim; a normal request's working set under the bound is kept;
 * the engine works after a trim. */
static void test_trim(void)
{
	static pb p0;
	smp a[] = {{2, {1, 2}, {100, 5}, 0, {{0}}, 1}, {1, {3}, {50, 0}, 0, {{0}}, 1}};
	pd_limits lim;
	pd_engine *g;
	pd_state *s0 = pd_state_new(), *s1 = pd_state_new();
	pd_buf gz, out;
	size_t sunk = 0, held;
	pd_result r;
	pd_err e;

	make_bomb(&gz, 16);
	pd_buf_init(&out, 0);
	pd_limits_default(&lim);
	lim.max_inflated = 8 << 20;
	g = pd_engine_new(&lim);
	CHECK(pd_engine_run(g, gz.data, gz.len, s0, s1, &req, count_sink, &sunk, &r, &e) ==
	      PD_E_LIMIT);
	held = pd_engine_mem_bytes(g);
	CHECK(held >= (8u << 20));
	CHECK(pd_engine_trim(g, 4u << 20) == held);
	CHECK(pd_engine_mem_bytes(g) == 0);
	CHECK(pd_engine_trim(g, 4u << 20) == 0);

	build(&p0, a, 2, 1000, 0, 0);
	CHECK(pd_engine_run(g, p0.d, p0.n, s0, s1, &req, buf_sink, &out, &r, &e) == PD_OK);
	CHECK(r.status == PD_STATUS_BASELINE && r.samples_out == 2);
	held = pd_engine_mem_bytes(g);
	CHECK(held > 0 && held < (4u << 20));
	CHECK(pd_engine_trim(g, 4u << 20) == 0); /* under the bound: kept for reuse */
	CHECK(pd_engine_mem_bytes(g) == held);
	CHECK(pd_engine_run(g, gz.data, gz.len, s0, s1, &req, count_sink, &sunk, &r, &e) ==
	      PD_E_LIMIT);
	pd_engine_free(g);
	pd_buf_free(&gz);
	pd_buf_free(&out);
	pd_state_free(s0);
	pd_state_free(s1);
}

static void test_state_roundtrip(void)
{
	static pb p0;
	smp a[] = {{2, {1, 2}, {100, 5}, 0, {{0}}, 1}, {1, {3}, {-7, 0}, 0, {{0}}, 1}};
	pd_state *s0 = pd_state_new(), *s1 = pd_state_new(), *s2 = pd_state_new();
	pd_buf out, ser;
	pd_result r;
	pd_err e;

	pd_buf_init(&out, 0);
	pd_buf_init(&ser, 0);
	build(&p0, a, 2, 1000, 0, 0);
	req.incarnation = 99;
	CHECK(run(&p0, s0, s1, &out, &r) == PD_OK);
	req.incarnation = 0;
	CHECK(pd_state_serialize(s1, &ser, &e) == PD_OK);
	CHECK(pd_state_deserialize(s2, ser.data, ser.len, &e) == PD_OK);
	CHECK(pd_state_identities(s2) == 2 && pd_state_incarnation(s2) == 99);
	CHECK(pd_state_time_nanos(s2) == 1000 && pd_state_schema(s2) == pd_state_schema(s1));
	CHECK(strcmp(pd_state_col(s2, 0), "alloc_space/bytes") == 0);
	ser.data[ser.len / 2] ^= 1; /* corruption is detected */
	CHECK(pd_state_deserialize(s2, ser.data, ser.len, &e) == PD_E_STATE);
	CHECK(!pd_state_valid(s2));
	pd_buf_free(&out);
	pd_buf_free(&ser);
	pd_state_free(s0);
	pd_state_free(s1);
	pd_state_free(s2);
}

/* pd_varint8 (packed sample values) against the written value: every length
 * from 1 to 10 bytes, followed by bytes with the top bit set (which must not
 * be read into the value), and a field ending before the varint does. */
static void test_varint8(void)
{
	for (int bits = 0; bits <= 64; bits++) {
		uint64_t vs[3], got;
		vs[0] = bits == 64 ? ~0ULL : (1ULL << bits) - 1;
		vs[1] = bits == 64 ? 0x8000000000000001ULL : 1ULL << bits;
		vs[2] = vs[0] & 0x5a5a5a5a5a5a5a5aULL;
		for (int k = 0; k < 3; k++) {
			static pb b;
			const uint8_t *p;
			b.n = 0;
			put_varint(&b, vs[k]);
			size_t n = b.n;
			memset(b.d + n, 0xff, 16);
			p = b.d;
			got = ~vs[k];
			CHECK(pd_varint8(&p, b.d + n, b.d + n + 16, &got) == 0 && got == vs[k] &&
			      p == b.d + n);
			p = b.d;
			CHECK(pd_varint8(&p, b.d + n - 1, b.d + n + 16, &got) == -1);
		}
	}
}

int main(void)
{
	eng = pd_engine_new(NULL);
	pd_req_default(&req);
	req.gzip_level = 0;
	test_basic_delta();
	test_sample_order();
	test_identity_invariance();
	test_resets();
	test_truncation_and_limits();
	test_gzip_bomb();
	test_trim();
	test_state_roundtrip();
	test_varint8();
	pd_engine_free(eng);
	return TH_DONE();
}
