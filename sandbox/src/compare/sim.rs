//! The discrete-time simulation: a per-second offered-load trace, a pod model and one
//! autoscaler model, stepped every [`STEP_MS`] so that sub-second reactions stay visible.
//!
//! Each step of 100 ms:
//! 1. pods whose start-up delay has elapsed are ready; ready capacity = ready pods x capacity;
//! 2. the step's requests arrive (open loop: the offered load does not depend on latency);
//! 3. a fluid FIFO queue serves `min(backlog + arrivals, capacity x 100 ms)`; what would wait
//!    beyond the ready pods' queues (`queue_per_pod` each) is refused (a 503); served and
//!    refused requests complete (see [`Observation`] for who counts what);
//! 4. the autoscaler sees an [`Observation`] at the end of the step and returns the desired
//!    replicas; new pods are created at once (no API latency) and become ready after the
//!    start-up delay; removed pods go at once, starting ones first, then the youngest ready ones
//!    (the ReplicaSet controller's preference).
//!
//! Latency approximation (documented, deliberately simple): a request's latency is the pod's
//! service time plus the time to drain the backlog ahead of it at the capacity ready when it
//! arrives (`backlog / ready capacity`); with no ready pod it waits indefinitely (it counts as over
//! the objective). Within a step the backlog changes linearly, so the share of the step's arrivals
//! over the objective is computed exactly for that linear backlog. The fluid model ignores the
//! random queueing that real traffic sees just below 100 % utilisation, for every system alike.
//!
//! Before `t = 0` the simulation runs a warm-up at a steady load (by default the trace's first
//! value), so windows and counters are filled and each system sits in its steady state when the
//! scenario starts.

use serde::{Deserialize, Serialize};

/// The simulation's time step, in milliseconds.
pub const STEP_MS: i64 = 100;

/// A pod as the sandbox runs it: how long it takes to become ready and how much it can serve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PodModel {
    /// Seconds from creation to ready.
    pub startup_delay_s: f64,
    /// Requests per second one ready pod serves at most.
    pub capacity_rps: f64,
    /// Latency of a request that does not queue, in milliseconds.
    pub service_time_ms: f64,
    /// Latency objective, in milliseconds: requests slower than this count as over it.
    pub latency_objective_ms: f64,
    /// Requests one ready pod lets wait beyond those it serves; arrivals finding the queue full
    /// are refused (503), as the sandbox's app does. `None`: unbounded.
    pub queue_per_pod: Option<f64>,
}

impl Default for PodModel {
    fn default() -> Self {
        Self {
            // Kubernetes' pod start-up SLO: p99 <= 5 s with the image already pulled
            // (shared/reference/autoscalers.md, "Nodes").
            startup_delay_s: 5.0,
            // The sandbox's default pod (sandbox/scenarios/burst.yaml): concurrency 4 at 40 ms
            // per request is 100 rps, 200 requests may wait, objective 250 ms.
            capacity_rps: 100.0,
            service_time_ms: 40.0,
            latency_objective_ms: 250.0,
            queue_per_pod: Some(200.0),
        }
    }
}

/// What an autoscaler model may see at the end of each step. Each model reads only what its
/// anchor can see (the classic chain the counter through scrapes, the KPA per-second stats, ...).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// Simulated time at the end of the step, in milliseconds (negative during the warm-up).
    pub now_ms: i64,
    /// Cumulative requests arrived since the simulation started, counted as they arrive
    /// (what Knative's queue-proxy counts).
    pub requests_total: f64,
    /// Requests that arrived during this step.
    pub step_requests: f64,
    /// Cumulative requests completed (served, or refused with a 503) since the simulation
    /// started: what a sidecar counts when it logs a response (Istio's `istio_requests_total`,
    /// Surge's filter in `on_log`). Below capacity it equals the arrivals; while a queue fills
    /// it lags them.
    pub completed_total: f64,
    /// Requests completed during this step.
    pub step_completed: f64,
    /// Pods ready now.
    pub ready_pods: u32,
    /// The workload's replicas (`spec.replicas`: ready and starting pods).
    pub replicas: u32,
    /// Requests in the system now (queued plus in service).
    pub inflight: f64,
}

/// An autoscaler model: observes each step and returns the replicas it wants.
pub trait Autoscaler {
    /// Name of the system, as shown in tables and charts.
    fn name(&self) -> &str;
    /// Sees the state at the end of a step; returns the desired replicas (the current
    /// `replicas` when it does not act).
    fn observe(&mut self, observation: &Observation) -> u32;
}

