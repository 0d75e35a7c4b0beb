/*
 * pd_config: the settings of pdeltad (the log sink they configure is pd_log.h).
 *
 * ONE table, pd_settings (name, type, default, bounds, help), is the single
 * source of the defaults, of `pdeltad --help` and of the config-file parser
 * (and of the service's and the store's defaults);
 * the engine input limits come from pd_limit_table (pd_engine.h) and are
 * settings like any other (`max_input`, `max_samples`, ...). A config file is
 * `key = value` lines with `#` comments; `--key value` / `--key=value` flags
 * override it (`--config FILE` or $PDELTAD_CONFIG names the file).
 * PDELTAD_<SETTING> environment variables (upper case, underscores) sit
 * between the two: flag > environment > file > default. In names, `-` and
 * `_` are the same character: --help spells flags with dashes
 * (`--metrics-listen`), the config file's documented keys use underscores,
 * both accept either. `listen` and `metrics_listen` need an explicit port
 * (1..65535). Values: sizes take k/m/g suffixes (binary), durations take
 * ms/s/m/h/d (a bare number is milliseconds), booleans yes/no/true/false/1/0.
 *
 * Every error is a PD_E_ARG with a message naming the setting (and the
 * variable, for one from the environment); main() exits 2.
 */
#ifndef PD_CONFIG_H
#define PD_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "pd_engine.h"
#include "pd_err.h"
#include "pd_settings.h"


typedef struct pd_config {
	/* network */
	char *listen;         /* host:port of the TLS listener */
	char *metrics_listen; /* host:port of the HTTP metrics endpoint, "off" = none */
	char *server_name;    /* announced in HELLO_OK */
	/* TLS and authentication */
	char *tls_cert, *tls_key; /* PEM files (chain allowed in tls_cert) */
	char *tls_client_ca;      /* PEM CA file: enables client certificates (mTLS) */
	bool require_client_cert; /* refuse TLS handshakes without a valid client cert */
	char *tenants;            /* credentials file (pd_auth.h) */
	/* state and workers */
	char *db;       /* SQLite database path or PostgreSQL connection string */
	char *db_password_file; /* PostgreSQL password file, "" = none */
	bool db_sync;   /* fsync the WAL at every commit */
	uint64_t db_max_bytes; /* database size budget, 0 = none */
	/* state-store queue and group commit (pd_store_opts) */
	uint64_t store_max_queue, store_max_queue_bytes, store_max_batch, store_max_batch_bytes;
	uint64_t store_busy_timeout_ms, store_max_readers;
	uint64_t workers, cache_bytes, stream_ttl_ms, max_streams_per_tenant, max_queued_jobs;
	uint64_t max_queued_bytes;
	uint64_t chunk_bytes, gzip_level, worker_keep_bytes;
	/* connection limits and deadlines */
	uint64_t max_connections, max_inflight, max_frame, max_frame_preauth;
	uint64_t handshake_timeout_ms, frame_timeout_ms, request_timeout_ms;
	uint64_t idle_timeout_ms, keepalive_ms, write_timeout_ms, drain_timeout_ms;
	uint64_t output_budget_bytes;
	uint64_t metrics_tenants; /* tenants with their own series; the rest: "_other" */
	/* shadow verification (pd_shadow.h); shadow_rate in parts per million */
	uint64_t shadow_rate, shadow_max_bytes, shadow_max_upload, shadow_max_queue;
	uint64_t shadow_dir_max_files, shadow_dir_max_bytes, shadow_fallback;
	char *shadow_dir;
	/* before authentication: connection caps and the failed-auth throttle (pd_guard.h) */
	uint64_t max_unauth_connections, max_unauth_per_source;
	uint64_t auth_fail_delay_ms, auth_fail_delay_max_ms, auth_fail_block_after, auth_fail_block_ms;
	int log_level;  /* enum pd_log_level */
	int log_format; /* enum pd_log_format */
	char *env_ignored; /* PDELTAD_* variables that name no setting (warned about) */
	bool given[PD_SET__COUNT]; /* set by the file, the environment or a flag */
	pd_limits limits; /* engine input caps; max_input is also max_profile_bytes */
} pd_config;

/* What the command line asked for besides running the server. */
enum pd_config_action {
	PD_ACT_RUN, PD_ACT_CHECK, PD_ACT_HELP, PD_ACT_VERSION, PD_ACT_HASH_TOKEN, PD_ACT_HEALTHCHECK
};

/* Fills c with the table's defaults (strings are heap copies). */
int pd_config_init(pd_config *c, pd_err *e);
void pd_config_free(pd_config *c);
/* Sets one setting from its text form (name may use '-' or '_'). */
int pd_config_set(pd_config *c, const char *name, const char *value, pd_err *e);
/* Reads a `key = value` file; errors name the file and line. */
int pd_config_load_file(pd_config *c, const char *path, pd_err *e);
/* Defaults, then --config FILE (or $PDELTAD_CONFIG), then PDELTAD_* variables,
 * then every other flag; then pd_config_check() (skipped for --help /
 * --version / --hash-token; done for --check and --healthcheck). */
int pd_config_from_args(pd_config *c, int argc, char **argv, int *action, pd_err *e);
/* Cross-setting rules (required files, idle > keepalive, ...). */
int pd_config_check(const pd_config *c, pd_err *e);
struct pd_store_opts;
/* The store's options from the db and store_* settings (pointers into c). */
void pd_config_store_opts(const pd_config *c, struct pd_store_opts *o);
/* Settings given that the chosen store backend ignores: db_password_file
 * with SQLite, db_sync with PostgreSQL (which always commits with
 * synchronous_commit = on). Ignoring them is harmless (nothing less safe or
 * larger happens than asked), so pdeltad warns, at start and in --check;
 * db_max_bytes on PostgreSQL, a cap that would not hold, is refused instead
 * (pd_store_open, pd_store_probe). Up to n messages (static strings) in
 * msgs; returns how many. */
size_t pd_config_ignored(const pd_config *c, const char **msgs, size_t n);
/* Usage and every setting with its default and help. */
void pd_config_print_help(FILE *f, const char *prog);

#endif
