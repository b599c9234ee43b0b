//! Surge, replayed through the simulation: each ready pod's sidecar sends reports (real
//! [`surge_wire::Report`] values) when the filter would, and they go through the scaler's own
//! code: its ingest hub ([`surge_scaler::hub::Hub`]: counters, target selection by the
//! sidecar's owner, per-target window and the wake-up on a change that can move the answer)
//! and its pure decision ([`surge_scaler::decision::decide`]), with the policy the scaler
//! derives from a SurgeScaler that sets only min, max and the target (every other field
//! defaulted by the CRD's own serde defaults).
//!
//! The report timing is the filter's own: each sidecar runs `surge_filter_core`'s
//! [`Scheduler`] with the filter's default configuration, sampling its arrivals (completed plus
//! in flight) every check period, and its reports carry the scheduler's recent window, as the
//! filter's do.
//!
//! What is modelled here rather than run from Surge's code:
//! - the controller loop (`scaler/src/controller.rs`, restated): a report reaches the scaler at
//!   once; the decision runs when the hub wakes the target (a surge report, or a metric that
//!   moved, at most every 10 ms) and on the slow tick (`--tick-ms`, default 1000); the scale is
//!   written at once;
//! - the sidecar's counting: arrivals and completions (served or refused), spread evenly over
//!   the ready pods; a pod's sidecar reports from its creation, with no traffic until it is
//!   ready (so its first requests are a surge from zero, as the filter sees them).

use std::sync::Arc;

use futures::FutureExt as _;
use surge_filter_core::config::Config as FilterConfig;
use surge_filter_core::surge::{Arrivals, Scheduler};
use surge_scaler::crd::SurgeScalerSpec;
use surge_scaler::decision::{self, DecisionState, Input, Policy};
use surge_scaler::hub::{Hub, Selector, TargetKey, Wake};
use surge_scaler::window::WindowConfig;
use surge_wire::{Proxy, Report, Role, RouteCounters};

use super::super::sim::{Autoscaler, Observation};
use super::ScaleTarget;

/// Added to the simulation's clock (negative during the warm-up) so that the filter's and the
/// scaler's unsigned millisecond clocks stay positive.
const CLOCK_OFFSET_MS: i64 = 1_000_000_000;

/// The decision's slow tick, for scale-down when no report moves the answer: the scaler's
/// `--tick-ms` default (scaler/src/cli.rs: 1000).
pub const SLOW_TICK_MS: i64 = 1_000;
/// Namespace and names of the replayed workload.
const NAMESPACE: &str = "default";
const WORKLOAD: &str = "app";

/// The filter's configuration: every default (`pluginConfig: {}`).
fn filter_config() -> FilterConfig {
    FilterConfig::default()
}

/// The filter's periodic report interval, in milliseconds.
pub fn report_interval_ms() -> u64 {
    filter_config().report_interval_ms
}

/// One ready pod's sidecar: its report scheduler and the proxy's cumulative counters.
#[derive(Debug)]
struct Sidecar {
    instance: String,
    scheduler: Scheduler,
    /// Nominal time of the last periodic report (the filter keeps it in shared data).
    schedule_ms: Option<u64>,
    /// Requests that reached this proxy.
    arrived: f64,
    /// Its share of the completed requests.
    completed: f64,
    busy_us: f64,
    seq: u64,
}

impl Sidecar {
    /// (requests_total, inflight) as the filter would count them. The simulation's queue is
    /// one for all pods, so a new pod's share of the completions can include requests that
    /// arrived at older pods; the counts stay the proxy's own by completing at most what
    /// arrived, so completed + in flight is always exactly the pod's arrivals.
    fn counts(&self) -> (u64, u64) {
        let arrived = self.arrived.floor() as u64;
        let requests = (self.completed.floor() as u64).min(arrived);
        (requests, arrived - requests)
    }
}

/// Surge's scaler code fed with reports timed as the filter times them, stepped by the
/// simulation.
pub struct SurgeReplay {
    sidecars: Vec<Sidecar>,
    started: u64,
    hub: Hub,
    key: TargetKey,
    wake: Arc<Wake>,
    policy: Policy,
    state: Option<DecisionState>,
    last_decision_ms: Option<i64>,
    service_time_us: f64,
}

/// The SurgeScaler spec a user writes for `target`: min, max and an RPS target, the rest
/// defaulted by the CRD's serde defaults (windows 60 s / 6 s, panic threshold 2, tolerance 0.1,
/// burst tolerance 0.2, scale-down stabilization 300 s, ...).
pub fn default_spec(target: &ScaleTarget) -> Result<SurgeScalerSpec, serde_json::Error> {
    serde_json::from_value(serde_json::json!({
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": WORKLOAD},
        "minReplicas": target.min_replicas,
        "maxReplicas": target.max_replicas,
        "metric": {"type": "rps", "target": target.target_rps_per_pod},
    }))
}

