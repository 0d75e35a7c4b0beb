/*
 * pd_route: the pure part of client-side routing over several pdeltad
 * nodes. No I/O: the server list parser, the choice among a DNS name's
 * addresses, and rendezvous (highest-random-weight) hashing of tenant +
 * stream over node ids. The client library (client/lib/pdl_nodes.c) keeps
 * the connections; this module only decides.
 *
 * A node id is "host:port" as written ("[v6]:port" for IPv6), or the
 * numeric address and port for a node found through DNS. Every client
 * with the same set of ids computes the same order for a stream, whatever
 * the order of the list: the ids are hashed, never their positions.
 */
#ifndef PD_ROUTE_H
#define PD_ROUTE_H

#include <stddef.h>
#include <stdint.h>

#define PD_ROUTE_MAX_NODES 64    /* entries of a --server list / addresses of a name */
#define PD_ROUTE_MAX_HOST 253    /* longest DNS name */
#define PD_ROUTE_ID_LEN (PD_ROUTE_MAX_HOST + 9) /* "[host]:65535" + NUL */

typedef struct pd_route_node {
	char host[PD_ROUTE_MAX_HOST + 1]; /* name or address, without brackets */
	char port[6];
	char id[PD_ROUTE_ID_LEN];         /* what the rendezvous hash sees */
} pd_route_node;

/* Parses "H1:P1,H2:P2,..." (hosts are names, IPv4 or [IPv6]). Rejects an
 * empty list or entry, spaces, a missing or bad port (1..65535, digits
 * only), a bad host, a duplicate entry and more than max entries (max <=
 * PD_ROUTE_MAX_NODES). Returns 0 and fills out[0..*n) or -1 with a message. */
int pd_route_parse(const char *list, pd_route_node *out, size_t max, size_t *n, char *err,
		   size_t errlen);

/* The nodes behind one name: the numeric addresses a resolver returned
 * (addrs[0..naddrs), each a NUL-terminated inet_ntop() text), with port.
 * Keeps the IPv4 addresses if there are at least two, else the IPv6 ones if
 * there are at least two, else none (*n = 0: the name stays one node).
 * Duplicates are dropped, the result is sorted; an address that is not
 * numeric or more than max distinct addresses is an error (-1). */
int pd_route_from_addrs(const char *const *addrs, size_t naddrs, const char *port,
			pd_route_node *out, size_t max, size_t *n, char *err, size_t errlen);

/* The rendezvous key of a stream. */
uint64_t pd_route_key(const char *tenant, const char *stream);
/* The weight of a node for a key: the stream goes to the highest. */
uint64_t pd_route_weight(uint64_t key, const char *node_id);
/* order[0..n) = indexes of ids[0..n) (n <= PD_ROUTE_MAX_NODES) from the
 * highest weight to the lowest (ties, improbable, by id). */
void pd_route_order(uint64_t key, const char *const *ids, size_t n, size_t *order);

#endif
