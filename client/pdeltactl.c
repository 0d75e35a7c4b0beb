/*
 * pdeltactl: the admin command line of pdeltad (PROTOCOL.md §11), a thin
 * shell over pdelta_admin().
 *
 *   pdeltactl --server H:P --ca CA [--cert C --key K | --token T | --token-file F]
 *             [--json] COMMAND [ARGS]
 *     streams [--tenant T] [--prefix P] [--sort name|last_seen|samples|bytes] [--limit N]
 *     stream NAME [--tenant T]
 *     reset NAME [--tenant T]
 *     delete NAME [--tenant T] | delete --prefix P [--tenant T]
 *     stats
 *     tenants [--limit N]
 *
 * By default the server's JSON answer is rendered as aligned tables (or
 * key/value lines); --json prints the server's document unchanged.
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

#include <openssl/crypto.h>

#include "pd_version.h"
#include "pdelta.h"
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
static const col tenant_cols[] = {
	{"name", "TENANT", 0}, {"streams", "STREAMS", 0}, {"state_bytes", "STATE_BYTES", 0},
};

static void render(const char *cmd, const jv *doc)
{
	const jv *t = jv_get(doc, "truncated");

	if (strcmp(cmd, "streams") == 0) {
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
} ctl;

static void usage(FILE *f)
{
	fprintf(f,
		"usage: pdeltactl --server HOST:PORT --ca CA [--cert C --key K | --token T |\n"
		"                 --token-file F] [--server-name N] [--json] COMMAND [ARGS]\n"
		"commands (an admin credential is needed):\n"
		"  streams [--tenant T] [--prefix P] [--sort name|last_seen|samples|bytes] [--limit N]\n"
		"  stream NAME [--tenant T]      one stream's state\n"
		"  reset NAME [--tenant T]       forget a stream's state\n"
		"  delete NAME [--tenant T]      delete a stream (or: delete --prefix P)\n"
		"  stats                         server counters\n"
		"  tenants [--limit N]           tenants and their streams\n"
		"--json prints the server's JSON document unchanged. --version prints the version.\n"
		"Exit status: 0 done; 1 failed, or not found (stream, reset, and a delete\n"
		"that removed nothing); 2 usage.\n");
}

static int read_token_file(ctl *c, const char *path)
{
	FILE *f = fopen(path, "r");
	size_t n;

	if (!f) {
		fprintf(stderr, "pdeltactl: %s: %s\n", path, strerror(errno));
		return -1;
	}
	if (!fgets(c->token, sizeof c->token, f))
		c->token[0] = 0;
	fclose(f);
	n = strcspn(c->token, "\r\n \t");
	c->token[n] = 0;
	if (!n) {
		fprintf(stderr, "pdeltactl: %s: empty token file\n", path);
		return -1;
	}
	c->o.token = c->token;
	return 0;
}

enum { C_SERVER = 256, C_CA, C_CERT, C_KEY, C_TOKEN, C_TOKEN_FILE, C_SNI, C_JSON, C_TENANT,
       C_PREFIX, C_SORT, C_LIMIT, C_TIMEOUT, C_VERSION };

static const struct option ctl_long[] = {
	{"server", required_argument, NULL, C_SERVER}, {"ca", required_argument, NULL, C_CA},
	{"cert", required_argument, NULL, C_CERT},     {"key", required_argument, NULL, C_KEY},
	{"token", required_argument, NULL, C_TOKEN},   {"token-file", required_argument, NULL, C_TOKEN_FILE},
	{"server-name", required_argument, NULL, C_SNI}, {"json", no_argument, NULL, C_JSON},
	{"tenant", required_argument, NULL, C_TENANT}, {"prefix", required_argument, NULL, C_PREFIX},
	{"sort", required_argument, NULL, C_SORT},     {"limit", required_argument, NULL, C_LIMIT},
	{"timeout", required_argument, NULL, C_TIMEOUT}, {"help", no_argument, NULL, 'h'},
	{"version", no_argument, NULL, C_VERSION},     {NULL, 0, NULL, 0},
};

static int parse_opt(ctl *c, int ch, const char *a)
{
	switch (ch) {
	case C_SERVER: c->o.server = a; break;
	case C_CA: c->o.ca_file = a; break;
	case C_CERT: c->o.cert_file = a; break;
	case C_KEY: c->o.key_file = a; break;
	case C_TOKEN: c->o.token = a; break;
	case C_TOKEN_FILE: return read_token_file(c, a);
	case C_SNI: c->o.verify_host = a; break;
	case C_JSON: c->json = 1; break;
	case C_TENANT: c->tenant = a; break;
	case C_PREFIX: c->prefix = a; break;
	case C_SORT: c->sort = a; break;
	case C_LIMIT: c->limit = a; break;
	case C_TIMEOUT: c->o.io_timeout_ms = c->o.connect_timeout_ms = (unsigned)atoi(a); break;
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
	if (npos == 1)
		KV("name", pos[0]);
	KV("prefix", c->prefix);
	KV("sort", c->sort);
	KV("limit", c->limit);
#undef KV
	kv[n] = NULL;
	return 0;
}

static const char *const commands[] = {"streams", "stream", "reset", "delete", "stats", "tenants"};

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

static int run(ctl *c, const char *cmd, const char *const *kv)
{
	char err[512], *json = NULL;
	size_t len = 0;
	pdelta *h = NULL;
	jv *doc;
	int rc;

	if ((rc = pdelta_new(&c->o, &h, err, sizeof err))) {
		fprintf(stderr, "pdeltactl: %s\n", err);
		return 1;
	}
	rc = pdelta_admin(h, cmd, kv, &json, &len);
	if (rc) {
		explain(h, cmd, rc, kv);
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
	if (build_args(&c, cmd, argc - optind - 1, argv + optind + 1, kv))
		return 2;
	return run(&c, cmd, kv);
}
