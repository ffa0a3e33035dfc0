//! The kit's commands on a host — `tribist-host install|upgrade|rollback|config|status|…`
//! and the unit's `on-start`/`on-reload` steps — the port of `sbin/deploy.sh` (issue 18).
//!
//! This module is their common ground, so that every command says, audits, locks and runs
//! things as tribist the same way: where everything is ([`paths`]), the exit codes
//! ([`Exit`]), one error type ([`Fail`]: what happened, and the one command that fixes it),
//! who acts and what is being done ([`Ctx`], which writes the audit record), interrupts
//! (Ctrl-C, a lost connection: [`interrupt`]), running things as tribist ([`as_tribist`],
//! [`releases`]), systemd ([`systemctl`]) and the service's `/health` ([`health`]).
//!
//! THE RULE (docs/deploying.md, "Who owns what on the host"): no step that runs as root
//! reads, writes, creates, truncates, appends to, chowns, chmods or executes a path that user
//! tribist can create, rename or replace — except through `fsx`'s descriptors, which cannot
//! be redirected.

pub mod access;
pub mod binary;
pub mod cli;
pub mod envconf;
pub mod handover;
pub mod health;
pub mod hostlayout;
pub mod install;
pub mod interrupt;
pub mod listen;
pub mod logs;
pub mod paths;
pub mod records;
pub mod report;
pub mod session;
pub mod steps;
pub mod switch;
pub mod uninstall;
pub mod unit;
pub mod unlock;
pub mod verified;

use std::fmt;
use std::fs::File;
use std::io::Write;
use std::time::{Duration, SystemTime};

use crate::host::audit::{self, Action, AuditLog, Deployment, Outcome, Record};
use crate::host::child::{self, RunAs, Spawn};
use crate::host::text::clean;

/// The name messages start with.
pub const PROG: &str = "tribist-host";

/// Exit codes, as remote.sh and the README read them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    Failed = 1,
    Usage = 2,
    /// Another deployment holds the lock.
    Locked = 3,
    /// The configuration cannot work (the database refuses it, or the binary a setting).
    Configuration = 4,
    /// tribist is not installed here.
    NotInstalled = 5,
    /// status: installed, not running.
    Stopped = 6,
    /// status: running, not healthy on the installed release.
    Unhealthy = 7,
    /// install DOMAIN=…: tribist is installed and healthy, but its HTTPS front failed.
    FrontFailed = 9,
    /// Interrupted (Ctrl-C, a lost connection), after putting back what it promised.
    Interrupted = 130,
}

/// Why a command ends without success: its exit code and its message (already said, when
/// empty). The message says what happened and the one command that fixes it.
#[derive(Debug, PartialEq, Eq)]
pub struct Fail {
    pub exit: Exit,
    pub message: String,
}

