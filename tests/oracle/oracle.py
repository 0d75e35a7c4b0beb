#!/usr/bin/python3
"""Reference semantics of pdelta (DESIGN.md section 2), written independently of the C engine.

The oracle works on *resolved* profiles: every sample is turned into an identity key built
from strings and addresses only (never location/function ids), so renumbered ids, reordered
tables and duplicate samples cannot fool it. It is deliberately simple and slow-but-adequate:
dicts of tuples, no hashing tricks, no shared code with common/*.c.

Main pieces:
  resolve(profile)         -> Resolved (identity -> summed values, plus semantic keys)
  Oracle(first, overrides) -> .step(resolved) -> Expect(status, reason, sem)
  semantic(profile)        -> Sem (what equal() compares)
  diff_sem(expected, got)  -> list of human-readable differences ([] = equal)
  equal(a, b)              -> diff_sem(semantic(a), semantic(b))
  validate(profile, ...)   -> list of structural problems of an engine output

Command line (debugging aid):
  oracle.py show FILE                 summary of a profile
  oracle.py equal A B                 semantic diff of two profiles
  oracle.py seq [--first keep|drop] [--type NAME=delta|gauge] FILE...
                                      expected status line per file
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pprof_pb  # noqa: E402

DELTA_PRESETS = frozenset(("alloc_objects", "alloc_space", "contentions", "delay"))
MAX_DIFF_LINES = 20


class OracleError(Exception):
    """The oracle itself cannot make sense of an input (it is not a valid profile)."""


def policy_of(type_name, overrides):
    if type_name in overrides:
        return overrides[type_name]
    return "delta" if type_name in DELTA_PRESETS else "gauge"


def parse_overrides(items):
    out = {}
    for item in items or ():
        name, sep, pol = item.partition("=")
        if not sep or pol not in ("delta", "gauge") or not name:
            raise ValueError("bad --type %r (want NAME=delta|gauge)" % item)
        out[name] = pol
    return out


# ---------------------------------------------------------------------------
# Resolving a profile into identity keys


class Resolved:
    """A profile reduced to what the delta semantics look at.

    types:   list of (type, unit) strings in the file's column order
    vals:    identity key -> list of summed values (file column order)
    eqkey:   identity key -> semantic key (frames as strings, labels) used by equal()
    """

    __slots__ = ("types", "period_type", "period", "time", "duration", "vals", "eqkey",
                 "nsamples", "meta")


def _s(st, idx, what):
    if idx < 0 or idx >= len(st):
        raise OracleError("string index %d out of range (%s, table has %d)" % (idx, what, len(st)))
    return st[idx]


def _meta(p, st):
    return {
        "default_sample_type": _s(st, p.default_sample_type, "default_sample_type"),
        "comment": tuple(_s(st, c, "comment") for c in p.comment),
        "drop_frames": _s(st, p.drop_frames, "drop_frames"),
        "keep_frames": _s(st, p.keep_frames, "keep_frames"),
        "doc_link": _s(st, p.doc_link, "doc_link"),
    }


# Interning tables shared by every profile resolved in this process: keys built from
# strings become small ints once, so sample keys are cheap tuples of ints that still
# compare equal across profiles (ids and string indices never leak into them).
_IDENT_LOC = {}
_SEM_LOC = {}
_SEM_LOC_REV = []
_LABELS = {(): 0}
_LABELS_REV = [()]


def _intern(table, key, rev=None):
    v = table.get(key)
    if v is None:
        v = table[key] = len(table)
        if rev is not None:
            rev.append(key)
    return v


def _location_keys(p, st):
    """Per location id: (identity id, semantic id), both interned ints.

    Identity: the address when it is not 0, else (mapping file, build id, lines).
    Semantic: (lines, mapping file), plus the address for a location without lines so
    that unsymbolized frames do not all collapse into one key.
    """
    funcs = {}
    for f in p.function:
        funcs[f.id] = (_s(st, f.name, "function.name"), _s(st, f.system_name, "function.system_name"),
                       _s(st, f.filename, "function.filename"))
    maps = {}
    for m in p.mapping:
        maps[m.id] = (_s(st, m.filename, "mapping.filename"), _s(st, m.build_id, "mapping.build_id"))
    ident, sem = {}, {}
    for loc in p.location:
        if loc.mapping_id and loc.mapping_id not in maps:
            raise OracleError("location %d references missing mapping %d" % (loc.id, loc.mapping_id))
        mfile, mbuild = maps.get(loc.mapping_id, ("", ""))
        lines = []
        for ln in loc.line:
            fn = funcs.get(ln.function_id)
            if fn is None:
                raise OracleError("location %d references missing function %d" % (loc.id, ln.function_id))
            lines.append(fn + (ln.line,))
        lines = tuple(lines)
        ikey = ("addr", loc.address) if loc.address else ("noaddr", mfile, mbuild, lines)
        ident[loc.id] = _intern(_IDENT_LOC, ikey)
        skey = (lines, mfile) if lines else (lines, mfile, loc.address)
        sem[loc.id] = _intern(_SEM_LOC, skey, _SEM_LOC_REV)
    return ident, sem


def _label_id(raw, st):
    """Interned id of a label multiset given as raw (key, str, num, num_unit) index tuples."""
    resolved = tuple(sorted((_s(st, k, "label.key"), _s(st, s, "label.str"), n, _s(st, u, "label.num_unit"))
                            for k, s, n, u in raw))
    return _intern(_LABELS, resolved, _LABELS_REV)



def _sample_label_id(sample, labcache, st):
    """_label_id of a sample's labels (0 without labels), cached by their raw indexes."""
    if not sample.label:
        return 0
    raw = tuple([(x.key, x.str, x.num, x.num_unit) for x in sample.label])
    lab = labcache.get(raw)
    if lab is None:
        lab = labcache[raw] = _label_id(raw, st)
    return lab

