/*
 * pd_store_sqlite: the embedded SQLite backend of the state store.
 *
 * One writer connection (used only by pd_store.c's writer thread) and a pool
 * of read connections that worker threads borrow per call. WAL mode lets the
 * readers run on the last committed snapshot while the writer writes; every
 * statement is prepared once per connection (SQLITE_PREPARE_PERSISTENT).
 *
 * Schema: one row per stream in `streams`, large blobs as the last columns so
 * listings and counts never read their overflow pages. The file is tagged
 * with PRAGMA application_id and versioned with PRAGMA user_version; a newer
 * or foreign database is refused rather than touched.
 *
 * Durability: synchronous=FULL (default) fsyncs the WAL on every COMMIT, so a
 * COMMIT that returned is on disk, and pd_store.c runs completions only
 * after that.
 */
#include "pd_store.h"

#include <errno.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

#define SQ_APP_ID 0x70644c74 /* "pdLt" */
/* 1: first schema. 2: last_delta_crc (CRC-32 of the kept response; NULL in
 * rows written by schema 1, see sq_migrate). */
#define SQ_SCHEMA_VERSION 2
#define SQ_JOURNAL_SIZE_LIMIT (64 << 20) /* WAL file truncated to this after checkpoints */
/* Page size of new database files. A medium stream's row (state + kept
 * response, ~420 KB) is an overflow chain: 7 pages of 64 KiB instead of 105 of
 * 4 KiB, so far fewer WAL frames, page reads and syscalls per commit. Measured
 * with two servers side by side on the same load (500 heap/mutex-medium
 * streams, ~1,500 requests each): writer thread CPU 2.81 s (4 KiB) -> 2.06 s
 * (64 KiB, checkpoints every 4 MiB as below); with 2,000 small streams not
 * worse (2.84 -> 2.60 s); the file grows ~6 % (partly filled last pages). */
#define SQ_PAGE_SIZE 65536
/* WAL bytes between automatic checkpoints. With 64 KiB pages and SQLite's
 * default of 1,000 pages, each checkpoint copied 64 MiB and a few commits
 * took over 50 ms (4 of 1,481 in a 500-stream run, p99 43.9 ms); at 4 MiB:
 * none over 50 ms, p99 30.4 ms, writer CPU 2.06 s against 2.81 s with 4 KiB
 * pages in the same side-by-side run. */
#define SQ_WAL_CHECKPOINT_BYTES (4 << 20)
/* The smallest db_max_bytes: a new file's schema takes 4 pages of
 * SQ_PAGE_SIZE (256 KiB), and a stream's row at least a page more per B-tree
 * it touches; this leaves room for the schema twice over. Smaller caps fail
 * the schema's creation, or every write soon after. */
#define SQ_MIN_DB_BYTES (512u << 10)

static const char sq_schema[] =
	"CREATE TABLE streams ("
	" id INTEGER PRIMARY KEY,"
	" tenant TEXT NOT NULL,"
	" name TEXT NOT NULL,"
	" version INTEGER NOT NULL,"
	" identities INTEGER NOT NULL,"
	" state_bytes INTEGER NOT NULL,"
	" last_seq INTEGER NOT NULL,"
	" last_hash BLOB NOT NULL,"
	" last_status INTEGER NOT NULL,"
	" last_reason TEXT NOT NULL,"
	" last_samples_in INTEGER NOT NULL,"
	" last_samples_out INTEGER NOT NULL,"
	" incarnation INTEGER NOT NULL,"
	" last_time_nanos INTEGER NOT NULL,"
	" created_ms INTEGER NOT NULL,"
	" last_seen_ms INTEGER NOT NULL,"
	" deltas_served INTEGER NOT NULL,"
	" resets INTEGER NOT NULL,"
	" last_reset_reason TEXT NOT NULL,"
	" last_delta_crc INTEGER,"
	" state BLOB NOT NULL,"
	" last_delta BLOB NOT NULL,"
	" UNIQUE (tenant, name));"
	"CREATE INDEX streams_last_seen ON streams (last_seen_ms);";

/* Row columns in bind order: parameter ?N is column N of this list. */
#define SQ_COLS                                                                             \
	"tenant, name, identities, state_bytes, last_seq, last_hash, last_status, last_reason, " \
	"last_samples_in, last_samples_out, incarnation, last_time_nanos, created_ms, "         \
	"last_seen_ms, deltas_served, resets, last_reset_reason, state, last_delta, "          \
	"last_delta_crc"
#define SQ_VALS                                                                             \
	"?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20"
