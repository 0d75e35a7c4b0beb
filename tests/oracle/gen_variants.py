#!/usr/bin/python3
"""Synthetic profile sequences for the engine tests, derived from the real test data.

  gen_variants.py [--testdata DIR] [--only NAME ...] OUTDIR            hard-but-valid cases
  gen_variants.py [--testdata DIR] --hostile [--only NAME ...] OUTDIR  inputs that must be refused

Each case is a directory OUTDIR/<name>/ of files, plus one line in OUTDIR/manifest.txt:

  <name>|<extra check_seq.py arguments, shell-quoted>|<file> <file> ...

(files relative to OUTDIR, in sequence order). The drivers in tests/integration/ read the
manifest, so adding a case here is enough to get it tested. Everything is deterministic
(fixed seeds) so a failure can be reproduced by regenerating.

Valid cases (the oracle predicts what the engine must answer):
  splice-heap, splice-block   two processes back to back (reset by counters going down)
  time-back                   time_nanos goes backwards (reset)
  counter-back                an older snapshot re-sent with a later time (reset)
  reorder-heap, reorder-block sample_type columns permuted in some files
  addr0-heap, addr0-block     every location address zeroed (identity by function/file/line)
  dups-heap, dups-block       samples split into duplicate halves, order shuffled
  labels-heap, labels-block   string and numeric labels (with num_unit), label order permuted
  renumber-heap, -block, -mutex  location/function/mapping ids and string table shuffled per file
  period                      period changes (reset) and changes back (reset)
  schema                      an extra sample type appears then disappears (resets)
  kind-switch                 heap, goroutine, heap in one stream
  empty-mid                   a profile without samples in the middle
  same-time                   the same snapshot twice (duration 0)
  bigvalues                   values scaled by 2^30 (multi-byte varints near 2^52)
  empty-stack                 some samples have no locations at all
  meta                        comment, drop/keep_frames, default_sample_type, doc_link set
  dup-tables, dup-tables-addr0  strings/functions/locations cloned under new ids, half the
                              references moved to the clones (with/without addresses)
  unpacked                    every other file written with unpacked repeated scalars
  field-order                 top-level fields shuffled and repeated fields interleaved
  twin-<field>                stacks split into two samples that differ in one identity field
                              only (system-name, filename, line, mapping, num-unit,
                              str-vs-num, label-key); addresses zeroed
"""

import argparse
import gzip
import os
import random
import shlex
import shutil
import struct
import sys
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pprof_pb  # noqa: E402

# The repository's own fixtures (real profiles of tests/workload, see tests/data/README.md).
DEFAULT_TESTDATA = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                 "../data"))


class Gen:
    def __init__(self, testdata, outdir, only):
        self.testdata = testdata
        self.outdir = outdir
        self.only = set(only or ())
        self.manifest = []

    def src(self, rel):
        return os.path.join(self.testdata, "profiles", rel)

    def load(self, rel):
        return pprof_pb.load(self.src(rel))

    def wanted(self, name):
        return not self.only or name in self.only

    def case_dir(self, name):
        d = os.path.join(self.outdir, name)
        if os.path.isdir(d):
            shutil.rmtree(d)
        os.makedirs(d)
        return d

    def emit(self, name, profiles, args=""):
        """Writes profiles (Profile messages or raw bytes) as name/000.pb.gz ... and records them."""
        d = self.case_dir(name)
        rels = []
        for i, p in enumerate(profiles):
            fname = "%03d.pb.gz" % i
            with open(os.path.join(d, fname), "wb") as f:
                f.write(p if isinstance(p, (bytes, bytearray)) else pprof_pb.dump_bytes(p))
            rels.append(name + "/" + fname)
        self.manifest.append((name, args, rels))

    def emit_files(self, name, files, args=""):
        """files: list of (filename, bytes). Recorded in the given order."""
        d = self.case_dir(name)
        rels = []
        for fname, data in files:
            with open(os.path.join(d, fname), "wb") as f:
                f.write(data)
            rels.append(name + "/" + fname)
        self.manifest.append((name, args, rels))

    def write_manifest(self):
        path = os.path.join(self.outdir, "manifest.txt")
        with open(path, "w") as f:
            for name, args, rels in self.manifest:
                f.write("%s|%s|%s\n" % (name, args, " ".join(rels)))