impl SurgeReplay {
    /// A replay for `target`, with the filter's default timing and `service_time_ms` per
    /// request for the reported busy time.
    pub fn new(target: &ScaleTarget, service_time_ms: f64) -> Result<Self, serde_json::Error> {
        let spec = default_spec(target)?;
        let hub = Hub::default();
        let key = TargetKey {
            namespace: NAMESPACE.into(),
            name: WORKLOAD.into(),
        };
        let wake = hub.register(
            &key,
            Selector::from_spec(NAMESPACE, &spec),
            spec.metric.type_,
            WindowConfig {
                stable_ms: u64::from(spec.windows.stable_seconds) * 1000,
                panic_ms: u64::from(spec.windows.panic_seconds) * 1000,
                stale_ms: u64::from(spec.stale_after_seconds) * 1000,
            },
        );
        Ok(Self {
            sidecars: Vec::new(),
            started: 0,
            hub,
            key,
            wake,
            policy: Policy::from_spec(&spec),
            state: None,
            last_decision_ms: None,
            service_time_us: service_time_ms * 1000.0,
        })
    }

    /// Sends the sidecar's report if its scheduler says one is due, into the scaler's hub.
    fn report(&mut self, index: usize, now: u64) {
        let Some(sidecar) = self.sidecars.get_mut(index) else {
            return;
        };
        let (requests, inflight) = sidecar.counts();
        let arrivals = Arrivals {
            indexed: vec![requests + inflight],
            other: 0,
        };
        sidecar.scheduler.observe(now, arrivals);
        let Some(trigger) = sidecar.scheduler.due(now, sidecar.schedule_ms) else {
            return;
        };
        sidecar.seq += 1;
        sidecar.schedule_ms = Some(sidecar.scheduler.next_schedule(
            now,
            sidecar.schedule_ms,
            trigger,
        ));
        sidecar.scheduler.sent(now, trigger);
        let recent = sidecar.scheduler.recent();
        let report = Report {
            version: surge_wire::VERSION,
            proxy: Proxy {
                namespace: NAMESPACE.into(),
                workload: WORKLOAD.into(),
                pod: sidecar.instance.clone(),
                // Istio's OWNER node metadata for a Deployment's pod.
                owner: format!(
                    "kubernetes://apis/apps/v1/namespaces/{NAMESPACE}/deployments/{WORKLOAD}"
                ),
                role: Role::Sidecar,
            },
            instance: sidecar.instance.clone(),
            seq: sidecar.seq,
            time_ms: now,
            surge: trigger.is_surge(),
            routes: vec![RouteCounters {
                route: "default".into(),
                cluster: format!("inbound|8080||{WORKLOAD}.{NAMESPACE}.svc.cluster.local"),
                requests_total: requests,
                errors_total: 0,
                duration_us_total: sidecar.busy_us.floor() as u64,
                inflight,
                window_requests: recent.as_ref().map(|r| r.arrivals.total()),
            }],
            window_ms: recent.as_ref().map(|r| r.span_ms),
        };
        self.hub.ingest(&report, now);
    }
}

/// Name of the replay in tables and charts.
pub const REPLAY_NAME: &str = "Surge (replayed decisions)";

impl Autoscaler for SurgeReplay {
    fn name(&self) -> &str {
        REPLAY_NAME
    }

