//! Retention: the policies file (`features.retention.policies_path`), which
//! maximum age applies to a metric, and the pass that deletes older points.
//!
//! Which age applies to a metric, most specific first: its own entry in
//! `/ts/config` (`metrics.<name>.retention_hours`), then the first policy of
//! the file whose `metric` pattern matches (`*` matches any run of
//! characters), then `/ts/config`'s `default_retention_hours`; with none
//! of these the metric is kept forever.
//!
//! A pass runs on every core over the series that core owns, in steps of
//! [`STEP_SERIES`] catalog entries: a step reads the catalog and counts the
//! expired points on a blocking thread, then the core (the series' single
//! writer) commits one batch of range deletes, one per series
//! (`[start of the series, now - max_age)`). A dry run counts and deletes
//! nothing.
//!
//! Entity policies (`table` + `timestamp_field`) are read the same way,
//! per core over its own entities, and deleted one by one through the
//! entity write pipeline (`timeseries::http::entity_policy`).

use super::key::{self, Labels};
use super::settings::TsSettings;
use crate::storage::{Family, Storage, StorageError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Catalog entries one step of a pass reads.
pub const STEP_SERIES: usize = 512;

/// One time-series policy of the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub name: String,
    /// A metric name pattern; `*` matches any run of characters (a
    /// time-series policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// A table (an entity policy): its entities whose `timestamp_field`
    /// (a top-level number, ms since the epoch) is older than `max_age` are
    /// deleted through the write pipeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_field: Option<String>,
    /// `<n><unit>` with unit `s`, `m`, `h`, `d` or `w` (`30d`).
    pub max_age: String,
    #[serde(skip_deserializing)]
    pub max_age_ms: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    policies: Vec<Policy>,
}

/// The policies in force.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Policies {
    pub policies: Vec<Policy>,
}

/// Longest accepted `max_age`: 100 years.
const MAX_AGE_MS: i64 = 100 * 366 * 86_400_000;

/// Parses a duration like `30d`, `12h`, `90m`, `3600s`, `2w` to ms.
pub fn parse_age(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: i64 = n
        .parse()
        .map_err(|_| format!("max_age {s:?}: must be <number><unit>, e.g. 30d"))?;
    let unit_ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        _ => return Err(format!("max_age {s:?}: unit must be one of s, m, h, d, w")),
    };
    match n.checked_mul(unit_ms) {
        Some(ms) if ms > 0 && ms <= MAX_AGE_MS => Ok(ms),
        _ => Err(format!("max_age {s:?}: must be > 0 and at most 100 years")),
    }
}

/// Whether `metric` matches `pattern` (`*`: any run of characters).
pub fn matches(pattern: &str, metric: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == metric;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !metric.starts_with(first) || metric.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &metric[first.len()..metric.len() - last.len()];
    if !metric.ends_with(last) {
        return false;
    }
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

impl Policies {
    /// Parses and checks a policies file's text.
    pub fn parse(text: &str) -> Result<Policies, String> {
        let file: File = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        let mut names = std::collections::BTreeSet::new();
        let mut policies = Vec::with_capacity(file.policies.len());
        for (i, mut p) in file.policies.into_iter().enumerate() {
            if p.name.trim().is_empty() {
                return Err(format!("policies[{i}].name: must not be empty"));
            }
            if !names.insert(p.name.clone()) {
                return Err(format!("policies[{i}].name: {:?} is used twice", p.name));
            }
            match (&p.metric, &p.table, &p.timestamp_field) {
                (Some(m), None, None) if !m.is_empty() => {}
                (None, Some(t), Some(f)) if !t.is_empty() && !t.contains(':') && !f.is_empty() => {}
                (None, Some(_), None) => {
                    return Err(format!(
                        "policies[{i}]: an entity policy needs timestamp_field"
                    ))
                }
                _ => {
                    return Err(format!(
                        "policies[{i}]: give either a non-empty metric pattern, or a table \
                         (without ':') with its timestamp_field"
                    ))
                }
            }
            p.max_age_ms = parse_age(&p.max_age).map_err(|e| format!("policies[{i}].{e}"))?;
            policies.push(p);
        }
        Ok(Policies { policies })
    }

    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Policies, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("retention policies {}: {e}", path.display()))?;
        Policies::parse(&text).map_err(|e| format!("retention policies {}: {e}", path.display()))
    }
}

