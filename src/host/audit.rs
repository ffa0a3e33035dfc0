//! Root's audit record: what a line says (a type, printed exactly as deploy.sh printed it),
//! and its append to `/var/lib/tribist-deploy/audit.log`, which fails closed.
//!
//! Why: deploy.sh appended with `echo >>` and, when that failed (a full disk), warned and went
//! on: tribist's restart promoted and started its binary and root's record got no line
//! (issue 18, review case 9). Here an append is one `write(2)` of the whole line to a
//! descriptor opened without following links and without creating the file (install
//! creates it), then `fdatasync`; any error, a short write included, is an error the caller
//! must act on: the operation that would change what runs does not happen. A short write's
//! part-line is cut off again when nothing else was appended meanwhile. The journal gets
//! the same line (`logger -t tribist-deploy`), best effort: the file is the record.
//!
//! The outcomes are every `audit <result>` of deploy.sh and every result its unit steps
//! wrote; [`Outcome::as_str`] is the text `make audit` readers and deploy.sh's `env_served`
//! match.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd};
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::host::child::Spawn;
use crate::host::fsx::{self, Dir, FsError};
use crate::host::text::clean;

/// What was done (`action=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Install,
    Upgrade,
    Rollback,
    Config,
    Uninstall,
    Unlock,
    Start,
    Stop,
    /// The unit's pre-start step (`ExecStartPre=+`).
    ServiceStart,
    /// The unit's reload step (`ExecReload=+`).
    ServiceHandover,
    /// The HTTPS front door (`tribist-host front apply|remove`, `op=`).
    Front,
}

