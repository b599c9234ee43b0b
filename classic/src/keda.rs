//! KEDA's operator and metrics API server, started beside the real control plane as their
//! Deployments would run them, and registered with the API server's aggregation layer as
//! `v1beta1.external.metrics.k8s.io`.
//!
//! Out of a cluster they need what a pod would give them: a kubeconfig, `POD_NAMESPACE`,
//! `WATCH_NAMESPACE` (empty: all), `KEDA_CLUSTER_OBJECT_NAMESPACE` (else the operator reads the
//! service-account namespace file), their CRDs, and for the gRPC link between them (the metrics
//! server asks the operator for each metric) one certificate each side accepts, in
//! `ca.crt`/`tls.crt`/`tls.key` of each one's `--cert-dir`. The API server reaches the metrics
//! server through an APIService, a Service and an EndpointSlice; an EndpointSlice address may
//! not be loopback, so the metrics server listens on this machine's own address.

use std::net::{IpAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;
use surge_cluster::ControlPlane;
use surge_cluster::pki::Authority;
use surge_cluster::process::ChildGuard;

use crate::{ClassicError, Result, components, io};

/// KEDA's namespace.
pub const NAMESPACE: &str = "keda";
/// The metrics API server's Service (as KEDA's manifests name it).
pub const METRICS_SERVICE: &str = "keda-metrics-apiserver";
/// The aggregated API.
pub const APISERVICE: &str = "v1beta1.external.metrics.k8s.io";

/// Running KEDA; both processes stop when dropped.
#[derive(Debug)]
pub struct Keda {
    dir: PathBuf,
    operator: ChildGuard,
    adapter: ChildGuard,
}

/// This machine's own address (the source of its default route), which an EndpointSlice
/// accepts; no packet is sent.
pub fn host_address() -> Result<IpAddr> {
    let socket = UdpSocket::bind("0.0.0.0:0").map_err(io("open a UDP socket"))?;
    socket
        .connect("192.0.2.1:9")
        .map_err(io("find this machine's address (no default route?)"))?;
    let ip = socket
        .local_addr()
        .map_err(io("read this machine's address"))?
        .ip();
    if ip.is_loopback() || ip.is_unspecified() {
        return Err(ClassicError::Missing(format!(
            "this machine has no address but loopback ({ip}): KEDA's metrics server needs one \
             the API server accepts in an EndpointSlice"
        )));
    }
    Ok(ip)
}

/// Runs kubectl with the admin kubeconfig; its stdout.
pub fn kubectl(plane: &ControlPlane, args: &[&str], stdin: Option<&str>) -> Result<String> {
    Ok(surge_cluster::kubectl::run(plane, args, stdin)?)
}

fn start_process(
    name: &str,
    program: &Path,
    args: &[String],
    env: &[(&str, &str)],
    log: &Path,
) -> Result<ChildGuard> {
    Ok(surge_cluster::launch::start_with_env(
        name, program, args, env, log,
    )?)
}

impl Keda {
    /// Applies KEDA's CRDs, starts the operator and the metrics server (files under `dir`), and
    /// registers the metrics server; returns once the API server serves
    /// `external.metrics.k8s.io` through it.
    pub async fn start(plane: &ControlPlane, dir: &Path) -> Result<Self> {
        let operator_bin = components::keda("keda")?;
        let adapter_bin = components::keda("keda-adapter")?;
        let crds = components::keda_crds()?;
        let host = host_address()?;
        std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;

        surge_cluster::kubectl::apply_crds(
            plane,
            &crds,
            &["scaledobjects.keda.sh"],
            Duration::from_secs(30),
        )
        .await?;
        let namespace =
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}});
        kubectl(plane, &["apply", "-f", "-"], Some(&namespace.to_string()))?;

        // One CA and one certificate for both ends of the gRPC link and the aggregated API.
        let ca = Authority::new("keda")?;
        let names: Vec<String> = [
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            host.to_string(),
            format!("keda-operator.{NAMESPACE}.svc"),
            format!("{METRICS_SERVICE}.{NAMESPACE}.svc"),
        ]
        .into();
        let peer = ca.peer("keda", &names)?;
        let mut cert_dirs = Vec::new();
        for side in ["operator", "adapter"] {
            let certs = dir.join(format!("{side}-certs"));
            std::fs::create_dir_all(&certs).map_err(io(format!("create {}", certs.display())))?;
            std::fs::write(certs.join("ca.crt"), ca.cert_pem())
                .map_err(io(format!("write {}/ca.crt", certs.display())))?;
            peer.write(&certs, "tls")?;
            cert_dirs.push(certs);
        }

        let [grpc, operator_metrics, operator_health, adapter_metrics] =
            surge_cluster::free_ports::<4>().map_err(io("pick ports for KEDA"))?;
        let secure = std::net::TcpListener::bind((host, 0))
            .and_then(|l| l.local_addr())
            .map_err(io(format!("pick a port on {host}")))?
            .port();
        let kubeconfig = plane.admin_kubeconfig().display().to_string();
        let env = [
            ("KUBECONFIG", kubeconfig.as_str()),
            ("WATCH_NAMESPACE", ""),
            ("POD_NAMESPACE", NAMESPACE),
            ("KEDA_CLUSTER_OBJECT_NAMESPACE", NAMESPACE),
        ];
        let operator_log = dir.join("keda-operator.log");
        let operator = start_process(
            "keda-operator",
            &operator_bin,
            &[
                format!("--kubeconfig={kubeconfig}"),
                format!("--metrics-bind-address=127.0.0.1:{operator_metrics}"),
                format!("--health-probe-bind-address=127.0.0.1:{operator_health}"),
                format!("--metrics-service-bind-address=127.0.0.1:{grpc}"),
                format!("--cert-dir={}", cert_dirs[0].display()),
                "--leader-elect=false".to_owned(),
                "--zap-log-level=info".to_owned(),
            ],
            &env,
            &operator_log,
        )?;
        let adapter_log = dir.join("keda-metrics-apiserver.log");
        let adapter_certs = &cert_dirs[1];
        let adapter = start_process(
            "keda-metrics-apiserver",
            &adapter_bin,
            &[
                format!("--kubeconfig={kubeconfig}"),
                format!("--lister-kubeconfig={kubeconfig}"),
                format!("--authentication-kubeconfig={kubeconfig}"),
                format!("--authorization-kubeconfig={kubeconfig}"),
                format!("--bind-address={host}"),
                format!("--secure-port={secure}"),
                format!("--port={adapter_metrics}"),
                format!("--cert-dir={}", adapter_certs.display()),
                format!(
                    "--tls-cert-file={}",
                    adapter_certs.join("tls.crt").display()
                ),
                format!(
                    "--tls-private-key-file={}",
                    adapter_certs.join("tls.key").display()
                ),
                format!("--metrics-service-address=127.0.0.1:{grpc}"),
            ],
            &env,
            &adapter_log,
        )?;
        let keda = Self {
            dir: dir.to_path_buf(),
            operator,
            adapter,
        };

        // What KEDA's manifests create for the metrics server, with this machine's address as
        // the Service's one endpoint.
        let registration = json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": METRICS_SERVICE, "namespace": NAMESPACE},
             "spec": {"ports": [{"name": "https", "port": 443, "targetPort": secure}]}},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "metadata": {"name": METRICS_SERVICE, "namespace": NAMESPACE,
                          "labels": {"kubernetes.io/service-name": METRICS_SERVICE}},
             "addressType": if host.is_ipv4() { "IPv4" } else { "IPv6" },
             "endpoints": [{"addresses": [host.to_string()], "conditions": {"ready": true}}],
             "ports": [{"name": "https", "port": secure, "protocol": "TCP"}]},
            {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
             "metadata": {"name": APISERVICE},
             "spec": {"group": "external.metrics.k8s.io", "version": "v1beta1",
                      "service": {"name": METRICS_SERVICE, "namespace": NAMESPACE, "port": 443},
                      "caBundle": STANDARD.encode(ca.cert_pem()),
                      "groupPriorityMinimum": 100, "versionPriority": 100}},
        ]});
        kubectl(
            plane,
            &["apply", "-f", "-"],
            Some(&registration.to_string()),
        )?;
        keda.wait_ready(plane, Duration::from_secs(90)).await
    }

    async fn wait_ready(mut self, plane: &ControlPlane, timeout: Duration) -> Result<Self> {
        let deadline = Instant::now() + timeout;
        loop {
            let served = kubectl(
                plane,
                &["get", "--raw", "/apis/external.metrics.k8s.io/v1beta1"],
                None,
            );
            if served.is_ok() {
                return Ok(self);
            }
            // The metrics server exits with status 0 on a fatal start-up error.
            let exited = [&mut self.operator, &mut self.adapter]
                .into_iter()
                .find_map(|process| (!process.is_running()).then(|| process.name().to_owned()));
            if let Some(name) = exited {
                return Err(self.not_ready(&format!("{name} exited")));
            }
            if Instant::now() >= deadline {
                let why = served.err().map(|e| e.to_string()).unwrap_or_default();
                return Err(self.not_ready(&format!(
                    "external.metrics.k8s.io not served within {timeout:?}: {why}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn not_ready(&self, why: &str) -> ClassicError {
        let tail = |name: &str| {
            let log = self.dir.join(name);
            format!(
                "{} ends:\n{}",
                log.display(),
                surge_cluster::launch::tail(&log, 15)
            )
        };
        ClassicError::NotReady(format!(
            "KEDA: {why}; {}\n{}",
            tail("keda-operator.log"),
            tail("keda-metrics-apiserver.log")
        ))
    }

    /// The folder of its logs and certificates.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_machine_has_an_address_an_endpoint_slice_accepts() {
        // Every machine these tests run on has a default route (they download their tools).
        let ip = host_address().unwrap();
        assert!(!ip.is_loopback(), "{ip}");
    }
}
