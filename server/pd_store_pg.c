/*
 * pd_store_pg: the PostgreSQL backend of the state store (DESIGN §6), over
 * libpq. Several pdeltad nodes may share one database: every stream write is
 * a compare-and-set on the row version, so two nodes can never both apply a
 * stream's next sequence, and a node's cache is only a cache.
 *
 * Connections: one writer connection (pd_store.c's writer thread only) and a
 * pool of up to max_readers read connections that worker threads borrow per
 * call. The connection string is any libpq URI or key=value string; the
 * password comes from it, from PGPASSFILE / ~/.pgpass (libpq) or from
 * opts.password_file; TLS to the database is libpq's `sslmode`.
 *
 * Durability: the writer session runs with synchronous_commit = on, so a
 * COMMIT that returned is flushed (and replicated when the cluster has
 * synchronous standbys); pd_store.c runs completions only after it.
 *
 * Schema (created and migrated by pdeltad under an advisory lock, so nodes
 * starting together do not race; version PG_SCHEMA_VERSION):
 *
 *   pdelta_schema (application text, version integer)  -- one row ('pdelta', N)
 *   pdelta_streams (tenant, name: bytea, primary key; version, the
 *     metadata columns of pd_store_row as bigint / integer, its strings as
 *     bytea (any bytes, byte order, as with SQLite, whatever the database's
 *     encoding: one odd name can never fail a whole group commit);
 *     last_delta_crc, state_crc: CRC-32 of the two blobs; state, last_delta:
 *     bytea with STORAGE EXTERNAL, they are compressed already)
 *   index pdelta_streams_last_seen (last_seen_ms) for TTL expiry
 *
 * A newer or invalid (< 1) schema version is refused, and so is a
 * pdelta_streams table without a pdelta_schema row naming this application
 * (someone else's table), and tables the role may not read (PostgreSQL's
 * reason: permission denied for table ...).
 * Unsigned 64-bit values are stored bit-for-bit in bigint, as with SQLite.
 *
 * Connection loss: the failing transaction's writes complete with
 * PD_E_STORE (retryable; a COMMIT cut off midway may or may not have
 * committed, which idempotent retries absorb). The writer then reconnects
 * with a doubling backoff (PG_BACKOFF_MIN_MS .. PG_BACKOFF_MAX_MS), tried on
 * the next write or by the idle writer; until it is back, writes and reads
 * fail at once and pd_store_stats() says `unreachable` (/healthz: 503).
 */
#include "pd_store.h"

#include <endian.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pd_clock.h"
#include "pd_crc.h"
#include "pd_log.h"
#include "pd_textfile.h"

#define PG_APPLICATION "pdelta"
#define PG_SCHEMA_VERSION 1
#define PG_BACKOFF_MIN_MS 100
#define PG_BACKOFF_MAX_MS 5000
#define PG_CONNECT_TIMEOUT "5" /* seconds; the connection string may override it */
#define PG_MAX_FIELD (1000u * 1000u * 1000u) /* bytea values are at most 1 GB */
#define PG_CHECK_ROWS "256" /* rows per fetch of the integrity check */

static const char pg_schema[] =
	"CREATE TABLE pdelta_schema (application text NOT NULL, version integer NOT NULL);"
	"INSERT INTO pdelta_schema VALUES ('" PG_APPLICATION "', 1);"
	"CREATE TABLE pdelta_streams ("
	" tenant bytea NOT NULL,"
	" name bytea NOT NULL,"
	" version bigint NOT NULL,"
	" identities bigint NOT NULL,"
	" state_bytes bigint NOT NULL,"
	" last_seq bigint NOT NULL,"
	" last_hash bytea NOT NULL,"
	" last_status integer NOT NULL,"
	" last_reason bytea NOT NULL,"
	" last_samples_in bigint NOT NULL,"
	" last_samples_out bigint NOT NULL,"
	" incarnation bigint NOT NULL,"
	" last_time_nanos bigint NOT NULL,"
	" created_ms bigint NOT NULL,"
	" last_seen_ms bigint NOT NULL,"
	" deltas_served bigint NOT NULL,"
	" resets bigint NOT NULL,"
	" last_reset_reason bytea NOT NULL,"
	" last_delta_crc bigint,"
	" state_crc bigint NOT NULL,"
	" state bytea NOT NULL,"
	" last_delta bytea NOT NULL,"
	" PRIMARY KEY (tenant, name));"
	"ALTER TABLE pdelta_streams ALTER state SET STORAGE EXTERNAL,"
	" ALTER last_delta SET STORAGE EXTERNAL;"
	"CREATE INDEX pdelta_streams_last_seen ON pdelta_streams (last_seen_ms);";

/* Parameters $1..$21 of a put, in this order; $22 the expected version. */
#define PG_COLS                                                                             \
	"tenant, name, identities, state_bytes, last_seq, last_hash, last_status, last_reason, " \
	"last_samples_in, last_samples_out, incarnation, last_time_nanos, created_ms, "         \
	"last_seen_ms, deltas_served, resets, last_reset_reason, state, last_delta, "          \
	"last_delta_crc, state_crc"
#define PG_VALS                                                                             \
	"$1::bytea, $2::bytea, $3::int8, $4::int8, $5::int8, $6::bytea, $7::int4, $8::bytea, "   \
	"$9::int8, $10::int8, $11::int8, $12::int8, $13::int8, $14::int8, $15::int8, "        \
	"$16::int8, $17::bytea, $18::bytea, $19::bytea, $20::int8, $21::int8"
