#!/usr/bin/python3
"""srv_hostile: attacks on a running pdeltad, for test_server_hostile.sh.

  srv_hostile.py --port P --ca CA --token TOKEN [--certs DIR] ATTACK [options]

Each attack prints "ok ..." / "FAIL ..." lines and "N passed, N failed"; exit 0 only without
failures. The server configuration the attacks assume (short deadlines, small limits) is the
one test_server_hostile.sh writes. Attacks:

  normal          a well-behaved client still gets served (run after every attack)
  badtoken        wrong / missing credential -> auth/AUTH_FAILED, closed
  isolation       tenants cannot see or change each other's streams; agents cannot ADMIN
  plaintcp        a client without TLS is dropped without a pdelta frame
  badcert NAME    a client certificate that does not verify (rogue CA, expired) is refused
  certonly NAME   a valid client certificate alone authenticates (CN -> tenant, role)
  preauth-big     frame above the pre-auth limit -> limit/FRAME_TOO_LARGE before any payload
  postauth-big    frame above max_frame -> limit/FRAME_TOO_LARGE
  garbage         undecodable header, undecodable payload, frame illegal in its state
  slow-tls        1 byte/s during TLS -> closed by the handshake deadline
  slow-hello      1 byte per 0.5 s of HELLO -> timeout/DEADLINE at the handshake deadline
  maxconn N       N connections open, one more is accepted and closed at once
  inflight N      more than N open requests -> limit/INFLIGHT, closed
  upload-limit    upload above max_profile_bytes -> request limit/PROFILE_TOO_LARGE, conn lives
  request-timeout upload stalls -> request timeout/DEADLINE, conn lives
  frame-timeout   half a frame -> timeout/DEADLINE, closed
  idle            silence -> GOODBYE IDLE, closed
  backpressure    60 pipelined requests unread: reading pauses; then all complete
  stuck           the client never reads: GOODBYE OVERLOAD / close after write_timeout_ms
  revoke          SIGHUP with a tenants file without a token: new connections refused,
                  the open one gets GOODBYE REVOKED
  badreload       SIGHUP with a broken certificate: reload refused, old one still served
"""

import argparse
import hashlib
import os
import select
import signal
import socket
import ssl
import struct
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "oracle"))
import pdproto  # noqa: E402
from pdproto import frame  # noqa: E402
from srv_check import Report, http_get, parse_metrics  # noqa: E402

HOST = "127.0.0.1"
SMALL = None  # a small real profile, set in main()
DISCONNECTS = (pdproto.Closed, ssl.SSLError, ConnectionError, BrokenPipeError, socket.timeout, OSError)


def conn(a, token=None, cert=None, **kw):
    key = cert[:-4] + ".key" if cert else None
    return pdproto.Client.connect(HOST, a.port, a.ca, token=a.token if token is None else token,
                                  cert=cert, key=key, **kw)


def certpath(a, name):
    return os.path.join(a.certs, name + ".pem")


def expect_conn_error(rep, what, c, code, detail, value=None):
    """The next frame is ERROR id 0 with code/detail (and value), then the server closes."""
    try:
        t, _, rid, payload = c.recv_frame()
    except DISCONNECTS as e:
        rep.fail("%s: closed without an ERROR (%s)" % (what, e))
        return
    if t != pdproto.ERROR or rid != 0:
        rep.fail("%s: got %s id %d instead of a connection ERROR" % (what, pdproto.TYPE_NAMES.get(t, t), rid))
        return
    e = pdproto.parse_error(payload, 0)
    rep.check(e.code_name == code and e.detail_name == detail and (value is None or e.value == value),
              "%s: ERROR %s/%s" % (what, code, detail), ["got %s" % e])
    expect_closed(rep, what, c)


def expect_closed(rep, what, c, timeout=5):
    c.timeout = timeout
    try:
        while True:
            c.recv_frame()
    except pdproto.Closed:
        rep.ok("%s: server closed the connection" % what)
    except DISCONNECTS as e:
        rep.ok("%s: server closed the connection (%s)" % (what, type(e).__name__))


def expect_request_error(rep, what, fn, code, detail):
    try:
        fn()
    except pdproto.ProtoError as e:
        rep.check(e.request_id != 0 and e.code_name == code and e.detail_name == detail,
                  "%s: request ERROR %s/%s" % (what, code, detail), ["got %s (request %d)" % (e, e.request_id)])
        return e
    rep.fail("%s: no error" % what)
    return None


