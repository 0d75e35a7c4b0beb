/*
 * fuzz_conn: libFuzzer target for the whole server input path: bytes from a
 * client into the real connection code (server/pd_conn.c: the state machine,
 * limits, the frame codec, auth, and with PD_FUZZ_CONN_TLS=1 the
 * bufferevent_openssl transport) and on into the real pd_service (worker,
 * engine, SQLite store), the way h2o's fuzz driver feeds its HTTP/2 code
 * through a socketpair.
 *
 * Transport. By default the connection is accepted with
 * pd_conn_accept_plain(), the test-only plaintext transport: everything
 * after the transport is the code pdeltad runs, and an input costs 0.05 to
 * 0.3 ms (ASan, UBSan) instead of a TLS handshake (issue #6: >= 10M
 * executions per `make fuzz`). PD_FUZZ_CONN_TLS=1 in the environment selects
 * pd_conn_accept() instead: this thread then drives a non-blocking TLS
 * client that resumes the previous input's TLS session (a full handshake
 * costs milliseconds), so the TLS glue (handshake states, dirty shutdown,
 * TLS errors, close_notify) stays fuzzable, at a few hundred inputs/s.
 *
 * Per input: socketpair(); the server takes one end as an accepted TCP
 * connection; this thread plays the client on the other end and turns the
 * server's event loop in between, so the run is single-threaded apart from
 * the service's own threads. The client writes the input's plaintext, reads
 * whatever the server answers, then closes; the input is over when the
 * connection is gone and every request it handed to the service has
 * completed (an orphaned job must still complete: a hang is reported as a
 * crash). Nothing sleeps: the loop blocks only while the service holds a
 * request (pd_conn_in_service(): its completion wakes the loop), and the
 * server counts as quiet after two idle turns in which the client saw
 * nothing new; the janitor's deadlines are reached by telling it the time
 * (pd_conn_sweep_at), not by waiting.
 *
 * Oracle: besides the sanitizers, everything the server sends must decode
 * as frames a server may send (pd_frame_decode with the client's limits),
 * and nothing may follow a connection ERROR (request id 0).
 *
 * Input: byte 0 is a control byte, the rest is the client's plaintext.
 *   bits 0-1  0: a valid agent HELLO is sent first; 1: an admin HELLO;
 *             2, 3: nothing is prepended (the pre-auth path: HELLO is fuzzed)
 *   bits 2-3  write pattern: 0 all at once; 1 one byte per write for the
 *             first 64 bytes, then the rest at once; 2 7-byte writes for
 *             the first 1 KiB, then the rest (a loop turn per 7 bytes of a
 *             100 KiB input would cost 50 ms); 3 1000-byte writes; the
 *             server's loop runs between writes
 *   bit 4     server drain (pd_conn_shutdown_all, as on SIGTERM) halfway
 *   bit 5     the client does not read until it has written everything,
 *             and the server's socket buffer is small (output budget,
 *             backpressure, write timeout)
 *   bit 6     run the janitor once the input is written (and, with bit 5,
 *             answered but not read), 2 ms in the future
 *             (pd_conn_sweep_at): every deadline has expired by then
 *   bit 7     close without waiting for answers (orphaned jobs)
 * The server runs with small limits (max_inflight 4, max_frame 64 KiB,
 * output budget 64 KiB, max upload 48 KiB, 8 queued jobs, 1 KiB chunks) so
 * that fuzzed inputs reach them, and 1 ms deadlines (handshake, frame,
 * upload, write, drain) that only the janitor of bit 6 enforces. Stream
 * state persists across inputs (one service per process, at most 256
 * streams), like a real server's: replaying one input alone may take
 * another path. The database lives on /dev/shm when there is one (commits
 * cost no disk I/O).
 *
 * Seeds: tests/fuzz/corpus/conn/ (HELLO variants, delta requests with a
 * real profile, duplicates, CANCEL, ADMIN, PING, GOODBYE, protocol errors);
 * an input that once crashed is kept there as regress-<name>.
 * tests/fuzz/conn.options holds the runner's settings for this target
 * (-fork=2, -entropic=0, 3x FUZZ_SECONDS; the reasons are there).
 *
 * Build: needs the server sources and libevent/OpenSSL/SQLite, which the
 * generic fuzz rule of the Makefile does not link; a dedicated rule defines
 * PD_FUZZ_WITH_SERVER. Without it this file builds as an empty target (so
 * that `make fuzz-build` keeps working) and says so on stderr.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#ifndef PD_FUZZ_WITH_SERVER

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	fprintf(stderr, "fuzz_conn: built without the server sources (PD_FUZZ_WITH_SERVER); "
			"nothing is fuzzed. See the header of tests/fuzz/fuzz_conn.c.\n");
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return 0; }

#else

#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "pd_auth.h"
#include "pd_buf.h"
#include "pd_config.h"
#include "pd_conn.h"
#include "pd_frame.h"
#include "pd_log.h"
#include "pd_metrics.h"
#include "pd_service.h"
#include "pd_tls.h"

#define AGENT_TOKEN "fuzz-agent-token"
#define ADMIN_TOKEN "fuzz-admin-token"
#define QUIET_TURNS 2          /* idle loop turns before the server counts as quiet */
#define MAX_TURNS 20000        /* per phase; beyond: the connection is stuck */
#define JOB_WAIT_MS 20000      /* a started job must complete within this */
#define BLOCK_MS 5             /* longest blocking loop turn (a completion ends it sooner) */
#define OUT_CAP (64u << 20)    /* server output kept for decoding */
#define TINY_WRITES 64         /* pattern 1: bytes written one by one */
#define SMALL_WRITES 1024      /* pattern 2: bytes written 7 at a time */

