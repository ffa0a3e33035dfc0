//! Running a binary of api/ (its `--describe`, its `--version`, the preflight's server): the
//! output it gives is bounded, and so is the time it takes.
//!
//! The child runs in a process group of its own, which is killed at the deadline (and when the
//! child exits, so that nothing it started keeps the pipe open); it also dies with this
//! process (`PR_SET_PDEATHSIG`), so an interrupted caller leaves nothing running. Only the
//! last `max` bytes of its output are kept. A private helper: `src/host/child.rs` will take
//! its place, so its interface stays small.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// What to run.
pub struct Spec<'a> {
    pub program: &'a Path,
    pub args: &'a [&'a OsStr],
    /// `None`: this process's environment; `Some`: exactly these variables.
    pub env: Option<&'a [(&'a str, &'a OsStr)]>,
    /// Its working directory.
    pub dir: &'a Path,
    /// Its standard input (`None`: /dev/null).
    pub stdin: Option<File>,
    /// Whether its standard error is read with its output (else it goes to /dev/null).
    pub stderr: bool,
}

/// How it ended, and what it said.
pub struct Ran {
    /// `None` when it was killed at the deadline.
    pub status: Option<ExitStatus>,
    /// The last `max` bytes of its output.
    pub output: Vec<u8>,
    /// How many bytes it wrote in all.
    pub total: usize,
}

impl Ran {
    /// Exit status 0 with at most `max` bytes of output.
    pub fn ok_within(&self, max: usize) -> bool {
        self.status.is_some_and(|s| s.success()) && self.total <= max
    }
}

/// Runs `spec` to its end, or kills it at `deadline`.
pub fn run(spec: Spec, deadline: Duration, max: usize) -> io::Result<Ran> {
    let end = Instant::now() + deadline;
    let mut child = Running::spawn(spec, max)?;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if let Some(status) = child.pump(left)? {
            return Ok(child.finish(Some(status)));
        }
        if left.is_zero() {
            child.kill(libc::SIGKILL);
            child.reap();
            return Ok(child.finish(None));
        }
    }
}

/// A child that runs while its caller does other things (the preflight's server).
pub struct Running {
    child: Child,
    pipe: Option<File>,
    output: Vec<u8>,
    total: usize,
    max: usize,
    status: Option<ExitStatus>,
}

impl Running {
    pub fn spawn(spec: Spec, max: usize) -> io::Result<Running> {
        let (read, write) = pipe()?;
        let mut cmd = Command::new(spec.program);
        cmd.args(spec.args).current_dir(spec.dir).process_group(0);
        if let Some(env) = spec.env {
            cmd.env_clear();
            cmd.envs(env.iter().map(|(k, v)| (k, v)));
        }
        cmd.stdin(spec.stdin.map_or_else(Stdio::null, Stdio::from));
        cmd.stdout(Stdio::from(write.try_clone()?));
        cmd.stderr(if spec.stderr {
            Stdio::from(write)
        } else {
            Stdio::null()
        });
        // SAFETY: prctl and getppid are async-signal-safe; nothing is allocated.
        let parent = unsafe { libc::getpid() };
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have gone before the line above.
                if libc::getppid() != parent {
                    return Err(io::Error::other("the parent process ended"));
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        // `cmd` holds the write end until dropped: drop it so that the end of the child's
        // output is seen.
        drop(cmd);
        Ok(Running {
            child,
            pipe: Some(read),
            output: Vec::new(),
            total: 0,
            max,
            status: None,
        })
    }

    /// Reads its output for up to `wait`, returning early once it has exited (then its
    /// group is killed, it is reaped and what is left in the pipe read): its exit status.
    pub fn pump(&mut self, wait: Duration) -> io::Result<Option<ExitStatus>> {
        if self.status.is_some() {
            return Ok(self.status);
        }
        let end = Instant::now() + wait;
        loop {
            if self.exited() {
                // Its group too: nothing it started may hold the pipe.
                self.kill(libc::SIGKILL);
                let status = self.reap();
                self.drain(Duration::from_millis(200));
                return Ok(status);
            }
            let left = end.saturating_duration_since(Instant::now());
            // Woken by output, or every 20 ms to see whether it exited.
            let step = left.min(Duration::from_millis(20));
            self.read_for(step)?;
            if left.is_zero() {
                return Ok(None);
            }
        }
    }

    /// Whether the child has exited (without reaping it, so its pid stays its own).
    fn exited(&self) -> bool {
        // SAFETY: a zeroed siginfo_t is a valid buffer; WNOWAIT leaves the child unreaped.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                self.child.id() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        rc == 0 && unsafe { info.si_pid() } != 0
    }

    /// Signals its process group (while the child is unreaped its pid cannot be reused).
    pub fn kill(&self, signal: libc::c_int) {
        if self.status.is_none() {
            // SAFETY: plain system call; the group is the child's own (process_group(0)).
            unsafe { libc::killpg(self.child.id() as libc::pid_t, signal) };
        }
    }

    fn reap(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.wait().ok();
            if self.status.is_none() {
                self.status = Some(ExitStatus::from_raw(-1));
            }
        }
        self.status
    }

