//! Files and directories reached through descriptors, so that a symlink or a rename planted
//! between a check and a use cannot redirect root.
//!
//! Why: user tribist may rename, replace or symlink anything in `api/` at any instant
//! (docs/deploying.md, "Who owns what on the host"). A check by name followed by a use by name
//! checks one file and uses another: root audited one binary while another ran (issue 18).
//! Here a file is opened once, without following a link at its last component, checked with
//! `fstat` on that descriptor, and read, hashed and copied from the same descriptor; every
//! later step (`fchmod`, `fsync`, `renameat`, `linkat`) is relative to a directory
//! descriptor, never a path read again. Names are single components. Every descriptor is
//! close-on-exec.
//!
//! Only libc functions glibc 2.17 has are called (the release binary's floor).

use std::ffi::CString;
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::host::digest::{Hasher, Sha256};
use crate::host::text::clean;

/// What went wrong with a file or directory, naming it. The caller adds the command that
/// fixes it (it knows which: `make install` for the layout, a new upload for a binary).
#[derive(Debug)]
pub enum FsError {
    /// Not a single path component.
    BadName {
        name: String,
    },
    /// A symbolic link where a file or directory was expected; never followed.
    Symlink {
        path: String,
        target: String,
    },
    NotDirectory {
        path: String,
        kind: &'static str,
    },
    NotRegular {
        path: String,
        kind: &'static str,
    },
    Owner {
        path: String,
        uid: u32,
        want: u32,
    },
    TooLarge {
        path: String,
        size: u64,
        max: u64,
    },
    /// The bytes read do not have the expected SHA-256; nothing was left behind.
    Mismatch {
        path: String,
        got: Sha256,
        want: Sha256,
    },
    Io {
        op: &'static str,
        path: String,
        err: io::Error,
    },
}

impl fmt::Display for FsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsError::BadName { name } => write!(
                f,
                "\"{}\" is not a single file name (empty, '.', '..' or with a '/')",
                clean(name.as_bytes(), 100)
            ),
            FsError::Symlink { path, target } => write!(
                f,
                "{path} is a symbolic link (to {target}), not the file itself; refused, never followed"
            ),
            FsError::NotDirectory { path, kind } => write!(f, "{path} is a {kind}, not a directory"),
            FsError::NotRegular { path, kind } => write!(f, "{path} is a {kind}, not a regular file"),
            FsError::Owner { path, uid, want } => {
                write!(f, "{path} is owned by uid {uid}, not uid {want}; refused")
            }
            FsError::TooLarge { path, size, max } => {
                write!(f, "{path} has {size} bytes or more, more than the {max} allowed")
            }
            FsError::Mismatch { path, got, want } => write!(
                f,
                "{path}: the bytes read have SHA-256 {got}, not the expected {want}; nothing was written"
            ),
            FsError::Io { op, path, err } => write!(f, "{op} {path}: {err}"),
        }
    }
}

impl std::error::Error for FsError {}

pub type Result<T> = std::result::Result<T, FsError>;

/// What `fstat`/`lstat` said, in plain types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    pub dev: u64,
    pub ino: u64,
    pub mode: u32,
    pub nlink: u64,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
}

