/*
 * pd_frame: the pure codec of the pdelta wire protocol (proto/PROTOCOL.md).
 *
 * No I/O, no event loop, no allocation on the decode path. The transport
 * (server connection code, client library) owns the bytes; this module turns
 * them into plain structs and back, and validates every length, count, enum
 * and string against proto/pdelta_proto.h. The connection state machine
 * (which frame is legal when) belongs to the transport; pd_frame_type_senders()
 * and the tables in PROTOCOL.md §4 say what it must enforce.
 *
 * Decoding. Read PD_FRAME_HDR_LEN bytes, call pd_frame_hdr_decode() (it
 * rejects an oversized or impossible length before any payload is read),
 * collect h.len payload bytes, call pd_msg_decode(). Or call
 * pd_frame_decode() on whatever is buffered. Decoded strings and data point
 * INTO the payload (no copies): the payload must outlive the pd_msg.
 *
 * Return values: PD_OK (0); PD_FRAME_NEED_MORE (negative) when the bytes end
 * before the header/frame does; otherwise a pd_code:
 *   PD_E_PROTO     header violation (reserved bits, unknown type, bad flags,
 *                  request id zero-ness) or HELLO magic/version field invalid;
 *   PD_E_LIMIT     a length or count above its limit (frame payload, string,
 *                  list);
 *   PD_E_MALFORMED payload truncated, trailing bytes, bad enum, bad UTF-8 or
 *                  character set, duplicate key.
 * All decode errors are connection-fatal (PROTOCOL.md §7).
 *
 * Encoding. pd_msg_encode() validates with the same rules (invalid content
 * is PD_E_ARG, too long is PD_E_LIMIT) and appends one whole frame to a
 * pd_buf; on error the buffer is unchanged. For DATA / RESULT_DATA without a
 * copy, write pd_frame_hdr_encode() then the bytes. Encoders do not know the
 * peer's max_frame: chunking to it is the caller's job.
 */
#ifndef PD_FRAME_H
#define PD_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "pd_buf.h"
#include "pd_err.h"
#include "pdelta_proto.h"

#define PD_FRAME_NEED_MORE (-1)

#define PD_MUST_CHECK __attribute__((warn_unused_result))

/* ---- header ------------------------------------------------------------ */

typedef struct pd_frame_hdr {
	uint32_t len; /* payload bytes after the header */
	uint8_t type;
	uint8_t flags;
	uint16_t reserved; /* must be 0 */
	uint32_t request_id;
} pd_frame_hdr;

/*
 * Decodes and validates the 12-byte header at p (n bytes available).
 * max_payload is the receiver's current limit (PD_PREAUTH_MAX_PAYLOAD before
 * authentication, the announced max_frame after). Returns PD_FRAME_NEED_MORE
 * if n < PD_FRAME_HDR_LEN. On an error *h still holds the raw fields, so the
 * caller can log them or tell FRAME_TOO_LARGE (h->len > max_payload) apart.
 */
int pd_frame_hdr_decode(const uint8_t *p, size_t n, pd_frame_hdr *h, uint32_t max_payload,
			pd_err *e);
/* Validates a header (as pd_frame_hdr_decode() does after parsing). */
int pd_frame_hdr_check(const pd_frame_hdr *h, uint32_t max_payload, pd_err *e);
/* Writes a header as is (no validation). */
void pd_frame_hdr_encode(uint8_t out[PD_FRAME_HDR_LEN], const pd_frame_hdr *h);

/* Who may send a frame type: a mask of PD_SIDE_*; 0 for an unknown type. */
#define PD_SIDE_CLIENT 1u
#define PD_SIDE_SERVER 2u
unsigned pd_frame_type_senders(int type);
/* Static name ("DELTA_BEGIN"), "UNKNOWN" for an unknown type. */
const char *pd_frame_type_name(int type);

/* ---- messages ------------------------------------------------------------ */

/* A string: bytes, not NUL-terminated. len is size_t so that a too-long
 * string given to an encoder is refused, never silently truncated. */
typedef struct pd_str {
	const char *p;
	size_t len;
} pd_str;

/* A C string as a pd_str (NULL gives the empty string). */
static inline pd_str pd_str_c(const char *s)
{
	pd_str r = {s ? s : "", s ? strlen(s) : 0};
	return r;
}

typedef struct pd_bytes {
	const uint8_t *p;
	size_t len;
} pd_bytes;

typedef struct pd_msg_hello {
	uint16_t min_version, max_version;
	uint32_t max_frame; /* largest payload the client accepts; 0 = no preference */
	pd_str client_name; /* 0..PD_MAX_CLIENT_NAME, name charset */
	pd_str token;       /* 0..PD_MAX_TOKEN, printable ASCII without space */
} pd_msg_hello;

