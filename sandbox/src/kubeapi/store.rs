//! The object store behind the embedded API: objects as JSON, one global resourceVersion
//! counter, and a bounded history of changes for watches.
//!
//! All writes go through [`Store::modify`] or [`Store::create`] under one lock, so a read,
//! a patch and the conflict check happen atomically, as in etcd's compare-and-swap.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::sync::watch;

use super::resources::ResourceType;
use super::status::ApiError;

/// How many changes are kept for watches that resume from an old resourceVersion; older ones
/// are answered with 410 Expired, as etcd compaction does.
const HISTORY_LIMIT: usize = 20_000;

/// What a watch reports about one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// The object was created.
    Added,
    /// The object was changed.
    Modified,
    /// The object was deleted.
    Deleted,
}

impl ChangeKind {
    /// The watch event `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One change in the history.
#[derive(Debug, Clone)]
pub struct Change {
    /// The resourceVersion the change produced.
    pub rv: u64,
    /// The type of the changed object.
    pub ty: &'static ResourceType,
    /// Namespace of the object (empty for cluster-scoped).
    pub namespace: String,
    /// Added, modified or deleted.
    pub kind: ChangeKind,
    /// The object after the change (before it, for deletions, with the new resourceVersion).
    pub object: Value,
}

/// Which part of an object a write addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The object itself (its `status` is kept when the type has a status subresource).
    Main,
    /// The `status` subresource (only `status` changes).
    Status,
    /// The `scale` subresource (an `autoscaling/v1` Scale; only `spec.replicas` changes).
    Scale,
}

#[derive(Default)]
struct Inner {
    /// Structural schemas of custom resources by `plural.group`, for defaulting.
    schemas: BTreeMap<String, Value>,
    rv: u64,
    uid_seq: u64,
    objects: BTreeMap<(String, String, String), Value>,
    history: VecDeque<Change>,
}

/// The store.
pub struct Store {
    inner: Mutex<Inner>,
    rv_tx: watch::Sender<u64>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

fn key(ty: &ResourceType, ns: &str, name: &str) -> (String, String, String) {
    (
        format!("{}/{}", ty.api_version(), ty.plural),
        ns.to_string(),
        name.to_string(),
    )
}

/// Current UTC time as RFC 3339 with seconds, as `metav1.Time` is written.
pub(super) fn now_rfc3339() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(now.as_secs())
}

/// Formats Unix seconds as RFC 3339 UTC (civil-from-days, proleptic Gregorian).
pub(super) fn rfc3339(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let secs = unix_secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn rv_of(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// A DNS-1123 subdomain check, as the real API applies to most names.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
}

/// The `autoscaling/v1` Scale view of a Deployment or StatefulSet.
pub fn scale_view(obj: &Value) -> Value {
    let selector = obj
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|labels| {
            labels
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": obj.pointer("/metadata/name"),
            "namespace": obj.pointer("/metadata/namespace"),
            "uid": obj.pointer("/metadata/uid"),
            "resourceVersion": obj.pointer("/metadata/resourceVersion"),
            "creationTimestamp": obj.pointer("/metadata/creationTimestamp"),
        },
        "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(0))},
        "status": {
            "replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)),
            "selector": selector,
        },
    })
}

/// Everything of an object that its generation follows: `spec` for built-in kinds, all but
/// `metadata` and `status` for custom resources (as the real API does for CRDs).
fn generation_view(ty: &ResourceType, obj: &Value) -> Value {
    if ty.custom {
        let mut view = obj.clone();
        if let Value::Object(map) = &mut view {
            map.remove("metadata");
            map.remove("status");
            map.remove("apiVersion");
            map.remove("kind");
        }
        view
    } else {
        obj.get("spec").cloned().unwrap_or(Value::Null)
    }
}

