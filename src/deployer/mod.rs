//! The deployer's side of the kit (`make install|upgrade|rollback|status|…`): checks every
//! value typed, builds what each step runs on the host as words, and talks to the host over
//! ssh. `sbin/remote.sh` builds this program for the developer's machine and hands over to
//! it; `src/bin/tribist-deploy.rs` is its command line.
//!
//! Why Rust and not the bash it replaces (issue 18): the commands sent to a host are data,
//! quoted by one function and tested as the exact strings sent, in milliseconds
//! (`remote.rs`, `words.rs`); the refusals are pure functions tested without ssh
//! (`values.rs`); the binary's machine and glibc are read from its ELF tables (`elf.rs`);
//! and the install bundle is written from the bytes that were checked (`tar.rs`).
//!
//! Every value is data, never code: it is checked here and refused with exit 2 ("nothing was
//! sent") when it cannot be carried literally; files travel as files (a tar stream or the
//! binary on ssh's stdin); no captured call gets a terminal, the long ones do at a terminal,
//! so Ctrl-C reaches the host, which rolls back.

pub mod commands;
pub mod elf;
pub mod install;
pub mod remote;
pub mod ssh;
pub mod tar;
pub mod term;
pub mod upgrade;
pub mod values;
pub mod words;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::host::deploy::interrupt;
use ssh::{Call, Input, Ran, Sink, Ssh, Tty};
use term::{Exit, Out};
use values::{Checked, Env, Refused};
use words::shown;

/// Where make release puts the binaries, relative to the checkout.
const RELEASE_BIN: &str = "target/x86_64-unknown-linux-gnu/release/server";
const RELEASE_HOST_BIN: &str = "target/x86_64-unknown-linux-gnu/release/tribist-host";

const COMMANDS: &[&str] = &[
    "install",
    "upgrade",
    "rollback",
    "status",
    "logs",
    "audit",
    "unlock",
    "uninstall",
    "check",
    "config",
    "releases",
    "start",
    "stop",
];

/// One run: the command, the environment it reads, the checkout, and ssh.
pub struct Ctx {
    pub command: String,
    pub env: Env,
    pub repo: PathBuf,
    pub ssh: Ssh,
    pub out: Out,
}

impl Ctx {
    /// A refusal said, as exit 2.
    pub fn check<T>(&self, r: Checked<T>) -> Result<T, Exit> {
        r.map_err(|Refused(msg)| self.out.refuse(&msg))
    }

    /// The text of variable `name`, None when unset or empty.
    pub fn text(&self, name: &str) -> Result<Option<String>, Exit> {
        self.check(self.env.text(name))
    }

    /// HOST, checked.
    pub fn host(&self) -> Result<String, Exit> {
        let host = self.text("HOST")?.unwrap_or_default();
        self.check(values::check_host("HOST", &host, &self.command))?;
        Ok(host)
    }

    /// DEPLOYER, else user@machine.
    pub fn deployer(&self) -> Result<String, Exit> {
        let given = self.text("DEPLOYER")?;
        let fallback = given.is_none().then(user_at_machine).unwrap_or_default();
        self.check(values::deployer(given.as_deref(), &fallback))
    }

    /// deploy.sh's options from PREFLIGHT and KEEP.
    pub fn preflight_args(&self) -> Result<Vec<String>, Exit> {
        let (p, k) = (self.text("PREFLIGHT")?, self.text("KEEP")?);
        self.check(values::preflight_args(p.as_deref(), k.as_deref()))
    }

    /// DATABASE_URL_FILE as typed, for next-command lines.
    pub fn url_file_label(&self) -> String {
        values::url_file_label(self.env.text("DATABASE_URL_FILE").ok().flatten().as_deref())
    }

