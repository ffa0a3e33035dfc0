//! What the preflight reads from the release it runs: the port it listens on (its address
//! file, or before that the log line `listening on http://127.0.0.1:PORT`) and its `/health`
//! answer, over a plain TCP connection bounded in time and size.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::host::text::clean;

/// The most of a `/health` answer read.
const HEALTH_MAX: usize = 64 * 1024;
/// How long one `/health` request may take.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// What `/health` answered.
#[derive(Debug)]
pub enum Answer {
    /// No answer: nothing listens, the connection failed, or no HTTP status line came.
    Nothing,
    Http {
        status: u16,
        body: Vec<u8>,
    },
}

/// `GET /health` on 127.0.0.1:`port`, at most [`HEALTH_TIMEOUT`] and [`HEALTH_MAX`] bytes.
pub fn get_health(port: u16) -> Answer {
    let end = Instant::now() + HEALTH_TIMEOUT;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, HEALTH_TIMEOUT) else {
        return Answer::Nothing;
    };
    let left = || {
        end.saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let _ = s.set_write_timeout(Some(left()));
    let request =
        format!("GET /health HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if s.write_all(request.as_bytes()).is_err() {
        return Answer::Nothing;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    while got.len() < HEALTH_MAX && Instant::now() < end {
        let _ = s.set_read_timeout(Some(left()));
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n.min(HEALTH_MAX - got.len())]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    parse_answer(&got)
}

/// An HTTP answer's status and body.
pub fn parse_answer(raw: &[u8]) -> Answer {
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n");
    let status_line = raw.split(|b| *b == b'\n').next().unwrap_or_default();
    let status = std::str::from_utf8(status_line)
        .ok()
        .filter(|l| l.starts_with("HTTP/"))
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|code| code.parse::<u16>().ok());
    match status {
        Some(status) => Answer::Http {
            status,
            body: head_end.map_or_else(Vec::new, |at| raw[at + 4..].to_vec()),
        },
        None => Answer::Nothing,
    }
}

/// What a `/health` body says: its releaseId, whether the failure is the configuration's,
/// and its `output` (why it fails), each made printable.
#[derive(Debug, Default, PartialEq)]
pub struct Health {
    pub release_id: String,
    pub configuration: bool,
    pub output: String,
}

impl Health {
    pub fn read(body: &[u8]) -> Health {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
            return Health::default();
        };
        let text = |k: &str, max| {
            clean(
                v.get(k).and_then(|x| x.as_str()).unwrap_or("").as_bytes(),
                max,
            )
        };
        Health {
            release_id: text("releaseId", 80),
            configuration: v.get("failure").and_then(|f| f.as_str()) == Some("configuration"),
            output: text("output", 600),
        }
    }
}

/// The port in an address file (`127.0.0.1:PORT` and a newline); `Err` if it is not that.
pub fn address_file_port(content: &[u8]) -> std::result::Result<u16, ()> {
    let text = std::str::from_utf8(content).map_err(|_| ())?;
    let digits = text
        .trim_end_matches('\n')
        .strip_prefix("127.0.0.1:")
        .ok_or(())?;
    if digits.is_empty()
        || digits.len() > 5
        || digits.starts_with('0')
        || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(());
    }
    digits.parse().map_err(|_| ())
}

/// The port in the first line `… listening on http://127.0.0.1:PORT…` of a log (a release
/// that predates the address file).
pub fn log_line_port(log: &[u8]) -> Option<u16> {
    const MARK: &str = "listening on http://127.0.0.1:";
    String::from_utf8_lossy(log).lines().find_map(|line| {
        let rest = &line[line.rfind(MARK)? + MARK.len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_and_bodies() {
        let a = parse_answer(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 3\r\n\r\n{x}");
        assert!(matches!(a, Answer::Http { status: 503, ref body } if body == b"{x}"));
        assert!(matches!(parse_answer(b""), Answer::Nothing));
        assert!(matches!(parse_answer(b"garbage\r\n\r\n"), Answer::Nothing));
        let h = Health::read(br#"{"status":"fail","releaseId":"r1","output":"postgres: \u001b[2Jbad password","failure":"configuration"}"#);
        assert_eq!(
            h,
            Health {
                release_id: "r1".into(),
                configuration: true,
                output: "postgres: [2Jbad password".into()
            }
        );
        assert_eq!(Health::read(b"not json"), Health::default());
        assert!(!Health::read(br#"{"failure":"unavailable"}"#).configuration);
    }

    #[test]
    fn ports_from_the_address_file_and_from_an_old_log_line() {
        assert_eq!(address_file_port(b"127.0.0.1:40123\n"), Ok(40123));
        for bad in [
            &b"0.0.0.0:80\n"[..],
            b"127.0.0.1:0\n",
            b"127.0.0.1:99999",
            b"127.0.0.1:",
            b"127.0.0.1:80 x",
            b"127.0.0.1:080",
        ] {
            assert_eq!(
                address_file_port(bad),
                Err(()),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            log_line_port(b"x\nINFO listening on http://127.0.0.1:8383 (fd 3)\n"),
            Some(8383)
        );
        assert_eq!(
            log_line_port(b"listening on http://127.0.0.1:\nlistening on http://127.0.0.1:7"),
            Some(7)
        );
        assert_eq!(log_line_port(b"listening on http://0.0.0.0:80\n"), None);
    }
}
