//! The deploy lock (`/var/lib/tribist-deploy/lock`) as a type, and `make unlock`'s breaking
//! of it as a decision function that tests drive without root or real time.
//!
//! Why: deploy.sh held the lock on descriptor 8 and had to close it by hand (`8<&-`) before
//! every command it ran (19 places), wrote the holder note and truncated it in an exit trap,
//! and unlock's timing lived in one loop. Here the lock is a value: taken with
//! `flock(LOCK_EX|LOCK_NB)` on a root-owned file opened without following links (read-only,
//! so tribist can take it but not replace it), close-on-exec, so no child inherits it; its
//! holder note is written atomically beside it and removed when the value is dropped, which
//! releases the lock.
//!
//! Breaking it ([`unlock`]): the holders are the processes the kernel says have the lock
//! file open (`/proc/PID/fd`, the same inode), never a pid a note names. Each gets SIGTERM
//! (a deployment rolls back on it); one that still holds it after a grace period (5 s, 40 s
//! for a deployment, which may be rolling back) gets SIGKILL, said as it happens; after 45 s
//! unlock gives up naming the pids. A deployment's own children (a bash deployment's
//! subshells and pipes inherit its descriptor) are left to it while it lives ([`independent`]):
//! its rollback needs them. A signal goes through a pidfd opened before the holder
//! is checked again, so a pid reused meanwhile is never signalled. The report says only what
//! was done and seen. [`Unlocker::next`] takes the observations (time, free or not, the
//! holders) and returns the next step.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::host::fsx::{self, Dir, FsError, Limits};
use crate::host::text::clean;

/// The holder note's name beside the lock file (root's note).
pub const HOLDER: &str = "holder";

/// The most of a note that is read, and shown.
const NOTE_READ: u64 = 400;
const NOTE_SHOWN: usize = 300;

#[derive(Debug)]
pub enum LockError {
    /// Another process holds the lock; what its note says (cleaned), if there is one.
    Held {
        note: Option<String>,
    },
    /// No lock file: tribist is not installed.
    Missing {
        path: String,
    },
    Fs(FsError),
}

impl fmt::Display for LockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::Held { note } => write!(
                f,
                "another deployment holds the deploy lock: {}; wait for it to finish, or if it is stuck break the lock on purpose (make unlock)",
                note.as_deref().unwrap_or("unknown holder")
            ),
            LockError::Missing { path } => {
                write!(f, "{path} is missing: is tribist installed? (make install)")
            }
            LockError::Fs(e) => write!(f, "{e}; make install puts the layout right"),
        }
    }
}

impl std::error::Error for LockError {}

/// The lock file, open, with its directory, after the checks: not a link, a regular file,
/// owned by the owner of its directory (root's `/var/lib/tribist-deploy`).
struct LockFile {
    dir: Dir,
    file: File,
    dir_owner: u32,
    shown: String,
}

fn split(path: &Path) -> (PathBuf, String) {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    (parent.to_path_buf(), name)
}

fn open_lock(path: &Path) -> Result<LockFile, LockError> {
    let (parent, name) = split(path);
    let dir = Dir::open(&parent).map_err(LockError::Fs)?;
    let dir_owner = dir.fstat().map_err(LockError::Fs)?.uid;
    let limits = Limits {
        owner: Some(dir_owner),
        max_size: u64::MAX,
    };
    let shown = dir.shown_name(&name);
    match fsx::open_regular_at(&dir, &name, limits) {
        Ok(r) => Ok(LockFile {
            dir,
            file: r.file,
            dir_owner,
            shown,
        }),
        Err(FsError::Io { err, .. }) if err.kind() == io::ErrorKind::NotFound => {
            Err(LockError::Missing { path: shown })
        }
        Err(e) => Err(LockError::Fs(e)),
    }
}

/// flock(2) without waiting: Ok(true) taken, Ok(false) held by another open file.
fn try_flock(file: &File) -> io::Result<bool> {
    loop {
        // SAFETY: flock on a live descriptor.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Ok(false),
            _ => return Err(e),
        }
    }
}

/// What a holder note in `dir` says, if it is a regular file of `owner`: at most 400 bytes
/// read, printable and one line, at most 300 shown. For tribist's note in `api/` pass
/// tribist's uid: a file of anyone else (a hard link to another's file) is not read.
pub fn read_note(dir: &Dir, name: &str, owner: u32) -> Option<String> {
    let limits = Limits {
        owner: Some(owner),
        max_size: u64::MAX,
    };
    let r = fsx::open_regular_at(dir, name, limits).ok()?;
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut io::Read::take(&r.file, NOTE_READ), &mut bytes).ok()?;
    let note = clean(&bytes, NOTE_SHOWN);
    (!note.trim().is_empty()).then_some(note)
}

