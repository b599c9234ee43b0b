#!/usr/bin/env python3
"""Checks behind scripts/validate-manifests.sh that no off-the-shelf validator does.

    checks.py core OUTDIR FILE...         the objects of kinds Kubernetes serves itself (for
                                          kubernetes-validate, which skips custom resources), one
                                          file per input
    checks.py namespaces OUT FILE...      write to OUT the Namespaces the files define (with their
                                          labels), a bare one for each other namespace they use and
                                          the `default` ServiceAccount of each: what a server-side
                                          dry run of the files needs to exist
    checks.py kv-output FILE              fail on kubernetes-validate output that hides a problem
                                          (a core kind without a schema is only a warning there)
    checks.py wiring CHART_RENDER ISTIO_DIR
                                          the WasmPlugins, PeerAuthentication and AuthorizationPolicy
                                          match the chart's Service, ports and labels
    checks.py restricted FILE...          every pod template meets the Pod Security Standards'
                                          `restricted` profile (the fields it requires)
    checks.py rbac CHART_RENDER [NS,...]  the scaler's RBAC grants nothing beyond its least-privilege list
                                          (with NS: only Roles, one in each of those namespaces)
    checks.py dashboard DASHBOARD SCALER_SRC
                                          the dashboard parses and every metric it queries is
                                          registered by the scaler

Every failure prints one line naming the file, the object and the field. Exit 1 on any failure.
Needs PyYAML (the validation venv has it).
"""
import glob
import json
import os
import re
import sys

import yaml

Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# API groups served by Kubernetes itself: kubernetes-validate knows their schemas.
CORE_GROUP_SUFFIX = ".k8s.io"
CORE_GROUPS_WITHOUT_DOT = {"", "v1", "apps", "batch", "autoscaling", "policy"}

# What the shipped istio/ resources must be, per file role.
FILTER_IMAGE_RE = re.compile(r"^oci://[^@\s]+:[A-Za-z0-9._-]+$")
SHA256_RE = re.compile(r"^[a-f0-9]{64}$")
# The filter's built-in default for pluginConfig.cluster (filter/src/config.rs, DEFAULT_CLUSTER).
DEFAULT_FILTER_CLUSTER = "outbound|8080||surge-scaler.surge-system.svc.cluster.local"


def load_docs(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.load_all(f, Loader=Loader) if isinstance(d, dict)]


def api_group(doc):
    api = doc.get("apiVersion", "")
    return api.split("/")[0] if "/" in api else ""


def is_core(doc):
    group = api_group(doc)
    return group in CORE_GROUPS_WITHOUT_DOT or group.endswith(CORE_GROUP_SUFFIX)


def describe(doc):
    meta = doc.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{doc.get('kind', '?')} {ns + '/' if ns else ''}{meta.get('name', '?')}"


def cmd_core(out, files):
    """One file of core objects per input, named after the input's path."""
    os.makedirs(out, exist_ok=True)
    count, custom, failures = 0, 0, 0
    for path in files:
        try:
            docs = load_docs(path)
        except yaml.YAMLError as e:
            print(f"FAIL {path}: not valid YAML: {e}")
            failures += 1
            continue
        if not docs:
            print(f"FAIL {path}: no Kubernetes object in this file")
            failures += 1
            continue
        for d in docs:
            if not d.get("apiVersion") or not d.get("kind"):
                print(f"FAIL {path}: {describe(d)}: apiVersion and kind are required")
                failures += 1
        core = [d for d in docs if is_core(d)]
        custom += len(docs) - len(core)
        if core:
            count += len(core)
            with open(os.path.join(out, path.strip("./").replace("/", "__")), "w", encoding="utf-8") as f:
                yaml.safe_dump_all(core, f, sort_keys=False)
    print(f"{count} core objects from {len(files)} files (and {custom} custom resources, for the API server only)")
    return 1 if failures else 0


