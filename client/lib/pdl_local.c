/*
 * pdl_local: libpdelta's local mode. The same delta engine as pdeltad
 * (common/pd_engine), run in process, with the server's request rules of
 * PROTOCOL.md §8 kept per stream in the handle: incarnation I, last applied
 * sequence S, its content hash H and its response R (so a repeated
 * (seq, bytes) answers DUPLICATE, an older seq SEQ_STALE, the same seq with
 * other bytes SEQ_CONFLICT). Output uses the server's defaults (gzip level 1,
 * 64 KiB deflate chunks), so deltas are byte-identical to the server's.
 */
#include <string.h>

#include "pd_seq.h"
#include "pdl_internal.h"

#define LOCAL_READ_CHUNK (64u * 1024)

static int engine_ready(pdelta *h)
{
	if (!h->eng && !(h->eng = pd_engine_new(NULL)))
		return pdl_fail(h, PDELTA_E_NOMEM, 1, "out of memory (engine)");
	if (!h->scratch && !(h->scratch = pd_state_new()))
		return pdl_fail(h, PDELTA_E_NOMEM, 1, "out of memory (state)");
	if (!h->r.st->state && !(h->r.st->state = pd_state_new()))
		return pdl_fail(h, PDELTA_E_NOMEM, 1, "out of memory (state)");
	return PDELTA_OK;
}

int pdl_local_begin(pdelta *h)
{
	int rc = engine_ready(h);

	if (rc)
		return rc;
	pd_engine_begin(h->eng);
	pd_buf_reset(&h->shadow_in);
	h->shadow_in_lost = 0;
	return PDELTA_OK;
}

static int engine_error(pdelta *h, int rc, const pd_err *e)
{
	return pdl_fail(h, rc, pd_code_retryable(rc), "%s", e->msg);
}

int pdl_local_feed(pdelta *h, const void *p, size_t n)
{
	pd_err e = {0, ""};
	int rc = pd_engine_feed(h->eng, p, n, &e);

	if (!rc && h->shadow && !h->shadow_in_lost && pd_buf_append(&h->shadow_in, p, n, NULL))
		h->shadow_in_lost = 1;
	return rc ? engine_error(h, rc, &e) : PDELTA_OK;
}

static int wire_status(int s)
{
	return s == PD_STATUS_BASELINE ? PDELTA_BASELINE
	       : s == PD_STATUS_DUPLICATE ? PDELTA_DUPLICATE
					  : PDELTA_DELTA;
}

static int same_content(void *arg)
{
	const pdl_req *r = arg;

	return memcmp(r->hash, r->st->H, sizeof r->st->H) == 0;
}

/* The rules of PROTOCOL.md §8 (pd_seq): 1 = apply, 0 = duplicate, else an error. */
static int decide(pdelta *h)
{
	pdl_req *r = &h->r;
	pdl_stream *st = r->st;
	pd_seq_last last = {st->have_state != 0, st->inc, st->S};
	pd_seq_req req = {h->incarnation, r->seq, false, 0};
	enum pd_seq_verdict v = pd_seq_decide(&last, &req, same_content, r);

	if (v == PD_SEQ_APPLY || v == PD_SEQ_APPLY_STATE_LOST)
		return 1;
	if (v == PD_SEQ_DUPLICATE)
		return 0;
	pdl_fail(h, PDELTA_E_SEQ, 0, "%s sequence %llu for stream '%s' (last applied %llu)",
		 v == PD_SEQ_CONFLICT ? "conflicting" : "stale", (unsigned long long)r->seq, st->name,
		 (unsigned long long)st->S);
	h->err.detail = v == PD_SEQ_CONFLICT ? PD_DETAIL_SEQ_CONFLICT : PD_DETAIL_SEQ_STALE;
	h->err.value = st->S;
	return -1;
}

static void duplicate(pdelta *h)
{
	pdl_req *r = &h->r;
	pdl_stream *st = r->st;

	r->meta.status = PDELTA_DUPLICATE;
	r->meta.orig_status = st->R_status;
	r->meta.reason = st->R_reason;
	r->meta.samples_in = st->R_in;
	r->meta.samples_out = st->R_out;
	r->meta.bytes_out = st->R.len;
}

static int lout_sink(void *ctx, const uint8_t *p, size_t n)
{
	return pd_buf_append((pd_buf *)ctx, p, n, NULL) == PD_OK ? 0 : -1;
}

static void fill_req(pdelta *h, pd_req *q)
{
	pd_req_default(q);
	q->first_policy = h->o.first_policy == PDELTA_FIRST_DROP   ? PD_FIRST_DROP
			  : h->o.first_policy == PDELTA_FIRST_AUTO ? PD_FIRST_AUTO
								   : PD_FIRST_KEEP;
	q->overrides = h->eng_ovr;
	q->noverrides = h->o.noverrides;
	q->incarnation = h->incarnation;
	q->producer_start_ns = h->o.producer_start_ns;
	q->last_seen_ns = h->r.st->last_seen_ns;
}

