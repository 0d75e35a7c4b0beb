/*
 * pdl_scrape_push: the push sink. Every delta to push is first written to the
 * spool directory (SPOOL/<20-digit counter>.push: the ingest query, a newline,
 * the gzipped pprof; the query holds the name with the labels and the
 * delta's own from/until, so a resend after an outage or a restart carries
 * the interval of the delta, not the time of the resend), then one thread POSTs the spool in order to
 * PUSH_URL/ingest (Pyroscope's ingest API: format=pprof, the profile as the
 * multipart field "profile", the name carrying the target's labels and
 * __delta__=false, which tells the backend the profile is already a delta and
 * must not be diffed again). 2xx removes the file; 4xx (but 408 and 429) is
 * permanent: the file is dropped, counted and logged; anything else (5xx,
 * timeout, refused) is retried with exponential backoff, holding the queue so
 * the order is kept. The spool survives restarts; beyond spool_max_bytes the
 * oldest files are dropped and counted.
 */
#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "pd_clock.h"
#include "pdl_scrape.h"

#define SPOOL_SUFFIX ".push"

/* The oldest spool file's counter, 0 when the spool is empty. */
static uint64_t spool_oldest(pdelta_scrape *s)
{
	DIR *d = opendir(s->spool_dir);
	struct dirent *e;
	uint64_t best = 0;

	if (!d)
		return 0;
	while ((e = readdir(d))) {
		unsigned long long v;
		char tail[16];
		if (sscanf(e->d_name, "%20llu%15s", &v, tail) == 2 && strcmp(tail, SPOOL_SUFFIX) == 0 &&
		    (best == 0 || v < best))
			best = v;
	}
	closedir(d);
	return best;
}

static void spool_path(pdelta_scrape *s, uint64_t id, char *out, size_t len)
{
	snprintf(out, len, "%s/%020" PRIu64 SPOOL_SUFFIX, s->spool_dir, id);
}

static off_t file_size(const char *path)
{
	struct stat st;

	return stat(path, &st) ? -1 : st.st_size;
}

/* Removes a spool file and its bytes from the accounting (s->mu held). */
static void spool_drop(pdelta_scrape *s, uint64_t id)
{
	char path[4200];
	off_t sz;

	spool_path(s, id, path, sizeof path);
	sz = file_size(path);
	if (unlink(path) == 0 && sz >= 0) {
		s->spool_bytes -= (uint64_t)sz <= s->spool_bytes ? (uint64_t)sz : s->spool_bytes;
		if (s->spool_files)
			s->spool_files--;
	}
}

int sc_push_init(pdelta_scrape *s, char *err, size_t errlen)
{
	DIR *d;
	struct dirent *e;

	if (sc_mkdirs(s->spool_dir)) {
		snprintf(err, errlen, "cannot create spool directory %s: %s", s->spool_dir, strerror(errno));
		return -1;
	}
	d = opendir(s->spool_dir);
	if (!d) {
		snprintf(err, errlen, "cannot read spool directory %s: %s", s->spool_dir, strerror(errno));
		return -1;
	}
	s->spool_next = 1;
	while ((e = readdir(d))) {
		unsigned long long v;
		char tail[16], path[4200];
		if (sscanf(e->d_name, "%20llu%15s", &v, tail) != 2 || strcmp(tail, SPOOL_SUFFIX) != 0)
			continue;
		if (v >= s->spool_next)
			s->spool_next = v + 1;
		snprintf(path, sizeof path, "%s/%s", s->spool_dir, e->d_name);
		off_t sz = file_size(path);
		if (sz > 0) {
			s->spool_bytes += (uint64_t)sz;
			s->spool_files++;
		}
	}
	closedir(d);
	return 0;
}

static void url_escape(const char *in, char *out, size_t len)
{
	size_t n = 0;

	for (; *in && n + 4 < len; in++) {
		unsigned char c = (unsigned char)*in;
		if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		    strchr("-._~", c))
			out[n++] = (char)c;
		else
			n += (size_t)snprintf(out + n, len - n, "%%%02X", c);
	}
	out[n] = 0;
}

int sc_push_enqueue(pdelta_scrape *s, const sc_stream *st, int64_t from_ms, int64_t until_ms,
		    const void *p, size_t n)
{
	char name[SC_NAME_MAX + SC_LABELS_MAX + 64], esc[3 * sizeof name], query[sizeof esc + 128], path[4200];
	uint64_t id, dropped = 0;
	int qn, rc;

	snprintf(name, sizeof name, "%s{pdelta_type=%s%s%s,__delta__=false}", st->t->name, st->type,
		 st->t->labels ? "," : "", st->t->labels ? st->t->labels : "");
	url_escape(name, esc, sizeof esc);
	qn = snprintf(query, sizeof query, "name=%s&from=%" PRId64 "&until=%" PRId64
			 "&format=pprof&spyName=pdelta\n", esc, from_ms / 1000, (until_ms + 999) / 1000);
	/* Files appear in counter order (the pusher takes the oldest), written
	 * and fsynced without s->mu: the workers' other work goes on meanwhile. */
	pthread_mutex_lock(&s->spool_mu);
	pthread_mutex_lock(&s->mu);
	id = s->spool_next++;
	pthread_mutex_unlock(&s->mu);
	spool_path(s, id, path, sizeof path);
	rc = sc_write_atomic(path, query, (size_t)qn, p, n);
	pthread_mutex_lock(&s->mu);
	pthread_mutex_unlock(&s->spool_mu);
	if (rc == 0) {
		s->spool_bytes += (uint64_t)qn + n;
		s->spool_files++;
		while (s->spool_bytes > s->o.spool_max_bytes && s->spool_files > 1) {
			uint64_t old = spool_oldest(s);
			if (!old || old == id)
				break;
			spool_drop(s, old);
			dropped++;
		}
		pthread_cond_broadcast(&s->cv);
	}
	pthread_mutex_unlock(&s->mu);
	if (dropped) {
		sc_count(s, SCM_SPOOL_DROPPED, dropped);
		sc_log(s, 1, "push: spool over %" PRIu64 " bytes: dropped the %" PRIu64 " oldest deltas",
		       s->o.spool_max_bytes, dropped);
	}
	return rc;
}

