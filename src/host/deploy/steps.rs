//! The steps `install` and `config` take that other commands take too, as deploy.sh had
//! them: the deploy lock with its holder note, a binary's release id, the preflight, a
//! restart and the wait for a healthy `/health`, root's copy of an upload, and keeping a
//! release. Each wait polls the interrupt flag ([`interrupt`]) when asked to, so Ctrl-C is
//! acted on at once; the restoring paths ask not to be cut short.

use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use super::{
    as_tribist, health, interrupt, is_root, paths, releases, say, warn, Ctx, Exit, Fail, Result,
};
use crate::host::audit::{self, Action};
use crate::host::child::{self, ExitKind, RunAs, Spawn};
use crate::host::fsx::{self, Dir, Limits};
use crate::host::lock::{self, DeployLock, LockError};
use crate::host::text::{clean, printable};

/// The largest binary root copies (as deploy.sh's MAX_BINARY).
pub const MAX_BINARY: u64 = 512 * 1024 * 1024;

/// What root's lock note says: `ACTION by BY as ACTOR@FROM (pid PID) since TIME`.
pub fn holder_text(
    action: Action,
    by: &str,
    actor: &str,
    from: &str,
    pid: u32,
    now: &str,
) -> String {
    format!(
        "{action} by {} as {actor}@{from} (pid {pid}) since {now}",
        clean(by.as_bytes(), 100)
    )
}

/// Kilobytes free for root in `dir` (statvfs), if it can be told.
fn free_kib(dir: &str) -> Option<u64> {
    let c = std::ffi::CString::new(dir).ok()?;
    // SAFETY: c is NUL-terminated; st is a valid out-buffer.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return None;
        }
        Some(st.f_bavail as u64 * st.f_frsize as u64 / 1024)
    }
}

/// Takes the host's deploy lock for `action` (sets `ctx.action`), or refuses: exit 3 naming
/// the holder (root's note, else tribist's, labelled so). Root's record of what changes needs
/// room: without it (under 1 MiB free, or the note cannot be written) nothing changes.
pub fn lock(ctx: &mut Ctx, action: Action) -> Result<DeployLock> {
    ctx.action = Some(action);
    let from = audit::from_addr(std::env::var("SSH_CLIENT").ok().as_deref());
    let note = holder_text(
        action,
        &ctx.by,
        &super::actor(),
        &from,
        std::process::id(),
        &audit::utc_seconds(SystemTime::now()),
    );
    let taken = if is_root() {
        DeployLock::acquire(Path::new(paths::LOCK_FILE), &note)
    } else {
        let api = Dir::open(paths::API_DIR)
            .map_err(|e| Fail::failed(format!("{e}; make install fixes the layout")))?;
        DeployLock::acquire_noting(Path::new(paths::LOCK_FILE), api, paths::TRIBIST_NOTE, &note)
    };
    match taken {
        Ok(held) => {
            if is_root() {
                let avail = free_kib(paths::STATE_DIR);
                if avail.is_some_and(|k| k < 1024) || held.note_error().is_some() {
                    return Err(Fail::failed(format!(
                        "refused: root cannot write its audit record in {} ({} KiB free; disk full?): free space there, then run the same command again; nothing changed",
                        paths::STATE_DIR,
                        avail.map_or("?".into(), |k| k.to_string())
                    )));
                }
            }
            Ok(held)
        }
        Err(LockError::Held { note }) => {
            let note = note
                .or_else(tribist_note)
                .unwrap_or_else(|| "unknown holder".into());
            warn(&format!(
                "refused: another deployment holds the lock on {}: {note}",
                audit::hostname()
            ));
            Err(Fail::new(
                Exit::Locked,
                "wait for it to finish, or if it is stuck break the lock on purpose (make unlock)",
            ))
        }
        Err(LockError::Missing { .. }) => Err(Fail::failed(format!(
            "{} is missing: is tribist installed? (make install)",
            paths::LOCK_FILE
        ))),
        Err(e) => Err(Fail::failed(format!("cannot take the deploy lock: {e}"))),
    }
}