impl Stat {
    fn from_raw(st: &libc::stat) -> Stat {
        Stat {
            dev: st.st_dev,
            ino: st.st_ino,
            mode: st.st_mode,
            // u32 on some targets (aarch64), u64 on x86_64.
            #[allow(clippy::useless_conversion)]
            nlink: u64::from(st.st_nlink),
            uid: st.st_uid,
            gid: st.st_gid,
            size: u64::try_from(st.st_size).unwrap_or(0),
        }
    }
    fn fmt_bits(&self) -> u32 {
        self.mode & libc::S_IFMT
    }
    pub fn is_dir(&self) -> bool {
        self.fmt_bits() == libc::S_IFDIR
    }
    pub fn is_regular(&self) -> bool {
        self.fmt_bits() == libc::S_IFREG
    }
    pub fn is_symlink(&self) -> bool {
        self.fmt_bits() == libc::S_IFLNK
    }
    /// The permission bits (with setuid, setgid and sticky).
    pub fn perm(&self) -> u32 {
        self.mode & 0o7777
    }
    /// "directory", "regular file", "symbolic link", "FIFO", …
    pub fn kind(&self) -> &'static str {
        match self.fmt_bits() {
            libc::S_IFDIR => "directory",
            libc::S_IFREG => "regular file",
            libc::S_IFLNK => "symbolic link",
            libc::S_IFIFO => "FIFO",
            libc::S_IFSOCK => "socket",
            libc::S_IFCHR => "character device",
            libc::S_IFBLK => "block device",
            _ => "file of unknown type",
        }
    }
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `fstat` of any descriptor.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<Stat> {
    // SAFETY: a zeroed stat is a valid out-buffer; fd is a live descriptor.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        cvt(libc::fstat(fd.as_raw_fd(), &mut st))?;
        Ok(Stat::from_raw(&st))
    }
}

/// `lstat` of a path (a link is described, never followed). For checks only: anything used
/// afterwards is opened through a [`Dir`].
pub fn lstat(path: &Path) -> io::Result<Stat> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: c is NUL-terminated; st is a valid out-buffer.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        cvt(libc::lstat(c.as_ptr(), &mut st))?;
        Ok(Stat::from_raw(&st))
    }
}

/// The target of a symbolic link, printable and bounded (for messages only).
fn link_target(dirfd: RawFd, name: &CString) -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is writable for its length; name is NUL-terminated.
    let n = unsafe { libc::readlinkat(dirfd, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return "?".into();
    }
    clean(&buf[..n as usize], 200)
}

fn fstatat_nofollow(dirfd: RawFd, name: &CString) -> io::Result<Stat> {
    // SAFETY: name is NUL-terminated; st is a valid out-buffer.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        cvt(libc::fstatat(
            dirfd,
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        ))?;
        Ok(Stat::from_raw(&st))
    }
}

/// A name that is one path component: not empty, not `.` or `..`, no `/` or NUL.
pub fn check_name(name: &str) -> Result<CString> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.len() > 255 {
        return Err(FsError::BadName { name: name.into() });
    }
    CString::new(name).map_err(|_| FsError::BadName { name: name.into() })
}

/// Why opening `name` in `dirfd` failed with `err`, looked at without following anything:
/// a symbolic link, a file of another kind, or the error itself.
fn explain(dirfd: RawFd, name: &CString, path: String, err: io::Error, want_dir: bool) -> FsError {
    match fstatat_nofollow(dirfd, name) {
        Ok(st) if st.is_symlink() => FsError::Symlink {
            target: link_target(dirfd, name),
            path,
        },
        Ok(st) if want_dir && !st.is_dir() => FsError::NotDirectory {
            path,
            kind: st.kind(),
        },
        _ => FsError::Io {
            op: "cannot open",
            path,
            err,
        },
    }
}

/// A directory, open (read-only, close-on-exec, never through a symbolic link at its last
/// component): the base of every `*at` call here.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    shown: String,
}

const DIR_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY;

