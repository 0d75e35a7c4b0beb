#!/usr/bin/python3
"""pg_nodes_driver: several pdeltad nodes on one PostgreSQL database, for test_pg.sh.

Reuses kill9_driver's clients, streams and oracle judge (read its header): clients retry an
unanswered request with the same (incarnation, seq, bytes) until it is answered, and at the
end every stream's answers, one per seq, must be what tests/oracle/oracle.py predicts (no
interval lost, none counted twice). Modes:

  alternate  every client moves to the next node after each round, so consecutive requests
             of a stream go to different nodes (each node's cache is stale for it every
             other request); requests carry AFTER (the seq last answered), so a stale cache
             would look like a restored backup if it were trusted; the nodes'
             pdeltad_store_conflicts_total must show that the compare-and-set caught them
  race       the same request of one stream sent to two nodes at once, a whole sequence
             long: one applies it, the other answers DUPLICATE with the same body (after
             dropping its stale cache and reloading the row), never an error
  kill9      alternate, and a random node is SIGKILLed and restarted, KILL_CYCLES times;
             clients fail over to the other node
  pgrestart  alternate, and PostgreSQL is restarted (--restart-cmd) under load: while it
             is down /healthz says 503 "store unreachable", clients get retryable errors,
             then everything recovers

Prints ok/FAIL lines and "N passed, N failed"; exit status 0 only without failures.
"""

import os
import re
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import kill9_driver as k9  # noqa: E402
import pdproto  # noqa: E402

CONN_ERRORS = (OSError, ssl.SSLError, pdproto.Closed, pdproto.ProtoError, ValueError)


class NodeClient(k9.Client):
    """A kill9_driver client over several nodes: connects to the node of its turn (the next
    one when that one does not answer) and, with alternate, moves on after every round.
    Durability probes are sent only after a lost connection, not after a planned move."""

    def __init__(self, idx, args, streams, stats, ports, alternate):
        super().__init__(idx, args, streams, stats)
        self.ports, self.turn, self.alternate = ports, idx, alternate
        self.lost = False

    def connect(self):
        while self.conn is None:
            port = self.ports[self.turn % len(self.ports)]
            try:
                self.conn = pdproto.Client.connect("127.0.0.1", port, self.args.ca, token=self.args.token,
                                                   timeout=15, versions=(3, 3))
            except CONN_ERRORS:
                self.conn = None
                self.turn += 1
                time.sleep(k9.RETRY_SLEEP)
        self.stats["connects"] += 1
        self.declare_after(self.conn)
        if self.lost:
            for s in self.streams:
                if s.answers:
                    s.probe = s.answers[-1]
        self.lost = False

    def declare_after(self, conn):
        """Every request says which seq of its stream was answered last (protocol 3, AFTER), as
        libpdelta does: a node whose cache is older must not take that for a restored backup
        (BASELINE state-lost) but reload the row."""
        send, streams = conn.send_delta, {s.name: s for s in self.streams}

        def send_delta(stream, seq, inc, data, rid, **kw):
            s = streams[stream]
            last = s.answers[-1].seq if s.answers else None
            return send(stream, seq, inc, data, rid, after=last if last is not None and last < seq else None, **kw)
        conn.send_delta = send_delta

    def drop(self):
        super().drop()
        self.lost = True
        self.turn += 1

    def round(self):
        more = super().round()
        if self.alternate and self.conn is not None:
            self.conn.close()
            self.conn = None
            self.turn += 1
        return more


def metric(port, name):
    """Sum of a metric's samples on one node's /metrics (0 when absent)."""
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5).read().decode()
    return sum(float(m.group(1)) for m in re.finditer(r"^%s(?:\{[^}]*\})? (\S+)$" % re.escape(name), text, re.M))


def healthz(port):
    """(status, body) of a node's /healthz."""
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/healthz" % port, timeout=3) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return 0, str(e)


def wait_health(port, want, timeout):
    deadline = time.monotonic() + timeout
    got = (0, "")
    while time.monotonic() < deadline:
        got = healthz(port)
        if got[0] == want:
            return got
        time.sleep(0.1)
    return got


def start_nodes(args, log):
    nodes = []
    for i, (port, cfg) in enumerate(zip(args.ports, args.configs)):
        srv = k9.Server([args.pdeltad, "--config", cfg], port, log, "%s.%d" % (args.pidfile, i))
        srv.start()
        nodes.append(srv)
    return nodes


