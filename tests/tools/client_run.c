/*
 * client_run: drives libpdelta over a sequence of profile files, for the
 * client integration tests (tests/integration/test_client_*.sh).
 *
 *   client_run [--server H:P --ca CA (--token T | --cert C --key K)] [--local]
 *              --stream NAME -o OUTDIR [--api onecall|stream|pull]
 *              [--fallback] [--attempts N] [--backoff MS] [--backoff-max MS]
 *              [--delay-ms MS] [--first keep|drop|auto] [--type NAME=delta|gauge]
 *              [--incarnation N] [--seq N] FILE...
 *
 * --api picks the API under test: pdelta_delta() (onecall), the streaming API
 * with pdelta_read_all() and a replay callback (stream), or with pull reads
 * of pdelta_read() in small steps (pull). Each file's delta goes to
 * OUTDIR/<basename>; one status line per file, in the format of
 * `pdelta seq` / `pdelta send` (tests/oracle/check_seq.py reads it), then a
 * "stats" line with the handle's counters on stderr.
 */
#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "pdelta.h"
#include "pdelta_cliopt.h"

typedef struct run_opts {
	pdelta_opts o;
	pdelta_override ovr[32];
	const char *stream, *outdir, *api;
	unsigned delay_ms;
	uint64_t seq;
} run_opts;

static char last_err[600];

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int read_file(const char *path, unsigned char **data, size_t *len)
{
	FILE *f = fopen(path, "rb");
	struct stat st;

	if (!f || fstat(fileno(f), &st)) {
		if (f)
			fclose(f);
		return -1;
	}
	*len = (size_t)st.st_size;
	*data = malloc(*len ? *len : 1);
	if (!*data || fread(*data, 1, *len, f) != *len) {
		free(*data);
		fclose(f);
		return -1;
	}
	fclose(f);
	return 0;
}

static int run_onecall(pdelta *h, run_opts *r, const char *path, uint64_t seq, FILE *out,
		       pdelta_result *res)
{
	unsigned char *data;
	size_t len;
	int rc;

	if (read_file(path, &data, &len))
		return PDELTA_E_ARG;
	rc = pdelta_delta(h, r->stream, seq, data, len, res);
	free(data);
	if (!rc && fwrite(res->data, 1, res->len, out) != res->len)
		rc = PDELTA_E_IO;
	pdelta_result_free(res);
	return rc;
}

/* Pull API in deliberately uneven steps. */
static int pull_all(pdelta *h, FILE *out)
{
	const void *p;
	size_t n;
	int rc;

	for (;;) {
		rc = pdelta_read(h, &p, &n);
		if (rc == PDELTA_RESTART) {
			cli_file_sink(out, NULL, 0);
			continue;
		}
		if (rc || n == 0)
			return rc;
		if (fwrite(p, 1, n, out) != n)
			return PDELTA_E_IO;
	}
}

static int run_stream(pdelta *h, run_opts *r, const char *path, uint64_t seq, FILE *out,
		      pdelta_result *res)
{
	cli_file *s = malloc(sizeof *s);
	int rc;

	if (!s || !(s->in = fopen(path, "rb"))) {
		free(s);
		return PDELTA_E_ARG;
	}
	rc = pdelta_begin(h, r->stream, seq, cli_file_replay, s);
	if (!rc)
		rc = cli_file_feed(h, s);
	if (!rc)
		rc = pdelta_finish(h, res);
	if (!rc)
		rc = strcmp(r->api, "pull") == 0 ? pull_all(h, out) : pdelta_read_all(h, cli_file_sink, out);
	pdelta_result_get(h, res);
	if (rc) {
		snprintf(last_err, sizeof last_err, "%s", pdelta_last_error(h));
		pdelta_abort(h); /* clears the last error */
	}
	fclose(s->in);
	free(s);
	return rc;
}

static int one_file(pdelta *h, run_opts *r, const char *path, const char *base, uint64_t seq)
{
	char out[4096];
	pdelta_result res;
	double t0 = now_ms();
	FILE *f;
	int rc;

	memset(&res, 0, sizeof res);
	last_err[0] = 0;
	snprintf(out, sizeof out, "%s/%s", r->outdir, base);
	if (!(f = fopen(out, "w+b")))
		return -1;
	if (strcmp(r->api, "onecall") == 0)
		rc = run_onecall(h, r, path, seq, f, &res);
	else
		rc = run_stream(h, r, path, seq, f, &res);
	fclose(f);
	if (rc) {
		unlink(out);
		printf("%s ERROR %d %s\n", base, rc, last_err[0] ? last_err : pdelta_last_error(h));
		return rc;
	}
	{
		struct stat st;
		if (stat(out, &st) == 0)
			res.bytes_out = (uint64_t)st.st_size;
	}
	printf("%s %s %s", base, pdelta_status_name(res.status), pdelta_reason_name(res.reason));
	if (res.status == PDELTA_DUPLICATE)
		printf(" orig=%s", pdelta_status_name(res.orig_status));
	printf(" samples_in=%llu samples_out=%llu bytes_in=%llu bytes_out=%llu ms=%.2f attempts=%u%s\n",
	       (unsigned long long)res.samples_in, (unsigned long long)res.samples_out,
	       (unsigned long long)res.bytes_in, (unsigned long long)res.bytes_out, now_ms() - t0,
	       res.attempts, res.local ? " local=1" : "");
	return 0;
}

enum { R_SERVER = 256, R_CA, R_TOKEN, R_CERT, R_KEY, R_LOCAL, R_STREAM, R_API, R_FALLBACK,
       R_ATTEMPTS, R_BACKOFF, R_BACKOFF_MAX, R_DELAY, R_FIRST, R_TYPE, R_INC, R_SEQ, R_TIMEOUT };

