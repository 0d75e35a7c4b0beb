/*
 * pdelta: command-line front end of the delta engine (local mode) and of the
 * client library (`send`).
 *
 *   pdelta diff [opts] PREV CUR -o OUT     delta of CUR against PREV's state
 *   pdelta seq  [opts] -o OUTDIR FILE...   one state through a sequence
 *   pdelta inspect [--json] FILE           what a profile holds
 *   pdelta --version
 *
 * Outputs are written to a temporary file and renamed into place, so an
 * error never leaves a partial output behind. `-o -` writes the delta to
 * standard output instead (diff, and seq of one FILE), whole and only on
 * success (it is built in memory first); the status line then goes to stderr
 * so that stdout carries nothing but the profile.
 */
#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "pd_engine.h"
#include "pd_inspect.h"
#include "pd_json.h"
#include "pd_slowdelta.h"
#include "pd_version.h"
#include "pdelta_cliopt.h"

#define MAX_OVERRIDES 16

typedef struct cli {
	pd_limits lim;
	pd_req req;
	pd_type_override ovr[MAX_OVERRIDES];
	const char *out;
	int json;
	int quiet;
	int shadow; /* seq: check every delta against the slow path */
	pd_slow_tally tally;
} cli;

static void usage(FILE *f)
{
	fprintf(f, "usage:\n"
		   "  pdelta diff [options] PREV CUR -o OUT\n"
		   "  pdelta seq [options] -o OUTDIR FILE...\n"
		   "  pdelta inspect [--json] FILE\n"
		   "  pdelta send --help   (send profiles to a pdeltad server)\n"
		   "  pdelta scrape --help (pull mode: scrape Go services, deliver deltas)\n"
		   "  pdelta --version\n"
		   "options:\n"
		   "  -o, --out PATH          output file (diff) or directory (seq); '-' = stdout\n"
		   "                          (diff, or seq of one FILE; status line to stderr)\n"
		   "  --first keep|drop|auto  first-profile policy (default keep)\n"
		   "  --type NAME=delta|gauge per-sample-type policy override (repeatable)\n"
		   "  --level N               gzip level of the output 1..9 (default 1), 0 = raw\n"
		   "  --json                  machine-readable output (inspect)\n"
		   "  --shadow                seq: check every delta against the independent slow\n"
		   "                          path; a mismatch is reported and fails the run\n"
		   "limits (all inputs are checked against them):\n");
	for (size_t i = 0; i < pd_limit_count; i++)
		fprintf(f, "  --%-22s %s (default %llu)\n", pd_limit_table[i].name,
			pd_limit_table[i].help, (unsigned long long)pd_limit_table[i].def);
}

static int read_file(const char *path, pd_buf *b, uint64_t max, pd_err *e)
{
	FILE *f = fopen(path, "rb");
	struct stat st;
	int rc = PD_OK;

	pd_buf_reset(b);
	if (!f)
		return pd_err_set(e, PD_E_IO, "%s: %s", path, strerror(errno));
	if (fstat(fileno(f), &st) == 0 && (uint64_t)st.st_size > max) {
		rc = pd_err_set(e, PD_E_LIMIT, "%s: %lld bytes, over the input limit of %llu", path,
				(long long)st.st_size, (unsigned long long)max);
		goto out;
	}
	for (;;) {
		size_t n;
		if ((rc = pd_buf_reserve(b, 1 << 16, e)))
			goto out;
		n = fread(b->data + b->len, 1, b->alloc - b->len, f);
		b->len += n;
		if (b->len > max) {
			rc = pd_err_set(e, PD_E_LIMIT, "%s: over the input limit of %llu bytes", path,
					(unsigned long long)max);
			goto out;
		}
		if (n == 0)
			break;
	}
	if (ferror(f))
		rc = pd_err_set(e, PD_E_IO, "%s: read error", path);
out:
	fclose(f);
	return rc;
}

static int file_sink(void *ctx, const uint8_t *p, size_t n)
{
	return fwrite(p, 1, n, (FILE *)ctx) == n ? 0 : -1;
}

