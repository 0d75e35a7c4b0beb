#!/usr/bin/python3
"""Judges `pdelta seq` (or `pdelta diff`) on a sequence of profiles against the oracle.

  check_seq.py --pdelta BIN [--first keep|drop] [--type NAME=POLICY ...]
               [--expect-error BASENAME ...] [--maybe-error BASENAME ...]
               [--extra "ARGS FOR PDELTA"] [--mode seq|diff] [--no-go] [--go-sample K]
               [--lenient-minimal]
               FILE...

seq mode runs `BIN seq [options] -o TMPDIR FILE...` once, then for every input checks the
status line, the output file (structure, then semantic equality with the oracle's
expectation) and the counters on the line. diff mode runs `BIN diff PREV CUR -o OUT` for
every consecutive pair and compares against a fresh two-step oracle.

--expect-error NAME: the file must be refused (ERROR line, no output file, state unchanged).
--maybe-error NAME:  the file may be refused; if accepted it is judged like any other.

When `go` is on PATH every output is also read with `go tool pprof -raw` (disable with
--no-go). Prints one line per problem and a final "check_seq: N passed, N failed" line;
exit status 0 only when everything matched.
"""

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oracle  # noqa: E402
import pprof_pb  # noqa: E402

RUN_TIMEOUT = 900


SANITIZER_MARKS = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer", "ThreadSanitizer",
                   "runtime error:", "MemorySanitizer")


def sanitizer_report(stderr):
    """The first lines of a sanitizer report in stderr, or None."""
    lines = stderr.splitlines()
    for i, line in enumerate(lines):
        if any(m in line for m in SANITIZER_MARKS):
            return lines[i:i + 12]
    return None


class Report:
    def __init__(self, label):
        self.label = label
        self.passed = 0
        self.failed = 0

    def ok(self):
        self.passed += 1

    def fail(self, what, details=()):
        self.failed += 1
        print("FAIL %s: %s" % (self.label, what))
        for d in details:
            print("    " + d)
        sys.stdout.flush()


def stage_inputs(files, tmp):
    """Returns the paths to hand to pdelta: symlinks with unique basenames when needed."""
    names = [os.path.basename(f) for f in files]
    if len(set(names)) == len(names):
        return [os.path.abspath(f) for f in files]
    d = os.path.join(tmp, "in")
    os.makedirs(d)
    out = []
    for i, f in enumerate(files):
        link = os.path.join(d, "%03d-%s" % (i, os.path.basename(f)))
        os.symlink(os.path.abspath(f), link)
        out.append(link)
    return out


def parse_status_line(line):
    """'<name> <STATUS> <REASON> k=v ...' or '<name> ERROR <code> <message...>' -> dict."""
    parts = line.split()
    if len(parts) < 3:
        return None
    rec = {"name": parts[0], "status": parts[1], "line": line}
    if parts[1] == "ERROR":
        rec["code"] = parts[2]
        rec["message"] = " ".join(parts[3:])
        return rec
    rec["reason"] = parts[2]
    for kv in parts[3:]:
        k, sep, v = kv.partition("=")
        if sep:
            rec[k] = v
    return rec


