/* pd_shadow: shadow verification of deltas by the slow path (see pd_shadow.h). */
#include "pd_shadow.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "pd_clock.h"
#include "pd_list.h"
#include "pd_log.h"
#include "pd_slowdelta.h"

#define SH_DIFFS_LOGGED 3

/* An upload, shared by a stream's entry and the checks that read it. */
typedef struct blob {
	size_t refs, n;
	uint8_t data[];
} blob;

/* A watched stream. */
typedef struct entry {
	struct entry *hnext, *older, *newer; /* hash chain; LRU list */
	uint64_t hash;
	char *tenant, *stream; /* one allocation, tenant first */
	size_t cost;
	blob *prev;   /* its last applied upload */
	uint64_t seq; /* ... and that upload's sequence */
	uint32_t fallback_left;
	int logged;
} entry;

/* A queued comparison. */
typedef struct check {
	struct check *next;
	char *tenant, *stream;
	uint64_t seq, prev_incarnation;
	pd_req req;
	pd_type_override *ovr;
	int status, reason;
	blob *prev, *cur;
	uint8_t *out;
	size_t out_len, cost;
} check;

struct pd_shadow {
	pd_shadow_opts o;
	char *dir;
	pthread_t tid;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int quit;
	entry **buckets;
	size_t nbuckets, nentries;
	entry *oldest, *newest;
	check *head, *tail;
	uint64_t ncases; /* quarantine cases written (names) */
	pd_shadow_stats st;
};

static const char *const skip_names[PD_SHADOW_SKIP__COUNT] = {"budget", "size", "limit", "state"};

const char *pd_shadow_skip_name(int reason)
{
	return reason >= 0 && reason < PD_SHADOW_SKIP__COUNT ? skip_names[reason] : "?";
}

static uint64_t fnv1a(uint64_t h, const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		h = (h ^ (uint8_t)s[i]) * 0x100000001b3ull;
	return h;
}

static uint64_t stream_hash(const char *tenant, const char *stream)
{
	return fnv1a(fnv1a(0xcbf29ce484222325ull, tenant, strlen(tenant) + 1), stream, strlen(stream));
}

int pd_shadow_watched(const pd_shadow *sh, const char *tenant, const char *stream)
{
	if (!sh)
		return 0;
	return stream_hash(tenant, stream) % 1000000 < sh->o.rate_ppm;
}

/* ---- memory (mu held) --------------------------------------------------------------- */

static void held_add(pd_shadow *sh, size_t n)
{
	sh->st.bytes_held += n;
	if (sh->st.bytes_held > sh->st.bytes_held_max)
		sh->st.bytes_held_max = sh->st.bytes_held;
}

static void unref(pd_shadow *sh, blob *b)
{
	if (b && --b->refs == 0) {
		sh->st.bytes_held -= sizeof *b + b->n;
		free(b);
	}
}

static blob *ref(blob *b)
{
	if (b)
		b->refs++;
	return b;
}

static void drop_prev(pd_shadow *sh, entry *e)
{
	unref(sh, e->prev);
	e->prev = NULL;
	e->seq = 0;
}

static void lru_unlink(pd_shadow *sh, entry *e)
{
	PD_LIST_REMOVE(sh->oldest, sh->newest, e, older, newer);
}

static void lru_touch(pd_shadow *sh, entry *e)
{
	if (sh->newest == e)
		return;
	if (e->older || e->newer || sh->oldest == e) /* in the list: move it */
		lru_unlink(sh, e);
	PD_LIST_APPEND(sh->oldest, sh->newest, e, older, newer);
}

static void entry_remove(pd_shadow *sh, entry *e)
{
	entry **pp = &sh->buckets[e->hash % sh->nbuckets];

	while (*pp != e)
		pp = &(*pp)->hnext;
	*pp = e->hnext;
	lru_unlink(sh, e);
	drop_prev(sh, e);
	sh->st.bytes_held -= e->cost;
	sh->nentries--;
	free(e->tenant);
	free(e);
}

/* Frees least recently used uploads (and idle entries), never keep's, until
 * n more bytes fit the budget. */