impl Action {
    pub const ALL: [Action; 11] = [
        Action::Install,
        Action::Upgrade,
        Action::Rollback,
        Action::Config,
        Action::Uninstall,
        Action::Unlock,
        Action::Start,
        Action::Stop,
        Action::ServiceStart,
        Action::ServiceHandover,
        Action::Front,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Install => "install",
            Action::Upgrade => "upgrade",
            Action::Rollback => "rollback",
            Action::Config => "config",
            Action::Uninstall => "uninstall",
            Action::Unlock => "unlock",
            Action::Start => "start",
            Action::Stop => "stop",
            Action::ServiceStart => "service-start",
            Action::ServiceHandover => "service-handover",
            Action::Front => "front",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How it ended (`result=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done: what was asked now serves (or is stopped, for stop).
    Ok,
    /// Asked for what already was: nothing changed.
    Unchanged,
    Failed,
    /// A rollback whose handover failed: the release from before still serves.
    FailedNothingChanged,
    /// An upgrade failed after the switch and was undone.
    FailedRolledBack,
    /// An upgrade failed after the switch and undoing it failed too: down.
    FailedRollbackFailed,
    /// A configuration change failed after the restart; the previous file serves again.
    FailedRestored,
    FailedRestoreFailed,
    /// Interrupted (Ctrl-C, SIGTERM from unlock, a lost session) before anything switched.
    Interrupted,
    InterruptedRolledBack,
    InterruptedRollbackFailed,
    InterruptedRestored,
    InterruptedRestoreFailed,
    /// A plain rollback interrupted after its switch had finished: it is done.
    InterruptedDone,
    /// A plain rollback interrupted while the release from before still served: its files
    /// were swapped back.
    InterruptedNothingChanged,
    RefusedPreflight,
    RefusedDoesNotRun,
    RefusedNotInstalled,
    RefusedNoSuchRelease,
    RefusedNoPrevious,
    RefusedSameIdOtherBytes,
    RefusedInstalledNotServing,
    /// config: a `server_new` is staged, which the restart would promote.
    RefusedBinaryStaged,
    /// config: `server --check-config` refused the new file.
    RefusedCheck,
    /// Root's copy of an upload is not the bytes the deployer sent (upgrade UPLOAD SHA256).
    RefusedChecksum,
    /// config on a host whose install never finished: the file saved, nothing started.
    SavedNotInstalled,
    /// The unit's reload step: the new main process is not tribist's.
    Suspicious,
    /// The unit's reload step: no handover within its bound.
    Timeout,
}

impl Outcome {
    pub const ALL: [Outcome; 28] = [
        Outcome::Ok,
        Outcome::Unchanged,
        Outcome::Failed,
        Outcome::FailedNothingChanged,
        Outcome::FailedRolledBack,
        Outcome::FailedRollbackFailed,
        Outcome::FailedRestored,
        Outcome::FailedRestoreFailed,
        Outcome::Interrupted,
        Outcome::InterruptedRolledBack,
        Outcome::InterruptedRollbackFailed,
        Outcome::InterruptedRestored,
        Outcome::InterruptedRestoreFailed,
        Outcome::InterruptedDone,
        Outcome::InterruptedNothingChanged,
        Outcome::RefusedPreflight,
        Outcome::RefusedDoesNotRun,
        Outcome::RefusedNotInstalled,
        Outcome::RefusedNoSuchRelease,
        Outcome::RefusedNoPrevious,
        Outcome::RefusedSameIdOtherBytes,
        Outcome::RefusedInstalledNotServing,
        Outcome::RefusedBinaryStaged,
        Outcome::RefusedCheck,
        Outcome::RefusedChecksum,
        Outcome::SavedNotInstalled,
        Outcome::Suspicious,
        Outcome::Timeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Unchanged => "unchanged",
            Outcome::Failed => "failed",
            Outcome::FailedNothingChanged => "failed-nothing-changed",
            Outcome::FailedRolledBack => "failed-rolled-back",
            Outcome::FailedRollbackFailed => "failed-rollback-failed",
            Outcome::FailedRestored => "failed-restored",
            Outcome::FailedRestoreFailed => "failed-restore-failed",
            Outcome::Interrupted => "interrupted",
            Outcome::InterruptedRolledBack => "interrupted-rolled-back",
            Outcome::InterruptedRollbackFailed => "interrupted-rollback-failed",
            Outcome::InterruptedRestored => "interrupted-restored",
            Outcome::InterruptedRestoreFailed => "interrupted-restore-failed",
            Outcome::InterruptedDone => "interrupted-done",
            Outcome::InterruptedNothingChanged => "interrupted-nothing-changed",
            Outcome::RefusedPreflight => "refused-preflight",
            Outcome::RefusedDoesNotRun => "refused-does-not-run",
            Outcome::RefusedNotInstalled => "refused-not-installed",
            Outcome::RefusedNoSuchRelease => "refused-no-such-release",
            Outcome::RefusedNoPrevious => "refused-no-previous",
            Outcome::RefusedSameIdOtherBytes => "refused-same-id-other-bytes",
            Outcome::RefusedInstalledNotServing => "refused-installed-not-serving",
            Outcome::RefusedBinaryStaged => "refused-binary-staged",
            Outcome::RefusedCheck => "refused-check",
            Outcome::RefusedChecksum => "refused-checksum",
            Outcome::SavedNotInstalled => "saved-not-installed",
            Outcome::Suspicious => "suspicious",
            Outcome::Timeout => "timeout",
        }
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The fields a deployment's record has and a unit step's has not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deployment {
    /// The ssh client's address (`from_addr`), or `local`.
    pub from: String,
    /// The deployer's claim (`--by`), printed quoted.
    pub by: String,
    /// Printed `none` when there is none.
    pub release_from: Option<String>,
    pub release_to: Option<String>,
}

/// One line of root's audit file. Deployments (install, upgrade, …):
///
/// `TIME host=H action=A user=U from=F by="B" release_from=R release_to=R [K=V…] result=O`
///
/// the unit's steps: `TIME host=H action=A user=systemd K=V… [result=O [K=V…]]`.
/// Every value is cleaned (`text::clean`: printable ASCII, bounded); `by` is quoted with `\`
/// and `"` escaped, as deploy.sh's `quoted` did; the other values lose their spaces too, so
/// no value can forge a field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub time: SystemTime,
    pub host: String,
    pub action: Action,
    pub user: String,
    pub deployment: Option<Deployment>,
    pub extra: Vec<(&'static str, String)>,
    pub result: Option<Outcome>,
    /// Fields after `result=` (the reload step's `owner=`).
    pub after: Vec<(&'static str, String)>,
}

impl Record {
    /// A deployment's record.
    pub fn deployment(
        time: SystemTime,
        host: &str,
        action: Action,
        user: &str,
        deployment: Deployment,
        result: Outcome,
    ) -> Record {
        Record {
            time,
            host: host.into(),
            action,
            user: user.into(),
            deployment: Some(deployment),
            extra: Vec::new(),
            result: Some(result),
            after: Vec::new(),
        }
    }

    /// A unit step's record (`user=systemd`), its fields to be added with [`Record::field`].
    pub fn unit_step(time: SystemTime, host: &str, action: Action) -> Record {
        Record {
            time,
            host: host.into(),
            action,
            user: "systemd".into(),
            deployment: None,
            extra: Vec::new(),
            result: None,
            after: Vec::new(),
        }
    }

    /// One more `key=value` before `result=`.
    pub fn field(mut self, key: &'static str, value: impl Into<String>) -> Record {
        self.extra.push((key, value.into()));
        self
    }

    pub fn result(mut self, result: Outcome) -> Record {
        self.result = Some(result);
        self
    }

    /// One more `key=value` after `result=`.
    pub fn after(mut self, key: &'static str, value: impl Into<String>) -> Record {
        self.after.push((key, value.into()));
        self
    }
}

/// A value printed bare: cleaned, bounded, without spaces.
fn word(v: &str, max: usize) -> String {
    clean(v.as_bytes(), max).replace(' ', "")
}

/// A value printed quoted, as deploy.sh's `quoted`: cleaned (120 bytes), `\` and `"` escaped.
pub fn quoted(v: &str) -> String {
    let v = clean(v.as_bytes(), 120);
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `2026-01-02T03:04:05Z`: UTC, to the second, as `date -u +%Y-%m-%dT%H:%M:%SZ`.
pub fn utc_seconds(t: SystemTime) -> String {
    let s = crate::api::rfc3339(t);
    format!("{}Z", &s[..19])
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} host={} action={} user={}",
            utc_seconds(self.time),
            word(&self.host, 253),
            self.action,
            word(&self.user, 64)
        )?;
        if let Some(d) = &self.deployment {
            let release = |r: &Option<String>| r.as_deref().map_or("none".into(), |r| word(r, 100));
            write!(
                f,
                " from={} by={} release_from={} release_to={}",
                word(&d.from, 64),
                quoted(&d.by),
                release(&d.release_from),
                release(&d.release_to)
            )?;
        }
        for (k, v) in &self.extra {
            write!(f, " {k}={}", word(v, 1000))?;
        }
        if let Some(r) = self.result {
            write!(f, " result={r}")?;
        }
        for (k, v) in &self.after {
            write!(f, " {k}={}", word(v, 1000))?;
        }
        Ok(())
    }
}

/// Who acts, as far as the host knows: `NAME(sudo)` for root through sudo, else the name
/// of the user the process runs as.
pub fn actor(euid: u32, sudo_user: Option<&str>, own_name: &str) -> String {
    match sudo_user.filter(|s| !s.is_empty()) {
        Some(s) if euid == 0 => format!("{}(sudo)", clean(s.as_bytes(), 32)),
        _ => clean(own_name.as_bytes(), 32),
    }
}

/// The ssh client's address (the first word of `SSH_CLIENT`), or `local`.
pub fn from_addr(ssh_client: Option<&str>) -> String {
    match ssh_client
        .and_then(|s| s.split(' ').next())
        .filter(|s| !s.is_empty())
    {
        Some(a) => clean(a.as_bytes(), 64),
        None => "local".into(),
    }
}

/// This host's name (`gethostname`), cleaned.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is writable for its length.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return "unknown".into();
    }
    let n = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    word(&String::from_utf8_lossy(&buf[..n]), 253)
}