#define PG_SET                                                                              \
	"version = pdelta_streams.version + 1, identities = $3::int8, state_bytes = $4::int8, " \
	"last_seq = $5::int8, last_hash = $6::bytea, last_status = $7::int4, "                \
	"last_reason = $8::bytea, last_samples_in = $9::int8, last_samples_out = $10::int8, "  \
	"incarnation = $11::int8, last_time_nanos = $12::int8, last_seen_ms = $14::int8, "    \
	"deltas_served = $15::int8, resets = $16::int8, last_reset_reason = $17::bytea, "      \
	"state = $18::bytea, last_delta = $19::bytea, last_delta_crc = $20::int8, "           \
	"state_crc = $21::int8"
#define PG_NPUT 21

/* Result columns of reads: enum pd_store_col (the two blobs, or their
 * lengths, come last). */
#define PG_SELECT_META                                                                      \
	"SELECT version, tenant, name, identities, state_bytes, last_seq, last_hash, "        \
	"last_status, last_reason, last_samples_in, last_samples_out, incarnation, "          \
	"last_time_nanos, created_ms, last_seen_ms, deltas_served, resets, "                  \
	"last_reset_reason, "
#define PG_LEN(c) "octet_length(" c ")::int8"
#define PG_KEY "WHERE tenant = $1::bytea AND name = $2::bytea"

/* ---- statements (prepared once per connection) ------------------------------ */

/* Declared parameter types (OIDs), for statements that leave some
 * parameter unused (an update keeps created_ms). */
enum { OID_BYTEA = 17, OID_INT8 = 20, OID_INT4 = 23 };
static const Oid put_types[PG_NPUT + 1] = {
	OID_BYTEA, OID_BYTEA, OID_INT8, OID_INT8, OID_INT8, OID_BYTEA, OID_INT4, OID_BYTEA,
	OID_INT8, OID_INT8, OID_INT8, OID_INT8, OID_INT8, OID_INT8, OID_INT8, OID_INT8,
	OID_BYTEA, OID_BYTEA, OID_BYTEA, OID_INT8, OID_INT8, OID_INT8};

struct pg_stmt {
	const char *name, *sql;
	int ntypes; /* of put_types */
};

enum w_stmt { W_UPSERT, W_INSERT_NEW, W_UPDATE_IF, W_DELETE, W_RESET, W_EXPIRE, W__N };
static const struct pg_stmt w_stmts[W__N] = {
	[W_UPSERT] = {"w_upsert", "INSERT INTO pdelta_streams (version, " PG_COLS ") VALUES (1, "
				  PG_VALS ") ON CONFLICT (tenant, name) DO UPDATE SET " PG_SET, PG_NPUT},
	[W_INSERT_NEW] = {"w_insert_new", "INSERT INTO pdelta_streams (version, " PG_COLS
					  ") VALUES (1, " PG_VALS ") ON CONFLICT DO NOTHING", PG_NPUT},
	[W_UPDATE_IF] = {"w_update_if", "UPDATE pdelta_streams SET " PG_SET " " PG_KEY
					" AND version = $22::int8", PG_NPUT + 1},
	[W_DELETE] = {"w_delete", "DELETE FROM pdelta_streams " PG_KEY},
	[W_RESET] = {"w_reset", "UPDATE pdelta_streams SET version = version + 1, state = '', "
				"state_crc = 0, identities = 0, state_bytes = 0, last_time_nanos = 0, "
				"resets = resets + 1, last_reset_reason = $3::bytea " PG_KEY},
	/* SKIP LOCKED: rows another node is writing right now are not idle. */
	[W_EXPIRE] = {"w_expire", "DELETE FROM pdelta_streams WHERE (tenant, name) IN (SELECT "
				  "tenant, name FROM pdelta_streams WHERE last_seen_ms < $1::int8 "
				  "ORDER BY last_seen_ms LIMIT $2::int8 FOR UPDATE SKIP LOCKED)"},
};

/* Listings: the _T_ ones bind $1 tenant, $2 name prefix, $3 limit (NULL =
 * all); the _A_ ones $1 prefix, $2 limit. `name >= prefix` lets the primary
 * key bound the scan; starts_with decides. */
#define PG_NAME_RANGE(n) "name >= $" #n "::bytea AND substr(name, 1, length($" #n "::bytea)) = $" #n " "
#define PG_SELECT_NOBLOB PG_SELECT_META PG_LEN("state") ", " PG_LEN("last_delta") " FROM pdelta_streams "
enum r_stmt {
	R_GET, R_GET_STATE, R_GET_RESPONSE, R_LIST_T_NAME, R_LIST_A_NAME, R_LIST_T_SEEN,
	R_LIST_A_SEEN, R_COUNT_T, R_COUNT_A, R_TOT_T, R_TOT_A, R__N
};
static const struct pg_stmt r_stmts[R__N] = {
	[R_GET] = {"r_get", PG_SELECT_META "state, last_delta, last_delta_crc FROM pdelta_streams "
		   PG_KEY},
	[R_GET_STATE] = {"r_get_state", PG_SELECT_META "state, " PG_LEN("last_delta")
			 " FROM pdelta_streams " PG_KEY},
	[R_GET_RESPONSE] = {"r_get_response", PG_SELECT_META PG_LEN("state") ", last_delta, "
			    "last_delta_crc FROM pdelta_streams " PG_KEY},
	[R_LIST_T_NAME] = {"r_list_t_name", PG_SELECT_NOBLOB "WHERE tenant = $1::bytea AND "
			   PG_NAME_RANGE(2) "ORDER BY name LIMIT $3::int8"},
	[R_LIST_A_NAME] = {"r_list_a_name", PG_SELECT_NOBLOB "WHERE " PG_NAME_RANGE(1)
			   "ORDER BY tenant, name LIMIT $2::int8"},
	[R_LIST_T_SEEN] = {"r_list_t_seen", PG_SELECT_NOBLOB "WHERE tenant = $1::bytea AND "
			   PG_NAME_RANGE(2) "ORDER BY last_seen_ms DESC, name LIMIT $3::int8"},
	[R_LIST_A_SEEN] = {"r_list_a_seen", PG_SELECT_NOBLOB "WHERE " PG_NAME_RANGE(1)
			   "ORDER BY last_seen_ms DESC, tenant, name LIMIT $2::int8"},
	[R_COUNT_T] = {"r_count_t", "SELECT count(*)::int8 FROM pdelta_streams WHERE tenant = $1::bytea"},
	[R_COUNT_A] = {"r_count_a", "SELECT count(*)::int8 FROM pdelta_streams"},
	[R_TOT_T] = {"r_tot_t", "SELECT tenant, count(*)::int8, coalesce(sum(state_bytes), 0)::int8 "
		     "FROM pdelta_streams WHERE tenant = $1::bytea GROUP BY tenant"},
	[R_TOT_A] = {"r_tot_a", "SELECT tenant, count(*)::int8, coalesce(sum(state_bytes), 0)::int8 "
		     "FROM pdelta_streams GROUP BY tenant ORDER BY tenant"},
};

