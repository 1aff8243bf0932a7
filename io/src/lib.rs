//! THEMIS network layer.
//!
//! Everything between the socket and the request handler lives here, and
//! nothing about entities, shards or RocksDB does:
//!
//! * [`listener`] opens the `SO_REUSEPORT` listening sockets (one per core)
//!   on the main thread, so a busy port fails start-up before any executor
//!   runs.
//! * [`request`] is a borrowed view of one parsed HTTP/1.1 request, with the
//!   connection's [`PeerIdentity`].
//! * [`response`] writes status line, headers and body straight into the
//!   connection's reused output buffer.
//! * [`connection`] drives one keep-alive connection over any [`Transport`]:
//!   it parses every pipelined request already in the read buffer, lets the
//!   [`Handler`] answer each into the output buffer, and flushes all answers
//!   with one write.
//! * [`stream`] carries a streaming response (Server-Sent Events) after its
//!   head: chunks, stall timeouts, and noticing a client that hangs up.
//! * [`transport`] is what a connection runs over: the [`Transport`] trait
//!   (read, write, stop writing, describe the peer), implemented for
//!   glommio's TCP and Unix sockets, and the [`PeerIdentity`] every request
//!   carries. Connections and streams are generic over it, so TLS plugs in
//!   as another transport.
//! * [`shutdown`] is the per-core signal that stops accepting and closes idle
//!   connections during a graceful stop.
//!
//! The layer is per-core by construction: nothing here is `Send`, no lock is
//! taken, and buffers are allocated once per connection and reused.

pub mod chunked;
pub mod connection;
pub mod date;
pub mod listener;
pub mod request;
pub mod response;
pub mod shutdown;
pub mod stream;
pub mod transport;

pub use connection::{serve_connection, ConnectionLimits, Handler};
pub use request::{Method, Request};
pub use response::{LentOutput, Response};
pub use shutdown::ShutdownSignal;
pub use stream::{StreamEnd, StreamOut};
pub use transport::{PeerIdentity, Transport};
