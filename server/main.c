/*
 * pdeltad: the pdelta delta-profile server.
 *
 * Parses the settings (pd_config), then either prints help / version /
 * a token hash, checks the configuration (--check), probes a running
 * server's /healthz (--healthcheck), or runs the server (pd_server) until
 * SIGTERM/SIGINT.
 * Exit status: 0 after a clean drain, 1 on a runtime failure (cannot bind,
 * cannot open the database, bad TLS file at start), 2 on a usage error.
 * --check exits 0, 2 for a bad setting or file, 1 when the database cannot
 * be reached or used.
 * --healthcheck exits 0 (healthy) or 1 (anything else, a bad configuration
 * included): Docker reserves 2.
 */
#include <ctype.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <event2/event.h>
#include <openssl/crypto.h>
#include <sqlite3.h>

#include "pd_auth.h"
#include "pd_config.h"
#include "pd_healthcheck.h"
#include "pd_log.h"
#include "pd_notify.h"
#include "pd_server.h"
#include "pd_shadow.h"
#include "pd_store.h"
#include "pd_tls.h"
#include "pd_version.h"
#include "pdelta_proto.h"

/* Entropy a token can have at most: its length times log2 of the smallest
 * usual alphabet holding all its characters (digits, hex, lowercase+digits,
 * alphanumerics, base64/base64url, printable ASCII). */
static double token_bits(const char *t, size_t n)
{
	bool digit = false, lower = false, upper = false, hexl = true, b64 = true;

	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)t[i];
		digit |= ch >= '0' && ch <= '9';
		lower |= ch >= 'a' && ch <= 'z';
		upper |= ch >= 'A' && ch <= 'Z';
		if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F')))
			hexl = false;
		if (!(isalnum(ch) || ch == '+' || ch == '/' || ch == '-' || ch == '_' || ch == '='))
			b64 = false;
	}
	double alphabet = !lower && !upper ? (digit ? 10 : 1) : hexl ? 16 : 94;
	if (!hexl && b64)
		alphabet = upper && lower ? 62 : 36;
	for (size_t i = 0; i < n && b64 && !hexl; i++)
		if (!isalnum((unsigned char)t[i]))
			alphabet = 64;
	if (!digit && !lower && !upper)
		alphabet = 94;
	return (double)n * log2(alphabet);
}

/* Reads one token from stdin (one line; the newline is not part of it). */
static int hash_token(void)
{
	char line[PD_MAX_TOKEN + 3], hex[2 * PD_TOKEN_HASH_LEN + 1];
	uint8_t h[PD_TOKEN_HASH_LEN];
	size_t n;

	if (!fgets(line, sizeof line, stdin)) {
		fprintf(stderr, "pdeltad: --hash-token reads the token on stdin\n");
		return 2;
	}
	n = strcspn(line, "\r\n");
	if (line[n] == 0 && !feof(stdin)) {
		fprintf(stderr, "pdeltad: token longer than %d bytes\n", PD_MAX_TOKEN);
		return 2;
	}
	line[n] = 0;
	if (n == 0) {
		fprintf(stderr, "pdeltad: empty token\n");
		return 2;
	}
	for (size_t i = 0; i < n; i++) {
		if (line[i] < 0x21 || line[i] > 0x7e) {
			fprintf(stderr, "pdeltad: a token is printable ASCII without spaces\n");
			return 2;
		}
	}
	if (token_bits(line, n) < 128)
		fprintf(stderr,
			"pdeltad: warning: this token has at most %.0f bits of entropy (%zu characters); "
			"use 128 bits or more, e.g. `openssl rand -base64 24` or `openssl rand -hex 16`\n",
			token_bits(line, n), n);
	pd_auth_hash_token(line, n, h);
	pd_auth_hex(h, hex);
	printf("%s\n", hex);
	return 0;
}

/* Settings the store backend ignores (pd_config_ignored), one warning each. */
static void warn_ignored(const pd_config *cfg, bool to_log)
{
	const char *msgs[PD_SET__COUNT];
	size_t n = pd_config_ignored(cfg, msgs, PD_SET__COUNT);

	for (size_t i = 0; i < n; i++) {
		if (to_log)
			pd_log(PD_LOG_WARN, "%s", msgs[i]);
		else
			fprintf(stderr, "pdeltad: warning: %s\n", msgs[i]);
	}
}

/* --check, after the files: what a start would find cheaply, changing
 * nothing: the store (pd_store_probe: PostgreSQL is connected to once) and
 * shadow_dir (when shadow verification is on, as at start). */
