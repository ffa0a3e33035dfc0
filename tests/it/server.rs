//! Behaviour of the real `server` binary against real PostgreSQL clusters.

use std::fs;
use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::http::{self, KeepAlive};
use crate::util::pg::{Pg, Silent, PASSWORD};
use crate::util::server::{Server, BIN};
use crate::util::{free_port, wait_for, TempDir, SECOND};

fn commit() -> String {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .next()
        .and_then(|l| l.split("commit ").nth(1))
        .unwrap()
        .trim_end_matches(')')
        .to_string()
}

#[test]
fn health_is_200_with_health_json() {
    let server = Server::start();
    let r = server.get("/health");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("Content-Type"), Some("application/health+json"));
    let b = r.json();
    assert_eq!(b["status"], "pass");
    assert_eq!(b["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(b["releaseId"], commit().as_str());
    let check = &b["checks"]["postgres:responseTime"][0];
    assert_eq!(check["status"], "pass");
    assert_eq!(check["componentType"], "datastore");
    assert!(check["observedValue"].as_f64().unwrap() > 0.0, "{check}");
    assert!(b.get("output").is_none());
}

#[test]
fn head_health_has_status_and_no_body() {
    let server = Server::start();
    let r = server.request("HEAD", "/health");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some("application/health+json"));
    assert_eq!(r.body, "");
}

#[test]
fn unknown_path_is_404_and_wrong_method_is_405_with_allow() {
    let server = Server::start();
    let r = server.get("/nope");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["status"], 404);
    let r = server.request("DELETE", "/health");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("Allow"), Some("GET, HEAD"));
    assert_eq!(r.json()["status"], 405);
}

#[test]
fn livez_needs_no_database_and_health_says_why_it_fails() {
    let closed = free_port();
    let url = format!("postgres://tribist:{PASSWORD}@127.0.0.1:{closed}/tribist");
    let server = Server::builder(&url).spawn();
    let r = server.get("/livez");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "pass");
    let r = server.get("/health");
    assert_eq!(r.status, 503);
    let b = r.json();
    assert_eq!(b["status"], "fail");
    let output = b["output"].as_str().unwrap();
    assert!(output.contains("refused"), "{output}");
    assert!(!r.body.contains(PASSWORD) && !server.log().contains(PASSWORD));
}

#[test]
fn wrong_password_is_503_and_never_echoes_a_password() {
    let pg = Pg::shared();
    let url = pg.url.replace(PASSWORD, "not-the-password-xyz");
    let server = Server::builder(&url)
        .env("TRIBIST_LOG_LEVEL", "debug")
        .spawn();
    let r = server.get("/health");
    assert_eq!(r.status, 503);
    let output = r.json()["output"].as_str().unwrap().to_string();
    assert!(
        output.contains("password authentication failed"),
        "{output}"
    );
    let log = server.log();
    assert!(log.contains("check failing"), "{log}");
    for text in [&r.body, &log] {
        assert!(
            !text.contains("not-the-password-xyz") && !text.contains(PASSWORD),
            "{text}"
        );
    }
}

#[test]
fn database_stop_and_start_without_restarting_the_server() {
    let pg = Pg::start_new("cycle");
    let server = Server::builder(&pg.url).env("TRIBIST_WORKERS", "2").spawn();
    assert_eq!(server.get("/health").status, 200);
    pg.stop();
    // Every worker's reused connection must notice the outage.
    for _ in 0..4 {
        let r = server.get("/health");
        assert_eq!(r.status, 503, "{r:?}");
        assert!(!r.json()["output"].as_str().unwrap().is_empty());
    }
    pg.start();
    wait_for("/health to pass again", Duration::from_secs(10), || {
        (server.get("/health").status == 200).then_some(())
    });
    for _ in 0..4 {
        assert_eq!(server.get("/health").status, 200);
    }
    assert!(server.log().contains("reachable again"), "{}", server.log());
    assert_eq!(
        fs::read_to_string(server.dir.path().join("PID")).unwrap(),
        format!("{}\n", server.pid())
    );
}

