//! The accept loop, the worker pool and the graceful shutdown sequence.
//!
//! tiny_http's own accept thread accepts connections and queues parsed requests; a fixed pool
//! of workers takes them from the queue, each with its own database `Checker`. The main thread
//! only waits for an event: a termination signal, or the death of tiny_http's accept thread
//! (it ends for good on an accept error, and panics when out of file descriptors). Either way
//! it stops accepting, lets the workers answer everything already received, waits for them
//! within the shutdown deadline, closes the database connections and removes `PID`. A dead
//! accept thread makes the process exit non-zero, so systemd restarts it: never a live process
//! with a dead listener.
//!
//! Under systemd the listening socket may come from `tribist.socket` (socket activation): it
//! then outlives this process, and connections arriving during a restart wait in its backlog
//! for the next one. Stopping to accept must then leave the socket itself alone (see
//! `Listener::stop_accepting`).
//!
//! On SIGUSR2 the server hands over to the binary at its own path instead (handover.rs): the
//! successor serves on the same socket before this process stops accepting and drains.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use tiny_http::{Header, Method, Request, Response, Server};

use crate::api::{self, DbOutcome, Reply};
use crate::config::Config;
use crate::connection::{self, Connections};
use crate::db::{self, Checker};
use crate::error::Error;
use crate::handover::{self, Inherited};
use crate::pidfile::PidFile;
use crate::single_flight::SingleFlight;
use crate::systemd::{self, Notifier};

/// How long a worker waits on the queue before looking at the shutdown state again.
const POLL: Duration = Duration::from_millis(100);

/// While draining, how often the queue and the open connections are looked at.
const DRAIN_POLL: Duration = Duration::from_millis(2);

/// After accepting stopped, how long keep-alive connections have to send one more request
/// (answered with `Connection: close`) before the ones still idle are closed. Clients that
/// keep sending close their connections within a request's time; the rest are idle, and
/// closing them before they send gives their clients the best chance to reconnect (to the
/// next process, through the socket's backlog) instead of losing a request. Connections
/// waiting in the backlog wait this long at most, plus the next process's start.
const DRAIN_WINDOW: Duration = Duration::from_millis(25);

/// After the idle connections were closed, how long workers wait for the last ones to go (a
/// request tiny_http had read before may still arrive) before they end anyway.
const DRAIN_LINGER: Duration = Duration::from_millis(100);

/// How often the main thread checks that tiny_http's accept thread is alive.
const ACCEPT_WATCH: Duration = Duration::from_millis(250);

/// How long a successor has to serve before a handover is given up (handover.rs).
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(10);

/// What `systemctl status` says while serving; `deploy.sh` looks for "SIGUSR2 hands over"
/// before it asks for a handover rather than a restart.
fn serving_status(addr: SocketAddr, workers: usize) -> String {
    format!(
        "serving on {addr} with {workers} workers (pid {}; SIGUSR2 hands over)",
        std::process::id()
    )
}

enum Event {
    Signal,
    AcceptDied(std::io::Error),
    /// SIGUSR2 from root: start a successor.
    Handover,
    /// The successor started on `Handover` is ready, or failed.
    HandoverDone(Result<handover::Successor, String>),
}

/// State the workers share with the main thread.
struct Pool {
    server: Server,
    stopping: AtomicBool,
    /// Set once no connection can be accepted any more and the open ones were told to close:
    /// workers end once the queue is empty and no connection is left (or DRAIN_LINGER passed).
    drained_at: OnceLock<Instant>,
    in_flight: AtomicUsize,
    events: Sender<Event>,
    connections: Connections,
    /// The port clients connect to, to find their connections when draining.
    port: u16,
    max_header_bytes: usize,
    /// Concurrent `/health` requests share one database round trip.
    health: SingleFlight<DbOutcome>,
}

/// Where connections come from.
struct Listener {
    addr: SocketAddr,
    /// The descriptor tiny_http's accept thread uses.
    fd: RawFd,
    /// Our own handle on a socket we bound ourselves; `None` under socket activation.
    own: Option<TcpListener>,
    /// Where the socket came from, for the log.
    origin: &'static str,
}

