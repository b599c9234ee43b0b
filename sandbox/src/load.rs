//! The open-loop load generator: requests are sent on a schedule computed from the scenario's
//! rate, whatever the responses do, and each latency is measured from the request's scheduled
//! send time, so a slow or stalled server cannot hide its queueing (no coordinated omission).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

use crate::pods::Endpoints;

/// Longest a request may take before it counts as an error.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The schedule's resolution.
const TICK: Duration = Duration::from_millis(1);

/// What happened to the requests scheduled in one second. Each request is counted in `sent`
/// when it is scheduled and then once more, by the task that sent it, either in `latencies_us`
/// (answered 2xx) or in `errors`; a request still in flight when the run is cut short is in
/// neither (`report::Outcomes` counts it as unfinished).
#[derive(Debug, Clone, Default)]
pub struct SecondStats {
    /// Requests scheduled.
    pub sent: u64,
    /// Answered otherwise than 2xx, failed, timed out, or had no ready pod.
    pub errors: u64,
    /// Of the errors, those that found no ready pod.
    pub no_endpoint: u64,
    /// Latencies of the requests answered 2xx, microseconds, from the scheduled time (failed
    /// requests are counted in `errors` only, so a fast 503 cannot improve a percentile).
    pub latencies_us: Vec<u64>,
    /// What became of the first request scheduled in the second: its latency (microseconds,
    /// from its scheduled time) and whether it was answered 2xx. The cold start of an app at
    /// zero is its first request's.
    pub first: Option<(u64, bool)>,
    /// When the first request of the second was scheduled, in seconds from the start (at 20 rps
    /// the first request after an idle phase leaves up to 50 ms after the load resumed).
    pub first_at_s: Option<f64>,
}

impl SecondStats {
    /// Requests answered 2xx (one latency each: no separate counter that could disagree).
    pub fn ok(&self) -> u64 {
        self.latencies_us.len() as u64
    }

    /// The `q` quantile (0..=1) of the latencies in milliseconds, if any.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        quantile_us(&self.latencies_us, q).map(|us| us as f64 / 1000.0)
    }
}

/// The `q` quantile of `values` (nearest rank).
pub fn quantile_us(values: &[u64], q: f64) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// Per-second results, indexed by the second of the scheduled send time.
pub type Recorder = Arc<Mutex<Vec<SecondStats>>>;

fn record(recorder: &Recorder, second: usize, f: impl FnOnce(&mut SecondStats)) {
    let mut seconds = recorder.lock().unwrap_or_else(|e| e.into_inner());
    if seconds.len() <= second {
        seconds.resize_with(second + 1, SecondStats::default);
    }
    f(&mut seconds[second]);
}

/// Plays `rate(t)` (requests per second at `t` seconds from `start`) for `duration`, spreading
/// requests round-robin over the ready `endpoints`; returns when every request has finished.
pub async fn play(
    start: Instant,
    duration: Duration,
    rate: impl Fn(f64) -> f64,
    endpoints: Endpoints,
    recorder: Recorder,
) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector);
    let next = Arc::new(AtomicUsize::new(0));
    let mut in_flight = tokio::task::JoinSet::new();
    let mut owed = 0.0_f64;
    let ticks = (duration.as_secs_f64() / TICK.as_secs_f64()).ceil() as u64;
    for tick in 0..ticks {
        let at = start + TICK * tick as u32;
        let t = (at - start).as_secs_f64();
        owed += rate(t) * TICK.as_secs_f64();
        if owed < 1.0 {
            continue;
        }
        tokio::time::sleep_until(at).await;
        while owed >= 1.0 {
            owed -= 1.0;
            let second = t as usize;
            let mut first = false;
            record(&recorder, second, |s| {
                first = s.sent == 0;
                if first {
                    s.first_at_s = Some(t);
                }
                s.sent += 1;
            });
            let target = {
                let eps = endpoints.read().unwrap_or_else(|e| e.into_inner());
                (!eps.is_empty())
                    .then(|| eps[next.fetch_add(1, Ordering::Relaxed) % eps.len()].addr)
            };
            let Some(addr) = target else {
                record(&recorder, second, |s| {
                    s.errors += 1;
                    s.no_endpoint += 1;
                    if first {
                        s.first = Some((0, false));
                    }
                });
                continue;
            };
            let client = client.clone();
            let recorder = Arc::clone(&recorder);
            in_flight.spawn(async move {
                let outcome = tokio::time::timeout(REQUEST_TIMEOUT, async {
                    let uri = format!("http://{addr}/api/work");
                    let request = http::Request::get(uri)
                        .header("host", "app.default.svc.cluster.local")
                        .body(Empty::<Bytes>::new())
                        .map_err(|e| e.to_string())?;
                    let response = client.request(request).await.map_err(|e| e.to_string())?;
                    let status = response.status();
                    // Read the body so the connection goes back to the pool.
                    let _ = response.into_body().collect().await;
                    Ok::<_, String>(status)
                })
                .await;
                let latency = at.elapsed().as_micros() as u64;
                let ok = matches!(outcome, Ok(Ok(status)) if status.is_success());
                record(&recorder, second, |s| {
                    if ok {
                        s.latencies_us.push(latency);
                    } else {
                        s.errors += 1;
                    }
                    if first {
                        s.first = Some((latency, ok));
                    }
                });
            });
        }
        // Reap finished requests now and then so the set stays small.
        while in_flight.try_join_next().is_some() {}
    }
    while in_flight.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile_us(&v, 0.99), Some(99));
        assert_eq!(quantile_us(&v, 0.5), Some(50));
        assert_eq!(quantile_us(&v, 1.0), Some(100));
        assert_eq!(quantile_us(&[], 0.5), None);
    }
}
