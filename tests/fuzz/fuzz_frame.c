/*
 * fuzz_frame: libFuzzer target for the frame codec (common/pd_frame.[ch]).
 *
 * Input format (first byte selects the mode):
 *   0xFF, rest: a byte stream of frames, decoded one after the other with
 *         max_payload = PD_FRAME_MAX_ABS (as after authentication);
 *   0xFE, rest: the same with max_payload = PD_PREAUTH_MAX_PAYLOAD;
 *   else: one payload. Bits 0-3 pick the frame type (index into types[]),
 *         bit 4 sets header flag 0x01, bit 5 gives ERROR request id 0; the
 *         header is built around the rest of the input.
 * Every frame that decodes must re-encode to exactly its input bytes, and
 * the re-encoded frame must decode to an equal message; a violation aborts.
 * Seeds: tests/fuzz/corpus/frame/ (written by `test_frame --write-corpus`).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pd_frame.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const uint8_t types[] = {
	PD_FT_HELLO,	   PD_FT_HELLO_OK, PD_FT_PING,	      PD_FT_PONG,
	PD_FT_GOODBYE,	   PD_FT_ERROR,	   PD_FT_DELTA_BEGIN, PD_FT_DATA,
	PD_FT_DATA_END,	   PD_FT_CANCEL,   PD_FT_ADMIN,	      PD_FT_RESULT,
	PD_FT_RESULT_DATA, PD_FT_RESULT_END, PD_FT_ADMIN_RESULT,
};

static void fail(const char *what, const pd_msg *m, const pd_err *e)
{
	fprintf(stderr, "fuzz_frame: %s (%s): %s\n", what, pd_frame_type_name(m->type),
		e ? e->msg : "");
	abort();
}

/* m was decoded from frame[0..n): it must re-encode to the same bytes. */
static void check_round_trip(const pd_msg *m, const uint8_t *frame, size_t n)
{
	static pd_buf b;
	static int init;
	pd_msg d;
	pd_err e;
	size_t used;

	if (!init) {
		pd_buf_init(&b, 0);
		init = 1;
	}
	pd_buf_reset(&b);
	if (pd_msg_check(m, &e))
		fail("decoded message fails its check", m, &e);
	if (pd_msg_encode(&b, m, &e))
		fail("decoded message does not re-encode", m, &e);
	if (b.len != n || memcmp(b.data, frame, n) != 0)
		fail("re-encoded bytes differ", m, NULL);
	if (pd_msg_payload_len(m) + PD_FRAME_HDR_LEN != n)
		fail("payload length differs", m, NULL);
	if (pd_frame_decode(b.data, b.len, PD_FRAME_MAX_ABS, &d, &used, &e) || used != n)
		fail("re-encoded frame does not decode", m, &e);
	if (!pd_msg_equal(m, &d))
		fail("re-decoded message differs", m, NULL);
}

static void fuzz_stream(const uint8_t *p, size_t n, uint32_t max_payload)
{
	pd_msg m;
	pd_err e;
	size_t used;

	while (n > 0) {
		int rc = pd_frame_decode(p, n, max_payload, &m, &used, &e);
		if (rc == PD_FRAME_NEED_MORE || rc > 0)
			return;
		if (rc != PD_OK || used < PD_FRAME_HDR_LEN || used > n)
			fail("bad return from pd_frame_decode", &m, &e);
		check_round_trip(&m, p, used);
		p += used;
		n -= used;
	}
}

static void fuzz_one(uint8_t sel, const uint8_t *p, size_t n)
{
	uint8_t type = types[(sel & 0x0f) % sizeof types];
	unsigned senders = pd_frame_type_senders(type);
	pd_frame_hdr h = {(uint32_t)n, type, (uint8_t)(sel & 0x10 ? 1 : 0), 0, 7};
	uint8_t *frame;
	pd_msg m;
	pd_err e;

	if (n > PD_FRAME_MAX_ABS || !senders)
		return;
	if (type <= PD_FT_GOODBYE || (type == PD_FT_ERROR && (sel & 0x20)))
		h.request_id = 0;
	/* Exact-size copy so that ASan sees any read past the payload. */
	frame = malloc(PD_FRAME_HDR_LEN + n);
	if (!frame)
		return;
	pd_frame_hdr_encode(frame, &h);
	if (n)
		memcpy(frame + PD_FRAME_HDR_LEN, p, n);
	if (pd_frame_hdr_check(&h, PD_FRAME_MAX_ABS, &e) == PD_OK &&
	    pd_msg_decode(&h, frame + PD_FRAME_HDR_LEN, &m, &e) == PD_OK)
		check_round_trip(&m, frame, PD_FRAME_HDR_LEN + n);
	free(frame);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size == 0)
		return 0;
	if (data[0] == 0xff)
		fuzz_stream(data + 1, size - 1, PD_FRAME_MAX_ABS);
	else if (data[0] == 0xfe)
		fuzz_stream(data + 1, size - 1, PD_PREAUTH_MAX_PAYLOAD);
	else
		fuzz_one(data[0], data + 1, size - 1);
	return 0;
}
