/*
 * pdl_conn: libpdelta's one connection to pdeltad. TCP with a connect
 * deadline, TLS 1.2+ with peer and host/IP verification, the HELLO
 * exchange, and frame I/O over a non-blocking socket driven by poll():
 * queued frames are written while incoming bytes are read (PROTOCOL.md §9:
 * a client keeps reading while it writes), connection frames (PING, PONG,
 * GOODBYE, connection ERROR) are handled here, and request frames are handed
 * to pdl_request.c / pdl_admin.c one at a time.
 *
 * Timeouts: a write that makes no progress for io_timeout_ms, or a wait of
 * io_timeout_ms for the next frame of a request, fails as PDELTA_E_TIMEOUT
 * (retryable);
 * while waiting, a PING goes out whenever nothing was sent for the server's
 * keepalive_ms, and an unanswered PING for twice that ends the connection.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "pdl_internal.h"

#define PDL_WANT_READ (-2)
#define PDL_WANT_WRITE (-3)
#define PDL_TIMEDOUT (-4)
#define PDL_FULL (-5)
#define PDL_EOF (-6)

static void ssl_errstr(char *buf, size_t len)
{
	unsigned long e = ERR_get_error();

	if (e)
		ERR_error_string_n(e, buf, len);
	else
		snprintf(buf, len, "%s", errno ? strerror(errno) : "unexpected EOF");
	ERR_clear_error();
}

/* ---- TLS context ---------------------------------------------------------------- */

int pdl_tls_setup(pdelta *h, char *errbuf, size_t errlen)
{
	char es[256];
	SSL_CTX *c = SSL_CTX_new(TLS_client_method());

	if (!c) {
		snprintf(errbuf, errlen, "SSL_CTX_new failed");
		return PDELTA_E_TLS;
	}
	h->ssl_ctx = c;
	SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);
	SSL_CTX_set_mode(c, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	SSL_CTX_set_verify(c, SSL_VERIFY_PEER, NULL);
	if (h->ca_file ? SSL_CTX_load_verify_locations(c, h->ca_file, NULL) != 1
		       : SSL_CTX_set_default_verify_paths(c) != 1) {
		ssl_errstr(es, sizeof es);
		snprintf(errbuf, errlen, "CA %s: %s", h->ca_file ? h->ca_file : "(system)", es);
		return PDELTA_E_TLS;
	}
	if (!h->cert_file)
		return PDELTA_OK;
	if (SSL_CTX_use_certificate_chain_file(c, h->cert_file) != 1) {
		ssl_errstr(es, sizeof es);
		snprintf(errbuf, errlen, "certificate %s: %s", h->cert_file, es);
		return PDELTA_E_TLS;
	}
	if (SSL_CTX_use_PrivateKey_file(c, h->key_file, SSL_FILETYPE_PEM) != 1 ||
	    SSL_CTX_check_private_key(c) != 1) {
		ssl_errstr(es, sizeof es);
		snprintf(errbuf, errlen, "key %s: %s", h->key_file, es);
		return PDELTA_E_TLS;
	}
	return PDELTA_OK;
}

/* ---- closing ------------------------------------------------------------------------ */

int pdl_connected(const pdelta *h) { return h->ssl != NULL; }

static void drop(pdelta *h)
{
	if (h->ssl)
		SSL_free(h->ssl);
	if (h->fd >= 0)
		close(h->fd);
	h->ssl = NULL;
	h->fd = -1;
	h->ready = h->draining = h->read_wants_write = h->reused = h->ping_out = h->rx_eof = 0;
	pd_buf_reset(&h->wbuf);
	pd_buf_reset(&h->rbuf);
	pd_buf_reset(&h->dbuf);
	h->woff = h->rpos = h->consume = 0;
	h->tenant[0] = 0;
}

/* The transport failed: drop without I/O, record a retryable error. */
static int conn_lost(pdelta *h, const char *what)
{
	drop(h);
	return pdl_fail(h, PDELTA_E_IO, 1, "connection to %s lost: %s", h->peer, what);
}

