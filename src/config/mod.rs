//! Configuration: one typed struct, its defaults, where it is read from, and
//! its validation. Each key's validation rule and whether it may change at
//! runtime are declared once, in [`KEYS`] (`keys.rs`), which also drives
//! `POST /config` ([`apply_patch`]) and SIGHUP ([`apply_reload`]).
//!
//! Precedence, lowest first: built-in defaults < config file (YAML or JSON)
//! < environment (`THEMIS_*`) < command-line flags. The file and the
//! environment are merged as a JSON tree before the typed struct is built,
//! so both go through the same deserializer: type errors name the key path,
//! unknown keys become warnings naming the key, and [`Config::validate`]
//! reports every out-of-range value with its allowed range.

mod keys;

pub use keys::{
    apply_patch, apply_reload, hot_reloadable, key_rule, public_json, Change, KeyRule, Rule, KEYS,
};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Files searched, in order, when no `--config` is given.
pub const SEARCH_PATHS: &[&str] = &[
    "./config.yaml",
    "./config.yml",
    "./config.json",
    "./config/config.yaml",
    "./config/config.yml",
    "./config/config.json",
    "/etc/vccdb/config.yaml",
    "/etc/vccdb/config.yml",
    "/etc/vccdb/config.json",
];

/// The whole server configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Config {
    pub storage: StorageConfig,
    pub server: ServerConfig,
    pub logging: LoggingConfig,
    pub vector_index: VectorIndexConfig,
    pub features: FeaturesConfig,
    pub tracing: TracingConfig,
    pub query: QueryConfig,
    pub backup: BackupConfig,
    pub semantic_cache: SemanticCacheConfig,
    /// How long change-feed events are kept (hours, 1..=8760).
    pub cdc_retention_hours: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct StorageConfig {
    pub rocksdb_path: PathBuf,
    pub memtable_size_mb: u64,
    pub block_cache_size_mb: u64,
    pub max_open_files: i32,
    pub enable_statistics: bool,
    pub compression: CompressionConfig,
    pub max_write_buffer_number: i32,
    pub min_write_buffer_number_to_merge: i32,
    pub level0_file_num_compaction_trigger: i32,
    pub level0_slowdown_writes_trigger: i32,
    pub level0_stop_writes_trigger: i32,
    pub enable_bloom_filters: bool,
    pub bloom_bits_per_key: u32,
    pub max_background_compactions: i32,
    /// fsync the write-ahead log before a write is acknowledged.
    pub sync_writes: bool,
    /// Continuous WAL archiving into this directory (off when absent):
    /// see `backup::archive`. Turns WAL recycling off.
    pub wal_archive_path: Option<PathBuf>,
    /// How often the archiver copies new WAL bytes, in seconds (the RPO of
    /// a restore from the archive is about this).
    pub wal_archive_interval_s: u32,
    /// Commit each core's entity writes in groups, off the reactor
    /// (`entity::group`); `false` commits each write on the reactor.
    pub group_commit: bool,
    /// Entity writes in one group at most.
    pub group_commit_max_writes: u32,
    /// Batch bytes in one group at most (a single larger write still
    /// commits, alone).
    pub group_commit_max_bytes: u64,
    /// Without `sync_writes`, commit a group on its core when RocksDB
    /// takes it at once, instead of on the helper thread (`entity::group`).
    pub group_commit_on_core: bool,
}

impl StorageConfig {
    /// Column families that every write may fill: entities, and the change
    /// feed (or index entries). Each gets a full memtable budget.
    pub const WRITTEN_FAMILIES: u64 = 2;

    /// The cap on all memtables together, in MiB (RocksDB's
    /// `db_write_buffer_size`): `memtable_size_mb` x `max_write_buffer_number`
    /// for each written family.
    pub fn memtable_budget_mb(&self) -> u64 {
        self.memtable_size_mb * self.max_write_buffer_number.max(1) as u64 * Self::WRITTEN_FAMILIES
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            rocksdb_path: PathBuf::from("./data"),
            memtable_size_mb: 256,
            block_cache_size_mb: 1024,
            max_open_files: 10000,
            enable_statistics: false,
            compression: CompressionConfig::default(),
            max_write_buffer_number: 2,
            min_write_buffer_number_to_merge: 1,
            level0_file_num_compaction_trigger: 4,
            level0_slowdown_writes_trigger: 20,
            level0_stop_writes_trigger: 36,
            enable_bloom_filters: true,
            bloom_bits_per_key: 10,
            max_background_compactions: 4,
            sync_writes: false,
            wal_archive_path: None,
            wal_archive_interval_s: 10,
            group_commit: true,
            group_commit_max_writes: 1024,
            group_commit_max_bytes: 4 << 20,
            group_commit_on_core: true,
        }
    }
}

