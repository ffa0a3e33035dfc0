//! Changing what serves: `receive`, `upgrade`, `rollback` (plain, and `--to PREFIX`),
//! `start` and `stop` — deploy.sh's state machine of a switch, with its preflight, handover or
//! restart, health and release check, and the revert of what failed or was interrupted.
//!
//! Why here and so: what an interrupt must undo is a value ([`Switching`]), not globals a
//! trap reads; every wait (the preflight, systemctl, `/health`) looks at the interrupt flag
//! in short steps, and the undoing runs as ordinary code afterwards (deploy.sh's
//! `on_interrupt`), then the command exits 130. Root's deployment takes its copy of the
//! upload right after the lock ([`verified`]): the description, the identity check and the
//! preflight run that copy, and it is what the start or reload step installs; each binary's
//! description is read once ([`binary`]).

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::binary::{self, Facts};
use super::handover::{self, UnitView};
use super::health::{self, listen_address};
use super::session::{self, Session};
use super::verified::{self, Copies};
use super::{
    interrupt, is_root, paths, releases, say, unit_property, warn, Ctx, Exit, Fail, Result,
};
use crate::host::audit::{Action, Outcome};
use crate::host::child::{self, ExitKind, RunAs, Spawn};
use crate::host::digest::Sha256;
use crate::host::fsx::Dir;
use crate::host::text::clean;

/// Set while an interrupt's restoring path runs: its own waits are not cut short by the
/// interrupt that started it (deploy.sh ignored further signals then).
static RESTORING: AtomicBool = AtomicBool::new(false);

/// Whether a wait must stop now: an interrupt came, and this is not its restoring path.
pub fn should_stop() -> bool {
    interrupt::interrupted() && !RESTORING.load(Ordering::SeqCst)
}

/// Sleeps `d` in short steps; false if it must stop ([`should_stop`]).
fn pause(d: Duration) -> bool {
    let end = Instant::now() + d;
    loop {
        if should_stop() {
            return false;
        }
        let now = Instant::now();
        if now >= end {
            return true;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// How a wait ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waited {
    Done,
    /// It failed; why was said.
    Failed,
    /// An interrupt came: the caller undoes what it promised.
    Interrupted,
}

/// How a preflight ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preflight {
    Passed,
    Failed,
    /// The configuration cannot work (the database refuses it, or the binary a setting).
    Configuration,
    Interrupted,
}

/// What an interrupt must undo now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Switching {
    /// Nothing changed yet.
    Idle,
    /// An upload not staged yet: it is removed.
    Upload(String),
    /// The upload is `server_new` (maybe promoted by systemd already): everything goes back.
    Staged,
    /// The files are back as before the upgrade; only the switch back may be left.
    Reverted,
    /// A plain rollback swapped `server` and `server.prev`.
    RollbackSwapped,
}

/// What to do about an interrupt in `state`: the restoring steps, in order. A decision only;
/// [`Deployment::on_interrupt`] carries them out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Restore {
    /// Remove this upload; audit `interrupted`.
    Discard(String),
    /// Audit `interrupted`: nothing had changed.
    Nothing,
    /// Let a handover under way end, put the files back (unless `files_done`) and switch
    /// back; audit `interrupted-rolled-back` or `interrupted-rollback-failed`.
    Revert { files_done: bool },
    /// A plain rollback's swap: whatever serves decides ([`rollback_restore`]).
    Rollback,
}

pub fn restore_for(state: &Switching) -> Restore {
    match state {
        Switching::Idle => Restore::Nothing,
        Switching::Upload(u) => Restore::Discard(u.clone()),
        Switching::Staged => Restore::Revert { files_done: false },
        Switching::Reverted => Restore::Revert { files_done: true },
        Switching::RollbackSwapped => Restore::Rollback,
    }
}

/// A plain rollback interrupted after its swap: what to do given the release serving now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RollbackRestore {
    /// The rollback's release serves: it is done (`interrupted-done`).
    Done,
    /// The release from before still serves (a handover that failed or never started): the
    /// files are swapped back (`interrupted-nothing-changed`).
    SwapBack,
    /// Neither: swapped back and restarted.
    SwapBackAndRestart,
}

pub fn rollback_restore(serving: Option<&str>, from: &str, to: &str) -> RollbackRestore {
    match serving {
        Some(s) if s == to => RollbackRestore::Done,
        Some(s) if s == from => RollbackRestore::SwapBack,
        _ => RollbackRestore::SwapBackAndRestart,
    }
}

// --- running things -------------------------------------------------------------------------

/// `program args…` as tribist (directly when tribist already), ended early on an interrupt.
fn tribist_spawn(program: &str, args: &[&str]) -> Result<Spawn> {
    let mut spawn = Spawn::new(program).args(args).stop_when(should_stop);
    if is_root() {
        let who = RunAs::user(paths::USER_NAME).ok_or_else(|| {
            Fail::failed(format!(
                "there is no user {}: make install HOST=… makes it",
                paths::USER_NAME
            ))
        })?;
        spawn = spawn.run_as(who);
    }
    Ok(spawn)
}

fn run(spawn: Spawn, what: &str, deadline: Duration) -> Result<child::Outcome> {
    spawn
        .run(deadline, 64 * 1024)
        .map_err(|e| Fail::failed(format!("cannot run {what}: {e}")))
}

/// Prints a child's output as it said it: its stdout to ours, its stderr to ours.
fn relay(o: &child::Outcome) {
    if !o.stdout.is_empty() {
        print_lines(&o.stdout, "", false);
    }
    if !o.stderr.is_empty() {
        print_lines(&o.stderr, "", true);
    }
}

