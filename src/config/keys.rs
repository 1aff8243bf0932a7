//! Every configuration key, declared once: its dotted path, whether it may
//! change while the server runs, and its validation rule.
//!
//! [`KEYS`] drives [`Config::validate`] (start-up, `--validate`, SIGHUP and
//! `POST /config` alike), the `hot_reloadable` list of `GET /config`, and
//! the runtime changes: [`apply_patch`] (`POST /config`) and
//! [`apply_reload`] (SIGHUP) merge into the current configuration, run the
//! start-up deserializer and validation on the result, and then look at
//! which keys changed value: only keys marked hot may.
//!
//! Adding a hot-reloadable key: add the field to its section struct and one
//! `hot(..)` row here. (A value read on the request path on every request
//! may also get a field in `runtime::Runtime`.)

use super::{from_tree, Config, LOG_FORMATS, LOG_LEVELS};
use serde_json::{Map, Value};

/// How a key's value is checked (beyond its type, which the deserializer
/// checks).
#[derive(Clone, Copy)]
pub enum Rule {
    /// Any value of the field's type.
    Free,
    /// `true` or `false`.
    Bool,
    /// An integer in `min..=max`.
    Int(i64, i64),
    /// One of these strings.
    OneOf(&'static [&'static str]),
    /// A string (or path) that is not empty or blank.
    NonEmpty,
    /// A check that needs other keys (dependent ranges, refused features).
    Check(fn(&Config, &mut Vec<String>)),
}

impl Rule {
    /// What is allowed, for error messages; `None` where the type says it.
    pub fn allowed(&self) -> Option<String> {
        match self {
            Rule::Bool => Some("allowed true or false".into()),
            Rule::Int(min, max) => Some(format!("allowed {min}..={max}")),
            Rule::OneOf(set) => Some(format!("one of: {}", set.join(", "))),
            Rule::NonEmpty => Some("must not be empty".into()),
            Rule::Free | Rule::Check(_) => None,
        }
    }
}

/// One configuration key.
pub struct KeyRule {
    /// Dotted path in the config tree (`section.key`, or `key` at the top).
    pub path: &'static str,
    /// Whether `POST /config` and SIGHUP may change it.
    pub hot: bool,
    pub rule: Rule,
    /// Other dotted paths `POST /config` accepts for it.
    pub aliases: &'static [&'static str],
    /// Its value is never logged nor shown (API keys).
    pub secret: bool,
}

const fn hot(path: &'static str, rule: Rule) -> KeyRule {
    KeyRule {
        path,
        hot: true,
        rule,
        aliases: &[],
        secret: false,
    }
}

const fn cold(path: &'static str, rule: Rule) -> KeyRule {
    KeyRule {
        path,
        hot: false,
        rule,
        aliases: &[],
        secret: false,
    }
}

impl KeyRule {
    const fn aka(self, aliases: &'static [&'static str]) -> KeyRule {
        KeyRule { aliases, ..self }
    }

    const fn secret(self) -> KeyRule {
        KeyRule {
            secret: true,
            ..self
        }
    }
}

use Rule::{Bool, Check, Free, Int, NonEmpty, OneOf};

