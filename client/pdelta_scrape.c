/*
 * pdelta_scrape: `pdelta scrape`, the pull-mode agent. Parses the command
 * line into pdelta_scrape_opts, runs libpdelta's scrape loop until its rounds
 * are done or SIGTERM/SIGINT, and optionally serves the loop's counters on
 * /metrics (libevent's evhttp, in its own thread). Exit status: 0 done (with
 * --once or --count: every round delivered), 1 a failed round or undelivered
 * delta of such a run, or a runtime failure, 2 usage, as for `pdelta send`.
 */
#include <errno.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/buffer.h>
#include <event2/thread.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pd_textfile.h"
#include "pd_units.h"
#include "pdelta.h"
#include "pdelta_cliopt.h"

#define SCRAPE_MAX_TARGETS 4096

int pdelta_cmd_scrape(int argc, char **argv);

typedef struct scrape_cli {
	pdelta_scrape_opts o;
	pdelta_scrape_target *targets;
	size_t ntargets;
	const char *path_prefix, *target_ca, *metrics_listen;
	char *bearer, *basic, *token, *push_token;
	int local;
} scrape_cli;

static pdelta_scrape *g_scrape;

static void usage(FILE *f)
{
	fprintf(f,
		"usage: pdelta scrape (--target NAME=URL... | --targets FILE) [--server HOST:PORT --ca CA\n"
		"                     --token-file F | --local] (--out-dir DIR | --push URL) [options]\n"
		"Takes cumulative profiles from Go services' /debug/pprof endpoints, turns each into a\n"
		"delta through pdeltad (or in process with --local) and delivers it. One stream per\n"
		"target and type: PREFIX NAME/TYPE. One line per delivery on stdout, errors on stderr.\n"
		"targets:\n"
		"  --target NAME=URL        a Go service's base URL, e.g. web-1=http://10.0.0.7:6060 (repeatable)\n"
		"  --targets FILE           one target a line, re-read when it changes:\n"
		"                           NAME URL [prefix=/debug/pprof] [timeout=10s] [max_body=64m] [ca=FILE]\n"
		"                           [bearer_file=FILE] [basic_auth_file=FILE] [label.KEY=VALUE]...\n"
		"                           KEY: [A-Za-z_][A-Za-z0-9_]*, not __* nor pdelta_type, once; VALUE:\n"
		"                           non-empty UTF-8 without , } = \" or control characters; labels at\n"
		"                           most 2 KiB a target. A bad line is refused (FILE:LINE); on a\n"
		"                           reload the previous targets stay\n"
		"  --types LIST             heap,allocs,mutex,block,goroutine,cpu (default heap,mutex,block)\n"
		"  --path-prefix P          path before /TYPE for --target targets (default /debug/pprof)\n"
		"  --stream-prefix P        prepended to every stream name (default none)\n"
		"  --timeout DUR            per-scrape HTTP timeout (default 10s)\n"
		"  --max-body SIZE          largest profile taken from a target (default 64m)\n"
		"  --target-ca FILE         CA bundle for https targets given with --target\n"
		"  --bearer-file F          bearer token for --target targets (first line of F)\n"
		"  --basic-auth-file F      user:password for --target targets (first line of F)\n"
		"  --cpu-seconds N          window of a cpu scrape (?seconds=N, default 10)\n"
		"schedule:\n"
		"  --interval DUR           between two scrapes of a stream (default 60s; ms, s, m, h; bare = ms)\n"
		"  --count N                rounds per stream, then exit (default 0: until SIGTERM)\n"
		"  --once                   one round (for cron: with --state, each run continues)\n"
		"  --concurrency N          scrapes in flight (default 8)\n"
		"delta:\n"
		"  --server HOST:PORT       pdeltad ([v6]:port, or a list H1:P1,H2:P2,... as for `pdelta send`);\n"
		"                           --ca FILE, --cert F --key F, --token-file F,\n"
		"                           --server-name NAME as for `pdelta send`\n"
		"  --local                  compute deltas in this process (state in memory only)\n"
		"  --shadow                 with --local: check every delta against the slow path\n"
		"                           (a mismatch is logged as an error)\n"
		"  --fallback-local         compute locally while the server stays unreachable (BASELINE moved,\n"
		"                           then local deltas); back to it once it answers (BASELINE state-lost)\n"
		"  --first keep|drop|auto   first-profile policy (default keep)\n"
		"  --state FILE             incarnation, sequence numbers and last scrape times (the next\n"
		"                           push's from), kept across runs (default: none); one agent per\n"
		"                           file (FILE.lock; a second one exits 2)\n"
		"  --state-grace DUR        a removed target's streams leave the state file after DUR\n"
		"                           (default 24h; re-added later, a stream continues after the\n"
		"                           server's sequence)\n"
		"delivery:\n"
		"  --out-dir DIR            DIR/NAME/TYPE/NNN.pb.gz (NNN = round, 000 first)\n"
		"  --keep N                 keep the last N files per stream in --out-dir/--save-input\n"
		"  --save-input DIR         the cumulative profiles as scraped, same layout\n"
		"  --push URL               POST each delta to URL/ingest (Pyroscope ingest API, format=pprof,\n"
		"                           labels + __delta__=false); deltas and BASELINE resets, not the\n"
		"                           first answer of a stream without a --state entry\n"
		"  --push-first             push every answer: BASELINE first, evicted, moved too\n"
		"  --push-token-file F      bearer token for the push\n"
		"  --spool DIR              push spool (default STATE.spool, or temporary)\n"
		"  --spool-max SIZE         spool cap; oldest dropped beyond it (default 256m)\n"
		"  --push-timeout DUR       per POST (default 10s)\n"
		"observability:\n"
		"  --metrics-listen H:P     serve the agent's counters on http://H:P/metrics\n"
		"exit status:\n"
		"  0                        done: with --once/--count, every round delivered its delta and\n"
		"                           the push spool is empty; without them, stopped by SIGTERM\n"
		"  1                        with --once/--count, a scrape, a delta request or a delivery\n"
		"                           failed or a delta is still spooled (a summary on stderr); or a\n"
		"                           runtime failure\n"
		"  2                        usage, a bad targets or state file, a state file in use\n");
}

