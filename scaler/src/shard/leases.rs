//! The Lease loop: lists the group's Leases, renews this replica's member Lease, and takes,
//! renews or gives up shard Leases as [`super::plan`] says; tells [`Ownership`] what it holds.
//!
//! ```text
//!  every poll (a quarter second, at most an eighth of the duration):
//!    members live for a Lease duration (warm: they have had the mirrored reports) get shards
//!    LIST leases -l surge.dev/lease-group=<name>  -> Seen (changed_at on this replica's clock)
//!    every renew interval (a quarter of the duration), or at once when a plan step is pending:
//!      member Lease <name>-member-<id>: create or renew (annotation: where peers mirror to)
//!      shard Lease <name>-shard-<s>: PUT with the resourceVersion last seen; 409 = lost the race
//!  on shutdown: stop writing, release every held shard, delete the member Lease
//! ```
//!
//! A shard counts as held from the moment its PUT was *sent* until a duration later, so this
//! replica stops writing (a margin before that, see [`Ownership::owns`]) before any other can
//! see the Lease lapse: the others date a change from when they saw it, which is later.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};
use tokio::sync::watch;

use super::{Ownership, Peer, Seen, Step, candidates, live_members, plan};
use crate::clock::Clock;
use crate::decision::Millis;
use crate::metrics::Metrics;

/// The label that groups one installation's Leases.
pub const GROUP_LABEL: &str = "surge.dev/lease-group";
/// The label that says whether a Lease is a member's or a shard's.
pub const KIND_LABEL: &str = "surge.dev/lease-kind";
/// The member Lease's annotation naming where the replica takes mirrored reports.
pub const PEER_URL_ANNOTATION: &str = "surge.dev/peer-url";
/// A member Lease not renewed for this many durations is deleted (pod names change with every
/// restart, so the Leases of old pods would otherwise pile up).
const FORGET_AFTER_DURATIONS: u64 = 10;

/// How this replica takes part.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Namespace of the Leases (the scaler's own).
    pub namespace: String,
    /// Prefix of the Lease names and value of [`GROUP_LABEL`].
    pub group: String,
    /// This replica's id (its pod name).
    pub id: String,
    /// How long a hold lasts without renewal.
    pub duration: Duration,
    /// Number of shards.
    pub shards: u32,
    /// Where this replica takes mirrored reports, advertised to the others.
    pub peer_url: Option<String>,
}

impl LeaseConfig {
    fn member_name(&self, id: &str) -> String {
        format!("{}-member-{id}", self.group)
    }

    fn shard_name(&self, shard: u32) -> String {
        format!("{}-shard-{shard}", self.group)
    }

    fn duration_ms(&self) -> Millis {
        u64::try_from(self.duration.as_millis()).unwrap_or(u64::MAX)
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    /// How often the Leases are listed: takeover waits at most this long past a lapse.
    fn poll(&self) -> Duration {
        (self.duration / 8).min(Duration::from_millis(250))
    }

    /// How often held Leases are renewed: three renewals can fail before a hold runs out.
    fn renew_every(&self) -> Duration {
        self.duration / 4
    }

    /// The longest wait for one API call. The client's own read timeout is minutes (it also
    /// serves a quiet watch); a replica cut from the API server must keep polling, so that it
    /// recovers at the first answer after the cut heals, and must never be held up at shutdown.
    /// A renewal answered later than this would have come too late to help anyway.
    fn call_timeout(&self) -> Duration {
        self.duration / 2
    }
}

/// Why an API call of the Lease loop failed.
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error(transparent)]
    Api(#[from] kube::Error),
    #[error("no answer from the API server within {0:?}")]
    TimedOut(Duration),
}

impl CallError {
    /// Another replica wrote the Lease since this one read it.
    fn is_conflict(&self) -> bool {
        matches!(self, Self::Api(kube::Error::Api(e)) if e.code == 409)
    }
}

/// `call`, given up after `bound` (what it sent may still land: every write is conditional
/// on a resourceVersion, and the next list says what did).
async fn bounded<T>(
    bound: Duration,
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, CallError> {
    match tokio::time::timeout(bound, call).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(CallError::TimedOut(bound)),
    }
}

