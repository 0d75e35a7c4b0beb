/*
 * test_frame: unit tests of the frame codec (common/pd_frame.[ch]).
 *
 * Round trip of every message type (including every string and list at its
 * maximum), every truncation point of every frame, trailing bytes, oversized
 * lengths and counts, bad enum values, reserved bits, bad magic/version, and
 * UTF-8 / character-set validation. Truncated payloads are decoded from an
 * exact-size heap copy so that ASan builds catch any over-read.
 *
 * `test_frame --write-corpus DIR` writes the fuzz seed corpus (the valid
 * frames below, in tests/fuzz/fuzz_frame.c's input format) and exits.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pd_frame.h"
#include "tharness.h"

#define MAX_SAMPLES 64

static char fill[2048];
static char ov_names[PD_MAX_OVERRIDES][PD_MAX_TYPE_NAME];
static char arg_keys[PD_MAX_ADMIN_ARGS][PD_MAX_ADMIN_KEY];
static uint8_t blob[1000];

static pd_str rep(size_t n)
{
	pd_str s = {fill, n};
	return s;
}

static void init_data(void)
{
	for (size_t i = 0; i < sizeof fill; i++)
		fill[i] = (char)('a' + i % 26);
	for (int i = 0; i < PD_MAX_OVERRIDES; i++) {
		memcpy(ov_names[i], fill, PD_MAX_TYPE_NAME);
		ov_names[i][0] = (char)('a' + i % 26);
		ov_names[i][1] = (char)('0' + i / 26);
	}
	for (int i = 0; i < PD_MAX_ADMIN_ARGS; i++) {
		memcpy(arg_keys[i], fill, PD_MAX_ADMIN_KEY);
		arg_keys[i][0] = (char)('a' + i);
	}
	for (size_t i = 0; i < sizeof blob; i++)
		blob[i] = (uint8_t)(i * 7 + 3);
}

static pd_msg base(uint8_t type, uint32_t id)
{
	pd_msg m;
	memset(&m, 0, sizeof m);
	m.type = type;
	m.request_id = id;
	return m;
}

static void add_hellos(pd_msg *s, int *n)
{
	pd_msg m = base(PD_FT_HELLO, 0);
	m.u.hello = (pd_msg_hello){1, 1, 0, pd_str_c("pdelta-agent/1.0"), pd_str_c("tok_abc.123")};
	s[(*n)++] = m;
	m.u.hello = (pd_msg_hello){1, 7, PD_FRAME_MAX_ABS, rep(PD_MAX_CLIENT_NAME),
				   rep(PD_MAX_TOKEN)};
	s[(*n)++] = m;
	m.u.hello = (pd_msg_hello){2, 2, PD_FRAME_MIN_LIMIT, pd_str_c(""), pd_str_c("")};
	s[(*n)++] = m;

	m = base(PD_FT_HELLO_OK, 0);
	m.u.hello_ok = (pd_msg_hello_ok){1,
					 PD_ROLE_AGENT,
					 PD_DEFAULT_MAX_FRAME,
					 PD_DEFAULT_MAX_INFLIGHT,
					 PD_DEFAULT_MAX_PROFILE_BYTES,
					 PD_DEFAULT_KEEPALIVE_MS,
					 PD_DEFAULT_IDLE_TIMEOUT_MS,
					 PD_DEFAULT_REQUEST_TIMEOUT_MS,
					 pd_str_c("acme"),
					 pd_str_c("pdeltad 0.1")};
	s[(*n)++] = m;
	m.u.hello_ok.role = PD_ROLE_ADMIN;
	m.u.hello_ok.tenant = rep(PD_MAX_TENANT);
	m.u.hello_ok.server_name = rep(PD_MAX_SERVER_NAME);
	m.u.hello_ok.max_profile_bytes = UINT64_MAX;
	s[(*n)++] = m;
}

static void add_control(pd_msg *s, int *n)
{
	static const char utf8_msg[] = "h\xc3\xa9llo w\xc3\xb6rld \xe2\x9c\x93 \xf0\x9f\x99\x82\n";
	pd_msg m = base(PD_FT_PING, 0);

	m.u.ping.opaque = 0x0123456789abcdefULL;
	s[(*n)++] = m;
	m.type = PD_FT_PONG;
	s[(*n)++] = m;
	m.u.ping.opaque = 0;
	s[(*n)++] = m;

	m = base(PD_FT_GOODBYE, 0);
	m.u.goodbye = (pd_msg_goodbye){PD_BYE_NORMAL, pd_str_c("")};
	s[(*n)++] = m;
	m.u.goodbye = (pd_msg_goodbye){PD_BYE_REVOKED, pd_str_c(utf8_msg)};
	s[(*n)++] = m;
	m.u.goodbye = (pd_msg_goodbye){PD_BYE_SHUTDOWN, rep(PD_MAX_MESSAGE)};
	s[(*n)++] = m;

	m = base(PD_FT_ERROR, 0);
	m.u.error = (pd_msg_error){PD_E_PROTO, 0, PD_DETAIL_BAD_FRAME, 0, pd_str_c("bad frame")};
	s[(*n)++] = m;
	m.request_id = 5;
	m.u.error = (pd_msg_error){PD_E_SEQ, 0, PD_DETAIL_SEQ_STALE, 41, pd_str_c(utf8_msg)};
	s[(*n)++] = m;
	m.request_id = 0xffffffffu;
	m.u.error = (pd_msg_error){PD_E_INTERNAL, 1, PD_DETAIL__COUNT - 1, UINT64_MAX,
				   rep(PD_MAX_MESSAGE)};
	s[(*n)++] = m;
}

static void add_requests(pd_msg *s, int *n)
{
	uint8_t hash[PD_CONTENT_HASH_LEN];
	pd_msg m = base(PD_FT_DELTA_BEGIN, 1);

	m.u.begin.seq = 42;
	m.u.begin.incarnation = 0xdeadbeefcafeULL;
	m.u.begin.producer_start_ns = 1700000000123456789ULL;
	m.u.begin.first_policy = PD_WIRE_FIRST_KEEP;
	m.u.begin.stream = pd_str_c("svc/api/heap");
	s[(*n)++] = m;
	m.u.begin.n_overrides = 2;
	m.u.begin.overrides[0] = (pd_wire_override){pd_str_c("inuse_space"), PD_WIRE_POLICY_DELTA};
	m.u.begin.overrides[1] = (pd_wire_override){pd_str_c("alloc_space"), PD_WIRE_POLICY_GAUGE};
	m.u.begin.first_policy = PD_WIRE_FIRST_DROP;
	s[(*n)++] = m;
	m.flags = PD_FLAG_BEGIN_NO_DATA;
	m.request_id = 0xfffffffeu;
	m.u.begin.first_policy = PD_WIRE_FIRST_AUTO;
	m.u.begin.seq = UINT64_MAX;
	m.u.begin.stream = rep(PD_MAX_STREAM);
	m.u.begin.n_overrides = PD_MAX_OVERRIDES;
	for (int i = 0; i < PD_MAX_OVERRIDES; i++)
		m.u.begin.overrides[i] = (pd_wire_override){{ov_names[i], PD_MAX_TYPE_NAME},
							    (uint8_t)(1 + i % 2)};
	s[(*n)++] = m;

	m = base(PD_FT_DATA, 1);
	m.u.data = (pd_bytes){blob, 1};
	s[(*n)++] = m;
	m.u.data = (pd_bytes){blob, sizeof blob};
	s[(*n)++] = m;

	for (int i = 0; i < PD_CONTENT_HASH_LEN; i++)
		hash[i] = (uint8_t)(0xf0 ^ i);
	m = base(PD_FT_DATA_END, 1);
	m.u.data_end.total_bytes = 1001;
	memcpy(m.u.data_end.hash, hash, sizeof hash);
	s[(*n)++] = m;

	s[(*n)++] = base(PD_FT_CANCEL, 9);
}

static void add_admin(pd_msg *s, int *n)
{
	pd_msg m = base(PD_FT_ADMIN, 3);

	m.u.admin.command = pd_str_c("stats");
	s[(*n)++] = m;
	m.u.admin.command = pd_str_c("streams");
	m.u.admin.n_args = 4;
	m.u.admin.args[0] = (pd_admin_arg){pd_str_c("tenant"), pd_str_c("acme")};
	m.u.admin.args[1] = (pd_admin_arg){pd_str_c("prefix"), pd_str_c("svc/")};
	m.u.admin.args[2] = (pd_admin_arg){pd_str_c("sort"), pd_str_c("name")};
	m.u.admin.args[3] = (pd_admin_arg){pd_str_c("limit"), pd_str_c("")};
	s[(*n)++] = m;
	m.u.admin.command = rep(PD_MAX_ADMIN_CMD);
	m.u.admin.n_args = PD_MAX_ADMIN_ARGS;
	for (int i = 0; i < PD_MAX_ADMIN_ARGS; i++)
		m.u.admin.args[i] = (pd_admin_arg){{arg_keys[i], PD_MAX_ADMIN_KEY},
						   rep(PD_MAX_ADMIN_VALUE)};
	s[(*n)++] = m;
}

static void add_results(pd_msg *s, int *n)
{
	static const uint8_t st[][3] = {
		{PD_WIRE_STATUS_DELTA, PD_WIRE_REASON_NONE, PD_WIRE_STATUS_DELTA},
		{PD_WIRE_STATUS_BASELINE, PD_WIRE_REASON_FIRST, PD_WIRE_STATUS_BASELINE},
		{PD_WIRE_STATUS_BASELINE, PD_WIRE_REASON_RESET, PD_WIRE_STATUS_BASELINE},
		{PD_WIRE_STATUS_BASELINE, PD_WIRE_REASON_MOVED, PD_WIRE_STATUS_BASELINE},
		{PD_WIRE_STATUS_DUPLICATE, PD_WIRE_REASON_NONE, PD_WIRE_STATUS_DELTA},
		{PD_WIRE_STATUS_DUPLICATE, PD_WIRE_REASON_EVICTED, PD_WIRE_STATUS_BASELINE},
	};
	pd_msg m = base(PD_FT_RESULT, 1);

	for (size_t i = 0; i < sizeof st / sizeof st[0]; i++) {
		m.u.result = (pd_msg_result){st[i][0], st[i][1], st[i][2], 42 + i, 1000, 17,
					     i ? 0 : 123456};
		s[(*n)++] = m;
	}
	m = base(PD_FT_RESULT_DATA, 1);
	m.u.data = (pd_bytes){blob, 5};
	s[(*n)++] = m;
	m = base(PD_FT_RESULT_END, 1);
	m.u.result_end = (pd_msg_result_end){5, 0x89abcdefu};
	s[(*n)++] = m;
	m = base(PD_FT_ADMIN_RESULT, 3);
	m.u.admin_result = (pd_msg_admin_result){PD_ADMIN_JSON, 0};
	s[(*n)++] = m;
	m.u.admin_result.total_bytes = 1234;
	s[(*n)++] = m;
}

static int make_samples(pd_msg *s)
{
	int n = 0;
	add_hellos(s, &n);
	add_control(s, &n);
	add_requests(s, &n);
	add_admin(s, &n);
	add_results(s, &n);
	return n;
}

/* The k-th sample of a type (samples are built in a fixed order). */
static const pd_msg *find(const pd_msg *s, int n, uint8_t type, int k)
{
	for (int i = 0; i < n; i++)
		if (s[i].type == type && k-- == 0)
			return &s[i];
	return NULL;
}