def resolve(p):
    st = pprof_pb.string_list(p)
    if not st or st[0] != "":
        raise OracleError("string_table[0] must be the empty string")
    r = Resolved()
    r.types = [(_s(st, t.type, "sample_type"), _s(st, t.unit, "sample_type")) for t in p.sample_type]
    if len(set(r.types)) != len(r.types):
        raise OracleError("duplicate sample types %r" % (r.types,))
    r.period_type = (_s(st, p.period_type.type, "period_type"), _s(st, p.period_type.unit, "period_type"))
    r.period = p.period
    r.time = p.time_nanos
    r.duration = p.duration_nanos
    r.meta = _meta(p, st)
    r.nsamples = len(p.sample)
    ident, sem = _location_keys(p, st)
    get_ident, get_sem = ident.__getitem__, sem.__getitem__
    ncol = len(r.types)
    vals, eqkey = {}, {}
    labcache = {}
    for s in p.sample:
        locs = s.location_id
        lab = _sample_label_id(s, labcache, st)
        try:
            k = (tuple(map(get_ident, locs)), lab)
        except KeyError as e:
            raise OracleError("sample references missing location %s" % e) from None
        v = list(s.value)
        if len(v) != ncol:
            raise OracleError("sample has %d values, profile has %d sample types" % (len(v), ncol))
        old = vals.get(k)
        if old is None:
            vals[k] = v
            eqkey[k] = (tuple(map(get_sem, locs)), lab)
        else:
            vals[k] = [a + b for a, b in zip(old, v)]
    r.vals = vals
    r.eqkey = eqkey
    return r


# ---------------------------------------------------------------------------
# Semantic form: what two profiles must agree on to be "equal"


class Sem:
    """cols: sorted (type, unit) names; data: semantic key -> tuple of values in cols order."""

    __slots__ = ("cols", "data", "period_type", "period", "time", "duration", "meta")

    def __repr__(self):
        return "Sem(cols=%r, keys=%d, time=%d, duration=%d)" % (self.cols, len(self.data), self.time,
                                                               self.duration)


def sem_from(res, vals, duration, empty=False):
    """Builds a Sem with res's metadata from identity -> values (file column order)."""
    s = Sem()
    s.cols = tuple(sorted(res.types))
    perm = [res.types.index(c) for c in s.cols]
    s.period_type = res.period_type
    s.period = res.period
    s.time = res.time
    s.duration = duration
    s.meta = res.meta
    data = {}
    if not empty:
        eqkey = res.eqkey
        for k, v in vals.items():
            ek = eqkey[k]
            old = data.get(ek)
            if old is None:
                data[ek] = [v[i] for i in perm]
            else:
                data[ek] = [a + v[i] for a, i in zip(old, perm)]
    s.data = {k: tuple(v) for k, v in data.items() if any(v)}
    return s


def semantic(p):
    res = p if isinstance(p, Resolved) else resolve(p)
    return sem_from(res, res.vals, res.duration)


