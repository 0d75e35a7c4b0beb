/*
 * pd_config: the settings table of pdeltad (defaults, --help, config file and
 * flag parser all read the one table below), and the environment overlay.
 */
#include "pd_config.h"

#include <ctype.h>
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "pdelta_proto.h"

enum set_type { T_STR, T_BOOL, T_COUNT, T_BYTES, T_MS, T_LEVEL, T_LOGFMT };

typedef struct setting {
	const char *name;
	int type;
	size_t off;      /* offsetof(pd_config, field) */
	const char *str; /* default of T_STR */
	uint64_t def;    /* default of the other types */
	uint64_t min, max;
	const char *help;
} setting;

#define KIB 1024ull
#define MIB (1024ull * 1024)
#define GIB (1024ull * 1024 * 1024)
#define DAY_MS (86400ull * 1000)
#define U32 0xffffffffull

#define STR(field, def, help) {#field, T_STR, offsetof(pd_config, field), def, 0, 0, 0, help}
#define NUM(name, type, field, def, min, max, help)                                             \
	{name, type, offsetof(pd_config, field), NULL, def, min, max, help}

/* The single source of defaults, --help and the parser. */
static const setting settings[] = {
	STR(listen, "127.0.0.1:7433", "host:port of the TLS listener"),
	STR(metrics_listen, "127.0.0.1:7434", "host:port of HTTP /metrics and /healthz; off = none"),
	STR(server_name, "pdeltad", "server name announced in HELLO_OK"),
	STR(tls_cert, "", "server certificate chain, PEM (required)"),
	STR(tls_key, "", "server private key, PEM (required)"),
	STR(tls_client_ca, "", "CA file for client certificates; enables mTLS"),
	NUM("require_client_cert", T_BOOL, require_client_cert, 0, 0, 1,
	    "refuse TLS clients without a valid client certificate"),
	STR(tenants, "", "credentials file: tenant=.. role=.. token_sha256=..|cert_cn=.. (required;\n"
	    "        refused without credentials unless it says allow_empty = true)"),
	STR(db, "pdeltad.db", "stream state: a SQLite file, or PostgreSQL as postgresql://... or\n"
	    "        libpq key=value pairs (host=... dbname=...; TLS with sslmode=...)"),
	STR(db_password_file, "", "PostgreSQL password, first line of this file (or PGPASSFILE)"),
	NUM("db_sync", T_BOOL, db_sync, 1, 0, 1,
	    "SQLite: fsync the WAL at every commit (power-loss safe); PostgreSQL always\n"
	    "        commits with synchronous_commit = on"),
	NUM("db_max_bytes", T_BYTES, db_max_bytes, 0, 0, 1ull << 50,
	    "SQLite: size budget of the database; past it commits fail (store errors);\n"
	    "        0 = none (PostgreSQL: refused, use its quotas)"),
	NUM("workers", T_COUNT, workers, 0, 0, 1024, "delta worker threads; 0 = one per CPU"),
	NUM("cache_bytes", T_BYTES, cache_bytes, 256 * MIB, MIB, 1ull << 40,
	    "hot stream-state cache budget"),
	NUM("stream_ttl", T_MS, stream_ttl_ms, 7 * DAY_MS, 0, 3650 * DAY_MS,
	    "idle streams expire after this long; 0 = never"),
	NUM("max_streams_per_tenant", T_COUNT, max_streams_per_tenant, 100000, 1, 1000000000,
	    "streams one tenant may have"),
	NUM("max_queued_jobs", T_COUNT, max_queued_jobs, 4096, 1, 1000000,
	    "delta requests admitted but not finished; beyond: busy/OVERLOADED"),
	NUM("max_queued_bytes", T_BYTES, max_queued_bytes, 256 * MIB, MIB, 1ull << 40,
	    "upload bytes of admitted, unfinished requests; beyond: busy/OVERLOADED"),
	NUM("chunk_bytes", T_BYTES, chunk_bytes, PD_DEFAULT_RESULT_CHUNK, KIB, PD_FRAME_MAX_ABS,
	    "compressed bytes per RESULT_DATA frame"),
	NUM("gzip_level", T_COUNT, gzip_level, 1, 1, 9, "gzip level of delta outputs"),
	NUM("worker_keep_bytes", T_BYTES, worker_keep_bytes, 128 * MIB, 0, 1ull << 40,
	    "memory a worker keeps between requests; more is freed after the request"),
	NUM("max_connections", T_COUNT, max_connections, 1024, 1, 1000000,
	    "open connections; beyond: accept and close at once"),
	NUM("max_unauth_connections", T_COUNT, max_unauth_connections, 256, 1, 1000000,
	    "connections not authenticated yet (TLS, waiting for HELLO); at most 3/4 of\n"
	    "        max_connections (the rest is kept for authenticated clients); beyond,\n"
	    "        the oldest unauthenticated connection is closed"),
	NUM("max_unauth_per_source", T_COUNT, max_unauth_per_source, 64, 1, 1000000,
	    "unauthenticated connections of one source address (IPv6: /64); beyond,\n"
	    "        that source's oldest is closed"),
	NUM("auth_fail_delay_ms", T_MS, auth_fail_delay_ms, 100, 0, 60000,
	    "a failed authentication is answered after this delay, doubled per failure\n"
	    "        of the same source; 0 = at once"),
	NUM("auth_fail_delay_max_ms", T_MS, auth_fail_delay_max_ms, 5000, 0, 60000,
	    "cap of that delay (also the delay of answers to a blocked source)"),
	NUM("auth_fail_block_after", T_COUNT, auth_fail_block_after, 20, 0, 1000000,
	    "failed authentications of one source that block it; 0 = never"),
	NUM("auth_fail_block", T_MS, auth_fail_block_ms, 5 * 60000, 1000, DAY_MS,
	    "block length (HELLOs refused unread), and how long failures are remembered"),
	NUM("max_inflight", T_COUNT, max_inflight, PD_DEFAULT_MAX_INFLIGHT, 1, 4096,
	    "open requests per connection"),
	NUM("max_frame", T_BYTES, max_frame, PD_DEFAULT_MAX_FRAME, PD_FRAME_MIN_LIMIT,
	    PD_FRAME_MAX_ABS, "largest frame payload accepted after authentication"),
	NUM("max_frame_preauth", T_BYTES, max_frame_preauth, PD_PREAUTH_MAX_PAYLOAD, 592,
	    PD_PREAUTH_MAX_PAYLOAD, "largest frame payload accepted before authentication"),
	NUM("handshake_timeout_ms", T_MS, handshake_timeout_ms, PD_DEFAULT_HANDSHAKE_TIMEOUT_MS, 1,
	    U32, "accept -> HELLO received (TLS included), absolute"),
	NUM("frame_timeout_ms", T_MS, frame_timeout_ms, PD_DEFAULT_FRAME_TIMEOUT_MS, 1, U32,
	    "first byte of a frame -> its last byte"),
	NUM("request_timeout_ms", T_MS, request_timeout_ms, PD_DEFAULT_REQUEST_TIMEOUT_MS, 1, U32,
	    "DELTA_BEGIN -> DATA_END of one upload"),
	NUM("idle_timeout_ms", T_MS, idle_timeout_ms, PD_DEFAULT_IDLE_TIMEOUT_MS, 2, U32,
	    "nothing received this long: GOODBYE IDLE (> keepalive_ms)"),
	NUM("keepalive_ms", T_MS, keepalive_ms, PD_DEFAULT_KEEPALIVE_MS, 1, U32,
	    "clients PING after this much silence (announced)"),
	NUM("output_budget_bytes", T_BYTES, output_budget_bytes, PD_DEFAULT_OUTPUT_BUDGET, 64 * KIB,
	    GIB, "unsent bytes per connection before reading pauses"),
	NUM("write_timeout_ms", T_MS, write_timeout_ms, PD_DEFAULT_WRITE_TIMEOUT_MS, 1, U32,
	    "output above budget this long: GOODBYE OVERLOAD, close"),
	NUM("drain_timeout_ms", T_MS, drain_timeout_ms, PD_DEFAULT_DRAIN_TIMEOUT_MS, 1, U32,
	    "GOODBYE -> close, and SIGTERM -> exit, at most"),
	NUM("metrics_tenants", T_COUNT, metrics_tenants, 100, 0, 10000,
	    "tenants with their own per-tenant metric series (first seen first);\n"
	    "        the others are summed under tenant=\"_other\""),
	NUM("log_level", T_LEVEL, log_level, PD_LOG_INFO, 0, 3, "error, warn, info or debug"),
	NUM("log_format", T_LOGFMT, log_format, PD_LOG_TEXT, 0, 1,
	    "text (one line per event) or json (one JSON object per line)"),
};
#define NSETTINGS (sizeof settings / sizeof settings[0])