static bool is_data(uint8_t type) { return type == PD_FT_DATA || type == PD_FT_RESULT_DATA; }

/* Decodes payload from an exact-size heap copy (ASan sees over-reads). */
static int decode_copy(const pd_frame_hdr *h, const uint8_t *payload, pd_msg *m, pd_err *e)
{
	uint8_t *copy = malloc(h->len ? h->len : 1);
	int rc;

	if (h->len)
		memcpy(copy, payload, h->len);
	rc = pd_msg_decode(h, copy, m, e);
	free(copy);
	return rc;
}

/* ---- round trip ---------------------------------------------------------------- */

static void test_round_trip(const pd_msg *s, int n)
{
	pd_buf b, b2;
	pd_err e;

	pd_buf_init(&b, 0);
	pd_buf_init(&b2, 0);
	for (int i = 0; i < n; i++) {
		pd_msg d;
		size_t used = 0;
		int rc;

		pd_buf_reset(&b);
		pd_buf_reset(&b2);
		rc = pd_msg_encode(&b, &s[i], &e);
		CHECK(rc == PD_OK);
		if (rc) {
			fprintf(stderr, "sample %d (%s): %s\n", i, pd_frame_type_name(s[i].type),
				e.msg);
			continue;
		}
		CHECK(b.len == PD_FRAME_HDR_LEN + pd_msg_payload_len(&s[i]));
		rc = pd_frame_decode(b.data, b.len, PD_FRAME_MAX_ABS, &d, &used, &e);
		CHECK(rc == PD_OK);
		if (rc) {
			fprintf(stderr, "sample %d (%s): %s\n", i, pd_frame_type_name(s[i].type),
				e.msg);
			continue;
		}
		CHECK(used == b.len);
		CHECK(pd_msg_equal(&s[i], &d));
		CHECK(pd_msg_encode(&b2, &d, &e) == PD_OK);
		CHECK(b2.len == b.len && memcmp(b.data, b2.data, b.len) == 0);
	}
	pd_buf_free(&b);
	pd_buf_free(&b2);
}

