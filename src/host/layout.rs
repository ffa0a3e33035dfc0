//! Who owns what on the host, as data: the one table that install makes and every check
//! reads (docs/deploying.md, "Who owns what on the host").
//!
//! Why: deploy.sh had the layout three times over: the table in the docs, `make_layout`'s
//! `install -d -o … -m …` lines and `expect`'s patterns, and a path added to one was missed
//! by another. Here each path is an [`Entry`] of [`LAYOUT`]; [`check`] inspects one with
//! `lstat` (never following a link) and says exactly what is wrong: missing, a symbolic
//! link, a file of another kind, its owner, group or mode. [`check_parents`] checks the
//! directories above it, which must be root's and writable by root alone, or the rule
//! cannot hold: whoever can rename in a parent can swap the path.
//!
//! THE RULE it serves: no step that runs as root reads, writes, creates, truncates, appends
//! to, chowns, chmods or executes a path that user `tribist` can create, rename or replace.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::host::fsx::{self, Stat};
use crate::host::text::clean;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Dir => "directory",
            Kind::File => "regular file",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Who {
    Root,
    /// The deploy user: holds the deploy key, owns `api/`.
    Tribist,
    /// The service's own system user (`tribistd`), which nothing of the kit's runs as.
    Service,
}

impl Who {
    fn name(self) -> &'static str {
        match self {
            Who::Root => "root",
            Who::Tribist => "tribist",
            Who::Service => "tribistd",
        }
    }
}

/// One path of the layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub path: &'static str,
    pub kind: Kind,
    pub owner: Who,
    pub group: Who,
    /// The permission bits, exactly.
    pub mode: u32,
    /// Not on every installed host (made by a later step, or only sometimes).
    pub optional: bool,
    pub written_by: &'static str,
    pub purpose: &'static str,
}

/// One row of [`LAYOUT`], in the columns' order.
#[allow(clippy::too_many_arguments)]
const fn e(
    path: &'static str,
    kind: Kind,
    owner: Who,
    group: Who,
    mode: u32,
    optional: bool,
    written_by: &'static str,
    purpose: &'static str,
) -> Entry {
    Entry {
        path,
        kind,
        owner,
        group,
        mode,
        optional,
        written_by,
        purpose,
    }
}

use Kind::{Dir as D, File as F};
use Who::{Root as R, Service as S, Tribist as T};

