/*
 * client_mock: libpdelta against a scripted mock pdeltad, for the paths a
 * real server rarely takes: a connection lost in the middle of a delta (the
 * retry resumes after the bytes already read), a different second answer
 * (PDELTA_RESTART), a body failing its CRC (GOODBYE PROTOCOL, retry), a
 * retryable busy/OVERLOADED error with its suggested delay, an early error
 * during the upload (CANCEL), a stale sequence with a handle-chosen seq, PING
 * and GOODBYE SHUTDOWN, protocol violations, a peer that resets the
 * connection while we write (no SIGPIPE death), a failed HELLO, timeouts.
 *
 *   client_mock CA.pem SERVER.pem SERVER.key
 *
 * Each scenario forks a mock server (a child process speaking the protocol
 * through the frame codec, common/pd_frame.h, over OpenSSL) on a listening
 * socket made by the parent; the parent runs libpdelta and checks what it
 * returns, the child checks what the client sent (e.g. that a retry carries
 * the same seq and content hash) and reports through its exit status.
 * Prints "N passed, N failed".
 */
#include <errno.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "pd_frame.h"
#include "pd_crc.h"
#include "pdelta.h"
#include "../unit/tharness.h"

static const char *ca_path, *cert_path, *key_path;

/* ---- the mock server (child process) ---------------------------------------------- */