static void queue_goodbye(pdelta *h, int reason, const char *text)
{
	pd_msg m;

	memset(&m, 0, sizeof m);
	m.type = PD_FT_GOODBYE;
	m.u.goodbye.reason = (uint16_t)reason;
	m.u.goodbye.message = pd_str_c(text);
	(void)pdl_send_msg(h, &m);
}

static void close_with(pdelta *h, int reason, const char *text)
{
	pdelta_error_info keep = h->err;
	char msg[sizeof h->errmsg];
	unsigned saved = h->o.io_timeout_ms;

	if (!h->ssl)
		return;
	memcpy(msg, h->errmsg, sizeof msg);
	if (h->ready && h->pid == getpid()) {
		/* best effort and short: never hang in a close */
		h->o.io_timeout_ms = saved < 500 ? saved : 500;
		queue_goodbye(h, reason, text);
		if (h->ssl && pdl_flush(h) == PDELTA_OK && h->ssl) {
			ERR_clear_error();
			SSL_shutdown(h->ssl);
		}
		h->o.io_timeout_ms = saved;
	}
	drop(h);
	h->err = keep;
	memcpy(h->errmsg, msg, sizeof msg);
}

void pdl_conn_close(pdelta *h, int graceful)
{
	if (graceful)
		close_with(h, PD_BYE_NORMAL, "");
	else
		drop(h);
}

void pdl_conn_abort_proto(pdelta *h) { close_with(h, PD_BYE_PROTOCOL, "protocol violation"); }

int pdl_proto_violation(pdelta *h, const char *fmt, ...)
{
	char m[300];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(m, sizeof m, fmt, ap);
	va_end(ap);
	pdl_conn_abort_proto(h);
	return pdl_fail(h, PDELTA_E_PROTO, 0, "server broke the protocol: %s", m);
}

/* ---- raw TLS I/O ---------------------------------------------------------------------- */

static int ssl_failure(pdelta *h, int ret, const char *op)
{
	char es[256];
	int se = SSL_get_error(h->ssl, ret);
	/* a server that stops (drains) or dies between the handshake and
	 * HELLO_OK: a transport error, as in tls_handshake() */
	int eof = ERR_GET_REASON(ERR_peek_error()) == SSL_R_UNEXPECTED_EOF_WHILE_READING;

	if (se == SSL_ERROR_WANT_READ)
		return PDL_WANT_READ;
	if (se == SSL_ERROR_WANT_WRITE)
		return PDL_WANT_WRITE;
	if (se == SSL_ERROR_ZERO_RETURN)
		snprintf(es, sizeof es, "server closed the connection");
	else
		ssl_errstr(es, sizeof es);
	if (*op == 'r' && (h->ready || h->rbuf.len > h->rpos + h->consume)) {
		/* frames that arrived before the end (a last ERROR, the rest of a
		 * delta) are still delivered; the end is reported after them */
		h->rx_eof = 1;
		snprintf(h->rx_err, sizeof h->rx_err, "%s", es);
		return PDL_EOF;
	}
	if (se == SSL_ERROR_ZERO_RETURN)
		return conn_lost(h, es);
	if (se == SSL_ERROR_SSL && !h->ready && !eof) {
		/* a TLS alert before HELLO_OK: rejected certificate, wrong CA... */
		drop(h);
		return pdl_fail(h, PDELTA_E_TLS, 0, "TLS %s with %s failed: %s", op, h->peer, es);
	}
	return conn_lost(h, es);
}

static int tls_read_some(pdelta *h)
{
	pd_buf *b = &h->rbuf;
	size_t got;
	int ret;

	if (h->rpos && b->alloc - b->len < PDL_READ_SLACK) {
		memmove(b->data, b->data + h->rpos, b->len - h->rpos);
		b->len -= h->rpos;
		h->rpos = 0;
	}
	if (pd_buf_reserve(b, PDL_READ_SLACK, NULL) != PD_OK &&
	    pd_buf_reserve(b, 1, NULL) != PD_OK)
		return PDL_FULL;
	ERR_clear_error();
	errno = 0;
	ret = SSL_read_ex(h->ssl, b->data + b->len, b->alloc - b->len, &got);
	if (ret == 1) {
		b->len += got;
		h->last_rx_ms = pdl_now_ms();
		h->read_wants_write = 0;
		return PDELTA_OK;
	}
	ret = ssl_failure(h, ret, "read");
	h->read_wants_write = ret == PDL_WANT_WRITE;
	return ret;
}

