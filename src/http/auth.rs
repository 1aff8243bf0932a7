//! API keys and roles: who may call which route, checked on the core that
//! received the request, before anything runs or is forwarded.
//!
//! The route table is the one source of what a route needs: its
//! [`Role`] and its [`Tables`] (what table a request of it touches). This
//! module only compares a request's key against them:
//!
//! * no key, or one that matches no configured key: 401 with
//!   `WWW-Authenticate: Bearer realm="themis"`;
//! * a key whose role is below the route's, or a key limited to some tables
//!   on a request for another table (or for every table): 403.
//!
//! Keys arrive as `Authorization: Bearer <key>` or `X-API-Key: <key>`. The
//! presented key is hashed once (SHA-256) and the digest is compared with
//! every configured digest in constant time, so neither the time taken nor
//! an early exit tells how much of a key was right, and configuration files
//! may hold `key_sha256` instead of the secret. A key is never logged.
//!
//! [`AuthSettings`] is part of the hot-reloadable [`crate::runtime::Runtime`]
//! that every core reads through its own copy: a SIGHUP or `POST /config`
//! that changes the keys applies from each core's next request, with no
//! lock on the request path. With auth off the whole check is one branch.
//!
//! **Per-connection key cache.** A keep-alive client sends the same key
//! with every request. Each connection keeps a [`KeyCache`]: the bytes of
//! the last key it presented (up to [`MAX_CACHED_KEY`]) and what they
//! resolved to (a configured key, or none), tagged with the
//! [`AuthSettings::generation`] they were resolved under. A request whose
//! key equals the cached bytes under the same generation skips the hash
//! and the scan of the configured digests. Every settings change (SIGHUP,
//! `POST /config`) makes a new generation, so a revoked key is refused on
//! the next request of an already open connection. The comparison with the
//! cached bytes looks at every byte whatever the first difference (for
//! equal lengths): a proxy may carry several clients' requests over one
//! connection, and the bytes cached are then another client's key. The cache reuses its buffer: no
//! allocation per request once a connection has seen its key.

use super::limiter::FailureLimit;
use super::routes::{PathPattern, Role, Route, RouteId, Tables};
use crate::config::{ApiKey, ServerConfig};
use crate::entity::key::{decode_path_key, decode_query_value, parse_key};
use crate::error::ApiError;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use subtle::ConstantTimeEq;
use themis_io::Request;

/// Longest presented key a connection remembers ([`KeyCache`]); a longer
/// one is hashed on every request.
pub const MAX_CACHED_KEY: usize = 256;

/// The source of [`AuthSettings::generation`]: every settings value ever
/// built gets its own, process-wide.
static GENERATIONS: AtomicU64 = AtomicU64::new(1);

/// Shortest accepted `key`: a guessable key is no protection.
pub const MIN_KEY_LEN: usize = 16;

/// The role a config `role` names.
pub fn role_named(s: &str) -> Option<Role> {
    match s {
        "readonly" => Some(Role::Read),
        "readwrite" => Some(Role::Write),
        "admin" => Some(Role::Admin),
        _ => None,
    }
}

/// The config name of a role.
pub fn role_name(r: Role) -> &'static str {
    match r {
        Role::Public => "public",
        Role::Read => "readonly",
        Role::Write => "readwrite",
        Role::Admin => "admin",
    }
}

/// SHA-256 of a presented or configured key.
pub fn sha256(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

/// The digest a configured key is compared by: the hash of `key`, or
/// `key_sha256` decoded. The error says what is wrong without the value.
pub fn digest_of(k: &ApiKey) -> Result<[u8; 32], String> {
    match (&k.key, &k.key_sha256) {
        (Some(key), None) => {
            if key.chars().count() < MIN_KEY_LEN {
                return Err(format!("key must be at least {MIN_KEY_LEN} characters"));
            }
            if key.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err("key must not contain spaces or control characters".into());
            }
            Ok(sha256(key.as_bytes()))
        }
        (None, Some(hex)) => {
            let hex = hex.trim();
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err("key_sha256 must be 64 hex digits (sha256sum of the key)".into());
            }
            let mut out = [0u8; 32];
            for (i, byte) in out.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                    .map_err(|_| "key_sha256 must be 64 hex digits".to_string())?;
            }
            Ok(out)
        }
        _ => Err("give exactly one of key and key_sha256".into()),
    }
}

