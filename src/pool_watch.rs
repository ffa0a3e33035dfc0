//! Watching tiny_http's connection pool from outside: an accepted connection left waiting in
//! its queue gets a thread at once, and connections idle for `TRIBIST_IDLE_TIMEOUT` end.
//!
//! tiny_http gives each connection a pool thread until the client closes it. Its pool queues a
//! new connection when it counts an idle thread, but it also counts a thread already woken
//! for an earlier connection and about to take it: a burst of connections on a pool with few
//! idle threads (a fresh server has four) leaves most of the burst in the queue, where a
//! connection is taken only when some thread finishes a connection. Keep-alive clients never
//! finish: 60 of 64 connections opened at once went unanswered for the whole 10 s of a test.
//! (It used to be hidden by telling every connection `Connection: close` 50 ms after its
//! first request, which made wrk reconnect ~850 times a second and its p99 rounds 80-180 ms.)
//!
//! The queue is invisible, but its effect is not: a queued connection is one whose client
//! sent bytes that no thread has read (TCP_INFO's bytes received equal the bytes unread). Such
//! a connection found twice, `GRACE` apart, is waiting, and the server then connects to
//! itself and closes that connection at once. The accept thread hands it to the pool like
//! any other; a new thread (or the one about to wake) runs it, reads end-of-file at once, is
//! free, and takes the connection at the head of the queue. One wake-up per waiting
//! connection, repeated (with backoff) while it still waits.
//!
//! Looking costs a pass over `/proc/self/fd`, one fstat(2) per descriptor and two system
//! calls per connection no thread has read from yet (clients.rs `Scanner`). It happens only
//! when connections arrive (the listening socket is watched with epoll, edge triggered: it
//! reports arrivals and nothing else) for `SETTLE` after the last arrival, while a connection
//! waits, and once every `period` (at most a second) as a full look, which also reads every
//! connection's idle time. Keep-alive clients that stay connected cause no arrivals, so no
//! look but the periodic one.
//!
//! Idle connections: a connection that neither sent nor received anything for the idle time,
//! with nothing unread, has its reading side shut down (clients.rs `end_reads`); its thread
//! reads end-of-file and closes it, as when the client closes. That also covers connections
//! that never sent a request. HTTP/1.1 clients expect an idle keep-alive connection to be
//! closed and open another (the close and a new request can cross, as with any server).
//!
//! `Watch` decides from snapshots and a clock, so it is unit-tested without sockets; `start`
//! runs it on a thread of its own against the kernel.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::clients;
use crate::error::Error;

/// A request unread this long by any thread counts as waiting in the pool's queue. A thread
/// that has the connection reads its bytes within microseconds; on a loaded machine it may
/// take longer, and a wake-up connection too many only starts a thread that ends.
pub const GRACE: Duration = Duration::from_millis(2);

/// How long after connections arrived the connections are looked at every `FAST`: tiny_http
/// accepts them and its pool takes them (or queues them) within that time.
pub const SETTLE: Duration = Duration::from_millis(20);

/// The pace of the looks while connections arrive or wait.
pub const FAST: Duration = Duration::from_millis(2);

/// The first look after an arrival: enough for the accept thread to accept it.
const FIRST_LOOK: Duration = Duration::from_millis(1);

/// At most this long between two wake-ups for the same waiting connection.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// One client connection as the kernel sees it (clients.rs `snapshot`).
#[derive(Clone, Debug)]
pub struct Seen {
    pub fd: RawFd,
    pub peer: SocketAddr,
    /// Bytes the client sent, in all.
    pub received: u64,
    /// Bytes received that no thread has read yet.
    pub unread: u64,
    /// How long nothing was received or sent.
    pub quiet: Duration,
}

impl Seen {
    /// The client sent bytes and no thread has read any of them: accepted, not taken.
    fn untaken(&self) -> bool {
        self.received > 0 && self.unread >= self.received
    }
}

/// What to do after a look.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Connections to open to ourselves and close at once: each frees a pool thread for a
    /// waiting connection.
    pub wake: usize,
    /// Idle connections to end, by descriptor and client address.
    pub end: Vec<(RawFd, SocketAddr)>,
    /// When to look again, unless connections arrive first.
    pub next: Duration,
}

/// A connection found waiting.
struct Waiting {
    /// When it may be woken (again).
    next_wake: Instant,
    wakes: u32,
}

/// The decisions, from what each look saw.
pub struct Watch {
    idle: Duration,
    waiting: HashMap<(RawFd, SocketAddr), Waiting>,
    arrived: Option<Instant>,
    /// Totals for the log: connections found waiting, wake-ups, idle connections ended.
    pub found: u64,
    pub wakes: u64,
    pub ended: u64,
}

