/*
 * slowdelta: checks the delta engine against the slow path (pd_slowdelta).
 *
 *   slowdelta [options] FILE...                 each profile of the sequence goes
 *                                               through the engine and the slow path;
 *                                               the outputs are compared semantically
 *   slowdelta [options] --check DELTA [PREV] CUR  compares a given delta (any source)
 *                                               with the slow path's delta of PREV -> CUR
 *
 * Prints one line per step (file, slow path's status and reason, keys, duration), and
 * for a mismatch the first differing keys with both values. Exit 0 when everything
 * agrees, 1 on a mismatch, 2 on an error (unreadable or refused input, bad usage).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pd_buf.h"
#include "pd_clock.h"
#include "pd_engine.h"
#include "pd_slowdelta.h"

#define MAX_TYPES 16

typedef struct opts {
	pd_req req;
	pd_type_override types[MAX_TYPES];
	pd_limits lim;
	size_t max_diffs;
	int dump;
	const char *check, *only;
} opts;

static void usage(FILE *f)
{
	fprintf(f, "usage: slowdelta [options] FILE...\n"
		   "       slowdelta [options] --check DELTA [PREV] CUR\n"
		   "options:\n"
		   "  --first keep|drop|auto  first-profile policy (default keep)\n"
		   "  --type NAME=delta|gauge per-sample-type policy override (repeatable)\n"
		   "  --max-diffs N           differing keys printed per mismatch (default 10)\n"
		   "  --only engine|slow      run one path alone, no comparison, and print\n"
		   "                          its time (to measure each path's time and memory)\n"
		   "  --dump                  print the slow path's rows (values in sorted\n"
		   "                          sample-type order, one row a line)\n"
		   "exit: 0 all equal, 1 a mismatch, 2 an error\n");
}

static int read_all(const char *path, pd_buf *b, uint64_t max)
{
	FILE *f = fopen(path, "rb");
	size_t n;

	pd_buf_reset(b);
	if (!f) {
		fprintf(stderr, "slowdelta: %s: %s\n", path, strerror(errno));
		return -1;
	}
	do {
		if (pd_buf_reserve(b, 1 << 16, NULL) || b->len > max) {
			fprintf(stderr, "slowdelta: %s: too large\n", path);
			fclose(f);
			return -1;
		}
		n = fread(b->data + b->len, 1, b->alloc - b->len, f);
		b->len += n;
	} while (n > 0);
	fclose(f);
	return 0;
}

static int decode_file(const char *path, const opts *o, pd_buf *b, pd_slow_profile **out)
{
	pd_err e = {0};
	if (read_all(path, b, o->lim.max_input))
		return -1;
	if (pd_slow_decode(b->data, b->len, &o->lim, out, &e)) {
		fprintf(stderr, "slowdelta: %s: %s\n", path, e.msg);
		return -1;
	}
	return 0;
}

static int cmp_cstr(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Rows as value tuples in sorted sample-type order (what the Python oracle can
 * compare against without sharing the key format). */
static void dump_rows(const pd_slow_profile *p)
{
	const char *cols[MAX_TYPES];
	uint32_t n = pd_slow_ncols(p);

	for (uint32_t c = 0; c < n; c++)
		cols[c] = pd_slow_col(p, c);
	qsort(cols, n, sizeof *cols, cmp_cstr);
	for (size_t r = 0; r < pd_slow_rows(p); r++) {
		for (uint32_t c = 0; c < n; c++) {
			int found;
			printf("%s%" PRId64, c ? " " : "row ", pd_slow_value(p, pd_slow_key(p, r), cols[c], &found));
		}
		printf("\n");
	}
}

/* Prints the differences of want (slow path) and got; returns 1 if any. */
static int report(const char *name, const pd_slow_profile *want, const pd_slow_profile *got,
		  const opts *o)
{
	pd_slow_diff *d = calloc(o->max_diffs + 1, sizeof *d);
	size_t n;
	char line[1024];

	if (!d)
		return 1;
	n = pd_slow_compare(want, got, d, o->max_diffs);
	if (n)
		printf("%s: MISMATCH, %zu differences (a = slow path, b = checked delta)\n", name, n);
	for (size_t i = 0; i < n && i < o->max_diffs; i++) {
		pd_slow_diff_format(&d[i], line, sizeof line);
		printf("  %s\n", line);
	}
	free(d);
	return n != 0;
}

static void step_line(const char *name, const pd_slow_profile *s)
{
	printf("%s %s %s keys=%zu duration=%" PRId64 "\n", name, pd_status_name(pd_slow_status(s)),
	       pd_reason_name(pd_slow_reason(s)), pd_slow_rows(s), pd_slow_duration_nanos(s));
}

