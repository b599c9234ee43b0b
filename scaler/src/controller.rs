//! The Kubernetes side: watch SurgeScalers, and for each one run a loop that reads the target's
//! `scale`, decides, writes `spec.replicas` through the scale subresource, and reports in
//! `status` and Events.
//!
//! ```text
//!  watcher(SurgeScaler) --apply--> register in Hub, start/update TargetLoop
//!                       --delete-> stop TargetLoop, unregister
//!  TargetLoop: wake on (report that can move the answer | slow tick | spec change)
//!     conflict check (HPA / KEDA ScaledObject on the same target: refuse)
//!     scale known? else GET .../scale
//!     Hub::observe -> decision::decide
//!       -> PATCH .../scale {"metadata":{"resourceVersion":RV},"spec":{"replicas":N}}
//!          409 (changed since read): GET .../scale, decide again (at most 3 in a row)
//!     Event SuccessfulRescale (or FailedRescale, FailedGetScale), PATCH .../surgescalers/x/status
//! ```
//!
//! A loop never writes the whole Deployment, only its scale, under the field manager
//! `surge-scaler`, and only with the resourceVersion of the scale it decided on, so it never
//! overwrites a change it has not seen (an operator's `kubectl scale`). API failures are
//! counted, shown in the `AbleToScale` condition and one Warning Event per distinct failure,
//! and retried on the next wake-up with a fresh decision rather than by replaying an old one.
//!
//! A target with scale to zero (`zero.rs`) also has its Service's EndpointSlices followed
//! (`endpoints.rs`, one watch per target, started and stopped with it), and its loop decides
//! with the idle clock and the held demand; an activation report wakes it as a surge does.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::crd::{SurgeScaler, SurgeScalerStatus};
use crate::decision::{Decision, DecisionState, Millis, Policy};
use crate::hub::{Selector, TargetKey, Wake};
use crate::metrics::Operation;
use crate::window::WindowConfig;

pub use context::{ApiError, Context};
use headroom::HeadroomLoop;
pub use scale::ScaleView;
use status::{Able, Write, writer};
use waypoint::WaypointLoop;
use zero::ZeroLoop;

/// The field manager of every write.
pub const FIELD_MANAGER: &str = "surge-scaler";

/// How often a loop re-checks for a conflicting HPA or ScaledObject.
const CONFLICT_RECHECK: Duration = Duration::from_secs(30);
/// How often a loop re-reads the target's scale (someone else may have changed it).
const SCALE_REFRESH: Duration = Duration::from_secs(5);
/// Least time between two decisions woken by metric changes (surge reports do not wait):
/// coalesces the wake-ups of thousands of reports a second into a bounded decision rate.
const MIN_DECISION_GAP: Duration = Duration::from_millis(10);
/// Writes refused in a row because the scale changed since it was read (409) that a step
/// answers at once with a fresh read and decision; after the last one the step gives up (status
/// and a Warning Event say so) and the next wake-up starts over with a fresh read.
const MAX_CONFLICTS_IN_A_ROW: u32 = 3;
/// Status is rewritten at least this often while values change (observed metric).
const STATUS_REFRESH: Duration = Duration::from_secs(10);
/// How long after a scale-to-zero target's first endpoint turns ready the answers stop listing
/// it cold, by default (`--warm-delay-ms`): the proxies learn endpoints from istiod's EDS,
/// after its debounce (100 ms by default) and push, and a request resumed before its proxy has
/// an endpoint gets Envoy's 503 "no healthy upstream", which Istio's default retries do not
/// retry.
pub const DEFAULT_WARM_DELAY_MS: Millis = 500;