static int buf_sink(void *ctx, const uint8_t *p, size_t n)
{
	return pd_buf_append(ctx, p, n, NULL) == PD_OK ? 0 : -1;
}

static bool is_stdout(const char *out) { return strcmp(out, "-") == 0; }

/* -o -: the delta is built in memory and written whole, only on success. */
static int delta_to_stdout(pd_engine *eng, cli *c, pd_buf *in, const pd_state *prev,
			   pd_state *next, pd_result *res, pd_err *e)
{
	pd_buf out;
	int rc;

	pd_buf_init(&out, 0);
	rc = pd_engine_run(eng, in->data, in->len, prev, next, &c->req, buf_sink, &out, res, e);
	if (!rc && (fwrite(out.data, 1, out.len, stdout) != out.len || fflush(stdout) != 0))
		rc = pd_err_set(e, PD_E_IO, "standard output: %s", strerror(errno));
	pd_buf_free(&out);
	return rc;
}

/* Runs the engine on one file, writing OUT atomically. */
static int delta_to_file(pd_engine *eng, cli *c, pd_buf *in, const char *path, const pd_state *prev,
			 pd_state *next, const char *out, pd_result *res, pd_err *e)
{
	char tmp[4096];
	FILE *f;
	int rc;

	if ((rc = read_file(path, in, c->lim.max_input, e)))
		return rc;
	if (is_stdout(out))
		return delta_to_stdout(eng, c, in, prev, next, res, e);
	if (snprintf(tmp, sizeof tmp, "%s.tmp.%d", out, (int)getpid()) >= (int)sizeof tmp)
		return pd_err_set(e, PD_E_ARG, "output path too long");
	f = fopen(tmp, "wb");
	if (!f)
		return pd_err_set(e, PD_E_IO, "%s: %s", tmp, strerror(errno));
	rc = pd_engine_run(eng, in->data, in->len, prev, next, &c->req, file_sink, f, res, e);
	if (fclose(f) != 0 && !rc)
		rc = pd_err_set(e, PD_E_IO, "%s: write failed", tmp);
	if (!rc && rename(tmp, out) != 0)
		rc = pd_err_set(e, PD_E_IO, "%s: %s", out, strerror(errno));
	if (rc)
		unlink(tmp);
	return rc;
}

/* The status line: on stdout, or on stderr when stdout carries the delta. */
static void print_status(const cli *c, const char *name, const pd_result *r)
{
	FILE *f = is_stdout(c->out) ? stderr : stdout;
	double ms = (double)(r->ns_inflate + r->ns_index + r->ns_hash + r->ns_diff + r->ns_encode +
			     r->ns_deflate) /
		    1e6;
	fprintf(f, "%s %s %s samples_in=%u samples_out=%u bytes_in=%llu bytes_out=%llu ms=%.2f\n", name,
	       pd_status_name(r->status), pd_reason_name(r->reason), r->samples_in, r->samples_out,
	       (unsigned long long)r->bytes_in, (unsigned long long)r->bytes_out, ms);
	if (getenv("PDELTA_PHASES"))
		fprintf(stderr, "  phases ms: inflate %.2f index %.2f hash %.2f diff %.2f encode %.2f deflate %.2f; raw in %llu out %llu\n",
			r->ns_inflate / 1e6, r->ns_index / 1e6, r->ns_hash / 1e6, r->ns_diff / 1e6,
			r->ns_encode / 1e6, r->ns_deflate / 1e6, (unsigned long long)r->bytes_raw,
			(unsigned long long)r->bytes_out_raw);
}

static int parse_type(cli *c, const char *arg, pd_err *e)
{
	const char *eq = strchr(arg, '=');
	char *name;
	int pol;

	if (!eq || eq == arg)
		return pd_err_set(e, PD_E_ARG, "--type wants NAME=delta|gauge, got '%s'", arg);
	if (strcmp(eq + 1, "delta") == 0)
		pol = PD_POLICY_DELTA;
	else if (strcmp(eq + 1, "gauge") == 0)
		pol = PD_POLICY_GAUGE;
	else
		return pd_err_set(e, PD_E_ARG, "--type %s: policy must be delta or gauge", arg);
	if (c->req.noverrides >= MAX_OVERRIDES)
		return pd_err_set(e, PD_E_ARG, "too many --type overrides (max %d)", MAX_OVERRIDES);
	name = strndup(arg, (size_t)(eq - arg));
	if (!name)
		return pd_err_set(e, PD_E_NOMEM, "out of memory");
	c->ovr[c->req.noverrides].name = name;
	c->ovr[c->req.noverrides].policy = pol;
	c->req.noverrides++;
	return PD_OK;
}