/// The deploy lock, held until dropped (the note is removed, then the lock released).
#[derive(Debug)]
pub struct DeployLock {
    file: File,
    note: Option<(Dir, String)>,
    note_error: Option<FsError>,
}

impl DeployLock {
    /// Takes the lock at `path` for root, writing `holder_note` (mode 0644) as [`HOLDER`]
    /// beside it; or refuses with the holder's note.
    pub fn acquire(path: &Path, holder_note: &str) -> Result<DeployLock, LockError> {
        DeployLock::take(open_lock(path)?, None, HOLDER, 0o644, holder_note)
    }

    /// Takes the lock at `path` writing the note as `note_name` in `note_dir` instead (user
    /// tribist's, in `api/`, mode 0640).
    pub fn acquire_noting(
        path: &Path,
        note_dir: Dir,
        note_name: &str,
        holder_note: &str,
    ) -> Result<DeployLock, LockError> {
        DeployLock::take(
            open_lock(path)?,
            Some(note_dir),
            note_name,
            0o640,
            holder_note,
        )
    }

    fn take(
        lock: LockFile,
        note_dir: Option<Dir>,
        note_name: &str,
        mode: u32,
        text: &str,
    ) -> Result<DeployLock, LockError> {
        let LockFile {
            dir,
            file,
            dir_owner,
            shown,
        } = lock;
        match try_flock(&file) {
            Ok(true) => {}
            Ok(false) => {
                return Err(LockError::Held {
                    note: read_note(&dir, HOLDER, dir_owner),
                })
            }
            Err(err) => {
                return Err(LockError::Fs(FsError::Io {
                    op: "cannot flock",
                    path: shown,
                    err,
                }))
            }
        }
        let note_dir = note_dir.unwrap_or(dir);
        let text = clean(text.as_bytes(), NOTE_SHOWN);
        let (note, note_error) =
            match fsx::write_atomic_at(&note_dir, note_name, text.as_bytes(), mode, None) {
                Ok(()) => (Some((note_dir, note_name.to_string())), None),
                Err(e) => (None, Some(e)),
            };
        Ok(DeployLock {
            file,
            note,
            note_error,
        })
    }

    /// Why the holder note could not be written, if it could not (the lock is held all the
    /// same; a refused deployment then names an unknown holder).
    pub fn note_error(&self) -> Option<&FsError> {
        self.note_error.as_ref()
    }
}

impl Drop for DeployLock {
    fn drop(&mut self) {
        if let Some((dir, name)) = &self.note {
            let _ = fsx::unlinkat(dir, name);
        }
        // SAFETY: flock on a live descriptor; closing the file would release it too.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

// --- breaking the lock ------------------------------------------------------------------------

/// A process that has the lock file open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holder {
    pub pid: i32,
    /// A deployment (deploy.sh, tribist-host), which rolls back on SIGTERM and gets the
    /// longer grace period for it.
    pub deployment: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Term,
    Kill,
}

impl Signal {
    fn number(self) -> libc::c_int {
        match self {
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
        }
    }
}

/// How long each holder is given.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// After SIGTERM, before SIGKILL, for a holder that is not a deployment.
    pub grace: Duration,
    /// The same for a deployment (its rollback takes up to about that).
    pub deployment_grace: Duration,
    /// From the start, when unlock stops waiting.
    pub give_up: Duration,
    /// How often it looks again.
    pub poll: Duration,
}

impl Timing {
    pub const DEFAULT: Timing = Timing {
        grace: Duration::from_secs(5),
        deployment_grace: Duration::from_secs(40),
        give_up: Duration::from_secs(45),
        poll: Duration::from_millis(200),
    };
}

/// What to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// The lock is free.
    Released,
    /// Held, but by no process this one can see or signal (a root deployment, to tribist).
    Unseen,
    /// Send these now, then tell [`Unlocker::sent`] which went.
    Signal(Vec<(i32, Signal)>),
    /// Look again after [`Timing::poll`].
    Wait,
    /// Still held at [`Timing::give_up`] by these.
    GiveUp(Vec<i32>),
}

/// The decisions of `make unlock`, from what is observed; no clock, no system call.
#[derive(Debug)]
pub struct Unlocker {
    timing: Timing,
    /// Holders that got SIGTERM, and when.
    termed: Vec<(i32, Duration)>,
    killed: Vec<i32>,
    /// Holders a signal could not reach.
    unreachable: Vec<i32>,
}

impl Unlocker {
    pub fn new(timing: Timing) -> Unlocker {
        Unlocker {
            timing,
            termed: Vec::new(),
            killed: Vec::new(),
            unreachable: Vec::new(),
        }
    }

