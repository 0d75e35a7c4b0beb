/*
 * pd_settings: the one table of pdeltad's settings (name, type, default,
 * bounds, help). pd_config reads it for `pdeltad --help`, the config file,
 * the PDELTAD_* variables and the flags; pd_service_opts_init and
 * pd_store_opts_init take their defaults from it, so each default is
 * written once. The engine input limits have their own table (pd_limits).
 */
#ifndef PD_SETTINGS_H
#define PD_SETTINGS_H

#include <stdint.h>

enum pd_setting_type {
	PD_SETT_STR,    /* text */
	PD_SETT_BOOL,   /* yes/no/true/false/on/off/1/0 */
	PD_SETT_COUNT,  /* a number (k/m/g accepted) */
	PD_SETT_BYTES,  /* a size: k/m/g (binary) */
	PD_SETT_MS,     /* a duration: ms/s/m/h/d, a bare number is ms */
	PD_SETT_LEVEL,  /* log level word */
	PD_SETT_LOGFMT, /* log format word */
	PD_SETT_RATE,   /* a fraction 0..1 (or N%), stored in parts per million */
};

enum pd_setting_id {
	PD_SET_LISTEN,
	PD_SET_METRICS_LISTEN,
	PD_SET_SERVER_NAME,
	PD_SET_TLS_CERT,
	PD_SET_TLS_KEY,
	PD_SET_TLS_CLIENT_CA,
	PD_SET_REQUIRE_CLIENT_CERT,
	PD_SET_TENANTS,
	PD_SET_DB,
	PD_SET_DB_PASSWORD_FILE,
	PD_SET_DB_SYNC,
	PD_SET_DB_MAX_BYTES,
	PD_SET_STORE_MAX_QUEUE,
	PD_SET_STORE_MAX_QUEUE_BYTES,
	PD_SET_STORE_MAX_BATCH,
	PD_SET_STORE_MAX_BATCH_BYTES,
	PD_SET_STORE_BUSY_TIMEOUT_MS,
	PD_SET_STORE_MAX_READERS,
	PD_SET_WORKERS,
	PD_SET_CACHE_BYTES,
	PD_SET_STREAM_TTL,
	PD_SET_MAX_STREAMS_PER_TENANT,
	PD_SET_MAX_QUEUED_JOBS,
	PD_SET_MAX_QUEUED_BYTES,
	PD_SET_CHUNK_BYTES,
	PD_SET_GZIP_LEVEL,
	PD_SET_WORKER_KEEP_BYTES,
	PD_SET_MAX_CONNECTIONS,
	PD_SET_MAX_UNAUTH_CONNECTIONS,
	PD_SET_MAX_UNAUTH_PER_SOURCE,
	PD_SET_AUTH_FAIL_DELAY_MS,
	PD_SET_AUTH_FAIL_DELAY_MAX_MS,
	PD_SET_AUTH_FAIL_BLOCK_AFTER,
	PD_SET_AUTH_FAIL_BLOCK,
	PD_SET_MAX_INFLIGHT,
	PD_SET_MAX_FRAME,
	PD_SET_MAX_FRAME_PREAUTH,
	PD_SET_HANDSHAKE_TIMEOUT_MS,
	PD_SET_FRAME_TIMEOUT_MS,
	PD_SET_REQUEST_TIMEOUT_MS,
	PD_SET_IDLE_TIMEOUT_MS,
	PD_SET_KEEPALIVE_MS,
	PD_SET_OUTPUT_BUDGET_BYTES,
	PD_SET_WRITE_TIMEOUT_MS,
	PD_SET_DRAIN_TIMEOUT_MS,
	PD_SET_SHADOW_RATE,
	PD_SET_SHADOW_MAX_BYTES,
	PD_SET_SHADOW_MAX_UPLOAD,
	PD_SET_SHADOW_MAX_QUEUE,
	PD_SET_SHADOW_DIR,
	PD_SET_SHADOW_DIR_MAX_FILES,
	PD_SET_SHADOW_DIR_MAX_BYTES,
	PD_SET_SHADOW_FALLBACK,
	PD_SET_METRICS_TENANTS,
	PD_SET_LOG_LEVEL,
	PD_SET_LOG_FORMAT,
	PD_SET__COUNT
};

typedef struct pd_setting {
	const char *name; /* config-file key; flags and variables derive from it */
	int type;         /* enum pd_setting_type */
	const char *str;  /* default of PD_SETT_STR */
	uint64_t def;     /* default of the other types */
	uint64_t min, max;
	const char *help;
} pd_setting;

/* Indexed by enum pd_setting_id. */
extern const pd_setting pd_settings[PD_SET__COUNT];

/* The default of a numeric setting. */
uint64_t pd_setting_default(enum pd_setting_id id);

#endif
