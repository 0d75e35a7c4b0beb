/*
 * pd_units: sizes and durations as people write them on command lines and in
 * files: "64m", "512k", "1g" (bytes; an optional trailing b), "250ms", "10s",
 * "5m", "2h", "7d" (a bare number is milliseconds, as in pdeltad's settings).
 * Overflow and trailing garbage are refused. No I/O, no allocation.
 */
#ifndef PD_UNITS_H
#define PD_UNITS_H

#include <stdint.h>

/* 0 and *out on success, -1 when v is not a size / duration. */
int pd_parse_size(const char *v, uint64_t *out);
int pd_parse_ms(const char *v, uint64_t *out);

#endif
