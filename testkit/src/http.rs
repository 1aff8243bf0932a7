//! A blocking HTTP/1.1 client over plain TCP, for tests and bench tools:
//! keep-alive and pipelining (responses to requests written back to back are
//! read in order from one buffer), `Content-Length` and chunked bodies.
//! Hand-parsed and std-only on purpose: the code under test has its own HTTP
//! layer, and the client must not share its parser or its dependencies.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::ops::Range;

/// A parsed response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    /// The body as JSON; panics (showing the body) when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A keep-alive HTTP/1.1 connection.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    /// Connects with Nagle off and no read timeout (set one on `stream`
    /// where a hang must fail instead).
    pub fn connect(addr: SocketAddr) -> io::Result<Client> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            buf: Vec::new(),
        })
    }

    /// Writes `bytes` as they are (a request, several pipelined, or a
    /// fragment); panics when the write fails.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("write: {e}"));
    }

    /// Sends one request (a body is sent as JSON) and reads its response.
    pub fn request(&mut self, method: &str, path: &str, body: Option<&str>) -> Resp {
        self.request_with(method, path, &[], body)
    }

    /// [`Client::request`] with extra headers (an API key, another `Host`).
    pub fn request_with(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Resp {
        let mut req = format!("{method} {path} HTTP/1.1\r\n");
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            req.push_str("Host: test\r\n");
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(b) = body {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        req.push_str("\r\n");
        if let Some(b) = body {
            req.push_str(b);
        }
        self.send_raw(req.as_bytes());
        self.read_response(method == "HEAD")
    }

    /// `request`, returning the status and the body as JSON.
    pub fn json(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let r = self.request(method, path, body);
        (r.status, r.json())
    }

    /// Reads one response (`head`: it answers a HEAD request, so it has no
    /// body); `None` when the server closed the connection first. Panics on
    /// other read errors (a read timeout included) and malformed responses.
    pub fn try_read_response(&mut self, head: bool) -> Option<Resp> {
        loop {
            match parse_response(&self.buf, head) {
                Ok(Some((resp, used))) => {
                    self.buf.drain(..used);
                    return Some(resp);
                }
                Ok(None) => {}
                Err(e) => panic!("{e}: {:?}", String::from_utf8_lossy(&self.buf)),
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Reads one response; panics when the server closed the connection.
    pub fn read_response(&mut self, head: bool) -> Resp {
        self.try_read_response(head)
            .expect("server closed the connection")
    }
}

/// The response at the start of `buf` and the bytes it spans, or `None`
/// while it is incomplete.
fn parse_response(buf: &[u8], head: bool) -> io::Result<Option<(Resp, usize)>> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&buf[..end]);
    let mut lines = text.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.strip_prefix("HTTP/1."))
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("bad status line"))?;
    let mut headers = Vec::new();
    for line in lines {
        let (k, v) = line.split_once(':').ok_or_else(|| invalid("bad header"))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let resp = |body| Resp {
        status,
        headers: headers.clone(),
        body,
    };
    let start = end + 4;
    let has = |name: &str, value: &str| {
        headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case(name) && v.eq_ignore_ascii_case(value))
    };
    if head || (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(Some((resp(Vec::new()), start)));
    }
    if has("transfer-encoding", "chunked") {
        let mut body = Vec::new();
        let mut at = start;
        while let Some((data, used)) = parse_chunk(&buf[at..])? {
            at += used;
            if data.is_empty() {
                return Ok(Some((resp(body), at)));
            }
            body.extend_from_slice(&buf[at - used..][data]);
        }
        return Ok(None);
    }
    let len: usize = match headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        Some((_, v)) => v.parse().map_err(|_| invalid("bad Content-Length"))?,
        None => 0,
    };
    if buf.len() < start + len {
        return Ok(None);
    }
    Ok(Some((resp(buf[start..start + len].to_vec()), start + len)))
}

/// The chunk at the start of `buf` (chunked transfer coding): the range of
/// its data and the bytes it spans, or `None` while it is incomplete. A
/// chunk with empty data is the last one (trailers are not supported).
pub fn parse_chunk(buf: &[u8]) -> io::Result<Option<(Range<usize>, usize)>> {
    let Some(p) = find(buf, b"\r\n") else {
        return Ok(None);
    };
    let size = std::str::from_utf8(&buf[..p]).map_err(|_| invalid("bad chunk size"))?;
    let size = size.split(';').next().unwrap_or_default().trim();
    let len = usize::from_str_radix(size, 16).map_err(|_| invalid("bad chunk size"))?;
    let end = p + 2 + len;
    if buf.len() < end + 2 {
        return Ok(None);
    }
    if &buf[end..end + 2] != b"\r\n" {
        return Err(invalid("chunk not followed by CRLF"));
    }
    Ok(Some((p + 2..end, end + 2)))
}

/// Where `needle` first occurs in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_pipelined_and_incomplete() {
        let two = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\nhiHTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
        let (r, used) = parse_response(two, false).unwrap().unwrap();
        assert_eq!(
            (r.status, r.body.as_slice(), r.header("x-a")),
            (200, &b"hi"[..], Some("b"))
        );
        let (r, rest) = parse_response(&two[used..], false).unwrap().unwrap();
        assert_eq!((r.status, rest), (404, two.len() - used));
        assert!(parse_response(&two[..used - 1], false).unwrap().is_none());
        let (r, _) = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert!(r.body.is_empty());
        assert!(parse_response(b"SSH-2.0\r\n\r\n", false).is_err());
    }

    #[test]
    fn chunked_bodies() {
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\na;x=1\r\n0123456789\r\n0\r\n\r\nrest";
        let (resp, used) = parse_response(r, false).unwrap().unwrap();
        assert_eq!(resp.body, b"abc0123456789");
        assert_eq!(&r[used..], b"rest");
        for cut in 0..used {
            assert!(parse_response(&r[..cut], false).unwrap().is_none(), "{cut}");
        }
        assert!(parse_chunk(b"zz\r\n").is_err());
        assert!(parse_chunk(b"1\r\nabc").is_err());
    }
}
