//! The PostgreSQL check behind `/health`, bounded in time whatever the database does.
//!
//! Concurrent `/health` requests share one check (`HealthChecks`, single_flight.rs). A check
//! runs on a `Checker`, one connection reused across checks, taken from a small set that
//! grows only while checks overlap (a slow database): one connection normally, however many
//! workers there are. A check is a query round trip on that connection, run on the thread of
//! the request whose turn it is and bounded by the client's own timer (`Client::is_valid`).
//! The postgres crate cannot bound connection start-up and authentication (only the TCP
//! connect), so connecting runs on a short-lived thread that the check waits for with a
//! deadline; a new connection must answer `SELECT 1` before it is used. An attempt stuck on a
//! silent peer is kept with its checker, not repeated, so threads and sockets stay bounded at
//! one attempt per checker; one that finished while no check waited (the warm-up made at the
//! start) is taken however old, and only one still running after four timeouts counts as
//! stuck. After any failure the connection is dropped and the next check reconnects, so
//! `/health` recovers by itself. Each failure says whether waiting can help (`classify`: the
//! `failure` of `/health`'s 503, `--check-config`'s exit code). Connections use TLS as
//! `sslmode` says (tls.rs); each learns once, from the server, whether it is encrypted.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use postgres::Client;

use crate::api::{DbFailure, DbOutcome, Failure};
use crate::config::DbTarget;
use crate::single_flight::{Missed, SingleFlight};

/// The query each new connection must answer before it serves checks: `1`, and whether the
/// server sees this connection encrypted (`t`/`f`; NULL where pg_stat_ssl hides it).
const FIRST_QUERY: &str = "SELECT 1, (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())";

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
                Err(f) => log::warn!(
                    "database {target} check failing: {} (failure: {})",
                    f.reason,
                    f.kind.as_str()
                ),
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
    /// Whether `client`'s connection is encrypted, as the server said.
    encrypted: Option<bool>,
    connecting: Option<Connecting>,
}

/// `/health`'s checks, shared by every worker: one flight, and the checkers it runs on.
pub struct HealthChecks {
    /// Checks overlap only once one has run for an eighth of the timeout (a slow database,
    /// not a storm of probes), so at most eight run at once.
    flight: SingleFlight<DbOutcome>,
    /// Checkers not running a check, the most recently used last (its connection is warm).
    idle: Mutex<Vec<Checker>>,
    made: AtomicUsize,
    target: DbTarget,
    timeout: Duration,
    shared: Arc<Shared>,
}

impl HealthChecks {
    pub fn new(target: DbTarget, timeout: Duration, shared: Arc<Shared>) -> HealthChecks {
        HealthChecks {
            flight: SingleFlight::new(timeout / 8, timeout / 2, |o: &DbOutcome| o.result.is_ok()),
            idle: Mutex::new(Vec::new()),
            made: AtomicUsize::new(0),
            target,
            timeout,
            shared,
        }
    }

    /// Starts connecting one checker in the background, so that the first `/health` after a
    /// start or a handover finds its connection (nearly) ready.
    pub fn warm_up(&self) {
        let mut checker = self.make();
        checker.warm_up();
        self.lock_idle().push(checker);
    }

    /// The outcome of a round trip that started after this call, shared with every request
    /// that waits for the same one (single_flight.rs). Answers within the DB timeout.
    pub fn check(&self) -> DbOutcome {
        let arrived = Instant::now();
        let deadline = arrived + self.timeout;
        let (mut outcome, answered) = self.flight.run(
            deadline,
            || {
                let mut checker = self.lock_idle().pop().unwrap_or_else(|| self.make());
                let outcome = checker.check_by(deadline);
                self.lock_idle().push(checker);
                outcome
            },
            |missed| DbOutcome {
                result: Err(DbFailure::unavailable(match missed {
                    Missed::Timeout => format!(
                        "no answer within {}: the database check in flight has not ended \
                         (database stalled or network dropping packets)",
                        fmt_secs(self.timeout)
                    ),
                    Missed::Stalled(age) => format!(
                        "no answer: a database check has been waiting {:.1}s for the database \
                         (database stalled or network dropping packets)",
                        age.as_secs_f64()
                    ),
                    Missed::CheckFailed => {
                        "internal error in the database check; the server log has the details"
                            .into()
                    }
                })),
                elapsed: arrived.elapsed(),
                encrypted: None,
                answered: 1,
            },
        );
        outcome.answered = answered;
        outcome
    }

