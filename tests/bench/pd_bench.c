/*
 * pd_bench: engine benchmark over one test-data sequence.
 *
 * Usage: pd_bench [--reps N] [--level L] NAME FILE...
 * For every file i >= 1 it measures, in one process and one run:
 *   e2e   - gzip in -> gzip out through pd_engine_run (prev state = file i-1),
 *   core  - raw in -> raw out (input pre-inflated, gzip level 0),
 *   floor - zlib alone: inflating the same input + deflating the same output
 *           at the same level (the yardstick),
 *   libfloor - the same through the libraries the engine uses for whole
 *           buffers (libdeflate inflate, pd_gz's whole-mode deflate: ISA-L
 *           at level 1): what is left above it is the engine's own work,
 * taking the median of N repetitions, and prints one line per sequence with
 * per-phase times, MB/s, state bytes per identity (memory and serialized),
 * mallocs per steady-state call, peak RSS and the e2e/floor ratio.
 * The *_cpu figures are the same calls timed on the thread's CPU clock
 * (index+hash: pd_engine_index_hashed on the raw input, the two passes
 * alone): on a shared machine they leave out the time the process waited
 * for a core, which wall times include.
 * malloc/calloc/realloc are interposed to count allocations.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <libdeflate.h>
#include <zlib.h>

#include "pd_clock.h"
#include "pd_engine.h"

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
static volatile unsigned long n_allocs;

void *malloc(size_t n);
void *calloc(size_t a, size_t b);
void *realloc(void *p, size_t n);
void *malloc(size_t n)
{
	n_allocs++;
	return __libc_malloc(n);
}
void *calloc(size_t a, size_t b)
{
	n_allocs++;
	return __libc_calloc(a, b);
}
void *realloc(void *p, size_t n)
{
	n_allocs++;
	return __libc_realloc(p, n);
}

typedef struct file {
	pd_buf gz, raw, out_raw;
} file;

static int buf_sink(void *ctx, const uint8_t *p, size_t n)
{
	return pd_buf_append(ctx, p, n, NULL);
}

static int null_sink(void *ctx, const uint8_t *p, size_t n)
{
	(void)ctx;
	(void)p;
	(void)n;
	return 0;
}

static void load(const char *path, pd_buf *b)
{
	FILE *f = fopen(path, "rb");
	size_t n;
	if (!f) {
		perror(path);
		exit(2);
	}
	pd_buf_init(b, 0);
	do {
		pd_buf_reserve(b, 1 << 20, NULL);
		n = fread(b->data + b->len, 1, b->alloc - b->len, f);
		b->len += n;
	} while (n > 0);
	fclose(f);
}

static void inflate_all(const pd_buf *in, pd_buf *out)
{
	pd_inflater f;
	pd_buf_init(out, 0);
	pd_infl_init(&f);
	pd_infl_begin(&f, out, 0);
	if (pd_infl_feed(&f, in->data, in->len, NULL) || pd_infl_end(&f, NULL)) {
		fprintf(stderr, "inflate failed\n");
		exit(2);
	}
	pd_infl_free(&f);
}

/* zlib floor: inflate gz + deflate raw at level, with reused streams. */
static double floor_ms(const pd_buf *gz, const pd_buf *out_raw, int level, pd_buf *scratch)
{
	static z_stream zi, zd;
	static int init;
	static uint8_t obuf[1 << 16];
	uint64_t t0 = pd_now_ns();

	if (!init) {
		inflateInit2(&zi, 16 + MAX_WBITS);
		deflateInit2(&zd, level, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY);
		init = 1;
	} else {
		inflateReset(&zi);
		deflateReset(&zd);
	}
	pd_buf_reserve(scratch, 64 << 20, NULL);
	zi.next_in = gz->data;
	zi.avail_in = (uInt)gz->len;
	zi.next_out = scratch->data;
	zi.avail_out = (uInt)scratch->alloc;
	inflate(&zi, Z_FINISH);
	zd.next_in = out_raw->data;
	zd.avail_in = (uInt)out_raw->len;
	do {
		zd.next_out = obuf;
		zd.avail_out = sizeof obuf;
	} while (deflate(&zd, Z_FINISH) == Z_OK);
	return (double)(pd_now_ns() - t0) / 1e6;
}

