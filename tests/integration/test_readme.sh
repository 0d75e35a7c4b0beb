#!/usr/bin/env bash
# test_readme.sh: the README's examples work as written. Every ```sh block that
# follows a `<!-- runnable -->` line is extracted, in order, into one bash
# script that runs from the repository root with `set -euo pipefail` (one
# failing command fails the test). The only rewrites: the example ports
# 7433/7434 become free ports, and `bin/` becomes $BINDIR/ (sanitizer builds).
# Anything the blocks start in the background is killed at the end.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
pd_init readme

script=$WORK/readme.sh
WPORT=$(free_port)
"$PY" - "$ROOT/README.md" "$script" "$PORT" "$MPORT" "$BINDIR" "$WPORT" <<'PY'
import re, sys
readme, out, port, mport, bindir, wport = sys.argv[1:]
text = open(readme).read()
blocks = re.findall(r"<!-- runnable -->\n```sh\n(.*?)```", text, re.S)
if not blocks:
    sys.exit("no runnable blocks in README.md")
with open(out, "w") as f:
    f.write("set -euo pipefail\n")
    # the walk-through's work dir and server go away even when a block fails
    f.write("trap '[ -n \"${PDELTAD_PID:-}\" ] && { kill -KILL $PDELTAD_PID 2>/dev/null || true; }; "
            "[ -n \"${WORKLOAD_PID:-}\" ] && { kill -KILL $WORKLOAD_PID 2>/dev/null || true; }; "
            "[ -n \"${PD:-}\" ] && rm -rf \"$PD\"; true' EXIT\n")
    for i, b in enumerate(blocks, 1):
        b = b.replace("7433", port).replace("7434", mport).replace("6060", wport)
        b = re.sub(r"(?<![\w/.-])bin/", bindir + "/", b)
        f.write("echo '>>> README block %d'\n%s\n" % (i, b))
print(len(blocks), "runnable blocks")
PY
nblocks=$(grep -c "^echo '>>> README block" "$script")
if (cd "$ROOT" && PATH=$PATH:/usr/lib/go/bin setsid bash "$script") >"$WORK/out" 2>&1; then
	ok "README: $nblocks runnable blocks ran as written"
else
	bad "README: a runnable block failed: $(grep '>>> README block' "$WORK/out" | tail -n 1)"
	tail -n 30 "$WORK/out"
fi
# What the examples must show, not only exit 0.
grep -q 'DELTA' "$WORK/out" && ok "README: pdelta send answered DELTA" || bad "README: no DELTA in the send example"
grep -q '^pdeltad_requests_total' "$WORK/out" && ok "README: /metrics example" || bad "README: /metrics example printed nothing"
grep -q '^ok$' "$WORK/out" && ok "README: backup passes integrity_check" || bad "README: backup example"
grep -q 'web-2 heap seq=3 DELTA' "$WORK/out" && ok "README: the scrape example delivers deltas" || bad "README: scrape example"
# Nothing the blocks started may survive them.
if pgrep -f "pdeltad --listen 127.0.0.1:$PORT" >/dev/null; then
	bad "README: pdeltad still running after the examples"
	pkill -KILL -f "pdeltad --listen 127.0.0.1:$PORT" || true
else
	ok "README: the examples stop what they start"
fi
pd_finish
