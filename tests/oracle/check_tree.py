#!/usr/bin/python3
"""Judges a delivery tree of `pdelta scrape` against the oracle.

  check_tree.py [--first keep|drop] [--expect-resets STREAM=N[..M] ...] [--rebase STREAM=NNN ...]
                [--min-files N] IN_ROOT OUT_ROOT

IN_ROOT holds the cumulative profiles as scraped (--save-input: IN_ROOT/NAME/TYPE/NNN.pb.gz),
OUT_ROOT the deltas delivered for them (--out-dir, same layout). For every stream the oracle
replays the inputs in order and each output must be structurally valid (no negative values,
no all-zero samples in delta columns) and semantically equal to what the oracle expects:
so no interval is lost (a missing output, or a delta over a longer window, differs) and
none is counted twice. --expect-resets NAME/TYPE=N (or =N..M): exactly N (N to M) BASELINE
resets in that stream, counted by the oracle from the inputs. --rebase NAME/TYPE=NNN: output NNN is a BASELINE the service chose (moved to local
mode: the whole profile; state-lost after a server restore: empty), judged for validity only
(no negative value); the outputs after it are deltas from input NNN on, as the oracle's.
Prints one line per stream and "check_tree: N passed, N failed".
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oracle  # noqa: E402
import pprof_pb  # noqa: E402


def streams(root):
    for name in sorted(os.listdir(root)):
        d = os.path.join(root, name)
        if not os.path.isdir(d):
            continue
        for typ in sorted(os.listdir(d)):
            if os.path.isdir(os.path.join(d, typ)):
                yield "%s/%s" % (name, typ)


def check_stream(rel, in_root, out_root, first, rebases=()):
    ind, outd = os.path.join(in_root, rel), os.path.join(out_root, rel)
    files = sorted(f for f in os.listdir(ind) if f.endswith(".pb.gz"))
    problems, resets = [], 0
    if not files:
        return ["no inputs"], 0, 0
    if [int(f[:-6]) for f in files] != list(range(len(files))):
        problems.append("inputs are not 000..%03d: %s" % (len(files) - 1, files[:3]))
    o = oracle.Oracle(first=first)
    for i, f in enumerate(files):
        exp = o.step(oracle.resolve(pprof_pb.load(os.path.join(ind, f))))
        if ("BASELINE", "reset") in exp.statuses and len(exp.statuses) == 1:
            resets += 1
        outp = os.path.join(outd, f)
        if not os.path.exists(outp):
            problems.append("%s: no output" % f)
            continue
        p = pprof_pb.load(outp)
        names = [t for t, _ in oracle.resolve(p).types if oracle.policy_of(t, {}) == "delta"]
        got, probs = oracle.check_output(p, names, minimal=True)
        if probs:
            problems.append("%s: invalid output: %s" % (f, "; ".join(probs[:3])))
            continue
        if i in rebases:
            continue
        d = oracle.diff_sem(exp.sem, got)
        if d:
            problems.append("%s: differs from the oracle (%s):\n    %s" % (f, exp.note, "\n    ".join(d[:6])))
    extra = sorted(set(os.listdir(outd)) - set(files)) if os.path.isdir(outd) else []
    extra = [f for f in extra if f.endswith(".pb.gz")]
    if extra:
        problems.append("outputs without an input: %s" % extra[:5])
    return problems, resets, len(files)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--first", default="keep")
    ap.add_argument("--expect-resets", action="append", default=[])
    ap.add_argument("--rebase", action="append", default=[])
    ap.add_argument("--min-files", type=int, default=1)
    ap.add_argument("in_root")
    ap.add_argument("out_root")
    args = ap.parse_args(argv)
    want = dict(x.split("=", 1) for x in args.expect_resets)
    rebase = {}
    for x in args.rebase:
        rel, idx = x.split("=", 1)
        rebase.setdefault(rel, set()).add(int(idx))
    passed = failed = 0
    seen = set()
    for rel in streams(args.in_root):
        seen.add(rel)
        problems, resets, n = check_stream(rel, args.in_root, args.out_root, args.first, rebase.get(rel, ()))
        if n < args.min_files:
            problems.append("only %d files (want >= %d)" % (n, args.min_files))
        if rel in want:
            lo, _, hi = want[rel].partition("..")
            if not int(lo) <= resets <= int(hi or lo):
                problems.append("%d BASELINE resets, expected %s" % (resets, want[rel]))
        if problems:
            failed += 1
            print("FAIL %s (%d files, %d resets)" % (rel, n, resets))
            for p in problems[:8]:
                print("  " + p)
        else:
            passed += 1
            print("ok   %s: %d deltas equal the oracle's, %d resets" % (rel, n, resets))
    for rel in sorted(set(want) - seen):
        failed += 1
        print("FAIL %s: no such stream" % rel)
    if passed + failed == 0:
        failed += 1
        print("FAIL no streams under %s" % args.in_root)
    print("check_tree: %d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
