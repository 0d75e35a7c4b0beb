/*
 * pd_conn: the connection state machine of pdeltad (see pd_conn.h and
 * proto/PROTOCOL.md §4 to §10).
 *
 * Layout of this file: time and logging helpers; frame output; requests
 * (lifetime, errors, submission order, completions, response pump); frame
 * handlers per type; the input loop; the driver, setter and the one close
 * function; libevent callbacks; accept; janitor and server-wide operations.
 */
#include "pd_conn.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>

#include "pd_admin.h"
#include "pd_clock.h"
#include "pd_crc.h"
#include "pd_frame.h"
#include "pd_guard.h"
#include "pd_list.h"
#include "pd_log.h"
#include "pd_tls.h"

#define UNAUTH_LOG_PER_SECOND 10

enum conn_state {
	CONN_TLS,         /* TLS handshake in progress */
	CONN_AWAIT_HELLO, /* TLS up, nothing but HELLO accepted */
	CONN_READY,       /* authenticated */
	CONN_DRAINING,    /* GOODBYE sent or received: finishing open requests */
	CONN_CLOSING,     /* flushing the last frames, reading nothing */
	CONN_CLOSED,      /* bufferevent gone, waiting to be freed */
};

static const char *const state_names[] = {"TLS",      "AWAIT_HELLO", "READY",
					  "DRAINING", "CLOSING",     "CLOSED"};

enum req_state {
	REQ_UPLOADING,     /* DELTA_BEGIN seen, DATA goes into the job */
	REQ_WAIT_SUBMIT,   /* DATA_END seen; an earlier request of the stream still uploads */
	REQ_RUNNING,       /* submitted: the service owns the job until the completion */
	REQ_SENDING,       /* completed: response frames being queued */
	REQ_DISCARDING,    /* terminal ERROR sent, client still uploading: DATA is dropped */
	REQ_ADMIN_RUNNING, /* ADMIN command on a worker */
};

struct pd_request {
	pd_conn_env *env;
	pd_conn *conn;            /* NULL once orphaned */
	pd_request *prev, *next;  /* the connection's open requests, in arrival order */
	pd_request *send_next;    /* the connection's send queue */
	pd_request *done_next;    /* the env's completion queue */
	uint32_t id;
	int state;                /* enum req_state */
	bool admin, no_data;
	bool client_open;         /* client half (PROTOCOL.md §6) */
	bool server_done;         /* terminal frame sent */
	bool in_send;
	char stream[PD_MAX_STREAM + 1];
	uint64_t seq;
	uint64_t received;        /* DATA bytes */
	uint64_t deadline_ms;     /* upload deadline */
	uint64_t total;           /* DATA_END */
	uint8_t hash[PD_CONTENT_HASH_LEN];
	pd_job *job;
	pd_job_result res;        /* copied by the completion */
	int admin_rc;
	pd_err admin_err;
	char *body;               /* admin JSON, ours */
	size_t body_len;
	const uint8_t *out;       /* response body being sent */
	size_t out_len, out_off;
	uint32_t out_crc;
};

struct pd_conn {
	pd_conn_env *env;
	pd_conn *prev, *next; /* env->conns, then env->reap */
	uint64_t id;
	int state;            /* enum conn_state */
	int drain_reason;     /* close reason when DRAINING ends */
	bool paused;          /* reading stopped: output above budget */
	bool authed;
	int version; /* negotiated in HELLO */
	struct bufferevent *bev;
	SSL *ssl;             /* NULL on the plain test transport */
	char peer[64];
	uint8_t src[PD_GUARD_KEY_LEN]; /* source address key (pd_guard_src_key) */
	pd_conn *ua_prev, *ua_next;    /* env->ua_head list while unauthenticated */
	bool ua_listed;
	uint64_t auth_fail_at;         /* answer a failed HELLO then (ms); 0 = none pending */
	bool auth_fail_blocked;        /* that failure is a blocked source's */
	pd_principal who;
	pd_tenant_counters *tstats; /* the tenant's metrics slot, once authenticated */
	bool has_token, has_cn; /* the credential, kept to re-check on reload */
	uint8_t token_hash[PD_TOKEN_HASH_LEN];
	char cn[257];
	uint32_t max_payload;    /* receive limit now */
	uint32_t peer_max_frame; /* client's limit */
	/* monotonic ms; 0 = not armed */
	uint64_t handshake_deadline, frame_started, last_rx, stalled_since, drain_deadline;
	uint64_t flush_deadline;
	pd_request *reqs, *reqs_tail;
	size_t nreqs;
	pd_request *send_head, *send_tail;
};

