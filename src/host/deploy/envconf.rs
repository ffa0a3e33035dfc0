//! `/etc/tribist/env` on a host: which file install runs with (`choose_env`, `install_env`),
//! whether it has served (`env_served`), and `config`: showing it as the installed binary
//! reads it, and changing it safely (checked by the binary, preflighted, applied by a
//! restart, put back when the server is not healthy then or the run is interrupted).
//!
//! Every write of the env file and of `env.prev` is `fsx::write_atomic_at` (a temporary,
//! root:tribist 0640, fsync, rename, fsync of the directory): a crash leaves the old file or
//! the new one. The text is edited by `crate::settings::edit`, which the server's own parser
//! checks, so what is written reads back as meant.

use std::io::{BufRead, Read};
use std::time::{Duration, SystemTime};

use super::hostlayout::random_word;
use super::steps::{
    self, lock, preflight, read_root_file, release_of, restart_and_wait, NotHealthy, Refused,
};
use super::{health, interrupt, is_root, need_root, paths, say, warn, Ctx, Exit, Fail, Result};
use crate::host::audit::{Action, Outcome};
use crate::host::child::{self, ExitKind, RunAs, Spawn};
use crate::host::fsx::{self, Dir, Limits};
use crate::host::text::{clean, printable};
use crate::settings::{self, DATABASE_URL};

/// The most a database URL may have.
pub const MAX_URL: usize = 65536;
/// The most an env file may have (read by root, edited in memory).
const MAX_ENV: u64 = 1 << 20;

/// The header of a first env file.
pub const NEW_ENV_HEADER: &str =
    "# Written by make install. `server --help` lists every setting.\n";

fn conf_dir() -> Result<Dir> {
    Dir::open(paths::CONF_DIR)
        .map_err(|e| Fail::failed(format!("{e}; make install puts the layout right")))
}

fn tribist_gid() -> Result<u32> {
    child::user_ids(paths::USER_NAME)
        .map(|(_, g)| g)
        .ok_or_else(|| Fail::failed("there is no user tribist: make install makes it"))
}

/// Writes `name` in /etc/tribist atomically (root:tribist 0640, fsynced).
pub fn write_conf(name: &str, bytes: &[u8]) -> Result<()> {
    let gid = tribist_gid()?;
    fsx::write_atomic_at(&conf_dir()?, name, bytes, 0o640, Some((0, gid)))
        .map_err(|e| Fail::failed(format!("{e}; nothing else changed")))
}

/// The env file's bytes, if there is one (root's file, no link followed, at most 1 MiB).
pub fn read_env() -> Result<Option<Vec<u8>>> {
    read_root_file(paths::ENV_FILE, MAX_ENV)
}

/// A new env file beside the real one, for the binary to check and the preflight to run
/// with before it replaces it; removed when dropped.
pub struct Candidate {
    pub name: String,
    pub bytes: Vec<u8>,
}

impl Candidate {
    pub fn write(bytes: Vec<u8>) -> Result<Candidate> {
        let name = format!(".env.{}", random_word(10));
        write_conf(&name, &bytes)?;
        Ok(Candidate { name, bytes })
    }
    pub fn path(&self) -> String {
        format!("{}/{}", paths::CONF_DIR, self.name)
    }
}

impl Drop for Candidate {
    fn drop(&mut self) {
        if let Ok(d) = Dir::open(paths::CONF_DIR) {
            let _ = fsx::unlinkat(&d, &self.name);
        }
    }
}

/// Whether one line of root's audit file says something served: a successful install,
/// upgrade, rollback or config by anyone.
pub fn served_line(line: &str) -> bool {
    let words: Vec<&str> = line.split(' ').collect();
    let Some(at) = words.iter().position(|w| {
        w.strip_prefix("action=")
            .is_some_and(|a| ["install", "upgrade", "rollback", "config"].contains(&a))
    }) else {
        return false;
    };
    words.len() > at + 2
        && words[at + 1].len() > "user=".len()
        && words[at + 1].starts_with("user=")
        && words.last() == Some(&"result=ok")
}