/* Several frames back to back decode one after the other. */
static void test_stream_of_frames(const pd_msg *s, int n)
{
	pd_buf b;
	pd_err e;
	size_t off = 0;
	int got = 0;

	pd_buf_init(&b, 0);
	for (int i = 0; i < n; i++)
		CHECK(pd_msg_encode(&b, &s[i], &e) == PD_OK);
	while (off < b.len) {
		pd_msg d;
		size_t used;
		if (pd_frame_decode(b.data + off, b.len - off, PD_FRAME_MAX_ABS, &d, &used, &e))
			break;
		CHECK(pd_msg_equal(&d, &s[got]));
		off += used;
		got++;
	}
	CHECK(got == n && off == b.len);
	pd_buf_free(&b);
}

/* ---- truncation and trailing bytes -------------------------------------------- */

static void check_truncations(const pd_msg *m, const pd_buf *b)
{
	pd_frame_hdr h;
	pd_msg d;
	pd_err e;
	size_t used;

	/* A short stream is "need more", never an error or a success. */
	for (size_t k = 0; k < b->len; k++)
		CHECK(pd_frame_decode(b->data, k, PD_FRAME_MAX_ABS, &d, &used, &e) ==
		      PD_FRAME_NEED_MORE);
	CHECK(pd_frame_hdr_decode(b->data, b->len, &h, PD_FRAME_MAX_ABS, &e) == PD_OK);
	/* A header that claims a shorter payload: every cut is rejected
	 * (DATA frames stay valid while they hold at least one byte). */
	for (uint32_t k = 0; k < h.len; k++) {
		pd_frame_hdr t = h;
		int rc;
		t.len = k;
		rc = decode_copy(&t, b->data + PD_FRAME_HDR_LEN, &d, &e);
		if (is_data(m->type) && k > 0)
			CHECK(rc == PD_OK && d.u.data.len == k);
		else
			CHECK(rc > 0);
	}
}

static void check_trailing(const pd_msg *m, const pd_buf *b)
{
	pd_frame_hdr h;
	pd_msg d;
	pd_err e;
	uint8_t *p = malloc(b->len + 1);
	int rc;

	memcpy(p, b->data, b->len);
	p[b->len] = 0x55;
	CHECK(pd_frame_hdr_decode(p, b->len, &h, PD_FRAME_MAX_ABS, &e) == PD_OK);
	h.len++;
	rc = pd_msg_decode(&h, p + PD_FRAME_HDR_LEN, &d, &e);
	if (is_data(m->type))
		CHECK(rc == PD_OK);
	else
		CHECK(rc == PD_E_MALFORMED || rc == PD_E_LIMIT);
	free(p);
}

static void test_truncation(const pd_msg *s, int n)
{
	pd_buf b;
	pd_err e;

	pd_buf_init(&b, 0);
	for (int i = 0; i < n; i++) {
		pd_buf_reset(&b);
		if (pd_msg_encode(&b, &s[i], &e))
			continue; /* reported by test_round_trip */
		check_truncations(&s[i], &b);
		check_trailing(&s[i], &b);
	}
	pd_buf_free(&b);
}