static char *first_line(const char *path)
{
	char err[512];
	char *line = pd_first_line(path, err, sizeof err);

	if (!line || err[0])
		fprintf(stderr, "pdelta scrape: %s%s\n", line ? "warning: " : "", err);
	return line;
}

static int parse_uint(const char *what, const char *v, unsigned *out)
{
	char *end;
	unsigned long x;

	errno = 0;
	x = strtoul(v, &end, 10);
	if (errno || !*v || *end || *v == '-' || x > 0xffffffffUL) {
		fprintf(stderr, "pdelta scrape: %s wants a number, got '%s'\n", what, v);
		return -1;
	}
	*out = (unsigned)x;
	return 0;
}

static int parse_dur(const char *what, const char *v, unsigned *out)
{
	uint64_t x;

	if (pd_parse_ms(v, &x) || x > UINT32_MAX) {
		fprintf(stderr, "pdelta scrape: %s wants a duration (10s, 500ms, 1m; a bare number is ms), got '%s'\n",
			what, v);
		return -1;
	}
	*out = (unsigned)x;
	return 0;
}

static int parse_size(const char *what, const char *v, uint64_t *out)
{
	if (pd_parse_size(v, out)) {
		fprintf(stderr, "pdelta scrape: %s wants a size (64m, 512k), got '%s'\n", what, v);
		return -1;
	}
	return 0;
}

static int add_target(scrape_cli *c, const char *arg)
{
	const char *eq = strchr(arg, '=');
	pdelta_scrape_target *t;

	if (!eq || eq == arg || !eq[1]) {
		fprintf(stderr, "pdelta scrape: --target wants NAME=URL, got '%s'\n", arg);
		return -1;
	}
	if (c->ntargets == SCRAPE_MAX_TARGETS) {
		fprintf(stderr, "pdelta scrape: more than %d --target (use --targets FILE)\n", SCRAPE_MAX_TARGETS);
		return -1;
	}
	t = &c->targets[c->ntargets++];
	memset(t, 0, sizeof *t);
	t->name = strndup(arg, (size_t)(eq - arg));
	t->url = eq + 1;
	return t->name ? 0 : -1;
}

