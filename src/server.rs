//! The accept loop, the worker pool and the graceful shutdown sequence.
//!
//! tiny_http's own accept thread accepts connections and queues parsed requests; a fixed pool
//! of workers takes them from the queue, each with its own database `Checker`. The main thread
//! only waits for an event: a termination signal, or the death of tiny_http's accept thread
//! (it ends for good on an accept error such as running out of file descriptors). Either way
//! it stops accepting, lets the workers answer everything already queued or in flight, waits
//! for them within the shutdown deadline, closes the database connections and removes `PID`.
//! A dead accept thread makes the process exit non-zero, so systemd restarts it: never a live
//! process with a dead listener.

use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tiny_http::{Header, Request, Response, Server};

use crate::api::{self, Reply};
use crate::config::Config;
use crate::db::{self, Checker};
use crate::error::Error;
use crate::pidfile::PidFile;

/// How long a worker blocks on the queue before looking at the stop flag again; shutdown
/// does not depend on it (it wakes the workers with `unblock`), it is only a safety net.
const IDLE_WAIT: Duration = Duration::from_secs(1);

/// How often the main thread checks that tiny_http's accept thread is alive.
const ACCEPT_WATCH: Duration = Duration::from_millis(250);

enum Event {
    Signal,
    AcceptDied(std::io::Error),
}

/// State the workers share with the main thread.
struct Pool {
    server: Server,
    stopping: AtomicBool,
    in_flight: AtomicUsize,
    events: Sender<Event>,
}

/// Serves until SIGTERM/SIGINT (Ok) or until the listener dies (Err).
pub fn run(config: Config) -> Result<(), Error> {
    let dir = std::env::current_dir().map_err(|source| Error::PidFile {
        path: crate::pidfile::FILE_NAME.into(),
        source,
    })?;
    let pid_file = PidFile::lock(&dir)?;
    let bind_err = |source: Box<dyn std::error::Error + Send + Sync>| Error::Bind {
        addr: config.listen.to_string(),
        source,
    };
    let listener = TcpListener::bind(config.listen).map_err(|e| bind_err(e.into()))?;
    let addr = listener.local_addr().map_err(|e| bind_err(e.into()))?;
    // Our own handle on the listening socket, to stop accepting at shutdown.
    let control = listener.try_clone().map_err(|e| bind_err(e.into()))?;
    let threads_before = thread_ids();
    let server = Server::from_listener(listener, None).map_err(bind_err)?;
    let accept_tid = accept_thread_id(&threads_before);
    if accept_tid.is_none() {
        log::warn!("cannot identify tiny_http's accept thread in /proc/self/task; its death will be noticed only on accept errors");
    }

    let (events, events_rx) = mpsc::channel();
    let signal_events = events.clone();
    ctrlc::set_handler(move || {
        let _ = signal_events.send(Event::Signal);
    })
    .map_err(Error::Signal)?;

    let pool = Arc::new(Pool {
        server,
        stopping: AtomicBool::new(false),
        in_flight: AtomicUsize::new(0),
        events,
    });
    // Before any worker answers: whoever sees /health answer can rely on PID.
    pid_file.write()?;
    let db_shared = Arc::new(db::Shared::default());
    let (done_tx, done_rx) = mpsc::channel::<usize>();
    let mut handles: Vec<JoinHandle<()>> = Vec::with_capacity(config.workers);
    for id in 1..=config.workers {
        let checker = Checker::new(id, config.db.clone(), config.db_timeout, Arc::clone(&db_shared));
        let pool = Arc::clone(&pool);
        let done = done_tx.clone();
        let handle = thread::Builder::new()
            .name(format!("worker-{id}"))
            .spawn(move || {
                worker(&pool, checker);
                let _ = done.send(id);
            })
            .map_err(|source| Error::Thread { what: "worker", source })?;
        handles.push(handle);
    }
    log::info!(
        "listening on http://{addr} (pid {}, {} workers, database {}, db timeout {:?}, release {} {})",
        std::process::id(),
        config.workers,
        config.db.display,
        config.db_timeout,
        crate::build::VERSION,
        crate::build::COMMIT,
    );

    let mut outcome = Ok(());
    match next_event(&events_rx, accept_tid) {
        Event::Signal => log::info!("shutdown: termination signal received"),
        Event::AcceptDied(e) => {
            log::error!("accept thread died ({e}); shutting down so the supervisor restarts us");
            outcome = Err(Error::AcceptDied(e));
        }
    }
    let deadline = Instant::now() + config.shutdown_timeout;
    pool.stopping.store(true, Ordering::SeqCst);
    stop_listening(&control);
    log::info!(
        "shutdown: stopped accepting; draining {} request(s) in flight",
        pool.in_flight.load(Ordering::SeqCst)
    );
    // Each `unblock` wakes one blocked `recv`. A worker consumes at most two wake-up markers
    // (one ends its loop; its final `try_recv` drain may swallow another), so 2 per worker
    // guarantees that every worker is woken.
    for _ in 0..2 * config.workers {
        pool.server.unblock();
    }
    let mut finished = 0;
    while finished < config.workers {
        match done_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(_) => finished += 1,
            Err(_) => break,
        }
    }
    if finished == config.workers {
        for handle in handles {
            let _ = handle.join();
        }
        log::info!("shutdown: all {} workers finished", config.workers);
    } else {
        let busy = config.workers - finished;
        log::error!("shutdown: deadline {:?} passed with {busy} worker(s) busy", config.shutdown_timeout);
        if outcome.is_ok() {
            outcome = Err(Error::ShutdownDeadline { secs: config.shutdown_timeout.as_secs_f64(), busy });
        }
    }
    let grace = deadline.saturating_duration_since(Instant::now()).min(Duration::from_secs(1));
    match db::wait_closed(&db_shared, grace) {
        0 => log::info!("shutdown: database connections closed"),
        n => log::warn!("shutdown: {n} database connection(s) still blocked; abandoning them"),
    }
    pid_file.remove();
    log::info!("shutdown: complete");
    outcome
}

