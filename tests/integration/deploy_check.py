#!/usr/bin/python3
"""deploy_check: the deploy/ files agree with each other and with the repository.

  deploy_check.py ROOT PREFIX

PREFIX is a `make install PREFIX=...` tree (what the image's build stage makes at
/opt/pdelta). Checks:
  - Dockerfile: every COPY source exists in the build context (and is not excluded by
    .dockerignore); every absolute path the image runs (ENTRYPOINT, HEALTHCHECK) is in
    PREFIX or COPYed; HEALTHCHECK is exec form (no shell); the image config is the
    container config and listens on every interface; the build stage installs what the
    Makefile's pkg-config list needs
  - .dockerignore keeps .git, build and bin out and nothing the build needs
  - deploy/k8s/statefulset.yaml: every document parses; ConfigMap/Secret/PVC names,
    mount paths, the config's file paths, container ports, Service target ports,
    probe ports and paths, labels and selectors, the PodDisruptionBudget all agree
  - deploy/k8s/cluster.yaml (stateless nodes on an external PostgreSQL): every document
    parses; one Deployment (3+ replicas), headless Service, ConfigMap and PodDisruptionBudget
    whose labels and selectors agree; no volume claim; the config's db is a PostgreSQL URI
    without a password, db_password_file and the TLS files come from mounted Secret items
    (the header's `kubectl create secret` commands create them), the database CA too;
    ports, probes, uid and image as for the StatefulSet; the PodDisruptionBudget leaves
    most replicas up
  - the systemd unit's ExecStart binary and Documentation= man page are installed in
    PREFIX (paths rewritten from /usr/local)
  - README's Deploy section: docker build/run/curl commands consistent with the above
Prints ok/FAIL lines and "N passed, N failed".
"""

import fnmatch
import json
import os
import re
import shlex
import sys

import yaml

ROOT, PREFIX = sys.argv[1], sys.argv[2]
PASSED = FAILED = 0


def check(cond, what):
    global PASSED, FAILED
    PASSED, FAILED = (PASSED + 1, FAILED) if cond else (PASSED, FAILED + 1)
    print("%s %s" % ("ok  " if cond else "FAIL", what))
    return cond


def read(rel):
    with open(os.path.join(ROOT, rel)) as f:
        return f.read()


def conf_values(text):
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "=" in line:
            k, v = line.split("=", 1)
            out[k.strip().replace("-", "_")] = v.strip()
    return out


def port_of(addr):
    return int(addr.rsplit(":", 1)[1])


