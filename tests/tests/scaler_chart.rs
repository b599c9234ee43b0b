//! The real `surge-scaler` binary against what the chart installs (`deploy/manifests/surge.yaml`,
//! the chart rendered, kept equal to `helm template` by `scripts/validate-manifests.sh`; and the
//! chart rendered with `scaler.watchNamespaces`, by helm at test time).
//!
//! RBAC: the real API server judges the chart's RBAC in `kube_scaler.rs` (the chart installed,
//! the scaler running as its pod: no request refused). This test checks the other direction, that
//! the grant does not grow past the code: the scaler runs a whole life cycle against the
//! sandbox's embedded Kubernetes API, which logs every request. Each request is turned into the attributes a real API server authorizes
//! (group, resource/subresource, verb, namespace) and must be allowed by the roles bound to the
//! chart's ServiceAccount; each (group, resource, verb) those roles grant must have been used by
//! some request. So the grant can neither fall short of the code nor grow past it unnoticed.
//! With `watchNamespaces` the grants are Roles in those namespaces only, so a request anywhere
//! else (or across the cluster) is denied.
//!
//! Scale to zero: the embedded API serves no Services or EndpointSlices, so the scale-to-zero
//! target's Service read and EndpointSlice list are answered 404 (a request all the same, judged
//! like any other); the watch that follows a successful list happens only on a real API server,
//! where `kube_zero.rs` shows it allowed (`PROVEN_ON_THE_REAL_API_SERVER`).
//!
//! Flags: the Deployment's `args` must parse with the scaler's own parser, and the limits the
//! chart sets by default must be the scaler's defaults.
//!
//! ```text
//!  surge-scaler --HTTP--> KubeApi (logs method, path, query)
//!                              |
//!             request -> (group, resource[/sub], verb, namespace) -> allowed by the render?
//!             rendered rule -> (group, resource, verb) .............-> used by a request?
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use serde::Deserialize;
use serde_json::{Value, json};
use surge_e2e::scaler::{
    Answer, api_with_one_target, free_addr, http_client, request, scaler_bin, wait_ready, workspace,
};
use surge_sandbox::kubeapi::{KubeApi, Part, RequestRecord, resources};
use surge_sandbox::process::ChildGuard;
use surge_scaler::cli::{Cli, Command as ScalerCommand};
use surge_scaler::window::SourceLimits;

/// What a real API server authorizes a resource request by (`authorizer.Attributes`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Attributes {
    verb: &'static str,
    group: String,
    /// `resource` or `resource/subresource`.
    resource: String,
    /// `None` for a cluster-scoped request (or a list/watch across all namespaces).
    namespace: Option<String>,
}

impl std::fmt::Display for Attributes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        let scope = self.namespace.as_deref().unwrap_or("cluster-wide");
        write!(f, "{} {group}/{} ({scope})", self.verb, self.resource)
    }
}

/// The attributes of one request, as kube-apiserver's `RequestInfoFactory` derives them: a GET
/// of a collection is `list`, or `watch` with `watch=true`; a GET of an object is `get`; POST
/// `create`, PUT `update`, PATCH `patch`, DELETE `delete` (`deletecollection` on a collection).
/// `Err` for a non-resource request (discovery, `/version`, ...).
fn attributes(method: &str, path: &str, query: &str) -> Result<Attributes, String> {
    let non_resource = || {
        Err(format!(
            "non-resource request {method} {path}: the chart grants no nonResourceURLs (a real \
             cluster allows discovery to every user through system:discovery: decide, then \
             extend this test)"
        ))
    };
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, mut rest) = match segments.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return non_resource(),
    };
    if rest.is_empty() {
        return non_resource();
    }
    // The deprecated `/watch/` path prefix.
    let mut watch = false;
    if rest[0] == "watch" {
        watch = true;
        rest = &rest[1..];
    }
    let mut namespace = None;
    if rest.len() > 2 && rest[0] == "namespaces" {
        namespace = Some(rest[1].to_owned());
        rest = &rest[2..];
    }
    let (resource, name) = match rest {
        [resource] => ((*resource).to_owned(), None),
        [resource, name] => ((*resource).to_owned(), Some(*name)),
        [resource, name, sub] => (format!("{resource}/{sub}"), Some(*name)),
        _ => return non_resource(),
    };
    // A namespace object itself (`/api/v1/namespaces/NAME`) is cluster-scoped.
    if resource == "namespaces" && name.is_some() {
        namespace = None;
    }
    let watch_query = query.split('&').any(|pair| {
        matches!(
            pair.split_once('='),
            Some(("watch", "1" | "t" | "T" | "true" | "TRUE" | "True"))
        )
    });
    let verb = match (method, name) {
        ("GET" | "HEAD", Some(_)) => "get",
        ("GET" | "HEAD", None) if watch || watch_query => "watch",
        ("GET" | "HEAD", None) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", Some(_)) => "delete",
        ("DELETE", None) => "deletecollection",
        _ => return Err(format!("unexpected method {method} {path}")),
    };
    Ok(Attributes {
        verb,
        group: group.to_owned(),
        resource,
        namespace,
    })
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    #[serde(default)]
    api_groups: Vec<String>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    verbs: Vec<String>,
    #[serde(default)]
    resource_names: Vec<String>,
    #[serde(default)]
    non_resource_urls: Vec<String>,
}