def cmd_namespaces(out, files):
    """Namespaces first: a server-side dry run of a namespaced object needs its namespace to exist.
    The first definition of a Namespace wins; the API server judges each one in the dry run."""
    defined, used = {}, set()
    for path in files:
        try:
            docs = load_docs(path)
        except yaml.YAMLError:
            continue  # reported by the dry run
        for d in docs:
            meta = d.get("metadata") or {}
            if d.get("kind") == "Namespace" and d.get("apiVersion") == "v1" and meta.get("name"):
                defined.setdefault(meta["name"], {"apiVersion": "v1", "kind": "Namespace",
                                                  "metadata": {"name": meta["name"], "labels": meta.get("labels") or {}}})
            if meta.get("namespace"):
                used.add(meta["namespace"])
    objects = [defined[n] for n in sorted(defined)]
    objects += [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}} for n in sorted(used - set(defined))]
    # What the controller-manager (not running: an API server alone) would add to each: a pod's
    # admission needs its ServiceAccount, `default` unless it names one.
    objects += [{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": n}}
                for n in sorted(set(defined) | used)]
    with open(out, "w", encoding="utf-8") as f:
        yaml.safe_dump_all(objects, f, sort_keys=False)
    print(f"namespaces: {', '.join(sorted(set(defined) | used)) or 'none'}")
    return 0


def cmd_kv_output(path):
    """kubernetes-validate exits 0 when it has no schema for a kind; for core kinds that is a typo."""
    bad = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("ERROR") or "Couldn't find schema" in line:
                print(f"FAIL {line.rstrip()}")
                bad += 1
    return 1 if bad else 0


def find(docs, kind, name=None):
    return [d for d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]


def cmd_wiring(chart_render, istio_dir):
    """The filter reaches the chart's Service; the Istio policies select the chart's pods and ports."""
    errors = []
    chart = load_docs(chart_render)
    services = find(chart, "Service")
    deployments = find(chart, "Deployment")
    if len(services) != 1 or len(deployments) != 1:
        print(f"FAIL {chart_render}: expected one Service and one Deployment, found {len(services)} and {len(deployments)}")
        return 1
    svc, dep = services[0], deployments[0]
    ns = svc["metadata"]["namespace"]
    http_ports = [p for p in svc["spec"]["ports"] if p.get("name") == "http"]
    if len(http_ports) != 1:
        print(f"FAIL {chart_render}: Service {svc['metadata']['name']}: no port named http")
        return 1
    expected_cluster = f"outbound|{http_ports[0]['port']}||{svc['metadata']['name']}.{ns}.svc.cluster.local"
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    container = dep["spec"]["template"]["spec"]["containers"][0]
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}

    plugins = []
    envoyfilters = []
    for path in sorted(glob.glob(os.path.join(istio_dir, "*.yaml"))):
        for doc in load_docs(path):
            doc["__file"] = path
            if doc.get("kind") == "WasmPlugin":
                plugins.append(doc)
            elif doc.get("kind") == "EnvoyFilter":
                envoyfilters.append(doc)
            elif doc.get("kind") == "PeerAuthentication":
                where = f"{path}: {describe(doc)}"
                if doc["metadata"].get("namespace") != ns:
                    errors.append(f"{where}: metadata.namespace must be the scaler's namespace {ns}")
                if (doc.get("spec") or {}).get("mtls", {}).get("mode") != "STRICT":
                    errors.append(f"{where}: spec.mtls.mode must be STRICT")
            elif doc.get("kind") == "AuthorizationPolicy":
                where = f"{path}: {describe(doc)}"
                spec = doc.get("spec") or {}
                if doc["metadata"].get("namespace") != ns:
                    errors.append(f"{where}: metadata.namespace must be the scaler's namespace {ns}")
                for k, v in (spec.get("selector") or {}).get("matchLabels", {}).items():
                    if pod_labels.get(k) != v:
                        errors.append(f"{where}: spec.selector.matchLabels.{k}={v} does not select the scaler's pods")
                ops = [t["operation"] for r in spec.get("rules", []) for t in r.get("to", [])]
                ports = {p for o in ops for p in o.get("ports", [])}
                if ports != {str(container_ports.get("http"))}:
                    errors.append(f"{where}: rules[].to[].operation.ports {sorted(ports)} must be the ingest "
                                  f"container port [{container_ports.get('http')}]")
    roles = {}
    for p in plugins:
        where = f"{p['__file']}: {describe(p)}"
        spec = p.get("spec") or {}
        cfg = spec.get("pluginConfig") or {}
        # The key is the filter's (filter/README.md); an absent key means the filter's default.
        cluster = cfg.get("cluster", DEFAULT_FILTER_CLUSTER)
        if cluster != expected_cluster:
            errors.append(f"{where}: spec.pluginConfig.cluster is {cluster!r}, but the chart's Service "
                          f"gives {expected_cluster!r}")
        if spec.get("failStrategy") != "FAIL_OPEN":
            errors.append(f"{where}: spec.failStrategy must be FAIL_OPEN (a trapped VM must never fail requests)")
        if not FILTER_IMAGE_RE.match(spec.get("url", "")):
            errors.append(f"{where}: spec.url must be oci://<image>:<tag>")
        if not SHA256_RE.match(spec.get("sha256", "")):
            errors.append(f"{where}: spec.sha256 must pin the image (64 hex digits)")
        role = cfg.get("role")
        if role == "waypoint":
            # Waypoints ignore selector and take plugins through targetRefs only; on a waypoint
            # match.mode CLIENT and match.ports never match.
            targets = {(t.get("group"), t.get("kind"), t.get("name")) for t in spec.get("targetRefs") or []}
            if not targets or spec.get("selector") or spec.get("match"):
                errors.append(f"{where}: role waypoint needs spec.targetRefs (the waypoint's Gateway or "
                              "GatewayClass istio-waypoint) and no selector or match")
            roles.setdefault(role, []).append(p)
            continue
        modes = {m.get("mode") for m in spec.get("match", [])}
        # A sidecar counts what its pod serves (inbound); a gateway and a client sidecar see
        # requests to other workloads (outbound), where requests to a cold one are held.
        want = {"sidecar": {"SERVER"}, "gateway": {"CLIENT"}, "client": {"CLIENT"}}.get(role)
        if want is None:
            errors.append(f"{where}: spec.pluginConfig.role must be sidecar, gateway, client or waypoint, not {role!r}")
        elif modes != want:
            errors.append(f"{where}: role {role} needs spec.match[].mode {sorted(want)}, found {sorted(m or 'unset' for m in modes)} "
                          "(the default covers both directions and counts every request twice)")
        roles.setdefault(role, []).append(p)
    # A waypoint's plugin has the scaler's cluster only through an EnvoyFilter naming the
    # scaler's Service in envoyfilter.istio.io/referenced-services and targeting the same
    # waypoints.
    scaler_ref = f"{ns}/{svc['metadata']['name']}.{ns}.svc.cluster.local"
    for p in roles.get("waypoint", []):
        targets = {(t.get("group"), t.get("kind"), t.get("name")) for t in p["spec"].get("targetRefs") or []}
        ok = any(
            scaler_ref in (f["metadata"].get("annotations") or {})
            .get("envoyfilter.istio.io/referenced-services", "").split(",")
            and {(t.get("group"), t.get("kind"), t.get("name")) for t in (f.get("spec") or {}).get("targetRefs") or []} == targets
            and f["metadata"].get("namespace") == p["metadata"].get("namespace")
            for f in envoyfilters
        )
        if not ok:
            errors.append(f"{p['__file']}: {describe(p)}: no EnvoyFilter in its namespace with its targetRefs "
                          f"references {scaler_ref} (envoyfilter.istio.io/referenced-services)")
    for role in ("sidecar", "gateway", "client", "waypoint"):
        if len(roles.get(role, [])) != 1:
            errors.append(f"{istio_dir}: expected one WasmPlugin with role {role}, found {len(roles.get(role, []))}")
    pins = {(p["spec"].get("url"), p["spec"].get("sha256")) for p in plugins}
    if len(pins) > 1:
        errors.append(f"{istio_dir}: the WasmPlugins pin different images: {sorted(pins)}")
    for e in errors:
        print(f"FAIL {e}")
    if not errors:
        print(f"OK   {len(plugins)} WasmPlugins send to {expected_cluster}; Istio policies match the chart")
    return 1 if errors else 0