def dockerfile_instructions(text):
    """(instruction, argument) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#")))
    return [(m.group(1).upper(), m.group(2).strip()) for m in re.finditer(r"^\s*([A-Za-z]+)\s+(.*)$", text, re.M)]


def ignored(path, patterns):
    hit = False
    for p in patterns:
        neg = p.startswith("!")
        p = p.lstrip("!")
        if fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path, p.replace("**/", "")) or path.startswith(p.rstrip("/") + "/"):
            hit = not neg
    return hit


# ---- Dockerfile ----------------------------------------------------------------------------------
ins = dockerfile_instructions(read("deploy/Dockerfile"))
ign = [l.strip() for l in read(".dockerignore").splitlines() if l.strip() and not l.startswith("#")]
for must in (".git", "build", "bin"):
    check(must in ign, ".dockerignore excludes %s" % must)
for need in ("Makefile", "server/main.c", "client/pdelta.h", "common/pd_engine.c", "doc/man/gen-man.sh",
             "deploy/pdeltad.container.conf", "proto/pdelta_proto.h"):
    check(not ignored(need, ign), ".dockerignore keeps %s in the build context" % need)

copied = {}
for name, arg in ins:
    if name != "COPY" or "--from=" in arg:
        continue
    src, dst = shlex.split(arg)[-2:]
    if src != ".":
        check(os.path.exists(os.path.join(ROOT, src)), "Dockerfile COPY %s: exists" % src)
        copied[dst] = src
check("/etc/pdelta/pdeltad.conf" in copied, "the image gets a config at /etc/pdelta/pdeltad.conf")
image_conf_src = copied.get("/etc/pdelta/pdeltad.conf", "")
image_conf = conf_values(read(image_conf_src)) if image_conf_src else {}
for k in ("listen", "metrics_listen"):
    check(image_conf.get(k, "").startswith(("0.0.0.0:", "[::]:")),
          "image config: %s on every interface (%s)" % (k, image_conf.get(k)))

runs = " ".join(a for n, a in ins if n == "RUN")
check("make install PREFIX=/opt/pdelta" in runs, "build stage installs into /opt/pdelta")
pkgs = re.search(r"^PKGS := (.*)$", read("Makefile"), re.M).group(1).split()
deb = {"libevent": "libevent-dev", "libevent_openssl": "libevent-dev", "libevent_pthreads": "libevent-dev",
       "openssl": "libssl-dev", "zlib": "zlib1g-dev", "libdeflate": "libdeflate-dev", "libisal": "libisal-dev",
       "sqlite3": "libsqlite3-dev", "libcurl": "libcurl4-openssl-dev", "libpq": "libpq-dev"}
for p in pkgs:
    check(deb.get(p, "?") in runs, "build stage installs %s (for pkg-config %s)" % (deb.get(p), p))
check("libsystemd-dev" in runs, "build stage installs libsystemd-dev (sd_notify)")
check("libsystemd-dev" in read("deploy/install-deps.sh"), "install-deps.sh installs libsystemd-dev")


def image_path_ok(path):
    if path.startswith("/opt/pdelta/"):
        return os.path.exists(os.path.join(PREFIX, path[len("/opt/pdelta/"):]))
    return path in copied


hc = [a for n, a in ins if n == "HEALTHCHECK"]
check(len(hc) == 1, "one HEALTHCHECK")
cmd = json.loads(hc[0].split("CMD", 1)[1]) if hc and "CMD" in hc[0] else None
check(isinstance(cmd, list) and cmd[0] not in ("sh", "/bin/sh", "bash", "/bin/bash"),
      "HEALTHCHECK is exec form without a shell: %s" % cmd)
ep = json.loads(dict(ins).get("ENTRYPOINT", "[]"))
for argv, what in ((cmd or [], "HEALTHCHECK"), (ep, "ENTRYPOINT")):
    paths = [a for a in argv if a.startswith("/")]
    check(paths and all(image_path_ok(p) for p in paths), "%s paths exist in the image: %s" % (what, paths))
check(cmd and "--healthcheck" in cmd and ep and cmd[:len(ep)] == ep,
      "HEALTHCHECK runs the ENTRYPOINT's pdeltad and config with --healthcheck")
uid = re.search(r"useradd [^&]*--uid (\d+)", runs)
check(uid is not None, "the image's user has a fixed uid")

# ---- Kubernetes ------------------------------------------------------------------------------------
def manifest(name, kinds):
    """deploy/k8s/NAME's documents by kind, checked to parse, each with kind and apiVersion,
    and to hold one document of each of kinds; then the first of each of kinds ({} if none)."""
    docs = list(yaml.safe_load_all(read("deploy/k8s/" + name)))
    check(all(isinstance(d, dict) and d.get("kind") and d.get("apiVersion") for d in docs),
          "%s: %d documents parse, each with kind and apiVersion" % (name, len(docs)))
    by = {}
    for d in docs:
        by.setdefault(d["kind"], []).append(d)
    for k in kinds:
        check(len(by.get(k, [])) == 1, "%s: one %s" % (name, k))
    return [by] + [by.get(k, [{}])[0] for k in kinds]


_, svc, cm, sts, pdb = manifest("statefulset.yaml", ("Service", "ConfigMap", "StatefulSet", "PodDisruptionBudget"))
spec = sts.get("spec", {})
pod = spec.get("template", {}).get("spec", {})
labels = spec.get("template", {}).get("metadata", {}).get("labels", {})
sel = spec.get("selector", {}).get("matchLabels", {})
c = pod.get("containers", [{}])[0]


def subset(a, b):
    return bool(a) and all(b.get(k) == v for k, v in a.items())


check(subset(sel, labels), "StatefulSet selector %s matches the pod labels" % sel)
check(subset(svc.get("spec", {}).get("selector", {}), labels), "Service selector matches the pod labels")
check(subset(pdb.get("spec", {}).get("selector", {}).get("matchLabels", {}), labels),
      "PodDisruptionBudget selector matches the pod labels")
check(spec.get("serviceName") == svc.get("metadata", {}).get("name"), "serviceName is the Service")
check(svc.get("spec", {}).get("clusterIP") == "None", "the Service is headless (per-pod names)")
check(spec.get("replicas", 1) > 1, "more than one replica (%s)" % spec.get("replicas"))
p = pdb.get("spec", {})
check(("maxUnavailable" in p) != ("minAvailable" in p), "PodDisruptionBudget sets one of maxUnavailable/minAvailable")

vols = {v["name"]: v for v in pod.get("volumes", [])}
claims = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
mounts = c.get("volumeMounts", [])
check(all(m["name"] in vols or m["name"] in claims for m in mounts), "every volumeMount names a volume or claim")
args = c.get("args", [])
conf_path = args[args.index("--config") + 1] if "--config" in args else None
cm_mount = [m for m in mounts if m["mountPath"] == conf_path]
check(bool(cm_mount), "the --config path %s is mounted" % conf_path)
cm_vol = vols.get(cm_mount[0]["name"], {}) if cm_mount else {}
cm_name = cm_vol.get("configMap", {}).get("name")
check(cm_name == cm.get("metadata", {}).get("name"), "the config volume's ConfigMap %s is in the manifest" % cm_name)
key = cm_mount[0].get("subPath") if cm_mount else None
data = cm.get("data", {})
check(key in data, "the ConfigMap has the mounted key %s" % key)
check(data.get(key) == read("deploy/pdeltad.container.conf"),
      "the ConfigMap's %s is deploy/pdeltad.container.conf verbatim" % key)
kconf = conf_values(data.get(key, ""))

# every file the config names is provided by a mounted Secret item (or the state volume)
secret_mounts = {m["mountPath"]: vols[m["name"]]["secret"] for m in mounts if "secret" in vols.get(m["name"], {})}
state_mounts = [m["mountPath"] for m in mounts if m["name"] in claims]
names = set()
for k in ("tls_cert", "tls_key", "tls_client_ca", "tenants"):
    path = kconf.get(k)
    d, base = os.path.split(path or "")
    sec = secret_mounts.get(d, {})
    items = {i["path"]: i["key"] for i in sec.get("items", [])}
    check(base in items and items[base] == base, "%s = %s comes from Secret %s key %s" % (k, path, sec.get("secretName"), base))
    names.add(base)
    # the same names as gen-certs.sh writes (tenants: copied from tenants.example)
    if k != "tenants":
        check(re.search(r"^#\s+.*\b%s\b" % re.escape(base), read("deploy/certs/gen-certs.sh"), re.M) is not None,
              "gen-certs.sh documents %s" % base)
check(names == {"server.pem", "server.key", "ca.pem", "tenants"}, "Secret items: %s" % sorted(names))
check(os.path.dirname(kconf.get("db", "")) in state_mounts, "db %s is on the state volume" % kconf.get("db"))
sec_name = next(iter(secret_mounts.values()), {}).get("secretName")
hdr = read("deploy/k8s/statefulset.yaml")
m = re.search(r"kubectl create secret generic (\S+)((?:.|\n)*?)\n#\s*kubectl apply", hdr)
check(m is not None and m.group(1) == sec_name, "the header's kubectl create secret names %s" % sec_name)
if m:
    files = {os.path.basename(f) for f in re.findall(r"--from-file=(\S+)", m.group(2))}
    check(files == names, "the header's secret has the four files: %s" % sorted(files))

cports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
check(cports.get("pdelta") == port_of(kconf["listen"]), "container port pdelta = listen port")
check(cports.get("metrics") == port_of(kconf["metrics_listen"]), "container port metrics = metrics_listen port")
for sp in svc.get("spec", {}).get("ports", []):
    tp = sp.get("targetPort")
    check(tp in cports or tp in cports.values(), "Service port %s targets a container port" % sp.get("name"))
for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
    hg = c.get(probe, {}).get("httpGet", {})
    port = cports.get(hg.get("port"), hg.get("port"))
    check(hg.get("path") == "/healthz" and port == port_of(kconf["metrics_listen"]),
          "%s: GET /healthz on the metrics port" % probe)
ann = spec.get("template", {}).get("metadata", {}).get("annotations", {})
check(str(ann.get("prometheus.io/port")) == str(port_of(kconf["metrics_listen"])), "scrape annotation port")
if uid:
    check(pod.get("securityContext", {}).get("runAsUser") == int(uid.group(1)), "runAsUser is the image's uid")
check(c.get("image", "").split(":")[0] in read("deploy/Dockerfile"), "the image name is the one the Dockerfile builds")

# ---- Kubernetes, the scale-out cluster ------------------------------------------------------------------
cby, csvc, ccm, dep_, cpdb = manifest("cluster.yaml", ("Service", "ConfigMap", "Deployment", "PodDisruptionBudget"))
check(not cby.get("StatefulSet") and not cby.get("PersistentVolumeClaim"), "cluster.yaml: no per-pod state")
dspec = dep_.get("spec", {})
dpod = dspec.get("template", {}).get("spec", {})
dlabels = dspec.get("template", {}).get("metadata", {}).get("labels", {})
dc = dpod.get("containers", [{}])[0]
check(subset(dspec.get("selector", {}).get("matchLabels", {}), dlabels), "cluster: Deployment selector matches the pod labels")
check(subset(csvc.get("spec", {}).get("selector", {}), dlabels), "cluster: Service selector matches the pod labels")
check(subset(cpdb.get("spec", {}).get("selector", {}).get("matchLabels", {}), dlabels),
      "cluster: PodDisruptionBudget selector matches the pod labels")
check(not subset(sel, dlabels), "cluster: its pods are not the StatefulSet's (distinct labels)")
check(csvc.get("spec", {}).get("clusterIP") == "None", "cluster: the Service is headless (its name resolves to every pod)")
nrep = dspec.get("replicas", 1)
check(nrep >= 3, "cluster: at least 3 replicas (%s)" % nrep)
cp = cpdb.get("spec", {})
check(("maxUnavailable" in cp) != ("minAvailable" in cp), "cluster: PodDisruptionBudget sets one of maxUnavailable/minAvailable")
check(isinstance(cp.get("maxUnavailable", 0), int) and 0 < cp.get("maxUnavailable", 1) < nrep,
      "cluster: PodDisruptionBudget keeps most replicas up (maxUnavailable %s)" % cp.get("maxUnavailable"))
dvols = {v["name"]: v for v in dpod.get("volumes", [])}
dmounts = dc.get("volumeMounts", [])
check(all(m["name"] in dvols for m in dmounts), "cluster: every volumeMount names a volume")
check(not any("persistentVolumeClaim" in v for v in dvols.values()), "cluster: no persistent volume")
dargs = dc.get("args", [])
dconf_path = dargs[dargs.index("--config") + 1] if "--config" in dargs else None
dcm_mount = [m for m in dmounts if m["mountPath"] == dconf_path]
check(bool(dcm_mount) and dvols.get(dcm_mount[0]["name"], {}).get("configMap", {}).get("name") == ccm.get("metadata", {}).get("name"),
      "cluster: --config %s is the manifest's ConfigMap" % dconf_path)
dkey = dcm_mount[0].get("subPath") if dcm_mount else None
dconf = conf_values(ccm.get("data", {}).get(dkey, ""))
settings = read("server/pd_settings.c")
unknown = sorted(k for k in dconf if '"%s"' % k not in settings)
check(dconf and not unknown, "cluster: the config uses pdeltad's settings (unknown: %s)" % unknown)
db = dconf.get("db", "")
check(re.match(r"postgres(ql)?://[^:@/]+@", db) is not None, "cluster: db is a PostgreSQL URI with a role and no password")
check("sslmode=verify-full" in db, "cluster: TLS to the database is verified (sslmode=verify-full)")
dsecret_mounts = {m["mountPath"]: dvols[m["name"]]["secret"] for m in dmounts if "secret" in dvols.get(m["name"], {})}
created = dict(re.findall(r"kubectl create secret generic (\S+)((?:.|\n)*?)(?=\n#\s*kubectl)", read("deploy/k8s/cluster.yaml")))
ssl_root = re.search(r"sslrootcert=([^&]+)", db)
for k, path in [(k, dconf.get(k)) for k in ("tls_cert", "tls_key", "tls_client_ca", "tenants", "db_password_file")] + \
        [("sslrootcert", ssl_root.group(1) if ssl_root else None)]:
    d, base = os.path.split(path or "")
    sec = dsecret_mounts.get(d, {})
    items = {i["path"]: i["key"] for i in sec.get("items", [])}
    made = {re.sub(r"=.*", "", f) if "=" in f else os.path.basename(f)
            for f in re.findall(r"--from-file=(\S+)", created.get(sec.get("secretName"), ""))}
    check(base in items and items[base] in made,
          "cluster: %s = %s comes from Secret %s, created in the header" % (k, path, sec.get("secretName")))
dports = {p["name"]: p["containerPort"] for p in dc.get("ports", [])}
check(dports.get("pdelta") == port_of(dconf.get("listen", ":0")), "cluster: container port pdelta = listen port")
check(dports.get("metrics") == port_of(dconf.get("metrics_listen", ":0")), "cluster: container port metrics = metrics_listen port")
for sp in csvc.get("spec", {}).get("ports", []):
    check(sp.get("targetPort") in dports, "cluster: Service port %s targets a container port" % sp.get("name"))
for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
    hg = dc.get(probe, {}).get("httpGet", {})
    check(hg.get("path") == "/healthz" and dports.get(hg.get("port")) == dports.get("metrics"),
          "cluster: %s GETs /healthz on the metrics port" % probe)
if uid:
    check(dpod.get("securityContext", {}).get("runAsUser") == int(uid.group(1)), "cluster: runAsUser is the image's uid")
check(dc.get("image") == c.get("image"), "cluster: the same image as the StatefulSet")
check(dpod.get("terminationGracePeriodSeconds", 30) > 30, "cluster: the grace period outlasts the drain (30 s)")

# ---- systemd unit ------------------------------------------------------------------------------------
unit = read("deploy/pdeltad.service")
exe = re.search(r"^ExecStart=(\S+)", unit, re.M).group(1)
check(exe.startswith("/usr/local/") and os.access(os.path.join(PREFIX, exe[len("/usr/local/"):]), os.X_OK),
      "unit ExecStart %s is installed by make install" % exe)
doc = re.search(r"^Documentation=man:(\w+)\((\d)\)", unit, re.M)
check(doc is not None and os.path.exists(os.path.join(PREFIX, "share/man/man%s/%s.%s" % (doc.group(2), doc.group(1), doc.group(2)))),
      "unit Documentation= names an installed man page")
check(re.search(r"^Type=notify$", unit, re.M) is not None and re.search(r"^WatchdogSec=", unit, re.M) is not None,
      "unit is Type=notify with WatchdogSec")
ex = conf_values(read("deploy/pdeltad.conf.example"))
for k in ("tls_cert", "tls_key", "tenants"):
    check(os.path.basename(ex.get(k, "")) in names, "pdeltad.conf.example %s uses the same file name" % k)

# ---- README Deploy --------------------------------------------------------------------------------------
rd = read("README.md")
dep = rd[rd.find("## Deploy"):]
dep = dep[:dep.find("\n## ", 5)]
check("docker build -f deploy/Dockerfile" in dep, "README Deploy: docker build")
run = re.search(r"docker run (?:[^\n]*\\\n)*[^\n]*", dep)
check(run is not None, "README Deploy: docker run")
if run:
    r = run.group(0)
    cdir = os.path.dirname(kconf["tls_cert"])
    check(":%s" % cdir in r, "docker run mounts the certs directory %s" % cdir)
    check(":%d " % port_of(kconf["listen"]) in r + " ", "docker run publishes the TLS port")
check(re.search(r"curl [^\n]*/healthz", dep) is not None, "README Deploy: probes /healthz")

print("%d passed, %d failed" % (PASSED, FAILED))
sys.exit(1 if FAILED else 0)