static const char *const level_names[] = {"error", "warn", "info", "debug"};
static const char *const format_names[] = {"text", "json"};

/* ---- names ---------------------------------------------------------------- */

/* Compares setting names treating '-' and '_' as the same character. */
static bool name_eq(const char *a, const char *b)
{
	for (; *a && *b; a++, b++) {
		char x = *a == '-' ? '_' : *a, y = *b == '-' ? '_' : *b;
		if (x != y)
			return false;
	}
	return *a == *b;
}

static const setting *find_setting(const char *name)
{
	for (size_t i = 0; i < NSETTINGS; i++)
		if (name_eq(settings[i].name, name))
			return &settings[i];
	return NULL;
}

static const pd_limit_desc *find_limit(const char *name)
{
	for (size_t i = 0; i < pd_limit_count; i++)
		if (name_eq(pd_limit_table[i].name, name))
			return &pd_limit_table[i];
	return NULL;
}

/* ---- value parsers ---------------------------------------------------------- */

static int parse_u64(const char *name, const char *v, uint64_t *out, const char **rest, pd_err *e)
{
	char *end;
	unsigned long long x;

	if (!isdigit((unsigned char)v[0]))
		return pd_err_set(e, PD_E_ARG, "%s: '%s' is not a number", name, v);
	errno = 0;
	x = strtoull(v, &end, 10);
	if (errno)
		return pd_err_set(e, PD_E_ARG, "%s: '%s' is out of range", name, v);
	*out = x;
	*rest = end;
	return PD_OK;
}

