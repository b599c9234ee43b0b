//! Starting a sandbox: the checks of what each Kubernetes can play, then the embedded API or
//! the real control plane, the report path and the way in (gateway or caller's sidecar).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::task::JoinHandle;

use super::{Backend, Embedded, KubeMode, SURGESCALER_CRD, Sandbox, StartOptions, surgescaler};
use crate::app::AppModel;
use crate::classic::Autoscaler;
use crate::envoy::{locate_envoy, locate_filter_wasm};
use crate::ingress::{Ingress, IngressOptions, Via};
use crate::kubeapi::{KubeApi, Options, resources};
use crate::pods::{Endpoints, PodTemplate, Pods, fixed_endpoint};
use crate::real::RealKube;
use crate::run::{NAMESPACE, RunError, WORKLOAD, io};
use crate::scaler::{ScalerOptions, free_port, locate_scaler};
use crate::scenario::{Fault, Reachability, Scenario};
use crate::tap::Tap;

/// A listener that accepts connections and never answers (a hung scaler).
async fn hanging_listener() -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    Ok((addr, task))
}

/// The report path: the tap in front of `scaler` (logging the reports to `reports.jsonl` in
/// `out_dir`), or the scenario's refusing or hanging stand-in.
async fn report_path(
    reachability: Reachability,
    scaler: Endpoints,
    out_dir: &Path,
) -> Result<(Option<Tap>, SocketAddr, Option<JoinHandle<()>>), RunError> {
    Ok(match reachability {
        Reachability::Reachable => {
            let tap = Tap::start(scaler, &out_dir.join("reports.jsonl"))
                .await
                .map_err(io("start the report tap"))?;
            let addr = tap.addr();
            (Some(tap), addr, None)
        }
        Reachability::Refused => (None, free_port().map_err(io("pick a closed port"))?, None),
        Reachability::Hanging => {
            let (addr, task) = hanging_listener()
                .await
                .map_err(io("start a hanging listener"))?;
            (None, addr, Some(task))
        }
    })
}

impl Sandbox {
    /// Starts Kubernetes, the Deployment at `minReplicas`, its pods and (see
    /// [`StartOptions::start_scaler`]) the scaler, and applies the SurgeScaler. Waits until the
    /// first pods are ready.
    pub async fn start(scenario: &Scenario, options: &StartOptions) -> Result<Self, RunError> {
        let envoy_binary = locate_envoy()?;
        let wasm = locate_filter_wasm()?;
        std::fs::create_dir_all(&options.out_dir)
            .map_err(io(format!("create {}", options.out_dir.display())))?;
        // Absolute: the pods' processes run in their own folders, and the paths handed to them
        // (kubeconfigs, token files) must not depend on where they run.
        let out_dir = &std::path::absolute(&options.out_dir)
            .map_err(io(format!("resolve {}", options.out_dir.display())))?;
        let options = &StartOptions {
            out_dir: out_dir.clone(),
            ..options.clone()
        };
        let pods_dir = out_dir.join("pods");
        let _ = std::fs::remove_dir_all(&pods_dir);
        match options.kube {
            KubeMode::Embedded if scenario.scaler.min_replicas == 0 => Err(RunError::Setup(
                "scaler.min_replicas 0 (scale to zero) needs the real control plane (--kube \
                 real): the embedded API serves no Services or EndpointSlices, which say when \
                 the app is warm again"
                    .into(),
            )),
            KubeMode::Embedded
                if scenario.scaler.replicas.is_some_and(|n| n > 1)
                    || scenario
                        .faults
                        .iter()
                        .any(|f| matches!(f, Fault::KillScalerOwner { .. })) =>
            {
                Err(RunError::Setup(
                    "scaler.replicas above 1 and the kill_scaler_owner fault need the real \
                     control plane (--kube real): there the chart runs the scaler as a \
                     Deployment's pods; on the embedded API the sandbox runs one scaler \
                     process itself"
                        .into(),
                ))
            }
            KubeMode::Embedded if scenario.nodes.is_some() => Err(RunError::Setup(
                "nodes: needs the real control plane (--kube real): Karpenter adds the nodes \
                 and the real scheduler places the pods"
                    .into(),
            )),
            KubeMode::Embedded if options.autoscaler != Autoscaler::Surge => Err(RunError::Setup(
                "--autoscaler classic needs the real control plane (--kube real): the classic \
                 chain is the real HPA controller, KEDA and Prometheus"
                    .into(),
            )),
            KubeMode::Embedded => {
                Self::start_embedded(scenario, options, envoy_binary, wasm, pods_dir).await
            }
            KubeMode::Real => {
                Self::start_real(scenario, options, envoy_binary, wasm, pods_dir).await
            }
        }
    }

