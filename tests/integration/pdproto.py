#!/usr/bin/python3
"""pdproto: a minimal, independent client of the pdelta wire protocol (proto/PROTOCOL.md).

Standard library only (ssl, socket, struct, hashlib, zlib, json). It shares no code with the C
implementation: every constant and layout here is transcribed from PROTOCOL.md, so the
integration tests check the server against the document, not against itself.

    c = Client.connect("127.0.0.1", port, ca="ca.pem", token="s3cr3t")   # TLS + HELLO
    r = c.delta("api/heap", seq=1, incarnation=7, data=open(f, "rb").read())
    r.status, r.reason, r.body                                             # RESULT..RESULT_END
    c.admin("streams")                                                     # dict from the JSON
    c.goodbye(); c.close()

Errors come back as ProtoError(code, retryable, detail, value, message, request_id). Raw
helpers (frame(), Client.send_raw(), Client.recv_frame()) let hostile tests send anything.

Command line (debugging aid):
    pdproto.py --port P --ca CA [--cert C --key K] [--token-file F] delta STREAM SEQ FILE [-o OUT]
    pdproto.py --port P --ca CA ... admin CMD [key=value ...]
"""

import argparse
import hashlib
import json
import os
import socket
import ssl
import struct
import sys
import time
import zlib

MAGIC = 0x50444C54
VERSION = 1
HDR = struct.Struct(">IBBHI")  # length, type, flags, reserved, request_id
PREAUTH_MAX = 4096
FRAME_MAX_ABS = 16 << 20

HELLO, HELLO_OK, PING, PONG, GOODBYE, ERROR = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
DELTA_BEGIN, DATA, DATA_END, CANCEL, ADMIN = 0x10, 0x11, 0x12, 0x13, 0x14
RESULT, RESULT_DATA, RESULT_END, ADMIN_RESULT = 0x20, 0x21, 0x22, 0x23
FLAG_NO_DATA = 0x01
FLAG_AFTER = 0x02  # version 3: DELTA_BEGIN ends with u64 after_seq

TYPE_NAMES = {HELLO: "HELLO", HELLO_OK: "HELLO_OK", PING: "PING", PONG: "PONG", GOODBYE: "GOODBYE",
              ERROR: "ERROR", DELTA_BEGIN: "DELTA_BEGIN", DATA: "DATA", DATA_END: "DATA_END",
              CANCEL: "CANCEL", ADMIN: "ADMIN", RESULT: "RESULT", RESULT_DATA: "RESULT_DATA",
              RESULT_END: "RESULT_END", ADMIN_RESULT: "ADMIN_RESULT"}

CODES = {1: "nomem", 2: "malformed", 3: "limit", 4: "io", 5: "state", 6: "bad-argument", 7: "auth",
         8: "sequence", 9: "busy", 10: "store", 11: "protocol", 12: "not-found", 13: "timeout",
         14: "internal"}
DETAILS = {0: "NONE", 1: "SEQ_STALE", 2: "SEQ_CONFLICT", 3: "VERSION", 4: "BAD_FRAME",
           5: "FRAME_TOO_LARGE", 6: "INFLIGHT", 7: "PROFILE_TOO_LARGE", 8: "INPUT_LIMIT",
           9: "STREAM_LIMIT", 10: "LENGTH_MISMATCH", 11: "HASH_MISMATCH", 12: "SHUTTING_DOWN",
           13: "CANCELLED", 14: "DEADLINE", 15: "OVERLOADED", 16: "ROLE", 17: "UNKNOWN_COMMAND",
           18: "AUTH_FAILED"}
STATUS = {1: "DELTA", 2: "BASELINE", 3: "DUPLICATE"}
REASON = {0: "-", 1: "first", 2: "reset", 3: "evicted", 4: "moved", 5: "state-lost"}
BYE = {0: "NORMAL", 1: "SHUTDOWN", 2: "IDLE", 3: "PROTOCOL", 4: "OVERLOAD", 5: "REVOKED"}
FIRST = {"keep": 0, "drop": 1, "auto": 2}
POLICY = {"delta": 1, "gauge": 2}


class ProtoError(Exception):
    """An ERROR frame (request_id 0: the connection is gone)."""

    def __init__(self, code, retryable, detail, value, message, request_id):
        self.code, self.retryable, self.detail = code, retryable, detail
        self.value, self.message, self.request_id = value, message, request_id
        super().__init__("%s/%s%s value=%d: %s" % (self.code_name, self.detail_name,
                                                     " (retryable)" if retryable else "", value, message))

    @property
    def code_name(self):
        return CODES.get(self.code, "code%d" % self.code)

    @property
    def detail_name(self):
        return DETAILS.get(self.detail, "detail%d" % self.detail)