/// A block compression algorithm.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Snappy,
    Lz4,
    Zstd,
    Zlib,
}

/// `compression: lz4` (both levels) or `compression: {default, bottommost}`.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct CompressionConfig {
    pub default: Compression,
    pub bottommost: Compression,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        CompressionConfig {
            default: Compression::Lz4,
            bottommost: Compression::Zstd,
        }
    }
}

impl<'de> Deserialize<'de> for CompressionConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Plain(Compression),
            Levels {
                #[serde(default = "lz4")]
                default: Compression,
                #[serde(default = "zstd")]
                bottommost: Compression,
            },
        }
        fn lz4() -> Compression {
            Compression::Lz4
        }
        fn zstd() -> Compression {
            Compression::Zstd
        }
        match Form::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "expected one of none, snappy, lz4, zstd, zlib, or {default: .., bottommost: ..}",
            )
        })? {
            Form::Plain(c) => Ok(CompressionConfig {
                default: c,
                bottommost: c,
            }),
            Form::Levels {
                default,
                bottommost,
            } => Ok(CompressionConfig {
                default,
                bottommost,
            }),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    /// Executors (one pinned core each); 0 means one per online CPU.
    #[serde(alias = "threads")]
    pub worker_threads: usize,
    pub request_timeout_ms: u64,
    pub max_request_size_mb: u64,
    pub listen_backlog: i32,
    /// Close a connection whose client sends nothing for this long (between
    /// requests or in the middle of one).
    pub idle_timeout_ms: u64,
    /// Open client connections allowed in all (split evenly over the
    /// cores); beyond it a new connection is answered 503 and closed.
    /// 0 means unlimited.
    pub max_connections: usize,
    /// Require an API key on every route but `/health` (and `/metrics`
    /// when `metrics_public`); see `http::auth`.
    pub enable_auth: bool,
    /// The keys and their roles (hot-reloadable).
    pub api_keys: Vec<ApiKey>,
    /// Serve `/metrics` without a key even when auth is on.
    pub metrics_public: bool,
    /// `Host` values (names, optionally with `:port`) requests may carry;
    /// empty: any. Guards against DNS rebinding.
    pub allowed_hosts: Vec<String>,
    /// Failed API keys (401 with a key) one peer address may present per
    /// `auth_failure_window_s` on one core before it is refused 429 for
    /// `auth_lockout_s`; 0 turns the limit off (`http::limiter`).
    pub auth_failure_limit: u32,
    pub auth_failure_window_s: u64,
    pub auth_lockout_s: u64,
    /// Serve HTTPS only (rustls): no plaintext listener.
    pub enable_tls: bool,
    /// PEM certificate chain (leaf first) and private key.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates: when set, clients must present a certificate
    /// signed by one of them (mutual TLS).
    pub tls_ca: Option<PathBuf>,
    /// Longest a TLS handshake may take before the connection is dropped.
    pub tls_handshake_timeout_ms: u64,
    /// Also give every core a port of its own, `port + 1 + core`, accepted
    /// only by that core, so that a shard-aware client can send each key to
    /// its owner (`GET /shards`, docs/sharding.md).
    pub shard_ports: bool,
    /// A core whose reactor does not get to its ready work for this long
    /// has stalled (`themis_reactor_stalls_total`, `obs::stalls`); 0 turns
    /// the probe off.
    pub stall_threshold_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            // Loopback unless configured otherwise: a server without auth
            // must not be reachable from the network by accident.
            host: "127.0.0.1".into(),
            port: 8765,
            worker_threads: 0,
            request_timeout_ms: 30_000,
            max_request_size_mb: 10,
            listen_backlog: 1024,
            idle_timeout_ms: 120_000,
            max_connections: 10_000,
            enable_auth: false,
            api_keys: Vec::new(),
            metrics_public: false,
            allowed_hosts: Vec::new(),
            auth_failure_limit: 10,
            auth_failure_window_s: 60,
            auth_lockout_s: 60,
            enable_tls: false,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            tls_handshake_timeout_ms: 10_000,
            shard_ports: false,
            stall_threshold_ms: 10,
        }
    }
}

