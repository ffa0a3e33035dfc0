//! The unit's own steps, run by systemd as root outside the sandbox: `on-start`
//! (`ExecStartPre=+`) and `on-reload` (`ExecReload=+`). Every start and every handover,
//! whoever asked for it — tribist's own `sudo systemctl restart` included — promotes
//! `server_new` (as tribist: api/ is tribist's), takes root's copy of what is to run, records
//! it with its SHA-256 in root's audit file and only then makes it what runs
//! ([`verified::Copies::commit`], fail-closed). tribist can flood the journal, never this.
//!
//! `on-reload` then has systemd send SIGUSR2 to the serving process (which takes it from
//! root only) and waits until its successor is systemd's main process — a process of the
//! service running as tribistd — or the server reports the attempt failed (it then serves
//! on): so `systemctl reload tribist` returns once the new binary serves, and fails when it
//! does not. What it reads and decides is [`handover`]'s.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use super::handover::{self, ReloadStep};
use super::verified::{Committed, Copies, Prepared};
use super::{need_root, paths, releases, say, unit_property, warn, Ctx, Exit, Fail, Result};
use crate::host::audit::{self, Action, AuditLog, Outcome, Record};
use crate::host::child::{ExitKind, Spawn};
use crate::host::fsx;
use crate::host::text::clean;

/// The previous copy, kept while a handover is asked for: put back if the attempt fails, so
/// that what `ExecStart=` names is what serves.
const SERVED: &str = ".served";

/// `releases promote` as tribist: whether it promoted `server_new`.
fn promote() -> Result<bool> {
    let o = releases(&["promote"])?;
    if !o.stderr.is_empty() {
        eprint!("{}", o.stderr);
    }
    if o.status != ExitKind::Exited(0) {
        let out = o.stdout.trim();
        return Err(Fail::failed(format!(
            "could not promote server_new: {}",
            if out.is_empty() {
                "see the lines above"
            } else {
                out
            }
        )));
    }
    let promoted = o.stdout.contains("promoted server_new");
    if promoted {
        say(o.stdout.trim());
    }
    Ok(promoted)
}

/// A unit step's record: `promoted=… source=… server_sha256=…` after `fields`.
fn step_record(
    action: Action,
    fields: &[(&'static str, String)],
    p: &Prepared,
    promoted: bool,
) -> Record {
    let mut r = Record::unit_step(SystemTime::now(), &audit::hostname(), action);
    for (k, v) in fields {
        r = r.field(k, v.clone());
    }
    r.field("promoted", if promoted { "yes" } else { "no" })
        .field("source", p.source.as_str())
        .field("server_sha256", p.digest.to_string())
}

/// Appends `record` to root's audit file (and the journal).
fn append(record: &Record) -> std::result::Result<(), String> {
    AuditLog::open(Path::new(paths::AUDIT_LOG))
        .and_then(|log| log.record(record))
        .map_err(|e| e.to_string())
}

/// One line of the reload step's outcome; a failure to write it is said, not fatal (the
/// handover itself was recorded before it was asked for).
fn handover_audit(r: Record) {
    if let Err(e) = append(&r) {
        warn(&e);
    }
}

/// `on-start`: the unit's pre-start step.
pub fn on_start(ctx: &mut Ctx) -> Result<Exit> {
    need_root("on-start")?;
    ctx.action = Some(Action::ServiceStart);
    let promoted = promote()?;
    let copies = Copies::host().map_err(Fail::failed)?;
    let prepared = copies.prepare(promoted).map_err(|e| {
        Fail::failed(format!(
            "no binary to start: {}/server could not be copied ({e}); make install HOST=… puts one there",
            paths::API_DIR
        ))
    })?;
    let record = step_record(Action::ServiceStart, &[], &prepared, promoted);
    match copies.commit(|| append(&record)) {
        Ok(Committed::New) => Ok(Exit::Ok),
        Ok(Committed::Previous { why }) => {
            warn(&format!(
                "{why}; so the binary that served before ({}) starts, not the new one; once fixed: systemctl restart {}",
                paths::VERIFIED,
                paths::UNIT
            ));
            Ok(Exit::Ok)
        }
        Err(e) => Err(Fail::failed(format!(
            "{e}; no binary was ever verified here, so nothing starts; once fixed: systemctl restart {}",
            paths::UNIT
        ))),
    }
}

/// `systemctl show -p MainPID -p StatusText tribist`: both, as shown.
fn main_and_status() -> (String, String) {
    let o = Spawn::new("/usr/bin/systemctl")
        .args(["show", "-p", "MainPID", "-p", "StatusText", paths::UNIT])
        .run(Duration::from_secs(5), 64 * 1024);
    let text = o.map(|o| o.stdout).unwrap_or_default();
    let prop = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or("")
            .to_string()
    };
    (prop("MainPID"), prop("StatusText"))
}

/// `/proc/PID/cgroup` (bounded) and the owner of `/proc/PID`, if it is still there.
fn process_facts(pid: u32) -> (String, Option<u32>) {
    let proc_dir = format!("/proc/{pid}");
    let owner = fsx::lstat(Path::new(&proc_dir)).ok().map(|st| st.uid);
    let cgroup = fsx::Dir::open(&proc_dir)
        .ok()
        .and_then(|d| {
            let f = fsx::open_regular_at(
                &d,
                "cgroup",
                fsx::Limits {
                    owner: None,
                    max_size: u64::MAX,
                },
            )
            .ok()?;
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::Read::take(&f.file, 4096), &mut buf).ok()?;
            Some(String::from_utf8_lossy(&buf).into_owned())
        })
        .unwrap_or_default();
    (cgroup, owner)
}

