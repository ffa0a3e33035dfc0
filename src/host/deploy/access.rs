//! The front door's access log (`make logs ACCESS=1`): `access-log LINES [GREP]` prints its
//! last LINES lines (those holding GREP), `access-follow LINES [GREP]` then follows it as
//! Caddy writes it, until Ctrl-C. The log is Caddy's JSON lines in
//! `/var/log/caddy/tribist-access.log` (rolled at 10 MiB, 5 kept: `host::front`'s site).
//!
//! Why apart from `logs`: that is journalctl's output through a pipe; this is a file in a
//! directory Caddy owns, read as root. So it is opened through a descriptor of
//! `/var/log/caddy` without following a link and without waiting on a FIFO (`fsx`), at most
//! its last [`MAX_READ`] bytes are read, and every line goes through the same filter as the
//! service's log (`logs::LineCap`: printable ASCII, cut at `logs::MAX_LINE`) and the same
//! bounded window (`logs::Tail`): a client's request line is hostile text.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use super::logs::{lines_arg, LineCap, Tail, MAX_LINE};
use super::{interrupt, need_root, say, Exit, Fail, Result};
use crate::host::front;
use crate::host::fsx::{self, Dir, FsError, Limits};

/// The directory and name of the access log.
pub const LOG_DIR: &str = "/var/log/caddy";
pub const LOG_NAME: &str = "tribist-access.log";

/// The most of the log that is read for its last lines: more than a whole file (Caddy rolls
/// it at 10 MiB).
pub const MAX_READ: u64 = 16 << 20;

/// How often a followed log is read again.
const FOLLOW_POLL: Duration = Duration::from_millis(250);

/// GREP as a fixed text (1-200 bytes, no control character, as for the service's log),
/// matched as journalctl matches: ignoring case when it has no capital letter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grep {
    text: Vec<u8>,
    fold: bool,
}

impl Grep {
    /// `-` for none.
    pub fn parse(s: &str) -> Result<Option<Grep>> {
        if s == "-" {
            return Ok(None);
        }
        let ok = !s.is_empty() && s.len() <= 200 && !s.bytes().any(|b| b < 0x20 || b == 0x7f);
        if !ok {
            return Err(Fail::usage("GREP must be 1-200 printable characters"));
        }
        let fold = !s.bytes().any(|b| b.is_ascii_uppercase());
        let text = if fold {
            s.to_ascii_lowercase().into_bytes()
        } else {
            s.as_bytes().to_vec()
        };
        Ok(Some(Grep { text, fold }))
    }

    pub fn matches(&self, line: &[u8]) -> bool {
        let n = self.text.len();
        line.windows(n).any(|w| {
            if self.fold {
                w.eq_ignore_ascii_case(&self.text)
            } else {
                w == self.text.as_slice()
            }
        })
    }
}

/// Bytes made printable lines ([`LineCap`]), each whole line handed on when it matches.
#[derive(Debug)]
pub struct Lines {
    cap: LineCap,
    grep: Option<Grep>,
    partial: Vec<u8>,
    buf: Vec<u8>,
}

impl Lines {
    pub fn new(grep: Option<Grep>) -> Lines {
        Lines {
            cap: LineCap::new(MAX_LINE),
            grep,
            partial: Vec::new(),
            buf: Vec::new(),
        }
    }

    /// Feeds `bytes`; each whole line that matches (with its newline) goes to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut dyn FnMut(&[u8])) {
        self.buf.clear();
        self.cap.feed(bytes, &mut self.buf);
        for &b in &self.buf {
            self.partial.push(b);
            if b == b'\n' {
                if self.grep.as_ref().is_none_or(|g| g.matches(&self.partial)) {
                    out(&self.partial);
                }
                self.partial.clear();
            }
        }
    }
}

/// Where reading starts for the last lines of a file of `size` bytes, and whether the first
/// line read is only the end of one (to be dropped).
pub fn start_at(size: u64) -> (u64, bool) {
    if size > MAX_READ {
        (size - MAX_READ, true)
    } else {
        (0, false)
    }
}

/// The access log opened as root: through a descriptor of its directory, no link followed.
/// None when there is none (no front, or no request served yet).
fn open_log() -> Result<Option<(File, fsx::Stat)>> {
    let dir = match Dir::open(LOG_DIR) {
        Ok(d) => d,
        Err(e) if not_found(&e) => return Ok(None),
        Err(e) => return Err(Fail::failed(format!("cannot open {LOG_DIR}: {e}"))),
    };
    match fsx::open_regular_at(
        &dir,
        LOG_NAME,
        Limits {
            owner: None,
            max_size: u64::MAX,
        },
    ) {
        Ok(r) => Ok(Some((r.file, r.stat))),
        Err(e) if not_found(&e) => Ok(None),
        Err(e) => Err(Fail::failed(format!(
            "cannot read the front's access log: {e}; it must be a regular file Caddy writes (the site's log directive)"
        ))),
    }
}

