//! The per-connection bounds of `serve_connection`, over real sockets:
//! memory (body buffers grow only with received bytes, pipelined output is
//! written in bounded batches, idle connections give buffers back), time
//! (a whole-request deadline, bounded writes, shutdown never waits on a
//! stuck client), and the per-core connection cap.
//!
//! Every test is decided by what the server did (its buffer high-water
//! mark, the bytes between its flushes, how its task ended), not by how long
//! something took: the timeouts involved are short, and the test-wide guard
//! (20 s) is far longer than any of them but shorter than the limits a
//! missing bound would fall back to.

mod common;
use common::run;
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream, UnixStream};
use std::cell::{Cell, RefCell};
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;
use themis_io::connection::{
    buffer_usage, reset_buffer_peak, ProtocolError, INITIAL_OUT_BUFFER, INITIAL_READ_BUFFER,
    PIPELINE_OUTPUT_LIMIT,
};
use themis_io::listener::{refuse, ConnectionSlots};
use themis_io::{
    serve_connection, ConnectionLimits, Handler, PeerIdentity, Request, Response, ShutdownSignal,
    StreamOut, Transport,
};

/// `/echo` answers with the body, `/big?N` with N bytes, anything else `ok`.
#[derive(Default)]
struct TestHandler {
    calls: Cell<usize>,
}

impl<T: Transport> Handler<T> for TestHandler {
    type Stream = ();
    type Conn = ();

