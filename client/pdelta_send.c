/*
 * pdelta_send: `pdelta send`, the command-line client of pdeltad.
 *
 *   pdelta send --server HOST:PORT --ca CA [--cert C --key K]
 *               [--token T | --token-file F] --stream NAME -o OUTDIR
 *               [--first keep|drop|auto] [--type NAME=delta|gauge]... FILE...
 *
 * Sends FILE... (cumulative profiles of one stream, in order) through
 * libpdelta's streaming API (the file is read in chunks and replayed from
 * disk if a retry needs it), writes each delta to OUTDIR/<basename>
 * atomically (temporary file + rename) and prints one status line per file:
 *
 *   <basename> DELTA|BASELINE|DUPLICATE <reason> [orig=STATUS] samples_in=N
 *       samples_out=N bytes_in=N bytes_out=N ms=F attempts=N
 *
 * or `<basename> ERROR <code> <message>`. With `-o -` (one FILE) the delta
 * goes to standard output, whole and only on success (it is gathered in
 * memory), and the status line to stderr. An invalid file is reported and
 * skipped (the stream's state is unchanged); a failure that leaves the
 * request's fate unknown (server unreachable after all retries) stops the
 * run, since later deltas would silently miss that interval: the message says
 * how to resend. Exit status: 0 all sent, 1 a file failed, 2 usage.
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

#include <openssl/crypto.h>

#include "pd_buf.h"
#include "pd_clock.h"
#include "pd_err.h"
#include "pd_version.h"
#include "pdelta.h"
#include "pdelta_cliopt.h"

#define SEND_MAX_TYPES 32

int pdelta_cmd_send(int argc, char **argv);

typedef struct send_opts {
	pdelta_opts o;
	pdelta_override ovr[SEND_MAX_TYPES];
	char token[1024];
	const char *stream, *outdir;
	uint64_t seq;
	uint64_t after; /* --after: the seq last answered before the first file */
	int has_after;
	int local;
	int to_stdout; /* -o -: the one delta to stdout, status lines to stderr */
} send_opts;

static void send_usage(FILE *f)
{
	fprintf(f,
		"usage: pdelta send --server HOST:PORT --ca CA [--cert C --key K]\n"
		"                   [--token T | --token-file F] --stream NAME -o OUTDIR\n"
		"                   [options] FILE...\n"
		"  --server HOST:PORT      pdeltad address ([v6]:port for IPv6); H1:P1,H2:P2,... (or a\n"
		"                          name with several addresses): each stream goes to its node\n"
		"                          (rendezvous hashing), the next one while that one is down\n"
		"  --ca FILE               CA bundle that signed the server certificate\n"
		"  --cert FILE, --key FILE client certificate and key (mTLS)\n"
		"  --token T               tenant token (or --token-file F, first line)\n"
		"  --server-name NAME      name to verify in the server certificate (default: HOST)\n"
		"  --stream NAME           stream the files belong to\n"
		"  -o, --out DIR           where the deltas go (DIR/<basename of FILE>);\n"
		"                          '-' = the delta of one FILE to stdout, status to stderr\n"
		"  --first keep|drop|auto  first-profile policy (default keep)\n"
		"  --type NAME=delta|gauge per-sample-type policy override (repeatable)\n"
		"  --seq N                 sequence number of the first file (default: 1, 2, ...)\n"
		"  --after SEQ             the sequence last answered before the first file (a new\n"
		"                          process continuing a stream): lets a protocol-3 server answer\n"
		"                          BASELINE state-lost if its state is older (restored backup)\n"
		"  --incarnation N         producer incarnation (default: random per run)\n"
		"  --producer-start NS     producer start, unix ns (for --first auto)\n"
		"  --attempts N            tries per file, retries included (default 5)\n"
		"  --connect-timeout MS    TCP+TLS+HELLO deadline (default 5000)\n"
		"  --timeout MS            longest silence of the server (default 30000)\n"
		"  --local                 no server: run the engine in this process\n"
		"  --local-fallback        run locally when the server stays unreachable\n"
		"  --version               version, protocols and libraries\n");
}

static int parse_u64(const char *what, const char *v, uint64_t *out)
{
	char *end;

	errno = 0;
	*out = strtoull(v, &end, 0);
	if (errno || !*v || *end || *v == '-') {
		fprintf(stderr, "pdelta send: %s wants a number, got '%s'\n", what, v);
		return -1;
	}
	return 0;
}

