//! Decoding of `Transfer-Encoding: chunked` request bodies (RFC 9112 §7.1).
//!
//! The decoder is incremental: a body arrives over many reads, and each
//! call resumes where the previous one stopped ([`ChunkedState`]) instead of
//! decoding from the start again, so a body sent as many small chunks costs
//! linear, not quadratic, time. Only a unit that is still incomplete (a
//! size line, a chunk's data, a trailer line) is looked at again, and those
//! are bounded. The decoded data is copied into one contiguous buffer, so a
//! handler always sees a plain `&[u8]` body.
//!
//! The grammar is applied strictly: a chunk size has at least one hex
//! digit; chunk extensions and trailer fields may not contain control
//! characters (tab excepted), and every line ends in CRLF (a bare CR or LF
//! is an error).

/// Why a chunked body was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum ChunkedError {
    /// The encoding is malformed.
    Invalid,
    /// The decoded body would exceed the size limit.
    TooLarge,
}

/// Longest chunk-size line (size, extensions, CRLF).
const MAX_SIZE_LINE: usize = 4096;
/// Most bytes of trailer section.
const MAX_TRAILERS: usize = 16 << 10;

/// Where a decode stopped; kept by the connection between reads of one
/// request and reset for the next.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ChunkedState {
    /// Input bytes fully decoded so far (from the start of the body).
    pos: usize,
    phase: Phase,
    /// Bytes of trailer section read so far.
    trailers: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// At a chunk-size line.
    #[default]
    Size,
    /// At the data of a chunk of this size (then CRLF).
    Data(usize),
    /// In the trailer section (after the last chunk).
    Trailers,
}

impl ChunkedState {
    /// Starts over, for the next request.
    pub fn reset(&mut self) {
        *self = ChunkedState::default();
    }
}

/// Goes on decoding the chunked body at the start of `input` into `out`.
///
/// `input` starts at the body's first byte and holds at least what the
/// previous call saw; `state` and `out` carry over from that call (both
/// empty for a new body). Returns `Ok(Some(consumed))` with the number of
/// input bytes the whole body (trailers included) took, `Ok(None)` when more
/// input is needed.
pub fn decode(
    input: &[u8],
    out: &mut Vec<u8>,
    state: &mut ChunkedState,
    max: usize,
) -> Result<Option<usize>, ChunkedError> {
    loop {
        let rest = &input[state.pos..];
        match state.phase {
            Phase::Size => {
                let Some((used, size)) = size_line(rest)? else {
                    return Ok(None);
                };
                if size == 0 {
                    state.pos += used;
                    state.phase = Phase::Trailers;
                    continue;
                }
                if out.len().saturating_add(size) > max {
                    return Err(ChunkedError::TooLarge);
                }
                state.pos += used;
                state.phase = Phase::Data(size);
            }
            Phase::Data(size) => {
                // `size + 2` could overflow when `max` is `usize::MAX`.
                if rest.len() < size || rest.len() - size < 2 {
                    return Ok(None);
                }
                if &rest[size..size + 2] != b"\r\n" {
                    return Err(ChunkedError::Invalid);
                }
                out.extend_from_slice(&rest[..size]);
                state.pos += size + 2;
                state.phase = Phase::Size;
            }
            Phase::Trailers => {
                let Some(len) = line(rest, state.trailers, MAX_TRAILERS)? else {
                    return Ok(None);
                };
                state.pos += len;
                if len == 2 {
                    return Ok(Some(state.pos));
                }
                state.trailers += len;
            }
        }
    }
}

/// A complete chunk-size line at the start of `rest`: its length with the
/// CRLF, and the size. `None` while incomplete.
fn size_line(rest: &[u8]) -> Result<Option<(usize, usize)>, ChunkedError> {
    let mut size: usize = 0;
    let mut i = 0;
    while i < rest.len() {
        let d = match rest[i] {
            b @ b'0'..=b'9' => b - b'0',
            b @ b'a'..=b'f' => b - b'a' + 10,
            b @ b'A'..=b'F' => b - b'A' + 10,
            _ => break,
        };
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(usize::from(d)))
            .ok_or(ChunkedError::TooLarge)?;
        i += 1;
    }
    if i > 16 {
        return Err(ChunkedError::Invalid);
    }
    if i == rest.len() {
        return Ok(None);
    }
    if i == 0 {
        return Err(ChunkedError::Invalid);
    }
    // Anything after the digits is whitespace and extensions up to CRLF.
    if !matches!(rest[i], b'\r' | b';' | b' ' | b'\t') {
        return Err(ChunkedError::Invalid);
    }
    match line(&rest[i..], i, MAX_SIZE_LINE)? {
        Some(len) => Ok(Some((i + len, size))),
        None => Ok(None),
    }
}

