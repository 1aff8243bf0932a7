//! One HTTP/1.1 keep-alive connection.
//!
//! The loop reads into one buffer, answers every complete request already in
//! it (pipelining), and sends all the answers with one write. Buffers live as
//! long as the connection and are reused, so the steady state allocates
//! nothing per request.
//!
//! The loop runs over any [`Transport`] (plain TCP, TLS, a test pipe), as a
//! generic parameter: each transport gets its own compiled copy, with no
//! dynamic dispatch per read or write. The peer's [`PeerIdentity`] is taken
//! once when the connection starts and lent to every request on it.
//!
//! Protocol errors (malformed request line, oversized headers or body, bad
//! framing) are answered through [`Handler::protocol_error`] so the server
//! renders them in its own error format, and then the connection is closed:
//! after a framing error the byte stream can no longer be trusted.

use crate::chunked::{self, ChunkedError};
use crate::request::{split_target, Method, Request};
use crate::response::Response;
use crate::shutdown::ShutdownSignal;
use crate::stream::StreamOut;
use crate::transport::{PeerIdentity, Transport};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use std::future::Future;
use std::io;
use std::time::Duration;

/// How many headers a request may carry.
const MAX_HEADERS: usize = 64;

/// Size limits for one connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Largest accepted request body in bytes (`server.max_request_size_mb`).
    pub max_body: usize,
    /// Largest accepted request head (request line plus headers).
    pub max_head: usize,
    /// Longest wait for the next bytes from the client, between requests
    /// or in the middle of one (`server.idle_timeout_ms`).
    pub idle_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_body: 10 << 20,
            max_head: 64 << 10,
            idle_timeout: Duration::from_secs(120),
        }
    }
}

/// A protocol-level failure, answered before any handler sees the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolError {
    /// The request could not be parsed (400).
    Malformed(&'static str),
    /// The head is larger than `max_head` or has too many headers (431).
    HeadTooLarge,
    /// The body is larger than `max_body` (413).
    BodyTooLarge { limit: usize },
    /// A transfer coding other than chunked (501).
    UnsupportedTransferEncoding,
}

/// Answers requests. One value per core; not `Send`.
///
/// `T` is the transport a streaming response writes to (see
/// [`StreamOut`]); it defaults to plain TCP. A handler that serves several
/// transports (TCP and TLS) implements `Handler<T>` for each, usually with
/// one generic `impl<T: Transport> Handler<T> for ...`.
pub trait Handler<T: Transport = TcpStream> {
    /// What a streaming response (Server-Sent Events) needs to go on after
    /// its head is sent.
    type Stream;

    /// Writes exactly one response for `req` into `resp`. A handler that
    /// streams writes the head with [`Response::start_stream`] and returns
    /// the stream's state; the connection then calls [`Handler::stream`].
    fn handle(
        &self,
        req: &Request<'_>,
        resp: &mut Response<'_>,
    ) -> impl Future<Output = Option<Self::Stream>>;

