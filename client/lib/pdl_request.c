/*
 * pdl_request: delta requests, the public one-call and streaming API, and
 * the retry policy (PROTOCOL.md §6 and §8).
 *
 * An attempt is: DELTA_BEGIN, DATA chunks, DATA_END(total, content hash: the
 * CRC-128 on protocol 2, SHA-256/16 on protocol 1, per connection), then
 * RESULT, RESULT_DATA*, RESULT_END (CRC-32 and length checked). When an
 * attempt fails in a way a retry can fix (transport, a server error flagged
 * retryable, a bad RESULT_END) the request is sent again, after a backoff,
 * on a new connection, with the same seq and the same bytes (replayed from
 * the one-call buffer or through the caller's replay callback, checked
 * against the first upload's length and hash). A retry while the delta is
 * being read skips the bytes already handed out, after checking their CRC.
 */
#include <stdlib.h>
#include <string.h>

#include "pd_crc.h"
#include "pdl_internal.h"

static void reset_attempt(pdl_req *r)
{
	r->id = 0;
	r->broken = r->end_sent = r->terminal = r->got_result = 0;
	r->body_seen = 0;
	r->crc_seen = 0; /* pd_crc32 starts at 0 */
	r->crc_prefix = 0; /* pd_crc32 starts at 0 */
	r->result_total = 0;
	r->overload_delay_ms = 0;
}

static int can_replay(const pdl_req *r) { return r->whole != NULL || r->replay != NULL; }

static void save_err(pdelta *h)
{
	h->r.serr = h->err;
	memcpy(h->r.smsg, h->errmsg, sizeof h->r.smsg);
}

static int restore_err(pdelta *h)
{
	h->err = h->r.serr;
	memcpy(h->errmsg, h->r.smsg, sizeof h->errmsg);
	return h->err.code;
}

/* Marks the request failed (every later call returns rc) and leaves the
 * connection clean: if the server half may still be open, close it. */
static int fail_request(pdelta *h, int rc)
{
	pdl_req *r = &h->r;

	if (!r->local && pdl_connected(h) && r->id && !(r->terminal && r->end_sent))
		pdl_conn_close(h, 1);
	r->phase = PDL_FAILED;
	r->fail_code = rc;
	r->meta.attempts = r->attempts;
	save_err(h);
	return rc;
}

static void finish_request(pdelta *h)
{
	pdl_req *r = &h->r;

	r->phase = PDL_IDLE;
	r->meta.bytes_out = r->local ? r->meta.bytes_out : r->delivered;
	r->meta.attempts = r->attempts;
	h->stats.requests++;
	h->stats.bytes_received += r->meta.bytes_out;
	if (r->meta.status == PDELTA_DUPLICATE)
		h->stats.duplicates++;
	if (!r->local) {
		h->reused = 1;
		r->st->seen_server = 1;
	}
}

/* ---- frames out --------------------------------------------------------------- */

static int wire_first(int p)
{
	return p == PDELTA_FIRST_DROP ? PD_WIRE_FIRST_DROP
	       : p == PDELTA_FIRST_AUTO ? PD_WIRE_FIRST_AUTO
					: PD_WIRE_FIRST_KEEP;
}

static int send_begin(pdelta *h)
{
	pdl_req *r = &h->r;
	pd_msg_delta_begin *b;
	pd_msg m;

	memset(&m, 0, sizeof m);
	m.type = PD_FT_DELTA_BEGIN;
	m.request_id = r->id = pdl_new_id(h);
	b = &m.u.begin;
	b->seq = r->seq;
	b->incarnation = h->incarnation;
	b->producer_start_ns = h->o.producer_start_ns > 0 ? (uint64_t)h->o.producer_start_ns : 0;
	b->first_policy = (uint8_t)wire_first(h->o.first_policy);
	b->stream = pd_str_c(r->st->name);
	/* PROTOCOL.md §8: lets the server see that its state went back. */
	if (h->version >= PD_PROTO_VERSION_AFTER && r->st->has_answered &&
	    r->st->answered_seq < r->seq) {
		m.flags |= PD_FLAG_BEGIN_AFTER;
		b->after_seq = r->st->answered_seq;
	}
	b->n_overrides = (uint16_t)h->o.noverrides;
	for (size_t i = 0; i < h->o.noverrides; i++) {
		b->overrides[i].name = pd_str_c(h->o.overrides[i].type);
		b->overrides[i].policy = h->o.overrides[i].policy == PDELTA_POLICY_GAUGE
						 ? PD_WIRE_POLICY_GAUGE
						 : PD_WIRE_POLICY_DELTA;
	}
	return pdl_send_msg(h, &m);
}