static int make_room(pd_shadow *sh, const entry *keep, size_t n)
{
	entry *e = sh->oldest;

	while (sh->st.bytes_held + n > sh->o.max_bytes && e) {
		entry *next = e->newer;
		if (e != keep) {
			drop_prev(sh, e);
			if (!e->fallback_left)
				entry_remove(sh, e);
		}
		e = next;
	}
	return sh->st.bytes_held + n <= sh->o.max_bytes;
}

/* ---- the stream table (mu held) ------------------------------------------------------- */

static entry *find(pd_shadow *sh, const char *tenant, const char *stream, uint64_t h)
{
	for (entry *e = sh->buckets[h % sh->nbuckets]; e; e = e->hnext)
		if (e->hash == h && !strcmp(e->tenant, tenant) && !strcmp(e->stream, stream))
			return e;
	return NULL;
}

static void grow(pd_shadow *sh)
{
	size_t nb = sh->nbuckets * 2;
	entry **b = calloc(nb, sizeof *b);

	if (!b)
		return; /* longer chains, still correct */
	for (size_t i = 0; i < sh->nbuckets; i++)
		for (entry *e = sh->buckets[i], *next; e; e = next) {
			next = e->hnext;
			e->hnext = b[e->hash % nb];
			b[e->hash % nb] = e;
		}
	free(sh->buckets);
	sh->buckets = b;
	sh->nbuckets = nb;
}

static entry *find_or_add(pd_shadow *sh, const char *tenant, const char *stream)
{
	uint64_t h = stream_hash(tenant, stream);
	size_t tl = strlen(tenant) + 1, sl = strlen(stream) + 1;
	entry *e = find(sh, tenant, stream, h);

	if (e)
		return e;
	if (!make_room(sh, NULL, sizeof *e + tl + sl) || !(e = calloc(1, sizeof *e)))
		return NULL;
	if (!(e->tenant = malloc(tl + sl))) {
		free(e);
		return NULL;
	}
	memcpy(e->tenant, tenant, tl);
	e->stream = e->tenant + tl;
	memcpy(e->stream, stream, sl);
	e->hash = h;
	e->cost = sizeof *e + tl + sl;
	held_add(sh, e->cost);
	if (++sh->nentries > 2 * sh->nbuckets)
		grow(sh);
	e->hnext = sh->buckets[h % sh->nbuckets];
	sh->buckets[h % sh->nbuckets] = e;
	sh->st.streams = sh->nentries;
	return e;
}

/* ---- handing a case over -------------------------------------------------------------- */

static void check_free(check *ck)
{
	if (!ck)
		return;
	if (ck->ovr)
		for (size_t i = 0; i < ck->req.noverrides; i++)
			free((char *)(uintptr_t)ck->ovr[i].name);
	free(ck->ovr);
	free(ck->tenant);
	free(ck->out);
	free(ck);
}

/* A check with copies of everything it reads but the uploads. */
static check *check_new(const pd_shadow_case *c)
{
	size_t tl = strlen(c->tenant) + 1, sl = strlen(c->stream) + 1;
	check *ck = calloc(1, sizeof *ck);

	if (!ck || !(ck->tenant = malloc(tl + sl)) || !(ck->out = malloc(c->out_len + 1)))
		goto fail;
	memcpy(ck->tenant, c->tenant, tl);
	ck->stream = ck->tenant + tl;
	memcpy(ck->stream, c->stream, sl);
	memcpy(ck->out, c->out, c->out_len);
	ck->out_len = c->out_len;
	ck->seq = c->seq;
	ck->prev_incarnation = c->prev_incarnation;
	ck->status = c->status;
	ck->reason = c->reason;
	ck->req = *c->req;
	ck->req.overrides = NULL;
	ck->req.noverrides = 0;
	if (c->req->noverrides) {
		if (!(ck->ovr = calloc(c->req->noverrides, sizeof *ck->ovr)))
			goto fail;
		for (size_t i = 0; i < c->req->noverrides; i++, ck->req.noverrides++) {
			ck->ovr[i].policy = c->req->overrides[i].policy;
			if (!(ck->ovr[i].name = strdup(c->req->overrides[i].name)))
				goto fail;
		}
		ck->req.overrides = ck->ovr;
	}
	ck->cost = sizeof *ck + c->out_len + tl + sl;
	return ck;
fail:
	check_free(ck);
	return NULL;
}

