//! The scaling decision: pure functions of a [`Policy`], the metric [`Observation`], the target's
//! current scale and `now`. No clock, no Kubernetes, no async: the controller calls [`decide`]
//! and acts on the [`Decision`].
//!
//! ```text
//!  stable avg -> dspc = ceil(stable / target)   (kept at current within the tolerance)
//!  panic avg  -> dppc = ceil(panic / target)  \
//!  burst est. -> dbpc = ceil(burst / target)  -+-> fast = max(dppc, dbpc)
//!                (0 unless burst > (1 + burstTolerance) x current replicas' worth)
//!  panic:  max(panic, burst) / ready >= threshold  ->  enter (or stay); leave after a stable
//!          window below
//!  raw:    panicking ? max(current, dspc, fast, high-water)
//!          : restart guard ? max(current, dspc, dbpc) : max(dspc, dbpc)
//!  clamp [min, max] -> stabilization (HPA) -> rate policies (HPA) -> clamp [min, max]
//! ```
//!
//! Fail-static: with stale or no data the current scale is held (clamped into the bounds), and a
//! freshly started scaler holds at least the current scale for a stable window (the restart
//! guard), so the history it lost cannot cause a scale-down.

use std::collections::VecDeque;

use crate::crd::{PolicyType, ScalingRules, SelectPolicy, SurgeScalerSpec};

/// Milliseconds on a monotonic clock chosen by the caller.
pub type Millis = u64;

/// The scaling rules of one target, with durations in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Lowest replica count.
    pub min: i32,
    /// Highest replica count.
    pub max: i32,
    /// Metric value one replica should carry.
    pub target: f64,
    /// Relative band around the current scale in which the stable recommendation keeps it.
    pub tolerance: f64,
    /// Relative rise above the current replicas' worth of the target that a burst estimate must
    /// ask for before it counts for a recommendation, in panic or not.
    pub burst_tolerance: f64,
    /// `fast / ready` ratio that starts panic.
    pub panic_threshold: f64,
    /// Stable window; also how long the load must stay below the threshold to leave panic.
    pub stable_window_ms: Millis,
    /// Scale-up stabilization and rate limits.
    pub scale_up: Rules,
    /// Scale-down stabilization and rate limits.
    pub scale_down: Rules,
}

/// Stabilization and rate limits for one direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// Stabilization window.
    pub stabilization_ms: Millis,
    /// How the policies combine.
    pub select: SelectPolicy,
    /// Rate limits; empty means unlimited.
    pub policies: Vec<RatePolicy>,
}

/// At most `value` pods (or percent) per `period_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RatePolicy {
    /// Pods or percent.
    pub kind: PolicyType,
    /// The amount.
    pub value: i32,
    /// The period.
    pub period_ms: Millis,
}

impl Rules {
    fn from_spec(rules: &ScalingRules) -> Self {
        Self {
            stabilization_ms: u64::from(rules.stabilization_window_seconds) * 1000,
            select: rules.select_policy,
            policies: rules
                .policies
                .iter()
                .map(|p| RatePolicy {
                    kind: p.type_,
                    value: p.value,
                    period_ms: u64::from(p.period_seconds) * 1000,
                })
                .collect(),
        }
    }
}

impl Policy {
    /// The policy a SurgeScaler spec describes. Out-of-range values that the CRD schema would
    /// refuse are made safe here too (max at least min, target positive), so a resource applied
    /// without schema validation cannot make the arithmetic misbehave.
    ///
    /// `min` is at least 1: these rules never take a target to zero. Only the idle rule of
    /// [`crate::zero`] does, for a spec with `minReplicas: 0` and `scaleToZero`, so a stable
    /// average that reads zero (or a `minReplicas: 0` without `scaleToZero`) cannot.
    pub fn from_spec(spec: &SurgeScalerSpec) -> Self {
        let min = spec.min_replicas.max(1);
        Self {
            min,
            max: spec.max_replicas.max(min),
            target: if spec.metric.target > 0.0 {
                spec.metric.target
            } else {
                1.0
            },
            tolerance: spec.tolerance.clamp(0.0, 1.0),
            burst_tolerance: spec.burst_tolerance.clamp(0.0, 1.0),
            panic_threshold: spec.panic_threshold.max(1.0),
            stable_window_ms: u64::from(spec.windows.stable_seconds.max(1)) * 1000,
            scale_up: Rules::from_spec(&spec.behavior.scale_up),
            scale_down: Rules::from_spec(&spec.behavior.scale_down),
        }
    }
}

/// How trustworthy the metric is right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Every known source reported recently.
    Fresh,
    /// Some sources are late (not yet expired): their share is missing, so no scale-down.
    Incomplete,
    /// No source has fresh data (none yet, or all expired): hold the scale.
    Stale,
}

