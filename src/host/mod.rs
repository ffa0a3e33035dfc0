//! The host side of the deploy kit, as a program: what runs as root (and as the deploy user
//! `tribist`) on a host, which `sbin/deploy.sh` and `sbin/releases.sh` did in bash: `releases`
//! (every binary state and rename in api/) is here now.
//!
//! Why Rust and not shell: the states of a release and the outcomes of the audit are types,
//! paths that user tribist controls are reached through descriptors (never re-resolved by
//! name between a check and a use), errors are values, and all of it is tested by
//! `cargo test` in temporary directories without root. `src/bin/tribist-host.rs` is its
//! command line; docs/deploying.md says who runs which command and as whom.

pub mod audit;
pub mod child;
pub mod civil;
pub mod deploy;
pub mod digest;
pub mod front;
pub mod front_host;
pub mod front_plan;
pub mod front_report;
pub mod fsx;
pub mod layout;
pub mod lock;
pub mod releases;
pub mod text;
pub mod x509;

#[cfg(test)]
mod testutil;
