//! Hot-reloadable settings: what `POST /config` and SIGHUP may change while
//! the server runs, and how every core picks the change up.
//!
//! The current [`Runtime`] is a [`Published`] value ([`RuntimeState`]); each
//! core reads it through its own copy ([`LocalRuntime`]), so a change is seen
//! by every core's next request and the request path takes no lock.

use crate::config::{Config, LOG_FORMATS, LOG_LEVELS};
use crate::published::{LocalCopy, Published};
use serde::Serialize;
use serde_json::{Map, Value};
use std::rc::Rc;
use std::sync::Arc;

/// Feature flags (`features.*`).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Features {
    pub semantic_cache: bool,
    pub llm_store: bool,
    pub cdc: bool,
    pub timeseries: bool,
}

/// Everything that can change at runtime.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Runtime {
    pub log_level: String,
    pub log_format: String,
    pub request_timeout_ms: u64,
    pub features: Features,
    pub cdc_retention_hours: u32,
    pub parallel_threshold: usize,
    pub batch_size: usize,
}

/// The keys `POST /config` accepts, as dotted paths.
pub const HOT_RELOADABLE: &[&str] = &[
    "logging.level",
    "logging.format",
    "request_timeout_ms",
    "server.request_timeout_ms",
    "features.semantic_cache",
    "features.llm_store",
    "features.cdc",
    "features.timeseries",
    "cdc_retention_hours",
    "query.parallel_threshold",
    "query.batch_size",
];

impl Runtime {
    pub fn from_config(c: &Config) -> Runtime {
        Runtime {
            log_level: c.logging.level.clone(),
            log_format: c.logging.format.clone(),
            request_timeout_ms: c.server.request_timeout_ms,
            features: Features {
                semantic_cache: c.features.semantic_cache,
                llm_store: c.features.llm_store,
                cdc: c.features.cdc,
                timeseries: c.features.timeseries,
            },
            cdc_retention_hours: c.cdc_retention_hours,
            parallel_threshold: c.query.parallel_threshold,
            batch_size: c.query.batch_size,
        }
    }

    /// Writes these values into a full config (for `GET /config`).
    pub fn apply_to(&self, c: &mut Config) {
        c.logging.level = self.log_level.clone();
        c.logging.format = self.log_format.clone();
        c.server.request_timeout_ms = self.request_timeout_ms;
        c.features.semantic_cache = self.features.semantic_cache;
        c.features.llm_store = self.features.llm_store;
        c.features.cdc = self.features.cdc;
        c.features.timeseries = self.features.timeseries;
        c.cdc_retention_hours = self.cdc_retention_hours;
        c.query.parallel_threshold = self.parallel_threshold;
        c.query.batch_size = self.batch_size;
    }
}

fn int_in(errors: &mut Vec<String>, key: &str, v: &Value, min: u64, max: u64) -> Option<u64> {
    match v.as_u64() {
        Some(n) if (min..=max).contains(&n) => Some(n),
        Some(n) => {
            errors.push(format!(
                "{key}: {n} is out of range (allowed {min}..={max})"
            ));
            None
        }
        None => {
            errors.push(format!(
                "{key}: must be an integer in {min}..={max}, got {v}"
            ));
            None
        }
    }
}

fn one_of(errors: &mut Vec<String>, key: &str, v: &Value, allowed: &[&str]) -> Option<String> {
    match v.as_str() {
        Some(s) if allowed.contains(&s) => Some(s.to_string()),
        _ => {
            errors.push(format!(
                "{key}: must be one of {}, got {v}",
                allowed.join(", ")
            ));
            None
        }
    }
}

fn boolean(errors: &mut Vec<String>, key: &str, v: &Value) -> Option<bool> {
    match v.as_bool() {
        Some(b) => Some(b),
        None => {
            errors.push(format!("{key}: must be a boolean (true or false), got {v}"));
            None
        }
    }
}

fn restart_only(errors: &mut Vec<String>, key: &str) {
    errors.push(format!(
        "{key}: cannot be changed at runtime (restart required)"
    ));
}

fn unknown(errors: &mut Vec<String>, key: &str) {
    errors.push(format!("{key}: unknown setting"));
}

fn section<'a>(
    errors: &mut Vec<String>,
    key: &str,
    v: &'a Value,
) -> Option<&'a Map<String, Value>> {
    match v.as_object() {
        Some(m) => Some(m),
        None => {
            errors.push(format!("{key}: must be an object"));
            None
        }
    }
}