# ---------------------------------------------------------------------------
# Profile surgery helpers


def copy(p):
    q = pprof_pb.Profile()
    q.CopyFrom(p)
    return q


def string_index(p, s, cache=None):
    """Index of s in p's string table, appending it when absent."""
    st = p.string_table
    if cache is not None and s in cache:
        return cache[s]
    for i, x in enumerate(st):
        if x == s:
            if cache is not None:
                cache[s] = i
            return i
    st.append(s)
    if cache is not None:
        cache[s] = len(st) - 1
    return len(st) - 1


def stack_hash(p, sample, loc_addr):
    """A per-stack number that is stable across the files of one sequence."""
    return zlib.crc32(repr([loc_addr[i] for i in sample.location_id]).encode())


def loc_addresses(p):
    return {loc.id: loc.address for loc in p.location}


def permute_columns(p, order):
    """New column j = old column order[j], for sample_type and every sample's values."""
    types = [(t.type, t.unit) for t in p.sample_type]
    del p.sample_type[:]
    for j in order:
        vt = p.sample_type.add()
        vt.type, vt.unit = types[j]
    for s in p.sample:
        v = list(s.value)
        del s.value[:]
        s.value.extend(v[j] for j in order)


def zero_addresses(p):
    for loc in p.location:
        loc.address = 0