/* ---- parameters (binary, except text) ---------------------------------------- */

#define PG_MAX_PARAMS 22

/* Strings are bytea and integers binary, so every parameter is binary. */
struct pg_params {
	const char *v[PG_MAX_PARAMS];
	int len[PG_MAX_PARAMS];
	int fmt[PG_MAX_PARAMS];
	uint64_t num[PG_MAX_PARAMS]; /* big-endian storage of integer parameters */
	int n;
};

static void p_bytes(struct pg_params *p, const void *d, size_t n)
{
	p->v[p->n] = n ? d : "";
	p->len[p->n] = (int)n;
	p->fmt[p->n++] = 1;
}

/* Strings are stored as bytea (see the schema). */
static void p_name(struct pg_params *p, const char *s)
{
	p_bytes(p, s ? s : "", s ? strlen(s) : 0);
}

static void p_i64(struct pg_params *p, uint64_t x)
{
	p->num[p->n] = htobe64(x);
	p_bytes(p, &p->num[p->n], 8);
}

static void p_i32(struct pg_params *p, int32_t x)
{
	uint32_t be = htobe32((uint32_t)x);

	memcpy(&p->num[p->n], &be, 4);
	p_bytes(p, &p->num[p->n], 4);
}

static void p_null(struct pg_params *p)
{
	p->v[p->n] = NULL;
	p->len[p->n] = 0;
	p->fmt[p->n++] = 1;
}

/* ---- backend state -------------------------------------------------------------- */

struct pg_reader {
	pd_store_conn link; /* first: what the pool holds */
	PGconn *c;
	int served; /* has run a read: pooled since then, so possibly stale */
};

struct pg_be {
	char *conninfo;
	char *password; /* from password_file, or NULL */
	struct pd_store_opts o;

	PGconn *w; /* writer connection; NULL while the database is unreachable */
	uint64_t retry_at_ms, backoff_ms; /* next reconnect attempt, its delay */
	uint64_t attempts;                /* failed reconnects since the loss */
	char last_err[sizeof(((pd_err *)0)->msg)]; /* why the last reconnect failed, "" */
	atomic_int down;                  /* read by any thread */

	pd_store_pool *readers;
};

static uint64_t mono_ms(void) { return pd_now_ms(); }

/* libpq messages end in a newline; the store's messages are one line. */
static int pg_fail(pd_err *e, PGconn *c, const char *what)
{
	const char *msg = c ? PQerrorMessage(c) : "no connection";
	int n = (int)strcspn(msg, "\n");

	return pd_err_set(e, PD_E_STORE, "state store: %s: %.*s", what, n, msg);
}

static int pg_result_fail(pd_err *e, PGconn *c, PGresult *r, const char *what)
{
	const char *msg = r ? PQresultErrorMessage(r) : "";
	int n;

	if (!msg || !*msg)
		return pg_fail(e, c, what);
	n = (int)strcspn(msg, "\n");
	return pd_err_set(e, PD_E_STORE, "state store: %s: %.*s", what, n, msg);
}

/* Runs a statement without parameters that must succeed. */
static int pg_exec(PGconn *c, const char *sql, const char *what, pd_err *e)
{
	PGresult *r = PQexec(c, sql);
	ExecStatusType st = PQresultStatus(r);
	int rc = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK ? PD_OK
								 : pg_result_fail(e, c, r, what);

	PQclear(r);
	return rc;
}

static PGresult *pg_run(PGconn *c, const struct pg_stmt *st, const struct pg_params *p)
{
	return PQexecPrepared(c, st->name, p ? p->n : 0, p ? p->v : NULL, p ? p->len : NULL,
			      p ? p->fmt : NULL, 1);
}

static void pg_quiet(void *arg, const char *msg) {}

static int pg_prepare_all(PGconn *c, const struct pg_stmt *stmts, int n, pd_err *e)
{
	int rc = PD_OK;

	for (int i = 0; !rc && i < n; i++) {
		PGresult *r = PQprepare(c, stmts[i].name, stmts[i].sql, stmts[i].ntypes,
					stmts[i].ntypes ? put_types : NULL);
		if (PQresultStatus(r) != PGRES_COMMAND_OK)
			rc = pg_result_fail(e, c, r, stmts[i].name);
		PQclear(r);
	}
	return rc;
}

/* Opens a connection: our defaults first, the configured string after them
 * (so it overrides them), then the session settings. */
