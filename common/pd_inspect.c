/* pd_inspect: the summary of one profile, over the engine's index. See pd_inspect.h. */
#include "pd_inspect.h"

#include <string.h>

#include "pd_pprof.h"
#include "pd_state.h"

/* Stack depth and label count of sample i. */
static void sample_shape(const pd_pprof *x, uint32_t i, uint64_t *depth, uint64_t *labels)
{
	pd_rd r = pd_pprof_rd(x, x->smp[i]);
	*depth = 0;
	while (pd_rd_more(&r)) {
		uint32_t f, wt;
		const uint8_t *p;
		size_t len;
		uint64_t v;
		if (pd_rd_key(&r, &f, &wt))
			break;
		if (f == PD_SAMPLE_LOCATION_ID && wt == PB_LEN && !pd_rd_len(&r, &p, &len)) {
			pd_rd lr = pd_rd_make(p, len);
			while (pd_rd_more(&lr) && !pd_rd_varint(&lr, &v))
				(*depth)++;
		} else if (f == PD_SAMPLE_LOCATION_ID && wt == PB_VARINT && !pd_rd_varint(&r, &v)) {
			(*depth)++;
		} else {
			if (f == PD_SAMPLE_LABEL)
				(*labels)++;
			if (pd_rd_skip(&r, wt))
				break;
		}
	}
}

static void summarise(const pd_engine_view *v, pd_inspect *o)
{
	const pd_pprof *x = v->ix;
	uint32_t t, u;

	o->nsample_types = x->nst;
	for (uint32_t c = 0; c < x->nst && c < 16; c++) {
		pd_pprof_str(x, x->st_type[c], &o->type_name[c], &o->type_name_len[c]);
		pd_pprof_str(x, x->st_unit[c], &o->type_unit[c], &o->type_unit_len[c]);
	}
	pd_pprof_period_type(x, &t, &u);
	pd_pprof_str(x, t, &o->period_type, &o->period_type_len);
	pd_pprof_str(x, u, &o->period_unit, &o->period_unit_len);
	o->period = x->period;
	o->time_nanos = x->time_nanos;
	o->duration_nanos = x->duration_nanos;
	o->samples = x->nsmp;
	o->locations = x->nloc;
	o->functions = x->nfn;
	o->mappings = x->nmap;
	o->strings = x->nstr;
	o->bytes_raw = x->len;
	for (uint32_t i = 0; i < x->nloc; i++)
		o->addr0_locations += pd_pprof_loc_address(x, i) == 0;
	for (uint32_t i = 0; i < x->nsmp; i++) {
		const int64_t *val = v->vals + (size_t)i * x->nst;
		uint64_t depth, zero = 1;
		for (uint32_t c = 0; c < x->nst; c++)
			zero &= val[c] == 0;
		o->zero_samples += zero && v->first[i];
		sample_shape(x, i, &depth, &o->labels);
		if (depth > o->max_depth)
			o->max_depth = depth;
	}
}

int pd_engine_inspect(pd_engine *eng, const void *in, size_t n, pd_inspect *o, pd_err *e)
{
	pd_engine_view v;
	pd_state *tmp;
	int rc;

	memset(o, 0, sizeof *o);
	tmp = pd_state_new();
	if (!tmp)
		return pd_err_set(e, PD_E_NOMEM, "out of memory");
	/* The full validation and hash pass, through a throw-away state. */
	if ((rc = pd_engine_index_hashed(eng, in, n, tmp, &v, e)) == PD_OK) {
		summarise(&v, o);
		o->unique_identities = pd_state_count(tmp);
		o->bytes_in = n;
	}
	pd_state_free(tmp);
	return rc;
}
