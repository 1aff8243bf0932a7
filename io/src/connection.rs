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

use crate::chunked::{self, ChunkedError, ChunkedState};
use crate::request::{split_target, Method, Request};
use crate::response::Response;
use crate::shutdown::ShutdownSignal;
use crate::stream::StreamOut;
use crate::transport::{PeerIdentity, Transport};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use std::future::Future;
use std::io;
use std::time::{Duration, Instant};

/// How many headers a request may carry.
const MAX_HEADERS: usize = 64;

/// Size and time limits for one connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Largest accepted request body in bytes (`server.max_request_size_mb`).
    pub max_body: usize,
    /// Largest accepted request head (request line plus headers).
    pub max_head: usize,
    /// Longest wait for the next bytes from the client, between requests
    /// or in the middle of one (`server.idle_timeout_ms`).
    pub idle_timeout: Duration,
    /// Longest time one request may take to arrive, from its first byte to
    /// the end of its body, however steadily the bytes trickle in. Past it
    /// the client gets 408 (when its head was complete) and is closed.
    pub request_timeout: Duration,
    /// Longest time one write (a batch of responses) may take. A client
    /// that does not read its answers is dropped after it.
    pub write_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_body: 10 << 20,
            max_head: 64 << 10,
            idle_timeout: Duration::from_secs(120),
            request_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
        }
    }
}

/// Initial (and idle) size of a connection's read buffer.
pub const INITIAL_READ_BUFFER: usize = 8 << 10;
/// Initial (and idle) capacity of a connection's output buffer.
pub const INITIAL_OUT_BUFFER: usize = 8 << 10;
/// Pipelined requests stop being answered once this many response bytes
/// wait in the output buffer; they are written first, then handling goes
/// on. Bounds the memory a client that pipelines many large reads can pin.
pub const PIPELINE_OUTPUT_LIMIT: usize = 1 << 20;
/// A buffer larger than this is given back (to its initial size) when the
/// connection goes idle.
const SHRINK_ABOVE: usize = 32 << 10;
/// How long a write may still go on once a graceful stop has begun (capped
/// by `write_timeout`).
const SHUTDOWN_WRITE_GRACE: Duration = Duration::from_secs(1);

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

    /// State the handler keeps for one connection, from one request to the
    /// next (e.g. what the last credential on it resolved to). Made with
    /// `Default` when the connection starts, dropped when it ends, and lent
    /// mutably to each of its requests in turn: no lock, no allocation per
    /// request. The io layer never looks inside; `()` when not needed.
    type Conn: Default;

    /// Writes exactly one response for `req` into `resp`. A handler that
    /// streams writes the head with [`Response::start_stream`] and returns
    /// the stream's state; the connection then calls [`Handler::stream`].
    /// `conn` is this connection's [`Handler::Conn`].
    fn handle(
        &self,
        conn: &mut Self::Conn,
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
    /// The request was answered with the head of a streaming response
    /// (chunked unless the request was HTTP/1.0).
    Stream { state: S, chunked: bool },
    /// The request is incomplete; `total` is how many bytes from the start of
    /// the request are needed, when known (0 when unknown); `head_done`
    /// whether its head was complete.
    NeedMore { total: usize, head_done: bool },
}

struct Buffers {
    out: Vec<u8>,
    body: Vec<u8>,
    /// Where decoding the current request's chunked body stopped.
    chunk: ChunkedState,
    sent_continue: bool,
}

