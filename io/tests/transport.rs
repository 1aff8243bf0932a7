//! `serve_connection` over transports other than a listening TCP socket:
//! a Unix socket pair (glommio's `UnixStream`), a test transport wrapping
//! one with a made-up authenticated identity, and a loopback TCP pair.
//!
//! These run the real connection loop end to end (framing, pipelining,
//! 100-continue, protocol errors with lingering close, idle timeout,
//! shutdown, streaming and hang-up detection) and check that every request
//! sees the peer identity its transport reported.

mod common;
use common::run;
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream, UnixStream};
use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;
use themis_io::connection::ProtocolError;
use themis_io::{
    serve_connection, ConnectionLimits, Handler, Method, PeerIdentity, Request, Response,
    ShutdownSignal, StreamEnd, StreamOut, Transport,
};

/// A transport defined outside the io crate: a socket plus an identity, as
/// a TLS stream with a verified client certificate would report it.
struct Authenticated {
    inner: UnixStream,
    peer: PeerIdentity,
}

impl AsyncRead for Authenticated {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Authenticated {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// Uses the default `close_write` (poll_close).
impl Transport for Authenticated {
    fn peer(&self) -> PeerIdentity {
        self.peer.clone()
    }
}

/// Answers `/count` with how many requests its connection has made,
/// `/peer` with who asked, `/echo` with the body, `/stream` with a
/// short SSE stream, `/hold` with a stream that waits for the client to go.
#[derive(Default)]
struct TestHandler {
    ends: RefCell<Vec<StreamEnd>>,
    /// Set when `serve_connection` has returned.
    finished: Cell<bool>,
}

enum Stream {
    Count(usize),
    Hold,
}

impl<T: Transport> Handler<T> for TestHandler {
    type Stream = Stream;
    /// Requests served so far on this connection (`/count`).
    type Conn = usize;

    async fn handle(
        &self,
        conn: &mut usize,
        req: &Request<'_>,
        resp: &mut Response<'_>,
    ) -> Option<Stream> {
        *conn += 1;
        match (req.method, req.path) {
            (Method::Get, "/count") => {
                resp.send(200, "text/plain", conn.to_string().as_bytes());
                None
            }
            (Method::Get, "/peer") => {
                let peer = req.peer();
                let addr = peer.addr.map(|a| a.to_string()).unwrap_or_default();
                let subject = peer.client_cert_subject().unwrap_or("-");
                let body = format!("{addr}|{subject}");
                resp.send(200, "text/plain", body.as_bytes());
                None
            }
            (Method::Post, "/echo") => {
                resp.send(200, "application/octet-stream", req.body);
                None
            }
            (Method::Get, "/stream") => {
                resp.start_stream(200, "text/event-stream", &[]);
                Some(Stream::Count(3))
            }
            (Method::Get, "/hold") => {
                resp.start_stream(200, "text/event-stream", &[]);
                Some(Stream::Hold)
            }
            _ => {
                resp.send(404, "text/plain", b"no");
                None
            }
        }
    }

    fn protocol_error(&self, err: ProtocolError, resp: &mut Response<'_>) {
        resp.close_connection();
        let status = match err {
            ProtocolError::Malformed(_) => 400,
            ProtocolError::HeadTooLarge => 431,
            ProtocolError::BodyTooLarge { .. } => 413,
            ProtocolError::UnsupportedTransferEncoding => 501,
        };
        resp.send(status, "text/plain", b"protocol");
    }

