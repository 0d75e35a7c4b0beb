/*
 * pdl_admin: ADMIN commands (PROTOCOL.md §11) for pdeltactl and other
 * tools: ADMIN -> ADMIN_RESULT, RESULT_DATA*, RESULT_END (CRC-checked) or
 * ERROR. Read-only commands (streams, stream, stats, tenants) are retried
 * like delta requests; reset and delete are retried only when they never
 * reached the server (a retry after an applied reset would say not-found).
 */
#include <stdlib.h>
#include <string.h>

#include "pd_crc.h"
#include "pdl_internal.h"

static int read_only(const char *cmd)
{
	return strcmp(cmd, "streams") == 0 || strcmp(cmd, "stream") == 0 ||
	       strcmp(cmd, "stats") == 0 || strcmp(cmd, "tenants") == 0;
}

static int build(pdelta *h, pd_msg *m, const char *cmd, const char *const *kv)
{
	pd_err e = {0, ""};
	size_t n = 0;

	memset(m, 0, sizeof *m);
	m->type = PD_FT_ADMIN;
	m->request_id = 1; /* placeholder for the check; set per attempt */
	m->u.admin.command = pd_str_c(cmd);
	for (; kv && kv[0]; kv += 2) {
		if (!kv[1])
			return pdl_fail(h, PDELTA_E_ARG, 0, "admin argument '%s' has no value", kv[0]);
		if (n >= PD_MAX_ADMIN_ARGS)
			return pdl_fail(h, PDELTA_E_ARG, 0, "more than %d admin arguments", PD_MAX_ADMIN_ARGS);
		m->u.admin.args[n].key = pd_str_c(kv[0]);
		m->u.admin.args[n].value = pd_str_c(kv[1]);
		n++;
	}
	m->u.admin.n_args = (uint16_t)n;
	if (pd_msg_check(m, &e))
		return pdl_fail(h, PDELTA_E_ARG, 0, "admin command: %s", e.msg);
	return PDELTA_OK;
}

/* Frames of one admin answer; *done when RESULT_END was verified. */
static int read_answer(pdelta *h, uint32_t id, pd_buf *body, int *terminal)
{
	uint32_t crc = 0;
	int got_head = 0, rc;
	pd_msg m;

	for (;;) {
		if ((rc = pdl_next_frame(h, 1, &m)))
			return rc;
		if (m.request_id != id)
			return pdl_proto_violation(h, "%s for request %u, expected %u",
						   pd_frame_type_name(m.type), m.request_id, id);
		if (m.type == PD_FT_ERROR) {
			*terminal = 1;
			return pdl_fail_server(h, &m.u.error);
		}
		if (m.type == PD_FT_ADMIN_RESULT && !got_head) {
			got_head = 1;
			continue;
		}
		if (m.type == PD_FT_RESULT_DATA && got_head) {
			crc = pd_crc32(crc, m.u.data.p, m.u.data.len);
			if (pd_buf_append(body, m.u.data.p, m.u.data.len, NULL))
				return pdl_fail(h, PDELTA_E_LIMIT, 0, "admin answer larger than %u bytes",
						PDL_ADMIN_MAX_BODY);
			continue;
		}
		if (m.type == PD_FT_RESULT_END && got_head) {
			*terminal = 1;
			if (m.u.result_end.total_bytes == body->len && m.u.result_end.crc32 == crc)
				return PDELTA_OK;
			pdl_conn_abort_proto(h);
			return pdl_fail(h, PDELTA_E_PROTO, 1, "admin answer failed its length/CRC check");
		}
		return pdl_proto_violation(h, "unexpected %s in an admin answer",
					   pd_frame_type_name(m.type));
	}
}

static int attempt(pdelta *h, pd_msg *m, pd_buf *body, int *sent)
{
	int rc, terminal = 0;

	*sent = 0;
	pd_buf_reset(body);
	if ((rc = pdl_nodes_try(h)))
		return rc;
	m->request_id = pdl_new_id(h);
	if ((rc = pdl_send_msg(h, m)))
		return rc;
	*sent = 1;
	if ((rc = pdl_flush(h)))
		return rc;
	rc = read_answer(h, m->request_id, body, &terminal);
	if (rc && !terminal && pdl_connected(h))
		pdl_conn_close(h, 1);
	return rc;
}

/* A command that names a stream goes to that stream's node (the tenant
 * given, else ours); the others (listings) to any node: with a shared store
 * every node answers for the whole fleet. */
static void route_by(pdelta *h, const char *const *kv)
{
	h->route_tenant = NULL;
	h->route_stream = NULL;
	for (size_t i = 0; kv && kv[i] && kv[i + 1]; i += 2) {
		if (strcmp(kv[i], "tenant") == 0)
			h->route_tenant = kv[i + 1];
		else if (strcmp(kv[i], "name") == 0)
			h->route_stream = kv[i + 1];
	}
	if (!h->route_stream)
		h->route_tenant = NULL;
}

static int admin(pdelta *h, const char *cmd, const char *const *kv, pd_buf *body)
{
	unsigned attempts = 1;
	int rc, sent;
	pd_msg m;

	if (!h->server)
		return pdl_fail(h, PDELTA_E_ARG, 0, "admin commands need a server (this handle is local)");
	if (h->r.phase == PDL_UPLOAD || h->r.phase == PDL_BODY)
		return pdl_fail(h, PDELTA_E_ARG, 0, "a delta request is open on this handle");
	if (!cmd || (rc = build(h, &m, cmd, kv)))
		return cmd ? rc : pdl_fail(h, PDELTA_E_ARG, 0, "no admin command");
	route_by(h, kv);
	for (;;) {
		rc = attempt(h, &m, body, &sent);
		if (!rc || !h->err.retryable || attempts >= h->o.max_attempts)
			return rc;
		if (sent && !read_only(cmd))
			return rc;
		attempts++;
		h->stats.retries++;
		pdl_backoff(h, attempts, 0);
	}
}

int pdelta_admin(pdelta *h, const char *command, const char *const *kv, char **json, size_t *len)
{
	pdl_sigpipe g;
	pd_buf body;
	int rc;

	*json = NULL;
	*len = 0;
	pd_buf_init(&body, PDL_ADMIN_MAX_BODY + 1);
	pdl_sigpipe_block(&g);
	pdl_fork_check(h);
	pdl_clear_error(h);
	rc = admin(h, command, kv, &body);
	h->route_tenant = h->route_stream = NULL; /* they point into kv */
	if (!rc && pd_buf_append(&body, "", 1, NULL))
		rc = pdl_fail(h, PDELTA_E_NOMEM, 1, "out of memory");
	pdl_sigpipe_restore(&g);
	if (rc) {
		pd_buf_free(&body);
		return rc;
	}
	*json = (char *)body.data;
	*len = body.len - 1;
	return PDELTA_OK;
}
