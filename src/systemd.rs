//! The two systemd protocols the server speaks, with std only: socket activation
//! (sd_listen_fds: take the listening socket from fd 3) and service notification
//! (sd_notify: READY=1, STOPPING=1, WATCHDOG=1 over the `NOTIFY_SOCKET` datagram socket).
//!
//! Both are no-ops outside systemd, so the same binary runs by hand, in tests and under the unit.

use std::net::TcpListener;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// The first socket systemd passes (sd_listen_fds' SD_LISTEN_FDS_START).
const LISTEN_FDS_START: RawFd = 3;

/// Takes the listening socket systemd passed, if it passed one to this process.
/// Clears the variables so nothing started later inherits them.
pub fn take_listener() -> Result<Option<TcpListener>, String> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    // Called during start-up, before any other thread exists.
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(None);
    };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(None);
    }
    match fds.trim().parse::<u32>() {
        Ok(0) => return Ok(None),
        Ok(1) => {}
        Ok(n) => {
            return Err(format!(
                "systemd passed {n} sockets; tribist.socket must have exactly one ListenStream="
            ))
        }
        Err(_) => return Err(format!("LISTEN_FDS={fds:?} is not a number")),
    }
    // Duplicate before owning: if fd 3 is not open after all, owning it would make std abort
    // when it fails to close it. SAFETY: fd 3 is only borrowed for the duration of the call.
    let fd = unsafe { BorrowedFd::borrow_raw(LISTEN_FDS_START) }
        .try_clone_to_owned()
        .map_err(|e| {
            format!("LISTEN_FDS is set but fd 3 is not open ({e}); check tribist.socket")
        })?;
    // SAFETY: fd 3 is open (it was just duplicated) and this process owns it from now on.
    drop(unsafe { OwnedFd::from_raw_fd(LISTEN_FDS_START) });
    let listener = TcpListener::from(fd);
    match listener.local_addr() {
        Ok(_) => Ok(Some(listener)),
        Err(e) => Err(format!(
            "fd 3 from systemd is not a TCP listening socket ({e}); check tribist.socket"
        )),
    }
}

/// Sends sd_notify messages; does nothing when `NOTIFY_SOCKET` is unset.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let path = path.to_str()?.to_owned();
            let addr = match path.strip_prefix('@') {
                Some(name) => SocketAddr::from_abstract_name(name.as_bytes()).ok()?,
                None => SocketAddr::from_pathname(&path).ok()?,
            };
            Some((UnixDatagram::unbound().ok()?, addr))
        });
        Notifier { target }
    }

    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends one message such as `READY=1`; failures are logged, never fatal.
    pub fn send(&self, message: &str) {
        if let Some((socket, addr)) = &self.target {
            if let Err(e) = socket.send_to_addr(message.as_bytes(), addr) {
                log::warn!("cannot notify systemd ({message}): {e}");
            }
        }
    }
}

/// How often to send WATCHDOG=1: half of `WATCHDOG_USEC`, when it is meant for this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}
