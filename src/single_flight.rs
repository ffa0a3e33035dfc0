//! One database round trip answers every `/health` request that arrived before it started.
//!
//! A probe storm (load balancers, monitors, a retrying client) used to cost the database one
//! query per request, and the workers' connections took turns. Here concurrent checks join:
//! the first request to find no check running runs one itself (on its own worker's
//! connection) and every request that arrives while it runs waits for the *next* check, which
//! one of them starts as soon as the running one ends. So an answer never comes from a check
//! that started before its request arrived (no stale "pass" after the database went down), and
//! the database sees at most one health query per round trip, however many requests wait.
//!
//! A waiter gives up at its own deadline (the database timeout from its arrival), so a
//! stalled database cannot hold requests longer than it did before. Waiting for the next
//! check would double the wait when the database is slow rather than stalled, so a check
//! that has run for `overlap_after` (an eighth of the timeout) lets one waiter start the
//! next beside it: at most one check per `overlap_after` then, and a request waits at most
//! `overlap_after` plus one round trip. Checks may then end out of order; a waiter takes
//! the first to end of those that started after it arrived. A check that panics ends
//! without a result; its waiters are told so instead of waiting forever.
//!
//! A stalled database would still hold every waiting request (and its worker thread) for a
//! whole timeout, leaving none for `/livez`. So once a check has run `stall_after` (half the
//! timeout) and no check has succeeded since it started, requests are answered at once with
//! `Missed::Stalled`: evidence of a stall that exists when they arrive, never a stale pass.
//! New checks start again as soon as the stalled ones end.
//!
//! Generic over the outcome so that it is unit-tested with plain closures and threads.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Why a waiter got no outcome of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missed {
    /// Its deadline passed before a check that started after it arrived had ended.
    Timeout,
    /// The check it waited for panicked.
    CheckFailed,
    /// A check has run this long and none succeeded since it started: the database is not
    /// answering, known before this request would wait its whole timeout for it.
    Stalled(Duration),
}

/// Shared by every worker of one server.
pub struct SingleFlight<T> {
    state: Mutex<State<T>>,
    ended: Condvar,
    /// A check running this long no longer holds back the requests that arrived after it
    /// started: one of them starts the next check beside it (a slow database, not a probe
    /// storm, is what makes checks this long).
    overlap_after: Duration,
    /// A check running this long with none succeeded since it started means a stall: new requests
    /// are answered at once instead of each holding a worker for its whole timeout (which
    /// left none for `/livez`).
    stall_after: Duration,
    /// Whether an outcome is a success (failures, such as the timeouts of overlapping checks,
    /// prove nothing against a stall).
    is_ok: fn(&T) -> bool,
    checks: AtomicU64,
    answers: AtomicU64,
}

struct State<T> {
    /// Checks started so far; they are numbered from 1.
    started: u64,
    /// When each running check began, by number: the first is the oldest, and check number
    /// `started` is the newest while it runs.
    running_since: BTreeMap<u64, Instant>,
    /// When the last successful check ended.
    last_ok_at: Option<Instant>,
    /// The highest-numbered check that ended, its outcome (`None` if it panicked) and how
    /// many requests it answered. Checks may end out of order; an older one changes nothing.
    best: u64,
    last: Option<(T, usize)>,
    /// Requests waiting, by the lowest check number that may answer them (any check that
    /// started after they arrived).
    waiting: BTreeMap<u64, usize>,
}

impl<T: Clone> SingleFlight<T> {
    pub fn new(overlap_after: Duration, stall_after: Duration, is_ok: fn(&T) -> bool) -> Self {
        SingleFlight {
            state: Mutex::new(State {
                started: 0,
                running_since: BTreeMap::new(),
                last_ok_at: None,
                best: 0,
                last: None,
                waiting: BTreeMap::new(),
            }),
            ended: Condvar::new(),
            overlap_after,
            stall_after,
            is_ok,
            checks: AtomicU64::new(0),
            answers: AtomicU64::new(0),
        }
    }

