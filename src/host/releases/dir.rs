//! A directory reached through one descriptor: api/ and api/releases/.
//!
//! Every step of a release is a rename(2) or a hard link inside such a directory, made with
//! `renameat`/`linkat`/`unlinkat` relative to a descriptor opened `O_DIRECTORY|O_NOFOLLOW`,
//! so that the directory acted on is the one opened, whatever is renamed around it meanwhile.
//! Names are never followed when they are symbolic links: a link is not a binary.
//!
//! In test builds every change can be made to fail at the Nth step ([`fail_at`]) and checks
//! that `server`, once there, never goes missing: the tests use both to prove the order of
//! the steps, not only their end state.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// An open directory and the path it was opened by (for messages and for running binaries).
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

/// What `stat` says of a name, without following a link.
#[derive(Clone, Copy)]
pub struct Meta(libc::stat);

impl Meta {
    pub fn is_file(&self) -> bool {
        self.0.st_mode & libc::S_IFMT == libc::S_IFREG
    }
    pub fn is_dir(&self) -> bool {
        self.0.st_mode & libc::S_IFMT == libc::S_IFDIR
    }
    pub fn same_file(&self, other: &Meta) -> bool {
        self.0.st_dev == other.0.st_dev && self.0.st_ino == other.0.st_ino
    }
    pub fn size(&self) -> u64 {
        self.0.st_size as u64
    }
    /// The last change of the inode (a write, a chmod, a link): seconds since the epoch.
    pub fn changed(&self) -> i64 {
        self.0.st_ctime
    }
    /// The last change of the content, for ordering: seconds and nanoseconds.
    pub fn modified(&self) -> (i64, i64) {
        (self.0.st_mtime, self.0.st_mtime_nsec)
    }
    pub fn uid(&self) -> u32 {
        self.0.st_uid
    }
    pub fn mode(&self) -> u32 {
        self.0.st_mode
    }
}

fn cstr(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `stat` of `path` without following a link in its last component.
pub fn lstat(path: &Path) -> io::Result<Meta> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a zeroed stat is a valid buffer that lstat fills; `c` outlives the call.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe { libc::lstat(c.as_ptr(), &mut st) })?;
    Ok(Meta(st))
}

