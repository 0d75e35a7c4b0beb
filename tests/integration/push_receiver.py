#!/usr/bin/python3
"""A Pyroscope-ingest-compatible receiver for the push tests (127.0.0.1 only).

  push_receiver.py --port-file F --out DIR [--down-file D] [--reject-file R]

POST /ingest?name=...&from=..&until=..&format=pprof with a multipart body whose "profile"
part is the pprof: the part is saved as DIR/NNNNNN.pb.gz (arrival order) and one JSON line
(n, query, size) appended to DIR/log.jsonl. While the file D exists every request gets 503
(a backend that is down); while R exists, 400 (a permanent refusal). Anything else: 400/404.
"""

import argparse
import email.parser
import email.policy
import json
import os
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
COUNT = [0]


def make_handler(args):
    class H(BaseHTTPRequestHandler):
        def reply(self, code, text):
            body = text.encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            url = urllib.parse.urlsplit(self.path)
            n = int(self.headers.get("Content-Length") or 0)
            data = self.rfile.read(n)
            if url.path != "/ingest":
                return self.reply(404, "no such path")
            if args.down_file and os.path.exists(args.down_file):
                return self.reply(503, "down")
            if args.reject_file and os.path.exists(args.reject_file):
                return self.reply(400, "rejected")
            q = urllib.parse.parse_qs(url.query)
            if q.get("format") != ["pprof"] or "name" not in q:
                return self.reply(400, "format=pprof and name wanted")
            ctype = self.headers.get("Content-Type", "")
            msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + data)
            profile = None
            for part in msg.iter_parts() if msg.is_multipart() else ():
                if part.get_param("name", header="content-disposition") == "profile":
                    profile = part.get_payload(decode=True)
            if not profile:
                return self.reply(400, "no profile part")
            with LOCK:
                COUNT[0] += 1
                k = COUNT[0]
                with open(os.path.join(args.out, "%06d.pb.gz" % k), "wb") as f:
                    f.write(profile)
                with open(os.path.join(args.out, "log.jsonl"), "a") as f:
                    f.write(json.dumps({"n": k, "query": {a: b[0] for a, b in q.items()},
                                        "size": len(profile)}) + "\n")
            self.reply(200, "ok")

        def log_message(self, *a):
            pass

    return H


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--down-file")
    ap.add_argument("--reject-file")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    srv = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(args))
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(srv.server_address[1]))
    os.rename(tmp, args.port_file)
    srv.serve_forever()


if __name__ == "__main__":
    main()
