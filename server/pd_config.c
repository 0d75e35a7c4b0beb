/*
 * pd_config: the settings of pdeltad read from the one table of pd_settings
 * (defaults, --help, config file and flag parser), and the environment
 * overlay. Sizes and durations are parsed by pd_units.
 */
#include "pd_config.h"

#include <ctype.h>
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "pd_log.h"
#include "pd_settings.h"
#include "pd_store.h"
#include "pd_units.h"
#include "pdelta_proto.h"

typedef pd_setting setting;

#define KIB 1024ull
#define MIB (1024ull * 1024)
#define DAY_MS (86400ull * 1000)

#define NSETTINGS PD_SET__COUNT

/* Where each setting lives in pd_config. */
static const size_t setting_field[PD_SET__COUNT] = {
	[PD_SET_LISTEN] = offsetof(pd_config, listen),
	[PD_SET_METRICS_LISTEN] = offsetof(pd_config, metrics_listen),
	[PD_SET_SERVER_NAME] = offsetof(pd_config, server_name),
	[PD_SET_TLS_CERT] = offsetof(pd_config, tls_cert),
	[PD_SET_TLS_KEY] = offsetof(pd_config, tls_key),
	[PD_SET_TLS_CLIENT_CA] = offsetof(pd_config, tls_client_ca),
	[PD_SET_REQUIRE_CLIENT_CERT] = offsetof(pd_config, require_client_cert),
	[PD_SET_TENANTS] = offsetof(pd_config, tenants),
	[PD_SET_DB] = offsetof(pd_config, db),
	[PD_SET_DB_PASSWORD_FILE] = offsetof(pd_config, db_password_file),
	[PD_SET_DB_SYNC] = offsetof(pd_config, db_sync),
	[PD_SET_DB_MAX_BYTES] = offsetof(pd_config, db_max_bytes),
	[PD_SET_STORE_MAX_QUEUE] = offsetof(pd_config, store_max_queue),
	[PD_SET_STORE_MAX_QUEUE_BYTES] = offsetof(pd_config, store_max_queue_bytes),
	[PD_SET_STORE_MAX_BATCH] = offsetof(pd_config, store_max_batch),
	[PD_SET_STORE_MAX_BATCH_BYTES] = offsetof(pd_config, store_max_batch_bytes),
	[PD_SET_STORE_BUSY_TIMEOUT_MS] = offsetof(pd_config, store_busy_timeout_ms),
	[PD_SET_STORE_MAX_READERS] = offsetof(pd_config, store_max_readers),
	[PD_SET_WORKERS] = offsetof(pd_config, workers),
	[PD_SET_CACHE_BYTES] = offsetof(pd_config, cache_bytes),
	[PD_SET_STREAM_TTL] = offsetof(pd_config, stream_ttl_ms),
	[PD_SET_MAX_STREAMS_PER_TENANT] = offsetof(pd_config, max_streams_per_tenant),
	[PD_SET_MAX_QUEUED_JOBS] = offsetof(pd_config, max_queued_jobs),
	[PD_SET_MAX_QUEUED_BYTES] = offsetof(pd_config, max_queued_bytes),
	[PD_SET_CHUNK_BYTES] = offsetof(pd_config, chunk_bytes),
	[PD_SET_GZIP_LEVEL] = offsetof(pd_config, gzip_level),
	[PD_SET_WORKER_KEEP_BYTES] = offsetof(pd_config, worker_keep_bytes),
	[PD_SET_MAX_CONNECTIONS] = offsetof(pd_config, max_connections),
	[PD_SET_MAX_UNAUTH_CONNECTIONS] = offsetof(pd_config, max_unauth_connections),
	[PD_SET_MAX_UNAUTH_PER_SOURCE] = offsetof(pd_config, max_unauth_per_source),
	[PD_SET_AUTH_FAIL_DELAY_MS] = offsetof(pd_config, auth_fail_delay_ms),
	[PD_SET_AUTH_FAIL_DELAY_MAX_MS] = offsetof(pd_config, auth_fail_delay_max_ms),
	[PD_SET_AUTH_FAIL_BLOCK_AFTER] = offsetof(pd_config, auth_fail_block_after),
	[PD_SET_AUTH_FAIL_BLOCK] = offsetof(pd_config, auth_fail_block_ms),
	[PD_SET_MAX_INFLIGHT] = offsetof(pd_config, max_inflight),
	[PD_SET_MAX_FRAME] = offsetof(pd_config, max_frame),
	[PD_SET_MAX_FRAME_PREAUTH] = offsetof(pd_config, max_frame_preauth),
	[PD_SET_HANDSHAKE_TIMEOUT_MS] = offsetof(pd_config, handshake_timeout_ms),
	[PD_SET_FRAME_TIMEOUT_MS] = offsetof(pd_config, frame_timeout_ms),
	[PD_SET_REQUEST_TIMEOUT_MS] = offsetof(pd_config, request_timeout_ms),
	[PD_SET_IDLE_TIMEOUT_MS] = offsetof(pd_config, idle_timeout_ms),
	[PD_SET_KEEPALIVE_MS] = offsetof(pd_config, keepalive_ms),
	[PD_SET_OUTPUT_BUDGET_BYTES] = offsetof(pd_config, output_budget_bytes),
	[PD_SET_WRITE_TIMEOUT_MS] = offsetof(pd_config, write_timeout_ms),
	[PD_SET_DRAIN_TIMEOUT_MS] = offsetof(pd_config, drain_timeout_ms),
	[PD_SET_SHADOW_RATE] = offsetof(pd_config, shadow_rate),
	[PD_SET_SHADOW_MAX_BYTES] = offsetof(pd_config, shadow_max_bytes),
	[PD_SET_SHADOW_MAX_UPLOAD] = offsetof(pd_config, shadow_max_upload),
	[PD_SET_SHADOW_MAX_QUEUE] = offsetof(pd_config, shadow_max_queue),
	[PD_SET_SHADOW_DIR] = offsetof(pd_config, shadow_dir),
	[PD_SET_SHADOW_DIR_MAX_FILES] = offsetof(pd_config, shadow_dir_max_files),
	[PD_SET_SHADOW_DIR_MAX_BYTES] = offsetof(pd_config, shadow_dir_max_bytes),
	[PD_SET_SHADOW_FALLBACK] = offsetof(pd_config, shadow_fallback),
	[PD_SET_METRICS_TENANTS] = offsetof(pd_config, metrics_tenants),
	[PD_SET_LOG_LEVEL] = offsetof(pd_config, log_level),
	[PD_SET_LOG_FORMAT] = offsetof(pd_config, log_format),
};

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
		if (name_eq(pd_settings[i].name, name))
			return &pd_settings[i];
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