static int send_simple(pdelta *h, int type)
{
	pd_msg m;

	memset(&m, 0, sizeof m);
	m.type = (uint8_t)type;
	m.request_id = h->r.id;
	return pdl_send_msg(h, &m);
}

/* After an ERROR for our request during the upload: close our half. */
static void cancel_upload(pdelta *h)
{
	if (!h->r.end_sent && pdl_connected(h) && send_simple(h, PD_FT_CANCEL) == PDELTA_OK) {
		h->r.end_sent = 1;
		(void)pdl_flush(h);
	}
}

/* Any frame for our request that arrives while we upload: only an ERROR
 * is legal (PROTOCOL.md §6). */
static int check_early(pdelta *h)
{
	pd_msg m;
	int rc;

	for (;;) {
		rc = pdl_next_frame(h, 0, &m);
		if (rc == PD_FRAME_NEED_MORE)
			return PDELTA_OK;
		if (rc)
			return rc;
		if (m.request_id != h->r.id || m.type != PD_FT_ERROR)
			return pdl_proto_violation(h, "%s for request %u during the upload",
						   pd_frame_type_name(m.type), m.request_id);
		h->r.terminal = 1;
		if (m.u.error.detail == PD_DETAIL_OVERLOADED)
			h->r.overload_delay_ms = m.u.error.value;
		rc = pdl_fail_server(h, &m.u.error);
		cancel_upload(h);
		return rc;
	}
}

static int emit_data(pdelta *h)
{
	pd_frame_hdr fh = {(uint32_t)h->dbuf.len, PD_FT_DATA, 0, 0, h->r.id};
	uint8_t hdr[PD_FRAME_HDR_LEN];
	pd_err e;
	int rc;

	if (h->dbuf.len == 0)
		return PDELTA_OK;
	pd_frame_hdr_encode(hdr, &fh);
	if (pd_buf_append(&h->wbuf, hdr, sizeof hdr, &e) ||
	    pd_buf_append(&h->wbuf, h->dbuf.data, h->dbuf.len, &e))
		return pdl_fail(h, PDELTA_E_NOMEM, 1, "%s", e.msg);
	h->stats.bytes_sent += h->dbuf.len;
	pd_buf_reset(&h->dbuf);
	if ((rc = pdl_flush(h)))
		return rc;
	return check_early(h);
}

static int net_send(pdelta *h, const uint8_t *p, size_t n)
{
	size_t chunk = h->o.chunk_bytes;
	pd_err e;
	int rc;

	if (h->srv_max_frame && chunk > h->srv_max_frame)
		chunk = h->srv_max_frame;
	while (n) {
		size_t take = chunk - h->dbuf.len;
		if (take > n)
			take = n;
		if (pd_buf_append(&h->dbuf, p, take, &e))
			return pdl_fail(h, PDELTA_E_NOMEM, 1, "%s", e.msg);
		p += take;
		n -= take;
		if (h->dbuf.len >= chunk && (rc = emit_data(h)))
			return rc;
	}
	return PDELTA_OK;
}

