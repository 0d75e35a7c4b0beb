/*
 * pd_auth: tenants-file parser and credential lookup (token hash, cert CN).
 */
#include "pd_auth.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "pd_frame.h"

#define MAX_CN 256
#define MAX_ENTRIES 1000000

typedef struct cred {
	bool is_token;
	uint8_t hash[PD_TOKEN_HASH_LEN];
	char cn[MAX_CN + 1];
	pd_principal who;
} cred;

struct pd_auth {
	cred *v;
	size_t n, cap;
	bool allow_empty; /* the file said `allow_empty = true` */
};

const char *pd_role_name(int role)
{
	return role == PD_ROLE_ADMIN ? "admin" : role == PD_ROLE_AGENT ? "agent" : "none";
}

void pd_auth_hash_token(const void *token, size_t len, uint8_t out[PD_TOKEN_HASH_LEN])
{
	unsigned int n = 0;
	/* EVP_Digest cannot fail for SHA-256 on valid arguments; zero the
	 * output anyway so a failure can never match a stored hash by chance. */
	memset(out, 0, PD_TOKEN_HASH_LEN);
	if (!EVP_Digest(token, len, out, &n, EVP_sha256(), NULL) || n != PD_TOKEN_HASH_LEN)
		memset(out, 0xff, PD_TOKEN_HASH_LEN);
}

void pd_auth_hex(const uint8_t h[PD_TOKEN_HASH_LEN], char out[2 * PD_TOKEN_HASH_LEN + 1])
{
	static const char digits[] = "0123456789abcdef";
	for (size_t i = 0; i < PD_TOKEN_HASH_LEN; i++) {
		out[2 * i] = digits[h[i] >> 4];
		out[2 * i + 1] = digits[h[i] & 15];
	}
	out[2 * PD_TOKEN_HASH_LEN] = 0;
}

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = tolower(c);
	return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

static bool parse_hex(const char *s, uint8_t out[PD_TOKEN_HASH_LEN])
{
	if (strlen(s) != 2 * PD_TOKEN_HASH_LEN)
		return false;
	for (size_t i = 0; i < PD_TOKEN_HASH_LEN; i++) {
		int hi = hexval((unsigned char)s[2 * i]), lo = hexval((unsigned char)s[2 * i + 1]);
		if (hi < 0 || lo < 0)
			return false;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	return true;
}

/* A tenant is a `name` string of the protocol (it travels in HELLO_OK). */
static bool tenant_ok(const char *t)
{
	size_t n = strlen(t);

	if (n == 0 || n > PD_MAX_TENANT || !pd_utf8_valid((const uint8_t *)t, n))
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)t[i] < 0x20 || t[i] == 0x7f)
			return false;
	return true;
}

/* The words of one line, before they are checked. */
typedef struct line_words {
	const char *tenant, *role, *token, *cn;
} line_words;

static int split_words(char *line, line_words *w, pd_err *e)
{
	char *save = NULL, *word;

	memset(w, 0, sizeof *w);
	for (word = strtok_r(line, " \t\r\n", &save); word; word = strtok_r(NULL, " \t\r\n", &save)) {
		char *eq = strchr(word, '=');
		const char **slot = NULL;
		if (!eq)
			return pd_err_set(e, PD_E_ARG, "'%.60s' is not key=value", word);
		*eq = 0;
		if (strcmp(word, "tenant") == 0)
			slot = &w->tenant;
		else if (strcmp(word, "role") == 0)
			slot = &w->role;
		else if (strcmp(word, "token_sha256") == 0)
			slot = &w->token;
		else if (strcmp(word, "cert_cn") == 0)
			slot = &w->cn;
		else
			return pd_err_set(e, PD_E_ARG, "unknown key '%.40s'", word);
		if (*slot)
			return pd_err_set(e, PD_E_ARG, "'%s' given twice", word);
		*slot = eq + 1;
	}
	return PD_OK;
}

static int words_to_cred(const line_words *w, cred *c, pd_err *e)
{
	memset(c, 0, sizeof *c);
	if (!w->tenant || !tenant_ok(w->tenant))
		return pd_err_set(e, PD_E_ARG, "missing or invalid tenant (1..%d bytes of UTF-8)",
				  PD_MAX_TENANT);
	snprintf(c->who.tenant, sizeof c->who.tenant, "%s", w->tenant);
	if (!w->role || strcmp(w->role, "agent") == 0)
		c->who.role = PD_ROLE_AGENT;
	else if (strcmp(w->role, "admin") == 0)
		c->who.role = PD_ROLE_ADMIN;
	else
		return pd_err_set(e, PD_E_ARG, "role must be agent or admin");
	if (!w->token == !w->cn)
		return pd_err_set(e, PD_E_ARG, "give exactly one of token_sha256= and cert_cn=");
	if (w->token) {
		c->is_token = true;
		if (!parse_hex(w->token, c->hash))
			return pd_err_set(e, PD_E_ARG, "token_sha256 must be 64 hex digits "
						       "(pdeltad --hash-token)");
		return PD_OK;
	}
	if (!w->cn[0] || strlen(w->cn) > MAX_CN)
		return pd_err_set(e, PD_E_ARG, "cert_cn must be 1..%d bytes", MAX_CN);
	snprintf(c->cn, sizeof c->cn, "%s", w->cn);
	return PD_OK;
}

static bool is_duplicate(const pd_auth *a, const cred *c)
{
	for (size_t i = 0; i < a->n; i++) {
		if (a->v[i].is_token != c->is_token)
			continue;
		if (c->is_token ? memcmp(a->v[i].hash, c->hash, sizeof c->hash) == 0
				: strcmp(a->v[i].cn, c->cn) == 0)
			return true;
	}
	return false;
}

