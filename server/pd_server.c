/*
 * pd_server: listener, event loop, janitor, signals (reload, drain) and the
 * wiring of service, TLS, credentials, connections and metrics.
 */
#include "pd_server.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>

#include <event2/event.h>
#include <event2/listener.h>
#include <event2/thread.h>
#include <event2/util.h>

#include "pd_auth.h"
#include "pd_conn.h"
#include "pd_listen.h"
#include "pd_log.h"
#include "pd_metrics.h"
#include "pd_notify.h"
#include "pd_service.h"
#include "pd_tls.h"

#define JANITOR_MS 100

struct pd_server {
	const pd_config *cfg;
	struct event_base *base;
	pd_service *svc;
	pd_metrics metrics;
	pd_conn_env env;
	bool env_ready;
	pd_listener *listener;
	pd_metrics_http *http;
	struct event *ev_janitor, *ev_drain;
	struct event *ev_sigterm, *ev_sigint, *ev_sighup;
	struct event *ev_watchdog; /* WATCHDOG=1 while the loop turns (WatchdogSec) */
	bool draining;
	time_t cert_not_after;   /* the certificate in service */
	uint64_t cert_warned_ms; /* last "expires soon" warning (monotonic-ish wall ms) */
	/* A copy of the counters for the admin `stats` hook, which runs on a
	 * worker thread: refreshed by the janitor, read under the mutex. */
	pthread_mutex_t snap_mu;
	pd_metrics snap;
	pd_tenant_counters *snap_tenants; /* the snapshot's own copy of the table */
};

/* ---- TLS and credentials (loaded together: the reload is atomic) ---- */

/* *empty is set when the tenants file parsed but holds no credentials and
 * does not say allow_empty (pd_auth_check_usable): refused like an error. */
static int load_credentials(const pd_config *cfg, SSL_CTX **tls, pd_auth **auth, bool *empty,
			    pd_tls_info *info, pd_err *e)
{
	pd_tls_opts o = {cfg->tls_cert, cfg->tls_key, cfg->tls_client_ca, cfg->require_client_cert};
	int rc = pd_tls_ctx_new(&o, tls, info, e);

	*empty = false;
	if (rc)
		return rc;
	rc = pd_auth_load(cfg->tenants, auth, e);
	if (!rc && (rc = pd_auth_check_usable(*auth, cfg->tenants, e))) {
		*empty = true;
		pd_auth_free(*auth);
		*auth = NULL;
	}
	if (rc) {
		SSL_CTX_free(*tls);
		*tls = NULL;
	}
	return rc;
}