    /// How many checks ran and how many requests they answered, since the start.
    pub fn totals(&self) -> (u64, u64) {
        self.flight.totals()
    }

    /// Closes every idle checker's connection (off this thread); at shutdown, before
    /// `wait_closed`.
    pub fn close(&self) {
        let idle = std::mem::take(&mut *self.lock_idle());
        drop(idle);
    }

    fn make(&self) -> Checker {
        let id = self.made.fetch_add(1, Ordering::Relaxed) + 1;
        Checker::new(
            id,
            self.target.clone(),
            self.timeout,
            Arc::clone(&self.shared),
        )
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Checker>> {
        // Nothing panics while it is held.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `server --check-config [FILE]`: `check_once`, its verdict as the exit code (0, or 4 and 5:
/// `Failure`); the feature's name in `server --describe`.
pub const CHECK_CONFIG_FEATURE: &str = "check-config";

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
/// start-up and authentication. It is kept until it finishes (or is abandoned as stuck), so a
/// checker never has more than one attempt (one thread, one socket) in flight.
struct Connecting {
    result: Receiver<Result<(Client, Option<bool>), DbFailure>>,
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
            encrypted: None,
            connecting: None,
        }
    }

    /// Starts connecting in the background if there is no connection and no attempt yet (one
    /// attempt at a time, as always).
    pub fn warm_up(&mut self) {
        if self.client.is_none() && self.connecting.is_none() {
            self.connecting = self.spawn_connect().ok();
        }
    }

    /// Runs the health query, answering within the DB timeout (plus scheduling noise).
    pub fn check(&mut self) -> DbOutcome {
        self.check_by(Instant::now() + self.timeout)
    }

    /// Runs the health query, answering by `deadline` (plus scheduling noise).
    fn check_by(&mut self, deadline: Instant) -> DbOutcome {
        let start = Instant::now();
        let result = self.check_inner(deadline);
        let outcome = DbOutcome {
            result,
            elapsed: start.elapsed(),
            encrypted: self.client.as_ref().and(self.encrypted),
            answered: 1,
        };
        self.shared.record(&outcome, &self.target.display);
        outcome
    }

    fn check_inner(&mut self, deadline: Instant) -> Result<(), DbFailure> {
        if self.client.is_none() {
            let (client, encrypted) = self.await_connection(deadline)?;
            self.client = Some(client);
            self.encrypted = encrypted;
        }
        let Some(client) = self.client.as_mut() else {
            return Err(DbFailure::unavailable("no connection"));
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
                let failure = if sent.elapsed() >= budget {
                    DbFailure::unavailable(format!(
                        "no answer within {} on an open connection (database stalled or \
                         network dropping packets)",
                        fmt_secs(self.timeout)
                    ))
                } else {
                    failure(&e)
                };
                self.discard_client();
                Err(failure)
            }
        }
    }

