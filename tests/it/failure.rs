//! Whether a database failure is definite, as the deploy kit reads it: `"failure"` in
//! `/health`'s 503 body (`configuration` or `unavailable`) and `--check-config`'s exit code
//! (4 or 5), so that a preflight ends at once on a failure that waiting cannot fix.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::util::pg::{Pg, Silent, PASSWORD};
use crate::util::server::{Server, BIN};
use crate::util::{free_port, TempDir};

const CONFIGURATION: &str = r#""failure":"configuration""#;
const UNAVAILABLE: &str = r#""failure":"unavailable""#;

fn wrong_password() -> String {
    Pg::shared().url.replace(PASSWORD, "not-the-password-xyz")
}

fn unknown_database() -> String {
    let url = &Pg::shared().url;
    let (base, _db) = url.rsplit_once('/').unwrap();
    format!("{base}/no_such_database")
}

fn refused_port() -> String {
    format!(
        "postgres://tribist:{PASSWORD}@127.0.0.1:{}/tribist",
        free_port()
    )
}

/// Starts a server on `url` and asks `/health` once it listens: the status, the body, and
/// the time from the start to the answer.
fn first_health(url: &str) -> (u16, String, Duration) {
    let started = Instant::now();
    let server = Server::builder(url).spawn();
    let r = server.get("/health");
    (r.status, r.body, started.elapsed())
}

fn assert_failure(body: &str, text: &str, kind: &str) {
    assert!(body.contains(text), "{body}");
    let b: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(b["failure"], kind, "{body}");
    assert_eq!(
        b["checks"]["postgres:responseTime"][0]["failure"], kind,
        "{body}"
    );
}

/// The preflight used to wait its whole 10 s on a wrong password, known in 60 ms (51 ms here;
/// the bound leaves a loaded 2-core CI machine room, and is still half the preflight).
#[test]
fn a_wrong_password_is_a_configuration_failure_at_once() {
    let (status, body, elapsed) = first_health(&wrong_password());
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("password authentication failed"), "{body}");
    assert_failure(&body, CONFIGURATION, "configuration");
    eprintln!("wrong password: 503 configuration {elapsed:?} after the start");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
}

#[test]
fn an_unknown_database_or_role_is_a_configuration_failure() {
    let (status, body, _) = first_health(&unknown_database());
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("3D000"), "{body}");
    assert_failure(&body, CONFIGURATION, "configuration");
    let role = Pg::shared().url.replace("//tribist:", "//no_such_role:");
    let (status, body, _) = first_health(&role);
    assert_eq!(status, 503, "{body}");
    assert_failure(&body, CONFIGURATION, "configuration");
}

#[test]
fn a_refused_port_or_a_stopped_cluster_is_unavailable() {
    let (status, body, _) = first_health(&refused_port());
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("refused"), "{body}");
    assert_failure(&body, UNAVAILABLE, "unavailable");

    let pg = Pg::start_new("stopped");
    let server = Server::builder(&pg.url).spawn();
    assert_eq!(server.get("/health").status, 200);
    assert!(!server.get("/health").body.contains("failure"));
    pg.stop();
    let r = server.get("/health");
    assert_eq!(r.status, 503, "{r:?}");
    assert_failure(&r.body, UNAVAILABLE, "unavailable");
}

#[test]
fn a_silent_database_host_is_unavailable() {
    let silent = Silent::start();
    let server = Server::builder(&silent.url())
        .env("TRIBIST_DB_TIMEOUT", "300ms")
        .spawn();
    let r = server.get("/health");
    assert_eq!(r.status, 503, "{r:?}");
    assert_failure(&r.body, UNAVAILABLE, "unavailable");
}

/// `server --check-config FILE` as the kit runs it: an environment file, nothing else set.
fn check_config(url: &str, extra: &[&str]) -> (Output, Duration) {
    let dir = TempDir::new("checkcfg");
    let file = dir.path().join("env");
    let mut text = format!("DATABASE_URL={url}\nTRIBIST_DB_TIMEOUT=500ms\n");
    for line in extra {
        text.push_str(line);
        text.push('\n');
    }
    std::fs::write(&file, text).unwrap();
    let started = Instant::now();
    let out = Command::new(BIN)
        .arg("--check-config")
        .arg(&file)
        .env_clear()
        .output()
        .unwrap();
    (out, started.elapsed())
}

#[test]
fn check_config_exit_codes_tell_definite_from_transient() {
    let silent = Silent::start();
    let cases: Vec<(String, &[&str], i32, &str)> = vec![
        (Pg::shared().url.clone(), &[], 0, "configuration OK"),
        (
            Pg::shared().url.clone(),
            &["TRIBIST_WORKERS=0"],
            2,
            "TRIBIST_WORKERS",
        ),
        (wrong_password(), &[], 4, "password authentication failed"),
        (unknown_database(), &[], 4, "no_such_database"),
        (refused_port(), &[], 5, "refused"),
        (silent.url(), &[], 5, "no answer within 0.5s"),
    ];
    for (url, extra, code, says) in cases {
        let (out, elapsed) = check_config(&url, extra);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(code), "{url} {extra:?}: {text}");
        assert!(text.contains(says), "{url}: {text}");
        assert!(
            !text.contains(PASSWORD) && !text.contains("not-the-password"),
            "{text}"
        );
        match code {
            4 => {
                assert!(text.contains("waiting will not"), "{text}");
                eprintln!("--check-config exit 4 in {elapsed:?}");
                assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
            }
            5 => assert!(text.contains("may change by waiting"), "{text}"),
            _ => {}
        }
    }
}
