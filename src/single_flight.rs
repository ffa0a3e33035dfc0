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
//! stalled database cannot hold requests longer than it did before. A check that panics ends
//! its generation without a result; its waiters are told so instead of waiting forever.
//!
//! Generic over the outcome so that it is unit-tested with plain closures and threads.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// Why a waiter got no outcome of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missed {
    /// Its deadline passed before a check that started after it arrived had ended.
    Timeout,
    /// The check it waited for panicked.
    CheckFailed,
}

/// Shared by every worker of one server.
pub struct SingleFlight<T> {
    state: Mutex<State<T>>,
    finished: Condvar,
    checks: AtomicU64,
    answers: AtomicU64,
}

struct State<T> {
    /// Checks started so far; the running one, if any, is number `started`.
    started: u64,
    running: bool,
    /// The outcome of check number `started` once it ended (`None` if it panicked), and how
    /// many requests it answered.
    last: Option<(T, usize)>,
    /// Requests waiting for the running check (they arrived before it started, while the
    /// previous one ran).
    joined_running: usize,
    /// Requests waiting for the check after the running one.
    joined_next: usize,
}

impl<T: Clone> Default for SingleFlight<T> {
    fn default() -> Self {
        SingleFlight {
            state: Mutex::new(State {
                started: 0,
                running: false,
                last: None,
                joined_running: 0,
                joined_next: 0,
            }),
            finished: Condvar::new(),
            checks: AtomicU64::new(0),
            answers: AtomicU64::new(0),
        }
    }
}

impl<T: Clone> SingleFlight<T> {
    /// The outcome of a check that started after this call, and how many requests that check
    /// answered. `check` runs here if no check is running when this request's turn comes;
    /// otherwise this waits for one until `deadline` and answers `missed(..)` if none ended.
    pub fn run(
        &self,
        deadline: Instant,
        check: impl FnOnce() -> T,
        missed: impl FnOnce(Missed) -> T,
    ) -> (T, usize) {
        let mut state = self.lock();
        // Any check numbered `target` or higher starts after now.
        let target = state.started + 1;
        // Counted among the next check's requests while waiting for it.
        let joined = state.running;
        if joined {
            state.joined_next += 1;
        }
        loop {
            if state.started >= target && !state.running {
                // Check `state.started` (>= target) ended: its outcome answers this request.
                return match &state.last {
                    Some((outcome, answered)) => {
                        self.answers.fetch_add(1, Ordering::Relaxed);
                        (outcome.clone(), *answered)
                    }
                    None => (missed(Missed::CheckFailed), 1),
                };
            }
            if !state.running {
                // No check is running, and none since this request arrived has ended: this
                // request runs the next one, for itself and everyone who joined it.
                return self.lead(state, joined, check);
            }
            let now = Instant::now();
            if now >= deadline {
                if state.started >= target {
                    state.joined_running -= 1;
                } else {
                    state.joined_next -= 1;
                }
                return (missed(Missed::Timeout), 1);
            }
            state = match self.finished.wait_timeout(state, deadline - now) {
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

    fn lead(
        &self,
        mut state: MutexGuard<'_, State<T>>,
        joined: bool,
        check: impl FnOnce() -> T,
    ) -> (T, usize) {
        state.started += 1;
        state.running = true;
        // Whoever joined "the next check" joined this one, except its leader.
        state.joined_running = state.joined_next - usize::from(joined);
        state.joined_next = 0;
        drop(state);
        self.checks.fetch_add(1, Ordering::Relaxed);
        let outcome = catch_unwind(AssertUnwindSafe(check));
        let mut state = self.lock();
        let answered = 1 + state.joined_running;
        state.joined_running = 0;
        state.running = false;
        state.last = outcome.as_ref().ok().map(|o| (o.clone(), answered));
        drop(state);
        self.finished.notify_all();
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::sync::Arc;
    use std::thread;
    use std::time::Duration;

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(10)
    }

    #[test]
    fn alone_a_request_runs_its_own_check() {
        let sf = SingleFlight::default();
        assert_eq!(sf.run(far(), || 7, |_| 0), (7, 1));
        assert_eq!(sf.run(far(), || 8, |_| 0), (8, 1));
        assert_eq!(sf.totals(), (2, 2));
    }

    /// Requests arriving while a check runs wait for the next one, which starts after they
    /// arrived, and share it: one check for all of them.
    #[test]
    fn requests_during_a_check_share_the_next_one() {
        let sf = Arc::new(SingleFlight::default());
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
        while sf.lock().joined_next < 5 {
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
        let sf = Arc::new(SingleFlight::default());
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
        let state = sf.lock();
        assert_eq!((state.joined_next, state.joined_running), (0, 0));
    }

    #[test]
    fn a_panicking_check_releases_its_waiters() {
        let sf = Arc::new(SingleFlight::<i32>::default());
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
        while sf.lock().joined_next < 2 {
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
}