static void conn_drive(pd_conn *c);
static void conn_close(pd_conn *c, int reason, bool flush, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void conn_submit_ready(pd_conn *c);

/* ---- time and logging ------------------------------------------------------- */

static uint64_t now_ms(void) { return pd_now_ms(); }

static void conn_logx(const pd_conn *c, const char *stream, const char *event, int level,
		      const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* Unauthenticated peers choose how often they fail: their lines (above
 * DEBUG) are limited to UNAUTH_LOG_PER_SECOND, the rest counted. */
static bool unauth_log_allowed(pd_conn_env *env, uint64_t *suppressed)
{
	uint64_t now = now_ms();

	*suppressed = 0;
	if (now - env->log_window_ms >= 1000) {
		env->log_window_ms = now;
		env->log_lines = 0;
		*suppressed = env->log_suppressed;
		env->log_suppressed = 0;
	}
	if (env->log_lines >= UNAUTH_LOG_PER_SECOND) {
		env->log_suppressed++;
		return false;
	}
	env->log_lines++;
	return true;
}

/* The one logging call of a connection: text lines get the prefix
 * `[c17 127.0.0.1:5432 acme]`, JSON lines the members connection, peer,
 * tenant, and stream / event where the caller knows them. */
static void conn_logx(const pd_conn *c, const char *stream, const char *event, int level,
		      const char *fmt, ...)
{
	pd_log_ctx x = {c->id, c->peer, c->authed ? c->who.tenant : "-", stream, event};
	char msg[1024];
	uint64_t suppressed = 0;
	va_list ap;

	if (!pd_log_enabled(level))
		return;
	if (!c->authed && level < PD_LOG_DEBUG && !unauth_log_allowed(c->env, &suppressed))
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (suppressed)
		pd_log(PD_LOG_WARN, "%llu log lines about unauthenticated connections suppressed "
		       "(more than %d a second)", (unsigned long long)suppressed,
		       UNAUTH_LOG_PER_SECOND);
	pd_logx(level, &x, "%s", msg);
}

#define conn_log(c, level, ...) conn_logx(c, NULL, NULL, level, __VA_ARGS__)

/* ---- unauthenticated connections (oldest first) ----------------------------------- */

static void ua_add(pd_conn *c)
{
	pd_conn_env *env = c->env;

	PD_LIST_APPEND(env->ua_head, env->ua_tail, c, ua_prev, ua_next);
	c->ua_listed = true;
	env->metrics->conns_unauth = ++env->nunauth;
}

static void ua_remove(pd_conn *c)
{
	pd_conn_env *env = c->env;

	if (!c->ua_listed)
		return;
	PD_LIST_REMOVE(env->ua_head, env->ua_tail, c, ua_prev, ua_next);
	c->ua_listed = false;
	env->metrics->conns_unauth = --env->nunauth;
}

static bool conn_alive(const pd_conn *c) { return c->state <= CONN_DRAINING; }

static size_t out_len(const pd_conn *c)
{
	return c->bev ? evbuffer_get_length(bufferevent_get_output(c->bev)) : 0;
}

/* ---- frame output --------------------------------------------------------------- */

static void count_out(pd_conn *c, size_t n)
{
	c->env->metrics->frames_out++;
	c->env->metrics->bytes_out += n;
	if (c->tstats)
		c->tstats->bytes_out += n;
}

/* Starts an outgoing message: all zero but its type and request id (0: one
 * about the connection). */
static void msg_init(pd_msg *m, int type, uint32_t id)
{
	memset(m, 0, sizeof *m);
	m->type = (uint8_t)type;
	m->request_id = id;
}

/* Queues one encoded frame. An encoding failure is a server bug. */
static int conn_send(pd_conn *c, const pd_msg *m)
{
	pd_buf *b = &c->env->scratch;
	pd_err err;

	if (!conn_alive(c) || !c->bev)
		return PD_E_IO;
	pd_buf_reset(b);
	if (pd_msg_encode(b, m, &err)) {
		conn_log(c, PD_LOG_ERROR, "cannot encode %s: %s", pd_frame_type_name(m->type), err.msg);
		return PD_E_INTERNAL;
	}
	if (bufferevent_write(c->bev, b->data, b->len) != 0)
		return PD_E_NOMEM;
	count_out(c, b->len);
	return PD_OK;
}

/* Header + bytes, without a copy into the scratch buffer (RESULT_DATA). */
static int conn_send_data(pd_conn *c, uint32_t id, const uint8_t *p, size_t n)
{
	pd_frame_hdr h = {(uint32_t)n, PD_FT_RESULT_DATA, 0, 0, id};
	uint8_t hdr[PD_FRAME_HDR_LEN];

	pd_frame_hdr_encode(hdr, &h);
	if (bufferevent_write(c->bev, hdr, sizeof hdr) != 0 || bufferevent_write(c->bev, p, n) != 0)
		return PD_E_NOMEM;
	count_out(c, sizeof hdr + n);
	return PD_OK;
}

/* Messages travel as protocol "text": keep printable ASCII, cap the size. */
static void sanitize(char *dst, size_t cap, const char *src)
{
	size_t i = 0;

	for (; src[i] && i + 1 < cap && i < PD_MAX_MESSAGE; i++)
		dst[i] = (src[i] >= 0x20 && src[i] < 0x7f) ? src[i] : '?';
	dst[i] = 0;
}

static void send_error(pd_conn *c, uint32_t id, int code, int detail, uint64_t value,
		       const char *msg)
{
	char text[PD_MAX_MESSAGE + 1];
	pd_msg m;

	sanitize(text, sizeof text, msg);
	msg_init(&m, PD_FT_ERROR, id);
	m.u.error.code = (uint16_t)code;
	m.u.error.retryable = (uint8_t)pd_code_retryable(code);
	m.u.error.detail = (uint8_t)detail;
	m.u.error.value = value;
	m.u.error.message = pd_str_c(text);
	if (id)
		c->env->metrics->request_errors[code]++;
	else
		c->env->metrics->conn_errors[code]++;
	conn_send(c, &m);
}

static void send_goodbye(pd_conn *c, int reason, const char *msg)
{
	pd_msg m;

	msg_init(&m, PD_FT_GOODBYE, 0);
	m.u.goodbye.reason = (uint16_t)reason;
	m.u.goodbye.message = pd_str_c(msg);
	conn_send(c, &m);
}

/* A connection error (PROTOCOL.md §7): ERROR with id 0, then close. */
static void conn_fail(pd_conn *c, int reason, int code, int detail, uint64_t value,
		      const char *fmt, ...) __attribute__((format(printf, 6, 7)));

static void conn_fail(pd_conn *c, int reason, int code, int detail, uint64_t value,
		      const char *fmt, ...)
{
	char msg[PD_MAX_MESSAGE];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (c->state >= CONN_AWAIT_HELLO && conn_alive(c))
		send_error(c, 0, code, detail, value, msg);
	conn_close(c, reason, true, "%s: %s", pd_code_name(code), msg);
}

/* ---- requests: lifetime ----------------------------------------------------------- */

static pd_request *req_find(pd_conn *c, uint32_t id)
{
	for (pd_request *r = c->reqs; r; r = r->next)
		if (r->id == id)
			return r;
	return NULL;
}

static pd_request *req_new(pd_conn *c, uint32_t id)
{
	pd_request *r = calloc(1, sizeof *r);

	if (!r)
		return NULL;
	r->env = c->env;
	r->conn = c;
	r->id = id;
	PD_LIST_APPEND(c->reqs, c->reqs_tail, r, prev, next);
	c->nreqs++;
	return r;
}

static void req_free(pd_request *r)
{
	free(r->body);
	free(r);
}

/* Gives back a job we still own (not submitted, or completed). */
static void req_drop_job(pd_request *r)
{
	if (!r->job)
		return;
	if (r->state == REQ_UPLOADING || r->state == REQ_WAIT_SUBMIT)
		pd_job_abort(r->job);
	else if (r->state == REQ_SENDING)
		pd_job_free(r->job);
	else
		return; /* running: the completion hands it back */
	r->job = NULL;
}

static bool req_in_service(const pd_request *r)
{
	return r->state == REQ_RUNNING || r->state == REQ_ADMIN_RUNNING;
}

static void send_queue_remove(pd_conn *c, pd_request *r)
{
	pd_request **pp = &c->send_head, *prev = NULL;

	if (!r->in_send)
		return;
	while (*pp && *pp != r) {
		prev = *pp;
		pp = &(*pp)->send_next;
	}
	if (*pp)
		*pp = r->send_next;
	if (c->send_tail == r)
		c->send_tail = prev;
	r->send_next = NULL;
	r->in_send = false;
}

/* Queues r's response body for conn_pump() (at the tail: round robin). */
static void send_queue_push(pd_conn *c, pd_request *r)
{
	r->in_send = true;
	PD_QUEUE_PUSH(c->send_head, c->send_tail, r, send_next);
}

/* The request leaves the connection: freed, or orphaned if its job runs. */
static void req_detach(pd_conn *c, pd_request *r)
{
	send_queue_remove(c, r);
	PD_LIST_REMOVE(c->reqs, c->reqs_tail, r, prev, next);
	c->nreqs--;
	req_drop_job(r);
	r->conn = NULL;
	if (!req_in_service(r))
		req_free(r);
}

/* Frees the request once both halves are closed (PROTOCOL.md §6). */
static void req_settle(pd_conn *c, pd_request *r)
{
	if (r->client_open || !r->server_done)
		return;
	req_detach(c, r);
	conn_submit_ready(c);
}

/* Terminal ERROR for one request; the connection goes on. */
static void req_fail(pd_conn *c, pd_request *r, int code, int detail, uint64_t value,
		     const char *fmt, ...) __attribute__((format(printf, 6, 7)));

static void req_fail(pd_conn *c, pd_request *r, int code, int detail, uint64_t value,
		     const char *fmt, ...)
{
	char msg[PD_MAX_MESSAGE];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (c->tstats && !r->admin)
		c->tstats->request_errors++;
	conn_logx(c, r->stream[0] ? r->stream : NULL, "request_error", PD_LOG_DEBUG,
		  "request %u failed: %s/%d: %s", r->id, pd_code_name(code), detail, msg);
	send_error(c, r->id, code, detail, value, msg);
	req_drop_job(r);
	send_queue_remove(c, r);
	r->server_done = true;
	if (!req_in_service(r))
		r->state = REQ_DISCARDING;
	req_settle(c, r);
}

/* ---- requests: submission in stream order ----------------------------------------------- */

static bool earlier_uploading(const pd_request *r)
{
	for (const pd_request *p = r->prev; p; p = p->prev)
		if (p->state == REQ_UPLOADING && !p->admin && strcmp(p->stream, r->stream) == 0)
			return true;
	return false;
}

static void job_done_cb(void *arg, pd_job *job, const pd_job_result *res);

/* Submits every finished upload that no earlier upload of its stream holds
 * back: requests of one stream reach the service in DELTA_BEGIN order. */
static void conn_submit_ready(pd_conn *c)
{
	if (!conn_alive(c))
		return;
	for (pd_request *r = c->reqs; r; r = r->next) {
		if (r->state != REQ_WAIT_SUBMIT || earlier_uploading(r))
			continue;
		r->state = REQ_RUNNING;
		c->env->in_service++; /* done exactly once, from run_completion() */
		pd_job_submit(r->job, r->hash, r->total, job_done_cb, r);
	}
}

/* ---- requests: completions (service threads -> loop) ------------------------------------- */

static void push_done(pd_request *r)
{
	pd_conn_env *env = r->env;

	pthread_mutex_lock(&env->done_mu);
	PD_QUEUE_PUSH(env->done_head, env->done_tail, r, done_next);
	pthread_mutex_unlock(&env->done_mu);
	event_active(env->ev_done, EV_READ, 0);
}

/* Service thread: copy and bounce, nothing else. */
static void job_done_cb(void *arg, pd_job *job, const pd_job_result *res)
{
	pd_request *r = arg;

	/* r->job already is job; only the result is new. */
	(void)job;
	r->res = *res;
	push_done(r);
}

static void admin_done_cb(void *arg, int rc, const pd_err *e, const char *json, size_t len)
{
	pd_request *r = arg;

	r->admin_rc = rc;
	if (e)
		r->admin_err = *e;
	if (!rc) {
		r->body = malloc(len ? len : 1);
		if (r->body) {
			memcpy(r->body, json, len);
			r->body_len = len;
		} else {
			r->admin_rc = pd_err_set(&r->admin_err, PD_E_NOMEM, "out of memory");
		}
	}
	push_done(r);
}

static int wire_status(int s)
{
	switch (s) {
	case PD_STATUS_DELTA: return PD_WIRE_STATUS_DELTA;
	case PD_STATUS_BASELINE: return PD_WIRE_STATUS_BASELINE;
	default: return PD_WIRE_STATUS_DUPLICATE;
	}
}

/* state-lost exists from version 3; older clients refuse reasons they do not
 * know, so they get the closest one: evicted (the server lost state). */
static int wire_reason(int r, int version)
{
	switch (r) {
	case PD_REASON_STATE_LOST:
		return version >= PD_PROTO_VERSION_AFTER ? PD_WIRE_REASON_STATE_LOST
							 : PD_WIRE_REASON_EVICTED;
	case PD_REASON_FIRST: return PD_WIRE_REASON_FIRST;
	case PD_REASON_RESET: return PD_WIRE_REASON_RESET;
	case PD_REASON_EVICTED: return PD_WIRE_REASON_EVICTED;
	case PD_REASON_MOVED: return PD_WIRE_REASON_MOVED;
	default: return PD_WIRE_REASON_NONE;
	}
}

/* Counts the limit a failed job hit (the service reports the wire detail). */
static void count_job_limit(pd_metrics *m, int detail)
{
	switch (detail) {
	case PD_DETAIL_INPUT_LIMIT: m->limit_hits[PD_LIM_INPUT]++; break;
	case PD_DETAIL_STREAM_LIMIT: m->limit_hits[PD_LIM_STREAMS]++; break;
	case PD_DETAIL_PROFILE_TOO_LARGE: m->limit_hits[PD_LIM_PROFILE_BYTES]++; break;
	/* a job refused after admission: the store's write queue was full (the service's
	 * max_queued_jobs / _bytes refusals come before a job exists, counted by it) */
	case PD_DETAIL_OVERLOADED: m->limit_hits[PD_LIM_STORE_QUEUE]++; break;
	default: break;
	}
}

static void conn_pump(pd_conn *c);

static void delta_done(pd_conn *c, pd_request *r)
{
	const pd_job_result *res = &r->res;
	int status = wire_status(res->status), reason = wire_reason(res->reason, c->version);
	pd_msg m;

	r->state = REQ_SENDING;
	if (res->rc) {
		count_job_limit(c->env->metrics, res->detail);
		req_fail(c, r, res->rc, res->detail, res->detail_value, "%s", res->err.msg);
		return;
	}
	c->env->metrics->results[status - 1]++;
	if (c->tstats) {
		c->tstats->requests++;
		c->tstats->new_streams += res->status == PD_STATUS_BASELINE &&
					  res->reason == PD_REASON_FIRST;
	}
	r->out = r->no_data ? NULL : res->out;
	r->out_len = r->no_data ? 0 : res->out_len;
	r->out_crc = r->no_data ? 0 : res->out_crc32;
	msg_init(&m, PD_FT_RESULT, r->id);
	m.u.result.status = (uint8_t)status;
	m.u.result.reason = (uint8_t)reason;
	m.u.result.orig_status = (uint8_t)wire_status(res->orig_status);
	m.u.result.seq = r->seq;
	m.u.result.samples_in = res->samples_in;
	m.u.result.samples_out = res->samples_out;
	m.u.result.output_bytes = r->out_len;
	conn_logx(c, r->stream, "result", PD_LOG_DEBUG, "request %u %s seq %llu: %s/%s, %zu bytes",
		  r->id, r->stream,
		 (unsigned long long)r->seq, pd_status_name(res->status),
		 pd_reason_name(res->reason), r->out_len);
	if (conn_send(c, &m)) {
		conn_close(c, PD_CLOSE_NOMEM, false, "cannot queue RESULT");
		return;
	}
	send_queue_push(c, r);
}

static int admin_error_detail(int rc)
{
	switch (rc) {
	case PD_E_AUTH: return PD_DETAIL_ROLE;
	case PD_E_BUSY: return PD_DETAIL_OVERLOADED;
	default: return PD_DETAIL_NONE;
	}
}

static void admin_done(pd_conn *c, pd_request *r)
{
	pd_msg m;

	r->state = REQ_SENDING;
	if (r->admin_rc) {
		req_fail(c, r, r->admin_rc, admin_error_detail(r->admin_rc), 0, "%s",
			 r->admin_err.msg);
		return;
	}
	r->out = (const uint8_t *)r->body;
	r->out_len = r->body_len;
	r->out_crc = pd_crc32(0, r->out, r->out_len);
	msg_init(&m, PD_FT_ADMIN_RESULT, r->id);
	m.u.admin_result.format = PD_ADMIN_JSON;
	m.u.admin_result.total_bytes = r->out_len;
	if (conn_send(c, &m)) {
		conn_close(c, PD_CLOSE_NOMEM, false, "cannot queue ADMIN_RESULT");
		return;
	}
	send_queue_push(c, r);
}

static void run_completion(pd_request *r)
{
	pd_conn *c = r->conn;

	r->env->in_service--;
	if (!c) {
		/* Orphan: its connection closed or it was cancelled meanwhile. */
		r->env->metrics->orphaned_completions++;
		if (r->job)
			pd_job_free(r->job);
		req_free(r);
		return;
	}
	if (r->admin)
		admin_done(c, r);
	else
		delta_done(c, r);
	conn_drive(c);
}

void pd_conn_run_completions(pd_conn_env *env)
{
	pd_request *list;

	pthread_mutex_lock(&env->done_mu);
	list = env->done_head;
	env->done_head = env->done_tail = NULL;
	pthread_mutex_unlock(&env->done_mu);
	while (list) {
		pd_request *r = list;
		list = r->done_next;
		run_completion(r);
	}
}

static void on_done_event(evutil_socket_t fd, short what, void *arg)
{
	pd_conn_run_completions(arg);
}

/* ---- response pump: RESULT_DATA under the output budget -------------------------------- */

static size_t chunk_size(const pd_conn *c)
{
	size_t chunk = c->env->cfg->chunk_bytes;
	return chunk < c->peer_max_frame ? chunk : c->peer_max_frame;
}

static void send_result_end(pd_conn *c, pd_request *r)
{
	pd_msg m;

	msg_init(&m, PD_FT_RESULT_END, r->id);
	m.u.result_end.total_bytes = r->out_len;
	m.u.result_end.crc32 = r->out_len ? r->out_crc : 0;
	conn_send(c, &m);
}

/* One chunk of r; true when r's response is complete (and r settled). */
static bool pump_one(pd_conn *c, pd_request *r)
{
	size_t n = r->out_len - r->out_off, chunk = chunk_size(c);

	if (n > chunk)
		n = chunk;
	if (n) {
		if (conn_send_data(c, r->id, r->out + r->out_off, n)) {
			conn_close(c, PD_CLOSE_NOMEM, false, "cannot queue RESULT_DATA");
			return true;
		}
		r->out_off += n;
	}
	if (r->out_off < r->out_len)
		return false;
	send_result_end(c, r);
	r->server_done = true;
	req_settle(c, r);
	return true;
}

/* Round robin over responses, one chunk each, while under the budget. */
static void conn_pump(pd_conn *c)
{
	size_t budget = c->env->cfg->output_budget_bytes;

	while (conn_alive(c) && c->send_head && out_len(c) < budget) {
		pd_request *r = c->send_head;
		send_queue_remove(c, r);
		if (!pump_one(c, r) && conn_alive(c))
			send_queue_push(c, r);
	}
}

/* ---- frame handlers ------------------------------------------------------------------------ */

static int auth_resolve(pd_conn *c, const pd_auth *auth, pd_principal *who, const char **why)
{
	pd_principal pt, pc;
	bool tok = false, cert = false;

	if (c->has_token) {
		tok = pd_auth_by_token_hash(auth, c->token_hash, &pt);
		if (!tok) {
			*why = "unknown token";
			return PD_E_AUTH;
		}
	}
	if (c->has_cn)
		cert = pd_auth_by_cert_cn(auth, c->cn, &pc);
	if (!tok && !cert) {
		*why = c->has_cn ? "certificate CN not in the tenants file" : "no credential";
		return PD_E_AUTH;
	}
	if (tok && cert && (strcmp(pt.tenant, pc.tenant) != 0 || pt.role != pc.role)) {
		*why = "token and certificate name different tenants or roles";
		return PD_E_AUTH;
	}
	*who = tok ? pt : pc;
	return PD_OK;
}

static void conn_set_state(pd_conn *c, int st);

static void send_hello_ok(pd_conn *c, int version)
{
	const pd_config *cfg = c->env->cfg;
	pd_msg m;

	msg_init(&m, PD_FT_HELLO_OK, 0);
	m.u.hello_ok.version = (uint16_t)version;
	m.u.hello_ok.role = (uint8_t)c->who.role;
	m.u.hello_ok.max_frame = (uint32_t)cfg->max_frame;
	m.u.hello_ok.max_inflight = (uint32_t)cfg->max_inflight;
	m.u.hello_ok.max_profile_bytes = cfg->limits.max_input;
	m.u.hello_ok.keepalive_ms = (uint32_t)cfg->keepalive_ms;
	m.u.hello_ok.idle_timeout_ms = (uint32_t)cfg->idle_timeout_ms;
	m.u.hello_ok.request_timeout_ms = (uint32_t)cfg->request_timeout_ms;
	m.u.hello_ok.tenant = pd_str_c(c->who.tenant);
	m.u.hello_ok.server_name = pd_str_c(cfg->server_name);
	conn_send(c, &m);
}

/* The ERROR of a failed HELLO, now: at once or when its delay is over. */
static void auth_answer(pd_conn *c)
{
	if (c->auth_fail_blocked)
		conn_fail(c, PD_CLOSE_AUTH, PD_E_AUTH, PD_DETAIL_AUTH_FAILED, 0,
			  "authentication refused: too many failed authentications from this "
			  "address; it is blocked for a while");
	else
		conn_fail(c, PD_CLOSE_AUTH, PD_E_AUTH, PD_DETAIL_AUTH_FAILED, 0,
			  "authentication failed");
}

/* A failed HELLO: answered after delay_ms, reading nothing meanwhile (the
 * janitor answers); the connection still counts as unauthenticated. */
static void auth_fail(pd_conn *c, uint64_t delay_ms, bool blocked)
{
	c->env->metrics->auth_failed++;
	c->auth_fail_blocked = blocked;
	if (!delay_ms) {
		auth_answer(c);
		return;
	}
	if (!blocked)
		c->env->metrics->auth_failed_delayed++;
	c->handshake_deadline = 0;
	c->auth_fail_at = now_ms() + delay_ms;
	bufferevent_disable(c->bev, EV_READ);
}

/* Token and certificate checked: false (and the failure under way) if they
 * do not authenticate, or if the source is blocked (then unchecked). */
static bool hello_authenticate(pd_conn *c)
{
	pd_conn_env *env = c->env;
	const pd_config *cfg = env->cfg;
	uint64_t now = now_ms(), delay;
	const char *why = NULL;
	bool block_started;

	if (pd_guard_blocked_ms(env->guard, c->src, now)) {
		env->metrics->limit_hits[PD_LIM_AUTH_BLOCKED]++;
		auth_fail(c, cfg->auth_fail_delay_max_ms, true);
		return false;
	}
	if (!auth_resolve(c, env->auth, &c->who, &why))
		return true;
	delay = pd_guard_fail(env->guard, c->src, now, &block_started);
	conn_log(c, PD_LOG_DEBUG, "auth failure detail: %s", why);
	if (block_started) {
		env->metrics->auth_blocks++;
		conn_log(c, PD_LOG_WARN,
			 "%llu failed authentications from this address: blocked for %llu ms",
			 (unsigned long long)cfg->auth_fail_block_after,
			 (unsigned long long)cfg->auth_fail_block_ms);
	}
	auth_fail(c, delay, false);
	return false;
}

static void on_hello(pd_conn *c, const pd_msg_hello *h)
{
	int version = pd_proto_choose_version(PD_PROTO_VERSION_MIN, PD_PROTO_VERSION,
					      h->min_version, h->max_version);

	if (!version) {
		conn_fail(c, PD_CLOSE_VERSION, PD_E_PROTO, PD_DETAIL_VERSION,
			  (uint64_t)PD_PROTO_VERSION_MIN << 16 | PD_PROTO_VERSION,
			  "no common version (client %u..%u, server %u..%u)", h->min_version,
			  h->max_version, PD_PROTO_VERSION_MIN, PD_PROTO_VERSION);
		return;
	}
	c->has_token = h->token.len > 0;
	if (c->has_token)
		pd_auth_hash_token(h->token.p, h->token.len, c->token_hash);
	c->has_cn = c->ssl && pd_tls_peer_cn(c->ssl, c->cn, sizeof c->cn);
	if (!hello_authenticate(c))
		return;
	ua_remove(c);
	c->authed = true;
	c->version = version;
	c->peer_max_frame = h->max_frame ? h->max_frame : PD_FRAME_MAX_ABS;
	c->max_payload = (uint32_t)c->env->cfg->max_frame;
	c->handshake_deadline = 0;
	c->env->metrics->conns_authenticated++;
	c->tstats = pd_metrics_tenant(c->env->metrics, c->who.tenant);
	send_hello_ok(c, version);
	conn_set_state(c, CONN_READY);
	conn_logx(c, NULL, "auth", PD_LOG_INFO, "authenticated: role %s via %s%s, client '%.*s'",
		 pd_role_name(c->who.role), c->has_token ? "token" : "certificate",
		 c->has_token && c->has_cn ? "+certificate" : "", (int)h->client_name.len,
		 h->client_name.p);
}

static void on_ping(pd_conn *c, const pd_msg *in)
{
	pd_msg m;

	msg_init(&m, PD_FT_PONG, 0);
	m.u.ping.opaque = in->u.ping.opaque;
	conn_send(c, &m);
}

/* Server side of GOODBYE: no new requests, finish the open ones. */
static void conn_goodbye(pd_conn *c, int bye, int close_reason, const char *msg)
{
	if (c->state == CONN_DRAINING && c->drain_reason != PD_CLOSE_GOODBYE)
		return; /* we already said goodbye */
	send_goodbye(c, bye, msg);
	c->drain_reason = close_reason;
	if (c->state != CONN_DRAINING) {
		c->drain_deadline = now_ms() + c->env->cfg->drain_timeout_ms;
		conn_set_state(c, CONN_DRAINING);
	}
}

static void on_goodbye(pd_conn *c, const pd_msg_goodbye *g)
{
	if (c->state == CONN_DRAINING)
		return; /* both said goodbye, or a second one: nothing changes */
	conn_log(c, PD_LOG_DEBUG, "client GOODBYE %u: %.*s", g->reason, (int)g->message.len,
		 g->message.p);
	c->drain_reason = PD_CLOSE_GOODBYE;
	c->drain_deadline = now_ms() + c->env->cfg->drain_timeout_ms;
	conn_set_state(c, CONN_DRAINING);
}

/* Checks shared by DELTA_BEGIN and ADMIN; false when the connection failed. */
static bool request_admissible(pd_conn *c, uint32_t id)
{
	if (c->state == CONN_DRAINING && c->drain_reason == PD_CLOSE_GOODBYE) {
		conn_fail(c, PD_CLOSE_PROTOCOL, PD_E_PROTO, PD_DETAIL_BAD_FRAME, 0,
			  "new request after GOODBYE");
		return false;
	}
	if (req_find(c, id)) {
		conn_fail(c, PD_CLOSE_PROTOCOL, PD_E_PROTO, PD_DETAIL_BAD_FRAME, 0,
			  "request id %u is already open", id);
		return false;
	}
	if (c->nreqs >= c->env->cfg->max_inflight) {
		c->env->metrics->limit_hits[PD_LIM_INFLIGHT]++;
		conn_fail(c, PD_CLOSE_INFLIGHT, PD_E_LIMIT, PD_DETAIL_INFLIGHT,
			  c->env->cfg->max_inflight, "more than %llu requests in flight",
			  (unsigned long long)c->env->cfg->max_inflight);
		return false;
	}
	return true;
}

static pd_request *open_request(pd_conn *c, uint32_t id)
{
	pd_request *r = req_new(c, id);

	if (!r)
		conn_fail(c, PD_CLOSE_NOMEM, PD_E_NOMEM, PD_DETAIL_NONE, 0, "out of memory");
	return r;
}

static int engine_first(int wire)
{
	return wire == PD_WIRE_FIRST_DROP ? PD_FIRST_DROP
	       : wire == PD_WIRE_FIRST_AUTO ? PD_FIRST_AUTO
					    : PD_FIRST_KEEP;
}

static void begin_job(pd_conn *c, pd_request *r, const pd_msg_delta_begin *b, unsigned flags)
{
	char names[PD_MAX_OVERRIDES][PD_MAX_TYPE_NAME + 1];
	pd_type_override ov[PD_MAX_OVERRIDES];
	pd_job_params p;
	pd_err err;
	int rc;

	for (unsigned i = 0; i < b->n_overrides; i++) {
		snprintf(names[i], sizeof names[i], "%.*s", (int)b->overrides[i].name.len,
			 b->overrides[i].name.p);
		ov[i].name = names[i];
		ov[i].policy = b->overrides[i].policy == PD_WIRE_POLICY_GAUGE ? PD_POLICY_GAUGE
									       : PD_POLICY_DELTA;
	}
	memset(&p, 0, sizeof p);
	p.tenant = c->who.tenant;
	p.stream = r->stream;
	p.seq = b->seq;
	p.incarnation = b->incarnation;
	p.producer_start_ns = b->producer_start_ns > INT64_MAX ? INT64_MAX
							       : (int64_t)b->producer_start_ns;
	p.first_policy = engine_first(b->first_policy);
	p.overrides = ov;
	p.noverrides = b->n_overrides;
	p.hash_kind = c->version >= 2 ? PD_CHASH_CRC128 : PD_CHASH_SHA256;
	p.has_after = (flags & PD_FLAG_BEGIN_AFTER) != 0;
	p.after_seq = b->after_seq;
	rc = pd_job_begin(c->env->svc, &p, &r->job, &err);
	if (rc) {
		r->job = NULL; /* a refusal by max_queued_jobs/_bytes is counted by the service */
		req_fail(c, r, rc, rc == PD_E_BUSY ? PD_DETAIL_OVERLOADED : PD_DETAIL_NONE,
			 rc == PD_E_BUSY ? pd_service_retry_after_ms(c->env->svc) : 0, "%s", err.msg);
		return;
	}
	r->state = REQ_UPLOADING;
}

static void on_delta_begin(pd_conn *c, const pd_msg *m)
{
	const pd_msg_delta_begin *b = &m->u.begin;
	pd_request *r;

	if ((m->flags & PD_FLAG_BEGIN_AFTER) && c->version < PD_PROTO_VERSION_AFTER) {
		conn_fail(c, PD_CLOSE_PROTOCOL, PD_E_PROTO, PD_DETAIL_BAD_FRAME, 0,
			  "DELTA_BEGIN flag AFTER needs protocol version %d (this connection: %d)",
			  PD_PROTO_VERSION_AFTER, c->version);
		return;
	}
	if (!request_admissible(c, m->request_id))
		return;
	r = open_request(c, m->request_id);
	if (!r)
		return;
	r->client_open = true;
	r->no_data = (m->flags & PD_FLAG_BEGIN_NO_DATA) != 0;
	r->seq = b->seq;
	r->deadline_ms = now_ms() + c->env->cfg->request_timeout_ms;
	snprintf(r->stream, sizeof r->stream, "%.*s", (int)b->stream.len, b->stream.p);
	r->state = REQ_DISCARDING; /* until the job exists */
	if (c->state == CONN_DRAINING) {
		req_fail(c, r, PD_E_BUSY, PD_DETAIL_SHUTTING_DOWN, 0, "server is draining");
		return;
	}
	begin_job(c, r, b, m->flags);
}

/* The request a DATA / DATA_END frame belongs to, or a connection error. */
static pd_request *upload_of(pd_conn *c, uint32_t id, const char *what)
{
	pd_request *r = req_find(c, id);

	if (!r || !r->client_open) {
		conn_fail(c, PD_CLOSE_PROTOCOL, PD_E_PROTO, PD_DETAIL_BAD_FRAME, 0,
			  "%s for request %u, which is not uploading", what, id);
		return NULL;
	}
	return r;
}

/* Feeds n payload bytes of a DATA frame; chunks come from the evbuffer. */
static void on_data(pd_conn *c, uint32_t id, struct evbuffer *in, size_t n)
{
	const pd_config *cfg = c->env->cfg;
	struct evbuffer_iovec vec[16];
	struct evbuffer_ptr pos;
	pd_request *r = upload_of(c, id, "DATA");
	pd_err err;
	int nvec, rc = PD_OK;

	if (!r || r->state == REQ_DISCARDING)
		return;
	r->received += n;
	if (r->received > cfg->limits.max_input) {
		c->env->metrics->limit_hits[PD_LIM_PROFILE_BYTES]++;
		req_fail(c, r, PD_E_LIMIT, PD_DETAIL_PROFILE_TOO_LARGE, cfg->limits.max_input,
			 "upload exceeds max_profile_bytes (%llu)",
			 (unsigned long long)cfg->limits.max_input);
		return;
	}
	evbuffer_ptr_set(in, &pos, PD_FRAME_HDR_LEN, EVBUFFER_PTR_SET);
	nvec = evbuffer_peek(in, (ev_ssize_t)n, &pos, vec, 16);
	if (nvec > 16) {
		/* Very fragmented: make the payload contiguous instead. */
		const uint8_t *p = evbuffer_pullup(in, (ev_ssize_t)(PD_FRAME_HDR_LEN + n));
		rc = p ? pd_job_data(r->job, p + PD_FRAME_HDR_LEN, n, &err)
		       : pd_err_set(&err, PD_E_NOMEM, "out of memory");
	}
	for (int i = 0; nvec <= 16 && i < nvec && n && !rc; i++) {
		size_t take = vec[i].iov_len < n ? vec[i].iov_len : n;
		rc = pd_job_data(r->job, vec[i].iov_base, take, &err);
		n -= take;
	}
	if (rc == PD_E_LIMIT) {
		c->env->metrics->limit_hits[PD_LIM_PROFILE_BYTES]++;
		req_fail(c, r, rc, PD_DETAIL_PROFILE_TOO_LARGE, cfg->limits.max_input, "%s",
			 err.msg);
	} else if (rc == PD_E_BUSY) { /* max_queued_bytes, counted by the service */
		req_fail(c, r, rc, PD_DETAIL_OVERLOADED, pd_service_retry_after_ms(c->env->svc),
			 "%s", err.msg);
	} else if (rc) {
		req_fail(c, r, rc, PD_DETAIL_NONE, 0, "%s", err.msg);
	}
}

static void on_data_end(pd_conn *c, const pd_msg *m)
{
	const pd_msg_data_end *d = &m->u.data_end;
	pd_request *r = upload_of(c, m->request_id, "DATA_END");

	if (!r)
		return;
	r->client_open = false;
	if (r->state == REQ_DISCARDING) {
		req_settle(c, r);
		return;
	}
	if (d->total_bytes != r->received) {
		req_fail(c, r, PD_E_MALFORMED, PD_DETAIL_LENGTH_MISMATCH, r->received,
			 "DATA_END says %llu bytes, %llu received",
			 (unsigned long long)d->total_bytes, (unsigned long long)r->received);
		return;
	}
	r->total = d->total_bytes;
	memcpy(r->hash, d->hash, sizeof r->hash);
	r->state = REQ_WAIT_SUBMIT;
	conn_submit_ready(c);
}

static void on_cancel(pd_conn *c, uint32_t id)
{
	pd_request *r = req_find(c, id);

	if (!r)
		return; /* crossed its terminal frame */
	r->client_open = false;
	if (r->server_done) {
		req_settle(c, r);
		return;
	}
	c->env->metrics->cancels++;
	/* A job not yet on a worker is skipped; the ERROR goes out now either
	 * way and the completion, whatever it is, finds the request orphaned. */
	if (r->state == REQ_RUNNING)
		pd_job_cancel(r->job);
	req_fail(c, r, PD_E_TIMEOUT, PD_DETAIL_CANCELLED, 0, "cancelled");
}

/* Commands scoped to a tenant get the connection's unless one is named. */
static bool admin_scoped(const pd_str *cmd)
{
	return !(cmd->len == 5 && (memcmp(cmd->p, "stats", 5) == 0)) &&
	       !(cmd->len == 7 && memcmp(cmd->p, "tenants", 7) == 0);
}

/* NUL-terminated copies of the command and its arguments, in one block. */
typedef struct admin_args {
	char *mem;
	const char *cmd;
	const char *kv[2 * PD_MAX_ADMIN_ARGS + 3];
} admin_args;

static char *copy_str(char **dst, const pd_str *s)
{
	char *start = *dst;
	memcpy(start, s->p, s->len);
	start[s->len] = 0;
	*dst += s->len + 1;
	return start;
}

static int admin_args_build(const pd_conn *c, const pd_msg_admin *a, admin_args *out)
{
	size_t need = a->command.len + 1 + strlen(c->who.tenant) + 1, k = 0;
	bool has_tenant = false;
	char *p;

	for (unsigned i = 0; i < a->n_args; i++)
		need += a->args[i].key.len + a->args[i].value.len + 2;
	out->mem = p = malloc(need);
	if (!p)
		return PD_E_NOMEM;
	out->cmd = copy_str(&p, &a->command);
	for (unsigned i = 0; i < a->n_args; i++) {
		out->kv[k++] = copy_str(&p, &a->args[i].key);
		out->kv[k++] = copy_str(&p, &a->args[i].value);
		has_tenant |= strcmp(out->kv[k - 2], "tenant") == 0 ||
			      strcmp(out->kv[k - 2], "all_tenants") == 0;
	}
	if (!has_tenant && admin_scoped(&a->command)) {
		out->kv[k++] = "tenant";
		out->kv[k++] = strcpy(p, c->who.tenant);
	}
	out->kv[k] = NULL;
	return PD_OK;
}

static void on_admin(pd_conn *c, const pd_msg *m)
{
	const pd_msg_admin *a = &m->u.admin;
	admin_args args = {0};
	pd_request *r;
	pd_err err;
	int rc;

	if (!request_admissible(c, m->request_id))
		return;
	r = open_request(c, m->request_id);
	if (!r)
		return;
	c->env->metrics->admin_requests++;
	r->admin = true;
	r->state = REQ_DISCARDING;
	conn_log(c, PD_LOG_INFO, "ADMIN %.*s (request %u)", (int)a->command.len, a->command.p,
		 m->request_id);
	if (c->state == CONN_DRAINING) {
		req_fail(c, r, PD_E_BUSY, PD_DETAIL_SHUTTING_DOWN, 0, "server is draining");
		return;
	}
	if (c->who.role != PD_ROLE_ADMIN) {
		req_fail(c, r, PD_E_AUTH, PD_DETAIL_ROLE, 0, "ADMIN needs the admin role");
		return;
	}
	if (admin_args_build(c, a, &args)) {
		req_fail(c, r, PD_E_NOMEM, PD_DETAIL_NONE, 0, "out of memory");
		return;
	}
	if (!pd_service_admin_known(args.cmd)) {
		req_fail(c, r, PD_E_ARG, PD_DETAIL_UNKNOWN_COMMAND, 0, "unknown command '%s'",
			 args.cmd);
		free(args.mem);
		return;
	}
	r->state = REQ_ADMIN_RUNNING;
	rc = pd_service_admin(c->env->svc, args.cmd, args.kv, admin_done_cb, r, &err);
	free(args.mem);
	if (rc) {
		r->state = REQ_DISCARDING;
		req_fail(c, r, rc, admin_error_detail(rc), 0, "%s", err.msg);
		return;
	}
	c->env->in_service++; /* its completion runs later, on this loop */
}

/* ---- input: frames out of the bufferevent -------------------------------------------------- */

/* Which frames each state accepts (PROTOCOL.md §4); false = connection error. */
static bool frame_legal(const pd_conn *c, int type)
{
	if (!(pd_frame_type_senders(type) & PD_SIDE_CLIENT))
		return false;
	if (c->state == CONN_AWAIT_HELLO)
		return type == PD_FT_HELLO;
	return type != PD_FT_HELLO;
}

static void dispatch(pd_conn *c, const pd_msg *m)
{
	switch (m->type) {
	case PD_FT_HELLO: on_hello(c, &m->u.hello); break;
	case PD_FT_PING: on_ping(c, m); break;
	case PD_FT_PONG: break; /* unsolicited, or an answer: either way alive */
	case PD_FT_GOODBYE: on_goodbye(c, &m->u.goodbye); break;
	case PD_FT_DELTA_BEGIN: on_delta_begin(c, m); break;
	case PD_FT_DATA_END: on_data_end(c, m); break;
	case PD_FT_CANCEL: on_cancel(c, m->request_id); break;
	case PD_FT_ADMIN: on_admin(c, m); break;
	default: break; /* DATA is handled without decoding; frame_legal() did the rest */
	}
}

static void header_error(pd_conn *c, const pd_frame_hdr *h, int rc, const pd_err *err)
{
	bool preauth = c->state == CONN_AWAIT_HELLO;

	if (rc == PD_E_LIMIT && h->len > c->max_payload) {
		c->env->metrics->limit_hits[preauth ? PD_LIM_FRAME_PREAUTH : PD_LIM_FRAME]++;
		conn_fail(c, PD_CLOSE_FRAME_TOO_LARGE, PD_E_LIMIT, PD_DETAIL_FRAME_TOO_LARGE,
			  c->max_payload, "frame of %u bytes, limit %u%s", h->len, c->max_payload,
			  preauth ? " before authentication" : "");
		return;
	}
	conn_fail(c, PD_CLOSE_PROTOCOL, rc, PD_DETAIL_BAD_FRAME, 0, "%s", err->msg);
}

/* A complete frame whose header passed: decode (DATA: feed) and dispatch. */
static bool handle_frame(pd_conn *c, struct evbuffer *in, const pd_frame_hdr *h)
{
	const uint8_t *p;
	pd_msg m;
	pd_err err;
	int rc;

	c->env->metrics->frames_in++;
	c->env->metrics->bytes_in += PD_FRAME_HDR_LEN + (size_t)h->len;
	if (c->tstats)
		c->tstats->bytes_in += PD_FRAME_HDR_LEN + (size_t)h->len;
	if (h->type == PD_FT_DATA) {
		on_data(c, h->request_id, in, h->len); /* no copy, no decode: bytes as they are */
	} else {
		p = evbuffer_pullup(in, (ev_ssize_t)(PD_FRAME_HDR_LEN + h->len));
		if (!p) {
			conn_close(c, PD_CLOSE_NOMEM, false, "cannot buffer a frame");
			return false;
		}
		rc = pd_msg_decode(h, p + PD_FRAME_HDR_LEN, &m, &err);
		if (rc) {
			conn_fail(c, PD_CLOSE_PROTOCOL, rc, PD_DETAIL_BAD_FRAME, 0, "%s", err.msg);
			return false;
		}
		dispatch(c, &m);
	}
	return conn_alive(c);
}

/* Handles the frame at the head of the input; false when nothing more can
 * be done now (incomplete frame, or the connection is failing). */
static bool read_one_frame(pd_conn *c, struct evbuffer *in)
{
	size_t avail = evbuffer_get_length(in);
	uint8_t raw[PD_FRAME_HDR_LEN];
	pd_frame_hdr h;
	pd_err err;
	int rc;

	if (avail == 0) {
		c->frame_started = 0;
		return false;
	}
	if (!c->frame_started)
		c->frame_started = now_ms();
	if (avail < PD_FRAME_HDR_LEN)
		return false;
	evbuffer_copyout(in, raw, sizeof raw);
	/* The length is checked here, before a single payload byte is kept. */
	rc = pd_frame_hdr_decode(raw, sizeof raw, &h, c->max_payload, &err);
	if (rc) {
		header_error(c, &h, rc, &err);
		return false;
	}
	if (!frame_legal(c, h.type)) {
		conn_fail(c, PD_CLOSE_PROTOCOL, PD_E_PROTO, PD_DETAIL_BAD_FRAME, 0,
			  "%s not allowed in state %s", pd_frame_type_name(h.type),
			  state_names[c->state]);
		return false;
	}
	if (avail < PD_FRAME_HDR_LEN + (size_t)h.len)
		return false;
	c->frame_started = 0;
	if (!handle_frame(c, in, &h))
		return false;
	evbuffer_drain(in, PD_FRAME_HDR_LEN + (size_t)h.len);
	return true;
}

/* Output budget: stop reading above it (resumed by the write callback). */
static bool conn_over_budget(pd_conn *c)
{
	if (out_len(c) < c->env->cfg->output_budget_bytes)
		return false;
	if (!c->paused) {
		c->paused = true;
		c->stalled_since = now_ms();
		c->env->metrics->limit_hits[PD_LIM_OUTPUT_BUDGET]++;
		bufferevent_disable(c->bev, EV_READ);
		conn_log(c, PD_LOG_DEBUG, "output above budget (%zu bytes): reading paused",
			 out_len(c));
	}
	return true;
}

static void conn_read_frames(pd_conn *c)
{
	struct evbuffer *in = bufferevent_get_input(c->bev);

	while (conn_alive(c) && c->state != CONN_TLS && !c->auth_fail_at && !conn_over_budget(c) &&
	       read_one_frame(c, in))
		;
}

/* ---- driver, setter, close ------------------------------------------------------------------ */

static void conn_set_state(pd_conn *c, int st)
{
	if (c->state == st)
		return;
	conn_log(c, PD_LOG_DEBUG, "state %s -> %s", state_names[c->state], state_names[st]);
	c->state = st;
}

/* The driver: whatever just happened, do everything that can be done now. */
static void conn_drive(pd_conn *c)
{
	switch (c->state) {
	case CONN_TLS:
	case CONN_CLOSED:
		return;
	case CONN_CLOSING:
		if (out_len(c) == 0)
			conn_close(c, PD_CLOSE__COUNT, false, "flushed");
		return;
	default:
		break;
	}
	conn_pump(c);
	if (!conn_alive(c))
		return;
	if (!c->paused)
		conn_read_frames(c);
	if (!conn_alive(c))
		return;
	conn_pump(c);
	if (!conn_alive(c))
		return;
	conn_over_budget(c);
	if (c->state == CONN_DRAINING && c->nreqs == 0)
		conn_close(c, c->drain_reason, true, "drained");
}

static void conn_unlink(pd_conn *c)
{
	pd_conn_env *env = c->env;

	PD_LIST_UNLINK(env->conns, c, prev, next);
	c->next = env->reap; /* the reap list is linked by next alone */
	env->reap = c;
	env->nconns--;
	event_active(env->ev_reap, EV_READ, 0);
}

/* Frees the bufferevent (and SSL, socket) now; the struct later. */
static void conn_destroy(pd_conn *c, bool graceful)
{
	if (c->state == CONN_CLOSED)
		return;
	if (graceful && c->ssl && SSL_is_init_finished(c->ssl)) {
		SSL_shutdown(c->ssl); /* close_notify, best effort: the socket is non-blocking */
		ERR_clear_error();    /* keep the thread's queue clean for other connections */
	}
	if (c->bev)
		bufferevent_free(c->bev);
	c->bev = NULL;
	c->ssl = NULL;
	c->state = CONN_CLOSED;
	ua_remove(c);
	conn_unlink(c);
	if (c->env->on_close)
		c->env->on_close(c->env->on_close_arg);
}

static void release_all_requests(pd_conn *c)
{
	while (c->reqs)
		req_detach(c, c->reqs);
	c->send_head = c->send_tail = NULL;
}

/*
 * THE close function. reason is a pd_close_reason (PD_CLOSE__COUNT: the
 * second step of an earlier close, not counted again). With flush, what is
 * queued (a final ERROR or GOODBYE) is sent first, bounded by
 * write_timeout_ms. Open requests are dropped; running jobs are orphaned.
 */
static void conn_close(pd_conn *c, int reason, bool flush, const char *fmt, ...)
{
	pd_metrics *m = c->env->metrics;
	char msg[512];
	va_list ap;

	if (c->state == CONN_CLOSED)
		return;
	if (c->state == CONN_CLOSING || reason == PD_CLOSE__COUNT) {
		conn_destroy(c, !flush && out_len(c) == 0);
		return;
	}
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	conn_logx(c, NULL, "close",
		 reason == PD_CLOSE_PEER || reason == PD_CLOSE_GOODBYE ||
				 reason == PD_CLOSE_SHUTDOWN || reason == PD_CLOSE_UNAUTH_EVICTED
			 ? PD_LOG_DEBUG
			 : PD_LOG_INFO,
		 "closed (%s): %s", pd_close_reason_name(reason), msg);
	m->closes[reason]++;
	m->conns_current--;
	ua_remove(c);
	if (reason == PD_CLOSE_TLS)
		m->handshakes_failed++;
	conn_set_state(c, CONN_CLOSING);
	release_all_requests(c);
	if (flush && c->bev && out_len(c) > 0) {
		c->flush_deadline = now_ms() + c->env->cfg->write_timeout_ms;
		bufferevent_disable(c->bev, EV_READ);
		bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
		return;
	}
	conn_destroy(c, flush);
}

/* ---- libevent callbacks ------------------------------------------------------------------------ */

static void on_read(struct bufferevent *bev, void *arg)
{
	pd_conn *c = arg;

	c->last_rx = now_ms();
	conn_drive(c);
}

/* Output fell under the low watermark (half the budget; 0 while closing). */
static void on_write(struct bufferevent *bev, void *arg)
{
	pd_conn *c = arg;

	if (c->paused && out_len(c) < c->env->cfg->output_budget_bytes / 2 + 1) {
		c->paused = false;
		c->stalled_since = 0;
		c->frame_started = 0; /* restarts with the next byte we read */
		bufferevent_enable(c->bev, EV_READ);
	}
	conn_drive(c);
}

static void log_tls(pd_conn *c, int reason, const char *what)
{
	char why[512] = "";
	size_t used = 0;
	unsigned long code;

	while (c->bev && (code = bufferevent_get_openssl_error(c->bev)) != 0 && used + 3 < sizeof why) {
		char one[256];
		if (ERR_GET_LIB(code) == 0)
			continue; /* libevent also queues SSL_get_error()'s value */
		ERR_error_string_n(code, one, sizeof one);
		used += (size_t)snprintf(why + used, sizeof why - used, "%s%s", used ? "; " : "", one);
	}
	conn_close(c, reason, false, "%s%s%s", what, why[0] ? ": " : "", why);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
	pd_conn *c = arg;

	if (what & BEV_EVENT_CONNECTED) {
		conn_set_state(c, CONN_AWAIT_HELLO);
		conn_log(c, PD_LOG_DEBUG, "TLS up: %s %s", SSL_get_version(c->ssl),
			 SSL_get_cipher_name(c->ssl));
		conn_drive(c);
		return;
	}
	if (c->state == CONN_TLS) {
		log_tls(c, PD_CLOSE_TLS, what & BEV_EVENT_EOF ? "EOF during TLS handshake"
							     : "TLS handshake failed");
		return;
	}
	if (what & BEV_EVENT_EOF)
		conn_close(c, c->state == CONN_CLOSING ? PD_CLOSE__COUNT : PD_CLOSE_PEER, false,
			   "peer closed the connection");
	else
		log_tls(c, c->state == CONN_CLOSING ? PD_CLOSE__COUNT : PD_CLOSE_IO, "I/O error");
}

/* ---- accept ---------------------------------------------------------------------------------------- */

static void format_peer(const struct sockaddr *sa, char *out, size_t n)
{
	char host[INET6_ADDRSTRLEN] = "?";
	unsigned port = 0;

	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *s4 = (const struct sockaddr_in *)(const void *)sa;
		inet_ntop(AF_INET, &s4->sin_addr, host, sizeof host);
		port = ntohs(s4->sin_port);
		snprintf(out, n, "%s:%u", host, port);
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)(const void *)sa;
		inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof host);
		port = ntohs(s6->sin6_port);
		snprintf(out, n, "[%s]:%u", host, port);
	} else {
		snprintf(out, n, "unix");
	}
}