class Closed(Exception):
    """The server closed the connection (after a GOODBYE, if it sent one)."""

    def __init__(self, msg, goodbye=None):
        super().__init__(msg)
        self.goodbye = goodbye


# ---- encoding ------------------------------------------------------------------------------

def s16(text):
    b = text.encode() if isinstance(text, str) else bytes(text)
    return struct.pack(">H", len(b)) + b


def frame(ftype, payload=b"", rid=0, flags=0, reserved=0, length=None):
    """One frame; `length` overrides the header's length field (for hostile tests)."""
    n = len(payload) if length is None else length
    return HDR.pack(n, ftype, flags, reserved, rid) + payload


def hello_payload(token="", client_name="pdproto", min_v=VERSION, max_v=VERSION, max_frame=0):
    return struct.pack(">IHHI", MAGIC, min_v, max_v, max_frame) + s16(client_name) + s16(token)


def begin_payload(stream, seq, incarnation, producer_start_ns=0, first="keep", overrides=(), after=None):
    """after: the seq last answered (version 3, with FLAG_AFTER in the header)."""
    p = struct.pack(">QQQBBH", seq, incarnation, producer_start_ns, FIRST[first], 0, len(overrides))
    p += s16(stream)
    for name, pol in overrides:
        p += s16(name) + bytes([POLICY[pol]])
    if after is not None:
        p += struct.pack(">Q", after)
    return p


def admin_payload(cmd, args):
    p = s16(cmd) + struct.pack(">H", len(args))
    for k, v in args.items():
        p += s16(k) + s16(str(v))
    return p


def _crc64_table(poly):
    rev = int("{:064b}".format(poly)[::-1], 2)  # reflected polynomial
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ rev if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_XZ = _crc64_table(0x42F0E1EBA9EA3693)     # CRC-64/XZ (ECMA-182)
_CRC_JONES = _crc64_table(0xAD93D23594C935A9)  # Jones, reflected, init/xorout all ones
_M64 = (1 << 64) - 1


