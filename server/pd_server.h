/*
 * pd_server: the process shell of pdeltad.
 *
 * Owns the event loop, the TLS listener, the janitor timer, the signal
 * handlers, the metrics endpoint, the current SSL_CTX and credentials, and
 * the pd_service. Connections themselves live in pd_conn.
 *
 * Threads: one I/O loop (this thread) for every socket, timer and signal;
 * the service's workers and store writer hand completions back to it
 * through pd_conn's queue. Nothing on the loop blocks on CPU work or disk
 * (evthread_use_pthreads() makes event_active() safe from those threads).
 *
 * Signals: SIGHUP reloads tls_cert/tls_key/tls_client_ca and the tenants
 * file atomically (both load or nothing changes; new connections use the new
 * ones, connections whose credential disappeared get GOODBYE REVOKED).
 * SIGTERM/SIGINT drain: the listener stops, /healthz turns 503, every
 * connection gets GOODBYE SHUTDOWN and closes once its open requests are
 * answered and flushed, bounded by drain_timeout_ms; then the service is
 * freed (it finishes admitted jobs and flushes the store) and
 * pd_server_run() returns. A second SIGTERM skips the wait.
 */
#ifndef PD_SERVER_H
#define PD_SERVER_H

#include "pd_config.h"
#include "pd_err.h"

typedef struct pd_server pd_server;

/* Loads TLS files and credentials, opens the database, binds both ports. */
int pd_server_new(const pd_config *cfg, pd_server **out, pd_err *e);
/* Serves until drained (SIGTERM/SIGINT). */
int pd_server_run(pd_server *s, pd_err *e);
void pd_server_free(pd_server *s);

#endif