static int mock_fail;
#define MOCK_CHECK(cond, what)                                              \
	do {                                                                \
		if (!(cond)) {                                              \
			mock_fail++;                                        \
			fprintf(stderr, "mock: check failed: %s (%s)\n", what, #cond); \
		}                                                           \
	} while (0)

typedef struct mconn {
	SSL *ssl;
	int fd;
	uint8_t *buf; /* one frame */
	pd_msg m;
	uint32_t last_id;
	uint64_t seq, inc;
	int version;     /* what HELLO_OK chose */
	uint8_t hash[16]; /* SHA-256/16 of the upload, whatever the version sent */
	uint64_t total;
	int cancelled, goodbye_reason;
} mconn;

static int mread(mconn *c, void *p, size_t n)
{
	size_t got = 0, k;

	while (got < n) {
		if (SSL_read_ex(c->ssl, (uint8_t *)p + got, n - got, &k) != 1)
			return -1;
		got += k;
	}
	return 0;
}

/* Next frame from the client; PINGs are answered. 0 or -1 at EOF. */
static int mrecv(mconn *c)
{
	pd_frame_hdr h;
	pd_err e;

	for (;;) {
		if (mread(c, c->buf, PD_FRAME_HDR_LEN))
			return -1;
		if (pd_frame_hdr_decode(c->buf, PD_FRAME_HDR_LEN, &h, PD_FRAME_MAX_ABS, &e) ||
		    mread(c, c->buf + PD_FRAME_HDR_LEN, h.len) ||
		    pd_msg_decode(&h, c->buf + PD_FRAME_HDR_LEN, &c->m, &e)) {
			fprintf(stderr, "mock: bad frame from the client\n");
			mock_fail++;
			return -1;
		}
		if (c->m.type == PD_FT_GOODBYE)
			c->goodbye_reason = c->m.u.goodbye.reason;
		if (c->m.type != PD_FT_PING)
			return 0;
		{
			pd_msg pong;
			pd_buf b;
			memset(&pong, 0, sizeof pong);
			pong.type = PD_FT_PONG;
			pong.u.ping.opaque = c->m.u.ping.opaque;
			pd_buf_init(&b, 0);
			pd_msg_encode(&b, &pong, NULL);
			SSL_write(c->ssl, b.data, (int)b.len);
			pd_buf_free(&b);
		}
	}
}

static void msend(mconn *c, const pd_msg *m)
{
	pd_buf b;
	pd_err e;

	pd_buf_init(&b, 0);
	if (pd_msg_encode(&b, m, &e)) {
		fprintf(stderr, "mock: encode: %s\n", e.msg);
		mock_fail++;
	} else {
		SSL_write(c->ssl, b.data, (int)b.len);
	}
	pd_buf_free(&b);
}

static void msend_data(mconn *c, uint32_t id, const uint8_t *p, size_t n)
{
	pd_frame_hdr h = {(uint32_t)n, PD_FT_RESULT_DATA, 0, 0, id};
	uint8_t hdr[PD_FRAME_HDR_LEN];

	pd_frame_hdr_encode(hdr, &h);
	SSL_write(c->ssl, hdr, sizeof hdr);
	SSL_write(c->ssl, p, (int)n);
}

static void send_error(mconn *c, uint32_t id, int code, int retryable, int detail, uint64_t value)
{
	pd_msg m;

	memset(&m, 0, sizeof m);
	m.type = PD_FT_ERROR;
	m.request_id = id;
	m.u.error.code = (uint16_t)code;
	m.u.error.retryable = (uint8_t)retryable;
	m.u.error.detail = (uint8_t)detail;
	m.u.error.value = value;
	m.u.error.message = pd_str_c("mock error");
	msend(c, &m);
}

static void send_hello_ok(mconn *c, uint16_t version, uint32_t keepalive)
{
	pd_msg m;

	memset(&m, 0, sizeof m);
	m.type = PD_FT_HELLO_OK;
	m.u.hello_ok.version = version;
	c->version = version;
	m.u.hello_ok.role = PD_ROLE_AGENT;
	m.u.hello_ok.max_frame = 1u << 20;
	m.u.hello_ok.max_inflight = 64;
	m.u.hello_ok.max_profile_bytes = 64u << 20;
	m.u.hello_ok.keepalive_ms = keepalive;
	m.u.hello_ok.idle_timeout_ms = keepalive * 4;
	m.u.hello_ok.request_timeout_ms = 60000;
	m.u.hello_ok.tenant = pd_str_c("mock");
	m.u.hello_ok.server_name = pd_str_c("mock");
	if (version > PD_PROTO_VERSION) { /* not encodable: write it by hand */
		pd_buf b;
		pd_buf_init(&b, 0);
		m.u.hello_ok.version = 1;
		pd_msg_encode(&b, &m, NULL);
		b.data[PD_FRAME_HDR_LEN + 1] = (uint8_t)version;
		SSL_write(c->ssl, b.data, (int)b.len);
		pd_buf_free(&b);
		return;
	}
	msend(c, &m);
}

/* Reads one upload: DELTA_BEGIN, DATA*, DATA_END (or CANCEL). 0 ok. */
static int recv_upload(mconn *c, int stop_after_begin)
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	uint8_t dg[EVP_MAX_MD_SIZE], cr[16];
	pd_crc128 crc;
	int rc = -1;

	c->cancelled = 0;
	if (mrecv(c) || c->m.type != PD_FT_DELTA_BEGIN)
		goto out;
	c->last_id = c->m.request_id;
	c->seq = c->m.u.begin.seq;
	c->inc = c->m.u.begin.incarnation;
	c->total = 0;
	if (stop_after_begin) {
		rc = 0;
		goto out;
	}
	EVP_DigestInit_ex(md, EVP_sha256(), NULL);
	crc = pd_crc128_init();
	for (;;) {
		if (mrecv(c))
			goto out;
		if (c->m.type == PD_FT_DATA) {
			EVP_DigestUpdate(md, c->m.u.data.p, c->m.u.data.len);
			pd_crc128_update(&crc, c->m.u.data.p, c->m.u.data.len);
			c->total += c->m.u.data.len;
			continue;
		}
		if (c->m.type == PD_FT_CANCEL) {
			c->cancelled = 1;
			rc = 0;
			goto out;
		}
		if (c->m.type != PD_FT_DATA_END)
			goto out;
		EVP_DigestFinal_ex(md, dg, NULL);
		pd_crc128_final(&crc, cr);
		if (c->version >= 2)
			MOCK_CHECK(memcmp(cr, c->m.u.data_end.hash, 16) == 0,
				   "DATA_END hash = CRC-128 of the data (protocol 2)");
		else
			MOCK_CHECK(memcmp(dg, c->m.u.data_end.hash, 16) == 0,
				   "DATA_END hash = SHA-256 of the data (protocol 1)");
		MOCK_CHECK(c->m.u.data_end.total_bytes == c->total, "DATA_END total");
		memcpy(c->hash, dg, 16);
		rc = 0;
		goto out;
	}
out:
	EVP_MD_CTX_free(md);
	return rc;
}

typedef struct answer {
	int status, reason, orig;
	uint64_t in, out;
	const uint8_t *body;
	size_t len;
	size_t stop_after; /* close the connection after this many body bytes (0 = never) */
	int bad_crc;
} answer;