static int add_cred(pd_auth *a, const cred *c, pd_err *e)
{
	if (is_duplicate(a, c))
		return pd_err_set(e, PD_E_ARG, "credential listed twice");
	if (a->n == a->cap) {
		size_t ncap = a->cap ? a->cap * 2 : 16;
		cred *nv;
		if (ncap > MAX_ENTRIES)
			return pd_err_set(e, PD_E_LIMIT, "more than %d credentials", MAX_ENTRIES);
		nv = realloc(a->v, ncap * sizeof *nv);
		if (!nv)
			return pd_err_set(e, PD_E_NOMEM, "out of memory");
		a->v = nv;
		a->cap = ncap;
	}
	a->v[a->n++] = *c;
	return PD_OK;
}

/* `allow_empty = true|false` (blanks optional, `-` for `_`): *found tells
 * whether line is that directive (then a->allow_empty is set). */
static int load_directive(pd_auth *a, const char *line, bool *found, pd_err *e)
{
	static const char *const yes[] = {"true", "yes", "1"}, *const no[] = {"false", "no", "0"};
	char val[16];
	int n = 0;

	*found = false;
	line += strspn(line, " \t");
	if (strncmp(line, "allow_empty", 11) != 0 && strncmp(line, "allow-empty", 11) != 0)
		return PD_OK;
	*found = true;
	line += 11;
	line += strspn(line, " \t");
	if (*line++ != '=')
		return pd_err_set(e, PD_E_ARG, "expected 'allow_empty = true' or 'allow_empty = false'");
	if (sscanf(line, " %15[^ \t\r\n] %n", val, &n) != 1 || line[n])
		return pd_err_set(e, PD_E_ARG, "expected 'allow_empty = true' or 'allow_empty = false'");
	for (size_t i = 0; i < 3; i++) {
		if (strcasecmp(val, yes[i]) == 0 || strcasecmp(val, no[i]) == 0) {
			a->allow_empty = strcasecmp(val, yes[i]) == 0;
			return PD_OK;
		}
	}
	return pd_err_set(e, PD_E_ARG, "allow_empty: '%s' is not true or false", val);
}

static int load_line(pd_auth *a, char *line, pd_err *e)
{
	char *hash = strchr(line, '#');
	line_words w;
	bool directive;
	cred c;
	int rc;

	if (hash)
		*hash = 0;
	rc = load_directive(a, line, &directive, e);
	if (rc || directive)
		return rc;
	rc = split_words(line, &w, e);
	if (rc || (!w.tenant && !w.role && !w.token && !w.cn))
		return rc; /* an error, or a blank line */
	rc = words_to_cred(&w, &c, e);
	if (!rc)
		rc = add_cred(a, &c, e);
	return rc;
}

int pd_auth_load(const char *path, pd_auth **out, pd_err *e)
{
	FILE *f = fopen(path, "r");
	pd_auth *a = NULL;
	char line[2048];
	unsigned lineno = 0;
	int rc = PD_OK;

	*out = NULL;
	if (!f)
		return pd_err_set(e, PD_E_IO, "tenants file %s: %s", path, strerror(errno));
	a = calloc(1, sizeof *a);
	if (!a) {
		rc = pd_err_set(e, PD_E_NOMEM, "out of memory");
		goto out;
	}
	while (fgets(line, sizeof line, f)) {
		lineno++;
		if (!strchr(line, '\n') && !feof(f)) {
			rc = pd_err_set(e, PD_E_ARG, "%s:%u: line too long", path, lineno);
			goto out;
		}
		rc = load_line(a, line, e);
		if (rc) {
			pd_err inner = *e;
			rc = pd_err_set(e, rc, "%s:%u: %s", path, lineno, inner.msg);
			goto out;
		}
	}
	if (ferror(f))
		rc = pd_err_set(e, PD_E_IO, "tenants file %s: read error", path);
out:
	fclose(f);
	if (rc) {
		pd_auth_free(a);
		return rc;
	}
	*out = a;
	return PD_OK;
}

void pd_auth_free(pd_auth *a)
{
	if (!a)
		return;
	OPENSSL_cleanse(a->v, a->n * sizeof *a->v);
	free(a->v);
	free(a);
}

size_t pd_auth_count(const pd_auth *a) { return a ? a->n : 0; }

int pd_auth_check_usable(const pd_auth *a, const char *path, pd_err *e)
{
	if (pd_auth_count(a) > 0 || (a && a->allow_empty))
		return PD_OK;
	return pd_err_set(e, PD_E_ARG,
			  "tenants file %s has no credentials: every client would be locked out "
			  "(a file meant to be empty says 'allow_empty = true')",
			  path);
}

bool pd_auth_by_token_hash(const pd_auth *a, const uint8_t h[PD_TOKEN_HASH_LEN], pd_principal *p)
{
	const cred *hit = NULL;

	/* Every entry is compared, whatever matched, so the time taken does
	 * not tell how far down the file a token is. */
	for (size_t i = 0; i < a->n; i++) {
		const cred *c = &a->v[i];
		bool eq = CRYPTO_memcmp(c->hash, h, PD_TOKEN_HASH_LEN) == 0;
		if (eq && c->is_token && !hit)
			hit = c;
	}
	if (hit)
		*p = hit->who;
	return hit != NULL;
}

bool pd_auth_by_cert_cn(const pd_auth *a, const char *cn, pd_principal *p)
{
	for (size_t i = 0; i < a->n; i++) {
		if (!a->v[i].is_token && strcmp(a->v[i].cn, cn) == 0) {
			*p = a->v[i].who;
			return true;
		}
	}
	return false;
}