/* Everything a put replaces (not tenant, name, created_ms). */
#define SQ_SET                                                                              \
	"version = version + 1, identities = ?3, state_bytes = ?4, last_seq = ?5, "           \
	"last_hash = ?6, last_status = ?7, last_reason = ?8, last_samples_in = ?9, "          \
	"last_samples_out = ?10, incarnation = ?11, last_time_nanos = ?12, "                  \
	"last_seen_ms = ?14, deltas_served = ?15, resets = ?16, last_reset_reason = ?17, "    \
	"state = ?18, last_delta = ?19, last_delta_crc = ?20"
#define SQ_P_EXPECT 21

/* Result columns of reads: version, then SQ_COLS order (blob lengths in
 * listings): enum pd_store_col. */
#define SQ_SELECT "SELECT version, " SQ_COLS " FROM streams "
/* Every column but the two blobs, which the reads below add (or their lengths). */
#define SQ_SELECT_META                                                                      \
	"SELECT version, tenant, name, identities, state_bytes, last_seq, last_hash, "        \
	"last_status, last_reason, last_samples_in, last_samples_out, incarnation, "          \
	"last_time_nanos, created_ms, last_seen_ms, deltas_served, resets, "                  \
	"last_reset_reason, "
#define SQ_SELECT_NOBLOB SQ_SELECT_META "length(state), length(last_delta) FROM streams "

/* ---- statements ------------------------------------------------------------ */

enum w_stmt {
	W_BEGIN, W_COMMIT, W_ROLLBACK, W_UPSERT, W_INSERT_NEW, W_UPDATE_IF, W_DELETE, W_RESET,
	W_EXPIRE, W__N
};

static const char *const w_sql[W__N] = {
	[W_BEGIN] = "BEGIN IMMEDIATE",
	[W_COMMIT] = "COMMIT",
	[W_ROLLBACK] = "ROLLBACK",
	[W_UPSERT] = "INSERT INTO streams (version, " SQ_COLS ") VALUES (1, " SQ_VALS ") "
		     "ON CONFLICT (tenant, name) DO UPDATE SET " SQ_SET,
	[W_INSERT_NEW] = "INSERT INTO streams (version, " SQ_COLS ") VALUES (1, " SQ_VALS ") "
			 "ON CONFLICT (tenant, name) DO NOTHING",
	[W_UPDATE_IF] = "UPDATE streams SET " SQ_SET " WHERE tenant = ?1 AND name = ?2 "
			"AND version = ?21", /* SQ_P_EXPECT */
	[W_DELETE] = "DELETE FROM streams WHERE tenant = ?1 AND name = ?2",
	[W_RESET] = "UPDATE streams SET version = version + 1, state = x'', identities = 0, "
		    "state_bytes = 0, last_time_nanos = 0, resets = resets + 1, "
		    "last_reset_reason = ?3 WHERE tenant = ?1 AND name = ?2",
	[W_EXPIRE] = ("DELETE FROM streams WHERE id IN (SELECT id FROM streams "
		      "WHERE last_seen_ms < ?1 ORDER BY last_seen_ms LIMIT ?2)"),
};

enum r_stmt {
	R_GET, R_GET_STATE, R_GET_RESPONSE, R_LIST_T_NAME, R_LIST_A_NAME, R_LIST_T_SEEN, R_LIST_A_SEEN, R_COUNT_T, R_COUNT_A,
	R_TOT_T, R_TOT_A, R_CHECK, R__N
};

/* Listings bind ?1 tenant (only the _T_ ones use it), ?2 lowest name, ?3 name
 * upper bound (NULL = none), ?4 limit (-1 = none). */
#define SQ_NAME_RANGE "name >= ?2 AND (?3 IS NULL OR name < ?3) "
static const char *const r_sql[R__N] = {
	[R_GET] = SQ_SELECT "WHERE tenant = ?1 AND name = ?2",
	/* One blob of the two, the other by length (PD_STORE_GET_*). */
	[R_GET_STATE] = SQ_SELECT_META "state, length(last_delta) FROM streams "
				       "WHERE tenant = ?1 AND name = ?2",
	[R_GET_RESPONSE] = SQ_SELECT_META "length(state), last_delta, last_delta_crc FROM streams "
					  "WHERE tenant = ?1 AND name = ?2",
	[R_LIST_T_NAME] = SQ_SELECT_NOBLOB "WHERE tenant = ?1 AND " SQ_NAME_RANGE
					   "ORDER BY name LIMIT ?4",
	[R_LIST_A_NAME] = SQ_SELECT_NOBLOB "WHERE " SQ_NAME_RANGE
					   "ORDER BY tenant, name LIMIT ?4",
	[R_LIST_T_SEEN] = SQ_SELECT_NOBLOB "WHERE tenant = ?1 AND " SQ_NAME_RANGE
					   "ORDER BY last_seen_ms DESC, name LIMIT ?4",
	[R_LIST_A_SEEN] = SQ_SELECT_NOBLOB "WHERE " SQ_NAME_RANGE
					   "ORDER BY last_seen_ms DESC, tenant, name LIMIT ?4",
	[R_COUNT_T] = "SELECT count(*) FROM streams WHERE tenant = ?1",
	[R_COUNT_A] = "SELECT count(*) FROM streams",
	[R_TOT_T] = "SELECT tenant, count(*), coalesce(sum(state_bytes), 0) FROM streams "
		    "WHERE tenant = ?1 GROUP BY tenant",
	[R_TOT_A] = "SELECT tenant, count(*), coalesce(sum(state_bytes), 0) FROM streams "
		    "GROUP BY tenant ORDER BY tenant",
	[R_CHECK] = "PRAGMA integrity_check",
};

