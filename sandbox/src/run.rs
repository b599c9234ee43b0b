//! `surge-sandbox run`: the embedded API, the pods (real Envoys with the filter), the real
//! scaler, a SurgeScaler, the scenario's load and faults; then the report.
//!
//! ```text
//!  load generator --HTTP--> pod Envoy (filter) --> app        (one per ready replica)
//!                               | reports (POST /v1/reports)
//!                               v
//!                          surge-scaler --PATCH deployments/app/scale--> embedded API
//!                                                                           | spec.replicas
//!  pods controller <--------------------------------------------------------'
//!     `-- starts/stops pods, writes status.readyReplicas back
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::task::JoinHandle;

use crate::app::AppModel;
use crate::envoy::{EnvoyError, locate_envoy, locate_filter_wasm};
use crate::kubeapi::{KubeApi, Options, resources};
use crate::load::{self, Recorder};
use crate::nft::NftTable;
use crate::pods::{PodTemplate, Pods};
use crate::report::{self, Collected, FaultRecord, PngChart, RunResult};
use crate::scaler::{Scaler, ScalerError, ScalerOptions, free_port, locate_scaler};
use crate::scenario::{Fault, Reachability, Scenario};
use crate::tap::{ReportSeen, Tap};

/// The SurgeScaler CRD the scaler engineer generates; its schema defaults are applied by the
/// embedded API as a real API server would.
const SURGESCALER_CRD: &str = include_str!("../../deploy/crds/surgescaler.yaml");

/// Namespace of the sandbox's workload.
pub const NAMESPACE: &str = "default";
/// Name of the sandbox's Deployment (and SurgeScaler).
pub const WORKLOAD: &str = "app";

