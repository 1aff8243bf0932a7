//! `POST /api/admin/backup` and `POST /api/admin/verify` (also under
//! `/admin/…`, the original server's paths): their routes, bodies and
//! answers. Both run on the backup lane of `node::blocking`, one at a time
//! per server (a second request while one runs gets 409, it is not queued).

use super::checkpoint::{self, Plan};
use super::verify::{self, Limits};
use crate::error::ApiError;
use crate::http::routes::{PathPattern, Role, Route, RouteId, Tables};
use crate::node::blocking::Work;
use crate::node::Core;
use crate::storage::StorageError;
use serde_json::{Map, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use themis_io::{Method, Response};

const POST: &[Method] = &[Method::Post];

pub const ROUTES: &[Route] = &[
    Route {
        id: RouteId::Backup,
        methods: POST,
        path: PathPattern::Exact("/api/admin/backup"),
        role: Role::Admin,
        tables: Tables::All,
        label: "POST /api/admin/backup",
    },
    Route {
        id: RouteId::Backup,
        methods: POST,
        path: PathPattern::Exact("/admin/backup"),
        role: Role::Admin,
        tables: Tables::All,
        label: "POST /api/admin/backup",
    },
    Route {
        id: RouteId::Verify,
        methods: POST,
        path: PathPattern::Exact("/api/admin/verify"),
        role: Role::Admin,
        tables: Tables::All,
        label: "POST /api/admin/verify",
    },
    Route {
        id: RouteId::Verify,
        methods: POST,
        path: PathPattern::Exact("/admin/verify"),
        role: Role::Admin,
        tables: Tables::All,
        label: "POST /api/admin/verify",
    },
];

/// Longest `directory` accepted (Linux's PATH_MAX).
const MAX_DIRECTORY_LEN: usize = 4096;
/// Longest `label` accepted.
const MAX_LABEL_LEN: usize = 128;
/// Default and largest `time_limit_s` of a verification.
const DEFAULT_VERIFY_LIMIT_S: u64 = 3600;
const MAX_VERIFY_LIMIT_S: u64 = 86_400;

/// The body as a JSON object (an empty body is `{}`), with only `allowed`
/// fields.
fn body_object(body: &[u8], allowed: &[&str]) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    let v: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    let Value::Object(obj) = v else {
        return Err(ApiError::BadRequest(format!(
            "body must be a JSON object with the optional fields {}",
            allowed.join(", ")
        )));
    };
    if let Some(k) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::BadRequest(format!(
            "unknown field {k:?} (allowed: {})",
            allowed.join(", ")
        )));
    }
    Ok(obj)
}

/// `{"directory"?, "label"?}`.
#[derive(Debug, PartialEq)]
pub struct BackupBody {
    pub directory: Option<PathBuf>,
    pub label: Option<String>,
}

pub fn parse_backup(body: &[u8]) -> Result<BackupBody, ApiError> {
    let obj = body_object(body, &["directory", "label"])?;
    let directory = match obj.get("directory") {
        None | Some(Value::Null) => None,
        Some(Value::String(d)) => {
            if d.is_empty() || d.len() > MAX_DIRECTORY_LEN || d.contains('\0') {
                return Err(ApiError::BadRequest(format!(
                    "directory: must be a path of 1 to {MAX_DIRECTORY_LEN} bytes without NUL"
                )));
            }
            let p = PathBuf::from(d);
            if !p.is_absolute() {
                return Err(ApiError::BadRequest(format!(
                    "directory: must be an absolute path, got {d:?}"
                )));
            }
            Some(p)
        }
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "directory: must be a string, got {other}"
            )))
        }
    };
    let label = match obj.get("label") {
        None | Some(Value::Null) => None,
        Some(Value::String(l))
            if !l.is_empty()
                && l.len() <= MAX_LABEL_LEN
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._- ".contains(c)) =>
        {
            Some(l.clone())
        }
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "label: must be 1 to {MAX_LABEL_LEN} letters, digits, '.', '_', '-' or spaces, got {other}"
            )))
        }
    };
    Ok(BackupBody { directory, label })
}

/// `{"time_limit_s"?, "cancel"?}`.
#[derive(Debug, PartialEq)]
pub enum VerifyBody {
    Run { time_limit: Duration },
    Cancel,
}

pub fn parse_verify(body: &[u8]) -> Result<VerifyBody, ApiError> {
    let obj = body_object(body, &["time_limit_s", "cancel"])?;
    match obj.get("cancel") {
        None | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) if obj.len() == 1 => return Ok(VerifyBody::Cancel),
        Some(Value::Bool(true)) => {
            return Err(ApiError::BadRequest(
                "cancel: give it alone, without other fields".into(),
            ))
        }
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "cancel: must be true or false, got {other}"
            )))
        }
    }
    let secs = match obj.get("time_limit_s") {
        None | Some(Value::Null) => DEFAULT_VERIFY_LIMIT_S,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=MAX_VERIFY_LIMIT_S).contains(&n) => n,
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "time_limit_s: must be an integer in 1..={MAX_VERIFY_LIMIT_S}, got {v}"
                )))
            }
        },
    };
    Ok(VerifyBody::Run {
        time_limit: Duration::from_secs(secs),
    })
}