/// Why root's record could not be appended. The caller must not go on with the change.
#[derive(Debug)]
pub struct AuditError {
    pub path: String,
    pub kind: AuditErrorKind,
}

#[derive(Debug)]
pub enum AuditErrorKind {
    /// Opening or checking the file failed (missing, a link, not a regular file, …).
    Open(FsError),
    Write(io::Error),
    /// Only `written` of `len` bytes went in; `removed`: that part-line was cut off again.
    Short {
        written: usize,
        len: usize,
        removed: bool,
    },
    Sync(io::Error),
}

impl AuditError {
    fn errno(&self) -> Option<i32> {
        match &self.kind {
            AuditErrorKind::Open(FsError::Io { err, .. })
            | AuditErrorKind::Write(err)
            | AuditErrorKind::Sync(err) => err.raw_os_error(),
            AuditErrorKind::Short { .. } => Some(libc::ENOSPC),
            _ => None,
        }
    }

    /// The one thing to do about it.
    pub fn fix(&self) -> String {
        let dir = Path::new(&self.path)
            .parent()
            .map_or(".".into(), |p| p.display().to_string());
        match (&self.kind, self.errno()) {
            (_, Some(libc::ENOSPC | libc::EDQUOT)) => format!(
                "free space on the file system of {dir} (df -h {dir} shows it), then run the same command again"
            ),
            (AuditErrorKind::Open(FsError::Io { .. }), Some(libc::ENOENT)) => {
                "make install creates it".into()
            }
            (AuditErrorKind::Open(_), _) => {
                "make install puts the layout right (what is in the way is moved aside)".into()
            }
            _ => format!("see what is wrong with it: ls -l {}; df -h {dir}", self.path),
        }
    }
}

