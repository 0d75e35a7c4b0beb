/*
 * pd_log: the one log sink of pdeltad (stderr, one line per event, written
 * with one write() so that lines of different threads never mix).
 *
 * Two formats (setting log_format): `text`, the historical
 *   2026-01-02T03:04:05.678Z pdeltad[42] INFO [c17 127.0.0.1:5432 acme] msg
 * and `json`, one object per line:
 *   {"time":"...","level":"info","pid":42,"connection":17,"peer":"...",
 *    "tenant":"acme","stream":"...","event":"auth","msg":"..."}
 * where connection, peer, tenant, stream and event appear only when known.
 * pd_log() is pd_logx() without context.
 */
#ifndef PD_LOG_H
#define PD_LOG_H

#include <stdbool.h>
#include <stdint.h>

enum pd_log_level { PD_LOG_ERROR = 0, PD_LOG_WARN = 1, PD_LOG_INFO = 2, PD_LOG_DEBUG = 3 };
enum pd_log_format { PD_LOG_TEXT = 0, PD_LOG_JSON = 1 };

/* What a line is about; every member optional (0 / NULL = unknown). */
typedef struct pd_log_ctx {
	uint64_t conn;      /* connection id (c17) */
	const char *peer;   /* ip:port */
	const char *tenant; /* authenticated tenant; "-" in text before auth */
	const char *stream; /* stream name of a request */
	const char *event;  /* a stable word for machines: "auth", "close", "listening", ... */
} pd_log_ctx;

void pd_log_set_level(int level);
void pd_log_set_format(int format);
bool pd_log_enabled(int level);
void pd_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void pd_logx(int level, const pd_log_ctx *ctx, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#endif