class GoChecker:
    """Runs `go tool pprof -raw` on outputs in the background, one at a time."""

    def __init__(self, enabled, tmp):
        self.enabled = enabled and shutil.which("go") is not None
        self.queue = []
        self.running = None
        self.results = []
        if self.enabled:
            home = os.path.join(tmp, "gohome")
            os.makedirs(home, exist_ok=True)
            self.env = dict(os.environ, HOME=home, GOCACHE=os.path.join(home, "cache"),
                            PPROF_TMPDIR=home, GOFLAGS="-mod=mod", GOTOOLCHAIN="local")

    def submit(self, path, copy_dir):
        if not self.enabled:
            return
        # seq may overwrite nothing, but diff mode reuses names: keep our own copy.
        keep = os.path.join(copy_dir, "go-%d-%s" % (len(self.results) + len(self.queue), os.path.basename(path)))
        shutil.copyfile(path, keep)
        self.queue.append(keep)
        self._pump()

    def _pump(self, block=False):
        while True:
            if self.running:
                path, proc, err = self.running
                if proc.poll() is None and not block:
                    return
                proc.wait()
                err.seek(0)
                msg = err.read().decode(errors="replace").strip().splitlines()[-3:]
                err.close()
                self.results.append((path, proc.returncode, msg))
                self.running = None
            if not self.queue:
                return
            path = self.queue.pop(0)
            err = tempfile.TemporaryFile()
            proc = subprocess.Popen(["go", "tool", "pprof", "-raw", path], stdout=subprocess.DEVNULL,
                                    stderr=err, env=self.env)
            self.running = (path, proc, err)

    def finish(self, rep):
        if not self.enabled:
            return
        while self.running or self.queue:
            self._pump(block=True)
        for path, rc, msg in self.results:
            if rc == 0:
                rep.ok()
            else:
                rep.fail("go tool pprof -raw %s exited %d" % (os.path.basename(path), rc), msg)


def pdelta_opts(args):
    opts = []
    if args.first:
        opts += ["--first", args.first]
    for t in args.type:
        opts += ["--type", t]
    opts += shlex.split(args.extra or "")
    return opts


def check_counts(rep, name, rec, in_path, out_path, res_in, out_profile):
    want = {
        "samples_in": res_in.nsamples,
        "samples_out": len(out_profile.sample),
        "bytes_in": os.path.getsize(in_path),
        "bytes_out": os.path.getsize(out_path),
    }
    bad = []
    for k, v in want.items():
        if k not in rec:
            bad.append("%s missing from status line" % k)
        elif rec[k] != str(v):
            bad.append("%s=%s, expected %d" % (k, rec[k], v))
    try:
        float(rec.get("ms", ""))
    except ValueError:
        bad.append("ms=%r is not a number" % rec.get("ms"))
    if bad:
        rep.fail("%s: status line counters" % name, bad + ["line: " + rec["line"]])
    else:
        rep.ok()


def go_pick(n, k):
    """Indices of the outputs to hand to `go tool pprof`: all, or k spread evenly."""
    if k <= 0 or k >= n:
        return set(range(n))
    if k == 1:
        return {n - 1}
    return {round(j * (n - 1) / (k - 1)) for j in range(k)}


def judge_output(rep, name, rec, exp, in_path, out_path, res_in, overrides, lenient_minimal, go):
    """Compares one successful status line + output file with the oracle's expectation."""
    got_status = (rec["status"], rec.get("reason"))
    if got_status not in exp.statuses:
        rep.fail("%s: status %s %s, expected %s (%s)" % (name, got_status[0], got_status[1],
                                                         " or ".join("%s %s" % s for s in exp.statuses),
                                                         exp.note))
    else:
        rep.ok()
    if not os.path.exists(out_path):
        rep.fail("%s: no output file %s" % (name, out_path))
        return
    try:
        with open(out_path, "rb") as f:
            data = f.read()
        if data[:2] != pprof_pb.GZIP_MAGIC:
            rep.fail("%s: output is not gzipped" % name)
        out = pprof_pb.loads(data, any_bytes=True)
    except Exception as e:  # noqa: BLE001 - any parse failure is a finding
        rep.fail("%s: output does not parse: %s" % (name, e))
        return
    delta_names = {t for t, _ in res_in.types if oracle.policy_of(t, overrides) == "delta"}
    if got_status != ("DELTA", "-"):
        delta_names = ()  # a BASELINE passes values through, nothing to check for sign
    got, probs = oracle.check_output(out, delta_names, minimal=True)
    warn = [p for p in probs if p.startswith("redundant")]
    soft = [p for p in probs if p.startswith("not minimal")]
    hard = [p for p in probs if p not in warn and p not in soft]
    if lenient_minimal:
        warn, soft = warn + soft, []
    if hard or soft:
        rep.fail("%s: invalid output structure" % name, hard + soft)
    else:
        rep.ok()
    for p in warn:
        print("WARN %s: %s" % (name, p))
    if got is None:
        return
    diffs = oracle.diff_sem(exp.sem, got)
    if diffs:
        rep.fail("%s: output differs from oracle (%s)" % (name, exp.note), diffs)
    else:
        rep.ok()
    check_counts(rep, name, rec, in_path, out_path, res_in, out)
    if go:
        go.submit(out_path, os.path.dirname(out_path))


