//! The accept loop, the worker pool and the graceful shutdown sequence.
//!
//! tiny_http's own accept thread accepts connections and queues parsed requests; a fixed pool
//! of workers takes them from the queue; `/health`'s database checks are shared (db.rs
//! `HealthChecks`), so the workers need no connection of their own. The main thread
//! only waits for an event: a termination signal, or the death of tiny_http's accept thread
//! (it ends for good on an accept error, and panics when out of file descriptors; see
//! accept_watch.rs). Either way it stops accepting, lets the workers answer everything already
//! received, waits for them within the shutdown deadline, closes the database connections and
//! removes `PID`. A dead accept thread makes the process exit non-zero, so systemd restarts
//! it: never a live process with a dead listener.
//!
//! Under systemd the listening socket may come from `tribist.socket` (socket activation): it
//! then outlives this process, and connections arriving during a restart wait in its backlog
//! for the next one. Stopping to accept must then leave the socket itself alone (see
//! listener.rs).
//!
//! On SIGUSR2 the server hands over to the binary at its own path instead (handover.rs): the
//! successor serves on the same socket before this process stops accepting and drains.
//!
//! `run` goes through these as phases, each a function below: start, wait for the end (the
//! event loop), drain, close.

use std::io::Write;
use std::net::TcpListener;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use tiny_http::{Header, Method, Request, Response, Server};

use crate::accept_watch::{self, AcceptThread};
use crate::api::{self, Reply};
use crate::clients::{end_client_reads, open_clients};
use crate::config::Config;
use crate::connection::{self, Connections};
use crate::db;
use crate::error::Error;
use crate::handover::{self, Inherited, Ready};
use crate::listener::Listener;
use crate::pidfile::PidFile;
use crate::pool_watch;
use crate::systemd::{self, Notifier};
use crate::watchdog;

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

/// How long stopping to accept may take, at most (the shutdown deadline may be shorter).
const STOP_ACCEPTING: Duration = Duration::from_secs(1);

/// How long the database connections have to close, at most (within the shutdown deadline).
const DB_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How long a successor has to serve before a handover is given up (handover.rs).
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(10);