/* ---- header ---------------------------------------------------------------------- */

static int hdr_rc(uint32_t len, uint8_t type, uint8_t flags, uint16_t rsv, uint32_t id,
		  uint32_t max)
{
	pd_frame_hdr h = {len, type, flags, rsv, id}, d;
	uint8_t b[PD_FRAME_HDR_LEN];
	pd_err e;

	pd_frame_hdr_encode(b, &h);
	return pd_frame_hdr_decode(b, sizeof b, &d, max, &e);
}

static void test_header(void)
{
	pd_frame_hdr h = {0x00020304, PD_FT_DATA, 0, 0, 0x0a0b0c0d}, d;
	uint8_t b[PD_FRAME_HDR_LEN];
	static const uint8_t want[] = {0, 2, 3, 4, 0x11, 0, 0, 0, 0x0a, 0x0b, 0x0c, 0x0d};
	pd_err e;

	pd_frame_hdr_encode(b, &h);
	CHECK(memcmp(b, want, sizeof want) == 0);
	CHECK(pd_frame_hdr_decode(b, sizeof b, &d, PD_FRAME_MAX_ABS, &e) == PD_OK);
	CHECK(d.len == h.len && d.type == h.type && d.request_id == h.request_id);
	for (size_t k = 0; k < PD_FRAME_HDR_LEN; k++)
		CHECK(pd_frame_hdr_decode(b, k, &d, PD_FRAME_MAX_ABS, &e) == PD_FRAME_NEED_MORE);

	CHECK(hdr_rc(8, PD_FT_PING, 0, 0, 0, 4096) == PD_OK);
	CHECK(hdr_rc(8, PD_FT_PING, 0, 1, 0, 4096) == PD_E_PROTO); /* reserved */
	CHECK(hdr_rc(8, PD_FT_PING, 0x80, 0, 0, 4096) == PD_E_PROTO); /* flags */
	CHECK(hdr_rc(8, PD_FT_PING, 0, 0, 1, 4096) == PD_E_PROTO); /* id on PING */
	CHECK(hdr_rc(0, PD_FT_CANCEL, 0, 0, 0, 4096) == PD_E_PROTO); /* id 0 on CANCEL */
	CHECK(hdr_rc(0, 0x00, 0, 0, 0, 4096) == PD_E_PROTO); /* unknown types */
	CHECK(hdr_rc(0, 0x07, 0, 0, 0, 4096) == PD_E_PROTO);
	CHECK(hdr_rc(0, 0x7f, 0, 0, 0, 4096) == PD_E_PROTO);
	CHECK(hdr_rc(0, 0xff, 0, 0, 0, 4096) == PD_E_PROTO);
	CHECK(hdr_rc(9, PD_FT_PING, 0, 0, 0, 4096) == PD_E_LIMIT); /* fixed size */
	CHECK(hdr_rc(7, PD_FT_PING, 0, 0, 0, 4096) == PD_E_MALFORMED);
	CHECK(hdr_rc(1, PD_FT_CANCEL, 0, 0, 1, 4096) == PD_E_LIMIT);
	CHECK(hdr_rc(0, PD_FT_DATA, 0, 0, 1, 4096) == PD_E_MALFORMED); /* empty DATA */
	CHECK(hdr_rc(4096, PD_FT_DATA, 0, 0, 1, PD_PREAUTH_MAX_PAYLOAD) == PD_OK);
	CHECK(hdr_rc(4097, PD_FT_DATA, 0, 0, 1, PD_PREAUTH_MAX_PAYLOAD) == PD_E_LIMIT);
	CHECK(hdr_rc(0xffffffffu, PD_FT_DATA, 0, 0, 1, 0xffffffffu) == PD_E_LIMIT);
	CHECK(hdr_rc(PD_FRAME_MAX_ABS, PD_FT_RESULT_DATA, 0, 0, 1, 0xffffffffu) == PD_OK);
	CHECK(hdr_rc(5000, PD_FT_ADMIN, 0, 0, 1, PD_DEFAULT_MAX_FRAME) == PD_OK);
	CHECK(hdr_rc(100000, PD_FT_ADMIN, 0, 0, 1, PD_DEFAULT_MAX_FRAME) == PD_E_LIMIT);
	CHECK(hdr_rc(600, PD_FT_HELLO, 0, 0, 0, PD_PREAUTH_MAX_PAYLOAD) == PD_E_LIMIT);
	CHECK(hdr_rc(14, PD_FT_ERROR, 0, 0, 0, 4096) == PD_OK); /* both id kinds */
	CHECK(hdr_rc(14, PD_FT_ERROR, 0, 0, 3, 4096) == PD_OK);
	CHECK(hdr_rc(30, PD_FT_DELTA_BEGIN, PD_FLAG_BEGIN_NO_DATA, 0, 3, 4096) == PD_OK);
	CHECK(hdr_rc(30, PD_FT_DELTA_BEGIN, 0x04, 0, 3, 4096) == PD_E_PROTO);

	CHECK(pd_frame_type_senders(PD_FT_HELLO) == PD_SIDE_CLIENT);
	CHECK(pd_frame_type_senders(PD_FT_RESULT) == PD_SIDE_SERVER);
	CHECK(pd_frame_type_senders(PD_FT_PING) == (PD_SIDE_CLIENT | PD_SIDE_SERVER));
	CHECK(pd_frame_type_senders(0x42) == 0);
	CHECK(strcmp(pd_frame_type_name(PD_FT_DATA_END), "DATA_END") == 0);
	CHECK(strcmp(pd_frame_type_name(0x42), "UNKNOWN") == 0);
}