/// The name of user `uid`, or its number.
fn user_name(uid: Option<u32>) -> String {
    let Some(uid) = uid else {
        return "gone".into();
    };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: pwd and result are valid out-parameters; buf is writable for its length.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        if libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) == 0
            && !result.is_null()
        {
            let name = std::ffi::CStr::from_ptr(pwd.pw_name).to_bytes();
            return clean(name, 32);
        }
    }
    uid.to_string()
}

/// `on-reload`: the unit's reload step.
pub fn on_reload(ctx: &mut Ctx) -> Result<Exit> {
    need_root("on-reload")?;
    ctx.action = Some(Action::ServiceHandover);
    let unit = paths::UNIT;
    let main = std::env::var("MAINPID")
        .ok()
        .and_then(|p| handover::pid_of(&p))
        .ok_or_else(|| {
            Fail::failed(format!(
                "no MAINPID: this runs as {unit}'s reload step (systemctl reload {unit})"
            ))
        })?;
    let before = unit_property(unit, "StatusText");
    if !handover::serving_hands_over(&before) {
        let state = handover::tokens(&before)
            .state
            .map(|s| format!("handover={s}; "))
            .unwrap_or_default();
        return Err(Fail::failed(format!(
            "the serving process (pid {main}) cannot hand over ({state}it predates handovers, or is not serving yet): use 'systemctl restart {unit}'"
        )));
    }
    let promoted = promote()?;
    let copies = Copies::host().map_err(Fail::failed)?;
    let prepared = copies.prepare(promoted).map_err(|e| {
        Fail::failed(format!(
            "no binary to hand over to: {}/server could not be copied ({e}); make install HOST=… puts one there",
            paths::API_DIR
        ))
    })?;
    // What serves now, kept aside until the attempt's outcome is known.
    let _ = fsx::unlinkat(&copies.verified, SERVED);
    let kept = fsx::linkat(
        &copies.verified,
        super::verified::SERVER,
        &copies.verified,
        SERVED,
    )
    .is_ok();
    let from = main.to_string();
    let record = step_record(
        Action::ServiceHandover,
        &[("from_pid", from.clone())],
        &prepared,
        promoted,
    );
    // Fail-closed: no record, no handover (the serving process goes on serving).
    match copies.commit(|| append(&record)) {
        Ok(Committed::New) => {}
        Ok(Committed::Previous { why }) | Err(why) => {
            let _ = fsx::unlinkat(&copies.verified, SERVED);
            return Err(Fail::failed(format!(
                "{why}; so no handover: pid {main} goes on serving. Once fixed: systemctl reload {unit}"
            )));
        }
    }
    let signalled = Spawn::new("/usr/bin/systemctl")
        .args(["kill", "--kill-who=main", "--signal=SIGUSR2", unit])
        .run(Duration::from_secs(10), 4096)
        .is_ok_and(|o| o.status == ExitKind::Exited(0));
    if !signalled {
        put_back(&copies, kept);
        return Err(Fail::failed(format!("could not signal pid {main}")));
    }
    let unit_record = || {
        Record::unit_step(
            SystemTime::now(),
            &audit::hostname(),
            Action::ServiceHandover,
        )
    };
    let start = Instant::now();
    loop {
        let (pid_now, status_now) = main_and_status();
        match handover::reload_step(main, &before, &pid_now, &status_now, start.elapsed()) {
            ReloadStep::Wait => std::thread::sleep(Duration::from_millis(50)),
            ReloadStep::Successor(pid) => {
                let (cgroup, owner) = process_facts(pid);
                let service_uid = crate::host::child::user_ids(paths::SERVICE_USER).map(|(u, _)| u);
                let ok =
                    service_uid.is_some_and(|s| handover::successor_ok(&cgroup, owner, s, unit));
                if !ok {
                    let name = user_name(owner);
                    handover_audit(
                        unit_record()
                            .field("from_pid", from.clone())
                            .field("to_pid", pid.to_string())
                            .result(Outcome::Suspicious)
                            .after("owner", name.clone()),
                    );
                    let _ = fsx::unlinkat(&copies.verified, SERVED);
                    let cg = if cgroup.is_empty() {
                        "gone".into()
                    } else {
                        clean(cgroup.as_bytes(), 100)
                    };
                    return Err(Fail::failed(format!(
                        "systemd's main process is now pid {pid}, which is not a process of {unit} running as {} (owner {name}, cgroup {cg}); check 'systemctl status {unit}'",
                        paths::SERVICE_USER
                    )));
                }
                handover_audit(
                    unit_record()
                        .field("from_pid", from.clone())
                        .field("to_pid", pid.to_string())
                        .result(Outcome::Ok),
                );
                let _ = fsx::unlinkat(&copies.verified, SERVED);
                say(&format!("handed over: pid {pid} serves; pid {main} drains"));
                return Ok(Exit::Ok);
            }
            ReloadStep::Failed(reason) => {
                // The old process serves on: so is its copy what ExecStart= names again.
                let mut r = unit_record()
                    .field("from_pid", from.clone())
                    .result(Outcome::Failed);
                if put_back(&copies, kept) {
                    if let Some(d) = copies.running_digest() {
                        r = r.after("server_sha256", d.to_string());
                    }
                }
                handover_audit(r);
                return Err(Fail::failed(format!(
                    "{}; pid {main} goes on serving",
                    clean(reason.as_bytes(), 400)
                )));
            }
            ReloadStep::Ended => {
                let _ = fsx::unlinkat(&copies.verified, SERVED);
                handover_audit(
                    unit_record()
                        .field("from_pid", from.clone())
                        .result(Outcome::Failed),
                );
                return Err(Fail::failed(format!(
                    "pid {main} ended during the handover; systemd restarts {unit}"
                )));
            }
            ReloadStep::TimedOut => {
                let _ = fsx::unlinkat(&copies.verified, SERVED);
                handover_audit(
                    unit_record()
                        .field("from_pid", from.clone())
                        .result(Outcome::Timeout),
                );
                return Err(Fail::failed(format!(
                    "no handover within {} s; pid {main} goes on serving",
                    handover::RELOAD_LIMIT.as_secs()
                )));
            }
        }
    }
}

/// Puts the copy that served before back as what `ExecStart=` names; whether it did.
fn put_back(copies: &Copies, kept: bool) -> bool {
    kept && fsx::renameat(
        &copies.verified,
        SERVED,
        &copies.verified,
        super::verified::SERVER,
    )
    .is_ok()
}