/* A pooled read connection; its statements are prepared on first use. */
struct sq_reader {
	pd_store_conn link; /* first: what the pool holds */
	sqlite3 *db;
	sqlite3_stmt *st[R__N];
};

struct sq_be {
	char *path;
	struct pd_store_opts o;
	sqlite3 *w; /* writer connection: writer thread only (and open/close) */
	sqlite3_stmt *ws[W__N];

	pd_store_pool *readers;
};

/* The cause behind an SQLite error: the errno text of the failed system
 * call for I/O and open errors; for SQLITE_FULL (which SQLite reports
 * without errno, whether the disk is full or max_page_count, db_max_bytes,
 * was reached) the room left on the database's file system. */
static void sq_cause(sqlite3 *db, int code, char *out, size_t n)
{
	int prim = code & 0xff, sys = sqlite3_system_errno(db);
	const char *file = sqlite3_db_filename(db, "main");
	struct statvfs vfs;
	char ebuf[128];

	out[0] = 0;
	if (sys && (prim == SQLITE_IOERR || prim == SQLITE_CANTOPEN))
		snprintf(out, n, ", errno %d: %s", sys, strerror_r(sys, ebuf, sizeof ebuf));
	else if (prim == SQLITE_FULL && file && file[0] && statvfs(file, &vfs) == 0)
		snprintf(out, n, ", %llu bytes free on its file system",
			 (unsigned long long)vfs.f_bavail * vfs.f_frsize);
}

static int sq_fail(pd_err *e, sqlite3 *db, const char *what)
{
	int code = db ? sqlite3_extended_errcode(db) : SQLITE_NOMEM;
	char cause[160] = "";

	if (db)
		sq_cause(db, code, cause, sizeof cause);
	return pd_err_set(e, PD_E_STORE, "state store: %s: %s (sqlite %d%s)", what,
			  db ? sqlite3_errmsg(db) : "cannot allocate connection", code, cause);
}

static int sq_prepare(sqlite3 *db, const char *sql, sqlite3_stmt **out, pd_err *e)
{
	if (sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, out, NULL) != SQLITE_OK)
		return sq_fail(e, db, "prepare");
	return PD_OK;
}

/* Runs a statement that returns no rows we need, then resets it. */
static int sq_run(sqlite3 *db, sqlite3_stmt *st, const char *what, pd_err *e)
{
	int rc = sqlite3_step(st);

	if (rc == SQLITE_ROW || rc == SQLITE_DONE) {
		sqlite3_reset(st);
		return PD_OK;
	}
	sqlite3_reset(st);
	return sq_fail(e, db, what);
}

static int sq_exec(sqlite3 *db, const char *sql, pd_err *e)
{
	char what[64];
	int n = (int)strcspn(sql, "(;");

	if (sqlite3_exec(db, sql, NULL, NULL, NULL) == SQLITE_OK)
		return PD_OK;
	/* the statement's head only: the schema's text would crowd out the reason */
	while (n && sql[n - 1] == ' ')
		n--;
	snprintf(what, sizeof what, "%.*s", n, sql);
	return sq_fail(e, db, what);
}

/* Reads the single integer a PRAGMA or query returns. */
static int sq_int(sqlite3 *db, const char *sql, int64_t *out, pd_err *e)
{
	sqlite3_stmt *st;
	int rc;

	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
		return sq_fail(e, db, sql);
	rc = sqlite3_step(st);
	*out = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
	rc = rc == SQLITE_ROW || rc == SQLITE_DONE ? PD_OK : sq_fail(e, db, sql);
	sqlite3_finalize(st);
	return rc;
}

/* ---- connections ------------------------------------------------------------ */

