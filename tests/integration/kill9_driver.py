#!/usr/bin/python3
"""kill9_driver: pdeltad SIGKILLed at random moments under traffic, for test_kill9.sh.

Client threads (pdproto, one TLS connection each) drive streams of the small test sequences
(one request in flight per stream, the streams of a client pipelined on its connection). The
main thread kills the server with SIGKILL a random 50-500 ms after it came up, checks
`PRAGMA integrity_check` on the database (read-only, so the WAL is left for the server to
recover), and restarts it on the same database and port, KILL_CYCLES times.

Clients behave as PROTOCOL.md §8 asks: on a lost connection or a retryable error they retry
the unanswered request with the SAME (incarnation, seq, bytes) until it is answered
(DELTA, BASELINE or DUPLICATE). A stream that reaches the end of its sequence starts over
with a new incarnation (BASELINE reset). After each reconnect, every stream also re-sends
its last answered request once (a "probe"): the server must answer DUPLICATE with the same
status, counters and byte-identical body, which shows that what the client received had
been committed.

At the end, for every stream, the responses (one per seq; for a DUPLICATE, the response it
replays) must be exactly what tests/oracle/oracle.py predicts for that sequence of files:
status and reason, RESULT counters, and the output profile semantically equal to the
oracle's. Each response being the delta from the previous answered profile means every
interval is counted once and none is lost.

Prints ok/FAIL lines and "N passed, N failed"; exit status 0 only without failures.
"""

import argparse
import hashlib
import os
import random
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "oracle"))
import oracle  # noqa: E402
import pdproto  # noqa: E402
import pprof_pb  # noqa: E402

RETRY_SLEEP = 0.02
MAX_SHOWN = 10


class Report:
    def __init__(self):
        self.passed = self.failed = 0
        self.lock = threading.Lock()

    def ok(self, what):
        with self.lock:
            self.passed += 1
            print("ok   %s" % what, flush=True)

    def fail(self, what, details=()):
        with self.lock:
            self.failed += 1
            print("FAIL %s" % what, flush=True)
            for d in list(details)[:MAX_SHOWN]:
                print("     %s" % d, flush=True)

    def check(self, cond, what, details=()):
        (self.ok if cond else lambda w: self.fail(w, details))(what)
        return cond


# ---- the server --------------------------------------------------------------------------

class Server:
    """pdeltad as a child process; start() returns once its port accepts connections."""

    def __init__(self, cmd, port, log, pidfile):
        self.cmd, self.port, self.log, self.pidfile = cmd, port, log, pidfile
        self.proc = None

    def start(self, timeout=20.0):
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=self.log)
        with open(self.pidfile, "w") as f:  # for the shell's trap, should this process die
            f.write("%d\n" % self.proc.pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("pdeltad exited with status %d at start" % self.proc.returncode)
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.01)
        raise RuntimeError("pdeltad did not listen within %.0f s" % timeout)

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        """SIGTERM; returns the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill9()
            return "timeout"

    def ensure_dead(self):
        if self.proc and self.proc.poll() is None:
            self.kill9()


def integrity(db):
    """PRAGMA integrity_check, read-only (the WAL stays for the server's recovery)."""
    con = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=5)
    try:
        return [r[0] for r in con.execute("PRAGMA integrity_check")]
    finally:
        con.close()


# ---- streams and clients -------------------------------------------------------------------

class Answer:
    """One final response: the request it answers and what came back."""

    __slots__ = ("seq", "inc", "pos", "lap", "status", "reason", "orig", "samples_in", "samples_out",
                 "body", "retried")

    def __init__(self, req, head, body, retried):
        self.seq, self.inc, self.pos, self.lap = req
        self.status, self.reason, self.orig = head.status, head.reason, head.orig_status
        self.samples_in, self.samples_out = head.samples_in, head.samples_out
        self.body = body
        self.retried = retried


class Stream:
    def __init__(self, name, seqname, files, inc):
        self.name, self.seqname, self.files = name, seqname, files
        self.seq, self.inc, self.pos, self.lap = 1, inc, 0, 0
        self.pending = None   # (seq, inc, pos, lap) of the request not answered yet
        self.sent = False     # pending may have reached the server (so it may be applied)
        self.crashed = False  # pending's connection was lost at least once
        self.probe = None     # Answer to re-send once after a reconnect
        self.answers = []
        self.problems = []    # protocol-level findings (probe mismatch, fatal errors)

    def advance(self):
        self.pending, self.sent, self.crashed = None, False, False
        self.seq += 1
        self.pos += 1
        if self.pos == len(self.files):
            self.pos, self.lap, self.inc = 0, self.lap + 1, self.inc + 1