static struct {
	char dir[96];
	pd_config cfg;
	pd_metrics metrics;
	pd_service *svc;
	pd_conn_env env;
	bool tls;             /* PD_FUZZ_CONN_TLS=1: the real TLS transport */
	struct event *tick;   /* bounds a blocking loop turn */
	SSL_CTX *client_ctx;
	SSL_SESSION *session; /* resumed by the next input: cheap handshakes */
	pd_buf hello[2]; /* encoded once: agent HELLO, admin HELLO */
	pd_buf in;   /* the client's plaintext for one input */
	pd_buf out;  /* server output not decoded yet */
	bool conn_error_seen;
} F;

static void fatal(const char *what)
{
	char why[256];
	fprintf(stderr, "fuzz_conn: %s: %s\n", what, pd_tls_errors(why, sizeof why));
	abort();
}

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ---- one-time setup: a self-signed certificate, tenants, config, service ---- */

static void write_file(const char *name, const char *text, char *path, size_t cap)
{
	FILE *f;
	snprintf(path, cap, "%s/%s", F.dir, name);
	f = fopen(path, "w");
	if (!f || fputs(text, f) < 0 || fclose(f) != 0)
		fatal(path);
}

/* An EC P-256 key and a self-signed certificate, as PEM files for pd_tls. */
static void make_cert(char *cert_path, char *key_path, size_t cap)
{
	EVP_PKEY *key = EVP_EC_gen("P-256");
	X509 *x = X509_new();
	FILE *f;

	if (!key || !x)
		fatal("key generation");
	ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
	X509_gmtime_adj(X509_getm_notBefore(x), -3600);
	X509_gmtime_adj(X509_getm_notAfter(x), 86400L * 365);
	X509_set_pubkey(x, key);
	X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
				   (const unsigned char *)"localhost", -1, -1, 0);
	X509_set_issuer_name(x, X509_get_subject_name(x));
	if (!X509_sign(x, key, EVP_sha256()))
		fatal("certificate signing");
	snprintf(cert_path, cap, "%s/cert.pem", F.dir);
	snprintf(key_path, cap, "%s/key.pem", F.dir);
	if (!(f = fopen(cert_path, "w")) || !PEM_write_X509(f, x) || fclose(f) != 0)
		fatal(cert_path);
	if (!(f = fopen(key_path, "w")) || !PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL) ||
	    fclose(f) != 0)
		fatal(key_path);
	X509_free(x);
	EVP_PKEY_free(key);
}

