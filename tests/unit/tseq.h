/*
 * tseq: the reference of the tests that compare a delta with the engine's: a profile
 * sequence run through pd_engine_run with one state carried from each profile to the next
 * (what `pdelta seq` does).
 */
#ifndef TSEQ_H
#define TSEQ_H

#include "pd_buf.h"
#include "pd_engine.h"
#include "pd_state.h"

typedef struct th_seq {
	pd_engine *eng;
	pd_state *prev, *next;
} th_seq;

static inline int th_seq_sink(void *ctx, const uint8_t *p, size_t n)
{
	return pd_buf_append(ctx, p, n, NULL) ? -1 : 0;
}

/* lim NULL: the default limits. 0, or -1 out of memory (th_seq_free still frees). */
static inline int th_seq_init(th_seq *s, const pd_limits *lim)
{
	s->eng = pd_engine_new(lim);
	s->prev = pd_state_new();
	s->next = pd_state_new();
	return s->eng && s->prev && s->next ? 0 : -1;
}

/* The next profile of the sequence: its delta in out (initialised here; the caller frees
 * it), its result in res; the state moves on. pd_engine_run's code. */
static inline int th_seq_run(th_seq *s, const void *p, size_t n, const pd_req *req, pd_buf *out,
			     pd_result *res)
{
	pd_state *t;
	int rc;

	pd_buf_init(out, 0);
	rc = pd_engine_run(s->eng, p, n, s->prev, s->next, req, th_seq_sink, out, res, NULL);
	t = s->prev;
	s->prev = s->next;
	s->next = t;
	return rc;
}

static inline void th_seq_free(th_seq *s)
{
	pd_engine_free(s->eng);
	pd_state_free(s->prev);
	pd_state_free(s->next);
}

#endif
