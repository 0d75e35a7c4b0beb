/*
 * pd_metrics: Prometheus text rendering of the network and service counters,
 * and the evhttp server of /metrics and /healthz.
 */
#include "pd_metrics.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>
#include <event2/util.h>

#include "pd_store.h"
#include "pd_tls.h"

static const char *const close_names[PD_CLOSE__COUNT] = {
	"peer_closed",	  "io_error",	     "tls_handshake",	"handshake_timeout",
	"frame_timeout",  "idle",	     "protocol",	"frame_too_large",
	"auth",		  "version",	     "inflight",	"output_stuck",
	"client_goodbye", "shutdown",	     "drain_timeout",	"revoked",
	"nomem",	  "unauth_evicted",
};

static const char *const limit_names[PD_LIM__COUNT] = {
	"max_connections",    "max_frame_preauth", "max_frame",	       "max_inflight",
	"max_profile_bytes",  "handshake_timeout", "frame_timeout",    "request_timeout",
	"idle_timeout",	      "output_budget",	   "write_timeout",    "drain_timeout",
	"engine_input",	      "max_streams_per_tenant", "max_queued_jobs",
	"max_unauth_connections", "max_unauth_per_source", "auth_blocked",
};

const char *pd_close_reason_name(int r)
{
	return r >= 0 && r < PD_CLOSE__COUNT ? close_names[r] : "unknown";
}

const char *pd_limit_name(int k) { return k >= 0 && k < PD_LIM__COUNT ? limit_names[k] : "unknown"; }

/* ---- exposition helpers ---------------------------------------------------- */

/* A label value in the text format: backslash, quote and newline escaped. */
static void label_value(struct evbuffer *b, const char *s)
{
	for (; *s; s++) {
		if (*s == '\\' || *s == '"')
			evbuffer_add_printf(b, "\\%c", *s);
		else if (*s == '\n')
			evbuffer_add(b, "\\n", 2);
		else
			evbuffer_add(b, s, 1);
	}
}

