//! The handover as the kit decides it: whether a switch can be a handover (`systemctl
//! reload`) or must be a restart, and how the unit's reload step reads the outcome of the
//! handover it asked for. Decisions only, from what was observed (systemd's properties, the
//! server's `StatusText`, a process's cgroup and owner), so that `cargo test` checks every
//! case without systemd; `switch` and `unit` make the observations and act.
//!
//! The serving process's `StatusText` starts with fixed tokens (src/handover.rs `Status`):
//! `handover=STATE`, then ` attempt=N` but for `off` and `stopping`, then `; ` and words for
//! people. systemd takes `STATUS=` from the main process only (`NotifyAccess=main`), so
//! reading them reads no file of tribist's. A server that predates the tokens said "SIGUSR2
//! hands over" and "handover attempt … failed" in its words, which are read as before.

use std::time::Duration;

/// How long the reload step waits for a successor: the server gives one 10 s, this a little
/// longer, within the unit's `TimeoutStartSec=`.
pub const RELOAD_LIMIT: Duration = Duration::from_secs(14);

/// The tokens at the start of a `StatusText`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tokens {
    /// ready, started, failed, off, stopping; `None` for a server that predates the tokens.
    pub state: Option<String>,
    /// The number of its last attempt, if it says one.
    pub attempt: Option<u32>,
}

/// Reads `^handover=([a-z]+)( attempt=([0-9]{1,9}))?(;|$)` from `status`.
pub fn tokens(status: &str) -> Tokens {
    let none = Tokens::default();
    let Some(rest) = status.strip_prefix("handover=") else {
        return none;
    };
    let state_len = rest.bytes().take_while(u8::is_ascii_lowercase).count();
    if state_len == 0 {
        return none;
    }
    let (state, mut rest) = rest.split_at(state_len);
    let mut attempt = None;
    if let Some(after) = rest.strip_prefix(" attempt=") {
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if (1..=9).contains(&digits) && (after.len() == digits || after[digits..].starts_with(';'))
        {
            attempt = after[..digits].parse().ok();
            rest = &after[digits..];
        }
    }
    if !(rest.is_empty() || rest.starts_with(';')) {
        return none;
    }
    Tokens {
        state: Some(state.to_string()),
        attempt,
    }
}

/// Whether the serving process, whose `StatusText` is `status`, can hand over now: its
/// tokens say ready (or failed: it serves on and takes the next attempt); a server that
/// predates them says "SIGUSR2 hands over" in its words.
pub fn serving_hands_over(status: &str) -> bool {
    match tokens(status).state.as_deref() {
        Some("ready" | "failed") => true,
        Some(_) => false,
        None => status.contains("SIGUSR2 hands over"),
    }
}

/// Whether `now` says that the attempt asked for after `before` (the `StatusText` before the
/// signal) failed: its tokens say failed with a higher attempt number; a server that
/// predates them says "handover attempt … failed" in words that changed.
pub fn handover_failed(now: &str, before: &str) -> bool {
    let before_attempt = tokens(before).attempt.unwrap_or(0);
    let t = tokens(now);
    match t.state.as_deref() {
        Some(state) => state == "failed" && t.attempt.is_some_and(|n| n > before_attempt),
        None => {
            now != before
                && now
                    .find("handover attempt")
                    .is_some_and(|i| now[i + "handover attempt".len()..].contains("failed"))
        }
    }
}

/// The reason a failed attempt gives, in the server's words after the tokens: from the last
/// "handover attempt" on, else everything after `handover=…; `.
pub fn failure_reason(status: &str) -> String {
    let words = match status.strip_prefix("handover=") {
        Some(rest) => rest.split_once("; ").map_or(status, |(_, w)| w),
        None => status,
    };
    match words.rfind("handover attempt") {
        Some(i) => words[i..].to_string(),
        None => words.to_string(),
    }
}

/// What systemd says of the service, for [`no_handover`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnitView {
    pub active_state: String,
    pub can_reload: String,
    pub status_text: String,
    /// When the service last started (`InactiveExitTimestamp`), µs since the epoch.
    pub started_us: Option<i64>,
}

