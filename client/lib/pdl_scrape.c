/*
 * pdl_scrape: the scrape loop of libpdelta (pdelta_scrape_* in pdelta.h, the
 * engine of `pdelta scrape`). The calling thread schedules: every stream
 * (target x profile type) is due once per interval, its first round spread
 * over the interval; due streams go to a queue that `concurrency` worker
 * threads take from, so a slow or dead target holds one worker for at most
 * its timeout and never delays the others' schedule. A worker runs one round
 * of one stream (job()): resend its pending upload if a previous run left
 * one, fetch the profile, write it as pending, get the delta from the stream's
 * lane (a pdelta handle shared by the streams that hash to it, so local mode
 * keeps each stream's state in one handle), deliver it to the sinks, save the
 * state, drop the pending file. A stream never has two jobs in flight, not
 * even when a targets-file edit replaced its target while its scrape ran:
 * streams are identified by name, and the scheduler takes the oldest due
 * first, so under overload every stream still gets its turn.
 */
#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "pd_clock.h"
#include "pdl_scrape.h"

int64_t sc_now_ms(void) { return pd_wall_ms(); }

void sc_log(pdelta_scrape *s, int is_error, const char *fmt, ...)
{
	char line[2048], ts[32];
	time_t now = time(NULL);
	struct tm tm;
	va_list ap;
	int n;

	gmtime_r(&now, &tm);
	strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
	n = snprintf(line, sizeof line, "%s ", ts);
	va_start(ap, fmt);
	vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
	va_end(ap);
	if (s->o.log) {
		s->o.log(s->o.log_ctx, is_error, line);
		return;
	}
	FILE *f = is_error ? stderr : stdout;
	flockfile(f);
	fprintf(f, "%s\n", line);
	fflush(f);
	funlockfile(f);
}

void pdelta_scrape_opts_init(pdelta_scrape_opts *o)
{
	memset(o, 0, sizeof *o);
	pdelta_opts_init(&o->delta);
	o->types = "heap,mutex,block";
	o->interval_ms = 60000;
	o->concurrency = 8;
	o->cpu_seconds = 10;
	o->timeout_ms = 10000;
	o->max_body = (size_t)64 << 20;
	o->spool_max_bytes = (uint64_t)256 << 20;
	o->push_timeout_ms = 10000;
	o->state_grace_ms = (uint64_t)24 * 3600 * 1000;
}

/* ---- one round of one stream ------------------------------------------- */

static sc_lane *lane_of(pdelta_scrape *s, const sc_stream *st)
{
	uint64_t h = 1469598103934665603ULL;

	for (const char *p = st->name; *p; p++)
		h = (h ^ (unsigned char)*p) * 1099511628211ULL;
	return &s->lanes[h % s->nlanes];
}

/* Whether a delta goes to the push sink: deltas and BASELINE resets (the new
 * process's counters since its start) do; BASELINE first, evicted and moved
 * hold a whole cumulative profile of unknown window and go only with
 * --push-first. So does the first answer of a stream without a state entry
 * (a fresh or lost state file, a new incarnation): the server takes it as a
 * reset, but the profile holds what was pushed before. A DUPLICATE is judged
 * by the answer it replays. */
static int pushable(const pdelta_scrape *s, const sc_stream *st, const pdelta_result *r)
{
	int status = r->status == PDELTA_DUPLICATE ? r->orig_status : r->status;

	if (s->o.push_first)
		return 1;
	if (st->unsaved)
		return 0;
	return status == PDELTA_DELTA || (status == PDELTA_BASELINE && r->reason == PDELTA_REASON_RESET);
}

/* Writes the delta to the sinks; 0 when every sink took it. The push goes
 * last and only after the files were written: a failed file write leaves the
 * pending upload for the next round, and its resend (DUPLICATE) must not push
 * the same delta a second time. */
static int deliver(pdelta_scrape *s, sc_stream *st, const pdelta_result *r, const sc_pending *pd)
{
	int rc = 0;

	if (s->out_dir) {
		if (sc_write_seq_file(s, s->out_dir, st, r->seq, r->data, r->len, s->o.keep)) {
			sc_log(s, 1, "%s: cannot write to %s: %s", st->name, s->out_dir, strerror(errno));
			rc = -1;
		} else {
			sc_count(s, SCM_OUT_FILES, 1);
		}
	}
	if (rc == 0 && s->push_url && pushable(s, st, r)) {
		if (sc_push_enqueue(s, st, pd->from_ms, pd->until_ms, r->data, r->len)) {
			sc_log(s, 1, "%s: cannot spool the delta in %s: %s", st->name, s->spool_dir,
			       strerror(errno));
			rc = -1;
		}
	}
	if (rc)
		sc_count(s, SCM_SINK_ERRORS, 1);
	return rc;
}

