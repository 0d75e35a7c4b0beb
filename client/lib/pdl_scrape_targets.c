/*
 * pdl_scrape_targets: the scrape loop's targets, from the options and from a
 * targets file that is re-read when it changes (checked every loop tick,
 * applied 500 ms after the last change so a half-written file is not taken).
 * A reload adds and removes targets without touching the others' streams.
 *
 * A removed target and its streams are freed once no job holds them
 * (sc_targets_reap); their state entries go after the grace period.
 *
 * Targets file: one target a line, '#' comments, blank-separated words:
 *   NAME URL [prefix=/debug/pprof] [timeout=10s] [max_body=64m] [ca=FILE]
 *            [bearer_file=FILE] [basic_auth_file=FILE] [label.KEY=VALUE]...
 */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "pd_frame.h"
#include "pd_textfile.h"
#include "pd_units.h"
#include "pdl_scrape.h"

#define SC_DEBOUNCE_MS 500

int sc_parse_duration_ms(const char *v, unsigned *out)
{
	uint64_t x;

	if (pd_parse_ms(v, &x) || x > UINT32_MAX)
		return -1;
	*out = (unsigned)x;
	return 0;
}

int sc_parse_size(const char *v, size_t *out)
{
	uint64_t x;

	if (pd_parse_size(v, &x) || x > SIZE_MAX)
		return -1;
	*out = (size_t)x;
	return 0;
}

static int valid_name(const char *n)
{
	size_t len = strlen(n);

	if (len == 0 || len > SC_NAME_MAX || n[0] == '.') /* no "..": it names a directory */
		return 0;
	for (const char *p = n; *p; p++)
		if (!isalnum((unsigned char)*p) && !strchr("._-", *p))
			return 0;
	return 1;
}

/* One label: the key [A-Za-z_][A-Za-z0-9_]*, not reserved (Pyroscope's
 * "__" keys, our pdelta_type); the value non-empty, UTF-8, and free of what
 * would end or split the label set in the pushed name NAME{k=v,...}. */
static int label_check(const char *k, size_t klen, const char *v, size_t vlen, char *err, size_t errlen)
{
	int ok = klen > 0 && (isalpha((unsigned char)k[0]) || k[0] == '_');

	for (size_t i = 1; ok && i < klen; i++)
		ok = isalnum((unsigned char)k[i]) || k[i] == '_';
	if (!ok) {
		snprintf(err, errlen, "label '%.*s': the key must be [A-Za-z_][A-Za-z0-9_]*", (int)klen, k);
		return -1;
	}
	if ((klen >= 2 && k[0] == '_' && k[1] == '_') || (klen == 11 && memcmp(k, "pdelta_type", 11) == 0)) {
		snprintf(err, errlen, "label '%.*s': the key is reserved ('__' keys, pdelta_type)", (int)klen, k);
		return -1;
	}
	if (vlen == 0) {
		snprintf(err, errlen, "label '%.*s': the value is empty", (int)klen, k);
		return -1;
	}
	for (size_t i = 0; i < vlen; i++)
		if (strchr(",}=\"", v[i]) || (unsigned char)v[i] < 0x20 || v[i] == 0x7f) {
			snprintf(err, errlen, "label '%.*s': the value may not hold , } = \" or control characters",
				 (int)klen, k);
			return -1;
		}
	if (!pd_utf8_valid((const uint8_t *)v, vlen)) {
		snprintf(err, errlen, "label '%.*s': the value is not valid UTF-8", (int)klen, k);
		return -1;
	}
	return 0;
}

/* Whether the label set labels[0..n) ("k=v,k2=v2") has the key k[0..klen):
 * a key given twice would reach the pushed name twice. */
static int label_key_in(const char *labels, size_t n, const char *k, size_t klen)
{
	for (const char *p = labels, *end = labels + n; p < end;) {
		size_t len = strcspn(p, ",");
		const char *eq = memchr(p, '=', len);

		if (eq && (size_t)(eq - p) == klen && memcmp(p, k, klen) == 0)
			return 1;
		p += len;
		p += *p == ',';
	}
	return 0;
}

static int label_unique(const char *labels, size_t n, const char *k, size_t klen, char *err, size_t errlen)
{
	if (!label_key_in(labels, n, k, klen))
		return 0;
	snprintf(err, errlen, "label '%.*s': the key is given twice", (int)klen, k);
	return -1;
}

