/*
 * pd_metrics: Prometheus text rendering of the network and service counters,
 * and the evhttp server of /metrics and /healthz.
 */
#include "pd_metrics.h"

#include <dirent.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>
#include <event2/util.h>
#include <openssl/crypto.h>
#include <sqlite3.h>

#include "pd_listen.h"
#include "pd_notify.h"
#include "pd_store.h"
#include "pd_tls.h"
#include "pd_version.h"

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
	"engine_input",	      "max_streams_per_tenant", "max_queued_jobs", "max_queued_bytes",
	"max_unauth_connections", "max_unauth_per_source", "auth_blocked", "store_queue",
};

/* RESULT status (pd_status order), of the network layer's and the service's counts. */
static const char *const status_names[3] = {"delta", "baseline", "duplicate"};

const char *pd_close_reason_name(int r)
{
	return r >= 0 && r < PD_CLOSE__COUNT ? close_names[r] : "unknown";
}

const char *pd_limit_name(int k) { return k >= 0 && k < PD_LIM__COUNT ? limit_names[k] : "unknown"; }

/* ---- exposition helpers ---------------------------------------------------- */

typedef struct expo {
	struct evbuffer *b;
	bool om; /* OpenMetrics 1.0, else Prometheus text 0.0.4 */
} expo;

/* A label value in the text format: backslash, quote and newline escaped. */
static void label_value(expo *b, const char *s)
{
	for (; *s; s++) {
		if (*s == '\\' || *s == '"')
			evbuffer_add_printf(b->b, "\\%c", *s);
		else if (*s == '\n')
			evbuffer_add(b->b, "\\n", 2);
		else
			evbuffer_add(b->b, s, 1);
	}
}

/* HELP and TYPE of a family. OpenMetrics names a counter family without
 * its _total suffix (the samples keep it) and has an `info` type. */
static void family(expo *b, const char *name, const char *type, const char *help)
{
	size_t n = strlen(name);

	if (b->om && strcmp(type, "counter") == 0 && n > 6 && strcmp(name + n - 6, "_total") == 0)
		n -= 6;
	if (b->om && strcmp(type, "info") == 0 && n > 5 && strcmp(name + n - 5, "_info") == 0)
		n -= 5;
	if (!b->om && strcmp(type, "info") == 0)
		type = "gauge";
	evbuffer_add_printf(b->b, "# HELP %.*s %s\n# TYPE %.*s %s\n", (int)n, name, help, (int)n,
			    name, type);
}

static void sample(expo *b, const char *name, const char *labels, uint64_t v)
{
	evbuffer_add_printf(b->b, "%s%s%s%s %llu\n", name, labels ? "{" : "", labels ? labels : "",
			    labels ? "}" : "", (unsigned long long)v);
}

static void one(expo *b, const char *name, const char *type, const char *help,
		uint64_t v)
{
	family(b, name, type, help);
	sample(b, name, NULL, v);
}

