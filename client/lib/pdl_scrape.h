/*
 * pdl_scrape.h: internals of the scrape loop (pdelta_scrape_* in pdelta.h),
 * shared by its four files:
 *   pdl_scrape.c          the loop: scheduler, workers, one job per stream round
 *   pdl_scrape_targets.c  targets from options and from the targets file
 *   pdl_scrape_files.c    HTTP fetch, the state file, pending uploads, file sinks
 *   pdl_scrape_push.c     the push sink: an on-disk spool drained in order by one thread
 * Locking: s->mu guards the stream table, the state map and the spool
 * accounting; nothing touches the disk with it held except the spool's
 * directory scans. The state file is written from a snapshot taken under
 * s->mu, by one writer at a time (s->save_mu) and never older over newer
 * (generations); spool files are written in counter order under s->spool_mu.
 * A lane's mutex guards its pdelta handle; counters are atomics.
 */
#ifndef PDL_SCRAPE_H
#define PDL_SCRAPE_H

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>

#include "pdelta.h"

#define SC_MAX_LANES 8
#define SC_NAME_MAX 200
#define SC_PREFIX_MAX 64
#define SC_LABELS_MAX 2048 /* "k=v,k2=v2" of one target */

typedef struct sc_buf {
	unsigned char *p;
	size_t n, cap, max;
} sc_buf;

typedef struct sc_target {
	char *name, *url, *prefix, *labels, *ca, *bearer, *basic;
	unsigned timeout_ms;
	size_t max_body;
	int from_file;
	int removed;
} sc_target;

typedef struct sc_stream {
	sc_target *t;
	char type[16];
	char name[SC_PREFIX_MAX + SC_NAME_MAX + 20]; /* PREFIX NAME/TYPE */
	char rel[SC_NAME_MAX + 20];  /* NAME/TYPE: the sinks' directory */
	uint64_t seq;                /* last delivered sequence number, read at job start */
	int unsaved;                 /* no state entry yet: its first answer is not pushed */
	unsigned rounds;             /* rounds done in this run */
	int64_t due_ms;
	int64_t last_scrape_ms;      /* scrape of seq's profile (0: unknown), for the push's from=;
					read at job start with seq */
	int running;                 /* queued or in a worker; never freed while set */
	int removed;                 /* its target left: freed once not running */
	int answered_told;           /* its last answer was declared to its lane's handle */
	unsigned lane_gen;           /* the lane handle generation answered_told refers to */
	int local;                   /* moved to local mode in lane_gen */
} sc_stream;

typedef struct sc_state_ent {
	char *name;
	uint64_t seq;
	int64_t scraped_ms; /* when the profile of seq was scraped (0: unknown) */
	int64_t gone_ms; /* when its last stream went (0: a stream uses it) */
} sc_state_ent;

/* The state file's text as of one moment, written outside s->mu. */
typedef struct sc_state_snap {
	char *text;
	size_t n;
	uint64_t gen;
} sc_state_snap;

enum {
	SCM_SCRAPES, SCM_SCRAPE_ERRORS, SCM_SCRAPE_TOO_LARGE, SCM_SCRAPE_HTTP, SCM_SCRAPE_TIMEOUT,
	SCM_DELTA, SCM_BASELINE, SCM_DUPLICATE, SCM_DELTA_ERRORS, SCM_RESENT, SCM_RESYNC,
	SCM_OUT_FILES, SCM_PUSH_OK, SCM_PUSH_RETRY, SCM_PUSH_PERMANENT, SCM_SPOOL_DROPPED,
	SCM_SINK_ERRORS, SCM_TARGET_RELOADS, SCM_TARGET_RELOAD_ERRORS, SCM_SCRAPE_TLS, SCM_BYTES_IN, SCM_BYTES_OUT,
	SCM_ROUNDS_OK, SCM_ROUNDS_FAILED, SCM_NCOUNTERS
};

typedef struct sc_lane {
	pthread_mutex_t mu;
	pdelta *h;
	unsigned gen;          /* bumped when h is replaced (streams back to the server) */
	unsigned nlocal;       /* streams h moved to local mode (--fallback-local) */
	int64_t next_probe_ms; /* when to try the server again for them */
} sc_lane;

struct pdelta_scrape {
	pdelta_scrape_opts o;
	char *types[8];
	size_t ntypes;
	char *prefix, *state_file, *pending_dir, *out_dir, *save_dir, *push_url, *push_token;
	char *spool_dir, *targets_file, *tmp_dir;
	pdelta_override ovr[32];

