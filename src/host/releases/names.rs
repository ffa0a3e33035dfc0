//! The files of api/, their names in one place, and the checks every name from outside
//! passes before it is used: an upload name, a release id, the binary a command is about.

use std::path::{Path, PathBuf};

use super::dir::{self, Dir};
use super::{Result, Stop};

/// The binary states in api/ (all files owned by tribist). Every change between them is a
/// rename(2) or a hard link in api/: `server` exists at every instant and is always a
/// complete binary.
///
/// | state              | what                                            | written by            |
/// | ------------------ | ----------------------------------------------- | --------------------- |
/// | `server`           | the binary systemd runs                         | promote, revert, swap |
/// | `server_new`       | staged; the next start promotes it              | stage, tribist's scp  |
/// | `server.prev`      | the binary before the last promotion: the       | promote, revert, swap |
/// |                    | rollback target                                 |                       |
/// | `server.failed`    | the binary of the last failed upgrade           | revert                |
/// | `.server.before`   | during an upgrade: the binary serving before it | stage; removed by     |
/// |                    | (a hard link), put back if the upgrade fails    | commit and revert     |
/// | `.server.prev.keep`| during an upgrade: the rollback target before   | stage; removed by     |
/// |                    | it, put back if the upgrade fails               | commit and revert     |
/// | `.upload.XXXXXX`   | an upload, its SHA-256 checked by receive (or a | receive, restage;     |
/// |                    | kept release restaged to roll back to)          | discard, stage        |
/// | `releases/ID`      | a release that served, by its releaseId (a hard | keep; pruned by keep  |
/// |                    | link): the last KEEP, and the serving and the   |                       |
/// |                    | previous one whatever their age                 |                       |
/// | `releases/ID.meta` | its version, when it was kept, who shipped it   | keep                  |
///
/// (`.deploy.holder`, who holds the deploy lock when tribist does, is deploy's, not a state.)
/// Uploads are [`Upload`], kept releases [`Kept`]; the two temporaries below are steps of
/// `revert`/`swap` and `promote`, never left behind by a finished command.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Slot {
    Server,
    ServerNew,
    ServerPrev,
    ServerFailed,
    Before,
    PrevKeep,
    /// The binary being rolled back from, on its way to `server.failed` or `server.prev`.
    RolledBack,
    /// `server`'s second name on its way to `server.prev` (so that `server.prev` is replaced
    /// by one rename, never missing).
    PrevNext,
}

impl Slot {
    pub const fn name(self) -> &'static str {
        match self {
            Slot::Server => "server",
            Slot::ServerNew => "server_new",
            Slot::ServerPrev => "server.prev",
            Slot::ServerFailed => "server.failed",
            Slot::Before => ".server.before",
            Slot::PrevKeep => ".server.prev.keep",
            Slot::RolledBack => ".server.rolled-back",
            Slot::PrevNext => ".server.prev.next",
        }
    }
}

/// The directory of kept releases in api/.
pub const RELEASES_DIR: &str = "releases";

/// A file of api/releases/.
#[derive(Clone, Copy)]
pub enum Kept<'a> {
    Binary(&'a str),
    Meta(&'a str),
    /// The hard link on its way to `ID`.
    BinaryTmp(&'a str),
    /// The note on its way to `ID.meta`.
    MetaTmp(&'a str),
}

impl Kept<'_> {
    pub fn name(self) -> String {
        match self {
            Kept::Binary(id) => id.to_string(),
            Kept::Meta(id) => format!("{id}.meta"),
            Kept::BinaryTmp(id) => format!(".{id}.tmp"),
            Kept::MetaTmp(id) => format!(".{id}.meta.tmp"),
        }
    }
}

/// An upload's name as receive and restage make it: `.upload.` and 6 to 16 letters or
/// digits. Nothing else is accepted where an upload is meant.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Upload(String);

pub const UPLOAD_PREFIX: &str = ".upload.";

impl Upload {
    pub fn parse(name: &str) -> Result<Upload> {
        Upload::valid(name)
            .then(|| Upload(name.to_string()))
            .ok_or_else(|| {
                Stop::usage(format!(
                    "'{}' is not an upload name (.upload.XXXXXX)",
                    shown(name)
                ))
            })
    }

    pub fn valid(name: &str) -> bool {
        name.strip_prefix(UPLOAD_PREFIX).is_some_and(|rest| {
            (6..=16).contains(&rest.len()) && rest.bytes().all(|b| b.is_ascii_alphanumeric())
        })
    }

    /// A new name with `n` random letters and digits.
    pub fn random(n: usize) -> Upload {
        Upload(format!("{UPLOAD_PREFIX}{}", random_alnum(n)))
    }

    pub fn name(&self) -> &str {
        &self.0
    }
}

/// `n` random letters and digits (as mktemp's XXXXXX), from the system's generator (ring's:
/// glibc 2.17, the release's floor, has no getrandom).
pub fn random_alnum(n: usize) -> String {
    use ring::rand::SecureRandom;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = vec![0u8; n];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        // Never seen on Linux; a name from the clock and pid is still unique enough, as
        // every caller creates it exclusively and tries again on a clash.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let seed = t ^ (u128::from(std::process::id()) << 64);
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (seed >> ((i % 16) * 8)) as u8 ^ (i as u8).wrapping_mul(31);
        }
    }
    // 62 letters: the small bias of `% 62` does not matter for a unique name.
    bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect()
}