/* A label set "k=v,k2=v2" as the API takes it. */
int sc_labels_check(const char *labels, char *err, size_t errlen)
{
	size_t n = strlen(labels);

	if (n >= SC_LABELS_MAX) {
		snprintf(err, errlen, "labels: %zu bytes, at most %d", n, SC_LABELS_MAX - 1);
		return -1;
	}
	for (const char *p = labels; *p;) {
		size_t len = strcspn(p, ",");
		const char *eq = memchr(p, '=', len);
		if (!eq) {
			snprintf(err, errlen, "label '%.*s': not KEY=VALUE", (int)len, p);
			return -1;
		}
		if (label_check(p, (size_t)(eq - p), eq + 1, len - (size_t)(eq - p) - 1, err, errlen) ||
		    label_unique(labels, (size_t)(p - labels), p, (size_t)(eq - p), err, errlen))
			return -1;
		p += len;
		p += *p == ',';
	}
	return 0;
}

static void target_free(sc_target *t)
{
	if (!t)
		return;
	free(t->name);
	free(t->url);
	free(t->prefix);
	free(t->labels);
	free(t->ca);
	free(t->bearer);
	free(t->basic);
	free(t);
}

static char *dup_or(const char *v, const char *def)
{
	return v ? strdup(v) : def ? strdup(def) : NULL;
}

static sc_target *target_new(const pdelta_scrape_target *in, char *err, size_t errlen)
{
	sc_target *t = calloc(1, sizeof *t);

	if (!t) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	if (!in->name || !valid_name(in->name)) {
		snprintf(err, errlen, "target name '%s': 1-%d characters of [A-Za-z0-9._-], not starting with '.'",
			 in->name ? in->name : "", SC_NAME_MAX);
		goto fail;
	}
	if (!in->url || (strncmp(in->url, "http://", 7) && strncmp(in->url, "https://", 8))) {
		snprintf(err, errlen, "target %s: URL '%s' is not http:// or https://", in->name,
			 in->url ? in->url : "");
		goto fail;
	}
	if (in->labels) {
		char e2[300];
		if (sc_labels_check(in->labels, e2, sizeof e2)) {
			snprintf(err, errlen, "target %s: %s", in->name, e2);
			goto fail;
		}
	}
	t->name = strdup(in->name);
	t->url = strdup(in->url);
	t->prefix = dup_or(in->path_prefix, "/debug/pprof");
	t->labels = dup_or(in->labels, NULL);
	t->ca = dup_or(in->ca_file, NULL);
	t->bearer = dup_or(in->bearer_token, NULL);
	t->basic = dup_or(in->basic_auth, NULL);
	t->timeout_ms = in->timeout_ms;
	t->max_body = in->max_body;
	/* a trailing '/' of the URL would double the path's */
	while (strlen(t->url) > 8 && t->url[strlen(t->url) - 1] == '/')
		t->url[strlen(t->url) - 1] = 0;
	return t;
fail:
	target_free(t);
	return NULL;
}

int sc_target_same(const sc_target *a, const sc_target *b)
{
#define SAME(f) ((!a->f && !b->f) || (a->f && b->f && strcmp(a->f, b->f) == 0))
	return SAME(name) && SAME(url) && SAME(prefix) && SAME(labels) && SAME(ca) && SAME(bearer) &&
	       SAME(basic) && a->timeout_ms == b->timeout_ms && a->max_body == b->max_body;
#undef SAME
}

/* Whether key k is among the n words before it (their '=' already cut). */
static int key_before(char *const *words, size_t n, const char *k)
{
	for (size_t j = 0; j < n; j++)
		if (strcmp(words[j], k) == 0)
			return 1;
	return 0;
}

