/*
 * pdl_scrape_files: what the scrape loop reads and writes.
 *  - sc_fetch: one profile from a target over HTTP(S) with libcurl: timeout,
 *    TLS CA, bearer or basic auth, and a hard cap on the body (never buffered
 *    past it);
 *  - the state file: the incarnation and each stream's last delivered
 *    sequence number with the time its profile was scraped (where the next
 *    push's interval starts), rewritten atomically (temporary file, fsync,
 *    rename) from a snapshot, outside the loop's lock; locked by STATE.lock;
 *  - pending uploads: a profile is written to PENDING/<stream> before it is
 *    sent and removed once its delta was delivered and the state saved, so a
 *    restarted agent sends it again with the same sequence number;
 *  - the file sinks: ROOT/NAME/TYPE/NNN.pb.gz (NNN = sequence - 1) written
 *    atomically, with retention.
 */
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pdl_scrape.h"

int sc_buf_add(sc_buf *b, const void *p, size_t n)
{
	if (b->max && b->n + n > b->max)
		return -1;
	if (b->n + n > b->cap) {
		size_t cap = b->cap ? b->cap : 65536;
		while (cap < b->n + n)
			cap *= 2;
		unsigned char *np = realloc(b->p, cap);
		if (!np)
			return -1;
		b->p = np;
		b->cap = cap;
	}
	memcpy(b->p + b->n, p, n);
	b->n += n;
	return 0;
}

void sc_buf_free(sc_buf *b)
{
	free(b->p);
	memset(b, 0, sizeof *b);
}

/* ---- HTTP fetch ------------------------------------------------------------ */

static size_t on_body(char *p, size_t sz, size_t n, void *ctx)
{
	return sc_buf_add(ctx, p, sz * n) ? 0 : sz * n;
}

int sc_fetch(pdelta_scrape *s, const sc_stream *st, void *curl, sc_buf *body, char *err, size_t errlen)
{
	const sc_target *t = st->t;
	char url[4096];
	unsigned timeout = t->timeout_ms ? t->timeout_ms : s->o.timeout_ms;
	size_t max = t->max_body ? t->max_body : s->o.max_body;
	const char *type = strcmp(st->type, "cpu") == 0 ? "profile" : st->type;
	long status = 0;
	CURLcode rc;

	body->n = 0;
	body->max = max;
	if (strcmp(st->type, "cpu") == 0) {
		snprintf(url, sizeof url, "%s%s/%s?seconds=%u", t->url, t->prefix, type, s->o.cpu_seconds);
		timeout += s->o.cpu_seconds * 1000;
	} else {
		snprintf(url, sizeof url, "%s%s/%s", t->url, t->prefix, type);
	}
	curl_easy_reset(curl);
	curl_easy_setopt(curl, CURLOPT_URL, url);
	curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, (long)timeout);
	curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, (long)(timeout < 5000 ? timeout : 5000));
	curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(curl, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)max);
	curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(curl, CURLOPT_WRITEDATA, body);
	curl_easy_setopt(curl, CURLOPT_USERAGENT, "pdelta-scrape/" PDELTA_VERSION);
	if (t->ca)
		curl_easy_setopt(curl, CURLOPT_CAINFO, t->ca);
	if (t->bearer) {
		curl_easy_setopt(curl, CURLOPT_HTTPAUTH, CURLAUTH_BEARER);
		curl_easy_setopt(curl, CURLOPT_XOAUTH2_BEARER, t->bearer);
	} else if (t->basic) {
		curl_easy_setopt(curl, CURLOPT_HTTPAUTH, CURLAUTH_BASIC);
		curl_easy_setopt(curl, CURLOPT_USERPWD, t->basic);
	}
	rc = curl_easy_perform(curl);
	curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
	if (rc == CURLE_WRITE_ERROR || rc == CURLE_FILESIZE_EXCEEDED) {
		sc_count(s, SCM_SCRAPE_TOO_LARGE, 1);
		snprintf(err, errlen, "%s: body larger than max_body (%zu bytes)", url, max);
		return -1;
	}
	if (rc == CURLE_OPERATION_TIMEDOUT) {
		sc_count(s, SCM_SCRAPE_TIMEOUT, 1);
		snprintf(err, errlen, "%s: timeout after %u ms", url, timeout);
		return -1;
	}
	if (rc == CURLE_PEER_FAILED_VERIFICATION || rc == CURLE_SSL_CACERT_BADFILE ||
	    rc == CURLE_SSL_CONNECT_ERROR) {
		sc_count(s, SCM_SCRAPE_TLS, 1);
		snprintf(err, errlen, "%s: TLS: %s (check the target's CA: ca= / --target-ca)", url,
			 curl_easy_strerror(rc));
		return -1;
	}
	if (rc != CURLE_OK) {
		snprintf(err, errlen, "%s: %s", url, curl_easy_strerror(rc));
		return -1;
	}
	if (status != 200) {
		sc_count(s, SCM_SCRAPE_HTTP, 1);
		snprintf(err, errlen, "%s: HTTP %ld", url, status);
		return -1;
	}
	if (body->n == 0) {
		snprintf(err, errlen, "%s: empty body", url);
		return -1;
	}
	return 0;
}