/// Letters, digits and `._+-`, 1 to 64 of them: what a release id may hold (as `--version`'s
/// commit is read).
pub fn id_text(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
}

/// A release id as kept in releases/: [`id_text`], not starting with a dot (so never a
/// hidden or temporary name, `.` or `..`).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ReleaseId(String);

impl ReleaseId {
    pub fn parse(s: &str) -> Result<ReleaseId> {
        ReleaseId::valid(s)
            .then(|| ReleaseId(s.to_string()))
            .ok_or_else(|| Stop::usage(format!("'{}' is not a release id", shown(s))))
    }

    pub fn valid(s: &str) -> bool {
        id_text(s) && !s.starts_with('.')
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An argument quoted back in a message: printable and short.
pub fn shown(s: &str) -> String {
    crate::host::text::clean(s.as_bytes(), 80)
}

/// Which binary a command is about.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Binary {
    /// `server`, `server.prev`, … in api/.
    Slot(Slot),
    Upload(Upload),
    /// A copy root verified, in root's directory ([`verified_dir`]).
    Verified(PathBuf),
}

/// Which names a command takes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// server, server.prev, server_new, server.failed or an upload.
    Any,
    /// The same or a verified copy (describe, version, hands-over).
    AnyOrVerified,
    /// server, server.prev, an upload or a verified copy (preflight).
    Runnable,
}

/// Where root keeps the copies it verified: `TRIBIST_VERIFIED_DIR`, default
/// /var/lib/tribist-deploy/bin.
pub fn verified_dir() -> PathBuf {
    std::env::var_os("TRIBIST_VERIFIED_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/tribist-deploy/bin"))
}

impl Binary {
    /// The binary `arg` names, refused (exit 2) unless `accept` takes it; a verified copy
    /// must be a file directly in `verified` that only root can have put there.
    pub fn parse(arg: &str, accept: Accept, verified: &Path) -> Result<Binary> {
        let slot = match arg {
            "server" => Some(Slot::Server),
            "server.prev" => Some(Slot::ServerPrev),
            "server_new" if accept != Accept::Runnable => Some(Slot::ServerNew),
            "server.failed" if accept != Accept::Runnable => Some(Slot::ServerFailed),
            _ => None,
        };
        if let Some(slot) = slot {
            return Ok(Binary::Slot(slot));
        }
        if arg.starts_with('/') && accept != Accept::Any {
            return verified_binary(Path::new(arg), verified, ROOT).map(Binary::Verified);
        }
        Upload::parse(arg).map(Binary::Upload)
    }

    /// Its name in api/, unless it is a verified copy.
    pub fn api_name(&self) -> Option<&str> {
        match self {
            Binary::Slot(s) => Some(s.name()),
            Binary::Upload(u) => Some(u.name()),
            Binary::Verified(_) => None,
        }
    }

    /// As messages name it.
    pub fn shown(&self) -> String {
        match self {
            Binary::Verified(p) => shown(&p.to_string_lossy()),
            _ => self.api_name().unwrap_or_default().to_string(),
        }
    }

    /// Refuses (exit 1) a binary that is not there as a regular file.
    pub fn must_exist(&self, api: &Dir) -> Result<()> {
        let there = match self {
            Binary::Verified(p) => dir::lstat(p).is_ok_and(|m| m.is_file()),
            _ => api.is_file(self.api_name().unwrap_or_default()),
        };
        if there {
            Ok(())
        } else {
            Err(Stop::failed(format!("{}: no such binary", self.shown())))
        }
    }

    /// The path to run it by.
    pub fn path(&self, api: &Dir) -> PathBuf {
        match self {
            Binary::Verified(p) => p.clone(),
            _ => api.path().join(self.api_name().unwrap_or_default()),
        }
    }
}

pub const ROOT: u32 = 0;

