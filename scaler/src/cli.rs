//! The command line: `surge-scaler run` and `surge-scaler crd`. Every `run` flag has an
//! environment fallback so the Helm chart can configure the scaler through `env:` alone.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::window::SourceLimits;

/// Surge's scaler: ingests proxy reports and writes replica counts to scale subresources.
#[derive(Debug, Parser)]
#[command(name = "surge-scaler", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
// Parsed once at start: the size of the `Run` variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the scaler: ingest listener, admin listener and the controller.
    Run(RunArgs),
    /// Print the SurgeScaler CustomResourceDefinition as YAML.
    Crd,
}

/// Flags of `surge-scaler run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Address of the report ingest listener (`POST /v1/reports`).
    #[arg(long, env = "SURGE_INGEST_ADDR", default_value = "0.0.0.0:8080")]
    pub ingest_addr: SocketAddr,
    /// Address of the admin listener (`/metrics`, `/healthz`, `/readyz`).
    #[arg(long, env = "SURGE_ADMIN_ADDR", default_value = "0.0.0.0:9090")]
    pub admin_addr: SocketAddr,
    /// File holding the bearer token reports must carry (trailing whitespace ignored).
    #[arg(long, env = "SURGE_TOKEN_FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// The bearer token reports must carry (prefer --token-file: flags show up in `ps`).
    #[arg(long, env = "SURGE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Binding of the report's namespace to the SPIFFE identity in `x-forwarded-client-cert`.
    #[arg(long, env = "SURGE_IDENTITY", value_enum, default_value_t = IdentityMode::WhenPresent)]
    pub identity: IdentityMode,
    /// Log format.
    #[arg(long, env = "SURGE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Watch SurgeScalers in these namespaces only (comma-separated; all namespaces when
    /// unset), one watch each, so that the scaler needs no cluster-wide RBAC.
    #[arg(
        long,
        alias = "watch-namespace",
        env = "SURGE_WATCH_NAMESPACES",
        value_delimiter = ',',
        value_parser = parse_namespace
    )]
    pub watch_namespaces: Vec<String>,
    /// Slow decision tick in milliseconds: how often each target is re-evaluated without new
    /// reports (scale-down, staleness). Surges are decided on ingest, not on this tick.
    #[arg(long, env = "SURGE_TICK_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..=60_000))]
    pub tick_ms: u64,
    /// Timeout of each Kubernetes API request, in milliseconds.
    #[arg(long, env = "SURGE_KUBE_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=120_000))]
    pub kube_timeout_ms: u64,
    /// Least mean time between accepted reports of one proxy instance, in milliseconds;
    /// faster reports are answered 429 with Retry-After (nothing lost: counters are cumulative).
    #[arg(long, env = "SURGE_REPORT_MIN_INTERVAL_MS", default_value_t = 50, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub report_min_interval_ms: u64,
    /// Reports of one instance accepted back to back before --report-min-interval-ms applies.
    #[arg(long, env = "SURGE_REPORT_BURST", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub report_burst: u32,
    /// Proxy instances tracked in all; new ones beyond are answered 503 until some expire.
    #[arg(long, env = "SURGE_MAX_INSTANCES", default_value_t = 50_000)]
    pub max_instances: usize,
    /// Proxy instances tracked per namespace; new ones beyond are answered 503.
    #[arg(
        long,
        env = "SURGE_MAX_INSTANCES_PER_NAMESPACE",
        default_value_t = 20_000
    )]
    pub max_instances_per_namespace: usize,
    /// (instance, route) pairs tracked in all; reports adding more are answered 503.
    #[arg(long, env = "SURGE_MAX_INSTANCE_ROUTES", default_value_t = 500_000)]
    pub max_instance_routes: usize,
    /// Sources one SurgeScaler tracks; new ones beyond are answered 503.
    #[arg(long, env = "SURGE_MAX_SOURCES_PER_TARGET", default_value_t = 10_000)]
    pub max_sources_per_target: usize,
    /// Namespaces whose proxies may send gateway reports (comma-separated; `*` for any). A
    /// gateway report can feed targets in every namespace, so only the gateways' namespaces
    /// should be listed.
    #[arg(
        long,
        env = "SURGE_GATEWAY_NAMESPACES",
        value_delimiter = ',',
        default_value = "istio-system,istio-ingress"
    )]
    pub gateway_namespaces: Vec<String>,
    /// Scale to zero: milliseconds from a cold target's first ready endpoint (in its Service's
    /// EndpointSlices) to the answers no longer listing it cold, so that the callers' proxies
    /// have the endpoint (istiod's EDS lags the EndpointSlice) when their held requests resume.
    #[arg(long, env = "SURGE_WARM_DELAY_MS", default_value_t = crate::controller::DEFAULT_WARM_DELAY_MS, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub warm_delay_ms: u64,
    /// Scale to zero: longest an answer to a report that holds requests for a cold destination
    /// waits for the cold list to change, so that the held requests resume the moment the
    /// target is warm rather than at the proxy's next report. Keep it below the filter's
    /// `timeout_ms` (1000 by default); 0 answers at once.
    #[arg(long, env = "SURGE_ANSWER_WAIT_MS", default_value_t = 250, value_parser = clap::value_parser!(u64).range(0..=5_000))]
    pub answer_wait_ms: u64,
    /// Several replicas: share the targets through Leases in this namespace (the scaler's
    /// own). Unset: this replica runs alone and owns every target.
    #[arg(long, env = "SURGE_LEASE_NAMESPACE", value_parser = parse_namespace)]
    pub lease_namespace: Option<String>,
    /// Prefix of the Lease names, and the value of their `surge.dev/lease-group` label.
    #[arg(long, env = "SURGE_LEASE_GROUP", default_value = "surge-scaler", value_parser = parse_name)]
    pub lease_group: String,
    /// This replica's id among them (its pod name); required with --lease-namespace.
    #[arg(long, env = "SURGE_REPLICA_ID", value_parser = parse_name)]
    pub replica_id: Option<String>,
    /// How long a replica's hold on a shard lasts without renewal: the longest a target goes
    /// without a writer when its owner dies (renewed every quarter of it).
    #[arg(long, env = "SURGE_LEASE_DURATION_SECONDS", default_value_t = 4, value_parser = clap::value_parser!(u64).range(2..=60))]
    pub lease_duration_seconds: u64,
    /// Number of shards the targets are split into (the same on every replica).
    #[arg(long, env = "SURGE_SHARDS", default_value_t = crate::shard::DEFAULT_SHARDS, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub shards: u32,
    /// Address of the listener for reports mirrored by the other replicas.
    #[arg(long, env = "SURGE_PEER_ADDR", default_value = "0.0.0.0:8081")]
    pub peer_addr: SocketAddr,
    /// Where the other replicas reach this one's peer listener (default: `http://` the pod IP
    /// and the --peer-addr port).
    #[arg(long, env = "SURGE_PEER_URL")]
    pub peer_url: Option<String>,
    /// This replica's pod IP (the chart sets it from `status.podIP`).
    #[arg(long, env = "SURGE_POD_IP")]
    pub pod_ip: Option<std::net::IpAddr>,
    /// File holding the token replicas present to each other; required with --lease-namespace.
    #[arg(long, env = "SURGE_PEER_TOKEN_FILE")]
    pub peer_token_file: Option<PathBuf>,
}

