//! The HTTP side of the embedded API: paths, verbs, content types, writes and discovery (lists
//! and watches are in `reads`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::response::Response;
use http::{HeaderValue, Method, StatusCode, header};
use serde_json::{Value, json};

use super::patch::{PatchError, json_patch, merge_patch};
use super::reads::{list, watch};
use super::resources::{self, RESOURCES, ResourceType};
use super::status::ApiError;
use super::store::Part;
use super::{RequestRecord, Shared};

/// The largest request body accepted (the real API's limit is 3 MiB).
const MAX_BODY: usize = 3 * 1024 * 1024;

pub(super) enum Reply {
    Json(StatusCode, Value),
    Stream(Body),
}

impl From<ApiError> for Reply {
    fn from(e: ApiError) -> Self {
        Reply::Json(
            StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            e.to_status(),
        )
    }
}

pub(super) fn ok(v: Value) -> Result<Reply, ApiError> {
    Ok(Reply::Json(StatusCode::OK, v))
}

/// The single handler behind every path.
pub(super) async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let received = std::time::Instant::now();
    let unix_ms = super::unix_ms();
    let (parts, body) = req.into_parts();
    let query = parse_query(parts.uri.query().unwrap_or(""));
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_string());
    let body = axum::body::to_bytes(body, MAX_BODY).await;
    let forbidden_in = forbidden_namespace(&shared, parts.uri.path());
    let (reply, body_text) = match body {
        Ok(bytes) => {
            let text = (!bytes.is_empty()).then(|| String::from_utf8_lossy(&bytes).into_owned());
            let reply = match forbidden_in {
                Some(namespace) => Reply::from(ApiError::forbidden(&namespace)),
                None => route(
                    &shared,
                    &parts.method,
                    parts.uri.path(),
                    parts.uri.query().unwrap_or(""),
                    &query,
                    content_type.as_deref(),
                    bytes,
                )
                .await
                .unwrap_or_else(Reply::from),
            };
            (reply, text)
        }
        Err(_) => (
            Reply::from(ApiError {
                code: 413,
                reason: "RequestEntityTooLarge",
                message: "the request body is too large".into(),
                name: None,
                resource: None,
            }),
            None,
        ),
    };
    let status = match &reply {
        Reply::Json(code, _) => *code,
        Reply::Stream(_) => StatusCode::OK,
    };
    shared.log(RequestRecord {
        received,
        unix_ms,
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or("").to_string(),
        content_type,
        field_manager: query.get("fieldManager").cloned(),
        status: status.as_u16(),
        body: body_text,
    });
    let mut response = match reply {
        Reply::Json(code, value) => {
            let mut r = Response::new(Body::from(value.to_string()));
            *r.status_mut() = code;
            r
        }
        Reply::Stream(body) => Response::new(body),
    };
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The namespace of `path` (`.../namespaces/<ns>/...`) if requests into it are forbidden.
fn forbidden_namespace(shared: &Shared, path: &str) -> Option<String> {
    let (_, rest) = path.split_once("/namespaces/")?;
    let namespace = rest.split('/').next()?;
    let forbidden = shared.forbidden.lock().unwrap_or_else(|e| e.into_inner());
    forbidden.contains(namespace).then(|| namespace.to_owned())
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

/// A parsed resource path.
pub(super) struct Target {
    pub(super) ty: &'static ResourceType,
    pub(super) namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

async fn route(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    raw_query: &str,
    query: &HashMap<String, String>,
    content_type: Option<&str>,
    body: Bytes,
) -> Result<Reply, ApiError> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (group, version, rest) = match segs.as_slice() {
        ["version"] => return ok(version_doc()),
        ["api"] => {
            return ok(
                json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": shared.addr.to_string()}]}),
            );
        }
        ["apis"] => return ok(group_list()),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::no_route()),
    };
    if rest.is_empty() {
        return resource_list(group, version);
    }
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_string()), rest),
        _ => (None, rest),
    };
    let (plural, name, sub) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some((*name).to_string()), None),
        [plural, name, sub] => (*plural, Some((*name).to_string()), Some((*sub).to_string())),
        _ => return Err(ApiError::no_route()),
    };
    let ty = resources::find(group, version, plural).ok_or_else(ApiError::no_route)?;
    if namespace.is_none() && ty.namespaced && name.is_some() {
        return Err(ApiError::no_route());
    }
    match sub.as_deref() {
        None => {}
        Some("status") if ty.status_subresource => {}
        Some("scale") if ty.scale_subresource => {}
        Some(_) => return Err(ApiError::no_route()),
    }
    let target = Target {
        ty,
        namespace,
        name,
        sub,
    };
    match (method, &target.name) {
        (&Method::GET, None) => {
            if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) {
                Ok(watch(shared, &target, path, raw_query, query))
            } else {
                list(shared, &target, query)
            }
        }
        (&Method::POST, None) => {
            let ns = target.namespace.as_deref().unwrap_or("");
            let obj = decode_json(&body)?;
            check_type(ty, &obj)?;
            ok_code(StatusCode::CREATED, shared.store.create(ty, ns, obj)?)
        }
        (&Method::GET, Some(name)) => {
            let obj = shared.store.get(ty, ns(&target), name)?;
            ok(match part(&target) {
                Part::Scale => super::store::scale_view(&obj),
                _ => obj,
            })
        }
        (&Method::PUT, Some(name)) => {
            let obj = decode_json(&body)?;
            let reply = shared
                .store
                .modify(ty, ns(&target), name, part(&target), false, |_| Ok(obj))?;
            ok(reply)
        }
        (&Method::PATCH, Some(name)) => patch(shared, &target, name, query, content_type, &body),
        (&Method::DELETE, Some(name)) => ok(shared.store.delete(ty, ns(&target), name)?),
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn ok_code(code: StatusCode, v: Value) -> Result<Reply, ApiError> {
    Ok(Reply::Json(code, v))
}