#[test]
fn silent_database_host_gives_503_within_the_timeout() {
    let silent = Silent::start();
    let server = Server::builder(&silent.url())
        .env("TRIBIST_DB_TIMEOUT", "1s")
        .env("TRIBIST_WORKERS", "1")
        .spawn();
    // Twice: the second check finds the first still stuck and must not wait longer.
    for round in 0..2 {
        let start = Instant::now();
        let r = server.get("/health");
        let took = start.elapsed();
        assert_eq!(r.status, 503, "{r:?}");
        assert!(took < Duration::from_secs(2), "round {round} took {took:?}");
        let output = r.json()["output"].as_str().unwrap().to_string();
        assert!(output.contains("no answer within 1s"), "{output}");
    }
    // Still one connection: no thread or socket is added per request.
    assert_eq!(silent.accepted(), 1);
}

#[test]
fn sigterm_during_a_database_wait_still_answers_and_exits_0() {
    let silent = Silent::start();
    let mut server = Server::builder(&silent.url())
        .env("TRIBIST_DB_TIMEOUT", "2s")
        .spawn();
    let addr = server.addr;
    // The warm-up connection reaches the database first; then the request, sent here, is
    // waited for until the server has read it (the kernel holds none of its bytes): only then
    // is it the server's to answer, whatever signal comes.
    wait_for("the warm-up to reach the database", 5 * SECOND, || {
        (silent.accepted() > 0).then_some(())
    });
    let mut stream = http::connect(addr).unwrap();
    stream
        .write_all(http::request("GET", "/health").as_bytes())
        .unwrap();
    let client = stream.local_addr().unwrap();
    wait_for("the server to read the request", 5 * SECOND, || {
        http::server_has_read(addr, client).then_some(())
    });
    server.signal("TERM");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    let status = server.wait_exit(10 * SECOND);
    assert_eq!(status.code(), Some(0), "{}", server.log());
    let log = server.log();
    for phase in [
        "termination signal",
        "stopped accepting",
        "workers finished",
        "shutdown: complete",
    ] {
        assert!(log.contains(phase), "missing {phase:?} in log:\n{log}");
    }
    assert!(!server.dir.path().join("PID").exists());
    // The listener is gone: new connections are refused.
    assert!(http::send(addr, b"GET /livez HTTP/1.1\r\n\r\n").is_err());
}

#[test]
fn idle_server_exits_0_on_sigterm_and_sigint_quickly() {
    for sig in ["TERM", "INT"] {
        let mut server = Server::start();
        assert_eq!(server.get("/health").status, 200);
        let start = Instant::now();
        server.signal(sig);
        let status = server.wait_exit(5 * SECOND);
        let took = start.elapsed();
        assert_eq!(status.code(), Some(0), "SIG{sig}: {}", server.log());
        assert!(took < SECOND, "SIG{sig} exit took {took:?}");
        assert!(
            server.log().contains("database connections closed"),
            "{}",
            server.log()
        );
    }
}

#[test]
fn pid_file_is_written_and_removed() {
    let mut server = Server::start();
    let pid_path = server.dir.path().join("PID");
    assert_eq!(
        fs::read_to_string(&pid_path).unwrap(),
        format!("{}\n", server.pid())
    );
    server.signal("TERM");
    assert_eq!(server.wait_exit(5 * SECOND).code(), Some(0));
    assert!(!pid_path.exists());
}

#[test]
fn second_server_in_the_same_directory_is_refused() {
    let first = Server::start();
    let out = Command::new(BIN)
        .current_dir(first.dir.path())
        .env("DATABASE_URL", &Pg::shared().url)
        .env("TRIBIST_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("already running") && err.contains(&format!("pid {}", first.pid())),
        "{err}"
    );
    // The first one is untouched.
    assert_eq!(
        fs::read_to_string(first.dir.path().join("PID")).unwrap(),
        format!("{}\n", first.pid())
    );
    assert_eq!(first.get("/livez").status, 200);
}

#[test]
fn stale_pid_file_does_not_block_a_start() {
    let dir = TempDir::new("stale");
    fs::write(dir.path().join("PID"), "4194303\n").unwrap();
    let server = Server::builder(&Pg::shared().url).dir(dir).spawn();
    assert_eq!(server.get("/health").status, 200);
    assert_eq!(
        fs::read_to_string(server.dir.path().join("PID")).unwrap(),
        format!("{}\n", server.pid())
    );
    assert!(server.log().contains("stale"), "{}", server.log());
}