static int tls_write_some(pdelta *h)
{
	size_t n;
	int ret;

	ERR_clear_error();
	errno = 0;
	ret = SSL_write_ex(h->ssl, h->wbuf.data + h->woff, h->wbuf.len - h->woff, &n);
	if (ret == 1) {
		h->woff += n;
		if (h->woff == h->wbuf.len) {
			pd_buf_reset(&h->wbuf);
			h->woff = 0;
		}
		h->last_tx_ms = pdl_now_ms();
		return PDELTA_OK;
	}
	return ssl_failure(h, ret, "write");
}

static int rbuf_has_room(const pdelta *h)
{
	return !h->rx_eof && h->rbuf.len - h->rpos < h->rbuf.cap - PDL_READ_SLACK / 2;
}

/* Reads everything OpenSSL and the socket have now (never blocks). */
static int read_available(pdelta *h)
{
	int rc;

	while (h->ssl && rbuf_has_room(h)) {
		rc = tls_read_some(h);
		if (rc == PDL_WANT_READ || rc == PDL_WANT_WRITE || rc == PDL_FULL || rc == PDL_EOF)
			return PDELTA_OK;
		if (rc)
			return rc;
	}
	return PDELTA_OK;
}

/* One round of I/O: waits until deadline for the socket, then writes what
 * is queued and reads what has arrived. PDL_TIMEDOUT if nothing happened. */
static int pump(pdelta *h, uint64_t deadline)
{
	struct pollfd p = {h->fd, 0, 0};
	uint64_t now = pdl_now_ms();
	int n, rc, want_write = h->woff < h->wbuf.len;

	if (SSL_pending(h->ssl) > 0 && rbuf_has_room(h))
		return read_available(h);
	if (h->rx_eof && !want_write)
		return PDL_EOF; /* nothing more will come */
	if (rbuf_has_room(h))
		p.events |= POLLIN;
	if (want_write || h->read_wants_write)
		p.events |= POLLOUT;
	n = poll(&p, 1, deadline > now ? (int)(deadline - now) : 0);
	if (n < 0)
		return errno == EINTR ? PDELTA_OK : conn_lost(h, strerror(errno));
	if (n == 0)
		return PDL_TIMEDOUT;
	if (want_write && (p.revents & (POLLOUT | POLLERR | POLLHUP))) {
		rc = tls_write_some(h);
		if (rc > 0)
			return rc;
	}
	if (h->ssl && (p.revents & (POLLIN | POLLERR | POLLHUP) ||
		       (h->read_wants_write && (p.revents & POLLOUT))))
		return read_available(h);
	return PDELTA_OK;
}

int pdl_flush(pdelta *h)
{
	uint64_t last = pdl_now_ms();

	while (h->ssl && h->woff < h->wbuf.len) {
		size_t before = h->woff;
		int rc = pump(h, last + h->o.io_timeout_ms);
		if (rc > 0)
			return rc;
		if (h->woff != before || h->wbuf.len == 0)
			last = pdl_now_ms();
		else if (pdl_now_ms() >= last + h->o.io_timeout_ms) {
			drop(h);
			return pdl_fail(h, PDELTA_E_TIMEOUT, 1,
					"writing to %s made no progress for %u ms", h->peer,
					h->o.io_timeout_ms);
		}
	}
	if (!h->ssl)
		return h->err.code ? h->err.code : conn_lost(h, "closed");
	return PDELTA_OK;
}

int pdl_send_msg(pdelta *h, const pd_msg *m)
{
	pd_err e = {0, ""};
	int rc = pd_msg_encode(&h->wbuf, m, &e);

	if (rc)
		return pdl_fail(h, rc == PD_E_NOMEM ? PDELTA_E_NOMEM : PDELTA_E_ARG,
				rc == PD_E_NOMEM, "%s", e.msg);
	return PDELTA_OK;
}

