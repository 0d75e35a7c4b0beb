/* pd_buf: capped growable buffer. */
#include "pd_buf.h"

#include <stdlib.h>
#include <string.h>

void pd_buf_init(pd_buf *b, size_t cap)
{
	b->data = NULL;
	b->len = 0;
	b->alloc = 0;
	b->cap = cap ? cap : SIZE_MAX;
}

void pd_buf_free(pd_buf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->alloc = 0;
}

/* Amortised growth of both kinds below: the capacity that replaces cap
 * (first, > 0, when cap is 0) so that need fits, doubling; need itself
 * where doubling would overflow. */
static size_t grow_cap(size_t cap, size_t need, size_t first)
{
	size_t n = cap ? cap : first;

	while (n < need)
		n = n > SIZE_MAX / 2 ? need : n * 2;
	return n;
}

int pd_buf_reserve(pd_buf *b, size_t n, pd_err *e)
{
	size_t need, na;
	uint8_t *p;

	if (n > b->cap - b->len)
		return pd_err_set(e, PD_E_LIMIT, "buffer limit of %zu bytes exceeded", b->cap);
	need = b->len + n;
	if (need <= b->alloc)
		return PD_OK;
	na = grow_cap(b->alloc, need, 4096);
	if (na > b->cap)
		na = b->cap;
	p = realloc(b->data, na);
	if (!p)
		return pd_err_set(e, PD_E_NOMEM, "out of memory growing buffer to %zu bytes", na);
	b->data = p;
	b->alloc = na;
	return PD_OK;
}

int pd_buf_append(pd_buf *b, const void *p, size_t n, pd_err *e)
{
	int rc = pd_buf_reserve(b, n, e);
	if (rc)
		return rc;
	if (n)
		memcpy(b->data + b->len, p, n);
	b->len += n;
	return PD_OK;
}

int pd_array_grow(void **pp, size_t *cap, size_t need, size_t elsz, pd_err *e)
{
	size_t nc;
	void *p = NULL;

	if (need <= *cap)
		return PD_OK;
	nc = grow_cap(*cap, need, 64);
	if (nc <= SIZE_MAX / elsz)
		p = realloc(*pp, nc * elsz);
	if (!p)
		return pd_err_set(e, PD_E_NOMEM, "out of memory (%zu x %zu bytes)", nc, elsz);
	*pp = p;
	*cap = nc;
	return PD_OK;
}
