//! Order-preserving encoding of JSON scalars for index keys.
//!
//! Byte order of the encoding is the order of the values:
//!
//! ```text
//! absent  < null  < false < true  < numbers          < strings
//! 0x00      0x01    0x02    0x03    0x04 + 8 bytes     0x05 + escaped bytes + 0x00 0x00
//! ```
//!
//! * *absent* stands for a missing field and for a non-scalar value (object
//!   or array): such values are not comparable, so they sort first and never
//!   match a predicate.
//! * Numbers are IEEE-754 doubles made byte-comparable: positive numbers
//!   with the sign bit flipped, negative numbers with every bit flipped,
//!   big-endian; `-0` is stored as `0`. Integers are exact up to 2^53 (the
//!   same limit JSON parsers and JavaScript have).
//! * Strings are their UTF-8 bytes with `0x00` escaped as `0x00 0xFF`, then
//!   the terminator `0x00 0x00`, so a string sorts before every longer
//!   string it prefixes and a composite key's columns never run together.
//!
//! Every encoding is self-delimiting, so a composite index key is the
//! concatenation of its columns followed by the entity key.

use simd_json::prelude::*;
use simd_json::{BorrowedValue, ValueType};
use std::cmp::Ordering;

pub const TAG_ABSENT: u8 = 0x00;
pub const TAG_NULL: u8 = 0x01;
pub const TAG_FALSE: u8 = 0x02;
pub const TAG_TRUE: u8 = 0x03;
pub const TAG_NUMBER: u8 = 0x04;
pub const TAG_STRING: u8 = 0x05;

/// A comparable JSON value (owned), as used in query predicates.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Absent,
    Null,
    Bool(bool),
    Number(f64),
    String(String),
}

impl Scalar {
    /// From a query's JSON value; `None` for arrays and objects.
    pub fn from_json(v: &serde_json::Value) -> Option<Scalar> {
        Some(match v {
            serde_json::Value::Null => Scalar::Null,
            serde_json::Value::Bool(b) => Scalar::Bool(*b),
            serde_json::Value::Number(n) => Scalar::Number(n.as_f64()?),
            serde_json::Value::String(s) => Scalar::String(s.clone()),
            _ => return None,
        })
    }

    /// A borrowed view; tags, encoding and order are defined once, there.
    pub fn as_ref(&self) -> ScalarRef<'_> {
        match self {
            Scalar::Absent => ScalarRef::Absent,
            Scalar::Null => ScalarRef::Null,
            Scalar::Bool(b) => ScalarRef::Bool(*b),
            Scalar::Number(n) => ScalarRef::Number(*n),
            Scalar::String(s) => ScalarRef::Str(s),
        }
    }

    /// The value's type tag (for "same type" checks of range bounds).
    pub fn tag(&self) -> u8 {
        self.as_ref().tag()
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        self.as_ref().encode(out)
    }

    /// Total order consistent with the encoding.
    pub fn cmp_total(&self, other: &Scalar) -> Ordering {
        self.as_ref().cmp_scalar(other)
    }
}

fn norm(f: f64) -> f64 {
    if f == 0.0 {
        0.0
    } else {
        f
    }
}

pub fn encode_number(out: &mut Vec<u8>, f: f64) {
    out.push(TAG_NUMBER);
    let bits = norm(f).to_bits();
    let key = if bits >> 63 == 1 {
        !bits
    } else {
        bits ^ (1 << 63)
    };
    out.extend_from_slice(&key.to_be_bytes());
}

pub fn encode_str(out: &mut Vec<u8>, s: &str) {
    out.push(TAG_STRING);
    for &b in s.as_bytes() {
        if b == 0 {
            out.extend_from_slice(&[0, 0xFF]);
        } else {
            out.push(b);
        }
    }
    out.extend_from_slice(&[0, 0]);
}

/// A document's value seen without copying (strings borrowed).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ScalarRef<'a> {
    Absent,
    Null,
    Bool(bool),
    Number(f64),
    Str(&'a str),
}

impl ScalarRef<'_> {
    pub fn tag(&self) -> u8 {
        match self {
            ScalarRef::Absent => TAG_ABSENT,
            ScalarRef::Null => TAG_NULL,
            ScalarRef::Bool(false) => TAG_FALSE,
            ScalarRef::Bool(true) => TAG_TRUE,
            ScalarRef::Number(_) => TAG_NUMBER,
            ScalarRef::Str(_) => TAG_STRING,
        }
    }

    /// Order against an owned value, consistent with the encoding.
    pub fn cmp_scalar(&self, other: &Scalar) -> Ordering {
        let other = other.as_ref();
        let (a, b) = (self.tag(), other.tag());
        if a != b {
            return a.cmp(&b);
        }
        match (self, other) {
            (ScalarRef::Number(x), ScalarRef::Number(y)) => norm(*x).total_cmp(&norm(y)),
            (ScalarRef::Str(x), ScalarRef::Str(y)) => x.as_bytes().cmp(y.as_bytes()),
            _ => Ordering::Equal,
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            ScalarRef::Absent => out.push(TAG_ABSENT),
            ScalarRef::Null => out.push(TAG_NULL),
            ScalarRef::Bool(b) => out.push(if *b { TAG_TRUE } else { TAG_FALSE }),
            ScalarRef::Number(n) => encode_number(out, *n),
            ScalarRef::Str(s) => encode_str(out, s),
        }
    }
}

