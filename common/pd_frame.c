/*
 * pd_frame: encoder, decoder and validator of pdelta protocol frames.
 *
 * Decoding is two steps per frame: parse (structure only: every read through
 * the checked cursor, counts bounded before any array is filled, no trailing
 * bytes), then check (values: enums, string lengths and character sets,
 * uniqueness). The encoder runs the very same check, so a frame this codec
 * emits is always one it accepts, and re-encoding a decoded frame reproduces
 * its bytes exactly (the fuzzer relies on that).
 */
#include "pd_frame.h"

/* ---- frame type table ------------------------------------------------------ */

enum id_rule { ID_ZERO, ID_NONZERO, ID_ANY };

typedef struct ftype_info {
	uint8_t type;
	uint8_t senders;
	uint8_t id_rule;
	uint8_t flags_ok;
	uint32_t min_len, max_len; /* payload bounds implied by the layout */
	const char *name;
} ftype_info;

#define S_ (2u) /* a string's u16 length prefix */
#define C_ PD_SIDE_CLIENT
#define V_ PD_SIDE_SERVER
#define HELLO_FIXED 12u
#define HELLO_OK_FIXED 32u
#define ERROR_FIXED 12u
#define BEGIN_FIXED 28u
#define OVERRIDE_MAX (S_ + PD_MAX_TYPE_NAME + 1u)
#define ADMIN_ARG_MAX (S_ + PD_MAX_ADMIN_KEY + S_ + PD_MAX_ADMIN_VALUE)

static const ftype_info ftypes[] = {
	{PD_FT_HELLO, C_, ID_ZERO, 0, HELLO_FIXED + 2 * S_,
	 HELLO_FIXED + S_ + PD_MAX_CLIENT_NAME + S_ + PD_MAX_TOKEN, "HELLO"},
	{PD_FT_HELLO_OK, V_, ID_ZERO, 0, HELLO_OK_FIXED + 2 * S_,
	 HELLO_OK_FIXED + S_ + PD_MAX_TENANT + S_ + PD_MAX_SERVER_NAME, "HELLO_OK"},
	{PD_FT_PING, C_ | V_, ID_ZERO, 0, 8, 8, "PING"},
	{PD_FT_PONG, C_ | V_, ID_ZERO, 0, 8, 8, "PONG"},
	{PD_FT_GOODBYE, C_ | V_, ID_ZERO, 0, 2 + S_, 2 + S_ + PD_MAX_MESSAGE, "GOODBYE"},
	{PD_FT_ERROR, V_, ID_ANY, 0, ERROR_FIXED + S_, ERROR_FIXED + S_ + PD_MAX_MESSAGE, "ERROR"},
	{PD_FT_DELTA_BEGIN, C_, ID_NONZERO, PD_FLAG_BEGIN_NO_DATA | PD_FLAG_BEGIN_AFTER, BEGIN_FIXED + S_,
	 BEGIN_FIXED + S_ + PD_MAX_STREAM + PD_MAX_OVERRIDES * OVERRIDE_MAX + 8, "DELTA_BEGIN"},
	{PD_FT_DATA, C_, ID_NONZERO, 0, 1, PD_FRAME_MAX_ABS, "DATA"},
	{PD_FT_DATA_END, C_, ID_NONZERO, 0, 8 + PD_CONTENT_HASH_LEN, 8 + PD_CONTENT_HASH_LEN,
	 "DATA_END"},
	{PD_FT_CANCEL, C_, ID_NONZERO, 0, 0, 0, "CANCEL"},
	{PD_FT_ADMIN, C_, ID_NONZERO, 0, S_ + 2,
	 S_ + PD_MAX_ADMIN_CMD + 2 + PD_MAX_ADMIN_ARGS * ADMIN_ARG_MAX, "ADMIN"},
	{PD_FT_RESULT, V_, ID_NONZERO, 0, 36, 36, "RESULT"},
	{PD_FT_RESULT_DATA, V_, ID_NONZERO, 0, 1, PD_FRAME_MAX_ABS, "RESULT_DATA"},
	{PD_FT_RESULT_END, V_, ID_NONZERO, 0, 12, 12, "RESULT_END"},
	{PD_FT_ADMIN_RESULT, V_, ID_NONZERO, 0, 12, 12, "ADMIN_RESULT"},
};

static const ftype_info *ftype(int type)
{
	for (size_t i = 0; i < sizeof ftypes / sizeof ftypes[0]; i++)
		if (ftypes[i].type == type)
			return &ftypes[i];
	return NULL;
}

unsigned pd_frame_type_senders(int type)
{
	const ftype_info *t = ftype(type);
	return t ? t->senders : 0;
}

const char *pd_frame_type_name(int type)
{
	const ftype_info *t = ftype(type);
	return t ? t->name : "UNKNOWN";
}

/* ---- header -------------------------------------------------------------- */

/* Type, flags and request id: shared by the header check and the encoder. */
static int check_kind(int type, unsigned flags, uint32_t request_id, const ftype_info **out,
		      pd_err *e)
{
	const ftype_info *t = ftype(type);

	if (!t)
		return pd_err_set(e, PD_E_PROTO, "unknown frame type 0x%02x", (unsigned)type);
	if (flags & ~(unsigned)t->flags_ok)
		return pd_err_set(e, PD_E_PROTO, "%s: undefined flags 0x%02x", t->name, flags);
	if (t->id_rule == ID_ZERO && request_id != 0)
		return pd_err_set(e, PD_E_PROTO, "%s: request id must be 0", t->name);
	if (t->id_rule == ID_NONZERO && request_id == 0)
		return pd_err_set(e, PD_E_PROTO, "%s: request id must not be 0", t->name);
	*out = t;
	return PD_OK;
}

