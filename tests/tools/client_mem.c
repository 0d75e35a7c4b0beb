/*
 * client_mem: the client's footprint. Sends a sequence of profile files
 * with libpdelta's streaming API (or one call) and reports, per request,
 * the number of heap allocations and bytes allocated inside the library
 * calls, then the peak heap in use and the peak RSS of the process.
 *
 *   client_mem (--local | --server H:P --ca CA --token T) [--api stream|onecall]
 *              FILE...
 *
 * Allocations are counted without LD_PRELOAD: this program defines malloc,
 * calloc, realloc and free itself (the dynamic linker binds every library,
 * libc's own calls included, to the executable's definitions) and forwards
 * to glibc's __libc_* entry points. Input files are read with read(2) and
 * deltas discarded, so the counts are the library's alone. Not available in
 * ASan/TSan builds (they own malloc): counts then print as -1.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pdelta.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define COUNTING 0
#else
#define COUNTING 1
#endif

static int counting;
static long long n_alloc, bytes_alloc, peak_in_use;
static long long in_use __attribute__((unused)); /* only the wrappers track it */

#if COUNTING
extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t a, size_t b);
extern void *__libc_realloc(void *p, size_t n);
extern void __libc_free(void *p);

#include <malloc.h>

static void note(void *p, size_t n)
{
	if (!p)
		return;
	if (counting) {
		n_alloc++;
		bytes_alloc += (long long)n;
	}
	in_use += (long long)malloc_usable_size(p);
	if (in_use > peak_in_use)
		peak_in_use = in_use;
}

void *malloc(size_t n)
{
	void *p = __libc_malloc(n);
	note(p, n);
	return p;
}

void *calloc(size_t a, size_t b)
{
	void *p = __libc_calloc(a, b);
	note(p, a * b);
	return p;
}

void *realloc(void *old, size_t n)
{
	void *p;
	if (old)
		in_use -= (long long)malloc_usable_size(old);
	p = __libc_realloc(old, n);
	if (!p && old && n)
		in_use += (long long)malloc_usable_size(old);
	note(p, n);
	return p;
}

void free(void *p)
{
	if (p)
		in_use -= (long long)malloc_usable_size(p);
	__libc_free(p);
}
#endif

typedef struct src {
	int fd;
	unsigned char buf[65536];
} src;

static int feed_fd(pdelta *h, src *s)
{
	ssize_t n;
	int rc;

	while ((n = read(s->fd, s->buf, sizeof s->buf)) > 0)
		if ((rc = pdelta_feed(h, s->buf, (size_t)n)))
			return rc;
	return n < 0 ? PDELTA_E_IO : 0;
}

static int replay(void *ctx, pdelta *h)
{
	src *s = ctx;
	if (lseek(s->fd, 0, SEEK_SET) != 0)
		return -1;
	return feed_fd(h, s) ? -1 : 0;
}

static int discard(void *ctx, const void *p, size_t n)
{
	*(size_t *)ctx += n;
	return 0;
}

static int one_stream(pdelta *h, src *s, size_t *out)
{
	pdelta_result r;
	int rc = pdelta_begin(h, "mem", 0, replay, s);

	if (!rc)
		rc = feed_fd(h, s);
	if (!rc)
		rc = pdelta_finish(h, &r);
	if (!rc)
		rc = pdelta_read_all(h, discard, out);
	return rc;
}

static int one_call(pdelta *h, src *s, unsigned char *big, size_t len, size_t *out)
{
	pdelta_result r;
	int rc;

	if (read(s->fd, big, len) != (ssize_t)len)
		return PDELTA_E_IO;
	counting = 1;
	rc = pdelta_delta(h, "mem", 0, big, len, &r);
	*out = r.len;
	pdelta_result_free(&r);
	return rc;
}

int main(int argc, char **argv)
{
	pdelta_opts o;
	pdelta *h;
	src *s = malloc(sizeof *s);
	unsigned char *big = NULL;
	const char *api = "stream";
	char err[256];
	struct rusage ru;
	int i = 1, local = 0;
	long long req_allocs[512];
	int nreq = 0;

	pdelta_opts_init(&o);
	for (; i < argc && argv[i][0] == '-'; i++) {
		if (strcmp(argv[i], "--local") == 0)
			local = 1;
		else if (i + 1 < argc && strcmp(argv[i], "--server") == 0)
			o.server = argv[++i];
		else if (i + 1 < argc && strcmp(argv[i], "--ca") == 0)
			o.ca_file = argv[++i];
		else if (i + 1 < argc && strcmp(argv[i], "--token") == 0)
			o.token = argv[++i];
		else if (i + 1 < argc && strcmp(argv[i], "--api") == 0)
			api = argv[++i];
		else
			return 2;
	}
	if (local)
		o.server = NULL;
	if (!s || i >= argc || pdelta_new(&o, &h, err, sizeof err)) {
		fprintf(stderr, "client_mem: bad arguments or %s\n", err);
		return 2;
	}
	for (; i < argc && nreq < 512; i++) {
		struct stat st;
		size_t out = 0;
		long long a0, b0;
		int rc;

		s->fd = open(argv[i], O_RDONLY);
		if (s->fd < 0 || fstat(s->fd, &st))
			return 2;
		if (strcmp(api, "onecall") == 0 && !(big = realloc(big, (size_t)st.st_size + 1)))
			return 2;
		a0 = n_alloc;
		b0 = bytes_alloc;
		counting = 1;
		rc = strcmp(api, "onecall") == 0 ? one_call(h, s, big, (size_t)st.st_size, &out)
						 : one_stream(h, s, &out);
		counting = 0;
		close(s->fd);
		if (rc) {
			fprintf(stderr, "client_mem: %s: %s\n", argv[i], pdelta_last_error(h));
			return 1;
		}
		req_allocs[nreq++] = COUNTING ? n_alloc - a0 : -1;
		printf("request %d in=%lld out=%zu allocs=%lld alloc_bytes=%lld\n", nreq,
		       (long long)st.st_size, out, COUNTING ? n_alloc - a0 : -1LL,
		       COUNTING ? bytes_alloc - b0 : -1LL);
	}
	getrusage(RUSAGE_SELF, &ru);
	{
		long long steady = 0;
		for (int k = nreq > 2 ? 2 : 0; k < nreq; k++)
			steady = req_allocs[k] > steady ? req_allocs[k] : steady;
		printf("summary api=%s mode=%s requests=%d first_request_allocs=%lld "
		       "max_allocs_per_request_after_2=%lld peak_heap_bytes=%lld peak_rss_kb=%ld\n",
		       api, local ? "local" : "server", nreq, req_allocs[0], steady,
		       COUNTING ? peak_in_use : -1LL, ru.ru_maxrss);
	}
	pdelta_free(h);
	free(big);
	free(s);
	return 0;
}