/// Whether the env file has served a healthy start: recorded (install and config do), or,
/// for an install from before the record, root's audit says something served, or the
/// service serves healthy now (recorded then).
pub fn env_served() -> bool {
    if fsx::lstat(std::path::Path::new(paths::ENV_OK)).is_ok() {
        return true;
    }
    if !matches!(read_env(), Ok(Some(_))) {
        return false;
    }
    if let Ok(f) = std::fs::File::open(paths::AUDIT_LOG) {
        let served = std::io::BufReader::new(f)
            .split(b'\n')
            .map_while(|l| l.ok())
            .any(|l| served_line(&String::from_utf8_lossy(&l)));
        if served {
            mark_env_served();
            return true;
        }
    }
    if steps::unit_active(paths::UNIT) && health::fetch().code == 200 {
        mark_env_served();
        return true;
    }
    false
}

/// Records that the env file has served (root's `env-served`).
pub fn mark_env_served() {
    if let Ok(d) = Dir::open(paths::STATE_DIR) {
        let _ = fsx::write_atomic_at(&d, "env-served", b"", 0o644, Some((0, 0)));
    }
}

/// Forgets it (a configuration saved without anything checking it).
pub fn unmark_env_served() {
    if let Ok(d) = Dir::open(paths::STATE_DIR) {
        let _ = fsx::unlinkat(&d, "env-served");
    }
}

/// The env file install runs with.
pub enum EnvUse {
    /// The one in place, kept.
    Existing,
    /// A new one, in place once the preflight passed.
    New(Candidate),
}

impl EnvUse {
    pub fn path(&self) -> String {
        match self {
            EnvUse::Existing => paths::ENV_FILE.to_string(),
            EnvUse::New(c) => c.path(),
        }
    }
}

/// What install does with the URL it was given (if any) and the env file there is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvChoice {
    /// No URL given: the file there (which has served, or not).
    KeepNoUrl { served: bool },
    /// A URL given, but the file there has served: kept (make config changes it).
    KeepServed,
    /// A URL given and a file that never served: its DATABASE_URL replaced.
    Replace,
    /// A URL given and no file: a new one.
    New,
}

pub fn env_choice(url_given: bool, env_exists: bool, served: impl FnOnce() -> bool) -> EnvChoice {
    match (url_given, env_exists) {
        (false, _) => EnvChoice::KeepNoUrl { served: served() },
        (true, false) => EnvChoice::New,
        (true, true) if served() => EnvChoice::KeepServed,
        (true, true) => EnvChoice::Replace,
    }
}

/// The database URL install was given (the bundle's `database_url`), its trailing newlines
/// dropped, checked: a value systemd can carry.
pub fn url_from_bundle(bytes: &[u8]) -> Result<String> {
    let refused = || {
        Fail::failed("DATABASE_URL holds a control character or is not UTF-8: systemd cannot pass it on; nothing written")
    };
    let url = std::str::from_utf8(bytes)
        .map_err(|_| refused())?
        .trim_end_matches('\n');
    if !settings::representable(url) {
        return Err(refused());
    }
    Ok(url.to_string())
}

/// Chooses the env file install runs with (deploy.sh's `choose_env`).
pub fn choose_env(url: Option<&str>) -> Result<EnvUse> {
    let env = read_env()?;
    let served = || env_served();
    let edit = |text: &str, url: &str| {
        settings::edit(text, &[], &[(DATABASE_URL, url)])
            .map(String::into_bytes)
            .map_err(|e| {
                Fail::failed(format!(
                    "{e}; fix {} by hand, then make install again",
                    paths::ENV_FILE
                ))
            })
    };
    match (env_choice(url.is_some(), env.is_some(), served), url) {
        (EnvChoice::KeepNoUrl { served }, _) => {
            if !served {
                say(&format!(
                    "using the existing {}, which has not served yet",
                    paths::ENV_FILE
                ));
            }
            Ok(EnvUse::Existing)
        }
        (EnvChoice::KeepServed, _) => {
            say(&format!(
                "keeping the existing {}, which serves: the DATABASE_URL given was not used (make config DATABASE_URL_FILE=… changes it, checked)",
                paths::ENV_FILE
            ));
            Ok(EnvUse::Existing)
        }
        (EnvChoice::Replace, Some(url)) => {
            let text = String::from_utf8_lossy(env.as_deref().unwrap_or_default()).into_owned();
            let c = Candidate::write(edit(&text, url)?)?;
            say(&format!(
                "replacing the DATABASE_URL in {}, which has never served, with the one given (once the preflight passes)",
                paths::ENV_FILE
            ));
            Ok(EnvUse::New(c))
        }
        (_, Some(url)) => Ok(EnvUse::New(Candidate::write(edit(NEW_ENV_HEADER, url)?)?)),
        (_, None) => Ok(EnvUse::Existing),
    }
}