/* ---- files ------------------------------------------------------------------ */

int sc_mkdirs(const char *path)
{
	char tmp[4096];
	size_t n = strlen(path);

	if (n == 0 || n >= sizeof tmp)
		return -1;
	memcpy(tmp, path, n + 1);
	for (char *p = tmp + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = 0;
		if (mkdir(tmp, 0755) && errno != EEXIST)
			return -1;
		*p = '/';
	}
	return mkdir(tmp, 0755) && errno != EEXIST ? -1 : 0;
}

static int write_all(int fd, const void *p, size_t n)
{
	const unsigned char *c = p;

	while (n) {
		ssize_t w = write(fd, c, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		c += w;
		n -= (size_t)w;
	}
	return 0;
}

/* path gets a then b, or nothing: temporary file, fsync, rename. */
int sc_write_atomic(const char *path, const void *a, size_t na, const void *b, size_t nb)
{
	char tmp[4200];
	int fd, rc = -1;

	snprintf(tmp, sizeof tmp, "%s.tmp.%d.%lx", path, (int)getpid(), (unsigned long)pthread_self());
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -1;
	if (write_all(fd, a, na) == 0 && (!nb || write_all(fd, b, nb) == 0) && fsync(fd) == 0)
		rc = 0;
	if (close(fd))
		rc = -1;
	if (rc == 0 && rename(tmp, path))
		rc = -1;
	if (rc)
		unlink(tmp);
	return rc;
}

int sc_read_line(FILE *f, char *buf, size_t cap, size_t *len)
{
	size_t n = 0;
	int c = 0;

	while (n + 1 < cap && c != '\n' && (c = getc(f)) != EOF)
		buf[n++] = (char)c;
	buf[n] = 0;
	*len = n;
	if (n + 1 == cap && c != '\n' && (c = getc(f)) != EOF)
		return -1;
	return n > 0;
}

static int read_whole(const char *path, sc_buf *b)
{
	FILE *f = fopen(path, "rb");
	unsigned char chunk[65536];
	size_t n;
	int rc = 0;

	if (!f)
		return -1;
	b->n = 0;
	while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
		if (sc_buf_add(b, chunk, n)) {
			rc = -1;
			break;
		}
	if (ferror(f))
		rc = -1;
	fclose(f);
	return rc;
}

/* ---- the state file ------------------------------------------------------- */

/* One agent per state file: an exclusive flock on STATE.lock (not on the state
 * file itself, which every save replaces by a rename), held until exit. */
int sc_state_lock(pdelta_scrape *s, char *err, size_t errlen)
{
	char path[4200], pid[32];
	int fd, n;

	snprintf(path, sizeof path, "%s.lock", s->state_file);
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0) {
		snprintf(err, errlen, "cannot open the state lock %s: %s", path, strerror(errno));
		return -1;
	}
	if (flock(fd, LOCK_EX | LOCK_NB)) {
		int e = errno;
		char holder[32] = "";
		ssize_t k = pread(fd, holder, sizeof holder - 1, 0);
		holder[k > 0 ? k : 0] = 0;
		holder[strcspn(holder, "\n")] = 0;
		close(fd);
		if (e == EWOULDBLOCK)
			snprintf(err, errlen, "the state file %s is in use by another agent (%s held by pid %s)",
				 s->state_file, path, holder[0] ? holder : "?");
		else
			snprintf(err, errlen, "cannot lock %s: %s", path, strerror(e));
		return -1;
	}
	n = snprintf(pid, sizeof pid, "%d\n", (int)getpid());
	/* the pid only names the holder in a second agent's message */
	if (ftruncate(fd, 0) || pwrite(fd, pid, (size_t)n, 0) != n)
		sc_log(s, 1, "cannot write the pid to %s: %s", path, strerror(errno));
	s->lock_fd = fd;
	return 0;
}