static int parse_type(send_opts *s, const char *arg)
{
	const char *eq = strchr(arg, '=');
	size_t n = s->o.noverrides;

	if (!eq || eq == arg || n >= SEND_MAX_TYPES ||
	    (strcmp(eq + 1, "delta") != 0 && strcmp(eq + 1, "gauge") != 0)) {
		fprintf(stderr, "pdelta send: --type wants NAME=delta|gauge (at most %d), got '%s'\n",
			SEND_MAX_TYPES, arg);
		return -1;
	}
	s->ovr[n].type = strndup(arg, (size_t)(eq - arg));
	s->ovr[n].policy = strcmp(eq + 1, "gauge") == 0 ? PDELTA_POLICY_GAUGE : PDELTA_POLICY_DELTA;
	if (!s->ovr[n].type)
		return -1;
	s->o.noverrides = n + 1;
	s->o.overrides = s->ovr;
	return 0;
}

static int parse_first(send_opts *s, const char *v)
{
	if (cli_first_policy(v, &s->o.first_policy)) {
		fprintf(stderr, "pdelta send: --first must be keep, drop or auto\n");
		return -1;
	}
	return 0;
}

enum {
	O_STREAM = 256, O_FIRST, O_TYPE, O_SEQ, O_INC, O_START, O_ATTEMPTS, O_CTIMEOUT, O_TIMEOUT,
	O_LOCAL, O_FALLBACK, O_VERSION, O_AFTER
};

static const struct option send_long[] = {
	CLI_CONN_LONGOPTS,
	{"stream", required_argument, NULL, O_STREAM},
	{"out", required_argument, NULL, 'o'},
	{"first", required_argument, NULL, O_FIRST},
	{"type", required_argument, NULL, O_TYPE},
	{"seq", required_argument, NULL, O_SEQ},
	{"after", required_argument, NULL, O_AFTER},
	{"incarnation", required_argument, NULL, O_INC},
	{"producer-start", required_argument, NULL, O_START},
	{"attempts", required_argument, NULL, O_ATTEMPTS},
	{"connect-timeout", required_argument, NULL, O_CTIMEOUT},
	{"timeout", required_argument, NULL, O_TIMEOUT},
	{"local", no_argument, NULL, O_LOCAL},
	{"local-fallback", no_argument, NULL, O_FALLBACK},
	{"help", no_argument, NULL, 'h'},
	{"version", no_argument, NULL, O_VERSION},
	{NULL, 0, NULL, 0},
};

static int parse_one(send_opts *s, int ch, const char *arg)
{
	uint64_t v;
	int rc = cli_conn_opt("pdelta send", &s->o, s->token, sizeof s->token, ch, arg);

	if (rc <= 0)
		return rc;
	switch (ch) {
	case O_STREAM: s->stream = arg; return 0;
	case 'o': s->outdir = arg; return 0;
	case O_FIRST: return parse_first(s, arg);
	case O_TYPE: return parse_type(s, arg);
	case O_SEQ: return parse_u64("--seq", arg, &s->seq);
	case O_AFTER: s->has_after = 1; return parse_u64("--after", arg, &s->after);
	case O_INC: return parse_u64("--incarnation", arg, &s->o.incarnation);
	case O_START:
		if (parse_u64("--producer-start", arg, &v))
			return -1;
		s->o.producer_start_ns = (int64_t)v;
		return 0;
	case O_LOCAL: s->local = 1; return 0;
	case O_FALLBACK: s->o.local_fallback = 1; return 0;
	default: break;
	}
	if (parse_u64("option", arg, &v) || v > 86400000u)
		return -1;
	if (ch == O_ATTEMPTS)
		s->o.max_attempts = v ? (unsigned)v : 1;
	else if (ch == O_CTIMEOUT)
		s->o.connect_timeout_ms = (unsigned)v;
	else
		s->o.io_timeout_ms = (unsigned)v;
	return 0;
}

static int parse_args(send_opts *s, int argc, char **argv)
{
	int ch;

	optind = 1;
	while ((ch = getopt_long(argc, argv, "o:h", send_long, NULL)) != -1) {
		if (ch == 'h') {
			send_usage(stdout);
			exit(0);
		}
		if (ch == O_VERSION) {
			char libs[64];
			snprintf(libs, sizeof libs, "OpenSSL %s", OpenSSL_version(OPENSSL_VERSION_STRING));
			pd_version_print(stdout, "pdelta", libs);
			exit(0);
		}
		if (ch == '?' || parse_one(s, ch, optarg))
			return -1;
	}
	if (!s->stream || !s->outdir || optind >= argc) {
		fprintf(stderr, "pdelta send: --stream, -o OUTDIR and at least one FILE are required\n");
		return -1;
	}
	if (!s->local && !s->o.server) {
		fprintf(stderr, "pdelta send: --server HOST:PORT is required (or --local)\n");
		return -1;
	}
	s->to_stdout = strcmp(s->outdir, "-") == 0;
	if (s->to_stdout && argc - optind != 1) {
		fprintf(stderr, "pdelta send: -o - takes one FILE (one delta on stdout)\n");
		return -1;
	}
	if (s->local)
		s->o.server = NULL;
	return 0;
}

