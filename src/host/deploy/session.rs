//! A deployment's hold on the host: the deploy lock taken for one action, its holder note,
//! and what is released with it (deploy.sh's `lock` and `unlock_on_exit`).
//!
//! Why a value: the lock, the note root writes and root's unused copy of an upload
//! (`bin/next`) all go when the [`Session`] is dropped, on every path out of a command —
//! success, failure, refusal or interrupt — instead of an exit trap that must remember each.

use std::path::Path;
use std::time::SystemTime;

use super::verified::Copies;
use super::{actor, is_root, paths, releases, warn, Ctx, Exit, Fail, Result};
use crate::host::audit::{self, Action};
use crate::host::fsx::Dir;
use crate::host::lock::{self, DeployLock, LockError};
use crate::host::text::clean;

/// Root refuses to change anything with less room than this for its audit record (KiB).
const MIN_FREE_KIB: u64 = 1024;

/// The lock, held until dropped.
pub struct Session {
    _lock: DeployLock,
    root: bool,
}

impl Drop for Session {
    fn drop(&mut self) {
        // A copy no start step took is not to be taken by a later one.
        if self.root {
            if let Ok(dir) = Copies::root_dir() {
                let _ = crate::host::fsx::unlinkat(&dir, super::verified::NEXT);
            }
        }
    }
}

/// Who holds the lock, as the note says it: `ACTION by BY as USER@FROM (pid N) since TIME`.
pub fn holder_text(ctx: &Ctx, action: Action) -> String {
    format!(
        "{action} by {} as {}@{} (pid {}) since {}",
        clean(ctx.by.as_bytes(), 100),
        actor(),
        audit::from_addr(std::env::var("SSH_CLIENT").ok().as_deref()),
        std::process::id(),
        audit::utc_seconds(SystemTime::now())
    )
}

/// Free KiB for an unprivileged writer on the file system of `path`.
fn free_kib(path: &str) -> Option<u64> {
    let c = std::ffi::CString::new(path).ok()?;
    // SAFETY: c is NUL-terminated; st is a valid out-buffer.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return None;
        }
        #[allow(clippy::useless_conversion)]
        Some(u64::from(st.f_bavail).saturating_mul(u64::from(st.f_frsize)) / 1024)
    }
}

/// Who holds the lock, for a refusal: root's note, else tribist's (labelled as tribist's).
fn holder_note(root_note: Option<String>) -> String {
    if let Some(n) = root_note {
        return n;
    }
    let tribist = crate::host::child::user_ids(paths::USER_NAME).map(|(uid, _)| uid);
    let note = tribist.and_then(|uid| {
        let api = Dir::open(paths::API_DIR).ok()?;
        lock::read_note(&api, paths::TRIBIST_NOTE, uid)
    });
    match note {
        Some(n) => format!("{n} (as user tribist wrote it)"),
        None => "unknown holder".into(),
    }
}

/// Takes the host's deploy lock for `action`, or refuses: exit 3 naming the holder, exit 1
/// when root has no room for its record. `upload`, if given, is removed on a refusal.
pub fn lock(ctx: &mut Ctx, action: Action, upload: Option<&str>) -> Result<Session> {
    ctx.action = Some(action);
    let root = is_root();
    let discard = || {
        if let Some(u) = upload {
            let _ = releases(&["discard", u]);
        }
    };
    let note = holder_text(ctx, action);
    let taken = if root {
        DeployLock::acquire(Path::new(paths::LOCK_FILE), &note)
    } else {
        match Dir::open(paths::API_DIR) {
            Ok(api) => DeployLock::acquire_noting(
                Path::new(paths::LOCK_FILE),
                api,
                paths::TRIBIST_NOTE,
                &note,
            ),
            Err(e) => Err(LockError::Fs(e)),
        }
    };
    let held = match taken {
        Ok(l) => l,
        Err(LockError::Held { note }) => {
            discard();
            warn(&format!(
                "refused: another deployment holds the lock on {}: {}",
                audit::hostname(),
                holder_note(note)
            ));
            warn(
                "wait for it to finish, or if it is stuck break the lock on purpose (make unlock)",
            );
            return Err(Fail::quiet(Exit::Locked));
        }
        Err(LockError::Missing { path }) => {
            return Err(Fail::failed(format!(
                "{path} is missing: is tribist installed? (make install)"
            )))
        }
        Err(e) => return Err(Fail::failed(format!("cannot take the deploy lock: {e}"))),
    };
    if root {
        // Fail-closed: root's record of what changes needs room; without it nothing changes.
        let avail = free_kib(paths::STATE_DIR);
        if avail.is_some_and(|k| k < MIN_FREE_KIB) || held.note_error().is_some() {
            discard();
            return Err(Fail::failed(format!(
                "refused: root cannot write its audit record in {} ({} KiB free; disk full?): free space there, then run the same command again; nothing changed",
                paths::STATE_DIR,
                avail.map_or("?".to_string(), |k| k.to_string())
            )));
        }
    }
    Ok(Session { _lock: held, root })
}