    /// The home directory (`~/` in SSH_OPTS and DEPLOY_KEY).
    pub fn home(&self) -> String {
        self.env
            .path("HOME")
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// A DATABASE_URL typed on make's command line is refused: it is in `ps` and the shell
    /// history (and make eats its `$`).
    pub fn refuse_url_on_command_line(&self) -> Result<(), Exit> {
        if self
            .env
            .text("DATABASE_URL_ORIGIN")
            .ok()
            .flatten()
            .as_deref()
            == Some("command line")
        {
            return Err(self.out.refuse(&format!(
                "DATABASE_URL on make's command line puts the password in 'ps' and your shell history (and make eats $): put it in a file and run: {}; if it held a real password, change that password",
                values::retyped(
                    &self.command,
                    &self.env,
                    &[("DATABASE_URL_FILE", Some(values::EXAMPLE_URL_FILE))]
                )
            )));
        }
        Ok(())
    }

    /// Runs `words` on `host` (see [`Ssh::run`]).
    pub fn run(&self, out: &Out, host: &str, words: &[String], call: Call) -> Result<Ran, Exit> {
        self.ssh.run(out, host, words, call)
    }

    /// A step whose output is the host's to show, at a terminal where there is one.
    pub fn long(&self, host: &str, words: &[String]) -> Result<i32, Exit> {
        let ran = self.run(
            &self.out,
            host,
            words,
            Call {
                tty: Tty::Long,
                input: Input::Keyboard,
                stdout: Sink::Show,
                stderr: Sink::Show,
            },
        )?;
        Ok(ran.code)
    }

    /// A short step whose output is the host's to show.
    pub fn short(&self, host: &str, words: &[String]) -> Result<i32, Exit> {
        let ran = self.run(
            &self.out,
            host,
            words,
            Call {
                tty: Tty::No,
                input: Input::Nothing,
                stdout: Sink::Show,
                stderr: Sink::Show,
            },
        )?;
        Ok(ran.code)
    }

    /// After tribist-host on `host` ended with `rc`: the one command that gets it further.
    pub fn next_step(&self, out: &Out, rc: i32, host: &str) {
        if let Some(line) = next_step(&self.command, rc, host, &self.url_file_label()) {
            out.warn(&line);
        }
    }

    /// Runs tools/release.sh (make release): the server and tribist-host for the hosts.
    pub fn release_build(&self) -> Result<(), Exit> {
        let script = self.repo.join("tools/release.sh");
        let status = std::process::Command::new(&script)
            .stdout(std::process::Stdio::null())
            .status();
        if interrupt::interrupted() {
            return Err(Exit::INTERRUPTED);
        }
        match status {
            Ok(s) if s.success() => Ok(()),
            _ => Err(self.out.die("the release build failed (above)")),
        }
    }

    pub fn release_bin(&self) -> String {
        self.env
            .text("RELEASE_BIN")
            .ok()
            .flatten()
            .unwrap_or_else(|| RELEASE_BIN.into())
    }

    pub fn release_host_bin(&self) -> String {
        self.env
            .text("RELEASE_HOST_BIN")
            .ok()
            .flatten()
            .unwrap_or_else(|| RELEASE_HOST_BIN.into())
    }
}

/// The line after a failure on the host with status `rc` (tribist-host --help lists them).
pub fn next_step(command: &str, rc: i32, host: &str, url_file: &str) -> Option<String> {
    match rc {
        3 => Some(format!(
            "next: wait for it to finish, or if it is stuck break it: make unlock HOST={host}"
        )),
        // install's host side knows whether it kept a configuration that served, and says
        // which command changes it.
        4 if command != "install" => Some(format!(
            "next: make config HOST={host} with what the message above names corrected: SET=NAME=VALUE or UNSET=NAME for a setting, DATABASE_URL_FILE={url_file} for the database URL"
        )),
        5 => Some(format!(
            "next: make install HOST={host} DATABASE_URL_FILE=path (a file with the database URL)"
        )),
        255 => Some(format!(
            "next: make check HOST={host} (ssh could not reach it or was cut off; check HOST, SSH_OPTS and ~/.ssh/config)"
        )),
        _ => None,
    }
}

/// `user@machine`, as `$(id -un)@$(hostname)`.
fn user_at_machine() -> String {
    // SAFETY: getpwuid returns a pointer to static storage or null; read at once.
    let user = unsafe {
        let uid = libc::geteuid();
        let pw = libc::getpwuid(uid);
        if pw.is_null() || (*pw).pw_name.is_null() {
            uid.to_string()
        } else {
            std::ffi::CStr::from_ptr((*pw).pw_name)
                .to_string_lossy()
                .into_owned()
        }
    };
    let mut buf = [0u8; 256];
    // SAFETY: buf is writable for its length.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let host = if ok {
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
    format!("{user}@{host}")
}

/// Whether `path` may be executed by this process.
pub fn executable(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a valid C string.
    unsafe { libc::access(c.as_ptr(), libc::X_OK) == 0 }
}

/// Reads a local file of at most `max` bytes; None if it is larger.
pub fn read_bounded(path: &Path, max: u64) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(max + 1)
        .read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= max).then_some(bytes))
}