int pd_frame_hdr_check(const pd_frame_hdr *h, uint32_t max_payload, pd_err *e)
{
	const ftype_info *t;
	int rc;

	if (h->reserved != 0)
		return pd_err_set(e, PD_E_PROTO, "reserved header bits set (0x%04x)", h->reserved);
	rc = check_kind(h->type, h->flags, h->request_id, &t, e);
	if (rc)
		return rc;
	if (h->len > max_payload)
		return pd_err_set(e, PD_E_LIMIT, "%s: payload of %u bytes exceeds the limit of %u",
				  t->name, h->len, max_payload);
	if (h->len > t->max_len)
		return pd_err_set(e, PD_E_LIMIT, "%s: payload of %u bytes, at most %u possible",
				  t->name, h->len, t->max_len);
	if (h->len < t->min_len)
		return pd_err_set(e, PD_E_MALFORMED, "%s: payload of %u bytes, at least %u needed",
				  t->name, h->len, t->min_len);
	return PD_OK;
}

int pd_frame_hdr_decode(const uint8_t *p, size_t n, pd_frame_hdr *h, uint32_t max_payload,
			pd_err *e)
{
	pd_frd r;

	pd_frd_init(&r, p, n);
	if (!pd_frd_u32(&r, &h->len) || !pd_frd_u8(&r, &h->type) || !pd_frd_u8(&r, &h->flags) ||
	    !pd_frd_u16(&r, &h->reserved) || !pd_frd_u32(&r, &h->request_id))
		return PD_FRAME_NEED_MORE;
	return pd_frame_hdr_check(h, max_payload, e);
}

void pd_frame_hdr_encode(uint8_t out[PD_FRAME_HDR_LEN], const pd_frame_hdr *h)
{
	pd_fwr w = {out, PD_FRAME_HDR_LEN, 0, false};

	pd_fwr_u32(&w, h->len);
	pd_fwr_u8(&w, h->type);
	pd_fwr_u8(&w, h->flags);
	pd_fwr_u16(&w, h->reserved);
	pd_fwr_u32(&w, h->request_id);
}

/* ---- string validation ------------------------------------------------------- */


/* Length of the valid UTF-8 sequence at p (left > 0 bytes), 0 if invalid.
 * The second byte's range excludes overlongs, surrogates and > U+10FFFF. */
static size_t utf8_seq(const uint8_t *p, size_t left)
{
	uint8_t c = p[0], lo = 0x80, hi = 0xBF;
	size_t need;

	if (c < 0x80)
		return 1;
	if (c >= 0xC2 && c <= 0xDF)
		need = 1;
	else if (c >= 0xE0 && c <= 0xEF)
		need = 2;
	else if (c >= 0xF0 && c <= 0xF4)
		need = 3;
	else
		return 0;
	if (c == 0xE0)
		lo = 0xA0;
	else if (c == 0xED)
		hi = 0x9F;
	else if (c == 0xF0)
		lo = 0x90;
	else if (c == 0xF4)
		hi = 0x8F;
	if (left - 1 < need || p[1] < lo || p[1] > hi)
		return 0;
	for (size_t k = 2; k <= need; k++)
		if ((p[k] & 0xC0) != 0x80)
			return 0;
	return need + 1;
}

bool pd_utf8_valid(const uint8_t *p, size_t n)
{
	size_t i = 0, k;

	while (i < n) {
		k = utf8_seq(p + i, n - i);
		if (!k)
			return false;
		i += k;
	}
	return true;
}

enum str_kind {
	STR_TEXT,  /* UTF-8 without NUL (messages) */
	STR_NAME,  /* UTF-8 without ASCII control characters (names, values) */
	STR_TOKEN, /* printable ASCII without space */
	STR_IDENT, /* [a-z0-9_-] (admin commands and keys) */
};

static bool byte_ok(enum str_kind k, uint8_t c)
{
	switch (k) {
	case STR_TEXT:
		return c != 0;
	case STR_NAME:
		return c >= 0x20 && c != 0x7F;
	case STR_TOKEN:
		return c > 0x20 && c < 0x7F;
	case STR_IDENT:
		return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
	}
	return false;
}

static int check_str(const pd_str *s, size_t min, size_t max, enum str_kind k,
		     const char *what, pd_err *e)
{
	const uint8_t *b = (const uint8_t *)s->p;

	if (s->len > max)
		return pd_err_set(e, PD_E_LIMIT, "%s of %zu bytes exceeds the maximum of %zu", what,
				  s->len, max);
	if (s->len < min)
		return pd_err_set(e, PD_E_MALFORMED, "%s must not be empty", what);
	if (s->len && !b)
		return pd_err_set(e, PD_E_MALFORMED, "%s is NULL", what);
	for (size_t i = 0; i < s->len; i++)
		if (!byte_ok(k, b[i]))
			return pd_err_set(e, PD_E_MALFORMED, "%s has an invalid byte 0x%02x at %zu",
					  what, b[i], i);
	if ((k == STR_TEXT || k == STR_NAME) && !pd_utf8_valid(b, s->len))
		return pd_err_set(e, PD_E_MALFORMED, "%s is not valid UTF-8", what);
	return PD_OK;
}

static bool str_eq(const pd_str *a, const pd_str *b)
{
	return a->len == b->len && (a->len == 0 || memcmp(a->p, b->p, a->len) == 0);
}

/* ---- per-message value checks (shared by decoder and encoder) --------------- */

static int bad(pd_err *e, const char *what, unsigned v)
{
	return pd_err_set(e, PD_E_MALFORMED, "invalid %s %u", what, v);
}

