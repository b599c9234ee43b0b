//! The API server's own record of every request it served (its audit log), read back as
//! [`AuditRecord`]s: the ground truth for "when did the scaler's scale write arrive", "which calls
//! did it make" and "what did RBAC answer", measured by the server rather than by a proxy.
//!
//! The policy logs writes with their request bodies and reads with metadata only; the
//! `RequestReceived` stage is omitted, so each request is one `ResponseComplete` event (a watch
//! also has a `ResponseStarted` one, which is the one kept: a watch completes only when it ends).
//! The log backend writes each event before the response is sent (`--audit-log-mode=blocking`,
//! the default), so a record is on disk by the time the client has its answer.

use std::io::{BufRead, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use k8s_openapi::jiff::Timestamp;
use serde::Deserialize;
use serde_json::Value;

/// The audit policy the control plane runs with.
pub const POLICY: &str = r#"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  # Heartbeats (node and leader Leases every few seconds) would only fill the log.
  - level: None
    resources: [{group: "coordination.k8s.io", resources: ["leases"]}]
  # Pod status written by the node: who wrote it is enough, not every status body.
  - level: Metadata
    resources: [{group: "", resources: ["pods/status"]}]
  # Writes with their bodies: the scale writes are measured and checked from these.
  - level: Request
    verbs: ["create", "update", "patch", "delete", "deletecollection"]
  # Reads with metadata: which calls were made and what was answered (RBAC included).
  - level: Metadata
"#;

/// One request as the API server audited it.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    /// When the server received it (Unix microseconds).
    pub received_unix_us: i64,
    /// When the server finished it, or started streaming a watch (Unix microseconds).
    pub completed_unix_us: i64,
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, ...
    pub verb: String,
    /// The authenticated user (`system:serviceaccount:surge-system:surge-scaler`, ...).
    pub user: String,
    /// The groups of that user.
    pub groups: Vec<String>,
    /// The request URI, query included.
    pub uri: String,
    /// API group of the object (empty for core), when a resource was addressed.
    pub group: String,
    /// Resource (`deployments`), empty for a non-resource URL.
    pub resource: String,
    /// Subresource (`scale`, `status`), when addressed.
    pub subresource: Option<String>,
    /// Namespace, for a namespaced request.
    pub namespace: Option<String>,
    /// Object name, when one object was addressed.
    pub name: Option<String>,
    /// HTTP status answered.
    pub code: u16,
    /// The request body of a write (a patch document, an object).
    pub request_object: Option<Value>,
    /// The client's user agent.
    pub user_agent: String,
}

impl AuditRecord {
    /// The path without the query.
    pub fn path(&self) -> &str {
        self.uri.split_once('?').map_or(&self.uri, |(path, _)| path)
    }

    /// The raw query string (empty without one).
    pub fn query(&self) -> &str {
        self.uri.split_once('?').map_or("", |(_, query)| query)
    }

    /// One query parameter's raw value.
    pub fn query_param(&self, key: &str) -> Option<&str> {
        self.query()
            .split('&')
            .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
    }

    /// The HTTP method this verb arrived as.
    pub fn method(&self) -> &'static str {
        match self.verb.as_str() {
            "create" => "POST",
            "update" => "PUT",
            "patch" => "PATCH",
            "delete" | "deletecollection" => "DELETE",
            _ => "GET",
        }
    }

    /// True for a write to a `scale` subresource.
    pub fn is_scale_write(&self) -> bool {
        self.subresource.as_deref() == Some("scale")
            && matches!(self.verb.as_str(), "patch" | "update")
    }
}

/// The fields of an `audit.k8s.io/v1` Event that are read.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Event {
    stage: String,
    verb: String,
    #[serde(default, rename = "requestURI")]
    request_uri: String,
    #[serde(default)]
    user: UserInfo,
    #[serde(default)]
    object_ref: Option<ObjectRef>,
    #[serde(default)]
    response_status: Option<ResponseStatus>,
    #[serde(default)]
    request_object: Option<Value>,
    request_received_timestamp: String,
    stage_timestamp: String,
    #[serde(default)]
    user_agent: String,
}

#[derive(Deserialize, Default)]
struct UserInfo {
    #[serde(default)]
    username: String,
    #[serde(default)]
    groups: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ObjectRef {
    #[serde(default)]
    resource: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    api_group: String,
    #[serde(default)]
    subresource: Option<String>,
}

#[derive(Deserialize)]
struct ResponseStatus {
    #[serde(default)]
    code: u16,
}

fn micros(timestamp: &str) -> Option<i64> {
    timestamp
        .parse::<Timestamp>()
        .ok()
        .map(|t| t.as_microsecond())
}

/// Parses one line of the audit log: `None` for a line that is not a kept event (another stage,
/// a partial line, something that is not an audit event).
pub fn parse_line(line: &str) -> Option<AuditRecord> {
    let event: Event = serde_json::from_str(line).ok()?;
    // A watch is kept when it starts streaming (it completes only when it ends); anything else
    // when it completes.
    let keep = if event.verb == "watch" {
        event.stage == "ResponseStarted"
    } else {
        event.stage == "ResponseComplete"
    };
    if !keep {
        return None;
    }
    let object = event.object_ref;
    Some(AuditRecord {
        received_unix_us: micros(&event.request_received_timestamp)?,
        completed_unix_us: micros(&event.stage_timestamp)?,
        verb: event.verb,
        user: event.user.username,
        groups: event.user.groups,
        uri: event.request_uri,
        group: object
            .as_ref()
            .map(|o| o.api_group.clone())
            .unwrap_or_default(),
        resource: object
            .as_ref()
            .map(|o| o.resource.clone())
            .unwrap_or_default(),
        subresource: object.as_ref().and_then(|o| o.subresource.clone()),
        namespace: object.as_ref().and_then(|o| o.namespace.clone()),
        name: object.and_then(|o| o.name),
        code: event.response_status.map_or(0, |s| s.code),
        request_object: event.request_object,
        user_agent: event.user_agent,
    })
}

/// An audit log file read incrementally.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    offset: u64,
    partial: String,
    records: Vec<AuditRecord>,
}