static int send_end(pdelta *h)
{
	pdl_req *r = &h->r;
	pd_msg m;
	int rc;

	if ((rc = emit_data(h)))
		return rc;
	memset(&m, 0, sizeof m);
	m.type = PD_FT_DATA_END;
	m.request_id = r->id;
	m.u.data_end.total_bytes = r->fed;
	/* The content hash of the negotiated version (PROTOCOL.md, DATA_END). */
	memcpy(m.u.data_end.hash, h->version >= 2 ? r->crc_hash : r->hash, sizeof r->hash);
	if ((rc = pdl_send_msg(h, &m)))
		return rc;
	r->end_sent = 1;
	return pdl_flush(h);
}

/* ---- frames in ------------------------------------------------------------------ */

static int same_response(const pdelta_result *a, const pd_msg_result *b)
{
	return a->orig_status == b->orig_status && a->reason == b->reason &&
	       a->samples_in == b->samples_in && a->samples_out == b->samples_out;
}

static void take_result(pdelta *h, const pd_msg_result *res)
{
	pdl_req *r = &h->r;

	/* check_result() already refused state-lost from a version < 3 server. */
	r->got_result = 1;
	r->result_total = res->output_bytes;
	if (r->delivered && !same_response(&r->meta, res)) {
		/* the server's second answer is another response: start over */
		r->restart_pending = 1;
		r->delivered = 0;
		r->crc_delivered = 0; /* pd_crc32 starts at 0 */
	}
	if (r->delivered == 0) {
		r->meta.status = res->status;
		r->meta.reason = res->reason;
		r->meta.orig_status = res->orig_status;
		r->meta.samples_in = res->samples_in;
		r->meta.samples_out = res->samples_out;
	}
}

static int wait_result(pdelta *h)
{
	pdl_req *r = &h->r;
	pd_msg m;
	int rc;

	rc = pdl_next_frame(h, 1, &m);
	if (rc)
		return rc;
	if (m.request_id != r->id)
		return pdl_proto_violation(h, "%s for request %u, expected %u", pd_frame_type_name(m.type),
					   m.request_id, r->id);
	if (m.type == PD_FT_ERROR) {
		r->terminal = 1;
		if (m.u.error.detail == PD_DETAIL_OVERLOADED)
			r->overload_delay_ms = m.u.error.value;
		return pdl_fail_server(h, &m.u.error);
	}
	if (m.type != PD_FT_RESULT)
		return pdl_proto_violation(h, "%s before RESULT", pd_frame_type_name(m.type));
	if (m.u.result.seq != r->seq)
		return pdl_proto_violation(h, "RESULT for seq %llu, expected %llu",
					   (unsigned long long)m.u.result.seq, (unsigned long long)r->seq);
	if (m.u.result.reason == PD_WIRE_REASON_STATE_LOST && h->version < PD_PROTO_VERSION_AFTER)
		return pdl_proto_violation(h, "reason state-lost on protocol version %u", h->version);
	take_result(h, &m.u.result);
	return PDELTA_OK;
}

/* Next body chunk of this attempt (*n > 0), or the verified end (*n == 0). */
static int next_body_frame(pdelta *h, const uint8_t **p, size_t *n)
{
	pdl_req *r = &h->r;
	pd_msg m;
	int rc;

	if ((rc = pdl_next_frame(h, 1, &m)))
		return rc;
	if (m.request_id != r->id)
		return pdl_proto_violation(h, "%s for request %u, expected %u", pd_frame_type_name(m.type),
					   m.request_id, r->id);
	switch (m.type) {
	case PD_FT_RESULT_DATA:
		r->crc_seen = pd_crc32(r->crc_seen, m.u.data.p, m.u.data.len);
		r->body_seen += m.u.data.len;
		*p = m.u.data.p;
		*n = m.u.data.len;
		return PDELTA_OK;
	case PD_FT_RESULT_END:
		r->terminal = 1;
		*n = 0;
		if (m.u.result_end.total_bytes == r->body_seen && m.u.result_end.crc32 == r->crc_seen &&
		    (!r->result_total || r->result_total == r->body_seen)) {
			if (!r->st->has_answered || r->st->answered_seq < r->seq) {
				r->st->answered_seq = r->seq;
				r->st->has_answered = 1;
			}
			return PDELTA_OK;
		}
		/* PROTOCOL.md §5: discard, GOODBYE PROTOCOL, retry on a new connection */
		pdl_conn_abort_proto(h);
		return pdl_fail(h, PDELTA_E_PROTO, 1, "delta body failed its check (%llu bytes, crc %08x; server says %llu, %08x)",
				(unsigned long long)r->body_seen, r->crc_seen,
				(unsigned long long)m.u.result_end.total_bytes, m.u.result_end.crc32);
	case PD_FT_ERROR:
		r->terminal = 1;
		return pdl_fail_server(h, &m.u.error);
	default:
		return pdl_proto_violation(h, "%s inside a delta body", pd_frame_type_name(m.type));
	}
}

