//! Entity documents: turning request bodies into stored values, and stored
//! values into response bodies.
//!
//! Bodies are validated with simd-json on the core that received the
//! request, so the owning core (which may be another one) only writes bytes.

use crate::error::ApiError;
use simd_json::prelude::*;

/// Per-core scratch space, reused so validating a body allocates nothing in
/// the steady state.
#[derive(Default)]
pub struct DocScratch {
    parse: Vec<u8>,
    inner: Vec<u8>,
    buffers: Option<simd_json::Buffers>,
}

/// Validates an entity body and writes the value to store into `out`.
///
/// * The body must be one JSON object; it is stored as sent (minus
///   surrounding whitespace), so field order is kept.
/// * The legacy form `{"blob": "<json object as a string>"}` (an object
///   whose only field is a string named `blob`) stores the decoded inner
///   object instead.
/// * With `take_key` (`POST /entities`), the object must carry a string
///   `key` field; it is removed from the stored document and returned.
pub fn prepare_document(
    body: &[u8],
    take_key: bool,
    scratch: &mut DocScratch,
    out: &mut Vec<u8>,
) -> Result<Option<String>, ApiError> {
    out.clear();
    let trimmed = body.trim_ascii();
    if trimmed.is_empty() {
        return Err(ApiError::InvalidJson(
            "the request body is empty; send a JSON object".into(),
        ));
    }
    scratch.parse.clear();
    scratch.parse.extend_from_slice(trimmed);
    let buffers = scratch
        .buffers
        .get_or_insert_with(|| simd_json::Buffers::new(4096));
    let mut value = simd_json::to_borrowed_value_with_buffers(&mut scratch.parse, buffers)
        .map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    if let Some(k) = duplicate_key(&value, trimmed, &mut scratch.inner) {
        return Err(ApiError::BadRequest(format!(
            "duplicate object key {k:?}: every key of an object must be unique"
        )));
    }
    let Some(obj) = value.as_object_mut() else {
        return Err(ApiError::Unprocessable(format!(
            "an entity must be a JSON object, not {}",
            type_name(&value)
        )));
    };

    let mut key = None;
    if take_key {
        match obj.remove("key") {
            Some(k) => match k.as_str() {
                Some(s) => key = Some(s.to_string()),
                None => {
                    return Err(ApiError::Unprocessable(
                        "field \"key\" must be a string of the form table:pk".into(),
                    ))
                }
            },
            None => {
                return Err(ApiError::Unprocessable(
                    "POST /entities needs a \"key\" field of the form table:pk".into(),
                ))
            }
        }
    }

    if obj.len() == 1 {
        if let Some(blob) = obj.get("blob").and_then(|b| b.as_str()) {
            // Legacy form: the entity is the JSON object inside the string.
            scratch.inner.clear();
            scratch.inner.extend_from_slice(blob.trim().as_bytes());
            let mut dup_scratch = Vec::new();
            let inner = simd_json::to_borrowed_value(&mut scratch.inner)
                .map_err(|e| ApiError::InvalidJson(format!("in \"blob\": {e}")))?;
            if let Some(k) = duplicate_key(&inner, blob.trim().as_bytes(), &mut dup_scratch) {
                return Err(ApiError::BadRequest(format!(
                    "in \"blob\": duplicate object key {k:?}: every key of an object must be unique"
                )));
            }
            if !inner.is_object() {
                return Err(ApiError::Unprocessable(format!(
                    "\"blob\" must hold a JSON object, not {}",
                    type_name(&inner)
                )));
            }
            inner
                .write(out)
                .map_err(|e| ApiError::InvalidJson(e.to_string()))?;
            return Ok(key);
        }
    }

    if take_key {
        value
            .write(out)
            .map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    } else {
        out.extend_from_slice(trimmed);
    }
    Ok(key)
}

/// Whether a key appears twice in one object, anywhere in `v`.
enum Duplicates<'v> {
    None,
    Found(&'v str),
    /// An object over 32 keys: simd-json keeps only the last of repeated
    /// keys there, so the parsed value cannot tell; check the tape.
    Unknown,
}

