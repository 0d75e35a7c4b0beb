/*
 * Crash test of the state store (DESIGN §4): a child process writes streams
 * as fast as it can and reports, through a pipe, each write before it is
 * queued and each completion (= acknowledged, committed). The parent
 * SIGKILLs the child at a random moment (sometimes while it is still
 * opening the database), reopens the database and checks that
 *   - every acknowledged write is there: stored seq >= last acked seq,
 *   - nothing unqueued appeared: stored seq <= last queued seq,
 *   - each row is whole (its blobs match its seq) and integrity_check is ok.
 * Repeated ITERATIONS times on the same database; a few rounds run with
 * synchronous=NORMAL, which must survive a process crash too.
 *
 * The parent never has a store open while it forks, so the child starts
 * single-threaded. Set PD_CRASH_SEED to replay a run.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pd_store.h"
#include "tharness.h"
#include "tstore.h"

#define ITERATIONS 20
#define STREAMS 8
#define MAX_STATE 20000

enum { MSG_QUEUED = 0, MSG_ACKED = 1 };

struct msg {
	uint32_t kind;
	uint32_t stream;
	uint64_t seq;
};

static int ack_fd;

static size_t state_len_for(uint64_t seq)
{
	return (size_t)(seq * 7919 % MAX_STATE) + 1;
}

static uint8_t pattern_byte(uint64_t seq, size_t i)
{
	return (uint8_t)(seq * 131 + i * 7);
}

static void send_msg(uint32_t kind, uint32_t stream, uint64_t seq)
{
	struct msg m = {.kind = kind, .stream = stream, .seq = seq};
	ssize_t n;

	do { /* a 16-byte write to a pipe is atomic */
		n = write(ack_fd, &m, sizeof m);
	} while (n < 0 && errno == EINTR);
}

/* The child's completion: the write is committed, tell the parent. The
 * stream index and seq travel in arg (seq * STREAMS + stream). */
static void child_done(void *arg, int rc, uint64_t latency_ns)
{
	uintptr_t v = (uintptr_t)arg;

	if (rc == PD_OK)
		send_msg(MSG_ACKED, (uint32_t)(v % STREAMS), v / STREAMS);
}

static void stream_name(char *buf, size_t n, unsigned k)
{
	snprintf(buf, n, "svc/%u", k);
}

static void make_row(pd_store_row *r, uint8_t *state, uint8_t *delta, const char *name,
		     uint64_t seq)
{
	size_t len = state_len_for(seq);

	for (size_t i = 0; i < len; i++)
		state[i] = pattern_byte(seq, i);
	for (size_t i = 0; i < 64; i++)
		delta[i] = pattern_byte(seq + 1, i);
	memset(r, 0, sizeof *r);
	r->tenant = "crash";
	r->name = name;
	r->state = state;
	r->state_len = len;
	r->state_bytes = len;
	r->last_seq = seq;
	memset(r->last_hash, (int)(seq & 0xff), sizeof r->last_hash);
	r->last_delta = delta;
	r->last_delta_len = 64;
}

/* Writes forever (until SIGKILL), continuing each stream's sequence. */
static void child_main(const char *path, int sync_full)
{
	static uint8_t state[MAX_STATE], delta[64];
	struct pd_store_opts o;
	pd_store *s;
	pd_store_row r = {0}, cur = {0};
	uint64_t seq[STREAMS] = {0};
	char name[32];

	pd_store_opts_init(&o);
	o.path = path;
	o.synchronous_full = sync_full;
	o.max_queue = 64;
	if (pd_store_open(&o, &s, NULL))
		_exit(3);
	for (unsigned k = 0; k < STREAMS; k++) {
		stream_name(name, sizeof name, k);
		if (pd_store_get(s, "crash", name, &cur, NULL) == PD_OK)
			seq[k] = cur.last_seq;
	}
	for (uint64_t i = 0;; i++) {
		unsigned k = (unsigned)(i % STREAMS);
		uint64_t next = seq[k] + 1;
		stream_name(name, sizeof name, k);
		make_row(&r, state, delta, name, next);
		send_msg(MSG_QUEUED, k, next);
		while (pd_store_put_async(s, &r, child_done,
					  (void *)(uintptr_t)(next * STREAMS + k)) == PD_E_BUSY)
			usleep(200);
		seq[k] = next;
	}
}

struct seen {
	uint64_t queued[STREAMS];
	uint64_t acked[STREAMS];
	uint64_t n_acks;
};

static void take_msgs(int fd, struct seen *sn)
{
	struct msg buf[256];
	ssize_t n;

	while ((n = read(fd, buf, sizeof buf)) > 0) {
		for (size_t i = 0; i < (size_t)n / sizeof buf[0]; i++) {
			struct msg *m = &buf[i];
			uint64_t *slot = m->kind == MSG_ACKED ? sn->acked : sn->queued;
			if (m->stream >= STREAMS)
				continue;
			if (m->seq > slot[m->stream])
				slot[m->stream] = m->seq;
			sn->n_acks += m->kind == MSG_ACKED;
		}
		if ((size_t)n % sizeof buf[0])
			fprintf(stderr, "torn pipe read\n");
	}
}

