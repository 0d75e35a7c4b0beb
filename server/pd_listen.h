/*
 * pd_listen: a TCP listener (libevent evconnlistener) that backs off instead
 * of spinning when accept() fails, e.g. with every file descriptor in use: it
 * logs a line, disables itself and re-enables itself after PD_LISTEN_RETRY_MS.
 * The TLS listener and the metrics endpoint both use it.
 */
#ifndef PD_LISTEN_H
#define PD_LISTEN_H

#include <event2/event.h>
#include <event2/listener.h>
#include <event2/util.h>

#include "pd_err.h"

#define PD_LISTEN_RETRY_MS 1000

typedef struct pd_listener pd_listener;

/* Binds addr ("host:port"); cb (NULL: set later, as evhttp_bind_listener
 * does) gets each accepted socket. what names the listener in errors and in
 * the log ("listen", "metrics_listen"). */
int pd_listener_new(struct event_base *base, const char *what, const char *addr, int backlog,
		    evconnlistener_cb cb, void *arg, pd_listener **out, pd_err *e);
/* The libevent listener (owned by l). */
struct evconnlistener *pd_listener_lev(pd_listener *l);
/* Stops accepting for good (a drain): no later retry re-enables it. */
void pd_listener_stop(pd_listener *l);
/* Closes the socket unless keep_socket (its evhttp owns it then). */
void pd_listener_free(pd_listener *l, int keep_socket);

#endif