/// simd-json keeps both members of a small `{"a":1,"a":2}` (and the last
/// of a large one); indexes would see one value and other JSON readers
/// another, so a unique index could be bypassed. Such documents are
/// refused. Iterative (no recursion on hostile nesting); linear for small
/// objects.
fn duplicate_in_value<'v>(v: &'v simd_json::BorrowedValue<'_>) -> Duplicates<'v> {
    use simd_json::BorrowedValue as V;
    // Allocates only for nested containers (a flat document needs none).
    let mut stack = Vec::new();
    let mut next = Some(v);
    while let Some(v) = next.take().or_else(|| stack.pop()) {
        let children: &mut dyn Iterator<Item = &'v V<'_>> = match v {
            V::Object(o) => {
                if o.is_map() {
                    return Duplicates::Unknown;
                }
                for (i, k) in o.keys().enumerate() {
                    if o.keys().skip(i + 1).any(|other| other == k) {
                        return Duplicates::Found(k);
                    }
                }
                &mut o.values()
            }
            V::Array(a) => &mut a.iter(),
            _ => continue,
        };
        stack.extend(children.filter(|c| matches!(c, V::Object(_) | V::Array(_))));
    }
    Duplicates::None
}

/// The same check on the parse tape, which keeps every member.
fn duplicate_in_tape(json: &[u8], scratch: &mut Vec<u8>) -> Option<String> {
    scratch.clear();
    scratch.extend_from_slice(json);
    let tape = simd_json::to_tape(scratch).ok()?;
    let mut stack = vec![tape.as_value()];
    let mut seen = std::collections::HashSet::new();
    while let Some(v) = stack.pop() {
        if let Some(o) = v.as_object() {
            seen.clear();
            for (k, child) in o.iter() {
                if !seen.insert(k) {
                    return Some(k.to_string());
                }
                stack.push(child);
            }
        } else if let Some(a) = v.as_array() {
            stack.extend(a.iter());
        }
    }
    None
}

/// The first repeated key in `value` (parsed from `json`), if any.
fn duplicate_key(
    value: &simd_json::BorrowedValue<'_>,
    json: &[u8],
    scratch: &mut Vec<u8>,
) -> Option<String> {
    match duplicate_in_value(value) {
        Duplicates::None => None,
        Duplicates::Found(k) => Some(k.to_string()),
        Duplicates::Unknown => duplicate_in_tape(json, scratch),
    }
}