/* Parses one targets-file line into *t (NULL for a blank or comment line). */
static int parse_line(char *line, sc_target **out, char *err, size_t errlen)
{
	pdelta_scrape_target in = {0};
	char *words[64], *save = NULL, *w, labels[SC_LABELS_MAX] = "", *bearer = NULL, *basic = NULL;
	size_t nw = 0;
	int rc = -1;

	*out = NULL;
	line[strcspn(line, "#\r\n")] = 0;
	for (w = strtok_r(line, " \t", &save); w; w = strtok_r(NULL, " \t", &save)) {
		if (nw == 64) {
			snprintf(err, errlen, "more than 64 words");
			return -1;
		}
		words[nw++] = w;
	}
	if (nw == 0)
		return 0;
	if (nw < 2) {
		snprintf(err, errlen, "'%s': need NAME URL", words[0]);
		return -1;
	}
	in.name = words[0];
	in.url = words[1];
	for (size_t i = 2; i < nw; i++) {
		char *eq = strchr(words[i], '=');
		const char *k = words[i], *v;

		if (!eq) {
			snprintf(err, errlen, "'%s': expected key=value", words[i]);
			goto out;
		}
		*eq = 0;
		v = eq + 1;
		if (strncmp(k, "label.", 6) && key_before(words + 2, i - 2, k)) {
			/* which one should win is a guess: refused, as a label key given twice */
			snprintf(err, errlen, "key '%s' given twice", k);
			goto out;
		}
		if (strcmp(k, "prefix") == 0)
			in.path_prefix = v;
		else if (strcmp(k, "timeout") == 0) {
			if (sc_parse_duration_ms(v, &in.timeout_ms) || in.timeout_ms == 0) {
				snprintf(err, errlen, "timeout=%s: not a duration above 0", v);
				goto out;
			}
		} else if (strcmp(k, "max_body") == 0) {
			if (sc_parse_size(v, &in.max_body)) {
				snprintf(err, errlen, "max_body=%s: not a size", v);
				goto out;
			}
		} else if (strcmp(k, "ca") == 0)
			in.ca_file = v;
		else if (strcmp(k, "bearer_file") == 0) {
			if (!(bearer = pd_first_line(v, err, errlen)))
				goto out;
			in.bearer_token = bearer;
		} else if (strcmp(k, "basic_auth_file") == 0) {
			if (!(basic = pd_first_line(v, err, errlen)))
				goto out;
			in.basic_auth = basic;
		} else if (strncmp(k, "label.", 6) == 0) {
			size_t l = strlen(labels);
			if (label_check(k + 6, strlen(k + 6), v, strlen(v), err, errlen) ||
			    label_unique(labels, l, k + 6, strlen(k + 6), err, errlen))
				goto out;
			if ((size_t)snprintf(labels + l, sizeof labels - l, "%s%s=%s", l ? "," : "", k + 6, v) >=
			    sizeof labels - l) {
				snprintf(err, errlen, "label '%s': the labels pass %d bytes", k + 6, SC_LABELS_MAX - 1);
				goto out;
			}
			in.labels = labels;
		} else {
			snprintf(err, errlen, "unknown key '%s'", k);
			goto out;
		}
	}
	*out = target_new(&in, err, errlen);
	rc = *out ? 0 : -1;
out:
	free(bearer);
	free(basic);
	return rc;
}

/* Reads the targets file into a new array; -1 with err set on any bad line. */
static int read_targets_file(const char *path, sc_target ***out, size_t *n, char *err, size_t errlen)
{
	FILE *f = fopen(path, "r");
	char line[8192], e2[512], *nul;
	sc_target **arr = NULL, *t;
	size_t cnt = 0, len;
	unsigned lineno = 0;
	int got;

	*out = NULL;
	*n = 0;
	if (!f) {
		snprintf(err, errlen, "cannot read targets file %s: %s", path, strerror(errno));
		return -1;
	}
	while ((got = sc_read_line(f, line, sizeof line, &len)) != 0) {
		lineno++;
		if (got < 0) {
			snprintf(err, errlen, "%s:%u: line longer than %zu bytes", path, lineno, sizeof line - 2);
			goto fail;
		}
		if ((nul = memchr(line, 0, len))) { /* not a text file, or a damaged one */
			snprintf(err, errlen, "%s:%u: NUL byte at column %zu", path, lineno, (size_t)(nul - line) + 1);
			goto fail;
		}
		if (parse_line(line, &t, e2, sizeof e2)) {
			snprintf(err, errlen, "%s:%u: %s", path, lineno, e2);
			goto fail;
		}
		if (!t)
			continue;
		for (size_t i = 0; i < cnt; i++)
			if (strcmp(arr[i]->name, t->name) == 0) {
				snprintf(err, errlen, "%s:%u: target %s listed twice", path, lineno, t->name);
				target_free(t);
				goto fail;
			}
		sc_target **na = realloc(arr, (cnt + 1) * sizeof *arr);
		if (!na) {
			target_free(t);
			snprintf(err, errlen, "out of memory");
			goto fail;
		}
		arr = na;
		t->from_file = 1;
		arr[cnt++] = t;
	}
	if (ferror(f)) { /* a directory opens, its read fails: it is no empty file */
		snprintf(err, errlen, "cannot read targets file %s: %s", path, strerror(errno));
		goto fail;
	}
	fclose(f);
	*out = arr;
	*n = cnt;
	return 0;
fail:
	fclose(f);
	for (size_t i = 0; i < cnt; i++)
		target_free(arr[i]);
	free(arr);
	return -1;
}

