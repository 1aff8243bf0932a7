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

use super::ingest::SeriesWrite;
use super::key::{self, Labels};
use std::collections::{BTreeMap, HashMap};

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

fn field_value(raw_name: &str, raw: &str) -> Result<f64, String> {
    let name = unescape(raw_name, &[',', '=', ' ']);
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

/// The parsed series part (`measurement[,tag=value...]`) of a line.
struct SeriesPart {
    measurement: String,
    entity: String,
    tags: BTreeMap<String, String>,
}

fn parse_series_part(series: &str, entity_tag: &str) -> Result<SeriesPart, String> {
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
    Ok(SeriesPart {
        measurement,
        entity,
        tags,
    })
}

/// A body's points, grouped by series as they are parsed.
///
/// Lines of a batch mostly repeat the series part of the line before
/// (Telegraf and client libraries write one series' points together), so
/// the parsed series part and each field's series slot are kept for the
/// next line: such a line costs a comparison, two number parses and a
/// push, with no allocation and no hashing.
struct Grouper<'a> {
    precision: Precision,
    entity_tag: &'a str,
    now_ms: i64,
    by_canonical: HashMap<Vec<u8>, usize>,
    out: Vec<SeriesWrite>,
    points: usize,
    /// The previous line's series part, as written, and its parse.
    last_text: Option<&'a str>,
    last: Option<SeriesPart>,
    /// Field keys (as written) seen under `last_text`, with their slots.
    fields: Vec<(&'a str, usize)>,
}

impl<'a> Grouper<'a> {
    fn slot(&mut self, raw_key: &'a str) -> Result<usize, String> {
        if let Some((_, slot)) = self.fields.iter().find(|(k, _)| *k == raw_key) {
            return Ok(*slot);
        }
        let Some(part) = &self.last else {
            return Err("no series".into());
        };
        let name = unescape(raw_key, &[',', '=', ' ']);
        let labels = Labels {
            metric: format!("{}.{name}", part.measurement),
            entity: part.entity.clone(),
            tags: part.tags.clone(),
        };
        labels.validate()?;
        let canonical = labels.canonical();
        let slot = match self.by_canonical.get(&canonical) {
            Some(s) => *s,
            None => {
                let s = self.out.len();
                self.by_canonical.insert(canonical.clone(), s);
                self.out.push(SeriesWrite {
                    id: key::series_id_of(&canonical),
                    canonical,
                    points: Vec::new(),
                });
                s
            }
        };
        // A line has few fields; a pathological one cannot grow this much.
        if self.fields.len() < 256 {
            self.fields.push((raw_key, slot));
        }
        Ok(slot)
    }

    /// Parses one non-empty line (one point per field).
    fn line(&mut self, line: &'a str) -> Result<(), String> {
        let (series, stop, rest) = split_at_unescaped(line, b" ", false);
        if stop.is_none() {
            return Err("no fields (expected `measurement[,tags] field=value [timestamp]`)".into());
        }
        let (fields, _, ts) = split_at_unescaped(rest, b" ", true);
        let ts = ts.trim();
        let ts_ms = if ts.is_empty() {
            self.now_ms
        } else {
            let t: i64 = ts
                .parse()
                .map_err(|_| format!("timestamp {ts:?}: must be an integer"))?;
            self.precision
                .to_ms(t)
                .ok_or_else(|| format!("timestamp {ts:?}: out of range (years 1 to 9999)"))?
        };
        if self.last_text != Some(series) {
            self.last = None;
            self.last_text = None;
            self.fields.clear();
            self.last = Some(parse_series_part(series, self.entity_tag)?);
            self.last_text = Some(series);
        }
        let mut rest = fields;
        loop {
            let (pair, s, r) = split_at_unescaped(rest, b",", true);
            let (k, eq, v) = split_at_unescaped(pair, b"=", false);
            if eq.is_none() || k.is_empty() || v.is_empty() {
                return Err(format!("field {pair:?}: expected key=value"));
            }
            let value = field_value(k, v)?;
            let slot = self.slot(k)?;
            self.out[slot].points.push((ts_ms, value));
            self.points += 1;
            if s.is_none() {
                break;
            }
            rest = r;
        }
        Ok(())
    }
}

/// Parses a whole body into its series, each with its points in input
/// order; the error names the first bad line (1-based).
pub fn parse_series(
    body: &str,
    precision: Precision,
    entity_tag: &str,
    now_ms: i64,
) -> Result<Vec<SeriesWrite>, String> {
    let mut g = Grouper {
        precision,
        entity_tag,
        now_ms,
        by_canonical: HashMap::new(),
        out: Vec::new(),
        points: 0,
        last_text: None,
        last: None,
        fields: Vec::new(),
    };
    for (i, line) in body.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        g.line(line).map_err(|e| format!("line {}: {e}", i + 1))?;
        if g.points > MAX_POINTS {
            return Err(format!(
                "line {}: more than {MAX_POINTS} points in one request",
                i + 1
            ));
        }
    }
    Ok(g.out)
}

/// [`parse_series`] flattened: every point with its labels, series by
/// series (tests).
#[cfg(test)]
pub fn parse(
    body: &str,
    precision: Precision,
    entity_tag: &str,
    now_ms: i64,
) -> Result<Vec<(Labels, i64, f64)>, String> {
    let series = parse_series(body, precision, entity_tag, now_ms)?;
    let mut out = Vec::new();
    for s in series {
        let labels = Labels::from_canonical(&s.canonical).ok_or("bad canonical")?;
        for (t, v) in s.points {
            out.push((labels.clone(), t, v));
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
    fn repeated_series_lines_group_into_their_series() {
        let body = "m,host=a v=1 1\nm,host=a v=2,w=3 2\nm,host=b v=4 3\nm,host=a v=5 4\n\
                    m,host=a,dc=x v=6 5\nm,dc=x,host=a v=7 6\nm,host=a v=8 7";
        let s = parse_series(body, Precision::Ms, "host", 0).unwrap();
        let got: Vec<(Labels, Vec<(i64, f64)>)> = s
            .into_iter()
            .map(|w| {
                assert_eq!(w.id, key::series_id_of(&w.canonical));
                (Labels::from_canonical(&w.canonical).unwrap(), w.points)
            })
            .collect();
        let l = |m: &str, e: &str, dc: Option<&str>| Labels {
            metric: m.into(),
            entity: e.into(),
            tags: dc
                .map(|d| ("dc".to_string(), d.to_string()))
                .into_iter()
                .collect(),
        };
        assert_eq!(
            got,
            vec![
                (
                    l("m.v", "a", None),
                    vec![(1, 1.0), (2, 2.0), (4, 5.0), (7, 8.0)]
                ),
                (l("m.w", "a", None), vec![(2, 3.0)]),
                (l("m.v", "b", None), vec![(3, 4.0)]),
                // Tag order as written does not make another series.
                (l("m.v", "a", Some("x")), vec![(5, 6.0), (6, 7.0)]),
            ]
        );
        let e = parse_series("m v=1 1\nm v=2 2\nm v=x 3", Precision::Ms, "host", 0).unwrap_err();
        assert!(e.starts_with("line 3: field \"v\": cannot read"), "{e}");
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
