//! The listening socket: bound before anything is served, shared between
//! serving processes with `--processes`.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// Connections the kernel queues for `accept` while the server is busy
/// (capped by `net.core.somaxconn`, 4096 on current kernels). Thousands of
/// clients connecting at once overflow tokio's default of 1024, and each
/// overflowed one waits a second for its SYN to be retried.
const LISTEN_BACKLOG: u32 = 4096;

/// Listens on `addr` with [`LISTEN_BACKLOG`]; with `shared`, on the port a
/// supervisor holds (see [`reserve`]).
pub fn bind(addr: SocketAddr, shared: bool) -> std::io::Result<TcpListener> {
    socket(addr, shared)?.listen(LISTEN_BACKLOG)
}

/// Binds `addr` without listening, for serving processes to listen on
/// together (`--processes`): each listens with `SO_REUSEPORT`, and the kernel
/// spreads new connections evenly between them by a hash of the client's
/// address. (With one socket shared by all, whichever process woke first
/// accepted a whole burst of connections and the other core idled.) Only
/// listening sockets are given connections, so this one never is; it keeps
/// the port while a serving process restarts, and the kernel lets only
/// processes of the same user join it.
///
/// Any socket with `SO_REUSEPORT` of that user may join, another server of
/// ours started on the same address too, which would then take half of the
/// connections unnoticed. So the address is first bound without it: that
/// fails while anyone listens there, as a single process's bind does.
pub fn reserve(addr: SocketAddr) -> std::io::Result<TcpSocket> {
    let free = socket(addr, false)?.local_addr()?;
    socket(free, true)
}

fn socket(addr: SocketAddr, shared: bool) -> std::io::Result<TcpSocket> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As std and tokio do on Unix: a restart can bind while old connections
    // linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(shared)?;
    socket.bind(addr)?;
    Ok(socket)
}
