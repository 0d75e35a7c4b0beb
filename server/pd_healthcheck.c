/*
 * pd_healthcheck: a blocking HTTP/1.0 GET /healthz with one deadline
 * (pd_healthcheck.h). Plain sockets and poll(): it runs before and without
 * the server's event loop.
 */
#include "pd_healthcheck.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "pd_clock.h"

static int64_t now_ms(void) { return (int64_t)pd_now_ms(); }

/* host and port of host:port / [v6]:port, wildcards mapped to loopback. */
static int split_addr(const char *addr, char *host, size_t hl, char *port, size_t pl)
{
	const char *colon = strrchr(addr, ':');
	size_t n;

	if (!colon)
		return -1;
	n = (size_t)(colon - addr);
	if (n >= 2 && addr[0] == '[' && addr[n - 1] == ']') {
		addr++;
		n -= 2;
	}
	if (n >= hl || strlen(colon + 1) >= pl)
		return -1;
	snprintf(host, hl, "%.*s", (int)n, addr);
	snprintf(port, pl, "%s", colon + 1);
	if (!*host || strcmp(host, "0.0.0.0") == 0 || strcmp(host, "*") == 0)
		snprintf(host, hl, "127.0.0.1");
	else if (strcmp(host, "::") == 0)
		snprintf(host, hl, "::1");
	return 0;
}

/* Waits for fd to become ready for ev before the deadline. */
static int wait_fd(int fd, short ev, int64_t deadline)
{
	struct pollfd p = {fd, ev, 0};
	int64_t left = deadline - now_ms();
	int rc;

	if (left <= 0)
		return -1;
	do
		rc = poll(&p, 1, (int)left);
	while (rc < 0 && errno == EINTR);
	return rc == 1 ? 0 : -1;
}

static int connect_by(const struct addrinfo *ai, int64_t deadline)
{
	int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol), err = 0;
	socklen_t len = sizeof err;

	if (fd < 0)
		return -1;
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
		return fd;
	if (errno != EINPROGRESS || wait_fd(fd, POLLOUT, deadline) ||
	    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) || err) {
		close(fd);
		return -1;
	}
	return fd;
}

/* Sends the request and reads until the status line is complete. */
static int exchange(int fd, const char *host, int64_t deadline, char *resp, size_t rl)
{
	char req[384];
	int n = snprintf(req, sizeof req, "GET /healthz HTTP/1.0\r\nHost: %s\r\nUser-Agent: "
			 "pdeltad-healthcheck\r\nConnection: close\r\n\r\n", host);
	size_t got = 0;

	for (int sent = 0; sent < n;) {
		ssize_t w = send(fd, req + sent, (size_t)(n - sent), MSG_NOSIGNAL);
		if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
			if (wait_fd(fd, POLLOUT, deadline))
				return -1;
			continue;
		}
		if (w <= 0)
			return -1;
		sent += (int)w;
	}
	while (got + 1 < rl && !memchr(resp, '\n', got)) {
		ssize_t r = recv(fd, resp + got, rl - 1 - got, 0);
		if (r < 0 && (errno == EAGAIN || errno == EINTR)) {
			if (wait_fd(fd, POLLIN, deadline))
				return -1;
			continue;
		}
		if (r <= 0)
			break;
		got += (size_t)r;
		resp[got] = 0;
	}
	resp[got] = 0;
	return got ? 0 : -1;
}

int pd_healthcheck(const char *metrics_listen, unsigned timeout_ms, char *why, size_t why_len)
{
	struct addrinfo hints = {0}, *res = NULL, *ai;
	char host[256], port[16], resp[256] = "";
	int64_t deadline = now_ms() + timeout_ms;
	int fd = -1, rc, status = 0;

	if (strcmp(metrics_listen, "off") == 0)
		return snprintf(why, why_len, "metrics_listen is off: nothing to probe"), 1;
	if (split_addr(metrics_listen, host, sizeof host, port, sizeof port))
		return snprintf(why, why_len, "cannot parse metrics_listen '%s'", metrics_listen), 1;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV;
	rc = getaddrinfo(host, port, &hints, &res);
	if (rc)
		return snprintf(why, why_len, "%s: %s", host, gai_strerror(rc)), 1;
	for (ai = res; ai && fd < 0; ai = ai->ai_next)
		fd = connect_by(ai, deadline);
	freeaddrinfo(res);
	if (fd < 0)
		return snprintf(why, why_len, "cannot connect to %s port %s", host, port), 1;
	rc = exchange(fd, host, deadline, resp, sizeof resp);
	close(fd);
	if (rc)
		return snprintf(why, why_len, "no answer from %s port %s within %u ms", host, port,
				timeout_ms), 1;
	resp[strcspn(resp, "\r\n")] = 0;
	if (sscanf(resp, "HTTP/%*d.%*d %d", &status) != 1 || status != 200)
		return snprintf(why, why_len, "unhealthy: %s", resp), 1;
	snprintf(why, why_len, "healthy: %s", resp);
	return 0;
}
