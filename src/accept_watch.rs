//! Watching tiny_http's accept thread through /proc, because tiny_http does not say when it
//! dies.
//!
//! The accept thread ends for good on an accept(2) error, which it reports, but it also ends
//! by panicking (its `try_clone` of a new connection unwraps EMFILE), which reports nothing:
//! the process would live on with nobody accepting. tiny_http gives no handle on the thread,
//! so it is identified by its kernel thread id, the one `Server::from_listener` creates first,
//! and watched through `/proc/self/task`. The same watch tells a shutdown when accepting has
//! really stopped.

use std::io;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

/// How often the main thread checks that the accept thread is alive.
pub const INTERVAL: Duration = Duration::from_millis(250);

/// tiny_http's accept thread, if it could be identified.
#[derive(Clone, Copy)]
pub struct AcceptThread {
    tid: Option<u32>,
}

impl AcceptThread {
    /// Runs `start` (which creates tiny_http's threads) and identifies the accept thread among
    /// the threads it created.
    pub fn started_by<T, E>(start: impl FnOnce() -> Result<T, E>) -> Result<(T, AcceptThread), E> {
        let before = thread_ids();
        let started = start()?;
        let tid = accept_thread_id(&before);
        if tid.is_none() {
            log::warn!("cannot identify tiny_http's accept thread in /proc/self/task; its death will be noticed only on accept errors");
        }
        Ok((started, AcceptThread { tid }))
    }

    /// Whether the thread was identified, so that `running` means something.
    pub fn known(&self) -> bool {
        self.tid.is_some()
    }

    /// Whether the thread is known and still running.
    pub fn running(&self) -> bool {
        self.tid.is_some_and(thread_alive)
    }

    /// The error to report once the thread ended without telling; `None` while it runs (or
    /// when it was never identified).
    pub fn silent_death(&self) -> Option<io::Error> {
        let ended = self.tid.is_some_and(|tid| !thread_alive(tid));
        ended.then(|| {
            io::Error::other(
                "tiny_http's accept thread ended without an error report (it panics when the \
                 process is out of file descriptors or threads)",
            )
        })
    }

    /// Waits until the thread ended, or `limit`.
    pub fn wait_ended(&self, limit: Instant) {
        if !self.known() {
            return;
        }
        while self.running() && Instant::now() < limit {
            thread::sleep(Duration::from_millis(2));
        }
        if self.running() {
            log::warn!("shutdown: the accept thread is still running; draining anyway");
        }
    }
}

fn thread_alive(tid: u32) -> bool {
    Path::new(&format!("/proc/self/task/{tid}")).exists()
}

/// The kernel thread ids of this process.
fn thread_ids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// tiny_http's accept thread: the first thread created by `Server::from_listener`. It creates
/// its connection pool threads itself, after it exists, so it has the lowest new id.
fn accept_thread_id(before: &[u32]) -> Option<u32> {
    let newest_before = before.iter().max()?;
    let created: Vec<u32> = thread_ids()
        .into_iter()
        .filter(|t| !before.contains(t))
        .collect();
    // Ids wrapped around pid_max: the order proves nothing, so do not guess.
    if created.iter().any(|t| t < newest_before) {
        return None;
    }
    created.into_iter().min()
}