/* --fallback-local: a stream the lane's handle moved to local mode stays
 * local in that handle. While the lane has such streams, the server is
 * tried (a connection, no request) at most once per probe period; once it
 * answers, the lane gets a new handle, so its streams go back to the
 * server: their next answer is BASELINE state-lost (the server's state is
 * older than the last local answer, declared with pdelta_set_answered), then
 * deltas again. Called with the lane's mutex held. */
static void lane_probe(pdelta_scrape *s, sc_lane *lane)
{
	pdelta_opts o = s->o.delta;
	pdelta *probe = NULL, *fresh = NULL;
	int64_t now = sc_now_ms();
	int64_t period = s->o.interval_ms < 1000 ? 1000 : s->o.interval_ms > 60000 ? 60000 : s->o.interval_ms;
	char err[256];

	if (!lane->nlocal || now < lane->next_probe_ms)
		return;
	lane->next_probe_ms = now + period;
	o.incarnation = s->incarnation;
	o.local_fallback = 0;
	o.max_attempts = 1;
	if (pdelta_new(&o, &probe, err, sizeof err) || pdelta_connect(probe)) {
		pdelta_free(probe);
		return;
	}
	pdelta_free(probe);
	o.max_attempts = s->o.delta.max_attempts;
	o.local_fallback = s->o.delta.local_fallback;
	if (pdelta_new(&o, &fresh, err, sizeof err)) {
		sc_log(s, 1, "fallback: the server is back but a new handle failed: %s", err);
		return;
	}
	sc_log(s, 0, "fallback: the server answers again: %u local stream(s) go back to it", lane->nlocal);
	pdelta_free(lane->h);
	lane->h = fresh;
	lane->gen++;
	lane->nlocal = 0;
}

static void count_status(pdelta_scrape *s, const pdelta_result *r)
{
	sc_count(s, r->status == PDELTA_DELTA ? SCM_DELTA : r->status == PDELTA_BASELINE ? SCM_BASELINE
											    : SCM_DUPLICATE, 1);
	sc_count(s, SCM_BYTES_OUT, r->len);
}

static void save_state(pdelta_scrape *s, sc_state_snap *snap, int have_snap)
{
	if (!have_snap || sc_state_write(s, snap))
		sc_log(s, 1, "cannot save the state file %s: %s", s->state_file, strerror(errno));
}

/* Records seq as delivered, its profile scraped at scraped_ms (0: unknown):
 * the map under s->mu, the file outside it. */
static void save_seq(pdelta_scrape *s, sc_stream *st, uint64_t seq, int64_t scraped_ms)
{
	sc_state_snap snap;
	int ok;

	pthread_mutex_lock(&s->mu);
	st->seq = seq;
	st->last_scrape_ms = scraped_ms;
	sc_state_set(s, st->name, seq, scraped_ms);
	ok = sc_state_snapshot(s, &snap) == 0;
	pthread_mutex_unlock(&s->mu);
	save_state(s, &snap, ok);
}

/* Sends one profile as sequence pd->seq of st and delivers the delta over
 * pd's interval. 0 done, -1 failed and may be retried with the same bytes
 * (the pending file stays), -2 failed for good (the pending file goes). */
