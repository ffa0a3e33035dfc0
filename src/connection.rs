//! When a keep-alive connection must end, and the answer that ends it.
//!
//! A connection is kept for at most `keepalive_max` (`TRIBIST_KEEPALIVE_MAX`, minutes), and
//! not at all while the server drains: the answer then carries `Connection: close`, and the
//! client opens a new connection (to this process, or during an upgrade to the next one,
//! through the socket's backlog). The age cap is a policy (clients spread again over processes
//! and hosts), not what keeps connections from waiting for a thread: pool_watch.rs does that.
//! The table of first requests also tells a drain which connections carried a request.
//! tiny_http cannot send that header itself, so such answers are written raw through
//! `Request::into_writer`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::api::Reply;

/// Past this many tracked connections, entries older than the bound are dropped: they belong
/// to connections the client closed itself. (The pool watch also drops the entries of closed
/// connections about once a second: `retain_open`.)
const PRUNE_AT: usize = 4096;

/// At most this many connections are tracked (about 4 MB): past it, a connection not yet
/// tracked gets `Connection: close` on its first answer instead of an entry. Without it a
/// long `TRIBIST_KEEPALIVE_MAX` and many short connections grew the table without bound.
const MAX_TRACKED: usize = 65_536;

/// The first request of every open keep-alive connection, by the client's address.
pub struct Connections {
    max_age: Duration,
    table: Mutex<Table>,
}

struct Table {
    first_seen: HashMap<SocketAddr, Instant>,
    /// When the table, once past PRUNE_AT entries, may be pruned again: at most every
    /// `max_age` (one second at most), so that a table of live connections (a long
    /// `max_age`, many clients) is not scanned on every request.
    next_prune: Option<Instant>,
}

impl Connections {
    pub fn new(max_age: Duration) -> Connections {
        Connections {
            max_age,
            table: Mutex::new(Table {
                first_seen: HashMap::new(),
                next_prune: None,
            }),
        }
    }

    /// Called for every request: true when its answer must close the connection.
    pub fn should_close(&self, client: Option<&SocketAddr>, now: Instant) -> bool {
        let Some(client) = client else { return false };
        let mut table = self.lock();
        let Table {
            first_seen: seen,
            next_prune,
        } = &mut *table;
        if seen.len() >= MAX_TRACKED && !seen.contains_key(client) {
            return true;
        }
        let first = *seen.entry(*client).or_insert(now);
        if now.duration_since(first) >= self.max_age {
            seen.remove(client);
            return true;
        }
        if seen.len() > PRUNE_AT && next_prune.is_none_or(|at| now >= at) {
            let max_age = self.max_age;
            seen.retain(|_, t| now.duration_since(*t) < max_age);
            *next_prune = Some(now + max_age.min(Duration::from_secs(1)));
        }
        false
    }

    /// Whether the connection from `client` has carried a request and is still kept alive.
    /// One that has not is new: its client is about to send its first request.
    pub fn carried_a_request(&self, client: &SocketAddr) -> bool {
        self.lock().first_seen.contains_key(client)
    }

    /// Keeps only the entries of the connections from `open` (the client addresses of the
    /// connections open at `since`) and those made after `since`.
    pub fn retain_open(&self, open: &std::collections::HashSet<SocketAddr>, since: Instant) {
        self.lock()
            .first_seen
            .retain(|peer, first| open.contains(peer) || *first >= since);
    }

