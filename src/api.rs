//! The HTTP API as plain functions: request line in, `Reply` out.
//!
//! Nothing here touches a socket or a database, so routing, status codes and the JSON shapes
//! are unit-tested directly; `server.rs` adapts tiny_http to this and `db.rs` supplies the
//! database check through a closure.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::build;

pub const HEALTH_JSON: &str = "application/health+json";
pub const JSON: &str = "application/json";

/// A response before it is written to the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    /// Extra headers besides Content-Type.
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl Reply {
    fn json(status: u16, content_type: &'static str, body: &Value) -> Reply {
        let mut text = body.to_string();
        text.push('\n');
        Reply::json_text(status, content_type, text)
    }

    /// A JSON body already written out (ending in a newline), never cached.
    fn json_text(status: u16, content_type: &'static str, body: String) -> Reply {
        Reply {
            status,
            content_type,
            headers: vec![("Cache-Control", "no-store".into())],
            body,
        }
    }

    /// The JSON error every non-2xx path answers with.
    pub fn error(status: u16, message: &str) -> Reply {
        Reply::json(status, JSON, &json!({ "status": status, "error": message }))
    }
}

/// Whether a failed database check can pass by waiting. This is a contract: the deploy kit
/// reads it from `/health`'s 503 body (`"failure":"configuration"` or
/// `"failure":"unavailable"`) and from `server --check-config`'s exit code (4 or 5), to end a
/// preflight at once on a failure that waiting cannot fix. `server --describe` lists it as
/// `FAILURE_FEATURE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Definite: the database refused these settings (authentication failed, unknown database
    /// or role, no right to connect, a setting refused) or its TLS certificate failed
    /// verification. It stays so until someone changes the settings or the database.
    Configuration,
    /// Transient, or not known to be definite: the database is starting or shutting down,
    /// refuses connections, has too many, does not answer in time, or the network failed.
    Unavailable,
}

/// `Failure`'s name in `server --describe`.
pub const FAILURE_FEATURE: &str = "failure";

impl Failure {
    /// The value of `"failure"` in `/health`'s body.
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Configuration => "configuration",
            Failure::Unavailable => "unavailable",
        }
    }
}

/// Why a database check failed, and whether waiting can help.
#[derive(Debug, Clone, PartialEq)]
pub struct DbFailure {
    pub kind: Failure,
    /// A short reason, safe to show (never a password or connection string).
    pub reason: String,
}

impl DbFailure {
    pub fn new(kind: Failure, reason: impl Into<String>) -> DbFailure {
        DbFailure {
            kind,
            reason: reason.into(),
        }
    }

    /// A failure that may pass by waiting (or is not known to be definite).
    pub fn unavailable(reason: impl Into<String>) -> DbFailure {
        DbFailure::new(Failure::Unavailable, reason)
    }
}

impl std::fmt::Display for DbFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// What one database check found.
#[derive(Debug, Clone, PartialEq)]
pub struct DbOutcome {
    pub result: Result<(), DbFailure>,
    pub elapsed: Duration,
    /// Whether the connection the check ran on is encrypted (TLS); `None` without one.
    pub encrypted: Option<bool>,
    /// How many requests this one database round trip answered (single_flight.rs).
    pub answered: usize,
}

const ALLOW: &str = "GET, HEAD";

/// RFC 9110 `tchar`: what a header name may be made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The size of a request's header section as received (`name: value` and CRLF per line),
/// when it is larger than `limit` bytes: the request is then answered 431.
pub fn oversized_headers(headers: &[(&str, &str)], limit: usize) -> Option<usize> {
    let size: usize = headers.iter().map(|(n, v)| n.len() + 2 + v.len() + 2).sum();
    (size > limit).then_some(size)
}

