/* test_scrape_state: the scrape agent's line reader and state file
 * (client/lib/pdl_scrape_files.c): line lengths at the buffer's edge, NUL
 * bytes counted, not ending a line; a state file with scrape times read next
 * to an older agent's lines and written back, hostile times refused with
 * FILE:LINE, a time in the future ignored with a logged reason. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/pdl_scrape.h"
#include "tharness.h"

static char dir[] = "/tmp/test_scrape_state.XXXXXX";
static char logged[2048];

static const char *write_file(const char *name, const char *body, size_t n)
{
	static char path[256];
	FILE *f;

	snprintf(path, sizeof path, "%s/%s", dir, name);
	if (!(f = fopen(path, "w")))
		return path;
	fwrite(body, 1, n, f);
	fclose(f);
	return path;
}

static void on_log(void *ctx, int is_error, const char *line)
{
	(void)ctx;
	(void)is_error;
	snprintf(logged, sizeof logged, "%s", line);
}

/* The results of sc_read_line over body with an 8-byte buffer, as "r:len," per call. */
static const char *read_lines(const char *body, size_t n)
{
	static char out[256];
	FILE *f = fopen(write_file("lines", body, n), "r");
	char buf[8];
	size_t len, o = 0;
	int r;

	out[0] = 0;
	if (!f)
		return "cannot open";
	do {
		r = sc_read_line(f, buf, sizeof buf, &len);
		o += (size_t)snprintf(out + o, sizeof out - o, "%d:%zu,", r, len);
	} while (r > 0 && o < sizeof out - 16);
	fclose(f);
	return out;
}

static void test_read_line(void)
{
	const char *r;

	/* 6 bytes and the newline fill the 8-byte buffer; 7 do not */
	r = read_lines("abcdef\nx\n", 9);
	EXPECT(strcmp(r, "1:7,1:2,0:0,") == 0, "six bytes: %s", r);
	r = read_lines("abcdefg\nx\n", 10);
	EXPECT(strcmp(r, "-1:7,") == 0, "seven bytes and a newline: %s", r);
	r = read_lines("abcdefgh", 8);
	EXPECT(strcmp(r, "-1:7,") == 0, "eight bytes without a newline: %s", r);
	/* the last line without its newline is a line; the end of the file follows */
	r = read_lines("a\nabcdefg", 9);
	EXPECT(strcmp(r, "1:2,1:7,0:0,") == 0, "last line cut: %s", r);
	/* a NUL byte is part of the line, counted in its length */
	r = read_lines("a\0b\nc", 5);
	EXPECT(strcmp(r, "1:4,1:1,0:0,") == 0, "NUL inside: %s", r);
	r = read_lines("", 0);
	EXPECT(strcmp(r, "0:0,") == 0, "empty file: %s", r);
}

static pdelta_scrape *new_scrape(const char *path)
{
	pdelta_scrape *s = calloc(1, sizeof *s);

	if (!s)
		exit(2);
	s->state_file = strdup(path);
	s->o.log = on_log;
	s->o.state_grace_ms = 3600 * 1000;
	return s;
}

static void free_scrape(pdelta_scrape *s)
{
	for (size_t i = 0; i < s->nstate; i++)
		free(s->state[i].name);
	free(s->state);
	free(s->state_file);
	free(s);
}

/* The error of loading a state file holding body, "" when it loads. */
static const char *load_err(const char *body, size_t n)
{
	static char err[1024];
	pdelta_scrape *s = new_scrape(write_file("state-bad", body, n));

	err[0] = 0;
	sc_state_load(s, err, sizeof err);
	free_scrape(s);
	return err;
}