uint32_t pdl_new_id(pdelta *h)
{
	if (++h->next_id == 0)
		h->next_id = 1;
	return h->next_id;
}

/* ---- frames in ---------------------------------------------------------------------------- */

static void consume(pdelta *h)
{
	h->rpos += h->consume;
	h->consume = 0;
	if (h->rpos == h->rbuf.len) {
		h->rpos = 0;
		pd_buf_reset(&h->rbuf);
	}
}

/* Connection-level frames; returns 1 when handled, 0 to hand m to the
 * caller, or an error. */
static int handle_conn_frame(pdelta *h, const pd_msg *m)
{
	pd_msg pong;

	if (!(pd_frame_type_senders(m->type) & PD_SIDE_SERVER))
		return pdl_proto_violation(h, "sent a %s frame", pd_frame_type_name(m->type));
	switch (m->type) {
	case PD_FT_PING:
		if (!h->ready)
			return pdl_proto_violation(h, "%s before HELLO_OK", "PING");
		memset(&pong, 0, sizeof pong);
		pong.type = PD_FT_PONG;
		pong.u.ping.opaque = m->u.ping.opaque;
		return pdl_send_msg(h, &pong) ? h->err.code : 1;
	case PD_FT_PONG:
		h->ping_out = 0;
		return 1;
	case PD_FT_GOODBYE:
		if (!h->ready)
			return pdl_proto_violation(h, "%s before HELLO_OK", "GOODBYE");
		h->draining = 1;
		if (m->u.goodbye.reason == PD_BYE_SHUTDOWN)
			h->bye_shutdown = 1;
		return 1;
	case PD_FT_ERROR:
		if (m->request_id != 0)
			return 0;
		pdl_fail_server(h, &m->u.error);
		drop(h); /* the server closes after a connection error */
		return h->err.code;
	case PD_FT_HELLO_OK:
		return h->ready ? pdl_proto_violation(h, "a second %s", "HELLO_OK") : 0;
	default:
		return h->ready ? 0 : pdl_proto_violation(h, "%s before HELLO_OK", pd_frame_type_name(m->type));
	}
}

/* The next complete frame in the read buffer, PD_FRAME_NEED_MORE, or an error. */
static int decode_buffered(pdelta *h, pd_msg *m)
{
	uint32_t lim = h->ready ? PDL_MAX_FRAME : PD_PREAUTH_MAX_PAYLOAD;
	pd_err e = {0, ""};
	size_t used = 0;
	int rc;

	rc = pd_frame_decode(h->rbuf.data + h->rpos, h->rbuf.len - h->rpos, lim, m, &used, &e);
	if (rc == PD_FRAME_NEED_MORE)
		return rc;
	if (rc)
		return pdl_proto_violation(h, "undecodable frame: %s", e.msg);
	h->consume = used;
	return PDELTA_OK;
}

/* Keepalive while waiting: PING when we were silent too long, give up on
 * an unanswered one. */
static int keepalive(pdelta *h, uint64_t now)
{
	pd_msg ping;

	if (!h->ready || !h->keepalive_ms)
		return PDELTA_OK;
	if (h->ping_out && now - h->ping_sent_ms > 2ull * h->keepalive_ms)
		return conn_lost(h, "PING not answered");
	if (!h->ping_out && now - h->last_tx_ms >= h->keepalive_ms) {
		memset(&ping, 0, sizeof ping);
		ping.type = PD_FT_PING;
		ping.u.ping.opaque = now;
		if (pdl_send_msg(h, &ping))
			return h->err.code;
		h->ping_out = 1;
		h->ping_sent_ms = now;
		h->last_tx_ms = now;
	}
	return PDELTA_OK;
}

static uint64_t next_wakeup(const pdelta *h, uint64_t deadline)
{
	uint64_t t;

	if (!h->ready || !h->keepalive_ms)
		return deadline;
	t = h->ping_out ? h->ping_sent_ms + 2ull * h->keepalive_ms + 1 : h->last_tx_ms + h->keepalive_ms;
	return t < deadline ? t : deadline;
}