enum {
	O_TARGET = 256, O_TARGETS, O_TYPES, O_PATH_PREFIX, O_STREAM_PREFIX, O_TIMEOUT, O_MAX_BODY,
	O_TARGET_CA, O_BEARER, O_BASIC, O_CPU, O_INTERVAL, O_COUNT, O_ONCE, O_CONC, O_SERVER, O_CA,
	O_CERT, O_KEY, O_TOKEN_FILE, O_SNI, O_LOCAL, O_SHADOW, O_FALLBACK, O_FIRST, O_STATE, O_OUT, O_KEEP,
	O_SAVE, O_PUSH, O_PUSH_FIRST, O_PUSH_TOKEN, O_SPOOL, O_SPOOL_MAX, O_PUSH_TIMEOUT, O_METRICS,
	O_STATE_GRACE
};

static const struct option longopts[] = {
	{"target", required_argument, NULL, O_TARGET},
	{"targets", required_argument, NULL, O_TARGETS},
	{"types", required_argument, NULL, O_TYPES},
	{"path-prefix", required_argument, NULL, O_PATH_PREFIX},
	{"stream-prefix", required_argument, NULL, O_STREAM_PREFIX},
	{"timeout", required_argument, NULL, O_TIMEOUT},
	{"max-body", required_argument, NULL, O_MAX_BODY},
	{"target-ca", required_argument, NULL, O_TARGET_CA},
	{"bearer-file", required_argument, NULL, O_BEARER},
	{"basic-auth-file", required_argument, NULL, O_BASIC},
	{"cpu-seconds", required_argument, NULL, O_CPU},
	{"interval", required_argument, NULL, O_INTERVAL},
	{"count", required_argument, NULL, O_COUNT},
	{"once", no_argument, NULL, O_ONCE},
	{"concurrency", required_argument, NULL, O_CONC},
	{"server", required_argument, NULL, O_SERVER},
	{"ca", required_argument, NULL, O_CA},
	{"cert", required_argument, NULL, O_CERT},
	{"key", required_argument, NULL, O_KEY},
	{"token-file", required_argument, NULL, O_TOKEN_FILE},
	{"server-name", required_argument, NULL, O_SNI},
	{"local", no_argument, NULL, O_LOCAL},
	{"shadow", no_argument, NULL, O_SHADOW},
	{"fallback-local", no_argument, NULL, O_FALLBACK},
	{"local-fallback", no_argument, NULL, O_FALLBACK},
	{"first", required_argument, NULL, O_FIRST},
	{"state", required_argument, NULL, O_STATE},
	{"state-grace", required_argument, NULL, O_STATE_GRACE},
	{"out-dir", required_argument, NULL, O_OUT},
	{"keep", required_argument, NULL, O_KEEP},
	{"save-input", required_argument, NULL, O_SAVE},
	{"push", required_argument, NULL, O_PUSH},
	{"push-first", no_argument, NULL, O_PUSH_FIRST},
	{"push-token-file", required_argument, NULL, O_PUSH_TOKEN},
	{"spool", required_argument, NULL, O_SPOOL},
	{"spool-max", required_argument, NULL, O_SPOOL_MAX},
	{"push-timeout", required_argument, NULL, O_PUSH_TIMEOUT},
	{"metrics-listen", required_argument, NULL, O_METRICS},
	{"help", no_argument, NULL, 'h'},
	{NULL, 0, NULL, 0},
};