impl Fail {
    pub fn new(exit: Exit, message: impl Into<String>) -> Fail {
        Fail {
            exit,
            message: message.into(),
        }
    }
    /// Exit 1.
    pub fn failed(message: impl Into<String>) -> Fail {
        Fail::new(Exit::Failed, message)
    }
    /// Exit 2; the message is followed by `try: tribist-host --help`.
    pub fn usage(message: impl Into<String>) -> Fail {
        Fail::new(Exit::Usage, message)
    }
    /// An exit whose message was said already.
    pub fn quiet(exit: Exit) -> Fail {
        Fail::new(exit, "")
    }
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

pub type Result<T> = std::result::Result<T, Fail>;

/// Says `msg` on stdout, as `tribist-host: msg`. A write that fails because the deployer is
/// gone (ssh without a terminal: EPIPE) counts as an interrupt.
pub fn say(msg: &str) {
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{PROG}: {msg}")
        .and_then(|_| out.flush())
        .is_err()
    {
        interrupt::note_lost_client();
    }
}

/// Says `msg` on stderr.
pub fn warn(msg: &str) {
    let mut err = std::io::stderr().lock();
    if writeln!(err, "{PROG}: {msg}").is_err() {
        interrupt::note_lost_client();
    }
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Refuses (exit 1) a command that needs root.
pub fn need_root(what: &str) -> Result<()> {
    if is_root() {
        return Ok(());
    }
    Err(Fail::failed(format!(
        "'{what}' must run as root (or through sudo): HOST=root@… or a user with sudo"
    )))
}

/// Who acts and what is being done: the deployer's claim, the host as the deployer names it
/// (for the `next:` commands), and what the audit record says.
#[derive(Clone, Debug, Default)]
pub struct Ctx {
    /// `--by`: the deployer's claim, checked printable, at most 100 bytes.
    pub by: String,
    /// `--target`: the host as the deployer named it.
    pub target: Option<String>,
    /// `--url-file`: the name of the file the deployer gave the database URL in.
    pub url_file: Option<String>,
    /// `--preflight SECONDS` (default 10; 0 skips it).
    pub preflight: u32,
    /// `--listen ADDR:PORT` (install).
    pub listen: Option<String>,
    /// `--keep N` (default 5).
    pub keep: u32,
    /// `TRIBIST_WAIT`: seconds to wait for `/health` (default 30).
    pub wait: u32,
    pub action: Option<Action>,
    pub release_from: Option<String>,
    pub release_to: Option<String>,
    /// Fields of the record before `result=` (`changed=…`).
    pub extra: Vec<(&'static str, String)>,
}

impl Ctx {
    pub fn new() -> Ctx {
        Ctx {
            by: "unknown".into(),
            preflight: 10,
            keep: 5,
            wait: std::env::var("TRIBIST_WAIT")
                .ok()
                .and_then(|w| w.parse().ok())
                .filter(|w| (1..=3600).contains(w))
                .unwrap_or(30),
            ..Ctx::default()
        }
    }

    /// The host for a `next:` command: `--target`, else `…`.
    pub fn host(&self) -> &str {
        self.target.as_deref().unwrap_or("…")
    }

    /// The record of this deployment with `result`.
    pub fn record(&self, result: Outcome) -> Record {
        let action = self.action.unwrap_or(Action::Upgrade);
        let mut r = Record::deployment(
            SystemTime::now(),
            &audit::hostname(),
            action,
            &actor(),
            Deployment {
                from: audit::from_addr(std::env::var("SSH_CLIENT").ok().as_deref()),
                by: self.by.clone(),
                release_from: self.release_from.clone(),
                release_to: self.release_to.clone(),
            },
            result,
        );
        for (k, v) in &self.extra {
            r = r.field(k, v.clone());
        }
        r
    }

    /// Records this deployment's `result`: in root's audit file (root), then in the journal.
    /// A failure to write root's file is said, not fatal: what runs changed already, and a
    /// start or reload step refuses to change it without its own record. Commands that must
    /// not change anything without a record call [`Ctx::audit_or_refuse`] first.
    pub fn audit(&self, result: Outcome) {
        let record = self.record(result);
        if is_root() {
            match AuditLog::open(std::path::Path::new(paths::AUDIT_LOG)) {
                Ok(log) => {
                    if let Err(e) = log.record(&record) {
                        warn(&format!("cannot append to {}: {e}", paths::AUDIT_LOG));
                    }
                    return;
                }
                Err(e) => warn(&format!("cannot append to {}: {e}", paths::AUDIT_LOG)),
            }
        }
        audit::journal(&record.to_string());
    }
}

/// Who acts, as far as the host knows: root, the sudo user behind root, or tribist.
pub fn actor() -> String {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let own = std::env::var("USER")
        .ok()
        .filter(|_| euid != 0)
        .unwrap_or_else(|| {
            if euid == 0 {
                "root".into()
            } else {
                euid.to_string()
            }
        });
    audit::actor(euid, std::env::var("SUDO_USER").ok().as_deref(), &own)
}

/// Runs `program args…` as user tribist with nothing of root's (no capabilities, no new
/// privileges, a clean environment, a new session without a terminal, stdin from `stdin` or
/// /dev/null), output bounded and printable; directly when already tribist.
pub fn as_tribist(
    program: &str,
    args: &[&str],
    stdin: Option<File>,
    timeout: Duration,
) -> Result<child::Outcome> {
    let mut spawn = Spawn::new(program).args(args);
    if let Some(f) = stdin {
        spawn = spawn.stdin(f);
    }
    if is_root() {
        let who = RunAs::user(paths::USER_NAME).ok_or_else(|| {
            Fail::failed(format!(
                "there is no user {}: make install HOST=… makes it",
                paths::USER_NAME
            ))
        })?;
        spawn = spawn.run_as(who);
    }
    spawn
        .run(timeout, 64 * 1024)
        .map_err(|e| Fail::failed(format!("cannot run {program} as {}: {e}", paths::USER_NAME)))
}

/// `tribist-host releases ARGS…` as tribist (api/ is tribist's; see host::releases), 15 s.
pub fn releases(args: &[&str]) -> Result<child::Outcome> {
    let mut all = vec!["releases"];
    all.extend_from_slice(args);
    as_tribist(paths::HOST_PROGRAM, &all, None, Duration::from_secs(15))
}

/// `sudo`, as tribist runs it: with a minimal environment. Children get a cleared one, and
/// Debian 13's sudo 1.9.16 dies of a segmentation fault on an empty environment (found on a
/// trixie test host: every upgrade as tribist failed at its restart).
pub fn sudo() -> Spawn {
    Spawn::new("/usr/bin/sudo")
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C")
}

/// `systemctl ARGS…` (through `sudo -n` when not root), bounded to `timeout`; interrupted
/// runs are killed and reported as [`child::ExitKind::TimedOut`] only at the deadline, so
/// callers that must react to Ctrl-C use [`interrupt::interrupted`] between short calls.
pub fn systemctl(args: &[&str], timeout: Duration) -> Result<child::Outcome> {
    let spawn = if is_root() {
        Spawn::new("/usr/bin/systemctl").args(args)
    } else {
        let mut all = vec!["-n", "/usr/bin/systemctl"];
        all.extend_from_slice(args);
        sudo().args(all)
    };
    spawn
        .run(timeout, 64 * 1024)
        .map_err(|e| Fail::failed(format!("cannot run systemctl: {e}")))
}

/// A systemd property of `unit` (`systemctl show -p NAME --value UNIT`), empty if unknown.
pub fn unit_property(unit: &str, name: &str) -> String {
    match Spawn::new("/usr/bin/systemctl")
        .args(["show", "-p", name, "--value", unit])
        .run(Duration::from_secs(10), 64 * 1024)
    {
        Ok(o) => o.stdout.lines().next().unwrap_or("").to_string(),
        Err(_) => String::new(),
    }
}

/// Text of the deployer's (`--by`, a setting's name) fit to print: printable, bounded.
pub fn shown(s: &str, max: usize) -> String {
    clean(s.as_bytes(), max)
}