# ---- attacks ---------------------------------------------------------------------------------

def normal(a, rep):
    c = conn(a)
    rep.check(c.ping(99) == 99, "normal: PING answered")
    stream = "normal/%d-%d" % (os.getpid(), time.monotonic_ns())
    r = c.delta(stream, 1, 1, SMALL)
    rep.check(r.status == "BASELINE" and r.body[:2] == b"\x1f\x8b", "normal: delta request served")
    c.goodbye()
    c.close()


def badtoken(a, rep):
    c = pdproto.Client.tls(HOST, a.port, a.ca)
    c.send_raw(frame(pdproto.HELLO, pdproto.hello_payload(token="not-a-valid-token")))
    expect_conn_error(rep, "badtoken: wrong token", c, "auth", "AUTH_FAILED")
    c = pdproto.Client.tls(HOST, a.port, a.ca)
    c.send_raw(frame(pdproto.HELLO, pdproto.hello_payload(token="")))
    expect_conn_error(rep, "badtoken: no credential", c, "auth", "AUTH_FAILED")
    c = pdproto.Client.tls(HOST, a.port, a.ca)
    c.send_raw(frame(pdproto.HELLO, pdproto.hello_payload(token=a.token, min_v=4, max_v=5)))
    expect_conn_error(rep, "badtoken: no common version", c, "protocol", "VERSION", value=1 << 16 | 3)


def isolation(a, rep):
    f = [open(os.path.join(a.profiles, "%03d.pb.gz" % i), "rb").read() for i in range(3)]
    ca = conn(a)
    cb = conn(a, token=a.token_b)
    rep.check(ca.hello.tenant == "acme" and cb.hello.tenant == "beta" and ca.hello.role == cb.hello.role == 1,
              "isolation: HELLO_OK names each credential's tenant, role agent")
    s = "shared/heap"
    r1, r2 = ca.delta(s, 1, 7, f[0]), ca.delta(s, 2, 7, f[1])
    rep.check((r1.status, r2.status) == ("BASELINE", "DELTA"), "isolation: tenant A builds its stream")
    rb = cb.delta(s, 3, 7, f[2])
    rep.check((rb.status, rb.reason) == ("BASELINE", "first"),
              "isolation: tenant B, same stream name, starts its own stream", ["got %s %s" % (rb.status, rb.reason)])
    r3 = ca.delta(s, 3, 7, f[2])
    rep.check(r3.status == "DELTA", "isolation: tenant A's stream is unaffected by B", ["got %s" % r3.status])
    expect_request_error(rep, "isolation: agent B lists A's streams", lambda: cb.admin("streams", tenant="acme"),
                         "auth", "ROLE")
    expect_request_error(rep, "isolation: agent B resets A's stream",
                         lambda: cb.admin("reset", tenant="acme", name=s), "auth", "ROLE")
    expect_request_error(rep, "isolation: agent A runs ADMIN", lambda: ca.admin("stats"), "auth", "ROLE")
    rep.check(cb.ping(5) == 5, "isolation: connections survive refused ADMIN")
    adm = conn(a, token="", cert=certpath(a, "admin"))
    rep.check(adm.hello.role == 2 and adm.hello.tenant == "acme", "isolation: admin certificate -> admin role")
    mine = adm.admin("streams")
    names = {x["name"]: x for x in mine["streams"]}
    rep.check(mine["tenant"] == "acme" and names.get(s, {}).get("seq") == 3,
              "isolation: admin sees its tenant's stream at seq 3", ["got %r" % mine])
    other = adm.admin("stream", tenant="beta", name=s)
    rep.check(other.get("tenant") == "beta" and other.get("seq") == 3, "isolation: admin may name another tenant")
    r4 = ca.delta(s, 4, 7, f[2])
    rep.check(r4.status == "DELTA", "isolation: A still DELTA after everything")
    for c in (ca, cb, adm):
        c.goodbye()
        c.close()