/// Applies a `POST /config` body to `current`. All or nothing: any invalid,
/// unknown or restart-only key fails the whole update, and every such key
/// is named in the returned errors.
pub fn parse_update(current: &Runtime, body: &Value) -> Result<Runtime, Vec<String>> {
    let mut next = current.clone();
    let mut e = Vec::new();
    let Some(top) = body.as_object() else {
        return Err(vec!["the body must be a JSON object of settings".into()]);
    };
    if top.is_empty() {
        return Err(vec!["the body names no setting to change".into()]);
    }
    for (k, v) in top {
        match k.as_str() {
            "request_timeout_ms" => {
                if let Some(n) = int_in(&mut e, k, v, 1000, 300_000) {
                    next.request_timeout_ms = n;
                }
            }
            "cdc_retention_hours" => {
                if let Some(n) = int_in(&mut e, k, v, 1, 8760) {
                    next.cdc_retention_hours = n as u32;
                }
            }
            "logging" => {
                for (sk, sv) in section(&mut e, k, v).into_iter().flatten() {
                    let key = format!("logging.{sk}");
                    match sk.as_str() {
                        "level" => {
                            if let Some(s) = one_of(&mut e, &key, sv, LOG_LEVELS) {
                                next.log_level = s;
                            }
                        }
                        "format" => {
                            if let Some(s) = one_of(&mut e, &key, sv, LOG_FORMATS) {
                                next.log_format = s;
                            }
                        }
                        "file" | "rotation_size_mb" | "max_files" => restart_only(&mut e, &key),
                        _ => unknown(&mut e, &key),
                    }
                }
            }
            "features" => {
                for (sk, sv) in section(&mut e, k, v).into_iter().flatten() {
                    let key = format!("features.{sk}");
                    let slot = match sk.as_str() {
                        "semantic_cache" => &mut next.features.semantic_cache,
                        "llm_store" => &mut next.features.llm_store,
                        "cdc" => &mut next.features.cdc,
                        "timeseries" => &mut next.features.timeseries,
                        "retention" => {
                            restart_only(&mut e, &key);
                            continue;
                        }
                        _ => {
                            unknown(&mut e, &key);
                            continue;
                        }
                    };
                    if let Some(b) = boolean(&mut e, &key, sv) {
                        *slot = b;
                    }
                }
            }
            "query" => {
                for (sk, sv) in section(&mut e, k, v).into_iter().flatten() {
                    let key = format!("query.{sk}");
                    match sk.as_str() {
                        "parallel_threshold" => {
                            if let Some(n) = int_in(&mut e, &key, sv, 1, 10_000_000) {
                                next.parallel_threshold = n as usize;
                            }
                        }
                        "batch_size" => {
                            if let Some(n) = int_in(&mut e, &key, sv, 1, 1_000_000) {
                                next.batch_size = n as usize;
                            }
                        }
                        _ => unknown(&mut e, &key),
                    }
                }
            }
            "server" => {
                for (sk, sv) in section(&mut e, k, v).into_iter().flatten() {
                    let key = format!("server.{sk}");
                    match sk.as_str() {
                        "request_timeout_ms" => {
                            if let Some(n) = int_in(&mut e, &key, sv, 1000, 300_000) {
                                next.request_timeout_ms = n;
                            }
                        }
                        "host"
                        | "port"
                        | "worker_threads"
                        | "threads"
                        | "max_request_size_mb"
                        | "listen_backlog"
                        | "enable_auth"
                        | "api_keys"
                        | "enable_tls"
                        | "tls_cert"
                        | "tls_key"
                        | "tls_ca" => restart_only(&mut e, &key),
                        _ => unknown(&mut e, &key),
                    }
                }
            }
            "storage" | "rocksdb" | "vector_index" | "vector" | "tracing" => match v.as_object() {
                Some(m) if !m.is_empty() => {
                    for sk in m.keys() {
                        restart_only(&mut e, &format!("{k}.{sk}"));
                    }
                }
                _ => restart_only(&mut e, k),
            },
            _ => unknown(&mut e, k),
        }
    }
    if e.is_empty() {
        Ok(next)
    } else {
        Err(e)
    }
}

/// The shared current settings.
pub struct RuntimeState(Published<Runtime>);

impl RuntimeState {
    pub fn new(r: Runtime) -> RuntimeState {
        RuntimeState(Published::new(r))
    }

    pub fn current(&self) -> Arc<Runtime> {
        self.0.current()
    }

    /// Makes `r` current for every core's next request, and applies the
    /// logging settings.
    pub fn publish(&self, r: Runtime) {
        if let Err(e) = crate::obs::logging::apply(&r.log_level, &r.log_format) {
            tracing::error!("applying logging settings: {e}");
        }
        self.0.publish(r);
    }
}

