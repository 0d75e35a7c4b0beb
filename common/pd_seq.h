/*
 * pd_seq: the sequence rule of PROTOCOL.md §8, the one decision the server
 * (pd_service) and libpdelta's local mode both take before running the
 * engine: apply the request, answer it as a DUPLICATE of the last applied
 * one, or refuse it (SEQ_CONFLICT, SEQ_STALE). Pure: no I/O, no allocation.
 *
 * A stream without state (new, expired, reset) applies any request; so does
 * a request whose incarnation differs from the stored one (incarnation 0
 * compares like any value). Within one incarnation seq > last is applied,
 * seq == last with the same content is a DUPLICATE, with other content a
 * SEQ_CONFLICT, and seq < last is SEQ_STALE.
 */
#ifndef PD_SEQ_H
#define PD_SEQ_H

#include <stdbool.h>
#include <stdint.h>

enum pd_seq_verdict {
	PD_SEQ_APPLY = 0,
	PD_SEQ_APPLY_STATE_LOST, /* apply, as a BASELINE: the client had answers past our state */
	PD_SEQ_DUPLICATE,
	PD_SEQ_CONFLICT,
	PD_SEQ_STALE,
};

/* What the stream holds. */
typedef struct pd_seq_last {
	bool has_state;
	uint64_t incarnation, seq;
} pd_seq_last;

/* What the request says. has_after/after_seq: the last seq the client had
 * answered (protocol 3); a state older than that went back (a restored
 * backup), and a delta from it would repeat intervals. */
typedef struct pd_seq_req {
	uint64_t incarnation, seq;
	bool has_after;
	uint64_t after_seq;
} pd_seq_req;

/* same_content(arg) is asked only when seq == last seq in one incarnation
 * (it may be costly): non-zero when the request's bytes are those of the
 * last applied request. */
enum pd_seq_verdict pd_seq_decide(const pd_seq_last *last, const pd_seq_req *req,
				  int (*same_content)(void *arg), void *arg);

#endif
