//! Logging to stderr, one line per event, in the form journald understands.
//!
//! Under systemd (`JOURNAL_STREAM` set) each line starts with its syslog priority (`<3>` for
//! errors … `<7>` for debug), which journald strips and records, so `journalctl -p warning`
//! filters; the journal adds its own timestamps, so none are printed. Elsewhere lines carry an
//! RFC 3339 timestamp in UTC. Never colours. The `log::Log` is this file's own: the form is
//! short enough to write here, `format_record` makes a line without a socket or a terminal,
//! and what the tests and scripts read (`<6>[INFO] listening on …`) depends on no crate.

use std::io::{self, Write};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Records from these targets (and the modules under them) are not written. The postgres
/// client logs every server notice at info; tiny_http logs its accept error itself, which
/// server.rs reports with what happens next.
const IGNORED_TARGETS: [&str; 3] = ["tokio_postgres", "postgres", "tiny_http"];

/// `tm_year` counts from this year.
const TM_YEAR_BASE: libc::c_int = 1900;

/// How the lines look.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Style {
    /// `<6>[INFO] message`: journald takes the priority and adds the time.
    Journald,
    /// `2025-01-02T03:04:05.123456Z [INFO] message`.
    Plain,
}

impl Style {
    fn from_env() -> Style {
        if std::env::var_os("JOURNAL_STREAM").is_some() {
            Style::Journald
        } else {
            Style::Plain
        }
    }
}

struct Logger {
    level: LevelFilter,
    style: Style,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Installs the logger: records at `level` and above go to stderr.
pub fn init(level: LevelFilter) {
    log::set_max_level(level);
    let logger = LOGGER.get_or_init(|| Logger {
        level,
        style: Style::from_env(),
    });
    // Fails only if a logger is already installed (tests): keep that one.
    let _ = log::set_logger(logger);
}

/// What opens a line of `level` written to stderr without the logger (`main`'s last word):
/// its priority under journald, else nothing.
pub fn prefix(level: Level) -> String {
    match Style::from_env() {
        Style::Journald => format!("<{}>", priority(level)),
        Style::Plain => String::new(),
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level && !ignored(metadata.target())
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            let text = format_record(self.style, record, SystemTime::now());
            // One write for the whole record: lines of different threads never mix.
            let _ = io::stderr().lock().write_all(text.as_bytes());
        }
    }

    fn flush(&self) {}
}

fn ignored(target: &str) -> bool {
    IGNORED_TARGETS.iter().any(|t| target.starts_with(t))
}

/// A record as written, ending in a newline. Under journald every line of the message carries
/// the record's priority (journald reads each line as an entry of its own); elsewhere the
/// first line starts with `now`.
fn format_record(style: Style, record: &Record<'_>, now: SystemTime) -> String {
    let level = record.level();
    let message = record.args().to_string();
    match style {
        Style::Journald => {
            let prefix = format!("<{}>", priority(level));
            let mut lines = message.split('\n');
            let first = lines.next().unwrap_or_default();
            let mut out = format!("{prefix}[{level}] {first}\n");
            for line in lines {
                out.push_str(&prefix);
                out.push_str(line);
                out.push('\n');
            }
            out
        }
        Style::Plain => format!("{} [{level}] {message}\n", rfc3339(now)),
    }
}

/// The syslog priority journald records for `level`.
fn priority(level: Level) -> libc::c_int {
    match level {
        Level::Error => libc::LOG_ERR,
        Level::Warn => libc::LOG_WARNING,
        Level::Info => libc::LOG_INFO,
        Level::Debug | Level::Trace => libc::LOG_DEBUG,
    }
}

/// `t` in UTC as RFC 3339, with as many digits of the second's fraction as it needs (none for
/// a whole second): `1994-11-06T08:49:37.1234Z`.
fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = libc::time_t::try_from(since.as_secs()).unwrap_or(libc::time_t::MAX);
    // SAFETY: a zeroed `tm` is a valid buffer; gmtime_r fills it or returns null, and keeps
    // no pointer to either argument.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    if unsafe { libc::gmtime_r(&secs, &mut tm) }.is_null() {
        return format!("@{}", since.as_secs());
    }
    let mut out = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        tm.tm_year + TM_YEAR_BASE,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    );
    let nanos = since.subsec_nanos();
    if nanos != 0 {
        out.push('.');
        out.push_str(format!("{nanos:09}").trim_end_matches('0'));
    }
    out.push('Z');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    fn line(style: Style, level: Level, args: std::fmt::Arguments<'_>) -> String {
        let record = Record::builder()
            .level(level)
            .target("tribist::server")
            .args(args)
            .build();
        format_record(style, &record, at(784_111_777, 123_400_000))
    }

    #[test]
    fn journald_lines_start_with_the_priority_and_carry_no_time() {
        let listening = line(
            Style::Journald,
            Level::Info,
            format_args!("listening on http://{}", "127.0.0.1:8383"),
        );
        assert_eq!(listening, "<6>[INFO] listening on http://127.0.0.1:8383\n");
        let cases = [
            (Level::Error, "<3>[ERROR] x\n"),
            (Level::Warn, "<4>[WARN] x\n"),
            (Level::Info, "<6>[INFO] x\n"),
            (Level::Debug, "<7>[DEBUG] x\n"),
            (Level::Trace, "<7>[TRACE] x\n"),
        ];
        for (level, expected) in cases {
            assert_eq!(line(Style::Journald, level, format_args!("x")), expected);
        }
    }

    #[test]
    fn every_line_of_a_message_keeps_its_priority_under_journald() {
        assert_eq!(
            line(
                Style::Journald,
                Level::Warn,
                format_args!("check failing: FATAL: no\nDETAIL: [ERROR] quoted")
            ),
            "<4>[WARN] check failing: FATAL: no\n<4>DETAIL: [ERROR] quoted\n"
        );
    }

    #[test]
    fn plain_lines_start_with_an_rfc3339_time() {
        assert_eq!(
            line(Style::Plain, Level::Warn, format_args!("database down")),
            "1994-11-06T08:49:37.1234Z [WARN] database down\n"
        );
        assert_eq!(rfc3339(at(0, 0)), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(at(951_782_400, 1)),
            "2000-02-29T00:00:00.000000001Z"
        );
        assert_eq!(
            rfc3339(at(1_795_999_999, 500_000_000)),
            "2026-11-30T00:53:19.5Z"
        );
    }

    #[test]
    fn level_and_noisy_targets_are_filtered() {
        let logger = Logger {
            level: LevelFilter::Info,
            style: Style::Plain,
        };
        let enabled = |level, target| {
            logger.enabled(&Metadata::builder().level(level).target(target).build())
        };
        assert!(enabled(Level::Info, "tribist::server"));
        assert!(enabled(Level::Error, "tribist::db"));
        assert!(!enabled(Level::Debug, "tribist::server"));
        assert!(!enabled(Level::Info, "tokio_postgres::connection"));
        assert!(!enabled(Level::Error, "postgres::client"));
        assert!(!enabled(Level::Error, "tiny_http"));
    }
}
