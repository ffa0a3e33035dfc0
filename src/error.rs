//! The one error type of the server, and the exit code each failure maps to.
//!
//! Every failure the environment can cause ends up here, so `main` prints it once, with its
//! cause chain, and exits with a code an operator (or systemd) can act on:
//! 0 clean exit, 1 runtime failure, 2 bad configuration or usage, 3 already running; and for
//! `--check-config`, 4 the database refused the settings (definite) or 5 it did not answer
//! (transient), so that a deployment script knows whether waiting can help.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Exit code for a runtime failure (systemd restarts the service).
pub const EXIT_FAILURE: i32 = 1;
/// Exit code for a bad configuration value or a bad command line.
pub const EXIT_CONFIG: i32 = 2;
/// Exit code when another server already runs in the same working directory.
pub const EXIT_ALREADY_RUNNING: i32 = 3;
/// `--check-config`: the database refused the settings; waiting will not help.
pub const EXIT_DB_CONFIGURATION: i32 = 4;
/// `--check-config`: the database did not answer (or not yet); it may by waiting.
pub const EXIT_DB_UNAVAILABLE: i32 = 5;

#[derive(Debug)]
pub enum Error {
    /// An environment variable is missing or malformed.
    Config { var: &'static str, problem: String },
    /// The command line is wrong.
    Usage(String),
    /// Another server holds the lock of this working directory.
    AlreadyRunning { dir: PathBuf, pid: Option<u32> },
    /// Writing, reading or locking the PID file failed.
    PidFile { path: PathBuf, source: io::Error },
    /// The address file (`TRIBIST_ADDRESS_FILE`) could not be written.
    AddressFile { path: PathBuf, source: io::Error },
    /// The listen address could not be bound.
    Bind {
        addr: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The signal handler could not be installed.
    Signal(ctrlc::Error),
    /// A thread could not be started.
    Thread {
        what: &'static str,
        source: io::Error,
    },
    /// tiny_http's accept thread died: the process no longer accepts connections.
    AcceptDied(io::Error),
    /// `--check-config`: the configuration parses but the database check failed.
    CheckFailed {
        failure: crate::api::Failure,
        message: String,
    },
    /// Graceful shutdown did not finish within its deadline.
    ShutdownDeadline { secs: f64, busy: usize },
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config { .. } | Error::Usage(_) => EXIT_CONFIG,
            Error::AlreadyRunning { .. } => EXIT_ALREADY_RUNNING,
            Error::CheckFailed { failure, .. } => match failure {
                crate::api::Failure::Configuration => EXIT_DB_CONFIGURATION,
                crate::api::Failure::Unavailable => EXIT_DB_UNAVAILABLE,
            },
            _ => EXIT_FAILURE,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config { var, problem } => write!(f, "{var}: {problem}"),
            Error::Usage(msg) => write!(f, "{msg} (see `server --help`)"),
            Error::AlreadyRunning { dir, pid } => {
                let who = match pid {
                    Some(pid) => format!("pid {pid}"),
                    None => "another process".to_string(),
                };
                write!(
                    f,
                    "another server ({who}) is already running in {}; stop it first \
                     (`systemctl stop tribist` or `kill {}`)",
                    dir.display(),
                    pid.map_or_else(|| "<pid>".to_string(), |p| p.to_string())
                )
            }
            Error::PidFile { path, .. } => write!(
                f,
                "cannot write PID file {}: check that the working directory exists and is \
                 writable by this user",
                path.display()
            ),
            Error::AddressFile { path, .. } => write!(
                f,
                "cannot write the address file {} (TRIBIST_ADDRESS_FILE): check that its \
                 directory exists and is writable by this user",
                path.display()
            ),
            Error::Bind { addr, .. } => write!(
                f,
                "cannot listen on {addr}: is another process using the port? \
                 (set TRIBIST_LISTEN to change it)"
            ),
            Error::Signal(_) => write!(f, "cannot install the SIGTERM/SIGINT handler"),
            Error::Thread { what, .. } => write!(f, "cannot start the {what} thread"),
            Error::CheckFailed { failure, message } => match failure {
                crate::api::Failure::Configuration => write!(
                    f,
                    "{message}; a definite failure, which waiting will not change: fix \
                     DATABASE_URL (or the PG* variables) or the database"
                ),
                crate::api::Failure::Unavailable => write!(
                    f,
                    "{message}; a transient failure, which may change by waiting (the \
                     database starting up, down or unreachable)"
                ),
            },
            Error::AcceptDied(_) => write!(
                f,
                "the HTTP accept thread died, so no new connection can be served; exiting so \
                 the supervisor restarts the server (out of file descriptors or threads? check \
                 LimitNOFILE= and TasksMax=)"
            ),
            Error::ShutdownDeadline { secs, busy } => write!(
                f,
                "graceful shutdown did not finish within {secs}s: {busy} worker(s) still busy \
                 (raise TRIBIST_SHUTDOWN_TIMEOUT if requests legitimately take this long)"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::PidFile { source, .. } | Error::AddressFile { source, .. } => Some(source),
            Error::Bind { source, .. } => Some(source.as_ref()),
            Error::Signal(e) => Some(e),
            Error::Thread { source, .. } => Some(source),
            Error::AcceptDied(e) => Some(e),
            _ => None,
        }
    }
}

/// Renders an error and its causes on one line: `error: cause: cause`.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(cause) = cur {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        cur = cause.source();
    }
    out
}
