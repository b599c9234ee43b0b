//! Prometheus as the classic chain runs it: built from its module, discovering the workload's Pods
//! through the API server (`kubernetes_sd_configs`, role `pod`) and scraping each one's Envoy
//! stats every 15 s, as the seed's PodMonitor does (port `http-envoy-prom`, path
//! `/stats/prometheus`, the pod's namespace and name as labels).
//!
//! One rewrite is the sandbox's, not the chain's: a pod's address (10.244.c.d) is served on this
//! machine at `127.<octet>.c.d` (`surge_sandbox::node::network`), so the scrape job maps one to the
//! other in its relabelling, as a CNI would route it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use surge_cluster::process::ChildGuard;

use crate::{ClassicError, Result, components, io};

/// The seed's scrape interval.
pub const SCRAPE_INTERVAL_S: u32 = 15;

/// What Prometheus scrapes.
#[derive(Debug, Clone)]
pub struct Scrape {
    /// The kubeconfig Prometheus discovers Pods with.
    pub kubeconfig: PathBuf,
    /// The namespace of the Pods.
    pub namespace: String,
    /// Where the sandbox serves the pod network: `127.<octet>.0.0/16`.
    pub pod_network_octet: u8,
    /// Seconds between scrapes.
    pub interval_s: u32,
}

/// The configuration file's content (Prometheus reads YAML, of which JSON is a subset).
pub fn config(scrape: &Scrape) -> Value {
    let interval = format!("{}s", scrape.interval_s);
    json!({
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [{
            "job_name": "envoy-stats",
            "metrics_path": "/stats/prometheus",
            "kubernetes_sd_configs": [{
                "role": "pod",
                "kubeconfig_file": scrape.kubeconfig.display().to_string(),
                "namespaces": {"names": [scrape.namespace]},
            }],
            "relabel_configs": [
                // The sidecar's stats port, by name, as Istio's PodMonitor selects it.
                {"source_labels": ["__meta_kubernetes_pod_container_port_name"],
                 "action": "keep", "regex": "http-envoy-prom"},
                // Only pods that have an address (a pod scheduled but not started has none).
                {"source_labels": ["__meta_kubernetes_pod_ip"], "action": "keep", "regex": ".+"},
                // 10.244.c.d:port -> 127.<octet>.c.d:port, where the sandbox serves the pod.
                {"source_labels": ["__address__"],
                 "regex": r"10\.244\.(\d+)\.(\d+):(\d+)",
                 "replacement": format!("127.{}.${{1}}.${{2}}:${{3}}", scrape.pod_network_octet),
                 "target_label": "__address__"},
                {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            ],
        }],
    })
}

/// A running Prometheus; stopped when dropped.
#[derive(Debug)]
pub struct Prometheus {
    addr: SocketAddr,
    log: PathBuf,
    _process: ChildGuard,
}

impl Prometheus {
    /// Writes the configuration under `dir` and starts Prometheus on a free loopback port;
    /// returns once it is ready.
    pub async fn start(dir: &Path, scrape: &Scrape) -> Result<Self> {
        let binary = components::prometheus()?;
        std::fs::create_dir_all(dir.join("data"))
            .map_err(io(format!("create {}", dir.display())))?;
        let config_path = dir.join("prometheus.yml");
        let text = serde_json::to_string_pretty(&config(scrape))
            .map_err(|e| ClassicError::Answer(e.to_string()))?;
        std::fs::write(&config_path, text)
            .map_err(io(format!("write {}", config_path.display())))?;
        let port = surge_cluster::free_port().map_err(io("pick a port for Prometheus"))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = dir.join("prometheus.log");
        let args = [
            format!("--config.file={}", config_path.display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address={addr}"),
            "--log.level=info".to_owned(),
        ];
        let process = surge_cluster::launch::start("prometheus", &binary, &args, &log)?;
        let prometheus = Self {
            addr,
            log,
            _process: process,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = get(addr, "/-/ready") {
                return Ok(prometheus);
            }
            if Instant::now() >= deadline {
                return Err(ClassicError::NotReady(format!(
                    "Prometheus was not ready within 30 s; its log: {}\n{}",
                    prometheus.log.display(),
                    surge_cluster::launch::tail(&prometheus.log, 20)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Where it serves (`http://<addr>`: KEDA's `serverAddress`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The value of an instant query with a scalar or one-sample vector answer; `None` for an
    /// empty answer.
    pub fn query(&self, promql: &str) -> Result<Option<f64>> {
        let (status, body) = get(
            self.addr,
            &format!("/api/v1/query?query={}", encode(promql)),
        )?;
        let answer: Value = serde_json::from_slice(&body)
            .map_err(|e| ClassicError::Answer(format!("Prometheus answered {status}: {e}")))?;
        if answer["status"] != "success" {
            return Err(ClassicError::Answer(format!("Prometheus: {answer}")));
        }
        let result = &answer["data"]["result"];
        let value = match answer["data"]["resultType"].as_str() {
            Some("scalar") => result[1].as_str(),
            _ => result.get(0).and_then(|sample| sample["value"][1].as_str()),
        };
        Ok(value.and_then(|v| v.parse().ok()))
    }

    /// The scrape targets that are up (`up == 1`).
    pub fn targets_up(&self) -> Result<usize> {
        let (_, body) = get(self.addr, "/api/v1/targets?state=active")?;
        let answer: Value = serde_json::from_slice(&body)
            .map_err(|e| ClassicError::Answer(format!("Prometheus targets: {e}")))?;
        Ok(answer["data"]["activeTargets"]
            .as_array()
            .map_or(0, |targets| {
                targets.iter().filter(|t| t["health"] == "up").count()
            }))
    }
}

/// Percent-encodes a query parameter (RFC 3986 unreserved characters stay as they are).
pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A plain HTTP/1.0 GET on loopback: status and body.
fn get(addr: SocketAddr, path: &str) -> Result<(u16, Vec<u8>)> {
    let context = format!("GET http://{addr}{path}");
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(io(context.clone()))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(io(context.clone()))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(io(context.clone()))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(io(context.clone()))?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| ClassicError::Answer(format!("{context}: no end of headers")))?;
    let head = String::from_utf8_lossy(&response[..split]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ClassicError::Answer(format!("{context}: no status in {head:?}")))?;
    Ok((status, response[split + 4..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scrape_job_keeps_the_stats_port_and_maps_pod_addresses() {
        let c = config(&Scrape {
            kubeconfig: "/k".into(),
            namespace: "default".into(),
            pod_network_octet: 250,
            interval_s: 15,
        });
        assert_eq!(c["global"]["scrape_interval"], "15s");
        let job = &c["scrape_configs"][0];
        assert_eq!(job["metrics_path"], "/stats/prometheus");
        assert_eq!(job["kubernetes_sd_configs"][0]["role"], "pod");
        assert_eq!(job["kubernetes_sd_configs"][0]["kubeconfig_file"], "/k");
        let relabel = job["relabel_configs"].as_array().unwrap();
        assert_eq!(relabel[0]["regex"], "http-envoy-prom");
        assert_eq!(relabel[2]["replacement"], "127.250.${1}.${2}:${3}");
    }

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(
            encode("sum(rate(x{a=\"b\"}[1m]))"),
            "sum%28rate%28x%7Ba%3D%22b%22%7D%5B1m%5D%29%29"
        );
    }
}
