/*
 * fuzz_slowdelta: libFuzzer target for the slow delta path (pd_slowdelta),
 * differential against the engine.
 *
 * Each input is decoded by the slow decoder and run through the engine as a
 * first profile. Both must accept or both refuse it (the slow path may also
 * refuse it for its own text budget); when both accept, the slow path's
 * first-profile result must equal the engine's output, the delta of the
 * profile against itself must equal the engine's second run (every delta
 * column 0), and comparing a profile with itself finds nothing. Limits are
 * the small ones of fuzz_engine.h.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_engine.h"
#include "pd_engine.h"
#include "pd_slowdelta.h"

/* Aborts unless the engine's output (decoded) equals the slow path's. */
static void same(const pd_buf *out, const pd_slow_profile *slow, const pd_limits *lim)
{
	pd_slow_profile *eng = NULL;
	pd_slow_diff d[4];
	pd_err e = {0};
	char line[512];
	size_t n;

	if (pd_slow_decode(out->data, out->len, lim, &eng, &e) != PD_OK) {
		fprintf(stderr, "engine output refused by the slow decoder: %s\n", e.msg);
		abort();
	}
	n = pd_slow_compare(slow, eng, d, 4);
	for (size_t i = 0; i < n && i < 4; i++) {
		pd_slow_diff_format(&d[i], line, sizeof line);
		fprintf(stderr, "%s\n", line);
	}
	pd_slow_free(eng);
	if (n)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static pd_engine *eng;
	static pd_state *empty, *s1, *s2;
	static pd_buf out;
	static pd_limits lim;
	pd_slow_profile *cur = NULL, *first = NULL, *self = NULL;
	pd_req req;
	pd_result r;
	pd_err e = {0}, es = {0};
	int rc_eng, rc_slow;

	if (!eng) {
		fuzz_limits(&lim);
		eng = pd_engine_new(&lim);
		empty = pd_state_new();
		s1 = pd_state_new();
		s2 = pd_state_new();
		pd_buf_init(&out, 0);
	}
	pd_req_default(&req);
	req.gzip_level = 0;
	pd_buf_reset(&out);
	rc_slow = pd_slow_decode(data, size, &lim, &cur, &es);
	rc_eng = pd_engine_run(eng, data, size, empty, s1, &req, buf_sink, &out, &r, &e);
	if (rc_slow == PD_E_LIMIT && strstr(es.msg, "slow path"))
		goto out; /* the slow path's own budget */
	if ((rc_slow == PD_OK) != (rc_eng == PD_OK) || (rc_slow != PD_OK && !es.msg[0])) {
		fprintf(stderr, "slow path: %d %s; engine: %d %s\n", rc_slow, es.msg, rc_eng, e.msg);
		abort();
	}
	if (rc_slow != PD_OK)
		goto out;
	if (pd_slow_delta(NULL, cur, &req, 0, &first, &es) != PD_OK)
		goto out; /* out of memory only */
	if (pd_slow_status(first) != r.status || pd_slow_reason(first) != r.reason)
		abort();
	same(&out, first, &lim);
	pd_buf_reset(&out);
	if (pd_engine_run(eng, data, size, s1, s2, &req, buf_sink, &out, &r, &e) != PD_OK ||
	    pd_slow_delta(cur, cur, &req, 0, &self, &es) != PD_OK)
		abort();
	if (pd_slow_status(self) != r.status || pd_slow_reason(self) != r.reason)
		abort();
	same(&out, self, &lim);
	if (pd_slow_compare(cur, cur, NULL, 0) != 0)
		abort();
out:
	pd_slow_free(cur);
	pd_slow_free(first);
	pd_slow_free(self);
	return 0;
}