/// Watches SurgeScalers until `shutdown` turns true, then stops every loop after its in-flight
/// writes. `namespaces` empty: one watch over the whole cluster; else one watch per namespace,
/// so that the scaler needs no cluster-wide grant (the chart's `watchNamespaces`). `ready` is
/// set once every watch's first full list has been seen.
pub async fn run(
    ctx: Arc<Context>,
    namespaces: Vec<String>,
    ready: Arc<AtomicBool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.into_iter().map(Some).collect()
    };
    let streams = scopes.iter().enumerate().map(|(index, scope)| {
        let api: Api<SurgeScaler> = match scope {
            Some(ns) => Api::namespaced(ctx.client.clone(), ns),
            None => Api::all(ctx.client.clone()),
        };
        watcher(api, watcher::Config::default())
            .default_backoff()
            .map(move |event| (index, event))
            .boxed()
    });
    let mut stream = futures::stream::select_all(streams);
    let mut loops: HashMap<TargetKey, LoopHandle> = HashMap::new();
    let mut followed: HashMap<TargetKey, Followed> = HashMap::new();
    // Per watch: the keys its current (re)list has shown, and whether a list has completed.
    let mut listed: Vec<HashSet<TargetKey>> = vec![HashSet::new(); scopes.len()];
    let mut synced = vec![false; scopes.len()];
    loop {
        let (index, event) = tokio::select! {
            _ = shutdown.changed() => break,
            next = stream.next() => match next {
                Some(next) => next,
                None => break,
            },
        };
        match event {
            Ok(watcher::Event::Apply(scaler)) => {
                upsert(&ctx, &mut loops, &mut followed, scaler, &shutdown);
            }
            Ok(watcher::Event::InitApply(scaler)) => {
                if let Some(key) = key_of(&scaler) {
                    listed[index].insert(key);
                }
                upsert(&ctx, &mut loops, &mut followed, scaler, &shutdown);
            }
            Ok(watcher::Event::Delete(scaler)) => {
                if let Some(key) = key_of(&scaler) {
                    remove(&ctx, &mut loops, &mut followed, &key);
                }
            }
            Ok(watcher::Event::Init) => listed[index].clear(),
            Ok(watcher::Event::InitDone) => {
                // Anything of this watch's scope not in its fresh list was deleted while the
                // watch was down; the other watches' targets are theirs to prune.
                let gone =
                    gone_after_relist(loops.keys(), scopes[index].as_deref(), &listed[index]);
                for key in gone {
                    remove(&ctx, &mut loops, &mut followed, &key);
                }
                synced[index] = true;
                if synced.iter().all(|s| *s) {
                    ready.store(true, Ordering::Release);
                }
            }
            Err(error) => {
                ctx.metrics.api_error(Operation::watch, "error");
                let namespace = scopes[index].as_deref().unwrap_or("*");
                tracing::warn!(%error, namespace, "SurgeScaler watch failed; retrying with backoff");
            }
        }
    }
    for (_, follow) in followed.drain() {
        follow.task.abort();
    }
    // Loops see the same shutdown signal; wait for each to finish its in-flight writes.
    for (_, handle) in loops.drain() {
        let _ = handle.join.await;
    }
}

/// The targets a watch's completed (re)list shows deleted: those of its scope (one namespace,
/// or all for `None`) that the list did not contain. Another watch's targets are never among
/// them, so one namespace's relist cannot stop the loops of another.
fn gone_after_relist<'a>(
    running: impl Iterator<Item = &'a TargetKey>,
    scope: Option<&str>,
    listed: &HashSet<TargetKey>,
) -> Vec<TargetKey> {
    running
        .filter(|k| scope.is_none_or(|ns| k.namespace == ns))
        .filter(|k| !listed.contains(*k))
        .cloned()
        .collect()
}

struct LoopHandle {
    spec: watch::Sender<Arc<SurgeScaler>>,
    join: JoinHandle<()>,
}

/// The EndpointSlice watch of a scale-to-zero target's Service.
struct Followed {
    service: String,
    task: JoinHandle<()>,
}

fn key_of(scaler: &SurgeScaler) -> Option<TargetKey> {
    Some(TargetKey {
        namespace: scaler.namespace()?,
        name: scaler.name_any(),
    })
}

fn window_config(scaler: &SurgeScaler) -> WindowConfig {
    let spec = &scaler.spec;
    WindowConfig {
        stable_ms: u64::from(spec.windows.stable_seconds.clamp(1, 600)) * 1000,
        panic_ms: u64::from(spec.windows.panic_seconds.clamp(1, 600)) * 1000,
        stale_ms: u64::from(spec.stale_after_seconds.max(1)) * 1000,
    }
}