static int send_and_deliver(pdelta_scrape *s, sc_stream *st, const sc_pending *pd, const sc_buf *in, int resend)
{
	uint64_t seq = pd->seq;
	sc_lane *lane = lane_of(s, st);
	pdelta_result r;
	pdelta_error_info ei;
	int64_t t0 = sc_now_ms(), now;
	int rc;

	memset(&r, 0, sizeof r);
	pthread_mutex_lock(&lane->mu);
	lane_probe(s, lane);
	if (st->lane_gen != lane->gen) {
		st->lane_gen = lane->gen;
		st->answered_told = 0;
		st->local = 0;
	}
	/* The first request of a stream in a handle tells the server the last
	 * answer the state file holds (protocol 3): a server restored to an older
	 * state answers BASELINE state-lost instead of a delta over intervals
	 * already delivered. Later answers are tracked by the handle. */
	if (!st->answered_told && st->seq) {
		pdelta_set_answered(lane->h, st->name, st->seq);
		st->answered_told = 1;
	}
	rc = pdelta_delta(lane->h, st->name, seq, in->p, in->n, &r);
	if (rc) {
		char msg[512];
		pdelta_last_error_info(lane->h, &ei);
		snprintf(msg, sizeof msg, "%s", pdelta_last_error(lane->h));
		pthread_mutex_unlock(&lane->mu);
		sc_count(s, SCM_DELTA_ERRORS, 1);
		if (rc == PDELTA_E_SEQ && ei.value >= seq) {
			/* The server is ahead of the state file (a restored or lost state
			 * file): continue after its sequence. */
			sc_count(s, SCM_RESYNC, 1);
			sc_log(s, 1, "%s seq=%" PRIu64 " ERROR %s: continuing after the server's seq %" PRIu64,
			       st->name, seq, msg, ei.value);
			save_seq(s, st, ei.value, 0); /* when its profile was scraped is unknown */
			return -2;
		}
		sc_log(s, 1, "%s seq=%" PRIu64 " ERROR %s: %s%s", st->name, seq, pdelta_strerror(rc), msg,
		       ei.retryable ? " (will resend)" : " (profile dropped)");
		return ei.retryable ? -1 : -2;
	}
	if (r.reason == PDELTA_REASON_MOVED && !st->local) {
		st->local = 1;
		if (!lane->nlocal++)
			lane->next_probe_ms = sc_now_ms() + s->o.interval_ms;
	}
	if (pdelta_shadow_verdict(lane->h) == PDELTA_SHADOW_MISMATCH)
		sc_log(s, 1, "shadow mismatch: %s", pdelta_shadow_last(lane->h));
	pthread_mutex_unlock(&lane->mu);
	now = sc_now_ms();
	count_status(s, &r);
	if (resend)
		sc_count(s, SCM_RESENT, 1);
	rc = deliver(s, st, &r, pd);
	sc_log(s, 0, "%s %s seq=%" PRIu64 " %s %s%s%s bytes_in=%zu bytes_out=%zu ms=%" PRId64 "%s",
	       st->t->name, st->type, seq, pdelta_status_name(r.status), pdelta_reason_name(r.reason),
	       r.status == PDELTA_DUPLICATE ? " orig=" : "",
	       r.status == PDELTA_DUPLICATE ? pdelta_status_name(r.orig_status) : "", in->n, r.len, now - t0,
	       resend ? " resent" : "");
	pdelta_result_free(&r);
	if (rc)
		return -1;
	save_seq(s, st, seq, pd->until_ms);
	st->unsaved = 0;
	return 0;
}

/* Where the interval of a delta scraped at until starts: the scrape of the
 * last delivered profile (the one the delta is taken against; kept in the
 * state file across restarts and target edits), or one interval back when
 * that is unknown (an older agent's entry, a resync, a clock set back). */
static int64_t push_from(const pdelta_scrape *s, const sc_stream *st, int64_t until)
{
	if (st->last_scrape_ms > 0 && st->last_scrape_ms < until)
		return st->last_scrape_ms;
	return until - s->o.interval_ms;
}

/* One round of st: 0 when it delivered its delta (or had nothing to
 * deliver), -1 when a scrape, a delta request or a sink failed. */
static int job(pdelta_scrape *s, sc_stream *st, CURL *curl, sc_buf *in)
{
	char err[1024];
	sc_pending pd;
	int64_t t_scrape;
	int resent = 0, rc;

	/* A profile a previous run (or round) sent without a delivered answer goes
	 * first, with its own sequence number and interval: the server answers
	 * DUPLICATE if it had applied it. Until it is through, no new profile is
	 * taken, so no interval is skipped. */
	if (sc_pending_read(s, st->name, &pd, in)) {
		if (pd.seq <= st->seq) {
			sc_pending_remove(s, st->name); /* delivered before the state was saved */
		} else {
			if (!pd.until_ms) /* written by an older agent: no interval kept */
				pd.until_ms = sc_now_ms();
			if (!pd.from_ms)
				pd.from_ms = push_from(s, st, pd.until_ms);
			resent = send_and_deliver(s, st, &pd, in, 1);
			if (resent == -1)
				return -1;
			sc_pending_remove(s, st->name);
		}
	}
	t_scrape = sc_now_ms();
	sc_count(s, SCM_SCRAPES, 1);
	if (sc_fetch(s, st, curl, in, err, sizeof err)) {
		sc_count(s, SCM_SCRAPE_ERRORS, 1);
		sc_log(s, 1, "%s %s scrape failed: %s", st->t->name, st->type, err);
		return -1;
	}
	sc_count(s, SCM_BYTES_IN, in->n);
	pd.seq = st->seq + 1;
	pd.from_ms = push_from(s, st, t_scrape);
	pd.until_ms = t_scrape;
	if (s->save_dir && sc_write_seq_file(s, s->save_dir, st, pd.seq, in->p, in->n, s->o.keep))
		sc_log(s, 1, "%s: cannot write to %s: %s", st->name, s->save_dir, strerror(errno));
	if (sc_pending_write(s, st->name, &pd, in)) {
		sc_log(s, 1, "%s: cannot write the pending upload in %s: %s (round skipped)", st->name,
		       s->pending_dir, strerror(errno));
		return -1;
	}
	rc = send_and_deliver(s, st, &pd, in, 0);
	if (rc != -1)
		sc_pending_remove(s, st->name);
	return rc || resent ? -1 : 0;
}