/* ---- value validation ------------------------------------------------------------ */

/* Encodes m, sets payload byte off to v, decodes; returns the decode rc. */
static int patched(const pd_msg *m, size_t off, uint8_t v)
{
	pd_buf b;
	pd_msg d;
	pd_err e;
	size_t used;
	int rc;

	pd_buf_init(&b, 0);
	rc = pd_msg_encode(&b, m, &e);
	if (rc == PD_OK) {
		b.data[PD_FRAME_HDR_LEN + off] = v;
		rc = pd_frame_decode(b.data, b.len, PD_FRAME_MAX_ABS, &d, &used, &e);
	} else {
		rc = -100;
	}
	pd_buf_free(&b);
	return rc;
}

static void test_bad_enums(const pd_msg *s, int n)
{
	const pd_msg *hello = find(s, n, PD_FT_HELLO, 0);
	const pd_msg *hello_ok = find(s, n, PD_FT_HELLO_OK, 0);
	const pd_msg *begin2 = find(s, n, PD_FT_DELTA_BEGIN, 1);
	pd_msg m;

	CHECK(begin2->u.begin.n_overrides == 2);
	CHECK(patched(hello, 0, 'X') == PD_E_PROTO); /* magic */
	CHECK(patched(hello, 5, 0) == PD_E_PROTO); /* min version 0 */
	CHECK(patched(hello, 5, 2) == PD_E_PROTO); /* min > max */
	CHECK(patched(hello, 10, 0x10) == PD_E_MALFORMED); /* max_frame 4 KiB */
	CHECK(patched(hello_ok, 2, 0) == PD_E_MALFORMED); /* role */
	CHECK(patched(hello_ok, 2, 3) == PD_E_MALFORMED);
	CHECK(patched(hello_ok, 3, 1) == PD_E_MALFORMED); /* reserved */
	CHECK(patched(hello_ok, 1, 0) == PD_E_MALFORMED); /* version 0 */
	CHECK(patched(begin2, 24, 3) == PD_E_MALFORMED); /* first policy */
	CHECK(patched(begin2, 25, 1) == PD_E_MALFORMED); /* reserved */
	CHECK(patched(begin2, 27, 33) == PD_E_LIMIT); /* n_overrides */
	CHECK(patched(begin2, 27, 3) == PD_E_MALFORMED); /* count vs bytes */
	CHECK(patched(begin2, 29, 0) == PD_E_MALFORMED); /* empty stream name */
	/* the first override's policy byte: after fixed 28 + stream + name */
	{
		size_t off = 28 + 2 + begin2->u.begin.stream.len + 2 +
			     begin2->u.begin.overrides[0].name.len;
		CHECK(patched(begin2, off, 0) == PD_E_MALFORMED);
		CHECK(patched(begin2, off, 3) == PD_E_MALFORMED);
		CHECK(patched(begin2, off, PD_WIRE_POLICY_GAUGE) == PD_OK);
	}

	m = base(PD_FT_GOODBYE, 0);
	m.u.goodbye.reason = PD_BYE_NORMAL;
	CHECK(patched(&m, 1, PD_BYE__COUNT) == PD_E_MALFORMED);
	m = base(PD_FT_ERROR, 2);
	m.u.error.code = PD_E_BUSY;
	CHECK(patched(&m, 1, 0) == PD_E_MALFORMED); /* code 0 */
	CHECK(patched(&m, 1, PD_E__COUNT) == PD_E_MALFORMED);
	CHECK(patched(&m, 2, 2) == PD_E_MALFORMED); /* retryable */
	CHECK(patched(&m, 3, PD_DETAIL__COUNT) == PD_E_MALFORMED);
	m = base(PD_FT_ADMIN_RESULT, 2);
	m.u.admin_result.format = PD_ADMIN_JSON;
	CHECK(patched(&m, 0, 2) == PD_E_MALFORMED);
	CHECK(patched(&m, 2, 1) == PD_E_MALFORMED); /* reserved */

	m = base(PD_FT_RESULT, 2);
	m.u.result = (pd_msg_result){PD_WIRE_STATUS_DELTA, 0, PD_WIRE_STATUS_DELTA, 1, 0, 0, 0};
	CHECK(patched(&m, 0, 0) == PD_E_MALFORMED); /* status */
	CHECK(patched(&m, 0, 4) == PD_E_MALFORMED);
	CHECK(patched(&m, 1, PD_WIRE_REASON_FIRST) == PD_E_MALFORMED); /* DELTA + reason */
	CHECK(patched(&m, 2, PD_WIRE_STATUS_BASELINE) == PD_E_MALFORMED); /* orig != status */
	CHECK(patched(&m, 3, 1) == PD_E_MALFORMED); /* reserved */
	m.u.result = (pd_msg_result){PD_WIRE_STATUS_BASELINE, PD_WIRE_REASON_RESET,
				     PD_WIRE_STATUS_BASELINE, 1, 0, 0, 0};
	CHECK(patched(&m, 1, PD_WIRE_REASON_NONE) == PD_E_MALFORMED); /* BASELINE, no reason */
	CHECK(patched(&m, 1, PD_WIRE_REASON_STATE_LOST + 1) == PD_E_MALFORMED);
	m.u.result = (pd_msg_result){PD_WIRE_STATUS_DUPLICATE, PD_WIRE_REASON_NONE,
				     PD_WIRE_STATUS_DELTA, 1, 0, 0, 0};
	CHECK(patched(&m, 2, PD_WIRE_STATUS_DUPLICATE) == PD_E_MALFORMED);
	CHECK(patched(&m, 2, 0) == PD_E_MALFORMED);
	CHECK(patched(&m, 1, PD_WIRE_REASON_FIRST) == PD_E_MALFORMED);
}

