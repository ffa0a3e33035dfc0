//! HTTP over plain TCP, as the tests speak it: one request per connection (`send`, `get`), or
//! request after request on one kept-alive connection (`KeepAlive`).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long a read waits for the server before the request counts as failed.
const READ_TIMEOUT: Duration = Duration::from_secs(15);

/// A new connection to `addr`, reads bounded by `READ_TIMEOUT`.
pub fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(READ_TIMEOUT))?;
    Ok(s)
}

/// Sends `raw` on a new connection and reads until the server closes it: every byte of the
/// answer (several responses, if `raw` held several requests).
pub fn exchange(addr: SocketAddr, raw: &[u8]) -> io::Result<Vec<u8>> {
    let mut s = connect(addr)?;
    s.write_all(raw)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    Ok(buf)
}

/// Whether the server has read everything `client` sent it: the client's end has no byte
/// waiting for an acknowledgement and the server's end none unread, as the kernel's table says
/// (/proc/net/tcp, IPv4, the same network namespace).
pub fn server_has_read(server: SocketAddr, client: SocketAddr) -> bool {
    let port = |field: &str| {
        field
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
    };
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    // tx_queue:rx_queue of the end whose local port is `from` and remote port `to`.
    let queues = |from: u16, to: u16| {
        table
            .lines()
            .skip(1)
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.len() > 4 && port(f[1]) == Some(from) && port(f[2]) == Some(to))
            .map(|f| f[4].to_string())
    };
    let client_end = queues(client.port(), server.port());
    let server_end = queues(server.port(), client.port());
    matches!(client_end.as_deref(), Some(q) if q.starts_with("00000000:"))
        && matches!(server_end.as_deref(), Some(q) if q.ends_with(":00000000"))
}

/// `exchange`, and the first response parsed.
pub fn send(addr: SocketAddr, raw: &[u8]) -> io::Result<Response> {
    let buf = exchange(addr, raw)?;
    let text = String::from_utf8_lossy(&buf);
    text.split_once("\r\n\r\n")
        .and_then(|(head, body)| Response::from_head(head, body.to_string()))
        .ok_or_else(|| io::Error::other(format!("unparseable response: {text:?}")))
}

/// The request `METHOD path` on a connection of its own (`Connection: close`).
pub fn request(method: &str, path: &str) -> String {
    format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
}

/// `GET path` on a connection of its own.
pub fn get(addr: SocketAddr, path: &str) -> io::Result<Response> {
    send(addr, request("GET", path).as_bytes())
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    /// Parses a status line and header lines, separated by CRLF.
    fn from_head(head: &str, body: String) -> Option<Response> {
        let mut lines = head.split("\r\n");
        let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        Some(Response {
            status,
            headers,
            body,
        })
    }

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

/// A client that keeps its connection alive, as wrk and reverse proxies do, and opens a new one
/// only when the server answers `Connection: close` or closes.
pub struct KeepAlive {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
    /// Connections opened so far.
    pub connects: usize,
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
    pub fn connect(&mut self) -> io::Result<()> {
        self.conn = Some(BufReader::new(connect(self.addr)?));
        self.connects += 1;
        Ok(())
    }

    /// `GET path` on the open connection (opened first if there is none); reads exactly one
    /// response, by its Content-Length.
    pub fn get(&mut self, path: &str) -> io::Result<Response> {
        if self.conn.is_none() {
            self.connect()?;
        }
        let conn = self.conn.as_mut().expect("connected");
        conn.get_mut()
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())?;
        let mut head = String::new();
        loop {
            let mut line = String::new();
            conn.read_line(&mut line)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if !head.is_empty() {
                head.push_str("\r\n");
            }
            head.push_str(line);
        }
        let mut r = Response::from_head(&head, String::new()).ok_or_else(|| match &*head {
            "" => io::Error::other("closed without an answer"),
            _ => io::Error::other(format!("bad response head {head:?}")),
        })?;
        let length = match r.header("Content-Length") {
            Some(v) => v.parse().map_err(io::Error::other)?,
            None => 0,
        };
        let mut body = vec![0; length];
        conn.read_exact(&mut body)?;
        r.body = String::from_utf8_lossy(&body).into_owned();
        if r.header("Connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            self.conn = None;
        }
        Ok(r)
    }
}
