//! The connection loop (request head parsing, framing, chunked bodies,
//! pipelining) on arbitrary bytes, over an in-memory transport: it must
//! never panic, must finish without waiting (every read is ready), and
//! answers every request with exactly one response. The first byte picks
//! the size of each read; the second whether small limits apply.
#![no_main]

use futures_lite::io::{AsyncRead, AsyncWrite};
use libfuzzer_sys::fuzz_target;
use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use themis_io::connection::ProtocolError;
use themis_io::{
    serve_connection, ConnectionLimits, Handler, PeerIdentity, Request, Response,
    ShutdownSignal, StreamOut, Transport,
};

/// Reads hand out `input` at most `step` bytes at a time, then end of
/// stream; writes are counted.
struct Script<'a> {
    input: &'a [u8],
    step: usize,
    written: usize,
}

impl AsyncRead for Script<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let n = self.input.len().min(self.step).min(buf.len());
        buf[..n].copy_from_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for Script<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.written += buf.len();
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Transport for &mut Script<'_> {
    fn peer(&self) -> PeerIdentity {
        PeerIdentity::default()
    }
}

#[derive(Default)]
struct Counter {
    handled: Cell<usize>,
    errors: Cell<usize>,
}

impl<T: Transport> Handler<T> for Counter {
    type Stream = ();
    type Conn = ();

    async fn handle(
        &self,
        _conn: &mut (),
        req: &Request<'_>,
        resp: &mut Response<'_>,
    ) -> Option<()> {
        self.handled.set(self.handled.get() + 1);
        let _ = (req.header("host"), req.query_pairs().count());
        resp.send(200, "text/plain", req.body);
        None
    }

    fn protocol_error(&self, _err: ProtocolError, resp: &mut Response<'_>) {
        self.errors.set(self.errors.get() + 1);
        resp.close_connection();
        resp.send(400, "text/plain", b"protocol");
    }

    async fn stream(&self, _state: (), _out: &mut StreamOut<'_, T>) {}
}

thread_local! {
    // The connection's timers need a glommio executor; one per thread.
    static EXECUTOR: glommio::LocalExecutor =
        glommio::LocalExecutorBuilder::default().make().expect("executor");
}

fuzz_target!(|data: &[u8]| {
    let [step, small, input @ ..] = data else {
        return;
    };
    let limits = if small & 1 == 1 {
        ConnectionLimits {
            max_head: 256,
            max_body: 256,
            ..ConnectionLimits::default()
        }
    } else {
        ConnectionLimits::default()
    };
    let mut script = Script {
        input,
        step: usize::from(*step).max(1),
        written: 0,
    };
    let handler = Counter::default();
    let shutdown = ShutdownSignal::new();
    EXECUTOR.with(|ex| {
        ex.run(async {
            let done = futures_lite::future::poll_once(serve_connection(
                &mut script,
                &handler,
                &limits,
                &shutdown,
            ))
            .await;
            assert!(done.is_some(), "waited although every read was ready");
        })
    });
    assert!(handler.errors.get() <= 1);
    if handler.handled.get() + handler.errors.get() > 0 {
        assert!(script.written > 0);
    }
});