#[test]
fn bad_configuration_exits_2_with_one_line_naming_the_variable() {
    let good = "postgres://u@127.0.0.1/d";
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[], "DATABASE_URL"),
        (&[("DATABASE_URL", "postgres://[oops")], "DATABASE_URL"),
        (
            &[("DATABASE_URL", good), ("TRIBIST_LISTEN", "nowhere")],
            "TRIBIST_LISTEN",
        ),
        (
            &[("DATABASE_URL", good), ("TRIBIST_WORKERS", "0")],
            "TRIBIST_WORKERS",
        ),
        (
            &[("DATABASE_URL", good), ("TRIBIST_DB_TIMEOUT", "soon")],
            "TRIBIST_DB_TIMEOUT",
        ),
        (
            &[("DATABASE_URL", good), ("TRIBIST_SHUTDOWN_TIMEOUT", "0")],
            "TRIBIST_SHUTDOWN_TIMEOUT",
        ),
        (
            &[("DATABASE_URL", good), ("TRIBIST_LOG_LEVEL", "chatty")],
            "TRIBIST_LOG_LEVEL",
        ),
        (
            &[("PGHOST", "127.0.0.1"), ("PGUSER", "u"), ("PGPORT", "huge")],
            "PGPORT",
        ),
    ];
    for (env, var) in cases {
        let dir = TempDir::new("badcfg");
        let out = Command::new(BIN)
            .current_dir(dir.path())
            .env_clear()
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{env:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{env:?}: {err}");
        assert!(err.contains(var), "{env:?}: {err}");
        assert!(!dir.path().join("PID").exists());
    }
}

#[test]
fn help_version_and_bad_arguments() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("DATABASE_URL"));
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout)
        .starts_with(concat!("server ", env!("CARGO_PKG_VERSION"))));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\nhandover: SIGUSR2\n"));
    assert!(!commit().is_empty());
    let out = Command::new(BIN).arg("--frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--frobnicate"));
}

/// `--describe`: one line of JSON the kit reads instead of `--version`'s words.
#[test]
fn describe_prints_one_line_of_json_naming_the_release_and_its_features() {
    let out = Command::new(BIN).arg("--describe").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["contract"], 1);
    assert_eq!(v["name"], "tribist");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["releaseId"], commit().as_str());
    for feature in [
        "env-file",
        "check-config",
        "handover",
        "failure",
        "address-file",
    ] {
        assert!(
            v["features"].as_array().unwrap().contains(&feature.into()),
            "{feature}: {text}"
        );
    }
    let out = Command::new(BIN)
        .args(["--describe", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// `TRIBIST_ADDRESS_FILE`: the preflight learns the port the kernel chose from a file, not
/// from a log line.
#[test]
fn the_address_file_names_the_port_bound_for_port_0() {
    let dir = TempDir::new("address");
    let file = dir.path().join("address");
    let server = Server::builder(&Pg::shared().url)
        .env("TRIBIST_ADDRESS_FILE", file.to_str().unwrap())
        .env("TRIBIST_LOG_LEVEL", "error") // no "listening on" line to read
        .dir(dir)
        .spawn_raw();
    let (_process, dir, _log) = server;
    let text = wait_for("the address file", 10 * SECOND, || {
        fs::read_to_string(&file).ok()
    });
    assert!(text.ends_with('\n'), "{text:?}");
    let addr: std::net::SocketAddr = text.trim_end().parse().unwrap();
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    assert_ne!(addr.port(), 0);
    assert_eq!(http::get(addr, "/health").unwrap().status, 200);
    // Written whole (a temporary file renamed over it): nothing else is left beside it.
    let mut names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["PID", "address", "server.log"]);
}

#[test]
fn an_address_file_that_cannot_be_written_stops_the_start_naming_it() {
    let (mut process, _dir, log) = Server::builder(&Pg::shared().url)
        .env("TRIBIST_ADDRESS_FILE", "/nonexistent-tribist/address")
        .spawn_raw();
    let status = wait_for("the server to exit", 10 * SECOND, || process.try_wait());
    let text = fs::read_to_string(log).unwrap();
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(
        text.contains("cannot write the address file /nonexistent-tribist/address"),
        "{text}"
    );
}

#[test]
fn libpq_variables_work_when_database_url_is_unset() {
    let pg = Pg::shared();
    let (process, dir, _log) = Server::builder("")
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", &pg.port.to_string())
        .env("PGUSER", "tribist")
        .env("PGPASSWORD", PASSWORD)
        .env("PGDATABASE", "tribist")
        .spawn_raw();
    drop(process);
    drop(dir);
    let server = Server::builder("")
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", &pg.port.to_string())
        .env("PGUSER", "tribist")
        .env("PGPASSWORD", PASSWORD)
        .env("PGDATABASE", "tribist")
        .spawn();
    assert_eq!(server.get("/health").status, 200);
}

#[test]
fn malformed_http_gets_400_and_the_server_keeps_serving() {
    let server = Server::start();
    for raw in [
        &b"NONSENSE\r\n\r\n"[..],
        b"GET /health HTTP/1.1\r\nBad Header Line\r\n\r\n",
        b"\x00\x01\x02\r\n\r\n",
    ] {
        let r = server.send(raw);
        assert_eq!(r.status, 400, "{raw:?}");
    }
    assert_eq!(server.get("/health").status, 200);
}

#[test]
fn journald_lines_carry_priorities_and_no_timestamps() {
    let closed = free_port();
    let url = format!("postgres://tribist:{PASSWORD}@127.0.0.1:{closed}/tribist");
    let server = Server::builder(&url)
        .env("JOURNAL_STREAM", "8:12345")
        .spawn();
    assert_eq!(server.get("/health").status, 503);
    let log = wait_for("the warning line", 5 * SECOND, || {
        let log = server.log();
        log.contains("check failing").then_some(log)
    });
    assert!(
        log.lines().any(|l| l.starts_with("<6>[INFO] listening on")),
        "{log}"
    );
    assert!(
        log.lines().any(|l| l.starts_with("<4>[WARN] database")),
        "{log}"
    );
    assert!(log.lines().all(|l| l.starts_with('<')), "{log}");
}

/// Opens (and keeps) connections until the server exits; returns how it exited.
fn connect_until_exit(server: &mut Server) -> std::process::ExitStatus {
    let mut conns = Vec::new();
    let addr = server.addr;
    wait_for("the server to exit", 20 * SECOND, || {
        if let Ok(c) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
            conns.push(c);
        }
        server.exited()
    })
}