/* Does the engine's answer rest on the stream's previous upload? (A first
 * profile or a BASELINE after lost state does not.) */
static int uses_prev(int status, int reason)
{
	return status == PD_STATUS_DELTA || reason == PD_REASON_RESET;
}

static void skip(pd_shadow *sh, entry *e, int why)
{
	sh->st.skipped[why]++;
	if (e && why != PD_SHADOW_SKIP_LIMIT && why != PD_SHADOW_SKIP_STATE)
		drop_prev(sh, e); /* the next delta has nothing to be checked against */
}

/* Keeps nb as e's upload and queues ck (both may be NULL); mu held. Returns
 * what was not taken. */
static void offer_locked(pd_shadow *sh, const pd_shadow_case *c, entry *e, blob **nb, check **ck)
{
	size_t cost = sizeof **nb + (*nb)->n + (*ck ? (*ck)->cost : 0);

	if (*ck && uses_prev(c->status, c->reason) && (!e->prev || e->seq != c->prev_seq)) {
		skip(sh, e, PD_SHADOW_SKIP_STATE);
		cost -= (*ck)->cost;
		check_free(*ck);
		*ck = NULL;
	}
	if (!make_room(sh, e, cost)) {
		skip(sh, e, PD_SHADOW_SKIP_BUDGET);
		return;
	}
	if (*ck && sh->st.queued >= sh->o.max_queue) {
		skip(sh, e, PD_SHADOW_SKIP_LIMIT);
		check_free(*ck);
		*ck = NULL;
	}
	held_add(sh, sizeof **nb + (*nb)->n);
	if (*ck) {
		held_add(sh, (*ck)->cost);
		(*ck)->prev = uses_prev(c->status, c->reason) ? ref(e->prev) : NULL;
		(*ck)->cur = ref(*nb);
		PD_QUEUE_PUSH(sh->head, sh->tail, *ck, next);
		sh->st.queued++;
		pthread_cond_signal(&sh->cv);
		*ck = NULL;
	}
	drop_prev(sh, e);
	e->prev = *nb;
	e->seq = c->seq;
	*nb = NULL;
}

void pd_shadow_offer(pd_shadow *sh, const pd_shadow_case *c)
{
	blob *nb = NULL;
	check *ck = NULL;
	entry *e;
	int big = c->in_len > sh->o.max_upload;

	if (!pd_shadow_watched(sh, c->tenant, c->stream) || c->status == PD_STATUS_DUPLICATE)
		return;
	if (!big && (nb = malloc(sizeof *nb + c->in_len))) {
		nb->refs = 1;
		nb->n = c->in_len;
		memcpy(nb->data, c->in, c->in_len);
		ck = check_new(c); /* copies made before taking the lock */
	}
	pthread_mutex_lock(&sh->mu);
	if (!(e = find_or_add(sh, c->tenant, c->stream))) {
		sh->st.skipped[PD_SHADOW_SKIP_BUDGET]++;
	} else {
		lru_touch(sh, e);
		if (big)
			skip(sh, e, PD_SHADOW_SKIP_SIZE);
		else if (!nb || !ck)
			skip(sh, e, PD_SHADOW_SKIP_BUDGET); /* out of memory */
		else
			offer_locked(sh, c, e, &nb, &ck);
	}
	pthread_mutex_unlock(&sh->mu);
	free(nb);
	check_free(ck);
}

/* ---- the comparison ------------------------------------------------------------------- */

static uint64_t thread_cpu_ns(void) { return pd_thread_cpu_ns(); }

