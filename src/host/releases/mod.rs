//! `tribist-host releases`: every binary state and rename in /home/tribist/api, in one place,
//! always as user tribist (it refuses root). It was `sbin/releases.sh`.
//!
//! api/ is the one directory user tribist owns on the host, so nothing that runs as root may
//! work in it (docs/deploying.md, "Who owns what"): root's deploy.sh runs this through
//! setpriv as tribist, the unit's pre-start step does too, and tribist's own deploy.sh runs
//! it directly. The states and who writes them are [`names::Slot`]'s table; each change
//! between them is a rename(2) or a hard link relative to one descriptor of api/ ([`dir`]),
//! so `server` exists at every instant and is always a complete binary.
//!
//! A release is its bytes: `identity` tells whether an upload is the installed binary, a new
//! release, or other bytes under the installed binary's id (refused by deploy.sh: old and
//! new could not be told apart) or a kept one's, and `keep` never replaces a kept binary
//! with other bytes.

mod describe;
mod dir;
mod health;
mod identity;
mod kept;
mod names;
mod preflight;
mod run;
mod states;
mod uploads;

use std::io::{self, Write};
use std::path::PathBuf;

use self::dir::Dir;
use self::names::{Accept, Binary};

/// How messages name this program.
pub const PROG: &str = "tribist-host releases";

/// Exit code: the upload's SHA-256 is not the one given.
pub const EXIT_CHECKSUM: u8 = 3;
/// Exit code: the preflight found that the database refuses the configuration, or the binary
/// refused a setting (waiting will not help).
pub const EXIT_CONFIGURATION: u8 = 4;

/// Where api/ is: `TRIBIST_API_DIR` (for tests; made absolute), default /home/tribist/api.
pub fn api_dir() -> PathBuf {
    let dir = std::env::var_os("TRIBIST_API_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/home/tribist/api"));
    if dir.is_absolute() {
        dir
    } else {
        std::env::current_dir().unwrap_or_default().join(dir)
    }
}

