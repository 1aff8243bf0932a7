//! InfluxDB line protocol (`POST /api/v2/write`), parsed into points.
//!
//! `measurement[,tag=value...] field=value[,field=value...] [timestamp]`,
//! one point per line; blank lines and `#` comments are skipped.
//! * Each field becomes a point of metric `measurement.field`.
//! * The tag named by `entity_tag` (default `host`) becomes the entity
//!   and is removed from the tags; without it the entity is empty.
//! * Field values: floats (`1`, `-2.5e3`), integers (`7i`), unsigned
//!   (`7u`) and booleans (`t`/`true`/`f`/`false`, any documented case; 1 or 0).
//!   String fields (`"..."`) cannot be stored as numbers: the line is
//!   refused, naming the field.
//! * Escapes: `\,` `\ ` in the measurement; `\,` `\=` `\ ` in tag keys,
//!   tag values and field keys.
//! * The timestamp is in `precision` units (ns, the default, us, ms or s)
//!   and is converted to ms (rounded down); without one, now.
//!
//! A request is all or nothing: the first bad line (1-based) is named in
//! a 400 and nothing of the request is stored.

use super::key::{self, Labels};
use std::collections::BTreeMap;

/// Most points (line × field) in one request.
pub const MAX_POINTS: usize = 100_000;
/// Largest body after gzip decompression.
pub const MAX_DECODED_BYTES: u64 = 64 << 20;

/// Timestamp units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    Ns,
    Us,
    Ms,
    S,
}

impl Precision {
    pub fn parse(s: &str) -> Option<Precision> {
        Some(match s {
            "ns" => Precision::Ns,
            "us" => Precision::Us,
            "ms" => Precision::Ms,
            "s" => Precision::S,
            _ => return None,
        })
    }

    /// `t` in this unit, in ms (rounded down), if it is in range.
    fn to_ms(self, t: i64) -> Option<i64> {
        let ms = match self {
            Precision::Ns => t.div_euclid(1_000_000),
            Precision::Us => t.div_euclid(1_000),
            Precision::Ms => t,
            Precision::S => t.checked_mul(1_000)?,
        };
        (key::MIN_TIMESTAMP_MS..=key::MAX_TIMESTAMP_MS)
            .contains(&ms)
            .then_some(ms)
    }
}

/// Splits `s` at the first unescaped byte of `stops` (outside quotes when
/// `quotes`): (before, the stop byte, after).
fn split_at_unescaped<'a>(
    s: &'a str,
    stops: &[u8],
    quotes: bool,
) -> (&'a str, Option<u8>, &'a str) {
    let b = s.as_bytes();
    let mut i = 0;
    let mut in_quotes = false;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'"' if quotes => in_quotes = !in_quotes,
            c if !in_quotes && stops.contains(&c) => return (&s[..i], Some(c), &s[i + 1..]),
            _ => {}
        }
        i += 1;
    }
    (s, None, "")
}

/// Removes backslash escapes of `chars`.
fn unescape(s: &str, chars: &[char]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\\' {
            if let Some(&n) = it.peek() {
                if chars.contains(&n) {
                    out.push(n);
                    it.next();
                    continue;
                }
            }
        }
        out.push(c);
    }
    out
}

fn field_value(name: &str, raw: &str) -> Result<f64, String> {
    let bad = || format!("field {name:?}: cannot read value {raw:?}");
    if raw.starts_with('"') {
        return Err(format!(
            "field {name:?}: string values cannot be stored (numbers and booleans only)"
        ));
    }
    let v = match raw {
        "t" | "T" | "true" | "True" | "TRUE" => 1.0,
        "f" | "F" | "false" | "False" | "FALSE" => 0.0,
        _ => {
            if let Some(i) = raw.strip_suffix('i') {
                i.parse::<i64>().map_err(|_| bad())? as f64
            } else if let Some(u) = raw.strip_suffix('u') {
                u.parse::<u64>().map_err(|_| bad())? as f64
            } else {
                raw.parse::<f64>().map_err(|_| bad())?
            }
        }
    };
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!("field {name:?}: must be finite, got {raw:?}"))
    }
}