/// The RFC 9112 rules that tiny_http 0.12 lets through: returns why the request must be
/// answered 400, or `None`. `headers` are (name, value) as received.
pub fn reject_reason(version: (u8, u8), headers: &[(&str, &str)]) -> Option<String> {
    fn named<'h>(
        headers: &'h [(&'h str, &'h str)],
        name: &'static str,
    ) -> impl Iterator<Item = &'h (&'h str, &'h str)> {
        headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
    }
    for (name, value) in headers {
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Some(format!(
                "header name {:?} is not a token (RFC 9110 5.1)",
                name.escape_debug().to_string()
            ));
        }
        if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Some(format!("control character in the {name} header"));
        }
    }
    match named(headers, "Host").count() {
        0 if version >= (1, 1) => return Some("HTTP/1.1 request without a Host header".into()),
        0 | 1 => {}
        _ => return Some("more than one Host header".into()),
    }
    let mut length: Option<&str> = None;
    for (_, value) in named(headers, "Content-Length") {
        for part in value.split(',').map(str::trim) {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Some(format!(
                    "invalid Content-Length {value:?}: only digits are allowed"
                ));
            }
            if part.parse::<u64>().is_err() {
                return Some(format!(
                    "invalid Content-Length {value:?}: too large a number"
                ));
            }
            match length {
                Some(seen) if seen.trim_start_matches('0') != part.trim_start_matches('0') => {
                    return Some("conflicting Content-Length values".into())
                }
                _ => length = Some(part),
            }
        }
    }
    let encodings: Vec<&str> = named(headers, "Transfer-Encoding")
        .map(|(_, v)| v.trim())
        .collect();
    if !encodings.is_empty() {
        if version < (1, 1) {
            return Some("Transfer-Encoding in an HTTP/1.0 request".into());
        }
        if length.is_some() {
            return Some("both Transfer-Encoding and Content-Length".into());
        }
        if encodings.len() > 1 || !encodings[0].eq_ignore_ascii_case("chunked") {
            return Some(format!(
                "unsupported Transfer-Encoding {:?}: only chunked",
                encodings.join(", ")
            ));
        }
    }
    None
}

/// Routes one request. `check_db` runs the database check; it is called only by `/health`.
pub fn handle(method: &str, url: &str, check_db: &mut dyn FnMut() -> DbOutcome) -> Reply {
    let path = url.split(['?', '#']).next().unwrap_or("");
    // A way for the tests to make a handler panic; compiled only into debug builds.
    #[cfg(debug_assertions)]
    if path == "/__test/panic" && std::env::var_os("TRIBIST_TEST_PANIC").is_some() {
        panic!("test panic requested through /__test/panic");
    }
    let known = matches!(path, "/health" | "/livez");
    if !known {
        return Reply::error(
            404,
            "not found: the endpoints are GET /health and GET /livez",
        );
    }
    if method != "GET" && method != "HEAD" {
        let mut reply = Reply::error(405, "method not allowed: use GET or HEAD");
        reply.headers.push(("Allow", ALLOW.into()));
        return reply;
    }
    match path {
        "/health" => health(&check_db(), SystemTime::now()),
        _ => livez(),
    }
}

/// `/livez`: the process answers; no dependency is checked. The body never changes, so it
/// is made once (building the JSON tree cost a fifth of a `/livez` request).
pub fn livez() -> Reply {
    static BODY: OnceLock<Reply> = OnceLock::new();
    BODY.get_or_init(|| {
        Reply::json(
            200,
            HEALTH_JSON,
            &json!({
                "status": "pass",
                "version": build::VERSION,
                "releaseId": build::COMMIT,
                "description": "tribist process liveness (no dependencies checked)",
            }),
        )
    })
    .clone()
}

/// A JSON string literal, escaped.
fn json_str(text: &str) -> String {
    Value::from(text).to_string()
}

