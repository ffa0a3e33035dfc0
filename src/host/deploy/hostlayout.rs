//! Making the ownership table true on a host (install's `make_layout`): users `tribist` and
//! `tribistd`, and every directory and root file of `host::layout::LAYOUT`, from that table
//! alone. Anything in the way that user tribist could have put there (inside its home, which
//! an older layout let it own) is moved — never opened or followed — into a root-only
//! `/home/tribist/.quarantine-DATE-XXXXXXXX` and named; a symbolic link or a file of the
//! wrong kind where one of root's directories belongs elsewhere is refused (only root could
//! have put it there). Each directory is made with `mkdirat`, then opened without following
//! a link and given its owner and mode through that descriptor.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::steps::run_root;
use super::{as_tribist, paths, say, warn, Fail, Result};
use crate::host::child::{self, ExitKind};
use crate::host::fsx::{self, Dir, Limits, Stat};
use crate::host::layout::{self, Entry, Ids, Kind, Who, LAYOUT};
use crate::host::text::clean;

/// Paths an older layout left that root must never use again: moved aside whatever they are.
pub const LEFT_BY_OLDER: &[&str] = &["/home/tribist/deploy-audit.log"];

/// Entries this step does not make: systemd's runtime directory, the home directory (made
/// first, by itself), and the files later steps write (or that are optional).
fn made_here(e: &Entry) -> bool {
    match e.kind {
        Kind::Dir => e.path != "/run/tribist" && e.path != paths::HOME_DIR,
        Kind::File => [paths::LOCK_FILE, paths::AUDIT_LOG].contains(&e.path),
    }
}

/// Whether tribist could have planted something at `path` (its home was its own once).
pub fn plantable(path: &str) -> bool {
    path.strip_prefix(paths::HOME_DIR)
        .is_some_and(|rest| rest.starts_with('/'))
}

/// What to do with what is at an entry's path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Absent,
    /// The right kind and owner, writable by its owner alone: kept (group and mode are set
    /// exactly afterwards).
    Keep,
    /// Moved aside, for this reason.
    Quarantine(String),
    /// Refused, for this reason: only root could have put it there.
    Refuse(String),
}

fn who(ids: &Ids, w: Who) -> u32 {
    match w {
        Who::Root => ids.root.0,
        Who::Tribist => ids.tribist.0,
        Who::Service => ids.service.0,
    }
}

fn who_name(w: Who) -> &'static str {
    match w {
        Who::Root => "root",
        Who::Tribist => "tribist",
        Who::Service => "tribistd",
    }
}

/// deploy.sh's `expect`, from the table: a `kind` (never a link) of its owner, writable by
/// that owner alone. Inside tribist's home anything else is moved aside; elsewhere a link
/// or another kind is refused, and an owner or mode is simply set right.
pub fn verdict(e: &Entry, st: Option<&Stat>, ids: &Ids) -> Verdict {
    let Some(st) = st else {
        return Verdict::Absent;
    };
    let want = match e.kind {
        Kind::Dir => "directory",
        Kind::File => "regular file",
    };
    let kind_ok = match e.kind {
        Kind::Dir => st.is_dir(),
        Kind::File => st.is_regular(),
    };
    let why = if st.is_symlink() {
        Some(format!("a symbolic link, not a {want}"))
    } else if !kind_ok {
        Some(format!("a {}, not a {want}", st.kind()))
    } else {
        None
    };
    if let Some(why) = why {
        return if plantable(e.path) {
            Verdict::Quarantine(why)
        } else {
            Verdict::Refuse(why)
        };
    }
    if plantable(e.path) {
        if st.uid != who(ids, e.owner) {
            return Verdict::Quarantine(format!(
                "owned by uid {}, not {}",
                st.uid,
                who_name(e.owner)
            ));
        }
        if st.mode & 0o022 != 0 {
            return Verdict::Quarantine(format!(
                "mode {:04o}: others than its owner can write to it",
                st.perm()
            ));
        }
    }
    Verdict::Keep
}

