/*
 * pd_json: the one JSON string writer of the command-line tools, so that
 * `pdelta inspect --json` and `pdeltactl --json` escape alike.
 */
#ifndef PD_JSON_H
#define PD_JSON_H

#include <stddef.h>
#include <stdio.h>

/* n bytes of p as a quoted JSON string on f: quotes, backslashes and control
 * bytes escaped, everything else written as is. */
void pd_json_str(FILE *f, const char *p, size_t n);

#endif