class Client(threading.Thread):
    def __init__(self, idx, args, streams, stats):
        super().__init__(name="client%d" % idx, daemon=True)
        self.args, self.streams, self.stats = args, streams, stats
        self.stop = threading.Event()
        self.conn = None
        self.error = None

    # -- connection
    def connect(self):
        while self.conn is None:
            try:
                self.conn = pdproto.Client.connect("127.0.0.1", self.args.port, self.args.ca,
                                                   token=self.args.token, timeout=15)
            except (OSError, ssl.SSLError, pdproto.Closed, pdproto.ProtoError, ValueError):
                self.conn = None
                time.sleep(RETRY_SLEEP)
        self.stats["connects"] += 1
        for s in self.streams:  # prove that what was answered before is durable
            if s.answers:
                s.probe = s.answers[-1]

    def drop(self):
        self.conn.close()
        self.conn = None
        for s in self.streams:
            if s.pending is not None and s.sent:
                s.crashed = True

    # -- one round: one request per stream in flight, read until all are answered
    def pick(self, s):
        """What s sends now: an unanswered request that may have been applied goes first (the
        probe would be stale behind it), then the probe, then the next request."""
        if s.pending is not None and s.sent:
            return s.pending, "req"
        if s.probe is not None:
            a = s.probe
            return (a.seq, a.inc, a.pos, a.lap), "probe"
        if s.pending is None:
            if self.stop.is_set():
                return None, None
            s.pending = (s.seq, s.inc, s.pos, s.lap)
        return s.pending, "req"

    def round(self):
        open_ = {}
        for s in self.streams:
            req, kind = self.pick(s)
            if req is None:
                continue
            if kind == "req":
                self.stats["retries"] += s.sent
                s.sent = True  # before sending: a partial send may still be retried
            rid = self.conn.new_id()
            open_[rid] = (s, kind, req)
            self.conn.send_delta(s.name, req[0], req[1], s.files[req[2]], rid)
        if not open_:
            return False
        self.collect(open_)
        return True

    def collect(self, open_):
        heads, bodies = {}, {}
        while open_:
            t, _, rid, payload = self.conn.next_frame()
            if rid not in open_:
                raise ValueError("%s for request %d, which is not open" % (pdproto.TYPE_NAMES.get(t, t), rid))
            s, kind, req = open_[rid]
            if t == pdproto.ERROR:
                del open_[rid]
                self.on_error(s, kind, req, pdproto.parse_error(payload, rid))
            elif t == pdproto.RESULT and rid not in heads:
                heads[rid], bodies[rid] = pdproto.Result(payload), []
            elif t == pdproto.RESULT_DATA and rid in heads:
                bodies[rid].append(payload)
            elif t == pdproto.RESULT_END and rid in heads:
                del open_[rid]
                body = pdproto.check_end(payload, b"".join(bodies[rid]))
                self.on_answer(s, kind, req, heads[rid], body)
            else:
                raise ValueError("unexpected %s for request %d" % (pdproto.TYPE_NAMES.get(t, t), rid))

    def on_error(self, s, kind, req, e):
        if e.retryable:
            self.stats["retryable_errors"] += 1
            time.sleep(RETRY_SLEEP)
            return  # the same request again next round
        s.problems.append("%s seq %d: ERROR %s" % (kind, req[0], e))
        if kind == "probe":
            s.probe = None
        else:  # this stream cannot go on
            self.streams = [x for x in self.streams if x is not s]

    def on_answer(self, s, kind, req, head, body):
        if head.seq != req[0]:
            s.problems.append("%s seq %d: RESULT.seq %d" % (kind, req[0], head.seq))
        if kind == "probe":
            self.check_probe(s, head, body)
            s.probe = None
            return
        a = Answer(req, head, body, s.crashed)
        self.stats["dup_after_crash"] += a.status == "DUPLICATE"
        s.answers.append(a)
        if s.probe is not None:  # probe the newest answer
            s.probe = a
        s.advance()

    def check_probe(self, s, head, body):
        a = s.probe
        want_orig = a.orig if a.status == "DUPLICATE" else a.status
        self.stats["probes"] += 1
        if head.status != "DUPLICATE" or head.orig_status != want_orig or head.reason != a.reason:
            s.problems.append("probe seq %d: got %s/%s/%s, the answer before was %s/%s/%s" % (
                a.seq, head.status, head.orig_status, head.reason, a.status, a.orig, a.reason))
        elif body != a.body or (head.samples_in, head.samples_out) != (a.samples_in, a.samples_out):
            s.problems.append("probe seq %d: DUPLICATE differs from the answer received before "
                              "(%d vs %d bytes)" % (a.seq, len(body), len(a.body)))

    def run(self):
        try:
            while True:
                if self.conn is None:
                    self.connect()
                try:
                    if not self.round() and self.stop.is_set():
                        break
                except (OSError, ssl.SSLError, pdproto.Closed, pdproto.ProtoError) as e:
                    if isinstance(e, pdproto.ProtoError) and not e.retryable:
                        raise
                    self.stats["conn_lost"] += 1
                    self.drop()
            if self.conn:
                self.conn.goodbye()
                self.conn.close()
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            self.error = "%s: %s" % (type(e).__name__, e)


