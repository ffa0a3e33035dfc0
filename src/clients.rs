//! The client connections open in this process, found through `/proc/self/fd`, so that a
//! drain can tell when they are gone and end the idle ones, and the pool watch
//! (pool_watch.rs) can see which are waiting for a thread or idle.
//!
//! tiny_http owns every connection on a thread of its own and offers no list of them, nor a
//! way to end one. The kernel has the list: every socket of this process connected to the
//! listening port is a client's. Their descriptors are only borrowed here.

use std::collections::{HashMap, HashSet};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{FromRawFd, RawFd};
use std::time::Duration;

use crate::connection::Connections;
use crate::pool_watch::Seen;

/// Counts this process's client connections (TCP sockets connected to `port`) for which
/// `act` returns true; `act` runs on each while it is known to be one, in the same step.
///
/// The descriptors belong to tiny_http's connection threads and are only borrowed here; one
/// closed and reused meanwhile could at worst be a database connection, which reconnects.
fn client_sockets(port: u16, act: impl Fn(&TcpStream) -> bool) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    dir.flatten()
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
        })
        .filter_map(|e| e.file_name().to_str()?.parse::<RawFd>().ok())
        .filter(|&fd| {
            // SAFETY: `fd` is an open socket of this process; ManuallyDrop never closes it.
            let stream = std::mem::ManuallyDrop::new(unsafe { TcpStream::from_raw_fd(fd) });
            stream.local_addr().is_ok_and(|a| a.port() == port)
                && stream.peer_addr().is_ok()
                && act(&stream)
        })
        .count()
}

/// Looks at this process's client connections again and again, cheaply: each socket is
/// known by its inode (tiny_http holds two descriptors of each connection, one to read and
/// one to write), its addresses are read once, and a connection a thread has read from is
/// passed over, except in a full look.
pub struct Scanner {
    port: u16,
    known: HashMap<u64, Known>,
}

/// What is known of a socket of this process.
struct Known {
    /// The client's address; `None`: not a client connection (the listener, a database
    /// connection, a Unix socket).
    peer: Option<SocketAddr>,
    /// A thread has read from it: it is not waiting in the pool's queue.
    taken: bool,
}

impl Scanner {
    pub fn new(port: u16) -> Scanner {
        Scanner {
            port,
            known: HashMap::new(),
        }
    }

    /// The client connections as the kernel sees them now (bytes received and still unread,
    /// how long nothing was sent or received): all of them when `full`, else only those no
    /// thread has read from yet. A descriptor costs one fstat(2); a connection not yet taken
    /// two calls more (TCP_INFO, FIONREAD), and its addresses two more, once.
    pub fn look(&mut self, full: bool) -> Vec<Seen> {
        let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
            return Vec::new();
        };
        let mut seen_inodes = HashSet::new();
        let mut seen = Vec::new();
        for fd in dir
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<RawFd>().ok())
        {
            let Some(inode) = socket_inode(fd) else {
                continue;
            };
            if !seen_inodes.insert(inode) {
                continue; // the other descriptor of a connection seen already
            }
            let known = self
                .known
                .entry(inode)
                .or_insert_with(|| Known::of(fd, self.port));
            let Some(peer) = known.peer else { continue };
            if known.taken && !full {
                continue;
            }
            let Some(s) = state(fd, peer) else { continue };
            known.taken |= s.received > s.unread;
            seen.push(s);
        }
        // Sockets closed since: forgotten (inode numbers are not reused soon).
        self.known.retain(|inode, _| seen_inodes.contains(inode));
        seen
    }
}

impl Known {
    fn of(fd: RawFd, port: u16) -> Known {
        // SAFETY: `fd` is an open socket of this process; ManuallyDrop never closes it.
        let stream = std::mem::ManuallyDrop::new(unsafe { TcpStream::from_raw_fd(fd) });
        let client = tcp_info(fd).is_some_and(|i| i.tcpi_state != LISTEN)
            && stream.local_addr().is_ok_and(|a| a.port() == port);
        Known {
            peer: client.then(|| stream.peer_addr().ok()).flatten(),
            taken: false,
        }
    }
}

/// TCP state LISTEN in TCP_INFO.
const LISTEN: u8 = 10;

/// The inode of `fd` if it is a socket.
fn socket_inode(fd: RawFd) -> Option<u64> {
    // SAFETY: fstat writes one struct stat, plain integers, valid zeroed.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        (libc::fstat(fd, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFSOCK)
            .then_some(st.st_ino)
    }
}

/// The client connection `fd` from `peer` as the kernel sees it now.
fn state(fd: RawFd, peer: SocketAddr) -> Option<Seen> {
    let info = tcp_info(fd)?;
    let mut unread: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to the pointer given.
    if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut unread) } != 0 {
        return None;
    }
    let ms = |v: u32| Duration::from_millis(u64::from(v));
    Some(Seen {
        fd,
        peer,
        received: info.tcpi_bytes_received,
        unread: u64::try_from(unread).unwrap_or(0),
        quiet: ms(info.tcpi_last_data_recv.min(info.tcpi_last_data_sent)),
    })
}

/// TCP_INFO of `fd`; `None` when it is not a TCP socket.
fn tcp_info(fd: RawFd) -> Option<libc::tcp_info> {
    // SAFETY: tcp_info is plain integers; the kernel writes at most `len` bytes into it.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        (rc == 0).then_some(info)
    }
}

/// Ends the reading side of the client connection `fd` from `peer`, if that is still what
/// `fd` is (it may have been closed and reused since it was seen): its thread reads
/// end-of-file and closes it; an answer being written still goes out.
pub fn end_reads(port: u16, fd: RawFd, peer: SocketAddr) -> bool {
    // SAFETY: only borrowed; ManuallyDrop never closes it. If `fd` is no longer open the calls
    // below fail.
    let stream = std::mem::ManuallyDrop::new(unsafe { TcpStream::from_raw_fd(fd) });
    let same = stream.local_addr().is_ok_and(|a| a.port() == port)
        && stream.peer_addr().is_ok_and(|p| p == peer);
    same && stream.shutdown(Shutdown::Read).is_ok()
}

/// How many client connections are open.
pub fn open_clients(port: u16) -> usize {
    client_sockets(port, |_| true)
}

/// Ends the reading side of every client connection that carried a request and is still
/// open: one waiting idle for its next request ends at once (tiny_http's thread reads
/// end-of-file and closes it), so its client sees it closed before it sends anything; a
/// request already received is still answered. A connection that never carried one is left
/// alone: it was accepted a moment ago and its client is about to send its first request,
/// which is answered with `Connection: close` (or it is closed after server.rs's
/// DRAIN_LINGER). Returns how many were ended.
pub fn end_client_reads(port: u16, connections: &Connections) -> usize {
    client_sockets(port, |s| {
        s.peer_addr()
            .is_ok_and(|peer| connections.carried_a_request(&peer))
            && s.shutdown(Shutdown::Read).is_ok()
    })
}
