//! Interrupts of a deployment: Ctrl-C at the deployer's terminal (ssh -t carries it here as
//! SIGINT), a lost connection (SIGHUP; or, without a terminal, a write that fails), and
//! SIGTERM (`make unlock`). They only set a flag: each command checks it between its steps
//! and at every wait, and then puts back what it promised — in its own code path, never in
//! a signal handler (bash's traps ran the clean-up inside whatever was interrupted).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Takes SIGINT, SIGTERM and SIGHUP from now on (once per process; later calls do nothing).
pub fn install() {
    let _ = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst));
}

/// Whether an interrupt has come.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// The deployer's connection is gone (a write to it failed).
pub fn note_lost_client() {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Sleeps `d`, in steps of at most 50 ms; false if an interrupt came meanwhile.
pub fn sleep(d: Duration) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if interrupted() {
            return false;
        }
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(50)));
    }
    !interrupted()
}

/// For tests: clears the flag.
#[cfg(test)]
pub fn reset() {
    INTERRUPTED.store(false, Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_client_interrupts_a_sleep() {
        reset();
        assert!(sleep(Duration::from_millis(10)));
        note_lost_client();
        let t = Instant::now();
        assert!(!sleep(Duration::from_secs(5)));
        assert!(t.elapsed() < Duration::from_secs(1));
        reset();
    }
}