    fn observe(&mut self, o: &Observation) -> u32 {
        let now = (o.now_ms + CLOCK_OFFSET_MS).max(0) as u64;
        // One sidecar per pod: its Envoy starts with the pod and reports (no traffic) until the
        // pod is ready, as in the sandbox. Pods become ready in creation order and the youngest
        // go first on scale-down, so the oldest `ready` sidecars are the ready pods'.
        let pods = o.replicas as usize;
        while self.sidecars.len() < pods {
            self.started += 1;
            self.sidecars.push(Sidecar {
                instance: format!("app-{}", self.started),
                scheduler: Scheduler::new(&filter_config()),
                schedule_ms: None,
                arrived: 0.0,
                completed: 0.0,
                busy_us: 0.0,
                seq: 0,
            });
        }
        self.sidecars.truncate(pods);
        let ready = (o.ready_pods as usize).min(pods);
        if ready > 0 {
            // The filter counts a request as in flight when its headers arrive and as
            // completed in `on_log`.
            let arrived = o.step_requests / ready as f64;
            let completed = o.step_completed / ready as f64;
            for sidecar in self.sidecars.iter_mut().take(ready) {
                sidecar.arrived += arrived;
                sidecar.completed += completed;
                sidecar.busy_us += completed * self.service_time_us;
            }
        }
        for index in 0..self.sidecars.len() {
            self.report(index, now);
        }
        // The hub's wake-ups (a surge report: decide at once; a moved metric: decide after the
        // controller's 10 ms gap, within this 100 ms step): permits stored by the reports.
        let surge = self.wake.surge.notified().now_or_never().is_some();
        let change = self.wake.change.notified().now_or_never().is_some();
        let significant = surge || change;

        let tick_due = self
            .last_decision_ms
            .is_none_or(|t| o.now_ms - t >= SLOW_TICK_MS);
        if !(significant || tick_due) {
            return o.replicas;
        }
        self.last_decision_ms = Some(o.now_ms);
        let Some((observation, _sources)) = self.hub.observe(&self.key, now) else {
            return o.replicas;
        };
        let current = i32::try_from(o.replicas).unwrap_or(i32::MAX);
        let input = Input {
            current,
            // What the controller passes: the scale's `status.replicas`, the pods that exist
            // (starting ones included), which the simulation's pods are as soon as written.
            ready: current,
            observation,
        };
        let state = self
            .state
            .get_or_insert_with(|| DecisionState::after_restart(now));
        let decision = decision::decide(&self.policy, state, &input, now);
        if decision.desired != current {
            state.record_scale(now, current, decision.desired);
        }
        u32::try_from(decision.desired.max(0)).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::sim::{PodModel, SimConfig, simulate};
    use super::*;

    fn target() -> ScaleTarget {
        ScaleTarget {
            min_replicas: 1,
            max_replicas: 10,
            target_rps_per_pod: 70.0,
        }
    }

    fn run(trace: &[f64], event_s: f64, initial: u32) -> super::super::super::sim::Outcome {
        let mut surge = SurgeReplay::new(&target(), 40.0).unwrap();
        let config = SimConfig {
            pod: PodModel::default(),
            warmup_s: 120,
            warmup_rps: None,
            initial_replicas: initial,
        };
        simulate(trace, event_s, &config, &mut surge)
    }

    #[test]
    fn reports_reach_the_target_through_the_hub() {
        let mut surge = SurgeReplay::new(&target(), 40.0).unwrap();
        let mut o = Observation {
            now_ms: 0,
            requests_total: 0.0,
            step_requests: 6.0,
            completed_total: 0.0,
            step_completed: 6.0,
            ready_pods: 1,
            replicas: 1,
            inflight: 0.0,
        };
        for k in 1..=30 {
            o.now_ms = k * 100;
            surge.observe(&o);
        }
        let seen = surge
            .hub
            .observe(&surge.key, (3_000 + CLOCK_OFFSET_MS) as u64);
        assert!(
            seen.is_some_and(|(obs, sources)| sources == 1 && obs.panic > 0.0),
            "{seen:?}"
        );
    }

    #[test]
    fn the_default_spec_is_what_the_crd_defaults_give() {
        let spec = default_spec(&target()).unwrap();
        assert_eq!(spec.min_replicas, 1);
        assert_eq!(spec.max_replicas, 10);
        assert_eq!(spec.windows.stable_seconds, 60);
        assert_eq!(spec.windows.panic_seconds, 6);
    }

    #[test]
    fn steady_load_holds_the_scale() {
        let out = run(&[60.0; 300], 0.0, 1);
        assert_eq!(out.metrics.scale_events, 0, "{:?}", out.metrics);
    }

    #[test]
    fn a_10x_step_is_acted_on_at_the_first_check_after_it() {
        let trace: Vec<f64> = (0..120)
            .map(|s| if s < 30 { 60.0 } else { 600.0 })
            .collect();
        let out = run(&trace, 30.0, 1);
        let first = out.metrics.first_scale_up_s;
        // The filter counts arrivals, so the step shows at its next check (every 100 ms)
        // although the one pod completes only its 100 rps. That report's window still holds
        // some of the calm before the step; the follow-up one window later carries the full
        // 600 rps: ceil(600 / 70) = 9 replicas, and no more when the new pods join.
        assert!(first.is_some_and(|s| s <= 0.2), "{first:?}");
        assert_eq!(out.metrics.peak_replicas, 9, "{:?}", out.metrics);
    }

    #[test]
    fn a_2x_step_is_acted_on_once_a_report_interval_holds_it() {
        // 60 -> 120 rps: one 200 ms window (24 requests) is too little to tell from noise,
        // the next periodic report's second at 120 rps is not (5.4 sigmas): 2 replicas.
        let trace: Vec<f64> = (0..120)
            .map(|s| if s < 30 { 60.0 } else { 120.0 })
            .collect();
        let out = run(&trace, 30.0, 1);
        let first = out.metrics.first_scale_up_s;
        assert!(first.is_some_and(|s| (0.5..=1.5).contains(&s)), "{first:?}");
        assert_eq!(out.metrics.peak_replicas, 2, "{:?}", out.metrics);
    }
}
