/*
 * test_client: libpdelta tests that need no server: options and argument
 * checks, local mode (one-call, streaming push and pull give the engine's
 * exact bytes; the PROTOCOL.md §8 rules: DUPLICATE, stale, conflict; a bad
 * profile leaves the state alone), call-order errors, error classification,
 * connection failures with retries and backoff, the local fallback, and TLS
 * setup errors.
 *
 *   test_client [PROFILE_DIR]    (a sequence; default tests/data/profiles/heap-small,
 *                                 under $PDELTA_FIXTURES instead of tests/data if set)
 *
 * Expected bytes come from the engine called directly (common/pd_engine.h),
 * the way `pdelta seq` runs it. Prints "N passed, N failed".
 */
#include <dirent.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "pd_engine.h"
#include "pd_gz.h"
#include "pdelta.h"
#include "tharness.h"
#include "tseq.h"

#define MAXF 64

typedef struct blob {
	unsigned char *p;
	size_t n;
} blob;

static blob files[MAXF], expect[MAXF];
static int nfiles;

static int cmp_name(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void load_dir(const char *dir)
{
	char *names[MAXF], path[4096];
	struct dirent *de;
	DIR *d = opendir(dir);
	int n = 0;

	if (!d) {
		perror(dir);
		exit(2);
	}
	while ((de = readdir(d)) && n < MAXF)
		if (strstr(de->d_name, ".pb.gz"))
			names[n++] = strdup(de->d_name);
	closedir(d);
	qsort(names, (size_t)n, sizeof *names, cmp_name);
	for (int i = 0; i < n; i++) {
		FILE *f;
		struct stat st;
		snprintf(path, sizeof path, "%s/%s", dir, names[i]);
		f = fopen(path, "rb");
		if (!f || fstat(fileno(f), &st))
			exit(2);
		files[i].n = (size_t)st.st_size;
		files[i].p = malloc(files[i].n);
		if (fread(files[i].p, 1, files[i].n, f) != files[i].n)
			exit(2);
		fclose(f);
		free(names[i]);
	}
	nfiles = n;
}

/* What `pdelta seq` produces: the engine with one state through the files. */
static void engine_expect(uint64_t incarnation)
{
	th_seq sq;
	pd_req q;
	pd_result res;

	pd_req_default(&q);
	q.incarnation = incarnation;
	if (th_seq_init(&sq, NULL))
		exit(3);
	for (int i = 0; i < nfiles; i++) {
		pd_buf b;
		if (th_seq_run(&sq, files[i].p, files[i].n, &q, &b, &res))
			exit(3);
		expect[i].p = b.data;
		expect[i].n = b.len;
	}
	th_seq_free(&sq);
}

static pdelta *local_handle(uint64_t inc)
{
	pdelta_opts o;
	pdelta *h = NULL;
	char err[256];

	pdelta_opts_init(&o);
	o.incarnation = inc;
	EXPECT(pdelta_new(&o, &h, err, sizeof err) == 0, "pdelta_new(local): %s", err);
	return h;
}

/* The profile bytes of a gzip member (or the bytes themselves when not gzip). */
static int gunzip_to(const void *p, size_t n, pd_buf *out)
{
	pd_inflater f;
	int rc;
	pd_infl_init(&f);
	pd_buf_reset(out);
	rc = pd_infl_whole(&f, p, n, out, NULL);
	pd_infl_free(&f);
	return rc;
}

/*
 * Same delta: identical profile bytes once inflated. The compressed bytes
 * may differ: one-call requests deflate the whole output with libdeflate,
 * streaming local mode with zlib as it goes (pd_gz.h).
 */
static int same(const blob *b, const void *p, size_t n)
{
	pd_buf x, y;
	int eq;
	if (b->n == n && memcmp(b->p, p, n) == 0)
		return 1;
	if (n < 2 || b->n < 2 || ((const uint8_t *)p)[0] != 0x1f || b->p[0] != 0x1f)
		return 0;
	pd_buf_init(&x, 0);
	pd_buf_init(&y, 0);
	eq = gunzip_to(b->p, b->n, &x) == 0 && gunzip_to(p, n, &y) == 0 && x.len == y.len &&
	     memcmp(x.data, y.data, x.len) == 0;
	pd_buf_free(&x);
	pd_buf_free(&y);
	return eq;
}

static void test_options(void)
{
	pdelta_opts o;
	pdelta *h;
	char err[256];
	pdelta_override ov[2] = {{"inuse_space", PDELTA_POLICY_DELTA}, {"inuse_space", PDELTA_POLICY_GAUGE}};
	const char *bad[] = {"nohost", "host:", ":7433", "host:0", "host:65536", "host:12x", "[::1]7433",
			     "a:b:c"};

	pdelta_opts_init(&o);
	EXPECT(o.max_attempts == 5 && o.connect_timeout_ms == 5000 && o.first_policy == PDELTA_FIRST_KEEP,
	       "defaults");
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		o.server = bad[i];
		EXPECT(pdelta_new(&o, &h, err, sizeof err) == PDELTA_E_ARG && h == NULL && err[0],
		       "server '%s' should be refused", bad[i]);
	}
	o.server = "[::1]:7433";
	EXPECT(pdelta_new(&o, &h, err, sizeof err) == 0, "[::1]:7433: %s", err);
	pdelta_free(h);
	o.server = NULL;
	o.overrides = ov;
	o.noverrides = 2;
	EXPECT(pdelta_new(&o, &h, err, sizeof err) == PDELTA_E_ARG, "duplicate override accepted");
	o.noverrides = 1;
	EXPECT(pdelta_new(&o, &h, err, sizeof err) == 0, "one override: %s", err);
	pdelta_free(h);
	o.noverrides = 0;
	o.first_policy = 7;
	EXPECT(pdelta_new(&o, &h, err, sizeof err) == PDELTA_E_ARG, "bad first policy accepted");
	pdelta_opts_init(&o);
	o.server = "127.0.0.1:1";
	o.ca_file = "/nonexistent/ca.pem";
	EXPECT(pdelta_new(&o, &h, err, sizeof err) == PDELTA_E_TLS && strstr(err, "/nonexistent"),
	       "missing CA file: %s", err);
	o.ca_file = NULL;
	o.cert_file = "/nonexistent/cert.pem";
	EXPECT(pdelta_new(&o, &h, err, sizeof err) == PDELTA_E_TLS, "missing cert: %s", err);
	pdelta_free(NULL);
}

