//! Root's copies of binaries (`/var/lib/tribist-deploy/bin`): what runs is exactly what root
//! verified and audited (issue 18).
//!
//! Why: a check of a file in `api/` (tribist's) followed by a use of it by name checks one
//! file and uses another: tribist renamed other bytes over an upload after its checks, or
//! over `api/server` between the audit's digest and systemd's exec. Here root opens the
//! binary once, through a descriptor of `api/` opened without following links, checks that
//! descriptor (a regular file of tribist's, bounded), and copies and hashes from it into its
//! own directory ([`fsx::copy_verified`]). Everything after — the description, the identity
//! check, the preflight, the unit's start and reload steps — uses that copy:
//!
//! - root's deployment takes `next`, its copy of the upload, right after the lock;
//! - the start or reload step that promotes the upload installs `next` as `server` (what
//!   `ExecStart=` runs); a start that promoted nothing of root's (tribist's own `server_new`
//!   plus restart, the seed's upgrade, or a plain restart) copies `api/server` afresh;
//! - fail-closed: the audit record first ([`Copies::commit`]), then the copy becomes what
//!   runs. Without the record, what runs does not change.

use std::io;

use crate::host::digest::Sha256;
use crate::host::fsx::{self, Dir, FsError, Limits};

/// The largest binary root copies.
pub const MAX_BINARY: u64 = 512 * 1024 * 1024;
/// What the unit runs.
pub const SERVER: &str = "server";
/// Root's copy of the upload its deployment is switching to.
pub const NEXT: &str = "next";
/// The copy a start or reload step is about to install, until its record is written.
pub const START: &str = ".start";

/// Where a start or reload step's binary came from (`source=` in its record).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Root's own deployment's copy of its upload (`next`).
    Deploy,
    /// A fresh copy of `api/server`.
    Api,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Deploy => "deploy",
            Source::Api => "api",
        }
    }
}

/// A copy ready to become what runs: [`START`] in root's directory, with its digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prepared {
    pub source: Source,
    pub digest: Sha256,
}

/// How [`Copies::commit`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Committed {
    /// The record is written and the copy is what runs.
    New,
    /// No record could be written (`why`): the copy is gone, and what ran before runs again.
    Previous { why: String },
}

/// `api/` (tribist's) and root's directory of copies, both open.
pub struct Copies {
    pub api: Dir,
    pub verified: Dir,
    /// The owner every binary of `api/` must have (tribist).
    pub tribist_uid: u32,
}

impl Copies {
    /// The host's: `/home/tribist/api` and `/var/lib/tribist-deploy/bin`.
    pub fn host() -> Result<Copies, String> {
        let (uid, _) = crate::host::child::user_ids(super::paths::USER_NAME).ok_or_else(|| {
            format!(
                "there is no user {}: make install HOST=… makes it",
                super::paths::USER_NAME
            )
        })?;
        let api = Dir::open(super::paths::API_DIR)
            .map_err(|e| format!("{e}; make install HOST=… puts the layout right"))?;
        let verified = Copies::root_dir()?;
        Ok(Copies {
            api,
            verified,
            tribist_uid: uid,
        })
    }

    /// `/var/lib/tribist-deploy/bin`, checked to be root's own directory.
    pub fn root_dir() -> Result<Dir, String> {
        let fix = "make install HOST=… puts the layout right";
        let dir = Dir::open(super::paths::VERIFIED_DIR).map_err(|e| format!("{e}; {fix}"))?;
        let st = dir.fstat().map_err(|e| format!("{e}; {fix}"))?;
        if st.uid != 0 || st.perm() & 0o022 != 0 {
            return Err(format!(
                "{} is not root's alone (uid {}, mode {:o}); {fix}",
                super::paths::VERIFIED_DIR,
                st.uid,
                st.perm()
            ));
        }
        Ok(dir)
    }

    /// Copies binary `name` of `api/` into `dest` of root's directory (mode 0755) and returns
    /// the SHA-256 of exactly the bytes copied. The file is opened once, without following a
    /// link, and must be a regular file of tribist's of at most [`MAX_BINARY`] bytes; whatever
    /// tribist renames over `name` afterwards changes nothing of `dest`.
    pub fn copy(&self, name: &str, dest: &str) -> Result<Sha256, FsError> {
        let src = fsx::open_regular_at(
            &self.api,
            name,
            Limits {
                owner: Some(self.tribist_uid),
                max_size: MAX_BINARY,
            },
        )?;
        if src.stat.size == 0 {
            return Err(FsError::Io {
                op: "refusing the empty file",
                path: self.api.shown_name(name),
                err: io::Error::from(io::ErrorKind::InvalidData),
            });
        }
        fsx::copy_verified(&src.file, &self.verified, dest, 0o755, None, MAX_BINARY)
    }