int pdl_next_frame(pdelta *h, int wait, pd_msg *m)
{
	uint64_t start = pdl_now_ms(), deadline;
	int rc, tried_read = 0;

	for (;;) {
		if (!h->ssl)
			return h->err.code ? h->err.code : conn_lost(h, "not connected");
		consume(h);
		rc = decode_buffered(h, m);
		if (rc == PDELTA_OK) {
			rc = handle_conn_frame(h, m);
			if (rc == 0)
				return PDELTA_OK;
			if (rc != 1)
				return rc;
			continue;
		}
		if (rc != PD_FRAME_NEED_MORE)
			return rc;
		if (h->rx_eof)
			return conn_lost(h, h->rx_err);
		if (!wait) {
			if (tried_read)
				return PD_FRAME_NEED_MORE;
			tried_read = 1;
			if ((rc = read_available(h)) != PDELTA_OK)
				return rc;
			continue;
		}
		/* PONGs prove the peer alive but do not extend a request's wait */
		deadline = start + h->o.io_timeout_ms;
		if (pdl_now_ms() >= deadline) {
			drop(h);
			return pdl_fail(h, PDELTA_E_TIMEOUT, 1, "no answer from %s for %u ms",
					h->peer, h->o.io_timeout_ms);
		}
		if ((rc = keepalive(h, pdl_now_ms())) != PDELTA_OK)
			return rc;
		rc = pump(h, next_wakeup(h, deadline));
		if (rc > 0)
			return rc;
	}
}

/* ---- connecting ------------------------------------------------------------------------------ */

static int wait_fd(int fd, short ev, uint64_t deadline)
{
	struct pollfd p = {fd, ev, 0};
	uint64_t now;
	int n;

	do {
		now = pdl_now_ms();
		if (now >= deadline)
			return 0;
		n = poll(&p, 1, (int)(deadline - now));
	} while (n < 0 && errno == EINTR);
	return n > 0;
}

static int try_address(const struct addrinfo *ai, uint64_t deadline, int *err)
{
	int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
	int one = 1, soerr = 0;
	socklen_t sl = sizeof soerr;

	if (fd < 0) {
		*err = errno;
		return -1;
	}
	if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
		if (errno != EINPROGRESS) {
			*err = errno;
			close(fd);
			return -1;
		}
		if (!wait_fd(fd, POLLOUT, deadline)) {
			*err = ETIMEDOUT;
			close(fd);
			return -1;
		}
		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0 || soerr) {
			*err = soerr ? soerr : errno;
			close(fd);
			return -1;
		}
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	return fd;
}

static int tcp_connect(pdelta *h, uint64_t deadline)
{
	struct addrinfo hints, *res = NULL, *ai;
	int gai, err = 0;

	memset(&hints, 0, sizeof hints);
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	gai = getaddrinfo(h->host, h->port, &hints, &res);
	if (gai != 0)
		return pdl_fail(h, PDELTA_E_IO, 1, "resolving %s: %s", h->host, gai_strerror(gai));
	for (ai = res; ai && h->fd < 0; ai = ai->ai_next)
		h->fd = try_address(ai, deadline, &err);
	freeaddrinfo(res);
	if (h->fd < 0)
		return pdl_fail(h, err == ETIMEDOUT ? PDELTA_E_TIMEOUT : PDELTA_E_IO, 1,
				"connecting to %s: %s", h->peer, strerror(err));
	return PDELTA_OK;
}

static int is_ip(const char *s)
{
	unsigned char buf[16];
	return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

static int tls_verify_setup(pdelta *h)
{
	const char *name = h->verify_host ? h->verify_host : h->host;

	SSL_set_hostflags(h->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
	if (is_ip(name)) {
		if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(h->ssl), name) != 1)
			return pdl_fail(h, PDELTA_E_TLS, 0, "cannot verify IP %s", name);
		return PDELTA_OK;
	}
	if (SSL_set_tlsext_host_name(h->ssl, name) != 1 || SSL_set1_host(h->ssl, name) != 1)
		return pdl_fail(h, PDELTA_E_TLS, 0, "cannot set the host name %s", name);
	return PDELTA_OK;
}