impl Store {
    /// An empty store at resourceVersion 0... with the first write producing 1.
    pub fn new() -> Self {
        let (rv_tx, _) = watch::channel(0);
        Self {
            inner: Mutex::new(Inner::default()),
            rv_tx,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a custom resource's OpenAPI v3 schema; its `default`s are then applied on every
    /// write, as the real API server does for structural schemas.
    pub fn register_schema(&self, ty: &'static ResourceType, schema: Value) {
        self.lock().schemas.insert(ty.qualified(), schema);
    }

    fn apply_defaults(inner: &Inner, ty: &ResourceType, obj: &mut Value) {
        if let Some(schema) = inner.schemas.get(&ty.qualified()) {
            default_from_schema(schema, obj);
        }
    }

    /// The latest resourceVersion; changes whenever the store does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.rv_tx.subscribe()
    }

    /// The latest resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// One object.
    pub fn get(&self, ty: &'static ResourceType, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.lock()
            .objects
            .get(&key(ty, ns, name))
            .cloned()
            .ok_or_else(|| ApiError::not_found(ty, name))
    }

    /// All objects of a type (in one namespace, or all when `ns` is `None`), with the
    /// resourceVersion the list is consistent with.
    pub fn list(&self, ty: &'static ResourceType, ns: Option<&str>) -> (Vec<Value>, u64) {
        let inner = self.lock();
        let prefix = format!("{}/{}", ty.api_version(), ty.plural);
        let items = inner
            .objects
            .iter()
            .filter(|((t, n, _), _)| *t == prefix && ns.is_none_or(|ns| ns == n))
            .map(|(_, v)| v.clone())
            .collect();
        (items, inner.rv)
    }

    /// Changes of one type after `rv` (optionally in one namespace), or 410 when they are no
    /// longer kept.
    pub fn changes_since(
        &self,
        ty: &'static ResourceType,
        ns: Option<&str>,
        rv: u64,
    ) -> Result<Vec<Change>, ApiError> {
        let inner = self.lock();
        if let Some(oldest) = inner.history.front()
            && rv + 1 < oldest.rv
            && inner.history.len() >= HISTORY_LIMIT
        {
            return Err(ApiError::expired(rv));
        }
        Ok(inner
            .history
            .iter()
            .filter(|c| c.rv > rv && c.ty == ty && ns.is_none_or(|ns| ns == c.namespace))
            .cloned()
            .collect())
    }

    fn record(&self, inner: &mut Inner, change: Change) {
        inner.history.push_back(change);
        while inner.history.len() > HISTORY_LIMIT {
            inner.history.pop_front();
        }
        self.rv_tx.send_replace(inner.rv);
    }

    /// Creates an object (`POST`): sets uid, creationTimestamp, resourceVersion and generation;
    /// answers 409 AlreadyExists and 422 for a missing or invalid name.
    pub fn create(
        &self,
        ty: &'static ResourceType,
        ns: &str,
        mut obj: Value,
    ) -> Result<Value, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        let mut inner = self.lock();
        if obj.get("metadata").is_none_or(|m| !m.is_object()) {
            obj["metadata"] = json!({});
        }
        if let Some(body_ns) = obj.pointer("/metadata/namespace").and_then(Value::as_str)
            && !body_ns.is_empty()
            && body_ns != ns
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let name = match obj.pointer("/metadata/name").and_then(Value::as_str) {
            Some(name) if !name.is_empty() => name.to_string(),
            _ => match obj
                .pointer("/metadata/generateName")
                .and_then(Value::as_str)
            {
                Some(prefix) if !prefix.is_empty() => {
                    format!("{prefix}{:05x}", (inner.uid_seq * 7919 + 13) % 0xfffff)
                }
                _ => {
                    return Err(ApiError::invalid(
                        ty.kind,
                        "",
                        "metadata.name",
                        "Required value: name or generateName is required",
                    ));
                }
            },
        };
        if !valid_name(&name) {
            return Err(ApiError::invalid(
                ty.kind,
                &name,
                "metadata.name",
                "Invalid value: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'",
            ));
        }
        let k = key(ty, ns, &name);
        if inner.objects.contains_key(&k) {
            return Err(ApiError::already_exists(ty, &name));
        }
        Self::apply_defaults(&inner, ty, &mut obj);
        validate(ty, &name, &obj)?;
        inner.rv += 1;
        inner.uid_seq += 1;
        let rv = inner.rv;
        obj["apiVersion"] = json!(ty.api_version());
        obj["kind"] = json!(ty.kind);
        let meta = &mut obj["metadata"];
        meta["name"] = json!(name);
        if ty.namespaced {
            meta["namespace"] = json!(ns);
        }
        meta["uid"] = json!(format!("5a9e0000-0000-4000-8000-{:012x}", inner.uid_seq));
        meta["resourceVersion"] = json!(rv.to_string());
        meta["creationTimestamp"] = json!(now_rfc3339());
        if ty.has_generation {
            meta["generation"] = json!(1);
        }
        if ty.status_subresource {
            obj["status"] = json!({});
        }
        if ty.scale_subresource && obj.pointer("/spec/replicas").is_none() {
            obj["spec"]["replicas"] = json!(1);
        }
        inner.objects.insert(k, obj.clone());
        let change = Change {
            rv,
            ty,
            namespace: ns.to_string(),
            kind: ChangeKind::Added,
            object: obj.clone(),
        };
        self.record(&mut inner, change);
        Ok(obj)
    }