impl Watch {
    pub fn new(idle: Duration) -> Watch {
        Watch {
            idle,
            waiting: HashMap::new(),
            arrived: None,
            found: 0,
            wakes: 0,
            ended: 0,
        }
    }

    /// How often connections are looked at when nothing arrives: often enough to end an idle
    /// connection within a quarter of the idle time after it, and at least every second.
    pub fn period(&self) -> Duration {
        (self.idle / 4).clamp(FAST, Duration::from_secs(1))
    }

    /// Connections arrived at `now`: when to look (from now).
    pub fn arrived(&mut self, now: Instant) -> Duration {
        self.arrived = Some(now);
        FIRST_LOOK
    }

    /// Decides from the connections seen at `now`.
    pub fn plan(&mut self, now: Instant, seen: &[Seen]) -> Plan {
        let mut plan = Plan::default();
        let mut waiting = HashMap::new();
        for s in seen.iter().filter(|s| s.untaken()) {
            let key = (s.fd, s.peer);
            // Its request may have sat unread for a while already (the kernel's clock, in
            // milliseconds): else it is woken at the first look GRACE later.
            let waited = s.quiet.min(GRACE);
            let mut w = self.waiting.remove(&key).unwrap_or(Waiting {
                next_wake: now + GRACE - waited,
                wakes: 0,
            });
            if now >= w.next_wake {
                if w.wakes == 0 {
                    self.found += 1;
                }
                w.wakes += 1;
                w.next_wake = now + (GRACE * 2u32.pow(w.wakes.min(10))).min(MAX_BACKOFF);
                plan.wake += 1;
            }
            waiting.insert(key, w);
        }
        // Connections taken or gone since the last look are forgotten.
        self.waiting = waiting;
        plan.end = seen
            .iter()
            .filter(|s| s.quiet >= self.idle && s.unread == 0)
            .map(|s| (s.fd, s.peer))
            .collect();
        self.wakes += plan.wake as u64;
        self.ended += plan.end.len() as u64;
        let settling = self
            .arrived
            .is_some_and(|at| now.saturating_duration_since(at) < SETTLE);
        let next_wake = self
            .waiting
            .values()
            .map(|w| w.next_wake.saturating_duration_since(now).max(FAST))
            .min();
        plan.next = match (settling, next_wake) {
            (true, _) => FAST,
            (false, Some(wake)) => wake.min(self.period()),
            (false, None) => self.period(),
        };
        plan
    }
}

/// What the watch did so far, for the log line at shutdown.
#[derive(Default)]
pub struct Totals {
    found: AtomicU64,
    wakes: AtomicU64,
    ended: AtomicU64,
    idle: Duration,
}

impl Totals {
    fn update(&self, watch: &Watch) {
        self.found.store(watch.found, Ordering::Relaxed);
        self.wakes.store(watch.wakes, Ordering::Relaxed);
        self.ended.store(watch.ended, Ordering::Relaxed);
    }

    /// `connections: F found waiting … (W wake-up connections), E ended after …idle`.
    pub fn summary(&self) -> String {
        format!(
            "connections: {} found waiting for a thread in tiny_http's pool ({} wake-up \
             connections), {} ended after {:?} idle",
            self.found.load(Ordering::Relaxed),
            self.wakes.load(Ordering::Relaxed),
            self.ended.load(Ordering::Relaxed),
            self.idle
        )
    }
}