# ---- the oracle's verdict -------------------------------------------------------------------

class Judge:
    """Expected (statuses, sem, nsamples) per (sequence, first lap or not, position), and a cache
    of verdicts by body hash (later laps repeat the same deltas)."""

    def __init__(self, seqs):
        self.exp = {}
        for name, paths in seqs.items():
            orc = oracle.Oracle("keep")
            res = [oracle.resolve(pprof_pb.load(p)) for p in paths]
            for lap in (0, 1):
                for pos, r in enumerate(res):
                    e = orc.step(r)
                    self.exp[(name, lap, pos)] = (e, r)
        self.cache = {}

    def verdict(self, seqname, a):
        """[] when the answer is what the oracle expects, else the differences."""
        e, r = self.exp[(seqname, min(a.lap, 1), a.pos)]
        status = a.orig if a.status == "DUPLICATE" else a.status
        probs = []
        if (status, a.reason) not in e.statuses:
            probs.append("status %s %s, want %s (%s)" % (status, a.reason, e.statuses, e.note))
        if a.samples_in != r.nsamples:
            probs.append("samples_in %d, want %d" % (a.samples_in, r.nsamples))
        key = (seqname, min(a.lap, 1), a.pos, hashlib.sha256(a.body).digest())
        if key not in self.cache:
            self.cache[key] = self.body_problems(a, e, r, status)
        return probs + self.cache[key]

    @staticmethod
    def body_problems(a, e, r, status):
        try:
            out = pprof_pb.loads(a.body)
        except Exception as ex:  # noqa: BLE001 - any decode failure is a finding
            return ["body does not parse: %s" % ex]
        if a.samples_out != len(out.sample):
            return ["samples_out %d, body has %d" % (a.samples_out, len(out.sample))]
        names = ()
        if status == "DELTA":
            names = {t for t, _ in r.types if oracle.policy_of(t, {}) == "delta"}
        sem, problems = oracle.check_output(out, names, minimal=True)
        hard = [p for p in problems if not p.startswith("not minimal")]
        if sem is None or hard:
            return hard or ["output does not resolve"]
        return oracle.diff_sem(e.sem, sem)


def verify(rep, judge, streams):
    total = bad = 0
    for s in streams:
        seqs = [a.seq for a in s.answers]
        rep.check(seqs == list(range(1, len(seqs) + 1)), "%s: one answer per seq, 1..%d" % (s.name, len(seqs)),
                  ["seqs %s" % seqs[:40]])
        wrong = []
        for a in s.answers:
            total += 1
            probs = judge.verdict(s.seqname, a)
            if probs:
                bad += 1
                wrong.append("seq %d (lap %d, file %d, %s%s): %s" % (
                    a.seq, a.lap, a.pos, a.status, ", after a crash" if a.retried else "", "; ".join(probs[:3])))
        rep.check(not wrong, "%s: %d answers equal the oracle's (%d laps)" % (s.name, len(s.answers), s.lap),
                  wrong)
        rep.check(not s.problems, "%s: probes and errors" % s.name, s.problems)
    return total, bad


# ---- main -------------------------------------------------------------------------------------

def load_seqs(testdata, names):
    """{name: [file paths]} and {name: [file bytes]} of the comma-separated fixture sequences."""
    seqs = {}
    for name in names.split(","):
        d = os.path.join(testdata, "profiles", name)
        seqs[name] = sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".pb.gz"))
    return seqs, {n: [open(p, "rb").read() for p in ps] for n, ps in seqs.items()}