/* ---- workers and scheduler ---------------------------------------------- */

static void *worker_main(void *arg)
{
	pdelta_scrape *s = arg;
	CURL *curl = curl_easy_init();
	sc_buf in = {0};

	pthread_mutex_lock(&s->mu);
	for (;;) {
		while (!s->stop && s->qlen == 0 && !s->loop_done)
			pthread_cond_wait(&s->cv, &s->mu);
		if (s->qlen == 0 || s->stop)
			break;
		sc_stream *st = s->queue[s->qhead];
		s->qhead = (s->qhead + 1) % s->qcap;
		s->qlen--;
		/* the last job of the same name (a replaced target's) may have
		 * moved the sequence on since this stream was created */
		st->seq = sc_state_get(s, st->name, &st->last_scrape_ms);
		pthread_mutex_unlock(&s->mu);
		if (!curl)
			sc_log(s, 1, "cannot create an HTTP handle");
		sc_count(s, curl && job(s, st, curl, &in) == 0 ? SCM_ROUNDS_OK : SCM_ROUNDS_FAILED, 1);
		/* Memory between rounds: one body buffer, shrunk when a big profile grew it. */
		if (in.cap > ((size_t)4 << 20))
			sc_buf_free(&in);
		pthread_mutex_lock(&s->mu);
		st->running = 0;
		st->rounds++;
		int64_t now = sc_now_ms();
		st->due_ms += s->o.interval_ms;
		if (st->due_ms < now)
			st->due_ms = now; /* late: no catching up with a burst */
		s->inflight--;
		pthread_cond_broadcast(&s->cv);
	}
	pthread_mutex_unlock(&s->mu);
	sc_buf_free(&in);
	if (curl)
		curl_easy_cleanup(curl);
	return NULL;
}

static int stream_wants_round(pdelta_scrape *s, const sc_stream *st)
{
	return !st->running && !st->removed && (s->o.count == 0 || st->rounds < s->o.count);
}

/* Whether another stream object of the same name (the old one of a target
 * the targets file changed) has a job in flight. */
static int name_running(pdelta_scrape *s, const sc_stream *st)
{
	for (size_t i = 0; i < s->nstreams; i++)
		if (s->streams[i] != st && s->streams[i]->running && strcmp(s->streams[i]->name, st->name) == 0)
			return 1;
	return 0;
}

/* The due stream that has waited longest (the first in the table on a tie),
 * NULL when none is due; *next gets the earliest future due time. */
static sc_stream *oldest_due(pdelta_scrape *s, int64_t now, int64_t *next, int *busy)
{
	sc_stream *best = NULL;

	for (size_t i = 0; i < s->nstreams; i++) {
		sc_stream *st = s->streams[i];
		if (!stream_wants_round(s, st)) {
			*busy |= st->running;
			continue;
		}
		*busy = 1;
		if (st->due_ms > now) {
			if (st->due_ms < *next)
				*next = st->due_ms;
			continue;
		}
		if ((!best || st->due_ms < best->due_ms) && !name_running(s, st))
			best = st;
	}
	return best;
}

/* Queues the due streams, oldest due first; returns how long to sleep (ms),
 * -1 when all done. */
static int schedule(pdelta_scrape *s)
{
	int64_t now = sc_now_ms(), next = now + 200;
	int busy = s->inflight > 0 || s->qlen > 0;
	sc_stream *st;

	sc_targets_poll(s);
	sc_targets_reap(s);
	sc_state_expire(s, now);
	/* the ring was sized before a reload may have added streams */
	while (s->inflight < s->o.concurrency && s->qlen < s->qcap &&
	       (st = oldest_due(s, now, &next, &busy))) {
		st->running = 1;
		s->inflight++;
		s->queue[(s->qhead + s->qlen) % s->qcap] = st;
		s->qlen++;
		pthread_cond_broadcast(&s->cv);
	}
	if (s->inflight >= s->o.concurrency || s->qlen == s->qcap)
		oldest_due(s, now, &next, &busy); /* for busy and next only */
	if (!busy && !s->targets_file)
		return -1;
	if (!busy && s->targets_file && s->o.count)
		return -1;
	return (int)(next - now > 0 ? next - now : 1);
}