/// What `systemctl status` says while serving, after the handover tokens (handover.rs
/// `Status`); kits that predate them look for "SIGUSR2 hands over".
fn serving_status(addr: std::net::SocketAddr, workers: usize, handovers: bool) -> String {
    let hands_over = if handovers {
        "; SIGUSR2 hands over"
    } else {
        ""
    };
    format!(
        "serving on {addr} with {workers} workers (pid {}{hands_over})",
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
    health: db::HealthChecks,
    /// What the database checkers share, to wait for their connections to close.
    db: Arc<db::Shared>,
}

impl Pool {
    fn new(config: &Config, server: Server, events: Sender<Event>, port: u16) -> Arc<Pool> {
        let db = Arc::new(db::Shared::default());
        Arc::new(Pool {
            server,
            stopping: AtomicBool::new(false),
            drained_at: OnceLock::new(),
            in_flight: AtomicUsize::new(0),
            events,
            connections: Connections::new(config.keepalive_max),
            port,
            max_header_bytes: config.max_header_bytes,
            health: db::HealthChecks::new(config.db.clone(), config.db_timeout, Arc::clone(&db)),
            db,
        })
    }
}

/// What the main thread holds from start to close.
struct Main {
    listener: Listener,
    accept: AcceptThread,
    pid_file: PidFile,
    notifier: Notifier,
    /// What `systemctl status` says while serving.
    status: String,
    /// Its tokens: `Ready`, or `Off` when handovers are off.
    serving: handover::Status,
}

/// What start-up takes from the environment and opens, before any worker exists.
struct Opened {
    main: Main,
    server: Server,
    /// The binary a SIGUSR2 starts; `None` when handovers are off.
    successor: Option<PathBuf>,
    /// For a successor: how to tell the process it replaces that it serves.
    ready: Option<Ready>,
}

/// Why serving ends.
enum End {
    Signal,
    AcceptDied(std::io::Error),
    /// A successor serves now; systemd's main process is no longer this one.
    HandedOver,
}

impl End {
    fn handed_over(&self) -> bool {
        matches!(self, End::HandedOver)
    }

    fn into_result(self) -> Result<(), Error> {
        match self {
            End::AcceptDied(e) => Err(Error::AcceptDied(e)),
            End::Signal | End::HandedOver => Ok(()),
        }
    }
}

/// Serves until SIGTERM/SIGINT or a handover (Ok), or until the listener dies (Err).
pub fn run(config: Config) -> Result<(), Error> {
    // Start.
    let opened = open(&config)?;
    let main = opened.main;
    let (events, events_rx) = mpsc::channel();
    on_termination(&events)?;
    let mut handovers = Handovers::watch(opened.successor, &events)?;
    let pool = Pool::new(&config, opened.server, events, main.listener.addr.port());
    // Before any worker answers: whoever sees /health answer can rely on PID.
    main.pid_file.write()?;
    if let Some(path) = &config.address_file {
        crate::address_file::write(path, main.listener.addr)?;
    }
    let workers = Workers::start(&config, &pool)?;
    let watched = start_pool_watch(&config, &pool, &main.listener)?;
    announce(&config, &main, opened.ready);
    start_watchdog(&pool, &main.listener)?;
    // Wait for the end.
    let end = wait_for_end(&main, &events_rx, &mut handovers);
    handovers.abort_pending();
    // Drain.
    let deadline = Instant::now() + config.shutdown_timeout;
    stop_accepting(&main, &pool, end.handed_over(), deadline);
    close_idle_connections(&config, &pool, deadline);
    // Close.
    log::info!("{}", watched.summary());
    let closed = close(&config, &main, &pool, workers, deadline);
    end.into_result().and(closed)
}

/// Takes what the environment gives (a handed-over or systemd's socket, the PID lock) and
/// starts tiny_http on the listening socket.
fn open(config: &Config) -> Result<Opened, Error> {
    // First, before any thread exists: every thread inherits the mask.
    let successor = handover_successor();
    let notifier = Notifier::from_env();
    let (pid_file, inherited, ready) = lock_or_inherit()?;
    let (listener, socket) = Listener::open(config, inherited)?;
    let (server, accept) = AcceptThread::started_by(|| Server::from_listener(socket, None))
        .map_err(|source| Error::Bind {
            addr: listener.addr.to_string(),
            source,
        })?;
    let status = serving_status(listener.addr, config.workers, successor.is_some());
    let serving = if successor.is_some() {
        handover::Status::Ready
    } else {
        handover::Status::Off
    };
    Ok(Opened {
        main: Main {
            listener,
            accept,
            pid_file,
            notifier,
            status,
            serving,
        },
        server,
        successor,
        ready,
    })
}

/// Blocks SIGUSR2 (call before any other thread exists) and returns the binary a handover
/// starts; `None`, with a warning, when handovers cannot work.
fn handover_successor() -> Option<PathBuf> {
    let blocked = handover::block_signal()
        .map_err(|e| log::warn!("handover: cannot block SIGUSR2 ({e}); handovers are off"))
        .is_ok();
    handover::successor_path()
        .map_err(|e| {
            log::warn!("handover: cannot tell this binary's path ({e}); handovers are off")
        })
        .ok()
        .filter(|_| blocked)
}

/// Locks the working directory, or adopts the lock a predecessor handed over together with
/// its listening socket and the socket pair to report ready on.
fn lock_or_inherit() -> Result<(PidFile, Option<TcpListener>, Option<Ready>), Error> {
    let dir = std::env::current_dir().map_err(|source| Error::PidFile {
        path: crate::pidfile::FILE_NAME.into(),
        source,
    })?;
    let inherited = handover::take_inherited().map_err(|e| Error::Bind {
        addr: "the socket handed over".into(),
        source: e.into(),
    })?;
    Ok(match inherited {
        Some(Inherited {
            listener,
            lock,
            ready,
        }) => (PidFile::adopt(&dir, lock), Some(listener), Some(ready)),
        None => (PidFile::lock(&dir)?, None, None),
    })
}

/// Makes SIGTERM and SIGINT an `Event::Signal`.
fn on_termination(events: &Sender<Event>) -> Result<(), Error> {
    let events = events.clone();
    ctrlc::set_handler(move || {
        let _ = events.send(Event::Signal);
    })
    .map_err(Error::Signal)
}

/// The worker threads, and how the main thread learns that they finished.
struct Workers {
    handles: Vec<JoinHandle<()>>,
    /// Each worker sends its id here when it ends.
    done: Receiver<usize>,
}

impl Workers {
    /// Starts `config.workers` workers, and a database connection for the first check.
    fn start(config: &Config, pool: &Arc<Pool>) -> Result<Workers, Error> {
        pool.health.warm_up();
        let (done_tx, done) = mpsc::channel::<usize>();
        let mut handles: Vec<JoinHandle<()>> = Vec::with_capacity(config.workers);
        for id in 1..=config.workers {
            let pool = Arc::clone(pool);
            let done = done_tx.clone();
            let handle = thread::Builder::new()
                .name(format!("worker-{id}"))
                .spawn(move || {
                    worker(&pool);
                    let _ = done.send(id);
                })
                .map_err(|source| Error::Thread {
                    what: "worker",
                    source,
                })?;
            handles.push(handle);
        }
        Ok(Workers { handles, done })
    }

    /// Waits (until `deadline`) for every worker to finish.
    fn finish(self, config: &Config, deadline: Instant) -> Result<(), Error> {
        let workers = self.handles.len();
        let finished = (0..workers)
            .take_while(|_| {
                let left = deadline.saturating_duration_since(Instant::now());
                self.done.recv_timeout(left).is_ok()
            })
            .count();
        if finished < workers {
            let busy = workers - finished;
            log::error!(
                "shutdown: deadline {:?} passed with {busy} worker(s) busy",
                config.shutdown_timeout
            );
            return Err(Error::ShutdownDeadline {
                secs: config.shutdown_timeout.as_secs_f64(),
                busy,
            });
        }
        for handle in self.handles {
            let _ = handle.join();
        }
        log::info!("shutdown: all {workers} workers finished");
        Ok(())
    }
}

/// Logs where the server listens and tells systemd (and, for a successor, the process it
/// replaces) that it serves.
fn announce(config: &Config, main: &Main, ready: Option<Ready>) {
    log::info!(
        "listening on http://{} (pid {}, {} workers, {}, database {}, db timeout {:?}, release {} {})",
        main.listener.addr,
        std::process::id(),
        config.workers,
        main.listener.origin,
        config.db.display,
        config.db_timeout,
        crate::build::VERSION,
        crate::build::COMMIT,
    );
    let ready_message = format!("READY=1\n{}", main.serving.line(&main.status));
    let Some(ready) = ready else {
        main.notifier.send(&ready_message);
        return;
    };
    // A successor: systemd's main process from now on, then the predecessor may drain.
    match ready.report() {
        // systemd's main process now: its notifications count.
        Ok(true) => main.notifier.send(&ready_message),
        Ok(false) => log::warn!(
            "handover: the previous process did not say this one is systemd's main process; \
             serving anyway"
        ),
        Err(e) => log::warn!("handover: cannot tell the previous process this one serves: {e}"),
    }
    log::info!("handover: serving; the previous process drains");
}

/// Under `WatchdogSec=`, pings systemd after each self-probe that went through (watchdog.rs).
fn start_watchdog(pool: &Arc<Pool>, listener: &Listener) -> Result<(), Error> {
    let Some(every) = systemd::watchdog_interval() else {
        return Ok(());
    };
    let pool = Arc::clone(pool);
    watchdog::start(listener.local_target(), every, move || {
        !pool.stopping.load(Ordering::SeqCst)
    })
}

/// Frees a pool thread whenever an accepted connection waits in tiny_http's queue, and ends
/// idle connections (pool_watch.rs); it stops once the server stops.
fn start_pool_watch(
    config: &Config,
    pool: &Arc<Pool>,
    listener: &Listener,
) -> Result<Arc<pool_watch::Totals>, Error> {
    let (serving, pruning) = (Arc::clone(pool), Arc::clone(pool));
    pool_watch::start(
        listener.fd,
        listener.local_target(),
        config.idle_timeout,
        move || !serving.stopping.load(Ordering::SeqCst),
        move |open, since| pruning.connections.retain_open(open, since),
    )
}

/// The event loop: handovers come and go (or fail) while serving goes on, until a termination
/// signal, a dead accept thread or a successor that serves.
fn wait_for_end(main: &Main, events: &Receiver<Event>, handovers: &mut Handovers) -> End {
    loop {
        match next_event(events, &main.accept) {
            Event::Signal => {
                log::info!("shutdown: termination signal received");
                return End::Signal;
            }
            Event::AcceptDied(e) => {
                log::error!(
                    "accept thread died ({e}); shutting down so the supervisor restarts us"
                );
                return End::AcceptDied(e);
            }
            Event::Handover => handovers.begin(main),
            Event::HandoverDone(Ok(next)) => {
                handovers.succeeded(main, next);
                return End::HandedOver;
            }
            Event::HandoverDone(Err(reason)) => handovers.failed(main, &reason),
        }
    }
}

/// Waits for a signal or for the accept thread to die: it reports an accept(2) error before
/// ending, but not its panic, so it is also watched (accept_watch.rs).
fn next_event(events: &Receiver<Event>, accept: &AcceptThread) -> Event {
    loop {
        match events.recv_timeout(accept_watch::INTERVAL) {
            Ok(event) => return event,
            Err(mpsc::RecvTimeoutError::Disconnected) => return Event::Signal,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Some(e) = accept.silent_death() {
                    return Event::AcceptDied(e);
                }
            }
        }
    }
}

