/*
 * Unit tests of the delta service (server/pd_service.h), without network:
 * real profile sequences through the service compared byte for byte with a
 * local pd_engine_run chain, idempotency (DUPLICATE, stale, conflict), hash
 * and length checks, per-stream order under concurrent submitters, restart
 * on the same database, store faults and retries, a tiny cache, tenant
 * limits, abort, cancel, admission, TTL expiry and every admin command.
 * Databases live in a temp dir under /tmp, removed at exit.
 */
#include <dirent.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "pd_admin.h"
#include "pd_gz.h"
#include "pd_crc.h"
#include "pd_service.h"
#include "pd_store.h"
#include "pdelta_proto.h"
#include "tharness.h"
#include "tseq.h"

#define NFILES 8
#define INCARNATION 42

static char tmp_dir[64];
static int db_counter;

struct file {
	uint8_t *p;
	size_t n;
	uint8_t hash[16];
};

static struct file heap[NFILES], block[NFILES];

/* Expected outputs of a local chain over a file set (first = BASELINE). */
struct expect {
	uint8_t *out[NFILES];
	size_t len[NFILES];
	int status[NFILES], reason[NFILES];
};

static struct expect heap_exp, block_exp;

/* ---- helpers ------------------------------------------------------------------------ */

static void sha16(const uint8_t *p, size_t n, uint8_t out[16])
{
	uint8_t md[EVP_MAX_MD_SIZE];
	unsigned len = 0;

	EVP_Digest(p, n, md, &len, EVP_sha256(), NULL);
	memcpy(out, md, 16);
}

static int read_file(const char *path, struct file *f)
{
	FILE *fp = fopen(path, "rb");
	long n;

	if (!fp)
		return -1;
	fseek(fp, 0, SEEK_END);
	n = ftell(fp);
	fseek(fp, 0, SEEK_SET);
	f->p = malloc((size_t)n);
	f->n = fread(f->p, 1, (size_t)n, fp);
	fclose(fp);
	sha16(f->p, f->n, f->hash);
	return f->n == (size_t)n ? 0 : -1;
}

static int load_set(const char *td, const char *name, struct file *fs)
{
	char path[512];

	for (int i = 0; i < NFILES; i++) {
		snprintf(path, sizeof path, "%s/profiles/%s/%03d.pb.gz", td, name, i);
		if (read_file(path, &fs[i])) {
			fprintf(stderr, "cannot read %s\n", path);
			return -1;
		}
	}
	return 0;
}

/* The reference: pd_engine_run over the files with the service's settings. */
static void build_expect(const struct file *fs, struct expect *x, int gzip_level)
{
	pd_limits lim;
	th_seq sq;
	pd_req req;
	pd_result res;
	pd_buf out;

	pd_limits_default(&lim);
	CHECK(th_seq_init(&sq, &lim) == 0);
	for (int i = 0; i < NFILES; i++) {
		pd_req_default(&req);
		req.first_policy = PD_FIRST_KEEP;
		req.incarnation = INCARNATION;
		req.gzip_level = gzip_level;
		req.chunk = 65536;
		CHECK(th_seq_run(&sq, fs[i].p, fs[i].n, &req, &out, &res) == PD_OK);
		x->out[i] = out.data;
		x->len[i] = out.len;
		x->status[i] = res.status;
		x->reason[i] = res.reason;
	}
	th_seq_free(&sq);
}

static void free_expect(struct expect *x)
{
	for (int i = 0; i < NFILES; i++)
		free(x->out[i]);
}

/* ---- synchronous wrappers --------------------------------------------------------------- */

static pthread_mutex_t wmu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wcv = PTHREAD_COND_INITIALIZER;

struct res {
	int done, rc, detail, status, reason, orig;
	uint64_t value, seq;
	uint32_t samples_in, samples_out, crc;
	uint8_t *out;
	size_t out_len;
	char msg[256];
	pd_job *job;
};

static void on_done(void *arg, pd_job *job, const pd_job_result *r)
{
	struct res *x = arg;

	x->rc = r->rc;
	x->detail = r->detail;
	x->value = r->detail_value;
	x->status = r->status;
	x->reason = r->reason;
	x->orig = r->orig_status;
	x->seq = r->seq;
	x->samples_in = r->samples_in;
	x->samples_out = r->samples_out;
	x->crc = r->out_crc32;
	x->out_len = r->out_len;
	x->out = malloc(r->out_len + 1);
	if (r->out_len)
		memcpy(x->out, r->out, r->out_len);
	snprintf(x->msg, sizeof x->msg, "%s", r->err.msg);
	x->job = job;
	pthread_mutex_lock(&wmu);
	x->done = 1;
	pthread_cond_broadcast(&wcv);
	pthread_mutex_unlock(&wmu);
}

static void wait_res(struct res *x)
{
	pthread_mutex_lock(&wmu);
	while (!x->done)
		pthread_cond_wait(&wcv, &wmu);
	pthread_mutex_unlock(&wmu);
	pd_job_free(x->job);
	x->job = NULL;
}

static void res_clear(struct res *x)
{
	free(x->out);
	memset(x, 0, sizeof *x);
}

/* What submit() claims: hash (or f's SHA-256/16) is of this kind. */
static int g_hash_kind = PD_CHASH_SHA256;

/* Begins, uploads (in 7000-byte pieces) and submits; the result lands in x. */
static int submit(pd_service *s, const char *tenant, const char *stream, uint64_t seq,
		  const struct file *f, const uint8_t *hash, uint64_t total, struct res *x)
{
	pd_job_params p = {.tenant = tenant, .stream = stream, .seq = seq,
			   .incarnation = INCARNATION, .first_policy = PD_FIRST_KEEP,
			   .hash_kind = g_hash_kind};
	pd_job *j;
	pd_err e = {0};
	int rc = pd_job_begin(s, &p, &j, &e);

	memset(x, 0, sizeof *x);
	if (rc)
		return rc;
	for (size_t off = 0; off < f->n; off += 7000) {
		size_t n = f->n - off < 7000 ? f->n - off : 7000;
		if ((rc = pd_job_data(j, f->p + off, n, &e)))
			break;
	}
	pd_job_submit(j, hash ? hash : f->hash, total ? total : f->n, on_done, x);
	return PD_OK;
}