/// The length (CRLF included) of the complete line at the start of
/// `rest`, refusing control characters other than tab and a CR or LF that
/// is not part of the final CRLF. `before` bytes of the same unit came
/// earlier, and the unit may not pass `limit` bytes. `None` while
/// incomplete.
fn line(rest: &[u8], before: usize, limit: usize) -> Result<Option<usize>, ChunkedError> {
    for (i, &b) in rest.iter().enumerate() {
        if before + i > limit {
            return Err(ChunkedError::Invalid);
        }
        match b {
            b'\r' => {
                return match rest.get(i + 1) {
                    None => Ok(None),
                    Some(b'\n') => Ok(Some(i + 2)),
                    Some(_) => Err(ChunkedError::Invalid),
                }
            }
            b'\t' => {}
            0..=0x1f | 0x7f => return Err(ChunkedError::Invalid),
            _ => {}
        }
    }
    if before + rest.len() > limit {
        return Err(ChunkedError::Invalid);
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn once(input: &[u8], out: &mut Vec<u8>, max: usize) -> Result<Option<usize>, ChunkedError> {
        out.clear();
        decode(input, out, &mut ChunkedState::default(), max)
    }

    #[test]
    fn decodes_chunks_and_trailers() {
        let mut out = Vec::new();
        let body = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        assert_eq!(once(body, &mut out, 100), Ok(Some(body.len() - 4)));
        assert_eq!(out, b"Wikipedia");
    }

    #[test]
    fn partial_and_errors() {
        let mut out = Vec::new();
        assert_eq!(once(b"4\r\nWi", &mut out, 100), Ok(None));
        assert_eq!(once(b"4\r\nWiki\r\n0\r\n", &mut out, 100), Ok(None));
        assert_eq!(once(b"zz\r\n", &mut out, 100), Err(ChunkedError::Invalid));
        assert_eq!(
            once(b"4\r\nWikiXX", &mut out, 100),
            Err(ChunkedError::Invalid)
        );
        assert_eq!(once(b"ff\r\n", &mut out, 10), Err(ChunkedError::TooLarge));
    }

    #[test]
    fn strict_grammar() {
        let mut out = Vec::new();
        for bad in [
            &b"\r\nabc\r\n0\r\n\r\n"[..],           // no size digit
            b";ext\r\n0\r\n\r\n",                   // extension without a size
            b"3\nabc\r\n0\r\n\r\n",                 // bare LF after the size
            b"3;a=\x01\r\nabc\r\n0\r\n\r\n",        // control character in an extension
            b"3;a\rb\r\nabc\r\n0\r\n\r\n",          // bare CR in an extension
            b"3\r\nabc\r\n0\r\nX: a\x00b\r\n\r\n",  // control character in a trailer
            b"3\r\nabc\r\n0\r\nX: 1\n\r\n",         // bare LF in a trailer
            b"3x\r\nabc\r\n0\r\n\r\n",              // junk after the size
            b"00000000000000001\r\na\r\n0\r\n\r\n", // 17 digits
        ] {
            assert_eq!(
                once(bad, &mut out, 100),
                Err(ChunkedError::Invalid),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let ok = b"3 ;a=\"b\"\t\r\nabc\r\n0\r\nX: a\tb\r\n\r\n";
        assert_eq!(once(ok, &mut out, 100), Ok(Some(ok.len())));
        assert_eq!(out, b"abc");
    }

    #[test]
    fn any_split_point_gives_same_result() {
        let body = b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nT: 1\r\n\r\n";
        for cut in 0..body.len() {
            // Fresh: incomplete.
            let mut out = Vec::new();
            assert_eq!(once(&body[..cut], &mut out, 100), Ok(None), "cut {cut}");
            // Resumed after the cut: the same body.
            let mut state = ChunkedState::default();
            out.clear();
            assert_eq!(decode(&body[..cut], &mut out, &mut state, 100), Ok(None));
            assert_eq!(
                decode(body, &mut out, &mut state, 100),
                Ok(Some(body.len()))
            );
            assert_eq!(out, b"abcde", "cut {cut}");
        }
    }

    #[test]
    fn resuming_is_linear() {
        // 100 000 one-byte chunks fed a few bytes at a time, resuming each
        // time: every chunk is decoded once, whatever the cut.
        let mut body = Vec::new();
        for _ in 0..100_000 {
            body.extend_from_slice(b"1\r\nx\r\n");
        }
        body.extend_from_slice(b"0\r\n\r\n");
        let (mut out, mut state) = (Vec::new(), ChunkedState::default());
        let mut end = 0;
        let result = loop {
            end = (end + 7).min(body.len());
            match decode(&body[..end], &mut out, &mut state, 1 << 20) {
                Ok(None) => assert!(end < body.len()),
                other => break other,
            }
        };
        assert_eq!(result, Ok(Some(body.len())));
        assert_eq!(out.len(), 100_000);
    }
}
