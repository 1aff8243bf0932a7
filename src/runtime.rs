//! Hot-reloadable settings: the per-core read view of the effective
//! configuration, and how every core picks a change up.
//!
//! Which keys may change, and their rules, are declared in
//! [`crate::config::KEYS`]; `POST /config` and SIGHUP go through
//! [`RuntimeState::apply_patch`] and [`RuntimeState::apply_reload`], which
//! call [`crate::config::apply_patch`] / [`crate::config::apply_reload`].
//!
//! The current [`Runtime`] is a [`Published`] value ([`RuntimeState`]); each
//! core reads it through its own copy ([`LocalRuntime`]), so a change is seen
//! by every core's next request and the request path takes no lock.

use crate::config::{Change, Config};
use crate::published::{LocalCopy, Published};
use serde::Serialize;
use serde_json::Value;
use std::rc::Rc;
use std::sync::Arc;

/// Feature flags (`features.*`).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Features {
    pub semantic_cache: bool,
    pub llm_store: bool,
    pub cdc: bool,
    pub timeseries: bool,
    pub vectors: bool,
}

/// The effective configuration, with the values the request path reads
/// copied out flat. Built only by [`Runtime::from_config`].
#[derive(Debug, Clone, PartialEq)]
pub struct Runtime {
    pub log_level: String,
    pub log_format: String,
    pub request_timeout_ms: u64,
    pub features: Features,
    pub cdc_retention_hours: u32,
    pub parallel_threshold: usize,
    pub batch_size: usize,
    /// API keys, roles and the `Host` allow-list (`server.enable_auth`,
    /// `api_keys`, `metrics_public`, `allowed_hosts`).
    pub auth: Arc<crate::http::auth::AuthSettings>,
    /// The whole effective configuration (start-up values plus every
    /// runtime change), for `GET /config` and the next change.
    pub config: Arc<Config>,
}

impl Runtime {
    /// The one place the read view is derived from a configuration.
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
                vectors: c.features.vectors,
            },
            cdc_retention_hours: c.cdc_retention_hours,
            parallel_threshold: c.query.parallel_threshold,
            batch_size: c.query.batch_size,
            auth: Arc::new(crate::http::auth::AuthSettings::from_config(&c.server)),
            config: Arc::new(c.clone()),
        }
    }

    /// `GET /config`: every setting (current values), secrets redacted,
    /// and the `hot_reloadable` keys.
    pub fn config_json(&self) -> Value {
        crate::config::public_json(&self.config)
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
        self.0.publish(r);
        self.apply_logging();
    }

    fn apply_logging(&self) {
        let r = self.0.current();
        if let Err(e) = crate::obs::logging::apply(&r.log_level, &r.log_format) {
            tracing::error!("applying logging settings: {e}");
        }
    }

    /// Changes the effective configuration with `f`, as one
    /// read-modify-write (two concurrent changes cannot lose each other).
    fn change(
        &self,
        f: impl FnOnce(&Config) -> Result<Change, Vec<String>>,
    ) -> Result<Change, Vec<String>> {
        let result = self.0.update(|rt| {
            let change = f(&rt.config)?;
            *rt = Runtime::from_config(&change.config);
            Ok(change)
        });
        if result.is_ok() {
            self.apply_logging();
        }
        result
    }

    /// `POST /config`: see [`crate::config::apply_patch`]. All or nothing.
    pub fn apply_patch(&self, body: &Value) -> Result<Change, Vec<String>> {
        self.change(|current| crate::config::apply_patch(current, body))
    }

    /// SIGHUP: see [`crate::config::apply_reload`]; `reread` is the
    /// configuration built again from its sources.
    pub fn apply_reload(&self, reread: &Config) -> Result<Change, Vec<String>> {
        self.change(|current| crate::config::apply_reload(current, reread))
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

    fn state() -> RuntimeState {
        RuntimeState::new(Runtime::from_config(&Config::default()))
    }

    #[test]
    fn the_view_follows_every_hot_key_of_the_config() {
        let state = state();
        state
            .apply_patch(&json!({
                "logging": {"level": "debug", "format": "json"},
                "request_timeout_ms": 45000,
                "features": {"semantic_cache": true, "llm_store": true, "cdc": true, "timeseries": true, "vectors": false},
                "cdc_retention_hours": 2,
                "query": {"parallel_threshold": 3, "batch_size": 4},
            }))
            .unwrap();
        let r = state.current();
        assert_eq!(
            (r.log_level.as_str(), r.log_format.as_str()),
            ("debug", "json")
        );
        assert_eq!(r.request_timeout_ms, 45000);
        assert_eq!(
            r.features,
            Features {
                semantic_cache: true,
                llm_store: true,
                cdc: true,
                timeseries: true,
                vectors: false,
            }
        );
        assert_eq!(
            (r.cdc_retention_hours, r.parallel_threshold, r.batch_size),
            (2, 3, 4)
        );
        assert_eq!(*r, Runtime::from_config(&r.config));
        assert_eq!(r.config.server.request_timeout_ms, 45000);
        assert_eq!(r.config_json()["server"]["request_timeout_ms"], 45000);
    }

    #[test]
    fn a_refused_patch_changes_nothing() {
        let state = state();
        let before = state.current();
        let errs = state
            .apply_patch(&json!({"request_timeout_ms": 5000, "server": {"port": 1}}))
            .unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(*state.current(), *before);
    }

    #[test]
    fn reload_applies_hot_values_and_keeps_restart_only_ones() {
        let state = state();
        let mut reread = Config::default();
        reread.query.batch_size = 7;
        reread.server.port = 9999;
        let change = state.apply_reload(&reread).unwrap();
        assert_eq!(change.restart_only, vec!["server.port"]);
        assert_eq!(change.changed, vec!["query.batch_size = 7"]);
        let r = state.current();
        assert_eq!(r.batch_size, 7);
        assert_eq!(r.config.server.port, Config::default().server.port);
    }

    #[test]
    fn local_copies_follow_changes() {
        let state = state();
        let local = LocalRuntime::new(&state);
        assert_eq!(local.get(&state).request_timeout_ms, 30_000);
        state
            .apply_patch(&json!({"server": {"request_timeout_ms": 5000}}))
            .unwrap();
        assert_eq!(local.get(&state).request_timeout_ms, 5000);
        let mut c = Config::default();
        c.server.request_timeout_ms = 6000;
        state.publish(Runtime::from_config(&c));
        assert_eq!(local.get(&state).request_timeout_ms, 6000);
    }
}