/* Builds a payload by hand: a wire string with a declared length. */
static size_t put_str(uint8_t *p, uint16_t declared, const char *s, size_t n)
{
	p[0] = (uint8_t)(declared >> 8);
	p[1] = (uint8_t)declared;
	memcpy(p + 2, s, n);
	return 2 + n;
}

static void test_oversized_strings(void)
{
	uint8_t p[2048];
	pd_frame_hdr h = {0, PD_FT_GOODBYE, 0, 0, 0};
	pd_msg d;
	pd_err e;
	size_t n;

	/* message declared longer than the maximum (bytes present) */
	p[0] = 0, p[1] = 0;
	n = 2 + put_str(p + 2, PD_MAX_MESSAGE + 1, fill, PD_MAX_MESSAGE + 1);
	h.len = (uint32_t)n;
	CHECK(pd_msg_decode(&h, p, &d, &e) == PD_E_LIMIT);
	/* declared longer than the payload */
	n = 2 + put_str(p + 2, 60000, fill, 10);
	h.len = (uint32_t)n;
	CHECK(pd_msg_decode(&h, p, &d, &e) == PD_E_MALFORMED);

	/* ADMIN with 17 args */
	h = (pd_frame_hdr){0, PD_FT_ADMIN, 0, 0, 1};
	n = put_str(p, 5, "stats", 5);
	p[n++] = 0, p[n++] = PD_MAX_ADMIN_ARGS + 1;
	for (int i = 0; i <= PD_MAX_ADMIN_ARGS; i++) {
		n += put_str(p + n, 1, &fill[i], 1);
		n += put_str(p + n, 0, "", 0);
	}
	h.len = (uint32_t)n;
	CHECK(pd_msg_decode(&h, p, &d, &e) == PD_E_LIMIT);
	p[8] = PD_MAX_ADMIN_ARGS, h.len -= 5;
	CHECK(pd_msg_decode(&h, p, &d, &e) == PD_OK);
	CHECK(d.u.admin.n_args == PD_MAX_ADMIN_ARGS);
	/* admin key too long, stream name too long */
	n = put_str(p, 5, "stats", 5);
	p[n++] = 0, p[n++] = 1;
	n += put_str(p + n, PD_MAX_ADMIN_KEY + 1, fill, PD_MAX_ADMIN_KEY + 1);
	n += put_str(p + n, 0, "", 0);
	h.len = (uint32_t)n;
	CHECK(pd_msg_decode(&h, p, &d, &e) == PD_E_LIMIT);
	h = (pd_frame_hdr){0, PD_FT_DELTA_BEGIN, 0, 0, 1};
	memset(p, 0, 28);
	n = 28 + put_str(p + 28, PD_MAX_STREAM + 1, fill, PD_MAX_STREAM + 1);
	h.len = (uint32_t)n;
	CHECK(pd_msg_decode(&h, p, &d, &e) == PD_E_LIMIT);
	n = 28 + put_str(p + 28, PD_MAX_STREAM, fill, PD_MAX_STREAM);
	h.len = (uint32_t)n;
	CHECK(pd_msg_decode(&h, p, &d, &e) == PD_OK);
}

static int enc_rc(const pd_msg *m)
{
	pd_buf b;
	pd_err e;
	int rc;

	pd_buf_init(&b, 0);
	rc = pd_msg_encode(&b, m, &e);
	CHECK(rc != PD_OK || b.len == PD_FRAME_HDR_LEN + pd_msg_payload_len(m));
	CHECK(rc == PD_OK || b.len == 0);
	pd_buf_free(&b);
	return rc;
}