    /// Root's copy of upload `upload`, taken right after the lock: [`NEXT`].
    pub fn take_next(&self, upload: &str) -> Result<Sha256, FsError> {
        self.copy(upload, NEXT)
    }

    /// The path the copy [`NEXT`] is run by (its description, its preflight).
    pub fn next_path() -> String {
        format!("{}/{NEXT}", super::paths::VERIFIED_DIR)
    }

    /// Removes [`NEXT`], if it is there: a copy no start step took is not to be taken by a
    /// later one.
    pub fn discard_next(&self) {
        let _ = fsx::unlinkat(&self.verified, NEXT);
    }

    /// The copy a start or reload step installs, as [`START`]: root's deployment's [`NEXT`]
    /// when this step promoted its upload (`promoted`), else a fresh copy of `api/server`.
    /// A `next` this step does not take (an interrupted deployment's) is removed.
    pub fn prepare(&self, promoted: bool) -> Result<Prepared, FsError> {
        if promoted {
            let root_only = Limits {
                owner: Some(self.verified.fstat()?.uid),
                max_size: MAX_BINARY,
            };
            if let Ok(next) = fsx::open_regular_at(&self.verified, NEXT, root_only) {
                let digest = Sha256::of_reader(&next.file).map_err(|err| FsError::Io {
                    op: "cannot read",
                    path: self.verified.shown_name(NEXT),
                    err,
                })?;
                fsx::renameat(&self.verified, NEXT, &self.verified, START)?;
                return Ok(Prepared {
                    source: Source::Deploy,
                    digest,
                });
            }
        }
        self.discard_next();
        let digest = self.copy(SERVER, START)?;
        Ok(Prepared {
            source: Source::Api,
            digest,
        })
    }

    /// Fail-closed: `record` (which appends the audit record) first; only once it is written
    /// does [`START`] become [`SERVER`], what runs. If the record cannot be written, the copy
    /// is removed and what ran before stays: [`Committed::Previous`], or the error when there
    /// is no previous one either (nothing to start).
    pub fn commit<E: std::fmt::Display>(
        &self,
        record: impl FnOnce() -> Result<(), E>,
    ) -> Result<Committed, String> {
        match record() {
            Ok(()) => {
                fsx::renameat(&self.verified, START, &self.verified, SERVER)
                    .map_err(|e| e.to_string())?;
                Ok(Committed::New)
            }
            Err(e) => {
                let _ = fsx::unlinkat(&self.verified, START);
                match self.verified.lstat_at(SERVER) {
                    Ok(st) if st.is_regular() => Ok(Committed::Previous { why: e.to_string() }),
                    _ => Err(e.to_string()),
                }
            }
        }
    }

    /// The digest of what runs now ([`SERVER`]), if there is one.
    pub fn running_digest(&self) -> Option<Sha256> {
        let f = fsx::open_regular_at(
            &self.verified,
            SERVER,
            Limits {
                owner: Some(self.verified.fstat().ok()?.uid),
                max_size: MAX_BINARY,
            },
        )
        .ok()?;
        Sha256::of_reader(&f.file).ok()
    }
}

/// What an upload is, against what is installed and kept (`releases identity`'s answers),
/// decided on root's copy: its digest against root's copy of what runs (or `api/server`) and
/// the kept release of its id, each read through a descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// The same bytes as the installed binary.
    Installed,
    /// The installed binary reports this id with other bytes: old and new could not be told
    /// apart.
    Conflict {
        id: String,
    },
    /// A kept release has this id with other bytes: it may serve, never be kept under it.
    KeptOther {
        id: String,
    },
    New,
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Installed => write!(f, "installed"),
            Identity::Conflict { id } => write!(
                f,
                "conflict: the installed binary is release {id} with other bytes"
            ),
            Identity::KeptOther { id } => write!(
                f,
                "kept-other: release {id} is kept with other bytes (releases/{id})"
            ),
            Identity::New => write!(f, "new"),
        }
    }
}

