//! Binary upgrades no client can notice: the serving process starts its successor itself and
//! hands it the listening socket, the way nginx upgrades its binary.
//!
//! A restart has a gap — the old process gone, systemd setting up the sandbox, the new one
//! starting — during which connections wait in the socket's backlog (about 100 ms measured).
//! A handover has none: on SIGUSR2 (`systemctl reload tribist`) the server runs the binary now
//! at the path it was started from, with the same arguments and environment, and passes it
//! three descriptors: the listening socket, the lock of the working directory (so `PID` stays
//! locked throughout) and one end of a socket pair. The successor starts serving on the same
//! socket and writes `ready` on the pair; the old process then tells systemd the successor is
//! the main process (`MAINPID=`: only the main process may say so, `NotifyAccess=main`),
//! answers `main` (after which the successor's own notifications count) and stops accepting
//! and drains, exactly as on SIGTERM: both accept for a moment, nobody waits. A successor
//! (with everything it started: it gets a process group of its own) that exits, hangs or is
//! not ready within the bound is stopped and the old process simply goes on serving, with
//! the reason in its log and in `systemctl status`; a termination signal meanwhile stops it
//! too, and the old process shuts down as usual.
//!
//! Only root may ask: a SIGUSR2 sent with kill(2) (`SI_USER`, so the kernel, not the sender,
//! filled in the uid) by uid 0. Under systemd that is `ExecReload=`'s audited step; tribist's
//! own processes cannot start a binary this way, neither with kill(2) nor with a forged
//! rt_sigqueueinfo(2) (outside systemd the process's owner may too, for tests and `make
//! run`). `server --describe` lists the feature `handover` (and `server --version` says
//! `handover: SIGUSR2`, for kits that predate `--describe`), so the kit knows which releases
//! can take over this way.
//!
//! What `systemctl status` says (`STATUS=`) starts with fixed tokens, `handover=STATE` and,
//! but for `off` and `stopping`, `attempt=N`, then `; ` and the words for people (`Status`
//! below). The reload step (tribist-host on-reload, root) reads them from systemd, which only
//! takes them from the main process (`NotifyAccess=main`): whether this process can hand
//! over, and whether the attempt it asked for failed, without reading a file of tribist's or
//! depending on how the words are put.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// The variable that tells a successor which descriptors it inherited: `LISTEN,LOCK,READY`.
pub const ENV: &str = "TRIBIST_HANDOVER";

/// What a successor writes once it serves.
const READY: &[u8] = b"ready\n";

/// What the old process answers once it told systemd the successor is the main process.
const MAIN: &[u8] = b"main\n";

/// How long a successor waits for `main` before it notifies systemd anyway.
const MAIN_WAIT: Duration = Duration::from_secs(5);

/// The line `server --version` adds, for kits that predate `server --describe`.
pub const VERSION_LINE: &str = "handover: SIGUSR2";

/// This feature's name in `server --describe`: SIGUSR2 hands over, and `STATUS=` starts with
/// the tokens of `Status`.
pub const FEATURE: &str = "handover";

/// Where this process stands on handovers, as the first words of its `STATUS=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Serving; no handover asked for yet: `handover=ready attempt=0`.
    Ready,
    /// Attempt N is under way: `handover=started attempt=N`.
    Started(u32),
    /// Attempt N failed and this process goes on serving; a SIGUSR2 starts attempt N+1:
    /// `handover=failed attempt=N`.
    Failed(u32),
    /// This process cannot hand over (it could not set the signal up): `handover=off`.
    Off,
    /// Draining, on a termination signal: `handover=stopping`.
    Stopping,
}

impl Status {
    /// The machine-readable words, without the text.
    pub fn tokens(self) -> String {
        match self {
            Status::Ready => "handover=ready attempt=0".into(),
            Status::Started(n) => format!("handover=started attempt={n}"),
            Status::Failed(n) => format!("handover=failed attempt={n}"),
            Status::Off => "handover=off".into(),
            Status::Stopping => "handover=stopping".into(),
        }
    }

