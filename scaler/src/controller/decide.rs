//! A loop's decision: the target's windows observed, the decision made (with the
//! scale-to-zero rules when the target has them on), recorded in the metrics and announced when
//! the data is stale.

use std::time::Instant;

use kube::runtime::events::EventType;

use super::status::metric_name;
use super::{ScaleView, TargetLoop};
use crate::decision::{self, Decision, Freshness, Input, Millis, Observation, Reason};

impl TargetLoop {
    /// Observes the target's windows and decides on `scale`; records the decision in the
    /// metrics and for the status.
    pub(super) fn decide(
        &mut self,
        scale: &ScaleView,
        now: Millis,
    ) -> (Decision, Observation, usize) {
        let started = Instant::now();
        let (observation, sources) = self.ctx.hub.observe(&self.key, now).unwrap_or((
            Observation {
                stable: 0.0,
                panic: 0.0,
                burst: None,
                freshness: Freshness::Stale,
            },
            0,
        ));
        let input = Input {
            current: scale.replicas,
            ready: scale.ready,
            observation,
        };
        let decision = match self.decide_zero(input, sources, now) {
            Some(decision) => decision,
            None => decision::decide(&self.policy, &mut self.state, &input, now),
        };
        self.ctx
            .metrics
            .decision_seconds(started.elapsed().as_secs_f64());
        tracing::debug!(
            target = %self.key,
            stable = observation.stable,
            panic = observation.panic,
            burst = ?observation.burst,
            freshness = ?observation.freshness,
            sources,
            current = scale.replicas,
            ready = scale.ready,
            desired = decision.desired,
            in_panic = decision.panic,
            "decided"
        );
        self.last_decision = Some(decision);
        self.ctx.metrics.target(
            &self.key,
            metric_name(self.scaler.spec.metric.type_),
            observation.stable,
            observation.panic,
            scale.replicas,
            decision.desired,
            decision.panic,
            sources,
        );
        (decision, observation, sources)
    }

    /// One MetricsStale Warning each time the data goes stale (not for a target at zero or
    /// coming back from it: no source reports for it by design, or none yet).
    pub(super) async fn announce_stale(&mut self, decision: &Decision) {
        if decision.reason != Reason::MetricsStale || self.zero_quiets_stale() {
            self.stale_announced = false;
            return;
        }
        if !self.stale_announced {
            self.stale_announced = true;
            self.publish(
                EventType::Warning,
                "MetricsStale",
                "Hold",
                format!(
                    "no fresh reports from any source; holding {} replicas",
                    decision.desired
                ),
            )
            .await;
        }
    }
}