    /// Forgets a connection that is closed anyway.
    pub fn forget(&self, client: Option<&SocketAddr>) {
        if let Some(client) = client {
            self.lock().first_seen.remove(client);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The bytes of `reply` as an HTTP/1.1 answer that ends the connection; no body for HEAD.
pub fn closing_answer(reply: &Reply, head: bool, now: SystemTime) -> Vec<u8> {
    let reason = tiny_http::StatusCode(reply.status).default_reason_phrase();
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\nDate: {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
        reply.status,
        http_date(now),
        reply.content_type,
        reply.body.len()
    );
    for (name, value) in &reply.headers {
        // A header value from our own code; never let one break the framing.
        if !value.bytes().any(|b| b == b'\r' || b == b'\n') {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    let mut bytes = out.into_bytes();
    if !head {
        bytes.extend_from_slice(reply.body.as_bytes());
    }
    bytes
}

/// RFC 9110 IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn http_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_connection_is_closed_at_its_first_request_past_the_bound_and_then_starts_afresh() {
        let c = Connections::new(Duration::from_millis(50));
        let t0 = Instant::now();
        assert!(!c.should_close(Some(&addr(1)), t0));
        assert!(!c.should_close(Some(&addr(1)), t0 + Duration::from_millis(49)));
        assert!(!c.should_close(Some(&addr(2)), t0 + Duration::from_millis(49)));
        assert!(c.should_close(Some(&addr(1)), t0 + Duration::from_millis(50)));
        // The client's next connection may reuse the port: a new first request.
        assert!(!c.should_close(Some(&addr(1)), t0 + Duration::from_millis(60)));
        assert!(!c.should_close(None, t0 + Duration::from_secs(60)));
    }

    #[test]
    fn entries_of_connections_closed_by_their_clients_do_not_pile_up() {
        let c = Connections::new(Duration::from_millis(10));
        let t0 = Instant::now();
        for port in 0..=PRUNE_AT as u16 {
            c.should_close(Some(&addr(port)), t0);
        }
        c.should_close(Some(&addr(60_000)), t0 + Duration::from_secs(1));
        assert_eq!(c.lock().first_seen.len(), 1);
    }

    /// With a long bound and many live clients, pruning removes nothing: it must not then
    /// scan the table on every request (it did: 111k instead of 46k instructions each).
    #[test]
    fn a_large_live_table_is_not_scanned_on_every_request() {
        let c = Connections::new(Duration::from_secs(3600));
        let t0 = Instant::now();
        for port in 0..=PRUNE_AT as u16 {
            c.should_close(Some(&addr(port)), t0);
        }
        let next = c.lock().next_prune.unwrap();
        assert!(next >= t0 + Duration::from_secs(1));
        for port in 0..100 {
            c.should_close(Some(&addr(5_000 + port)), t0);
        }
        assert_eq!(c.lock().next_prune.unwrap(), next, "pruned again");
        assert_eq!(c.lock().first_seen.len(), PRUNE_AT + 101);
    }

    #[test]
    fn entries_of_closed_connections_go_when_the_open_ones_are_known() {
        let c = Connections::new(Duration::from_secs(600));
        let t0 = Instant::now();
        for port in 1..=3 {
            c.should_close(Some(&addr(port)), t0);
        }
        let look = t0 + Duration::from_millis(5);
        // A request on a connection accepted after the look began.
        c.should_close(Some(&addr(4)), look + Duration::from_millis(1));
        c.retain_open(&[addr(2)].into_iter().collect(), look);
        assert!(c.carried_a_request(&addr(2)));
        assert!(c.carried_a_request(&addr(4)));
        assert!(!c.carried_a_request(&addr(1)));
        assert!(!c.carried_a_request(&addr(3)));
    }

    #[test]
    fn the_table_is_bounded_and_a_connection_past_it_is_closed() {
        let c = Connections::new(Duration::from_secs(3600));
        let t0 = Instant::now();
        let client =
            |i: usize| SocketAddr::from(([127, 0, (i >> 16) as u8, (i >> 8) as u8], i as u16));
        for i in 0..MAX_TRACKED {
            assert!(!c.should_close(Some(&client(i)), t0));
        }
        assert!(c.should_close(Some(&client(MAX_TRACKED)), t0));
        assert!(!c.should_close(Some(&client(1)), t0));
        assert_eq!(c.lock().first_seen.len(), MAX_TRACKED);
    }

    #[test]
    fn the_closing_answer_is_framed_and_says_close() {
        let reply = Reply::error(503, "x");
        let text = String::from_utf8(closing_answer(&reply, false, UNIX_EPOCH)).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{head}"
        );
        assert!(
            head.contains("\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\n"),
            "{head}"
        );
        assert!(
            head.contains(&format!("\r\nContent-Length: {}\r\n", reply.body.len())),
            "{head}"
        );
        assert!(head.ends_with("\r\nConnection: close"), "{head}");
        assert_eq!(body, reply.body);
        let head_only = closing_answer(&reply, true, UNIX_EPOCH);
        assert!(String::from_utf8(head_only)
            .unwrap()
            .ends_with("Connection: close\r\n\r\n"));
    }

    #[test]
    fn http_dates() {
        let at = |secs| UNIX_EPOCH + Duration::from_secs(secs);
        assert_eq!(http_date(at(784_111_777)), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(at(951_782_400)), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(
            http_date(at(1_795_996_800)),
            "Mon, 30 Nov 2026 00:00:00 GMT"
        );
    }
}
