#!/usr/bin/python3
"""metrics_check: /metrics of a running pdeltad as real scrapers take it.

  metrics_check.py URL [--version V] [--tenant NAME]... [--max-tenants N] [--other]

Fetches URL twice: without Accept (Prometheus text 0.0.4) and with the Accept header
Prometheus sends (OpenMetrics 1.0). Each must parse with prometheus_client's parser of
that format (the OpenMetrics one refuses clashing names such as a gauge `x` beside a
counter `x_total`, and needs the final `# EOF`), and carry the same samples.
Then: pdeltad_build_info{version,protocol,...} 1 (version V if given); the six process_*
metrics with sane values; pdeltad_tenant_* series for every --tenant, at most N named
tenants besides "_other" (--max-tenants), and "_other" with requests (--other).
Prints ok/FAIL lines and "N passed, N failed"; exit 1 on any failure.
"""

import argparse
import sys
import time
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_prom

OM_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
             "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
PASSED = FAILED = 0


def check(cond, what):
    global PASSED, FAILED
    if cond:
        PASSED += 1
        print("ok   %s" % what)
    else:
        FAILED += 1
        print("FAIL %s" % what)
    return cond


def fetch(url, accept=None):
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.headers.get("Content-Type", ""), r.read().decode()


def samples(families):
    out = {}
    for fam in families:
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def parse(fn, text, what):
    try:
        return samples(fn(text))
    except Exception as e:  # the parsers raise ValueError and friends
        check(False, "%s parses: %s" % (what, e))
        return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--version")
    ap.add_argument("--tenant", action="append", default=[])
    ap.add_argument("--max-tenants", type=int)
    ap.add_argument("--other", action="store_true")
    a = ap.parse_args()

    ct, prom_text = fetch(a.url)
    check(ct.startswith("text/plain") and "version=0.0.4" in ct, "no Accept: Prometheus text (%s)" % ct)
    check("# EOF" not in prom_text, "Prometheus text has no # EOF")
    ct, om_text = fetch(a.url, OM_ACCEPT)
    check(ct.startswith("application/openmetrics-text"), "Accept openmetrics: OpenMetrics (%s)" % ct)
    check(om_text.endswith("# EOF\n"), "OpenMetrics ends with # EOF")
    ct, _ = fetch(a.url, "application/openmetrics-text;q=0, text/plain;q=0.5")
    check(ct.startswith("text/plain"), "Accept openmetrics with q=0: Prometheus text (%s)" % ct)
    prom = parse(parse_prom, prom_text, "Prometheus text")
    om = parse(parse_om, om_text, "OpenMetrics")
    if prom is None or om is None:
        return
    check(True, "both formats parse (%d / %d samples)" % (len(prom), len(om)))
    names = lambda d: {n for n, _ in d}  # noqa: E731
    # OpenMetrics adds nothing but may drop nothing either (gauges may move between scrapes).
    check(names(prom) == names(om), "same sample names in both formats (diff %s)" %
          sorted(names(prom) ^ names(om))[:5])

    info = [(k, v) for k, v in om.items() if k[0] == "pdeltad_build_info"]
    labels = dict(info[0][0][1]) if info else {}
    check(len(info) == 1 and info[0][1] == 1 and "protocol" in labels and "version" in labels,
          "pdeltad_build_info{version,protocol,...} 1: %s" % labels)
    if a.version:
        check(labels.get("version") == a.version, "build_info version %s" % a.version)

    now = time.time()
    val = {k[0]: v for k, v in prom.items() if k[0].startswith("process_")}
    for n in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
              "process_max_fds", "process_start_time_seconds", "process_virtual_memory_bytes"):
        check(n in val, "%s present" % n)
    check(val.get("process_resident_memory_bytes", 0) > 1 << 20, "resident memory > 1 MiB")
    check(val.get("process_virtual_memory_bytes", 0) >= val.get("process_resident_memory_bytes", 1),
          "virtual >= resident")
    check(0 < val.get("process_open_fds", 0) <= val.get("process_max_fds", 0), "0 < open fds <= max fds")
    check(now - 86400 < val.get("process_start_time_seconds", 0) <= now + 5,
          "start time within the last day (%s)" % val.get("process_start_time_seconds"))
    check(val.get("process_cpu_seconds_total", -1) >= 0, "cpu seconds >= 0")

    req = {dict(k[1])["tenant"]: v for k, v in prom.items() if k[0] == "pdeltad_tenant_requests_total"}
    for fam in ("received_bytes", "sent_bytes", "new_streams", "request_errors"):
        got = {dict(k[1])["tenant"] for k in prom if k[0] == "pdeltad_tenant_%s_total" % fam}
        check(got == set(req), "pdeltad_tenant_%s_total has the same tenants" % fam)
    for t in a.tenant:
        check(req.get(t, 0) > 0, "pdeltad_tenant_requests_total{tenant=%r} > 0 (%s)" % (t, req.get(t)))
    if a.max_tenants is not None:
        named = [t for t in req if t != "_other"]
        check(len(named) <= a.max_tenants, "at most %d named tenants: %s" % (a.max_tenants, named))
    if a.other:
        check(req.get("_other", 0) > 0, "tenant=\"_other\" sums the rest (%s)" % req.get("_other"))


if __name__ == "__main__":
    main()
    print("%d passed, %d failed" % (PASSED, FAILED))
    sys.exit(1 if FAILED else 0)