/// Puts the env file the preflight passed with in place (the previous one kept as
/// env.prev); whatever was there before, it is root:tribist 0640 afterwards.
pub fn install_env(env: EnvUse) -> Result<()> {
    if let EnvUse::New(c) = env {
        if let Some(old) = read_env()? {
            write_conf("env.prev", &old)?;
        }
        write_conf("env", &c.bytes)?;
        say(&format!(
            "wrote {} with the DATABASE_URL given",
            paths::ENV_FILE
        ));
    }
    // Whatever was there before, the secret is readable by root and the service only.
    let gid = tribist_gid()?;
    if let Ok(r) = fsx::open_regular_at(
        &conf_dir()?,
        "env",
        Limits {
            owner: None,
            max_size: MAX_ENV,
        },
    ) {
        super::hostlayout::owner_mode(std::os::fd::AsFd::as_fd(&r.file), 0, gid, 0o640).map_err(
            |e| {
                Fail::failed(format!(
                    "cannot set the owner and mode of {}: {e}",
                    paths::ENV_FILE
                ))
            },
        )?;
    }
    Ok(())
}

/// What a binary sees as TRIBIST_LISTEN: the socket's address.
fn run_binary(binary: &str, args: &[&str], timeout: Duration) -> Result<child::Outcome> {
    let mut spawn = Spawn::new(binary)
        .args(args)
        .env("TRIBIST_LISTEN", health::listen_address())
        .stop_when(interrupt::interrupted);
    if is_root() {
        let who = RunAs::user(paths::USER_NAME)
            .ok_or_else(|| Fail::failed("there is no user tribist: make install makes it"))?;
        spawn = spawn.run_as(who);
    }
    spawn
        .run(timeout, 64 * 1024)
        .map_err(|e| Fail::failed(format!("cannot run {binary} as {}: {e}", paths::USER_NAME)))
}

/// The binary that reads the configuration: root's verified copy (what runs), or, on a host
/// from before it, the installed file in api/; None when there is neither.
pub fn reading_binary() -> Option<String> {
    if fsx::lstat(std::path::Path::new(paths::VERIFIED)).is_ok_and(|st| st.is_regular()) {
        return Some(paths::VERIFIED.into());
    }
    let api = Dir::open(paths::API_DIR).ok()?;
    api.lstat_at("server")
        .ok()
        .filter(|st| st.is_regular())
        .map(|_| format!("{}/server", paths::API_DIR))
}

/// `config`: every setting as the installed binary reads the env file (`--print-config`,
/// passwords masked), and the address (root or tribist).
pub fn config_show() -> Result<Exit> {
    let env = match read_env() {
        Ok(Some(e)) => e,
        _ => {
            return Err(Fail::failed(format!(
                "cannot read {}: is tribist installed here (make install)?",
                paths::ENV_FILE
            )))
        }
    };
    let Some(binary) = reading_binary() else {
        println!(
            "# {} (no binary is installed to read it: make install; passwords masked)",
            paths::ENV_FILE
        );
        print!(
            "{}",
            printable(
                settings::masked(&String::from_utf8_lossy(&env)).as_bytes(),
                MAX_ENV as usize
            )
        );
        return Ok(Exit::Ok);
    };
    println!(
        "# {} as the installed binary reads it (server --print-config; passwords masked)",
        paths::ENV_FILE
    );
    let o = run_binary(
        &binary,
        &["--print-config", paths::ENV_FILE],
        Duration::from_secs(15),
    )?;
    print!("{}", o.stdout);
    eprint!("{}", o.stderr);
    if o.status != ExitKind::Exited(0) {
        return Err(Fail::failed("'server --print-config' failed (above)"));
    }
    println!(
        "# the address: {} (tribist.socket; make install LISTEN=ADDR:PORT changes it)",
        health::listen_address()
    );
    Ok(Exit::Ok)
}

