//! Writing one response into the connection's output buffer.
//!
//! The buffer is reused for every response on the connection and flushed
//! once per batch of pipelined requests, so writing a response is a few
//! `memcpy`s: no allocation, no syscall.

/// The standard reason phrase of `status` (RFC 9110 and the IANA status
/// code registry). A code without one gets its class's generic phrase, so
/// the status line never says `Unknown`.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        102 => "Processing",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        207 => "Multi-Status",
        208 => "Already Reported",
        226 => "IM Used",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        305 => "Use Proxy",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        423 => "Locked",
        424 => "Failed Dependency",
        425 => "Too Early",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        506 => "Variant Also Negotiates",
        507 => "Insufficient Storage",
        508 => "Loop Detected",
        511 => "Network Authentication Required",
        _ => match status / 100 {
            1 => "Informational",
            2 => "Success",
            3 => "Redirection",
            4 => "Client Error",
            _ => "Server Error",
        },
    }
}

/// One response being written.
pub struct Response<'a> {
    out: &'a mut Vec<u8>,
    keep_alive: bool,
    head: bool,
    status: u16,
    /// The request was HTTP/1.0: a kept-alive connection must say so, and a
    /// streamed body cannot be chunked (1.0 has no chunked coding: it is
    /// delimited by closing the connection).
    http10: bool,
}

impl<'a> Response<'a> {
    /// `head` suppresses the body (HEAD requests); `keep_alive` decides the
    /// `Connection` header.
    pub fn new(out: &'a mut Vec<u8>, keep_alive: bool, head: bool) -> Self {
        Response {
            out,
            keep_alive,
            head,
            status: 0,
            http10: false,
        }
    }

    /// Marks the response as the answer to an HTTP/1.0 request.
    pub(crate) fn for_http10(mut self) -> Self {
        self.http10 = true;
        self
    }

    /// Whether the request was HTTP/1.0 (a stream is then not chunked).
    pub fn is_http10(&self) -> bool {
        self.http10
    }

    /// Whether the connection stays open after this response.
    pub fn keep_alive(&self) -> bool {
        self.keep_alive
    }

    /// Makes this the last response on the connection.
    pub fn close_connection(&mut self) {
        self.keep_alive = false;
    }

    /// The status written, or 0 when nothing was written yet.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Writes the status line and headers for a body of `len` bytes.
    /// Call [`Response::body`] afterwards with exactly `len` bytes in total.
    pub fn start(&mut self, status: u16, content_type: &str, len: usize, extra: &[(&str, &str)]) {
        self.head(status, content_type, Some(len), extra);
    }

    /// Writes the head of a streaming response: chunked (HTTP/1.0: no
    /// coding, ended by the close), no length, and the last response on the
    /// connection (the handler's [`Handler::stream`](crate::Handler::stream)
    /// then writes the body).
    pub fn start_stream(&mut self, status: u16, content_type: &str, extra: &[(&str, &str)]) {
        self.keep_alive = false;
        self.head(status, content_type, None, extra);
    }

    /// Status line and headers; `len: None` means a chunked body.
    fn head(
        &mut self,
        status: u16,
        content_type: &str,
        len: Option<usize>,
        extra: &[(&str, &str)],
    ) {
        debug_assert_eq!(self.status, 0, "a response is written once");
        self.status = status;
        let out = &mut *self.out;
        out.extend_from_slice(b"HTTP/1.1 ");
        let mut num = itoa::Buffer::new();
        out.extend_from_slice(num.format(status).as_bytes());
        out.push(b' ');
        out.extend_from_slice(reason(status).as_bytes());
        out.extend_from_slice(b"\r\nServer: themis\r\nDate: ");
        crate::date::with_date(|d| out.extend_from_slice(d));
        out.extend_from_slice(b"\r\nContent-Type: ");
        out.extend_from_slice(content_type.as_bytes());
        match len {
            // RFC 9110 §8.6: no Content-Length on a 204 or a 304 (they
            // never have a body).
            Some(_) if status == 204 || status == 304 => {}
            Some(len) => {
                out.extend_from_slice(b"\r\nContent-Length: ");
                out.extend_from_slice(num.format(len).as_bytes());
            }
            None if self.http10 => {}
            None => out.extend_from_slice(b"\r\nTransfer-Encoding: chunked"),
        }
        for (name, value) in extra {
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
        }
        if !self.keep_alive {
            out.extend_from_slice(b"\r\nConnection: close");
        } else if self.http10 {
            out.extend_from_slice(b"\r\nConnection: keep-alive");
        }
        out.extend_from_slice(b"\r\n\r\n");
    }