static int grow_queue(pdelta_scrape *s)
{
	size_t need = s->nstreams + 1;
	sc_stream **q;

	if (need <= s->qcap)
		return 0;
	need = need * 2;
	q = calloc(need, sizeof *q);
	if (!q)
		return -1;
	for (size_t i = 0; i < s->qlen; i++)
		q[i] = s->queue[(s->qhead + i) % s->qcap];
	free(s->queue);
	s->queue = q;
	s->qhead = 0;
	s->qcap = need;
	return 0;
}

int pdelta_scrape_run(pdelta_scrape *s)
{
	unsigned started = 0;

	s->workers = calloc(s->o.concurrency, sizeof *s->workers);
	if (!s->workers)
		return PDELTA_E_NOMEM;
	for (int i = 0; i < SCM_NCOUNTERS; i++)
		s->run_base[i] = __atomic_load_n(&s->m[i], __ATOMIC_RELAXED);
	pthread_mutex_lock(&s->mu);
	s->loop_done = 0;
	if (grow_queue(s)) {
		pthread_mutex_unlock(&s->mu);
		return PDELTA_E_NOMEM;
	}
	pthread_mutex_unlock(&s->mu);
	for (unsigned i = 0; i < s->o.concurrency; i++)
		if (pthread_create(&s->workers[i], NULL, worker_main, s) == 0)
			started++;
	if (!started)
		return PDELTA_E_NOMEM;
	if (s->push_url)
		sc_push_start(s);
	pthread_mutex_lock(&s->mu);
	while (!s->stop) {
		if (grow_queue(s)) {
			sc_log(s, 1, "out of memory");
			break;
		}
		int wait_ms = schedule(s);
		if (s->state_dirty) { /* entries expired: written outside the lock */
			sc_state_snap snap;
			int ok = sc_state_snapshot(s, &snap) == 0;
			pthread_mutex_unlock(&s->mu);
			save_state(s, &snap, ok);
			pthread_mutex_lock(&s->mu);
		}
		if (wait_ms < 0)
			break;
		if (wait_ms > 200)
			wait_ms = 200;
		struct timespec ts = pd_deadline(CLOCK_REALTIME, (uint64_t)wait_ms);
		pthread_cond_timedwait(&s->cv, &s->mu, &ts);
	}
	/* Workers finish what they hold; the queue is dropped on stop. */
	s->loop_done = 1;
	if (s->stop)
		s->qlen = 0;
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
	for (unsigned i = 0; i < started; i++)
		pthread_join(s->workers[i], NULL);
	free(s->workers);
	s->workers = NULL;
	sc_push_join(s);
	if (sc_state_save(s))
		sc_log(s, 1, "cannot save the state file %s: %s", s->state_file, strerror(errno));
	return PDELTA_OK;
}

void pdelta_scrape_stop(pdelta_scrape *s)
{
	s->stop = 1;
}

static uint64_t run_count(pdelta_scrape *s, int c)
{
	return __atomic_load_n(&s->m[c], __ATOMIC_RELAXED) - s->run_base[c];
}

void pdelta_scrape_outcome(pdelta_scrape *s, uint64_t *rounds_ok, uint64_t *rounds_failed,
			   uint64_t *undelivered)
{
	uint64_t spooled;

	pthread_mutex_lock(&s->mu);
	spooled = s->spool_files;
	pthread_mutex_unlock(&s->mu);
	*rounds_ok = run_count(s, SCM_ROUNDS_OK);
	*rounds_failed = run_count(s, SCM_ROUNDS_FAILED);
	*undelivered = run_count(s, SCM_PUSH_PERMANENT) + run_count(s, SCM_SPOOL_DROPPED) + spooled;
}

/* ---- setup ------------------------------------------------------------------ */

static int parse_types(pdelta_scrape *s, const char *types, char *err, size_t errlen)
{
	static const char *const known[] = {"heap", "allocs", "mutex", "block", "goroutine", "cpu",
					    "threadcreate"};
	char *copy = strdup(types ? types : ""), *save = NULL, *t;

	if (!copy)
		return -1;
	for (t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		int ok = 0;
		for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
			ok |= strcmp(t, known[i]) == 0;
		if (!ok || s->ntypes == sizeof s->types / sizeof s->types[0]) {
			snprintf(err, errlen, "unknown profile type '%s' (heap, allocs, mutex, block, goroutine, cpu, threadcreate)", t);
			free(copy);
			return -1;
		}
		for (size_t i = 0; i < s->ntypes; i++)
			if (strcmp(s->types[i], t) == 0)
				ok = 0;
		if (ok)
			s->types[s->ntypes++] = strdup(t);
	}
	free(copy);
	if (s->ntypes == 0) {
		snprintf(err, errlen, "no profile types");
		return -1;
	}
	return 0;
}

