//! The chunked decoder on arbitrary bytes: never panics, and feeding the
//! input in two reads (cut chosen by the first byte) decides the same as
//! feeding it at once. The second byte picks the body limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use themis_io::chunked::{decode, ChunkedState};

fuzz_target!(|data: &[u8]| {
    let [cut, limit, input @ ..] = data else {
        return;
    };
    let max = match limit {
        0 => usize::MAX,
        n => usize::from(*n) * 16,
    };
    let mut out = Vec::new();
    let whole = decode(input, &mut out, &mut ChunkedState::default(), max);

    let cut = usize::from(*cut).min(input.len());
    let (mut split_out, mut state) = (Vec::new(), ChunkedState::default());
    let split = match decode(&input[..cut], &mut split_out, &mut state, max) {
        Ok(None) => decode(input, &mut split_out, &mut state, max),
        other => other,
    };
    assert_eq!(whole, split, "cut at {cut}");
    if let Ok(Some(n)) = whole {
        assert!(n <= input.len());
        assert!(out.len() <= max);
        assert_eq!(out, split_out);
    }
});