/// The layout, parents before their children. Columns: path, kind (D directory, F file),
/// owner and group (R root, T tribist, S tribistd), mode, optional, written by, why.
#[rustfmt::skip]
pub const LAYOUT: &[Entry] = &[
    e("/home/tribist", D, R, T, 0o750, false, "install",
      "tribist's home, root's: tribist cannot create, rename or replace anything directly in it"),
    e("/home/tribist/bin", D, R, R, 0o755, false, "install",
      "what root runs from tribist's home; tribist only reads it"),
    e("/home/tribist/bin/tribist-host", F, R, R, 0o755, false, "install",
      "this program: the units' steps, root's deployments, tribist's own"),
    e("/home/tribist/bin/server.sh", F, R, R, 0o755, false, "install",
      "start|stop|restart|reload|status by hand (the seed's interface)"),
    e("/home/tribist/bin/wait_for_it.sh", F, R, R, 0o755, false, "install",
      "polls /health (the seed's interface)"),
    e("/home/tribist/.ssh", D, R, R, 0o755, false, "install",
      "tribist cannot add keys or plant a symlink for root to append to"),
    e("/home/tribist/.ssh/authorized_keys", F, R, R, 0o644, true, "install (DEPLOY_KEY)",
      "the deploy key"),
    e("/home/tribist/api", D, T, T, 0o750, false, "tribist only (as tribist)",
      "the binaries and uploads: the one thing tribist must be able to change"),
    e("/run/tribist", D, S, S, 0o750, true, "systemd (RuntimeDirectory=)",
      "the server's working directory and PID file, made afresh at every start"),
    e("/etc/tribist", D, R, T, 0o750, false, "install",
      "the configuration's directory: root writes, the service's group reads"),
    e("/etc/tribist/env", F, R, T, 0o640, false, "install, make config",
      "the configuration and its password"),
    e("/etc/tribist/env.prev", F, R, T, 0o640, true, "install, make config",
      "the configuration before the last change"),
    e("/etc/tribist/env.example", F, R, R, 0o644, false, "install",
      "every setting, commented"),
    e("/var/lib/tribist-deploy", D, R, R, 0o755, false, "install",
      "root's state, out of tribist's reach"),
    e("/var/lib/tribist-deploy/lock", F, R, R, 0o644, false, "install",
      "the deploy lock: flock needs only read access, so tribist can take it but not replace it"),
    e("/var/lib/tribist-deploy/holder", F, R, R, 0o644, true, "root's deployments",
      "who holds the lock, when root does"),
    e("/var/lib/tribist-deploy/audit.log", F, R, R, 0o600, false, "install (created), root (appended)",
      "root's audit record"),
    e("/var/lib/tribist-deploy/env-served", F, R, R, 0o644, true, "install, make config",
      "the configuration has served a healthy start: a re-install keeps it"),
    e("/var/lib/tribist-deploy/bin", D, R, R, 0o755, false, "install",
      "root's copies of the binaries it verified and audited"),
    e("/var/lib/tribist-deploy/bin/server", F, R, R, 0o755, true, "the unit's start and reload steps",
      "what systemd runs (ExecStart=): root's copy of the binary they promoted, named by its SHA-256 in the audit"),
    e("/etc/systemd/system/tribist.service", F, R, R, 0o644, false, "install", "the service unit"),
    e("/etc/systemd/system/tribist.socket", F, R, R, 0o644, false, "install", "the socket unit"),
    e("/etc/systemd/system/tribist.socket.d", D, R, R, 0o755, false, "install (LISTEN=)",
      "the address's drop-in directory"),
    e("/etc/systemd/system/tribist.socket.d/listen.conf", F, R, R, 0o644, false, "install (LISTEN=)",
      "the address: the one place it is set"),
    e("/etc/systemd/system/tribist.service.d", D, R, R, 0o755, false, "install (LISTEN=)",
      "the server's fallback address's drop-in directory"),
    e("/etc/systemd/system/tribist.service.d/listen.conf", F, R, R, 0o644, false, "install (LISTEN=)",
      "TRIBIST_LISTEN for a start without the socket, the same value"),
    e("/etc/sudoers.d/tribist", F, R, R, 0o440, false, "install",
      "tribist's sudo rights: systemctl start|stop|restart|reload|status tribist"),
];

/// The entry for `path`, if the layout has one.
pub fn entry(path: &str) -> Option<&'static Entry> {
    LAYOUT.iter().find(|e| e.path == path)
}

/// The uids and gids [`Who`] means on this host (or in a test).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ids {
    pub root: (u32, u32),
    pub tribist: (u32, u32),
    pub service: (u32, u32),
}

impl Ids {
    /// Root's, and users tribist's and tribistd's from the password database; the name of
    /// the user that does not exist otherwise.
    pub fn host() -> Result<Ids, &'static str> {
        let user = |name| crate::host::child::user_ids(name).ok_or(name);
        Ok(Ids {
            root: (0, 0),
            tribist: user(Who::Tribist.name())?,
            service: user(Who::Service.name())?,
        })
    }
    fn ids(&self, who: Who) -> (u32, u32) {
        match who {
            Who::Root => self.root,
            Who::Tribist => self.tribist,
            Who::Service => self.service,
        }
    }
    /// `root (uid 0)`, `tribist (uid 999)`, or `uid N` for anyone else.
    fn named(&self, id: u32, kind: &str, of: impl Fn((u32, u32)) -> u32) -> String {
        [Who::Root, Who::Tribist, Who::Service]
            .into_iter()
            .find(|w| of(self.ids(*w)) == id)
            .map_or(format!("{kind} {id}"), |w| {
                format!("{} ({kind} {id})", w.name())
            })
    }
    fn uid_name(&self, uid: u32) -> String {
        self.named(uid, "uid", |(u, _)| u)
    }
    fn gid_name(&self, gid: u32) -> String {
        self.named(gid, "gid", |(_, g)| g)
    }
}