fn type_name(v: &simd_json::BorrowedValue<'_>) -> &'static str {
    if v.is_array() {
        "an array"
    } else if v.is_str() {
        "a string"
    } else if v.is_null() {
        "null"
    } else if v.is_bool() {
        "a boolean"
    } else if v.is_object() {
        "an object"
    } else {
        "a number"
    }
}

/// Writes `{"key":<key>,"entity":` — the part of a GET body before the
/// stored value.
pub fn write_get_prefix(out: &mut Vec<u8>, key: &str) {
    out.extend_from_slice(b"{\"key\":");
    write_json_str(out, key);
    out.extend_from_slice(b",\"entity\":");
}

/// Appends `s` as a JSON string literal.
pub fn write_json_str(out: &mut Vec<u8>, s: &str) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// The body of a GET: `{"key":..,"entity":..}`.
pub fn render_get(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    write_get_prefix(out, key);
    out.extend_from_slice(value);
    out.push(b'}');
}

/// The body of a PUT/POST: `{"key":..,"created":..}`.
pub fn render_put(out: &mut Vec<u8>, key: &str, created: bool) {
    out.extend_from_slice(b"{\"key\":");
    write_json_str(out, key);
    out.extend_from_slice(if created {
        b",\"created\":true}"
    } else {
        b",\"created\":false}"
    });
}

/// The body of a DELETE: `{"deleted":..,"key":..}`.
pub fn render_delete(out: &mut Vec<u8>, key: &str, deleted: bool) {
    out.extend_from_slice(if deleted {
        b"{\"deleted\":true,\"key\":"
    } else {
        b"{\"deleted\":false,\"key\":"
    });
    write_json_str(out, key);
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prep(body: &str, take_key: bool) -> Result<(Option<String>, String), ApiError> {
        let mut s = DocScratch::default();
        let mut out = Vec::new();
        let k = prepare_document(body.as_bytes(), take_key, &mut s, &mut out)?;
        Ok((k, String::from_utf8(out).unwrap()))
    }

    #[test]
    fn objects_are_stored_as_sent() {
        assert_eq!(
            prep(" {\"b\":1,\"a\":[1,2]}\n", false).unwrap().1,
            "{\"b\":1,\"a\":[1,2]}"
        );
    }

    #[test]
    fn rejects_non_objects_and_garbage() {
        assert_eq!(prep("[1]", false).unwrap_err().status(), 422);
        assert_eq!(prep("\"x\"", false).unwrap_err().status(), 422);
        assert_eq!(prep("{", false).unwrap_err().status(), 400);
        assert_eq!(prep("{} {}", false).unwrap_err().status(), 400);
        assert_eq!(prep("", false).unwrap_err().status(), 400);
        assert_eq!(prep("{\"a\":1}x", false).unwrap_err().status(), 400);
    }

    #[test]
    fn legacy_blob_form() {
        let (_, v) = prep(r#"{"blob":"{\"name\":\"Alice\",\"age\":30}"}"#, false).unwrap();
        let v: serde_json::Value = serde_json::from_str(&v).unwrap();
        assert_eq!(v, serde_json::json!({"name":"Alice","age":30}));
        assert_eq!(
            prep(r#"{"blob":"not json"}"#, false).unwrap_err().status(),
            400
        );
        assert_eq!(prep(r#"{"blob":"[1]"}"#, false).unwrap_err().status(), 422);
        // Not the legacy form: blob is not the only field, or not a string.
        assert!(prep(r#"{"blob":"x","y":1}"#, false).is_ok());
        assert!(prep(r#"{"blob":1}"#, false).is_ok());
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        let dup = |b: &str| {
            let e = prep(b, false).unwrap_err();
            assert_eq!(e.status(), 400, "{b}");
            e.to_string()
        };
        assert!(dup(r#"{"email":"mallory@x","email":"alice@x"}"#).contains("\"email\""));
        assert!(dup(r#"{"a":{"b":1,"b":2}}"#).contains("\"b\""));
        assert!(dup(r#"{"a":[1,{"c":1,"d":2,"c":3}]}"#).contains("\"c\""));
        assert!(dup(r#"{"blob":"{\"x\":1,\"x\":1}"}"#).contains("\"x\""));
        // A large object (hashed path).
        let mut big: Vec<String> = (0..40).map(|i| format!("\"k{i}\":{i}")).collect();
        assert!(prep(&format!("{{{}}}", big.join(",")), false).is_ok());
        big.push("\"k7\":0".into());
        assert!(dup(&format!("{{{}}}", big.join(","))).contains("\"k7\""));
        // Equal keys in different objects are fine.
        assert!(prep(r#"{"a":{"x":1},"b":{"x":2}}"#, false).is_ok());
    }

    #[test]
    fn post_takes_the_key() {
        let (k, v) = prep(r#"{"key":"users:bob","age":3}"#, true).unwrap();
        assert_eq!(k.as_deref(), Some("users:bob"));
        assert_eq!(v, r#"{"age":3}"#);
        assert_eq!(prep(r#"{"age":3}"#, true).unwrap_err().status(), 422);
        assert_eq!(prep(r#"{"key":5}"#, true).unwrap_err().status(), 422);
    }

    #[test]
    fn renders_escape_keys() {
        let mut out = Vec::new();
        render_get(&mut out, "t:a\"b", b"{}");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["key"], "t:a\"b");
        out.clear();
        render_delete(&mut out, "t:x", false);
        assert_eq!(out, br#"{"deleted":false,"key":"t:x"}"#);
    }
}