impl Rule {
    /// RBAC's `RuleAllows` for a resource request without a name restriction.
    fn allows(&self, request: &Attributes) -> bool {
        let any = |list: &[String], value: &str| list.iter().any(|v| v == "*" || v == value);
        let resource = self.resources.iter().any(|r| {
            r == "*"
                || *r == request.resource
                || r.strip_prefix("*/").is_some_and(|sub| {
                    request
                        .resource
                        .split_once('/')
                        .is_some_and(|(_, s)| s == sub)
                })
        });
        any(&self.verbs, request.verb) && any(&self.api_groups, &request.group) && resource
    }
}

/// One rule of a role bound to the scaler's ServiceAccount.
#[derive(Debug)]
struct Grant {
    /// `Kind name rules[i]`.
    origin: String,
    /// `None`: cluster-wide (a ClusterRoleBinding); else the RoleBinding's namespace.
    namespace: Option<String>,
    rule: Rule,
}

impl Grant {
    fn allows(&self, request: &Attributes) -> bool {
        let in_scope = match (&self.namespace, &request.namespace) {
            (None, _) => true,
            (Some(bound), Some(asked)) => bound == asked,
            (Some(_), None) => false,
        };
        in_scope && self.rule.allows(request)
    }
}

/// The YAML documents of `deploy/manifests/surge.yaml`.
fn chart_manifest() -> Vec<Value> {
    let manifest = std::fs::read_to_string(workspace().join("deploy/manifests/surge.yaml"))
        .expect("deploy/manifests/surge.yaml is readable");
    yaml_documents(&manifest)
}

/// `helm template` of the chart with its defaults and `--set` values on top (release `surge` in
/// `surge-system`, as `deploy/manifests/surge.yaml`, without its CRD and Namespace), by the helm
/// that `make tools` builds into `.tools/helm`.
fn chart_rendered_with(set: &[&str]) -> Vec<Value> {
    let helm = surge_cluster::components::helm().unwrap_or_else(|e| panic!("{e}"));
    let mut command = Command::new(&helm);
    command
        .args(["template", "surge"])
        .arg(workspace().join("deploy/chart/surge"))
        .args(["--namespace", "surge-system"]);
    for value in set {
        command.args(["--set", value]);
    }
    let output = command.output().expect("helm runs");
    assert!(
        output.status.success(),
        "helm template --set {set:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    yaml_documents(&String::from_utf8_lossy(&output.stdout))
}

fn yaml_documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("the chart renders YAML"))
        .filter(|doc| !doc.is_null())
        .collect()
}

/// The scaler container's `args` in the chart's Deployment.
fn chart_args(docs: &[Value]) -> Vec<String> {
    let containers = chart_deployment(docs)
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .expect("the Deployment has containers");
    let scaler = containers
        .iter()
        .find(|c| c["name"] == "scaler")
        .expect("a container named scaler");
    scaler["args"]
        .as_array()
        .expect("the scaler has args")
        .iter()
        .map(|a| a.as_str().expect("every arg is a string").to_owned())
        .collect()
}

/// The chart's one Deployment.
fn chart_deployment(docs: &[Value]) -> &Value {
    let deployments: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Deployment").collect();
    assert_eq!(deployments.len(), 1, "surge.yaml has one Deployment");
    deployments[0]
}

