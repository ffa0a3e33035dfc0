//! The PostgreSQL check behind `/health`, bounded in time whatever the database does.
//!
//! Each worker owns a `Checker` with one connection, reused across requests. A check is a
//! query round trip on that connection, run on the worker's thread and bounded by the
//! client's own timer (`Client::is_valid`). The postgres crate cannot bound connection
//! start-up and authentication (only the TCP connect), so connecting runs on a short-lived
//! thread that the worker waits for with a deadline; a new connection must answer `SELECT 1`
//! before it is used. An attempt stuck on a silent peer is kept, not repeated, so threads and
//! sockets stay bounded at one attempt per worker. After any failure the connection is
//! dropped and the next check reconnects, so `/health` recovers by itself.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use postgres::{Client, NoTls};

use crate::api::DbOutcome;
use crate::config::DbTarget;

/// The query each new connection must answer before it serves checks.
const FIRST_QUERY: &str = "SELECT 1";

/// State shared by all checkers: the last verdict (to log transitions once, not per worker)
/// and how many connection threads are alive (so shutdown can wait for them to close).
#[derive(Default)]
pub struct Shared {
    failing: AtomicBool,
    live_threads: AtomicUsize,
}

impl Shared {
    pub fn live_threads(&self) -> usize {
        self.live_threads.load(Ordering::SeqCst)
    }

    fn record(&self, outcome: &DbOutcome, target: &str) {
        let failing = outcome.result.is_err();
        if self.failing.swap(failing, Ordering::SeqCst) != failing {
            match &outcome.result {
                Err(reason) => log::warn!("database {target} check failing: {reason}"),
                Ok(()) => log::info!("database {target} reachable again"),
            }
        }
    }
}

pub struct Checker {
    id: usize,
    target: DbTarget,
    timeout: Duration,
    shared: Arc<Shared>,
    client: Option<Client>,
    connecting: Option<Connecting>,
}

/// One check with a fresh connection, for `server --check-config`: the same bounded path as
/// a worker's first `/health`.
pub fn check_once(config: &crate::config::Config) -> DbOutcome {
    let mut checker = Checker::new(
        0,
        config.db.clone(),
        config.db_timeout,
        Arc::new(Shared::default()),
    );
    checker.check()
}

/// A connection attempt running on its own thread, because the postgres crate cannot bound
/// start-up and authentication. It is kept until it finishes, so a worker never has more than
/// one attempt (one thread, one socket) in flight.
struct Connecting {
    result: Receiver<Result<Client, String>>,
    since: Instant,
}

impl Checker {
    pub fn new(id: usize, target: DbTarget, timeout: Duration, shared: Arc<Shared>) -> Checker {
        Checker {
            id,
            target,
            timeout,
            shared,
            client: None,
            connecting: None,
        }
    }

    /// Runs the health query, answering within the DB timeout (plus scheduling noise).
    pub fn check(&mut self) -> DbOutcome {
        let start = Instant::now();
        let result = self.check_inner(start + self.timeout);
        let outcome = DbOutcome {
            result,
            elapsed: start.elapsed(),
        };
        self.shared.record(&outcome, &self.target.display);
        outcome
    }

    fn check_inner(&mut self, deadline: Instant) -> Result<(), String> {
        if self.client.is_none() {
            self.client = Some(self.await_connection(deadline)?);
        }
        let Some(client) = self.client.as_mut() else {
            return Err("no connection".into());
        };
        // The round trip runs on this thread, bounded by the client's own timer. A connect
        // that used up most of the budget still leaves the query a fair slice of it.
        let budget = deadline
            .saturating_duration_since(Instant::now())
            .max((self.timeout / 4).min(Duration::from_millis(500)));
        let sent = Instant::now();
        match client.is_valid(budget) {
            Ok(()) => Ok(()),
            Err(e) => {
                let reason = if sent.elapsed() >= budget {
                    format!(
                        "no answer within {} on an open connection (database stalled or \
                         network dropping packets)",
                        fmt_secs(self.timeout)
                    )
                } else {
                    describe(&e)
                };
                self.discard_client();
                Err(reason)
            }
        }
    }