def _fmt_key(k, maxframes=4):
    """A short readable form of a semantic key: innermost frames and labels."""
    frames, lab_id = k
    names = []
    for loc_id in frames[:maxframes]:
        lines, mfile = _SEM_LOC_REV[loc_id][:2]
        if lines:
            names.append("%s:%d" % (lines[0][0], lines[0][3]))
        else:
            names.append("0x%x@%s" % (_SEM_LOC_REV[loc_id][2], mfile))
    if len(frames) > maxframes:
        names.append("...(%d frames)" % len(frames))
    labels = _LABELS_REV[lab_id]
    lab = ",".join("%s=%s" % (l[0], repr(l[1]) if l[1] else "%d%s" % (l[2], l[3])) for l in labels)
    return "[" + " < ".join(names) + "]" + ("{" + lab + "}" if lab else "")


def diff_sem(exp, got, limit=MAX_DIFF_LINES):
    """Differences between an expected and an actual Sem, capped to `limit` lines."""
    out = []
    if set(exp.cols) != set(got.cols):
        out.append("sample types: expected %s, got %s" % (sorted(exp.cols), sorted(got.cols)))
        return out
    for name in ("period_type", "period", "time", "duration"):
        e, g = getattr(exp, name), getattr(got, name)
        if e != g:
            out.append("%s: expected %r, got %r" % (name, e, g))
    for name in sorted(exp.meta):
        if exp.meta[name] != got.meta.get(name):
            out.append("%s: expected %r, got %r" % (name, exp.meta[name], got.meta.get(name)))
    missing = [k for k in exp.data if k not in got.data]
    extra = [k for k in got.data if k not in exp.data]
    wrong = [k for k in exp.data if k in got.data and exp.data[k] != got.data[k]]
    if missing or extra or wrong:
        out.append("samples: %d expected keys, %d got; %d missing, %d unexpected, %d wrong values "
                   "(cols %s)" % (len(exp.data), len(got.data), len(missing), len(extra), len(wrong),
                                  ",".join(t for t, _ in exp.cols)))
    room = max(limit - len(out), 3)
    for label, keys in (("wrong", wrong), ("missing", missing), ("unexpected", extra)):
        for k in sorted(keys, key=repr)[:max(room // 3, 1)]:
            out.append("  %s %s expected %s got %s" % (label, _fmt_key(k), exp.data.get(k), got.data.get(k)))
    return out[:limit]


def equal(a, b):
    """Semantic comparison of two profiles (or Resolved): [] when equal."""
    return diff_sem(semantic(a), semantic(b))


# ---------------------------------------------------------------------------
# The delta state machine


class Expect:
    """Expected result of one step. statuses: acceptable (STATUS, REASON) pairs."""

    __slots__ = ("statuses", "sem", "note")

    def __init__(self, statuses, sem, note=""):
        self.statuses = statuses
        self.sem = sem
        self.note = note


PASS_STATUSES = (("DELTA", "-"), ("BASELINE", "first"), ("BASELINE", "reset"))


class Oracle:
    """One stream. step() takes a Resolved profile and returns an Expect; state advances."""

    def __init__(self, first="keep", overrides=None):
        if first not in ("keep", "drop"):
            raise ValueError("first policy %r not modelled (keep|drop)" % first)
        self.first = first
        self.overrides = overrides or {}
        self.prev = None

    def delta_cols(self, res):
        return [i for i, (t, _) in enumerate(res.types) if policy_of(t, self.overrides) == "delta"]

    def _reset_reason(self, cur, dcols):
        prev = self.prev
        if set(cur.types) != set(prev.types):
            return "sample types changed %s -> %s" % (prev.types, cur.types)
        if cur.period_type != prev.period_type or cur.period != prev.period:
            return "period changed %s %d -> %s %d" % (prev.period_type, prev.period, cur.period_type,
                                                       cur.period)
        if cur.time < prev.time:
            return "time_nanos went backwards %d -> %d" % (prev.time, cur.time)
        pmap = [(i, prev.types.index(cur.types[i])) for i in dcols]
        pvals = prev.vals
        for k, v in cur.vals.items():
            pv = pvals.get(k)
            if pv is None:
                continue
            for i, j in pmap:
                if v[i] < pv[j]:
                    return "counter %s went down %d -> %d" % (cur.types[i][0], pv[j], v[i])
        return None

    def _delta(self, cur, dcols):
        prev = self.prev
        pmap = [(i, prev.types.index(cur.types[i])) for i in dcols]
        pvals = prev.vals
        out = {}
        for k, v in cur.vals.items():
            pv = pvals.get(k)
            if pv is not None:
                v = list(v)
                for i, j in pmap:
                    v[i] -= pv[j]
            if any(v):
                out[k] = v
        return out

    def step(self, cur):
        dcols = self.delta_cols(cur)
        prev, self.prev = self.prev, cur
        if not dcols:
            # Not cumulative (goroutine, cpu): the profile passes through whole.
            return Expect(PASS_STATUSES, sem_from(cur, cur.vals, cur.duration), "pass-through")
        if prev is None:
            return Expect((("BASELINE", "first"),),
                          sem_from(cur, cur.vals, cur.duration, empty=self.first == "drop"),
                          "first profile, policy " + self.first)
        self.prev = prev
        why = self._reset_reason(cur, dcols)
        if why:
            self.prev = cur
            return Expect((("BASELINE", "reset"),), sem_from(cur, cur.vals, cur.duration), why)
        vals = self._delta(cur, dcols)
        self.prev = cur
        return Expect((("DELTA", "-"),), sem_from(cur, vals, cur.time - prev.time), "delta")


# ---------------------------------------------------------------------------
# Structural validity of an engine output


def _referenced_strings(p):
    refs = {0}
    for t in p.sample_type:
        refs.update((t.type, t.unit))
    refs.update((p.period_type.type, p.period_type.unit, p.drop_frames, p.keep_frames,
                 p.default_sample_type, p.doc_link))
    refs.update(p.comment)
    for s in p.sample:
        for lab in s.label:
            refs.update((lab.key, lab.str, lab.num_unit))
    for m in p.mapping:
        refs.update((m.filename, m.build_id))
    for f in p.function:
        refs.update((f.name, f.system_name, f.filename))
    return refs


def _check_ids(items, what, problems):
    ids = set()
    for it in items:
        if it.id == 0:
            problems.append("%s with id 0" % what)
        elif it.id in ids:
            problems.append("duplicate %s id %d" % (what, it.id))
        ids.add(it.id)
    return ids


def _validate_tables(p, problems):
    """Checks that need no pass over the samples. Returns the set of location ids."""
    st = pprof_pb.string_list(p)
    nst = len(st)
    if nst == 0 or st[0] != "":
        problems.append("string_table[0] is not the empty string")
    bad = sorted(i for i in _referenced_strings(p) if i < 0 or i >= nst)
    if bad:
        problems.append("string indices out of range (table has %d): %s" % (nst, bad[:10]))
    loc_ids = _check_ids(p.location, "location", problems)
    fn_ids = _check_ids(p.function, "function", problems)
    map_ids = _check_ids(p.mapping, "mapping", problems)
    used_fns, used_maps = set(), set()
    for loc in p.location:
        if loc.mapping_id:
            used_maps.add(loc.mapping_id)
        for ln in loc.line:
            used_fns.add(ln.function_id)
    if used_fns - fn_ids:
        problems.append("lines reference missing function ids %s" % sorted(used_fns - fn_ids)[:5])
    if used_maps - map_ids:
        problems.append("locations reference missing mapping ids %s" % sorted(used_maps - map_ids)[:5])
    return loc_ids, fn_ids, map_ids


def _check_minimal(p, used_locs, loc_ids, fn_ids, map_ids, problems):
    live_locs = [loc for loc in p.location if loc.id in used_locs]
    live_fns = {ln.function_id for loc in live_locs for ln in loc.line}
    live_maps = {loc.mapping_id for loc in live_locs if loc.mapping_id}
    if loc_ids - used_locs:
        problems.append("not minimal: %d unreferenced locations" % len(loc_ids - used_locs))
    if fn_ids - live_fns:
        problems.append("not minimal: %d unreferenced functions" % len(fn_ids - live_fns))
    if map_ids - live_maps:
        problems.append("not minimal: %d unreferenced mappings" % len(map_ids - live_maps))
    st = pprof_pb.string_list(p)
    nst = len(st)
    nunref = nst - len(_referenced_strings(p) & set(range(nst)))
    if nunref:
        problems.append("not minimal: %d unreferenced strings" % nunref)
    if len(set(st)) != nst:
        # Only worth a warning: the input itself may carry duplicate strings.
        problems.append("redundant: %d duplicate strings" % (nst - len(set(st))))


def check_output(p, delta_type_names=(), minimal=True, limit=MAX_DIFF_LINES):
    """(Sem or None, problems) for an engine output, in one pass over the samples.

    Problems: referential integrity, string indices, string_table[0] == "", value counts,
    all-zero samples and negative values in delta columns (DESIGN.md 2.3/2.4) and, when
    minimal, anything unreferenced carried along (DESIGN.md 2.6). The Sem is None when the
    structure is too broken to resolve."""
    problems = []
    loc_ids, fn_ids, map_ids = _validate_tables(p, problems)
    if problems:
        return None, problems[:limit]
    st = pprof_pb.string_list(p)
    try:
        types = [(st[t.type], st[t.unit]) for t in p.sample_type]
        _, sem = _location_keys(p, st)
        meta = _meta(p, st)
    except OracleError as e:
        return None, [str(e)]
    ncol = len(types)
    dcols = [i for i, (t, _) in enumerate(types) if t in delta_type_names]
    used_locs = set()
    nzero = nneg = nbadlen = 0
    data = {}
    labcache = {}
    get_sem = sem.__getitem__
    missing = set()
    for smp in p.sample:
        locs = smp.location_id
        used_locs.update(locs)
        v = list(smp.value)
        if len(v) != ncol:
            nbadlen += 1
            continue
        if not any(v):
            nzero += 1
        for i in dcols:
            if v[i] < 0:
                nneg += 1
                break
        lab = _sample_label_id(smp, labcache, st)
        try:
            k = (tuple(map(get_sem, locs)), lab)
        except KeyError:
            missing.update(i for i in locs if i not in sem)
            continue
        old = data.get(k)
        data[k] = v if old is None else [a + b for a, b in zip(old, v)]
    if nbadlen:
        problems.append("%d samples with a value count != %d sample types" % (nbadlen, ncol))
    if missing:
        problems.append("samples reference %d missing location ids, e.g. %s" % (len(missing), sorted(missing)[:5]))
    if nzero:
        problems.append("%d all-zero samples emitted (should be dropped)" % nzero)
    if nneg:
        problems.append("%d samples with a negative delta value" % nneg)
    if minimal:
        _check_minimal(p, used_locs, loc_ids, fn_ids, map_ids, problems)
    if len(set(types)) != len(types):
        problems.append("duplicate sample types %r" % (types,))
        return None, problems[:limit]
    out = Sem()
    out.cols = tuple(sorted(types))
    perm = [types.index(c) for c in out.cols]
    out.period_type = (st[p.period_type.type], st[p.period_type.unit])
    out.period = p.period
    out.time = p.time_nanos
    out.duration = p.duration_nanos
    out.meta = meta
    out.data = {k: tuple(v[i] for i in perm) for k, v in data.items() if any(v)}
    return out, problems[:limit]


def validate(p, delta_type_names=(), minimal=True, limit=MAX_DIFF_LINES):
    """Structural problems of an output profile: [] when valid (see check_output)."""
    return check_output(p, delta_type_names, minimal, limit)[1]


# ---------------------------------------------------------------------------
# Command line


def _cmd_show(args):
    p = pprof_pb.load(args.file)
    r = resolve(p)
    print("types %s period %s %d time %d duration %d" % (r.types, r.period_type, r.period, r.time, r.duration))
    print("samples %d identities %d locations %d functions %d mappings %d strings %d" %
          (len(p.sample), len(r.vals), len(p.location), len(p.function), len(p.mapping),
           len(p.string_table)))
    print("meta %r" % (r.meta,))
    return 0


def _cmd_equal(args):
    diffs = equal(pprof_pb.load(args.a), pprof_pb.load(args.b))
    for d in diffs:
        print(d)
    return 1 if diffs else 0


def _cmd_seq(args):
    orc = Oracle(args.first, parse_overrides(args.type))
    for f in args.files:
        e = orc.step(resolve(pprof_pb.load(f)))
        st, reason = e.statuses[0]
        print("%s %s %s keys=%d duration=%d (%s)" % (os.path.basename(f), st, reason, len(e.sem.data),
                                                     e.sem.duration, e.note))
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("show")
    a.add_argument("file")
    a.set_defaults(fn=_cmd_show)
    a = sub.add_parser("equal")
    a.add_argument("a")
    a.add_argument("b")
    a.set_defaults(fn=_cmd_equal)
    a = sub.add_parser("seq")
    a.add_argument("--first", default="keep", choices=("keep", "drop"))
    a.add_argument("--type", action="append", default=[])
    a.add_argument("files", nargs="+")
    a.set_defaults(fn=_cmd_seq)
    args = ap.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
