/*
 * pdl_error: the last error of a libpdelta handle, as recorded by the
 * library itself or received from the server in an ERROR frame.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "pdl_internal.h"

int pdl_fail(pdelta *h, int code, int retryable, const char *fmt, ...)
{
	va_list ap;

	h->err.code = code;
	h->err.retryable = retryable;
	h->err.from_server = 0;
	h->err.detail = 0;
	h->err.value = 0;
	va_start(ap, fmt);
	vsnprintf(h->errmsg, sizeof h->errmsg, fmt, ap);
	va_end(ap);
	return code;
}

static const char *detail_name(int d)
{
	static const char *const n[PD_DETAIL__COUNT] = {
		"",		   "SEQ_STALE",	    "SEQ_CONFLICT",	 "VERSION",
		"BAD_FRAME",	   "FRAME_TOO_LARGE", "INFLIGHT",	 "PROFILE_TOO_LARGE",
		"INPUT_LIMIT",	   "STREAM_LIMIT",    "LENGTH_MISMATCH", "HASH_MISMATCH",
		"SHUTTING_DOWN",   "CANCELLED",	    "DEADLINE",		 "OVERLOADED",
		"ROLE",		   "UNKNOWN_COMMAND", "AUTH_FAILED",
	};
	return d >= 0 && d < PD_DETAIL__COUNT ? n[d] : "?";
}

int pdl_fail_server(pdelta *h, const pd_msg_error *m)
{
	h->err.code = m->code;
	h->err.retryable = m->retryable;
	h->err.from_server = 1;
	h->err.detail = m->detail;
	h->err.value = m->value;
	snprintf(h->errmsg, sizeof h->errmsg, "server: %s%s%s: %.*s", pd_code_name(m->code),
		 m->detail ? "/" : "", detail_name(m->detail), (int)m->message.len, m->message.p);
	return m->code;
}

void pdl_clear_error(pdelta *h)
{
	memset(&h->err, 0, sizeof h->err);
	h->errmsg[0] = 0;
}