/// One configured key, ready to compare.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyEntry {
    digest: [u8; 32],
    pub role: Role,
    /// For logs; `key #i` when the config gives no name.
    pub name: Box<str>,
    /// The tables it is limited to; `None`: every table.
    pub tables: Option<Box<[Box<str>]>>,
    /// The client certificate subject it must come with (mutual TLS).
    pub client_cert_subject: Option<Box<str>>,
}

/// What the request path reads: derived from `server.*` once per
/// configuration change.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub enabled: bool,
    pub metrics_public: bool,
    keys: Vec<KeyEntry>,
    /// Lower-case; empty: any `Host`.
    allowed_hosts: Vec<Box<str>>,
    /// The limit on failed keys per peer address (`http::limiter`).
    pub failure_limit: FailureLimit,
    /// Unique to this value (a clone keeps it: same keys): what a
    /// connection's [`KeyCache`] is tagged with. Not part of equality.
    generation: u64,
}

impl PartialEq for AuthSettings {
    fn eq(&self, other: &Self) -> bool {
        self.enabled == other.enabled
            && self.metrics_public == other.metrics_public
            && self.keys == other.keys
            && self.allowed_hosts == other.allowed_hosts
            && self.failure_limit == other.failure_limit
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            enabled: false,
            metrics_public: false,
            keys: Vec::new(),
            allowed_hosts: Vec::new(),
            failure_limit: FailureLimit::default(),
            generation: GENERATIONS.fetch_add(1, Ordering::Relaxed),
        }
    }
}

/// One connection's memory of the last key it presented (see the module
/// doc). Made empty with the connection; lives in its
/// [`crate::http::dispatch::ConnState`].
#[derive(Debug, Default)]
pub struct KeyCache {
    /// The presented bytes (the buffer is reused).
    key: Vec<u8>,
    /// The generation `key` was resolved under and the index of the
    /// configured key it matched (`None`: no key matched); `None` while
    /// nothing is cached.
    resolved: Option<(u64, Option<usize>)>,
    /// Requests answered from the cache (for tests and diagnostics).
    hits: u64,
}

impl KeyCache {
    /// Requests whose key was resolved from the cache, without hashing.
    pub fn hits(&self) -> u64 {
        self.hits
    }
}

impl AuthSettings {
    /// Built from a validated configuration (a key that does not validate
    /// is left out; validation refuses such a configuration first).
    pub fn from_config(s: &ServerConfig) -> AuthSettings {
        let keys = s
            .api_keys
            .iter()
            .enumerate()
            .filter_map(|(i, k)| {
                Some(KeyEntry {
                    digest: digest_of(k).ok()?,
                    role: role_named(&k.role)?,
                    name: k.name.clone().unwrap_or_else(|| format!("key #{i}")).into(),
                    tables: k
                        .tables
                        .as_ref()
                        .map(|t| t.iter().map(|s| s.as_str().into()).collect()),
                    client_cert_subject: k.client_cert_subject.as_deref().map(Into::into),
                })
            })
            .collect();
        AuthSettings {
            enabled: s.enable_auth,
            metrics_public: s.metrics_public,
            keys,
            allowed_hosts: s
                .allowed_hosts
                .iter()
                .map(|h| h.trim().to_ascii_lowercase().into())
                .collect(),
            failure_limit: FailureLimit {
                max_failures: s.auth_failure_limit,
                window: Duration::from_secs(s.auth_failure_window_s),
                lockout: Duration::from_secs(s.auth_lockout_s),
            },
            ..AuthSettings::default()
        }
    }