/// The quarantine directory of this run, made when first needed.
#[derive(Default)]
pub struct Quarantine {
    dir: Option<(Dir, String)>,
}

impl Quarantine {
    /// Moves `path` (inside the home directory, which is root's by now) into the quarantine
    /// directory, by `renameat`: it is not opened and nothing in it is followed.
    pub fn take(&mut self, path: &str, why: &str) -> Result<()> {
        let p = Path::new(path);
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let parent = Dir::open(p.parent().unwrap_or(Path::new("/"))).map_err(|e| {
            Fail::failed(format!(
                "{e}; move it away by hand, then make install again"
            ))
        })?;
        if self.dir.is_none() {
            let home = Dir::open(paths::HOME_DIR).map_err(|e| Fail::failed(e.to_string()))?;
            let date: String = crate::host::audit::utc_seconds(SystemTime::now())[..10]
                .chars()
                .filter(|c| c.is_ascii_digit())
                .collect();
            let qname = format!(".quarantine-{date}-{}", random_word(8));
            mkdir_at(&home, &qname, 0o700).map_err(|e| {
                Fail::failed(format!("cannot make {}/{qname}: {e}", paths::HOME_DIR))
            })?;
            let q = home
                .open_at(&qname)
                .map_err(|e| Fail::failed(e.to_string()))?;
            owner_mode(q.as_fd(), 0, 0, 0o700).map_err(|e| {
                Fail::failed(format!("cannot set up {}/{qname}: {e}", paths::HOME_DIR))
            })?;
            self.dir = Some((q, format!("{}/{qname}", paths::HOME_DIR)));
        }
        let (q, shown) = self.dir.as_ref().expect("made above");
        fsx::renameat(&parent, name, q, name).map_err(|e| {
            Fail::failed(format!(
                "{e}; move it away by hand, then make install again"
            ))
        })?;
        let _ = fsx::fsync_dir(&parent);
        warn(&format!(
            "moved aside {path} ({why}; not what install expects there): now in {shown}; inspect it, then delete it"
        ));
        Ok(())
    }
}

/// `len` letters and digits from the system's random source.
pub fn random_word(len: usize) -> String {
    use ring::rand::SecureRandom;
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = vec![0u8; len];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        let n = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
            ^ u128::from(std::process::id());
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (n >> (i * 5)) as u8;
        }
    }
    bytes
        .iter()
        .map(|b| ABC[usize::from(*b) % ABC.len()] as char)
        .collect()
}