/* ---- one file ------------------------------------------------------------------- */

/* -o -: the delta gathered in memory, written once it is complete. */
static int mem_sink(void *ctx, const void *p, size_t n)
{
	pd_buf *b = ctx;

	if (!p) { /* PDELTA_RESTART */
		pd_buf_reset(b);
		return 0;
	}
	return pd_buf_append(b, p, n, NULL) != PD_OK;
}

/* Reads the delta to stdout (s->to_stdout): all of it or nothing. */
static int read_to_stdout(pdelta *h, char *msg, size_t msglen, int *local_err)
{
	pd_buf b;
	int rc;

	pd_buf_init(&b, 0);
	rc = pdelta_read_all(h, mem_sink, &b);
	if (!rc && (fwrite(b.data, 1, b.len, stdout) != b.len || fflush(stdout) != 0)) {
		snprintf(msg, msglen, "standard output: %s", strerror(errno));
		rc = PDELTA_E_IO;
		*local_err = 1;
	}
	pd_buf_free(&b);
	return rc;
}

/* Reads the delta into the temporary file tmp (opened here, *of). */
static int read_to_file(pdelta *h, const char *tmp, FILE **of, char *msg, size_t msglen,
			int *local_err)
{
	if (!(*of = fopen(tmp, "wb"))) {
		snprintf(msg, msglen, "%.300s: %s", tmp, strerror(errno));
		*local_err = 1;
		return PDELTA_E_IO;
	}
	return pdelta_read_all(h, cli_file_sink, *of);
}

static double now_ms(void) { return (double)pd_now_ns() / 1e6; }

static const char *code_name(int code)
{
	return code == PDELTA_E_TLS ? "tls" : pd_code_name(code);
}

static void print_line(FILE *f, const char *base, const pdelta_result *r, double ms)
{
	fprintf(f, "%s %s %s", base, pdelta_status_name(r->status), pdelta_reason_name(r->reason));
	if (r->status == PDELTA_DUPLICATE)
		fprintf(f, " orig=%s", pdelta_status_name(r->orig_status));
	fprintf(f, " samples_in=%llu samples_out=%llu bytes_in=%llu bytes_out=%llu ms=%.2f attempts=%u%s\n",
	       (unsigned long long)r->samples_in, (unsigned long long)r->samples_out,
	       (unsigned long long)r->bytes_in, (unsigned long long)r->bytes_out, ms, r->attempts,
	       r->local ? " local=1" : "");
}

/* Sends one file and writes its delta; PDELTA_OK or the failing code. */
static int send_file(pdelta *h, send_opts *s, const char *path, const char *base, uint64_t seq,
		     cli_file *fc, pdelta_result *res, pdelta_error_info *ei, char *msg,
		     size_t msglen)
{
	char out[4096], tmp[4200];
	FILE *of = NULL;
	int rc, local_err = 0;

	memset(res, 0, sizeof *res);
	memset(ei, 0, sizeof *ei);
	msg[0] = 0;
	snprintf(out, sizeof out, "%s/%s", s->outdir, base);
	snprintf(tmp, sizeof tmp, "%s/.%s.tmp.%d", s->outdir, base, (int)getpid());
	if (!(fc->in = fopen(path, "rb"))) {
		snprintf(msg, msglen, "%s: %s", path, strerror(errno));
		return PDELTA_E_ARG;
	}
	rc = pdelta_begin(h, s->stream, seq, cli_file_replay, fc);
	if (!rc && (rc = cli_file_feed(h, fc)) < 0) {
		snprintf(msg, msglen, "%s: read error", path);
		rc = PDELTA_E_IO;
		local_err = 1;
	}
	if (!rc)
		rc = pdelta_finish(h, res);
	if (!rc)
		rc = s->to_stdout ? read_to_stdout(h, msg, msglen, &local_err)
				  : read_to_file(h, tmp, &of, msg, msglen, &local_err);
	if (rc && !local_err) {
		snprintf(msg, msglen, "%s", pdelta_last_error(h));
		pdelta_last_error_info(h, ei);
	}
	pdelta_result_get(h, res);
	if (rc)
		pdelta_abort(h);
	if (of && fclose(of) != 0 && !rc) {
		snprintf(msg, msglen, "%.300s: write error", tmp);
		rc = PDELTA_E_IO;
	}
	if (!rc && !s->to_stdout && rename(tmp, out) != 0) {
		snprintf(msg, msglen, "%.300s: %s", out, strerror(errno));
		rc = PDELTA_E_IO;
	}
	if (rc && of)
		unlink(tmp);
	fclose(fc->in);
	return rc;
}