/// What one list showed and what this replica holds, across polls.
struct Book {
    /// Per Lease name: its resourceVersion and what it says, as last listed.
    versions: HashMap<String, String>,
    members: HashMap<String, Seen>,
    /// When each member started, on this replica's clock: now less the age of its member
    /// Lease's `acquireTime` when first listed (its warm-up counts from then).
    /// Keyed by member, with the `acquireTime` it was computed from: a process restarted in
    /// the same pod (same id) sets a new one, and its warm-up starts again.
    member_since: HashMap<String, (Option<MicroTime>, Millis)>,
    peer_urls: HashMap<String, String>,
    shards: HashMap<u32, Seen>,
    /// The Lease objects as last listed or written (a write needs the resourceVersion).
    objects: HashMap<String, Lease>,
    /// This process has written its member Lease once.
    member_written: bool,
}

/// Runs until `shutdown` turns true, then gives up what it holds.
pub async fn run(
    client: kube::Client,
    config: LeaseConfig,
    ownership: Arc<Ownership>,
    clock: Clock,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let mut book = Book {
        versions: HashMap::new(),
        members: HashMap::new(),
        member_since: HashMap::new(),
        peer_urls: HashMap::new(),
        shards: HashMap::new(),
        objects: HashMap::new(),
        member_written: false,
    };
    let mut renewed_at: Option<tokio::time::Instant> = None;
    let started = clock.now();
    let warmup = config.duration_ms();
    let mut logged_failure = false;
    loop {
        let listed = list(&api, &config, &mut book, clock.now()).await;
        // Unanswered: writes now would only wait behind it, and the holds run out on their own.
        let unreachable = matches!(listed, Err(CallError::TimedOut(_)));
        match listed {
            Ok(()) => logged_failure = false,
            Err(error) => {
                if !logged_failure {
                    tracing::warn!(%error, "could not list the scaler Leases; holds run out unless renewed");
                }
                logged_failure = true;
            }
        }
        let now = clock.now();
        let others = live_members(&config.id, now, &book.members);
        ownership.set_peers(
            others
                .iter()
                .filter_map(|id| {
                    let url = book.peer_urls.get(id)?;
                    Some(Peer {
                        id: id.clone(),
                        url: url.clone(),
                    })
                })
                .collect(),
        );
        book.member_since
            .retain(|id, _| book.members.contains_key(id));
        let since: Vec<(String, Millis)> = others
            .iter()
            .map(|id| {
                (
                    id.clone(),
                    book.member_since.get(id).map_or(now, |(_, since)| *since),
                )
            })
            .collect();
        let (include_me, candidates) = candidates(started, &since, now, warmup);
        let steps = plan(
            &config.id,
            include_me,
            now,
            config.shards,
            &candidates,
            &book.shards,
        );
        let renew_due = renewed_at.is_none_or(|t| t.elapsed() >= config.renew_every());
        let urgent = steps.iter().any(|(_, s)| *s != Step::Renew);
        if (renew_due || urgent) && !unreachable {
            renewed_at = Some(tokio::time::Instant::now());
            renew_member(&api, &config, &mut book).await;
            for (shard, step) in steps {
                if step == Step::Renew && !renew_due {
                    continue;
                }
                apply(&api, &config, &mut book, &ownership, &clock, shard, step).await;
            }
        }
        // Shards this replica no longer holds per the list (another took them): stop writing.
        for shard in 0..config.shards {
            let mine = book
                .shards
                .get(&shard)
                .and_then(|s| s.holder.as_deref())
                .is_some_and(|h| h == config.id);
            if !mine {
                ownership.hold(shard, None);
            }
        }
        metrics.shards_held(ownership.held().len());
        forget_old_members(&api, &config, &book, clock.now()).await;
        tokio::select! {
            _ = shutdown.changed() => break,
            () = tokio::time::sleep(config.poll()) => {}
        }
    }
    give_up(&api, &config, &mut book, &ownership).await;
    metrics.shards_held(0);
}