fn not_found(e: &FsError) -> bool {
    matches!(e, FsError::Io { err, .. } if err.kind() == std::io::ErrorKind::NotFound)
}

/// Why there is no access log, and the one command that makes one.
pub fn no_log(site: bool, host: &str) -> Fail {
    let path = format!("{LOG_DIR}/{LOG_NAME}");
    if site {
        Fail::failed(format!(
            "the front has served no request yet (no {path}); make status HOST={host} says whether it answers"
        ))
    } else {
        Fail::failed(format!(
            "{host} has no front door, so no access log ({path}); set one up: make install HOST={host} DOMAIN=api.example.com"
        ))
    }
}

/// Whether the deployer is gone while nothing is written: ssh without a terminal gives no
/// SIGHUP, but the pipe that is standard output then reports an error (POLLERR) or a
/// hang-up, so a follow with a GREP that matches nothing does not outlive its connection.
fn deployer_gone() -> bool {
    reader_gone(libc::STDOUT_FILENO)
}

/// Whether nobody reads the pipe (or socket) `fd` writes to any more.
pub fn reader_gone(fd: std::os::fd::RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & (libc::POLLERR | libc::POLLHUP) != 0
}

/// Said before the lines of an access log left by a front since removed.
pub fn no_front_now(host: &str) -> String {
    format!(
        "{host} has no front door now (make install HOST={host} DOMAIN=api.example.com sets one up); the last lines of its access log from before:"
    )
}

fn emit(bytes: &[u8]) -> bool {
    let mut o = std::io::stdout().lock();
    o.write_all(bytes).and_then(|_| o.flush()).is_ok()
}

/// The file's last whole lines that `lines` lets through, at most `n`, printable; and where
/// reading ended (a line still being written stays in `lines`, for following).
fn last_lines(file: &mut File, size: u64, n: usize, lines: &mut Lines) -> Result<(Vec<u8>, u64)> {
    let (from, skip_first) = start_at(size);
    file.seek(SeekFrom::Start(from))
        .map_err(|e| Fail::failed(format!("cannot read the front's access log: {e}")))?;
    let mut tail = Tail::new(n, 64 << 20);
    let mut skipping = skip_first;
    let mut read = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    // What was there when it was opened: a log written meanwhile is for following.
    while read < size - from {
        let want = buf.len().min((size - from - read) as usize);
        let got = file
            .read(&mut buf[..want])
            .map_err(|e| Fail::failed(format!("cannot read the front's access log: {e}")))?;
        if got == 0 {
            break;
        }
        read += got as u64;
        let mut chunk = &buf[..got];
        if skipping {
            match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    chunk = &chunk[i + 1..];
                    skipping = false;
                }
                None => continue,
            }
        }
        lines.feed(chunk, &mut |l| tail.feed(l));
    }
    Ok((tail.finish(), from + read))
}

