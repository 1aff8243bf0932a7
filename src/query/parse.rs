//! The `POST /query` body, checked field by field.

use super::{Cond, Filter};
use crate::error::ApiError;
use crate::index::encoding::Scalar;
use serde_json::{Map, Value};
use std::hash::Hasher;

/// Most rows one answer may carry.
pub const MAX_LIMIT: usize = 10_000;
/// Most conditions (predicates plus ranges) in one query: every candidate
/// document is checked against each.
pub const MAX_CONDITIONS: usize = 64;
const DEFAULT_LIMIT: usize = 100;

/// What the answer carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Return {
    Entities,
    Keys,
    Count,
}

/// `order_by`.
#[derive(Debug, Clone)]
pub struct Order {
    pub column: String,
    pub path: Vec<String>,
    pub desc: bool,
}

/// A row's place in the result order: its encoded sort value (empty
/// without order_by) and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub sort: Vec<u8>,
    pub key: String,
}

impl Position {
    /// Whether `self` comes strictly after `other` in the result order.
    pub fn after(&self, other: &Position, desc: bool) -> bool {
        let ord = (&self.sort, &self.key).cmp(&(&other.sort, &other.key));
        if desc {
            ord == std::cmp::Ordering::Less
        } else {
            ord == std::cmp::Ordering::Greater
        }
    }
}

/// A parsed query.
#[derive(Debug, Clone)]
pub struct Query {
    pub table: String,
    pub filter: Filter,
    pub order: Option<Order>,
    pub limit: usize,
    pub cursor: Option<Position>,
    pub ret: Return,
    pub explain: bool,
    /// Hash of what decides the result order and content (a cursor is only
    /// valid for the query that produced it).
    pub fingerprint: u64,
}

fn bad(msg: String) -> ApiError {
    ApiError::BadRequest(msg)
}

fn column_of(m: &Map<String, Value>, field: &str) -> Result<(String, Vec<String>), ApiError> {
    match m.get("column") {
        Some(Value::String(c)) => {
            crate::index::check_column(c).map_err(|e| bad(format!("{field}.column: {e}")))?;
            Ok((c.clone(), c.split('.').map(str::to_string).collect()))
        }
        Some(v) => Err(bad(format!("{field}.column: must be a string, got {v}"))),
        None => Err(bad(format!("{field}.column: required"))),
    }
}

fn scalar(field: &str, v: &Value) -> Result<Scalar, ApiError> {
    Scalar::from_json(v).ok_or_else(|| {
        bad(format!(
            "{field}: must be a JSON scalar (string, number, boolean or null), got {v}"
        ))
    })
}

