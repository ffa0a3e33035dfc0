//! `preflight NAME RELEASE SECONDS ENVFILE`: a release runs beside the serving one, with the
//! service's configuration, before anything switches to it.
//!
//! The binary runs in a scratch directory with the environment systemd gives the service
//! (User=tribist), `--env-file ENVFILE` (the server reads that file itself, with
//! src/envfile.rs: this program never holds the configuration's password), and on top of it
//! `TRIBIST_LISTEN=127.0.0.1:0` (a free loopback port, the kernel's choice),
//! `TRIBIST_ADDRESS_FILE` (where it writes the port once bound) and the log at info. `/health`
//! is asked until it answers 200 with the expected releaseId. A failure waiting cannot cure
//! ends it at once, exit 4: `/health`'s `"failure":"configuration"` (docs/server.md) or the
//! binary's exit status 2 (it refuses a setting). A binary that predates `--describe` is read
//! as before: its port from the line `listening on http://127.0.0.1:PORT`, and one that
//! predates `--env-file` is let through unchecked, said so.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::host::text::{clean, printable};

use super::describe::{describe, Described};
use super::health::{address_file_port, get_health, log_line_port, Answer, Health};
use super::names::{id_text, random_alnum, shown, Accept};
use super::run::{shell_status, Running, Spec};
use super::{Ctx, Result, Stop, EXIT_CONFIGURATION, PROG};

/// The most of the binary's output kept (its last lines are shown on a failure).
const LOG_MAX: usize = 64 * 1024;
/// How long the binary has to end after SIGTERM once the preflight is over.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// The lines of its output shown on a failure, and the most of each.
const LOG_LINES: usize = 15;
const LOG_LINE_MAX: usize = 300;

/// The one line a release that predates `--env-file` gives for it.
const NO_ENV_FILE: &str = "unexpected argument \"--env-file\"";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT, SIGTERM and SIGHUP (deploy.sh's interrupt, a lost session) end the preflight
/// with its server and scratch directory removed, exit 130.
fn catch_interrupts() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic; a zeroed sigaction has an empty mask
        // and no flags (no SA_RESTART: a wait is cut short).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// A scratch directory, removed with all it holds when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Scratch> {
        for _ in 0..100 {
            let path = PathBuf::from(format!("/tmp/tribist-preflight.{}", random_alnum(6)));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(Scratch(path)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(super::io_failed(
                        "cannot make a scratch directory in /tmp",
                        e,
                    ))
                }
            }
        }
        Err(Stop::failed(
            "cannot make a scratch directory in /tmp: no free name",
        ))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The last lines of `log`, each printable and cut, indented.
fn last_lines(log: &[u8]) -> Vec<String> {
    let text = printable(log, usize::MAX);
    let lines: Vec<&str> = text.trim_end_matches('\n').split('\n').collect();
    lines[lines.len().saturating_sub(LOG_LINES)..]
        .iter()
        .map(|l| format!("    {}", clean(l.as_bytes(), LOG_LINE_MAX)))
        .collect()
}

/// The failure: why, then the binary's last output lines.
fn failed(want: &str, why: &str, code: u8, log: &[u8]) -> Stop {
    let mut message = format!("preflight: release {want} {why}");
    if !log.is_empty() {
        message.push_str(&format!("\n{PROG}: preflight: its last output lines:"));
        for line in last_lines(log) {
            message.push('\n');
            message.push_str(&line);
        }
    }
    Stop::with(code, message)
}

/// The first 100 bytes of the address file, if it is there as a regular file (opened
/// without following a link and without blocking: the binary could have made it a FIFO).
fn read_address_file(path: &Path) -> Option<Vec<u8>> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    if !f.metadata().ok()?.is_file() {
        return Some(Vec::new());
    }
    let mut content = Vec::new();
    Read::by_ref(&mut f)
        .take(100)
        .read_to_end(&mut content)
        .ok()?;
    Some(content)
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    }
}

fn user_name() -> String {
    // SAFETY: getpwuid returns a pointer into static storage, read at once, or null.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if pw.is_null() {
            return format!("uid {}", libc::geteuid());
        }
        std::ffi::CStr::from_ptr((*pw).pw_name)
            .to_string_lossy()
            .into_owned()
    }
}