/// Every key of [`Config`], in the order `validate` reports them. A unit
/// test checks that this table and the struct name the same keys.
pub const KEYS: &[KeyRule] = &[
    cold("storage.rocksdb_path", NonEmpty),
    cold("storage.memtable_size_mb", Int(1, 65_536)),
    cold("storage.block_cache_size_mb", Int(1, 1_048_576)),
    cold("storage.max_open_files", Check(max_open_files)),
    cold("storage.enable_statistics", Bool),
    cold("storage.compression", Free),
    cold("storage.max_write_buffer_number", Int(2, 64)),
    cold(
        "storage.min_write_buffer_number_to_merge",
        Check(min_write_buffer_number_to_merge),
    ),
    cold("storage.level0_file_num_compaction_trigger", Int(1, 1000)),
    cold(
        "storage.level0_slowdown_writes_trigger",
        Check(level0_slowdown_writes_trigger),
    ),
    cold(
        "storage.level0_stop_writes_trigger",
        Check(level0_stop_writes_trigger),
    ),
    cold("storage.enable_bloom_filters", Bool),
    cold("storage.bloom_bits_per_key", Int(1, 64)),
    cold("storage.max_background_compactions", Int(1, 256)),
    cold("storage.sync_writes", Bool),
    cold("storage.wal_archive_path", Check(wal_archive_path)),
    cold("storage.wal_archive_interval_s", Int(1, 60)),
    cold("storage.group_commit", Bool),
    cold("storage.group_commit_max_writes", Int(1, 65_536)),
    cold("storage.group_commit_max_bytes", Int(4096, 1 << 30)),
    cold("storage.group_commit_on_core", Bool),
    cold("server.host", NonEmpty),
    cold("server.port", Int(0, 65_535)),
    cold("server.worker_threads", Int(0, 1024)).aka(&["server.threads"]),
    hot("server.request_timeout_ms", Int(1000, 300_000)).aka(&["request_timeout_ms"]),
    cold("server.max_request_size_mb", Int(1, 1024)),
    cold("server.listen_backlog", Int(1, 65_535)),
    cold("server.idle_timeout_ms", Int(1000, 3_600_000)),
    cold("server.max_connections", Int(0, 10_000_000)),
    hot("server.enable_auth", Bool),
    hot("server.api_keys", Check(api_keys)).secret(),
    hot("server.metrics_public", Bool),
    hot("server.allowed_hosts", Check(allowed_hosts)),
    hot("server.auth_failure_limit", Int(0, 1_000_000)),
    hot("server.auth_failure_window_s", Int(1, 86_400)),
    hot("server.auth_lockout_s", Int(1, 86_400)),
    cold("server.enable_tls", Check(tls_files)),
    cold("server.tls_cert", Free),
    cold("server.tls_key", Free),
    cold("server.tls_ca", Free),
    cold("server.tls_handshake_timeout_ms", Int(100, 300_000)),
    cold("server.shard_ports", Check(shard_ports)),
    cold("server.stall_threshold_ms", Int(0, 60_000)),
    hot("logging.level", OneOf(LOG_LEVELS)),
    hot("logging.format", OneOf(LOG_FORMATS)),
    cold("logging.file", Free),
    cold("logging.rotation_size_mb", Int(1, 102_400)),
    cold("logging.max_files", Int(1, 10_000)),
    cold("vector_index.engine", OneOf(&["hnsw"])),
    // Defaults of new vector indexes (existing ones keep theirs): hot.
    hot("vector_index.hnsw_m", Int(2, 128)),
    hot("vector_index.hnsw_ef_construction", Int(1, 10_000)),
    cold("vector_index.use_gpu", Check(use_gpu)),
    cold("vector_index.dimension", Int(1, 4096)),
    hot("features.semantic_cache", Bool),
    hot("features.llm_store", Bool),
    hot("features.cdc", Bool),
    hot("features.timeseries", Bool),
    hot("features.vectors", Bool),
    cold("features.retention.enabled", Bool),
    cold("features.retention.interval_hours", Int(1, 8760)),
    cold("features.retention.policies_path", Free),
    cold("tracing.enabled", Bool),
    cold("tracing.service_name", NonEmpty),
    cold("tracing.otlp_endpoint", Check(otlp_endpoint)),
    hot("query.parallel_threshold", Int(1, 10_000_000)),
    hot("query.batch_size", Int(1, 1_000_000)),
    hot("cdc_retention_hours", Int(1, 8760)),
    cold("backup.root", NonEmpty),
    cold("backup.retention_days", Int(0, 36_500)),
    cold("backup.retention_count", Int(0, 100_000)),
    cold("backup.io_limit_mb_per_s", Int(0, 100_000)),
    cold("semantic_cache.dimension", Int(1, 4096)),
    hot(
        "semantic_cache.similarity_threshold",
        Check(similarity_threshold),
    ),
    hot("semantic_cache.default_ttl_seconds", Int(0, 315_360_000)),
    hot("semantic_cache.max_entries", Int(1, 100_000_000)),
    hot("semantic_cache.max_bytes", Int(1 << 20, 1 << 42)),
];

fn similarity_threshold(c: &Config, e: &mut Vec<String>) {
    let t = c.semantic_cache.similarity_threshold;
    if !(t > 0.0 && t <= 1.0) {
        e.push(format!(
            "semantic_cache.similarity_threshold = {t} is out of range (allowed 0 < t <= 1)"
        ));
    }
}

fn range_error(key: &str, value: impl std::fmt::Display, min: i64, max: i64) -> String {
    format!("{key} = {value} is out of range (allowed {min}..={max})")
}

fn check_range(e: &mut Vec<String>, key: &str, value: i64, min: i64, max: i64) {
    if !(min..=max).contains(&value) {
        e.push(range_error(key, value, min, max));
    }
}

fn max_open_files(c: &Config, e: &mut Vec<String>) {
    let v = c.storage.max_open_files;
    if v != -1 && !(16..=10_000_000).contains(&v) {
        e.push(format!(
            "storage.max_open_files = {v} is out of range (allowed -1 for unlimited, or 16..=10000000)"
        ));
    }
}

fn min_write_buffer_number_to_merge(c: &Config, e: &mut Vec<String>) {
    let s = &c.storage;
    check_range(
        e,
        "storage.min_write_buffer_number_to_merge",
        s.min_write_buffer_number_to_merge.into(),
        1,
        (i64::from(s.max_write_buffer_number) - 1).max(1),
    );
}

fn level0_slowdown_writes_trigger(c: &Config, e: &mut Vec<String>) {
    let s = &c.storage;
    check_range(
        e,
        "storage.level0_slowdown_writes_trigger",
        s.level0_slowdown_writes_trigger.into(),
        s.level0_file_num_compaction_trigger.into(),
        10_000,
    );
}

fn level0_stop_writes_trigger(c: &Config, e: &mut Vec<String>) {
    let s = &c.storage;
    check_range(
        e,
        "storage.level0_stop_writes_trigger",
        s.level0_stop_writes_trigger.into(),
        s.level0_slowdown_writes_trigger.into(),
        10_000,
    );
}

