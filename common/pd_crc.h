/*
 * pd_crc: the checksums. CRC-32 for gzip members and frames, and the 128-bit
 * content hash of protocol version 2 (two CRC-64s), both through the
 * carry-less-multiply code of libdeflate and ISA-L.
 */
#ifndef PD_CRC_H
#define PD_CRC_H

#include <stddef.h>
#include <stdint.h>

/* CRC-32 (the gzip/zlib polynomial: equal to zlib's crc32()), through
 * libdeflate's carry-less-multiply version, several times faster. Start at 0. */
uint32_t pd_crc32(uint32_t crc, const void *p, size_t n);

/*
 * The content hash of protocol version 2 (PROTOCOL.md, DATA_END): 16 bytes,
 * CRC-64/XZ (ECMA-182 polynomial) then CRC-64 with the Jones polynomial
 * (0xad93d23594c935a9; reflected, init and xorout all ones), each stored
 * little-endian. ISA-L's carry-less-multiply code: ~4.6 GB/s for both here,
 * against 216 MB/s for SHA-256 (no SHA extensions on these CPUs). Incremental:
 * start from pd_crc128_init(), then pd_crc128_update(), then pd_crc128_final().
 */
typedef struct pd_crc128 {
	uint64_t a, b;
} pd_crc128;
#define PD_CRC128_LEN 16
static inline pd_crc128 pd_crc128_init(void) { return (pd_crc128){0, 0}; }
void pd_crc128_update(pd_crc128 *c, const void *p, size_t n);
void pd_crc128_final(const pd_crc128 *c, uint8_t out[PD_CRC128_LEN]);
/* The whole computation over one buffer. */
void pd_crc128_of(const void *p, size_t n, uint8_t out[PD_CRC128_LEN]);

#endif
