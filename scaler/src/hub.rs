//! The meeting point of ingest and controller: the per-instance counters, the targets the
//! controller registered (with their selectors and windows), and a wake-up per target.
//!
//! ```text
//!  ingest: report --> Counters (deltas) --> targets matching the report --> TargetWindow
//!                                                       '--> Notify (if the answer can move)
//!  controller: register/unregister targets, observe(target, now) before each decision
//! ```
//!
//! One mutex guards it all: an ingest holds it for a few microseconds (no I/O, no allocation on
//! the steady path), far below what two cores can contend on at the target report rates.
//!
//! Scale to zero (`zero.rs`): the requests proxies hold for cold targets (an activation report
//! wakes its target at once, as a surge report does), and the cold list every answer carries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use surge_wire::{ClusterKind, HoldTotals, Report, ReportBody, Role, ServiceCluster};
use tokio::sync::Notify;

use crate::crd::{MetricType, SurgeScalerSpec, TargetKind};
use crate::decision::{Millis, Observation};
use crate::waypoint::WaypointRef;
use crate::window::{Counters, SourceLimits, TargetWindow, WindowConfig};

mod ingest;
mod zero;

use ingest::{ingest_report, unindex};

pub use zero::{Destination, MAX_COLD, ZeroView};

/// A SurgeScaler's identity: namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetKey {
    /// Namespace.
    pub namespace: String,
    /// SurgeScaler name.
    pub name: String,
}

impl std::fmt::Display for TargetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Which reports (and which of their routes) count for a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    /// Namespace of the SurgeScaler and its target.
    pub namespace: String,
    /// Kind of the target.
    pub kind: TargetKind,
    /// Name of the target workload.
    pub workload: String,
    /// Route names to count; empty counts all.
    pub routes: Vec<String>,
    /// Count the target's own sidecars.
    pub sidecars: bool,
    /// Count gateway routes whose cluster's host is this (`<svc>.<ns>.svc.cluster.local`).
    pub gateway_host: Option<String>,
    /// ...and whose cluster's port is this (any when `None`).
    pub gateway_port: Option<u16>,
    /// Count the routes of the waypoint serving this host (`<svc>.<ns>.svc.cluster.local`)
    /// whose cluster names it.
    pub waypoint_host: Option<String>,
    /// ...and whose cluster's port is this (any when `None`).
    pub waypoint_port: Option<u16>,
}

impl Selector {
    /// The selector a SurgeScaler in `namespace` describes.
    pub fn from_spec(namespace: &str, spec: &SurgeScalerSpec) -> Self {
        Self {
            namespace: namespace.to_owned(),
            kind: spec.scale_target_ref.kind,
            workload: spec.scale_target_ref.name.clone(),
            routes: spec.routes.clone(),
            sidecars: spec.sources.sidecars,
            gateway_host: spec
                .sources
                .gateway
                .as_ref()
                .map(|g| format!("{}.{namespace}.svc.cluster.local", g.service)),
            gateway_port: spec.sources.gateway.as_ref().and_then(|g| g.port),
            waypoint_host: spec
                .sources
                .waypoint
                .as_ref()
                .map(|w| format!("{}.{namespace}.svc.cluster.local", w.service)),
            waypoint_port: spec.sources.waypoint.as_ref().and_then(|w| w.port),
        }
    }

    fn route_selected(&self, route: &str) -> bool {
        self.routes.is_empty() || self.routes.iter().any(|r| r == route)
    }

    /// Whether a sidecar report comes from one of the target's own pods: same namespace, and
    /// an owner naming the target (Istio's `OWNER`) or, failing that, the workload name.
    fn owns_sidecar(&self, report: &Report) -> bool {
        let proxy = &report.proxy;
        if !self.sidecars || proxy.role != Role::Sidecar || proxy.namespace != self.namespace {
            return false;
        }
        match owner_name(&proxy.owner) {
            Some((namespace, plural, name)) => {
                namespace == self.namespace && plural == self.kind.plural() && name == self.workload
            }
            None => proxy.workload == self.workload,
        }
    }

    fn gateway_cluster_selected(&self, cluster: &str) -> bool {
        service_cluster_selected(
            cluster,
            self.gateway_host.as_deref(),
            self.gateway_port,
            ClusterKind::Outbound,
        )
    }