static int parse_size(const char *name, const char *v, uint64_t *out, pd_err *e)
{
	if (!isdigit((unsigned char)v[0]))
		return pd_err_set(e, PD_E_ARG, "%s: '%s' is not a number", name, v);
	if (pd_parse_size(v, out))
		return pd_err_set(e, PD_E_ARG, "%s: '%s' is not a size (number with k/m/g/t) or is out of range",
				  name, v);
	return PD_OK;
}

static int parse_ms(const char *name, const char *v, uint64_t *out, pd_err *e)
{
	if (!isdigit((unsigned char)v[0]))
		return pd_err_set(e, PD_E_ARG, "%s: '%s' is not a number", name, v);
	if (pd_parse_ms(v, out))
		return pd_err_set(e, PD_E_ARG,
				  "%s: '%s' is not a duration (number with ms/s/m/h/d) or is out of range",
				  name, v);
	return PD_OK;
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

/* A fraction 0..1 ("0.001", "1") or a percentage ("0.1%") as parts per million. */
static int parse_rate(const char *name, const char *v, uint64_t *out, pd_err *e)
{
	char *end;
	double x;

	errno = 0;
	x = isdigit((unsigned char)v[0]) || v[0] == '.' ? strtod(v, &end) : -1;
	if (x >= 0 && !errno && *end == '%' && end[1] == 0) {
		x /= 100;
		end++;
	}
	if (x < 0 || errno || *end || !(x <= 1))
		return pd_err_set(e, PD_E_ARG, "%s: '%s' is not a fraction between 0 and 1 (or 0%%..100%%)",
				  name, v);
	*out = (uint64_t)(x * 1e6 + 0.5);
	if (x > 0 && *out == 0)
		return pd_err_set(e, PD_E_ARG, "%s: '%s' is below the resolution of 0.000001", name, v);
	return PD_OK;
}

/* ---- storing values ------------------------------------------------------------ */

static void *field(pd_config *c, const setting *s)
{
	return (char *)c + setting_field[s - pd_settings];
}

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
	if (s->type == PD_SETT_BOOL)
		*(bool *)field(c, s) = x != 0;
	else if (s->type == PD_SETT_LEVEL || s->type == PD_SETT_LOGFMT)
		*(int *)field(c, s) = (int)x;
	else
		*(uint64_t *)field(c, s) = x;
}

