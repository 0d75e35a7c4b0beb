/* test_settings: the one settings table (server/pd_settings) is what the config
 * parser, the service and the store start from; the store caps are settings;
 * the settings the chosen backend ignores are named (pd_config_ignored). */
#include <stdio.h>
#include <string.h>

#include "pd_config.h"
#include "pd_service.h"
#include "pd_settings.h"
#include "pd_store.h"
#include "tharness.h"

static void check_table(void)
{
	for (size_t i = 0; i < PD_SET__COUNT; i++) {
		const pd_setting *s = &pd_settings[i];
		int ok = s->name && s->help &&
			 (s->type == PD_SETT_STR || (s->def >= s->min && s->def <= s->max));

		if (!ok)
			fprintf(stderr, "setting %zu (%s): missing or default outside its bounds\n", i,
				s->name ? s->name : "?");
		CHECK(ok);
	}
}

static void check_defaults(void)
{
	pd_service_opts so;
	struct pd_store_opts st;
	pd_config c;
	pd_err e;

	CHECK(pd_config_init(&c, &e) == PD_OK);
	pd_service_opts_init(&so);
	pd_store_opts_init(&st);
	CHECK(so.cache_bytes == c.cache_bytes && c.cache_bytes == 256u << 20);
	CHECK((uint64_t)so.stream_ttl_ms == c.stream_ttl_ms);
	CHECK(so.max_streams_per_tenant == c.max_streams_per_tenant);
	CHECK(so.max_queued_jobs == c.max_queued_jobs && so.max_queued_bytes == c.max_queued_bytes);
	CHECK(so.chunk_bytes == c.chunk_bytes && (uint64_t)so.gzip_level == c.gzip_level);
	CHECK(so.worker_keep_bytes == c.worker_keep_bytes);
	CHECK(st.max_queue == c.store_max_queue && st.max_queue == 10000);
	CHECK(st.max_queue_bytes == c.store_max_queue_bytes);
	CHECK(st.max_batch == c.store_max_batch && st.max_batch_bytes == c.store_max_batch_bytes);
	CHECK((uint64_t)st.busy_timeout_ms == c.store_busy_timeout_ms);
	CHECK(st.max_readers == c.store_max_readers && st.max_readers == 16);
	pd_config_free(&c);
}

static void check_store_caps_settable(void)
{
	pd_config c;
	pd_err e;

	CHECK(pd_config_init(&c, &e) == PD_OK);
	CHECK(pd_config_set(&c, "store-max-queue", "20k", &e) == PD_OK && c.store_max_queue == 20480);
	CHECK(pd_config_set(&c, "store_max_queue_bytes", "64m", &e) == PD_OK &&
	      c.store_max_queue_bytes == 64u << 20);
	CHECK(pd_config_set(&c, "store_max_batch", "1", &e) == PD_OK && c.store_max_batch == 1);
	CHECK(pd_config_set(&c, "store_max_batch_bytes", "1m", &e) == PD_OK &&
	      c.store_max_batch_bytes == 1u << 20);
	CHECK(pd_config_set(&c, "store_busy_timeout_ms", "2s", &e) == PD_OK &&
	      c.store_busy_timeout_ms == 2000);
	CHECK(pd_config_set(&c, "store_max_readers", "4", &e) == PD_OK && c.store_max_readers == 4);
	CHECK(pd_config_set(&c, "store_max_readers", "0", &e) == PD_E_ARG &&
	      strstr(e.msg, "store_max_readers"));
	CHECK(pd_config_set(&c, "store_max_queue", "many", &e) == PD_E_ARG &&
	      strstr(e.msg, "not a number"));
	CHECK(pd_config_set(&c, "store_busy_timeout_ms", "5x", &e) == PD_E_ARG &&
	      strstr(e.msg, "not a duration"));
	CHECK(pd_config_set(&c, "cache_bytes", "17179869184g", &e) == PD_E_ARG &&
	      strstr(e.msg, "out of range"));
	pd_config_free(&c);
}

/* The store's options come from the settings; db_password_file with SQLite
 * and db_sync given (either value) with PostgreSQL are named, the defaults
 * never. */
static void check_ignored(void)
{
	struct pd_store_opts st;
	const char *msgs[4];
	pd_config c;
	pd_err e;

	CHECK(pd_config_init(&c, &e) == PD_OK);
	CHECK(pd_config_ignored(&c, msgs, 4) == 0);
	CHECK(pd_config_set(&c, "db_password_file", "/run/secrets/pw", &e) == PD_OK);
	CHECK(pd_config_ignored(&c, msgs, 4) == 1 &&
	      strstr(msgs[0], "db_password_file has no effect with SQLite"));
	CHECK(pd_config_ignored(&c, msgs, 0) == 0);
	CHECK(pd_config_set(&c, "db", "host=db dbname=pdelta", &e) == PD_OK);
	CHECK(pd_config_ignored(&c, msgs, 4) == 0);
	CHECK(pd_config_set(&c, "db-sync", "yes", &e) == PD_OK);
	CHECK(pd_config_ignored(&c, msgs, 4) == 1 &&
	      strstr(msgs[0], "db_sync has no effect with PostgreSQL"));
	CHECK(pd_config_set(&c, "db", "state.db", &e) == PD_OK);
	CHECK(pd_config_ignored(&c, msgs, 4) == 1 && strstr(msgs[0], "db_password_file"));
	CHECK(pd_config_set(&c, "db_sync", "no", &e) == PD_OK &&
	      pd_config_set(&c, "db_max_bytes", "1m", &e) == PD_OK);
	pd_config_store_opts(&c, &st);
	CHECK(!strcmp(st.path, "state.db") && !strcmp(st.password_file, "/run/secrets/pw"));
	CHECK(st.synchronous_full == 0 && st.max_db_bytes == 1u << 20 && st.max_readers == 16);
	pd_config_free(&c);
}

int main(void)
{
	check_table();
	check_defaults();
	check_store_caps_settable();
	check_ignored();
	return TH_DONE();
}
