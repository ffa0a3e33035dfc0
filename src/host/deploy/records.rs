//! `audit [LINES]` (root): the deployments recorded on this host, each once, newest last —
//! the last LINES lines of root's own file (only root can write it) and, apart, the last
//! LINES records other users sent to the journal (tag `tribist-deploy`: tribist's own
//! deployments), merged by time.
//!
//! Why apart, and how it keeps a record from passing for another: each line's source follows
//! its time, where the text of an entry can never be: `[root's file]`, or `[journal: sent by
//! NAME, _UID=N]` with the uid journald took from the kernel (`_UID`, which the sender cannot
//! choose). Root's deployments are in the journal too (uid 0); those are not repeated. However
//! much tribist sends, root's last LINES are shown; when the journal holds more than LINES of
//! the others', a last line says so. The pieces are pure functions ([`root_line`],
//! [`journal_line`], [`merge`]) tested on text; reading is bounded in bytes and time.

use std::io::{Read, Seek, SeekFrom};
use std::time::{Duration, UNIX_EPOCH};

use super::logs::{lines_arg, stream, user_name, End, JOURNALCTL};
use super::{interrupt, need_root, paths, warn, Exit, Fail, Result};
use crate::host::audit::utc_seconds;
use crate::host::child::{ExitKind, Spawn};
use crate::host::fsx::{self, Dir, FsError, Limits};
use crate::host::text::clean;

/// The most of one record that is shown.
const MAX_RECORD: usize = 4000;

/// The most of root's file that is read (from its end).
const MAX_READ: u64 = 64 * 1024 * 1024;

/// How long each journalctl call may take.
const JOURNAL_TIME: Duration = Duration::from_secs(60);

/// A line of root's file as shown: `TIME [root's file] REST` (a line without a space as it
/// is), printable, bounded.
pub fn root_line(line: &[u8]) -> String {
    let line = clean(line, MAX_RECORD);
    match line.split_once(' ') {
        Some((time, rest)) => format!("{time} [root's file] {rest}"),
        None => line,
    }
}

/// The last `n` lines of `bytes`; `from_middle`: `bytes` starts inside the file, so its first
/// line may be a part-line and is not one of them.
pub fn last_lines(bytes: &[u8], n: usize, from_middle: bool) -> Vec<&[u8]> {
    let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    if bytes.ends_with(b"\n") {
        lines.pop();
    }
    if from_middle && !lines.is_empty() {
        lines.remove(0);
    }
    lines.retain(|l| !l.is_empty());
    let skip = lines.len().saturating_sub(n);
    lines.split_off(skip)
}

/// The last `n` records of root's audit file, as shown; none if it is missing or empty.
fn root_records(n: usize) -> Vec<String> {
    let dir = match Dir::open(paths::STATE_DIR) {
        Ok(d) => d,
        Err(e) => {
            warn(&format!(
                "cannot read root's audit file: {e}; make install puts the layout right"
            ));
            return Vec::new();
        }
    };
    let limits = Limits {
        owner: Some(0),
        max_size: u64::MAX,
    };
    let mut r = match fsx::open_regular_at(&dir, "audit.log", limits) {
        Ok(r) => r,
        Err(FsError::Io { err, .. }) if err.kind() == std::io::ErrorKind::NotFound => {
            return Vec::new()
        }
        Err(e) => {
            warn(&format!(
                "cannot read root's audit file: {e}; make install puts the layout right"
            ));
            return Vec::new();
        }
    };
    let want = (n as u64).saturating_mul(8192).min(MAX_READ);
    let start = r.stat.size.saturating_sub(want);
    let mut bytes = Vec::new();
    if let Err(e) = r
        .file
        .seek(SeekFrom::Start(start))
        .and_then(|_| (&r.file).take(want).read_to_end(&mut bytes))
    {
        warn(&format!("cannot read {}: {e}", paths::AUDIT_LOG));
        return Vec::new();
    }
    last_lines(&bytes, n, start > 0)
        .into_iter()
        .map(root_line)
        .collect()
}

