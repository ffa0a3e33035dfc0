//! The service's log: `logs [LINES [SINCE [GREP]]]` (the journal as root; as tribist only
//! `systemctl status`'s view, all its sudo rights allow), `follow [SINCE [GREP [LINES]]]`
//! (the journal as it is written, until Ctrl-C, which ends it with exit 0), and the views
//! other commands print when something failed: [`status_view`] and [`recent_log`].
//!
//! Why apart: journalctl's output is the server's text, which may be hostile, and can be
//! large. Here it is read from a pipe as it comes ([`stream`]): every byte outside printable
//! ASCII and newlines dropped, each line cut at [`MAX_LINE`] bytes ([`LineCap`]), a window
//! kept to its newest LINES lines in bounded memory ([`Tail`]), and journalctl bounded in
//! time and ended (its process group) at an interrupt. SINCE and GREP are checked
//! ([`log_filters`]) and passed as `--since=`/`--grep=` words, so neither can become an option.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{
    interrupt, is_root, need_root, paths, say, shown, systemctl, warn, Exit, Fail, Result,
};
use crate::host::child::Spawn;
use crate::host::text::printable;

pub const JOURNALCTL: &str = "/usr/bin/journalctl";

/// The most of one log line that is printed; the rest of it is dropped.
pub const MAX_LINE: usize = 16 * 1024;

/// The most a LINES window keeps in memory; older lines go first.
const MAX_KEPT: usize = 64 * 1024 * 1024;

/// How long `logs` lets journalctl run.
const LOGS_TIME: Duration = Duration::from_secs(120);

/// LINES: a whole number from 1 to 999999 (`^[1-9][0-9]{0,5}$`).
pub fn lines_arg(s: &str) -> Result<usize> {
    let ok =
        (1..=6).contains(&s.len()) && !s.starts_with('0') && s.bytes().all(|b| b.is_ascii_digit());
    if !ok {
        return Err(Fail::usage(format!(
            "LINES must be a whole number from 1 to 999999, got '{}'",
            shown(s, 40)
        )));
    }
    Ok(s.parse().expect("checked digits"))
}

/// journalctl's words for SINCE and GREP (`-` for none), each checked: SINCE a time of
/// `[A-Za-z0-9 :.+-]`, 1-40 long, not starting with `-`; GREP 1-200 bytes without a control
/// character.
pub fn log_filters(since: &str, grep: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    if since != "-" {
        let ok = (1..=40).contains(&since.len())
            && !since.starts_with('-')
            && since
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b" :.+-".contains(&b));
        if !ok {
            return Err(Fail::usage(format!(
                "SINCE must be a time journalctl understands (e.g. '1 hour ago', today, 2026-12-01 10:00), got '{}'",
                shown(since, 60)
            )));
        }
        out.push(format!("--since={since}"));
    }
    if grep != "-" {
        let ok =
            !grep.is_empty() && grep.len() <= 200 && !grep.bytes().any(|b| b < 0x20 || b == 0x7f);
        if !ok {
            return Err(Fail::usage("GREP must be 1-200 printable characters"));
        }
        out.push(format!("--grep={grep}"));
    }
    Ok(out)
}

/// Text made printable as it streams: printable ASCII and newlines only, each line cut at
/// `max` bytes. Chunks may split lines anywhere.
#[derive(Debug)]
pub struct LineCap {
    max: usize,
    col: usize,
}

impl LineCap {
    pub fn new(max: usize) -> LineCap {
        LineCap { max, col: 0 }
    }

    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        for &b in bytes {
            if b == b'\n' {
                out.push(b);
                self.col = 0;
            } else if (0x20..=0x7e).contains(&b) {
                if self.col < self.max {
                    out.push(b);
                }
                self.col += 1;
            }
        }
    }
}

/// The newest `n` lines of what is fed (as `tail -n`: a last line without a newline counts),
/// at most `max_bytes` of them kept (older lines dropped first).
#[derive(Debug)]
pub struct Tail {
    n: usize,
    max_bytes: usize,
    lines: VecDeque<Vec<u8>>,
    kept: usize,
    partial: Vec<u8>,
}