    fn await_connection(&mut self, deadline: Instant) -> Result<(Client, Option<bool>), DbFailure> {
        let connecting = match self.connecting.take() {
            None => self.spawn_connect()?,
            Some(c) => match c.result.try_recv() {
                // An attempt that ended while no check waited for it (the warm-up, or one a
                // check gave up on): its connection is taken however long it waited (the
                // round trip that follows proves it still works); its failure is older than
                // this check, so it may no longer be true, and a new attempt is made.
                Ok(Ok(connection)) => return Ok(connection),
                Ok(Err(_)) | Err(TryRecvError::Disconnected) => self.spawn_connect()?,
                // A peer that accepts and then holds the connection (a proxy, a load
                // balancer, a frozen server) never lets the attempt end: TCP keepalives are
                // answered. Kept for ever, it would keep /health failing after the database
                // is back. So an attempt still running when old is abandoned (its thread ends
                // whenever the peer lets go) and a new one made, as long as few threads are
                // held that way.
                Err(TryRecvError::Empty)
                    if c.since.elapsed() >= abandon_after(self.timeout)
                        && self.shared.live_threads() < MAX_DB_THREADS =>
                {
                    log::warn!(
                        "database connect attempt {} stuck for {:.1}s; abandoning it and trying \
                         again",
                        self.id,
                        c.since.elapsed().as_secs_f64()
                    );
                    drop(c);
                    self.spawn_connect()?
                }
                Err(TryRecvError::Empty) => c,
            },
        };
        let wait = deadline.saturating_duration_since(Instant::now());
        match connecting.result.recv_timeout(wait) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => {
                let started = connecting.since.elapsed().as_secs_f64();
                self.connecting = Some(connecting);
                Err(DbFailure::unavailable(format!(
                    "no answer within {}: connecting for {started:.1}s (database host \
                     unreachable, overloaded or not speaking the PostgreSQL protocol)",
                    fmt_secs(self.timeout)
                )))
            }
            Err(RecvTimeoutError::Disconnected) => {
                log::error!(
                    "database connect thread {} ended without an answer",
                    self.id
                );
                Err(DbFailure::unavailable(
                    "internal error: the connect attempt ended without an answer",
                ))
            }
        }
    }

    fn spawn_connect(&self) -> Result<Connecting, DbFailure> {
        let (tx, rx) = mpsc::channel();
        let target = self.target.clone();
        self.spawn_tracked(format!("db-connect-{}", self.id), move || {
            let result = catch_unwind(AssertUnwindSafe(|| connect(&target))).unwrap_or_else(|_| {
                Err(DbFailure::unavailable(
                    "internal error while connecting (see the log)",
                ))
            });
            // The worker may have given up waiting; then the connection is simply closed.
            let _ = tx.send(result);
        })
        .map_err(DbFailure::unavailable)?;
        Ok(Connecting {
            result: rx,
            since: Instant::now(),
        })
    }

    /// Closes the connection off the worker's thread: closing sends Terminate and waits for
    /// the socket, which a stalled peer can hold up until the TCP user timeout.
    fn discard_client(&mut self) {
        self.encrypted = None;
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

/// Opens a connection (TLS as `sslmode` says) and proves it can run SQL: `SELECT 1` must
/// return 1. Also returns whether the server sees the connection encrypted.
fn connect(target: &DbTarget) -> Result<(Client, Option<bool>), DbFailure> {
    let mut client = target.config.connect(target.tls.connector()).map_err(|e| {
        let mut failure = failure(&e);
        if crate::tls::is_tls_failure(&failure.reason) {
            let hint = target.tls.hint(&failure.reason);
            failure.reason = format!("{} ({hint})", failure.reason);
        }
        failure
    })?;
    let rows = client.simple_query(FIRST_QUERY).map_err(|e| failure(&e))?;
    let row = rows.iter().find_map(|m| match m {
        postgres::SimpleQueryMessage::Row(row) => Some((
            row.get(0).map(str::to_owned),
            row.get(1).map(|ssl| ssl == "t"),
        )),
        _ => None,
    });
    let encrypted = match row {
        Some((Some(one), encrypted)) if one == "1" => encrypted,
        other => {
            return Err(DbFailure::unavailable(format!(
                "unexpected answer to {FIRST_QUERY:?}: {other:?}"
            )))
        }
    };
    log::debug!(
        "connected to database {} ({})",
        target.display,
        encryption(encrypted)
    );
    Ok((client, encrypted))
}

/// How a connection's encryption is described (logs, `--check-config`).
pub fn encryption(encrypted: Option<bool>) -> &'static str {
    match encrypted {
        Some(true) => "encrypted",
        Some(false) => "not encrypted",
        None => "encryption unknown",
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

/// A failed connection or query: why (`describe`), and whether waiting can help (`classify`).
fn failure(err: &postgres::Error) -> DbFailure {
    DbFailure::new(classify(err), describe(err))
}

/// Whether an error from connecting or querying is definite, read from the error's types and
/// codes (never its text): the SQLSTATE the server sent, or the rustls error of a failed
/// handshake. Anything else (I/O errors, a connection closed, a failure of the client) may
/// pass by waiting.
pub fn classify(err: &(dyn std::error::Error + 'static)) -> Failure {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(db) = e.downcast_ref::<postgres::error::DbError>() {
            return classify_sqlstate(db.code());
        }
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return classify_tls(tls);
        }
        // tokio-rustls reports a failed handshake as an io::Error holding the rustls error,
        // which io::Error's `source` skips.
        if let Some(tls) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return classify_tls(tls);
        }
        cur = e.source();
    }
    Failure::Unavailable
}

