//! API errors and their one mapping to HTTP.
//!
//! Every failure a client can see is an [`ApiError`]; [`ApiError::write`]
//! is the only place that turns one into a status code and the JSON body
//! `{"error": true, "code", "message", "status_code"}`.
//!
//! An `ApiError` is `Send`: a call to another core returns
//! `Result<Answer, ApiError>` (`crate::mesh`), so an error raised on the
//! owner reaches the client with its own status and code.

use crate::storage::StorageError;
use themis_io::connection::ProtocolError;
use themis_io::Response;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("malformed JSON: {0}")]
    InvalidJson(String),
    #[error("invalid key: {0}")]
    InvalidKey(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unprocessable(String),
    /// No API key, or an unknown one (401 with `WWW-Authenticate`).
    #[error("{0}")]
    Unauthorized(String),
    /// A valid key without the rights for this request.
    #[error("{0}")]
    Forbidden(String),
    /// The peer address presented too many unknown keys
    /// (`server.auth_failure_limit`): 429 with `Retry-After`.
    #[error("too many failed API keys from this address; retry after {retry_after_s} s")]
    TooManyAuthFailures { retry_after_s: u64 },
    #[error("a request with a body must be sent as Content-Type: application/json")]
    UnsupportedMediaType,
    #[error("Host {0:?} is not served here (server.allowed_hosts)")]
    MisdirectedRequest(String),
    #[error("entity {0} not found")]
    EntityNotFound(String),
    #[error("no route for {0}")]
    RouteNotFound(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("method {method} is not allowed on {path} (allowed: {allow})")]
    MethodNotAllowed {
        method: &'static str,
        path: String,
        allow: String,
    },
    #[error("request body exceeds the limit of {limit} bytes (server.max_request_size_mb)")]
    PayloadTooLarge { limit: usize },
    #[error("request headers are too large")]
    HeadersTooLarge,
    #[error("transfer encoding not supported (use Content-Length or chunked)")]
    UnsupportedTransferEncoding,
    #[error("request timed out after {ms} ms (server.request_timeout_ms)")]
    Timeout { ms: u64 },
    #[error("service unavailable: {0}")]
    Unavailable(&'static str),
    #[error("{flag} is off; turn it on with POST /config {enable} or in the config file")]
    FeatureDisabled {
        flag: &'static str,
        /// The `POST /config` body that turns it on.
        enable: &'static str,
    },
    #[error(
        "events after sequence {requested} were pruned; the oldest available sequence is {oldest}"
    )]
    HistoryPruned { requested: u64, oldest: u64 },
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A broken internal contract (a bug), never a client's fault.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            ApiError::InvalidJson(_) | ApiError::InvalidKey(_) | ApiError::BadRequest(_) => 400,
            ApiError::Unprocessable(_) => 422,
            ApiError::Unauthorized(_) => 401,
            ApiError::Forbidden(_) => 403,
            ApiError::TooManyAuthFailures { .. } => 429,
            ApiError::UnsupportedMediaType => 415,
            ApiError::MisdirectedRequest(_) => 421,
            ApiError::EntityNotFound(_) | ApiError::RouteNotFound(_) | ApiError::NotFound(_) => 404,
            ApiError::Conflict(_) => 409,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::PayloadTooLarge { .. } => 413,
            ApiError::HeadersTooLarge => 431,
            ApiError::UnsupportedTransferEncoding => 501,
            ApiError::Timeout { .. }
            | ApiError::Unavailable(_)
            | ApiError::FeatureDisabled { .. } => 503,
            ApiError::HistoryPruned { .. } => 410,
            ApiError::Storage(_) | ApiError::Internal(_) => 500,
        }
    }

    /// A stable machine word for the error.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidJson(_) => "invalid_json",
            ApiError::InvalidKey(_) => "invalid_key",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unprocessable(_) => "unprocessable_entity",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::TooManyAuthFailures { .. } => "too_many_auth_failures",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::MisdirectedRequest(_) => "misdirected_request",
            ApiError::EntityNotFound(_) => "not_found",
            ApiError::RouteNotFound(_) => "route_not_found",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::HeadersTooLarge => "headers_too_large",
            ApiError::UnsupportedTransferEncoding => "unsupported_transfer_encoding",
            ApiError::Timeout { .. } => "request_timeout",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::FeatureDisabled { .. } => "feature_disabled",
            ApiError::HistoryPruned { .. } => "history_pruned",
            ApiError::Storage(_) => "storage_error",
            ApiError::Internal(_) => "internal_error",
        }
    }

    /// The JSON body for this error.
    pub fn body(&self) -> Vec<u8> {
        let status = self.status();
        let mut v = serde_json::json!({
            "error": true,
            "code": self.code(),
            "message": self.to_string(),
            "status_code": status,
        });
        match self {
            ApiError::FeatureDisabled { flag, .. } => v["feature"] = (*flag).into(),
            ApiError::HistoryPruned { oldest, .. } => {
                v["oldest_available_sequence"] = (*oldest).into()
            }
            ApiError::TooManyAuthFailures { retry_after_s } => {
                v["retry_after_s"] = (*retry_after_s).into()
            }
            _ => {}
        }
        serde_json::to_vec(&v).unwrap_or_default()
    }

    /// Writes this error as the response.
    pub fn write(&self, resp: &mut Response<'_>) {
        // 5xx: our fault, error. Broken HTTP from a client (framing, sizes):
        // warn, an operator may want to know. Ordinary 4xx (a missing entity,
        // a bad document): debug, they are normal traffic.
        let client_protocol = matches!(
            self,
            ApiError::PayloadTooLarge { .. }
                | ApiError::HeadersTooLarge
                | ApiError::UnsupportedTransferEncoding
        );
        if client_protocol {
            tracing::warn!(code = self.code(), "{self}");
        } else if self.status() >= 500 {
            tracing::error!(code = self.code(), "{self}");
        } else {
            tracing::debug!(code = self.code(), "{self}");
        }
        let body = self.body();
        match self {
            ApiError::MethodNotAllowed { allow, .. } => {
                resp.json_with(405, &body, &[("Allow", allow.as_str())])
            }
            ApiError::Unauthorized(_) => resp.json_with(
                401,
                &body,
                &[("WWW-Authenticate", r#"Bearer realm="themis""#)],
            ),
            ApiError::TooManyAuthFailures { retry_after_s } => {
                let mut buf = itoa::Buffer::new();
                resp.json_with(429, &body, &[("Retry-After", buf.format(*retry_after_s))]);
            }
            _ => resp.json(self.status(), &body),
        }
    }
}

impl From<crate::changefeed::FeedError> for ApiError {
    fn from(e: crate::changefeed::FeedError) -> Self {
        match e {
            crate::changefeed::FeedError::Gone { requested, oldest } => {
                ApiError::HistoryPruned { requested, oldest }
            }
            crate::changefeed::FeedError::Storage(s) => ApiError::Storage(s),
        }
    }
}

impl From<ProtocolError> for ApiError {
    fn from(e: ProtocolError) -> Self {
        match e {
            ProtocolError::Malformed(m) => ApiError::BadRequest(m.to_string()),
            ProtocolError::HeadTooLarge => ApiError::HeadersTooLarge,
            ProtocolError::BodyTooLarge { limit } => ApiError::PayloadTooLarge { limit },
            ProtocolError::UnsupportedTransferEncoding => ApiError::UnsupportedTransferEncoding,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_can_cross_cores() {
        fn send<T: Send + 'static>() {}
        send::<ApiError>();
    }

    #[test]
    fn body_shape() {
        let e = ApiError::EntityNotFound("users:x".into());
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"], true);
        assert_eq!(v["code"], "not_found");
        assert_eq!(v["status_code"], 404);
        assert!(v["message"].as_str().unwrap().contains("users:x"));
        let e = ApiError::TooManyAuthFailures { retry_after_s: 7 };
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["status_code"], 429);
        assert_eq!(v["retry_after_s"], 7);
    }
}