static void add_kind(pd_shadow *sh, const char *col, const char *reason)
{
	pd_shadow_kind *k = sh->st.kinds;
	size_t i;

	for (i = 0; i < sh->st.nkinds; i++)
		if (!strcmp(k[i].col, col) && !strcmp(k[i].reason, reason))
			break;
	if (i == sh->st.nkinds && i == PD_SHADOW_KINDS) {
		i = PD_SHADOW_KINDS - 1; /* the last slot is the "_other" bucket */
		snprintf(k[i].col, sizeof k[i].col, "_other");
		snprintf(k[i].reason, sizeof k[i].reason, "_other");
	} else if (i == sh->st.nkinds) {
		snprintf(k[i].col, sizeof k[i].col, "%s", col);
		snprintf(k[i].reason, sizeof k[i].reason, "%s", reason);
		sh->st.nkinds++;
	}
	k[i].n++;
}

/* 1 = a mismatch, 0 = equal, -1 = skipped (a slow-path cap). */
static int judge(pd_shadow *sh, const check *ck, pd_slow_verdict *v)
{
	return pd_slow_verify(ck->prev ? ck->prev->data : NULL, ck->prev ? ck->prev->n : 0,
			      ck->cur->data, ck->cur->n, ck->out, ck->out_len, &ck->req,
			      ck->prev_incarnation, ck->status, ck->reason, &sh->o.limits, v);
}

/* ---- quarantine ----------------------------------------------------------------------- */

/* dir/name; NULL (errno ENAMETOOLONG) when the path does not fit. */
static FILE *open_in(const char *dir, const char *name, const char *mode)
{
	char path[4096];
	int n = snprintf(path, sizeof path, "%s/%s", dir, name);

	if (n < 0 || (size_t)n >= sizeof path) {
		errno = ENAMETOOLONG;
		return NULL;
	}
	return fopen(path, mode);
}

static int write_file(const char *dir, const char *name, const void *p, size_t n)
{
	FILE *f;
	int ok;

	if (!(f = open_in(dir, name, "wb")))
		return -1;
	ok = fwrite(p, 1, n, f) == n;
	return (fclose(f) == 0 && ok) ? 0 : -1;
}

static int write_slow_text(const char *dir, const pd_slow_profile *p)
{
	FILE *f;
	int ok = 1;

	if (!(f = open_in(dir, "slow.txt", "w")))
		return -1;
	fprintf(f, "# slow path delta: %s %s (%s); time_nanos %" PRId64 " duration_nanos %" PRId64 "\n",
		pd_status_name(pd_slow_status(p)), pd_reason_name(pd_slow_reason(p)), pd_slow_why(p),
		pd_slow_time_nanos(p), pd_slow_duration_nanos(p));
	fprintf(f, "# key");
	for (uint32_t c = 0; c < pd_slow_ncols(p); c++)
		fprintf(f, "\t%s", pd_slow_col(p, c));
	fprintf(f, "\n");
	for (size_t r = 0; r < pd_slow_rows(p); r++) {
		const char *key = pd_slow_key(p, r);
		fprintf(f, "%s", key);
		for (uint32_t c = 0; c < pd_slow_ncols(p); c++) {
			int found;
			fprintf(f, "\t%" PRId64, pd_slow_value(p, key, pd_slow_col(p, c), &found));
		}
		ok &= fprintf(f, "\n") > 0;
	}
	return (fclose(f) == 0 && ok) ? 0 : -1;
}

static int write_diffs(const char *dir, const pd_slow_verdict *v)
{
	char line[1024];
	FILE *f;

	if (!(f = open_in(dir, "diff.txt", "w")))
		return -1;
	fprintf(f, "# engine (a) against slow path (b): %zu difference(s)%s\n", v->n,
		v->n > PD_SLOW_VERDICT_DIFFS ? ", the first listed" : "");
	if (v->broken)
		fprintf(f, "%s: %s\n", v->broken, v->what);
	for (size_t i = 0; i < v->n && i < PD_SLOW_VERDICT_DIFFS; i++) {
		pd_slow_diff_format(&v->diffs[i], line, sizeof line);
		fprintf(f, "%s\n", line);
	}
	return fclose(f) == 0 ? 0 : -1;
}

