/*
 * pd_load: load generator for pdeltad (issue 6: many TLS connections, many
 * streams, many requests in flight), and a memory soak.
 *
 *   pd_load --port P[,P...] --ca CA (--token T | --token-file F) --seq DIR [--seq DIR]...
 *           [--connections C] [--streams S] [--requests N] [--seconds T]
 *           [--idle K] [--server-pid PID[,PID...]] [--soak SECONDS] [--inflight N]
 *           [--chunk BYTES] [--no-data] [--prefix NAME] [--max-p99-ms MS]
 *           [--rate R] [--warmup SECONDS] [--min-rate R] [--seed] [--host 127.0.0.1]
 *
 * One libevent loop, no threads, non-blocking TLS (bufferevent_openssl). C
 * connections authenticate with a token; S streams are spread over them
 * (stream i lives on connection i % C). Each stream sends the files of one
 * sequence (the --seq directories in turn: stream i takes sequence i % n) in
 * order, with seq 1, 2, ...: one request in flight per stream, many per
 * connection (up to the server's max_inflight and --inflight). When a stream
 * wraps around its sequence it takes a new incarnation, so every request is a
 * valid delta or a BASELINE reset. The files are read once and uploads are
 * queued by reference (evbuffer_add_reference): no copy per request.
 *
 * Load model. Without --rate the loop is closed: every stream has a request
 * in flight all the time (bounded per connection by --inflight), which
 * measures capacity; latency is then mostly queueing (open requests /
 * throughput). With --rate R the loop is open: new requests start at R per
 * second, round-robin over the connections, each on a stream that is not
 * busy; so S streams at R/s means one profile per stream every S/R seconds,
 * as agents send them, and latency is the service time under that load.
 *
 * --seed: before the run, every stream sends its first profile (closed loop,
 * one request per connection) and the run starts only when all of them are
 * answered, so the measured run sees the steady state of a fleet: deltas
 * against stored state, not first profiles. The seeding rate (first-profile
 * capacity) and the server's CPU per seed answer are reported apart.
 *
 * The run is bounded by --requests (new requests started), SIGINT / SIGTERM and --seconds
 * (wall time after every connection is up, plus --warmup: responses that
 * complete during the warm-up, e.g. every stream's first profile, are left
 * out of the figures); then open requests are finished
 * (at most 60 s) and every connection says GOODBYE. Loopback only: any host
 * outside 127.0.0.0/8 is refused.
 *
 * Latency is measured from DELTA_BEGIN queued to RESULT_END received (upload
 * included), for the attempt that was answered. Retryable errors (busy,
 * timeout, io, store, nomem, a lost connection) are retried with the same
 * (seq, bytes) after a per-stream exponential backoff (50 ms to 5 s, at least
 * what busy/OVERLOADED suggests), as an agent does. A non-retryable error, a
 * response that breaks the protocol (unknown request, wrong seq, size or CRC
 * mismatch) or a failed p99 / rate bound makes the exit status 1.
 *
 * Several nodes: --port P1,P2,... (at most 16, one host) spreads the connections round
 * robin over them (connection i goes to port i % n), so the streams of a shared-store
 * cluster are spread evenly; --server-pid PID1,PID2,... then sums the nodes' CPU time and
 * memory.
 *
 * --idle K opens K extra plain TCP sockets that just sit there (reopened if
 * the server closes them), to show that idle sockets do not hurt.
 * --server-pid reads the server's VmRSS / VmHWM and CPU time from /proc;
 * --soak SECONDS runs that long and prints the server's RSS every 10 s.
 * The last line starting with "RESULT " has every figure as key=value.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <glob.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <zlib.h>

#include "pd_buf.h"
#include "pd_frame.h"
#include "pd_crc.h"

#define TICK_MS 10
#define CONNECT_TIMEOUT_US (120 * 1000000ull)
#define DRAIN_TIMEOUT_US (60 * 1000000ull)
#define BYE_TIMEOUT_US (3 * 1000000ull)
#define RETRY_DELAY_MS 50
#define MAX_BACKOFF_MS 5000
#define IDLE_REOPEN_US 1000000ull
#define SOAK_PERIOD_US (10 * 1000000ull)
#define MAX_LOGGED 10
#define SEED_TIMEOUT_US (900 * 1000000ull)

/* ---- data ---------------------------------------------------------------- */

typedef struct lfile {
	uint8_t *data;
	size_t len;
	uint8_t hash[PD_CONTENT_HASH_LEN]; /* protocol 1: SHA-256/16 */
	uint8_t crc[PD_CONTENT_HASH_LEN];  /* protocol 2: CRC-128 */
} lfile;

typedef struct lseq {
	const char *dir;
	lfile *files;
	size_t n;
} lseq;

typedef struct conn conn;
typedef struct stream stream;

struct stream {
	uint32_t idx;
	uint32_t sq;        /* its sequence */
	uint32_t pos;       /* file to send next */
	uint64_t seq, inc;  /* of the next (or the open) request */
	conn *c;
	stream *next;       /* ready queue or delayed list */
	uint64_t due_us;    /* delayed until */
	bool retry;         /* the next send repeats the last request */
	uint32_t backoff_ms; /* after busy/timeout errors: doubles, reset by an answer */
	bool want_baseline; /* first request, or first after a wrap */
};

typedef struct req {
	uint32_t rid; /* 0: free slot */
	stream *s;
	uint64_t t0_us;
	bool got_result;
	uint8_t status;
	uint64_t announced, got;
	uint32_t crc;
} req;

enum conn_state { C_DOWN, C_CONNECTING, C_HELLO, C_READY, C_BYE };

struct conn {
	uint32_t idx;
	int state;
	bool failing; /* close after the current callback */
	bool ever_ready;
	struct bufferevent *bev;
	uint32_t max_inflight, max_frame, keepalive_ms, nopen, next_rid, version;
	req *reqs; /* opts.inflight slots */
	stream *ready_head, *ready_tail;
	uint64_t retry_at_us, last_tx_us;
	uint32_t backoff_ms;
};

typedef struct idle_sock {
	int fd;
	struct event *ev;
	uint64_t reopen_at_us;
} idle_sock;

enum phase { P_CONNECT, P_SEED, P_RUN, P_DRAIN, P_BYE, P_DONE };

typedef struct opts {
	const char *host, *ca, *token, *prefix;
	int port[16];
	size_t nport;
	uint32_t conns, streams, inflight, chunk, idle;
	uint64_t requests;
	double seconds, soak, max_p99_ms, min_rate, rate, warmup;
	int server_pid[16];
	size_t npid;
	bool no_data, seed;
	const char *seq_dirs[64];
	size_t nseq;
} opts;

typedef struct stats {
	uint64_t started, completed, retries, fatal, violations, unexpected;
	uint64_t by_status[4], by_reason[5];
	uint64_t req_errors[PD_E__COUNT], conn_errors[PD_E__COUNT];
	uint64_t conn_lost, connects, idle_closed, laps, unfinished, lagged, warmup_done;
	uint64_t seed_done, seed_failed, seed_retries; /* --seed: first profiles answered, refused
						       * for good, retried */
	uint64_t bytes_up, bytes_down;
	uint32_t *lat; /* microseconds, one per completed request */
	size_t nlat, lat_cap;
	uint64_t logged;
} stats;

typedef struct srv_sample {
	bool ok;
	uint64_t rss_kb, hwm_kb, threads;
	double cpu_s;
} srv_sample;

