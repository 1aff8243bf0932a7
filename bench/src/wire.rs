//! The bench tools' side of HTTP/1.1: reading one response from a blocking
//! socket (they send requests as plain text).

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;

/// Reads one response with a `Content-Length` body into `body`; returns
/// its status.
pub fn read_response(r: &mut BufReader<TcpStream>, body: &mut Vec<u8>) -> u16 {
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let mut len = 0usize;
    loop {
        line.clear();
        r.read_line(&mut line).expect("header");
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    body.resize(len, 0);
    r.read_exact(body).expect("body");
    status
}