/* ---- attempts and retries ------------------------------------------------------------- */

static int replay_input(pdelta *h)
{
	pdl_req *r = &h->r;
	uint8_t dg[EVP_MAX_MD_SIZE];
	int cb;

	if (r->whole) {
		r->fed = r->whole_len;
		return net_send(h, r->whole, r->whole_len);
	}
	r->replaying = 1;
	r->refed = 0;
	EVP_DigestInit_ex(h->md, h->sha256, NULL);
	cb = r->replay(r->rctx, h);
	r->replaying = 0;
	if (r->broken)
		return h->err.code;
	if (cb)
		return pdl_fail(h, PDELTA_E_ARG, 0, "the replay callback gave up (%d)", cb);
	EVP_DigestFinal_ex(h->md, dg, NULL);
	if (r->refed != r->fed || memcmp(dg, r->hash, sizeof r->hash) != 0) {
		cancel_upload(h);
		return pdl_fail(h, PDELTA_E_ARG, 0,
				"the replayed input differs from the first upload (%llu bytes, first %llu)",
				(unsigned long long)r->refed, (unsigned long long)r->fed);
	}
	return PDELTA_OK;
}

/* A whole new attempt: connection, DELTA_BEGIN, the input again, DATA_END. */
static int resend(pdelta *h)
{
	int rc;

	reset_attempt(&h->r);
	if ((rc = pdl_nodes_try(h)) || (rc = send_begin(h)))
		return rc;
	if ((rc = replay_input(h)))
		return rc;
	return send_end(h);
}

/* A stale or conflicting sequence from a handle-chosen seq: the server
 * knows this stream under our incarnation from an earlier life; continue
 * after its last sequence (once). */
static int fix_seq(pdelta *h)
{
	pdl_req *r = &h->r;

	if (!h->err.from_server || h->err.code != PDELTA_E_SEQ || !r->auto_seq || r->stale_fixed ||
	    !can_replay(r) || (h->err.detail != PD_DETAIL_SEQ_STALE && h->err.detail != PD_DETAIL_SEQ_CONFLICT))
		return 0;
	r->stale_fixed = 1;
	r->seq = h->err.value + 1;
	r->meta.seq = r->seq;
	if (r->st->last_seq < r->seq)
		r->st->last_seq = r->seq;
	return 1;
}

static int retry_allowed(pdelta *h)
{
	pdl_req *r = &h->r;
	return h->err.retryable && can_replay(r) && r->attempts < h->o.max_attempts;
}

static int fallback_allowed(pdelta *h)
{
	return h->o.local_fallback && h->err.retryable && can_replay(&h->r) && h->r.delivered == 0 &&
	       (h->err.code == PDELTA_E_IO || h->err.code == PDELTA_E_TIMEOUT);
}

static int run_fallback(pdelta *h);
static int feed(pdelta *h, const void *p, size_t n);

/* Sends the request again until it has a RESULT or fails for good. */
static int retry(pdelta *h, int rc)
{
	pdl_req *r = &h->r;

	while (rc) {
		if (fix_seq(h)) {
			rc = resend(h);
		} else if (retry_allowed(h)) {
			r->attempts++;
			h->stats.retries++;
			pdl_backoff(h, r->attempts, r->overload_delay_ms);
			rc = resend(h);
		} else if (fallback_allowed(h)) {
			return run_fallback(h);
		} else {
			return rc;
		}
		if (!rc)
			rc = wait_result(h);
	}
	return rc;
}

