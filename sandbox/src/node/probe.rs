//! A container's httpGet probes as a kubelet runs them: when each is due and what its results
//! add up to. Pure; the node makes the HTTP calls.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Probe as ProbeSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// One httpGet probe of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Request path.
    pub path: String,
    /// Container port.
    pub port: u16,
    /// `initialDelaySeconds`.
    pub initial_delay: Duration,
    /// `periodSeconds`.
    pub period: Duration,
    /// `timeoutSeconds`.
    pub timeout: Duration,
    /// `failureThreshold`.
    pub failure_threshold: u32,
    /// `successThreshold`.
    pub success_threshold: u32,
}

impl Probe {
    /// The probe `spec` of `container`, with Kubernetes' defaults; `Err` names what this node
    /// cannot run (only httpGet probes, on a port given by number or by a container port's name).
    pub fn from_spec(container: &Container, spec: &ProbeSpec) -> Result<Self, String> {
        let get = spec
            .http_get
            .as_ref()
            .ok_or("only httpGet probes are run on this node")?;
        let port = match &get.port {
            IntOrString::Int(port) => u16::try_from(*port).map_err(|_| format!("port {port}"))?,
            IntOrString::String(name) => container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .ok_or_else(|| format!("no container port named {name}"))?,
        };
        let seconds = |v: Option<i32>, default: u64| {
            Duration::from_secs(v.and_then(|v| u64::try_from(v).ok()).unwrap_or(default))
        };
        let count =
            |v: Option<i32>, default: u32| v.and_then(|v| u32::try_from(v).ok()).unwrap_or(default);
        Ok(Self {
            path: get.path.clone().unwrap_or_else(|| "/".into()),
            port,
            initial_delay: seconds(spec.initial_delay_seconds, 0),
            period: seconds(spec.period_seconds, 10).max(Duration::from_secs(1)),
            timeout: seconds(spec.timeout_seconds, 1).max(Duration::from_secs(1)),
            failure_threshold: count(spec.failure_threshold, 3).max(1),
            success_threshold: count(spec.success_threshold, 1).max(1),
        })
    }
}

/// The running state of one probe of one container (since its start).
#[derive(Debug, Clone)]
pub struct ProbeTracker {
    probe: Probe,
    started: Instant,
    next: Instant,
    successes: u32,
    failures: u32,
    /// The probe's verdict: `None` before it decided anything.
    verdict: Option<bool>,
}

impl ProbeTracker {
    /// A tracker for a container started at `started`.
    pub fn new(probe: Probe, started: Instant) -> Self {
        Self {
            next: started + probe.initial_delay,
            probe,
            started,
            successes: 0,
            failures: 0,
            verdict: None,
        }
    }

    /// The probe.
    pub fn probe(&self) -> &Probe {
        &self.probe
    }

    /// True when a probe should run at `now`.
    pub fn due(&self, now: Instant) -> bool {
        now >= self.next
    }

    /// Runs the next probe at once (the kubelet probes readiness as soon as the startup probe
    /// has passed, rather than a period later).
    pub fn run_now(&mut self, now: Instant) {
        self.next = now.max(self.started + self.probe.initial_delay);
    }

    /// Marks a probe as sent at `now`: the next one is due a period later (a probe in flight
    /// is not sent twice).
    pub fn sent(&mut self, now: Instant) {
        self.next = now + self.probe.period;
    }

    /// Records a probe's result; returns the verdict when it changed.
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        if ok {
            self.failures = 0;
            self.successes += 1;
        } else {
            self.successes = 0;
            self.failures += 1;
        }
        let verdict = if self.successes >= self.probe.success_threshold {
            Some(true)
        } else if self.failures >= self.probe.failure_threshold {
            Some(false)
        } else {
            self.verdict
        };
        let changed = verdict != self.verdict && verdict.is_some();
        self.verdict = verdict;
        changed.then_some(verdict).flatten()
    }

    /// The verdict so far.
    pub fn verdict(&self) -> Option<bool> {
        self.verdict
    }
}

/// One httpGet probe call: the status code, or `None` when nothing answered in `timeout`.
pub async fn http_get(addr: std::net::SocketAddr, path: &str, timeout: Duration) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let call = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.35\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
    };
    tokio::time::timeout(timeout, call).await.ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(success: u32, failure: u32) -> Probe {
        Probe {
            path: "/readyz".into(),
            port: 9090,
            initial_delay: Duration::from_secs(1),
            period: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            failure_threshold: failure,
            success_threshold: success,
        }
    }

    #[test]
    fn a_probe_waits_its_initial_delay_then_runs_every_period() {
        let t0 = Instant::now();
        let mut tracker = ProbeTracker::new(probe(1, 3), t0);
        assert!(!tracker.due(t0));
        assert!(tracker.due(t0 + Duration::from_secs(1)));
        tracker.sent(t0 + Duration::from_secs(1));
        assert!(!tracker.due(t0 + Duration::from_secs(5)));
        assert!(tracker.due(t0 + Duration::from_secs(6)));
        tracker.run_now(t0 + Duration::from_secs(2));
        assert!(tracker.due(t0 + Duration::from_secs(2)));
    }

    #[test]
    fn the_verdict_changes_only_at_the_thresholds() {
        let mut tracker = ProbeTracker::new(probe(2, 2), Instant::now());
        assert_eq!(tracker.record(true), None);
        assert_eq!(tracker.record(true), Some(true));
        assert_eq!(tracker.record(true), None);
        assert_eq!(tracker.record(false), None);
        assert_eq!(tracker.verdict(), Some(true));
        assert_eq!(tracker.record(false), Some(false));
        assert_eq!(tracker.record(false), None);
    }

    #[test]
    fn a_named_port_is_looked_up_and_defaults_apply() {
        let container: Container = serde_json::from_value(serde_json::json!({
            "name": "scaler",
            "ports": [{"name": "admin", "containerPort": 9090}],
        }))
        .unwrap();
        let spec: ProbeSpec = serde_json::from_value(serde_json::json!({
            "httpGet": {"path": "/healthz", "port": "admin"},
        }))
        .unwrap();
        let probe = Probe::from_spec(&container, &spec).unwrap();
        assert_eq!(probe.port, 9090);
        assert_eq!(probe.period, Duration::from_secs(10));
        assert_eq!(probe.failure_threshold, 3);
        let exec: ProbeSpec =
            serde_json::from_value(serde_json::json!({"exec": {"command": ["true"]}})).unwrap();
        assert!(
            Probe::from_spec(&container, &exec)
                .unwrap_err()
                .contains("httpGet")
        );
    }
}
