//! The embedded API's reads that span objects: lists and watches, with their label and field
//! selectors, bookmarks and the fault hook's cuts.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::resources::ResourceType;
use super::server::{Reply, Target, ok};
use super::status::ApiError;
use super::store::ChangeKind;
use super::{Shared, WatchCut};

/// How long a watch runs when the client gives no `timeoutSeconds`.
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// `labelSelector` (`k=v`, `k==v`, `k!=v`, `k`, `!k`, comma-separated) and `fieldSelector`
/// (`metadata.name`, `metadata.namespace`).
struct Selectors {
    labels: Vec<(String, Option<(bool, String)>)>,
    fields: Vec<(String, bool, String)>,
}

impl Selectors {
    fn parse(query: &HashMap<String, String>) -> Self {
        let labels = query
            .get("labelSelector")
            .map(|s| {
                s.split(',')
                    .filter(|t| !t.is_empty())
                    .map(|term| {
                        if let Some((k, v)) = term.split_once("!=") {
                            (k.trim().to_string(), Some((false, v.trim().to_string())))
                        } else if let Some((k, v)) =
                            term.split_once("==").or_else(|| term.split_once('='))
                        {
                            (k.trim().to_string(), Some((true, v.trim().to_string())))
                        } else if let Some(k) = term.strip_prefix('!') {
                            (k.trim().to_string(), Some((false, String::new())))
                        } else {
                            (term.trim().to_string(), None)
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let fields = query
            .get("fieldSelector")
            .map(|s| {
                s.split(',')
                    .filter_map(|term| {
                        if let Some((k, v)) = term.split_once("!=") {
                            Some((k.to_string(), false, v.to_string()))
                        } else {
                            let (k, v) = term.split_once("==").or_else(|| term.split_once('='))?;
                            Some((k.to_string(), true, v.to_string()))
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self { labels, fields }
    }

    fn matches(&self, obj: &Value) -> bool {
        let label = |k: &str| {
            obj.pointer("/metadata/labels")
                .and_then(|l| l.get(k))
                .and_then(Value::as_str)
        };
        let labels_ok = self.labels.iter().all(|(k, want)| match want {
            None => label(k).is_some(),
            Some((true, v)) => label(k) == Some(v.as_str()),
            Some((false, v)) if v.is_empty() => label(k).is_none(),
            Some((false, v)) => label(k) != Some(v.as_str()),
        });
        let fields_ok = self.fields.iter().all(|(k, eq, v)| {
            let path = format!("/{}", k.replace('.', "/"));
            let actual = obj.pointer(&path).and_then(Value::as_str).unwrap_or("");
            (actual == v) == *eq
        });
        labels_ok && fields_ok
    }
}

pub(super) fn list(
    shared: &Arc<Shared>,
    target: &Target,
    query: &HashMap<String, String>,
) -> Result<Reply, ApiError> {
    let selectors = Selectors::parse(query);
    let (items, rv) = shared.store.list(target.ty, target.namespace.as_deref());
    let items: Vec<Value> = items.into_iter().filter(|o| selectors.matches(o)).collect();
    ok(json!({
        "apiVersion": target.ty.api_version(),
        "kind": format!("{}List", target.ty.kind),
        "metadata": {"resourceVersion": rv.to_string()},
        "items": items,
    }))
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn bookmark(ty: &ResourceType, rv: u64, initial_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event_line(
        "BOOKMARK",
        &json!({"apiVersion": ty.api_version(), "kind": ty.kind, "metadata": metadata}),
    )
}

/// A watch: one JSON event per line over a chunked response, from `resourceVersion` on (or a
/// synthetic ADDED per existing object first, when it is unset, "0", or `sendInitialEvents`
/// is asked), with BOOKMARKs when `allowWatchBookmarks` is set, until `timeoutSeconds` or until
/// the fault hook cuts it ([`super::KubeApi::cut_watches`]).
pub(super) fn watch(
    shared: &Arc<Shared>,
    target: &Target,
    path: &str,
    raw_query: &str,
    query: &HashMap<String, String>,
) -> Reply {
    // Items are results so that a cut can break the response mid-stream (an error item makes
    // hyper drop the connection without the last chunk).
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(256);
    let mut ticket = shared.open_watch(path, raw_query);
    let shared = Arc::clone(shared);
    let ty = target.ty;
    let namespace = target.namespace.clone();
    let selectors = Selectors::parse(query);
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true" || v == "1");
    let send_initial = query.get("sendInitialEvents").is_some_and(|v| v == "true");
    let rv_param = query.get("resourceVersion").cloned().unwrap_or_default();
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_WATCH_TIMEOUT);
    let bookmark_every = shared.options.bookmark_interval;
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changed = shared.store.subscribe();
        let mut cursor = if send_initial || rv_param.is_empty() || rv_param == "0" {
            let (items, rv) = shared.store.list(ty, namespace.as_deref());
            for item in items.iter().filter(|o| selectors.matches(o)) {
                if tx.send(Ok(event_line("ADDED", item))).await.is_err() {
                    return;
                }
            }
            if send_initial && tx.send(Ok(bookmark(ty, rv, true))).await.is_err() {
                return;
            }
            rv
        } else {
            match rv_param.parse::<u64>() {
                Ok(rv) => rv,
                Err(_) => {
                    let status =
                        ApiError::bad_request(format!("invalid resourceVersion {rv_param:?}"));
                    let _ = tx.send(Ok(event_line("ERROR", &status.to_status()))).await;
                    return;
                }
            }
        };
        let mut ticker =
            tokio::time::interval_at(tokio::time::Instant::now() + bookmark_every, bookmark_every);
        loop {
            // A cut asked for before this point wins over any change made after it, so a
            // change made right after `cut_watches` returns never goes out on the cut stream.
            if let Ok(how) = ticket.cut.try_recv() {
                end_cut(&tx, how).await;
                return;
            }
            let latest = shared.store.resource_version();
            match shared.store.changes_since(ty, namespace.as_deref(), cursor) {
                Err(status) => {
                    let _ = tx.send(Ok(event_line("ERROR", &status.to_status()))).await;
                    return;
                }
                Ok(changes) => {
                    for change in changes {
                        cursor = cursor.max(change.rv);
                        if !selectors.matches(&change.object) {
                            continue;
                        }
                        let kind = match change.kind {
                            ChangeKind::Added => "ADDED",
                            ChangeKind::Modified => "MODIFIED",
                            ChangeKind::Deleted => "DELETED",
                        };
                        if tx.send(Ok(event_line(kind, &change.object))).await.is_err() {
                            return;
                        }
                    }
                }
            }
            cursor = cursor.max(latest);
            tokio::select! {
                biased;
                cut = &mut ticket.cut => {
                    if let Ok(how) = cut {
                        end_cut(&tx, how).await;
                    }
                    return;
                }
                res = changed.changed() => if res.is_err() { return },
                _ = ticker.tick() => {
                    if bookmarks && tx.send(Ok(bookmark(ty, cursor, false))).await.is_err() {
                        return;
                    }
                }
                () = tokio::time::sleep_until(deadline) => return,
                () = tx.closed() => return,
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Reply::Stream(Body::from_stream(stream))
}

/// Ends a cut watch: `Abort` breaks the response (an error item makes hyper drop the
/// connection without the last chunk); `Close` only stops sending, so the response ends.
async fn end_cut(tx: &mpsc::Sender<Result<Bytes, std::io::Error>>, how: WatchCut) {
    if how == WatchCut::Abort {
        let _ = tx
            .send(Err(std::io::Error::other("watch cut by the fault hook")))
            .await;
    }
}