static uint64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Reads messages until the deadline, then kills the child and drains. */
static void run_and_kill(pid_t pid, int fd, unsigned delay_ms, struct seen *sn)
{
	uint64_t end = mono_ms() + delay_ms;
	int status;

	fcntl(fd, F_SETFL, O_NONBLOCK);
	for (uint64_t now = mono_ms(); now < end; now = mono_ms()) {
		struct pollfd p = {.fd = fd, .events = POLLIN};
		poll(&p, 1, (int)(end - now));
		take_msgs(fd, sn);
	}
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	fcntl(fd, F_SETFL, 0);
	take_msgs(fd, sn); /* blocking until EOF: the writer end died with the child */
	if (!WIFSIGNALED(status))
		fprintf(stderr, "child exited early (status %d)\n", status);
}

/* Checks the reopened database against what the child reported. */
static void verify(const char *path, const struct seen *sn)
{
	pd_store *s = th_store_open(NULL, path);
	pd_store_row r = {0};
	pd_err e = {0};
	char name[32];

	CHECK(s != NULL);
	if (!s)
		return;
	CHECK(pd_store_integrity_check(s, &e) == PD_OK);
	for (unsigned k = 0; k < STREAMS; k++) {
		int rc, whole = 1;
		stream_name(name, sizeof name, k);
		rc = pd_store_get(s, "crash", name, &r, &e);
		if (rc == PD_E_NOTFOUND) {
			CHECK(sn->acked[k] == 0);
			continue;
		}
		CHECK(rc == PD_OK);
		if (rc)
			continue;
		if (r.last_seq < sn->acked[k] || r.last_seq > sn->queued[k])
			fprintf(stderr, "stream %u: stored seq %llu, acked %llu, queued %llu\n", k,
				(unsigned long long)r.last_seq, (unsigned long long)sn->acked[k],
				(unsigned long long)sn->queued[k]);
		CHECK(r.last_seq >= sn->acked[k]);
		CHECK(r.last_seq <= sn->queued[k]);
		whole = r.state_len == state_len_for(r.last_seq) && r.last_delta_len == 64;
		for (size_t i = 0; whole && i < r.state_len; i++)
			whole = r.state[i] == pattern_byte(r.last_seq, i);
		for (size_t i = 0; whole && i < 64; i++)
			whole = r.last_delta[i] == pattern_byte(r.last_seq + 1, i);
		CHECK(whole);
	}
	pd_store_row_free(&r);
	pd_store_close(s);
}

static void remove_db(const char *dir, const char *path)
{
	char p[128];
	static const char *const sfx[] = {"", "-wal", "-shm", "-journal"};

	for (size_t i = 0; i < sizeof sfx / sizeof sfx[0]; i++) {
		snprintf(p, sizeof p, "%s%s", path, sfx[i]);
		unlink(p);
	}
	rmdir(dir);
}

int main(void)
{
	char dir[64] = "/tmp/pd_store_crash.XXXXXX", path[96];
	const char *seed_env = getenv("PD_CRASH_SEED");
	unsigned seed = seed_env ? (unsigned)strtoul(seed_env, NULL, 10)
				 : (unsigned)time(NULL) ^ (unsigned)getpid();
	struct seen sn;
	uint64_t total_acks = 0;

	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	snprintf(path, sizeof path, "%s/crash.db", dir);
	memset(&sn, 0, sizeof sn);
	srand(seed);
	signal(SIGPIPE, SIG_IGN);
	for (int it = 0; it < ITERATIONS; it++) {
		int fds[2];
		int sync_full = it % 4 != 3;
		/* Mostly mid-stream kills; some during open and recovery. */
		unsigned delay = rand() % 5 == 0 ? (unsigned)(rand() % 3) : 5 + (unsigned)(rand() % 60);
		pid_t pid;

		if (pipe(fds)) {
			perror("pipe");
			return 1;
		}
		fflush(NULL);
		pid = fork();
		if (pid == 0) {
			close(fds[0]);
			ack_fd = fds[1];
			child_main(path, sync_full);
			_exit(0);
		}
		close(fds[1]);
		sn.n_acks = 0;
		run_and_kill(pid, fds[0], delay, &sn);
		close(fds[0]);
		total_acks += sn.n_acks;
		verify(path, &sn);
	}
	printf("crash test: seed %u, %d kills, %llu acknowledged writes checked\n", seed, ITERATIONS,
	       (unsigned long long)total_acks);
	CHECK(total_acks > 0);
	remove_db(dir, path);
	return TH_DONE();
}
