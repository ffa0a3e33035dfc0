//! Test harness: the real `server` binary, real PostgreSQL clusters, raw HTTP over TCP.
//!
//! `Server` spawns the binary in a directory of its own with `TRIBIST_LISTEN=127.0.0.1:0`,
//! reads the bound address back from its log, and kills it in `Drop`. `Pg` is a throwaway
//! PostgreSQL cluster started by `tests/support/pg.sh`.

#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_server");
pub const PASSWORD: &str = "tribist-test-pw";

/// Polls `cond` every 10 ms until it returns `Some`, or panics after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tribist-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real PostgreSQL cluster of this test run.
pub struct Pg {
    pub dir: TempDir,
    pub url: String,
    pub port: u16,
}

impl Pg {
    pub fn start_new(tag: &str) -> Pg {
        let dir = TempDir::new(&format!("pg-{tag}"));
        let port = free_port();
        let url = pg_sh(&["start", dir.path().to_str().unwrap(), &port.to_string()]);
        Pg { dir, url, port }
    }

    /// A cluster with `ssl = on`, its certificate signed by `dir/tls/ca.pem` (pg.sh --tls).
    pub fn start_new_tls(tag: &str) -> Pg {
        let dir = TempDir::new(&format!("pg-{tag}"));
        let port = free_port();
        let url = pg_sh(&[
            "start",
            dir.path().to_str().unwrap(),
            &port.to_string(),
            "--tls",
        ]);
        Pg { dir, url, port }
    }

    /// One cluster shared by the tests that never stop it.
    pub fn shared() -> &'static Pg {
        static PG: OnceLock<Pg> = OnceLock::new();
        PG.get_or_init(|| Pg::start_new("shared"))
    }

    pub fn stop(&self) {
        pg_sh(&["stop", self.dir.path().to_str().unwrap()]);
    }

    pub fn start(&self) {
        pg_sh(&[
            "start",
            self.dir.path().to_str().unwrap(),
            &self.port.to_string(),
        ]);
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = Command::new(pg_sh_path())
            .args(["stop", self.dir.path().to_str().unwrap()])
            .stderr(Stdio::null())
            .status();
    }
}

fn pg_sh_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/pg.sh")
}

fn pg_sh(args: &[&str]) -> String {
    let out = Command::new(pg_sh_path())
        .args(args)
        .output()
        .expect("run tests/support/pg.sh");
    assert!(
        out.status.success(),
        "pg.sh {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The server binary, running in its own directory.
pub struct Server {
    pub child: Child,
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
        self.child.id()
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

    /// Waits for the process to exit, within `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let child = &mut self.child;
        wait_for("the server to exit", limit, || child.try_wait().unwrap())
    }

    pub fn get(&self, path: &str) -> Response {
        request(
            self.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
        )
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

    /// Starts the server without waiting for it.
    pub fn spawn_raw(self) -> (Child, TempDir, PathBuf) {
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
            use std::os::unix::process::CommandExt;
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
        (cmd.spawn().expect("spawn server"), dir, log)
    }

    /// Starts the server and waits until it logs its listening address.
    pub fn spawn(self) -> Server {
        let (mut child, dir, log) = self.spawn_raw();
        let addr = wait_for("the server to listen", Duration::from_secs(10), || {
            if let Ok(Some(status)) = child.try_wait() {
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
            child,
            dir,
            addr,
            log,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

/// Sends raw bytes, reads until the server closes, parses the first response.
pub fn request(addr: SocketAddr, raw: &str) -> Response {
    try_request(addr, raw.as_bytes()).unwrap_or_else(|e| panic!("request to {addr} failed: {e}"))
}

pub fn try_request(addr: SocketAddr, raw: &[u8]) -> std::io::Result<Response> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    s.write_all(raw)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    parse(&buf).ok_or_else(|| {
        std::io::Error::other(format!(
            "unparseable response: {:?}",
            String::from_utf8_lossy(&buf)
        ))
    })
}

fn parse(buf: &[u8]) -> Option<Response> {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Some(Response {
        status,
        headers,
        body: body.to_string(),
    })
}

/// A TCP listener that accepts connections and never answers: a hung database host.
pub struct Silent {
    pub addr: SocketAddr,
    accepted: std::sync::Arc<AtomicUsize>,
}

impl Silent {
    pub fn start() -> Silent {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = std::sync::Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            let mut keep = Vec::new();
            for stream in listener.incoming().flatten() {
                count.fetch_add(1, Ordering::SeqCst);
                keep.push(stream);
            }
        });
        Silent { addr, accepted }
    }

    pub fn url(&self) -> String {
        format!("postgres://tribist:{PASSWORD}@{}/tribist", self.addr)
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// A client that keeps its connection alive, as wrk and reverse proxies do, and opens a new one
/// only when the server answers `Connection: close` or closes.
pub struct KeepAlive {
    addr: SocketAddr,
    conn: Option<std::io::BufReader<TcpStream>>,
    /// Connections opened so far.
    pub connects: usize,
}

/// One answer on a keep-alive connection.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub close: bool,
}

impl KeepAlive {
    pub fn new(addr: SocketAddr) -> KeepAlive {
        KeepAlive {
            addr,
            conn: None,
            connects: 0,
        }
    }

    /// Opens the connection now (without sending anything).
    pub fn connect(&mut self) -> std::io::Result<()> {
        let s = TcpStream::connect(self.addr)?;
        s.set_read_timeout(Some(Duration::from_secs(15)))?;
        self.conn = Some(std::io::BufReader::new(s));
        self.connects += 1;
        Ok(())
    }

    pub fn get(&mut self, path: &str) -> std::io::Result<Answer> {
        use std::io::BufRead;
        if self.conn.is_none() {
            self.connect()?;
        }
        let conn = self.conn.as_mut().expect("connected");
        conn.get_mut()
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())?;
        let mut line = String::new();
        conn.read_line(&mut line)?;
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let (mut length, mut close) = (0usize, false);
        loop {
            line.clear();
            conn.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().map_err(std::io::Error::other)?;
                } else if k.eq_ignore_ascii_case("connection")
                    && v.trim().eq_ignore_ascii_case("close")
                {
                    close = true;
                }
            }
        }
        let mut body = vec![0; length];
        conn.read_exact(&mut body)?;
        if close {
            self.conn = None;
        }
        Ok(Answer { status, close })
    }
}