/* A counter family with one label over a name table. */
static void labelled(expo *b, const char *name, const char *help, const char *label,
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
static void by_code(expo *b, const char *name, const char *help, const uint64_t *v)
{
	char lab[64];

	family(b, name, "counter", help);
	for (int c = 1; c < PD_E__COUNT; c++) {
		snprintf(lab, sizeof lab, "code=\"%s\"", pd_code_name(c));
		sample(b, name, lab, v[c]);
	}
}

static void seconds_line(expo *b, const char *name, const char *labels, uint64_t ns)
{
	evbuffer_add_printf(b->b, "%s%s%s%s %.6f\n", name, labels ? "{" : "", labels ? labels : "",
			    labels ? "}" : "", (double)ns / 1e9);
}

/* A histogram whose cumulative buckets are given in milliseconds. */
static void histogram(expo *b, const char *name, const char *extra,
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

/* ---- per-tenant table ------------------------------------------------------------------ */

int pd_metrics_tenants_init(pd_metrics *m, size_t max_tenants, pd_err *e)
{
	m->tenants = calloc(max_tenants + 1, sizeof *m->tenants);
	if (!m->tenants)
		return pd_err_set(e, PD_E_NOMEM, "out of memory (metrics_tenants)");
	m->max_tenants = max_tenants;
	m->n_tenants = 0;
	snprintf(m->tenants[max_tenants].name, sizeof m->tenants[0].name, "%s", PD_TENANT_OTHER);
	return PD_OK;
}

void pd_metrics_tenants_fini(pd_metrics *m)
{
	free(m->tenants);
	m->tenants = NULL;
	m->n_tenants = m->max_tenants = 0;
}

/* Linear: called once per authenticated connection, over at most
 * metrics_tenants names. */
pd_tenant_counters *pd_metrics_tenant(pd_metrics *m, const char *tenant)
{
	pd_tenant_counters *t;

	if (!m->tenants)
		return NULL;
	for (size_t i = 0; i < m->n_tenants; i++)
		if (strcmp(m->tenants[i].name, tenant) == 0)
			return &m->tenants[i];
	if (m->n_tenants == m->max_tenants || strcmp(tenant, PD_TENANT_OTHER) == 0)
		return &m->tenants[m->max_tenants];
	t = &m->tenants[m->n_tenants++];
	snprintf(t->name, sizeof t->name, "%s", tenant);
	return t;
}

/* ---- rendering ---------------------------------------------------------------------- */

static void render_build_info(expo *b)
{
	char v[16];

	snprintf(v, sizeof v, "%d..%d", PD_PROTO_VERSION_MIN, PD_PROTO_VERSION);
	family(b, "pdeltad_build_info", "info", "version, protocol range and libraries of this build");
	evbuffer_add_printf(b->b, "pdeltad_build_info{version=\"");
	label_value(b, PD_VERSION);
	evbuffer_add_printf(b->b, "\",protocol=\"%s\",openssl=\"", v);
	label_value(b, OpenSSL_version(OPENSSL_VERSION_STRING));
	evbuffer_add_printf(b->b, "\",libevent=\"");
	label_value(b, event_get_version());
	evbuffer_add_printf(b->b, "\",sqlite=\"");
	label_value(b, sqlite3_libversion());
	evbuffer_add_printf(b->b, "\",systemd=\"%s\"} 1\n", pd_notify_available() ? "yes" : "no");
}

/* The process_* metrics of the Prometheus client libraries, from
 * /proc/self/stat (fields 14-15 utime/stime, 22 starttime, 23 vsize, 24 rss),
 * /proc/stat's btime, /proc/self/fd and RLIMIT_NOFILE. */
typedef struct proc_sample {
	double cpu_s, start_s, vsize, rss;
	long open_fds, max_fds;
} proc_sample;

static double boot_time(void)
{
	FILE *f = fopen("/proc/stat", "r");
	char line[256];
	double bt = 0;

	while (f && fgets(line, sizeof line, f))
		if (sscanf(line, "btime %lf", &bt) == 1)
			break;
	if (f)
		fclose(f);
	return bt;
}

static int read_proc_stat(proc_sample *p)
{
	char buf[1024], *q;
	unsigned long long utime, stime, start, vsize;
	long long rss;
	double tick = (double)sysconf(_SC_CLK_TCK), page = (double)sysconf(_SC_PAGESIZE);
	FILE *f = fopen("/proc/self/stat", "r");
	size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;

	if (f)
		fclose(f);
	buf[n] = 0;
	q = strrchr(buf, ')'); /* comm may hold spaces and parentheses */
	if (!q || tick <= 0 ||
	    sscanf(q + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d %*d %*d "
			  "%*d %*d %llu %llu %lld", &utime, &stime, &start, &vsize, &rss) != 5)
		return -1;
	p->cpu_s = (double)(utime + stime) / tick;
	p->start_s = boot_time() + (double)start / tick;
	p->vsize = (double)vsize;
	p->rss = (double)rss * page;
	return 0;
}

static long count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *de;
	long n = 0;

	if (!d)
		return -1;
	while ((de = readdir(d)))
		if (de->d_name[0] != '.')
			n++;
	closedir(d);
	return n - 1; /* the directory's own descriptor */
}

static void gauge_f(expo *b, const char *name, const char *type, const char *help, double v)
{
	family(b, name, type, help);
	evbuffer_add_printf(b->b, "%s %.17g\n", name, v);
}

static void render_process(expo *b)
{
	proc_sample p;
	struct rlimit rl;

	if (read_proc_stat(&p))
		return; /* not Linux: no process_* metrics */
	p.open_fds = count_fds();
	p.max_fds = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY
			    ? (long)rl.rlim_cur
			    : -1;
	gauge_f(b, "process_cpu_seconds_total", "counter", "user and system CPU time, seconds",
		p.cpu_s);
	gauge_f(b, "process_start_time_seconds", "gauge", "start time, unix seconds", p.start_s);
	gauge_f(b, "process_virtual_memory_bytes", "gauge", "virtual memory size", p.vsize);
	gauge_f(b, "process_resident_memory_bytes", "gauge", "resident memory size", p.rss);
	if (p.open_fds >= 0)
		gauge_f(b, "process_open_fds", "gauge", "open file descriptors", (double)p.open_fds);
	if (p.max_fds >= 0)
		gauge_f(b, "process_max_fds", "gauge", "file descriptor limit (RLIMIT_NOFILE)",
			(double)p.max_fds);
}

/* One per-tenant family: the named slots, then "_other" if it was used. */
static void tenant_family(expo *b, const pd_metrics *m, const char *name, const char *help,
			  size_t off)
{
	family(b, name, "counter", help);
	for (size_t i = 0; i <= m->max_tenants; i++) {
		const pd_tenant_counters *t = &m->tenants[i];
		if (i >= m->n_tenants && i != m->max_tenants)
			continue;
		if (i == m->max_tenants && m->n_tenants < m->max_tenants && !t->requests &&
		    !t->bytes_in && !t->request_errors)
			continue; /* "_other" unused so far */
		evbuffer_add_printf(b->b, "%s{tenant=\"", name);
		label_value(b, t->name);
		evbuffer_add_printf(b->b, "\"} %llu\n",
				    (unsigned long long)*(const uint64_t *)((const char *)t + off));
	}
}

static void render_tenants(const pd_metrics *m, expo *b)
{
	if (!m->tenants)
		return;
	tenant_family(b, m, "pdeltad_tenant_requests_total", "delta requests answered, by tenant",
		      offsetof(pd_tenant_counters, requests));
	tenant_family(b, m, "pdeltad_tenant_request_errors_total",
		      "delta requests failed (request ERROR), by tenant",
		      offsetof(pd_tenant_counters, request_errors));
	tenant_family(b, m, "pdeltad_tenant_new_streams_total",
		      "BASELINE first answers (a stream new to the server), by tenant",
		      offsetof(pd_tenant_counters, new_streams));
	tenant_family(b, m, "pdeltad_tenant_received_bytes_total",
		      "frame bytes received after authentication, by tenant",
		      offsetof(pd_tenant_counters, bytes_in));
	tenant_family(b, m, "pdeltad_tenant_sent_bytes_total",
		      "frame bytes queued for sending after authentication, by tenant",
		      offsetof(pd_tenant_counters, bytes_out));
}

static void render_net(const pd_metrics_view *v, expo *b, uint64_t now_ms)
{
	static const char *const reload_names[2] = {"ok", "failed"};
	const pd_metrics *m = &v->net;
	uint64_t reloads[2] = {m->reloads_ok, m->reloads_failed};
	uint64_t hits[PD_LIM__COUNT];

	/* The admission caps are counted by the service, where it tells them apart. */
	memcpy(hits, m->limit_hits, sizeof hits);
	hits[PD_LIM_QUEUE] += v->svc.busy_rejects;
	hits[PD_LIM_QUEUE_BYTES] += v->svc.bytes_busy_rejects;

	one(b, "pdeltad_up", "gauge", "1 while the process runs", 1);
	one(b, "pdeltad_draining", "gauge", "1 while draining (SIGTERM)", v->draining);
	one(b, "pdeltad_uptime_seconds", "gauge", "seconds since start",
	    now_ms > m->start_ms ? (now_ms - m->start_ms) / 1000 : 0);
	one(b, "pdeltad_open_connections", "gauge", "open connections", m->conns_current);
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
		 hits, PD_LIM__COUNT, false);
	labelled(b, "pdeltad_tls_reloads_total", "SIGHUP reloads of TLS files and tenants", "result",
		 reload_names, reloads, 2, false);
	one(b, "pdeltad_tenants_refused_empty_total", "counter",
	    "SIGHUP reloads refused: tenants file without credentials (no allow_empty = true)",
	    m->reloads_refused_empty);
	one(b, "pdeltad_tls_cert_refused_total", "counter",
	    "SIGHUP reloads refused: certificate expired, not yet valid, not for serverAuth, "
	    "key mismatch", m->reloads_refused_cert);
	gauge_f(b, "pdeltad_tls_cert_expiry_days", "gauge",
		"days until the server certificate in service expires (warned under 14)",
		v->cert_days_left);
	one(b, "pdeltad_orphaned_completions_total", "counter",
	    "requests that finished after their connection was gone", m->orphaned_completions);
	one(b, "pdeltad_credentials", "gauge", "credentials in the tenants file",
	    v->tenants_credentials);
}

