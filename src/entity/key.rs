//! Entity keys: `table:pk`.
//!
//! The table is everything before the first `:`, the primary key everything
//! after it (it may itself contain `:`). Both parts are non-empty, the whole
//! key is at most [`MAX_KEY_LEN`] bytes, and no control character appears,
//! so a key is always printable, loggable and safe as a RocksDB key.

use crate::error::ApiError;

/// Longest accepted key in bytes.
pub const MAX_KEY_LEN: usize = 1024;

/// Checks `key` and returns its `(table, pk)` parts.
pub fn parse_key(key: &str) -> Result<(&str, &str), ApiError> {
    if key.len() > MAX_KEY_LEN {
        return Err(ApiError::InvalidKey(format!(
            "key is {} bytes long; the limit is {MAX_KEY_LEN}",
            key.len()
        )));
    }
    if key.chars().any(char::is_control) {
        return Err(ApiError::InvalidKey(
            "key contains a control character".into(),
        ));
    }
    let (table, pk) = key
        .split_once(':')
        .ok_or_else(|| ApiError::InvalidKey(format!("{key:?} is not of the form table:pk")))?;
    if table.is_empty() {
        return Err(ApiError::InvalidKey(
            "the table part of the key is empty".into(),
        ));
    }
    if pk.is_empty() {
        return Err(ApiError::InvalidKey(
            "the pk part of the key is empty".into(),
        ));
    }
    Ok((table, pk))
}

/// Decodes a percent-encoded path segment into a key string.
pub fn decode_path_key(raw: &str) -> Result<std::borrow::Cow<'_, str>, ApiError> {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| ApiError::InvalidKey("key is not valid UTF-8 after percent-decoding".into()))
}

/// Decodes one query-string name or value (`+` is a space, then
/// percent-decoding; the result must be UTF-8).
pub fn decode_query_value(v: &str) -> Result<String, ApiError> {
    let plus = v.replace('+', " ");
    percent_encoding::percent_decode_str(&plus)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ApiError::BadRequest("query parameter is not valid UTF-8".into()))
}

/// The key range of `table`'s entities: `[table:, table;)` (`;` is the
/// byte after `:`, so the range holds exactly the keys `table:*`).
pub fn table_range(table: &str) -> (Vec<u8>, Vec<u8>) {
    (
        format!("{table}:").into_bytes(),
        format!("{table};").into_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_keys() {
        assert_eq!(parse_key("users:alice").unwrap(), ("users", "alice"));
        assert_eq!(parse_key("t:a:b").unwrap(), ("t", "a:b"));
        assert_eq!(parse_key("t:ü ñ").unwrap(), ("t", "ü ñ"));
    }

    #[test]
    fn invalid_keys() {
        for k in ["", "users", ":x", "users:", "a:\u{1}", "a:b\n"] {
            assert!(parse_key(k).is_err(), "{k:?}");
        }
        assert!(parse_key(&format!("t:{}", "x".repeat(MAX_KEY_LEN))).is_err());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(decode_path_key("users%3Aal%20ice").unwrap(), "users:al ice");
        assert!(decode_path_key("a%FF").is_err());
    }
}