static int check_frame_limit(uint32_t v, const char *what, pd_err *e)
{
	if (v < PD_FRAME_MIN_LIMIT || v > PD_FRAME_MAX_ABS)
		return pd_err_set(e, PD_E_MALFORMED, "%s %u outside [%u, %u]", what, v,
				  PD_FRAME_MIN_LIMIT, PD_FRAME_MAX_ABS);
	return PD_OK;
}

static int check_hello(const pd_msg_hello *m, pd_err *e)
{
	int rc;

	if (m->min_version == 0 || m->min_version > m->max_version)
		return pd_err_set(e, PD_E_PROTO, "bad version range [%u, %u]", m->min_version,
				  m->max_version);
	if (m->max_frame != 0 && (rc = check_frame_limit(m->max_frame, "max_frame", e)))
		return rc;
	if ((rc = check_str(&m->client_name, 0, PD_MAX_CLIENT_NAME, STR_NAME, "client name", e)))
		return rc;
	return check_str(&m->token, 0, PD_MAX_TOKEN, STR_TOKEN, "token", e);
}

static int check_hello_ok(const pd_msg_hello_ok *m, pd_err *e)
{
	int rc;

	if (m->version == 0)
		return bad(e, "version", 0);
	if (m->role != PD_ROLE_AGENT && m->role != PD_ROLE_ADMIN)
		return bad(e, "role", m->role);
	if ((rc = check_frame_limit(m->max_frame, "max_frame", e)))
		return rc;
	if (m->max_inflight == 0 || m->max_profile_bytes == 0 || m->keepalive_ms == 0 ||
	    m->request_timeout_ms == 0)
		return pd_err_set(e, PD_E_MALFORMED, "HELLO_OK: zero limit");
	if (m->idle_timeout_ms <= m->keepalive_ms)
		return pd_err_set(e, PD_E_MALFORMED, "HELLO_OK: idle timeout %u <= keepalive %u",
				  m->idle_timeout_ms, m->keepalive_ms);
	if ((rc = check_str(&m->tenant, 1, PD_MAX_TENANT, STR_NAME, "tenant", e)))
		return rc;
	return check_str(&m->server_name, 0, PD_MAX_SERVER_NAME, STR_NAME, "server name", e);
}

static int check_goodbye(const pd_msg_goodbye *m, pd_err *e)
{
	if (m->reason >= PD_BYE__COUNT)
		return bad(e, "goodbye reason", m->reason);
	return check_str(&m->message, 0, PD_MAX_MESSAGE, STR_TEXT, "message", e);
}

static int check_error(const pd_msg_error *m, pd_err *e)
{
	if (m->code == PD_OK || m->code >= PD_E__COUNT)
		return bad(e, "error code", m->code);
	if (m->retryable > 1)
		return bad(e, "retryable flag", m->retryable);
	if (m->detail >= PD_DETAIL__COUNT)
		return bad(e, "error detail", m->detail);
	return check_str(&m->message, 0, PD_MAX_MESSAGE, STR_TEXT, "message", e);
}

static int check_overrides(const pd_msg_delta_begin *m, pd_err *e)
{
	int rc;

	if (m->n_overrides > PD_MAX_OVERRIDES)
		return pd_err_set(e, PD_E_LIMIT, "%u policy overrides, max %d", m->n_overrides,
				  PD_MAX_OVERRIDES);
	for (unsigned i = 0; i < m->n_overrides; i++) {
		const pd_wire_override *o = &m->overrides[i];
		rc = check_str(&o->name, 1, PD_MAX_TYPE_NAME, STR_NAME, "sample type name", e);
		if (rc)
			return rc;
		if (o->policy != PD_WIRE_POLICY_DELTA && o->policy != PD_WIRE_POLICY_GAUGE)
			return bad(e, "sample type policy", o->policy);
		for (unsigned j = 0; j < i; j++)
			if (str_eq(&o->name, &m->overrides[j].name))
				return pd_err_set(e, PD_E_MALFORMED,
						  "sample type %.*s overridden twice",
						  (int)o->name.len, o->name.p);
	}
	return PD_OK;
}

static int check_begin(const pd_msg_delta_begin *m, unsigned flags, pd_err *e)
{
	int rc;

	if ((flags & PD_FLAG_BEGIN_AFTER) && m->after_seq >= m->seq)
		return pd_err_set(e, PD_E_MALFORMED, "after_seq %llu is not below seq %llu",
				  (unsigned long long)m->after_seq, (unsigned long long)m->seq);
	if (m->first_policy > PD_WIRE_FIRST_AUTO)
		return bad(e, "first-profile policy", m->first_policy);
	if ((rc = check_str(&m->stream, 1, PD_MAX_STREAM, STR_NAME, "stream name", e)))
		return rc;
	return check_overrides(m, e);
}

static int check_data(const pd_bytes *d, pd_err *e)
{
	if (d->len == 0 || !d->p)
		return pd_err_set(e, PD_E_MALFORMED, "empty data frame");
	if (d->len > PD_FRAME_MAX_ABS)
		return pd_err_set(e, PD_E_LIMIT, "data frame of %zu bytes", d->len);
	return PD_OK;
}

