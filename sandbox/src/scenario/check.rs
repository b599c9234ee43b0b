//! The rules of a scenario that serde cannot check: ranges and the rules between fields, each
//! failure naming the field.

use super::{Fault, Phase, Scenario, Via};

impl Scenario {
    /// Cross-field rules serde cannot see; answers the field's path and the reason.
    pub(super) fn check(&self) -> Result<(), (String, String)> {
        let fail = |field: &str, reason: String| Err((field.to_string(), reason));
        if self.load.is_empty() {
            return fail("load", "at least one phase is needed".into());
        }
        for (i, phase) in self.load.iter().enumerate() {
            match phase {
                Phase::Spike {
                    seconds,
                    peak_seconds,
                    ..
                } if peak_seconds.get() >= seconds.get() => {
                    return fail(
                        &format!("load[{i}].spike.peak_seconds"),
                        format!("must be less than seconds ({})", seconds.get()),
                    );
                }
                Phase::Trace { rps } if rps.is_empty() || rps.len() > 3600 => {
                    return fail(
                        &format!("load[{i}].trace.rps"),
                        format!("needs 1..=3600 values, got {}", rps.len()),
                    );
                }
                _ => {}
            }
        }
        let pods = &self.pods;
        if pods.concurrency == 0 || pods.concurrency > 1000 {
            return fail(
                "pods.concurrency",
                format!("must be within 1..=1000, got {}", pods.concurrency),
            );
        }
        if pods.service_time_ms == 0 || pods.service_time_ms > 60_000 {
            return fail(
                "pods.service_time_ms",
                format!("must be within 1..=60000, got {}", pods.service_time_ms),
            );
        }
        if pods.startup_delay_ms > 600_000 {
            return fail(
                "pods.startup_delay_ms",
                format!("must be at most 600000, got {}", pods.startup_delay_ms),
            );
        }
        if !(1..=16).contains(&pods.envoy_concurrency) {
            return fail(
                "pods.envoy_concurrency",
                format!("must be within 1..=16, got {}", pods.envoy_concurrency),
            );
        }
        let scaler = &self.scaler;
        if scaler.max_replicas == 0 || scaler.max_replicas > 20 {
            return fail(
                "scaler.max_replicas",
                format!(
                    "must be within 1..=20 (each replica is a real Envoy), got {}",
                    scaler.max_replicas
                ),
            );
        }
        if scaler.min_replicas > scaler.max_replicas {
            return fail(
                "scaler.min_replicas",
                format!(
                    "must be within 0..=max_replicas ({}), got {}",
                    scaler.max_replicas, scaler.min_replicas
                ),
            );
        }
        match (scaler.min_replicas, scaler.idle_s) {
            (0, None) => {
                return fail(
                    "scaler.min_replicas",
                    "0 needs scaler.idle_s (the idle time before the app goes to zero)".into(),
                );
            }
            (0, Some(idle)) if !(10..=86_400).contains(&idle) => {
                return fail(
                    "scaler.idle_s",
                    format!("must be within 10..=86400, got {idle}"),
                );
            }
            (0, Some(_)) if self.traffic.via == Via::Sidecars => {
                return fail(
                    "traffic.via",
                    "must be gateway or client with min_replicas 0: at zero no pod's sidecar \
                     receives the requests, a proxy in front of the app must hold them"
                        .into(),
                );
            }
            (1.., Some(_)) => {
                return fail(
                    "scaler.idle_s",
                    "only with min_replicas 0 (scale to zero)".into(),
                );
            }
            _ => {}
        }
        let hold = &self.traffic.hold;
        if !(1..=1000).contains(&hold.max_requests) {
            return fail(
                "traffic.hold.max_requests",
                format!("must be within 1..=1000, got {}", hold.max_requests),
            );
        }
        if !(100..=120_000).contains(&hold.timeout_ms) {
            return fail(
                "traffic.hold.timeout_ms",
                format!("must be within 100..=120000, got {}", hold.timeout_ms),
            );
        }
        if hold.retry_after_s > 3600 {
            return fail(
                "traffic.hold.retry_after_s",
                format!("must be at most 3600, got {}", hold.retry_after_s),
            );
        }
        if scaler.metric != "rps" && scaler.metric != "concurrency" {
            return fail(
                "scaler.metric",
                format!("must be `rps` or `concurrency`, got {:?}", scaler.metric),
            );
        }
        if !(scaler.target.is_finite() && scaler.target > 0.0) {
            return fail(
                "scaler.target",
                format!("must be a positive number, got {}", scaler.target),
            );
        }
        if let Some(w) = scaler.stable_window_s
            && !(6..=3600).contains(&w)
        {
            return fail(
                "scaler.stable_window_s",
                format!("must be within 6..=3600, got {w}"),
            );
        }
        if let Some(w) = scaler.scale_down_stabilization_s
            && w > 3600
        {
            return fail(
                "scaler.scale_down_stabilization_s",
                format!("must be at most 3600, got {w}"),
            );
        }
        if let Some(n) = scaler.replicas
            && !(1..=10).contains(&n)
        {
            return fail("scaler.replicas", format!("must be within 1..=10, got {n}"));
        }
        if self.slo_ms == 0 {
            return fail("slo_ms", "must be positive".into());
        }
        if !is_cpu_quantity(&self.pods.cpu) {
            return fail(
                "pods.cpu",
                format!(
                    "must be a CPU quantity such as 500m or 1, got {:?}",
                    self.pods.cpu
                ),
            );
        }
        if let Some(headroom) = &scaler.headroom {
            if self.nodes.is_none() {
                return fail(
                    "scaler.headroom",
                    "needs nodes: (Karpenter keeps the room through its CapacityBuffer)".into(),
                );
            }
            if !(60..=604_800).contains(&headroom.burst_window_s) {
                return fail(
                    "scaler.headroom.burst_window_s",
                    format!(
                        "must be within 60..=604800, got {}",
                        headroom.burst_window_s
                    ),
                );
            }
        }
        if let Some(nodes) = &self.nodes {
            if !is_cpu_quantity(&nodes.first_node_cpu) {
                return fail(
                    "nodes.first_node_cpu",
                    format!(
                        "must be a CPU quantity such as 2 or 1500m, got {:?}",
                        nodes.first_node_cpu
                    ),
                );
            }
            if nodes.boot_s > 600 {
                return fail(
                    "nodes.boot_s",
                    format!("must be at most 600, got {}", nodes.boot_s),
                );
            }
            if nodes.instance_type.is_empty() {
                return fail(
                    "nodes.instance_type",
                    "must name a kwok instance type".into(),
                );
            }
        }
        let total = self.load_seconds();
        for (i, fault) in self.faults.iter().enumerate() {
            let (kind, at_s, length_field, length) = match fault {
                Fault::KillScaler {
                    at_s,
                    restart_after_s,
                } => ("kill_scaler", at_s, "restart_after_s", restart_after_s),
                Fault::KillScalerOwner {
                    at_s,
                    restart_after_s,
                } => {
                    if scaler.replicas == Some(1) {
                        return fail(
                            &format!("faults[{i}].kill_scaler_owner"),
                            "needs scaler.replicas of 2 or more (one replica has no one to take \
                             over)"
                                .into(),
                        );
                    }
                    (
                        "kill_scaler_owner",
                        at_s,
                        "restart_after_s",
                        restart_after_s,
                    )
                }
                Fault::DropReports { at_s, for_s } => ("drop_reports", at_s, "for_s", for_s),
            };
            if !(at_s.is_finite() && *at_s >= 0.0 && *at_s < total) {
                return fail(
                    &format!("faults[{i}].{kind}.at_s"),
                    format!("must be within the load (0..{total} s), got {at_s}"),
                );
            }
            if !(length.is_finite() && *length >= 0.0) {
                return fail(
                    &format!("faults[{i}].{kind}.{length_field}"),
                    format!("must be a non-negative number, got {length}"),
                );
            }
        }
        Ok(())
    }
}

/// Whether `text` is a plain CPU quantity: whole or decimal cores (`2`, `0.5`) or millicores
/// (`500m`), positive.
fn is_cpu_quantity(text: &str) -> bool {
    let number = text.strip_suffix('m').unwrap_or(text);
    let whole_millis = text.ends_with('m') && number.bytes().all(|b| b.is_ascii_digit());
    let cores = !text.ends_with('m') && number.parse::<f64>().is_ok_and(f64::is_finite);
    !number.is_empty() && (whole_millis || cores) && number.parse::<f64>().is_ok_and(|v| v > 0.0)
}