/// The identity of a binary with digest `new` reporting release `id`, given the installed
/// binary's digest and release (if known) and the digest of `releases/ID` (if kept).
pub fn identity(
    new: Sha256,
    id: &str,
    installed: Option<(Sha256, Option<&str>)>,
    kept: Option<Sha256>,
) -> Identity {
    if let Some((digest, release)) = installed {
        if digest == new {
            return Identity::Installed;
        }
        if release == Some(id) {
            return Identity::Conflict { id: id.into() };
        }
    }
    match kept {
        Some(k) if k != new => Identity::KeptOther { id: id.into() },
        _ => Identity::New,
    }
}

impl Copies {
    /// The SHA-256 of binary `name` of `api/` (tribist's, read through one descriptor).
    pub fn api_digest(&self, name: &str) -> Option<Sha256> {
        let f = fsx::open_regular_at(
            &self.api,
            name,
            Limits {
                owner: Some(self.tribist_uid),
                max_size: MAX_BINARY,
            },
        )
        .ok()?;
        Sha256::of_reader(&f.file).ok()
    }

    /// The SHA-256 of the kept release `id` (`api/releases/ID`), if there is one.
    pub fn kept_digest(&self, id: &str) -> Option<Sha256> {
        let releases = self.api.open_at("releases").ok()?;
        let f = fsx::open_regular_at(
            &releases,
            id,
            Limits {
                owner: Some(self.tribist_uid),
                max_size: MAX_BINARY,
            },
        )
        .ok()?;
        Sha256::of_reader(&f.file).ok()
    }

    /// The SHA-256 of [`NEXT`].
    pub fn next_digest(&self) -> Option<Sha256> {
        let f = fsx::open_regular_at(
            &self.verified,
            NEXT,
            Limits {
                owner: Some(self.verified.fstat().ok()?.uid),
                max_size: MAX_BINARY,
            },
        )
        .ok()?;
        Sha256::of_reader(&f.file).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::testutil::TempDir;

    fn me() -> u32 {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() }
    }

    /// api/ and root's directory in a temporary directory, owned by whoever runs the test.
    fn copies(t: &TempDir) -> Copies {
        std::fs::create_dir(t.join("api")).unwrap();
        std::fs::create_dir(t.join("bin")).unwrap();
        Copies {
            api: Dir::open(t.join("api")).unwrap(),
            verified: Dir::open(t.join("bin")).unwrap(),
            tribist_uid: me(),
        }
    }