    /// What a connection's [`KeyCache`] entries are tagged with: different
    /// for every settings value built (a reload makes a new one).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The index of the key whose digest is `digest`, compared with every
    /// key in constant time.
    fn find_index(&self, digest: &[u8; 32]) -> Option<usize> {
        let mut found = None;
        for (i, k) in self.keys.iter().enumerate() {
            if bool::from(k.digest.ct_eq(digest)) {
                found = Some(i);
            }
        }
        found
    }

    #[cfg(test)]
    fn find(&self, digest: &[u8; 32]) -> Option<&KeyEntry> {
        self.find_index(digest).and_then(|i| self.keys.get(i))
    }

    /// The configured key `presented` is, through the connection's cache:
    /// hashed and compared only when the connection presents other bytes
    /// than last time, or the settings changed since.
    pub fn resolve(&self, cache: &mut KeyCache, presented: &[u8]) -> Option<&KeyEntry> {
        if let Some((generation, index)) = cache.resolved {
            if generation == self.generation && same_bytes(&cache.key, presented) {
                cache.hits += 1;
                return index.and_then(|i| self.keys.get(i));
            }
        }
        let index = self.find_index(&sha256(presented));
        if presented.len() <= MAX_CACHED_KEY {
            cache.key.clear();
            cache.key.extend_from_slice(presented);
            cache.resolved = Some((self.generation, index));
        } else {
            cache.resolved = None;
        }
        index.and_then(|i| self.keys.get(i))
    }

    /// The role `route` needs under these settings (`/metrics` is public
    /// with `metrics_public`).
    pub fn needed(&self, route: &Route) -> Role {
        match route.role {
            Role::Read if route.id == RouteId::Metrics && self.metrics_public => Role::Public,
            r => r,
        }
    }

    /// Whether a `Host` allow-list is configured.
    #[inline]
    pub fn has_host_list(&self) -> bool {
        !self.allowed_hosts.is_empty()
    }

    /// Whether `Host` is allowed (always, when no list is configured).
    #[inline]
    pub fn host_allowed(&self, host: Option<&[u8]>) -> bool {
        if self.allowed_hosts.is_empty() {
            return true;
        }
        let Some(host) = host.and_then(|h| std::str::from_utf8(h).ok()) else {
            return false;
        };
        let host = host.trim();
        // `name:port` matches an entry `name:port` or `name`; `[v6]:port`
        // keeps its brackets.
        let name = match host.rfind(':') {
            Some(i) if !host[i..].contains(']') => &host[..i],
            _ => host,
        };
        self.allowed_hosts
            .iter()
            .any(|a| a.eq_ignore_ascii_case(host) || a.eq_ignore_ascii_case(name))
    }
}

/// What a request may do once its key was checked: the tables it is
/// limited to, and the table filter a route of [`Tables::QueryTable`]
/// must apply when the request named none.
#[derive(Debug, Default, Clone, Copy)]
pub struct Grant<'a> {
    /// The key's table limit; `None`: every table (or auth off).
    pub tables: Option<&'a [Box<str>]>,
    /// For the change feed and index stats: the table to read when the
    /// request named none (a key limited to exactly one table).
    pub forced_table: Option<&'a str>,
}

/// Whether header name `name` is `lower` (lower-case letters, digits and
/// `-`), ignoring case. `b | 0x20` lower-cases a letter and leaves digits
/// and `-` as they are; the only other bytes it maps onto them are control
/// characters, which a header name (an HTTP token, as the parser checks)
/// never holds. Cheaper than `eq_ignore_ascii_case` on every request.
#[inline]
fn name_is(name: &str, lower: &[u8]) -> bool {
    name.len() == lower.len() && name.bytes().zip(lower).all(|(b, l)| b | 0x20 == *l)
}

/// The key a request presents: `Authorization: Bearer <key>`, else
/// `X-API-Key: <key>` (one pass over the headers).
pub fn presented<'r>(req: &Request<'r>) -> Option<&'r [u8]> {
    let mut api_key = None;
    for h in req.headers {
        if name_is(h.name, b"authorization") {
            let v = h.value.trim_ascii();
            return match v.get(..7) {
                Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => {
                    Some(v[7..].trim_ascii())
                }
                _ => None,
            };
        }
        if api_key.is_none() && name_is(h.name, b"x-api-key") {
            api_key = Some(h.value.trim_ascii());
        }
    }
    api_key
}

