//! The listening socket: where it comes from, and how accepting on it stops without closing
//! a socket other processes still listen on.
//!
//! The socket is the one a predecessor handed over (handover.rs), else systemd's (socket
//! activation, `tribist.socket`), else one bound here. The first two outlive this process:
//! connections arriving while it goes wait in the backlog for the next process, or go to the
//! successor already accepting on the same socket. So stopping to accept must leave such a
//! socket listening, which tiny_http cannot do: it only stops its accept thread once accept
//! fails (see `Listener::stop_accepting`).
//!
//! A socket bound here listens with the backlog `tribist.socket` asks systemd for (`BACKLOG`),
//! not std's 128: past the backlog the kernel drops a connection's SYN, and its client waits a
//! whole second to send it again (a burst of 256 connections did).

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::thread;
use std::time::{Duration, Instant};

use crate::accept_watch::AcceptThread;
use crate::config::Config;
use crate::error::Error;
use crate::systemd;

/// The listen(2) backlog of a socket bound here: `Backlog=` of etc/tribist.socket. The kernel
/// caps it at net.core.somaxconn (4096 by default since Linux 5.4).
pub const BACKLOG: libc::c_int = 4096;

/// Where connections come from.
pub struct Listener {
    pub addr: SocketAddr,
    /// The descriptor tiny_http's accept thread uses.
    pub fd: RawFd,
    /// Our own handle on a socket we bound ourselves; `None` under socket activation.
    own: Option<TcpListener>,
    /// Where the socket came from, for the log.
    pub origin: &'static str,
}

impl Listener {
    /// The socket handed over by a predecessor, else systemd's, else one bound here.
    pub fn open(
        config: &Config,
        inherited: Option<TcpListener>,
    ) -> Result<(Listener, TcpListener), Error> {
        let bind_err = |source: Box<dyn std::error::Error + Send + Sync>| Error::Bind {
            addr: config.listen.to_string(),
            source,
        };
        let from_systemd = systemd::take_listener().map_err(|e| bind_err(e.into()))?;
        // A handed-over socket is shared with the predecessor (and maybe systemd): like
        // systemd's, it must stay listening when this process stops accepting.
        let origin = match (&inherited, &from_systemd) {
            (Some(_), _) => "socket handed over",
            (None, Some(_)) => "socket from systemd",
            (None, None) => "socket bound by itself",
        };
        let (listener, own) = match inherited.or(from_systemd) {
            Some(listener) => (listener, None),
            None => {
                let listener = bind(config.listen, BACKLOG).map_err(|e| bind_err(e.into()))?;
                let own = listener.try_clone().map_err(|e| bind_err(e.into()))?;
                (listener, Some(own))
            }
        };
        let addr = listener.local_addr().map_err(|e| bind_err(e.into()))?;
        if own.is_none() && addr != config.listen {
            log::warn!(
                "TRIBIST_LISTEN is {} but the {origin} listens on {addr}, which applies: under \
                 systemd the address is tribist.socket's, set by `make install LISTEN=ADDR:PORT` \
                 (/etc/systemd/system/tribist.socket.d/listen.conf); remove TRIBIST_LISTEN from \
                 /etc/tribist/env",
                config.listen
            );
        }
        let fd = listener.as_raw_fd();
        Ok((
            Listener {
                addr,
                fd,
                own,
                origin,
            },
            listener,
        ))
    }

