//! Streaming responses (Server-Sent Events).
//!
//! A handler that wants to stream answers the request with
//! [`Response::start_stream`](crate::Response::start_stream) (a head with
//! `Transfer-Encoding: chunked` and no length) and returns a stream state;
//! the connection flushes the head and hands its transport to
//! [`Handler::stream`](crate::Handler::stream) through a [`StreamOut`].
//!
//! `StreamOut<T>` is generic over the connection's [`Transport`] (plain TCP
//! by default), so a TLS stream is written the same way, without dynamic
//! dispatch. It is all the handler may do with the transport:
//! * append bytes to the pending chunk and [`flush`](StreamOut::flush) them
//!   as one HTTP chunk (one write and a flush), bounded by a stall timeout
//!   so a client that stops reading cannot pin the stream forever;
//! * [`wait`](StreamOut::wait) for something (the next event, a heartbeat
//!   deadline) while also watching the transport, so a client that hangs up is
//!   noticed at once rather than at the next write, and a graceful shutdown
//!   ends the stream.
//!
//! When the handler returns, the connection writes the terminating
//! zero-length chunk (best effort) and closes.

use crate::connection::send;
use crate::shutdown::ShutdownSignal;
use crate::transport::Transport;
use futures_lite::AsyncReadExt;
use glommio::net::TcpStream;
use std::future::Future;
use std::time::Duration;

/// Why a stream cannot go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// The client closed the connection (or it failed).
    Closed,
    /// A write did not complete within the stall timeout.
    Stalled,
    /// The server is shutting down.
    Shutdown,
}

/// The transport side of a streaming response.
pub struct StreamOut<'a, T = TcpStream> {
    stream: &'a mut T,
    pending: Vec<u8>,
    frame: Vec<u8>,
    scratch: &'a mut [u8],
    shutdown: &'a ShutdownSignal,
    closed: bool,
    /// Chunked framing (HTTP/1.1); HTTP/1.0 gets the raw bytes, and the
    /// close ends the body.
    chunked: bool,
}

impl<'a, T: Transport> StreamOut<'a, T> {
    pub(crate) fn new(
        stream: &'a mut T,
        scratch: &'a mut [u8],
        shutdown: &'a ShutdownSignal,
        chunked: bool,
    ) -> Self {
        StreamOut {
            stream,
            pending: Vec::with_capacity(4096),
            frame: Vec::with_capacity(4096),
            scratch,
            shutdown,
            closed: false,
            chunked,
        }
    }

    /// The bytes of the next chunk (append to it, then [`Self::flush`]).
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.pending
    }

    /// Whether the server is shutting down.
    pub fn shutting_down(&self) -> bool {
        self.shutdown.is_fired()
    }

    /// Sends the pending bytes as one chunk. A write that does not finish
    /// within `stall` ends the stream with [`StreamEnd::Stalled`].
    pub async fn flush(&mut self, stall: Duration) -> Result<(), StreamEnd> {
        if self.closed {
            return Err(StreamEnd::Closed);
        }
        if self.pending.is_empty() {
            return Ok(());
        }
        self.frame.clear();
        if self.chunked {
            let mut hex = [0u8; 16];
            self.frame
                .extend_from_slice(format_hex(self.pending.len(), &mut hex));
            self.frame.extend_from_slice(b"\r\n");
            self.frame.extend_from_slice(&self.pending);
            self.frame.extend_from_slice(b"\r\n");
        } else {
            self.frame.extend_from_slice(&self.pending);
        }
        self.pending.clear();
        let write = send(self.stream, &self.frame);
        match glommio::timer::timeout(stall, async { Ok(write.await) }).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => {
                self.closed = true;
                Err(StreamEnd::Closed)
            }
            Err(_) => {
                // Part of the chunk may be on the wire: the stream cannot
                // be continued, not even with a final comment.
                self.closed = true;
                Err(StreamEnd::Stalled)
            }
        }
    }

    /// Waits for `until` while watching the socket: ends early with
    /// [`StreamEnd::Closed`] when the client hangs up and with
    /// [`StreamEnd::Shutdown`] when the server stops. Bytes the client sends
    /// meanwhile are discarded.
    pub async fn wait<F: Future>(&mut self, until: F) -> Result<F::Output, StreamEnd> {
        if self.closed {
            return Err(StreamEnd::Closed);
        }
        if self.shutdown.is_fired() {
            return Err(StreamEnd::Shutdown);
        }
        let shutdown = self.shutdown;
        let stream = &mut *self.stream;
        let scratch = &mut *self.scratch;
        let watch = async {
            loop {
                match stream.read(scratch).await {
                    Ok(0) | Err(_) => return Err(StreamEnd::Closed),
                    Ok(_) => continue,
                }
            }
        };
        let stop = async {
            shutdown.wait().await;
            Err(StreamEnd::Shutdown)
        };
        let result = futures_lite::future::or(
            async { Ok(until.await) },
            futures_lite::future::or(watch, stop),
        )
        .await;
        if matches!(result, Err(StreamEnd::Closed)) {
            self.closed = true;
        }
        result
    }

    /// Writes the last chunk (best effort, short timeout).
    pub(crate) async fn finish(&mut self) {
        if self.closed {
            return;
        }
        let stall = Duration::from_millis(500);
        if self.flush(stall).await.is_err() || !self.chunked {
            return;
        }
        let end = send(self.stream, b"0\r\n\r\n");
        let _ = glommio::timer::timeout(stall, async { Ok(end.await) }).await;
    }
}

fn format_hex(n: usize, buf: &mut [u8; 16]) -> &[u8] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut i = buf.len();
    let mut v = n;
    loop {
        i -= 1;
        buf[i] = DIGITS[v & 15];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    &buf[i..]
}

#[cfg(test)]
mod tests {
    use super::format_hex;

    #[test]
    fn hex_lengths() {
        let mut b = [0u8; 16];
        assert_eq!(format_hex(0, &mut b), b"0");
        assert_eq!(format_hex(255, &mut b), b"ff");
        assert_eq!(format_hex(4096, &mut b), b"1000");
    }
}