static uint64_t fnv1a(const char *p)
{
	uint64_t h = 1469598103934665603ULL;

	for (; *p; p++)
		h = (h ^ (unsigned char)*p) * 1099511628211ULL;
	return h;
}

/* Adds a target and its streams to the table. The first round of each
 * stream is spread over one interval by a hash of its name, so many targets
 * are not all scraped at the same moment. */
static int add_target(pdelta_scrape *s, sc_target *t)
{
	sc_target **nt = realloc(s->targets, (s->ntargets + 1) * sizeof *nt);
	sc_stream **ns;
	int64_t now = sc_now_ms();

	if (!nt)
		return -1;
	s->targets = nt;
	ns = realloc(s->streams, (s->nstreams + s->ntypes) * sizeof *ns);
	if (!ns)
		return -1;
	s->streams = ns;
	s->targets[s->ntargets++] = t;
	for (size_t i = 0; i < s->ntypes; i++) {
		sc_stream *st = calloc(1, sizeof *st);
		if (!st)
			return -1;
		st->t = t;
		snprintf(st->type, sizeof st->type, "%s", s->types[i]);
		snprintf(st->rel, sizeof st->rel, "%s/%s", t->name, st->type);
		snprintf(st->name, sizeof st->name, "%s%s", s->prefix, st->rel);
		st->seq = sc_state_attach(s, st->name);
		st->unsaved = st->seq == 0; /* an entry's seq is at least 1 */
		st->due_ms = now;
		if (s->o.count != 1 && s->o.interval_ms > 0)
			st->due_ms += (int64_t)(fnv1a(st->name) % s->o.interval_ms);
		s->streams[s->nstreams++] = st;
	}
	return 0;
}

static void remove_target(pdelta_scrape *s, sc_target *t)
{
	t->removed = 1;
	for (size_t i = 0; i < s->nstreams; i++)
		if (s->streams[i]->t == t)
			s->streams[i]->removed = 1;
}

/* Frees the streams of removed targets that no job holds (a queued stream is
 * running too), then the removed targets none of the remaining streams
 * points at; their state entries start their grace period. */
void sc_targets_reap(pdelta_scrape *s)
{
	int64_t now = sc_now_ms();
	size_t j = 0, k = 0;

	for (size_t i = 0; i < s->nstreams; i++) {
		sc_stream *st = s->streams[i];
		int renamed = 0; /* a changed target's new stream has the same name */
		if (!st->removed || st->running)
			continue;
		for (size_t m = 0; m < s->nstreams; m++)
			renamed |= !s->streams[m]->removed && strcmp(s->streams[m]->name, st->name) == 0;
		if (!renamed)
			sc_state_detach(s, st->name, now);
	}
	for (size_t i = 0; i < s->nstreams; i++) {
		sc_stream *st = s->streams[i];
		if (st->removed && !st->running) {
			free(st);
			continue;
		}
		s->streams[j++] = st;
	}
	s->nstreams = j;
	for (size_t i = 0; i < s->ntargets; i++) {
		sc_target *t = s->targets[i];
		int held = 0;
		for (size_t m = 0; t->removed && m < s->nstreams && !held; m++)
			held = s->streams[m]->t == t;
		if (t->removed && !held) {
			target_free(t);
			continue;
		}
		s->targets[k++] = t;
	}
	s->ntargets = k;
}

static int find_target(pdelta_scrape *s, const char *name)
{
	for (size_t i = 0; i < s->ntargets; i++)
		if (!s->targets[i]->removed && strcmp(s->targets[i]->name, name) == 0)
			return (int)i;
	return -1;
}

static int stat_file(const char *path, int64_t *mtime_ns, off_t *size)
{
	struct stat st;

	if (stat(path, &st))
		return -1;
	*mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
	*size = st.st_size;
	return 0;
}

/* Applies a new targets-file content: same targets untouched, changed ones
 * replaced (their streams keep their names, so their sequence numbers), gone
 * ones removed once their scrape in flight, if any, has finished. */
