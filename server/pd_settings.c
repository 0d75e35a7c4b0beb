/* pd_settings: the settings table of pdeltad (see pd_settings.h). */
#include "pd_settings.h"

#include <stddef.h>

#include "pd_log.h"
#include "pdelta_proto.h"

#define KIB 1024ull
#define MIB (1024ull * 1024)
#define GIB (1024ull * 1024 * 1024)
#define DAY_MS (86400ull * 1000)
#define U32 0xffffffffull

#define T_STR PD_SETT_STR
#define T_BOOL PD_SETT_BOOL
#define T_COUNT PD_SETT_COUNT
#define T_BYTES PD_SETT_BYTES
#define T_MS PD_SETT_MS
#define T_LEVEL PD_SETT_LEVEL
#define T_LOGFMT PD_SETT_LOGFMT
#define T_RATE PD_SETT_RATE

#define STR(name, def, help) {name, T_STR, def, 0, 0, 0, help}
#define NUM(name, type, def, min, max, help) {name, type, NULL, def, min, max, help}

const pd_setting pd_settings[PD_SET__COUNT] = {
	[PD_SET_LISTEN] = STR("listen", "127.0.0.1:7433", "host:port of the TLS listener"),
	[PD_SET_METRICS_LISTEN] = STR("metrics_listen", "127.0.0.1:7434", "host:port of HTTP /metrics and /healthz; off = none"),
	[PD_SET_SERVER_NAME] = STR("server_name", "pdeltad", "server name announced in HELLO_OK"),
	[PD_SET_TLS_CERT] = STR("tls_cert", "", "server certificate chain, PEM (required)"),
	[PD_SET_TLS_KEY] = STR("tls_key", "", "server private key, PEM (required)"),
	[PD_SET_TLS_CLIENT_CA] = STR("tls_client_ca", "", "CA file for client certificates; enables mTLS"),
	[PD_SET_REQUIRE_CLIENT_CERT] = NUM("require_client_cert", T_BOOL, 0, 0, 1,
	    "refuse TLS clients without a valid client certificate"),
	[PD_SET_TENANTS] = STR("tenants", "", "credentials file: tenant=.. role=.. token_sha256=..|cert_cn=.. (required;\n"
	    "        refused without credentials unless it says allow_empty = true)"),
	[PD_SET_DB] = STR("db", "pdeltad.db", "stream state: a SQLite file, or PostgreSQL as postgresql://... or\n"
	    "        libpq key=value pairs (host=... dbname=...; TLS with sslmode=...)"),
	[PD_SET_DB_PASSWORD_FILE] = STR("db_password_file", "",
	    "PostgreSQL password, first line of this file (or PGPASSFILE)"),
	[PD_SET_DB_SYNC] = NUM("db_sync", T_BOOL, 1, 0, 1,
	    "SQLite: fsync the WAL at every commit (power-loss safe); PostgreSQL always\n"
	    "        commits with synchronous_commit = on"),
	[PD_SET_DB_MAX_BYTES] = NUM("db_max_bytes", T_BYTES, 0, 0, 1ull << 50,
	    "SQLite: size budget of the database; past it commits fail (store errors);\n"
	    "        0 = none, else at least 512k (PostgreSQL: refused, use its quotas)"),
	[PD_SET_STORE_MAX_QUEUE] = NUM("store_max_queue", T_COUNT, 10000, 1, 10000000,
	    "state-store writes queued or being committed; beyond: store busy"),
	[PD_SET_STORE_MAX_QUEUE_BYTES] = NUM("store_max_queue_bytes", T_BYTES, 256 * MIB, MIB, 1ull << 40,
	    "bytes of those writes (rows are copied into the queue)"),
	[PD_SET_STORE_MAX_BATCH] = NUM("store_max_batch", T_COUNT, 1000, 1, 1000000,
	    "writes per group commit (one SQLite transaction)"),
	[PD_SET_STORE_MAX_BATCH_BYTES] = NUM("store_max_batch_bytes", T_BYTES, 32 * MIB, 64 * KIB, 1ull << 40,
	    "bytes per group commit (a larger single write still goes alone)"),
	[PD_SET_STORE_BUSY_TIMEOUT_MS] = NUM("store_busy_timeout_ms", T_MS, 5000, 1, 0x7fffffffull,
	    "wait for an SQLite lock held by another process"),
	[PD_SET_STORE_MAX_READERS] = NUM("store_max_readers", T_COUNT, 16, 1, 1024,
	    "pooled SQLite read connections; readers beyond wait"),
	[PD_SET_WORKERS] = NUM("workers", T_COUNT, 0, 0, 1024, "delta worker threads; 0 = one per CPU"),
	[PD_SET_CACHE_BYTES] = NUM("cache_bytes", T_BYTES, 256 * MIB, MIB, 1ull << 40,
	    "hot stream-state cache budget"),
	[PD_SET_STREAM_TTL] = NUM("stream_ttl", T_MS, 7 * DAY_MS, 0, 3650 * DAY_MS,
	    "idle streams expire after this long; 0 = never"),
	[PD_SET_MAX_STREAMS_PER_TENANT] = NUM("max_streams_per_tenant", T_COUNT, 100000, 1, 1000000000,
	    "streams one tenant may have"),
	[PD_SET_MAX_QUEUED_JOBS] = NUM("max_queued_jobs", T_COUNT, 4096, 1, 1000000,
	    "delta requests admitted but not finished; beyond: busy/OVERLOADED"),
	[PD_SET_MAX_QUEUED_BYTES] = NUM("max_queued_bytes", T_BYTES, 256 * MIB, MIB, 1ull << 40,
	    "upload bytes of admitted, unfinished requests; beyond: busy/OVERLOADED"),
	[PD_SET_CHUNK_BYTES] = NUM("chunk_bytes", T_BYTES, PD_DEFAULT_RESULT_CHUNK, KIB, PD_FRAME_MAX_ABS,
	    "compressed bytes per RESULT_DATA frame"),
	[PD_SET_GZIP_LEVEL] = NUM("gzip_level", T_COUNT, 1, 1, 9, "gzip level of delta outputs"),
	[PD_SET_WORKER_KEEP_BYTES] = NUM("worker_keep_bytes", T_BYTES, 128 * MIB, 0, 1ull << 40,
	    "memory a worker keeps between requests; more is freed after the request"),
	[PD_SET_MAX_CONNECTIONS] = NUM("max_connections", T_COUNT, 1024, 1, 1000000,
	    "open connections; beyond: accept and close at once"),
	[PD_SET_MAX_UNAUTH_CONNECTIONS] = NUM("max_unauth_connections", T_COUNT, 256, 1, 1000000,
	    "connections not authenticated yet (TLS, waiting for HELLO); at most 3/4 of\n"
	    "        max_connections (the rest is kept for authenticated clients); beyond,\n"
	    "        the oldest unauthenticated connection is closed"),
	[PD_SET_MAX_UNAUTH_PER_SOURCE] = NUM("max_unauth_per_source", T_COUNT, 64, 1, 1000000,
	    "unauthenticated connections of one source address (IPv6: /64); beyond,\n"
	    "        that source's oldest is closed"),
	[PD_SET_AUTH_FAIL_DELAY_MS] = NUM("auth_fail_delay_ms", T_MS, 100, 0, 60000,
	    "a failed authentication is answered after this delay, doubled per failure\n"
	    "        of the same source; 0 = at once"),
	[PD_SET_AUTH_FAIL_DELAY_MAX_MS] = NUM("auth_fail_delay_max_ms", T_MS, 5000, 0, 60000,
	    "cap of that delay (also the delay of answers to a blocked source)"),
	[PD_SET_AUTH_FAIL_BLOCK_AFTER] = NUM("auth_fail_block_after", T_COUNT, 20, 0, 1000000,
	    "failed authentications of one source that block it; 0 = never"),
	[PD_SET_AUTH_FAIL_BLOCK] = NUM("auth_fail_block", T_MS, 5 * 60000, 1000, DAY_MS,
	    "block length (HELLOs refused unread), and how long failures are remembered"),
	[PD_SET_MAX_INFLIGHT] = NUM("max_inflight", T_COUNT, PD_DEFAULT_MAX_INFLIGHT, 1, 4096,
	    "open requests per connection"),
	[PD_SET_MAX_FRAME] = NUM("max_frame", T_BYTES, PD_DEFAULT_MAX_FRAME, PD_FRAME_MIN_LIMIT,
	    PD_FRAME_MAX_ABS, "largest frame payload accepted after authentication"),
	[PD_SET_MAX_FRAME_PREAUTH] = NUM("max_frame_preauth", T_BYTES, PD_PREAUTH_MAX_PAYLOAD, 592,
	    PD_PREAUTH_MAX_PAYLOAD, "largest frame payload accepted before authentication"),
	[PD_SET_HANDSHAKE_TIMEOUT_MS] = NUM("handshake_timeout_ms", T_MS, PD_DEFAULT_HANDSHAKE_TIMEOUT_MS, 1,
	    U32, "accept -> HELLO received (TLS included), absolute"),
	[PD_SET_FRAME_TIMEOUT_MS] = NUM("frame_timeout_ms", T_MS, PD_DEFAULT_FRAME_TIMEOUT_MS, 1, U32,
	    "first byte of a frame -> its last byte"),
	[PD_SET_REQUEST_TIMEOUT_MS] = NUM("request_timeout_ms", T_MS, PD_DEFAULT_REQUEST_TIMEOUT_MS, 1, U32,
	    "DELTA_BEGIN -> DATA_END of one upload"),
	[PD_SET_IDLE_TIMEOUT_MS] = NUM("idle_timeout_ms", T_MS, PD_DEFAULT_IDLE_TIMEOUT_MS, 2, U32,
	    "nothing received this long: GOODBYE IDLE (> keepalive_ms)"),
	[PD_SET_KEEPALIVE_MS] = NUM("keepalive_ms", T_MS, PD_DEFAULT_KEEPALIVE_MS, 1, U32,
	    "clients PING after this much silence (announced)"),
	[PD_SET_OUTPUT_BUDGET_BYTES] = NUM("output_budget_bytes", T_BYTES, PD_DEFAULT_OUTPUT_BUDGET, 64 * KIB,
	    GIB, "unsent bytes per connection before reading pauses"),
	[PD_SET_WRITE_TIMEOUT_MS] = NUM("write_timeout_ms", T_MS, PD_DEFAULT_WRITE_TIMEOUT_MS, 1, U32,
	    "output above budget this long: GOODBYE OVERLOAD, close"),
	[PD_SET_DRAIN_TIMEOUT_MS] = NUM("drain_timeout_ms", T_MS, PD_DEFAULT_DRAIN_TIMEOUT_MS, 1, U32,
	    "GOODBYE -> close, and SIGTERM -> exit, at most"),
	[PD_SET_SHADOW_RATE] = NUM("shadow_rate", T_RATE, 1000, 0, 1000000,
	    "share of streams whose deltas are also computed by the slow path and\n"
	    "        compared (a hash of tenant and stream picks them); 0 = off, 1 = all"),
	[PD_SET_SHADOW_MAX_BYTES] = NUM("shadow_max_bytes", T_BYTES, 64 * MIB, 0, 1ull << 40,
	    "memory of shadow verification (kept uploads, queued checks); beyond: skipped"),
	[PD_SET_SHADOW_MAX_UPLOAD] = NUM("shadow_max_upload", T_BYTES, 8 * MIB, 0, 1ull << 40,
	    "larger uploads are not verified (skipped, size)"),
	[PD_SET_SHADOW_MAX_QUEUE] = NUM("shadow_max_queue", T_COUNT, 64, 1, 100000,
	    "checks waiting for the shadow thread; beyond: skipped (limit)"),
	[PD_SET_SHADOW_DIR] = STR("shadow_dir", "", "quarantine directory: inputs and outputs of each mismatch"),
	[PD_SET_SHADOW_DIR_MAX_FILES] = NUM("shadow_dir_max_files", T_COUNT, 50, 1, 1000000,
	    "mismatch cases kept in shadow_dir (oldest removed first)"),
	[PD_SET_SHADOW_DIR_MAX_BYTES] = NUM("shadow_dir_max_bytes", T_BYTES, 256 * MIB, MIB, 1ull << 40,
	    "bytes of the cases kept in shadow_dir (oldest removed first)"),
	[PD_SET_SHADOW_FALLBACK] = NUM("shadow_fallback", T_COUNT, 0, 0, 1000000,
	    "after a mismatch, the stream's next N deltas come from the slow path"),
	[PD_SET_METRICS_TENANTS] = NUM("metrics_tenants", T_COUNT, 100, 0, 10000,
	    "tenants with their own per-tenant metric series (first seen first);\n"
	    "        the others are summed under tenant=\"_other\""),
	[PD_SET_LOG_LEVEL] = NUM("log_level", T_LEVEL, PD_LOG_INFO, 0, 3, "error, warn, info or debug"),
	[PD_SET_LOG_FORMAT] = NUM("log_format", T_LOGFMT, PD_LOG_TEXT, 0, 1,
	    "text (one line per event) or json (one JSON object per line)"),
};

uint64_t pd_setting_default(enum pd_setting_id id) { return pd_settings[id].def; }