static int send_answer(mconn *c, const answer *a)
{
	pd_msg m;
	size_t off = 0;

	memset(&m, 0, sizeof m);
	m.type = PD_FT_RESULT;
	m.request_id = c->last_id;
	m.u.result.status = (uint8_t)a->status;
	m.u.result.reason = (uint8_t)a->reason;
	m.u.result.orig_status = (uint8_t)(a->orig ? a->orig : a->status);
	m.u.result.seq = c->seq;
	m.u.result.samples_in = a->in;
	m.u.result.samples_out = a->out;
	msend(c, &m);
	while (off < a->len) {
		size_t n = a->len - off < 65536 ? a->len - off : 65536;
		msend_data(c, c->last_id, a->body + off, n);
		off += n;
		if (a->stop_after && off >= a->stop_after)
			return -1; /* the caller drops the connection */
	}
	memset(&m, 0, sizeof m);
	m.type = PD_FT_RESULT_END;
	m.request_id = c->last_id;
	m.u.result_end.total_bytes = a->len;
	m.u.result_end.crc32 = (uint32_t)crc32(0, a->body, (uInt)a->len) ^ (a->bad_crc ? 1u : 0u);
	msend(c, &m);
	return 0;
}

typedef int (*scenario_fn)(mconn *c, int conn_no);

/* Accepts connections and runs the scenario on each until it returns 1
 * (done) or the client goes away. */
static int mock_main(int lfd, scenario_fn fn)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	int conn_no = 0, done = 0;

	signal(SIGPIPE, SIG_IGN);
	alarm(20);
	if (SSL_CTX_use_certificate_chain_file(ctx, cert_path) != 1 ||
	    SSL_CTX_use_PrivateKey_file(ctx, key_path, SSL_FILETYPE_PEM) != 1)
		return 99;
	while (!done) {
		mconn c;
		int fd = accept(lfd, NULL, NULL);
		if (fd < 0)
			return 98;
		memset(&c, 0, sizeof c);
		c.fd = fd;
		c.buf = malloc(PD_FRAME_HDR_LEN + PD_FRAME_MAX_ABS);
		c.ssl = SSL_new(ctx);
		SSL_set_fd(c.ssl, fd);
		if (SSL_accept(c.ssl) == 1 && mrecv(&c) == 0 && c.m.type == PD_FT_HELLO)
			done = fn(&c, ++conn_no);
		else
			mock_fail++;
		SSL_free(c.ssl);
		close(fd);
		free(c.buf);
	}
	SSL_CTX_free(ctx);
	return mock_fail;
}

/* Reads until the client says GOODBYE or closes. */
static void drain(mconn *c)
{
	while (mrecv(c) == 0 && c->m.type != PD_FT_GOODBYE)
		;
}

/* ---- scenarios: the server side ---------------------------------------------------------- */

static uint8_t body1[300000], body2[250000];

static void make_bodies(void)
{
	for (size_t i = 0; i < sizeof body1; i++)
		body1[i] = (uint8_t)(i * 7 + (i >> 9));
	for (size_t i = 0; i < sizeof body2; i++)
		body2[i] = (uint8_t)(i * 13 + 5);
}

static uint64_t first_seq;
static uint8_t first_hash[16];

static void remember(mconn *c)
{
	first_seq = c->seq;
	memcpy(first_hash, c->hash, 16);
}

static void check_same_request(mconn *c)
{
	MOCK_CHECK(c->seq == first_seq, "retry has the same seq");
	MOCK_CHECK(memcmp(c->hash, first_hash, 16) == 0, "retry has the same content hash");
}

/* Connection n of a client that has to repeat its request: hello with protocol version, one
 * upload; the first connection's is remembered and answered with first, a later one must be
 * the same request and is answered with again. -1 when the upload did not come. */
static int answer_then_retry(mconn *c, int n, int version, const answer *first,
			     const answer *again)
{
	send_hello_ok(c, (uint16_t)version, 30000);
	if (recv_upload(c, 0))
		return -1;
	if (n == 1) {
		remember(c);
		send_answer(c, first);
	} else {
		check_same_request(c);
		send_answer(c, again);
	}
	return 0;
}

/* First connection: the answer breaks off after two chunks (the server
 * "dies"); the retry gets again. v1, v2: the protocol version each
 * connection chooses (each attempt must carry that version's content hash). */