    async fn start_embedded(
        scenario: &Scenario,
        options: &StartOptions,
        envoy_binary: PathBuf,
        wasm: PathBuf,
        pods_dir: PathBuf,
    ) -> Result<Self, RunError> {
        let scaler_binary = locate_scaler()?;
        let out_dir = &options.out_dir;
        let api = Arc::new(
            KubeApi::start(Options::default())
                .await
                .map_err(io("start the embedded API"))?,
        );
        api.register_crd(SURGESCALER_CRD).map_err(RunError::Setup)?;
        let kubeconfig = out_dir.join("kubeconfig.yaml");
        api.write_kubeconfig(&kubeconfig, NAMESPACE)
            .map_err(io("write the kubeconfig"))?;
        api.create_deployment(NAMESPACE, WORKLOAD, scenario.scaler.min_replicas)
            .map_err(|e| RunError::Setup(format!("create the Deployment: {}", e.message)))?;

        let ingest = free_port().map_err(io("pick the scaler's ingest port"))?;
        let admin = free_port().map_err(io("pick the scaler's admin port"))?;
        let (tap, report_to, hanging) = report_path(
            scenario.scaler.reachability,
            fixed_endpoint("surge-scaler", ingest),
            out_dir,
        )
        .await?;
        let pods = Pods::start(
            Arc::clone(&api),
            PodTemplate {
                namespace: NAMESPACE.into(),
                workload: WORKLOAD.into(),
                model: AppModel {
                    concurrency: scenario.pods.concurrency,
                    service_time: Duration::from_millis(scenario.pods.service_time_ms),
                    queue: scenario.pods.queue,
                },
                startup_delay: Duration::from_millis(scenario.pods.startup_delay_ms),
                fail_after: scenario.pods.fail_after,
                envoy_concurrency: scenario.pods.envoy_concurrency,
                scaler_addr: report_to,
                wasm,
                envoy_binary,
                work_dir: pods_dir,
            },
        );
        let scaler_log = out_dir.join("scaler.log");
        let _ = std::fs::remove_file(&scaler_log);
        api.store()
            .create(resources::SURGESCALERS, NAMESPACE, surgescaler(scenario))
            .map_err(|e| RunError::Setup(format!("apply the SurgeScaler: {}", e.message)))?;
        let mut sandbox = Self {
            ingress: None,
            backend: Backend::Embedded(Box::new(Embedded {
                api,
                pods: Some(pods),
                scaler: None,
                scaler_options: ScalerOptions {
                    binary: scaler_binary,
                    kubeconfig,
                    ingest,
                    admin,
                    log: scaler_log,
                },
            })),
            tap,
            report_to,
            _hanging: hanging,
        };
        sandbox
            .wait_ready(scenario.scaler.min_replicas, Duration::from_secs(60))
            .await?;
        if options.start_scaler {
            sandbox.start_scaler().await?;
        }
        sandbox
            .start_ingress(scenario, options, json!({"report_interval_ms": 1000}))
            .await?;
        Ok(sandbox)
    }

    async fn start_real(
        scenario: &Scenario,
        options: &StartOptions,
        envoy_binary: PathBuf,
        wasm: PathBuf,
        pods_dir: PathBuf,
    ) -> Result<Self, RunError> {
        let mut real = RealKube::start(&options.out_dir, options.announce).await?;
        // The scenario's replica count first: a `--set` of the caller's comes later and wins.
        let helm_set: Vec<String> = scenario
            .scaler
            .replicas
            .map(|n| format!("replicaCount={n}"))
            .into_iter()
            .chain(options.helm_set.iter().cloned())
            .collect();
        real.install_chart(&helm_set).await?;
        let (tap, report_to, hanging) = report_path(
            scenario.scaler.reachability,
            real.scaler_endpoints(),
            &options.out_dir,
        )
        .await?;
        real.start_node(scenario, pods_dir, report_to, envoy_binary, wasm)
            .await?;
        real.wait_scaler_ready(Duration::from_secs(60)).await?;
        if let Some(nodes) = &scenario.nodes {
            real.start_karpenter(&nodes.pool()).await?;
        }
        let scaler = (options.autoscaler == Autoscaler::Surge).then(|| surgescaler(scenario));
        real.deploy_app(scenario, scaler).await?;
        real.start_classic(
            scenario,
            options.autoscaler,
            &options.out_dir.join("classic"),
        )
        .await?;
        let plugin_config = real.plugin_config().clone();
        let mut sandbox = Self {
            ingress: None,
            backend: Backend::Real(Box::new(real)),
            tap,
            report_to,
            _hanging: hanging,
        };
        sandbox
            .wait_ready(scenario.scaler.min_replicas.max(1), Duration::from_secs(60))
            .await?;
        sandbox
            .start_ingress(scenario, options, plugin_config)
            .await?;
        Ok(sandbox)
    }

    /// Starts where the load enters (the gateway or the caller's sidecar, when the scenario
    /// has one).
    async fn start_ingress(
        &mut self,
        scenario: &Scenario,
        options: &StartOptions,
        plugin_config: Value,
    ) -> Result<(), RunError> {
        if scenario.traffic.via == Via::Sidecars {
            return Ok(());
        }
        let ingress = Ingress::start(
            IngressOptions {
                via: scenario.traffic.via,
                namespace: NAMESPACE.into(),
                service: WORKLOAD.into(),
                report_to: self.report_to,
                plugin_config,
                hold: scenario.traffic.hold,
                wasm: locate_filter_wasm()?,
                envoy_binary: locate_envoy()?,
                envoy_concurrency: scenario.pods.envoy_concurrency,
                work_dir: options.out_dir.join("ingress"),
            },
            self.pod_endpoints(),
        )
        .await?;
        self.ingress = Some(ingress);
        Ok(())
    }
}