    /// Reads what is in the pipe for up to `wait`, stopping at its end.
    fn drain(&mut self, wait: Duration) {
        let end = Instant::now() + wait;
        while self.pipe.is_some() {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() || self.read_for(left).is_err() {
                break;
            }
        }
        self.pipe = None;
    }

    /// Waits up to `wait` for output and keeps what comes.
    fn read_for(&mut self, wait: Duration) -> io::Result<()> {
        let Some(pipe) = &mut self.pipe else {
            std::thread::sleep(wait);
            return Ok(());
        };
        let mut fds = libc::pollfd {
            fd: pipe.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(wait.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut fds, 1, ms) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            return if err.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(err)
            };
        }
        if rc == 0 {
            return Ok(());
        }
        let mut buf = [0u8; 16 * 1024];
        match pipe.read(&mut buf) {
            Ok(0) => self.pipe = None,
            Ok(n) => self.keep(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        Ok(())
    }

    fn keep(&mut self, bytes: &[u8]) {
        self.total += bytes.len();
        self.output.extend_from_slice(bytes);
        if self.output.len() > self.max {
            let cut = self.output.len() - self.max;
            self.output.drain(..cut);
        }
    }

    /// The last bytes of its output so far.
    pub fn output(&self) -> &[u8] {
        &self.output
    }

    /// Stops it: SIGTERM to its group, SIGKILL after `grace`; its exit status.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.kill(libc::SIGTERM);
            if let Ok(Some(status)) = self.pump(grace) {
                return Some(status);
            }
            self.kill(libc::SIGKILL);
            self.reap();
        }
        self.status
    }

    fn finish(mut self, status: Option<ExitStatus>) -> Ran {
        Ran {
            status,
            output: std::mem::take(&mut self.output),
            total: self.total,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.status.is_none() {
            self.kill(libc::SIGKILL);
            self.reap();
        }
    }
}

/// A pipe, both ends close-on-exec, the read end non-blocking.
fn pipe() -> io::Result<(File, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills two descriptors that are ours alone.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let (read, write) = unsafe { (File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // The child's end blocks, as a program expects of its output.
    // SAFETY: plain fcntl on our own descriptor.
    unsafe {
        let flags = libc::fcntl(write.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(write.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK);
    }
    Ok((read, write))
}

/// An exit status as the shell gives it: the code, or 128 + the signal.
pub fn shell_status(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, stderr: bool, deadline: Duration, max: usize) -> Ran {
        let args = [OsStr::new("-c"), OsStr::new(script)];
        run(
            Spec {
                program: Path::new("/bin/sh"),
                args: &args,
                env: None,
                dir: Path::new("/"),
                stdin: None,
                stderr,
            },
            deadline,
            max,
        )
        .unwrap()
    }

    #[test]
    fn output_status_and_stderr_as_asked() {
        let ran = sh(
            "echo out; echo err >&2; exit 3",
            true,
            Duration::from_secs(10),
            100,
        );
        assert_eq!(ran.status.unwrap().code(), Some(3));
        assert_eq!(ran.output, b"out\nerr\n");
        let ran = sh(
            "echo out; echo err >&2",
            false,
            Duration::from_secs(10),
            100,
        );
        assert!(ran.ok_within(100));
        assert_eq!(ran.output, b"out\n");
    }

    #[test]
    fn the_deadline_kills_the_whole_group_and_output_is_bounded() {
        let start = Instant::now();
        // A child that keeps the pipe open and sleeps: the deadline ends both.
        let ran = sh(
            "yes | head -c 100000; sleep 30 & sleep 30",
            true,
            Duration::from_millis(300),
            1000,
        );
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        assert!(ran.status.is_none());
        assert_eq!(ran.output.len(), 1000);
        assert_eq!(ran.total, 100_000);
        assert!(!ran.ok_within(1000));
    }

    #[test]
    fn a_background_child_holding_the_pipe_does_not_hold_the_caller() {
        let start = Instant::now();
        let ran = sh("sleep 30 & echo done", true, Duration::from_secs(20), 100);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        assert!(ran.ok_within(100));
        assert_eq!(ran.output, b"done\n");
    }
}
