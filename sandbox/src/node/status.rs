//! A pod's `status` as a kubelet writes it, from what the node knows of its containers: pure, so
//! each shape is tested here rather than through an API server.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde_json::{Value, json};

/// One container's state on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    /// Not running: being created, or backing off (`reason` as a kubelet says it).
    Waiting {
        /// `ContainerCreating`, `CrashLoopBackOff`, `ErrImagePull`, `CreateContainerConfigError`.
        reason: &'static str,
        /// What went wrong, for `kubectl describe`.
        message: Option<String>,
    },
    /// Running since `started_at`; `ready` once its readiness (probe or start) says so.
    Running {
        /// RFC 3339.
        started_at: String,
        /// Ready to serve.
        ready: bool,
    },
    /// Exited (or killed).
    Terminated {
        /// Exit code (137 for SIGKILL).
        exit_code: i32,
        /// `Error`, `Completed`.
        reason: &'static str,
        /// RFC 3339.
        started_at: String,
        /// RFC 3339.
        finished_at: String,
    },
}

impl ContainerState {
    fn to_json(&self) -> Value {
        match self {
            Self::Waiting { reason, message } => {
                let mut waiting = json!({ "reason": reason });
                if let Some(message) = message {
                    waiting["message"] = json!(message);
                }
                json!({ "waiting": waiting })
            }
            Self::Running { started_at, .. } => json!({ "running": { "startedAt": started_at } }),
            Self::Terminated {
                exit_code,
                reason,
                started_at,
                finished_at,
            } => json!({ "terminated": {
                "exitCode": exit_code,
                "reason": reason,
                "startedAt": started_at,
                "finishedAt": finished_at,
            }}),
        }
    }

    fn ready(&self) -> bool {
        matches!(self, Self::Running { ready: true, .. })
    }
}

/// One container as the node reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerView {
    /// Container name.
    pub name: String,
    /// Its image, as the pod names it.
    pub image: String,
    /// Now.
    pub state: ContainerState,
    /// The state before the last restart.
    pub last_state: Option<ContainerState>,
    /// Restarts so far.
    pub restart_count: u32,
}

/// What the node knows of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    /// The pod's address.
    pub pod_ip: Ipv4Addr,
    /// The node's address.
    pub host_ip: Ipv4Addr,
    /// When the node accepted the pod (RFC 3339).
    pub start_time: String,
    /// Every container, in the pod's order.
    pub containers: Vec<ContainerView>,
}

impl PodView {
    /// Every container running and ready.
    pub fn ready(&self) -> bool {
        !self.containers.is_empty() && self.containers.iter().all(|c| c.state.ready())
    }

    /// `Pending` until every container has started once, then `Running` (restartPolicy Always:
    /// a container backing off after a crash keeps the pod `Running`).
    pub fn phase(&self) -> &'static str {
        let not_started = self
            .containers
            .iter()
            .any(|c| c.restart_count == 0 && matches!(c.state, ContainerState::Waiting { .. }));
        if not_started { "Pending" } else { "Running" }
    }
}

/// The last transition time of each condition, kept by the caller across writes, so that a
/// condition's `lastTransitionTime` moves only when its status does.
pub type Transitions = BTreeMap<&'static str, (bool, String)>;