static int pg_connect(struct pg_be *b, PGconn **out, pd_err *e)
{
	/* TCP keepalives and a user timeout bound how long a write can hang on
	 * a database host that vanished without closing the connection. */
	const char *kw[10] = {"connect_timeout", "application_name", "keepalives_idle",
			      "keepalives_interval", "keepalives_count", "tcp_user_timeout"};
	const char *val[10] = {PG_CONNECT_TIMEOUT, "pdeltad", "10", "5", "3", "30000"};
	int k = 6, rc = PD_OK;
	PGconn *c;
	char buf[64];

	if (b->password) {
		kw[k] = "password";
		val[k++] = b->password;
	}
	kw[k] = "dbname";
	val[k++] = b->conninfo;
	kw[k] = val[k] = NULL;
	*out = NULL;
	c = PQconnectdbParams(kw, val, 1);
	if (!c)
		return pd_err_set(e, PD_E_NOMEM, "out of memory connecting to PostgreSQL");
	if (PQstatus(c) != CONNECTION_OK) {
		rc = pg_fail(e, c, "cannot connect to PostgreSQL");
		goto out;
	}
	PQsetNoticeProcessor(c, pg_quiet, NULL);
	snprintf(buf, sizeof buf, "SET lock_timeout = %d", b->o.busy_timeout_ms);
	rc = pg_exec(c, "SET synchronous_commit = on", "synchronous_commit", e);
	if (!rc)
		rc = pg_exec(c, buf, "lock_timeout", e);
out:
	if (rc)
		PQfinish(c);
	else
		*out = c;
	return rc;
}

/* ---- schema ------------------------------------------------------------------------ */

static int pg_single_int(PGconn *c, const char *sql, long long *out, pd_err *e)
{
	PGresult *r = PQexec(c, sql);
	int rc = PD_OK;

	*out = 0;
	if (PQresultStatus(r) != PGRES_TUPLES_OK)
		rc = pg_result_fail(e, c, r, "schema check");
	else if (PQntuples(r) == 1 && !PQgetisnull(r, 0, 0))
		*out = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
	else
		*out = -1;
	PQclear(r);
	return rc;
}

/* Our schema row, or the reason the tables are not ours; a query that
 * fails (a role without SELECT on it) is PostgreSQL's own reason. */
static int pg_schema_version(PGconn *c, long long *version, pd_err *e)
{
	PGresult *r = PQexec(c, "SELECT application, version FROM pdelta_schema");
	int rc = PD_OK;

	if (PQresultStatus(r) != PGRES_TUPLES_OK)
		rc = pg_result_fail(e, c, r, "schema check");
	else if (PQntuples(r) != 1 || strcmp(PQgetvalue(r, 0, 0), PG_APPLICATION))
		rc = pd_err_set(e, PD_E_STATE, "state store: table pdelta_schema is not a pdelta "
				"schema table (expected one row ('" PG_APPLICATION "', version))");
	else
		*version = strtoll(PQgetvalue(r, 0, 1), NULL, 10);
	PQclear(r);
	return rc;
}

/* Accepts our schema, refuses newer, invalid or foreign ones and tables the
 * role may not read (PostgreSQL's reason); a database without it gets it
 * when create is set (else that is fine too: the first start creates it).
 * Migrations from older versions go here when there are any (version 1 is
 * the first). */
static int pg_schema_inspect(PGconn *c, int create, pd_err *e)
{
	long long has_schema, has_streams, version = 0;
	int rc = pg_single_int(c, "SELECT (to_regclass('pdelta_schema') IS NOT NULL)::int",
			       &has_schema, e);

	if (!rc)
		rc = pg_single_int(c, "SELECT (to_regclass('pdelta_streams') IS NOT NULL)::int",
				   &has_streams, e);
	if (rc)
		return rc;
	if (!has_schema && has_streams)
		return pd_err_set(e, PD_E_STATE, "state store: the database has a table "
				  "pdelta_streams without pdelta_schema: not a pdelta state table");
	if (!has_schema)
		return create ? pg_exec(c, pg_schema, "create schema", e) : PD_OK;
	if ((rc = pg_schema_version(c, &version, e)))
		return rc;
	if (version > PG_SCHEMA_VERSION)
		return pd_err_set(e, PD_E_STATE, "state store: schema version %lld is newer than "
				  "this pdeltad (%d)", version, PG_SCHEMA_VERSION);
	if (version < 1)
		return pd_err_set(e, PD_E_STATE, "state store: pdelta_schema says version %lld: not "
				  "a valid schema version (1..%d)", version, PG_SCHEMA_VERSION);
	if (!has_streams)
		return pd_err_set(e, PD_E_STATE, "state store: pdelta schema version %lld without "
				  "its pdelta_streams table", version);
	/* a role that may not read it would fail every read after a clean start */
	return pg_exec(c, "SELECT 1 FROM pdelta_streams LIMIT 0", "schema check", e);
}

/* pg_schema_inspect with create, in one transaction under an advisory lock
 * (nodes starting together do not race). */
static int pg_schema_check(PGconn *c, pd_err *e)
{
	int rc = pg_exec(c, "BEGIN", "schema check", e);

	if (!rc)
		rc = pg_exec(c, "SELECT pg_advisory_xact_lock(1885619316)" /* "pdLt" */, "schema lock", e);
	if (!rc)
		rc = pg_schema_inspect(c, 1, e);
	if (!rc)
		return pg_exec(c, "COMMIT", "schema check commit", e);
	PQclear(PQexec(c, "ROLLBACK"));
	return rc;
}

/* ---- the writer connection and reconnects ------------------------------------ */

/* Connects the writer, checks (or creates) the schema, prepares its
 * statements: at open and at every reconnect. */
static int pg_writer_connect(struct pg_be *b, pd_err *e)
{
	int rc = pg_connect(b, &b->w, e);

	if (!rc)
		rc = pg_schema_check(b->w, e);
	if (!rc)
		rc = pg_prepare_all(b->w, w_stmts, W__N, e);
	if (rc && b->w) {
		PQfinish(b->w);
		b->w = NULL;
	}
	return rc;
}

