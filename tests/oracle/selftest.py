#!/usr/bin/python3
"""Self-test of the oracle and of check_seq.py, without the C engine.

  selftest.py [--testdata DIR] [--quick] [--full] [--no-mock]

1. equal(p, p) is empty and equal(p, p') is not for a range of single modifications.
2. Telescoping: for every sequence without a reset, the sum of the oracle's deltas of
   files 1..n equals cumulative(n) - cumulative(0) per key on the delta columns, and the
   gauge columns of every delta equal the current values.
3. Invariance: renumbered ids, split duplicates, reordered columns and zeroed addresses
   give the same oracle outputs as the untouched sequence; the reset cases reset where
   they must.
4. Harness: mock_pdelta.py passes check_seq.py on real and synthetic sequences, and every
   bug it can inject (MOCK_BUG) is caught.
Prints "selftest: N passed, N failed"; exit status 0 only when all passed.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gen_variants  # noqa: E402
import oracle  # noqa: E402
import pprof_pb  # noqa: E402

PASSED = [0]
FAILED = [0]


def check(cond, what, details=()):
    if cond:
        PASSED[0] += 1
        return True
    FAILED[0] += 1
    print("FAIL %s" % what)
    for d in list(details)[:10]:
        print("    %s" % d)
    return False


def seq_files(testdata, name):
    d = os.path.join(testdata, "profiles", name)
    if not os.path.isdir(d):
        return []
    return [os.path.join(d, f) for f in sorted(os.listdir(d)) if f.endswith(".pb.gz")]


def test_equal(testdata):
    path = seq_files(testdata, "heap-small")[3]
    p = pprof_pb.load(path)
    check(oracle.equal(p, p) == [], "equal(p, p)")
    check(oracle.validate(p, minimal=False) == [] or True, "validate runs")
    mods = {
        "value+1": lambda q: q.sample[7].value.__setitem__(1, q.sample[7].value[1] + 1),
        "drop a sample": lambda q: q.sample.__delitem__(12),
        "time": lambda q: setattr(q, "time_nanos", q.time_nanos + 1),
        "duration": lambda q: setattr(q, "duration_nanos", 5),
        "period": lambda q: setattr(q, "period", 7),
        "label num": lambda q: setattr(next(s for s in q.sample if s.label and any(s.value)).label[0], "num", 123457),
        "function name": lambda q: q.string_table.__setitem__(q.function[0].name, "renamed"),
        "line number": lambda q: setattr(q.location[3].line[0], "line", 99999),
        "swap frames": lambda q: _swap_frames(q),
        "type name": lambda q: q.string_table.__setitem__(q.sample_type[0].type, "alloc_x"),
        "default_sample_type": lambda q: setattr(q, "default_sample_type", q.sample_type[1].type),
    }
    for name, mod in mods.items():
        q = pprof_pb.Profile()
        q.CopyFrom(p)
        mod(q)
        check(oracle.equal(p, q) != [], "equal() notices: " + name)
    # Equal modulo representation: renumbering, duplicates, column order, zero samples.
    import random
    rng = random.Random(7)
    for name, mod in (("renumber", lambda q: gen_variants.renumber(q, rng)),
                      ("split duplicates", lambda q: gen_variants.split_duplicates(q, rng)),
                      ("permute columns", lambda q: gen_variants.permute_columns(q, [3, 1, 0, 2]))):
        q = pprof_pb.Profile()
        q.CopyFrom(p)
        mod(q)
        diffs = oracle.equal(p, q)
        check(diffs == [], "equal() ignores: " + name, diffs)


def _swap_frames(q):
    s = next(s for s in q.sample if any(s.value) and len(s.location_id) > 3)
    ids = list(s.location_id)
    ids[1], ids[2] = ids[2], ids[1]
    del s.location_id[:]
    s.location_id.extend(ids)


def oracle_run(files, first="keep", overrides=None):
    orc = oracle.Oracle(first, overrides or {})
    out = []
    for f in files:
        out.append(orc.step(oracle.resolve(pprof_pb.load(f))))
    return out


def test_telescoping(testdata, names):
    for name in names:
        files = seq_files(testdata, name)
        res0 = oracle.resolve(pprof_pb.load(files[0]))
        orc = oracle.Oracle()
        first = orc.step(res0)
        check(("BASELINE", "first") in first.statuses, "%s: first is BASELINE first" % name)
        cols = first.sem.cols
        dcols = [i for i, (t, _) in enumerate(cols) if oracle.policy_of(t, {}) == "delta"]
        gcols = [i for i in range(len(cols)) if i not in dcols]
        acc = {}
        resets = 0
        last = None
        for f in files[1:]:
            last = oracle.resolve(pprof_pb.load(f))
            e = orc.step(last)
            if e.statuses[0] != ("DELTA", "-"):
                resets += 1
            cur = oracle.semantic(last).data
            bad = [k for k, v in e.sem.data.items() if any(v[i] != cur.get(k, (0,) * len(cols))[i] for i in gcols)]
            check(not bad, "%s/%s: gauge columns pass through" % (name, os.path.basename(f)),
                  [oracle._fmt_key(k) for k in bad[:3]])
            for k, v in e.sem.data.items():
                a = acc.setdefault(k, [0] * len(cols))
                for i in dcols:
                    a[i] += v[i]
        if not dcols:
            check(resets == 0 or True, "%s: pass-through" % name)
            continue
        if not check(resets == 0, "%s: no reset in a real sequence" % name):
            continue
        s0, sn = oracle.semantic(res0).data, oracle.semantic(last).data
        zero = (0,) * len(cols)
        bad = []
        for k in set(sn) | set(s0) | set(acc):
            want = [sn.get(k, zero)[i] - s0.get(k, zero)[i] for i in dcols]
            got = [acc.get(k, list(zero))[i] for i in dcols]
            if want != got:
                bad.append("%s want %s got %s" % (oracle._fmt_key(k), want, got))
        check(not bad, "%s: sum of deltas == cumulative(n) - cumulative(0) (%d keys)" % (name, len(acc)), bad)


def sems_equal(a, b, what):
    ok = True
    for i, (x, y) in enumerate(zip(a, b)):
        diffs = oracle.diff_sem(x.sem, y.sem)
        ok &= check(not diffs and x.statuses == y.statuses, "%s: file %d same as original" % (what, i), diffs)
    return ok


def test_variants(testdata, vdir):
    manifest = read_manifest(vdir)
    orig = {
        "heap": oracle_run(seq_files(testdata, "heap-small")[:6]),
        "block": oracle_run(seq_files(testdata, "block-small")[:5]),
        "mutex": oracle_run(seq_files(testdata, "mutex-small")[:5]),
    }
    for name, kind in (("renumber-heap", "heap"), ("renumber-block", "block"), ("renumber-mutex", "mutex"),
                       ("dups-heap", "heap"), ("dups-block", "block"), ("reorder-heap", "heap"),
                       ("reorder-block", "block"), ("addr0-heap", "heap"), ("addr0-block", "block"),
                       ("dup-tables", "heap"), ("dup-tables-addr0", "heap"), ("unpacked", "heap")):
        files = [os.path.join(vdir, f) for f in manifest[name][1]]
        sems_equal(orig[kind], oracle_run(files), name)
    meta = oracle_run([os.path.join(vdir, f) for f in manifest["meta"][1]])
    sems_equal(meta, oracle_run([os.path.join(vdir, f) for f in manifest["field-order"][1]]), "field-order")
    check(meta[0].sem.meta["doc_link"] == "https://example.com/pdelta/doc" and len(meta[0].sem.meta["comment"]) == 2,
          "meta: comment and doc_link resolved")
    plain = oracle_run([os.path.join(vdir, f) for f in manifest["addr0-heap"][1]])
    for kind in gen_variants.TWIN_KINDS:
        name = "twin-" + kind.replace("_", "-")
        twin = oracle_run([os.path.join(vdir, f) for f in manifest[name][1]])
        check(all(len(twin[i].sem.data) > len(plain[i].sem.data) for i in range(4)),
              "%s: the split creates distinct identities" % name)
    big = oracle_run([os.path.join(vdir, f) for f in manifest["bigvalues"][1]])
    check(all(tuple(x << 30 for x in v) == big[i].sem.data.get(k) for i in range(4)
              for k, v in orig["heap"][i].sem.data.items()), "bigvalues: deltas scale exactly")
    expect_resets = {"splice-heap": [4], "splice-block": [4], "time-back": [3], "counter-back": [3],
                     "period": [2, 3], "schema": [2, 3], "kind-switch": [2], "empty-mid": [],
                     "same-time": [], "labels-heap": [], "labels-block": [], "empty-stack": []}
    for kind in gen_variants.TWIN_KINDS:
        expect_resets["twin-" + kind.replace("_", "-")] = []
    for name, want in expect_resets.items():
        files = [os.path.join(vdir, f) for f in manifest[name][1]]
        got = [i for i, e in enumerate(oracle_run(files)) if e.statuses[0] == ("BASELINE", "reset")]
        check(got == want, "%s: resets at %s (got %s)" % (name, want, got))
    same = oracle_run([os.path.join(vdir, f) for f in manifest["same-time"][1]])
    check(same[2].sem.duration == 0 and all(v[0] == 0 and v[1] == 0 for v in same[2].sem.data.values()),
          "same-time: zero deltas, duration 0")
    drop = oracle_run(seq_files(testdata, "heap-small")[:2], first="drop")
    check(not drop[0].sem.data and drop[1].sem.data, "--first drop empties only the first output")
    gauge = oracle_run(seq_files(testdata, "heap-small")[:2], overrides={"alloc_space": "gauge"})
    plain = oracle_run(seq_files(testdata, "heap-small")[:2])
    i_space = gauge[1].sem.cols.index(("alloc_space", "bytes"))
    check(sum(v[i_space] for v in gauge[1].sem.data.values()) > sum(v[i_space] for v in plain[1].sem.data.values()),
          "--type alloc_space=gauge passes alloc_space through")


def read_manifest(d):
    out = {}
    with open(os.path.join(d, "manifest.txt")) as f:
        for line in f:
            name, args, files = line.rstrip("\n").split("|")
            out[name] = (args, files.split())
    return out


def run_check(files, extra=(), env=None):
    cmd = [sys.executable, os.path.join(HERE, "check_seq.py"), "--pdelta", os.path.join(HERE, "mock_pdelta.py"),
           "--no-go"] + list(extra) + files
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, timeout=600)
    return proc.returncode, proc.stdout.decode(errors="replace")


QUICK_HOSTILE = ("truncated-proto", "bitflip-gz-0", "bitflip-raw-0", "missing-location", "string-oob-label",
                 "deep-stack", "too-many-samples", "gzip-bomb-capped")


def test_harness(testdata, vdir, hdir, full):
    import shlex
    cases = [(seq_files(testdata, "heap-small"), []), (seq_files(testdata, "cpu-small")[:3], []),
             (seq_files(testdata, "heap-small")[:3], ["--first", "drop"]),
             (seq_files(testdata, "heap-small")[:3], ["--type", "alloc_space=gauge"]),
             (seq_files(testdata, "heap-small")[:3], ["--mode", "diff"])]
    for name, (args, files) in read_manifest(vdir).items():
        cases.append(([os.path.join(vdir, f) for f in files], shlex.split(args)))
    for name, (args, files) in read_manifest(hdir).items():
        if "bomb" in name and name != "gzip-bomb-capped":
            continue  # the Python mock would inflate 2 GB; the C engine is tested on these
        if not full and name not in QUICK_HOSTILE:
            continue
        cases.append(([os.path.join(hdir, f) for f in files], shlex.split(args)))
        if full:
            cases.append(([os.path.join(hdir, f) for f in files], shlex.split(args) + ["--mode", "diff"]))
    for files, extra in cases:
        rc, out = run_check(files, extra)
        check(rc == 0, "mock passes check_seq %s %s" % (" ".join(extra), os.path.dirname(files[0])),
              out.strip().splitlines()[-8:])
    bugs = {
        "negate": seq_files(testdata, "heap-small")[:2],
        "nodedup": [os.path.join(vdir, f) for f in read_manifest(vdir)["dups-heap"][1]],
        "byid": [os.path.join(vdir, f) for f in read_manifest(vdir)["renumber-heap"][1]],
        "keepzero": seq_files(testdata, "block-small")[:3],
        "duration": seq_files(testdata, "block-small")[:2],
        "noreset": [os.path.join(vdir, f) for f in read_manifest(vdir)["splice-heap"][1]],
    }
    for bug, files in bugs.items():
        rc, out = run_check(files, env=dict(os.environ, MOCK_BUG=bug))
        check(rc != 0 and "FAIL" in out, "MOCK_BUG=%s is caught" % bug, out.strip().splitlines()[-5:])
    hm = read_manifest(hdir)
    for case in ("deep-stack", "too-many-samples", "max-inflated", "gzip-bomb-capped"):
        args, files = hm[case]
        rc, out = run_check([os.path.join(hdir, f) for f in files], shlex.split(args),
                            env=dict(os.environ, MOCK_BUG="nolimits"))
        check(rc != 0, "MOCK_BUG=nolimits is caught on %s" % case, out.strip().splitlines()[-3:])


def test_speed(testdata):
    files = seq_files(testdata, "heap-large")
    if not files:
        return
    t0 = time.time()
    p = pprof_pb.load(files[-1])
    r = oracle.resolve(p)
    oracle.semantic(r)
    dt = time.time() - t0
    print("info: load+resolve+semantic of %s (%d samples): %.2fs" % (files[-1], len(p.sample), dt))
    check(dt < 15, "oracle handles the biggest file in < 15 s")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--testdata", default=gen_variants.DEFAULT_TESTDATA)
    ap.add_argument("--quick", action="store_true", help="skip medium sequences and the speed check")
    ap.add_argument("--no-mock", action="store_true", help="skip the check_seq/mock harness test")
    ap.add_argument("--full", action="store_true", help="run the harness on every hostile case, both modes")
    args = ap.parse_args(argv)
    t0 = time.time()
    test_equal(args.testdata)
    names = [n + "-small" for n in ("heap", "block", "mutex", "goroutine", "cpu")]
    if not args.quick:
        names += [n + "-medium" for n in ("heap", "block", "mutex")]
    test_telescoping(args.testdata, names)
    with tempfile.TemporaryDirectory(prefix="oracle-selftest.") as tmp:
        vdir, hdir = os.path.join(tmp, "v"), os.path.join(tmp, "h")
        gen_variants.main(["--testdata", args.testdata, vdir])
        gen_variants.main(["--testdata", args.testdata, "--hostile", hdir])
        test_variants(args.testdata, vdir)
        if not args.no_mock:
            test_harness(args.testdata, vdir, hdir, args.full)
    if not args.quick:
        test_speed(args.testdata)
    print("selftest (%.1fs): %d passed, %d failed" % (time.time() - t0, PASSED[0], FAILED[0]))
    return 0 if FAILED[0] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
