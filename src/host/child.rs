//! Running another program the way root must run anything of tribist's: as tribist with
//! nothing of root's, bounded in time and output, and its output made safe to print.
//!
//! Why: deploy.sh did this with `timeout setsid -w setpriv … 8<&- 9<&-` and `tr` on each pipe,
//! a convention repeated at every call. Here it is one type. The child gets a new session
//! (no controlling terminal, and its own process group), stdin from `/dev/null` or a given
//! file (never a terminal), a cleared environment but for what is given, the working
//! directory `/`, default signal handling, and no descriptor but 0, 1 and 2. With
//! [`RunAs`], when root: every capability leaves the bounding set, the ambient set is
//! cleared, then groups, gid and uid change (for good: real, effective and saved), the
//! inheritable set is emptied, no-new-privileges is set, and the child checks that its
//! capability sets are empty and its ids are the ones asked before it runs anything.
//! Its output is read from pipes as it comes, at most `max_output` bytes of each kept (the
//! rest read and thrown away, so the child never blocks on a full pipe) and passed through
//! [`text::printable`]. At the deadline its whole process group is killed (SIGKILL); the
//! group is killed too once it has ended, so nothing it started outlives the run, and a
//! descendant that holds the pipes open delays the result by at most [`LINGER`].
//!
//! Only libc functions glibc 2.17 has are called; newer system calls go through `syscall`.

use std::ffi::{CString, OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::host::text::{clean, printable};

/// How long the output is still read once the child has ended: descendants that keep its
/// pipes open (`sleep 100 &`) are killed with its process group after that.
pub const LINGER: Duration = Duration::from_millis(250);

/// How often the child is looked at while its pipes are quiet.
const TICK: Duration = Duration::from_millis(20);

/// The user a child runs as. `groups` are its supplementary groups, exactly (usually its
/// own gid alone).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl RunAs {
    /// User `name` with its primary group as its only group, if the user exists.
    pub fn user(name: &str) -> Option<RunAs> {
        let (uid, gid) = user_ids(name)?;
        Some(RunAs {
            uid,
            gid,
            groups: vec![gid],
        })
    }
}

/// Every group of user `name` (the password database's and `/etc/group`'s, as
/// `initgroups` would give it), `gid` first; just `[gid]` if they cannot be read.
pub fn user_groups(name: &str, gid: u32) -> Vec<u32> {
    let Ok(c) = CString::new(name) else {
        return vec![gid];
    };
    let mut n: libc::c_int = 32;
    loop {
        let mut groups = vec![0 as libc::gid_t; n as usize];
        let mut count = n;
        // SAFETY: groups is writable for `count` entries; c is NUL-terminated.
        let r = unsafe { libc::getgrouplist(c.as_ptr(), gid, groups.as_mut_ptr(), &mut count) };
        if r >= 0 {
            groups.truncate(count.max(0) as usize);
            let mut all = vec![gid];
            all.extend(groups.into_iter().filter(|&g| g != gid));
            return all;
        }
        if count <= n || n >= 65536 {
            return vec![gid];
        }
        n = count;
    }
}

/// The uid and primary gid of user `name` (`getpwnam_r`), if it exists.
pub fn user_ids(name: &str) -> Option<(u32, u32)> {
    let c = CString::new(name).ok()?;
    let mut size = 16 * 1024;
    loop {
        let mut buf = vec![0 as libc::c_char; size];
        // SAFETY: pwd and result are valid out-parameters; buf is writable for its length.
        let (r, found, ids) = unsafe {
            let mut pwd: libc::passwd = std::mem::zeroed();
            let mut result: *mut libc::passwd = std::ptr::null_mut();
            let r = libc::getpwnam_r(
                c.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            );
            (r, !result.is_null(), (pwd.pw_uid, pwd.pw_gid))
        };
        if r == libc::ERANGE && size < (1 << 20) {
            size *= 2;
            continue;
        }
        return (r == 0 && found).then_some(ids);
    }
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitKind {
    Exited(i32),
    Signalled(i32),
    /// Still running at the deadline: its process group was killed.
    TimedOut,
}

impl fmt::Display for ExitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitKind::Exited(c) => write!(f, "exit {c}"),
            ExitKind::Signalled(s) => write!(f, "killed by signal {s}"),
            ExitKind::TimedOut => write!(f, "timed out (killed)"),
        }
    }
}

