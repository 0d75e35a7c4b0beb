/*
 * fuzz_scrape_files: libFuzzer target for the two operator files of
 * `pdelta scrape` (client/lib): the targets file (--targets, read by
 * sc_targets_init) and the state file (--state, sc_state_load), both read
 * line by line through sc_read_line.
 *
 * Input: the low bit of the first byte selects the file (0 the targets file,
 * 1 the state file; the seeds start with 't' and 's'), the rest is its
 * content, written to a file in a private directory (the readers take paths).
 * Checked:
 *  - targets file: a failure leaves a message; a success lists one target or
 *    more with distinct valid names, an http(s) URL, a prefix, labels that
 *    pass sc_labels_check, and one stream per type named NAME/TYPE; the
 *    targets written back as a targets file read again to the same targets;
 *  - state file: a failure leaves a message; a load gives distinct names
 *    without blanks, sequence numbers 1..2^64-2, every entry gone (no target
 *    took it), no scrape time after now, no entry without an incarnation; the
 *    state saved by the agent's own writer loads again to the same
 *    incarnation and entries.
 * The loop's clock and log live in pdl_scrape.c, which would pull in the
 * whole client library: they are supplied here, the clock fixed so that a
 * scrape time "in the future" is the same on every run of an input.
 * bearer_file= and basic_auth_file= open files: the targets file is read with
 * the private directory as the working directory and an input whose file key
 * has a '/' is skipped, so no input reads the machine's files or a device.
 * Seeds: tests/fuzz/corpus/scrape_files/.
 */
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/pdl_scrape.h"

#define NOW_MS INT64_C(1780000000000) /* 2026-05-28 */
#define NTYPES 2
#define LINE_MAX_BYTES 8190 /* the targets file's line limit, newline excluded */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char dir[4096];
/* the files an input writes, in dir (the loop owns its paths as char *) */
static char targets_path[] = "targets", targets_rt_path[] = "targets-rt", state_path[] = "state";
static int home_fd = -1;

int64_t sc_now_ms(void)
{
	return NOW_MS;
}

void sc_log(pdelta_scrape *s, int is_error, const char *fmt, ...)
{
	char line[2048];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	if (!line[0])
		abort();
	(void)s;
	(void)is_error;
}

static void write_file(const char *name, const void *p, size_t n)
{
	FILE *f = fopen(name, "wb");

	if (!f || fwrite(p, 1, n, f) != n || fclose(f))
		abort();
}

static void remove_dir(void)
{
	DIR *d = opendir(dir);
	struct dirent *e;

	if (!d)
		return;
	while ((e = readdir(d)))
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
			unlinkat(dirfd(d), e->d_name, 0);
	closedir(d);
	rmdir(dir);
}

/* The private directory with a token file and a user:password file, on tmpfs
 * when there is one: every saved state file is fsynced. */
static void setup(void)
{
	const char *tmp = getenv("TMPDIR");

	if (access("/dev/shm", W_OK | X_OK) == 0)
		tmp = "/dev/shm";
	snprintf(dir, sizeof dir, "%s/fuzz_scrape_files.XXXXXX", tmp && *tmp ? tmp : "/tmp");
	home_fd = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (home_fd < 0 || !mkdtemp(dir) || chdir(dir))
		abort();
	write_file("token", "s3cret-token\n", 13);
	write_file("auth", "user:pass word \n", 16);
	if (fchdir(home_fd))
		abort();
	atexit(remove_dir);
}

static pdelta_scrape *scrape_new(void)
{
	static char heap[] = "heap", cpu[] = "cpu", empty[] = "";
	pdelta_scrape *s = calloc(1, sizeof *s);

	if (!s)
		abort();
	s->types[0] = heap;
	s->types[1] = cpu;
	s->ntypes = NTYPES;
	s->prefix = empty;
	s->lock_fd = -1;
	pthread_mutex_init(&s->mu, NULL);
	pthread_mutex_init(&s->save_mu, NULL);
	return s;
}