static sc_state_ent *state_find(pdelta_scrape *s, const char *stream)
{
	for (size_t i = 0; i < s->nstate; i++)
		if (strcmp(s->state[i].name, stream) == 0)
			return &s->state[i];
	return NULL;
}

uint64_t sc_state_get(pdelta_scrape *s, const char *stream, int64_t *scraped_ms)
{
	sc_state_ent *e = state_find(s, stream);

	*scraped_ms = e ? e->scraped_ms : 0;
	return e ? e->seq : 0;
}

uint64_t sc_state_attach(pdelta_scrape *s, const char *stream)
{
	sc_state_ent *e = state_find(s, stream);

	if (!e)
		return 0;
	e->gone_ms = 0;
	return e->seq;
}

void sc_state_detach(pdelta_scrape *s, const char *stream, int64_t now)
{
	sc_state_ent *e = state_find(s, stream);

	if (e && !e->gone_ms)
		e->gone_ms = now;
}

/* Drops the entries (and pending uploads) of streams gone for longer than
 * the grace period: target churn does not grow the state file. */
void sc_state_expire(pdelta_scrape *s, int64_t now)
{
	size_t j = 0;

	for (size_t i = 0; i < s->nstate; i++) {
		sc_state_ent *e = &s->state[i];
		if (e->gone_ms && now - e->gone_ms >= (int64_t)s->o.state_grace_ms) {
			sc_log(s, 0, "state: %s dropped (its target is gone since %" PRId64 " s)", e->name,
			       (now - e->gone_ms) / 1000);
			sc_pending_remove(s, e->name);
			free(e->name);
			s->state_dirty = 1;
			continue;
		}
		s->state[j++] = *e;
	}
	s->nstate = j;
}

void sc_state_set(pdelta_scrape *s, const char *stream, uint64_t seq, int64_t scraped_ms)
{
	sc_state_ent *ns, *e = state_find(s, stream);

	if (e) {
		e->seq = seq;
		e->scraped_ms = scraped_ms;
		return;
	}
	ns = realloc(s->state, (s->nstate + 1) * sizeof *ns);
	if (!ns)
		return;
	s->state = ns;
	s->state[s->nstate].name = strdup(stream);
	s->state[s->nstate].seq = seq;
	s->state[s->nstate].scraped_ms = scraped_ms;
	s->state[s->nstate].gone_ms = 0;
	if (s->state[s->nstate].name)
		s->nstate++;
}

