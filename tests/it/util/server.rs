//! The real `server` binary, running in a directory of its own.
//!
//! `Server` spawns it with `TRIBIST_LISTEN=127.0.0.1:0` and reads the bound address back from
//! its log. The process runs in a process group of its own, which `Process` kills and reaps on
//! drop, also when the test panics: a wrapper (`bash -c`, `runuser`) and whatever it started
//! end with it.

use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use super::http::{self, Response};
use super::pg::Pg;
use super::{wait_for, TempDir};

pub const BIN: &str = env!("CARGO_BIN_EXE_server");

/// A child process leading a process group of its own. On drop the group is killed and the
/// child reaped, unless a test already saw it exit. Should the thread that spawned it end
/// first (the test binary killed, by Ctrl-C or SIGKILL), the kernel kills the child
/// (`PR_SET_PDEATHSIG`).
pub struct Process {
    child: Child,
    exited: Option<ExitStatus>,
}

impl Process {
    /// Spawns `cmd` in a new process group.
    pub fn spawn(cmd: &mut Command) -> Process {
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: prctl and getppid are async-signal-safe and touch no memory of ours.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        let child = cmd
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()));
        Process {
            child,
            exited: None,
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the process has exited (it is reaped then).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("waitpid");
        }
        self.exited
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.exited.is_none() {
            // Not reaped yet, so the group's id cannot name another process group yet.
            // SAFETY: kill(2) takes no memory.
            unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL) };
            let _ = self.child.wait();
        }
    }
}

/// The server binary, running in its own directory.
pub struct Server {
    process: Process,
    pub dir: TempDir,
    pub addr: SocketAddr,
    log: PathBuf,
}

pub struct Builder {
    env: Vec<(String, String)>,
    dir: Option<TempDir>,
    wrapper: Option<String>,
    fd3: Option<std::os::fd::RawFd>,
}

impl Server {
    pub fn builder(database_url: &str) -> Builder {
        Builder {
            env: vec![
                ("DATABASE_URL".into(), database_url.into()),
                ("TRIBIST_LISTEN".into(), "127.0.0.1:0".into()),
            ],
            dir: None,
            wrapper: None,
            fd3: None,
        }
    }

    /// A server on the shared PostgreSQL cluster.
    pub fn start() -> Server {
        Server::builder(&Pg::shared().url).spawn()
    }

    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status();
        assert!(
            ok.map(|s| s.success()).unwrap_or(false),
            "kill -{sig} failed"
        );
    }

    /// The exit status, if the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.process.try_wait()
    }

    /// Waits for the process to exit, within `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        wait_for("the server to exit", limit, || self.exited())
    }

    /// Sends `raw` on a new connection; the first response.
    pub fn send(&self, raw: &[u8]) -> Response {
        http::send(self.addr, raw).unwrap_or_else(|e| {
            panic!(
                "{:?} to {} failed: {e}",
                String::from_utf8_lossy(raw),
                self.addr
            )
        })
    }

    /// `METHOD path` on a new connection.
    pub fn request(&self, method: &str, path: &str) -> Response {
        self.send(http::request(method, path).as_bytes())
    }

    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path)
    }
}

impl Builder {
    pub fn env(mut self, key: &str, value: &str) -> Builder {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn dir(mut self, dir: TempDir) -> Builder {
        self.dir = Some(dir);
        self
    }

    /// Runs the server through `bash -c SCRIPT` (the binary is `$0`), e.g. to set limits.
    pub fn wrapper(mut self, script: &str) -> Builder {
        self.wrapper = Some(script.into());
        self
    }

    /// Passes `listener` as fd 3 with LISTEN_PID/LISTEN_FDS, as systemd's socket activation.
    pub fn socket_activated(mut self, listener: &TcpListener) -> Builder {
        use std::os::fd::AsRawFd;
        self.fd3 = Some(listener.as_raw_fd());
        self.wrapper = Some("export LISTEN_PID=$$ LISTEN_FDS=1; exec \"$0\"".into());
        self
    }

    /// Starts the server without waiting for it: the process (killed when dropped), its
    /// directory and its log.
    pub fn spawn_raw(self) -> (Process, TempDir, PathBuf) {
        let dir = self.dir.unwrap_or_else(|| TempDir::new("srv"));
        let log = dir.path().join("server.log");
        let mut cmd = match &self.wrapper {
            Some(script) => {
                let mut c = Command::new("bash");
                c.args(["-c", script, BIN]);
                c
            }
            None => Command::new(BIN),
        };
        cmd.current_dir(dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap());
        if let Some(fd) = self.fd3 {
            // SAFETY: dup2 and fcntl are async-signal-safe; fd is open in the parent, so in the
            // child. fcntl clears close-on-exec also when fd already is 3 (dup2 is then a no-op).
            unsafe {
                cmd.pre_exec(move || {
                    if libc::dup2(fd, 3) < 0 || libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        (Process::spawn(&mut cmd), dir, log)
    }

    /// Starts the server and waits until it logs its listening address.
    pub fn spawn(self) -> Server {
        // The process is owned before the wait, so a start that fails or hangs is killed too.
        let (mut process, dir, log) = self.spawn_raw();
        let addr = wait_for("the server to listen", Duration::from_secs(10), || {
            if let Some(status) = process.try_wait() {
                panic!(
                    "server exited with {status}: {}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            let text = fs::read_to_string(&log).ok()?;
            let rest = text.split("listening on http://").nth(1)?;
            rest.split_whitespace().next()?.parse().ok()
        });
        Server {
            process,
            dir,
            addr,
            log,
        }
    }
}