static int set_one(pd_config *c, const setting *s, const char *v, pd_err *e)
{
	uint64_t x = 0;
	int rc = PD_OK;

	switch (s->type) {
	case PD_SETT_STR: return store_str(c, s, v, e);
	case PD_SETT_BOOL: rc = parse_bool(s->name, v, &x, e); break;
	case PD_SETT_COUNT: rc = parse_size(s->name, v, &x, e); break; /* 10k reads well for counts too */
	case PD_SETT_BYTES: rc = parse_size(s->name, v, &x, e); break;
	case PD_SETT_MS: rc = parse_ms(s->name, v, &x, e); break;
	case PD_SETT_LEVEL: rc = parse_word(s->name, v, level_names, 4, &x, e); break;
	case PD_SETT_LOGFMT: rc = parse_word(s->name, v, format_names, 2, &x, e); break;
	case PD_SETT_RATE: rc = parse_rate(s->name, v, &x, e); break;
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

	if (s) {
		int rc = set_one(c, s, value, e);

		c->given[s - pd_settings] |= rc == PD_OK;
		return rc;
	}
	l = find_limit(name);
	if (l)
		return pd_limits_set(&c->limits, l->name, value, e);
	return pd_err_set(e, PD_E_ARG, "unknown setting '%s' (see --help)", name);
}

int pd_config_init(pd_config *c, pd_err *e)
{
	memset(c, 0, sizeof *c);
	for (size_t i = 0; i < NSETTINGS; i++) {
		const setting *s = &pd_settings[i];
		if (s->type != PD_SETT_STR) {
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
		if (pd_settings[i].type != PD_SETT_STR)
			continue;
		char **slot = field(c, &pd_settings[i]);
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
	if (s && s->type == PD_SETT_BOOL && (*i + 1 >= argc || is_flag(argv[*i + 1])))
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

void pd_config_store_opts(const pd_config *c, struct pd_store_opts *o)
{
	pd_store_opts_init(o);
	o->path = c->db;
	o->password_file = c->db_password_file;
	o->synchronous_full = c->db_sync;
	o->max_db_bytes = c->db_max_bytes;
	o->max_queue = (size_t)c->store_max_queue;
	o->max_queue_bytes = (size_t)c->store_max_queue_bytes;
	o->max_batch = (size_t)c->store_max_batch;
	o->max_batch_bytes = (size_t)c->store_max_batch_bytes;
	o->busy_timeout_ms = (int)c->store_busy_timeout_ms;
	o->max_readers = (size_t)c->store_max_readers;
}

size_t pd_config_ignored(const pd_config *c, const char **msgs, size_t n)
{
	size_t k = 0;
	bool pg = pd_store_is_pg(c->db);

	if (!pg && c->db_password_file[0] && k < n)
		msgs[k++] = "db_password_file has no effect with SQLite (it is the PostgreSQL "
			    "password)";
	if (pg && c->given[PD_SET_DB_SYNC] && k < n)
		msgs[k++] = "db_sync has no effect with PostgreSQL (every commit runs with "
			    "synchronous_commit = on)";
	return k;
}

/* ---- --help --------------------------------------------------------------------------- */

static void fmt_default(const setting *s, char *out, size_t n)
{
	uint64_t v = s->def;

	switch (s->type) {
	case PD_SETT_STR: snprintf(out, n, "%s", s->str[0] ? s->str : "(none)"); return;
	case PD_SETT_BOOL: snprintf(out, n, "%s", v ? "yes" : "no"); return;
	case PD_SETT_LEVEL: snprintf(out, n, "%s", level_names[v]); return;
	case PD_SETT_LOGFMT: snprintf(out, n, "%s", format_names[v]); return;
	case PD_SETT_RATE: snprintf(out, n, "%g", (double)v / 1e6); return;
	case PD_SETT_BYTES:
		if (v && v % MIB == 0)
			snprintf(out, n, "%llum", (unsigned long long)(v / MIB));
		else if (v && v % KIB == 0)
			snprintf(out, n, "%lluk", (unsigned long long)(v / KIB));
		else
			snprintf(out, n, "%llu", (unsigned long long)v);
		return;
	case PD_SETT_MS:
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
		"       %s [--config FILE] ... --check   validate settings, TLS files, tenants,\n"
		"              the database (one connection, nothing created) and shadow_dir\n"
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
		"Sizes take k/m/g/t, durations ms/s/m/h/d (bare number = ms).\n"
		"Signals: SIGHUP reloads TLS files and tenants; SIGTERM/SIGINT drain and exit.\n\n"
		"Settings (default in brackets):\n",
		prog, prog, prog, prog, prog);
	for (size_t i = 0; i < NSETTINGS; i++) {
		fmt_default(&pd_settings[i], def, sizeof def);
		flag_name(pd_settings[i].name, name, sizeof name);
		fprintf(f, "  --%-24s [%s]\n        %s\n", name, def, pd_settings[i].help);
	}
	fprintf(f, "\nEngine input limits (request limit/INPUT_LIMIT; max-input is also the\n"
		   "announced max_profile_bytes):\n");
	for (size_t i = 0; i < pd_limit_count; i++) {
		flag_name(pd_limit_table[i].name, name, sizeof name);
		fprintf(f, "  --%-24s [%llu]\n        %s\n", name,
			(unsigned long long)pd_limit_table[i].def, pd_limit_table[i].help);
	}
}
