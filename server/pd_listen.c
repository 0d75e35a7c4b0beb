/*
 * pd_listen: a listener that pauses when accept() fails (pd_listen.h).
 */
#include "pd_listen.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "pd_log.h"

struct pd_listener {
	struct evconnlistener *lev;
	struct event *retry;
	const char *what;
	bool stopped;
	pd_listener *next;
};

/* The live listeners (event loop thread). libevent hands an error callback
 * the accept callback's argument, which evhttp_bind_listener replaces by its
 * own: the listener is found by its evconnlistener instead. */
static pd_listener *live;

static pd_listener *of(struct evconnlistener *lev)
{
	pd_listener *l = live;

	while (l && l->lev != lev)
		l = l->next;
	return l;
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
	pd_listener *l = arg;

	if (!l->stopped)
		evconnlistener_enable(l->lev);
}

/* accept() failed (out of descriptors...): back off instead of spinning. */
static void on_error(struct evconnlistener *lev, void *arg)
{
	pd_listener *l = of(lev);
	int err = EVUTIL_SOCKET_ERROR();
	struct timeval tv = {PD_LISTEN_RETRY_MS / 1000, (PD_LISTEN_RETRY_MS % 1000) * 1000};

	if (!l)
		return;
	pd_log(PD_LOG_WARN, "%s: accept: %s; pausing the listener for %d ms", l->what,
	       evutil_socket_error_to_string(err), PD_LISTEN_RETRY_MS);
	evconnlistener_disable(lev);
	evtimer_add(l->retry, &tv);
}

int pd_listener_new(struct event_base *base, const char *what, const char *addr, int backlog,
		    evconnlistener_cb cb, void *arg, pd_listener **out, pd_err *e)
{
	struct sockaddr_storage ss;
	int len = sizeof ss;
	pd_listener *l;

	*out = NULL;
	if (evutil_parse_sockaddr_port(addr, (struct sockaddr *)&ss, &len) != 0)
		return pd_err_set(e, PD_E_ARG, "%s: cannot parse '%s' (host:port)", what, addr);
	l = calloc(1, sizeof *l);
	if (!l || !(l->retry = evtimer_new(base, on_retry, l))) {
		free(l);
		return pd_err_set(e, PD_E_NOMEM, "out of memory opening %s", what);
	}
	l->what = what;
	l->lev = evconnlistener_new_bind(base, cb, arg,
					 LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_FREE |
						 LEV_OPT_CLOSE_ON_EXEC,
					 backlog, (struct sockaddr *)&ss, len);
	if (!l->lev) {
		int err = EVUTIL_SOCKET_ERROR();

		pd_listener_free(l, 0);
		return pd_err_set(e, PD_E_IO, "%s %s: %s", what, addr,
				  evutil_socket_error_to_string(err));
	}
	evconnlistener_set_error_cb(l->lev, on_error);
	l->next = live;
	live = l;
	*out = l;
	return PD_OK;
}

struct evconnlistener *pd_listener_lev(pd_listener *l) { return l->lev; }

void pd_listener_stop(pd_listener *l)
{
	l->stopped = true;
	evconnlistener_disable(l->lev);
}

void pd_listener_free(pd_listener *l, int keep_socket)
{
	if (!l)
		return;
	for (pd_listener **p = &live; *p; p = &(*p)->next)
		if (*p == l) {
			*p = l->next;
			break;
		}
	if (l->lev && !keep_socket)
		evconnlistener_free(l->lev);
	if (l->retry)
		event_free(l->retry);
	free(l);
}