/* The state holds tenants' profile data: create the file owner-only before
 * SQLite does (it gives the -wal/-shm files the same mode). */
static int sq_precreate(const char *path, pd_err *e)
{
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);

	if (fd < 0)
		return pd_err_set(e, PD_E_STORE, "state store: cannot open %s: %s", path,
				  strerror(errno));
	close(fd);
	return PD_OK;
}

static int sq_connect(const struct sq_be *b, sqlite3 **out, pd_err *e)
{
	sqlite3 *db = NULL;
	int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX;

	*out = NULL;
	if (sqlite3_open_v2(b->path, &db, flags, NULL) != SQLITE_OK) {
		int rc = sq_fail(e, db, "open");
		sqlite3_close(db);
		return rc;
	}
	sqlite3_extended_result_codes(db, 1);
	sqlite3_busy_timeout(db, b->o.busy_timeout_ms);
	*out = db;
	return PD_OK;
}

static int sq_set_wal(sqlite3 *db, pd_err *e)
{
	sqlite3_stmt *st;
	int ok;

	if (sqlite3_prepare_v2(db, "PRAGMA journal_mode=WAL", -1, &st, NULL) != SQLITE_OK)
		return sq_fail(e, db, "journal_mode");
	ok = sqlite3_step(st) == SQLITE_ROW &&
	     !sqlite3_stricmp((const char *)sqlite3_column_text(st, 0), "wal");
	sqlite3_finalize(st);
	if (!ok)
		return pd_err_set(e, PD_E_STORE, "state store: cannot switch to WAL mode");
	return PD_OK;
}

static int sq_writer_pragmas(struct sq_be *b, pd_err *e)
{
	char sql[128];
	int64_t page_size;
	int rc;

	snprintf(sql, sizeof sql, "PRAGMA page_size=%d", SQ_PAGE_SIZE);
	rc = sq_exec(b->w, sql, e); /* new files only: WAL fixes it once written */
	if (!rc)
		rc = sq_set_wal(b->w, e);

	if (!rc)
		rc = sq_exec(b->w, b->o.synchronous_full ? "PRAGMA synchronous=FULL"
							 : "PRAGMA synchronous=NORMAL", e);
	snprintf(sql, sizeof sql, "PRAGMA journal_size_limit=%d", SQ_JOURNAL_SIZE_LIMIT);
	if (!rc)
		rc = sq_exec(b->w, sql, e);
	if (!rc)
		rc = sq_int(b->w, "PRAGMA page_size", &page_size, e);
	if (rc)
		return rc;
	/* Checkpoint every ~4 MiB of WAL whatever the page size (SQLite's default
	 * is 1,000 pages: 64 MiB with ours, whose checkpoints stalled commits). */
	snprintf(sql, sizeof sql, "PRAGMA wal_autocheckpoint=%lld",
		 (long long)(page_size > 0 && SQ_WAL_CHECKPOINT_BYTES / page_size > 0
				     ? SQ_WAL_CHECKPOINT_BYTES / page_size
				     : 1));
	if ((rc = sq_exec(b->w, sql, e)) || !b->o.max_db_bytes)
		return rc;
	snprintf(sql, sizeof sql, "PRAGMA max_page_count=%llu",
		 (unsigned long long)(b->o.max_db_bytes / (uint64_t)page_size + 1));
	return sq_exec(b->w, sql, e);
}

static int sq_stamp(sqlite3 *db, pd_err *e)
{
	char sql[96];

	snprintf(sql, sizeof sql, "PRAGMA application_id=%d; PRAGMA user_version=%d", SQ_APP_ID,
		 SQ_SCHEMA_VERSION);
	return sq_exec(db, sql, e);
}

/* Brings a schema-1 database to the current schema in the caller's
 * transaction. Schema 1 rows keep a NULL last_delta_crc: their kept response
 * (at most one retry's worth per stream) is replayed unchecked until the
 * stream's next request rewrites the row with a checksum. Computing one now
 * would vouch for bytes nobody checked. */
static int sq_migrate(sqlite3 *db, int64_t from, pd_err *e)
{
	int rc = PD_OK;

	if (from < 2)
		rc = sq_exec(db, "ALTER TABLE streams ADD COLUMN last_delta_crc INTEGER", e);
	return rc ? rc : sq_stamp(db, e);
}

/* Creates the schema in an empty file, migrates an older one (sq_migrate),
 * accepts our current one, refuses the rest. Runs in one transaction so a crash leaves no half schema. */