    /// The next step, `elapsed` after the start, the lock `free` or held by `holders`.
    pub fn next(&mut self, elapsed: Duration, free: bool, holders: &[Holder]) -> Step {
        if free {
            return Step::Released;
        }
        if elapsed >= self.timing.give_up {
            return Step::GiveUp(holders.iter().map(|h| h.pid).collect());
        }
        let reachable: Vec<&Holder> = holders
            .iter()
            .filter(|h| !self.unreachable.contains(&h.pid))
            .collect();
        if reachable.is_empty() && self.termed.is_empty() {
            return Step::Unseen;
        }
        let mut signals = Vec::new();
        for h in reachable {
            match self.termed.iter().find(|(p, _)| *p == h.pid) {
                None => signals.push((h.pid, Signal::Term)),
                Some((_, at)) => {
                    let grace = if h.deployment {
                        self.timing.deployment_grace
                    } else {
                        self.timing.grace
                    };
                    if elapsed.saturating_sub(*at) >= grace && !self.killed.contains(&h.pid) {
                        signals.push((h.pid, Signal::Kill));
                    }
                }
            }
        }
        if signals.is_empty() {
            Step::Wait
        } else {
            Step::Signal(signals)
        }
    }

    /// Records whether `signal` reached `pid` at `elapsed`.
    pub fn sent(&mut self, pid: i32, signal: Signal, reached: bool, elapsed: Duration) {
        match (signal, reached) {
            (Signal::Term, true) => self.termed.push((pid, elapsed)),
            (Signal::Kill, true) => self.killed.push(pid),
            (Signal::Term, false) => self.unreachable.push(pid),
            // Gone between the look and the signal: it no longer holds anything.
            (Signal::Kill, false) => {}
        }
    }

    /// What was done, for the report.
    pub fn report(&self) -> UnlockReport {
        if self.termed.is_empty() {
            return UnlockReport::Free;
        }
        UnlockReport::Released {
            terminated: self.termed.iter().map(|(p, _)| *p).collect(),
            killed: self.killed.clone(),
        }
    }
}

/// What `make unlock` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UnlockReport {
    /// No lock file on this host.
    NoLock,
    /// Nobody held it (or its holder ended by itself before any signal).
    Free,
    Released {
        terminated: Vec<i32>,
        killed: Vec<i32>,
    },
}

fn pids(p: &[i32]) -> String {
    p.iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

impl fmt::Display for UnlockReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnlockReport::NoLock => write!(f, "no deploy lock on this host"),
            UnlockReport::Free => write!(f, "the deploy lock is free"),
            UnlockReport::Released { killed, .. } if !killed.is_empty() => write!(
                f,
                "lock released: pid {} had to be killed (SIGKILL), so what it had started was not rolled back by it; make status shows what serves",
                pids(killed)
            ),
            UnlockReport::Released { terminated, .. } => write!(
                f,
                "lock released: pid {} ended after SIGTERM (a deployment rolls back what it had started); make status shows what serves",
                pids(terminated)
            ),
        }
    }
}

#[derive(Debug)]
pub enum UnlockError {
    Lock(LockError),
    /// Held by processes this user cannot see or signal.
    Unseen {
        uid: u32,
    },
    /// Still held after SIGTERM and SIGKILL.
    Stuck {
        pids: Vec<i32>,
        after: Duration,
    },
    /// The caller stopped the wait (an interrupt): what had been done by then.
    Stopped {
        report: UnlockReport,
    },
}

impl fmt::Display for UnlockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnlockError::Lock(e) => write!(f, "{e}"),
            UnlockError::Unseen { uid } => write!(
                f,
                "the lock is held by a process uid {uid} cannot see or signal (a root deployment?); break it as root: make unlock HOST=root@…"
            ),
            UnlockError::Stuck { pids: p, after } if p.is_empty() => write!(
                f,
                "the lock is still held {} s after SIGTERM and SIGKILL, by no process this user can see (a root deployment?); break it as root: make unlock HOST=root@…",
                after.as_secs()
            ),
            UnlockError::Stuck { pids: p, after } => write!(
                f,
                "pid {} still holds the lock {} s after SIGTERM and SIGKILL; see: ps -o pid,user,cmd -p {}",
                pids(p),
                after.as_secs(),
                p.first().copied().unwrap_or(0)
            ),
            UnlockError::Stopped {
                report: UnlockReport::Released { terminated, killed },
            } => write!(
                f,
                "stopped waiting for the deploy lock (interrupted) after SIGTERM to pid {}{}; it may still hold the lock: make unlock again",
                pids(terminated),
                if killed.is_empty() {
                    String::new()
                } else {
                    format!(" and SIGKILL to pid {}", pids(killed))
                }
            ),
            UnlockError::Stopped { .. } => write!(
                f,
                "stopped waiting for the deploy lock (interrupted) before signalling anyone"
            ),
        }
    }
}