/* A decimal number as the agent writes it: digits only, no sign, no overflow. */
static int parse_dec_u64(const char *w, uint64_t *out)
{
	char *end;

	if (!*w || strspn(w, "0123456789") != strlen(w))
		return -1;
	errno = 0;
	*out = strtoull(w, &end, 10);
	return errno ? -1 : 0;
}

/* "stream NAME SEQ [GONE_UNIX_MS] [scraped=UNIX_MS]": SEQ from 1 (an entry is
 * written once an answer was delivered) to 2^64-2 (the next request needs
 * SEQ + 1); scraped= is when the profile of SEQ was scraped, where the next
 * push's interval starts (absent in an older agent's file: then one interval
 * back). 0, -1 with why set, or 1 with why set when the line was taken but
 * its scrape time ignored: one in the future is no damage of the file but a
 * clock set back, and refusing it would stop the agent over a push window. */
static int stream_line(pdelta_scrape *s, char *line, int64_t now, char *why, size_t n)
{
	char *save = NULL, *name = strtok_r(line + 7, " ", &save), *w_seq = strtok_r(NULL, " ", &save);
	char *w_gone = NULL, *w_scraped = NULL, *w;
	uint64_t seq, gone = 0, scraped = 0;
	int ignored = 0;

	if (!name || !w_seq || strlen(name) > SC_PREFIX_MAX + SC_NAME_MAX + 16) {
		snprintf(why, n, "not a state line");
		return -1;
	}
	while ((w = strtok_r(NULL, " ", &save))) {
		char **slot = strncmp(w, "scraped=", 8) == 0 ? &w_scraped : &w_gone;
		if (*slot) {
			snprintf(why, n, "not a state line");
			return -1;
		}
		*slot = w;
	}
	if (parse_dec_u64(w_seq, &seq) || seq == 0 || seq == UINT64_MAX) {
		snprintf(why, n, "stream %.200s: seq '%.30s' is not a number from 1 to 2^64-2", name, w_seq);
		return -1;
	}
	if (w_gone && (parse_dec_u64(w_gone, &gone) || gone == 0 || gone > INT64_MAX)) {
		snprintf(why, n, "stream %.200s: '%.30s' is not a time in ms since 1970", name, w_gone);
		return -1;
	}
	if (w_scraped && (parse_dec_u64(w_scraped + 8, &scraped) || scraped == 0 || scraped > INT64_MAX)) {
		snprintf(why, n, "stream %.200s: '%.40s' is not a time in ms since 1970", name, w_scraped);
		return -1;
	}
	if (scraped > (uint64_t)now) {
		snprintf(why, n, "stream %.200s: last scrape %" PRIu64 " ms is %" PRIu64 " ms in the future "
			 "(the clock was set back?): ignored, its next push covers one interval",
			 name, scraped, scraped - (uint64_t)now);
		scraped = 0;
		ignored = 1;
	}
	sc_state_set(s, name, seq, (int64_t)scraped);
	sc_state_detach(s, name, gone ? (int64_t)gone : now);
	return ignored;
}

/* One line of the state file (its newline removed); as stream_line(). */
static int state_line(pdelta_scrape *s, char *line, int *saw_inc, int64_t now, char *why, size_t n)
{
	if (strncmp(line, "incarnation ", 12) == 0) {
		uint64_t inc;
		if (parse_dec_u64(line + 12, &inc) || inc == 0) {
			snprintf(why, n, "'%.40s': the incarnation is a number from 1 to 2^64-1", line);
			return -1;
		}
		s->incarnation = inc;
		*saw_inc = 1;
		return 0;
	}
	if (strncmp(line, "stream ", 7) == 0)
		return stream_line(s, line, now, why, n);
	snprintf(why, n, "not a state line");
	return -1;
}

/* Lines: "incarnation K", "stream NAME SEQ [GONE_UNIX_MS] [scraped=UNIX_MS]",
 * each with its newline: the file is written whole, so a last line without
 * one is a truncated write, refused like any damaged line. Entries without an
 * incarnation line are dropped: the server would take their streams' next
 * profile as a reset, and their whole cumulative profile is no interval's
 * delta (a stream without an entry does not push its first answer). An entry
 * no target of this run takes counts as gone from the load on. */