static int die_then(mconn *c, int n, int v1, int v2, const answer *again)
{
	answer a = {PD_WIRE_STATUS_DELTA, 0, 0, 10, 5, body1, sizeof body1, 131072, 0};

	if (answer_then_retry(c, n, n == 1 ? v1 : v2, &a, again))
		return 1;
	if (n == 1)
		return 0;
	drain(c);
	return 1;
}

static int s_resume(mconn *c, int n)
{
	/* the retry is a DUPLICATE of that DELTA; protocol 2 (CRC-128) on both connections */
	answer b = {PD_WIRE_STATUS_DUPLICATE, 0, PD_WIRE_STATUS_DELTA, 10, 5, body1, sizeof body1, 0, 0};

	return die_then(c, n, 2, 2, &b);
}

/* The retry gets another answer. */
static int restart_versions(mconn *c, int n, int v1, int v2)
{
	answer b = {PD_WIRE_STATUS_BASELINE, PD_WIRE_REASON_EVICTED, 0, 10, 9, body2, sizeof body2, 0, 0};

	return die_then(c, n, v1, v2, &b);
}

static int s_restart(mconn *c, int n) { return restart_versions(c, n, 1, 1); }

/* Protocol 2 first, then a protocol-1 server. */
static int s_downgrade(mconn *c, int n) { return restart_versions(c, n, 2, 1); }

/* Second answer has the same RESULT but other bytes: the prefix check fails. */
static int s_prefix(mconn *c, int n)
{
	answer a = {PD_WIRE_STATUS_DELTA, 0, 0, 10, 5, body1, sizeof body1, 131072, 0};
	answer b = {PD_WIRE_STATUS_DUPLICATE, 0, PD_WIRE_STATUS_DELTA, 10, 5, body2, sizeof body2, 0, 0};

	if (answer_then_retry(c, n, 1, &a, &b))
		return 1;
	if (n == 1)
		return 0;
	if (n == 2) { /* the client closes after the prefix mismatch and asks again */
		drain(c);
		return 0;
	}
	drain(c);
	return 1;
}

static int s_badcrc(mconn *c, int n)
{
	answer a = {PD_WIRE_STATUS_DELTA, 0, 0, 3, 2, body2, 1000, 0, n == 1};

	if (answer_then_retry(c, n, 1, &a, &a))
		return 1;
	if (n == 1) {
		drain(c);
		MOCK_CHECK(c->goodbye_reason == PD_BYE_PROTOCOL, "GOODBYE PROTOCOL after a bad CRC");
		return 0;
	}
	drain(c);
	return 1;
}

static int s_busy(mconn *c, int n)
{
	answer a = {PD_WIRE_STATUS_DELTA, 0, 0, 3, 2, body2, 1000, 0, 0};

	send_hello_ok(c, 1, 30000);
	if (recv_upload(c, 0))
		return 1;
	remember(c);
	send_error(c, c->last_id, PD_E_BUSY, 1, PD_DETAIL_OVERLOADED, 300);
	if (recv_upload(c, 0)) /* same connection */
		return 1;
	check_same_request(c);
	send_answer(c, &a);
	drain(c);
	return 1;
}

static int s_early(mconn *c, int n)
{
	send_hello_ok(c, 1, 30000);
	if (recv_upload(c, 1))
		return 1;
	send_error(c, c->last_id, PD_E_MALFORMED, 0, PD_DETAIL_NONE, 0);
	/* the client stops and closes its half with CANCEL */
	while (mrecv(c) == 0 && c->m.type == PD_FT_DATA)
		;
	MOCK_CHECK(c->m.type == PD_FT_CANCEL, "CANCEL after an early ERROR");
	drain(c);
	return 1;
}

static int s_stale(mconn *c, int n)
{
	answer a = {PD_WIRE_STATUS_DELTA, 0, 0, 3, 2, body2, 1000, 0, 0};

	send_hello_ok(c, 1, 30000);
	if (recv_upload(c, 0))
		return 1;
	MOCK_CHECK(c->seq == 1, "first seq is 1");
	send_error(c, c->last_id, PD_E_SEQ, 0, PD_DETAIL_SEQ_STALE, 41);
	if (recv_upload(c, 0))
		return 1;
	MOCK_CHECK(c->seq == 42, "resent with seq 42 after SEQ_STALE(41)");
	send_answer(c, &a);
	drain(c);
	return 1;
}