impl std::error::Error for UnlockError {}

/// Whether a command line (`/proc/PID/cmdline`) is a deployment's: the program (its first
/// word) or the script an interpreter runs (its second) is `deploy.sh` or `tribist-host`. A
/// word elsewhere (a path given to `flock`, `sleep`'s argument) does not make one.
pub fn is_deployment_cmdline(cmdline: &[u8]) -> bool {
    cmdline.split(|&b| b == 0).take(2).any(|word| {
        let name = word.rsplit(|&b| b == b'/').next().unwrap_or(word);
        name == b"deploy.sh" || name == b"tribist-host"
    })
}

/// The lock file's identity and the path the kernel shows for it in `/proc/PID/fd`.
struct Identity {
    dev: u64,
    ino: u64,
    path: PathBuf,
}

/// Whether process `pid` has the lock file open now: a `/proc/PID/fd` link whose text is
/// the lock's path (read without touching the file) and whose target is its inode.
fn holds(pid: i32, id: &Identity) -> bool {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    entries.flatten().any(|e| {
        std::fs::read_link(e.path()).is_ok_and(|t| t == id.path)
            && std::fs::metadata(e.path()).is_ok_and(|m| {
                use std::os::unix::fs::MetadataExt;
                m.dev() == id.dev && m.ino() == id.ino
            })
    })
}

/// The parent of process `pid` (`/proc/PID/stat`'s fourth field, read after the command
/// name, which may hold spaces and parentheses), if it is still there.
fn parent_of(pid: i32) -> Option<i32> {
    let mut b = Vec::new();
    let f = std::fs::File::open(format!("/proc/{pid}/stat")).ok()?;
    io::Read::read_to_end(&mut io::Read::take(f, 4096), &mut b).ok()?;
    let s = String::from_utf8_lossy(&b);
    let (_, rest) = s.rsplit_once(") ")?;
    rest.split(' ').nth(1)?.parse().ok()
}

/// The holders a signal should go to: those not started by a deployment that holds the lock
/// itself. A bash deployment's children inherit its lock descriptor (its `$(…)` subshells,
/// its pipelines' `tr`, a `curl` or a `sleep`); they belong to the deployment, which rolls
/// back on its own SIGTERM and needs them for it: signalled, its rollback would lose its
/// steps' output. Once their deployment has ended they are orphans, and count again.
/// `parent_of` gives a process's parent; ancestry is followed at most 64 levels.
pub fn independent(holders: &[Holder], parent_of: impl Fn(i32) -> Option<i32>) -> Vec<Holder> {
    let deployments: Vec<i32> = holders
        .iter()
        .filter(|h| h.deployment)
        .map(|h| h.pid)
        .collect();
    holders
        .iter()
        .filter(|h| {
            let mut pid = h.pid;
            for _ in 0..64 {
                match parent_of(pid) {
                    Some(p) if p > 1 && p != pid => {
                        if deployments.contains(&p) {
                            return false;
                        }
                        pid = p;
                    }
                    _ => break,
                }
            }
            true
        })
        .copied()
        .collect()
}

/// The processes (but this one) that have the lock file open.
fn holders(id: &Identity) -> Vec<Holder> {
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out: Vec<Holder> = procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me && holds(pid, id))
        .map(|pid| Holder {
            pid,
            deployment: std::fs::File::open(format!("/proc/{pid}/cmdline"))
                .and_then(|f| {
                    let mut b = Vec::new();
                    io::Read::read_to_end(&mut io::Read::take(f, 4096), &mut b).map(|_| b)
                })
                .is_ok_and(|b| is_deployment_cmdline(&b)),
        })
        .collect();
    out.sort_by_key(|h| h.pid);
    independent(&out, parent_of)
}

/// Sends `signal` to `pid` if it still holds the lock: through a pidfd taken before the
/// check (Linux 5.3), so a pid reused after the check is never signalled; else kill(2).
fn signal_holder(pid: i32, signal: Signal, id: &Identity) -> bool {
    // SAFETY: plain system calls; the pidfd is closed before returning.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as libc::c_int;
        if pidfd < 0 {
            let e = io::Error::last_os_error().raw_os_error();
            return e == Some(libc::ENOSYS)
                && holds(pid, id)
                && libc::kill(pid, signal.number()) == 0;
        }
        let ok = holds(pid, id)
            && libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd,
                signal.number(),
                std::ptr::null::<libc::siginfo_t>(),
                0,
            ) == 0;
        libc::close(pidfd);
        ok
    }
}

