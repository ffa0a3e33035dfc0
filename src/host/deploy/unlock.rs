//! `unlock`: breaking the deploy lock on purpose (`make unlock`), and [`holder_note`], who
//! holds it as its notes say (for this and for a refused deployment's message).
//!
//! Why apart: the decisions — which processes hold the lock (the kernel's word, never a
//! note's), SIGTERM, the grace (40 s for a deployment, which rolls back on it, 5 s for
//! anything else), SIGKILL said as it happens, giving up at 45 s — are `host::lock`'s
//! [`Unlocker`](crate::host::lock::Unlocker), tested without processes; this runs them
//! against the host, stops waiting at an interrupt, and reports only what was done. Notes
//! are read through descriptors (tribist's is in its own `api/`, so never through a link, only
//! if it is tribist's file, bounded, one printable line).

use std::path::Path;

use super::{interrupt, paths, say, warn, Ctx, Exit, Fail, Result};
use crate::host::audit::{Action, Outcome};
use crate::host::child::user_ids;
use crate::host::fsx::Dir;
use crate::host::lock::{self, Timing, UnlockError, UnlockReport};

/// Who holds the lock, as its notes say: root's note (beside the lock, root's), else
/// tribist's in its `api/` (said to be tribist's words), else `unknown holder`.
pub fn holder_note() -> String {
    holder_note_in(
        Path::new(paths::STATE_DIR),
        Path::new(paths::API_DIR),
        user_ids(paths::USER_NAME).map(|(uid, _)| uid),
    )
}

/// [`holder_note`] with root's note in `state_dir` (owned by that directory's owner) and
/// tribist's in `api_dir` (owned by `tribist`, when there is such a user).
pub fn holder_note_in(state_dir: &Path, api_dir: &Path, tribist: Option<u32>) -> String {
    let root = Dir::open(state_dir).ok().and_then(|d| {
        let owner = d.fstat().ok()?.uid;
        lock::read_note(&d, lock::HOLDER, owner)
    });
    if let Some(n) = root {
        return n;
    }
    let tribist = tribist.and_then(|uid| {
        let d = Dir::open(api_dir).ok()?;
        lock::read_note(&d, paths::TRIBIST_NOTE, uid)
    });
    match tribist {
        Some(n) => format!("{n} (as user tribist wrote it)"),
        None => "unknown holder".into(),
    }
}

/// `unlock`: breaks the lock at `path` with `timing` (see the module's comment); what was
/// done, already said.
pub fn unlock_at(path: &Path, timing: Timing, note: &str) -> Result<UnlockReport> {
    match lock::unlock_until(
        path,
        timing,
        note,
        &mut |s| warn(s),
        &interrupt::interrupted,
    ) {
        Ok(report) => {
            say(&report.to_string());
            Ok(report)
        }
        Err(e @ UnlockError::Stopped { .. }) => Err(Fail::new(Exit::Interrupted, e.to_string())),
        Err(e) => Err(Fail::failed(e.to_string())),
    }
}