static void test_errors(void)
{
	for (int c = 0; c <= PDELTA_RESTART; c++)
		EXPECT(pdelta_strerror(c) && *pdelta_strerror(c), "strerror %d", c);
	EXPECT(pdelta_retryable(PDELTA_E_IO) && pdelta_retryable(PDELTA_E_BUSY) &&
		       pdelta_retryable(PDELTA_E_TIMEOUT) && pdelta_retryable(PDELTA_E_STORE),
	       "retryable codes");
	EXPECT(!pdelta_retryable(PDELTA_E_MALFORMED) && !pdelta_retryable(PDELTA_E_AUTH) &&
		       !pdelta_retryable(PDELTA_E_SEQ) && !pdelta_retryable(PDELTA_E_TLS),
	       "non-retryable codes");
	EXPECT(strcmp(pdelta_status_name(PDELTA_BASELINE), "BASELINE") == 0 &&
		       strcmp(pdelta_reason_name(PDELTA_REASON_MOVED), "moved") == 0,
	       "names");
}

static void test_onecall_local(void)
{
	pdelta *h = local_handle(42);
	pdelta_result r;

	EXPECT(pdelta_is_local(h), "is_local");
	for (int i = 0; i < nfiles; i++) {
		int rc = pdelta_delta(h, "s", 0, files[i].p, files[i].n, &r);
		EXPECT(rc == 0, "onecall %d: %s", i, pdelta_last_error(h));
		EXPECT(same(&expect[i], r.data, r.len), "onecall %d: bytes differ from the engine's", i);
		EXPECT(r.status == (i ? PDELTA_DELTA : PDELTA_BASELINE) && r.seq == (uint64_t)i + 1 &&
			       r.local == 1 && r.bytes_in == files[i].n && r.bytes_out == r.len,
		       "onecall %d: status %d seq %llu", i, r.status, (unsigned long long)r.seq);
		EXPECT(i || r.reason == PDELTA_REASON_FIRST, "first reason");
		pdelta_result_free(&r);
	}
	EXPECT(pdelta_last_seq(h, "s") == (uint64_t)nfiles && pdelta_last_seq(h, "nope") == 0, "last_seq");
	pdelta_free(h);
}

static int blob_sink(void *ctx, const void *p, size_t n)
{
	pd_buf *b = ctx;
	if (!p) {
		pd_buf_reset(b);
		return 0;
	}
	return pd_buf_append(b, p, n, NULL) ? -1 : 0;
}