    async fn handle(
        &self,
        _conn: &mut (),
        req: &Request<'_>,
        resp: &mut Response<'_>,
    ) -> Option<()> {
        self.calls.set(self.calls.get() + 1);
        match req.path {
            "/echo" => resp.send(200, "application/octet-stream", req.body),
            "/big" => {
                let n: usize = req.query.parse().unwrap_or(0);
                resp.start(200, "application/octet-stream", n, &[]);
                let block = [b'x'; 4096];
                let mut left = n;
                while left > 0 {
                    let k = left.min(block.len());
                    resp.body(&block[..k]);
                    left -= k;
                }
            }
            _ => resp.send(200, "text/plain", b"ok"),
        }
        None
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

    async fn stream(&self, _state: (), _out: &mut StreamOut<'_, T>) {}
}

/// A socket that records how many bytes were written between flushes: one
/// entry per write of a batch of responses.
struct Recording {
    inner: UnixStream,
    pending: usize,
    batches: Rc<RefCell<Vec<usize>>>,
}

impl AsyncRead for Recording {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Recording {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.pending += n;
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        if r.is_ready() && self.pending > 0 {
            let n = std::mem::take(&mut self.pending);
            self.batches.borrow_mut().push(n);
        }
        r
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

impl Transport for Recording {
    fn peer(&self) -> PeerIdentity {
        PeerIdentity::default()
    }
}

type Task = glommio::task::JoinHandle<io::Result<()>>;

fn spawn_serve<T: Transport + 'static>(
    server: T,
    limits: ConnectionLimits,
    shutdown: ShutdownSignal,
) -> (Rc<TestHandler>, Task) {
    let handler = Rc::new(TestHandler::default());
    let h = handler.clone();
    let task =
        glommio::spawn_local(
            async move { serve_connection(server, &*h, &limits, &shutdown).await },
        )
        .detach();
    (handler, task)
}

async fn read_all<S: AsyncRead + Unpin>(client: &mut S) -> Vec<u8> {
    common::read_to_end(client).await
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

#[test]
fn announced_content_length_reserves_nothing() {
    run(|| async {
        reset_buffer_peak();
        let mut clients = Vec::new();
        let mut tasks = Vec::new();
        // The attack: 100 connections announce a 10 MiB body (the limit)
        // and send a few bytes of it.
        for _ in 0..100 {
            let (server, mut client) = UnixStream::pair().expect("socketpair");
            let (_h, task) =
                spawn_serve(server, ConnectionLimits::default(), ShutdownSignal::new());
            client
                .write_all(b"PUT /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10485760\r\n\r\n")
                .await
                .expect("head");
            client.write_all(&[b'a'; 1000]).await.expect("some body");
            clients.push(client);
            tasks.push(task);
        }
        // Hanging up ends every connection; each has gone through its
        // buffer sizing and a read by then.
        drop(clients);
        for t in tasks {
            t.await.expect("task").expect("serve");
        }
        let per_conn = INITIAL_READ_BUFFER + INITIAL_OUT_BUFFER;
        let usage = buffer_usage();
        assert!(
            usage.peak <= 100 * per_conn,
            "100 announced bodies held {} bytes of buffers",
            usage.peak
        );
        assert_eq!(usage.live, 0, "every connection gave its buffers back");

        // A body that does arrive grows the buffer with it, at most
        // doubling over what was received.
        reset_buffer_peak();
        let (server, mut client) = UnixStream::pair().expect("socketpair");
        let (_h, task) = spawn_serve(server, ConnectionLimits::default(), ShutdownSignal::new());
        client
            .write_all(b"PUT /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10485760\r\n\r\n")
            .await
            .expect("head");
        client.write_all(&[b'a'; 100_000]).await.expect("body");
        drop(client);
        task.await.expect("task").expect("serve");
        let peak = buffer_usage().peak;
        assert!(peak >= 100_000, "the received bytes were held: {peak}");
        assert!(peak <= 2 * 100_100 + INITIAL_OUT_BUFFER, "held {peak}");
    });
}

#[test]
fn trickled_body_is_cut_off_with_408() {
    run(|| async {
        let (server, mut client) = UnixStream::pair().expect("socketpair");
        let limits = ConnectionLimits {
            idle_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_millis(200),
            ..ConnectionLimits::default()
        };
        let (h, task) = spawn_serve(server, limits, ShutdownSignal::new());
        client
            .write_all(b"PUT /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n")
            .await
            .expect("head");
        // One body byte every 20 ms: each read comes well within the idle
        // timeout, and the body would take 20 s.
        let (mut reader, mut writer) = futures_lite::io::split(client);
        let trickle = glommio::spawn_local(async move {
            for _ in 0..1000 {
                if writer.write_all(b"a").await.is_err() {
                    break;
                }
                glommio::timer::sleep(Duration::from_millis(20)).await;
            }
        })
        .detach();
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while count(&answer, b"\"status_code\":408}") == 0 {
            let n = reader.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed without an answer");
            answer.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8(answer).expect("utf-8");
        assert!(
            text.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{text}"
        );
        assert!(text.contains("Connection: close\r\n"), "{text}");
        assert!(text.contains("\"code\":\"request_timeout\""), "{text}");
        assert_eq!(h.calls.get(), 0, "the handler never saw the request");
        drop(reader);
        task.await.expect("task").expect("serve");
        trickle.await;
    });
}

#[test]
fn trickled_head_is_closed() {
    run(|| async {
        let (server, client) = UnixStream::pair().expect("socketpair");
        let limits = ConnectionLimits {
            idle_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_millis(200),
            ..ConnectionLimits::default()
        };
        let (_h, task) = spawn_serve(server, limits, ShutdownSignal::new());
        let trickle_ended = Rc::new(Cell::new(false));
        let ended = trickle_ended.clone();
        let (mut reader, mut writer) = futures_lite::io::split(client);
        // A header line that never ends, one byte every 20 ms for 5 s.
        let trickle = glommio::spawn_local(async move {
            let _ = writer
                .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nX-Pad: ")
                .await;
            for _ in 0..250 {
                if writer.write_all(b"a").await.is_err() {
                    return;
                }
                glommio::timer::sleep(Duration::from_millis(20)).await;
            }
            ended.set(true);
        })
        .detach();
        task.await.expect("task").expect("serve");
        assert!(
            !trickle_ended.get(),
            "the connection was held as long as bytes kept coming"
        );
        assert_eq!(read_all(&mut reader).await, b"", "no answer to half a head");
        drop(reader);
        trickle.await;
    });
}

#[test]
fn pipelined_output_is_written_in_bounded_batches() {
    run(|| async {
        let (server, mut client) = UnixStream::pair().expect("socketpair");
        let batches = Rc::new(RefCell::new(Vec::new()));
        let server = Recording {
            inner: server,
            pending: 0,
            batches: batches.clone(),
        };
        let (_h, task) = spawn_serve(server, ConnectionLimits::default(), ShutdownSignal::new());
        // Ten requests for 300 KiB each in one write: 3 MiB of answers.
        let big = 300 << 10;
        let mut reqs = Vec::new();
        for i in 0..10 {
            let close = if i == 9 { "Connection: close\r\n" } else { "" };
            reqs.extend_from_slice(
                format!("GET /big?{big} HTTP/1.1\r\nHost: t\r\n{close}\r\n").as_bytes(),
            );
        }
        client.write_all(&reqs).await.expect("write");
        let all = read_all(&mut client).await;
        drop(client);
        task.await.expect("task").expect("serve");
        assert_eq!(count(&all, b"HTTP/1.1 200 OK\r\n"), 10);
        let batches = batches.borrow();
        assert!(batches.len() >= 3, "{batches:?}");
        for b in batches.iter() {
            assert!(*b <= PIPELINE_OUTPUT_LIMIT + big + 1024, "{batches:?}");
        }
        assert_eq!(batches.iter().sum::<usize>(), all.len());
    });
}

#[test]
fn small_pipelined_answers_go_out_in_one_write() {
    run(|| async {
        let (server, mut client) = UnixStream::pair().expect("socketpair");
        let batches = Rc::new(RefCell::new(Vec::new()));
        let server = Recording {
            inner: server,
            pending: 0,
            batches: batches.clone(),
        };
        let (_h, task) = spawn_serve(server, ConnectionLimits::default(), ShutdownSignal::new());
        client
            .write_all(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\n\r\nGET /c HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let all = read_all(&mut client).await;
        drop(client);
        task.await.expect("task").expect("serve");
        assert_eq!(count(&all, b"HTTP/1.1 200 OK\r\n"), 3);
        assert_eq!(*batches.borrow(), vec![all.len()]);
    });
}

#[test]
fn a_client_that_never_reads_is_dropped_after_the_write_timeout() {
    run(|| async {
        let (server, mut client) = UnixStream::pair().expect("socketpair");
        let limits = ConnectionLimits {
            write_timeout: Duration::from_millis(200),
            ..ConnectionLimits::default()
        };
        let (_h, task) = spawn_serve(server, limits, ShutdownSignal::new());
        // 8 MiB does not fit in the socket buffers; the client never reads.
        client
            .write_all(b"GET /big?8388608 HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .expect("write");
        let err = task
            .await
            .expect("task")
            .expect_err("the write cannot finish");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        drop(client);
    });
}

#[test]
fn shutdown_does_not_wait_on_a_client_that_never_reads() {
    run(|| async {
        let (server, mut client) = UnixStream::pair().expect("socketpair");
        // A write timeout longer than the whole test: only the shutdown can
        // end this write.
        let limits = ConnectionLimits {
            write_timeout: Duration::from_secs(600),
            ..ConnectionLimits::default()
        };
        let shutdown = ShutdownSignal::new();
        let (h, task) = spawn_serve(server, limits, shutdown.clone());
        client
            .write_all(b"GET /big?8388608 HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .expect("write");
        while h.calls.get() == 0 {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        shutdown.fire();
        let err = task
            .await
            .expect("task")
            .expect_err("the write cannot finish");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        drop(client);
    });
}

#[test]
fn an_idle_connection_gives_large_buffers_back() {
    run(|| async {
        reset_buffer_peak();
        let (server, mut client) = UnixStream::pair().expect("socketpair");
        let (_h, task) = spawn_serve(server, ConnectionLimits::default(), ShutdownSignal::new());
        let body = vec![b'z'; 1 << 20];
        client
            .write_all(
                format!(
                    "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            )
            .await
            .expect("head");
        client.write_all(&body).await.expect("body");
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        while got.len() < body.len() || !got.ends_with(b"zzzz") {
            let n = client.read(&mut buf).await.expect("read");
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        // A second, small request: answering it means the server went idle
        // in between.
        client
            .write_all(b"GET /small HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .expect("small");
        let mut small = Vec::new();
        while !small.ends_with(b"ok") {
            let n = client.read(&mut buf).await.expect("read");
            assert!(n > 0);
            small.extend_from_slice(&buf[..n]);
        }
        let usage = buffer_usage();
        assert!(
            usage.peak >= 2 << 20,
            "the large request grew buffers: {usage:?}"
        );
        assert!(
            usage.live <= 2 * (INITIAL_READ_BUFFER + INITIAL_OUT_BUFFER),
            "the idle connection still holds {usage:?}"
        );
        drop(client);
        task.await.expect("task").expect("serve");
    });
}

#[test]
fn connections_over_the_cap_are_refused_with_503() {
    run(|| async {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let slots = ConnectionSlots::new(2);
        let refused = Rc::new(Cell::new(0usize));
        let (s, r) = (slots.clone(), refused.clone());
        glommio::spawn_local(async move {
            let handler = Rc::new(TestHandler::default());
            while let Ok(stream) = listener.accept().await {
                match s.try_acquire() {
                    Some(slot) => {
                        let h = handler.clone();
                        glommio::spawn_local(async move {
                            let limits = ConnectionLimits::default();
                            let _ = serve_connection(stream, &*h, &limits, &ShutdownSignal::new())
                                .await;
                            drop(slot);
                        })
                        .detach();
                    }
                    None => {
                        r.set(r.get() + 1);
                        refuse(stream, Duration::from_secs(1)).await;
                    }
                }
            }
        })
        .detach();

        async fn ask(c: &mut TcpStream) -> Vec<u8> {
            c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                .await
                .expect("write");
            let mut out = Vec::new();
            let mut buf = [0u8; 1024];
            while !out.ends_with(b"ok") {
                let n = c.read(&mut buf).await.expect("read");
                assert!(n > 0, "{}", String::from_utf8_lossy(&out));
                out.extend_from_slice(&buf[..n]);
            }
            out
        }
        let mut a = TcpStream::connect(addr).await.expect("a");
        let mut b = TcpStream::connect(addr).await.expect("b");
        assert!(ask(&mut a).await.starts_with(b"HTTP/1.1 200 OK"));
        assert!(ask(&mut b).await.starts_with(b"HTTP/1.1 200 OK"));
        assert_eq!(slots.open(), 2);

        let mut c = TcpStream::connect(addr).await.expect("c");
        let refusal = String::from_utf8(read_all(&mut c).await).expect("utf-8");
        assert!(
            refusal.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{refusal}"
        );
        assert!(refusal.contains("\r\nRetry-After: 1\r\n"), "{refusal}");
        assert!(refusal.ends_with("\"status_code\":503}"), "{refusal}");
        assert_eq!(refused.get(), 1);

        // A connection that leaves frees its slot for the next one.
        drop(a);
        while slots.open() > 1 {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        let mut d = TcpStream::connect(addr).await.expect("d");
        assert!(ask(&mut d).await.starts_with(b"HTTP/1.1 200 OK"));
        assert_eq!(refused.get(), 1);
        drop((b, d));
    });
}

/// Sends `request` on a fresh connection and returns the whole answer.
async fn exchange(request: &[u8]) -> String {
    let (server, mut client) = UnixStream::pair().expect("socketpair");
    let (_h, task) = spawn_serve(server, ConnectionLimits::default(), ShutdownSignal::new());
    client.write_all(request).await.expect("write");
    client.close().await.expect("half-close");
    let all = read_all(&mut client).await;
    drop(client);
    task.await.expect("task").expect("serve");
    String::from_utf8(all).expect("utf-8")
}

#[test]
fn framing_is_strict() {
    run(|| async {
        let cases: &[(&[u8], &str)] = &[
            // Transfer codings: exactly `chunked`, once.
            (b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: identity\r\n\r\n", "501"),
            (b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "501"),
            (b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", "501"),
            (
                b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                "400",
            ),
            // Both framings, or a repeated length (even an equal one).
            (
                b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                "400",
            ),
            (
                b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
                "400",
            ),
            (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3, 3\r\n\r\nabc", "400"),
            // Chunk grammar.
            (
                b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n;x\r\n\r\n0\r\n\r\n",
                "400",
            ),
            (
                b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3;a\x01\r\nabc\r\n0\r\n\r\n",
                "400",
            ),
            (
                b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX: 1\n\r\n",
                "400",
            ),
            // Host: exactly one in HTTP/1.1, at most one in HTTP/1.0.
            (b"GET / HTTP/1.1\r\n\r\n", "400"),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "400"),
            (b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", "400"),
            (b"GET / HTTP/1.0\r\n\r\n", "200"),
            // HTTP/1.0 has no transfer codings.
            (
                b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                "400",
            ),
            // And the well-formed forms still work.
            (
                b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: Chunked\r\nConnection: close\r\n\r\n3;a=b\r\nabc\r\n0\r\nX: 1\r\n\r\n",
                "200",
            ),
            (
                b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
                "200",
            ),
        ];
        for (request, status) in cases {
            let answer = exchange(request).await;
            assert!(
                answer.starts_with(&format!("HTTP/1.1 {status} ")),
                "{:?} -> {answer}",
                String::from_utf8_lossy(request)
            );
        }
    });
}

#[test]
fn http10_keeps_alive_only_when_asked_and_says_so() {
    run(|| async {
        // Asked: both answered, the first says keep-alive.
        let answer = exchange(
            b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.0\r\n\r\nGET / HTTP/1.0\r\n\r\n",
        )
        .await;
        assert_eq!(count(answer.as_bytes(), b"HTTP/1.1 200 OK"), 2, "{answer}");
        assert_eq!(
            count(answer.as_bytes(), b"Connection: keep-alive\r\n"),
            1,
            "{answer}"
        );
        assert_eq!(
            count(answer.as_bytes(), b"Connection: close\r\n"),
            1,
            "{answer}"
        );
        // Not asked: one answer, then close.
        let answer = exchange(b"GET / HTTP/1.0\r\n\r\nGET / HTTP/1.0\r\n\r\n").await;
        assert_eq!(count(answer.as_bytes(), b"HTTP/1.1 200 OK"), 1, "{answer}");
        assert!(answer.contains("Connection: close\r\n"), "{answer}");
    });
}

#[test]
fn close_wins_in_connection() {
    run(|| async {
        for header in ["close, keep-alive", "keep-alive, close"] {
            let request =
                format!("GET / HTTP/1.1\r\nHost: t\r\nConnection: {header}\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n");
            let answer = exchange(request.as_bytes()).await;
            assert_eq!(count(answer.as_bytes(), b"HTTP/1.1 200 OK"), 1, "{answer}");
            assert!(answer.contains("Connection: close\r\n"), "{answer}");
        }
    });
}

#[test]
fn a_body_of_one_byte_chunks_trickling_in_is_decoded() {
    run(|| async {
        let (server, mut client) = UnixStream::pair().expect("socketpair");
        let (_h, task) = spawn_serve(server, ConnectionLimits::default(), ShutdownSignal::new());
        client
            .write_all(
                b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            )
            .await
            .expect("head");
        // Each chunk in its own write, so the server decodes across reads.
        for i in 0..2000u32 {
            let c = b'a' + (i % 26) as u8;
            client
                .write_all(&[b'1', b'\r', b'\n', c, b'\r', b'\n'])
                .await
                .expect("chunk");
        }
        client.write_all(b"0\r\n\r\n").await.expect("last chunk");
        let all = read_all(&mut client).await;
        drop(client);
        task.await.expect("task").expect("serve");
        let expect: Vec<u8> = (0..2000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let body = all.split(|b| *b == b'\n').next_back().expect("body");
        assert!(all.starts_with(b"HTTP/1.1 200 OK\r\n"));
        assert_eq!(body, &expect[..]);
    });
}
