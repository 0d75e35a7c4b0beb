/* test_buf: the capped buffer and the growable arrays (common/pd_buf):
 * growth by doubling from the first size, the cap, contents kept, and sizes
 * whose byte count would overflow refused instead of wrapping. */
#include <stdint.h>
#include <string.h>

#include "pd_buf.h"
#include "tharness.h"

static void test_buf(void)
{
	pd_buf b;
	pd_err e = {0};
	uint8_t chunk[3000];

	memset(chunk, 'x', sizeof chunk);
	pd_buf_init(&b, 10000);
	CHECK(pd_buf_append(&b, "ab", 2, &e) == PD_OK && b.alloc == 4096);
	CHECK(pd_buf_append(&b, chunk, sizeof chunk, &e) == PD_OK && b.alloc == 4096);
	CHECK(pd_buf_append(&b, chunk, sizeof chunk, &e) == PD_OK && b.alloc == 8192);
	CHECK(pd_buf_append(&b, chunk, sizeof chunk, &e) == PD_OK);
	EXPECT(b.alloc == 10000, "growth past the cap: %zu", b.alloc); /* 16384 clamped */
	CHECK(b.len == 9002 && !memcmp(b.data, "abxx", 4) && b.data[9001] == 'x');
	CHECK(pd_buf_append(&b, chunk, 999, &e) == PD_E_LIMIT && b.len == 9002);
	CHECK(pd_buf_reserve(&b, SIZE_MAX, &e) == PD_E_LIMIT);
	pd_buf_reset(&b);
	CHECK(b.len == 0 && b.alloc == 10000);
	pd_buf_free(&b);
	CHECK(!b.data && !b.alloc);
}

struct with_vec {
	PD_VEC(uint32_t, v);
};

static int grow(struct with_vec *w, size_t need, pd_err *e)
{
	return PD_GROW(w->v, need);
}

static void test_array(void)
{
	struct with_vec w = {0};
	pd_err e = {0};

	CHECK(grow(&w, 1, &e) == PD_OK && w.v_cap == 64);
	w.v[63] = 7;
	CHECK(grow(&w, 64, &e) == PD_OK && w.v_cap == 64);
	CHECK(grow(&w, 65, &e) == PD_OK && w.v_cap == 128 && w.v[63] == 7);
	CHECK(grow(&w, 1000, &e) == PD_OK && w.v_cap == 1024 && w.v[63] == 7);
	/* Element count fine, byte count past SIZE_MAX: refused, array kept. */
	CHECK(grow(&w, SIZE_MAX / 2, &e) == PD_E_NOMEM);
	CHECK(w.v_cap == 1024 && w.v[63] == 7);
	CHECK(PD_VEC_BYTES(w.v) == 1024 * sizeof(uint32_t));
	PD_VEC_FREE(w.v);
	CHECK(!w.v && !w.v_cap);
}

int main(void)
{
	test_buf();
	test_array();
	return TH_DONE();
}