/* The writer's connection broke: forget it, retry after a backoff. */
static void pg_lost(struct pg_be *b)
{
	if (!b->w || PQstatus(b->w) != CONNECTION_BAD)
		return;
	PQfinish(b->w);
	b->w = NULL;
	b->backoff_ms = PG_BACKOFF_MIN_MS;
	b->retry_at_ms = mono_ms() + b->backoff_ms;
	b->attempts = 0;
	atomic_store(&b->down, 1);
	pd_log(PD_LOG_ERROR, "state store: lost the connection to PostgreSQL; reconnecting "
	       "(backoff %d..%d ms)", PG_BACKOFF_MIN_MS, PG_BACKOFF_MAX_MS);
}

/* Writer thread: reconnect if the backoff allows. PD_OK when connected. */
static int pg_writer_ready(struct pg_be *b, pd_err *e)
{
	uint64_t now = mono_ms();
	int rc;

	if (b->w)
		return PD_OK;
	if (now < b->retry_at_ms)
		return pd_err_set(e, PD_E_STORE, "state store: PostgreSQL unreachable (%s), next "
				  "reconnect in %llu ms", b->last_err[0] ? b->last_err : "lost",
				  (unsigned long long)(b->retry_at_ms - now));
	rc = pg_writer_connect(b, e);
	if (rc) {
		const char *why = strncmp(e->msg, "state store: ", 13) ? e->msg : e->msg + 13;

		if (strcmp(b->last_err, why)) /* once per cause */
			pd_log(PD_LOG_ERROR, "state store: reconnect failed: %s", why);
		snprintf(b->last_err, sizeof b->last_err, "%s", why);
		b->attempts++;
		b->backoff_ms = b->backoff_ms * 2 > PG_BACKOFF_MAX_MS ? PG_BACKOFF_MAX_MS
								      : b->backoff_ms * 2;
		b->retry_at_ms = mono_ms() + b->backoff_ms;
		return rc;
	}
	atomic_store(&b->down, 0);
	b->last_err[0] = '\0';
	pd_log(PD_LOG_INFO, "state store: reconnected to PostgreSQL after %llu failed attempts",
	       (unsigned long long)b->attempts);
	return PD_OK;
}

static int pg_healthy(void *be)
{
	struct pg_be *b = be;
	return !atomic_load(&b->down);
}

/* Writer thread, idle: reconnect when down and the backoff allows (the
 * error of a failed attempt in e); when up, a round trip tells an idle node
 * that the database went away (keepalives and tcp_user_timeout bound how long
 * it can wait), so /healthz turns without waiting for a write. */
static int pg_reconnect(void *be, pd_err *e)
{
	struct pg_be *b = be;
	PGresult *r;

	if (!b->w)
		return mono_ms() < b->retry_at_ms ? PD_OK : pg_writer_ready(b, e);
	r = PQexec(b->w, "SELECT 1");
	PQclear(r);
	pg_lost(b);
	return PD_OK;
}

/* ---- the read pool ------------------------------------------------------------------ */

/* The pool's open and close functions. */
static int pg_reader_open(void *be, pd_store_conn **out, pd_err *e)
{
	struct pg_reader *r = calloc(1, sizeof *r);
	int rc = r ? pg_connect(be, &r->c, e)
		   : pd_err_set(e, PD_E_NOMEM, "out of memory opening a read connection");

	if (!rc && (rc = pg_prepare_all(r->c, r_stmts, R__N, e)))
		PQfinish(r->c);
	if (rc) {
		free(r);
		return rc;
	}
	*out = &r->link;
	return PD_OK;
}

static void pg_reader_close(pd_store_conn *c)
{
	struct pg_reader *r = (struct pg_reader *)c;

	PQfinish(r->c);
	free(r);
}

/* Borrows a read connection. While the writer knows the database is down,
 * reads fail at once instead of each waiting for a connect timeout. */
static int pg_acquire(struct pg_be *b, struct pg_reader **out, pd_err *e)
{
	pd_store_conn *c;
	int rc;

	*out = NULL;
	if (atomic_load(&b->down))
		return pd_err_set(e, PD_E_STORE, "state store: PostgreSQL unreachable");
	rc = pd_store_pool_get(b->readers, &c, e);
	if (!rc)
		*out = (struct pg_reader *)c;
	return rc;
}

/* Returns a read connection to the pool, or closes it when it broke. */
static void pg_release(struct pg_be *b, struct pg_reader *r)
{
	int broken = PQstatus(r->c) != CONNECTION_OK ||
		     PQtransactionStatus(r->c) != PQTRANS_IDLE;

	pd_store_pool_put(b->readers, &r->link, broken);
}

/* ---- lifecycle ------------------------------------------------------------------- */

static void pg_close(void *be)
{
	struct pg_be *b = be;

	pd_store_pool_free(b->readers);
	if (b->w)
		PQfinish(b->w);
	if (b->password) {
		explicit_bzero(b->password, strlen(b->password));
		free(b->password);
	}
	free(b->conninfo);
	free(b);
}

static int pg_read_password(struct pg_be *b, const char *path, pd_err *e)
{
	char why[256];

	if (!path || !*path)
		return PD_OK;
	b->password = pd_first_line(path, why, sizeof why);
	if (!b->password)
		return pd_err_set(e, PD_E_ARG, "state store: db_password_file: %s", why);
	if (why[0])
		pd_log(PD_LOG_WARN, "state store: db_password_file %s", why);
	return PD_OK;
}