static char *join(const char *a, const char *b)
{
	size_t n = strlen(a) + strlen(b) + 1;
	char *p = malloc(n);

	if (p)
		snprintf(p, n, "%s%s", a, b);
	return p;
}

static char *dup0(const char *v)
{
	return v && *v ? strdup(v) : NULL;
}

static int valid_prefix(const char *p)
{
	for (; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
		      strchr("._-/", *p)))
			return 0;
	return 1;
}

/* --state given as a symbolic link: the file it names is the state file.
 * Every save replaces the state file by a rename, which would replace the
 * link itself, and the lock, the pending and spool directories go next to
 * the file that is written. */
static int resolve_state_link(pdelta_scrape *s, char *err, size_t errlen)
{
	struct stat st;
	char *real;

	if (lstat(s->state_file, &st) || !S_ISLNK(st.st_mode))
		return 0;
	if (!(real = realpath(s->state_file, NULL))) {
		snprintf(err, errlen, "--state %.300s is a symbolic link that does not resolve: %s", s->state_file,
			 strerror(errno));
		return -1;
	}
	free(s->state_file);
	s->state_file = real;
	return 0;
}

static int setup_dirs(pdelta_scrape *s, char *err, size_t errlen)
{
	const char *base;

	if (s->state_file && resolve_state_link(s, err, errlen))
		return -1;
	base = s->state_file;
	if (!base) {
		/* No state across runs: a temporary one, removed at the end. */
		const char *td = getenv("TMPDIR");
		char path[4096];
		snprintf(path, sizeof path, "%s/pdelta-scrape.XXXXXX", td && *td ? td : "/tmp");
		if (!mkdtemp(path)) {
			snprintf(err, errlen, "cannot make a temporary directory %.300s: %s", path, strerror(errno));
			return -1;
		}
		s->tmp_dir = strdup(path);
		s->state_file = join(path, "/state");
		base = s->state_file;
	}
	s->pending_dir = join(base, ".pending");
	if (!s->pending_dir || sc_mkdirs(s->pending_dir)) {
		snprintf(err, errlen, "cannot create %s.pending: %s", base, strerror(errno));
		return -1;
	}
	if (s->push_url) {
		s->spool_dir = s->o.spool_dir ? strdup(s->o.spool_dir) : join(base, ".spool");
		if (!s->spool_dir || sc_push_init(s, err, errlen))
			return -1;
	}
	return 0;
}

static int make_lanes(pdelta_scrape *s, char *err, size_t errlen)
{
	pdelta_opts o = s->o.delta;

	o.incarnation = s->incarnation;
	s->nlanes = s->o.concurrency < SC_MAX_LANES ? s->o.concurrency : SC_MAX_LANES;
	for (unsigned i = 0; i < s->nlanes; i++) {
		pthread_mutex_init(&s->lanes[i].mu, NULL);
		if (pdelta_new(&o, &s->lanes[i].h, err, errlen))
			return -1;
		pdelta_set_shadow(s->lanes[i].h, s->o.shadow);
	}
	return 0;
}

static void curl_init_once(void)
{
	curl_global_init(CURL_GLOBAL_DEFAULT);
}

