/*
 * tharness: a tiny unit-test harness. CHECK() records a failure and keeps
 * going; each test binary returns non-zero if any check failed and prints
 * "N passed, N failed" for the runner.
 */
#ifndef THARNESS_H
#define THARNESS_H

#include <stdio.h>

static int th_pass, th_fail;

#define CHECK(cond)                                                                       \
	do {                                                                              \
		if (cond) {                                                               \
			th_pass++;                                                        \
		} else {                                                                  \
			th_fail++;                                                        \
			fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
		}                                                                         \
	} while (0)

#define TH_DONE()                                                                         \
	(printf("%s: %d passed, %d failed\n", __FILE__, th_pass, th_fail), th_fail ? 1 : 0)

#endif
