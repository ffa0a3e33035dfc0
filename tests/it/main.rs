//! The integration tests, one test crate: the real `server` binary against real PostgreSQL
//! clusters (`tests/support/pg.sh`), spoken to over plain TCP.
//!
//! `util` is the harness; the other modules are the tests: `server` (behaviour, signals,
//! handover), `failure` (definite or transient database failures, as the deploy kit reads
//! them), `http` (bad and unusual HTTP), `systemd` (socket activation, sd_notify), `tls` (TLS
//! to PostgreSQL).

mod failure;
mod http;
mod server;
mod systemd;
mod tls;
mod util;