/// Parses one non-empty line into `out` (one point per field).
fn parse_line(
    line: &str,
    precision: Precision,
    entity_tag: &str,
    now_ms: i64,
    out: &mut Vec<(Labels, i64, f64)>,
) -> Result<(), String> {
    let (series, stop, rest) = split_at_unescaped(line, b" ", false);
    if stop.is_none() {
        return Err("no fields (expected `measurement[,tags] field=value [timestamp]`)".into());
    }
    let (fields, _, ts) = split_at_unescaped(rest, b" ", true);
    let ts = ts.trim();
    let ts_ms = if ts.is_empty() {
        now_ms
    } else {
        let t: i64 = ts
            .parse()
            .map_err(|_| format!("timestamp {ts:?}: must be an integer"))?;
        precision
            .to_ms(t)
            .ok_or_else(|| format!("timestamp {ts:?}: out of range (years 1 to 9999)"))?
    };
    let (measurement, mut stop, mut tag_rest) = split_at_unescaped(series, b",", false);
    let measurement = unescape(measurement, &[',', ' ']);
    if measurement.is_empty() {
        return Err("empty measurement".into());
    }
    let mut tags = BTreeMap::new();
    let mut entity = String::new();
    while stop.is_some() {
        let (pair, s, r) = split_at_unescaped(tag_rest, b",", false);
        (stop, tag_rest) = (s, r);
        let (k, eq, v) = split_at_unescaped(pair, b"=", false);
        if eq.is_none() || k.is_empty() || v.is_empty() {
            return Err(format!("tag {pair:?}: expected key=value"));
        }
        let (k, v) = (unescape(k, &[',', '=', ' ']), unescape(v, &[',', '=', ' ']));
        if k == entity_tag {
            entity = v;
        } else {
            tags.insert(k, v);
        }
    }
    let mut rest = fields;
    loop {
        let (pair, s, r) = split_at_unescaped(rest, b",", true);
        let (k, eq, v) = split_at_unescaped(pair, b"=", false);
        if eq.is_none() || k.is_empty() || v.is_empty() {
            return Err(format!("field {pair:?}: expected key=value"));
        }
        let name = unescape(k, &[',', '=', ' ']);
        let value = field_value(&name, v)?;
        let labels = Labels {
            metric: format!("{measurement}.{name}"),
            entity: entity.clone(),
            tags: tags.clone(),
        };
        labels.validate()?;
        out.push((labels, ts_ms, value));
        if s.is_none() {
            break;
        }
        rest = r;
    }
    Ok(())
}

/// Parses a whole body; the error names the first bad line (1-based).
pub fn parse(
    body: &str,
    precision: Precision,
    entity_tag: &str,
    now_ms: i64,
) -> Result<Vec<(Labels, i64, f64)>, String> {
    let mut out = Vec::new();
    for (i, line) in body.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        parse_line(line, precision, entity_tag, now_ms, &mut out)
            .map_err(|e| format!("line {}: {e}", i + 1))?;
        if out.len() > MAX_POINTS {
            return Err(format!(
                "line {}: more than {MAX_POINTS} points in one request",
                i + 1
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Flat = (String, String, Vec<(String, String)>, i64, f64);

    fn one(line: &str) -> Vec<Flat> {
        parse(line, Precision::Ns, "host", 42)
            .unwrap()
            .into_iter()
            .map(|(l, t, v)| (l.metric, l.entity, l.tags.into_iter().collect(), t, v))
            .collect()
    }

    #[test]
    fn fields_tags_entity_and_precision() {
        let p = one("cpu,host=a,dc=eu usage=1.5,idle=2i,up=t 1700000000123456789");
        assert_eq!(
            p,
            vec![
                (
                    "cpu.usage".into(),
                    "a".into(),
                    vec![("dc".into(), "eu".into())],
                    1_700_000_000_123,
                    1.5
                ),
                (
                    "cpu.idle".into(),
                    "a".into(),
                    vec![("dc".into(), "eu".into())],
                    1_700_000_000_123,
                    2.0
                ),
                (
                    "cpu.up".into(),
                    "a".into(),
                    vec![("dc".into(), "eu".into())],
                    1_700_000_000_123,
                    1.0
                ),
            ]
        );
        let s = parse("m v=1 1700000000", Precision::S, "host", 0).unwrap();
        assert_eq!(s[0].1, 1_700_000_000_000);
        let us = parse("m v=1 -1500", Precision::Us, "host", 0).unwrap();
        assert_eq!(us[0].1, -2, "rounded down");
        assert_eq!(one("m v=1")[0].3, 42, "no timestamp: now");
    }

    #[test]
    fn escapes() {
        let p = one(r"my\ meas\,x,ta\ g=v\,1\=2 f\=ld=3u");
        assert_eq!(p[0].0, "my meas,x.f=ld");
        assert_eq!(p[0].2, vec![("ta g".to_string(), "v,1=2".to_string())]);
        assert_eq!(p[0].4, 3.0);
    }

    #[test]
    fn bad_lines_are_named() {
        let e = parse("m v=1\n\n# c\nm v=\"s\"", Precision::Ns, "host", 0).unwrap_err();
        assert!(e.starts_with("line 4: field \"v\": string values"), "{e}");
        assert!(parse("m", Precision::Ns, "host", 0)
            .unwrap_err()
            .contains("no fields"));
        assert!(parse("m v=x", Precision::Ns, "host", 0)
            .unwrap_err()
            .contains("cannot read"));
        assert!(parse("m v=1 12x", Precision::Ns, "host", 0)
            .unwrap_err()
            .contains("timestamp"));
        assert!(parse("m,t v=1", Precision::Ns, "host", 0)
            .unwrap_err()
            .contains("tag"));
        assert!(parse("m v=inf", Precision::Ns, "host", 0)
            .unwrap_err()
            .contains("finite"));
        assert!(parse("m v=1 99999999999999999", Precision::S, "host", 0)
            .unwrap_err()
            .contains("out of range"));
    }
}