/// The rule that applies to `metric`: (policy name, max age in ms).
pub fn resolve(metric: &str, file: &Policies, settings: &TsSettings) -> Option<(String, i64)> {
    if let Some(h) = settings.metrics.get(metric).and_then(|m| m.retention_hours) {
        return Some((format!("config:{metric}"), i64::from(h) * 3_600_000));
    }
    if let Some(p) = file
        .policies
        .iter()
        .find(|p| p.metric.as_deref().is_some_and(|m| matches(m, metric)))
    {
        return Some((p.name.clone(), p.max_age_ms));
    }
    settings
        .default_retention_hours
        .map(|h| ("config:default".to_string(), i64::from(h) * 3_600_000))
}

/// One series to cut: delete its points before `cutoff` (`count` of them).
#[derive(Debug, Clone)]
pub struct Cut {
    pub id: u64,
    pub cutoff: i64,
    pub count: u64,
    pub policy: String,
}

/// One step of a pass: reads up to [`STEP_SERIES`] catalog entries after
/// `after`, and for the series owned by `me` whose policy expires points,
/// counts them. Returns the cuts and where the next step starts (`None`:
/// the catalog is done). Blocking: a range read.
#[allow(clippy::too_many_arguments)]
pub fn plan_step(
    storage: &Storage,
    after: Option<&[u8]>,
    me: usize,
    cores: usize,
    now_ms: i64,
    file: &Policies,
    settings: &TsSettings,
) -> Result<(Vec<Cut>, Option<Vec<u8>>), StorageError> {
    let (mut from, to) = key::whole_catalog();
    if let Some(a) = after {
        from = a.to_vec();
        from.push(0);
    }
    let mut entries: Vec<(Vec<u8>, u64)> = Vec::new();
    storage.scan(Family::Timeseries, &from, &to, false, |k, v| {
        if let Ok(id) = <[u8; 8]>::try_from(v) {
            entries.push((k.to_vec(), u64::from_be_bytes(id)));
        }
        entries.len() < STEP_SERIES
    })?;
    let next = (entries.len() == STEP_SERIES).then(|| entries[entries.len() - 1].0.clone());
    let mut cuts = Vec::new();
    for (k, id) in entries {
        let owner = if cores == 1 {
            0
        } else {
            crate::mesh::owner_of(&id.to_be_bytes(), cores)
        };
        if owner != me {
            continue;
        }
        let Some(labels) = Labels::from_canonical(&k[1..]) else {
            continue;
        };
        let Some((policy, max_age)) = resolve(&labels.metric, file, settings) else {
            continue;
        };
        let cutoff = now_ms.saturating_sub(max_age);
        let (lo, hi) = key::point_range(id, i64::MIN, cutoff);
        let mut count = 0u64;
        storage.scan(Family::Timeseries, &lo, &hi, false, |_, _| {
            count += 1;
            true
        })?;
        if count > 0 {
            cuts.push(Cut {
                id,
                cutoff,
                count,
                policy,
            });
        }
    }
    Ok((cuts, next))
}

/// One step of an entity policy's pass: reads up to [`STEP_SERIES`]
/// entities of `table` after `after` and returns the keys owned by `me`
/// whose `field` is a number below `cutoff`, and where the next step
/// starts. Blocking: a range read.
pub fn plan_entity_step(
    storage: &Storage,
    table: &str,
    field: &str,
    cutoff: i64,
    after: Option<&[u8]>,
    me: usize,
    cores: usize,
) -> Result<(Vec<String>, Option<Vec<u8>>), StorageError> {
    let mut from = format!("{table}:").into_bytes();
    let to = format!("{table};").into_bytes();
    if let Some(a) = after {
        from = a.to_vec();
        from.push(0);
    }
    let mut seen = 0usize;
    let mut last = None;
    let mut expired = Vec::new();
    storage.scan(Family::Entities, &from, &to, false, |k, v| {
        seen += 1;
        last = Some(k.to_vec());
        let owner = if cores == 1 {
            0
        } else {
            crate::mesh::owner_of(k, cores)
        };
        if owner == me && entity_expired(v, field, cutoff) {
            expired.push(String::from_utf8_lossy(k).into_owned());
        }
        seen < STEP_SERIES
    })?;
    Ok((expired, if seen == STEP_SERIES { last } else { None }))
}