def plaintcp(a, rep):
    s = socket.create_connection((HOST, a.port), timeout=5)
    t0 = time.monotonic()
    s.sendall(frame(pdproto.HELLO, pdproto.hello_payload(token=a.token)))
    got = b""
    try:
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
    except (ConnectionError, socket.timeout):
        pass
    s.close()
    rep.check(time.monotonic() - t0 < 3, "plaintcp: connection closed at once")
    rep.check(not got or got[0] == 0x15, "plaintcp: nothing but a TLS alert came back", ["got %r" % got[:16]])


def badcert(a, rep, name):
    try:
        c = conn(a, cert=certpath(a, name))
        c.ping()
        rep.fail("badcert %s: accepted" % name)
        c.close()
    except pdproto.ProtoError as e:
        rep.fail("badcert %s: refused only after TLS (%s)" % (name, e))
    except DISCONNECTS as e:
        rep.ok("badcert %s: TLS refused (%s)" % (name, type(e).__name__))


def certonly(a, rep, name):
    c = conn(a, token="", cert=certpath(a, name))
    want = 2 if name == "admin" else 1
    rep.check(c.hello.tenant == "acme" and c.hello.role == want,
              "certonly %s: authenticated by certificate alone" % name)
    c.goodbye()
    c.close()


def preauth_big(a, rep):
    c = pdproto.Client.tls(HOST, a.port, a.ca)
    c.send_raw(struct.pack(">IBBHI", 5000, pdproto.HELLO, 0, 0, 0))  # the header only
    expect_conn_error(rep, "preauth-big", c, "limit", "FRAME_TOO_LARGE", value=4096)


def postauth_big(a, rep):
    c = conn(a)
    limit = c.hello.max_frame
    rid = c.new_id()
    c.send_raw(frame(pdproto.DELTA_BEGIN, pdproto.begin_payload("big/x", 1, 1), rid))
    c.send_raw(struct.pack(">IBBHI", limit + 1, pdproto.DATA, 0, 0, rid))
    expect_conn_error(rep, "postauth-big", c, "limit", "FRAME_TOO_LARGE", value=limit)


def garbage(a, rep):
    c = conn(a)
    c.send_raw(b"\xff" * 12)
    expect_conn_error(rep, "garbage: bad header", c, "protocol", "BAD_FRAME")
    c = conn(a)
    c.send_raw(frame(pdproto.DELTA_BEGIN, b"\x00" * 28 + b"\x7f\xff", 1))  # string runs past the end
    expect_conn_error(rep, "garbage: bad payload", c, "malformed", "BAD_FRAME")
    c = pdproto.Client.tls(HOST, a.port, a.ca)
    c.send_raw(frame(pdproto.PING, b"\0" * 8))  # before HELLO
    expect_conn_error(rep, "garbage: PING before HELLO", c, "protocol", "BAD_FRAME")
    c = conn(a)
    c.send_raw(frame(pdproto.RESULT, b"\0" * 36, 1))  # a server-only frame
    expect_conn_error(rep, "garbage: server frame from client", c, "protocol", "BAD_FRAME")
    c = conn(a)
    c.send_raw(frame(pdproto.DATA, b"xyz", 9))  # no such upload
    expect_conn_error(rep, "garbage: DATA for no request", c, "protocol", "BAD_FRAME")


def slow_tls(a, rep):
    s = socket.create_connection((HOST, a.port), timeout=5)
    t0 = time.monotonic()
    hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x42" * 40
    closed_at = None
    for b in hello:
        try:
            s.send(bytes([b]))
        except OSError:
            closed_at = time.monotonic()
            break
        r, _, _ = select.select([s], [], [], 1.0)
        if r:
            try:
                if not s.recv(4096):
                    closed_at = time.monotonic()
                    break
            except OSError:
                closed_at = time.monotonic()
                break
    s.close()
    took = (closed_at or time.monotonic()) - t0
    rep.check(closed_at is not None and 1.5 <= took <= 4.5, "slow-tls: closed by the handshake deadline",
              ["closed after %.1f s" % took if closed_at else "never closed"])


def slow_hello(a, rep):
    c = pdproto.Client.tls(HOST, a.port, a.ca)
    t0 = time.monotonic()
    data = frame(pdproto.HELLO, pdproto.hello_payload(token=a.token))
    c.sock.settimeout(0.5)
    got = b""
    for b in data:
        try:
            c.sock.send(bytes([b]))
            chunk = c.sock.recv(4096)
            if not chunk:
                break
            got += chunk
        except socket.timeout:
            continue
        except DISCONNECTS:
            break
    took = time.monotonic() - t0
    c.buf = got
    rep.check(1.5 <= took <= 4.5, "slow-hello: answered at the handshake deadline", ["after %.1f s" % took])
    expect_conn_error(rep, "slow-hello", c, "timeout", "DEADLINE", value=2000)