static struct {
	opts o;
	stats st;
	lseq seqs[64];
	size_t nseqs;
	stream *streams;
	conn *conns;
	idle_sock *idle;
	struct event_base *base;
	struct event *tick;
	SSL_CTX *ssl_ctx;
	struct sockaddr_in sa[16]; /* one per --port */
	pd_buf scratch;
	int phase;
	uint32_t nready; /* connections that completed HELLO at least once */
	uint64_t t_begin, t_start, t_measure, t_stop, t_last_done, t_bye, next_soak, t_pace;
	uint64_t t_seed, t_seed_end; /* --seed phase */
	double seed_cpu_s;          /* server CPU during it */
	double allow; /* --rate: requests that may start now */
	uint32_t rr;  /* --rate: next connection to try */
	stream *delayed;
	srv_sample srv0;
	double soak_rss_min, soak_rss_max, soak_rss_first, soak_rss_last;
	uint64_t soak_done_prev;
	uint64_t run_id;
	char load0[64];
	bool measuring; /* the measured window (after --warmup) has opened */
	double me0;     /* our CPU seconds then */
	int exit_code;
} L;

/* ---- helpers ------------------------------------------------------------- */

static uint64_t now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("pd_load: ", stderr);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(2);
}

/* The first MAX_LOGGED problems are printed; all are counted. */
static void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void note(const char *fmt, ...)
{
	va_list ap;
	if (L.st.logged++ >= MAX_LOGGED)
		return;
	va_start(ap, fmt);
	fputs("pd_load: ", stderr);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size);
	if (!p)
		die("out of memory");
	return p;
}

static double secs(uint64_t us) { return (double)us / 1e6; }

/* ---- test data ------------------------------------------------------------ */

static void read_file(const char *path, lfile *f)
{
	FILE *fp = fopen(path, "rb");
	long n;

	if (!fp)
		die("%s: %s", path, strerror(errno));
	if (fseek(fp, 0, SEEK_END) != 0 || (n = ftell(fp)) < 0 || fseek(fp, 0, SEEK_SET) != 0)
		die("%s: cannot size", path);
	f->len = (size_t)n;
	f->data = xcalloc(f->len, 1);
	if (f->len && fread(f->data, 1, f->len, fp) != f->len)
		die("%s: short read", path);
	fclose(fp);
	{
		uint8_t full[32];
		unsigned int flen = 0;
		if (!EVP_Digest(f->data, f->len, full, &flen, EVP_sha256(), NULL))
			die("sha256 failed");
		memcpy(f->hash, full, PD_CONTENT_HASH_LEN);
	}
	pd_crc128_of(f->data, f->len, f->crc);
}

static void load_sequence(const char *dir, lseq *s)
{
	char pat[4096];
	glob_t g;

	snprintf(pat, sizeof pat, "%s/*.pb.gz", dir);
	if (glob(pat, 0, NULL, &g) != 0 || g.gl_pathc == 0)
		die("%s: no *.pb.gz files", dir);
	s->dir = dir;
	s->n = g.gl_pathc;
	s->files = xcalloc(s->n, sizeof *s->files);
	for (size_t i = 0; i < s->n; i++) /* glob sorts: 000, 001, ... */
		read_file(g.gl_pathv[i], &s->files[i]);
	globfree(&g);
}

/* ---- server figures from /proc ------------------------------------------- */

static uint64_t status_kb(const char *text, const char *key)
{
	const char *p = strstr(text, key);
	return p ? strtoull(p + strlen(key), NULL, 10) : 0;
}

/* /proc/<server pid>/<what> into buf, NUL-terminated; false when it cannot be read. */
static bool read_proc(int pid, const char *what, char *buf, size_t cap)
{
	char path[64];
	FILE *fp;
	size_t n;

	snprintf(path, sizeof path, "/proc/%d/%s", pid, what);
	if (!(fp = fopen(path, "r")))
		return false;
	n = fread(buf, 1, cap - 1, fp);
	fclose(fp);
	buf[n] = 0;
	return true;
}

/* One server process's memory and CPU time; ok false when it cannot be read. */
static srv_sample server_sample_one(int pid)
{
	srv_sample s = {0};
	char buf[8192];
	unsigned long long ut = 0, stt = 0;
	const char *p;

	if (pid <= 0 || !read_proc(pid, "status", buf, sizeof buf))
		return s;
	s.rss_kb = status_kb(buf, "VmRSS:");
	s.hwm_kb = status_kb(buf, "VmHWM:");
	s.threads = status_kb(buf, "Threads:");
	if (!read_proc(pid, "stat", buf, sizeof buf))
		return s;
	/* comm may contain blanks: fields are counted after its ')' (field 2). */
	p = strrchr(buf, ')');
	if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &stt) != 2)
		return s;
	s.cpu_s = (double)(ut + stt) / (double)sysconf(_SC_CLK_TCK);
	s.ok = true;
	return s;
}

/* The sum over every --server-pid (ok only when each of them could be read). */
static srv_sample server_sample(void)
{
	srv_sample sum = {.ok = L.o.npid > 0};

	for (size_t i = 0; i < L.o.npid; i++) {
		srv_sample s = server_sample_one(L.o.server_pid[i]);
		sum.ok = sum.ok && s.ok;
		sum.rss_kb += s.rss_kb;
		sum.hwm_kb += s.hwm_kb;
		sum.threads += s.threads;
		sum.cpu_s += s.cpu_s;
	}
	return sum;
}

/* ---- streams ---------------------------------------------------------------- */

static void ready_push(conn *c, stream *s, bool front)
{
	s->next = NULL;
	if (!c->ready_head) {
		c->ready_head = c->ready_tail = s;
	} else if (front) {
		s->next = c->ready_head;
		c->ready_head = s;
	} else {
		c->ready_tail->next = s;
		c->ready_tail = s;
	}
}

static stream *ready_pop(conn *c)
{
	stream *s = c->ready_head;
	if (s) {
		c->ready_head = s->next;
		if (!c->ready_head)
			c->ready_tail = NULL;
		s->next = NULL;
	}
	return s;
}

/* A retry of the same request after delay_ms. */
static void stream_delay(stream *s, uint64_t delay_ms)
{
	if (delay_ms < 1)
		delay_ms = 1;
	s->retry = true;
	s->due_us = now_us() + delay_ms * 1000;
	s->next = L.delayed;
	L.delayed = s;
}

static void stream_advance(stream *s)
{
	const lseq *q = &L.seqs[s->sq];

	s->retry = false;
	s->want_baseline = false;
	s->backoff_ms = 0;
	s->seq++;
	if (++s->pos == q->n) {
		/* A wrap goes back in time: tell the server it is a new producer. */
		s->pos = 0;
		s->inc++;
		s->want_baseline = true;
		L.st.laps++;
	}
}

static void streams_init(void)
{
	L.streams = xcalloc(L.o.streams, sizeof *L.streams);
	for (uint32_t i = 0; i < L.o.streams; i++) {
		stream *s = &L.streams[i];
		s->idx = i;
		s->sq = i % (uint32_t)L.nseqs;
		s->seq = 1;
		s->inc = L.run_id + (uint64_t)i * 1000003u; /* distinct per run and stream */
		s->want_baseline = true;
		s->c = &L.conns[i % L.o.conns];
		ready_push(s->c, s, false);
	}
}

/* ---- frame output -------------------------------------------------------------- */

static void send_msg(conn *c, const pd_msg *m)
{
	pd_err e;

	pd_buf_reset(&L.scratch);
	if (pd_msg_encode(&L.scratch, m, &e))
		die("cannot encode %s: %s", pd_frame_type_name(m->type), e.msg);
	bufferevent_write(c->bev, L.scratch.data, L.scratch.len);
	L.st.bytes_up += L.scratch.len;
	c->last_tx_us = now_us();
}

static void send_hello(conn *c)
{
	pd_msg m = {.type = PD_FT_HELLO};

	m.u.hello.min_version = PD_PROTO_VERSION_MIN;
	m.u.hello.max_version = PD_PROTO_VERSION;
	m.u.hello.client_name = pd_str_c("pd_load");
	m.u.hello.token = pd_str_c(L.o.token);
	send_msg(c, &m);
}