/// A scalar view of any parsed JSON value (absent for objects and arrays).
pub fn scalar_ref<'v, V>(v: Option<&'v V>) -> ScalarRef<'v>
where
    V: ValueAsScalar + TypedValue,
{
    let Some(v) = v else {
        return ScalarRef::Absent;
    };
    if v.value_type() == ValueType::Null {
        ScalarRef::Null
    } else if let Some(b) = v.as_bool() {
        ScalarRef::Bool(b)
    } else if let Some(s) = v.as_str() {
        ScalarRef::Str(s)
    } else if let Some(f) = v.cast_f64() {
        ScalarRef::Number(f)
    } else {
        ScalarRef::Absent
    }
}

/// The value at a dotted path (`address.city`) of a parsed document.
pub fn lookup<'v, 'a>(
    doc: &'v BorrowedValue<'a>,
    path: &[String],
) -> Option<&'v BorrowedValue<'a>> {
    let mut cur = doc;
    for seg in path {
        cur = cur.as_object()?.get(seg.as_str())?;
    }
    Some(cur)
}

/// Encodes a document's value (missing or non-scalar: absent) into `out`
/// without allocating.
pub fn encode_doc_value(out: &mut Vec<u8>, v: Option<&BorrowedValue<'_>>) {
    scalar_ref(v).encode(out)
}

/// Length of the encoded value at the start of `b` (None if malformed).
pub fn encoded_len(b: &[u8]) -> Option<usize> {
    match *b.first()? {
        TAG_ABSENT | TAG_NULL | TAG_FALSE | TAG_TRUE => Some(1),
        TAG_NUMBER => (b.len() >= 9).then_some(9),
        TAG_STRING => {
            let mut i = 1;
            while i + 1 < b.len() {
                if b[i] == 0 {
                    if b[i + 1] == 0 {
                        return Some(i + 2);
                    }
                    i += 2;
                } else {
                    i += 1;
                }
            }
            None
        }
        _ => None,
    }
}

/// Decodes the value at the start of `b`.
pub fn decode(b: &[u8]) -> Option<(Scalar, usize)> {
    let n = encoded_len(b)?;
    let v = match b[0] {
        TAG_ABSENT => Scalar::Absent,
        TAG_NULL => Scalar::Null,
        TAG_FALSE => Scalar::Bool(false),
        TAG_TRUE => Scalar::Bool(true),
        TAG_NUMBER => {
            let k = u64::from_be_bytes(b[1..9].try_into().ok()?);
            let bits = if k >> 63 == 1 { k ^ (1 << 63) } else { !k };
            Scalar::Number(f64::from_bits(bits))
        }
        _ => {
            let mut s = Vec::with_capacity(n);
            let mut i = 1;
            while i < n - 2 {
                if b[i] == 0 {
                    s.push(0);
                    i += 2;
                } else {
                    s.push(b[i]);
                    i += 1;
                }
            }
            Scalar::String(String::from_utf8(s).ok()?)
        }
    };
    Some((v, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(s: &Scalar) -> Vec<u8> {
        let mut v = Vec::new();
        s.encode(&mut v);
        v
    }

    fn samples() -> Vec<Scalar> {
        let mut v = vec![
            Scalar::Absent,
            Scalar::Null,
            Scalar::Bool(false),
            Scalar::Bool(true),
            Scalar::String(String::new()),
            Scalar::String("a".into()),
            Scalar::String("a\0".into()),
            Scalar::String("a\0b".into()),
            Scalar::String("ab".into()),
            Scalar::String("b".into()),
            Scalar::String("é".into()),
        ];
        for n in [
            f64::MIN,
            -1e300,
            -9_007_199_254_740_993.0,
            -2.5,
            -1.0,
            -0.0,
            0.0,
            1e-300,
            0.5,
            1.0,
            2.0,
            9_007_199_254_740_991.0,
            9_007_199_254_740_992.0,
            1e300,
            f64::MAX,
        ] {
            v.push(Scalar::Number(n));
        }
        // A deterministic pseudo-random spread.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..300 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let f = (x as i64 as f64) / ((x >> 40) as f64 + 1.0);
            v.push(Scalar::Number(f));
            let len = (x % 5) as usize;
            let s: String = (0..len)
                .map(|i| char::from(b"a\0bz"[((x >> (i * 3)) % 4) as usize]))
                .collect();
            v.push(Scalar::String(s));
        }
        v
    }

    #[test]
    fn byte_order_is_value_order() {
        let s = samples();
        for a in &s {
            for b in &s {
                assert_eq!(enc(a).cmp(&enc(b)), a.cmp_total(b), "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn composite_keys_do_not_run_together() {
        // ("a", "b") must sort before ("ab", "")
        let mut x = enc(&Scalar::String("a".into()));
        x.extend(enc(&Scalar::String("b".into())));
        let mut y = enc(&Scalar::String("ab".into()));
        y.extend(enc(&Scalar::String(String::new())));
        assert!(x < y);
    }

    #[test]
    fn decodes_what_it_encodes() {
        for s in samples() {
            let e = enc(&s);
            let (d, n) = decode(&e).unwrap();
            assert_eq!(n, e.len());
            assert_eq!(d.cmp_total(&s), Ordering::Equal, "{s:?}");
        }
    }

    #[test]
    fn integers_are_exact_to_2_pow_53() {
        let a = enc(&Scalar::Number(9_007_199_254_740_991.0));
        let b = enc(&Scalar::Number(9_007_199_254_740_992.0));
        assert!(a < b);
    }
}