static void write_tenants(char *path, size_t cap)
{
	uint8_t h[PD_TOKEN_HASH_LEN];
	char agent[2 * PD_TOKEN_HASH_LEN + 1], admin[2 * PD_TOKEN_HASH_LEN + 1], text[512];

	pd_auth_hash_token(AGENT_TOKEN, strlen(AGENT_TOKEN), h);
	pd_auth_hex(h, agent);
	pd_auth_hash_token(ADMIN_TOKEN, strlen(ADMIN_TOKEN), h);
	pd_auth_hex(h, admin);
	snprintf(text, sizeof text,
		 "tenant=fuzz role=agent token_sha256=%s\ntenant=fuzz role=admin token_sha256=%s\n",
		 agent, admin);
	write_file("tenants", text, path, cap);
}

static void set(const char *name, const char *value)
{
	pd_err e;
	if (pd_config_set(&F.cfg, name, value, &e)) {
		fprintf(stderr, "fuzz_conn: %s\n", e.msg);
		abort();
	}
}

/* Small limits, so that fuzzed inputs reach them. Deadlines are enforced
 * only by the janitor (pd_conn_sweep), which runs only when control bit 6
 * asks for it: at 1 ms they have all expired by then. */
static void make_config(void)
{
	pd_err e;

	if (pd_config_init(&F.cfg, &e))
		abort();
	set("max_inflight", "4");
	set("max_frame", "64k");
	set("output_budget_bytes", "64k");
	set("max_input", "48k");
	set("handshake_timeout_ms", "1");
	set("frame_timeout_ms", "1");
	set("request_timeout_ms", "1");
	set("write_timeout_ms", "1");
	set("drain_timeout_ms", "1");
	set("max_queued_jobs", "8");
	set("chunk_bytes", "1k");
	set("workers", "1");
	set("cache_bytes", "1m");
}

static void start_service(void)
{
	char db[128];
	pd_service_opts o;
	pd_err e;

	snprintf(db, sizeof db, "%s/state.db", F.dir);
	pd_service_opts_init(&o);
	o.workers = (unsigned)F.cfg.workers;
	o.cache_bytes = F.cfg.cache_bytes;
	o.max_queued_jobs = F.cfg.max_queued_jobs;
	o.chunk_bytes = F.cfg.chunk_bytes;
	o.limits = F.cfg.limits;
	/* Fuzzed stream names would otherwise pile up for the whole run, and
	 * every admin listing scans them all: a small cap keeps an input's cost
	 * flat over time, and fuzzed inputs reach the limit. */
	o.max_streams_per_tenant = 256;
	o.store.path = db;
	o.store.synchronous_full = 0; /* durability is test_kill9's business */
	if (pd_service_new(&o, &F.svc, &e)) {
		fprintf(stderr, "fuzz_conn: service: %s\n", e.msg);
		abort();
	}
}

/* poll(2) rather than epoll: one connection per input, and epoll would
 * spend several epoll_ctl calls on each; the server's code is the same. */
static struct event_base *new_base(void)
{
	struct event_config *ec = event_config_new();
	struct event_base *b;

	if (!ec)
		return NULL;
	event_config_avoid_method(ec, "epoll");
	b = event_base_new_with_config(ec);
	event_config_free(ec);
	return b;
}

/* Nothing to do: the timer only ends a blocking loop turn. */
static void on_tick(evutil_socket_t fd, short what, void *arg) {}