/// Each line of `text` (printable already) with `prefix`, to stdout or stderr.
fn print_lines(text: &str, prefix: &str, to_stderr: bool) {
    let mut all = String::new();
    for line in text.trim_end_matches('\n').split('\n') {
        all.push_str(prefix);
        all.push_str(line);
        all.push('\n');
    }
    let ok = if to_stderr {
        std::io::stderr().lock().write_all(all.as_bytes()).is_ok()
    } else {
        let mut out = std::io::stdout().lock();
        out.write_all(all.as_bytes())
            .and_then(|_| out.flush())
            .is_ok()
    };
    if !ok {
        interrupt::note_lost_client();
    }
}

/// `systemctl ARGS…` as the caller may run it (root directly, tribist through sudo, whose
/// drop-in allows exactly these lines), ended early on an interrupt. A job that systemd has
/// started goes on in systemd when the client is ended: a later restart replaces it.
fn sctl(args: &[&str]) -> Result<(child::Outcome, bool)> {
    let spawn = if is_root() {
        Spawn::new("/usr/bin/systemctl").args(args)
    } else {
        let mut all = vec!["-n", "/usr/bin/systemctl"];
        all.extend_from_slice(args);
        super::sudo().args(all)
    };
    let o = run(
        spawn.stop_when(should_stop),
        "systemctl",
        Duration::from_secs(300),
    )?;
    let stopped = o.status == ExitKind::TimedOut && should_stop();
    Ok((o, stopped))
}

/// `systemctl VERB tribist`: Done, Failed (its words relayed) or Interrupted.
fn sctl_unit(verb: &str) -> Waited {
    match sctl(&[verb, paths::UNIT]) {
        Ok((_, true)) => Waited::Interrupted,
        Ok((o, false)) => {
            relay(&o);
            if o.status == ExitKind::Exited(0) {
                Waited::Done
            } else {
                Waited::Failed
            }
        }
        Err(f) => {
            warn(&f.message);
            Waited::Failed
        }
    }
}

// --- health ---------------------------------------------------------------------------------

/// The releaseId `/health` reports now.
pub fn serving_release() -> Option<String> {
    health::serving_release()
}

/// The last lines of the service's log: the journal as root, `systemctl status` otherwise
/// (all tribist may run), bounded and printable. A server that just died may still have its
/// last words in flight to journald: it waits a second first.
pub fn recent_log() -> String {
    std::thread::sleep(Duration::from_secs(1));
    let o = if is_root() {
        let journalctl = ["/usr/bin/journalctl", "/bin/journalctl"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("/usr/bin/journalctl");
        Spawn::new(journalctl)
            .args(["-u", paths::UNIT, "-n", "25", "--no-pager"])
            .run(Duration::from_secs(10), 20_000)
    } else {
        super::sudo()
            .args(["-n", "/usr/bin/systemctl", "status", paths::UNIT])
            .run(Duration::from_secs(10), 20_000)
    };
    match o {
        Ok(o) => format!("{}{}", o.stdout, o.stderr),
        Err(e) => e.to_string(),
    }
}

/// The log's last lines, indented, to stderr.
fn show_recent_log() {
    print_lines(&recent_log(), "    ", true);
}

/// How wait_for_it.sh printed a body: line breaks as spaces, no trailing blank, at most 2000
/// bytes (it is printable already).
fn body_line(body: &str) -> String {
    let one: String = body
        .chars()
        .map(|c| if c == '\n' { ' ' } else { c })
        .take(2000)
        .collect();
    one.trim_end().to_string()
}

/// Waits (`--wait`, TRIBIST_WAIT, default 30 s) for `/health` to answer 2xx, then, when
/// `want` is given, for it to report release `want` (for up to 5 s more: right after a
/// handover the old process may answer one last request). On failure says why: the last
/// answer, and the service's last log lines.
pub fn wait_healthy(ctx: &Ctx, want: Option<&str>) -> Waited {
    let listen = listen_address();
    let wait = Duration::from_secs(u64::from(ctx.wait));
    let start = Instant::now();
    let deadline = start + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let h = health::fetch_at(
            &listen,
            left.clamp(Duration::from_millis(200), Duration::from_secs(5)),
        );
        if (200..300).contains(&h.code) {
            break;
        }
        if Instant::now() >= deadline {
            let last = if h.code == 0 {
                let why = if h.body.is_empty() {
                    "nothing listening".to_string()
                } else {
                    body_line(&h.body)
                };
                format!("health, last attempt: no HTTP answer ({why})")
            } else {
                format!(
                    "health, last answer: HTTP {} {}",
                    h.code,
                    body_line(&h.body)
                )
            };
            print_lines(&last, "", true);
            warn(&format!(
                "the server did not become healthy within {}s; its last log lines:",
                ctx.wait
            ));
            show_recent_log();
            return Waited::Failed;
        }
        if !pause(Duration::from_millis(500)) {
            return Waited::Interrupted;
        }
    }
    let Some(want) = want.filter(|w| !w.is_empty()) else {
        return Waited::Done;
    };
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let got = serving_release();
        if got.as_deref() == Some(want) {
            return Waited::Done;
        }
        if Instant::now() >= end {
            warn(&format!(
                "healthy, but serving release '{}' instead of '{want}'",
                got.as_deref().unwrap_or("unknown")
            ));
            return Waited::Failed;
        }
        if !pause(Duration::from_millis(200)) {
            return Waited::Interrupted;
        }
    }
}