    fn await_connection(&mut self, deadline: Instant) -> Result<Client, String> {
        let connecting = match self.connecting.take() {
            Some(c) => c,
            None => self.spawn_connect()?,
        };
        let wait = deadline.saturating_duration_since(Instant::now());
        match connecting.result.recv_timeout(wait) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => {
                let started = connecting.since.elapsed().as_secs_f64();
                self.connecting = Some(connecting);
                Err(format!(
                    "no answer within {}: connecting for {started:.1}s (database host \
                     unreachable, overloaded or not speaking the PostgreSQL protocol)",
                    fmt_secs(self.timeout)
                ))
            }
            Err(RecvTimeoutError::Disconnected) => {
                log::error!(
                    "database connect thread of worker {} ended without an answer",
                    self.id
                );
                Err("internal error: the connect attempt ended without an answer".into())
            }
        }
    }

    fn spawn_connect(&self) -> Result<Connecting, String> {
        let (tx, rx) = mpsc::channel();
        let target = self.target.clone();
        self.spawn_tracked(format!("db-connect-{}", self.id), move || {
            let result = catch_unwind(AssertUnwindSafe(|| connect(&target)))
                .unwrap_or_else(|_| Err("internal error while connecting (see the log)".into()));
            // The worker may have given up waiting; then the connection is simply closed.
            let _ = tx.send(result);
        })?;
        Ok(Connecting {
            result: rx,
            since: Instant::now(),
        })
    }

    /// Closes the connection off the worker's thread: closing sends Terminate and waits for
    /// the socket, which a stalled peer can hold up until the TCP user timeout.
    fn discard_client(&mut self) {
        if let Some(client) = self.client.take() {
            // If no thread can be started, the closure and the client are dropped right here.
            let _ = self.spawn_tracked(format!("db-close-{}", self.id), move || drop(client));
        }
    }

    /// Spawns a thread counted in `Shared::live_threads`.
    fn spawn_tracked(&self, name: String, f: impl FnOnce() + Send + 'static) -> Result<(), String> {
        let shared = Arc::clone(&self.shared);
        shared.live_threads.fetch_add(1, Ordering::SeqCst);
        let spawned = thread::Builder::new().name(name).spawn(move || {
            let _alive = LiveGuard(shared);
            f();
        });
        spawned.map(|_| ()).map_err(|e| {
            self.shared.live_threads.fetch_sub(1, Ordering::SeqCst);
            format!("cannot start a database thread: {e}")
        })
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.discard_client();
    }
}

struct LiveGuard(Arc<Shared>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.live_threads.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Opens a connection and proves it can run SQL: `SELECT 1` must return 1.
fn connect(target: &DbTarget) -> Result<Client, String> {
    let mut client = target.config.connect(NoTls).map_err(|e| describe(&e))?;
    let rows = client.simple_query(FIRST_QUERY).map_err(|e| describe(&e))?;
    let one = rows.iter().find_map(|m| match m {
        postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
        _ => None,
    });
    if one.as_deref() != Some("1") {
        return Err(format!("unexpected answer to {FIRST_QUERY:?}: {one:?}"));
    }
    log::debug!("connected to database {}", target.display);
    Ok(client)
}

/// A short reason from a postgres error: the server's message when it sent one, else the
/// client's description with its cause. Neither contains the password.
pub fn describe(err: &postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        return format!("{}: {} ({})", db.severity(), db.message(), db.code().code());
    }
    crate::error::chain(err)
}

fn fmt_secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

/// Waits up to `grace` for every connection thread to close its connection.
pub fn wait_closed(shared: &Shared, grace: Duration) -> usize {
    let deadline = Instant::now() + grace;
    while shared.live_threads() > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    shared.live_threads()
}
