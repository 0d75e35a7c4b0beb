/*
 * client_fork: libpdelta's fork safety against a running pdeltad.
 *
 *   client_fork --server H:P --ca CA --token T FILE1 FILE2 FILE3 FILE4
 *
 * The parent sends FILE1 and FILE2 on stream "fork-parent" over one
 * connection, and opens a streaming request for FILE3 (begun, half fed).
 * Then it forks. The child finds the request failed, sends FILE1..FILE3 on
 * "fork-child" (it must reconnect: a second connection, a new incarnation)
 * and frees the handle. The parent then finishes FILE3 and sends FILE4 on
 * its ORIGINAL connection: if the child had written to the parent's TLS
 * session (a close_notify, a GOODBYE) that connection would be broken. Each
 * parent delta is compared with a local-mode handle running the same engine
 * with the same incarnation (byte-identical). Prints "N passed, N failed".
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "pdelta.h"
#include "../unit/tharness.h"

static unsigned char *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	struct stat st;
	unsigned char *d;

	if (!f || fstat(fileno(f), &st)) {
		fprintf(stderr, "%s: cannot read\n", path);
		exit(2);
	}
	*len = (size_t)st.st_size;
	d = malloc(*len + 1);
	if (!d || fread(d, 1, *len, f) != *len)
		exit(2);
	fclose(f);
	return d;
}

/* One-call send; returns the delta (caller frees) or NULL. */
static unsigned char *send1(pdelta *h, const char *stream, const unsigned char *p, size_t n,
			    size_t *outlen, int *status)
{
	pdelta_result r;
	int rc = pdelta_delta(h, stream, 0, p, n, &r);

	if (rc) {
		fprintf(stderr, "[%d] send %s: %s\n", (int)getpid(), stream, pdelta_last_error(h));
		return NULL;
	}
	*outlen = r.len;
	*status = r.status;
	return r.data;
}

static void compare_local(pdelta *loc, const unsigned char *in, size_t n, const unsigned char *got,
			  size_t glen, const char *what)
{
	pdelta_result r;
	int rc = pdelta_delta(loc, "fork-parent", 0, in, n, &r);

	EXPECT(rc == 0 && got && r.len == glen && memcmp(r.data, got, glen) == 0,
	       "%s: server delta differs from the local engine's (rc %d, %zu vs %zu bytes)", what, rc,
	       glen, r.len);
	pdelta_result_free(&r);
}

static int child(pdelta *h, unsigned char **in, size_t *len, uint64_t parent_inc)
{
	pdelta_stats st;
	size_t n;
	int status;

	/* the request the parent had open is failed here, not continued */
	EXPECT(pdelta_feed(h, in[2] + len[2] / 2, len[2] - len[2] / 2) == PDELTA_E_IO,
	       "child: the inherited open request should fail with PDELTA_E_IO");
	for (int i = 0; i < 3; i++) {
		unsigned char *d = send1(h, "fork-child", in[i], len[i], &n, &status);
		EXPECT(d != NULL, "child: send %d failed", i);
		EXPECT(status == (i == 0 ? PDELTA_BASELINE : PDELTA_DELTA), "child: status %d", status);
		free(d);
	}
	pdelta_stats_get(h, &st);
	EXPECT(st.forks == 1, "child: forks=%llu", (unsigned long long)st.forks);
	EXPECT(st.connects == 2, "child: connects=%llu (expected the parent's + one new)",
	       (unsigned long long)st.connects);
	EXPECT(pdelta_incarnation(h) != parent_inc, "child: incarnation not redrawn");
	pdelta_free(h); /* must not say GOODBYE on the parent's connection */
	fprintf(stderr, "child: %d passed, %d failed\n", th_pass, th_fail);
	return th_fail ? 1 : 0;
}

