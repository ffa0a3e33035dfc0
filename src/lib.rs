//! tribist: an API server whose `/health` checks PostgreSQL, built to run under systemd.
//!
//! `main.rs` parses the configuration and calls [`server::run`]; everything else lives here
//! so the integration tests and the unit tests see the same code.

pub mod accept_watch;
pub mod address_file;
pub mod api;
pub mod build;
pub mod clients;
pub mod config;
pub mod connection;
pub mod contract;
pub mod db;
pub mod deployer;
pub mod envfile;
pub mod error;
pub mod handover;
pub mod host;
pub mod listener;
pub mod logging;
pub mod pidfile;
pub mod pool_watch;
pub mod server;
pub mod settings;
pub mod single_flight;
pub mod systemd;
pub mod tls;
pub mod watchdog;