/// Why the next switch cannot be a handover, or `None` when it can: the service is up, the
/// unit has the reload step, the serving process says it hands over, the new binary says it
/// takes over (`new_hands_over`, asked only when it matters: it may run the binary), the
/// environment file is older than the service's start (a handover keeps the environment;
/// when that cannot be told, it is taken as changed), and, as tribist, sudo allows the
/// reload (`sudo_allows`, asked last).
pub fn no_handover(
    view: &UnitView,
    new_hands_over: impl FnOnce() -> bool,
    env_mtime_us: Option<i64>,
    sudo_allows: impl FnOnce() -> bool,
) -> Option<String> {
    let unit = super::paths::UNIT;
    let env = super::paths::ENV_FILE;
    if view.active_state != "active" {
        let state = if view.active_state.is_empty() {
            "unknown"
        } else {
            &view.active_state
        };
        return Some(format!("{unit} is {state}, not active"));
    }
    if view.can_reload != "yes" {
        return Some("the installed unit has no reload step (make install updates it)".into());
    }
    if !serving_hands_over(&view.status_text) {
        return Some(match tokens(&view.status_text).state {
            Some(state) => format!("the serving process cannot hand over now (handover={state})"),
            None => "the serving binary predates handovers".into(),
        });
    }
    if !new_hands_over() {
        return Some("the release to switch to predates handovers".into());
    }
    match (view.started_us, env_mtime_us) {
        (Some(started), Some(mtime)) if mtime < started => {}
        _ => {
            return Some(format!(
                "{env} changed since {unit} started (or that cannot be told)"
            ))
        }
    }
    if !sudo_allows() {
        return Some(format!(
            "sudo does not allow tribist 'systemctl reload {unit}' (make install updates it)"
        ));
    }
    None
}

/// `Day YYYY-MM-DD HH:MM:SS[.ffffff] UTC` (systemctl show --timestamp=us with TZ=UTC) as µs
/// since the epoch; `None` for anything else (another zone, "n/a", empty).
pub fn parse_utc_timestamp(s: &str) -> Option<i64> {
    let mut words = s.split(' ');
    let (_day, date, time, zone) = (words.next()?, words.next()?, words.next()?, words.next()?);
    if zone != "UTC" || words.next().is_some() {
        return None;
    }
    let num = |t: &str, len: usize| -> Option<i64> {
        (t.len() == len && t.bytes().all(|b| b.is_ascii_digit()))
            .then(|| t.parse().ok())
            .flatten()
    };
    let mut d = date.split('-');
    let (y, m, dd) = (num(d.next()?, 4)?, num(d.next()?, 2)?, num(d.next()?, 2)?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.split(':');
    let (h, mi, se) = (num(t.next()?, 2)?, num(t.next()?, 2)?, num(t.next()?, 2)?);
    if d.next().is_some() || t.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&dd)
    {
        return None;
    }
    let micros = if frac.is_empty() {
        0
    } else {
        if frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        frac.parse::<i64>().ok()? * 10i64.pow(6 - frac.len() as u32)
    };
    let days = crate::host::civil::days_from_civil(y, m, dd);
    Some(((days * 86_400 + h * 3600 + mi * 60 + se) * 1_000_000) + micros)
}

/// One look of the reload step at systemd, after it had SIGUSR2 sent to `main`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReloadStep {
    /// systemd's main process is now this pid: whether it is the service's own is
    /// [`successor_ok`]'s to say.
    Successor(u32),
    /// The attempt failed; the server's reason. The old process serves on.
    Failed(String),
    /// The old process is gone and nothing took its place.
    Ended,
    /// No handover within [`RELOAD_LIMIT`].
    TimedOut,
    /// Look again shortly.
    Wait,
}

/// What to do, given systemd's `MainPID` (as shown: maybe empty or 0) and `StatusText` now,
/// the `StatusText` before the signal, and the time since it was sent.
pub fn reload_step(
    main: u32,
    before: &str,
    main_pid_now: &str,
    status_now: &str,
    elapsed: Duration,
) -> ReloadStep {
    if elapsed >= RELOAD_LIMIT {
        return ReloadStep::TimedOut;
    }
    let pid = pid_of(main_pid_now);
    if let Some(pid) = pid.filter(|p| *p != main) {
        return ReloadStep::Successor(pid);
    }
    if handover_failed(status_now, before) {
        return ReloadStep::Failed(failure_reason(status_now));
    }
    if pid != Some(main) {
        return ReloadStep::Ended;
    }
    ReloadStep::Wait
}