/// One core's copy of the settings.
pub struct LocalRuntime(LocalCopy<Runtime>);

impl LocalRuntime {
    pub fn new(state: &RuntimeState) -> LocalRuntime {
        LocalRuntime(LocalCopy::new(&state.0))
    }

    /// The settings for this request.
    pub fn get(&self, state: &RuntimeState) -> Rc<Runtime> {
        self.0.get(&state.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Runtime {
        Runtime::from_config(&Config::default())
    }

    #[test]
    fn guide_examples_apply() {
        let r = parse_update(
            &base(),
            &json!({"logging": {"level": "info", "format": "json"}}),
        )
        .unwrap();
        assert_eq!(r.log_format, "json");
        let r = parse_update(&base(), &json!({"request_timeout_ms": 60000})).unwrap();
        assert_eq!(r.request_timeout_ms, 60000);
        let r = parse_update(&base(), &json!({"features": {"cdc": true}})).unwrap();
        assert!(r.features.cdc);
        let r = parse_update(
            &base(),
            &json!({"logging": {"level": "debug", "format": "json"}, "request_timeout_ms": 45000,
                    "features": {"semantic_cache": true, "cdc": true}}),
        )
        .unwrap();
        assert_eq!(
            (r.log_level.as_str(), r.request_timeout_ms),
            ("debug", 45000)
        );
        assert!(r.features.semantic_cache && r.features.cdc);
        let r = parse_update(
            &base(),
            &json!({"query": {"parallel_threshold": 50, "batch_size": 25}}),
        )
        .unwrap();
        assert_eq!((r.parallel_threshold, r.batch_size), (50, 25));
    }

    #[test]
    fn every_rule_is_enforced() {
        let cases = [
            (
                json!({"request_timeout_ms": 999}),
                "request_timeout_ms: 999 is out of range",
            ),
            (
                json!({"request_timeout_ms": 300001}),
                "request_timeout_ms: 300001",
            ),
            (
                json!({"request_timeout_ms": "60000"}),
                "request_timeout_ms: must be an integer",
            ),
            (json!({"cdc_retention_hours": 0}), "cdc_retention_hours: 0"),
            (
                json!({"cdc_retention_hours": 8761}),
                "cdc_retention_hours: 8761",
            ),
            (
                json!({"features": {"cdc": "yes"}}),
                "features.cdc: must be a boolean",
            ),
            (
                json!({"features": {"cdc": 1}}),
                "features.cdc: must be a boolean",
            ),
            (
                json!({"logging": {"level": "loud"}}),
                "logging.level: must be one of",
            ),
            (
                json!({"logging": {"format": "xml"}}),
                "logging.format: must be one of",
            ),
            (
                json!({"server": {"port": 9000}}),
                "server.port: cannot be changed at runtime",
            ),
            (
                json!({"server": {"threads": 4}}),
                "server.threads: cannot be changed at runtime",
            ),
            (
                json!({"rocksdb": {"memtable_size_mb": 1}}),
                "rocksdb.memtable_size_mb: cannot be changed",
            ),
            (
                json!({"storage": {"rocksdb_path": "/x"}}),
                "storage.rocksdb_path: cannot be changed",
            ),
            (
                json!({"vector": {"dimension": 3}}),
                "vector.dimension: cannot be changed",
            ),
            (json!({"bogus": 1}), "bogus: unknown setting"),
            (
                json!({"query": {"batch_size": 0}}),
                "query.batch_size: 0 is out of range",
            ),
            (json!([1]), "must be a JSON object"),
            (json!({}), "names no setting"),
        ];
        for (body, expect) in cases {
            let errs = parse_update(&base(), &body).unwrap_err().join("; ");
            assert!(errs.contains(expect), "{body}: {errs}");
        }
    }

    #[test]
    fn all_or_nothing_names_every_bad_key() {
        let errs = parse_update(
            &base(),
            &json!({"request_timeout_ms": 5000, "server": {"port": 1}, "features": {"cdc": "x"}}),
        )
        .unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
    }

    #[test]
    fn local_copies_follow_publish() {
        let state = RuntimeState::new(base());
        let local = LocalRuntime::new(&state);
        assert_eq!(local.get(&state).request_timeout_ms, 30_000);
        let mut r = base();
        r.request_timeout_ms = 5000;
        state.publish(r);
        assert_eq!(local.get(&state).request_timeout_ms, 5000);
    }
}