/// tribist's own lock note in api/, read through a descriptor (a file of tribist's only).
fn tribist_note() -> Option<String> {
    let (uid, _) = child::user_ids(paths::USER_NAME)?;
    let api = Dir::open(paths::API_DIR).ok()?;
    lock::read_note(&api, paths::TRIBIST_NOTE, uid)
        .map(|n| format!("{n} (as user tribist wrote it)"))
}

/// Whether `s` is a release id as the kit takes one: 1-64 of `[A-Za-z0-9._+-]`.
pub fn release_id_ok(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
}

/// The release id binary `name` of api/ reports (`releases version`, as tribist), if any.
pub fn release_of(name: &str) -> Option<String> {
    let o = releases(&["version", name]).ok()?;
    let id = o.stdout.trim_end_matches('\n');
    (o.status == ExitKind::Exited(0) && release_id_ok(id)).then(|| id.to_string())
}

/// Prints what a child of tribist's said (already printable), each line prefixed.
pub fn relay(out: &child::Outcome, prefix: &str) {
    for line in out.stdout.lines().chain(out.stderr.lines()) {
        println!("{prefix}{line}");
    }
}

/// Like [`relay`], on stderr.
pub fn relay_err(out: &child::Outcome, prefix: &str) {
    for line in out.stdout.lines().chain(out.stderr.lines()) {
        eprintln!("{prefix}{line}");
    }
}

/// `releases discard NAME`, best effort.
pub fn discard(upload: &str) {
    if let Ok(o) = releases(&["discard", upload]) {
        if o.status != ExitKind::Exited(0) {
            relay_err(&o, "    ");
        }
    }
}

/// How a preflight ended, when it did not pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The configuration cannot work (exit 4): the database refuses it, or the binary a
    /// setting.
    Configuration,
    /// Anything else: it exits, hangs or answers otherwise.
    Failed,
    /// An interrupt came: it was stopped.
    Interrupted,
}

/// Runs binary `name` of api/ (as tribist) beside whatever serves, with environment file
/// `env_file`, until its `/health` answers 200 with `release` (`tribist-host releases
/// preflight`); prints what it says, indented. Skipped with `--preflight 0`.
pub fn preflight(
    ctx: &Ctx,
    name: &str,
    release: &str,
    env_file: &str,
) -> std::result::Result<(), Refused> {
    let serving = unit_active(paths::UNIT);
    say(&format!(
        "preflight: starting release {release} ({}; up to {}s)",
        if serving {
            "beside the serving one"
        } else {
            "nothing serves yet"
        },
        ctx.preflight
    ));
    if ctx.preflight == 0 {
        warn(&format!(
            "preflight skipped (PREFLIGHT=0): release {release} is checked only after the switch"
        ));
        return Ok(());
    }
    let secs = ctx.preflight.to_string();
    let mut spawn = Spawn::new(paths::HOST_PROGRAM)
        .args(["releases", "preflight", name, release, &secs, env_file])
        .stop_when(interrupt::interrupted);
    if is_root() {
        spawn = spawn.run_as(tribist()?);
    }
    let out = spawn
        .run(
            Duration::from_secs(u64::from(ctx.preflight) + 10),
            64 * 1024,
        )
        .map_err(|e| {
            warn(&format!("cannot run the preflight: {e}"));
            Refused::Failed
        })?;
    relay(&out, "    ");
    if interrupt::interrupted() {
        return Err(Refused::Interrupted);
    }
    match out.status {
        ExitKind::Exited(0) => Ok(()),
        ExitKind::Exited(4) => Err(Refused::Configuration),
        _ => Err(Refused::Failed),
    }
}

/// User tribist, to run things as.
fn tribist() -> std::result::Result<RunAs, Refused> {
    RunAs::user(paths::USER_NAME).ok_or_else(|| {
        warn(&format!(
            "there is no user {}: make install makes it",
            paths::USER_NAME
        ));
        Refused::Failed
    })
}