/// Whether two byte strings are equal, looking at every byte whatever
/// the first difference (only the lengths are compared first): the bytes
/// are XORed into one accumulator, read once at the end. Cheaper than
/// `subtle`'s per-byte barrier, for the per-connection cache's compare.
#[inline]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::Unauthorized(message.into())
}

/// The check every routed request goes through (auth on): finds the key,
/// compares its role with the route's, and its tables with the request's.
/// `cache` is the connection's [`KeyCache`].
pub fn check<'s>(
    auth: &'s AuthSettings,
    cache: &mut KeyCache,
    route: &Route,
    req: &Request<'_>,
) -> Result<Grant<'s>, ApiError> {
    let needed = auth.needed(route);
    if needed == Role::Public {
        return Ok(Grant::default());
    }
    let key =
        match presented(req) {
            Some(k) if !k.is_empty() => k,
            _ => return Err(unauthorized(
                "this route needs an API key: send Authorization: Bearer <key> or X-API-Key: <key>",
            )),
        };
    let Some(entry) = auth.resolve(cache, key) else {
        return Err(unauthorized("unknown API key"));
    };
    if let Some(subject) = &entry.client_cert_subject {
        if req.peer.client_cert_subject() != Some(&**subject) {
            return Err(unauthorized(
                "this API key is only valid with its client certificate",
            ));
        }
    }
    if entry.role < needed {
        return Err(ApiError::Forbidden(format!(
            "{} needs the {} role; key {:?} has {}",
            route.label,
            role_name(needed),
            entry.name,
            role_name(entry.role)
        )));
    }
    let Some(tables) = entry.tables.as_deref() else {
        return Ok(Grant::default());
    };
    let forced_table = check_tables(tables, route, req).map_err(|e| match e {
        TableRefusal::Other(table) => ApiError::Forbidden(format!(
            "key {:?} may not access table {table:?}",
            entry.name
        )),
        TableRefusal::AllTables => ApiError::Forbidden(format!(
            "{} acts on every table; key {:?} is limited to some tables",
            route.label, entry.name
        )),
        TableRefusal::Unnamed => ApiError::Forbidden(format!(
            "key {:?} is limited to several tables: name one with ?table=",
            entry.name
        )),
        TableRefusal::Invalid(e) => e,
    })?;
    Ok(Grant {
        tables: Some(tables),
        forced_table,
    })
}

enum TableRefusal {
    Other(String),
    AllTables,
    Unnamed,
    /// The request could not be read (bad key, bad JSON): the error the
    /// handler would have given.
    Invalid(ApiError),
}

/// Checks the tables a request touches against a key's `tables`; returns
/// the table to force on a [`Tables::QueryTable`] route that named none.
fn check_tables<'t>(
    allowed: &'t [Box<str>],
    route: &Route,
    req: &Request<'_>,
) -> Result<Option<&'t str>, TableRefusal> {
    let ok = |t: &str| allowed.iter().any(|a| &**a == t);
    let one = |t: String| {
        if ok(&t) {
            Ok(None)
        } else {
            Err(TableRefusal::Other(t))
        }
    };
    match route.tables {
        Tables::None => Ok(None),
        Tables::All => Err(TableRefusal::AllTables),
        Tables::PathKey => {
            let prefix = match route.path {
                PathPattern::Prefix(p) | PathPattern::Exact(p) => p,
            };
            let raw = req.path.strip_prefix(prefix).unwrap_or("");
            let key = decode_path_key(raw).map_err(TableRefusal::Invalid)?;
            let (table, _) = parse_key(&key).map_err(TableRefusal::Invalid)?;
            one(table.to_string())
        }
        Tables::BodyKey => {
            let key = body_field(req.body, "key")?;
            let (table, _) = parse_key(&key).map_err(TableRefusal::Invalid)?;
            one(table.to_string())
        }
        Tables::BodyTable => one(body_field(req.body, "table")?),
        Tables::Fixed(t) => one(t.to_string()),
        Tables::QueryTable => {
            let mut named = false;
            for (name, value) in req.query_pairs() {
                let name = decode_query_value(name).map_err(TableRefusal::Invalid)?;
                if name == "table" {
                    named = true;
                    let t = decode_query_value(value).map_err(TableRefusal::Invalid)?;
                    if !ok(&t) {
                        return Err(TableRefusal::Other(t));
                    }
                }
            }
            match allowed {
                _ if named => Ok(None),
                [only] => Ok(Some(only)),
                _ => Err(TableRefusal::Unnamed),
            }
        }
    }
}