/// What a run gave: its end, and its output (printable ASCII and newlines only, at most
/// `max_output` bytes each); `truncated` when either said more.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub status: ExitKind,
    pub stdout: String,
    pub stderr: String,
    pub truncated: bool,
}

#[derive(Debug)]
pub enum ChildError {
    /// The program is not an absolute path (the environment is cleared: no PATH lookup).
    NotAbsolute { program: String },
    /// The stdin given is a terminal.
    Terminal { program: String },
    /// Not root, and asked to run as another user.
    NotRoot {
        program: String,
        uid: u32,
        euid: u32,
    },
    /// Asked to "drop" to uid 0.
    ToRoot { program: String },
    /// fork, the privilege drop or exec failed.
    Spawn { program: String, err: io::Error },
}

impl fmt::Display for ChildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChildError::NotAbsolute { program } => {
                write!(f, "refusing to run {program}: not an absolute path")
            }
            ChildError::Terminal { program } => {
                write!(f, "refusing to hand a terminal to {program} as its standard input")
            }
            ChildError::NotRoot { program, uid, euid } => write!(
                f,
                "cannot run {program} as uid {uid}: running as uid {euid}, and only root changes user; run it as root (or sudo)"
            ),
            ChildError::ToRoot { program } => {
                write!(f, "refusing to run {program} \"as\" uid 0: that drops nothing")
            }
            ChildError::Spawn { program, err } => write!(f, "cannot start {program}: {err}"),
        }
    }
}

impl std::error::Error for ChildError {}

/// A program to run: see the module's comment for what the child gets.
#[derive(Debug)]
pub struct Spawn {
    program: OsString,
    args: Vec<OsString>,
    stdin: Option<File>,
    env: Vec<(OsString, OsString)>,
    run_as: Option<RunAs>,
    dir: PathBuf,
    stop: Option<fn() -> bool>,
}

