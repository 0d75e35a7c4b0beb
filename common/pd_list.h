/*
 * pd_list: the intrusive lists and queues of the server, written once.
 *
 * The caller keeps its own head (and tail) pointers and names the link
 * fields of its struct, so one struct can sit on several lists at once (a
 * request is on its connection's list, its send queue and the completion
 * queue) and no cast is needed. Macros, because the link fields differ per
 * list; they evaluate their arguments more than once, so pass plain lvalues,
 * and never pass one of the list's own pointers as the node (unlink a local
 * copy: `r = c->reqs; PD_LIST_REMOVE(c->reqs, c->reqs_tail, r, prev, next)`).
 * Nothing here locks or allocates.
 *
 * Two kinds:
 *   - lists: doubly linked (prev, next), kept by head, or by head and tail;
 *     O(1) unlink of any node. An unlinked node has both links NULL.
 *   - queues: singly linked (next), kept by head and tail; FIFO push at the
 *     tail, push back at the head.
 */
#ifndef PD_LIST_H
#define PD_LIST_H

#include <stddef.h>

/* ---- lists kept by head only -------------------------------------------------------- */

/* Puts n first. */
#define PD_LIST_PUSH(head, n, prev, next)                                                          \
	do {                                                                                       \
		(n)->prev = NULL;                                                                  \
		(n)->next = (head);                                                                \
		if (head)                                                                          \
			(head)->prev = (n);                                                        \
		(head) = (n);                                                                      \
	} while (0)

/* Takes n out of the list. */
#define PD_LIST_UNLINK(head, n, prev, next)                                                        \
	do {                                                                                       \
		if ((n)->prev)                                                                     \
			(n)->prev->next = (n)->next;                                               \
		else                                                                               \
			(head) = (n)->next;                                                        \
		if ((n)->next)                                                                     \
			(n)->next->prev = (n)->prev;                                               \
		(n)->prev = (n)->next = NULL;                                                      \
	} while (0)

/* ---- queues: head and tail, singly linked ---------------------------------------------- */

/* Appends n at the tail. */
#define PD_QUEUE_PUSH(head, tail, n, next)                                                         \
	do {                                                                                       \
		(n)->next = NULL;                                                                  \
		if (tail)                                                                          \
			(tail)->next = (n);                                                        \
		else                                                                               \
			(head) = (n);                                                              \
		(tail) = (n);                                                                      \
	} while (0)

/* Puts n first (an item taken from the head goes back where it was). */
#define PD_QUEUE_PUSH_FRONT(head, tail, n, next)                                                   \
	do {                                                                                       \
		(n)->next = (head);                                                                \
		(head) = (n);                                                                      \
		if (!(tail))                                                                       \
			(tail) = (n);                                                              \
	} while (0)

/* ---- lists kept by head and tail -------------------------------------------------------- */

#define PD_LIST_APPEND(head, tail, n, prev, next)                                                  \
	do {                                                                                       \
		(n)->prev = (tail);                                                                \
		PD_QUEUE_PUSH(head, tail, n, next);                                                \
	} while (0)

#define PD_LIST_PREPEND(head, tail, n, prev, next)                                                 \
	do {                                                                                       \
		if (!(tail))                                                                       \
			(tail) = (n);                                                              \
		PD_LIST_PUSH(head, n, prev, next);                                                 \
	} while (0)

#define PD_LIST_REMOVE(head, tail, n, prev, next)                                                  \
	do {                                                                                       \
		if (!(n)->next)                                                                    \
			(tail) = (n)->prev;                                                        \
		PD_LIST_UNLINK(head, n, prev, next);                                               \
	} while (0)

#endif