/// One thing wrong with a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    Missing,
    Symlink {
        target: String,
    },
    Kind {
        is: &'static str,
        want: Kind,
    },
    Owner {
        is: String,
        want: Who,
    },
    Group {
        is: String,
        want: Who,
    },
    Mode {
        is: u32,
        want: u32,
    },
    /// A directory above it that someone other than root can write to.
    Writable {
        mode: u32,
    },
    Unreadable {
        err: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Missing => write!(f, "missing"),
            Problem::Symlink { target } => write!(f, "a symbolic link (to {target}), not the real thing"),
            Problem::Kind { is, want } => write!(f, "a {is}, should be a {}", want.name()),
            Problem::Owner { is, want } => write!(f, "owned by {is}, should be {}", want.name()),
            Problem::Group { is, want } => write!(f, "group {is}, should be {}", want.name()),
            Problem::Mode { is, want } => write!(f, "mode {is:04o}, should be {want:04o}"),
            Problem::Writable { mode } => write!(
                f,
                "mode {mode:04o}: others than its owner can write to it, so they can swap what is in it"
            ),
            Problem::Unreadable { err } => write!(f, "cannot be looked at: {err}"),
        }
    }
}

/// What is wrong with one path, all of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayoutError {
    pub path: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.path)?;
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                write!(f, "; ")?;
            }
            write!(f, "{p}")?;
        }
        write!(
            f,
            " (make install puts the layout right; what is in the way is moved aside, not opened)"
        )
    }
}

impl std::error::Error for LayoutError {}

/// `prefix` + `path` (`/` for the host itself; a temporary directory in tests).
pub fn under(prefix: &Path, path: &str) -> PathBuf {
    prefix.join(path.trim_start_matches('/'))
}

fn shown(p: &Path) -> String {
    clean(p.as_os_str().as_encoded_bytes(), 300)
}

fn look(full: &Path) -> Result<Option<Stat>, Problem> {
    match fsx::lstat(full) {
        Ok(st) => Ok(Some(st)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Problem::Unreadable { err: e.to_string() }),
    }
}

fn link_target(full: &Path) -> String {
    std::fs::read_link(full).map_or("?".into(), |t| clean(t.as_os_str().as_encoded_bytes(), 200))
}

/// Inspects `entry` under `prefix` with `lstat`: exactly its kind, owner, group and mode,
/// and never a symbolic link. A missing entry is an error (optional ones included: the
/// caller knows when one must be there).
pub fn check(prefix: &Path, entry: &Entry, ids: &Ids) -> Result<(), LayoutError> {
    let full = under(prefix, entry.path);
    let err = |problems| LayoutError {
        path: shown(&full),
        problems,
    };
    let st = match look(&full) {
        Ok(Some(st)) => st,
        Ok(None) => return Err(err(vec![Problem::Missing])),
        Err(p) => return Err(err(vec![p])),
    };
    if st.is_symlink() {
        return Err(err(vec![Problem::Symlink {
            target: link_target(&full),
        }]));
    }
    let mut problems = Vec::new();
    let kind_ok = match entry.kind {
        Kind::Dir => st.is_dir(),
        Kind::File => st.is_regular(),
    };
    if !kind_ok {
        problems.push(Problem::Kind {
            is: st.kind(),
            want: entry.kind,
        });
    }
    if st.uid != ids.ids(entry.owner).0 {
        problems.push(Problem::Owner {
            is: ids.uid_name(st.uid),
            want: entry.owner,
        });
    }
    if st.gid != ids.ids(entry.group).1 {
        problems.push(Problem::Group {
            is: ids.gid_name(st.gid),
            want: entry.group,
        });
    }
    if st.perm() != entry.mode {
        problems.push(Problem::Mode {
            is: st.perm(),
            want: entry.mode,
        });
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(err(problems))
    }
}

