//! Per-metric settings (`GET|PUT /ts/config`): the default retention and
//! each metric's own, and the rollup intervals (fixed: every series keeps
//! minute and hour rollups, `timeseries::key`; shown so clients can pick
//! intervals that use them, and refused if a PUT asks for others). Stored as one JSON record in `meta`
//! (`timeseries.config`, written synced) and published node-wide; only the
//! retention pass and `/ts/config` read it.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most metrics with their own settings.
pub const MAX_METRIC_SETTINGS: usize = 10_000;
/// Longest retention: 100 years.
const MAX_RETENTION_HOURS: u32 = 876_600;

/// One metric's settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricSettings {
    /// Points older than this many hours are deleted (overrides the file's
    /// policies for this metric).
    pub retention_hours: Option<u32>,
}

/// The whole `/ts/config` document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TsSettings {
    /// Retention of metrics no other rule covers (none: keep forever).
    #[serde(default)]
    pub default_retention_hours: Option<u32>,
    #[serde(default)]
    pub metrics: BTreeMap<String, MetricSettings>,
    /// The rollups kept for every series (read-only: [`ROLLUP_INTERVALS`]).
    #[serde(default = "rollup_intervals")]
    pub rollup_intervals: Vec<String>,
}

/// The rollup intervals every series keeps.
pub const ROLLUP_INTERVALS: [&str; 2] = ["1m", "1h"];

fn rollup_intervals() -> Vec<String> {
    ROLLUP_INTERVALS.iter().map(|s| s.to_string()).collect()
}

impl Default for TsSettings {
    fn default() -> Self {
        TsSettings {
            default_retention_hours: None,
            metrics: BTreeMap::new(),
            rollup_intervals: rollup_intervals(),
        }
    }
}

impl TsSettings {
    /// Parses and checks a `PUT /ts/config` body.
    pub fn parse(body: &[u8]) -> Result<TsSettings, String> {
        let s: TsSettings = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        let check = |what: &str, h: Option<u32>| match h {
            Some(h) if h == 0 || h > MAX_RETENTION_HOURS => Err(format!(
                "{what}: must be an integer in 1..={MAX_RETENTION_HOURS}, got {h}"
            )),
            _ => Ok(()),
        };
        check("default_retention_hours", s.default_retention_hours)?;
        if s.rollup_intervals != rollup_intervals() {
            return Err(format!(
                "rollup_intervals: fixed at {:?} (every series keeps minute and hour rollups); \
                 leave it out or send it unchanged",
                ROLLUP_INTERVALS
            ));
        }
        if s.metrics.len() > MAX_METRIC_SETTINGS {
            return Err(format!(
                "metrics: at most {MAX_METRIC_SETTINGS} entries, got {}",
                s.metrics.len()
            ));
        }
        for (m, ms) in &s.metrics {
            if m.is_empty() || m.len() > super::key::MAX_NAME_BYTES {
                return Err(format!(
                    "metrics: a metric name must be 1..={} bytes",
                    super::key::MAX_NAME_BYTES
                ));
            }
            check(&format!("metrics.{m}.retention_hours"), ms.retention_hours)?;
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_are_named() {
        assert!(TsSettings::parse(br#"{"default_retention_hours": 0}"#)
            .unwrap_err()
            .contains("default_retention_hours"));
        assert!(
            TsSettings::parse(br#"{"metrics": {"m": {"retention_hours": 0}}}"#)
                .unwrap_err()
                .contains("metrics.m.retention_hours")
        );
        assert!(TsSettings::parse(br#"{"metrics": {"m": {"rollup": 1}}}"#)
            .unwrap_err()
            .contains("rollup"));
        let ok = TsSettings::parse(
            br#"{"default_retention_hours": 24, "metrics": {"m": {"retention_hours": 1}}}"#,
        )
        .unwrap();
        assert_eq!(ok.metrics["m"].retention_hours, Some(1));
        assert_eq!(ok.rollup_intervals, ["1m", "1h"]);
        assert!(TsSettings::parse(br#"{"rollup_intervals": ["5m"]}"#)
            .unwrap_err()
            .contains("rollup_intervals: fixed"));
        assert!(TsSettings::parse(br#"{"rollup_intervals": ["1m", "1h"]}"#).is_ok());
    }
}
