//! Surge, replayed through the simulation: each ready pod's sidecar sends reports (real
//! [`surge_wire::Report`] values) when the filter would, and they go through the scaler's own
//! code: its ingest hub ([`surge_scaler::hub::Hub`]: counters, target selection by the
//! sidecar's owner, per-target window and the wake-up on a change that can move the answer)
//! and its pure decision ([`surge_scaler::decision::decide`]), with the policy the scaler
//! derives from a SurgeScaler that sets only min, max and the target (every other field
//! defaulted by the CRD's own serde defaults).
//!
//! What is modelled here rather than run from Surge's code:
//! - the filter's report timing ([`ReportScheduler`]): the filter is a `cdylib` for
//!   wasm32-wasip1, not a library the sandbox can link, so its scheduler's rules are restated
//!   from `filter/src/surge.rs` with the defaults of `filter/src/config.rs`;
//! - the controller loop (`scaler/src/controller.rs`, restated): a report reaches the scaler at
//!   once; the decision runs when the hub wakes the target (a surge report, or a metric that
//!   moved, at most every 10 ms) and on the slow tick (`--tick-ms`, default 1000); the scale is
//!   written at once;
//! - the sidecar's counting: completed requests (served or refused), spread evenly over the
//!   ready pods; a pod's sidecar reports from its creation, with no traffic until it is ready
//!   (so its first requests are a surge from zero, as the filter sees them).

use std::collections::VecDeque;

use std::sync::Arc;

use futures::FutureExt as _;
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

/// The filter's periodic report interval (`report_interval_ms`, filter/src/config.rs: 1000).
pub const REPORT_INTERVAL_MS: u64 = 1_000;
/// How often the filter checks the recent rate (`surge.check_period_ms`: 100).
pub const CHECK_PERIOD_MS: u64 = 100;
/// The span the recent rate is measured over (`surge.window_ms`: 200).
pub const SURGE_WINDOW_MS: u64 = 200;
/// An early report goes out when the recent rate exceeds the last reported one times this
/// (`surge.factor`: 2).
pub const SURGE_FACTOR: f64 = 2.0;
/// No early report below this rate (`surge.min_rps`: 5).
pub const SURGE_MIN_RPS: f64 = 5.0;
/// Least time between two early reports (`surge.min_gap_ms`: 250).
pub const SURGE_MIN_GAP_MS: u64 = 250;

/// Why a report goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The report interval has passed and the rate is not surging.
    Periodic,
    /// The recent rate surged past the last reported rate before the interval passed: an
    /// early report.
    Surge,
    /// The interval passed while the rate surges: sent on schedule, flagged as a surge.
    PeriodicSurge,
}

impl Trigger {
    /// Whether the report is flagged as a surge.
    pub fn is_surge(self) -> bool {
        matches!(self, Self::Surge | Self::PeriodicSurge)
    }

    /// Whether the report is the periodic one (it advances the schedule).
    pub fn is_periodic(self) -> bool {
        matches!(self, Self::Periodic | Self::PeriodicSurge)
    }
}

/// When the filter sends a report, restated from `filter/src/surge.rs`: every check period it
/// samples the proxy's request total. The rate is surging when the rate over the recent window
/// is at least the minimum and above the last reported rate times the factor. A report is due
/// on schedule (one interval after the previous periodic slot; flagged as a surge if the rate
/// surges then), or early when the rate surges, early reports at least the minimum gap apart
/// and leaving the schedule alone. The rate a report "carries" is the recent rate when it is
/// flagged as a surge, else the rate over the interval it closes.
#[derive(Debug, Clone, Default)]
pub struct ReportScheduler {
    samples: VecDeque<(u64, u64)>,
    last_report: Option<(u64, u64)>,
    last_reported_rate: Option<f64>,
    last_early_ms: Option<u64>,
    /// Nominal time of the last periodic report.
    schedule_ms: Option<u64>,
}

fn rate_between(from: (u64, u64), to: (u64, u64)) -> Option<f64> {
    let dt = to.0.checked_sub(from.0).filter(|&dt| dt > 0)?;
    Some(to.1.saturating_sub(from.1) as f64 * 1000.0 / dt as f64)
}