    async fn stream(&self, state: Stream, out: &mut StreamOut<'_, T>) {
        match state {
            Stream::Count(n) => {
                for i in 0..n {
                    out.buffer()
                        .extend_from_slice(format!("data: {i}\n\n").as_bytes());
                    if let Err(e) = out.flush(Duration::from_secs(1)).await {
                        self.ends.borrow_mut().push(e);
                        return;
                    }
                    if let Err(e) = out
                        .wait(glommio::timer::sleep(Duration::from_millis(1)))
                        .await
                    {
                        self.ends.borrow_mut().push(e);
                        return;
                    }
                }
            }
            Stream::Hold => {
                let end = out
                    .wait(futures_lite::future::pending::<()>())
                    .await
                    .err()
                    .unwrap_or(StreamEnd::Closed);
                self.ends.borrow_mut().push(end);
            }
        }
    }
}

/// Serves `server` on a task; returns the handler and the task.
fn spawn_serve<T: Transport + 'static>(
    server: T,
    limits: ConnectionLimits,
    shutdown: ShutdownSignal,
) -> (Rc<TestHandler>, glommio::task::JoinHandle<io::Result<()>>) {
    let handler = Rc::new(TestHandler::default());
    let h = handler.clone();
    let task = glommio::spawn_local(async move {
        let r = serve_connection(server, &*h, &limits, &shutdown).await;
        h.finished.set(true);
        r
    })
    .detach();
    (handler, task)
}

async fn read_all<S: AsyncRead + Unpin>(client: &mut S) -> String {
    String::from_utf8(common::read_to_end(client).await).expect("utf-8 response")
}

/// Reads until `needle` has been seen `count` times.
async fn read_until<S: AsyncRead + Unpin>(client: &mut S, needle: &str, count: usize) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while String::from_utf8_lossy(&out).matches(needle).count() < count {
        let n = client.read(&mut buf).await.expect("read");
        assert!(
            n > 0,
            "eof before {needle:?}: {}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(out).expect("utf-8 response")
}

fn bodies(responses: &str) -> Vec<&str> {
    responses
        .split("HTTP/1.1 ")
        .filter(|r| !r.is_empty())
        .map(|r| r.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or(""))
        .collect()
}

#[test]
fn pipelined_requests_see_the_transport_identity() {
    run(|| async {
        let (server, mut client) = UnixStream::pair().expect("socketpair");
        let addr: SocketAddr = "192.0.2.7:5555".parse().expect("addr");
        let server = Authenticated {
            inner: server,
            peer: PeerIdentity::from_addr(Some(addr)).with_client_cert_subject("CN=alice"),
        };
        let (_h, task) = spawn_serve(server, ConnectionLimits::default(), ShutdownSignal::new());
        // Three requests in one write: two keep-alive, the last closes.
        client
            .write_all(
                b"GET /peer HTTP/1.1\r\nHost: x\r\n\r\n\
                  POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
                  POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\
                  Connection: close\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            )
            .await
            .expect("write");
        let all = read_all(&mut client).await;
        // `Connection: close` ends with a lingering close, which drains until
        // the client hangs up (or for 2 s): hang up.
        drop(client);
        assert_eq!(all.matches("HTTP/1.1 200 OK").count(), 3, "{all}");
        assert_eq!(
            bodies(&all),
            vec!["192.0.2.7:5555|CN=alice", "hello", "abcde"]
        );
        assert_eq!(all.matches("Connection: close").count(), 1);
        task.await.expect("task").expect("serve");
    });
}

#[test]
fn handler_state_lives_as_long_as_its_connection() {
    run(|| async {
        let mut seen = Vec::new();
        for _ in 0..2 {
            let (server, mut client) = UnixStream::pair().expect("socketpair");
            let (_h, task) =
                spawn_serve(server, ConnectionLimits::default(), ShutdownSignal::new());
            client
                .write_all(
                    b"GET /count HTTP/1.1\r\nHost: x\r\n\r\n\
                      GET /peer HTTP/1.1\r\nHost: x\r\n\r\n\
                      GET /count HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                )
                .await
                .expect("write");
            let all = read_all(&mut client).await;
            drop(client);
            let b = bodies(&all);
            seen.push((b[0].to_string(), b[2].to_string()));
            task.await.expect("task").expect("serve");
        }
        // Kept between the requests of one connection, fresh for the next.
        let one = ("1".to_string(), "3".to_string());
        assert_eq!(seen, vec![one.clone(), one]);
    });
}

#[test]
fn unix_socket_has_no_address_and_no_identity() {
    run(|| async {
        let (server, mut client) = UnixStream::pair().expect("socketpair");
        let (_h, task) = spawn_serve(server, ConnectionLimits::default(), ShutdownSignal::new());
        client
            .write_all(b"GET /peer HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let all = read_all(&mut client).await;
        drop(client);
        assert_eq!(bodies(&all), vec!["|-"]);
        task.await.expect("task").expect("serve");
    });
}

#[test]
fn tcp_reports_the_client_address() {
    run(|| async {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let mut client = TcpStream::connect(addr).await.expect("connect");
        let server = listener.accept().await.expect("accept");
        let (_h, task) = spawn_serve(server, ConnectionLimits::default(), ShutdownSignal::new());
        client
            .write_all(b"GET /peer HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let me = client.local_addr().expect("client addr");
        let all = read_all(&mut client).await;
        drop(client);
        assert_eq!(bodies(&all), vec![format!("{me}|-").as_str()]);
        task.await.expect("task").expect("serve");
    });
}

#[test]
fn expect_continue_then_body() {
    run(|| async {
        let (server, mut client) = UnixStream::pair().expect("socketpair");
        let (_h, task) = spawn_serve(server, ConnectionLimits::default(), ShutdownSignal::new());
        client
            .write_all(
                b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\
                  Connection: close\r\n\r\n",
            )
            .await
            .expect("write");
        let interim = read_until(&mut client, "\r\n\r\n", 1).await;
        assert_eq!(interim, "HTTP/1.1 100 Continue\r\n\r\n");
        client.write_all(b"ping").await.expect("write body");
        let all = read_all(&mut client).await;
        drop(client);
        assert!(all.starts_with("HTTP/1.1 200 OK\r\n"), "{all}");
        assert_eq!(bodies(&all), vec!["ping"]);
        task.await.expect("task").expect("serve");
    });
}

#[test]
fn protocol_error_answers_then_lingers() {
    run(|| async {
        let (server, mut client) = UnixStream::pair().expect("socketpair");
        let limits = ConnectionLimits {
            max_body: 8,
            ..ConnectionLimits::default()
        };
        let (h, task) = spawn_serve(server, limits, ShutdownSignal::new());
        // Too large a body; the client keeps sending it after the answer.
        client
            .write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789")
            .await
            .expect("write");
        let head = read_until(&mut client, "protocol", 1).await;
        assert!(head.starts_with("HTTP/1.1 413 "), "{head}");
        assert!(head.contains("Connection: close"));
        // The server stopped writing (EOF for us) but still drains our bytes
        // until we hang up.
        client.write_all(&[b'x'; 90]).await.expect("still accepted");
        let rest = read_all(&mut client).await;
        assert_eq!(rest, "");
        assert!(!h.finished.get(), "EOF came from close_write, not the end");
        client.close().await.expect("close");
        task.await.expect("task").expect("serve");
        assert!(h.finished.get());
    });
}

#[test]
fn malformed_request_is_rejected() {
    run(|| async {
        let (server, mut client) = UnixStream::pair().expect("socketpair");
        let (_h, task) = spawn_serve(server, ConnectionLimits::default(), ShutdownSignal::new());
        client
            .write_all(
                b"GET /peer HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            )
            .await
            .expect("write");
        client.close().await.expect("half-close");
        let all = read_all(&mut client).await;
        drop(client);
        assert!(all.starts_with("HTTP/1.1 400 "), "{all}");
        task.await.expect("task").expect("serve");
    });
}

#[test]
fn idle_connection_times_out() {
    run(|| async {
        let (server, mut client) = UnixStream::pair().expect("socketpair");
        let limits = ConnectionLimits {
            idle_timeout: Duration::from_millis(50),
            ..ConnectionLimits::default()
        };
        let (_h, task) = spawn_serve(server, limits, ShutdownSignal::new());
        // A request split mid-head, then silence: the server gives up.
        client.write_all(b"GET /peer HTT").await.expect("write");
        task.await.expect("task").expect("serve");
        assert_eq!(read_all(&mut client).await, "");
    });
}

#[test]
fn shutdown_closes_an_idle_connection() {
    run(|| async {
        let (server, mut client) = UnixStream::pair().expect("socketpair");
        let shutdown = ShutdownSignal::new();
        let (_h, task) = spawn_serve(server, ConnectionLimits::default(), shutdown.clone());
        client
            .write_all(b"GET /peer HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .expect("write");
        let first = read_until(&mut client, "|-", 1).await;
        assert!(first.starts_with("HTTP/1.1 200 OK"));
        assert!(!first.contains("Connection: close"));
        shutdown.fire();
        task.await.expect("task").expect("serve");
        assert_eq!(read_all(&mut client).await, "");
    });
}

#[test]
fn streams_chunks_then_ends() {
    run(|| async {
        let (server, mut client) = UnixStream::pair().expect("socketpair");
        let (h, task) = spawn_serve(server, ConnectionLimits::default(), ShutdownSignal::new());
        client
            .write_all(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .expect("write");
        let all = read_all(&mut client).await;
        drop(client);
        assert!(all.contains("Transfer-Encoding: chunked"), "{all}");
        let body = all.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        assert_eq!(
            body,
            "9\r\ndata: 0\n\n\r\n9\r\ndata: 1\n\n\r\n9\r\ndata: 2\n\n\r\n0\r\n\r\n"
        );
        task.await.expect("task").expect("serve");
        assert!(h.ends.borrow().is_empty());
    });
}

#[test]
fn stream_notices_a_client_that_hangs_up() {
    run(|| async {
        let (server, mut client) = UnixStream::pair().expect("socketpair");
        let (h, task) = spawn_serve(server, ConnectionLimits::default(), ShutdownSignal::new());
        client
            .write_all(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .expect("write");
        let head = read_until(&mut client, "\r\n\r\n", 1).await;
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        drop(client);
        task.await.expect("task").expect("serve");
        assert_eq!(*h.ends.borrow(), vec![StreamEnd::Closed]);
    });
}

#[test]
fn shutdown_ends_a_stream() {
    run(|| async {
        let (server, mut client) = UnixStream::pair().expect("socketpair");
        let shutdown = ShutdownSignal::new();
        let (h, task) = spawn_serve(server, ConnectionLimits::default(), shutdown.clone());
        client
            .write_all(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .expect("write");
        read_until(&mut client, "\r\n\r\n", 1).await;
        shutdown.fire();
        let rest = read_all(&mut client).await;
        assert_eq!(rest, "0\r\n\r\n");
        task.await.expect("task").expect("serve");
        assert_eq!(*h.ends.borrow(), vec![StreamEnd::Shutdown]);
    });
}