static uint64_t wall_ms(void)
{
	struct timeval tv;
	gettimeofday(&tv, NULL);
	return (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
}

/* At every load, then at most daily from the janitor: an expiring
 * certificate must be noticed before it fails every handshake. */
static void warn_expiry(pd_server *s, bool force)
{
	double days = pd_tls_days_left(s->cert_not_after);
	uint64_t now = wall_ms();

	if (days >= PD_TLS_EXPIRY_WARN_DAYS || (!force && now - s->cert_warned_ms < 86400000ull))
		return;
	s->cert_warned_ms = now;
	pd_log(PD_LOG_WARN, "the server certificate %s expires in %.1f days: renew it and SIGHUP",
	       s->cfg->tls_cert, days);
}

static void reload(pd_server *s)
{
	SSL_CTX *tls;
	pd_auth *auth;
	pd_tls_info info;
	pd_err err;
	bool empty;

	if (load_credentials(s->cfg, &tls, &auth, &empty, &info, &err)) {
		s->metrics.reloads_failed++;
		if (empty)
			s->metrics.reloads_refused_empty++;
		if (info.cert_refused)
			s->metrics.reloads_refused_cert++;
		pd_log(PD_LOG_ERROR, "reload failed, keeping the current TLS files and tenants: %s",
		       err.msg);
		return;
	}
	SSL_CTX_free(s->env.tls); /* connections hold their own reference */
	pd_auth_free(s->env.auth);
	s->env.tls = tls;
	s->env.auth = auth;
	s->cert_not_after = info.not_after;
	s->metrics.reloads_ok++;
	pd_log(PD_LOG_INFO, "reloaded TLS files and %zu credentials", pd_auth_count(auth));
	warn_expiry(s, true);
	pd_conn_recheck_auth(&s->env);
}

/* ---- drain ---- */

static void finish_drain(pd_server *s)
{
	pd_conn_close_all(&s->env);
	event_base_loopexit(s->base, NULL);
}

static void on_conn_closed(void *arg)
{
	pd_server *s = arg;

	if (s->draining && pd_conn_count(&s->env) == 0)
		event_base_loopexit(s->base, NULL);
}

static void on_drain_deadline(evutil_socket_t fd, short what, void *arg)
{
	pd_server *s = arg;

	pd_log(PD_LOG_WARN, "drain deadline: closing %zu connections", pd_conn_count(&s->env));
	s->metrics.limit_hits[PD_LIM_DRAIN_TIMEOUT]++;
	finish_drain(s);
}

static void start_drain(pd_server *s, int sig)
{
	struct timeval tv;
	uint64_t ms = s->cfg->drain_timeout_ms;

	if (s->draining) {
		pd_log(PD_LOG_WARN, "signal %d again: closing everything now", sig);
		finish_drain(s);
		return;
	}
	pd_log(PD_LOG_INFO, "signal %d: draining %zu connections (at most %llu ms)", sig,
	       pd_conn_count(&s->env), (unsigned long long)ms);
	s->draining = true;
	s->env.draining = true;
	pd_notify_stopping();
	if (s->listener)
		pd_listener_stop(s->listener);
	tv.tv_sec = (time_t)(ms / 1000);
	tv.tv_usec = (suseconds_t)(ms % 1000) * 1000;
	evtimer_add(s->ev_drain, &tv);
	pd_conn_shutdown_all(&s->env);
	on_conn_closed(s);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
	pd_server *s = arg;

	if (sig == SIGHUP)
		reload(s);
	else
		start_drain(s, (int)sig);
}

/* ---- listener and janitor ---- */

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen,
		      void *arg)
{
	pd_server *s = arg;
	pd_conn_accept(&s->env, fd, sa, salen);
}

static void on_janitor(evutil_socket_t fd, short what, void *arg)
{
	pd_server *s = arg;

	pd_conn_sweep(&s->env);
	warn_expiry(s, false);
	pthread_mutex_lock(&s->snap_mu);
	s->snap = s->metrics;
	s->snap.tenants = s->snap_tenants;
	memcpy(s->snap_tenants, s->metrics.tenants, s->metrics.n_tenants * sizeof *s->snap_tenants);
	s->snap_tenants[s->metrics.max_tenants] = s->metrics.tenants[s->metrics.max_tenants];
	pthread_mutex_unlock(&s->snap_mu);
}

static void on_watchdog(evutil_socket_t fd, short what, void *arg)
{
	pd_notify_watchdog();
}

static int open_listener(pd_server *s, pd_err *e)
{
	return pd_listener_new(s->base, "listen", s->cfg->listen, 511, on_accept, s, &s->listener,
			       e);
}

/* ---- metrics ---- */

static void snapshot(void *arg, pd_metrics_view *v)
{
	pd_server *s = arg;

	v->net = s->metrics;
	pd_service_stats_get(s->svc, &v->svc);
	v->draining = s->draining;
	v->tenants_credentials = pd_auth_count(s->env.auth);
	v->cert_days_left = pd_tls_days_left(s->cert_not_after);
}

static void json_u64(pd_buf *out, const char *sep, const char *key, uint64_t v)
{
	char tmp[160];
	int n = snprintf(tmp, sizeof tmp, "%s\"%s\":%llu", sep, key, (unsigned long long)v);
	pd_buf_append(out, tmp, (size_t)n, NULL);
}

static void json_map(pd_buf *out, const char *key, const uint64_t *v, int n,
		     const char *(*name)(int))
{
	char tmp[96];
	int len = snprintf(tmp, sizeof tmp, ",\"%s\":{", key);

	pd_buf_append(out, tmp, (size_t)len, NULL);
	for (int i = 0; i < n; i++)
		json_u64(out, i ? "," : "", name(i), v[i]);
	pd_buf_append(out, "}", 1, NULL);
}

static const char *code_name_after_ok(int i) { return pd_code_name(i + 1); }

/* A JSON string (tenant names are UTF-8 without control characters, but
 * may hold quotes and backslashes). */