/// Starts the thread that watches the connections accepted on `listener` (a descriptor of
/// the socket tiny_http accepts on, at `target`) while `serving` says so. `open` is told,
/// about once a `period`, the client addresses of the connections open (and when that look
/// began), so that per-connection state of closed ones can go.
pub fn start(
    listener: RawFd,
    target: SocketAddr,
    idle: Duration,
    serving: impl Fn() -> bool + Send + 'static,
    open: impl Fn(&HashSet<SocketAddr>, Instant) + Send + 'static,
) -> Result<Arc<Totals>, Error> {
    let arrivals = Arrivals::new(listener).map_err(|source| Error::Thread {
        what: "connection watch (epoll)",
        source,
    })?;
    let port = target.port();
    let totals = Arc::new(Totals {
        idle,
        ..Totals::default()
    });
    let shared = Arc::clone(&totals);
    thread::Builder::new()
        .name("pool-watch".into())
        .spawn(move || {
            let mut watch = Watch::new(idle);
            let mut scanner = clients::Scanner::new(port);
            let mut look_at = Instant::now() + watch.period();
            let mut full_at = Instant::now();
            // The last look, and the least time from it to the next one.
            let (mut last_look, mut gap) = (Instant::now(), FAST);
            // Whether the next look is one of the fast ones (after arrivals, while one waits).
            let mut soon = false;
            // Looks in a row that woke nothing.
            let mut quiet_looks = 0u32;
            while serving() {
                let now = Instant::now();
                if now < look_at {
                    // A look soon covers whatever arrives meanwhile: sleep rather than be
                    // woken by each arrival of a burst.
                    if soon {
                        thread::sleep(look_at - now);
                    } else if arrivals.wait(look_at - now) {
                        let first = Instant::now() + watch.arrived(Instant::now());
                        (look_at, soon) = (look_at.min(first.max(last_look + gap)), true);
                    }
                    continue;
                }
                if arrivals.wait(Duration::ZERO) {
                    watch.arrived(now);
                }
                // Between full looks (idle times, open connections), only the connections no
                // thread has read from yet are looked at.
                let full = now >= full_at;
                let seen = scanner.look(full);
                let plan = watch.plan(now, &seen);
                shared.update(&watch);
                if !serving() {
                    break;
                }
                act(&plan, target, port);
                if full {
                    open(&seen.iter().map(|s| s.peer).collect(), now);
                    full_at = now + watch.period();
                }
                // A look over thousands of connections takes a while (and longer when the
                // machine is busy): at most a fifth of the time goes to looking. Connections
                // arriving all the time (clients that close after each request) mostly find
                // a thread: after looks that woke nothing, they come 4, then 8 ms apart.
                quiet_looks = if plan.wake > 0 { 0 } else { quiet_looks + 1 };
                let pace = FAST * (1 << quiet_looks.min(3)) / 2;
                (last_look, gap) = (now, pace.max(FAST).max(now.elapsed() * 4));
                look_at = now + plan.next.max(gap);
                soon = plan.next < watch.period();
            }
        })
        .map_err(|source| Error::Thread {
            what: "connection watch",
            source,
        })?;
    log::debug!("connections: watching tiny_http's pool; idle connections end after {idle:?}");
    Ok(totals)
}

/// Wakes waiting connections and ends idle ones.
fn act(plan: &Plan, target: SocketAddr, port: u16) {
    if plan.wake > 0 {
        log::debug!(
            "connections: {} accepted connection(s) waiting for a thread; freeing as many",
            plan.wake
        );
    }
    for _ in 0..plan.wake {
        // Closed at once: the thread that takes it reads end-of-file and is free again.
        if let Err(e) = TcpStream::connect_timeout(&target, Duration::from_millis(100)) {
            log::debug!("connections: wake-up connection to {target} failed: {e}");
        }
    }
    for &(fd, peer) in &plan.end {
        if clients::end_reads(port, fd, peer) {
            log::debug!("connections: ended {peer}'s idle connection");
        }
    }
}

/// The listening socket, watched for arrivals with epoll (edge triggered: each arrival is
/// reported once, whoever accepts it).
struct Arrivals {
    epoll: OwnedFd,
}