static void test_encode_refuses(const pd_msg *s, int n)
{
	const pd_msg *begin = find(s, n, PD_FT_DELTA_BEGIN, 0);
	const pd_msg *hello_ok = find(s, n, PD_FT_HELLO_OK, 0);
	pd_msg m = *begin;

	CHECK(enc_rc(&m) == PD_OK);
	m.u.begin.stream = rep(PD_MAX_STREAM + 1);
	CHECK(enc_rc(&m) == PD_E_LIMIT);
	m.u.begin.stream = pd_str_c("");
	CHECK(enc_rc(&m) == PD_E_ARG);
	m.u.begin.stream = pd_str_c("a\tb");
	CHECK(enc_rc(&m) == PD_E_ARG);
	m.u.begin.stream = (pd_str){NULL, 3};
	CHECK(enc_rc(&m) == PD_E_ARG);
	m.u.begin.stream = (pd_str){"abc", 70000};
	CHECK(enc_rc(&m) == PD_E_LIMIT);
	m = *begin;
	m.u.begin.n_overrides = PD_MAX_OVERRIDES + 1;
	CHECK(enc_rc(&m) == PD_E_LIMIT);
	m.u.begin.n_overrides = 2;
	m.u.begin.overrides[0] = (pd_wire_override){pd_str_c("x"), PD_WIRE_POLICY_DELTA};
	m.u.begin.overrides[1] = (pd_wire_override){pd_str_c("x"), PD_WIRE_POLICY_GAUGE};
	CHECK(enc_rc(&m) == PD_E_ARG); /* duplicate */
	m.u.begin.overrides[1].name = pd_str_c("y");
	CHECK(enc_rc(&m) == PD_OK);
	m.flags = PD_FLAG_BEGIN_AFTER; /* after_seq 0 must be below seq */
	m.u.begin.seq = 0;
	CHECK(enc_rc(&m) == PD_E_ARG);
	m.u.begin.seq = 5;
	m.u.begin.after_seq = 4;
	CHECK(enc_rc(&m) == PD_OK);
	m.u.begin.after_seq = 0;
	m.flags = 0x04;
	CHECK(enc_rc(&m) == PD_E_ARG);
	m.flags = 0;
	m.request_id = 0;
	CHECK(enc_rc(&m) == PD_E_ARG);
	m.type = 0x42;
	CHECK(enc_rc(&m) == PD_E_ARG);

	m = base(PD_FT_ADMIN, 1);
	m.u.admin.command = pd_str_c("Streams");
	CHECK(enc_rc(&m) == PD_E_ARG);
	m.u.admin.command = pd_str_c("streams");
	m.u.admin.n_args = 2;
	m.u.admin.args[0] = (pd_admin_arg){pd_str_c("name"), pd_str_c("a")};
	m.u.admin.args[1] = (pd_admin_arg){pd_str_c("name"), pd_str_c("b")};
	CHECK(enc_rc(&m) == PD_E_ARG);
	m.u.admin.args[1].key = pd_str_c("sort");
	CHECK(enc_rc(&m) == PD_OK);
	m.u.admin.args[1].value = pd_str_c("a\nb");
	CHECK(enc_rc(&m) == PD_E_ARG);

	m = base(PD_FT_DATA, 1);
	m.u.data = (pd_bytes){blob, 0};
	CHECK(enc_rc(&m) == PD_E_ARG);
	m.u.data = (pd_bytes){blob, (size_t)PD_FRAME_MAX_ABS + 1};
	CHECK(enc_rc(&m) == PD_E_LIMIT);

	m = base(PD_FT_HELLO, 0);
	m.u.hello = (pd_msg_hello){1, 1, 0, pd_str_c("agent"), pd_str_c("has space")};
	CHECK(enc_rc(&m) == PD_E_ARG);
	m.u.hello.token = pd_str_c("t\xc3\xa9");
	CHECK(enc_rc(&m) == PD_E_ARG);
	m.u.hello.token = rep(PD_MAX_TOKEN + 1);
	CHECK(enc_rc(&m) == PD_E_LIMIT);
	m.u.hello.token = pd_str_c("");
	m.u.hello.max_frame = 1000;
	CHECK(enc_rc(&m) == PD_E_ARG);

	m = *hello_ok;
	m.u.hello_ok.idle_timeout_ms = m.u.hello_ok.keepalive_ms;
	CHECK(enc_rc(&m) == PD_E_ARG);
	m = *hello_ok;
	m.u.hello_ok.tenant = pd_str_c("");
	CHECK(enc_rc(&m) == PD_E_ARG);
	m = *hello_ok;
	m.u.hello_ok.max_inflight = 0;
	CHECK(enc_rc(&m) == PD_E_ARG);
}

static void test_buffer_cap(const pd_msg *s)
{
	pd_buf b;
	pd_err e;

	pd_buf_init(&b, 20);
	CHECK(pd_msg_encode(&b, &s[0], &e) == PD_E_LIMIT); /* HELLO > 20 bytes */
	CHECK(b.len == 0);
	pd_buf_free(&b);
}

/* ---- strings ------------------------------------------------------------------------ */

static int goodbye_with(const char *msg, size_t n)
{
	pd_msg m = base(PD_FT_GOODBYE, 0);
	m.u.goodbye.message = (pd_str){msg, n};
	return enc_rc(&m);
}

static int stream_named(const char *name)
{
	pd_msg m = base(PD_FT_DELTA_BEGIN, 1);
	m.u.begin.stream = pd_str_c(name);
	return enc_rc(&m);
}

static void test_utf8(void)
{
	static const struct {
		const char *s;
		bool ok;
	} cases[] = {
		{"", true},
		{"plain ascii", true},
		{"\xc2\x80", true},
		{"\xdf\xbf", true},
		{"\xe0\xa0\x80", true},
		{"\xed\x9f\xbf", true},
		{"\xee\x80\x80", true},
		{"\xf0\x90\x80\x80", true},
		{"\xf4\x8f\xbf\xbf", true},
		{"\x80", false},             /* lone continuation */
		{"\xc0\x80", false},         /* overlong NUL */
		{"\xc1\xbf", false},         /* overlong */
		{"\xe0\x9f\xbf", false},     /* overlong */
		{"\xed\xa0\x80", false},     /* surrogate */
		{"\xf0\x8f\xbf\xbf", false}, /* overlong */
		{"\xf4\x90\x80\x80", false}, /* > U+10FFFF */
		{"\xf5\x80\x80\x80", false},
		{"\xff", false},
		{"\xc3", false},             /* truncated */
		{"\xe2\x9c", false},
		{"\xf0\x9f\x99", false},
		{"\xe2\x28\xa1", false},     /* bad continuation */
	};

	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		const uint8_t *p = (const uint8_t *)cases[i].s;
		CHECK(pd_utf8_valid(p, strlen(cases[i].s)) == cases[i].ok);
		CHECK((goodbye_with(cases[i].s, strlen(cases[i].s)) == PD_OK) == cases[i].ok);
	}
	CHECK(goodbye_with("a\0b", 3) == PD_E_ARG); /* NUL in text */
	CHECK(goodbye_with("a\nb\tc", 5) == PD_OK); /* other controls fine in text */
	CHECK(stream_named("svc/\xc3\xa9t\xc3\xa9") == PD_OK);
	CHECK(stream_named("a\x7f") == PD_E_ARG); /* DEL in a name */
	CHECK(stream_named("a\x1f") == PD_E_ARG);
	CHECK(stream_named("a b") == PD_OK);
}

