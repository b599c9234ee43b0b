//! The hub's ingest: which targets a report feeds, and what it adds to their windows.
//!
//! ```text
//!  report --> counters (deltas per route) --> candidates (by workload, or by the Service host
//!             a gateway's or waypoint's route names) --> per target: the routes it selects
//!             --> its window (a source per instance)
//! ```
//!
//! A waypoint names the Services of its routes itself, so its routes count for a target only
//! when the target's Service is bound to that waypoint; an active route naming a Service bound
//! elsewhere (or nowhere) is refused, an idle one (cumulative counters keep every route a proxy
//! ever counted) is left alone, and while the binding is not read yet nothing counts.

use std::sync::Arc;

use surge_wire::{Report, Role, ServiceCluster};

use super::{Ingested, Refusal, State, TargetKey, owner_name};
use crate::decision::Millis;
use crate::window::{Applied, Capacity, Change, RouteDelta, SourceReport};

/// Counts `report` for the targets it feeds; with the instance it was counted under when it
/// was applied (a baseline or traffic), for the report's hold fields.
pub(super) fn ingest_report(
    state: &mut State,
    report: &Report,
    now: Millis,
    rated: bool,
) -> (Ingested, Option<Arc<str>>) {
    if report.proxy.role == Role::Gateway
        && let Some(allowed) = &state.gateway_namespaces
        && !allowed.contains(&report.proxy.namespace)
    {
        return (Ingested::GatewayNamespace, None);
    }
    let (instance, applied) = state.counters.apply_as(report, now, rated);
    let (interval_ms, deltas) = match &applied {
        Applied::Duplicate => return (Ingested::Duplicate, None),
        Applied::ForeignInstance => return (Ingested::ForeignInstance, None),
        Applied::Throttled { retry_after_ms } => {
            let retry_after_ms = *retry_after_ms;
            return (Ingested::Throttled { retry_after_ms }, None);
        }
        Applied::OverCapacity(Capacity::Instances(limit)) => {
            return (Ingested::OverCapacity(Refusal::Instances(*limit)), None);
        }
        Applied::OverCapacity(Capacity::InstanceRoutes(limit)) => {
            return (
                Ingested::OverCapacity(Refusal::InstanceRoutes(*limit)),
                None,
            );
        }
        Applied::OverCapacity(Capacity::NamespaceInstances(limit)) => {
            return (
                Ingested::OverCapacity(Refusal::NamespaceInstances(*limit)),
                None,
            );
        }
        Applied::Baseline => (0, None),
        Applied::Deltas {
            interval_ms,
            routes,
        } => (*interval_ms, Some(routes.as_slice())),
    };

    let mut candidates: Vec<&TargetKey> = Vec::new();
    match report.proxy.role {
        Role::Sidecar => {
            if let Some(workloads) = state.by_workload.get(&report.proxy.namespace) {
                if let Some(keys) = workloads.get(&report.proxy.workload) {
                    candidates.extend(keys);
                }
                if let Some((_, _, name)) = owner_name(&report.proxy.owner)
                    && name != report.proxy.workload
                    && let Some(keys) = workloads.get(name)
                {
                    candidates.extend(keys);
                }
            }
        }
        Role::Gateway | Role::Waypoint => {
            let index = if report.proxy.role == Role::Gateway {
                &state.by_host
            } else {
                &state.by_waypoint_host
            };
            for route in &report.routes {
                if let Some(c) = ServiceCluster::parse(&route.cluster)
                    && let Some(keys) = index.get(c.host)
                {
                    candidates.extend(keys);
                }
            }
        }
    }
    candidates.sort();
    candidates.dedup();

    let max_sources = state.counters.limits().max_sources_per_target;
    let mut counted = 0;
    let mut refused = false;
    // Per route of a waypoint report: refused for some target, counted for some target.
    let waypoint = report.proxy.role == Role::Waypoint;
    let mut refused_route = vec![false; if waypoint { report.routes.len() } else { 0 }];
    let mut counted_route = refused_route.clone();
    for key in candidates {
        let Some(entry) = state.targets.get_mut(key) else {
            continue;
        };
        let sidecar = entry.selector.owns_sidecar(report);
        // None: the binding is not read yet; Some(false): another waypoint (or none) serves
        // the target's Service.
        let serving = entry.waypoint.as_ref().map(|bound| {
            bound.as_ref().is_some_and(|w| {
                w.namespace == report.proxy.namespace && w.name == report.proxy.workload
            })
        });
        let mut total = RouteDelta::default();
        let mut inflight = 0u64;
        let mut window_requests = 0u64;
        let mut selected = 0usize;
        for (i, route) in report.routes.iter().enumerate() {
            let from_source = sidecar
                || match report.proxy.role {
                    Role::Gateway => entry.selector.gateway_cluster_selected(&route.cluster),
                    Role::Waypoint => entry.selector.waypoint_cluster_selected(&route.cluster),
                    Role::Sidecar => false,
                };
            if !from_source || !entry.selector.route_selected(&route.route) {
                continue;
            }
            // A waypoint names the Services of its routes itself: only the one serving this
            // target's Service counts for it. A route is refused only when it carried traffic
            // now: its cumulative counters stay in every report of that proxy, also after a
            // relabel moved the Service to another waypoint.
            if waypoint && serving != Some(true) {
                let active = route.inflight > 0
                    || route.window_requests.unwrap_or(0) > 0
                    || deltas
                        .and_then(|d| d.get(i))
                        .is_some_and(|d| d.requests > 0);
                if serving == Some(false) && active {
                    refused_route[i] = true;
                }
                continue;
            }
            if waypoint {
                counted_route[i] = true;
            }
            selected += 1;
            inflight = inflight.saturating_add(route.inflight);
            window_requests = window_requests.saturating_add(route.window_requests.unwrap_or(0));
            if let Some(d) = deltas.and_then(|d| d.get(i)) {
                total.requests = total.requests.saturating_add(d.requests);
                total.busy_us = total.busy_us.saturating_add(d.busy_us);
            }
        }
        // A sidecar is a source even when its selected routes saw no traffic (that is real
        // zero load); a gateway only when it forwards to the target's Service.
        if !sidecar && selected == 0 {
            continue;
        }
        if entry.window.sources() >= max_sources && !entry.window.has_source(&instance) {
            refused = true;
            continue;
        }
        let source = SourceReport {
            delta: deltas.map(|_| (total, interval_ms)),
            inflight,
            window: report.window_ms.map(|span| (window_requests, span)),
            surge: report.surge,
        };
        match entry.window.record(now, &instance, source) {
            Change::Surge => entry.wake.surge.notify_one(),
            Change::Significant => entry.wake.change.notify_one(),
            Change::Minor => {}
        }
        counted += 1;
    }
    let refused_routes = refused_route
        .iter()
        .zip(&counted_route)
        .filter(|&(refused, counted)| *refused && !*counted)
        .count();
    let ingested = match applied {
        _ if refused => Ingested::OverCapacity(Refusal::TargetSources {
            limit: max_sources,
            counted,
        }),
        // A report whose traffic went only to Services its waypoint does not serve, first or
        // not.
        _ if counted == 0 && refused_routes > 0 => Ingested::Counted {
            targets: 0,
            refused_routes,
        },
        Applied::Baseline => Ingested::Baseline,
        _ => Ingested::Counted {
            targets: counted,
            refused_routes,
        },
    };
    (ingested, Some(instance))
}

pub(super) fn unindex(state: &mut State, key: &TargetKey) {
    let Some(entry) = state.targets.get(key) else {
        return;
    };
    let namespace = entry.selector.namespace.clone();
    let workload = entry.selector.workload.clone();
    let host = entry.selector.gateway_host.clone();
    let waypoint_host = entry.selector.waypoint_host.clone();
    if let Some(workloads) = state.by_workload.get_mut(&namespace) {
        if let Some(keys) = workloads.get_mut(&workload) {
            keys.retain(|k| k != key);
            if keys.is_empty() {
                workloads.remove(&workload);
            }
        }
        if workloads.is_empty() {
            state.by_workload.remove(&namespace);
        }
    }
    for (index, host) in [
        (&mut state.by_host, host),
        (&mut state.by_waypoint_host, waypoint_host),
    ] {
        if let Some(host) = host
            && let Some(keys) = index.get_mut(&host)
        {
            keys.retain(|k| k != key);
            if keys.is_empty() {
                index.remove(&host);
            }
        }
    }
}
