#!/usr/bin/python3
"""Runs agents side by side and prints each one's peak RSS and CPU from wait4()'s rusage.

  scrape_footprint.py TARGETS ROUNDS LABEL -- CMD... [-- LABEL -- CMD...]...
"""
import os
import subprocess
import sys
import time


def main(argv):
    targets, rounds = int(argv[0]), int(argv[1])
    rest, runs = argv[2:], []
    while rest:
        label = rest[0]
        assert rest[1] == "--", rest[:2]
        rest = rest[2:]
        cmd = []
        while rest and not (len(rest) > 2 and rest[0] == "--" and rest[2] == "--"):
            cmd.append(rest.pop(0))
        if rest:
            rest.pop(0)
        runs.append((label, cmd))
    procs = {}
    t0 = time.time()
    for label, cmd in runs:
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs[p.pid] = (label, p)
    results = {}
    while len(results) < len(procs):
        pid, status, ru = os.wait4(-1, 0)
        if pid in procs:
            results[pid] = (status, ru, time.time() - t0)
    scrapes = targets * 3 * rounds
    print("| agent | scrapes | peak RSS MB | CPU s | CPU ms per scrape | wall s | exit |")
    print("|---|---|---|---|---|---|---|")
    rc = 0
    for pid, (label, p) in procs.items():
        status, ru, wall = results[pid]
        cpu = ru.ru_utime + ru.ru_stime
        code = os.waitstatus_to_exitcode(status)
        rc |= code != 0
        print("| %s | %d | %.1f | %.2f | %.2f | %.0f | %d |" % (label, scrapes, ru.ru_maxrss / 1024.0, cpu,
                                                             cpu * 1000.0 / scrapes, wall, code))
        err = p.stderr.read().decode(errors="replace").strip().splitlines()
        if err:
            print("  %s stderr (%d lines): %s" % (label, len(err), err[-1][:200]))
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