/// Whether a stash's name is one `config-stash` makes.
pub fn stash_name_ok(name: &str) -> bool {
    name.strip_prefix("url.").is_some_and(|r| {
        (6..=16).contains(&r.len()) && r.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

/// `config-stash`: the database URL, on stdin, into a root-only file (printed: its name),
/// for the `config` that follows at a terminal. Stashes never taken go after 10 minutes.
pub fn config_stash() -> Result<Exit> {
    need_root("config (DATABASE_URL_FILE=)")?;
    let state = match Dir::open(paths::STATE_DIR) {
        Ok(d) => d,
        Err(_) => {
            return Err(Fail::new(
                Exit::NotInstalled,
                format!(
                    "tribist was never installed here (no {}): make install, with DATABASE_URL_FILE=, writes the first configuration",
                    paths::STATE_DIR
                ),
            ))
        }
    };
    remove_stale_stashes(&state);
    let mut url = Vec::new();
    std::io::stdin()
        .take(MAX_URL as u64 + 1)
        .read_to_end(&mut url)
        .map_err(|e| {
            Fail::failed(format!(
                "cannot read the database URL: {e}; nothing changed"
            ))
        })?;
    if url.len() > MAX_URL {
        return Err(Fail::failed(
            "the database URL is longer than 64 KiB; nothing changed",
        ));
    }
    let name = format!("url.{}", random_word(8));
    fsx::write_atomic_at(&state, &name, &url, 0o600, Some((0, 0)))
        .map_err(|e| Fail::failed(format!("{e}; nothing changed")))?;
    println!("{name}");
    Ok(Exit::Ok)
}

fn remove_stale_stashes(state: &Dir) {
    let Ok(entries) = std::fs::read_dir(paths::STATE_DIR) else {
        return;
    };
    let now = SystemTime::now();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("url.") {
            continue;
        }
        let old = e
            .metadata()
            .ok()
            .filter(|m| m.file_type().is_file())
            .and_then(|m| m.modified().ok())
            .is_some_and(|t| now.duration_since(t).unwrap_or_default() > Duration::from_secs(600));
        if old {
            let _ = fsx::unlinkat(state, &name);
        }
    }
}

/// The URL in stash `name`, which is removed at once.
fn take_stash(name: &str) -> Result<Vec<u8>> {
    let no = || {
        Fail::usage(format!(
            "--database-url-stash: no stash '{}' (make config sends it)",
            clean(name.as_bytes(), 40)
        ))
    };
    if !stash_name_ok(name) {
        return Err(no());
    }
    let state = Dir::open(paths::STATE_DIR).map_err(|_| no())?;
    let r = fsx::open_regular_at(
        &state,
        name,
        Limits {
            owner: Some(0),
            max_size: MAX_URL as u64 + 1,
        },
    )
    .map_err(|_| no())?;
    let bytes = fsx::read_bounded(&r.file, MAX_URL as u64 + 1, name).map_err(|_| no());
    let _ = fsx::unlinkat(&state, name);
    bytes
}

/// Where `config --database-url-*` takes the URL from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UrlFrom {
    Stdin,
    Stash(String),
}

/// A configuration change as asked: the names in the order given (for the audit).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Change {
    pub sets: Vec<(String, String)>,
    pub unsets: Vec<String>,
    pub url: Option<UrlFrom>,
    pub names: Vec<String>,
}