#[test]
fn dead_accept_thread_makes_the_server_exit_nonzero() {
    // Few descriptors: connections exhaust them, accept(2) fails with EMFILE, and tiny_http's
    // accept thread ends for good. The server must notice and exit, not linger.
    let mut server = Server::builder(&Pg::shared().url)
        .wrapper("ulimit -n 40 && exec \"$0\"")
        .spawn();
    let status = connect_until_exit(&mut server);
    assert_eq!(status.code(), Some(1), "{}", server.log());
    let log = server.log();
    assert!(log.contains("accept thread died"), "{log}");
    assert!(log.contains("LimitNOFILE"), "{log}");
}

#[test]
fn out_of_threads_the_server_exits_nonzero_too() {
    // RLIMIT_NPROC does not apply to root: run as nobody, with room for ~30 threads. tiny_http
    // then fails to spawn a connection thread and panics in its accept thread.
    assert_eq!(
        Command::new("id").arg("-u").output().unwrap().stdout,
        b"0\n",
        "this test needs root (runuser)"
    );
    let dir = TempDir::new("nproc");
    assert!(Command::new("chown")
        .args(["nobody", dir.path().to_str().unwrap()])
        .status()
        .unwrap()
        .success());
    let mut server = Server::builder(&Pg::shared().url)
        .dir(dir)
        .wrapper("exec runuser -u nobody -- prlimit --nproc=30 \"$0\"")
        .spawn();
    let status = connect_until_exit(&mut server);
    assert_eq!(status.code(), Some(1), "{}", server.log());
    assert!(server.log().contains("TasksMax"), "{}", server.log());
}