static void send_simple(conn *c, int type, uint64_t opaque)
{
	pd_msg m = {.type = (uint8_t)type};

	if (type == PD_FT_GOODBYE) {
		m.u.goodbye.reason = PD_BYE_NORMAL;
		m.u.goodbye.message = pd_str_c("load done");
	} else {
		m.u.ping.opaque = opaque;
	}
	send_msg(c, &m);
}

static void send_data(conn *c, uint32_t rid, const lfile *f)
{
	struct evbuffer *out = bufferevent_get_output(c->bev);
	size_t chunk = L.o.chunk < c->max_frame ? L.o.chunk : c->max_frame;

	for (size_t off = 0; off < f->len; off += chunk) {
		size_t n = f->len - off < chunk ? f->len - off : chunk;
		pd_frame_hdr h = {.len = (uint32_t)n, .type = PD_FT_DATA, .request_id = rid};
		uint8_t raw[PD_FRAME_HDR_LEN];

		pd_frame_hdr_encode(raw, &h);
		evbuffer_add(out, raw, sizeof raw);
		evbuffer_add_reference(out, f->data + off, n, NULL, NULL);
		L.st.bytes_up += sizeof raw + n;
	}
}

static req *req_slot(conn *c)
{
	for (uint32_t i = 0; i < L.o.inflight; i++)
		if (!c->reqs[i].rid)
			return &c->reqs[i];
	return NULL;
}

static void send_request(conn *c, stream *s)
{
	const lfile *f = &L.seqs[s->sq].files[s->pos];
	req *r = req_slot(c);
	char name[PD_MAX_STREAM + 1];
	pd_msg m = {.type = PD_FT_DELTA_BEGIN};

	if (!r)
		die("internal: no request slot");
	if (++c->next_rid == 0)
		c->next_rid = 1;
	*r = (req){.rid = c->next_rid, .s = s, .t0_us = now_us()};
	c->nopen++;
	if (!s->retry && L.phase != P_SEED)
		L.st.started++;
	snprintf(name, sizeof name, "%s/%u", L.o.prefix, s->idx);
	m.flags = L.o.no_data ? PD_FLAG_BEGIN_NO_DATA : 0;
	m.request_id = r->rid;
	m.u.begin.seq = s->seq;
	m.u.begin.incarnation = s->inc;
	m.u.begin.first_policy = PD_WIRE_FIRST_KEEP;
	m.u.begin.stream = pd_str_c(name);
	send_msg(c, &m);
	send_data(c, r->rid, f);
	m = (pd_msg){.type = PD_FT_DATA_END, .request_id = r->rid};
	m.u.data_end.total_bytes = f->len;
	memcpy(m.u.data_end.hash, c->version >= 2 ? f->crc : f->hash, PD_CONTENT_HASH_LEN);
	send_msg(c, &m);
}

static bool can_send(const conn *c)
{
	return c->state == C_READY && !c->failing && c->nopen < c->max_inflight;
}

static bool new_allowed(void)
{
	return L.phase == P_RUN && (!L.o.requests || L.st.started < L.o.requests);
}

/* Starts what this connection may start now: retries (they sit at the head
 * of the queue) while the run or its drain lasts, new requests only in
 * closed-loop mode (with --rate, pace() starts them). */
static void kick(conn *c)
{
	while (can_send(c) && c->ready_head) {
		const stream *s = c->ready_head;
		if (L.phase == P_SEED) {
			/* Closed loop, one request per connection, first profiles only. */
			if (c->nopen >= 1 || s->seq != 1)
				break;
		} else if (s->retry ? L.phase > P_DRAIN : (L.o.rate > 0 || !new_allowed())) {
			break;
		}
		send_request(c, ready_pop(c));
	}
}

/* Open loop (--rate): new requests at the offered rate, round-robin over
 * the connections. Allowance that cannot be spent because every stream is
 * busy is counted as lag (the offered load was not sustained). */
static void pace(uint64_t now)
{
	uint32_t scanned = 0;

	L.allow += L.o.rate * secs(now - L.t_pace);
	L.t_pace = now;
	while (L.allow >= 1 && new_allowed() && scanned < L.o.conns) {
		conn *c = &L.conns[L.rr++ % L.o.conns];
		if (!can_send(c) || !c->ready_head || c->ready_head->retry) {
			scanned++;
			continue;
		}
		send_request(c, ready_pop(c));
		L.allow -= 1;
		scanned = 0;
	}
	if (L.allow > L.o.rate) { /* keep at most one second of backlog */
		L.st.lagged += (uint64_t)(L.allow - L.o.rate);
		L.allow = L.o.rate;
	}
}

/* ---- connections ------------------------------------------------------------- */

static void on_read(struct bufferevent *bev, void *arg);
static void on_event(struct bufferevent *bev, short what, void *arg);

static uint32_t conns_connecting(void)
{
	uint32_t n = 0;
	for (uint32_t i = 0; i < L.o.conns; i++)
		n += L.conns[i].state == C_CONNECTING || L.conns[i].state == C_HELLO;
	return n;
}