/// `systemctl is-active --quiet UNIT`.
pub fn unit_active(unit: &str) -> bool {
    Spawn::new("/usr/bin/systemctl")
        .args(["is-active", "--quiet", unit])
        .run(Duration::from_secs(10), 1024)
        .is_ok_and(|o| o.status == ExitKind::Exited(0))
}

/// Root's `systemctl ARGS…`, bounded; cut short by an interrupt when `cancellable`. Its
/// output is passed on (printable) when it fails.
pub fn systemctl_root(args: &[&str], timeout: Duration, cancellable: bool) -> bool {
    let mut spawn = Spawn::new("/usr/bin/systemctl").args(args);
    if cancellable {
        spawn = spawn.stop_when(interrupt::interrupted);
    }
    match spawn.run(timeout, 16 * 1024) {
        Ok(o) if o.status == ExitKind::Exited(0) => true,
        Ok(o) => {
            if !(cancellable && interrupt::interrupted()) {
                relay_err(&o, "");
            }
            false
        }
        Err(e) => {
            warn(&format!("cannot run systemctl: {e}"));
            false
        }
    }
}

/// How a restart or a wait for health ended, when not healthy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotHealthy {
    /// Said why (health, the last log lines).
    Failed,
    /// An interrupt came while `cancellable`.
    Interrupted,
}

/// Restarts the service through systemd (which promotes `server_new`) and waits for a
/// healthy server reporting release `want` (any, when None). `cancellable`: an interrupt
/// stops the wait (the restoring paths pass false).
pub fn restart_and_wait(
    ctx: &Ctx,
    want: Option<&str>,
    cancellable: bool,
) -> std::result::Result<(), NotHealthy> {
    // TimeoutStopSec= and TimeoutStartSec= (15 s and 30 s), and a margin.
    if !systemctl_root(
        &["restart", paths::UNIT],
        Duration::from_secs(60),
        cancellable,
    ) {
        if cancellable && interrupt::interrupted() {
            return Err(NotHealthy::Interrupted);
        }
        warn(&format!(
            "'systemctl restart {}' failed: the server did not start or did not report ready; its last log lines:",
            paths::UNIT
        ));
        recent_log();
        return Err(NotHealthy::Failed);
    }
    wait_healthy(ctx, want, cancellable)
}

/// What a wait for health saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    Healthy,
    /// 200, but another release (or none) after the release check's grace.
    WrongRelease(Option<String>),
    /// No 200 within the wait: the last answer.
    Unhealthy(health::Health),
}

/// Waits up to `ctx.wait` seconds for `/health` 200 on the socket's address, then (with
/// `want`) up to 5 s more for it to report `want`: right after a handover the old process
/// may answer one last request.
pub fn wait_healthy(
    ctx: &Ctx,
    want: Option<&str>,
    cancellable: bool,
) -> std::result::Result<(), NotHealthy> {
    let listen = health::listen_address();
    let pause = |d| {
        if cancellable {
            interrupt::sleep(d)
        } else {
            std::thread::sleep(d);
            true
        }
    };
    let end = Instant::now() + Duration::from_secs(u64::from(ctx.wait));
    let seen = loop {
        let h = health::fetch_at(&listen, Duration::from_secs(5));
        if h.code == 200 {
            break Seen::Healthy;
        }
        if Instant::now() >= end {
            break Seen::Unhealthy(h);
        }
        if !pause(Duration::from_millis(500)) {
            return Err(NotHealthy::Interrupted);
        }
    };
    let seen = match (seen, want) {
        (Seen::Healthy, Some(want)) => {
            let end = Instant::now() + Duration::from_secs(5);
            loop {
                let got = health::fetch_at(&listen, Duration::from_secs(5)).release();
                if got.as_deref() == Some(want) {
                    break Seen::Healthy;
                }
                if Instant::now() >= end {
                    break Seen::WrongRelease(got);
                }
                if !pause(Duration::from_millis(200)) {
                    return Err(NotHealthy::Interrupted);
                }
            }
        }
        (seen, _) => seen,
    };
    match seen {
        Seen::Healthy => Ok(()),
        Seen::WrongRelease(got) => {
            warn(&format!(
                "healthy, but serving release '{}' instead of '{}'",
                got.as_deref().unwrap_or("unknown"),
                want.unwrap_or("")
            ));
            Err(NotHealthy::Failed)
        }
        Seen::Unhealthy(h) => {
            if h.code == 0 {
                eprintln!(
                    "health, last attempt: no HTTP answer ({})",
                    clean(h.body.as_bytes(), 300)
                );
            } else {
                eprintln!(
                    "health, last answer: HTTP {} {}",
                    h.code,
                    clean(h.body.as_bytes(), 2000)
                );
            }
            warn(&format!(
                "the server did not become healthy within {}s; its last log lines:",
                ctx.wait
            ));
            recent_log();
            Err(NotHealthy::Failed)
        }
    }
}