static int s_ping_goodbye(mconn *c, int n)
{
	answer a = {PD_WIRE_STATUS_DELTA, 0, 0, 3, 2, body2, 5000, 0, 0};
	pd_msg m;

	send_hello_ok(c, 1, 30000);
	if (recv_upload(c, 0))
		return 1;
	memset(&m, 0, sizeof m);
	m.type = PD_FT_PING;
	m.u.ping.opaque = 0xfeedbeefull;
	msend(c, &m);
	if (n == 1) {
		MOCK_CHECK(mrecv(c) == 0 && c->m.type == PD_FT_PONG && c->m.u.ping.opaque == 0xfeedbeefull,
			   "PONG echoes the PING");
		send_answer(c, &a);
		memset(&m, 0, sizeof m);
		m.type = PD_FT_GOODBYE;
		m.u.goodbye.reason = PD_BYE_SHUTDOWN;
		m.u.goodbye.message = pd_str_c("draining");
		msend(c, &m);
		/* a request crossing our GOODBYE is refused, retryable (PROTOCOL.md §10) */
		while (mrecv(c) == 0 && c->m.type != PD_FT_GOODBYE)
			if (c->m.type == PD_FT_DELTA_BEGIN)
				send_error(c, c->m.request_id, PD_E_BUSY, 1, PD_DETAIL_SHUTTING_DOWN, 0);
		return 0;
	}
	MOCK_CHECK(mrecv(c) == 0 && c->m.type == PD_FT_PONG, "PONG on the second connection");
	send_answer(c, &a);
	drain(c);
	return 1;
}

static int s_violation(mconn *c, int n)
{
	send_hello_ok(c, 1, 30000);
	if (recv_upload(c, 0))
		return 1;
	msend_data(c, c->last_id, body2, 100); /* RESULT_DATA before RESULT */
	drain(c);
	MOCK_CHECK(c->goodbye_reason == PD_BYE_PROTOCOL, "GOODBYE PROTOCOL on a violation");
	return 1;
}

static int s_reset(mconn *c, int n)
{
	struct linger lg = {1, 0};

	send_hello_ok(c, 1, 30000);
	if (recv_upload(c, 1))
		return 1;
	/* RST while the client is still writing its upload */
	setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
	return 1;
}

static int s_auth(mconn *c, int n)
{
	send_error(c, 0, PD_E_AUTH, 0, PD_DETAIL_AUTH_FAILED, 0);
	return 1;
}

static int s_version(mconn *c, int n)
{
	send_hello_ok(c, PD_PROTO_VERSION + 1, 30000);
	drain(c); /* the client closes (no GOODBYE: it never was READY) */
	return 1;
}

static int s_silent(mconn *c, int n)
{
	send_hello_ok(c, 1, 100); /* the client PINGs every 100 ms; we answer, never the request */
	if (recv_upload(c, 0))
		return 1;
	while (mrecv(c) == 0 && c->m.type != PD_FT_GOODBYE)
		;
	return 1;
}

/* ---- the client side ---------------------------------------------------------------- */

static double ms_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

typedef struct run {
	pdelta *h;
	pid_t pid;
	int lfd;
} run;

static int start(run *r, scenario_fn fn, unsigned attempts, uint64_t incarnation)
{
	struct sockaddr_in a;
	socklen_t l = sizeof a;
	pdelta_opts o;
	char srv[64], err[256];

	memset(&a, 0, sizeof a);
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	r->lfd = socket(AF_INET, SOCK_STREAM, 0);
	if (bind(r->lfd, (struct sockaddr *)&a, sizeof a) || listen(r->lfd, 8) ||
	    getsockname(r->lfd, (struct sockaddr *)&a, &l))
		return -1;
	fflush(NULL);
	r->pid = fork();
	if (r->pid == 0)
		_exit(mock_main(r->lfd, fn));
	close(r->lfd);
	snprintf(srv, sizeof srv, "127.0.0.1:%d", ntohs(a.sin_port));
	pdelta_opts_init(&o);
	o.server = srv;
	o.ca_file = ca_path;
	o.token = "mock-token";
	o.max_attempts = attempts;
	o.backoff_base_ms = 10;
	o.backoff_max_ms = 20;
	o.io_timeout_ms = 3000;
	o.incarnation = incarnation;
	return pdelta_new(&o, &r->h, err, sizeof err);
}