    /// tribist's move: other bytes renamed over `name` in api/.
    fn swap(t: &TempDir, name: &str, bytes: &[u8]) {
        let tmp = t.join("api/.swap");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, t.join(&format!("api/{name}"))).unwrap();
    }

    /// The check-then-use property, end to end: root's copy of the upload is taken right
    /// after the lock; whatever tribist renames over the upload, `server_new` or `server`
    /// afterwards, what the checks ran (`next`) is what the start step installs, and the
    /// digest its record names is that of the bytes that run.
    #[test]
    fn what_runs_is_the_copy_root_checked_whatever_tribist_swaps() {
        let t = TempDir::new("verified-swap");
        let c = copies(&t);
        let shipped = b"#!/bin/sh\necho shipped release\n".to_vec();
        let forged = b"#!/bin/sh\necho tribist's other bytes\n".to_vec();
        std::fs::write(t.join("api/.upload.abc123"), &shipped).unwrap();
        std::fs::write(t.join("api/server"), b"old").unwrap();

        let digest = c.take_next(".upload.abc123").unwrap();
        assert_eq!(digest, Sha256::of(&shipped));
        // After the copy: tribist swaps the upload, then (staged and promoted by the step)
        // server_new and server.
        swap(&t, ".upload.abc123", &forged);
        swap(&t, "server_new", &forged);
        swap(&t, "server", &forged);
        // The checks run the copy: it holds the shipped bytes.
        assert_eq!(std::fs::read(t.join("bin/next")).unwrap(), shipped);

        let p = c.prepare(true).unwrap();
        assert_eq!(
            p,
            Prepared {
                source: Source::Deploy,
                digest: Sha256::of(&shipped)
            }
        );
        let mut recorded = None;
        let done = c
            .commit(|| {
                recorded = Some(p.digest);
                Ok::<(), String>(())
            })
            .unwrap();
        assert_eq!(done, Committed::New);
        let running = std::fs::read(t.join("bin/server")).unwrap();
        assert_eq!(running, shipped);
        assert_eq!(recorded, Some(Sha256::of(&running)));
        assert_eq!(c.running_digest(), Some(Sha256::of(&shipped)));
        assert!(!t.join("bin/next").exists() && !t.join("bin/.start").exists());
    }

    #[test]
    fn a_release_is_its_bytes() {
        let (a, b) = (Sha256::of(b"a"), Sha256::of(b"b"));
        assert_eq!(
            identity(a, "r1", Some((a, Some("r1"))), None),
            Identity::Installed
        );
        assert_eq!(
            identity(a, "r1", Some((a, Some("r0"))), Some(b)),
            Identity::Installed
        );
        assert_eq!(
            identity(a, "r1", Some((b, Some("r1"))), None).to_string(),
            "conflict: the installed binary is release r1 with other bytes"
        );
        assert_eq!(
            identity(a, "r1", Some((b, Some("r0"))), Some(b)).to_string(),
            "kept-other: release r1 is kept with other bytes (releases/r1)"
        );
        assert_eq!(
            identity(a, "r1", Some((b, Some("r0"))), Some(a)),
            Identity::New
        );
        assert_eq!(identity(a, "r1", None, None), Identity::New);
        // The digests come from descriptors, tribist's files owned by tribist only.
        let t = TempDir::new("verified-ident");
        let c = copies(&t);
        std::fs::create_dir(t.join("api/releases")).unwrap();
        std::fs::write(t.join("api/releases/r1"), b"a").unwrap();
        std::fs::write(t.join("api/server"), b"b").unwrap();
        assert_eq!(c.kept_digest("r1"), Some(a));
        assert_eq!(c.kept_digest("r2"), None);
        assert_eq!(c.api_digest("server"), Some(b));
        std::os::unix::fs::symlink(t.join("api/server"), t.join("api/releases/r3")).unwrap();
        assert_eq!(c.kept_digest("r3"), None);
    }

    #[test]
    fn without_root_s_deployment_the_step_copies_api_server_afresh() {
        let t = TempDir::new("verified-api");
        let c = copies(&t);
        std::fs::write(t.join("api/server"), b"tribist's own upgrade").unwrap();
        // A copy an interrupted deployment left: not this start's.
        std::fs::write(t.join("bin/next"), b"stale").unwrap();
        let p = c.prepare(false).unwrap();
        assert_eq!(p.source, Source::Api);
        assert_eq!(p.digest, Sha256::of(b"tribist's own upgrade"));
        assert!(!t.join("bin/next").exists());
        // Promoted, but no copy of root's: tribist's server_new, copied as api/server.
        let p = c.prepare(true).unwrap();
        assert_eq!(p.source, Source::Api);
    }

    #[test]
    fn no_record_no_change_of_what_runs() {
        let t = TempDir::new("verified-closed");
        let c = copies(&t);
        std::fs::write(t.join("api/server"), b"new").unwrap();
        // Nothing ever verified: the step fails.
        c.prepare(false).unwrap();
        let e = c.commit(|| Err("disk full")).unwrap_err();
        assert_eq!(e, "disk full");
        assert!(!t.join("bin/.start").exists() && !t.join("bin/server").exists());
        // What served before serves on.
        std::fs::write(t.join("bin/server"), b"before").unwrap();
        c.prepare(false).unwrap();
        assert_eq!(
            c.commit(|| Err("disk full")).unwrap(),
            Committed::Previous {
                why: "disk full".into()
            }
        );
        assert_eq!(std::fs::read(t.join("bin/server")).unwrap(), b"before");
        assert!(!t.join("bin/.start").exists());
    }

    #[test]
    fn a_link_a_fifo_an_empty_file_or_another_owner_is_never_copied() {
        let t = TempDir::new("verified-refuse");
        let c = copies(&t);
        std::fs::write(t.join("secret"), b"root's").unwrap();
        std::os::unix::fs::symlink(t.join("secret"), t.join("api/.upload.link01")).unwrap();
        assert!(matches!(
            c.take_next(".upload.link01"),
            Err(FsError::Symlink { .. })
        ));
        std::fs::write(t.join("api/.upload.empty1"), b"").unwrap();
        assert!(c.take_next(".upload.empty1").is_err());
        assert!(c.take_next(".upload.nothere").is_err());
        std::fs::write(t.join("api/.upload.owner1"), b"x").unwrap();
        let other = Copies {
            api: Dir::open(t.join("api")).unwrap(),
            verified: Dir::open(t.join("bin")).unwrap(),
            tribist_uid: me() + 1,
        };
        assert!(matches!(
            other.take_next(".upload.owner1"),
            Err(FsError::Owner { .. })
        ));
        assert!(!t.join("bin/next").exists());
        assert_eq!(
            std::fs::read_dir(t.join("bin")).unwrap().count(),
            0,
            "nothing left behind"
        );
    }
}