def run_clients(args, rep, rnd, judge_seqs, data, alternate, during):
    """Starts the clients, runs during(nodes) under their load, stops them, judges."""
    judge = k9.Judge(judge_seqs)
    stats = {"connects": 0, "conn_lost": 0, "retries": 0, "retryable_errors": 0, "probes": 0,
             "dup_after_crash": 0}
    run = "%x" % rnd.randrange(1 << 32)
    clients, streams = [], []
    for i in range(args.clients):
        mine = [k9.Stream("pg/%s/%s/c%d/%s" % (args.mode, run, i, n), n, data[n], rnd.randrange(1, 1 << 62))
                for n in judge_seqs]
        streams += mine
        clients.append(NodeClient(i, args, mine, stats, args.ports, alternate))
    log = open(args.log, "ab")
    nodes = []
    t0 = time.monotonic()
    try:
        nodes = start_nodes(args, log)
        for c in clients:
            c.start()
        during(nodes, stats)
        for c in clients:
            c.stop.set()
        for c in clients:
            c.join(timeout=120)
    except Exception as e:  # noqa: BLE001 - report, do not crash the harness
        rep.fail("%s: %s: %s" % (args.mode, type(e).__name__, e))
    finally:
        for c in clients:
            c.stop.set()
    for c in clients:
        rep.check(c.error is None and not c.is_alive(), "%s finished" % c.name, [c.error or "still running"])
    total, bad = k9.verify(rep, judge, streams)
    conflicts = []
    for n, port in zip(nodes, args.metrics_ports):
        try:
            conflicts.append(metric(port, "pdeltad_store_conflicts_total"))
        except OSError:
            conflicts.append(None)
    for n in nodes:
        rc = n.stop() if n.proc.poll() is None else "dead"
        rep.check(rc == 0, "node exits 0 on SIGTERM", ["status %s" % rc])
        n.ensure_dead()
    log.close()
    print("%s: %d answers (%d bad) in %.1f s, %d connections, %d lost, %d retryable errors, %d probes, "
          "conflicts per node %s" % (args.mode, total, bad, time.monotonic() - t0, stats["connects"],
                                     stats["conn_lost"], stats["retryable_errors"], stats["probes"], conflicts),
          flush=True)
    rep.check(total > 0, "%s: the run answered requests" % args.mode)
    return stats, conflicts


def mode_alternate(args, rep, rnd, seqs, data):
    def during(nodes, stats):
        time.sleep(args.seconds)
    _, conflicts = run_clients(args, rep, rnd, seqs, data, True, during)
    rep.check(all(c is not None for c in conflicts) and sum(conflicts) > 0,
              "stale node caches were caught by the compare-and-set and counted in "
              "pdeltad_store_conflicts_total (%s)" % conflicts)


def mode_kill9(args, rep, rnd, seqs, data):
    kills = []

    def during(nodes, stats):
        for _ in range(args.cycles):
            time.sleep(rnd.uniform(args.min_ms, args.max_ms) / 1000.0)
            i = rnd.randrange(len(nodes))
            nodes[i].kill9()
            kills.append(i)
            time.sleep(rnd.uniform(0, args.max_ms) / 1000.0)  # the others serve alone meanwhile
            nodes[i].start()
        time.sleep(0.5)
    stats, _ = run_clients(args, rep, rnd, seqs, data, True, during)
    rep.check(len(kills) == args.cycles and stats["conn_lost"] > 0,
              "kill9: %d nodes killed and restarted under load (%d connections lost)" % (len(kills), stats["conn_lost"]))


