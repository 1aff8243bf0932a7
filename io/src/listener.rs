//! Listening sockets.
//!
//! Every executor accepts on its own socket bound to the same address with
//! `SO_REUSEPORT`, so the kernel spreads new connections over the cores
//! without a shared accept queue. The sockets are created here, on the main
//! thread, before any executor starts: a port in use or a bad address is a
//! start-up error with a clear message, and `port: 0` resolves to one
//! ephemeral port that every executor then shares.
//!
//! A core may also get a port of its own ([`bind_exclusive`]: no
//! `SO_REUSEPORT`, so no other socket or process can share it).

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{IntoRawFd, RawFd};

/// One bound, listening socket, not yet owned by an executor.
#[derive(Debug)]
pub struct BoundListener {
    socket: Socket,
    addr: SocketAddr,
}

impl BoundListener {
    /// The address the socket listens on (with the real port if 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Hands the socket to the calling glommio executor.
    ///
    /// Must be called from inside the executor that will accept on it.
    pub fn into_glommio(self) -> glommio::net::TcpListener {
        use std::os::fd::FromRawFd;
        let fd: RawFd = self.socket.into_raw_fd();
        // SAFETY: `fd` is a listening TCP socket that this value owned alone;
        // ownership moves into the glommio listener here.
        unsafe { glommio::net::TcpListener::from_raw_fd(fd) }
    }
}

/// Resolves `host:port` to one socket address.
pub fn resolve(host: &str, port: u16) -> io::Result<SocketAddr> {
    (host, port).to_socket_addrs()?.next().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("host {host:?} resolves to no address"),
        )
    })
}

fn bind_one(addr: SocketAddr, backlog: i32, reuse_port: bool) -> io::Result<BoundListener> {
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(reuse_port)?;
    socket.set_nodelay(true)?;
    socket.bind(&SockAddr::from(addr))?;
    socket.listen(backlog)?;
    let local = socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("listener has no inet address"))?;
    Ok(BoundListener {
        socket,
        addr: local,
    })
}

/// Binds `count` listeners on `addr` with `SO_REUSEPORT`.
///
/// With port 0 the first socket picks the ephemeral port and the others bind
/// to that same port.
///
/// `SO_REUSEPORT` would also let a *second* server process join the port and
/// silently take part of the connections; so the port is first probed with a
/// plain bind, which fails while anyone else listens on it.
pub fn bind_reuseport(
    addr: SocketAddr,
    count: usize,
    backlog: i32,
) -> io::Result<Vec<BoundListener>> {
    if addr.port() != 0 {
        probe_with_grace(addr)?;
    }
    let mut out = Vec::with_capacity(count);
    let first = bind_one(addr, backlog, true)?;
    let shared = first.addr;
    out.push(first);
    for _ in 1..count {
        out.push(bind_one(shared, backlog, true)?);
    }
    Ok(out)
}

/// Binds one listener on `addr` that no other socket may share (no
/// `SO_REUSEPORT`): a core's own port, accepted by that core alone. Port 0
/// picks an ephemeral port.
pub fn bind_exclusive(addr: SocketAddr, backlog: i32) -> io::Result<BoundListener> {
    if addr.port() != 0 {
        probe_with_grace(addr)?;
    }
    bind_one(addr, backlog, false)
}