typedef struct pd_msg_hello_ok {
	uint16_t version;
	uint8_t role; /* enum pd_role */
	uint32_t max_frame;
	uint32_t max_inflight;
	uint64_t max_profile_bytes;
	uint32_t keepalive_ms;
	uint32_t idle_timeout_ms; /* > keepalive_ms */
	uint32_t request_timeout_ms;
	pd_str tenant;      /* 1..PD_MAX_TENANT */
	pd_str server_name; /* 0..PD_MAX_SERVER_NAME */
} pd_msg_hello_ok;

typedef struct pd_msg_ping { /* PING and PONG */
	uint64_t opaque;
} pd_msg_ping;

typedef struct pd_msg_goodbye {
	uint16_t reason; /* enum pd_goodbye_reason */
	pd_str message;  /* 0..PD_MAX_MESSAGE, text */
} pd_msg_goodbye;

typedef struct pd_msg_error {
	uint16_t code;     /* enum pd_code, never PD_OK */
	uint8_t retryable; /* 0 or 1; authoritative */
	uint8_t detail;    /* enum pd_detail */
	uint64_t value;    /* detail-specific, PROTOCOL.md §7 */
	pd_str message;    /* 0..PD_MAX_MESSAGE, text */
} pd_msg_error;

typedef struct pd_wire_override {
	pd_str name;    /* sample type name, 1..PD_MAX_TYPE_NAME, unique */
	uint8_t policy; /* enum pd_wire_policy */
} pd_wire_override;

typedef struct pd_msg_delta_begin {
	uint64_t seq;
	uint64_t incarnation;
	uint64_t producer_start_ns; /* unix nanos, 0 = unknown */
	uint8_t first_policy;       /* enum pd_wire_first */
	pd_str stream;              /* 1..PD_MAX_STREAM */
	uint16_t n_overrides;       /* 0..PD_MAX_OVERRIDES */
	pd_wire_override overrides[PD_MAX_OVERRIDES];
	/* With flag PD_FLAG_BEGIN_AFTER (and only then; version >= 3): the seq the
	 * client last had answered for the stream, < seq. Last in the payload. */
	uint64_t after_seq;
} pd_msg_delta_begin;

typedef struct pd_msg_data_end {
	uint64_t total_bytes;
	uint8_t hash[PD_CONTENT_HASH_LEN];
} pd_msg_data_end;

typedef struct pd_admin_arg {
	pd_str key;   /* 1..PD_MAX_ADMIN_KEY, [a-z0-9_-], unique */
	pd_str value; /* 0..PD_MAX_ADMIN_VALUE */
} pd_admin_arg;

typedef struct pd_msg_admin {
	pd_str command; /* 1..PD_MAX_ADMIN_CMD, [a-z0-9_-] */
	uint16_t n_args;
	pd_admin_arg args[PD_MAX_ADMIN_ARGS];
} pd_msg_admin;

typedef struct pd_msg_result {
	uint8_t status;      /* enum pd_wire_status */
	uint8_t reason;      /* enum pd_wire_reason */
	uint8_t orig_status; /* == status, or for DUPLICATE the original's status */
	uint64_t seq;        /* the applied (or duplicated) sequence */
	uint64_t samples_in, samples_out;
	uint64_t output_bytes; /* total RESULT_DATA bytes, 0 = not known yet */
} pd_msg_result;

typedef struct pd_msg_result_end {
	uint64_t total_bytes;
	uint32_t crc32; /* zlib crc32() of all RESULT_DATA bytes of the request */
} pd_msg_result_end;

typedef struct pd_msg_admin_result {
	uint8_t format; /* enum pd_admin_format */
	uint64_t total_bytes; /* 0 = not known */
} pd_msg_admin_result;

/* One frame, decoded. CANCEL has no payload. */
typedef struct pd_msg {
	uint8_t type; /* enum pd_frame_type */
	uint8_t flags;
	uint32_t request_id;
	union {
		pd_msg_hello hello;
		pd_msg_hello_ok hello_ok;
		pd_msg_ping ping; /* PING, PONG */
		pd_msg_goodbye goodbye;
		pd_msg_error error;
		pd_msg_delta_begin begin;
		pd_bytes data; /* DATA, RESULT_DATA: 1..PD_FRAME_MAX_ABS bytes */
		pd_msg_data_end data_end;
		pd_msg_admin admin;
		pd_msg_result result;
		pd_msg_result_end result_end;
		pd_msg_admin_result admin_result;
	} u;
} pd_msg;

/* Decodes the payload of a frame whose header h was accepted by
 * pd_frame_hdr_decode(); payload holds exactly h->len bytes. */
int pd_msg_decode(const pd_frame_hdr *h, const uint8_t *payload, pd_msg *m, pd_err *e);

/*
 * Header + payload in one call: decodes the first frame of p[0..n). Returns
 * PD_FRAME_NEED_MORE until the whole frame is there (a bad header fails as
 * soon as its 12 bytes are). On PD_OK, *used is the frame's total size.
 */