static void finish(run *r, const char *name)
{
	int ws = 0;

	pdelta_free(r->h);
	waitpid(r->pid, &ws, 0);
	EXPECT(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "%s: mock server reported %d problem(s)", name,
	       WIFEXITED(ws) ? WEXITSTATUS(ws) : -1);
}

static const char profile[] = "a profile: the mock does not parse it";

static int sink_buf(void *ctx, const void *p, size_t n)
{
	pd_buf *b = ctx;
	if (!p) {
		pd_buf_reset(b);
		b->cap = SIZE_MAX - 1; /* mark: a restart was seen */
		return 0;
	}
	return pd_buf_append(b, p, n, NULL) ? -1 : 0;
}

static int replay_profile(void *ctx, pdelta *h)
{
	return pdelta_feed(h, profile, sizeof profile) ? -1 : 0;
}

static void t_resume(void)
{
	run r;
	pdelta_result res;
	pdelta_stats st;
	pd_buf b;

	if (start(&r, s_resume, 3, 0))
		return;
	pd_buf_init(&b, 0);
	EXPECT(pdelta_begin(r.h, "m", 0, replay_profile, NULL) == 0, "begin");
	pdelta_feed(r.h, profile, sizeof profile);
	EXPECT(pdelta_finish(r.h, &res) == 0 && res.status == PDELTA_DELTA, "resume: finish");
	EXPECT(pdelta_read_all(r.h, sink_buf, &b) == 0, "resume: read_all: %s", pdelta_last_error(r.h));
	EXPECT(b.len == sizeof body1 && memcmp(b.data, body1, b.len) == 0 && b.cap != SIZE_MAX - 1,
	       "resume: the delta is whole and was never restarted (%zu bytes)", b.len);
	pdelta_stats_get(r.h, &st);
	EXPECT(st.resumed == 1 && st.restarts == 0 && st.connects == 2, "resume: stats %llu %llu %llu",
	       (unsigned long long)st.resumed, (unsigned long long)st.restarts,
	       (unsigned long long)st.connects);
	pd_buf_free(&b);
	finish(&r, "resume");
}

static void t_restart(scenario_fn fn, const char *name, uint64_t conns)
{
	run r;
	pdelta_result res;
	pdelta_stats st;
	const void *p;
	size_t n;
	pd_buf b;
	int rc, restarts = 0;

	if (start(&r, fn, 4, 0))
		return;
	pd_buf_init(&b, 0);
	pdelta_begin(r.h, "m", 0, replay_profile, NULL);
	pdelta_feed(r.h, profile, sizeof profile);
	EXPECT(pdelta_finish(r.h, &res) == 0, "%s: finish", name);
	while ((rc = pdelta_read(r.h, &p, &n)) == 0 || rc == PDELTA_RESTART) {
		if (rc == PDELTA_RESTART) {
			restarts++;
			pd_buf_reset(&b);
			continue;
		}
		if (n == 0)
			break;
		pd_buf_append(&b, p, n, NULL);
	}
	EXPECT(rc == 0 && restarts == 1, "%s: rc %d, %d restarts (%s)", name, rc, restarts,
	       pdelta_last_error(r.h));
	EXPECT(b.len == sizeof body2 && memcmp(b.data, body2, b.len) == 0, "%s: the new delta (%zu bytes)",
	       name, b.len);
	pdelta_result_get(r.h, &res);
	pdelta_stats_get(r.h, &st);
	EXPECT(st.restarts == 1 && st.connects == conns, "%s: restarts %llu connects %llu", name,
	       (unsigned long long)st.restarts, (unsigned long long)st.connects);
	if (fn == s_restart)
		EXPECT(res.status == PDELTA_BASELINE && res.reason == PDELTA_REASON_EVICTED &&
			       res.samples_out == 9,
		       "restart: the result is the new answer's (%d %d)", res.status, res.reason);
	pd_buf_free(&b);
	finish(&r, name);
}