/// Probes the port, allowing a previous instance a moment to let go of it:
/// a process that just exited can hold its listening socket for some
/// milliseconds while the kernel tears down its io_uring (a pending accept
/// keeps a reference), which is what an immediate restart runs into.
fn probe_with_grace(addr: SocketAddr) -> io::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        match port_available(addr) {
            Err(e)
                if e.kind() == io::ErrorKind::AddrInUse && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// Whether `addr` could be bound right now (used by `--validate`).
pub fn port_available(addr: SocketAddr) -> io::Result<()> {
    let socket = Socket::new(
        if addr.is_ipv6() {
            Domain::IPV6
        } else {
            Domain::IPV4
        },
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&SockAddr::from(addr))?;
    socket.listen(1)?;
    Ok(())
}

/// The per-core cap on open connections (`server.max_connections`, split
/// over the cores).
///
/// The accept loop asks for a [`ConnectionSlot`] for every accepted socket
/// and serves the connection while holding it; when none is free the socket
/// is [`refuse`]d at once, so a flood of connections costs a few hundred
/// bytes each instead of a task and buffers. Per core, not `Send`.
#[derive(Clone, Debug)]
pub struct ConnectionSlots {
    inner: std::rc::Rc<SlotsInner>,
}

#[derive(Debug)]
struct SlotsInner {
    max: usize,
    open: std::cell::Cell<usize>,
}

impl ConnectionSlots {
    /// At most `max` open connections; 0 means unlimited.
    pub fn new(max: usize) -> Self {
        ConnectionSlots {
            inner: std::rc::Rc::new(SlotsInner {
                max,
                open: std::cell::Cell::new(0),
            }),
        }
    }

    /// One core's share of `total` connections over `cores` cores (rounded
    /// up, so the cores together allow at least `total`); 0 means unlimited.
    pub fn per_core(total: usize, cores: usize) -> Self {
        Self::new(total.div_ceil(cores.max(1)))
    }

    /// A slot for one more connection, or `None` when all are taken.
    pub fn try_acquire(&self) -> Option<ConnectionSlot> {
        let open = self.inner.open.get();
        if self.inner.max != 0 && open >= self.inner.max {
            return None;
        }
        self.inner.open.set(open + 1);
        Some(ConnectionSlot {
            inner: self.inner.clone(),
        })
    }

    /// Connections holding a slot now.
    pub fn open(&self) -> usize {
        self.inner.open.get()
    }

    /// The cap (0: unlimited).
    pub fn max(&self) -> usize {
        self.inner.max
    }
}

/// One open connection's place under the cap; freed on drop.
#[derive(Debug)]
pub struct ConnectionSlot {
    inner: std::rc::Rc<SlotsInner>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.inner.open.set(self.inner.open.get().saturating_sub(1));
    }
}

/// The answer to a connection over the cap, in the server's JSON error
/// format: 503, retry in a second, and the connection closes.
pub const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
Server: themis\r\n\
Content-Type: application/json\r\n\
Retry-After: 1\r\n\
Connection: close\r\n\
Content-Length: 91\r\n\
\r\n\
{\"error\":true,\"code\":\"unavailable\",\"message\":\"too many open connections\",\"status_code\":503}";

/// Refuses a connection over the cap: writes [`REFUSAL`] (without reading
/// the request), stops writing and closes, all within `timeout`.
pub async fn refuse<T: crate::Transport>(mut stream: T, timeout: std::time::Duration) {
    use futures_lite::AsyncWriteExt;
    let answer = async {
        if stream.write_all(REFUSAL).await.is_ok() && stream.flush().await.is_ok() {
            let _ = stream.close_write().await;
        }
        Ok(())
    };
    let _ = glommio::timer::timeout(timeout, answer).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_is_well_framed() {
        let text = std::str::from_utf8(REFUSAL).expect("ascii");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .and_then(|v| v.parse().ok())
            .expect("a Content-Length");
        assert_eq!(len, body.len());
        assert!(head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(head.contains("\r\nRetry-After: 1\r\n"));
        assert!(body.contains("\"status_code\":503"));
    }

    #[test]
    fn an_exclusive_port_cannot_be_shared() {
        let own = bind_exclusive("127.0.0.1:0".parse().unwrap(), 16).expect("bind");
        let addr = own.local_addr();
        assert_ne!(addr.port(), 0);
        assert!(bind_one(addr, 16, false).is_err());
        assert!(
            bind_one(addr, 16, true).is_err(),
            "SO_REUSEPORT cannot join it"
        );
        drop(own);
        assert!(bind_exclusive(addr, 16).is_ok());
    }

    #[test]
    fn slots_cap_and_free() {
        let slots = ConnectionSlots::per_core(5, 2);
        assert_eq!(slots.max(), 3);
        let a = slots.try_acquire().expect("1");
        let _b = slots.try_acquire().expect("2");
        let _c = slots.try_acquire().expect("3");
        assert!(slots.try_acquire().is_none());
        drop(a);
        assert_eq!(slots.open(), 2);
        assert!(slots.try_acquire().is_some());
        let unlimited = ConnectionSlots::per_core(0, 4);
        let held: Vec<_> = (0..1000).filter_map(|_| unlimited.try_acquire()).collect();
        assert_eq!(held.len(), 1000);
    }
}