fn ns(target: &Target) -> &str {
    target.namespace.as_deref().unwrap_or("")
}

fn part(target: &Target) -> Part {
    match target.sub.as_deref() {
        Some("status") => Part::Status,
        Some("scale") => Part::Scale,
        _ => Part::Main,
    }
}

fn decode_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding the request body: {e}")))
}

/// A body that names its apiVersion/kind must name the addressed type.
fn check_type(ty: &ResourceType, obj: &Value) -> Result<(), ApiError> {
    if let Some(api_version) = obj.get("apiVersion").and_then(Value::as_str)
        && api_version != ty.api_version()
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({api_version}) does not match the expected API version ({})",
            ty.api_version()
        )));
    }
    if let Some(kind) = obj.get("kind").and_then(Value::as_str)
        && kind != ty.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({kind}) does not match the expected kind ({})",
            ty.kind
        )));
    }
    Ok(())
}

fn patch(
    shared: &Arc<Shared>,
    target: &Target,
    name: &str,
    query: &HashMap<String, String>,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let ty = target.ty;
    let part = part(target);
    let content_type = content_type.unwrap_or("");
    let patch_error = |e: PatchError| ApiError {
        code: 422,
        reason: "Invalid",
        message: format!("the server rejected our request due to an error in our request: {e}"),
        name: Some(name.to_string()),
        resource: Some((ty.group, ty.plural)),
    };
    let reply = match content_type {
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
            if content_type.starts_with("application/strategic") && ty.custom {
                return Err(ApiError::unsupported_media_type(content_type));
            }
            let patch = decode_json(body)?;
            shared
                .store
                .modify(ty, ns(target), name, part, false, |current| {
                    let mut doc = current.unwrap_or(json!({}));
                    merge_patch(&mut doc, &patch);
                    Ok(doc)
                })?
        }
        "application/json-patch+json" => {
            let patch = decode_json(body)?;
            shared
                .store
                .modify(ty, ns(target), name, part, false, |current| {
                    let mut doc = current.unwrap_or(json!({}));
                    json_patch(&mut doc, &patch).map_err(patch_error)?;
                    Ok(doc)
                })?
        }
        "application/apply-patch+yaml" => {
            let manager = query
                .get("fieldManager")
                .filter(|m| !m.is_empty())
                .ok_or_else(|| {
                    ApiError::invalid(
                        "PatchOptions.meta.k8s.io",
                        "",
                        "fieldManager",
                        "Required value: is required for apply patch",
                    )
                })?;
            let applied: Value = serde_yaml::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
            let (want_api, want_kind) = match part {
                Part::Scale => ("autoscaling/v1".to_string(), "Scale"),
                _ => (ty.api_version(), ty.kind),
            };
            let api_version = applied.get("apiVersion").and_then(Value::as_str);
            let kind = applied.get("kind").and_then(Value::as_str);
            if api_version.is_none() || kind.is_none() {
                return Err(ApiError::bad_request(
                    "invalid object type: apiVersion and kind must be set in an apply patch",
                ));
            }
            if api_version != Some(want_api.as_str()) || kind != Some(want_kind) {
                return Err(ApiError::bad_request(format!(
                    "the apply patch names {}/{}, the request addresses {want_api}/{want_kind}",
                    api_version.unwrap_or_default(),
                    kind.unwrap_or_default()
                )));
            }
            let manager = manager.clone();
            shared
                .store
                .modify(ty, ns(target), name, part, true, |current| {
                    let mut doc = current.unwrap_or(json!({}));
                    merge_patch(&mut doc, &applied);
                    if part != Part::Scale {
                        record_manager(&mut doc, &manager, &ty.api_version(), part);
                    }
                    Ok(doc)
                })?
        }
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    ok(reply)
}

