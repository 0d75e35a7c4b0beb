/*
 * pdelta_proto.h: the numbers of the pdelta wire protocol (proto/PROTOCOL.md).
 *
 * Everything a peer must agree on is here: magic, versions, frame types,
 * per-type flags, enums carried in payloads, string and count maxima, and the
 * default limits and deadlines the server announces. Error codes on the wire
 * are the values of enum pd_code (common/pd_err.h); PD_DETAIL_* refine them.
 * Changing any value here is a protocol version change.
 */
#ifndef PDELTA_PROTO_H
#define PDELTA_PROTO_H

/* ---- handshake ---------------------------------------------------------- */
#define PD_PROTO_MAGIC 0x50444C54u /* "PDLT" */
#define PD_PROTO_VERSION 3         /* the highest version this code speaks */
#define PD_PROTO_VERSION_MIN 1     /* the lowest version this code speaks */

/* ---- frame header --------------------------------------------------------- */
#define PD_FRAME_HDR_LEN 12
#define PD_FRAME_MAX_ABS (16u * 1024 * 1024) /* no frame payload is ever larger */
#define PD_FRAME_MIN_LIMIT 65536u            /* smallest max_frame a peer may announce */
#define PD_PREAUTH_MAX_PAYLOAD 4096u         /* max payload before HELLO_OK */

/* Frame types. Bit 0x80 clear: sent by the client; the 0x0_ group may also
 * be sent by the server. See pd_frame_type_senders(). */
enum pd_frame_type {
	PD_FT_HELLO = 0x01,        /* C->S */
	PD_FT_HELLO_OK = 0x02,     /* S->C */
	PD_FT_PING = 0x03,         /* both */
	PD_FT_PONG = 0x04,         /* both */
	PD_FT_GOODBYE = 0x05,      /* both */
	PD_FT_ERROR = 0x06,        /* S->C */
	PD_FT_DELTA_BEGIN = 0x10,  /* C->S */
	PD_FT_DATA = 0x11,         /* C->S */
	PD_FT_DATA_END = 0x12,     /* C->S */
	PD_FT_CANCEL = 0x13,       /* C->S */
	PD_FT_ADMIN = 0x14,        /* C->S */
	PD_FT_RESULT = 0x20,       /* S->C */
	PD_FT_RESULT_DATA = 0x21,  /* S->C */
	PD_FT_RESULT_END = 0x22,   /* S->C */
	PD_FT_ADMIN_RESULT = 0x23, /* S->C */
};

/* Header flags, per frame type; every other bit must be 0. */
#define PD_FLAG_BEGIN_NO_DATA 0x01 /* DELTA_BEGIN: send no RESULT_DATA */
#define PD_FLAG_BEGIN_AFTER 0x02   /* DELTA_BEGIN (version >= 3): ends with u64 after_seq */
#define PD_PROTO_VERSION_AFTER 3   /* first version with PD_FLAG_BEGIN_AFTER and reason state-lost */

/* ---- payload enums -------------------------------------------------------- */
/* The PD_WIRE_* values are the wire's, not the engine's (common/pd_engine.h
 * has its own enums): map them explicitly, never by cast. */
enum pd_role { PD_ROLE_AGENT = 1, PD_ROLE_ADMIN = 2 };

enum pd_wire_first { PD_WIRE_FIRST_KEEP = 0, PD_WIRE_FIRST_DROP = 1, PD_WIRE_FIRST_AUTO = 2 };

enum pd_wire_policy { PD_WIRE_POLICY_DELTA = 1, PD_WIRE_POLICY_GAUGE = 2 };

enum pd_wire_status {
	PD_WIRE_STATUS_DELTA = 1,
	PD_WIRE_STATUS_BASELINE = 2,
	PD_WIRE_STATUS_DUPLICATE = 3,
};

enum pd_wire_reason {
	PD_WIRE_REASON_NONE = 0,
	PD_WIRE_REASON_FIRST = 1,
	PD_WIRE_REASON_RESET = 2,
	PD_WIRE_REASON_EVICTED = 3,
	PD_WIRE_REASON_MOVED = 4,
	PD_WIRE_REASON_STATE_LOST = 5, /* version >= 3 only */
};

enum pd_admin_format { PD_ADMIN_JSON = 1 };

