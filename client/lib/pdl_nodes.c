/*
 * pdl_nodes: the server list of a handle. o.server is "H:P" (one node, as
 * always), "H1:P1,H2:P2,..." or a lone name whose resolver answer has
 * several addresses of one family (re-resolved every PDL_DNS_REFRESH_MS).
 *
 * Each stream goes to the node with the highest rendezvous weight for
 * tenant + stream (pd_route.c), so the server's cache for it stays warm. A
 * node that refuses or times out a connection, or said GOODBYE SHUTDOWN
 * (draining), is down: its streams take the next node in their own order,
 * and the node is probed again after a backoff (PDL_PROBE_BASE_MS doubling
 * to PDL_PROBE_MAX_MS, jittered); once it answers, its streams come back.
 * Requests keep their sequence numbers and content hashes across nodes, so
 * a retry on another node of a request the first one committed is a
 * DUPLICATE on a shared store.
 *
 * One connection per node, opened lazily: the current node's lives in the
 * handle (pdl_conn.c works on it unchanged), the others are parked byte for
 * byte in pdl_node.link; at most PD_ROUTE_MAX_NODES of them.
 */
#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <unistd.h>

#include "pdl_internal.h"

#define PDL_PROBE_BASE_MS 500u
#define PDL_PROBE_MAX_MS 10000u
#define PDL_DNS_REFRESH_MS 30000u

static unsigned char *link_of(pdelta *h) { return (unsigned char *)&h->fd; }

/* Parks the handle's connection in its node and takes node j's. */
static void switch_to(pdelta *h, size_t j)
{
	if (j != h->cur) {
		memcpy(h->nodes[h->cur].link, link_of(h), PDL_LINK_SIZE);
		memcpy(link_of(h), h->nodes[j].link, PDL_LINK_SIZE);
		h->cur = j;
	}
	h->host = h->nodes[j].addr.host;
	h->port = h->nodes[j].addr.port;
	h->peer = h->nodes[j].addr.id;
}

/* Ends the connection in the handle and frees its buffers; the handle then
 * holds a blank link. */
static void discard_link(pdelta *h, int graceful)
{
	if (graceful)
		pdl_conn_close(h, 1);
	else
		pdl_conn_forget(h);
	pd_buf_free(&h->wbuf);
	pd_buf_free(&h->rbuf);
	pd_buf_free(&h->dbuf);
	memcpy(link_of(h), h->blank_link, PDL_LINK_SIZE);
}

/* Closes every connection, the handle's included; the handle keeps a blank link. */
static void close_all(pdelta *h, int graceful)
{
	if (!h->nodes)
		return;
	memcpy(h->nodes[h->cur].link, link_of(h), PDL_LINK_SIZE);
	for (size_t i = 0; i < h->nnodes; i++) {
		memcpy(link_of(h), h->nodes[i].link, PDL_LINK_SIZE);
		discard_link(h, graceful);
	}
}

static void free_table(pdl_node *nodes, size_t n)
{
	for (size_t i = 0; nodes && i < n; i++)
		free(nodes[i].link);
	free(nodes);
}

/* A table of n nodes with blank links, the connections of old nodes with the
 * same id carried over (old's links must be parked: h holds none of them). */
static int build_table(pdelta *h, const pd_route_node *addrs, size_t n)
{
	pdl_node *nodes = calloc(n, sizeof *nodes);

	if (!nodes)
		return -1;
	for (size_t i = 0; i < n; i++) {
		if (!(nodes[i].link = malloc(PDL_LINK_SIZE))) {
			free_table(nodes, n);
			return -1;
		}
	}
	for (size_t i = 0; i < n; i++) {
		nodes[i].addr = addrs[i];
		memcpy(nodes[i].link, h->blank_link, PDL_LINK_SIZE);
		for (size_t k = 0; k < h->nnodes; k++)
			if (h->nodes[k].link && strcmp(h->nodes[k].addr.id, addrs[i].id) == 0) {
				memcpy(nodes[i].link, h->nodes[k].link, PDL_LINK_SIZE);
				nodes[i].fails = h->nodes[k].fails;
				nodes[i].retry_ms = h->nodes[k].retry_ms;
				free(h->nodes[k].link);
				h->nodes[k].link = NULL;
			}
	}
	/* the old nodes that left: their connections end */
	for (size_t k = 0; k < h->nnodes; k++)
		if (h->nodes[k].link) {
			memcpy(link_of(h), h->nodes[k].link, PDL_LINK_SIZE);
			discard_link(h, 1);
		}
	free_table(h->nodes, h->nnodes);
	h->nodes = nodes;
	h->nnodes = n;
	h->cur = 0;
	memcpy(link_of(h), nodes[0].link, PDL_LINK_SIZE);
	switch_to(h, 0);
	return 0;
}