static int check_admin(const pd_msg_admin *m, pd_err *e)
{
	int rc;

	rc = check_str(&m->command, 1, PD_MAX_ADMIN_CMD, STR_IDENT, "admin command", e);
	if (rc)
		return rc;
	if (m->n_args > PD_MAX_ADMIN_ARGS)
		return pd_err_set(e, PD_E_LIMIT, "%u admin args, max %d", m->n_args,
				  PD_MAX_ADMIN_ARGS);
	for (unsigned i = 0; i < m->n_args; i++) {
		const pd_admin_arg *a = &m->args[i];
		if ((rc = check_str(&a->key, 1, PD_MAX_ADMIN_KEY, STR_IDENT, "admin key", e)))
			return rc;
		rc = check_str(&a->value, 0, PD_MAX_ADMIN_VALUE, STR_NAME, "admin value", e);
		if (rc)
			return rc;
		for (unsigned j = 0; j < i; j++)
			if (str_eq(&a->key, &m->args[j].key))
				return pd_err_set(e, PD_E_MALFORMED, "admin key %.*s given twice",
						  (int)a->key.len, a->key.p);
	}
	return PD_OK;
}

/* DELTA has no reason; a BASELINE always has one; a DUPLICATE repeats the
 * status and reason of the response it replays. */
static int check_result(const pd_msg_result *m, pd_err *e)
{
	uint8_t st = m->orig_status;

	if (m->status < PD_WIRE_STATUS_DELTA || m->status > PD_WIRE_STATUS_DUPLICATE)
		return bad(e, "status", m->status);
	if (m->status != PD_WIRE_STATUS_DUPLICATE && st != m->status)
		return bad(e, "original status", st);
	if (st != PD_WIRE_STATUS_DELTA && st != PD_WIRE_STATUS_BASELINE)
		return bad(e, "original status", st);
	if (m->reason > PD_WIRE_REASON_STATE_LOST)
		return bad(e, "reason", m->reason);
	if ((st == PD_WIRE_STATUS_DELTA) != (m->reason == PD_WIRE_REASON_NONE))
		return pd_err_set(e, PD_E_MALFORMED, "reason %u does not fit status %u", m->reason,
				  st);
	return PD_OK;
}

static int check_payload(const pd_msg *m, pd_err *e)
{
	switch (m->type) {
	case PD_FT_HELLO:
		return check_hello(&m->u.hello, e);
	case PD_FT_HELLO_OK:
		return check_hello_ok(&m->u.hello_ok, e);
	case PD_FT_GOODBYE:
		return check_goodbye(&m->u.goodbye, e);
	case PD_FT_ERROR:
		return check_error(&m->u.error, e);
	case PD_FT_DELTA_BEGIN:
		return check_begin(&m->u.begin, m->flags, e);
	case PD_FT_DATA:
	case PD_FT_RESULT_DATA:
		return check_data(&m->u.data, e);
	case PD_FT_ADMIN:
		return check_admin(&m->u.admin, e);
	case PD_FT_RESULT:
		return check_result(&m->u.result, e);
	case PD_FT_ADMIN_RESULT:
		if (m->u.admin_result.format != PD_ADMIN_JSON)
			return bad(e, "admin result format", m->u.admin_result.format);
		return PD_OK;
	default: /* PING, PONG, DATA_END, CANCEL, RESULT_END: any value is valid */
		return PD_OK;
	}
}

int pd_msg_check(const pd_msg *m, pd_err *e)
{
	const ftype_info *t;
	int rc = check_kind(m->type, m->flags, m->request_id, &t, e);

	return rc ? rc : check_payload(m, e);
}

/* ---- parse (structure) ------------------------------------------------------- */

static int truncated(pd_err *e, const char *what)
{
	return pd_err_set(e, PD_E_MALFORMED, "%s: payload truncated", what);
}

static int nonzero_reserved(pd_err *e, const char *what)
{
	return pd_err_set(e, PD_E_MALFORMED, "%s: reserved field not zero", what);
}

static int parse_hello(pd_frd *r, pd_msg_hello *m, pd_err *e)
{
	uint32_t magic;

	if (!pd_frd_u32(r, &magic))
		return truncated(e, "HELLO");
	if (magic != PD_PROTO_MAGIC)
		return pd_err_set(e, PD_E_PROTO, "bad magic 0x%08x", magic);
	if (!pd_frd_u16(r, &m->min_version) || !pd_frd_u16(r, &m->max_version) ||
	    !pd_frd_u32(r, &m->max_frame) || !pd_frd_str(r, &m->client_name) ||
	    !pd_frd_str(r, &m->token))
		return truncated(e, "HELLO");
	return PD_OK;
}

static int parse_hello_ok(pd_frd *r, pd_msg_hello_ok *m, pd_err *e)
{
	uint8_t rsv;

	if (!pd_frd_u16(r, &m->version) || !pd_frd_u8(r, &m->role) || !pd_frd_u8(r, &rsv) ||
	    !pd_frd_u32(r, &m->max_frame) || !pd_frd_u32(r, &m->max_inflight) ||
	    !pd_frd_u64(r, &m->max_profile_bytes) || !pd_frd_u32(r, &m->keepalive_ms) ||
	    !pd_frd_u32(r, &m->idle_timeout_ms) || !pd_frd_u32(r, &m->request_timeout_ms) ||
	    !pd_frd_str(r, &m->tenant) || !pd_frd_str(r, &m->server_name))
		return truncated(e, "HELLO_OK");
	return rsv ? nonzero_reserved(e, "HELLO_OK") : PD_OK;
}

static int parse_goodbye(pd_frd *r, pd_msg_goodbye *m, pd_err *e)
{
	if (!pd_frd_u16(r, &m->reason) || !pd_frd_str(r, &m->message))
		return truncated(e, "GOODBYE");
	return PD_OK;
}

static int parse_error(pd_frd *r, pd_msg_error *m, pd_err *e)
{
	if (!pd_frd_u16(r, &m->code) || !pd_frd_u8(r, &m->retryable) || !pd_frd_u8(r, &m->detail) ||
	    !pd_frd_u64(r, &m->value) || !pd_frd_str(r, &m->message))
		return truncated(e, "ERROR");
	return PD_OK;
}