/// The service's last log lines, indented, on stderr: the journal as root, `systemctl
/// status` otherwise. A server that just died may still have its last words in flight to
/// journald: it settles first.
pub fn recent_log() {
    std::thread::sleep(Duration::from_secs(1));
    let spawn = if is_root() {
        Spawn::new("/usr/bin/journalctl").args(["-u", paths::UNIT, "-n", "25", "--no-pager"])
    } else {
        super::sudo().args(["-n", "/usr/bin/systemctl", "status", paths::UNIT])
    };
    if let Ok(o) = spawn.run(Duration::from_secs(10), 20_000) {
        for line in printable(format!("{}{}", o.stdout, o.stderr).as_bytes(), 20_000).lines() {
            eprintln!("    {line}");
        }
    }
}

/// Stages upload `name` as `server_new` (as tribist) and, when root deploys, first takes
/// root's copy of it (`bin/next`): the start or reload step that promotes it runs that copy,
/// not whatever api/ holds by then. The upload is read through one descriptor (no link
/// followed, a regular file of tribist's, bounded).
pub fn stage_verified(name: &str) -> Result<()> {
    if is_root() {
        copy_upload(name).map_err(|e| {
            Fail::failed(format!(
                "could not take root's copy of the upload: {e}; nothing changed"
            ))
        })?;
    }
    let o = releases(&["stage", name])?;
    if o.status != ExitKind::Exited(0) {
        relay_err(&o, "");
        return Err(Fail::failed(format!(
            "could not stage {} as server_new (above); nothing changed",
            clean(name.as_bytes(), 40)
        )));
    }
    relay(&o, &format!("{}: ", super::PROG));
    Ok(())
}

