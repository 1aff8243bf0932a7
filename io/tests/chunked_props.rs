//! Property tests of the incremental chunked decoder (`themis_io::chunked`).
//!
//! * arbitrary bytes never panic, and feeding them over any split into
//!   reads gives the same outcome as feeding them at once;
//! * encoding a random body with random chunk sizes, size spellings,
//!   extensions and trailers decodes back to the body, consuming exactly
//!   the encoding, whatever the split into reads;
//! * the body limit is exact;
//! * malformed encodings (no size digit, bare CR or LF, control characters,
//!   junk after a size, wrong chunk length) are refused over every split.
//!
//! Deterministic: proptest's RNG is seeded per test (no persisted failure
//! files, fixed case counts).

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, RngAlgorithm, TestRng, TestRunner};
use themis_io::chunked::{decode, ChunkedError, ChunkedState};

type Outcome = Result<Option<usize>, ChunkedError>;

fn runner(cases: u32) -> TestRunner {
    let config = Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..Config::default()
    };
    TestRunner::new_with_rng(
        config,
        TestRng::from_seed(RngAlgorithm::ChaCha, &[0x5e; 32]),
    )
}

fn check<S: Strategy>(cases: u32, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    if let Err(e) = runner(cases).run(&strategy, test) {
        panic!("{e}");
    }
}

/// Decodes `input` in one call.
fn once(input: &[u8], max: usize) -> (Outcome, Vec<u8>) {
    let mut out = Vec::new();
    let r = decode(input, &mut out, &mut ChunkedState::default(), max);
    (r, out)
}

/// Feeds `input` as the reads ending at `cuts` (sorted, each in
/// `1..input.len()`), then the whole input, resuming each time, and stops
/// at the first call that is not "need more". Returns that outcome, the
/// decoded bytes, and the input length it was decided at.
fn incremental(input: &[u8], cuts: &[usize], max: usize) -> (Outcome, Vec<u8>, usize) {
    let mut out = Vec::new();
    let mut state = ChunkedState::default();
    for &end in cuts.iter().chain(std::iter::once(&input.len())) {
        match decode(&input[..end], &mut out, &mut state, max) {
            Ok(None) => {}
            other => return (other, out, end),
        }
    }
    (Ok(None), out, input.len())
}

/// Cut points from random indices, sorted and deduplicated, inside `1..len`.
fn cuts_of(len: usize, picks: &[prop::sample::Index]) -> Vec<usize> {
    if len < 2 {
        return Vec::new();
    }
    let mut cuts: Vec<usize> = picks.iter().map(|i| 1 + i.index(len - 1)).collect();
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

/// One chunk of an encoding, as generated.
#[derive(Debug, Clone)]
struct Chunk {
    len: usize,
    /// Leading zeros on the size.
    zeros: usize,
    upper: bool,
    /// Whitespace between the size and the extensions.
    bws: &'static str,
    /// Extensions, each `;name` or `;name=value`, written verbatim.
    ext: String,
}

#[derive(Debug, Clone)]
struct Encoding {
    body: Vec<u8>,
    chunks: Vec<Chunk>,
    /// The last chunk's extensions.
    last_ext: String,
    trailers: Vec<String>,
    /// Bytes after the body (the next pipelined request): not consumed.
    after: Vec<u8>,
}

fn hex(len: usize, zeros: usize, upper: bool) -> String {
    let digits = if upper {
        format!("{len:X}")
    } else {
        format!("{len:x}")
    };
    // At most 16 digits in all: the decoder's limit.
    let zeros = zeros.min(16 - digits.len());
    format!("{}{digits}", "0".repeat(zeros))
}

impl Encoding {
    fn render(&self) -> Vec<u8> {
        let mut v = Vec::new();
        let mut at = 0;
        for c in &self.chunks {
            v.extend_from_slice(hex(c.len, c.zeros, c.upper).as_bytes());
            v.extend_from_slice(c.bws.as_bytes());
            v.extend_from_slice(c.ext.as_bytes());
            v.extend_from_slice(b"\r\n");
            v.extend_from_slice(&self.body[at..at + c.len]);
            v.extend_from_slice(b"\r\n");
            at += c.len;
        }
        assert_eq!(at, self.body.len());
        v.extend_from_slice(b"0");
        v.extend_from_slice(self.last_ext.as_bytes());
        v.extend_from_slice(b"\r\n");
        for t in &self.trailers {
            v.extend_from_slice(t.as_bytes());
            v.extend_from_slice(b"\r\n");
        }
        v.extend_from_slice(b"\r\n");
        v
    }
}

fn extensions() -> impl Strategy<Value = String> {
    prop::collection::vec(
        (
            "[a-zA-Z0-9!#$%&'*+.^_`|~-]{1,8}",
            prop_oneof![
                Just(String::new()),
                "=[a-zA-Z0-9._-]{1,8}",
                "=\"[ a-zA-Z0-9;=\t,]{0,10}\"",
            ],
        ),
        0..3,
    )
    .prop_map(|exts| {
        exts.into_iter()
            .map(|(n, v)| format!(";{n}{v}"))
            .collect::<String>()
    })
}

fn encoding() -> impl Strategy<Value = Encoding> {
    (
        prop::collection::vec(any::<u8>(), 0..600),
        prop::collection::vec(
            (
                1usize..200,
                0usize..4,
                any::<bool>(),
                prop::sample::select(vec!["", " ", "\t", " \t "]),
                extensions(),
            ),
            1..12,
        ),
        extensions(),
        prop::collection::vec("[A-Za-z-]{1,10}: ?[ -~]{0,20}", 0..3),
        prop::collection::vec(any::<u8>(), 0..20),
    )
        .prop_map(|(body, sizes, last_ext, trailers, after)| {
            // Cut the body by the generated sizes (the last chunk takes what
            // is left, the sizes repeat when they run out).
            let mut chunks = Vec::new();
            let mut left = body.len();
            let mut i = 0;
            while left > 0 {
                let (len, zeros, upper, bws, ext) = sizes[i % sizes.len()].clone();
                let len = len.min(left);
                chunks.push(Chunk {
                    len,
                    zeros,
                    upper,
                    bws,
                    ext,
                });
                left -= len;
                i += 1;
            }
            Encoding {
                body,
                chunks,
                last_ext,
                trailers,
                after,
            }
        })
}

fn picks() -> impl Strategy<Value = Vec<prop::sample::Index>> {
    prop::collection::vec(any::<prop::sample::Index>(), 0..24)
}

#[test]
fn arbitrary_bytes_never_panic_and_any_split_agrees() {
    let input = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        // Mostly chunked-looking bytes, to get past the first size line.
        prop::collection::vec(
            prop::sample::select(b"0123456789abcdefABCDEF;= \t\r\n\"xX\x00\x7f".to_vec()),
            0..300
        ),
    ];
    let max = prop_oneof![Just(usize::MAX), 0usize..512];
    check(512, (input, picks(), max), |(input, picks, max)| {
        let (whole, out_whole) = once(&input, max);
        let cuts = cuts_of(input.len(), &picks);
        let (split, out_split, _) = incremental(&input, &cuts, max);
        prop_assert_eq!(&whole, &split, "cuts {:?}", cuts);
        if let Ok(Some(n)) = whole {
            prop_assert!(n <= input.len());
            prop_assert!(out_whole.len() <= max);
            prop_assert_eq!(out_whole, out_split);
        }
        Ok(())
    });
}