/// Parses and answers the request at the start of `input`.
async fn step<T: Transport, H: Handler<T>>(
    input: &[u8],
    peer: &PeerIdentity,
    handler: &H,
    conn: &mut H::Conn,
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
            return Step::NeedMore {
                total: 0,
                head_done: false,
            };
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

    // Framing (RFC 9112 §6): one Content-Length or exactly `chunked`, never
    // both, never repeated: anything else could be read differently by a
    // proxy in front of us (request smuggling).
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    let (mut close_token, mut keep_alive_token) = (false, false);
    let mut expect_continue = false;
    let mut hosts = 0usize;
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
            if content_length.is_some() {
                return fatal(
                    handler,
                    bufs,
                    ProtocolError::Malformed("repeated Content-Length header"),
                );
            }
            content_length = Some(v);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if chunked {
                return fatal(
                    handler,
                    bufs,
                    ProtocolError::Malformed("repeated Transfer-Encoding header"),
                );
            }
            // The only coding we decode, applied once and last.
            if !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return fatal(handler, bufs, ProtocolError::UnsupportedTransferEncoding);
            }
            chunked = true;
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close_token = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive_token = true;
                }
            }
        } else if h.name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if h.name.eq_ignore_ascii_case("expect") {
            expect_continue = h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        }
    }
    // RFC 9112 §6.1: HTTP/1.0 has no transfer codings; its framing would be
    // read differently by different parties.
    if chunked && version == 0 {
        return fatal(
            handler,
            bufs,
            ProtocolError::Malformed("Transfer-Encoding in an HTTP/1.0 request"),
        );
    }
    // RFC 9112 §3.2: an HTTP/1.1 request has exactly one Host; none may
    // have two (which one would a proxy in front of us have routed on?).
    if hosts > 1 || (hosts == 0 && version == 1) {
        return fatal(
            handler,
            bufs,
            ProtocolError::Malformed("an HTTP/1.1 request needs exactly one Host header"),
        );
    }
    // `close` wins over `keep-alive`; HTTP/1.1 keeps alive by default.
    let keep_alive = !close_token && (version == 1 || keep_alive_token);
    if chunked && content_length.is_some() {
        return fatal(
            handler,
            bufs,
            ProtocolError::Malformed("both Content-Length and Transfer-Encoding"),
        );
    }

    let rest = &input[head_len..];
    let (body, consumed): (&[u8], usize) = if chunked {
        match chunked::decode(rest, &mut bufs.body, &mut bufs.chunk, limits.max_body) {
            Ok(Some(used)) => (&bufs.body[..], head_len + used),
            Ok(None) => {
                send_continue(bufs, expect_continue);
                return Step::NeedMore {
                    total: 0,
                    head_done: true,
                };
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
                head_done: true,
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
    if version == 0 {
        resp = resp.for_http10();
    }
    let stream = handler.handle(conn, &req, &mut resp).await;
    if let Some(s) = stream {
        debug_assert!(!resp.keep_alive(), "streams use Response::start_stream");
        return Step::Stream {
            state: s,
            chunked: version != 0,
        };
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
    bufs.chunk.reset();
    bufs.body.clear();
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
///
/// Memory and time are bounded per connection:
/// * the read buffer starts at [`INITIAL_READ_BUFFER`] and only grows when
///   it is full of received bytes (doubling, up to what `max_head` and
///   `max_body` allow): an announced `Content-Length` reserves nothing;
/// * a request must arrive whole within `request_timeout`, and no read
///   waits longer than `idle_timeout`;
/// * at most about [`PIPELINE_OUTPUT_LIMIT`] bytes of pipelined answers are
///   buffered before they are written;
/// * every write is bounded by `write_timeout`, and by a short grace once
///   `shutdown` has fired;
/// * buffers grown for a large request are shrunk back when the connection
///   goes idle.
pub async fn serve_connection<T: Transport, H: Handler<T>>(
    mut stream: T,
    handler: &H,
    limits: &ConnectionLimits,
    shutdown: &ShutdownSignal,
) -> io::Result<()> {
    let peer = stream.peer();
    let mut conn = H::Conn::default();
    let mut rbuf = vec![0u8; INITIAL_READ_BUFFER];
    let (mut start, mut end) = (0usize, 0usize);
    let mut bufs = Buffers {
        out: Vec::with_capacity(INITIAL_OUT_BUFFER),
        body: Vec::new(),
        chunk: ChunkedState::default(),
        sent_continue: false,
    };
    let mut held = Held(0);
    // Largest read buffer a request may need: head, body and chunk framing.
    let max_buffer = limits.max_head + limits.max_body + (limits.max_body / 8) + 4096;
    // When the request being received must be complete.
    let mut deadline: Option<Instant> = None;
    loop {
        let mut close = false;
        let mut need = 0usize;
        let mut head_done = false;
        let mut streaming = None;
        let mut more = false;
        let closing = shutdown.is_fired();
        while start < end {
            match step(
                &rbuf[start..end],
                &peer,
                handler,
                &mut conn,
                limits,
                &mut bufs,
                closing,
            )
            .await
            {
                Step::Stream { state, chunked } => {
                    streaming = Some((state, chunked));
                    break;
                }
                Step::Done { consumed, close: c } => {
                    start += consumed;
                    deadline = None;
                    if c {
                        close = true;
                        break;
                    }
                    if bufs.out.len() >= PIPELINE_OUTPUT_LIMIT {
                        // Write what is pending before answering more.
                        more = start < end;
                        break;
                    }
                }
                Step::NeedMore {
                    total,
                    head_done: h,
                } => {
                    need = total;
                    head_done = h;
                    break;
                }
            }
        }
        held.set(&rbuf, &bufs);
        if !bufs.out.is_empty() {
            send_bounded(&mut stream, &bufs.out, limits, shutdown).await?;
            bufs.out.clear();
        }
        if let Some((state, chunked)) = streaming {
            // Anything pipelined after a streaming request is never
            // answered: the stream is the connection's last response.
            let mut out = StreamOut::new(&mut stream, &mut rbuf, shutdown, chunked);
            handler.stream(state, &mut out).await;
            out.finish().await;
            return Ok(());
        }
        if close {
            lingering_close(&mut stream, &mut rbuf).await;
            return Ok(());
        }
        if more {
            continue;
        }
        if start == end {
            start = 0;
            end = 0;
            deadline = None;
            if closing {
                return Ok(());
            }
            shrink_idle(&mut rbuf, &mut bufs);
        } else if deadline.is_none() {
            deadline = Some(Instant::now() + limits.request_timeout);
        }
        // Make room for the rest of the request.
        if start > 0 && (end == rbuf.len() || need > rbuf.len() - start) {
            rbuf.copy_within(start..end, 0);
            end -= start;
            start = 0;
        }
        if end == rbuf.len() {
            // The buffer is full of one incomplete request: grow it. It
            // only ever grows over bytes that arrived (at most doubling),
            // never to a size the client merely announced.
            let mut want = (rbuf.len() * 2).min(max_buffer);
            if need > rbuf.len() {
                want = want.min(need);
            }
            if want <= rbuf.len() {
                // Cannot happen with consistent limits; refuse rather than loop.
                let mut resp = Response::new(&mut bufs.out, false, false);
                handler.protocol_error(
                    ProtocolError::BodyTooLarge {
                        limit: limits.max_body,
                    },
                    &mut resp,
                );
                send_bounded(&mut stream, &bufs.out, limits, shutdown).await?;
                lingering_close(&mut stream, &mut rbuf).await;
                return Ok(());
            }
            rbuf.resize(want, 0);
        }
        held.set(&rbuf, &bufs);
        // Every read is bounded by the idle timeout (a silent client cannot
        // hold a connection), a request in progress also by its deadline (a
        // trickling one cannot either); between requests a graceful stop
        // may also close the connection.
        let idle = start == end;
        let mut wait = limits.idle_timeout;
        let mut by_deadline = false;
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(Instant::now());
            if left <= wait {
                wait = left;
                by_deadline = true;
            }
        }
        let read = async { Some(stream.read(&mut rbuf[end..]).await) };
        let give_up = async {
            if idle {
                futures_lite::future::or(shutdown.wait(), glommio::timer::sleep(wait)).await;
            } else {
                glommio::timer::sleep(wait).await;
            }
            None
        };
        let n = match futures_lite::future::or(read, give_up).await {
            Some(r) => r?,
            None => {
                if idle {
                    return Ok(());
                }
                if by_deadline {
                    tracing::debug!("closing a connection whose request took too long");
                    if head_done {
                        request_timeout(&mut bufs.out);
                        send_bounded(&mut stream, &bufs.out, limits, shutdown).await?;
                        lingering_close(&mut stream, &mut rbuf).await;
                    }
                } else {
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

/// The 408 sent when a request's head arrived but its body did not arrive
/// within `request_timeout`, in the server's JSON error format.
fn request_timeout(out: &mut Vec<u8>) {
    let mut resp = Response::new(out, false, false);
    resp.json(
        408,
        br#"{"error":true,"code":"request_timeout","message":"the request was not received within the request timeout","status_code":408}"#,
    );
}

/// Gives back buffers a large request grew, once the connection is idle.
fn shrink_idle(rbuf: &mut Vec<u8>, bufs: &mut Buffers) {
    if rbuf.len() > SHRINK_ABOVE {
        rbuf.truncate(INITIAL_READ_BUFFER);
        rbuf.shrink_to_fit();
    }
    if bufs.out.capacity() > SHRINK_ABOVE {
        bufs.out.shrink_to(INITIAL_OUT_BUFFER);
    }
    if bufs.body.capacity() > SHRINK_ABOVE {
        bufs.body = Vec::new();
    }
}

/// Writes `bytes` and flushes them: a transport that buffers (TLS) must
/// put them on the wire now; for a plain socket the flush is free.
pub(crate) async fn send<T: Transport>(stream: &mut T, bytes: &[u8]) -> io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

/// [`send`], bounded: fails with [`io::ErrorKind::TimedOut`] when the
/// client does not take the bytes within `write_timeout`, or within a
/// short grace once a graceful stop has begun, so a client that never
/// reads can hold neither the connection nor the shutdown.
pub(crate) async fn send_bounded<T: Transport>(
    stream: &mut T,
    bytes: &[u8],
    limits: &ConnectionLimits,
    shutdown: &ShutdownSignal,
) -> io::Result<()> {
    let write = async { Some(send(stream, bytes).await) };
    let give_up = async {
        let stopping = async {
            shutdown.wait().await;
            glommio::timer::sleep(SHUTDOWN_WRITE_GRACE.min(limits.write_timeout)).await;
        };
        futures_lite::future::or(glommio::timer::sleep(limits.write_timeout), stopping).await;
        None
    };
    match futures_lite::future::or(write, give_up).await {
        Some(r) => r,
        None => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "client did not read its response in time",
        )),
    }
}

thread_local! {
    static BUFFERED: std::cell::Cell<BufferUsage> = const {
        std::cell::Cell::new(BufferUsage { live: 0, peak: 0 })
    };
}

/// Bytes of read, output and body buffers held by the connections served
/// on the calling thread (one core), now and at most since the last
/// [`reset_buffer_peak`]. For diagnostics and tests of the memory bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BufferUsage {
    pub live: usize,
    pub peak: usize,
}

/// The calling thread's [`BufferUsage`].
pub fn buffer_usage() -> BufferUsage {
    BUFFERED.with(|b| b.get())
}

/// Starts a new peak measurement at the current live size.
pub fn reset_buffer_peak() {
    BUFFERED.with(|b| {
        let mut u = b.get();
        u.peak = u.live;
        b.set(u);
    });
}

/// One connection's share of [`BufferUsage`]; given back on drop.
struct Held(usize);

impl Held {
    fn set(&mut self, rbuf: &[u8], bufs: &Buffers) {
        let now = rbuf.len() + bufs.out.capacity() + bufs.body.capacity();
        if now != self.0 {
            let before = self.0;
            self.0 = now;
            BUFFERED.with(|b| {
                let mut u = b.get();
                u.live = u.live - before + now;
                u.peak = u.peak.max(u.live);
                b.set(u);
            });
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let before = self.0;
        BUFFERED.with(|b| {
            let mut u = b.get();
            u.live -= before;
            b.set(u);
        });
    }
}

/// Closes after an error response without resetting the connection: stop
/// writing ([`Transport::close_write`]), then discard what the client is
/// still sending (at most 64 MiB, for at most 2 s), so it can read our
/// answer instead of a reset.
async fn lingering_close<T: Transport>(stream: &mut T, scratch: &mut [u8]) {
    let drain = async {
        let _ = stream.close_write().await;
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