static void json_str(pd_buf *out, const char *v)
{
	pd_buf_append(out, "\"", 1, NULL);
	for (; *v; v++) {
		if (*v == '"' || *v == '\\')
			pd_buf_append(out, "\\", 1, NULL);
		pd_buf_append(out, v, 1, NULL);
	}
	pd_buf_append(out, "\"", 1, NULL);
}

static void json_tenant(pd_buf *out, const pd_tenant_counters *t, bool first)
{
	if (!first)
		pd_buf_append(out, ",", 1, NULL);
	json_str(out, t->name);
	pd_buf_append(out, ":{", 2, NULL);
	json_u64(out, "", "requests", t->requests);
	json_u64(out, ",", "request_errors", t->request_errors);
	json_u64(out, ",", "new_streams", t->new_streams);
	json_u64(out, ",", "received_bytes", t->bytes_in);
	json_u64(out, ",", "sent_bytes", t->bytes_out);
	pd_buf_append(out, "}", 1, NULL);
}

/* "by_tenant": the per-tenant counters of pdeltad_tenant_* (bounded table). */
static void json_tenants(pd_buf *out, const pd_metrics *m)
{
	const pd_tenant_counters *other = &m->tenants[m->max_tenants];

	pd_buf_append(out, ",\"by_tenant\":{", 14, NULL);
	for (size_t i = 0; i < m->n_tenants; i++)
		json_tenant(out, &m->tenants[i], i == 0);
	if (other->requests || other->bytes_in || other->request_errors)
		json_tenant(out, other, m->n_tenants == 0);
	pd_buf_append(out, "}", 1, NULL);
}

/* Admin `stats`: the network layer's counters (worker thread). */
static void stats_hook(void *arg, pd_buf *out)
{
	pd_server *s = arg;
	pd_metrics m;

	pthread_mutex_lock(&s->snap_mu);
	m = s->snap;
	json_u64(out, ",", "connections", m.conns_current);
	json_u64(out, ",", "connections_total", m.conns_total);
	json_u64(out, ",", "connections_authenticated", m.conns_authenticated);
	json_u64(out, ",", "tls_handshakes_failed", m.handshakes_failed);
	json_u64(out, ",", "auth_failures", m.auth_failed);
	json_u64(out, ",", "received_bytes", m.bytes_in);
	json_u64(out, ",", "sent_bytes", m.bytes_out);
	json_u64(out, ",", "tls_reloads_ok", m.reloads_ok);
	json_u64(out, ",", "tls_reloads_failed", m.reloads_failed);
	json_u64(out, ",", "tenants_refused_empty", m.reloads_refused_empty);
	json_u64(out, ",", "tls_cert_refused", m.reloads_refused_cert);
	json_map(out, "connection_closes", m.closes, PD_CLOSE__COUNT, pd_close_reason_name);
	json_map(out, "network_limit_hits", m.limit_hits, PD_LIM__COUNT, pd_limit_name);
	json_map(out, "request_errors_sent", m.request_errors + 1, PD_E__COUNT - 1,
		 code_name_after_ok);
	json_u64(out, ",", "metrics_tenants", m.max_tenants);
	json_tenants(out, &m); /* m.tenants is snap_tenants: still under the mutex */
	pthread_mutex_unlock(&s->snap_mu);
}

/* ---- setup ---- */

static int start_service(pd_server *s, pd_err *e)
{
	const pd_config *c = s->cfg;
	pd_service_opts o;

	pd_service_opts_init(&o);
	o.workers = (unsigned)c->workers;
	o.cache_bytes = c->cache_bytes;
	o.stream_ttl_ms = (int64_t)c->stream_ttl_ms;
	o.max_streams_per_tenant = c->max_streams_per_tenant;
	o.max_queued_jobs = c->max_queued_jobs;
	o.max_queued_bytes = c->max_queued_bytes;
	o.chunk_bytes = c->chunk_bytes;
	o.gzip_level = (int)c->gzip_level;
	o.worker_keep_bytes = c->worker_keep_bytes;
	o.limits = c->limits;
	o.shadow.rate_ppm = (uint32_t)c->shadow_rate;
	o.shadow.max_bytes = c->shadow_max_bytes;
	o.shadow.max_upload = c->shadow_max_upload;
	o.shadow.max_queue = (size_t)c->shadow_max_queue;
	o.shadow.dir = c->shadow_dir;
	o.shadow.dir_max_files = c->shadow_dir_max_files;
	o.shadow.dir_max_bytes = c->shadow_dir_max_bytes;
	o.shadow.fallback = (uint32_t)c->shadow_fallback;
	pd_config_store_opts(c, &o.store);
	return pd_service_new(&o, &s->svc, e);
}

