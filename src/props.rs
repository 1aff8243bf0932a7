//! Property tests of the server's pure parsers and encodings: arbitrary
//! input never panics, and the index encoding keeps value order and round
//! trips. (The HTTP parser and chunked decoder have theirs in `io/tests`.)

use crate::entity::key::{decode_path_key, decode_query_value, parse_key};
use crate::index::encoding::{decode, encoded_len, Scalar};
use proptest::prelude::*;
use std::cmp::Ordering;

fn scalar() -> impl Strategy<Value = Scalar> {
    prop_oneof![
        Just(Scalar::Absent),
        Just(Scalar::Null),
        any::<bool>().prop_map(Scalar::Bool),
        // Finite numbers (JSON has no NaN or infinity), integers included.
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Scalar::Number),
        (-(1i64 << 53)..(1i64 << 53)).prop_map(|i| Scalar::Number(i as f64)),
        ".{0,12}".prop_map(Scalar::String),
        proptest::collection::vec(any::<u8>(), 0..8)
            .prop_map(|b| Scalar::String(String::from_utf8_lossy(&b).into_owned())),
    ]
}

fn enc(s: &Scalar) -> Vec<u8> {
    let mut out = Vec::new();
    s.encode(&mut out);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn encoded_order_is_value_order(a in scalar(), b in scalar()) {
        prop_assert_eq!(enc(&a).cmp(&enc(&b)), a.cmp_total(&b));
    }

    #[test]
    fn encodings_round_trip_and_delimit_themselves(a in scalar(), b in scalar()) {
        let mut both = enc(&a);
        let first = both.len();
        both.extend(enc(&b));
        prop_assert_eq!(encoded_len(&both), Some(first));
        let (d, n) = decode(&both).expect("decodes");
        prop_assert_eq!(n, first);
        prop_assert_eq!(d.cmp_total(&a), Ordering::Equal);
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(b in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = encoded_len(&b);
        let _ = decode(&b);
    }

    #[test]
    fn key_parsing_never_panics(s in ".{0,40}", raw in "[%A-Za-z0-9:]{0,40}") {
        let _ = parse_key(&s);
        let _ = decode_path_key(&raw);
        let _ = decode_query_value(&raw);
        if let Ok((table, pk)) = parse_key(&s) {
            prop_assert!(!table.is_empty() && !pk.is_empty());
            prop_assert_eq!(format!("{table}:{pk}"), s);
        }
    }

    #[test]
    fn query_parsing_never_panics_on_bytes(b in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = crate::query::parse(&b);
    }

    #[test]
    fn query_parsing_never_panics_on_shaped_json(
        table in "[a-z]{0,4}",
        col in "[a-z.]{0,6}",
        op in prop_oneof![Just("gt"), Just("gte"), Just("lt"), Just("lte"), Just("eq"), Just("x")],
        v in prop_oneof![Just("1".to_string()), Just("null".into()), Just("\"s\"".into()),
                         Just("[1]".into()), Just("{}".into()), Just("true".into())],
        limit in prop_oneof![Just("0".to_string()), Just("1".into()), Just("10001".into()),
                             Just("-1".into()), Just("\"5\"".into())],
    ) {
        let body = format!(
            r#"{{"table":"{table}","predicates":[{{"column":"{col}","value":{v}}}],"range":[{{"column":"{col}","{op}":{v}}}],"order_by":{{"column":"{col}"}},"limit":{limit}}}"#
        );
        if let Err(e) = crate::query::parse(body.as_bytes()) {
            prop_assert_eq!(e.status(), 400, "{}", body);
        }
    }
}