/// `--set NAME=VALUE`, `--unset NAME`, `--database-url-stdin`, `--database-url-stash NAME`,
/// each checked: a name `make config` may change, a value systemd can carry.
pub fn parse_change(args: &[String]) -> Result<Change> {
    let settable = || settings::settable().collect::<Vec<_>>().join(" ");
    let mut c = Change::default();
    let mut i = 0;
    while i < args.len() {
        let next = args.get(i + 1).map(String::as_str).unwrap_or("");
        match args[i].as_str() {
            "--set" => {
                let (name, value) = next.split_once('=').unwrap_or((next, ""));
                if !next.contains('=') || !settings::get(name).is_some_and(|s| s.settable()) {
                    return Err(Fail::usage(format!(
                        "--set needs NAME=VALUE with NAME one of {}, got '{}'",
                        settable(),
                        clean(next.as_bytes(), 60)
                    )));
                }
                if !settings::representable(value) {
                    return Err(Fail::usage(format!(
                        "the value of {name} holds a control character or is not UTF-8"
                    )));
                }
                c.sets.push((name.into(), value.into()));
                c.names.push(name.into());
                i += 2;
            }
            "--unset" => {
                if !settings::get(next).is_some_and(|s| s.settable()) {
                    return Err(Fail::usage(format!(
                        "--unset needs a setting's name, got '{}'",
                        clean(next.as_bytes(), 60)
                    )));
                }
                c.unsets.push(next.into());
                c.names.push(next.into());
                i += 2;
            }
            "--database-url-stdin" => {
                c.url = Some(UrlFrom::Stdin);
                c.names.push(DATABASE_URL.into());
                i += 1;
            }
            "--database-url-stash" => {
                c.url = Some(UrlFrom::Stash(next.into()));
                c.names.push(DATABASE_URL.into());
                i += 2;
            }
            other => {
                return Err(Fail::usage(format!(
                    "config: unknown argument '{}'",
                    clean(other.as_bytes(), 40)
                )))
            }
        }
    }
    if c.names.is_empty() {
        return Err(Fail::usage("config: nothing to change"));
    }
    Ok(c)
}

/// The URL from where `from` says; the stash's loses its trailing newlines (as deploy.sh's
/// `$(…)` did), stdin's one final newline.
fn read_url(from: &UrlFrom) -> Result<String> {
    let bytes = match from {
        UrlFrom::Stash(name) => take_stash(name)?,
        UrlFrom::Stdin => {
            let mut b = Vec::new();
            std::io::stdin()
                .take(MAX_URL as u64)
                .read_to_end(&mut b)
                .map_err(|e| {
                    Fail::failed(format!("cannot read standard input: {e}; nothing changed"))
                })?;
            b
        }
    };
    let text = std::str::from_utf8(&bytes).map_err(|_| {
        Fail::failed("DATABASE_URL holds a control character or is not UTF-8: systemd cannot pass it on; nothing changed")
    })?;
    let url = match from {
        UrlFrom::Stash(_) => text.trim_end_matches('\n'),
        UrlFrom::Stdin => text.strip_suffix('\n').unwrap_or(text),
    };
    if url.is_empty() {
        return Err(Fail::usage("--database-url-stdin: standard input is empty"));
    }
    if !settings::representable(url) {
        return Err(Fail::failed(
            "DATABASE_URL holds a control character or is not UTF-8: systemd cannot pass it on; nothing changed",
        ));
    }
    Ok(url.to_string())
}