impl Dir {
    /// Opens the directory at `path`, refusing a symbolic link at its last component (the
    /// components before it are root's directories such as `/home`, `/var/lib`).
    pub fn open(path: impl AsRef<Path>) -> Result<Dir> {
        let path = path.as_ref();
        let shown = clean(path.as_os_str().as_bytes(), 300);
        let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| FsError::BadName {
            name: shown.clone(),
        })?;
        // SAFETY: c is NUL-terminated.
        let fd = unsafe { libc::open(c.as_ptr(), DIR_FLAGS) };
        if fd < 0 {
            let err = io::Error::last_os_error();
            return Err(explain(libc::AT_FDCWD, &c, shown, err, true));
        }
        // SAFETY: fd was just opened and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Dir { fd, shown })
    }

    /// Opens directory `name` (one component) inside this one, refusing a symbolic link.
    pub fn open_at(&self, name: &str) -> Result<Dir> {
        let c = check_name(name)?;
        let shown = self.shown_name(name);
        // SAFETY: c is NUL-terminated, self.fd is live.
        let fd = unsafe { libc::openat(self.fd.as_raw_fd(), c.as_ptr(), DIR_FLAGS) };
        if fd < 0 {
            let err = io::Error::last_os_error();
            return Err(explain(self.fd.as_raw_fd(), &c, shown, err, true));
        }
        // SAFETY: fd was just opened and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Dir { fd, shown })
    }

    pub fn fstat(&self) -> Result<Stat> {
        fstat(self.fd.as_fd()).map_err(|err| FsError::Io {
            op: "cannot fstat",
            path: self.shown.clone(),
            err,
        })
    }

    /// `fstatat(…, AT_SYMLINK_NOFOLLOW)` of `name` in this directory.
    pub fn lstat_at(&self, name: &str) -> Result<Stat> {
        let c = check_name(name)?;
        fstatat_nofollow(self.fd.as_raw_fd(), &c).map_err(|err| FsError::Io {
            op: "cannot stat",
            path: self.shown_name(name),
            err,
        })
    }

    /// The path this directory was opened as, for messages.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// `dir/name`, for messages.
    pub fn shown_name(&self, name: &str) -> String {
        format!(
            "{}/{}",
            self.shown.trim_end_matches('/'),
            clean(name.as_bytes(), 255)
        )
    }
}

impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// What [`open_regular_at`] requires of a file.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The uid that must own it, if any.
    pub owner: Option<u32>,
    /// The most bytes it may have.
    pub max_size: u64,
}

/// A regular file opened by [`open_regular_at`], with what `fstat` said of that descriptor
/// (`stat.nlink` is its link count).
#[derive(Debug)]
pub struct Regular {
    pub file: File,
    pub stat: Stat,
}

/// Opens regular file `name` in `dir` for reading: never through a symbolic link, never
/// blocking on a FIFO, never becoming a controlling terminal; then checks the descriptor
/// itself (`fstat`): a regular file, of `limits.owner`, at most `limits.max_size` bytes.
pub fn open_regular_at(dir: &Dir, name: &str, limits: Limits) -> Result<Regular> {
    let c = check_name(name)?;
    let path = dir.shown_name(name);
    let flags =
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY;
    // SAFETY: c is NUL-terminated, dir.fd is live.
    let fd = unsafe { libc::openat(dir.fd.as_raw_fd(), c.as_ptr(), flags) };
    if fd < 0 {
        let err = io::Error::last_os_error();
        return Err(explain(dir.fd.as_raw_fd(), &c, path, err, false));
    }
    // SAFETY: fd was just opened and is owned by nothing else.
    let file = unsafe { File::from_raw_fd(fd) };
    let stat = fstat(file.as_fd()).map_err(|err| FsError::Io {
        op: "cannot fstat",
        path: path.clone(),
        err,
    })?;
    if !stat.is_regular() {
        return Err(FsError::NotRegular {
            path,
            kind: stat.kind(),
        });
    }
    if let Some(want) = limits.owner {
        if stat.uid != want {
            return Err(FsError::Owner {
                path,
                uid: stat.uid,
                want,
            });
        }
    }
    if stat.size > limits.max_size {
        return Err(FsError::TooLarge {
            path,
            size: stat.size,
            max: limits.max_size,
        });
    }
    set_blocking(file.as_fd()).map_err(|err| FsError::Io {
        op: "cannot clear O_NONBLOCK on",
        path,
        err,
    })?;
    Ok(Regular { file, stat })
}

fn set_blocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fcntl on a live descriptor.
    unsafe {
        let flags = cvt(libc::fcntl(fd.as_raw_fd(), libc::F_GETFL))?;
        cvt(libc::fcntl(
            fd.as_raw_fd(),
            libc::F_SETFL,
            flags & !libc::O_NONBLOCK,
        ))?;
    }
    Ok(())
}

