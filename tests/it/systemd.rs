//! The systemd protocols, with this test playing systemd's part for real: a listening socket
//! passed as fd 3 (socket activation) and a datagram socket as NOTIFY_SOCKET.

use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::util::http::{self, KeepAlive};
use crate::util::pg::Pg;
use crate::util::server::Server;
use crate::util::{wait_for, TempDir, SECOND};

#[test]
fn socket_activation_keeps_the_socket_across_a_restart_and_loses_no_request() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = TempDir::new("activated");
    let dir_path = dir.path().to_path_buf();
    let mut first = Server::builder(&Pg::shared().url)
        .env("TRIBIST_LISTEN", "127.0.0.1:1") // ignored: the socket comes from "systemd"
        .env(
            "TRIBIST_ADDRESS_FILE",
            dir.path().join("address").to_str().unwrap(),
        )
        .socket_activated(&listener)
        .dir(dir)
        .spawn();
    assert_eq!(first.addr, addr);
    // The address file names systemd's socket, not TRIBIST_LISTEN.
    assert_eq!(
        std::fs::read_to_string(dir_path.join("address")).unwrap(),
        format!("{addr}\n")
    );
    assert!(
        first.log().contains("socket from systemd"),
        "{}",
        first.log()
    );
    // And it says where the address it ignores is really set.
    assert!(
        first.log().contains(&format!(
            "TRIBIST_LISTEN is 127.0.0.1:1 but the socket from systemd listens on {addr}, which applies"
        )),
        "{}",
        first.log()
    );

    // A client sending request after request, each on a new connection, throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let stop_client = Arc::clone(&stop);
    let client = std::thread::spawn(move || {
        let (mut ok, mut failed) = (0, Vec::new());
        while !stop_client.load(Ordering::SeqCst) {
            match http::get(addr, "/livez") {
                Ok(r) if r.status == 200 => ok += 1,
                Ok(r) => failed.push(format!("status {}", r.status)),
                Err(e) => failed.push(e.to_string()),
            }
        }
        (ok, failed)
    });
    std::thread::sleep(Duration::from_millis(300));
    first.signal("TERM");
    assert_eq!(
        first.wait_exit(10 * SECOND).code(),
        Some(0),
        "{}",
        first.log()
    );
    // Between two processes: connections wait in the backlog instead of being refused.
    std::thread::sleep(Duration::from_millis(300));
    let second = Server::builder(&Pg::shared().url)
        .socket_activated(&listener)
        .dir(TempDir(dir_path)) // the same directory: whichever drops first removes it
        .spawn();
    assert_eq!(second.addr, addr);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = client.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} failed requests, first: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 20, "only {ok} requests");
    assert_eq!(http::get(addr, "/health").unwrap().status, 200);
}

#[test]
fn notify_ready_stopping_and_watchdog() {
    let dir = TempDir::new("notify");
    let sock_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&sock_path).unwrap();
    notify.set_read_timeout(Some(5 * SECOND)).unwrap();
    let mut server = Server::builder(&Pg::shared().url)
        .env("NOTIFY_SOCKET", sock_path.to_str().unwrap())
        .env("WATCHDOG_USEC", "200000")
        .spawn();
    let mut buf = [0u8; 512];
    let mut recv = || {
        let n = notify.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    let first = recv();
    assert!(first.starts_with("READY=1\n"), "{first}");
    // The handover tokens first (what tribist-host reads), then the words.
    assert!(
        first.contains(&format!(
            "STATUS=handover=ready attempt=0; serving on {}",
            server.addr
        )),
        "{first}"
    );
    assert!(first.contains("; SIGUSR2 hands over)"), "{first}");
    // Keep-alive pings follow, each after a successful self-probe of /livez.
    for _ in 0..3 {
        assert_eq!(recv(), "WATCHDOG=1");
    }
    server.signal("TERM");
    let stopping = wait_for("STOPPING=1", 5 * SECOND, || {
        let m = recv();
        m.starts_with("STOPPING=1").then_some(m)
    });
    assert!(
        stopping.contains("STATUS=handover=stopping; draining"),
        "{stopping}"
    );
    assert_eq!(server.wait_exit(5 * SECOND).code(), Some(0));
}

#[test]
fn abstract_notify_socket_is_supported() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("tribist-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let notify = UnixDatagram::bind_addr(&addr).unwrap();
    notify.set_read_timeout(Some(5 * SECOND)).unwrap();
    let _server = Server::builder(&Pg::shared().url)
        .env("NOTIFY_SOCKET", &format!("@{name}"))
        .spawn();
    let mut buf = [0u8; 512];
    let n = notify.recv(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"READY=1"));
}

/// Keep-alive clients (wrk's way, a proxy's pool) across a restart under socket activation:
/// every request the old process still gets is answered with `Connection: close`, idle
/// connections are closed before their clients send on them, and the clients reconnect to
/// the backlog, where the next process answers. Not one request may fail.
#[test]
fn keep_alive_clients_lose_nothing_across_a_socket_activated_restart() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = TempDir::new("keepalive-restart");
    let dir_path = dir.path().to_path_buf();
    let mut first = Server::builder(&Pg::shared().url)
        .socket_activated(&listener)
        .dir(dir)
        .spawn();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut c = KeepAlive::new(addr);
                let (mut ok, mut failed) = (0u32, Vec::new());
                while !stop.load(Ordering::SeqCst) {
                    match c.get("/livez") {
                        Ok(r) if r.status == 200 => ok += 1,
                        Ok(r) => failed.push(format!("status {}", r.status)),
                        Err(e) => {
                            failed.push(e.to_string());
                            c = KeepAlive::new(addr);
                        }
                    }
                }
                (ok, c.connects, failed)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    first.signal("TERM");
    assert_eq!(
        first.wait_exit(10 * SECOND).code(),
        Some(0),
        "{}",
        first.log()
    );
    let second = Server::builder(&Pg::shared().url)
        .socket_activated(&listener)
        .dir(TempDir(dir_path)) // the same directory: whichever drops first removes it
        .spawn();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let results: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let failed: Vec<&String> = results.iter().flat_map(|r| &r.2).collect();
    let ok: u32 = results.iter().map(|r| r.0).sum();
    eprintln!(
        "{ok} answers, {} failed; connections per client: {:?}",
        failed.len(),
        results.iter().map(|r| r.1).collect::<Vec<_>>()
    );
    assert!(
        failed.is_empty(),
        "{} failed requests, first: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 100, "only {ok} requests");
    assert_eq!(second.get("/livez").status, 200);
}