    /// Appends body bytes (dropped for HEAD requests, and for 204 and 304,
    /// which never have a body).
    pub fn body(&mut self, bytes: &[u8]) {
        if !self.head && self.status != 204 && self.status != 304 {
            self.out.extend_from_slice(bytes);
        }
    }

    /// A complete JSON response.
    pub fn json(&mut self, status: u16, body: &[u8]) {
        self.start(status, "application/json", body.len(), &[]);
        self.body(body);
    }

    /// A complete JSON response with extra headers.
    pub fn json_with(&mut self, status: u16, body: &[u8], extra: &[(&str, &str)]) {
        self.start(status, "application/json", body.len(), extra);
        self.body(body);
    }

    /// A complete response of any content type.
    pub fn send(&mut self, status: u16, content_type: &str, body: &[u8]) {
        self.start(status, content_type, body.len(), &[]);
        self.body(body);
    }
}

/// A response's output buffer and settings, lent to another core so that
/// the core holding the answer writes the response, head and body,
/// straight into the connection's buffer ([`Response::lend`],
/// [`Response::restore`]).
///
/// Why: a forwarded request's answer used to be built into a buffer of
/// its own on the owner and then copied into the connection's output by
/// the core that received the request. Moving the buffer there and back
/// saves that copy and that allocation.
///
/// When answers of earlier pipelined requests already wait in the
/// connection's buffer, those must never leave it (a lent buffer may not
/// come back: its caller can give up first), so a spare buffer is lent
/// instead and its bytes are appended on return (one copy, as before).
pub struct LentOutput {
    out: Vec<u8>,
    keep_alive: bool,
    head: bool,
    http10: bool,
    status: u16,
    /// `out` is the connection's own buffer (else a spare, copied back).
    moved: bool,
}

impl LentOutput {
    /// Writes the response into the lent buffer, on whichever core holds
    /// it, exactly as the connection's own [`Response`] would.
    pub fn write<R>(&mut self, f: impl FnOnce(&mut Response<'_>) -> R) -> R {
        let mut resp = Response {
            out: &mut self.out,
            keep_alive: self.keep_alive,
            head: self.head,
            status: self.status,
            http10: self.http10,
        };
        let r = f(&mut resp);
        self.status = resp.status;
        self.keep_alive = resp.keep_alive;
        r
    }

    /// The status written, or 0 when nothing was written yet.
    pub fn status(&self) -> u16 {
        self.status
    }
}

impl Response<'_> {
    /// Lends this response's output buffer (see [`LentOutput`]); `spare`,
    /// an emptied buffer, takes its place meanwhile, or is lent instead
    /// when earlier answers wait in the buffer. Call before writing
    /// anything, and write nothing to this response until
    /// [`Response::restore`].
    pub fn lend(&mut self, spare: Vec<u8>) -> LentOutput {
        debug_assert_eq!(self.status, 0, "a response is written once");
        let moved = self.out.is_empty();
        let out = if moved {
            std::mem::replace(self.out, spare)
        } else {
            spare
        };
        LentOutput {
            out,
            keep_alive: self.keep_alive,
            head: self.head,
            http10: self.http10,
            status: 0,
            moved,
        }
    }

