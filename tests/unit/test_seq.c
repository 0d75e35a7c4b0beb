/* test_seq: the sequence rule (common/pd_seq) over its table of cases. */
#include <stdint.h>

#include "pd_seq.h"
#include "tharness.h"

struct probe {
	int same;  /* what same_content answers */
	int asked; /* how often it was asked */
};

static int same_content(void *arg)
{
	struct probe *p = arg;

	p->asked++;
	return p->same;
}

struct seq_case {
	const char *what;
	pd_seq_last last;
	pd_seq_req req;
	int same;
	enum pd_seq_verdict want;
	int asks; /* same_content must be asked exactly this often */
};

static const struct seq_case cases[] = {
	{"no state: any seq applies", {false, 7, 10}, {7, 3, false, 0}, 1, PD_SEQ_APPLY, 0},
	{"no state: after_seq ignored", {false, 7, 10}, {7, 11, true, 50}, 1, PD_SEQ_APPLY, 0},
	{"other incarnation: older seq applies", {true, 7, 10}, {8, 3, false, 0}, 1, PD_SEQ_APPLY, 0},
	{"other incarnation: same seq applies", {true, 7, 10}, {8, 10, false, 0}, 1, PD_SEQ_APPLY, 0},
	{"incarnation 0 vs 5 differ", {true, 0, 10}, {5, 2, false, 0}, 0, PD_SEQ_APPLY, 0},
	{"incarnation 0 vs 0 compare seq", {true, 0, 10}, {0, 2, false, 0}, 0, PD_SEQ_STALE, 0},
	{"next seq applies", {true, 7, 10}, {7, 11, false, 0}, 0, PD_SEQ_APPLY, 0},
	{"seq gap applies", {true, 7, 10}, {7, 1000, false, 0}, 0, PD_SEQ_APPLY, 0},
	{"after_seq == last: applies", {true, 7, 10}, {7, 11, true, 10}, 0, PD_SEQ_APPLY, 0},
	{"after_seq < last: applies", {true, 7, 10}, {7, 11, true, 4}, 0, PD_SEQ_APPLY, 0},
	{"after_seq > last: state lost", {true, 7, 10}, {7, 13, true, 12}, 0, PD_SEQ_APPLY_STATE_LOST, 0},
	{"after_seq > last without has_after", {true, 7, 10}, {7, 13, false, 12}, 0, PD_SEQ_APPLY, 0},
	{"same seq, same content: duplicate", {true, 7, 10}, {7, 10, false, 0}, 1, PD_SEQ_DUPLICATE, 1},
	{"same seq, other content: conflict", {true, 7, 10}, {7, 10, false, 0}, 0, PD_SEQ_CONFLICT, 1},
	{"same seq, after_seq above: still duplicate", {true, 7, 10}, {7, 10, true, 20}, 1, PD_SEQ_DUPLICATE, 1},
	{"older seq: stale", {true, 7, 10}, {7, 9, false, 0}, 1, PD_SEQ_STALE, 0},
	{"seq 0 vs last 1: stale", {true, 7, 1}, {7, 0, false, 0}, 1, PD_SEQ_STALE, 0},
	{"max seq after max-1", {true, 7, UINT64_MAX - 1}, {7, UINT64_MAX, false, 0}, 0, PD_SEQ_APPLY, 0},
};

int main(void)
{
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		const struct seq_case *c = &cases[i];
		struct probe p = {c->same, 0};
		enum pd_seq_verdict v = pd_seq_decide(&c->last, &c->req, same_content, &p);

		if (v != c->want || p.asked != c->asks)
			fprintf(stderr, "case '%s': verdict %d (want %d), asked %d (want %d)\n",
				c->what, (int)v, (int)c->want, p.asked, c->asks);
		CHECK(v == c->want);
		CHECK(p.asked == c->asks);
	}
	return TH_DONE();
}
