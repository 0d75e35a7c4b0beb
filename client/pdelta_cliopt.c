/*
 * pdelta_cliopt: the options and the file plumbing the command-line programs
 * share (see pdelta_cliopt.h).
 */
#include <string.h>
#include <unistd.h>

#include "pd_textfile.h"
#include "pdelta_cliopt.h"

int cli_conn_opt(const char *prog, pdelta_opts *o, char *token, size_t cap, int ch,
		 const char *arg)
{
	char err[512];

	switch (ch) {
	case CLI_SERVER: return cli_server_opt(prog, arg, &o->server);
	case CLI_CA: o->ca_file = arg; return 0;
	case CLI_CERT: o->cert_file = arg; return 0;
	case CLI_KEY: o->key_file = arg; return 0;
	case CLI_TOKEN: o->token = arg; return 0;
	case CLI_SNI: o->verify_host = arg; return 0;
	case CLI_TOKEN_FILE:
		if (pd_token_file(arg, token, cap, err, sizeof err)) {
			fprintf(stderr, "%s: --token-file: %s\n", prog, err);
			return -1;
		}
		if (err[0])
			fprintf(stderr, "%s: --token-file: warning: %s\n", prog, err);
		o->token = token;
		return 0;
	default: return 1;
	}
}

int cli_server_opt(const char *prog, const char *arg, const char **server)
{
	/* libpdelta reads an empty server as "no server": that would compute locally */
	if (!*arg) {
		fprintf(stderr, "%s: --server is empty (give HOST:PORT)\n", prog);
		return -1;
	}
	*server = arg;
	return 0;
}

int cli_first_policy(const char *word, int *policy)
{
	static const char *const names[] = {
		[PDELTA_FIRST_KEEP] = "keep", [PDELTA_FIRST_DROP] = "drop", [PDELTA_FIRST_AUTO] = "auto"};

	for (int i = 0; i < (int)(sizeof names / sizeof names[0]); i++)
		if (strcmp(word, names[i]) == 0) {
			*policy = i;
			return 0;
		}
	return -1;
}

int cli_file_feed(pdelta *h, cli_file *f)
{
	size_t n;
	int rc;

	while ((n = fread(f->buf, 1, sizeof f->buf, f->in)) > 0)
		if ((rc = pdelta_feed(h, f->buf, n)))
			return rc;
	return ferror(f->in) ? -1 : 0;
}

int cli_file_replay(void *ctx, pdelta *h)
{
	cli_file *f = ctx;

	if (fseek(f->in, 0, SEEK_SET) != 0)
		return -1;
	return cli_file_feed(h, f) ? -1 : 0;
}

int cli_file_sink(void *ctx, const void *p, size_t n)
{
	FILE *f = ctx;

	if (!p) { /* PDELTA_RESTART: the delta starts again */
		fflush(f);
		return ftruncate(fileno(f), 0) != 0 || fseek(f, 0, SEEK_SET) != 0;
	}
	return fwrite(p, 1, n, f) != n;
}