/// Everything the simulation needs besides the trace and the model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SimConfig {
    /// The pod model shared by all systems.
    pub pod: PodModel,
    /// Seconds simulated before `t = 0`.
    pub warmup_s: u32,
    /// Offered load during the warm-up; `None`: the trace's first value.
    pub warmup_rps: Option<f64>,
    /// Ready pods at the start of the warm-up.
    pub initial_replicas: u32,
}

/// One second of a run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SecondSample {
    /// Second since the scenario start.
    pub t_s: u32,
    /// Offered load, requests per second.
    pub offered_rps: f64,
    /// Desired replicas at the end of the second.
    pub desired: u32,
    /// Ready pods at the end of the second.
    pub ready: u32,
    /// Ready capacity at the end of the second, requests per second.
    pub capacity_rps: f64,
    /// Requests served during the second.
    pub served_rps: f64,
    /// Share of the second (0..=1) spent overloaded (offered load above ready capacity).
    pub overloaded: f64,
    /// Requests queued at the end of the second.
    pub backlog: f64,
}

/// What a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Seconds from the scenario's event (its load change) to the first desired replicas above
    /// those at the event; `None` if it never scales up after it.
    pub first_scale_up_s: Option<f64>,
    /// Seconds from the event until ready capacity covers the offered load again after the
    /// first moment (at or after the event) it fell short; 0 if it never fell short, `None` if
    /// it never caught up.
    pub enough_capacity_s: Option<f64>,
    /// Seconds with offered load above ready capacity: what a measured run can see (the
    /// sandbox's report counts the same). A backlog still draining once capacity is enough is
    /// not counted here; its cost is in `over_objective`.
    pub overloaded_s: f64,
    /// Share (0..=1) of the requests whose approximate latency is over the objective, refused
    /// ones included.
    pub over_objective: f64,
    /// Share (0..=1) of the requests refused because the ready pods' queues were full.
    pub refused: f64,
    /// Integral of the pods that exist (ready or starting: both are paid for), pod-seconds.
    pub pod_seconds: f64,
    /// Changes of the desired replicas (each one a scale write).
    pub scale_events: u32,
    /// Changes of direction of the desired replicas (up then down or down then up): flapping.
    pub reversals: u32,
    /// Most replicas desired at any time.
    pub peak_replicas: u32,
    /// Requests offered over the scenario.
    pub requests: f64,
}

/// A run of one system over one scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// The system's name.
    pub system: String,
    /// The run's metrics.
    pub metrics: Metrics,
    /// Per-second series.
    pub series: Vec<SecondSample>,
    /// Replicas at the scenario's start.
    pub initial_replicas: u32,
    /// Every change of the desired replicas after the start, at its exact time.
    pub writes: Vec<ScaleWrite>,
}

/// A change of the desired replicas.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScaleWrite {
    /// Seconds since the scenario start.
    pub t_s: f64,
    /// The replicas written.
    pub replicas: u32,
}

/// Offered load at `t_ms`: the trace's value for that second, `warmup_rps` (else its first
/// value) before the start and zero after its end.
pub fn offered_at(trace: &[f64], warmup_rps: Option<f64>, t_ms: i64) -> f64 {
    if t_ms < 0 {
        return warmup_rps
            .or(trace.first().copied())
            .unwrap_or(0.0)
            .max(0.0);
    }
    trace
        .get((t_ms / 1000) as usize)
        .copied()
        .unwrap_or(0.0)
        .max(0.0)
}

/// Share of a step's arrivals that find more than `threshold` requests ahead of them, for a
/// backlog starting at `backlog` and changing at `arrival_rate - service_rate` (both per second,
/// floored at zero), over `dt` seconds.
fn share_over(backlog: f64, arrival_rate: f64, service_rate: f64, threshold: f64, dt: f64) -> f64 {
    let slope = arrival_rate - service_rate;
    if slope.abs() < 1e-12 {
        return if backlog > threshold { 1.0 } else { 0.0 };
    }
    // Time at which the (linear) backlog crosses the threshold.
    let crossing = (threshold - backlog) / slope;
    let share = if slope > 0.0 {
        if backlog > threshold {
            1.0
        } else {
            (dt - crossing) / dt
        }
    } else if backlog > threshold {
        crossing / dt
    } else {
        0.0
    };
    share.clamp(0.0, 1.0)
}

