/*
 * pd_buf: a growable byte buffer born with a hard cap (curl's dynbuf idea).
 *
 * Growth is amortised (doubling) and never exceeds cap; hitting the cap is a
 * PD_E_LIMIT error, not a silent truncation. The buffer owns its memory;
 * pd_buf_reset() keeps the allocation for reuse (no malloc per request in
 * steady state), pd_buf_free() releases it.
 */
#ifndef PD_BUF_H
#define PD_BUF_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "pd_err.h"

typedef struct pd_buf {
	uint8_t *data;
	size_t len;
	size_t alloc;
	size_t cap; /* hard maximum of len; 0 means SIZE_MAX */
} pd_buf;

void pd_buf_init(pd_buf *b, size_t cap);
void pd_buf_free(pd_buf *b);
static inline void pd_buf_reset(pd_buf *b) { b->len = 0; }
/* Ensures room for n more bytes. */
int pd_buf_reserve(pd_buf *b, size_t n, pd_err *e);
int pd_buf_append(pd_buf *b, const void *p, size_t n, pd_err *e);

/* Growable arrays: a pointer and its capacity in elements, declared with
 * PD_VEC and grown (doubling, contents kept) with PD_GROW, which expects a
 * pd_err *e in scope. */
#define PD_VEC(T, name)                                                                            \
	T *name;                                                                                   \
	size_t name##_cap
int pd_array_grow(void **pp, size_t *cap, size_t need, size_t elsz, pd_err *e);
#define PD_GROW(arr, need) pd_array_grow((void **)&(arr), &arr##_cap, (need), sizeof *(arr), e)
/* Frees a PD_VEC, leaving it empty and usable; the bytes it holds. */
#define PD_VEC_FREE(arr) (free(arr), (arr) = NULL, arr##_cap = 0)
#define PD_VEC_BYTES(arr) (arr##_cap * sizeof *(arr))

#endif