/// Every rule that applies to the ServiceAccount the chart's Deployment runs as, from the
/// rendered chart's ClusterRoleBindings and RoleBindings.
fn grants_of_the_chart(docs: &[Value]) -> (String, Vec<Grant>) {
    let of_kind = |kind: &'static str| docs.iter().filter(move |d| d["kind"] == kind);
    let deployment = chart_deployment(docs);
    let sa_namespace = deployment["metadata"]["namespace"]
        .as_str()
        .expect("the Deployment has a namespace")
        .to_owned();
    let sa_name = deployment
        .pointer("/spec/template/spec/serviceAccountName")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_owned();
    let subject_is_the_scaler = |binding: &Value| {
        binding["subjects"].as_array().is_some_and(|subjects| {
            subjects.iter().any(|s| {
                s["kind"] == "ServiceAccount"
                    && s["name"] == sa_name.as_str()
                    && s["namespace"] == sa_namespace.as_str()
            })
        })
    };
    let role = |kind: &'static str, name: &str, namespace: Option<&str>| {
        of_kind(kind)
            .find(|r| {
                r["metadata"]["name"] == name
                    && namespace.is_none_or(|ns| r["metadata"]["namespace"] == ns)
            })
            .unwrap_or_else(|| panic!("the binding's {kind} {name} is not in surge.yaml"))
    };
    let mut grants = Vec::new();
    let mut add = |role: &Value, namespace: Option<String>| {
        let kind = role["kind"].as_str().unwrap_or_default();
        let name = role["metadata"]["name"].as_str().unwrap_or_default();
        for (i, rule) in role["rules"].as_array().into_iter().flatten().enumerate() {
            grants.push(Grant {
                origin: format!("{kind} {name} rules[{i}]"),
                namespace: namespace.clone(),
                rule: serde_json::from_value(rule.clone()).expect("an RBAC rule"),
            });
        }
    };
    for binding in of_kind("ClusterRoleBinding").filter(|b| subject_is_the_scaler(b)) {
        let name = binding["roleRef"]["name"].as_str().unwrap_or_default();
        add(role("ClusterRole", name, None), None);
    }
    for binding in of_kind("RoleBinding").filter(|b| subject_is_the_scaler(b)) {
        let namespace = binding["metadata"]["namespace"].as_str().map(str::to_owned);
        let name = binding["roleRef"]["name"].as_str().unwrap_or_default();
        match binding["roleRef"]["kind"].as_str() {
            Some("ClusterRole") => add(role("ClusterRole", name, None), namespace),
            _ => add(role("Role", name, namespace.as_deref()), namespace),
        }
    }
    (format!("{sa_namespace}/{sa_name}"), grants)
}

/// Grants no request against the embedded API can use, each with the test on the real API
/// server (whose audit log has the request, allowed) that uses it.
const PROVEN_ON_THE_REAL_API_SERVER: &[(&str, &str, &str, &str)] = &[
    (
        "discovery.k8s.io",
        "endpointslices",
        "watch",
        "kube_zero.rs: the scaler's EndpointSlice watch follows its list, which only a real API \
         server answers",
    ),
    (
        "autoscaling.x-k8s.io",
        "capacitybuffers",
        "create",
        "kube_karpenter.rs: a server-side apply that creates the CapacityBuffer is authorized as \
         create as well as patch, which the embedded API does not model",
    ),
];

/// Judges the logged requests against the grants: the requests no grant allows, and the
/// (group, resource, verb) of each grant that no request used.
fn judge(requests: &[RequestRecord], grants: &[Grant]) -> (Vec<String>, Vec<String>) {
    let mut denied = Vec::new();
    // Keyed by the rule's origin, not by the grant: with `watchNamespaces` the same Role is
    // bound in several namespaces, and a rule is used when a request in any of them used it.
    let mut used: BTreeSet<(String, String, String, String)> = BTreeSet::new();
    for r in requests {
        let asked = match attributes(&r.method, &r.path, &r.query) {
            Ok(asked) => asked,
            Err(why) => {
                denied.push(why);
                continue;
            }
        };
        let allowing: Vec<usize> = (0..grants.len())
            .filter(|&i| grants[i].allows(&asked))
            .collect();
        if allowing.is_empty() {
            let query = if r.query.is_empty() { "" } else { "?" };
            denied.push(format!(
                "{} {}{query}{} -> {asked}",
                r.method, r.path, r.query
            ));
        }
        for i in allowing {
            used.insert((
                grants[i].origin.clone(),
                asked.group.clone(),
                asked.resource.clone(),
                asked.verb.to_owned(),
            ));
        }
    }
    let mut unused = Vec::new();
    let mut judged = BTreeSet::new();
    for grant in grants {
        if !judged.insert(grant.origin.clone()) {
            continue;
        }
        let rule = &grant.rule;
        if !rule.resource_names.is_empty() || !rule.non_resource_urls.is_empty() {
            unused.push(format!(
                "{}: resourceNames/nonResourceURLs, which this test does not model",
                grant.origin
            ));
        }
        for group in &rule.api_groups {
            for resource in &rule.resources {
                for verb in &rule.verbs {
                    let key = (
                        grant.origin.clone(),
                        group.clone(),
                        resource.clone(),
                        verb.clone(),
                    );
                    if group == "*" || resource.contains('*') || verb == "*" {
                        unused.push(format!(
                            "{}: a wildcard ({verb} {group}/{resource}) grants more than any \
                             request can prove",
                            grant.origin
                        ));
                    } else if !used.contains(&key)
                        && !PROVEN_ON_THE_REAL_API_SERVER
                            .iter()
                            .any(|&(g, r, v, _)| (g, r, v) == (group, resource, verb))
                    {
                        let group = if group.is_empty() { "core" } else { group };
                        unused.push(format!("{}: {verb} {group}/{resource}", grant.origin));
                    }
                }
            }
        }
    }
    (denied, unused)
}

