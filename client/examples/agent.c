/*
 * agent.c: a small profiling agent built on libpdelta, meant to be copied.
 *
 * It takes cumulative pprof profiles (as Go's runtime/pprof writes them),
 * sends them to pdeltad with libpdelta's streaming API and writes the delta
 * profiles it gets back. Neither a whole profile nor a whole delta is ever
 * held in memory: the input is fed in 64 KiB chunks and the delta is written
 * to disk chunk by chunk.
 *
 *   agent [--server HOST:PORT --ca CA [--cert C --key K] [--token-file F]]
 *         --stream NAME -o OUTDIR [--interval SECONDS] [--count N]
 *         (--watch FILE | FILE... | -)
 *
 *   FILE...       send each file once, in order (sleeping --interval between)
 *   --watch FILE  re-read FILE every --interval seconds (--count times, 0 = forever),
 *                 e.g. a profile your application rewrites periodically
 *   -             one profile from standard input
 *
 * Without --server the deltas are computed in process (local mode). Deltas
 * go to OUTDIR/<basename of FILE> or OUTDIR/delta-<seq>.pb.gz, written to a
 * temporary file and renamed, so a reader never sees half a delta.
 *
 * Retries: for files, the replay callback seeks back to the start, so
 * libpdelta can resend a request by itself after a connection failure.
 * Standard input cannot be rewound: a failed upload from stdin is reported
 * and not retried.
 *
 * Build: cc agent.c $(pkg-config --cflags --libs pdelta)
 */
#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <pdelta.h>

static volatile sig_atomic_t stopping;

static void on_signal(int sig)
{
	(void)sig;
	stopping = 1;
}

typedef struct input {
	FILE *f;
	int rewindable;
	unsigned char buf[64 * 1024];
} input;

static int feed_input(pdelta *h, input *in)
{
	size_t n;
	int rc;

	while ((n = fread(in->buf, 1, sizeof in->buf, in->f)) > 0)
		if ((rc = pdelta_feed(h, in->buf, n)) != PDELTA_OK)
			return rc;
	return ferror(in->f) ? PDELTA_E_IO : PDELTA_OK;
}

/* libpdelta calls this when it must send the same request again. */
static int replay_input(void *ctx, pdelta *h)
{
	input *in = ctx;

	if (fseek(in->f, 0, SEEK_SET) != 0)
		return -1;
	return feed_input(h, in) == PDELTA_OK ? 0 : -1;
}

/* Sends one profile and streams its delta into out_path. */
static int send_profile(pdelta *h, const char *stream, input *in, const char *out_path)
{
	char tmp[4096];
	pdelta_result res;
	const void *chunk;
	size_t n;
	FILE *out;
	int rc;

	rc = pdelta_begin(h, stream, 0, in->rewindable ? replay_input : NULL, in);
	if (rc == PDELTA_OK)
		rc = feed_input(h, in);
	if (rc == PDELTA_OK)
		rc = pdelta_finish(h, &res);
	if (rc != PDELTA_OK) {
		fprintf(stderr, "agent: %s: %s\n", stream, pdelta_last_error(h));
		pdelta_abort(h);
		return -1;
	}
	snprintf(tmp, sizeof tmp, "%s.tmp", out_path);
	if (!(out = fopen(tmp, "wb"))) {
		fprintf(stderr, "agent: %s: %s\n", tmp, strerror(errno));
		pdelta_abort(h);
		return -1;
	}
	while ((rc = pdelta_read(h, &chunk, &n)) == PDELTA_OK || rc == PDELTA_RESTART) {
		if (rc == PDELTA_RESTART) { /* the delta starts again: drop what we wrote */
			fflush(out);
			if (ftruncate(fileno(out), 0) != 0 || fseek(out, 0, SEEK_SET) != 0)
				break;
			continue;
		}
		if (n == 0)
			break; /* complete and verified */
		if (fwrite(chunk, 1, n, out) != n)
			break;
	}
	if (fclose(out) != 0 || rc != PDELTA_OK || rename(tmp, out_path) != 0) {
		fprintf(stderr, "agent: %s: %s\n", out_path, rc ? pdelta_last_error(h) : strerror(errno));
		pdelta_abort(h);
		unlink(tmp);
		return -1;
	}
	pdelta_result_get(h, &res);
	printf("%s seq=%llu %s %s samples %llu -> %llu, %llu -> %llu bytes%s\n", out_path,
	       (unsigned long long)res.seq, pdelta_status_name(res.status),
	       pdelta_reason_name(res.reason), (unsigned long long)res.samples_in,
	       (unsigned long long)res.samples_out, (unsigned long long)res.bytes_in,
	       (unsigned long long)res.bytes_out, res.attempts > 1 ? " (retried)" : "");
	fflush(stdout);
	return 0;
}