static int write_case_txt(const char *dir, const check *ck)
{
	FILE *f;

	if (!(f = open_in(dir, "case.txt", "w")))
		return -1;
	fprintf(f, "tenant %s\nstream %s\nseq %" PRIu64 "\nengine %s %s\n", ck->tenant, ck->stream,
		ck->seq, pd_status_name(ck->status), pd_reason_name(ck->reason));
	fprintf(f, "first_policy %d\nincarnation %" PRIu64 " (stored %" PRIu64 ")\n",
		ck->req.first_policy, ck->req.incarnation, ck->prev_incarnation);
	for (size_t i = 0; i < ck->req.noverrides; i++)
		fprintf(f, "override %s=%s\n", ck->req.overrides[i].name,
			ck->req.overrides[i].policy == PD_POLICY_GAUGE ? "gauge" : "delta");
	fprintf(f, "# replay: pdelta diff %s -o again.pb.gz (then compare with engine.pb.gz)\n",
		ck->prev ? "prev.pb.gz cur.pb.gz" : "--first cur.pb.gz");
	return fclose(f) == 0 ? 0 : -1;
}

static int case_write(pd_shadow *sh, const check *ck, const pd_slow_verdict *v, const char *dir)
{
	uint8_t *pb = NULL;
	size_t pbn = 0;
	pd_err e;
	int rc = 0;

	if (mkdir(dir, 0750))
		return -1;
	if (ck->prev)
		rc |= write_file(dir, "prev.pb.gz", ck->prev->data, ck->prev->n);
	rc |= write_file(dir, "cur.pb.gz", ck->cur->data, ck->cur->n);
	rc |= write_file(dir, "engine.pb.gz", ck->out, ck->out_len);
	if (v->slow) {
		rc |= write_slow_text(dir, v->slow);
		if (!pd_slow_encode(ck->cur->data, ck->cur->n, &sh->o.limits, v->slow, &pb, &pbn, &e))
			rc |= write_file(dir, "slow.pb", pb, pbn);
		free(pb);
	}
	rc |= write_diffs(dir, v);
	rc |= write_case_txt(dir, ck);
	return rc;
}

static uint64_t dir_bytes(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	uint64_t n = 0;
	char path[4096];
	struct stat sb;

	while (d && (de = readdir(d)))
		if (de->d_name[0] != '.' &&
		    snprintf(path, sizeof path, "%s/%s", dir, de->d_name) < (int)sizeof path &&
		    !stat(path, &sb))
			n += (uint64_t)sb.st_size;
	if (d)
		closedir(d);
	return n;
}

static void rm_case(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	char path[4096];

	while (d && (de = readdir(d)))
		if (de->d_name[0] != '.' &&
		    snprintf(path, sizeof path, "%s/%s", dir, de->d_name) < (int)sizeof path)
			unlink(path);
	if (d)
		closedir(d);
	rmdir(dir);
}

