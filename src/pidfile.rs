//! The `PID` file in the working directory, and the lock that makes it trustworthy.
//!
//! `server.sh` and operators read `PID` to signal the server, so it must name a live server
//! or not exist. The working directory is locked with flock(2) for the life of the process:
//! a second server in the same directory is refused, while a `PID` left by a crashed run (whose
//! lock the kernel released with it) is simply replaced. The file is written atomically
//! (temporary file, then rename), so a reader never sees it half-written. A handover
//! (handover.rs) passes the locked directory to the successor, so the lock never lapses.

use std::fs::{self, File, TryLockError};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use crate::error::Error;

pub const FILE_NAME: &str = "PID";

pub struct PidFile {
    dir: PathBuf,
    path: PathBuf,
    /// Held (flock'ed) until the process exits.
    lock: File,
}

impl PidFile {
    /// Locks `dir`; fails with `AlreadyRunning` if another server holds it.
    pub fn lock(dir: &Path) -> Result<PidFile, Error> {
        let path = dir.join(FILE_NAME);
        let pid_err = |source| Error::PidFile {
            path: path.clone(),
            source,
        };
        let lock = File::open(dir).map_err(pid_err)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(Error::AlreadyRunning {
                    dir: dir.to_path_buf(),
                    pid: read(&path),
                })
            }
            Err(TryLockError::Error(e)) => return Err(pid_err(e)),
        }
        if let Some(stale) = read(&path) {
            log::warn!("replacing stale {FILE_NAME} file (pid {stale} is not a running server)");
        }
        Ok(PidFile {
            dir: dir.to_path_buf(),
            path,
            lock,
        })
    }

    /// Takes over `lock`, the directory a predecessor locked and handed over (handover.rs).
    pub fn adopt(dir: &Path, lock: File) -> PidFile {
        PidFile {
            dir: dir.to_path_buf(),
            path: dir.join(FILE_NAME),
            lock,
        }
    }

    /// The locked directory's descriptor, for a successor to inherit.
    pub fn lock_fd(&self) -> RawFd {
        self.lock.as_raw_fd()
    }

    /// Writes this process's id, atomically. No fsync: the file only matters while this
    /// process lives, and a torn file after a power loss reads as no pid at all.
    pub fn write(&self) -> Result<(), Error> {
        let tmp = self
            .dir
            .join(format!(".{FILE_NAME}.{}.tmp", std::process::id()));
        let result = (|| -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            writeln!(f, "{}", std::process::id())?;
            fs::rename(&tmp, &self.path)
        })();
        result.map_err(|source| {
            let _ = fs::remove_file(&tmp);
            Error::PidFile {
                path: self.path.clone(),
                source,
            }
        })
    }

    /// Removes the file on a graceful exit, if it still names this process.
    pub fn remove(&self) {
        if read(&self.path) == Some(std::process::id()) {
            if let Err(e) = fs::remove_file(&self.path) {
                log::warn!("cannot remove {}: {e}", self.path.display());
            }
        }
    }
}

fn read(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}