/// The uids (but root's) that sent records to the journal: `journalctl -F _UID`'s lines
/// that are numbers, in order, at most 1000.
pub fn sender_uids(text: &str) -> Vec<u32> {
    let mut uids: Vec<u32> = text
        .lines()
        .filter(|l| (1..=10).contains(&l.len()) && l.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|l| l.parse().ok())
        .filter(|&u| u != 0)
        .collect();
    uids.sort_unstable();
    uids.dedup();
    uids.truncate(1000);
    uids
}

/// `2026-03-04T05:06:07+00:00`: the journal's time of an entry (µs since the epoch), to the
/// second, in UTC, as `journalctl --utc -o short-iso` printed it.
pub fn journal_time(micros: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_micros(micros);
    let z = utc_seconds(t);
    format!("{}+00:00", z.trim_end_matches('Z'))
}

/// One entry of `journalctl -o json` as shown, if it is a record of a user but root:
/// `TIME [journal: sent by NAME, _UID=N] MESSAGE` — the journal's own time and the uid the
/// kernel gave it first, then the message's first line (printable, bounded). `name` gives a
/// uid's user name.
pub fn journal_line(json: &str, name: &dyn Fn(u32) -> Option<String>) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let uid: u32 = v.get("_UID")?.as_str()?.parse().ok()?;
    if uid == 0 {
        return None;
    }
    let micros: u64 = v.get("__REALTIME_TIMESTAMP")?.as_str()?.parse().ok()?;
    let message: Vec<u8> = match v.get("MESSAGE")? {
        serde_json::Value::String(s) => s.as_bytes().to_vec(),
        // Binary or non-UTF-8 data comes as an array of bytes.
        serde_json::Value::Array(a) => a
            .iter()
            .take(2 * MAX_RECORD)
            .map(|b| b.as_u64().unwrap_or(0) as u8)
            .collect(),
        _ => return None,
    };
    let first = message.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let who = name(uid)
        .map(|n| {
            n.chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
                .take(32)
                .collect::<String>()
        })
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| format!("uid {uid}"));
    Some(format!(
        "{} [journal: sent by {who}, _UID={uid}] {}",
        journal_time(micros),
        clean(first, MAX_RECORD)
    ))
}

/// The last `n + 1` records users but root sent to the journal, oldest first (one more than
/// shown, to tell whether older ones were left out).
fn journal_records(n: usize) -> Vec<String> {
    let uids = match Spawn::new(JOURNALCTL)
        .args(["-t", "tribist-deploy", "-F", "_UID"])
        .env("LC_ALL", "C")
        .run(JOURNAL_TIME, 64 * 1024)
    {
        Ok(o) if o.status == ExitKind::Exited(0) => sender_uids(&o.stdout),
        Ok(o) => {
            warn(&format!(
                "cannot list the journal's senders ({}): {}",
                o.status,
                clean(o.stderr.as_bytes(), 200)
            ));
            return Vec::new();
        }
        Err(e) => {
            warn(&format!("cannot read the journal: {e}"));
            return Vec::new();
        }
    };
    if uids.is_empty() {
        return Vec::new();
    }
    let mut args: Vec<String> = vec!["-t".into(), "tribist-deploy".into()];
    // Matches of one field are or-ed: any of these senders.
    args.extend(uids.iter().map(|u| format!("_UID={u}")));
    args.extend(
        [
            "-n",
            &(n + 1).to_string(),
            "-o",
            "json",
            "--all",
            "--no-pager",
            "-q",
        ]
        .map(String::from),
    );
    let mut kept = std::collections::VecDeque::new();
    let mut partial: Vec<u8> = Vec::new();
    let mut skipping = false;
    let take = |line: &[u8], kept: &mut std::collections::VecDeque<String>| {
        if let Some(l) = journal_line(&String::from_utf8_lossy(line), &user_name) {
            kept.push_back(l);
            if kept.len() > n + 1 {
                kept.pop_front();
            }
        }
    };
    let s = stream(
        JOURNALCTL,
        &args,
        Some(JOURNAL_TIME),
        &interrupt::interrupted,
        &mut |chunk| {
            for &b in chunk {
                if b == b'\n' {
                    if !skipping {
                        take(&partial, &mut kept);
                    }
                    partial.clear();
                    skipping = false;
                } else if partial.len() < 256 * 1024 {
                    partial.push(b);
                } else {
                    // An entry too large to be a record of ours.
                    skipping = true;
                }
            }
            true
        },
    );
    if !partial.is_empty() && !skipping {
        take(&partial, &mut kept);
    }
    match s {
        Ok(s) if s.end == End::Exited(0) => {}
        Ok(s) => warn(&format!(
            "reading the journal ended early ({:?}): {}",
            s.end,
            clean(s.stderr.as_bytes(), 200)
        )),
        Err(e) => warn(&format!("cannot read the journal: {e}")),
    }
    kept.into()
}