/* ---- local fallback ---------------------------------------------------------------------- */

static int run_fallback(pdelta *h)
{
	pdl_req *r = &h->r;
	uint8_t dg[EVP_MAX_MD_SIZE];
	int rc, cb = 0;

	pdl_conn_close(h, 1);
	r->st->is_local = 1;
	r->local = 1;
	r->moved = 1;
	h->stats.fallbacks++;
	if ((rc = pdl_local_begin(h)))
		return rc;
	EVP_DigestInit_ex(h->md, h->sha256, NULL);
	r->refed = 0;
	r->replaying = 1;
	if (r->whole)
		rc = feed(h, r->whole, r->whole_len);
	else
		cb = r->replay(r->rctx, h);
	r->replaying = 0;
	if (rc)
		return rc;
	if (cb)
		return pdl_fail(h, PDELTA_E_ARG, 0, "the replay callback gave up (%d)", cb);
	EVP_DigestFinal_ex(h->md, dg, NULL);
	if (r->refed != r->fed || memcmp(dg, r->hash, sizeof r->hash) != 0)
		return pdl_fail(h, PDELTA_E_ARG, 0, "the replayed input differs from the first upload");
	return pdl_local_finish(h);
}

/* ---- begin / feed / finish --------------------------------------------------------------- */

static int check_stream_name(pdelta *h, const char *s)
{
	size_t n = s ? strlen(s) : 0;

	if (n == 0 || n > PD_MAX_STREAM)
		return pdl_fail(h, PDELTA_E_ARG, 0, "stream name must be 1..%d bytes", PD_MAX_STREAM);
	if (!pd_utf8_valid((const uint8_t *)s, n))
		return pdl_fail(h, PDELTA_E_ARG, 0, "stream name is not valid UTF-8");
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
			return pdl_fail(h, PDELTA_E_ARG, 0, "stream name contains a control character");
	return PDELTA_OK;
}

/* Connects for a new request, with retries; may move the stream to local. */
static int begin_network(pdelta *h)
{
	pdl_req *r = &h->r;
	int rc;

	for (;;) {
		rc = pdl_nodes_try(h);
		if (!rc)
			break;
		if (!h->err.retryable)
			return rc;
		if (r->attempts >= h->o.max_attempts) {
			if (!h->o.local_fallback)
				return rc;
			r->st->is_local = 1;
			r->local = 1;
			r->moved = 1;
			h->stats.fallbacks++;
			return pdl_local_begin(h);
		}
		r->attempts++;
		pdl_backoff(h, r->attempts, 0);
	}
	reset_attempt(r);
	return send_begin(h);
}

static int begin_common(pdelta *h, const char *stream, uint64_t seq, pdelta_replay_fn replay, void *ctx,
			const void *whole, size_t whole_len)
{
	pdl_req *r = &h->r;
	pdl_stream *st;
	int rc;

	if (r->phase == PDL_UPLOAD || r->phase == PDL_BODY)
		return pdl_fail(h, PDELTA_E_ARG, 0,
				"a request is open: finish and read it, or call pdelta_abort()");
	if ((rc = check_stream_name(h, stream)))
		return rc;
	if (!(st = pdl_stream_get(h, stream, 1)))
		return pdl_fail(h, PDELTA_E_NOMEM, 1, "out of memory");
	memset(r, 0, sizeof *r);
	r->st = st;
	h->route_stream = st->name; /* every attempt asks for the stream's node */
	r->auto_seq = seq == 0;
	r->seq = seq ? seq : st->last_seq + 1;
	if (r->seq > st->last_seq)
		st->last_seq = r->seq;
	r->replay = replay;
	r->rctx = ctx;
	r->whole = whole;
	r->whole_len = whole_len;
	r->attempts = 1;
	r->crc_delivered = 0; /* pd_crc32 starts at 0 */
	r->meta.seq = r->seq;
	r->phase = PDL_UPLOAD;
	EVP_DigestInit_ex(h->md, h->sha256, NULL);
	r->crc = pd_crc128_init();
	if (st->is_local) {
		r->local = 1;
		rc = pdl_local_begin(h);
	} else {
		rc = begin_network(h);
	}
	if (rc)
		fail_request(h, rc);
	return rc;
}

