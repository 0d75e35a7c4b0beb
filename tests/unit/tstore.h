/*
 * tstore: opening a state store in the store tests (test_store, test_store_crash).
 */
#ifndef TSTORE_H
#define TSTORE_H

#include <stdio.h>

#include "pd_store.h"

/* Opens the store at path with opts (NULL: the defaults; its path is set here). NULL, with
 * the reason on stderr, when it does not open. */
static inline pd_store *th_store_open(struct pd_store_opts *opts, const char *path)
{
	struct pd_store_opts o;
	pd_store *s = NULL;
	pd_err e = {0};

	if (!opts) {
		pd_store_opts_init(&o);
		opts = &o;
	}
	opts->path = path;
	if (pd_store_open(opts, &s, &e))
		fprintf(stderr, "open %s: %s\n", path, e.msg);
	return s;
}

#endif