/// A top-level string field of a JSON body (`key` of `POST /entities`,
/// `table` of a query or an index request). Only read for a key limited
/// to some tables. Duplicate fields are refused, as the handlers refuse
/// them, so the field checked is the field used.
fn body_field(body: &[u8], field: &'static str) -> Result<String, TableRefusal> {
    use serde::de::{IgnoredAny, MapAccess, Visitor};
    struct Find(&'static str);
    impl<'de> Visitor<'de> for Find {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut found: Option<Option<String>> = None;
            while let Some(k) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if k == self.0 {
                    if found.is_some() {
                        return Err(serde::de::Error::custom(format!(
                            "duplicate object key {:?}",
                            self.0
                        )));
                    }
                    let v: serde_json::Value = map.next_value()?;
                    found = Some(v.as_str().map(str::to_string));
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(found.flatten())
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let found = serde::Deserializer::deserialize_map(&mut de, Find(field))
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| TableRefusal::Invalid(ApiError::InvalidJson(e.to_string())))?;
    found.ok_or_else(|| {
        TableRefusal::Invalid(ApiError::Forbidden(format!(
            "a key limited to some tables must name its table: the body needs a string {field:?}"
        )))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(keys: Vec<ApiKey>) -> AuthSettings {
        let mut s = ServerConfig {
            enable_auth: true,
            api_keys: keys,
            ..Default::default()
        };
        s.allowed_hosts = vec!["db.example".into(), "localhost:8765".into()];
        AuthSettings::from_config(&s)
    }

    #[test]
    fn digests_from_keys_and_hex_agree() {
        let k = "0123456789abcdef-secret";
        let hex: String = sha256(k.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let a = digest_of(&ApiKey {
            key: Some(k.into()),
            ..Default::default()
        })
        .unwrap();
        let b = digest_of(&ApiKey {
            key_sha256: Some(hex.to_uppercase()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(a, b);
        let s = settings(vec![ApiKey {
            key_sha256: Some(hex),
            role: "readonly".into(),
            ..Default::default()
        }]);
        assert_eq!(s.find(&sha256(k.as_bytes())).unwrap().role, Role::Read);
        assert!(s.find(&sha256(b"0123456789abcdef-secreT")).is_none());
    }

    #[test]
    fn a_connection_resolves_its_key_once_per_generation() {
        let (a, b) = ("0123456789abcdef-key-a", "0123456789abcdef-key-b");
        let key = |k: &str, role: &str| ApiKey {
            key: Some(k.into()),
            role: role.into(),
            ..Default::default()
        };
        let s = settings(vec![key(a, "readonly"), key(b, "admin")]);
        let mut cache = KeyCache::default();
        assert_eq!(
            s.resolve(&mut cache, a.as_bytes()).unwrap().role,
            Role::Read
        );
        assert_eq!(cache.hits(), 0, "the first request hashes");
        for _ in 0..3 {
            assert_eq!(
                s.resolve(&mut cache, a.as_bytes()).unwrap().role,
                Role::Read
            );
        }
        assert_eq!(cache.hits(), 3, "the same bytes again: no hashing");
        // Other bytes on the same connection are resolved, and then cached.
        assert_eq!(
            s.resolve(&mut cache, b.as_bytes()).unwrap().role,
            Role::Admin
        );
        assert_eq!(cache.hits(), 3);
        assert!(s.resolve(&mut cache, b"0123456789abcdef-key-A").is_none());
        assert!(s.resolve(&mut cache, b"0123456789abcdef-key-A").is_none());
        assert_eq!(cache.hits(), 4, "an unknown key is cached as unknown");
        assert_eq!(
            s.resolve(&mut cache, a.as_bytes()).unwrap().role,
            Role::Read
        );
        // A reload (a new settings value, even with the same keys) is a
        // new generation: the cached answer is not used.
        let same = settings(vec![key(a, "readonly"), key(b, "admin")]);
        assert_eq!(same, s);
        assert_ne!(same.generation(), s.generation());
        let hits = cache.hits();
        assert_eq!(
            same.resolve(&mut cache, a.as_bytes()).unwrap().role,
            Role::Read
        );
        assert_eq!(cache.hits(), hits);
        // Revoked: the next request on the connection is refused.
        let revoked = settings(vec![key(b, "admin")]);
        assert!(revoked.resolve(&mut cache, a.as_bytes()).is_none());
        assert!(revoked.resolve(&mut cache, a.as_bytes()).is_none());
        // A clone (a core's copy of the same settings) shares the tag.
        let copy = revoked.clone();
        let hits = cache.hits();
        assert!(copy.resolve(&mut cache, a.as_bytes()).is_none());
        assert_eq!(cache.hits(), hits + 1);
        // Keys longer than MAX_CACHED_KEY are hashed every time.
        let long = "k".repeat(MAX_CACHED_KEY + 1);
        let s = settings(vec![key(&long, "readonly")]);
        let hits = cache.hits();
        for _ in 0..2 {
            assert!(s.resolve(&mut cache, long.as_bytes()).is_some());
        }
        assert_eq!(cache.hits(), hits);
    }

    #[test]
    fn header_names_and_byte_compares() {
        for name in [
            "authorization",
            "Authorization",
            "AUTHORIZATION",
            "aUtHoRiZaTiOn",
        ] {
            assert!(name_is(name, b"authorization"), "{name}");
        }
        for name in ["X-API-Key", "x-api-key", "X-Api-KEY"] {
            assert!(name_is(name, b"x-api-key"), "{name}");
        }
        for name in [
            "authorizatio",
            "authorizations",
            "x_api-key",
            "x-api-kez",
            "host",
        ] {
            assert!(!name_is(name, b"authorization") && !name_is(name, b"x-api-key"));
        }
        assert!(same_bytes(b"abc", b"abc"));
        assert!(same_bytes(b"", b""));
        assert!(!same_bytes(b"abc", b"abd"));
        assert!(!same_bytes(b"abc", b"ab"));
        assert!(!same_bytes(b"\x00bc", b"abc"));
    }

    #[test]
    fn hosts() {
        let s = settings(Vec::new());
        assert!(s.host_allowed(Some(b"db.example")));
        assert!(s.host_allowed(Some(b"DB.example:443")));
        assert!(s.host_allowed(Some(b"localhost:8765")));
        assert!(!s.host_allowed(Some(b"localhost:9999")));
        assert!(!s.host_allowed(Some(b"evil.example")));
        assert!(!s.host_allowed(None));
        assert!(AuthSettings::default().host_allowed(None));
    }

    #[test]
    fn body_fields() {
        let f = |b: &str| body_field(b.as_bytes(), "table");
        assert_eq!(
            f(r#"{"a":[{"table":"x"}],"table":"t"}"#).ok(),
            Some("t".into())
        );
        assert_eq!(f(r#"{"t\u0061ble":"t"}"#).ok(), Some("t".into()));
        assert!(matches!(
            f(r#"{"table":"t","table":"u"}"#),
            Err(TableRefusal::Invalid(ApiError::InvalidJson(_)))
        ));
        assert!(matches!(
            f(r#"{"table":1}"#),
            Err(TableRefusal::Invalid(ApiError::Forbidden(_)))
        ));
        assert!(matches!(
            f(r#"{"table":"t"} x"#),
            Err(TableRefusal::Invalid(ApiError::InvalidJson(_)))
        ));
        assert!(f("[1]").is_err());
    }
}