impl AuditLog {
    /// Follows the log at `path` (which may not exist yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            offset: 0,
            partial: String::new(),
            records: Vec::new(),
        }
    }

    /// The file followed.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads what was appended since the last call; returns every record so far.
    pub fn refresh(&mut self) -> &[AuditRecord] {
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return &self.records;
        };
        // A file shorter than what was read is a new one (the old was rotated): read it whole.
        if file.metadata().is_ok_and(|m| m.len() < self.offset) {
            self.offset = 0;
            self.partial.clear();
        }
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return &self.records;
        }
        let mut reader = std::io::BufReader::new(file);
        let mut line = std::mem::take(&mut self.partial);
        loop {
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(read) => {
                    self.offset += read as u64;
                    if !line.ends_with('\n') {
                        // The server is still writing this event: keep it for the next call.
                        break;
                    }
                    if let Some(record) = parse_line(&line) {
                        self.records.push(record);
                    }
                    line.clear();
                }
            }
        }
        self.partial = line;
        &self.records
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCALE_PATCH: &str = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Request","auditID":"a","stage":"ResponseComplete","requestURI":"/apis/apps/v1/namespaces/default/deployments/app/scale?fieldManager=surge-scaler","verb":"patch","user":{"username":"system:serviceaccount:surge-system:surge-scaler","groups":["system:serviceaccounts","system:authenticated"]},"userAgent":"surge-scaler","objectRef":{"resource":"deployments","namespace":"default","name":"app","apiGroup":"apps","apiVersion":"v1","subresource":"scale"},"responseStatus":{"metadata":{},"code":200},"requestObject":{"spec":{"replicas":5}},"requestReceivedTimestamp":"2026-12-03T07:40:01.123456Z","stageTimestamp":"2026-12-03T07:40:01.125001Z"}"#;

    #[test]
    fn a_scale_patch_is_read_with_its_times_user_body_and_code() {
        let r = parse_line(SCALE_PATCH).unwrap();
        assert!(r.is_scale_write());
        assert_eq!(r.method(), "PATCH");
        assert_eq!(
            r.path(),
            "/apis/apps/v1/namespaces/default/deployments/app/scale"
        );
        assert_eq!(r.query_param("fieldManager"), Some("surge-scaler"));
        assert_eq!(r.user, "system:serviceaccount:surge-system:surge-scaler");
        assert_eq!(r.code, 200);
        assert_eq!(r.request_object.as_ref().unwrap()["spec"]["replicas"], 5);
        assert_eq!(r.completed_unix_us - r.received_unix_us, 1_545);
        assert_eq!(r.received_unix_us % 1_000_000, 123_456);
    }

    #[test]
    fn other_stages_and_broken_lines_are_skipped_but_a_started_watch_is_kept() {
        let started = SCALE_PATCH.replace("ResponseComplete", "ResponseStarted");
        assert_eq!(parse_line(&started), None);
        let watch = started.replace(r#""verb":"patch""#, r#""verb":"watch""#);
        assert_eq!(parse_line(&watch).unwrap().verb, "watch");
        let watch_ended = watch.replace("ResponseStarted", "ResponseComplete");
        assert_eq!(parse_line(&watch_ended), None, "a watch would count twice");
        assert_eq!(parse_line("{\"kind\":\"Event\""), None);
        assert_eq!(parse_line("not json"), None);
    }

    #[test]
    fn a_line_still_being_written_is_read_once_it_is_whole() {
        let path = std::env::temp_dir().join(format!("surge-audit-{}.log", std::process::id()));
        let (head, tail) = SCALE_PATCH.split_at(100);
        std::fs::write(&path, head).unwrap();
        let mut log = AuditLog::new(&path);
        assert!(log.refresh().is_empty());
        std::fs::write(&path, format!("{head}{tail}\n{SCALE_PATCH}\n")).unwrap();
        assert_eq!(log.refresh().len(), 2);
        assert_eq!(log.refresh().len(), 2);
        // Rotated: a new, shorter file is read from its start.
        std::fs::write(&path, format!("{SCALE_PATCH}\n")).unwrap();
        assert_eq!(log.refresh().len(), 3);
        let _ = std::fs::remove_file(&path);
    }
}
