//! Every report a replica accepts is mirrored to the other replicas, so that each replica's
//! hub holds every report whichever replica the Service sent it to: the owner of a target
//! (see [`crate::shard`]) decides on all of its traffic, and a replica that takes a target over
//! has its window warm.
//!
//! ```text
//!  ingest (accepted body, raw bytes) --> per peer: newest body per instance (coalesced)
//!      sender task per peer: POST /v1/peer/reports  [body, body, ...]  (bearer: peer token)
//!  peer: token? -> each body decoded and validated -> Hub::ingest_body_as(rated: false)
//! ```
//!
//! Why mirror everything rather than forward each report to its target's owner only: a
//! report's counters are cumulative and carry a sequence number, so a copy that arrives twice
//! (or at two replicas) counts once, and a copy that is lost only moves its traffic into the
//! instance's next report; a takeover then starts from a full window instead of an empty one,
//! and the receiving replica needs no routing table that could disagree with the owner's. The
//! cost is one extra ingest per report per other replica (the chart runs two), bounded per
//! peer by coalescing: a peer that falls behind gets the newest report of each instance, never
//! a growing queue.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use surge_wire::Limits;
use tokio::sync::Notify;

use crate::clock::Clock;
use crate::hub::Hub;
use crate::ingest::{constant_time_eq, decode};
use crate::metrics::{Metrics, MirrorOutcome};
use crate::shard::{Ownership, Peer};

/// Where replicas take mirrored reports.
pub const PEER_REPORTS_PATH: &str = "/v1/peer/reports";
/// Most instances waiting to be mirrored to one peer; reports of further instances are dropped
/// (and counted) until the peer catches up.
const MAX_PENDING: usize = 20_000;
/// Longest a mirror POST may take.
const POST_TIMEOUT: Duration = Duration::from_secs(2);
/// Most bodies in one POST (a peer's body limit is this many times the report limit).
const MAX_BATCH: usize = 256;

#[derive(Default)]
struct Pending {
    /// Instance -> its newest accepted body, in first-queued order.
    bodies: HashMap<Arc<str>, Bytes>,
    order: Vec<Arc<str>>,
}

struct PeerQueue {
    /// The peer's advertised URL, as listed (what identifies this queue's peer).
    peer_url: String,
    /// Where the batches go: the peer's URL and [`PEER_REPORTS_PATH`].
    url: String,
    pending: Mutex<Pending>,
    wake: Notify,
}