/// The handovers asked for while serving.
struct Handovers {
    /// The binary a SIGUSR2 starts; `None` when handovers are off.
    successor: Option<PathBuf>,
    /// Where the thread that waits for a successor reports.
    events: Sender<Event>,
    attempts: u32,
    /// The successor being waited for (its pid), if any.
    pending: Option<u32>,
}

impl Handovers {
    /// Makes an allowed SIGUSR2 an `Event::Handover`, when there is a successor to start.
    fn watch(successor: Option<PathBuf>, events: &Sender<Event>) -> Result<Handovers, Error> {
        if successor.is_some() {
            let requests = events.clone();
            handover::watch(move || {
                let _ = requests.send(Event::Handover);
            })
            .map_err(|source| Error::Thread {
                what: "handover signal",
                source,
            })?;
        }
        Ok(Handovers {
            successor,
            events: events.clone(),
            attempts: 0,
            pending: None,
        })
    }

    /// Starts the successor, unless one is starting already; its wait runs on a thread of its
    /// own and ends in `Event::HandoverDone`.
    fn begin(&mut self, main: &Main) {
        let Some(exe) = &self.successor else { return };
        if let Some(pid) = self.pending {
            log::warn!("handover: pid {pid} is still starting; ignoring this request");
            return;
        }
        self.attempts += 1;
        main.notifier
            .send(&handover::Status::Started(self.attempts).line(&format!(
                "handing over to {} (attempt {})",
                exe.display(),
                self.attempts
            )));
        match handover::start(exe, main.listener.fd, main.pid_file.lock_fd()) {
            Ok(started) => {
                log::info!("handover: started pid {}", started.pid());
                self.pending = Some(started.pid());
                let done = self.events.clone();
                // The wait runs beside the event loop, so signals still count.
                let spawned =
                    thread::Builder::new()
                        .name("handover-wait".into())
                        .spawn(move || {
                            let _ = done.send(Event::HandoverDone(started.wait(HANDOVER_TIMEOUT)));
                        });
                if let Err(e) = spawned {
                    log::error!("handover: cannot start the thread that waits: {e}");
                }
            }
            Err(reason) => self.failed(main, &reason),
        }
    }