/// Restarts through systemd (whose start step promotes `server_new`) and waits for a healthy
/// server that reports release `want` (any, when `None`).
pub fn restart_and_wait(ctx: &Ctx, want: Option<&str>) -> Waited {
    match sctl_unit("restart") {
        Waited::Done => wait_healthy(ctx, want),
        Waited::Interrupted => Waited::Interrupted,
        Waited::Failed => {
            warn(&format!(
                "'systemctl restart {}' failed: the server did not start or did not report ready; its last log lines:",
                paths::UNIT
            ));
            show_recent_log();
            Waited::Failed
        }
    }
}

/// Waits (up to 30 s) for a handover under way in systemd to end, so that no rename races
/// the unit's own.
fn wait_handover_end() {
    for i in 0..150 {
        if unit_property(paths::UNIT, "ActiveState") != "reloading" {
            return;
        }
        if i == 0 {
            warn("waiting for the handover under way to end first (up to 30 s)");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

// --- the handover or the restart ------------------------------------------------------------

/// What systemd says of the service, for [`handover::no_handover`] (timestamps in UTC).
fn unit_view() -> UnitView {
    let o = Spawn::new("/usr/bin/systemctl")
        .args([
            "show",
            "--timestamp=us",
            paths::UNIT,
            "-p",
            "CanReload",
            "-p",
            "ActiveState",
            "-p",
            "StatusText",
            "-p",
            "InactiveExitTimestamp",
        ])
        .env("TZ", "UTC")
        .run(Duration::from_secs(10), 64 * 1024);
    let text = o.map(|o| o.stdout).unwrap_or_default();
    let prop = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or("")
            .to_string()
    };
    UnitView {
        active_state: prop("ActiveState"),
        can_reload: prop("CanReload"),
        status_text: prop("StatusText"),
        started_us: handover::parse_utc_timestamp(&prop("InactiveExitTimestamp")),
    }
}

/// The environment file's mtime in µs since the epoch.
fn env_mtime_us() -> Option<i64> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(paths::ENV_FILE).ok()?;
    Some(m.mtime() * 1_000_000 + m.mtime_nsec() / 1000)
}

/// Whether sudo lets tribist reload the service.
fn sudo_allows_reload() -> bool {
    super::sudo()
        .args(["-n", "-l", "/usr/bin/systemctl", "reload", paths::UNIT])
        .run(Duration::from_secs(10), 4096)
        .is_ok_and(|o| o.status == ExitKind::Exited(0))
}

/// Why the switch to `target` cannot be a handover, if it cannot.
fn why_no_handover(target: &mut Facts) -> Option<String> {
    handover::no_handover(
        &unit_view(),
        || target.hands_over(),
        env_mtime_us(),
        || is_root() || sudo_allows_reload(),
    )
}

/// Switches the service to `target` (promoted by systemd's steps from `server_new`, or
/// `server` itself) and waits for a healthy server that reports release `want`: a handover
/// when it can be, else a restart. On failure says why.
fn switch_and_wait(ctx: &Ctx, want: Option<&str>, target: &mut Facts) -> Waited {
    match why_no_handover(target) {
        None => {
            say(&format!(
                "switching: the serving process hands over to {} (systemctl reload) and drains once it serves",
                want.unwrap_or("the new binary")
            ));
            match sctl_unit("reload") {
                Waited::Done => wait_healthy(ctx, want),
                Waited::Interrupted => Waited::Interrupted,
                Waited::Failed => {
                    warn("the handover failed; the process that was serving goes on serving. Its last log lines:");
                    show_recent_log();
                    Waited::Failed
                }
            }
        }
        Some(why) => {
            say(&format!(
                "switching: restarting {} ({why}) and waiting up to {}s",
                paths::UNIT,
                ctx.wait
            ));
            restart_and_wait(ctx, want)
        }
    }
}

// --- the preflight, keeping, the installed check ----------------------------------------------

/// How long `releases preflight` may take in all: it first reads the binary's description
/// (up to the 10 s a binary has to answer `--describe`), then gives it `secs`, then stops it
/// (SIGTERM, then SIGKILL): deploy.sh's `secs + 10` cut a hanging release off before it said
/// why.
pub fn preflight_bound(secs: u32) -> Duration {
    // 10 s: the deadline src/host/releases/describe.rs gives `--describe`; 15 s for the
    // binary's stop and the start of either.
    Duration::from_secs(u64::from(secs) + 10 + 15)
}

/// Runs binary `name` (as `releases` names it: an upload, a slot of api/ or root's copy)
/// beside the serving one, with environment file `env_file`, as tribist, for up to
/// `--preflight` seconds (`tribist-host releases preflight`); prints what it says, indented.
pub fn preflight(ctx: &Ctx, name: &str, release: &str, env_file: &str) -> Result<Preflight> {
    let place = if unit_property(paths::UNIT, "ActiveState") == "active" {
        "beside the serving one"
    } else {
        "nothing serves yet"
    };
    say(&format!(
        "preflight: starting release {release} ({place}; up to {}s)",
        ctx.preflight
    ));
    if ctx.preflight == 0 {
        warn(&format!(
            "preflight skipped (PREFLIGHT=0): release {release} is checked only after the switch"
        ));
        return Ok(Preflight::Passed);
    }
    let secs = ctx.preflight.to_string();
    let spawn = tribist_spawn(
        paths::HOST_PROGRAM,
        &["releases", "preflight", name, release, &secs, env_file],
    )?;
    let o = run(spawn, "the preflight", preflight_bound(ctx.preflight))?;
    let mut said = o.stdout.clone();
    said.push_str(&o.stderr);
    if !said.trim().is_empty() {
        print_lines(&said, "    ", false);
    }
    if should_stop() {
        return Ok(Preflight::Interrupted);
    }
    Ok(match o.status {
        ExitKind::Exited(0) => Preflight::Passed,
        ExitKind::Exited(4) => Preflight::Configuration,
        _ => Preflight::Failed,
    })
}

/// Keeps the serving binary as releases/ID (and prunes to `--keep`): what `make releases`
/// lists and `make rollback TO=` goes back to. A failure here changes nothing that serves.
pub fn keep_release(ctx: &Ctx, id: &str) {
    let by = format!("{} ({})", clean(ctx.by.as_bytes(), 80), super::actor());
    let keep = ctx.keep.to_string();
    match releases(&["keep", id, &keep, &by]) {
        Ok(o) if o.status == ExitKind::Exited(0) => {
            if !o.stdout.trim().is_empty() {
                print_lines(&o.stdout, &format!("{}: ", super::PROG), false);
            }
            if !o.stderr.is_empty() {
                print_lines(&o.stderr, "", true);
            }
        }
        other => {
            if let Ok(o) = &other {
                relay(o);
            }
            warn(&format!(
                "could not keep release {id} in {}/releases (above); it serves all the same",
                paths::API_DIR
            ));
        }
    }
}

/// [`keep_release`], when what is kept is what serves: as root, `api/server` (what `keep`
/// links into releases/) must be the bytes of root's copy that runs, or a later `rollback
/// --to` would bring back other bytes under this id.
fn keep_served(ctx: &Ctx, id: &str) {
    if is_root() {
        if let Ok(c) = Copies::host() {
            if let (Some(api), Some(running)) = (c.api_digest("server"), c.running_digest()) {
                if api != running {
                    warn(&format!(
                        "not keeping release {id}: {}/server is not the binary that serves (its bytes changed after root's copy was taken); it serves all the same",
                        paths::API_DIR
                    ));
                    return;
                }
            }
        }
    }
    keep_release(ctx, id);
}

/// Whether install finished here: the unit, and a binary in api/.
fn installed() -> std::result::Result<(), String> {
    if !std::path::Path::new(paths::UNIT_FILE).exists() {
        return Err(format!("no {}", paths::UNIT_FILE));
    }
    let server = Dir::open(paths::API_DIR)
        .ok()
        .and_then(|api| api.lstat_at("server").ok())
        .is_some_and(|st| st.is_regular());
    if !server {
        return Err(format!("no {}/server", paths::API_DIR));
    }
    Ok(())
}

/// Root's copy of what runs, when there is one: the binary to describe as what serves.
fn installed_binary() -> String {
    match crate::host::fsx::lstat(std::path::Path::new(paths::VERIFIED)) {
        Ok(st) if st.is_regular() && st.uid == 0 => paths::VERIFIED.to_string(),
        _ => "server".to_string(),
    }
}

/// The standard input given to `receive`, never a terminal.
fn stdin_file() -> Result<File> {
    let fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| Fail::failed(format!("cannot take the standard input: {e}")))?;
    // SAFETY: isatty on a live descriptor.
    if unsafe { libc::isatty(fd.as_raw_fd()) } == 1 {
        return Err(Fail::failed(format!(
            "refusing to hand a terminal to user {}: send the binary on standard input (make upgrade does)",
            paths::USER_NAME
        )));
    }
    Ok(File::from(fd))
}