int pd_frame_decode(const uint8_t *p, size_t n, uint32_t max_payload, pd_msg *m, size_t *used,
		    pd_err *e);

/* Validates a message as pd_msg_decode() would (PD_E_MALFORMED / PROTO /
 * LIMIT). Lets a client refuse bad input (a stream name) before sending. */
int pd_msg_check(const pd_msg *m, pd_err *e);

/* Payload size m encodes to; m must pass pd_msg_check(). */
size_t pd_msg_payload_len(const pd_msg *m);

/* Validates m and appends its frame to out; out is unchanged on error. */
int pd_msg_encode(pd_buf *out, const pd_msg *m, pd_err *e);

/* Field-by-field equality (string and data contents, not pointers). */
bool pd_msg_equal(const pd_msg *a, const pd_msg *b);

/* Highest version in both [a_min,a_max] and [b_min,b_max]; 0 if none. */
int pd_proto_choose_version(unsigned a_min, unsigned a_max, unsigned b_min, unsigned b_max);

/* Whether p[0..n) is well-formed UTF-8 (no overlongs, surrogates, > U+10FFFF). */
bool pd_utf8_valid(const uint8_t *p, size_t n);

/* ---- bounds-checked read cursor (libusual mbuf style) -------------------- */
/* Every getter returns false, consuming nothing, if the bytes run out. */

typedef struct pd_frd {
	const uint8_t *p;
	size_t len, pos;
} pd_frd;

static inline void pd_frd_init(pd_frd *r, const uint8_t *p, size_t len)
{
	r->p = p;
	r->len = len;
	r->pos = 0;
}

static inline size_t pd_frd_left(const pd_frd *r) { return r->len - r->pos; }

PD_MUST_CHECK static inline bool pd_frd_bytes(pd_frd *r, size_t n, const uint8_t **v)
{
	if (n > pd_frd_left(r))
		return false;
	*v = n ? r->p + r->pos : r->p; /* no arithmetic on a NULL, empty input */
	r->pos += n;
	return true;
}

PD_MUST_CHECK static inline bool pd_frd_u8(pd_frd *r, uint8_t *v)
{
	if (pd_frd_left(r) < 1)
		return false;
	*v = r->p[r->pos++];
	return true;
}

PD_MUST_CHECK static inline bool pd_frd_u16(pd_frd *r, uint16_t *v)
{
	const uint8_t *b;
	if (!pd_frd_bytes(r, 2, &b))
		return false;
	*v = (uint16_t)((unsigned)b[0] << 8 | b[1]);
	return true;
}

PD_MUST_CHECK static inline bool pd_frd_u32(pd_frd *r, uint32_t *v)
{
	const uint8_t *b;
	if (!pd_frd_bytes(r, 4, &b))
		return false;
	*v = (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
	return true;
}

PD_MUST_CHECK static inline bool pd_frd_u64(pd_frd *r, uint64_t *v)
{
	uint32_t hi, lo;
	size_t pos = r->pos;
	if (!pd_frd_u32(r, &hi) || !pd_frd_u32(r, &lo)) {
		r->pos = pos;
		return false;
	}
	*v = (uint64_t)hi << 32 | lo;
	return true;
}

/* A u16-length-prefixed string; its content is NOT validated here. */
PD_MUST_CHECK static inline bool pd_frd_str(pd_frd *r, pd_str *s)
{
	uint16_t n;
	const uint8_t *b;
	size_t pos = r->pos;
	if (!pd_frd_u16(r, &n) || !pd_frd_bytes(r, n, &b)) {
		r->pos = pos;
		return false;
	}
	s->p = (const char *)b;
	s->len = n;
	return true;
}

/* ---- write cursor into a pd_buf ------------------------------------------ */
/*
 * pd_fwr_begin() reserves exactly n bytes at the end of b (the one fallible
 * step); the putters then write into that window and set a sticky overflow
 * flag instead of writing past it; pd_fwr_commit() appends the window to b
 * only if exactly n bytes were written without overflow.
 */
typedef struct pd_fwr {
	uint8_t *p;
	size_t cap, pos;
	bool overflow;
} pd_fwr;

int pd_fwr_begin(pd_fwr *w, pd_buf *b, size_t n, pd_err *e);
int pd_fwr_commit(pd_fwr *w, pd_buf *b, pd_err *e);
void pd_fwr_bytes(pd_fwr *w, const void *p, size_t n);
void pd_fwr_u8(pd_fwr *w, uint8_t v);
void pd_fwr_u16(pd_fwr *w, uint16_t v);
void pd_fwr_u32(pd_fwr *w, uint32_t v);
void pd_fwr_u64(pd_fwr *w, uint64_t v);
/* u16 length + bytes; overflow if s->len > UINT16_MAX. */
void pd_fwr_str(pd_fwr *w, const pd_str *s);

#endif