def load_resolved(path):
    """(Resolved, None) or (None, error text) when the oracle itself rejects the file."""
    try:
        return oracle.resolve(pprof_pb.load(path, any_bytes=True)), None
    except Exception as e:  # noqa: BLE001 - decode errors come in many types
        return None, "%s: %s" % (type(e).__name__, e)


def check_error_line(rep, name, rec, out_path, must):
    """An ERROR line must carry a code and a message and leave no output behind."""
    bad = []
    if not rec.get("code") or not rec.get("message"):
        bad.append("ERROR line without code or message: %r" % rec["line"])
    if os.path.exists(out_path):
        bad.append("an output file was written for a refused input")
    if bad:
        rep.fail("%s: refused badly" % name, bad)
    else:
        rep.ok()


def run_seq(args, files, tmp, rep, go):
    outdir = os.path.join(tmp, "out")
    os.makedirs(outdir)
    cmd = [args.pdelta, "seq"] + pdelta_opts(args) + ["-o", outdir] + files
    t0 = time.time()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=RUN_TIMEOUT)
    elapsed = time.time() - t0
    stdout = proc.stdout.decode(errors="replace")
    stderr = proc.stderr.decode(errors="replace")
    if args.verbose:
        print("ran %s in %.2fs, exit %d" % (" ".join(cmd[:8]) + (" ..." if len(cmd) > 8 else ""), elapsed,
                                             proc.returncode))
    if proc.returncode < 0 or proc.returncode >= 128:
        rep.fail("pdelta seq crashed (exit %d)" % proc.returncode, stderr.strip().splitlines()[-10:])
        return
    san = sanitizer_report(stderr)
    if san:
        rep.fail("pdelta seq: sanitizer report", san)
    lines = [l for l in stdout.splitlines() if l.strip()]
    recs = [parse_status_line(l) for l in lines]
    if len(recs) != len(files) or any(r is None for r in recs):
        rep.fail("expected %d status lines, got %d" % (len(files), len(lines)),
                 lines[:10] + ["stderr: " + l for l in stderr.strip().splitlines()[-10:]])
        return
    orc = oracle.Oracle(args.first or "keep", oracle.parse_overrides(args.type))
    overrides = oracle.parse_overrides(args.type)
    any_error = False
    go_idx = go_pick(len(files), args.go_sample)
    for idx, (path, rec) in enumerate(zip(files, recs)):
        name = os.path.basename(path)
        if rec["name"] != name:
            rep.fail("status line names %r, expected %r" % (rec["name"], name))
            return
        out_path = os.path.join(outdir, name)
        if rec["status"] == "ERROR":
            any_error = True
            must = name in args.expect_error
            if not must and name not in args.maybe_error:
                rep.fail("%s: refused a valid input: %s" % (name, rec["line"]))
            else:
                check_error_line(rep, name, rec, out_path, must)
            continue  # the oracle's state stays unchanged, like the engine's
        if name in args.expect_error:
            rep.fail("%s: accepted an input that must be refused: %s" % (name, rec["line"]))
            continue
        res, err = load_resolved(path)
        if res is None:
            rep.fail("%s: engine accepted a file the oracle cannot read (%s)" % (name, err))
            continue
        exp = orc.step(res)
        judge_output(rep, name, rec, exp, path, out_path, res, overrides, args.lenient_minimal,
                     go if idx in go_idx else None)
    want_rc = 1 if any_error else 0
    if proc.returncode != want_rc:
        rep.fail("pdelta seq exit status %d, expected %d" % (proc.returncode, want_rc),
                 stderr.strip().splitlines()[-5:])
    else:
        rep.ok()