/// The server's errors that stay until someone changes the settings or the database.
fn classify_sqlstate(code: &postgres::error::SqlState) -> Failure {
    match code.code() {
        // Class 28: invalid_authorization_specification (no such role, pg_hba.conf rejects
        // the connection, the role may not log in) and 28P01 invalid_password.
        c if c.starts_with("28") => Failure::Configuration,
        // invalid_catalog_name: no such database.
        "3D000"
        // insufficient_privilege: no CONNECT privilege on the database.
        | "42501"
        // undefined_object: an unknown setting in `options`.
        | "42704"
        // invalid_parameter_value: a setting's value the server refuses.
        | "22023" => Failure::Configuration,
        // Among others 57P03 cannot_connect_now (starting up, shutting down), 53300
        // too_many_connections, 57P01 admin_shutdown, class 08 connection exceptions.
        _ => Failure::Unavailable,
    }
}

/// A certificate that fails verification, or a server whose TLS cannot talk to ours.
fn classify_tls(err: &rustls::Error) -> Failure {
    match err {
        rustls::Error::InvalidCertificate(_)
        | rustls::Error::NoCertificatesPresented
        | rustls::Error::UnsupportedNameType
        | rustls::Error::InvalidCertRevocationList(_)
        | rustls::Error::PeerIncompatible(_) => Failure::Configuration,
        _ => Failure::Unavailable,
    }
}

/// Database threads (connect attempts, closing connections) beyond which a stuck connect
/// attempt is waited for rather than abandoned.
const MAX_DB_THREADS: usize = 64;

/// How old a connect attempt that never answered must be before it is abandoned.
fn abandon_after(timeout: Duration) -> Duration {
    (timeout * 4).max(Duration::from_secs(1))
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

#[cfg(test)]
mod tests {
    use super::*;
    use postgres::error::SqlState;
    use rustls::CertificateError;
    use std::io;

    /// An error whose cause is `inner`, as postgres::Error wraps what went wrong.
    #[derive(Debug)]
    struct Outer(Box<dyn std::error::Error + Send + Sync>);

    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("error connecting")
        }
    }

    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&*self.0)
        }
    }

    fn of_code(code: &str) -> Failure {
        classify_sqlstate(&SqlState::from_code(code))
    }

    #[test]
    fn settings_the_server_refuses_are_definite() {
        for code in ["28P01", "28000", "3D000", "42501", "42704", "22023"] {
            assert_eq!(of_code(code), Failure::Configuration, "{code}");
        }
    }

    #[test]
    fn a_database_starting_full_or_going_away_is_transient() {
        for code in [
            "57P03", "53300", "57P01", "57P02", "08006", "08001", "XX000", "ZZ999",
        ] {
            assert_eq!(of_code(code), Failure::Unavailable, "{code}");
        }
    }

    /// tokio-rustls hands a failed handshake over as an io::Error holding the rustls error,
    /// which postgres::Error holds as its cause.
    #[test]
    fn a_certificate_that_fails_verification_is_definite() {
        for tls in [
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
            rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
            rustls::Error::InvalidCertificate(CertificateError::Expired),
            rustls::Error::NoCertificatesPresented,
        ] {
            let wrapped = Outer(Box::new(io::Error::new(io::ErrorKind::InvalidData, tls)));
            assert_eq!(classify(&wrapped), Failure::Configuration, "{wrapped:?}");
        }
        let direct = Outer(Box::new(rustls::Error::InvalidCertificate(
            CertificateError::BadSignature,
        )));
        assert_eq!(classify(&direct), Failure::Configuration);
    }

    #[test]
    fn network_errors_and_other_tls_errors_are_transient() {
        for kind in [
            io::ErrorKind::ConnectionRefused,
            io::ErrorKind::TimedOut,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::UnexpectedEof,
            io::ErrorKind::Other,
        ] {
            let wrapped = Outer(Box::new(io::Error::from(kind)));
            assert_eq!(classify(&wrapped), Failure::Unavailable, "{kind:?}");
        }
        let unreachable = io::Error::from_raw_os_error(libc::ENETUNREACH);
        assert_eq!(classify(&unreachable), Failure::Unavailable);
        let tls = Outer(Box::new(io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::General("peer went away".into()),
        )));
        assert_eq!(classify(&tls), Failure::Unavailable);
        // An error with no known cause is not definite: the kit then waits, as before.
        assert_eq!(
            classify(&Outer("server does not support TLS".into())),
            Failure::Unavailable
        );
    }
}