    /// The `STATUS=` line: the tokens, `; `, then `text` (its control characters, which would
    /// end the notification's line, made spaces).
    pub fn line(self, text: &str) -> String {
        let text: String = text
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        format!("STATUS={}; {text}", self.tokens())
    }
}
/// How long a stopped successor has to exit after SIGTERM before it gets SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// The signal that asks for a handover.
pub const SIGNAL: libc::c_int = libc::SIGUSR2;

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set it is given; sigaddset with a valid signal.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, SIGNAL);
        set
    }
}

/// Blocks SIGUSR2 in the calling thread and so in every thread it starts afterwards: call it
/// before any other thread exists. Its default action would end the process; blocked, it waits
/// for `watch`'s thread to take it.
pub fn block_signal() -> io::Result<()> {
    let set = signal_set();
    // SAFETY: a valid set; the old mask is not wanted.
    match unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) } {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// root's user id.
const ROOT: libc::uid_t = 0;

/// Whether a SIGUSR2 may start a binary: sent with kill(2) (`code` SI_USER: the kernel set
/// `sender`; with sigqueue the sender writes it itself), by root or, outside systemd, by the
/// process's owner.
pub fn allowed(code: i32, sender: u32, own: u32, under_systemd: bool) -> bool {
    code == libc::SI_USER && (sender == ROOT || (sender == own && !under_systemd))
}

/// Starts the thread that takes SIGUSR2 (blocked by `block_signal`) and calls `request` for
/// each one an allowed sender sent; the others are logged and ignored.
pub fn watch(request: impl Fn() + Send + 'static) -> io::Result<()> {
    // SAFETY: getuid cannot fail.
    let own = unsafe { libc::getuid() };
    let under_systemd = std::env::var_os("INVOCATION_ID").is_some();
    std::thread::Builder::new()
        .name("handover-signal".into())
        .spawn(move || {
            let set = signal_set();
            loop {
                // SAFETY: a zeroed siginfo_t is a valid buffer for sigwaitinfo to fill.
                let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
                // SAFETY: `set` and `info` are valid for the call.
                if unsafe { libc::sigwaitinfo(&set, &mut info) } < 0 {
                    continue; // EINTR
                }
                // SAFETY: filled by sigwaitinfo for a signal sent with kill(2) or sigqueue(3).
                let (uid, pid) = unsafe { (info.si_uid(), info.si_pid()) };
                let code = info.si_code;
                if allowed(code, uid, own, under_systemd) {
                    log::info!("handover: asked by pid {pid} (uid {uid})");
                    request();
                } else {
                    log::warn!(
                        "handover: ignoring SIGUSR2 from pid {pid} (uid {uid}, si_code {code}): \
                         only root may start a new binary, with kill(2) (systemctl reload tribist)"
                    );
                }
            }
        })
        .map(|_| ())
}

/// The binary a handover starts: the path this process was started from (where a promotion
/// puts the new binary), resolved now, while it still names this binary's file.
pub fn successor_path() -> io::Result<PathBuf> {
    match std::env::args_os().next().map(PathBuf::from) {
        Some(path) if path.is_absolute() => Ok(path),
        _ => std::env::current_exe(),
    }
}

/// What a successor inherited from the process it replaces.
pub struct Inherited {
    pub listener: TcpListener,
    /// The open, flock'ed working directory: the lock `PID` rests on.
    pub lock: File,
    pub ready: Ready,
}

/// The successor's end of the pair.
pub struct Ready(UnixStream);

impl Ready {
    /// Tells the old process this one serves, and waits (up to MAIN_WAIT) until it says it has
    /// made this one systemd's main process; it then stops accepting and drains. Returns
    /// whether it said so.
    pub fn report(mut self) -> io::Result<bool> {
        self.0.write_all(READY)?;
        self.0.set_read_timeout(Some(MAIN_WAIT))?;
        let mut got = [0u8; MAIN.len()];
        match self.0.read_exact(&mut got) {
            Ok(()) => Ok(got == MAIN),
            Err(_) => Ok(false),
        }
    }
}

/// Takes the descriptors named by `TRIBIST_HANDOVER`, if this process is a successor, and
/// clears the variable so that nothing started later inherits it.
pub fn take_inherited() -> Result<Option<Inherited>, String> {
    let Some(value) = std::env::var_os(ENV) else {
        return Ok(None);
    };
    // Called during start-up, before any other thread exists.
    std::env::remove_var(ENV);
    let value = value.to_string_lossy().into_owned();
    let fds: Vec<RawFd> = value
        .split(',')
        .map(|n| n.parse::<RawFd>().ok().filter(|&fd| !is_stdio(fd)))
        .collect::<Option<_>>()
        .filter(|fds: &Vec<RawFd>| fds.len() == 3)
        .ok_or_else(|| format!("{ENV}={value:?} is not three descriptor numbers"))?;
    let owned = fds
        .iter()
        .map(|&fd| own(fd).map_err(|e| format!("{ENV}: descriptor {fd} is not open ({e})")))
        .collect::<Result<Vec<OwnedFd>, String>>()?;
    let mut owned = owned.into_iter();
    let (Some(listener), Some(lock), Some(ready)) = (owned.next(), owned.next(), owned.next())
    else {
        unreachable!("three descriptors were checked above");
    };
    let listener = TcpListener::from(listener);
    listener
        .local_addr()
        .map_err(|e| format!("{ENV}: descriptor {} is not a TCP socket ({e})", fds[0]))?;
    Ok(Some(Inherited {
        listener,
        lock: File::from(lock),
        ready: Ready(UnixStream::from(ready)),
    }))
}

fn is_stdio(fd: RawFd) -> bool {
    fd <= libc::STDERR_FILENO
}

/// Owns descriptor `fd`, checked open first (owning a closed one would make std abort when it
/// fails to close it), and marks it close-on-exec again.
fn own(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: only borrowed for the duplication.
    let dup = unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()?;
    drop(dup);
    // SAFETY: open (just duplicated), named to this process by its parent, owned from now on.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    set_inheritable(fd, false)?;
    Ok(owned)
}

fn set_inheritable(fd: RawFd, inheritable: bool) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor this process has open; no memory is passed.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        let flags = if inheritable {
            flags & !libc::FD_CLOEXEC
        } else {
            flags | libc::FD_CLOEXEC
        };
        if libc::fcntl(fd, libc::F_SETFD, flags) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A successor started and not yet ready.
pub struct Pending {
    child: Child,
    pair: UnixStream,
    exe: PathBuf,
}

/// Starts `exe` with this process's arguments and environment plus the three descriptors, in
/// a process group of its own (so that stopping it stops whatever it started too). Call
/// `Pending::wait` next, on a thread of its own.
pub fn start(exe: &Path, listener: RawFd, lock: RawFd) -> Result<Pending, String> {
    let (ours, theirs) =
        UnixStream::pair().map_err(|e| format!("cannot create a socket pair: {e}"))?;
    let fds = [listener, lock, theirs.as_raw_fd()];
    let mut command = Command::new(exe);
    command
        .args(std::env::args_os().skip(1).collect::<Vec<OsString>>())
        .env(ENV, fds.map(|fd| fd.to_string()).join(","))
        // systemd's watchdog pid is this process; the successor pings once it is the main one.
        .env_remove("WATCHDOG_PID")
        .process_group(0);
    // Inheritable only for the spawn: this process starts no other program meanwhile.
    let child = fds
        .iter()
        .try_for_each(|&fd| set_inheritable(fd, true))
        .and_then(|()| command.spawn());
    for fd in fds {
        let _ = set_inheritable(fd, false);
    }
    drop(theirs);
    let child = child.map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    Ok(Pending {
        child,
        pair: ours,
        exe: exe.to_path_buf(),
    })
}

impl Pending {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` for the successor to report ready: its pid, and the pair to
    /// answer `main` on (`Successor::confirm_main`). On failure it has been stopped and
    /// reaped, and the reason is returned.
    pub fn wait(mut self, timeout: Duration) -> Result<Successor, String> {
        let pid = self.child.id();
        match wait_ready(&mut self.pair, timeout) {
            Ok(()) => Ok(Successor {
                pid,
                pair: self.pair,
            }),
            Err(reason) => {
                let end = stop(&mut self.child);
                Err(format!(
                    "{} (pid {pid}) {reason}; {end}",
                    self.exe.display()
                ))
            }
        }
    }
}

/// A successor that serves.
pub struct Successor {
    pub pid: u32,
    pair: UnixStream,
}

impl Successor {
    /// Tells the successor that systemd now knows it as the main process.
    pub fn confirm_main(mut self) {
        if let Err(e) = self.pair.write_all(MAIN) {
            log::warn!(
                "handover: cannot tell pid {} it is the main process: {e}",
                self.pid
            );
        }
    }
}

/// Stops a successor being waited for (a termination signal came meanwhile): SIGTERM to its
/// process group; `Pending::wait` then sees it end, escalates and reaps it.
pub fn abort(pid: u32) {
    // SAFETY: killpg(3) on the process group of our own child, not yet reaped by `wait`.
    unsafe { libc::killpg(pid as libc::pid_t, libc::SIGTERM) };
}

fn wait_ready(pair: &mut UnixStream, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 16];
    while got.len() < READY.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("was not ready within {timeout:?}"));
        }
        pair.set_read_timeout(Some(left))
            .map_err(|e| format!("cannot wait for it: {e}"))?;
        match pair.read(&mut buf) {
            Ok(0) => return Err("ended before it was ready".into()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!("was not ready within {timeout:?}"))
            }
            Err(e) => return Err(format!("cannot wait for it: {e}")),
        }
    }
    if got.starts_with(READY) {
        Ok(())
    } else {
        Err(format!(
            "answered {:?} instead of ready",
            String::from_utf8_lossy(&got)
        ))
    }
}

/// SIGTERM to its process group, then SIGKILL after STOP_GRACE; reaps it. Says how it ended.
fn stop(child: &mut Child) -> String {
    let group = child.id() as libc::pid_t;
    // SAFETY: killpg(3) on the process group of our own child, not yet reaped, so the group
    // (whose id is the child's pid) is still its own; whatever it started is stopped too.
    unsafe { libc::killpg(group, libc::SIGTERM) };
    let deadline = Instant::now() + STOP_GRACE;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // Whatever is left of the group (the leader may be reaped already; its group id is not
    // reused while members remain).
    // SAFETY: killpg(3) with no memory passed.
    unsafe { libc::killpg(group, libc::SIGKILL) };
    match status {
        Some(status) => format!("it ended: {status}"),
        None => match child.wait() {
            Ok(status) => format!("killed it: {status}"),
            Err(e) => format!("cannot reap it: {e}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The words the kit reads (tribist-host upgrade, on-reload): they may gain states, never
    /// change these.
    #[test]
    fn status_starts_with_fixed_tokens_then_the_words() {
        assert_eq!(
            Status::Ready.line("serving on 127.0.0.1:8383"),
            "STATUS=handover=ready attempt=0; serving on 127.0.0.1:8383"
        );
        assert_eq!(
            Status::Started(2).line("handing over"),
            "STATUS=handover=started attempt=2; handing over"
        );
        assert_eq!(
            Status::Failed(3).line("handover attempt 3 failed: it\nended"),
            "STATUS=handover=failed attempt=3; handover attempt 3 failed: it ended"
        );
        assert_eq!(Status::Off.line("x"), "STATUS=handover=off; x");
        assert_eq!(
            Status::Stopping.line("draining"),
            "STATUS=handover=stopping; draining"
        );
        // What kits that predate the tokens look for is still there, in the words.
        assert_eq!(VERSION_LINE, "handover: SIGUSR2");
    }

    #[test]
    fn only_root_or_the_owner_outside_systemd_may_ask_and_only_with_kill() {
        let kill = libc::SI_USER;
        assert!(allowed(kill, 0, 1000, true));
        assert!(allowed(kill, 0, 0, false));
        assert!(allowed(kill, 1000, 1000, false));
        assert!(
            !allowed(kill, 1000, 1000, true),
            "tribist's own processes under systemd"
        );
        assert!(!allowed(kill, 1001, 1000, false));
        // rt_sigqueueinfo(2) lets the sender write si_uid itself: never trusted.
        assert!(!allowed(libc::SI_QUEUE, 0, 1000, true));
        assert!(!allowed(libc::SI_QUEUE, 0, 0, false));
        assert!(!allowed(libc::SI_TKILL, 0, 1000, true));
    }
}