/// A namespace name as the API server accepts it: an RFC 1123 label (spaces around it are
/// dropped, as `--gateway-namespaces` drops them).
fn parse_namespace(value: &str) -> Result<String, String> {
    parse_label(value).ok_or_else(|| {
        "not a namespace name (lowercase letters, digits and '-', at most 63, starting and \
         ending with a letter or digit)"
            .to_owned()
    })
}

/// A replica id or Lease group: an RFC 1123 label, as a pod name from a Deployment is (it
/// goes into Lease names).
fn parse_name(value: &str) -> Result<String, String> {
    parse_label(value).ok_or_else(|| {
        "not an RFC 1123 label (lowercase letters, digits and '-', at most 63, starting and \
         ending with a letter or digit)"
            .to_owned()
    })
}

fn parse_label(value: &str) -> Option<String> {
    let value = value.trim();
    let valid = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    valid.then(|| value.to_owned())
}

impl RunArgs {
    /// The namespaces allowed to send gateway reports; `None` for any (`*`).
    pub fn gateway_namespaces(&self) -> Option<Vec<String>> {
        let names: Vec<String> = self
            .gateway_namespaces
            .iter()
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect();
        (!names.iter().any(|n| n == "*")).then_some(names)
    }

    /// The namespaces to watch, each once (empty: all). A repeated name would run two watches
    /// of one namespace, each pruning what the other just added after its relist.
    pub fn watch_namespaces(&self) -> Vec<String> {
        let mut names = self.watch_namespaces.clone();
        names.sort();
        names.dedup();
        names
    }

    /// The per-source limits the flags describe.
    pub fn source_limits(&self) -> SourceLimits {
        SourceLimits {
            min_report_interval_ms: self.report_min_interval_ms,
            report_burst: self.report_burst,
            max_instances: self.max_instances,
            max_instances_per_namespace: self.max_instances_per_namespace,
            max_instance_routes: self.max_instance_routes,
            max_sources_per_target: self.max_sources_per_target,
        }
    }

    /// The slow decision tick.
    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.tick_ms)
    }

    /// Where the other replicas reach this one: --peer-url, else the pod IP and the peer port.
    pub fn advertised_peer_url(&self) -> Option<String> {
        self.peer_url.clone().or_else(|| {
            let ip = self.pod_ip?;
            Some(format!(
                "http://{}",
                SocketAddr::new(ip, self.peer_addr.port())
            ))
        })
    }
}

