/*
 * fuzz_route: libFuzzer target for the server-list parser and the choice
 * among a resolver's addresses (common/pd_route.[ch]).
 *
 * Input: the bytes up to the first NUL are a --server list for
 * pd_route_parse(); the rest, split at newlines, is a resolver answer for
 * pd_route_from_addrs(). Checked: a success gives 1..max distinct nodes,
 * each with a non-empty host, a port 1..65535 and an id that parses back
 * to itself; a failure leaves a message; the rendezvous order of a parsed
 * list is a permutation. Seeds: tests/fuzz/corpus/route/.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pd_route.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_nodes(const pd_route_node *nd, size_t n, size_t max)
{
	size_t order[PD_ROUTE_MAX_NODES];
	const char *ids[PD_ROUTE_MAX_NODES];
	unsigned char seen[PD_ROUTE_MAX_NODES] = {0};

	if (n > max)
		abort();
	for (size_t i = 0; i < n; i++) {
		pd_route_node back;
		size_t m;
		char err[256];
		long port = strtol(nd[i].port, NULL, 10);

		if (!nd[i].host[0] || port < 1 || port > 65535)
			abort();
		if (pd_route_parse(nd[i].id, &back, 1, &m, err, sizeof err) || m != 1 ||
		    strcmp(back.id, nd[i].id) != 0)
			abort();
		for (size_t j = 0; j < i; j++)
			if (strcmp(nd[i].id, nd[j].id) == 0)
				abort();
		ids[i] = nd[i].id;
	}
	pd_route_order(pd_route_key("t", "s"), ids, n, order);
	for (size_t i = 0; i < n; i++) {
		if (order[i] >= n || seen[order[i]])
			abort();
		seen[order[i]] = 1;
	}
}

static void fuzz_list(const char *list)
{
	pd_route_node nd[PD_ROUTE_MAX_NODES];
	char err[256] = "";
	size_t n = 0;

	if (pd_route_parse(list, nd, PD_ROUTE_MAX_NODES, &n, err, sizeof err) == 0) {
		if (n == 0)
			abort();
		check_nodes(nd, n, PD_ROUTE_MAX_NODES);
	} else if (!err[0]) {
		abort();
	}
}

static void fuzz_addrs(char *text)
{
	pd_route_node nd[PD_ROUTE_MAX_NODES];
	const char *addrs[256];
	char err[256] = "";
	size_t na = 0, n = 0;

	for (char *save = NULL, *tok = strtok_r(text, "\n", &save); tok && na < 256;
	     tok = strtok_r(NULL, "\n", &save))
		addrs[na++] = tok;
	if (pd_route_from_addrs(addrs, na, "7070", nd, 8, &n, err, sizeof err) == 0)
		check_nodes(nd, n, 8);
	else if (!err[0])
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *buf = malloc(size + 1);
	size_t cut;

	if (!buf)
		return 0;
	memcpy(buf, data, size);
	buf[size] = 0;
	cut = strlen(buf);
	fuzz_list(buf);
	if (cut < size)
		fuzz_addrs(buf + cut + 1);
	free(buf);
	return 0;
}