/// `preflight NAME RELEASE SECONDS ENVFILE`: what it found, on success.
pub fn preflight(ctx: &Ctx, name: &str, want: &str, secs: &str, env: &str) -> Result<String> {
    let binary = super::names::Binary::parse(name, Accept::Runnable, &ctx.verified)?;
    if !id_text(want) {
        return Err(Stop::usage(format!(
            "'{}' is not a release id",
            shown(want)
        )));
    }
    let secs: u64 = match secs.parse() {
        Ok(n) if (1..=999).contains(&n) && !secs.starts_with(['0', '+']) => n,
        _ => {
            return Err(Stop::usage(format!(
                "SECONDS must be 1 to 999, got '{}'",
                shown(secs)
            )))
        }
    };
    binary.must_exist(&ctx.api)?;
    let env = absolute(Path::new(env));
    if std::fs::File::open(&env).is_err() {
        return Err(Stop::failed(format!(
            "cannot read the configuration {} as {}",
            shown(&env.to_string_lossy()),
            user_name()
        )));
    }
    let predates = || {
        Ok(format!(
            "{PROG}: preflight: release {want} predates server --env-file; not checked before the switch (only after it)"
        ))
    };
    // What the binary offers: the address file, --env-file. One that predates --describe is
    // read from its output instead (below).
    let described: Option<Described> = describe(&ctx.api, &binary);
    if described
        .as_ref()
        .is_some_and(|d| !d.has(crate::envfile::FEATURE))
    {
        return predates();
    }
    let address_file = described
        .as_ref()
        .is_some_and(|d| d.has(crate::address_file::FEATURE));
    catch_interrupts();
    let scratch = Scratch::new()?;
    let address = scratch.0.join("address");
    let program = absolute(&binary.path(&ctx.api));
    let args = [OsStr::new("--env-file"), env.as_os_str()];
    let vars: [(&str, &OsStr); 7] = [
        ("PATH", OsStr::new("/usr/local/bin:/usr/bin:/bin")),
        ("USER", OsStr::new("tribist")),
        ("LOGNAME", OsStr::new("tribist")),
        ("HOME", OsStr::new("/home/tribist")),
        ("TRIBIST_LISTEN", OsStr::new("127.0.0.1:0")),
        ("TRIBIST_LOG_LEVEL", OsStr::new("info")),
        (crate::address_file::ENV, address.as_os_str()),
    ];
    let start = Instant::now();
    let mut child = Running::spawn(
        Spec {
            program: &program,
            args: &args,
            env: Some(&vars),
            dir: &scratch.0,
            stdin: None,
            stderr: true,
        },
        LOG_MAX,
    )
    .map_err(|e| super::io_failed(format!("preflight: cannot start {}", binary.shown()), e))?;
    let outcome = watch(
        &mut child,
        want,
        secs,
        address_file,
        described.is_some(),
        &address,
        start,
    );
    let log = child.output().to_vec();
    child.stop(STOP_GRACE);
    drop(scratch);
    match outcome {
        Watched::Healthy(port) => Ok(format!(
            "{PROG}: preflight: release {want} answered /health 200 (127.0.0.1:{port}, {:.1} s)",
            start.elapsed().as_secs_f64()
        )),
        Watched::PredatesEnvFile => predates(),
        Watched::Failed { why, code } => Err(failed(want, &why, code, &log)),
        Watched::Interrupted => Err(Stop::with(
            130,
            "preflight: interrupted; its server is stopped",
        )),
    }
}

enum Watched {
    Healthy(u16),
    PredatesEnvFile,
    Failed { why: String, code: u8 },
    Interrupted,
}