def run_diff(args, files, tmp, rep, go):
    """Every consecutive pair through `pdelta diff`, judged by a two-step oracle."""
    overrides = oracle.parse_overrides(args.type)
    prev_path, prev_res = None, None
    for i, path in enumerate(files):
        name = os.path.basename(path)
        if prev_path is None:
            res, err = load_resolved(path)
            prev_path, prev_res = (path, res) if res else (None, None)
            continue
        out_path = os.path.join(tmp, "diff-%03d-%s" % (i, name))
        cmd = [args.pdelta, "diff"] + pdelta_opts(args) + [prev_path, path, "-o", out_path]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=RUN_TIMEOUT)
        stdout = proc.stdout.decode(errors="replace").strip()
        stderr = proc.stderr.decode(errors="replace").strip()
        if proc.returncode < 0 or proc.returncode >= 128:
            rep.fail("pdelta diff %s crashed (exit %d)" % (name, proc.returncode), stderr.splitlines()[-10:])
            continue
        san = sanitizer_report(stderr)
        if san:
            rep.fail("pdelta diff %s: sanitizer report" % name, san)
            continue
        expect_err = name in args.expect_error
        if proc.returncode != 0:
            bad = []
            if not (expect_err or name in args.maybe_error):
                bad.append("refused a valid input")
            if not stderr:
                bad.append("no message on stderr")
            if os.path.exists(out_path):
                bad.append("output file created despite the error")
            if bad:
                rep.fail("diff %s: exit %d: %s" % (name, proc.returncode, "; ".join(bad)), stderr.splitlines()[-3:])
            else:
                rep.ok()
            continue
        if expect_err:
            rep.fail("diff %s: accepted an input that must be refused: %s" % (name, stdout))
            continue
        res, err = load_resolved(path)
        if res is None:
            rep.fail("diff %s: engine accepted a file the oracle cannot read (%s)" % (name, err))
            continue
        recs = [parse_status_line(l) for l in stdout.splitlines() if l.strip()]
        if len(recs) != 1 or recs[0] is None or recs[0]["status"] == "ERROR":
            rep.fail("diff %s: expected one status line, got %r" % (name, stdout[:300]))
            continue
        orc = oracle.Oracle(args.first or "keep", overrides)
        orc.step(prev_res)
        exp = orc.step(res)
        judge_output(rep, "diff " + name, recs[0], exp, path, out_path, res, overrides, args.lenient_minimal, go)
        prev_path, prev_res = path, res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pdelta", required=True)
    ap.add_argument("--first", choices=("keep", "drop"))
    ap.add_argument("--type", action="append", default=[])
    ap.add_argument("--expect-error", action="append", default=[])
    ap.add_argument("--maybe-error", action="append", default=[])
    ap.add_argument("--extra", default="", help="extra pdelta options, one shell-quoted string")
    ap.add_argument("--mode", choices=("seq", "diff"), default="seq")
    ap.add_argument("--no-go", action="store_true")
    ap.add_argument("--go-sample", type=int, default=0, metavar="K",
                    help="run go tool pprof on K evenly spread outputs only (default: all)")
    ap.add_argument("--lenient-minimal", action="store_true",
                    help="report unreferenced tables/strings as warnings, not failures")
    ap.add_argument("--label", default=None)
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("files", nargs="+")
    args = ap.parse_args(argv)
    label = args.label or os.path.basename(os.path.dirname(os.path.abspath(args.files[0])))
    rep = Report(label)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="check_seq.") as tmp:
        files = stage_inputs(args.files, tmp)
        go = GoChecker(not args.no_go, tmp)
        if args.mode == "seq":
            run_seq(args, files, tmp, rep, go)
        else:
            run_diff(args, files, tmp, rep, go)
        go.finish(rep)
    print("check_seq %s (%s, %.1fs): %d passed, %d failed" % (label, args.mode, time.time() - t0, rep.passed,
                                                             rep.failed))
    return 0 if rep.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
