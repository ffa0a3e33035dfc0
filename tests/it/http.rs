//! Bad and unusual HTTP input against the real binary: correct 4xx/5xx or served, never a
//! crash, and the server keeps serving.

use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

use crate::util::burst;
use crate::util::http::{self, KeepAlive};
use crate::util::pg::Pg;
use crate::util::server::Server;
use crate::util::SECOND;

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .parse()
        .unwrap()
}

#[test]
fn requests_rfc9112_rejects_get_400_from_the_server_itself() {
    let server = Server::start();
    let cases: &[(&[u8], &str)] = &[
        (b"GET /livez HTTP/1.1\r\nConnection: close\r\n\r\n", "without a Host"),
        (b"GET /livez HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n", "more than one Host"),
        (b"GET /livez HTTP/1.1\r\nHost: a\r\nContent-Length: +0\r\nConnection: close\r\n\r\n", "only digits"),
        (b"GET /livez HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx", "conflicting"),
        (b"GET /livez HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nConnection: close\r\n\r\n", "unsupported Transfer-Encoding"),
        (b"GET /livez HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\nConnection: close\r\n\r\n0\r\n\r\n", "both"),
        (b"GET /livez HTTP/1.1\r\nHost: a\r\nX-Evil: a\x00b\r\nConnection: close\r\n\r\n", "control character"),
        (b"POST /health HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\nConnection: close\r\n\r\n", "too large a number"),
        (b"GET /livez HTTP/1.1\r\nHost: a\r\nX@A: b\r\nConnection: close\r\n\r\n", "not a token"),
    ];
    for (bytes, why) in cases {
        let r = server.send(bytes);
        assert_eq!(r.status, 400, "{:?}: {r:?}", String::from_utf8_lossy(bytes));
        assert!(r.json()["error"].as_str().unwrap().contains(why), "{r:?}");
    }
    assert_eq!(server.get("/livez").status, 200);
}

#[test]
fn unusual_but_valid_requests_are_served() {
    let server = Server::start();
    // HTTP/1.0 needs no Host; a body on GET is read and ignored; chunked is fine.
    assert_eq!(server.send(b"GET /livez HTTP/1.0\r\n\r\n").status, 200);
    assert_eq!(server.send(b"GET /livez HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello").status, 200);
    assert_eq!(server.send(b"GET /livez HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n").status, 200);
    // Unknown methods: 405 with Allow on a known path, 404 elsewhere.
    let r = server.send(b"BREW /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    assert_eq!((r.status, r.header("Allow")), (405, Some("GET, HEAD")));
    assert_eq!(
        server
            .send(b"BREW /pot HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .status,
        404
    );
}

#[test]
fn a_header_section_over_the_limit_gets_431_with_a_reason() {
    let server = Server::builder(&Pg::shared().url)
        .env("TRIBIST_MAX_HEADER_BYTES", "2048")
        .spawn();
    let mut req = b"GET /livez HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', 4096));
    req.extend(b"\r\nConnection: close\r\n\r\n");
    let r = server.send(&req);
    assert_eq!(r.status, 431, "{r:?}");
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("limit is 2048"),
        "{r:?}"
    );
    // Just under the limit: served.
    let mut req = b"GET /livez HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', 1900));
    req.extend(b"\r\nConnection: close\r\n\r\n");
    assert_eq!(server.send(&req).status, 200);
}

#[test]
fn pipelined_requests_are_all_answered_in_order() {
    let server = Server::start();
    let all = http::exchange(server.addr, b"GET /livez HTTP/1.1\r\nHost: a\r\n\r\nGET /nope HTTP/1.1\r\nHost: a\r\n\r\nGET /livez HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").unwrap();
    let all = String::from_utf8(all).unwrap();
    let statuses: Vec<&str> = all
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &all[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "404", "200"], "{all}");
}