/// How `x-forwarded-client-cert` binds a report to a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IdentityMode {
    /// Ignore the header.
    Off,
    /// When the header is present, its SPIFFE namespace must equal `proxy.namespace`.
    WhenPresent,
    /// The header must be present and its SPIFFE namespace must equal `proxy.namespace`.
    Required,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_defaults_match_the_team_contract() {
        let cli = Cli::try_parse_from(["surge-scaler", "run"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("expected run")
        };
        assert_eq!(args.ingest_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(args.admin_addr.to_string(), "0.0.0.0:9090");
        assert_eq!(args.identity, IdentityMode::WhenPresent);
        assert_eq!(args.log_format, LogFormat::Text);
        assert_eq!(args.source_limits(), SourceLimits::default());
        assert_eq!(args.warm_delay_ms, 500);
        assert_eq!(args.answer_wait_ms, 250);
        assert_eq!(
            args.gateway_namespaces(),
            Some(vec!["istio-system".to_owned(), "istio-ingress".to_owned()])
        );
        let any =
            Cli::try_parse_from(["surge-scaler", "run", "--gateway-namespaces", "*"]).unwrap();
        let Command::Run(any) = any.command else {
            panic!("expected run")
        };
        assert_eq!(any.gateway_namespaces(), None);
    }

    #[test]
    fn watch_namespaces_take_a_list_and_name_the_flag_of_a_bad_one() {
        let parse = |args: &[&str]| {
            let mut all = vec!["surge-scaler", "run"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all).map(|cli| match cli.command {
                Command::Run(run) => run.watch_namespaces,
                _ => panic!("expected run"),
            })
        };
        assert_eq!(parse(&[]).unwrap(), Vec::<String>::new());
        assert_eq!(
            parse(&["--watch-namespaces", "web,shop"]).unwrap(),
            vec!["web".to_owned(), "shop".to_owned()]
        );
        // The flag's earlier, singular spelling still works.
        assert_eq!(
            parse(&["--watch-namespace", "web"]).unwrap(),
            vec!["web".to_owned()]
        );
        // Repeated (the chart's flag and one in extraArgs): watched once each, sorted.
        let cli = Cli::try_parse_from([
            "surge-scaler",
            "run",
            "--watch-namespaces=web, shop",
            "--watch-namespace=web",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else {
            panic!("expected run")
        };
        assert_eq!(run.watch_namespaces(), ["shop", "web"]);
        for bad in ["Web", "web,", "-web", "a_b", &"x".repeat(64)] {
            let flag = format!("--watch-namespaces={bad}");
            let error = parse(&[&flag]).unwrap_err().to_string();
            assert!(
                error.contains("--watch-namespaces") && error.contains("not a namespace name"),
                "{bad:?}: {error}"
            );
        }
    }

    #[test]
    fn identity_and_log_format_parse_their_documented_spellings() {
        let cli = Cli::try_parse_from([
            "surge-scaler",
            "run",
            "--identity",
            "required",
            "--log-format",
            "json",
            "--token",
            "t",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("expected run")
        };
        assert_eq!(args.identity, IdentityMode::Required);
        assert_eq!(args.log_format, LogFormat::Json);
        assert_eq!(args.token.as_deref(), Some("t"));
    }

    #[test]
    fn sharing_is_off_by_default_and_the_peer_url_follows_the_pod_ip() {
        let parse = |args: &[&str]| {
            let mut all = vec!["surge-scaler", "run"];
            all.extend_from_slice(args);
            match Cli::try_parse_from(all).unwrap().command {
                Command::Run(run) => run,
                _ => panic!("expected run"),
            }
        };
        let alone = parse(&[]);
        assert_eq!(alone.lease_namespace, None);
        assert_eq!(alone.lease_duration_seconds, 4);
        assert_eq!(alone.shards, 8);
        assert_eq!(alone.advertised_peer_url(), None);
        let pod = parse(&["--pod-ip", "10.244.0.7", "--peer-addr", "0.0.0.0:7000"]);
        assert_eq!(
            pod.advertised_peer_url().as_deref(),
            Some("http://10.244.0.7:7000")
        );
        let v6 = parse(&["--pod-ip", "fd00::7"]);
        assert_eq!(
            v6.advertised_peer_url().as_deref(),
            Some("http://[fd00::7]:8081")
        );
        let url = parse(&[
            "--pod-ip",
            "10.0.0.1",
            "--peer-url",
            "http://scaler-0.peers:8081",
        ]);
        assert_eq!(
            url.advertised_peer_url().as_deref(),
            Some("http://scaler-0.peers:8081")
        );
        let error = Cli::try_parse_from(["surge-scaler", "run", "--lease-duration-seconds", "1"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("--lease-duration-seconds"), "{error}");
    }

    #[test]
    fn token_and_token_file_are_exclusive() {
        let err =
            Cli::try_parse_from(["surge-scaler", "run", "--token", "a", "--token-file", "/x"])
                .unwrap_err();
        assert!(err.to_string().contains("cannot be used with"), "{err}");
    }
}
