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

int pd_buf_reserve(pd_buf *b, size_t n, pd_err *e)
{
	size_t need, na;
	uint8_t *p;

	if (n > b->cap - b->len)
		return pd_err_set(e, PD_E_LIMIT, "buffer limit of %zu bytes exceeded", b->cap);
	need = b->len + n;
	if (need <= b->alloc)
		return PD_OK;
	na = b->alloc ? b->alloc : 4096;
	while (na < need)
		na = na > SIZE_MAX / 2 ? SIZE_MAX : na * 2;
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
	void *p;

	if (need <= *cap)
		return PD_OK;
	nc = *cap ? *cap : 64;
	while (nc < need)
		nc *= 2;
	p = realloc(*pp, nc * elsz);
	if (!p)
		return pd_err_set(e, PD_E_NOMEM, "out of memory (%zu x %zu bytes)", nc, elsz);
	*pp = p;
	*cap = nc;
	return PD_OK;
}
