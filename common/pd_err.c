/* pd_err: error codes, names and the setter used everywhere. */
#include "pd_err.h"

#include <stdio.h>

int pd_err_set(pd_err *e, int code, const char *fmt, ...)
{
	if (e) {
		va_list ap;
		va_start(ap, fmt);
		e->code = code;
		vsnprintf(e->msg, sizeof e->msg, fmt, ap);
		va_end(ap);
	}
	return code;
}

const char *pd_code_name(int code)
{
	static const char *const names[PD_E__COUNT] = {
		"ok",    "nomem",	    "malformed", "limit",    "io",
		"state", "bad-argument", "auth",      "sequence", "busy",
		"store", "protocol",	    "not-found", "timeout",  "internal",
	};
	if (code < 0 || code >= PD_E__COUNT)
		return "unknown";
	return names[code];
}

int pd_code_retryable(int code)
{
	switch (code) {
	case PD_E_NOMEM:
	case PD_E_IO:
	case PD_E_BUSY:
	case PD_E_STORE:
	case PD_E_TIMEOUT:
		return 1;
	default:
		return 0;
	}
}
