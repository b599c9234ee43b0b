//! A loop's scale to zero: the decision with the idle clock and the held demand
//! ([`crate::zero`]), the Service's ports when the spec gives none, the replicas the cold list
//! is made of, and what the status, conditions and Events say about it.
//!
//! ```text
//!  step: Service ports (spec port, else GET the Service every 30 s)  --> hub: destination
//!        hub.zero_view (held, quiet since, ready endpoints) --> zero::decide (idle clock)
//!        PATCH 0 (ScaledToZero) / PATCH N from 0 (ScaledFromZero) --> hub: replicas --> cold
//!  EndpointSlices (endpoints.rs) --> hub: ready endpoints (after the warm delay) --> cold
//! ```

use std::time::Instant;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::events::EventType;

use super::{CONFLICT_RECHECK, TargetLoop};
use crate::crd::{ScaleToZero, ScaleToZeroStatus, SurgeScalerSpec, SurgeScalerStatus};
use crate::decision::{Decision, Input, Millis, Reason};
use crate::hub::{Destination, ZeroView};
use crate::metrics::Operation;
use crate::zero::{self, Evidence, IdleClock, Temperature, ZeroInput, ZeroPolicy};

/// The scale to zero of `spec`, when it is on: `minReplicas: 0` and `scaleToZero` (the CRD
/// refuses either alone; without validation, either alone leaves it off).
pub(super) fn scale_to_zero(spec: &SurgeScalerSpec) -> Option<&ScaleToZero> {
    spec.scale_to_zero
        .as_ref()
        .filter(|_| spec.min_replicas == 0)
}

/// The destination the hub lists for a target of `namespace` with `spec`.
pub(super) fn destination(namespace: &str, spec: &SurgeScalerSpec) -> Option<Destination> {
    scale_to_zero(spec).map(|z| Destination::from_spec(namespace, z))
}

/// What a loop keeps for its target's scale to zero.
pub(super) struct ZeroLoop {
    settings: ScaleToZero,
    policy: ZeroPolicy,
    /// Starts from zero with the loop: lost history never counts as idle time.
    clock: IdleClock,
    /// The last view of the hub, and the temperature after the step's write.
    view: Option<ZeroView>,
    temperature: Option<Temperature>,
    /// Why the last decision of this module was made (for the Event and the condition).
    why: Option<String>,
    /// When the Service's ports were last read (only without a port in the spec).
    ports_read_at: Option<Instant>,
    /// The Service is missing (announced once).
    service_missing: bool,
    last_scale_to_zero_time: Option<Time>,
    last_activation_time: Option<Time>,
}

impl ZeroLoop {
    /// The state for `spec` (`None` without scale to zero); the times come from `status`.
    pub(super) fn new(spec: &SurgeScalerSpec, status: Option<&SurgeScalerStatus>) -> Option<Self> {
        let settings = scale_to_zero(spec)?;
        let previous = status.and_then(|s| s.scale_to_zero.as_ref());
        Some(Self {
            settings: settings.clone(),
            policy: policy(settings),
            clock: IdleClock::restarted(),
            view: None,
            temperature: None,
            why: None,
            ports_read_at: None,
            service_missing: false,
            last_scale_to_zero_time: previous.and_then(|p| p.last_scale_to_zero_time.clone()),
            last_activation_time: previous.and_then(|p| p.last_activation_time.clone()),
        })
    }

    /// Follows a spec change: the settings change, the clock and the times stay.
    pub(super) fn update(current: Option<Self>, spec: &SurgeScalerSpec) -> Option<Self> {
        let settings = scale_to_zero(spec)?;
        match current {
            Some(mut zero) => {
                if zero.settings.service != settings.service || zero.settings.port != settings.port
                {
                    // Another Service or port: read its ports at the next step.
                    zero.ports_read_at = None;
                    zero.service_missing = false;
                }
                zero.policy = policy(settings);
                zero.settings = settings.clone();
                Some(zero)
            }
            None => Self::new(spec, None),
        }
    }
}

fn policy(settings: &ScaleToZero) -> ZeroPolicy {
    ZeroPolicy {
        idle_ms: u64::from(settings.idle_seconds) * 1000,
    }
}

fn plural(count: u64, one: &str, many: &str) -> String {
    format!("{count} {}", if count == 1 { one } else { many })
}