fn upsert(
    ctx: &Arc<Context>,
    loops: &mut HashMap<TargetKey, LoopHandle>,
    followed: &mut HashMap<TargetKey, Followed>,
    scaler: SurgeScaler,
    shutdown: &watch::Receiver<bool>,
) {
    let Some(key) = key_of(&scaler) else {
        return;
    };
    let config = window_config(&scaler);
    let wake = ctx.hub.register(
        &key,
        Selector::from_spec(&key.namespace, &scaler.spec),
        scaler.spec.metric.type_,
        config,
    );
    ctx.hub.set_scale_to_zero(
        &key,
        zero::destination(&key.namespace, &scaler.spec),
        config.stale_ms,
    );
    // One EndpointSlice watch per scale-to-zero target, restarted when its Service changes.
    let service = zero::scale_to_zero(&scaler.spec).map(|z| z.service.clone());
    if followed
        .get(&key)
        .is_some_and(|f| Some(&f.service) != service.as_ref())
        && let Some(stale) = followed.remove(&key)
    {
        stale.task.abort();
    }
    if let Some(service) = service
        && !followed.contains_key(&key)
    {
        let task = endpoints::follow(
            Arc::clone(ctx),
            key.clone(),
            service.clone(),
            Arc::clone(&wake),
        );
        followed.insert(key.clone(), Followed { service, task });
    }
    let scaler = Arc::new(scaler);
    if let Some(handle) = loops.get(&key)
        && !handle.join.is_finished()
    {
        handle.spec.send_replace(scaler);
        return;
    }
    let (spec_tx, spec_rx) = watch::channel(Arc::clone(&scaler));
    let target = TargetLoop::new(Arc::clone(ctx), key.clone(), scaler, wake);
    let join = tokio::spawn(target.run(spec_rx, shutdown.clone()));
    loops.insert(
        key,
        LoopHandle {
            spec: spec_tx,
            join,
        },
    );
}

fn remove(
    ctx: &Context,
    loops: &mut HashMap<TargetKey, LoopHandle>,
    followed: &mut HashMap<TargetKey, Followed>,
    key: &TargetKey,
) {
    if let Some(handle) = loops.remove(key) {
        // Dropping the sender ends the loop after its current step.
        drop(handle.spec);
    }
    if let Some(follow) = followed.remove(key) {
        follow.task.abort();
    }
    ctx.hub.unregister(key);
    ctx.metrics.forget(key);
}

/// One SurgeScaler's decision loop.
pub struct TargetLoop {
    ctx: Arc<Context>,
    key: TargetKey,
    scaler: Arc<SurgeScaler>,
    policy: Policy,
    wake: Arc<Wake>,
    state: DecisionState,
    scale: Option<ScaleView>,
    scale_read_at: Option<Instant>,
    conflict: Option<String>,
    conflict_checked_at: Option<Instant>,
    target_missing: Option<String>,
    last_status: Option<SurgeScalerStatus>,
    status_written_at: Option<Instant>,
    last_scale_time: Option<Time>,
    stale_announced: bool,
    last_decision: Option<Decision>,
    /// What the last read or write of the scale showed (the `AbleToScale` condition).
    able: Option<Able>,
    /// Scale to zero, when the spec has it on.
    zero: Option<ZeroLoop>,
    /// Headroom, once the spec has it on and a step sized it.
    headroom: Option<HeadroomLoop>,
    /// Ambient mode: the waypoint serving the target's Service.
    waypoint: WaypointLoop,
    writes: tokio::sync::mpsc::Sender<Write>,
    writer: Option<JoinHandle<()>>,
    /// Whether this replica owned the target at the last step (see [`crate::shard`]); `None`
    /// before the first.
    owned: Option<bool>,
}

