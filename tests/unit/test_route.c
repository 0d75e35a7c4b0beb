/*
 * test_route: the server-list parser, the choice among a name's addresses
 * and rendezvous routing (common/pd_route.c): the order is stable and
 * independent of the list's order, streams spread evenly over 3 and 5
 * nodes, and adding or removing a node moves only the streams it takes or
 * had; hostile lists get clear errors.
 */
#include <stdio.h>
#include <string.h>

#include "pd_route.h"
#include "tharness.h"

/* A check in a loop of thousands: counted once per failure only. */
#define CHECK_SILENT_SAME(cond)         \
	do {                            \
		if (!(cond))            \
			CHECK(cond);    \
	} while (0)

#define NSTREAMS 10000

static size_t parse_ok(const char *list, pd_route_node *out)
{
	char err[256] = "";
	size_t n = 99;
	int rc = pd_route_parse(list, out, PD_ROUTE_MAX_NODES, &n, err, sizeof err);
	CHECK(rc == 0);
	if (rc)
		fprintf(stderr, "  '%s': %s\n", list, err);
	return rc ? 0 : n;
}

static void parse_bad(const char *list, const char *want)
{
	pd_route_node out[PD_ROUTE_MAX_NODES];
	char err[256] = "";
	size_t n = 99;

	CHECK(pd_route_parse(list, out, PD_ROUTE_MAX_NODES, &n, err, sizeof err) == -1);
	CHECK(strstr(err, want) != NULL);
	if (!strstr(err, want))
		fprintf(stderr, "  '%s': got '%s', want '%s'\n", list, err, want);
}

static void test_parse(void)
{
	pd_route_node nd[PD_ROUTE_MAX_NODES];
	char big[PD_ROUTE_MAX_NODES * 24 + 64];
	size_t len = 0;

	CHECK(parse_ok("a.example:7070", nd) == 1);
	CHECK(strcmp(nd[0].host, "a.example") == 0 && strcmp(nd[0].port, "7070") == 0);
	CHECK(parse_ok("10.0.0.1:1,10.0.0.2:65535,[::1]:7070", nd) == 3);
	CHECK(strcmp(nd[2].host, "::1") == 0 && strcmp(nd[2].id, "[::1]:7070") == 0);
	CHECK(strcmp(nd[1].id, "10.0.0.2:65535") == 0);

	parse_bad("", "empty server list");
	parse_bad(NULL, "empty server list");
	parse_bad("a:1,,b:2", "empty entry");
	parse_bad("a:1,", "empty entry");
	parse_bad(",a:1", "empty entry");
	parse_bad("a", "want host:port");
	parse_bad("a:", "port 1..65535");
	parse_bad("a:0", "port 1..65535");
	parse_bad("a:65536", "port 1..65535");
	parse_bad("a:08", "port 1..65535");
	parse_bad("a:12x", "port 1..65535");
	parse_bad("a:-1", "port 1..65535");
	parse_bad(":7070", "bad host name");
	parse_bad("a b:7070", "bad host name");
	parse_bad(" a:7070", "bad host name");
	parse_bad("-a:7070", "bad host name");
	parse_bad("::1:7070", "want host:port");
	parse_bad("[::1]7070", "want [addr]:port");
	parse_bad("[::1:7070", "want [addr]:port");
	parse_bad("[nothex]:7070", "not an IPv6 address");
	parse_bad("[]:7070", "not an IPv6 address");
	parse_bad("a:1,b:2,a:1", "listed twice");
	parse_bad("A:1,a:1", "listed twice");
	for (int i = 0; i <= PD_ROUTE_MAX_NODES; i++)
		len += (size_t)snprintf(big + len, sizeof big - len, "%sn%d:7070", i ? "," : "", i);
	parse_bad(big, "more than 64 entries");
	big[strlen(big) - strlen(",n64:7070")] = 0;
	CHECK(parse_ok(big, nd) == PD_ROUTE_MAX_NODES);
}

static void test_addrs(void)
{
	pd_route_node out[PD_ROUTE_MAX_NODES];
	char err[256];
	size_t n;
	const char *v4[] = {"10.0.0.3", "10.0.0.1", "::1", "10.0.0.3", "10.0.0.2"};
	const char *mixed[] = {"127.0.0.1", "::1"};
	const char *v6[] = {"127.0.0.1", "fd00::2", "fd00::1"};
	const char *junk[] = {"10.0.0.1", "not-an-address"};
	char many_text[PD_ROUTE_MAX_NODES + 1][32];
	const char *many[PD_ROUTE_MAX_NODES + 1];

	CHECK(pd_route_from_addrs(v4, 5, "7070", out, PD_ROUTE_MAX_NODES, &n, err, sizeof err) == 0);
	CHECK(n == 3); /* the IPv4 ones, one duplicate dropped, sorted */
	CHECK(n == 3 && strcmp(out[0].id, "10.0.0.1:7070") == 0 && strcmp(out[2].id, "10.0.0.3:7070") == 0);
	CHECK(pd_route_from_addrs(mixed, 2, "7070", out, PD_ROUTE_MAX_NODES, &n, err, sizeof err) == 0);
	CHECK(n == 0); /* one address per family: the name stays one node */
	CHECK(pd_route_from_addrs(v6, 3, "7070", out, PD_ROUTE_MAX_NODES, &n, err, sizeof err) == 0);
	CHECK(n == 2 && strcmp(out[0].id, "[fd00::1]:7070") == 0);
	CHECK(pd_route_from_addrs(junk, 2, "7070", out, PD_ROUTE_MAX_NODES, &n, err, sizeof err) == -1);
	CHECK(strstr(err, "not a numeric address") != NULL);
	CHECK(pd_route_from_addrs(v4, 5, "0", out, PD_ROUTE_MAX_NODES, &n, err, sizeof err) == -1);
	CHECK(pd_route_from_addrs(NULL, 0, "7070", out, PD_ROUTE_MAX_NODES, &n, err, sizeof err) == 0 &&
	      n == 0);
	for (int i = 0; i <= PD_ROUTE_MAX_NODES; i++) {
		snprintf(many_text[i], sizeof many_text[i], "10.1.0.%d", i + 1);
		many[i] = many_text[i];
	}
	CHECK(pd_route_from_addrs(many, PD_ROUTE_MAX_NODES + 1, "7070", out, PD_ROUTE_MAX_NODES, &n, err,
				  sizeof err) == -1);
	CHECK(strstr(err, "more than 64 addresses") != NULL);
	CHECK(pd_route_from_addrs(many, PD_ROUTE_MAX_NODES, "7070", out, PD_ROUTE_MAX_NODES, &n, err,
				  sizeof err) == 0 &&
	      n == PD_ROUTE_MAX_NODES);
}