impl ReportScheduler {
    /// Records the request total at `now_ms` (one sample per check period).
    pub fn observe(&mut self, now_ms: u64, total: u64) {
        if self.samples.back().is_some_and(|&(t, _)| now_ms <= t) {
            return;
        }
        self.samples.push_back((now_ms, total));
        let horizon = now_ms.saturating_sub(SURGE_WINDOW_MS * 4);
        while self.samples.len() > 2 && self.samples.front().is_some_and(|&(t, _)| t < horizon) {
            self.samples.pop_front();
        }
    }

    /// Requests per second over the recent window.
    pub fn recent_rate(&self) -> Option<f64> {
        let last = *self.samples.back()?;
        let start = last.0.saturating_sub(SURGE_WINDOW_MS);
        let base = self
            .samples
            .iter()
            .rev()
            .find(|&&(t, _)| t <= start)
            .or_else(|| self.samples.front())?;
        rate_between(*base, last)
    }

    /// Whether a report is due at `now_ms`.
    pub fn due(&self, now_ms: u64) -> Option<Trigger> {
        let periodic = self
            .schedule_ms
            .is_none_or(|at| now_ms >= at.saturating_add(REPORT_INTERVAL_MS));
        let surging = match (self.last_reported_rate, self.recent_rate()) {
            (Some(baseline), Some(recent)) => {
                recent >= SURGE_MIN_RPS && recent > baseline * SURGE_FACTOR
            }
            _ => false,
        };
        if periodic {
            return Some(if surging {
                Trigger::PeriodicSurge
            } else {
                Trigger::Periodic
            });
        }
        let gap_ok = self
            .last_early_ms
            .is_none_or(|t| now_ms.saturating_sub(t) >= SURGE_MIN_GAP_MS);
        (surging && gap_ok).then_some(Trigger::Surge)
    }

    /// Records that a report went out at `now_ms` with `total` requests.
    pub fn sent(&mut self, now_ms: u64, total: u64, trigger: Trigger) {
        let now = (now_ms, total);
        self.last_reported_rate = if trigger.is_surge() {
            self.recent_rate()
        } else {
            self.last_report
                .and_then(|prev| rate_between(prev, now))
                .or_else(|| self.recent_rate())
        };
        if trigger.is_surge() {
            self.last_early_ms = Some(now_ms);
        }
        // Periodic reports advance the schedule by one interval (restarting from now after a
        // long gap); early ones leave it alone.
        if trigger.is_periodic() {
            self.schedule_ms = Some(match self.schedule_ms {
                Some(at) if now_ms < at.saturating_add(2 * REPORT_INTERVAL_MS) => {
                    at.saturating_add(REPORT_INTERVAL_MS)
                }
                _ => now_ms,
            });
        }
        self.last_report = Some(now);
    }
}