/// Checks the directories above `entry` under `prefix` (the prefix itself excluded): each a
/// real directory of root's (`ids.root`) that no one else can write to, or sticky and
/// root's (as `/tmp` would be, which the layout never uses). The layout's own directories
/// are checked by [`check`] and skipped here.
pub fn check_parents(prefix: &Path, entry: &Entry, ids: &Ids) -> Result<(), LayoutError> {
    let mut path = Path::new(entry.path);
    while let Some(parent) = path.parent() {
        path = parent;
        let p = parent.to_str().unwrap_or("/");
        if LAYOUT.iter().any(|e| e.path == p) {
            continue;
        }
        if p == "/" && prefix != Path::new("/") {
            break;
        }
        let full = under(prefix, p);
        let err = |problems| LayoutError {
            path: shown(&full),
            problems,
        };
        let st = match look(&full) {
            Ok(Some(st)) => st,
            Ok(None) => return Err(err(vec![Problem::Missing])),
            Err(pr) => return Err(err(vec![pr])),
        };
        if st.is_symlink() {
            return Err(err(vec![Problem::Symlink {
                target: link_target(&full),
            }]));
        }
        let mut problems = Vec::new();
        if !st.is_dir() {
            problems.push(Problem::Kind {
                is: st.kind(),
                want: Kind::Dir,
            });
        }
        if st.uid != ids.root.0 {
            problems.push(Problem::Owner {
                is: ids.uid_name(st.uid),
                want: Who::Root,
            });
        }
        let sticky = st.mode & 0o1000 != 0;
        if st.mode & 0o022 != 0 && !sticky {
            problems.push(Problem::Writable { mode: st.perm() });
        }
        if !problems.is_empty() {
            return Err(err(problems));
        }
    }
    Ok(())
}