static void scrape_free(pdelta_scrape *s)
{
	sc_targets_free(s);
	for (size_t i = 0; i < s->nstate; i++)
		free(s->state[i].name);
	free(s->state);
	pthread_mutex_destroy(&s->mu);
	pthread_mutex_destroy(&s->save_mu);
	free(s);
}

/* ---- the targets file ------------------------------------------------------ */

/* Whether every value of a *_file= key is a bare name (in the private directory). */
static int file_keys_local(const char *text)
{
	for (const char *p = text; (p = strstr(p, "_file=")); p += 6)
		if (memchr(p + 6, '/', strcspn(p + 6, " \t\r\n#")))
			return 0;
	return 1;
}

static void check_target(const pdelta_scrape *s, size_t i)
{
	const sc_target *t = s->targets[i];
	size_t len = strlen(t->name);
	char err[512];

	if (len == 0 || len > SC_NAME_MAX || t->name[0] == '.' ||
	    strspn(t->name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") != len)
		abort();
	if (strncmp(t->url, "http://", 7) && strncmp(t->url, "https://", 8))
		abort();
	if (!t->prefix || !t->from_file || t->removed)
		abort();
	if (t->labels && sc_labels_check(t->labels, err, sizeof err))
		abort();
	for (size_t j = 0; j < i; j++)
		if (strcmp(s->targets[j]->name, t->name) == 0)
			abort();
	for (size_t k = 0; k < NTYPES; k++) {
		const sc_stream *st = s->streams[i * NTYPES + k];
		char want[sizeof st->name];
		snprintf(want, sizeof want, "%s/%s", t->name, s->types[k]);
		if (st->t != t || strcmp(st->name, want) || st->seq || !st->unsaved)
			abort();
	}
}

/* A file holding a secret's first line, for the targets written back. */
static void secret_file(char *name, size_t cap, const char *what, size_t i, const char *secret)
{
	snprintf(name, cap, "rt-%s-%zu", what, i);
	FILE *f = fopen(name, "w");
	if (!f || fprintf(f, "%s\n", secret) < 0 || fclose(f))
		abort();
}

/* One targets-file line for t (with its newline); 0 when it would pass the line limit. */
static size_t render_target(const sc_target *t, size_t i, char *out, size_t cap)
{
	char name[64];
	size_t n = (size_t)snprintf(out, cap, "%s %s prefix=%s", t->name, t->url, t->prefix);

	if (t->timeout_ms && n < cap)
		n += (size_t)snprintf(out + n, cap - n, " timeout=%u", t->timeout_ms); /* bare: ms */
	if (t->max_body && n < cap)
		n += (size_t)snprintf(out + n, cap - n, " max_body=%zu", t->max_body);
	if (t->ca && n < cap)
		n += (size_t)snprintf(out + n, cap - n, " ca=%s", t->ca);
	if (t->bearer && n < cap) {
		secret_file(name, sizeof name, "bearer", i, t->bearer);
		n += (size_t)snprintf(out + n, cap - n, " bearer_file=%s", name);
	}
	if (t->basic && n < cap) {
		secret_file(name, sizeof name, "basic", i, t->basic);
		n += (size_t)snprintf(out + n, cap - n, " basic_auth_file=%s", name);
	}
	for (const char *p = t->labels; p && *p && n < cap;) {
		size_t len = strcspn(p, ",");
		n += (size_t)snprintf(out + n, cap - n, " label.%.*s", (int)len, p);
		p += len;
		p += *p == ',';
	}
	if (n > LINE_MAX_BYTES || n + 1 >= cap)
		return 0;
	out[n++] = '\n';
	return n;
}

static void remove_round_trip_files(size_t ntargets)
{
	char name[64];

	for (size_t i = 0; i < ntargets; i++) {
		snprintf(name, sizeof name, "rt-bearer-%zu", i);
		unlink(name);
		snprintf(name, sizeof name, "rt-basic-%zu", i);
		unlink(name);
	}
	unlink(targets_rt_path);
}

/* The targets written back as a targets file read again to the same targets. */
static void targets_round_trip(const pdelta_scrape *s)
{
	size_t cap = s->ntargets * (LINE_MAX_BYTES + 2), n = 0;
	char *text = malloc(cap), err[1024] = "";
	pdelta_scrape *s2;

	if (!text)
		abort();
	for (size_t i = 0; i < s->ntargets; i++) {
		size_t k = render_target(s->targets[i], i, text + n, cap - n);
		if (!k) { /* longer once written back (e.g. timeout=1h as ms): not comparable */
			free(text);
			remove_round_trip_files(i + 1);
			return;
		}
		n += k;
	}
	write_file(targets_rt_path, text, n);
	free(text);
	s2 = scrape_new();
	s2->targets_file = targets_rt_path;
	if (sc_targets_init(s2, err, sizeof err) || s2->ntargets != s->ntargets)
		abort();
	for (size_t i = 0; i < s->ntargets; i++)
		if (!sc_target_same(s->targets[i], s2->targets[i]))
			abort();
	scrape_free(s2);
	remove_round_trip_files(s->ntargets);
}

static int fuzz_targets(const uint8_t *data, size_t size)
{
	char *text = malloc(size + 1), err[1024] = "";
	pdelta_scrape *s;

	if (!text)
		abort();
	memcpy(text, data, size);
	text[size] = 0;
	if (!file_keys_local(text)) {
		free(text);
		return -1;
	}
	write_file(targets_path, data, size);
	free(text);
	s = scrape_new();
	s->targets_file = targets_path;
	if (sc_targets_init(s, err, sizeof err)) {
		if (!err[0] || s->ntargets)
			abort();
	} else {
		if (s->ntargets == 0 || s->nstreams != s->ntargets * NTYPES)
			abort();
		for (size_t i = 0; i < s->ntargets; i++)
			check_target(s, i);
		targets_round_trip(s);
	}
	scrape_free(s);
	return 0;
}

/* ---- the state file -------------------------------------------------------- */

static void check_state(const pdelta_scrape *s)
{
	if (!s->incarnation && s->nstate)
		abort();
	for (size_t i = 0; i < s->nstate; i++) {
		const sc_state_ent *e = &s->state[i];
		size_t len = strlen(e->name);
		if (len == 0 || len > SC_PREFIX_MAX + SC_NAME_MAX + 16 || strpbrk(e->name, " \n"))
			abort();
		if (e->seq == 0 || e->seq == UINT64_MAX || e->gone_ms <= 0 || e->scraped_ms < 0 ||
		    e->scraped_ms > NOW_MS)
			abort();
		for (size_t j = 0; j < i; j++)
			if (strcmp(s->state[j].name, e->name) == 0)
				abort();
	}
}

static int fuzz_state(const uint8_t *data, size_t size)
{
	char err[1024] = "";
	pdelta_scrape *s = scrape_new(), *s2;

	write_file(state_path, data, size);
	s->state_file = state_path;
	if (sc_state_load(s, err, sizeof err)) {
		if (!err[0])
			abort();
		scrape_free(s);
		return 0;
	}
	check_state(s);
	if (!s->incarnation) /* as pdelta_scrape_new(), which draws one */
		s->incarnation = 1;
	if (sc_state_save(s))
		abort();
	s2 = scrape_new();
	s2->state_file = state_path;
	if (sc_state_load(s2, err, sizeof err) || s2->incarnation != s->incarnation || s2->nstate != s->nstate)
		abort();
	for (size_t i = 0; i < s->nstate; i++) {
		const sc_state_ent *a = &s->state[i], *b = &s2->state[i];
		if (strcmp(a->name, b->name) || a->seq != b->seq || a->scraped_ms != b->scraped_ms ||
		    a->gone_ms != b->gone_ms)
			abort();
	}
	scrape_free(s);
	scrape_free(s2);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	int rc;

	if (home_fd < 0)
		setup();
	if (size == 0)
		return 0;
	if (chdir(dir))
		abort();
	rc = data[0] & 1 ? fuzz_state(data + 1, size - 1) : fuzz_targets(data + 1, size - 1);
	unlink(targets_path); /* no input reads what an earlier one left */
	unlink(state_path);
	if (fchdir(home_fd))
		abort();
	return rc;
}