/// Why a run could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Envoy or the filter is missing or failed.
    #[error(transparent)]
    Envoy(#[from] EnvoyError),
    /// The scaler is missing or failed.
    #[error(transparent)]
    Scaler(#[from] ScalerError),
    /// Files or sockets.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Something did not happen in time or the API refused a write.
    #[error("{0}")]
    Setup(String),
    /// Interrupted (Ctrl-C / SIGTERM) before the load started.
    #[error("interrupted")]
    Interrupted,
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RunError {
    let context = context.into();
    move |source| RunError::Io { context, source }
}

/// Settings of a run besides the scenario.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Where results, logs, kubeconfig and pod files go.
    pub out_dir: PathBuf,
    /// Print one progress line per second.
    pub live: bool,
}

/// The running parts of a sandbox (API, pods, scaler); dropping it stops every process.
pub struct Sandbox {
    /// The embedded API.
    pub api: Arc<KubeApi>,
    /// The pods controller.
    pub pods: Option<Pods>,
    scaler: Option<Scaler>,
    scaler_options: ScalerOptions,
    tap: Option<Tap>,
    /// Where the proxies send their reports (the tap, or the refusing/hanging stand-in).
    report_to: SocketAddr,
    _hanging: Option<JoinHandle<()>>,
}

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

impl Sandbox {
    /// Starts the API, the Deployment at `minReplicas`, the pods and (unless `start_scaler` is
    /// false) the scaler, and applies the SurgeScaler. Waits until the first pods are ready.
    pub async fn start(
        scenario: &Scenario,
        out_dir: &Path,
        start_scaler: bool,
    ) -> Result<Self, RunError> {
        let envoy_binary = locate_envoy()?;
        let wasm = locate_filter_wasm()?;
        let scaler_binary = locate_scaler()?;
        std::fs::create_dir_all(out_dir).map_err(io(format!("create {}", out_dir.display())))?;
        let pods_dir = out_dir.join("pods");
        let _ = std::fs::remove_dir_all(&pods_dir);

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
        let mut tap = None;
        let (report_to, hanging) = match scenario.scaler.reachability {
            Reachability::Reachable => {
                let started = Tap::start(ingest)
                    .await
                    .map_err(io("start the report tap"))?;
                let addr = started.addr();
                tap = Some(started);
                (addr, None)
            }
            Reachability::Refused => (free_port().map_err(io("pick a closed port"))?, None),
            Reachability::Hanging => {
                let (addr, task) = hanging_listener()
                    .await
                    .map_err(io("start a hanging listener"))?;
                (addr, Some(task))
            }
        };
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
        let mut sandbox = Self {
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
            tap,
            report_to,
            _hanging: hanging,
        };
        sandbox.apply_surgescaler(scenario)?;
        sandbox
            .wait_ready(scenario.scaler.min_replicas, Duration::from_secs(60))
            .await?;
        if start_scaler {
            sandbox.start_scaler().await?;
        }
        Ok(sandbox)
    }

    /// Creates the SurgeScaler for the Deployment from the scenario (as `kubectl apply` would).
    fn apply_surgescaler(&self, scenario: &Scenario) -> Result<(), RunError> {
        let s = &scenario.scaler;
        let mut spec = json!({
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": WORKLOAD},
            "minReplicas": s.min_replicas,
            "maxReplicas": s.max_replicas,
            "metric": {"type": s.metric, "target": s.target},
        });
        if let Some(stable) = s.stable_window_s {
            spec["windows"] = json!({"stableSeconds": stable});
        }
        if let Some(window) = s.scale_down_stabilization_s {
            spec["behavior"] = json!({"scaleDown": {"stabilizationWindowSeconds": window}});
        }
        self.api
            .store()
            .create(
                resources::SURGESCALERS,
                NAMESPACE,
                json!({
                    "apiVersion": "surge.dev/v1alpha1",
                    "kind": "SurgeScaler",
                    "metadata": {"name": WORKLOAD, "namespace": NAMESPACE},
                    "spec": spec,
                }),
            )
            .map(|_| ())
            .map_err(|e| RunError::Setup(format!("apply the SurgeScaler: {}", e.message)))
    }

    /// Waits until at least `ready` pods are ready.
    pub async fn wait_ready(&self, ready: u32, timeout: Duration) -> Result<(), RunError> {
        let deadline = Instant::now() + timeout;
        loop {
            let now_ready = self
                .pods
                .as_ref()
                .and_then(Pods::current)
                .map_or(0, |c| c.ready);
            if now_ready >= ready {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(RunError::Setup(format!(
                    "only {now_ready} of {ready} pods became ready within {timeout:?} (see the Envoy logs under pods/)"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts the scaler (again); waits until it is ready.
    pub async fn start_scaler(&mut self) -> Result<(), RunError> {
        if let Some(old) = self.scaler.take() {
            old.kill();
        }
        let options = self.scaler_options.clone();
        let scaler =
            tokio::task::spawn_blocking(move || Scaler::start(&options, Duration::from_secs(20)))
                .await
                .map_err(|e| RunError::Setup(format!("scaler start task: {e}")))??;
        self.scaler = Some(scaler);
        Ok(())
    }

    /// Kills the scaler (SIGKILL).
    pub fn kill_scaler(&mut self) {
        if let Some(scaler) = self.scaler.take() {
            scaler.kill();
        }
    }

    /// The scaler's admin address (`/metrics`, `/healthz`, `/readyz`).
    pub fn scaler_admin(&self) -> SocketAddr {
        self.scaler_options.admin
    }

    /// The port the proxies send their reports to.
    pub fn report_port(&self) -> u16 {
        self.report_to.port()
    }

    /// Reports that passed from the proxies to the scaler so far.
    pub fn reports(&self) -> Vec<ReportSeen> {
        self.tap.as_ref().map(Tap::seen).unwrap_or_default()
    }

    /// Stops the scaler and every pod.
    pub async fn shutdown(mut self) {
        self.kill_scaler();
        if let Some(pods) = self.pods.take() {
            pods.shutdown().await;
        }
    }
}

/// Runs `scenario`; `cancel` resolving (Ctrl-C, SIGTERM) ends the run early, cleanly, with
/// results for what was played. Writes `result.json` and `chart.svg` into the output directory.
pub async fn run(
    scenario: &Scenario,
    options: &RunOptions,
    cancel: impl Future<Output = ()>,
) -> Result<RunResult, RunError> {
    tokio::pin!(cancel);
    let mut sandbox = tokio::select! {
        started = Sandbox::start(scenario, &options.out_dir, true) => started?,
        () = &mut cancel => return Err(RunError::Interrupted),
    };
    let endpoints = sandbox
        .pods
        .as_ref()
        .map(Pods::endpoints)
        .unwrap_or_default();
    let recorder: Recorder = Recorder::default();
    let total = Duration::from_secs_f64(scenario.total_seconds());
    let start = Instant::now() + Duration::from_millis(100);
    let load_task = {
        let scenario = scenario.clone();
        let recorder = Arc::clone(&recorder);
        tokio::spawn(load::play(
            tokio::time::Instant::from_std(start),
            total,
            move |t| scenario.rate_at(t),
            endpoints,
            recorder,
        ))
    };

    let mut faults: Vec<(f64, FaultStep)> = scenario
        .faults
        .iter()
        .flat_map(|f| {
            let (at_s, start, length_s, end) = match f {
                Fault::KillScaler {
                    at_s,
                    restart_after_s,
                } => (
                    *at_s,
                    FaultStep::KillScaler,
                    *restart_after_s,
                    FaultStep::RestartScaler,
                ),
                Fault::DropReports { at_s, for_s } => (
                    *at_s,
                    FaultStep::DropReports,
                    *for_s,
                    FaultStep::DeliverReports,
                ),
            };
            let at = scenario.warmup_s as f64 + at_s;
            [(at, start), (at + length_s, end)]
        })
        .collect();
    faults.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut faults = faults.into_iter().peekable();
    let mut dropping: Option<(NftTable, f64)> = None;
    let mut fault_records = Vec::new();

    let mut failure = None;
    let mut interrupted = false;
    let mut second = 0u64;
    loop {
        let next_second = start + Duration::from_secs(second + 1);
        let next_fault = faults
            .peek()
            .map(|(at, _)| start + Duration::from_secs_f64(*at));
        let wake = next_fault.map_or(next_second, |f| f.min(next_second));
        tokio::select! {
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {}
            () = &mut cancel => { interrupted = true; break; }
        }
        if let Some(at) = next_fault
            && Instant::now() >= at
            && let Some((_, step)) = faults.next()
        {
            let t = start.elapsed().as_secs_f64();
            match step {
                FaultStep::RestartScaler => {
                    tracing::info!("fault: restarting the scaler");
                    if let Err(error) = sandbox.start_scaler().await {
                        failure = Some(format!("restarting the scaler failed: {error}"));
                        break;
                    }
                }
                FaultStep::KillScaler => {
                    tracing::info!("fault: killing the scaler");
                    sandbox.kill_scaler();
                }
                FaultStep::DropReports => {
                    tracing::info!("fault: the kernel drops every report packet");
                    match drop_reports(sandbox.report_port()) {
                        Ok(table) => dropping = Some((table, t)),
                        Err(error) => {
                            failure = Some(format!("faults: drop_reports: {error:#}"));
                            break;
                        }
                    }
                }
                FaultStep::DeliverReports => {
                    tracing::info!("fault over: reports are delivered again");
                    if let Some((table, from_s)) = dropping.take() {
                        match table.clear() {
                            Ok(counters) => fault_records.push(FaultRecord {
                                fault: "drop_reports".into(),
                                from_s,
                                until_s: t,
                                packets_dropped: counters.dropped,
                            }),
                            Err(error) => {
                                failure = Some(format!("faults: drop_reports: {error:#}"));
                                break;
                            }
                        }
                    }
                }
            }
            continue;
        }
        if Instant::now() >= next_second {
            if options.live {
                println!(
                    "{}",
                    live_line(scenario, second, &recorder, sandbox.pods.as_ref())
                );
            }
            second += 1;
            if second as f64 >= scenario.total_seconds() {
                break;
            }
        }
    }
    let played = if interrupted {
        load_task.abort();
        start.elapsed().as_secs_f64().min(scenario.total_seconds())
    } else {
        let _ = load_task.await;
        scenario.total_seconds()
    };
    let history = sandbox.pods.as_ref().map(Pods::history).unwrap_or_default();
    let requests = sandbox.api.requests();
    let reports = sandbox.reports();
    sandbox.shutdown().await;

    let seconds = recorder.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut result = report::build(&Collected {
        scenario,
        start,
        played_seconds: played,
        seconds: &seconds,
        pods: &history,
        requests: &requests,
        reports: &reports,
        failure,
        interrupted,
    });
    result.faults = fault_records;
    write_outputs(&mut result, &options.out_dir)?;
    Ok(result)
}

/// One edge of a scenario fault, in time order.
#[derive(Debug, Clone, Copy)]
enum FaultStep {
    KillScaler,
    RestartScaler,
    DropReports,
    DeliverReports,
}

/// A table dropping every packet to the report port; reports flow again when it is cleared or
/// dropped.
fn drop_reports(port: u16) -> anyhow::Result<NftTable> {
    let table = NftTable::create()?;
    table.drop_all(port)?;
    Ok(table)
}

/// Writes `chart.svg`, `chart.png` when `rsvg-convert` is installed, and `result.json` (which
/// says, as `result.png_chart` does once this returns, whether the PNG was written).
pub fn write_outputs(result: &mut RunResult, out_dir: &Path) -> Result<(), RunError> {
    let svg = out_dir.join("chart.svg");
    std::fs::write(&svg, crate::chart::render(result)).map_err(io("write chart.svg"))?;
    result.png_chart = Some(write_png(&svg, &out_dir.join("chart.png")));
    let json = serde_json::to_string_pretty(result)
        .map_err(|e| RunError::Setup(format!("encode the result: {e}")))?;
    std::fs::write(out_dir.join("result.json"), json).map_err(io("write result.json"))?;
    Ok(())
}

/// Converts `svg` to `png` with librsvg's `rsvg-convert` (Debian: librsvg2-bin), if installed:
/// a Rust rasteriser would cost a large dependency tree to build, for a chart the SVG already
/// shows. A `png` left by an earlier run is removed when no new one is written, so it cannot
/// pass for this run's.
pub fn write_png(svg: &Path, png: &Path) -> PngChart {
    convert_with(std::process::Command::new("rsvg-convert"), svg, png)
}

/// Runs `convert SVG -o PNG`.
fn convert_with(mut convert: std::process::Command, svg: &Path, png: &Path) -> PngChart {
    let _ = std::fs::remove_file(png);
    convert
        .arg(svg)
        .arg("-o")
        .arg(png)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    match crate::process::status(convert) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => PngChart::NoConverter,
        Err(e) => PngChart::Failed(e.to_string()),
        Ok(status) if !status.success() => PngChart::Failed(status.to_string()),
        Ok(_) if !png.is_file() => PngChart::Failed("it wrote no file".into()),
        Ok(_) => PngChart::Written(png.to_path_buf()),
    }
}

fn live_line(scenario: &Scenario, second: u64, recorder: &Recorder, pods: Option<&Pods>) -> String {
    let stats = recorder
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(second as usize)
        .cloned()
        .unwrap_or_default();
    let counts = pods.and_then(Pods::current);
    let p99 = stats
        .quantile_ms(0.99)
        .map_or("     -".to_string(), |v| format!("{v:>6.0}"));
    format!(
        "[{:>4} s] offered {:>5.0} rps ({:>4.0} scheduled) | ready {:>2} desired {:>2} | p99 {p99} ms | errors {}",
        second,
        stats.sent as f64,
        scenario.rate_at(second as f64 + 0.5),
        counts.map_or(0, |c| c.ready),
        counts.map_or(0, |c| c.desired),
        stats.errors
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("surge-png-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("chart.svg"), "<svg/>").unwrap();
        dir
    }

    #[test]
    fn without_a_converter_the_summary_says_so_and_an_old_png_is_removed() {
        let dir = dir("none");
        std::fs::write(dir.join("chart.png"), "from an earlier run").unwrap();
        let png = convert_with(
            std::process::Command::new("/nonexistent/rsvg-convert"),
            &dir.join("chart.svg"),
            &dir.join("chart.png"),
        );
        assert_eq!(png, PngChart::NoConverter);
        assert!(png.sentence().contains("rsvg-convert is not on the PATH"));
        assert!(!dir.join("chart.png").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_converter_that_fails_is_named_with_its_exit_status() {
        let dir = dir("fails");
        let png = convert_with(
            std::process::Command::new("false"),
            &dir.join("chart.svg"),
            &dir.join("chart.png"),
        );
        assert!(matches!(png, PngChart::Failed(_)), "{png:?}");
        assert!(
            png.sentence().contains("exit status: 1"),
            "{}",
            png.sentence()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_written_png_is_pointed_to() {
        let dir = dir("written");
        // Stands in for rsvg-convert: `SVG -o PNG` become $1 $2 $3.
        let mut fake = std::process::Command::new("sh");
        fake.args(["-c", r#"cp "$1" "$3""#, "fake-rsvg-convert"]);
        let png = convert_with(fake, &dir.join("chart.svg"), &dir.join("chart.png"));
        assert_eq!(png, PngChart::Written(dir.join("chart.png")));
        assert_eq!(
            png.sentence(),
            format!("PNG chart: {}.", dir.join("chart.png").display())
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
