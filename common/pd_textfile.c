/* pd_textfile: the first line of a secret file (see pd_textfile.h). */
#include "pd_textfile.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* libpq's rule for private keys: owner-only (0600 or less), or, for a file
 * owned by root, also readable by its group (0640 or less: how Kubernetes
 * mounts a Secret for a pod's fsGroup). "" when the mode is fine. */
static void mode_warning(FILE *f, const char *path, char *out, size_t n)
{
	struct stat sb;
	mode_t loose;

	out[0] = 0;
	if (fstat(fileno(f), &sb) || !S_ISREG(sb.st_mode))
		return;
	loose = sb.st_uid == 0 && geteuid() != 0 ? S_IWGRP | S_IXGRP | S_IRWXO : S_IRWXG | S_IRWXO;
	if (sb.st_mode & loose)
		snprintf(out, n, "%s has mode %04o: accessible by %s; it holds a secret: chmod 600 it",
			 path, (unsigned)(sb.st_mode & 07777),
			 sb.st_mode & S_IRWXO ? "others" : "its group");
}

char *pd_first_line(const char *path, char *err, size_t errlen)
{
	FILE *f = fopen(path, "r");
	char line[4096], warn[512];
	size_t n;

	if (!f) {
		snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
		return NULL;
	}
	mode_warning(f, path, warn, sizeof warn);
	errno = 0;
	if (!fgets(line, sizeof line, f))
		line[0] = 0;
	if (ferror(f)) { /* e.g. a directory: EISDIR, not "empty" */
		snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno ? errno : EIO));
		fclose(f);
		return NULL;
	}
	n = strcspn(line, "\r\n");
	if (!line[n] && n == sizeof line - 1 && !feof(f)) { /* never cut a secret short */
		snprintf(err, errlen, "%s: first line longer than %zu bytes", path, sizeof line - 2);
		fclose(f);
		return NULL;
	}
	fclose(f);
	while (n && (line[n - 1] == ' ' || line[n - 1] == '\t'))
		n--;
	line[n] = 0;
	if (n == 0) {
		snprintf(err, errlen, "%s is empty", path);
		return NULL;
	}
	snprintf(err, errlen, "%s", warn);
	return strdup(line);
}

int pd_token_file(const char *path, char *out, size_t cap, char *err, size_t errlen)
{
	char *line = pd_first_line(path, err, errlen);
	size_t n;

	if (!line)
		return -1;
	n = strlen(line);
	if (n >= cap) {
		snprintf(err, errlen, "%s: token longer than %zu bytes", path, cap - 1);
		free(line);
		return -1;
	}
	memcpy(out, line, n + 1);
	free(line);
	return 0;
}
