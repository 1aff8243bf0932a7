//! Decoding of `Transfer-Encoding: chunked` request bodies.
//!
//! Chunk sizes are parsed by `httparse::parse_chunk_size`; this module only
//! walks the chunks and copies their data into one contiguous buffer, so a
//! handler always sees a plain `&[u8]` body.

/// Why a chunked body was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum ChunkedError {
    /// The encoding is malformed.
    Invalid,
    /// The decoded body would exceed the size limit.
    TooLarge,
}

/// Decodes the chunked body at the start of `input` into `out`.
///
/// Returns `Ok(Some(consumed))` with the number of input bytes the whole
/// body (trailers included) took, `Ok(None)` when more input is needed.
/// `out` is cleared first and holds the decoded body on success.
pub fn decode(input: &[u8], out: &mut Vec<u8>, max: usize) -> Result<Option<usize>, ChunkedError> {
    out.clear();
    let mut pos = 0;
    loop {
        let size = match httparse::parse_chunk_size(&input[pos..]) {
            Ok(httparse::Status::Complete((used, size))) => {
                pos += used;
                size
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(ChunkedError::Invalid),
        };
        if size == 0 {
            // Trailer section: header lines until an empty line.
            loop {
                let rest = &input[pos..];
                match rest.windows(2).position(|w| w == b"\r\n") {
                    None => return Ok(None),
                    Some(0) => return Ok(Some(pos + 2)),
                    Some(n) => pos += n + 2,
                }
            }
        }
        let size = usize::try_from(size).map_err(|_| ChunkedError::TooLarge)?;
        if out.len().saturating_add(size) > max {
            return Err(ChunkedError::TooLarge);
        }
        if input.len() < pos + size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&input[pos..pos + size]);
        pos += size;
        if &input[pos..pos + 2] != b"\r\n" {
            return Err(ChunkedError::Invalid);
        }
        pos += 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_chunks_and_trailers() {
        let mut out = Vec::new();
        let body = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        assert_eq!(decode(body, &mut out, 100), Ok(Some(body.len() - 4)));
        assert_eq!(out, b"Wikipedia");
    }

    #[test]
    fn partial_and_errors() {
        let mut out = Vec::new();
        assert_eq!(decode(b"4\r\nWi", &mut out, 100), Ok(None));
        assert_eq!(decode(b"4\r\nWiki\r\n0\r\n", &mut out, 100), Ok(None));
        assert_eq!(decode(b"zz\r\n", &mut out, 100), Err(ChunkedError::Invalid));
        assert_eq!(
            decode(b"4\r\nWikiXX", &mut out, 100),
            Err(ChunkedError::Invalid)
        );
        assert_eq!(decode(b"ff\r\n", &mut out, 10), Err(ChunkedError::TooLarge));
    }

    #[test]
    fn any_split_point_gives_same_result() {
        let body = b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let mut out = Vec::new();
        for cut in 0..body.len() {
            assert_eq!(decode(&body[..cut], &mut out, 100), Ok(None), "cut {cut}");
        }
        assert_eq!(decode(body, &mut out, 100), Ok(Some(body.len())));
        assert_eq!(out, b"abcde");
    }
}