    fn waypoint_cluster_selected(&self, cluster: &str) -> bool {
        service_cluster_selected(
            cluster,
            self.waypoint_host.as_deref(),
            self.waypoint_port,
            ClusterKind::InboundVip,
        )
    }
}

/// Whether `cluster` is a `kind` cluster of `host` (and of `port` when given).
fn service_cluster_selected(
    cluster: &str,
    host: Option<&str>,
    port: Option<u16>,
    kind: ClusterKind,
) -> bool {
    let (Some(host), Some(c)) = (host, ServiceCluster::parse(cluster)) else {
        return false;
    };
    c.kind == kind && c.host == host && port.is_none_or(|p| p == c.port)
}

/// `kubernetes://apis/apps/v1/namespaces/{ns}/{plural}/{name}` -> (ns, plural, name).
fn owner_name(owner: &str) -> Option<(&str, &str, &str)> {
    let rest = owner.strip_prefix("kubernetes://apis/")?;
    let mut parts = rest.rsplit('/');
    let name = parts.next()?;
    let plural = parts.next()?;
    let namespace = parts.next()?;
    (parts.next()? == "namespaces").then_some((namespace, plural, name))
}

/// Wake-ups of one target's decision loop.
#[derive(Debug, Default)]
pub struct Wake {
    /// A surge report arrived: decide at once.
    pub surge: Notify,
    /// The metric moved: decide soon (the loop debounces these).
    pub change: Notify,
}

struct TargetEntry {
    selector: Selector,
    metric: MetricType,
    window: TargetWindow,
    wake: Arc<Wake>,
    /// The waypoint serving the target's Service, as last read (`Some(None)`: none serves it;
    /// `None`: not read yet, so no waypoint route counts or is refused): only its routes count.
    waypoint: Option<Option<WaypointRef>>,
}

#[derive(Default)]
struct State {
    counters: Counters,
    targets: HashMap<TargetKey, TargetEntry>,
    /// namespace -> workload name -> targets whose sidecars those are (nested so a lookup
    /// borrows the report's strings instead of allocating a key).
    by_workload: HashMap<String, HashMap<String, Vec<TargetKey>>>,
    /// Service host -> targets fed by gateways for it.
    by_host: HashMap<String, Vec<TargetKey>>,
    /// Service host -> targets fed by the waypoint serving it.
    by_waypoint_host: HashMap<String, Vec<TargetKey>>,
    /// Namespaces whose proxies may report as gateways; `None`: any. A gateway report feeds
    /// targets in every namespace, and the role is the sender's own claim, so without this a
    /// workload anywhere in the mesh could scale other namespaces' gateway-fed targets.
    gateway_namespaces: Option<Vec<String>>,
    /// Scale to zero: destinations, holds, the cold list.
    zero: zero::ZeroTable,
}

/// What an ingested report did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    /// New traffic counted for this many targets (0: no SurgeScaler selects the report).
    Counted {
        /// Targets it fed.
        targets: usize,
        /// Routes of a waypoint report that carried traffic to a Service a SurgeScaler selects
        /// and were counted for none, that Service not being bound to that waypoint.
        refused_routes: usize,
    },
    /// A first report or a counter reset: a new baseline.
    Baseline,
    /// `seq` not above the last one: nothing changed.
    Duplicate,
    /// The instance reports faster than its limit: nothing changed (its next accepted report
    /// carries this one's traffic, the counters being cumulative).
    Throttled {
        /// When a report would be accepted again, in milliseconds from now.
        retry_after_ms: Millis,
    },
    /// Tracking this report's instance would exceed a limit: not counted.
    OverCapacity(Refusal),
    /// The instance id is tracked for another namespace: not counted.
    ForeignInstance,
    /// A gateway report from a namespace not allowed to send them: not counted.
    GatewayNamespace,
}

/// Which tracking limit refused a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// All instances tracked ([`SourceLimits::max_instances`]).
    Instances(usize),
    /// All (instance, route) pairs tracked ([`SourceLimits::max_instance_routes`]).
    InstanceRoutes(usize),
    /// All instances its namespace may have tracked
    /// ([`SourceLimits::max_instances_per_namespace`]).
    NamespaceInstances(usize),
    /// A target selecting the report already has [`SourceLimits::max_sources_per_target`]
    /// sources; the report still counted for `counted` other targets.
    TargetSources {
        /// The limit.
        limit: usize,
        /// Targets the report counted for nonetheless.
        counted: usize,
    },
}