/* The transport: TLS (bufferevent_openssl), or plain for the test entry
 * point pd_conn_accept_plain() only. Nothing else differs between the two. */
static pd_conn *conn_new(pd_conn_env *env, evutil_socket_t fd, const struct sockaddr *sa,
			 bool tls)
{
	const int opts = BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS;
	pd_conn *c = calloc(1, sizeof *c);

	if (!c)
		return NULL;
	c->env = env;
	c->id = ++env->next_id;
	format_peer(sa, c->peer, sizeof c->peer);
	if (!tls) {
		c->bev = bufferevent_socket_new(env->base, fd, opts);
		if (!c->bev)
			goto fail;
		return c;
	}
	c->ssl = SSL_new(env->tls);
	if (!c->ssl)
		goto fail;
	c->bev = bufferevent_openssl_socket_new(env->base, fd, c->ssl, BUFFEREVENT_SSL_ACCEPTING,
						opts);
	if (!c->bev)
		goto fail;
	bufferevent_openssl_set_allow_dirty_shutdown(c->bev, 1);
	return c;
fail:
	if (c->ssl)
		SSL_free(c->ssl);
	free(c);
	return NULL;
}

/* max_unauth_connections, but never more than 3/4 of max_connections. */
static size_t unauth_cap(const pd_config *cfg)
{
	uint64_t share = cfg->max_connections - cfg->max_connections / 4;
	uint64_t cap = cfg->max_unauth_connections < share ? cfg->max_unauth_connections : share;

	return cap ? (size_t)cap : 1;
}

