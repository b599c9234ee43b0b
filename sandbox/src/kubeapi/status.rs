//! Errors answered as `meta/v1` `Status` objects, with the codes and reasons of the real API.

use serde_json::{Value, json};

use super::resources::ResourceType;

/// A failed API call, rendered as a `Status` body with its HTTP code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// `Status.reason` (`NotFound`, `Conflict`, `AlreadyExists`, `Invalid`, ...).
    pub reason: &'static str,
    /// Human-readable message, worded like the real API's.
    pub message: String,
    /// `Status.details.name`, when an object is concerned.
    pub name: Option<String>,
    /// `Status.details.group`/`kind` of the resource concerned.
    pub resource: Option<(&'static str, &'static str)>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: String) -> Self {
        Self {
            code,
            reason,
            message,
            name: None,
            resource: None,
        }
    }

    fn about(mut self, ty: &ResourceType, name: &str) -> Self {
        self.name = Some(name.to_string());
        self.resource = Some((ty.group, ty.plural));
        self
    }

    /// 404: the object does not exist.
    pub fn not_found(ty: &ResourceType, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", ty.qualified()),
        )
        .about(ty, name)
    }

    /// 404: the path names no served resource.
    pub fn no_route() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
        )
    }

    /// 409: create of an object that exists.
    pub fn already_exists(ty: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", ty.qualified()),
        )
        .about(ty, name)
    }

    /// 409: a write carried a stale `metadata.resourceVersion`.
    pub fn conflict(ty: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                ty.qualified()
            ),
        )
        .about(ty, name)
    }

    /// 422: the object or the request options fail validation.
    pub fn invalid(kind: &str, name: &str, field: &str, detail: &str) -> Self {
        Self::new(
            422,
            "Invalid",
            format!("{kind} \"{name}\" is invalid: {field}: {detail}"),
        )
    }

    /// 400: the request cannot be decoded or is inconsistent.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message.into())
    }

    /// 405: the verb is not served on this path.
    pub fn method_not_allowed() -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource".into(),
        )
    }

    /// 415: the patch content type is not accepted for this resource.
    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {content_type:?})"
            ),
        )
    }

    /// 403: the caller may not make this request in `namespace` (RBAC's answer).
    pub fn forbidden(namespace: &str) -> Self {
        Self::new(
            403,
            "Forbidden",
            format!(
                "the caller is not allowed to make this request in the namespace {namespace:?}"
            ),
        )
    }

    /// 410: a watch asked for a resourceVersion older than the kept history.
    pub fn expired(rv: u64) -> Self {
        Self::new(410, "Expired", format!("too old resource version: {rv}"))
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(name) = &self.name {
            let mut details = json!({"name": name});
            if let Some((group, kind)) = self.resource {
                details["group"] = json!(group);
                details["kind"] = json!(kind);
            }
            status["details"] = details;
        }
        status
    }
}
