//! Where everything of the kit is on a host, in one place (the table in docs/deploying.md,
//! "Who owns what on the host"; `host::layout` checks owners and modes).

pub const UNIT: &str = "tribist";
/// The deploy user: holds the deploy key, owns `api/`.
pub const USER_NAME: &str = "tribist";
/// The service's own system user.
pub const SERVICE_USER: &str = "tribistd";
pub const HOME_DIR: &str = "/home/tribist";
pub const API_DIR: &str = "/home/tribist/api";
pub const BIN_DIR: &str = "/home/tribist/bin";
pub const SSH_DIR: &str = "/home/tribist/.ssh";
/// This program, as install puts it.
pub const HOST_PROGRAM: &str = "/home/tribist/bin/tribist-host";
pub const CONF_DIR: &str = "/etc/tribist";
pub const ENV_FILE: &str = "/etc/tribist/env";
pub const ENV_PREV: &str = "/etc/tribist/env.prev";
pub const STATE_DIR: &str = "/var/lib/tribist-deploy";
pub const LOCK_FILE: &str = "/var/lib/tribist-deploy/lock";
pub const HOLDER_FILE: &str = "/var/lib/tribist-deploy/holder";
pub const AUDIT_LOG: &str = "/var/lib/tribist-deploy/audit.log";
/// Written once the env file has served a healthy start (install keeps it from then on).
pub const ENV_OK: &str = "/var/lib/tribist-deploy/env-served";
/// Root's copies of binaries: what the unit runs (`server`), the copy root's own deployment
/// took of its upload (`next`).
pub const VERIFIED_DIR: &str = "/var/lib/tribist-deploy/bin";
pub const VERIFIED: &str = "/var/lib/tribist-deploy/bin/server";
pub const VERIFIED_NEXT: &str = "/var/lib/tribist-deploy/bin/next";
/// tribist's own lock note, in its `api/`.
pub const TRIBIST_NOTE: &str = ".deploy.holder";
pub const UNIT_FILE: &str = "/etc/systemd/system/tribist.service";
pub const SOCKET_FILE: &str = "/etc/systemd/system/tribist.socket";
pub const SOCKET_DROPIN: &str = "/etc/systemd/system/tribist.socket.d/listen.conf";
pub const SERVICE_DROPIN: &str = "/etc/systemd/system/tribist.service.d/listen.conf";
pub const SUDOERS_FILE: &str = "/etc/sudoers.d/tribist";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8383";