async fn list(
    api: &Api<Lease>,
    config: &LeaseConfig,
    book: &mut Book,
    now: Millis,
) -> Result<(), CallError> {
    let params = ListParams::default().labels(&format!("{GROUP_LABEL}={}", config.group));
    let leases = bounded(config.call_timeout(), api.list(&params)).await?;
    let mut members = HashMap::new();
    let mut shards = HashMap::new();
    let mut objects = HashMap::new();
    let mut peer_urls = HashMap::new();
    for lease in leases {
        let Some(name) = lease.metadata.name.clone() else {
            continue;
        };
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        let member_id = name
            .strip_prefix(&format!("{}-member-", config.group))
            .map(str::to_owned);
        let shard = shard_index(config, &name);
        let previous = match (&member_id, shard) {
            (Some(id), _) => book.members.get(id),
            (None, Some(shard)) => book.shards.get(&shard),
            (None, None) => None,
        };
        let unchanged = book.versions.get(&name) == Some(&version);
        let spec = lease.spec.clone().unwrap_or_default();
        let seen = Seen {
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            changed_at: match previous {
                Some(previous) if unchanged => previous.changed_at,
                _ => now,
            },
            duration_ms: u64::try_from(spec.lease_duration_seconds.unwrap_or(1).max(1))
                .unwrap_or(1)
                * 1000,
        };
        book.versions.insert(name.clone(), version);
        if let Some(shard) = shard {
            shards.insert(shard, seen);
        } else if let Some(id) = member_id {
            if let Some(url) = lease
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(PEER_URL_ANNOTATION))
            {
                peer_urls.insert(id.clone(), url.clone());
            }
            // Its age by the time its holder created it (another machine's clock: a skew of a
            // second or so only shifts the warm-up by as much).
            let age_ms = spec
                .acquire_time
                .as_ref()
                .map(|t| Timestamp::now().duration_since(t.0).as_millis().max(0))
                .and_then(|ms| u64::try_from(ms).ok())
                .unwrap_or(0);
            let known = book
                .member_since
                .get(&id)
                .is_some_and(|(acquired, _)| *acquired == spec.acquire_time);
            if !known {
                book.member_since.insert(
                    id.clone(),
                    (spec.acquire_time.clone(), now.saturating_sub(age_ms)),
                );
            }
            members.insert(id, seen);
        }
        objects.insert(name, lease);
    }
    book.members = members;
    book.shards = shards;
    book.objects = objects;
    book.peer_urls = peer_urls;
    Ok(())
}

fn shard_index(config: &LeaseConfig, name: &str) -> Option<u32> {
    name.strip_prefix(&format!("{}-shard-", config.group))?
        .parse()
        .ok()
}

fn labels(config: &LeaseConfig, kind: &str) -> BTreeMap<String, String> {
    [
        (GROUP_LABEL.to_owned(), config.group.clone()),
        (KIND_LABEL.to_owned(), kind.to_owned()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "surge-scaler".to_owned(),
        ),
    ]
    .into()
}

fn now_micro() -> MicroTime {
    MicroTime(Timestamp::now())
}

async fn renew_member(api: &Api<Lease>, config: &LeaseConfig, book: &mut Book) {
    let name = config.member_name(&config.id);
    let mut lease = book.objects.get(&name).cloned().unwrap_or_else(|| Lease {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(config.namespace.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            acquire_time: Some(now_micro()),
            ..LeaseSpec::default()
        }),
    });
    lease.metadata.labels = Some(labels(config, "member"));
    if let Some(url) = &config.peer_url {
        lease
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(PEER_URL_ANNOTATION.to_owned(), url.clone());
    }
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    spec.holder_identity = Some(config.id.clone());
    spec.lease_duration_seconds = Some(config.duration_seconds());
    spec.renew_time = Some(now_micro());
    if !book.member_written {
        // A container restarted in the same pod finds its old Lease: its warm-up (and the
        // others' view of its age) starts again with this process, whose window is empty.
        spec.acquire_time = Some(now_micro());
    }
    let written = write(api, config, &name, lease).await;
    match written {
        Ok(lease) => {
            book.member_written = true;
            book.objects.insert(name, lease);
        }
        Err(error) => {
            book.objects.remove(&name);
            tracing::debug!(%error, "member Lease not renewed");
        }
    }
}

/// Creates the Lease when it has no resourceVersion yet, else replaces it (409 when another
/// replica wrote it since).
async fn write(
    api: &Api<Lease>,
    config: &LeaseConfig,
    name: &str,
    lease: Lease,
) -> Result<Lease, CallError> {
    let bound = config.call_timeout();
    if lease.metadata.resource_version.is_some() {
        bounded(bound, api.replace(name, &PostParams::default(), &lease)).await
    } else {
        bounded(bound, api.create(&PostParams::default(), &lease)).await
    }
}

