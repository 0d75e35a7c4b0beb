/*
 * test_gz: the gzip layer (common/pd_gz.c) on its own: the whole-input
 * inflate (libdeflate) against zlib's streaming inflate, concatenated
 * members, lying size trailers, bombs, truncation and trailing garbage; the
 * deflater's two modes (whole: one member through libdeflate; streaming:
 * zlib), chunking to the sink, and empty outputs.
 */
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "pd_crc.h"
#include "pd_gz.h"
#include "tharness.h"

/* Test input: compressible but not trivial (a pprof-like mix). */
static uint8_t *make_raw(size_t n)
{
	uint8_t *p = malloc(n);
	static const char words[] = "location function string";
	uint32_t x = 12345;
	for (size_t i = 0; i < n; i++) {
		x = x * 1103515245u + 12345u;
		p[i] = (uint8_t)(i % 97 < 60 ? (uint32_t)words[i % 24] : x >> 24);
	}
	return p;
}

/* One gzip member of p through zlib (independent of the code under test). */
static size_t zgzip(const uint8_t *p, size_t n, uint8_t *out, size_t cap, int level)
{
	z_stream zs;
	size_t got;
	memset(&zs, 0, sizeof zs);
	deflateInit2(&zs, level, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY);
	zs.next_in = (Bytef *)(uintptr_t)p;
	zs.avail_in = (uInt)n;
	zs.next_out = out;
	zs.avail_out = (uInt)cap;
	deflate(&zs, Z_FINISH);
	got = zs.total_out;
	deflateEnd(&zs);
	return got;
}

/* Inflates every member of a gzip file with zlib; returns members seen, 0 on error. */
static int zgunzip(const uint8_t *p, size_t n, pd_buf *out)
{
	z_stream zs;
	int members = 0;
	memset(&zs, 0, sizeof zs);
	inflateInit2(&zs, 16 + MAX_WBITS);
	zs.next_in = (Bytef *)(uintptr_t)p;
	zs.avail_in = (uInt)n;
	while (zs.avail_in > 0) {
		int zr;
		pd_buf_reserve(out, 65536, NULL);
		zs.next_out = out->data + out->len;
		zs.avail_out = (uInt)(out->alloc - out->len);
		zr = inflate(&zs, Z_NO_FLUSH);
		out->len = out->alloc - zs.avail_out;
		if (zr == Z_STREAM_END) {
			members++;
			inflateReset(&zs);
		} else if (zr != Z_OK) {
			members = 0;
			break;
		}
	}
	inflateEnd(&zs);
	return members;
}

static void test_whole_matches_zlib(void)
{
	size_t n = 3 << 20;
	uint8_t *raw = make_raw(n), *gz = malloc(n + 1024);
	size_t gn = zgzip(raw, n, gz, n + 1024, 6);
	pd_inflater f;
	pd_buf out;
	pd_err e;

	pd_infl_init(&f);
	pd_buf_init(&out, 0);
	CHECK(pd_infl_whole(&f, gz, gn, &out, &e) == PD_OK);
	CHECK(out.len == n && memcmp(out.data, raw, n) == 0);
	/* reused: no state leaks from the first call */
	CHECK(pd_infl_whole(&f, gz, gn, &out, &e) == PD_OK);
	CHECK(out.len == n && memcmp(out.data, raw, n) == 0);

	/* two members: both inflated, in order */
	{
		uint8_t *two = malloc(2 * gn);
		memcpy(two, gz, gn);
		memcpy(two + gn, gz, gn);
		CHECK(pd_infl_whole(&f, two, 2 * gn, &out, &e) == PD_OK);
		CHECK(out.len == 2 * n && memcmp(out.data + n, raw, n) == 0);
		/* the first guess of the room comes from the last member's size
		 * trailer (here: a 1-byte member), so the big first one must grow it */
		{
			uint8_t one = 'x', *g1 = malloc(64);
			size_t g1n = zgzip(&one, 1, g1, 64, 6);
			memcpy(two + gn, g1, g1n);
			CHECK(pd_infl_whole(&f, two, gn + g1n, &out, &e) == PD_OK);
			CHECK(out.len == n + 1 && out.data[n] == 'x');
			free(g1);
		}
		/* a lying size trailer is corrupt data (the trailer is verified) */
		two[gn - 4] ^= 1;
		CHECK(pd_infl_whole(&f, two, gn, &out, &e) == PD_E_MALFORMED);
		free(two);
	}
	/* truncated, corrupt, trailing garbage: errors, never partial success */
	CHECK(pd_infl_whole(&f, gz, gn - 9, &out, &e) == PD_E_MALFORMED);
	CHECK(pd_infl_whole(&f, gz, 10, &out, &e) == PD_E_MALFORMED);
	{
		uint8_t *g2 = malloc(gn + 3);
		memcpy(g2, gz, gn);
		memcpy(g2 + gn, "xyz", 3);
		CHECK(pd_infl_whole(&f, g2, gn + 3, &out, &e) == PD_E_MALFORMED);
		CHECK(strstr(e.msg, "trailing garbage") != NULL);
		memcpy(g2, gz, gn);
		g2[gn / 2] ^= 0x55;
		g2[gn / 2 + 1] ^= 0xaa;
		CHECK(pd_infl_whole(&f, g2, gn, &out, &e) != PD_OK);
		free(g2);
	}
	/* the inflated cap: a bomb stops with a limit error */
	{
		pd_buf small;
		pd_buf_init(&small, n / 3);
		CHECK(pd_infl_whole(&f, gz, gn, &small, &e) == PD_E_LIMIT);
		CHECK(strstr(e.msg, "gzip bomb") != NULL);
		CHECK(small.alloc <= n / 3);
		pd_buf_free(&small);
	}
	pd_buf_free(&out);
	pd_infl_free(&f);
	free(raw);
	free(gz);
}

