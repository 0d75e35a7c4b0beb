#!/usr/bin/python3
"""Prints one Markdown table row per profile sequence directory (for tests/data/README.md).

  summarize.py PROFILES_DIR [NAME ...]

Columns: files, samples first->last, uncompressed bytes first->last, compressed total,
how many samples have an in-use value lower than in the previous file (heap kinds).
"""

import gzip
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "oracle"))
import oracle  # noqa: E402
import pprof_pb  # noqa: E402


def inuse_drops(prev, cur):
    """Keys whose inuse_space went down between two heap profiles (0 when not heap)."""
    a, b = oracle.semantic(prev), oracle.semantic(cur)
    names = [c[0] for c in a.cols]
    if "inuse_space" not in names or a.cols != b.cols:
        return 0
    col = names.index("inuse_space")
    return sum(1 for k, v in a.data.items() if b.data.get(k, (0,) * len(v))[col] < v[col])


def row(d, name):
    files = sorted(f for f in os.listdir(d) if f.endswith(".pb.gz"))
    profs, raw, gz = [], [], 0
    for f in files:
        path = os.path.join(d, f)
        profs.append(pprof_pb.load(path))
        with gzip.open(path) as fh:
            raw.append(len(fh.read()))
        gz += os.path.getsize(path)
    drops = sum(inuse_drops(a, b) for a, b in zip(profs, profs[1:]))
    return "| %s | %d | %d -> %d | %d -> %d | %d | %s |" % (
        name, len(files), len(profs[0].sample), len(profs[-1].sample), raw[0], raw[-1], gz,
        drops if "inuse_space" in [profs[0].string_table[t.type] for t in profs[0].sample_type] else "-")


def main():
    top = sys.argv[1]
    names = sys.argv[2:] or sorted(os.listdir(top))
    print("| sequence | files | samples first -> last | uncompressed bytes first -> last "
          "| gz bytes (all files) | in-use decreases |")
    print("|---|---|---|---|---|---|")
    for n in names:
        if os.path.isdir(os.path.join(top, n)):
            print(row(os.path.join(top, n), n))


if __name__ == "__main__":
    main()
