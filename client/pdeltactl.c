/*
 * pdeltactl: the admin command line of pdeltad (PROTOCOL.md §11), a thin
 * shell over pdelta_admin().
 *
 *   pdeltactl --server H:P --ca CA [--cert C --key K | --token T | --token-file F]
 *             [--json] COMMAND [ARGS]
 *     streams [--tenant T] [--prefix P] [--sort name|last_seen|samples|bytes] [--limit N]
 *             (without --tenant: every tenant's streams)
 *     stream NAME [--tenant T]
 *     reset NAME [--tenant T]
 *     delete NAME [--tenant T] | delete --prefix P [--tenant T]
 *     stats
 *     tenants [--limit N]
 *     top [--interval S] [--once] [--limit N]
 *
 * By default the server's JSON answer is rendered as aligned tables (or
 * key/value lines); --json prints the server's document unchanged, a
 * failure as {"error":{...}}, and `top` one JSON object per frame.
 * `top` samples `stats` every interval and shows rates computed from two
 * samples (requests/s, p99 from the latency buckets, per tenant).
 *
 * Exit status: 0 done, 1 failed (not found, refused, unreachable), 2 usage.
 * A delete that removed nothing is "not found" like reset and stream: the
 * server answers it {"deleted":0} (deleting is idempotent on the wire), and
 * this tool reports it on stderr and exits 1, whether a NAME, a prefix or the
 * tenant was misspelled. A tiny
 * JSON reader below is all the parsing needed: numbers are kept as their
 * text, so u64 values print exactly.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "pd_clock.h"
#include "pd_json.h"
#include "pd_version.h"
#include "pdelta.h"
#include "pdelta_cliopt.h"
#include "pdelta_proto.h"

/* ---- a small JSON reader ----------------------------------------------------- */

enum jt { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ };

typedef struct jv {
	enum jt t;
	char *s;   /* J_STR: decoded; J_NUM: raw text; J_BOOL: "true"/"false" */
	char *key; /* member name inside an object */
	struct jv *kids, *next;
} jv;

typedef struct jparser {
	const char *p, *end;
	int depth;
} jparser;

static void jv_free(jv *v)
{
	while (v) {
		jv *nx = v->next;
		jv_free(v->kids);
		free(v->s);
		free(v->key);
		free(v);
		v = nx;
	}
}

static void skip_ws(jparser *jp)
{
	while (jp->p < jp->end && (*jp->p == ' ' || *jp->p == '\t' || *jp->p == '\n' || *jp->p == '\r'))
		jp->p++;
}

static int hex4(const char *p, unsigned *out)
{
	unsigned v = 0;
	for (int i = 0; i < 4; i++) {
		char c = p[i];
		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= (unsigned)(c - '0');
		else if (c >= 'a' && c <= 'f')
			v |= (unsigned)(c - 'a' + 10);
		else if (c >= 'A' && c <= 'F')
			v |= (unsigned)(c - 'A' + 10);
		else
			return -1;
	}
	*out = v;
	return 0;
}

