//! The ready endpoints of a scale-to-zero target's Service, followed through its EndpointSlices
//! (`discovery.k8s.io/v1`, label `kubernetes.io/service-name=<service>`, in the target's
//! namespace: a list, then a watch), and handed to the hub as the callers' proxies likely see
//! them: a first ready endpoint only after the warm delay ([`crate::zero::Readiness`]).
//!
//! ```text
//!  watcher(EndpointSlices of the Service) --> ready endpoints per slice --> total
//!    --> Readiness (warm delay) --> hub.set_ready_endpoints --> cold list; wake the loop
//! ```
//!
//! An endpoint counts when `conditions.ready` is true, or unset (the API's "unknown, read as
//! ready", as kube-proxy and Istio read it). Until the first list the endpoints are unknown,
//! which never makes a target cold.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::task::JoinHandle;

use super::Context;
use crate::hub::{TargetKey, Wake};
use crate::metrics::Operation;
use crate::zero::Readiness;

/// Ready endpoints of one slice.
pub(super) fn ready_in(slice: &EndpointSlice) -> usize {
    slice
        .endpoints
        .iter()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .count()
}

/// The HTTP status inside a watcher error, when the API answered one.
fn error_code(error: &watcher::Error) -> String {
    let status = match error {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some(s.code),
        watcher::Error::WatchError(s) => Some(s.code),
        _ => None,
    };
    status.map_or_else(|| "error".to_owned(), |c| c.to_string())
}

/// Follows Service `service`'s EndpointSlices for target `key` until aborted.
pub(super) fn follow(
    ctx: Arc<Context>,
    key: TargetKey,
    service: String,
    wake: Arc<Wake>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let slices: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &key.namespace);
        let config =
            watcher::Config::default().labels(&format!("kubernetes.io/service-name={service}"));
        let mut stream = watcher(slices, config).default_backoff().boxed();
        let delay = ctx.warm_delay_ms;
        let mut by_slice: HashMap<String, usize> = HashMap::new();
        let mut listing: Option<HashMap<String, usize>> = None;
        let mut readiness = Readiness::default();
        let mut published: Option<Option<usize>> = None;
        loop {
            let now = ctx.clock.now();
            let settle = readiness.settles_at(now, delay);
            let event = match settle {
                Some(at) => {
                    let wait = std::time::Duration::from_millis(at.saturating_sub(now));
                    tokio::select! {
                        event = stream.next() => event,
                        () = tokio::time::sleep(wait) => {
                            publish(&ctx, &key, &wake, &readiness, &mut published);
                            continue;
                        }
                    }
                }
                None => stream.next().await,
            };
            let Some(event) = event else {
                return;
            };
            let changed = match event {
                Ok(watcher::Event::Apply(slice)) => {
                    by_slice.insert(
                        slice.metadata.name.clone().unwrap_or_default(),
                        ready_in(&slice),
                    );
                    true
                }
                Ok(watcher::Event::Delete(slice)) => {
                    by_slice.remove(slice.metadata.name.as_deref().unwrap_or_default());
                    true
                }
                Ok(watcher::Event::Init) => {
                    listing = Some(HashMap::new());
                    false
                }
                Ok(watcher::Event::InitApply(slice)) => {
                    if let Some(listing) = &mut listing {
                        listing.insert(
                            slice.metadata.name.clone().unwrap_or_default(),
                            ready_in(&slice),
                        );
                    }
                    false
                }
                Ok(watcher::Event::InitDone) => {
                    by_slice = listing.take().unwrap_or_default();
                    true
                }
                Err(error) => {
                    ctx.metrics
                        .api_error(Operation::watch_endpoints, &error_code(&error));
                    tracing::warn!(target = %key, %service, %error,
                        "EndpointSlice watch failed; retrying with backoff");
                    false
                }
            };
            if changed {
                readiness.observe(by_slice.values().sum(), ctx.clock.now());
                publish(&ctx, &key, &wake, &readiness, &mut published);
            }
        }
    })
}

/// Hands the endpoints the proxies see now to the hub, and wakes the target's loop when they
/// changed (its status says whether it is cold).
fn publish(
    ctx: &Context,
    key: &TargetKey,
    wake: &Wake,
    readiness: &Readiness,
    published: &mut Option<Option<usize>>,
) {
    let seen = readiness.seen(ctx.clock.now(), ctx.warm_delay_ms);
    if *published == Some(seen) {
        return;
    }
    *published = Some(seen);
    ctx.hub.set_ready_endpoints(key, seen);
    ctx.metrics.cold_targets(ctx.hub.cold_targets());
    tracing::debug!(target = %key, ready = ?seen, "ready endpoints as the proxies see them");
    wake.change.notify_one();
}