/* Multiplies *v by m, refusing overflow. */
static int scale(const char *name, const char *v, uint64_t *x, uint64_t m, pd_err *e)
{
	if (*x > UINT64_MAX / m)
		return pd_err_set(e, PD_E_ARG, "%s: '%s' is out of range", name, v);
	*x *= m;
	return PD_OK;
}

static int parse_bytes(const char *name, const char *v, uint64_t *out, pd_err *e)
{
	const char *s;
	uint64_t m = 1;
	int rc = parse_u64(name, v, out, &s, e);

	if (rc)
		return rc;
	switch (tolower((unsigned char)*s)) {
	case 0: break;
	case 'k': m = KIB; s++; break;
	case 'm': m = MIB; s++; break;
	case 'g': m = GIB; s++; break;
	default: s = "?"; break;
	}
	if (*s == 'b' || *s == 'B')
		s++;
	if (*s)
		return pd_err_set(e, PD_E_ARG, "%s: '%s' is not a size (number with k/m/g)", name, v);
	return scale(name, v, out, m, e);
}

static int parse_ms(const char *name, const char *v, uint64_t *out, pd_err *e)
{
	static const struct { const char *suffix; uint64_t ms; } units[] = {
		{"", 1}, {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", DAY_MS},
	};
	const char *s;
	int rc = parse_u64(name, v, out, &s, e);

	if (rc)
		return rc;
	for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
		if (strcmp(s, units[i].suffix) == 0)
			return scale(name, v, out, units[i].ms, e);
	return pd_err_set(e, PD_E_ARG, "%s: '%s' is not a duration (number with ms/s/m/h/d)", name,
			  v);
}

static int parse_bool(const char *name, const char *v, uint64_t *out, pd_err *e)
{
	static const char *const yes[] = {"yes", "true", "on", "1"}, *const no[] = {"no", "false",
										  "off", "0"};
	for (size_t i = 0; i < 4; i++) {
		if (strcasecmp(v, yes[i]) == 0)
			return *out = 1, PD_OK;
		if (strcasecmp(v, no[i]) == 0)
			return *out = 0, PD_OK;
	}
	return pd_err_set(e, PD_E_ARG, "%s: '%s' is not a boolean (yes/no)", name, v);
}

static int parse_word(const char *name, const char *v, const char *const *words, uint64_t n,
		      uint64_t *out, pd_err *e)
{
	for (uint64_t i = 0; i < n; i++)
		if (strcasecmp(v, words[i]) == 0)
			return *out = i, PD_OK;
	return pd_err_set(e, PD_E_ARG, "%s: '%s' is not one of %s%s%s%s%s%s%s", name, v, words[0],
			  n > 1 ? ", " : "", n > 1 ? words[1] : "", n > 2 ? ", " : "",
			  n > 2 ? words[2] : "", n > 3 ? ", " : "", n > 3 ? words[3] : "");
}

/* ---- storing values ------------------------------------------------------------ */

static void *field(pd_config *c, const setting *s) { return (char *)c + s->off; }

static int store_str(pd_config *c, const setting *s, const char *v, pd_err *e)
{
	char **slot = field(c, s);
	char *copy = strdup(v);

	if (!copy)
		return pd_err_set(e, PD_E_NOMEM, "out of memory");
	free(*slot);
	*slot = copy;
	return PD_OK;
}

static void store_num(pd_config *c, const setting *s, uint64_t x)
{
	if (s->type == T_BOOL)
		*(bool *)field(c, s) = x != 0;
	else if (s->type == T_LEVEL || s->type == T_LOGFMT)
		*(int *)field(c, s) = (int)x;
	else
		*(uint64_t *)field(c, s) = x;
}

static int set_one(pd_config *c, const setting *s, const char *v, pd_err *e)
{
	uint64_t x = 0;
	int rc = PD_OK;

	switch (s->type) {
	case T_STR: return store_str(c, s, v, e);
	case T_BOOL: rc = parse_bool(s->name, v, &x, e); break;
	case T_COUNT: rc = parse_bytes(s->name, v, &x, e); break; /* 10k reads well for counts too */
	case T_BYTES: rc = parse_bytes(s->name, v, &x, e); break;
	case T_MS: rc = parse_ms(s->name, v, &x, e); break;
	case T_LEVEL: rc = parse_word(s->name, v, level_names, 4, &x, e); break;
	case T_LOGFMT: rc = parse_word(s->name, v, format_names, 2, &x, e); break;
	}
	if (rc)
		return rc;
	if (x < s->min || x > s->max)
		return pd_err_set(e, PD_E_ARG, "%s: %s is outside [%llu, %llu]", s->name, v,
				  (unsigned long long)s->min, (unsigned long long)s->max);
	store_num(c, s, x);
	return PD_OK;
}

int pd_config_set(pd_config *c, const char *name, const char *value, pd_err *e)
{
	const setting *s = find_setting(name);
	const pd_limit_desc *l;

	if (s)
		return set_one(c, s, value, e);
	l = find_limit(name);
	if (l)
		return pd_limits_set(&c->limits, l->name, value, e);
	return pd_err_set(e, PD_E_ARG, "unknown setting '%s' (see --help)", name);
}

int pd_config_init(pd_config *c, pd_err *e)
{
	memset(c, 0, sizeof *c);
	for (size_t i = 0; i < NSETTINGS; i++) {
		const setting *s = &settings[i];
		if (s->type != T_STR) {
			store_num(c, s, s->def);
			continue;
		}
		int rc = store_str(c, s, s->str, e);
		if (rc)
			return rc;
	}
	pd_limits_default(&c->limits);
	return PD_OK;
}

void pd_config_free(pd_config *c)
{
	free(c->env_ignored);
	c->env_ignored = NULL;
	for (size_t i = 0; i < NSETTINGS; i++) {
		if (settings[i].type != T_STR)
			continue;
		char **slot = field(c, &settings[i]);
		free(*slot);
		*slot = NULL;
	}
}

/* ---- config file ------------------------------------------------------------------ */

static char *trim(char *s)
{
	char *end;

	while (isspace((unsigned char)*s))
		s++;
	end = s + strlen(s);
	while (end > s && isspace((unsigned char)end[-1]))
		*--end = 0;
	return s;
}

static int load_line(pd_config *c, char *line, const char *path, unsigned lineno, pd_err *e)
{
	char *hash = strchr(line, '#'), *eq, *key, *val;
	int rc;

	if (hash)
		*hash = 0;
	key = trim(line);
	if (!*key)
		return PD_OK;
	eq = strchr(key, '=');
	if (!eq)
		return pd_err_set(e, PD_E_ARG, "%s:%u: expected 'key = value'", path, lineno);
	*eq = 0;
	val = trim(eq + 1);
	key = trim(key);
	rc = pd_config_set(c, key, val, e);
	if (rc) {
		pd_err inner = *e;
		return pd_err_set(e, rc, "%s:%u: %s", path, lineno, inner.msg);
	}
	return PD_OK;
}

int pd_config_load_file(pd_config *c, const char *path, pd_err *e)
{
	FILE *f = fopen(path, "r");
	char line[4096];
	unsigned lineno = 0;
	int rc = PD_OK;

	if (!f)
		return pd_err_set(e, PD_E_ARG, "config %s: %s", path, strerror(errno));
	while (!rc && fgets(line, sizeof line, f)) {
		lineno++;
		if (!strchr(line, '\n') && !feof(f)) {
			rc = pd_err_set(e, PD_E_ARG, "%s:%u: line too long", path, lineno);
			break;
		}
		rc = load_line(c, line, path, lineno, e);
	}
	if (!rc && ferror(f))
		rc = pd_err_set(e, PD_E_ARG, "config %s: read error", path);
	fclose(f);
	return rc;
}

/* ---- command line ------------------------------------------------------------------- */

static bool is_flag(const char *a) { return a && a[0] == '-' && a[1] == '-' && a[2]; }

/* Actions and --config, which must be known before the other flags. */
static int scan_actions(int argc, char **argv, int *action, const char **cfg, pd_err *e)
{
	*action = PD_ACT_RUN;
	*cfg = NULL;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0)
			*action = PD_ACT_HELP;
		else if (strcmp(a, "--version") == 0)
			*action = PD_ACT_VERSION;
		else if (strcmp(a, "--check") == 0)
			*action = PD_ACT_CHECK;
		else if (strcmp(a, "--healthcheck") == 0)
			*action = PD_ACT_HEALTHCHECK;
		else if (strcmp(a, "--hash-token") == 0 || strcmp(a, "--hash_token") == 0)
			*action = PD_ACT_HASH_TOKEN;
		else if (strncmp(a, "--config=", 9) == 0)
			*cfg = a + 9;
		else if (strcmp(a, "--config") == 0) {
			if (i + 1 >= argc)
				return pd_err_set(e, PD_E_ARG, "--config needs a file");
			*cfg = argv[++i];
		}
	}
	return PD_OK;
}