/// Parses and checks a `/query` body.
pub fn parse(body: &[u8]) -> Result<Query, ApiError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    let Value::Object(m) = v else {
        return Err(bad("the body must be a JSON object".into()));
    };
    const FIELDS: &[&str] = &[
        "table",
        "predicates",
        "range",
        "order_by",
        "limit",
        "cursor",
        "return",
        "explain",
    ];
    for k in m.keys() {
        if !FIELDS.contains(&k.as_str()) {
            return Err(bad(format!(
                "unknown field {k:?} (allowed: {})",
                FIELDS.join(", ")
            )));
        }
    }
    let table = match m.get("table") {
        Some(Value::String(t)) if !t.is_empty() && !t.contains(':') => t.clone(),
        Some(v) => return Err(bad(format!("table: must be a table name, got {v}"))),
        None => return Err(bad("table: required".into())),
    };
    let mut conds = Vec::new();
    match m.get("predicates") {
        None => {}
        Some(Value::Array(ps)) => {
            for (i, p) in ps.iter().enumerate() {
                let field = format!("predicates[{i}]");
                let Value::Object(pm) = p else {
                    return Err(bad(format!(
                        "{field}: must be an object {{\"column\", \"value\"}}"
                    )));
                };
                for k in pm.keys() {
                    if k != "column" && k != "value" {
                        return Err(bad(format!(
                            "{field}: unknown field {k:?} (predicates are equality: column, value; use range for gt/gte/lt/lte)"
                        )));
                    }
                }
                let (column, path) = column_of(pm, &field)?;
                let value = pm
                    .get("value")
                    .ok_or_else(|| bad(format!("{field}.value: required")))?;
                conds.push(Cond {
                    column,
                    path,
                    eq: Some(scalar(&format!("{field}.value"), value)?),
                    lower: None,
                    upper: None,
                });
            }
        }
        Some(v) => return Err(bad(format!("predicates: must be an array, got {v}"))),
    }
    match m.get("range") {
        None => {}
        Some(Value::Array(rs)) => {
            for (i, r) in rs.iter().enumerate() {
                let field = format!("range[{i}]");
                let Value::Object(rm) = r else {
                    return Err(bad(format!("{field}: must be an object")));
                };
                let (column, path) = column_of(rm, &field)?;
                let (mut lower, mut upper) = (None, None);
                for (k, v) in rm {
                    let bound = |inclusive| -> Result<Option<(Scalar, bool)>, ApiError> {
                        Ok(Some((scalar(&format!("{field}.{k}"), v)?, inclusive)))
                    };
                    match k.as_str() {
                        "column" => {}
                        "gt" | "gte" if lower.is_some() => {
                            return Err(bad(format!("{field}: give one of gt and gte")))
                        }
                        "lt" | "lte" if upper.is_some() => {
                            return Err(bad(format!("{field}: give one of lt and lte")))
                        }
                        "gt" => lower = bound(false)?,
                        "gte" => lower = bound(true)?,
                        "lt" => upper = bound(false)?,
                        "lte" => upper = bound(true)?,
                        op => {
                            return Err(bad(format!(
                                "{field}: unknown operator {op:?} (allowed: gt, gte, lt, lte)"
                            )))
                        }
                    }
                }
                if lower.is_none() && upper.is_none() {
                    return Err(bad(format!("{field}: needs gt, gte, lt or lte")));
                }
                if let (Some((l, _)), Some((u, _))) = (&lower, &upper) {
                    if !super::same_type(l, u) {
                        return Err(bad(format!(
                            "{field}: lower and upper bounds must have the same type"
                        )));
                    }
                }
                for (b, _) in lower.iter().chain(upper.iter()) {
                    if matches!(b, Scalar::Null) {
                        return Err(bad(format!("{field}: null is not a range bound")));
                    }
                }
                conds.push(Cond {
                    column,
                    path,
                    eq: None,
                    lower,
                    upper,
                });
            }
        }
        Some(v) => return Err(bad(format!("range: must be an array, got {v}"))),
    }
    if conds.len() > MAX_CONDITIONS {
        return Err(bad(format!(
            "predicates and range: {} conditions, at most {MAX_CONDITIONS}",
            conds.len()
        )));
    }
    let order = match m.get("order_by") {
        None | Some(Value::Null) => None,
        Some(Value::Object(om)) => {
            for k in om.keys() {
                if k != "column" && k != "desc" {
                    return Err(bad(format!("order_by: unknown field {k:?}")));
                }
            }
            let (column, path) = column_of(om, "order_by")?;
            let desc = match om.get("desc") {
                None => false,
                Some(Value::Bool(b)) => *b,
                Some(v) => return Err(bad(format!("order_by.desc: must be a boolean, got {v}"))),
            };
            Some(Order { column, path, desc })
        }
        Some(v) => {
            return Err(bad(format!(
                "order_by: must be {{\"column\", \"desc\"}}, got {v}"
            )))
        }
    };
    let limit = match m.get("limit") {
        None => DEFAULT_LIMIT,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=MAX_LIMIT as u64).contains(&n) => n as usize,
            _ => {
                return Err(bad(format!(
                    "limit: must be an integer in 1..={MAX_LIMIT}, got {v}"
                )))
            }
        },
    };
    let ret = match m.get("return") {
        None => Return::Entities,
        Some(Value::String(s)) if s == "entities" => Return::Entities,
        Some(Value::String(s)) if s == "keys" => Return::Keys,
        Some(Value::String(s)) if s == "count" => Return::Count,
        Some(v) => {
            return Err(bad(format!(
                "return: must be \"entities\", \"keys\" or \"count\", got {v}"
            )))
        }
    };
    let explain = match m.get("explain") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => return Err(bad(format!("explain: must be a boolean, got {v}"))),
    };
    let fingerprint = {
        let mut h = rustc_hash::FxHasher::default();
        h.write(table.as_bytes());
        for c in &conds {
            h.write(format!("{}|{:?}|{:?}|{:?}", c.column, c.eq, c.lower, c.upper).as_bytes());
        }
        if let Some(o) = &order {
            h.write(format!("order|{}|{}", o.column, o.desc).as_bytes());
        }
        h.finish()
    };
    let cursor = match m.get("cursor") {
        None | Some(Value::Null) => None,
        Some(Value::String(c)) => Some(decode_cursor(c, fingerprint)?),
        Some(v) => return Err(bad(format!("cursor: must be a string, got {v}"))),
    };
    Ok(Query {
        filter: Filter {
            conds,
            order_path: order.as_ref().map(|o| o.path.clone()),
        },
        table,
        order,
        limit,
        cursor,
        ret,
        explain,
        fingerprint,
    })
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The opaque cursor for a row position.
pub fn encode_cursor(p: &Position, fingerprint: u64) -> String {
    let mut raw = vec![1u8];
    raw.extend_from_slice(&fingerprint.to_be_bytes());
    raw.extend_from_slice(&(p.sort.len() as u32).to_be_bytes());
    raw.extend_from_slice(&p.sort);
    raw.extend_from_slice(p.key.as_bytes());
    let mut s = String::with_capacity(raw.len() * 2);
    for b in raw {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 15)]));
    }
    s
}

