//! A closed-loop load generator for the scaler's ingest: many distinct proxy instances, each
//! with strictly increasing `seq` and growing counters, so every report takes the full path
//! (decode, validate, counters, windows) rather than the duplicate fast path.
//!
//! ```text
//! cargo run --release -p surge-scaler --example ingest_load -- \
//!     --url http://127.0.0.1:8080/v1/reports --instances 2000 --routes 4 --seconds 10
//! ```
//!
//! Instance ids carry the generator's start time, so a second run is new traffic, not a replay.
//! `--url` may be given more than once: connection `c` goes to the `c mod n`-th, as a Service
//! spreads connections over its endpoints (the scaler's replicas).
//!
//! Prints one JSON line: reports sent, seconds, reports/s, latency p50/p99/max in microseconds,
//! and the count of non-200 answers. Runs on one thread so it can be pinned to one core.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

struct Args {
    urls: Vec<String>,
    token: Option<String>,
    connections: usize,
    instances: usize,
    routes: usize,
    seconds: f64,
    namespace: String,
    workloads: usize,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        urls: Vec::new(),
        token: None,
        connections: 32,
        instances: 2000,
        routes: 4,
        seconds: 10.0,
        namespace: "bench".into(),
        workloads: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag}: missing value"))?;
        let number = |v: &str| v.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--url" => args.urls.push(value),
            "--token" => args.token = Some(value),
            "--connections" => args.connections = number(&value)?.max(1),
            "--instances" => args.instances = number(&value)?.max(1),
            "--routes" => args.routes = number(&value)?.max(1),
            "--seconds" => args.seconds = value.parse().map_err(|e| format!("{flag}: {e}"))?,
            "--namespace" => args.namespace = value,
            "--workloads" => args.workloads = number(&value)?.max(1),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if args.urls.is_empty() {
        args.urls.push("http://127.0.0.1:8080/v1/reports".into());
    }
    Ok(args)
}

fn report(args: &Args, instance: usize, seq: u64, start_ms: u64) -> String {
    let workload = format!("app-{}", instance % args.workloads);
    let routes: Vec<String> = (0..args.routes)
        .map(|r| {
            let requests = seq * (10 + r as u64);
            format!(
                r#"{{"route":"route-{r}","cluster":"inbound|8080||","requests_total":{requests},"errors_total":0,"duration_us_total":{},"inflight":{}}}"#,
                requests * 1500,
                r % 4
            )
        })
        .collect();
    format!(
        r#"{{"version":1,"proxy":{{"namespace":"{ns}","workload":"{workload}","pod":"{workload}-{instance}","owner":"kubernetes://apis/apps/v1/namespaces/{ns}/deployments/{workload}","role":"sidecar"}},"instance":"{workload}-{instance}/{start_ms}","seq":{seq},"time_ms":{},"surge":false,"routes":[{}]}}"#,
        start_ms + seq * 1000,
        routes.join(","),
        ns = args.namespace,
    )
}

async fn connection(
    args: &Args,
    index: usize,
    deadline: Instant,
    start_ms: u64,
) -> Result<(Vec<u32>, u64), String> {
    let url = &args.urls[index % args.urls.len()];
    let uri: hyper::Uri = url.parse().map_err(|e| format!("--url: {e}"))?;
    let authority = uri.authority().ok_or("--url: no host")?.to_string();
    let stream = tokio::net::TcpStream::connect(&authority)
        .await
        .map_err(|e| format!("connect {authority}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::task::spawn_local(async move {
        let _ = conn.await;
    });
    // This connection speaks for instances index, index + connections, ...
    let mine: Vec<usize> = (index..args.instances).step_by(args.connections).collect();
    let mut seqs = vec![0u64; mine.len()];
    let mut latencies = Vec::new();
    let mut failures = 0u64;
    let mut i = 0usize;
    while Instant::now() < deadline && !mine.is_empty() {
        let slot = i % mine.len();
        i += 1;
        seqs[slot] += 1;
        let body = report(args, mine[slot], seqs[slot], start_ms);
        let mut request = hyper::Request::post(uri.path())
            .header("host", &authority)
            .header("content-type", "application/json");
        if let Some(token) = &args.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let sent = Instant::now();
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let ok = response.status() == 200;
        let _ = response.into_body().collect().await;
        latencies.push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX));
        if !ok {
            failures += 1;
        }
    }
    Ok((latencies, failures))
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() -> Result<(), String> {
    let args = parse()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let local = tokio::task::LocalSet::new();
    let start_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let args = std::rc::Rc::new(args);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.seconds);
    let results = local.block_on(&runtime, async {
        let tasks: Vec<_> = (0..args.connections)
            .map(|c| {
                let args = std::rc::Rc::clone(&args);
                tokio::task::spawn_local(
                    async move { connection(&args, c, deadline, start_ms).await },
                )
            })
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            all.push(task.await.map_err(|e| e.to_string())?);
        }
        Ok::<_, String>(all)
    })?;
    let elapsed = started.elapsed().as_secs_f64();
    let mut latencies = Vec::new();
    let mut failures = 0;
    let mut errors = Vec::new();
    for result in results {
        match result {
            Ok((l, f)) => {
                latencies.extend(l);
                failures += f;
            }
            Err(e) => errors.push(e),
        }
    }
    latencies.sort_unstable();
    println!(
        "{{\"reports\":{},\"seconds\":{elapsed:.3},\"reports_per_s\":{:.0},\"p50_us\":{},\"p99_us\":{},\"max_us\":{},\"non_200\":{failures},\"connection_errors\":{}}}",
        latencies.len(),
        latencies.len() as f64 / elapsed,
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        latencies.last().copied().unwrap_or(0),
        errors.len(),
    );
    if let Some(e) = errors.first() {
        eprintln!("first connection error: {e}");
    }
    Ok(())
}