static bool is_action_or_config(const char *a)
{
	static const char *const words[] = {"--help", "-h", "--version", "--hash-token",
					    "--hash_token", "--check", "--healthcheck"};
	for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
		if (strcmp(a, words[i]) == 0)
			return true;
	return false;
}

/* One flag at argv[*i]; consumes its value. */
static int apply_flag(pd_config *c, int argc, char **argv, int *i, pd_err *e)
{
	const char *a = argv[*i], *eq, *val;
	const setting *s;
	char name[128];

	if (!is_flag(a))
		return pd_err_set(e, PD_E_ARG, "unexpected argument '%s' (see --help)", a);
	a += 2;
	eq = strchr(a, '=');
	if ((eq ? (size_t)(eq - a) : strlen(a)) >= sizeof name)
		return pd_err_set(e, PD_E_ARG, "unknown setting '%.40s...'", a);
	snprintf(name, sizeof name, "%.*s", eq ? (int)(eq - a) : (int)strlen(a), a);
	s = find_setting(name);
	/* Named before its value is looked for: `--bogus` alone is an unknown
	 * setting, not a setting missing its value. */
	if (!s && !find_limit(name))
		return pd_err_set(e, PD_E_ARG, "unknown setting '%s' (see --help)", name);
	if (eq)
		return pd_config_set(c, name, eq + 1, e);
	/* A bare boolean flag means yes. */
	if (s && s->type == T_BOOL && (*i + 1 >= argc || is_flag(argv[*i + 1])))
		return pd_config_set(c, name, "yes", e);
	if (*i + 1 >= argc)
		return pd_err_set(e, PD_E_ARG, "--%s needs a value", name);
	val = argv[++*i];
	return pd_config_set(c, name, val, e);
}