#[test]
fn huge_chunk_sizes_never_panic() {
    // Sizes near the top of usize, with no body limit: the decoder must
    // refuse or wait, not overflow.
    let size = prop_oneof![
        Just("ffffffffffffffff".to_string()),
        Just("fffffffffffffffe".to_string()),
        "[fF]{15,16}",
        "[89a-fA-F][0-9a-fA-F]{15}",
    ];
    let tail = prop::collection::vec(any::<u8>(), 0..40);
    check(256, (size, tail), |(size, tail)| {
        let mut input = format!("{size}\r\n").into_bytes();
        input.extend_from_slice(&tail);
        let (r, _) = once(&input, usize::MAX);
        prop_assert!(matches!(r, Ok(None) | Err(_)), "{:?}", r);
        Ok(())
    });
}

#[test]
fn encode_then_decode_round_trips_over_any_split() {
    check(256, (encoding(), picks()), |(enc, picks)| {
        let encoded = enc.render();
        let mut input = encoded.clone();
        input.extend_from_slice(&enc.after);

        let (r, out) = once(&input, enc.body.len());
        prop_assert_eq!(r, Ok(Some(encoded.len())));
        prop_assert_eq!(&out, &enc.body);

        // Random multi-way splits.
        let cuts = cuts_of(encoded.len(), &picks);
        let (r, out, at) = incremental(&input, &cuts, enc.body.len());
        prop_assert_eq!(r, Ok(Some(encoded.len())), "cuts {:?}", cuts);
        prop_assert_eq!(&out, &enc.body);
        prop_assert!(at >= encoded.len());

        // Every single cut: incomplete before it, the whole body after.
        for cut in 1..encoded.len() {
            let (r, out, at) = incremental(&encoded, &[cut], enc.body.len());
            prop_assert_eq!(r, Ok(Some(encoded.len())), "cut {}", cut);
            prop_assert_eq!(at, encoded.len(), "decided early at cut {}", cut);
            prop_assert_eq!(&out, &enc.body, "cut {}", cut);
            // Any strict prefix alone is incomplete.
            prop_assert_eq!(once(&encoded[..cut], usize::MAX).0, Ok(None));
        }
        Ok(())
    });
}

#[test]
fn body_limit_is_exact() {
    check(256, (encoding(), picks()), |(enc, picks)| {
        prop_assume!(!enc.body.is_empty());
        let encoded = enc.render();
        let cuts = cuts_of(encoded.len(), &picks);
        let (r, _, _) = incremental(&encoded, &cuts, enc.body.len() - 1);
        prop_assert_eq!(r, Err(ChunkedError::TooLarge));
        let (r, _, _) = incremental(&encoded, &cuts, enc.body.len());
        prop_assert_eq!(r, Ok(Some(encoded.len())));
        Ok(())
    });
}

