//! The PostgreSQL check behind `/health`, bounded in time whatever the database does.
//!
//! The postgres crate bounds only the TCP connect: start-up, authentication and queries can
//! block forever when the peer accepts and never answers. So each worker owns a `Checker`
//! whose connection lives on a dedicated thread; the worker hands it a request and waits at
//! most the DB timeout for the answer. A thread stuck on a silent peer stays the only one for
//! that worker: the next check first waits for the stuck one instead of starting another, so
//! threads and connections stay bounded at one per worker. The connection is reused across
//! checks and dropped after any failure, so the next check reconnects.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use postgres::{Client, NoTls};

use crate::api::DbOutcome;
use crate::config::DbTarget;

/// The query `/health` runs: one round trip, no prepared statement to cache.
const HEALTH_QUERY: &str = "SELECT 1";

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
    conn: Option<ConnThread>,
}

struct ConnThread {
    requests: Sender<()>,
    answers: Receiver<Result<(), String>>,
    /// Requests sent whose answer has not been read yet (0 or 1).
    outstanding: usize,
    since: Instant,
}

impl Checker {
    pub fn new(id: usize, target: DbTarget, timeout: Duration, shared: Arc<Shared>) -> Checker {
        Checker { id, target, timeout, shared, conn: None }
    }

    /// Runs the health query, answering within the DB timeout (plus scheduling noise).
    pub fn check(&mut self) -> DbOutcome {
        let start = Instant::now();
        let result = self.check_inner(start + self.timeout);
        let outcome = DbOutcome { result, elapsed: start.elapsed() };
        self.shared.record(&outcome, &self.target.display);
        outcome
    }

    fn check_inner(&mut self, deadline: Instant) -> Result<(), String> {
        let timeout = self.timeout;
        let conn = match self.conn.take() {
            Some(conn) => conn,
            None => self.spawn()?,
        };
        let mut conn = conn;
        // A check that timed out earlier may still be running: wait for it first, so at
        // most one thread per worker is ever blocked on the database.
        while conn.outstanding > 0 {
            match conn.answers.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(_) => conn.outstanding -= 1,
                Err(RecvTimeoutError::Timeout) => {
                    let waited = conn.since.elapsed().as_secs_f64();
                    self.conn = Some(conn);
                    return Err(format!(
                        "no answer within {}; a check started {waited:.1}s ago is still \
                         waiting for the database",
                        fmt_secs(timeout)
                    ));
                }
                Err(RecvTimeoutError::Disconnected) => return Err(self.died()),
            }
        }
        if conn.requests.send(()).is_err() {
            return Err(self.died());
        }
        conn.outstanding = 1;
        conn.since = Instant::now();
        let answer = conn.answers.recv_timeout(deadline.saturating_duration_since(Instant::now()));
        match answer {
            Ok(result) => {
                conn.outstanding = 0;
                self.conn = Some(conn);
                result
            }
            Err(RecvTimeoutError::Timeout) => {
                self.conn = Some(conn);
                Err(format!(
                    "no answer within {} (database host unreachable, overloaded or not \
                     speaking the PostgreSQL protocol)",
                    fmt_secs(timeout)
                ))
            }
            Err(RecvTimeoutError::Disconnected) => Err(self.died()),
        }
    }

    fn died(&mut self) -> String {
        self.conn = None;
        log::error!("database connection thread db-{} ended unexpectedly; restarting it", self.id);
        "internal error: the database connection thread ended; it is restarted on the next check"
            .into()
    }

    fn spawn(&self) -> Result<ConnThread, String> {
        let (req_tx, req_rx) = mpsc::channel::<()>();
        let (ans_tx, ans_rx) = mpsc::channel();
        let target = self.target.clone();
        let shared = Arc::clone(&self.shared);
        shared.live_threads.fetch_add(1, Ordering::SeqCst);
        let spawned = thread::Builder::new()
            .name(format!("db-{}", self.id))
            .spawn(move || {
                let _alive = LiveGuard(Arc::clone(&shared));
                connection_loop(&target, &req_rx, &ans_tx);
            });
        match spawned {
            Ok(_) => Ok(ConnThread {
                requests: req_tx,
                answers: ans_rx,
                outstanding: 0,
                since: Instant::now(),
            }),
            Err(e) => {
                self.shared.live_threads.fetch_sub(1, Ordering::SeqCst);
                Err(format!("cannot start a database thread: {e}"))
            }
        }
    }
}

struct LiveGuard(Arc<Shared>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.live_threads.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Owns one connection; answers each request with the result of the health query. Ends
/// (closing the connection) when the worker drops its `Checker`.
fn connection_loop(target: &DbTarget, requests: &Receiver<()>, answers: &Sender<Result<(), String>>) {
    let mut client: Option<Client> = None;
    while requests.recv().is_ok() {
        let result = catch_unwind(AssertUnwindSafe(|| query(target, &mut client)))
            .unwrap_or_else(|_| {
                client = None;
                Err("internal error while talking to the database (see the log)".into())
            });
        if answers.send(result).is_err() {
            break;
        }
    }
    if let Some(client) = client {
        let _ = client.close();
    }
}

fn query(target: &DbTarget, client: &mut Option<Client>) -> Result<(), String> {
    if client.as_ref().is_none_or(Client::is_closed) {
        let fresh = target.config.connect(NoTls).map_err(|e| describe(&e))?;
        log::debug!("connected to database {}", target.display);
        *client = Some(fresh);
    }
    let Some(conn) = client.as_mut() else {
        return Err("no connection".into());
    };
    match conn.simple_query(HEALTH_QUERY) {
        Ok(_) => Ok(()),
        Err(e) => {
            *client = None;
            Err(describe(&e))
        }
    }
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