/// Shared state between ingest and controller.
#[derive(Default)]
pub struct Hub {
    state: Mutex<State>,
    /// The cold list changed (a target warmed up or went cold): answers parked on it go out.
    cold_changed: Notify,
}

impl Hub {
    /// Changes the scale-to-zero state with `f`, waking the answers parked on the cold list
    /// if it changed.
    fn change_zero<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let (out, changed) = {
            let mut state = self.lock();
            let before = state.zero.cold();
            let out = f(&mut state);
            (out, *before != *state.zero.cold())
        };
        if changed {
            self.cold_changed.notify_waiters();
        }
        out
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than losing the process would; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A hub enforcing `limits` (the default hub enforces [`SourceLimits::default`]).
    pub fn with_limits(limits: SourceLimits) -> Self {
        Self {
            state: Mutex::new(State {
                counters: Counters::with_limits(limits),
                ..State::default()
            }),
            cold_changed: Notify::new(),
        }
    }

    /// Accepts gateway reports only from proxies in these namespaces (`None`: from any).
    pub fn set_gateway_namespaces(&self, namespaces: Option<Vec<String>>) {
        self.lock().gateway_namespaces = namespaces;
    }

    /// Registers (or updates) a target; returns its wake-ups. The window is kept when the
    /// selector and window settings did not change, so a status update does not lose history.
    pub fn register(
        &self,
        key: &TargetKey,
        selector: Selector,
        metric: MetricType,
        config: WindowConfig,
    ) -> Arc<Wake> {
        let mut state = self.lock();
        if let Some(entry) = state.targets.get_mut(key)
            && entry.selector == selector
            && entry.window.config() == config
        {
            entry.metric = metric;
            return Arc::clone(&entry.wake);
        }
        let wake = state
            .targets
            .get(key)
            .map_or_else(|| Arc::new(Wake::default()), |e| Arc::clone(&e.wake));
        unindex(&mut state, key);
        state
            .by_workload
            .entry(selector.namespace.clone())
            .or_default()
            .entry(selector.workload.clone())
            .or_default()
            .push(key.clone());
        if let Some(host) = &selector.gateway_host {
            state
                .by_host
                .entry(host.clone())
                .or_default()
                .push(key.clone());
        }
        if let Some(host) = &selector.waypoint_host {
            state
                .by_waypoint_host
                .entry(host.clone())
                .or_default()
                .push(key.clone());
        }
        // The binding read for the same Service still holds; another Service's is read anew.
        let waypoint = state
            .targets
            .get(key)
            .filter(|e| e.selector.waypoint_host == selector.waypoint_host)
            .and_then(|e| e.waypoint.clone());
        state.targets.insert(
            key.clone(),
            TargetEntry {
                selector,
                metric,
                window: TargetWindow::new(config),
                wake: Arc::clone(&wake),
                waypoint,
            },
        );
        wake
    }

    /// The waypoint serving a target's Service, as the controller read it (`None`: none).
    pub fn set_waypoint(&self, key: &TargetKey, waypoint: Option<WaypointRef>) {
        if let Some(entry) = self.lock().targets.get_mut(key) {
            entry.waypoint = Some(waypoint);
        }
    }

    /// The registered targets, in order.
    pub fn target_keys(&self) -> Vec<TargetKey> {
        let mut keys: Vec<TargetKey> = self.lock().targets.keys().cloned().collect();
        keys.sort();
        keys
    }

    /// Forgets a target.
    pub fn unregister(&self, key: &TargetKey) {
        self.change_zero(|state| {
            unindex(state, key);
            state.targets.remove(key);
            state.zero.set(key, None);
        });
    }

    /// Counts a validated report received at `now`.
    pub fn ingest(&self, report: &Report, now: Millis) -> Ingested {
        ingest_report(&mut self.lock(), report, now, true).0
    }

    /// Counts a validated report body received at `now`: the report, and the requests it says
    /// its proxy holds for cold destinations. A target whose destination is held wakes at once
    /// (an activation). Also returns what the proxy's `hold_totals` added since its previous
    /// report (for the metrics).
    pub fn ingest_body(&self, body: &ReportBody, now: Millis) -> (Ingested, Option<HoldTotals>) {
        self.ingest_body_as(body, now, true)
    }