/* POSTs one spool file: 0 done (sent, or dropped for good), 1 retry later. */
static int push_one(pdelta_scrape *s, CURL *curl, uint64_t id)
{
	char path[4200], url[8192 + 512], errbuf[CURL_ERROR_SIZE] = "";
	sc_buf b = {0};
	FILE *f;
	unsigned char chunk[65536], *nl;
	size_t k;
	curl_mime *mime = NULL;
	curl_mimepart *part;
	struct curl_slist *hdr = NULL;
	long status = 0;
	CURLcode rc;
	int result = 1;

	spool_path(s, id, path, sizeof path);
	if (!(f = fopen(path, "rb")))
		return 0; /* dropped meanwhile */
	while ((k = fread(chunk, 1, sizeof chunk, f)) > 0)
		if (sc_buf_add(&b, chunk, k))
			break;
	fclose(f);
	if (b.n == 0 || !(nl = memchr(b.p, '\n', b.n < 8192 ? b.n : 8192))) {
		sc_log(s, 1, "push: unreadable spool file %s dropped", path);
		result = 0;
		goto drop;
	}
	*nl = 0;
	snprintf(url, sizeof url, "%s/ingest?%s", s->push_url, (char *)b.p);
	curl_easy_reset(curl);
	mime = curl_mime_init(curl);
	part = curl_mime_addpart(mime);
	curl_mime_name(part, "profile");
	curl_mime_filename(part, "profile.pprof");
	curl_mime_type(part, "application/octet-stream");
	curl_mime_data(part, (const char *)(nl + 1), b.n - (size_t)(nl + 1 - b.p));
	curl_easy_setopt(curl, CURLOPT_URL, url);
	curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(curl, CURLOPT_MIMEPOST, mime);
	curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, (long)s->o.push_timeout_ms);
	curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(curl, CURLOPT_USERAGENT, "pdelta-scrape/" PDELTA_VERSION);
	if (s->push_token) {
		curl_easy_setopt(curl, CURLOPT_HTTPAUTH, CURLAUTH_BEARER);
		curl_easy_setopt(curl, CURLOPT_XOAUTH2_BEARER, s->push_token);
	}
	hdr = curl_slist_append(hdr, "Expect:");
	curl_easy_setopt(curl, CURLOPT_HTTPHEADER, hdr);
	rc = curl_easy_perform(curl);
	curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
	if (rc == CURLE_OK && status >= 200 && status < 300) {
		sc_count(s, SCM_PUSH_OK, 1);
		result = 0;
	} else if (rc == CURLE_OK && status >= 400 && status < 500 && status != 408 && status != 429) {
		sc_count(s, SCM_PUSH_PERMANENT, 1);
		sc_log(s, 1, "push: %s refused with HTTP %ld (permanent): delta dropped", url, status);
		result = 0;
	} else {
		sc_count(s, SCM_PUSH_RETRY, 1);
		if (rc != CURLE_OK)
			sc_log(s, 1, "push: %s (will retry)", errbuf[0] ? errbuf : curl_easy_strerror(rc));
		else
			sc_log(s, 1, "push: HTTP %ld (will retry)", status);
	}
drop:
	if (result == 0) {
		pthread_mutex_lock(&s->mu);
		spool_drop(s, id);
		pthread_mutex_unlock(&s->mu);
	}
	curl_slist_free_all(hdr);
	curl_mime_free(mime);
	sc_buf_free(&b);
	return result;
}

static void *pusher_main(void *arg)
{
	pdelta_scrape *s = arg;
	CURL *curl = curl_easy_init();
	unsigned backoff = 0, fails_after_done = 0;

	if (!curl) {
		sc_log(s, 1, "push: cannot create an HTTP handle");
		return NULL;
	}
	for (;;) {
		uint64_t id = 0;
		pthread_mutex_lock(&s->mu);
		while (!s->stop && !(id = spool_oldest(s)) && !s->loop_done) {
			struct timespec ts = pd_deadline(CLOCK_REALTIME, 1000);
			pthread_cond_timedwait(&s->cv, &s->mu, &ts);
		}
		int done = s->loop_done;
		pthread_mutex_unlock(&s->mu);
		if (s->stop || (done && (id = spool_oldest(s)) == 0))
			break;
		if (push_one(s, curl, id) == 0) {
			backoff = 0;
			continue;
		}
		/* Retry later; once the loop is over, give up after a few tries (the
		 * spool stays on disk for the next run). */
		if (done && ++fails_after_done >= 3)
			break;
		backoff = backoff ? (backoff * 2 > 10000 ? 10000 : backoff * 2) : 250;
		for (unsigned waited = 0; waited < backoff && !s->stop; waited += 50)
			usleep(50 * 1000);
	}
	curl_easy_cleanup(curl);
	return NULL;
}

void sc_push_start(pdelta_scrape *s)
{
	if (pthread_create(&s->pusher, NULL, pusher_main, s) == 0)
		s->pusher_started = 1;
}

void sc_push_join(pdelta_scrape *s)
{
	if (!s->pusher_started)
		return;
	pthread_mutex_lock(&s->mu);
	s->loop_done = 1;
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
	pthread_join(s->pusher, NULL);
	s->pusher_started = 0;
}
