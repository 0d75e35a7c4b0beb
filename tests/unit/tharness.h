/*
 * tharness: a tiny unit-test harness. CHECK() (or EXPECT() with a message)
 * records a failure and keeps going; each test binary returns non-zero if any
 * check failed and prints "N passed, N failed" for the runner.
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

/* EXPECT(cond, fmt, ...): CHECK with a printf-style message on failure. */
#define EXPECT(cond, ...)                                                    \
	do {                                                                 \
		if (cond) {                                                  \
			th_pass++;                                           \
		} else {                                                     \
			th_fail++;                                           \
			fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
			fprintf(stderr, __VA_ARGS__);                        \
			fputc('\n', stderr);                                 \
		}                                                            \
	} while (0)

/* TH_DONE_AS(name): TH_DONE() under the program's name instead of its file's. */
#define TH_DONE_AS(name) (printf("%s: %d passed, %d failed\n", (name), th_pass, th_fail), th_fail ? 1 : 0)

#define TH_DONE() TH_DONE_AS(__FILE__)

#endif