/// Reads `file` from where it is to its end, refusing more than `max` bytes.
pub fn read_bounded(file: &File, max: u64, shown: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut out)
        .map_err(|err| FsError::Io {
            op: "cannot read",
            path: shown.into(),
            err,
        })?;
    if out.len() as u64 > max {
        return Err(FsError::TooLarge {
            path: shown.into(),
            size: out.len() as u64,
            max,
        });
    }
    Ok(out)
}

/// A new temporary file in `dir` for `name` (`.NAME.tmp.PID.N`), mode 0600, created with
/// `O_EXCL` (so never an existing file or link), and removed on drop unless renamed.
struct Temp<'a> {
    dir: &'a Dir,
    name: CString,
    file: File,
    done: bool,
}

impl<'a> Temp<'a> {
    fn create(dir: &'a Dir, name: &str) -> Result<Temp<'a>> {
        static N: AtomicU64 = AtomicU64::new(0);
        let flags = libc::O_WRONLY
            | libc::O_CREAT
            | libc::O_EXCL
            | libc::O_CLOEXEC
            | libc::O_NOFOLLOW
            | libc::O_NOCTTY;
        let mut attempts = 0;
        loop {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let tmp = format!(
                ".{}.tmp.{}.{}{:x}",
                name.get(..100).unwrap_or(name),
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed),
                nanos
            );
            let c = check_name(&tmp)?;
            // SAFETY: c is NUL-terminated, dir.fd is live.
            let fd = unsafe {
                libc::openat(dir.fd.as_raw_fd(), c.as_ptr(), flags, 0o600 as libc::c_uint)
            };
            if fd >= 0 {
                return Ok(Temp {
                    dir,
                    name: c,
                    // SAFETY: fd was just opened and is owned by nothing else.
                    file: unsafe { File::from_raw_fd(fd) },
                    done: false,
                });
            }
            let err = io::Error::last_os_error();
            attempts += 1;
            if err.raw_os_error() != Some(libc::EEXIST) || attempts >= 20 {
                return Err(FsError::Io {
                    op: "cannot create a temporary file in",
                    path: dir.shown.clone(),
                    err,
                });
            }
        }
    }

    fn shown(&self) -> String {
        self.dir
            .shown_name(&String::from_utf8_lossy(self.name.as_bytes()))
    }

    fn io(&self, op: &'static str) -> impl FnOnce(io::Error) -> FsError + '_ {
        move |err| FsError::Io {
            op,
            path: self.shown(),
            err,
        }
    }

    /// fchown (if asked), fchmod, fsync; then renamed over `name` and the directory synced.
    fn finish(mut self, name: &str, mode: u32, owner: Option<(u32, u32)>) -> Result<()> {
        let fd = self.file.as_raw_fd();
        if let Some((uid, gid)) = owner {
            // SAFETY: fchown on a live descriptor.
            cvt(unsafe { libc::fchown(fd, uid, gid) }).map_err(self.io("cannot chown"))?;
        }
        // After fchown, which clears the set-id bits.
        // SAFETY: fchmod on a live descriptor.
        cvt(unsafe { libc::fchmod(fd, mode as libc::mode_t) }).map_err(self.io("cannot chmod"))?;
        self.file.sync_all().map_err(self.io("cannot fsync"))?;
        let to = check_name(name)?;
        // SAFETY: both names are NUL-terminated, dir.fd is live.
        let r = unsafe {
            libc::renameat(
                self.dir.fd.as_raw_fd(),
                self.name.as_ptr(),
                self.dir.fd.as_raw_fd(),
                to.as_ptr(),
            )
        };
        cvt(r).map_err(|err| FsError::Io {
            op: "cannot rename a temporary file over",
            path: self.dir.shown_name(name),
            err,
        })?;
        self.done = true;
        fsync_dir(self.dir)
    }
}

impl Drop for Temp<'_> {
    fn drop(&mut self) {
        if !self.done {
            // SAFETY: name is NUL-terminated, dir.fd is live.
            unsafe { libc::unlinkat(self.dir.fd.as_raw_fd(), self.name.as_ptr(), 0) };
        }
    }
}