/* ---- cursor and misc ----------------------------------------------------------------- */

static void test_cursor(void)
{
	static const uint8_t p[] = {0x01, 0x02, 0x03, 0x00, 0x02, 'h', 'i', 0xff};
	pd_frd r;
	uint8_t u8;
	uint16_t u16;
	uint64_t u64;
	pd_str s;

	pd_frd_init(&r, p, sizeof p);
	CHECK(pd_frd_u64(&r, &u64) && u64 == 0x01020300026869ffULL && pd_frd_left(&r) == 0);
	pd_frd_init(&r, p, sizeof p);
	CHECK(pd_frd_u16(&r, &u16) && u16 == 0x0102);
	CHECK(pd_frd_u8(&r, &u8) && u8 == 3);
	CHECK(pd_frd_str(&r, &s) && s.len == 2 && memcmp(s.p, "hi", 2) == 0);
	CHECK(!pd_frd_u16(&r, &u16) && pd_frd_left(&r) == 1); /* failure consumes nothing */
	CHECK(!pd_frd_u64(&r, &u64) && pd_frd_left(&r) == 1);
	CHECK(!pd_frd_str(&r, &s) && pd_frd_left(&r) == 1);
	CHECK(pd_frd_u8(&r, &u8) && u8 == 0xff && pd_frd_left(&r) == 0);
	CHECK(!pd_frd_u8(&r, &u8));
}

static void test_choose_version(void)
{
	CHECK(pd_proto_choose_version(1, 1, 1, 1) == 1);
	CHECK(pd_proto_choose_version(1, 5, 2, 3) == 3);
	CHECK(pd_proto_choose_version(2, 5, 1, 3) == 3);
	CHECK(pd_proto_choose_version(4, 5, 1, 3) == 0);
	CHECK(pd_proto_choose_version(1, 1, 2, 9) == 0);
}

/* ---- seed corpus for tests/fuzz/fuzz_frame.c ------------------------------------------ */

/* Index of a type in fuzz_frame.c's selector table (same order). */
static int fuzz_selector(uint8_t type)
{
	static const uint8_t order[] = {
		PD_FT_HELLO,	   PD_FT_HELLO_OK, PD_FT_PING,	      PD_FT_PONG,
		PD_FT_GOODBYE,	   PD_FT_ERROR,	   PD_FT_DELTA_BEGIN, PD_FT_DATA,
		PD_FT_DATA_END,	   PD_FT_CANCEL,   PD_FT_ADMIN,	      PD_FT_RESULT,
		PD_FT_RESULT_DATA, PD_FT_RESULT_END, PD_FT_ADMIN_RESULT,
	};
	for (int i = 0; i < (int)sizeof order; i++)
		if (order[i] == type)
			return i;
	return 0;
}

static int write_file(const char *dir, const char *name, int i, uint8_t mode, const uint8_t *p,
		      size_t n)
{
	char path[4096];
	FILE *f;

	snprintf(path, sizeof path, "%s/%s_%02d", dir, name, i);
	f = fopen(path, "wb");
	if (!f)
		return 1;
	fputc(mode, f);
	fwrite(p, 1, n, f);
	return fclose(f) ? 1 : 0;
}

static int write_corpus(const char *dir, const pd_msg *s, int n)
{
	pd_buf b, all;
	pd_err e;
	int bad = 0;

	pd_buf_init(&b, 0);
	pd_buf_init(&all, 0);
	for (int i = 0; i < n; i++) {
		uint8_t sel = (uint8_t)fuzz_selector(s[i].type);
		pd_buf_reset(&b);
		if (pd_msg_encode(&b, &s[i], &e))
			return 1;
		/* Big seeds slow every mutation down; the limits they probe are
		 * covered by the unit tests. */
		if (b.len > 5000)
			continue;
		if (b.len <= 300 && pd_buf_append(&all, b.data, b.len, &e))
			return 1;
		/* selector: bit 4 = flag 0x01, bit 5 = request id 0 (ERROR) */
		sel |= (uint8_t)(s[i].flags ? 0x10 : 0);
		sel |= (uint8_t)(s[i].type == PD_FT_ERROR && !s[i].request_id ? 0x20 : 0);
		bad |= write_file(dir, "frame", i, 0xff, b.data, b.len);
		bad |= write_file(dir, "msg", i, sel, b.data + PD_FRAME_HDR_LEN,
				  b.len - PD_FRAME_HDR_LEN);
	}
	bad |= write_file(dir, "stream", 0, 0xff, all.data, all.len);
	bad |= write_file(dir, "preauth", 0, 0xfe, all.data, all.len < 200 ? all.len : 200);
	pd_buf_free(&b);
	pd_buf_free(&all);
	return bad;
}

int main(int argc, char **argv)
{
	static pd_msg s[MAX_SAMPLES];
	int n;

	init_data();
	n = make_samples(s);
	if (argc == 3 && strcmp(argv[1], "--write-corpus") == 0)
		return write_corpus(argv[2], s, n);
	CHECK(n <= MAX_SAMPLES);
	test_round_trip(s, n);
	test_stream_of_frames(s, n);
	test_truncation(s, n);
	test_header();
	test_bad_enums(s, n);
	test_oversized_strings();
	test_encode_refuses(s, n);
	test_buffer_cap(s);
	test_utf8();
	test_cursor();
	test_choose_version();
	return TH_DONE();
}