impl fmt::Display for AuditError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot append the audit record to {}: ", self.path)?;
        match &self.kind {
            AuditErrorKind::Open(e) => write!(f, "{e}")?,
            AuditErrorKind::Write(e) => write!(f, "{e}")?,
            AuditErrorKind::Short {
                written,
                len,
                removed,
            } => write!(
                f,
                "only {written} of its {len} bytes were written ({})",
                if *removed {
                    "that part was cut off again"
                } else {
                    "a part-line may remain"
                }
            )?,
            AuditErrorKind::Sync(e) => write!(f, "fdatasync: {e}")?,
        }
        write!(f, "; {}", self.fix())
    }
}

impl std::error::Error for AuditError {}

/// Root's audit file, open for appending.
#[derive(Debug)]
pub struct AuditLog {
    file: File,
    shown: String,
}

impl AuditLog {
    /// Opens `path` (`O_WRONLY|O_APPEND|O_NOFOLLOW|O_CLOEXEC`, never creating it) and checks
    /// the descriptor: a regular file owned by this process's user.
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        let shown = clean(path.as_os_str().as_encoded_bytes(), 300);
        let err = |e| AuditError {
            path: shown.clone(),
            kind: AuditErrorKind::Open(e),
        };
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let dir = Dir::open(parent.unwrap_or(Path::new("."))).map_err(err)?;
        AuditLog::open_at(&dir, name)
    }

    /// Opens `name` in `dir`, as [`AuditLog::open`].
    pub fn open_at(dir: &Dir, name: &str) -> Result<AuditLog, AuditError> {
        let shown = dir.shown_name(name);
        let err = |e| AuditError {
            path: shown.clone(),
            kind: AuditErrorKind::Open(e),
        };
        let c = fsx::check_name(name).map_err(err)?;
        // O_NONBLOCK: a FIFO planted here fails at once (ENXIO) instead of blocking.
        let flags = libc::O_WRONLY
            | libc::O_APPEND
            | libc::O_NOFOLLOW
            | libc::O_CLOEXEC
            | libc::O_NOCTTY
            | libc::O_NONBLOCK;
        // SAFETY: c is NUL-terminated; dir's descriptor is live.
        let fd = unsafe { libc::openat(dir.as_fd().as_raw_fd(), c.as_ptr(), flags) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            // Say what is there instead, if anything.
            let e = match dir.lstat_at(name) {
                Ok(st) if st.is_symlink() => FsError::Symlink {
                    path: shown.clone(),
                    target: "?".into(),
                },
                Ok(st) if !st.is_regular() => FsError::NotRegular {
                    path: shown.clone(),
                    kind: st.kind(),
                },
                _ => FsError::Io {
                    op: "cannot open",
                    path: shown.clone(),
                    err: e,
                },
            };
            return Err(err(e));
        }
        // SAFETY: fd was just opened and is owned by nothing else.
        let file = unsafe { File::from_raw_fd(fd) };
        let st = fsx::fstat(file.as_fd()).map_err(|e| {
            err(FsError::Io {
                op: "cannot fstat",
                path: shown.clone(),
                err: e,
            })
        })?;
        if !st.is_regular() {
            return Err(err(FsError::NotRegular {
                path: shown.clone(),
                kind: st.kind(),
            }));
        }
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if st.uid != me {
            return Err(err(FsError::Owner {
                path: shown.clone(),
                uid: st.uid,
                want: me,
            }));
        }
        // SAFETY: fcntl on a live descriptor.
        unsafe {
            let fl = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK);
        }
        Ok(AuditLog { file, shown })
    }

    /// Appends `record` as one line: one `write(2)`, then `fdatasync`. Any failure is an
    /// error; a short write's part-line is cut off again when nothing else was appended.
    pub fn append(&self, record: &Record) -> Result<(), AuditError> {
        let mut line = record.to_string().into_bytes();
        line.push(b'\n');
        append_line(&self.file, &line).map_err(|kind| AuditError {
            path: self.shown.clone(),
            kind,
        })
    }

    /// Appends `record` to the file and, once it is there, sends it to the journal.
    pub fn record(&self, record: &Record) -> Result<(), AuditError> {
        self.append(record)?;
        journal(&record.to_string());
        Ok(())
    }
}