/* The backend without connections: the options checked, the password read. */
static int pg_new(const struct pd_store_opts *o, struct pg_be **out, pd_err *e)
{
	struct pg_be *b;
	int rc;

	*out = NULL;
	if (o->max_db_bytes)
		return pd_err_set(e, PD_E_ARG, "state store: db_max_bytes is for SQLite only; "
				  "limit a PostgreSQL database with its own quotas");
	b = calloc(1, sizeof *b);
	if (!b || !(b->conninfo = strdup(o->path))) {
		free(b);
		return pd_err_set(e, PD_E_NOMEM, "out of memory opening the state store");
	}
	b->o = *o;
	b->o.path = b->conninfo;
	b->o.password_file = NULL; /* read now; the caller's string is not kept */
	atomic_init(&b->down, 0);
	b->readers = pd_store_pool_new(o->max_readers, pg_reader_open, pg_reader_close, b);
	rc = b->readers ? pg_read_password(b, o->password_file, e)
			: pd_err_set(e, PD_E_NOMEM, "out of memory opening the state store");
	if (rc) {
		pg_close(b);
		return rc;
	}
	*out = b;
	return PD_OK;
}

static int pg_open(const struct pd_store_opts *o, void **be, pd_err *e)
{
	struct pg_be *b;
	int rc = pg_new(o, &b, e);

	*be = NULL;
	if (!rc && (rc = pg_writer_connect(b, e)))
		pg_close(b);
	if (!rc)
		*be = b;
	return rc;
}

/* One connection, nothing created or changed: pg_schema_inspect. */
static int pg_probe(const struct pd_store_opts *o, pd_err *e)
{
	struct pg_be *b;
	PGconn *c = NULL;
	int rc = pg_new(o, &b, e);

	if (rc)
		return rc;
	rc = pg_connect(b, &c, e);
	if (!rc)
		rc = pg_schema_inspect(c, 0, e);
	if (c)
		PQfinish(c);
	pg_close(b);
	return rc;
}

static size_t pg_max_row(void *be) { return PG_MAX_FIELD; }

/* ---- writes (writer thread) ----------------------------------------------------- */

static int pg_begin(void *be, pd_err *e)
{
	struct pg_be *b = be;
	int rc = pg_writer_ready(b, e);

	if (!rc)
		rc = pg_exec(b->w, "BEGIN", "BEGIN", e);
	if (rc && b->w && PQstatus(b->w) == CONNECTION_BAD) {
		/* A connection gone stale while idle (the database restarted):
		 * nothing of the batch ran yet, so reconnect at once and retry. */
		pg_lost(b);
		b->retry_at_ms = 0;
		rc = pg_writer_ready(b, e);
		if (!rc)
			rc = pg_exec(b->w, "BEGIN", "BEGIN", e);
	}
	if (rc)
		pg_lost(b);
	return rc;
}

static int pg_commit(void *be, pd_err *e)
{
	struct pg_be *b = be;
	int rc = pg_exec(b->w, "COMMIT", "COMMIT", e);

	if (rc)
		pg_lost(b);
	return rc;
}

static void pg_rollback(void *be)
{
	struct pg_be *b = be;

	if (!b->w)
		return;
	if (PQstatus(b->w) == CONNECTION_OK && PQtransactionStatus(b->w) != PQTRANS_IDLE)
		PQclear(PQexec(b->w, "ROLLBACK"));
	pg_lost(b);
}

/* Runs a write; *changed = rows it touched. */
static int pg_write(struct pg_be *b, enum w_stmt which, const struct pg_params *p,
		    const char *what, uint64_t *changed, pd_err *e)
{
	PGresult *r = pg_run(b->w, &w_stmts[which], p);
	int rc = PD_OK;

	*changed = 0;
	if (PQresultStatus(r) == PGRES_COMMAND_OK)
		*changed = strtoull(PQcmdTuples(r), NULL, 10);
	else
		rc = pg_result_fail(e, b->w, r, what);
	PQclear(r);
	return rc;
}

static void bind_rec(struct pg_params *p, const pd_store_row *r, int64_t now_ms)
{
	p->n = 0;
	p_name(p, r->tenant);
	p_name(p, r->name);
	p_i64(p, r->identities);
	p_i64(p, r->state_bytes);
	p_i64(p, r->last_seq);
	p_bytes(p, r->last_hash, PD_STORE_HASH_LEN);
	p_i32(p, r->last_status);
	p_name(p, r->last_reason);
	p_i64(p, r->last_samples_in);
	p_i64(p, r->last_samples_out);
	p_i64(p, r->incarnation);
	p_i64(p, (uint64_t)r->last_time_nanos);
	p_i64(p, (uint64_t)(r->created_ms ? r->created_ms : now_ms));
	p_i64(p, (uint64_t)(r->last_seen_ms ? r->last_seen_ms : now_ms));
	p_i64(p, r->deltas_served);
	p_i64(p, r->resets);
	p_name(p, r->last_reset_reason);
	p_bytes(p, r->state, r->state_len);
	p_bytes(p, r->last_delta, r->last_delta_len);
	if (r->has_delta_crc)
		p_i64(p, r->last_delta_crc);
	else
		p_null(p);
	p_i64(p, pd_crc32(0, r->state, r->state_len));
}

static int pg_put(void *be, const pd_store_row *r, int has_expect, uint64_t expect_version,
		  int64_t now_ms, uint64_t *changed, pd_err *e)
{
	struct pg_params p;
	enum w_stmt which = W_UPSERT;

	if (has_expect)
		which = expect_version ? W_UPDATE_IF : W_INSERT_NEW;
	bind_rec(&p, r, now_ms);
	if (which == W_UPDATE_IF)
		p_i64(&p, expect_version);
	return pg_write(be, which, &p, "write stream", changed, e);
}

