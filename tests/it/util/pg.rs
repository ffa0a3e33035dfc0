//! Real PostgreSQL clusters started by `tests/support/pg.sh`, and `Silent`, a database host
//! that never answers.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use super::{free_port, TempDir};

/// The password of the role `tribist` in every cluster pg.sh creates.
pub const PASSWORD: &str = "tribist-test-pw";

/// A real PostgreSQL cluster of this test run, stopped (and its directory removed) on drop.
pub struct Pg {
    pub dir: TempDir,
    pub url: String,
    pub port: u16,
    /// Started with `ssl = on` and a certificate signed by `dir/tls/ca.pem` (pg.sh --tls).
    tls: bool,
}

static SHARED: OnceLock<Pg> = OnceLock::new();
static SHARED_TLS: OnceLock<Pg> = OnceLock::new();

impl Pg {
    pub fn start_new(tag: &str) -> Pg {
        Pg::create(tag, false)
    }

    /// A cluster with `ssl = on`, its certificate (localhost, 127.0.0.1) signed by
    /// `dir/tls/ca.pem`; `dir/tls/other-ca.pem` signed nothing.
    pub fn start_new_tls(tag: &str) -> Pg {
        Pg::create(tag, true)
    }

    fn create(tag: &str, tls: bool) -> Pg {
        let mut pg = Pg {
            dir: TempDir::new(&format!("pg-{tag}")),
            url: String::new(),
            port: free_port(),
            tls,
        };
        // Already owned by `pg`: stopped by its drop if pg.sh fails half-way.
        pg.url = pg.start();
        pg
    }

    /// One cluster shared by the tests that never stop it. A static is never dropped, so it is
    /// stopped when the test binary exits.
    pub fn shared() -> &'static Pg {
        Pg::shared_in(&SHARED, || Pg::start_new("shared"))
    }

    /// One TLS cluster (`start_new_tls`) shared by the tests that never stop it; stopped
    /// when the test binary exits, as `shared`'s.
    pub fn shared_tls() -> &'static Pg {
        Pg::shared_in(&SHARED_TLS, || Pg::start_new_tls("shared-tls"))
    }

    /// The cluster in `cell`, started by `start` the first time, with the exit hook that
    /// stops every shared cluster registered once.
    fn shared_in(cell: &'static OnceLock<Pg>, start: impl FnOnce() -> Pg) -> &'static Pg {
        cell.get_or_init(|| {
            extern "C" fn stop_shared() {
                for pg in [SHARED.get(), SHARED_TLS.get()].into_iter().flatten() {
                    pg.stop_quietly();
                    let _ = std::fs::remove_dir_all(pg.dir.path());
                }
            }
            static REGISTERED: std::sync::Once = std::sync::Once::new();
            // SAFETY: registers a plain function; it runs in `exit`, after the tests.
            REGISTERED.call_once(|| assert_eq!(unsafe { libc::atexit(stop_shared) }, 0, "atexit"));
            start()
        })
    }

    pub fn stop(&self) {
        pg_sh(&["stop", self.dir.path().to_str().unwrap()]);
    }

    /// Starts the cluster (creating it the first time); returns its URL.
    pub fn start(&self) -> String {
        let port = self.port.to_string();
        let mut args = vec!["start", self.dir.path().to_str().unwrap(), &port];
        if self.tls {
            args.push("--tls");
        }
        pg_sh(&args)
    }

    fn stop_quietly(&self) {
        let _ = Command::new(pg_sh_path())
            .args(["stop", self.dir.path().to_str().unwrap()])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        self.stop_quietly();
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

/// A TCP listener that accepts connections and never answers: a hung database host.
pub struct Silent {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl Silent {
    pub fn start() -> Silent {
        Silent::start_then(None).0
    }

    /// A host that holds connections silently until the returned flag is set, and from then
    /// on forwards new connections to `target`: a proxy or load balancer that hung, then
    /// recovered (the connections it held stay held).
    pub fn then_forwarding(target: SocketAddr) -> (Silent, Arc<AtomicBool>) {
        let (silent, open) = Silent::start_then(Some(target));
        (silent, open.expect("a target was given"))
    }

    fn start_then(target: Option<SocketAddr>) -> (Silent, Option<Arc<AtomicBool>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let open = target.map(|_| Arc::new(AtomicBool::new(false)));
        let forwarding = open.clone();
        std::thread::spawn(move || {
            let mut keep = Vec::new();
            for stream in listener.incoming().flatten() {
                match (target, &forwarding) {
                    (Some(target), Some(open)) if open.load(Ordering::SeqCst) => {
                        forward(stream, target)
                    }
                    _ => {
                        count.fetch_add(1, Ordering::SeqCst);
                        keep.push(stream);
                    }
                }
            }
        });
        (Silent { addr, accepted }, open)
    }

    pub fn url(&self) -> String {
        format!("postgres://tribist:{PASSWORD}@{}/tribist", self.addr)
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Copies bytes both ways between `client` and a new connection to `target`.
fn forward(client: TcpStream, target: SocketAddr) {
    let Ok(server) = TcpStream::connect(target) else {
        return;
    };
    for (mut from, mut to) in [
        (client.try_clone().unwrap(), server.try_clone().unwrap()),
        (server, client),
    ] {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(std::net::Shutdown::Both);
        });
    }
}