/// The whole of `line` in one `write(2)` to `file` (opened with `O_APPEND`), then
/// `fdatasync`.
fn append_line(file: &File, line: &[u8]) -> Result<(), AuditErrorKind> {
    let fd = file.as_raw_fd();
    let before = fsx::fstat(file.as_fd()).map(|s| s.size).ok();
    let n = loop {
        // SAFETY: line is readable for its length.
        let n = unsafe { libc::write(fd, line.as_ptr().cast(), line.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(AuditErrorKind::Write(e));
        }
        break n as usize;
    };
    if n != line.len() {
        // Cut the part-line off again, if the file is exactly as this write left it.
        let after = fsx::fstat(file.as_fd()).map(|s| s.size).ok();
        let removed = match (before, after) {
            (Some(b), Some(a)) if a == b + n as u64 => {
                // SAFETY: ftruncate on a live descriptor.
                unsafe { libc::ftruncate(fd, b as libc::off_t) == 0 }
            }
            _ => false,
        };
        return Err(AuditErrorKind::Short {
            written: n,
            len: line.len(),
            removed,
        });
    }
    // SAFETY: fdatasync on a live descriptor.
    if unsafe { libc::fdatasync(fd) } != 0 {
        return Err(AuditErrorKind::Sync(io::Error::last_os_error()));
    }
    Ok(())
}

/// Sends `line` to the journal (`logger -t tribist-deploy -- LINE`, at most 5 s), where
/// journald stamps it with the sender's uid. Best effort: false if that failed.
pub fn journal(line: &str) -> bool {
    let Some(logger) = ["/usr/bin/logger", "/bin/logger"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        return false;
    };
    Spawn::new(logger)
        .args(["-t", "tribist-deploy", "--"])
        .arg(clean(line.as_bytes(), 4000))
        .run(Duration::from_secs(5), 1000)
        .is_ok_and(|o| o.status == crate::host::child::ExitKind::Exited(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::testutil::{root_or_skip, TempDir};
    use std::os::unix::fs::{symlink, OpenOptionsExt};
    use std::time::UNIX_EPOCH;

    const SHA: &str = "5bdd49fe0000000000000000000000000000000000000000000000000000beef";

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    // 2026-03-04T05:06:07Z
    const T: u64 = 1_772_600_767;

    fn upgrade(result: Outcome) -> Record {
        Record::deployment(
            at(T),
            "app1",
            Action::Upgrade,
            "root",
            Deployment {
                from: "10.1.2.3".into(),
                by: "alice@laptop".into(),
                release_from: Some("3f2a9c".into()),
                release_to: Some("4b1d00".into()),
            },
            result,
        )
    }

    /// The lines exactly as deploy.sh's `audit`, `cmd_on_start` and `handover_audit` wrote
    /// them (compared with the bash functions' own output when this was written).
    #[test]
    fn exact_lines() {
        assert_eq!(
            upgrade(Outcome::Ok).to_string(),
            "2026-03-04T05:06:07Z host=app1 action=upgrade user=root from=10.1.2.3 by=\"alice@laptop\" release_from=3f2a9c release_to=4b1d00 result=ok"
        );
        let config = Record::deployment(
            at(T),
            "app1",
            Action::Config,
            "alice(sudo)",
            Deployment {
                from: "local".into(),
                by: "unknown".into(),
                release_from: None,
                release_to: None,
            },
            Outcome::RefusedCheck,
        )
        .field("changed", "TRIBIST_WORKERS,DATABASE_URL");
        assert_eq!(
            config.to_string(),
            "2026-03-04T05:06:07Z host=app1 action=config user=alice(sudo) from=local by=\"unknown\" release_from=none release_to=none changed=TRIBIST_WORKERS,DATABASE_URL result=refused-check"
        );
        let start = Record::unit_step(at(T), "app1", Action::ServiceStart)
            .field("promoted", "yes")
            .field("source", "deploy")
            .field("server_sha256", SHA);
        assert_eq!(
            start.to_string(),
            format!("2026-03-04T05:06:07Z host=app1 action=service-start user=systemd promoted=yes source=deploy server_sha256={SHA}")
        );
        let handover = Record::unit_step(at(T), "app1", Action::ServiceHandover)
            .field("from_pid", "812")
            .field("promoted", "no")
            .field("source", "api")
            .field("server_sha256", SHA);
        assert_eq!(
            handover.to_string(),
            format!("2026-03-04T05:06:07Z host=app1 action=service-handover user=systemd from_pid=812 promoted=no source=api server_sha256={SHA}")
        );
        let suspicious = Record::unit_step(at(T), "app1", Action::ServiceHandover)
            .field("from_pid", "812")
            .field("to_pid", "900")
            .result(Outcome::Suspicious)
            .after("owner", "gone");
        assert_eq!(
            suspicious.to_string(),
            "2026-03-04T05:06:07Z host=app1 action=service-handover user=systemd from_pid=812 to_pid=900 result=suspicious owner=gone"
        );
    }

    #[test]
    fn by_is_quoted_and_nothing_forges_a_field() {
        let mut r = upgrade(Outcome::Failed);
        r.deployment.as_mut().unwrap().by = "o'brien \"x\" \\ `y` $(z)\n\x1b[2K result=ok".into();
        r.deployment.as_mut().unwrap().from = "1.2.3.4 result=ok".into();
        r.user = "eve\r result=ok".into();
        let line = r.to_string();
        assert_eq!(
            line,
            "2026-03-04T05:06:07Z host=app1 action=upgrade user=everesult=ok from=1.2.3.4result=ok by=\"o'brien \\\"x\\\" \\\\ `y` $(z)[2K result=ok\" release_from=3f2a9c release_to=4b1d00 result=failed"
        );
        // The real one, and the text inside the quoted by="…".
        assert_eq!(line.matches(" result=").count(), 2);
        assert!(line.ends_with(" result=failed"));
        // quoted() as deploy.sh's: at most 120 bytes cleaned, then escaped.
        assert_eq!(
            quoted(&"\"".repeat(200)),
            format!("\"{}\"", "\\\"".repeat(120))
        );
    }

    #[test]
    fn every_outcome_and_action_round_trips() {
        for o in Outcome::ALL {
            assert_eq!(Outcome::parse(o.as_str()), Some(o));
        }
        for a in Action::ALL {
            assert_eq!(Action::parse(&a.to_string()), Some(a));
        }
        // Every result deploy.sh writes: its `audit RESULT` calls and its unit steps'
        // `result=` (read from sbin/deploy.sh when this was written).
        let written = [
            "failed",
            "failed-nothing-changed",
            "failed-restore-failed",
            "failed-restored",
            "failed-rollback-failed",
            "failed-rolled-back",
            "interrupted",
            "interrupted-done",
            "interrupted-nothing-changed",
            "interrupted-restore-failed",
            "interrupted-restored",
            "interrupted-rollback-failed",
            "interrupted-rolled-back",
            "ok",
            "refused-binary-staged",
            "refused-check",
            "refused-does-not-run",
            "refused-installed-not-serving",
            "refused-no-previous",
            "refused-no-such-release",
            "refused-not-installed",
            "refused-preflight",
            "refused-same-id-other-bytes",
            "refused-checksum",
            "saved-not-installed",
            "unchanged",
            "suspicious",
            "timeout",
        ];
        for w in written {
            assert!(Outcome::parse(w).is_some(), "{w}");
        }
        assert_eq!(written.len(), Outcome::ALL.len());
    }

    #[test]
    fn actor_from_and_time() {
        assert_eq!(actor(0, Some("alice"), "root"), "alice(sudo)");
        assert_eq!(actor(0, Some(""), "root"), "root");
        assert_eq!(actor(999, Some("alice"), "tribist"), "tribist");
        assert_eq!(actor(0, Some(&"a\x1b".repeat(40)), "root").len(), 32 + 6);
        assert_eq!(from_addr(Some("10.1.2.3 51234 22")), "10.1.2.3");
        assert_eq!(from_addr(None), "local");
        assert_eq!(from_addr(Some("")), "local");
        assert_eq!(utc_seconds(at(0)), "1970-01-01T00:00:00Z");
        assert!(!hostname().is_empty());
    }

    fn new_log(t: &TempDir, name: &str) {
        std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(t.join(name))
            .unwrap();
    }

    #[test]
    fn appends_one_line_and_never_creates_the_file() {
        let t = TempDir::new("audit-append");
        let e = AuditLog::open(&t.join("audit.log")).unwrap_err();
        assert!(e.to_string().ends_with("; make install creates it"), "{e}");
        assert!(!t.join("audit.log").exists());

        new_log(&t, "audit.log");
        let log = AuditLog::open(&t.join("audit.log")).unwrap();
        log.append(&upgrade(Outcome::Ok)).unwrap();
        log.append(&upgrade(Outcome::RefusedPreflight)).unwrap();
        let text = std::fs::read_to_string(t.join("audit.log")).unwrap();
        assert_eq!(
            text,
            format!(
                "{}\n{}\n",
                upgrade(Outcome::Ok),
                upgrade(Outcome::RefusedPreflight)
            )
        );
    }

    #[test]
    fn a_link_or_a_fifo_is_refused_at_once() {
        let t = TempDir::new("audit-link");
        std::fs::write(t.join("victim"), b"").unwrap();
        symlink(t.join("victim"), t.join("audit.log")).unwrap();
        let e = AuditLog::open(&t.join("audit.log")).unwrap_err();
        assert!(
            matches!(e.kind, AuditErrorKind::Open(FsError::Symlink { .. })),
            "{e}"
        );
        assert!(
            e.to_string().contains("make install puts the layout right"),
            "{e}"
        );

        let fifo = std::ffi::CString::new(t.join("fifo").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: fifo is NUL-terminated.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let start = std::time::Instant::now();
        let e = AuditLog::open(&t.join("fifo")).unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(2));
        assert!(
            matches!(
                e.kind,
                AuditErrorKind::Open(FsError::NotRegular { kind: "FIFO", .. })
            ),
            "{e}"
        );
    }

    /// The error path of the write itself: /dev/full refuses every byte (ENOSPC).
    #[test]
    fn a_write_error_is_an_error() {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let e = append_line(&full, b"a line\n").unwrap_err();
        let e = AuditError {
            path: "/var/lib/tribist-deploy/audit.log".into(),
            kind: e,
        };
        assert!(
            matches!(&e.kind, AuditErrorKind::Write(err) if err.raw_os_error() == Some(libc::ENOSPC))
        );
        assert_eq!(
            e.to_string(),
            "cannot append the audit record to /var/lib/tribist-deploy/audit.log: No space left on device (os error 28); free space on the file system of /var/lib/tribist-deploy (df -h /var/lib/tribist-deploy shows it), then run the same command again"
        );
    }

    /// A tmpfs mounted for the test, unmounted on drop.
    struct Tmpfs(std::path::PathBuf);

    impl Tmpfs {
        fn mount(dir: std::path::PathBuf, size: &str) -> Tmpfs {
            let c = |s: &str| std::ffi::CString::new(s).unwrap();
            let target = c(dir.to_str().unwrap());
            let opts = c(&format!("size={size},mode=0700"));
            // SAFETY: all strings NUL-terminated.
            let r = unsafe {
                libc::mount(
                    c("tmpfs").as_ptr(),
                    target.as_ptr(),
                    c("tmpfs").as_ptr(),
                    0,
                    opts.as_ptr().cast(),
                )
            };
            assert_eq!(r, 0, "mount: {}", io::Error::last_os_error());
            Tmpfs(dir)
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let c = std::ffi::CString::new(self.0.to_str().unwrap()).unwrap();
            // SAFETY: c is NUL-terminated.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }

    /// A full file system: the append fails, and the part of the line that fitted is cut
    /// off again, so the file holds whole lines only.
    #[test]
    fn a_full_file_system_fails_the_append_and_leaves_whole_lines() {
        root_or_skip!("mounting a small tmpfs");
        let t = TempDir::new("audit-full");
        std::fs::create_dir(t.join("fs")).unwrap();
        let _fs = Tmpfs::mount(t.join("fs"), "8k");
        new_log(&t, "fs/audit.log");
        let log = AuditLog::open(&t.join("fs/audit.log")).unwrap();
        let line = upgrade(Outcome::Ok).to_string() + "\n";
        let mut n = 0;
        let err = loop {
            match log.append(&upgrade(Outcome::Ok)) {
                Ok(()) => n += 1,
                Err(e) => break e,
            }
            assert!(n < 100);
        };
        assert!(n >= 1);
        let text = std::fs::read_to_string(t.join("fs/audit.log")).unwrap();
        assert_eq!(text, line.repeat(n), "a part-line was left");
        match err.kind {
            AuditErrorKind::Short {
                written, removed, ..
            } => {
                assert!(written > 0 && removed);
            }
            AuditErrorKind::Write(ref e) => assert_eq!(e.raw_os_error(), Some(libc::ENOSPC)),
            ref other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("df -h "), "{err}");
        // And when the file system is full to the byte: ENOSPC, nothing written.
        let e = log.append(&upgrade(Outcome::Ok)).unwrap_err();
        assert!(
            matches!(
                e.kind,
                AuditErrorKind::Write(_) | AuditErrorKind::Short { removed: true, .. }
            ),
            "{e}"
        );
        assert_eq!(
            std::fs::read_to_string(t.join("fs/audit.log")).unwrap(),
            line.repeat(n)
        );
    }

    #[test]
    fn another_users_file_is_refused() {
        root_or_skip!("a file of another user");
        let t = TempDir::new("audit-owner");
        new_log(&t, "audit.log");
        std::os::unix::fs::chown(t.join("audit.log"), Some(65534), None).unwrap();
        let e = AuditLog::open(&t.join("audit.log")).unwrap_err();
        assert!(
            matches!(
                e.kind,
                AuditErrorKind::Open(FsError::Owner { uid: 65534, .. })
            ),
            "{e}"
        );
    }

    #[test]
    fn the_journal_is_best_effort() {
        // Whether or not a journal runs here, this returns (within its bound) and does not
        // fail the caller.
        let start = std::time::Instant::now();
        let _ = journal("tribist host::audit unit test: ignore");
        assert!(start.elapsed() < Duration::from_secs(6));
    }
}