def _crc64(table, data):
    c = _M64
    for b in data:
        c = table[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ _M64


def content_hash(data, version=VERSION):
    """DATA_END.hash: protocol 1 the first 16 bytes of SHA-256, protocol 2 the CRC-128
    (CRC-64/XZ then CRC-64/Jones, each little-endian). Table-driven here (slow, small
    inputs only); the C code uses ISA-L."""
    if version >= 2:
        return struct.pack("<QQ", _crc64(_CRC_XZ, data), _crc64(_CRC_JONES, data))
    return hashlib.sha256(data).digest()[:16]


# ---- decoding -----------------------------------------------------------------------------

class Reader:
    def __init__(self, b):
        self.b, self.pos = b, 0

    def take(self, n):
        if self.pos + n > len(self.b):
            raise ValueError("payload truncated")
        v = self.b[self.pos:self.pos + n]
        self.pos += n
        return v

    def u(self, fmt):
        return struct.unpack(">" + fmt, self.take(struct.calcsize(">" + fmt)))[0]

    def s(self):
        return self.take(self.u("H")).decode("utf-8")

    def end(self):
        if self.pos != len(self.b):
            raise ValueError("%d trailing bytes" % (len(self.b) - self.pos))


def parse_error(payload, rid):
    r = Reader(payload)
    code, retry, detail, value = r.u("H"), r.u("B"), r.u("B"), r.u("Q")
    msg = r.s()
    r.end()
    return ProtoError(code, retry, detail, value, msg, rid)


class HelloOk:
    def __init__(self, payload):
        r = Reader(payload)
        self.version, self.role, _ = r.u("H"), r.u("B"), r.u("B")
        self.max_frame, self.max_inflight = r.u("I"), r.u("I")
        self.max_profile_bytes = r.u("Q")
        self.keepalive_ms, self.idle_timeout_ms, self.request_timeout_ms = r.u("I"), r.u("I"), r.u("I")
        self.tenant, self.server_name = r.s(), r.s()
        r.end()


class Result:
    """A delta response: RESULT fields, the body and the RESULT_END check."""

    def __init__(self, payload):
        r = Reader(payload)
        st, rs, orig, _ = r.u("B"), r.u("B"), r.u("B"), r.u("B")
        self.status, self.reason, self.orig_status = STATUS.get(st, st), REASON.get(rs, rs), STATUS.get(orig, orig)
        self.seq, self.samples_in, self.samples_out, self.output_bytes = r.u("Q"), r.u("Q"), r.u("Q"), r.u("Q")
        r.end()
        self.body = b""
        self.total = self.crc = None


def admin_head(payload):
    r = Reader(payload)
    fmt, _, _, _, total = r.u("B"), r.u("B"), r.u("B"), r.u("B"), r.u("Q")
    r.end()
    return {"format": fmt, "total": total}


def check_end(payload, data):
    """RESULT_END against the body received; returns the body."""
    r = Reader(payload)
    total, crc = r.u("Q"), r.u("I")
    r.end()
    want = zlib.crc32(data) & 0xffffffff if data else 0
    if total != len(data) or crc != want:
        raise ValueError("RESULT_END mismatch: total %d/%d crc %08x/%08x" % (total, len(data), crc, want))
    return data


# ---- the client ----------------------------------------------------------------------------

def tls_context(ca, cert=None, key=None, verify=True):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if verify:
        ctx.load_verify_locations(ca)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


class Client:
    """One connection. While it waits for frames it sends a PING whenever it has sent nothing
    for the announced keepalive_ms (PROTOCOL.md §9); set keepalive = False to stay silent."""

    def __init__(self, sock, timeout=30):
        self.sock = sock
        self.buf = b""
        self.hello = None
        self.goodbye_got = None
        self.next_id = 1
        self.timeout = timeout
        self.keepalive = True
        self.last_send = time.monotonic()

    # -- connection
    @classmethod
    def tls(cls, host, port, ca, cert=None, key=None, timeout=10, server_hostname="localhost"):
        raw = socket.create_connection((host, port), timeout=timeout)
        try:
            s = tls_context(ca, cert, key).wrap_socket(raw, server_hostname=server_hostname)
        except Exception:
            raw.close()
            raise
        s.settimeout(timeout)
        return cls(s, timeout=max(timeout, 30))

    @classmethod
    def connect(cls, host, port, ca, token="", cert=None, key=None, timeout=10, client_name="pdproto",
                max_frame=0, versions=(VERSION, VERSION)):
        c = cls.tls(host, port, ca, cert, key, timeout)
        try:
            c.do_hello(token, client_name, max_frame, versions)
        except Exception:
            c.close()
            raise
        return c

    def do_hello(self, token="", client_name="pdproto", max_frame=0, versions=(VERSION, VERSION)):
        self.send_raw(frame(HELLO, hello_payload(token, client_name, versions[0], versions[1], max_frame)))
        t, _, _, payload = self.recv_frame()
        if t == ERROR:
            raise parse_error(payload, 0)
        if t != HELLO_OK:
            raise ValueError("expected HELLO_OK, got %s" % TYPE_NAMES.get(t, t))
        self.hello = HelloOk(payload)
        return self.hello

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send_raw(self, data):
        self.sock.settimeout(self.timeout)  # not the short slice recv_frame() may have left
        self.sock.sendall(data)
        self.last_send = time.monotonic()

    def _wait_slice(self, deadline):
        """How long one recv may block: until the deadline, or the next keepalive PING."""
        left = deadline - time.monotonic()
        if self.keepalive and self.hello:
            ka = self.hello.keepalive_ms / 1000.0
            due = self.last_send + ka - time.monotonic()
            if due <= 0:
                self.send_raw(frame(PING, struct.pack(">Q", 0)))
                due = ka
            left = min(left, due)
        return max(left, 0.01)

    def recv_frame(self, max_payload=FRAME_MAX_ABS):
        """(type, flags, request_id, payload); raises Closed at EOF, socket.timeout after
        self.timeout seconds without a whole frame."""
        deadline = time.monotonic() + self.timeout
        while True:
            if len(self.buf) >= HDR.size:
                n, t, fl, res, rid = HDR.unpack_from(self.buf)
                if n > max_payload or res != 0:
                    raise ValueError("bad frame header from server: len %d reserved %d" % (n, res))
                if len(self.buf) >= HDR.size + n:
                    payload = self.buf[HDR.size:HDR.size + n]
                    self.buf = self.buf[HDR.size + n:]
                    return t, fl, rid, payload
            self.sock.settimeout(self._wait_slice(deadline))
            try:
                chunk = self.sock.recv(1 << 20)
            except socket.timeout:
                if time.monotonic() >= deadline:
                    raise
                continue
            except (ConnectionResetError, ssl.SSLError) as e:
                raise Closed("connection reset: %s" % e, self.goodbye_got) from None
            if not chunk:
                raise Closed("server closed the connection", self.goodbye_got)
            self.buf += chunk

    def next_frame(self):
        """The next frame that is not PING/PONG/GOODBYE (those are handled here)."""
        while True:
            t, fl, rid, payload = self.recv_frame()
            if t == PING:
                self.send_raw(frame(PONG, payload))
            elif t == PONG:
                continue
            elif t == GOODBYE:
                r = Reader(payload)
                self.goodbye_got = (BYE.get(r.u("H")), r.s())
            elif t == ERROR and rid == 0:
                raise parse_error(payload, 0)
            else:
                return t, fl, rid, payload

    def new_id(self):
        rid = self.next_id
        self.next_id += 1
        return rid

    # -- requests
    def send_delta(self, stream, seq, incarnation, data, rid, first="keep", overrides=(), chunk=65536,
                   no_data=False, producer_start_ns=0, total=None, hash16=None, after=None):
        flags = (FLAG_NO_DATA if no_data else 0) | (FLAG_AFTER if after is not None else 0)
        out = [frame(DELTA_BEGIN, begin_payload(stream, seq, incarnation, producer_start_ns, first, overrides,
                                                after), rid, flags)]
        for off in range(0, len(data), chunk):
            out.append(frame(DATA, data[off:off + chunk], rid))
        end = struct.pack(">Q", len(data) if total is None else total)
        version = self.hello.version if self.hello else VERSION
        out.append(frame(DATA_END, end + (content_hash(data, version) if hash16 is None else hash16), rid))
        self.send_raw(b"".join(out))

    def read_responses(self, rids):
        """Collects the responses of several open requests, whatever order they complete in
        (PROTOCOL.md §6): {rid: (head, body)} or {rid: ProtoError}. Each request must follow
        RESULT|ADMIN_RESULT, RESULT_DATA*, RESULT_END, or end with one ERROR."""
        heads, bodies, done = {}, {}, {}
        while len(done) < len(rids):
            t, _, rid, payload = self.next_frame()
            if rid not in rids or rid in done:
                raise ValueError("%s for request %d, which is not open" % (TYPE_NAMES.get(t, t), rid))
            if t == ERROR:
                done[rid] = parse_error(payload, rid)
            elif t in (RESULT, ADMIN_RESULT) and rid not in heads:
                heads[rid] = Result(payload) if t == RESULT else admin_head(payload)
                bodies[rid] = []
            elif t == RESULT_DATA and rid in heads:
                bodies[rid].append(payload)
            elif t == RESULT_END and rid in heads:
                done[rid] = (heads[rid], check_end(payload, b"".join(bodies[rid])))
            else:
                raise ValueError("unexpected %s for request %d" % (TYPE_NAMES.get(t, t), rid))
        return done

    def read_response(self, rid):
        """The response of one request; raises its ERROR as ProtoError."""
        got = self.read_responses({rid})[rid]
        if isinstance(got, ProtoError):
            raise got
        return got

    def delta(self, stream, seq, incarnation, data, **kw):
        rid = self.new_id()
        self.send_delta(stream, seq, incarnation, data, rid, **kw)
        head, body = self.read_response(rid)
        if head.output_bytes and head.output_bytes != len(body):
            raise ValueError("RESULT.output_bytes %d but %d bytes came" % (head.output_bytes, len(body)))
        head.body = body
        return head

    def admin(self, cmd, **args):
        rid = self.new_id()
        self.send_raw(frame(ADMIN, admin_payload(cmd, args), rid))
        head, body = self.read_response(rid)
        return json.loads(body.decode("utf-8"))

    def ping(self, opaque=0x1234):
        self.send_raw(frame(PING, struct.pack(">Q", opaque)))
        while True:
            t, _, _, payload = self.recv_frame()
            if t == PONG:
                return struct.unpack(">Q", payload)[0]
            if t == ERROR:
                raise parse_error(payload, 0)

    def goodbye(self, reason=0, msg="bye"):
        self.send_raw(frame(GOODBYE, struct.pack(">H", reason) + s16(msg)))


# ---- command line -----------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--token-file")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("delta")
    d.add_argument("stream")
    d.add_argument("seq", type=int)
    d.add_argument("file")
    d.add_argument("--incarnation", type=int, default=1)
    d.add_argument("-o", "--out")
    a = sub.add_parser("admin")
    a.add_argument("command")
    a.add_argument("args", nargs="*")
    args = ap.parse_args(argv)
    token = open(args.token_file).read().strip() if args.token_file else ""
    c = Client.connect(args.host, args.port, args.ca, token, args.cert, args.key)
    try:
        if args.cmd == "delta":
            with open(args.file, "rb") as f:
                r = c.delta(args.stream, args.seq, args.incarnation, f.read())
            print("%s %s %s seq=%d samples_in=%d samples_out=%d bytes=%d" % (
                os.path.basename(args.file), r.status, r.reason, r.seq, r.samples_in, r.samples_out, len(r.body)))
            if args.out:
                with open(args.out, "wb") as f:
                    f.write(r.body)
        else:
            kv = dict(x.split("=", 1) for x in args.args)
            print(json.dumps(c.admin(args.command, **kv), indent=2))
        c.goodbye()
    except ProtoError as e:
        print("ERROR %s" % e)
        return 1
    finally:
        c.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
