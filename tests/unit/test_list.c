/* test_list: the intrusive list and queue macros (common/pd_list.h): order
 * both ways, unlink at the head, middle and tail, two lists through one node. */
#include <stdio.h>
#include <string.h>

#include "pd_list.h"
#include "tharness.h"

typedef struct node {
	char id;
	struct node *prev, *next;   /* list A */
	struct node *b_prev, *b_next; /* list B */
	struct node *q_next;        /* queue */
} node;

struct lists {
	node *head, *tail;
	node *b_head, *b_tail;
	node *q_head, *q_tail;
};

/* The ids of list A from head to tail, and checks that the prev links give
 * the same order backwards and that tail is the last node. */
static const char *walk(const struct lists *l)
{
	static char fwd[16];
	char back[16];
	size_t n = 0, m = 0;
	const node *last = NULL;

	for (const node *x = l->head; x && n < sizeof fwd - 1; x = x->next) {
		fwd[n++] = x->id;
		last = x;
	}
	fwd[n] = 0;
	for (const node *x = l->tail; x && m < sizeof back - 1; x = x->prev)
		back[m++] = x->id;
	EXPECT(last == l->tail, "tail is not the last node of \"%s\"", fwd);
	EXPECT(m == n, "%zu nodes forward, %zu backward", n, m);
	for (size_t i = 0; i < m && m == n; i++)
		EXPECT(back[i] == fwd[n - 1 - i], "backward order differs from \"%s\"", fwd);
	return fwd;
}

static const char *walk_b(const struct lists *l)
{
	static char out[16];
	size_t n = 0;

	for (const node *x = l->b_head; x && n < sizeof out - 1; x = x->b_next)
		out[n++] = x->id;
	out[n] = 0;
	return out;
}

static const char *walk_q(const struct lists *l)
{
	static char out[16];
	size_t n = 0;
	const node *last = NULL;

	for (const node *x = l->q_head; x && n < sizeof out - 1; x = x->q_next) {
		out[n++] = x->id;
		last = x;
	}
	out[n] = 0;
	EXPECT(last == l->q_tail, "queue tail is not the last node of \"%s\"", out);
	return out;
}

/* Unlinked nodes named 'a', 'b', ... */
static void nodes_init(node *n, int count)
{
	memset(n, 0, count * sizeof *n);
	for (int i = 0; i < count; i++)
		n[i].id = (char)('a' + i);
}

static void test_head_tail_list(void)
{
	node n[5];
	struct lists l = {0};

	nodes_init(n, 5);
	CHECK(!strcmp(walk(&l), ""));
	PD_LIST_APPEND(l.head, l.tail, &n[1], prev, next);
	CHECK(!strcmp(walk(&l), "b"));
	PD_LIST_APPEND(l.head, l.tail, &n[2], prev, next);
	PD_LIST_PREPEND(l.head, l.tail, &n[0], prev, next);
	PD_LIST_APPEND(l.head, l.tail, &n[3], prev, next);
	CHECK(!strcmp(walk(&l), "abcd"));

	node *x = &n[1]; /* middle */
	PD_LIST_REMOVE(l.head, l.tail, x, prev, next);
	CHECK(!strcmp(walk(&l), "acd"));
	CHECK(!n[1].prev && !n[1].next);
	x = &n[0]; /* head */
	PD_LIST_REMOVE(l.head, l.tail, x, prev, next);
	CHECK(!strcmp(walk(&l), "cd"));
	x = &n[3]; /* tail */
	PD_LIST_REMOVE(l.head, l.tail, x, prev, next);
	CHECK(!strcmp(walk(&l), "c"));
	x = &n[2]; /* the only one */
	PD_LIST_REMOVE(l.head, l.tail, x, prev, next);
	CHECK(!l.head && !l.tail);

	/* Prepending into an empty list sets the tail too. */
	PD_LIST_PREPEND(l.head, l.tail, &n[4], prev, next);
	PD_LIST_PREPEND(l.head, l.tail, &n[3], prev, next);
	CHECK(!strcmp(walk(&l), "de"));
}

/* One node on two lists at once: unlinking from one leaves the other. */
static void test_two_lists(void)
{
	node n[3];
	struct lists l = {0};

	nodes_init(n, 3);
	for (int i = 0; i < 3; i++) {
		PD_LIST_APPEND(l.head, l.tail, &n[i], prev, next);
		PD_LIST_PREPEND(l.b_head, l.b_tail, &n[i], b_prev, b_next);
	}
	CHECK(!strcmp(walk(&l), "abc"));
	CHECK(!strcmp(walk_b(&l), "cba"));
	node *x = &n[1];
	PD_LIST_REMOVE(l.b_head, l.b_tail, x, b_prev, b_next);
	CHECK(!strcmp(walk(&l), "abc"));
	CHECK(!strcmp(walk_b(&l), "ca"));
	CHECK(l.b_tail == &n[0]);
}

/* A list kept by its head alone: push in front, unlink anywhere. */
static void test_head_only_list(void)
{
	node n[3];
	node *head = NULL;
	char got[4] = "";

	nodes_init(n, 3);
	for (int i = 0; i < 3; i++)
		PD_LIST_PUSH(head, &n[i], prev, next);
	node *x = &n[1];
	PD_LIST_UNLINK(head, x, prev, next);
	int i = 0;
	for (const node *p = head; p && i < 3; p = p->next)
		got[i++] = p->id;
	CHECK(!strcmp(got, "ca"));
	CHECK(n[2].next == &n[0] && n[0].prev == &n[2] && !n[2].prev);
	x = &n[2]; /* the head */
	PD_LIST_UNLINK(head, x, prev, next);
	CHECK(head == &n[0] && !n[0].prev);
}

static void test_queue(void)
{
	node n[4];
	struct lists l = {0};

	nodes_init(n, 4);
	PD_QUEUE_PUSH_FRONT(l.q_head, l.q_tail, &n[0], q_next); /* empty: also the tail */
	CHECK(!strcmp(walk_q(&l), "a"));
	PD_QUEUE_PUSH(l.q_head, l.q_tail, &n[1], q_next);
	PD_QUEUE_PUSH(l.q_head, l.q_tail, &n[2], q_next);
	PD_QUEUE_PUSH_FRONT(l.q_head, l.q_tail, &n[3], q_next);
	CHECK(!strcmp(walk_q(&l), "dabc"));
}

int main(void)
{
	test_head_tail_list();
	test_two_lists();
	test_head_only_list();
	test_queue();
	return TH_DONE();
}
