//! The patch formats the Kubernetes API accepts, applied to plain JSON values.
//!
//! Pure functions: RFC 7386 JSON merge patch (also used, as an approximation, for strategic merge
//! patches of built-in kinds and for server-side apply, see `sandbox/README.md`), and RFC 6902
//! JSON patch with RFC 6901 pointers.

use serde_json::Value;

/// Why a JSON patch could not be applied (answered as 422, like the real API).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The patch document itself is not a valid JSON patch.
    #[error("invalid JSON patch: {0}")]
    Malformed(String),
    /// A pointer names a location that does not exist.
    #[error("path {0:?} does not exist")]
    MissingPath(String),
    /// A `test` operation did not match.
    #[error("test operation failed at {0:?}")]
    TestFailed(String),
}

/// Applies an RFC 7386 merge patch to `target` in place: objects merge key by key, `null`
/// removes a key, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(target_map) = target {
        for (key, value) in patch_map {
            if value.is_null() {
                target_map.remove(key);
            } else {
                merge_patch(target_map.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// Applies an RFC 6902 JSON patch (an array of operations) to `target`. On error `target` is
/// left unchanged.
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let Value::Array(ops) = patch else {
        return Err(PatchError::Malformed(
            "the patch must be a JSON array".into(),
        ));
    };
    let mut work = target.clone();
    for op in ops {
        let name = op
            .get("op")
            .and_then(Value::as_str)
            .ok_or_else(|| PatchError::Malformed("an operation lacks \"op\"".into()))?;
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| PatchError::Malformed(format!("{name}: missing \"path\"")))?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| PatchError::Malformed(format!("{name} {path}: missing \"value\"")))
        };
        let from = || {
            op.get("from")
                .and_then(Value::as_str)
                .ok_or_else(|| PatchError::Malformed(format!("{name} {path}: missing \"from\"")))
        };
        match name {
            "add" => add(&mut work, path, value()?)?,
            "remove" => {
                remove(&mut work, path)?;
            }
            "replace" => {
                remove(&mut work, path)?;
                add(&mut work, path, value()?)?;
            }
            "move" => {
                let moved = remove(&mut work, from()?)?;
                add(&mut work, path, moved)?;
            }
            "copy" => {
                let copied = work
                    .pointer(&pointer(from()?)?)
                    .cloned()
                    .ok_or_else(|| PatchError::MissingPath(path.to_string()))?;
                add(&mut work, path, copied)?;
            }
            "test" => {
                let expected = value()?;
                if work.pointer(&pointer(path)?) != Some(&expected) {
                    return Err(PatchError::TestFailed(path.to_string()));
                }
            }
            other => return Err(PatchError::Malformed(format!("unknown op {other:?}"))),
        }
    }
    *target = work;
    Ok(())
}

fn pointer(path: &str) -> Result<String, PatchError> {
    if path.is_empty() || path.starts_with('/') {
        Ok(path.to_string())
    } else {
        Err(PatchError::Malformed(format!(
            "path {path:?} must start with '/'"
        )))
    }
}

/// Splits a pointer into its parent pointer and its unescaped last token.
fn split(path: &str) -> Result<(String, String), PatchError> {
    let path = pointer(path)?;
    let cut = path
        .rfind('/')
        .ok_or_else(|| PatchError::Malformed("cannot operate on the whole document".into()))?;
    let token = path[cut + 1..].replace("~1", "/").replace("~0", "~");
    Ok((path[..cut].to_string(), token))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), PatchError> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, token) = split(path)?;
    let missing = || PatchError::MissingPath(path.to_string());
    match doc.pointer_mut(&parent).ok_or_else(missing)? {
        Value::Object(map) => {
            map.insert(token, value);
            Ok(())
        }
        Value::Array(items) => {
            if token == "-" {
                items.push(value);
                return Ok(());
            }
            let index: usize = token.parse().map_err(|_| missing())?;
            if index > items.len() {
                return Err(missing());
            }
            items.insert(index, value);
            Ok(())
        }
        _ => Err(missing()),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, PatchError> {
    let (parent, token) = split(path)?;
    let missing = || PatchError::MissingPath(path.to_string());
    match doc.pointer_mut(&parent).ok_or_else(missing)? {
        Value::Object(map) => map.remove(&token).ok_or_else(missing),
        Value::Array(items) => {
            let index: usize = token.parse().map_err(|_| missing())?;
            if index >= items.len() {
                return Err(missing());
            }
            Ok(items.remove(index))
        }
        _ => Err(missing()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_merges_objects_and_null_removes() {
        let mut doc = json!({"spec": {"replicas": 1, "paused": true}, "keep": 1});
        merge_patch(&mut doc, &json!({"spec": {"replicas": 3, "paused": null}}));
        assert_eq!(doc, json!({"spec": {"replicas": 3}, "keep": 1}));
    }

    #[test]
    fn json_patch_replace_add_remove_and_test() {
        let mut doc = json!({"spec": {"replicas": 1}, "list": [1, 2]});
        let patch = json!([
            {"op": "test", "path": "/spec/replicas", "value": 1},
            {"op": "replace", "path": "/spec/replicas", "value": 4},
            {"op": "add", "path": "/list/-", "value": 3},
            {"op": "remove", "path": "/list/0"}
        ]);
        json_patch(&mut doc, &patch).unwrap();
        assert_eq!(doc, json!({"spec": {"replicas": 4}, "list": [2, 3]}));
    }

    #[test]
    fn json_patch_failing_test_leaves_document_unchanged() {
        let mut doc = json!({"spec": {"replicas": 1}});
        let patch = json!([
            {"op": "replace", "path": "/spec/replicas", "value": 4},
            {"op": "test", "path": "/spec/replicas", "value": 1}
        ]);
        assert_eq!(
            json_patch(&mut doc, &patch),
            Err(PatchError::TestFailed("/spec/replicas".into()))
        );
        assert_eq!(doc, json!({"spec": {"replicas": 1}}));
    }

    #[test]
    fn json_patch_replace_of_missing_path_fails() {
        let mut doc = json!({});
        let err = json_patch(
            &mut doc,
            &json!([{"op": "replace", "path": "/a/b", "value": 1}]),
        );
        assert!(matches!(err, Err(PatchError::MissingPath(_))));
    }
}
