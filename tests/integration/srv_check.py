#!/usr/bin/python3
"""srv_check: correctness checks of a running pdeltad, for test_server_basic.sh.

Every check talks to the server with pdproto (the independent client) and judges delta outputs
with the oracle (tests/oracle/oracle.py). Each prints "ok ..." / "FAIL ..." lines and a final
"N passed, N failed" line; the exit status is 0 only without failures.

  srv_check.py CONN seq --stream S [--from K] [--to K] FILE...
      runs the oracle over every FILE, sends FILE[K..K') (seq = index + 1) and compares each
      response (status, counters, body) with the oracle's expectation
  srv_check.py CONN dup --stream S FILE0 FILE1
      retry of the last request -> DUPLICATE with byte-identical output; stale and
      conflicting sequence numbers are refused
  srv_check.py CONN drain --pid PID --metrics URL FILE
      SIGTERM while an upload is open: GOODBYE SHUTDOWN, /healthz 503, new requests refused,
      the open request still answered, then the server closes
  srv_check.py metrics URL EXPR...
      EXPR is `name{labels} OP number` (OP one of >= <= == >), checked against /metrics
  srv_check.py healthz URL CODE

CONN is --port P --ca CA [--token T | --cert C --key K].
"""

import argparse
import os
import re
import signal
import struct
import sys
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "oracle"))
import oracle  # noqa: E402
import pdproto  # noqa: E402
import pprof_pb  # noqa: E402

INCARNATION = 0x5EED


class Report:
    def __init__(self):
        self.passed = self.failed = 0

    def ok(self, what):
        self.passed += 1
        print("ok   %s" % what)

    def fail(self, what, details=()):
        self.failed += 1
        print("FAIL %s" % what)
        for d in details:
            print("     %s" % d)

    def check(self, cond, what, details=()):
        if cond:
            self.ok(what)
        else:
            self.fail(what, details)
        return cond

    def done(self):
        print("%d passed, %d failed" % (self.passed, self.failed))
        return 0 if self.failed == 0 else 1


def connect(args, **kw):
    return pdproto.Client.connect("127.0.0.1", args.port, args.ca, token=args.token or "",
                                  cert=args.cert, key=args.key, **kw)


def judge(rep, name, resp, exp, res_in):
    """Status, counters and semantic equality of one delta response."""
    got = (resp.status, resp.reason)
    rep.check(got in exp.statuses, "%s: status %s %s" % (name, got[0], got[1]),
              ["expected %s (%s)" % (" or ".join("%s %s" % s for s in exp.statuses), exp.note)])
    if resp.body[:2] != b"\x1f\x8b":
        rep.fail("%s: body is not gzip" % name)
        return
    try:
        out = pprof_pb.loads(resp.body)
    except Exception as e:  # noqa: BLE001 - any decode failure is a finding
        rep.fail("%s: body does not parse: %s" % (name, e))
        return
    delta_names = ()
    if got == ("DELTA", "-"):
        delta_names = {t for t, _ in res_in.types if oracle.policy_of(t, {}) == "delta"}
    sem, problems = oracle.check_output(out, delta_names, minimal=True)
    hard = [p for p in problems if not p.startswith("not minimal")]
    rep.check(not hard and sem is not None, "%s: output structure" % name, hard)
    if sem is None:
        return
    diffs = oracle.diff_sem(exp.sem, sem)
    rep.check(not diffs, "%s: output equals the oracle's" % name, diffs)
    rep.check(resp.samples_in == res_in.nsamples and resp.samples_out == len(out.sample),
              "%s: RESULT counters" % name,
              ["samples_in %d (want %d), samples_out %d (want %d)" % (
                  resp.samples_in, res_in.nsamples, resp.samples_out, len(out.sample))])


def cmd_seq(args, rep):
    files = args.files
    hi = len(files) if args.to is None else args.to
    orc = oracle.Oracle("keep")
    c = connect(args)
    try:
        for i, path in enumerate(files):
            res_in = oracle.resolve(pprof_pb.load(path))
            exp = orc.step(res_in)
            if i < args.frm or i >= hi:
                continue
            with open(path, "rb") as f:
                data = f.read()
            name = "%s/%s" % (args.stream, os.path.basename(path))
            try:
                resp = c.delta(args.stream, i + 1, INCARNATION, data)
            except pdproto.ProtoError as e:
                rep.fail("%s: ERROR %s" % (name, e))
                continue
            rep.check(resp.seq == i + 1, "%s: RESULT.seq" % name)
            judge(rep, name, resp, exp, res_in)
        c.goodbye()
    finally:
        c.close()