/* ---- environment ---------------------------------------------------------------------- */

#define ENV_PREFIX "PDELTAD_"
#define ENV_PREFIX_LEN (sizeof ENV_PREFIX - 1)

extern char **environ;

/* Remembers an unknown PDELTAD_ variable for main() to warn about. They are
 * not errors: container platforms invent such names (Kubernetes service
 * links make PDELTAD_PORT for a Service called pdeltad). */
static void note_ignored(pd_config *c, const char *var, size_t len)
{
	size_t old = c->env_ignored ? strlen(c->env_ignored) : 0;
	char *p = realloc(c->env_ignored, old + len + 3);

	if (!p)
		return;
	snprintf(p + old, len + 3, "%s%.*s", old ? ", " : "", (int)len, var);
	c->env_ignored = p;
}

/* PDELTAD_<SETTING> (upper case, underscores) for every setting and engine
 * limit; PDELTAD_CONFIG names the config file (read by the caller). */
static int apply_env(pd_config *c, pd_err *e)
{
	char name[128];

	for (char **ep = environ; ep && *ep; ep++) {
		const char *kv = *ep, *eq = strchr(kv, '=');
		size_t len;

		if (!eq || strncmp(kv, ENV_PREFIX, ENV_PREFIX_LEN) != 0)
			continue;
		len = (size_t)(eq - kv) - ENV_PREFIX_LEN;
		if (len == 0 || len >= sizeof name)
			continue;
		for (size_t i = 0; i < len; i++)
			name[i] = (char)tolower((unsigned char)kv[ENV_PREFIX_LEN + i]);
		name[len] = 0;
		if (strcmp(name, "config") == 0)
			continue;
		if (!find_setting(name) && !find_limit(name)) {
			note_ignored(c, kv, (size_t)(eq - kv));
			continue;
		}
		int rc = pd_config_set(c, name, eq + 1, e);
		if (rc) {
			pd_err inner = *e;
			return pd_err_set(e, rc, "%.*s: %s", (int)(eq - kv), kv, inner.msg);
		}
	}
	return PD_OK;
}

