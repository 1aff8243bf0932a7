//! A borrowed view of one parsed HTTP/1.1 request.
//!
//! Nothing is copied: method, path, query, headers and body all point into
//! the connection's read buffer (or, for a chunked body, its decode buffer),
//! and the peer's identity is the one value the connection took from its
//! transport when it started.

use crate::transport::PeerIdentity;

/// The request methods the server distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Put,
    Post,
    Delete,
    Patch,
    Options,
    Other,
}

impl Method {
    pub fn parse(s: &str) -> Method {
        match s {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "PUT" => Method::Put,
            "POST" => Method::Post,
            "DELETE" => Method::Delete,
            "PATCH" => Method::Patch,
            "OPTIONS" => Method::Options,
            _ => Method::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Put => "PUT",
            Method::Post => "POST",
            Method::Delete => "DELETE",
            Method::Patch => "PATCH",
            Method::Options => "OPTIONS",
            Method::Other => "OTHER",
        }
    }
}

/// One request, borrowed from the connection's buffers.
#[derive(Debug)]
pub struct Request<'a> {
    pub method: Method,
    /// The path without the query string, still percent-encoded.
    pub path: &'a str,
    /// The raw query string after `?` (empty when there is none).
    pub query: &'a str,
    pub headers: &'a [httparse::Header<'a>],
    pub body: &'a [u8],
    /// Who sent the request: the connection's peer, the same for every
    /// request on it.
    pub peer: &'a PeerIdentity,
}

impl<'a> Request<'a> {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// The peer's identity (address, verified client certificate subject).
    pub fn peer(&self) -> &'a PeerIdentity {
        self.peer
    }

    /// Iterates `key=value` pairs of the query string (still percent-encoded).
    pub fn query_pairs(&self) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').unwrap_or((p, "")))
    }
}

/// Splits a request target into path and query.
pub fn split_target(target: &str) -> (&str, &str) {
    match target.split_once('?') {
        Some((p, q)) => (p, q),
        None => (target, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_split() {
        assert_eq!(split_target("/a/b?x=1&y"), ("/a/b", "x=1&y"));
        assert_eq!(split_target("/a"), ("/a", ""));
        assert_eq!(split_target("/a?"), ("/a", ""));
    }

    #[test]
    fn query_pairs() {
        let r = Request {
            method: Method::Get,
            path: "/",
            query: "a=1&&b&c=",
            headers: &[],
            body: b"",
            peer: &PeerIdentity::default(),
        };
        let v: Vec<_> = r.query_pairs().collect();
        assert_eq!(v, vec![("a", "1"), ("b", ""), ("c", "")]);
    }
}