/// Copies what `src` holds from where it is (read once, through that descriptor only) to
/// `dst/name`: into a fresh temporary (0600), hashing as it goes; compares with `expect`
/// (on a mismatch nothing is left behind); then mode `mode`, fsync, `renameat` over `name`,
/// fsync of the directory. At most `max` bytes. Returns the SHA-256 of exactly the bytes
/// written, whatever happens to the source's name meanwhile.
pub fn copy_verified(
    src: &File,
    dst: &Dir,
    name: &str,
    mode: u32,
    expect: Option<Sha256>,
    max: u64,
) -> Result<Sha256> {
    check_name(name)?;
    let mut tmp = Temp::create(dst, name)?;
    let mut hasher = Hasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total: u64 = 0;
    let mut reader = src;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => {
                return Err(FsError::Io {
                    op: "cannot read the source of",
                    path: dst.shown_name(name),
                    err,
                })
            }
        };
        total += n as u64;
        if total > max {
            return Err(FsError::TooLarge {
                path: format!("the source of {}", dst.shown_name(name)),
                size: total,
                max,
            });
        }
        hasher.update(&buf[..n]);
        let shown = tmp.shown();
        tmp.file.write_all(&buf[..n]).map_err(|err| FsError::Io {
            op: "cannot write",
            path: shown,
            err,
        })?;
    }
    let got = hasher.finish();
    if let Some(want) = expect {
        if got != want {
            return Err(FsError::Mismatch {
                path: dst.shown_name(name),
                got,
                want,
            });
        }
    }
    tmp.finish(name, mode, None)?;
    Ok(got)
}