int sc_state_load(pdelta_scrape *s, char *err, size_t errlen)
{
	FILE *f = fopen(s->state_file, "r");
	char line[1024], why[400];
	unsigned lineno = 0;
	int saw_inc = 0, got;
	size_t len;
	int64_t now = sc_now_ms();

	if (!f) {
		if (errno != ENOENT) {
			snprintf(err, errlen, "cannot read state file %s: %s", s->state_file, strerror(errno));
			return -1;
		}
		return 0;
	}
	while ((got = sc_read_line(f, line, sizeof line, &len)) != 0) {
		lineno++;
		if (got < 0 || memchr(line, 0, len) || line[len - 1] != '\n') {
			snprintf(why, sizeof why, "%s", got < 0 ? "line too long" : memchr(line, 0, len) ? "NUL byte"
						: "truncated (no newline at the end: a partial write)");
			goto bad;
		}
		line[len - 1] = 0;
		if (line[0] == '#' || !line[0])
			continue;
		got = state_line(s, line, &saw_inc, now, why, sizeof why);
		if (got < 0)
			goto bad;
		if (got > 0)
			sc_log(s, 1, "state file %s:%u: %s", s->state_file, lineno, why);
	}
	if (ferror(f)) { /* a read error is no end of file: the rest would be lost */
		snprintf(err, errlen, "cannot read state file %s: %s", s->state_file, strerror(errno));
		fclose(f);
		return -1;
	}
	fclose(f);
	if (!saw_inc && s->nstate) {
		sc_log(s, 1, "state file %s has no incarnation line: its %zu stream entries are dropped, "
			     "their streams start afresh", s->state_file, s->nstate);
		for (size_t i = 0; i < s->nstate; i++)
			free(s->state[i].name);
		s->nstate = 0;
	}
	return 0;
bad:
	snprintf(err, errlen, "%s:%u: %s (move the file away to start afresh)", s->state_file, lineno, why);
	fclose(f);
	return -1;
}

int sc_state_snapshot(pdelta_scrape *s, sc_state_snap *snap)
{
	size_t cap = 128 + s->nstate * (SC_PREFIX_MAX + SC_NAME_MAX + 100), n;
	char *text = malloc(cap);

	snap->text = NULL;
	if (!text)
		return -1;
	n = (size_t)snprintf(text, cap, "# pdelta scrape state (rewritten by the agent)\nincarnation %" PRIu64 "\n",
			     s->incarnation);
	for (size_t i = 0; i < s->nstate && n < cap; i++) {
		const sc_state_ent *e = &s->state[i];
		n += (size_t)snprintf(text + n, cap - n, "stream %s %" PRIu64, e->name, e->seq);
		if (e->gone_ms && n < cap)
			n += (size_t)snprintf(text + n, cap - n, " %" PRId64, e->gone_ms);
		if (e->scraped_ms && n < cap)
			n += (size_t)snprintf(text + n, cap - n, " scraped=%" PRId64, e->scraped_ms);
		if (n < cap)
			n += (size_t)snprintf(text + n, cap - n, "\n");
	}
	snap->text = text;
	snap->n = n < cap ? n : cap - 1;
	snap->gen = ++s->state_gen;
	s->state_dirty = 0;
	return 0;
}

/* Writes a snapshot unless a newer one is already on disk: two workers that
 * took theirs in one order may come here in the other. */
int sc_state_write(pdelta_scrape *s, sc_state_snap *snap)
{
	int rc = 0;

	pthread_mutex_lock(&s->save_mu);
	if (snap->gen > s->saved_gen) {
		rc = sc_write_atomic(s->state_file, snap->text, snap->n, NULL, 0);
		if (rc == 0)
			s->saved_gen = snap->gen;
	}
	pthread_mutex_unlock(&s->save_mu);
	free(snap->text);
	snap->text = NULL;
	return rc;
}