impl Tail {
    pub fn new(n: usize, max_bytes: usize) -> Tail {
        Tail {
            n,
            max_bytes,
            lines: VecDeque::new(),
            kept: 0,
            partial: Vec::new(),
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.partial.push(b);
            if b == b'\n' {
                let line = std::mem::take(&mut self.partial);
                self.kept += line.len();
                self.lines.push_back(line);
                while self.lines.len() > self.n || self.kept > self.max_bytes {
                    match self.lines.pop_front() {
                        Some(old) => self.kept -= old.len(),
                        None => break,
                    }
                }
            }
        }
    }

    /// The lines kept, oldest first.
    pub fn finish(mut self) -> Vec<u8> {
        if !self.partial.is_empty() {
            let last = std::mem::take(&mut self.partial);
            self.lines.push_back(last);
            if self.lines.len() > self.n {
                self.lines.pop_front();
            }
        }
        self.lines.into_iter().flatten().collect()
    }
}

/// How a streamed run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// It ended by itself, with this exit status (-1: killed by a signal).
    Exited(i32),
    /// An interrupt came (or the output could not be written): it was ended.
    Interrupted,
    /// Still running at the deadline: it was ended.
    TimedOut,
}

/// What a streamed run gave on stderr (printable, at most 4000 bytes) and how it ended.
#[derive(Debug)]
pub struct Streamed {
    pub end: End,
    pub stderr: String,
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on a live descriptor.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
}

/// Runs `program args…` (a root binary such as journalctl; a clean environment but `LC_ALL=C`
/// and PATH, stdin from /dev/null, its own process group, killed if this process dies),
/// handing its stdout to `out` as it comes, until it ends, `deadline` passes, `stop` says so
/// (an interrupt: [`interrupt::interrupted`]), or `out` returns false (the output cannot be
/// written; the deployer's connection is noted lost). Then its process group is killed and it
/// is reaped.
pub fn stream(
    program: &str,
    args: &[String],
    deadline: Option<Duration>,
    stop: &dyn Fn() -> bool,
    out: &mut dyn FnMut(&[u8]) -> bool,
) -> io::Result<Streamed> {
    let end_at = deadline.map(|d| Instant::now() + d);
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("LC_ALL", "C")
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: prctl is async-signal-safe and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) < 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let pid = child.id() as libc::pid_t;
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let fds = [stdout.as_raw_fd(), stderr.as_raw_fd()];
    for fd in fds {
        set_nonblocking(fd);
    }
    let mut open = [true, true];
    let mut err_kept: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut end = None;
    'reading: while open[0] || open[1] {
        if stop() {
            end = Some(End::Interrupted);
            break;
        }
        if end_at.is_some_and(|t| Instant::now() >= t) {
            end = Some(End::TimedOut);
            break;
        }
        let mut pfds: Vec<libc::pollfd> = (0..2)
            .filter(|&i| open[i])
            .map(|i| libc::pollfd {
                fd: fds[i],
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: pfds is a valid array of pfds.len() entries.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 100) };
        if n <= 0 {
            continue;
        }
        for p in pfds.iter().filter(|p| p.revents != 0) {
            let i = if p.fd == fds[0] { 0 } else { 1 };
            // SAFETY: buf is writable for its length.
            let r = unsafe { libc::read(p.fd, buf.as_mut_ptr().cast(), buf.len()) };
            if r > 0 {
                let chunk = &buf[..r as usize];
                if i == 0 {
                    if !out(chunk) {
                        end = Some(End::Interrupted);
                        break 'reading;
                    }
                } else {
                    let room = 4000usize.saturating_sub(err_kept.len());
                    err_kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
            } else if r == 0
                || !matches!(
                    io::Error::last_os_error().raw_os_error(),
                    Some(libc::EAGAIN | libc::EINTR)
                )
            {
                open[i] = false;
            }
        }
    }
    // SAFETY: kill has no memory preconditions; the group is the child's own (not reaped).
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    let status = child.wait()?;
    drop((stdout, stderr));
    let end = end.unwrap_or(End::Exited(status.code().unwrap_or(-1)));
    Ok(Streamed {
        end,
        stderr: printable(&err_kept, 4000),
    })
}

/// Writes `bytes` to stdout and flushes; false if that failed (the deployer is gone).
fn emit(bytes: &[u8]) -> bool {
    let mut o = io::stdout().lock();
    o.write_all(bytes).and_then(|_| o.flush()).is_ok()
}