/// One API key: the secret (`key`) or its SHA-256 in hex (`key_sha256`),
/// a role, and optionally the tables it is limited to and the client
/// certificate it must come with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_sha256: Option<String>,
    /// `readonly`, `readwrite` or `admin`.
    pub role: String,
    /// A name for logs (the key itself is never logged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Only these tables (entity keys `table:*`, queries, index admin, the
    /// change feed); absent: every table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tables: Option<Vec<String>>,
    /// Accepted only on a mutual-TLS connection whose verified client
    /// certificate has this subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_subject: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct LoggingConfig {
    pub level: String,
    pub format: String,
    pub file: Option<PathBuf>,
    pub rotation_size_mb: u64,
    pub max_files: u32,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            level: "info".into(),
            format: "text".into(),
            file: None,
            rotation_size_mb: 100,
            max_files: 10,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct VectorIndexConfig {
    pub engine: String,
    pub hnsw_m: u32,
    pub hnsw_ef_construction: u32,
    pub use_gpu: bool,
    pub dimension: u32,
}

impl Default for VectorIndexConfig {
    fn default() -> Self {
        VectorIndexConfig {
            engine: "hnsw".into(),
            hnsw_m: 16,
            hnsw_ef_construction: 200,
            use_gpu: false,
            dimension: 768,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct FeaturesConfig {
    pub semantic_cache: bool,
    pub llm_store: bool,
    pub cdc: bool,
    pub timeseries: bool,
    /// The `/vector` routes (on by default; indexes are maintained either way).
    pub vectors: bool,
    pub retention: RetentionConfig,
}

impl Default for FeaturesConfig {
    fn default() -> Self {
        FeaturesConfig {
            semantic_cache: false,
            llm_store: false,
            cdc: false,
            timeseries: false,
            vectors: true,
            retention: RetentionConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RetentionConfig {
    pub enabled: bool,
    pub interval_hours: u32,
    pub policies_path: PathBuf,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            enabled: false,
            interval_hours: 24,
            policies_path: PathBuf::from("./config/retention_policies.yaml"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct TracingConfig {
    pub enabled: bool,
    pub service_name: String,
    pub otlp_endpoint: String,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            enabled: false,
            service_name: "themis-server".into(),
            otlp_endpoint: "http://localhost:4318".into(),
        }
    }
}

/// The query engine's fan-out knobs (the guide's PARALLEL_THRESHOLD and
/// BATCH_SIZE), runtime settings rather than constants.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct QueryConfig {
    pub parallel_threshold: usize,
    pub batch_size: usize,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            parallel_threshold: 100,
            batch_size: 50,
        }
    }
}

/// Backups (`POST /api/admin/backup`, `themis_server --backup`) and
/// verification (`POST /api/admin/verify`): where backups go, how long they
/// are kept, how fast a verification may read.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct BackupConfig {
    /// Where backups go when a request names no directory.
    pub root: PathBuf,
    /// Backups older than this many days are deleted after a successful
    /// new backup (0: age alone never deletes one).
    pub retention_days: u32,
    /// At most this many backups are kept, the newest (0: no count limit).
    pub retention_count: u32,
    /// The most a backup (checksumming its files) or a verification reads
    /// per second, in MiB (0: unlimited).
    pub io_limit_mb_per_s: u32,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            root: PathBuf::from("./backups"),
            retention_days: 7,
            retention_count: 0,
            io_limit_mb_per_s: 256,
        }
    }
}

/// The semantic cache (`features.semantic_cache`, `/cache/*`): the
/// embedding dimension, the similarity a semantic hit needs, and the
/// bounds of what it keeps.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SemanticCacheConfig {
    /// Components of every embedding (restart to change).
    pub dimension: usize,
    /// Cosine similarity a semantic hit needs when a query gives no
    /// `threshold` (0 < t <= 1).
    pub similarity_threshold: f64,
    /// Lifetime of an entry whose put gives no `ttl_seconds` (0: none).
    pub default_ttl_seconds: u64,
    /// Most entries kept; past it the least recently used go.
    pub max_entries: u64,
    /// Most bytes of stored entries kept; past it the least recently used go.
    pub max_bytes: u64,
}