static void start_env(void)
{
	char cert[128], key[128], tenants[128];
	pd_tls_opts to = {cert, key, NULL, false};
	pd_err e;

	make_cert(cert, key, sizeof cert);
	write_tenants(tenants, sizeof tenants);
	F.env.base = new_base();
	F.env.cfg = &F.cfg;
	F.env.svc = F.svc;
	F.env.metrics = &F.metrics;
	if (!F.env.base || pd_tls_ctx_new(&to, &F.env.tls, NULL, &e) || pd_auth_load(tenants, &F.env.auth, &e) ||
	    pd_conn_env_init(&F.env, &e)) {
		fprintf(stderr, "fuzz_conn: setup: %s\n", e.msg);
		abort();
	}
	F.client_ctx = SSL_CTX_new(TLS_client_method());
	if (!F.client_ctx)
		fatal("client SSL_CTX");
	SSL_CTX_set_verify(F.client_ctx, SSL_VERIFY_NONE, NULL);
	SSL_CTX_set_mode(F.client_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
					       SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
}

/*
 * libFuzzer re-runs every input whose mallocs outnumber its frees to look for
 * leaks, and here that is nearly every input (the service caches stream
 * state, on other threads): it halves the speed. Unless the command line
 * says otherwise, -detect_leaks=0 is added; LeakSanitizer still checks the
 * whole process at exit (run with -detect_leaks=1 to tie a leak to an input).
 * libFuzzer parses its flags after this function, which may edit argv.
 */
static void default_no_leak_rerun(int *argc, char ***argv)
{
	static char flag[] = "-detect_leaks=0";
	char **v;

	for (int i = 1; i < *argc; i++)
		if (strncmp((*argv)[i], "-detect_leaks=", 14) == 0)
			return;
	v = calloc((size_t)*argc + 2, sizeof *v);
	if (!v)
		return;
	memcpy(v, *argv, (size_t)*argc * sizeof *v);
	v[(*argc)++] = flag;
	*argv = v; /* kept for the life of the process */
}

/* tmpfs when there is one: every accepted delta commits a transaction, and
 * a WAL checkpoint on disk costs more than a whole input. */
static const char *work_dir(void)
{
	if (access("/dev/shm", W_OK | X_OK) == 0)
		return "/dev/shm";
	return getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
}

/* The credentials are read at start-up; the database lives until exit. */
static void remove_dir(void)
{
	static const char *const files[] = {"cert.pem", "key.pem",	   "tenants",
					    "state.db", "state.db-wal", "state.db-shm"};
	char path[128];

	for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
		snprintf(path, sizeof path, "%s/%s", F.dir, files[i]);
		unlink(path);
	}
	rmdir(F.dir);
}

static void encode_hello(pd_buf *b, const char *token)
{
	pd_msg m = {.type = PD_FT_HELLO};
	m.u.hello.min_version = PD_PROTO_VERSION_MIN;
	m.u.hello.max_version = PD_PROTO_VERSION;
	m.u.hello.client_name = pd_str_c("fuzz");
	m.u.hello.token = pd_str_c(token);
	pd_buf_init(b, 0);
	if (pd_msg_encode(b, &m, NULL))
		abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	default_no_leak_rerun(argc, argv);
	snprintf(F.dir, sizeof F.dir, "%s/fuzz_conn.XXXXXX", work_dir());
	if (!mkdtemp(F.dir))
		fatal("mkdtemp");
	F.tls = getenv("PD_FUZZ_CONN_TLS") && strcmp(getenv("PD_FUZZ_CONN_TLS"), "0") != 0;
	atexit(remove_dir);
	signal(SIGPIPE, SIG_IGN);
	if (evthread_use_pthreads() != 0)
		fatal("evthread_use_pthreads");
	pd_log_set_level(getenv("FUZZ_CONN_LOG") ? PD_LOG_DEBUG : -1);
	make_config();
	start_service();
	start_env();
	F.tick = evtimer_new(F.env.base, on_tick, NULL);
	if (!F.tick)
		fatal("evtimer_new");
	pd_buf_init(&F.in, 0);
	encode_hello(&F.hello[0], AGENT_TOKEN);
	encode_hello(&F.hello[1], ADMIN_TOKEN);
	pd_buf_init(&F.out, OUT_CAP);
	fprintf(stderr, "fuzz_conn: %s transport, state in %s\n",
		F.tls ? "TLS (PD_FUZZ_CONN_TLS)" : "plaintext test", F.dir);
	return 0;
}

