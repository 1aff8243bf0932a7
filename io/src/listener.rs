//! Listening sockets.
//!
//! Every executor accepts on its own socket bound to the same address with
//! `SO_REUSEPORT`, so the kernel spreads new connections over the cores
//! without a shared accept queue. The sockets are created here, on the main
//! thread, before any executor starts: a port in use or a bad address is a
//! start-up error with a clear message, and `port: 0` resolves to one
//! ephemeral port that every executor then shares.

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

fn bind_one(addr: SocketAddr, backlog: i32) -> io::Result<BoundListener> {
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
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
    let first = bind_one(addr, backlog)?;
    let shared = first.addr;
    out.push(first);
    for _ in 1..count {
        out.push(bind_one(shared, backlog)?);
    }
    Ok(out)
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