/// `/health` in the shape of the IETF "Health Check Response Format for HTTP APIs" draft.
/// Written directly rather than through a `serde_json::Value` tree, which cost a quarter of a
/// `/health` request; only the reason needs escaping (the unit tests parse the result).
pub fn health(db: &DbOutcome, now: SystemTime) -> Reply {
    static CONSTANT: OnceLock<String> = OnceLock::new();
    let constant = CONSTANT.get_or_init(|| {
        format!(
            r#""version":{},"releaseId":{},"description":"tribist API server""#,
            json_str(build::VERSION),
            json_str(build::COMMIT)
        )
    });
    let ms = (db.elapsed.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0;
    let status = if db.result.is_ok() { "pass" } else { "fail" };
    let failed = db.result.as_ref().err().map(|f| {
        (
            json_str(&format!("postgres: {}", f.reason)),
            f.kind.as_str(),
        )
    });
    let mut body = String::with_capacity(512);
    // Writing to a String cannot fail.
    let _ = write!(
        body,
        r#"{{"status":"{status}",{constant},"checks":{{"postgres:responseTime":[{{"componentId":"postgres","componentType":"datastore","observedValue":{ms},"observedUnit":"ms","status":"{status}","time":"{}","answeredRequests":{}"#,
        rfc3339(now),
        db.answered
    );
    if let Some(encrypted) = db.encrypted {
        let _ = write!(body, r#","encrypted":{encrypted}"#);
    }
    if let Some((output, failure)) = &failed {
        // `"failure":"…"` exactly so, without spaces: the kit matches it as text.
        let _ = write!(
            body,
            r#","output":{output},"failure":"{failure}"}}]}},"output":{output},"failure":"{failure}"}}"#
        );
    } else {
        body.push_str("}]}}");
    }
    body.push('\n');
    Reply::json_text(if db.result.is_ok() { 200 } else { 503 }, HEALTH_JSON, body)
}

/// Formats a time as RFC 3339 in UTC with millisecond precision.
pub fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> DbOutcome {
        DbOutcome {
            result: Ok(()),
            elapsed: Duration::from_micros(1234),
            encrypted: Some(true),
            answered: 3,
        }
    }

    fn body(reply: &Reply) -> Value {
        serde_json::from_str(&reply.body).unwrap()
    }

    #[test]
    fn health_pass() {
        let r = handle("GET", "/health?x=1", &mut ok);
        assert_eq!(r.status, 200);
        assert_eq!(r.content_type, HEALTH_JSON);
        let b = body(&r);
        assert_eq!(b["status"], "pass");
        assert_eq!(b["version"], build::VERSION);
        assert_eq!(b["releaseId"], build::COMMIT);
        let check = &b["checks"]["postgres:responseTime"][0];
        assert_eq!(check["status"], "pass");
        assert_eq!(check["observedValue"], 1.234);
        assert_eq!(check["observedUnit"], "ms");
        assert_eq!(check["encrypted"], true);
        assert_eq!(check["answeredRequests"], 3);
        assert!(b.get("output").is_none());
        assert!(b.get("failure").is_none() && check.get("failure").is_none());
    }

    /// The body is written by hand: any reason must still make valid JSON.
    #[test]
    fn health_body_is_valid_json_whatever_the_reason() {
        let reason = "a \"quoted\"\n\\ reason \u{1} with ümlauts";
        let r = health(
            &DbOutcome {
                result: Err(DbFailure::new(Failure::Configuration, reason)),
                elapsed: Duration::from_nanos(1),
                encrypted: Some(false),
                answered: 7,
            },
            UNIX_EPOCH,
        );
        let b = body(&r);
        assert_eq!(b["output"], format!("postgres: {reason}"));
        let check = &b["checks"]["postgres:responseTime"][0];
        assert_eq!(check["output"], b["output"]);
        assert_eq!(check["encrypted"], false);
        assert_eq!(check["answeredRequests"], 7);
        assert_eq!(check["observedValue"], 0.0);
        assert_eq!(check["time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(check["failure"], "configuration");
        assert_eq!(b["failure"], "configuration");
        assert!(r.body.ends_with("}\n"));
    }

    #[test]
    fn health_fail_is_503_with_output() {
        let mut fail = || DbOutcome {
            result: Err(DbFailure::unavailable("connection refused")),
            elapsed: Duration::from_millis(3),
            encrypted: None,
            answered: 1,
        };
        let r = handle("HEAD", "/health", &mut fail);
        assert_eq!(r.status, 503);
        let b = body(&r);
        assert_eq!(b["status"], "fail");
        assert_eq!(b["output"], "postgres: connection refused");
        assert_eq!(b["checks"]["postgres:responseTime"][0]["status"], "fail");
        assert_eq!(b["failure"], "unavailable");
        assert_eq!(
            b["checks"]["postgres:responseTime"][0]["failure"],
            "unavailable"
        );
    }

    /// The kit matches the failure kind as text, so its spelling is part of the contract.
    #[test]
    fn health_failure_is_written_exactly_as_the_kit_reads_it() {
        for (kind, text) in [
            (Failure::Configuration, r#""failure":"configuration""#),
            (Failure::Unavailable, r#""failure":"unavailable""#),
        ] {
            let r = health(
                &DbOutcome {
                    result: Err(DbFailure::new(kind, "why")),
                    elapsed: Duration::ZERO,
                    encrypted: None,
                    answered: 1,
                },
                UNIX_EPOCH,
            );
            assert_eq!(r.status, 503);
            assert!(r.body.contains(text), "{}", r.body);
        }
        let r = health(&ok(), UNIX_EPOCH);
        assert!(!r.body.contains("failure"), "{}", r.body);
    }

    #[test]
    fn livez_never_checks_the_database() {
        let mut called = false;
        let r = handle("GET", "/livez", &mut || {
            called = true;
            ok()
        });
        assert_eq!(r.status, 200);
        assert!(!called);
        assert_eq!(body(&r)["status"], "pass");
    }

    #[test]
    fn unknown_path_and_wrong_method() {
        let r = handle("GET", "/nope", &mut ok);
        assert_eq!((r.status, r.content_type), (404, JSON));
        assert_eq!(body(&r)["status"], 404);
        let r = handle("POST", "/health", &mut || panic!("no check on 405"));
        assert_eq!(r.status, 405);
        assert!(r.headers.contains(&("Allow", "GET, HEAD".to_string())));
        assert_eq!(body(&r)["status"], 405);
    }

    #[test]
    fn a_header_section_over_the_limit_is_measured_as_received() {
        let h = [("Host", "a"), ("X-Big", "0123456789")];
        // "Host: a\r\n" is 9 bytes, "X-Big: 0123456789\r\n" 19.
        assert_eq!(oversized_headers(&h, 28), None);
        assert_eq!(oversized_headers(&h, 27), Some(28));
    }

    #[test]
    fn rfc9112_framing_rules() {
        let ok = |v, h: &[(&str, &str)]| assert_eq!(reject_reason(v, h), None, "{h:?}");
        let bad = |v, h: &[(&str, &str)], why: &str| {
            let reason = reject_reason(v, h).unwrap_or_else(|| panic!("{h:?} accepted"));
            assert!(reason.contains(why), "{reason}");
        };
        ok((1, 1), &[("Host", "a")]);
        ok((1, 0), &[]);
        ok(
            (1, 1),
            &[
                ("host", "a"),
                ("Content-Length", "5"),
                ("content-length", "005"),
            ],
        );
        ok((1, 1), &[("Host", "a"), ("Transfer-Encoding", "Chunked")]);
        ok((1, 1), &[("Host", "a"), ("X-Odd_but.valid!~", "b")]);
        bad((1, 1), &[("Host", "a"), ("X@A", "b")], "not a token");
        bad((1, 1), &[("Host", "a"), ("X A", "b")], "not a token");
        bad(
            (1, 1),
            &[("Host", "a"), ("Content-Length", "99999999999999999999999")],
            "too large",
        );
        ok(
            (1, 1),
            &[("Host", "a"), ("Content-Length", "18446744073709551615")],
        );
        bad((1, 1), &[], "without a Host");
        bad(
            (1, 1),
            &[("Host", "a"), ("HOST", "b")],
            "more than one Host",
        );
        bad(
            (1, 1),
            &[("Host", "a"), ("Content-Length", "+5")],
            "only digits",
        );
        bad(
            (1, 1),
            &[("Host", "a"), ("Content-Length", "-1")],
            "only digits",
        );
        bad(
            (1, 1),
            &[("Host", "a"), ("Content-Length", "5, 6")],
            "conflicting",
        );
        bad(
            (1, 1),
            &[
                ("Host", "a"),
                ("Content-Length", "5"),
                ("Content-Length", "6"),
            ],
            "conflicting",
        );
        bad(
            (1, 1),
            &[("Host", "a"), ("Transfer-Encoding", "gzip")],
            "unsupported Transfer-Encoding",
        );
        bad(
            (1, 1),
            &[("Host", "a"), ("Transfer-Encoding", "gzip, chunked")],
            "unsupported",
        );
        bad(
            (1, 1),
            &[
                ("Host", "a"),
                ("Transfer-Encoding", "chunked"),
                ("Content-Length", "3"),
            ],
            "both",
        );
        bad((1, 0), &[("Transfer-Encoding", "chunked")], "HTTP/1.0");
        bad(
            (1, 1),
            &[("Host", "a"), ("X-Evil", "a\0b")],
            "control character in the X-Evil",
        );
    }

    #[test]
    fn time_format() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        assert_eq!(rfc3339(t), "2026-11-18T11:06:40.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