/* The node of stream i of tenant "acme". */
static size_t owner(const char *const *ids, size_t n, int i)
{
	char name[32];
	size_t order[PD_ROUTE_MAX_NODES];

	snprintf(name, sizeof name, "svc-%d/heap", i);
	pd_route_order(pd_route_key("acme", name), ids, n, order);
	return order[0];
}

/* Every node within 5% of its fair share of NSTREAMS. */
static void check_balance(const char *const *ids, size_t n)
{
	unsigned count[PD_ROUTE_MAX_NODES] = {0};
	double fair = (double)NSTREAMS / (double)n;

	for (int i = 0; i < NSTREAMS; i++)
		count[owner(ids, n, i)]++;
	for (size_t k = 0; k < n; k++) {
		double dev = ((double)count[k] - fair) / fair;
		printf("  %zu nodes: %s has %u streams (%+.1f%%)\n", n, ids[k], count[k], dev * 100);
		CHECK(dev < 0.05 && dev > -0.05);
	}
}

static void test_rendezvous(void)
{
	const char *five[] = {"10.0.0.1:7070", "10.0.0.2:7070", "10.0.0.3:7070", "10.0.0.4:7070",
			      "10.0.0.5:7070"};
	const char *rev[] = {"10.0.0.3:7070", "10.0.0.2:7070", "10.0.0.1:7070"};
	size_t order[PD_ROUTE_MAX_NODES], order2[PD_ROUTE_MAX_NODES];
	int moved_add = 0, moved_wrong = 0, moved_rm = 0;

	/* stable and a permutation */
	pd_route_order(pd_route_key("acme", "api/heap"), five, 5, order);
	pd_route_order(pd_route_key("acme", "api/heap"), five, 5, order2);
	CHECK(memcmp(order, order2, sizeof(size_t) * 5) == 0);
	{
		unsigned seen = 0;
		for (int i = 0; i < 5; i++)
			seen |= 1u << order[i];
		CHECK(seen == 0x1f);
	}
	/* the tenant is part of the key, and ("ab","c") differs from ("a","bc") */
	CHECK(pd_route_key("acme", "s") != pd_route_key("other", "s"));
	CHECK(pd_route_key("ab", "c") != pd_route_key("a", "bc"));
	/* the list's order does not matter */
	for (int i = 0; i < 1000; i++)
		CHECK_SILENT_SAME(strcmp(five[owner(five, 3, i)], rev[owner(rev, 3, i)]) == 0);
	check_balance(five, 3);
	check_balance(five, 5);
	/* adding node 4 (of 3 -> 4): only streams that now land on it move */
	for (int i = 0; i < NSTREAMS; i++) {
		size_t a = owner(five, 3, i), b = owner(five, 4, i);
		if (a != b) {
			moved_add++;
			moved_wrong += b != 3;
		}
	}
	printf("  3 -> 4 nodes: %d of %d streams moved (%d not to the new node)\n", moved_add, NSTREAMS,
	       moved_wrong);
	CHECK(moved_wrong == 0);
	CHECK(moved_add > NSTREAMS / 4 * 0.9 && moved_add < NSTREAMS / 4 * 1.1);
	/* removing node 0 of 5: only its streams move, to where their order says */
	for (int i = 0; i < NSTREAMS; i++) {
		size_t a = owner(five, 5, i), b = owner(five + 1, 4, i) + 1;
		char name[32];
		snprintf(name, sizeof name, "svc-%d/heap", i);
		if (a != b) {
			moved_rm++;
			CHECK_SILENT_SAME(a == 0);
			pd_route_order(pd_route_key("acme", name), five, 5, order);
			CHECK_SILENT_SAME(order[1] == b);
		}
	}
	printf("  5 -> 4 nodes: %d of %d streams moved\n", moved_rm, NSTREAMS);
	CHECK(moved_rm > NSTREAMS / 5 * 0.9 && moved_rm < NSTREAMS / 5 * 1.1);
}

int main(void)
{
	test_parse();
	test_addrs();
	test_rendezvous();
	return TH_DONE();
}