static int check_state(const pd_config *cfg)
{
	struct pd_store_opts so;
	pd_err err;
	int rc;

	pd_config_store_opts(cfg, &so);
	rc = pd_store_probe(&so, &err);
	if (!rc && cfg->shadow_rate && cfg->shadow_dir[0])
		rc = pd_shadow_check_dir(cfg->shadow_dir, 0, &err);
	if (rc)
		fprintf(stderr, "pdeltad: %s\n", err.msg);
	return !rc ? 0 : rc == PD_E_ARG ? 2 : 1;
}

/* --check: settings were validated; also load the TLS files and credentials. */
static int check_files(const pd_config *cfg)
{
	pd_tls_opts o = {cfg->tls_cert, cfg->tls_key, cfg->tls_client_ca, cfg->require_client_cert};
	SSL_CTX *tls = NULL;
	pd_auth *auth = NULL;
	pd_tls_info info;
	pd_err err;
	double days;
	int rc;

	if (pd_tls_ctx_new(&o, &tls, &info, &err) || pd_auth_load(cfg->tenants, &auth, &err) ||
	    pd_auth_check_usable(auth, cfg->tenants, &err)) {
		pd_auth_free(auth);
		fprintf(stderr, "pdeltad: %s\n", err.msg);
		if (tls)
			SSL_CTX_free(tls);
		return 2;
	}
	days = pd_tls_days_left(info.not_after);
	if (days < PD_TLS_EXPIRY_WARN_DAYS)
		fprintf(stderr, "pdeltad: warning: certificate %s expires in %.1f days\n",
			cfg->tls_cert, days);
	SSL_CTX_free(tls);
	warn_ignored(cfg, false);
	rc = check_state(cfg);
	if (!rc)
		printf("configuration ok: %zu credentials\n", pd_auth_count(auth));
	pd_auth_free(auth);
	return rc;
}

#define HEALTHCHECK_TIMEOUT_MS 2000

static int healthcheck(const pd_config *cfg)
{
	char why[512];
	int rc = pd_healthcheck(cfg->metrics_listen, HEALTHCHECK_TIMEOUT_MS, why, sizeof why);

	fprintf(rc ? stderr : stdout, "pdeltad: %s\n", why);
	return rc;
}

static void print_version(void)
{
	char libs[256];

	snprintf(libs, sizeof libs, "OpenSSL %s, libevent %s, SQLite %s, systemd %s",
		 OpenSSL_version(OPENSSL_VERSION_STRING), event_get_version(), sqlite3_libversion(),
		 pd_notify_available() ? "yes" : "no");
	pd_version_print(stdout, "pdeltad", libs);
}

int main(int argc, char **argv)
{
	pd_config cfg;
	pd_server *srv = NULL;
	pd_err err;
	int action = PD_ACT_RUN, rc, status = 0;

	if (pd_config_init(&cfg, &err)) {
		fprintf(stderr, "pdeltad: %s\n", err.msg);
		return 1;
	}
	rc = pd_config_from_args(&cfg, argc, argv, &action, &err);
	if (rc) {
		fprintf(stderr, "pdeltad: %s\n", err.msg);
		status = action == PD_ACT_HEALTHCHECK ? 1 : 2;
		goto out;
	}
	switch (action) {
	case PD_ACT_HELP: pd_config_print_help(stdout, "pdeltad"); goto out;
	case PD_ACT_VERSION: print_version(); goto out;
	case PD_ACT_HASH_TOKEN: status = hash_token(); goto out;
	case PD_ACT_CHECK: status = check_files(&cfg); goto out;
	case PD_ACT_HEALTHCHECK: status = healthcheck(&cfg); goto out;
	default: break;
	}
	pd_log_set_level(cfg.log_level);
	pd_log_set_format(cfg.log_format);
	if (cfg.env_ignored)
		pd_log(PD_LOG_WARN, "ignoring environment variables that name no setting: %s",
		       cfg.env_ignored);
	warn_ignored(&cfg, true);
	rc = pd_server_new(&cfg, &srv, &err);
	if (!rc)
		rc = pd_server_run(srv, &err);
	if (rc) {
		pd_log(PD_LOG_ERROR, "%s", err.msg);
		status = 1;
	}
	pd_server_free(srv);
	if (!rc)
		pd_log(PD_LOG_INFO, "exit");
out:
	pd_config_free(&cfg);
	return status;
}