// --- the commands ---------------------------------------------------------------------------

/// `receive SHA256`: reads a binary from stdin into api/ (as tribist), checks its SHA-256,
/// prints the upload's name.
pub fn receive(_ctx: &mut Ctx, sum: &str) -> Result<Exit> {
    if sum.len() != 64
        || !sum
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(Fail::usage(format!(
            "'{}' is not a SHA-256 (64 hex digits)",
            clean(sum.as_bytes(), 80)
        )));
    }
    if Dir::open(paths::API_DIR).is_err() {
        return Err(Fail::failed(format!(
            "{} does not exist: is tribist installed? (make install)",
            paths::API_DIR
        )));
    }
    let spawn =
        tribist_spawn(paths::HOST_PROGRAM, &["releases", "receive", sum])?.stdin(stdin_file()?);
    let o = run(spawn, "the upload", Duration::from_secs(900))?;
    relay(&o);
    if should_stop() {
        return Err(Fail::quiet(Exit::Interrupted));
    }
    // releases' 3 is a checksum mismatch, not the lock's 3.
    if o.status != ExitKind::Exited(0) {
        return Err(Fail::quiet(Exit::Failed));
    }
    Ok(Exit::Ok)
}

/// An upload's name as receive and restage make it.
fn upload_name_ok(s: &str) -> bool {
    s.strip_prefix(".upload.").is_some_and(|r| {
        (6..=16).contains(&r.len()) && r.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

/// `upgrade UPLOAD`.
/// `upgrade UPLOAD [SHA256]`: with SHA256 (the deployer's digest of what it sent), root's copy
/// must be exactly those bytes, so nothing tribist renames over the upload between `receive`
/// and the lock can take its place.
pub fn upgrade(ctx: &mut Ctx, upload: &str, expect: Option<Sha256>) -> Result<Exit> {
    if !upload_name_ok(upload) {
        return Err(Fail::usage(format!(
            "'{}' is not an upload name (tribist-host receive prints it)",
            clean(upload.as_bytes(), 40)
        )));
    }
    let session = session::lock(ctx, Action::Upgrade, Some(upload))?;
    let mut d = Deployment::new(ctx, session, Switching::Upload(upload.to_string()));
    d.expect = expect;
    d.switch_to_upload(upload, "upgraded")
}

/// `rollback --to PREFIX`: the kept release whose id starts with PREFIX, through the same
/// preflight, switch, health check and revert as an upgrade.
pub fn rollback_to(ctx: &mut Ctx, prefix: &str) -> Result<Exit> {
    if !binary::release_id_ok(prefix) {
        return Err(Fail::usage(format!(
            "'{}' is not a release id or a prefix of one",
            clean(prefix.as_bytes(), 70)
        )));
    }
    let session = session::lock(ctx, Action::Rollback, None)?;
    let mut d = Deployment::new(ctx, session, Switching::Idle);
    d.checkpoint()?;
    let o = releases(&["restage", prefix])?;
    let upload = o.stdout.trim().to_string();
    if o.status != ExitKind::Exited(0) || !upload_name_ok(&upload) {
        if !o.stderr.is_empty() {
            print_lines(&o.stderr, "", true);
        }
        d.ctx.audit(Outcome::RefusedNoSuchRelease);
        return Err(Fail::failed(format!(
            "cannot roll back to '{prefix}' (above); nothing changed. 'make releases' lists what is kept"
        )));
    }
    d.switching = Switching::Upload(upload.clone());
    d.switch_to_upload(&upload, "rolled back")
}

/// `rollback`: `server.prev` back, switched to, waited for.
pub fn rollback(ctx: &mut Ctx) -> Result<Exit> {
    let session = session::lock(ctx, Action::Rollback, None)?;
    let mut d = Deployment::new(ctx, session, Switching::Idle);
    d.rollback()
}

/// `start` or `stop`: the service and its socket together, under the deploy lock and audited
/// like any change to what serves; start waits for `/health`.
pub fn service(ctx: &mut Ctx, start: bool) -> Result<Exit> {
    let (verb, action) = if start {
        ("start", Action::Start)
    } else {
        ("stop", Action::Stop)
    };
    let session = session::lock(ctx, action, None)?;
    let mut d = Deployment::new(ctx, session, Switching::Idle);
    d.need_installed()?;
    d.describe_installed()?;
    d.ctx.release_to = d.ctx.release_from.clone();
    d.checkpoint()?;
    let socket = format!("{}.socket", paths::UNIT);
    let service = format!("{}.service", paths::UNIT);
    let (o, stopped) = sctl(&[verb, &socket, &service])?;
    if stopped {
        return Err(d.on_interrupt());
    }
    relay(&o);
    if o.status != ExitKind::Exited(0) {
        d.ctx.audit(Outcome::Failed);
        return Err(Fail::failed(if is_root() {
            format!("'systemctl {verb} {socket} {service}' failed (above)")
        } else {
            format!("'sudo systemctl {verb} {socket} {service}' failed (above); make install updates the sudoers drop-in")
        }));
    }
    if !start {
        d.ctx.audit(Outcome::Ok);
        say(&format!(
            "stopped {} and its socket: it stays down until make start HOST={} (or a deploy of other bytes)",
            paths::UNIT,
            d.ctx.host()
        ));
        return Ok(Exit::Ok);
    }
    match wait_healthy(d.ctx, None) {
        Waited::Done => {}
        Waited::Interrupted => return Err(d.on_interrupt()),
        Waited::Failed => {
            d.ctx.audit(Outcome::Failed);
            return Err(Fail::failed(format!(
                "started, but not healthy within {}s (above)",
                d.ctx.wait
            )));
        }
    }
    d.ctx.audit(Outcome::Ok);
    say(&format!(
        "started: {} is healthy, release {}",
        paths::UNIT,
        serving_release().unwrap_or_default()
    ));
    Ok(Exit::Ok)
}

/// One deployment under the lock: what it is doing, for an interrupt to undo.
struct Deployment<'a> {
    ctx: &'a mut Ctx,
    _session: Session,
    switching: Switching,
    /// What served before, as it described itself (once).
    from: Option<Facts>,
    /// The deployer's SHA-256 of the upload, which root's copy must match.
    expect: Option<Sha256>,
}

impl<'a> Deployment<'a> {
    fn new(ctx: &'a mut Ctx, session: Session, switching: Switching) -> Deployment<'a> {
        Deployment {
            ctx,
            _session: session,
            switching,
            from: None,
            expect: None,
        }
    }

    fn release_before(&self) -> String {
        self.ctx
            .release_from
            .clone()
            .unwrap_or_else(|| "none".into())
    }

    fn release_after(&self) -> String {
        self.ctx.release_to.clone().unwrap_or_else(|| "?".into())
    }

    /// Ends the command through the restoring path if an interrupt came.
    fn checkpoint(&mut self) -> Result<()> {
        if should_stop() {
            return Err(self.on_interrupt());
        }
        Ok(())
    }

    /// Removes the upload not staged (if any): nothing more is to undo for it.
    fn discard_upload(&mut self) {
        if let Switching::Upload(u) = &self.switching {
            let _ = releases(&["discard", u]);
        }
        self.switching = Switching::Idle;
    }

    /// Refuses (exit 5) to switch on a host where install never finished.
    fn need_installed(&mut self) -> Result<()> {
        if let Err(missing) = installed() {
            self.discard_upload();
            self.ctx.audit(Outcome::RefusedNotInstalled);
            warn(&format!(
                "tribist is not installed on {} ({missing}): a first install has not finished; nothing changed",
                crate::host::audit::hostname()
            ));
            return Err(Fail::quiet(Exit::NotInstalled));
        }
        Ok(())
    }

    /// What serves now, described once: `release_from`.
    fn describe_installed(&mut self) -> Result<()> {
        self.from = binary::describe(&installed_binary())?;
        self.ctx.release_from = self.from.as_ref().map(|f| f.release.clone());
        Ok(())
    }

    /// Everything of an upgrade after the lock: root's copy, what it is, the preflight, stage,
    /// switch, health, commit or revert.
    fn switch_to_upload(&mut self, upload: &str, done_word: &str) -> Result<Exit> {
        self.checkpoint()?;
        self.need_installed()?;
        // Root's copy first: everything below checks and runs it, and the start or reload
        // step installs it.
        let copies = if is_root() {
            let taken = Copies::host().map_err(Fail::failed).and_then(|c| {
                c.take_next(upload)
                    .map(|digest| (c, digest))
                    .map_err(|e| Fail::failed(e.to_string()))
            });
            match taken {
                Ok((c, digest)) if self.expect.is_some_and(|e| e != digest) => {
                    c.discard_next();
                    self.discard_upload();
                    self.ctx.audit(Outcome::RefusedChecksum);
                    return Err(Fail::failed(format!(
                        "refused: the upload in api/ is not what was sent (root's copy has SHA-256 {digest}, the deployer sent {}): it was changed on this host after it arrived; nothing changed, make upgrade again",
                        self.expect.map(|e| e.to_string()).unwrap_or_default()
                    )));
                }
                Ok(c) => Some(c),
                Err(e) => {
                    self.discard_upload();
                    self.ctx.audit(Outcome::Failed);
                    return Err(Fail::failed(format!(
                        "could not take root's copy of the upload: {}; nothing changed, make upgrade again",
                        e.message
                    )));
                }
            }
        } else {
            None
        };
        let target = match &copies {
            Some(_) => Copies::next_path(),
            None => upload.to_string(),
        };
        self.describe_installed()?;
        let old = self.release_before();
        let Some(mut new) = binary::describe(&target)? else {
            self.discard_upload();
            self.ctx.release_to = Some("invalid".into());
            self.ctx.audit(Outcome::RefusedDoesNotRun);
            return Err(Fail::failed(
                "the new binary does not run on this host, or its --version is not 'server VERSION (commit ID)'; nothing changed",
            ));
        };
        let id = new.release.clone();
        self.ctx.release_to = Some(id.clone());
        self.checkpoint()?;
        // A release is its bytes: the same bytes again change nothing; other bytes under an
        // id the host knows are refused, so releases/ never holds two binaries under one name.
        // Root decides on its copy, reading what is installed and kept through descriptors;
        // tribist's own deployment asks `releases identity` of its upload.
        let ident = match &copies {
            Some((c, digest)) => {
                let installed = c.running_digest().or_else(|| c.api_digest("server"));
                verified::identity(
                    *digest,
                    &id,
                    installed.map(|d| (d, self.ctx.release_from.as_deref())),
                    c.kept_digest(&id),
                )
                .to_string()
            }
            None => releases(&["identity", upload, &id])
                .ok()
                .filter(|o| o.status == ExitKind::Exited(0))
                .map(|o| o.stdout.trim().to_string())
                .unwrap_or_else(|| "new".into()),
        };
        if ident == "installed" {
            self.discard_upload();
            if serving_release().as_deref() == Some(id.as_str()) {
                self.ctx.audit(Outcome::Unchanged);
                say(&format!(
                    "release {id} is already installed and serving (the same bytes): nothing changed"
                ));
                return Ok(Exit::Ok);
            }
            self.ctx.audit(Outcome::RefusedInstalledNotServing);
            let host = self.ctx.host().to_string();
            return Err(Fail::failed(format!(
                "release {id} is already installed (the same bytes) but does not serve now; nothing changed. If it was stopped: make start HOST={host}; else make status HOST={host} says why"
            )));
        }
        if let Some(why) = ident.strip_prefix("conflict: ") {
            self.discard_upload();
            self.ctx.audit(Outcome::RefusedSameIdOtherBytes);
            return Err(Fail::failed(format!(
                "refused: {} (built elsewhere, from uncommitted changes, or tampered with), and two different binaries are never one release; nothing changed. To replace it with this binary anyway: make install HOST={} BIN=path",
                clean(why.as_bytes(), 200),
                self.ctx.host()
            )));
        }
        if let Some(why) = ident.strip_prefix("kept-other: ") {
            warn(&format!(
                "warning: {}: this binary may serve, but it is not kept under that id (the bytes kept first stay)",
                clean(why.as_bytes(), 200)
            ));
        }
        match preflight(self.ctx, &target, &id, paths::ENV_FILE)? {
            Preflight::Passed => {}
            Preflight::Interrupted => return Err(self.on_interrupt()),
            Preflight::Configuration => {
                self.discard_upload();
                self.ctx.audit(Outcome::RefusedPreflight);
                warn(&format!(
                    "refused: release {id} cannot work with the configuration in {} (above); nothing changed, release {old} still serves",
                    paths::ENV_FILE
                ));
                return Err(Fail::quiet(Exit::Configuration));
            }
            Preflight::Failed => {
                self.discard_upload();
                self.ctx.audit(Outcome::RefusedPreflight);
                return Err(Fail::failed(format!(
                    "refused: release {id} failed its preflight (above); nothing changed, release {old} still serves"
                )));
            }
        }
        self.checkpoint()?;
        self.switching = Switching::Staged;
        let staged = releases(&["stage", upload])?;
        relay(&staged);
        if staged.status != ExitKind::Exited(0) {
            let _ = releases(&["revert"]);
            let _ = releases(&["discard", upload]);
            self.switching = Switching::Idle;
            self.ctx.audit(Outcome::Failed);
            return Err(Fail::failed(format!(
                "could not make the upload server_new (above); nothing changed, release {old} still serves"
            )));
        }
        say(&format!("upgrading {old} -> {id}"));
        match switch_and_wait(self.ctx, Some(&id), &mut new) {
            Waited::Done => {
                self.switching = Switching::Idle;
                relay(&releases(&["commit"])?);
                self.ctx.audit(Outcome::Ok);
                keep_served(self.ctx, &id);
                say(&format!("{done_word}: release {id} is serving"));
                return Ok(Exit::Ok);
            }
            Waited::Interrupted => return Err(self.on_interrupt()),
            Waited::Failed => {}
        }
        warn(&format!("upgrade to {id} failed; rolling back to {old}"));
        match self.revert_upgrade() {
            Waited::Done => {
                self.switching = Switching::Idle;
                self.ctx.audit(Outcome::FailedRolledBack);
                Err(Fail::failed(format!(
                    "upgrade to {id} failed and was rolled back: release {old} is serving again"
                )))
            }
            Waited::Interrupted => Err(self.on_interrupt()),
            Waited::Failed => {
                self.switching = Switching::Idle;
                self.ctx.audit(Outcome::FailedRollbackFailed);
                Err(Fail::failed(format!(
                    "upgrade to {id} failed AND the rollback to {old} failed: {} is down; see 'journalctl -u {}'",
                    paths::UNIT,
                    paths::UNIT
                )))
            }
        }
    }

    /// Undoes a staged or promoted upgrade (everything back as it was) and switches back,
    /// unless the release from before still serves (a failed handover leaves it serving).
    fn revert_upgrade(&mut self) -> Waited {
        if self.switching != Switching::Reverted {
            match releases(&["revert"]) {
                Ok(o) => {
                    if !o.stdout.trim().is_empty() {
                        print_lines(&o.stdout, &format!("{}: ", super::PROG), false);
                    }
                    if !o.stderr.is_empty() {
                        print_lines(&o.stderr, "", true);
                    }
                    if o.status != ExitKind::Exited(0) {
                        return Waited::Failed;
                    }
                }
                Err(f) => {
                    warn(&f.message);
                    return Waited::Failed;
                }
            }
            self.switching = Switching::Reverted;
        }
        let from = self.ctx.release_from.clone();
        if let Some(from) = &from {
            if unit_property(paths::UNIT, "ActiveState") == "active"
                && serving_release().as_deref() == Some(from.as_str())
            {
                say(&format!(
                    "release {from} still serves: nothing to switch back"
                ));
                return Waited::Done;
            }
        }
        let mut target = self.from.clone().unwrap_or_else(|| Facts::named("server"));
        let waited = switch_and_wait(self.ctx, from.as_deref(), &mut target);
        self.from = Some(target);
        waited
    }

    /// A plain rollback: server.prev back.
    fn rollback(&mut self) -> Result<Exit> {
        self.need_installed()?;
        self.describe_installed()?;
        let from = self.release_before();
        let has_prev = Dir::open(paths::API_DIR)
            .ok()
            .is_some_and(|api| api.lstat_at("server.prev").is_ok());
        if !has_prev {
            self.ctx.audit(Outcome::RefusedNoPrevious);
            return Err(Fail::failed(format!(
                "nothing to roll back to yet: release {from} is the only one installed here (make releases lists the kept ones; make rollback TO=ID goes to one of them)"
            )));
        }
        let Some(mut prev) = binary::describe("server.prev")? else {
            self.ctx.audit(Outcome::RefusedNoPrevious);
            return Err(Fail::failed(
                "the previous binary (server.prev) does not run here ('--version' failed); nothing changed (make releases lists the kept ones; make rollback TO=ID goes to one of them)",
            ));
        };
        let to = prev.release.clone();
        self.ctx.release_to = Some(to.clone());
        self.checkpoint()?;
        match preflight(self.ctx, "server.prev", &to, paths::ENV_FILE)? {
            Preflight::Passed => {}
            Preflight::Interrupted => return Err(self.on_interrupt()),
            Preflight::Configuration => {
                self.ctx.audit(Outcome::RefusedPreflight);
                warn(&format!(
                    "refused: release {to} (server.prev) cannot work with the configuration in {} (above); nothing changed",
                    paths::ENV_FILE
                ));
                return Err(Fail::quiet(Exit::Configuration));
            }
            Preflight::Failed => {
                self.ctx.audit(Outcome::RefusedPreflight);
                return Err(Fail::failed(format!(
                    "refused: release {to} (server.prev) failed its preflight (above); nothing changed"
                )));
            }
        }
        self.checkpoint()?;
        say(&format!("rolling back to {to}"));
        let swapped = releases(&["swap"])?;
        relay(&swapped);
        if swapped.status != ExitKind::Exited(0) {
            self.ctx.audit(Outcome::Failed);
            return Err(Fail::failed(
                "could not swap server and server.prev; nothing changed",
            ));
        }
        self.switching = Switching::RollbackSwapped;
        match switch_and_wait(self.ctx, Some(&to), &mut prev) {
            Waited::Done => {}
            Waited::Interrupted => return Err(self.on_interrupt()),
            Waited::Failed => {
                if unit_property(paths::UNIT, "ActiveState") == "active"
                    && serving_release().as_deref() == Some(from.as_str())
                {
                    // A failed handover: the release from before still serves; so do its
                    // files again.
                    let _ = releases(&["swap"]);
                    self.switching = Switching::Idle;
                    self.ctx.audit(Outcome::FailedNothingChanged);
                    return Err(Fail::failed(format!(
                        "rollback to {to} failed (see above); release {from} still serves, nothing changed"
                    )));
                }
                self.switching = Switching::Idle;
                self.ctx.audit(Outcome::Failed);
                return Err(Fail::failed(format!(
                    "rollback to {to} failed: see the log lines above"
                )));
            }
        }
        self.switching = Switching::Idle;
        self.ctx.audit(Outcome::Ok);
        keep_served(self.ctx, &to);
        say(&format!("rolled back: release {to} is serving"));
        say(&format!(
            "(make rollback again swaps back to {from}, the release just left; make rollback TO=ID goes to any kept release: make releases lists them)"
        ));
        Ok(Exit::Ok)
    }

    /// Ctrl-C, SIGTERM (make unlock) or a lost connection: puts back what this deployment
    /// promised (deploy.sh's `on_interrupt`), audits the truth, and returns the exit 130 to
    /// end with. Its own waits are not cut short by the interrupt.
    fn on_interrupt(&mut self) -> Fail {
        RESTORING.store(true, Ordering::SeqCst);
        warn("interrupted");
        match restore_for(&self.switching) {
            Restore::Nothing => self.ctx.audit(Outcome::Interrupted),
            Restore::Discard(upload) => {
                let _ = releases(&["discard", &upload]);
                self.ctx.audit(Outcome::Interrupted);
            }
            Restore::Revert { .. } => {
                let (from, to) = (self.release_before(), self.release_after());
                warn(&format!(
                    "the upgrade to {to} was interrupted; restoring {from}"
                ));
                // A handover under way goes on in systemd: let it end (within its bound)
                // before any file moves, so that the renames never race the unit's own.
                wait_handover_end();
                if self.revert_upgrade() == Waited::Done {
                    self.ctx.audit(Outcome::InterruptedRolledBack);
                    warn(&format!("rolled back: release {from} is serving again"));
                } else {
                    self.ctx.audit(Outcome::InterruptedRollbackFailed);
                }
            }
            Restore::Rollback => self.interrupted_rollback(),
        }
        self.switching = Switching::Idle;
        Fail::quiet(Exit::Interrupted)
    }

    /// A plain rollback interrupted after its swap: whatever serves now decides.
    fn interrupted_rollback(&mut self) {
        wait_handover_end();
        let (from, to) = (self.release_before(), self.release_after());
        let serving = serving_release();
        let decision = rollback_restore(serving.as_deref(), &from, &to);
        if decision == RollbackRestore::Done {
            self.ctx.audit(Outcome::InterruptedDone);
            warn(&format!(
                "the rollback had finished: release {to} is serving"
            ));
            return;
        }
        if let Ok(o) = releases(&["swap"]) {
            relay(&o);
        }
        if decision == RollbackRestore::SwapBack {
            self.ctx.audit(Outcome::InterruptedNothingChanged);
            warn(&format!(
                "nothing changed: release {from} still serves, and server.prev is {to} again"
            ));
            return;
        }
        let want = self.ctx.release_from.clone();
        if restart_and_wait(self.ctx, want.as_deref()) == Waited::Done {
            self.ctx.audit(Outcome::InterruptedRolledBack);
            warn(&format!("put back: release {from} is serving again"));
        } else {
            self.ctx.audit(Outcome::InterruptedRollbackFailed);
            warn(&format!(
                "release {from} did not come back; see: make logs HOST={}",
                self.ctx.host()
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_an_interrupt_undoes_in_each_state() {
        assert_eq!(restore_for(&Switching::Idle), Restore::Nothing);
        assert_eq!(
            restore_for(&Switching::Upload(".upload.abc123".into())),
            Restore::Discard(".upload.abc123".into())
        );
        assert_eq!(
            restore_for(&Switching::Staged),
            Restore::Revert { files_done: false }
        );
        assert_eq!(
            restore_for(&Switching::Reverted),
            Restore::Revert { files_done: true }
        );
        assert_eq!(restore_for(&Switching::RollbackSwapped), Restore::Rollback);
    }

    #[test]
    fn an_interrupted_rollback_is_decided_by_what_serves() {
        assert_eq!(rollback_restore(Some("a"), "b", "a"), RollbackRestore::Done);
        assert_eq!(
            rollback_restore(Some("b"), "b", "a"),
            RollbackRestore::SwapBack
        );
        assert_eq!(
            rollback_restore(None, "b", "a"),
            RollbackRestore::SwapBackAndRestart
        );
        assert_eq!(
            rollback_restore(Some("c"), "b", "a"),
            RollbackRestore::SwapBackAndRestart
        );
    }

    #[test]
    fn the_preflight_has_time_to_say_why() {
        // Its description (10 s for a binary that hangs on --describe), its SECONDS, its stop.
        assert!(preflight_bound(3) >= Duration::from_secs(3 + 10 + 5));
        assert!(preflight_bound(0) < Duration::from_secs(60));
    }

    #[test]
    fn upload_names_and_bodies() {
        assert!(upload_name_ok(".upload.abc123"));
        assert!(upload_name_ok(".upload.ABCdef0123456789"));
        assert!(!upload_name_ok(".upload.abc12"));
        assert!(!upload_name_ok(".upload.abc12345678901234"));
        assert!(!upload_name_ok(".upload.abc-12"));
        assert!(!upload_name_ok("onlyone"));
        assert_eq!(body_line("{\"a\":1}\n  \n"), "{\"a\":1}");
        assert_eq!(body_line(&"x".repeat(3000)).len(), 2000);
    }
}
