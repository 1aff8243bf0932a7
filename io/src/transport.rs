//! The byte stream a connection is served over.
//!
//! The connection loop ([`serve_connection`](crate::serve_connection)), the
//! streaming responses ([`StreamOut`](crate::StreamOut)) and the lingering
//! close only need to read, write, stop writing, and know who is on the
//! other end. [`Transport`] is exactly that, so plain TCP and TLS (or an
//! in-memory pipe in tests) run through the same, monomorphised code: no
//! dynamic dispatch per read or write.
//!
//! The peer is described once per connection by a [`PeerIdentity`] (its
//! socket address and, for a transport that authenticates clients, the
//! client certificate's subject). Every [`Request`](crate::Request) on the
//! connection borrows that one value, so knowing the peer costs nothing per
//! request.

use futures_lite::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use std::future::Future;
use std::io;
use std::net::SocketAddr;

/// Who is on the other end of a connection.
///
/// Built once per connection by [`Transport::peer`]; requests borrow it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerIdentity {
    /// The peer's socket address, when the transport has one and it is
    /// still known (a client that already hung up has none).
    pub addr: Option<SocketAddr>,
    /// The subject of the client certificate the transport verified (mutual
    /// TLS). `None` on a transport that does not authenticate clients.
    pub client_cert_subject: Option<Box<str>>,
}

impl PeerIdentity {
    /// A peer known by its address only (plain TCP).
    pub fn from_addr(addr: Option<SocketAddr>) -> Self {
        PeerIdentity {
            addr,
            client_cert_subject: None,
        }
    }

    /// Adds the subject of a verified client certificate.
    pub fn with_client_cert_subject(mut self, subject: impl Into<Box<str>>) -> Self {
        self.client_cert_subject = Some(subject.into());
        self
    }

    /// The verified client certificate's subject, if any.
    pub fn client_cert_subject(&self) -> Option<&str> {
        self.client_cert_subject.as_deref()
    }

    /// Whether the transport authenticated the client.
    pub fn is_authenticated(&self) -> bool {
        self.client_cert_subject.is_some()
    }
}

/// A connection's byte stream: reads, writes, and what it knows about the
/// peer.
///
/// The read and write sides are the futures-io traits (re-exported by
/// `futures-lite`), which glommio's sockets implement; a TLS stream wrapping
/// a socket implements them too. The connection flushes after each batch of
/// writes, so a transport may buffer (TLS records) without delaying answers.
pub trait Transport: AsyncRead + AsyncWrite + Unpin {
    /// Describes the peer. Called once, when the connection starts being
    /// served (for TLS: after the handshake, once the client certificate is
    /// known).
    fn peer(&self) -> PeerIdentity;

    /// Stops sending, leaving the read side open: the first half of a
    /// lingering close, after which the connection drains what the client
    /// still sends so that it reads our last answer instead of a reset.
    ///
    /// The default is [`AsyncWrite::poll_close`], which flushes and then
    /// closes the write side (for TLS that includes `close_notify`).
    fn close_write(&mut self) -> impl Future<Output = io::Result<()>> {
        self.close()
    }
}

impl Transport for glommio::net::TcpStream {
    fn peer(&self) -> PeerIdentity {
        PeerIdentity::from_addr(self.peer_addr().ok())
    }

    /// `shutdown(SHUT_WR)`: sends FIN, keeps reading.
    async fn close_write(&mut self) -> io::Result<()> {
        Ok(self.shutdown(std::net::Shutdown::Write).await?)
    }
}

impl Transport for glommio::net::UnixStream {
    /// A Unix socket peer has no inet address.
    fn peer(&self) -> PeerIdentity {
        PeerIdentity::default()
    }

    /// `shutdown(SHUT_WR)`: signals end of stream, keeps reading.
    async fn close_write(&mut self) -> io::Result<()> {
        Ok(self.shutdown(std::net::Shutdown::Write).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_builders() {
        let addr: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let p = PeerIdentity::from_addr(Some(addr));
        assert_eq!(p.addr, Some(addr));
        assert!(!p.is_authenticated());
        assert_eq!(p.client_cert_subject(), None);
        let p = p.with_client_cert_subject("CN=client-a");
        assert!(p.is_authenticated());
        assert_eq!(p.client_cert_subject(), Some("CN=client-a"));
        assert_eq!(PeerIdentity::default().addr, None);
    }
}