impl Spawn {
    /// `program` must be an absolute path.
    pub fn new(program: impl AsRef<OsStr>) -> Spawn {
        Spawn {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            stdin: None,
            env: Vec::new(),
            run_as: None,
            dir: PathBuf::from("/"),
            stop: None,
        }
    }
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Spawn {
        self.args.push(arg.as_ref().to_owned());
        self
    }
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Spawn {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }
    /// Standard input from `file` (not a terminal) instead of `/dev/null`.
    pub fn stdin(mut self, file: File) -> Spawn {
        self.stdin = Some(file);
        self
    }
    /// One variable of the otherwise empty environment.
    pub fn env(mut self, name: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Spawn {
        self.env
            .push((name.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }
    pub fn run_as(mut self, who: RunAs) -> Spawn {
        self.run_as = Some(who);
        self
    }
    /// The working directory (default `/`).
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Spawn {
        self.dir = dir.into();
        self
    }

    /// Ends the run early, as at its deadline (its process group killed, [`ExitKind::TimedOut`]),
    /// as soon as `stop` returns true: a deployment's Ctrl-C does not wait for the child.
    pub fn stop_when(mut self, stop: fn() -> bool) -> Spawn {
        self.stop = Some(stop);
        self
    }

    fn shown(&self) -> String {
        clean(self.program.as_bytes(), 200)
    }

    /// Runs it to its end or to `deadline`, whichever comes first, keeping at most
    /// `max_output` bytes of each of stdout and stderr.
    pub fn run(self, deadline: Duration, max_output: usize) -> Result<Outcome, ChildError> {
        let end = Instant::now() + deadline;
        let program = self.shown();
        if !self.program.as_bytes().starts_with(b"/") {
            return Err(ChildError::NotAbsolute { program });
        }
        let stdin = match self.stdin {
            // SAFETY: isatty on a live descriptor.
            Some(f) if unsafe { libc::isatty(f.as_raw_fd()) } == 1 => {
                return Err(ChildError::Terminal { program })
            }
            Some(f) => Stdio::from(f),
            None => Stdio::null(),
        };
        // SAFETY: these have no preconditions.
        let (euid, parent) = unsafe { (libc::geteuid(), libc::getpid()) };
        let no_new_privs = self.run_as.is_some();
        let drop = match self.run_as {
            None => None,
            Some(r) if r.uid == 0 => return Err(ChildError::ToRoot { program }),
            Some(r) if euid == 0 => Some(Demotion {
                uid: r.uid,
                gid: r.gid,
                groups: r.groups,
                cap_last: cap_last_cap(),
            }),
            Some(r) if r.uid == euid => None,
            Some(r) => {
                return Err(ChildError::NotRoot {
                    program,
                    uid: r.uid,
                    euid,
                })
            }
        };
        let plan = Plan {
            no_new_privs,
            drop,
            fd_bound: fd_bound(),
            parent,
        };
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.dir)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: child_setup only makes async-signal-safe system calls and allocates nothing.
        unsafe {
            cmd.pre_exec(move || child_setup(&plan));
        }
        let mut child = cmd
            .spawn()
            .map_err(|err| ChildError::Spawn { program, err })?;
        Ok(supervise(&mut child, end, max_output, self.stop))
    }
}

/// What the child does between fork and exec, prepared before the fork.
struct Plan {
    drop: Option<Demotion>,
    no_new_privs: bool,
    fd_bound: libc::c_int,
    parent: libc::pid_t,
}

struct Demotion {
    uid: u32,
    gid: u32,
    groups: Vec<libc::gid_t>,
    cap_last: libc::c_int,
}

/// The highest capability number this kernel knows (read before the fork; 63 when it
/// cannot be read: the child then stops at the first the kernel refuses as unknown).
fn cap_last_cap() -> libc::c_int {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|n| (0..=63).contains(n))
        .unwrap_or(63)
}

/// The descriptor numbers to mark close-on-exec where close_range(2) is missing.
fn fd_bound() -> libc::c_int {
    // SAFETY: rl is a valid out-parameter.
    let cur = unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 {
            rl.rlim_cur
        } else {
            65_536
        }
    };
    cur.min(1 << 20) as libc::c_int
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;
const PR_CAP_AMBIENT: libc::c_int = 47;
const PR_CAP_AMBIENT_CLEAR_ALL: libc::c_ulong = 4;

fn errno() -> libc::c_int {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn check(r: libc::c_long) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// In the child, after fork, before exec. Async-signal-safe calls only; no allocation.
fn child_setup(plan: &Plan) -> io::Result<()> {
    // SAFETY: plain system calls on the child's own state; the pointers are to locals or
    // to `plan`, which lives through the call.
    unsafe {
        check(libc::setsid().into())?;
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        check(libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()).into())?;
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        close_from_3(plan.fd_bound)?;
        if let Some(d) = &plan.drop {
            for cap in 0..=d.cap_last {
                if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) < 0 {
                    // EINVAL: no such capability on this kernel (cap_last_cap unreadable).
                    if errno() == libc::EINVAL && cap > 0 {
                        break;
                    }
                    return Err(io::Error::last_os_error());
                }
            }
            // EINVAL: a kernel before ambient capabilities (4.3) has none to clear.
            if libc::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0
                && errno() != libc::EINVAL
            {
                return Err(io::Error::last_os_error());
            }
            check(libc::setgroups(d.groups.len(), d.groups.as_ptr()).into())?;
            check(libc::setresgid(d.gid, d.gid, d.gid).into())?;
            // From root, without SECBIT_KEEP_CAPS: the permitted and effective sets empty.
            check(libc::setresuid(d.uid, d.uid, d.uid).into())?;
            // The inheritable set survives setresuid: emptied too (lowering needs no
            // capability), then all three are checked.
            let mut header = CapHeader {
                version: CAP_VERSION_3,
                pid: 0,
            };
            let zero = [CapData::default(); 2];
            check(libc::syscall(libc::SYS_capset, &mut header, zero.as_ptr()))?;
            let mut now = [CapData {
                effective: 1,
                permitted: 1,
                inheritable: 1,
            }; 2];
            header.version = CAP_VERSION_3;
            check(libc::syscall(
                libc::SYS_capget,
                &mut header,
                now.as_mut_ptr(),
            ))?;
            if now
                .iter()
                .any(|c| c.effective | c.permitted | c.inheritable != 0)
            {
                return Err(io::Error::from_raw_os_error(libc::EPERM));
            }
            let (mut r, mut e, mut s) = (0, 0, 0);
            check(libc::getresuid(&mut r, &mut e, &mut s).into())?;
            if (r, e, s) != (d.uid, d.uid, d.uid) {
                return Err(io::Error::from_raw_os_error(libc::EPERM));
            }
            check(libc::getresgid(&mut r, &mut e, &mut s).into())?;
            if (r, e, s) != (d.gid, d.gid, d.gid) {
                return Err(io::Error::from_raw_os_error(libc::EPERM));
            }
        }
        if plan.no_new_privs {
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0).into())?;
        }
        // If the process that runs it dies, so does the child (set after the uid change,
        // which clears it); and if it died already, the child does not start.
        check(
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            )
            .into(),
        )?;
        if libc::getppid() != plan.parent {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
    }
    Ok(())
}