static void family(struct evbuffer *b, const char *name, const char *type, const char *help)
{
	evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void sample(struct evbuffer *b, const char *name, const char *labels, uint64_t v)
{
	evbuffer_add_printf(b, "%s%s%s%s %llu\n", name, labels ? "{" : "", labels ? labels : "",
			    labels ? "}" : "", (unsigned long long)v);
}

static void one(struct evbuffer *b, const char *name, const char *type, const char *help,
		uint64_t v)
{
	family(b, name, type, help);
	sample(b, name, NULL, v);
}

/* A counter family with one label over a name table. */
static void labelled(struct evbuffer *b, const char *name, const char *help, const char *label,
		     const char *const *names, const uint64_t *v, int n, bool skip_zero)
{
	char lab[128];

	family(b, name, "counter", help);
	for (int i = 0; i < n; i++) {
		if (skip_zero && v[i] == 0)
			continue;
		snprintf(lab, sizeof lab, "%s=\"%s\"", label, names[i]);
		sample(b, name, lab, v[i]);
	}
}

/* Counters indexed by pd_code (index 0, PD_OK, is never used). */
static void by_code(struct evbuffer *b, const char *name, const char *help, const uint64_t *v)
{
	char lab[64];

	family(b, name, "counter", help);
	for (int c = 1; c < PD_E__COUNT; c++) {
		snprintf(lab, sizeof lab, "code=\"%s\"", pd_code_name(c));
		sample(b, name, lab, v[c]);
	}
}

static void seconds_line(struct evbuffer *b, const char *name, const char *labels, uint64_t ns)
{
	evbuffer_add_printf(b, "%s%s%s%s %.6f\n", name, labels ? "{" : "", labels ? labels : "",
			    labels ? "}" : "", (double)ns / 1e9);
}

/* A histogram whose cumulative buckets are given in milliseconds. */
static void histogram(struct evbuffer *b, const char *name, const char *extra,
		      const double *bounds_ms, const uint64_t *le, int nb, uint64_t count,
		      uint64_t sum_ns)
{
	char lab[128], bname[128], sname[128], cname[128];
	const char *sep = extra ? "," : "";

	snprintf(bname, sizeof bname, "%s_bucket", name);
	snprintf(sname, sizeof sname, "%s_sum", name);
	snprintf(cname, sizeof cname, "%s_count", name);
	for (int i = 0; i < nb; i++) {
		snprintf(lab, sizeof lab, "%s%sle=\"%g\"", extra ? extra : "", sep, bounds_ms[i] / 1e3);
		sample(b, bname, lab, le[i]);
	}
	snprintf(lab, sizeof lab, "%s%sle=\"+Inf\"", extra ? extra : "", sep);
	sample(b, bname, lab, count);
	seconds_line(b, sname, extra, sum_ns);
	sample(b, cname, extra, count);
}

/* ---- rendering ---------------------------------------------------------------------- */

static void render_net(const pd_metrics_view *v, struct evbuffer *b, uint64_t now_ms)
{
	static const char *const status_names[3] = {"delta", "baseline", "duplicate"};
	static const char *const reload_names[2] = {"ok", "failed"};
	const pd_metrics *m = &v->net;
	uint64_t reloads[2] = {m->reloads_ok, m->reloads_failed};

	one(b, "pdeltad_up", "gauge", "1 while the process runs", 1);
	one(b, "pdeltad_draining", "gauge", "1 while draining (SIGTERM)", v->draining);
	one(b, "pdeltad_uptime_seconds", "gauge", "seconds since start",
	    now_ms > m->start_ms ? (now_ms - m->start_ms) / 1000 : 0);
	one(b, "pdeltad_connections", "gauge", "open connections", m->conns_current);
	one(b, "pdeltad_connections_total", "counter", "accepted connections", m->conns_total);
	one(b, "pdeltad_connections_authenticated_total", "counter", "connections that sent HELLO_OK",
	    m->conns_authenticated);
	labelled(b, "pdeltad_connection_closes_total", "closed connections by reason", "reason",
		 close_names, m->closes, PD_CLOSE__COUNT, false);
	one(b, "pdeltad_tls_handshakes_failed_total", "counter", "TLS handshakes that failed",
	    m->handshakes_failed);
	one(b, "pdeltad_auth_failures_total", "counter", "HELLOs refused with auth/AUTH_FAILED",
	    m->auth_failed);
	one(b, "pdeltad_auth_failures_delayed_total", "counter",
	    "failed authentications answered after the per-source delay", m->auth_failed_delayed);
	one(b, "pdeltad_auth_blocks_total", "counter",
	    "source addresses blocked after auth_fail_block_after failures", m->auth_blocks);
	one(b, "pdeltad_connections_unauthenticated", "gauge",
	    "open connections not authenticated yet (TLS handshake or waiting for HELLO)",
	    m->conns_unauth);
	labelled(b, "pdeltad_requests_total", "delta responses sent (RESULT) by status", "status",
		 status_names, m->results, 3, false);
	by_code(b, "pdeltad_request_errors_total", "request ERROR frames sent, by code",
		m->request_errors);
	by_code(b, "pdeltad_connection_errors_total", "connection ERROR frames sent, by code",
		m->conn_errors);
	one(b, "pdeltad_admin_requests_total", "counter", "ADMIN requests received", m->admin_requests);
	one(b, "pdeltad_cancels_total", "counter", "CANCEL frames that stopped a request", m->cancels);
	one(b, "pdeltad_received_bytes_total", "counter", "frame bytes received", m->bytes_in);
	one(b, "pdeltad_sent_bytes_total", "counter", "frame bytes queued for sending", m->bytes_out);
	one(b, "pdeltad_received_frames_total", "counter", "frames received", m->frames_in);
	one(b, "pdeltad_sent_frames_total", "counter", "frames queued for sending", m->frames_out);
	labelled(b, "pdeltad_limit_hits_total", "limits hit, by limit", "limit", limit_names,
		 m->limit_hits, PD_LIM__COUNT, false);
	labelled(b, "pdeltad_tls_reloads_total", "SIGHUP reloads of TLS files and tenants", "result",
		 reload_names, reloads, 2, false);
	one(b, "pdeltad_tenants_refused_empty_total", "counter",
	    "SIGHUP reloads refused: tenants file without credentials (no allow_empty = true)",
	    m->reloads_refused_empty);
	one(b, "pdeltad_tls_cert_refused_total", "counter",
	    "SIGHUP reloads refused: certificate expired, not yet valid, not for serverAuth, "
	    "key mismatch", m->reloads_refused_cert);
	evbuffer_add_printf(b,
			    "# HELP pdeltad_tls_cert_expiry_days days until the server certificate "
			    "in service expires (warned under %d)\n"
			    "# TYPE pdeltad_tls_cert_expiry_days gauge\npdeltad_tls_cert_expiry_days %.3f\n",
			    PD_TLS_EXPIRY_WARN_DAYS, v->cert_days_left);
	one(b, "pdeltad_orphaned_completions_total", "counter",
	    "requests that finished after their connection was gone", m->orphaned_completions);
	one(b, "pdeltad_credentials", "gauge", "credentials in the tenants file",
	    v->tenants_credentials);
}

static void render_latency(const pd_service_stats *s, struct evbuffer *b)
{
	static const double bounds[10] = {1, 2, 5, 10, 20, 50, 100, 200, 500, 1000};
	const char *name = "pdeltad_request_duration_seconds";

	family(b, name, "histogram", "delta request latency by phase (total, engine, store commit)");
	histogram(b, name, "phase=\"total\"", bounds, s->lat_total, 10, s->lat_count,
		  s->lat_total_sum_ns);
	histogram(b, name, "phase=\"engine\"", bounds, s->lat_engine, 10, s->lat_count,
		  s->lat_engine_sum_ns);
	histogram(b, name, "phase=\"commit\"", bounds, s->lat_commit, 10, s->lat_count,
		  s->lat_commit_sum_ns);
}

static void render_store(const struct pd_store_stats *st, struct evbuffer *b)
{
	one(b, "pdeltad_store_commits_total", "counter", "state store transactions committed",
	    st->commits);
	one(b, "pdeltad_store_rows_written_total", "counter", "state rows written", st->rows_written);
	one(b, "pdeltad_store_errors_total", "counter", "failed store transactions", st->errors);
	one(b, "pdeltad_store_writes_failed_total", "counter", "writes completed with a store error",
	    st->writes_failed);
	one(b, "pdeltad_store_busy_rejects_total", "counter", "writes refused: store queue full",
	    st->busy_rejects);
	one(b, "pdeltad_store_read_errors_total", "counter", "failed store reads", st->read_errors);
	one(b, "pdeltad_store_log_suppressed_total", "counter",
	    "store error lines left out by the log rate limit", st->log_suppressed);
	family(b, "pdeltad_store_last_error_timestamp_seconds", "gauge",
	       "unix time of the last store error (0: none since start)");
	evbuffer_add_printf(b, "pdeltad_store_last_error_timestamp_seconds %.3f\n",
			    (double)st->last_error_ms / 1e3);
	if (st->last_error[0]) {
		family(b, "pdeltad_store_last_error_info", "gauge", "the last store error's message");
		evbuffer_add_printf(b, "pdeltad_store_last_error_info{message=\"");
		label_value(b, st->last_error);
		evbuffer_add_printf(b, "\"} 1\n");
	}
	one(b, "pdeltad_store_queue_length", "gauge", "queued and in-flight writes", st->queue_len);
	one(b, "pdeltad_store_batch_max", "gauge", "largest group commit", st->batch_max);
	family(b, "pdeltad_store_commit_seconds", "histogram", "BEGIN..COMMIT duration");
	histogram(b, "pdeltad_store_commit_seconds", NULL, pd_store_hist_bounds_ms, st->commit.le,
		  PD_STORE_HIST_N, st->commit.count, st->commit.sum_ns);
}

static void render_service(const pd_service_stats *s, struct evbuffer *b)
{
	static const char *const status_names[3] = {"delta", "baseline", "duplicate"};
	static const char *const reason_names[6] = {"none",    "first", "reset",
						    "evicted", "moved", "state-lost"};

	labelled(b, "pdeltad_service_requests_total", "delta requests completed, by status", "status",
		 status_names, s->requests_by_status, 3, false);
	labelled(b, "pdeltad_baselines_total", "BASELINE responses (and resets) by reason", "reason",
		 reason_names, s->baselines_by_reason, 6, false);
	by_code(b, "pdeltad_service_errors_total", "delta requests failed in the service, by code",
		s->errors_by_code);
	one(b, "pdeltad_streams_cached", "gauge", "streams in the hot-state cache", s->streams_cached);
	one(b, "pdeltad_cache_bytes", "gauge", "bytes held by the hot-state cache", s->cache_bytes);
	one(b, "pdeltad_cache_evictions_total", "counter", "streams evicted from the cache",
	    s->cache_evictions);
	one(b, "pdeltad_streams_expired_total", "counter", "streams expired by stream_ttl",
	    s->streams_expired);
	one(b, "pdeltad_service_limit_hits_total", "counter",
	    "max_queued_jobs refusals (busy/OVERLOADED)", s->busy_rejects);
	one(b, "pdeltad_service_queued_bytes_limit_hits_total", "counter",
	    "max_queued_bytes refusals (busy/OVERLOADED)", s->bytes_busy_rejects);
	one(b, "pdeltad_service_queued_bytes", "gauge", "upload bytes held by admitted jobs",
	    s->queued_bytes);
	one(b, "pdeltad_service_stream_limit_hits_total", "counter",
	    "new streams refused by max_streams_per_tenant", s->stream_limit_hits);
	one(b, "pdeltad_service_input_limit_hits_total", "counter",
	    "profiles refused by an engine input cap", s->input_limit_hits);
	one(b, "pdeltad_service_upload_limit_hits_total", "counter", "uploads past max_input",
	    s->upload_limit_hits);
	one(b, "pdeltad_jobs_cancelled_total", "counter", "jobs skipped after CANCEL",
	    s->jobs_cancelled);
	one(b, "pdeltad_tenants", "gauge", "tenants known to the service", s->tenants);
	one(b, "pdeltad_jobs_admitted", "gauge", "delta jobs begun and not completed",
	    s->jobs_admitted);
	one(b, "pdeltad_jobs_queued", "gauge", "delta jobs waiting for a worker", s->jobs_queued);
	one(b, "pdeltad_jobs_running", "gauge", "delta jobs on a worker", s->jobs_running);
	one(b, "pdeltad_profile_bytes_in_total", "counter", "uploaded profile bytes processed",
	    s->bytes_in);
	one(b, "pdeltad_profile_bytes_out_total", "counter", "delta output bytes produced",
	    s->bytes_out);
	family(b, "pdeltad_store_corrupt_rows_total", "counter",
	       "stored rows found corrupt: state blob (stream restarted from a BASELINE), kept "
	       "response (retry refused)");
	sample(b, "pdeltad_store_corrupt_rows_total", "what=\"state\"", s->states_corrupt);
	sample(b, "pdeltad_store_corrupt_rows_total", "what=\"response\"", s->responses_corrupt);
	one(b, "pdeltad_worker_trims_total", "counter",
	    "requests after which a worker freed memory past worker_keep_bytes", s->worker_trims);
	one(b, "pdeltad_worker_trimmed_bytes_total", "counter", "bytes those trims released",
	    s->worker_trimmed_bytes);
	render_latency(s, b);
	render_store(&s->store, b);
}

int pd_metrics_render(const pd_metrics_view *v, struct evbuffer *out)
{
	struct timeval tv;

	evutil_gettimeofday(&tv, NULL);
	render_net(v, out, (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000);
	render_service(&v->svc, out);
	return PD_OK;
}

/* ---- HTTP endpoint --------------------------------------------------------------------- */

struct pd_metrics_http {
	struct evhttp *http;
	pd_metrics_snapshot_fn fn;
	void *arg;
};

static void reply_text(struct evhttp_request *req, int code, const char *reason, struct evbuffer *b)
{
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);

	evhttp_add_header(h, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
	evhttp_add_header(h, "Cache-Control", "no-store");
	evhttp_send_reply(req, code, reason, b);
}

static void on_metrics(struct evhttp_request *req, void *arg)
{
	pd_metrics_http *h = arg;
	struct evbuffer *b = evbuffer_new();
	pd_metrics_view *v = calloc(1, sizeof *v);

	if (!b || !v) {
		evhttp_send_error(req, HTTP_INTERNAL, "out of memory");
		goto out;
	}
	h->fn(h->arg, v);
	pd_metrics_render(v, b);
	reply_text(req, HTTP_OK, "OK", b);
out:
	free(v);
	if (b)
		evbuffer_free(b);
}

/* The detail lines of /healthz about the state store: its last error (when,
 * what) if there was one since the start. */
static void healthz_store(const struct pd_store_stats *st, struct evbuffer *b)
{
	struct timeval tv;
	time_t t = (time_t)(st->last_error_ms / 1000);
	struct tm tm;
	char when[32];

	if (!st->last_error_ms) {
		evbuffer_add_printf(b, "store: ok, no error since start\n");
		return;
	}
	evutil_gettimeofday(&tv, NULL);
	gmtime_r(&t, &tm);
	strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
	evbuffer_add_printf(b, "store: last error at %s (%lld s ago; %llu failed transactions, "
			    "%llu failed reads since start): %s\n", when,
			    (long long)(tv.tv_sec - t), (unsigned long long)st->errors,
			    (unsigned long long)st->read_errors, st->last_error);
}

static void on_healthz(struct evhttp_request *req, void *arg)
{
	pd_metrics_http *h = arg;
	struct evbuffer *b = evbuffer_new();
	pd_metrics_view *v = calloc(1, sizeof *v);

	if (!b || !v) {
		evhttp_send_error(req, HTTP_INTERNAL, "out of memory");
		goto out;
	}
	h->fn(h->arg, v);
	evbuffer_add_printf(b, "%s\n", v->draining ? "draining" : "ok");
	healthz_store(&v->svc.store, b);
	reply_text(req, v->draining ? 503 : HTTP_OK, v->draining ? "Service Unavailable" : "OK", b);
out:
	free(v);
	if (b)
		evbuffer_free(b);
}

static void on_other(struct evhttp_request *req, void *arg)
{
	evhttp_send_error(req, HTTP_NOTFOUND, "try /metrics or /healthz");
}

int pd_metrics_http_new(struct event_base *base, const char *listen, pd_metrics_snapshot_fn fn,
			void *arg, pd_metrics_http **out, pd_err *e)
{
	struct sockaddr_storage ss;
	int sslen = sizeof ss;
	struct evconnlistener *lev;
	pd_metrics_http *h;

	*out = NULL;
	if (evutil_parse_sockaddr_port(listen, (struct sockaddr *)&ss, &sslen) != 0)
		return pd_err_set(e, PD_E_ARG, "metrics_listen: cannot parse '%s' (host:port)", listen);
	h = calloc(1, sizeof *h);
	if (!h)
		return pd_err_set(e, PD_E_NOMEM, "out of memory");
	h->fn = fn;
	h->arg = arg;
	h->http = evhttp_new(base);
	if (!h->http) {
		free(h);
		return pd_err_set(e, PD_E_NOMEM, "evhttp_new failed");
	}
	lev = evconnlistener_new_bind(base, NULL, NULL,
				      LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC,
				      64, (struct sockaddr *)&ss, sslen);
	if (!lev || !evhttp_bind_listener(h->http, lev)) {
		int err = EVUTIL_SOCKET_ERROR();
		if (lev)
			evconnlistener_free(lev);
		pd_metrics_http_free(h);
		return pd_err_set(e, PD_E_IO, "metrics_listen %s: %s", listen,
				  evutil_socket_error_to_string(err));
	}
	evhttp_set_allowed_methods(h->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
	evhttp_set_max_headers_size(h->http, 8192);
	evhttp_set_max_body_size(h->http, 0);
	evhttp_set_timeout(h->http, 10);
	evhttp_set_cb(h->http, "/metrics", on_metrics, h);
	evhttp_set_cb(h->http, "/healthz", on_healthz, h);
	evhttp_set_gencb(h->http, on_other, h);
	*out = h;
	return PD_OK;
}

void pd_metrics_http_free(pd_metrics_http *h)
{
	if (!h)
		return;
	if (h->http)
		evhttp_free(h->http);
	free(h);
}