/// journalctl's end, as this command's.
fn ended(what: &str, s: &Streamed) -> Result<Exit> {
    if !s.stderr.trim().is_empty() {
        eprint!("{}", s.stderr);
        if !s.stderr.ends_with('\n') {
            eprintln!();
        }
    }
    match s.end {
        End::Exited(0) => Ok(Exit::Ok),
        End::Interrupted => Err(Fail::quiet(Exit::Interrupted)),
        End::TimedOut => Err(Fail::failed(format!(
            "{what}: journalctl did not finish within {} s (what it gave is above); a narrower SINCE= or GREP= is quicker",
            LOGS_TIME.as_secs()
        ))),
        // journalctl said why (a --grep that matched nothing ends 1, as grep does).
        End::Exited(_) => Err(Fail::quiet(Exit::Failed)),
    }
}

fn journal_args(lines: Option<usize>, follow: bool, filters: &[String]) -> Vec<String> {
    let mut args = vec!["-u".to_string(), paths::UNIT.to_string()];
    if let Some(n) = lines {
        args.push("-n".into());
        args.push(n.to_string());
    }
    if follow {
        args.push("-f".into());
    }
    args.push("--no-pager".into());
    args.extend(filters.iter().cloned());
    args
}

/// `logs LINES SINCE GREP` (`-` for none).
pub fn cmd_logs(args: &[String]) -> Result<Exit> {
    let arg = |i: usize, d: &'static str| args.get(i).map(String::as_str).unwrap_or(d);
    let lines = lines_arg(arg(0, "100"))?;
    let filters = log_filters(arg(1, "-"), arg(2, "-"))?;
    if !is_root() {
        say(&format!(
            "as {} only 'systemctl status' is allowed (its last lines); all {lines} lines, SINCE and GREP need root",
            own_name()
        ));
        emit(status_view().as_bytes());
        return Ok(Exit::Ok);
    }
    let mut cap = LineCap::new(MAX_LINE);
    let mut buf = Vec::new();
    let s = if filters.is_empty() {
        let s = stream(
            JOURNALCTL,
            &journal_args(Some(lines), false, &[]),
            Some(LOGS_TIME),
            &interrupt::interrupted,
            &mut |chunk| {
                buf.clear();
                cap.feed(chunk, &mut buf);
                emit(&buf)
            },
        )
        .map_err(|e| Fail::failed(format!("cannot run {JOURNALCTL}: {e}")))?;
        if !matches!(buf.last(), None | Some(b'\n')) {
            emit(b"\n");
        }
        s
    } else {
        // With a window or a pattern, the newest LINES of what matches (journalctl's own -n
        // would take them from the start of the window).
        let mut tail = Tail::new(lines, MAX_KEPT);
        let s = stream(
            JOURNALCTL,
            &journal_args(None, false, &filters),
            Some(LOGS_TIME),
            &interrupt::interrupted,
            &mut |chunk| {
                buf.clear();
                cap.feed(chunk, &mut buf);
                tail.feed(&buf);
                true
            },
        )
        .map_err(|e| Fail::failed(format!("cannot run {JOURNALCTL}: {e}")))?;
        let kept = tail.finish();
        if !emit(&kept) {
            interrupt::note_lost_client();
        }
        s
    };
    ended("logs", &s)
}

/// `follow SINCE GREP [LINES]` (root): the last LINES (default 20), then the log as it is
/// written, until Ctrl-C or a lost connection, which end it with exit 0.
pub fn cmd_follow(args: &[String]) -> Result<Exit> {
    need_root("logs with FOLLOW=1")?;
    let arg = |i: usize, d: &'static str| args.get(i).map(String::as_str).unwrap_or(d);
    let lines = lines_arg(arg(2, "20"))?;
    let filters = log_filters(arg(0, "-"), arg(1, "-"))?;
    let mut cap = LineCap::new(MAX_LINE);
    let mut buf = Vec::new();
    let s = stream(
        JOURNALCTL,
        &journal_args(Some(lines), true, &filters),
        None,
        &interrupt::interrupted,
        &mut |chunk| {
            buf.clear();
            cap.feed(chunk, &mut buf);
            emit(&buf)
        },
    )
    .map_err(|e| Fail::failed(format!("cannot run {JOURNALCTL}: {e}")))?;
    match s.end {
        // Following ends as it should: Ctrl-C, or the deployer gone.
        End::Interrupted => Ok(Exit::Ok),
        _ => ended("follow", &s),
    }
}