/// Whether a stored entity's `field` is a number (ms since the epoch)
/// below `cutoff`. Entities without it, or with another type, are kept.
pub fn entity_expired(doc: &[u8], field: &str, cutoff: i64) -> bool {
    serde_json::from_slice::<serde_json::Value>(doc)
        .ok()
        .and_then(|d| d.get(field).and_then(serde_json::Value::as_f64))
        .is_some_and(|t| t < cutoff as f64)
}

/// What one pass on one core did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PassReport {
    pub core: usize,
    pub dry_run: bool,
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
    pub series_cut: u64,
    pub deleted_total: u64,
    pub deleted_by_policy: BTreeMap<String, u64>,
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_patterns() {
        assert_eq!(parse_age("30d"), Ok(30 * 86_400_000));
        assert_eq!(parse_age("90m"), Ok(90 * 60_000));
        assert!(parse_age("0d").is_err());
        assert!(parse_age("5y").unwrap_err().contains("unit"));
        assert!(parse_age("d").is_err());
        assert!(parse_age("99999999999999d").is_err());
        assert!(matches("cpu.*", "cpu.load"));
        assert!(!matches("cpu.*", "cpux"));
        assert!(matches("*", "anything"));
        assert!(matches("a*b*c", "axxbyyc"));
        assert!(!matches("a*b*c", "axxc"));
        assert!(matches("exact", "exact"));
        assert!(!matches("ab*ba", "aba"));
    }

    #[test]
    fn the_shipped_file_loads_and_bad_files_say_why() {
        let shipped = include_str!("../../config/retention_policies.yaml");
        let p = Policies::parse(shipped).unwrap();
        assert!(!p.policies.is_empty());
        let e =
            Policies::parse("policies:\n  - {name: a, metric: 'x', max_age: 3q}\n").unwrap_err();
        assert!(e.contains("policies[0].max_age"), "{e}");
        let e = Policies::parse("policies:\n  - {name: a, metric: x, max_age: 1d}\n  - {name: a, metric: y, max_age: 1d}\n").unwrap_err();
        assert!(e.contains("used twice"), "{e}");
        let e = Policies::parse("policies:\n  - {name: a, table: t, max_age: 1d}\n").unwrap_err();
        assert!(e.contains("timestamp_field"), "{e}");
        let e = Policies::parse("policies:\n  - {name: a, metric: m, table: t, max_age: 1d}\n")
            .unwrap_err();
        assert!(e.contains("either"), "{e}");
        let e = Policies::parse("policies:\n  - {name: a, colour: t, max_age: 1d}\n").unwrap_err();
        assert!(e.contains("colour"), "{e}");
        let ok = Policies::parse(
            "policies:\n  - {name: a, table: logs, timestamp_field: at, max_age: 1d}\n",
        )
        .unwrap();
        assert_eq!(ok.policies[0].table.as_deref(), Some("logs"));
        assert!(entity_expired(br#"{"at": 5}"#, "at", 6));
        assert!(!entity_expired(br#"{"at": 6}"#, "at", 6));
        assert!(!entity_expired(br#"{"at": "5"}"#, "at", 6));
        assert!(!entity_expired(br#"{"other": 5}"#, "at", 6));
    }

    #[test]
    fn config_entries_win_over_the_file_and_the_default_comes_last() {
        let file =
            Policies::parse("policies:\n  - {name: cpu, metric: 'cpu.*', max_age: 2h}\n").unwrap();
        let mut s = TsSettings::default();
        assert_eq!(
            resolve("cpu.load", &file, &s),
            Some(("cpu".into(), 7_200_000))
        );
        assert_eq!(resolve("mem", &file, &s), None);
        s.default_retention_hours = Some(5);
        assert_eq!(
            resolve("mem", &file, &s),
            Some(("config:default".into(), 18_000_000))
        );
        s.metrics.insert(
            "cpu.load".into(),
            super::super::settings::MetricSettings {
                retention_hours: Some(1),
            },
        );
        assert_eq!(
            resolve("cpu.load", &file, &s),
            Some(("config:cpu.load".into(), 3_600_000))
        );
    }
}