/// The pod's `status` as the node reports it (written with a strategic merge patch: conditions
/// merge by type, container statuses by name). `PodScheduled` is the scheduler's to write.
pub fn status(view: &PodView, transitions: &mut Transitions, now: &str) -> Value {
    let ready = view.ready();
    let mut condition = |kind: &'static str, value: bool| {
        let entry = transitions
            .entry(kind)
            .or_insert_with(|| (value, now.to_owned()));
        if entry.0 != value {
            *entry = (value, now.to_owned());
        }
        json!({
            "type": kind,
            "status": if value { "True" } else { "False" },
            "lastTransitionTime": entry.1,
        })
    };
    let conditions = vec![
        condition("PodReadyToStartContainers", true),
        condition("Initialized", true),
        condition("Ready", ready),
        condition("ContainersReady", ready),
    ];
    let containers: Vec<Value> = view
        .containers
        .iter()
        .map(|c| {
            let mut entry = json!({
                "name": c.name,
                "image": c.image,
                "imageID": "",
                "containerID": format!("surge-sandbox://{}", c.name),
                "ready": c.state.ready(),
                "started": matches!(c.state, ContainerState::Running { .. }),
                "restartCount": c.restart_count,
                "state": c.state.to_json(),
            });
            if let Some(last) = &c.last_state {
                entry["lastState"] = last.to_json();
            }
            entry
        })
        .collect();
    json!({
        "phase": view.phase(),
        "conditions": conditions,
        "hostIP": view.host_ip.to_string(),
        "hostIPs": [{ "ip": view.host_ip.to_string() }],
        "podIP": view.pod_ip.to_string(),
        "podIPs": [{ "ip": view.pod_ip.to_string() }],
        "startTime": view.start_time,
        "containerStatuses": containers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(states: Vec<ContainerState>) -> PodView {
        PodView {
            pod_ip: Ipv4Addr::new(10, 244, 0, 2),
            host_ip: Ipv4Addr::new(10, 244, 0, 1),
            start_time: "2026-12-03T08:00:00Z".into(),
            containers: states
                .into_iter()
                .enumerate()
                .map(|(i, state)| ContainerView {
                    name: format!("c{i}"),
                    image: "example/image:1".into(),
                    state,
                    last_state: None,
                    restart_count: 0,
                })
                .collect(),
        }
    }

    fn running(ready: bool) -> ContainerState {
        ContainerState::Running {
            started_at: "2026-12-03T08:00:01Z".into(),
            ready,
        }
    }

    fn creating() -> ContainerState {
        ContainerState::Waiting {
            reason: "ContainerCreating",
            message: None,
        }
    }

    fn condition<'a>(status: &'a Value, kind: &str) -> &'a Value {
        status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == kind)
            .unwrap()
    }

    #[test]
    fn a_pod_is_pending_until_every_container_started_and_ready_when_all_are() {
        let mut transitions = Transitions::new();
        let starting = status(
            &view(vec![running(false), creating()]),
            &mut transitions,
            "t0",
        );
        assert_eq!(starting["phase"], "Pending");
        assert_eq!(condition(&starting, "Ready")["status"], "False");
        assert_eq!(starting["podIP"], "10.244.0.2");
        assert_eq!(
            starting["containerStatuses"][1]["state"]["waiting"]["reason"],
            "ContainerCreating"
        );

        let unready = status(
            &view(vec![running(false), running(true)]),
            &mut transitions,
            "t1",
        );
        assert_eq!(unready["phase"], "Running");
        assert_eq!(condition(&unready, "Ready")["status"], "False");

        let ready = status(
            &view(vec![running(true), running(true)]),
            &mut transitions,
            "t2",
        );
        assert_eq!(condition(&ready, "Ready")["status"], "True");
        assert_eq!(condition(&ready, "ContainersReady")["status"], "True");
        assert_eq!(ready["containerStatuses"][0]["started"], true);
    }

    #[test]
    fn a_conditions_transition_time_moves_only_when_its_status_changes() {
        let mut transitions = Transitions::new();
        let _ = status(&view(vec![running(false)]), &mut transitions, "t0");
        let still = status(&view(vec![running(false)]), &mut transitions, "t1");
        assert_eq!(condition(&still, "Ready")["lastTransitionTime"], "t0");
        let ready = status(&view(vec![running(true)]), &mut transitions, "t2");
        assert_eq!(condition(&ready, "Ready")["lastTransitionTime"], "t2");
        assert_eq!(condition(&ready, "Initialized")["lastTransitionTime"], "t0");
        let kinds: Vec<&Value> = ready["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| &c["type"])
            .collect();
        assert!(
            !kinds.contains(&&Value::from("PodScheduled")),
            "the scheduler's condition: {kinds:?}"
        );
    }

    #[test]
    fn a_crashed_container_backing_off_keeps_the_pod_running_with_its_last_state() {
        let mut pod = view(vec![ContainerState::Waiting {
            reason: "CrashLoopBackOff",
            message: Some("back-off 10s restarting failed container".into()),
        }]);
        pod.containers[0].restart_count = 1;
        pod.containers[0].last_state = Some(ContainerState::Terminated {
            exit_code: 137,
            reason: "Error",
            started_at: "t0".into(),
            finished_at: "t1".into(),
        });
        let written = status(&pod, &mut Transitions::new(), "t2");
        assert_eq!(written["phase"], "Running");
        let container = &written["containerStatuses"][0];
        assert_eq!(container["restartCount"], 1);
        assert_eq!(container["lastState"]["terminated"]["exitCode"], 137);
        assert_eq!(container["state"]["waiting"]["reason"], "CrashLoopBackOff");
    }
}