int sc_state_save(pdelta_scrape *s)
{
	sc_state_snap snap;

	pthread_mutex_lock(&s->mu);
	int rc = sc_state_snapshot(s, &snap);
	pthread_mutex_unlock(&s->mu);
	return rc ? rc : sc_state_write(s, &snap);
}

/* ---- pending uploads ------------------------------------------------------- */

static void pending_path(pdelta_scrape *s, const char *stream, char *out, size_t len)
{
	size_t n = (size_t)snprintf(out, len, "%s/", s->pending_dir);

	for (const char *p = stream; *p && n + 4 < len; p++) {
		if (*p == '/' || *p == '%')
			n += (size_t)snprintf(out + n, len - n, "%%%02X", (unsigned char)*p);
		else
			out[n++] = *p;
	}
	out[n] = 0;
}

/* Header line: "pdelta-pending SEQ FROM_MS UNTIL_MS", then the profile. */
int sc_pending_write(pdelta_scrape *s, const char *stream, const sc_pending *pd, const sc_buf *b)
{
	char path[4096], head[96];
	int hn = snprintf(head, sizeof head, "pdelta-pending %" PRIu64 " %" PRId64 " %" PRId64 "\n", pd->seq,
			  pd->from_ms, pd->until_ms);

	pending_path(s, stream, path, sizeof path);
	return sc_write_atomic(path, head, (size_t)hn, b->p, b->n);
}

/* 1 and the profile when the stream has a pending upload, 0 when not. A file
 * of an older agent has no interval: from/until are 0 then. */
int sc_pending_read(pdelta_scrape *s, const char *stream, sc_pending *pd, sc_buf *b)
{
	char path[4096], head[96];
	unsigned long long v;
	long long from = 0, until = 0;
	unsigned char *nl;
	size_t skip;

	pending_path(s, stream, path, sizeof path);
	if (access(path, F_OK))
		return 0;
	b->max = 0;
	if (read_whole(path, b) || b->n < 16 || !(nl = memchr(b->p, '\n', b->n < 96 ? b->n : 96))) {
		nl = NULL;
	} else {
		memcpy(head, b->p, (size_t)(nl - b->p));
		head[nl - b->p] = 0;
	}
	if (!nl || sscanf(head, "pdelta-pending %llu %lld %lld", &v, &from, &until) < 1 || v == 0) {
		sc_log(s, 1, "%s: unreadable pending upload %s removed", stream, path);
		unlink(path);
		return 0;
	}
	skip = (size_t)(nl - b->p) + 1;
	memmove(b->p, b->p + skip, b->n - skip);
	b->n -= skip;
	pd->seq = v;
	pd->from_ms = from;
	pd->until_ms = until;
	return 1;
}

void sc_pending_remove(pdelta_scrape *s, const char *stream)
{
	char path[4096];

	pending_path(s, stream, path, sizeof path);
	unlink(path);
}

/* ---- file sinks ----------------------------------------------------------- */

int sc_write_seq_file(pdelta_scrape *s, const char *root, const sc_stream *st, uint64_t seq,
		      const void *p, size_t n, unsigned keep)
{
	char dir[4096], path[4200];

	snprintf(dir, sizeof dir, "%s/%s", root, st->rel);
	if (sc_mkdirs(dir))
		return -1;
	snprintf(path, sizeof path, "%s/%03" PRIu64 ".pb.gz", dir, seq - 1);
	if (sc_write_atomic(path, p, n, NULL, 0))
		return -1;
	if (keep && seq > keep) {
		snprintf(path, sizeof path, "%s/%03" PRIu64 ".pb.gz", dir, seq - 1 - keep);
		unlink(path);
	}
	(void)s;
	return 0;
}
