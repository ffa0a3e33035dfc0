//! Many connections opened at once from one thread, one poll(2) waiting for them all, so
//! that no connection waits for a client thread to be scheduled: what is measured is the
//! server.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Starts `n` connects to `addr` at once and waits (until `limit`) for their handshakes: the
/// connections whose handshake completed (non-blocking), `None` for the others.
pub fn connect_all(addr: SocketAddr, n: usize, limit: Duration) -> Vec<Option<TcpStream>> {
    let start = Instant::now();
    let mut conns: Vec<Conn> = (0..n).map(|_| open(addr)).collect();
    while start.elapsed() < limit && conns.iter().any(|c| !c.connected) {
        let waiting: Vec<usize> = (0..n).filter(|&i| !conns[i].connected).collect();
        let mut fds: Vec<libc::pollfd> = waiting
            .iter()
            .map(|&i| libc::pollfd {
                fd: conns[i].stream.as_ref().map_or(-1, |s| s.as_raw_fd()),
                events: libc::POLLOUT,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of pollfd of the length given.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 50) };
        for (&i, pfd) in waiting.iter().zip(&fds) {
            if pfd.revents & libc::POLLOUT != 0 {
                let stream = conns[i].stream.as_ref().expect("opened");
                assert!(
                    matches!(stream.take_error(), Ok(None)),
                    "connection {i} failed"
                );
                conns[i].connected = true;
            }
        }
    }
    conns
        .into_iter()
        .map(|c| c.stream.filter(|_| c.connected))
        .collect()
}

struct Conn {
    stream: Option<TcpStream>,
    connected: bool,
}

/// A non-blocking connect to `addr` (its completion is seen by poll).
fn open(addr: SocketAddr) -> Conn {
    // SAFETY: plain socket(2); the descriptor is owned by the TcpStream made from it.
    let stream = unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
        <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd)
    };
    let SocketAddr::V4(v4) = addr else {
        panic!("an IPv4 address, got {addr}")
    };
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*v4.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `sin` is a valid sockaddr_in of the length given.
    let rc = unsafe {
        libc::connect(
            stream.as_raw_fd(),
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    let e = io::Error::last_os_error();
    assert!(
        rc == 0 || e.raw_os_error() == Some(libc::EINPROGRESS),
        "connect {addr}: {e}"
    );
    let _ = stream.set_nodelay(true);
    Conn {
        stream: Some(stream),
        connected: false,
    }
}
