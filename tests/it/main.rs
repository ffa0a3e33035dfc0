//! The integration tests, one test crate: the real `server` binary against real PostgreSQL
//! clusters (`tests/support/pg.sh`), spoken to over plain TCP.
//!
//! `util` is the harness; the other modules are the tests: `server` (behaviour, signals,
//! handover), `http` (bad and unusual HTTP), `systemd` (socket activation, sd_notify), `tls`
//! (TLS to PostgreSQL).

mod http;
mod server;
mod systemd;
mod tls;
mod util;