static int sink_buf(void *ctx, const uint8_t *p, size_t n)
{
	return pd_buf_append(ctx, p, n, NULL);
}

typedef struct engine_side {
	pd_engine *eng;
	pd_state *prev, *next;
	pd_buf out;
} engine_side;

/* The engine's delta of in into g->out; the states advance. */
static int engine_run(engine_side *g, const char *name, const pd_buf *in, const opts *o,
		      pd_result *res)
{
	pd_err e = {0};
	pd_state *t;

	pd_buf_reset(&g->out);
	if (pd_engine_run(g->eng, in->data, in->len, g->prev, g->next, &o->req, sink_buf, &g->out,
			  res, &e)) {
		fprintf(stderr, "slowdelta: %s: engine: %s\n", name, e.msg);
		return -1;
	}
	t = g->prev;
	g->prev = g->next;
	g->next = t;
	return 0;
}

/* The engine's delta of in, decoded by the slow decoder. */
static int engine_step(engine_side *g, const char *name, const pd_buf *in, const opts *o,
		       pd_slow_profile **out, pd_result *res)
{
	pd_err e = {0};

	if (engine_run(g, name, in, o, res))
		return -1;
	if (pd_slow_decode(g->out.data, g->out.len, &o->lim, out, &e)) {
		fprintf(stderr, "slowdelta: %s: engine output does not decode: %s\n", name, e.msg);
		return -1;
	}
	return 0;
}

/* One step of a sequence: 0 equal, 1 mismatch, -1 error. */
static int seq_step(engine_side *g, const char *name, pd_buf *in, const opts *o,
		    const pd_slow_profile *prev, pd_slow_profile **cur)
{
	pd_slow_profile *slow = NULL, *eng = NULL;
	pd_result res;
	pd_err e = {0};
	int rc = -1;

	if (decode_file(name, o, in, cur) || engine_step(g, name, in, o, &eng, &res))
		goto out;
	if (pd_slow_delta(prev, *cur, &o->req, o->req.incarnation, &slow, &e)) {
		fprintf(stderr, "slowdelta: %s: %s\n", name, e.msg);
		goto out;
	}
	step_line(name, slow);
	if (o->dump)
		dump_rows(slow);
	rc = report(name, slow, eng, o);
	if (res.status != pd_slow_status(slow) || res.reason != pd_slow_reason(slow)) {
		printf("%s: MISMATCH status: slow path %s %s (%s), engine %s %s (%s)\n", name,
		       pd_status_name(pd_slow_status(slow)), pd_reason_name(pd_slow_reason(slow)),
		       pd_slow_why(slow), pd_status_name(res.status), pd_reason_name(res.reason), res.why);
		rc = 1;
	}
out:
	pd_slow_free(slow);
	pd_slow_free(eng);
	return rc;
}

/* --only: one path alone, timed into *ns (each path's time and peak memory
 * measured in a process of its own). 0 or -1. */
static int timed_step(engine_side *g, const char *name, pd_buf *in, const opts *o,
		      const pd_slow_profile *prev, pd_slow_profile **cur, uint64_t *ns)
{
	pd_slow_profile *slow = NULL;
	pd_result res;
	pd_err e = {0};
	uint64_t t0;
	int rc = 0;

	if (read_all(name, in, o->lim.max_input))
		return -1;
	t0 = pd_now_ns();
	if (strcmp(o->only, "engine") == 0) {
		rc = engine_run(g, name, in, o, &res);
	} else if (pd_slow_decode(in->data, in->len, &o->lim, cur, &e) ||
		   pd_slow_delta(prev, *cur, &o->req, o->req.incarnation, &slow, &e)) {
		fprintf(stderr, "slowdelta: %s: %s\n", name, e.msg);
		rc = -1;
	}
	pd_slow_free(slow);
	*ns += pd_now_ns() - t0;
	return rc;
}

static int run_seq(char **files, int n, const opts *o)
{
	engine_side g = {pd_engine_new(&o->lim), pd_state_new(), pd_state_new(), {0}};
	pd_slow_profile *prev = NULL, *cur = NULL;
	pd_buf in;
	int mismatches = 0, rc = 0;
	uint64_t ns = 0;

	pd_buf_init(&in, 0);
	pd_buf_init(&g.out, 0);
	if (!g.eng || !g.prev || !g.next)
		rc = -1;
	for (int i = 0; i < n && rc >= 0; i++) {
		cur = NULL;
		if (o->only)
			rc = timed_step(&g, files[i], &in, o, prev, &cur, &ns);
		else
			rc = seq_step(&g, files[i], &in, o, prev, &cur);
		mismatches += rc == 1;
		pd_slow_free(prev);
		prev = cur;
	}
	if (rc >= 0 && o->only)
		printf("%d steps, %s only: %.1f ms\n", n, o->only, ns / 1e6);
	else if (rc >= 0)
		printf("%d steps, %d mismatches\n", n, mismatches);
	pd_slow_free(prev);
	pd_buf_free(&in);
	pd_buf_free(&g.out);
	pd_engine_free(g.eng);
	pd_state_free(g.prev);
	pd_state_free(g.next);
	return rc < 0 ? 2 : mismatches ? 1 : 0;
}