/* The engine succeeded: the new state and response become the stream's. */
static void commit(pdelta *h, const pd_result *res)
{
	pdl_req *r = &h->r;
	pdl_stream *st = r->st;
	pd_state *t = st->state;
	pd_buf b = st->R;

	st->state = h->scratch;
	h->scratch = t;
	st->R = h->lout;
	h->lout = b;
	pd_buf_reset(&h->lout);
	st->have_state = 1;
	st->inc = h->incarnation;
	st->S = r->seq;
	memcpy(st->H, r->hash, sizeof st->H);
	st->R_status = wire_status(res->status);
	st->R_reason = res->reason;
	if (r->moved && res->reason == PD_REASON_FIRST)
		st->R_reason = PDELTA_REASON_MOVED;
	st->R_in = res->samples_in;
	st->R_out = res->samples_out;
	st->last_seen_ns = pdl_wall_ns();
	r->meta.status = r->meta.orig_status = st->R_status;
	r->meta.reason = st->R_reason;
	r->meta.samples_in = st->R_in;
	r->meta.samples_out = st->R_out;
	r->meta.bytes_out = st->R.len;
}

/* Shadow verification: the delta just committed (st->R) against the slow
 * path's delta of cur after the stream's previous profile, when the engine
 * diffed against it (had_state). */
static void shadow_check(pdelta *h, const void *cur, size_t n, const pd_req *q, int had_state,
			 uint64_t prev_inc, const pd_result *res)
{
	pdl_stream *st = h->r.st;
	pd_slow_verdict *v = calloc(1, sizeof *v);
	int r = -1;

	if (v && cur)
		r = pd_slow_verify(had_state && st->have_P ? st->P.data : NULL,
				   had_state && st->have_P ? st->P.len : 0, cur, n, st->R.data,
				   st->R.len, q, prev_inc, res->status, res->reason, NULL, v);
	h->shadow_verdict = r > 0 ? PDELTA_SHADOW_MISMATCH : r == 0 ? PDELTA_SHADOW_AGREED
								    : PDELTA_SHADOW_NONE;
	pd_slow_tally_add(&h->shadow_tally, r);
	if (r > 0) {
		char d[256] = "";
		if (v->n)
			pd_slow_diff_format(&v->diffs[0], d, sizeof d);
		snprintf(h->shadow_msg, sizeof h->shadow_msg, "%s seq %llu: %zu difference(s)%s%s%s%s",
			 st->name, (unsigned long long)h->r.seq, v->n, v->broken ? "; " : "",
			 v->broken ? v->what : "", d[0] ? "; first: " : "", d);
	}
	if (v)
		pd_slow_verdict_free(v);
	free(v);
	pd_buf_reset(&st->P);
	st->have_P = cur && !pd_buf_append(&st->P, cur, n, NULL);
}

/* Runs the engine on the fed input (in == NULL) or on in[0..n). */
static int apply(pdelta *h, const void *in, size_t n)
{
	pd_req q;
	pd_result res;
	pd_err e = {0, ""};
	int rc, d, had_state = h->r.st->have_state;
	uint64_t prev_inc = h->r.st->inc;

	h->shadow_verdict = PDELTA_SHADOW_NONE;
	d = decide(h);
	if (d < 0)
		return h->err.code;
	h->r.local_pos = 0;
	if (d == 0) {
		duplicate(h);
		return PDELTA_OK;
	}
	fill_req(h, &q);
	pd_buf_reset(&h->lout);
	if (in)
		rc = pd_engine_run(h->eng, in, n, h->r.st->state, h->scratch, &q, lout_sink, &h->lout,
				   &res, &e);
	else
		rc = pd_engine_finish(h->eng, h->r.st->state, h->scratch, &q, lout_sink, &h->lout, &res,
				      &e);
	if (rc)
		return engine_error(h, rc, &e);
	commit(h, &res);
	if (h->shadow && in)
		shadow_check(h, in, n, &q, had_state, prev_inc, &res);
	else if (h->shadow)
		shadow_check(h, h->shadow_in_lost ? NULL : h->shadow_in.data,
			     h->shadow_in.len, &q, had_state, prev_inc, &res);
	return PDELTA_OK;
}

int pdl_local_finish(pdelta *h) { return apply(h, NULL, 0); }

int pdl_local_onecall(pdelta *h, const void *p, size_t n)
{
	uint8_t dg[EVP_MAX_MD_SIZE];
	unsigned dl = 0;
	int rc;

	if ((rc = engine_ready(h)))
		return rc;
	if (EVP_Digest(p, n, dg, &dl, h->sha256, NULL) != 1)
		return pdl_fail(h, PDELTA_E_INTERNAL, 0, "SHA-256 failed");
	memcpy(h->r.hash, dg, sizeof h->r.hash);
	h->r.fed = n;
	h->r.meta.bytes_in = n;
	if ((rc = apply(h, p, n)))
		return rc;
	h->r.phase = PDL_BODY;
	return PDELTA_OK;
}

int pdl_local_read(pdelta *h, const void **p, size_t *n)
{
	pdl_req *r = &h->r;
	const pd_buf *R = &r->st->R;
	size_t left = R->len - r->local_pos;

	*n = left < LOCAL_READ_CHUNK ? left : LOCAL_READ_CHUNK;
	*p = *n ? R->data + r->local_pos : NULL;
	r->local_pos += *n;
	return PDELTA_OK;
}

int pdelta_set_shadow(pdelta *h, int on)
{
	h->shadow = on != 0;
	return PDELTA_OK;
}

int pdelta_shadow_verdict(const pdelta *h) { return h->shadow_verdict; }

const char *pdelta_shadow_last(const pdelta *h) { return h->shadow_msg; }

void pdelta_shadow_counts(const pdelta *h, uint64_t *checked, uint64_t *mismatches,
			  uint64_t *unchecked)
{
	*checked = h->shadow_tally.checked;
	*mismatches = h->shadow_tally.mismatches;
	*unchecked = h->shadow_tally.unchecked;
}