static void conn_start(conn *c)
{
	SSL *ssl = SSL_new(L.ssl_ctx);

	if (!ssl || !SSL_set1_host(ssl, "localhost")) /* the certificate names localhost */
		die("SSL_new failed");
	c->bev = bufferevent_openssl_socket_new(L.base, -1, ssl, BUFFEREVENT_SSL_CONNECTING,
						BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
	if (!c->bev)
		die("bufferevent_openssl_socket_new failed");
	bufferevent_openssl_set_allow_dirty_shutdown(c->bev, 1);
	bufferevent_setcb(c->bev, on_read, NULL, on_event, c);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
	c->state = C_CONNECTING;
	c->failing = false;
	c->nopen = 0;
	L.st.connects++;
	const struct sockaddr_in *sa = &L.sa[(size_t)(c - L.conns) % L.o.nport];

	if (bufferevent_socket_connect(c->bev, (const struct sockaddr *)sa, sizeof *sa) != 0) {
		bufferevent_free(c->bev);
		c->bev = NULL;
		c->state = C_DOWN;
		c->retry_at_us = now_us() + 1000000;
	}
}

/* The connection is gone (error, EOF, protocol violation): its open
 * requests are retried on the next connection. */
static void conn_down(conn *c, bool reconnect)
{
	for (uint32_t i = 0; i < L.o.inflight; i++) {
		req *r = &c->reqs[i];
		if (!r->rid)
			continue;
		L.st.retries++;
		stream_delay(r->s, RETRY_DELAY_MS);
		r->rid = 0;
	}
	/* A connection the server retired with GOODBYE, once empty, is not lost. */
	if (c->state == C_READY || c->state == C_HELLO || (c->state == C_BYE && c->nopen))
		L.st.conn_lost += L.phase < P_BYE;
	if (c->bev)
		bufferevent_free(c->bev);
	c->bev = NULL;
	c->nopen = 0;
	c->failing = false;
	c->state = C_DOWN;
	c->backoff_ms = c->backoff_ms ? (c->backoff_ms * 2 > 2000 ? 2000 : c->backoff_ms * 2) : 100;
	c->retry_at_us = reconnect ? now_us() + c->backoff_ms * 1000ull : UINT64_MAX;
}

static void conn_fail(conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void conn_fail(conn *c, const char *fmt, ...)
{
	char msg[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (L.phase < P_BYE)
		note("connection %u: %s", c->idx, msg);
	c->failing = true;
}

static void violation(conn *c, const char *what, uint32_t rid)
{
	L.st.violations++;
	conn_fail(c, "protocol violation: %s (request %u)", what, rid);
}

/* ---- responses ---------------------------------------------------------------- */

static req *req_find(conn *c, uint32_t rid)
{
	for (uint32_t i = 0; rid && i < L.o.inflight; i++)
		if (c->reqs[i].rid == rid)
			return &c->reqs[i];
	return NULL;
}

static void lat_push(uint64_t us)
{
	if (L.st.nlat == L.st.lat_cap) {
		size_t cap = L.st.lat_cap ? L.st.lat_cap * 2 : 65536;
		uint32_t *p = realloc(L.st.lat, cap * sizeof *p);
		if (!p)
			die("out of memory");
		L.st.lat = p;
		L.st.lat_cap = cap;
	}
	L.st.lat[L.st.nlat++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
}

static void req_release(conn *c, req *r)
{
	r->rid = 0;
	c->nopen--;
	ready_push(c, r->s, false);
}

static void check_status(const stream *s, const pd_msg_result *res)
{
	bool baseline = res->orig_status == PD_WIRE_STATUS_BASELINE;

	/* A retry may be answered DUPLICATE; otherwise the status is known. */
	if (res->status == PD_WIRE_STATUS_DUPLICATE && !s->retry)
		L.st.unexpected++;
	else if (baseline != s->want_baseline)
		L.st.unexpected++;
}

static void on_result(conn *c, const pd_msg *m)
{
	req *r = req_find(c, m->request_id);
	const pd_msg_result *res = &m->u.result;

	if (!r || r->got_result)
		return violation(c, "RESULT for no open request", m->request_id);
	if (res->seq != r->s->seq)
		return violation(c, "RESULT.seq is not the request's", m->request_id);
	r->got_result = true;
	r->status = res->status;
	r->announced = res->output_bytes;
	check_status(r->s, res);
	if (L.phase == P_SEED || now_us() < L.t_measure)
		return; /* seeding or warm-up: not in the figures */
	L.st.by_status[res->status]++;
	if (res->reason < 5)
		L.st.by_reason[res->reason]++;
}

static void on_result_data(conn *c, const pd_frame_hdr *h, const uint8_t *payload)
{
	req *r = req_find(c, h->request_id);

	if (!r || !r->got_result)
		return violation(c, "RESULT_DATA for no open response", h->request_id);
	r->crc = (uint32_t)crc32(r->crc, payload, h->len);
	r->got += h->len;
}

static void on_result_end(conn *c, const pd_msg *m)
{
	req *r = req_find(c, m->request_id);
	uint64_t now = now_us();

	if (!r || !r->got_result)
		return violation(c, "RESULT_END for no open response", m->request_id);
	if (m->u.result_end.total_bytes != r->got || m->u.result_end.crc32 != r->crc ||
	    (r->announced && r->announced != r->got))
		return violation(c, "RESULT_END size or CRC mismatch", m->request_id);
	if (L.o.no_data && r->got)
		return violation(c, "RESULT_DATA despite NO_DATA", m->request_id);
	if (L.phase == P_SEED) {
		L.st.seed_done++;
	} else if (now >= L.t_measure) {
		lat_push(now - r->t0_us);
		L.st.completed++;
		L.t_last_done = now;
	} else {
		L.st.warmup_done++;
	}
	stream_advance(r->s);
	req_release(c, r);
}

static void on_request_error(conn *c, const pd_msg *m)
{
	req *r = req_find(c, m->request_id);
	const pd_msg_error *er = &m->u.error;
	stream *s;

	if (!r)
		return violation(c, "ERROR for no open request", m->request_id);
	s = r->s;
	L.st.req_errors[er->code]++;
	if (er->retryable) {
		/* Exponential backoff per stream (each retry uploads the profile again),
		 * at least what the server suggests, with jitter against lockstep. */
		uint64_t delay;
		s->backoff_ms = s->backoff_ms ? s->backoff_ms * 2 : RETRY_DELAY_MS;
		if (s->backoff_ms > MAX_BACKOFF_MS)
			s->backoff_ms = MAX_BACKOFF_MS;
		delay = s->backoff_ms / 2 + (uint64_t)rand() % (s->backoff_ms / 2 + 1);
		if (er->detail == PD_DETAIL_OVERLOADED && er->value > delay)
			delay = er->value;
		L.st.retries++;
		if (L.phase == P_SEED)
			L.st.seed_retries++;
		r->rid = 0;
		c->nopen--;
		stream_delay(s, delay);
		return;
	}
	L.st.fatal++;
	if (L.phase == P_SEED && s->seq == 1)
		L.st.seed_failed++; /* seeding ends without it (and the run fails) */
	note("request %s/%u seq %llu: ERROR %s/%u: %.*s", L.o.prefix, s->idx,
	     (unsigned long long)s->seq, pd_code_name(er->code), er->detail,
	     (int)er->message.len, er->message.p);
	if (er->code == PD_E_SEQ) { /* start over as a new producer */
		s->inc++;
		s->seq++;
		s->retry = false;
		s->want_baseline = true;
	} else {
		stream_advance(s);
	}
	req_release(c, r);
}

static void on_hello_ok(conn *c, const pd_msg_hello_ok *h)
{
	c->max_inflight = h->max_inflight < L.o.inflight ? h->max_inflight : L.o.inflight;
	c->max_frame = h->max_frame;
	c->version = h->version;
	c->keepalive_ms = h->keepalive_ms;
	c->state = C_READY;
	c->backoff_ms = 0;
	if (!c->ever_ready)
		L.nready++;
	c->ever_ready = true;
}

static void on_conn_error(conn *c, const pd_msg *m)
{
	const pd_msg_error *er = &m->u.error;

	L.st.conn_errors[er->code]++;
	if (!er->retryable) {
		L.st.fatal++;
		if (er->code == PD_E_AUTH)
			die("authentication failed: %.*s", (int)er->message.len, er->message.p);
	}
	conn_fail(c, "connection ERROR %s/%u: %.*s", pd_code_name(er->code), er->detail,
		  (int)er->message.len, er->message.p);
}

static void on_goodbye(conn *c)
{
	if (c->state == C_READY)
		c->state = C_BYE;
}

static void handle_msg(conn *c, const pd_msg *m)
{
	if (c->state == C_HELLO && m->type != PD_FT_HELLO_OK && m->type != PD_FT_ERROR)
		return violation(c, "frame before HELLO_OK", m->request_id);
	switch (m->type) {
	case PD_FT_HELLO_OK:
		if (c->state != C_HELLO)
			return violation(c, "second HELLO_OK", 0);
		on_hello_ok(c, &m->u.hello_ok);
		kick(c);
		return;
	case PD_FT_ERROR:
		if (m->request_id)
			on_request_error(c, m);
		else
			on_conn_error(c, m);
		return;
	case PD_FT_RESULT: on_result(c, m); return;
	case PD_FT_RESULT_END: on_result_end(c, m); return;
	case PD_FT_PING: send_simple(c, PD_FT_PONG, m->u.ping.opaque); return;
	case PD_FT_PONG: return;
	case PD_FT_GOODBYE: on_goodbye(c); return;
	default: violation(c, "unexpected frame type", m->request_id);
	}
}

/* Handles the first frame of in; false when it is incomplete. */
static bool read_frame(conn *c, struct evbuffer *in)
{
	uint8_t raw[PD_FRAME_HDR_LEN];
	const uint8_t *p;
	pd_frame_hdr h;
	pd_msg m;
	pd_err e;

	if (evbuffer_get_length(in) < PD_FRAME_HDR_LEN)
		return false;
	evbuffer_copyout(in, raw, sizeof raw);
	if (pd_frame_hdr_decode(raw, sizeof raw, &h, PD_FRAME_MAX_ABS, &e)) {
		violation(c, e.msg, 0);
		return false;
	}
	if (!(pd_frame_type_senders(h.type) & PD_SIDE_SERVER)) {
		violation(c, "frame type the server may not send", h.request_id);
		return false;
	}
	if (evbuffer_get_length(in) < PD_FRAME_HDR_LEN + (size_t)h.len)
		return false;
	p = evbuffer_pullup(in, (ev_ssize_t)(PD_FRAME_HDR_LEN + h.len));
	if (!p)
		die("out of memory");
	if (h.type == PD_FT_RESULT_DATA) {
		on_result_data(c, &h, p + PD_FRAME_HDR_LEN);
	} else if (pd_msg_decode(&h, p + PD_FRAME_HDR_LEN, &m, &e)) {
		violation(c, e.msg, h.request_id);
	} else {
		handle_msg(c, &m);
	}
	L.st.bytes_down += PD_FRAME_HDR_LEN + (size_t)h.len;
	evbuffer_drain(in, PD_FRAME_HDR_LEN + (size_t)h.len);
	return true;
}

static void after_callback(conn *c)
{
	if (c->state == C_BYE && c->nopen == 0 && L.phase < P_BYE)
		c->failing = true; /* the server said GOODBYE: reconnect for new requests */
	if (c->failing)
		conn_down(c, L.phase < P_BYE);
	else
		kick(c);
}

static void on_read(struct bufferevent *bev, void *arg)
{
	conn *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);

	while (!c->failing && read_frame(c, in))
		;
	after_callback(c);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
	conn *c = arg;
	unsigned long err;
	char why[256] = "";

	if (what & BEV_EVENT_CONNECTED) {
		int one = 1;
		setsockopt(bufferevent_getfd(bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		c->state = C_HELLO;
		send_hello(c);
		return;
	}
	/* libevent reports OpenSSL's error queue, or an SSL_get_error() value. */
	while ((err = bufferevent_get_openssl_error(bev)) != 0) {
		if (ERR_GET_LIB(err))
			ERR_error_string_n(err, why, sizeof why);
		else
			snprintf(why, sizeof why, "SSL_get_error %lu", err);
	}
	if (!why[0] && (what & BEV_EVENT_ERROR))
		snprintf(why, sizeof why, "%s", evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
	if (c->state == C_READY && c->nopen && L.phase < P_BYE)
		note("connection %u lost with %u requests open: %s%s%s", c->idx, c->nopen,
		     what & BEV_EVENT_EOF ? "EOF" : "error", why[0] ? ": " : "", why);
	conn_down(c, L.phase < P_BYE);
}

/* ---- idle sockets --------------------------------------------------------------- */

static void idle_open(idle_sock *s);

static void on_idle(evutil_socket_t fd, short what, void *arg)
{
	idle_sock *s = arg;
	char buf[512];
	ssize_t n = recv(fd, buf, sizeof buf, 0);

	if (n > 0 || (n < 0 && (errno == EAGAIN || errno == EINTR)))
		return;
	/* The server closed it (handshake deadline, connection limit). */
	event_free(s->ev);
	s->ev = NULL;
	close(s->fd);
	s->fd = -1;
	L.st.idle_closed++;
	s->reopen_at_us = now_us() + IDLE_REOPEN_US;
}

static void idle_open(idle_sock *s)
{
	s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (s->fd < 0) {
		s->reopen_at_us = now_us() + IDLE_REOPEN_US;
		return;
	}
	const struct sockaddr_in *sa = &L.sa[(size_t)(s - L.idle) % L.o.nport];

	if (connect(s->fd, (const struct sockaddr *)sa, sizeof *sa) != 0 && errno != EINPROGRESS) {
		close(s->fd);
		s->fd = -1;
		s->reopen_at_us = now_us() + IDLE_REOPEN_US;
		return;
	}
	s->ev = event_new(L.base, s->fd, EV_READ | EV_PERSIST, on_idle, s);
	if (!s->ev)
		die("event_new failed");
	event_add(s->ev, NULL);
	s->reopen_at_us = 0;
}

static uint32_t idle_count(void)
{
	uint32_t n = 0;
	for (uint32_t i = 0; i < L.o.idle; i++)
		n += L.idle[i].fd >= 0;
	return n;
}

/* ---- the clock: phases, retries, reconnects, keepalive, soak --------------------------- */

static uint32_t total_open(void)
{
	uint32_t n = 0;
	for (uint32_t i = 0; i < L.o.conns; i++)
		n += L.conns[i].nopen;
	return n;
}

static void move_due_streams(uint64_t now)
{
	stream **pp = &L.delayed;

	while (*pp) {
		stream *s = *pp;
		if (s->due_us > now) {
			pp = &s->next;
			continue;
		}
		*pp = s->next;
		s->due_us = 0;
		ready_push(s->c, s, true); /* retries go first */
	}
}

static void reconnect_due(uint64_t now)
{
	uint32_t busy = conns_connecting();

	/* At most 64 handshakes at a time: the listen backlog is finite. */
	for (uint32_t i = 0; i < L.o.conns && busy < 64; i++) {
		conn *c = &L.conns[i];
		if (c->state == C_DOWN && c->retry_at_us <= now) {
			conn_start(c);
			busy++;
		}
	}
	for (uint32_t i = 0; i < L.o.idle; i++)
		if (L.idle[i].fd < 0 && L.idle[i].reopen_at_us <= now)
			idle_open(&L.idle[i]);
}

static void keepalive(uint64_t now)
{
	for (uint32_t i = 0; i < L.o.conns; i++) {
		conn *c = &L.conns[i];
		if (c->state == C_READY && c->keepalive_ms &&
		    now - c->last_tx_us >= c->keepalive_ms * 1000ull)
			send_simple(c, PD_FT_PING, now);
	}
}

static void soak_print(uint64_t now)
{
	srv_sample s = server_sample();
	double mb = (double)s.rss_kb / 1024.0;
	double dt = secs(now - (L.next_soak - SOAK_PERIOD_US));

	printf("soak t=%4.0fs responses=%llu rate=%.1f/s open=%u server_rss=%.1fMB hwm=%.1fMB\n",
	       secs(now - L.t_start), (unsigned long long)L.st.completed,
	       (double)(L.st.completed - L.soak_done_prev) / (dt > 0 ? dt : 1), total_open(), mb,
	       (double)s.hwm_kb / 1024.0);
	fflush(stdout);
	L.soak_done_prev = L.st.completed;
	if (!s.ok)
		return;
	if (L.soak_rss_first == 0)
		L.soak_rss_first = L.soak_rss_min = mb;
	L.soak_rss_min = mb < L.soak_rss_min ? mb : L.soak_rss_min;
	L.soak_rss_max = mb > L.soak_rss_max ? mb : L.soak_rss_max;
	L.soak_rss_last = mb;
}

/* The machine's load average, so that figures carry their context. */
static const char *loadavg(void)
{
	static char buf[64];
	FILE *fp = fopen("/proc/loadavg", "r");

	snprintf(buf, sizeof buf, "?");
	if (fp) {
		if (fscanf(fp, "%63s", buf) != 1)
			snprintf(buf, sizeof buf, "?");
		fclose(fp);
	}
	return buf;
}

static double self_cpu(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
	       (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* The CPU times and the load average are sampled when the measured
 * window opens (after the warm-up). */
static void measure_start_if_due(uint64_t now)
{
	if (L.measuring || now < L.t_measure)
		return;
	L.measuring = true;
	L.me0 = self_cpu();
	L.srv0 = server_sample();
	snprintf(L.load0, sizeof L.load0, "%s", loadavg());
}

static void start_run(uint64_t now);

/* --seed: every stream's first profile, closed loop at one request per
 * connection, before the measured run; the run then sees deltas only. */
static void start_seed(uint64_t now)
{
	L.phase = P_SEED;
	L.t_seed = now;
	L.srv0 = server_sample();
	printf("pd_load: %u connections up in %.2f s; seeding %u streams with their first profiles\n",
	       L.o.conns, secs(now - L.t_begin), L.o.streams);
	fflush(stdout);
	for (uint32_t i = 0; i < L.o.conns; i++)
		kick(&L.conns[i]);
}

static void end_seed(uint64_t now)
{
	srv_sample s = server_sample();

	L.t_seed_end = now;
	L.seed_cpu_s = s.ok && L.srv0.ok ? s.cpu_s - L.srv0.cpu_s : 0;
	printf("pd_load: seeded %llu streams in %.1f s (%.1f first profiles/s, %llu refused)\n",
	       (unsigned long long)L.st.seed_done, secs(now - L.t_seed),
	       (double)L.st.seed_done / secs(now - L.t_seed), (unsigned long long)L.st.seed_failed);
	fflush(stdout);
	start_run(now);
}

static void start_run(uint64_t now)
{
	L.phase = P_RUN;
	L.t_start = now;
	L.t_measure = now + (uint64_t)(L.o.warmup * 1e6);
	L.next_soak = now + SOAK_PERIOD_US;
	L.t_pace = now;
	measure_start_if_due(now);
	printf("pd_load: %u connections up, load starts %.2f s after the start\n", L.o.conns,
	       secs(now - L.t_begin));
	fflush(stdout);
	for (uint32_t i = 0; i < L.o.conns; i++)
		kick(&L.conns[i]);
}

static void say_goodbye(uint64_t now)
{
	L.phase = P_BYE;
	L.t_bye = now;
	for (uint32_t i = 0; i < L.o.conns; i++) {
		conn *c = &L.conns[i];
		if (c->state == C_READY)
			send_simple(c, PD_FT_GOODBYE, 0);
		else if (c->state != C_BYE)
			conn_down(c, false);
	}
}

static bool all_down(void)
{
	for (uint32_t i = 0; i < L.o.conns; i++)
		if (L.conns[i].state != C_DOWN)
			return false;
	return true;
}

/* SIGINT / SIGTERM: the run ends as if its time were up (open requests finish, report);
 * before the run has started (connecting, seeding) the tool exits at once; a second signal
 * kills it. */
static volatile sig_atomic_t stop_asked;

static void on_stop_signal(int sig)
{
	stop_asked = 1;
	signal(sig, SIG_DFL);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
	uint64_t now = now_us();
	double limit = (L.o.soak > 0 ? L.o.soak : L.o.seconds) + L.o.warmup;

	if (stop_asked && L.phase < P_RUN)
		die("interrupted before the run started");
	if (L.phase < P_BYE)
		reconnect_due(now);
	if (L.phase == P_CONNECT && L.nready >= L.o.conns && L.o.seed)
		start_seed(now);
	else if (L.phase == P_CONNECT && L.nready >= L.o.conns)
		start_run(now);
	if (L.phase == P_SEED && L.st.seed_done + L.st.seed_failed >= L.o.streams)
		end_seed(now);
	else if (L.phase == P_SEED && now - L.t_seed > SEED_TIMEOUT_US)
		die("seeding: only %llu of %u first profiles answered in %.0f s",
		    (unsigned long long)L.st.seed_done, L.o.streams, secs(SEED_TIMEOUT_US));
	else if (L.phase == P_CONNECT && now - L.t_begin > CONNECT_TIMEOUT_US)
		die("only %u of %u connections came up in %.0f s", L.nready, L.o.conns,
		    secs(CONNECT_TIMEOUT_US));
	move_due_streams(now);
	if (L.phase == P_RUN)
		measure_start_if_due(now);
	if (L.phase == P_RUN && (stop_asked || secs(now - L.t_start) >= limit ||
				 (L.o.requests && L.st.started >= L.o.requests))) {
		L.phase = P_DRAIN;
		L.t_stop = now;
	}
	if (L.phase == P_RUN && L.o.soak > 0 && now >= L.next_soak) {
		soak_print(now);
		L.next_soak += SOAK_PERIOD_US;
	}
	if (L.phase == P_DRAIN && (total_open() == 0 || now - L.t_stop > DRAIN_TIMEOUT_US)) {
		L.st.unfinished = total_open();
		for (stream *s = L.delayed; s; s = s->next)
			L.st.unfinished++;
		say_goodbye(now);
	}
	if (L.phase == P_BYE && (all_down() || now - L.t_bye > BYE_TIMEOUT_US)) {
		L.phase = P_DONE;
		event_base_loopbreak(L.base);
		return;
	}
	if (L.phase == P_SEED || L.phase == P_RUN || L.phase == P_DRAIN) {
		for (uint32_t i = 0; i < L.o.conns; i++)
			kick(&L.conns[i]);
		if (L.o.rate > 0 && L.phase != P_SEED)
			pace(now);
		keepalive(now);
	}
}

/* ---- report ------------------------------------------------------------------------------ */

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

static double pct_ms(double p)
{
	size_t i;
	if (!L.st.nlat)
		return 0;
	i = (size_t)(p * (double)(L.st.nlat - 1) + 0.5);
	return L.st.lat[i] / 1000.0;
}

static void print_errors(void)
{
	bool any = false;

	printf("  errors:");
	for (int i = 1; i < PD_E__COUNT; i++) {
		if (L.st.req_errors[i]) {
			printf(" %s %llu (%s)", pd_code_name(i), (unsigned long long)L.st.req_errors[i],
			       pd_code_retryable(i) ? "retried" : "FATAL");
			any = true;
		}
		if (L.st.conn_errors[i]) {
			printf(" connection-%s %llu", pd_code_name(i),
			       (unsigned long long)L.st.conn_errors[i]);
			any = true;
		}
	}
	if (L.st.violations) {
		printf(" protocol-violations %llu (FATAL)", (unsigned long long)L.st.violations);
		any = true;
	}
	printf("%s\n", any ? "" : " none");
}

static double seed_rate(void)
{
	double t = secs(L.t_seed_end - L.t_seed);
	return t > 0 ? (double)L.st.seed_done / t : 0;
}

static void report(void)
{
	uint64_t end = L.t_last_done > L.t_measure ? L.t_last_done : L.t_stop;
	double run = end > L.t_measure ? secs(end - L.t_measure) : 0;
	double rate = run > 0 ? (double)L.st.completed / run : 0;
	srv_sample s = server_sample();
	double me = self_cpu() - L.me0, srv_cpu = 0, p50, p90, p99, pmax;

	qsort(L.st.lat, L.st.nlat, sizeof *L.st.lat, cmp_u32);
	p50 = pct_ms(0.50);
	p90 = pct_ms(0.90);
	p99 = pct_ms(0.99);
	pmax = pct_ms(1.0);
	printf("pd_load: %s:%d (%zu node%s), %u TLS connections, %u streams over %zu sequences, "
	       "%u idle sockets (%u open at the end, %llu closed by the server)\n",
	       L.o.host, L.o.port[0], L.o.nport, L.o.nport == 1 ? "" : "s", L.o.conns, L.o.streams, L.nseqs, L.o.idle, idle_count(),
	       (unsigned long long)L.st.idle_closed);
	if (L.o.rate > 0)
		printf("  offered: %.1f requests/s (open loop), %llu not started for want of an idle "
		       "stream or connection (lag)\n", L.o.rate, (unsigned long long)L.st.lagged);
	else
		printf("  offered: closed loop, up to %u requests in flight per connection\n",
		       L.o.inflight);
	if (L.o.seed)
		printf("  seed: %llu first profiles (BASELINE) in %.1f s = %.1f/s, closed loop, one per "
		       "connection, %llu retries; server CPU %.1f s = %.2f ms per answer; not counted "
		       "below\n",
		       (unsigned long long)L.st.seed_done, secs(L.t_seed_end - L.t_seed), seed_rate(),
		       (unsigned long long)L.st.seed_retries, L.seed_cpu_s,
		       L.st.seed_done ? 1e3 * L.seed_cpu_s / (double)L.st.seed_done : 0);
	if (L.o.warmup > 0)
		printf("  warm-up: %.0f s, %llu responses in it, not counted below\n", L.o.warmup,
		       (unsigned long long)L.st.warmup_done);
	printf("  run: %.1f s, %llu responses = %.1f deltas/s (%llu requests started, %llu retries, "
	       "%llu laps, %llu unfinished)\n",
	       run, (unsigned long long)L.st.completed, rate, (unsigned long long)L.st.started,
	       (unsigned long long)(L.st.retries - L.st.seed_retries), (unsigned long long)L.st.laps,
	       (unsigned long long)L.st.unfinished);
	printf("  status: DELTA %llu, BASELINE %llu (first %llu, reset %llu, evicted %llu, moved %llu), "
	       "DUPLICATE %llu; unexpected %llu\n",
	       (unsigned long long)L.st.by_status[1], (unsigned long long)L.st.by_status[2],
	       (unsigned long long)L.st.by_reason[1], (unsigned long long)L.st.by_reason[2],
	       (unsigned long long)L.st.by_reason[3], (unsigned long long)L.st.by_reason[4],
	       (unsigned long long)L.st.by_status[3], (unsigned long long)L.st.unexpected);
	printf("  latency (DELTA_BEGIN queued -> RESULT_END): p50 %.1f ms, p90 %.1f ms, p99 %.1f ms, "
	       "max %.1f ms\n", p50, p90, p99, pmax);
	printf("  traffic: up %.1f MB, down %.1f MB; connections lost %llu, connection attempts %llu\n",
	       (double)L.st.bytes_up / 1e6, (double)L.st.bytes_down / 1e6,
	       (unsigned long long)L.st.conn_lost, (unsigned long long)L.st.connects);
	print_errors();
	if (s.ok) {
		srv_cpu = L.srv0.ok ? s.cpu_s - L.srv0.cpu_s : s.cpu_s;
		printf("  server pid %d%s: VmRSS %.1f MB, VmHWM %.1f MB, %llu threads, CPU %.1f s during "
		       "the run (%.0f%% of one core, %.2f ms per response)\n",
		       L.o.server_pid[0], L.o.npid > 1 ? " and the others (sum)" : "", (double)s.rss_kb / 1024, (double)s.hwm_kb / 1024,
		       (unsigned long long)s.threads, srv_cpu, run > 0 ? 100 * srv_cpu / run : 0,
		       L.st.completed ? 1e3 * srv_cpu / (double)L.st.completed : 0);
	}
	printf("  client: CPU %.1f s (%.0f%% of one core; it shares the machine with the server); "
	       "load average %s at the start, %s at the end\n",
	       me, run > 0 ? 100 * me / run : 0, L.load0, loadavg());
	if (L.o.soak > 0)
		printf("  soak: server RSS first %.1f MB, last %.1f MB, min %.1f MB, max %.1f MB\n",
		       L.soak_rss_first, L.soak_rss_last, L.soak_rss_min, L.soak_rss_max);
	printf("RESULT rate=%.1f p50_ms=%.1f p90_ms=%.1f p99_ms=%.1f max_ms=%.1f responses=%llu "
	       "fatal=%llu violations=%llu retries=%llu unexpected=%llu rss_kb=%llu hwm_kb=%llu "
	       "server_cpu_s=%.1f client_cpu_s=%.1f seconds=%.1f lagged=%llu seed_rate=%.1f "
	       "seed_cpu_s=%.1f\n",
	       rate, p50, p90, p99, pmax, (unsigned long long)L.st.completed,
	       (unsigned long long)L.st.fatal, (unsigned long long)L.st.violations,
	       (unsigned long long)(L.st.retries - L.st.seed_retries), (unsigned long long)L.st.unexpected,
	       (unsigned long long)s.rss_kb, (unsigned long long)s.hwm_kb, srv_cpu, me, run,
	       (unsigned long long)L.st.lagged, seed_rate(), L.seed_cpu_s);
	if (L.st.fatal || L.st.violations || !L.st.completed)
		L.exit_code = 1;
	if (L.o.max_p99_ms > 0 && p99 > L.o.max_p99_ms) {
		printf("pd_load: p99 %.1f ms is above --max-p99-ms %.1f\n", p99, L.o.max_p99_ms);
		L.exit_code = 1;
	}
	if (L.o.min_rate > 0 && rate < L.o.min_rate) {
		printf("pd_load: %.1f deltas/s is below --min-rate %.1f\n", rate, L.o.min_rate);
		L.exit_code = 1;
	}
}

/* ---- setup ------------------------------------------------------------------------------- */

static void usage(void)
{
	fputs("usage: pd_load --port P[,P...] --ca CA (--token T | --token-file F) --seq DIR [--seq DIR]...\n"
	      "               [--connections 100] [--streams 1000] [--requests 0] [--seconds 30]\n"
	      "               [--idle 0] [--server-pid PID[,PID...]] [--soak SECONDS] [--inflight 64]\n"
	      "               [--chunk 65536] [--no-data] [--prefix NAME] [--max-p99-ms MS]\n"
	      "               [--rate R] [--warmup SECONDS] [--min-rate R] [--seed] [--host 127.0.0.1]\n",
	      stderr);
	exit(2);
}

static const char *read_token_file(const char *path)
{
	static char tok[PD_MAX_TOKEN + 2];
	FILE *fp = fopen(path, "r");

	if (!fp || !fgets(tok, sizeof tok, fp))
		die("%s: cannot read a token", path);
	fclose(fp);
	tok[strcspn(tok, "\r\n")] = 0;
	return tok;
}

static uint64_t num(const char *s, const char *what)
{
	char *end;
	unsigned long long v = strtoull(s, &end, 10);
	if (*s == 0 || *end != 0)
		die("%s: not a number: %s", what, s);
	return v;
}

/* A comma-separated list of 1..16 numbers in 1..max into out; returns how many. */
static size_t num_list(const char *s, const char *what, unsigned long max, int out[16])
{
	char buf[256], *save = NULL;
	size_t n = 0;

	if (strlen(s) >= sizeof buf)
		die("%s: list too long: %s", what, s);
	strcpy(buf, s);
	for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		uint64_t v = num(t, what);
		if (n == 16 || v < 1 || v > max)
			die("%s: at most 16 numbers in 1..%lu: %s", what, max, s);
		out[n++] = (int)v;
	}
	if (!n)
		die("%s: empty list", what);
	return n;
}

static void parse_args(int argc, char **argv)
{
	static const struct option lo[] = {
		{"host", 1, 0, 'H'},	    {"port", 1, 0, 'p'},       {"ca", 1, 0, 'a'},
		{"token", 1, 0, 't'},	    {"token-file", 1, 0, 'T'}, {"seq", 1, 0, 'q'},
		{"connections", 1, 0, 'c'}, {"streams", 1, 0, 's'},    {"requests", 1, 0, 'n'},
		{"seconds", 1, 0, 'd'},	    {"idle", 1, 0, 'i'},       {"server-pid", 1, 0, 'P'},
		{"soak", 1, 0, 'S'},	    {"inflight", 1, 0, 'f'},   {"chunk", 1, 0, 'k'},
		{"no-data", 0, 0, 'N'},	    {"prefix", 1, 0, 'x'},     {"max-p99-ms", 1, 0, 'm'},
		{"min-rate", 1, 0, 'r'},    {"rate", 1, 0, 'R'},       {"warmup", 1, 0, 'w'},
		{"seed", 0, 0, 'e'},	    {"help", 0, 0, 'h'},	    {0, 0, 0, 0}};
	opts *o = &L.o;
	int ch;

	*o = (opts){.host = "127.0.0.1", .conns = 100, .streams = 1000, .inflight = 64,
		    .chunk = 65536, .seconds = 30};
	while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (ch) {
		case 'H': o->host = optarg; break;
		case 'p': o->nport = num_list(optarg, "--port", 65535, o->port); break;
		case 'a': o->ca = optarg; break;
		case 't': o->token = optarg; break;
		case 'T': o->token = read_token_file(optarg); break;
		case 'q':
			if (o->nseq == 64)
				die("at most 64 --seq");
			o->seq_dirs[o->nseq++] = optarg;
			break;
		case 'c': o->conns = (uint32_t)num(optarg, "--connections"); break;
		case 's': o->streams = (uint32_t)num(optarg, "--streams"); break;
		case 'n': o->requests = num(optarg, "--requests"); break;
		case 'd': o->seconds = atof(optarg); break;
		case 'i': o->idle = (uint32_t)num(optarg, "--idle"); break;
		case 'P': o->npid = num_list(optarg, "--server-pid", 4194304, o->server_pid); break;
		case 'S': o->soak = atof(optarg); break;
		case 'f': o->inflight = (uint32_t)num(optarg, "--inflight"); break;
		case 'k': o->chunk = (uint32_t)num(optarg, "--chunk"); break;
		case 'N': o->no_data = true; break;
		case 'x': o->prefix = optarg; break;
		case 'm': o->max_p99_ms = atof(optarg); break;
		case 'r': o->min_rate = atof(optarg); break;
		case 'R': o->rate = atof(optarg); break;
		case 'w': o->warmup = atof(optarg); break;
		case 'e': o->seed = true; break;
		default: usage();
		}
	}
	if (optind != argc || !o->nport || !o->ca || !o->token || !o->nseq)
		usage();
	if (!o->conns || !o->streams || !o->inflight || o->inflight > 4096 || o->chunk < 1 ||
	    o->chunk > PD_FRAME_MIN_LIMIT)
		die("bad --connections / --streams / --inflight / --chunk");
	if (o->seed && o->no_data)
		die("--seed needs profiles: not with --no-data");
	if (o->seconds <= 0 && !o->requests && o->soak <= 0)
		die("unbounded: give --seconds, --requests or --soak");
}

/* Loopback only: this tool must never load someone else's server. */
static void resolve_loopback(void)
{
	for (size_t i = 0; i < L.o.nport; i++) {
		struct sockaddr_in *sa = &L.sa[i];

		memset(sa, 0, sizeof *sa);
		sa->sin_family = AF_INET;
		sa->sin_port = htons((uint16_t)L.o.port[i]);
		if (inet_pton(AF_INET, L.o.host, &sa->sin_addr) != 1)
			die("--host must be a numeric IPv4 address in 127.0.0.0/8, got %s", L.o.host);
		if ((ntohl(sa->sin_addr.s_addr) >> 24) != 127)
			die("refusing %s: pd_load only targets loopback (127.0.0.0/8)", L.o.host);
	}
}

static void tls_init(void)
{
	L.ssl_ctx = SSL_CTX_new(TLS_client_method());
	if (!L.ssl_ctx || !SSL_CTX_set_min_proto_version(L.ssl_ctx, TLS1_2_VERSION) ||
	    !SSL_CTX_load_verify_locations(L.ssl_ctx, L.o.ca, NULL))
		die("TLS setup failed (CA %s)", L.o.ca);
	SSL_CTX_set_verify(L.ssl_ctx, SSL_VERIFY_PEER, NULL);
}

static void raise_fd_limit(void)
{
	struct rlimit rl;
	rlim_t need = (rlim_t)L.o.conns + L.o.idle + 64;

	if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
		return;
	if (rl.rlim_cur < need && rl.rlim_max > rl.rlim_cur) {
		rl.rlim_cur = rl.rlim_max < need ? rl.rlim_max : need;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	if (rl.rlim_cur < need)
		die("need %llu file descriptors, the limit is %llu (ulimit -n)",
		    (unsigned long long)need, (unsigned long long)rl.rlim_cur);
}

static void setup(void)
{
	static char prefix[64];
	struct timespec ts;
	struct timeval tick = {0, TICK_MS * 1000};

	clock_gettime(CLOCK_REALTIME, &ts);
	L.run_id = ((uint64_t)ts.tv_sec << 20 ^ (uint64_t)ts.tv_nsec ^ (uint64_t)getpid() << 40) | 1;
	srand((unsigned)L.run_id); /* retry jitter */
	if (!L.o.prefix) {
		snprintf(prefix, sizeof prefix, "load/%llx", (unsigned long long)(L.run_id & 0xffffffffffull));
		L.o.prefix = prefix;
	}
	for (size_t i = 0; i < L.o.nseq; i++)
		load_sequence(L.o.seq_dirs[i], &L.seqs[i]);
	L.nseqs = L.o.nseq;
	raise_fd_limit();
	tls_init();
	pd_buf_init(&L.scratch, 0);
	L.base = event_base_new();
	if (!L.base)
		die("event_base_new failed");
	L.conns = xcalloc(L.o.conns, sizeof *L.conns);
	for (uint32_t i = 0; i < L.o.conns; i++) {
		L.conns[i].idx = i;
		L.conns[i].reqs = xcalloc(L.o.inflight, sizeof(req));
	}
	L.idle = xcalloc(L.o.idle, sizeof *L.idle);
	for (uint32_t i = 0; i < L.o.idle; i++)
		L.idle[i].fd = -1;
	streams_init();
	L.tick = event_new(L.base, -1, EV_PERSIST, on_tick, NULL);
	if (!L.tick || event_add(L.tick, &tick) != 0)
		die("cannot start the timer");
}

static void teardown(void)
{
	for (uint32_t i = 0; i < L.o.conns; i++) {
		if (L.conns[i].bev)
			bufferevent_free(L.conns[i].bev);
		free(L.conns[i].reqs);
	}
	for (uint32_t i = 0; i < L.o.idle; i++) {
		if (L.idle[i].ev)
			event_free(L.idle[i].ev);
		if (L.idle[i].fd >= 0)
			close(L.idle[i].fd);
	}
	event_free(L.tick);
	event_base_free(L.base);
	SSL_CTX_free(L.ssl_ctx);
	for (size_t i = 0; i < L.nseqs; i++) {
		for (size_t j = 0; j < L.seqs[i].n; j++)
			free(L.seqs[i].files[j].data);
		free(L.seqs[i].files);
	}
	free(L.conns);
	free(L.idle);
	free(L.streams);
	free(L.st.lat);
	pd_buf_free(&L.scratch);
}

int main(int argc, char **argv)
{
	signal(SIGPIPE, SIG_IGN);
	signal(SIGINT, on_stop_signal);
	signal(SIGTERM, on_stop_signal);
	parse_args(argc, argv);
	resolve_loopback();
	setup();
	L.t_begin = now_us();
	for (uint32_t i = 0; i < L.o.idle; i++)
		idle_open(&L.idle[i]);
	printf("pd_load: %u connections, %u streams, %zu sequences, %u idle sockets -> %s:%d "
	       "(%zu port%s)\n",
	       L.o.conns, L.o.streams, L.nseqs, L.o.idle, L.o.host, L.o.port[0], L.o.nport,
	       L.o.nport == 1 ? "" : "s");
	fflush(stdout);
	event_base_dispatch(L.base);
	report();
	teardown();
	return L.exit_code;
}
