//! Scale to zero and back: pure rules, like [`crate::decision`] (no clock, no Kubernetes, no
//! async). The controller feeds them what the reports and the API said, and acts on the result.
//!
//! ```text
//!  idle clock   runs while fresh reports of every source say zero (nothing completed, in flight
//!               or arriving, nothing held); anything else restarts it, and so does a restart
//!  to zero      warm, idle for idleSeconds, the destination named and its endpoints watched -> 0
//!  held demand  H = sum over proxy instances of their latest held count for the destination
//!  from zero    N = clamp(ceil(H / target), 1, maxReplicas), at once (no window, no policy);
//!               requests reported arriving at zero replicas without a hold: N = 1
//!  cold         0 replicas, or replicas without a ready endpoint (as the proxies see it) -> the
//!               answer to every report lists the destination, and the proxies hold its requests
//! ```
//!
//! ```text
//!          idle for idleSeconds              held request (activation report)
//!   Warm ---------------------------> Cold --------------------------------> Activating
//!    ^                                                                           |
//!    '------- ready endpoint (after the warm delay: the proxies' EDS lags) ------'
//! ```

use crate::decision::Reason;
use crate::decision::{self, Decision, DecisionState, Freshness, Input, Limit, Millis, Policy};

/// What a target's reports say, as the idle clock and the activation need it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evidence {
    /// Freshness of the target's sources (as [`crate::decision::Observation::freshness`]).
    pub freshness: Freshness,
    /// Sources reporting for the target.
    pub sources: usize,
    /// Since when every report of every source said zero: no request completed, none in flight,
    /// none arriving in the proxy's window, none held. `None` while the latest report of some
    /// source (or some proxy's hold) says otherwise.
    pub quiet_since: Option<Millis>,
    /// Requests held for the target's destination now: the sum over proxy instances of the
    /// latest `held` count each reported.
    pub held: u64,
    /// Proxy instances holding them.
    pub holders: usize,
}

/// How long a target's reports have said zero, measured only while they are fresh.
///
/// It advances only while every source is fresh and says zero, and restarts on anything else: a
/// request, a source late or gone, no source at all. A new clock (a restarted scaler, a new
/// SurgeScaler) starts from zero: lost history never counts as idle time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IdleClock {
    since: Option<Millis>,
}

impl IdleClock {
    /// A clock that has measured nothing yet.
    pub fn restarted() -> Self {
        Self::default()
    }

    /// Advances the clock to `now` on `evidence`; how long the target has been idle, or `None`
    /// when it is not (the clock restarts).
    pub fn observe(&mut self, now: Millis, evidence: &Evidence) -> Option<Millis> {
        let quiet = match evidence.quiet_since {
            Some(quiet)
                if evidence.freshness == Freshness::Fresh
                    && evidence.sources > 0
                    && evidence.held == 0 =>
            {
                quiet
            }
            _ => {
                self.since = None;
                return None;
            }
        };
        // From the later of: when this clock last (re)started, and when the reports last turned
        // quiet. A request between two observations moved `quiet_since` past the start.
        let since = self.since.unwrap_or(now).max(quiet).min(now);
        self.since = Some(since);
        Some(now - since)
    }

    /// Forgets the idle time measured (the target went to zero, or came back).
    pub fn reset(&mut self) {
        self.since = None;
    }

    /// A clock that has run since `since` (tests: the controller's clock is the real one).
    #[cfg(test)]
    pub(crate) fn started_at(since: Millis) -> Self {
        Self { since: Some(since) }
    }
}

/// Replicas the held demand asks for: `ceil(held / target)`, at least 1 and at most `max`; 0
/// when nothing is held. The held requests are read as that many requests in flight at once
/// (which is what they become when they resume), for either metric: for `concurrency` that is
/// the metric itself, for `rps` it reads them as one second's arrivals. Whichever way it errs,
/// the target's own sidecars report the real load within a report interval of its first pod
/// starting, and the usual rules take over.
pub fn held_replicas(held: u64, target: f64, max: i32) -> (i32, Option<Limit>) {
    if held == 0 {
        return (0, None);
    }
    let target = if target > 0.0 { target } else { 1.0 };
    let max = max.max(1);
    let wanted = (held as f64 / target).ceil();
    if wanted > f64::from(max) {
        (max, Some(Limit::TooManyReplicas))
    } else {
        // `as` saturates, and `wanted` is within 1..=max here.
        ((wanted as i32).max(1), None)
    }
}

/// Whether the proxies are told a scale-to-zero target is cold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Temperature {
    /// Replicas with a ready endpoint (or not known to lack one): never held.
    Warm,
    /// Zero replicas: listed cold, its requests are held.
    Cold,
    /// Replicas, but no ready endpoint yet (the proxies would find none): still listed cold.
    Activating,
}

impl Temperature {
    /// Whether the answer lists the target's destination as cold.
    pub fn listed(self) -> bool {
        self != Self::Warm
    }
}

/// The temperature from the target's replicas (`spec.replicas` of its scale, `None` until read)
/// and its ready endpoints as the proxies likely see them (`None` until the EndpointSlices have
/// been listed). Unknown endpoints never make a target cold: the scaler would hold requests it
/// cannot release, where a proxy that sends them on at worst gets Envoy's own 503.
pub fn temperature(replicas: Option<i32>, ready_endpoints: Option<usize>) -> Temperature {
    match (replicas, ready_endpoints) {
        (Some(0), _) => Temperature::Cold,
        (_, Some(0)) => Temperature::Activating,
        _ => Temperature::Warm,
    }
}