static int parse_begin(pd_frd *r, pd_msg_delta_begin *m, unsigned flags, pd_err *e)
{
	uint8_t rsv;

	if (!pd_frd_u64(r, &m->seq) || !pd_frd_u64(r, &m->incarnation) ||
	    !pd_frd_u64(r, &m->producer_start_ns) || !pd_frd_u8(r, &m->first_policy) ||
	    !pd_frd_u8(r, &rsv) || !pd_frd_u16(r, &m->n_overrides) || !pd_frd_str(r, &m->stream))
		return truncated(e, "DELTA_BEGIN");
	if (rsv)
		return nonzero_reserved(e, "DELTA_BEGIN");
	/* Bound the count before filling the fixed array. */
	if (m->n_overrides > PD_MAX_OVERRIDES)
		return pd_err_set(e, PD_E_LIMIT, "%u policy overrides, max %d", m->n_overrides,
				  PD_MAX_OVERRIDES);
	for (unsigned i = 0; i < m->n_overrides; i++)
		if (!pd_frd_str(r, &m->overrides[i].name) || !pd_frd_u8(r, &m->overrides[i].policy))
			return truncated(e, "DELTA_BEGIN");
	m->after_seq = 0;
	if ((flags & PD_FLAG_BEGIN_AFTER) && !pd_frd_u64(r, &m->after_seq))
		return truncated(e, "DELTA_BEGIN");
	return PD_OK;
}

static int parse_admin(pd_frd *r, pd_msg_admin *m, pd_err *e)
{
	if (!pd_frd_str(r, &m->command) || !pd_frd_u16(r, &m->n_args))
		return truncated(e, "ADMIN");
	if (m->n_args > PD_MAX_ADMIN_ARGS)
		return pd_err_set(e, PD_E_LIMIT, "%u admin args, max %d", m->n_args,
				  PD_MAX_ADMIN_ARGS);
	for (unsigned i = 0; i < m->n_args; i++)
		if (!pd_frd_str(r, &m->args[i].key) || !pd_frd_str(r, &m->args[i].value))
			return truncated(e, "ADMIN");
	return PD_OK;
}

static int parse_result(pd_frd *r, pd_msg_result *m, pd_err *e)
{
	uint8_t rsv;

	if (!pd_frd_u8(r, &m->status) || !pd_frd_u8(r, &m->reason) ||
	    !pd_frd_u8(r, &m->orig_status) || !pd_frd_u8(r, &rsv) || !pd_frd_u64(r, &m->seq) ||
	    !pd_frd_u64(r, &m->samples_in) || !pd_frd_u64(r, &m->samples_out) || !pd_frd_u64(r, &m->output_bytes))
		return truncated(e, "RESULT");
	return rsv ? nonzero_reserved(e, "RESULT") : PD_OK;
}

static int parse_admin_result(pd_frd *r, pd_msg_admin_result *m, pd_err *e)
{
	uint8_t rsv[3];

	if (!pd_frd_u8(r, &m->format) || !pd_frd_u8(r, &rsv[0]) || !pd_frd_u8(r, &rsv[1]) ||
	    !pd_frd_u8(r, &rsv[2]) || !pd_frd_u64(r, &m->total_bytes))
		return truncated(e, "ADMIN_RESULT");
	return (rsv[0] | rsv[1] | rsv[2]) ? nonzero_reserved(e, "ADMIN_RESULT") : PD_OK;
}

static int parse_data_end(pd_frd *r, pd_msg_data_end *m, pd_err *e)
{
	const uint8_t *h;

	if (!pd_frd_u64(r, &m->total_bytes) || !pd_frd_bytes(r, PD_CONTENT_HASH_LEN, &h))
		return truncated(e, "DATA_END");
	memcpy(m->hash, h, PD_CONTENT_HASH_LEN);
	return PD_OK;
}

static int parse_payload(pd_frd *r, pd_msg *m, pd_err *e)
{
	switch (m->type) {
	case PD_FT_HELLO:
		return parse_hello(r, &m->u.hello, e);
	case PD_FT_HELLO_OK:
		return parse_hello_ok(r, &m->u.hello_ok, e);
	case PD_FT_PING:
	case PD_FT_PONG:
		return pd_frd_u64(r, &m->u.ping.opaque) ? PD_OK : truncated(e, "PING");
	case PD_FT_GOODBYE:
		return parse_goodbye(r, &m->u.goodbye, e);
	case PD_FT_ERROR:
		return parse_error(r, &m->u.error, e);
	case PD_FT_DELTA_BEGIN:
		return parse_begin(r, &m->u.begin, m->flags, e);
	case PD_FT_DATA:
	case PD_FT_RESULT_DATA:
		m->u.data.len = pd_frd_left(r);
		return pd_frd_bytes(r, m->u.data.len, &m->u.data.p) ? PD_OK : truncated(e, "DATA");
	case PD_FT_DATA_END:
		return parse_data_end(r, &m->u.data_end, e);
	case PD_FT_ADMIN:
		return parse_admin(r, &m->u.admin, e);
	case PD_FT_RESULT:
		return parse_result(r, &m->u.result, e);
	case PD_FT_RESULT_END:
		if (!pd_frd_u64(r, &m->u.result_end.total_bytes) ||
		    !pd_frd_u32(r, &m->u.result_end.crc32))
			return truncated(e, "RESULT_END");
		return PD_OK;
	case PD_FT_ADMIN_RESULT:
		return parse_admin_result(r, &m->u.admin_result, e);
	default: /* CANCEL: nothing */
		return PD_OK;
	}
}