fn decode_cursor(c: &str, fingerprint: u64) -> Result<Position, ApiError> {
    let malformed = || bad("cursor: malformed (pass next_cursor back unchanged)".into());
    if !c.len().is_multiple_of(2) {
        return Err(malformed());
    }
    let nib = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    let raw: Vec<u8> = c
        .as_bytes()
        .chunks(2)
        .map(|p| Some((nib(p[0])? << 4) | nib(p[1])?))
        .collect::<Option<_>>()
        .ok_or_else(malformed)?;
    if raw.len() < 13 || raw[0] != 1 {
        return Err(malformed());
    }
    let fp = u64::from_be_bytes(raw[1..9].try_into().map_err(|_| malformed())?);
    if fp != fingerprint {
        return Err(bad(
            "cursor: belongs to a different query (same table, conditions and order_by are required)"
                .into(),
        ));
    }
    let n = u32::from_be_bytes(raw[9..13].try_into().map_err(|_| malformed())?) as usize;
    let sort = raw.get(13..13 + n).ok_or_else(malformed)?.to_vec();
    let key = String::from_utf8(raw[13 + n..].to_vec()).map_err(|_| malformed())?;
    Ok(Position { sort, key })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> String {
        parse(body.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_field() {
        let many: Vec<String> = (0..=MAX_CONDITIONS)
            .map(|i| format!(r#"{{"column":"c{i}","value":1}}"#))
            .collect();
        let q = format!(r#"{{"table":"t","predicates":[{}]}}"#, many.join(","));
        assert!(err(&q).contains("at most 64"));
        assert!(err(r#"{}"#).contains("table"));
        assert!(err(r#"{"table":"t","limit":0}"#).contains("limit"));
        assert!(err(r#"{"table":"t","limit":"5"}"#).contains("limit"));
        assert!(err(r#"{"table":"t","range":[{"column":"a","between":1}]}"#)
            .contains("unknown operator"));
        assert!(
            err(r#"{"table":"t","range":[{"column":"a","gt":1,"lt":"x"}]}"#).contains("range[0]")
        );
        assert!(
            err(r#"{"table":"t","predicates":[{"column":"a","value":[1]}]}"#)
                .contains("predicates[0].value")
        );
        assert!(err(r#"{"table":"t","predicates":[{"value":1}]}"#).contains("predicates[0].column"));
        assert!(err(r#"{"table":"t","cursor":"zz"}"#).contains("cursor"));
        assert!(err(r#"{"table":"t","return":"rows"}"#).contains("return"));
        assert!(
            err(r#"{"table":"t","order_by":{"column":"a","desc":1}}"#).contains("order_by.desc")
        );
        assert!(err(r#"{"table":"t","where":{}}"#).contains("unknown field"));
    }

    #[test]
    fn cursors_round_trip_and_bind_to_the_query() {
        let q = parse(br#"{"table":"t","predicates":[{"column":"a","value":1}]}"#).unwrap();
        let p = Position {
            sort: vec![4, 1, 2],
            key: "t:x".into(),
        };
        let c = encode_cursor(&p, q.fingerprint);
        let body =
            format!(r#"{{"table":"t","predicates":[{{"column":"a","value":1}}],"cursor":"{c}"}}"#);
        assert_eq!(parse(body.as_bytes()).unwrap().cursor, Some(p));
        let other =
            format!(r#"{{"table":"t","predicates":[{{"column":"a","value":2}}],"cursor":"{c}"}}"#);
        assert!(parse(other.as_bytes()).is_err());
    }
}