/// [`temperature`], knowing whether a ready endpoint appeared after the replicas were last seen
/// at zero (`ready_since_zero`). Then the target was scaled up since, by another replica (the
/// one that owns it; this one reads the scale only every few seconds) or by hand, and it is
/// warm whatever the stale `replicas` says: without this, a replica that does not own the
/// target would keep listing it cold, and keep a holding proxy's answer parked, until its next
/// read of the scale.
pub fn temperature_seen(
    replicas: Option<i32>,
    ready_endpoints: Option<usize>,
    ready_since_zero: bool,
) -> Temperature {
    if ready_since_zero && ready_endpoints.is_some_and(|r| r > 0) {
        return Temperature::Warm;
    }
    temperature(replicas, ready_endpoints)
}

/// A Service's ready endpoints as the callers' proxies likely see them: a new ready endpoint
/// counts only `delay` after the EndpointSlice showed it (Istio's EDS reaches the proxies after
/// istiod's debounce and push), a lost one at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Readiness {
    ready: Option<usize>,
    /// When the ready count last went from zero (or unknown) to some.
    ready_since: Millis,
}

impl Readiness {
    /// Records the ready endpoints the EndpointSlices show at `now`.
    pub fn observe(&mut self, ready: usize, now: Millis) {
        if ready > 0 && self.ready.is_none_or(|before| before == 0) {
            self.ready_since = now;
        }
        self.ready = Some(ready);
    }

    /// The ready endpoints the proxies see at `now`: `None` before the first list, 0 until
    /// `delay` has passed since the first one turned ready.
    pub fn seen(&self, now: Millis, delay: Millis) -> Option<usize> {
        let ready = self.ready?;
        if ready > 0 && now < self.ready_since.saturating_add(delay) {
            Some(0)
        } else {
            Some(ready)
        }
    }

    /// When [`Readiness::seen`] changes next without a new observation, if it does.
    pub fn settles_at(&self, now: Millis, delay: Millis) -> Option<Millis> {
        let at = self.ready_since.saturating_add(delay);
        (self.ready.is_some_and(|r| r > 0) && now < at).then_some(at)
    }
}

/// The scale-to-zero settings of a target, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZeroPolicy {
    /// Reported idleness before going to zero.
    pub idle_ms: Millis,
}

/// What a scale-to-zero decision needs besides the usual [`Input`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ZeroInput {
    /// The target's scale and metric, as for [`decision::decide`].
    pub input: Input,
    /// What the reports say.
    pub evidence: Evidence,
    /// Whether the target may go to zero now: its destination can be named (so that the
    /// proxies can be told it is cold) and its endpoints are watched (so that they can be told
    /// when it is warm again).
    pub can_go_cold: bool,
}

/// A scale-to-zero decision and what it was made on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZeroDecision {
    /// The decision (reasons [`Reason::ScaleToZero`] and [`Reason::ScaleFromZero`] for the
    /// moves of this module).
    pub decision: Decision,
    /// How long the target has been idle (`None`: not idle).
    pub idle_ms: Option<Millis>,
    /// Replicas the held demand asks for (0: nothing held).
    pub held_replicas: i32,
}

/// Decides for a target with scale to zero. At zero it stays there unless requests are held
/// for it (then `N` from the held demand, at once) or reported arriving (then 1). Above zero the
/// usual rules decide, with `policy.min` (at least 1) as the floor, raised to the held demand
/// while requests are held, and replaced by 0 once the idle clock has run for the idle period.
pub fn decide(
    policy: &Policy,
    zero: &ZeroPolicy,
    state: &mut DecisionState,
    clock: &mut IdleClock,
    input: &ZeroInput,
    now: Millis,
) -> ZeroDecision {
    let current = input.input.current.max(0);
    let evidence = &input.evidence;
    let (held, held_limit) = held_replicas(evidence.held, policy.target, policy.max);

    if current == 0 {
        clock.reset();
        // A source reporting requests while there is no replica: a proxy that does not hold
        // (an older filter, a list it has not learned yet) sends them on and they fail.
        let arriving = evidence.sources > 0 && evidence.quiet_since.is_none();
        let desired = held.max(i32::from(arriving)).min(policy.max.max(1));
        if desired > 0 {
            state.recommend(now, desired);
        }
        return ZeroDecision {
            decision: Decision {
                desired,
                reason: if desired > 0 {
                    Reason::ScaleFromZero
                } else {
                    Reason::Steady
                },
                panic: state.panicking(),
                limit: if desired == held { held_limit } else { None },
            },
            idle_ms: None,
            held_replicas: held,
        };
    }

    let mut decision = decision::decide(policy, state, &input.input, now);
    if held > decision.desired {
        // Requests are held while the target is scaled up but not yet ready: it is sized for
        // them, and the stabilization keeps that size as if the metric had asked for it.
        state.recommend(now, held);
        decision.desired = held;
        decision.reason = if held > current {
            Reason::ScaleFromZero
        } else {
            Reason::Steady
        };
        decision.limit = held_limit;
    }
    let idle_ms = clock.observe(now, evidence);
    if input.can_go_cold && idle_ms.is_some_and(|idle| idle >= zero.idle_ms) {
        decision = Decision {
            desired: 0,
            reason: Reason::ScaleToZero,
            panic: false,
            limit: None,
        };
    }
    ZeroDecision {
        decision,
        idle_ms,
        held_replicas: held,
    }
}

#[cfg(test)]
mod tests;