static int parse_one(scrape_cli *c, int ch, const char *arg)
{
	pdelta_scrape_opts *o = &c->o;
	uint64_t v;

	switch (ch) {
	case O_TARGET: return add_target(c, arg);
	case O_TARGETS: o->targets_file = arg; return 0;
	case O_TYPES: o->types = arg; return 0;
	case O_PATH_PREFIX: c->path_prefix = arg; return 0;
	case O_STREAM_PREFIX: o->stream_prefix = arg; return 0;
	case O_TIMEOUT: return parse_dur("--timeout", arg, &o->timeout_ms);
	case O_MAX_BODY:
		if (parse_size("--max-body", arg, &v))
			return -1;
		o->max_body = (size_t)v;
		return 0;
	case O_TARGET_CA: c->target_ca = arg; return 0;
	case O_BEARER: return (c->bearer = first_line(arg)) ? 0 : -1;
	case O_BASIC: return (c->basic = first_line(arg)) ? 0 : -1;
	case O_CPU: return parse_uint("--cpu-seconds", arg, &o->cpu_seconds);
	case O_INTERVAL: return parse_dur("--interval", arg, &o->interval_ms);
	case O_COUNT: return parse_uint("--count", arg, &o->count);
	case O_ONCE: o->count = 1; return 0;
	case O_CONC: return parse_uint("--concurrency", arg, &o->concurrency);
	case O_SERVER: return cli_server_opt("pdelta scrape", arg, &o->delta.server);
	case O_CA: o->delta.ca_file = arg; return 0;
	case O_CERT: o->delta.cert_file = arg; return 0;
	case O_KEY: o->delta.key_file = arg; return 0;
	case O_TOKEN_FILE: return (o->delta.token = c->token = first_line(arg)) ? 0 : -1;
	case O_SNI: o->delta.verify_host = arg; return 0;
	case O_LOCAL: c->local = 1; return 0;
	case O_SHADOW: o->shadow = 1; return 0;
	case O_FALLBACK: o->delta.local_fallback = 1; return 0;
	case O_FIRST:
		if (cli_first_policy(arg, &o->delta.first_policy)) {
			fprintf(stderr, "pdelta scrape: --first must be keep, drop or auto\n");
			return -1;
		}
		return 0;
	case O_STATE: o->state_file = arg; return 0;
	case O_STATE_GRACE:
		if (pd_parse_ms(arg, &v)) {
			fprintf(stderr, "pdelta scrape: --state-grace wants a duration (24h, 30m, 10s), got '%s'\n", arg);
			return -1;
		}
		o->state_grace_ms = v;
		return 0;
	case O_OUT: o->out_dir = arg; return 0;
	case O_KEEP: return parse_uint("--keep", arg, &o->keep);
	case O_SAVE: o->save_input_dir = arg; return 0;
	case O_PUSH: o->push_url = arg; return 0;
	case O_PUSH_FIRST: o->push_first = 1; return 0;
	case O_PUSH_TOKEN: return (o->push_token = c->push_token = first_line(arg)) ? 0 : -1;
	case O_SPOOL: o->spool_dir = arg; return 0;
	case O_SPOOL_MAX: return parse_size("--spool-max", arg, &o->spool_max_bytes);
	case O_PUSH_TIMEOUT: return parse_dur("--push-timeout", arg, &o->push_timeout_ms);
	case O_METRICS: c->metrics_listen = arg; return 0;
	default: return -1;
	}
}

/* ---- /metrics ---------------------------------------------------------- */

static void on_metrics(struct evhttp_request *req, void *arg)
{
	struct evbuffer *b = evbuffer_new();
	char *text = pdelta_scrape_metrics(arg);

	(void)arg;
	if (!b || !text) {
		evhttp_send_error(req, 500, "out of memory");
	} else {
		evbuffer_add(b, text, strlen(text));
		evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
				  "text/plain; version=0.0.4");
		evhttp_send_reply(req, 200, "OK", b);
	}
	free(text);
	if (b)
		evbuffer_free(b);
}

typedef struct metrics_srv {
	struct event_base *base;
	struct evhttp *http;
	pthread_t thread;
} metrics_srv;

static void *metrics_main(void *arg)
{
	metrics_srv *m = arg;

	event_base_dispatch(m->base);
	return NULL;
}

static int metrics_start(metrics_srv *m, const char *listen, pdelta_scrape *s)
{
	char host[256];
	const char *colon = strrchr(listen, ':');
	unsigned port;

	if (!colon || colon == listen || (size_t)(colon - listen) >= sizeof host ||
	    parse_uint("--metrics-listen port", colon + 1, &port) || port == 0 || port > 65535) {
		fprintf(stderr, "pdelta scrape: --metrics-listen wants HOST:PORT, got '%s'\n", listen);
		return -1;
	}
	memcpy(host, listen, (size_t)(colon - listen));
	host[colon - listen] = 0;
	evthread_use_pthreads();
	m->base = event_base_new();
	m->http = m->base ? evhttp_new(m->base) : NULL;
	if (!m->http || evhttp_bind_socket(m->http, host, (uint16_t)port)) {
		fprintf(stderr, "pdelta scrape: cannot listen on %s for /metrics\n", listen);
		return -1;
	}
	evhttp_set_cb(m->http, "/metrics", on_metrics, s);
	if (pthread_create(&m->thread, NULL, metrics_main, m)) {
		fprintf(stderr, "pdelta scrape: cannot start the metrics thread\n");
		return -1;
	}
	return 0;
}