/// Every descriptor from 3 up is closed at exec: close_range(3, ~0, CLOSE_RANGE_CLOEXEC)
/// (Linux 5.11), else each one marked FD_CLOEXEC up to `bound`. Marked rather than closed
/// here, so the standard library's own close-on-exec pipe still reports a failed exec
/// (or a failed step above) to the parent as an error instead of an exit status.
fn close_from_3(bound: libc::c_int) -> io::Result<()> {
    // SAFETY: close_range and fcntl on the child's own descriptor table.
    unsafe {
        let r = libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
        if r == 0 {
            return Ok(());
        }
        let e = errno();
        if e != libc::ENOSYS && e != libc::EINVAL {
            return Err(io::Error::from_raw_os_error(e));
        }
        for fd in 3..bound {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
                check(libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC).into())?;
            }
        }
    }
    Ok(())
}

/// One of the child's output pipes, read without blocking: the first `max` bytes kept.
struct Capture {
    pipe: Option<OwnedFd>,
    kept: Vec<u8>,
    max: usize,
    dropped: bool,
}

impl Capture {
    fn new(pipe: Option<impl Into<OwnedFd>>, max: usize) -> Capture {
        let pipe = pipe.map(Into::into);
        if let Some(fd) = &pipe {
            // SAFETY: fcntl on a live descriptor.
            unsafe {
                let fl = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
                libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
            }
        }
        Capture {
            pipe,
            kept: Vec::new(),
            max,
            dropped: false,
        }
    }

    fn fd(&self) -> Option<RawFd> {
        self.pipe.as_ref().map(|p| p.as_raw_fd())
    }

    /// One read; false once nothing more is to be had now (EAGAIN) or ever (EOF, error).
    fn read_once(&mut self, buf: &mut [u8]) -> bool {
        let Some(fd) = self.fd() else { return false };
        // SAFETY: buf is writable for its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            let n = n as usize;
            let room = self.max.saturating_sub(self.kept.len());
            self.kept.extend_from_slice(&buf[..n.min(room)]);
            self.dropped |= n > room;
            return true;
        }
        if n < 0 {
            match errno() {
                libc::EINTR => return true,
                libc::EAGAIN => return false,
                _ => {}
            }
        }
        self.pipe = None;
        false
    }
}

