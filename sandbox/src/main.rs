//! `surge-sandbox`: run the whole Surge burst path on this machine.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use surge_sandbox::bench::{BenchOptions, bench_reaction};
use surge_sandbox::classic::Autoscaler;
use surge_sandbox::run::{KubeMode, RunOptions, run};
use surge_sandbox::scenario::{DEFAULT_SCENARIO, Scenario};

/// The whole Surge burst path on one machine: real Envoy sidecars with the filter, the real
/// surge-scaler, on a real Kubernetes control plane (or the embedded API).
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Play a scenario (default: the 10x burst) and report.
    Run {
        /// Scenario file (YAML); the built-in burst scenario when absent.
        scenario: Option<PathBuf>,
        /// Output directory (result.json, chart.svg, logs).
        #[arg(long, default_value = "sandbox-out")]
        out: PathBuf,
        /// No per-second progress lines.
        #[arg(long)]
        quiet: bool,
        /// Which Kubernetes: the embedded API (quick, not a Kubernetes) or the real control
        /// plane built by `make tools` (the chart installed with helm, real Pods).
        #[arg(long, value_enum, default_value_t = KubeMode::Real)]
        kube: KubeMode,
        /// Extra `helm install --set KEY=VALUE` for the chart (with `--kube real`).
        #[arg(long = "helm-set", value_name = "KEY=VALUE")]
        helm_set: Vec<String>,
        /// Which autoscaler drives the app: Surge, or the classic chain (Prometheus, KEDA, the
        /// HPA; `make classic-tools` builds it) with the corrected or the seed's literal query.
        #[arg(long, value_enum, default_value_t = Autoscaler::Surge)]
        autoscaler: Autoscaler,
    },
    /// Measure the time from a 10x load step to the first scale PATCH over many runs.
    BenchReaction {
        /// Number of load steps measured.
        #[arg(long, default_value_t = 20)]
        runs: u32,
        /// Scenario providing the pods' model and the SurgeScaler (default: the burst).
        #[arg(long)]
        scenario: Option<PathBuf>,
        /// Base load before each step (rps).
        #[arg(long, default_value_t = 30.0)]
        base_rps: f64,
        /// Load after each step (rps).
        #[arg(long, default_value_t = 300.0)]
        step_rps: f64,
        /// Output directory.
        #[arg(long, default_value = "sandbox-out")]
        out: PathBuf,
        /// Start a new scaler for every run (measures the first seconds after a scaler start)
        /// instead of stepping a running one.
        #[arg(long)]
        fresh_scaler: bool,
        /// Which Kubernetes (see `run --kube`).
        #[arg(long, value_enum, default_value_t = KubeMode::Real)]
        kube: KubeMode,
    },
    /// Measure Surge's part of a cold start (scale to zero and back through the gateway) over
    /// many cycles on the real control plane.
    BenchColdStart {
        /// Number of cold starts measured.
        #[arg(long, default_value_t = 20)]
        runs: u32,
        /// Output directory.
        #[arg(long, default_value = "sandbox-out")]
        out: PathBuf,
        /// Extra `helm install --set KEY=VALUE` for the chart (e.g. `scaler.warmDelayMs=0`).
        #[arg(long = "helm-set", value_name = "KEY=VALUE")]
        helm_set: Vec<String>,
    },
    /// The 10x step with the nodes full, on the real control plane with real Karpenter:
    /// Surge without and with headroom, and the classic chain, interleaved `rounds` times;
    /// writes bench-nodes.md and bench-nodes.json.
    BenchNodes {
        /// Runs of each variant.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Output directory.
        #[arg(long, default_value = "sandbox-out/bench-nodes")]
        out: PathBuf,
    },
    /// Start and stop the real control plane several times; print each stage's time.
    BenchStartup {
        /// Number of starts.
        #[arg(long, default_value_t = 10)]
        runs: u32,
        /// Output directory.
        #[arg(long, default_value = "sandbox-out")]
        out: PathBuf,
    },
    /// Replay the comparison: the classic Prometheus+KEDA+HPA chain, the tutorial's counter
    /// variant, Knative's KPA and Surge's own decision code, simulated on the same traces;
    /// writes compare.md, compare.json and one SVG chart per scenario.
    Compare {
        /// Scenario files (YAML); the built-in comparison set when none.
        scenarios: Vec<PathBuf>,
        /// Output directory.
        #[arg(long, default_value = "sandbox-out/compare")]
        out: PathBuf,
        /// Loop-phase seeds per system and scenario (the table shows medians).
        #[arg(long, default_value_t = surge_sandbox::compare::DEFAULT_SEEDS)]
        seeds: u64,
        /// Also play each scenario in the live sandbox (as long as the scenario, one after the
        /// other) and cross-check the replayed decisions against it: the default for scenario
        /// files given here; the built-in set (eight scenarios of 11-20 minutes) only with it.
        #[arg(long, conflicts_with = "models_only")]
        live: bool,
        /// Only the models and the replay, no live sandbox run.
        #[arg(long)]
        models_only: bool,
        /// Pod start-up delay for every scenario, replacing the files' `pods.startup_delay_ms`
        /// (what-if: faster or slower pods).
        #[arg(long, value_parser = clap::value_parser!(u64).range(0..=600_000))]
        startup_delay_ms: Option<u64>,
    },
    /// Scenarios of the standard set on the real control plane, once under Surge and once
    /// under the real classic chain (Prometheus, KEDA, the HPA), beside the models: the table
    /// and charts of `compare`, measured, plus summary.json and compare-real.md (model against
    /// measurement, issue 15's goals). About an hour for the default four scenarios.
    CompareReal {
        /// A scenario of the standard set (repeatable); by default step-10x, step-3x,
        /// spike-20s and diurnal-noisy.
        #[arg(long = "scenario")]
        scenarios: Vec<String>,
        /// Output directory.
        #[arg(long, default_value = "target/compare-real")]
        out: PathBuf,
        /// Loop-phase seeds of the models.
        #[arg(long, default_value_t = surge_sandbox::compare::DEFAULT_SEEDS)]
        seeds: u64,
        /// Multiplies the load, the per-replica target and the app's concurrency and queue
        /// alike (replica counts unchanged): 600 rps is more than this machine carries.
        #[arg(long, default_value_t = surge_sandbox::compare::real::DEFAULT_LOAD_SCALE)]
        load_scale: f64,
        /// Print one progress line per second of each run.
        #[arg(long)]
        progress: bool,
        /// Reuse the runs an earlier compare-real left in the output folder (same scenarios
        /// and load scale), recomputing the models and the summary only.
        #[arg(long)]
        reuse: bool,
        /// Play only this system (`surge` or `classic`); the other's row comes from an earlier
        /// run in the output folder, or is left out when there is none.
        #[arg(long, value_enum)]
        play: Option<surge_sandbox::classic::Autoscaler>,
    },
    /// Draw `chart.svg` (and `chart.png` when rsvg-convert is installed) again from a
    /// `result.json`, next to it.
    Chart {
        /// A result.json written by `run`.
        result: PathBuf,
    },
    /// Start a real control plane (etcd, kube-apiserver, kube-controller-manager,
    /// kube-scheduler, built by `make tools`) on loopback and keep it until Ctrl-C or SIGTERM,
    /// or until the process that started this one exits. Prints the admin kubeconfig's path.
    Cluster {
        /// Folder for its certificates, kubeconfigs, data, logs and audit log.
        #[arg(long, default_value = "sandbox-out/cluster")]
        dir: PathBuf,
        /// Only etcd and the API server (enough to validate manifests; starts faster).
        #[arg(long)]
        api_only: bool,
    },
    /// Print an Envoy bootstrap shaped like an Istio sidecar or ambient waypoint, on loopback,
    /// with the filter or none (`filter/bench/waypoint.sh` runs them side by side).
    Bootstrap {
        /// `sidecar`: one inbound listener; `waypoint`: `connect_terminate` and the internal
        /// listener `main_internal` with one Service `bench.bench` (VIP 10.96.0.10:8080).
        #[arg(long, value_enum)]
        shape: Shape,
        /// Listener port (the waypoint's `connect_terminate`).
        #[arg(long)]
        listen: u16,
        /// Admin port.
        #[arg(long)]
        admin: u16,
        /// Port of the upstream on 127.0.0.1.
        #[arg(long)]
        upstream: u16,
        /// Port of the scaler (or whatever takes the reports) on 127.0.0.1.
        #[arg(long)]
        scaler: u16,
        /// The filter's .wasm; no filter when absent.
        #[arg(long)]
        wasm: Option<PathBuf>,
        /// The filter's pluginConfig (JSON).
        #[arg(long, default_value = "{}")]
        plugin_config: String,
    },
    /// Check a scenario file and print it back as read.
    Check {
        /// Scenario file (YAML).
        scenario: PathBuf,
    },
}

