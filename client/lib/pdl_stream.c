/*
 * pdl_stream: the per-stream table of a libpdelta handle (sequence numbers,
 * answered seq, and in local mode the stream's state and last response).
 */
#include <stdlib.h>
#include <string.h>

#include "pdl_internal.h"

pdl_stream *pdl_stream_get(pdelta *h, const char *name, int create)
{
	pdl_stream *st;

	for (st = h->streams; st; st = st->next)
		if (strcmp(st->name, name) == 0)
			return st;
	if (!create)
		return NULL;
	st = calloc(1, sizeof *st);
	if (!st || !(st->name = strdup(name))) {
		free(st);
		return NULL;
	}
	pd_buf_init(&st->R, 0);
	pd_buf_init(&st->P, 0);
	st->is_local = h->server == NULL;
	st->next = h->streams;
	h->streams = st;
	return st;
}

void pdl_stream_free(pdl_stream *st)
{
	pd_state_free(st->state);
	pd_buf_free(&st->R);
	pd_buf_free(&st->P);
	free(st->name);
	free(st);
}