static int sq_schema_check(sqlite3 *db, pd_err *e)
{
	int64_t app_id, version, tables;
	int rc = sq_exec(db, "BEGIN IMMEDIATE", e);

	if (!rc)
		rc = sq_int(db, "PRAGMA application_id", &app_id, e);
	if (!rc)
		rc = sq_int(db, "PRAGMA user_version", &version, e);
	if (!rc)
		rc = sq_int(db, "SELECT count(*) FROM sqlite_schema", &tables, e);
	if (rc)
		goto out;
	if ((app_id && app_id != SQ_APP_ID) || (!version && tables)) {
		rc = pd_err_set(e, PD_E_STATE, "state store: not a pdelta state database");
	} else if (version > SQ_SCHEMA_VERSION) {
		rc = pd_err_set(e, PD_E_STATE,
				"state store: schema version %lld is newer than this pdeltad (%d)",
				(long long)version, SQ_SCHEMA_VERSION);
	} else if (!version) {
		rc = sq_exec(db, sq_schema, e);
		if (!rc)
			rc = sq_stamp(db, e);
	} else if (version < SQ_SCHEMA_VERSION) {
		rc = sq_migrate(db, version, e);
	}
out:
	if (!rc)
		return sq_exec(db, "COMMIT", e);
	sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
	return rc;
}

static int sq_writer_open(struct sq_be *b, pd_err *e)
{
	int rc = sq_precreate(b->path, e);

	if (!rc)
		rc = sq_connect(b, &b->w, e);
	if (!rc)
		rc = sq_writer_pragmas(b, e);
	if (!rc)
		rc = sq_schema_check(b->w, e);
	for (int i = 0; !rc && i < W__N; i++)
		rc = sq_prepare(b->w, w_sql[i], &b->ws[i], e);
	return rc;
}

static void sq_reader_close(pd_store_conn *c)
{
	struct sq_reader *r = (struct sq_reader *)c;

	for (int i = 0; i < R__N; i++)
		sqlite3_finalize(r->st[i]);
	sqlite3_close(r->db);
	free(r);
}

/* The pool's open function. */
static int sq_reader_open(void *be, pd_store_conn **out, pd_err *e)
{
	struct sq_reader *r = calloc(1, sizeof *r);
	int rc;

	*out = NULL;
	if (!r)
		return pd_err_set(e, PD_E_NOMEM, "out of memory opening a read connection");
	rc = sq_connect(be, &r->db, e);
	if (!rc)
		rc = sq_exec(r->db, "PRAGMA query_only=1", e);
	if (rc) {
		sq_reader_close(&r->link);
		return rc;
	}
	*out = &r->link;
	return PD_OK;
}

/* ---- lifecycle -------------------------------------------------------------- */

static void sq_close(void *be)
{
	struct sq_be *b = be;

	pd_store_pool_free(b->readers);
	for (int i = 0; i < W__N; i++)
		sqlite3_finalize(b->ws[i]);
	/* Closed last: the last connection checkpoints and removes the WAL. */
	sqlite3_close(b->w);
	free(b->path);
	free(b);
}

/* The options SQLite cannot work with. */
static int sq_probe(const struct pd_store_opts *o, pd_err *e)
{
	if (o->max_db_bytes && o->max_db_bytes < SQ_MIN_DB_BYTES)
		return pd_err_set(e, PD_E_ARG, "state store: db_max_bytes %llu is below the minimum "
				  "of %u (512k) that SQLite needs; 0 = no cap",
				  (unsigned long long)o->max_db_bytes, SQ_MIN_DB_BYTES);
	return PD_OK;
}

static int sq_open(const struct pd_store_opts *o, void **be, pd_err *e)
{
	struct sq_be *b;
	int rc;

	*be = NULL;
	if ((rc = sq_probe(o, e)))
		return rc;
	if (!sqlite3_threadsafe())
		return pd_err_set(e, PD_E_STORE, "state store: SQLite was built without threads");
	b = calloc(1, sizeof *b);
	if (!b || !(b->path = strdup(o->path))) {
		free(b);
		return pd_err_set(e, PD_E_NOMEM, "out of memory opening the state store");
	}
	b->o = *o;
	b->o.path = b->path;
	b->readers = pd_store_pool_new(o->max_readers, sq_reader_open, sq_reader_close, b);
	rc = b->readers ? sq_writer_open(b, e)
			: pd_err_set(e, PD_E_NOMEM, "out of memory opening the state store");
	if (rc) {
		sq_close(b);
		return rc;
	}
	*be = b;
	return PD_OK;
}

/* SQLite's largest string or blob (SQLITE_LIMIT_LENGTH, 1e9 by default). */
static size_t sq_max_row(void *be)
{
	struct sq_be *b = be;
	return (size_t)sqlite3_limit(b->w, SQLITE_LIMIT_LENGTH, -1);
}