/// The name of the user this process runs as (its uid when it has none).
pub fn own_name() -> String {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    user_name(uid).unwrap_or_else(|| uid.to_string())
}

/// The name of user `uid` (`getpwuid_r`), if it has one.
pub fn user_name(uid: u32) -> Option<String> {
    let mut size = 16 * 1024;
    loop {
        let mut buf = vec![0 as libc::c_char; size];
        // SAFETY: pwd and result are valid out-parameters; buf is writable for its length;
        // pw_name points into buf, which lives until the copy below.
        let (r, name) = unsafe {
            let mut pwd: libc::passwd = std::mem::zeroed();
            let mut result: *mut libc::passwd = std::ptr::null_mut();
            let r = libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result);
            let name = (!result.is_null() && !pwd.pw_name.is_null())
                .then(|| std::ffi::CStr::from_ptr(pwd.pw_name).to_bytes().to_vec());
            (r, name)
        };
        if r == libc::ERANGE && size < (1 << 20) {
            size *= 2;
            continue;
        }
        return name.map(|n| printable(&n, 32).replace('\n', ""));
    }
}

/// `systemctl status tribist` as tribist may run it (sudo), output and errors together,
/// printable ASCII only, at most 20,000 bytes: systemd 252 prints the service's STATUS= text
/// unescaped.
pub fn status_view() -> String {
    match systemctl(&["status", paths::UNIT], Duration::from_secs(10)) {
        Ok(o) => {
            let all = format!("{}{}", o.stdout, o.stderr);
            printable(all.as_bytes(), 20_000)
        }
        Err(e) => format!("{e}\n"),
    }
}