/// Runs `scaler` over `trace` (requests per second, one value per second). `event_s` is the
/// second of the load change that reaction times are measured from.
pub fn simulate(
    trace: &[f64],
    event_s: f64,
    config: &SimConfig,
    scaler: &mut dyn Autoscaler,
) -> Outcome {
    let pod = config.pod;
    let dt = STEP_MS as f64 / 1000.0;
    let startup_ms = (pod.startup_delay_s * 1000.0).round() as i64;
    let wait_budget_s = ((pod.latency_objective_ms - pod.service_time_ms) / 1000.0).max(0.0);
    let event_ms = (event_s * 1000.0).round() as i64;
    let warmup_steps = i64::from(config.warmup_s) * 1000 / STEP_MS;
    let steps = trace.len() as i64 * 1000 / STEP_MS;

    // Time each existing pod is (or becomes) ready; kept sorted ascending.
    let mut pods: Vec<i64> = vec![i64::MIN; config.initial_replicas as usize];
    let ready_at = |pods: &[i64], t: i64| pods.iter().filter(|&&r| r <= t).count() as u32;

    let mut backlog = 0.0_f64;
    let mut requests_total = 0.0_f64;
    let mut completed_total = 0.0_f64;
    let mut metrics = Metrics {
        first_scale_up_s: None,
        enough_capacity_s: None,
        overloaded_s: 0.0,
        over_objective: 0.0,
        refused: 0.0,
        pod_seconds: 0.0,
        scale_events: 0,
        reversals: 0,
        peak_replicas: pods.len() as u32,
        requests: 0.0,
    };
    let mut over_requests = 0.0_f64;
    let mut refused_requests = 0.0_f64;
    let mut replicas_at_event: Option<u32> = None;
    let mut short_since_event = false;
    let mut last_direction: i8 = 0;
    let mut initial_replicas = config.initial_replicas;
    let mut writes = Vec::new();
    let mut series = Vec::with_capacity(trace.len());
    let mut second = SecondSample {
        t_s: 0,
        offered_rps: 0.0,
        desired: 0,
        ready: 0,
        capacity_rps: 0.0,
        served_rps: 0.0,
        overloaded: 0.0,
        backlog: 0.0,
    };

    for k in -warmup_steps..steps {
        let t = k * STEP_MS;
        let measured = t >= 0;
        if t == 0 {
            initial_replicas = pods.len() as u32;
        }
        let offered = offered_at(trace, config.warmup_rps, t);
        let ready = ready_at(&pods, t);
        let capacity_rps = f64::from(ready) * pod.capacity_rps;
        // The replicas before the event: taken in the step that contains it, before that step's
        // decision (an event between step boundaries, as a measured one is, counts that
        // decision as after it).
        if measured && t + STEP_MS > event_ms && replicas_at_event.is_none() {
            replicas_at_event = Some(pods.len() as u32);
        }
        if measured && t >= event_ms && metrics.enough_capacity_s.is_none() {
            if capacity_rps < offered {
                short_since_event = true;
            } else if short_since_event {
                metrics.enough_capacity_s = Some((t - event_ms) as f64 / 1000.0);
            }
        }

        let arrivals = offered * dt;
        let over_share = if arrivals <= 0.0 {
            0.0
        } else if capacity_rps <= 0.0 {
            1.0
        } else {
            share_over(
                backlog,
                offered,
                capacity_rps,
                wait_budget_s * capacity_rps,
                dt,
            )
        };
        let served = (backlog + arrivals).min(capacity_rps * dt);
        // The measured runs' rule: short of ready capacity. Counting a draining backlog too, as
        // this once did, made the model's row differ from the measured one by definition (the
        // 5x step's chain: 54 s modelled, 35 s measured, from the same climb).
        let overloaded = crate::report::overloaded(offered, capacity_rps);
        backlog = (backlog + arrivals - served).max(0.0);
        // What does not fit in the ready pods' queues is refused at once.
        let queue_limit = pod
            .queue_per_pod
            .map_or(f64::INFINITY, |q| q * f64::from(ready));
        let refused = (backlog - queue_limit).max(0.0);
        backlog -= refused;
        requests_total += arrivals;
        completed_total += served + refused;

        if measured {
            metrics.requests += arrivals;
            refused_requests += refused;
            // A refused request is over the objective too; count each request once.
            over_requests += (over_share * arrivals).max(refused);
            metrics.pod_seconds += pods.len() as f64 * dt;
            if overloaded {
                metrics.overloaded_s += dt;
                second.overloaded += dt;
            }
            second.offered_rps += arrivals;
            second.served_rps += served;
        }

        let now = t + STEP_MS;
        let observation = Observation {
            now_ms: now,
            requests_total,
            step_requests: arrivals,
            completed_total,
            step_completed: served + refused,
            ready_pods: ready_at(&pods, now),
            replicas: pods.len() as u32,
            inflight: backlog + offered.min(capacity_rps) * pod.service_time_ms / 1000.0,
        };
        let desired = scaler.observe(&observation);
        let current = pods.len() as u32;
        if desired != current && measured {
            metrics.scale_events += 1;
            writes.push(ScaleWrite {
                t_s: now as f64 / 1000.0,
                replicas: desired,
            });
            let direction: i8 = if desired > current { 1 } else { -1 };
            if last_direction != 0 && direction != last_direction {
                metrics.reversals += 1;
            }
            last_direction = direction;
        }
        if desired > current {
            pods.extend(std::iter::repeat_n(
                now + startup_ms,
                (desired - current) as usize,
            ));
        } else {
            // Sorted ascending by ready time: truncating drops starting pods first, then the
            // youngest ready ones.
            pods.truncate(desired as usize);
        }
        if measured {
            metrics.peak_replicas = metrics.peak_replicas.max(desired);
            if let Some(before) = replicas_at_event
                && metrics.first_scale_up_s.is_none()
                && desired > before
            {
                metrics.first_scale_up_s = Some((now - event_ms) as f64 / 1000.0);
            }
            if now % 1000 == 0 {
                let ready = ready_at(&pods, now);
                second.desired = desired;
                second.ready = ready;
                second.capacity_rps = f64::from(ready) * pod.capacity_rps;
                second.backlog = backlog;
                series.push(second);
                second = SecondSample {
                    t_s: (now / 1000) as u32,
                    offered_rps: 0.0,
                    desired: 0,
                    ready: 0,
                    capacity_rps: 0.0,
                    served_rps: 0.0,
                    overloaded: 0.0,
                    backlog: 0.0,
                };
            }
        }
    }
    if !short_since_event {
        metrics.enough_capacity_s = Some(0.0);
    }
    if metrics.requests > 0.0 {
        metrics.over_objective = (over_requests / metrics.requests).min(1.0);
        metrics.refused = refused_requests / metrics.requests;
    }
    Outcome {
        system: scaler.name().to_string(),
        metrics,
        series,
        initial_replicas,
        writes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Holds a fixed number of replicas, or follows a fixed schedule.
    struct Fixed {
        schedule: Vec<(i64, u32)>,
        current: u32,
    }

    impl Autoscaler for Fixed {
        fn name(&self) -> &str {
            "fixed"
        }
        fn observe(&mut self, o: &Observation) -> u32 {
            for &(at, r) in &self.schedule {
                if o.now_ms == at {
                    self.current = r;
                }
            }
            self.current
        }
    }

    fn config(replicas: u32) -> SimConfig {
        SimConfig {
            pod: PodModel {
                queue_per_pod: None,
                ..PodModel::default()
            },
            warmup_s: 0,
            warmup_rps: None,
            initial_replicas: replicas,
        }
    }

    #[test]
    fn enough_capacity_means_no_overload_no_queue_and_every_request_served() {
        let trace = vec![150.0; 60];
        let mut fixed = Fixed {
            schedule: vec![],
            current: 2,
        };
        let out = simulate(&trace, 0.0, &config(2), &mut fixed);
        assert_eq!(out.metrics.overloaded_s, 0.0);
        assert_eq!(out.metrics.over_objective, 0.0);
        assert_eq!(out.metrics.scale_events, 0);
        assert_eq!(out.metrics.enough_capacity_s, Some(0.0));
        assert!((out.metrics.pod_seconds - 120.0).abs() < 1e-6);
        assert_eq!(out.series.len(), 60);
        let served: f64 = out.series.iter().map(|s| s.served_rps).sum();
        assert!((served - 150.0 * 60.0).abs() < 1e-6);
    }

    #[test]
    fn new_pods_become_ready_after_the_startup_delay() {
        let trace = vec![300.0; 30];
        // At 10 s ask for 3 pods: ready at 15 s with the default 5 s start-up.
        let mut fixed = Fixed {
            schedule: vec![(10_000, 3)],
            current: 1,
        };
        let out = simulate(&trace, 0.0, &config(1), &mut fixed);
        assert_eq!(out.series[9].ready, 1, "{:?}", out.series[9]);
        assert_eq!(out.series[10].desired, 3);
        assert_eq!(out.series[13].ready, 1);
        assert_eq!(out.series[14].ready, 3);
        assert_eq!(out.metrics.first_scale_up_s, Some(10.0));
        assert_eq!(out.metrics.enough_capacity_s, Some(15.0));
        assert_eq!(out.metrics.scale_events, 1);
        // Short of capacity for 15 s; the backlog built then (200 rps short) never drains, since
        // 3 pods serve exactly the 300 rps offered: not overloaded, but slow to the end.
        assert!(
            (out.metrics.overloaded_s - 15.0).abs() < 1e-6,
            "{}",
            out.metrics.overloaded_s
        );
        assert!(out.metrics.over_objective > 0.4);
        assert!(out.series[29].backlog > 0.0);
    }

    #[test]
    fn a_decision_right_after_an_event_between_steps_is_the_first_scale_up() {
        let trace = vec![50.0; 30];
        // The event at 10.01 s; the step from 10.0 s decides at 10.1 s.
        let mut fixed = Fixed {
            schedule: vec![(10_100, 3), (11_100, 5)],
            current: 1,
        };
        let out = simulate(&trace, 10.01, &config(1), &mut fixed);
        let first = out.metrics.first_scale_up_s;
        assert!(first.is_some_and(|s| (s - 0.09).abs() < 1e-9), "{first:?}");
    }

    #[test]
    fn requests_are_conserved_between_served_and_backlog() {
        let trace: Vec<f64> = (0..120)
            .map(|s| if s % 30 < 10 { 400.0 } else { 50.0 })
            .collect();
        let mut fixed = Fixed {
            schedule: vec![(20_000, 4), (70_000, 1)],
            current: 2,
        };
        let out = simulate(&trace, 0.0, &config(2), &mut fixed);
        let served: f64 = out.series.iter().map(|s| s.served_rps).sum();
        let last = out.series.last().map_or(0.0, |s| s.backlog);
        assert!((served + last - out.metrics.requests).abs() < 1e-6);
        assert_eq!(out.metrics.reversals, 1);
        assert_eq!(out.metrics.scale_events, 2);
    }

    #[test]
    fn no_ready_pod_puts_every_arrival_over_the_objective() {
        let trace = vec![10.0; 10];
        let mut fixed = Fixed {
            schedule: vec![],
            current: 0,
        };
        let out = simulate(&trace, 0.0, &config(0), &mut fixed);
        assert!((out.metrics.over_objective - 1.0).abs() < 1e-9);
        assert_eq!(out.metrics.enough_capacity_s, None);
    }

    #[test]
    fn full_queues_refuse_the_excess() {
        // 1 pod (100 rps, 200 may wait) offered 300 rps for 10 s: the queue fills in 1 s, then
        // 200 rps are refused.
        let trace = vec![300.0; 10];
        let mut fixed = Fixed {
            schedule: vec![],
            current: 1,
        };
        let config = SimConfig {
            pod: PodModel::default(),
            ..config(1)
        };
        let out = simulate(&trace, 0.0, &config, &mut fixed);
        let refused = out.metrics.refused * out.metrics.requests;
        assert!((refused - 200.0 * 9.0).abs() < 1e-6, "{refused}");
        assert!(out.series.iter().all(|s| s.backlog <= 200.0 + 1e-9));
        assert!(out.metrics.over_objective >= out.metrics.refused);
    }

    #[test]
    fn share_over_follows_the_linear_backlog() {
        // Backlog grows from 0 at 100/s against a threshold of 5: crosses at 0.05 s of 0.1 s.
        assert!((share_over(0.0, 200.0, 100.0, 5.0, 0.1) - 0.5).abs() < 1e-9);
        // Draining from 10 at 100/s below a threshold of 5: over until 0.05 s.
        assert!((share_over(10.0, 100.0, 200.0, 5.0, 0.1) - 0.5).abs() < 1e-9);
        assert_eq!(share_over(0.0, 50.0, 100.0, 5.0, 0.1), 0.0);
        assert_eq!(share_over(6.0, 100.0, 100.0, 5.0, 0.1), 1.0);
    }
}