/* ---- writes (writer thread) --------------------------------------------------- */

static int sq_begin(void *be, pd_err *e)
{
	struct sq_be *b = be;
	return sq_run(b->w, b->ws[W_BEGIN], "BEGIN IMMEDIATE", e);
}

static int sq_commit(void *be, pd_err *e)
{
	struct sq_be *b = be;
	return sq_run(b->w, b->ws[W_COMMIT], "COMMIT", e);
}

/* Some errors (SQLITE_FULL, SQLITE_IOERR) already rolled the transaction
 * back; a ROLLBACK then would only fail again. */
static void sq_rollback(void *be)
{
	struct sq_be *b = be;

	if (!sqlite3_get_autocommit(b->w))
		sq_run(b->w, b->ws[W_ROLLBACK], "ROLLBACK", NULL);
}

static void bind_text(sqlite3_stmt *st, int i, const char *s)
{
	sqlite3_bind_text(st, i, s ? s : "", -1, SQLITE_STATIC);
}

/* A NULL blob pointer would bind SQL NULL; empty blobs must stay blobs. */
static void bind_blob(sqlite3_stmt *st, int i, const void *p, size_t n)
{
	if (n)
		sqlite3_bind_blob64(st, i, p, n, SQLITE_STATIC);
	else
		sqlite3_bind_zeroblob(st, i, 0);
}

static void bind_u64(sqlite3_stmt *st, int i, uint64_t v)
{
	sqlite3_bind_int64(st, i, (sqlite3_int64)v);
}

static void bind_rec(sqlite3_stmt *st, const pd_store_row *r, int64_t now_ms)
{
	bind_text(st, 1, r->tenant);
	bind_text(st, 2, r->name);
	bind_u64(st, 3, r->identities);
	bind_u64(st, 4, r->state_bytes);
	bind_u64(st, 5, r->last_seq);
	bind_blob(st, 6, r->last_hash, PD_STORE_HASH_LEN);
	sqlite3_bind_int(st, 7, r->last_status);
	bind_text(st, 8, r->last_reason);
	bind_u64(st, 9, r->last_samples_in);
	bind_u64(st, 10, r->last_samples_out);
	bind_u64(st, 11, r->incarnation);
	sqlite3_bind_int64(st, 12, r->last_time_nanos);
	sqlite3_bind_int64(st, 13, r->created_ms ? r->created_ms : now_ms);
	sqlite3_bind_int64(st, 14, r->last_seen_ms ? r->last_seen_ms : now_ms);
	bind_u64(st, 15, r->deltas_served);
	bind_u64(st, 16, r->resets);
	bind_text(st, 17, r->last_reset_reason);
	bind_blob(st, 18, r->state, r->state_len);
	bind_blob(st, 19, r->last_delta, r->last_delta_len);
	if (r->has_delta_crc)
		sqlite3_bind_int64(st, 20, (sqlite3_int64)r->last_delta_crc);
	else
		sqlite3_bind_null(st, 20);
}

/* Steps a bound write statement; *changed = rows it touched. Bindings are
 * cleared because they point at memory freed after the batch. */
static int sq_write_step(struct sq_be *b, sqlite3_stmt *st, const char *what,
			 uint64_t *changed, pd_err *e)
{
	int rc = sqlite3_step(st);

	*changed = rc == SQLITE_DONE ? (uint64_t)sqlite3_changes(b->w) : 0;
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	if (rc != SQLITE_DONE)
		return sq_fail(e, b->w, what);
	return PD_OK;
}

static int sq_put(void *be, const pd_store_row *r, int has_expect, uint64_t expect_version,
		  int64_t now_ms, uint64_t *changed, pd_err *e)
{
	struct sq_be *b = be;
	sqlite3_stmt *st = b->ws[W_UPSERT];

	if (has_expect)
		st = b->ws[expect_version ? W_UPDATE_IF : W_INSERT_NEW];
	bind_rec(st, r, now_ms);
	if (has_expect && expect_version)
		bind_u64(st, SQ_P_EXPECT, expect_version);
	return sq_write_step(b, st, "write stream", changed, e);
}

static int sq_key_write(void *be, enum pd_store_key_op op, const char *tenant,
			const char *name, const char *reason, uint64_t *changed, pd_err *e)
{
	struct sq_be *b = be;
	sqlite3_stmt *st = b->ws[op == PD_STORE_KEY_RESET ? W_RESET : W_DELETE];

	bind_text(st, 1, tenant);
	bind_text(st, 2, name);
	if (op == PD_STORE_KEY_RESET)
		bind_text(st, 3, reason);
	return sq_write_step(b, st, op == PD_STORE_KEY_RESET ? "reset stream" : "delete stream",
			     changed, e);
}