/// Each key: exactly one of `key` (at least 16 characters) and
/// `key_sha256` (64 hex digits), a known role, tables that are table names,
/// no secret twice; auth on needs at least one key. Messages name the key
/// by its position (and `name`), never by its value.
fn api_keys(c: &Config, e: &mut Vec<String>) {
    let s = &c.server;
    if s.enable_auth && s.api_keys.is_empty() {
        e.push("server.enable_auth = true needs at least one entry in server.api_keys".into());
    }
    let mut digests = Vec::new();
    for (i, k) in s.api_keys.iter().enumerate() {
        let at = match &k.name {
            Some(n) => format!("server.api_keys[{i}] ({n:?})"),
            None => format!("server.api_keys[{i}]"),
        };
        match crate::http::auth::digest_of(k) {
            Ok(d) => {
                if digests.contains(&d) {
                    e.push(format!("{at}: the same key is listed twice"));
                }
                digests.push(d);
            }
            Err(why) => e.push(format!("{at}: {why}")),
        }
        if crate::http::auth::role_named(&k.role).is_none() {
            e.push(format!(
                "{at}: role {:?} is not one of: readonly, readwrite, admin",
                k.role
            ));
        }
        if let Some(tables) = &k.tables {
            if tables.is_empty() {
                e.push(format!(
                    "{at}: tables must name at least one table (leave it out for all)"
                ));
            }
            for t in tables {
                if t.is_empty() || t.contains(':') || t.chars().any(char::is_control) {
                    e.push(format!("{at}: tables: {t:?} is not a table name"));
                }
            }
        }
        if k.client_cert_subject.is_some() && s.tls_ca.is_none() {
            e.push(format!(
                "{at}: client_cert_subject needs mutual TLS (server.enable_tls and server.tls_ca)"
            ));
        }
    }
}

fn allowed_hosts(c: &Config, e: &mut Vec<String>) {
    for h in &c.server.allowed_hosts {
        if h.trim().is_empty() || h.contains(|ch: char| ch.is_whitespace() || ch == '/') {
            e.push(format!("server.allowed_hosts: {h:?} is not a host name"));
        }
    }
}

/// TLS on needs a certificate and a key (their contents are checked when
/// they are loaded: start-up, SIGHUP, `--validate`).
fn tls_files(c: &Config, e: &mut Vec<String>) {
    let s = &c.server;
    if s.enable_tls {
        if s.tls_cert.is_none() {
            e.push(
                "server.enable_tls = true needs server.tls_cert (a PEM certificate chain)".into(),
            );
        }
        if s.tls_key.is_none() {
            e.push("server.enable_tls = true needs server.tls_key (a PEM private key)".into());
        }
    } else if s.tls_ca.is_some() {
        e.push("server.tls_ca (mutual TLS) needs server.enable_tls = true".into());
    }
}

/// The per-core ports must fit below 65535: checked here for the
/// configured `worker_threads` (one core when it is 0, "one per CPU"), and
/// again at start-up for the real core count.
fn shard_ports(c: &Config, e: &mut Vec<String>) {
    if let Err(why) = c.shard_ports(c.server.worker_threads.max(1)) {
        e.push(why);
    }
}

/// The WAL archive is a directory of its own: not the database directory
/// nor inside it (RocksDB owns those files), not blank.
fn wal_archive_path(c: &Config, e: &mut Vec<String>) {
    let Some(p) = &c.storage.wal_archive_path else {
        return;
    };
    if p.as_os_str().is_empty() || p.to_string_lossy().trim().is_empty() {
        e.push(
            "storage.wal_archive_path must not be empty (leave it out to turn archiving off)"
                .into(),
        );
    } else if p.starts_with(&c.storage.rocksdb_path) {
        e.push(format!(
            "storage.wal_archive_path = {} must be outside storage.rocksdb_path ({})",
            p.display(),
            c.storage.rocksdb_path.display()
        ));
    }
}

fn use_gpu(c: &Config, e: &mut Vec<String>) {
    if c.vector_index.use_gpu {
        e.push(
            "vector_index.use_gpu = true: this build has no GPU path (vector search runs on the \
             CPU with hnsw_rs); refusing to start rather than ignore it"
                .into(),
        );
    }
}

fn otlp_endpoint(c: &Config, e: &mut Vec<String>) {
    let t = &c.tracing;
    if !(t.otlp_endpoint.starts_with("http://") || t.otlp_endpoint.starts_with("https://")) {
        e.push(format!(
            "tracing.otlp_endpoint = {:?} must be an http:// or https:// URL",
            t.otlp_endpoint
        ));
    }
    if t.enabled && !t.otlp_endpoint.starts_with("http://") {
        e.push(format!(
            "tracing.otlp_endpoint = {:?}: only http:// collectors are supported (TLS is not in this build)",
            t.otlp_endpoint
        ));
    }
}

/// The row for a dotted path or one of its aliases.
pub fn key_rule(path: &str) -> Option<&'static KeyRule> {
    KEYS.iter()
        .find(|r| r.path == path || r.aliases.contains(&path))
}

/// The keys `POST /config` and SIGHUP may change, with their aliases.
pub fn hot_reloadable() -> Vec<&'static str> {
    KEYS.iter()
        .filter(|r| r.hot)
        .flat_map(|r| std::iter::once(r.path).chain(r.aliases.iter().copied()))
        .collect()
}