/* Library floor: the same two operations through libdeflate's inflate and
 * pd_gz's whole-mode deflater (what the engine calls). */
static double libfloor_ms(const pd_buf *gz, const pd_buf *out_raw, int level, pd_buf *scratch)
{
	static struct libdeflate_decompressor *d;
	static pd_deflater defl;
	size_t got = 0;
	uint64_t t0;

	if (!d) {
		d = libdeflate_alloc_decompressor();
		pd_defl_init(&defl);
	}
	pd_buf_reserve(scratch, 64 << 20, NULL);
	pd_defl_begin(&defl, level, 1, 1 << 16, null_sink, NULL, NULL);
	t0 = pd_now_ns();
	libdeflate_gzip_decompress_ex(d, gz->data, gz->len, scratch->data, scratch->alloc, NULL, &got);
	if (pd_defl_finish_with(&defl, out_raw->data, out_raw->len, NULL))
		abort();
	return (double)(pd_now_ns() - t0) / 1e6;
}

static int cmp_d(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof *v, cmp_d);
	return v[n / 2];
}

int main(int argc, char **argv)
{
	int reps = 5, level = 1, nf, argi = 1;
	const char *name;
	file *fs;
	pd_state **st;
	pd_state *scratch_state;
	pd_engine *eng;
	pd_req req;
	pd_buf scratch, ser;
	double e2e = 0, core = 0, flo = 0, libflo = 0, ph[6] = {0};
	double e2e_cpu = 0, core_cpu = 0, libflo_cpu = 0, ih_cpu = 0;
	double mb_raw = 0;
	unsigned long allocs = 0, calls = 0;
	size_t ident = 0, mem = 0, serb = 0;
	struct rusage ru;

	while (argi < argc && argv[argi][0] == '-') {
		if (!strcmp(argv[argi], "--reps") && argi + 1 < argc)
			reps = atoi(argv[++argi]);
		else if (!strcmp(argv[argi], "--level") && argi + 1 < argc)
			level = atoi(argv[++argi]);
		argi++;
	}
	if (argc - argi < 3 || reps < 1 || reps > 101) {
		fprintf(stderr, "usage: pd_bench [--reps N] [--level L] NAME FILE FILE...\n");
		return 2;
	}
	name = argv[argi++];
	nf = argc - argi;
	fs = calloc((size_t)nf, sizeof *fs);
	st = calloc((size_t)nf, sizeof *st);
	eng = pd_engine_new(NULL);
	scratch_state = pd_state_new();
	pd_buf_init(&scratch, 0);
	pd_buf_init(&ser, 0);
	pd_req_default(&req);
	req.gzip_level = level;
	for (int i = 0; i < nf; i++) {
		load(argv[argi + i], &fs[i].gz);
		inflate_all(&fs[i].gz, &fs[i].raw);
		pd_buf_init(&fs[i].out_raw, 0);
		st[i] = pd_state_new();
	}
	/* Build the state chain and capture raw outputs (for the floor). */
	for (int i = 0; i < nf; i++) {
		pd_result r;
		pd_err e;
		pd_req rq = req;
		rq.gzip_level = 0;
		if (pd_engine_run(eng, fs[i].raw.data, fs[i].raw.len, i ? st[i - 1] : scratch_state, st[i],
				  &rq, buf_sink, &fs[i].out_raw, &r, &e)) {
			fprintf(stderr, "%s: %s\n", argv[argi + i], e.msg);
			return 1;
		}
	}
	for (int i = 1; i < nf; i++) {
		double te[101], tc[101], tf[101], tl[101], p[6][101];
		double ce[101], cc[101], cl[101], ch[101];
		for (int k = 0; k < reps; k++) {
			pd_result r;
			pd_err e;
			pd_req rq = req;
			unsigned long a0 = n_allocs;
			pd_engine_view view;
			uint64_t c0 = pd_thread_cpu_ns(), t0 = pd_now_ns();
			pd_engine_run(eng, fs[i].gz.data, fs[i].gz.len, st[i - 1], scratch_state, &req,
				      null_sink, NULL, &r, &e);
			te[k] = (double)(pd_now_ns() - t0) / 1e6;
			ce[k] = (double)(pd_thread_cpu_ns() - c0) / 1e6;
			if (k > 0) {
				allocs += n_allocs - a0;
				calls++;
			}
			p[0][k] = r.ns_inflate / 1e6;
			p[1][k] = r.ns_index / 1e6;
			p[2][k] = r.ns_hash / 1e6;
			p[3][k] = r.ns_diff / 1e6;
			p[4][k] = r.ns_encode / 1e6;
			p[5][k] = r.ns_deflate / 1e6;
			rq.gzip_level = 0;
			c0 = pd_thread_cpu_ns();
			t0 = pd_now_ns();
			pd_engine_run(eng, fs[i].raw.data, fs[i].raw.len, st[i - 1], scratch_state, &rq,
				      null_sink, NULL, &r, &e);
			tc[k] = (double)(pd_now_ns() - t0) / 1e6;
			cc[k] = (double)(pd_thread_cpu_ns() - c0) / 1e6;
			tf[k] = floor_ms(&fs[i].gz, &fs[i].out_raw, level, &scratch);
			c0 = pd_thread_cpu_ns();
			tl[k] = libfloor_ms(&fs[i].gz, &fs[i].out_raw, level, &scratch);
			cl[k] = (double)(pd_thread_cpu_ns() - c0) / 1e6;
			c0 = pd_thread_cpu_ns();
			if (pd_engine_index_hashed(eng, fs[i].raw.data, fs[i].raw.len, scratch_state, &view, &e)) {
				fprintf(stderr, "%s: %s\n", argv[argi + i], e.msg);
				return 1;
			}
			ch[k] = (double)(pd_thread_cpu_ns() - c0) / 1e6;
		}
		e2e += median(te, reps);
		core += median(tc, reps);
		flo += median(tf, reps);
		libflo += median(tl, reps);
		e2e_cpu += median(ce, reps);
		core_cpu += median(cc, reps);
		libflo_cpu += median(cl, reps);
		ih_cpu += median(ch, reps);
		for (int q = 0; q < 6; q++)
			ph[q] += median(p[q], reps);
		mb_raw += (double)fs[i].raw.len / 1e6;
		ident += pd_state_identities(st[i]);
		mem += pd_state_mem_bytes(st[i]);
		pd_buf_reset(&ser);
		pd_state_serialize(st[i], &ser, NULL);
		serb += ser.len;
	}
	getrusage(RUSAGE_SELF, &ru);
	{
		int n = nf - 1;
		printf("%-16s files=%d e2e_ms=%.2f core_ms=%.2f floor_ms=%.2f ratio=%.2f "
		       "libfloor_ms=%.2f lib_ratio=%.2f MB/s=%.0f inflate=%.2f index=%.2f hash=%.2f diff=%.2f encode=%.2f deflate=%.2f "
		       "state_B/id=%.1f ser_B/id=%.1f mallocs/call=%.1f peak_rss_MB=%.0f "
		       "e2e_cpu_ms=%.2f core_cpu_ms=%.2f libfloor_cpu_ms=%.2f lib_ratio_cpu=%.2f indexhash_cpu_ms=%.2f\n",
		       name, nf, e2e / n, core / n, flo / n, e2e / flo, libflo / n, e2e / libflo, mb_raw / (e2e / 1e3),
		       ph[0] / n, ph[1] / n, ph[2] / n, ph[3] / n, ph[4] / n, ph[5] / n,
		       ident ? (double)mem / (double)ident : 0, ident ? (double)serb / (double)ident : 0,
		       calls ? (double)allocs / (double)calls : 0, ru.ru_maxrss / 1024.0, e2e_cpu / n,
		       core_cpu / n, libflo_cpu / n, e2e_cpu / libflo_cpu, ih_cpu / n);
	}
	return 0;
}
