//! systemd's watchdog, fed only while the server really answers.
//!
//! With `WatchdogSec=` systemd restarts a service that stops sending WATCHDOG=1. Pinging from
//! a timer would prove only that the timer runs; so each ping follows a request to our own
//! `/livez` that went through the whole path (accept thread, connection thread, queue, a
//! worker). A server whose workers are all stuck, or whose listener is dead, stops pinging
//! and systemd restarts it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::systemd::Notifier;

/// The request the probe sends.
const PROBE: &[u8] = b"GET /livez HTTP/1.1\r\nHost: watchdog\r\nConnection: close\r\n\r\n";

/// The start of the answer the probe waits for; only its status code is compared.
const ANSWERED_OK: &[u8] = b"HTTP/1.1 200";

/// Starts the thread that sends WATCHDOG=1 every `every` after a successful probe of `target`,
/// for as long as `serving` says so.
pub fn start(
    target: SocketAddr,
    every: Duration,
    serving: impl Fn() -> bool + Send + 'static,
) -> Result<(), Error> {
    let notifier = Notifier::from_env();
    log::info!("watchdog: self-probe of /livez every {every:?}");
    thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            while serving() {
                let start = Instant::now();
                match probe_livez(target, every) {
                    Ok(()) => notifier.send("WATCHDOG=1"),
                    Err(e) => log::warn!(
                        "watchdog: self-probe of /livez failed ({e}); not pinging systemd"
                    ),
                }
                thread::sleep(every.saturating_sub(start.elapsed()));
            }
        })
        .map(|_| ())
        .map_err(|source| Error::Thread {
            what: "watchdog",
            source,
        })
}

fn probe_livez(target: SocketAddr, timeout: Duration) -> std::io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&target, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(PROBE)?;
    let mut head = [0u8; ANSWERED_OK.len()];
    stream.read_exact(&mut head)?;
    // The status code: the version may differ.
    let status = ANSWERED_OK.len() - b"200".len();
    if head[status..] == ANSWERED_OK[status..] {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "answered {:?}",
            String::from_utf8_lossy(&head)
        )))
    }
}