    /// The successor serves: systemd learns it is the main process, and so does it.
    fn succeeded(&mut self, main: &Main, next: handover::Successor) {
        self.pending = None;
        // Only the main process may name another one (NotifyAccess=main).
        main.notifier.send(&format!("MAINPID={}", next.pid));
        log::info!(
            "handover: pid {} serves; this process stops accepting and drains",
            next.pid
        );
        next.confirm_main();
    }

    /// The successor did not start or serve: this process goes on serving.
    fn failed(&mut self, main: &Main, reason: &str) {
        self.pending = None;
        let attempts = self.attempts;
        log::error!("handover attempt {attempts} failed: {reason}; this process goes on serving");
        // The successor may have replaced PID before it failed.
        if let Err(e) = main.pid_file.write() {
            log::error!("handover: {}", crate::error::chain(&e));
        }
        main.notifier
            .send(&handover::Status::Failed(attempts).line(&format!(
                "{}; handover attempt {attempts} failed: {reason}",
                main.status
            )));
    }

    /// Stops a successor still starting when serving ends.
    fn abort_pending(&self) {
        if let Some(pid) = self.pending {
            log::warn!("handover: stopping pid {pid}, which was still starting");
            handover::abort(pid);
        }
    }
}

/// Tells the workers and systemd that the server stops, and stops accepting.
fn stop_accepting(main: &Main, pool: &Pool, handed_over: bool, deadline: Instant) {
    pool.stopping.store(true, Ordering::SeqCst);
    // After a handover systemd's main process is the successor: not a word from this one.
    if !handed_over {
        let status = handover::Status::Stopping.line("draining");
        main.notifier.send(&format!("STOPPING=1\n{status}"));
    }
    let limit = (Instant::now() + STOP_ACCEPTING).min(deadline);
    main.listener
        .stop_accepting(handed_over, &main.accept, limit);
    log::info!(
        "shutdown: stopped accepting; draining {} request(s) in flight, {} open connection(s)",
        pool.in_flight.load(Ordering::SeqCst),
        open_clients(pool.port)
    );
}