    /// Reads the addressed part of an object (`Part::Scale` gives a Scale), lets `edit` produce
    /// its new version, checks the resourceVersion precondition and commits. Answers with the
    /// new version of the addressed part. `create_missing` lets `edit` see `None` and create
    /// (server-side apply does); otherwise a missing object is 404.
    pub fn modify(
        &self,
        ty: &'static ResourceType,
        ns: &str,
        name: &str,
        part: Part,
        create_missing: bool,
        edit: impl FnOnce(Option<Value>) -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let k = key(ty, ns, name);
        let Some(latest) = inner.objects.get(&k).cloned() else {
            drop(inner);
            if create_missing && part == Part::Main {
                let mut created = edit(None)?;
                if created.is_object() {
                    created["metadata"]["name"] = json!(name);
                }
                return self.create(ty, ns, created);
            }
            return Err(ApiError::not_found(ty, name));
        };
        let view = match part {
            Part::Scale => scale_view(&latest),
            Part::Main | Part::Status => latest.clone(),
        };
        // The whole read-edit-check-write runs under the lock, like etcd's compare-and-swap.
        let edited = edit(Some(view))?;
        if !edited.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        if let Some(body_name) = edited.pointer("/metadata/name").and_then(Value::as_str)
            && body_name != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        // The precondition: a resourceVersion in the written body must be the stored one.
        if let Some(rv) = rv_of(&edited)
            && Some(rv) != rv_of(&latest)
        {
            return Err(ApiError::conflict(ty, name));
        }
        let mut next = latest.clone();
        match part {
            Part::Main => {
                let keep_meta = latest.get("metadata").cloned().unwrap_or(json!({}));
                next = edited;
                next["apiVersion"] = json!(ty.api_version());
                next["kind"] = json!(ty.kind);
                for field in [
                    "name",
                    "namespace",
                    "uid",
                    "creationTimestamp",
                    "generation",
                    "resourceVersion",
                ] {
                    match keep_meta.get(field) {
                        Some(v) => next["metadata"][field] = v.clone(),
                        None => {
                            if let Some(m) = next["metadata"].as_object_mut() {
                                m.remove(field);
                            }
                        }
                    }
                }
                if ty.status_subresource {
                    next["status"] = latest.get("status").cloned().unwrap_or(json!({}));
                }
            }
            Part::Status => {
                next["status"] = edited.get("status").cloned().unwrap_or(json!({}));
            }
            Part::Scale => {
                let replicas = edited
                    .pointer("/spec/replicas")
                    .cloned()
                    .unwrap_or(json!(0));
                match replicas.as_i64() {
                    Some(n) if n >= 0 && n <= i64::from(i32::MAX) => {
                        next["spec"]["replicas"] = json!(n);
                    }
                    _ => {
                        return Err(ApiError::invalid(
                            "Scale.autoscaling",
                            name,
                            "spec.replicas",
                            &format!(
                                "Invalid value: {replicas}: must be greater than or equal to 0"
                            ),
                        ));
                    }
                }
            }
        }
        Self::apply_defaults(&inner, ty, &mut next);
        validate(ty, name, &next)?;
        if ty.has_generation && generation_view(ty, &next) != generation_view(ty, &latest) {
            let generation = latest
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            next["metadata"]["generation"] = json!(generation + 1);
        }
        if next == latest {
            // A no-op write does not bump the resourceVersion, as on a real API server.
            return Ok(match part {
                Part::Scale => scale_view(&latest),
                _ => latest,
            });
        }
        inner.rv += 1;
        let rv = inner.rv;
        next["metadata"]["resourceVersion"] = json!(rv.to_string());
        inner.objects.insert(k, next.clone());
        let change = Change {
            rv,
            ty,
            namespace: ns.to_string(),
            kind: ChangeKind::Modified,
            object: next.clone(),
        };
        self.record(&mut inner, change);
        Ok(match part {
            Part::Scale => scale_view(&next),
            _ => next,
        })
    }