static int sq_expire(void *be, int64_t older_than_ms, uint64_t max_rows, uint64_t *n, pd_err *e)
{
	struct sq_be *b = be;
	sqlite3_stmt *st = b->ws[W_EXPIRE];

	sqlite3_bind_int64(st, 1, older_than_ms);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)max_rows);
	return sq_write_step(b, st, "expire streams", n, e);
}

/* ---- reads ---------------------------------------------------------------------- */

/* The current row of a statement, for pd_store_row_fill. */
static const void *sq_col_bytes(void *ctx, int c, size_t *len)
{
	const void *v = sqlite3_column_blob(ctx, c); /* text too, as its bytes */

	*len = (size_t)sqlite3_column_bytes(ctx, c);
	return v;
}

static uint64_t sq_col_u64(void *ctx, int c) { return (uint64_t)sqlite3_column_int64(ctx, c); }

static int sq_col_null(void *ctx, int c) { return sqlite3_column_type(ctx, c) == SQLITE_NULL; }

static int fill_rec(sqlite3_stmt *st, int blobs, pd_store_row *r, pd_err *e)
{
	struct pd_store_result row = {st, sq_col_bytes, sq_col_u64, sq_col_null};

	return pd_store_row_fill(r, &row, blobs, e);
}

/* Borrows a read connection with statement `which` ready and tenant, when
 * given, bound to ?1. */
static int sq_read_begin(struct sq_be *b, enum r_stmt which, const char *tenant,
			 struct sq_reader **r, sqlite3_stmt **st, pd_err *e)
{
	pd_store_conn *c;
	struct sq_reader *rd;
	int rc = pd_store_pool_get(b->readers, &c, e);

	if (rc)
		return rc;
	rd = (struct sq_reader *)c;
	if (!rd->st[which] && (rc = sq_prepare(rd->db, r_sql[which], &rd->st[which], e))) {
		pd_store_pool_put(b->readers, c, 0);
		return rc;
	}
	*r = rd;
	*st = rd->st[which];
	if (tenant)
		bind_text(*st, 1, tenant);
	return PD_OK;
}

/* Resets the statement, which ends the read transaction at once (so
 * checkpoints are not held back), and gives the connection back. */
static void sq_read_end(struct sq_be *b, struct sq_reader *r, sqlite3_stmt *st)
{
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	pd_store_pool_put(b->readers, &r->link, 0);
}

static int sq_get(void *be, const char *tenant, const char *name, unsigned what,
		  pd_store_row *out, pd_err *e)
{
	enum r_stmt which = what == PD_STORE_GET_STATE      ? R_GET_STATE
			    : what == PD_STORE_GET_RESPONSE ? R_GET_RESPONSE
							    : R_GET;
	struct sq_reader *r;
	sqlite3_stmt *st;
	int rc = sq_read_begin(be, which, tenant, &r, &st, e);

	if (rc)
		return rc;
	bind_text(st, 2, name);
	switch (sqlite3_step(st)) {
	case SQLITE_ROW:
		rc = fill_rec(st, (what & PD_STORE_GET_STATE ? PD_STORE_FILL_STATE : 0) |
					  (what & PD_STORE_GET_RESPONSE ? PD_STORE_FILL_DELTA : 0),
			      out, e);
		break;
	case SQLITE_DONE:
		rc = pd_err_set(e, PD_E_NOTFOUND, "no stream %s/%s", tenant, name);
		break;
	default:
		rc = sq_fail(e, r->db, "read stream");
	}
	sq_read_end(be, r, st);
	return rc;
}

/* Upper bound of the names starting with prefix: the prefix with its last
 * byte below 0xff incremented (trailing 0xff bytes dropped). 0 if none. */
static size_t prefix_upper(const char *prefix, char *buf, size_t cap)
{
	size_t n = strlen(prefix);

	if (n >= cap)
		return 0;
	memcpy(buf, prefix, n);
	while (n && (unsigned char)buf[n - 1] == 0xff)
		n--;
	if (n)
		buf[n - 1] = (char)((unsigned char)buf[n - 1] + 1);
	return n;
}

/* Binds the name range and the limit (the tenant is bound already). */
static int bind_listing(sqlite3_stmt *st, const char *prefix, size_t limit, char **upper,
			pd_err *e)
{
	size_t n = strlen(prefix), un = 0;

	bind_text(st, 2, prefix);
	*upper = NULL;
	if (n) {
		*upper = malloc(n + 1);
		if (!*upper)
			return pd_err_set(e, PD_E_NOMEM, "out of memory listing streams");
		un = prefix_upper(prefix, *upper, n + 1);
	}
	if (un)
		sqlite3_bind_text(st, 3, *upper, (int)un, SQLITE_STATIC);
	else
		sqlite3_bind_null(st, 3);
	sqlite3_bind_int64(st, 4, limit ? (sqlite3_int64)limit : -1);
	return PD_OK;
}