/// Records an Apply manager in `metadata.managedFields` (the fields themselves are not
/// tracked; see the README's limits).
fn record_manager(doc: &mut Value, manager: &str, api_version: &str, part: Part) {
    let subresource = match part {
        Part::Status => "status",
        _ => "",
    };
    let entry = json!({
        "manager": manager,
        "operation": "Apply",
        "apiVersion": api_version,
        "time": super::store::now_rfc3339(),
        "fieldsType": "FieldsV1",
        "fieldsV1": {},
        "subresource": subresource,
    });
    let fields = &mut doc["metadata"]["managedFields"];
    if !fields.is_array() {
        *fields = json!([]);
    }
    if let Value::Array(list) = fields {
        list.retain(|e| {
            e.get("manager").and_then(Value::as_str) != Some(manager)
                || e.get("operation").and_then(Value::as_str) != Some("Apply")
                || e.get("subresource").and_then(Value::as_str).unwrap_or("") != subresource
        });
        list.push(entry);
    }
}

fn version_doc() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-surge-sandbox",
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "none",
        "compiler": "surge-sandbox",
        "platform": "linux/amd64",
    })
}

fn group_list() -> Value {
    let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
    for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
        match groups.iter_mut().find(|(g, _)| *g == r.group) {
            Some((_, versions)) if !versions.contains(&r.version) => versions.push(r.version),
            Some(_) => {}
            None => groups.push((r.group, vec![r.version])),
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(g, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                .collect();
            json!({"name": g, "versions": versions, "preferredVersion": versions[0]})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn resource_list(group: &str, version: &str) -> Result<Reply, ApiError> {
    let mut list = Vec::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        list.push(json!({
            "name": r.plural, "singularName": r.kind.to_lowercase(), "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
        }));
        if r.status_subresource {
            list.push(json!({"name": format!("{}/status", r.plural), "singularName": "", "namespaced": r.namespaced, "kind": r.kind, "verbs": ["get", "patch", "update"]}));
        }
        if r.scale_subresource {
            list.push(json!({"name": format!("{}/scale", r.plural), "singularName": "", "namespaced": r.namespaced, "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]}));
        }
    }
    if list.is_empty() {
        return Err(ApiError::no_route());
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    ok(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": list}),
    )
}