int pd_msg_decode(const pd_frame_hdr *h, const uint8_t *payload, pd_msg *m, pd_err *e)
{
	pd_frd r;
	int rc;

	/* The caller should have checked it; checking again is cheap and makes
	 * this function safe on its own. */
	rc = pd_frame_hdr_check(h, PD_FRAME_MAX_ABS, e);
	if (rc)
		return rc;
	m->type = h->type;
	m->flags = h->flags;
	m->request_id = h->request_id;
	pd_frd_init(&r, payload, h->len);
	rc = parse_payload(&r, m, e);
	if (rc)
		return rc;
	if (pd_frd_left(&r))
		return pd_err_set(e, PD_E_MALFORMED, "%s: %zu trailing bytes",
				  pd_frame_type_name(m->type), pd_frd_left(&r));
	return check_payload(m, e);
}

int pd_frame_decode(const uint8_t *p, size_t n, uint32_t max_payload, pd_msg *m, size_t *used,
		    pd_err *e)
{
	pd_frame_hdr h;
	int rc;

	rc = pd_frame_hdr_decode(p, n, &h, max_payload, e);
	if (rc)
		return rc;
	if (n - PD_FRAME_HDR_LEN < h.len)
		return PD_FRAME_NEED_MORE;
	rc = pd_msg_decode(&h, p + PD_FRAME_HDR_LEN, m, e);
	if (rc)
		return rc;
	*used = PD_FRAME_HDR_LEN + (size_t)h.len;
	return PD_OK;
}

/* ---- encode -------------------------------------------------------------------- */

int pd_fwr_begin(pd_fwr *w, pd_buf *b, size_t n, pd_err *e)
{
	int rc = pd_buf_reserve(b, n, e);

	if (rc)
		return rc;
	w->p = b->data + b->len;
	w->cap = n;
	w->pos = 0;
	w->overflow = false;
	return PD_OK;
}

int pd_fwr_commit(pd_fwr *w, pd_buf *b, pd_err *e)
{
	if (w->overflow || w->pos != w->cap)
		return pd_err_set(e, PD_E_INTERNAL, "frame writer: wrote %zu of %zu bytes%s",
				  w->pos, w->cap, w->overflow ? " (overflow)" : "");
	b->len += w->cap;
	return PD_OK;
}

void pd_fwr_bytes(pd_fwr *w, const void *p, size_t n)
{
	if (n > w->cap - w->pos) {
		w->overflow = true;
		return;
	}
	if (n)
		memcpy(w->p + w->pos, p, n);
	w->pos += n;
}

void pd_fwr_u8(pd_fwr *w, uint8_t v) { pd_fwr_bytes(w, &v, 1); }

void pd_fwr_u16(pd_fwr *w, uint16_t v)
{
	uint8_t b[2] = {(uint8_t)(v >> 8), (uint8_t)v};
	pd_fwr_bytes(w, b, 2);
}