/// The audit's words for an unlock: its outcome, and for a lock broken, the holder its
/// notes named and the processes signalled (`killed=` when SIGKILL was needed: what they
/// had started was not rolled back by them).
pub fn audited(
    done: &std::result::Result<UnlockReport, Fail>,
    note: &str,
) -> (Outcome, Vec<(&'static str, String)>) {
    let pids = |p: &[i32]| {
        p.iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    match done {
        Ok(UnlockReport::NoLock | UnlockReport::Free) => (Outcome::Unchanged, Vec::new()),
        Ok(UnlockReport::Released { terminated, killed }) => {
            let mut f = vec![
                ("holder", note.to_string()),
                ("terminated", pids(terminated)),
            ];
            if !killed.is_empty() {
                f.push(("killed", pids(killed)));
            }
            (Outcome::Ok, f)
        }
        Err(e) if e.exit == Exit::Interrupted => {
            (Outcome::Interrupted, vec![("holder", note.to_string())])
        }
        Err(_) => (Outcome::Failed, vec![("holder", note.to_string())]),
    }
}

/// `make unlock`: breaks the lock, then records what it did (`action=unlock`): breaking a
/// lock stops someone's deployment, so it is in the audit like the deployments are.
pub fn cmd_unlock(ctx: &mut Ctx) -> Result<Exit> {
    let note = holder_note();
    let done = unlock_at(Path::new(paths::LOCK_FILE), Timing::DEFAULT, &note);
    let (outcome, fields) = audited(&done, &note);
    ctx.action = Some(Action::Unlock);
    ctx.extra.extend(fields);
    ctx.audit(outcome);
    done.map(|_| Exit::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::testutil::TempDir;

    #[test]
    fn no_lock_and_a_free_lock_are_said() {
        let t = TempDir::new("unlock-cmd");
        let unlock = |p: &Path| unlock_at(p, Timing::DEFAULT, "unknown holder");
        assert_eq!(unlock(&t.join("lock")), Ok(UnlockReport::NoLock));
        std::fs::write(t.join("lock"), b"").unwrap();
        assert_eq!(unlock(&t.join("lock")), Ok(UnlockReport::Free));
        // A link where the lock is: refused, naming the fix.
        std::fs::remove_file(t.join("lock")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", t.join("lock")).unwrap();
        let e = unlock(&t.join("lock")).unwrap_err();
        assert_eq!(e.exit, Exit::Failed);
        assert!(
            e.message.ends_with("make install puts the layout right"),
            "{e}"
        );
    }

    #[test]
    fn the_audit_says_what_an_unlock_did() {
        let note = "upgrade by bob as root@x (pid 7)";
        assert_eq!(
            audited(&Ok(UnlockReport::Free), note),
            (Outcome::Unchanged, vec![])
        );
        assert_eq!(
            audited(&Ok(UnlockReport::NoLock), note),
            (Outcome::Unchanged, vec![])
        );
        let released = UnlockReport::Released {
            terminated: vec![7, 9],
            killed: vec![],
        };
        assert_eq!(
            audited(&Ok(released), note),
            (
                Outcome::Ok,
                vec![("holder", note.into()), ("terminated", "7,9".into())]
            )
        );
        let killed = UnlockReport::Released {
            terminated: vec![7],
            killed: vec![7],
        };
        assert_eq!(audited(&Ok(killed), note).1[2], ("killed", "7".into()));
        let stopped = Fail::new(Exit::Interrupted, "stopped");
        assert_eq!(audited(&Err(stopped), note).0, Outcome::Interrupted);
        assert_eq!(audited(&Err(Fail::failed("x")), note).0, Outcome::Failed);
    }

    #[test]
    fn roots_note_first_then_tribists_said_as_its_words() {
        let t = TempDir::new("unlock-note");
        std::fs::create_dir(t.join("state")).unwrap();
        std::fs::create_dir(t.join("api")).unwrap();
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        let note = |tribist| holder_note_in(&t.join("state"), &t.join("api"), tribist);
        assert_eq!(note(Some(me)), "unknown holder");
        std::fs::write(
            t.join("api/.deploy.holder"),
            "upgrade by bob\x1b[2K (pid 1)\nsecond",
        )
        .unwrap();
        assert_eq!(
            note(Some(me)),
            "upgrade by bob[2K (pid 1)second (as user tribist wrote it)"
        );
        // Not tribist's file (a hard link to another's): not read.
        assert_eq!(note(Some(me + 1)), "unknown holder");
        assert_eq!(note(None), "unknown holder");
        // Root's note, when there is one, is the one.
        std::fs::write(t.join("state/holder"), "upgrade by alice as root@x (pid 2)").unwrap();
        assert_eq!(note(Some(me)), "upgrade by alice as root@x (pid 2)");
        // An empty one (a lock released) is none; a link is never followed.
        std::fs::write(t.join("state/holder"), "").unwrap();
        assert!(note(Some(me)).ends_with("(as user tribist wrote it)"));
        std::fs::remove_file(t.join("api/.deploy.holder")).unwrap();
        std::fs::write(t.join("secret"), "root's secret").unwrap();
        std::os::unix::fs::symlink(t.join("secret"), t.join("api/.deploy.holder")).unwrap();
        assert_eq!(note(Some(me)), "unknown holder");
    }
}
