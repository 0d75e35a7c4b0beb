/* pd_crc: CRC-32 and the 128-bit content hash over libdeflate and ISA-L. See pd_crc.h. */
#include "pd_crc.h"

#include <isa-l/crc64.h>
#include <libdeflate.h>

uint32_t pd_crc32(uint32_t crc, const void *p, size_t n)
{
	return libdeflate_crc32(crc, p, n);
}

void pd_crc128_update(pd_crc128 *c, const void *p, size_t n)
{
	if (!n)
		return;
	c->a = crc64_ecma_refl(c->a, p, n);
	c->b = crc64_jones_refl(c->b, p, n);
}

void pd_crc128_final(const pd_crc128 *c, uint8_t out[PD_CRC128_LEN])
{
	for (int i = 0; i < 8; i++) {
		out[i] = (uint8_t)(c->a >> (8 * i));
		out[8 + i] = (uint8_t)(c->b >> (8 * i));
	}
}

void pd_crc128_of(const void *p, size_t n, uint8_t out[PD_CRC128_LEN])
{
	pd_crc128 c = pd_crc128_init();
	pd_crc128_update(&c, p, n);
	pd_crc128_final(&c, out);
}
