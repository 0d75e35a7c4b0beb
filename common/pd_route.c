/*
 * pd_route: server-list parsing, DNS address choice and rendezvous
 * hashing (see pd_route.h). The hashes are FNV-1a over the bytes, finished
 * by the splitmix64 mixer; they need to spread, not to resist an attacker
 * (a client only chooses among nodes it was given).
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "pd_route.h"

static uint64_t mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static uint64_t fnv1a(uint64_t h, const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		h ^= (unsigned char)s[i];
		h *= 0x100000001b3ull;
	}
	return h;
}

#define FNV_OFFSET 0xcbf29ce484222325ull

uint64_t pd_route_key(const char *tenant, const char *stream)
{
	uint64_t h = fnv1a(FNV_OFFSET, tenant, strlen(tenant));
	h = fnv1a(h, "", 1); /* separator: ("ab","c") and ("a","bc") differ */
	return mix64(fnv1a(h, stream, strlen(stream)));
}

uint64_t pd_route_weight(uint64_t key, const char *node_id)
{
	return mix64(key ^ mix64(fnv1a(FNV_OFFSET, node_id, strlen(node_id))));
}

void pd_route_order(uint64_t key, const char *const *ids, size_t n, size_t *order)
{
	uint64_t w[PD_ROUTE_MAX_NODES];

	for (size_t i = 0; i < n && i < PD_ROUTE_MAX_NODES; i++) {
		w[i] = pd_route_weight(key, ids[i]);
		order[i] = i;
	}
	/* insertion sort: n is small */
	for (size_t i = 1; i < n && i < PD_ROUTE_MAX_NODES; i++) {
		size_t v = order[i], j = i;
		while (j > 0 && (w[order[j - 1]] < w[v] ||
				 (w[order[j - 1]] == w[v] && strcmp(ids[order[j - 1]], ids[v]) > 0))) {
			order[j] = order[j - 1];
			j--;
		}
		order[j] = v;
	}
}

/* ---- parsing ------------------------------------------------------------------ */

/* "<what> '<a[0..alen)>'<why>", the quoted part cut short. */
static int fail(char *err, size_t errlen, const char *what, const char *a, size_t alen,
		const char *why)
{
	char part[80];
	size_t n = alen < sizeof part - 1 ? alen : sizeof part - 1;

	memcpy(part, a, n);
	part[n] = 0;
	snprintf(err, errlen, "%s '%s'%s", what, part, why);
	return -1;
}

static int valid_name(const char *s, size_t n)
{
	if (n == 0 || n > PD_ROUTE_MAX_HOST)
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '-' || c == '.' || c == '_'))
			return 0;
	}
	return s[0] != '-' && s[0] != '.';
}

static int valid_v6(const char *s, size_t n)
{
	char buf[64];
	unsigned char a[16];

	if (n == 0 || n >= sizeof buf)
		return 0;
	memcpy(buf, s, n);
	buf[n] = 0;
	return inet_pton(AF_INET6, buf, a) == 1;
}

static int valid_port(const char *s, size_t n)
{
	unsigned v = 0;

	if (n == 0 || n > 5 || s[0] == '0')
		return 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return 0;
		v = v * 10 + (unsigned)(s[i] - '0');
	}
	return v >= 1 && v <= 65535;
}

static void set_node(pd_route_node *nd, const char *host, size_t hl, const char *port, size_t pl,
		     int v6)
{
	memcpy(nd->host, host, hl);
	nd->host[hl] = 0;
	memcpy(nd->port, port, pl);
	nd->port[pl] = 0;
	snprintf(nd->id, sizeof nd->id, v6 ? "[%s]:%s" : "%s:%s", nd->host, nd->port);
}