impl TargetLoop {
    /// Decides with the scale-to-zero rules (the target has them on); the reason for a move of
    /// those rules is kept for the Event.
    pub(super) fn decide_zero(
        &mut self,
        input: Input,
        sources: usize,
        now: Millis,
    ) -> Option<Decision> {
        let zero = self.zero.as_mut()?;
        let view = self.ctx.hub.zero_view(&self.key, now)?;
        let zero_input = ZeroInput {
            input,
            evidence: Evidence {
                freshness: input.observation.freshness,
                sources,
                quiet_since: view.quiet_since,
                held: view.held,
                holders: view.holders,
            },
            can_go_cold: view.named && view.ready_endpoints.is_some(),
        };
        let outcome = zero::decide(
            &self.policy,
            &zero.policy,
            &mut self.state,
            &mut zero.clock,
            &zero_input,
            now,
        );
        let decision = outcome.decision;
        zero.why = match decision.reason {
            Reason::ScaleToZero => Some(format!(
                "no requests reported by {} for {} s",
                plural(sources as u64, "source", "sources"),
                outcome.idle_ms.unwrap_or_default() / 1000
            )),
            Reason::ScaleFromZero if view.held > 0 => Some(format!(
                "{} held by {} for the cold destination",
                plural(view.held, "request", "requests"),
                plural(view.holders as u64, "proxy", "proxies")
            )),
            Reason::ScaleFromZero => Some("requests reported arriving at zero replicas".into()),
            _ => None,
        };
        if let Some(idle) = outcome.idle_ms
            && idle >= zero.policy.idle_ms
            && !zero_input.can_go_cold
        {
            tracing::debug!(target = %self.key, named = view.named, endpoints = ?view.ready_endpoints,
                "idle, but the destination cannot be named or watched yet: not going to zero");
        }
        self.ctx.metrics.held(&self.key, view.held);
        zero.view = Some(view);
        Some(decision)
    }

    /// The reason text of a scale-to-zero move, for its Event (`None`: the usual reason).
    pub(super) fn zero_why(&self, decision: &Decision) -> Option<String> {
        match decision.reason {
            Reason::ScaleToZero | Reason::ScaleFromZero => self.zero.as_ref()?.why.clone(),
            _ => None,
        }
    }