/// Gives keep-alive connections DRAIN_WINDOW to send one more request, then closes the idle
/// ones and lets the workers end once the queue is empty.
fn close_idle_connections(config: &Config, pool: &Pool, deadline: Instant) {
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
}

/// Waits for the workers, closes the database connections (both within the deadline) and
/// removes `PID`.
fn close(
    config: &Config,
    main: &Main,
    pool: &Pool,
    workers: Workers,
    deadline: Instant,
) -> Result<(), Error> {
    let finished = workers.finish(config, deadline);
    pool.health.close();
    let grace = deadline
        .saturating_duration_since(Instant::now())
        .min(DB_CLOSE_GRACE);
    match db::wait_closed(&pool.db, grace) {
        0 => log::info!("shutdown: database connections closed"),
        n => log::warn!("shutdown: {n} database connection(s) still blocked; abandoning them"),
    }
    let (checks, answers) = pool.health.totals();
    log::info!("health: {answers} answers from {checks} database checks");
    main.pid_file.remove();
    log::info!("shutdown: complete");
    finished
}

fn worker(pool: &Pool) {
    loop {
        let poll = if pool.stopping.load(Ordering::SeqCst) {
            DRAIN_POLL
        } else {
            POLL
        };
        match pool.server.recv_timeout(poll) {
            Ok(Some(request)) => serve(pool, request),
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

fn serve(pool: &Pool, request: Request) {
    pool.in_flight.fetch_add(1, Ordering::SeqCst);
    // Only the debug line needs the time and its own copy of the request line.
    let start = log::log_enabled!(log::Level::Debug).then(Instant::now);
    let version = request.http_version();
    let headers: Vec<(&str, &str)> = request
        .headers()
        .iter()
        .map(|h| (h.field.as_str().as_str(), h.value.as_str()))
        .collect();
    let oversized = api::oversized_headers(&headers, pool.max_header_bytes);
    let rejected = api::reject_reason((version.0, version.1), &headers);
    let (method, url) = (request.method().as_str(), request.url());
    let reply = catch_unwind(AssertUnwindSafe(|| match (oversized, &rejected) {
        (Some(size), _) => Reply::error(
            431,
            &format!(
                "request header fields too large: {size} bytes, the limit is {} (TRIBIST_MAX_HEADER_BYTES)",
                pool.max_header_bytes
            ),
        ),
        (None, Some(reason)) => Reply::error(400, &format!("bad request: {reason}")),
        (None, None) => api::handle(method, url, &mut || pool.health.check()),
    }))
    .unwrap_or_else(|_| {
        log::error!("panic while handling {method} {}; answered 500", clip(url));
        Reply::error(500, "internal error; the server log has the details")
    });
    let line = start.map(|_| format!("{method} {}", clip(url)));
    drop(headers);
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
    if let (Some(start), Some(line)) = (start, line) {
        if let Err(e) = sent {
            log::debug!("{line}: client went away before the answer: {e}");
        }
        log::debug!(
            "{line} {status} {:.3}ms",
            start.elapsed().as_secs_f64() * 1e3
        );
    }
    pool.in_flight.fetch_sub(1, Ordering::SeqCst);
}

/// tiny_http's response for `reply`. The headers every answer has are parsed once.
fn to_response(reply: Reply) -> Response<std::io::Cursor<Vec<u8>>> {
    static COMMON: OnceLock<[Option<Header>; 3]> = OnceLock::new();
    let [health_json, json, no_store] = COMMON.get_or_init(|| {
        [
            Header::from_bytes("Content-Type", api::HEALTH_JSON).ok(),
            Header::from_bytes("Content-Type", api::JSON).ok(),
            Header::from_bytes("Cache-Control", "no-store").ok(),
        ]
    });
    let mut response = Response::from_string(reply.body).with_status_code(reply.status);
    let content_type = match reply.content_type {
        api::HEALTH_JSON => health_json.clone(),
        api::JSON => json.clone(),
        other => Header::from_bytes("Content-Type", other).ok(),
    };
    // Our own constants: they always parse.
    if let Some(content_type) = content_type {
        response.add_header(content_type);
    }
    for (name, value) in reply.headers {
        let header = match (name, value.as_str()) {
            ("Cache-Control", "no-store") => no_store.clone(),
            _ => Header::from_bytes(name.as_bytes(), value.as_bytes()).ok(),
        };
        if let Some(header) = header {
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