int pdelta_scrape_new(const pdelta_scrape_opts *o, pdelta_scrape **out, char *err, size_t errlen)
{
	pdelta_scrape *s = calloc(1, sizeof *s);
	char e[512] = "";
	static pthread_once_t curl_once = PTHREAD_ONCE_INIT;

	*out = NULL;
	if (!s) {
		snprintf(err, errlen, "out of memory");
		return PDELTA_E_NOMEM;
	}
	pthread_once(&curl_once, curl_init_once);
	s->o = *o;
	pthread_mutex_init(&s->mu, NULL);
	pthread_mutex_init(&s->save_mu, NULL);
	pthread_mutex_init(&s->spool_mu, NULL);
	pthread_cond_init(&s->cv, NULL);
	s->lock_fd = -1;
	s->prefix = strdup(o->stream_prefix ? o->stream_prefix : "");
	s->state_file = dup0(o->state_file);
	s->out_dir = dup0(o->out_dir);
	s->save_dir = dup0(o->save_input_dir);
	s->push_url = dup0(o->push_url);
	s->push_token = dup0(o->push_token);
	s->targets_file = dup0(o->targets_file);
	if (s->push_url) {
		size_t n = strlen(s->push_url);
		while (n > 8 && s->push_url[n - 1] == '/')
			s->push_url[--n] = 0;
	}
	if (o->concurrency == 0 || o->concurrency > 1024)
		snprintf(e, sizeof e, "concurrency must be 1..1024");
	else if (o->timeout_ms == 0 || o->push_timeout_ms == 0)
		snprintf(e, sizeof e, "timeouts must be above 0 (0 would wait forever)");
	else if (o->interval_ms < 10 && o->count != 1)
		snprintf(e, sizeof e, "interval must be at least 10 ms");
	else if (!valid_prefix(s->prefix) || strlen(s->prefix) > SC_PREFIX_MAX)
		snprintf(e, sizeof e, "stream prefix: at most 64 of [A-Za-z0-9._/-]");
	else if (s->push_url && strncmp(s->push_url, "http://", 7) && strncmp(s->push_url, "https://", 8))
		snprintf(e, sizeof e, "push URL '%s' is not http:// or https://", s->push_url);
	else if (!s->out_dir && !s->push_url && !s->save_dir)
		snprintf(e, sizeof e, "nowhere to deliver: give --out-dir and/or --push");
	if (e[0])
		goto fail;
	if (parse_types(s, o->types, e, sizeof e))
		goto fail;
	if (setup_dirs(s, e, sizeof e) || sc_state_lock(s, e, sizeof e) || sc_state_load(s, e, sizeof e))
		goto fail;
	while (s->incarnation == 0 && getrandom(&s->incarnation, sizeof s->incarnation, 0) < 0)
		;
	if (make_lanes(s, e, sizeof e) || sc_targets_init(s, e, sizeof e))
		goto fail;
	/* after the targets took their entries: the others count as gone from now */
	if (sc_state_save(s)) {
		snprintf(e, sizeof e, "cannot write the state file %s: %s", s->state_file, strerror(errno));
		goto fail;
	}
	*out = s;
	return PDELTA_OK;
fail:
	snprintf(err, errlen, "%s", e);
	pdelta_scrape_free(s);
	return PDELTA_E_ARG;
}

char *pdelta_scrape_metrics(pdelta_scrape *s)
{
	static const struct {
		int id;
		const char *name, *help, *labels;
	} rows[] = {
		{SCM_SCRAPES, "pdelta_scrape_scrapes_total", "profiles requested from targets", ""},
		{SCM_ROUNDS_OK, "pdelta_scrape_rounds_total",
		 "stream rounds by result: delivered (or nothing to deliver), or a scrape, delta or sink failed",
		 "{result=\"ok\"}"},
		{SCM_ROUNDS_FAILED, "pdelta_scrape_rounds_total", NULL, "{result=\"failed\"}"},
		{SCM_SCRAPE_ERRORS, "pdelta_scrape_failures_total", "failed scrapes, all reasons", ""},
		{SCM_SCRAPE_HTTP, "pdelta_scrape_failures_by_reason_total", "failed scrapes by reason", "{reason=\"http_status\"}"},
		{SCM_SCRAPE_TIMEOUT, "pdelta_scrape_failures_by_reason_total", NULL, "{reason=\"timeout\"}"},
		{SCM_SCRAPE_TOO_LARGE, "pdelta_scrape_failures_by_reason_total", NULL, "{reason=\"too_large\"}"},
		{SCM_SCRAPE_TLS, "pdelta_scrape_failures_by_reason_total", NULL, "{reason=\"tls\"}"},
		{SCM_DELTA, "pdelta_scrape_deltas_total", "answers by status", "{status=\"delta\"}"},
		{SCM_BASELINE, "pdelta_scrape_deltas_total", NULL, "{status=\"baseline\"}"},
		{SCM_DUPLICATE, "pdelta_scrape_deltas_total", NULL, "{status=\"duplicate\"}"},
		{SCM_DELTA_ERRORS, "pdelta_scrape_delta_errors_total", "delta requests that failed", ""},
		{SCM_RESENT, "pdelta_scrape_resent_total", "pending uploads sent again after a failure or restart", ""},
		{SCM_RESYNC, "pdelta_scrape_resyncs_total", "streams continued after the server's sequence", ""},
		{SCM_OUT_FILES, "pdelta_scrape_deliveries_total", "deliveries by sink", "{sink=\"out_dir\"}"},
		{SCM_PUSH_OK, "pdelta_scrape_deliveries_total", NULL, "{sink=\"push\"}"},
		{SCM_PUSH_RETRY, "pdelta_scrape_push_errors_total", "failed pushes by kind", "{kind=\"retryable\"}"},
		{SCM_PUSH_PERMANENT, "pdelta_scrape_push_errors_total", NULL, "{kind=\"permanent\"}"},
		{SCM_SPOOL_DROPPED, "pdelta_scrape_spool_dropped_total", "deltas dropped from a full spool", ""},
		{SCM_SINK_ERRORS, "pdelta_scrape_sink_errors_total", "deliveries a sink could not take", ""},
		{SCM_TARGET_RELOADS, "pdelta_scrape_target_reloads_total", "targets file reloads applied", ""},
		{SCM_TARGET_RELOAD_ERRORS, "pdelta_scrape_target_reload_errors_total",
		 "targets file reloads refused (the previous targets stay)", ""},
		{SCM_BYTES_IN, "pdelta_scrape_profile_bytes_total", "bytes by direction", "{dir=\"scraped\"}"},
		{SCM_BYTES_OUT, "pdelta_scrape_profile_bytes_total", NULL, "{dir=\"delta\"}"},
	};
	size_t cap = 8192, n = 0;
	char *p = malloc(cap);
	const char *last = "";
	uint64_t spool_bytes, spool_files, targets = 0, streams, state_entries;

	if (!p)
		return NULL;
	for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
		if (strcmp(last, rows[i].name) != 0 && rows[i].help)
			n += (size_t)snprintf(p + n, cap - n, "# HELP %s %s\n# TYPE %s counter\n", rows[i].name,
					      rows[i].help, rows[i].name);
		last = rows[i].name;
		n += (size_t)snprintf(p + n, cap - n, "%s%s %" PRIu64 "\n", rows[i].name, rows[i].labels,
				      __atomic_load_n(&s->m[rows[i].id], __ATOMIC_RELAXED));
	}
	pthread_mutex_lock(&s->mu);
	spool_bytes = s->spool_bytes;
	spool_files = s->spool_files;
	for (size_t i = 0; i < s->ntargets; i++)
		targets += !s->targets[i]->removed;
	streams = s->nstreams;
	state_entries = s->nstate;
	pthread_mutex_unlock(&s->mu);
	snprintf(p + n, cap - n,
		 "# HELP pdelta_scrape_spool_bytes bytes waiting in the push spool\n"
		 "# TYPE pdelta_scrape_spool_bytes gauge\npdelta_scrape_spool_bytes %" PRIu64 "\n"
		 "# HELP pdelta_scrape_spool_files deltas waiting in the push spool\n"
		 "# TYPE pdelta_scrape_spool_files gauge\npdelta_scrape_spool_files %" PRIu64 "\n"
		 "# HELP pdelta_scrape_targets targets being scraped\n"
		 "# TYPE pdelta_scrape_targets gauge\npdelta_scrape_targets %" PRIu64 "\n"
		 "# HELP pdelta_scrape_streams streams held in memory (removed ones until their job ends)\n"
		 "# TYPE pdelta_scrape_streams gauge\npdelta_scrape_streams %" PRIu64 "\n"
		 "# HELP pdelta_scrape_state_entries streams in the state file\n"
		 "# TYPE pdelta_scrape_state_entries gauge\npdelta_scrape_state_entries %" PRIu64 "\n",
		 spool_bytes, spool_files, targets, streams, state_entries);
	return p;
}