    /// The outcome of a check that started after this call, and how many requests that check
    /// answered. `check` runs here when it is this request's turn: no check has started
    /// since it arrived, and none runs (or the one running has run for `overlap_after`).
    /// Otherwise this waits, until `deadline` at most, and then answers `missed(..)`.
    pub fn run(
        &self,
        deadline: Instant,
        check: impl FnOnce() -> T,
        missed: impl FnOnce(Missed) -> T,
    ) -> (T, usize) {
        let mut state = self.lock();
        // Any check numbered `target` or higher starts after now.
        let target = state.started + 1;
        let mut joined = false;
        loop {
            if state.best >= target {
                return match &state.last {
                    Some((outcome, answered)) => {
                        self.answers.fetch_add(1, Ordering::Relaxed);
                        (outcome.clone(), *answered)
                    }
                    None => (missed(Missed::CheckFailed), 1),
                };
            }
            let now = Instant::now();
            if now >= deadline {
                if joined {
                    state.leave(target);
                }
                return (missed(Missed::Timeout), 1);
            }
            let stall_at = state.stall_at(self.stall_after);
            if stall_at.is_some_and(|at| now >= at) {
                if joined {
                    state.leave(target);
                }
                let oldest = state.oldest_running().unwrap_or(now);
                return (missed(Missed::Stalled(now - oldest)), 1);
            }
            // Nothing started since this request arrived: it starts the next check if none
            // runs, or when the running one has run too long.
            let overlap_at = state
                .running_since
                .get(&state.started)
                .map(|&since| since + self.overlap_after);
            if state.started < target && overlap_at.is_none_or(|at| now >= at) {
                if joined {
                    state.leave(target);
                }
                return self.lead(state, check);
            }
            if !joined {
                *state.waiting.entry(target).or_default() += 1;
                joined = true;
            }
            let wake = match overlap_at {
                Some(at) if state.started < target => at.min(deadline),
                _ => deadline,
            };
            let wake = stall_at.map_or(wake, |at| at.min(wake));
            state = match self
                .ended
                .wait_timeout(state, wake.saturating_duration_since(now))
            {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    /// How many checks ran and how many requests they answered, since the start.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.checks.load(Ordering::Relaxed),
            self.answers.load(Ordering::Relaxed),
        )
    }

    fn lead(&self, mut state: MutexGuard<'_, State<T>>, check: impl FnOnce() -> T) -> (T, usize) {
        state.started += 1;
        let number = state.started;
        state.running_since.insert(number, Instant::now());
        drop(state);
        self.checks.fetch_add(1, Ordering::Relaxed);
        let outcome = catch_unwind(AssertUnwindSafe(check));
        let mut state = self.lock();
        state.running_since.remove(&number);
        if outcome.as_ref().is_ok_and(|o| (self.is_ok)(o)) {
            state.last_ok_at = Some(Instant::now());
        }
        let mut answered = 1;
        if number > state.best {
            // Everyone waiting for this check or an earlier one is answered by it.
            let later = state.waiting.split_off(&(number + 1));
            answered += std::mem::replace(&mut state.waiting, later)
                .values()
                .sum::<usize>();
            state.best = number;
            state.last = outcome.as_ref().ok().map(|o| (o.clone(), answered));
        }
        drop(state);
        self.ended.notify_all();
        match outcome {
            Ok(outcome) => {
                self.answers.fetch_add(1, Ordering::Relaxed);
                (outcome, answered)
            }
            Err(panic) => resume_unwind(panic),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic never happens while the lock is held (checks run unlocked).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<T> State<T> {
    /// When the oldest running check counts as stalled, if none succeeded since it started.
    fn stall_at(&self, stall_after: Duration) -> Option<Instant> {
        let oldest = self.oldest_running()?;
        let ok_since = self.last_ok_at.is_some_and(|at| at >= oldest);
        (!ok_since).then_some(oldest + stall_after)
    }

    /// When the oldest running check began (checks start in the order of their numbers).
    fn oldest_running(&self) -> Option<Instant> {
        self.running_since
            .first_key_value()
            .map(|(_, &since)| since)
    }

    /// A request waiting for check `target` or later stops waiting.
    fn leave(&mut self, target: u64) {
        if let Some(n) = self.waiting.get_mut(&target) {
            *n -= 1;
            if *n == 0 {
                self.waiting.remove(&target);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::sync::Arc;
    use std::thread;

    /// Long enough that checks never overlap in these tests.
    const LONG: Duration = Duration::from_secs(60);

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(10)
    }

    #[test]
    fn alone_a_request_runs_its_own_check() {
        let sf = SingleFlight::new(LONG, LONG, |_| true);
        assert_eq!(sf.run(far(), || 7, |_| 0), (7, 1));
        assert_eq!(sf.run(far(), || 8, |_| 0), (8, 1));
        assert_eq!(sf.totals(), (2, 2));
    }

    /// Requests arriving while a check runs wait for the next one, which starts after they
    /// arrived, and share it: one check for all of them.
    #[test]
    fn requests_during_a_check_share_the_next_one() {
        let sf = Arc::new(SingleFlight::new(LONG, LONG, |_| true));
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let (started_tx, started_rx) = mpsc::channel::<()>();
        let leader = {
            let sf = Arc::clone(&sf);
            thread::spawn(move || {
                sf.run(
                    far(),
                    || {
                        started_tx.send(()).unwrap();
                        release_rx.recv().unwrap();
                        "first"
                    },
                    |_| "missed",
                )
            })
        };
        started_rx.recv().unwrap();
        let waiters: Vec<_> = (0..5)
            .map(|_| {
                let sf = Arc::clone(&sf);
                thread::spawn(move || sf.run(far(), || "second", |_| "missed"))
            })
            .collect();
        // All five are waiting before the first check ends.
        let deadline = Instant::now() + Duration::from_secs(5);
        while sf.lock().waiting.values().sum::<usize>() < 5 {
            assert!(Instant::now() < deadline, "waiters did not join");
            thread::yield_now();
        }
        release_tx.send(()).unwrap();
        assert_eq!(leader.join().unwrap(), ("first", 1));
        for w in waiters {
            assert_eq!(w.join().unwrap(), ("second", 5));
        }
        assert_eq!(sf.totals(), (2, 6));
    }

    #[test]
    fn a_waiter_gives_up_at_its_deadline() {
        let sf = Arc::new(SingleFlight::new(LONG, LONG, |_| true));
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let (started_tx, started_rx) = mpsc::channel::<()>();
        let leader = {
            let sf = Arc::clone(&sf);
            thread::spawn(move || {
                sf.run(
                    far(),
                    || {
                        started_tx.send(()).unwrap();
                        release_rx.recv().unwrap();
                        1
                    },
                    |_| 0,
                )
            })
        };
        started_rx.recv().unwrap();
        let soon = Instant::now() + Duration::from_millis(50);
        assert_eq!(
            sf.run(soon, || 2, |m| if m == Missed::Timeout { -1 } else { 0 }),
            (-1, 1)
        );
        assert!(Instant::now() >= soon);
        release_tx.send(()).unwrap();
        assert_eq!(leader.join().unwrap(), (1, 1));
        assert!(sf.lock().waiting.is_empty());
    }

    #[test]
    fn a_panicking_check_releases_its_waiters() {
        let sf = Arc::new(SingleFlight::<i32>::new(LONG, LONG, |_| true));
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let (started_tx, started_rx) = mpsc::channel::<()>();
        let first = {
            let sf = Arc::clone(&sf);
            thread::spawn(move || {
                sf.run(
                    far(),
                    || {
                        started_tx.send(()).unwrap();
                        release_rx.recv().unwrap();
                        1
                    },
                    |_| 0,
                )
            })
        };
        started_rx.recv().unwrap();
        let (second_started_tx, second_started_rx) = mpsc::channel::<()>();
        let (second_release_tx, second_release_rx) = mpsc::channel::<()>();
        let second = {
            let sf = Arc::clone(&sf);
            thread::spawn(move || {
                sf.run(
                    far(),
                    || {
                        second_started_tx.send(()).unwrap();
                        second_release_rx.recv().unwrap();
                        panic!("check panicked")
                    },
                    |_| 0,
                )
            })
        };
        let third = {
            let sf = Arc::clone(&sf);
            thread::spawn(move || {
                sf.run(
                    far(),
                    || 3,
                    |m| if m == Missed::CheckFailed { -2 } else { 0 },
                )
            })
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while sf.lock().waiting.values().sum::<usize>() < 2 {
            assert!(Instant::now() < deadline, "waiters did not join");
            thread::yield_now();
        }
        release_tx.send(()).unwrap();
        assert_eq!(first.join().unwrap(), (1, 1));
        // Either of the two leads the second check.
        loop {
            if second_started_rx.try_recv().is_ok() {
                second_release_tx.send(()).unwrap();
                assert!(second.join().is_err());
                assert_eq!(third.join().unwrap(), (-2, 1));
                break;
            }
            if third.is_finished() {
                assert_eq!(third.join().unwrap(), (3, 2));
                assert_eq!(second.join().unwrap(), (3, 2));
                break;
            }
            assert!(Instant::now() < deadline, "the second check did not end");
            thread::yield_now();
        }
        // Afterwards checks run again.
        assert_eq!(sf.run(far(), || 9, |_| 0), (9, 1));
    }

    /// A database slow rather than stalled: once the running check is `overlap_after` old, a
    /// request that arrived after it started starts its own beside it, and gets its answer
    /// without waiting for the slow one.
    #[test]
    fn a_long_check_lets_the_next_one_start_beside_it() {
        let sf = Arc::new(SingleFlight::new(Duration::from_millis(20), LONG, |_| true));
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let (started_tx, started_rx) = mpsc::channel::<()>();
        // Taken before the slow check can start: the one beside it may start 20 ms after that
        // start, and no earlier (measured from a later instant, a descheduled test thread
        // made it look early on a loaded CI machine).
        let before_slow = Instant::now();
        let slow = {
            let sf = Arc::clone(&sf);
            thread::spawn(move || {
                sf.run(
                    far(),
                    || {
                        started_tx.send(()).unwrap();
                        release_rx.recv().unwrap();
                        "slow"
                    },
                    |_| "missed",
                )
            })
        };
        started_rx.recv().unwrap();
        assert_eq!(sf.run(far(), || "beside", |_| "missed"), ("beside", 1));
        assert!(before_slow.elapsed() >= Duration::from_millis(20));
        release_tx.send(()).unwrap();
        // The slow one ended after a newer one: it answers only its own request.
        assert_eq!(slow.join().unwrap(), ("slow", 1));
        assert_eq!(sf.run(far(), || "next", |_| "missed"), ("next", 1));
    }

    /// Many threads, short checks, short and long deadlines: no panic, every answer from a
    /// check that started after its request arrived, and counters that add up.
    #[test]
    fn under_contention_no_answer_predates_its_request() {
        let sf = Arc::new(SingleFlight::new(Duration::from_millis(2), LONG, |_| true));
        let threads: Vec<_> = (0..16)
            .map(|t| {
                let sf = Arc::clone(&sf);
                thread::spawn(move || {
                    let mut answered = 0;
                    for i in 0..300 {
                        let arrived = Instant::now();
                        let limit = if (t + i) % 3 == 0 { 1 } else { 50 };
                        let (started, _) = sf.run(
                            arrived + Duration::from_millis(limit),
                            || {
                                let started = Instant::now();
                                thread::sleep(Duration::from_micros(300));
                                Some(started)
                            },
                            |_| None,
                        );
                        if let Some(started) = started {
                            assert!(started >= arrived, "an answer older than its request");
                            answered += 1;
                        }
                    }
                    answered
                })
            })
            .collect();
        let answered: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        let (checks, answers) = sf.totals();
        assert_eq!(answers, answered);
        assert!(checks < answers, "checks {checks}, answers {answers}");
        assert!(sf.lock().waiting.is_empty());
    }

    /// A stall: once a check has run `stall_after` with none ended since, requests are
    /// answered at once, waiters included, instead of each waiting its whole deadline.
    #[test]
    fn a_stalled_check_fails_new_requests_at_once() {
        let sf = Arc::new(SingleFlight::new(LONG, Duration::from_millis(30), |_| true));
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let (started_tx, started_rx) = mpsc::channel::<()>();
        let stuck = {
            let sf = Arc::clone(&sf);
            thread::spawn(move || {
                sf.run(
                    far(),
                    || {
                        started_tx.send(()).unwrap();
                        release_rx.recv().unwrap();
                        "late"
                    },
                    |_| "missed",
                )
            })
        };
        started_rx.recv().unwrap();
        let asked = Instant::now();
        let waiter = {
            let sf = Arc::clone(&sf);
            thread::spawn(move || {
                sf.run(
                    far(),
                    || "second",
                    |m| {
                        if matches!(m, Missed::Stalled(_)) {
                            "stalled"
                        } else {
                            "other"
                        }
                    },
                )
            })
        };
        assert_eq!(waiter.join().unwrap(), ("stalled", 1));
        let waited = asked.elapsed();
        assert!(
            waited >= Duration::from_millis(25) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
        let now = Instant::now();
        assert_eq!(sf.run(far(), || "third", |_| "stalled"), ("stalled", 1));
        // At once, not after a wait for the stalled check (its deadline is far away): a bound
        // a loaded CI machine's scheduling cannot reach (20 ms failed there once).
        assert!(
            now.elapsed() < Duration::from_secs(1),
            "{:?}",
            now.elapsed()
        );
        release_tx.send(()).unwrap();
        assert_eq!(stuck.join().unwrap(), ("late", 1));
        // Once it ended, checks run again.
        assert_eq!(sf.run(far(), || "fresh", |_| "stalled"), ("fresh", 1));
        assert!(sf.lock().waiting.is_empty());
    }
}
