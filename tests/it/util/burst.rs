//! Many connections opened at once from one thread, one poll(2) waiting for them all, so
//! that no connection waits for a client thread to be scheduled: what is measured is the
//! server. `run` drives keep-alive connections as a proxy's pool reconnecting after a restart
//! does: each sends `GET path` as soon as it is connected, and again as soon as its previous
//! answer arrived; `connect_all` only opens them.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// What the connections saw.
#[derive(Debug)]
pub struct Outcome {
    /// Per connection: when its first answer came, from the start of the burst.
    pub first: Vec<Option<Duration>>,
    /// Per connection: answers received.
    pub answers: Vec<u32>,
    /// Answers that said `Connection: close`, and connections the server closed.
    pub closed_by_server: usize,
    /// Answers other than 200, and failed connects or reads.
    pub errors: Vec<String>,
    pub elapsed: Duration,
}

impl Outcome {
    /// Connections that never got an answer.
    pub fn unanswered(&self) -> usize {
        self.first.iter().filter(|f| f.is_none()).count()
    }

    pub fn slowest_first(&self) -> Option<Duration> {
        self.first.iter().flatten().max().copied()
    }
}

struct Conn {
    stream: Option<TcpStream>,
    connected: bool,
    buf: Vec<u8>,
}

/// Opens `n` connections to `addr` at once and drives them until `done(answers per
/// connection)` says so, or `limit` passed.
pub fn run(
    addr: SocketAddr,
    n: usize,
    path: &str,
    limit: Duration,
    done: impl Fn(&[u32]) -> bool,
) -> Outcome {
    let request = format!("GET {path} HTTP/1.1\r\nHost: burst\r\n\r\n").into_bytes();
    let start = Instant::now();
    let mut out = Outcome {
        first: vec![None; n],
        answers: vec![0; n],
        closed_by_server: 0,
        errors: Vec::new(),
        elapsed: Duration::ZERO,
    };
    let mut conns: Vec<Conn> = (0..n).map(|_| open(addr)).collect();
    while start.elapsed() < limit && !done(&out.answers) {
        let mut fds: Vec<libc::pollfd> = conns
            .iter()
            .map(|c| libc::pollfd {
                fd: c.stream.as_ref().map_or(-1, |s| s.as_raw_fd()),
                events: if c.connected {
                    libc::POLLIN
                } else {
                    libc::POLLOUT
                },
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of pollfd of the length given.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 50) };
        if ready < 0 {
            let e = io::Error::last_os_error();
            assert_eq!(e.kind(), io::ErrorKind::Interrupted, "poll: {e}");
            continue;
        }
        for (i, pfd) in fds.iter().enumerate().filter(|(_, p)| p.revents != 0) {
            let c = &mut conns[i];
            let Some(stream) = c.stream.as_mut() else {
                continue;
            };
            if !c.connected {
                match stream.take_error() {
                    Ok(None) if pfd.revents & libc::POLLOUT != 0 => {
                        c.connected = true;
                        if let Err(e) = stream.write_all(&request) {
                            out.errors.push(format!("send: {e}"));
                            conns[i] = open(addr);
                        }
                    }
                    other => {
                        out.errors.push(format!("connect: {other:?}"));
                        conns[i] = open(addr);
                    }
                }
                continue;
            }
            let mut chunk = [0u8; 16384];
            let got = match stream.read(&mut chunk) {
                Ok(0) => None,
                Ok(len) => Some(len),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => {
                    out.errors.push(format!("read: {e}"));
                    None
                }
            };
            let Some(len) = got else {
                out.closed_by_server += 1;
                conns[i] = open(addr);
                continue;
            };
            c.buf.extend_from_slice(&chunk[..len]);
            let Some((status, close, used)) = parse(&c.buf) else {
                continue;
            };
            c.buf.drain(..used);
            out.first[i].get_or_insert(start.elapsed());
            out.answers[i] += 1;
            if status != 200 {
                out.errors.push(format!("status {status}"));
            }
            if close {
                out.closed_by_server += 1;
                conns[i] = open(addr);
            } else if let Err(e) = stream.write_all(&request) {
                out.errors.push(format!("send: {e}"));
                conns[i] = open(addr);
            }
        }
    }
    out.elapsed = start.elapsed();
    out
}

/// Starts `n` connects to `addr` at once and waits (until `limit`) for their handshakes: the
/// connections whose handshake completed (non-blocking), `None` for the others.
pub fn connect_all(addr: SocketAddr, n: usize, limit: Duration) -> Vec<Option<TcpStream>> {
    let start = Instant::now();
    let mut conns: Vec<Conn> = (0..n).map(|_| open(addr)).collect();
    while start.elapsed() < limit && conns.iter().any(|c| !c.connected) {
        let waiting: Vec<usize> = (0..n).filter(|&i| !conns[i].connected).collect();
        let mut fds: Vec<libc::pollfd> = waiting
            .iter()
            .map(|&i| libc::pollfd {
                fd: conns[i].stream.as_ref().map_or(-1, |s| s.as_raw_fd()),
                events: libc::POLLOUT,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of pollfd of the length given.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 50) };
        for (&i, pfd) in waiting.iter().zip(&fds) {
            if pfd.revents & libc::POLLOUT != 0 {
                let stream = conns[i].stream.as_ref().expect("opened");
                assert!(
                    matches!(stream.take_error(), Ok(None)),
                    "connection {i} failed"
                );
                conns[i].connected = true;
            }
        }
    }
    conns
        .into_iter()
        .map(|c| c.stream.filter(|_| c.connected))
        .collect()
}

/// A non-blocking connect to `addr` (its completion is seen by poll).
fn open(addr: SocketAddr) -> Conn {
    // SAFETY: plain socket(2); the descriptor is owned by the TcpStream made from it.
    let stream = unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
        <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd)
    };
    let SocketAddr::V4(v4) = addr else {
        panic!("an IPv4 address, got {addr}")
    };
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*v4.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `sin` is a valid sockaddr_in of the length given.
    let rc = unsafe {
        libc::connect(
            stream.as_raw_fd(),
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    let e = io::Error::last_os_error();
    assert!(
        rc == 0 || e.raw_os_error() == Some(libc::EINPROGRESS),
        "connect {addr}: {e}"
    );
    let _ = stream.set_nodelay(true);
    Conn {
        stream: Some(stream),
        connected: false,
        buf: Vec::new(),
    }
}

/// One whole answer at the start of `buf`: its status, whether it says `Connection: close`,
/// and its length.
fn parse(buf: &[u8]) -> Option<(u16, bool, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let (mut length, mut close) = (0, false);
    for (name, value) in lines.filter_map(|l| l.split_once(':')) {
        if name.eq_ignore_ascii_case("content-length") {
            length = value.trim().parse().ok()?;
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.trim().eq_ignore_ascii_case("close");
        }
    }
    let used = end + 4 + length;
    (buf.len() >= used).then_some((status, close, used))
}