fn copy_upload(name: &str) -> std::result::Result<(), String> {
    let (uid, _) = child::user_ids(paths::USER_NAME).ok_or("there is no user tribist")?;
    let api = Dir::open(paths::API_DIR).map_err(|e| e.to_string())?;
    let src = fsx::open_regular_at(
        &api,
        name,
        Limits {
            owner: Some(uid),
            max_size: MAX_BINARY,
        },
    )
    .map_err(|e| e.to_string())?;
    if src.stat.size == 0 {
        return Err(format!("{}/{name} is empty", paths::API_DIR));
    }
    let dst = Dir::open(paths::VERIFIED_DIR).map_err(|e| e.to_string())?;
    let next = Path::new(paths::VERIFIED_NEXT)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("next");
    fsx::copy_verified(&src.file, &dst, next, 0o755, None, MAX_BINARY)
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Removes root's copy of an upload no start step took (`bin/next`), when root.
pub fn drop_verified_next() {
    if is_root() {
        if let Ok(d) = Dir::open(paths::VERIFIED_DIR) {
            let _ = fsx::unlinkat(&d, "next");
        }
    }
}

/// Keeps the serving binary as releases/ID (and prunes to `--keep`): what `make releases`
/// lists. A failure here changes nothing that serves.
pub fn keep_release(ctx: &Ctx, id: &str) {
    let by = format!("{} ({})", clean(ctx.by.as_bytes(), 80), super::actor());
    let keep = ctx.keep.to_string();
    match releases(&["keep", id, &keep, &by]) {
        Ok(o) if o.status == ExitKind::Exited(0) => relay(&o, &format!("{}: ", super::PROG)),
        Ok(o) => {
            relay(&o, &format!("{}: ", super::PROG));
            warn(&format!(
                "could not keep release {id} in {}/releases (above); it serves all the same",
                paths::API_DIR
            ));
        }
        Err(e) => warn(&format!(
            "could not keep release {id} in {}/releases ({e}); it serves all the same",
            paths::API_DIR
        )),
    }
}

/// A file of root's (or of anyone's, for reading only) in a root-owned directory: read
/// through a descriptor, no link followed, at most `max` bytes. None when it is not there.
pub fn read_root_file(path: &str, max: u64) -> Result<Option<Vec<u8>>> {
    let p = Path::new(path);
    let (dir, name) = (
        p.parent().unwrap_or(Path::new("/")),
        p.file_name().and_then(|n| n.to_str()).unwrap_or(""),
    );
    let d = match Dir::open(dir) {
        Ok(d) => d,
        Err(fsx::FsError::Io { err, .. }) if err.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None)
        }
        Err(e) => {
            return Err(Fail::failed(format!(
                "{e}; make install puts the layout right"
            )))
        }
    };
    match fsx::open_regular_at(
        &d,
        name,
        Limits {
            owner: None,
            max_size: max,
        },
    ) {
        Ok(r) => fsx::read_bounded(&r.file, max, path)
            .map(Some)
            .map_err(|e| Fail::failed(e.to_string())),
        Err(fsx::FsError::Io { err, .. }) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Fail::failed(format!(
            "{e}; make install puts the layout right"
        ))),
    }
}

/// Runs a root-side tool (`useradd`, `visudo`, …) as root, bounded; its output passed on
/// when it fails. Ok(true) when it exited 0.
pub fn run_root(program: &str, args: &[&str], timeout: Duration) -> Result<child::Outcome> {
    Spawn::new(program)
        .args(args)
        .run(timeout, 64 * 1024)
        .map_err(|e| Fail::failed(format!("cannot run {program}: {e}")))
}

/// The first of `candidates` that exists (a program's place differs between distributions).
pub fn find_program(candidates: &[&'static str]) -> Option<&'static str> {
    candidates.iter().copied().find(|p| Path::new(p).exists())
}

/// Reads a file given as standard input to a child (the bundle's binary): opened here.
pub fn open_for_stdin(dir: &Dir, name: &str, max: u64) -> Result<File> {
    fsx::open_regular_at(
        dir,
        name,
        Limits {
            owner: Some(0),
            max_size: max,
        },
    )
    .map(|r| r.file)
    .map_err(|e| Fail::failed(format!("{e}; run make install again")))
}

/// As tribist: `program args…`, bounded to `secs` (a wrapper for the one-off calls).
pub fn tribist_run(
    program: &str,
    args: &[&str],
    stdin: Option<File>,
    secs: u64,
) -> Result<child::Outcome> {
    as_tribist(program, args, stdin, Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_note_reads_as_deploy_sh_wrote_it() {
        assert_eq!(
            holder_text(
                Action::Install,
                "alice\u{1b}[2J@desk",
                "root",
                "10.1.2.3",
                812,
                "2026-01-02T03:04:05Z"
            ),
            "install by alice[2J@desk as root@10.1.2.3 (pid 812) since 2026-01-02T03:04:05Z"
        );
    }

    #[test]
    fn release_ids() {
        for ok in [
            "abc",
            "0123456789abcdef0123456789abcdef01234567-dirty-0123456789ab",
            "v1.2+x_y",
        ] {
            assert!(release_id_ok(ok), "{ok}");
        }
        for bad in ["", "a b", "a/b", "x\n", &"a".repeat(65)] {
            assert!(!release_id_ok(bad), "{bad:?}");
        }
    }
}
