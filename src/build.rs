//! What this binary is: its version and the git commit it was built from (see `build.rs`).

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const COMMIT: &str = env!("TRIBIST_COMMIT");