impl Arrivals {
    fn new(listener: RawFd) -> io::Result<Arrivals> {
        // SAFETY: epoll_create1 returns a new descriptor, owned here from now on.
        let epoll = unsafe {
            let fd = libc::epoll_create1(libc::EPOLL_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            OwnedFd::from_raw_fd(fd)
        };
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: 0,
        };
        // SAFETY: both descriptors are open; `event` is a valid epoll_event.
        if unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, listener, &mut event) }
            != 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(Arrivals { epoll })
    }

    /// Waits up to `limit` (rounded up to a millisecond) for connections to arrive; whether
    /// any arrived since the last call.
    fn wait(&self, limit: Duration) -> bool {
        let ms = limit.as_micros().div_ceil(1000).min(60_000) as libc::c_int;
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 4];
        // SAFETY: `events` has room for the number of events given.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as libc::c_int,
                ms,
            )
        };
        n > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(60);

    fn seen(fd: RawFd, received: u64, unread: u64, quiet_ms: u64) -> Seen {
        Seen {
            fd,
            peer: SocketAddr::from(([127, 0, 0, 1], 40_000 + fd as u16)),
            received,
            unread,
            quiet: Duration::from_millis(quiet_ms),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_request_nobody_reads_gets_a_wake_up_after_the_grace_then_with_backoff() {
        let mut w = Watch::new(IDLE);
        let t0 = Instant::now();
        let queued = [seen(7, 40, 40, 0)];
        assert_eq!(w.plan(t0, &queued).wake, 0, "not before the grace");
        assert_eq!(w.plan(t0 + ms(1), &queued).wake, 0);
        assert_eq!(w.plan(t0 + GRACE, &queued).wake, 1);
        // Still waiting: woken again only after 2 x GRACE, then 4 x ...
        assert_eq!(w.plan(t0 + GRACE + ms(1), &queued).wake, 0);
        assert_eq!(w.plan(t0 + GRACE * 3, &queued).wake, 1);
        assert_eq!(w.plan(t0 + GRACE * 4, &queued).wake, 0);
        assert_eq!(w.plan(t0 + GRACE * 7, &queued).wake, 1);
        assert_eq!((w.found, w.wakes), (1, 3));
    }

    #[test]
    fn a_request_the_kernel_says_has_sat_unread_for_the_grace_is_woken_at_first_sight() {
        let mut w = Watch::new(IDLE);
        let t0 = Instant::now();
        assert_eq!(w.plan(t0, &[seen(7, 40, 40, 2)]).wake, 1);
        assert_eq!(w.plan(t0, &[seen(8, 40, 40, 1)]).wake, 0);
        assert_eq!(w.plan(t0 + ms(1), &[seen(8, 40, 40, 2)]).wake, 1);
    }

    #[test]
    fn connections_a_thread_has_read_from_or_silent_ones_are_never_woken() {
        let mut w = Watch::new(IDLE);
        let t0 = Instant::now();
        let served = [
            seen(5, 4000, 0, 0),  // read and answered
            seen(6, 4000, 40, 0), // its next request arriving, or pipelined
            seen(8, 0, 0, 0),     // connected, nothing sent yet
        ];
        for i in 0..10 {
            assert_eq!(w.plan(t0 + ms(i), &served).wake, 0);
        }
        assert_eq!(w.found, 0);
    }

    #[test]
    fn every_waiting_connection_gets_a_wake_up_and_a_taken_one_is_forgotten() {
        let mut w = Watch::new(IDLE);
        let t0 = Instant::now();
        let burst: Vec<Seen> = (10..70).map(|fd| seen(fd, 40, 40, 0)).collect();
        w.plan(t0, &burst);
        assert_eq!(w.plan(t0 + GRACE, &burst).wake, 60);
        // All taken: nothing to wake, nothing remembered.
        let taken: Vec<Seen> = (10..70).map(|fd| seen(fd, 80, 0, 0)).collect();
        assert_eq!(w.plan(t0 + GRACE * 2, &taken).wake, 0);
        assert!(w.waiting.is_empty());
        // A new connection on a descriptor number used before starts afresh.
        let again = [seen(10, 40, 40, 0)];
        assert_eq!(w.plan(t0 + GRACE * 3, &again).wake, 0);
        assert_eq!(w.plan(t0 + GRACE * 4, &again).wake, 1);
    }

    #[test]
    fn connections_quiet_for_the_idle_time_are_ended_unless_a_request_waits_unread() {
        let mut w = Watch::new(Duration::from_secs(5));
        let now = Instant::now();
        let plan = w.plan(
            now,
            &[
                seen(3, 400, 0, 5_000), // idle keep-alive connection
                seen(4, 0, 0, 6_000),   // never sent anything
                seen(5, 400, 0, 4_999), // not yet
                seen(6, 40, 40, 9_000), // a request waiting for a thread is not idle
            ],
        );
        let ended: Vec<RawFd> = plan.end.iter().map(|e| e.0).collect();
        assert_eq!(ended, [3, 4]);
        assert_eq!(w.ended, 2);
    }

    #[test]
    fn looks_are_fast_after_arrivals_and_while_one_waits_else_periodic() {
        let mut w = Watch::new(IDLE);
        assert_eq!(w.period(), Duration::from_secs(1));
        assert_eq!(Watch::new(Duration::from_secs(1)).period(), ms(250));
        let t0 = Instant::now();
        assert_eq!(w.plan(t0, &[]).next, w.period());
        assert_eq!(w.arrived(t0), FIRST_LOOK);
        assert_eq!(w.plan(t0 + ms(1), &[]).next, FAST);
        assert_eq!(w.plan(t0 + SETTLE, &[]).next, w.period());
        // A waiting connection: looked at again when it may be woken.
        let queued = [seen(7, 40, 40, 0)];
        assert_eq!(w.plan(t0 + SETTLE, &queued).next, GRACE);
        let woken = w.plan(t0 + SETTLE + GRACE, &queued);
        assert_eq!((woken.wake, woken.next), (1, GRACE * 2));
    }
}