/* Removes a directory of plain files (the temporary state's). */
static void rm_flat_dir(const char *dir)
{
	DIR *d = dir ? opendir(dir) : NULL;
	struct dirent *e;
	char path[4200];

	if (!d)
		return;
	while ((e = readdir(d))) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
		unlink(path);
	}
	closedir(d);
	rmdir(dir);
}

void pdelta_scrape_free(pdelta_scrape *s)
{
	if (!s)
		return;
	for (unsigned i = 0; i < s->nlanes; i++) {
		pdelta_free(s->lanes[i].h);
		pthread_mutex_destroy(&s->lanes[i].mu);
	}
	sc_targets_free(s);
	for (size_t i = 0; i < s->nstate; i++)
		free(s->state[i].name);
	free(s->state);
	for (size_t i = 0; i < s->ntypes; i++)
		free(s->types[i]);
	if (s->tmp_dir) {
		rm_flat_dir(s->pending_dir);
		if (s->spool_dir && !s->o.spool_dir)
			rm_flat_dir(s->spool_dir);
		if (s->state_file) {
			char lock[4200];
			snprintf(lock, sizeof lock, "%s.lock", s->state_file);
			unlink(lock);
			unlink(s->state_file);
		}
		rmdir(s->tmp_dir);
	}
	free(s->queue);
	free(s->prefix);
	free(s->state_file);
	free(s->pending_dir);
	free(s->out_dir);
	free(s->save_dir);
	free(s->push_url);
	free(s->push_token);
	free(s->spool_dir);
	free(s->targets_file);
	free(s->tmp_dir);
	if (s->lock_fd >= 0)
		close(s->lock_fd);
	pthread_mutex_destroy(&s->mu);
	pthread_mutex_destroy(&s->save_mu);
	pthread_mutex_destroy(&s->spool_mu);
	pthread_cond_destroy(&s->cv);
	free(s);
}