impl Listener {
    /// The socket handed over by a predecessor, else systemd's, else one bound here.
    fn open(
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
                let listener = TcpListener::bind(config.listen).map_err(|e| bind_err(e.into()))?;
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
        Ok((
            Listener {
                addr,
                fd: listener.as_raw_fd(),
                own,
                origin,
            },
            listener,
        ))
    }

    /// An address this process can connect to itself.
    fn local_target(&self) -> SocketAddr {
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(if addr.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
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
    fn stop_accepting(&self, shared: bool, accept_tid: Option<u32>, limit: Instant) {
        if let (Some(own), false) = (&self.own, shared) {
            // SAFETY: the descriptor is owned by `own`, which outlives this call.
            if unsafe { libc::shutdown(own.as_raw_fd(), libc::SHUT_RDWR) } != 0 {
                log::warn!(
                    "shutdown: cannot stop the listener: {}",
                    std::io::Error::last_os_error()
                );
            }
            wait_ended(accept_tid, limit);
            return;
        }
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
        loop {
            let _ = TcpStream::connect_timeout(&self.local_target(), Duration::from_millis(200));
            let Some(tid) = accept_tid else { return };
            let poke = Instant::now() + Duration::from_millis(5);
            while thread_alive(tid) && Instant::now() < poke.min(limit) {
                thread::sleep(Duration::from_millis(1));
            }
            if !thread_alive(tid) || Instant::now() >= limit {
                break;
            }
        }
        wait_ended(accept_tid, limit);
    }
}

/// Waits until tiny_http's accept thread `tid` ended, or `limit`.
fn wait_ended(accept_tid: Option<u32>, limit: Instant) {
    if let Some(tid) = accept_tid {
        while thread_alive(tid) && Instant::now() < limit {
            thread::sleep(Duration::from_millis(2));
        }
        if thread_alive(tid) {
            log::warn!("shutdown: the accept thread is still running; draining anyway");
        }
    }
}

/// Serves until SIGTERM/SIGINT (Ok) or until the listener dies (Err).
pub fn run(config: Config) -> Result<(), Error> {
    // First, before any thread exists: every thread inherits the mask.
    let handover_watch = handover::block_signal()
        .map_err(|e| log::warn!("handover: cannot block SIGUSR2 ({e}); handovers are off"))
        .is_ok();
    let successor = handover::successor_path()
        .map_err(|e| {
            log::warn!("handover: cannot tell this binary's path ({e}); handovers are off")
        })
        .ok();
    let notifier = Notifier::from_env();
    let dir = std::env::current_dir().map_err(|source| Error::PidFile {
        path: crate::pidfile::FILE_NAME.into(),
        source,
    })?;
    let inherited = handover::take_inherited().map_err(|e| Error::Bind {
        addr: "the socket handed over".into(),
        source: e.into(),
    })?;
    let (pid_file, inherited, ready) = match inherited {
        Some(Inherited {
            listener,
            lock,
            ready,
        }) => (PidFile::adopt(&dir, lock), Some(listener), Some(ready)),
        None => (PidFile::lock(&dir)?, None, None),
    };
    let (listener, socket) = Listener::open(&config, inherited)?;
    let threads_before = thread_ids();
    let server = Server::from_listener(socket, None).map_err(|source| Error::Bind {
        addr: listener.addr.to_string(),
        source,
    })?;
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
    let successor = successor.filter(|_| handover_watch);
    let waiter_events = events.clone();
    if successor.is_some() {
        let handover_events = events.clone();
        handover::watch(move || {
            let _ = handover_events.send(Event::Handover);
        })
        .map_err(|source| Error::Thread {
            what: "handover signal",
            source,
        })?;
    }

    let pool = Arc::new(Pool {
        server,
        stopping: AtomicBool::new(false),
        drained_at: OnceLock::new(),
        in_flight: AtomicUsize::new(0),
        events,
        connections: Connections::new(config.keepalive_max),
        port: listener.addr.port(),
        max_header_bytes: config.max_header_bytes,
        health: db::health_flight(config.db_timeout),
    });
    // Before any worker answers: whoever sees /health answer can rely on PID.
    pid_file.write()?;
    let db_shared = Arc::new(db::Shared::default());
    let (done_tx, done_rx) = mpsc::channel::<usize>();
    let mut handles: Vec<JoinHandle<()>> = Vec::with_capacity(config.workers);
    for id in 1..=config.workers {
        let mut checker = Checker::new(
            id,
            config.db.clone(),
            config.db_timeout,
            Arc::clone(&db_shared),
        );
        // Two connections ready at start serve the first checks; the other workers connect
        // while they wait for one (Checker::check_shared).
        if id <= 2 {
            checker.warm_up();
        }
        let pool = Arc::clone(&pool);
        let done = done_tx.clone();
        let handle = thread::Builder::new()
            .name(format!("worker-{id}"))
            .spawn(move || {
                worker(&pool, checker);
                let _ = done.send(id);
            })
            .map_err(|source| Error::Thread {
                what: "worker",
                source,
            })?;
        handles.push(handle);
    }
    log::info!(
        "listening on http://{} (pid {}, {} workers, {}, database {}, db timeout {:?}, release {} {})",
        listener.addr,
        std::process::id(),
        config.workers,
        listener.origin,
        config.db.display,
        config.db_timeout,
        crate::build::VERSION,
        crate::build::COMMIT,
    );
    let status = serving_status(listener.addr, config.workers);
    match ready {
        // A successor: systemd's main process from now on, then the predecessor may drain.
        Some(ready) => {
            match ready.report() {
                // systemd's main process now: its notifications count.
                Ok(true) => notifier.send(&format!("READY=1\nSTATUS={status}")),
                Ok(false) => log::warn!(
                    "handover: the previous process did not say this one is systemd's main \
                     process; serving anyway"
                ),
                Err(e) => {
                    log::warn!("handover: cannot tell the previous process this one serves: {e}")
                }
            }
            log::info!("handover: serving; the previous process drains");
        }
        None => notifier.send(&format!("READY=1\nSTATUS={status}")),
    }
    if let Some(every) = systemd::watchdog_interval() {
        start_watchdog(Arc::clone(&pool), listener.local_target(), every)?;
    }

    let mut outcome = Ok(());
    let mut handed_over = false;
    let mut attempts = 0;
    // The successor being waited for (its pid), if any.
    let mut pending: Option<u32> = None;
    let handover_failed = |attempts: u32, reason: &str| {
        log::error!("handover attempt {attempts} failed: {reason}; this process goes on serving");
        // The successor may have replaced PID before it failed.
        if let Err(e) = pid_file.write() {
            log::error!("handover: {}", crate::error::chain(&e));
        }
        notifier.send(&format!(
            "STATUS={status}; handover attempt {attempts} failed: {reason}"
        ));
    };
    loop {
        match next_event(&events_rx, accept_tid) {
            Event::Signal => log::info!("shutdown: termination signal received"),
            Event::AcceptDied(e) => {
                log::error!(
                    "accept thread died ({e}); shutting down so the supervisor restarts us"
                );
                outcome = Err(Error::AcceptDied(e));
            }
            Event::Handover => {
                let Some(exe) = &successor else { continue };
                if let Some(pid) = pending {
                    log::warn!("handover: pid {pid} is still starting; ignoring this request");
                    continue;
                }
                attempts += 1;
                notifier.send(&format!(
                    "STATUS=handing over to {} (attempt {attempts})",
                    exe.display()
                ));
                match handover::start(exe, listener.fd, pid_file.lock_fd()) {
                    Ok(started) => {
                        log::info!("handover: started pid {}", started.pid());
                        pending = Some(started.pid());
                        let done = waiter_events.clone();
                        // The wait runs beside the event loop, so signals still count.
                        let spawned =
                            thread::Builder::new()
                                .name("handover-wait".into())
                                .spawn(move || {
                                    let _ = done
                                        .send(Event::HandoverDone(started.wait(HANDOVER_TIMEOUT)));
                                });
                        if let Err(e) = spawned {
                            log::error!("handover: cannot start the thread that waits: {e}");
                        }
                    }
                    Err(reason) => handover_failed(attempts, &reason),
                }
                continue;
            }
            Event::HandoverDone(Ok(next)) => {
                pending = None;
                // Only the main process may name another one (NotifyAccess=main).
                notifier.send(&format!("MAINPID={}", next.pid));
                log::info!(
                    "handover: pid {} serves; this process stops accepting and drains",
                    next.pid
                );
                next.confirm_main();
                handed_over = true;
            }
            Event::HandoverDone(Err(reason)) => {
                pending = None;
                handover_failed(attempts, &reason);
                continue;
            }
        }
        break;
    }
    if let Some(pid) = pending {
        log::warn!("handover: stopping pid {pid}, which was still starting");
        handover::abort(pid);
    }
    let deadline = Instant::now() + config.shutdown_timeout;
    pool.stopping.store(true, Ordering::SeqCst);
    // After a handover systemd's main process is the successor: not a word from this one.
    if !handed_over {
        notifier.send("STOPPING=1\nSTATUS=draining");
    }
    let limit = (Instant::now() + Duration::from_secs(1)).min(deadline);
    listener.stop_accepting(handed_over, accept_tid, limit);
    log::info!(
        "shutdown: stopped accepting; draining {} request(s) in flight, {} open connection(s)",
        pool.in_flight.load(Ordering::SeqCst),
        open_clients(pool.port)
    );
    // Every request still arriving is answered with `Connection: close` (see `serve`);
    // connections still open and idle after the window are closed before they send.
    let window = Instant::now() + DRAIN_WINDOW;
    while Instant::now() < window.min(deadline) {
        if pool.in_flight.load(Ordering::SeqCst) == 0 && open_clients(pool.port) == 0 {
            break;
        }
        thread::sleep(DRAIN_POLL);
    }
    let idle = end_client_reads(pool.port, &pool.connections);
    let _ = pool.drained_at.set(Instant::now());
    // Wakes each worker once its wait reaches this point of the queue (after every request
    // already queued), instead of at the end of its POLL.
    for _ in 0..config.workers {
        pool.server.unblock();
    }
    log::info!("shutdown: closed {idle} idle connection(s); answering what is queued");
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
        log::error!(
            "shutdown: deadline {:?} passed with {busy} worker(s) busy",
            config.shutdown_timeout
        );
        if outcome.is_ok() {
            outcome = Err(Error::ShutdownDeadline {
                secs: config.shutdown_timeout.as_secs_f64(),
                busy,
            });
        }
    }
    let grace = deadline
        .saturating_duration_since(Instant::now())
        .min(Duration::from_secs(1));
    match db::wait_closed(&db_shared, grace) {
        0 => log::info!("shutdown: database connections closed"),
        n => log::warn!("shutdown: {n} database connection(s) still blocked; abandoning them"),
    }
    let (checks, answers) = pool.health.totals();
    log::info!("health: {answers} answers from {checks} database checks");
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
                    if !thread_alive(tid) {
                        return Event::AcceptDied(std::io::Error::other(
                            "tiny_http's accept thread ended without an error report (it panics \
                             when the process is out of file descriptors or threads)",
                        ));
                    }
                }
            }
        }
    }
}