/* ---- the server's output: must be valid frames ---- */

static void check_output(void)
{
	size_t off = 0, used;
	pd_msg m;
	pd_err e;

	for (;;) {
		int rc = pd_frame_decode(F.out.data + off, F.out.len - off, PD_FRAME_MAX_ABS, &m, &used, &e);
		if (rc == PD_FRAME_NEED_MORE)
			break;
		if (rc) {
			fprintf(stderr, "fuzz_conn: the server sent an invalid frame: %s\n", e.msg);
			abort();
		}
		if (!(pd_frame_type_senders(m.type) & PD_SIDE_SERVER)) {
			fprintf(stderr, "fuzz_conn: the server sent %s\n", pd_frame_type_name(m.type));
			abort();
		}
		if (F.conn_error_seen) {
			fprintf(stderr, "fuzz_conn: %s after a connection ERROR\n", pd_frame_type_name(m.type));
			abort();
		}
		F.conn_error_seen = m.type == PD_FT_ERROR && m.request_id == 0;
		off += used;
	}
	memmove(F.out.data, F.out.data + off, F.out.len - off);
	F.out.len -= off;
}

/* ---- the server's loop ---- */

/* One turn of the server's loop. It blocks (BLOCK_MS at most) only while
 * the service holds a request of ours: its completion wakes the loop. */
static void server_turn(void)
{
	struct timeval tv = {0, BLOCK_MS * 1000};

	if (pd_conn_in_service(&F.env) == 0) {
		event_base_loop(F.env.base, EVLOOP_NONBLOCK);
		return;
	}
	evtimer_add(F.tick, &tv);
	event_base_loop(F.env.base, EVLOOP_ONCE);
	evtimer_del(F.tick);
}

/* Nothing can happen without the client: the service holds none of our
 * requests and no callback is pending. A non-blocking turn runs until no
 * callback is active (deferred ones included), so the second test matters
 * only for a completion that arrives meanwhile. Socket readiness shows up in
 * the next turn's poll, hence QUIET_TURNS idle turns in a row before the
 * server counts as quiet. */
static bool server_idle(void)
{
	return pd_conn_in_service(&F.env) == 0 &&
	       event_base_get_num_events(F.env.base, EVENT_BASE_COUNT_ACTIVE) == 0;
}

/* ---- the client side: plaintext, or TLS with PD_FUZZ_CONN_TLS ---- */

typedef struct client {
	SSL *ssl; /* NULL: plaintext */
	int fd;
	bool eof; /* the server closed */
} client;

/* What a read or write that returned r (plain or TLS) means: > 0 bytes moved, 0 would
 * block, < 0 closed or failed. */
static ssize_t io_result(client *c, ssize_t r)
{
	int err;

	if (r > 0)
		return r;
	if (!c->ssl)
		return r < 0 && (errno == EAGAIN || errno == EINTR) ? 0 : -1;
	err = SSL_get_error(c->ssl, (int)r);
	ERR_clear_error();
	return err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE ? 0 : -1;
}

/* > 0: bytes read; 0: nothing now; < 0: closed or failed. */
static ssize_t client_recv(client *c, void *buf, size_t n)
{
	return io_result(c, c->ssl ? SSL_read(c->ssl, buf, (int)n) : read(c->fd, buf, n));
}

/* > 0: bytes written; 0: would block; < 0: closed or failed. */
static ssize_t client_send(client *c, const uint8_t *p, size_t n)
{
	if (n > 16384)
		n = 16384;
	return io_result(c, c->ssl ? SSL_write(c->ssl, p, (int)n) : write(c->fd, p, n));
}