impl TargetLoop {
    /// A loop for `scaler`, starting fail-static (in panic, holding the current scale).
    pub fn new(
        ctx: Arc<Context>,
        key: TargetKey,
        scaler: Arc<SurgeScaler>,
        wake: Arc<Wake>,
    ) -> Self {
        let now = ctx.clock.now();
        let last_scale_time = scaler
            .status
            .as_ref()
            .and_then(|s| s.last_scale_time.clone());
        let (writes, queue) = tokio::sync::mpsc::channel(256);
        let writer = tokio::spawn(writer(
            Arc::clone(&ctx),
            key.clone(),
            scaler.object_ref(&()),
            queue,
        ));
        Self {
            policy: Policy::from_spec(&scaler.spec),
            zero: ZeroLoop::new(&scaler.spec, scaler.status.as_ref()),
            headroom: None,
            waypoint: WaypointLoop::default(),
            ctx,
            key,
            scaler,
            wake,
            state: DecisionState::after_restart(now),
            scale: None,
            scale_read_at: None,
            conflict: None,
            conflict_checked_at: None,
            target_missing: None,
            last_status: None,
            status_written_at: None,
            last_scale_time,
            stale_announced: false,
            last_decision: None,
            able: None,
            writes,
            writer: Some(writer),
            owned: None,
        }
    }

    /// Runs until the spec channel closes (resource deleted) or `shutdown` turns true.
    pub async fn run(
        mut self,
        mut spec: watch::Receiver<Arc<SurgeScaler>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(self.ctx.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let wake = Arc::clone(&self.wake);
        let mut ownership = self.ctx.ownership.changes();
        let mut last_step: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                // A shard gained (act on what the window holds at once) or lost (stop writing).
                _ = ownership.changed() => {}
                changed = spec.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let scaler = Arc::clone(&spec.borrow_and_update());
                    self.update_spec(scaler);
                }
                () = wake.surge.notified() => {}
                () = wake.change.notified() => {
                    if let Some(due) = last_step.map(|t| t + MIN_DECISION_GAP)
                        && tokio::time::Instant::now() < due
                    {
                        tokio::select! {
                            () = tokio::time::sleep_until(due) => {}
                            () = wake.surge.notified() => {}
                        }
                    }
                }
                _ = tick.tick() => {}
            }
            last_step = Some(tokio::time::Instant::now());
            // A step is never cancelled half-way: a PATCH in flight completes before the loop
            // looks at the shutdown signal again.
            self.step().await;
        }
        self.finish().await;
    }

    /// Closes the write queue and waits until the queued Events and status are written.
    pub async fn finish(mut self) {
        let writer = self.writer.take();
        drop(self);
        if let Some(writer) = writer {
            let _ = writer.await;
        }
    }

    fn update_spec(&mut self, scaler: Arc<SurgeScaler>) {
        let generation_changed = scaler.metadata.generation != self.scaler.metadata.generation;
        self.policy = Policy::from_spec(&scaler.spec);
        self.zero = ZeroLoop::update(self.zero.take(), &scaler.spec);
        let target_changed = scaler.spec.scale_target_ref != self.scaler.spec.scale_target_ref;
        if scaler.spec.sources.waypoint != self.scaler.spec.sources.waypoint {
            // Another Service (or none): its binding is read at the next step.
            self.waypoint = WaypointLoop::default();
        }
        if generation_changed || target_changed {
            self.conflict_checked_at = None;
            self.scale = None;
            self.target_missing = None;
        }
        if target_changed {
            // What the old target's scale showed says nothing about the new one.
            self.able = None;
        }
        self.scaler = scaler;
    }

    /// One pass: conflicts, scale, decision, patch, events, status. A write refused because
    /// the scale changed since it was read (409) is followed at once by a fresh read and a
    /// fresh decision, up to `MAX_CONFLICTS_IN_A_ROW` times.
    pub async fn step(&mut self) {
        if !self.follow_ownership() {
            self.observe_only().await;
            return;
        }
        // Conflicts first: a target driven by another autoscaler is never written.
        if !self.check_conflicts().await {
            return;
        }
        let due = self
            .scale_read_at
            .is_none_or(|t| t.elapsed() >= SCALE_REFRESH);
        if (self.scale.is_none() || due) && !self.read_scale().await {
            self.publish_replicas();
            self.write_status(None).await;
            return;
        }
        self.refresh_destination().await;
        let mut conflicts = 0;
        loop {
            let Some(scale) = self.scale.clone() else {
                return;
            };
            let now = self.ctx.clock.now();
            let (decision, observation, sources) = self.decide(&scale, now);
            self.announce_stale(&decision).await;
            if decision.desired != scale.replicas && !self.ctx.ownership.owns(&self.key) {
                // The shard's Lease ran out during this step: another replica may hold it now.
                return;
            }
            if decision.desired == scale.replicas {
                self.scale_needs_no_write();
            } else {
                match self.write_scale(&scale, &decision, &observation, now).await {
                    Ok(()) => {}
                    Err(error) if error.code() == Some(409) => {
                        conflicts += 1;
                        if conflicts < MAX_CONFLICTS_IN_A_ROW {
                            // The scale changed since it was read (another writer, or the
                            // Deployment controller's status update after the last write):
                            // read it again and decide on what it is now.
                            tracing::debug!(target = %self.key, desired = decision.desired, conflicts, "scale changed since read; re-reading");
                            if !self.read_scale().await {
                                self.write_status(None).await;
                                return;
                            }
                            continue;
                        }
                        tracing::warn!(target = %self.key, %error, conflicts, "scale changed before each write; waiting for the next wake-up");
                        self.scale_write_failed(&decision, &observation, &error, conflicts)
                            .await;
                    }
                    Err(error) => {
                        tracing::warn!(target = %self.key, %error, desired = decision.desired, "scale patch failed");
                        self.scale_write_failed(&decision, &observation, &error, 0)
                            .await;
                    }
                }
            }
            self.sync_headroom(now).await;
            self.publish_replicas();
            self.write_status(Some((observation, sources))).await;
            // After the write: a read of the Service (every 30 s) never delays a scale-up.
            self.refresh_waypoint().await;
            return;
        }
    }
}