static void render_latency(const pd_service_stats *s, expo *b)
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

static void render_store(const struct pd_store_stats *st, expo *b)
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
	one(b, "pdeltad_store_conflicts_total", "counter",
	    "conditional writes refused: the row moved on (another node, expiry, admin)",
	    st->conflicts);
	one(b, "pdeltad_store_up", "gauge", "1 while the store's database is reachable",
	    (uint64_t)!st->unreachable);
	one(b, "pdeltad_store_log_suppressed_total", "counter",
	    "store error lines left out by the log rate limit", st->log_suppressed);
	family(b, "pdeltad_store_last_error_timestamp_seconds", "gauge",
	       "unix time of the last store error (0: none since start)");
	evbuffer_add_printf(b->b, "pdeltad_store_last_error_timestamp_seconds %.3f\n",
			    (double)st->last_error_ms / 1e3);
	if (st->last_error[0]) {
		family(b, "pdeltad_store_last_error_info", "info", "the last store error's message");
		evbuffer_add_printf(b->b, "pdeltad_store_last_error_info{message=\"");
		label_value(b, st->last_error);
		evbuffer_add_printf(b->b, "\"} 1\n");
	}
	one(b, "pdeltad_store_queue_length", "gauge", "queued and in-flight writes", st->queue_len);
	one(b, "pdeltad_store_batch_max", "gauge", "largest group commit", st->batch_max);
	family(b, "pdeltad_store_commit_seconds", "histogram", "BEGIN..COMMIT duration");
	histogram(b, "pdeltad_store_commit_seconds", NULL, pd_store_hist_bounds_ms, st->commit.le,
		  PD_STORE_HIST_N, st->commit.count, st->commit.sum_ns);
}