    /// An address this process can connect to itself.
    pub fn local_target(&self) -> SocketAddr {
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(if addr.is_ipv4() {
                Ipv4Addr::LOCALHOST.into()
            } else {
                Ipv6Addr::LOCALHOST.into()
            });
        }
        addr
    }

    /// Makes tiny_http's accept thread stop for good, and waits (until `limit`) for it to end.
    ///
    /// A socket we bound and nobody else uses: shutdown(2) it; the kernel stops listening
    /// (new connections are refused) and the blocked accept fails. A socket from systemd, or
    /// one shared with a successor, must keep listening, so instead its descriptor number is
    /// pointed at a socket that cannot accept (dup2), and a connection to ourselves wakes the
    /// accept blocked on it: that accept returns one connection (served like any other), the
    /// next one fails and the thread ends. A successor accepting on the same socket may take
    /// that connection instead, so one is made every few milliseconds until the thread ends.
    /// Whatever arrives later goes to the successor, or waits in the backlog for the next
    /// process.
    pub fn stop_accepting(&self, shared: bool, accept: &AcceptThread, limit: Instant) {
        match (&self.own, shared) {
            (Some(own), false) => shut_down(own),
            _ => {
                self.detach();
                self.wake(accept, limit);
            }
        }
        accept.wait_ended(limit);
    }

    /// Points the accept thread's descriptor at a socket that cannot accept.
    fn detach(&self) {
        match UnixDatagram::unbound() {
            // SAFETY: both descriptors are open; dup2 atomically replaces `self.fd`, which
            // only tiny_http's accept thread uses.
            Ok(dummy) => {
                if unsafe { libc::dup2(dummy.as_raw_fd(), self.fd) } < 0 {
                    log::warn!(
                        "shutdown: cannot detach the listener: {}",
                        std::io::Error::last_os_error()
                    );
                }
            }
            Err(e) => log::warn!("shutdown: cannot detach the listener: {e}"),
        }
    }

    /// Connects to ourselves every few milliseconds until the accept thread ended or `limit`
    /// (once only when the thread is not known).
    fn wake(&self, accept: &AcceptThread, limit: Instant) {
        loop {
            let _ = TcpStream::connect_timeout(&self.local_target(), Duration::from_millis(200));
            if !accept.known() {
                return;
            }
            let poke = Instant::now() + Duration::from_millis(5);
            while accept.running() && Instant::now() < poke.min(limit) {
                thread::sleep(Duration::from_millis(1));
            }
            if !accept.running() || Instant::now() >= limit {
                return;
            }
        }
    }
}

/// A TCP socket listening on `addr` with `backlog`: what `TcpListener::bind` does (with
/// SO_REUSEADDR, as std sets it), but std's backlog is fixed at 128.
pub fn bind(addr: SocketAddr, backlog: libc::c_int) -> io::Result<TcpListener> {
    let check = |rc: libc::c_int| {
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    };
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket(2) returns a new descriptor, owned by `socket` from here on.
    let socket = unsafe {
        OwnedFd::from_raw_fd(check(libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
        ))?)
    };
    let fd = socket.as_raw_fd();
    let one: libc::c_int = 1;
    // SAFETY: `one` is a valid int of the length given.
    check(unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    let (storage, len) = sockaddr(addr);
    // SAFETY: `storage` holds a sockaddr of `len` bytes for the socket's family.
    check(unsafe { libc::bind(fd, (&storage as *const libc::sockaddr_storage).cast(), len) })?;
    // SAFETY: listen(2) on our own socket.
    check(unsafe { libc::listen(fd, backlog) })?;
    Ok(TcpListener::from(socket))
}

/// `addr` as the C structure bind(2) takes, and its length.
fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain integers, valid when zeroed.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// Stops a socket we bound ourselves from listening: new connections are refused and the
/// accept blocked on it fails.
fn shut_down(own: &TcpListener) {
    // SAFETY: the descriptor is owned by `own`, which outlives this call.
    if unsafe { libc::shutdown(own.as_raw_fd(), libc::SHUT_RDWR) } != 0 {
        log::warn!(
            "shutdown: cannot stop the listener: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_ipv4_and_ipv6_like_std_and_a_taken_port_is_an_error() {
        let v4 = bind("127.0.0.1:0".parse().unwrap(), BACKLOG).unwrap();
        let addr = v4.local_addr().unwrap();
        assert!(addr.port() != 0);
        let client = TcpStream::connect(addr).unwrap();
        let (accepted, peer) = v4.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        drop(accepted);
        let taken = bind(addr, BACKLOG).unwrap_err();
        assert_eq!(taken.kind(), io::ErrorKind::AddrInUse, "{taken}");
        // IPv6 only where the machine has it.
        if let Ok(v6) = bind("[::1]:0".parse().unwrap(), BACKLOG) {
            let addr = v6.local_addr().unwrap();
            assert!(addr.is_ipv6());
            TcpStream::connect(addr).unwrap();
        }
    }
}