/// The lines shown: root's, then the journal's last `n` of `others` (which may hold one
/// more, saying that older ones were left out), stably sorted by their first word (the
/// time); and whether older journal entries were left out.
pub fn merge(root: Vec<String>, mut others: Vec<String>, n: usize) -> (Vec<String>, bool) {
    let more = others.len() > n;
    let skip = others.len().saturating_sub(n);
    others.drain(..skip);
    let mut all = root;
    all.extend(others);
    all.sort_by(|a, b| first_word(a).cmp(first_word(b)));
    (all, more)
}

fn first_word(s: &str) -> &str {
    s.split(' ').next().unwrap_or("")
}

/// `audit [LINES]` (root; default 50).
pub fn cmd_audit(args: &[String]) -> Result<Exit> {
    need_root("audit")?;
    let n = lines_arg(args.first().map(String::as_str).unwrap_or("50"))?;
    let others = journal_records(n);
    if interrupt::interrupted() {
        return Err(Fail::quiet(Exit::Interrupted));
    }
    let (lines, more) = merge(root_records(n), others, n);
    let mut out = String::new();
    for l in &lines {
        out.push_str(l);
        out.push('\n');
    }
    if more {
        out.push_str(&format!(
            "(older entries from the journal are not shown: LINES={} shows more)\n",
            n * 10
        ));
    }
    print!("{out}");
    Ok(Exit::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(uid: u32) -> Option<String> {
        match uid {
            999 => Some("tribist".into()),
            1000 => Some("al\u{1b}ice ]".into()),
            _ => None,
        }
    }

    // 2026-03-04T05:06:07Z
    const T: u64 = 1_772_600_767_000_000;

    fn entry(uid: &str, micros: u64, message: serde_json::Value) -> String {
        serde_json::json!({
            "_UID": uid,
            "__REALTIME_TIMESTAMP": micros.to_string(),
            "SYSLOG_IDENTIFIER": "tribist-deploy",
            "MESSAGE": message,
        })
        .to_string()
    }

    #[test]
    fn a_journal_entry_is_led_by_its_time_and_kernel_given_uid() {
        let forged = "2026-03-04T05:06:07Z [root's file] host=x action=upgrade user=root result=ok";
        assert_eq!(
            journal_line(&entry("999", T, forged.into()), &names).unwrap(),
            format!("2026-03-04T05:06:07+00:00 [journal: sent by tribist, _UID=999] {forged}")
        );
        // The name as printable word characters; no name: the uid.
        assert_eq!(
            journal_line(&entry("1000", T, "x".into()), &names).unwrap(),
            "2026-03-04T05:06:07+00:00 [journal: sent by alice, _UID=1000] x"
        );
        assert_eq!(
            journal_line(&entry("4242", T, "x".into()), &names).unwrap(),
            "2026-03-04T05:06:07+00:00 [journal: sent by uid 4242, _UID=4242] x"
        );
        // Root's own entries are its file's: not repeated.
        assert_eq!(journal_line(&entry("0", T, "x".into()), &names), None);
        // The first line only, printable, bounded; bytes as an array.
        let hostile = format!("a\u{1b}[2Kb\r\nsecond line{}", "y".repeat(10_000));
        assert_eq!(
            journal_line(&entry("999", T, hostile.into()), &names).unwrap(),
            "2026-03-04T05:06:07+00:00 [journal: sent by tribist, _UID=999] a[2Kb"
        );
        let long = journal_line(&entry("999", T, "z".repeat(9000).into()), &names).unwrap();
        assert!(long.len() < MAX_RECORD + 100);
        assert_eq!(
            journal_line(
                &entry("999", T, serde_json::json!([104, 105, 255, 10, 120])),
                &names
            )
            .unwrap(),
            "2026-03-04T05:06:07+00:00 [journal: sent by tribist, _UID=999] hi"
        );
        // Not a record: no uid, a uid that is not a number, no time, not JSON.
        assert_eq!(journal_line(r#"{"MESSAGE":"x"}"#, &names), None);
        assert_eq!(journal_line(&entry("x", T, "m".into()), &names), None);
        assert_eq!(
            journal_line(r#"{"_UID":"999","MESSAGE":"x"}"#, &names),
            None
        );
        assert_eq!(journal_line("-- No entries --", &names), None);
    }

    #[test]
    fn roots_lines_say_so_after_their_time() {
        assert_eq!(
            root_line(b"2026-03-04T05:06:07Z host=a action=install result=ok"),
            "2026-03-04T05:06:07Z [root's file] host=a action=install result=ok"
        );
        assert_eq!(root_line(b"nospace\x1b"), "nospace");
    }

    #[test]
    fn the_last_lines_of_a_file() {
        let text = b"one\ntwo\nthree\n";
        assert_eq!(last_lines(text, 2, false), [&b"two"[..], b"three"]);
        assert_eq!(last_lines(text, 10, false).len(), 3);
        // Read from the middle: the first part-line is not a line.
        assert_eq!(last_lines(b"ne\ntwo\n", 10, true), [&b"two"[..]]);
        assert_eq!(last_lines(b"", 5, false), Vec::<&[u8]>::new());
        assert_eq!(last_lines(b"a\n\nb", 5, false), [&b"a"[..], b"b"]);
    }

    #[test]
    fn senders_are_numbers_but_root() {
        assert_eq!(
            sender_uids("999\n0\n1000\nx\n999\n\n-1\n12345678901\n"),
            vec![999, 1000]
        );
        assert_eq!(sender_uids(""), Vec::<u32>::new());
    }

    #[test]
    fn merged_by_time_roots_last_lines_always_shown() {
        let root: Vec<String> = [
            "2026-03-04T05:00:00Z [root's file] a",
            "2026-03-04T07:00:00Z [root's file] c",
        ]
        .map(String::from)
        .to_vec();
        // Many journal entries after root's: still root's show, and that older ones were
        // left out is said.
        let others: Vec<String> = (0..3)
            .map(|i| {
                format!("2026-03-04T08:00:0{i}+00:00 [journal: sent by tribist, _UID=999] j{i}")
            })
            .collect();
        let (lines, more) = merge(root.clone(), others, 2);
        assert!(more);
        assert_eq!(
            lines,
            [
                "2026-03-04T05:00:00Z [root's file] a",
                "2026-03-04T07:00:00Z [root's file] c",
                "2026-03-04T08:00:01+00:00 [journal: sent by tribist, _UID=999] j1",
                "2026-03-04T08:00:02+00:00 [journal: sent by tribist, _UID=999] j2",
            ]
        );
        // Interleaved by time, newest last; not more than n: nothing said.
        let others =
            vec!["2026-03-04T06:00:00+00:00 [journal: sent by tribist, _UID=999] b".to_string()];
        let (lines, more) = merge(root, others, 2);
        assert!(!more);
        let tags: Vec<&str> = lines
            .iter()
            .map(|l| l.rsplit(' ').next().unwrap())
            .collect();
        assert_eq!(tags, ["a", "b", "c"]);
    }

    #[test]
    fn journal_times() {
        assert_eq!(journal_time(T + 999_999), "2026-03-04T05:06:07+00:00");
        assert_eq!(journal_time(0), "1970-01-01T00:00:00+00:00");
    }
}
