/*
 * pd_err: the one error type of pdelta.
 *
 * Every fallible function returns an int status (0 = PD_OK, otherwise a
 * pd_code) and, when given a non-NULL pd_err*, fills it with the code and a
 * human-readable message. Callers use the "rc = f(...); if (rc) goto out;"
 * idiom. Codes are stable: they travel on the wire (see proto/PROTOCOL.md).
 */
#ifndef PD_ERR_H
#define PD_ERR_H

#include <stdarg.h>

enum pd_code {
	PD_OK = 0,
	PD_E_NOMEM = 1,     /* allocation failed (retryable) */
	PD_E_MALFORMED = 2, /* input is not a valid pprof / frame (not retryable) */
	PD_E_LIMIT = 3,     /* a configured limit was exceeded (not retryable) */
	PD_E_IO = 4,        /* file / socket I/O failed (retryable) */
	PD_E_STATE = 5,     /* stored state is corrupt or incompatible */
	PD_E_ARG = 6,       /* bad argument / usage */
	PD_E_AUTH = 7,      /* authentication / authorisation failed */
	PD_E_SEQ = 8,       /* sequence number older than the last applied */
	PD_E_BUSY = 9,      /* overloaded / backpressure (retryable) */
	PD_E_STORE = 10,    /* state store failure (retryable) */
	PD_E_PROTO = 11,    /* protocol violation */
	PD_E_NOTFOUND = 12, /* no such stream / object */
	PD_E_TIMEOUT = 13,  /* deadline exceeded (retryable) */
	PD_E_INTERNAL = 14,
	PD_E__COUNT
};

typedef struct pd_err {
	int code;
	char msg[256];
} pd_err;

/* Sets e (if non-NULL) and returns code. printf-style message. */
int pd_err_set(pd_err *e, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Static name of a code ("malformed", "limit", ...). */
const char *pd_code_name(int code);

/* Whether retrying the same request can help (transport, overload, store). */
int pd_code_retryable(int code);

#endif
