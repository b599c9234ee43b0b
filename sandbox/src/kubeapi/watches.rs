//! The fault hook on watch streams: every watch registers while it is served, so a test can
//! list the open ones and cut them (all now, or the next `n` as they start), the way an API
//! server restart or a broken connection would.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::oneshot;

use super::Shared;

/// How [`KubeApi::cut_watches`](super::KubeApi::cut_watches) ends a watch stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchCut {
    /// The response ends normally (the last chunk is sent), as when `timeoutSeconds` runs out
    /// or an API server drains: the client sees the stream end and watches again.
    Close,
    /// The connection breaks mid-response (no last chunk), as a network cut or an API server
    /// that dies looks to the client: reading the stream fails.
    Abort,
}

/// A watch stream being served.
#[derive(Debug, Clone)]
pub struct OpenWatch {
    /// The request path (the collection watched).
    pub path: String,
    /// The raw query (with `resourceVersion`, `allowWatchBookmarks`, ...).
    pub query: String,
    /// When it started.
    pub since: Instant,
}

pub(super) struct WatchSlot {
    id: u64,
    pub(super) info: OpenWatch,
    pub(super) cut: oneshot::Sender<WatchCut>,
}

/// The open watches and the cuts asked for.
#[derive(Default)]
pub(super) struct Watches {
    next_id: AtomicU64,
    pub(super) open: Mutex<Vec<WatchSlot>>,
    /// Watches still to be cut as soon as they start, and how.
    pub(super) pending: Mutex<Option<(usize, WatchCut)>>,
}

/// A watch's registration; leaves the open list when the watch ends.
pub(super) struct WatchTicket {
    shared: Arc<Shared>,
    id: u64,
    /// Fires when the watch must be cut.
    pub(super) cut: oneshot::Receiver<WatchCut>,
}

impl Drop for WatchTicket {
    fn drop(&mut self) {
        let mut open = self
            .shared
            .watches
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        open.retain(|slot| slot.id != self.id);
    }
}

impl Shared {
    /// Registers a watch that is starting; a pending cut (see
    /// [`KubeApi::cut_next_watches`](super::KubeApi::cut_next_watches)) is returned at once
    /// through the ticket.
    pub(super) fn open_watch(self: &Arc<Self>, path: &str, query: &str) -> WatchTicket {
        let id = self.watches.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let pending = {
            let mut pending = self
                .watches
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match pending.as_mut() {
                Some((left, how)) if *left > 0 => {
                    *left -= 1;
                    let how = *how;
                    if *left == 0 {
                        *pending = None;
                    }
                    Some(how)
                }
                _ => None,
            }
        };
        match pending {
            // Nobody else holds the sender: this watch is cut as soon as it has started.
            Some(how) => {
                let _ = tx.send(how);
            }
            None => {
                let mut open = self.watches.open.lock().unwrap_or_else(|e| e.into_inner());
                open.push(WatchSlot {
                    id,
                    info: OpenWatch {
                        path: path.to_string(),
                        query: query.to_string(),
                        since: Instant::now(),
                    },
                    cut: tx,
                });
            }
        }
        WatchTicket {
            shared: Arc::clone(self),
            id,
            cut: rx,
        }
    }
}