/* A 64 MiB run of zeros compresses ~1000:1; its size trailer lies (says 100). */
static void test_bomb_lying_trailer(void)
{
	size_t n = 64 << 20;
	uint8_t *zeros = calloc(1, n), *gz = malloc(1 << 20);
	size_t gn = zgzip(zeros, n, gz, 1 << 20, 9);
	pd_inflater f;
	pd_buf out;
	pd_err e;

	gz[gn - 4] = 100, gz[gn - 3] = gz[gn - 2] = gz[gn - 1] = 0;
	pd_infl_init(&f);
	pd_buf_init(&out, 16 << 20);
	CHECK(pd_infl_whole(&f, gz, gn, &out, &e) == PD_E_LIMIT);
	CHECK(out.alloc <= (16u << 20));
	pd_buf_free(&out);
	pd_infl_free(&f);
	free(zeros);
	free(gz);
}

typedef struct sink_rec {
	pd_buf all;
	size_t calls, max_piece;
} sink_rec;

static int rec_sink(void *ctx, const uint8_t *p, size_t n)
{
	sink_rec *s = ctx;
	s->calls++;
	if (n > s->max_piece)
		s->max_piece = n;
	return pd_buf_append(&s->all, p, n, NULL);
}

static void deflate_lvl(int level, int whole, const uint8_t *raw, size_t n, size_t piece,
			sink_rec *s)
{
	pd_deflater d;
	pd_err e;
	size_t off = 0;

	pd_defl_init(&d);
	memset(s, 0, sizeof *s);
	pd_buf_init(&s->all, 0);
	CHECK(pd_defl_begin(&d, level, whole, 16384, rec_sink, s, &e) == PD_OK);
	if (!whole)
		for (; off + piece < n; off += piece)
			CHECK(pd_defl_write(&d, raw + off, piece, &e) == PD_OK);
	CHECK(pd_defl_finish_with(&d, raw + off, n - off, &e) == PD_OK);
	CHECK(d.total_in == n && d.total_out == s->all.len);
	CHECK(d.fallbacks == 0); /* level 1 whole: ISA-L did it, not the fallback */
	pd_defl_free(&d);
}

static void deflate_once(int whole, const uint8_t *raw, size_t n, size_t piece, sink_rec *s)
{
	deflate_lvl(1, whole, raw, n, piece, s);
}

/* Whole mode at level 1 is ISA-L, at 2-9 libdeflate: one member each, the
 * same bytes back, including input that does not compress (ISA-L's stored
 * blocks) and one reused deflater switching levels. */
static void test_whole_levels(void)
{
	size_t n = 3 << 20;
	uint8_t *raw = make_raw(n), *rnd = malloc(n);
	uint64_t x = 88172645463325252ULL;
	size_t sz[10] = {0};

	for (size_t i = 0; i < n; i++) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		rnd[i] = (uint8_t)x;
	}
	for (int level = 1; level <= 9; level += level < 2 ? 1 : 4) {
		for (int k = 0; k < 2; k++) {
			const uint8_t *src = k ? rnd : raw;
			sink_rec s;
			pd_buf back;
			deflate_lvl(level, 1, src, n, 0, &s);
			pd_buf_init(&back, 0);
			CHECK(zgunzip(s.all.data, s.all.len, &back) == 1);
			CHECK(back.len == n && memcmp(back.data, src, n) == 0);
			if (k)
				CHECK(s.all.len <= (level == 1 ? n + 5 * (n / 65535 + 1) + 18 /* stored blocks */
								: n + n / 16 + 4096));
			else
				sz[level] = s.all.len;
			pd_buf_free(&back);
			pd_buf_free(&s.all);
		}
	}
	CHECK(sz[1] < n * 3 / 4 && sz[2] < n * 3 / 4 && sz[6] <= sz[2]);

	pd_deflater d;
	pd_err e;
	pd_defl_init(&d);
	for (int i = 0; i < 4; i++) {
		sink_rec s;
		pd_buf back;
		memset(&s, 0, sizeof s);
		pd_buf_init(&s.all, 0);
		CHECK(pd_defl_begin(&d, i % 2 ? 6 : 1, 1, 65536, rec_sink, &s, &e) == PD_OK);
		CHECK(pd_defl_finish_with(&d, raw, n / (i + 1), &e) == PD_OK);
		CHECK(d.fallbacks == 0);
		pd_buf_init(&back, 0);
		CHECK(zgunzip(s.all.data, s.all.len, &back) == 1 && back.len == n / (i + 1) &&
		      memcmp(back.data, raw, back.len) == 0);
		pd_buf_free(&back);
		pd_buf_free(&s.all);
	}
	pd_defl_free(&d);
	free(raw);
	free(rnd);
}