def split_duplicates(p, rng):
    """Every sample becomes two with the same identity (halves), in shuffled order."""
    out = []
    for s in p.sample:
        a = [v // 2 for v in s.value]
        b = [v - x for v, x in zip(s.value, a)]
        for vals, rev in ((a, False), (b, True)):
            n = pprof_pb.Sample()
            n.location_id.extend(s.location_id)
            n.value.extend(vals)
            labels = list(s.label)
            if rev:
                labels.reverse()
            for lab in labels:
                n.label.add().CopyFrom(lab)
            out.append(n)
    rng.shuffle(out)
    del p.sample[:]
    p.sample.extend(out)


def add_labels(p, rng):
    """String and numeric labels that depend only on the stack, so identities persist.

    Some stacks are split into two samples that differ only by a string label; the
    split is monotone in the cumulative value (v//3 and v - v//3) so no reset is caused.
    Label order is shuffled per sample (the identity must not depend on it)."""
    addr = loc_addresses(p)
    cache = {}
    k_phase = string_index(p, "phase", cache)
    k_tag = string_index(p, "tag", cache)
    k_class = string_index(p, "size_class", cache)
    u_bytes = string_index(p, "bytes", cache)
    u_objects = string_index(p, "objects", cache)
    out = []
    for s in p.sample:
        h = stack_hash(p, s, addr)
        for lab in s.label:
            if lab.str == 0 and lab.num_unit == 0:
                lab.num_unit = u_bytes  # numeric label with a unit
        parts = [(list(s.value), "p%d" % (h % 3))]
        if h % 5 == 0:
            first = [v // 3 for v in s.value]
            parts = [(first, "left"), ([v - x for v, x in zip(s.value, first)], "right")]
        for vals, phase in parts:
            n = pprof_pb.Sample()
            n.location_id.extend(s.location_id)
            n.value.extend(vals)
            labs = [lab for lab in s.label]
            extra = [(k_phase, string_index(p, phase, cache), 0, 0),
                     (k_class, 0, h % 7, u_objects)]
            if h % 4 == 0:
                extra += [(k_tag, string_index(p, "x", cache), 0, 0), (k_tag, string_index(p, "y", cache), 0, 0)]
            items = [(l.key, l.str, l.num, l.num_unit) for l in labs] + extra
            rng.shuffle(items)
            for key, sv, num, unit in items:
                lab = n.label.add()
                lab.key, lab.str, lab.num, lab.num_unit = key, sv, num, unit
            out.append(n)
    del p.sample[:]
    p.sample.extend(out)


def renumber(p, rng):
    """Shuffles location/function/mapping ids, table order and the string table."""
    lmap = _new_ids([l.id for l in p.location], rng)
    fmap = _new_ids([f.id for f in p.function], rng)
    mmap = _new_ids([m.id for m in p.mapping], rng)
    old_st = list(p.string_table)
    perm = list(range(1, len(old_st)))
    rng.shuffle(perm)
    smap = {0: 0}
    for new, old in enumerate(perm, start=1):
        smap[old] = new
    del p.string_table[:]
    p.string_table.extend([""] + [old_st[o] for o in perm])
    for t in list(p.sample_type) + [p.period_type]:
        t.type, t.unit = smap[t.type], smap[t.unit]
    p.drop_frames, p.keep_frames = smap[p.drop_frames], smap[p.keep_frames]
    p.default_sample_type = smap[p.default_sample_type]
    p.doc_link = smap[p.doc_link]
    comments = [smap[c] for c in p.comment]
    del p.comment[:]
    p.comment.extend(comments)
    for s in p.sample:
        ids = [lmap[i] for i in s.location_id]
        del s.location_id[:]
        s.location_id.extend(ids)
        for lab in s.label:
            lab.key, lab.str, lab.num_unit = smap[lab.key], smap[lab.str], smap[lab.num_unit]
    for loc in p.location:
        loc.id = lmap[loc.id]
        if loc.mapping_id:
            loc.mapping_id = mmap[loc.mapping_id]
        for ln in loc.line:
            ln.function_id = fmap[ln.function_id]
    for f in p.function:
        f.id = fmap[f.id]
        f.name, f.system_name, f.filename = smap[f.name], smap[f.system_name], smap[f.filename]
    for m in p.mapping:
        m.id = mmap[m.id]
        m.filename, m.build_id = smap[m.filename], smap[m.build_id]
    _shuffle_repeated(p.location, rng)
    _shuffle_repeated(p.function, rng)
    _shuffle_repeated(p.mapping, rng)
    _shuffle_repeated(p.sample, rng)


def _new_ids(ids, rng):
    fresh = rng.sample(range(1, 20 * len(ids) + 100), len(ids))
    return dict(zip(ids, fresh))


def _shuffle_repeated(field, rng):
    items = [type(x)() for x in field]
    for dst, src in zip(items, field):
        dst.CopyFrom(src)
    rng.shuffle(items)
    del field[:]
    field.extend(items)


def scale_values(p, factor):
    for s in p.sample:
        v = [x * factor for x in s.value]
        del s.value[:]
        s.value.extend(v)


def empty_some_stacks(p):
    """Samples of some stacks lose all their locations (a legal, empty stack)."""
    addr = loc_addresses(p)
    for s in p.sample:
        if stack_hash(p, s, addr) % 11 == 0:
            del s.location_id[:]


def set_meta(p):
    cache = {}
    p.drop_frames = string_index(p, "runtime\\..*", cache)
    p.keep_frames = string_index(p, "main\\..*", cache)
    p.default_sample_type = string_index(p, "alloc_space", cache)
    del p.comment[:]
    p.comment.extend([string_index(p, "built by gen_variants", cache), string_index(p, "second comment", cache)])
    p.doc_link = string_index(p, "https://example.com/pdelta/doc", cache)


def duplicate_tables(p, rng):
    """Clones of strings, functions and locations under new indices/ids; about half of
    the references move to the clones. Content is unchanged, so identities must be too."""
    st = p.string_table
    n = len(st)
    dup_of = {}
    for i in range(1, n):
        st.append(st[i])
        dup_of[i] = n + i - 1

    orig_of = {v: k for k, v in dup_of.items()}

    def ms(i):
        i = orig_of.get(i, i)
        return dup_of[i] if i and rng.random() < 0.5 else i

    for f in p.function:
        f.name, f.system_name, f.filename = ms(f.name), ms(f.system_name), ms(f.filename)
    for m in p.mapping:
        m.filename, m.build_id = ms(m.filename), ms(m.build_id)
    for t in p.sample_type:
        t.type, t.unit = ms(t.type), ms(t.unit)
    fclone = {}
    next_id = max([f.id for f in p.function] + [0]) + 1
    for f in list(p.function):
        c = p.function.add()
        c.CopyFrom(f)
        c.id, c.name = next_id, ms(f.name)
        fclone[f.id] = next_id
        next_id += 1
    lclone = {}
    next_id = max([l.id for l in p.location] + [0]) + 1
    for loc in list(p.location):
        c = p.location.add()
        c.CopyFrom(loc)
        c.id = next_id
        for ln in c.line:
            if rng.random() < 0.5:
                ln.function_id = fclone[ln.function_id]
        lclone[loc.id] = next_id
        next_id += 1
    for smp in p.sample:
        for lab in smp.label:
            lab.key, lab.str, lab.num_unit = ms(lab.key), ms(lab.str), ms(lab.num_unit)
        if rng.random() < 0.5:
            ids = [lclone[i] for i in smp.location_id]
            del smp.location_id[:]
            smp.location_id.extend(ids)


TWIN_KINDS = ("system_name", "filename", "line", "mapping", "num_unit", "str_vs_num", "label_key")


def split_twins(p, kind):
    """Identity edge cases: every third stack is split into two halves that differ in one
    identity field only (e.g. the function's system_name, or a label's num_unit), so an
    engine that ignores that field merges them. Addresses are zeroed so frames are
    identified by their contents. Splits are floor(v/2) and the rest: monotone, no reset."""
    zero_addresses(p)
    cache = {}
    next_loc = max(l.id for l in p.location) + 1
    next_fn = max(f.id for f in p.function) + 1
    locs = {l.id: l for l in p.location}
    fns = {f.id: f for f in p.function}
    twin_map = None
    if kind == "mapping":
        m = p.mapping.add()
        m.CopyFrom(p.mapping[0])
        m.id = max(x.id for x in p.mapping) + 1
        m.filename = string_index(p, "/twin/mapping", cache)
        twin_map = m.id
    twins = {}

    def twin_location(loc_id):
        nonlocal next_loc, next_fn
        if loc_id in twins:
            return twins[loc_id]
        src = locs[loc_id]
        t = p.location.add()
        t.CopyFrom(src)
        t.id = next_loc
        next_loc += 1
        if kind == "line" and t.line:
            t.line[0].line += 100000
        elif kind == "mapping":
            t.mapping_id = twin_map
        elif kind in ("system_name", "filename") and t.line:
            f = p.function.add()
            f.CopyFrom(fns[t.line[0].function_id])
            f.id = next_fn
            next_fn += 1
            if kind == "system_name":
                f.system_name = string_index(p, "twin.system.name", cache)
            else:
                f.filename = string_index(p, "/twin/file.go", cache)
            t.line[0].function_id = f.id
        twins[loc_id] = t.id
        return t.id

    # Stack hash from function names and lines: ids are not stable between snapshots.
    fname = {f.id: p.string_table[f.name] for f in p.function}
    addr = {l.id: tuple((fname[ln.function_id], ln.line) for ln in l.line) for l in p.location}
    k_unit = string_index(p, "twin_label", cache)
    out = []
    for smp in p.sample:
        h = zlib.crc32(repr([addr[i] for i in smp.location_id]).encode())
        if h % 3 or not smp.location_id:
            out.append(smp)
            continue
        a = [v // 2 for v in smp.value]
        b = [v - x for v, x in zip(smp.value, a)]
        first, second = pprof_pb.Sample(), pprof_pb.Sample()
        for n, vals in ((first, a), (second, b)):
            n.location_id.extend(smp.location_id)
            n.value.extend(vals)
            for lab in smp.label:
                n.label.add().CopyFrom(lab)
        if kind in ("system_name", "filename", "line", "mapping"):
            second.location_id[0] = twin_location(smp.location_id[0])
        elif kind == "num_unit":
            for n, unit in ((first, ""), (second, "kilobytes")):
                lab = n.label.add()
                lab.key, lab.num, lab.num_unit = k_unit, 7, string_index(p, unit, cache)
        elif kind == "str_vs_num":
            lab = first.label.add()
            lab.key, lab.num = k_unit, 7
            lab = second.label.add()
            lab.key, lab.str = k_unit, string_index(p, "7", cache)
        elif kind == "label_key":
            lab = first.label.add()
            lab.key, lab.str = k_unit, string_index(p, "v", cache)
            lab = second.label.add()
            lab.key, lab.str = string_index(p, "twin_label2", cache), string_index(p, "v", cache)
        out.extend((first, second))
    copies = []
    for x in out:
        c = pprof_pb.Sample()
        c.CopyFrom(x)
        copies.append(c)
    del p.sample[:]
    p.sample.extend(copies)


_REPEATED_TOP = ("sample_type", "sample", "mapping", "location", "function", "string_table", "comment")
_SCALAR_TOP = ("drop_frames", "keep_frames", "time_nanos", "duration_nanos", "period_type", "period",
               "default_sample_type", "doc_link")


def serialize_shuffled(p, rng):
    """p's bytes with top-level fields in a random order and repeated fields split into
    interleaved chunks (legal protobuf: a parser must merge them). The chunks of one field
    keep their relative order, so the parsed profile is identical to p."""
    chunks = []
    for name in _REPEATED_TOP:
        items = list(getattr(p, name))
        cut = rng.randrange(len(items) + 1) if items else 0
        for part in (items[:cut], items[cut:]):
            if not part:
                continue
            q = pprof_pb.Profile()
            getattr(q, name).extend(part)
            chunks.append((name, q.SerializeToString()))
    for name in _SCALAR_TOP:
        q = pprof_pb.Profile()
        if name == "period_type":
            q.period_type.CopyFrom(p.period_type)
        else:
            setattr(q, name, getattr(p, name))
        data = q.SerializeToString()
        if data:
            chunks.append((name, data))
    ordered = {}
    for name, data in chunks:
        ordered.setdefault(name, []).append(data)
    rng.shuffle(chunks)
    # The chunks of each repeated field are put back in their original relative order.
    out = []
    seen = {}
    for name, data in chunks:
        k = seen.get(name, 0)
        out.append(ordered[name][k] if name in _REPEATED_TOP else data)
        seen[name] = k + 1
    raw = b"".join(out)
    check = pprof_pb.Profile()
    check.ParseFromString(raw)
    assert check == p, "shuffled serialization changed the profile"
    return raw


# ---------------------------------------------------------------------------
# Valid cases


def gen_valid(g):
    rng = random.Random(1234)
    seqs = {k: ["%s/%03d.pb.gz" % (k, i) for i in range(8)] for k in
            ("heap-small", "block-small", "mutex-small", "goroutine-small")}
    if g.wanted("splice-heap"):
        g.emit("splice-heap", [g.load(f) for f in seqs["heap-small"][:4]] +
               [g.load("heap-medium/%03d.pb.gz" % i) for i in range(3)])
    if g.wanted("splice-block"):
        g.emit("splice-block", [g.load(f) for f in seqs["block-small"][:4]] +
               [g.load("block-medium/%03d.pb.gz" % i) for i in range(3)])
    if g.wanted("time-back"):
        ps = [g.load(f) for f in seqs["heap-small"][:5]]
        ps[3].time_nanos = ps[2].time_nanos - 1000
        g.emit("time-back", ps)
    if g.wanted("counter-back"):
        ps = [g.load(f) for f in seqs["heap-small"][:3]]
        again = g.load(seqs["heap-small"][1])
        again.time_nanos = ps[2].time_nanos + 10**9
        nxt = g.load(seqs["heap-small"][3])
        nxt.time_nanos = again.time_nanos + 10**9
        g.emit("counter-back", ps + [again, nxt])
    if g.wanted("reorder-heap"):
        ps = [g.load(f) for f in seqs["heap-small"][:6]]
        permute_columns(ps[1], [2, 0, 3, 1])
        permute_columns(ps[3], [3, 2, 1, 0])
        permute_columns(ps[4], [3, 2, 1, 0])
        g.emit("reorder-heap", ps)
    if g.wanted("reorder-block"):
        ps = [g.load(f) for f in seqs["block-small"][:5]]
        permute_columns(ps[1], [1, 0])
        permute_columns(ps[2], [1, 0])
        g.emit("reorder-block", ps)
    every_profile = (
        ("addr0-", zero_addresses),
        ("dups-", lambda p: split_duplicates(p, rng)),
        ("labels-", lambda p: add_labels(p, rng)),
    )
    for kind in ("heap", "block"):
        for prefix, change in every_profile:
            name = prefix + kind
            if g.wanted(name):
                ps = [g.load(f) for f in seqs[kind + "-small"][:5]]
                for p in ps:
                    change(p)
                g.emit(name, ps)
    for kind in ("heap", "block", "mutex"):
        name = "renumber-" + kind
        if g.wanted(name):
            ps = [g.load(f) for f in seqs[kind + "-small"][:5]]
            for p in ps[1:]:
                renumber(p, rng)
            g.emit(name, ps)
    if g.wanted("period"):
        ps = [g.load(f) for f in seqs["heap-small"][:5]]
        ps[2].period = 2
        g.emit("period", ps)
    if g.wanted("schema"):
        ps = [g.load(f) for f in seqs["block-small"][:4]]
        p = ps[2]
        vt = p.sample_type.add()
        vt.type, vt.unit = string_index(p, "delay2"), string_index(p, "nanoseconds")
        for s in p.sample:
            s.value.append(s.value[1])
        g.emit("schema", ps)
    if g.wanted("kind-switch"):
        g.emit("kind-switch", [g.load(seqs["heap-small"][0]), g.load(seqs["goroutine-small"][0]),
                               g.load(seqs["heap-small"][1]), g.load(seqs["heap-small"][2])])
    if g.wanted("empty-mid"):
        ps = [g.load(f) for f in seqs["heap-small"][:4]]
        del ps[2].sample[:]
        g.emit("empty-mid", ps)
    if g.wanted("bigvalues"):
        ps = [g.load(f) for f in seqs["heap-small"][:4]]
        for p in ps:
            scale_values(p, 1 << 30)
        g.emit("bigvalues", ps)
    if g.wanted("empty-stack"):
        ps = [g.load(f) for f in seqs["heap-small"][:4]]
        for p in ps:
            empty_some_stacks(p)
        g.emit("empty-stack", ps)
    if g.wanted("meta"):
        ps = [g.load(f) for f in seqs["heap-small"][:3]]
        for p in ps:
            set_meta(p)
        g.emit("meta", ps)
    for name, zero in (("dup-tables", False), ("dup-tables-addr0", True)):
        if g.wanted(name):
            ps = [g.load(f) for f in seqs["heap-small"][:4]]
            for p in ps:
                if zero:
                    zero_addresses(p)
                duplicate_tables(p, rng)
            g.emit(name, ps)
    if g.wanted("unpacked"):
        ps = [g.load(f) for f in seqs["heap-small"][:4]]
        g.emit("unpacked", [gzip_raw(pprof_pb.serialize_unpacked(p)) if i % 2 == 0 else p
                            for i, p in enumerate(ps)])
    if g.wanted("field-order"):
        ps = [g.load(f) for f in seqs["heap-small"][:4]]
        for p in ps:
            set_meta(p)
        g.emit("field-order", [gzip_raw(serialize_shuffled(p, rng)) for p in ps])
    for kind in TWIN_KINDS:
        name = "twin-" + kind.replace("_", "-")
        if g.wanted(name):
            ps = [g.load(f) for f in seqs["heap-small"][:4]]
            for p in ps:
                split_twins(p, kind)
            g.emit(name, ps)
    if g.wanted("same-time"):
        ps = [g.load(f) for f in seqs["heap-small"][:2]] + [g.load(seqs["heap-small"][1])]
        g.emit("same-time", ps)


# ---------------------------------------------------------------------------
# Hostile inputs: every case is good0, bad, good1; the bad file must be refused and the
# delta of good1 must be the delta against good0.

GOOD0, GOOD1 = "heap-small/000.pb.gz", "heap-small/001.pb.gz"
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03"


def gzip_raw(raw):
    return _gzip(raw)


def _gzip(raw):
    co = zlib.compressobj(1, zlib.DEFLATED, 31)
    return co.compress(raw) + co.flush()


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def gzip_bomb(pattern, total):
    """A gzip member inflating to `total` bytes of `pattern` repeated, built without ever
    holding the inflated data: after a full flush deflate restarts, so the compressed
    form of one 1 MiB block can be repeated."""
    block = pattern * ((1 << 20) // len(pattern))
    assert len(block) == 1 << 20 and total % len(block) == 0
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = co.compress(block) + co.flush(zlib.Z_FULL_FLUSH)
    tail = co.flush(zlib.Z_FINISH)
    crc = 0
    for _ in range(total // len(block)):
        crc = zlib.crc32(block, crc)
    body = piece * (total // len(block))
    return GZIP_HEADER + body + tail + struct.pack("<II", crc, total & 0xFFFFFFFF)


def flip_bits(data, lo, hi, nbits, rng):
    b = bytearray(data)
    for _ in range(nbits):
        i = rng.randrange(lo, hi)
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def _parses(raw):
    try:
        pprof_pb.Profile().ParseFromString(raw)
        return True
    except Exception:  # noqa: BLE001
        return False


def _gunzips(data):
    try:
        gzip.decompress(data)
        return True
    except Exception:  # noqa: BLE001
        return False


def hostile_cases(g):
    """Yields (name, bad bytes, extra pdelta args, good0 rel, good1 rel, must_error)."""
    rng = random.Random(4321)
    good1 = g.load(GOOD1)
    raw1 = good1.SerializeToString()
    gz1 = open(g.src(GOOD1), "rb").read()

    cut = len(raw1) // 2
    while _parses(raw1[:cut]):
        cut += 1
    yield "truncated-proto", _gzip(raw1[:cut]), "", GOOD0, GOOD1, True
    yield "truncated-gzip", gz1[: len(gz1) * 6 // 10], "", GOOD0, GOOD1, True
    for i in range(3):
        # Any change inside the deflate body or the trailer must be caught (CRC at worst);
        # flips that only touch padding bits are re-drawn.
        bad = flip_bits(gz1, 10, len(gz1), 1 + i, rng)
        while _gunzips(bad):
            bad = flip_bits(gz1, 10, len(gz1), 1 + i, rng)
        yield "bitflip-gz-%d" % i, bad, "", GOOD0, GOOD1, True
    for i in range(6):
        # Raw protobuf with flipped bits may still be a valid profile: refusal is optional.
        yield "bitflip-raw-%d" % i, flip_bits(raw1, 0, len(raw1), 1 + i % 3, rng), "", GOOD0, GOOD1, False
    yield "garbage", bytes(rng.randrange(32, 256) for _ in range(4096)), "", GOOD0, GOOD1, True
    yield "garbage-gz-magic", b"\x1f\x8b" + bytes(rng.randrange(256) for _ in range(4096)), "", GOOD0, GOOD1, True
    yield "empty", b"", "", GOOD0, GOOD1, True
    yield "gzip-bomb-zeros", gzip_bomb(b"\x00", 2 << 30), "", GOOD0, GOOD1, True
    yield "gzip-bomb-strings", gzip_bomb(b"\x32\x00", 2 << 30), "", GOOD0, GOOD1, True

    p = copy(good1)
    p.sample[3].location_id[1] = 999999
    yield "missing-location", _gzip(p.SerializeToString()), "", GOOD0, GOOD1, True
    p = copy(good1)
    p.sample[5].location_id.append(0)
    yield "location-id-zero", _gzip(p.SerializeToString()), "", GOOD0, GOOD1, True
    p = copy(good1)
    p.location[7].line[0].function_id = 99999
    yield "missing-function", _gzip(p.SerializeToString()), "", GOOD0, GOOD1, True
    p = copy(good1)
    p.location[9].mapping_id = 99
    yield "missing-mapping", _gzip(p.SerializeToString()), "", GOOD0, GOOD1, True
    p = copy(good1)
    p.function[4].name = len(p.string_table) + 100
    yield "string-oob-function", _gzip(p.SerializeToString()), "", GOOD0, GOOD1, True
    p = copy(good1)
    p.function[6].filename = -1
    yield "string-negative", _gzip(p.SerializeToString()), "", GOOD0, GOOD1, True
    p = copy(good1)
    lab = next(s for s in p.sample if s.label).label[0]
    lab.key = len(p.string_table)
    yield "string-oob-label", _gzip(p.SerializeToString()), "", GOOD0, GOOD1, True
    p = copy(good1)
    p.sample_type[1].unit = 1 << 40
    yield "string-oob-sample-type", _gzip(p.SerializeToString()), "", GOOD0, GOOD1, True
    p = copy(good1)
    p.string_table[0] = "x"
    yield "string0-not-empty", _gzip(p.SerializeToString()), "", GOOD0, GOOD1, True
    p = copy(good1)
    del p.string_table[:]
    yield "no-string-table", _gzip(p.SerializeToString()), "", GOOD0, GOOD1, True
    p = copy(good1)
    del p.sample[10].value[-1]
    yield "value-count", _gzip(p.SerializeToString()), "", GOOD0, GOOD1, True
    yield "huge-length-sample", _gzip(raw1 + b"\x12" + varint(1 << 62) + bytes(16)), "", GOOD0, GOOD1, True
    yield "huge-length-string", _gzip(raw1 + b"\x32" + varint((1 << 31) + 5) + b"abc"), "", GOOD0, GOOD1, True
    yield "bad-wire-type", _gzip(raw1 + b"\x0f\x01\x02"), "", GOOD0, GOOD1, True
    yield "overlong-varint", _gzip(raw1 + b"\x48" + b"\xff" * 11 + b"\x01"), "", GOOD0, GOOD1, True

    p = copy(good1)
    deep = p.sample[2]
    ids = list(deep.location_id)
    while len(deep.location_id) < 300:
        deep.location_id.extend(ids)
    yield "deep-stack", _gzip(p.SerializeToString()), "--max-depth 64", GOOD0, GOOD1, True
    p = copy(good1)
    p.function[3].name = string_index(p, "f" * 10000)
    yield "long-string", _gzip(p.SerializeToString()), "--max-string 4096", GOOD0, GOOD1, True
    p = copy(good1)
    smp = next(x for x in p.sample if x.label)
    for i in range(20):
        lab = smp.label.add()
        lab.key, lab.str = string_index(p, "k%d" % i), string_index(p, "v%d" % i)
    yield "too-many-labels", _gzip(p.SerializeToString()), "--max-labels 8", GOOD0, GOOD1, True
    p = copy(good1)
    for i in range(20):
        vt = p.sample_type.add()
        vt.type, vt.unit = string_index(p, "extra%d" % i), string_index(p, "count")
    for smp in p.sample:
        smp.value.extend([0] * 20)
    yield "too-many-sample-types", _gzip(p.SerializeToString()), "", GOOD0, GOOD1, True
    p = copy(good1)
    p.string_table.extend("pad%d" % i for i in range(5000))
    yield "too-many-strings", _gzip(p.SerializeToString()), "--max-table 2000", GOOD0, GOOD1, True
    pb = pprof_pb.ProfileBytes()
    pb.ParseFromString(raw1)
    pb.string_table[pb.function[2].name] = b"\xff\xfe not utf-8 \xc3"
    yield "non-utf8-string", _gzip(pb.SerializeToString()), "", GOOD0, GOOD1, False
    # Each limit is set one below what the file needs, so the case holds for any fixture set.
    big = open(g.src("mutex-small/002.pb.gz"), "rb").read()
    nsamples = len(pprof_pb.load(g.src("mutex-small/002.pb.gz")).sample)
    yield ("too-many-samples", big, "--max-samples %d" % (nsamples - 1),
           "mutex-small/000.pb.gz", "mutex-small/001.pb.gz", True)
    comp = open(g.src("heap-small/006.pb.gz"), "rb").read()
    yield ("max-input", comp, "--max-input %d" % (len(comp) - 1), GOOD0, GOOD1, True)
    blk = open(g.src("block-small/007.pb.gz"), "rb").read()
    yield ("max-inflated", blk, "--max-inflated %d" % (len(gzip.decompress(blk)) - 1),
           "block-small/000.pb.gz", "block-small/001.pb.gz", True)
    yield ("gzip-bomb-capped", gzip_bomb(b"\x32\x00", 256 << 20), "--max-inflated 1000000",
           GOOD0, GOOD1, True)


def gen_hostile(g):
    for name, bad, extra, good0, good1, must in hostile_cases(g):
        if not g.wanted(name):
            continue
        files = [("a.pb.gz", open(g.src(good0), "rb").read()), ("b.pb.gz", bad),
                 ("c.pb.gz", open(g.src(good1), "rb").read())]
        args = ["--expect-error" if must else "--maybe-error", "b.pb.gz"]
        if extra:
            args += ["--extra", extra]
        g.emit_files(name, files, " ".join(shlex.quote(a) for a in args))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--testdata", default=DEFAULT_TESTDATA)
    ap.add_argument("--hostile", action="store_true")
    ap.add_argument("--only", action="append")
    ap.add_argument("outdir")
    args = ap.parse_args(argv)
    os.makedirs(args.outdir, exist_ok=True)
    g = Gen(args.testdata, args.outdir, args.only)
    if args.hostile:
        gen_hostile(g)
    else:
        gen_valid(g)
    g.write_manifest()
    for name, a, rels in g.manifest:
        print("%-22s %d files %s" % (name, len(rels), a))
    return 0


if __name__ == "__main__":
    sys.exit(main())
