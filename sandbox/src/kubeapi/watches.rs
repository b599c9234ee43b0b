//! The fault hook on watch streams: every watch registers while it is served, so a test can
//! list the open ones and cut them (all now, or the next `n` as they start), the way an API
//! server restart or a broken connection would.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
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

struct WatchSlot {
    id: u64,
    info: OpenWatch,
    cut: oneshot::Sender<WatchCut>,
}

/// The open watches and the cuts asked for.
#[derive(Default)]
pub(super) struct Watches {
    next_id: AtomicU64,
    open: Mutex<Vec<WatchSlot>>,
    /// Watches still to be cut as soon as they start, and how.
    pending: Mutex<Option<(usize, WatchCut)>>,
}

/// A poisoned lock still guards consistent data here (every critical section is one push,
/// drain or retain), so a panicked holder does not stop the API.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Watches {
    /// The watch streams being served now, oldest first.
    pub(super) fn open(&self) -> Vec<OpenWatch> {
        lock(&self.open)
            .iter()
            .map(|slot| slot.info.clone())
            .collect()
    }

    /// Cuts every watch open now; returns how many.
    pub(super) fn cut_open(&self, how: WatchCut) -> usize {
        let slots: Vec<WatchSlot> = lock(&self.open).drain(..).collect();
        let count = slots.len();
        for slot in slots {
            // A watch that ended meanwhile dropped its receiver: nothing left to cut.
            let _ = slot.cut.send(how);
        }
        count
    }

    /// Cuts each of the next `n` watches as it starts (replacing an earlier such request).
    pub(super) fn cut_next(&self, n: usize, how: WatchCut) {
        *lock(&self.pending) = (n > 0).then_some((n, how));
    }

    /// Takes one from the pending cuts, if any are left.
    fn take_pending(&self) -> Option<WatchCut> {
        let mut pending = lock(&self.pending);
        let (left, how) = pending.as_mut()?;
        *left -= 1;
        let how = *how;
        if *left == 0 {
            *pending = None;
        }
        Some(how)
    }
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
        lock(&self.shared.watches.open).retain(|slot| slot.id != self.id);
    }
}

impl Shared {
    /// Registers a watch that is starting; a pending cut (see
    /// [`KubeApi::cut_next_watches`](super::KubeApi::cut_next_watches)) is returned at once
    /// through the ticket.
    pub(super) fn open_watch(self: &Arc<Self>, path: &str, query: &str) -> WatchTicket {
        let id = self.watches.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        match self.watches.take_pending() {
            // Nobody else holds the sender: this watch is cut as soon as it has started.
            Some(how) => {
                let _ = tx.send(how);
            }
            None => {
                lock(&self.watches.open).push(WatchSlot {
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