/// `access-log LINES [GREP]` (`follow`: `access-follow`): `host` is the deployer's name for
/// this host (`--target`), for the command a message names.
pub fn cmd_access(args: &[String], follow: bool, host: Option<&str>) -> Result<Exit> {
    let arg = |i: usize, d: &'static str| args.get(i).map(String::as_str).unwrap_or(d);
    let lines = lines_arg(arg(0, if follow { "20" } else { "100" }))?;
    let grep = Grep::parse(arg(1, "-"))?;
    need_root("logs with ACCESS=1")?;
    let host = host.unwrap_or("HOST");
    let site = Path::new(front::SITE_FILE).exists();
    let Some((mut file, stat)) = open_log()? else {
        return Err(no_log(site, host));
    };
    if !site {
        say(&no_front_now(host));
    }
    let mut filter = Lines::new(grep);
    let (kept, mut offset) = last_lines(&mut file, stat.size, lines, &mut filter)?;
    if !emit(&kept) {
        interrupt::note_lost_client();
        return Err(Fail::quiet(Exit::Interrupted));
    }
    if !follow {
        return Ok(Exit::Ok);
    }
    let mut ino = stat.ino;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if interrupt::interrupted() {
            // Following ends as it should: Ctrl-C, or the deployer gone.
            return Ok(Exit::Ok);
        }
        let got = file.read(&mut buf).unwrap_or(0);
        if got > 0 {
            offset += got as u64;
            let mut ok = true;
            filter.feed(&buf[..got], &mut |l| ok &= emit(l));
            if !ok {
                interrupt::note_lost_client();
                return Ok(Exit::Ok);
            }
            continue;
        }
        if deployer_gone() {
            interrupt::note_lost_client();
            return Ok(Exit::Ok);
        }
        // At the end: rolled (another file under the name) or truncated, read the new one
        // from its start.
        if let Ok(Some((f, st))) = open_log() {
            if st.ino != ino || st.size < offset {
                file = f;
                ino = st.ino;
                offset = 0;
                continue;
            }
        }
        interrupt::sleep(FOLLOW_POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(lines: &mut Lines, chunks: &[&[u8]]) -> String {
        let mut out = Vec::new();
        for c in chunks {
            lines.feed(c, &mut |l| out.extend_from_slice(l));
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn grep_is_text_matched_as_journalctl_does() {
        assert_eq!(Grep::parse("-").unwrap(), None);
        let g = Grep::parse("/health").unwrap().unwrap();
        assert!(g.matches(br#"{"uri":"/HEALTH?x"}"#));
        let g = Grep::parse("GET /x").unwrap().unwrap();
        assert!(g.matches(b"GET /x"));
        assert!(!g.matches(b"get /x"));
        // A pattern's characters are text, never a pattern or an option.
        let g = Grep::parse("-.*$(id)").unwrap().unwrap();
        assert!(g.matches(b"a -.*$(id) b"));
        assert!(!g.matches(b"a -xx$(id) b"));
        for bad in ["", "a\nb", "a\x7f", &"g".repeat(201)] {
            let e = Grep::parse(bad).unwrap_err();
            assert_eq!(e.exit, Exit::Usage, "{bad:?}");
            assert_eq!(e.message, "GREP must be 1-200 printable characters");
        }
    }

    #[test]
    fn lines_are_printable_whole_and_filtered_across_chunks() {
        let mut l = Lines::new(Grep::parse("wanted").unwrap());
        let got = run(
            &mut l,
            &[
                b"{\"uri\":\"/wan",
                b"ted\x1b]0;pwned\x07\"}\nother\n{\"uri\":\"/",
                "wanted\u{9b}\"}\n".as_bytes(),
                b"wanted, no newline yet",
            ],
        );
        assert_eq!(
            got,
            "{\"uri\":\"/wanted]0;pwned\"}\n{\"uri\":\"/wanted\"}\n"
        );
        // Without GREP, every line; a line longer than MAX_LINE is cut.
        let mut l = Lines::new(None);
        let long = vec![b'x'; MAX_LINE + 100];
        let got = run(&mut l, &[b"a\n", &long, b"\nb\n"]);
        assert_eq!(got.len(), 2 + MAX_LINE + 1 + 2);
        assert!(got.starts_with("a\nxxx") && got.ends_with("x\nb\n"));
    }

    #[test]
    fn the_last_lines_of_a_file_bounded() {
        assert_eq!(start_at(0), (0, false));
        assert_eq!(start_at(MAX_READ), (0, false));
        assert_eq!(start_at(MAX_READ + 10), (10, true));
        let t = crate::host::testutil::TempDir::new("access");
        let p = t.join("log");
        std::fs::write(&p, "one\ntwo /x\nthree\nfour /x\nfive").unwrap();
        let last = |size: u64, n: usize, grep: &str| {
            let mut f = File::open(&p).unwrap();
            let mut l = Lines::new(Grep::parse(grep).unwrap());
            let (kept, end) = last_lines(&mut f, size, n, &mut l).unwrap();
            // The line still being written is kept for following.
            let mut rest = Vec::new();
            l.feed(b"\n", &mut |x| rest.extend_from_slice(x));
            (
                String::from_utf8(kept).unwrap(),
                end,
                String::from_utf8(rest).unwrap(),
            )
        };
        assert_eq!(
            last(29, 2, "-"),
            ("three\nfour /x\n".into(), 29, "five\n".into())
        );
        assert_eq!(last(29, 5, "/X"), ("".into(), 29, "".into()));
        assert_eq!(
            last(29, 5, "/x"),
            ("two /x\nfour /x\n".into(), 29, "".into())
        );
        // Only what was there at the start is read (10 bytes: "one\ntwo /x").
        assert_eq!(last(10, 5, "-"), ("one\n".into(), 10, "two /x\n".into()));
    }

    #[test]
    fn a_pipe_nobody_reads_is_seen_without_writing() {
        use std::os::fd::AsRawFd;
        let (r, w) = std::io::pipe().unwrap();
        assert!(!reader_gone(w.as_raw_fd()));
        drop(r);
        assert!(reader_gone(w.as_raw_fd()));
    }

    #[test]
    fn without_a_log_the_command_that_makes_one() {
        assert_eq!(
            no_log(false, "root@app1").message,
            "root@app1 has no front door, so no access log (/var/log/caddy/tribist-access.log); set one up: make install HOST=root@app1 DOMAIN=api.example.com"
        );
        assert_eq!(
            no_log(true, "root@app1").message,
            "the front has served no request yet (no /var/log/caddy/tribist-access.log); make status HOST=root@app1 says whether it answers"
        );
        assert_eq!(
            no_front_now("app1"),
            "app1 has no front door now (make install HOST=app1 DOMAIN=api.example.com sets one up); the last lines of its access log from before:"
        );
    }
}