/// Counts this process's client connections (TCP sockets connected to `port`) for which
/// `act` returns true; `act` runs on each while it is known to be one, in the same step.
///
/// The descriptors belong to tiny_http's connection threads and are only borrowed here; one
/// closed and reused meanwhile could at worst be a database connection, which reconnects.
fn client_sockets(port: u16, act: impl Fn(&TcpStream) -> bool) -> usize {
    use std::os::fd::FromRawFd;
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

fn open_clients(port: u16) -> usize {
    client_sockets(port, |_| true)
}

/// Ends the reading side of every client connection that carried a request and is still
/// open: one waiting idle for its next request ends at once (tiny_http's thread reads
/// end-of-file and closes it), so its client sees it closed before it sends anything; a
/// request already received is still answered. A connection that never carried one is left
/// alone: it was accepted a moment ago and its client is about to send its first request,
/// which is answered with `Connection: close` (or it is closed after DRAIN_LINGER). Returns
/// how many were ended.
fn end_client_reads(port: u16, connections: &Connections) -> usize {
    client_sockets(port, |s| {
        s.peer_addr()
            .is_ok_and(|peer| connections.carried_a_request(&peer))
            && s.shutdown(std::net::Shutdown::Read).is_ok()
    })
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

/// Sends WATCHDOG=1 every `every`, but only after a request to our own `/livez` went through
/// the whole path (accept thread, connection thread, queue, a worker) within `every`: a server
/// whose workers are all stuck, or whose listener is dead, stops pinging and systemd restarts it.
fn start_watchdog(pool: Arc<Pool>, target: SocketAddr, every: Duration) -> Result<(), Error> {
    let notifier = Notifier::from_env();
    log::info!("watchdog: self-probe of /livez every {every:?}");
    thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            while !pool.stopping.load(Ordering::SeqCst) {
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
    stream.write_all(b"GET /livez HTTP/1.1\r\nHost: watchdog\r\nConnection: close\r\n\r\n")?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    if &head[9..12] == b"200" {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "answered {:?}",
            String::from_utf8_lossy(&head)
        )))
    }
}