    /// A write from `from` to `to` replicas landed: counts and times a move to or from zero;
    /// the Event reason for it (`SuccessfulRescale` for other moves).
    pub(super) fn zero_written(&mut self, from: i32, to: i32) -> &'static str {
        let Some(zero) = self.zero.as_mut() else {
            return "SuccessfulRescale";
        };
        let now = Some(Time(Timestamp::now()));
        if to == 0 && from > 0 {
            zero.clock.reset();
            zero.last_scale_to_zero_time = now;
            self.ctx.metrics.zero_transition(&self.key, false);
            "ScaledToZero"
        } else if from == 0 && to > 0 {
            zero.last_activation_time = now;
            self.ctx.metrics.zero_transition(&self.key, true);
            "ScaledFromZero"
        } else {
            "SuccessfulRescale"
        }
    }

    /// Tells the hub the target's replicas (the cold list follows them), and keeps the
    /// temperature for the status.
    pub(super) fn publish_replicas(&mut self) {
        let Some(zero) = self.zero.as_mut() else {
            return;
        };
        let replicas = match (&self.scale, &self.target_missing) {
            (Some(scale), _) => Some(scale.replicas),
            (None, Some(_)) => None,
            // A failed read or write: the replicas last known stand.
            (None, None) => return,
        };
        self.ctx.hub.set_replicas(&self.key, replicas);
        zero.temperature = Some(zero::temperature(
            replicas,
            zero.view.and_then(|v| v.ready_endpoints),
        ));
        self.ctx.metrics.cold_targets(self.ctx.hub.cold_targets());
    }

    /// Whether the status should say the target is not active because it is at zero (a Cold
    /// target): with the message, or the one for a target being scaled up from zero.
    pub(super) fn zero_temperature(&self) -> Option<Temperature> {
        self.zero.as_ref()?.temperature
    }

    /// The `Active` and `MetricsStale` conditions of a target at zero or coming back from it:
    /// (status, reason, message) each; `None` when the usual ones apply.
    pub(super) fn zero_conditions(&self) -> Option<[(bool, &'static str, String); 2]> {
        let zero = self.zero.as_ref()?;
        match zero.temperature? {
            Temperature::Warm => None,
            Temperature::Cold => {
                let why = match (&zero.why, &zero.last_scale_to_zero_time) {
                    (Some(why), Some(_)) if why.starts_with("no requests") => {
                        format!("scaled to zero: {why}")
                    }
                    _ => "the target is at zero replicas".into(),
                };
                Some([
                    (
                        false,
                        "ScaledToZero",
                        format!(
                            "{why}; the proxies hold its requests, and the first one held scales \
                             it up"
                        ),
                    ),
                    (
                        false,
                        "ScaledToZero",
                        "at zero no sidecar of the target reports; the callers' proxies report \
                         the requests they hold for it"
                            .into(),
                    ),
                ])
            }
            Temperature::Activating => Some([
                (
                    true,
                    "ScalingFromZero",
                    "scaled up from zero; the destination stays cold (its requests held) until \
                     the Service has a ready endpoint"
                        .into(),
                ),
                (
                    false,
                    "ScalingFromZero",
                    "the target's pods are starting; their sidecars report once ready".into(),
                ),
            ]),
        }
    }

    /// The scale-to-zero part of the status (`None` without scale to zero).
    pub(super) fn zero_status(&self) -> Option<ScaleToZeroStatus> {
        let zero = self.zero.as_ref()?;
        Some(ScaleToZeroStatus {
            cold: zero.temperature.is_some_and(Temperature::listed),
            last_scale_to_zero_time: zero.last_scale_to_zero_time.clone(),
            last_activation_time: zero.last_activation_time.clone(),
        })
    }

    /// Restarts the idle clock: time this replica did not decide on never counts as idle.
    pub(super) fn restart_idle_clock(&mut self) {
        if let Some(zero) = self.zero.as_mut() {
            zero.clock = IdleClock::restarted();
        }
    }

    /// Starts the idle clock at `since`, as if the loop had seen quiet reports from then on.
    #[cfg(test)]
    pub(super) fn start_idle_clock_at(&mut self, since: Millis) {
        if let Some(zero) = self.zero.as_mut() {
            zero.clock = IdleClock::started_at(since);
        }
    }

    /// Whether the MetricsStale Warning is not for now: a target at zero has no source by
    /// design, and one coming back from zero none yet.
    pub(super) fn zero_quiets_stale(&self) -> bool {
        self.zero_temperature().is_some_and(Temperature::listed)
    }

    /// Reads the Service's ports when the spec names none (every 30 s, and at the first step);
    /// a missing Service leaves the destination unnamed (so never cold) with one Warning Event.
    pub(super) async fn refresh_destination(&mut self) {
        let Some(settings) = self.scaler.spec.scale_to_zero.clone() else {
            return;
        };
        let Some(zero) = self.zero.as_ref() else {
            return;
        };
        if settings.port.is_some()
            || zero
                .ports_read_at
                .is_some_and(|t| t.elapsed() < CONFLICT_RECHECK)
        {
            return;
        }
        let services: Api<Service> = Api::namespaced(self.ctx.client.clone(), &self.key.namespace);
        let read = self
            .ctx
            .call(Operation::get_service, services.get(&settings.service))
            .await;
        let (ports, missing) = match read {
            Ok(service) => (service_ports(&service), false),
            Err(error) if error.code() == Some(404) => (Vec::new(), true),
            Err(error) => {
                tracing::warn!(target = %self.key, %error, service = settings.service,
                    "could not read the Service; its ports stay as last read");
                return;
            }
        };
        self.ctx.hub.set_destination_ports(&self.key, ports);
        let announce = missing && self.zero.as_ref().is_some_and(|zero| !zero.service_missing);
        if let Some(zero) = self.zero.as_mut() {
            zero.ports_read_at = Some(Instant::now());
            zero.service_missing = missing;
        }
        if announce {
            self.publish(
                EventType::Warning,
                "ServiceNotFound",
                "ScaleToZero",
                format!(
                    "Service {} not found: its destination cannot be listed cold, so the target \
                     does not go to zero",
                    settings.service
                ),
            )
            .await;
        }
    }
}

/// The TCP ports of a Service (Istio names an outbound cluster per TCP port; a port without a
/// protocol is TCP).
fn service_ports(service: &Service) -> Vec<u16> {
    service
        .spec
        .iter()
        .flat_map(|spec| spec.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
        .filter_map(|p| u16::try_from(p.port).ok())
        .collect()
}
