/*
 * pd_clock: the two clocks every module reads. Monotonic time measures
 * durations, timeouts and rates (it never jumps); realtime (wall) time is
 * what goes into records, logs and profiles. Inline: the engine reads the
 * monotonic clock around every pass.
 */
#ifndef PD_CLOCK_H
#define PD_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline uint64_t pd_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static inline uint64_t pd_now_ms(void) { return pd_now_ns() / 1000000u; }

static inline int64_t pd_wall_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline int64_t pd_wall_ms(void) { return pd_wall_ns() / 1000000; }

/* CPU time of the calling thread, ns. */
static inline uint64_t pd_thread_cpu_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The time ms milliseconds from now on clock clk, as an absolute deadline
 * (pthread_cond_timedwait takes one on the condition's clock). */
static inline struct timespec pd_deadline(clockid_t clk, uint64_t ms)
{
	struct timespec ts;
	clock_gettime(clk, &ts);
	ts.tv_sec += (time_t)(ms / 1000);
	ts.tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	return ts;
}

#endif