#[test]
fn a_one_mib_header_line_is_survived_and_memory_returns() {
    let server = Server::start();
    assert_eq!(server.get("/livez").status, 200);
    let before = rss_kb(server.pid());
    let mut big = b"GET /livez HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 1 << 20));
    big.extend(b"\r\nConnection: close\r\n\r\n");
    let send = |n| {
        for _ in 0..n {
            let r = server.send(&big);
            assert!(
                r.status == 200 || (400..500).contains(&r.status),
                "{}",
                r.status
            );
        }
    };
    // tiny_http buffers a header line whole; the allocator keeps the few MiB it needed for
    // reuse (warm-up), after which further big requests add nothing: bounded, not leaking.
    send(5);
    let warm = rss_kb(server.pid());
    send(30);
    let after = rss_kb(server.pid());
    eprintln!("RSS {before} kB idle, {warm} kB after 5 requests with a 1 MiB header, {after} kB after 30 more");
    assert!(
        after < warm + 1024,
        "RSS kept growing: {warm} -> {after} kB"
    );
    assert!(after < 64 * 1024, "RSS {after} kB");
    assert_eq!(server.get("/livez").status, 200);
}

#[test]
fn a_panicking_handler_answers_500_and_its_worker_survives() {
    let server = Server::builder(&Pg::shared().url)
        .env("TRIBIST_WORKERS", "1")
        .env("TRIBIST_TEST_PANIC", "1")
        .spawn();
    for _ in 0..3 {
        let r = server.get("/__test/panic");
        assert_eq!(r.status, 500);
        assert_eq!(r.json()["status"], 500);
        // The single worker is still there.
        assert_eq!(server.get("/livez").status, 200);
    }
    assert!(
        server
            .log()
            .contains("panic while handling GET /__test/panic; answered 500"),
        "{}",
        server.log()
    );
}

#[test]
fn requests_tiny_http_never_hands_over_hold_only_their_own_connection() {
    // tiny_http 0.12 waits for a CRLF line ending that never comes; the connection is held
    // until the client goes away (no read timeout). Others are served meanwhile.
    let server = Server::start();
    let mut held = Vec::new();
    for bytes in [
        &b"GET /livez HTTP/1.1\nHost: a\n\n"[..],
        b"GET /livez HTTP/2.0\r\nHost: a\r\n\r\n",
    ] {
        // A raw socket: this test waits for an answer that must not come, and keeps it open.
        let mut s = http::connect(server.addr).unwrap();
        s.write_all(bytes).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        let start = Instant::now();
        let mut buf = [0u8; 256];
        let got = s.read(&mut buf);
        eprintln!(
            "{:?}: {:?} after {:?}",
            String::from_utf8_lossy(bytes),
            got.as_ref()
                .map(|n| String::from_utf8_lossy(&buf[..*n]).to_string()),
            start.elapsed()
        );
        // Documented in the README's Limits: no answer, the connection stays open.
        assert!(
            got.is_err(),
            "tiny_http answered after all: update the README's Limits"
        );
        held.push(s);
    }
    let start = Instant::now();
    assert_eq!(server.get("/livez").status, 200);
    assert!(start.elapsed() < Duration::from_secs(1));
}

/// N keep-alive connections opened at once (a proxy's pool reconnecting after a restart),
/// driven by one event loop: every connection gets answers, and none is closed by the server
/// while it keeps sending. (Before: every connection was told `Connection: close` 50 ms after
/// its first request, TRIBIST_KEEPALIVE_MAX, which was what kept connections from starving.)
#[test]
fn keep_alive_connections_opened_at_once_are_all_served_and_none_is_closed() {
    for n in [64usize, 256] {
        let server = Server::start();
        let out = burst::run(server.addr, n, "/livez", 30 * SECOND, |answers| {
            answers.iter().all(|&a| a >= 50)
        });
        let (min, max) = (out.answers.iter().min(), out.answers.iter().max());
        eprintln!(
            "{n} connections: slowest first answer {:?}, answers per connection {min:?}..{max:?}, \
             closed by the server {}, in {:?}",
            out.slowest_first(),
            out.closed_by_server,
            out.elapsed
        );
        assert!(out.errors.is_empty(), "{n} connections: {:?}", out.errors);
        assert_eq!(
            out.unanswered(),
            0,
            "{n} connections: some never got an answer in {:?}",
            out.elapsed
        );
        assert!(
            out.answers.iter().all(|&a| a >= 50),
            "{n} connections: answers per connection {min:?}..{max:?} in {:?}",
            out.elapsed
        );
        assert_eq!(
            out.closed_by_server, 0,
            "{n} connections: the server closed connections whose clients kept sending"
        );
    }
}

