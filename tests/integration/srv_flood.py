#!/usr/bin/python3
"""srv_flood: resource holds and guessing from unauthenticated clients, measured.

    srv_flood.py idle  --port P --ca CA --token T [--sockets 2000] [--sources 40] [--bound 2.0]
    srv_flood.py brute --port P --ca CA --token T [--threads 8] [--seconds 6]

idle: opens --sockets plain TCP connections that never start TLS, spread over --sources
loopback addresses 127.0.0.10.. (so that the per-source cap alone cannot absorb them),
holds them, then times a legitimate client (TLS + HELLO with a valid token, from
127.0.0.1) ten times; then, while a thread keeps reopening the held sockets the server
closes (churn, at most --churn-rate a second: 10x the 103/s of the attack run), ten times
more. Prints the figures; every attempt must succeed within
--bound seconds.

brute: --threads threads send HELLOs with wrong tokens from 127.0.0.1 for --seconds;
prints how many failures the server answered with "authentication failed" (a token it
checked) per second, overall and in the last half of the run, and how many it answered as
blocked. Then the valid token: refused from the blocked 127.0.0.1, accepted from 127.0.0.2.

Output: "ok ..."/"FAIL ..." lines, "figure NAME VALUE" lines, then "N passed, N failed".
"""
import argparse
import os
import socket
import ssl
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pdproto  # noqa: E402

PASS = FAIL = 0


def check(cond, msg):
    global PASS, FAIL
    if cond:
        PASS += 1
        print("ok   " + msg)
    else:
        FAIL += 1
        print("FAIL " + msg)


def client(a, token, source="127.0.0.1", timeout=10):
    raw = socket.create_connection(("127.0.0.1", a.port), timeout=timeout, source_address=(source, 0))
    s = pdproto.tls_context(a.ca).wrap_socket(raw, server_hostname="localhost")
    s.settimeout(timeout)
    c = pdproto.Client(s, timeout=timeout)
    try:
        c.do_hello(token)
    except Exception:
        c.close()
        raise
    return c


def timed_hello(a):
    t0 = time.monotonic()
    try:
        client(a, a.token).close()
        return time.monotonic() - t0, None
    except Exception as e:  # noqa: BLE001 - any failure is the figure
        return time.monotonic() - t0, "%s: %s" % (type(e).__name__, e)


def open_idle(a, i):
    src = "127.0.0.%d" % (10 + i % a.sources)
    return socket.create_connection(("127.0.0.1", a.port), timeout=5, source_address=(src, 0))


def measure(a, label):
    times, errors = [], []
    for _ in range(10):
        t, err = timed_hello(a)
        times.append(t)
        if err:
            errors.append(err)
        time.sleep(0.05)
    print("figure %s_connect_hello_ms_median %.1f" % (label, statistics.median(times) * 1000))
    print("figure %s_connect_hello_ms_max %.1f" % (label, max(times) * 1000))
    print("figure %s_failures %d/10" % (label, len(errors)))
    check(not errors and max(times) < a.bound,
          "%s: 10 legitimate connect+HELLO succeed within %.1f s (median %.1f ms, max %.1f ms)%s"
          % (label, a.bound, statistics.median(times) * 1000, max(times) * 1000,
             "; errors: " + errors[0] if errors else ""))


def idle(a):
    held = [open_idle(a, i) for i in range(a.sockets)]
    time.sleep(0.5)
    measure(a, "idle_%d" % a.sockets)
    stop = threading.Event()
    reopened = [0]

    def churn():
        # Keeps --sockets held: every socket the server closed is opened again.
        while not stop.is_set():
            for i, s in enumerate(held):
                if stop.is_set():
                    break
                s.setblocking(False)
                try:
                    dead = s.recv(1) == b""
                except BlockingIOError:
                    dead = False
                except OSError:
                    dead = True
                if dead:
                    s.close()
                    if a.churn_rate:
                        time.sleep(1.0 / a.churn_rate)
                    try:
                        held[i] = open_idle(a, i)
                        reopened[0] += 1
                    except OSError:
                        pass
            time.sleep(0.01)

    t = threading.Thread(target=churn, daemon=True)
    t0 = time.monotonic()
    t.start()
    time.sleep(0.5)
    measure(a, "churn_%d" % a.sockets)
    stop.set()
    t.join()
    rate = reopened[0] / (time.monotonic() - t0)
    print("figure churn_reconnects_per_s %.0f" % rate)
    for s in held:
        s.close()


def brute(a):
    stop = time.monotonic() + a.seconds
    half = time.monotonic() + a.seconds / 2
    lock = threading.Lock()
    counts = {"checked": 0, "checked_late": 0, "blocked": 0, "other": 0}

    def worker(n):
        i = 0
        while time.monotonic() < stop:
            i += 1
            try:
                client(a, "wrong-%d-%d" % (n, i), timeout=15).close()
                kind = "other"
            except pdproto.ProtoError as e:
                kind = "blocked" if "blocked" in e.message else "checked" if e.code_name == "auth" else "other"
            except Exception:  # noqa: BLE001 - closed, reset: not an answer
                kind = "other"
            with lock:
                counts[kind] += 1
                if kind == "checked" and time.monotonic() >= half:
                    counts["checked_late"] += 1

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(a.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - t0
    rate = counts["checked"] / took
    late = counts["checked_late"] / (a.seconds / 2)
    print("figure failed_auths_checked_per_s %.1f" % rate)
    print("figure failed_auths_checked_per_s_second_half %.1f" % late)
    print("figure answers_blocked %d" % counts["blocked"])
    print("figure answers_other %d" % counts["other"])
    check(rate < a.max_rate, "brute: %.1f failed authentications checked per second from one address "
          "with %d threads (bound %.0f)" % (rate, a.threads, a.max_rate))
    check(counts["checked_late"] == 0, "brute: none checked in the second half of the run (the address is blocked)")
    try:
        client(a, a.token).close()
        check(False, "brute: the blocked address authenticated with a valid token")
    except pdproto.ProtoError as e:
        check(e.code_name == "auth" and "blocked" in e.message, "brute: valid token from the blocked address refused: %s" % e.message)
    t, err = 0, None
    try:
        client(a, a.token, source="127.0.0.2").close()
    except Exception as e:  # noqa: BLE001
        err = e
    check(err is None, "brute: another address still authenticates%s" % (": %s" % err if err else ""))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["idle", "brute"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--sockets", type=int, default=2000)
    p.add_argument("--sources", type=int, default=40)
    p.add_argument("--bound", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--seconds", type=float, default=6)
    p.add_argument("--max-rate", type=float, default=10)
    p.add_argument("--churn-rate", type=float, default=1000, help="reconnects/s at most; 0 = flat out")
    a = p.parse_args()
    idle(a) if a.mode == "idle" else brute(a)
    print("%d passed, %d failed" % (PASS, FAIL))
    sys.exit(1 if FAIL else 0)


if __name__ == "__main__":
    main()