/* The addresses of h->dns_name as nodes; *n = 0 when it is one node. */
static int resolve(pdelta *h, pd_route_node *out, size_t *n, char *err, size_t errlen)
{
	struct addrinfo hints, *res = NULL, *ai;
	char text[PD_ROUTE_MAX_NODES * 2][64];
	const char *addrs[PD_ROUTE_MAX_NODES * 2];
	size_t na = 0;
	int gai, rc;

	*n = 0;
	memset(&hints, 0, sizeof hints);
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	gai = getaddrinfo(h->dns_name, h->nodes[0].addr.port, &hints, &res);
	if (gai != 0) {
		snprintf(err, errlen, "resolving %s: %s", h->dns_name, gai_strerror(gai));
		return -1;
	}
	for (ai = res; ai && na < PD_ROUTE_MAX_NODES * 2; ai = ai->ai_next) {
		const void *a = ai->ai_family == AF_INET
					? (const void *)&((struct sockaddr_in *)ai->ai_addr)->sin_addr
					: (const void *)&((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr;
		if ((ai->ai_family == AF_INET || ai->ai_family == AF_INET6) &&
		    inet_ntop(ai->ai_family, a, text[na], sizeof text[na]))
			addrs[na] = text[na], na++;
	}
	freeaddrinfo(res);
	rc = pd_route_from_addrs(addrs, na, h->nodes[0].addr.port, out, PD_ROUTE_MAX_NODES, n, err,
				 errlen);
	return rc;
}

/* Re-resolves a lone name when due; the table changes only when the set of
 * addresses did (a failed resolution keeps the nodes we have). */
static void refresh_dns(pdelta *h)
{
	pd_route_node addrs[PD_ROUTE_MAX_NODES], one;
	char err[256];
	size_t n, same = 0;
	uint64_t now = pdl_now_ms();

	if (!h->dns_name || now < h->dns_next_ms)
		return;
	h->dns_next_ms = now + PDL_DNS_REFRESH_MS;
	if (resolve(h, addrs, &n, err, sizeof err))
		return;
	if (n == 0) {
		/* one address: the name itself is the node, as without a list */
		one = h->nodes[0].addr;
		snprintf(one.host, sizeof one.host, "%s", h->dns_name);
		snprintf(one.id, sizeof one.id, "%s:%s", one.host, one.port);
		addrs[0] = one;
		n = 1;
	}
	for (size_t i = 0; i < n && n == h->nnodes; i++)
		same += strcmp(addrs[i].id, h->nodes[i].addr.id) == 0;
	if (same == n && n == h->nnodes)
		return;
	memcpy(h->nodes[h->cur].link, link_of(h), PDL_LINK_SIZE);
	if (build_table(h, addrs, n))
		memcpy(link_of(h), h->nodes[h->cur].link, PDL_LINK_SIZE); /* keep the old table */
}

static int is_numeric(const char *host)
{
	unsigned char a[16];
	return inet_pton(AF_INET, host, a) == 1 || inet_pton(AF_INET6, host, a) == 1;
}

int pdl_nodes_setup(pdelta *h, char *err, size_t errlen)
{
	pd_route_node addrs[PD_ROUTE_MAX_NODES];
	size_t n;

	if (pd_route_parse(h->server, addrs, PD_ROUTE_MAX_NODES, &n, err, errlen))
		return PDELTA_E_ARG;
	if (!(h->blank_link = malloc(PDL_LINK_SIZE)))
		goto nomem;
	memcpy(h->blank_link, link_of(h), PDL_LINK_SIZE);
	if (build_table(h, addrs, n))
		goto nomem;
	if (n == 1 && !is_numeric(addrs[0].host)) {
		/* the certificate names the name, not the addresses it resolves to */
		if (!(h->dns_name = strdup(addrs[0].host)) ||
		    (!h->verify_host && !(h->verify_host = strdup(addrs[0].host))))
			goto nomem;
		refresh_dns(h);
	}
	return PDELTA_OK;
nomem:
	snprintf(err, errlen, "out of memory");
	return PDELTA_E_NOMEM;
}

static void mark_down(pdelta *h, pdl_node *nd)
{
	nd->fails++;
	nd->retry_ms = pdl_now_ms() +
		       pdl_backoff_delay(h, nd->fails + 1, PDL_PROBE_BASE_MS, PDL_PROBE_MAX_MS);
	if (nd->retry_ms == 0)
		nd->retry_ms = 1;
}

/* One node: its open connection, or a new one. 1 = it is down or draining. */
static int try_node(pdelta *h, size_t j, int *rc)
{
	pdl_node *nd = &h->nodes[j];

	switch_to(h, j);
	if (h->ssl)
		(void)pdl_conn_usable(h); /* reads a GOODBYE that came meanwhile */
	if (h->bye_shutdown) {
		pdl_conn_close(h, 1);
		h->bye_shutdown = 0;
		mark_down(h, nd);
		*rc = pdl_fail(h, PDELTA_E_BUSY, 1, "%s is draining", h->peer);
		return 1;
	}
	*rc = pdl_conn_here(h);
	if (*rc == PDELTA_OK) {
		nd->fails = 0;
		nd->retry_ms = 0;
		return 0;
	}
	if (h->err.retryable && (*rc == PDELTA_E_IO || *rc == PDELTA_E_TIMEOUT || *rc == PDELTA_E_BUSY)) {
		mark_down(h, nd);
		return 1;
	}
	/* A node that fails the handshake itself (not TLS or wrong certificate, garbage
	 * instead of the protocol, our credentials refused: a stale tenants file) is broken
	 * for us while the others may serve: the stream moves on. With every node broken
	 * the walk ends on the last one's error. */
	if (h->nnodes > 1 && (*rc == PDELTA_E_TLS || *rc == PDELTA_E_PROTO || *rc == PDELTA_E_AUTH)) {
		mark_down(h, nd);
		return 1;
	}
	return 0;
}

/* Walks the order: first the nodes that are up or due for a probe, then (all
 * of them down) the others anyway. */
static int walk(pdelta *h, const size_t *order, int *rc)
{
	uint64_t now = pdl_now_ms();

	for (int pass = 0; pass < 2; pass++)
		for (size_t i = 0; i < h->nnodes; i++) {
			pdl_node *nd = &h->nodes[order[i]];
			int resting = nd->retry_ms && now < nd->retry_ms;
			if (resting != (pass == 1))
				continue;
			if (!try_node(h, order[i], rc))
				return *rc;
		}
	return *rc;
}

int pdl_nodes_ready(pdelta *h)
{
	size_t order[PD_ROUTE_MAX_NODES];
	const char *ids[PD_ROUTE_MAX_NODES];
	int rc = PDELTA_E_IO, knew = h->tenant_seen[0] != 0;
	const char *tenant = h->route_tenant ? h->route_tenant : h->tenant_seen;

	refresh_dns(h);
	if (h->nnodes == 1) {
		switch_to(h, 0);
		return pdl_conn_here(h);
	}
	for (size_t i = 0; i < h->nnodes; i++)
		ids[i] = h->nodes[i].addr.id;
	pd_route_order(pd_route_key(tenant, h->route_stream ? h->route_stream : ""), ids, h->nnodes,
		       order);
	rc = walk(h, order, &rc);
	if (rc || knew || h->route_tenant || !h->tenant_seen[0])
		return rc;
	/* the first connection told us our tenant: the stream's node may be another */
	return pdl_nodes_ready(h);
}

void pdl_nodes_free(pdelta *h)
{
	close_all(h, 1);
	free_table(h->nodes, h->nnodes);
	h->nodes = NULL;
	h->nnodes = 0;
	free(h->blank_link);
	h->blank_link = NULL;
	free(h->dns_name);
}

void pdl_nodes_forked(pdelta *h)
{
	for (size_t i = 0; i < h->nnodes; i++) {
		if (i == h->cur)
			continue;
		switch_to(h, i);
		pdl_conn_forget(h);
	}
}

/* ---- connecting: the one node, or the stream's node in the list ---------------- */

/* One try: on the only node, or on the stream's node in the list. */
static int conn_ready(pdelta *h)
{
	return h->nnodes > 1 || h->dns_name ? pdl_nodes_ready(h) : pdl_conn_here(h);
}

int pdl_nodes_ensure(pdelta *h)
{
	unsigned attempt = 1;
	int rc;

	for (;;) {
		rc = conn_ready(h);
		if (!rc || !h->err.retryable || attempt >= h->o.max_attempts)
			return rc;
		attempt++;
		pdl_backoff(h, attempt, 0);
	}
}

int pdl_nodes_try(pdelta *h) { return conn_ready(h); }

/* ---- after a fork ------------------------------------------------------------------ */

void pdl_fork_check(pdelta *h)
{
	pid_t me = getpid();

	if (h->pid == me)
		return;
	pdl_conn_forget(h);
	pdl_nodes_forked(h);
	if (h->r.phase != PDL_IDLE) {
		h->r.phase = PDL_FAILED;
		h->r.fail_code = pdl_fail(h, PDELTA_E_IO, 1, "the request was open when the process forked");
		h->r.serr = h->err;
		memcpy(h->r.smsg, h->errmsg, sizeof h->r.smsg);
	}
	h->rng ^= pdl_strong_random64();
	if (h->inc_auto)
		h->incarnation = pdl_strong_random64();
	h->pid = me;
	h->stats.forks++;
}