def maxconn(a, rep, n):
    # Authenticated connections fill the server: a new one is closed at once. (Held
    # unauthenticated sockets do not: the oldest of them is closed to make room.)
    time.sleep(0.3)  # earlier connections finish closing
    idle = [socket.create_connection((HOST, a.port), timeout=5) for _ in range(n)]
    time.sleep(0.2)
    c = conn(a)
    rep.check(c.ping(1) == 1, "maxconn: %d idle unauthenticated sockets do not keep a client out" % n)
    c.close()
    for s in idle:
        s.close()
    time.sleep(0.3)
    held = [conn(a) for _ in range(n)]
    time.sleep(0.2)
    extra = socket.create_connection((HOST, a.port), timeout=5)
    t0 = time.monotonic()
    try:
        got = extra.recv(1)
    except ConnectionError:
        got = b""
    rep.check(got == b"" and time.monotonic() - t0 < 1.5, "maxconn: connection %d accepted and closed" % (n + 1))
    extra.close()
    for s in held:
        s.close()
    time.sleep(0.3)


def inflight(a, rep, n):
    c = conn(a)
    rep.check(c.hello.max_inflight == n, "inflight: HELLO_OK announces max_inflight %d" % n)
    out = b"".join(frame(pdproto.DELTA_BEGIN, pdproto.begin_payload("inf/%d" % i, 1, 1), i + 1) for i in range(n + 1))
    c.send_raw(out)
    expect_conn_error(rep, "inflight", c, "limit", "INFLIGHT", value=n)


def upload_limit(a, rep):
    c = conn(a)
    limit = c.hello.max_profile_bytes
    data = os.urandom(limit + 100000)
    rid = c.new_id()
    c.send_raw(frame(pdproto.DELTA_BEGIN, pdproto.begin_payload("big/upload", 1, 1), rid))
    for off in range(0, len(data), 60000):
        c.send_raw(frame(pdproto.DATA, data[off:off + 60000], rid))
    e = expect_request_error(rep, "upload-limit", lambda: c.read_response(rid), "limit", "PROFILE_TOO_LARGE")
    rep.check(e is not None and e.value == limit and not e.retryable, "upload-limit: value is max_profile_bytes")
    c.send_raw(frame(pdproto.CANCEL, b"", rid))
    rep.check(c.ping(3) == 3, "upload-limit: connection still usable")
    c.close()


def request_timeout(a, rep):
    c = conn(a)
    rid = c.new_id()
    c.send_raw(frame(pdproto.DELTA_BEGIN, pdproto.begin_payload("slow/upload", 1, 1), rid) +
               frame(pdproto.DATA, SMALL[:100], rid))
    e = expect_request_error(rep, "request-timeout", lambda: c.read_response(rid), "timeout", "DEADLINE")
    rep.check(e is not None and e.retryable, "request-timeout: retryable")
    c.send_raw(frame(pdproto.DATA, SMALL[100:200], rid))  # crossed the ERROR: discarded
    c.send_raw(frame(pdproto.CANCEL, b"", rid))
    rep.check(c.ping(4) == 4, "request-timeout: connection still usable")
    c.close()


def frame_timeout(a, rep):
    c = conn(a)
    c.keepalive = False  # a PING now would land inside the half frame
    t0 = time.monotonic()
    c.send_raw(frame(pdproto.PING, b"\0" * 8)[:6])
    expect_conn_error(rep, "frame-timeout", c, "timeout", "DEADLINE", value=1500)
    rep.check(1.2 <= time.monotonic() - t0 <= 4, "frame-timeout: at the frame deadline")


def idle(a, rep):
    c = conn(a)
    c.keepalive = False  # the point is to be silent
    c.timeout = 8
    t0 = time.monotonic()
    try:
        while True:
            c.next_frame()
    except pdproto.Closed:
        pass
    took = time.monotonic() - t0
    rep.check(c.goodbye_got is not None and c.goodbye_got[0] == "IDLE", "idle: GOODBYE IDLE",
              ["got %r" % (c.goodbye_got,)])
    rep.check(2.5 <= took <= 5, "idle: closed at idle_timeout_ms", ["after %.1f s" % took])