/// Asks `/health` until the release answers, fails, exits or `secs` pass.
fn watch(
    child: &mut Running,
    want: &str,
    secs: u64,
    address_file: bool,
    described: bool,
    address: &Path,
    start: Instant,
) -> Watched {
    let fail = |why: String| Watched::Failed { why, code: 1 };
    let mut port: Option<u16> = None;
    let mut last = Answer::Nothing;
    loop {
        if INTERRUPTED.load(Ordering::SeqCst) {
            return Watched::Interrupted;
        }
        let exited = child.pump(Duration::ZERO).ok().flatten();
        if port.is_none() {
            if address_file {
                // Written whole (renamed into place), once the server listens.
                if let Some(content) = read_address_file(address) {
                    match address_file_port(&content) {
                        Ok(p) => port = Some(p),
                        Err(()) => {
                            return fail(
                                "wrote an address file that is not 127.0.0.1:PORT (TRIBIST_ADDRESS_FILE)".into(),
                            )
                        }
                    }
                }
            } else {
                port = log_line_port(child.output());
            }
        }
        if let Some(p) = port {
            last = get_health(p);
            if let Answer::Http { status, body } = &last {
                let health = Health::read(body);
                if *status == 200 {
                    if health.release_id != want {
                        return fail(format!(
                            "answered /health 200 but reports releaseId '{}'",
                            health.release_id
                        ));
                    }
                    return Watched::Healthy(p);
                }
                // The server's contract (api/openapi.yaml): a failure waiting cannot cure.
                if *status == 503 && health.configuration {
                    return Watched::Failed {
                        why: format!(
                            "cannot work with this configuration: the database refuses it ({}); waiting will not help",
                            health.output
                        ),
                        code: EXIT_CONFIGURATION,
                    };
                }
            }
        }
        if let Some(status) = exited {
            // A binary that predates --describe says so only in its refusal.
            if !described && String::from_utf8_lossy(child.output()).contains(NO_ENV_FILE) {
                return Watched::PredatesEnvFile;
            }
            let rc = shell_status(status);
            // Exit status 2 is the server refusing a setting (server --help): definite too.
            if rc == 2 {
                return Watched::Failed {
                    why: "refused its configuration (exit status 2; the reason is in its output below)".into(),
                    code: EXIT_CONFIGURATION,
                };
            }
            return fail(format!("exited (status {rc}) before answering /health 200"));
        }
        if start.elapsed() >= Duration::from_secs(secs) {
            let last = match (port, &last) {
                (None, _) => "; it never said which port it listens on".to_string(),
                (Some(_), Answer::Nothing) => "; /health did not answer".to_string(),
                (Some(_), Answer::Http { status, body }) => {
                    let out = Health::read(body).output;
                    let out = if out.is_empty() {
                        out
                    } else {
                        format!(": {out}")
                    };
                    format!("; last answer: HTTP {status}{out}")
                }
            };
            return fail(format!("did not answer /health 200 within {secs}s{last}"));
        }
        let _ = child.pump(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::Api;
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    #[test]
    fn a_failure_shows_the_last_lines_cut_and_clean() {
        let mut log = Vec::new();
        for i in 0..20 {
            log.extend_from_slice(format!("line {i} \x1b]0;x\x07{}\n", "y".repeat(400)).as_bytes());
        }
        let stop = failed(
            "r1",
            "exited (status 1) before answering /health 200",
            1,
            &log,
        );
        let lines: Vec<&str> = stop.message.lines().collect();
        assert_eq!(
            lines[0],
            "preflight: release r1 exited (status 1) before answering /health 200"
        );
        assert_eq!(
            lines[1],
            format!("{PROG}: preflight: its last output lines:")
        );
        assert_eq!(lines.len(), 2 + LOG_LINES);
        assert!(lines[2].starts_with("    line 5 ]0;x"), "{}", lines[2]);
        assert!(lines
            .iter()
            .all(|l| l.len() <= 4 + LOG_LINE_MAX && !l.contains('\x1b')));
        assert_eq!(failed("r", "x", 1, b"").message, "preflight: release r x");
    }

    const DESCRIBED: &str = r#"{"contract":1,"name":"tribist","version":"0.2.0","releaseId":"rel-new","features":["env-file","address-file"]}"#;

    /// A release that writes PORT to its address file and then sleeps; a listener on PORT
    /// answers every request with `answer`.
    fn serve_answer(api: &Api, answer: &'static str) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { continue };
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ = s.write_all(answer.as_bytes());
            }
        });
        api.script(
            "server",
            &format!(
                "[ \"$1\" = --describe ] && echo '{DESCRIBED}' && exit 0\n\
                 echo starting; echo \"$TRIBIST_LISTEN $USER\"\n\
                 echo 127.0.0.1:{port} >\"$TRIBIST_ADDRESS_FILE.tmp\" && mv \"$TRIBIST_ADDRESS_FILE.tmp\" \"$TRIBIST_ADDRESS_FILE\"\n\
                 exec sleep 30"
            ),
        );
    }

    fn env_file(api: &Api) -> String {
        let p = api.path("env");
        std::fs::write(&p, "DATABASE_URL=\"postgres://x@localhost/x\"\n").unwrap();
        p.to_string_lossy().into_owned()
    }

    #[test]
    fn healthy_with_the_right_release_id() {
        let api = Api::new();
        serve_answer(
            &api,
            "HTTP/1.0 200 OK\r\n\r\n{\"status\":\"pass\",\"releaseId\":\"rel-new\"}",
        );
        let env = env_file(&api);
        let start = Instant::now();
        let out = preflight(&api.ctx, "server", "rel-new", "5", &env).unwrap();
        assert!(
            out.contains("preflight: release rel-new answered /health 200 (127.0.0.1:"),
            "{out}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "{:?}",
            start.elapsed()
        );
        // Another id: refused, with its output.
        let err = preflight(&api.ctx, "server", "rel-other", "5", &env).unwrap_err();
        assert_eq!(err.code, 1);
        assert!(
            err.message
                .contains("answered /health 200 but reports releaseId 'rel-new'"),
            "{}",
            err.message
        );
        assert!(
            err.message.contains("    127.0.0.1:0 tribist"),
            "{}",
            err.message
        );
    }

    #[test]
    fn the_database_refusing_the_configuration_ends_it_at_once_with_4() {
        let api = Api::new();
        serve_answer(
            &api,
            "HTTP/1.0 503 Service Unavailable\r\n\r\n{\"status\":\"fail\",\"releaseId\":\"rel-new\",\"output\":\"postgres: password authentication failed\",\"failure\":\"configuration\"}",
        );
        let start = Instant::now();
        let err = preflight(&api.ctx, "server", "rel-new", "30", &env_file(&api)).unwrap_err();
        assert_eq!(err.code, EXIT_CONFIGURATION);
        assert!(err.message.contains("the database refuses it (postgres: password authentication failed); waiting will not help"), "{}", err.message);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn a_transient_failure_is_waited_for_until_the_seconds_pass() {
        let api = Api::new();
        serve_answer(
            &api,
            "HTTP/1.0 503 Service Unavailable\r\n\r\n{\"status\":\"fail\",\"releaseId\":\"rel-new\",\"output\":\"postgres: \\u001b[2Jrefused\",\"failure\":\"unavailable\"}",
        );
        let start = Instant::now();
        let err = preflight(&api.ctx, "server", "rel-new", "1", &env_file(&api)).unwrap_err();
        assert_eq!(err.code, 1);
        assert!(
            err.message.contains(
                "did not answer /health 200 within 1s; last answer: HTTP 503: postgres: [2Jrefused"
            ),
            "{}",
            err.message
        );
        assert!(
            start.elapsed() >= Duration::from_secs(1) && start.elapsed() < Duration::from_secs(6)
        );
    }

    #[test]
    fn exits_old_binaries_and_refusals() {
        let api = Api::new();
        let env = env_file(&api);
        // Exit 2: it refuses a setting, definite.
        api.script(
            "server",
            "echo 'server: error: TRIBIST_WORKERS: not a number'; exit 2",
        );
        let err = preflight(&api.ctx, "server", "r1", "5", &env).unwrap_err();
        assert_eq!(err.code, EXIT_CONFIGURATION);
        assert!(
            err.message
                .contains("refused its configuration (exit status 2"),
            "{}",
            err.message
        );
        assert!(err
            .message
            .contains("    server: error: TRIBIST_WORKERS: not a number"));
        // Another exit.
        api.script("server", "echo boom >&2; exit 1");
        let err = preflight(&api.ctx, "server", "r1", "5", &env).unwrap_err();
        assert!(
            err.message
                .contains("exited (status 1) before answering /health 200\n"),
            "{}",
            err.message
        );
        assert!(err.message.ends_with("    boom"), "{}", err.message);
        // One that predates --env-file: let through, said so.
        api.script("server", "echo \"server: error: unexpected argument \\\"$1\\\" (see server --help)\" >&2; exit 2");
        let out = preflight(&api.ctx, "server", "r1", "5", &env).unwrap();
        assert!(
            out.contains("predates server --env-file; not checked before the switch"),
            "{out}"
        );
        // Described without env-file: not run at all.
        api.script("server", r#"[ "$1" = --describe ] && echo '{"contract":1,"name":"tribist","version":"1","releaseId":"r1","features":[]}' && exit 0; exit 1"#);
        assert!(preflight(&api.ctx, "server", "r1", "5", &env)
            .unwrap()
            .contains("predates server --env-file"));
        // One that never says its port.
        api.script("server", "[ \"$1\" = --env-file ] && exec sleep 30; exit 2");
        let err = preflight(&api.ctx, "server", "r1", "1", &env).unwrap_err();
        assert!(
            err.message.contains("within 1s; it never said which port"),
            "{}",
            err.message
        );
        // Misuse and refusals.
        for (n, r, s) in [
            ("server_new", "r1", "5"),
            ("server", "a b", "5"),
            ("server", "r1", "0"),
            ("server", "r1", "1000"),
            ("/bin/sh", "r1", "5"),
        ] {
            assert_eq!(
                preflight(&api.ctx, n, r, s, &env).unwrap_err().code,
                2,
                "{n} {r} {s}"
            );
        }
        let err = preflight(&api.ctx, "server", "r1", "5", "/nonexistent/env").unwrap_err();
        assert!(
            err.message
                .contains("cannot read the configuration /nonexistent/env as "),
            "{}",
            err.message
        );
        assert_eq!(
            preflight(&api.ctx, ".upload.abcdef", "r1", "5", &env)
                .unwrap_err()
                .code,
            1
        );
    }
}