    /// [`Hub::ingest_body`] of a report another replica received and mirrored here: its
    /// instance's report rate was checked there (`rated` false skips the check here).
    pub fn ingest_body_as(
        &self,
        body: &ReportBody,
        now: Millis,
        rated: bool,
    ) -> (Ingested, Option<HoldTotals>) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let (ingested, instance) = ingest_report(state, &body.report, now, rated);
        let Some(instance) = instance else {
            return (ingested, None);
        };
        let max_per_target = state.counters.limits().max_sources_per_target;
        let holding = state
            .zero
            .apply_held(&instance, &body.held, now, max_per_target);
        for key in &holding {
            if let Some(entry) = state.targets.get(key) {
                entry.wake.surge.notify_one();
            }
        }
        let totals = state
            .zero
            .apply_totals(&instance, body.hold_totals.as_ref(), now);
        (ingested, totals)
    }

    /// Sets (`Some`) or clears a target's scale to zero: the destination its callers' proxies
    /// hold requests for, and how long a hold that no report confirms still counts (the
    /// target's staleness bound).
    pub fn set_scale_to_zero(
        &self,
        key: &TargetKey,
        destination: Option<Destination>,
        hold_ttl_ms: Millis,
    ) {
        self.change_zero(|state| state.zero.set(key, destination.map(|d| (d, hold_ttl_ms))));
    }

    /// The Service's ports, naming the destination of a target whose spec gives no port.
    pub fn set_destination_ports(&self, key: &TargetKey, ports: Vec<u16>) {
        self.change_zero(|state| state.zero.set_ports(key, ports));
    }

    /// A scale-to-zero target's `spec.replicas` as last read or written (`None`: unknown).
    pub fn set_replicas(&self, key: &TargetKey, replicas: Option<i32>) {
        self.change_zero(|state| state.zero.set_replicas(key, replicas));
    }

    /// A scale-to-zero target's ready endpoints as the proxies likely see them (`None`:
    /// unknown).
    pub fn set_ready_endpoints(&self, key: &TargetKey, ready: Option<usize>) {
        self.change_zero(|state| state.zero.set_ready_endpoints(key, ready));
    }

    /// A scale-to-zero target's holds, quiet and temperature at `now`; `None` for a target
    /// without scale to zero.
    pub fn zero_view(&self, key: &TargetKey, now: Millis) -> Option<ZeroView> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let quiet_since = state.targets.get_mut(key)?.window.quiet_since(now);
        state.zero.view(key, quiet_since, now)
    }

    /// The destinations every answer lists cold (sorted, at most [`MAX_COLD`]).
    pub fn cold(&self) -> Arc<[String]> {
        self.lock().zero.cold()
    }

    /// The cold list once it differs from `seen`, or after `wait` whatever it is: an answer to
    /// a proxy holding requests waits here, so that it says "warm" the moment the target is,
    /// rather than at the proxy's next report.
    pub async fn cold_after(&self, seen: &[String], wait: std::time::Duration) -> Arc<[String]> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before the list is read: a change in between is not missed.
            let changed = self.cold_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let cold = self.cold();
            if *cold != *seen {
                return cold;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.cold();
            }
        }
    }

    /// Scale-to-zero targets listed cold.
    pub fn cold_targets(&self) -> usize {
        self.lock().zero.cold_targets()
    }

    /// The metric of a target at `now`, with the number of sources; `None` when unknown.
    pub fn observe(&self, key: &TargetKey, now: Millis) -> Option<(Observation, usize)> {
        let mut state = self.lock();
        let entry = state.targets.get_mut(key)?;
        let observation = entry.window.observe(now, entry.metric);
        Some((observation, entry.window.sources()))
    }

    /// Drops per-instance counters (and holds, hold totals) not refreshed for `ttl_ms`.
    pub fn expire(&self, now: Millis, ttl_ms: Millis) {
        self.change_zero(|state| {
            state.counters.expire(now, ttl_ms);
            state.zero.expire(now, ttl_ms);
        });
    }

    /// (instances, instance routes, targets) tracked, for metrics and benchmarks.
    pub fn sizes(&self) -> (usize, usize, usize) {
        let state = self.lock();
        (
            state.counters.instances(),
            state.counters.routes(),
            state.targets.len(),
        )
    }
}

#[cfg(test)]
mod tests;