static int pg_key_write(void *be, enum pd_store_key_op op, const char *tenant,
			const char *name, const char *reason, uint64_t *changed, pd_err *e)
{
	struct pg_params p = {.n = 0};

	p_name(&p, tenant);
	p_name(&p, name);
	if (op == PD_STORE_KEY_RESET)
		p_name(&p, reason);
	return pg_write(be, op == PD_STORE_KEY_RESET ? W_RESET : W_DELETE, &p,
			op == PD_STORE_KEY_RESET ? "reset stream" : "delete stream", changed, e);
}

static int pg_expire(void *be, int64_t older_than_ms, uint64_t max_rows, uint64_t *n, pd_err *e)
{
	struct pg_be *b = be;
	struct pg_params p = {.n = 0};

	p_i64(&p, (uint64_t)older_than_ms);
	p_i64(&p, max_rows);
	return pg_write(b, W_EXPIRE, &p, "expire streams", n, e);
}

/* ---- reads --------------------------------------------------------------------------- */

static uint64_t col_u64(const PGresult *r, int row, int c)
{
	uint64_t x;
	uint32_t y;

	if (PQgetisnull(r, row, c))
		return 0;
	if (PQgetlength(r, row, c) == 8) {
		memcpy(&x, PQgetvalue(r, row, c), 8);
		return be64toh(x);
	}
	if (PQgetlength(r, row, c) == 4) { /* int4, sign-extended */
		memcpy(&y, PQgetvalue(r, row, c), 4);
		return (uint64_t)(int64_t)(int32_t)be32toh(y);
	}
	return 0;
}

static size_t col_len(const PGresult *r, int row, int c)
{
	return (size_t)PQgetlength(r, row, c);
}

/* One row of a result, for pd_store_row_fill. */
struct pg_row {
	const PGresult *r;
	int row;
};

static const void *pg_col_bytes(void *ctx, int c, size_t *len)
{
	struct pg_row *x = ctx;

	*len = col_len(x->r, x->row, c);
	return PQgetvalue(x->r, x->row, c);
}

static uint64_t pg_col_u64(void *ctx, int c)
{
	struct pg_row *x = ctx;
	return col_u64(x->r, x->row, c);
}

static int pg_col_null(void *ctx, int c)
{
	struct pg_row *x = ctx;
	return PQgetisnull(x->r, x->row, c);
}

static int fill_rec(const PGresult *r, int row, int blobs, pd_store_row *o, pd_err *e)
{
	struct pg_row x = {r, row};
	struct pd_store_result acc = {&x, pg_col_bytes, pg_col_u64, pg_col_null};

	return pd_store_row_fill(o, &acc, blobs, e);
}

/* Runs a read statement on a borrowed connection; *out is the result (the
 * caller clears it) when PD_OK. A pooled connection the server dropped
 * (restart, idle timeout) is closed and the read tried again on the next
 * one, for as long as each failure is a lost connection that had served
 * before: after a restart every pooled connection is stale, so at most
 * max_readers + 1 attempts, the last on a new connection, whose failure is
 * the answer. Reads change nothing, so retrying is always safe. */
static int pg_query(struct pg_be *b, enum r_stmt which, const struct pg_params *p,
		    PGresult **out, pd_err *e)
{
	struct pg_reader *c;
	int rc = PD_OK, stale = 1;

	*out = NULL;
	for (size_t attempt = 0; attempt <= b->o.max_readers && stale; attempt++) {
		if ((rc = pg_acquire(b, &c, e)))
			return rc;
		*out = pg_run(c->c, &r_stmts[which], p);
		rc = PD_OK;
		stale = c->served && PQstatus(c->c) == CONNECTION_BAD;
		c->served = 1;
		if (PQresultStatus(*out) != PGRES_TUPLES_OK) {
			rc = pg_result_fail(e, c->c, *out, r_stmts[which].name);
			PQclear(*out);
			*out = NULL;
		}
		pg_release(b, c);
	}
	return rc;
}

static int pg_get(void *be, const char *tenant, const char *name, unsigned what,
		  pd_store_row *out, pd_err *e)
{
	struct pg_params p = {.n = 0};
	enum r_stmt which = what == PD_STORE_GET_STATE      ? R_GET_STATE
			    : what == PD_STORE_GET_RESPONSE ? R_GET_RESPONSE
							    : R_GET;
	PGresult *r;
	int rc;

	p_name(&p, tenant);
	p_name(&p, name);
	if ((rc = pg_query(be, which, &p, &r, e)))
		return rc;
	if (PQntuples(r) == 0)
		rc = pd_err_set(e, PD_E_NOTFOUND, "no stream %s/%s", tenant, name);
	else
		rc = fill_rec(r, 0,
			      (what & PD_STORE_GET_STATE ? PD_STORE_FILL_STATE : 0) |
				      (what & PD_STORE_GET_RESPONSE ? PD_STORE_FILL_DELTA : 0),
			      out, e);
	PQclear(r);
	return rc;
}

static enum r_stmt list_stmt(const char *tenant, enum pd_store_sort sort)
{
	if (sort == PD_STORE_SORT_LAST_SEEN)
		return tenant ? R_LIST_T_SEEN : R_LIST_A_SEEN;
	return tenant ? R_LIST_T_NAME : R_LIST_A_NAME;
}

static int pg_list(void *be, const char *tenant, const char *prefix, enum pd_store_sort sort,
		   size_t limit, pd_store_row_fn fn, void *arg, pd_err *e)
{
	struct pg_params p = {.n = 0};
	pd_store_row rec = {0};
	PGresult *r;
	int rc;

	if (tenant)
		p_name(&p, tenant);
	p_name(&p, prefix);
	if (limit)
		p_i64(&p, limit);
	else
		p_null(&p);
	if ((rc = pg_query(be, list_stmt(tenant, sort), &p, &r, e)))
		return rc;
	for (int i = 0; !rc && i < PQntuples(r); i++) {
		rc = fill_rec(r, i, 0, &rec, e);
		if (!rc && fn(arg, &rec))
			break;
	}
	pd_store_row_free(&rec);
	PQclear(r);
	return rc;
}