static int cmp_name(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Removes the oldest cases (names sort by time) past the count and byte caps. */
static void prune(pd_shadow *sh)
{
	DIR *d = opendir(sh->dir);
	struct dirent *de;
	char **names = NULL, path[4096];
	uint64_t *bytes = NULL, total = 0;
	size_t n = 0, cap = 0, i;

	while (d && (de = readdir(d))) {
		if (strncmp(de->d_name, "case-", 5))
			continue;
		if (n == cap) {
			size_t nc = cap ? cap * 2 : 64;
			char **nn = realloc(names, nc * sizeof *nn);
			if (!nn)
				break;
			names = nn;
			cap = nc;
		}
		if (!(names[n] = strdup(de->d_name)))
			break;
		n++;
	}
	if (d)
		closedir(d);
	qsort(names, n, sizeof *names, cmp_name);
	if (n && (bytes = calloc(n, sizeof *bytes)))
		for (i = 0; i < n; i++) {
			snprintf(path, sizeof path, "%s/%s", sh->dir, names[i]);
			total += bytes[i] = dir_bytes(path);
		}
	for (i = 0; bytes && i + 1 < n && (n - i > sh->o.dir_max_files || total > sh->o.dir_max_bytes);
	     i++) {
		snprintf(path, sizeof path, "%s/%s", sh->dir, names[i]);
		rm_case(path);
		total -= bytes[i];
		pthread_mutex_lock(&sh->mu);
		sh->st.quarantine_removed++;
		pthread_mutex_unlock(&sh->mu);
	}
	for (i = 0; i < n; i++)
		free(names[i]);
	free(names);
	free(bytes);
}

/* Writes the case; its directory name into path ("" when none). */
static void quarantine(pd_shadow *sh, const check *ck, const pd_slow_verdict *v, char *path, size_t cap)
{
	int rc;

	path[0] = 0;
	if (!sh->dir)
		return;
	snprintf(path, cap, "%s/case-%013lld-%06llu", sh->dir, (long long)pd_wall_ms(),
		 (unsigned long long)++sh->ncases);
	rc = case_write(sh, ck, v, path);
	pthread_mutex_lock(&sh->mu);
	if (rc)
		sh->st.quarantine_failed++;
	else
		sh->st.quarantined++;
	pthread_mutex_unlock(&sh->mu);
	if (rc)
		pd_log(PD_LOG_ERROR, "shadow: could not write the mismatch case %s: %s", path,
		       strerror(errno));
	prune(sh);
}

static void log_mismatch(const check *ck, const pd_slow_verdict *v, const char *path)
{
	pd_log_ctx ctx = {.tenant = ck->tenant, .stream = ck->stream, .event = "shadow_mismatch"};
	char line[SH_DIFFS_LOGGED][320];

	for (size_t i = 0; i < SH_DIFFS_LOGGED; i++) {
		line[i][0] = 0;
		if (i < v->n)
			pd_slow_diff_format(&v->diffs[i], line[i], sizeof line[i]);
	}
	pd_logx(PD_LOG_WARN, &ctx,
		"shadow: engine and slow path differ on stream %s/%s at seq %" PRIu64
		" (%zu difference(s)%s%s): %s%s%s%s%s; case %s",
		ck->tenant, ck->stream, ck->seq, v->n, v->broken ? ", " : "", v->broken ? v->what : "", line[0],
		line[1][0] ? " | " : "", line[1], line[2][0] ? " | " : "", line[2],
		path[0] ? path : "not kept (no shadow_dir)");
}

static void count_mismatch(pd_shadow *sh, const check *ck, const pd_slow_verdict *v, int *log_it)
{
	entry *e = find(sh, ck->tenant, ck->stream, stream_hash(ck->tenant, ck->stream));

	sh->st.mismatches++;
	if (v->broken)
		add_kind(sh, "", v->broken);
	for (size_t i = 0; i < v->n && i < PD_SLOW_VERDICT_DIFFS; i++) {
		size_t j;
		for (j = 0; j < i; j++) /* each (type, reason) once per case */
			if (!strcmp(v->diffs[j].col, v->diffs[i].col) && !strcmp(v->diffs[j].reason, v->diffs[i].reason))
				break;
		if (j == i)
			add_kind(sh, v->diffs[i].col, v->diffs[i].reason);
	}
	*log_it = !e || !e->logged;
	if (e) {
		e->logged = 1;
		e->fallback_left = sh->o.fallback;
	}
}

static void run_check(pd_shadow *sh, const check *ck)
{
	uint64_t t0 = thread_cpu_ns();
	pd_slow_verdict *v = calloc(1, sizeof *v);
	char path[4096] = "";
	int r = v ? judge(sh, ck, v) : -1, log_it = 0;

	pthread_mutex_lock(&sh->mu);
	if (r < 0)
		sh->st.skipped[PD_SHADOW_SKIP_LIMIT]++;
	else
		sh->st.verified++;
	if (r > 0)
		count_mismatch(sh, ck, v, &log_it);
	pthread_mutex_unlock(&sh->mu);
	if (r > 0) {
		quarantine(sh, ck, v, path, sizeof path);
		if (log_it)
			log_mismatch(ck, v, path);
	}
	if (v)
		pd_slow_verdict_free(v);
	free(v);
	pthread_mutex_lock(&sh->mu);
	sh->st.cpu_ns += thread_cpu_ns() - t0;
	pthread_mutex_unlock(&sh->mu);
}

static void *shadow_main(void *arg)
{
	pd_shadow *sh = arg;

	pthread_mutex_lock(&sh->mu);
	for (;;) {
		check *ck;
		while (!sh->head && !sh->quit)
			pthread_cond_wait(&sh->cv, &sh->mu);
		if (sh->quit)
			break;
		ck = sh->head;
		if (!(sh->head = ck->next))
			sh->tail = NULL;
		pthread_mutex_unlock(&sh->mu);
		run_check(sh, ck);
		pthread_mutex_lock(&sh->mu);
		sh->st.queued--;
		sh->st.bytes_held -= ck->cost;
		unref(sh, ck->prev);
		unref(sh, ck->cur);
		check_free(ck);
	}
	pthread_mutex_unlock(&sh->mu);
	return NULL;
}

/* ---- fallback ----------------------------------------------------------------------- */

static int append_sink(void *ctx, const uint8_t *p, size_t n)
{
	return pd_buf_append(ctx, p, n, NULL) ? -1 : 0;
}

static int slow_answer(pd_shadow *sh, const blob *prev, const pd_shadow_case *c, int level,
		       pd_buf *out, int *status, int *reason)
{
	pd_slow_profile *d = NULL;
	uint8_t *pb = NULL;
	size_t pbn = 0;
	pd_deflater z;
	pd_err e;
	int rc;

	pd_defl_init(&z);
	if (!(rc = pd_slow_delta_raw(prev ? prev->data : NULL, prev ? prev->n : 0, c->in, c->in_len,
				     c->req, c->prev_incarnation, &sh->o.limits, &d, &e)) &&
	    !(rc = pd_slow_encode(c->in, c->in_len, &sh->o.limits, d, &pb, &pbn, &e)) &&
	    !(rc = pd_defl_begin(&z, level, 1, 0, append_sink, out, &e)) &&
	    !(rc = pd_defl_finish_with(&z, pb, pbn, &e))) {
		*status = pd_slow_status(d);
		*reason = pd_slow_reason(d);
	}
	pd_defl_free(&z);
	free(pb);
	pd_slow_free(d);
	return rc;
}

int pd_shadow_fallback(pd_shadow *sh, const pd_shadow_case *c, int level, pd_buf *out,
		       int *status, int *reason)
{
	entry *e;
	blob *prev = NULL;
	int ok;

	if (!pd_shadow_watched(sh, c->tenant, c->stream))
		return 0;
	pthread_mutex_lock(&sh->mu);
	e = find(sh, c->tenant, c->stream, stream_hash(c->tenant, c->stream));
	if (!e || !e->fallback_left) {
		pthread_mutex_unlock(&sh->mu);
		return 0;
	}
	e->fallback_left--;
	if (e->prev && e->seq == c->prev_seq)
		prev = ref(e->prev);
	ok = prev || !uses_prev(c->status, c->reason);
	pthread_mutex_unlock(&sh->mu);
	ok = ok && !slow_answer(sh, prev, c, level, out, status, reason);
	pthread_mutex_lock(&sh->mu);
	unref(sh, prev);
	if (ok)
		sh->st.fallback_answers++;
	else
		sh->st.fallback_failed++;
	pthread_mutex_unlock(&sh->mu);
	return ok;
}

/* ---- lifecycle ------------------------------------------------------------------------ */

void pd_shadow_stats_get(pd_shadow *sh, pd_shadow_stats *out)
{
	if (!sh) {
		memset(out, 0, sizeof *out);
		return;
	}
	pthread_mutex_lock(&sh->mu);
	*out = sh->st;
	pthread_mutex_unlock(&sh->mu);
}

/* Without create, a missing dir is fine when mkdir would make it: its
 * parent is a directory we may write. */
static int can_create(const char *dir, pd_err *e)
{
	char *copy = strdup(dir), *slash;
	const char *parent, *why = NULL;
	struct stat sb;
	int rc = PD_OK;

	if (!copy)
		return pd_err_set(e, PD_E_NOMEM, "out of memory");
	for (size_t n = strlen(copy); n > 1 && copy[n - 1] == '/'; n--)
		copy[n - 1] = 0; /* "a/b/" is created in a/ as "a/b" is */
	slash = strrchr(copy, '/');
	parent = !slash ? "." : slash == copy ? "/" : copy;
	if (slash && slash != copy)
		*slash = 0;
	if (stat(parent, &sb))
		why = strerror(errno);
	else if (!S_ISDIR(sb.st_mode))
		why = "not a directory";
	else if (access(parent, W_OK | X_OK))
		why = strerror(errno);
	if (why)
		rc = pd_err_set(e, PD_E_ARG, "shadow_dir: '%s' does not exist and cannot be created "
				"(%s: %s)", dir, parent, why);
	free(copy);
	return rc;
}

int pd_shadow_check_dir(const char *dir, int create, pd_err *e)
{
	struct stat sb;

	errno = 0;
	if (stat(dir, &sb)) {
		if (errno != ENOENT || !create)
			return errno == ENOENT ? can_create(dir, e)
					       : pd_err_set(e, PD_E_ARG, "shadow_dir: '%s': %s", dir,
							    strerror(errno));
		if (mkdir(dir, 0750))
			return pd_err_set(e, PD_E_ARG, "shadow_dir: cannot create '%s': %s", dir,
					  strerror(errno));
	} else if (!S_ISDIR(sb.st_mode)) {
		return pd_err_set(e, PD_E_ARG, "shadow_dir: '%s' is not a directory", dir);
	}
	if (access(dir, W_OK | X_OK))
		return pd_err_set(e, PD_E_ARG, "shadow_dir: '%s' is not writable: %s", dir,
				  strerror(errno));
	return PD_OK;
}

int pd_shadow_new(const pd_shadow_opts *o, pd_shadow **out, pd_err *e)
{
	pd_shadow *sh;
	int rc;

	*out = NULL;
	if (!o->rate_ppm)
		return PD_OK;
	if (o->dir && o->dir[0] && (rc = pd_shadow_check_dir(o->dir, 1, e)))
		return rc;
	if (!(sh = calloc(1, sizeof *sh)))
		return pd_err_set(e, PD_E_NOMEM, "out of memory");
	sh->o = *o;
	sh->nbuckets = 1024;
	if (!(sh->buckets = calloc(sh->nbuckets, sizeof *sh->buckets)) ||
	    (o->dir && o->dir[0] && !(sh->dir = strdup(o->dir)))) {
		free(sh->buckets);
		free(sh);
		return pd_err_set(e, PD_E_NOMEM, "out of memory");
	}
	sh->o.dir = sh->dir;
	pthread_mutex_init(&sh->mu, NULL);
	pthread_cond_init(&sh->cv, NULL);
	if (pthread_create(&sh->tid, NULL, shadow_main, sh)) {
		pthread_mutex_destroy(&sh->mu);
		pthread_cond_destroy(&sh->cv);
		free(sh->dir);
		free(sh->buckets);
		free(sh);
		return pd_err_set(e, PD_E_INTERNAL, "cannot start the shadow thread");
	}
	*out = sh;
	return PD_OK;
}

void pd_shadow_free(pd_shadow *sh)
{
	if (!sh)
		return;
	pthread_mutex_lock(&sh->mu);
	sh->quit = 1;
	pthread_cond_signal(&sh->cv);
	pthread_mutex_unlock(&sh->mu);
	pthread_join(sh->tid, NULL);
	for (check *ck = sh->head, *next; ck; ck = next) {
		next = ck->next;
		unref(sh, ck->prev);
		unref(sh, ck->cur);
		check_free(ck);
	}
	while (sh->oldest)
		entry_remove(sh, sh->oldest);
	pthread_mutex_destroy(&sh->mu);
	pthread_cond_destroy(&sh->cv);
	free(sh->dir);
	free(sh->buckets);
	free(sh);
}