/* Shadow verification (pd_shadow.h). */
static void render_shadow(const pd_shadow_stats *s, expo *b)
{
	static const char *const skip[PD_SHADOW_SKIP__COUNT] = {"budget", "size", "limit", "state"};
	char lab[256];

	one(b, "pdeltad_shadow_verified_total", "counter",
	    "deltas checked against the slow path", s->verified);
	labelled(b, "pdeltad_shadow_skipped_total", "deltas of watched streams not checked, by reason",
		 "reason", skip, s->skipped, PD_SHADOW_SKIP__COUNT, false);
	one(b, "pdeltad_shadow_mismatch_cases_total", "counter",
	    "checked deltas where engine and slow path differ", s->mismatches);
	family(b, "pdeltad_shadow_mismatches_total", "counter",
	       "differences by sample type and reason (each once per case)");
	for (size_t i = 0; i < s->nkinds; i++) {
		expo lb = {evbuffer_new(), false};
		if (!lb.b)
			continue;
		evbuffer_add_printf(lb.b, "sample_type=\"");
		label_value(&lb, s->kinds[i].col);
		evbuffer_add_printf(lb.b, "\",reason=\"");
		label_value(&lb, s->kinds[i].reason);
		evbuffer_add_printf(lb.b, "\"");
		snprintf(lab, sizeof lab, "%.*s", (int)evbuffer_get_length(lb.b),
			 (const char *)evbuffer_pullup(lb.b, -1));
		sample(b, "pdeltad_shadow_mismatches_total", lab, s->kinds[i].n);
		evbuffer_free(lb.b);
	}
	one(b, "pdeltad_shadow_bytes_held", "gauge",
	    "memory of shadow verification: kept uploads, queued checks", s->bytes_held);
	one(b, "pdeltad_shadow_bytes_held_max", "gauge", "peak of pdeltad_shadow_bytes_held",
	    s->bytes_held_max);
	one(b, "pdeltad_shadow_streams", "gauge", "watched streams known", s->streams);
	one(b, "pdeltad_shadow_queued", "gauge", "checks waiting for the shadow thread", s->queued);
	one(b, "pdeltad_shadow_fallback_answers_total", "counter",
	    "deltas answered by the slow path after a mismatch", s->fallback_answers);
	one(b, "pdeltad_shadow_fallback_failed_total", "counter",
	    "fallback answers the slow path could not give (the engine's stood)", s->fallback_failed);
	one(b, "pdeltad_shadow_quarantined_total", "counter", "mismatch cases written to shadow_dir",
	    s->quarantined);
	one(b, "pdeltad_shadow_quarantine_failed_total", "counter",
	    "mismatch cases that could not be written", s->quarantine_failed);
	one(b, "pdeltad_shadow_quarantine_removed_total", "counter",
	    "old cases removed from shadow_dir by its caps", s->quarantine_removed);
	family(b, "pdeltad_shadow_cpu_seconds_total", "counter", "CPU time of the checks");
	seconds_line(b, "pdeltad_shadow_cpu_seconds_total", NULL, s->cpu_ns);
}