/// Replaces `dir/name` with `bytes`, atomically: a temporary, fchown to `owner` (if given),
/// fchmod to `mode`, fsync, `renameat` over `name`, fsync of the directory. Readers see the
/// old file or the new one, never a part, and after a crash one of the two is there.
pub fn write_atomic_at(
    dir: &Dir,
    name: &str,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<()> {
    check_name(name)?;
    let mut tmp = Temp::create(dir, name)?;
    let shown = tmp.shown();
    tmp.file.write_all(bytes).map_err(|err| FsError::Io {
        op: "cannot write",
        path: shown,
        err,
    })?;
    tmp.finish(name, mode, owner)
}

/// `renameat(2)`: `from_dir/from` becomes `to_dir/to` (replacing it); neither name is
/// resolved through a link.
pub fn renameat(from_dir: &Dir, from: &str, to_dir: &Dir, to: &str) -> Result<()> {
    let (a, b) = (check_name(from)?, check_name(to)?);
    // SAFETY: names NUL-terminated, descriptors live.
    let r = unsafe {
        libc::renameat(
            from_dir.fd.as_raw_fd(),
            a.as_ptr(),
            to_dir.fd.as_raw_fd(),
            b.as_ptr(),
        )
    };
    cvt(r).map(|_| ()).map_err(|err| FsError::Io {
        op: "cannot rename",
        path: format!("{} to {}", from_dir.shown_name(from), to_dir.shown_name(to)),
        err,
    })
}

/// `linkat(2)` without `AT_SYMLINK_FOLLOW`: a link at `from` is linked itself, not followed.
/// Fails if `to` exists.
pub fn linkat(from_dir: &Dir, from: &str, to_dir: &Dir, to: &str) -> Result<()> {
    let (a, b) = (check_name(from)?, check_name(to)?);
    // SAFETY: names NUL-terminated, descriptors live.
    let r = unsafe {
        libc::linkat(
            from_dir.fd.as_raw_fd(),
            a.as_ptr(),
            to_dir.fd.as_raw_fd(),
            b.as_ptr(),
            0,
        )
    };
    cvt(r).map(|_| ()).map_err(|err| FsError::Io {
        op: "cannot link",
        path: format!("{} to {}", from_dir.shown_name(from), to_dir.shown_name(to)),
        err,
    })
}

/// `unlinkat(2)` of a file (or a link: it is removed, not followed).
pub fn unlinkat(dir: &Dir, name: &str) -> Result<()> {
    let c = check_name(name)?;
    // SAFETY: name NUL-terminated, descriptor live.
    cvt(unsafe { libc::unlinkat(dir.fd.as_raw_fd(), c.as_ptr(), 0) })
        .map(|_| ())
        .map_err(|err| FsError::Io {
            op: "cannot remove",
            path: dir.shown_name(name),
            err,
        })
}

/// fsync of a directory: its entries (a rename, a new file) survive a crash.
pub fn fsync_dir(dir: &Dir) -> Result<()> {
    // SAFETY: fsync on a live descriptor.
    cvt(unsafe { libc::fsync(dir.fd.as_raw_fd()) })
        .map(|_| ())
        .map_err(|err| FsError::Io {
            op: "cannot fsync",
            path: dir.shown.clone(),
            err,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::testutil::TempDir;
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::time::{Duration, Instant};

    const BIG: Limits = Limits {
        owner: None,
        max_size: 1 << 20,
    };

    fn mkfifo(path: &Path) {
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: c is NUL-terminated.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    /// The names in `dir`, sorted.
    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_symlink_is_refused_and_named() {
        let t = TempDir::new("fsx-link");
        std::fs::write(t.join("real"), b"x").unwrap();
        symlink(t.join("real"), t.join("server")).unwrap();
        std::fs::create_dir(t.join("d")).unwrap();
        symlink(t.join("d"), t.join("dlink")).unwrap();
        let dir = Dir::open(t.path()).unwrap();

        let e = open_regular_at(&dir, "server", BIG).unwrap_err();
        assert!(matches!(e, FsError::Symlink { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("/server is a symbolic link (to "), "{msg}");
        assert!(msg.contains("/real)"), "{msg}");

        assert!(matches!(
            dir.open_at("dlink").unwrap_err(),
            FsError::Symlink { .. }
        ));
        let e = Dir::open(t.join("dlink")).unwrap_err();
        assert!(matches!(e, FsError::Symlink { .. }), "{e:?}");
        assert!(dir.open_at("d").is_ok());
        assert!(matches!(
            dir.open_at("real").unwrap_err(),
            FsError::NotDirectory {
                kind: "regular file",
                ..
            }
        ));
    }

    #[test]
    fn names_are_single_components() {
        let t = TempDir::new("fsx-names");
        std::fs::create_dir(t.join("sub")).unwrap();
        std::fs::write(t.join("sub/f"), b"x").unwrap();
        let dir = Dir::open(t.path()).unwrap();
        for bad in ["", ".", "..", "sub/f", "/etc/passwd", "a\0b"] {
            assert!(
                matches!(
                    open_regular_at(&dir, bad, BIG),
                    Err(FsError::BadName { .. })
                ),
                "{bad:?}"
            );
            assert!(matches!(dir.open_at(bad), Err(FsError::BadName { .. })));
        }
    }

    #[test]
    fn a_fifo_does_not_block_and_is_refused() {
        let t = TempDir::new("fsx-fifo");
        mkfifo(&t.join("server"));
        let dir = Dir::open(t.path()).unwrap();
        let start = Instant::now();
        let e = open_regular_at(&dir, "server", BIG).unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(2));
        assert!(
            matches!(e, FsError::NotRegular { kind: "FIFO", .. }),
            "{e:?}"
        );
        assert!(e
            .to_string()
            .ends_with("/server is a FIFO, not a regular file"));
    }

    #[test]
    fn size_owner_and_link_count() {
        let t = TempDir::new("fsx-size");
        std::fs::write(t.join("big"), vec![7u8; 1001]).unwrap();
        std::fs::hard_link(t.join("big"), t.join("big2")).unwrap();
        let dir = Dir::open(t.path()).unwrap();
        let lim = |max| Limits {
            owner: None,
            max_size: max,
        };
        let e = open_regular_at(&dir, "big", lim(1000)).unwrap_err();
        assert!(
            matches!(
                e,
                FsError::TooLarge {
                    size: 1001,
                    max: 1000,
                    ..
                }
            ),
            "{e:?}"
        );
        let r = open_regular_at(&dir, "big", lim(1001)).unwrap();
        assert_eq!(r.stat.nlink, 2);
        assert_eq!(r.stat.size, 1001);
        // O_NONBLOCK is cleared once the file is known to be regular.
        // SAFETY: fcntl on a live descriptor.
        let fl = unsafe { libc::fcntl(r.file.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(fl & libc::O_NONBLOCK, 0);
        // SAFETY: as above.
        let fd = unsafe { libc::fcntl(r.file.as_raw_fd(), libc::F_GETFD) };
        assert_ne!(fd & libc::FD_CLOEXEC, 0);

        let me = r.stat.uid;
        let e = open_regular_at(
            &dir,
            "big",
            Limits {
                owner: Some(me + 1),
                max_size: 5000,
            },
        )
        .unwrap_err();
        assert!(
            matches!(e, FsError::Owner { uid, .. } if uid == me),
            "{e:?}"
        );
        assert!(open_regular_at(
            &dir,
            "big",
            Limits {
                owner: Some(me),
                max_size: 5000
            }
        )
        .is_ok());
    }

    /// The key property: what is copied and hashed is the file that was opened, even when
    /// another file is renamed over its name (or the name removed) after the open.
    #[test]
    fn a_rename_after_the_open_does_not_change_what_is_copied() {
        let t = TempDir::new("fsx-swap");
        let (a, b) = (b"first binary".to_vec(), b"tribist's other binary".to_vec());
        std::fs::write(t.join("server"), &a).unwrap();
        std::fs::create_dir(t.join("dst")).unwrap();
        let src_dir = Dir::open(t.path()).unwrap();
        let dst = src_dir.open_at("dst").unwrap();

        let opened = open_regular_at(&src_dir, "server", BIG).unwrap();
        // tribist's move, between root's check and use.
        std::fs::write(t.join("other"), &b).unwrap();
        std::fs::rename(t.join("other"), t.join("server")).unwrap();
        assert_eq!(std::fs::read(t.join("server")).unwrap(), b);

        let digest = copy_verified(&opened.file, &dst, "server", 0o755, None, 1 << 20).unwrap();
        assert_eq!(digest, Sha256::of(&a));
        assert_ne!(digest, Sha256::of(&b));
        assert_eq!(std::fs::read(t.join("dst/server")).unwrap(), a);
        let mode = std::fs::metadata(t.join("dst/server"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755);
        assert_eq!(names(&t.join("dst")), vec!["server"]);

        // With the digest expected, the same holds: the first file's bytes pass.
        let opened = open_regular_at(&dst, "server", BIG).unwrap();
        std::fs::remove_file(t.join("dst/server")).unwrap();
        let d2 = copy_verified(
            &opened.file,
            &src_dir,
            "copy",
            0o640,
            Some(Sha256::of(&a)),
            100,
        )
        .unwrap();
        assert_eq!(d2, Sha256::of(&a));
        assert_eq!(std::fs::read(t.join("copy")).unwrap(), a);
    }

    /// Bytes changed in place (the same inode) after the open: the digest returned is of what
    /// was written, so an expected digest refuses it, and nothing is left behind.
    #[test]
    fn a_digest_mismatch_leaves_nothing() {
        let t = TempDir::new("fsx-mismatch");
        std::fs::write(t.join("server"), b"checked bytes").unwrap();
        std::fs::create_dir(t.join("dst")).unwrap();
        std::fs::write(t.join("dst/server"), b"what was there").unwrap();
        let dir = Dir::open(t.path()).unwrap();
        let dst = dir.open_at("dst").unwrap();
        let want = Sha256::of(b"checked bytes");
        let opened = open_regular_at(&dir, "server", BIG).unwrap();
        std::fs::write(t.join("server"), b"changed bytes").unwrap();
        let e =
            copy_verified(&opened.file, &dst, "server", 0o755, Some(want), 1 << 20).unwrap_err();
        let got = Sha256::of(b"changed bytes");
        assert!(matches!(e, FsError::Mismatch { got: g, want: w, .. } if g == got && w == want));
        let msg = e.to_string();
        assert!(
            msg.contains(&got.to_string()) && msg.contains(&want.to_string()),
            "{msg}"
        );
        assert_eq!(names(&t.join("dst")), vec!["server"]);
        assert_eq!(
            std::fs::read(t.join("dst/server")).unwrap(),
            b"what was there"
        );
    }

    #[test]
    fn a_source_larger_than_the_bound_leaves_nothing() {
        let t = TempDir::new("fsx-bound");
        std::fs::write(t.join("server"), vec![1u8; 5000]).unwrap();
        let dir = Dir::open(t.path()).unwrap();
        let opened = open_regular_at(&dir, "server", BIG).unwrap();
        let e = copy_verified(&opened.file, &dir, "copy", 0o644, None, 4999).unwrap_err();
        assert!(matches!(e, FsError::TooLarge { max: 4999, .. }), "{e:?}");
        assert_eq!(names(t.path()), vec!["server"]);
    }

    #[test]
    fn write_atomic_link_rename_unlink() {
        let t = TempDir::new("fsx-atomic");
        let dir = Dir::open(t.path()).unwrap();
        std::fs::write(t.join("note"), b"old").unwrap();
        std::fs::set_permissions(t.join("note"), std::fs::Permissions::from_mode(0o666)).unwrap();
        let me = dir.fstat().unwrap();
        write_atomic_at(&dir, "note", b"new", 0o640, Some((me.uid, me.gid))).unwrap();
        assert_eq!(std::fs::read(t.join("note")).unwrap(), b"new");
        let st = lstat(&t.join("note")).unwrap();
        assert_eq!(st.perm(), 0o640);
        assert!(st.is_regular());
        assert_eq!(names(t.path()), vec!["note"]);

        // A symlink at the name is replaced, never written through.
        std::fs::write(t.join("victim"), b"keep").unwrap();
        symlink(t.join("victim"), t.join("planted")).unwrap();
        write_atomic_at(&dir, "planted", b"mine", 0o600, None).unwrap();
        assert_eq!(std::fs::read(t.join("victim")).unwrap(), b"keep");
        assert!(lstat(&t.join("planted")).unwrap().is_regular());

        linkat(&dir, "note", &dir, "note.link").unwrap();
        assert_eq!(lstat(&t.join("note")).unwrap().nlink, 2);
        assert!(matches!(
            linkat(&dir, "note", &dir, "victim"),
            Err(FsError::Io { .. })
        ));
        // linkat links a symlink itself, not what it points to.
        symlink("victim", t.join("sl")).unwrap();
        linkat(&dir, "sl", &dir, "sl2").unwrap();
        assert!(lstat(&t.join("sl2")).unwrap().is_symlink());

        renameat(&dir, "note.link", &dir, "moved").unwrap();
        assert_eq!(std::fs::read(t.join("moved")).unwrap(), b"new");
        unlinkat(&dir, "moved").unwrap();
        unlinkat(&dir, "sl2").unwrap();
        assert!(!t.join("moved").exists());
        let e = unlinkat(&dir, "moved").unwrap_err();
        assert!(e.to_string().starts_with("cannot remove "), "{e}");
        fsync_dir(&dir).unwrap();
    }

    #[test]
    fn read_bounded_refuses_more() {
        let t = TempDir::new("fsx-read");
        std::fs::write(t.join("f"), b"12345").unwrap();
        let dir = Dir::open(t.path()).unwrap();
        let r = open_regular_at(&dir, "f", BIG).unwrap();
        assert!(matches!(
            read_bounded(&r.file, 4, "f"),
            Err(FsError::TooLarge { .. })
        ));
        let r = open_regular_at(&dir, "f", BIG).unwrap();
        assert_eq!(read_bounded(&r.file, 5, "f").unwrap(), b"12345");
    }
}