    /// Writes the response for a request that failed before routing.
    fn protocol_error(&self, err: ProtocolError, resp: &mut Response<'_>);

    /// Writes the body of a streaming response until it ends (the client
    /// leaves, the server stops, or the handler decides so).
    fn stream(&self, state: Self::Stream, out: &mut StreamOut<'_, T>) -> impl Future<Output = ()>;
}

enum Step<S> {
    /// A request was answered; `consumed` bytes of input were used.
    Done { consumed: usize, close: bool },
    /// The request was answered with the head of a streaming response.
    Stream(S),
    /// The request is incomplete; `total` is how many bytes from the start of
    /// the request are needed, when known (0 when unknown).
    NeedMore { total: usize },
}

struct Buffers {
    out: Vec<u8>,
    body: Vec<u8>,
    sent_continue: bool,
}

/// Parses and answers the request at the start of `input`.
async fn step<T: Transport, H: Handler<T>>(
    input: &[u8],
    peer: &PeerIdentity,
    handler: &H,
    limits: &ConnectionLimits,
    bufs: &mut Buffers,
    closing: bool,
) -> Step<H::Stream> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(input) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if input.len() > limits.max_head {
                return fatal(handler, bufs, ProtocolError::HeadTooLarge);
            }
            return Step::NeedMore { total: 0 };
        }
        Err(httparse::Error::TooManyHeaders) => {
            return fatal(handler, bufs, ProtocolError::HeadTooLarge)
        }
        Err(_) => {
            return fatal(
                handler,
                bufs,
                ProtocolError::Malformed("malformed HTTP request"),
            )
        }
    };
    if head_len > limits.max_head {
        return fatal(handler, bufs, ProtocolError::HeadTooLarge);
    }
    let method = Method::parse(parsed.method.unwrap_or(""));
    let target = parsed.path.unwrap_or("/");
    let version = parsed.version.unwrap_or(1);
    let headers: &[httparse::Header<'_>] = parsed.headers;

    // Framing: Content-Length or chunked, never both (request smuggling).
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    let mut keep_alive = version == 1;
    let mut expect_continue = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = match parse_content_length(h.value) {
                Some(v) => v,
                None => {
                    return fatal(
                        handler,
                        bufs,
                        ProtocolError::Malformed("invalid Content-Length"),
                    )
                }
            };
            if content_length.is_some_and(|c| c != v) {
                return fatal(
                    handler,
                    bufs,
                    ProtocolError::Malformed("conflicting Content-Length headers"),
                );
            }
            content_length = Some(v);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let v = h.value.trim_ascii();
            if v.eq_ignore_ascii_case(b"chunked") {
                chunked = true;
            } else if !v.eq_ignore_ascii_case(b"identity") {
                return fatal(handler, bufs, ProtocolError::UnsupportedTransferEncoding);
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                }
            }
        } else if h.name.eq_ignore_ascii_case("expect") {
            expect_continue = h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        }
    }
    if chunked && content_length.is_some() {
        return fatal(
            handler,
            bufs,
            ProtocolError::Malformed("both Content-Length and Transfer-Encoding"),
        );
    }

    let rest = &input[head_len..];
    let (body, consumed): (&[u8], usize) = if chunked {
        match chunked::decode(rest, &mut bufs.body, limits.max_body) {
            Ok(Some(used)) => (&bufs.body[..], head_len + used),
            Ok(None) => {
                send_continue(bufs, expect_continue);
                return Step::NeedMore { total: 0 };
            }
            Err(ChunkedError::TooLarge) => {
                return fatal(
                    handler,
                    bufs,
                    ProtocolError::BodyTooLarge {
                        limit: limits.max_body,
                    },
                )
            }
            Err(ChunkedError::Invalid) => {
                return fatal(
                    handler,
                    bufs,
                    ProtocolError::Malformed("invalid chunked body"),
                )
            }
        }
    } else {
        let len = content_length.unwrap_or(0);
        if len > limits.max_body {
            return fatal(
                handler,
                bufs,
                ProtocolError::BodyTooLarge {
                    limit: limits.max_body,
                },
            );
        }
        if rest.len() < len {
            send_continue(bufs, expect_continue);
            return Step::NeedMore {
                total: head_len + len,
            };
        }
        (&rest[..len], head_len + len)
    };

    let (path, query) = split_target(target);
    let req = Request {
        method,
        path,
        query,
        headers,
        body,
        peer,
    };
    let keep_alive = keep_alive && !closing;
    let mut resp = Response::new(&mut bufs.out, keep_alive, method == Method::Head);
    let stream = handler.handle(&req, &mut resp).await;
    if let Some(s) = stream {
        debug_assert!(!resp.keep_alive(), "streams use Response::start_stream");
        return Step::Stream(s);
    }
    if resp.status() == 0 {
        resp.close_connection();
        resp.json(
            500,
            br#"{"error":true,"code":"internal","message":"no response","status_code":500}"#,
        );
    }
    let close = !resp.keep_alive();
    bufs.sent_continue = false;
    Step::Done { consumed, close }
}

fn send_continue(bufs: &mut Buffers, expect: bool) {
    if expect && !bufs.sent_continue {
        bufs.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        bufs.sent_continue = true;
    }
}

fn fatal<T: Transport, H: Handler<T>>(
    handler: &H,
    bufs: &mut Buffers,
    err: ProtocolError,
) -> Step<H::Stream> {
    let mut resp = Response::new(&mut bufs.out, false, false);
    handler.protocol_error(err, &mut resp);
    Step::Done {
        consumed: 0,
        close: true,
    }
}