fn usage_text(api: &str) -> String {
    format!(
        "usage: {PROG} COMMAND   (as user tribist; in {api})

  receive SHA256   read a binary from stdin into a new .upload.XXXXXX, check its SHA-256
                   (exit {EXIT_CHECKSUM} and remove it on a mismatch), print its name. First
                   removes every upload nothing has changed for an hour (one cut off, or
                   left by a failed deployment)
  describe NAME    what NAME (server, server.prev, server_new, server.failed, an upload, or
                   root's verified copy: a file in $TRIBIST_VERIFIED_DIR, default
                   /var/lib/tribist-deploy/bin) says of itself with --describe
                   (docs/server.md), checked, as three lines: releaseId=ID, version=V,
                   features=F1 F2 …; exit 1 if it does not run or predates --describe
  version NAME     print the release id NAME reports: its --describe's releaseId, or for a
                   binary that predates --describe the commit of its --version ('server
                   VERSION (commit ID)'); exit 1 if it does not run or says no valid id
  identity NAME ID whether binary NAME, which reports release ID, is 'installed' (the same
                   bytes as server), 'conflict: …' (the installed binary carries ID with
                   other bytes: old and new could not be told apart), 'kept-other: …' (a
                   kept release carries ID with other bytes: NAME may serve but is never
                   kept under that id), or 'new'
  hands-over NAME  exit 0 if NAME can take over from the serving process (its --describe
                   lists the feature 'handover'; before --describe, its --version says
                   'handover: SIGUSR2'), 1 if not
  stage NAME       make upload NAME server_new, keeping server.prev as .server.prev.keep
  commit           the staged upgrade succeeded: drop .server.prev.keep
  revert           a staged upgrade failed: server_new removed; if server was promoted
                   meanwhile, the binary serving before it (.server.before) is server again,
                   .server.prev.keep server.prev, and the failed binary server.failed
  swap             a manual rollback: server and server.prev change places
  promote          server -> server.prev, server_new -> server (the unit's pre-start step)
  preflight NAME RELEASE SECONDS ENVFILE
                   run NAME (server, server.prev, an upload or root's verified copy) beside
                   the serving one, with the service's configuration ENVFILE (its
                   TRIBIST_LISTEN replaced by a free loopback port) in a scratch directory;
                   succeed once /health answers 200 with releaseId RELEASE, fail (printing
                   why, the last answer and its output) if it exits, answers otherwise or
                   SECONDS pass; fail at once, exit {EXIT_CONFIGURATION}, when /health says the database
                   refuses the configuration (\"failure\":\"configuration\": a wrong password,
                   an unknown database or role, a certificate that does not verify) or the
                   binary refuses a setting (its exit status 2)
  discard NAME     remove upload NAME
  keep ID KEEP BY  after a switch: keep the serving binary as releases/ID (ID: its releaseId)
                   with its version, the time and BY (who shipped it); then prune releases/
                   to the newest KEEP, never the serving or the previous one
  list             the kept releases, newest first: ID, version, kept at, by, and which
                   one serves and which is the previous one
  restage PREFIX   copy (hard link) the kept release whose ID starts with PREFIX (one only)
                   to a new upload, for an upgrade to it; print the upload's name (stale
                   uploads are removed first, as by receive)
  --help

Exit codes: 0 done, 1 failed (the message says why), 2 misuse, {EXIT_CHECKSUM} checksum mismatch,
{EXIT_CONFIGURATION} preflight: the configuration cannot work (waiting will not help)."
    )
}

/// Why a command stops: its exit code and what to say (nothing, for a plain no).
#[derive(Debug)]
pub struct Stop {
    pub code: u8,
    pub message: String,
    /// Misuse: say how to get help.
    pub hint: bool,
}

pub type Result<T> = std::result::Result<T, Stop>;

impl Stop {
    pub fn failed(message: impl Into<String>) -> Stop {
        Stop::with(1, message)
    }
    pub fn usage(message: impl Into<String>) -> Stop {
        Stop {
            hint: true,
            ..Stop::with(2, message)
        }
    }
    pub fn with(code: u8, message: impl Into<String>) -> Stop {
        Stop {
            code,
            message: message.into(),
            hint: false,
        }
    }
    /// An answer "no" (exit 1), with nothing to say.
    pub fn no() -> Stop {
        Stop::with(1, "")
    }
}

/// A failed step on a file: what was done, to what, and the system's word.
pub fn io_failed(what: impl std::fmt::Display, err: io::Error) -> Stop {
    Stop::failed(format!("{what}: {err}"))
}

/// What the commands work on.
pub struct Ctx {
    pub api: Dir,
    /// Root's verified copies (`TRIBIST_VERIFIED_DIR`).
    pub verified: PathBuf,
}

impl Ctx {
    pub fn binary(&self, arg: &str, accept: Accept) -> Result<Binary> {
        let b = Binary::parse(arg, accept, &self.verified)?;
        b.must_exist(&self.api)?;
        Ok(b)
    }
}

/// `tribist-host releases ARGS…`: the exit code.
pub fn main(args: &[String]) -> u8 {
    let api = api_dir();
    let shown_api = api.display().to_string();
    let result = (|| -> Result<String> {
        let Some((command, rest)) = args.split_first() else {
            eprintln!("{}", usage_text(&shown_api));
            return Err(Stop::with(2, ""));
        };
        if command == "-h" || command == "--help" {
            return Ok(usage_text(&shown_api));
        }
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } == names::ROOT {
            return Err(Stop::failed(
                "refusing to run as root: api/ belongs to user tribist; deploy.sh runs this through setpriv",
            ));
        }
        let dir = Dir::open(&api).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Stop::failed(format!(
                    "{shown_api} does not exist: is tribist installed? (make install)"
                ))
            } else {
                Stop::failed(format!(
                    "cannot open {shown_api} as a directory: {e}; make install fixes the layout"
                ))
            }
        })?;
        // SAFETY: umask cannot fail.
        unsafe { libc::umask(0o027) };
        let ctx = Ctx {
            api: dir,
            verified: names::verified_dir(),
        };
        dispatch(&ctx, command, rest)
    })();
    match result {
        Ok(out) => {
            if !out.is_empty() {
                let _ = writeln!(io::stdout().lock(), "{out}");
            }
            0
        }
        Err(stop) => {
            let mut err = io::stderr().lock();
            if !stop.message.is_empty() {
                let _ = writeln!(err, "{PROG}: {}", stop.message);
            }
            if stop.hint {
                let _ = writeln!(err, "try: {PROG} --help");
            }
            stop.code
        }
    }
}