void pd_fwr_u32(pd_fwr *w, uint32_t v)
{
	uint8_t b[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
	pd_fwr_bytes(w, b, 4);
}

void pd_fwr_u64(pd_fwr *w, uint64_t v)
{
	pd_fwr_u32(w, (uint32_t)(v >> 32));
	pd_fwr_u32(w, (uint32_t)v);
}

void pd_fwr_str(pd_fwr *w, const pd_str *s)
{
	if (s->len > UINT16_MAX) {
		w->overflow = true;
		return;
	}
	pd_fwr_u16(w, (uint16_t)s->len);
	pd_fwr_bytes(w, s->p, s->len);
}

size_t pd_msg_payload_len(const pd_msg *m)
{
	size_t n = 0;

	switch (m->type) {
	case PD_FT_HELLO:
		return HELLO_FIXED + S_ + m->u.hello.client_name.len + S_ + m->u.hello.token.len;
	case PD_FT_HELLO_OK:
		return HELLO_OK_FIXED + S_ + m->u.hello_ok.tenant.len + S_ +
		       m->u.hello_ok.server_name.len;
	case PD_FT_PING:
	case PD_FT_PONG:
		return 8;
	case PD_FT_GOODBYE:
		return 2 + S_ + m->u.goodbye.message.len;
	case PD_FT_ERROR:
		return ERROR_FIXED + S_ + m->u.error.message.len;
	case PD_FT_DELTA_BEGIN:
		for (unsigned i = 0; i < m->u.begin.n_overrides && i < PD_MAX_OVERRIDES; i++)
			n += S_ + m->u.begin.overrides[i].name.len + 1;
		if (m->flags & PD_FLAG_BEGIN_AFTER)
			n += 8;
		return BEGIN_FIXED + S_ + m->u.begin.stream.len + n;
	case PD_FT_DATA:
	case PD_FT_RESULT_DATA:
		return m->u.data.len;
	case PD_FT_DATA_END:
		return 8 + PD_CONTENT_HASH_LEN;
	case PD_FT_ADMIN:
		for (unsigned i = 0; i < m->u.admin.n_args && i < PD_MAX_ADMIN_ARGS; i++)
			n += S_ + m->u.admin.args[i].key.len + S_ + m->u.admin.args[i].value.len;
		return S_ + m->u.admin.command.len + 2 + n;
	case PD_FT_RESULT:
		return 36;
	case PD_FT_RESULT_END:
	case PD_FT_ADMIN_RESULT:
		return 12;
	default: /* CANCEL */
		return 0;
	}
}

static void put_hello(pd_fwr *w, const pd_msg_hello *m)
{
	pd_fwr_u32(w, PD_PROTO_MAGIC);
	pd_fwr_u16(w, m->min_version);
	pd_fwr_u16(w, m->max_version);
	pd_fwr_u32(w, m->max_frame);
	pd_fwr_str(w, &m->client_name);
	pd_fwr_str(w, &m->token);
}

static void put_hello_ok(pd_fwr *w, const pd_msg_hello_ok *m)
{
	pd_fwr_u16(w, m->version);
	pd_fwr_u8(w, m->role);
	pd_fwr_u8(w, 0);
	pd_fwr_u32(w, m->max_frame);
	pd_fwr_u32(w, m->max_inflight);
	pd_fwr_u64(w, m->max_profile_bytes);
	pd_fwr_u32(w, m->keepalive_ms);
	pd_fwr_u32(w, m->idle_timeout_ms);
	pd_fwr_u32(w, m->request_timeout_ms);
	pd_fwr_str(w, &m->tenant);
	pd_fwr_str(w, &m->server_name);
}

static void put_error(pd_fwr *w, const pd_msg_error *m)
{
	pd_fwr_u16(w, m->code);
	pd_fwr_u8(w, m->retryable);
	pd_fwr_u8(w, m->detail);
	pd_fwr_u64(w, m->value);
	pd_fwr_str(w, &m->message);
}

static void put_begin(pd_fwr *w, const pd_msg_delta_begin *m, unsigned flags)
{
	pd_fwr_u64(w, m->seq);
	pd_fwr_u64(w, m->incarnation);
	pd_fwr_u64(w, m->producer_start_ns);
	pd_fwr_u8(w, m->first_policy);
	pd_fwr_u8(w, 0);
	pd_fwr_u16(w, m->n_overrides);
	pd_fwr_str(w, &m->stream);
	for (unsigned i = 0; i < m->n_overrides; i++) {
		pd_fwr_str(w, &m->overrides[i].name);
		pd_fwr_u8(w, m->overrides[i].policy);
	}
	if (flags & PD_FLAG_BEGIN_AFTER)
		pd_fwr_u64(w, m->after_seq);
}

static void put_admin(pd_fwr *w, const pd_msg_admin *m)
{
	pd_fwr_str(w, &m->command);
	pd_fwr_u16(w, m->n_args);
	for (unsigned i = 0; i < m->n_args; i++) {
		pd_fwr_str(w, &m->args[i].key);
		pd_fwr_str(w, &m->args[i].value);
	}
}

static void put_result(pd_fwr *w, const pd_msg_result *m)
{
	pd_fwr_u8(w, m->status);
	pd_fwr_u8(w, m->reason);
	pd_fwr_u8(w, m->orig_status);
	pd_fwr_u8(w, 0);
	pd_fwr_u64(w, m->seq);
	pd_fwr_u64(w, m->samples_in);
	pd_fwr_u64(w, m->samples_out);
	pd_fwr_u64(w, m->output_bytes);
}

static void put_payload(pd_fwr *w, const pd_msg *m)
{
	switch (m->type) {
	case PD_FT_HELLO:
		put_hello(w, &m->u.hello);
		break;
	case PD_FT_HELLO_OK:
		put_hello_ok(w, &m->u.hello_ok);
		break;
	case PD_FT_PING:
	case PD_FT_PONG:
		pd_fwr_u64(w, m->u.ping.opaque);
		break;
	case PD_FT_GOODBYE:
		pd_fwr_u16(w, m->u.goodbye.reason);
		pd_fwr_str(w, &m->u.goodbye.message);
		break;
	case PD_FT_ERROR:
		put_error(w, &m->u.error);
		break;
	case PD_FT_DELTA_BEGIN:
		put_begin(w, &m->u.begin, m->flags);
		break;
	case PD_FT_DATA:
	case PD_FT_RESULT_DATA:
		pd_fwr_bytes(w, m->u.data.p, m->u.data.len);
		break;
	case PD_FT_DATA_END:
		pd_fwr_u64(w, m->u.data_end.total_bytes);
		pd_fwr_bytes(w, m->u.data_end.hash, PD_CONTENT_HASH_LEN);
		break;
	case PD_FT_ADMIN:
		put_admin(w, &m->u.admin);
		break;
	case PD_FT_RESULT:
		put_result(w, &m->u.result);
		break;
	case PD_FT_RESULT_END:
		pd_fwr_u64(w, m->u.result_end.total_bytes);
		pd_fwr_u32(w, m->u.result_end.crc32);
		break;
	case PD_FT_ADMIN_RESULT:
		pd_fwr_u8(w, m->u.admin_result.format);
		pd_fwr_bytes(w, "\0\0\0", 3);
		pd_fwr_u64(w, m->u.admin_result.total_bytes);
		break;
	default: /* CANCEL */
		break;
	}
}

/* An invalid message handed to the encoder is the caller's bad argument. */
static int as_arg_error(int rc, pd_err *e)
{
	if (rc != PD_E_MALFORMED && rc != PD_E_PROTO)
		return rc;
	if (e)
		e->code = PD_E_ARG;
	return PD_E_ARG;
}

int pd_msg_encode(pd_buf *out, const pd_msg *m, pd_err *e)
{
	pd_frame_hdr h;
	uint8_t hb[PD_FRAME_HDR_LEN];
	size_t len;
	pd_fwr w;
	int rc;

	rc = pd_msg_check(m, e);
	if (rc)
		return as_arg_error(rc, e);
	len = pd_msg_payload_len(m);
	h = (pd_frame_hdr){(uint32_t)len, m->type, m->flags, 0, m->request_id};
	rc = pd_frame_hdr_check(&h, PD_FRAME_MAX_ABS, e);
	if (rc)
		return as_arg_error(rc, e);
	rc = pd_fwr_begin(&w, out, PD_FRAME_HDR_LEN + len, e);
	if (rc)
		return rc;
	pd_frame_hdr_encode(hb, &h);
	pd_fwr_bytes(&w, hb, sizeof hb);
	put_payload(&w, m);
	return pd_fwr_commit(&w, out, e);
}

/* ---- equality ---------------------------------------------------------------- */

static bool hello_eq(const pd_msg_hello *a, const pd_msg_hello *b)
{
	return a->min_version == b->min_version && a->max_version == b->max_version &&
	       a->max_frame == b->max_frame && str_eq(&a->client_name, &b->client_name) &&
	       str_eq(&a->token, &b->token);
}

static bool hello_ok_eq(const pd_msg_hello_ok *a, const pd_msg_hello_ok *b)
{
	return a->version == b->version && a->role == b->role && a->max_frame == b->max_frame &&
	       a->max_inflight == b->max_inflight && a->max_profile_bytes == b->max_profile_bytes &&
	       a->keepalive_ms == b->keepalive_ms && a->idle_timeout_ms == b->idle_timeout_ms &&
	       a->request_timeout_ms == b->request_timeout_ms && str_eq(&a->tenant, &b->tenant) &&
	       str_eq(&a->server_name, &b->server_name);
}

static bool error_eq(const pd_msg_error *a, const pd_msg_error *b)
{
	return a->code == b->code && a->retryable == b->retryable && a->detail == b->detail &&
	       a->value == b->value && str_eq(&a->message, &b->message);
}

static bool begin_eq(const pd_msg_delta_begin *a, const pd_msg_delta_begin *b)
{
	if (a->seq != b->seq || a->incarnation != b->incarnation ||
	    a->producer_start_ns != b->producer_start_ns || a->first_policy != b->first_policy ||
	    !str_eq(&a->stream, &b->stream) || a->n_overrides != b->n_overrides ||
	    a->after_seq != b->after_seq)
		return false;
	for (unsigned i = 0; i < a->n_overrides && i < PD_MAX_OVERRIDES; i++)
		if (!str_eq(&a->overrides[i].name, &b->overrides[i].name) ||
		    a->overrides[i].policy != b->overrides[i].policy)
			return false;
	return true;
}

static bool admin_eq(const pd_msg_admin *a, const pd_msg_admin *b)
{
	if (!str_eq(&a->command, &b->command) || a->n_args != b->n_args)
		return false;
	for (unsigned i = 0; i < a->n_args && i < PD_MAX_ADMIN_ARGS; i++)
		if (!str_eq(&a->args[i].key, &b->args[i].key) ||
		    !str_eq(&a->args[i].value, &b->args[i].value))
			return false;
	return true;
}

static bool result_eq(const pd_msg_result *a, const pd_msg_result *b)
{
	return a->status == b->status && a->reason == b->reason &&
	       a->orig_status == b->orig_status && a->seq == b->seq &&
	       a->samples_in == b->samples_in && a->samples_out == b->samples_out &&
	       a->output_bytes == b->output_bytes;
}

static bool bytes_eq(const pd_bytes *a, const pd_bytes *b)
{
	return a->len == b->len && (a->len == 0 || memcmp(a->p, b->p, a->len) == 0);
}

static bool payload_eq(const pd_msg *a, const pd_msg *b)
{
	const pd_msg_goodbye *ga = &a->u.goodbye, *gb = &b->u.goodbye;

	switch (a->type) {
	case PD_FT_HELLO:
		return hello_eq(&a->u.hello, &b->u.hello);
	case PD_FT_HELLO_OK:
		return hello_ok_eq(&a->u.hello_ok, &b->u.hello_ok);
	case PD_FT_PING:
	case PD_FT_PONG:
		return a->u.ping.opaque == b->u.ping.opaque;
	case PD_FT_GOODBYE:
		return ga->reason == gb->reason && str_eq(&ga->message, &gb->message);
	case PD_FT_ERROR:
		return error_eq(&a->u.error, &b->u.error);
	case PD_FT_DELTA_BEGIN:
		return begin_eq(&a->u.begin, &b->u.begin);
	case PD_FT_DATA:
	case PD_FT_RESULT_DATA:
		return bytes_eq(&a->u.data, &b->u.data);
	case PD_FT_DATA_END:
		return a->u.data_end.total_bytes == b->u.data_end.total_bytes &&
		       memcmp(a->u.data_end.hash, b->u.data_end.hash, PD_CONTENT_HASH_LEN) == 0;
	case PD_FT_ADMIN:
		return admin_eq(&a->u.admin, &b->u.admin);
	case PD_FT_RESULT:
		return result_eq(&a->u.result, &b->u.result);
	case PD_FT_RESULT_END:
		return a->u.result_end.total_bytes == b->u.result_end.total_bytes &&
		       a->u.result_end.crc32 == b->u.result_end.crc32;
	case PD_FT_ADMIN_RESULT:
		return a->u.admin_result.format == b->u.admin_result.format &&
		       a->u.admin_result.total_bytes == b->u.admin_result.total_bytes;
	default:
		return true;
	}
}

bool pd_msg_equal(const pd_msg *a, const pd_msg *b)
{
	if (a->type != b->type || a->flags != b->flags || a->request_id != b->request_id)
		return false;
	return payload_eq(a, b);
}

int pd_proto_choose_version(unsigned a_min, unsigned a_max, unsigned b_min, unsigned b_max)
{
	unsigned lo = a_min > b_min ? a_min : b_min;
	unsigned hi = a_max < b_max ? a_max : b_max;

	return lo <= hi ? (int)hi : 0;
}