static int tls_handshake(pdelta *h, uint64_t deadline)
{
	char es[256];
	long vr;
	int ret, se, rc, eof;

	h->ssl = SSL_new(h->ssl_ctx);
	if (!h->ssl || SSL_set_fd(h->ssl, h->fd) != 1)
		return pdl_fail(h, PDELTA_E_NOMEM, 1, "SSL_new failed");
	if ((rc = tls_verify_setup(h)))
		return rc;
	for (;;) {
		ERR_clear_error();
		errno = 0;
		ret = SSL_connect(h->ssl);
		if (ret == 1)
			return PDELTA_OK;
		se = SSL_get_error(h->ssl, ret);
		if (se == SSL_ERROR_WANT_READ || se == SSL_ERROR_WANT_WRITE) {
			if (!wait_fd(h->fd, se == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline))
				return pdl_fail(h, PDELTA_E_TIMEOUT, 1, "TLS handshake with %s timed out",
						h->peer);
			continue;
		}
		vr = SSL_get_verify_result(h->ssl);
		/* OpenSSL 3 reports a peer that vanished mid-handshake (e.g. a server
		 * killed and restarting) as an SSL error; it is a transport error. */
		eof = ERR_GET_REASON(ERR_peek_error()) == SSL_R_UNEXPECTED_EOF_WHILE_READING;
		ssl_errstr(es, sizeof es);
		if (vr != X509_V_OK)
			return pdl_fail(h, PDELTA_E_TLS, 0, "TLS with %s: certificate verification failed: %s",
					h->peer, X509_verify_cert_error_string(vr));
		if (se == SSL_ERROR_SSL && !eof)
			return pdl_fail(h, PDELTA_E_TLS, 0, "TLS handshake with %s failed: %s", h->peer, es);
		return pdl_fail(h, PDELTA_E_IO, 1, "TLS handshake with %s failed: %s", h->peer, es);
	}
}

static int send_hello(pdelta *h)
{
	pd_msg m;

	memset(&m, 0, sizeof m);
	m.type = PD_FT_HELLO;
	m.u.hello.min_version = PD_PROTO_VERSION_MIN;
	m.u.hello.max_version = PD_PROTO_VERSION;
	m.u.hello.max_frame = PDL_MAX_FRAME;
	m.u.hello.client_name = pd_str_c(h->client_name);
	m.u.hello.token = pd_str_c(h->token);
	if (pdl_send_msg(h, &m))
		return h->err.code;
	return pdl_flush(h);
}

static void copy_str(char *dst, size_t cap, const pd_str *s)
{
	size_t n = s->len < cap - 1 ? s->len : cap - 1;
	memcpy(dst, s->p, n);
	dst[n] = 0;
}

static int take_hello_ok(pdelta *h, const pd_msg *m)
{
	const pd_msg_hello_ok *ok = &m->u.hello_ok;

	if (m->type != PD_FT_HELLO_OK)
		return pdl_proto_violation(h, "%s instead of HELLO_OK", pd_frame_type_name(m->type));
	if (ok->version < PD_PROTO_VERSION_MIN || ok->version > PD_PROTO_VERSION)
		return pdl_proto_violation(h, "chose version %u, outside %d..%d", ok->version,
					   PD_PROTO_VERSION_MIN, PD_PROTO_VERSION);
	if (ok->role != PD_ROLE_AGENT && ok->role != PD_ROLE_ADMIN)
		return pdl_proto_violation(h, "announced an unknown %s", "role");
	h->version = ok->version;
	h->role = ok->role;
	h->srv_max_frame = ok->max_frame;
	h->max_inflight = ok->max_inflight;
	h->max_profile_bytes = ok->max_profile_bytes;
	h->keepalive_ms = ok->keepalive_ms;
	h->idle_timeout_ms = ok->idle_timeout_ms;
	copy_str(h->tenant, sizeof h->tenant, &ok->tenant);
	copy_str(h->server_name, sizeof h->server_name, &ok->server_name);
	h->ready = 1;
	return PDELTA_OK;
}