/// Metric values over the target's sources, in the metric's unit (rps or concurrency).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// Stable-window average.
    pub stable: f64,
    /// Panic-window average.
    pub panic: f64,
    /// Burst estimate: the target's arrival rate now, from its sources' latest reports; `None`
    /// unless it stands clear of noise above the stable average.
    pub burst: Option<f64>,
    /// Whether the values can be trusted.
    pub freshness: Freshness,
}

/// What the decision needs to know about the target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Input {
    /// `spec.replicas` of the target's scale.
    pub current: i32,
    /// Replicas that exist (`status.replicas` of the scale); panic compares against these.
    pub ready: i32,
    /// The metric.
    pub observation: Observation,
}

/// Why the decision came out as it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Stale or missing data: the scale is held.
    MetricsStale,
    /// The metric asks for more replicas.
    ScaleUp,
    /// The metric asks for fewer replicas.
    ScaleDown,
    /// The metric asks for the current count (or is within the tolerance).
    Steady,
    /// The target's sources reported no requests for the idle period: to zero
    /// ([`crate::zero`]).
    ScaleToZero,
    /// Up from zero, or above the metric's count while cold: requests are held for the target,
    /// or arrive at it while it has no replica ([`crate::zero`]).
    ScaleFromZero,
}

/// What limited the recommendation, if anything (as the HPA's `ScalingLimited` reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Clamped to `maxReplicas`.
    TooManyReplicas,
    /// Clamped to `minReplicas`.
    TooFewReplicas,
    /// Held back by a scale-up rate policy or `Disabled`.
    ScaleUpLimit,
    /// Held back by a scale-down rate policy or `Disabled`.
    ScaleDownLimit,
}

/// The outcome of one decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The replica count to set.
    pub desired: i32,
    /// Why.
    pub reason: Reason,
    /// Whether panic mode is on after this decision.
    pub panic: bool,
    /// What limited the recommendation.
    pub limit: Option<Limit>,
}

/// Memory a target's decisions carry from one call to the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionState {
    panic_since: Option<Millis>,
    last_panic_trigger: Millis,
    panic_high_water: i32,
    /// When these decisions began (a restart, a takeover, a new resource): for a stable window
    /// from then nothing scales down, since the history that could justify it was lost. Unlike
    /// panic it does not scale up on the 6 s panic average, which a steady noisy load passes.
    guard_since: Millis,
    /// (last seen, recommendation), consecutive repeats merged.
    recommendations: VecDeque<(Millis, i32)>,
    scale_events: VecDeque<(Millis, i32)>,
}

/// Bounds the history a state keeps, whatever the windows say.
const MAX_HISTORY: usize = 4096;

impl DecisionState {
    /// The state of a target the scaler has just started tracking (process start, takeover,
    /// new resource): guarded since `now`, so nothing scales down before a full stable window
    /// of fresh data.
    pub fn after_restart(now: Millis) -> Self {
        Self {
            panic_since: None,
            last_panic_trigger: now,
            panic_high_water: 0,
            guard_since: now,
            recommendations: VecDeque::new(),
            scale_events: VecDeque::new(),
        }
    }

    /// Whether panic mode is on.
    pub fn panicking(&self) -> bool {
        self.panic_since.is_some()
    }

    /// Records `replicas` as a recommendation made at `now`, as if the metric had asked for it:
    /// the scale-down stabilization then keeps a count decided outside these rules (the
    /// activation of a cold target) for its window, instead of undoing it at the next decision.
    pub fn recommend(&mut self, now: Millis, replicas: i32) {
        match self.recommendations.back_mut() {
            Some((seen, value)) if *value == replicas => *seen = now,
            _ => self.recommendations.push_back((now, replicas)),
        }
        if self.recommendations.len() > MAX_HISTORY {
            self.recommendations.pop_front();
        }
    }

    /// Records that the target's replicas were changed from `from` to `to` at `now`; the rate
    /// policies count these changes.
    pub fn record_scale(&mut self, now: Millis, from: i32, to: i32) {
        if from != to {
            self.scale_events.push_back((now, to - from));
            if self.scale_events.len() > MAX_HISTORY {
                self.scale_events.pop_front();
            }
        }
    }
}

/// Relative slack below which a value counts as a whole number of targets.
const ROUNDING: f64 = 1e-9;

fn ceil_replicas(value: f64, target: f64) -> i32 {
    // A load of exactly N targets' worth needs N replicas: averages are sums over spans, so
    // one that is exact on paper can come out a rounding error above it, which `ceil` alone
    // would turn into a replica more.
    let replicas = (value.max(0.0) / target - ROUNDING).ceil();
    if replicas.is_finite() {
        // `as` saturates for floats out of range, which is what a replica count needs.
        replicas as i32
    } else {
        i32::MAX
    }
}