static void t_onecall(scenario_fn fn, const char *name, unsigned attempts, uint64_t inc, int want_rc,
		      size_t want_len, unsigned want_attempts, double min_ms)
{
	run r;
	pdelta_result res;
	double t0 = ms_now();
	int rc;

	if (start(&r, fn, attempts, inc))
		return;
	rc = pdelta_delta(r.h, "m", 0, profile, sizeof profile, &res);
	EXPECT(rc == want_rc, "%s: rc %d, expected %d (%s)", name, rc, want_rc, pdelta_last_error(r.h));
	EXPECT(rc || (res.len == want_len && memcmp(res.data, body2, want_len) == 0), "%s: body", name);
	EXPECT(res.attempts == want_attempts, "%s: %u attempts, expected %u", name, res.attempts,
	       want_attempts);
	EXPECT(ms_now() - t0 >= min_ms, "%s: took %.0f ms, expected >= %.0f", name, ms_now() - t0, min_ms);
	pdelta_result_free(&res);
	finish(&r, name);
}

static void t_goodbye(void)
{
	run r;
	pdelta_result res;
	pdelta_stats st;

	if (start(&r, s_ping_goodbye, 2, 0))
		return;
	EXPECT(pdelta_delta(r.h, "m", 0, profile, sizeof profile, &res) == 0, "ping 1: %s",
	       pdelta_last_error(r.h));
	pdelta_result_free(&res);
	EXPECT(pdelta_delta(r.h, "m", 0, profile, sizeof profile, &res) == 0 && res.seq == 2, "ping 2: %s",
	       pdelta_last_error(r.h));
	pdelta_result_free(&res);
	pdelta_stats_get(r.h, &st);
	EXPECT(st.connects == 2 && st.retries <= 1, "GOODBYE SHUTDOWN: new connection for the next request "
	       "(connects %llu, retries %llu)", (unsigned long long)st.connects, (unsigned long long)st.retries);
	finish(&r, "ping+goodbye");
}

/* A large upload of zeros that the mock (scenario fn) cuts short: rc want_rc and, when
 * want_attempts is not 0, that many attempts. SIGPIPE is left at its default here: a write to
 * a reset connection must not kill us. */
static void t_cut_upload(scenario_fn fn, const char *name, unsigned attempts, size_t size,
			 int want_rc, unsigned want_attempts)
{
	run r;
	pdelta_result res;
	unsigned char *big = calloc(1, size);
	int rc;

	memset(&res, 0, sizeof res);
	if (!big || start(&r, fn, attempts, 0)) {
		free(big);
		return;
	}
	rc = pdelta_delta(r.h, "m", 0, big, size, &res);
	EXPECT(rc == want_rc && (!want_attempts || res.attempts == want_attempts),
	       "%s: rc %d, expected %d; attempts %u (%s)", name, rc, want_rc, res.attempts,
	       pdelta_last_error(r.h));
	free(big);
	finish(&r, name);
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: client_mock CA.pem SERVER.pem SERVER.key\n");
		return 2;
	}
	ca_path = argv[1];
	cert_path = argv[2];
	key_path = argv[3];
	make_bodies();
	t_resume();
	t_restart(s_restart, "restart (other answer)", 2);
	t_restart(s_prefix, "restart (prefix differs)", 3);
	t_restart(s_downgrade, "restart, protocol 2 then 1", 2);
	t_onecall(s_badcrc, "bad CRC", 3, 0, 0, 1000, 2, 0);
	t_onecall(s_busy, "busy/OVERLOADED 300 ms", 3, 0, 0, 1000, 2, 290);
	t_onecall(s_stale, "stale seq fixed", 3, 7, 0, 1000, 1, 0);
	t_onecall(s_violation, "protocol violation", 3, 0, PDELTA_E_PROTO, 0, 1, 0);
	t_onecall(s_auth, "auth failure at HELLO", 3, 0, PDELTA_E_AUTH, 0, 1, 0);
	t_onecall(s_version, "bad version", 3, 0, PDELTA_E_PROTO, 0, 1, 0);
	{
		/* io_timeout 3 s: PONGs arrive every 100 ms but do not extend the wait */
		double t0 = ms_now();
		t_onecall(s_silent, "silent server", 1, 0, PDELTA_E_TIMEOUT, 0, 1, 2900);
		EXPECT(ms_now() - t0 < 6000, "silent server: gave up in %.0f ms", ms_now() - t0);
	}
	t_goodbye();
	t_cut_upload(s_early, "early error", 3, 4u << 20, PDELTA_E_MALFORMED, 1);
	t_cut_upload(s_reset, "reset", 1, 8u << 20, PDELTA_E_IO, 0); /* peer reset during the upload */
	return TH_DONE_AS("client_mock");
}