#[test]
fn the_request_mapping_follows_the_api_servers_request_info() {
    let cases = [
        (
            "GET",
            "/apis/surge.dev/v1alpha1/surgescalers",
            "limit=500",
            "list surge.dev/surgescalers (cluster-wide)",
        ),
        (
            "GET",
            "/apis/surge.dev/v1alpha1/surgescalers",
            "allowWatchBookmarks=true&resourceVersion=7&watch=true",
            "watch surge.dev/surgescalers (cluster-wide)",
        ),
        (
            "GET",
            "/apis/apps/v1/namespaces/web/deployments/api/scale",
            "",
            "get apps/deployments/scale (web)",
        ),
        (
            "PATCH",
            "/apis/surge.dev/v1alpha1/namespaces/web/surgescalers/api/status",
            "fieldManager=surge-scaler",
            "patch surge.dev/surgescalers/status (web)",
        ),
        (
            "POST",
            "/apis/events.k8s.io/v1/namespaces/web/events",
            "",
            "create events.k8s.io/events (web)",
        ),
        (
            "PUT",
            "/api/v1/namespaces/web/configmaps/x",
            "",
            "update core/configmaps (web)",
        ),
        (
            "DELETE",
            "/api/v1/namespaces/web/pods",
            "",
            "deletecollection core/pods (web)",
        ),
        (
            "GET",
            "/api/v1/namespaces/web",
            "",
            "get core/namespaces (cluster-wide)",
        ),
        (
            "GET",
            "/api/v1/watch/namespaces/web/pods",
            "",
            "watch core/pods (web)",
        ),
    ];
    for (method, path, query, want) in cases {
        let got = attributes(method, path, query).unwrap();
        assert_eq!(got.to_string(), want, "{method} {path}?{query}");
    }
    assert!(attributes("GET", "/apis", "").is_err());
    assert!(attributes("GET", "/apis/apps/v1", "").is_err());
    assert!(attributes("GET", "/version", "").is_err());
}

fn report(seq: u64, time_ms: u64, requests_total: u64, surge: bool) -> Value {
    json!({
        "version": 1,
        "proxy": {"namespace": "web", "workload": "api", "pod": "api-7d9f-abcde",
                  "owner": "kubernetes://apis/apps/v1/namespaces/web/deployments/api",
                  "role": "sidecar"},
        "instance": "api-7d9f-abcde/rbac",
        "seq": seq,
        "time_ms": time_ms,
        "surge": surge,
        "routes": [{"route": "default", "cluster": "inbound|8080||",
                    "requests_total": requests_total, "errors_total": 0,
                    "duration_us_total": requests_total * 2_000, "inflight": 3}]
    })
}

/// A SurgeScaler `namespace/name` scaling the `kind` of the same name.
fn surgescaler(namespace: &str, name: &str, kind: &str, min: u32, max: u32) -> Value {
    json!({
        "apiVersion": "surge.dev/v1alpha1", "kind": "SurgeScaler",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": kind, "name": name},
                 "minReplicas": min, "maxReplicas": max,
                 "metric": {"type": "rps", "target": 100}}
    })
}