#[test]
fn stalled_database_on_an_open_connection_gives_503_then_recovers() {
    let pg = Pg::start_new("stall");
    let server = Server::builder(&pg.url)
        .env("TRIBIST_WORKERS", "1")
        .env("TRIBIST_DB_TIMEOUT", "1s")
        .spawn();
    assert_eq!(server.get("/health").status, 200);
    let pm = fs::read_to_string(pg.dir.path().join("data/postmaster.pid")).unwrap();
    let pm = pm.lines().next().unwrap().to_string();
    let freeze = |sig: &str| {
        // The postmaster and every backend: the open connection's backend stops answering.
        assert!(Command::new("pkill")
            .args([sig, "-P", &pm])
            .status()
            .unwrap()
            .success());
        assert!(Command::new("kill")
            .args([sig, &pm])
            .status()
            .unwrap()
            .success());
    };
    freeze("-STOP");
    let start = Instant::now();
    let r = server.get("/health");
    let took = start.elapsed();
    freeze("-CONT");
    assert_eq!(r.status, 503, "{r:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let output = r.json()["output"].as_str().unwrap().to_string();
    assert!(
        output.contains("no answer within 1s on an open connection"),
        "{output}"
    );
    wait_for("/health to pass again", 10 * SECOND, || {
        (server.get("/health").status == 200).then_some(())
    });
}

fn proc_count(pid: u32, what: &str) -> usize {
    match what {
        "threads" => fs::read_dir(format!("/proc/{pid}/task")).unwrap().count(),
        _ => fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count(),
    }
}

#[test]
fn hundred_database_outages_leak_no_thread_descriptor_or_connection() {
    let pg = Pg::start_new("hundred");
    let server = Server::builder(&pg.url)
        .env("TRIBIST_WORKERS", "2")
        .env("TRIBIST_DB_TIMEOUT", "1s")
        .spawn();
    let healthy = || {
        wait_for("/health 200", 10 * SECOND, || {
            (server.get("/health").status == 200).then_some(())
        })
    };
    healthy();
    healthy();
    let (threads, fds) = (
        proc_count(server.pid(), "threads"),
        proc_count(server.pid(), "fds"),
    );
    for cycle in 0..100 {
        pg.stop();
        let start = Instant::now();
        let r = server.get("/health");
        assert_eq!(r.status, 503, "cycle {cycle}: {r:?}");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "cycle {cycle}: {:?}",
            start.elapsed()
        );
        pg.start();
        healthy();
    }
    // Both workers reconnect, and nothing accumulated on either side.
    for _ in 0..4 {
        assert_eq!(server.get("/health").status, 200);
    }
    let (threads_after, fds_after) = (
        proc_count(server.pid(), "threads"),
        proc_count(server.pid(), "fds"),
    );
    eprintln!("after 100 outages: threads {threads} -> {threads_after}, fds {fds} -> {fds_after}");
    assert!(
        threads_after <= threads + 2,
        "threads {threads} -> {threads_after}"
    );
    assert!(fds_after <= fds + 2, "fds {fds} -> {fds_after}");
    let mut admin = postgres::Client::connect(&pg.url, postgres::NoTls).unwrap();
    let n: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tribist'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(n <= 2, "{n} server connections for 2 workers");
}

/// The server started from a copy of the binary at `DIR/server`, which a test can replace.
fn server_from_copy() -> Server {
    server_from_copy_with(&[])
}

/// `server_from_copy` with more variables in its environment.
fn server_from_copy_with(env: &[(&str, &str)]) -> Server {
    let dir = TempDir::new("handover");
    fs::copy(BIN, dir.path().join("server")).unwrap();
    env.iter()
        .fold(Server::builder(&Pg::shared().url), |b, (k, v)| b.env(k, v))
        .dir(dir)
        .wrapper("exec \"$PWD/server\"")
        .spawn()
}

/// Replaces the server's binary (`DIR/server`) with the shell script `script`, atomically.
fn replace_binary(server: &Server, script: &str) {
    let tmp = server.dir.path().join("server.tmp");
    fs::write(&tmp, script).unwrap();
    Command::new("chmod")
        .args(["755", tmp.to_str().unwrap()])
        .status()
        .unwrap();
    fs::rename(&tmp, server.dir.path().join("server")).unwrap();
}

/// The pid `PID` names, once it differs from `old`.
fn pid_other_than(server: &Server, old: u32) -> u32 {
    wait_for("PID to name the successor", 10 * SECOND, || {
        let pid: u32 = fs::read_to_string(server.dir.path().join("PID"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        (pid != old).then_some(pid)
    })
}

/// Kills a successor (not our child: the server's) when dropped, with whatever it started:
/// the server starts each successor in a process group of its own, named by its pid.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill(2) takes no memory.
        unsafe { libc::kill(-(self.0 as libc::pid_t), libc::SIGKILL) };
    }
}