    /// Deletes an object and answers with its last state.
    pub fn delete(
        &self,
        ty: &'static ResourceType,
        ns: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let mut obj = inner
            .objects
            .remove(&key(ty, ns, name))
            .ok_or_else(|| ApiError::not_found(ty, name))?;
        inner.rv += 1;
        let rv = inner.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let change = Change {
            rv,
            ty,
            namespace: ns.to_string(),
            kind: ChangeKind::Deleted,
            object: obj.clone(),
        };
        self.record(&mut inner, change);
        Ok(obj)
    }
}

/// Fills missing properties that have a `default` in `schema`, recursively (objects and array
/// items), as structural-schema defaulting does. `metadata` is left alone.
pub fn default_from_schema(schema: &Value, obj: &mut Value) {
    if let (Some(props), Value::Object(map)) = (
        schema.get("properties").and_then(Value::as_object),
        &mut *obj,
    ) {
        for (key, prop) in props {
            if key == "metadata" {
                continue;
            }
            if !map.contains_key(key)
                && let Some(default) = prop.get("default")
            {
                map.insert(key.clone(), default.clone());
            }
            if let Some(child) = map.get_mut(key) {
                default_from_schema(prop, child);
            }
        }
    }
    if let (Some(items), Value::Array(list)) = (schema.get("items"), obj) {
        for item in list {
            default_from_schema(items, item);
        }
    }
}

/// The few validation rules of the real API that Surge can trip over.
fn validate(ty: &ResourceType, name: &str, obj: &Value) -> Result<(), ApiError> {
    if ty.scale_subresource
        && let Some(replicas) = obj.pointer("/spec/replicas")
        && replicas.as_i64().is_none_or(|n| n < 0)
    {
        return Err(ApiError::invalid(
            ty.kind,
            name,
            "spec.replicas",
            &format!("Invalid value: {replicas}: must be greater than or equal to 0"),
        ));
    }
    if ty.plural == "surgescalers"
        && let (Some(min), Some(max)) = (
            obj.pointer("/spec/minReplicas").and_then(Value::as_i64),
            obj.pointer("/spec/maxReplicas").and_then(Value::as_i64),
        )
        && min > max
    {
        return Err(ApiError::invalid(
            ty.kind,
            name,
            "spec.maxReplicas",
            "Invalid value: must be greater than or equal to spec.minReplicas",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_defaults_fill_missing_fields_recursively() {
        let schema = json!({"properties": {"spec": {"properties": {
            "min": {"default": 1},
            "windows": {"default": {}, "properties": {"panic": {"default": 6}}},
            "list": {"items": {"properties": {"x": {"default": true}}}}
        }}}});
        let mut obj = json!({"spec": {"min": 3, "list": [{}, {"x": false}]}});
        default_from_schema(&schema, &mut obj);
        assert_eq!(
            obj,
            json!({"spec": {"min": 3, "windows": {"panic": 6}, "list": [{"x": true}, {"x": false}]}})
        );
    }

    #[test]
    fn watch_history_beyond_the_kept_window_is_expired() {
        let store = Store::new();
        let ty = super::super::resources::LEASES;
        store
            .create(ty, "default", json!({"metadata": {"name": "l"}}))
            .unwrap();
        for i in 0..HISTORY_LIMIT + 10 {
            store
                .modify(ty, "default", "l", Part::Main, false, |cur| {
                    let mut obj = cur.unwrap();
                    obj["spec"] = json!({"n": i});
                    Ok(obj)
                })
                .unwrap();
        }
        let err = store.changes_since(ty, Some("default"), 1).unwrap_err();
        assert_eq!((err.code, err.reason), (410, "Expired"));
        let latest = store.resource_version();
        let recent = store
            .changes_since(ty, Some("default"), latest - 3)
            .unwrap();
        assert_eq!(recent.len(), 3);
    }

    #[test]
    fn no_op_writes_keep_the_resource_version() {
        let store = Store::new();
        let ty = super::super::resources::DEPLOYMENTS;
        store
            .create(
                ty,
                "default",
                json!({"metadata": {"name": "app"}, "spec": {"replicas": 2}}),
            )
            .unwrap();
        let before = store.resource_version();
        let same = store
            .modify(ty, "default", "app", Part::Scale, false, |_| {
                Ok(json!({"spec": {"replicas": 2}}))
            })
            .unwrap();
        assert_eq!(store.resource_version(), before);
        assert_eq!(same["spec"]["replicas"], 2);
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_764_115_200), "2025-11-26T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
