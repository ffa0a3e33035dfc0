//! `uninstall [--purge]` (root): stops and removes the service (units, sudoers drop-in),
//! under the deploy lock when there is one, audited. Without `--purge` the configuration,
//! the address, /home/tribist and root's audit file stay; with it they go too, and so do
//! users tribist (its logins ended and every process of it killed first, so nothing of its
//! races the removal of its files) and tribistd.
//!
//! The HTTPS front goes first (`front_host::remove`, its own `action=front op=remove`
//! record), so clients stop reaching a service about to go; `--purge` also takes its
//! certificates. An admin's other sites in Caddy keep serving. A front that cannot be
//! removed does not stop the uninstall: it is said, and the exit is 1 with the command.

use std::time::Duration;

use super::listen::{dropin_now, wanted_listen};
use super::steps::{lock, release_of, run_root, systemctl_root};
use super::{interrupt, need_root, paths, say, warn, Ctx, Exit, Fail, Result};
use crate::host::audit::{Action, Outcome};
use crate::host::child::ExitKind;
use crate::host::front_host;
use crate::host::front_plan::RemoveArgs;
use crate::host::fsx::{self, Dir};

use super::hostlayout::user_exists;

fn remove(path: &str) {
    let p = std::path::Path::new(path);
    if let (Some(dir), Some(name)) = (p.parent(), p.file_name().and_then(|n| n.to_str())) {
        if let Ok(d) = Dir::open(dir) {
            let _ = fsx::unlinkat(&d, name);
        }
    }
}

/// Ends user tribist's logins and processes: the account expired, its keys gone, then every
/// process of it killed (up to 5 s). Err when some survive.
fn end_tribist() -> Result<()> {
    let t = Duration::from_secs(30);
    let _ = run_root(
        "/usr/sbin/usermod",
        &["--expiredate", "1", paths::USER_NAME],
        t,
    );
    remove(&format!("{}/authorized_keys", paths::SSH_DIR));
    for _ in 0..50 {
        let killed = run_root("/usr/bin/pkill", &["-KILL", "-u", paths::USER_NAME], t)
            .is_ok_and(|o| o.status == ExitKind::Exited(0));
        if !killed {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let left = run_root("/usr/bin/pgrep", &["-u", paths::USER_NAME], t)
        .is_ok_and(|o| o.status == ExitKind::Exited(0));
    if left {
        return Err(Fail::failed(format!(
            "processes of user {} survive being killed; nothing of theirs was removed; try again: make uninstall PURGE=1",
            paths::USER_NAME
        )));
    }
    Ok(())
}

/// `uninstall [--purge]`.
pub fn uninstall(ctx: &mut Ctx, purge: bool) -> Result<Exit> {
    need_root("uninstall")?;
    let _lock = if fsx::lstat(std::path::Path::new(paths::LOCK_FILE)).is_ok() {
        Some(lock(ctx, Action::Uninstall)?)
    } else {
        None
    };
    let interrupted = |ctx: &Ctx| {
        warn("interrupted");
        if ctx.action.is_some() {
            ctx.audit(Outcome::Interrupted);
        }
        Fail::quiet(Exit::Interrupted)
    };
    if interrupt::interrupted() {
        return Err(interrupted(ctx));
    }
    // The front first: with --purge, also its certificates (and the kept copies).
    let front_left = if front_host::configured().is_some() || (purge && front_host::any_files()) {
        let mut fctx = ctx.clone();
        fctx.release_from = None;
        fctx.release_to = None;
        fctx.extra.clear();
        let by = Some(ctx.by.clone()).filter(|b| !b.is_empty());
        match front_host::remove(&mut fctx, &RemoveArgs { purge, by }) {
            Ok(_) => None,
            Err(f) if f.exit == Exit::Interrupted => {
                if !f.message.is_empty() {
                    warn(&f.message);
                }
                return Err(interrupted(ctx));
            }
            Err(f) => Some(f.message),
        }
    } else {
        None
    };
    if user_exists(paths::USER_NAME) && Dir::open(paths::API_DIR).is_ok() {
        ctx.release_from = release_of("server");
    }
    let t = Duration::from_secs(90);
    let socket = format!("{}.socket", paths::UNIT);
    let service = format!("{}.service", paths::UNIT);
    systemctl_root(
        &["disable", "--now", "--quiet", &socket, &service],
        t,
        false,
    );
    for f in [paths::UNIT_FILE, paths::SOCKET_FILE, paths::SUDOERS_FILE] {
        remove(f);
    }
    if ctx.action.is_some() {
        ctx.audit(Outcome::Ok);
    }
    systemctl_root(&["daemon-reload"], t, false);
    let _ = run_root("/usr/bin/systemctl", &["reset-failed", paths::UNIT], t);
    if !purge {
        say(&format!(
            "removed the service; kept {}, the address ({}), {} and {} (uninstall --purge removes them)",
            paths::ENV_FILE,
            wanted_listen(None, dropin_now().as_deref()),
            paths::HOME_DIR,
            paths::AUDIT_LOG
        ));
        return front_outcome(front_left, purge, ctx.host());
    }
    if user_exists(paths::USER_NAME) {
        end_tribist()?;
        let _ = run_root("/usr/sbin/userdel", &["-r", paths::USER_NAME], t);
        if user_exists(paths::USER_NAME) {
            return Err(Fail::failed(format!(
                "userdel {0} failed; remove the user by hand (userdel -r {0})",
                paths::USER_NAME
            )));
        }
    }
    let rm = run_root(
        "/bin/rm",
        &[
            "-rf",
            "--one-file-system",
            paths::HOME_DIR,
            paths::CONF_DIR,
            paths::STATE_DIR,
        ],
        Duration::from_secs(300),
    )?;
    if rm.status != ExitKind::Exited(0) {
        warn(&format!(
            "could not remove everything: {}",
            crate::host::text::clean(rm.stderr.as_bytes(), 300)
        ));
    }
    // The service's user owns nothing left (its runtime directory went with the service).
    if user_exists(paths::SERVICE_USER) {
        let gone = run_root("/usr/sbin/userdel", &[paths::SERVICE_USER], t)
            .is_ok_and(|o| o.status == ExitKind::Exited(0));
        if !gone {
            warn(&format!(
                "userdel {0} failed; remove the user by hand (userdel {0})",
                paths::SERVICE_USER
            ));
        }
    }
    // The address (install LISTEN=) is configuration too: a later install starts from the
    // default.
    for dropin in [paths::SOCKET_DROPIN, paths::SERVICE_DROPIN] {
        remove(dropin);
        let p = std::path::Path::new(dropin)
            .parent()
            .expect("a drop-in has a directory");
        let _ = std::fs::remove_dir(p);
    }
    systemctl_root(&["daemon-reload"], t, false);
    say(&format!(
        "removed the service, its configuration and address, {}, users {} and {} and {}",
        paths::STATE_DIR,
        paths::USER_NAME,
        paths::SERVICE_USER,
        paths::HOME_DIR
    ));
    front_outcome(front_left, purge, ctx.host())
}

/// The uninstall's end: done, or the front's failure said with the command to run again.
fn front_outcome(front_left: Option<String>, purge: bool, host: &str) -> Result<Exit> {
    match front_left {
        None => Ok(Exit::Ok),
        Some(why) => Err(Fail::failed(format!(
            "the service is removed, but the front's site could not be: {why}; once that is fixed: make uninstall HOST={host}{}",
            if purge { " PURGE=1" } else { "" }
        ))),
    }
}
