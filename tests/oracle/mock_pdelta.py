#!/usr/bin/python3
"""A stand-in for bin/pdelta, used only to test the test harness itself.

It speaks the CLI contract check_seq.py expects (`seq`, `diff`, the status line, ERROR
lines, exit codes) and writes real pprof outputs by profile surgery: samples with the same
identity merged, delta fields subtracted, unreferenced locations/functions/mappings pruned
and the string table compacted. With MOCK_BUG=<name> it misbehaves on purpose so that
selftest.py can prove check_seq.py notices:

  negate    gauge columns come out as -value (the golang/go#57765 mistake)
  nodedup   duplicate samples are not summed before the diff
  byid      identity uses location ids instead of addresses/frames
  keepzero  all-zero samples are not dropped
  duration  duration_nanos of a DELTA is left as the input's own
  noreset   counters going down are clamped to 0 instead of a reset
  nolimits  ignores every --max-* limit
"""

import argparse
import gzip
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oracle  # noqa: E402
import pprof_pb  # noqa: E402

BUG = os.environ.get("MOCK_BUG", "")


class Refused(Exception):
    def __init__(self, code, msg):
        super().__init__(msg)
        self.code = code


def read_input(path, lim):
    data = open(path, "rb").read()
    if not data:
        raise Refused("bad_input", "empty file")
    if lim.max_input and len(data) > lim.max_input and BUG != "nolimits":
        raise Refused("too_large", "input is %d bytes, limit %d" % (len(data), lim.max_input))
    if data[:2] == pprof_pb.GZIP_MAGIC:
        try:
            with gzip.GzipFile(fileobj=__import__("io").BytesIO(data)) as f:
                cap = lim.max_inflated if BUG != "nolimits" else 1 << 40
                raw = f.read(cap + 1)
                if len(raw) > cap:
                    raise Refused("too_large", "inflated size over %d" % cap)
                f.read()  # drain to reach the CRC check of the trailer
        except Refused:
            raise
        except Exception as e:  # noqa: BLE001
            raise Refused("bad_gzip", str(e)) from None
    else:
        raw = data
    p = pprof_pb.Profile()
    try:
        p.ParseFromString(raw)
    except Exception as e:  # noqa: BLE001
        raise Refused("bad_proto", str(e)) from None
    check_limits(p, lim)
    try:
        oracle.resolve(p)
    except oracle.OracleError as e:
        raise Refused("bad_profile", str(e)) from None
    if any(i < 0 or i >= len(p.string_table) for s in p.sample for lab in s.label for i in (lab.key, lab.str)):
        raise Refused("bad_profile", "label string index out of range")
    return p, len(data)


def check_limits(p, lim):
    if BUG == "nolimits":
        return
    if lim.max_samples and len(p.sample) > lim.max_samples:
        raise Refused("limit", "too many samples")
    if lim.max_depth and any(len(s.location_id) > lim.max_depth for s in p.sample):
        raise Refused("limit", "stack too deep")
    if lim.max_string and any(len(x.encode()) > lim.max_string for x in p.string_table):
        raise Refused("limit", "string too long")


def sample_keys(p):
    """Identity key per sample index, following the oracle's definition (or a buggy one)."""
    st = list(p.string_table)
    ident, _ = oracle._location_keys(p, st)
    keys = []
    for s in p.sample:
        raw = tuple((x.key, x.str, x.num, x.num_unit) for x in s.label)
        lab = oracle._label_id(raw, st) if raw else 0
        locs = tuple(s.location_id) if BUG == "byid" else tuple(ident[i] for i in s.location_id)
        keys.append((locs, lab))
    return keys


class Stream:
    def __init__(self, first, overrides):
        self.first = first
        self.overrides = overrides
        self.prev = None  # (types, period_type, period, time, {key: {type: value}})

    def process(self, p):
        st = p.string_table
        types = [(st[t.type], st[t.unit]) for t in p.sample_type]
        ptype = (st[p.period_type.type], st[p.period_type.unit])
        delta = [oracle.policy_of(t, self.overrides) == "delta" for t, _ in types]
        keys = sample_keys(p)
        summed, first_idx = {}, {}
        for i, (k, s) in enumerate(zip(keys, p.sample)):
            if k in summed and BUG != "nodedup":
                summed[k] = [a + b for a, b in zip(summed[k], s.value)]
            else:
                if k in summed:
                    k = (k, i)
                summed[k] = list(s.value)
                first_idx[k] = i
        cur = (set(types), ptype, p.period, p.time_nanos,
               {k: dict(zip(types, v)) for k, v in summed.items()})
        prev, self.prev = self.prev, cur
        if not any(delta):
            return "DELTA" if prev else "BASELINE", "-" if prev else "first", summed, first_idx, p.duration_nanos
        if prev is None:
            if self.first == "drop":
                return "BASELINE", "first", {}, first_idx, p.duration_nanos
            return "BASELINE", "first", summed, first_idx, p.duration_nanos
        reset = prev[0] != cur[0] or prev[1] != ptype or prev[2] != p.period or p.time_nanos < prev[3]
        out = {}
        for k, v in summed.items():
            pv = prev[4].get(k, {})
            nv = []
            for j, (t, d) in enumerate(zip(types, delta)):
                if d:
                    x = v[j] - pv.get(t, 0)
                    if x < 0:
                        if BUG == "noreset":
                            x = 0
                        else:
                            reset = True
                    nv.append(x)
                else:
                    nv.append(-v[j] if BUG == "negate" else v[j])
            out[k] = nv
        if reset:
            return "BASELINE", "reset", summed, first_idx, p.duration_nanos
        dur = p.duration_nanos if BUG == "duration" else p.time_nanos - prev[3]
        return "DELTA", "-", out, first_idx, dur