def expect_error(rep, what, fn, code, detail):
    try:
        fn()
    except pdproto.ProtoError as e:
        rep.check(e.code_name == code and e.detail_name == detail, what,
                  ["got %s/%s, want %s/%s" % (e.code_name, e.detail_name, code, detail)])
        return e
    rep.fail("%s: no error" % what)
    return None


def cmd_dup(args, rep):
    data0, data1 = (open(f, "rb").read() for f in args.files[:2])
    s = args.stream
    c = connect(args)
    r0 = c.delta(s, 1, INCARNATION, data0)
    r1 = c.delta(s, 2, INCARNATION, data1)
    rep.check((r0.status, r1.status) == ("BASELINE", "DELTA"), "dup: first two are BASELINE, DELTA")
    again = c.delta(s, 2, INCARNATION, data1)
    rep.check(again.status == "DUPLICATE" and again.orig_status == "DELTA" and again.reason == "-",
              "dup: retry is DUPLICATE of a DELTA", ["got %s/%s/%s" % (again.status, again.orig_status, again.reason)])
    rep.check(again.body == r1.body, "dup: retry output is byte-identical")
    rep.check((again.samples_in, again.samples_out) == (r1.samples_in, r1.samples_out), "dup: same counters")
    c.close()
    c = connect(args)  # a retry usually comes on a new connection
    third = c.delta(s, 2, INCARNATION, data1, no_data=True)
    rep.check(third.status == "DUPLICATE" and third.body == b"", "dup: retry with NO_DATA, new connection")
    e = expect_error(rep, "dup: older seq refused", lambda: c.delta(s, 1, INCARNATION, data0), "sequence", "SEQ_STALE")
    rep.check(e is not None and e.value == 2 and not e.retryable, "dup: SEQ_STALE carries the last seq, not retryable")
    expect_error(rep, "dup: same seq, other bytes refused", lambda: c.delta(s, 2, INCARNATION, data0),
                 "sequence", "SEQ_CONFLICT")
    expect_error(rep, "dup: hash mismatch refused", lambda: c.delta(s, 3, INCARNATION, data1, hash16=b"\0" * 16),
                 "malformed", "HASH_MISMATCH")
    expect_error(rep, "dup: length mismatch refused", lambda: c.delta(s, 3, INCARNATION, data1, total=5),
                 "malformed", "LENGTH_MISMATCH")
    r3 = c.delta(s, 3, INCARNATION + 1, data0)
    rep.check(r3.status == "BASELINE" and r3.reason == "reset", "dup: new incarnation is BASELINE reset")
    rep.check(c.ping(77) == 77, "dup: connection still usable (PING/PONG)")
    # Protocol 2: DATA_END carries the CRC-128; a retry is recognised whichever
    # version the applied request and its retry came over.
    c2 = connect(args, versions=(1, 2))
    rep.check(c2.hello.version == 2, "dup: HELLO 1..2 chooses protocol 2", ["got %d" % c2.hello.version])
    s2 = s + "-v2"
    a0 = c2.delta(s2, 1, INCARNATION, data0)
    rep.check(a0.status == "BASELINE", "dup: protocol 2 request applied (CRC-128 hash)")
    b0 = c.delta(s2, 1, INCARNATION, data0)
    rep.check(b0.status == "DUPLICATE" and b0.body == a0.body, "dup: its retry over protocol 1 is a DUPLICATE")
    expect_error(rep, "dup: protocol 2 refuses a SHA-256 hash", lambda: c2.delta(
        s2, 2, INCARNATION, data1, hash16=pdproto.content_hash(data1, 1)), "malformed", "HASH_MISMATCH")
    a1 = c.delta(s2, 2, INCARNATION, data1)
    b1 = c2.delta(s2, 2, INCARNATION, data1)
    rep.check(a1.status == "DELTA" and b1.status == "DUPLICATE" and b1.body == a1.body,
              "dup: a protocol 1 request's retry over protocol 2 is a DUPLICATE")
    expect_error(rep, "dup: protocol 2, same seq, other bytes refused", lambda: c2.delta(s2, 2, INCARNATION, data0),
                 "sequence", "SEQ_CONFLICT")
    c2.goodbye()
    c2.close()
    c.goodbye()
    c.close()