/* Runs `one` for a tenant, or `all` (no parameters) when tenant is NULL. */
static int pg_query_tenant(struct pg_be *b, const char *tenant, enum r_stmt one,
			   enum r_stmt all, PGresult **out, pd_err *e)
{
	struct pg_params p = {.n = 0};

	if (tenant)
		p_name(&p, tenant);
	return pg_query(b, tenant ? one : all, &p, out, e);
}

static int pg_count(void *be, const char *tenant, uint64_t *out, pd_err *e)
{
	PGresult *r;
	int rc = pg_query_tenant(be, tenant, R_COUNT_T, R_COUNT_A, &r, e);

	*out = 0;
	if (rc)
		return rc;
	*out = PQntuples(r) ? col_u64(r, 0, 0) : 0;
	PQclear(r);
	return PD_OK;
}

static int pg_tenant_totals(void *be, const char *tenant, pd_store_tenant_fn fn, void *arg,
			    pd_err *e)
{
	PGresult *r;
	int rc = pg_query_tenant(be, tenant, R_TOT_T, R_TOT_A, &r, e);

	if (rc)
		return rc;
	for (int i = 0; i < PQntuples(r); i++)
		if (fn(arg, PQgetvalue(r, i, 0), col_u64(r, i, 1), col_u64(r, i, 2)))
			break;
	PQclear(r);
	return PD_OK;
}

/* ---- integrity check ------------------------------------------------------------------ */

/* One row of the check: both blobs against their stored CRC-32s. */
static int check_row(const PGresult *r, int i, pd_err *e)
{
	uint32_t state_crc = pd_crc32(0, PQgetvalue(r, i, 2), col_len(r, i, 2));
	uint32_t delta_crc = pd_crc32(0, PQgetvalue(r, i, 4), col_len(r, i, 4));

	if (state_crc != (uint32_t)col_u64(r, i, 3))
		return pd_err_set(e, PD_E_STATE, "state store integrity: state of %s/%s fails its "
				  "checksum", PQgetvalue(r, i, 0), PQgetvalue(r, i, 1));
	if (!PQgetisnull(r, i, 5) && delta_crc != (uint32_t)col_u64(r, i, 5))
		return pd_err_set(e, PD_E_STATE, "state store integrity: kept response of %s/%s "
				  "fails its checksum", PQgetvalue(r, i, 0), PQgetvalue(r, i, 1));
	return PD_OK;
}

/* Walks every row in key order, PG_CHECK_ROWS at a time (keyset pagination,
 * so no long-lived cursor or snapshot is held). */
static int check_rows(PGconn *c, pd_err *e)
{
	static const char sql[] =
		"SELECT tenant, name, state, state_crc, last_delta, last_delta_crc "
		"FROM pdelta_streams WHERE (tenant, name) > ($1::bytea, $2::bytea) "
		"ORDER BY tenant, name LIMIT " PG_CHECK_ROWS;
	char *tenant = strdup(""), *name = strdup("");
	int rc = PD_OK, n = atoi(PG_CHECK_ROWS), full = n;

	while (!rc && n == full && tenant && name) {
		struct pg_params p = {.n = 0};
		PGresult *r;

		p_name(&p, tenant);
		p_name(&p, name);
		r = PQexecParams(c, sql, 2, NULL, p.v, p.len, p.fmt, 1);

		if (PQresultStatus(r) != PGRES_TUPLES_OK) {
			rc = pg_result_fail(e, c, r, "integrity check");
			PQclear(r);
			break;
		}
		n = PQntuples(r);
		for (int i = 0; !rc && i < n; i++)
			rc = check_row(r, i, e);
		if (n) {
			free(tenant);
			free(name);
			tenant = strndup(PQgetvalue(r, n - 1, 0), col_len(r, n - 1, 0));
			name = strndup(PQgetvalue(r, n - 1, 1), col_len(r, n - 1, 1));
		}
		PQclear(r);
	}
	if (!rc && (!tenant || !name))
		rc = pd_err_set(e, PD_E_NOMEM, "out of memory in the integrity check");
	free(tenant);
	free(name);
	return rc;
}

/* The schema row is ours and current, then every row's checksums. */
static int pg_integrity_check(void *be, pd_err *e)
{
	struct pg_be *b = be;
	struct pg_reader *c;
	long long version = 0;
	int rc = pg_acquire(b, &c, e);

	if (rc)
		return rc;
	rc = pg_schema_version(c->c, &version, e);
	if (!rc && version != PG_SCHEMA_VERSION)
		rc = pd_err_set(e, PD_E_STATE, "state store integrity: schema version %lld, "
				"expected %d", version, PG_SCHEMA_VERSION);
	if (!rc)
		rc = check_rows(c->c, e);
	pg_release(b, c);
	return rc;
}

const struct pd_store_backend pd_store_pg_backend = {
	.name = "postgresql",
	.open = pg_open,
	.close = pg_close,
	.max_row = pg_max_row,
	.begin = pg_begin,
	.put = pg_put,
	.key_write = pg_key_write,
	.expire = pg_expire,
	.commit = pg_commit,
	.rollback = pg_rollback,
	.get = pg_get,
	.list = pg_list,
	.count = pg_count,
	.tenant_totals = pg_tenant_totals,
	.integrity_check = pg_integrity_check,
	.healthy = pg_healthy,
	.reconnect = pg_reconnect,
	.probe = pg_probe,
};