/// The service's last lines, for a message saying why something failed: the journal's last
/// 25 as root, `systemctl status`'s view otherwise. A server that just died may still have
/// its last words in flight to journald: it waits a second first (less if interrupted).
pub fn recent_log() -> String {
    interrupt::sleep(Duration::from_secs(1));
    if !is_root() {
        return status_view();
    }
    match Spawn::new(JOURNALCTL)
        .args(["-u", paths::UNIT, "-n", "25", "--no-pager"])
        .env("LC_ALL", "C")
        .run(Duration::from_secs(10), 64 * 1024)
    {
        Ok(o) => {
            let mut text = Vec::new();
            let mut cap = LineCap::new(MAX_LINE);
            cap.feed(format!("{}{}", o.stdout, o.stderr).as_bytes(), &mut text);
            String::from_utf8_lossy(&text).into_owned()
        }
        Err(e) => {
            warn(&format!("cannot read the journal: {e}"));
            String::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_1_to_999999() {
        for ok in ["1", "100", "999999"] {
            assert_eq!(lines_arg(ok).unwrap().to_string(), ok);
        }
        for bad in ["", "0", "01", "1000000", "-1", "1e3", "10 ", "x"] {
            let e = lines_arg(bad).unwrap_err();
            assert_eq!(e.exit, Exit::Usage, "{bad}");
            assert!(e
                .message
                .starts_with("LINES must be a whole number from 1 to 999999, got '"));
        }
    }

    #[test]
    fn since_and_grep_are_words_never_options() {
        assert_eq!(log_filters("-", "-").unwrap(), Vec::<String>::new());
        assert_eq!(
            log_filters("1 hour ago", "listening on").unwrap(),
            vec!["--since=1 hour ago", "--grep=listening on"]
        );
        assert_eq!(
            log_filters("2026-12-01 10:00", "-").unwrap(),
            vec!["--since=2026-12-01 10:00"]
        );
        // A pattern may start with '-' or hold anything printable: it is --grep='s value.
        assert_eq!(
            log_filters("-", "-x; $(id) 'é'").unwrap(),
            vec!["--grep=-x; $(id) 'é'"]
        );
        for (since, grep) in [
            ("now; id", "-"),
            ("--until=x", "-"),
            ("-1h", "-"),
            ("", "-"),
            (&"a".repeat(41)[..], "-"),
            ("today", ""),
            ("today", "a\nb"),
            ("today", "a\x7f"),
            ("today", &"g".repeat(201)[..]),
        ] {
            let e = log_filters(since, grep).unwrap_err();
            assert_eq!(e.exit, Exit::Usage, "{since:?} {grep:?}");
        }
        assert!(log_filters("now; id", "-")
            .unwrap_err()
            .message
            .starts_with("SINCE must be a time journalctl understands"));
    }

    #[test]
    fn lines_are_printable_and_capped_across_chunks() {
        let mut cap = LineCap::new(5);
        let mut out = Vec::new();
        cap.feed(b"abc\x1b]0;t\x07", &mut out);
        cap.feed("defgh\r\nok\u{9b}31m\n".as_bytes(), &mut out);
        cap.feed(b"12", &mut out);
        cap.feed(b"3456\n", &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "abc]0\nok31m\n12345\n");
    }

    #[test]
    fn the_tail_keeps_the_newest_lines() {
        let mut t = Tail::new(2, 1000);
        t.feed(b"one\ntw");
        t.feed(b"o\nthree\nfour");
        assert_eq!(t.finish(), b"three\nfour");
        let mut t = Tail::new(3, 1000);
        t.feed(b"a\nb\n");
        assert_eq!(t.finish(), b"a\nb\n");
        // Bounded in bytes too: older lines go first.
        let mut t = Tail::new(100, 10);
        t.feed(b"aaaa\nbbbb\ncccc\n");
        assert_eq!(t.finish(), b"bbbb\ncccc\n");
        assert_eq!(Tail::new(5, 10).finish(), b"");
    }

    #[test]
    fn a_stream_is_read_as_it_comes_and_bounded_in_time() {
        let sh = |script: &str| vec!["-c".to_string(), script.to_string()];
        let mut got = Vec::new();
        let s = stream(
            "/bin/sh",
            &sh("echo one; echo oops >&2; echo two; exit 3"),
            Some(Duration::from_secs(10)),
            &|| false,
            &mut |c| {
                got.extend_from_slice(c);
                true
            },
        )
        .unwrap();
        assert_eq!(got, b"one\ntwo\n");
        assert_eq!(s.end, End::Exited(3));
        assert_eq!(s.stderr, "oops\n");
        // A child that never ends (and a grandchild holding the pipe) is ended at the
        // deadline, its whole group.
        let start = Instant::now();
        let s = stream(
            "/bin/sh",
            &sh("sleep 100 & echo started; exec sleep 100"),
            Some(Duration::from_millis(500)),
            &|| false,
            &mut |_| true,
        )
        .unwrap();
        assert_eq!(s.end, End::TimedOut);
        assert!(start.elapsed() < Duration::from_secs(3));
        // An output that cannot be written ends it as an interrupt would.
        let s = stream(
            "/bin/sh",
            &sh("while :; do echo y; sleep 0.05; done"),
            Some(Duration::from_secs(10)),
            &|| false,
            &mut |_| false,
        )
        .unwrap();
        assert_eq!(s.end, End::Interrupted);
        // And so does the stop it is given, at once.
        let start = Instant::now();
        let s = stream(
            "/bin/sh",
            &sh("exec sleep 100"),
            None,
            &|| start.elapsed() > Duration::from_millis(200),
            &mut |_| true,
        )
        .unwrap();
        assert_eq!(s.end, End::Interrupted);
        assert!(start.elapsed() < Duration::from_secs(2));
        // Its environment is clean.
        let mut env = Vec::new();
        stream(
            "/usr/bin/env",
            &[],
            Some(Duration::from_secs(5)),
            &|| false,
            &mut |c| {
                env.extend_from_slice(c);
                true
            },
        )
        .unwrap();
        let env = String::from_utf8(env).unwrap();
        let mut names: Vec<&str> = env.lines().filter_map(|l| l.split('=').next()).collect();
        names.sort();
        assert_eq!(names, ["LC_ALL", "PATH"]);
    }

    #[test]
    fn user_names() {
        assert_eq!(user_name(0).as_deref(), Some("root"));
        assert_eq!(user_name(4_000_000_000), None);
        assert!(!own_name().is_empty());
    }
}
