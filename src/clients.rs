//! The client connections open in this process, found through `/proc/self/fd`, so that a
//! drain can tell when they are gone and end the idle ones.
//!
//! tiny_http owns every connection on a thread of its own and offers no list of them, nor a
//! way to end one. The kernel has the list: every socket of this process connected to the
//! listening port is a client's. Their descriptors are only borrowed here.

use std::net::{Shutdown, TcpStream};
use std::os::fd::{FromRawFd, RawFd};

use crate::connection::Connections;

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