/* ERROR.detail: refines ERROR.code; ERROR.value meaning in PROTOCOL.md §7. */
enum pd_detail {
	PD_DETAIL_NONE = 0,
	PD_DETAIL_SEQ_STALE = 1,       /* seq < last applied (value: last seq) */
	PD_DETAIL_SEQ_CONFLICT = 2,    /* same seq, other content (value: last seq) */
	PD_DETAIL_VERSION = 3,         /* no common version (value: min<<16|max) */
	PD_DETAIL_BAD_FRAME = 4,       /* frame illegal here, or header/payload invalid */
	PD_DETAIL_FRAME_TOO_LARGE = 5, /* value: max payload */
	PD_DETAIL_INFLIGHT = 6,        /* too many requests in flight (value: max) */
	PD_DETAIL_PROFILE_TOO_LARGE = 7, /* upload > max_profile_bytes (value: max) */
	PD_DETAIL_INPUT_LIMIT = 8,     /* an engine input cap (inflated size, samples...) */
	PD_DETAIL_STREAM_LIMIT = 9,    /* tenant has too many streams (value: max) */
	PD_DETAIL_LENGTH_MISMATCH = 10, /* DATA_END total != bytes received (value: received) */
	PD_DETAIL_HASH_MISMATCH = 11,  /* DATA_END hash != hash of bytes received */
	PD_DETAIL_SHUTTING_DOWN = 12,  /* server draining, new request refused */
	PD_DETAIL_CANCELLED = 13,      /* the client cancelled the request */
	PD_DETAIL_DEADLINE = 14,       /* a deadline expired (value: the deadline, ms) */
	PD_DETAIL_OVERLOADED = 15,     /* server queue full (value: retry after, ms) */
	PD_DETAIL_ROLE = 16,           /* needs the admin role */
	PD_DETAIL_UNKNOWN_COMMAND = 17, /* ADMIN command unknown */
	PD_DETAIL_AUTH_FAILED = 18,    /* token / certificate not accepted */
	PD_DETAIL__COUNT
};

enum pd_goodbye_reason {
	PD_BYE_NORMAL = 0,     /* sender is done */
	PD_BYE_SHUTDOWN = 1,   /* server is stopping (SIGTERM) */
	PD_BYE_IDLE = 2,       /* idle timeout */
	PD_BYE_PROTOCOL = 3,   /* sender saw a protocol violation */
	PD_BYE_OVERLOAD = 4,   /* server sheds this connection */
	PD_BYE_REVOKED = 5,    /* credentials no longer valid (SIGHUP reload) */
	PD_BYE__COUNT
};

/* ---- string and count maxima (bytes; strings are UTF-8) -------------------- */
#define PD_MAX_CLIENT_NAME 64
#define PD_MAX_TOKEN 512
#define PD_MAX_TENANT 128
#define PD_MAX_SERVER_NAME 64
#define PD_MAX_STREAM 256
#define PD_MAX_TYPE_NAME 128
#define PD_MAX_OVERRIDES 32
#define PD_MAX_MESSAGE 1024
#define PD_MAX_ADMIN_CMD 32
#define PD_MAX_ADMIN_KEY 32
#define PD_MAX_ADMIN_VALUE 1024
#define PD_MAX_ADMIN_ARGS 16
#define PD_CONTENT_HASH_LEN 16 /* first 16 bytes of SHA-256 of the upload */

/* ---- default limits and deadlines (the server's config may change them) ---- */
#define PD_DEFAULT_MAX_FRAME (1024u * 1024)          /* max frame payload after auth */
#define PD_DEFAULT_MAX_INFLIGHT 64u                  /* requests per connection */
#define PD_DEFAULT_MAX_PROFILE_BYTES (64ull << 20)   /* uploaded bytes per request */
#define PD_DEFAULT_RESULT_CHUNK 65536u               /* RESULT_DATA flush threshold */
#define PD_DEFAULT_OUTPUT_BUDGET (4u * 1024 * 1024)  /* unsent bytes per connection */
#define PD_DEFAULT_HANDSHAKE_TIMEOUT_MS 10000u       /* accept -> HELLO received */
#define PD_DEFAULT_FRAME_TIMEOUT_MS 30000u           /* first header byte -> frame complete */
#define PD_DEFAULT_KEEPALIVE_MS 30000u               /* client PINGs when silent this long */
#define PD_DEFAULT_IDLE_TIMEOUT_MS 120000u           /* nothing received this long: close */
#define PD_DEFAULT_REQUEST_TIMEOUT_MS 60000u         /* DELTA_BEGIN -> DATA_END */
#define PD_DEFAULT_WRITE_TIMEOUT_MS 30000u           /* output stuck above budget */
#define PD_DEFAULT_DRAIN_TIMEOUT_MS 30000u           /* GOODBYE -> close */

#endif