/// The value at a dotted path.
pub(crate) fn get_dotted<'a>(tree: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(tree, |node, part| node.get(part))
}

/// Sets the value at a dotted path, making objects on the way.
pub(crate) fn set_dotted(tree: &mut Value, path: &str, value: Value) {
    let parts: Vec<String> = path.split('.').map(str::to_string).collect();
    super::set_path(tree, &parts, value);
}

/// Every problem with a configuration's values, each naming its key and
/// what is allowed; the checks are the rules of [`KEYS`].
pub(crate) fn validate(c: &Config) -> Vec<String> {
    let mut e = Vec::new();
    let tree = match serde_json::to_value(c) {
        Ok(t) => t,
        Err(err) => return vec![format!("configuration cannot be represented: {err}")],
    };
    for row in KEYS {
        let key = row.path;
        let Some(v) = get_dotted(&tree, key) else {
            e.push(format!("{key}: missing from the configuration"));
            continue;
        };
        match row.rule {
            Free => {}
            Bool => {
                if !v.is_boolean() {
                    e.push(format!("{key} = {v} is not allowed (true or false)"));
                }
            }
            Int(min, max) => match v.as_i64() {
                Some(n) => check_range(&mut e, key, n, min, max),
                None => e.push(range_error(key, v, min, max)),
            },
            OneOf(allowed) => {
                if !v.as_str().is_some_and(|s| allowed.contains(&s)) {
                    e.push(format!(
                        "{key} = {v} is not allowed (one of: {})",
                        allowed.join(", ")
                    ));
                }
            }
            NonEmpty => {
                if !matches!(v.as_str(), Some(s) if !s.trim().is_empty()) {
                    e.push(format!("{key} must not be empty"));
                }
            }
            Check(check) => check(c, &mut e),
        }
    }
    e
}

/// A change made by [`apply_patch`] or [`apply_reload`].
#[derive(Debug, Clone)]
pub struct Change {
    /// The new effective configuration.
    pub config: Config,
    /// `key = value` for every key whose value changed.
    pub changed: Vec<String>,
    /// Restart-only keys whose value differed and was left as it was
    /// (SIGHUP only; `POST /config` refuses such a change).
    pub restart_only: Vec<&'static str>,
}

/// One setting named in a patch.
struct Leaf<'a> {
    /// The path as the patch spells it (perhaps an alias).
    written: String,
    row: &'static KeyRule,
    value: &'a Value,
}

/// Splits a patch into its settings; unknown keys and non-object sections
/// are errors.
fn leaves<'a>(
    prefix: &str,
    obj: &'a Map<String, Value>,
    out: &mut Vec<Leaf<'a>>,
    errors: &mut Vec<String>,
) {
    for (k, v) in obj {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        if let Some(row) = key_rule(&path) {
            out.push(Leaf {
                written: path,
                row,
                value: v,
            });
        } else if KEYS.iter().any(|r| {
            r.path
                .strip_prefix(path.as_str())
                .is_some_and(|rest| rest.starts_with('.'))
        }) {
            match v.as_object() {
                Some(m) => leaves(&path, m, out, errors),
                None => errors.push(format!("{path}: must be an object")),
            }
        } else {
            errors.push(format!("{path}: unknown setting"));
        }
    }
}

/// The result of merging a patch into the current configuration.
struct Merged {
    /// The configuration built from the merged tree (`None` when it could
    /// not be built at all).
    candidate: Option<Config>,
    /// Keys whose value differs from the current one.
    changed: Vec<&'static KeyRule>,
    /// The merged tree, for reporting values.
    tree: Value,
    /// The current configuration as a tree.
    current: Value,
    errors: Vec<String>,
}