/// Whether process `pid` (our child) has ended, without reaping it: while it is a zombie
/// its pid, and so its process group's id, cannot be reused.
fn has_ended(pid: libc::pid_t) -> bool {
    // SAFETY: info is a valid out-parameter.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let r = libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        );
        r == 0 && info.si_pid() != 0
    }
}

fn poll_and_read(caps: &mut [&mut Capture; 2], wait: Duration, buf: &mut [u8]) {
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(2);
    let mut which = Vec::with_capacity(2);
    for (i, c) in caps.iter().enumerate() {
        if let Some(fd) = c.fd() {
            fds.push(libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
            which.push(i);
        }
    }
    let ms = wait.as_millis().clamp(1, 1000) as libc::c_int;
    if fds.is_empty() {
        std::thread::sleep(Duration::from_millis(ms as u64));
        return;
    }
    // SAFETY: fds is a valid array of fds.len() entries.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if n <= 0 {
        return;
    }
    for (p, &i) in fds.iter().zip(&which) {
        if p.revents != 0 {
            caps[i].read_once(buf);
        }
    }
}

/// Reads the child's output until it has ended and its pipes are closed (or [`LINGER`]
/// after its end), or until `end`; then kills its process group and reaps it.
fn supervise(child: &mut Child, end: Instant, max: usize, stop: Option<fn() -> bool>) -> Outcome {
    let pid = child.id() as libc::pid_t;
    let mut out = Capture::new(child.stdout.take(), max);
    let mut err = Capture::new(child.stderr.take(), max);
    let mut buf = vec![0u8; 64 * 1024];
    let mut ended: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if ended.is_none() && has_ended(pid) {
            ended = Some(now);
        }
        if ended.is_some() && out.pipe.is_none() && err.pipe.is_none() {
            break;
        }
        let limit = ended.map_or(end, |t| end.min(t + LINGER));
        if now >= limit || (ended.is_none() && stop.is_some_and(|stop| stop())) {
            break;
        }
        poll_and_read(&mut [&mut out, &mut err], (limit - now).min(TICK), &mut buf);
    }
    let timed_out = ended.is_none();
    // The child leads its process group (setsid); it is not reaped yet, so the id is its.
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    let status = reap(child);
    // What is still in the pipes; bounded in time, for a writer outside the group.
    let drain_end = Instant::now() + Duration::from_millis(50);
    for c in [&mut out, &mut err] {
        while Instant::now() < drain_end && c.read_once(&mut buf) {}
    }
    let status = match status {
        _ if timed_out => ExitKind::TimedOut,
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => ExitKind::Exited(code),
            (None, Some(sig)) => ExitKind::Signalled(sig),
            (None, None) => ExitKind::Exited(-1),
        },
        None => ExitKind::TimedOut,
    };
    Outcome {
        status,
        stdout: printable(&out.kept, max),
        stderr: printable(&err.kept, max),
        truncated: out.dropped || err.dropped,
    }
}