    /// Takes back a lent buffer with the response written into it. Returns
    /// an emptied buffer to keep for the next [`Response::lend`].
    pub fn restore(&mut self, lent: LentOutput) -> Vec<u8> {
        self.status = lent.status;
        self.keep_alive = lent.keep_alive;
        let mut spare = if lent.moved {
            // The buffer in place is the spare lent with it: nothing was
            // written to this response meanwhile.
            std::mem::replace(self.out, lent.out)
        } else {
            self.out.extend_from_slice(&lent.out);
            lent.out
        };
        spare.clear();
        spare
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_headers_and_body() {
        let mut buf = Vec::new();
        let mut r = Response::new(&mut buf, false, false);
        r.json_with(405, b"{}", &[("Allow", "GET, PUT")]);
        let s = String::from_utf8(buf).unwrap();
        assert!(s.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
        assert!(s.contains("\r\nContent-Length: 2\r\n"));
        assert!(s.contains("\r\nAllow: GET, PUT\r\n"));
        assert!(s.contains("\r\nConnection: close\r\n"));
        assert!(s.ends_with("\r\n\r\n{}"));
    }

    #[test]
    fn a_lent_buffer_comes_back_with_the_response_in_it() {
        let mut buf = Vec::with_capacity(256);
        let address = buf.as_ptr();
        let mut r = Response::new(&mut buf, true, false);
        let mut lent = r.lend(Vec::new());
        // Written elsewhere, into the connection's own buffer.
        std::thread::spawn(move || {
            lent.write(|resp| resp.json(200, b"{}"));
            lent
        })
        .join()
        .map(|lent| {
            let spare = r.restore(lent);
            assert_eq!(spare.capacity(), 0);
            assert_eq!(r.status(), 200);
        })
        .unwrap();
        assert_eq!(buf.as_ptr(), address);
        let s = String::from_utf8(buf).unwrap();
        assert!(s.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(s.ends_with("\r\n\r\n{}"));
    }

    #[test]
    fn a_pipelined_answer_never_leaves_the_buffer() {
        let mut buf = b"earlier answer".to_vec();
        let mut r = Response::new(&mut buf, true, true);
        let mut lent = r.lend(Vec::with_capacity(128));
        lent.write(|resp| resp.json(404, b"{}"));
        assert_eq!(lent.status(), 404);
        let spare = r.restore(lent);
        assert!(spare.is_empty() && spare.capacity() >= 128);
        let s = String::from_utf8(buf).unwrap();
        assert!(s.starts_with("earlier answerHTTP/1.1 404 Not Found\r\n"));
        // A HEAD response keeps its length and drops its body.
        assert!(s.contains("Content-Length: 2\r\n") && s.ends_with("\r\n\r\n"));
    }

    #[test]
    fn every_status_has_a_phrase() {
        assert_eq!(reason(202), "Accepted");
        assert_eq!(reason(408), "Request Timeout");
        assert_eq!(reason(413), "Content Too Large");
        assert_eq!(reason(499), "Client Error");
        for status in 100..600 {
            assert_ne!(reason(status), "Unknown");
        }
    }

    #[test]
    fn no_content_has_no_length() {
        let mut buf = Vec::new();
        let mut r = Response::new(&mut buf, true, false);
        r.send(204, "text/plain", b"");
        let s = String::from_utf8(buf).unwrap();
        assert!(s.starts_with("HTTP/1.1 204 No Content\r\n"), "{s}");
        assert!(!s.contains("Content-Length"), "{s}");
        assert!(s.ends_with("\r\n\r\n"));
    }

    #[test]
    fn head_has_no_body() {
        let mut buf = Vec::new();
        let mut r = Response::new(&mut buf, true, true);
        r.json(200, b"{\"a\":1}");
        let s = String::from_utf8(buf).unwrap();
        assert!(s.contains("Content-Length: 7\r\n"));
        assert!(s.ends_with("\r\n\r\n"));
    }
}