static void metrics_stop(metrics_srv *m)
{
	if (!m->base)
		return;
	if (m->thread) {
		event_base_loopbreak(m->base);
		pthread_join(m->thread, NULL);
	}
	if (m->http)
		evhttp_free(m->http);
	event_base_free(m->base);
}

/* ---- main --------------------------------------------------------------- */

/* The exit status of a run of bounded rounds: 1, with a summary, when a round
 * failed or a delta was not delivered. */
static int run_status(pdelta_scrape *s)
{
	uint64_t ok, failed, undelivered;

	pdelta_scrape_outcome(s, &ok, &failed, &undelivered);
	if (!failed && !undelivered)
		return 0;
	fprintf(stderr, "pdelta scrape: %" PRIu64 " of %" PRIu64 " rounds failed, %" PRIu64
		" delta(s) not pushed\n", failed, ok + failed, undelivered);
	return 1;
}

static void on_signal(int sig)
{
	(void)sig;
	if (g_scrape)
		pdelta_scrape_stop(g_scrape);
}

int pdelta_cmd_scrape(int argc, char **argv)
{
	scrape_cli c;
	metrics_srv m;
	char err[1024];
	int ch, rc = 2;
	struct sigaction sa;

	memset(&c, 0, sizeof c);
	memset(&m, 0, sizeof m);
	pdelta_scrape_opts_init(&c.o);
	c.o.delta.client_name = "pdelta-scrape";
	c.targets = calloc(SCRAPE_MAX_TARGETS, sizeof *c.targets);
	if (!c.targets)
		return 1;
	optind = 1;
	while ((ch = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		if (ch == 'h') {
			usage(stdout);
			rc = 0;
			goto out;
		}
		if (ch == '?' || parse_one(&c, ch, optarg))
			goto out;
	}
	if (optind < argc) {
		fprintf(stderr, "pdelta scrape: unexpected argument '%s' (see --help)\n", argv[optind]);
		goto out;
	}
	if (c.o.shadow && !c.local) {
		fprintf(stderr, "pdelta scrape: --shadow checks local deltas: give --local\n");
		goto out;
	}
	if (c.local && c.o.delta.server) {
		fprintf(stderr, "pdelta scrape: --local and --server exclude each other\n");
		goto out;
	}
	if (!c.local && !c.o.delta.server) {
		fprintf(stderr, "pdelta scrape: give --server HOST:PORT (or --local)\n");
		goto out;
	}
	for (size_t i = 0; i < c.ntargets; i++) {
		c.targets[i].path_prefix = c.path_prefix;
		c.targets[i].ca_file = c.target_ca;
		c.targets[i].bearer_token = c.bearer;
		c.targets[i].basic_auth = c.basic;
	}
	c.o.targets = c.targets;
	c.o.ntargets = c.ntargets;
	if (pdelta_scrape_new(&c.o, &g_scrape, err, sizeof err)) {
		fprintf(stderr, "pdelta scrape: %s\n", err);
		goto out;
	}
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_signal;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	if (c.metrics_listen && metrics_start(&m, c.metrics_listen, g_scrape)) {
		rc = 1;
		goto out;
	}
	rc = pdelta_scrape_run(g_scrape) ? 1 : 0;
	if (rc == 0 && c.o.count)
		rc = run_status(g_scrape);
out:
	metrics_stop(&m);
	{
		pdelta_scrape *s = g_scrape; /* the signal handler must not see it freed */
		g_scrape = NULL;
		pdelta_scrape_free(s);
	}
	for (size_t i = 0; i < c.ntargets; i++)
		free((void *)(uintptr_t)c.targets[i].name);
	free(c.targets);
	free(c.bearer);
	free(c.basic);
	free(c.token);
	free(c.push_token);
	return rc;
}