/// Runs keep-alive and new-connection clients against `addr` until `stop`; returns
/// (answers, failures as text).
fn clients(
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<std::thread::JoinHandle<(usize, Vec<String>)>> {
    use std::sync::atomic::Ordering;
    (0..6)
        .map(|i| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut answers, mut failures) = (0, Vec::new());
                let mut keep = KeepAlive::new(addr);
                while !stop.load(Ordering::SeqCst) {
                    let status = if i < 4 {
                        keep.get("/health")
                    } else {
                        http::get(addr, "/health")
                    }
                    .map(|r| r.status);
                    match status {
                        Ok(200) => answers += 1,
                        Ok(s) => failures.push(format!("HTTP {s}")),
                        Err(e) => {
                            failures.push(e.to_string());
                            keep = KeepAlive::new(addr);
                        }
                    }
                }
                (answers, failures)
            })
        })
        .collect()
}

#[test]
fn sigusr2_hands_over_to_the_new_binary_and_no_request_fails() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let mut server = server_from_copy();
    let old = server.pid();
    let stop = Arc::new(AtomicBool::new(false));
    let running = clients(server.addr, stop.clone());
    std::thread::sleep(SECOND / 5); // load before, during and after the handover
    server.signal("USR2");
    let new = pid_other_than(&server, old);
    let _successor = KillOnDrop(new);
    let status = server.wait_exit(10 * SECOND);
    std::thread::sleep(SECOND / 5);
    stop.store(true, Ordering::SeqCst);
    let (mut answers, mut failures) = (0, Vec::new());
    for client in running {
        let (a, f) = client.join().unwrap();
        answers += a;
        failures.extend(f);
    }
    let log = server.log();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(
        failures.is_empty(),
        "{} failures: {failures:?}\n{log}",
        failures.len()
    );
    assert!(answers > 100, "only {answers} answers");
    assert!(
        log.contains(&format!("handover: pid {new} serves")),
        "{log}"
    );
    assert!(
        log.contains(&format!("pid {new}, 16 workers, socket handed over")),
        "{log}"
    );
    // The successor serves alone now, from the same socket.
    assert_eq!(server.get("/health").status, 200);
    // And it can hand over in turn.
    Command::new("kill")
        .args(["-USR2", &new.to_string()])
        .status()
        .unwrap();
    let third = pid_other_than(&server, new);
    let _third = KillOnDrop(third);
    assert_eq!(server.get("/health").status, 200);
}

#[test]
fn failed_handover_keeps_the_old_process_serving() {
    let server = server_from_copy();
    let old = server.pid();
    replace_binary(
        &server,
        "#!/bin/sh\necho 'panic: cannot start' >&2\nexit 3\n",
    );
    server.signal("USR2");
    wait_for("the handover to fail", 10 * SECOND, || {
        server
            .log()
            .contains("handover attempt 1 failed")
            .then_some(())
    });
    let log = server.log();
    assert!(log.contains("ended before it was ready"), "{log}");
    assert!(log.contains("exit status: 3"), "{log}");
    assert!(
        log.contains("panic: cannot start"),
        "the successor's own words: {log}"
    );
    assert_eq!(server.get("/health").status, 200);
    let pid = fs::read_to_string(server.dir.path().join("PID")).unwrap();
    assert_eq!(pid.trim(), old.to_string());
    // Fixed binary: the next attempt works.
    let tmp = server.dir.path().join("server.tmp");
    fs::copy(BIN, &tmp).unwrap();
    fs::rename(&tmp, server.dir.path().join("server")).unwrap();
    server.signal("USR2");
    let new = pid_other_than(&server, old);
    let _successor = KillOnDrop(new);
    assert_eq!(server.get("/health").status, 200);
}