POD_OWNERS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
RESTRICTED_CAPS_ALLOWED = {"NET_BIND_SERVICE"}


def pod_spec(doc):
    if doc.get("kind") == "Pod":
        return doc.get("spec") or {}
    if doc.get("kind") in POD_OWNERS:
        return ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}
    return None


def restricted_violations(spec):
    """The `restricted` Pod Security Standard's rules (kubernetes.io/docs/concepts/security/pod-security-standards)."""
    out = []
    pod_sc = spec.get("securityContext") or {}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            out.append(f"spec.{key} must not be true")
    for v in spec.get("volumes") or []:
        if "hostPath" in v:
            out.append(f"volume {v.get('name')}: hostPath is not allowed")
    containers = [("containers", c) for c in spec.get("containers") or []] + \
                 [("initContainers", c) for c in spec.get("initContainers") or []]
    for field, c in containers:
        sc = c.get("securityContext") or {}
        where = f"{field}[{c.get('name')}].securityContext"
        if sc.get("privileged"):
            out.append(f"{where}.privileged must not be true")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{where}.allowPrivilegeEscalation must be false")
        non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
        if non_root is not True:
            out.append(f"{where}.runAsNonRoot (or the pod's) must be true")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            out.append(f"{where}.runAsUser must not be 0")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{where}.seccompProfile.type (or the pod's) must be RuntimeDefault or Localhost")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{where}.capabilities.drop must include ALL")
        extra = set(caps.get("add") or []) - RESTRICTED_CAPS_ALLOWED
        if extra:
            out.append(f"{where}.capabilities.add must not add {sorted(extra)}")
        # Not part of `restricted`, but promised by Surge's chart and headroom pods.
        if sc.get("readOnlyRootFilesystem") is not True:
            out.append(f"{where}.readOnlyRootFilesystem must be true")
    return out


def cmd_restricted(files):
    errors, pods = [], 0
    for path in files:
        for doc in load_docs(path):
            spec = pod_spec(doc)
            if spec is None:
                continue
            pods += 1
            errors += [f"{path}: {describe(doc)}: {v}" for v in restricted_violations(spec)]
    if pods == 0:
        errors.append(f"no pod template in {files}")
    for e in errors:
        print(f"FAIL {e}")
    if not errors:
        print(f"OK   {pods} pod templates meet the restricted profile with a read-only root filesystem")
    return 1 if errors else 0


# The least privilege the scaler needs: (apiGroup, resource) -> verbs. The same list as
# tests/tests/scaler_chart.rs proves from the real scaler's requests; this copy keeps the check
# offline. The Leases the replicas share the targets through are granted apart (LEASE_ALLOWED).
RBAC_ALLOWED = {
    ("surge.dev", "surgescalers"): {"list", "watch"},
    ("surge.dev", "surgescalers/status"): {"patch"},
    ("apps", "deployments/scale"): {"get", "patch"},
    ("apps", "statefulsets/scale"): {"get", "patch"},
    ("autoscaling", "horizontalpodautoscalers"): {"list"},
    ("keda.sh", "scaledobjects"): {"list"},
    ("events.k8s.io", "events"): {"create", "patch"},
    # Scale to zero: a Service's ports (when scaleToZero names none) and its EndpointSlices.
    ("", "services"): {"get"},
    ("discovery.k8s.io", "endpointslices"): {"list", "watch"},
    # Headroom: the CapacityBuffer <surgescaler>-headroom, by server-side apply.
    ("autoscaling.x-k8s.io", "capacitybuffers"): {"create", "patch"},
}

# Granted by the ClusterRole only (cluster-scoped objects, which a Role cannot grant): ambient
# mode's namespace label istio.io/use-waypoint, read by name.
RBAC_CLUSTER_ONLY = {("", "namespaces"): {"get"}}


# The replicas' Leases (scaler/src/shard/leases.rs), in the release namespace only: the Role
# and RoleBinding named <fullname>-leases.
LEASE_ALLOWED = {("coordination.k8s.io", "leases"): {"list", "create", "update", "delete"}}


def check_lease_role(docs, errors):
    """The <fullname>-leases Role grants exactly LEASE_ALLOWED, in the Deployment's namespace,
    bound to the chart's ServiceAccount; returns the docs without it."""
    deployments = find(docs, "Deployment")
    home = deployments[0]["metadata"].get("namespace") if deployments else None
    lease = [d for d in docs if d.get("kind") in ("Role", "RoleBinding")
             and d["metadata"]["name"].endswith("-leases")]
    kinds = sorted(d["kind"] for d in lease)
    if kinds != ["Role", "RoleBinding"]:
        errors.append(f"expected one Role and one RoleBinding for the Leases, found {kinds}")
    for d in lease:
        if d["metadata"].get("namespace") != home:
            errors.append(f"{d['kind']} {d['metadata']['name']}: in {d['metadata'].get('namespace')}, "
                          f"not the scaler's namespace {home}")
        if d["kind"] == "Role":
            granted = {}
            for rule in d.get("rules") or []:
                for g in rule.get("apiGroups") or []:
                    for r in rule.get("resources") or []:
                        granted.setdefault((g, r), set()).update(rule.get("verbs") or [])
            if granted != LEASE_ALLOWED:
                errors.append(f"Role {d['metadata']['name']}: grants {granted}, expected exactly {LEASE_ALLOWED}")
    return [d for d in docs if not any(d is l for l in lease)]


def cmd_rbac(chart_render, namespaces=None):
    """Cluster-wide (no NAMESPACES): one ClusterRole and no Role. With NAMESPACES (the chart's
    scaler.watchNamespaces): no ClusterRole, one Role and RoleBinding in each. Either way every
    role grants exactly the least-privilege list; the Leases have a Role of their own."""
    errors = []
    docs = check_lease_role(load_docs(chart_render), errors)
    if namespaces is None:
        for kind in ("Role", "RoleBinding"):
            for extra in find(docs, kind):
                errors.append(f"{kind} {extra['metadata']['name']}: the scaler needs no namespaced grant")
        roles = find(docs, "ClusterRole")
        if len(roles) != 1:
            errors.append(f"expected one ClusterRole, found {len(roles)}")
            roles = []
    else:
        for kind in ("ClusterRole", "ClusterRoleBinding"):
            for extra in find(docs, kind):
                errors.append(f"{kind} {extra['metadata']['name']}: with watchNamespaces nothing is cluster-wide")
        if not namespaces:
            errors.append("no namespaces given to check the Roles against")
        roles = find(docs, "Role")
        for kind in ("Role", "RoleBinding"):
            found = sorted(d["metadata"].get("namespace", "") for d in find(docs, kind))
            if found != sorted(namespaces):
                errors.append(f"{kind}s in namespaces {found}, expected one in each of {sorted(namespaces)}")
        role_names = {(r["metadata"].get("namespace"), r["metadata"]["name"]) for r in roles}
        accounts = {(sa["metadata"].get("namespace"), sa["metadata"]["name"]) for sa in find(docs, "ServiceAccount")}
        for binding in find(docs, "RoleBinding"):
            ns, name = binding["metadata"].get("namespace"), binding["metadata"]["name"]
            ref = binding.get("roleRef") or {}
            if ref.get("kind") != "Role" or (ns, ref.get("name")) not in role_names:
                errors.append(f"RoleBinding {name} in {ns}: roleRef {ref} is not the Role in its namespace")
            subjects = {(s.get("namespace"), s.get("name")) for s in binding.get("subjects") or []
                        if s.get("kind") == "ServiceAccount"}
            if not subjects or not subjects <= accounts:
                errors.append(f"RoleBinding {name} in {ns}: subjects {sorted(subjects)} are not the chart's ServiceAccount")
    for role in roles:
        allowed = dict(RBAC_ALLOWED)
        if role["kind"] == "ClusterRole":
            allowed.update(RBAC_CLUSTER_ONLY)
        granted = {}
        scope = role["metadata"].get("namespace")
        name = f"{role['kind']} {role['metadata']['name']}" + (f" in {scope}" if scope else "")
        for i, rule in enumerate(role.get("rules") or []):
            where = f"{name} rules[{i}]"
            if rule.get("resourceNames") or rule.get("nonResourceURLs"):
                errors.append(f"{where}: resourceNames/nonResourceURLs are not expected")
            for g in rule.get("apiGroups") or []:
                for r in rule.get("resources") or []:
                    verbs = set(rule.get("verbs") or [])
                    if "*" in verbs or g == "*" or r == "*":
                        errors.append(f"{where}: wildcard in {g!r}/{r!r} {sorted(verbs)}")
                    extra = verbs - allowed.get((g, r), set())
                    if extra:
                        errors.append(f"{where}: {g or 'core'}/{r} grants {sorted(extra)} beyond the least-privilege list")
                    granted.setdefault((g, r), set()).update(verbs)
        for (g, r), verbs in sorted(allowed.items()):
            lacking = verbs - granted.get((g, r), set())
            if lacking:
                errors.append(f"{name}: {g or 'core'}/{r} lacks {sorted(lacking)}, which the scaler needs")
    for e in errors:
        print(f"FAIL {e}")
    if not errors:
        if namespaces is None:
            print("OK   the ClusterRole grants exactly the least-privilege list; no Role")
        else:
            print(f"OK   a Role in each of {', '.join(namespaces)} grants exactly the least-privilege list; nothing cluster-wide")
    return 1 if errors else 0


PROMQL_WORDS = {
    "sum", "rate", "irate", "increase", "max", "min", "avg", "count", "by", "without", "on", "ignoring",
    "group_left", "group_right", "histogram_quantile", "le", "clamp_min", "clamp_max", "abs", "time",
    "timestamp", "changes", "resets", "delta", "deriv", "topk", "bottomk", "and", "or", "unless",
    "offset", "bool", "vector", "scalar", "label_replace", "max_over_time", "min_over_time",
    "avg_over_time", "sum_over_time", "count_over_time", "last_over_time", "absent", "sort_desc",
}
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")
# Metrics the dashboard may read from other exporters (kube-state-metrics: ready replicas).
EXTERNAL_PREFIXES = ("kube_",)


def metric_names(expr):
    """Metric names in a PromQL expression: identifiers not inside {...} or [...] nor quoted."""
    stripped = re.sub(r'"[^"]*"', "", expr)
    stripped = re.sub(r"\{[^}]*\}", "", stripped)
    stripped = re.sub(r"\[[^\]]*\]", "", stripped)
    stripped = re.sub(r"\$\w+", "", stripped)
    stripped = re.sub(r"(?<![A-Za-z_:])\d+(?:\.\d+)?(?:[eE][-+]?\d+)?", "", stripped)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", stripped):
        word = m.group(0)
        after = stripped[m.end():m.end() + 1]
        if word in PROMQL_WORDS or after == "(":
            continue
        if re.fullmatch(r"\d+[smhdw]?", word):
            continue
        names.add(word)
    # `by (a, b)` lists label names, not metrics.
    for grouping in re.finditer(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", stripped):
        names -= {w.strip() for w in grouping.group(1).split(",")}
    return names


def registered_names(src_dir):
    """Names passed to prometheus-client's `register` calls (string literals) in the scaler."""
    names = set()
    for path in glob.glob(os.path.join(src_dir, "**", "*.rs"), recursive=True):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for m in re.finditer(r"\.register(?:_with_unit)?\s*\(\s*\"([a-zA-Z_:][a-zA-Z0-9_:]*)\"", text):
            names.add(m.group(1))
    return names


def base_name(name, registered, prefixes):
    """Map an exposed series name (prefix + name + suffix) to a registered name, if any."""
    candidates = {name}
    for s in SUFFIXES:
        if name.endswith(s):
            candidates.add(name[: -len(s)])
    for c in list(candidates):
        for p in prefixes:
            if c.startswith(p):
                candidates.add(c[len(p):])
    for c in list(candidates):
        for unit in ("_seconds", "_bytes"):
            if c.endswith(unit):
                candidates.add(c[: -len(unit)])
    return candidates & registered


def cmd_dashboard(dashboard, src_dir):
    with open(dashboard, encoding="utf-8") as f:
        try:
            board = json.load(f)
        except json.JSONDecodeError as e:
            print(f"FAIL {dashboard}: not valid JSON: line {e.lineno}: {e.msg}")
            return 1
    errors = []
    panels = board.get("panels") or []
    exprs = []
    for panel in panels:
        for sub in [panel] + (panel.get("panels") or []):
            for target in sub.get("targets") or []:
                if target.get("expr"):
                    exprs.append((sub.get("title", "?"), target["expr"]))
    for t in (board.get("templating") or {}).get("list", []):
        q = t.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if isinstance(q, str) and "(" in q:
            inner = re.search(r"label_values\(([^,)]*)", q)
            if inner:
                exprs.append((f"variable {t.get('name')}", inner.group(1)))
    if not exprs:
        errors.append(f"{dashboard}: no PromQL expressions in the dashboard")
    registered = registered_names(src_dir)
    if not registered:
        errors.append(f"{src_dir}: no metric registered with prometheus-client (`.register(\"name\", ...)`)")
    prefixes = ("surge_", "surge_scaler_")
    used = set()
    for title, expr in exprs:
        for name in metric_names(expr):
            used.add(name)
            if name.startswith(EXTERNAL_PREFIXES):
                continue
            if registered and not base_name(name, registered, prefixes):
                errors.append(f"{dashboard}: panel {title!r}: metric {name} is not registered in {src_dir}")
    for e in errors:
        print(f"FAIL {e}")
    if not errors:
        print(f"OK   {len(exprs)} queries over {len(used)} metrics, all registered by the scaler")
    return 1 if errors else 0


def main(argv):
    if len(argv) < 2:
        print(__doc__)
        return 2
    cmd, args = argv[1], argv[2:]
    if cmd == "core" and len(args) >= 2:
        return cmd_core(args[0], args[1:])
    if cmd == "namespaces" and len(args) >= 2:
        return cmd_namespaces(args[0], args[1:])
    if cmd == "kv-output" and len(args) == 1:
        return cmd_kv_output(args[0])
    if cmd == "wiring" and len(args) == 2:
        return cmd_wiring(*args)
    if cmd == "restricted" and args:
        return cmd_restricted(args)
    if cmd == "rbac" and len(args) == 1:
        return cmd_rbac(args[0])
    if cmd == "rbac" and len(args) == 2:
        return cmd_rbac(args[0], [n for n in args[1].split(",") if n])
    if cmd == "dashboard" and len(args) == 2:
        return cmd_dashboard(*args)
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