/* Reads what the server sent; returns the bytes read. */
static size_t client_read(client *c)
{
	uint8_t buf[16384];
	size_t total = 0;

	while (!c->eof) {
		ssize_t n = client_recv(c, buf, sizeof buf);
		if (n <= 0) {
			c->eof = n < 0;
			break;
		}
		total += (size_t)n;
		if (F.out.len + (size_t)n <= OUT_CAP)
			pd_buf_append(&F.out, buf, (size_t)n, NULL);
	}
	if (total)
		check_output();
	return total;
}

static bool client_handshake(client *c)
{
	for (int i = 0; i < MAX_TURNS; i++) {
		int rc = SSL_do_handshake(c->ssl);
		if (rc == 1)
			return true;
		rc = SSL_get_error(c->ssl, rc);
		if (rc != SSL_ERROR_WANT_READ && rc != SSL_ERROR_WANT_WRITE)
			fatal("TLS handshake with pd_conn failed");
		server_turn();
	}
	fatal("TLS handshake stuck");
	return false;
}

/* Writes p[0..n); false when the server stopped taking bytes (paused, or
 * closed). A write that stays blocked while the server is quiet means it
 * has stopped reading (output budget, closing): waiting would not help. */
static bool client_write(client *c, const uint8_t *p, size_t n, bool read_too)
{
	int quiet = 0;

	for (int turns = 0; n && !c->eof && turns < MAX_TURNS; turns++) {
		ssize_t w = client_send(c, p, n);
		size_t got = 0;

		if (w < 0)
			return false;
		p += w;
		n -= (size_t)w;
		server_turn();
		if (read_too)
			got = client_read(c);
		if (w == 0 && got == 0 && server_idle()) {
			if (++quiet >= QUIET_TURNS)
				return false;
		} else {
			quiet = 0;
		}
	}
	return n == 0 && !c->eof;
}

/* Turns the loop until the server has nothing more to say (with reading
 * false: until its jobs are done and it has queued what it can). */
static void settle(client *c, bool reading)
{
	int quiet = 0;

	for (int i = 0; i < MAX_TURNS && quiet < QUIET_TURNS && !c->eof; i++) {
		size_t got;

		server_turn();
		got = reading ? client_read(c) : 0;
		quiet = got == 0 && server_idle() ? quiet + 1 : 0;
	}
}

static uint64_t jobs_admitted(void)
{
	pd_service_stats st;
	pd_service_stats_get(F.svc, &st);
	return st.jobs_admitted;
}

/* After the client closed: the connection goes, and every request it handed
 * to the service completes (and every job it began is given back). */
static void wait_gone(void)
{
	uint64_t deadline = now_ms() + JOB_WAIT_MS;
	int idle = 0;

	while (pd_conn_count(&F.env) > 0 || pd_conn_in_service(&F.env) > 0 || jobs_admitted() > 0) {
		if (now_ms() > deadline) {
			fprintf(stderr, "fuzz_conn: stuck: %zu connections, %zu requests in service, "
					"%llu jobs after close\n",
				pd_conn_count(&F.env), pd_conn_in_service(&F.env),
				(unsigned long long)jobs_admitted());
			abort();
		}
		server_turn();
		idle = server_idle() ? idle + 1 : 0;
		/* A failed HELLO is answered only after its delay (the auth
		 * throttle), with reading off: the closed client goes unnoticed
		 * until the janitor answers it, so tell the janitor that time. */
		if (idle == QUIET_TURNS)
			pd_conn_sweep_at(&F.env, now_ms() + F.cfg.auth_fail_delay_max_ms + 1);
		if (idle > 100)
			usleep(1000); /* something is wrong; the deadline will tell */
	}
	for (int i = 0; i < MAX_TURNS && !server_idle(); i++) /* completions and the reaper */
		server_turn();
}

