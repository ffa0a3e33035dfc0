//! The service as a client sees it: the address its socket listens on (systemd's word, the
//! one place it is set) and its `/health` answer, asked over plain TCP with a deadline and a
//! bounded read (the body is the server's, which may be hostile: never trusted for more than
//! its status code and its `releaseId`).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::{paths, unit_property};

/// The listen-address rule is the settings' (one place for the server and the kit).
pub use crate::settings::valid_listen;

/// The address tribist.socket listens on, else the default.
pub fn listen_address() -> String {
    let listen = unit_property(&format!("{}.socket", paths::UNIT), "Listen");
    let listen = listen.split(' ').next().unwrap_or("");
    if valid_listen(listen) {
        listen.to_string()
    } else {
        paths::DEFAULT_LISTEN.to_string()
    }
}

/// Where a client on this host reaches `/health` for `listen`.
pub fn health_url_for(listen: &str) -> String {
    let reach = listen
        .replacen("0.0.0.0", "127.0.0.1", 1)
        .replacen("[::]", "[::1]", 1);
    format!("http://{reach}/health")
}

pub fn health_url() -> String {
    health_url_for(&listen_address())
}

/// One answer of `/health`: its status code (0: nothing answered) and its body (or why
/// nothing answered), at most 20,000 bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    pub code: u16,
    pub body: String,
}

impl Health {
    /// The `releaseId` it reports, if any (a token of `[A-Za-z0-9._+-]`, at most 100).
    pub fn release(&self) -> Option<String> {
        release_in(&self.body)
    }
}

/// The `releaseId` in a `/health` body.
pub fn release_in(body: &str) -> Option<String> {
    let start = body.find("\"releaseId\":\"")? + "\"releaseId\":\"".len();
    let id: String = body[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'))
        .take(101)
        .collect();
    let ends_right = body[start + id.len()..].starts_with('"');
    (!id.is_empty() && id.len() <= 100 && ends_right).then_some(id)
}

/// `GET /health` on `listen` (as [`listen_address`] gives it), within `timeout` in all.
pub fn fetch_at(listen: &str, timeout: Duration) -> Health {
    let reach = health_url_for(listen);
    let hostport = reach
        .trim_start_matches("http://")
        .trim_end_matches("/health")
        .to_string();
    match get(&hostport, timeout) {
        Ok(h) => h,
        Err(e) => Health {
            code: 0,
            body: format!("no answer from {reach}: {e}"),
        },
    }
}

/// `/health` of the service now, within 5 s.
pub fn fetch() -> Health {
    fetch_at(&listen_address(), Duration::from_secs(5))
}

/// The releaseId `/health` reports now.
pub fn serving_release() -> Option<String> {
    fetch().release()
}

fn get(hostport: &str, timeout: Duration) -> std::io::Result<Health> {
    let end = Instant::now() + timeout;
    let addr = hostport
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    let left = || {
        end.saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    s.set_write_timeout(Some(left()))?;
    write!(
        s,
        "GET /health HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\nUser-Agent: tribist-host\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    while buf.len() < 24_000 {
        if Instant::now() >= end {
            break;
        }
        s.set_read_timeout(Some(left()))?;
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::Interrupted) => {}
            Err(e) if buf.is_empty() => return Err(e),
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let code = text
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP answer"))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok(Health {
        code,
        body: crate::host::text::printable(body.as_bytes(), 20_000),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn health_urls_reach_a_wildcard_address_on_loopback() {
        // valid_listen is settings' (tested there).
        assert_eq!(health_url_for("0.0.0.0:80"), "http://127.0.0.1:80/health");
        assert_eq!(health_url_for("[::]:80"), "http://[::1]:80/health");
    }

    #[test]
    fn release_ids_are_tokens_only() {
        assert_eq!(
            release_in(r#"{"releaseId":"abc-1.2"}"#).as_deref(),
            Some("abc-1.2")
        );
        assert_eq!(release_in(r#"{"releaseId":"abc def"}"#), None);
        assert_eq!(release_in(r#"{"releaseId":""}"#), None);
        assert_eq!(release_in(r#"{"status":"pass"}"#), None);
    }

    #[test]
    fn a_hostile_answer_is_bounded_and_printable() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut req = [0u8; 1024];
            let _ = c.read(&mut req);
            let _ = c
                .write_all(b"HTTP/1.1 503 No\r\n\r\n{\"releaseId\":\"r1\",\"x\":\"\x1b]0;t\x07\"}");
            let _ = c.write_all(&vec![b'a'; 1 << 20]);
        });
        // A generous deadline: the bound under test is the size, not the time (a loaded
        // machine may take seconds to schedule the answering thread).
        let h = fetch_at(&addr, Duration::from_secs(30));
        assert_eq!(h.code, 503);
        assert_eq!(h.release().as_deref(), Some("r1"));
        assert!(h.body.len() <= 20_000);
        assert!(!h.body.contains('\x1b'));
    }

    #[test]
    fn nothing_listening_is_code_0() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        assert_eq!(fetch_at(&addr, Duration::from_secs(2)).code, 0);
    }
}