/// Decides the replica count for one target. `state` carries panic mode and the histories of
/// recommendations and scale events between calls.
pub fn decide(policy: &Policy, state: &mut DecisionState, input: &Input, now: Millis) -> Decision {
    let current = input.current.max(0);
    let obs = &input.observation;

    if obs.freshness == Freshness::Stale {
        let desired = current.clamp(policy.min, policy.max);
        return Decision {
            desired,
            reason: Reason::MetricsStale,
            panic: state.panicking(),
            limit: bound_limit(current, policy),
        };
    }

    // Stable recommendation, kept at the current scale within the tolerance (HPA-style).
    let mut dspc = ceil_replicas(obs.stable, policy.target);
    if current > 0 {
        let usage = obs.stable / policy.target / f64::from(current);
        // The epsilon keeps a ratio of exactly 1 + tolerance inside despite rounding.
        if (usage - 1.0).abs() <= policy.tolerance + 1e-9 {
            dspc = current;
        }
    }
    // A burst acts on its own only when it is large enough to matter before the stable window
    // could follow it: a rise of a few percent leaves the pods well inside their capacity,
    // while a replica added for it is kept for the whole scale-down window. Noisy load (one
    // second 20 % above the minute's average) would otherwise buy a replica per peak. The bar
    // holds in panic too, where the panic window's average still follows a rise that lasts.
    let acting_burst = obs.burst.filter(|&b| {
        current == 0 || b / policy.target / f64::from(current) > 1.0 + policy.burst_tolerance + 1e-9
    });
    let dbpc = acting_burst.map_or(0, |b| ceil_replicas(b, policy.target));
    let fast_value = obs.panic.max(acting_burst.unwrap_or(0.0));
    let mut fast = ceil_replicas(fast_value, policy.target);
    if current > 0 {
        let usage = fast_value / policy.target / f64::from(current);
        if (usage - 1.0).abs() <= policy.tolerance + 1e-9 {
            fast = current;
        }
    }

    // Panic mode (Knative): enter when the fast estimate asks for `threshold` times the pods
    // there are; leave only after a whole stable window without that. Unlike Knative the ratio
    // is taken before rounding up, so one pod at 1.01x its target is not "twice" its capacity.
    // The trigger takes the whole burst estimate: while the pods of a scale-up start, the
    // burst that asked for them stands far above the ready ones, and panic keeps them.
    let trigger = obs.panic.max(obs.burst.unwrap_or(0.0));
    let ready = input.ready.max(1);
    if trigger / policy.target / f64::from(ready) >= policy.panic_threshold {
        if state.panic_since.is_none() {
            state.panic_since = Some(now);
            state.panic_high_water = 0;
        }
        state.last_panic_trigger = now;
    } else if state.panic_since.is_some()
        && now.saturating_sub(state.last_panic_trigger) >= policy.stable_window_ms
    {
        state.panic_since = None;
        state.panic_high_water = 0;
    }
    let guarded = now.saturating_sub(state.guard_since) < policy.stable_window_ms;

    let raw = if state.panicking() {
        let raw = current.max(dspc).max(fast).max(state.panic_high_water);
        state.panic_high_water = raw;
        raw
    } else if guarded {
        // Recorded as the recommendation, the current scale is also kept by the scale-down
        // stabilization after the guard ends, as if this scaler had decided it.
        current.max(dspc).max(dbpc)
    } else {
        dspc.max(dbpc)
    };
    let mut limit = None;
    let mut recommendation = raw;
    if recommendation > policy.max {
        recommendation = policy.max;
        limit = Some(Limit::TooManyReplicas);
    } else if recommendation < policy.min {
        recommendation = policy.min;
        limit = Some(Limit::TooFewReplicas);
    }

    // Stabilization (HPA): the lowest recommendation of the scale-up window and the highest of
    // the scale-down window bound the result. Repeats of one value are kept as one entry
    // stamped with when it was last seen, which answers "seen within the window" exactly and
    // keeps the history short however often decisions run.
    state.recommend(now, recommendation);
    let keep = policy
        .scale_up
        .stabilization_ms
        .max(policy.scale_down.stabilization_ms);
    while state
        .recommendations
        .front()
        .is_some_and(|&(t, _)| now.saturating_sub(t) > keep)
        || state.recommendations.len() > MAX_HISTORY
    {
        state.recommendations.pop_front();
    }
    // A window of N ms holds what was recommended less than N ms ago: a window of 0 (the
    // scale-up default) holds nothing. With "at most N ms ago" it held the recommendations of
    // this same millisecond, and a calm report decided in the millisecond of a surge report
    // held the surge's scale-up back until the next tick, a second later (seen about once in
    // 800 surges in `bench_surge_report_to_scale_patch`).
    let mut up = recommendation;
    let mut down = recommendation;
    for &(t, r) in &state.recommendations {
        let age = now.saturating_sub(t);
        if age < policy.scale_up.stabilization_ms {
            up = up.min(r);
        }
        if age < policy.scale_down.stabilization_ms {
            down = down.max(r);
        }
    }
    let mut stabilized = current;
    if stabilized < up {
        stabilized = up;
    }
    if stabilized > down {
        stabilized = down;
    }
    if obs.freshness == Freshness::Incomplete || state.panicking() || guarded {
        stabilized = stabilized.max(current);
    }

    // Rate policies (HPA).
    let mut desired = stabilized;
    if stabilized > current {
        let cap = scale_up_limit(policy, state, current, now);
        if desired > cap {
            desired = cap;
            limit = Some(Limit::ScaleUpLimit);
        }
    } else if stabilized < current {
        let floor = scale_down_limit(policy, state, current, now);
        if desired < floor {
            desired = floor;
            limit = Some(Limit::ScaleDownLimit);
        }
    }
    // The bounds win over everything: a target outside them is brought inside at once.
    if desired > policy.max {
        desired = policy.max;
        limit = Some(Limit::TooManyReplicas);
    } else if desired < policy.min {
        desired = policy.min;
        limit = Some(Limit::TooFewReplicas);
    }

    let reason = match desired.cmp(&current) {
        std::cmp::Ordering::Greater => Reason::ScaleUp,
        std::cmp::Ordering::Less => Reason::ScaleDown,
        std::cmp::Ordering::Equal => Reason::Steady,
    };
    Decision {
        desired,
        reason,
        panic: state.panicking(),
        limit,
    }
}