impl Default for SemanticCacheConfig {
    fn default() -> Self {
        SemanticCacheConfig {
            dimension: 384,
            similarity_threshold: 0.92,
            default_ttl_seconds: 3600,
            max_entries: 100_000,
            max_bytes: 1 << 30,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            storage: StorageConfig::default(),
            server: ServerConfig::default(),
            logging: LoggingConfig::default(),
            vector_index: VectorIndexConfig::default(),
            features: FeaturesConfig::default(),
            tracing: TracingConfig::default(),
            query: QueryConfig::default(),
            backup: BackupConfig::default(),
            semantic_cache: SemanticCacheConfig::default(),
            cdc_retention_hours: 168,
        }
    }
}

/// Values given on the command line; they win over everything else.
#[derive(Debug, Clone, Default)]
pub struct CliOverrides {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub db: Option<PathBuf>,
    pub threads: Option<usize>,
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value for `{key}`: {message}")]
    Type { key: String, message: String },
    #[error("invalid configuration:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

/// A configuration with where it came from and what was odd about it.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: Config,
    /// The file read, or `None` for built-in defaults.
    pub source: Option<PathBuf>,
    /// Unknown keys and unused environment variables.
    pub warnings: Vec<String>,
}

/// Finds the config file: the explicit path, else the first of
/// [`SEARCH_PATHS`] that exists.
pub fn find_file(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    SEARCH_PATHS.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// Parses a config file's text; JSON for `.json`, YAML otherwise (YAML is a
/// superset of JSON, so either works in a `.yaml` file).
pub fn parse_text(path: &Path, text: &str) -> Result<Value, ConfigError> {
    let is_json = path.extension().and_then(|e| e.to_str()) == Some("json");
    let value: Value = if is_json {
        serde_json::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?
    } else {
        serde_yaml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?
    };
    match value {
        Value::Null => Ok(Value::Object(Default::default())),
        Value::Object(_) => Ok(value),
        _ => Err(ConfigError::Parse {
            path: path.to_path_buf(),
            message: "the top level must be a mapping of sections".into(),
        }),
    }
}

/// Sections a `THEMIS_<SECTION>_<KEY>` variable may name, longest first so
/// `vector_index` wins over a shorter prefix.
const ENV_SECTIONS: &[&str] = &[
    "semantic_cache",
    "vector_index",
    "features",
    "logging",
    "storage",
    "tracing",
    "server",
    "query",
    "backup",
];

/// Variables that are read elsewhere and are not config keys.
const ENV_NOT_KEYS: &[&str] = &["THEMIS_CONFIG", "THEMIS_TEST_FAULTS"];

/// Maps a `THEMIS_*` variable to its config key path.
pub fn env_key_path(var: &str) -> Option<Vec<String>> {
    let rest = var.strip_prefix("THEMIS_")?;
    let named: Option<&[&str]> = match rest {
        "PORT" => Some(&["server", "port"]),
        "STORAGE_PATH" => Some(&["storage", "rocksdb_path"]),
        "LOG_LEVEL" => Some(&["logging", "level"]),
        "LOG_FORMAT" => Some(&["logging", "format"]),
        "WORKER_THREADS" => Some(&["server", "worker_threads"]),
        "STORAGE_COMPRESSION_DEFAULT" => Some(&["storage", "compression", "default"]),
        "STORAGE_COMPRESSION_BOTTOMMOST" => Some(&["storage", "compression", "bottommost"]),
        "CDC_RETENTION_HOURS" => Some(&["cdc_retention_hours"]),
        _ => None,
    };
    if let Some(path) = named {
        return Some(path.iter().map(|s| s.to_string()).collect());
    }
    let lower = rest.to_ascii_lowercase();
    for section in ENV_SECTIONS {
        if let Some(key) = lower
            .strip_prefix(section)
            .and_then(|k| k.strip_prefix('_'))
        {
            if !key.is_empty() {
                return Some(vec![section.to_string(), key.to_string()]);
            }
        }
    }
    None
}

/// Turns an environment string into a JSON value: numbers and booleans are
/// typed, everything else stays a string.
fn env_value(raw: &str) -> Value {
    match serde_yaml::from_str::<Value>(raw) {
        Ok(v @ (Value::Bool(_) | Value::Number(_))) => v,
        _ => Value::String(raw.to_string()),
    }
}

fn set_path(root: &mut Value, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = root;
    for part in parents {
        if !node.is_object() {
            *node = Value::Object(Default::default());
        }
        let Value::Object(map) = node else {
            return;
        };
        node = map
            .entry(part.clone())
            .or_insert_with(|| Value::Object(Default::default()));
    }
    if !node.is_object() {
        *node = Value::Object(Default::default());
    }
    if let Value::Object(map) = node {
        map.insert(last.clone(), value);
    }
}

/// The typed configuration from a JSON tree, and the paths of the keys it
/// does not know. Type errors name the key path. Start-up ([`build`]),
/// `POST /config` and SIGHUP all go through this.
pub(crate) fn from_tree(
    tree: Value,
) -> Result<(Config, Vec<String>), serde_path_to_error::Error<serde_json::Error>> {
    let mut unknown = Vec::new();
    let mut on_unknown = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
    let de = serde_ignored::Deserializer::new(tree, &mut on_unknown);
    let config: Config = serde_path_to_error::deserialize(de)?;
    Ok((config, unknown))
}

/// Builds the configuration from a parsed file tree, environment variables
/// and command-line overrides.
pub fn build(
    mut tree: Value,
    source: Option<PathBuf>,
    env: impl IntoIterator<Item = (String, String)>,
    cli: &CliOverrides,
) -> Result<LoadedConfig, ConfigError> {
    let mut warnings = Vec::new();
    let mut env_origin: BTreeMap<String, String> = BTreeMap::new();
    for (var, raw) in env {
        if !var.starts_with("THEMIS_") || ENV_NOT_KEYS.contains(&var.as_str()) {
            continue;
        }
        match env_key_path(&var) {
            Some(path) => {
                env_origin.insert(path.join("."), var.clone());
                set_path(&mut tree, &path, env_value(&raw));
            }
            None => warnings.push(format!(
                "environment variable {var} matches no config key (expected THEMIS_<SECTION>_<KEY>)"
            )),
        }
    }

    let (mut config, unknown) = from_tree(tree).map_err(|e| {
        let key = e.path().to_string();
        let key = env_origin
            .get(&key)
            .map(|var| format!("{key} (from {var})"))
            .unwrap_or(key);
        ConfigError::Type {
            key,
            message: e.into_inner().to_string(),
        }
    })?;
    for key in unknown {
        match env_origin.get(&key) {
            Some(var) => warnings.push(format!("unknown config key `{key}` (from {var}) ignored")),
            None => warnings.push(format!("unknown config key `{key}` ignored")),
        }
    }

    if let Some(h) = &cli.host {
        config.server.host = h.clone();
    }
    if let Some(p) = cli.port {
        config.server.port = p;
    }
    if let Some(d) = &cli.db {
        config.storage.rocksdb_path = d.clone();
    }
    if let Some(t) = cli.threads {
        config.server.worker_threads = t;
    }

    let errors = config.validate();
    if !errors.is_empty() {
        return Err(ConfigError::Invalid(errors));
    }
    Ok(LoadedConfig {
        config,
        source,
        warnings,
    })
}

/// Reads the file (explicit or searched), the process environment and the
/// command-line overrides.
pub fn load(explicit: Option<&Path>, cli: &CliOverrides) -> Result<LoadedConfig, ConfigError> {
    let file = find_file(explicit);
    let tree = match &file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
                path: path.clone(),
                message: e.to_string(),
            })?;
            parse_text(path, &text)?
        }
        None => Value::Object(Default::default()),
    };
    build(tree, file, std::env::vars(), cli)
}