static void test_streaming_local(void)
{
	pdelta *h = local_handle(42);
	pdelta_result r;
	pd_buf b;

	pd_buf_init(&b, 0);
	for (int i = 0; i < nfiles; i++) {
		size_t step = 1000 + (size_t)i * 777;
		int rc = pdelta_begin(h, "s", 0, NULL, NULL);
		for (size_t off = 0; !rc && off < files[i].n; off += step)
			rc = pdelta_feed(h, files[i].p + off, off + step > files[i].n ? files[i].n - off : step);
		if (!rc)
			rc = pdelta_finish(h, &r);
		EXPECT(rc == 0, "stream %d: %s", i, pdelta_last_error(h));
		pd_buf_reset(&b);
		if (i % 2) {
			rc = pdelta_read_all(h, blob_sink, &b);
		} else {
			const void *p;
			size_t n;
			while ((rc = pdelta_read(h, &p, &n)) == 0 && n)
				pd_buf_append(&b, p, n, NULL);
		}
		EXPECT(rc == 0 && same(&expect[i], b.data, b.len), "stream %d: bytes differ", i);
	}
	pd_buf_free(&b);
	pdelta_free(h);
}

static void test_rules_local(void)
{
	pdelta *h = local_handle(42);
	pdelta_result r, r2;
	pdelta_error_info ei;
	const char junk[] = "this is not a profile";

	if (nfiles < 3)
		return;
	EXPECT(pdelta_delta(h, "x", 5, files[0].p, files[0].n, &r) == 0, "seq 5");
	EXPECT(pdelta_delta(h, "x", 5, files[0].p, files[0].n, &r2) == 0, "seq 5 again: %s",
	       pdelta_last_error(h));
	EXPECT(r2.status == PDELTA_DUPLICATE && r2.orig_status == PDELTA_BASELINE &&
		       r2.reason == PDELTA_REASON_FIRST && r2.len == r.len && memcmp(r.data, r2.data, r.len) == 0,
	       "duplicate replays the response (status %d)", r2.status);
	pdelta_result_free(&r);
	pdelta_result_free(&r2);
	EXPECT(pdelta_delta(h, "x", 5, files[1].p, files[1].n, &r) == PDELTA_E_SEQ, "conflict");
	pdelta_last_error_info(h, &ei);
	EXPECT(ei.detail == 2 && ei.value == 5 && !ei.retryable, "conflict detail %d value %llu", ei.detail,
	       (unsigned long long)ei.value);
	EXPECT(pdelta_delta(h, "x", 4, files[1].p, files[1].n, &r) == PDELTA_E_SEQ, "stale");
	pdelta_last_error_info(h, &ei);
	EXPECT(ei.detail == 1 && ei.value == 5, "stale detail");
	EXPECT(pdelta_delta(h, "x", 6, junk, sizeof junk, &r) == PDELTA_E_MALFORMED, "junk refused: %s",
	       pdelta_last_error(h));
	EXPECT(strlen(pdelta_last_error(h)) > 0 && r.data == NULL, "junk message");
	/* the refused request left the state alone: files[1] is a DELTA against files[0] */
	EXPECT(pdelta_delta(h, "x", 7, files[1].p, files[1].n, &r) == 0 && r.status == PDELTA_DELTA &&
		       same(&expect[1], r.data, r.len),
	       "state kept after a refused profile (status %d)", r.status);
	pdelta_result_free(&r);
	/* handle-chosen numbering continues after the highest explicit seq */
	EXPECT(pdelta_delta(h, "x", 0, files[2].p, files[2].n, &r) == 0 && r.seq == 8 &&
		       same(&expect[2], r.data, r.len),
	       "auto seq after explicit: %llu", (unsigned long long)r.seq);
	pdelta_result_free(&r);
	EXPECT(pdelta_delta(h, "", 0, files[0].p, files[0].n, &r) == PDELTA_E_ARG, "empty stream name");
	EXPECT(pdelta_delta(h, "a\nb", 0, files[0].p, files[0].n, &r) == PDELTA_E_ARG, "control char");
	pdelta_free(h);
}