static const struct option longopts[] = {
	{"server", 1, NULL, R_SERVER}, {"ca", 1, NULL, R_CA},		{"token", 1, NULL, R_TOKEN},
	{"cert", 1, NULL, R_CERT},     {"key", 1, NULL, R_KEY},		{"local", 0, NULL, R_LOCAL},
	{"stream", 1, NULL, R_STREAM}, {"out", 1, NULL, 'o'},		{"api", 1, NULL, R_API},
	{"fallback", 0, NULL, R_FALLBACK}, {"attempts", 1, NULL, R_ATTEMPTS},
	{"backoff", 1, NULL, R_BACKOFF}, {"backoff-max", 1, NULL, R_BACKOFF_MAX},
	{"delay-ms", 1, NULL, R_DELAY}, {"first", 1, NULL, R_FIRST},	{"type", 1, NULL, R_TYPE},
	{"incarnation", 1, NULL, R_INC}, {"seq", 1, NULL, R_SEQ},	{"timeout", 1, NULL, R_TIMEOUT},
	{NULL, 0, NULL, 0},
};

static int add_type(run_opts *r, const char *a)
{
	const char *eq = strchr(a, '=');
	size_t n = r->o.noverrides;

	if (!eq || n >= 32)
		return -1;
	r->ovr[n].type = strndup(a, (size_t)(eq - a));
	r->ovr[n].policy = strcmp(eq + 1, "gauge") == 0 ? PDELTA_POLICY_GAUGE : PDELTA_POLICY_DELTA;
	r->o.overrides = r->ovr;
	r->o.noverrides = n + 1;
	return 0;
}

static int parse(run_opts *r, int argc, char **argv)
{
	int ch, local = 0;

	while ((ch = getopt_long(argc, argv, "o:", longopts, NULL)) != -1) {
		switch (ch) {
		case R_SERVER: r->o.server = optarg; break;
		case R_CA: r->o.ca_file = optarg; break;
		case R_TOKEN: r->o.token = optarg; break;
		case R_CERT: r->o.cert_file = optarg; break;
		case R_KEY: r->o.key_file = optarg; break;
		case R_LOCAL: local = 1; break;
		case R_STREAM: r->stream = optarg; break;
		case 'o': r->outdir = optarg; break;
		case R_API: r->api = optarg; break;
		case R_FALLBACK: r->o.local_fallback = 1; break;
		case R_ATTEMPTS: r->o.max_attempts = (unsigned)atoi(optarg); break;
		case R_BACKOFF: r->o.backoff_base_ms = (unsigned)atoi(optarg); break;
		case R_BACKOFF_MAX: r->o.backoff_max_ms = (unsigned)atoi(optarg); break;
		case R_DELAY: r->delay_ms = (unsigned)atoi(optarg); break;
		case R_FIRST:
			r->o.first_policy = strcmp(optarg, "drop") == 0	  ? PDELTA_FIRST_DROP
					    : strcmp(optarg, "auto") == 0 ? PDELTA_FIRST_AUTO
									  : PDELTA_FIRST_KEEP;
			break;
		case R_TYPE:
			if (add_type(r, optarg))
				return -1;
			break;
		case R_INC: r->o.incarnation = strtoull(optarg, NULL, 0); break;
		case R_SEQ: r->seq = strtoull(optarg, NULL, 0); break;
		case R_TIMEOUT: r->o.io_timeout_ms = (unsigned)atoi(optarg); break;
		default: return -1;
		}
	}
	if (local)
		r->o.server = NULL;
	return r->stream && r->outdir && optind < argc ? 0 : -1;
}

int main(int argc, char **argv)
{
	run_opts r;
	pdelta *h;
	pdelta_stats st;
	char err[512];
	int failures = 0;

	memset(&r, 0, sizeof r);
	pdelta_opts_init(&r.o);
	r.api = "stream";
	r.o.client_name = "client_run";
	if (parse(&r, argc, argv)) {
		fprintf(stderr, "usage: see the comment at the top of tests/tools/client_run.c\n");
		return 2;
	}
	mkdir(r.outdir, 0777);
	if (pdelta_new(&r.o, &h, err, sizeof err)) {
		fprintf(stderr, "client_run: %s\n", err);
		return 1;
	}
	for (int i = optind; i < argc; i++) {
		char *dup = strdup(argv[i]);
		uint64_t seq = r.seq ? r.seq + (uint64_t)(i - optind) : 0;

		if (one_file(h, &r, argv[i], basename(dup), seq))
			failures++;
		fflush(stdout);
		free(dup);
		if (r.delay_ms && i + 1 < argc)
			usleep(r.delay_ms * 1000u);
	}
	pdelta_stats_get(h, &st);
	fprintf(stderr,
		"stats connects=%llu requests=%llu retries=%llu duplicates=%llu resumed=%llu restarts=%llu "
		"fallbacks=%llu forks=%llu bytes_sent=%llu bytes_received=%llu\n",
		(unsigned long long)st.connects, (unsigned long long)st.requests,
		(unsigned long long)st.retries, (unsigned long long)st.duplicates,
		(unsigned long long)st.resumed, (unsigned long long)st.restarts, (unsigned long long)st.fallbacks,
		(unsigned long long)st.forks, (unsigned long long)st.bytes_sent,
		(unsigned long long)st.bytes_received);
	pdelta_free(h);
	for (size_t i = 0; i < r.o.noverrides; i++)
		free((void *)(uintptr_t)r.ovr[i].type);
	return failures ? 1 : 0;
}
