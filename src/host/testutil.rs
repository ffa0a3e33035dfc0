//! What the host modules' tests share: a temporary directory removed on drop, and the test
//! that needs root skipping itself (saying so) when it is not root.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A new directory (mode 0700) under the system's temporary directory.
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "tribist-host-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).expect("create a temporary directory");
        TempDir(path)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Ends the test early, saying why, when not run as root (CI runs them as root).
macro_rules! root_or_skip {
    ($why:expr) => {
        if !$crate::host::testutil::is_root() {
            eprintln!("skipped: needs root ({})", $why);
            return;
        }
    };
}
pub(crate) use root_or_skip;