static void test_state_times(void)
{
	int64_t now = sc_now_ms(), t;
	char body[512], err[512], want[256];
	pdelta_scrape *s;
	sc_state_snap snap;
	int n;

	n = snprintf(body, sizeof body,
		     "# as written\nincarnation 9\nstream a/heap 5 scraped=%" PRId64 "\n"
		     "stream a/mutex 3 %" PRId64 " scraped=%" PRId64 "\nstream a/block 7\n"
		     "stream a/cpu 2 scraped=%" PRId64 "\n",
		     now - 60000, now - 1000, now - 90000, now + 3600000);
	s = new_scrape(write_file("state", body, (size_t)n));
	err[0] = 0;
	EXPECT(sc_state_load(s, err, sizeof err) == 0 && s->nstate == 4, "load: %s", err);
	EXPECT(sc_state_get(s, "a/heap", &t) == 5 && t == now - 60000, "a/heap scraped %" PRId64, t);
	EXPECT(sc_state_get(s, "a/mutex", &t) == 3 && t == now - 90000, "a/mutex scraped %" PRId64, t);
	EXPECT(sc_state_get(s, "a/block", &t) == 7 && t == 0, "an older agent's line: scraped %" PRId64, t);
	EXPECT(sc_state_get(s, "a/cpu", &t) == 2 && t == 0, "a time in the future ignored: %" PRId64, t);
	EXPECT(strstr(logged, "state:6: stream a/cpu: last scrape") && strstr(logged, "in the future") &&
		       strstr(logged, "ignored"),
	       "the ignored time is logged with FILE:LINE: '%s'", logged);
	sc_state_set(s, "a/block", 8, now);
	CHECK(sc_state_snapshot(s, &snap) == 0);
	snprintf(want, sizeof want, "stream a/mutex 3 %" PRId64 " scraped=%" PRId64 "\n", now - 1000, now - 90000);
	EXPECT(snap.text && strstr(snap.text, want), "gone and scraped written back: %s", snap.text);
	snprintf(want, sizeof want, "stream a/block 8 %" PRId64 " scraped=%" PRId64 "\n", s->state[2].gone_ms, now);
	EXPECT(snap.text && strstr(snap.text, want), "the time set with the seq: %s", snap.text);
	EXPECT(snap.text && strstr(snap.text, "stream a/cpu 2 ") && !strstr(snap.text, "a/cpu 2 scraped"),
	       "no scraped= when unknown: %s", snap.text);
	free(snap.text);
	free_scrape(s);
}

static void test_state_refused(void)
{
	static const struct {
		const char *body, *want;
	} bad[] = {
		{"incarnation 9\nstream a/heap 5 scraped=0\n", ":2: stream a/heap: 'scraped=0' is not a time"},
		{"incarnation 9\nstream a/heap 5 scraped=-3\n", ":2: stream a/heap: 'scraped=-3' is not a time"},
		{"incarnation 9\nstream a/heap 5 scraped=1e9\n", ":2: stream a/heap: 'scraped=1e9' is not a time"},
		{"incarnation 9\nstream a/heap 5 scraped=9223372036854775808\n", ":2: stream a/heap: 'scraped=92233"},
		{"incarnation 9\nstream a/heap 5 scraped=\n", ":2: stream a/heap: 'scraped=' is not a time"},
		{"incarnation 9\nstream a/heap 5 scraped=1 scraped=2\n", ":2: not a state line"},
		{"incarnation 9\nstream a/heap 5 1 2\n", ":2: not a state line"},
	};

	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		const char *e = load_err(bad[i].body, strlen(bad[i].body));
		EXPECT(strstr(e, bad[i].want), "'%s': got '%s'", bad[i].body, e);
	}
	static const char nul[] = "incarnation 9\nstream a/h\0eap 5\n";
	const char *e = load_err(nul, sizeof nul - 1);
	EXPECT(strstr(e, "state-bad:2: NUL byte"), "NUL: %s", e);
	e = load_err("incarnation 9\nstream a/heap 5\n", 30);
	EXPECT(strcmp(e, "") == 0, "an older agent's file loads: %s", e);
}

int main(void)
{
	if (!mkdtemp(dir))
		return 2;
	test_read_line();
	test_state_times();
	test_state_refused();
	unlink(write_file("lines", "", 0));
	unlink(write_file("state", "", 0));
	unlink(write_file("state-bad", "", 0));
	rmdir(dir);
	return TH_DONE();
}