/// Log levels the server accepts.
pub const LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error"];
/// Log formats the server accepts.
pub const LOG_FORMATS: &[&str] = &["text", "json"];

impl Config {
    /// Every problem with the values, each naming its key and allowed
    /// range: the rules of [`KEYS`].
    pub fn validate(&self) -> Vec<String> {
        keys::validate(self)
    }

    /// The number of executors to start on a machine with `cpus` usable CPUs.
    pub fn effective_threads(&self, cpus: usize) -> usize {
        match self.server.worker_threads {
            0 => cpus.max(1),
            n => n,
        }
    }

    /// Each core's own port (`server.shard_ports`) for `shards` cores:
    /// `port + 1 + core`, or 0 for every core (an ephemeral port each) when
    /// `port` is 0; `None` when shard ports are off. Refused when the last
    /// one would pass 65535.
    pub fn shard_ports(&self, shards: usize) -> Result<Option<Vec<u16>>, String> {
        let s = &self.server;
        if !s.shard_ports {
            return Ok(None);
        }
        if s.port == 0 {
            return Ok(Some(vec![0; shards]));
        }
        let last = u32::from(s.port) + shards as u32;
        if last > u32::from(u16::MAX) {
            return Err(format!(
                "server.shard_ports = true: port {} + 1 + core for {shards} cores reaches {last}, past 65535 (lower server.port)",
                s.port
            ));
        }
        Ok(Some((1..=shards).map(|i| s.port + i as u16).collect()))
    }

