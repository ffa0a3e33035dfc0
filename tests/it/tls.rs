//! TLS to PostgreSQL as libpq means `sslmode`: the real binary against a cluster with
//! `ssl = on` and a certificate made for the test (tests/support/pg.sh --tls).

use std::path::PathBuf;
use std::process::Command;

use crate::util::pg::{Pg, PASSWORD};
use crate::util::server::{Server, BIN};

fn tls_pg() -> &'static Pg {
    Pg::shared_tls()
}

fn ca(name: &str) -> String {
    let path: PathBuf = tls_pg().dir.path().join("tls").join(name);
    path.to_str().unwrap().to_string()
}

/// `/health`'s status and its postgres check.
fn health(server: &Server) -> (u16, serde_json::Value) {
    let r = server.get("/health");
    let check = r.json()["checks"]["postgres:responseTime"][0].clone();
    (r.status, check)
}

fn health_of(url: &str) -> (u16, serde_json::Value) {
    health(&Server::builder(url).spawn())
}

#[test]
fn require_encrypts() {
    let (status, check) = health_of(&format!("{}?sslmode=require", tls_pg().url));
    assert_eq!(status, 200, "{check}");
    assert_eq!(check["encrypted"], true, "{check}");
}

#[test]
fn the_default_prefer_encrypts_when_the_server_offers_it() {
    let (status, check) = health_of(&tls_pg().url);
    assert_eq!(status, 200, "{check}");
    assert_eq!(check["encrypted"], true, "{check}");
}

#[test]
fn disable_still_works_unencrypted() {
    let (status, check) = health_of(&format!("{}?sslmode=disable", tls_pg().url));
    assert_eq!(status, 200, "{check}");
    assert_eq!(check["encrypted"], false, "{check}");
}

#[test]
fn verify_full_with_the_right_ca_works_by_address_and_by_name() {
    let pg = tls_pg();
    let by_ip = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        pg.url,
        ca("ca.pem")
    );
    let (status, check) = health_of(&by_ip);
    assert_eq!(status, 200, "{check}");
    assert_eq!(check["encrypted"], true, "{check}");
    let by_name = format!(
        "postgres://tribist:{PASSWORD}@localhost:{}/tribist?sslmode=verify-full&sslrootcert={}",
        pg.port,
        ca("ca.pem")
    );
    let (status, check) = health_of(&by_name);
    assert_eq!(status, 200, "{check}");
}

#[test]
fn verify_full_with_a_wrong_ca_is_503_saying_why() {
    let url = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        tls_pg().url,
        ca("other-ca.pem")
    );
    let (status, check) = health_of(&url);
    assert_eq!(status, 503, "{check}");
    let output = check["output"].as_str().unwrap();
    assert!(output.contains("invalid peer certificate"), "{output}");
    assert!(output.contains("sslmode=verify-full"), "{output}");
    assert!(output.contains("other-ca.pem"), "{output}");
    assert!(!output.contains(PASSWORD), "{output}");
    // Definite: a certificate does not change by waiting.
    assert_eq!(check["failure"], "configuration", "{check}");
}

/// The certificate is for localhost and 127.0.0.1; `hostaddr` connects to it under another
/// name. verify-full refuses; verify-ca checks only the chain.
#[test]
fn a_wrong_host_name_fails_verify_full_but_not_verify_ca() {
    let pg = tls_pg();
    let url = |mode: &str| {
        format!(
            "postgres://tribist:{PASSWORD}@wrong.example:{}/tribist?hostaddr=127.0.0.1&sslmode={mode}&sslrootcert={}",
            pg.port,
            ca("ca.pem")
        )
    };
    let (status, check) = health_of(&url("verify-full"));
    assert_eq!(status, 503, "{check}");
    let output = check["output"].as_str().unwrap();
    assert!(output.contains("not valid for name"), "{output}");
    assert_eq!(check["failure"], "configuration", "{check}");
    let (status, check) = health_of(&url("verify-ca"));
    assert_eq!(status, 200, "{check}");
    assert_eq!(check["encrypted"], true, "{check}");
    // verify-ca still checks the chain.
    let wrong_ca = url("verify-ca").replace("/ca.pem", "/other-ca.pem");
    assert_eq!(health_of(&wrong_ca).0, 503);
}