static int run(pd_service *s, const char *tenant, const char *stream, uint64_t seq,
	       const struct file *f, struct res *x)
{
	int rc = submit(s, tenant, stream, seq, f, NULL, 0, x);

	if (rc)
		return rc;
	wait_res(x);
	return x->rc;
}

/* Output i of the reference chain, with its status. */
static int same_as(const struct res *x, const struct expect *ex, int i)
{
	return x->rc == PD_OK && x->out_len == ex->len[i] && !memcmp(x->out, ex->out[i], x->out_len) &&
	       x->status == ex->status[i] && x->reason == ex->reason[i] &&
	       x->crc == (uint32_t)crc32(0L, x->out, (uInt)x->out_len);
}

struct ares {
	int done, rc;
	char *json;
	char msg[256];
};

static void on_admin(void *arg, int rc, const pd_err *e, const char *json, size_t len)
{
	struct ares *a = arg;

	a->rc = rc;
	if (json) {
		a->json = malloc(len + 1);
		memcpy(a->json, json, len);
		a->json[len] = 0;
	}
	if (e)
		snprintf(a->msg, sizeof a->msg, "%s", e->msg);
	pthread_mutex_lock(&wmu);
	a->done = 1;
	pthread_cond_broadcast(&wcv);
	pthread_mutex_unlock(&wmu);
}

/* Runs an admin command; returns its rc (the synchronous one if refused). */
static int admin(pd_service *s, const char *cmd, const char *const *kv, struct ares *a)
{
	pd_err e = {0};
	int rc;

	free(a->json);
	memset(a, 0, sizeof *a);
	if ((rc = pd_service_admin(s, cmd, kv, on_admin, a, &e)))
		return rc;
	pthread_mutex_lock(&wmu);
	while (!a->done)
		pthread_cond_wait(&wcv, &wmu);
	pthread_mutex_unlock(&wmu);
	return a->rc;
}

/* ---- a tiny JSON syntax checker ----------------------------------------------------------- */

static const char *js_value(const char *p, int depth);