def small_rcvbuf_client(a):
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.settimeout(30)
    raw.connect((HOST, a.port))
    c = pdproto.Client(pdproto.tls_context(a.ca).wrap_socket(raw, server_hostname="localhost"))
    c.do_hello(a.token)
    return c


def metric(a, name):
    code, text = http_get(a.metrics)
    return parse_metrics(text).get(name, 0) if code == 200 else None


def take_frames(c):
    """Complete frames at the head of c.buf (bytes read without blocking)."""
    frames = []
    while len(c.buf) >= pdproto.HDR.size:
        n, t, _, _, rid = pdproto.HDR.unpack_from(c.buf)
        if len(c.buf) < pdproto.HDR.size + n:
            break
        frames.append((t, rid, c.buf[pdproto.HDR.size:pdproto.HDR.size + n]))
        c.buf = c.buf[pdproto.HDR.size + n:]
    return frames


def pump(c, out, read, until, timeout):
    """One thread, non-blocking: writes `out` (a bytearray, consumed) as the socket takes it
    and, if read, reads into c.buf, until until() or the timeout. True if until() held."""
    deadline = time.monotonic() + timeout
    last_send = time.monotonic()
    c.sock.setblocking(False)
    while not until():
        if time.monotonic() > deadline:
            return False
        if not out and time.monotonic() - last_send > c.hello.keepalive_ms / 2000.0:
            out += frame(pdproto.PING, b"\0" * 8)  # keepalive while waiting
        if out:
            last_send = time.monotonic()
        rl = [c.sock] if read else []
        wl = [c.sock] if out else []
        if read and c.sock.pending():
            r = rl
        else:
            r, _, _ = select.select(rl, wl, [], 0.1)
        try:
            if out:
                del out[:c.sock.send(out[:65536])]
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            pass
        if read and r:
            try:
                chunk = c.sock.recv(1 << 20)
                if not chunk:
                    raise pdproto.Closed("server closed the connection")
                c.buf += chunk
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
    return True


def backpressure(a, rep):
    key = 'pdeltad_limit_hits_total{limit="output_budget"}'
    before = metric(a, key)
    data = open(os.path.join(a.profiles, "..", "heap-medium", "000.pb.gz"), "rb").read()
    c = small_rcvbuf_client(a)
    n = 40
    out = bytearray()
    for i in range(n):
        rid = i + 1
        out += frame(pdproto.DELTA_BEGIN, pdproto.begin_payload("bp/%d" % i, 1, 1), rid)
        for off in range(0, len(data), 60000):
            out += frame(pdproto.DATA, data[off:off + 60000], rid)
        out += frame(pdproto.DATA_END, struct.pack(">Q", len(data)) + pdproto.content_hash(data), rid)
    last = [0.0]

    def paused():  # polled at most every 0.3 s
        if time.monotonic() - last[0] < 0.3:
            return False
        last[0] = time.monotonic()
        return metric(a, key) > before

    rep.check(pump(c, out, False, paused, 30), "backpressure: reading paused above the output budget")
    status, ended = {}, set()

    def all_done():
        for t, rid, payload in take_frames(c):
            if t == pdproto.RESULT:
                status[rid] = pdproto.Result(payload).status
            elif t in (pdproto.RESULT_END, pdproto.ERROR) and rid:
                ended.add(rid)
        return len(ended) == n and not out

    ok = pump(c, out, True, all_done, 60)
    good = [r for r in ended if status.get(r) == "BASELINE"]
    rep.check(ok and len(good) == n, "backpressure: all %d responses complete once the client reads" % n,
              ["%d ended, %d BASELINE" % (len(ended), len(good))])
    c.sock.setblocking(True)
    c.goodbye()
    c.close()