def build_output(p, values, first_idx, duration):
    q = pprof_pb.Profile()
    q.CopyFrom(p)
    del q.sample[:]
    for k, v in values.items():
        if not any(v) and BUG != "keepzero":
            continue
        src = p.sample[first_idx[k]]
        s = q.sample.add()
        s.location_id.extend(src.location_id)
        s.value.extend(v)
        for lab in src.label:
            s.label.add().CopyFrom(lab)
    q.duration_nanos = duration
    prune(q)
    return q


def prune(q):
    used_locs = {i for s in q.sample for i in s.location_id}
    keep = [l for l in q.location if l.id in used_locs]
    used_fns = {ln.function_id for l in keep for ln in l.line}
    used_maps = {l.mapping_id for l in keep}
    _keep_only(q.location, used_locs)
    _keep_only(q.function, used_fns)
    _keep_only(q.mapping, used_maps)
    compact_strings(q)


def _keep_only(field, ids):
    items = [x for x in field if x.id in ids]
    copies = []
    for x in items:
        c = type(x)()
        c.CopyFrom(x)
        copies.append(c)
    del field[:]
    field.extend(copies)


def compact_strings(q):
    old = list(q.string_table)
    new, index = [""], {"": 0}

    def m(i):
        s = old[i]
        if s not in index:
            index[s] = len(new)
            new.append(s)
        return index[s]

    for t in list(q.sample_type) + [q.period_type]:
        t.type, t.unit = m(t.type), m(t.unit)
    q.drop_frames, q.keep_frames, q.default_sample_type = m(q.drop_frames), m(q.keep_frames), m(q.default_sample_type)
    q.doc_link = m(q.doc_link)
    c = [m(x) for x in q.comment]
    del q.comment[:]
    q.comment.extend(c)
    for s in q.sample:
        for lab in s.label:
            lab.key, lab.str, lab.num_unit = m(lab.key), m(lab.str), m(lab.num_unit)
    for f in q.function:
        f.name, f.system_name, f.filename = m(f.name), m(f.system_name), m(f.filename)
    for mp in q.mapping:
        mp.filename, mp.build_id = m(mp.filename), m(mp.build_id)
    del q.string_table[:]
    q.string_table.extend(new)


def run_one(stream, path, out_path, lim):
    t0 = time.time()
    p, nbytes = read_input(path, lim)
    status, reason, vals, first_idx, dur = stream.process(p)
    q = build_output(p, vals, first_idx, dur)
    data = pprof_pb.dump_bytes(q)
    with open(out_path, "wb") as f:
        f.write(data)
    return "%s %s %s samples_in=%d samples_out=%d bytes_in=%d bytes_out=%d ms=%.3f" % (
        os.path.basename(path), status, reason, len(p.sample), len(q.sample), nbytes, len(data),
        (time.time() - t0) * 1000)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=("seq", "diff"))
    ap.add_argument("--first", default="keep")
    ap.add_argument("--type", action="append", default=[])
    ap.add_argument("-o", dest="out", required=True)
    for name in ("max-input", "max-inflated", "max-samples", "max-depth", "max-string"):
        ap.add_argument("--" + name, type=int, default=0)
    ap.add_argument("files", nargs="+")
    args = ap.parse_args(argv)
    if not args.max_inflated:
        args.max_inflated = 64 << 20
    stream = Stream(args.first, oracle.parse_overrides(args.type))
    if args.cmd == "diff":
        prev, cur = args.files
        try:
            p, _ = read_input(prev, args)
            stream.process(p)
            print(run_one(stream, cur, args.out, args))
        except Refused as e:
            print("pdelta: %s: %s" % (e.code, e), file=sys.stderr)
            return 1
        return 0
    rc = 0
    for path in args.files:
        out_path = os.path.join(args.out, os.path.basename(path))
        try:
            print(run_one(stream, path, out_path, args))
        except Refused as e:
            print("%s ERROR %s %s" % (os.path.basename(path), e.code, e))
            rc = 1
        sys.stdout.flush()
    return rc


if __name__ == "__main__":
    sys.exit(main())