static void evict_unauth(pd_conn *c, int limit, const char *why)
{
	c->env->metrics->limit_hits[limit]++;
	conn_close(c, PD_CLOSE_UNAUTH_EVICTED, false, "unauthenticated, oldest: %s", why);
}

/* Has sent nothing yet (no ClientHello processed, no byte waiting): the
 * cheapest connection to lose. A fresh client's ClientHello is usually
 * already in the socket when the accept loop runs, which is what tells it
 * from a socket held open. */
static bool unauth_silent(const pd_conn *c)
{
	uint8_t byte;

	return c->state == CONN_TLS && c->ssl && SSL_get_state(c->ssl) == TLS_ST_BEFORE &&
	       recv(bufferevent_getfd(c->bev), &byte, 1, MSG_PEEK | MSG_DONTWAIT) <= 0;
}

/* The eviction candidate: the oldest silent unauthenticated connection (of
 * src if given), else the oldest. */
static pd_conn *unauth_victim(pd_conn_env *env, const uint8_t *src)
{
	pd_conn *oldest = NULL;

	for (pd_conn *c = env->ua_head; c; c = c->ua_next) {
		if (src && memcmp(c->src, src, PD_GUARD_KEY_LEN) != 0)
			continue;
		if (!oldest)
			oldest = c;
		if (unauth_silent(c))
			return c;
	}
	return oldest;
}