/* The newest resumable session (TLS 1.3 tickets come after the handshake). */
static void keep_session(SSL *ssl)
{
	SSL_SESSION *s = SSL_get1_session(ssl);

	if (!s)
		return;
	if (!SSL_SESSION_is_resumable(s) || s == F.session) {
		SSL_SESSION_free(s);
		return;
	}
	SSL_SESSION_free(F.session);
	F.session = s;
}

static void write_input(client *c, const uint8_t *p, size_t n, unsigned ctl)
{
	unsigned pattern = (ctl >> 2) & 3;
	bool drain = ctl & 0x10, read_too = !(ctl & 0x20);
	size_t half = n / 2, off = 0;

	while (off < n) {
		size_t step = n - off;
		if (pattern == 1 && off < TINY_WRITES)
			step = 1;
		else if (pattern == 2 && off < SMALL_WRITES)
			step = step < 7 ? step : 7;
		else if (pattern == 3)
			step = step < 1000 ? step : 1000;
		if (drain && off <= half && off + step > half)
			step = half - off + (half == off);
		if (!client_write(c, p + off, step, read_too))
			return;
		off += step;
		if (drain && off >= half && !F.env.draining) {
			F.env.draining = true;
			pd_conn_shutdown_all(&F.env);
		}
	}
}

/* Accepts sv[0] as the server's end; c gets sv[1]. With TLS, the client
 * handshake (resuming the last session); false if it failed. */
static bool client_open(client *c, int sv[2])
{
	struct sockaddr_in peer = {.sin_family = AF_INET, .sin_port = htons(40000)};

	peer.sin_addr.s_addr = htonl(0x7f000001);
	c->fd = sv[1];
	if (!F.tls) {
		pd_conn_accept_plain(&F.env, sv[0], (struct sockaddr *)&peer, sizeof peer);
		return true;
	}
	pd_conn_accept(&F.env, sv[0], (struct sockaddr *)&peer, sizeof peer);
	c->ssl = SSL_new(F.client_ctx);
	if (!c->ssl || !SSL_set_fd(c->ssl, c->fd) ||
	    (F.session && !SSL_set_session(c->ssl, F.session)))
		fatal("client SSL");
	SSL_set_connect_state(c->ssl);
	return client_handshake(c);
}

static void client_close(client *c)
{
	if (c->ssl) {
		keep_session(c->ssl);
		/* A quiet close: SSL_free would otherwise mark the session not resumable. */
		SSL_set_shutdown(c->ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
		SSL_free(c->ssl);
	}
	close(c->fd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	unsigned ctl;
	client c = {0};
	int sv[2];

	if (size < 1)
		return 0;
	ctl = data[0];
	pd_buf_reset(&F.in);
	if ((ctl & 3) < 2)
		if (pd_buf_append(&F.in, F.hello[ctl & 1].data, F.hello[ctl & 1].len, NULL))
			abort();
	if (pd_buf_append(&F.in, data + 1, size - 1, NULL))
		abort();
	pd_buf_reset(&F.out);
	F.conn_error_seen = false;

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0)
		fatal("socketpair");
	if (ctl & 0x20) {
		/* The client will not read: a small socket buffer lets the server's
		 * output reach its budget instead of vanishing into the kernel. */
		int small = 4096;
		setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
	}
	if (client_open(&c, sv)) {
		write_input(&c, F.in.data, F.in.len, ctl);
		if (ctl & 0x20) /* still not reading: the output piles up */
			settle(&c, false);
		if (ctl & 0x40) /* deadlines count whole ms: 2 ms later, all 1 ms ones expired */
			pd_conn_sweep_at(&F.env, now_ms() + 2);
		if (!(ctl & 0x80))
			settle(&c, true);
	}
	client_close(&c);
	wait_gone();
	F.env.draining = false;
	return 0;
}

#endif /* PD_FUZZ_WITH_SERVER */