def stuck(a, rep):
    key = 'pdeltad_connection_closes_total{reason="output_stuck"}'
    before = metric(a, key)
    data = open(os.path.join(a.profiles, "..", "heap-medium", "000.pb.gz"), "rb").read()
    c = small_rcvbuf_client(a)

    def send():
        try:
            for i in range(60):
                c.send_delta("stuck/%d" % i, 1, 1, data, i + 1)
            while True:  # keepalive: the client is alive, it just never reads
                c.send_raw(frame(pdproto.PING, b"\0" * 8))
                time.sleep(0.3)
        except DISCONNECTS:
            pass

    t = threading.Thread(target=send, daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and metric(a, key) == before:
        time.sleep(0.25)
    rep.check(metric(a, key) > before, "stuck: a client that never reads is closed (output_stuck)")
    c.close()
    t.join(5)


def revoke(a, rep):
    keep = conn(a, token=a.token_r)
    rep.check(keep.hello.tenant == "acme", "revoke: token works before the reload")
    gone = hashlib.sha256(a.token_r.encode()).hexdigest()
    with open(a.tenants) as f:
        lines = f.readlines()
    tmp = a.tenants + ".new"
    with open(tmp, "w") as f:
        f.writelines(l for l in lines if gone not in l)
    os.replace(tmp, a.tenants)
    os.kill(a.pid, signal.SIGHUP)
    time.sleep(0.5)
    keep.timeout = 5
    try:
        while True:
            keep.next_frame()
    except DISCONNECTS:
        pass
    rep.check(keep.goodbye_got is not None and keep.goodbye_got[0] == "REVOKED",
              "revoke: open connection gets GOODBYE REVOKED", ["got %r" % (keep.goodbye_got,)])
    try:
        conn(a, token=a.token_r).close()
        rep.fail("revoke: revoked token still accepted")
    except pdproto.ProtoError as e:
        rep.check(e.code_name == "auth" and e.detail_name == "AUTH_FAILED", "revoke: revoked token refused")
    with open(a.tenants, "w") as f:
        f.writelines(lines)  # restored; reloaded by the next SIGHUP


def badreload(a, rep):
    key = 'pdeltad_tls_reloads_total{result="failed"}'
    okkey = 'pdeltad_tls_reloads_total{result="ok"}'
    before, ok_before = metric(a, key), metric(a, okkey)
    with open(a.server_cert, "rb") as f:
        good = f.read()
    with open(a.server_cert, "wb") as f:
        f.write(b"-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    os.kill(a.pid, signal.SIGHUP)
    time.sleep(0.5)
    rep.check(metric(a, key) == before + 1, "badreload: reload refused and counted")
    normal(a, rep)
    with open(a.server_cert, "wb") as f:
        f.write(good)
    os.kill(a.pid, signal.SIGHUP)
    time.sleep(0.5)
    rep.check(metric(a, okkey) == ok_before + 1, "badreload: a good reload afterwards succeeds")


def main(argv=None):
    global SMALL
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--token-b")
    ap.add_argument("--token-r")
    ap.add_argument("--certs")
    ap.add_argument("--profiles", required=True, help="directory of heap-small")
    ap.add_argument("--metrics")
    ap.add_argument("--pid", type=int)
    ap.add_argument("--tenants")
    ap.add_argument("--server-cert")
    ap.add_argument("attack")
    ap.add_argument("arg", nargs="?")
    a = ap.parse_args(argv)
    SMALL = open(os.path.join(a.profiles, "000.pb.gz"), "rb").read()
    rep = Report()
    attacks = {
        "normal": normal, "badtoken": badtoken, "isolation": isolation, "plaintcp": plaintcp,
        "badcert": lambda a, r: badcert(a, r, a.arg), "certonly": lambda a, r: certonly(a, r, a.arg),
        "preauth-big": preauth_big, "postauth-big": postauth_big, "garbage": garbage,
        "slow-tls": slow_tls, "slow-hello": slow_hello, "maxconn": lambda a, r: maxconn(a, r, int(a.arg)),
        "inflight": lambda a, r: inflight(a, r, int(a.arg)), "upload-limit": upload_limit,
        "request-timeout": request_timeout, "frame-timeout": frame_timeout, "idle": idle,
        "backpressure": backpressure, "stuck": stuck, "revoke": revoke, "badreload": badreload,
    }
    try:
        attacks[a.attack](a, rep)
    except Exception as e:  # noqa: BLE001 - a crash of the attack is a failure, not a harness error
        rep.fail("%s: %s: %s" % (a.attack, type(e).__name__, e))
    return rep.done()


if __name__ == "__main__":
    sys.exit(main())
