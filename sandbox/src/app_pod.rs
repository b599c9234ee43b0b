//! One app pod's processes: the in-process app (finite capacity) and its sidecar, a real Envoy
//! with the surge filter, shaped like an Istio sidecar (node metadata, cluster names). Both
//! pod controllers start pods through here: the embedded API's ([`crate::pods`]) and the
//! sandbox's kubelet on the real control plane ([`crate::node`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use tokio::task::JoinHandle;

use crate::app::{App, AppModel};
use crate::envoy::{Bootstrap, Envoy, EnvoyOptions, NodeIdentity, WasmFilter};

/// What one app pod runs.
#[derive(Debug, Clone)]
pub struct AppPodSpec {
    /// Pod name (the proxy's `NAME`).
    pub name: String,
    /// Namespace (`NAMESPACE`).
    pub namespace: String,
    /// Workload name (`WORKLOAD_NAME`), the Deployment's.
    pub workload: String,
    /// The app's capacity.
    pub model: AppModel,
    /// Envoy worker threads.
    pub envoy_concurrency: u32,
    /// Where the proxy sends reports (the report tap, or a dead address).
    pub scaler_addr: SocketAddr,
    /// The filter's `pluginConfig`, as the WasmPlugin would give it.
    pub plugin_config: Value,
    /// The filter's .wasm.
    pub wasm: PathBuf,
    /// The Envoy binary.
    pub envoy_binary: PathBuf,
    /// Folder for the pod's Envoy files.
    pub work_dir: PathBuf,
    /// Where Envoy listens (port 0: any free port).
    pub listener: SocketAddr,
    /// Where Envoy's admin interface listens (its `/stats/prometheus` is what Prometheus
    /// scrapes); port 0: any free port on 127.0.0.1.
    pub admin: SocketAddr,
}

impl AppPodSpec {
    /// `OWNER` as Istio's injector writes it for a Deployment's pod.
    fn owner(&self) -> String {
        format!(
            "kubernetes://apis/apps/v1/namespaces/{}/deployments/{}",
            self.namespace, self.workload
        )
    }
}

/// A started app pod. Its Envoy lives on a thread of its own, which starts it (blocking until
/// it is ready) and kills it when the pod stops; dropping this stops that thread. (Which thread
/// owns it does not matter for `PR_SET_PDEATHSIG`: every child is forked by the process-lifetime
/// spawner of [`crate::process`].)
pub struct AppPod {
    app: App,
    listener: SocketAddr,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AppPod {
    /// Where the pod's Envoy accepts requests.
    pub fn listener(&self) -> SocketAddr {
        self.listener
    }

    /// Requests the app has accepted and not yet answered.
    pub fn in_flight(&self) -> u32 {
        self.app.in_flight()
    }
}

impl Drop for AppPod {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            // Killing and reaping Envoy takes milliseconds.
            let _ = thread.join();
        }
    }
}

/// Starts the app and its Envoy; the task ends when Envoy is ready (or failed).
pub fn start(spec: AppPodSpec) -> JoinHandle<Result<AppPod, String>> {
    tokio::spawn(async move {
        let name = spec.name.clone();
        let app = App::start(spec.model)
            .await
            .map_err(|e| format!("app of {name}: {e}"))?;
        let bootstrap = Bootstrap::new(app.addr(), spec.scaler_addr)
            .listener(spec.listener)
            .admin(spec.admin)
            .filter(WasmFilter::surge(&spec.wasm, &spec.plugin_config))
            .node(NodeIdentity {
                pod: name.clone(),
                namespace: spec.namespace.clone(),
                workload: spec.workload.clone(),
                owner: spec.owner(),
            });
        let options = EnvoyOptions {
            binary: spec.envoy_binary.clone(),
            concurrency: spec.envoy_concurrency,
            base_id: None,
            work_dir: spec.work_dir.clone(),
            log_level: "warning".into(),
            ready_timeout: Duration::from_secs(30),
            extra_args: Vec::new(),
            // Start at the lowest priority, serve at the normal one (below): on a cluster a new
            // pod starts on CPU of its own; here Envoy's start (V8 compiling the filter for
            // each worker) would otherwise take the cores from the pods already serving.
            nice: Some(19),
        };
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<SocketAddr, String>>();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("envoy-{name}"))
            .spawn(move || match Envoy::start(&bootstrap, &options) {
                Ok(envoy) => {
                    // Back to normal priority once ready (root may lower niceness; elsewhere the
                    // pod keeps serving at nice 19, like the other pods).
                    let mut renice = std::process::Command::new("renice");
                    renice
                        .args(["-n", "0", "-p", &envoy.pid().to_string()])
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null());
                    let _ = crate::process::status(renice);
                    let _ = ready_tx.send(Ok(envoy.listener_addr()));
                    // Park until the pod is stopped (sender dropped), then kill Envoy.
                    let _ = stop_rx.recv();
                    drop(envoy);
                }
                Err(error) => {
                    let _ = ready_tx.send(Err(error.to_string()));
                }
            })
            .map_err(|e| format!("thread for {name}: {e}"))?;
        let mut pod = AppPod {
            app,
            listener: SocketAddr::from(([127, 0, 0, 1], 0)),
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        pod.listener = ready_rx
            .await
            .map_err(|_| format!("envoy of {name}: start thread ended"))?
            .map_err(|e| format!("envoy of {name}: {e}"))?;
        Ok(pod)
    })
}