fn dispatch(ctx: &Ctx, command: &str, args: &[String]) -> Result<String> {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match (command, a.as_slice()) {
        ("receive", [sum]) => uploads::receive(ctx, sum, io::stdin().lock()),
        ("describe", [name]) => identity::describe(ctx, name),
        ("version", [name]) => identity::version(ctx, name),
        ("identity", [name, id]) => identity::identity(ctx, name, id).map(|i| i.to_string()),
        ("hands-over", [name]) => identity::hands_over(ctx, name).map(|()| String::new()),
        ("keep", [id, keep, by]) => kept::keep(ctx, id, keep, by),
        ("list", []) => kept::list(ctx),
        ("restage", [prefix]) => kept::restage(ctx, prefix),
        ("stage", [name]) => states::stage(ctx, name).map(|()| String::new()),
        ("commit", []) => states::commit(ctx).map(|()| String::new()),
        ("revert", []) => states::revert(ctx),
        ("swap", []) => states::swap(ctx).map(|()| String::new()),
        ("promote", []) => states::promote(ctx),
        ("discard", [name]) => uploads::discard(ctx, name).map(|()| String::new()),
        ("preflight", [name, release, secs, env]) => {
            preflight::preflight(ctx, name, release, secs, env)
        }
        _ => Err(Stop::usage(format!(
            "unknown command or wrong arguments: {}",
            names::shown(command)
        ))),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    /// A directory removed when dropped.
    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new(what: &str) -> TempDir {
            let path = std::env::temp_dir().join(format!(
                "tribist-{what}-{}-{}",
                std::process::id(),
                names::random_alnum(8)
            ));
            std::fs::create_dir(&path).unwrap();
            TempDir(path)
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// An api/ in a temporary directory, with a [`Ctx`] on it.
    pub struct Api {
        pub ctx: Ctx,
        _tmp: TempDir,
    }

    impl Api {
        pub fn new() -> Api {
            let tmp = TempDir::new("api");
            let path = tmp.path().join("api");
            std::fs::create_dir(&path).unwrap();
            let ctx = Ctx {
                api: Dir::open(&path).unwrap(),
                verified: tmp.path().join("verified"),
            };
            dir::fail_at(None);
            Api { ctx, _tmp: tmp }
        }

        pub fn path(&self, name: &str) -> PathBuf {
            self.ctx.api.path().join(name)
        }

        /// A script NAME printing `server VERSION (commit ID)` for --version (and refusing
        /// --describe, as a binary that predates it does).
        pub fn binary(&self, name: &str, id: &str) {
            self.script(
                name,
                &format!(
                    "[ \"$1\" = --version ] && echo 'server 1.0 (commit {id})' && exit 0\nexit 2"
                ),
            );
        }

        pub fn script(&self, name: &str, body: &str) {
            let path = self.path(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).unwrap();
            }
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o750)).unwrap();
        }

        pub fn read(&self, name: &str) -> Option<String> {
            std::fs::read_to_string(self.path(name)).ok()
        }

        pub fn exists(&self, name: &str) -> bool {
            self.ctx.api.exists(name)
        }

        /// Which id each name's file reports, by its content ("-" if missing).
        pub fn ids(&self, names: &[&str]) -> Vec<String> {
            names
                .iter()
                .map(|n| match self.read(n) {
                    None => "-".to_string(),
                    Some(text) => text
                        .split("(commit ")
                        .nth(1)
                        .and_then(|r| r.split(')').next())
                        .unwrap_or("?")
                        .to_string(),
                })
                .collect()
        }

        pub fn names(&self) -> Vec<String> {
            let mut n = self.ctx.api.entries().unwrap();
            n.sort();
            n
        }
    }

    #[test]
    fn commands_and_their_arguments() {
        let api = Api::new();
        for (cmd, args) in [
            ("promote", vec!["x"]),
            ("frobnicate", vec![]),
            ("stage", vec![]),
            ("preflight", vec!["server"]),
        ] {
            let args: Vec<String> = args.into_iter().map(String::from).collect();
            let err = dispatch(&api.ctx, cmd, &args).unwrap_err();
            assert_eq!(err.code, 2, "{cmd}");
            assert!(err.hint && err.message.contains("unknown command or wrong arguments"));
        }
        assert!(usage_text("/x").contains("receive SHA256"));
    }
}