/// tiny_http's pool queues a connection behind a thread about to take another one, where it
/// waits until some connection ends. A burst of keep-alive connections on a fresh server (four
/// idle pool threads) leaves most of them there; with connections kept for an hour nothing
/// would end, so they must be taken because the server frees a thread for them.
#[test]
fn connections_queued_in_the_pool_are_taken_while_all_others_stay_open() {
    for n in [64usize, 256] {
        let server = Server::builder(&Pg::shared().url)
            .env("TRIBIST_KEEPALIVE_MAX", "1h")
            .spawn();
        let out = burst::run(server.addr, n, "/livez", 10 * SECOND, |answers| {
            answers.iter().all(|&a| a >= 1)
        });
        eprintln!(
            "{n} connections: {} never answered, slowest first answer {:?}, in {:?}",
            out.unanswered(),
            out.slowest_first(),
            out.elapsed
        );
        assert_eq!(
            out.unanswered(),
            0,
            "{n} connections: starved for {:?}",
            out.elapsed
        );
        assert_eq!(out.closed_by_server, 0);
        assert!(out.errors.is_empty(), "{:?}", out.errors);
    }
}

/// Connections that go quiet end after the idle time (one that answered, one that never
/// sent); one that keeps sending stays open meanwhile.
#[test]
fn idle_connections_end_after_the_idle_time_and_busy_ones_stay() {
    let server = Server::builder(&Pg::shared().url)
        .env("TRIBIST_IDLE_TIMEOUT", "1s")
        .spawn();
    let started = Instant::now();
    let mut answered = http::connect(server.addr).unwrap();
    answered
        .write_all(b"GET /livez HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = answered.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    let silent = http::connect(server.addr).unwrap();
    let mut busy = KeepAlive::new(server.addr);
    let mut open = vec![("answered", answered), ("silent", silent)];
    let mut closed_at = Vec::new();
    while !open.is_empty() {
        assert!(
            started.elapsed() < 20 * SECOND,
            "still open after {:?}: {:?}",
            started.elapsed(),
            open.iter().map(|o| o.0).collect::<Vec<_>>()
        );
        assert_eq!(busy.get("/livez").unwrap().status, 200);
        // Each quiet connection is read for up to 50 ms: the pace of the busy client.
        open.retain_mut(|(name, s)| {
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            match s.read(&mut buf) {
                Ok(0) => {
                    closed_at.push((*name, started.elapsed()));
                    false
                }
                Ok(_) => true,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => true,
                Err(e) => panic!("{name}: {e}"),
            }
        });
    }
    eprintln!("closed: {closed_at:?}");
    for (name, at) in &closed_at {
        assert!(
            *at >= SECOND,
            "{name} closed after {at:?}, before the idle time"
        );
    }
    assert_eq!(busy.get("/livez").unwrap().status, 200);
    assert_eq!(busy.connects, 1, "the busy connection was closed");
}

/// A server that binds its own socket listens with the backlog systemd's socket has (4096):
/// connections arriving while it does not accept (here: stopped) wait in the backlog, instead
/// of 129 (std's backlog of 128) and the rest resending their SYN after 1 s, 3 s, 7 s...
#[test]
fn a_server_binding_its_own_socket_keeps_a_burst_in_its_backlog() {
    let mut server = Server::start();
    assert_eq!(server.get("/livez").status, 200);
    server.signal("STOP");
    let stopped = Stopped(server.pid());
    let conns = burst::connect_all(server.addr, 300, 5 * SECOND);
    let connected = conns.iter().filter(|c| c.is_some()).count();
    drop(stopped);
    assert_eq!(
        connected, 300,
        "handshakes completed while the server was stopped"
    );
    for mut s in conns.into_iter().flatten() {
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(10 * SECOND)).unwrap();
        s.write_all(b"GET /livez HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    }
    assert!(server.exited().is_none());
}

/// SIGCONTs a stopped process when dropped, also when the test panics.
struct Stopped(u32);

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: kill(2) takes no memory.
        unsafe { libc::kill(self.0 as libc::pid_t, libc::SIGCONT) };
    }
}
