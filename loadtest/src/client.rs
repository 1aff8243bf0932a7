//! One client connection: builds requests into a reused buffer, writes them,
//! and parses responses with httparse. Pipelining up to `depth` requests.

use crate::workload::Op;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use std::io;

/// A keep-alive HTTP/1.1 connection to the server under test.
pub struct Conn {
    stream: TcpStream,
    out: Vec<u8>,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Conn {
    pub async fn connect(addr: std::net::SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| io::Error::other(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            stream,
            out: Vec::with_capacity(4096),
            buf: vec![0; 64 << 10],
            start: 0,
            end: 0,
        })
    }

    /// Appends one request to the pending output.
    pub fn push_request(&mut self, op: Op, table: &str, prefix: &str, key: u64, doc: &[u8]) {
        let o = &mut self.out;
        o.extend_from_slice(op.name().as_bytes());
        o.extend_from_slice(b" /entities/");
        o.extend_from_slice(table.as_bytes());
        o.push(b':');
        o.extend_from_slice(prefix.as_bytes());
        let mut num = itoa::Buffer::new();
        o.extend_from_slice(num.format(key).as_bytes());
        o.extend_from_slice(b" HTTP/1.1\r\nHost: themis\r\n");
        if op == Op::Put {
            o.extend_from_slice(b"Content-Type: application/json\r\nContent-Length: ");
            o.extend_from_slice(num.format(doc.len()).as_bytes());
            o.extend_from_slice(b"\r\n\r\n");
            o.extend_from_slice(doc);
        } else {
            o.extend_from_slice(b"\r\n");
        }
    }

    /// Writes everything pushed so far.
    pub async fn flush(&mut self) -> io::Result<()> {
        self.stream.write_all(&self.out).await?;
        self.out.clear();
        Ok(())
    }

    /// Reads one response and returns its status.
    pub async fn read_status(&mut self) -> io::Result<u16> {
        loop {
            if self.start < self.end {
                let mut headers = [httparse::EMPTY_HEADER; 16];
                let mut resp = httparse::Response::new(&mut headers);
                match resp.parse(&self.buf[self.start..self.end]) {
                    Ok(httparse::Status::Complete(n)) => {
                        let status = resp.code.unwrap_or(0);
                        let mut len = 0usize;
                        for h in resp.headers.iter() {
                            if h.name.eq_ignore_ascii_case("content-length") {
                                len = std::str::from_utf8(h.value)
                                    .ok()
                                    .and_then(|v| v.trim().parse().ok())
                                    .ok_or_else(|| io::Error::other("bad Content-Length"))?;
                            }
                        }
                        if self.end - self.start >= n + len {
                            self.start += n + len;
                            if self.start == self.end {
                                self.start = 0;
                                self.end = 0;
                            }
                            return Ok(status);
                        }
                        if n + len > self.buf.len() {
                            self.buf.resize(n + len, 0);
                        }
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(e) => return Err(io::Error::other(format!("bad response: {e}"))),
                }
            }
            if self.end == self.buf.len() {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
                if self.end == self.buf.len() {
                    let n = self.buf.len() * 2;
                    self.buf.resize(n, 0);
                }
            }
            let n = self.stream.read(&mut self.buf[self.end..]).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed the connection",
                ));
            }
            self.end += n;
        }
    }
}