/// `path` if it is a regular file directly in `verified`, owned by `owner` (root, but for
/// tests) and writable by no one else; `verified` and every directory above it owned by
/// `owner` or root and writable by no one else (one above only if sticky, as /tmp). Otherwise
/// exit 2: any other absolute path is refused.
pub fn verified_binary(path: &Path, verified: &Path, owner: u32) -> Result<PathBuf> {
    let refuse = |why: &str| {
        Stop::usage(format!(
            "'{}' is not a binary this kit runs: {why}",
            shown(&path.to_string_lossy())
        ))
    };
    let plain = |p: &Path| {
        p.is_absolute()
            && p.components().all(|c| {
                matches!(
                    c,
                    std::path::Component::RootDir | std::path::Component::Normal(_)
                )
            })
    };
    if !plain(path) || !plain(verified) {
        return Err(refuse("not a plain absolute path"));
    }
    if path.parent() != Some(verified) {
        return Err(refuse(&format!(
            "an absolute path must name a file in {} (TRIBIST_VERIFIED_DIR), where root keeps the copies it verified",
            shown(&verified.to_string_lossy())
        )));
    }
    let safe = |m: &dir::Meta, sticky_ok: bool| {
        let writable = m.mode() & 0o022 != 0;
        (m.uid() == owner || m.uid() == ROOT)
            && (!writable || (sticky_ok && m.mode() & libc::S_ISVTX != 0))
    };
    for (i, dir) in verified.ancestors().enumerate() {
        let m =
            dir::lstat(dir).map_err(|_| refuse(&format!("{} does not exist", dir.display())))?;
        if !m.is_dir() || !safe(&m, i > 0) {
            return Err(refuse(&format!(
                "{} is not a directory only uid {owner} can change",
                shown(&dir.to_string_lossy())
            )));
        }
    }
    match dir::lstat(path) {
        Ok(m) if m.is_file() && m.uid() == owner && safe(&m, false) => Ok(path.to_path_buf()),
        Ok(_) => Err(refuse(&format!(
            "not a regular file only uid {owner} can change"
        ))),
        Err(_) => Err(Stop::failed(format!(
            "{}: no such binary",
            shown(&path.to_string_lossy())
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn upload_names_are_checked_in_one_place() {
        for good in [".upload.abcdef", ".upload.ABCdef0123456789"] {
            assert!(Upload::parse(good).is_ok(), "{good}");
        }
        for bad in [
            ".upload.abcde",
            ".upload.abcdefghijklmnopq",
            ".upload.abc-ef",
            "upload.abcdef",
            "../../etc/passwd",
            ".upload.abcdef/x",
            "",
        ] {
            let err = Upload::parse(bad).unwrap_err();
            assert_eq!(err.code, 2, "{bad}");
            assert!(
                err.message.contains("not an upload name"),
                "{}",
                err.message
            );
        }
        let u = Upload::random(8);
        assert!(Upload::valid(u.name()) && u.name().len() == 16, "{u:?}");
        assert_ne!(Upload::random(8), Upload::random(8));
    }

    #[test]
    fn release_ids() {
        assert!(ReleaseId::valid("0123abc-dirty-0f+x_y.z"));
        for bad in ["", ".x", "..", "../../etc", "a/b", "a b", &"x".repeat(65)] {
            assert_eq!(ReleaseId::parse(bad).unwrap_err().code, 2, "{bad}");
        }
        assert!(id_text(".x") && !id_text("a\u{1b}"));
    }

    #[test]
    fn binary_names_by_command() {
        let v = Path::new("/nonexistent-verified");
        assert_eq!(
            Binary::parse("server_new", Accept::Any, v).unwrap(),
            Binary::Slot(Slot::ServerNew)
        );
        // The preflight runs only what may serve next.
        assert_eq!(
            Binary::parse("server_new", Accept::Runnable, v)
                .unwrap_err()
                .code,
            2
        );
        assert_eq!(
            Binary::parse(".server.before", Accept::Any, v)
                .unwrap_err()
                .code,
            2
        );
        // Absolute paths: only where a verified copy is taken, and only in its directory.
        assert_eq!(
            Binary::parse("/bin/sh", Accept::Any, v).unwrap_err().code,
            2
        );
        let err = Binary::parse("/bin/sh", Accept::AnyOrVerified, v).unwrap_err();
        assert_eq!(err.code, 2);
        assert!(
            err.message.contains("TRIBIST_VERIFIED_DIR"),
            "{}",
            err.message
        );
        let err = Binary::parse("/nonexistent-verified/../bin/sh", Accept::Runnable, v);
        assert_eq!(err.unwrap_err().code, 2);
    }

    #[test]
    fn a_verified_copy_must_be_out_of_everyone_elses_reach() {
        let t = crate::host::releases::tests::TempDir::new("verified");
        let me = unsafe { libc::geteuid() };
        let dir = t.path().join("bin");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let bin = dir.join("server-abc");
        std::fs::write(&bin, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(verified_binary(&bin, &dir, me).unwrap(), bin);
        // Group-writable directory, or file: refused.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o775)).unwrap();
        assert_eq!(verified_binary(&bin, &dir, me).unwrap_err().code, 2);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o775)).unwrap();
        assert_eq!(verified_binary(&bin, &dir, me).unwrap_err().code, 2);
        // A file of another owner: refused.
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(verified_binary(&bin, &dir, me + 1).unwrap_err().code, 2);
        assert!(verified_binary(&bin, &dir, me).is_ok());
        // A link in the directory, even to a good file: refused.
        std::os::unix::fs::symlink(&bin, dir.join("link")).unwrap();
        assert_eq!(
            verified_binary(&dir.join("link"), &dir, me)
                .unwrap_err()
                .code,
            2
        );
        // Not directly in it.
        assert_eq!(verified_binary(&bin, t.path(), me).unwrap_err().code, 2);
    }
}