/// Every entry of the layout under `prefix` that is wrong; an optional one only when it is
/// there and wrong; nothing inside a directory that is itself wrong (what its path leads
/// to is not the layout's).
pub fn check_all(prefix: &Path, ids: &Ids) -> Vec<LayoutError> {
    let mut errors: Vec<LayoutError> = Vec::new();
    let mut bad_dirs: Vec<&str> = Vec::new();
    for e in LAYOUT {
        if bad_dirs.iter().any(|d| {
            e.path
                .strip_prefix(d)
                .is_some_and(|rest| rest.starts_with('/'))
        }) {
            continue;
        }
        let result = match check(prefix, e, ids) {
            Err(err) if e.optional && err.problems == [Problem::Missing] => Ok(()),
            Ok(()) => check_parents(prefix, e, ids),
            Err(err) => Err(err),
        };
        if let Err(err) = result {
            if e.kind == Kind::Dir {
                bad_dirs.push(e.path);
            }
            errors.push(err);
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::testutil::{root_or_skip, TempDir};
    use std::os::unix::fs::PermissionsExt;

    /// Who the test process is, standing for both root and tribist (so ownership matches
    /// without root).
    fn me() -> Ids {
        // SAFETY: no preconditions.
        let me = unsafe { (libc::geteuid(), libc::getegid()) };
        Ids {
            root: me,
            tribist: me,
            service: me,
        }
    }

    /// The whole layout made under `prefix`, as install makes it (but the owners).
    fn make(prefix: &Path) {
        for e in LAYOUT {
            let p = under(prefix, e.path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            match e.kind {
                Kind::Dir => std::fs::create_dir(&p).unwrap(),
                Kind::File => std::fs::write(&p, b"").unwrap(),
            }
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(e.mode)).unwrap();
        }
    }

    fn set_mode(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn the_table_is_well_formed() {
        let mut seen = std::collections::HashSet::new();
        for (i, e) in LAYOUT.iter().enumerate() {
            assert!(
                e.path.starts_with('/') && !e.path.ends_with('/'),
                "{}",
                e.path
            );
            assert!(seen.insert(e.path), "{} twice", e.path);
            // Parents first, so install can make them in this order.
            if let Some(parent) = entry(Path::new(e.path).parent().unwrap().to_str().unwrap()) {
                let at = LAYOUT.iter().position(|x| x == parent).unwrap();
                assert!(at < i, "{} before its parent", e.path);
                assert_eq!(parent.kind, Kind::Dir);
            }
            // Nothing root uses is writable by anyone but its owner, and nothing of
            // root's is tribist's to write.
            assert_eq!(e.mode & 0o022, 0, "{}", e.path);
            assert!(!e.purpose.is_empty() && !e.written_by.is_empty());
        }
        let bin = entry("/var/lib/tribist-deploy/bin").unwrap();
        assert_eq!(
            (bin.kind, bin.owner, bin.group, bin.mode),
            (Kind::Dir, Who::Root, Who::Root, 0o755)
        );
        // Only api/ is tribist's, only /run/tribist the service's.
        let of = |who| -> Vec<&str> {
            LAYOUT
                .iter()
                .filter(|e| e.owner == who || e.group == who && e.mode & 0o020 != 0)
                .map(|e| e.path)
                .collect()
        };
        assert_eq!(of(Who::Tribist), ["/home/tribist/api"]);
        assert_eq!(of(Who::Service), ["/run/tribist"]);
    }

    #[test]
    fn a_layout_as_made_passes() {
        let t = TempDir::new("layout-ok");
        make(t.path());
        assert_eq!(check_all(t.path(), &me()), vec![]);
        // An optional entry may be missing; a required one may not.
        std::fs::remove_file(under(t.path(), "/var/lib/tribist-deploy/holder")).unwrap();
        std::fs::remove_file(under(t.path(), "/var/lib/tribist-deploy/lock")).unwrap();
        let errs = check_all(t.path(), &me());
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].problems, [Problem::Missing]);
        assert!(errs[0].path.ends_with("/var/lib/tribist-deploy/lock"));
    }

    #[test]
    fn says_precisely_what_is_wrong() {
        let t = TempDir::new("layout-wrong");
        make(t.path());
        let ids = me();

        // A symbolic link where bin/ belongs.
        let bin = under(t.path(), "/home/tribist/bin");
        std::fs::rename(&bin, under(t.path(), "/home/tribist/old-bin")).unwrap();
        std::os::unix::fs::symlink("/etc", &bin).unwrap();
        let err = check(t.path(), entry("/home/tribist/bin").unwrap(), &ids).unwrap_err();
        assert_eq!(
            err.problems,
            [Problem::Symlink {
                target: "/etc".into()
            }]
        );
        assert_eq!(
            err.to_string(),
            format!(
                "{}: a symbolic link (to /etc), not the real thing (make install puts the layout right; what is in the way is moved aside, not opened)",
                bin.display()
            )
        );

        // A mode, and a file where a directory belongs.
        let audit = under(t.path(), "/var/lib/tribist-deploy/audit.log");
        set_mode(&audit, 0o644);
        let err = check(
            t.path(),
            entry("/var/lib/tribist-deploy/audit.log").unwrap(),
            &ids,
        )
        .unwrap_err();
        assert_eq!(
            err.problems,
            [Problem::Mode {
                is: 0o644,
                want: 0o600
            }]
        );
        assert!(err.to_string().contains(": mode 0644, should be 0600 ("));
        let state_bin = under(t.path(), "/var/lib/tribist-deploy/bin");
        std::fs::remove_dir_all(&state_bin).unwrap();
        std::fs::write(&state_bin, b"").unwrap();
        set_mode(&state_bin, 0o755);
        let err = check(
            t.path(),
            entry("/var/lib/tribist-deploy/bin").unwrap(),
            &ids,
        )
        .unwrap_err();
        assert_eq!(
            err.problems,
            [Problem::Kind {
                is: "regular file",
                want: Kind::Dir
            }]
        );

        // Ownership against other ids (no root needed: the test's ids are what differ).
        let other = Ids {
            root: (ids.root.0 + 1, ids.root.1 + 1),
            ..ids
        };
        let err = check(t.path(), entry("/etc/tribist/env").unwrap(), &other).unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        assert!(
            err.to_string().contains(&format!(
                "owned by tribist (uid {}), should be root",
                ids.tribist.0
            )),
            "{err}"
        );
        // The three, and nothing below the symbolic link.
        let all: Vec<String> = check_all(t.path(), &ids)
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(all, [bin, audit, state_bin].map(|p| shown(&p)));
    }

    #[test]
    fn a_writable_parent_is_found() {
        let t = TempDir::new("layout-parent");
        make(t.path());
        let ids = me();
        let e = entry("/etc/systemd/system/tribist.service").unwrap();
        assert_eq!(check_parents(t.path(), e, &ids), Ok(()));
        let sys = under(t.path(), "/etc/systemd/system");
        set_mode(&sys, 0o777);
        let err = check_parents(t.path(), e, &ids).unwrap_err();
        assert_eq!(err.problems, [Problem::Writable { mode: 0o777 }]);
        assert!(err.path.ends_with("/etc/systemd/system"));
        set_mode(&sys, 0o1777);
        assert_eq!(check_parents(t.path(), e, &ids), Ok(()));
        set_mode(&sys, 0o755);
        // The layout's own directories are not parents to check here.
        let e = entry("/home/tribist/api").unwrap();
        set_mode(&under(t.path(), "/home/tribist"), 0o770);
        assert_eq!(check_parents(t.path(), e, &ids), Ok(()));
    }

    #[test]
    fn real_owners_as_root() {
        root_or_skip!("files of other users");
        let t = TempDir::new("layout-root");
        make(t.path());
        let nobody = crate::host::child::user_ids("nobody").expect("user nobody");
        let daemon = crate::host::child::user_ids("daemon").expect("user daemon");
        let ids = Ids {
            root: (0, 0),
            tribist: nobody,
            service: daemon,
        };
        for e in LAYOUT {
            let (u, _) = ids.ids(e.owner);
            let (_, g) = ids.ids(e.group);
            std::os::unix::fs::lchown(under(t.path(), e.path), Some(u), Some(g)).unwrap();
        }
        assert_eq!(check_all(t.path(), &ids), vec![]);
        // tribist's file where root's belongs (an older layout): owner named, by name.
        let keys = under(t.path(), "/home/tribist/.ssh/authorized_keys");
        std::os::unix::fs::lchown(&keys, Some(nobody.0), Some(nobody.1)).unwrap();
        let err = check(
            t.path(),
            entry("/home/tribist/.ssh/authorized_keys").unwrap(),
            &ids,
        )
        .unwrap_err();
        assert_eq!(
            err.problems,
            [
                Problem::Owner {
                    is: format!("tribist (uid {})", nobody.0),
                    want: Who::Root
                },
                Problem::Group {
                    is: format!("tribist (gid {})", nobody.1),
                    want: Who::Root
                }
            ]
        );
        // A parent of tribist's.
        std::os::unix::fs::lchown(under(t.path(), "/etc/sudoers.d"), Some(nobody.0), None).unwrap();
        let err =
            check_parents(t.path(), entry("/etc/sudoers.d/tribist").unwrap(), &ids).unwrap_err();
        assert!(err.to_string().contains("owned by tribist"), "{err}");
    }
}
