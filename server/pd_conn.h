/*
 * pd_conn: one client connection of pdeltad, as an explicit state machine
 * (proto/PROTOCOL.md §4), and the requests it carries (§6).
 *
 *   TLS ──handshake──▶ AWAIT_HELLO ──HELLO──▶ READY ──GOODBYE──▶ DRAINING
 *    │                     │                    │                   │
 *    └────────── any error, deadline or limit ──┴──────▶ CLOSING ──▶ CLOSED
 *
 * One driver (conn_drive) runs after every event (bytes in, output drained,
 * a job completed, a deadline) and one setter (conn_set_state) changes the
 * state. Every close goes through conn_close() with a reason (counted in
 * pd_metrics, logged with the connection prefix `[c17 127.0.0.1:5432 acme]`).
 * CLOSING flushes what is queued (an ERROR, a GOODBYE) and then closes;
 * CLOSED connections are freed later from the loop (never inside their own
 * callbacks).
 *
 * Threads: everything here runs on the loop thread of the pd_conn_env, except
 * the two pd_service completion callbacks, which only copy the result into
 * the request and queue it for the loop (mutex + event_active). A request
 * whose connection went away (or that was cancelled) while its job runs is
 * "orphaned": it stays allocated until its completion arrives and is then
 * freed with its job.
 *
 * Limits: frame size (stricter before HELLO), max_inflight, upload size
 * (limits.max_input), handshake / frame / upload / idle / drain deadlines
 * (swept by pd_conn_sweep(), the janitor), and the per-connection output
 * budget: above it the connection stops reading and stops producing
 * RESULT_DATA until the backlog is under half the budget; stuck above it
 * for write_timeout_ms, it is closed.
 *
 * Before authentication (stricter, PROTOCOL.md §9): at most
 * max_unauth_connections unauthenticated connections (never more than 3/4
 * of max_connections, so authenticated clients always find room) and
 * max_unauth_per_source per source address; a new connection that would
 * pass a cap, or find the server full, closes the oldest unauthenticated
 * connection (of its source, for the per-source cap) instead of being
 * refused: holding sockets open cannot keep a fresh, fast client out.
 * Failed authentications are throttled per source (pd_guard.h): answered
 * after a growing delay (the connection stops reading meanwhile), then the
 * source is blocked for a while. Log lines about unauthenticated peers are
 * rate-limited (10 a second, the rest counted and reported).
 */
#ifndef PD_CONN_H
#define PD_CONN_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include <event2/event.h>
#include <openssl/ssl.h>

#include "pd_auth.h"
#include "pd_buf.h"
#include "pd_config.h"
#include "pd_metrics.h"
#include "pd_service.h"

typedef struct pd_conn pd_conn;
typedef struct pd_request pd_request;

/* What the connections of one event loop share. Owned by pd_server; the
 * fields above the line are set by it, the rest belong to pd_conn.c. */
typedef struct pd_conn_env {
	struct event_base *base;
	const pd_config *cfg;
	pd_service *svc;
	pd_metrics *metrics;
	SSL_CTX *tls;   /* for new connections; swapped by a reload */
	pd_auth *auth;  /* for new HELLOs; swapped by a reload */
	bool draining;  /* server drain: no new connections or requests */
	void (*on_close)(void *arg); /* after a connection is destroyed */
	void *on_close_arg;
	/* ---- private to pd_conn.c ---- */
	pd_conn *conns; /* live connections (not yet destroyed) */
	size_t nconns;
	uint64_t next_id;
	pd_conn *reap;  /* destroyed, to be freed by ev_reap */
	struct event *ev_reap;
	pthread_mutex_t done_mu; /* completions from service threads */
	pd_request *done_head, *done_tail;
	struct event *ev_done;
	pd_buf scratch; /* frame encoding */
	pd_conn *ua_head, *ua_tail; /* unauthenticated connections, oldest first */
	size_t nunauth;
	struct pd_guard *guard;     /* failed-authentication throttle per source */
	uint64_t log_window_ms;     /* rate limit of log lines about unauthenticated peers */
	unsigned log_lines;
	uint64_t log_suppressed;
	size_t in_service; /* requests handed to pd_service, completion not run yet */
} pd_conn_env;

/* Sets up the private part (events, queue); the public part must be set. */
int pd_conn_env_init(pd_conn_env *env, pd_err *e);
/* Frees what remains: call after every connection is gone and after
 * pd_service_free() (so that no completion can still arrive). */
void pd_conn_env_fini(pd_conn_env *env);

/* A TCP connection was accepted: starts the TLS handshake (or, over
 * max_connections, closes it at once). Takes ownership of fd. */
void pd_conn_accept(pd_conn_env *env, evutil_socket_t fd, const struct sockaddr *sa, int salen);

/*
 * Test transport, NOT for pdeltad: like pd_conn_accept() but without TLS (a
 * plain bufferevent; the connection starts in AWAIT_HELLO). Everything after
 * the transport (state machine, frame codec, limits, auth, service) is the
 * same code. It exists so that the fuzz driver (tests/fuzz/fuzz_conn.c) can
 * run thousands of connections per second; pd_server never calls it and no
 * configuration or command line option reaches it: the server is TLS-only.
 */
void pd_conn_accept_plain(pd_conn_env *env, evutil_socket_t fd, const struct sockaddr *sa,
			  int salen);

/* The janitor: enforces every deadline; call a few times per second. */
void pd_conn_sweep(pd_conn_env *env);
/* The janitor as if the monotonic clock (ms) read now: lets tests expire
 * deadlines without sleeping. pd_conn_sweep() is this with the real clock. */
void pd_conn_sweep_at(pd_conn_env *env, uint64_t now);
/* SIGTERM: GOODBYE SHUTDOWN to every authenticated connection (they drain),
 * handshaking ones are closed. */
void pd_conn_shutdown_all(pd_conn_env *env);
/* Drain deadline: fails what is open and closes every connection. */
void pd_conn_close_all(pd_conn_env *env);
/* After a reload: connections whose credential no longer resolves to the
 * same tenant and role get GOODBYE REVOKED and drain. */
void pd_conn_recheck_auth(pd_conn_env *env);
/* Runs queued completions now (used after pd_service_free()). */
void pd_conn_run_completions(pd_conn_env *env);

static inline size_t pd_conn_count(const pd_conn_env *env) { return env->nconns; }
/* Requests (delta jobs, admin commands) whose completion has not run on the
 * loop yet, orphans included: 0 means nothing more can arrive from the service. */
static inline size_t pd_conn_in_service(const pd_conn_env *env) { return env->in_service; }

#endif
