//! Logging to stderr, one line per event, in the form journald understands.
//!
//! Under systemd (`JOURNAL_STREAM` set) each line starts with its syslog priority (`<3>` for
//! errors … `<7>` for debug), which journald strips and records, so `journalctl -p warning`
//! filters; the journal adds its own timestamps, so none are printed. Elsewhere lines carry an
//! RFC 3339 timestamp. Never colours.

use std::io::{self, Write};

use simplelog::{ConfigBuilder, LevelFilter, WriteLogger};

pub fn init(level: LevelFilter) {
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let mut builder = ConfigBuilder::new();
    builder
        .set_target_level(LevelFilter::Off)
        .set_thread_level(LevelFilter::Off)
        .set_location_level(LevelFilter::Off)
        .set_level_padding(simplelog::LevelPadding::Off)
        // The postgres client logs every server notice at info; keep them at debug and below.
        .add_filter_ignore_str("tokio_postgres")
        .add_filter_ignore_str("postgres")
        // tiny_http logs its accept error itself; server.rs reports it with what happens next.
        .add_filter_ignore_str("tiny_http");
    if journald {
        builder.set_time_level(LevelFilter::Off);
    } else {
        builder.set_time_format_rfc3339();
    }
    let writer = PriorityPrefix {
        journald,
        line: Vec::with_capacity(256),
    };
    // Fails only if a logger is already installed (tests): keep that one.
    let _ = WriteLogger::init(level, builder.build(), writer);
}

/// Buffers simplelog's pieces into whole lines and writes each with one `write` call, with a
/// syslog priority prefix taken from the `[LEVEL]` tag when running under journald.
struct PriorityPrefix {
    journald: bool,
    line: Vec<u8>,
}

impl Write for PriorityPrefix {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for &b in buf {
            self.line.push(b);
            if b == b'\n' {
                self.flush_line()?;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl PriorityPrefix {
    fn flush_line(&mut self) -> io::Result<()> {
        let mut out = Vec::with_capacity(self.line.len() + 4);
        if self.journald {
            out.extend_from_slice(priority(&self.line).as_bytes());
        }
        out.extend_from_slice(&self.line);
        self.line.clear();
        io::stderr().lock().write_all(&out)
    }
}

/// The syslog priority for a formatted line (`[ERROR] …` → `<3>`); under journald the
/// level tag opens the line, as no timestamp precedes it.
fn priority(line: &[u8]) -> &'static str {
    let tags: [(&[u8], &str); 5] = [
        (b"[ERROR]", "<3>"),
        (b"[WARN]", "<4>"),
        (b"[INFO]", "<6>"),
        (b"[DEBUG]", "<7>"),
        (b"[TRACE]", "<7>"),
    ];
    tags.iter()
        .find(|(tag, _)| line.starts_with(tag))
        .map_or("<6>", |(_, p)| p)
}

#[cfg(test)]
mod tests {
    use super::priority;

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!(priority(b"[ERROR] boom\n"), "<3>");
        assert_eq!(priority(b"[WARN] hmm\n"), "<4>");
        assert_eq!(priority(b"[INFO] listening\n"), "<6>");
        assert_eq!(priority(b"[DEBUG] x\n"), "<7>");
        assert_eq!(priority(b"[INFO] message mentions [ERROR] later\n"), "<6>");
    }
}