static int send_path(pdelta *h, const char *stream, const char *path, const char *out_path, input *in)
{
	int rc;

	if (!(in->f = fopen(path, "rb"))) {
		fprintf(stderr, "agent: %s: %s\n", path, strerror(errno));
		return -1;
	}
	in->rewindable = 1;
	rc = send_profile(h, stream, in, out_path);
	fclose(in->f);
	return rc;
}

static void sleep_interval(unsigned seconds)
{
	struct timespec ts = {(time_t)seconds, 0};
	while (!stopping && nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static void usage(void)
{
	fprintf(stderr,
		"usage: agent [--server HOST:PORT --ca CA [--cert C --key K] [--token-file F]]\n"
		"             --stream NAME -o OUTDIR [--interval SECONDS] [--count N]\n"
		"             (--watch FILE | FILE... | -)\n");
}

static int read_token(const char *path, char *buf, size_t len)
{
	FILE *f = fopen(path, "r");

	if (!f || !fgets(buf, (int)len, f)) {
		if (f)
			fclose(f);
		return -1;
	}
	fclose(f);
	buf[strcspn(buf, "\r\n")] = 0;
	return buf[0] ? 0 : -1;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{"server", required_argument, NULL, 's'}, {"ca", required_argument, NULL, 'c'},
		{"cert", required_argument, NULL, 'C'},   {"key", required_argument, NULL, 'K'},
		{"token-file", required_argument, NULL, 't'}, {"stream", required_argument, NULL, 'n'},
		{"interval", required_argument, NULL, 'i'}, {"count", required_argument, NULL, 'k'},
		{"watch", required_argument, NULL, 'w'}, {NULL, 0, NULL, 0},
	};
	const char *stream = NULL, *outdir = NULL, *watch = NULL;
	unsigned interval = 0, count = 0;
	char token[1024], out_path[4096], err[256];
	pdelta_opts o;
	pdelta *h;
	input *in = malloc(sizeof *in);
	int ch, failures = 0;

	pdelta_opts_init(&o);
	o.client_name = "example-agent";
	while ((ch = getopt_long(argc, argv, "o:", longopts, NULL)) != -1) {
		switch (ch) {
		case 's': o.server = optarg; break;
		case 'c': o.ca_file = optarg; break;
		case 'C': o.cert_file = optarg; break;
		case 'K': o.key_file = optarg; break;
		case 't':
			if (read_token(optarg, token, sizeof token)) {
				fprintf(stderr, "agent: cannot read a token from %s\n", optarg);
				return 2;
			}
			o.token = token;
			break;
		case 'n': stream = optarg; break;
		case 'o': outdir = optarg; break;
		case 'i': interval = (unsigned)atoi(optarg); break;
		case 'k': count = (unsigned)atoi(optarg); break;
		case 'w': watch = optarg; break;
		default: usage(); return 2;
		}
	}
	if (!in || !stream || !outdir || (!watch && optind >= argc)) {
		usage();
		return 2;
	}
	mkdir(outdir, 0777);
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	if (pdelta_new(&o, &h, err, sizeof err) != PDELTA_OK) {
		fprintf(stderr, "agent: %s\n", err);
		return 1;
	}
	if (watch) {
		for (unsigned i = 0; !stopping && (count == 0 || i < count); i++) {
			if (i)
				sleep_interval(interval);
			snprintf(out_path, sizeof out_path, "%s/delta-%06llu.pb.gz", outdir,
				 (unsigned long long)pdelta_last_seq(h, stream) + 1);
			failures += send_path(h, stream, watch, out_path, in) != 0;
		}
	} else if (strcmp(argv[optind], "-") == 0) {
		in->f = stdin;
		in->rewindable = 0;
		snprintf(out_path, sizeof out_path, "%s/delta-%06llu.pb.gz", outdir, 1ULL);
		failures += send_profile(h, stream, in, out_path) != 0;
	} else {
		for (int i = optind; i < argc && !stopping; i++) {
			char *copy = strdup(argv[i]);
			if (i > optind)
				sleep_interval(interval);
			snprintf(out_path, sizeof out_path, "%s/%s", outdir, basename(copy));
			failures += send_path(h, stream, argv[i], out_path, in) != 0;
			free(copy);
		}
	}
	pdelta_free(h);
	free(in);
	return failures ? 1 : 0;
}