/* WatchdogSec in the unit: ping at half the period from the loop itself, so
 * a stuck loop stops the pings and systemd restarts the service. */
static int add_watchdog(pd_server *s, pd_err *e)
{
	uint64_t usec = pd_notify_watchdog_usec() / 2;
	struct timeval tv = {(time_t)(usec / 1000000), (suseconds_t)(usec % 1000000)};

	if (!usec)
		return PD_OK;
	s->ev_watchdog = event_new(s->base, -1, EV_PERSIST, on_watchdog, s);
	if (!s->ev_watchdog || event_add(s->ev_watchdog, &tv))
		return pd_err_set(e, PD_E_NOMEM, "watchdog event failed");
	pd_log(PD_LOG_INFO, "systemd watchdog: pinging every %llu ms",
	       (unsigned long long)(usec / 1000));
	return PD_OK;
}

static int add_events(pd_server *s, pd_err *e)
{
	struct timeval jan = {0, JANITOR_MS * 1000};

	s->ev_janitor = event_new(s->base, -1, EV_PERSIST, on_janitor, s);
	s->ev_drain = evtimer_new(s->base, on_drain_deadline, s);
	s->ev_sigterm = evsignal_new(s->base, SIGTERM, on_signal, s);
	s->ev_sigint = evsignal_new(s->base, SIGINT, on_signal, s);
	s->ev_sighup = evsignal_new(s->base, SIGHUP, on_signal, s);
	if (!s->ev_janitor || !s->ev_drain || !s->ev_sigterm ||
	    !s->ev_sigint || !s->ev_sighup)
		return pd_err_set(e, PD_E_NOMEM, "event_new failed");
	if (event_add(s->ev_janitor, &jan) || event_add(s->ev_sigterm, NULL) ||
	    event_add(s->ev_sigint, NULL) || event_add(s->ev_sighup, NULL))
		return pd_err_set(e, PD_E_IO, "event_add failed");
	return add_watchdog(s, e);
}

static int init_env(pd_server *s, pd_err *e)
{
	pd_tls_info info;
	bool empty;
	int rc = load_credentials(s->cfg, &s->env.tls, &s->env.auth, &empty, &info, e);

	if (rc)
		return rc;
	s->cert_not_after = info.not_after;
	warn_expiry(s, true);
	s->env.base = s->base;
	s->env.cfg = s->cfg;
	s->env.svc = s->svc;
	s->env.metrics = &s->metrics;
	s->env.on_close = on_conn_closed;
	s->env.on_close_arg = s;
	rc = pd_conn_env_init(&s->env, e);
	s->env_ready = rc == PD_OK;
	if (!rc)
		pd_service_set_stats_hook(s->svc, stats_hook, s);
	return rc;
}

/* Descriptors besides the connections and the store's read pool: listeners,
 * metrics clients, logs, SQLite files or the store's writer, event loops. */
#define FD_RESERVE 64

/* Raises the soft RLIMIT_NOFILE towards the hard one when max_connections
 * needs it; warns when the limit still cannot hold them (accept() then fails
 * and the listeners pause). */
static void fit_fd_limit(const pd_config *c)
{
	rlim_t want = (rlim_t)(c->max_connections + c->store_max_readers + FD_RESERVE);
	struct rlimit rl, up;

	if (getrlimit(RLIMIT_NOFILE, &rl) || rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= want)
		return;
	up = rl;
	up.rlim_cur = rl.rlim_max != RLIM_INFINITY && rl.rlim_max < want ? rl.rlim_max : want;
	if (up.rlim_cur > rl.rlim_cur && !setrlimit(RLIMIT_NOFILE, &up)) {
		pd_log(PD_LOG_INFO, "open files limit raised from %llu to %llu for max_connections",
		       (unsigned long long)rl.rlim_cur, (unsigned long long)up.rlim_cur);
		rl = up;
	}
	if (rl.rlim_cur < want)
		pd_log(PD_LOG_WARN, "max_connections %llu + %llu descriptors for the store, listeners "
		       "and logs exceed the open files limit %llu (hard limit %llu): connections "
		       "beyond it are refused while the listeners pause; raise the limit (ulimit -n, "
		       "LimitNOFILE=) or lower max_connections",
		       (unsigned long long)c->max_connections,
		       (unsigned long long)(c->store_max_readers + FD_RESERVE),
		       (unsigned long long)rl.rlim_cur, (unsigned long long)rl.rlim_max);
}