/// A pid as systemd shows it: `[1-9][0-9]*`.
pub fn pid_of(s: &str) -> Option<u32> {
    (!s.is_empty() && !s.starts_with('0') && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// Whether a process whose `/proc/PID/cgroup` says `cgroup` and whose owner is `owner_uid`
/// is a process of `unit` running as `service_uid`: only the serving process can name its
/// successor (`NotifyAccess=main`), but this step still checks before saying so (never one of
/// root's, such as this step's own). Its parent proves nothing: the old process may be gone.
pub fn successor_ok(cgroup: &str, owner_uid: Option<u32>, service_uid: u32, unit: &str) -> bool {
    let tail = format!("/{unit}.service");
    let in_unit = cgroup.lines().any(|line| {
        let rest = line.strip_prefix("0::").or_else(|| {
            let digits = line.bytes().take_while(u8::is_ascii_digit).count();
            (digits > 0)
                .then(|| line[digits..].strip_prefix(":name=systemd:"))
                .flatten()
        });
        rest.is_some_and(|r| r.starts_with('/') && r.ends_with(&tail))
    });
    in_unit && owner_uid == Some(service_uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const READY: &str =
        "handover=ready attempt=0; serving on 127.0.0.1:8383 with 16 workers (pid 7; SIGUSR2 hands over)";
    const OLD: &str = "serving on 127.0.0.1:8383 with 16 workers (pid 7; SIGUSR2 hands over)";

    #[test]
    fn the_tokens_decide_not_the_words() {
        assert!(serving_hands_over(READY));
        assert_eq!(tokens(READY).state.as_deref(), Some("ready"));
        assert!(serving_hands_over(
            "handover=failed attempt=2; serving on … (pid 7; SIGUSR2 hands over); handover attempt 2 failed: x"
        ));
        let started = "handover=started attempt=3; handing over to /x (attempt 3)";
        assert!(!serving_hands_over(started));
        assert_eq!(
            tokens(started),
            Tokens {
                state: Some("started".into()),
                attempt: Some(3)
            }
        );
        assert!(!serving_hands_over(
            "handover=off; serving on … (pid 7; SIGUSR2 hands over)"
        ));
        assert!(serving_hands_over(
            "handover=ready attempt=0; reworded entirely"
        ));
        assert!(serving_hands_over("handover=ready attempt=0"));
        // A server that predates the tokens.
        assert!(serving_hands_over(OLD));
        assert!(!serving_hands_over(
            "serving on 127.0.0.1:8383 with 16 workers (pid 7)"
        ));
        // Not tokens: anything else after the state, or an attempt of ten digits.
        assert_eq!(tokens("handover=ready, attempt=0").state, None);
        assert_eq!(tokens("handover=Ready attempt=0").state, None);
        assert_eq!(
            tokens("handover=failed attempt=1234567890; x").attempt,
            None
        );
        assert_eq!(tokens("handover=failed attempt=1234567890; x").state, None);
        assert_eq!(tokens(" handover=ready").state, None);
    }

    #[test]
    fn a_failure_is_the_attempt_asked_for() {
        assert!(handover_failed(
            "handover=failed attempt=1; reworded: no",
            READY
        ));
        assert!(!handover_failed(
            "handover=failed attempt=2; x",
            "handover=failed attempt=2; x"
        ));
        assert!(handover_failed(
            "handover=failed attempt=3; x",
            "handover=failed attempt=2; x"
        ));
        assert!(!handover_failed(
            "handover=started attempt=3; handover attempt 2 failed",
            "handover=failed attempt=2; x"
        ));
        assert!(!handover_failed(READY, READY));
        // Words with no tokens: as before the tokens.
        let failed = format!("{OLD}; handover attempt 1 failed: it ended");
        assert!(handover_failed(&failed, OLD));
        assert!(!handover_failed(OLD, OLD));
        assert!(!handover_failed(
            &format!("{OLD}; failed handover attempt"),
            OLD
        ));
    }

    #[test]
    fn the_reason_is_the_servers_words_from_the_last_attempt() {
        assert_eq!(
            failure_reason(
                "handover=failed attempt=2; serving (SIGUSR2 hands over); handover attempt 1 failed: a; handover attempt 2 failed: /x was not ready within 10s"
            ),
            "handover attempt 2 failed: /x was not ready within 10s"
        );
        assert_eq!(
            failure_reason("handover=failed attempt=2; it ended"),
            "it ended"
        );
        assert_eq!(
            failure_reason("x; handover attempt 1 failed"),
            "handover attempt 1 failed"
        );
    }

    fn view(state: &str, can: &str, status: &str) -> UnitView {
        UnitView {
            active_state: state.into(),
            can_reload: can.into(),
            status_text: status.into(),
            started_us: Some(2_000_000),
        }
    }

    #[test]
    fn a_handover_when_everything_allows_it_else_the_reason() {
        let yes = || true;
        let ok = view("active", "yes", READY);
        assert_eq!(no_handover(&ok, yes, Some(1_999_999), yes), None);
        let why = |v: &UnitView, new: bool, env: Option<i64>, sudo: bool| {
            no_handover(v, || new, env, || sudo).unwrap_or_default()
        };
        assert_eq!(
            why(&view("activating", "yes", READY), true, Some(1), true),
            "tribist is activating, not active"
        );
        assert_eq!(
            why(&view("", "yes", READY), true, Some(1), true),
            "tribist is unknown, not active"
        );
        assert!(why(&view("active", "no", READY), true, Some(1), true).contains("no reload step"));
        assert_eq!(
            why(
                &view("active", "yes", "handover=started attempt=1; x"),
                true,
                Some(1),
                true
            ),
            "the serving process cannot hand over now (handover=started)"
        );
        assert_eq!(
            why(&view("active", "yes", "serving"), true, Some(1), true),
            "the serving binary predates handovers"
        );
        assert_eq!(
            why(&ok, false, Some(1), true),
            "the release to switch to predates handovers"
        );
        // The environment changed at or after the start, or it cannot be told.
        for env in [Some(2_000_000), Some(3_000_000), None] {
            assert!(why(&ok, true, env, true).contains("/etc/tribist/env changed since"));
        }
        let unknown_start = UnitView {
            started_us: None,
            ..ok.clone()
        };
        assert!(why(&unknown_start, true, Some(1), true).contains("cannot be told"));
        assert!(why(&ok, true, Some(1), false).contains("sudo does not allow"));
        // The new binary is asked only once the serving one can hand over.
        let mut asked = false;
        no_handover(
            &view("inactive", "yes", READY),
            || {
                asked = true;
                true
            },
            Some(1),
            yes,
        );
        assert!(!asked);
    }

    #[test]
    fn systemd_timestamps_in_utc() {
        assert_eq!(
            parse_utc_timestamp("Thu 1970-01-01 00:00:01.000002 UTC"),
            Some(1_000_002)
        );
        // date -u -d '2026-03-01 12:34:56' +%s = 1772368496
        assert_eq!(
            parse_utc_timestamp("Sun 2026-03-01 12:34:56.5 UTC"),
            Some(1_772_368_496_500_000)
        );
        assert_eq!(
            parse_utc_timestamp("Sun 2026-03-01 12:34:56 UTC"),
            Some(1_772_368_496_000_000)
        );
        for bad in [
            "",
            "n/a",
            "Sun 2026-03-01 12:34:56 CET",
            "Sun 2026-13-01 12:34:56 UTC",
            "Sun 2026-03-01 12:34 UTC",
            "2026-03-01 12:34:56 UTC",
        ] {
            assert_eq!(parse_utc_timestamp(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_reload_step_reads_systemd_until_a_decision() {
        let s = Duration::from_secs(1);
        assert_eq!(reload_step(7, READY, "7", READY, s), ReloadStep::Wait);
        assert_eq!(
            reload_step(7, READY, "7", "handover=started attempt=1; x", s),
            ReloadStep::Wait
        );
        assert_eq!(
            reload_step(7, READY, "9", "handover=ready attempt=0; x", s),
            ReloadStep::Successor(9)
        );
        assert_eq!(
            reload_step(
                7,
                READY,
                "7",
                "handover=failed attempt=1; handover attempt 1 failed: it ended",
                s
            ),
            ReloadStep::Failed("handover attempt 1 failed: it ended".into())
        );
        // An older failure is not this attempt's.
        let failed1 = "handover=failed attempt=1; handover attempt 1 failed: x";
        assert_eq!(reload_step(7, failed1, "7", failed1, s), ReloadStep::Wait);
        assert_eq!(reload_step(7, READY, "0", "", s), ReloadStep::Ended);
        assert_eq!(reload_step(7, READY, "", "", s), ReloadStep::Ended);
        assert_eq!(
            reload_step(7, READY, "9", READY, RELOAD_LIMIT),
            ReloadStep::TimedOut
        );
        assert_eq!(pid_of("012"), None);
        assert_eq!(pid_of("12"), Some(12));
        assert_eq!(pid_of("99999999999"), None);
    }

    #[test]
    fn a_successor_is_the_services_and_runs_as_its_user() {
        let v2 = "0::/system.slice/tribist.service\n";
        let v1 =
            "12:pids:/system.slice/tribist.service\n1:name=systemd:/system.slice/tribist.service\n";
        assert!(successor_ok(v2, Some(990), 990, "tribist"));
        assert!(successor_ok(v1, Some(990), 990, "tribist"));
        assert!(successor_ok(
            "0::/tribist.service",
            Some(990),
            990,
            "tribist"
        ));
        // Another unit, a sub-cgroup, root's own process, a process gone.
        assert!(!successor_ok(
            "0::/system.slice/ssh.service",
            Some(990),
            990,
            "tribist"
        ));
        assert!(!successor_ok(
            "0::/system.slice/xtribist.service",
            Some(990),
            990,
            "tribist"
        ));
        assert!(!successor_ok(
            "0::/system.slice/tribist.service/x",
            Some(990),
            990,
            "tribist"
        ));
        assert!(!successor_ok(v2, Some(0), 990, "tribist"));
        assert!(!successor_ok("", None, 990, "tribist"));
        assert!(!successor_ok(
            "12:pids:/system.slice/tribist.service",
            Some(990),
            990,
            "tribist"
        ));
    }
}