/// Waits (up to 5 s: SIGKILL was sent) for the child's status.
fn reap(child: &mut Child) -> Option<std::process::ExitStatus> {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(5)),
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::testutil::{is_root, root_or_skip, TempDir};

    const SH: &str = "/bin/sh";
    const SEC: Duration = Duration::from_secs(1);

    fn sh(script: &str) -> Spawn {
        Spawn::new(SH).arg("-c").arg(script)
    }

    /// Whether `pid` is gone (or a zombie nobody reaped yet).
    fn gone(pid: &str) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(s) => s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')),
        }
    }

    #[test]
    fn exit_code_output_and_a_cleared_environment() {
        let o = Spawn::new("/usr/bin/env")
            .env("ONLY", "this")
            .run(10 * SEC, 1000)
            .unwrap();
        assert_eq!(o.status, ExitKind::Exited(0));
        assert_eq!(o.stdout, "ONLY=this\n");
        let o = sh("echo out; echo err >&2; pwd; exit 3")
            .run(10 * SEC, 1000)
            .unwrap();
        assert_eq!(
            o,
            Outcome {
                status: ExitKind::Exited(3),
                stdout: "out\n/\n".into(),
                stderr: "err\n".into(),
                truncated: false
            }
        );
        let o = sh("kill -9 $$").run(10 * SEC, 1000).unwrap();
        assert_eq!(o.status, ExitKind::Signalled(9));
    }

    #[test]
    fn output_is_filtered_and_bounded_without_blocking_the_child() {
        let o = sh(r"printf 'ok\033]0;title\007\r\033[2Kforged\n'")
            .run(10 * SEC, 1000)
            .unwrap();
        assert_eq!(o.stdout, "ok]0;title[2Kforged\n");
        // 300 kB, far more than a pipe holds: the child must still finish.
        let o = sh("head -c 300000 /dev/zero | tr '\\0' a; echo done >&2")
            .run(20 * SEC, 1000)
            .unwrap();
        assert_eq!(o.status, ExitKind::Exited(0));
        assert_eq!(o.stdout, "a".repeat(1000));
        assert_eq!(o.stderr, "done\n");
        assert!(o.truncated);
    }

    #[test]
    fn stdin_from_a_file_never_a_terminal() {
        let t = TempDir::new("child-stdin");
        std::fs::write(t.join("in"), b"line one\n").unwrap();
        let o = Spawn::new("/bin/cat")
            .stdin(File::open(t.join("in")).unwrap())
            .run(10 * SEC, 1000)
            .unwrap();
        assert_eq!(o.stdout, "line one\n");
        // Without one: /dev/null.
        let o = Spawn::new("/bin/cat").run(10 * SEC, 1000).unwrap();
        assert_eq!((o.status, o.stdout.as_str()), (ExitKind::Exited(0), ""));

        // SAFETY: plain libc calls on a new pseudo-terminal.
        let (master, slave) = unsafe {
            let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
            assert!(master >= 0);
            assert_eq!(libc::grantpt(master), 0);
            assert_eq!(libc::unlockpt(master), 0);
            let mut name = [0 as libc::c_char; 128];
            assert_eq!(libc::ptsname_r(master, name.as_mut_ptr(), name.len()), 0);
            let path = std::ffi::CStr::from_ptr(name.as_ptr()).to_str().unwrap();
            let f = std::fs::OpenOptions::new().read(true).open(path).unwrap();
            (master, f)
        };
        let e = Spawn::new("/bin/cat")
            .stdin(slave)
            .run(SEC, 100)
            .unwrap_err();
        // SAFETY: master is ours.
        unsafe { libc::close(master) };
        assert!(matches!(e, ChildError::Terminal { .. }), "{e}");
    }

    #[test]
    fn refusals_before_anything_runs() {
        let e = Spawn::new("sh").run(SEC, 10).unwrap_err();
        assert!(matches!(e, ChildError::NotAbsolute { .. }), "{e}");
        // A failed exec is an error, not an exit status: the standard library's pipe that
        // reports it survives the descriptors being closed.
        let e = Spawn::new("/nonexistent/program").run(SEC, 10).unwrap_err();
        match e {
            ChildError::Spawn { err, .. } => assert_eq!(err.kind(), io::ErrorKind::NotFound),
            other => panic!("{other}"),
        }
        let e = sh("true")
            .run_as(RunAs {
                uid: 0,
                gid: 0,
                groups: vec![],
            })
            .run(SEC, 10)
            .unwrap_err();
        assert!(matches!(e, ChildError::ToRoot { .. }), "{e}");
        if !is_root() {
            let e = sh("true")
                .run_as(RunAs {
                    uid: 1,
                    gid: 1,
                    groups: vec![1],
                })
                .run(SEC, 10)
                .unwrap_err();
            assert!(matches!(e, ChildError::NotRoot { uid: 1, .. }), "{e}");
        }
    }

    #[test]
    fn a_new_session_and_no_descriptor_of_ours() {
        // A descriptor the parent holds without close-on-exec.
        let f = File::open("/dev/null").unwrap();
        let fd = f.as_raw_fd();
        // SAFETY: fcntl on a live descriptor.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        let o = sh(&format!(
            "ls /proc/$$/fd; test -e /proc/$$/fd/{fd} && echo inherited; cat /proc/$$/stat"
        ))
        .run(10 * SEC, 10_000)
        .unwrap();
        drop(f);
        let mut lines = o.stdout.lines();
        let fds: Vec<&str> = lines.by_ref().take(3).collect();
        assert_eq!(fds, ["0", "1", "2"], "{}", o.stdout);
        let stat = lines.next().unwrap();
        assert!(!o.stdout.contains("inherited"));
        // pid (comm) state ppid pgrp session tty_nr
        let pid = stat.split(' ').next().unwrap();
        let rest: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
        assert_eq!((rest[2], rest[3], rest[4]), (pid, pid, "0"), "{stat}");
    }

    #[test]
    fn the_deadline_kills_a_child_that_ignores_sigterm_and_its_group() {
        let start = Instant::now();
        let o = sh("trap '' TERM; sleep 100 & echo $!; wait; wait")
            .run(SEC, 1000)
            .unwrap();
        let took = start.elapsed();
        assert_eq!(o.status, ExitKind::TimedOut);
        assert!(took < Duration::from_secs(4), "{took:?}");
        let sleeper = o.stdout.trim();
        assert!(!sleeper.is_empty());
        std::thread::sleep(Duration::from_millis(100));
        assert!(gone(sleeper), "sleep {sleeper} survived");
    }

    #[test]
    fn a_grandchild_holding_the_pipe_does_not_hold_the_run() {
        let start = Instant::now();
        let o = sh("sleep 100 & echo $!").run(30 * SEC, 1000).unwrap();
        let took = start.elapsed();
        assert_eq!(o.status, ExitKind::Exited(0));
        assert!(took < Duration::from_secs(3), "{took:?}");
        std::thread::sleep(Duration::from_millis(100));
        assert!(gone(o.stdout.trim()), "its process group was not killed");

        // One that left the process group (a session of its own) cannot be killed with it,
        // but it does not hold the run either.
        let start = Instant::now();
        let o = sh("setsid sleep 100 & echo $!; sleep 0.2")
            .run(30 * SEC, 1000)
            .unwrap();
        assert!(start.elapsed() < Duration::from_secs(3));
        assert_eq!(o.status, ExitKind::Exited(0));
        let escaped: libc::pid_t = o.stdout.trim().parse().unwrap();
        assert!(!gone(&escaped.to_string()));
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(escaped, libc::SIGKILL) };
    }

    #[test]
    fn stop_when_ends_the_run_early_and_kills_the_group() {
        static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        fn stop() -> bool {
            STOP.load(std::sync::atomic::Ordering::SeqCst)
        }
        // Not asked to stop: it runs to its end.
        let o = sh("echo done").stop_when(stop).run(30 * SEC, 100).unwrap();
        assert_eq!(o.status, ExitKind::Exited(0));
        let t = std::thread::spawn(|| {
            std::thread::sleep(Duration::from_millis(300));
            STOP.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let start = Instant::now();
        let o = sh("sleep 100 & echo $!; wait")
            .stop_when(stop)
            .run(30 * SEC, 100)
            .unwrap();
        t.join().unwrap();
        assert_eq!(o.status, ExitKind::TimedOut);
        assert!(start.elapsed() < Duration::from_secs(3));
        std::thread::sleep(Duration::from_millis(100));
        assert!(gone(o.stdout.trim()), "its process group was not killed");
    }

    #[test]
    fn a_child_that_closes_its_output_still_times_out() {
        let start = Instant::now();
        let o = sh("exec >&- 2>&-; sleep 100").run(SEC, 100).unwrap();
        assert_eq!(o.status, ExitKind::TimedOut);
        assert!(start.elapsed() < Duration::from_secs(4));
    }

    #[test]
    fn user_ids_from_the_password_database() {
        assert_eq!(user_ids("root"), Some((0, 0)));
        assert_eq!(user_groups("root", 0)[0], 0);
        assert_eq!(user_groups("no-such-user-tribist-test", 7), [7]);
        assert_eq!(user_ids("no-such-user-tribist-test"), None);
        assert_eq!(user_ids("bad\0name"), None);
    }

    /// `/proc/self/status` of `cat` run as `who`.
    fn status_as(who: RunAs) -> String {
        let o = Spawn::new("/bin/cat")
            .arg("/proc/self/status")
            .run_as(who)
            .run(10 * SEC, 100_000)
            .unwrap();
        assert_eq!(o.status, ExitKind::Exited(0), "{}", o.stderr);
        o.stdout
    }

    /// The value of `name` in a status file; its tabs are gone (printable ASCII only).
    fn field<'a>(status: &'a str, name: &str) -> &'a str {
        let line = status
            .lines()
            .find(|l| l.starts_with(&format!("{name}:")))
            .unwrap_or_else(|| panic!("no {name} in {status}"));
        line[name.len() + 1..].trim()
    }

    fn check_dropped(status: &str, uid: u32, gid: u32) {
        assert_eq!(field(status, "Uid"), uid.to_string().repeat(4));
        assert_eq!(field(status, "Gid"), gid.to_string().repeat(4));
        assert_eq!(field(status, "Groups"), gid.to_string());
        for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(field(status, caps), "0000000000000000", "{caps}");
        }
        assert_eq!(field(status, "NoNewPrivs"), "1");
    }

    #[test]
    fn as_nobody_nothing_of_roots_is_left() {
        root_or_skip!("changing user");
        let nobody = RunAs::user("nobody").expect("user nobody");
        check_dropped(&status_as(nobody.clone()), nobody.uid, nobody.gid);
        // Our own capabilities are intact.
        let me = std::fs::read_to_string("/proc/self/status").unwrap();
        let me = me.replace('\t', "");
        assert_ne!(field(&me, "CapEff"), "0000000000000000");
    }

    /// With SECBIT_KEEP_CAPS set (PR_SET_KEEPCAPS) in the thread that forks, setresuid keeps
    /// the permitted set: the child empties it itself, and checks.
    #[test]
    fn keep_caps_in_the_parent_does_not_leak_capabilities() {
        root_or_skip!("changing user");
        let nobody = RunAs::user("nobody").expect("user nobody");
        let (uid, gid) = (nobody.uid, nobody.gid);
        let status = std::thread::spawn(move || {
            // SAFETY: prctl on this thread's own credentials (securebits are per thread).
            assert_eq!(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) }, 0);
            status_as(nobody)
        })
        .join()
        .unwrap();
        check_dropped(&status, uid, gid);
    }

    #[test]
    fn as_nobody_with_the_descriptors_and_the_deadline() {
        root_or_skip!("changing user");
        let nobody = RunAs::user("nobody").expect("user nobody");
        let f = File::open("/dev/null").unwrap();
        // SAFETY: fcntl on a live descriptor.
        unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFD, 0) };
        let o = sh("ls /proc/$$/fd; id -u; trap '' TERM; sleep 100")
            .run_as(nobody.clone())
            .run(SEC, 1000)
            .unwrap();
        drop(f);
        assert_eq!(o.status, ExitKind::TimedOut);
        assert_eq!(o.stdout, format!("0\n1\n2\n{}\n", nobody.uid));
    }
}