#[test]
fn require_against_a_server_without_tls_is_503() {
    let (status, check) = health_of(&format!("{}?sslmode=require", Pg::shared().url));
    assert_eq!(status, 503, "{check}");
    let output = check["output"].as_str().unwrap();
    assert!(output.contains("does not support TLS"), "{output}");
    // prefer falls back to plain text there, and says so.
    let (status, check) = health_of(&Pg::shared().url);
    assert_eq!(status, 200, "{check}");
    assert_eq!(check["encrypted"], false, "{check}");
}

#[test]
fn libpq_variables_pgsslmode_and_pgsslrootcert() {
    let pg = tls_pg();
    let port = pg.port.to_string();
    let root = ca("ca.pem");
    let server = Server::builder("")
        .env("PGHOST", "localhost")
        .env("PGPORT", &port)
        .env("PGUSER", "tribist")
        .env("PGPASSWORD", PASSWORD)
        .env("PGDATABASE", "tribist")
        .env("PGSSLMODE", "verify-full")
        .env("PGSSLROOTCERT", &root)
        .spawn();
    let (status, check) = health(&server);
    assert_eq!(status, 200, "{check}");
    assert_eq!(check["encrypted"], true, "{check}");
}

/// Bad TLS settings stop the start with exit 2 and the variable to fix, never the password.
#[test]
fn bad_tls_settings_are_configuration_errors() {
    let url = &tls_pg().url;
    let cases = [
        (
            format!("{url}?sslmode=verify_full"),
            "DATABASE_URL",
            "verify-full",
        ),
        (
            format!("{url}?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem"),
            "DATABASE_URL",
            "/nonexistent/ca.pem",
        ),
        (
            format!("{url}?sslcert=/x.pem"),
            "DATABASE_URL",
            "not supported",
        ),
        (
            format!("{url}?sslmode=require&sslrootcert=system"),
            "DATABASE_URL",
            "verify-full",
        ),
        (
            format!("{url}?sslmode=verify-ca"),
            "DATABASE_URL",
            "sslrootcert=PATH",
        ),
        (
            format!("host=db user=tribist sslmode= password={PASSWORD}"),
            "DATABASE_URL",
            "sslmode",
        ),
    ];
    for (url, var, says) in cases {
        let out = Command::new(BIN)
            .arg("--check-config")
            .env_clear()
            .env("DATABASE_URL", &url)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{url}: {stderr}");
        assert!(
            stderr.contains(var) && stderr.contains(says),
            "{url}: {stderr}"
        );
        assert!(!stderr.contains(PASSWORD), "{stderr}");
    }
    let out = Command::new(BIN)
        .arg("--check-config")
        .env_clear()
        .env("PGHOST", "127.0.0.1")
        .env("PGUSER", "tribist")
        .env("PGSSLMODE", "sometimes")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("PGSSLMODE"), "{stderr}");
}

/// `hostaddr` without a host name connects over TCP: it must not count as a Unix socket
/// (which is never encrypted), and its address is the name TLS verifies.
#[test]
fn hostaddr_without_a_host_is_verified_against_the_address() {
    let tls = tls_pg();
    let conn = |port: u16| {
        format!(
            "hostaddr=127.0.0.1 port={port} user=tribist password={PASSWORD} dbname=tribist \
             sslmode=verify-full sslrootcert={}",
            ca("ca.pem")
        )
    };
    let (status, check) = health_of(&conn(tls.port));
    assert_eq!(status, 200, "{check}");
    assert_eq!(check["encrypted"], true, "{check}");
    // Against a server without TLS: refused, never plain text.
    let (status, check) = health_of(&conn(Pg::shared().port));
    assert_eq!(status, 503, "{check}");
}

/// PGSSLMODE is the default of a DATABASE_URL that names no sslmode, as in libpq.
#[test]
fn pgsslmode_applies_to_a_url_without_sslmode() {
    let server = Server::builder(&Pg::shared().url)
        .env("PGSSLMODE", "require")
        .spawn();
    let (status, check) = health(&server);
    assert_eq!(status, 503, "{check}");
    assert!(
        check["output"]
            .as_str()
            .unwrap()
            .contains("does not support TLS"),
        "{check}"
    );
}