    /// The request body limit in bytes.
    pub fn max_body_bytes(&self) -> usize {
        (self.server.max_request_size_mb as usize) << 20
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn yaml(text: &str) -> Value {
        parse_text(Path::new("c.yaml"), text).unwrap()
    }

    #[test]
    fn defaults_are_valid() {
        assert!(Config::default().validate().is_empty());
        let c = build(yaml(""), None, env(&[]), &CliOverrides::default()).unwrap();
        assert_eq!(c.config, Config::default());
        assert_eq!(c.config.storage.rocksdb_path, PathBuf::from("./data"));
        assert_eq!(c.config.server.port, 8765);
    }

    #[test]
    fn guide_yaml_loads_without_warnings() {
        let text = r#"
storage:
  rocksdb_path: /var/lib/vccdb/data
  memtable_size_mb: 256
  block_cache_size_mb: 1024
  max_open_files: 10000
  enable_statistics: true
  compression:
    default: lz4
    bottommost: zstd
server:
  host: 0.0.0.0
  port: 8765
  worker_threads: 8
  request_timeout_ms: 30000
  max_request_size_mb: 10
logging:
  level: info
  file: /var/log/vccdb/server.log
  rotation_size_mb: 100
  max_files: 10
vector_index:
  engine: hnsw
  hnsw_m: 16
  hnsw_ef_construction: 200
  use_gpu: false
features:
  semantic_cache: true
  llm_store: true
  cdc: true
  timeseries: true
  retention:
    enabled: true
    interval_hours: 24
    policies_path: ./config/retention_policies.yaml
tracing:
  enabled: true
  service_name: themis-server
  otlp_endpoint: http://localhost:4318
"#;
        let c = build(yaml(text), None, env(&[]), &CliOverrides::default()).unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_eq!(c.config.server.worker_threads, 8);
        assert!(c.config.storage.enable_statistics);
        assert!(c.config.features.cdc);
    }

    #[test]
    fn plain_compression_string_sets_both_levels() {
        let c = build(
            yaml("storage: {compression: zstd}"),
            None,
            env(&[]),
            &CliOverrides::default(),
        )
        .unwrap();
        assert_eq!(c.config.storage.compression.default, Compression::Zstd);
        assert_eq!(c.config.storage.compression.bottommost, Compression::Zstd);
        let err = build(
            yaml("storage: {compression: brotli}"),
            None,
            env(&[]),
            &CliOverrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("storage.compression"), "{err}");
    }

    #[test]
    fn precedence_defaults_file_env_cli() {
        let file = yaml("server: {port: 7000, host: 127.0.0.1}\nlogging: {level: warn}");
        let e = env(&[
            ("THEMIS_SERVER_PORT", "9000"),
            ("THEMIS_LOG_LEVEL", "debug"),
            ("THEMIS_STORAGE_PATH", "/tmp/x"),
            ("THEMIS_WORKER_THREADS", "3"),
            ("THEMIS_STORAGE_BLOCK_CACHE_SIZE_MB", "64"),
            ("THEMIS_VECTOR_INDEX_HNSW_M", "32"),
            ("PATH", "/bin"),
        ]);
        let c = build(file.clone(), None, e.clone(), &CliOverrides::default())
            .unwrap()
            .config;
        assert_eq!(c.server.port, 9000);
        assert_eq!(c.server.host, "127.0.0.1");
        assert_eq!(c.logging.level, "debug");
        assert_eq!(c.storage.rocksdb_path, PathBuf::from("/tmp/x"));
        assert_eq!(c.server.worker_threads, 3);
        assert_eq!(c.storage.block_cache_size_mb, 64);
        assert_eq!(c.vector_index.hnsw_m, 32);
        let cli = CliOverrides {
            port: Some(9100),
            threads: Some(2),
            db: Some("/tmp/y".into()),
            host: Some("::1".into()),
        };
        let c = build(file, None, e, &cli).unwrap().config;
        assert_eq!(c.server.port, 9100);
        assert_eq!(c.server.worker_threads, 2);
        assert_eq!(c.storage.rocksdb_path, PathBuf::from("/tmp/y"));
        assert_eq!(c.server.host, "::1");
    }

    #[test]
    fn unknown_keys_and_env_vars_warn() {
        let c = build(
            yaml("storage: {memtable_sz_mb: 3}\nbogus: 1"),
            None,
            env(&[("THEMIS_NOPE", "1"), ("THEMIS_SERVER_PROT", "1")]),
            &CliOverrides::default(),
        )
        .unwrap();
        let w = c.warnings.join("\n");
        assert!(w.contains("storage.memtable_sz_mb"), "{w}");
        assert!(w.contains("`bogus`"), "{w}");
        assert!(w.contains("THEMIS_NOPE"), "{w}");
        assert!(
            w.contains("server.prot") && w.contains("THEMIS_SERVER_PROT"),
            "{w}"
        );
    }

    #[test]
    fn type_errors_name_the_key() {
        let err = build(
            yaml("server: {port: high}"),
            None,
            env(&[]),
            &CliOverrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("server.port"), "{err}");
        let err = build(
            yaml(""),
            None,
            env(&[("THEMIS_SERVER_PORT", "x")]),
            &CliOverrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("THEMIS_SERVER_PORT"), "{err}");
    }

    #[test]
    fn ranges_are_checked_with_their_bounds() {
        let err = build(
            yaml("server: {request_timeout_ms: 5}\nlogging: {level: loud}\ncdc_retention_hours: 0\nquery: {batch_size: 0}"),
            None,
            env(&[]),
            &CliOverrides::default(),
        )
        .unwrap_err();
        let s = err.to_string();
        assert!(
            s.contains("server.request_timeout_ms = 5 is out of range (allowed 1000..=300000)"),
            "{s}"
        );
        assert!(s.contains("logging.level"), "{s}");
        assert!(s.contains("cdc_retention_hours"), "{s}");
        assert!(s.contains("query.batch_size"), "{s}");
    }

    #[test]
    fn json_files_parse() {
        let v = parse_text(Path::new("c.json"), r#"{"server": {"port": 1234}}"#).unwrap();
        let c = build(v, None, env(&[]), &CliOverrides::default()).unwrap();
        assert_eq!(c.config.server.port, 1234);
        assert!(parse_text(Path::new("c.json"), "{").is_err());
        assert!(parse_text(Path::new("c.yaml"), "- a\n- b").is_err());
    }

    #[test]
    fn auth_needs_keys_and_tls_needs_files() {
        let err = build(
            yaml("server: {enable_auth: true}"),
            None,
            env(&[]),
            &CliOverrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("server.enable_auth"));
        let err = build(
            yaml("server: {enable_tls: true, tls_cert: c.pem}"),
            None,
            env(&[]),
            &CliOverrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("server.tls_key"), "{err}");
        let ok = build(
            yaml("server: {enable_auth: true, api_keys: [{key: 0123456789abcdef-x, role: admin, tables: [t]}]}"),
            None,
            env(&[]),
            &CliOverrides::default(),
        )
        .unwrap();
        assert_eq!(
            ok.config.server.api_keys[0].tables.as_deref(),
            Some(&["t".to_string()][..])
        );
    }
}

#[cfg(test)]
mod shipped_files {
    use super::*;

    fn load_file(rel: &str) -> LoadedConfig {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
        let text = std::fs::read_to_string(&path).unwrap();
        let tree = parse_text(&path, &text).unwrap();
        build(tree, Some(path), Vec::new(), &CliOverrides::default())
            .unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    #[test]
    fn example_configs_load_as_they_are_without_warnings() {
        for rel in [
            "config/config.yaml",
            "config/config.json",
            "config/production.yaml",
            "tuning/write-heavy.yaml",
            "tuning/read-heavy.yaml",
            "tuning/balanced.yaml",
        ] {
            let c = load_file(rel);
            assert!(c.warnings.is_empty(), "{rel}: {:?}", c.warnings);
        }
    }

    #[test]
    fn shipped_default_configs_equal_the_built_in_defaults() {
        assert_eq!(load_file("config/config.yaml").config, Config::default());
        assert_eq!(load_file("config/config.json").config, Config::default());
    }
}