static void parent_continue(pdelta *h, pdelta *loc, unsigned char **in, size_t *len)
{
	pdelta_result r;
	unsigned char *d;
	size_t n;
	int status;

	memset(&r, 0, sizeof r);
	/* finish the request that was open across the fork */
	EXPECT(pdelta_feed(h, in[2] + len[2] / 2, len[2] - len[2] / 2) == 0, "parent feed: %s",
	       pdelta_last_error(h));
	EXPECT(pdelta_finish(h, &r) == 0, "parent finish: %s", pdelta_last_error(h));
	EXPECT(r.status == PDELTA_DELTA, "parent: status %d after the fork", r.status);
	{
		unsigned char *buf = malloc(64u << 20);
		const void *p;
		size_t got = 0, k;
		int rc;
		while ((rc = pdelta_read(h, &p, &k)) == 0 && k) {
			memcpy(buf + got, p, k);
			got += k;
		}
		EXPECT(rc == 0, "parent read: %s", pdelta_last_error(h));
		compare_local(loc, in[2], len[2], buf, got, "file 3 (open across the fork)");
		free(buf);
	}
	d = send1(h, "fork-parent", in[3], len[3], &n, &status);
	EXPECT(d && status == PDELTA_DELTA, "parent: file 4 status %d", status);
	compare_local(loc, in[3], len[3], d, n, "file 4");
	free(d);
}

int main(int argc, char **argv)
{
	pdelta_opts o, lo;
	pdelta *h, *loc;
	unsigned char *in[4], *d;
	size_t len[4], n;
	pdelta_stats st;
	char err[256];
	int status, ws;
	pid_t pid;

	if (argc != 11 || strcmp(argv[1], "--server") || strcmp(argv[3], "--ca") ||
	    strcmp(argv[5], "--token")) {
		fprintf(stderr, "usage: client_fork --server H:P --ca CA --token T F1 F2 F3 F4\n");
		return 2;
	}
	for (int i = 0; i < 4; i++)
		in[i] = slurp(argv[7 + i], &len[i]);
	pdelta_opts_init(&o);
	o.server = argv[2];
	o.ca_file = argv[4];
	o.token = argv[6];
	o.client_name = "client_fork";
	if (pdelta_new(&o, &h, err, sizeof err)) {
		fprintf(stderr, "pdelta_new: %s\n", err);
		return 1;
	}
	pdelta_opts_init(&lo);
	lo.incarnation = pdelta_incarnation(h);
	if (pdelta_new(&lo, &loc, err, sizeof err))
		return 1;
	for (int i = 0; i < 2; i++) {
		d = send1(h, "fork-parent", in[i], len[i], &n, &status);
		EXPECT(d != NULL, "parent: send %d", i);
		compare_local(loc, in[i], len[i], d, n, i ? "file 2" : "file 1");
		free(d);
	}
	/* a request open at the fork */
	EXPECT(pdelta_begin(h, "fork-parent", 0, NULL, NULL) == 0, "begin: %s", pdelta_last_error(h));
	EXPECT(pdelta_feed(h, in[2], len[2] / 2) == 0, "feed: %s", pdelta_last_error(h));
	fflush(NULL);
	pid = fork();
	if (pid < 0)
		return 1;
	if (pid == 0)
		_exit(child(h, in, len, pdelta_incarnation(h)));
	EXPECT(waitpid(pid, &ws, 0) == pid && WIFEXITED(ws) && WEXITSTATUS(ws) == 0,
	       "child failed (status %d)", ws);
	parent_continue(h, loc, in, len);
	pdelta_stats_get(h, &st);
	EXPECT(st.connects == 1, "parent: connects=%llu, the fork must not break the connection",
	       (unsigned long long)st.connects);
	EXPECT(st.forks == 0 && st.retries == 0, "parent: forks=%llu retries=%llu",
	       (unsigned long long)st.forks, (unsigned long long)st.retries);
	pdelta_free(h);
	pdelta_free(loc);
	for (int i = 0; i < 4; i++)
		free(in[i]);
	return TH_DONE_AS("client_fork");
}
