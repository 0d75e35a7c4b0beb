/*
 * pd_admin: the admin commands of pdeltad (PROTOCOL.md §11). A client of
 * pd_service.h: listings and stats run as service tasks on a worker and read
 * the store; reset and delete are the service's stream ops. pd_conn turns
 * ADMIN frames into pd_service_admin calls and the document back into frames.
 */
#ifndef PD_ADMIN_H
#define PD_ADMIN_H

#include <stddef.h>

#include "pd_err.h"
#include "pd_service.h"

typedef void (*pd_admin_done_fn)(void *arg, int rc, const pd_err *e, const char *json, size_t len);
/* cmd: streams | stream | reset | delete | stats | tenants (PROTOCOL.md §11);
 * args: NULL-terminated key/value pairs (tenant, prefix, name, sort, limit).
 * The caller fills in `tenant` (the connection's tenant unless the client
 * named one); without it `streams` lists every tenant and `stream`, `reset`,
 * `delete` are PD_E_ARG. Arguments are checked at once: an unknown command
 * or argument, a bad value, or shutdown returns an error (PD_E_ARG,
 * PD_E_BUSY) and done is NOT called. Otherwise PD_OK, and done is called
 * exactly once on a service thread: rc PD_OK with the JSON document (valid
 * during the call), or rc PD_E_NOTFOUND / PD_E_STORE / ... with e. reset and
 * delete are queued behind the stream's pending jobs. */
int pd_service_admin(pd_service *s, const char *cmd, const char *const *kv, pd_admin_done_fn done,
		     void *arg, pd_err *e);
/* 1 if cmd is a known admin command (to pick UNKNOWN_COMMAND vs NONE). */
int pd_service_admin_known(const char *cmd);

#endif