/* An attempt broke during the upload: keep hashing if it can be replayed. */
static int upload_broken(pdelta *h, int rc)
{
	pdl_req *r = &h->r;

	if (r->replaying) {
		r->broken = 1;
		return rc;
	}
	if ((h->err.retryable && can_replay(r)) || (h->err.code == PDELTA_E_SEQ && r->auto_seq && can_replay(r))) {
		r->broken = 1;
		save_err(h);
		return PDELTA_OK;
	}
	return fail_request(h, rc);
}

static int feed(pdelta *h, const void *p, size_t n)
{
	pdl_req *r = &h->r;
	int rc;

	if (r->phase == PDL_FAILED)
		return restore_err(h);
	/* a replay may happen while the delta is being read (PDL_BODY) */
	if (r->phase != PDL_UPLOAD && !r->replaying)
		return pdl_fail(h, PDELTA_E_ARG, 0, "pdelta_feed() without pdelta_begin()");
	if (r->replaying)
		r->refed += n;
	else
		r->fed += n;
	EVP_DigestUpdate(h->md, p, n);
	if (!r->replaying)
		pd_crc128_update(&r->crc, p, n);
	if (r->local) {
		rc = pdl_local_feed(h, p, n);
		return rc && !r->replaying ? fail_request(h, rc) : rc;
	}
	if (r->broken)
		return r->replaying ? h->err.code : PDELTA_OK;
	if (h->max_profile_bytes && (r->replaying ? r->refed : r->fed) > h->max_profile_bytes) {
		cancel_upload(h);
		return fail_request(h, pdl_fail(h, PDELTA_E_LIMIT, 0,
						"profile larger than the server's limit of %llu bytes",
						(unsigned long long)h->max_profile_bytes));
	}
	rc = net_send(h, p, n);
	return rc ? upload_broken(h, rc) : PDELTA_OK;
}

static void fill_out(pdelta *h, pdelta_result *out)
{
	if (out) {
		*out = h->r.meta;
		out->data = NULL;
		out->len = 0;
		out->attempts = h->r.attempts;
		out->local = h->r.local;
		out->bytes_in = h->r.fed;
	}
}

static int finish(pdelta *h)
{
	pdl_req *r = &h->r;
	uint8_t dg[EVP_MAX_MD_SIZE];
	int rc;

	if (r->phase == PDL_FAILED)
		return restore_err(h);
	if (r->phase != PDL_UPLOAD)
		return pdl_fail(h, PDELTA_E_ARG, 0, "pdelta_finish() without pdelta_begin()");
	EVP_DigestFinal_ex(h->md, dg, NULL);
	memcpy(r->hash, dg, sizeof r->hash);
	pd_crc128_final(&r->crc, r->crc_hash);
	r->meta.bytes_in = r->fed;
	if (r->local) {
		rc = pdl_local_finish(h);
	} else {
		rc = r->broken ? restore_err(h) : send_end(h);
		if (!rc)
			rc = wait_result(h);
		if (rc)
			rc = retry(h, rc);
	}
	if (rc)
		return fail_request(h, rc);
	r->phase = PDL_BODY;
	return PDELTA_OK;
}

/* ---- reading the delta ------------------------------------------------------------------ */

/* The bytes handed out so far differ from the server's new answer. */
static int restart_body(pdelta *h)
{
	pdl_req *r = &h->r;

	r->delivered = 0;
	r->crc_delivered = 0; /* pd_crc32 starts at 0 */
	r->restart_pending = 0;
	r->need_resend = 1;
	pdl_conn_close(h, 1);
	h->stats.restarts++;
	return PDELTA_RESTART;
}