/// Strict decimal parse: digits only, no sign, no overflow.
fn parse_content_length(v: &[u8]) -> Option<usize> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Serves one connection until the peer closes it, a protocol error closes
/// it, or `shutdown` fires while it is idle.
///
/// `stream` is the connection's transport, ready for HTTP (for TLS: after
/// the handshake). Its [`Transport::peer`] is asked once, here, and every
/// [`Request`] on the connection carries it.
pub async fn serve_connection<T: Transport, H: Handler<T>>(
    mut stream: T,
    handler: &H,
    limits: &ConnectionLimits,
    shutdown: &ShutdownSignal,
) -> io::Result<()> {
    let peer = stream.peer();
    let mut rbuf = vec![0u8; 8 << 10];
    let (mut start, mut end) = (0usize, 0usize);
    let mut bufs = Buffers {
        out: Vec::with_capacity(8 << 10),
        body: Vec::new(),
        sent_continue: false,
    };
    // Largest read buffer a request may need: head, body and chunk framing.
    let max_buffer = limits.max_head + limits.max_body + (limits.max_body / 8) + 4096;
    loop {
        let mut close = false;
        let mut need = 0usize;
        let mut streaming = None;
        let closing = shutdown.is_fired();
        while start < end {
            match step(
                &rbuf[start..end],
                &peer,
                handler,
                limits,
                &mut bufs,
                closing,
            )
            .await
            {
                Step::Stream(s) => {
                    streaming = Some(s);
                    break;
                }
                Step::Done { consumed, close: c } => {
                    start += consumed;
                    if c {
                        close = true;
                        break;
                    }
                }
                Step::NeedMore { total } => {
                    need = total;
                    break;
                }
            }
        }
        if !bufs.out.is_empty() {
            send(&mut stream, &bufs.out).await?;
            bufs.out.clear();
        }
        if let Some(state) = streaming {
            // Anything pipelined after a streaming request is never
            // answered: the stream is the connection's last response.
            let mut out = StreamOut::new(&mut stream, &mut rbuf, shutdown);
            handler.stream(state, &mut out).await;
            out.finish().await;
            return Ok(());
        }
        if close {
            lingering_close(&mut stream, &mut rbuf).await;
            return Ok(());
        }
        if start == end {
            start = 0;
            end = 0;
            if closing {
                return Ok(());
            }
        }
        // Make room for the rest of the request.
        if start > 0 && (end == rbuf.len() || need > rbuf.len() - start) {
            rbuf.copy_within(start..end, 0);
            end -= start;
            start = 0;
        }
        if need > rbuf.len() || end == rbuf.len() {
            let want = need.max(rbuf.len() * 2).min(max_buffer.max(rbuf.len()));
            if want <= rbuf.len() {
                // Cannot happen with consistent limits; refuse rather than loop.
                let mut resp = Response::new(&mut bufs.out, false, false);
                handler.protocol_error(
                    ProtocolError::BodyTooLarge {
                        limit: limits.max_body,
                    },
                    &mut resp,
                );
                send(&mut stream, &bufs.out).await?;
                lingering_close(&mut stream, &mut rbuf).await;
                return Ok(());
            }
            rbuf.resize(want, 0);
        }
        // Every read is bounded by the idle timeout (a silent or trickling
        // client cannot hold a connection forever); between requests a
        // graceful stop may also close the connection.
        let idle = start == end;
        let read = async { Some(stream.read(&mut rbuf[end..]).await) };
        let give_up = async {
            if idle {
                futures_lite::future::or(
                    shutdown.wait(),
                    glommio::timer::sleep(limits.idle_timeout),
                )
                .await;
            } else {
                glommio::timer::sleep(limits.idle_timeout).await;
            }
            None
        };
        let n = match futures_lite::future::or(read, give_up).await {
            Some(r) => r?,
            None => {
                if !idle && !shutdown.is_fired() {
                    tracing::debug!("closing a connection that stalled mid-request");
                }
                return Ok(());
            }
        };
        if n == 0 {
            return Ok(());
        }
        end += n;
    }
}

/// Writes `bytes` and flushes them: a transport that buffers (TLS) must
/// put them on the wire now; for a plain socket the flush is free.
pub(crate) async fn send<T: Transport>(stream: &mut T, bytes: &[u8]) -> io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

/// Closes after an error response without resetting the connection: stop
/// writing ([`Transport::close_write`]), then discard what the client is
/// still sending (at most 64 MiB, for at most 2 s), so it can read our
/// answer instead of a reset.
async fn lingering_close<T: Transport>(stream: &mut T, scratch: &mut [u8]) {
    let _ = stream.close_write().await;
    let drain = async {
        let mut total = 0usize;
        loop {
            match stream.read(scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    total += n;
                    if total > (64 << 20) {
                        break;
                    }
                }
            }
        }
        Ok(())
    };
    let _ = glommio::timer::timeout(Duration::from_secs(2), drain).await;
}

#[cfg(test)]
mod tests {
    use super::parse_content_length;

    #[test]
    fn content_length_is_strict() {
        assert_eq!(parse_content_length(b"12"), Some(12));
        assert_eq!(parse_content_length(b" 7 "), Some(7));
        assert_eq!(parse_content_length(b"-1"), None);
        assert_eq!(parse_content_length(b"+1"), None);
        assert_eq!(parse_content_length(b""), None);
        assert_eq!(parse_content_length(b"1 2"), None);
        assert_eq!(parse_content_length(b"99999999999999999999"), None);
    }
}