static const char *js_ws(const char *p)
{
	while (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r')
		p++;
	return p;
}

static const char *js_string(const char *p)
{
	if (*p++ != '"')
		return NULL;
	for (; *p && *p != '"'; p++) {
		if ((unsigned char)*p < 0x20)
			return NULL;
		if (*p == '\\' && !*++p)
			return NULL;
	}
	return *p == '"' ? p + 1 : NULL;
}

static const char *js_list(const char *p, int depth, char close, int keyed)
{
	p = js_ws(p + 1);
	if (*p == close)
		return p + 1;
	for (;;) {
		if (keyed) {
			if (!(p = js_string(js_ws(p))))
				return NULL;
			p = js_ws(p);
			if (*p++ != ':')
				return NULL;
		}
		if (!(p = js_value(p, depth + 1)))
			return NULL;
		p = js_ws(p);
		if (*p == close)
			return p + 1;
		if (*p++ != ',')
			return NULL;
	}
}

static const char *js_value(const char *p, int depth)
{
	p = js_ws(p);
	if (depth > 32)
		return NULL;
	if (*p == '{')
		return js_list(p, depth, '}', 1);
	if (*p == '[')
		return js_list(p, depth, ']', 0);
	if (*p == '"')
		return js_string(p);
	if (!strncmp(p, "true", 4) || !strncmp(p, "null", 4))
		return p + 4;
	if (!strncmp(p, "false", 5))
		return p + 5;
	if (*p == '-' || (*p >= '0' && *p <= '9')) {
		p++;
		while (*p >= '0' && *p <= '9')
			p++;
		return p;
	}
	return NULL;
}

static int json_ok(const char *s)
{
	const char *p = s ? js_value(s, 0) : NULL;
	return p && !*js_ws(p);
}

/* ---- service setup --------------------------------------------------------------------------- */

static void db_path(char *buf, size_t n, int id) { snprintf(buf, n, "%s/svc%d.db", tmp_dir, id); }

static pd_service *open_svc(pd_service_opts *o, const char *path)
{
	pd_service *s = NULL;
	pd_err e = {0};

	o->store.path = path;
	o->store.synchronous_full = 0; /* fast tests; durability is the store's test */
	if (!o->workers)
		o->workers = 2;
	if (pd_service_new(o, &s, &e))
		fprintf(stderr, "pd_service_new: %s\n", e.msg);
	return s;
}

static pd_service *fresh_svc(pd_service_opts *o, char *path, size_t n)
{
	db_path(path, n, ++db_counter);
	return open_svc(o, path);
}

/* ---- tests ------------------------------------------------------------------------------------ */

static void test_sequence_and_reopen(void)
{
	pd_service_opts o;
	pd_service *s;
	char path[128];
	struct res x, d;
	int i;

	pd_service_opts_init(&o);
	s = fresh_svc(&o, path, sizeof path);
	CHECK(s != NULL);
	if (!s)
		return;
	/* heap: files 0..5, each step also replayed as a DUPLICATE. */
	for (i = 0; i < 6; i++) {
		CHECK(run(s, "t1", "heap", (uint64_t)i + 1, &heap[i], &x) == PD_OK);
		CHECK(same_as(&x, &heap_exp, i));
		CHECK(x.status == (i ? PD_STATUS_DELTA : PD_STATUS_BASELINE));
		CHECK(i || x.reason == PD_REASON_FIRST);
		CHECK(run(s, "t1", "heap", (uint64_t)i + 1, &heap[i], &d) == PD_OK);
		CHECK(d.status == PD_STATUS_DUPLICATE && d.orig == x.status && d.reason == x.reason);
		CHECK(d.out_len == x.out_len && !memcmp(d.out, x.out, x.out_len) && d.crc == x.crc);
		CHECK(d.samples_in == x.samples_in && d.samples_out == x.samples_out);
		res_clear(&x);
		res_clear(&d);
	}
	/* block: the whole sequence on another stream. */
	for (i = 0; i < NFILES; i++) {
		CHECK(run(s, "t1", "block", (uint64_t)i + 10, &block[i], &x) == PD_OK);
		CHECK(same_as(&x, &block_exp, i));
		CHECK(x.status == (i ? PD_STATUS_DELTA : PD_STATUS_BASELINE));
		res_clear(&x);
	}
	/* Stale and conflicting sequence numbers. */
	CHECK(run(s, "t1", "heap", 3, &heap[2], &x) == PD_E_SEQ);
	CHECK(x.detail == PD_DETAIL_SEQ_STALE && x.value == 6);
	res_clear(&x);
	CHECK(run(s, "t1", "heap", 6, &heap[0], &x) == PD_E_SEQ);
	CHECK(x.detail == PD_DETAIL_SEQ_CONFLICT && x.value == 6);
	res_clear(&x);
	pd_service_free(s);

	/* A new service on the same database continues with DELTA. */
	pd_service_opts_init(&o);
	s = open_svc(&o, path);
	CHECK(s != NULL);
	if (!s)
		return;
	CHECK(run(s, "t1", "heap", 6, &heap[5], &d) == PD_OK);
	CHECK(d.status == PD_STATUS_DUPLICATE && d.orig == PD_STATUS_DELTA);
	CHECK(d.out_len == heap_exp.len[5] && !memcmp(d.out, heap_exp.out[5], d.out_len));
	CHECK(d.crc == (uint32_t)crc32(0L, d.out, (uInt)d.out_len));
	res_clear(&d);
	for (i = 6; i < NFILES; i++) {
		CHECK(run(s, "t1", "heap", (uint64_t)i + 1, &heap[i], &x) == PD_OK);
		CHECK(same_as(&x, &heap_exp, i) && x.status == PD_STATUS_DELTA);
		res_clear(&x);
	}
	pd_service_free(s);
}

static void test_upload_checks(void)
{
	pd_service_opts o;
	pd_service *s;
	char path[128];
	struct res x;
	uint8_t bad[16];
	pd_service_stats st;

	pd_service_opts_init(&o);
	s = fresh_svc(&o, path, sizeof path);
	if (!s)
		return;
	memcpy(bad, heap[0].hash, 16);
	bad[3] ^= 1;
	CHECK(submit(s, "t", "h", 1, &heap[0], bad, 0, &x) == PD_OK);
	wait_res(&x);
	CHECK(x.rc == PD_E_MALFORMED && x.detail == PD_DETAIL_HASH_MISMATCH);
	res_clear(&x);
	CHECK(submit(s, "t", "h", 1, &heap[0], NULL, heap[0].n + 1, &x) == PD_OK);
	wait_res(&x);
	CHECK(x.rc == PD_E_MALFORMED && x.detail == PD_DETAIL_LENGTH_MISMATCH &&
	      x.value == heap[0].n);
	res_clear(&x);
	/* Not a profile: the engine's error, and no stream row. */
	{
		static uint8_t junk_bytes[] = {0x1f, 0x8b, ' ', 'j', 'u', 'n', 'k'};
		struct file junk = {.p = junk_bytes, .n = sizeof junk_bytes};
		sha16(junk.p, junk.n, junk.hash);
		CHECK(run(s, "t", "h", 1, &junk, &x) == PD_E_MALFORMED);
		res_clear(&x);
	}
	/* After the failures the stream starts normally. */
	CHECK(run(s, "t", "h", 1, &heap[0], &x) == PD_OK && same_as(&x, &heap_exp, 0));
	res_clear(&x);
	pd_service_stats_get(s, &st);
	CHECK(st.errors_by_code[PD_E_MALFORMED] == 3);
	CHECK(st.requests_by_status[PD_STATUS_BASELINE] == 1);
	CHECK(st.baselines_by_reason[PD_REASON_FIRST] == 1);
	CHECK(st.jobs_admitted == 0 && st.jobs_queued == 0 && st.jobs_running == 0);
	CHECK(st.lat_count == 1 && st.lat_total[10] == 1);
	CHECK(st.bytes_in > 0 && st.bytes_out == heap_exp.len[0]);
	pd_service_free(s);
}

/* ---- concurrency -------------------------------------------------------------------------- */

#define CSTREAMS 8

struct conc {
	pd_service *s;
	int thread;
	struct res res[CSTREAMS][NFILES];
};

static pthread_mutex_t order_mu = PTHREAD_MUTEX_INITIALIZER;
static int order_seen[CSTREAMS][NFILES], order_n[CSTREAMS];

struct order_arg {
	struct res *x;
	int stream;
};

static struct order_arg order_args[CSTREAMS][NFILES];

static void on_done_order(void *arg, pd_job *job, const pd_job_result *r)
{
	struct order_arg *oa = arg;

	pthread_mutex_lock(&order_mu);
	order_seen[oa->stream][order_n[oa->stream]++] = (int)r->seq;
	pthread_mutex_unlock(&order_mu);
	on_done(oa->x, job, r);
}

static void *conc_thread(void *arg)
{
	struct conc *c = arg;
	char name[32];

	/* Thread t owns streams t, t+3, t+6; their jobs interleave. */
	for (int i = 0; i < NFILES; i++)
		for (int k = c->thread; k < CSTREAMS; k += 3) {
			pd_job_params p = {.tenant = "conc", .stream = name, .seq = (uint64_t)i + 1,
					   .incarnation = INCARNATION};
			pd_job *j;
			pd_err e;
			struct order_arg *oa = &order_args[k][i];

			snprintf(name, sizeof name, "s%d", k);
			oa->x = &c->res[k][i];
			oa->stream = k;
			if (pd_job_begin(c->s, &p, &j, &e)) {
				fprintf(stderr, "begin: %s\n", e.msg);
				continue;
			}
			pd_job_data(j, heap[i].p, heap[i].n, &e);
			pd_job_submit(j, heap[i].hash, heap[i].n, on_done_order, oa);
		}
	return NULL;
}

/* Protocol 2's CRC-128 claims, retries across protocol versions, and rows
 * written before the CRC-128 (their last hash is the client's SHA-256/16). */
static void test_content_hash(void)
{
	pd_service_opts o;
	pd_service *s;
	char path[128];
	struct res x, d;
	uint8_t crc[16], bad[16];

	pd_service_opts_init(&o);
	s = fresh_svc(&o, path, sizeof path);
	CHECK(s != NULL);
	if (!s)
		return;
	pd_crc128_of(heap[0].p, heap[0].n, crc);
	g_hash_kind = PD_CHASH_CRC128;
	/* A SHA-256 claim where a CRC-128 is due, and a wrong CRC-128: refused. */
	CHECK(submit(s, "t", "h", 1, &heap[0], heap[0].hash, 0, &x) == PD_OK);
	wait_res(&x);
	CHECK(x.rc == PD_E_MALFORMED && x.detail == PD_DETAIL_HASH_MISMATCH);
	res_clear(&x);
	memcpy(bad, crc, 16);
	bad[15] ^= 0x80;
	CHECK(submit(s, "t", "h", 1, &heap[0], bad, 0, &x) == PD_OK);
	wait_res(&x);
	CHECK(x.rc == PD_E_MALFORMED && x.detail == PD_DETAIL_HASH_MISMATCH);
	res_clear(&x);
	/* The right one applies; its retry is a DUPLICATE in either version. */
	CHECK(submit(s, "t", "h", 1, &heap[0], crc, 0, &x) == PD_OK);
	wait_res(&x);
	CHECK(same_as(&x, &heap_exp, 0));
	CHECK(submit(s, "t", "h", 1, &heap[0], crc, 0, &d) == PD_OK);
	wait_res(&d);
	CHECK(d.rc == PD_OK && d.status == PD_STATUS_DUPLICATE && d.out_len == x.out_len);
	res_clear(&d);
	g_hash_kind = PD_CHASH_SHA256;
	CHECK(run(s, "t", "h", 1, &heap[0], &d) == PD_OK && d.status == PD_STATUS_DUPLICATE);
	CHECK(d.out_len == x.out_len && !memcmp(d.out, x.out, x.out_len));
	res_clear(&d);
	/* Other content at that seq is still a conflict. */
	CHECK(run(s, "t", "h", 1, &heap[1], &d) == PD_E_SEQ && d.detail == PD_DETAIL_SEQ_CONFLICT);
	res_clear(&d);
	res_clear(&x);
	pd_service_free(s);

	/* A row as an older pdeltad left it: last hash = SHA-256/16. */
	{
		struct pd_store_opts so;
		pd_store *st = NULL;
		pd_store_row rec;
		pd_err e = {0};

		memset(&rec, 0, sizeof rec);
		pd_store_opts_init(&so);
		so.path = path;
		CHECK(pd_store_open(&so, &st, &e) == PD_OK);
		if (!st)
			return;
		CHECK(pd_store_get(st, "t", "h", &rec, &e) == PD_OK);
		CHECK(memcmp(rec.last_hash, crc, 16) == 0); /* what this pdeltad stores */
		memcpy(rec.last_hash, heap[0].hash, 16);
		CHECK(pd_store_put_async(st, &rec, NULL, NULL) == PD_OK);
		CHECK(pd_store_flush(st) == PD_OK);
		pd_store_close(st);
		pd_store_row_free(&rec);
	}
	pd_service_opts_init(&o);
	s = open_svc(&o, path);
	CHECK(s != NULL);
	if (!s)
		return;
	g_hash_kind = PD_CHASH_CRC128;
	CHECK(submit(s, "t", "h", 1, &heap[0], crc, 0, &d) == PD_OK);
	wait_res(&d);
	CHECK(d.rc == PD_OK && d.status == PD_STATUS_DUPLICATE);
	res_clear(&d);
	g_hash_kind = PD_CHASH_SHA256;
	CHECK(run(s, "t", "h", 1, &heap[1], &d) == PD_E_SEQ && d.detail == PD_DETAIL_SEQ_CONFLICT);
	res_clear(&d);
	CHECK(run(s, "t", "h", 2, &heap[1], &d) == PD_OK && same_as(&d, &heap_exp, 1));
	res_clear(&d);
	pd_service_free(s);
}

static void test_concurrent(void)
{
	pd_service_opts o;
	pd_service *s;
	char path[128];
	static struct conc cs[3];
	pthread_t th[3];
	int ok = 1;

	pd_service_opts_init(&o);
	o.max_queued_jobs = CSTREAMS * NFILES;
	s = fresh_svc(&o, path, sizeof path);
	if (!s)
		return;
	for (int t = 0; t < 3; t++) {
		cs[t].s = s;
		cs[t].thread = t;
		pthread_create(&th[t], NULL, conc_thread, &cs[t]);
	}
	for (int t = 0; t < 3; t++)
		pthread_join(th[t], NULL);
	for (int k = 0; k < CSTREAMS; k++)
		for (int i = 0; i < NFILES; i++) {
			struct res *x = order_args[k][i].x;
			if (!x) {
				ok = 0;
				continue;
			}
			wait_res(x);
			if (!same_as(x, &heap_exp, i))
				ok = 0;
			res_clear(x);
		}
	CHECK(ok);
	for (int k = 0; k < CSTREAMS; k++) {
		CHECK(order_n[k] == NFILES);
		for (int i = 0; i < order_n[k]; i++)
			CHECK(order_seen[k][i] == i + 1);
	}
	pd_service_free(s);
}

/* ---- store faults, cache, limits -------------------------------------------------------------- */

static void test_store_fault(void)
{
	pd_service_opts o;
	pd_service *s;
	char path[128];
	struct res x;

	pd_service_opts_init(&o);
	s = fresh_svc(&o, path, sizeof path);
	if (!s)
		return;
	CHECK(run(s, "t", "f", 1, &heap[0], &x) == PD_OK && same_as(&x, &heap_exp, 0));
	res_clear(&x);
	pd_store_inject_fault(pd_service_store(s), 1);
	CHECK(run(s, "t", "f", 2, &heap[1], &x) == PD_E_STORE);
	CHECK(pd_code_retryable(x.rc));
	res_clear(&x);
	CHECK(run(s, "t", "f", 2, &heap[1], &x) == PD_OK && same_as(&x, &heap_exp, 1));
	res_clear(&x);
	CHECK(run(s, "t", "f", 3, &heap[2], &x) == PD_OK && same_as(&x, &heap_exp, 2));
	res_clear(&x);
	/* A fault on a brand-new stream leaves no row: the retry is BASELINE first. */
	pd_store_inject_fault(pd_service_store(s), 1);
	CHECK(run(s, "t", "g", 1, &heap[0], &x) == PD_E_STORE);
	res_clear(&x);
	CHECK(run(s, "t", "g", 1, &heap[0], &x) == PD_OK && same_as(&x, &heap_exp, 0));
	res_clear(&x);
	pd_service_free(s);
}

static void test_tiny_cache(void)
{
	pd_service_opts o;
	pd_service *s;
	char path[128];
	struct res x;
	pd_service_stats st;

	pd_service_opts_init(&o);
	o.cache_bytes = 1;
	s = fresh_svc(&o, path, sizeof path);
	if (!s)
		return;
	for (int i = 0; i < NFILES; i++) {
		CHECK(run(s, "t", "a", (uint64_t)i + 1, &heap[i], &x) == PD_OK);
		CHECK(same_as(&x, &heap_exp, i));
		res_clear(&x);
		CHECK(run(s, "t", "b", (uint64_t)i + 1, &block[i], &x) == PD_OK);
		CHECK(same_as(&x, &block_exp, i));
		res_clear(&x);
	}
	/* Duplicates come back from the store after eviction. */
	CHECK(run(s, "t", "a", NFILES, &heap[NFILES - 1], &x) == PD_OK);
	CHECK(x.status == PD_STATUS_DUPLICATE && x.out_len == heap_exp.len[NFILES - 1] &&
	      !memcmp(x.out, heap_exp.out[NFILES - 1], x.out_len));
	CHECK(x.crc == (uint32_t)crc32(0L, x.out, (uInt)x.out_len) && x.orig == PD_STATUS_DELTA);
	res_clear(&x);
	/* A BASELINE (first profile) replayed after eviction: status, reason, bytes, CRC. */
	CHECK(run(s, "t", "c", 1, &heap[0], &x) == PD_OK && same_as(&x, &heap_exp, 0));
	res_clear(&x);
	CHECK(run(s, "t", "b", NFILES + 1, &block[0], &x) == PD_OK); /* evicts c */
	res_clear(&x);
	CHECK(run(s, "t", "c", 1, &heap[0], &x) == PD_OK && x.status == PD_STATUS_DUPLICATE);
	CHECK(x.orig == PD_STATUS_BASELINE && x.reason == PD_REASON_FIRST);
	CHECK(x.out_len == heap_exp.len[0] && !memcmp(x.out, heap_exp.out[0], x.out_len) &&
	      x.crc == (uint32_t)crc32(0L, x.out, (uInt)x.out_len));
	res_clear(&x);
	/* The last release (and its eviction) runs just after the callback. */
	for (int i = 0; i < 200; i++) {
		pd_service_stats_get(s, &st);
		if (st.cache_evictions >= 2 * NFILES && st.streams_cached <= 1)
			break;
		usleep(5000);
	}
	CHECK(st.cache_evictions >= 2 * NFILES);
	CHECK(st.streams_cached <= 1);
	pd_service_free(s);
}

static void test_limits(void)
{
	pd_service_opts o;
	pd_service *s;
	char path[128];
	struct res x;
	pd_job *j[3];
	pd_job_params p = {.tenant = "t", .stream = "q", .seq = 1};
	pd_err e = {0};
	pd_service_stats st;

	pd_service_opts_init(&o);
	o.max_streams_per_tenant = 2;
	o.max_queued_jobs = 2;
	o.limits.max_input = 100000;
	s = fresh_svc(&o, path, sizeof path);
	if (!s)
		return;
	CHECK(run(s, "t", "a", 1, &heap[0], &x) == PD_OK);
	res_clear(&x);
	CHECK(run(s, "t", "b", 1, &heap[0], &x) == PD_OK);
	res_clear(&x);
	CHECK(run(s, "t", "c", 1, &heap[0], &x) == PD_E_LIMIT);
	CHECK(x.detail == PD_DETAIL_STREAM_LIMIT && x.value == 2);
	res_clear(&x);
	CHECK(run(s, "u", "c", 1, &heap[0], &x) == PD_OK); /* another tenant */
	res_clear(&x);
	CHECK(run(s, "t", "a", 2, &heap[1], &x) == PD_OK && same_as(&x, &heap_exp, 1));
	res_clear(&x);

	/* Admission: two begun jobs fill the queue. */
	CHECK(pd_job_begin(s, &p, &j[0], &e) == PD_OK);
	CHECK(pd_job_begin(s, &p, &j[1], &e) == PD_OK);
	CHECK(pd_job_begin(s, &p, &j[2], &e) == PD_E_BUSY && j[2] == NULL);
	/* Upload cap. */
	{
		static uint8_t big[60000];
		CHECK(pd_job_data(j[0], big, sizeof big, &e) == PD_OK);
		CHECK(pd_job_data(j[0], big, sizeof big, &e) == PD_E_LIMIT);
	}
	pd_job_abort(j[0]);
	pd_job_abort(j[1]);
	pd_service_stats_get(s, &st);
	CHECK(st.jobs_admitted == 0 && st.busy_rejects == 1 && st.upload_limit_hits == 1);
	CHECK(st.stream_limit_hits == 1);
	/* A job submitted past its upload cap completes with the limit. */
	{
		static uint8_t big[120000];
		struct res y;
		pd_job *k;
		uint8_t h[16] = {0};
		CHECK(pd_job_begin(s, &p, &k, &e) == PD_OK);
		CHECK(pd_job_data(k, big, sizeof big, &e) == PD_E_LIMIT);
		memset(&y, 0, sizeof y);
		pd_job_submit(k, h, sizeof big, on_done, &y);
		wait_res(&y);
		CHECK(y.rc == PD_E_LIMIT && y.detail == PD_DETAIL_PROFILE_TOO_LARGE);
		res_clear(&y);
	}
	pd_service_free(s);
}

static void test_abort(void)
{
	pd_service_opts o;
	pd_service *s;
	char path[128];
	struct ares a = {0};
	pd_job_params p = {.tenant = "t", .stream = "ab", .seq = 1};
	const char *kv[] = {"tenant", "t", "name", "ab", NULL};
	pd_job *j;
	pd_err e = {0};
	pd_service_stats st;

	pd_service_opts_init(&o);
	s = fresh_svc(&o, path, sizeof path);
	if (!s)
		return;
	CHECK(pd_job_begin(s, &p, &j, &e) == PD_OK);
	CHECK(pd_job_data(j, heap[0].p, heap[0].n, &e) == PD_OK);
	pd_job_abort(j);
	CHECK(admin(s, "stream", kv, &a) == PD_E_NOTFOUND);
	pd_service_stats_get(s, &st);
	CHECK(st.jobs_admitted == 0 && st.streams_cached == 0 && st.store.rows_written == 0);
	free(a.json);
	pd_service_free(s);
}

/* Cancel needs the job pointer before completion: a variant of submit that
 * returns it. */
static void test_cancel_queued(void)
{
	pd_service_opts o;
	pd_service *s;
	char path[128];
	struct res x[6];
	pd_job *jobs[6];
	pd_err e = {0};
	int cancelled = 0;

	pd_service_opts_init(&o);
	o.workers = 1;
	s = fresh_svc(&o, path, sizeof path);
	if (!s)
		return;
	for (int i = 0; i < 6; i++) {
		pd_job_params p = {.tenant = "t", .stream = "cq", .seq = (uint64_t)i + 1,
				   .incarnation = INCARNATION};
		memset(&x[i], 0, sizeof x[i]);
		CHECK(pd_job_begin(s, &p, &jobs[i], &e) == PD_OK);
		pd_job_data(jobs[i], heap[i].p, heap[i].n, &e);
	}
	for (int i = 0; i < 6; i++)
		pd_job_submit(jobs[i], heap[i].hash, heap[i].n, on_done, &x[i]);
	pd_job_cancel(jobs[5]); /* the last of one stream: almost surely still queued */
	for (int i = 0; i < 6; i++)
		wait_res(&x[i]);
	for (int i = 0; i < 5; i++)
		CHECK(same_as(&x[i], &heap_exp, i));
	cancelled = x[5].rc == PD_E_TIMEOUT && x[5].detail == PD_DETAIL_CANCELLED;
	CHECK(cancelled || same_as(&x[5], &heap_exp, 5));
	for (int i = 0; i < 6; i++)
		res_clear(&x[i]);
	pd_service_free(s);
}

static void test_ttl(void)
{
	pd_service_opts o;
	pd_service *s;
	char path[128];
	struct res x;
	pd_service_stats st;

	pd_service_opts_init(&o);
	o.stream_ttl_ms = 100;
	o.janitor_interval_ms = 50;
	s = fresh_svc(&o, path, sizeof path);
	if (!s)
		return;
	CHECK(run(s, "t", "old", 1, &heap[0], &x) == PD_OK);
	res_clear(&x);
	for (int i = 0; i < 100; i++) {
		pd_service_stats_get(s, &st);
		if (st.streams_expired)
			break;
		usleep(20000);
	}
	CHECK(st.streams_expired == 1);
	/* Expired: the stream starts over (seq 1 is not a duplicate any more). */
	CHECK(run(s, "t", "old", 1, &heap[1], &x) == PD_OK);
	CHECK(x.status == PD_STATUS_BASELINE && x.reason == PD_REASON_FIRST);
	res_clear(&x);
	pd_service_free(s);
}

/* Submitted jobs finish during pd_service_free; jobs are freed after it. */
static void test_free_drains(void)
{
	pd_service_opts o;
	pd_service *s;
	char path[128];
	struct res x[2][4];
	int ok = 1;

	pd_service_opts_init(&o);
	s = fresh_svc(&o, path, sizeof path);
	if (!s)
		return;
	for (int i = 0; i < 4; i++) {
		submit(s, "t", "d1", (uint64_t)i + 1, &heap[i], NULL, 0, &x[0][i]);
		submit(s, "t", "d2", (uint64_t)i + 1, &block[i], NULL, 0, &x[1][i]);
	}
	pd_service_free(s);
	for (int i = 0; i < 4; i++) {
		ok &= x[0][i].done && x[1][i].done;
		wait_res(&x[0][i]); /* pd_job_free after pd_service_free */
		wait_res(&x[1][i]);
		ok &= same_as(&x[0][i], &heap_exp, i) && same_as(&x[1][i], &block_exp, i);
		res_clear(&x[0][i]);
		res_clear(&x[1][i]);
	}
	CHECK(ok);
}

/* Two services on one database: the second advances a stream the first has
 * cached; the first's put_if conflicts, it rereads the row and recomputes. */
static void test_cas_conflict(void)
{
	pd_service_opts o;
	pd_service *a, *b;
	char path[128];
	struct res x;
	pd_service_stats st;

	pd_service_opts_init(&o);
	a = fresh_svc(&o, path, sizeof path);
	pd_service_opts_init(&o);
	b = open_svc(&o, path);
	if (!a || !b) {
		CHECK(0);
		pd_service_free(a);
		pd_service_free(b);
		return;
	}
	CHECK(run(a, "t", "m", 1, &heap[0], &x) == PD_OK && same_as(&x, &heap_exp, 0));
	res_clear(&x);
	CHECK(run(b, "t", "m", 2, &heap[1], &x) == PD_OK && same_as(&x, &heap_exp, 1));
	res_clear(&x);
	CHECK(run(a, "t", "m", 3, &heap[2], &x) == PD_OK && same_as(&x, &heap_exp, 2));
	res_clear(&x);
	/* And a retry of seq 2 on a is the DUPLICATE b committed. */
	CHECK(run(a, "t", "m", 3, &heap[2], &x) == PD_OK && x.status == PD_STATUS_DUPLICATE);
	res_clear(&x);
	pd_service_stats_get(a, &st);
	CHECK(st.store_conflicts == 1);
	/* b moves on to 4; a retry of 3 on a finds its cache behind the row: it
	 * reloads and answers SEQ_STALE (not a replay of the wrong row). */
	CHECK(run(b, "t", "m", 4, &heap[3], &x) == PD_OK && same_as(&x, &heap_exp, 3));
	res_clear(&x);
	CHECK(run(a, "t", "m", 3, &heap[2], &x) == PD_E_SEQ);
	CHECK(x.detail == PD_DETAIL_SEQ_STALE && x.value == 4);
	res_clear(&x);
	/* ... and a retry of 4 on a is the DUPLICATE of what b sent. */
	CHECK(run(a, "t", "m", 4, &heap[3], &x) == PD_OK && x.status == PD_STATUS_DUPLICATE);
	CHECK(x.out_len == heap_exp.len[3] && !memcmp(x.out, heap_exp.out[3], x.out_len));
	CHECK(x.crc == (uint32_t)crc32(0L, x.out, (uInt)x.out_len));
	res_clear(&x);
	pd_service_free(b);
	pd_service_free(a);
}

/* First-profile policies: drop outputs no samples; auto keeps only when the
 * producer started after the stream was last seen. */
static void test_first_policy(void)
{
	pd_service_opts o;
	pd_service *s;
	char path[128];
	struct res x;
	pd_job *j;
	pd_err e = {0};
	const char *kv[] = {"tenant", "t", "name", "p", NULL};
	struct ares a = {0};
	int64_t now_ns = (int64_t)time(NULL) * 1000000000;
	pd_job_params p = {.tenant = "t", .stream = "p", .seq = 1, .first_policy = PD_FIRST_DROP};

	pd_service_opts_init(&o);
	s = fresh_svc(&o, path, sizeof path);
	if (!s)
		return;
	CHECK(pd_job_begin(s, &p, &j, &e) == PD_OK);
	pd_job_data(j, heap[0].p, heap[0].n, &e);
	memset(&x, 0, sizeof x);
	pd_job_submit(j, heap[0].hash, heap[0].n, on_done, &x);
	wait_res(&x);
	CHECK(x.rc == PD_OK && x.status == PD_STATUS_BASELINE && x.samples_out == 0 && x.samples_in > 0);
	res_clear(&x);
	/* After an admin reset the stream is remembered as seen: auto with an
	 * older producer start drops, a newer one keeps. */
	CHECK(admin(s, "reset", kv, &a) == PD_OK);
	p.first_policy = PD_FIRST_AUTO;
	p.seq = 2;
	p.producer_start_ns = now_ns - (int64_t)3600 * 1000000000;
	CHECK(pd_job_begin(s, &p, &j, &e) == PD_OK);
	pd_job_data(j, heap[1].p, heap[1].n, &e);
	pd_job_submit(j, heap[1].hash, heap[1].n, on_done, &x);
	wait_res(&x);
	CHECK(x.rc == PD_OK && x.status == PD_STATUS_BASELINE && x.samples_out == 0);
	res_clear(&x);
	CHECK(admin(s, "reset", kv, &a) == PD_OK);
	p.seq = 3;
	p.producer_start_ns = now_ns + (int64_t)3600 * 1000000000;
	CHECK(pd_job_begin(s, &p, &j, &e) == PD_OK);
	pd_job_data(j, heap[2].p, heap[2].n, &e);
	pd_job_submit(j, heap[2].hash, heap[2].n, on_done, &x);
	wait_res(&x);
	CHECK(x.rc == PD_OK && x.status == PD_STATUS_BASELINE && x.samples_out > 0);
	res_clear(&x);
	free(a.json);
	pd_service_free(s);
}

/* ---- admin -------------------------------------------------------------------------------- */

static void stats_hook(void *arg, pd_buf *out)
{
	static const char m[] = ",\"connections\":3";
	pd_buf_append(out, m, sizeof m - 1, NULL);
}

static void test_admin(void)
{
	pd_service_opts o;
	pd_service *s;
	char path[128];
	struct res x;
	struct ares a = {0};
	pd_err e = {0};

	pd_service_opts_init(&o);
	s = fresh_svc(&o, path, sizeof path);
	if (!s)
		return;
	pd_service_set_stats_hook(s, stats_hook, NULL);
	for (int i = 0; i < 3; i++) {
		CHECK(run(s, "acme", "api/heap", (uint64_t)i + 1, &heap[i], &x) == PD_OK);
		res_clear(&x);
		CHECK(run(s, "acme", "api/block", (uint64_t)i + 1, &block[i], &x) == PD_OK);
		res_clear(&x);
	}
	CHECK(run(s, "acme", "db/heap", 1, &heap[0], &x) == PD_OK);
	res_clear(&x);
	CHECK(run(s, "other", "x\"y", 1, &heap[0], &x) == PD_OK);
	res_clear(&x);

	{
		const char *kv[] = {"tenant", "acme", NULL};
		CHECK(admin(s, "streams", kv, &a) == PD_OK && json_ok(a.json));
		CHECK(strstr(a.json, "\"tenant\":\"acme\"") && strstr(a.json, "\"name\":\"api/heap\""));
		CHECK(strstr(a.json, "\"truncated\":false") && !strstr(a.json, "x\\\"y"));
		CHECK(strstr(a.json, "\"last_status\":\"delta\""));
	}
	{
		const char *kv[] = {"tenant", "acme", "prefix", "api/", "sort", "samples", "limit", "1", NULL};
		CHECK(admin(s, "streams", kv, &a) == PD_OK && json_ok(a.json));
		CHECK(strstr(a.json, "\"truncated\":true") && !strstr(a.json, "db/heap"));
	}
	{
		const char *kv[] = {"sort", "last_seen", NULL};
		CHECK(admin(s, "streams", kv, &a) == PD_OK && json_ok(a.json));
		CHECK(strstr(a.json, "\"name\":\"x\\\"y\"") && strstr(a.json, "db/heap"));
	}
	{
		const char *kv[] = {"tenant", "acme", "sort", "bytes", NULL};
		CHECK(admin(s, "streams", kv, &a) == PD_OK && json_ok(a.json));
	}
	{
		const char *kv[] = {"tenant", "acme", "name", "api/heap", NULL};
		CHECK(admin(s, "stream", kv, &a) == PD_OK && json_ok(a.json));
		CHECK(strstr(a.json, "\"seq\":3,") && strstr(a.json, "\"incarnation\":42,"));
		CHECK(strstr(a.json, "\"delta_columns\":[\"alloc_objects/count\""));
		CHECK(strstr(a.json, "\"deltas_served\":3,") && strstr(a.json, "\"has_state\":true"));
		CHECK(strstr(a.json, "\"last_reset_reason\":\"\""));
	}
	{
		const char *kv[] = {"tenant", "acme", "name", "nope", NULL};
		CHECK(admin(s, "stream", kv, &a) == PD_E_NOTFOUND);
	}
	{
		/* reset: the next request is BASELINE first (any seq). */
		const char *kv[] = {"tenant", "acme", "name", "api/heap", NULL};
		CHECK(admin(s, "reset", kv, &a) == PD_OK && json_ok(a.json));
		CHECK(strstr(a.json, "\"reset\":true"));
		CHECK(run(s, "acme", "api/heap", 2, &heap[3], &x) == PD_OK);
		CHECK(x.status == PD_STATUS_BASELINE && x.reason == PD_REASON_FIRST);
		res_clear(&x);
		CHECK(admin(s, "stream", kv, &a) == PD_OK && strstr(a.json, "\"resets\":1,"));
		CHECK(strstr(a.json, "\"seq\":2,"));
	}
	{
		const char *kv[] = {"tenant", "acme", "name", "nope", NULL};
		CHECK(admin(s, "reset", kv, &a) == PD_E_NOTFOUND);
	}
	{
		const char *kv[] = {"tenant", "acme", "name", "db/heap", NULL};
		CHECK(admin(s, "delete", kv, &a) == PD_OK && json_ok(a.json));
		CHECK(strstr(a.json, "\"deleted\":1"));
		CHECK(admin(s, "stream", kv, &a) == PD_E_NOTFOUND);
		CHECK(admin(s, "delete", kv, &a) == PD_OK && strstr(a.json, "\"deleted\":0"));
	}
	{
		const char *kv[] = {"tenant", "acme", "prefix", "api/", NULL};
		CHECK(admin(s, "delete", kv, &a) == PD_OK && json_ok(a.json));
		CHECK(strstr(a.json, "\"deleted\":2"));
		CHECK(admin(s, "streams", kv, &a) == PD_OK && strstr(a.json, "\"streams\":[]"));
	}
	{
		const char *kv[] = {"limit", "10", NULL};
		CHECK(admin(s, "tenants", kv, &a) == PD_OK && json_ok(a.json));
		CHECK(strstr(a.json, "{\"name\":\"other\",\"streams\":1,"));
		CHECK(!strstr(a.json, "\"acme\""));
	}
	CHECK(admin(s, "stats", NULL, &a) == PD_OK && json_ok(a.json));
	if (getenv("PD_TEST_VERBOSE"))
		printf("%s\n", a.json);
	CHECK(strstr(a.json, "\"uptime_s\":") && strstr(a.json, "\"requests\":9,"));
	CHECK(strstr(a.json, "\"connections\":3}") && strstr(a.json, "\"limit_hits\":{"));
	/* Refused at once: done is not called. */
	CHECK(pd_service_admin(s, "frobnicate", NULL, on_admin, &a, &e) == PD_E_ARG);
	CHECK(!pd_service_admin_known("frobnicate") && pd_service_admin_known("stats"));
	{
		const char *kv1[] = {"tenant", "acme", NULL};
		const char *kv2[] = {"tenant", "acme", "bogus", "1", NULL};
		const char *kv3[] = {"limit", "0", NULL};
		const char *kv4[] = {"tenant", "acme", "name", "a", "prefix", "b", NULL};
		CHECK(pd_service_admin(s, "stream", kv1, on_admin, &a, &e) == PD_E_ARG);
		CHECK(pd_service_admin(s, "streams", kv2, on_admin, &a, &e) == PD_E_ARG);
		CHECK(pd_service_admin(s, "tenants", kv3, on_admin, &a, &e) == PD_E_ARG);
		CHECK(pd_service_admin(s, "delete", kv4, on_admin, &a, &e) == PD_E_ARG);
	}
	{
		/* More streams than a prefix delete has in flight: each delete moves
		 * on to the next name until all are gone, then one answer. */
		const char *kv[] = {"tenant", "acme", "prefix", "many/", NULL};
		const char *lkv[] = {"tenant", "acme", "prefix", "many/", "limit", "1000", NULL};
		char name[32];
		int made = 0;

		for (int i = 0; i < 75; i++) {
			snprintf(name, sizeof name, "many/%02d", i);
			made += run(s, "acme", name, 1, &heap[0], &x) == PD_OK;
			res_clear(&x);
		}
		CHECK(made == 75);
		CHECK(admin(s, "delete", kv, &a) == PD_OK && strstr(a.json, "\"deleted\":75"));
		CHECK(admin(s, "streams", lkv, &a) == PD_OK && strstr(a.json, "\"streams\":[]"));
		CHECK(admin(s, "delete", kv, &a) == PD_OK && strstr(a.json, "\"deleted\":0"));
	}
	free(a.json);
	pd_service_free(s);
}

/* ---- main ---------------------------------------------------------------------------------- */

static void cleanup_dir(void)
{
	DIR *d = opendir(tmp_dir);
	struct dirent *de;
	char p[512];

	while (d && (de = readdir(d)))
		if (de->d_name[0] != '.') {
			snprintf(p, sizeof p, "%s/%s", tmp_dir, de->d_name);
			unlink(p);
		}
	if (d)
		closedir(d);
	rmdir(tmp_dir);
}

int main(void)
{
	/* The repository's fixtures; the tests run from the repository root. */
	const char *td = getenv("PDELTA_FIXTURES");

	if (!td)
		td = "tests/data";
	if (load_set(td, "heap-small", heap) || load_set(td, "block-small", block)) {
		CHECK(0);
		return TH_DONE();
	}
	snprintf(tmp_dir, sizeof tmp_dir, "/tmp/pd_svc_XXXXXX");
	if (!mkdtemp(tmp_dir)) {
		CHECK(0);
		return TH_DONE();
	}
	build_expect(heap, &heap_exp, 1);
	build_expect(block, &block_exp, 1);

	test_sequence_and_reopen();
	test_upload_checks();
	test_content_hash();
	test_concurrent();
	test_store_fault();
	test_tiny_cache();
	test_limits();
	test_abort();
	test_cancel_queued();
	test_ttl();
	test_free_drains();
	test_cas_conflict();
	test_first_policy();
	test_admin();

	cleanup_dir();
	free_expect(&heap_exp);
	free_expect(&block_exp);
	for (int i = 0; i < NFILES; i++) {
		free(heap[i].p);
		free(block[i].p);
	}
	return TH_DONE();
}
