/* pd_seq: the sequence rule of PROTOCOL.md §8 (see pd_seq.h). */
#include "pd_seq.h"

enum pd_seq_verdict pd_seq_decide(const pd_seq_last *last, const pd_seq_req *req,
				  int (*same_content)(void *arg), void *arg)
{
	if (!last->has_state || req->incarnation != last->incarnation)
		return PD_SEQ_APPLY;
	if (req->seq > last->seq)
		return req->has_after && req->after_seq > last->seq ? PD_SEQ_APPLY_STATE_LOST
								      : PD_SEQ_APPLY;
	if (req->seq < last->seq)
		return PD_SEQ_STALE;
	return same_content(arg) ? PD_SEQ_DUPLICATE : PD_SEQ_CONFLICT;
}