/// Besides `web/api` (a Deployment scaled by reports): `web/db`, a StatefulSet below its
/// SurgeScaler's minimum (raised without any report); `web/cold`, a Deployment with scale to
/// zero whose spec names no port (its Service is read, its EndpointSlices listed), fed by a
/// waypoint too (its namespace is read when the scaler watches the whole cluster);
/// `shop/legacy`, a Deployment an HPA drives; `jobs/worker`, a Deployment a KEDA ScaledObject
/// drives. Namespaces differ, as on a cluster.
async fn api_with_every_kind_of_target() -> KubeApi {
    let api = api_with_one_target().await;
    let store = api.store();
    api.create_deployment("web", "cold", 1).unwrap();
    let mut cold = surgescaler("web", "cold", "Deployment", 0, 3);
    cold["spec"]["scaleToZero"] = json!({"idleSeconds": 60, "service": "cold"});
    // Fed by a waypoint too: its Service's labels are read, and (cluster-wide) its namespace's.
    cold["spec"]["sources"] = json!({"waypoint": {"service": "cold"}});
    store.create(resources::SURGESCALERS, "web", cold).unwrap();
    let statefulsets = resources::find("apps", "v1", "statefulsets").unwrap();
    store
        .create(
            statefulsets,
            "web",
            json!({
                "metadata": {"name": "db", "namespace": "web", "labels": {"app": "db"}},
                "spec": {"replicas": 1, "serviceName": "db",
                         "selector": {"matchLabels": {"app": "db"}},
                         "template": {"metadata": {"labels": {"app": "db"}},
                                      "spec": {"containers": [{"name": "db", "image": "db"}]}}}
            }),
        )
        .unwrap();
    store
        .modify(statefulsets, "web", "db", Part::Status, false, |current| {
            let mut obj = current.unwrap();
            obj["status"] = json!({"replicas": 1, "readyReplicas": 1});
            obj["metadata"]
                .as_object_mut()
                .unwrap()
                .remove("resourceVersion");
            Ok(obj)
        })
        .unwrap();
    // With headroom: the raise to its minimum is a scale-up of one, so one spare pod.
    let mut db = surgescaler("web", "db", "StatefulSet", 2, 4);
    db["spec"]["headroom"] = json!({"minReplicas": 1});
    store.create(resources::SURGESCALERS, "web", db).unwrap();

    api.create_deployment("shop", "legacy", 2).unwrap();
    store
        .create(
            resources::HPAS,
            "shop",
            json!({
                "metadata": {"name": "legacy", "namespace": "shop"},
                "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "legacy"},
                         "minReplicas": 1, "maxReplicas": 5,
                         "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                                      "target": {"type": "Utilization", "averageUtilization": 80}}}]}
            }),
        )
        .unwrap();
    store
        .create(
            resources::SURGESCALERS,
            "shop",
            surgescaler("shop", "legacy", "Deployment", 1, 10),
        )
        .unwrap();

    api.create_deployment("jobs", "worker", 2).unwrap();
    store
        .create(
            resources::SCALED_OBJECTS,
            "jobs",
            json!({
                "metadata": {"name": "worker", "namespace": "jobs"},
                "spec": {"scaleTargetRef": {"name": "worker"},
                         "triggers": [{"type": "cpu", "metadata": {"value": "80"}}]}
            }),
        )
        .unwrap();
    store
        .create(
            resources::SURGESCALERS,
            "jobs",
            surgescaler("jobs", "worker", "Deployment", 1, 10),
        )
        .unwrap();
    api
}

/// Waits for a request matching `pred`; panics naming `what` after 5 s.
async fn expect_request(
    api: &KubeApi,
    what: &str,
    pred: impl Fn(&RequestRecord) -> bool,
) -> RequestRecord {
    api.wait_for_request(Duration::from_secs(5), pred)
        .await
        .unwrap_or_else(|| panic!("within 5 s: no {what}"))
}