/// Ways to break a valid encoding; each must be refused as invalid.
#[derive(Debug, Clone)]
enum Corruption {
    /// A chunk's size replaced by something without a leading hex digit.
    NoSizeDigit(&'static str),
    /// A control character (bare CR or LF included) inside a chunk's or
    /// the last chunk's extensions.
    CtlInExtension(u8, bool),
    /// A control character inside a trailer field.
    CtlInTrailer(u8),
    /// The size line ends in a bare LF.
    BareLfAfterSize,
    /// A character that is neither whitespace, `;` nor CRLF after a size.
    JunkAfterSize(u8),
    /// A chunk announced one byte longer or shorter than its data.
    WrongLength(bool),
    /// More than 16 size digits.
    TooManyDigits,
}

fn corruption() -> impl Strategy<Value = Corruption> {
    let ctl = prop_oneof![Just(b'\n'), Just(b'\r'), 0u8..9, 11u8..32, Just(0x7f)];
    prop_oneof![
        prop::sample::select(vec!["", "g", "-1", "+1", " ", ";x", "x1", "\t", " ;a=b"])
            .prop_map(Corruption::NoSizeDigit),
        (ctl.clone(), any::<bool>()).prop_map(|(c, last)| Corruption::CtlInExtension(c, last)),
        ctl.prop_map(Corruption::CtlInTrailer),
        Just(Corruption::BareLfAfterSize),
        prop::sample::select(b"gGxz-+=,:/\"".to_vec()).prop_map(Corruption::JunkAfterSize),
        any::<bool>().prop_map(Corruption::WrongLength),
        Just(Corruption::TooManyDigits),
    ]
}

/// Renders `enc` with `c` applied; `None` when `c` does not apply to it.
fn corrupt(enc: &Encoding, c: &Corruption) -> Option<Vec<u8>> {
    let mut enc = enc.clone();
    match *c {
        Corruption::CtlInTrailer(b) => {
            // A trailer with a bare CR right before its CRLF would be read
            // as "CR CR LF": still invalid, but keep the byte inside.
            let t = format!("X-T: a{}b", b as char);
            enc.trailers.push(t);
            return Some(enc.render());
        }
        Corruption::NoSizeDigit(s) => {
            // Shaped like a valid last chunk with its `0` missing, so that
            // only the digit rule refuses it.
            let mut v = format!("{s}{}\r\n", enc.last_ext).into_bytes();
            for t in &enc.trailers {
                v.extend_from_slice(t.as_bytes());
                v.extend_from_slice(b"\r\n");
            }
            v.extend_from_slice(b"\r\n");
            return Some(v);
        }
        Corruption::CtlInExtension(b, true) => {
            enc.last_ext = format!(";a{}b", b as char);
            return Some(enc.render());
        }
        _ => {}
    }
    let first = enc.chunks.first()?.clone();
    let mut v = Vec::new();
    match *c {
        Corruption::TooManyDigits => {
            v.extend_from_slice(b"00000000000000000");
            v.extend_from_slice(format!("{:x}", first.len).as_bytes());
        }
        _ => v.extend_from_slice(hex(first.len, first.zeros, first.upper).as_bytes()),
    }
    match *c {
        Corruption::CtlInExtension(b, _) => {
            v.extend_from_slice(format!(";a{}b", b as char).as_bytes());
            v.extend_from_slice(b"\r\n");
        }
        Corruption::BareLfAfterSize => v.push(b'\n'),
        Corruption::JunkAfterSize(b) => {
            v.push(b);
            v.extend_from_slice(b"\r\n");
        }
        Corruption::WrongLength(longer) => {
            v.clear();
            let n = if longer { first.len + 1 } else { first.len - 1 };
            v.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        }
        _ => {
            v.extend_from_slice(first.bws.as_bytes());
            v.extend_from_slice(first.ext.as_bytes());
            v.extend_from_slice(b"\r\n");
        }
    }
    // The first chunk's data and the rest, as encoded.
    let rendered = enc.render();
    let header_len =
        hex(first.len, first.zeros, first.upper).len() + first.bws.len() + first.ext.len() + 2;
    v.extend_from_slice(&rendered[header_len..]);
    Some(v)
}

#[test]
fn malformed_encodings_are_refused_over_any_split() {
    check(
        512,
        (encoding(), corruption(), picks()),
        |(enc, c, picks)| {
            let Some(bad) = corrupt(&enc, &c) else {
                return Ok(());
            };
            let max = usize::MAX;
            let (r, _) = once(&bad, max);
            prop_assert_eq!(
                &r,
                &Err(ChunkedError::Invalid),
                "{:?}: {:?}",
                c,
                String::from_utf8_lossy(&bad)
            );
            let cuts = cuts_of(bad.len(), &picks);
            let (r, _, _) = incremental(&bad, &cuts, max);
            prop_assert_eq!(r, Err(ChunkedError::Invalid), "cuts {:?}", cuts);
            Ok(())
        },
    );
}