async fn apply(
    api: &Api<Lease>,
    config: &LeaseConfig,
    book: &mut Book,
    ownership: &Ownership,
    clock: &Clock,
    shard: u32,
    step: Step,
) {
    let name = config.shard_name(shard);
    let mut lease = book.objects.get(&name).cloned().unwrap_or_else(|| Lease {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(config.namespace.clone()),
            labels: Some(labels(config, "shard")),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec::default()),
    });
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    match step {
        Step::Acquire => {
            spec.holder_identity = Some(config.id.clone());
            spec.acquire_time = Some(now_micro());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        Step::Renew => {}
        Step::Release => {
            // Stop writing first: the Lease is the other replica's the moment this lands.
            ownership.hold(shard, None);
            spec.holder_identity = None;
        }
    }
    spec.lease_duration_seconds = Some(config.duration_seconds());
    spec.renew_time = Some(now_micro());
    let sent_at = clock.now();
    match write(api, config, &name, lease).await {
        Ok(lease) => {
            let holder = lease.spec.as_ref().and_then(|s| s.holder_identity.clone());
            book.versions.insert(
                name.clone(),
                lease.metadata.resource_version.clone().unwrap_or_default(),
            );
            book.shards.insert(
                shard,
                Seen {
                    holder: holder.clone(),
                    changed_at: sent_at,
                    duration_ms: config.duration_ms(),
                },
            );
            book.objects.insert(name, lease);
            if step != Step::Release {
                if step == Step::Acquire {
                    tracing::info!(shard, "took the shard Lease");
                }
                ownership.hold(shard, Some(sent_at.saturating_add(config.duration_ms())));
            } else {
                tracing::info!(
                    shard,
                    "gave the shard Lease up to the replica that should hold it"
                );
            }
        }
        Err(error) => {
            // Lost a race (409) or could not reach the API server: the next list says who
            // holds it; a hold not renewed runs out on its own.
            book.objects.remove(&name);
            if step == Step::Renew {
                tracing::warn!(shard, %error, "could not renew the shard Lease");
            } else {
                tracing::debug!(shard, ?step, %error, "shard Lease not written");
            }
            if error.is_conflict() {
                ownership.hold(shard, None);
            }
        }
    }
}

/// Deletes member Leases not renewed for [`FORGET_AFTER_DURATIONS`] durations (only if
/// unchanged since listed).
async fn forget_old_members(api: &Api<Lease>, config: &LeaseConfig, book: &Book, now: Millis) {
    let prefix = format!("{}-member-", config.group);
    for (name, lease) in &book.objects {
        if !name.starts_with(&prefix) || name == &config.member_name(&config.id) {
            continue;
        }
        let Some(seen) = book.members.get(&name[prefix.len()..]) else {
            continue;
        };
        if now < seen.changed_at + seen.duration_ms * FORGET_AFTER_DURATIONS {
            continue;
        }
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: lease.metadata.resource_version.clone(),
                uid: None,
            }),
            ..DeleteParams::default()
        };
        if bounded(config.call_timeout(), api.delete(name, &params))
            .await
            .is_ok()
        {
            tracing::info!(
                lease = name,
                "deleted the member Lease of a replica long gone"
            );
        }
    }
}

/// On shutdown: stops writing, releases every held shard (the others take them at their next
/// poll instead of after a duration) and deletes the member Lease.
async fn give_up(api: &Api<Lease>, config: &LeaseConfig, book: &mut Book, ownership: &Ownership) {
    let held: Vec<u32> = (0..config.shards)
        .filter(|s| {
            book.shards
                .get(s)
                .and_then(|seen| seen.holder.as_deref())
                .is_some_and(|h| h == config.id)
        })
        .collect();
    for shard in &held {
        ownership.hold(*shard, None);
    }
    let releases = held.iter().filter_map(|shard| {
        let name = config.shard_name(*shard);
        let mut lease = book.objects.get(&name)?.clone();
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.holder_identity = None;
        spec.renew_time = Some(now_micro());
        Some(async move {
            bounded(
                config.call_timeout(),
                api.replace(&name, &PostParams::default(), &lease),
            )
            .await
        })
    });
    let released = futures::future::join_all(releases).await;
    let member = config.member_name(&config.id);
    let _ = bounded(
        config.call_timeout(),
        api.delete(&member, &DeleteParams::default()),
    )
    .await;
    tracing::info!(
        released = released.iter().filter(|r| r.is_ok()).count(),
        "gave up the shard Leases"
    );
}