def mode_pgrestart(args, rep, rnd, seqs, data):
    seen = {}

    def during(nodes, stats):
        for cycle in range(args.cycles):
            time.sleep(rnd.uniform(args.min_ms, args.max_ms) / 1000.0)
            before = stats["retryable_errors"]
            subprocess.run(args.stop_cmd, shell=True, check=True)
            down = wait_health(args.metrics_ports[0], 503, 10)
            hc = subprocess.run([args.pdeltad, "--config", args.configs[0], "--healthcheck"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=20)
            time.sleep(0.5)  # clients keep sending into the outage
            subprocess.run(args.start_cmd, shell=True, check=True)
            up = wait_health(args.metrics_ports[0], 200, 20)
            deadline = time.monotonic() + 20
            while stats["retryable_errors"] == before and time.monotonic() < deadline:
                time.sleep(0.05)
            seen[cycle] = (down, hc.returncode, up, stats["retryable_errors"] - before)
        time.sleep(1.0)
    stats, _ = run_clients(args, rep, rnd, seqs, data, True, during)
    for cycle, (down, hc, up, errs) in sorted(seen.items()):
        rep.check(down[0] == 503 and "store unreachable" in down[1],
                  "restart %d: /healthz 503 'store unreachable' while PostgreSQL is down" % (cycle + 1),
                  ["got %s %r" % (down[0], down[1][:200])])
        rep.check(hc != 0, "restart %d: pdeltad --healthcheck fails while PostgreSQL is down" % (cycle + 1))
        rep.check(up[0] == 200, "restart %d: /healthz 200 again after PostgreSQL is back" % (cycle + 1),
                  ["got %s %r" % (up[0], up[1][:200])])
        rep.check(errs > 0, "restart %d: clients got retryable errors (%d)" % (cycle + 1, errs))
    rep.check(len(seen) == args.cycles, "pgrestart: %d restarts under load" % len(seen))


def mode_race(args, rep, rnd, seqs, data):
    """Both nodes get each request of a stream at the same moment."""
    log = open(args.log, "ab")
    nodes = start_nodes(args, log)
    results = []
    try:
        conns = [pdproto.Client.connect("127.0.0.1", p, args.ca, token=args.token, timeout=30) for p in args.ports]
        for name in seqs:
            inc = rnd.randrange(1, 1 << 62)
            stream = "pg/race/%x/%s" % (rnd.randrange(1 << 32), name)
            for pos, body in enumerate(data[name]):
                rids = [c.new_id() for c in conns]
                for c, rid in zip(conns, rids):  # both sent before either is read
                    c.send_delta(stream, pos + 1, inc, body, rid)
                got = [c.read_responses({rid})[rid] for c, rid in zip(conns, rids)]
                results.append((name, pos, got))
        for c in conns:
            c.goodbye()
            c.close()
        conflicts = [metric(p, "pdeltad_store_conflicts_total") for p in args.metrics_ports]
    finally:
        for n in nodes:
            n.ensure_dead()
        log.close()
    bad = []
    for name, pos, got in results:
        errs = [g for g in got if isinstance(g, pdproto.ProtoError)]
        if errs:
            bad.append("%s #%d: error %s" % (name, pos + 1, errs[0]))
            continue
        st = sorted(h.status for h, _ in got)
        applied = [h for h, _ in got if h.status != "DUPLICATE"]
        if len(applied) != 1 or got[0][1] != got[1][1]:
            bad.append("%s #%d: statuses %s, bodies %s" % (name, pos + 1, st,
                                                          "equal" if got[0][1] == got[1][1] else "differ"))
    rep.check(not bad, "race: %d requests sent to both nodes at once; each applied once, the other "
              "node answered DUPLICATE with the same body" % len(results), bad)
    print("race: conflicts per node %s" % conflicts, flush=True)
    rep.check(sum(conflicts) > 0, "race: some losers computed from a stale cache, hit the "
              "compare-and-set, reloaded and answered correctly (%s conflicts)" % conflicts)


def main(argv=None):
    ap = k9.driver_args(__doc__)
    ap.add_argument("--mode", choices=("alternate", "race", "kill9", "pgrestart"), required=True)
    ap.add_argument("--config", dest="configs", action="append", required=True, help="one per node")
    ap.add_argument("--port", dest="ports", type=int, action="append", required=True)
    ap.add_argument("--metrics-port", dest="metrics_ports", type=int, action="append", required=True)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--cycles", type=int, default=6)
    ap.add_argument("--min-ms", type=int, default=200)
    ap.add_argument("--max-ms", type=int, default=600)
    ap.add_argument("--stop-cmd")
    ap.add_argument("--start-cmd")
    args, seed, rnd = k9.parse_driver_args(ap, argv)
    rep = k9.Report()
    print("%s: %d nodes, %d clients x %s, seed %d" % (args.mode, len(args.ports), args.clients, args.seqs, seed),
          flush=True)
    seqs, data = k9.load_seqs(args.testdata, args.seqs)
    {"alternate": mode_alternate, "race": mode_race, "kill9": mode_kill9,
     "pgrestart": mode_pgrestart}[args.mode](args, rep, rnd, seqs, data)
    print("%d passed, %d failed" % (rep.passed, rep.failed))
    return 0 if rep.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
