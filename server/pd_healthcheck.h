/*
 * pd_healthcheck: `pdeltad --healthcheck`, the container probe that needs no
 * shell and no curl: GET /healthz on metrics_listen, healthy on 200.
 *
 * A wildcard address (0.0.0.0, [::], empty host) is probed on the matching
 * loopback. The whole exchange (connect, send, first line of the answer) has
 * one deadline, timeout_ms. Returns 0 when healthy, else 1 with the reason
 * in why (for the message on stderr; Docker keeps it in the health log).
 */
#ifndef PD_HEALTHCHECK_H
#define PD_HEALTHCHECK_H

#include <stddef.h>

int pd_healthcheck(const char *metrics_listen, unsigned timeout_ms, char *why, size_t why_len);

#endif