impl TargetLoop {
    /// Whether this replica owns the target now. A target it has just taken over starts as
    /// after a restart: fail-static (no scale-down on a history this replica did not decide
    /// on), a fresh read of the scale, and a fresh status; a surge is acted on at once.
    fn follow_ownership(&mut self) -> bool {
        let owns = self.ctx.ownership.owns(&self.key);
        let owned = self.owned.unwrap_or(false);
        if owns && !owned && self.ctx.ownership.is_sharded() {
            tracing::info!(target = %self.key, "took the target over");
        }
        // A loop's first step starts fresh anyway (`TargetLoop::new`); a regained one must.
        if owns && self.owned == Some(false) {
            self.state = DecisionState::after_restart(self.ctx.clock.now());
            self.scale_read_at = None;
            self.conflict_checked_at = None;
            self.last_status = None;
            self.status_written_at = None;
            self.stale_announced = false;
            self.last_decision = None;
            self.restart_idle_clock();
            // The buffer is written again by this replica: another may have changed it.
            self.headroom = None;
        } else if !owns && owned {
            tracing::info!(target = %self.key, "the target is another replica's now");
        }
        if self.owned != Some(owns) {
            self.ctx.metrics.owned(&self.key, owns);
        }
        self.owned = Some(owns);
        owns
    }

    /// A step of a target another replica owns: keep the scale and the destination current
    /// (the answers to the proxies list cold destinations whichever replica answers), decide
    /// and write nothing.
    async fn observe_only(&mut self) {
        let due = self
            .scale_read_at
            .is_none_or(|t| t.elapsed() >= SCALE_REFRESH);
        if self.scale.is_none() || due {
            self.read_scale().await;
        }
        self.refresh_destination().await;
        self.refresh_waypoint().await;
        self.publish_replicas();
    }
}

mod context;
mod decide;
mod endpoints;
mod headroom;
mod scale;
mod status;
#[cfg(test)]
mod tests;
mod waypoint;
mod zero;
