/* test_textfile: the one reader of token and secret files (common/pd_textfile):
 * CRLF and trailing blanks trimmed, empty and whitespace-only files, directories and
 * overlong first lines refused, a file open to its group or others read with a
 * warning naming it and its mode. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pd_textfile.h"
#include "tharness.h"

static char dir[] = "/tmp/test_textfile.XXXXXX";

static const char *write_file(const char *name, const char *body)
{
	static char path[256];
	FILE *f;

	snprintf(path, sizeof path, "%s/%s", dir, name);
	if (!(f = fopen(path, "w")))
		return path;
	fputs(body, f);
	fclose(f);
	return path;
}

/* The token read from a file with body, or NULL (err filled) when refused. */
static const char *token_of(const char *body, char *err, size_t errlen)
{
	static char tok[64];
	const char *path = write_file("token", body);

	err[0] = 0;
	return pd_token_file(path, tok, sizeof tok, err, errlen) ? NULL : tok;
}

/* pd_first_line of a secret file with this mode: the warning in err ("" if none). */
static int mode_ok(mode_t mode, const char *want1, const char *want2)
{
	const char *path = write_file("secret", "s3cret\n");
	char err[512], *line;
	int ok;

	chmod(path, mode);
	snprintf(err, sizeof err, "not touched");
	line = pd_first_line(path, err, sizeof err);
	ok = line && !strcmp(line, "s3cret") &&
	     (want1 ? strstr(err, path) && strstr(err, want1) && strstr(err, want2) : !err[0]);
	if (!ok)
		fprintf(stderr, "mode %04o: line %s, err '%s'\n", (unsigned)mode, line ? line : "NULL",
			err);
	free(line);
	unlink(path);
	return ok;
}

int main(void)
{
	char err[512];
	const char *t;

	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	CHECK((t = token_of("abc\n", err, sizeof err)) && !strcmp(t, "abc"));
	CHECK((t = token_of("abc", err, sizeof err)) && !strcmp(t, "abc"));
	CHECK((t = token_of("abc\r\n", err, sizeof err)) && !strcmp(t, "abc"));
	CHECK((t = token_of("abc \t\r\nsecond line\n", err, sizeof err)) && !strcmp(t, "abc"));
	CHECK((t = token_of("a b\n", err, sizeof err)) && !strcmp(t, "a b"));
	CHECK(!token_of("", err, sizeof err) && strstr(err, "is empty"));
	CHECK(!token_of("\n", err, sizeof err) && strstr(err, "is empty"));
	CHECK(!token_of("\r\n", err, sizeof err) && strstr(err, "is empty"));
	CHECK(!token_of("  \t \r\n", err, sizeof err) && strstr(err, "is empty"));
	CHECK(!token_of("0123456789012345678901234567890123456789012345678901234567890123\n", err,
			sizeof err) &&
	      strstr(err, "longer than 63"));
	CHECK((t = token_of("012345678901234567890123456789012345678901234567890123456789012\n", err,
			    sizeof err)) &&
	      strlen(t) == 63);
	{
		char path[300], buf[8];
		snprintf(path, sizeof path, "%s/missing", dir);
		CHECK(pd_token_file(path, buf, sizeof buf, err, sizeof err) == -1 &&
		      strstr(err, "cannot read"));
	}
	{ /* a directory is unreadable, not empty; an overlong first line is not cut */
		char *line, big[5001];
		CHECK(!(line = pd_first_line(dir, err, sizeof err)) && strstr(err, "Is a directory"));
		free(line);
		memset(big, 'x', 5000);
		big[5000] = 0;
		CHECK(!(line = pd_first_line(write_file("token", big), err, sizeof err)) &&
		      strstr(err, "first line longer than 4094 bytes"));
		free(line);
		memset(big + 4094, 0, 1);
		CHECK((line = pd_first_line(write_file("token", big), err, sizeof err)) &&
		      strlen(line) == 4094);
		free(line);
	}
	/* the file we own: 0600 or less is quiet, group or other bits warn
	 * (root's own files included: the 0640 allowance is for root's files read
	 * by another user) */
	CHECK(mode_ok(0600, NULL, NULL));
	CHECK(mode_ok(0400, NULL, NULL));
	CHECK(mode_ok(0644, "mode 0644", "accessible by others"));
	CHECK(mode_ok(0604, "mode 0604", "accessible by others"));
	CHECK(mode_ok(0640, "mode 0640", "accessible by its group"));
	CHECK(mode_ok(0660, "mode 0660", "chmod 600"));
	unlink(write_file("token", ""));
	rmdir(dir);
	return TH_DONE();
}