static void render_service(const pd_service_stats *s, expo *b)
{
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

int pd_metrics_render(const pd_metrics_view *v, int fmt, struct evbuffer *out)
{
	expo x = {out, fmt == PD_METRICS_OPENMETRICS};
	struct timeval tv;

	evutil_gettimeofday(&tv, NULL);
	render_build_info(&x);
	render_process(&x);
	render_net(v, &x, (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000);
	render_tenants(&v->net, &x);
	render_service(&v->svc, &x);
	render_shadow(&v->svc.shadow, &x);
	if (x.om)
		evbuffer_add_printf(out, "# EOF\n");
	return PD_OK;
}

/* ---- HTTP endpoint --------------------------------------------------------------------- */

struct pd_metrics_http {
	struct evhttp *http;
	pd_listener *listener; /* its socket is the evhttp's */
	pd_metrics_snapshot_fn fn;
	void *arg;
};

#define CT_PROMETHEUS "text/plain; version=0.0.4; charset=utf-8"
#define CT_OPENMETRICS "application/openmetrics-text; version=1.0.0; charset=utf-8"

static void reply_typed(struct evhttp_request *req, int code, const char *reason,
			struct evbuffer *b, const char *type)
{
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);

	evhttp_add_header(h, "Content-Type", type);
	evhttp_add_header(h, "Cache-Control", "no-store");
	evhttp_send_reply(req, code, reason, b);
}

static void reply_text(struct evhttp_request *req, int code, const char *reason, struct evbuffer *b)
{
	reply_typed(req, code, reason, b, CT_PROMETHEUS);
}

/* OpenMetrics when the scraper lists application/openmetrics-text in Accept
 * (Prometheus does, first), unless with q=0; else the Prometheus text. */
static int wanted_format(struct evhttp_request *req)
{
	const char *acc = evhttp_find_header(evhttp_request_get_input_headers(req), "Accept");
	const char *p = acc ? strstr(acc, "application/openmetrics-text") : NULL, *q;

	if (!p)
		return PD_METRICS_PROMETHEUS;
	q = strstr(p, "q=");
	if (q && q < p + strcspn(p, ",") && strtod(q + 2, NULL) <= 0)
		return PD_METRICS_PROMETHEUS;
	return PD_METRICS_OPENMETRICS;
}

static void on_metrics(struct evhttp_request *req, void *arg)
{
	pd_metrics_http *h = arg;
	struct evbuffer *b = evbuffer_new();
	pd_metrics_view *v = calloc(1, sizeof *v);
	int fmt = wanted_format(req);

	if (!b || !v) {
		evhttp_send_error(req, HTTP_INTERNAL, "out of memory");
		goto out;
	}

	h->fn(h->arg, v);
	pd_metrics_render(v, fmt, b);
	reply_typed(req, HTTP_OK, "OK", b, fmt == PD_METRICS_OPENMETRICS ? CT_OPENMETRICS : CT_PROMETHEUS);
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

	if (st->unreachable)
		evbuffer_add_printf(b, "store: unreachable (reconnecting)\n");
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
	int down;

	if (!b || !v) {
		evhttp_send_error(req, HTTP_INTERNAL, "out of memory");
		goto out;
	}
	h->fn(h->arg, v);
	down = v->draining || v->svc.store.unreachable;
	evbuffer_add_printf(b, "%s\n", v->draining ? "draining"
				       : v->svc.store.unreachable ? "store unreachable" : "ok");
	healthz_store(&v->svc.store, b);
	reply_text(req, down ? 503 : HTTP_OK, down ? "Service Unavailable" : "OK", b);
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
	pd_metrics_http *h;
	int rc;

	*out = NULL;
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
	rc = pd_listener_new(base, "metrics_listen", listen, 64, NULL, NULL, &h->listener, e);
	if (rc) {
		pd_metrics_http_free(h);
		return rc;
	}
	if (!evhttp_bind_listener(h->http, pd_listener_lev(h->listener))) {
		pd_listener_free(h->listener, 0);
		h->listener = NULL;
		pd_metrics_http_free(h);
		return pd_err_set(e, PD_E_NOMEM, "metrics_listen %s: evhttp_bind_listener failed",
				  listen);
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
		evhttp_free(h->http); /* closes the listener's socket */
	pd_listener_free(h->listener, 1);
	free(h);
}