	pthread_mutex_t mu;
	pthread_cond_t cv;
	sc_target **targets;
	size_t ntargets;
	sc_stream **streams;
	size_t nstreams;
	sc_state_ent *state;
	size_t nstate;
	uint64_t state_gen;  /* bumped by every snapshot (s->mu) */
	int state_dirty;     /* entries dropped since the last snapshot */
	pthread_mutex_t save_mu;
	uint64_t saved_gen;  /* newest snapshot on disk (save_mu) */
	int lock_fd;         /* flock on STATE.lock, -1 without --state */
	uint64_t incarnation;
	int64_t targets_mtime_ns;
	off_t targets_size;
	int64_t targets_change_ms;

	/* job queue: streams waiting for a worker */
	sc_stream **queue;
	size_t qhead, qlen, qcap;
	unsigned inflight;
	pthread_t *workers;
	unsigned nworkers;

	sc_lane lanes[SC_MAX_LANES];
	unsigned nlanes;

	/* push spool */
	pthread_mutex_t spool_mu;
	pthread_t pusher;
	int pusher_started;
	uint64_t spool_next;
	uint64_t spool_bytes, spool_files;
	int loop_done;

	volatile int stop;
	uint64_t m[SCM_NCOUNTERS];
	uint64_t run_base[SCM_NCOUNTERS]; /* m[] when pdelta_scrape_run() started */
};

/* counters */
static inline void sc_count(pdelta_scrape *s, int c, uint64_t n)
{
	__atomic_add_fetch(&s->m[c], n, __ATOMIC_RELAXED);
}
int64_t sc_now_ms(void);
void sc_log(pdelta_scrape *s, int is_error, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* buffers */
int sc_buf_add(sc_buf *b, const void *p, size_t n);
void sc_buf_free(sc_buf *b);

/* targets */
int sc_labels_check(const char *labels, char *err, size_t errlen);
int sc_targets_init(pdelta_scrape *s, char *err, size_t errlen);
/* Whether a and b are one target (every field equal): a reload keeps its streams. */
int sc_target_same(const sc_target *a, const sc_target *b);
void sc_targets_poll(pdelta_scrape *s);     /* with s->mu held */
void sc_targets_reap(pdelta_scrape *s);     /* with s->mu held: frees what no job holds */
void sc_targets_free(pdelta_scrape *s);
int sc_parse_duration_ms(const char *v, unsigned *out);
int sc_parse_size(const char *v, size_t *out);

/* files: fetch, state, pending, sinks */
int sc_fetch(pdelta_scrape *s, const sc_stream *st, void *curl, sc_buf *body, char *err, size_t errlen);
int sc_state_load(pdelta_scrape *s, char *err, size_t errlen);
int sc_state_lock(pdelta_scrape *s, char *err, size_t errlen);
int sc_state_snapshot(pdelta_scrape *s, sc_state_snap *snap); /* with s->mu held */
int sc_state_write(pdelta_scrape *s, sc_state_snap *snap);    /* without s->mu; frees snap */
int sc_state_save(pdelta_scrape *s);  /* snapshot + write: s->mu not held, no job running */
uint64_t sc_state_get(pdelta_scrape *s, const char *stream, int64_t *scraped_ms);
uint64_t sc_state_attach(pdelta_scrape *s, const char *stream); /* a stream uses it again */
void sc_state_detach(pdelta_scrape *s, const char *stream, int64_t now);
void sc_state_expire(pdelta_scrape *s, int64_t now);          /* with s->mu held */
void sc_state_set(pdelta_scrape *s, const char *stream, uint64_t seq, int64_t scraped_ms);
/* A pending upload: the profile of sequence seq and the interval it closes. */
typedef struct sc_pending {
	uint64_t seq;
	int64_t from_ms, until_ms;
} sc_pending;
int sc_pending_write(pdelta_scrape *s, const char *stream, const sc_pending *pd, const sc_buf *b);
int sc_pending_read(pdelta_scrape *s, const char *stream, sc_pending *pd, sc_buf *b);
void sc_pending_remove(pdelta_scrape *s, const char *stream);
int sc_write_seq_file(pdelta_scrape *s, const char *root, const sc_stream *st, uint64_t seq,
		      const void *p, size_t n, unsigned keep);
int sc_mkdirs(const char *path);
/* One line of f into buf[cap] (newline kept, NUL-terminated), *len its length
 * counting any NUL byte in it: 1 a line, 0 the end of the file (or a read
 * error: see ferror), -1 a line longer than cap - 2 bytes. */
int sc_read_line(FILE *f, char *buf, size_t cap, size_t *len);
int sc_write_atomic(const char *path, const void *a, size_t na, const void *b, size_t nb);

/* push */
int sc_push_init(pdelta_scrape *s, char *err, size_t errlen);
int sc_push_enqueue(pdelta_scrape *s, const sc_stream *st, int64_t from_ms, int64_t until_ms,
		    const void *p, size_t n);
void sc_push_start(pdelta_scrape *s);
void sc_push_join(pdelta_scrape *s);

#endif