int pd_config_from_args(pd_config *c, int argc, char **argv, int *action, pd_err *e)
{
	const char *cfg;
	int rc = scan_actions(argc, argv, action, &cfg, e);

	if (rc || (*action != PD_ACT_RUN && *action != PD_ACT_CHECK &&
		   *action != PD_ACT_HEALTHCHECK))
		return rc;
	if (!cfg && getenv(ENV_PREFIX "CONFIG") && *getenv(ENV_PREFIX "CONFIG"))
		cfg = getenv(ENV_PREFIX "CONFIG");
	if (cfg) {
		rc = pd_config_load_file(c, cfg, e);
		if (rc)
			return rc;
	}
	rc = apply_env(c, e);
	if (rc)
		return rc;
	for (int i = 1; i < argc; i++) {
		if (is_action_or_config(argv[i]) || strncmp(argv[i], "--config=", 9) == 0)
			continue;
		if (strcmp(argv[i], "--config") == 0) {
			i++;
			continue;
		}
		rc = apply_flag(c, argc, argv, &i, e);
		if (rc)
			return rc;
	}
	return pd_config_check(c, e);
}

/* host:port or [v6]:port with a port in 1..65535. An address without a port
 * would parse (libevent takes port 0) and bind a random port nobody can find. */
static int check_addr(const char *setting_name, const char *addr, pd_err *e)
{
	const char *colon = strrchr(addr, ':'), *p;
	unsigned long port = 0;
	bool bracketed = addr[0] == '[';

	if (!colon || colon == addr || (bracketed && colon[-1] != ']') ||
	    (!bracketed && strchr(addr, ':') != colon))
		return pd_err_set(e, PD_E_ARG, "%s: '%s' has no port (want host:port or [v6]:port)",
				  setting_name, addr);
	for (p = colon + 1; isdigit((unsigned char)*p) && port <= 65535; p++)
		port = port * 10 + (unsigned long)(*p - '0');
	if (p == colon + 1 || *p || port == 0 || port > 65535)
		return pd_err_set(e, PD_E_ARG, "%s: '%s': the port must be 1..65535", setting_name,
				  addr);
	return PD_OK;
}

int pd_config_check(const pd_config *c, pd_err *e)
{
	int rc;

	if (!c->tls_cert[0] || !c->tls_key[0])
		return pd_err_set(e, PD_E_ARG, "tls_cert and tls_key are required");
	if (!c->tenants[0])
		return pd_err_set(e, PD_E_ARG, "tenants (the credentials file) is required");
	if (!c->db[0])
		return pd_err_set(e, PD_E_ARG, "db must not be empty");
	if (c->require_client_cert && !c->tls_client_ca[0])
		return pd_err_set(e, PD_E_ARG, "require_client_cert needs tls_client_ca");
	if (c->idle_timeout_ms <= c->keepalive_ms)
		return pd_err_set(e, PD_E_ARG, "idle_timeout_ms (%llu) must exceed keepalive_ms (%llu)",
				  (unsigned long long)c->idle_timeout_ms,
				  (unsigned long long)c->keepalive_ms);
	if (c->chunk_bytes > c->max_frame)
		return pd_err_set(e, PD_E_ARG, "chunk_bytes must not exceed max_frame");
	if (!c->listen[0] || !c->metrics_listen[0])
		return pd_err_set(e, PD_E_ARG, "listen and metrics_listen must not be empty");
	if ((rc = check_addr("listen", c->listen, e)))
		return rc;
	if (strcmp(c->metrics_listen, "off") != 0 &&
	    (rc = check_addr("metrics_listen", c->metrics_listen, e)))
		return rc;
	return PD_OK;
}