fn worker(pool: &Pool, mut checker: Checker) {
    loop {
        let poll = if pool.stopping.load(Ordering::SeqCst) {
            DRAIN_POLL
        } else {
            POLL
        };
        match pool.server.recv_timeout(poll) {
            Ok(Some(request)) => serve(pool, request, &mut checker),
            Ok(None) => {
                // Drained: done once no client connection is left either (tiny_http may
                // still hand over a request it had read before the connection ended).
                if let Some(at) = pool.drained_at.get() {
                    if at.elapsed() > DRAIN_LINGER || open_clients(pool.port) == 0 {
                        break;
                    }
                }
            }
            Err(e) => {
                if !pool.stopping.load(Ordering::SeqCst) {
                    let _ = pool.events.send(Event::AcceptDied(e));
                } else if pool.drained_at.get().is_some() {
                    break;
                }
            }
        }
    }
}

fn serve(pool: &Pool, request: Request, checker: &mut Checker) {
    pool.in_flight.fetch_add(1, Ordering::SeqCst);
    let start = Instant::now();
    let method = request.method().as_str().to_owned();
    let url = request.url().to_owned();
    let version = request.http_version();
    let headers: Vec<(&str, &str)> = request
        .headers()
        .iter()
        .map(|h| (h.field.as_str().as_str(), h.value.as_str()))
        .collect();
    let oversized = api::oversized_headers(&headers, pool.max_header_bytes);
    let rejected = api::reject_reason((version.0, version.1), &headers);
    let reply = catch_unwind(AssertUnwindSafe(|| match (oversized, &rejected) {
        (Some(size), _) => Reply::error(
            431,
            &format!(
                "request header fields too large: {size} bytes, the limit is {} (TRIBIST_MAX_HEADER_BYTES)",
                pool.max_header_bytes
            ),
        ),
        (None, Some(reason)) => Reply::error(400, &format!("bad request: {reason}")),
        (None, None) => api::handle(&method, &url, &mut || checker.check_shared(&pool.health)),
    }))
    .unwrap_or_else(|_| {
        log::error!("panic while handling {method} {}; answered 500", clip(&url));
        Reply::error(500, "internal error; the server log has the details")
    });
    let status = reply.status;
    let client = request.remote_addr().copied();
    let closing = pool.stopping.load(Ordering::SeqCst)
        || pool
            .connections
            .should_close(client.as_ref(), Instant::now());
    let sent = if closing {
        pool.connections.forget(client.as_ref());
        let bytes = connection::closing_answer(
            &reply,
            *request.method() == Method::Head,
            SystemTime::now(),
        );
        let mut writer = request.into_writer();
        writer.write_all(&bytes).and_then(|()| writer.flush())
    } else {
        request.respond(to_response(reply))
    };
    if let Err(e) = sent {
        log::debug!(
            "{method} {}: client went away before the answer: {e}",
            clip(&url)
        );
    }
    log::debug!(
        "{method} {} {status} {:.3}ms",
        clip(&url),
        start.elapsed().as_secs_f64() * 1e3
    );
    pool.in_flight.fetch_sub(1, Ordering::SeqCst);
}

fn to_response(reply: Reply) -> Response<std::io::Cursor<Vec<u8>>> {
    let mut response = Response::from_string(reply.body).with_status_code(reply.status);
    let headers =
        std::iter::once(("Content-Type", reply.content_type.to_owned())).chain(reply.headers);
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