def driver_args(doc):
    """The parser every driver here starts from (described by the first line of doc): the server
    binary, how clients reach it and what they upload; each driver adds its own options."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--pdeltad", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--token-file", required=True)
    ap.add_argument("--testdata", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--pidfile", required=True)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seqs", default="heap-small,block-small,mutex-small")
    ap.add_argument("--seed", type=int)
    return ap


def parse_driver_args(ap, argv):
    """args (with the token read from --token-file), the seed and a random source seeded with it."""
    args = ap.parse_args(argv)
    with open(args.token_file) as f:
        args.token = f.read().strip()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    return args, seed, random.Random(seed)


def main(argv=None):
    ap = driver_args(__doc__)
    ap.add_argument("--config", required=True)
    ap.add_argument("--db", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--min-ms", type=int, default=50)
    ap.add_argument("--max-ms", type=int, default=500)
    args, seed, rnd = parse_driver_args(ap, argv)
    rep = Report()
    print("kill9: %d clients x %s, %d kill cycles, %d-%d ms, seed %d" % (
        args.clients, args.seqs, args.cycles, args.min_ms, args.max_ms, seed), flush=True)

    seqs, data = load_seqs(args.testdata, args.seqs)
    t_judge = time.monotonic()
    judge = Judge(seqs)
    t_judge = time.monotonic() - t_judge

    stats = {"connects": 0, "conn_lost": 0, "retries": 0, "retryable_errors": 0, "probes": 0,
             "dup_after_crash": 0}
    run = "%x" % rnd.randrange(1 << 32)
    clients, streams = [], []
    for i in range(args.clients):
        mine = [Stream("k9/%s/c%d/%s" % (run, i, n), n, data[n], rnd.randrange(1, 1 << 62)) for n in seqs]
        streams += mine
        clients.append(Client(i, args, mine, stats))

    log = open(args.log, "ab")
    srv = Server([args.pdeltad, "--config", args.config], args.port, log, args.pidfile)
    t0 = time.monotonic()
    survived, integrity_bad = 0, []
    try:
        srv.start()
        for c in clients:
            c.start()
        for cycle in range(args.cycles):
            time.sleep(rnd.uniform(args.min_ms, args.max_ms) / 1000.0)
            srv.kill9()
            got = integrity(args.db)
            if got != ["ok"]:
                integrity_bad.append("after kill %d: %s" % (cycle + 1, got[:5]))
            srv.start()
            survived += 1
            if args.cycles >= 50 and (cycle + 1) % 50 == 0:
                print("kill9: %d kills, %.0f s" % (cycle + 1, time.monotonic() - t0), flush=True)
        for c in clients:
            c.stop.set()
        for c in clients:
            c.join(timeout=120)
        rc = srv.stop()
        rep.check(rc == 0, "server exits 0 on SIGTERM after the last restart", ["status %s" % rc])
        got = integrity(args.db)
        if got != ["ok"]:
            integrity_bad.append("at the end: %s" % got[:5])
    except Exception as e:  # noqa: BLE001 - report, do not crash the harness
        rep.fail("kill loop: %s: %s" % (type(e).__name__, e))
    finally:
        for c in clients:
            c.stop.set()
        srv.ensure_dead()
        log.close()
    elapsed = time.monotonic() - t0

    rep.check(survived == args.cycles, "server restarted after %d of %d kills (%.1f s)" % (
        survived, args.cycles, elapsed))
    rep.check(not integrity_bad, "PRAGMA integrity_check ok after every kill (%d checks)" % (survived + 1),
              integrity_bad)
    for c in clients:
        rep.check(c.error is None and not c.is_alive(), "%s finished" % c.name, [c.error or "still running"])
    t_verify = time.monotonic()
    total, bad = verify(rep, judge, streams)
    retried = sum(1 for s in streams for a in s.answers if a.retried)
    print("kill9: %d kills survived in %.1f s; %d answers (%d bad), %d retried after a crash "
          "(%d of them answered DUPLICATE: committed before the kill), %d durability probes, "
          "%d connections, %d retryable errors; oracle %.1f s + %.1f s" % (
              survived, elapsed, total, bad, retried, stats["dup_after_crash"], stats["probes"],
              stats["connects"], stats["retryable_errors"], t_judge, time.monotonic() - t_verify),
          flush=True)
    rep.check(stats["probes"] > 0 and total > 0, "the run exercised crashes under traffic")
    print("%d passed, %d failed" % (rep.passed, rep.failed))
    return 0 if rep.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
