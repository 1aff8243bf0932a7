//! A Server-Sent Events reader over a raw socket (chunked decoding
//! included), for `/changefeed/stream`: the integration tests check its
//! framing block by block, the CDC bench times the events it delivers.

use crate::http::{find, parse_chunk};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// One SSE message block.
#[derive(Debug, Default, Clone)]
pub struct Block {
    pub id: Option<u64>,
    pub event: Option<String>,
    pub data: Option<String>,
    pub comments: Vec<String>,
    pub retry: Option<u64>,
}

/// An open `GET /changefeed/stream`.
pub struct Sse {
    stream: TcpStream,
    raw: Vec<u8>,
    text: String,
    /// The response head (status line and headers) once it arrived.
    pub head: Option<String>,
    ended: bool,
}

impl Sse {
    /// Sends `GET /changefeed/stream?{query}` (with `Last-Event-ID` if
    /// given); the response is read by `status` and `next`.
    pub fn open(addr: SocketAddr, query: &str, last_event_id: Option<u64>) -> io::Result<Sse> {
        let mut stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_millis(100)))?;
        let mut req = format!("GET /changefeed/stream?{query} HTTP/1.1\r\nHost: t\r\n");
        if let Some(id) = last_event_id {
            req.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes())?;
        Ok(Sse {
            stream,
            raw: Vec::new(),
            text: String::new(),
            head: None,
            ended: false,
        })
    }

    /// Whether the server ended the stream (or the connection).
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Reads what is available (waiting at most the 100 ms read timeout),
    /// decoding chunks into `text`.
    fn pump(&mut self) {
        let mut buf = [0u8; 65536];
        match self.stream.read(&mut buf) {
            Ok(0) => self.ended = true,
            Ok(n) => self.raw.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::TimedOut
                    || e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => self.ended = true,
        }
        if self.head.is_none() {
            if let Some(p) = find(&self.raw, b"\r\n\r\n") {
                self.head = Some(String::from_utf8_lossy(&self.raw[..p]).into_owned());
                self.raw.drain(..p + 4);
            } else {
                return;
            }
        }
        loop {
            let (data, used) = match parse_chunk(&self.raw) {
                Ok(Some(c)) => c,
                Ok(None) => return,
                Err(e) => panic!("SSE stream: {e}"),
            };
            let empty = data.is_empty();
            let text = std::str::from_utf8(&self.raw[data])
                .unwrap_or_else(|e| panic!("SSE chunk is not UTF-8: {e}"));
            self.text.push_str(text);
            self.raw.drain(..used);
            if empty {
                self.ended = true;
                return;
            }
        }
    }

    /// The response status, waiting up to `limit` for the head; `None` when
    /// it did not come.
    pub fn try_status(&mut self, limit: Duration) -> Option<u16> {
        let end = Instant::now() + limit;
        while self.head.is_none() && Instant::now() < end && !self.ended {
            self.pump();
        }
        self.head
            .as_deref()?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    /// The response status; panics when the head does not come in 10 s.
    pub fn status(&mut self) -> u16 {
        self.try_status(Duration::from_secs(10))
            .expect("response head")
    }

    /// The next block, waiting up to `limit`.
    pub fn next(&mut self, limit: Duration) -> Option<Block> {
        let end = Instant::now() + limit;
        loop {
            if let Some(p) = self.text.find("\n\n") {
                let block: String = self.text.drain(..p + 2).collect();
                return Some(parse_block(&block));
            }
            if self.ended || Instant::now() > end {
                return None;
            }
            self.pump();
        }
    }

    /// The next block that carries an event: its id and data as JSON.
    pub fn next_event(&mut self, limit: Duration) -> Option<(u64, serde_json::Value)> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            let b = self.next(end.saturating_duration_since(Instant::now()))?;
            if let (Some(id), Some(d)) = (b.id, b.data) {
                let v =
                    serde_json::from_str(&d).unwrap_or_else(|e| panic!("event {id} ({e}): {d}"));
                return Some((id, v));
            }
        }
        None
    }
}

fn parse_block(block: &str) -> Block {
    let number = |v: &str| -> u64 { v.parse().unwrap_or_else(|e| panic!("{e}: {block:?}")) };
    let mut b = Block::default();
    for line in block.lines() {
        if let Some(c) = line.strip_prefix(':') {
            b.comments.push(c.trim().to_string());
        } else if let Some(v) = line.strip_prefix("id: ") {
            b.id = Some(number(v));
        } else if let Some(v) = line.strip_prefix("event: ") {
            b.event = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("retry: ") {
            b.retry = Some(number(v));
        } else if let Some(v) = line.strip_prefix("data: ") {
            let d = b.data.get_or_insert_with(String::new);
            if !d.is_empty() {
                d.push('\n');
            }
            d.push_str(v);
        }
    }
    b
}