/* Hands out the part of a body frame the caller has not seen yet. */
static int deliver(pdelta *h, const uint8_t *d, size_t len, const void **p, size_t *n)
{
	pdl_req *r = &h->r;
	uint64_t start = r->body_seen - len;
	size_t skip = 0;

	if (start < r->delivered) {
		skip = r->delivered - start < len ? (size_t)(r->delivered - start) : len;
		r->crc_prefix = pd_crc32(r->crc_prefix, d, skip);
		if (start + skip == r->delivered) {
			if (r->crc_prefix != r->crc_delivered)
				return restart_body(h);
			h->stats.resumed++;
		}
	}
	*n = len - skip;
	*p = d + skip;
	r->delivered += *n;
	r->crc_delivered = pd_crc32(r->crc_delivered, d + skip, *n);
	return PDELTA_OK;
}

static int read_local(pdelta *h, const void **p, size_t *n)
{
	int rc = pdl_local_read(h, p, n);

	if (!rc && *n == 0)
		finish_request(h);
	return rc;
}

static int read_net(pdelta *h, const void **p, size_t *n)
{
	pdl_req *r = &h->r;
	const uint8_t *d;
	size_t len;
	int rc;

	for (;;) {
		if (r->local) /* fell back during a retry */
			return read_local(h, p, n);
		if (r->restart_pending) {
			r->restart_pending = 0;
			h->stats.restarts++;
			return PDELTA_RESTART;
		}
		if (r->need_resend) {
			r->need_resend = 0;
			rc = retry(h, pdl_fail(h, PDELTA_E_IO, 1, "delta changed on retry; fetching it again"));
			if (rc)
				return fail_request(h, rc);
			continue;
		}
		rc = next_body_frame(h, &d, &len);
		if (rc) {
			if ((rc = retry(h, rc)))
				return fail_request(h, rc);
			continue;
		}
		if (len == 0) {
			if (r->body_seen < r->delivered)
				return restart_body(h);
			*n = 0;
			*p = NULL;
			finish_request(h);
			return PDELTA_OK;
		}
		rc = deliver(h, d, len, p, n);
		if (rc || *n)
			return rc;
	}
}

static int read_chunk(pdelta *h, const void **p, size_t *n)
{
	pdl_req *r = &h->r;

	*n = 0;
	*p = NULL;
	if (r->phase == PDL_FAILED)
		return restore_err(h);
	if (r->phase != PDL_BODY)
		return pdl_fail(h, PDELTA_E_ARG, 0, "pdelta_read() without a finished request");
	return r->local ? read_local(h, p, n) : read_net(h, p, n);
}

/* ---- public API ------------------------------------------------------------------------ */

#define API_ENTER(h)                   \
	pdl_sigpipe guard_;            \
	pdl_sigpipe_block(&guard_);    \
	pdl_fork_check(h);             \
	pdl_clear_error(h)
#define API_RETURN(rc)                       \
	do {                                 \
		int rc_ = (rc);              \
		pdl_sigpipe_restore(&guard_); \
		return rc_;                  \
	} while (0)

int pdelta_begin(pdelta *h, const char *stream, uint64_t seq, pdelta_replay_fn replay, void *ctx)
{
	API_ENTER(h);
	API_RETURN(begin_common(h, stream, seq, replay, ctx, NULL, 0));
}

int pdelta_feed(pdelta *h, const void *p, size_t n)
{
	if (n == 0)
		return h->r.phase == PDL_FAILED ? h->r.fail_code : PDELTA_OK;
	if (h->r.replaying) /* inside a replay callback: already in a library call */
		return feed(h, p, n);
	{
		API_ENTER(h);
		API_RETURN(feed(h, p, n));
	}
}

int pdelta_finish(pdelta *h, pdelta_result *out)
{
	int rc;
	API_ENTER(h);
	rc = finish(h);
	fill_out(h, out);
	API_RETURN(rc);
}