/// What the reload step (tribist-host on-reload) reads: `STATUS=` starts with `handover=STATE attempt=N`,
/// whatever the words after it say.
#[test]
fn a_failed_handover_says_so_in_status_tokens_with_its_attempt() {
    use std::os::unix::net::UnixDatagram;
    let notify_dir = TempDir::new("notify");
    let sock = notify_dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&sock).unwrap();
    notify.set_read_timeout(Some(10 * SECOND)).unwrap();
    let server = server_from_copy_with(&[("NOTIFY_SOCKET", sock.to_str().unwrap())]);
    let mut buf = [0u8; 1024];
    let mut recv = || {
        let n = notify.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    let ready = recv();
    assert!(
        ready.starts_with("READY=1\nSTATUS=handover=ready attempt=0; serving on "),
        "{ready}"
    );
    replace_binary(&server, "#!/bin/sh\nexit 3\n");
    for attempt in 1..=2 {
        server.signal("USR2");
        let started = recv();
        assert!(
            started.starts_with(&format!(
                "STATUS=handover=started attempt={attempt}; handing over to "
            )),
            "{started}"
        );
        let failed = recv();
        assert!(
            failed.starts_with(&format!(
                "STATUS=handover=failed attempt={attempt}; serving on "
            )),
            "{failed}"
        );
        // The words for people (and for kits that predate the tokens) are still there.
        assert!(
            failed.contains(&format!(
                "SIGUSR2 hands over); handover attempt {attempt} failed: "
            )),
            "{failed}"
        );
        assert!(!failed.contains('\n'), "one line: {failed:?}");
    }
    assert_eq!(server.get("/health").status, 200);
}

#[test]
fn sigterm_while_a_successor_starts_stops_it_and_exits_at_once() {
    let mut server = server_from_copy();
    // A successor that never gets ready and starts a process of its own.
    replace_binary(&server, "#!/bin/sh\nsleep 600 &\nexec sleep 601\n");
    server.signal("USR2");
    let group: u32 = wait_for("the successor to start", 10 * SECOND, || {
        let log = server.log();
        let rest = log.split("handover: started pid ").nth(1)?;
        rest.split_whitespace().next()?.parse().ok()
    });
    // Should the server fail to stop them, the sleeps end with the test all the same.
    let _group = KillOnDrop(group);
    let start = Instant::now();
    server.signal("TERM");
    let status = server.wait_exit(5 * SECOND);
    let took = start.elapsed();
    assert_eq!(status.code(), Some(0), "{}", server.log());
    assert!(took < 2 * SECOND, "exit took {took:?}: {}", server.log());
    assert!(server
        .log()
        .contains(&format!("handover: stopping pid {group}")));
    // The successor and what it started are gone (or at most unreaped).
    wait_for("the successor's process group to end", 5 * SECOND, || {
        let out = Command::new("pgrep")
            .args(["-g", &group.to_string()])
            .output()
            .unwrap();
        let alive = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter(|pid| {
                fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
            })
            .count();
        (alive == 0).then_some(())
    });
}

/// Concurrent `/health` requests share database round trips: under 16 concurrent clients the
/// server runs fewer checks than it answers, and an answer says how many it served.
#[test]
fn concurrent_health_requests_share_database_checks() {
    let mut server = Server::builder(&Pg::shared().url)
        .env("TRIBIST_WORKERS", "4")
        .spawn();
    let addr = server.addr;
    let most = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..16)
            .map(|_| {
                scope.spawn(move || {
                    (0..40)
                        .map(|_| {
                            let r = http::get(addr, "/health").unwrap();
                            assert_eq!(r.status, 200, "{r:?}");
                            r.json()["checks"]["postgres:responseTime"][0]["answeredRequests"]
                                .as_u64()
                                .unwrap()
                        })
                        .max()
                        .unwrap()
                })
            })
            .collect();
        clients
            .into_iter()
            .map(|c| c.join().unwrap())
            .max()
            .unwrap()
    });
    assert!(most >= 2, "no check answered more than one request");
    server.signal("TERM");
    assert_eq!(server.wait_exit(10 * SECOND).code(), Some(0));
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("health: ") && l.contains("database checks"))
        .unwrap_or_else(|| panic!("no totals line in the log:\n{log}"));
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(numbers.len(), 2, "{line}");
    let (answers, checks) = (numbers[0], numbers[1]);
    assert_eq!(answers, 16 * 40, "{line}");
    assert!(checks < answers, "{line}");
}