int pdl_conn_open(pdelta *h)
{
	uint64_t deadline = pdl_now_ms() + h->o.connect_timeout_ms;
	unsigned saved = h->o.io_timeout_ms;
	pd_msg m;
	int rc;

	drop(h);
	h->bye_shutdown = 0;
	if ((rc = tcp_connect(h, deadline)) || (rc = tls_handshake(h, deadline)))
		goto fail;
	h->last_tx_ms = h->last_rx_ms = pdl_now_ms();
	/* the HELLO exchange is bounded by the connect deadline */
	h->o.io_timeout_ms = h->o.connect_timeout_ms;
	rc = send_hello(h);
	if (!rc)
		rc = pdl_next_frame(h, 1, &m);
	h->o.io_timeout_ms = saved;
	if (!rc)
		rc = take_hello_ok(h, &m);
	if (rc)
		goto fail;
	h->stats.connects++;
	return PDELTA_OK;
fail:
	drop(h);
	return rc;
}

/* Reads what the server sent while we were idle (PING, GOODBYE, a close). */
static void refresh(pdelta *h)
{
	pd_msg m;
	int rc;

	while (h->ssl) {
		rc = pdl_next_frame(h, 0, &m);
		if (rc == PD_FRAME_NEED_MORE)
			break;
		if (rc)
			return; /* connection gone: error recorded, reconnect */
		pdl_proto_violation(h, "sent %s while no request was open", pd_frame_type_name(m.type));
		return;
	}
	if (h->ssl && h->woff < h->wbuf.len)
		(void)pdl_flush(h); /* PONGs */
}

int pdl_conn_usable(pdelta *h)
{
	uint64_t idle_margin;

	if (!h->ssl || !h->ready)
		return 0;
	refresh(h);
	if (!h->ssl || h->draining)
		return 0;
	idle_margin = h->idle_timeout_ms / 4 < 5000 ? h->idle_timeout_ms / 4 : 5000;
	if (h->idle_timeout_ms && pdl_now_ms() - h->last_rx_ms + idle_margin >= h->idle_timeout_ms)
		return 0;
	return 1;
}

int pdl_conn_here(pdelta *h)
{
	if (pdl_conn_usable(h))
		return PDELTA_OK;
	if (h->ssl)
		close_with(h, PD_BYE_NORMAL, "");
	return pdl_conn_open(h);
}


/* ---- SIGPIPE ----------------------------------------------------------------- */

void pdl_sigpipe_block(pdl_sigpipe *g)
{
	sigset_t set, pend;

	sigemptyset(&set);
	sigaddset(&set, SIGPIPE);
	sigemptyset(&pend);
	sigpending(&pend);
	g->was_pending = sigismember(&pend, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &set, &g->old);
}

void pdl_sigpipe_restore(const pdl_sigpipe *g)
{
	sigset_t set, pend;

	sigemptyset(&set);
	sigaddset(&set, SIGPIPE);
	if (!g->was_pending) {
		/* Swallow a SIGPIPE our own write raised, so it is never delivered. */
		struct timespec zero = {0, 0};
		sigemptyset(&pend);
		sigpending(&pend);
		if (sigismember(&pend, SIGPIPE))
			sigtimedwait(&set, NULL, &zero);
	}
	pthread_sigmask(SIG_SETMASK, &g->old, NULL);
}

/* ---- fork ---------------------------------------------------------------------- */

void pdl_conn_forget(pdelta *h)
{
	/* A child: the connection belongs to the parent. Free our copy of the
	 * SSL object without SSL_shutdown (which would write close_notify into
	 * the parent's session) and close our copy of the descriptor (never
	 * shutdown(2), which would end the parent's TCP connection too). */
	if (h->ssl) {
		SSL_free(h->ssl);
		h->ssl = NULL;
	}
	if (h->fd >= 0) {
		close(h->fd);
		h->fd = -1;
	}
	h->ready = 0;
	pd_buf_reset(&h->wbuf);
	pd_buf_reset(&h->rbuf);
	h->woff = h->rpos = h->consume = 0;
}