fn bound_limit(current: i32, policy: &Policy) -> Option<Limit> {
    if current > policy.max {
        Some(Limit::TooManyReplicas)
    } else if current < policy.min {
        Some(Limit::TooFewReplicas)
    } else {
        None
    }
}

/// Replicas added and removed by the scale events of the last `period_ms`.
fn changes_in_period(state: &DecisionState, period_ms: Millis, now: Millis) -> (i32, i32) {
    state
        .scale_events
        .iter()
        .filter(|&&(t, _)| now.saturating_sub(t) < period_ms)
        .fold((0i32, 0i32), |(added, removed), &(_, delta)| {
            if delta > 0 {
                (added.saturating_add(delta), removed)
            } else {
                (added, removed.saturating_add(-delta))
            }
        })
}

fn scale_up_limit(policy: &Policy, state: &DecisionState, current: i32, now: Millis) -> i32 {
    let rules = &policy.scale_up;
    if rules.select == SelectPolicy::Disabled {
        return current;
    }
    if rules.policies.is_empty() {
        return i32::MAX;
    }
    let limits = rules.policies.iter().map(|p| {
        let (added, removed) = changes_in_period(state, p.period_ms, now);
        let start = current.saturating_sub(added).saturating_add(removed).max(0);
        let cap = match p.kind {
            PolicyType::Pods => i64::from(start) + i64::from(p.value),
            PolicyType::Percent => {
                (f64::from(start) * (1.0 + f64::from(p.value) / 100.0)).ceil() as i64
            }
        };
        // From zero a percentage allows nothing; one pod is the least a scale-up can mean.
        cap.max(1).min(i64::from(i32::MAX)) as i32
    });
    match rules.select {
        SelectPolicy::Min => limits.min().unwrap_or(current),
        _ => limits.max().unwrap_or(current),
    }
}

fn scale_down_limit(policy: &Policy, state: &DecisionState, current: i32, now: Millis) -> i32 {
    let rules = &policy.scale_down;
    if rules.select == SelectPolicy::Disabled {
        return current;
    }
    if rules.policies.is_empty() {
        return 0;
    }
    let limits = rules.policies.iter().map(|p| {
        let (added, removed) = changes_in_period(state, p.period_ms, now);
        let start = current.saturating_add(removed).saturating_sub(added).max(0);
        match p.kind {
            PolicyType::Pods => start.saturating_sub(p.value).max(0),
            PolicyType::Percent => {
                (f64::from(start) * (1.0 - f64::from(p.value) / 100.0)).max(0.0) as i32
            }
        }
    });
    // `Max` selects the policy allowing the largest change, i.e. the lowest floor.
    match rules.select {
        SelectPolicy::Min => limits.max().unwrap_or(current),
        _ => limits.min().unwrap_or(current),
    }
}

#[cfg(test)]
mod tests;