/// One ready pod's sidecar: its report scheduler and the proxy's cumulative counters.
#[derive(Debug)]
struct Sidecar {
    instance: String,
    scheduler: ReportScheduler,
    requests: f64,
    busy_us: f64,
    seq: u64,
    /// Requests in flight through this proxy now.
    inflight: u64,
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
/// scale-down stabilization 300 s, ...).
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
        let requests = sidecar.requests.floor() as u64;
        sidecar.scheduler.observe(now, requests);
        let Some(trigger) = sidecar.scheduler.due(now) else {
            return;
        };
        sidecar.seq += 1;
        sidecar.scheduler.sent(now, requests, trigger);
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
                inflight: sidecar.inflight,
            }],
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
                scheduler: ReportScheduler::default(),
                requests: 0.0,
                busy_us: 0.0,
                seq: 0,
                inflight: 0,
            });
        }
        self.sidecars.truncate(pods);
        let ready = (o.ready_pods as usize).min(pods);
        if ready > 0 {
            // The filter counts a request in `on_log`, when it completes.
            let share = o.step_completed / ready as f64;
            let inflight = (o.inflight / ready as f64).round() as u64;
            for sidecar in self.sidecars.iter_mut().take(ready) {
                sidecar.requests += share;
                sidecar.busy_us += share * self.service_time_us;
                sidecar.inflight = inflight;
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

    /// Feeds `rps` from `t` for `ms` in check periods; returns the triggers with their times.
    fn feed(
        s: &mut ReportScheduler,
        t: &mut u64,
        total: &mut f64,
        rps: f64,
        ms: u64,
    ) -> Vec<(u64, Trigger)> {
        let mut sent = Vec::new();
        for _ in 0..ms / CHECK_PERIOD_MS {
            *t += CHECK_PERIOD_MS;
            *total += rps * CHECK_PERIOD_MS as f64 / 1000.0;
            s.observe(*t, *total as u64);
            if let Some(trigger) = s.due(*t) {
                s.sent(*t, *total as u64, trigger);
                sent.push((*t, trigger));
            }
        }
        sent
    }

    #[test]
    fn the_filter_reports_once_a_second_on_steady_load_and_early_on_a_10x_step() {
        let mut s = ReportScheduler::default();
        let (mut t, mut total) = (0, 0.0);
        let steady = feed(&mut s, &mut t, &mut total, 60.0, 5_000);
        assert!(steady.iter().all(|&(_, k)| k == Trigger::Periodic));
        assert_eq!(steady.len(), 5, "{steady:?}");
        let step = feed(&mut s, &mut t, &mut total, 600.0, 1_000);
        // A report flagged as a surge within two check periods of the step (here the periodic
        // one falls due at once and is flagged), and no flood: the gap holds.
        assert!(
            step.iter()
                .any(|&(at, k)| at - 5_000 <= 200 && k.is_surge()),
            "{step:?}"
        );
        assert_eq!(step.first().map(|&(_, k)| k), Some(Trigger::PeriodicSurge));
        let early: Vec<u64> = step
            .iter()
            .filter(|&&(_, k)| k.is_surge())
            .map(|&(at, _)| at)
            .collect();
        assert!(
            early.windows(2).all(|w| w[1] - w[0] >= SURGE_MIN_GAP_MS),
            "{early:?}"
        );
    }

    #[test]
    fn a_step_between_periodic_reports_is_reported_early_and_keeps_the_schedule() {
        let mut s = ReportScheduler::default();
        let (mut t, mut total) = (0, 0.0);
        feed(&mut s, &mut t, &mut total, 60.0, 5_500);
        // Periodic reports at 100, 1100, ... 5100; the step at 5500 is reported early.
        let step = feed(&mut s, &mut t, &mut total, 600.0, 700);
        assert_eq!(
            step.first().map(|&(_, k)| k),
            Some(Trigger::Surge),
            "{step:?}"
        );
        assert!(step.first().is_some_and(|&(at, _)| at <= 5_700), "{step:?}");
        // The next periodic report stays on the 100 + n x 1000 grid.
        assert!(
            step.iter()
                .filter(|&&(_, k)| k.is_periodic())
                .all(|&(at, _)| at == 6_100),
            "{step:?}"
        );
    }

    #[test]
    fn a_2x_step_is_not_a_surge_for_the_filter() {
        // The filter's rule is "above factor x last reported": exactly 2x is not above it.
        let mut s = ReportScheduler::default();
        let (mut t, mut total) = (0, 0.0);
        feed(&mut s, &mut t, &mut total, 60.0, 5_000);
        let step = feed(&mut s, &mut t, &mut total, 120.0, 3_000);
        assert!(
            step.iter().all(|&(_, k)| k == Trigger::Periodic),
            "{step:?}"
        );
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
    fn a_10x_step_is_acted_on_within_half_a_second() {
        let trace: Vec<f64> = (0..120)
            .map(|s| if s < 30 { 60.0 } else { 600.0 })
            .collect();
        let out = run(&trace, 30.0, 1);
        let first = out.metrics.first_scale_up_s;
        // The one pod completes only its 100 rps until its queue of 200 overflows (0.4 s at
        // 500 rps too many); then the refusals complete too, the filter's next check (every
        // 100 ms) sees more than twice the last reported rate and reports early, and the
        // scaler decides on that report.
        assert!(first.is_some_and(|s| (0.4..=0.6).contains(&s)), "{first:?}");
        assert!(out.metrics.peak_replicas >= 9, "{:?}", out.metrics);
    }

    #[test]
    fn a_2x_step_waits_for_the_stable_window() {
        // 60 -> 120 rps: not above the filter's 2x (no early report), and 120 / 70 = 1.7 per
        // pod is under the panic threshold of 2: only the 60 s average can move the answer.
        let trace: Vec<f64> = (0..120)
            .map(|s| if s < 30 { 60.0 } else { 120.0 })
            .collect();
        let out = run(&trace, 30.0, 1);
        let first = out.metrics.first_scale_up_s;
        assert!(
            first.is_some_and(|s| (10.0..=30.0).contains(&s)),
            "{first:?}"
        );
    }
}
