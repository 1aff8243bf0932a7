//! A request body read as one JSON object whose fields are all known: the
//! shape of every feature's JSON request (vectors, the semantic cache, the
//! LLM store), checked the same way with the same errors.

use crate::error::ApiError;
use serde_json::{Map, Value};

/// The body as a JSON object; 400 naming the first field not in `allowed`.
pub fn object(body: &[u8], allowed: &[&str]) -> Result<Map<String, Value>, ApiError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    let Value::Object(m) = v else {
        return Err(ApiError::BadRequest(
            "the body must be a JSON object".into(),
        ));
    };
    only(&m, allowed)?;
    Ok(m)
}

/// 400 naming the first field of `m` not in `allowed`.
pub fn only(m: &Map<String, Value>, allowed: &[&str]) -> Result<(), ApiError> {
    if let Some(k) = m.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::BadRequest(format!(
            "unknown field {k:?} (allowed: {})",
            allowed.join(", ")
        )));
    }
    Ok(())
}