/// The checkout this program was built from (sbin/check.sh, etc/, deploy/ live there).
fn repo() -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1) {
            if dir.join("sbin/check.sh").is_file() && dir.join("Cargo.toml").is_file() {
                return dir.to_path_buf();
            }
        }
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn usage() -> String {
    format!(
        "usage: sbin/remote.sh COMMAND       (normally through make: make COMMAND HOST=…)

  install     first install or re-install on HOST (root, or a user with sudo); with DOMAIN,
              behind an HTTPS front (Caddy from the host's packages); without it a front
              already there is kept
  upgrade     ship BIN to HOST, or to each of HOSTS (or ENV's) in turn, PARALLEL at a time;
              rolls back a host that fails, and stops there
  rollback    put the previous release back on HOST (TO=ID-prefix: any kept release)
  releases    the releases HOST keeps (KEEP, default 5), which serves, which is previous
  status      one line per host (HOST, HOSTS or ENV): healthy, stopped, unhealthy, not
              installed or unreachable; details under it for one host; with a front door,
              ` front=https://DOMAIN` on the line, and unhealthy (7) when clients cannot
              get through it (Caddy stopped, no TLS answer, the certificate expired)
  start       start the service and its socket on HOST (server.sh start)
  stop        stop the service and its socket on HOST, until start or a deploy of other bytes
  logs        the service's last LINES log lines on HOST
  audit       every deployment recorded on HOST (root or sudo)
  unlock      break a stuck deploy lock on HOST (its holder rolls back)
  uninstall   remove the service and its HTTPS front from HOST (PURGE=1: also configuration,
              user tribist and the front's certificates)
  config      the configuration on HOST (passwords masked); with SET=\"NAME=VALUE …\",
              UNSET=\"NAME …\" or DATABASE_URL_FILE=, change it: checked by the binary and a
              preflight, applied by a restart, taken back if the server is not healthy
  check       can HOST take tribist? ssh, root or sudo, systemd, commands, machine and
              glibc against BIN, the listen address; with DATABASE_URL_FILE, the database
              answers from there (install runs these checks first, but the database's);
              with DOMAIN, the front door's: ports 80 and 443 free or Caddy's, DOMAIN
              resolving to the host (a WARN if not: NAT, a load balancer), the caddy package

Settings, from the environment (make passes its variables through unchanged):
  HOST               ssh destination: [user@]host, letters, digits and . _ - @ : [ ] %
  HOSTS              several destinations, separated by spaces (upgrade, status)
  ENV                upgrade, status: the hosts listed in deploy/ENV.hosts (one ssh
                     destination per line, # comments), instead of HOST/HOSTS; the
                     directory is $TRIBIST_DEPLOY_DIR if set (make passes ENV as DEPLOY_ENV)
  PARALLEL           upgrade of several hosts: how many at a time (default 1); a failure
                     stops the run before the next batch starts
  SSH_OPTS           options for ssh, split as a shell would (' \" and \\ quote) but with
                     nothing expanded; ~/ at the start of a word is your home; every word
                     is an option or its argument. Better: a Host entry in ~/.ssh/config,
                     which scp and rsync follow too
  BIN                the binary to ship (default: {RELEASE_BIN}, built first)
  DEPLOYER           who deploys, for the lock and the audit (default: you@this-machine);
                     any printable text up to 100 characters, carried literally
  DATABASE_URL_FILE  install: a file holding the database URL (one final newline ignored);
                     at a terminal without it, install asks for the URL without echoing it
  DEPLOY_KEY         install: a public key file to authorise for user tribist
  DOMAIN             install: the name clients use (api.example.com): Caddy serves HTTPS on
                     443 (HTTP on 80 redirects) and reaches the service on its address
  ACME_EMAIL         install DOMAIN=: the certificate from Let's Encrypt (or ACME_CA), renewed
                     by Caddy; the CA account's e-mail address
  ACME_CA            install DOMAIN=: another ACME CA's directory URL (https://…)
  ACME_CA_ROOT       install DOMAIN=: a PEM file here: the root ACME_CA's own HTTPS chains to
  CERT_FILE, KEY_FILE  install DOMAIN=: your own certificate (chain) and its key, PEM files
                     here, sent in the bundle (never on a command line) instead of ACME
  LISTEN             install: the address tribist.socket listens on, IPv4:PORT or
                     [IPv6]:PORT (default: as set before, else 127.0.0.1:8383); a port
                     something else uses on the host is refused
  LINES              logs: how many lines (default 100); audit: how many records (default 50)
  FOLLOW             logs: 1 follows the log as it is written, until Ctrl-C (root or sudo)
  SINCE              logs: from when, as journalctl --since reads it ('1 hour ago', today,
                     '2026-12-01 10:00'; root or sudo)
  GREP               logs: only lines matching this pattern (journalctl --grep; root or sudo)
  ACCESS             logs: 1 shows the HTTPS front door's access log (Caddy's JSON lines,
                     /var/log/caddy/tribist-access.log) instead: LINES, GREP (text, not a
                     pattern) and FOLLOW apply, SINCE does not (root or sudo)
  PREFLIGHT          upgrade, rollback: seconds the new release has to answer /health 200
                     beside the serving one before anything switches (default 10; 0 skips
                     it, e.g. to roll back while the database is down)
  PURGE              uninstall: 1 also removes the configuration, the audit log, user tribist
                     and its home (the releases); asks first at a terminal
  YES                uninstall PURGE=1: 1 answers its question (for scripts; without a
                     terminal PURGE=1 is refused unless YES=1)
  SET, UNSET         config: \"TRIBIST_WORKERS=8 TRIBIST_DB_TIMEOUT=3s\", \"TRIBIST_LOG_LEVEL\"
  TO                 rollback: the release to go back to (a prefix of its id is enough)
  KEEP               upgrade, rollback: how many releases the host keeps (1-99,
                     default 5); the serving and the previous one are always kept
  TRIBIST_SSH_SHARE  yes (default): one ssh connection per host for the whole run (ssh's
                     ControlMaster, in a private directory, ended with the run); no: one
                     connection per step
  SSH                the ssh program (default: ssh)

Exit codes: 0 done, 1 failed on the host (the messages say why), 2 a value was refused
(nothing was sent), 3 another deployment holds the host's lock, 4 the configuration cannot
work (the database refuses it, or the binary a setting: waiting will not help), 5 tribist is
not installed on the host, 9 install DOMAIN=: tribist is installed and serving but its front
failed, 130 interrupted. Every failure ends with the one command to run next.
status: 0 healthy on its installed release, 5 not installed, 6 stopped, 7 running but not
healthy (or not on its installed release), 8 unreachable; with several hosts, the highest."
    )
}

/// The program: `args` as the process got them (the program's name first). Returns the
/// exit status, after this run's shared ssh connections have ended.
pub fn main(args: Vec<OsString>) -> i32 {
    let out = Out::Term;
    let command = args
        .get(1)
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default();
    match command.as_str() {
        "-h" | "--help" => {
            out.line(&usage());
            return 0;
        }
        c if COMMANDS.contains(&c) => {}
        other => {
            out.warn(&format!("unknown command '{}'", shown(other)));
            out.err_line(&usage());
            return 2;
        }
    }
    if args.len() != 2 {
        out.refuse(&format!(
            "{command} takes no arguments; settings come from the environment (see --help)"
        ));
        return 2;
    }
    interrupt::install();
    let env = Env::from_process();
    let home = env
        .path("HOME")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let options = match env
        .text("SSH_OPTS")
        .and_then(|o| values::ssh_opts(o.as_deref().unwrap_or(""), &home))
    {
        Ok(o) => o,
        Err(Refused(msg)) => return out.refuse(&msg).0,
    };
    let share = env
        .text("TRIBIST_SSH_SHARE")
        .ok()
        .flatten()
        .unwrap_or_else(|| "yes".into())
        == "yes";
    let program = env
        .path("SSH")
        .map(PathBuf::into_os_string)
        .unwrap_or_else(|| "ssh".into());
    let ctx = Ctx {
        command,
        env,
        repo: repo(),
        ssh: Ssh::new(program, options, share),
        out,
    };
    let result = match ctx.command.as_str() {
        "install" => install::install(&ctx),
        "check" => install::check(&ctx),
        "config" => commands::config(&ctx),
        "upgrade" => upgrade::upgrade(&ctx),
        "rollback" => commands::rollback(&ctx),
        "status" => commands::status(&ctx),
        "start" | "stop" => commands::start_stop(&ctx),
        "audit" => commands::audit(&ctx),
        "releases" => commands::releases(&ctx),
        "logs" => commands::logs(&ctx),
        "unlock" => commands::unlock(&ctx),
        "uninstall" => commands::uninstall(&ctx),
        _ => Err(Exit::USAGE),
    };
    drop(ctx);
    match result {
        Ok(()) => 0,
        Err(Exit(code)) => code,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_names_the_next_command() {
        assert_eq!(
            next_step("upgrade", 3, "root@app1", "path").unwrap(),
            "next: wait for it to finish, or if it is stuck break it: make unlock HOST=root@app1"
        );
        assert!(next_step("upgrade", 4, "h", "~/db")
            .unwrap()
            .ends_with("DATABASE_URL_FILE=~/db for the database URL"));
        assert_eq!(next_step("install", 4, "h", "path"), None);
        assert!(next_step("rollback", 5, "h", "path")
            .unwrap()
            .starts_with("next: make install HOST=h DATABASE_URL_FILE=path"));
        assert!(next_step("status", 255, "h", "path")
            .unwrap()
            .starts_with("next: make check HOST=h (ssh could not"));
        assert_eq!(next_step("upgrade", 1, "h", "path"), None);
    }

    #[test]
    fn misuse_is_refused_before_anything_runs() {
        let run = |args: &[&str]| main(args.iter().map(OsString::from).collect());
        assert_eq!(run(&["tribist-deploy", "frobnicate"]), 2);
        assert_eq!(run(&["tribist-deploy"]), 2);
        assert_eq!(run(&["tribist-deploy", "status", "extra"]), 2);
        assert_eq!(run(&["tribist-deploy", "--help"]), 0);
        assert!(usage().contains("Exit codes: 0 done"));
    }
}