/// A proxy that accepts and holds the connection (TCP keepalives answered) never lets a
/// connect attempt end. Kept for ever, the attempt kept /health failing after the proxy had
/// recovered; now an attempt older than 4 timeouts is abandoned and a new one made.
#[test]
fn a_connect_attempt_held_by_a_hung_proxy_is_abandoned_and_health_recovers() {
    let target = format!("127.0.0.1:{}", Pg::shared().port).parse().unwrap();
    let (proxy, open) = Silent::then_forwarding(target);
    let server = Server::builder(&proxy.url())
        .env("TRIBIST_DB_TIMEOUT", "300ms")
        .spawn();
    assert_eq!(server.get("/health").status, 503);
    wait_for("an attempt held by the proxy", 5 * SECOND, || {
        (proxy.accepted() >= 1).then_some(())
    });
    open.store(true, std::sync::atomic::Ordering::SeqCst);
    wait_for("/health to recover", 15 * SECOND, || {
        (server.get("/health").status == 200).then_some(())
    });
    assert!(
        server.log().contains("abandoning it and trying again"),
        "{}",
        server.log()
    );
}

/// The warm-up connection made at the start waits, finished, for the first /health. That
/// probe came after four timeouts, so the attempt counted as stuck: it was abandoned with a
/// warning ("stuck for 12.0s") and a second connection made (486 ms instead of 5 ms with TLS).
/// Now a finished attempt is taken however old: no warning, one connection.
#[test]
fn the_first_health_after_idle_time_takes_the_warm_up_connection() {
    let server = Server::builder(&Pg::shared().url)
        .env("TRIBIST_DB_TIMEOUT", "1s")
        .env("TRIBIST_LOG_LEVEL", "debug")
        .spawn();
    let connects = |log: &str| log.matches("connected to database").count();
    wait_for("the warm-up connection", 5 * SECOND, || {
        (connects(&server.log()) == 1).then_some(())
    });
    // Deliberately idle for more than four timeouts (when a running attempt counts as stuck).
    std::thread::sleep(5 * SECOND);
    let asked = Instant::now();
    let r = server.get("/health");
    let took = asked.elapsed();
    assert_eq!(r.status, 200, "{r:?}");
    let log = server.log();
    assert!(!log.contains("stuck"), "{log}");
    assert_eq!(connects(&log), 1, "{log}");
    eprintln!("first /health after 5 s idle: {took:?}");
}

/// The warm-up attempt failed (the database was down at the start) and nobody asked since:
/// that failure predates the first /health, which must not answer with it once the database
/// is up. It makes a new attempt instead.
#[test]
fn a_warm_up_failure_older_than_the_first_health_is_not_its_answer() {
    let pg = Pg::start_new("late");
    pg.stop();
    let server = Server::builder(&pg.url).spawn();
    // The warm-up is refused within milliseconds; starting the cluster takes far longer.
    pg.start();
    let r = server.get("/health");
    assert_eq!(r.status, 200, "{r:?}");
}

/// A stalled database must not hold every worker: once a check has waited half the timeout
/// with none succeeding since, /health fails at once, and /livez (the watchdog's probe) is
/// answered meanwhile, within the database timeout. Before, 64 clients kept all 16 workers
/// waiting a whole timeout each and /livez waited 5 s behind them.
#[test]
fn a_stalled_database_leaves_workers_for_livez() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let silent = Silent::start();
    let server = Server::builder(&silent.url())
        .env("TRIBIST_DB_TIMEOUT", "2s")
        .spawn();
    let addr = server.addr;
    let stop = AtomicBool::new(false);
    let slowest = std::thread::scope(|scope| {
        for _ in 0..64 {
            scope.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    let _ = http::get(addr, "/health");
                }
            });
        }
        // The first wave may wait up to half the timeout; after that, the stall is known.
        std::thread::sleep(3 * SECOND / 2);
        let mut slowest = Duration::ZERO;
        for _ in 0..20 {
            let asked = Instant::now();
            assert_eq!(http::get(addr, "/livez").unwrap().status, 200);
            slowest = slowest.max(asked.elapsed());
            std::thread::sleep(SECOND / 20);
        }
        stop.store(true, Ordering::SeqCst);
        slowest
    });
    // Each new check after a stall opens a window of half the timeout (1 s) in which requests
    // wait for it; /livez may wait that long, never the seconds it waited before.
    assert!(
        slowest < 2 * SECOND,
        "/livez took {slowest:?} during the stall"
    );
    let r = server.get("/health");
    assert_eq!(r.status, 503);
}