/* ---- --help --------------------------------------------------------------------------- */

static void fmt_default(const setting *s, char *out, size_t n)
{
	uint64_t v = s->def;

	switch (s->type) {
	case T_STR: snprintf(out, n, "%s", s->str[0] ? s->str : "(none)"); return;
	case T_BOOL: snprintf(out, n, "%s", v ? "yes" : "no"); return;
	case T_LEVEL: snprintf(out, n, "%s", level_names[v]); return;
	case T_LOGFMT: snprintf(out, n, "%s", format_names[v]); return;
	case T_BYTES:
		if (v && v % MIB == 0)
			snprintf(out, n, "%llum", (unsigned long long)(v / MIB));
		else if (v && v % KIB == 0)
			snprintf(out, n, "%lluk", (unsigned long long)(v / KIB));
		else
			snprintf(out, n, "%llu", (unsigned long long)v);
		return;
	case T_MS:
		if (v && v % DAY_MS == 0)
			snprintf(out, n, "%llud", (unsigned long long)(v / DAY_MS));
		else if (v && v % 1000 == 0)
			snprintf(out, n, "%llus", (unsigned long long)(v / 1000));
		else
			snprintf(out, n, "%llums", (unsigned long long)v);
		return;
	default: snprintf(out, n, "%llu", (unsigned long long)v); return;
	}
}

/* A setting's flag spelling: dashes (the config file keeps underscores). */
static void flag_name(const char *setting_name, char *out, size_t n)
{
	snprintf(out, n, "%s", setting_name);
	for (char *p = out; *p; p++)
		if (*p == '_')
			*p = '-';
}

void pd_config_print_help(FILE *f, const char *prog)
{
	char def[64], name[64];

	fprintf(f,
		"usage: %s [--config FILE] [--SETTING VALUE | --SETTING=VALUE]...\n"
		"       %s --hash-token < token     print the token_sha256 of a token\n"
		"       %s [--config FILE] ... --check   validate settings, TLS files, tenants\n"
		"       %s [--config FILE] ... --healthcheck   GET /healthz of metrics_listen:\n"
		"              exit 0 if it answers 200 within 2 s, else 1 (container HEALTHCHECK)\n"
		"       %s --help | --version\n\n"
		"pdeltad: the pdelta delta-profile server (TLS, proto/PROTOCOL.md).\n"
		"Config file: 'setting = value' lines, '#' comments.\n"
		"Environment: PDELTAD_<SETTING> (upper case, underscores: PDELTAD_METRICS_LISTEN)\n"
		"sets any setting below; PDELTAD_CONFIG names the config file when --config\n"
		"is not given. Precedence: flag > environment > config file > default.\n"
		"Flags are spelled with dashes (--metrics-listen); the config file uses\n"
		"underscores (metrics_listen = ...); both places accept either spelling.\n"
		"Sizes take k/m/g, durations ms/s/m/h/d (bare number = ms).\n"
		"Signals: SIGHUP reloads TLS files and tenants; SIGTERM/SIGINT drain and exit.\n\n"
		"Settings (default in brackets):\n",
		prog, prog, prog, prog, prog);
	for (size_t i = 0; i < NSETTINGS; i++) {
		fmt_default(&settings[i], def, sizeof def);
		flag_name(settings[i].name, name, sizeof name);
		fprintf(f, "  --%-24s [%s]\n        %s\n", name, def, settings[i].help);
	}
	fprintf(f, "\nEngine input limits (request limit/INPUT_LIMIT; max-input is also the\n"
		   "announced max_profile_bytes):\n");
	for (size_t i = 0; i < pd_limit_count; i++) {
		flag_name(pd_limit_table[i].name, name, sizeof name);
		fprintf(f, "  --%-24s [%llu]\n        %s\n", name,
			(unsigned long long)pd_limit_table[i].def, pd_limit_table[i].help);
	}
}