static int run_check(char **files, int n, const opts *o)
{
	pd_slow_profile *given = NULL, *prev = NULL, *cur = NULL, *slow = NULL;
	pd_buf in;
	pd_err e = {0};
	int rc = 2;

	pd_buf_init(&in, 0);
	if (n < 1 || n > 2) {
		usage(stderr);
		goto out;
	}
	if (decode_file(o->check, o, &in, &given) || (n == 2 && decode_file(files[0], o, &in, &prev)) ||
	    decode_file(files[n - 1], o, &in, &cur))
		goto out;
	if (pd_slow_delta(prev, cur, &o->req, o->req.incarnation, &slow, &e)) {
		fprintf(stderr, "slowdelta: %s\n", e.msg);
		goto out;
	}
	step_line(files[n - 1], slow);
	if (o->dump)
		dump_rows(slow);
	rc = report(o->check, slow, given, o);
	printf("1 steps, %d mismatches\n", rc);
out:
	pd_slow_free(given);
	pd_slow_free(prev);
	pd_slow_free(cur);
	pd_slow_free(slow);
	pd_buf_free(&in);
	return rc;
}

static int parse_type(opts *o, const char *arg)
{
	const char *eq = strchr(arg, '=');
	if (!eq || eq == arg || o->req.noverrides >= MAX_TYPES ||
	    (strcmp(eq + 1, "delta") != 0 && strcmp(eq + 1, "gauge") != 0)) {
		fprintf(stderr, "slowdelta: --type wants NAME=delta|gauge (at most %d), got '%s'\n",
			MAX_TYPES, arg);
		return -1;
	}
	o->types[o->req.noverrides].name = strndup(arg, (size_t)(eq - arg));
	o->types[o->req.noverrides++].policy = strcmp(eq + 1, "delta") == 0 ? PD_POLICY_DELTA
									     : PD_POLICY_GAUGE;
	return 0;
}

static int parse_first(opts *o, const char *v)
{
	static const char *const names[] = {"keep", "drop", "auto"};
	for (int i = 0; i < 3; i++)
		if (strcmp(v, names[i]) == 0) {
			o->req.first_policy = i;
			return 0;
		}
	fprintf(stderr, "slowdelta: --first wants keep, drop or auto, got '%s'\n", v);
	return -1;
}

/* Options into o; returns the index of the first file, or -1. */
static int parse_args(int argc, char **argv, opts *o)
{
	int i;
	for (i = 1; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		int bad = 0;
		if (strcmp(a, "--dump") == 0) {
			o->dump = 1;
			continue;
		}
		if (strcmp(a, "--help") == 0) {
			usage(stdout);
			exit(0);
		}
		if (!v) {
			fprintf(stderr, "slowdelta: %s needs a value\n", a);
			return -1;
		}
		if (strcmp(a, "--first") == 0)
			bad = parse_first(o, v);
		else if (strcmp(a, "--type") == 0)
			bad = parse_type(o, v);
		else if (strcmp(a, "--max-diffs") == 0)
			bad = (o->max_diffs = strtoul(v, NULL, 10)) == 0;
		else if (strcmp(a, "--check") == 0)
			o->check = v;
		else if (strcmp(a, "--only") == 0)
			bad = strcmp(o->only = v, "engine") != 0 && strcmp(v, "slow") != 0;
		else
			bad = 1;
		if (bad) {
			fprintf(stderr, "slowdelta: bad option %s %s\n", a, v);
			return -1;
		}
		i++;
	}
	return i;
}

int main(int argc, char **argv)
{
	opts o;
	int first, rc;

	memset(&o, 0, sizeof o);
	pd_req_default(&o.req);
	o.req.overrides = o.types;
	pd_limits_default(&o.lim);
	o.max_diffs = 10;
	if ((first = parse_args(argc, argv, &o)) < 0 || (first >= argc)) {
		usage(stderr);
		return 2;
	}
	if (o.check)
		rc = run_check(argv + first, argc - first, &o);
	else
		rc = run_seq(argv + first, argc - first, &o);
	for (size_t k = 0; k < o.req.noverrides; k++)
		free((void *)(uintptr_t)o.types[k].name);
	return rc;
}