static void apply_file(pdelta_scrape *s, sc_target **arr, size_t n)
{
	unsigned added = 0, removed = 0;

	for (size_t i = 0; i < s->ntargets; i++) {
		sc_target *old = s->targets[i];
		int keep = 0;
		if (!old->from_file || old->removed)
			continue;
		for (size_t j = 0; j < n; j++)
			if (arr[j] && sc_target_same(old, arr[j])) {
				target_free(arr[j]);
				arr[j] = NULL;
				keep = 1;
				break;
			}
		if (!keep) {
			remove_target(s, old);
			removed++;
		}
	}
	for (size_t j = 0; j < n; j++) {
		if (!arr[j])
			continue;
		if (find_target(s, arr[j]->name) >= 0) {
			sc_log(s, 1, "targets: %s is also given on the command line; the file's entry is ignored",
			       arr[j]->name);
			target_free(arr[j]);
			continue;
		}
		if (add_target(s, arr[j])) {
			sc_log(s, 1, "targets: out of memory adding %s", arr[j]->name);
			continue;
		}
		added++;
	}
	free(arr);
	sc_count(s, SCM_TARGET_RELOADS, 1);
	sc_log(s, 0, "targets: reloaded %s: %u added, %u removed", s->targets_file, added, removed);
}

void sc_targets_poll(pdelta_scrape *s)
{
	int64_t mt, now = sc_now_ms();
	off_t sz;
	sc_target **arr;
	size_t n;
	char err[512];

	if (!s->targets_file)
		return;
	if (stat_file(s->targets_file, &mt, &sz)) {
		mt = -1;
		sz = -1;
	}
	if (mt != s->targets_mtime_ns || sz != s->targets_size) {
		s->targets_mtime_ns = mt;
		s->targets_size = sz;
		s->targets_change_ms = now;
		return;
	}
	if (!s->targets_change_ms || now - s->targets_change_ms < SC_DEBOUNCE_MS)
		return;
	s->targets_change_ms = 0;
	if (read_targets_file(s->targets_file, &arr, &n, err, sizeof err)) {
		sc_count(s, SCM_TARGET_RELOAD_ERRORS, 1);
		sc_log(s, 1, "targets: %s (keeping the current targets)", err);
		return;
	}
	apply_file(s, arr, n);
	pthread_cond_broadcast(&s->cv);
}

int sc_targets_init(pdelta_scrape *s, char *err, size_t errlen)
{
	for (size_t i = 0; i < s->o.ntargets; i++) {
		sc_target *t = target_new(&s->o.targets[i], err, errlen);
		if (!t)
			return -1;
		if (find_target(s, t->name) >= 0) {
			snprintf(err, errlen, "target %s given twice", t->name);
			target_free(t);
			return -1;
		}
		if (add_target(s, t)) {
			snprintf(err, errlen, "out of memory");
			return -1;
		}
	}
	if (s->targets_file) {
		sc_target **arr;
		size_t n;
		if (read_targets_file(s->targets_file, &arr, &n, err, errlen))
			return -1;
		if (n == 0 && s->ntargets == 0) {
			snprintf(err, errlen, "targets file %s lists no target (and no --target is given)",
				 s->targets_file);
			free(arr);
			return -1;
		}
		stat_file(s->targets_file, &s->targets_mtime_ns, &s->targets_size);
		for (size_t j = 0; j < n; j++) {
			if (find_target(s, arr[j]->name) >= 0) {
				snprintf(err, errlen, "target %s is both on the command line and in %s",
					 arr[j]->name, s->targets_file);
				for (; j < n; j++)
					target_free(arr[j]);
				free(arr);
				return -1;
			}
			if (add_target(s, arr[j])) {
				snprintf(err, errlen, "out of memory");
				for (j++; j < n; j++)
					target_free(arr[j]);
				free(arr);
				return -1;
			}
		}
		free(arr);
	}
	if (s->ntargets == 0 && !s->targets_file) {
		snprintf(err, errlen, "no targets (--target NAME=URL or --targets FILE)");
		return -1;
	}
	return 0;
}

void sc_targets_free(pdelta_scrape *s)
{
	for (size_t i = 0; i < s->nstreams; i++)
		free(s->streams[i]);
	free(s->streams);
	for (size_t i = 0; i < s->ntargets; i++)
		target_free(s->targets[i]);
	free(s->targets);
	s->streams = NULL;
	s->targets = NULL;
	s->nstreams = s->ntargets = 0;
}
