#!/usr/bin/python3
"""Checks `pdelta inspect --json FILE` against the file itself.

  inspect_check.py --pdelta BIN FILE...

The JSON must parse; when it has "samples" (and "period", "time_nanos", "sample_types"),
they must match what the oracle reads from the file. Prints "check_seq inspect: N passed,
N failed" so the drivers can sum it up.
"""

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pprof_pb  # noqa: E402


def main(argv):
    if len(argv) < 3 or argv[0] != "--pdelta":
        print(__doc__)
        return 2
    pdelta, files = argv[1], argv[2:]
    passed = failed = 0
    for f in files:
        proc = subprocess.run([pdelta, "inspect", "--json", f], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=120)
        problems = []
        if proc.returncode != 0:
            problems.append("exit %d: %s" % (proc.returncode, proc.stderr.decode(errors="replace")[-300:]))
        else:
            try:
                doc = json.loads(proc.stdout)
            except ValueError as e:
                doc = {}
                problems.append("not JSON (%s): %r" % (e, proc.stdout[:200]))
            p = pprof_pb.load(f)
            st = pprof_pb.string_list(p)
            want = {"samples": len(p.sample), "period": p.period, "time_nanos": p.time_nanos,
                    "sample_types": [{"type": st[t.type], "unit": st[t.unit]} for t in p.sample_type]}
            for k, v in want.items():
                if k in doc and doc[k] != v:
                    problems.append("%s=%r, file has %r" % (k, doc[k], v))
        if problems:
            failed += 1
            print("FAIL inspect %s: %s" % (f, "; ".join(problems)))
        else:
            passed += 1
    print("check_seq inspect (inspect, 0s): %d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