static enum r_stmt list_stmt(const char *tenant, enum pd_store_sort sort)
{
	if (sort == PD_STORE_SORT_LAST_SEEN)
		return tenant ? R_LIST_T_SEEN : R_LIST_A_SEEN;
	return tenant ? R_LIST_T_NAME : R_LIST_A_NAME;
}

static int run_listing(sqlite3 *db, sqlite3_stmt *st, pd_store_row_fn fn, void *arg, pd_err *e)
{
	pd_store_row rec = {0};
	int rc = PD_OK, step;

	while ((step = sqlite3_step(st)) == SQLITE_ROW) {
		rc = fill_rec(st, 0, &rec, e);
		if (rc || fn(arg, &rec))
			break;
	}
	if (!rc && step != SQLITE_ROW && step != SQLITE_DONE)
		rc = sq_fail(e, db, "list streams");
	pd_store_row_free(&rec);
	return rc;
}

static int sq_list(void *be, const char *tenant, const char *prefix, enum pd_store_sort sort,
		   size_t limit, pd_store_row_fn fn, void *arg, pd_err *e)
{
	struct sq_reader *r;
	sqlite3_stmt *st;
	char *upper = NULL;
	int rc = sq_read_begin(be, list_stmt(tenant, sort), tenant, &r, &st, e);

	if (rc)
		return rc;
	rc = bind_listing(st, prefix, limit, &upper, e);
	if (!rc)
		rc = run_listing(r->db, st, fn, arg, e);
	sq_read_end(be, r, st);
	free(upper);
	return rc;
}

static int sq_count(void *be, const char *tenant, uint64_t *out, pd_err *e)
{
	struct sq_reader *r;
	sqlite3_stmt *st;
	int rc = sq_read_begin(be, tenant ? R_COUNT_T : R_COUNT_A, tenant, &r, &st, e);

	*out = 0;
	if (rc)
		return rc;
	if (sqlite3_step(st) == SQLITE_ROW)
		*out = (uint64_t)sqlite3_column_int64(st, 0);
	else
		rc = sq_fail(e, r->db, "count streams");
	sq_read_end(be, r, st);
	return rc;
}

static int sq_tenant_totals(void *be, const char *tenant, pd_store_tenant_fn fn, void *arg,
			    pd_err *e)
{
	struct sq_reader *r;
	sqlite3_stmt *st;
	int rc = sq_read_begin(be, tenant ? R_TOT_T : R_TOT_A, tenant, &r, &st, e), step;

	if (rc)
		return rc;
	while ((step = sqlite3_step(st)) == SQLITE_ROW) {
		if (fn(arg, (const char *)sqlite3_column_text(st, 0),
		       (uint64_t)sqlite3_column_int64(st, 1), (uint64_t)sqlite3_column_int64(st, 2)))
			break;
	}
	if (step != SQLITE_ROW && step != SQLITE_DONE)
		rc = sq_fail(e, r->db, "tenant totals");
	sq_read_end(be, r, st);
	return rc;
}

static int sq_integrity_check(void *be, pd_err *e)
{
	struct sq_reader *r;
	sqlite3_stmt *st;
	int rc = sq_read_begin(be, R_CHECK, NULL, &r, &st, e);

	if (rc)
		return rc;
	if (sqlite3_step(st) != SQLITE_ROW) {
		rc = sq_fail(e, r->db, "integrity_check");
	} else {
		const char *msg = (const char *)sqlite3_column_text(st, 0);
		if (!msg || strcmp(msg, "ok"))
			rc = pd_err_set(e, PD_E_STATE, "state store integrity: %s",
					msg ? msg : "no result");
	}
	sq_read_end(be, r, st);
	return rc;
}

const struct pd_store_backend pd_store_sqlite_backend = {
	.name = "sqlite",
	.open = sq_open,
	.close = sq_close,
	.max_row = sq_max_row,
	.begin = sq_begin,
	.put = sq_put,
	.key_write = sq_key_write,
	.expire = sq_expire,
	.commit = sq_commit,
	.rollback = sq_rollback,
	.get = sq_get,
	.list = sq_list,
	.count = sq_count,
	.tenant_totals = sq_tenant_totals,
	.integrity_check = sq_integrity_check,
	.probe = sq_probe,
};