/* --first takes libpdelta's keywords; the engine's policies are the same numbers. */
_Static_assert((int)PD_FIRST_KEEP == PDELTA_FIRST_KEEP && (int)PD_FIRST_DROP == PDELTA_FIRST_DROP &&
		       (int)PD_FIRST_AUTO == PDELTA_FIRST_AUTO,
	       "the engine's and libpdelta's first-profile policies differ");

enum { OPT_FIRST = 256, OPT_TYPE, OPT_LEVEL, OPT_JSON, OPT_SHADOW, OPT_LIMIT0 };

static int parse_opts(cli *c, int argc, char **argv, pd_err *e)
{
	struct option opts[64];
	size_t n = 0;
	int ch, rc;

	opts[n++] = (struct option){"out", required_argument, NULL, 'o'};
	opts[n++] = (struct option){"first", required_argument, NULL, OPT_FIRST};
	opts[n++] = (struct option){"type", required_argument, NULL, OPT_TYPE};
	opts[n++] = (struct option){"level", required_argument, NULL, OPT_LEVEL};
	opts[n++] = (struct option){"json", no_argument, NULL, OPT_JSON};
	opts[n++] = (struct option){"shadow", no_argument, NULL, OPT_SHADOW};
	opts[n++] = (struct option){"help", no_argument, NULL, 'h'};
	for (size_t i = 0; i < pd_limit_count; i++)
		opts[n++] = (struct option){pd_limit_table[i].name, required_argument, NULL,
					    OPT_LIMIT0 + (int)i};
	opts[n] = (struct option){NULL, 0, NULL, 0};

	optind = 1;
	while ((ch = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
		switch (ch) {
		case 'o':
			c->out = optarg;
			break;
		case OPT_FIRST:
			if (cli_first_policy(optarg, &c->req.first_policy))
				return pd_err_set(e, PD_E_ARG, "--first must be keep, drop or auto");
			break;
		case OPT_TYPE:
			if ((rc = parse_type(c, optarg, e)))
				return rc;
			break;
		case OPT_LEVEL: {
			char *end;
			long lv = strtol(optarg, &end, 10);
			if (*end || lv < 0 || lv > 9)
				return pd_err_set(e, PD_E_ARG, "--level must be 0..9");
			c->req.gzip_level = (int)lv;
			break;
		}
		case OPT_JSON:
			c->json = 1;
			break;
		case OPT_SHADOW:
			c->shadow = 1;
			break;
		case 'h':
			usage(stdout);
			exit(0);
		default:
			if (ch >= OPT_LIMIT0 && ch < OPT_LIMIT0 + (int)pd_limit_count) {
				if ((rc = pd_limits_set(&c->lim, pd_limit_table[ch - OPT_LIMIT0].name,
							optarg, e)))
					return rc;
				break;
			}
			return pd_err_set(e, PD_E_ARG, "bad option (see --help)");
		}
	}
	c->req.overrides = c->ovr;
	return PD_OK;
}

static int cmd_diff(cli *c, int argc, char **argv, pd_err *e)
{
	pd_engine *eng = pd_engine_new(&c->lim);
	pd_state *s0 = pd_state_new(), *s1 = pd_state_new(), *s2 = pd_state_new();
	pd_buf in;
	pd_result res;
	FILE *devnull = NULL;
	int rc;

	pd_buf_init(&in, 0);
	if (!eng || !s0 || !s1 || !s2) {
		rc = pd_err_set(e, PD_E_NOMEM, "out of memory");
		goto out;
	}
	if (argc != 2 || !c->out) {
		rc = pd_err_set(e, PD_E_ARG, "diff wants PREV CUR -o OUT");
		goto out;
	}
	/* State from PREV (its own output is discarded). */
	devnull = fopen("/dev/null", "wb");
	if ((rc = read_file(argv[0], &in, c->lim.max_input, e)))
		goto out;
	if ((rc = pd_engine_run(eng, in.data, in.len, s0, s1, &c->req, file_sink, devnull, &res, e))) {
		char m[sizeof e->msg];
		snprintf(m, sizeof m, "%s", e->msg);
		pd_err_set(e, rc, "%s: %s", argv[0], m);
		goto out;
	}
	if ((rc = delta_to_file(eng, c, &in, argv[1], s1, s2, c->out, &res, e))) {
		char m[sizeof e->msg];
		snprintf(m, sizeof m, "%s", e->msg);
		pd_err_set(e, rc, "%s: %s", argv[1], m);
		goto out;
	}
	print_status(c, c->out, &res);
out:
	if (devnull)
		fclose(devnull);
	pd_buf_free(&in);
	pd_state_free(s0);
	pd_state_free(s1);
	pd_state_free(s2);
	pd_engine_free(eng);
	return rc;
}

/* --shadow: the delta just written to outp against the slow path's. */
static void shadow_check(cli *c, const char *base, const pd_buf *prev, const pd_buf *cur,
			 const char *outp, const pd_result *res)
{
	pd_slow_verdict *v = calloc(1, sizeof *v);
	pd_buf out;
	pd_err e = {0, ""};
	char line[512];
	int r = -1;

	pd_buf_init(&out, 0);
	if (v && !read_file(outp, &out, UINT64_MAX, &e))
		r = pd_slow_verify(prev ? prev->data : NULL, prev ? prev->len : 0, cur->data, cur->len,
				   out.data, out.len, &c->req, 0, res->status, res->reason, &c->lim, v);
	pd_slow_tally_add(&c->tally, r);
	if (r > 0) {
		fprintf(stderr, "%s SHADOW MISMATCH: %zu difference(s)%s%s\n", base, v->n,
			v->broken ? "; " : "", v->broken ? v->what : "");
		for (size_t i = 0; i < v->n && i < 5; i++) {
			pd_slow_diff_format(&v->diffs[i], line, sizeof line);
			fprintf(stderr, "  %s\n", line);
		}
	}
	if (v)
		pd_slow_verdict_free(v);
	free(v);
	pd_buf_free(&out);
}

static int cmd_seq(cli *c, int argc, char **argv, pd_err *e)
{
	pd_engine *eng = pd_engine_new(&c->lim);
	pd_state *prev = pd_state_new(), *next = pd_state_new();
	pd_buf in, prev_in;
	int failures = 0, rc = PD_OK, have_prev = 0;
	bool to_stdout;

	pd_buf_init(&in, 0);
	pd_buf_init(&prev_in, 0);
	if (!eng || !prev || !next) {
		rc = pd_err_set(e, PD_E_NOMEM, "out of memory");
		goto out;
	}
	if (argc < 1 || !c->out) {
		rc = pd_err_set(e, PD_E_ARG, "seq wants -o OUTDIR FILE...");
		goto out;
	}
	to_stdout = is_stdout(c->out);
	if (to_stdout && c->shadow) {
		rc = pd_err_set(e, PD_E_ARG, "seq --shadow wants -o OUTDIR (it reads the deltas back)");
		goto out;
	}
	if (to_stdout && argc != 1) {
		rc = pd_err_set(e, PD_E_ARG, "seq -o - takes one FILE (one delta on stdout)");
		goto out;
	}
	if (!to_stdout && mkdir(c->out, 0777) != 0 && errno != EEXIST) {
		rc = pd_err_set(e, PD_E_IO, "%s: %s", c->out, strerror(errno));
		goto out;
	}
	for (int i = 0; i < argc; i++) {
		char *dup = strdup(argv[i]), outp[4096];
		const char *base = dup ? basename(dup) : argv[i];
		pd_result res;
		pd_err fe = {0, ""};

		if (to_stdout)
			snprintf(outp, sizeof outp, "-");
		else
			snprintf(outp, sizeof outp, "%s/%s", c->out, base);
		if (delta_to_file(eng, c, &in, argv[i], prev, next, outp, &res, &fe) == PD_OK) {
			pd_state *t = prev;
			pd_buf tb = prev_in;
			prev = next;
			next = t;
			print_status(c, base, &res);
			if (c->shadow)
				shadow_check(c, base, have_prev ? &prev_in : NULL, &in, outp, &res);
			prev_in = in; /* the engine's state is now this file's */
			in = tb;
			have_prev = 1;
		} else {
			fprintf(to_stdout ? stderr : stdout, "%s ERROR %s %s\n", base,
				pd_code_name(fe.code), fe.msg);
			failures++;
		}
		fflush(stdout);
		free(dup);
	}
	if (c->shadow)
		fprintf(stderr, "shadow: %llu deltas checked, %llu mismatches, %llu not checked (slow-path limits)\n",
			(unsigned long long)c->tally.checked, (unsigned long long)c->tally.mismatches,
			(unsigned long long)c->tally.unchecked);
	if (failures)
		rc = pd_err_set(e, PD_E_MALFORMED, "%d of %d files failed", failures, argc);
	else if (c->tally.mismatches)
		rc = pd_err_set(e, PD_E_INTERNAL, "%llu of %d deltas differ from the slow path's",
				(unsigned long long)c->tally.mismatches, argc);
out:
	pd_buf_free(&prev_in);
	pd_buf_free(&in);
	pd_state_free(prev);
	pd_state_free(next);
	pd_engine_free(eng);
	return rc;
}

static int cmd_inspect(cli *c, int argc, char **argv, pd_err *e)
{
	pd_engine *eng = pd_engine_new(&c->lim);
	pd_buf in;
	pd_inspect o;
	int rc;

	pd_buf_init(&in, 0);
	if (!eng) {
		rc = pd_err_set(e, PD_E_NOMEM, "out of memory");
		goto out;
	}
	if (argc != 1) {
		rc = pd_err_set(e, PD_E_ARG, "inspect wants one FILE");
		goto out;
	}
	if ((rc = read_file(argv[0], &in, c->lim.max_input, e)) ||
	    (rc = pd_engine_inspect(eng, in.data, in.len, &o, e)))
		goto out;
	if (c->json) {
		printf("{\"file\":");
		pd_json_str(stdout, argv[0], strlen(argv[0]));
		printf(",\"sample_types\":[");
		for (uint32_t i = 0; i < o.nsample_types; i++) {
			printf("%s{\"type\":", i ? "," : "");
			pd_json_str(stdout, o.type_name[i], o.type_name_len[i]);
			printf(",\"unit\":");
			pd_json_str(stdout, o.type_unit[i], o.type_unit_len[i]);
			printf("}");
		}
		printf("],\"period_type\":{\"type\":");
		pd_json_str(stdout, o.period_type, o.period_type_len);
		printf(",\"unit\":");
		pd_json_str(stdout, o.period_unit, o.period_unit_len);
		printf("},\"period\":%lld,\"time_nanos\":%lld,\"duration_nanos\":%lld,"
		       "\"samples\":%llu,\"unique_identities\":%llu,\"zero_samples\":%llu,"
		       "\"locations\":%llu,\"addr0_locations\":%llu,\"functions\":%llu,"
		       "\"mappings\":%llu,\"strings\":%llu,\"labels\":%llu,\"max_depth\":%llu,"
		       "\"bytes\":%llu,\"bytes_raw\":%llu}\n",
		       (long long)o.period, (long long)o.time_nanos, (long long)o.duration_nanos,
		       (unsigned long long)o.samples, (unsigned long long)o.unique_identities,
		       (unsigned long long)o.zero_samples, (unsigned long long)o.locations,
		       (unsigned long long)o.addr0_locations, (unsigned long long)o.functions,
		       (unsigned long long)o.mappings, (unsigned long long)o.strings,
		       (unsigned long long)o.labels, (unsigned long long)o.max_depth,
		       (unsigned long long)o.bytes_in, (unsigned long long)o.bytes_raw);
	} else {
		printf("file:          %s\nsample types: ", argv[0]);
		for (uint32_t i = 0; i < o.nsample_types; i++)
			printf(" %.*s/%.*s", (int)o.type_name_len[i], o.type_name[i],
			       (int)o.type_unit_len[i], o.type_unit[i]);
		printf("\nperiod:        %lld %.*s/%.*s\n", (long long)o.period, (int)o.period_type_len,
		       o.period_type, (int)o.period_unit_len, o.period_unit);
		printf("time_nanos:    %lld\nduration:      %lld ns\n", (long long)o.time_nanos,
		       (long long)o.duration_nanos);
		printf("samples:       %llu (%llu unique identities, %llu all-zero)\n",
		       (unsigned long long)o.samples, (unsigned long long)o.unique_identities,
		       (unsigned long long)o.zero_samples);
		printf("locations:     %llu (%llu with address 0)\nfunctions:     %llu\n"
		       "mappings:      %llu\nstrings:       %llu\nlabels:        %llu\n"
		       "max depth:     %llu\nsize:          %llu bytes (%llu raw)\n",
		       (unsigned long long)o.locations, (unsigned long long)o.addr0_locations,
		       (unsigned long long)o.functions, (unsigned long long)o.mappings,
		       (unsigned long long)o.strings, (unsigned long long)o.labels,
		       (unsigned long long)o.max_depth, (unsigned long long)o.bytes_in,
		       (unsigned long long)o.bytes_raw);
	}
out:
	pd_buf_free(&in);
	pd_engine_free(eng);
	return rc;
}

/* Provided by client/pdelta_send.c when the client library is built. */
int pdelta_cmd_send(int argc, char **argv) __attribute__((weak));
/* Provided by client/pdelta_scrape.c. */
int pdelta_cmd_scrape(int argc, char **argv) __attribute__((weak));

int main(int argc, char **argv)
{
	cli c;
	pd_err e = {0, ""};
	const char *cmd;
	int rc;

	memset(&c, 0, sizeof c);
	pd_limits_default(&c.lim);
	pd_req_default(&c.req);
	if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
		usage(argc < 2 ? stderr : stdout);
		return argc < 2 ? 2 : 0;
	}
	if (strcmp(argv[1], "--version") == 0) {
		char libs[64];
		snprintf(libs, sizeof libs, "OpenSSL %s", OpenSSL_version(OPENSSL_VERSION_STRING));
		pd_version_print(stdout, "pdelta", libs);
		return 0;
	}
	cmd = argv[1];
	if (strcmp(cmd, "send") == 0) {
		if (!pdelta_cmd_send) {
			fprintf(stderr, "pdelta: send is not built into this binary\n");
			return 2;
		}
		return pdelta_cmd_send(argc - 1, argv + 1);
	}
	if (strcmp(cmd, "scrape") == 0) {
		if (!pdelta_cmd_scrape) {
			fprintf(stderr, "pdelta: scrape is not built into this binary\n");
			return 2;
		}
		return pdelta_cmd_scrape(argc - 1, argv + 1);
	}
	if ((rc = parse_opts(&c, argc - 1, argv + 1, &e)))
		goto out;
	argc -= optind + 1;
	argv += optind + 1;
	if (strcmp(cmd, "diff") == 0)
		rc = cmd_diff(&c, argc, argv, &e);
	else if (strcmp(cmd, "seq") == 0)
		rc = cmd_seq(&c, argc, argv, &e);
	else if (strcmp(cmd, "inspect") == 0)
		rc = cmd_inspect(&c, argc, argv, &e);
	else
		rc = pd_err_set(&e, PD_E_ARG, "unknown command '%s' (see --help)", cmd);
out:
	for (size_t i = 0; i < c.req.noverrides; i++)
		free((void *)(uintptr_t)c.ovr[i].name);
	if (rc) {
		fprintf(stderr, "pdelta: %s\n", e.msg);
		return rc == PD_E_ARG ? 2 : 1;
	}
	return 0;
}