fn load_scenario(path: Option<&PathBuf>) -> Result<Scenario, String> {
    match path {
        Some(path) => Scenario::from_file(path).map_err(|e| e.to_string()),
        None => Scenario::parse(DEFAULT_SCENARIO).map_err(|e| format!("built-in scenario: {e}")),
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn compare_real(
    names: &[String],
    out_dir: PathBuf,
    seeds: u64,
    load_scale: f64,
    progress: bool,
    reuse: bool,
    play: Option<surge_sandbox::classic::Autoscaler>,
) -> Result<(), String> {
    use surge_sandbox::compare::{real, report};
    let scenarios = real::select(names).map_err(|e| e.to_string())?;
    let options = real::RealOptions {
        out_dir,
        seeds,
        load_scale,
        progress,
        reuse,
        play,
    };
    let (comparison, summary, written) = real::compare_real(&scenarios, &options, shutdown_signal)
        .await
        .map_err(|e| e.to_string())?;
    print!("{}", report::markdown(&comparison));
    print!("\n{}", real::markdown(&summary));
    println!(
        "wrote {} files to {}",
        written.len(),
        options.out_dir.display()
    );
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    eprintln!("stopping (signal received)...");
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SURGE_SANDBOX_LOG")
                // kube's client logs every failed request at ERROR, also the expected ones
                // while a starting API server is polled; the errors that matter are returned.
                .unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new("warn,kube_client::client::builder=off")
                }),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Compare {
            scenarios,
            out,
            seeds,
            live,
            models_only,
            startup_delay_ms,
        } => {
            let play_live = !models_only && (live || !scenarios.is_empty());
            match surge_sandbox::compare::load_scenarios(&scenarios).map(|mut all| {
                if let Some(ms) = startup_delay_ms {
                    for scenario in &mut all {
                        scenario.pods.startup_delay_ms = ms;
                    }
                }
                all
            }) {
                Err(e) => Err(e),
                Ok(scenarios) if play_live => {
                    surge_sandbox::compare::compare_live(&scenarios, seeds, &out, shutdown_signal)
                        .await
                }
                Ok(scenarios) => {
                    let traces: Vec<_> = scenarios
                        .iter()
                        .map(surge_sandbox::compare::scenarios::Trace::from_scenario)
                        .collect();
                    surge_sandbox::compare::compare(&traces, seeds, &out)
                }
            }
            .map(|(comparison, written)| {
                print!("{}", surge_sandbox::compare::report::markdown(&comparison));
                print!("\n{}", surge_sandbox::compare::report::goals(&comparison));
                print!(
                    "{}",
                    surge_sandbox::compare::live::markdown(&comparison.cross_checks)
                );
                println!("wrote {} files to {}", written.len(), out.display());
            })
            .map_err(|e| e.to_string())
        }
        Command::CompareReal {
            scenarios,
            out,
            seeds,
            load_scale,
            progress,
            reuse,
            play,
        } => compare_real(&scenarios, out, seeds, load_scale, progress, reuse, play).await,
        Command::Chart { result } => redraw(&result),
        Command::BenchStartup { runs, out } => {
            match surge_sandbox::bench::bench_startup(runs, &out).await {
                Ok(result) => {
                    let m = result.median;
                    println!(
                        "{runs} starts, medians: {:.2} s in all (certificates {:.3} s, etcd {:.2} s, kube-apiserver {:.2} s, controller-manager and scheduler {:.2} s)",
                        m[4], m[0], m[1], m[2], m[3]
                    );
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            }
        }
        Command::BenchNodes { rounds, out } => {
            match surge_sandbox::bench::nodes::bench_nodes(rounds, &out).await {
                Ok(measured) => {
                    print!("{}", surge_sandbox::bench::nodes::table(&measured));
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            }
        }
        Command::BenchColdStart {
            runs,
            out,
            helm_set,
        } => {
            let bench = surge_sandbox::bench::cold_start::bench_cold_start(
                runs,
                helm_set,
                &out,
                shutdown_signal(),
            );
            match bench.await {
                Ok(b) => {
                    println!(
                        "{} cold starts measured, {} missed, {} cycles not at zero: Surge's part p50 {} ms, p99 {} ms (less the warm app's answer: p50 {} ms, p99 {} ms; to the scale write p50 {} ms, ready endpoint -> answer p50 {} ms); first request p50 {} ms, Kubernetes and the pod p50 {} ms",
                        b.runs.len(),
                        b.missed,
                        b.not_cold,
                        fmt(b.overhead_p50_ms),
                        fmt(b.overhead_p99_ms),
                        fmt(b.overhead_net_p50_ms),
                        fmt(b.overhead_net_p99_ms),
                        fmt(b.to_write_p50_ms),
                        fmt(b.to_answer_p50_ms),
                        fmt(b.latency_p50_ms),
                        fmt(b.kubernetes_p50_ms)
                    );
                    println!("wrote {}/bench-cold-start.json", out.display());
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            }
        }
        Command::Cluster { dir, api_only } => cluster(dir, api_only).await,
        Command::Bootstrap {
            shape,
            listen,
            admin,
            upstream,
            scaler,
            wasm,
            plugin_config,
        } => bootstrap(
            shape,
            (listen, admin, upstream, scaler),
            wasm,
            &plugin_config,
        ),
        Command::Check { scenario } => load_scenario(Some(&scenario)).map(|s| {
            println!("{}", serde_yaml::to_string(&s).unwrap_or_default());
        }),
        Command::Run {
            scenario,
            out,
            quiet,
            kube,
            helm_set,
            autoscaler,
        } => {
            match load_scenario(scenario.as_ref()) {
                Err(e) => Err(e),
                Ok(scenario) => {
                    let options = RunOptions {
                        out_dir: out.clone(),
                        live: !quiet,
                        kube,
                        helm_set,
                        autoscaler,
                    };
                    match run(&scenario, &options, shutdown_signal()).await {
                        Ok(result) => {
                            println!("\n{}", surge_sandbox::report::summary_text(&result));
                            let logs = match kube {
                            KubeMode::Embedded => "{0}/scaler.log, {0}/pods/",
                            KubeMode::Real => "{0}/pods/<pod>/, {0}/cluster/logs/, audit: {0}/cluster/audit.log",
                        }
                        .replace("{0}", &out.display().to_string());
                            println!(
                                "wrote {0}/result.json and {0}/chart.svg (logs: {logs})",
                                out.display()
                            );
                            match &result.failure {
                                Some(f) => Err(f.clone()),
                                None if result.interrupted => Err("interrupted".into()),
                                None => Ok(()),
                            }
                        }
                        Err(e) => Err(e.to_string()),
                    }
                }
            }
        }
        Command::BenchReaction {
            runs,
            scenario,
            base_rps,
            step_rps,
            out,
            fresh_scaler,
            kube,
        } => match load_scenario(scenario.as_ref()) {
            Err(e) => Err(e),
            Ok(scenario) => {
                let options = BenchOptions {
                    runs,
                    base_rps,
                    step_rps,
                    base_seconds: 5.0,
                    step_seconds: 3.0,
                    fresh_scaler,
                };
                tokio::select! {
                    r = bench_reaction(&scenario, &options, &out, kube) => match r {
                        Ok(result) => {
                            println!(
                                "step {base_rps} -> {step_rps} rps, {} runs: first scale PATCH p50 {} ms, p99 {} ms, min {} ms, max {} ms, missed {}; first surge report p50 {} ms",
                                result.runs_ms.len(),
                                fmt(result.p50_ms), fmt(result.p99_ms), fmt(result.min_ms), fmt(result.max_ms),
                                result.missed, fmt(result.surge_report_p50_ms)
                            );
                            Ok(())
                        }
                        Err(e) => Err(e.to_string()),
                    },
                    () = shutdown_signal() => Err("interrupted".into()),
                }
            }
        },
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("surge-sandbox: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The shape of [`Command::Bootstrap`]'s Envoy.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Shape {
    Sidecar,
    Waypoint,
}

fn bootstrap(
    shape: Shape,
    (listen, admin, upstream, scaler): (u16, u16, u16, u16),
    wasm: Option<PathBuf>,
    plugin_config: &str,
) -> Result<(), String> {
    use surge_sandbox::envoy::{Bootstrap, WasmFilter, WaypointBootstrap, WaypointService};
    let loopback = |port| std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let config: serde_json::Value =
        serde_json::from_str(plugin_config).map_err(|e| format!("--plugin-config: {e}"))?;
    let filter = wasm.map(|path| WasmFilter::surge(path, &config));
    let json = match shape {
        Shape::Sidecar => {
            let mut b = Bootstrap::new(loopback(upstream), loopback(scaler))
                .listener_port(listen)
                .admin_port(admin);
            b.filter = filter;
            b.to_json()
        }
        Shape::Waypoint => {
            let service = WaypointService {
                name: "bench".into(),
                namespace: "bench".into(),
                vip: std::net::IpAddr::from([10, 96, 0, 10]),
                port: 8080,
                upstream: loopback(upstream),
                routes: Vec::new(),
            };
            let mut b = WaypointBootstrap::new("bench", vec![service], loopback(scaler));
            b.listener_port = listen;
            b.admin_port = admin;
            b.filter = filter;
            b.to_json()
        }
    };
    use std::io::Write as _;
    writeln!(std::io::stdout(), "{json:#}").map_err(|e| format!("stdout: {e}"))
}

fn redraw(result_path: &std::path::Path) -> Result<(), String> {
    let text = std::fs::read_to_string(result_path)
        .map_err(|e| format!("cannot read {}: {e}", result_path.display()))?;
    let result: surge_sandbox::report::RunResult =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", result_path.display()))?;
    let svg = result_path.with_file_name("chart.svg");
    std::fs::write(&svg, surge_sandbox::chart::render(&result))
        .map_err(|e| format!("cannot write {}: {e}", svg.display()))?;
    println!("wrote {}", svg.display());
    let png = surge_sandbox::run::write_png(&svg, &result_path.with_file_name("chart.png"));
    println!("{}", png.sentence());
    Ok(())
}

/// `surge-sandbox cluster`: a control plane for a script or a person with kubectl.
async fn cluster(dir: PathBuf, api_only: bool) -> Result<(), String> {
    // A script that starts this in the background and is killed takes it along (the components
    // die with this process in turn).
    #[cfg(target_os = "linux")]
    {
        let parent = std::os::unix::process::parent_id();
        // SAFETY: prctl with these arguments only sets a flag of this process.
        let set = unsafe {
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGTERM as libc::c_ulong,
                0,
                0,
                0,
            )
        };
        if set != 0 {
            return Err(format!(
                "cannot tie this process to its parent's life: {}",
                std::io::Error::last_os_error()
            ));
        }
        // The parent may have gone before the flag was set: then no signal will come.
        if std::os::unix::process::parent_id() != parent {
            return Err("the process that started this one is gone".into());
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let mut options = surge_cluster::Options::new(&dir);
    options.controllers = !api_only;
    let plane = tokio::select! {
        plane = surge_cluster::ControlPlane::start(options) => plane.map_err(|e| e.to_string())?,
        () = shutdown_signal() => return Err("interrupted".into()),
    };
    let times = plane.start_times();
    println!("kubeconfig: {}", plane.admin_kubeconfig().display());
    println!(
        "ready in {:.1} s (etcd {:.1} s, kube-apiserver {:.1} s, controllers {:.1} s); Ctrl-C stops it",
        times.total.as_secs_f64(),
        times.etcd.as_secs_f64(),
        times.apiserver.as_secs_f64(),
        times.controllers.as_secs_f64()
    );
    shutdown_signal().await;
    drop(plane);
    Ok(())
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.0}"))
}