/// `mkdirat(dir, name, mode)`; an existing entry is an error (EEXIST).
pub fn mkdir_at(dir: &Dir, name: &str, mode: u32) -> std::io::Result<()> {
    let c = fsx::check_name(name)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: c is NUL-terminated; the descriptor is live.
    let r = unsafe { libc::mkdirat(dir.as_fd().as_raw_fd(), c.as_ptr(), mode as libc::mode_t) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// fchown and fchmod of a descriptor (chown first: it clears set-id bits).
pub fn owner_mode(fd: BorrowedFd<'_>, uid: u32, gid: u32, mode: u32) -> std::io::Result<()> {
    // SAFETY: fchown and fchmod on a live descriptor.
    unsafe {
        if libc::fchown(fd.as_raw_fd(), uid, gid) != 0
            || libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn lstat_opt(path: &str) -> Result<Option<Stat>> {
    match fsx::lstat(Path::new(path)) {
        Ok(st) => Ok(Some(st)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Fail::failed(format!("cannot look at {path}: {e}"))),
    }
}

fn split(path: &str) -> (&str, &str) {
    let p = Path::new(path);
    (
        p.parent().and_then(|d| d.to_str()).unwrap_or("/"),
        p.file_name().and_then(|n| n.to_str()).unwrap_or(""),
    )
}

/// The ids `w` means, as (uid, gid).
fn ids_of(ids: &Ids, w: Who) -> (u32, u32) {
    match w {
        Who::Root => ids.root,
        Who::Tribist => ids.tribist,
        Who::Service => ids.service,
    }
}

/// Makes directory entry `e` if missing, then sets its owner, group and mode exactly,
/// through a descriptor opened without following a link.
fn make_dir(e: &Entry, ids: &Ids) -> Result<()> {
    let (parent, name) = split(e.path);
    let pd = Dir::open(parent)
        .map_err(|err| Fail::failed(format!("{err}; make install puts the layout right")))?;
    match mkdir_at(&pd, name, 0o700) {
        Ok(()) => {}
        Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {}
        Err(err) => return Err(Fail::failed(format!("cannot make {}: {err}", e.path))),
    }
    let d = pd
        .open_at(name)
        .map_err(|err| Fail::failed(format!("{err}; move it away, then make install again")))?;
    let (uid, _) = ids_of(ids, e.owner);
    let (_, gid) = ids_of(ids, e.group);
    owner_mode(d.as_fd(), uid, gid, e.mode).map_err(|err| {
        Fail::failed(format!(
            "cannot set the owner and mode of {}: {err}",
            e.path
        ))
    })
}

/// Makes file entry `e` (empty) if it is not a regular file, else sets its owner and mode.
fn make_file(e: &Entry, ids: &Ids) -> Result<()> {
    let (parent, name) = split(e.path);
    let pd = Dir::open(parent)
        .map_err(|err| Fail::failed(format!("{err}; make install puts the layout right")))?;
    let (uid, _) = ids_of(ids, e.owner);
    let (_, gid) = ids_of(ids, e.group);
    match fsx::open_regular_at(
        &pd,
        name,
        Limits {
            owner: None,
            max_size: u64::MAX,
        },
    ) {
        Ok(r) => owner_mode(r.file.as_fd(), uid, gid, e.mode).map_err(|err| {
            Fail::failed(format!(
                "cannot set the owner and mode of {}: {err}",
                e.path
            ))
        }),
        // Missing, or a link or another kind: a new empty file renamed over it.
        Err(_) => fsx::write_atomic_at(&pd, name, b"", e.mode, Some((uid, gid)))
            .map_err(|err| Fail::failed(format!("{err}; move it away, then make install again"))),
    }
}

/// Whether user `name` exists.
pub fn user_exists(name: &str) -> bool {
    child::user_ids(name).is_some()
}

fn must(o: child::Outcome, what: &str) -> Result<()> {
    if o.status == ExitKind::Exited(0) {
        return Ok(());
    }
    Err(Fail::failed(format!(
        "{what} failed ({}): {}",
        o.status,
        clean(format!("{}{}", o.stderr, o.stdout).trim().as_bytes(), 300)
    )))
}

/// Users tribist (the deploy user: key-only logins) and tribistd (the service's), created
/// when missing.
pub fn make_users() -> Result<()> {
    let t = Duration::from_secs(30);
    if !user_exists(paths::USER_NAME) {
        must(
            run_root(
                "/usr/sbin/useradd",
                &[
                    "--system",
                    "--user-group",
                    "--home-dir",
                    paths::HOME_DIR,
                    "--no-create-home",
                    "--shell",
                    "/bin/bash",
                    paths::USER_NAME,
                ],
                t,
            )?,
            "useradd tribist",
        )?;
        say(&format!("created user {}", paths::USER_NAME));
    }
    // No password, but not locked either: key-only ssh logins (DEPLOY_KEY) must work.
    must(
        run_root("/usr/sbin/usermod", &["-p", "*", paths::USER_NAME], t)?,
        "usermod -p '*' tribist",
    )?;
    if !user_exists(paths::SERVICE_USER) {
        must(
            run_root(
                "/usr/sbin/useradd",
                &[
                    "--system",
                    "--user-group",
                    "--home-dir",
                    "/nonexistent",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    paths::SERVICE_USER,
                ],
                t,
            )?,
            "useradd tribistd",
        )?;
        say(&format!(
            "created user {} (the service runs as it)",
            paths::SERVICE_USER
        ));
    }
    Ok(())
}

/// Public keys, one a line, no options: `(keys, all_valid)`, the keys being the valid lines
/// before the first that is not (deploy.sh's `valid_keys`). Blank and `#` lines are skipped.
pub fn valid_keys(text: &str) -> (Vec<String>, bool) {
    let mut keys = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if !key_line_ok(line) {
            return (keys, false);
        }
        keys.push(line.to_string());
    }
    let ok = !keys.is_empty();
    (keys, ok)
}

fn key_line_ok(line: &str) -> bool {
    let (kind, rest) = match line.split_once(' ') {
        Some(x) => x,
        None => return false,
    };
    let word = |s: &str, extra: &[u8]| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || extra.contains(&b))
    };
    let kind_ok = kind.strip_prefix("ssh-").is_some_and(|k| word(k, b"-"))
        || kind
            .strip_prefix("ecdsa-sha2-")
            .is_some_and(|k| word(k, b"-"))
        || kind.strip_prefix("sk-").is_some_and(|k| word(k, b"@.-"));
    let (blob, comment) = match rest.split_once(' ') {
        Some((b, c)) => (b, Some(c)),
        None => (rest, None),
    };
    let body = blob.trim_end_matches('=');
    let blob_ok = !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/');
    let comment_ok = comment.is_none_or(|c| c.bytes().all(|b| (0x20..0x7f).contains(&b)));
    kind_ok && blob_ok && comment_ok
}

/// The keys of an older layout's `authorized_keys` (tribist's own, in a home it owned),
/// read as tribist: they only ever granted what tribist has.
fn old_keys() -> Vec<String> {
    let path = format!("{}/authorized_keys", paths::SSH_DIR);
    match as_tribist(
        "/usr/bin/head",
        &["-c", "65536", "--", &path],
        None,
        Duration::from_secs(15),
    ) {
        Ok(o) if o.status == ExitKind::Exited(0) => valid_keys(&o.stdout).0,
        _ => Vec::new(),
    }
}

/// The layout of the ownership table (`host::layout::LAYOUT`), made true: see the module's
/// comment. Prints what it moved aside.
pub fn make_layout(q: &mut Quarantine) -> Result<()> {
    make_users()?;
    let ids =
        Ids::host().map_err(|u| Fail::failed(format!("user {u} is missing after useradd")))?;
    // /home is root's, so /home/tribist itself cannot be swapped; once it is root's too,
    // tribist can no longer create, rename or remove anything directly in it.
    let home = lstat_opt(paths::HOME_DIR)?;
    if home.is_some_and(|st| !st.is_dir()) {
        return Err(Fail::failed(format!(
            "{} is not a directory; move it away and run make install again",
            paths::HOME_DIR
        )));
    }
    let mut keys = Vec::new();
    if home.is_some_and(|st| st.uid == ids.tribist.0)
        && lstat_opt(paths::SSH_DIR)?.is_some_and(|st| st.is_dir())
    {
        // An older layout: tribist's own authorized_keys. Kept, so that a re-install does
        // not lock the deploy key out.
        keys = old_keys();
    }
    let home_entry = layout::entry(paths::HOME_DIR).expect("the home directory is in the table");
    make_dir(home_entry, &ids)?;
    for path in LEFT_BY_OLDER {
        if lstat_opt(path)?.is_some() {
            q.take(path, "left by an older layout")?;
        }
    }
    for e in LAYOUT.iter() {
        let checked = e.kind == Kind::Dir || made_here(e) || plantable(e.path);
        if !checked || e.path == paths::HOME_DIR || e.path == "/run/tribist" {
            continue;
        }
        match verdict(e, lstat_opt(e.path)?.as_ref(), &ids) {
            Verdict::Quarantine(why) => q.take(e.path, &why)?,
            Verdict::Refuse(why) => {
                return Err(Fail::failed(format!(
                    "{} is {why}; move it away and run make install again",
                    e.path
                )))
            }
            Verdict::Absent | Verdict::Keep => {}
        }
        if made_here(e) {
            match e.kind {
                Kind::Dir => make_dir(e, &ids)?,
                Kind::File => make_file(e, &ids)?,
            }
        }
    }
    let auth = format!("{}/authorized_keys", paths::SSH_DIR);
    if !keys.is_empty() && lstat_opt(&auth)?.is_none() {
        let ssh = Dir::open(paths::SSH_DIR).map_err(|e| Fail::failed(e.to_string()))?;
        let text = keys.join("\n") + "\n";
        fsx::write_atomic_at(
            &ssh,
            "authorized_keys",
            text.as_bytes(),
            0o644,
            Some((0, 0)),
        )
        .map_err(|e| Fail::failed(e.to_string()))?;
        say(&format!(
            "kept tribist's authorised keys in the now root-owned {auth}"
        ));
    }
    Ok(())
}

/// Authorises the keys in `text` (a DEPLOY_KEY file) for tribist: added to the root-owned
/// `authorized_keys` unless there already, written atomically.
pub fn authorise_keys(text: &str) -> Result<()> {
    let (keys, ok) = valid_keys(text);
    if !ok {
        return Err(Fail::failed(
            "DEPLOY_KEY is not a public key file (one key per line, no options)",
        ));
    }
    let ssh = Dir::open(paths::SSH_DIR)
        .map_err(|e| Fail::failed(format!("{e}; make install puts the layout right")))?;
    let mut have = match fsx::open_regular_at(
        &ssh,
        "authorized_keys",
        Limits {
            owner: Some(0),
            max_size: 1 << 20,
        },
    ) {
        Ok(r) => String::from_utf8_lossy(
            &fsx::read_bounded(&r.file, 1 << 20, "authorized_keys")
                .map_err(|e| Fail::failed(e.to_string()))?,
        )
        .into_owned(),
        Err(fsx::FsError::Io { err, .. }) if err.kind() == std::io::ErrorKind::NotFound => {
            String::new()
        }
        Err(e) => {
            return Err(Fail::failed(format!(
                "{e}; make install puts the layout right"
            )))
        }
    };
    for key in keys {
        if !have.lines().any(|l| l == key) {
            if !have.is_empty() && !have.ends_with('\n') {
                have.push('\n');
            }
            have.push_str(&key);
            have.push('\n');
        }
    }
    fsx::write_atomic_at(
        &ssh,
        "authorized_keys",
        have.as_bytes(),
        0o644,
        Some((0, 0)),
    )
    .map_err(|e| Fail::failed(e.to_string()))?;
    say(&format!(
        "authorised the deploy key for {}",
        paths::USER_NAME
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::testutil::TempDir;

    fn ids() -> Ids {
        Ids {
            root: (0, 0),
            tribist: (999, 999),
            service: (998, 998),
        }
    }

    fn stat_of(path: &Path) -> Stat {
        fsx::lstat(path).unwrap()
    }

    #[test]
    fn what_is_in_the_way_is_moved_aside_or_refused() {
        let t = TempDir::new("verdict");
        let dir = t.join("d");
        let file = t.join("f");
        let link = t.join("l");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(&file, b"x").unwrap();
        std::os::unix::fs::symlink("/etc", &link).unwrap();
        // SAFETY: no preconditions.
        let me = unsafe { libc::geteuid() };
        let mine = Ids {
            root: (me, me),
            tribist: (me + 1, me + 1),
            service: (me + 2, me + 2),
        };
        let bin = layout::entry("/home/tribist/bin").unwrap();
        let api = layout::entry("/home/tribist/api").unwrap();
        let state = layout::entry("/var/lib/tribist-deploy/bin").unwrap();
        let keys = layout::entry("/home/tribist/.ssh/authorized_keys").unwrap();
        assert_eq!(verdict(bin, None, &mine), Verdict::Absent);
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        assert_eq!(verdict(bin, Some(&stat_of(&dir)), &mine), Verdict::Keep);
        // In tribist's home: a link, another kind, another owner, a writable mode.
        assert!(
            matches!(verdict(bin, Some(&stat_of(&link)), &mine), Verdict::Quarantine(w) if w == "a symbolic link, not a directory")
        );
        assert!(
            matches!(verdict(bin, Some(&stat_of(&file)), &mine), Verdict::Quarantine(w) if w == "a regular file, not a directory")
        );
        assert!(
            matches!(verdict(api, Some(&stat_of(&dir)), &mine), Verdict::Quarantine(w) if w.starts_with("owned by uid"))
        );
        assert!(matches!(
            verdict(keys, Some(&stat_of(&dir)), &mine),
            Verdict::Quarantine(_)
        ));
        assert_eq!(verdict(keys, Some(&stat_of(&file)), &mine), Verdict::Keep);
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o775))
            .unwrap();
        assert!(
            matches!(verdict(bin, Some(&stat_of(&dir)), &mine), Verdict::Quarantine(w) if w.contains("0775"))
        );
        // Outside it: a link refused; an owner or mode is set right, not refused.
        assert!(matches!(
            verdict(state, Some(&stat_of(&link)), &mine),
            Verdict::Refuse(_)
        ));
        // Outside it (root's directories), another owner or mode is set right afterwards.
        assert_eq!(verdict(state, Some(&stat_of(&dir)), &ids()), Verdict::Keep);
    }

    #[test]
    fn the_table_decides_what_is_made() {
        let made: Vec<&str> = LAYOUT
            .iter()
            .filter(|e| made_here(e))
            .map(|e| e.path)
            .collect();
        assert!(made.contains(&"/home/tribist/api"));
        assert!(made.contains(&"/var/lib/tribist-deploy/bin"));
        assert!(made.contains(&"/etc/systemd/system/tribist.socket.d"));
        assert!(made.contains(&paths::LOCK_FILE) && made.contains(&paths::AUDIT_LOG));
        assert!(!made.contains(&"/run/tribist"));
        assert!(!made.contains(&paths::ENV_FILE));
        assert!(plantable("/home/tribist/bin") && plantable("/home/tribist/.ssh/authorized_keys"));
        assert!(
            !plantable("/home/tribist")
                && !plantable("/home/tribistx/a")
                && !plantable("/etc/tribist")
        );
        assert!(LEFT_BY_OLDER.iter().all(|p| plantable(p)));
    }

    #[test]
    fn keys() {
        let k = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB tribist-deploy";
        assert_eq!(
            valid_keys(&format!("# c\n\n{k}\n")),
            (vec![k.to_string()], true)
        );
        assert_eq!(
            valid_keys("ecdsa-sha2-nistp256 AAAA== x\nsk-ssh-ed25519@openssh.com AAAA"),
            (
                vec![
                    "ecdsa-sha2-nistp256 AAAA== x".to_string(),
                    "sk-ssh-ed25519@openssh.com AAAA".to_string()
                ],
                true
            )
        );
        for bad in [
            format!("command=\"touch /tmp/x\" {k}"),
            "ssh-rsa".to_string(),
            "ssh-rsa AAAA$ x".to_string(),
            format!("{k}\u{1b}[2J"),
            "".to_string(),
            "# only a comment".to_string(),
        ] {
            assert!(!valid_keys(&bad).1, "{bad:?}");
        }
        // The valid keys before the first line that is not one.
        assert_eq!(
            valid_keys(&format!("{k}\nbad line\n{k}")),
            (vec![k.to_string()], false)
        );
    }

    #[test]
    fn random_words_are_letters_and_digits() {
        let a = random_word(8);
        assert_eq!(a.len(), 8);
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(a, random_word(8));
    }

    #[test]
    fn directories_are_made_and_set_through_descriptors() {
        let t = TempDir::new("mkdir");
        let d = Dir::open(t.path()).unwrap();
        mkdir_at(&d, "x", 0o700).unwrap();
        assert_eq!(
            mkdir_at(&d, "x", 0o700).unwrap_err().raw_os_error(),
            Some(libc::EEXIST)
        );
        let x = d.open_at("x").unwrap();
        // SAFETY: no preconditions.
        let (u, g) = unsafe { (libc::geteuid(), libc::getegid()) };
        owner_mode(x.as_fd(), u, g, 0o750).unwrap();
        assert_eq!(stat_of(&t.join("x")).perm(), 0o750);
    }
}
