//! `POST /vector/search`'s body, read without a `serde_json::Value` per
//! component of the query vector.
//!
//! A search body is mostly its vector (784 numbers on Fashion-MNIST).
//! Parsed through a `Value` tree, each number became a 32-byte `Value` in
//! a growing array that was then converted: about a tenth of a search
//! request's server time in a profile (bench/RESULTS.md). Here the body is
//! read once: `vector` straight into numbers, every other field into a
//! `Value` as before (they are few and small).
//!
//! Invariant: this path never changes an answer. It gives the same
//! numbers `Value::as_f64` would (serde_json parses them the same way, and
//! an element that is not a number stays `None`, as `as_f64` gives), and
//! the caller runs the same checks on them in the same order. Whatever it
//! does not read cleanly (not JSON, not an object, a `vector` that is not
//! an array) returns `None`, and the caller parses the body the general
//! way, which gives the usual error.

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

/// A search body, read.
pub struct SearchBody {
    /// Every field but `vector`.
    pub rest: Map<String, Value>,
    /// `vector`'s elements (`None`: not a number), or `None` when absent.
    pub vector: Option<Vec<Option<f64>>>,
}

/// `body` read, or `None` when the caller must parse it the general way.
pub fn parse(body: &[u8]) -> Option<SearchBody> {
    serde_json::from_slice::<Body>(body).ok().map(|b| b.0)
}

struct Body(SearchBody);

impl<'de> Deserialize<'de> for Body {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Body, D::Error> {
        d.deserialize_map(BodyVisitor)
    }
}

struct BodyVisitor;

impl<'de> Visitor<'de> for BodyVisitor {
    type Value = Body;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Body, A::Error> {
        let mut rest = Map::new();
        let mut vector = None;
        // A repeated field keeps its last value, as a `Value` object does.
        while let Some(key) = map.next_key::<String>()? {
            if key == "vector" {
                vector = Some(map.next_value::<Components>()?.0);
            } else {
                let v: Value = map.next_value()?;
                rest.insert(key, v);
            }
        }
        Ok(Body(SearchBody { rest, vector }))
    }
}

/// An array's elements as numbers (an error for anything but an array).
struct Components(Vec<Option<f64>>);

impl<'de> Deserialize<'de> for Components {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Components, D::Error> {
        d.deserialize_seq(ComponentsVisitor)
    }
}

struct ComponentsVisitor;

impl<'de> Visitor<'de> for ComponentsVisitor {
    type Value = Components;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Components, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(Component(x)) = seq.next_element()? {
            out.push(x);
        }
        Ok(Components(out))
    }
}

/// One element: its number as `Value::as_f64` gives it, `None` for
/// anything else (which is read and dropped).
struct Component(Option<f64>);

impl<'de> Deserialize<'de> for Component {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Component, D::Error> {
        d.deserialize_any(ComponentVisitor)
    }
}

struct ComponentVisitor;

impl<'de> Visitor<'de> for ComponentVisitor {
    type Value = Component;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_u64<E>(self, n: u64) -> Result<Component, E> {
        Ok(Component(Some(n as f64)))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Component, E> {
        Ok(Component(Some(n as f64)))
    }

    fn visit_f64<E>(self, x: f64) -> Result<Component, E> {
        Ok(Component(Some(x)))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Component, E> {
        Ok(Component(None))
    }

    fn visit_str<E>(self, _: &str) -> Result<Component, E> {
        Ok(Component(None))
    }

    fn visit_unit<E>(self) -> Result<Component, E> {
        Ok(Component(None))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Component, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Component(None))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Component, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Component(None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `vector`'s elements through `as_f64`.
    type Components = Option<Vec<Option<f64>>>;

    /// What the general path gives: the body as a `Value` object, and
    /// `vector`'s elements through `as_f64`.
    fn general(body: &[u8]) -> Option<(Map<String, Value>, Components)> {
        let Ok(Value::Object(mut m)) = serde_json::from_slice::<Value>(body) else {
            return None;
        };
        let v = match m.remove("vector") {
            None => None,
            Some(Value::Array(a)) => Some(a.iter().map(Value::as_f64).collect()),
            Some(_) => return None,
        };
        Some((m, v))
    }

    fn same(body: &str) {
        let fast = parse(body.as_bytes()).map(|b| (b.rest, b.vector));
        let slow = general(body.as_bytes());
        assert_eq!(
            fast.as_ref().map(|(r, v)| (
                r,
                v.as_ref()
                    .map(|v| v.iter().map(|x| x.map(f64::to_bits)).collect::<Vec<_>>())
            )),
            slow.as_ref().map(|(r, v)| (
                r,
                v.as_ref()
                    .map(|v| v.iter().map(|x| x.map(f64::to_bits)).collect::<Vec<_>>())
            )),
            "{body}"
        );
    }

    #[test]
    fn reads_bodies_as_the_general_path_does() {
        for body in [
            r#"{"table":"t","vector":[1,2.5,-3,1e3,0.1],"k":3}"#,
            r#"{"vector":[1,"x",null,true,[1,[2]],{"a":[1]},-0.0,18446744073709551615]}"#,
            r#"{"vector":[1],"vector":[2,3],"table":"a","table":"b"}"#,
            r#"{"table":"t","filter":{"predicates":[{"column":"a","value":1}]}}"#,
            r#"{"vector":[]}"#,
            r#" { "vector" : [ 1 , 2 ] } "#,
            r#"{"vector":[1e39, 123456789012345678901234567890]}"#,
        ] {
            same(body);
        }
        // Left to the general path (which gives the error).
        for body in [
            "{not json",
            "[1,2]",
            r#"{"vector":"1,2,3"}"#,
            r#"{"vector":{"a":1}}"#,
            r#"{"vector":[1,2]} x"#,
            r#"{"vector":[1e999]}"#,
            "",
        ] {
            assert!(parse(body.as_bytes()).is_none(), "{body}");
        }
    }

    proptest! {
        #[test]
        fn any_numbers_read_the_same(xs in prop::collection::vec(any::<f64>(), 0..50), ints in prop::collection::vec(any::<i64>(), 0..20)) {
            let mut parts: Vec<String> = xs.iter().filter(|x| x.is_finite()).map(|x| format!("{x:e}")).collect();
            parts.extend(ints.iter().map(|i| i.to_string()));
            same(&format!(r#"{{"table":"t","vector":[{}]}}"#, parts.join(",")));
        }
    }
}