int pd_server_new(const pd_config *cfg, pd_server **out, pd_err *e)
{
	pd_server *s;
	struct timeval tv;
	int rc;

	*out = NULL;
	if (evthread_use_pthreads() != 0)
		return pd_err_set(e, PD_E_INTERNAL, "evthread_use_pthreads failed");
	signal(SIGPIPE, SIG_IGN); /* a peer's reset must not kill the process */
	s = calloc(1, sizeof *s);
	if (!s)
		return pd_err_set(e, PD_E_NOMEM, "out of memory");
	s->cfg = cfg;
	pthread_mutex_init(&s->snap_mu, NULL);
	gettimeofday(&tv, NULL);
	s->metrics.start_ms = (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
	rc = pd_metrics_tenants_init(&s->metrics, cfg->metrics_tenants, e);
	if (!rc && !(s->snap_tenants = calloc(cfg->metrics_tenants + 1, sizeof *s->snap_tenants)))
		rc = pd_err_set(e, PD_E_NOMEM, "out of memory");
	s->snap = s->metrics;
	s->snap.tenants = s->snap_tenants;
	s->base = rc ? NULL : event_base_new();
	if (!rc && !s->base)
		rc = pd_err_set(e, PD_E_NOMEM, "event_base_new failed");
	if (!rc)
		fit_fd_limit(cfg);
	if (!rc)
		rc = start_service(s, e);
	if (!rc)
		rc = init_env(s, e);
	if (!rc)
		rc = open_listener(s, e);
	if (!rc && strcmp(cfg->metrics_listen, "off") != 0)
		rc = pd_metrics_http_new(s->base, cfg->metrics_listen, snapshot, s, &s->http, e);
	if (!rc)
		rc = add_events(s, e);
	if (rc) {
		pd_server_free(s);
		return rc;
	}
	*out = s;
	return PD_OK;
}

int pd_server_run(pd_server *s, pd_err *e)
{
	pd_log(PD_LOG_INFO, "listening on %s (TLS%s), metrics on %s, %zu credentials, db %s",
	       s->cfg->listen,
	       s->cfg->tls_client_ca[0] ? (s->cfg->require_client_cert ? ", client cert required"
								       : ", client certs accepted")
					: "",
	       s->cfg->metrics_listen, pd_auth_count(s->env.auth),
	       /* a connection string may carry a password */
	       pd_store_is_pg(s->cfg->db) ? "PostgreSQL (connection string not logged)" : s->cfg->db);
	pd_notify_ready("serving");
	if (event_base_dispatch(s->base) < 0)
		return pd_err_set(e, PD_E_IO, "event loop failed");
	pd_log(PD_LOG_INFO, "drained; stopping the service");
	return PD_OK;
}

static void free_event(struct event **ev)
{
	if (*ev)
		event_free(*ev);
	*ev = NULL;
}

void pd_server_free(pd_server *s)
{
	if (!s)
		return;
	pd_listener_free(s->listener, 0);
	pd_metrics_http_free(s->http);
	if (s->env_ready)
		pd_conn_close_all(&s->env);
	/* Finishes admitted jobs; their completions queue up for the env. */
	if (s->svc)
		pd_service_free(s->svc);
	if (s->env_ready)
		pd_conn_env_fini(&s->env);
	free_event(&s->ev_janitor);
	free_event(&s->ev_drain);
	free_event(&s->ev_sigterm);
	free_event(&s->ev_sigint);
	free_event(&s->ev_sighup);
	free_event(&s->ev_watchdog);
	if (s->env.tls)
		SSL_CTX_free(s->env.tls);
	pd_auth_free(s->env.auth);
	if (s->base)
		event_base_free(s->base);
	pthread_mutex_destroy(&s->snap_mu);
	pd_metrics_tenants_fini(&s->metrics);
	free(s->snap_tenants);
	free(s);
}
