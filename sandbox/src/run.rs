//! `surge-sandbox run`: a sandbox ([`crate::sandbox`]: Kubernetes, the pods with real Envoys
//! and the filter, the real scaler, a SurgeScaler), the scenario's load and faults; then the
//! report.
//!
//! ```text
//!  load generator --HTTP--> pod Envoy (filter) --> app        (one per ready replica)
//!                               | reports (POST /v1/reports)
//!                               v
//!                          surge-scaler --PATCH deployments/app/scale--> Kubernetes API
//!                                                                           | spec.replicas
//!  pods (embedded controller, or the real controllers and the sandbox's node) <--'
//! ```

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::classic::Autoscaler;
use crate::envoy::EnvoyError;
use crate::load::{self, Recorder};
use crate::nft::NftTable;
use crate::pods::PodCounts;
use crate::report::{self, Collected, FaultRecord, PngChart, RunResult};
pub use crate::sandbox::{KubeMode, Sandbox, StartOptions};
use crate::scaler::ScalerError;
use crate::scenario::{Fault, Scenario};

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

pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RunError {
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
    /// Which Kubernetes.
    pub kube: KubeMode,
    /// Extra `helm install --set` values (real Kubernetes only).
    pub helm_set: Vec<String>,
    /// Which autoscaler drives the app (the classic chain: real Kubernetes only).
    pub autoscaler: Autoscaler,
}

impl RunOptions {
    /// On the embedded API, files under `out_dir`, with progress lines when `live`.
    pub fn embedded(out_dir: impl Into<PathBuf>, live: bool) -> Self {
        Self {
            out_dir: out_dir.into(),
            live,
            kube: KubeMode::Embedded,
            helm_set: Vec::new(),
            autoscaler: Autoscaler::Surge,
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
    let start_options = StartOptions {
        out_dir: options.out_dir.clone(),
        start_scaler: true,
        kube: options.kube,
        helm_set: options.helm_set.clone(),
        announce: options.live,
        autoscaler: options.autoscaler,
    };
    let mut sandbox = tokio::select! {
        started = Sandbox::start(scenario, &start_options) => started?,
        () = &mut cancel => return Err(RunError::Interrupted),
    };
    let endpoints = sandbox.endpoints();
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
                // The node starts the killed replica again on its own, after the downtime.
                Fault::KillScalerOwner {
                    at_s,
                    restart_after_s,
                } => (
                    *at_s,
                    FaultStep::KillScalerOwner(Duration::from_secs_f64(*restart_after_s)),
                    *restart_after_s,
                    FaultStep::OwnerBack,
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
    let mut takeovers = Vec::new();

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
                FaultStep::KillScalerOwner(restart_after) => {
                    match sandbox.kill_scaler_owner(restart_after).await {
                        Ok(owner) => {
                            tracing::info!(%owner, "fault: killed the scaler replica owning the app");
                            let client = sandbox.real().map(crate::real::RealKube::client);
                            takeovers.push((
                                t,
                                owner.clone(),
                                tokio::spawn(takeover(client, owner)),
                            ));
                        }
                        Err(error) => {
                            failure = Some(format!("faults: kill_scaler_owner: {error}"));
                            break;
                        }
                    }
                }
                FaultStep::OwnerBack => {
                    tracing::info!("fault over: the killed scaler replica may start again");
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
                                killed: None,
                                takeover_ms: None,
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
                    live_line(scenario, second, &recorder, sandbox.current())
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
    for (from_s, owner, watch) in takeovers {
        let took = watch.await.ok().flatten();
        fault_records.push(FaultRecord {
            fault: "kill_scaler_owner".into(),
            from_s,
            until_s: from_s + took.map_or(0.0, |d| d.as_secs_f64()),
            packets_dropped: 0,
            killed: Some(owner),
            takeover_ms: took.map(|d| d.as_secs_f64() * 1000.0),
        });
    }
    let history = sandbox.history();
    let requests = sandbox.requests();
    let reports = sandbox.reports();
    let hold = sandbox.hold_counts();
    // Karpenter's launches and the nodes that joined, as seconds since the start of the run.
    let started_wall = std::time::SystemTime::now() - start.elapsed();
    let since_start = |t: std::time::SystemTime| match t.duration_since(started_wall) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    };
    let node_events = sandbox.real().and_then(|r| r.elasticity()).map(|e| {
        let launches: Vec<f64> = e.launched().iter().map(|l| since_start(l.seen)).collect();
        let ready: Vec<f64> = e.joined().iter().map(|j| since_start(j.ready)).collect();
        (launches, ready)
    });
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
        hold,
        failure,
        interrupted,
    });
    result.summary.nodes = node_events.map(|(launches, ready)| {
        report::nodes::figures(&report::nodes::Inputs {
            step_at: result.summary.step_at_s,
            first_scale_patch_ms: result.summary.first_scale_patch_ms,
            enough_capacity_ms: result.summary.enough_capacity_ms,
            launches: &launches,
            ready: &ready,
            end: played,
        })
    });
    // The slowest takeover of the run, if any replica was killed.
    result.summary.takeover_ms = fault_records
        .iter()
        .filter_map(|f| f.takeover_ms)
        .max_by(f64::total_cmp);
    result.faults = fault_records;
    result.kubernetes = options.kube.describe();
    result.autoscaler = options.autoscaler.describe(scenario);
    write_outputs(&mut result, &options.out_dir)?;
    Ok(result)
}

/// One edge of a scenario fault, in time order.
#[derive(Debug, Clone, Copy)]
enum FaultStep {
    KillScaler,
    RestartScaler,
    /// SIGKILL the owner of the app's SurgeScaler; the node restarts it after the duration.
    KillScalerOwner(Duration),
    OwnerBack,
    DropReports,
    DeliverReports,
}

/// From now until a replica other than `killed` holds the app's shard Lease, as the API
/// server has it (polled every 20 ms, for at most a minute); `None` if none did.
async fn takeover(client: Option<kube::Client>, killed: String) -> Option<Duration> {
    let client = client?;
    let since = Instant::now();
    while since.elapsed() < Duration::from_secs(60) {
        if let Some(holder) = crate::real::target_owner(&client, NAMESPACE, WORKLOAD).await
            && holder != killed
        {
            return Some(since.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
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

fn live_line(
    scenario: &Scenario,
    second: u64,
    recorder: &Recorder,
    counts: Option<PodCounts>,
) -> String {
    let stats = recorder
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(second as usize)
        .cloned()
        .unwrap_or_default();
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