static size_t put_utf8(char *o, unsigned cp)
{
	if (cp < 0x80) {
		o[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		o[0] = (char)(0xC0 | cp >> 6);
		o[1] = (char)(0x80 | (cp & 0x3F));
		return 2;
	}
	if (cp < 0x10000) {
		o[0] = (char)(0xE0 | cp >> 12);
		o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
		o[2] = (char)(0x80 | (cp & 0x3F));
		return 3;
	}
	o[0] = (char)(0xF0 | cp >> 18);
	o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
	o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
	o[3] = (char)(0x80 | (cp & 0x3F));
	return 4;
}

/* \uXXXX, with a surrogate pair when there is one. */
static int unicode_escape(jparser *jp, char *o, size_t *w)
{
	unsigned cp, lo;

	if (jp->end - jp->p < 5 || hex4(jp->p + 1, &cp))
		return -1;
	jp->p += 5;
	if (cp >= 0xD800 && cp < 0xDC00 && jp->end - jp->p >= 6 && jp->p[0] == '\\' &&
	    jp->p[1] == 'u' && hex4(jp->p + 2, &lo) == 0 && lo >= 0xDC00 && lo < 0xE000) {
		cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
		jp->p += 6;
	}
	*w += put_utf8(o + *w, cp);
	return 0;
}

static char *parse_string(jparser *jp)
{
	const char *start = ++jp->p;
	char *o = malloc((size_t)(jp->end - start) + 1);
	size_t w = 0;

	while (o && jp->p < jp->end && *jp->p != '"') {
		char c = *jp->p;
		if (c != '\\') {
			o[w++] = c;
			jp->p++;
			continue;
		}
		if (++jp->p >= jp->end)
			break;
		c = *jp->p;
		if (c == 'u') {
			if (unicode_escape(jp, o, &w))
				break;
			continue;
		}
		o[w++] = c == 'n' ? '\n' : c == 't' ? '\t' : c == 'r' ? '\r' : c == 'b' ? '\b'
			 : c == 'f' ? '\f' : c;
		jp->p++;
	}
	if (!o || jp->p >= jp->end) {
		free(o);
		return NULL;
	}
	jp->p++;
	o[w] = 0;
	return o;
}

static jv *parse_value(jparser *jp);

static jv *parse_container(jparser *jp, jv *v, char close)
{
	jv **tail = &v->kids;

	jp->p++;
	skip_ws(jp);
	if (jp->p < jp->end && *jp->p == close) {
		jp->p++;
		return v;
	}
	for (;;) {
		char *key = NULL;
		jv *kid;

		skip_ws(jp);
		if (close == '}') {
			if (jp->p >= jp->end || *jp->p != '"' || !(key = parse_string(jp)))
				return NULL;
			skip_ws(jp);
			if (jp->p >= jp->end || *jp->p++ != ':') {
				free(key);
				return NULL;
			}
		}
		if (!(kid = parse_value(jp))) {
			free(key);
			return NULL;
		}
		kid->key = key;
		*tail = kid;
		tail = &kid->next;
		skip_ws(jp);
		if (jp->p < jp->end && *jp->p == ',') {
			jp->p++;
			continue;
		}
		if (jp->p < jp->end && *jp->p == close) {
			jp->p++;
			return v;
		}
		return NULL;
	}
}

static jv *parse_scalar(jparser *jp, jv *v)
{
	const char *s = jp->p;
	size_t n;

	if (*s == '"') {
		v->t = J_STR;
		return (v->s = parse_string(jp)) ? v : NULL;
	}
	while (jp->p < jp->end && strchr("+-0123456789.eEtruefalsn", *jp->p))
		jp->p++;
	n = (size_t)(jp->p - s);
	if (n == 4 && memcmp(s, "null", 4) == 0)
		v->t = J_NULL;
	else if ((n == 4 && memcmp(s, "true", 4) == 0) || (n == 5 && memcmp(s, "false", 5) == 0))
		v->t = J_BOOL;
	else if (n && (s[0] == '-' || (s[0] >= '0' && s[0] <= '9')))
		v->t = J_NUM;
	else
		return NULL;
	return (v->s = strndup(s, n)) ? v : NULL;
}

static jv *parse_value(jparser *jp)
{
	jv *v = calloc(1, sizeof *v), *r;

	skip_ws(jp);
	if (!v || jp->p >= jp->end || ++jp->depth > 64) {
		free(v);
		return NULL;
	}
	if (*jp->p == '{' || *jp->p == '[') {
		v->t = *jp->p == '{' ? J_OBJ : J_ARR;
		r = parse_container(jp, v, *jp->p == '{' ? '}' : ']');
	} else {
		r = parse_scalar(jp, v);
	}
	jp->depth--;
	if (!r)
		jv_free(v);
	return r;
}

static jv *jv_parse(const char *p, size_t n)
{
	jparser jp = {p, p + n, 0};
	jv *v = parse_value(&jp);

	skip_ws(&jp);
	if (v && jp.p != jp.end) {
		jv_free(v);
		return NULL;
	}
	return v;
}

static const jv *jv_get(const jv *o, const char *key)
{
	if (!o || o->t != J_OBJ)
		return NULL;
	for (const jv *k = o->kids; k; k = k->next)
		if (k->key && strcmp(k->key, key) == 0)
			return k;
	return NULL;
}

static const char *jv_text(const jv *v)
{
	if (!v || v->t == J_NULL)
		return "-";
	if (v->t == J_ARR || v->t == J_OBJ)
		return "...";
	return v->s && *v->s ? v->s : "-";
}

/* ---- rendering ---------------------------------------------------------------------- */

typedef struct col {
	const char *key, *head;
	int time_ms; /* render a unix-ms number as UTC time */
} col;

static void fmt_cell(const jv *v, const col *c, char *buf, size_t len)
{
	if (c->time_ms && v && v->t == J_NUM) {
		long long ms = strtoll(v->s, NULL, 10);
		time_t t = (time_t)(ms / 1000);
		struct tm tm;
		if (ms > 0 && gmtime_r(&t, &tm)) {
			strftime(buf, len, "%Y-%m-%d %H:%M:%S", &tm);
			return;
		}
	}
	snprintf(buf, len, "%s", jv_text(v));
}

/* An aligned table of the objects of arr; numbers right-aligned. */
static void print_table(const jv *arr, const col *cols, size_t ncol)
{
	size_t w[16] = {0};
	char cell[512];

	for (size_t c = 0; c < ncol; c++)
		w[c] = strlen(cols[c].head);
	for (const jv *row = arr ? arr->kids : NULL; row; row = row->next)
		for (size_t c = 0; c < ncol; c++) {
			fmt_cell(jv_get(row, cols[c].key), &cols[c], cell, sizeof cell);
			if (strlen(cell) > w[c])
				w[c] = strlen(cell);
		}
	for (size_t c = 0; c < ncol; c++)
		printf("%-*s%s", (int)w[c], cols[c].head, c + 1 < ncol ? "  " : "\n");
	for (const jv *row = arr ? arr->kids : NULL; row; row = row->next)
		for (size_t c = 0; c < ncol; c++) {
			const jv *v = jv_get(row, cols[c].key);
			fmt_cell(v, &cols[c], cell, sizeof cell);
			if (v && v->t == J_NUM && !cols[c].time_ms)
				printf("%*s", (int)w[c], cell);
			else
				printf("%-*s", (int)(c + 1 < ncol ? w[c] : 0), cell);
			printf("%s", c + 1 < ncol ? "  " : "\n");
		}
}

/* An array of scalars as "a, b, c"; of objects as a count. */
static void print_array(const jv *a, const char *key, int width)
{
	size_t n = 0, scalars = 1;

	for (const jv *e = a->kids; e; e = e->next, n++)
		if (e->t == J_ARR || e->t == J_OBJ)
			scalars = 0;
	if (!scalars) {
		printf("%-*s  [%zu entries]\n", width, key, n);
		return;
	}
	printf("%-*s  ", width, key);
	for (const jv *e = a->kids; e; e = e->next)
		printf("%s%s", jv_text(e), e->next ? ", " : "");
	printf("%s\n", n ? "" : "-");
}

/* key: value lines of an object, nested objects as dotted keys. */
static void print_kv_rec(const jv *o, const char *prefix, int width)
{
	char key[256];

	for (const jv *k = o->kids; k; k = k->next) {
		snprintf(key, sizeof key, "%s%s%s", prefix, *prefix ? "." : "", k->key ? k->key : "?");
		if (k->t == J_OBJ) {
			print_kv_rec(k, key, width);
			continue;
		}
		if (k->t == J_ARR) {
			print_array(k, key, width);
			continue;
		}
		printf("%-*s  %s\n", width, key, jv_text(k));
	}
}

static int kv_width(const jv *o, size_t prefix)
{
	int w = 0;

	for (const jv *k = o->kids; k; k = k->next) {
		int kw = (int)(prefix + (prefix ? 1 : 0) + (k->key ? strlen(k->key) : 1));
		if (k->t == J_OBJ)
			kw = kv_width(k, (size_t)kw);
		if (kw > w)
			w = kw;
	}
	return w;
}

static void print_kv(const jv *o)
{
	print_kv_rec(o, "", kv_width(o, 0));
}

static const col stream_cols[] = {
	{"name", "NAME", 0},	     {"seq", "SEQ", 0},		  {"incarnation", "INCARNATION", 0},
	{"last_seen_ms", "LAST_SEEN (UTC)", 1}, {"samples", "SAMPLES", 0}, {"state_bytes", "STATE_BYTES", 0},
	{"last_status", "STATUS", 0}, {"last_reason", "REASON", 0},
};
static const col stream_cols_all[] = {
	{"tenant", "TENANT", 0}, {"name", "NAME", 0}, {"seq", "SEQ", 0},
	{"incarnation", "INCARNATION", 0}, {"last_seen_ms", "LAST_SEEN (UTC)", 1},
	{"samples", "SAMPLES", 0}, {"state_bytes", "STATE_BYTES", 0}, {"last_status", "STATUS", 0},
	{"last_reason", "REASON", 0},
};
static const col tenant_cols[] = {
	{"name", "TENANT", 0}, {"streams", "STREAMS", 0}, {"state_bytes", "STATE_BYTES", 0},
};

static void render(const char *cmd, const jv *doc)
{
	const jv *t = jv_get(doc, "truncated");

	if (strcmp(cmd, "streams") == 0 && !jv_get(doc, "tenant")) {
		printf("all tenants\n");
		print_table(jv_get(doc, "streams"), stream_cols_all,
			    sizeof stream_cols_all / sizeof *stream_cols_all);
	} else if (strcmp(cmd, "streams") == 0) {
		printf("tenant %s\n", jv_text(jv_get(doc, "tenant")));
		print_table(jv_get(doc, "streams"), stream_cols, sizeof stream_cols / sizeof *stream_cols);
	} else if (strcmp(cmd, "tenants") == 0) {
		print_table(jv_get(doc, "tenants"), tenant_cols, sizeof tenant_cols / sizeof *tenant_cols);
	} else if (strcmp(cmd, "reset") == 0) {
		printf("reset stream '%s' of tenant '%s': its next profile is a first one\n",
		       jv_text(jv_get(doc, "name")), jv_text(jv_get(doc, "tenant")));
	} else if (strcmp(cmd, "delete") == 0) {
		printf("deleted %s stream(s) of tenant '%s'\n", jv_text(jv_get(doc, "deleted")),
		       jv_text(jv_get(doc, "tenant")));
	} else {
		print_kv(doc);
	}
	if (t && t->t == J_BOOL && strcmp(t->s, "true") == 0)
		printf("(truncated: raise --limit to see more)\n");
}

/* delete that removed nothing: not found, like stream and reset (exit 1). */
static int delete_found(const char *cmd, const jv *doc, const char *const *kv)
{
	const char *name = NULL, *prefix = NULL, *tenant = jv_text(jv_get(doc, "tenant"));

	if (strcmp(cmd, "delete") != 0 || strcmp(jv_text(jv_get(doc, "deleted")), "0") != 0)
		return 1;
	for (const char *const *p = kv; *p; p += 2) {
		if (strcmp(p[0], "name") == 0)
			name = p[1];
		else if (strcmp(p[0], "prefix") == 0)
			prefix = p[1];
	}
	if (name)
		fprintf(stderr, "pdeltactl: delete: no such stream '%s' of tenant '%s'\n", name, tenant);
	else
		fprintf(stderr, "pdeltactl: delete: no stream of tenant '%s' starts with '%s'\n", tenant,
			prefix ? prefix : "");
	return 0;
}

/* ---- command line --------------------------------------------------------------- */

typedef struct ctl {
	pdelta_opts o;
	char token[1024];
	const char *tenant, *prefix, *sort, *limit;
	int json;
	double interval_s; /* top */
	int once;          /* top: one frame, then exit */
} ctl;

static void usage(FILE *f)
{
	fprintf(f,
		"usage: pdeltactl --server HOST:PORT --ca CA [--cert C --key K | --token T |\n"
		"                 --token-file F] [--server-name N] [--json] COMMAND [ARGS]\n"
		"--server may list nodes H1:P1,H2:P2,...: stream, reset and delete NAME go to the\n"
		"stream's node, the other commands to one node (any node sees a shared store).\n"
		"commands (an admin credential is needed):\n"
		"  streams [--tenant T] [--prefix P] [--sort name|last_seen|samples|bytes] [--limit N]\n"
		"                                streams of tenant T; without --tenant, of every tenant\n"
		"  stream NAME [--tenant T]      one stream's state\n"
		"  reset NAME [--tenant T]       forget a stream's state\n"
		"  delete NAME [--tenant T]      delete a stream (or: delete --prefix P)\n"
		"  stats                         server counters\n"
		"  tenants [--limit N]           tenants and their streams\n"
		"  top [--interval S] [--once] [--limit N]\n"
		"                                live load: requests/s, p99 latency, cache, queues,\n"
		"                                and the busiest N tenants (default 10), from two\n"
		"                                `stats` samples S seconds apart (default 2);\n"
		"                                refreshes until interrupted, --once: one frame\n"
		"--json prints the server's JSON document unchanged (a failure as {\"error\":...},\n"
		"top one object per frame). --timeout MS bounds connect and I/O.\n"
		"--version prints the version.\n"
		"Exit status: 0 done; 1 failed, or not found (stream, reset, and a delete\n"
		"that removed nothing); 2 usage.\n");
}

enum { C_JSON = 256, C_TENANT, C_PREFIX, C_SORT, C_LIMIT, C_TIMEOUT, C_VERSION, C_INTERVAL, C_ONCE };

static const struct option ctl_long[] = {
	CLI_CONN_LONGOPTS,
	{"json", no_argument, NULL, C_JSON},
	{"tenant", required_argument, NULL, C_TENANT}, {"prefix", required_argument, NULL, C_PREFIX},
	{"sort", required_argument, NULL, C_SORT},     {"limit", required_argument, NULL, C_LIMIT},
	{"timeout", required_argument, NULL, C_TIMEOUT}, {"help", no_argument, NULL, 'h'},
	{"version", no_argument, NULL, C_VERSION},     {"interval", required_argument, NULL, C_INTERVAL},
	{"once", no_argument, NULL, C_ONCE},           {NULL, 0, NULL, 0},
};

static int parse_opt(ctl *c, int ch, const char *a)
{
	int rc = cli_conn_opt("pdeltactl", &c->o, c->token, sizeof c->token, ch, a);

	if (rc <= 0)
		return rc;
	switch (ch) {
	case C_JSON: c->json = 1; break;
	case C_TENANT: c->tenant = a; break;
	case C_PREFIX: c->prefix = a; break;
	case C_SORT: c->sort = a; break;
	case C_LIMIT: c->limit = a; break;
	case C_TIMEOUT: c->o.io_timeout_ms = c->o.connect_timeout_ms = (unsigned)atoi(a); break;
	case C_INTERVAL: {
		char *end;
		c->interval_s = strtod(a, &end);
		if (*end || !(c->interval_s >= 0.1 && c->interval_s <= 3600)) {
			fprintf(stderr, "pdeltactl: --interval: seconds, 0.1..3600\n");
			return -1;
		}
		break;
	}
	case C_ONCE: c->once = 1; break;
	default: return -1;
	}
	return 0;
}

/* Builds the NULL-terminated key/value list of the command. */
static int build_args(ctl *c, const char *cmd, int npos, char **pos, const char **kv)
{
	size_t n = 0;
	int need_name = strcmp(cmd, "stream") == 0 || strcmp(cmd, "reset") == 0 ||
			(strcmp(cmd, "delete") == 0 && !c->prefix);

	if (npos > (need_name || strcmp(cmd, "delete") == 0 ? 1 : 0) || (need_name && npos != 1)) {
		fprintf(stderr, "pdeltactl: %s %s\n", cmd, need_name ? "wants one stream NAME" : "takes no NAME");
		return -1;
	}
#define KV(k, v)                      \
	do {                          \
		if (v) {              \
			kv[n++] = k;  \
			kv[n++] = v;  \
		}                     \
	} while (0)
	KV("tenant", c->tenant);
	if (!c->tenant && strcmp(cmd, "streams") == 0)
		KV("all_tenants", "true");
	if (npos == 1)
		KV("name", pos[0]);
	KV("prefix", c->prefix);
	KV("sort", c->sort);
	KV("limit", c->limit);
#undef KV
	kv[n] = NULL;
	return 0;
}

static const char *const commands[] = {"streams", "stream", "reset", "delete", "stats", "tenants", "top"};

static int known_command(const char *cmd)
{
	for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
		if (strcmp(cmd, commands[i]) == 0)
			return 1;
	return 0;
}

static void explain(pdelta *h, const char *cmd, int rc, const char *const *kv)
{
	pdelta_error_info ei;

	pdelta_last_error_info(h, &ei);
	if (rc == PDELTA_E_AUTH && ei.detail == PD_DETAIL_ROLE) {
		fprintf(stderr,
			"pdeltactl: this credential is not an admin credential (tenant '%s', role %s):\n"
			"  admin commands need a token or client certificate with role=admin\n"
			"  (server said: %s)\n",
			pdelta_tenant(h), pdelta_role(h) == PDELTA_ROLE_AGENT ? "agent" : "unknown",
			pdelta_last_error(h));
		return;
	}
	if (rc == PDELTA_E_NOTFOUND) {
		const char *name = "?";
		for (const char *const *p = kv; p && *p; p += 2)
			if (strcmp(p[0], "name") == 0)
				name = p[1];
		fprintf(stderr, "pdeltactl: %s: no such stream '%s' (%s)\n", cmd, name, pdelta_last_error(h));
		return;
	}
	fprintf(stderr, "pdeltactl: %s: %s\n", cmd, pdelta_last_error(h));
}

/* A JSON string on stdout; NULL is written as "". */
static void put_json_str(const char *v)
{
	pd_json_str(stdout, v ? v : "", v ? strlen(v) : 0);
}

/* --json: a failure is a document too, so scripts never parse stderr. */
static void json_error(const char *cmd, int code, const char *message)
{
	printf("{\"error\":{\"command\":");
	put_json_str(cmd);
	printf(",\"code\":%d,\"name\":", code);
	put_json_str(code ? pdelta_strerror(code) : "usage");
	printf(",\"message\":");
	put_json_str(message);
	printf("}}\n");
}

static int run(ctl *c, const char *cmd, const char *const *kv)
{
	char err[512], *json = NULL;
	size_t len = 0;
	pdelta *h = NULL;
	jv *doc;
	int rc;

	if ((rc = pdelta_new(&c->o, &h, err, sizeof err))) {
		fprintf(stderr, "pdeltactl: %s\n", err);
		if (c->json)
			json_error(cmd, rc, err);
		return 1;
	}
	rc = pdelta_admin(h, cmd, kv, &json, &len);
	if (rc) {
		explain(h, cmd, rc, kv);
		if (c->json)
			json_error(cmd, rc, pdelta_last_error(h));
		pdelta_free(h);
		return 1;
	}
	pdelta_free(h);
	doc = jv_parse(json, len);
	if (c->json) {
		fwrite(json, 1, len, stdout);
		if (!len || json[len - 1] != '\n')
			putchar('\n');
		rc = doc && !delete_found(cmd, doc, kv) ? 1 : 0;
		jv_free(doc);
		free(json);
		return rc;
	}
	if (!doc || doc->t != J_OBJ) {
		fprintf(stderr, "pdeltactl: the server's answer is not a JSON object; raw:\n%s\n", json);
		jv_free(doc);
		free(json);
		return 1;
	}
	rc = delete_found(cmd, doc, kv) ? 0 : 1;
	if (!rc)
		render(cmd, doc);
	jv_free(doc);
	free(json);
	return rc;
}

/* ---- top ----------------------------------------------------------------------------- */

/* The number at a dotted path ("latency.count"); 0 when absent. */
static double num_at(const jv *doc, const char *path)
{
	char key[128];
	const jv *v = doc;

	while (v && *path) {
		size_t n = strcspn(path, ".");
		snprintf(key, sizeof key, "%.*s", (int)n, path);
		v = jv_get(v, key);
		path += n + (path[n] == '.');
	}
	return v && v->t == J_NUM ? strtod(v->s, NULL) : 0;
}

static double now_s(void) { return (double)pd_now_ns() / 1e9; }

/* p99 in ms from the cumulative buckets of `stats` latency.total_le_ms, over
 * the requests between two samples: the bound of the first bucket that holds
 * 99 % of them (">1000" past the last bound); -1 without requests. */
static double p99_ms(const jv *a, const jv *b, int *above)
{
	const jv *la = jv_get(jv_get(a, "latency"), "total_le_ms");
	const jv *lb = jv_get(jv_get(b, "latency"), "total_le_ms");
	double total, want;
	const jv *k;

	*above = 0;
	if (!lb)
		return -1;
	total = num_at(lb, "+Inf") - (la ? num_at(la, "+Inf") : 0);
	if (total <= 0)
		return -1;
	want = 0.99 * total;
	for (k = lb->kids; k; k = k->next) {
		double in = strtod(k->s, NULL) - (la ? num_at(la, k->key) : 0);
		if (strcmp(k->key, "+Inf") != 0 && in >= want)
			return strtod(k->key, NULL);
	}
	*above = 1;
	return 1000;
}

typedef struct tenant_rate {
	const char *name;
	double req_s, err_s, in_kbs, out_kbs, new_streams;
} tenant_rate;

static int by_req_desc(const void *x, const void *y)
{
	const tenant_rate *a = x, *b = y;

	if (a->req_s != b->req_s)
		return a->req_s < b->req_s ? 1 : -1;
	return strcmp(a->name, b->name);
}

/* Per-tenant rates between samples a and b, busiest first; returns the count. */
static size_t tenant_rates(const jv *a, const jv *b, double dt, tenant_rate *out, size_t max)
{
	const jv *ta = jv_get(a, "by_tenant"), *tb = jv_get(b, "by_tenant");
	size_t n = 0;

	for (const jv *t = tb ? tb->kids : NULL; t && n < max; t = t->next) {
		const jv *p = jv_get(ta, t->key);
		tenant_rate *r = &out[n++];
		r->name = t->key;
		r->req_s = (num_at(t, "requests") - num_at(p, "requests")) / dt;
		r->err_s = (num_at(t, "request_errors") - num_at(p, "request_errors")) / dt;
		r->in_kbs = (num_at(t, "received_bytes") - num_at(p, "received_bytes")) / dt / 1024;
		r->out_kbs = (num_at(t, "sent_bytes") - num_at(p, "sent_bytes")) / dt / 1024;
		r->new_streams = num_at(t, "new_streams") - num_at(p, "new_streams");
	}
	qsort(out, n, sizeof *out, by_req_desc);
	return n;
}

#define TOP_MAX_TENANTS 10001

static void top_json(const jv *b, double dt, double req_s, double p99, int above,
		     const tenant_rate *t, size_t n)
{
	printf("{\"interval_s\":%.3f,\"requests_per_s\":%.3f,\"p99_ms\":", dt, req_s);
	if (p99 < 0)
		printf("null");
	else
		printf("%g", p99);
	printf(",\"p99_above_last_bucket\":%s,\"connections\":%.0f,\"streams_cached\":%.0f,"
	       "\"cache_bytes\":%.0f,\"jobs_queued\":%.0f,\"jobs_running\":%.0f,"
	       "\"store_queue\":%.0f,\"tenants\":[",
	       above ? "true" : "false", num_at(b, "connections"), num_at(b, "streams_cached"),
	       num_at(b, "cache_bytes"), num_at(b, "jobs_queued"), num_at(b, "jobs_running"),
	       num_at(b, "store.queue_len"));
	for (size_t i = 0; i < n; i++) {
		printf("%s{\"tenant\":", i ? "," : "");
		put_json_str(t[i].name);
		printf(",\"requests_per_s\":%.3f,\"errors_per_s\":%.3f,\"received_kib_per_s\":%.3f,"
		       "\"sent_kib_per_s\":%.3f,\"new_streams\":%.0f}",
		       t[i].req_s, t[i].err_s, t[i].in_kbs, t[i].out_kbs, t[i].new_streams);
	}
	printf("]}\n");
}

static void top_text(const jv *a, const jv *b, double dt, double req_s, double p99, int above,
		     const tenant_rate *t, size_t n, size_t limit)
{
	char p[32];
	double ev = num_at(b, "cache_evictions") - num_at(a, "cache_evictions");

	if (p99 < 0)
		snprintf(p, sizeof p, "-");
	else
		snprintf(p, sizeof p, "%s%g ms", above ? ">" : "", p99);
	printf("pdeltad top: every %.1f s, up %.0f s\n", dt, num_at(b, "uptime_s"));
	printf("requests  %9.1f/s   p99 %-10s  connections %.0f\n", req_s, p, num_at(b, "connections"));
	printf("cache     %9.0f streams  %.1f MiB  evictions %.0f/s\n", num_at(b, "streams_cached"),
	       num_at(b, "cache_bytes") / 1048576, ev / dt);
	printf("queue     %9.0f queued  %.0f running  %.0f admitted  store %.0f\n\n",
	       num_at(b, "jobs_queued"), num_at(b, "jobs_running"), num_at(b, "jobs_admitted"),
	       num_at(b, "store.queue_len"));
	printf("%-24s %10s %9s %11s %11s %11s\n", "TENANT", "REQ/S", "ERR/S", "IN KiB/s",
	       "OUT KiB/s", "NEW_STREAMS");
	for (size_t i = 0; i < n && i < limit; i++)
		printf("%-24s %10.1f %9.1f %11.1f %11.1f %11.0f\n", t[i].name, t[i].req_s, t[i].err_s,
		       t[i].in_kbs, t[i].out_kbs, t[i].new_streams);
	if (n > limit)
		printf("(%zu more tenants: raise --limit)\n", n - limit);
}

static jv *stats_sample(ctl *c, pdelta *h)
{
	char *json = NULL;
	size_t len = 0;
	jv *doc;
	int rc = pdelta_admin(h, "stats", NULL, &json, &len);

	if (rc) {
		explain(h, "top", rc, NULL);
		if (c->json)
			json_error("top", rc, pdelta_last_error(h));
		return NULL;
	}
	doc = jv_parse(json, len);
	free(json);
	if (!doc || doc->t != J_OBJ) {
		fprintf(stderr, "pdeltactl: top: the server's stats are not a JSON object\n");
		jv_free(doc);
		return NULL;
	}
	return doc;
}

static void sleep_s(double s)
{
	struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};

	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static int top(ctl *c, int npos)
{
	char err[512];
	size_t limit = c->limit ? (size_t)strtoul(c->limit, NULL, 10) : 10;
	double interval = c->interval_s > 0 ? c->interval_s : 2, ta, tb;
	tenant_rate *rates = calloc(TOP_MAX_TENANTS, sizeof *rates);
	pdelta *h = NULL;
	jv *a = NULL, *b = NULL;
	int rc = 1, tty = isatty(1);

	if (npos || c->tenant || c->prefix || c->sort || !limit || !rates) {
		fprintf(stderr, "pdeltactl: top takes [--interval S] [--once] [--limit N]\n");
		free(rates);
		return 2;
	}
	int nrc = pdelta_new(&c->o, &h, err, sizeof err);

	if (nrc) {
		fprintf(stderr, "pdeltactl: %s\n", err);
		if (c->json)
			json_error("top", nrc, err);
		goto out;
	}
	ta = now_s();
	if (!(a = stats_sample(c, h)))
		goto out;
	for (;;) {
		sleep_s(interval);
		tb = now_s();
		if (!(b = stats_sample(c, h)))
			goto out;
		double dt = tb - ta, req_s = (num_at(b, "requests") - num_at(a, "requests")) / dt, p99;
		int above;
		size_t n = tenant_rates(a, b, dt, rates, TOP_MAX_TENANTS);
		p99 = p99_ms(a, b, &above);
		if (tty && !c->once && !c->json)
			printf("\033[H\033[2J");
		if (c->json)
			top_json(b, dt, req_s, p99, above, rates, n < limit ? n : limit);
		else
			top_text(a, b, dt, req_s, p99, above, rates, n, limit);
		fflush(stdout);
		jv_free(a);
		a = b;
		b = NULL;
		ta = tb;
		if (c->once) {
			rc = 0;
			goto out;
		}
	}
out:
	jv_free(a);
	jv_free(b);
	pdelta_free(h);
	free(rates);
	return rc;
}

int main(int argc, char **argv)
{
	const char *kv[2 * 6 + 1];
	const char *cmd;
	ctl c;
	int ch;

	memset(&c, 0, sizeof c);
	pdelta_opts_init(&c.o);
	c.o.client_name = "pdeltactl";
	c.o.max_attempts = 3;
	while ((ch = getopt_long(argc, argv, "h", ctl_long, NULL)) != -1) {
		if (ch == 'h') {
			usage(stdout);
			return 0;
		}
		if (ch == C_VERSION) {
			char libs[64];
			snprintf(libs, sizeof libs, "OpenSSL %s", OpenSSL_version(OPENSSL_VERSION_STRING));
			pd_version_print(stdout, "pdeltactl", libs);
			return 0;
		}
		if (parse_opt(&c, ch, optarg)) {
			usage(stderr);
			return 2;
		}
	}
	if (optind >= argc || !known_command(argv[optind])) {
		if (optind < argc)
			fprintf(stderr, "pdeltactl: unknown command '%s'\n", argv[optind]);
		usage(stderr);
		return 2;
	}
	if (!c.o.server) {
		fprintf(stderr, "pdeltactl: --server HOST:PORT is required\n");
		return 2;
	}
	cmd = argv[optind];
	if (strcmp(cmd, "top") == 0)
		return top(&c, argc - optind - 1);
	if (build_args(&c, cmd, argc - optind - 1, argv + optind + 1, kv))
		return 2;
	return run(&c, cmd, kv);
}