/// Copies accepted reports to the other replicas.
pub struct Mirror {
    ownership: Arc<Ownership>,
    token: Arc<str>,
    metrics: Arc<Metrics>,
    queues: Mutex<HashMap<String, Arc<PeerQueue>>>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Mirror {
    /// A mirror to the peers `ownership` lists, authenticating with `token`.
    pub fn new(ownership: Arc<Ownership>, token: Arc<str>, metrics: Arc<Metrics>) -> Arc<Self> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(POST_TIMEOUT));
        Arc::new(Self {
            ownership,
            token,
            metrics,
            queues: Mutex::new(HashMap::new()),
            client: Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector),
        })
    }

    /// Queues `body` (accepted from `instance`) for every live peer; never waits.
    pub fn send(self: &Arc<Self>, instance: &str, body: &Bytes) {
        let peers = self.ownership.peers();
        if peers.is_empty() {
            return;
        }
        for peer in peers.iter() {
            let queue = self.queue(peer);
            let mut pending = queue.pending.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(slot) = pending.bodies.get_mut(instance) {
                // Cumulative counters: the newer report carries the older one's traffic.
                *slot = body.clone();
            } else if pending.order.len() >= MAX_PENDING {
                self.metrics.mirrored(MirrorOutcome::dropped, 1);
                continue;
            } else {
                let key: Arc<str> = Arc::from(instance);
                pending.order.push(Arc::clone(&key));
                pending.bodies.insert(key, body.clone());
            }
            drop(pending);
            queue.wake.notify_one();
        }
    }

    /// The queue of `peer`, with its sender task started the first time (it ends when the peer
    /// is no longer listed).
    fn queue(self: &Arc<Self>, peer: &Peer) -> Arc<PeerQueue> {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(queue) = queues.get(&peer.id)
            && queue.peer_url == peer.url
        {
            return Arc::clone(queue);
        }
        let queue = Arc::new(PeerQueue {
            peer_url: peer.url.clone(),
            url: format!("{}{PEER_REPORTS_PATH}", peer.url.trim_end_matches('/')),
            pending: Mutex::new(Pending::default()),
            wake: Notify::new(),
        });
        queues.insert(peer.id.clone(), Arc::clone(&queue));
        tokio::spawn(Arc::clone(self).drain(peer.id.clone(), Arc::clone(&queue)));
        queue
    }

    /// Sends `queue`'s bodies as they come, in batches (what piles up during one POST goes in
    /// the next), until the peer is no longer listed or its queue was replaced (it now
    /// advertises another URL).
    async fn drain(self: Arc<Self>, id: String, queue: Arc<PeerQueue>) {
        // Logged when mirroring to the peer starts or stops failing, not at every failure.
        let mut failing = false;
        loop {
            let listed = self
                .ownership
                .peers()
                .iter()
                .any(|p| p.id == id && p.url == queue.peer_url);
            {
                let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
                let current = queues.get(&id).is_some_and(|q| Arc::ptr_eq(q, &queue));
                if !listed || !current {
                    if current {
                        queues.remove(&id);
                    }
                    return;
                }
            }
            let batch = {
                let mut pending = queue.pending.lock().unwrap_or_else(|e| e.into_inner());
                let take = pending.order.len().min(MAX_BATCH);
                let keys: Vec<Arc<str>> = pending.order.drain(..take).collect();
                keys.iter()
                    .filter_map(|k| pending.bodies.remove(k))
                    .collect::<Vec<_>>()
            };
            if batch.is_empty() {
                // Woken by a report, or re-check the peer list now and then.
                let _ = tokio::time::timeout(Duration::from_secs(1), queue.wake.notified()).await;
                continue;
            }
            let count = batch.len() as u64;
            let outcome = match self.post(&queue.url, &batch).await {
                Ok(()) => {
                    if failing {
                        tracing::info!(peer = id, "mirroring reports to the peer works again");
                    }
                    failing = false;
                    MirrorOutcome::sent
                }
                Err(error) => {
                    if !failing {
                        tracing::warn!(peer = id, url = queue.url, %error, "mirroring reports to the peer failed; its counters catch up with each instance's next report");
                    }
                    failing = true;
                    MirrorOutcome::failed
                }
            };
            self.metrics.mirrored(outcome, count);
        }
    }

    async fn post(&self, url: &str, batch: &[Bytes]) -> Result<(), String> {
        let mut body = Vec::with_capacity(batch.iter().map(|b| b.len() + 1).sum::<usize>() + 2);
        body.push(b'[');
        for (i, item) in batch.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(item);
        }
        body.push(b']');
        let request = http::Request::post(url)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(POST_TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let _ = response.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {status}"))
        }
    }
}

/// What the peer listener needs.
#[derive(Clone)]
pub struct PeerState {
    /// Where mirrored reports go.
    pub hub: Arc<Hub>,
    /// The scaler's clock.
    pub clock: Clock,
    /// The token peers present.
    pub token: Arc<str>,
    /// Report limits (each mirrored body is validated again: a peer is trusted with who sent a
    /// report, not with its shape).
    pub limits: Arc<Limits>,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

/// The peer router: `POST /v1/peer/reports`.
pub fn router(state: PeerState) -> Router {
    Router::new()
        .route(PEER_REPORTS_PATH, post(receive))
        .with_state(state)
}

async fn receive(State(state): State<PeerState>, headers: HeaderMap, body: Body) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !constant_time_eq(presented.as_bytes(), state.token.as_bytes()) {
        return (
            StatusCode::UNAUTHORIZED,
            "authorization: wrong peer token\n",
        )
            .into_response();
    }
    let limit = state.limits.max_body_bytes.saturating_mul(MAX_BATCH) + MAX_BATCH + 2;
    let bytes = match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                "body: over the batch limit\n",
            )
                .into_response();
        }
    };
    let items: Vec<&serde_json::value::RawValue> = match serde_json::from_slice(&bytes) {
        Ok(items) => items,
        Err(error) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("body: not a JSON array of reports: {error}\n"),
            )
                .into_response();
        }
    };
    let now = state.clock.now();
    let (mut counted, mut refused) = (0_u64, 0_u64);
    for item in items {
        let body = match decode(item.get().as_bytes()) {
            Ok(body) if body.validate(&state.limits).is_ok() => body,
            _ => {
                refused += 1;
                continue;
            }
        };
        state.hub.ingest_body_as(&body, now, false);
        counted += 1;
    }
    state.metrics.mirrored(MirrorOutcome::received, counted);
    state.metrics.mirrored(MirrorOutcome::refused, refused);
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests;
