/*
 * pd_textfile: the first line of a small file holding a secret or a token
 * (token files, bearer and basic-auth files): newline and trailing blanks
 * removed, an empty line refused. The one reader of such files for the scrape
 * agent and the CLIs.
 */
#ifndef PD_TEXTFILE_H
#define PD_TEXTFILE_H

#include <stddef.h>

/* A malloc'd copy of the line, or NULL with err saying why. On success err
 * is "" or a warning for the caller to show: the file is accessible by its
 * group or others (libpq's rule for keys: 0600 or less; 0640 or less when
 * owned by root). A warning, not a refusal: the secret is already exposed by
 * then, and container platforms mount secrets group-readable. */
char *pd_first_line(const char *path, char *err, size_t errlen);
/* A token file (pdelta send, pdeltactl --token-file): pd_first_line into
 * out[cap]. 0 (err: "" or pd_first_line's warning), or -1 with err saying
 * why (unreadable, empty, too long). */
int pd_token_file(const char *path, char *out, size_t cap, char *err, size_t errlen);

#endif