/// `POST /api/admin/backup`.
pub async fn backup(core: &Core, body: &[u8], resp: &mut Response<'_>) -> Result<(), ApiError> {
    let req = parse_backup(body)?;
    let node = core.node().clone();
    let Some(running) = node.backup.start_backup() else {
        return Err(ApiError::Conflict(
            "a backup is already running; retry when it has finished".into(),
        ));
    };
    let cfg = &node.config.backup;
    let mut plan = Plan {
        root: req.directory.unwrap_or_else(|| cfg.root.clone()),
        label: req.label,
        retention_days: cfg.retention_days,
        retention_count: cfg.retention_count,
        io_limit_mb_per_s: cfg.io_limit_mb_per_s,
        visible_before: None,
    };
    let shared = node.clone();
    let done = core
        .blocking(Work::Backup, move || {
            let _running = running;
            // Every sequence up to here is committed (or failed) before
            // the checkpoint is cut.
            plan.visible_before = Some(shared.changefeed.latest());
            let done = checkpoint::create(&shared.storage, &plan);
            // The WAL archive follows the retention of the default root
            // (a backup elsewhere says nothing about what it needs).
            if done.is_ok() && plan.root == shared.config.backup.root {
                let pruned = shared.wal_archive.prune_for(&plan.root);
                if pruned > 0 {
                    tracing::info!(files = pruned, "WAL archive: files no backup needs deleted");
                }
            }
            done
        })
        .await?
        .map_err(|e| match e {
            checkpoint::BackupError::Storage(s) => ApiError::Storage(s),
            io => ApiError::Storage(StorageError::Io(io.to_string())),
        })?;
    let v = serde_json::json!({
        "path": done.path,
        "manifest": done.manifest,
        "pruned": done.pruned,
    });
    resp.json(200, &serde_json::to_vec(&v).unwrap_or_default());
    Ok(())
}

/// `POST /api/admin/verify`.
pub async fn verify(core: &Core, body: &[u8], resp: &mut Response<'_>) -> Result<(), ApiError> {
    let node = core.node().clone();
    let time_limit = match parse_verify(body)? {
        VerifyBody::Cancel => {
            let running = node.backup.verifying();
            if running {
                node.backup.cancel();
            }
            resp.json(
                200,
                &serde_json::to_vec(&serde_json::json!({ "cancelled": running }))
                    .unwrap_or_default(),
            );
            return Ok(());
        }
        VerifyBody::Run { time_limit } => time_limit,
    };
    let Some(running) = node.backup.start_verify() else {
        return Err(ApiError::Conflict(
            "a verification is already running; retry when it has finished, or cancel it with {\"cancel\": true}".into(),
        ));
    };
    let shared = node.clone();
    let report = core
        .blocking(Work::Backup, move || {
            let _running = running;
            let cancel = shared.backup.cancel_flag();
            let view = shared.storage.verifying_view();
            verify::run(
                &view,
                Limits {
                    deadline: Instant::now() + time_limit,
                    io_limit_mb_per_s: shared.config.backup.io_limit_mb_per_s,
                    cancel: &cancel,
                },
            )
        })
        .await?;
    let mut v = serde_json::to_value(&report).unwrap_or_default();
    v["changefeed"]["recorded_gaps"] = node.changefeed.gaps().into();
    resp.json(200, &serde_json::to_vec(&v).unwrap_or_default());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_bodies() {
        assert_eq!(
            parse_backup(b"").unwrap(),
            BackupBody {
                directory: None,
                label: None
            }
        );
        let b = parse_backup(br#"{"directory":"/b","label":"nightly-1"}"#).unwrap();
        assert_eq!(b.directory, Some(PathBuf::from("/b")));
        assert_eq!(b.label.as_deref(), Some("nightly-1"));
        for bad in [
            &br#"{"directory":"rel/x"}"#[..],
            br#"{"directory":""}"#,
            br#"{"directory":5}"#,
            br#"{"label":"a/b"}"#,
            br#"{"label":""}"#,
            br#"{"nope":1}"#,
            br#"[1]"#,
            b"{",
        ] {
            assert!(
                parse_backup(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!(r#"{{"label":"{}"}}"#, "a".repeat(129));
        assert!(parse_backup(long.as_bytes()).is_err());
        let long = format!(r#"{{"directory":"/{}"}}"#, "a".repeat(5000));
        assert!(parse_backup(long.as_bytes()).is_err());
    }

    #[test]
    fn verify_bodies() {
        assert_eq!(
            parse_verify(b" ").unwrap(),
            VerifyBody::Run {
                time_limit: Duration::from_secs(3600)
            }
        );
        assert_eq!(
            parse_verify(br#"{"time_limit_s":5}"#).unwrap(),
            VerifyBody::Run {
                time_limit: Duration::from_secs(5)
            }
        );
        assert_eq!(
            parse_verify(br#"{"cancel":true}"#).unwrap(),
            VerifyBody::Cancel
        );
        for bad in [
            &br#"{"time_limit_s":0}"#[..],
            br#"{"time_limit_s":-1}"#,
            br#"{"time_limit_s":1e9}"#,
            br#"{"cancel":"yes"}"#,
            br#"{"cancel":true,"time_limit_s":3}"#,
            br#"{"x":1}"#,
        ] {
            assert!(
                parse_verify(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
