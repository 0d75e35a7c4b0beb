/*
 * fuzz_pprof: libFuzzer target for the pprof reader and the delta engine.
 *
 * Each input is run as the first profile of a stream (BASELINE), then again
 * against the state it produced (must be a DELTA whose delta columns are all
 * zero, so at most the gauge samples survive), then the state is serialized
 * and deserialized (must round-trip), and every output is read back by the
 * engine (every output must be a valid profile). Small limits keep each run
 * fast and also exercise the limit paths.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_engine.h"
#include "pd_engine.h"
#include "pd_inspect.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static pd_engine *eng, *eng2;
	static pd_state *empty, *s1, *s2, *s3;
	static pd_buf out, out2, ser;
	pd_limits lim;
	pd_req req;
	pd_result r;
	pd_err e;
	pd_inspect ins;

	if (!eng) {
		fuzz_limits(&lim);
		eng = pd_engine_new(&lim);
		eng2 = pd_engine_new(&lim);
		empty = pd_state_new();
		s1 = pd_state_new();
		s2 = pd_state_new();
		s3 = pd_state_new();
		pd_buf_init(&out, 0);
		pd_buf_init(&out2, 0);
		pd_buf_init(&ser, 0);
	}
	pd_req_default(&req);
	req.gzip_level = 0;
	pd_buf_reset(&out);
	if (pd_engine_run(eng, data, size, empty, s1, &req, buf_sink, &out, &r, &e) != PD_OK)
		return 0;
	if (r.status != PD_STATUS_BASELINE)
		abort();
	/* The output must itself be a valid profile. */
	if (out.len && pd_engine_inspect(eng2, out.data, out.len, &ins, &e) != PD_OK)
		abort();
	pd_buf_reset(&out2);
	if (pd_engine_run(eng, data, size, s1, s2, &req, buf_sink, &out2, &r, &e) != PD_OK)
		abort(); /* accepted once, must be accepted again */
	if (r.status != PD_STATUS_DELTA)
		abort(); /* same profile again: never a reset */
	if (out2.len && pd_engine_inspect(eng2, out2.data, out2.len, &ins, &e) != PD_OK)
		abort();
	pd_buf_reset(&ser);
	if (pd_state_serialize(s2, &ser, &e) != PD_OK)
		abort();
	if (pd_state_deserialize(s3, ser.data, ser.len, &e) != PD_OK)
		abort();
	if (pd_state_identities(s3) != pd_state_identities(s2) ||
	    pd_state_time_nanos(s3) != pd_state_time_nanos(s2))
		abort();
	/* Hostile state blobs: the input itself as a blob must not crash. */
	pd_state_deserialize(s3, data, size, &e);
	return 0;
}