def http_get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def cmd_drain(args, rep):
    data = open(args.files[0], "rb").read()
    c = connect(args)
    idle = connect(args)
    rid = c.new_id()
    begin = pdproto.begin_payload("drain/heap", 1, INCARNATION)
    c.send_raw(pdproto.frame(pdproto.DELTA_BEGIN, begin, rid) + pdproto.frame(pdproto.DATA, data[:1000], rid))
    time.sleep(0.2)
    os.kill(args.pid, signal.SIGTERM)
    time.sleep(0.3)
    code, body = http_get(args.metrics.replace("/metrics", "/healthz"))
    rep.check(code == 503 and "draining" in body, "drain: /healthz says 503 draining", ["got %d %r" % (code, body)])
    # The idle connection gets GOODBYE SHUTDOWN and is closed (nothing open on it).
    try:
        while True:
            idle.next_frame()
    except pdproto.Closed:
        pass
    rep.check(idle.goodbye_got and idle.goodbye_got[0] == "SHUTDOWN", "drain: idle connection got GOODBYE SHUTDOWN",
              ["got %r" % (idle.goodbye_got,)])
    # A new request crossing the GOODBYE is refused, retryable.
    rid2 = c.new_id()
    c.send_raw(pdproto.frame(pdproto.ADMIN, pdproto.admin_payload("stats", {}), rid2))
    t, _, got, payload = c.next_frame()
    err = pdproto.parse_error(payload, got) if t == pdproto.ERROR else None
    rep.check(err is not None and got == rid2 and err.code_name == "busy" and err.detail_name == "SHUTTING_DOWN"
              and err.retryable, "drain: new request refused busy/SHUTTING_DOWN (retryable)", ["got %r" % (err,)])
    rep.check(c.goodbye_got and c.goodbye_got[0] == "SHUTDOWN", "drain: busy connection got GOODBYE SHUTDOWN")
    # The open upload still completes.
    c.send_raw(pdproto.frame(pdproto.DATA, data[1000:], rid) +
               pdproto.frame(pdproto.DATA_END, struct.pack(">Q", len(data)) + pdproto.content_hash(data), rid))
    try:
        head, body = c.read_response(rid)
        rep.check(head.status == "BASELINE" and body[:2] == b"\x1f\x8b", "drain: open request answered")
    except Exception as e:  # noqa: BLE001
        rep.fail("drain: open request not answered: %s" % e)
    try:
        c.next_frame()
        rep.fail("drain: connection not closed after its last response")
    except pdproto.Closed:
        rep.ok("drain: connection closed once drained")
    c.close()
    idle.close()


METRIC_EXPR = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?)\s*(>=|<=|==|>|<)\s*([0-9.e+-]+)$")


def parse_metrics(text):
    vals = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, v = line.rpartition(" ")
        vals[name] = float(v)
    return vals


def cmd_metrics(args, rep):
    code, text = http_get(args.url)
    if not rep.check(code == 200, "metrics: GET /metrics is 200"):
        return
    vals = parse_metrics(text)
    ops = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, "==": lambda a, b: a == b,
           ">": lambda a, b: a > b, "<": lambda a, b: a < b}
    for expr in args.exprs:
        m = METRIC_EXPR.match(expr.strip())
        if not m:
            rep.fail("metrics: cannot parse %r" % expr)
            continue
        name, op, want = m.group(1), m.group(2), float(m.group(3))
        got = vals.get(name)
        rep.check(got is not None and ops[op](got, want), "metrics: %s" % expr, ["value: %r" % got])


def cmd_healthz(args, rep):
    code, body = http_get(args.url)
    rep.check(code == args.code, "healthz: %s -> %d" % (args.url, args.code), ["got %d %r" % (code, body)])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int)
    ap.add_argument("--ca")
    ap.add_argument("--token")
    ap.add_argument("--cert")
    ap.add_argument("--key")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("seq")
    p.add_argument("--stream", required=True)
    p.add_argument("--from", dest="frm", type=int, default=0)
    p.add_argument("--to", type=int)
    p.add_argument("files", nargs="+")
    p = sub.add_parser("dup")
    p.add_argument("--stream", required=True)
    p.add_argument("files", nargs=2)
    p = sub.add_parser("drain")
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--metrics", required=True)
    p.add_argument("files", nargs=1)
    p = sub.add_parser("metrics")
    p.add_argument("url")
    p.add_argument("exprs", nargs="+")
    p = sub.add_parser("healthz")
    p.add_argument("url")
    p.add_argument("code", type=int)
    args = ap.parse_args(argv)
    rep = Report()
    try:
        {"seq": cmd_seq, "dup": cmd_dup, "drain": cmd_drain, "metrics": cmd_metrics,
         "healthz": cmd_healthz}[args.cmd](args, rep)
    except Exception as e:  # noqa: BLE001 - report, do not crash the harness
        rep.fail("%s: %s: %s" % (args.cmd, type(e).__name__, e))
    return rep.done()


if __name__ == "__main__":
    sys.exit(main())