fn body_has(r: &RequestRecord, text: &str) -> bool {
    r.body.as_deref().is_some_and(|b| b.contains(text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_request_of_a_life_cycle_is_granted_by_the_chart_and_every_grant_is_used() {
    life_cycle(chart_manifest()).await;
}

/// `scaler.watchNamespaces`: the chart grants Roles in those namespaces and nothing
/// cluster-wide, passes `--watch-namespaces`, and the scaler's whole life cycle stays inside them:
/// the SurgeScaler in `elsewhere`, raised in the cluster-wide run, is not even read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_watch_namespaces_the_chart_grants_roles_only_there_and_the_scaler_stays_inside() {
    let docs = chart_rendered_with(&["scaler.watchNamespaces={web,shop,jobs}"]);
    let cluster_wide: Vec<String> = docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "ClusterRoleBinding")
        .map(|d| format!("{} {}", d["kind"], d["metadata"]["name"]))
        .collect();
    assert!(
        cluster_wide.is_empty(),
        "with watchNamespaces the chart still grants cluster-wide: {cluster_wide:?}"
    );
    // Besides the Leases the replicas share the targets through, in the scaler's own namespace.
    let leases: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "Role" && d["metadata"]["name"] == "surge-scaler-leases")
        .collect();
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0]["metadata"]["namespace"], "surge-system");
    let roles: BTreeSet<String> = docs
        .iter()
        .filter(|d| d["kind"] == "Role" && d["metadata"]["name"] != "surge-scaler-leases")
        .map(|d| {
            d["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(
        roles,
        BTreeSet::from(["jobs".to_owned(), "shop".to_owned(), "web".to_owned()])
    );
    assert!(
        chart_args(&docs).contains(&"--watch-namespaces=web,shop,jobs".to_owned()),
        "{:?}",
        chart_args(&docs)
    );
    life_cycle(docs).await;
}

/// The whole life cycle of `api_with_every_kind_of_target` plus `elsewhere/stray` (a Deployment
/// below its SurgeScaler's minimum), with the scaler started with the chart's
/// `--watch-namespaces` if it has one; every request judged against the chart's RBAC. With
/// the flag, `elsewhere` is outside what it watches and no request may reach it.
async fn life_cycle(docs: Vec<Value>) {
    let (account, grants) = grants_of_the_chart(&docs);
    assert!(!grants.is_empty(), "the chart grants {account} nothing");
    let watch_args: Vec<String> = chart_args(&docs)
        .into_iter()
        .filter(|a| a.starts_with("--watch-namespaces"))
        .collect();
    let namespaced = !watch_args.is_empty();
    // The chart's sharing of the targets through Leases, as one replica runs it (it takes every
    // shard); the paths and addresses are this machine's. The env the chart sets from the
    // downward API (replica id, pod IP) is given as flags.
    let lease_args: Vec<String> = chart_args(&docs)
        .into_iter()
        .filter(|a| a.starts_with("--lease-") || a.starts_with("--shards"))
        .collect();
    assert!(
        lease_args
            .iter()
            .any(|a| a.starts_with("--lease-namespace=")),
        "the chart shares the targets through Leases: {lease_args:?}"
    );

    let started = Instant::now();
    let bin = scaler_bin();
    let api = api_with_every_kind_of_target().await;
    api.create_deployment("elsewhere", "stray", 1).unwrap();
    api.store()
        .create(
            resources::SURGESCALERS,
            "elsewhere",
            surgescaler("elsewhere", "stray", "Deployment", 2, 4),
        )
        .unwrap();
    // What the scaler will read: its writes must be valid only at these versions.
    let version_of = |kind: &'static str, name: &str| {
        let ty = resources::find("apps", "v1", kind).unwrap();
        api.store().get(ty, "web", name).unwrap()["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (db_version, api_version) = (
        version_of("statefulsets", "db"),
        version_of("deployments", "api"),
    );
    // One directory per life cycle: under plain `cargo test` both run at once in one process.
    let scope = if namespaced { "namespaced" } else { "cluster" };
    let dir =
        std::env::temp_dir().join(format!("surge-scaler-chart-{scope}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig, "web").unwrap();
    let peer_token = dir.join("peer-token");
    std::fs::write(&peer_token, "chart-peer-token").unwrap();
    let (ingest, admin, peer) = (free_addr(), free_addr(), free_addr());
    let mut command = Command::new(&bin);
    command
        .args(["run", "--identity", "off", "--token", "chart-token"])
        .args([
            "--ingest-addr",
            &ingest.to_string(),
            "--admin-addr",
            &admin.to_string(),
        ])
        .args(&watch_args)
        .args(&lease_args)
        .args(["--replica-id", "surge-scaler-0", "--pod-ip", "127.0.0.1"])
        .arg(format!("--peer-addr={peer}"))
        .arg(format!("--peer-token-file={}", peer_token.display()))
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let mut scaler = ChildGuard::spawn("surge-scaler", command).unwrap();
    let client = http_client();
    // Ready once the watcher's first list is in: SurgeScalers are listed, then watched.
    wait_ready(&client, admin, Duration::from_secs(10)).await;

    // Refused: an HPA drives shop/legacy, a ScaledObject drives jobs/worker. Warning Events and
    // a status saying why; never a scale write.
    for (ns, driver) in [
        ("shop", "HorizontalPodAutoscaler legacy"),
        ("jobs", "KEDA ScaledObject worker"),
    ] {
        expect_request(&api, &format!("ConflictingAutoscaler Event in {ns}"), |r| {
            r.method == "POST"
                && r.path == format!("/apis/events.k8s.io/v1/namespaces/{ns}/events")
                && body_has(r, "ConflictingAutoscaler")
                && body_has(r, driver)
        })
        .await;
        expect_request(
            &api,
            &format!("ConflictingAutoscaler status in {ns}"),
            |r| {
                r.method == "PATCH"
                    && r.path.starts_with(&format!(
                        "/apis/surge.dev/v1alpha1/namespaces/{ns}/surgescalers/"
                    ))
                    && r.path.ends_with("/status")
                    && body_has(r, "ConflictingAutoscaler")
            },
        )
        .await;
    }
    // web/db: below its minimum, raised to 2 through the StatefulSet's scale without a report.
    let raised = expect_request(&api, "scale PATCH of the StatefulSet web/db", |r| {
        r.method == "PATCH" && r.path == "/apis/apps/v1/namespaces/web/statefulsets/db/scale"
    })
    .await;
    assert_eq!(
        raised.body,
        Some(format!(
            r#"{{"metadata":{{"resourceVersion":"{db_version}"}},"spec":{{"replicas":2}}}}"#
        ))
    );
    assert_eq!(raised.status, 200);
    let buffer = expect_request(&api, "apply of the CapacityBuffer web/db-headroom", |r| {
        r.method == "PATCH"
            && r.path
                == "/apis/autoscaling.x-k8s.io/v1beta1/namespaces/web/capacitybuffers/db-headroom"
    })
    .await;
    assert!(
        buffer.status < 300,
        "the CapacityBuffer apply answered {}",
        buffer.status
    );
    assert!(body_has(&buffer, r#""replicas":1"#), "{:?}", buffer.body);
    if !namespaced {
        expect_request(&api, "scale PATCH of elsewhere/stray", |r| {
            r.method == "PATCH"
                && r.path == "/apis/apps/v1/namespaces/elsewhere/deployments/stray/scale"
        })
        .await;
    }

    // web/cold: scale to zero without a port, so its Service is read for its ports, and its
    // EndpointSlices are listed by the Service's label (both 404 here: see the module docs).
    expect_request(&api, "GET of the Service web/cold", |r| {
        r.method == "GET" && r.path == "/api/v1/namespaces/web/services/cold"
    })
    .await;
    expect_request(&api, "list of web/cold's EndpointSlices", |r| {
        r.method == "GET"
            && r.path == "/apis/discovery.k8s.io/v1/namespaces/web/endpointslices"
            && r.query
                .contains("labelSelector=kubernetes.io%2Fservice-name%3Dcold")
    })
    .await;
    // ...and fed by a waypoint: its Service has no istio.io/use-waypoint label (none here), so
    // the namespace's is read, when the scaler may read Namespaces (cluster-wide only).
    if !namespaced {
        expect_request(&api, "GET of the Namespace web", |r| {
            r.method == "GET" && r.path == "/api/v1/namespaces/web"
        })
        .await;
    }

    // web/api: scaled up by reports (calm, then a surge of 800 rps: 8 replicas).
    let url = format!("http://{ingest}{}", surge_wire::REPORTS_PATH);
    for (seq, time_ms, total, surge) in [(1, 10_000, 0, false), (2, 11_000, 50, false)] {
        let body = report(seq, time_ms, total, surge);
        let Answer { status, body, .. } =
            request(&client, "POST", &url, "chart-token", Some(&body)).await;
        assert_eq!(status, 200, "{body}");
    }
    let surge = report(3, 11_100, 130, true);
    let Answer { status, body, .. } =
        request(&client, "POST", &url, "chart-token", Some(&surge)).await;
    assert_eq!(status, 200, "{body}");
    let up = expect_request(&api, "scale-up PATCH of web/api", |r| {
        r.method == "PATCH" && r.path == "/apis/apps/v1/namespaces/web/deployments/api/scale"
    })
    .await;
    assert_eq!(
        up.body,
        Some(format!(
            r#"{{"metadata":{{"resourceVersion":"{api_version}"}},"spec":{{"replicas":8}}}}"#
        ))
    );
    assert_eq!(up.status, 200);
    let rescaled = expect_request(&api, "SuccessfulRescale Event for web/api", |r| {
        r.method == "POST"
            && r.path == "/apis/events.k8s.io/v1/namespaces/web/events"
            && body_has(r, "SuccessfulRescale")
            && body_has(r, "New size: 8")
    })
    .await;
    assert_eq!(rescaled.status, 201);

    // web/api: maxReplicas lowered to 3 (a watch event), so scaled down at once; the second
    // SuccessfulRescale of the same object is a PATCH of the first Event (a series).
    store_set_max_replicas(&api, "web", "api", 3);
    let down = expect_request(&api, "scale-down PATCH of web/api", |r| {
        r.method == "PATCH"
            && r.path == "/apis/apps/v1/namespaces/web/deployments/api/scale"
            && body_has(r, r#""replicas":3"#)
    })
    .await;
    assert!(down.status < 300, "scale-down answered {}", down.status);
    let series = expect_request(&api, "PATCH of the repeated SuccessfulRescale Event", |r| {
        r.method == "PATCH"
            && r.path
                .starts_with("/apis/events.k8s.io/v1/namespaces/web/events/api.")
            && body_has(r, "series")
    })
    .await;
    assert_eq!(series.status, 200);
    expect_request(&api, "status of web/api with desiredReplicas 3", |r| {
        r.path == "/apis/surge.dev/v1alpha1/namespaces/web/surgescalers/api/status"
            && body_has(r, r#""desiredReplicas":3"#)
    })
    .await;

    // SIGTERM: queued Events and status are written before the scaler exits.
    let pid = scaler.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while scaler.try_status().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the scaler ignored SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let requests = api.requests();
    let _ = std::fs::remove_dir_all(&dir);

    for target in ["shop/deployments/legacy", "jobs/deployments/worker"] {
        assert!(
            !requests
                .iter()
                .any(|r| r.is_scale_write() && r.path.contains(&format!("/namespaces/{target}/"))),
            "{target} is driven by another autoscaler and must not be written"
        );
    }

    if namespaced {
        let outside: Vec<String> = requests
            .iter()
            .filter(|r| {
                attributes(&r.method, &r.path, &r.query).map_or(true, |asked| {
                    asked.namespace.is_none() || asked.namespace.as_deref() == Some("elsewhere")
                })
            })
            .map(|r| format!("{} {}?{}", r.method, r.path, r.query))
            .collect();
        assert!(
            outside.is_empty(),
            "with --watch-namespaces the scaler asked outside web, shop and jobs:\n  {}",
            outside.join("\n  ")
        );
    }

    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for r in &requests {
        if let Ok(asked) = attributes(&r.method, &r.path, &r.query) {
            let scope = if asked.namespace.is_some() {
                "namespaced"
            } else {
                "cluster-wide"
            };
            let group = if asked.group.is_empty() {
                "core"
            } else {
                &asked.group
            };
            *seen
                .entry(format!(
                    "{} {group}/{} ({scope})",
                    asked.verb, asked.resource
                ))
                .or_default() += 1;
        }
    }
    println!(
        "{} requests in {:?}, as {account} would make them:",
        requests.len(),
        started.elapsed()
    );
    for (what, count) in &seen {
        println!("  {count:4}  {what}");
    }

    let (denied, unused) = judge(&requests, &grants);
    assert!(
        denied.is_empty(),
        "the scaler made requests the chart's RBAC for {account} denies (grant them in \
         deploy/chart/surge/templates/rbac.yaml, then scripts/validate-manifests.sh --update):\n  {}",
        denied.join("\n  ")
    );
    assert!(
        unused.is_empty(),
        "the chart grants {account} what no request of the life cycle used (drop it from \
         deploy/chart/surge/templates/rbac.yaml and run scripts/validate-manifests.sh --update, \
         or exercise it in this test):\n  {}",
        unused.join("\n  ")
    );
}

/// Lowers `spec.maxReplicas` of a SurgeScaler, as `kubectl edit` would (generation + 1).
fn store_set_max_replicas(api: &KubeApi, namespace: &str, name: &str, max: u32) {
    api.store()
        .modify(
            resources::SURGESCALERS,
            namespace,
            name,
            Part::Main,
            false,
            |current| {
                let mut obj = current.unwrap();
                obj["spec"]["maxReplicas"] = json!(max);
                obj["metadata"]
                    .as_object_mut()
                    .unwrap()
                    .remove("resourceVersion");
                Ok(obj)
            },
        )
        .unwrap();
}

#[test]
fn the_charts_flags_parse_as_the_scaler_parses_them_and_keep_its_default_limits() {
    let args = chart_args(&chart_manifest());
    let cli =
        Cli::try_parse_from(std::iter::once("surge-scaler").chain(args.iter().map(String::as_str)))
            .unwrap_or_else(|e| panic!("the scaler refuses the chart's args {args:?}: {e}"));
    let ScalerCommand::Run(run) = cli.command else {
        panic!("the chart runs {:?}, not `run`", args.first())
    };
    assert_eq!(
        run.source_limits(),
        SourceLimits::default(),
        "the chart's default limits (deploy/chart/surge/values.yaml scaler.limits) differ from \
         the scaler's (scaler/src/window.rs)"
    );
    // Narrower than the scaler's own default: only where the gateway WasmPlugin's gateway runs.
    assert_eq!(
        run.gateway_namespaces(),
        Some(vec!["istio-system".to_owned()])
    );
    assert!(
        run.watch_namespaces.is_empty(),
        "the chart watches every namespace by default"
    );

    let args = chart_args(&chart_rendered_with(&["scaler.watchNamespaces={web,shop}"]));
    let cli =
        Cli::try_parse_from(std::iter::once("surge-scaler").chain(args.iter().map(String::as_str)))
            .unwrap_or_else(|e| panic!("the scaler refuses the chart's args {args:?}: {e}"));
    let ScalerCommand::Run(run) = cli.command else {
        panic!("the chart runs {:?}, not `run`", args.first())
    };
    assert_eq!(run.watch_namespaces, ["web", "shop"]);
}