static void test_deflate_modes(void)
{
	size_t n = 1 << 20;
	uint8_t *raw = make_raw(n);

	for (int whole = 0; whole <= 1; whole++) {
		sink_rec s;
		pd_buf back;
		deflate_once(whole, raw, n, 100000, &s);
		pd_buf_init(&back, 0);
		CHECK(zgunzip(s.all.data, s.all.len, &back) == 1); /* exactly one member */
		CHECK(back.len == n && memcmp(back.data, raw, n) == 0);
		/* whole mode: pieces of exactly the threshold; streaming: a flush
		 * once the threshold is reached, so a piece may pass it */
		CHECK(s.max_piece <= (whole ? 16384u : 16384u + 65536u));
		CHECK(s.calls >= s.all.len / (whole ? 16384u : 16384u + 65536u));
		pd_buf_free(&back);
		pd_buf_free(&s.all);

		/* an empty output is still a gzip file */
		deflate_once(whole, raw, 0, 1, &s);
		pd_buf_init(&back, 0);
		CHECK(s.all.len > 0 && zgunzip(s.all.data, s.all.len, &back) == 1 && back.len == 0);
		pd_buf_free(&back);
		pd_buf_free(&s.all);
	}
	free(raw);
}

/* A sink that fails: an error, not a crash or a silent success. */
static int bad_sink(void *ctx, const uint8_t *p, size_t n)
{
	(void)ctx, (void)p, (void)n;
	return -1;
}

static void test_sink_failure(void)
{
	uint8_t *raw = make_raw(4096);
	for (int whole = 0; whole <= 1; whole++) {
		pd_deflater d;
		pd_err e;
		pd_defl_init(&d);
		CHECK(pd_defl_begin(&d, 1, whole, 1024, bad_sink, NULL, &e) == PD_OK);
		CHECK(pd_defl_finish_with(&d, raw, 4096, &e) == PD_E_IO);
		pd_defl_free(&d);
	}
	free(raw);
}

/* The protocol-2 content hash: published check values of both CRC-64s, the
 * byte order on the wire, and incremental == whole at every split point. */
static void test_crc128(void)
{
	static const uint8_t want[16] = {0xfa, 0x39, 0x19, 0xdf, 0xbb, 0xc9, 0x5d, 0x99,
					 0x7e, 0x0d, 0xf6, 0x79, 0xe9, 0xe8, 0x58, 0x35};
	uint8_t out[16], whole[16], zero[16] = {0};
	uint8_t buf[1000];
	int bad = 0;

	pd_crc128_of("123456789", 9, out);
	CHECK(memcmp(out, want, 16) == 0); /* CRC-64/XZ 0x995dc9bbdf1939fa, Jones 0x3558e8e979f60d7e */
	pd_crc128_of("", 0, out);
	CHECK(memcmp(out, zero, 16) == 0);
	for (size_t i = 0; i < sizeof buf; i++)
		buf[i] = (uint8_t)(i * 131 + (i >> 3));
	pd_crc128_of(buf, sizeof buf, whole);
	for (size_t cut = 0; cut <= sizeof buf; cut += 7) {
		pd_crc128 c = pd_crc128_init();
		pd_crc128_update(&c, buf, cut);
		pd_crc128_update(&c, buf + cut, sizeof buf - cut);
		pd_crc128_final(&c, out);
		bad += memcmp(out, whole, 16) != 0;
	}
	CHECK(bad == 0);
	buf[500] ^= 1; /* one flipped bit changes both halves */
	pd_crc128_of(buf, sizeof buf, out);
	CHECK(memcmp(out, whole, 8) != 0 && memcmp(out + 8, whole + 8, 8) != 0);
}

int main(void)
{
	test_crc128();
	test_whole_matches_zlib();
	test_bomb_lying_trailer();
	test_deflate_modes();
	test_whole_levels();
	test_sink_failure();
	return TH_DONE();
}
