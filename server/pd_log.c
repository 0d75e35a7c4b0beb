/*
 * pd_log: the stderr log sink in text or JSON lines (pd_log.h).
 */
#include "pd_log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define LINE_MAX_BYTES 4096

static int log_level = PD_LOG_INFO;
static int log_format = PD_LOG_TEXT;

void pd_log_set_level(int level) { log_level = level; }

void pd_log_set_format(int format) { log_format = format; }

bool pd_log_enabled(int level) { return level <= log_level; }

/* A bounded line: appends never overflow, the end is cut instead. */
typedef struct line {
	char b[LINE_MAX_BYTES];
	size_t n;
} line;

static void put(line *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void put(line *l, const char *fmt, ...)
{
	va_list ap;
	int w;

	if (l->n + 1 >= sizeof l->b)
		return;
	va_start(ap, fmt);
	w = vsnprintf(l->b + l->n, sizeof l->b - l->n, fmt, ap);
	va_end(ap);
	if (w > 0)
		l->n += (size_t)w < sizeof l->b - l->n ? (size_t)w : sizeof l->b - l->n - 1;
}

/* A JSON string: quotes, backslashes and every byte outside printable ASCII
 * escaped (peer-supplied text may not be UTF-8; \u00XX keeps the line valid). */
static void put_json_str(line *l, const char *s)
{
	put(l, "\"");
	for (; *s && l->n + 8 < sizeof l->b; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch == '"' || ch == '\\')
			put(l, "\\%c", ch);
		else if (ch < 0x20 || ch >= 0x7f)
			put(l, "\\u%04x", ch);
		else
			l->b[l->n++] = (char)ch;
	}
	l->b[l->n] = 0;
	put(l, "\"");
}

static void put_time(line *l)
{
	struct timeval tv;
	struct tm tm;
	char t[32];

	gettimeofday(&tv, NULL);
	gmtime_r(&tv.tv_sec, &tm);
	strftime(t, sizeof t, "%Y-%m-%dT%H:%M:%S", &tm);
	put(l, "%s.%03ldZ", t, (long)tv.tv_usec / 1000);
}

static void format_text(line *l, int level, const pd_log_ctx *x, const char *msg)
{
	static const char *const tags[] = {"ERROR", "WARN", "INFO", "DEBUG"};

	put_time(l);
	put(l, " pdeltad[%d] %s ", (int)getpid(), tags[level]);
	if (x && x->conn)
		put(l, "[c%llu %s %s] ", (unsigned long long)x->conn, x->peer ? x->peer : "-",
		    x->tenant ? x->tenant : "-");
	put(l, "%s", msg);
}

static void json_member(line *l, const char *key, const char *v)
{
	if (!v)
		return;
	put(l, ",\"%s\":", key);
	put_json_str(l, v);
}

static void format_json(line *l, int level, const pd_log_ctx *x, const char *msg)
{
	static const char *const names[] = {"error", "warn", "info", "debug"};

	put(l, "{\"time\":\"");
	put_time(l);
	put(l, "\",\"level\":\"%s\",\"pid\":%d", names[level], (int)getpid());
	if (x && x->conn)
		put(l, ",\"connection\":%llu", (unsigned long long)x->conn);
	if (x) {
		json_member(l, "peer", x->peer);
		json_member(l, "tenant", x->tenant && strcmp(x->tenant, "-") ? x->tenant : NULL);
		json_member(l, "stream", x->stream);
		json_member(l, "event", x->event);
	}
	json_member(l, "msg", msg); /* last: put_json_str leaves room to close */
	put(l, "}");
}

static void vlog(int level, const pd_log_ctx *ctx, const char *fmt, va_list ap)
{
	char msg[2048];
	line l;

	if (!pd_log_enabled(level))
		return;
	vsnprintf(msg, sizeof msg, fmt, ap);
	l.n = 0;
	l.b[0] = 0;
	if (log_format == PD_LOG_JSON)
		format_json(&l, level, ctx, msg);
	else
		format_text(&l, level, ctx, msg);
	if (l.n + 1 >= sizeof l.b)
		l.n = sizeof l.b - 2;
	l.b[l.n++] = '\n';
	fwrite(l.b, 1, l.n, stderr);
}

void pd_log(int level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vlog(level, NULL, fmt, ap);
	va_end(ap);
}

void pd_logx(int level, const pd_log_ctx *ctx, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vlog(level, ctx, fmt, ap);
	va_end(ap);
}