/// Waits for a signal or for the accept thread to die. tiny_http's accept thread reports an
/// accept(2) error before ending, but it also ends by panicking (its `try_clone` of a new
/// connection unwraps EMFILE), which reports nothing: so it is also watched through /proc.
fn next_event(events: &mpsc::Receiver<Event>, accept_tid: Option<u32>) -> Event {
    loop {
        match events.recv_timeout(ACCEPT_WATCH) {
            Ok(event) => return event,
            Err(mpsc::RecvTimeoutError::Disconnected) => return Event::Signal,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Some(tid) = accept_tid {
                    if !Path::new(&format!("/proc/self/task/{tid}")).exists() {
                        return Event::AcceptDied(std::io::Error::other(
                            "tiny_http's accept thread ended without an error report (it panics \
                             when the process is out of file descriptors)",
                        ));
                    }
                }
            }
        }
    }
}

/// The kernel thread ids of this process.
fn thread_ids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect()
}

/// tiny_http's accept thread: the first thread created by `Server::from_listener`. It creates
/// its connection pool threads itself, after it exists, so it has the lowest new id.
fn accept_thread_id(before: &[u32]) -> Option<u32> {
    let newest_before = before.iter().max()?;
    let created: Vec<u32> = thread_ids().into_iter().filter(|t| !before.contains(t)).collect();
    // Ids wrapped around pid_max: the order proves nothing, so do not guess.
    if created.iter().any(|t| t < newest_before) {
        return None;
    }
    created.into_iter().min()
}

/// Stops new connections at once (they are refused instead of queued): shutdown(2) on a
/// listening socket makes the kernel stop listening and wakes tiny_http's blocked accept.
fn stop_listening(listener: &TcpListener) {
    extern "C" {
        fn shutdown(fd: i32, how: i32) -> i32;
    }
    const SHUT_RDWR: i32 = 2;
    // SAFETY: the descriptor is owned by `listener`, which outlives this call.
    let rc = unsafe { shutdown(listener.as_raw_fd(), SHUT_RDWR) };
    if rc != 0 {
        log::warn!("shutdown: cannot stop the listener: {}", std::io::Error::last_os_error());
    }
}

fn worker(pool: &Pool, mut checker: Checker) {
    loop {
        match pool.server.recv_timeout(IDLE_WAIT) {
            Ok(Some(request)) => serve(pool, request, &mut checker),
            Ok(None) if pool.stopping.load(Ordering::SeqCst) => break,
            Ok(None) => {}
            Err(e) => {
                if !pool.stopping.load(Ordering::SeqCst) {
                    let _ = pool.events.send(Event::AcceptDied(e));
                }
            }
        }
    }
    // Requests queued after the wake-up markers (e.g. pipelined on an open connection).
    while let Ok(Some(request)) = pool.server.try_recv() {
        serve(pool, request, &mut checker);
    }
}

fn serve(pool: &Pool, request: Request, checker: &mut Checker) {
    pool.in_flight.fetch_add(1, Ordering::SeqCst);
    let start = Instant::now();
    let method = request.method().as_str().to_owned();
    let url = request.url().to_owned();
    let reply = catch_unwind(AssertUnwindSafe(|| {
        api::handle(&method, &url, &mut || checker.check())
    }))
    .unwrap_or_else(|_| {
        log::error!("panic while handling {method} {}; answered 500", clip(&url));
        Reply::error(500, "internal error; the server log has the details")
    });
    let status = reply.status;
    if let Err(e) = request.respond(to_response(reply)) {
        log::debug!("{method} {}: client went away before the answer: {e}", clip(&url));
    }
    log::debug!("{method} {} {status} {:.3}ms", clip(&url), start.elapsed().as_secs_f64() * 1e3);
    pool.in_flight.fetch_sub(1, Ordering::SeqCst);
}

fn to_response(reply: Reply) -> Response<std::io::Cursor<Vec<u8>>> {
    let mut response = Response::from_string(reply.body).with_status_code(reply.status);
    let headers = std::iter::once(("Content-Type", reply.content_type.to_owned())).chain(reply.headers);
    for (name, value) in headers {
        if let Ok(header) = Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            response.add_header(header);
        }
    }
    response
}

/// At most 120 characters of a client-supplied string, for log lines.
fn clip(s: &str) -> String {
    if s.len() <= 120 {
        return s.escape_debug().to_string();
    }
    let mut end = 120;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…({} bytes)", s[..end].escape_debug(), s.len())
}