static void test_call_order(void)
{
	pdelta *h = local_handle(1);
	pdelta_result r;
	const void *p;
	size_t n;
	char *json;

	EXPECT(pdelta_feed(h, "x", 1) == PDELTA_E_ARG, "feed before begin");
	EXPECT(pdelta_finish(h, &r) == PDELTA_E_ARG, "finish before begin");
	EXPECT(pdelta_read(h, &p, &n) == PDELTA_E_ARG, "read before finish");
	EXPECT(pdelta_begin(h, "o", 0, NULL, NULL) == 0, "begin");
	EXPECT(pdelta_begin(h, "o", 0, NULL, NULL) == PDELTA_E_ARG, "second begin while open");
	EXPECT(pdelta_delta(h, "o", 0, files[0].p, files[0].n, &r) == PDELTA_E_ARG, "onecall while open");
	pdelta_abort(h);
	EXPECT(pdelta_delta(h, "o", 0, files[0].p, files[0].n, &r) == 0, "after abort: %s",
	       pdelta_last_error(h));
	pdelta_result_free(&r);
	EXPECT(pdelta_admin(h, "stats", NULL, &json, &n) == PDELTA_E_ARG, "admin in local mode");
	pdelta_free(h);
}

/* A port nobody listens on. */
static int dead_port(void)
{
	struct sockaddr_in a;
	socklen_t l = sizeof a;
	int fd = socket(AF_INET, SOCK_STREAM, 0), port;

	memset(&a, 0, sizeof a);
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	bind(fd, (struct sockaddr *)&a, sizeof a);
	getsockname(fd, (struct sockaddr *)&a, &l);
	port = ntohs(a.sin_port);
	close(fd);
	return port;
}

static double ms_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void test_unreachable(void)
{
	pdelta_opts o;
	pdelta *h;
	pdelta_result r;
	pdelta_error_info ei;
	char srv[64], err[256];
	double t0;
	int rc;

	snprintf(srv, sizeof srv, "127.0.0.1:%d", dead_port());
	pdelta_opts_init(&o);
	o.server = srv;
	o.max_attempts = 3;
	o.backoff_base_ms = 40;
	o.backoff_max_ms = 80;
	o.incarnation = 42;
	if (pdelta_new(&o, &h, err, sizeof err))
		return;
	t0 = ms_now();
	rc = pdelta_delta(h, "u", 0, files[0].p, files[0].n, &r);
	pdelta_last_error_info(h, &ei);
	EXPECT(rc == PDELTA_E_IO && ei.retryable && r.attempts == 3, "unreachable: rc %d attempts %u (%s)",
	       rc, r.attempts, pdelta_last_error(h));
	/* two backoffs: each half fixed, half jitter: 20..40 then 40..80 ms */
	EXPECT(ms_now() - t0 >= 55 && ms_now() - t0 < 2000, "backoff took %.0f ms", ms_now() - t0);
	EXPECT(r.seq == 1 && pdelta_last_seq(h, "u") == 1, "the seq of the failed request is reported");
	pdelta_free(h);

	o.local_fallback = 1;
	o.max_attempts = 2;
	if (pdelta_new(&o, &h, err, sizeof err))
		return;
	for (int i = 0; i < nfiles && i < 3; i++) {
		rc = pdelta_delta(h, "u", 0, files[i].p, files[i].n, &r);
		EXPECT(rc == 0 && r.local, "fallback %d: %s", i, pdelta_last_error(h));
		EXPECT(i || (r.status == PDELTA_BASELINE && r.reason == PDELTA_REASON_MOVED),
		       "fallback: first is BASELINE moved (%d %d)", r.status, r.reason);
		EXPECT(same(&expect[i], r.data, r.len), "fallback %d: engine bytes", i);
		pdelta_result_free(&r);
	}
	{
		pdelta_stats st;
		pdelta_stats_get(h, &st);
		EXPECT(st.fallbacks == 1 && st.connects == 0, "fallback stats %llu",
		       (unsigned long long)st.fallbacks);
	}
	pdelta_free(h);
}

int main(int argc, char **argv)
{
	char def[1024];
	const char *dir = argv[1];

	if (argc > 2) {
		fprintf(stderr, "usage: test_client [PROFILE_DIR]\n");
		return 2;
	}
	if (argc == 1) {
		/* The repository's fixtures; the unit tests run from the repository root. */
		const char *td = getenv("PDELTA_FIXTURES");

		snprintf(def, sizeof def, "%s/profiles/heap-small", td ? td : "tests/data");
		dir = def;
	}
	load_dir(dir);
	if (nfiles < 3) {
		fprintf(stderr, "test_client: need at least 3 profiles in %s\n", dir);
		return 2;
	}
	engine_expect(42);
	test_options();
	test_errors();
	test_onecall_local();
	test_streaming_local();
	test_rules_local();
	test_call_order();
	test_unreachable();
	for (int i = 0; i < nfiles; i++) {
		free(files[i].p);
		free(expect[i].p);
	}
	return TH_DONE_AS("test_client");
}