/// Breaks the deploy lock at `path` on purpose (`make unlock`): see the module's comment.
/// `note` names the holder in the first message; `say` gets each step as it happens.
pub fn unlock(
    path: &Path,
    timing: Timing,
    note: &str,
    say: &mut dyn FnMut(&str),
) -> Result<UnlockReport, UnlockError> {
    unlock_until(path, timing, note, say, &|| false)
}

/// [`unlock`], looking at `stop` between its steps and during its waits: once it says true,
/// the wait ends with [`UnlockError::Stopped`] and what was done by then.
pub fn unlock_until(
    path: &Path,
    timing: Timing,
    note: &str,
    say: &mut dyn FnMut(&str),
    stop: &dyn Fn() -> bool,
) -> Result<UnlockReport, UnlockError> {
    let lock = match open_lock(path) {
        Ok(l) => l,
        Err(LockError::Missing { .. }) => return Ok(UnlockReport::NoLock),
        Err(e) => return Err(UnlockError::Lock(e)),
    };
    let st = fsx::fstat(lock.file.as_fd()).map_err(|err| {
        UnlockError::Lock(LockError::Fs(FsError::Io {
            op: "cannot fstat",
            path: lock.shown.clone(),
            err,
        }))
    })?;
    let id = Identity {
        dev: st.dev,
        ino: st.ino,
        path: std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
    };
    // Free now? Taken and at once let go again, on this process's own open file.
    let probe = |file: &File| -> bool {
        let free = try_flock(file).unwrap_or(false);
        if free {
            // SAFETY: flock on a live descriptor.
            unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
        }
        free
    };
    let start = Instant::now();
    let mut u = Unlocker::new(timing);
    loop {
        if stop() {
            return Err(UnlockError::Stopped { report: u.report() });
        }
        let elapsed = start.elapsed();
        let free = probe(&lock.file);
        let seen = if free { Vec::new() } else { holders(&id) };
        match u.next(elapsed, free, &seen) {
            Step::Released => return Ok(u.report()),
            // SAFETY: geteuid has no preconditions.
            Step::Unseen => {
                return Err(UnlockError::Unseen {
                    uid: unsafe { libc::geteuid() },
                })
            }
            Step::GiveUp(p) => {
                return Err(UnlockError::Stuck {
                    pids: p,
                    after: elapsed,
                })
            }
            Step::Wait => {
                let until = Instant::now() + timing.poll;
                while Instant::now() < until && !stop() {
                    std::thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
                }
            }
            Step::Signal(list) => {
                let mut termed = Vec::new();
                for (pid, sig) in list {
                    let reached = signal_holder(pid, sig, &id);
                    u.sent(pid, sig, reached, elapsed);
                    match (sig, reached) {
                        (Signal::Term, true) => termed.push(pid),
                        (Signal::Kill, true) => say(&format!(
                            "pid {pid} still held the lock {} s after SIGTERM: sent SIGKILL",
                            elapsed.as_secs()
                        )),
                        _ => {}
                    }
                }
                if !termed.is_empty() {
                    say(&format!(
                        "sent SIGTERM to the deploy lock's holder: {} [pid {}]",
                        clean(note.as_bytes(), NOTE_SHOWN),
                        pids(&termed)
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::testutil::TempDir;
    use std::io::BufRead;
    use std::process::{Child, Command, Stdio};

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn h(pid: i32, deployment: bool) -> Holder {
        Holder { pid, deployment }
    }

    #[test]
    fn term_then_kill_after_the_grace() {
        let mut u = Unlocker::new(Timing::DEFAULT);
        let a = [h(10, false)];
        assert_eq!(
            u.next(S(0), false, &a),
            Step::Signal(vec![(10, Signal::Term)])
        );
        u.sent(10, Signal::Term, true, S(0));
        assert_eq!(u.next(S(1), false, &a), Step::Wait);
        assert_eq!(u.next(Duration::from_millis(4900), false, &a), Step::Wait);
        assert_eq!(
            u.next(S(5), false, &a),
            Step::Signal(vec![(10, Signal::Kill)])
        );
        u.sent(10, Signal::Kill, true, S(5));
        // Killed once only.
        assert_eq!(u.next(S(6), false, &a), Step::Wait);
        assert_eq!(u.next(S(6), true, &[]), Step::Released);
        let r = u.report();
        assert_eq!(
            r,
            UnlockReport::Released {
                terminated: vec![10],
                killed: vec![10]
            }
        );
        assert!(r
            .to_string()
            .starts_with("lock released: pid 10 had to be killed (SIGKILL)"));
    }

    #[test]
    fn a_deployment_gets_the_time_to_roll_back() {
        let mut u = Unlocker::new(Timing::DEFAULT);
        let d = [h(20, true), h(21, false)];
        assert_eq!(
            u.next(S(0), false, &d),
            Step::Signal(vec![(20, Signal::Term), (21, Signal::Term)])
        );
        u.sent(20, Signal::Term, true, S(0));
        u.sent(21, Signal::Term, true, S(0));
        assert_eq!(
            u.next(S(5), false, &d),
            Step::Signal(vec![(21, Signal::Kill)])
        );
        u.sent(21, Signal::Kill, true, S(5));
        let d = [h(20, true)];
        assert_eq!(u.next(S(39), false, &d), Step::Wait);
        assert_eq!(
            u.next(S(40), false, &d),
            Step::Signal(vec![(20, Signal::Kill)])
        );
        // A kill that does not free it: at 45 s, give up naming it.
        u.sent(20, Signal::Kill, true, S(40));
        assert_eq!(u.next(S(45), false, &d), Step::GiveUp(vec![20]));
        let stuck = UnlockError::Stuck {
            pids: vec![20],
            after: S(45),
        };
        assert_eq!(
            stuck.to_string(),
            "pid 20 still holds the lock 45 s after SIGTERM and SIGKILL; see: ps -o pid,user,cmd -p 20"
        );
    }

    #[test]
    fn a_holder_that_ends_on_sigterm_is_reported_so() {
        let mut u = Unlocker::new(Timing::DEFAULT);
        assert_eq!(
            u.next(S(0), false, &[h(7, true)]),
            Step::Signal(vec![(7, Signal::Term)])
        );
        u.sent(7, Signal::Term, true, S(0));
        assert_eq!(u.next(S(2), true, &[]), Step::Released);
        let r = u.report();
        assert_eq!(
            r,
            UnlockReport::Released {
                terminated: vec![7],
                killed: vec![]
            }
        );
        assert!(r
            .to_string()
            .starts_with("lock released: pid 7 ended after SIGTERM"));
    }

    #[test]
    fn a_new_holder_gets_its_own_sigterm_and_grace() {
        let mut u = Unlocker::new(Timing::DEFAULT);
        assert_eq!(
            u.next(S(0), false, &[h(1, false)]),
            Step::Signal(vec![(1, Signal::Term)])
        );
        u.sent(1, Signal::Term, true, S(0));
        // pid 1 went; pid 2 (its child, holding the inherited descriptor) appears at 3 s.
        assert_eq!(
            u.next(S(3), false, &[h(2, false)]),
            Step::Signal(vec![(2, Signal::Term)])
        );
        u.sent(2, Signal::Term, true, S(3));
        assert_eq!(u.next(S(7), false, &[h(2, false)]), Step::Wait);
        assert_eq!(
            u.next(S(8), false, &[h(2, false)]),
            Step::Signal(vec![(2, Signal::Kill)])
        );
    }

    #[test]
    fn nobody_to_signal_is_said_at_once() {
        // Nobody visible (a root deployment, seen by tribist).
        let mut u = Unlocker::new(Timing::DEFAULT);
        assert_eq!(u.next(S(0), false, &[]), Step::Unseen);
        // Visible, but SIGTERM cannot reach it (EPERM).
        let mut u = Unlocker::new(Timing::DEFAULT);
        assert_eq!(
            u.next(S(0), false, &[h(3, false)]),
            Step::Signal(vec![(3, Signal::Term)])
        );
        u.sent(3, Signal::Term, false, S(0));
        assert_eq!(
            u.next(Duration::from_millis(200), false, &[h(3, false)]),
            Step::Unseen
        );
        assert_eq!(u.report(), UnlockReport::Free);
        // Free from the start.
        let mut u = Unlocker::new(Timing::DEFAULT);
        assert_eq!(u.next(S(0), true, &[]), Step::Released);
        assert_eq!(u.report().to_string(), "the deploy lock is free");
    }

    #[test]
    fn deployments_by_their_command_line() {
        assert!(is_deployment_cmdline(
            b"bash\0/home/tribist/bin/deploy.sh\0upgrade\0"
        ));
        assert!(is_deployment_cmdline(
            b"/var/lib/tribist-deploy/bin/tribist-host\0upgrade\0"
        ));
        assert!(is_deployment_cmdline(b"/bin/bash\0deploy.sh\0"));
        assert!(!is_deployment_cmdline(b"sleep\x00100\x00"));
        assert!(!is_deployment_cmdline(
            b"flock\0-n\0/tmp/tribist-host-lock-1/lock\0sh\0"
        ));
        assert!(!is_deployment_cmdline(b"sleep\x001000\0tribist-host\0"));
        assert!(!is_deployment_cmdline(b"/tmp/deploy.sh.evil\0"));
        assert!(!is_deployment_cmdline(b""));
    }

    #[test]
    fn a_deployments_own_children_are_left_to_it() {
        // pid -> parent: 100 a deployment (bash deploy.sh) under sshd 50; 101 its `$(…)`
        // subshell (a deployment too, by its command line), 102 that subshell's `tr`, 103 a
        // `sleep` of 100; 200 an unrelated holder under 50; 300 an orphan (parent 1).
        let parents = [
            (100, 50),
            (101, 100),
            (102, 101),
            (103, 100),
            (200, 50),
            (50, 1),
            (300, 1),
        ];
        let parent = |p: i32| parents.iter().find(|(c, _)| *c == p).map(|(_, q)| *q);
        let all = [
            h(100, true),
            h(101, true),
            h(102, false),
            h(103, false),
            h(200, false),
            h(300, true),
        ];
        let cases: &[(&[Holder], &[i32])] = &[
            (&all, &[100, 200, 300]),
            // The deployment no longer a holder: its children count again; the subshell, a
            // deployment itself, now leads its own tree.
            (&all[1..], &[101, 103, 200, 300]),
            (&[h(102, false), h(103, false)], &[102, 103]),
            // Only non-deployments: nothing is anyone's.
            (&[h(200, false), h(102, false)], &[200, 102]),
        ];
        for (holders, want) in cases {
            let got: Vec<i32> = independent(holders, parent).iter().map(|h| h.pid).collect();
            assert_eq!(&got, want, "{holders:?}");
        }
        // A loop in what /proc said (a reused pid) ends.
        let looped = |p: i32| Some(if p == 7 { 8 } else { 7 });
        assert_eq!(independent(&[h(7, false)], looped), vec![h(7, false)]);
        // This process's real parent is read.
        // SAFETY: getppid/getpid have no preconditions.
        let (me, pp) = unsafe { (libc::getpid(), libc::getppid()) };
        assert_eq!(parent_of(me), Some(pp));
    }

    fn lock_dir(tag: &str) -> (TempDir, PathBuf) {
        let t = TempDir::new(tag);
        let lock = t.join("lock");
        std::fs::write(&lock, b"").unwrap();
        (t, lock)
    }

    #[test]
    fn acquire_refuse_with_the_note_and_release_on_drop() {
        let (t, path) = lock_dir("lock-acquire");
        let first = DeployLock::acquire(
            &path,
            "upgrade by \"alice\"\x1b[2K as root@10.1.2.3 (pid 1)",
        )
        .unwrap();
        assert!(first.note_error().is_none());
        let note = std::fs::read_to_string(t.join(HOLDER)).unwrap();
        assert_eq!(note, "upgrade by \"alice\"[2K as root@10.1.2.3 (pid 1)");
        // The lock descriptor is not inherited by what runs.
        // SAFETY: fcntl on a live descriptor.
        let fl = unsafe { libc::fcntl(first.file.as_raw_fd(), libc::F_GETFD) };
        assert_ne!(fl & libc::FD_CLOEXEC, 0);

        match DeployLock::acquire(&path, "second").unwrap_err() {
            LockError::Held { note: Some(n) } => assert_eq!(n, note),
            other => panic!("{other}"),
        }
        drop(first);
        assert!(!t.join(HOLDER).exists(), "the note outlived the lock");
        let again = DeployLock::acquire(&path, "third").unwrap();
        drop(again);

        // tribist's variant: its note in a directory of its own.
        std::fs::create_dir(t.join("api")).unwrap();
        let api = Dir::open(t.join("api")).unwrap();
        let l = DeployLock::acquire_noting(&path, api, ".deploy.holder", "by tribist").unwrap();
        assert_eq!(
            std::fs::read_to_string(t.join("api/.deploy.holder")).unwrap(),
            "by tribist"
        );
        let e = DeployLock::acquire(&path, "root").unwrap_err();
        assert!(matches!(e, LockError::Held { note: None }), "{e}");
        assert!(e.to_string().contains("unknown holder"));
        drop(l);
        assert!(!t.join("api/.deploy.holder").exists());
    }

    #[test]
    fn a_missing_lock_or_a_link_is_refused() {
        let t = TempDir::new("lock-missing");
        let e = DeployLock::acquire(&t.join("lock"), "x").unwrap_err();
        assert!(matches!(e, LockError::Missing { .. }), "{e}");
        assert!(e
            .to_string()
            .ends_with("is missing: is tribist installed? (make install)"));
        assert!(!t.join("lock").exists(), "acquire created the lock file");
        assert_eq!(
            unlock(&t.join("lock"), Timing::DEFAULT, "", &mut |_| {}).unwrap(),
            UnlockReport::NoLock
        );
        std::fs::write(t.join("real"), b"").unwrap();
        std::os::unix::fs::symlink(t.join("real"), t.join("lock")).unwrap();
        let e = DeployLock::acquire(&t.join("lock"), "x").unwrap_err();
        assert!(matches!(e, LockError::Fs(FsError::Symlink { .. })), "{e}");
    }

    /// `flock(1)` holding `lock` in another process, running `script` (sh) once it holds it;
    /// returns when the script has said "locked".
    fn holder(lock: &Path, script: &str) -> Child {
        let mut c = Command::new("flock")
            .arg("-n")
            .arg(lock)
            .args(["sh", "-c", &format!("echo locked; {script}")])
            .stdout(Stdio::piped())
            .spawn()
            .expect("flock(1)");
        let mut line = String::new();
        std::io::BufReader::new(c.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "locked\n");
        c
    }

    const QUICK: Timing = Timing {
        grace: Duration::from_millis(500),
        deployment_grace: Duration::from_secs(2),
        give_up: Duration::from_secs(8),
        poll: Duration::from_millis(50),
    };

    #[test]
    fn another_process_holds_it_and_unlock_ends_it_with_sigterm() {
        let (_t, path) = lock_dir("lock-term");
        assert_eq!(
            unlock(&path, QUICK, "", &mut |_| {}).unwrap(),
            UnlockReport::Free
        );
        let mut c = holder(&path, "exec sleep 100");
        assert!(matches!(
            DeployLock::acquire(&path, "me"),
            Err(LockError::Held { .. })
        ));
        let mut said = Vec::new();
        let r = unlock(&path, QUICK, "upgrade by bob", &mut |s| {
            said.push(s.to_string())
        })
        .unwrap();
        let _ = c.wait();
        match &r {
            UnlockReport::Released { terminated, killed } => {
                assert!(terminated.contains(&(c.id() as i32)), "{r:?}");
                assert!(killed.is_empty(), "{r:?}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0].starts_with("sent SIGTERM to the deploy lock's holder: upgrade by bob [pid ")
        );
        assert!(DeployLock::acquire(&path, "me").is_ok());
    }

    #[test]
    fn an_interrupt_stops_the_wait_and_says_what_was_done() {
        let (_t, path) = lock_dir("lock-stop");
        let mut c = Command::new("sh")
            .args(["-c", "trap '' TERM; exec \"$0\" \"$@\""])
            .args(["flock", "-n"])
            .arg(&path)
            .args(["sh", "-c", "echo locked; sleep 100"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(c.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "locked\n");
        let slow = Timing {
            grace: Duration::from_secs(30),
            ..QUICK
        };
        let start = Instant::now();
        let stop = || start.elapsed() > Duration::from_millis(300);
        let e = unlock_until(&path, slow, "x", &mut |_| {}, &stop).unwrap_err();
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        match &e {
            UnlockError::Stopped {
                report: UnlockReport::Released { terminated, killed },
            } => {
                assert!(!terminated.is_empty() && killed.is_empty(), "{e:?}")
            }
            other => panic!("{other:?}"),
        }
        assert!(
            e.to_string().starts_with(
                "stopped waiting for the deploy lock (interrupted) after SIGTERM to pid "
            ),
            "{e}"
        );
        // Still held: nothing was killed.
        assert!(matches!(
            DeployLock::acquire(&path, "me"),
            Err(LockError::Held { .. })
        ));
        // SAFETY: kill has no memory preconditions; flock(1) goes, its sleep still holds it.
        unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
        let _ = c.wait();
        let r = unlock(&path, QUICK, "x", &mut |_| {}).unwrap();
        assert!(
            matches!(r, UnlockReport::Free | UnlockReport::Released { .. }),
            "{r:?}"
        );
    }

    #[test]
    fn a_holder_that_ignores_sigterm_is_killed_and_said_so() {
        let (_t, path) = lock_dir("lock-kill");
        // flock(1) and sh both ignore SIGTERM (inherited across exec), and so does sleep.
        let mut c = Command::new("sh")
            .args(["-c", "trap '' TERM; exec \"$0\" \"$@\""])
            .args(["flock", "-n"])
            .arg(&path)
            .args(["sh", "-c", "echo locked; sleep 100"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(c.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "locked\n");
        let start = Instant::now();
        let mut said = Vec::new();
        let r = unlock(&path, QUICK, "x", &mut |s| said.push(s.to_string())).unwrap();
        let _ = c.wait();
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        match &r {
            UnlockReport::Released { killed, .. } => assert!(!killed.is_empty(), "{r:?}"),
            other => panic!("{other:?}"),
        }
        assert!(
            said.iter()
                .any(|s| s.ends_with("s after SIGTERM: sent SIGKILL")),
            "{said:?}"
        );
        assert!(r.to_string().contains("had to be killed (SIGKILL)"));
        assert!(DeployLock::acquire(&path, "me").is_ok());
    }
}