/// What `server --check-config` said, for a refusal: at most 600 bytes, its own prefix off.
pub fn check_said(out: &str) -> String {
    let out = out.trim_end_matches('\n');
    let bounded: String = out.chars().take(600).collect();
    bounded
        .lines()
        .map(|l| l.strip_prefix("server: error: ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A configuration change whose new file is in place but not yet proven by a healthy
/// restart: what a failure or an interrupt puts back. Before it exists nothing needs undoing
/// (the candidate file goes when dropped).
struct Switched {
    prev: Vec<u8>,
}

impl Switched {
    /// Keeps `prev` as env.prev, then puts `new` in place.
    fn to(prev: Vec<u8>, new: &[u8]) -> Result<Switched> {
        write_conf("env.prev", &prev)?;
        write_conf("env", new)?;
        Ok(Switched { prev })
    }

    /// The previous file back, and a restart with it that is not cut short (Ctrl-C again
    /// included): true once release `from` serves healthy again.
    fn restore(self, ctx: &Ctx, from: &str) -> bool {
        match write_conf("env", &self.prev) {
            Ok(()) => restart_and_wait(ctx, Some(from), false).is_ok(),
            Err(e) => {
                warn(&e.message);
                false
            }
        }
    }
}

fn interrupted_exit(ctx: &Ctx) -> Fail {
    warn("interrupted");
    ctx.audit(Outcome::Interrupted);
    Fail::quiet(Exit::Interrupted)
}

/// `config --set/--unset/--database-url-…` (root): see the module's comment.
pub fn config_change(ctx: &mut Ctx, args: &[String]) -> Result<Exit> {
    need_root("config (SET=, UNSET=, DATABASE_URL_FILE=)")?;
    let change = parse_change(args)?;
    let url = change.url.as_ref().map(read_url).transpose()?;
    if fsx::lstat(std::path::Path::new(paths::ENV_FILE)).is_ok_and(|st| st.is_symlink()) {
        return Err(Fail::failed(format!(
            "{} is a symbolic link; replace it with a file (or make install) first",
            paths::ENV_FILE
        )));
    }
    let installed_dirs = fsx::lstat(std::path::Path::new(paths::CONF_DIR))
        .is_ok_and(|st| st.is_dir())
        && fsx::lstat(std::path::Path::new(paths::LOCK_FILE)).is_ok();
    if !installed_dirs {
        return Err(Fail::new(
            Exit::NotInstalled,
            format!(
                "tribist was never installed here (no {}): make install, with DATABASE_URL_FILE=, writes the first configuration",
                paths::CONF_DIR
            ),
        ));
    }
    if interrupt::interrupted() {
        return Err(Fail::quiet(Exit::Interrupted));
    }
    let _lock = lock(ctx, Action::Config)?;
    ctx.extra.push(("changed", change.names.join(",")));
    // The restart would promote it: a configuration change must not also change the binary.
    let staged = Dir::open(paths::API_DIR)
        .ok()
        .is_some_and(|api| api.lstat_at("server_new").is_ok());
    if staged {
        ctx.audit(Outcome::RefusedBinaryStaged);
        return Err(Fail::failed(format!(
            "{}/server_new is staged, and the restart would promote it: finish it first (systemctl restart {}, or make upgrade) or remove it; nothing changed",
            paths::API_DIR,
            paths::UNIT
        )));
    }
    let current = read_env()?;
    let text = String::from_utf8_lossy(current.as_deref().unwrap_or_default()).into_owned();
    let unsets: Vec<&str> = change.unsets.iter().map(String::as_str).collect();
    let mut sets: Vec<(&str, &str)> = change
        .sets
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    if let Some(url) = &url {
        sets.push((DATABASE_URL, url));
    }
    let new = settings::edit(&text, &unsets, &sets)
        .map_err(|e| {
            Fail::failed(format!(
                "{e}; nothing changed (fix {} by hand)",
                paths::ENV_FILE
            ))
        })?
        .into_bytes();
    let names = change.names.join(" ");
    if current.as_deref() == Some(&new[..]) {
        ctx.audit(Outcome::Unchanged);
        say(&format!(
            "nothing changes: {} already says so",
            paths::ENV_FILE
        ));
        return Ok(Exit::Ok);
    }
    // A host whose first install never finished: the file is all there is to change; make
    // install checks it with its preflight, then starts.
    if fsx::lstat(std::path::Path::new(paths::UNIT_FILE)).is_err() {
        ctx.release_from = None;
        if let Some(old) = &current {
            write_conf("env.prev", old)?;
        }
        write_conf("env", &new)?;
        unmark_env_served();
        ctx.audit(Outcome::SavedNotInstalled);
        say(&format!(
            "saved {} ({names}); tribist is not installed here yet (no unit, or no binary that runs), so nothing checked or started it: make install runs it through a preflight with this configuration",
            paths::ENV_FILE
        ));
        return Ok(Exit::Ok);
    }
    let Some(from) = release_of("server") else {
        ctx.audit(Outcome::RefusedDoesNotRun);
        return Err(Fail::failed(
            "the installed binary does not run ('server --version' failed), so nothing can check the new configuration; nothing changed (make upgrade ships one that runs)",
        ));
    };
    ctx.release_from = Some(from.clone());
    ctx.release_to = Some(from.clone());
    let candidate = Candidate::write(new)?;
    say("checking the new configuration with the installed binary (server --check-config)");
    // Root's verified copy of what runs (a host from before it: the installed file).
    let binary = reading_binary().unwrap_or_else(|| format!("{}/server", paths::API_DIR));
    let o = run_binary(
        &binary,
        &["--check-config", &candidate.path()],
        Duration::from_secs(15),
    )?;
    if interrupt::interrupted() {
        return Err(interrupted_exit(ctx));
    }
    let said = format!("{}{}", o.stdout, o.stderr);
    if o.status != ExitKind::Exited(0) {
        ctx.audit(Outcome::RefusedCheck);
        warn(&format!("refused: {}; nothing changed", check_said(&said)));
        // The binary's own exit codes: 2 a setting refused, 4 the database refuses the
        // configuration; anything else may pass by itself (the database is down).
        let exit = match o.status {
            ExitKind::Exited(2 | 4) => Exit::Configuration,
            _ => Exit::Failed,
        };
        return Err(Fail::quiet(exit));
    }
    say(&format!("    {}", said.trim_end_matches('\n')));
    match preflight(ctx, "server", &from, &candidate.path()) {
        Ok(()) => {}
        Err(Refused::Interrupted) => return Err(interrupted_exit(ctx)),
        Err(r) => {
            ctx.audit(Outcome::RefusedPreflight);
            warn(&format!(
                "refused: release {from} does not serve with the new configuration (above); nothing changed"
            ));
            return Err(Fail::quiet(if r == Refused::Configuration {
                Exit::Configuration
            } else {
                Exit::Failed
            }));
        }
    }
    if interrupt::interrupted() {
        return Err(interrupted_exit(ctx));
    }
    // From here the new file is in place but not proven: the previous one goes back if the
    // server is not healthy with it, or the run is interrupted.
    let switched = Switched::to(current.unwrap_or_default(), &candidate.bytes)?;
    drop(candidate);
    say(&format!(
        "applying ({names}): restarting {}, since a handover keeps the environment, and waiting up to {}s",
        paths::UNIT,
        ctx.wait
    ));
    match restart_and_wait(ctx, Some(&from), true) {
        Ok(()) => {
            mark_env_served();
            ctx.audit(Outcome::Ok);
            say(&format!(
                "configuration changed ({names}); the previous file is {}",
                paths::ENV_PREV
            ));
            Ok(Exit::Ok)
        }
        Err(NotHealthy::Interrupted) => {
            warn("interrupted");
            warn("the configuration change was interrupted; putting the previous one back");
            let back = switched.restore(ctx, &from);
            ctx.audit(if back {
                Outcome::InterruptedRestored
            } else {
                Outcome::InterruptedRestoreFailed
            });
            Err(Fail::quiet(Exit::Interrupted))
        }
        Err(NotHealthy::Failed) => {
            warn("not healthy with the new configuration; putting the previous one back");
            if switched.restore(ctx, &from) {
                ctx.audit(Outcome::FailedRestored);
                return Err(Fail::failed(
                    "the new configuration failed after the restart and was taken back: the previous one serves again",
                ));
            }
            ctx.audit(Outcome::FailedRestoreFailed);
            Err(Fail::failed(format!(
                "the new configuration failed AND the previous one does not serve either: {} is down; see 'journalctl -u {}'",
                paths::UNIT,
                paths::UNIT
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_change_as_asked_names_in_order() {
        let c = parse_change(&strings(&[
            "--set",
            "TRIBIST_WORKERS=6",
            "--set",
            "TRIBIST_DB_TIMEOUT=3s",
            "--unset",
            "TRIBIST_LOG_LEVEL",
            "--database-url-stash",
            "url.abcdEF12",
        ]))
        .unwrap();
        assert_eq!(
            c.names,
            [
                "TRIBIST_WORKERS",
                "TRIBIST_DB_TIMEOUT",
                "TRIBIST_LOG_LEVEL",
                "DATABASE_URL"
            ]
        );
        assert_eq!(c.sets[1], ("TRIBIST_DB_TIMEOUT".into(), "3s".into()));
        assert_eq!(c.url, Some(UrlFrom::Stash("url.abcdEF12".into())));
        // A value may hold '=' and anything printable.
        let c = parse_change(&strings(&["--set", "PGHOST=a=b $x"])).unwrap();
        assert_eq!(c.sets, [("PGHOST".to_string(), "a=b $x".to_string())]);
    }

    #[test]
    fn what_config_may_not_change_is_refused_as_misuse() {
        for bad in [
            &[][..],
            &["--set", "TRIBIST_LISTEN=127.0.0.1:1"],
            &["--set", "DATABASE_URL=postgres://u:p@h/d"],
            &["--set", "PGPASSWORD=x"],
            &["--set", "X=$(id)"],
            &["--set", "TRIBIST_WORKERS"],
            &["--set", "TRIBIST_WORKERS=1\n2"],
            &["--unset", "DATABASE_URL"],
            &["--unset"],
            &["--frob"],
        ] {
            let err = parse_change(&strings(bad)).unwrap_err();
            assert_eq!(err.exit, Exit::Usage, "{bad:?}");
        }
        let err = parse_change(&strings(&["--set", "X=1"])).unwrap_err();
        assert!(
            err.message.contains("NAME one of PGHOST PGPORT"),
            "{}",
            err.message
        );
    }

    #[test]
    fn what_install_does_with_the_env_file() {
        assert_eq!(
            env_choice(false, true, || true),
            EnvChoice::KeepNoUrl { served: true }
        );
        assert_eq!(
            env_choice(false, true, || false),
            EnvChoice::KeepNoUrl { served: false }
        );
        assert_eq!(env_choice(true, true, || true), EnvChoice::KeepServed);
        assert_eq!(env_choice(true, true, || false), EnvChoice::Replace);
        // No file: nothing to ask whether it served.
        assert_eq!(env_choice(true, false, || panic!("asked")), EnvChoice::New);
    }

    #[test]
    fn urls_from_the_bundle() {
        assert_eq!(
            url_from_bundle(b"postgres://u:p$@h/d\n\n").unwrap(),
            "postgres://u:p$@h/d"
        );
        assert_eq!(url_from_bundle(b"x ").unwrap(), "x ");
        assert!(url_from_bundle(b"a\nb").is_err());
        assert!(url_from_bundle(b"\xff").is_err());
    }

    #[test]
    fn the_audit_tells_whether_anything_served() {
        assert!(served_line("2026-01-02T03:04:05Z host=a action=install user=root from=local by=\"x\" release_from=none release_to=r result=ok"));
        assert!(served_line("2026-01-02T03:04:05Z host=a action=config user=alice(sudo) from=1.2.3.4 by=\"x\" release_from=r release_to=r changed=A result=ok"));
        assert!(!served_line("2026-01-02T03:04:05Z host=a action=install user=root from=local by=\"x\" release_from=none release_to=r result=refused-preflight"));
        assert!(!served_line(
            "2026-01-02T03:04:05Z host=a action=service-start user=systemd promoted=no result=ok"
        ));
        assert!(!served_line(
            "2026-01-02T03:04:05Z host=a action=uninstall user=root from=local result=ok"
        ));
        assert!(!served_line(""));
    }

    #[test]
    fn stash_names() {
        assert!(stash_name_ok("url.AbC123xy"));
        for bad in [
            "url.abc",
            "url.",
            "url.abcdef/x",
            "../url.abcdef",
            "url.abcdefghijklmnopq",
        ] {
            assert!(!stash_name_ok(bad), "{bad}");
        }
    }

    #[test]
    fn the_binary_refusal_as_shown() {
        assert_eq!(
            check_said(
                "server: error: TRIBIST_WORKERS: \"0\" is not a whole number from 1 to 256\n"
            ),
            "TRIBIST_WORKERS: \"0\" is not a whole number from 1 to 256"
        );
        assert_eq!(check_said(&"x".repeat(700)).len(), 600);
    }
}