/* Makes room for a new connection from src by closing an unauthenticated
 * one (unauth_victim), of src when src is at its cap, else of all when their
 * cap is reached or the server is full. False when the server is full of
 * authenticated connections: the new one is refused. */
static bool admit(pd_conn_env *env, const uint8_t *src)
{
	const pd_config *cfg = env->cfg;
	size_t same = 0;

	for (pd_conn *c = env->ua_head; c; c = c->ua_next)
		same += memcmp(c->src, src, PD_GUARD_KEY_LEN) == 0;
	if (same && same >= cfg->max_unauth_per_source)
		evict_unauth(unauth_victim(env, src), PD_LIM_UNAUTH_SOURCE, "max_unauth_per_source");
	else if (env->ua_head && env->nunauth >= unauth_cap(cfg))
		evict_unauth(unauth_victim(env, NULL), PD_LIM_UNAUTH, "max_unauth_connections");
	else if (env->ua_head && env->nconns >= cfg->max_connections)
		evict_unauth(unauth_victim(env, NULL), PD_LIM_MAX_CONNECTIONS, "max_connections");
	if (env->nconns < cfg->max_connections)
		return true;
	env->metrics->limit_hits[PD_LIM_MAX_CONNECTIONS]++;
	return false;
}

static void conn_accept(pd_conn_env *env, evutil_socket_t fd, const struct sockaddr *sa, bool tls)
{
	const pd_config *cfg = env->cfg;
	uint8_t src[PD_GUARD_KEY_LEN];
	int one = 1;
	pd_conn *c;

	pd_guard_src_key(sa, src);
	if (env->draining || !admit(env, src)) {
		evutil_closesocket(fd);
		return;
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	c = conn_new(env, fd, sa, tls);
	if (!c) {
		pd_log(PD_LOG_WARN, "out of memory accepting a connection");
		evutil_closesocket(fd);
		return;
	}
	bufferevent_setcb(c->bev, on_read, on_write, on_event, c);
	bufferevent_setwatermark(c->bev, EV_WRITE, cfg->output_budget_bytes / 2, 0);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
	c->state = tls ? CONN_TLS : CONN_AWAIT_HELLO;
	c->max_payload = (uint32_t)cfg->max_frame_preauth;
	c->peer_max_frame = PD_FRAME_MAX_ABS;
	c->last_rx = now_ms();
	c->handshake_deadline = c->last_rx + cfg->handshake_timeout_ms;
	memcpy(c->src, src, sizeof c->src);
	ua_add(c);
	PD_LIST_PUSH(env->conns, c, prev, next);
	env->nconns++;
	env->metrics->conns_total++;
	env->metrics->conns_current++;
	conn_log(c, PD_LOG_DEBUG, "accepted%s", tls ? "" : " (plaintext test transport)");
}

void pd_conn_accept(pd_conn_env *env, evutil_socket_t fd, const struct sockaddr *sa, int salen)
{
	conn_accept(env, fd, sa, true);
}

/* Tests and the fuzz driver only (see pd_conn.h); pd_server never calls it. */
void pd_conn_accept_plain(pd_conn_env *env, evutil_socket_t fd, const struct sockaddr *sa,
			  int salen)
{
	conn_accept(env, fd, sa, false);
}

/* ---- janitor and server-wide operations ----------------------------------------------------------- */

/* Upload deadlines; true if a request was failed. */
static bool sweep_requests(pd_conn *c, uint64_t now)
{
	pd_request *r = c->reqs, *next;
	bool hit = false;

	for (; r && conn_alive(c); r = next) {
		next = r->next;
		if (r->state != REQ_UPLOADING || now < r->deadline_ms)
			continue;
		hit = true;
		c->env->metrics->limit_hits[PD_LIM_REQUEST_DEADLINE]++;
		req_fail(c, r, PD_E_TIMEOUT, PD_DETAIL_DEADLINE, c->env->cfg->request_timeout_ms,
			 "upload not finished within request_timeout_ms");
	}
	return hit;
}

static void fail_open_requests(pd_conn *c, const char *why)
{
	pd_request *r = c->reqs, *next;

	for (; r && conn_alive(c); r = next) {
		next = r->next;
		if (!r->server_done)
			req_fail(c, r, PD_E_BUSY, PD_DETAIL_SHUTTING_DOWN, 0, "%s", why);
	}
}

/* Deadlines of an authenticated connection; true if it was closed. */
static bool sweep_ready(pd_conn *c, uint64_t now)
{
	const pd_config *cfg = c->env->cfg;
	uint64_t *hits = c->env->metrics->limit_hits;

	/* While we pause reading, a partial frame cannot complete: not its fault. */
	if (!c->paused && c->frame_started && now - c->frame_started >= cfg->frame_timeout_ms) {
		hits[PD_LIM_FRAME_DEADLINE]++;
		conn_fail(c, PD_CLOSE_FRAME_TIMEOUT, PD_E_TIMEOUT, PD_DETAIL_DEADLINE,
			  cfg->frame_timeout_ms, "frame not complete within frame_timeout_ms");
	} else if (c->paused && now - c->stalled_since >= cfg->write_timeout_ms) {
		hits[PD_LIM_WRITE_TIMEOUT]++;
		send_goodbye(c, PD_BYE_OVERLOAD, "output backlog not read");
		conn_close(c, PD_CLOSE_OUTPUT_STUCK, false, "output above budget for %llu ms",
			   (unsigned long long)(now - c->stalled_since));
	} else if (!c->paused && now - c->last_rx >= cfg->idle_timeout_ms) {
		hits[PD_LIM_IDLE]++;
		send_goodbye(c, PD_BYE_IDLE, "idle");
		conn_close(c, PD_CLOSE_IDLE, true, "nothing received for %llu ms",
			   (unsigned long long)(now - c->last_rx));
	} else if (c->state == CONN_DRAINING && now >= c->drain_deadline) {
		hits[PD_LIM_DRAIN_TIMEOUT]++;
		fail_open_requests(c, "drain deadline");
		conn_close(c, PD_CLOSE_DRAIN_TIMEOUT, true, "requests still open at the drain deadline");
	}
	return !conn_alive(c);
}

static void sweep_conn(pd_conn *c, uint64_t now)
{
	const pd_config *cfg = c->env->cfg;

	if (c->state == CONN_CLOSING) {
		if (now >= c->flush_deadline)
			conn_close(c, PD_CLOSE__COUNT, false, "flush deadline");
		return;
	}
	if (c->auth_fail_at) {
		if (now >= c->auth_fail_at)
			auth_answer(c);
		return;
	}
	if (c->handshake_deadline && now >= c->handshake_deadline) {
		c->env->metrics->limit_hits[PD_LIM_HANDSHAKE_DEADLINE]++;
		conn_fail(c, PD_CLOSE_HANDSHAKE_TIMEOUT, PD_E_TIMEOUT, PD_DETAIL_DEADLINE,
			  cfg->handshake_timeout_ms, "no HELLO within handshake_timeout_ms");
		return;
	}
	if (c->state == CONN_TLS || c->state == CONN_AWAIT_HELLO || sweep_ready(c, now))
		return;
	if (sweep_requests(c, now))
		conn_drive(c);
}

void pd_conn_sweep(pd_conn_env *env) { pd_conn_sweep_at(env, now_ms()); }

void pd_conn_sweep_at(pd_conn_env *env, uint64_t now)
{
	pd_conn *c = env->conns, *next;

	for (; c; c = next) {
		next = c->next;
		sweep_conn(c, now);
	}
}

void pd_conn_shutdown_all(pd_conn_env *env)
{
	pd_conn *c = env->conns, *next;

	for (; c; c = next) {
		next = c->next;
		if (c->state == CONN_TLS || c->state == CONN_AWAIT_HELLO)
			conn_close(c, PD_CLOSE_SHUTDOWN, false, "server shutting down");
		else if (conn_alive(c)) {
			conn_goodbye(c, PD_BYE_SHUTDOWN, PD_CLOSE_SHUTDOWN, "server shutting down");
			conn_drive(c);
		}
	}
}

void pd_conn_close_all(pd_conn_env *env)
{
	pd_conn *c = env->conns, *next;

	for (; c; c = next) {
		next = c->next;
		if (conn_alive(c)) {
			fail_open_requests(c, "server shut down");
			conn_close(c, PD_CLOSE_DRAIN_TIMEOUT, true, "drain deadline of the server");
		}
		if (c->state == CONN_CLOSING)
			conn_close(c, PD_CLOSE__COUNT, false, "server exit");
	}
}

void pd_conn_recheck_auth(pd_conn_env *env)
{
	pd_conn *c = env->conns, *next;
	pd_principal who;
	const char *why;

	for (; c; c = next) {
		next = c->next;
		if (!c->authed || !conn_alive(c))
			continue;
		if (auth_resolve(c, env->auth, &who, &why) == PD_OK &&
		    strcmp(who.tenant, c->who.tenant) == 0 && who.role == c->who.role)
			continue;
		conn_log(c, PD_LOG_INFO, "credentials revoked by reload");
		conn_goodbye(c, PD_BYE_REVOKED, PD_CLOSE_REVOKED, "credentials revoked");
		conn_drive(c);
	}
}

/* ---- env ------------------------------------------------------------------------------------------- */

static void on_reap(evutil_socket_t fd, short what, void *arg)
{
	pd_conn_env *env = arg;

	while (env->reap) {
		pd_conn *c = env->reap;
		env->reap = c->next;
		free(c);
	}
}

int pd_conn_env_init(pd_conn_env *env, pd_err *e)
{
	env->conns = env->reap = NULL;
	env->nconns = 0;
	env->in_service = 0;
	env->done_head = env->done_tail = NULL;
	pd_buf_init(&env->scratch, 64 * 1024);
	env->ua_head = env->ua_tail = NULL;
	env->nunauth = 0;
	env->guard = pd_guard_new(&(pd_guard_opts){
		.delay_ms = env->cfg->auth_fail_delay_ms,
		.delay_max_ms = env->cfg->auth_fail_delay_max_ms,
		.block_after = env->cfg->auth_fail_block_after,
		.block_ms = env->cfg->auth_fail_block_ms,
		.slots = 4096,
	});
	if (!env->guard)
		return pd_err_set(e, PD_E_NOMEM, "out of memory");
	if (pthread_mutex_init(&env->done_mu, NULL) != 0)
		return pd_err_set(e, PD_E_NOMEM, "pthread_mutex_init failed");
	env->ev_done = event_new(env->base, -1, 0, on_done_event, env);
	env->ev_reap = event_new(env->base, -1, 0, on_reap, env);
	if (!env->ev_done || !env->ev_reap)
		return pd_err_set(e, PD_E_NOMEM, "event_new failed");
	return PD_OK;
}

void pd_conn_env_fini(pd_conn_env *env)
{
	pd_conn_close_all(env);
	pd_conn_run_completions(env);
	on_reap(-1, 0, env);
	if (env->ev_done)
		event_free(env->ev_done);
	if (env->ev_reap)
		event_free(env->ev_reap);
	env->ev_done = env->ev_reap = NULL;
	pthread_mutex_destroy(&env->done_mu);
	pd_buf_free(&env->scratch);
	pd_guard_free(env->guard);
	env->guard = NULL;
}