/* One entry s[0..n): "host:port" or "[v6]:port". */
static int parse_entry(const char *s, size_t n, pd_route_node *nd, char *err, size_t errlen)
{
	const char *colon, *host = s;
	size_t hl;
	int v6 = s[0] == '[';

	if (v6) {
		const char *rb = memchr(s, ']', n);
		if (!rb || (size_t)(rb - s) + 1 >= n || rb[1] != ':')
			return fail(err, errlen, "server", s, n, ": want [addr]:port");
		host = s + 1;
		hl = (size_t)(rb - host);
		colon = rb + 1;
		if (!valid_v6(host, hl))
			return fail(err, errlen, "server", s, n, ": not an IPv6 address in brackets");
	} else {
		colon = memchr(s, ':', n);
		if (!colon || memchr(colon + 1, ':', n - (size_t)(colon + 1 - s)))
			return fail(err, errlen, "server", s, n,
				    ": want host:port ([addr]:port for IPv6)");
		hl = (size_t)(colon - s);
		if (!valid_name(host, hl))
			return fail(err, errlen, "server", s, n, ": bad host name");
	}
	if (!valid_port(colon + 1, n - (size_t)(colon + 1 - s)))
		return fail(err, errlen, "server", s, n, ": want a port 1..65535");
	set_node(nd, host, hl, colon + 1, n - (size_t)(colon + 1 - s), v6);
	return 0;
}

static int find_id(const pd_route_node *nodes, size_t n, const char *id)
{
	for (size_t i = 0; i < n; i++)
		if (strcasecmp(nodes[i].id, id) == 0)
			return 1;
	return 0;
}

int pd_route_parse(const char *list, pd_route_node *out, size_t max, size_t *n, char *err,
		   size_t errlen)
{
	const char *p = list;

	*n = 0;
	if (max > PD_ROUTE_MAX_NODES)
		max = PD_ROUTE_MAX_NODES;
	if (!list || !*list) {
		snprintf(err, errlen, "empty server list");
		return -1;
	}
	for (;;) {
		const char *end = strchr(p, ',');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		pd_route_node nd;

		if (len == 0)
			return fail(err, errlen, "server list", list, strlen(list), ": empty entry");
		if (*n >= max) {
			snprintf(err, errlen, "server list: more than %zu entries", max);
			return -1;
		}
		if (parse_entry(p, len, &nd, err, errlen))
			return -1;
		if (find_id(out, *n, nd.id))
			return fail(err, errlen, "server", nd.id, strlen(nd.id), " listed twice");
		out[(*n)++] = nd;
		if (!end)
			return 0;
		p = end + 1;
	}
}

/* ---- DNS answers ---------------------------------------------------------------- */

static int cmp_node(const void *a, const void *b)
{
	return strcmp(((const pd_route_node *)a)->id, ((const pd_route_node *)b)->id);
}

/* Adds the distinct addresses of one family; -1 past max. */
static int take_family(const char *const *addrs, size_t naddrs, int family, const char *port,
		       pd_route_node *out, size_t max, size_t *n, char *err, size_t errlen)
{
	unsigned char a[16];

	*n = 0;
	for (size_t i = 0; i < naddrs; i++) {
		pd_route_node nd;
		size_t hl = strlen(addrs[i]);

		if (inet_pton(family, addrs[i], a) != 1)
			continue;
		set_node(&nd, addrs[i], hl, port, strlen(port), family == AF_INET6);
		if (find_id(out, *n, nd.id))
			continue;
		if (*n >= max) {
			snprintf(err, errlen, "the name has more than %zu addresses", max);
			return -1;
		}
		out[(*n)++] = nd;
	}
	return 0;
}

int pd_route_from_addrs(const char *const *addrs, size_t naddrs, const char *port,
			pd_route_node *out, size_t max, size_t *n, char *err, size_t errlen)
{
	unsigned char a[16];

	*n = 0;
	if (max > PD_ROUTE_MAX_NODES)
		max = PD_ROUTE_MAX_NODES;
	if (!valid_port(port, strlen(port)))
		return fail(err, errlen, "port", port, strlen(port), ": want 1..65535");
	for (size_t i = 0; i < naddrs; i++) {
		size_t hl = strnlen(addrs[i], 64);
		if (hl == 0 || hl >= 64 ||
		    (inet_pton(AF_INET, addrs[i], a) != 1 && inet_pton(AF_INET6, addrs[i], a) != 1))
			return fail(err, errlen, "resolver answer", addrs[i], hl,
				    " is not a numeric address");
	}
	if (take_family(addrs, naddrs, AF_INET, port, out, max, n, err, errlen))
		return -1;
	if (*n < 2 && take_family(addrs, naddrs, AF_INET6, port, out, max, n, err, errlen))
		return -1;
	if (*n < 2)
		*n = 0;
	qsort(out, *n, sizeof *out, cmp_node);
	return 0;
}