impl Dir {
    /// Opens `path`, refusing a symbolic link in its last component.
    pub fn open(path: &Path) -> io::Result<Dir> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: `c` is a valid C string; the descriptor returned is ours alone.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The directory `name` inside this one (made with `mode`, less the umask, if `create`),
    /// refusing a symbolic link.
    pub fn subdir(&self, name: &str, create: Option<libc::mode_t>) -> io::Result<Dir> {
        let c = cstr(name)?;
        if let Some(mode) = create {
            // SAFETY: plain system call on our descriptor and a valid C string.
            let rc = unsafe { libc::mkdirat(self.raw(), c.as_ptr(), mode) };
            if rc < 0 && io::Error::last_os_error().kind() != io::ErrorKind::AlreadyExists {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: as above; the descriptor returned is ours alone.
        let fd = unsafe {
            libc::openat(
                self.raw(),
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Dir {
            // SAFETY: `fd` was just opened and is owned by nothing else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            path: self.path.join(name),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// `stat` of `name`, not following a link; `None` if there is no such name.
    pub fn stat(&self, name: &str) -> Option<Meta> {
        let c = cstr(name).ok()?;
        // SAFETY: a zeroed stat is a valid buffer that fstatat fills.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        let rc =
            unsafe { libc::fstatat(self.raw(), c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
        (rc == 0).then_some(Meta(st))
    }

    pub fn exists(&self, name: &str) -> bool {
        self.stat(name).is_some()
    }

    /// A regular file (not a link to one).
    pub fn is_file(&self, name: &str) -> bool {
        self.stat(name).is_some_and(|m| m.is_file())
    }

    /// Whether `name` here and `other_name` in `other` are the same file (one inode).
    pub fn same_file(&self, name: &str, other: &Dir, other_name: &str) -> bool {
        match (self.stat(name), other.stat(other_name)) {
            (Some(a), Some(b)) => a.same_file(&b),
            _ => false,
        }
    }

    /// Whether the current user may execute `name` (as `test -x`).
    pub fn executable(&self, name: &str) -> bool {
        let Ok(c) = cstr(name) else { return false };
        // SAFETY: plain system call on our descriptor and a valid C string.
        unsafe { libc::faccessat(self.raw(), c.as_ptr(), libc::X_OK, libc::AT_EACCESS) == 0 }
    }

    /// Opens `name` for reading, refusing a link.
    pub fn open_read(&self, name: &str) -> io::Result<File> {
        let c = cstr(name)?;
        // SAFETY: as above; the descriptor returned is ours alone.
        let fd = unsafe {
            libc::openat(
                self.raw(),
                c.as_ptr(),
                libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    /// Reads at most `max` bytes of `name`.
    pub fn read_head(&self, name: &str, max: u64) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.open_read(name)?.take(max).read_to_end(&mut out)?;
        Ok(out)
    }

    /// Creates `name`, which must not exist (`O_EXCL`, no link followed), for writing.
    pub fn create_new(&self, name: &str, mode: libc::mode_t) -> io::Result<File> {
        self.before_change()?;
        let c = cstr(name)?;
        // SAFETY: as above; the descriptor returned is ours alone.
        let fd = unsafe {
            libc::openat(
                self.raw(),
                c.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                mode as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        let file = unsafe { File::from_raw_fd(fd) };
        self.after_change(format!("create {name}"));
        Ok(file)
    }

    /// rename(2) `from` to `to` in this directory: `to` is replaced atomically.
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.rename_to(from, self, to)
    }

    /// rename(2) `from` here to `to` in `dir` (the same file system).
    pub fn rename_to(&self, from: &str, dir: &Dir, to: &str) -> io::Result<()> {
        self.before_change()?;
        let (f, t) = (cstr(from)?, cstr(to)?);
        // SAFETY: plain system call on our descriptors and valid C strings.
        check(unsafe { libc::renameat(self.raw(), f.as_ptr(), dir.raw(), t.as_ptr()) })?;
        self.after_change(format!("rename {from} {to}"));
        Ok(())
    }

    /// A hard link `to` in `dir` to `from` here; fails if `to` exists (`EEXIST`).
    pub fn link_to(&self, from: &str, dir: &Dir, to: &str) -> io::Result<()> {
        self.before_change()?;
        let (f, t) = (cstr(from)?, cstr(to)?);
        // SAFETY: plain system call on our descriptors and valid C strings. Flags 0: a link
        // named `from` is linked itself, never followed.
        check(unsafe { libc::linkat(self.raw(), f.as_ptr(), dir.raw(), t.as_ptr(), 0) })?;
        self.after_change(format!("link {from} {to}"));
        Ok(())
    }

    /// Removes file `name`; no such name is not an error.
    pub fn remove(&self, name: &str) -> io::Result<()> {
        if !self.exists(name) {
            return Ok(());
        }
        self.before_change()?;
        let c = cstr(name)?;
        // SAFETY: plain system call on our descriptor and a valid C string.
        let rc = unsafe { libc::unlinkat(self.raw(), c.as_ptr(), 0) };
        if rc < 0 && io::Error::last_os_error().kind() != io::ErrorKind::NotFound {
            return Err(io::Error::last_os_error());
        }
        self.after_change(format!("remove {name}"));
        Ok(())
    }

    /// Removes `name` whatever it is: a file, a link, or a directory and all it holds.
    pub fn remove_all(&self, name: &str) -> io::Result<()> {
        match self.stat(name) {
            None => Ok(()),
            Some(m) if m.is_dir() => {
                let sub = self.subdir(name, None)?;
                for entry in sub.entries()? {
                    sub.remove_all(&entry)?;
                }
                drop(sub);
                self.before_change()?;
                let c = cstr(name)?;
                // SAFETY: plain system call on our descriptor and a valid C string.
                check(unsafe { libc::unlinkat(self.raw(), c.as_ptr(), libc::AT_REMOVEDIR) })?;
                self.after_change(format!("rmdir {name}"));
                Ok(())
            }
            Some(_) => self.remove(name),
        }
    }

    /// The names in this directory (not `.` and `..`), as they are, in no order; names that
    /// are not UTF-8 are given lossily (only removing one by such a name would fail).
    pub fn entries(&self) -> io::Result<Vec<String>> {
        // SAFETY: fdopendir takes ownership of the duplicate, closedir closes it; readdir's
        // entries are read before the next call.
        let dup = unsafe { libc::fcntl(self.raw(), libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(io::Error::last_os_error());
        }
        let dirp = unsafe { libc::fdopendir(dup) };
        if dirp.is_null() {
            let err = io::Error::last_os_error();
            unsafe { libc::close(dup) };
            return Err(err);
        }
        unsafe { libc::rewinddir(dirp) };
        let mut out = Vec::new();
        loop {
            let entry = unsafe { libc::readdir(dirp) };
            if entry.is_null() {
                break;
            }
            let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) };
            let name = OsStr::from_bytes(name.to_bytes());
            if name != "." && name != ".." {
                out.push(OsString::from(name).into_vec());
            }
        }
        unsafe { libc::closedir(dirp) };
        Ok(out
            .into_iter()
            .map(|n| String::from_utf8_lossy(&n).into_owned())
            .collect())
    }

    /// Whether `a` here and `b` in `other` hold the same bytes (`cmp -s`); false if either
    /// cannot be read.
    pub fn same_bytes(&self, a: &str, other: &Dir, b: &str) -> bool {
        if self.same_file(a, other, b) {
            return true;
        }
        let (Ok(mut fa), Ok(mut fb)) = (self.open_read(a), other.open_read(b)) else {
            return false;
        };
        let (Ok(ma), Ok(mb)) = (fa.metadata(), fb.metadata()) else {
            return false;
        };
        if !ma.is_file() || !mb.is_file() || ma.len() != mb.len() {
            return false;
        }
        let (mut ba, mut bb) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
        loop {
            let (Ok(n), Ok(m)) = (read_full(&mut fa, &mut ba), read_full(&mut fb, &mut bb)) else {
                return false;
            };
            if n != m || ba[..n] != bb[..n] {
                return false;
            }
            if n == 0 {
                return true;
            }
        }
    }

    #[cfg(not(test))]
    fn before_change(&self) -> io::Result<()> {
        Ok(())
    }

    /// In tests: the change may be made to fail ([`fail_at`]).
    #[cfg(test)]
    fn before_change(&self) -> io::Result<()> {
        testing::before_change(self)
    }

    #[cfg(not(test))]
    fn after_change(&self, _what: String) {}

    /// In tests: the step is recorded, and `server` once seen must never go missing.
    #[cfg(test)]
    fn after_change(&self, what: String) {
        testing::record(self, what);
    }
}

/// Reads until `buf` is full or the end.
fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
pub use testing::{fail_at, steps};

#[cfg(test)]
mod testing {
    use super::Dir;
    use std::cell::{Cell, RefCell};
    use std::io;

    thread_local! {
        static FAIL_AT: Cell<Option<usize>> = const { Cell::new(None) };
        static COUNT: Cell<usize> = const { Cell::new(0) };
        static STEPS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
        static SERVER_SEEN: Cell<bool> = const { Cell::new(false) };
    }

    /// From now on in this thread, the change numbered `n` (0 first) fails, as a full disk or
    /// a kill would stop it; `None`: none fails. Resets the record of steps.
    pub fn fail_at(n: Option<usize>) {
        FAIL_AT.with(|f| f.set(n));
        COUNT.with(|c| c.set(0));
        STEPS.with(|s| s.borrow_mut().clear());
        SERVER_SEEN.with(|s| s.set(false));
    }

    /// The changes made since the last [`fail_at`], as "rename a b", "link a b", ….
    pub fn steps() -> Vec<String> {
        STEPS.with(|s| s.borrow().clone())
    }

    fn is_api(dir: &Dir) -> bool {
        // The tests' api/ is named so; releases/ and what is in it have no server.
        dir.path().file_name().is_some_and(|n| n == "api")
    }

    pub(super) fn before_change(dir: &Dir) -> io::Result<()> {
        if is_api(dir) && dir.is_file("server") {
            SERVER_SEEN.with(|s| s.set(true));
        }
        let n = COUNT.with(|c| {
            let n = c.get();
            c.set(n + 1);
            n
        });
        if FAIL_AT.with(|f| f.get()) == Some(n) {
            return Err(io::Error::other(format!("injected failure at step {n}")));
        }
        Ok(())
    }

    pub(super) fn record(dir: &Dir, what: String) {
        STEPS.with(|s| s.borrow_mut().push(what.clone()));
        if !is_api(dir) {
            return;
        }
        let there = dir.is_file("server");
        let seen = SERVER_SEEN.with(|s| s.get());
        assert!(
            there || !seen,
            "server went missing after step '{what}' ({:?})",
            steps()
        );
        SERVER_SEEN.with(|s| s.set(seen || there));
    }
}
