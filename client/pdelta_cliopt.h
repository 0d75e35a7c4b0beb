/*
 * pdelta_cliopt: what the command-line programs share. The connection options
 * of `pdelta send` and pdeltactl (--server, --ca, --cert, --key, --token,
 * --token-file, --server-name), the --first keyword, and a profile file given
 * to libpdelta's streaming API in chunks (replayed from its start when a retry
 * needs the bytes again) with a sink that writes the delta to a FILE.
 */
#ifndef PDELTA_CLIOPT_H
#define PDELTA_CLIOPT_H

#include <getopt.h>
#include <stddef.h>
#include <stdio.h>

#include "pdelta.h"

/* getopt_long codes of the connection options (a program's own codes start at 256). */
enum { CLI_SERVER = 200, CLI_CA, CLI_CERT, CLI_KEY, CLI_TOKEN, CLI_TOKEN_FILE, CLI_SNI };

/* The struct option lines of the connection options, for a program's table. */
#define CLI_CONN_LONGOPTS                                                                    \
	{"server", required_argument, NULL, CLI_SERVER}, {"ca", required_argument, NULL, CLI_CA}, \
	{"cert", required_argument, NULL, CLI_CERT}, {"key", required_argument, NULL, CLI_KEY},   \
	{"token", required_argument, NULL, CLI_TOKEN},                                            \
	{"token-file", required_argument, NULL, CLI_TOKEN_FILE},                                  \
	{"server-name", required_argument, NULL, CLI_SNI}

/* Applies connection option ch to o. --token-file reads the token into token[cap]
 * (pd_token_file's rules) and points o->token at it. 0 done, -1 bad value (a
 * message "PROG: ..." on stderr), 1 ch is not a connection option. */
int cli_conn_opt(const char *prog, pdelta_opts *o, char *token, size_t cap, int ch,
		 const char *arg);

/* --server's value: refused when empty (a message "PROG: ..." on stderr, -1). */
int cli_server_opt(const char *prog, const char *arg, const char **server);

/* "keep", "drop" or "auto" as PDELTA_FIRST_*: 0, or -1 for any other word. */
int cli_first_policy(const char *word, int *policy);

/* A profile file fed to the streaming API. */
typedef struct cli_file {
	FILE *in;
	unsigned char buf[64 * 1024];
} cli_file;

/* Feeds the rest of f->in: 0, pdelta_feed's error code, or -1 on a read error. */
int cli_file_feed(pdelta *h, cli_file *f);

/* pdelta_replay_fn over a cli_file: the same bytes again, from the start. */
int cli_file_replay(void *ctx, pdelta *h);

/* pdelta_sink_fn writing to the FILE *ctx; PDELTA_RESTART empties the file. */
int cli_file_sink(void *ctx, const void *p, size_t n);

#endif