int pdelta_read(pdelta *h, const void **p, size_t *n)
{
	API_ENTER(h);
	API_RETURN(read_chunk(h, p, n));
}

int pdelta_read_all(pdelta *h, pdelta_sink_fn sink, void *ctx)
{
	const void *p;
	size_t n;
	int rc;

	API_ENTER(h);
	for (;;) {
		rc = read_chunk(h, &p, &n);
		if (rc == PDELTA_RESTART) {
			if (sink(ctx, NULL, 0))
				break;
			continue;
		}
		if (rc || n == 0)
			API_RETURN(rc);
		if (sink(ctx, p, n))
			break;
	}
	rc = pdl_fail(h, PDELTA_E_IO, 1,
		      "the sink stopped the delta after %llu bytes; send the same seq and bytes again",
		      (unsigned long long)h->r.delivered);
	API_RETURN(fail_request(h, rc));
}

int pdelta_result_get(const pdelta *h, pdelta_result *out)
{
	*out = h->r.meta;
	out->data = NULL;
	out->len = 0;
	out->attempts = h->r.attempts;
	out->local = h->r.local;
	out->bytes_in = h->r.fed;
	return h->r.phase == PDL_FAILED ? h->r.fail_code : PDELTA_OK;
}

void pdelta_abort(pdelta *h)
{
	pdl_req *r = &h->r;
	API_ENTER(h);
	if (!r->local && pdl_connected(h) && r->id && !(r->terminal && r->end_sent))
		pdl_conn_close(h, 1);
	r->phase = PDL_IDLE;
	pdl_sigpipe_restore(&guard_);
}

void pdelta_result_free(pdelta_result *res)
{
	if (!res)
		return;
	free(res->data);
	res->data = NULL;
	res->len = 0;
}

static int read_into(pdelta *h, pd_buf *b)
{
	const void *p;
	size_t n;
	pd_err e;
	int rc;

	for (;;) {
		rc = read_chunk(h, &p, &n);
		if (rc == PDELTA_RESTART) {
			pd_buf_reset(b);
			continue;
		}
		if (rc || n == 0)
			return rc;
		if (pd_buf_append(b, p, n, &e)) {
			rc = pdl_fail(h, e.code == PD_E_LIMIT ? PDELTA_E_LIMIT : PDELTA_E_NOMEM, 0,
				      "delta larger than max_result_bytes (%zu)", h->o.max_result_bytes);
			return fail_request(h, rc);
		}
	}
}

static int onecall(pdelta *h, const char *stream, uint64_t seq, const void *profile, size_t len,
		   pd_buf *b)
{
	int rc;

	if (!profile && len)
		return pdl_fail(h, PDELTA_E_ARG, 0, "profile is NULL");
	rc = begin_common(h, stream, seq, NULL, NULL, profile ? profile : "", len);
	if (rc)
		return rc;
	if (h->r.local && !h->r.moved)
		rc = pdl_local_onecall(h, profile, len);
	else if (!(rc = feed(h, profile, len)))
		rc = finish(h);
	if (rc)
		return h->r.phase == PDL_FAILED ? rc : fail_request(h, rc);
	return read_into(h, b);
}

int pdelta_delta(pdelta *h, const char *stream, uint64_t seq, const void *profile, size_t len,
		 pdelta_result *out)
{
	pd_buf b;
	int rc;

	memset(out, 0, sizeof *out);
	pd_buf_init(&b, h->o.max_result_bytes);
	{
		API_ENTER(h);
		rc = onecall(h, stream, seq, profile, len, &b);
		pdl_sigpipe_restore(&guard_);
	}
	fill_out(h, out);
	if (rc) {
		pd_buf_free(&b);
		return rc;
	}
	out->bytes_out = b.len;
	out->len = b.len;
	out->data = b.data ? b.data : calloc(1, 1);
	if (!out->data)
		return pdl_fail(h, PDELTA_E_NOMEM, 1, "out of memory");
	return PDELTA_OK;
}
