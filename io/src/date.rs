//! The `Date` header, formatted once per second per core.
//!
//! Formatting an HTTP date costs more than the rest of a small response's
//! headers; each core keeps the current value and refreshes it when the
//! second changes, so a request only compares two integers.

use std::cell::{Cell, RefCell};
use std::time::{SystemTime, UNIX_EPOCH};

thread_local! {
    static CACHED: RefCell<[u8; 29]> = const { RefCell::new([b' '; 29]) };
    static SECOND: Cell<u64> = const { Cell::new(0) };
}

/// Calls `f` with the current `Date` header value (29 bytes, RFC 7231).
pub fn with_date<R>(f: impl FnOnce(&[u8]) -> R) -> R {
    let now = SystemTime::now();
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if SECOND.with(|s| s.get()) != secs {
        let text = httpdate::fmt_http_date(now);
        CACHED.with(|c| {
            let mut c = c.borrow_mut();
            let n = text.len().min(29);
            c[..n].copy_from_slice(&text.as_bytes()[..n]);
        });
        SECOND.with(|s| s.set(secs));
    }
    CACHED.with(|c| f(&c.borrow()[..]))
}

#[cfg(test)]
mod tests {
    #[test]
    fn date_is_rfc7231() {
        super::with_date(|d| {
            let s = std::str::from_utf8(d).unwrap();
            assert!(s.ends_with(" GMT"), "{s}");
            assert_eq!(s.len(), 29);
        });
    }
}