/// Merges `leaves` into `current` and builds and validates the result the
/// way start-up does. A value of the wrong type is reported for its key
/// and left out of the merge, so that every other key is still checked.
fn merge(current: &Config, leaves: &[Leaf<'_>], mut errors: Vec<String>) -> Merged {
    let cur = match serde_json::to_value(current) {
        Ok(v) => v,
        Err(e) => {
            errors.push(format!("current configuration cannot be represented: {e}"));
            return Merged {
                candidate: None,
                changed: Vec::new(),
                tree: Value::Null,
                current: Value::Null,
                errors,
            };
        }
    };
    let mut tree = cur.clone();
    for leaf in leaves {
        let mut alone = cur.clone();
        set_dotted(&mut alone, leaf.row.path, leaf.value.clone());
        match from_tree(alone) {
            Ok(_) => set_dotted(&mut tree, leaf.row.path, leaf.value.clone()),
            Err(e) => {
                let allowed = leaf
                    .row
                    .rule
                    .allowed()
                    .map(|a| format!(" ({a})"))
                    .unwrap_or_default();
                errors.push(format!("{}: {}{allowed}", leaf.written, e.into_inner()));
            }
        }
    }
    let candidate = match from_tree(tree.clone()) {
        Ok((c, _)) => Some(c),
        Err(e) => {
            errors.push(e.to_string());
            None
        }
    };
    let mut changed = Vec::new();
    if let Some(c) = &candidate {
        errors.extend(c.validate());
        // Compare typed values, re-serialized: `threads` and
        // `worker_threads`, or `lz4` and `{default: lz4, ..}`, are equal.
        match serde_json::to_value(c) {
            Ok(next) => {
                changed = KEYS
                    .iter()
                    .filter(|r| get_dotted(&cur, r.path) != get_dotted(&next, r.path))
                    .collect();
                tree = next;
            }
            Err(e) => errors.push(format!("configuration cannot be represented: {e}")),
        }
    }
    Merged {
        candidate,
        changed,
        tree,
        current: cur,
        errors,
    }
}

fn describe(tree: &Value, rows: &[&'static KeyRule]) -> Vec<String> {
    rows.iter()
        .map(|r| match get_dotted(tree, r.path) {
            Some(Value::Array(a)) if r.secret => format!("{} = ({} entries)", r.path, a.len()),
            Some(_) if r.secret => format!("{} = (secret)", r.path),
            Some(v) => format!("{} = {v}", r.path),
            None => r.path.to_string(),
        })
        .collect()
}

/// `POST /config`: merges `body` (a JSON object of settings, sections
/// nested as in the config file) into `current`, validates the result as
/// start-up does, and refuses any change to a restart-only key. All or
/// nothing: every unknown, ill-typed, out-of-range or restart-only key is
/// named in the errors. Writing a restart-only key's current value is not
/// a change.
pub fn apply_patch(current: &Config, body: &Value) -> Result<Change, Vec<String>> {
    let Some(top) = body.as_object() else {
        return Err(vec!["the body must be a JSON object of settings".into()]);
    };
    let mut found = Vec::new();
    let mut errors = Vec::new();
    leaves("", top, &mut found, &mut errors);
    if found.is_empty() && errors.is_empty() {
        return Err(vec!["the body names no setting to change".into()]);
    }
    let m = merge(current, &found, errors);
    let mut errors = m.errors;
    for row in m.changed.iter().filter(|r| !r.hot) {
        let name = found
            .iter()
            .find(|l| std::ptr::eq(l.row, *row))
            .map_or(row.path, |l| l.written.as_str());
        errors.push(format!(
            "{name}: cannot be changed at runtime (restart required)"
        ));
    }
    match m.candidate {
        Some(config) if errors.is_empty() => Ok(Change {
            changed: describe(&m.tree, &m.changed),
            config,
            restart_only: Vec::new(),
        }),
        _ => Err(errors),
    }
}

/// SIGHUP: takes the hot-reloadable values of `reread` (the configuration
/// built again from its sources) into `current`, through the same merge
/// and validation as [`apply_patch`]. Restart-only keys whose value
/// differs keep their current value and are listed in
/// [`Change::restart_only`].
pub fn apply_reload(current: &Config, reread: &Config) -> Result<Change, Vec<String>> {
    let patch = serde_json::to_value(reread)
        .map_err(|e| vec![format!("configuration cannot be represented: {e}")])?;
    let Some(top) = patch.as_object() else {
        return Err(vec!["configuration is not a mapping of sections".into()]);
    };
    let mut found = Vec::new();
    let mut errors = Vec::new();
    leaves("", top, &mut found, &mut errors);
    let m = merge(current, &found, errors);
    if !m.errors.is_empty() {
        return Err(m.errors);
    }
    let (hot, cold): (Vec<&'static KeyRule>, Vec<&'static KeyRule>) =
        m.changed.iter().copied().partition(|r| r.hot);
    // Only the hot values: the current tree with them copied in.
    let mut tree = m.current;
    for row in &hot {
        if let Some(v) = get_dotted(&m.tree, row.path) {
            set_dotted(&mut tree, row.path, v.clone());
        }
    }
    let config = from_tree(tree).map_err(|e| vec![e.to_string()])?.0;
    let errors = config.validate();
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Change {
        changed: describe(&m.tree, &hot),
        config,
        restart_only: cold.iter().map(|r| r.path).collect(),
    })
}

/// `GET /config`: every setting, API keys redacted, and the list of keys
/// that may change at runtime.
pub fn public_json(c: &Config) -> Value {
    let mut shown = c.clone();
    for k in shown.server.api_keys.iter_mut() {
        if k.key.is_some() {
            k.key = Some("***redacted***".into());
        }
    }
    let mut v = serde_json::to_value(&shown).unwrap_or_default();
    if let Some(obj) = v.as_object_mut() {
        obj.insert("hot_reloadable".into(), serde_json::json!(hot_reloadable()));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{build, CliOverrides};
    use serde_json::json;

    /// `{"a": {"b": v}}` for `a.b`.
    fn nested(path: &str, v: Value) -> Value {
        let mut t = json!({});
        set_dotted(&mut t, path, v);
        t
    }

    fn start_up(tree: Value) -> Result<Config, String> {
        build(tree, None, Vec::new(), &CliOverrides::default())
            .map(|l| l.config)
            .map_err(|e| e.to_string())
    }

    /// Values a rule accepts and values it refuses (with a text the
    /// refusal must contain).
    fn samples(rule: Rule) -> (Vec<Value>, Vec<(Value, String)>) {
        match rule {
            Int(min, max) => (
                vec![json!(min), json!(max), json!(min + (max - min) / 2)],
                vec![
                    (json!(min - 1), format!("allowed {min}..={max}")),
                    (json!(max + 1), format!("allowed {min}..={max}")),
                    (json!("12"), format!("allowed {min}..={max}")),
                ],
            ),
            OneOf(set) => (
                set.iter().map(|s| json!(s)).collect(),
                vec![(json!("bogus"), set.join(", ")), (json!(1), set.join(", "))],
            ),
            Bool => (
                vec![json!(true), json!(false)],
                vec![
                    (json!("yes"), "true or false".into()),
                    (json!(1), "true or false".into()),
                ],
            ),
            Free | NonEmpty | Check(_) => (Vec::new(), Vec::new()),
        }
    }

    #[test]
    fn the_table_and_the_struct_name_the_same_keys() {
        fn walk(prefix: &str, v: &Value, seen: &mut Vec<String>) {
            if key_rule(prefix).is_some() {
                seen.push(prefix.to_string());
                return;
            }
            match v.as_object() {
                Some(m) => {
                    for (k, v) in m {
                        let p = if prefix.is_empty() {
                            k.clone()
                        } else {
                            format!("{prefix}.{k}")
                        };
                        walk(&p, v, seen);
                    }
                }
                None => panic!("{prefix} is a config field without a row in KEYS"),
            }
        }
        let tree = serde_json::to_value(Config::default()).unwrap();
        let mut seen = Vec::new();
        walk("", &tree, &mut seen);
        let mut rows: Vec<String> = KEYS.iter().map(|r| r.path.to_string()).collect();
        seen.sort();
        rows.sort();
        assert_eq!(seen, rows);
        for r in KEYS {
            for a in r.aliases {
                assert!(get_dotted(&tree, a).is_none(), "alias {a} is also a key");
            }
        }
    }

    #[test]
    fn every_hot_key_is_checked_like_start_up() {
        let hot_rows: Vec<_> = KEYS.iter().filter(|r| r.hot).collect();
        assert_eq!(hot_rows.len(), 24);
        for row in hot_rows {
            if matches!(row.rule, Check(_)) || row.path == "server.enable_auth" {
                continue; // need other keys: checked by their own tests
            }
            let (good, bad) = samples(row.rule);
            assert!(!good.is_empty(), "{}: no samples", row.path);
            for written in std::iter::once(row.path).chain(row.aliases.iter().copied()) {
                for v in &good {
                    let patch = nested(written, v.clone());
                    let change = apply_patch(&Config::default(), &patch)
                        .unwrap_or_else(|e| panic!("{patch}: {e:?}"));
                    let after = serde_json::to_value(&change.config).unwrap();
                    assert_eq!(get_dotted(&after, row.path), Some(v), "{patch}");
                    let started = start_up(nested(row.path, v.clone())).unwrap();
                    assert_eq!(started, change.config, "{patch}");
                }
                for (v, allowed) in &bad {
                    let patch = nested(written, v.clone());
                    let errs = apply_patch(&Config::default(), &patch)
                        .unwrap_err()
                        .join("; ");
                    assert!(
                        errs.contains(row.path) || errs.contains(written),
                        "{patch}: {errs}"
                    );
                    assert!(errs.contains(allowed.as_str()), "{patch}: {errs}");
                    let e = start_up(nested(row.path, v.clone())).unwrap_err();
                    assert!(e.contains(row.path), "{e}");
                }
            }
        }
    }

    #[test]
    fn restart_only_keys_are_refused_when_their_value_changes() {
        let cases = [
            (json!({"server": {"port": 9000}}), "server.port"),
            (json!({"server": {"threads": 4}}), "server.threads"),
            (
                json!({"server": {"worker_threads": 4}}),
                "server.worker_threads",
            ),
            (
                json!({"storage": {"rocksdb_path": "/x"}}),
                "storage.rocksdb_path",
            ),
            (
                json!({"storage": {"compression": "zstd"}}),
                "storage.compression",
            ),
            (
                json!({"vector_index": {"dimension": 3}}),
                "vector_index.dimension",
            ),
            (json!({"logging": {"file": "x.log"}}), "logging.file"),
            (
                json!({"features": {"retention": {"enabled": true}}}),
                "features.retention.enabled",
            ),
            (json!({"tracing": {"enabled": true}}), "tracing.enabled"),
        ];
        for (patch, key) in cases {
            let errs = apply_patch(&Config::default(), &patch).unwrap_err();
            assert_eq!(
                errs,
                vec![format!(
                    "{key}: cannot be changed at runtime (restart required)"
                )],
                "{patch}"
            );
        }
        // Every restart-only key with a simple rule, set to another valid value.
        let defaults = serde_json::to_value(Config::default()).unwrap();
        for row in KEYS.iter().filter(|r| !r.hot) {
            let current = get_dotted(&defaults, row.path).unwrap();
            let other = match row.rule {
                Int(min, _) if current != &json!(min) => json!(min),
                Int(_, max) => json!(max),
                Bool => json!(!current.as_bool().unwrap()),
                _ => continue,
            };
            let errs = apply_patch(&Config::default(), &nested(row.path, other)).unwrap_err();
            assert!(
                errs.iter().any(|e| e
                    == &format!(
                        "{}: cannot be changed at runtime (restart required)",
                        row.path
                    )),
                "{}: {errs:?}",
                row.path
            );
            // Its current value is no change.
            apply_patch(&Config::default(), &nested(row.path, current.clone()))
                .unwrap_or_else(|e| panic!("{}: {e:?}", row.path));
        }
    }

    #[test]
    fn unknown_keys_and_malformed_bodies_are_refused() {
        let cases = [
            (json!({"bogus": 1}), "bogus: unknown setting"),
            (
                json!({"server": {"prot": 1}}),
                "server.prot: unknown setting",
            ),
            (
                json!({"rocksdb": {"memtable_size_mb": 1}}),
                "rocksdb: unknown setting",
            ),
            (
                json!({"query": {"batch_size": 5, "batch": 5}}),
                "query.batch: unknown setting",
            ),
            (json!({"logging": 5}), "logging: must be an object"),
            (json!([1]), "the body must be a JSON object of settings"),
            (json!("x"), "the body must be a JSON object of settings"),
            (json!({}), "the body names no setting to change"),
            (
                json!({"logging": {}}),
                "the body names no setting to change",
            ),
        ];
        for (patch, expect) in cases {
            let errs = apply_patch(&Config::default(), &patch).unwrap_err();
            assert!(errs.iter().any(|e| e == expect), "{patch}: {errs:?}");
        }
    }

    #[test]
    fn every_offending_key_is_named_and_nothing_applies() {
        let errs = apply_patch(
            &Config::default(),
            &json!({"request_timeout_ms": 60000, "server": {"port": 9000},
                    "features": {"cdc": "no"}, "cdc_retention_hours": 0, "nope": 1}),
        )
        .unwrap_err();
        assert_eq!(errs.len(), 4, "{errs:?}");
        let all = errs.join("; ");
        for key in [
            "server.port: cannot be changed",
            "features.cdc: invalid type",
            "cdc_retention_hours = 0 is out of range (allowed 1..=8760)",
            "nope: unknown setting",
        ] {
            assert!(all.contains(key), "{all}");
        }
    }

    #[test]
    fn a_patch_merges_and_keeps_its_siblings() {
        let first = apply_patch(
            &Config::default(),
            &json!({"logging": {"format": "json"}, "features": {"cdc": true}}),
        )
        .unwrap();
        assert_eq!(
            first.changed,
            vec!["logging.format = \"json\"", "features.cdc = true"]
        );
        let second = apply_patch(
            &first.config,
            &json!({"logging": {"level": "debug"}, "request_timeout_ms": 2000}),
        )
        .unwrap();
        let mut expect = Config::default();
        expect.logging.format = "json".into();
        expect.logging.level = "debug".into();
        expect.features.cdc = true;
        expect.server.request_timeout_ms = 2000;
        assert_eq!(second.config, expect);
    }

    #[test]
    fn reload_takes_hot_values_and_lists_restart_only_changes() {
        let mut current = Config::default();
        current.features.cdc = true;
        let mut reread = Config::default();
        reread.query.batch_size = 7;
        reread.storage.memtable_size_mb = 64;
        let change = apply_reload(&current, &reread).unwrap();
        assert_eq!(change.restart_only, vec!["storage.memtable_size_mb"]);
        let mut expect = Config::default();
        expect.query.batch_size = 7;
        assert_eq!(change.config, expect, "the file's cdc=false applies too");
        assert_eq!(
            change.changed,
            vec!["features.cdc = false", "query.batch_size = 7"]
        );
    }

    #[test]
    fn validate_reports_dependent_and_refused_keys() {
        let mut c = Config::default();
        c.storage.max_write_buffer_number = 4;
        c.storage.min_write_buffer_number_to_merge = 4;
        c.storage.level0_slowdown_writes_trigger = 2;
        c.storage.max_open_files = 3;
        c.server.enable_tls = true;
        c.server.tls_cert = Some("c.pem".into());
        c.tracing.otlp_endpoint = "ftp://x".into();
        c.tracing.service_name = " ".into();
        c.logging.format = "xml".into();
        let e = c.validate().join("\n");
        for s in [
            "storage.min_write_buffer_number_to_merge = 4 is out of range (allowed 1..=3)",
            "storage.level0_slowdown_writes_trigger = 2 is out of range (allowed 4..=10000)",
            "storage.max_open_files = 3",
            "server.enable_tls = true needs server.tls_key",
            "tracing.otlp_endpoint = \"ftp://x\"",
            "tracing.service_name must not be empty",
            "logging.format = \"xml\" is not allowed (one of: text, json)",
        ] {
            assert!(e.contains(s), "{s}\n{e}");
        }
        assert_eq!(c.validate().len(), 7, "{e}");
    }

    /// Random sequences of patches over the hot keys, some values in range
    /// and some out: a patch applies exactly when every value is allowed,
    /// it then changes exactly the keys it names, and a refused patch
    /// names each bad key once.
    #[test]
    fn random_patches_apply_all_or_nothing() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let hot: Vec<&KeyRule> = KEYS
            .iter()
            .filter(|r| r.hot && !matches!(r.rule, Check(_)) && r.path != "server.enable_auth")
            .collect();
        let mut current = Config::default();
        let mut applied = 0;
        for _ in 0..400 {
            let mut patch = json!({});
            let mut expect = serde_json::to_value(&current).unwrap();
            let mut bad = Vec::new();
            for row in &hot {
                if next() % 3 != 0 {
                    continue;
                }
                let (good, refused) = samples(row.rule);
                let v = if next() % 4 == 0 {
                    bad.push(row.path);
                    refused[(next() % refused.len() as u64) as usize].0.clone()
                } else {
                    good[(next() % good.len() as u64) as usize].clone()
                };
                set_dotted(&mut patch, row.path, v.clone());
                set_dotted(&mut expect, row.path, v);
            }
            match apply_patch(&current, &patch) {
                Ok(change) => {
                    assert!(bad.is_empty(), "{patch} applied");
                    assert_eq!(serde_json::to_value(&change.config).unwrap(), expect);
                    current = change.config;
                    applied += 1;
                }
                Err(errs) if patch == json!({}) => {
                    assert_eq!(errs, vec!["the body names no setting to change"]);
                }
                Err(errs) => {
                    assert_eq!(errs.len(), bad.len(), "{patch}: {errs:?}");
                    for key in bad {
                        assert!(errs.iter().any(|e| e.contains(key)), "{key}: {errs:?}");
                    }
                }
            }
        }
        assert!(applied > 50, "{applied}");
    }

    fn key(k: &str, role: &str) -> crate::config::ApiKey {
        crate::config::ApiKey {
            key: Some(k.into()),
            role: role.into(),
            ..Default::default()
        }
    }

    #[test]
    fn api_keys_are_checked_without_showing_them() {
        let mut c = Config::default();
        c.server.enable_auth = true;
        assert!(c.validate()[0].contains("needs at least one entry"));
        c.server.api_keys = vec![
            key("short-secret", "admin"),
            key("0123456789abcdef-ok", "root"),
            key("0123456789abcdef-ok", "readonly"),
            crate::config::ApiKey {
                key_sha256: Some("abc".into()),
                role: "readonly".into(),
                tables: Some(vec!["a:b".into()]),
                ..Default::default()
            },
            crate::config::ApiKey {
                role: "readonly".into(),
                ..Default::default()
            },
        ];
        let e = c.validate().join("\n");
        for s in [
            "server.api_keys[0]: key must be at least 16 characters",
            "server.api_keys[1]: role \"root\" is not one of",
            "server.api_keys[2]: the same key is listed twice",
            "server.api_keys[3]: key_sha256 must be 64 hex digits",
            "server.api_keys[3]: tables: \"a:b\" is not a table name",
            "server.api_keys[4]: give exactly one of key and key_sha256",
        ] {
            assert!(e.contains(s), "{s}\n{e}");
        }
        assert!(
            !e.contains("short-secret") && !e.contains("0123456789abcdef-ok"),
            "{e}"
        );
        // A change of keys is hot, and neither the log line nor GET /config
        // shows a key.
        let change = apply_patch(
            &Config::default(),
            &json!({"server": {"enable_auth": true, "api_keys": [
                {"key": "0123456789abcdef-ok", "role": "admin"}]}}),
        )
        .unwrap();
        let said = change.changed.join("; ");
        assert!(said.contains("server.api_keys = (1 entries)"), "{said}");
        assert!(!said.contains("0123456789abcdef-ok"), "{said}");
        let shown = public_json(&change.config).to_string();
        assert!(!shown.contains("0123456789abcdef-ok"), "{shown}");
        // An unknown field in a key is an error, not a warning: a typo in
        // `tables` must not grant every table.
        let errs = apply_patch(
            &Config::default(),
            &json!({"server": {"api_keys": [{"key": "0123456789abcdef-ok", "role": "admin", "tabels": ["a"]}]}}),
        )
        .unwrap_err()
        .join("; ");
        assert!(errs.contains("tabels"), "{errs}");
    }

    #[test]
    fn tls_needs_its_files() {
        let mut c = Config::default();
        c.server.tls_ca = Some("ca.pem".into());
        assert!(c.validate()[0].contains("needs server.enable_tls"));
        c.server.enable_tls = true;
        let e = c.validate().join("; ");
        assert!(
            e.contains("needs server.tls_cert") && e.contains("needs server.tls_key"),
            "{e}"
        );
    }

    #[test]
    fn shard_ports_follow_the_base_port_and_must_fit() {
        let mut c = Config::default();
        assert_eq!(c.shard_ports(4), Ok(None));
        c.server.shard_ports = true;
        c.server.port = 9000;
        assert_eq!(c.shard_ports(3), Ok(Some(vec![9001, 9002, 9003])));
        c.server.port = 0;
        assert_eq!(c.shard_ports(2), Ok(Some(vec![0, 0])));
        c.server.port = 65_534;
        assert_eq!(c.shard_ports(1), Ok(Some(vec![65_535])));
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        c.server.worker_threads = 2;
        let e = c.validate().join("; ");
        assert!(
            e.contains("server.shard_ports") && e.contains("65536"),
            "{e}"
        );
        c.server.shard_ports = false;
        assert!(c.validate().is_empty());
    }
}