/*
 * Why the run stops after a retryable failure, and how to resend. The request
 * can only have been applied if some of it went out: if no connection came up
 * during this file (connection refused, TLS or HELLO failed) and no profile
 * byte was queued, the server never saw it.
 */
static void explain_stop(pdelta *h, const pdelta_stats *before, const pdelta_result *res,
			 const char *path)
{
	pdelta_stats now;
	unsigned long long seq = res->seq, inc = pdelta_incarnation(h);

	pdelta_stats_get(h, &now);
	if (now.connects == before->connects && now.bytes_sent == before->bytes_sent)
		fprintf(stderr,
			"pdelta send: stopping: the server was not reached, nothing of seq %llu was "
			"sent and the stream is unchanged;\n  to go on, resend %s and the files after "
			"it (--seq %llu --incarnation %llu continues this run exactly)\n",
			seq, path, seq, inc);
	else
		fprintf(stderr,
			"pdelta send: stopping: seq %llu may have been applied without its delta "
			"reaching us, and later deltas would not cover it;\n  to retry, resend %s and "
			"the files after it with --seq %llu --incarnation %llu\n",
			seq, path, seq, inc);
}

static int send_all(pdelta *h, send_opts *s, int nfiles, char **files)
{
	cli_file *fc = malloc(sizeof *fc);
	FILE *status = s->to_stdout ? stderr : stdout;
	int failures = 0;

	if (!fc)
		return -1;
	if (s->has_after && pdelta_set_answered(h, s->stream, s->after) != PDELTA_OK) {
		free(fc);
		return -1;
	}
	for (int i = 0; i < nfiles; i++) {
		char *dup = strdup(files[i]);
		const char *base = dup ? basename(dup) : files[i];
		uint64_t seq = s->seq ? s->seq + (uint64_t)i : 0;
		double t0 = now_ms();
		pdelta_result res;
		pdelta_error_info ei;
		pdelta_stats before;
		char msg[600];
		int rc;

		pdelta_stats_get(h, &before);
		rc = send_file(h, s, files[i], base, seq, fc, &res, &ei, msg, sizeof msg);

		if (rc == PDELTA_OK) {
			print_line(status, base, &res, now_ms() - t0);
			free(dup);
			fflush(status);
			continue;
		}
		failures++;
		fprintf(status, "%s ERROR %s %s\n", base, code_name(rc),
			msg[0] ? msg : pdelta_strerror(rc));
		fflush(status);
		fprintf(stderr, "pdelta send: %s: %s\n", base, msg[0] ? msg : pdelta_strerror(rc));
		if (ei.retryable && ei.code == rc && !s->local) {
			explain_stop(h, &before, &res, files[i]);
			free(dup);
			break;
		}
		free(dup);
	}
	free(fc);
	return failures;
}

int pdelta_cmd_send(int argc, char **argv)
{
	char err[512];
	send_opts s;
	pdelta *h = NULL;
	int failures, rc;

	memset(&s, 0, sizeof s);
	pdelta_opts_init(&s.o);
	s.o.client_name = "pdelta-send";
	if (parse_args(&s, argc, argv)) {
		rc = 2;
		goto out;
	}
	if (!s.to_stdout && mkdir(s.outdir, 0777) != 0 && errno != EEXIST) {
		fprintf(stderr, "pdelta send: %s: %s\n", s.outdir, strerror(errno));
		rc = 1;
		goto out;
	}
	if ((rc = pdelta_new(&s.o, &h, err, sizeof err))) {
		fprintf(stderr, "pdelta send: %s\n", err);
		rc = rc == PDELTA_E_ARG ? 2 : 1;
		goto out;
	}
	failures = send_all(h, &s, argc - optind, argv + optind);
	if (failures)
		fprintf(stderr, "pdelta send: %d file(s) failed\n", failures);
	rc = failures ? 1 : 0;
out:
	pdelta_free(h);
	for (size_t i = 0; i < s.o.noverrides; i++)
		free((void *)(uintptr_t)s.ovr[i].type);
	return rc;
}
