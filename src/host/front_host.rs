//! `tribist-host front apply|remove|status`: the HTTPS front door on a host — Caddy from the
//! host's own packages in front of the service (issue 19, docs/front-door.md).
//!
//! Why its own commands: `make install DOMAIN=…` and `make uninstall` (being ported to
//! `host::deploy`) call [`apply`] and [`remove`] with their [`Ctx`]; until then a root shell
//! runs them directly. Each observes the host (the caddy package, ports 80 and 443, the
//! Caddyfile and dpkg's checksum of it, tribist's files, the drop-in, whether caddy runs),
//! asks `host::front_plan` what to do, and does exactly that:
//!
//! - every file is root's: `/etc/caddy/tribist/` (root:caddy 0750) and its files (root:caddy
//!   0640), the Caddyfile and the drop-in (root 0644); nothing of the front is writable by
//!   tribist or by caddy. Each is written atomically (`fsx`), and what it held before is
//!   remembered, so a refusal puts every byte back;
//! - `caddy validate`, as user caddy (so an unreadable key fails here), before anything is
//!   applied; a refused configuration is undone and Caddy never sees it;
//! - `systemctl reload caddy` only when a file changed: a reload closes idle keep-alive
//!   connections (docs/front-door.md, "Reloads"); a restart only when the drop-in changed;
//! - certificate files the deployer gives are read once through a descriptor, bounded,
//!   checked as PEM, and copied; the site names the copies;
//! - the audit gets `action=front op=apply|remove domain=… result=…`.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::audit::{Action, Outcome};
use super::child::{self, RunAs, Spawn};
use super::deploy::{self, health, interrupt, need_root, say, warn, Ctx, Exit, Fail, Result};
use super::digest::Sha256;
use super::front::{self, FrontError};
use super::front_plan::{self as plan, Caddyfile, CaddyfileApply, Holder, PackageStep, Pem, Step};
use super::front_report;
use super::fsx::{self, Dir, FsError, Limits};
use super::text::clean;
use super::x509;

const CADDY_USER: &str = "caddy";
const CADDY_UNIT: &str = "caddy.service";
/// A Caddyfile is small; more is not one.
const MAX_CADDYFILE: u64 = 1 << 20;
/// How long a first certificate may take (Let's Encrypt answers in seconds; a busy CA and
/// Caddy's retries in tens of seconds).
/// How long apply waits for the front to answer (a first certificate takes seconds to a
/// minute); `TRIBIST_FRONT_WAIT` (seconds, 1 to 3600) sets it.
fn cert_wait() -> Duration {
    Duration::from_secs(
        std::env::var("TRIBIST_FRONT_WAIT")
            .ok()
            .and_then(|w| w.parse().ok())
            .filter(|w| (1..=3600).contains(w))
            .unwrap_or(90),
    )
}
const PATH_ENV: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// `tribist-host front …` (`args`: after `front`).
pub fn main(args: &[String]) -> ExitCode {
    let outcome = match args.split_first() {
        Some((c, rest)) if c == "apply" => plan::parse_apply(rest)
            .map_err(|e| Fail::usage(e.to_string()))
            .and_then(|a| apply(&mut ctx_by(a.by.as_deref()), &a)),
        Some((c, rest)) if c == "remove" => plan::parse_remove(rest)
            .map_err(|e| Fail::usage(e.to_string()))
            .and_then(|a| remove(&mut ctx_by(a.by.as_deref()), &a)),
        Some((c, [])) if c == "status" => status(),
        Some((c, [])) if c == "harden" => harden(&mut ctx_by(None)),
        Some((c, [by, who])) if c == "harden" && by == "--by" => harden(&mut ctx_by(Some(who))),
        _ => Err(Fail::usage(
            "usage: tribist-host front apply ARGS | remove [--purge] | status | harden [--by WHO]; see: tribist-host help",
        )),
    };
    match outcome {
        Ok(exit) => ExitCode::from(exit as u8),
        Err(fail) => {
            if !fail.message.is_empty() {
                warn(&fail.message);
            }
            ExitCode::from(fail.exit as u8)
        }
    }
}

fn ctx_by(by: Option<&str>) -> Ctx {
    let mut ctx = Ctx::new();
    if let Some(b) = by {
        ctx.by = b.to_string();
    }
    ctx
}

fn front_fail(e: FrontError) -> Fail {
    Fail::failed(e.to_string())
}

// ---------------------------------------------------------------------------------------------
// Files, through descriptors.

/// The directories the front writes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    EtcCaddy,
    Ours,
    DropIn,
}

/// A file's mode and (uid, gid).
type Attrs = (u32, (u32, u32));

/// Owner and mode of each file the front writes.
fn attrs(place: Place, caddy_gid: u32) -> Attrs {
    match place {
        Place::Ours => (0o640, (0, caddy_gid)),
        Place::EtcCaddy | Place::DropIn => (0o644, (0, 0)),
    }
}

fn not_found(e: &FsError) -> bool {
    matches!(e, FsError::Io { err, .. } if err.kind() == std::io::ErrorKind::NotFound)
}

/// The bytes of `dir/name`, None when it does not exist; a link, a FIFO, a file too large or
/// (with `owner`) someone else's is an error.
fn read_opt(dir: &Dir, name: &str, owner: Option<u32>, max: u64) -> Result<Option<Vec<u8>>> {
    match fsx::open_regular_at(
        dir,
        name,
        Limits {
            owner,
            max_size: max,
        },
    ) {
        Ok(r) => fsx::read_bounded(&r.file, max, &dir.shown_name(name))
            .map(Some)
            .map_err(|e| Fail::failed(e.to_string())),
        Err(e) if not_found(&e) => Ok(None),
        Err(e) => Err(Fail::failed(format!(
            "{e}; the front's files are root's: remove it (rm {}), then run the same command again",
            dir.shown_name(name)
        ))),
    }
}

/// Directory `name` in `parent`, made if missing (`mode`, root:`gid`); refused if it is a
/// link or not root's; its mode and group put right.
fn ensure_dir(parent: &Dir, name: &str, mode: u32, gid: u32) -> Result<Dir> {
    let c = fsx::check_name(name).map_err(|e| Fail::failed(e.to_string()))?;
    // SAFETY: c is NUL-terminated, parent's descriptor is live.
    let r = unsafe { libc::mkdirat(parent.as_fd().as_raw_fd(), c.as_ptr(), mode as libc::mode_t) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(Fail::failed(format!(
                "cannot make {}: {e}",
                parent.shown_name(name)
            )));
        }
    }
    let dir = parent
        .open_at(name)
        .map_err(|e| Fail::failed(format!("{e}; remove it, then run the same command again")))?;
    let st = dir.fstat().map_err(|e| Fail::failed(e.to_string()))?;
    if st.uid != 0 {
        return Err(Fail::failed(format!(
            "{} is owned by uid {}, not root: the front's files must be root's; remove it (rm -r {}), then run the same command again",
            dir.shown(),
            st.uid,
            dir.shown()
        )));
    }
    let fd = dir.as_fd().as_raw_fd();
    // SAFETY: fchown/fchmod on a live descriptor.
    let ok = unsafe {
        (st.gid == gid || libc::fchown(fd, 0, gid) == 0)
            && (st.perm() == mode || libc::fchmod(fd, mode as libc::mode_t) == 0)
    };
    if !ok {
        return Err(Fail::failed(format!(
            "cannot set the owner or mode of {}: {}",
            dir.shown(),
            std::io::Error::last_os_error()
        )));
    }
    Ok(dir)
}

/// `dir` is root's and nobody else may write in it.
fn check_root_dir(dir: &Dir) -> Result<()> {
    let st = dir.fstat().map_err(|e| Fail::failed(e.to_string()))?;
    if st.uid != 0 || st.perm() & 0o022 != 0 {
        return Err(Fail::failed(format!(
            "{} is owned by uid {} with mode {:o}: only root may write there (the front's configuration is root's); run: chown root: {} && chmod go-w {}",
            dir.shown(),
            st.uid,
            st.perm(),
            dir.shown(),
            dir.shown()
        )));
    }
    Ok(())
}

/// An exclusive lock on a directory (root's), held until dropped: one apply or remove at a
/// time. It holds a duplicate of the directory's descriptor (the same open file, so the same
/// lock), not a borrow.
struct DirLock(std::os::fd::OwnedFd);

impl DirLock {
    fn take(dir: &Dir) -> Result<DirLock> {
        let fd = dir
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| Fail::failed(format!("cannot lock {}: {e}", dir.shown())))?;
        // SAFETY: flock on a live descriptor.
        if unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(Fail::new(
                Exit::Locked,
                format!(
                    "another tribist-host front apply or remove is running on this host (it holds {}); wait for it to end, then run the same command again",
                    dir.shown()
                ),
            ));
        }
        Ok(DirLock(fd))
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // SAFETY: flock on a live descriptor.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// The directories, open.
struct Places {
    etc: Dir,
    ours: Option<Dir>,
    dropin: Option<Dir>,
    caddy_gid: u32,
}

impl Places {
    fn dir(&self, p: Place) -> Option<&Dir> {
        match p {
            Place::EtcCaddy => Some(&self.etc),
            Place::Ours => self.ours.as_ref(),
            Place::DropIn => self.dropin.as_ref(),
        }
    }
}

/// What a file held before this command changed it.
struct Saved {
    place: Place,
    name: &'static str,
    before: Option<Vec<u8>>,
}

/// The changes made so far, each undoable: a refusal puts every byte back.
struct Changes<'a> {
    places: &'a Places,
    saved: Vec<Saved>,
    /// The Caddyfile's own mode and owner, when it had one ([`Observed::caddyfile_attrs`]).
    caddyfile: Option<Attrs>,
}

impl<'a> Changes<'a> {
    fn new(places: &'a Places) -> Changes<'a> {
        Changes {
            places,
            saved: Vec::new(),
            caddyfile: None,
        }
    }

    /// Keeps the Caddyfile's mode and owner (`Some`) in what this writes and puts back.
    fn keeping(mut self, caddyfile: Option<Attrs>) -> Changes<'a> {
        self.caddyfile = caddyfile;
        self
    }

    fn attrs(&self, place: Place, name: &str) -> Attrs {
        match self.caddyfile {
            Some(a) if place == Place::EtcCaddy && name == plan::CADDYFILE => a,
            _ => attrs(place, self.places.caddy_gid),
        }
    }

    fn dir(&self, place: Place) -> Result<&'a Dir> {
        self.places
            .dir(place)
            .ok_or_else(|| Fail::failed(format!("internal: {place:?} is not open")))
    }

    fn write(
        &mut self,
        place: Place,
        name: &'static str,
        bytes: &[u8],
        before: Option<Vec<u8>>,
    ) -> Result<()> {
        let dir = self.dir(place)?;
        let (mode, owner) = self.attrs(place, name);
        self.saved.push(Saved {
            place,
            name,
            before,
        });
        fsx::write_atomic_at(dir, name, bytes, mode, Some(owner))
            .map_err(|e| Fail::failed(e.to_string()))
    }

    fn remove(&mut self, place: Place, name: &'static str, before: Option<Vec<u8>>) -> Result<()> {
        let dir = self.dir(place)?;
        self.saved.push(Saved {
            place,
            name,
            before,
        });
        match fsx::unlinkat(dir, name) {
            Err(e) if !not_found(&e) => Err(Fail::failed(e.to_string())),
            _ => Ok(()),
        }
    }

    fn any(&self, place: Place) -> bool {
        self.saved.iter().any(|s| s.place == place)
    }

    /// Puts back what each file held, newest change first; the problems, if any.
    fn undo(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        while let Some(s) = self.saved.pop() {
            let Some(dir) = self.places.dir(s.place) else {
                continue;
            };
            let (mode, owner) = self.attrs(s.place, s.name);
            let r = match &s.before {
                Some(b) => fsx::write_atomic_at(dir, s.name, b, mode, Some(owner)),
                None => match fsx::unlinkat(dir, s.name) {
                    Err(e) if not_found(&e) => Ok(()),
                    other => other,
                },
            };
            if let Err(e) = r {
                problems.push(e.to_string());
            }
        }
        problems
    }
}

/// A source file the deployer named (a certificate, a key, a CA root), read once through a
/// descriptor (never through a link at its last component), bounded, checked as PEM.
fn read_source(var: &str, path: &front::HostPath, kind: Pem) -> Result<Vec<u8>> {
    let p = path.as_path();
    let shown = clean(p.as_os_str().as_encoded_bytes(), 300);
    let (parent, name) = match (p.parent(), p.file_name().and_then(|n| n.to_str())) {
        (Some(d), Some(n)) => (d, n),
        _ => return Err(Fail::failed(format!("{var}={shown} does not name a file"))),
    };
    let bad = |why: String| {
        Fail::new(
            Exit::Configuration,
            format!("{var}={shown}: {why}; give the right file, then run the same command again"),
        )
    };
    // Every component through a descriptor, none a link: a directory of someone else's on
    // the way cannot point root at another file.
    let mut dir = Dir::open("/").map_err(|e| bad(e.to_string()))?;
    for c in parent.components() {
        match c {
            std::path::Component::RootDir => {}
            std::path::Component::Normal(n) => {
                let n = n.to_str().ok_or_else(|| bad("not a UTF-8 path".into()))?;
                dir = dir.open_at(n).map_err(|e| bad(e.to_string()))?;
            }
            _ => return Err(bad("not an absolute path without . or ..".into())),
        }
    }
    let owner = dir.fstat().map_err(|e| bad(e.to_string()))?.uid;
    let r = fsx::open_regular_at(
        &dir,
        name,
        Limits {
            owner: None,
            max_size: plan::MAX_PEM,
        },
    )
    .map_err(|e| bad(e.to_string()))?;
    // Root's, or its directory's owner's (the deployer's upload), and one name only: not a
    // hard link someone made to a file they could not read.
    let st = r.file.metadata().map_err(|e| bad(e.to_string()))?;
    {
        use std::os::unix::fs::MetadataExt;
        if (st.uid() != 0 && st.uid() != owner) || st.nlink() != 1 {
            return Err(bad(format!(
                "it is owned by uid {} with {} links: it must be root's or its directory's owner's, and have one name",
                st.uid(),
                st.nlink()
            )));
        }
    }
    let bytes =
        fsx::read_bounded(&r.file, plan::MAX_PEM, &shown).map_err(|e| bad(e.to_string()))?;
    plan::check_pem(kind, &bytes).map_err(bad)?;
    Ok(bytes)
}

/// The team's own certificate (CERT_FILE), read as `read_source` reads it and refused unless
/// clients accept it for `domain` at `now`: the deployer checked it before sending it, and
/// this checks it again where it is installed (the same `x509::check_for`), because the
/// front's own check (`curl -k`) accepts any certificate.
fn read_own_cert(path: &front::HostPath, domain: &str, now: i64) -> Result<Vec<u8>> {
    let bytes = read_source("CERT_FILE", path, Pem::Certificate)?;
    x509::check_for(&bytes, domain, now).map_err(|why| {
        Fail::new(
            Exit::Configuration,
            format!(
                "CERT_FILE={} {why}; then run the same command again",
                clean(path.as_path().as_os_str().as_encoded_bytes(), 300)
            ),
        )
    })?;
    Ok(bytes)
}

// ---------------------------------------------------------------------------------------------
// Programs.

fn run(spawn: Spawn, what: &str, timeout: Duration) -> Result<child::Outcome> {
    spawn
        .run(timeout, 64 * 1024)
        .map_err(|e| Fail::failed(format!("cannot run {what}: {e}")))
}

fn ok(o: &child::Outcome) -> bool {
    o.status == child::ExitKind::Exited(0)
}

/// The last `n` non-empty lines of a program's output, as one line.
fn tail(o: &child::Outcome, n: usize) -> String {
    let all = format!("{}\n{}", o.stdout, o.stderr);
    let lines: Vec<&str> = all.lines().filter(|l| !l.trim().is_empty()).collect();
    clean(
        lines[lines.len().saturating_sub(n)..]
            .join(" | ")
            .as_bytes(),
        500,
    )
}

fn dpkg_status() -> Option<String> {
    let o = Spawn::new("/usr/bin/dpkg-query")
        .args(["-W", "-f=${Status}\n${Version}", "caddy"])
        .run(Duration::from_secs(20), 4096)
        .ok()?;
    ok(&o).then_some(o.stdout)
}

/// Caddy 2.6 or newer is installed, installed now from this host's packages if it can
/// reach them, or the command that installs it is named.
fn ensure_caddy() -> Result<()> {
    let apt = Path::new("/usr/bin/apt-get").exists();
    match plan::package_step(dpkg_status().as_deref(), apt) {
        PackageStep::Ready => Ok(()),
        PackageStep::TooOld(v) => Err(Fail::failed(format!(
            "caddy {v} is installed; the front needs Caddy 2.6 or newer: upgrade it (apt-get install -y caddy, from backports on older releases), then run the same command again"
        ))),
        PackageStep::NoApt => Err(Fail::failed(
            "caddy is not installed and this host has no apt-get: install Caddy 2.6 or newer with its package manager (https://caddyserver.com/docs/install), then run the same command again",
        )),
        PackageStep::Install => {
            say("caddy is not installed: installing it from this host's packages (apt-get install -y caddy)");
            let install = || {
                run(
                    Spawn::new("/usr/bin/apt-get")
                        .args([
                            "install",
                            "-y",
                            "-o",
                            "Dpkg::Options::=--force-confold",
                            "caddy",
                        ])
                        .env("DEBIAN_FRONTEND", "noninteractive")
                        .env("PATH", PATH_ENV)
                        .env("LC_ALL", "C"),
                    "apt-get install -y caddy",
                    Duration::from_secs(600),
                )
            };
            let mut o = install()?;
            if !ok(&o) && !interrupt::interrupted() {
                say("apt-get could not install caddy; updating the package lists once (apt-get update)");
                let _ = run(
                    Spawn::new("/usr/bin/apt-get")
                        .args(["update"])
                        .env("PATH", PATH_ENV)
                        .env("LC_ALL", "C"),
                    "apt-get update",
                    Duration::from_secs(300),
                );
                o = install()?;
            }
            if interrupt::interrupted() {
                return Err(Fail::new(Exit::Interrupted, "interrupted while apt-get installed caddy; nothing of the front was written"));
            }
            if !ok(&o) {
                return Err(Fail::failed(format!(
                    "caddy is not installed and this host cannot install it from its packages (apt-get said: {}); run on the host: {}, then run the same command again",
                    tail(&o, 2),
                    plan::INSTALL_COMMAND
                )));
            }
            match plan::package_step(dpkg_status().as_deref(), apt) {
                PackageStep::Ready => {
                    say("caddy installed (apt-get install -y caddy)");
                    Ok(())
                }
                other => Err(Fail::failed(format!(
                    "apt-get said it installed caddy ({}) but dpkg says {other:?}; check: dpkg -s caddy",
                    tail(&o, 1)
                ))),
            }
        }
    }
}

fn caddy_ids() -> Result<(u32, u32)> {
    child::user_ids(CADDY_USER).ok_or_else(|| {
        Fail::failed("there is no user caddy (Debian's caddy package makes it): run: apt-get install --reinstall caddy, then the same command again")
    })
}

/// `caddy validate` of the Caddyfile as it is now on disk, run as user caddy: Ok, or the
/// refusal with its fix.
fn validate(uid: u32, gid: u32) -> std::result::Result<(), (String, String)> {
    let o = Spawn::new("/usr/bin/caddy")
        .args([
            "validate",
            "--adapter",
            "caddyfile",
            "--config",
            "/etc/caddy/Caddyfile",
        ])
        .env("HOME", "/var/lib/caddy")
        .env("PATH", PATH_ENV)
        .run_as(RunAs {
            uid,
            gid,
            groups: child::user_groups(CADDY_USER, gid),
        })
        .run(Duration::from_secs(60), 64 * 1024);
    match o {
        Ok(o) if ok(&o) => Ok(()),
        Ok(o) => {
            let all = format!("{}\n{}", o.stdout, o.stderr);
            Err((plan::validate_error(&all), plan::validate_fix(&all)))
        }
        Err(e) => Err((
            format!("cannot run caddy validate: {e}"),
            "check that /usr/bin/caddy runs: caddy version".into(),
        )),
    }
}

fn caddy_active() -> bool {
    matches!(
        deploy::unit_property(CADDY_UNIT, "ActiveState").as_str(),
        "active" | "reloading"
    )
}

/// Whether the running Caddy has the hardening drop-in's limits (None: no main process to
/// ask, or its limits unreadable).
fn hardening_running() -> Option<bool> {
    let pid = deploy::unit_property(CADDY_UNIT, "MainPID");
    let pid: u32 = pid.trim().parse().ok().filter(|&p| p > 0)?;
    let limits = read_small(&format!("/proc/{pid}/limits"), 16 * 1024)?;
    Some(plan::limits_applied(&limits, plan::HARDENING))
}

fn systemctl(args: &[&str], timeout: Duration) -> Result<()> {
    let o = deploy::systemctl(args, timeout)?;
    if ok(&o) {
        Ok(())
    } else {
        Err(Fail::failed(format!(
            "systemctl {} failed ({}): {}",
            args.join(" "),
            o.status,
            tail(&o, 3)
        )))
    }
}

fn do_service(step: plan::ServiceStep) -> Result<()> {
    let t = Duration::from_secs(90);
    match step {
        plan::ServiceStep::Nothing => Ok(()),
        plan::ServiceStep::Reload => reload(t),
        // Enabled only once it started: a Caddy that cannot start is not left to start at
        // the next boot on files that were put back.
        plan::ServiceStep::Start => {
            systemctl(&["start", CADDY_UNIT], t)?;
            if let Err(f) = systemctl(&["enable", CADDY_UNIT], t) {
                warn(&format!(
                    "Caddy runs but is not enabled at boot ({}): systemctl enable caddy",
                    f.message
                ));
            }
            Ok(())
        }
        plan::ServiceStep::Restart => systemctl(&["restart", CADDY_UNIT], t),
    }
}

/// Caddy told to load /etc/caddy/Caddyfile, gracefully (what Debian's `ExecReload=` runs),
/// through the admin endpoint the running Caddy has: its socket (tribist's options were
/// imported), else the default `localhost:2019` (they were not, or a Caddy started before
/// they were). Debian's `systemctl reload caddy` asks the address the new configuration
/// names, which is not yet (or no longer) the running one's when tribist's options come in
/// or go: so both are tried, the socket first.
fn reload(timeout: Duration) -> Result<()> {
    let mut said = Vec::new();
    for address in plan::admin_addresses() {
        let o = run(
            Spawn::new("/usr/bin/caddy")
                .args([
                    "reload",
                    "--config",
                    "/etc/caddy/Caddyfile",
                    "--adapter",
                    "caddyfile",
                    "--force",
                    "--address",
                    &address,
                ])
                .env("HOME", "/var/lib/caddy")
                .env("PATH", PATH_ENV),
            "caddy reload",
            timeout,
        )?;
        if ok(&o) {
            return Ok(());
        }
        let why = tail(&o, 2);
        if !plan::admin_unreachable(&why) {
            return Err(Fail::failed(format!("caddy reload failed: {why}")));
        }
        said.push(format!("{address}: {why}"));
    }
    Err(Fail::failed(format!(
        "caddy reload reached no admin endpoint ({}); is Caddy running? systemctl status caddy",
        said.join("; ")
    )))
}

/// The lines of caddy's journal worth showing when the front does not answer: certificate
/// requests and errors, the last few.
fn caddy_journal() -> String {
    let o = Spawn::new("/usr/bin/journalctl")
        .args(["-u", CADDY_UNIT, "-n", "300", "--no-pager", "-o", "cat"])
        .run(Duration::from_secs(15), 256 * 1024);
    let Ok(o) = o else {
        return String::new();
    };
    let lines: Vec<&str> = o
        .stdout
        .lines()
        .filter(|l| {
            l.contains("tls.obtain") || l.contains("\"error\"") || l.contains("\"level\":\"error\"")
        })
        .collect();
    lines[lines.len().saturating_sub(4)..]
        .iter()
        .map(|l| clean(l.as_bytes(), 300))
        .collect::<Vec<_>>()
        .join("\n  ")
}

/// The words of the curl command that asks the front for `domain` on loopback.
fn curl_words(domain: &str) -> Vec<String> {
    vec![
        "-skv".into(),
        "-o".into(),
        "/dev/null".into(),
        "-w".into(),
        "%{http_code} %{http_version}".into(),
        "--max-time".into(),
        "5".into(),
        "--resolve".into(),
        format!("{domain}:443:127.0.0.1"),
        format!("https://{domain}/health"),
    ]
}

/// How `curl` says the front's certificate and answer for `domain` are shown to a person.
pub fn curl_shown(domain: &str) -> String {
    format!("curl -skv --resolve {domain}:443:127.0.0.1 https://{domain}/health")
}

/// What the front serves for `domain`, asked on loopback.
fn ask_front(domain: &str) -> (plan::Answer, plan::Served) {
    let o = Spawn::new("/usr/bin/curl")
        .args(curl_words(domain))
        .run(Duration::from_secs(10), 64 * 1024);
    match o {
        Ok(o) => {
            let served = plan::served(&o.stderr, &o.stdout);
            let code = match o.status {
                child::ExitKind::Exited(c) => c,
                _ => -1,
            };
            (plan::answer(code, served.http_code), served)
        }
        Err(_) => (plan::answer(-1, 0), plan::Served::default()),
    }
}

fn describe_served(domain: &str, s: &plan::Served) -> String {
    format!(
        "certificate: issuer {}, expires {} (said by: {})",
        s.issuer.as_deref().unwrap_or("unknown"),
        s.expires.as_deref().unwrap_or("unknown"),
        curl_shown(domain)
    )
}

fn exposure() -> Option<String> {
    let o = Spawn::new("/usr/bin/systemd-analyze")
        .args(["security", "--no-pager", CADDY_UNIT])
        .run(Duration::from_secs(30), 64 * 1024)
        .ok()?;
    plan::exposure(&o.stdout)
}

// ---------------------------------------------------------------------------------------------
// Ports.

fn read_small(path: &str, max: u64) -> Option<String> {
    use std::io::Read;
    let f = File::open(path).ok()?;
    let mut s = String::new();
    f.take(max).read_to_string(&mut s).ok()?;
    Some(s)
}

/// Who holds ports 80 and 443 on this host (its network namespace), from /proc.
fn port_holders() -> (Holder, Holder) {
    let mut listening = Vec::new();
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Some(t) = read_small(f, 8 << 20) {
            listening.extend(plan::listeners(&t));
        }
    }
    let wanted: Vec<u64> = listening
        .iter()
        .filter(|l| l.port == 80 || l.port == 443)
        .map(|l| l.inode)
        .collect();
    let mut owners = BTreeMap::new();
    if !wanted.is_empty() {
        if let Ok(procs) = std::fs::read_dir("/proc") {
            for p in procs.flatten().take(100_000) {
                let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                    continue;
                };
                let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
                    continue;
                };
                for fd in fds.flatten().take(1 << 20) {
                    let Ok(target) = std::fs::read_link(fd.path()) else {
                        continue;
                    };
                    let t = target.to_string_lossy();
                    let Some(inode) = t
                        .strip_prefix("socket:[")
                        .and_then(|r| r.strip_suffix(']'))
                        .and_then(|n| n.parse::<u64>().ok())
                    else {
                        continue;
                    };
                    if wanted.contains(&inode) && !owners.contains_key(&inode) {
                        let name = read_small(&format!("/proc/{pid}/comm"), 64)
                            .map(|c| clean(c.trim().as_bytes(), 32))
                            .unwrap_or_else(|| "?".into());
                        let unit = read_small(&format!("/proc/{pid}/cgroup"), 4096)
                            .and_then(|c| plan::cgroup_unit(&c));
                        owners.insert(inode, plan::Process { pid, name, unit });
                    }
                }
            }
        }
    }
    (
        plan::holder(80, &listening, &owners),
        plan::holder(443, &listening, &owners),
    )
}

// ---------------------------------------------------------------------------------------------
// What is there.

struct Observed {
    caddyfile: Caddyfile,
    /// The Caddyfile's mode and owner, kept when it is rewritten or put back (an admin's
    /// root:caddy 0640 file, holding a DNS token, stays that).
    caddyfile_attrs: Option<Attrs>,
    prev: Option<Vec<u8>>,
    ours: BTreeMap<&'static str, Vec<u8>>,
    dropin: Option<Vec<u8>>,
    active: bool,
}

/// dpkg's md5 of Debian's Caddyfile, and the md5 of the one read (`md5sum` of the very
/// descriptor the bytes came from).
fn is_debian_default(file: &File) -> bool {
    let Some(debian) = Spawn::new("/usr/bin/dpkg-query")
        .args(["-W", "-f=${Conffiles}\n", "caddy"])
        .run(Duration::from_secs(20), 64 * 1024)
        .ok()
        .and_then(|o| plan::conffile_md5(&o.stdout, "/etc/caddy/Caddyfile"))
    else {
        return false;
    };
    let mut f = match file.try_clone() {
        Ok(f) => f,
        Err(_) => return false,
    };
    if f.seek(SeekFrom::Start(0)).is_err() {
        return false;
    }
    Spawn::new("/usr/bin/md5sum")
        .stdin(f)
        .run(Duration::from_secs(20), 4096)
        .ok()
        .and_then(|o| plan::md5sum_output(&o.stdout))
        .is_some_and(|m| m == debian)
}

fn observe(places: &Places) -> Result<Observed> {
    let mut caddyfile_attrs = None;
    let caddyfile = match fsx::open_regular_at(
        &places.etc,
        plan::CADDYFILE,
        Limits {
            owner: None,
            max_size: MAX_CADDYFILE,
        },
    ) {
        Ok(r) => {
            caddyfile_attrs = r.file.metadata().ok().map(|m| {
                use std::os::unix::fs::MetadataExt;
                (m.mode() & 0o7777, (m.uid(), m.gid()))
            });
            let bytes = fsx::read_bounded(&r.file, MAX_CADDYFILE, "/etc/caddy/Caddyfile")
                .map_err(|e| Fail::failed(e.to_string()))?;
            Caddyfile::Present {
                debian_default: is_debian_default(&r.file),
                bytes,
            }
        }
        Err(e) if not_found(&e) => Caddyfile::Missing,
        Err(e) => {
            return Err(Fail::failed(format!(
                "{e}; tribist edits /etc/caddy/Caddyfile in place: make it a regular file (cp --remove-destination \"$(readlink -f /etc/caddy/Caddyfile)\" /etc/caddy/Caddyfile), then run the same command again"
            )))
        }
    };
    let prev = read_opt(&places.etc, plan::CADDYFILE_PREV, Some(0), MAX_CADDYFILE)?;
    let mut ours = BTreeMap::new();
    if let Some(dir) = &places.ours {
        for name in plan::OURS {
            if let Some(b) = read_opt(dir, name, Some(0), MAX_CADDYFILE)? {
                ours.insert(name, b);
            }
        }
    }
    let dropin = match &places.dropin {
        Some(d) => read_opt(d, plan::DROPIN_NAME, Some(0), MAX_CADDYFILE)?,
        None => None,
    };
    Ok(Observed {
        caddyfile,
        caddyfile_attrs,
        prev,
        ours,
        dropin,
        active: caddy_active(),
    })
}

fn open_dropin_dir(create: bool) -> Result<Option<Dir>> {
    let system = Dir::open("/etc/systemd/system").map_err(|e| Fail::failed(e.to_string()))?;
    if create {
        return ensure_dir(&system, "caddy.service.d", 0o755, 0).map(Some);
    }
    match system.open_at("caddy.service.d") {
        Ok(d) => Ok(Some(d)),
        Err(e) if not_found(&e) => Ok(None),
        Err(e) => Err(Fail::failed(e.to_string())),
    }
}

// ---------------------------------------------------------------------------------------------
// apply

/// Puts tribist's site in Caddy (installing Caddy if needed), validated, applied with the
/// least disturbance, audited; waits until the front answers over HTTPS.
pub fn apply(ctx: &mut Ctx, args: &plan::ApplyArgs) -> Result<Exit> {
    need_root("front apply")?;
    interrupt::install();
    ctx.action = Some(Action::Front);
    ctx.extra = vec![
        ("op", "apply".into()),
        ("domain", args.domain.as_str().into()),
    ];
    let (outcome, result) = match apply_steps(ctx, args) {
        Ok((o, e)) => (o, Ok(e)),
        Err((o, f)) => (o, Err(f)),
    };
    ctx.audit(outcome);
    result
}

/// `front harden`, on the admin's word: the hardening drop-in installed and Caddy restarted
/// under it (apply leaves this to the admin where Caddy serves other sites too,
/// [`plan::DropInStep::LeaveToAdmin`]). A Caddy that does not start under it gets the
/// previous drop-in (or none) back and is started again. Audited `op=harden`.
pub fn harden(ctx: &mut Ctx) -> Result<Exit> {
    need_root("front harden")?;
    ctx.action = Some(Action::Front);
    ctx.extra = vec![("op", "harden".into())];
    let (outcome, result) = match harden_steps() {
        Ok((o, e)) => (o, Ok(e)),
        Err((o, f)) => (o, Err(f)),
    };
    ctx.audit(outcome);
    result
}

fn harden_steps() -> Step2<(Outcome, Exit)> {
    if !matches!(
        plan::package_step(dpkg_status().as_deref(), true),
        PackageStep::Ready
    ) {
        return Err((
            Outcome::Failed,
            Fail::failed(format!(
                "Caddy 2.6 or newer is not installed: nothing to harden (install it: {})",
                plan::INSTALL_COMMAND
            )),
        ));
    }
    let caddy_gid = refused(caddy_ids())?.1;
    let etc = refused(Dir::open(plan::ETC_CADDY).map_err(|e| Fail::failed(e.to_string())))?;
    refused(check_root_dir(&etc))?;
    // apply's and remove's lock when there is a front, so none of them runs beside this.
    let _lock = match etc.open_at("tribist") {
        Ok(ours) => refused(DirLock::take(&ours))?,
        Err(_) => refused(DirLock::take(&etc))?,
    };
    let places = Places {
        etc,
        ours: None,
        dropin: refused(open_dropin_dir(true))?,
        caddy_gid,
    };
    let dir = refused(
        places
            .dropin
            .as_ref()
            .ok_or_else(|| Fail::failed("internal: the drop-in directory is not open")),
    )?;
    let before = refused(read_opt(dir, plan::DROPIN_NAME, Some(0), MAX_CADDYFILE))?;
    let dropin = format!("{}/{}", plan::DROPIN_DIR, plan::DROPIN_NAME);
    if before.as_deref() == Some(plan::HARDENING.as_bytes()) && hardening_running() == Some(true) {
        say(&format!(
            "unchanged: {dropin} is installed and the running Caddy has it"
        ));
        return Ok((Outcome::Unchanged, Exit::Ok));
    }
    let mut changes = Changes::new(&places);
    if before.as_deref() != Some(plan::HARDENING.as_bytes()) {
        if let Err(f) = changes.write(
            Place::DropIn,
            plan::DROPIN_NAME,
            plan::HARDENING.as_bytes(),
            before,
        ) {
            let problems = changes.undo();
            return Err((Outcome::Failed, with_undo(f, &problems)));
        }
        say(&format!("installed the hardening drop-in {dropin}"));
        if let Err(f) = systemctl(&["daemon-reload"], Duration::from_secs(60)) {
            return Err(recover(&mut changes, true, f));
        }
    }
    say("systemctl restart caddy (every site's connections are closed once)");
    if let Err(f) = systemctl(&["restart", CADDY_UNIT], Duration::from_secs(90)) {
        return Err(recover(&mut changes, true, f));
    }
    if let Some(x) = exposure() {
        say(&format!(
            "systemd-analyze security caddy.service: exposure {x}"
        ));
    }
    say("Caddy runs under tribist's hardening; check your sites answer (journalctl -u caddy says why one does not)");
    Ok((Outcome::Ok, Exit::Ok))
}

type Step2<T> = std::result::Result<T, (Outcome, Fail)>;

fn refused<T>(r: Result<T>) -> Step2<T> {
    r.map_err(|f| {
        let o = if f.exit == Exit::Interrupted {
            Outcome::Interrupted
        } else {
            Outcome::Failed
        };
        (o, f)
    })
}

fn apply_steps(ctx: &mut Ctx, args: &plan::ApplyArgs) -> Step2<(Outcome, Exit)> {
    let upstream: SocketAddr = match args.upstream {
        Some(u) => refused(plan::upstream(u, "--upstream").map_err(Fail::failed))?,
        None => {
            let listen = health::listen_address();
            let parsed = refused(listen.parse().map_err(|_| {
                Fail::failed(format!(
                    "tribist.socket listens on {listen}, which the front cannot dial; give --upstream IP:PORT"
                ))
            }))?;
            refused(plan::upstream(parsed, "tribist.socket's address").map_err(Fail::failed))?
        }
    };
    let front = plan::front_of(args, upstream);
    let site = refused(front.site().map_err(front_fail))?;
    let servers = refused(front.limits.servers().map_err(front_fail))?;
    ctx.extra
        .push(("site_sha256", Sha256::of(site.as_bytes()).to_string()));

    // The certificate files, read before anything changes.
    let mut certs = BTreeMap::new();
    match &args.certs {
        plan::CertSource::Own { cert, key } => {
            certs.insert(
                plan::CERT,
                refused(read_own_cert(cert, args.domain.as_str(), x509::now()))?,
            );
            certs.insert(plan::KEY, refused(read_source("KEY_FILE", key, Pem::Key))?);
        }
        plan::CertSource::Acme {
            ca_root: Some(root),
            ..
        } => {
            certs.insert(
                plan::CA_ROOT,
                refused(read_source("ACME_CA_ROOT", root, Pem::Certificate))?,
            );
        }
        plan::CertSource::Acme { ca_root: None, .. } => {}
    }

    refused(ensure_caddy())?;
    let (caddy_uid, caddy_gid) = refused(caddy_ids())?;
    let (h80, h443) = port_holders();
    if let Some(why) = plan::ports_refusal(&h80, &h443) {
        return Err((Outcome::Failed, Fail::failed(why)));
    }

    let etc = match Dir::open(plan::ETC_CADDY) {
        Ok(d) => d,
        Err(e) if not_found(&e) => {
            let root = refused(Dir::open("/etc").map_err(|e| Fail::failed(e.to_string())))?;
            refused(ensure_dir(&root, "caddy", 0o755, 0))?
        }
        Err(e) => return Err((Outcome::Failed, Fail::failed(e.to_string()))),
    };
    refused(check_root_dir(&etc))?;
    let ours = refused(ensure_dir(&etc, "tribist", 0o750, caddy_gid))?;
    let _lock = refused(DirLock::take(&ours))?;
    let places = Places {
        etc,
        ours: Some(ours),
        dropin: refused(open_dropin_dir(true))?,
        caddy_gid,
    };
    let seen = refused(observe(&places))?;
    // A front of tribist's that serves now: if the new configuration never answers, it
    // comes back (a wrong ACME_CA in a re-install must not take down a working front).
    let served_before = seen.active
        && plan::site_of(&seen.ours)
            .is_some_and(|d| matches!(ask_front(d.as_str()).0, plan::Answer::Service(_)));

    // Decide.
    let caddyfile = refused(plan::caddyfile_apply(&seen.caddyfile).map_err(front_fail))?;
    let desired = plan::desired_files(&args.domain, &site, &servers, &certs);
    let steps = plan::file_steps(&plan::OURS, &seen.ours, &desired);
    let hardening = plan::dropin_step(seen.dropin.as_deref(), plan::serves_others(&seen.caddyfile));
    let dropin_changed = hardening == plan::DropInStep::Install;
    let files_changed = !steps.is_empty() || caddyfile != CaddyfileApply::Unchanged;
    let service = plan::service_step(true, seen.active, files_changed, dropin_changed);
    let domain = args.domain.as_str();

    if !files_changed && !dropin_changed && service == plan::ServiceStep::Nothing {
        say(&format!(
            "unchanged: the front for {domain} is as asked (Caddy was not reloaded)"
        ));
        if hardening == plan::DropInStep::LeaveToAdmin {
            warn(plan::HARDENING_ADVICE);
        }
        let (answer, served) = ask_front(domain);
        let good = report_answer(domain, upstream, answer, &served);
        return Ok((
            Outcome::Unchanged,
            if good { Exit::Ok } else { Exit::Unhealthy },
        ));
    }

    // Write, remembering what was there.
    let mut changes = Changes::new(&places).keeping(seen.caddyfile_attrs);
    let written = (|| -> Result<()> {
        for s in &steps {
            match s {
                Step::Write { name, bytes } => {
                    changes.write(Place::Ours, name, bytes, seen.ours.get(name).cloned())?
                }
                Step::Remove { name } => {
                    changes.remove(Place::Ours, name, seen.ours.get(name).cloned())?
                }
            }
        }
        let before = match &seen.caddyfile {
            Caddyfile::Present { bytes, .. } => Some(bytes.clone()),
            Caddyfile::Missing => None,
        };
        match &caddyfile {
            CaddyfileApply::Unchanged => {}
            CaddyfileApply::TakeOver { new, keep } => {
                if let Some(k) = keep {
                    changes.write(Place::EtcCaddy, plan::CADDYFILE_PREV, k, seen.prev.clone())?;
                }
                changes.write(Place::EtcCaddy, plan::CADDYFILE, new.as_bytes(), before)?;
            }
            CaddyfileApply::Edit { new } => {
                changes.write(Place::EtcCaddy, plan::CADDYFILE, new.as_bytes(), before)?
            }
        }
        if dropin_changed {
            changes.write(
                Place::DropIn,
                plan::DROPIN_NAME,
                plan::HARDENING.as_bytes(),
                seen.dropin.clone(),
            )?;
        }
        Ok(())
    })();
    written_or_undone(&mut changes, written)?;
    if let Err((error, fix)) = validate(caddy_uid, caddy_gid) {
        let problems = changes.undo();
        return Err((
            Outcome::RefusedCheck,
            with_undo(
                Fail::new(
                    Exit::Configuration,
                    format!("caddy validate refused the front's configuration: {error}; {fix}"),
                ),
                &problems,
            ),
        ));
    }
    match &caddyfile {
        CaddyfileApply::TakeOver { keep: Some(_), .. } => say(&format!(
            "took over Debian's default Caddyfile (its welcome page on :80), kept as /etc/caddy/{}",
            plan::CADDYFILE_PREV
        )),
        CaddyfileApply::TakeOver { keep: None, .. } => {
            say("wrote /etc/caddy/Caddyfile (there was none)")
        }
        CaddyfileApply::Edit { .. } => {
            say("added tribist's two import lines to /etc/caddy/Caddyfile; its other sites are untouched")
        }
        CaddyfileApply::Unchanged => {}
    }
    for s in &steps {
        say(&match s {
            Step::Write { name, .. } => format!("wrote {} (root:caddy 0640)", plan::our_path(name)),
            Step::Remove { name } => format!("removed {}", plan::our_path(name)),
        });
    }

    // Apply.
    if dropin_changed {
        say(&format!(
            "installed the hardening drop-in {}/{}",
            plan::DROPIN_DIR,
            plan::DROPIN_NAME
        ));
        if let Err(f) = systemctl(&["daemon-reload"], Duration::from_secs(60)) {
            return Err(recover(&mut changes, seen.active, f));
        }
    }
    say(&match service {
        plan::ServiceStep::Nothing => "Caddy's files are unchanged: not reloaded".to_string(),
        plan::ServiceStep::Reload => {
            "caddy reload (graceful; what systemctl reload caddy runs)".into()
        }
        plan::ServiceStep::Start => "systemctl enable --now caddy".into(),
        plan::ServiceStep::Restart => "systemctl restart caddy (its drop-in changed)".into(),
    });
    if let Err(f) = do_service(service) {
        return Err(recover(&mut changes, seen.active, f));
    }
    if hardening == plan::DropInStep::LeaveToAdmin {
        warn(plan::HARDENING_ADVICE);
    }
    if caddyfile != CaddyfileApply::Unchanged && plan::serves_others(&seen.caddyfile) {
        say(plan::SHARED_LIMITS);
    }
    if let Some(x) = exposure() {
        say(&format!(
            "systemd-analyze security caddy.service: exposure {x}"
        ));
    }

    // Wait for the certificate and the service behind it.
    let start = Instant::now();
    let wait = cert_wait();
    let mut last = (plan::Answer::NoTls(-1), plan::Served::default());
    let mut tls_since: Option<Instant> = None;
    while start.elapsed() < wait {
        last = ask_front(domain);
        match last.0 {
            plan::Answer::Service(_) => break,
            plan::Answer::NoUpstream(_) => {
                let t = *tls_since.get_or_insert_with(Instant::now);
                if t.elapsed() > Duration::from_secs(15) {
                    break;
                }
            }
            plan::Answer::NoTls(_) => {}
        }
        if !interrupt::sleep(Duration::from_secs(1)) {
            return Err((
                Outcome::InterruptedDone,
                Fail::new(
                    Exit::Interrupted,
                    format!("interrupted while waiting for https://{domain}/health: Caddy has the new configuration; see: tribist-host front status"),
                ),
            ));
        }
    }
    let good = report_answer(domain, upstream, last.0, &last.1);
    if !good && served_before {
        let why = format!(
            "the new front did not answer https://{domain}/health in {} s{}",
            start.elapsed().as_secs(),
            match last.0 {
                plan::Answer::NoTls(_) => " (no certificate from the CA: check ACME_CA, ACME_CA_ROOT and that the CA reaches this host)",
                _ => "",
            }
        );
        let (outcome, mut f) = recover(&mut changes, seen.active, Fail::failed(why));
        if outcome == Outcome::FailedRestored {
            f.message.push_str(
                "; the front that served before serves again: fix the values, then run the same command again",
            );
        }
        return Err((outcome, f));
    }
    if !good {
        let journal = caddy_journal();
        return Err((
            Outcome::Failed,
            Fail::failed(format!(
                "the front does not answer https://{domain}/health after {} s{}{}",
                start.elapsed().as_secs(),
                match last.0 {
                    plan::Answer::NoTls(_) => "; no certificate yet (is DOMAIN's DNS pointing at this host, and can the CA reach it on 80 or 443?); check: journalctl -u caddy | grep tls.obtain",
                    _ => "; the service behind it does not answer: make status HOST=…",
                },
                if journal.is_empty() {
                    String::new()
                } else {
                    format!("; caddy's journal:\n  {journal}")
                }
            )),
        ));
    }
    Ok((Outcome::Ok, Exit::Ok))
}

/// Says what the front answered; whether it is serving the service.
fn report_answer(
    domain: &str,
    upstream: SocketAddr,
    answer: plan::Answer,
    s: &plan::Served,
) -> bool {
    match answer {
        plan::Answer::Service(code) => {
            say(&describe_served(domain, s));
            say(&format!(
                "https://{domain}/health answers {code} over HTTP/{} through the front (service at {upstream})",
                if s.http_version.is_empty() { "?" } else { &s.http_version }
            ));
            true
        }
        plan::Answer::NoUpstream(code) => {
            say(&describe_served(domain, s));
            warn(&format!(
                "https://{domain}/health: the front answers {code}: it cannot reach the service at {upstream}"
            ));
            false
        }
        plan::Answer::NoTls(c) => {
            warn(&format!(
                "https://{domain}/health: no TLS answer on 127.0.0.1:443 (curl exit {c})"
            ));
            false
        }
    }
}

/// After the files are written, before Caddy is told: a write that failed, or an interrupt,
/// puts every file back.
fn written_or_undone(changes: &mut Changes, written: Result<()>) -> Step2<()> {
    if let Err(f) = written {
        let problems = changes.undo();
        return Err((Outcome::Failed, with_undo(f, &problems)));
    }
    if interrupt::interrupted() {
        let problems = changes.undo();
        return Err((
            Outcome::Interrupted,
            with_undo(
                Fail::new(
                    Exit::Interrupted,
                    "interrupted before Caddy was told: the previous files are back",
                ),
                &problems,
            ),
        ));
    }
    Ok(())
}

fn with_undo(mut f: Fail, problems: &[String]) -> Fail {
    if !problems.is_empty() {
        f.message = format!(
            "{}; AND putting the previous files back failed: {} (fix those files by hand, then run the same command again)",
            f.message,
            problems.join("; ")
        );
    }
    f
}

/// A reload, start or restart failed: the previous files go back and Caddy is brought back
/// to them as it was.
fn recover(changes: &mut Changes, was_active: bool, f: Fail) -> (Outcome, Fail) {
    let dropin = changes.any(Place::DropIn);
    let problems = changes.undo();
    let mut back = problems.is_empty();
    if dropin {
        back &= systemctl(&["daemon-reload"], Duration::from_secs(60)).is_ok();
    }
    if was_active {
        back &= if dropin {
            systemctl(&["restart", CADDY_UNIT], Duration::from_secs(90)).is_ok()
        } else {
            reload(Duration::from_secs(90)).is_ok()
        };
    }
    let journal = caddy_journal();
    let msg = format!(
        "{}; the previous files are {}{}",
        f.message,
        if back {
            "back and Caddy serves them"
        } else {
            "NOT all back: see systemctl status caddy"
        },
        if journal.is_empty() {
            String::new()
        } else {
            format!("; caddy's journal:\n  {journal}")
        }
    );
    (
        if back {
            Outcome::FailedRestored
        } else {
            Outcome::FailedRestoreFailed
        },
        with_undo(Fail::failed(msg), &problems),
    )
}

// ---------------------------------------------------------------------------------------------
// remove

/// Removes tribist's site from Caddy, alone: other sites keep serving. `purge` also removes
/// its certificates (the copies in /etc/caddy/tribist and what Caddy obtained for the
/// domain), and the drop-in when no other site remains.
pub fn remove(ctx: &mut Ctx, args: &plan::RemoveArgs) -> Result<Exit> {
    need_root("front remove")?;
    interrupt::install();
    ctx.action = Some(Action::Front);
    ctx.extra = vec![("op", "remove".into())];
    if args.purge {
        ctx.extra.push(("purge", "1".into()));
    }
    let (outcome, result) = match remove_steps(ctx, args) {
        Ok((o, e)) => (o, Ok(e)),
        Err((o, f)) => (o, Err(f)),
    };
    ctx.audit(outcome);
    result
}

fn remove_steps(ctx: &mut Ctx, args: &plan::RemoveArgs) -> Step2<(Outcome, Exit)> {
    let etc = match Dir::open(plan::ETC_CADDY) {
        Ok(d) => d,
        Err(e) if not_found(&e) => {
            say("there is no /etc/caddy: no front to remove");
            return Ok((Outcome::Unchanged, Exit::Ok));
        }
        Err(e) => return Err((Outcome::Failed, Fail::failed(e.to_string()))),
    };
    refused(check_root_dir(&etc))?;
    let ours = match etc.open_at("tribist") {
        Ok(d) => Some(d),
        Err(e) if not_found(&e) => None,
        Err(e) => return Err((Outcome::Failed, Fail::failed(e.to_string()))),
    };
    let _lock = match &ours {
        Some(d) => Some(refused(DirLock::take(d))?),
        None => None,
    };
    let caddy_gid = child::user_ids(CADDY_USER).map(|(_, g)| g).unwrap_or(0);
    let places = Places {
        etc,
        ours,
        dropin: refused(open_dropin_dir(false))?,
        caddy_gid,
    };
    let seen = refused(observe(&places))?;
    let domain = plan::domain_of(&seen.ours);
    if let Some(d) = &domain {
        ctx.extra.push(("domain", d.as_str().into()));
    }
    let new_caddyfile = plan::caddyfile_remove(&seen.caddyfile, seen.prev.as_deref());
    let restores_prev = new_caddyfile.is_some() && new_caddyfile.as_deref() == seen.prev.as_deref();
    let others = match &seen.caddyfile {
        Caddyfile::Present { bytes, .. } => std::str::from_utf8(bytes)
            .map(|t| plan::has_sites(&front::without_front(t)))
            .unwrap_or(true),
        Caddyfile::Missing => false,
    };
    let steps = plan::file_steps(
        &plan::OURS,
        &seen.ours,
        &plan::remaining_files(&seen.ours, args.purge),
    );
    let drop_dropin = args.purge && !others && seen.dropin.is_some();
    let files_changed = new_caddyfile.is_some() || !steps.is_empty();
    let purge_dir = args.purge && places.ours.is_some();
    // Debian's Caddyfile, kept at apply: gone once it is the Caddyfile again, or purged.
    let remove_prev = seen.prev.is_some() && (restores_prev || args.purge);
    if !files_changed && !drop_dropin && !purge_dir && !remove_prev {
        say("no front of tribist's here: nothing to remove");
        return Ok((Outcome::Unchanged, Exit::Ok));
    }

    let mut changes = Changes::new(&places).keeping(seen.caddyfile_attrs);
    let written = (|| -> Result<()> {
        if let (Some(new), Caddyfile::Present { bytes, .. }) = (&new_caddyfile, &seen.caddyfile) {
            changes.write(Place::EtcCaddy, plan::CADDYFILE, new, Some(bytes.clone()))?;
        }
        for s in &steps {
            if let Step::Remove { name } = s {
                changes.remove(Place::Ours, name, seen.ours.get(name).cloned())?;
            }
        }
        if drop_dropin {
            changes.remove(Place::DropIn, plan::DROPIN_NAME, seen.dropin.clone())?;
        }
        Ok(())
    })();
    written_or_undone(&mut changes, written)?;
    if !matches!(seen.caddyfile, Caddyfile::Missing) {
        if let Some((uid, gid)) = child::user_ids(CADDY_USER) {
            if let Err((error, fix)) = validate(uid, gid) {
                let problems = changes.undo();
                return Err((
                    Outcome::RefusedCheck,
                    with_undo(
                        Fail::new(
                            Exit::Configuration,
                            format!("caddy validate refused the Caddyfile without tribist's site: {error}; {fix}"),
                        ),
                        &problems,
                    ),
                ));
            }
        }
    }
    if new_caddyfile.is_some() {
        say(if restores_prev {
            "/etc/caddy/Caddyfile is Debian's default again (as before the front took it over; its welcome page on :80): to stop Caddy altogether: systemctl disable --now caddy"
        } else if others {
            "removed tribist's two import lines from /etc/caddy/Caddyfile; its other sites stay"
        } else {
            "/etc/caddy/Caddyfile has no site left"
        });
    }
    for s in &steps {
        say(&format!("removed {}", plan::our_path(s.name())));
    }
    if drop_dropin {
        say(&format!(
            "removed the hardening drop-in {}/{} (no other site remains)",
            plan::DROPIN_DIR,
            plan::DROPIN_NAME
        ));
        if let Err(f) = systemctl(&["daemon-reload"], Duration::from_secs(60)) {
            return Err(recover(&mut changes, seen.active, f));
        }
    }
    let service = plan::service_step(false, seen.active, files_changed, drop_dropin);
    if service != plan::ServiceStep::Nothing {
        say(&match service {
            plan::ServiceStep::Restart => {
                "systemctl restart caddy (its drop-in is gone)".to_string()
            }
            _ => "caddy reload (graceful; what systemctl reload caddy runs)".into(),
        });
    }
    if let Err(f) = do_service(service) {
        return Err(recover(&mut changes, seen.active, f));
    }
    // What cannot be undone comes last, once Caddy no longer uses it.
    if remove_prev {
        match fsx::unlinkat(&places.etc, plan::CADDYFILE_PREV) {
            Ok(()) if !restores_prev => {
                say(&format!("removed /etc/caddy/{}", plan::CADDYFILE_PREV))
            }
            Ok(()) => {}
            Err(e) => warn(&format!("{e}")),
        }
    }
    if args.purge {
        if let Some(d) = &domain {
            match purge_storage(d.as_str()) {
                Ok(0) => say(&format!(
                    "no certificate of {} in Caddy's storage ({})",
                    d.as_str(),
                    plan::CADDY_CERTIFICATES
                )),
                Ok(n) => say(&format!(
                    "removed {n} certificate director{} of {} from Caddy's storage ({}/*/{})",
                    if n == 1 { "y" } else { "ies" },
                    d.as_str(),
                    plan::CADDY_CERTIFICATES,
                    d.as_str()
                )),
                Err(e) => warn(&format!(
                    "could not remove {}'s certificates from Caddy's storage: {e}; remove them by hand: rm -r {}/*/{}",
                    d.as_str(),
                    plan::CADDY_CERTIFICATES,
                    d.as_str()
                )),
            }
        }
        match purge_access_logs() {
            Ok(0) => {}
            Ok(n) => say(&format!(
                "removed the front's access log{} ({n} file{}: clients' addresses and requests)",
                if n == 1 { "" } else { "s" },
                if n == 1 { "" } else { "s" }
            )),
            Err(e) => warn(&format!(
                "could not remove the front's access logs: {e}; remove them by hand: rm /var/log/caddy/tribist-access*"
            )),
        }
        if places.ours.is_some() {
            match rmdir_at(&places.etc, "tribist") {
                Ok(()) => say(&format!("removed {}", front::DIR)),
                Err(e) => warn(&format!("could not remove {}: {e}", front::DIR)),
            }
        }
    }
    let (h80, h443) = port_holders();
    say(&format!(
        "port 80 {}, port 443 {}",
        h80.describe(),
        h443.describe()
    ));
    Ok((Outcome::Ok, Exit::Ok))
}

fn rmdir_at(dir: &Dir, name: &str) -> std::io::Result<()> {
    let c =
        CString::new(name).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: c is NUL-terminated, dir's descriptor is live.
    if unsafe { libc::unlinkat(dir.as_fd().as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The names in `dir` (read through its descriptor, so a rename of its path changes
/// nothing), bounded.
fn names_in(dir: &Dir) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_fd().as_raw_fd()))?.take(10_000) {
        if let Some(n) = e?.file_name().to_str() {
            out.push(n.to_string());
        }
    }
    Ok(out)
}

/// Removes `certificates/*/DOMAIN` in Caddy's storage (caddy's files: every step through
/// descriptors, never following a link); how many directories.
/// `remove --purge`: the access log and its rolled copies (`tribist-access.log`,
/// `tribist-access-<time>.log[.gz]`) in Caddy's log directory, by name through a descriptor
/// (never a link followed); how many were removed.
fn purge_access_logs() -> std::result::Result<usize, String> {
    let dir = match Dir::open("/var/log/caddy") {
        Ok(d) => d,
        Err(e) if not_found(&e) => return Ok(0),
        Err(e) => return Err(e.to_string()),
    };
    let mut n = 0;
    for f in names_in(&dir).map_err(|e| e.to_string())? {
        if plan::is_access_log(&f) {
            fsx::unlinkat(&dir, &f).map_err(|e| e.to_string())?;
            n += 1;
        }
    }
    Ok(n)
}

fn purge_storage(domain: &str) -> std::result::Result<usize, String> {
    let mut dir = match Dir::open("/var/lib/caddy") {
        Ok(d) => d,
        Err(e) if not_found(&e) => return Ok(0),
        Err(e) => return Err(e.to_string()),
    };
    for part in [".local", "share", "caddy", "certificates"] {
        dir = match dir.open_at(part) {
            Ok(d) => d,
            Err(e) if not_found(&e) => return Ok(0),
            Err(e) => return Err(e.to_string()),
        };
    }
    let mut n = 0;
    for ca in names_in(&dir).map_err(|e| e.to_string())? {
        let Ok(ca_dir) = dir.open_at(&ca) else {
            continue;
        };
        let d = match ca_dir.open_at(domain) {
            Ok(d) => d,
            Err(e) if not_found(&e) => continue,
            Err(e) => return Err(e.to_string()),
        };
        for f in names_in(&d).map_err(|e| e.to_string())? {
            fsx::unlinkat(&d, &f).map_err(|e| e.to_string())?;
        }
        rmdir_at(&ca_dir, domain).map_err(|e| e.to_string())?;
        n += 1;
    }
    Ok(n)
}

// ---------------------------------------------------------------------------------------------
// make status

/// The front as `make status` reports it ([`front_report::report`]): the site's domain and
/// upstream (root reads the site; anyone else sees only whether /etc/caddy/Caddyfile, which
/// is world-readable, imports it), whether Caddy runs and, if it does, what it answers for
/// the domain on loopback.
pub fn observe_front() -> front_report::Seen {
    use front_report::{Front, Seen};
    let caddyfile = read_small("/etc/caddy/Caddyfile", MAX_CADDYFILE).unwrap_or_default();
    let imported = plan::imports_site(&caddyfile);
    if !deploy::is_root() {
        return if imported {
            Seen::Unreadable
        } else {
            Seen::None
        };
    }
    let site = Dir::open(front::DIR)
        .ok()
        .and_then(|d| {
            read_opt(&d, plan::SITE, Some(0), MAX_CADDYFILE)
                .ok()
                .flatten()
        })
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_default();
    let Some(domain) = plan::site_domain(&site) else {
        return Seen::None;
    };
    let domain = domain.as_str().to_string();
    let active = caddy_active();
    let (answer, served) = if active {
        let (a, s) = ask_front(&domain);
        (Some(a), s)
    } else {
        (None, plan::Served::default())
    };
    Seen::Configured(Front {
        upstream: plan::site_upstream(&site).map(|u| u.to_string()),
        own_cert: site.contains(&plan::our_path(plan::CERT)),
        imported,
        active,
        answer,
        served,
        domain,
    })
}

// ---------------------------------------------------------------------------------------------
// status

/// tribist's site, when it is configured: its domain and the address it dials (read as
/// root, through descriptors). What `make install` without DOMAIN keeps and `make
/// uninstall` removes.
pub fn configured() -> Option<(String, Option<SocketAddr>)> {
    let dir = Dir::open(front::DIR).ok()?;
    let site = read_opt(&dir, plan::SITE, Some(0), MAX_CADDYFILE).ok()??;
    let text = String::from_utf8(site).ok()?;
    let domain = plan::site_domain(&text)?;
    Some((domain.as_str().to_string(), plan::site_upstream(&text)))
}

/// Whether anything of the front's is on this host: its site, or the certificate copies and
/// domain note `front remove` keeps (what `--purge` takes).
pub fn any_files() -> bool {
    fsx::lstat(Path::new(front::DIR)).is_ok()
}

/// The front's state, one line each; exit 0 when it serves, 5 without a front, 6 when Caddy
/// does not run, 7 when it runs but does not answer for the domain.
pub fn status() -> Result<Exit> {
    let dpkg = dpkg_status();
    let installed = matches!(
        plan::package_step(dpkg.as_deref(), true),
        PackageStep::Ready | PackageStep::TooOld(_)
    );
    let version = dpkg
        .as_deref()
        .and_then(|d| d.lines().nth(1))
        .map(|v| clean(v.as_bytes(), 40))
        .unwrap_or_default();
    let active = caddy_active();
    if installed {
        say(&format!(
            "caddy {version}: caddy.service {}",
            if active {
                "active"
            } else {
                "not active (start it: systemctl enable --now caddy)"
            }
        ));
    } else {
        say(&format!(
            "caddy is not installed (install: {})",
            plan::INSTALL_COMMAND
        ));
    }
    let dropin = Path::new(plan::DROPIN_DIR).join(plan::DROPIN_NAME);
    if fsx::lstat(&dropin).is_ok() {
        say(&format!(
            "hardening: {} installed; systemd-analyze security caddy.service: exposure {}",
            dropin.display(),
            exposure().unwrap_or_else(|| "unknown".into())
        ));
        if active && hardening_running() == Some(false) {
            warn(plan::HARDENING_PENDING);
        }
    } else if installed
        && read_small("/etc/caddy/Caddyfile", MAX_CADDYFILE).is_some_and(|t| {
            plan::serves_others(&Caddyfile::Present {
                bytes: t.into_bytes(),
                debian_default: false,
            })
        })
    {
        warn(&format!("hardening: {}", plan::HARDENING_ADVICE));
    } else if installed {
        say("hardening: no drop-in of tribist's (tribist-host front apply installs it)");
    }
    let site = if Path::new(front::DIR).exists() {
        match Dir::open(front::DIR)
            .map_err(|e| e.to_string())
            .and_then(|d| read_opt(&d, plan::SITE, Some(0), MAX_CADDYFILE).map_err(|f| f.message))
        {
            Ok(s) => String::from_utf8(s.unwrap_or_default()).unwrap_or_default(),
            Err(e) => {
                warn(&format!(
                    "cannot read the front's site ({}): run as root",
                    clean(e.as_bytes(), 200)
                ));
                String::new()
            }
        }
    } else {
        String::new()
    };
    let imported =
        read_small("/etc/caddy/Caddyfile", MAX_CADDYFILE).is_some_and(|t| plan::imports_site(&t));
    let (h80, h443) = port_holders();
    let ports = format!("port 80 {}, port 443 {}", h80.describe(), h443.describe());
    let Some(domain) = plan::site_domain(&site) else {
        say("front: none (tribist's site is not configured: tribist-host front apply)");
        say(&ports);
        return Ok(Exit::NotInstalled);
    };
    let domain = domain.as_str().to_string();
    say(&format!(
        "front: https://{domain} -> {} ({}; {})",
        plan::site_upstream(&site)
            .map(|u| u.to_string())
            .unwrap_or_else(|| "?".into()),
        front::SITE_FILE,
        if imported {
            "imported by /etc/caddy/Caddyfile"
        } else {
            "NOT imported by /etc/caddy/Caddyfile: run tribist-host front apply again"
        }
    ));
    say(&ports);
    if !active {
        return Ok(Exit::Stopped);
    }
    let (answer, served) = ask_front(&domain);
    match answer {
        plan::Answer::Service(code) => {
            say(&describe_served(&domain, &served));
            say(&format!(
                "https://{domain}/health: {code} over HTTP/{}",
                if served.http_version.is_empty() {
                    "?"
                } else {
                    &served.http_version
                }
            ));
            Ok(Exit::Ok)
        }
        plan::Answer::NoUpstream(code) => {
            say(&describe_served(&domain, &served));
            say(&format!(
                "https://{domain}/health: {code}: Caddy cannot reach the service (make status HOST=… says why)"
            ));
            Ok(Exit::Unhealthy)
        }
        plan::Answer::NoTls(c) => {
            say(&format!(
                "https://{domain}/health: no TLS answer on 127.0.0.1:443 (curl exit {c}; no certificate yet?): journalctl -u caddy | grep tls.obtain"
            ));
            Ok(Exit::Unhealthy)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::testutil::TempDir;

    fn places(t: &TempDir) -> Places {
        std::fs::create_dir(t.join("ours")).unwrap();
        std::fs::create_dir(t.join("dropin")).unwrap();
        Places {
            etc: Dir::open(t.path()).unwrap(),
            ours: Some(Dir::open(t.join("ours")).unwrap()),
            dropin: Some(Dir::open(t.join("dropin")).unwrap()),
            // SAFETY: getegid has no preconditions.
            caddy_gid: unsafe { libc::getegid() },
        }
    }

    #[test]
    fn undo_puts_every_byte_back_and_removes_what_was_new() {
        crate::host::testutil::root_or_skip!("the front's files are written root-owned");
        let t = TempDir::new("front-undo");
        let p = places(&t);
        std::fs::write(t.join("Caddyfile"), b"admin's\n").unwrap();
        std::fs::write(t.join("ours/cert.pem"), b"old cert").unwrap();
        let mut c = Changes::new(&p);
        c.write(
            Place::EtcCaddy,
            plan::CADDYFILE,
            b"new",
            Some(b"admin's\n".to_vec()),
        )
        .unwrap();
        c.write(Place::Ours, plan::SITE, b"site", None).unwrap();
        c.remove(Place::Ours, plan::CERT, Some(b"old cert".to_vec()))
            .unwrap();
        c.write(Place::DropIn, plan::DROPIN_NAME, b"[Service]\n", None)
            .unwrap();
        assert_eq!(std::fs::read(t.join("Caddyfile")).unwrap(), b"new");
        assert!(c.any(Place::DropIn));
        assert!(c.undo().is_empty());
        assert_eq!(std::fs::read(t.join("Caddyfile")).unwrap(), b"admin's\n");
        assert!(!t.join("ours/site.caddy").exists());
        assert_eq!(std::fs::read(t.join("ours/cert.pem")).unwrap(), b"old cert");
        assert!(!t.join("dropin").join(plan::DROPIN_NAME).exists());
        let mut names: Vec<_> = std::fs::read_dir(t.join("ours"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["cert.pem"], "no temporary left behind");
    }

    #[test]
    fn an_admins_caddyfile_keeps_its_mode_and_group_when_rewritten_and_put_back() {
        crate::host::testutil::root_or_skip!("the Caddyfile is chowned");
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let t = TempDir::new("front-keep-mode");
        let p = places(&t);
        let cf = t.join("Caddyfile");
        std::fs::write(&cf, ":8081 {\n\trespond ok\n}\n").unwrap();
        std::os::unix::fs::chown(&cf, Some(0), Some(4242)).unwrap();
        std::fs::set_permissions(&cf, std::fs::Permissions::from_mode(0o640)).unwrap();
        let seen = observe(&p).unwrap();
        assert_eq!(seen.caddyfile_attrs, Some((0o640, (0, 4242))));
        let mut c = Changes::new(&p).keeping(seen.caddyfile_attrs);
        let before = std::fs::read(&cf).unwrap();
        c.write(
            Place::EtcCaddy,
            plan::CADDYFILE,
            b"new",
            Some(before.clone()),
        )
        .unwrap();
        let m = std::fs::metadata(&cf).unwrap();
        assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o640, 0, 4242));
        assert!(c.undo().is_empty());
        assert_eq!(std::fs::read(&cf).unwrap(), before);
        let m = std::fs::metadata(&cf).unwrap();
        assert_eq!((m.mode() & 0o7777, m.gid()), (0o640, 4242));
    }

    #[test]
    fn written_files_are_root_s_and_unreadable_to_others() {
        crate::host::testutil::root_or_skip!("files are written root:caddy");
        use std::os::unix::fs::MetadataExt;
        let t = TempDir::new("front-modes");
        let p = places(&t);
        let mut c = Changes::new(&p);
        c.write(Place::Ours, plan::KEY, b"key", None).unwrap();
        c.write(Place::EtcCaddy, plan::CADDYFILE, b"cf", None)
            .unwrap();
        let k = std::fs::metadata(t.join("ours/key.pem")).unwrap();
        assert_eq!(
            (k.uid(), k.gid(), k.mode() & 0o7777),
            (0, p.caddy_gid, 0o640)
        );
        let cf = std::fs::metadata(t.join("Caddyfile")).unwrap();
        assert_eq!((cf.uid(), cf.mode() & 0o7777), (0, 0o644));
    }

    #[test]
    fn read_opt_refuses_links_and_says_missing() {
        let t = TempDir::new("front-read");
        let d = Dir::open(t.path()).unwrap();
        assert_eq!(read_opt(&d, "none", None, 100).unwrap(), None);
        std::fs::write(t.join("f"), b"abc").unwrap();
        assert_eq!(
            read_opt(&d, "f", None, 100).unwrap().as_deref(),
            Some(&b"abc"[..])
        );
        assert!(read_opt(&d, "f", None, 2).is_err(), "too large");
        std::os::unix::fs::symlink("/etc/shadow", t.join("l")).unwrap();
        let e = read_opt(&d, "l", None, 100).unwrap_err();
        assert!(e.message.contains("symbolic link"), "{}", e.message);
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if me != 0 {
            assert!(read_opt(&d, "f", Some(0), 100).is_err(), "not root's");
        }
    }

    #[test]
    fn certificate_sources_are_read_once_checked_and_never_followed() {
        let t = TempDir::new("front-src");
        let cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        std::fs::write(t.join("c.pem"), cert).unwrap();
        std::fs::write(
            t.join("k.pem"),
            "-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        std::os::unix::fs::symlink(t.join("k.pem"), t.join("link.pem")).unwrap();
        let hp =
            |n: &str| front::HostPath::parse("CERT_FILE", t.join(n).to_str().unwrap()).unwrap();
        assert_eq!(
            read_source("CERT_FILE", &hp("c.pem"), Pem::Certificate).unwrap(),
            cert.as_bytes()
        );
        let e = read_source("CERT_FILE", &hp("k.pem"), Pem::Certificate).unwrap_err();
        assert_eq!(e.exit, Exit::Configuration);
        assert!(e.message.contains("not a PEM certificate"), "{}", e.message);
        assert!(
            !e.message.contains("PRIVATE KEY-----\nx"),
            "no content is shown"
        );
        let e = read_source("KEY_FILE", &hp("link.pem"), Pem::Key).unwrap_err();
        assert!(e.message.contains("symbolic link"), "{}", e.message);
        let e = read_source("KEY_FILE", &hp("none.pem"), Pem::Key).unwrap_err();
        assert!(e.message.starts_with("KEY_FILE="), "{}", e.message);
        // A link anywhere on the way, not only at the end, is refused.
        std::fs::create_dir(t.join("real")).unwrap();
        std::fs::write(t.join("real/c.pem"), cert).unwrap();
        std::os::unix::fs::symlink(t.join("real"), t.join("alias")).unwrap();
        assert!(read_source("CERT_FILE", &hp("real/c.pem"), Pem::Certificate).is_ok());
        let e = read_source("CERT_FILE", &hp("alias/c.pem"), Pem::Certificate).unwrap_err();
        assert!(e.message.contains("symbolic link"), "{}", e.message);
        // A second name for a file (a hard link) is refused.
        std::fs::hard_link(t.join("c.pem"), t.join("hard.pem")).unwrap();
        let e = read_source("CERT_FILE", &hp("hard.pem"), Pem::Certificate).unwrap_err();
        assert!(e.message.contains("with 2 links"), "{}", e.message);
    }

    #[test]
    fn the_own_certificate_is_refused_unless_it_is_for_the_domain_and_current() {
        use crate::host::x509::tests::{EXPIRED, OTHER, SAN_API};
        let t = TempDir::new("front-own");
        for (n, c) in [
            ("api.pem", SAN_API),
            ("other.pem", OTHER),
            ("old.pem", EXPIRED),
        ] {
            std::fs::write(t.join(n), c).unwrap();
        }
        let hp =
            |n: &str| front::HostPath::parse("CERT_FILE", t.join(n).to_str().unwrap()).unwrap();
        let now = 1_796_000_000;
        assert_eq!(
            read_own_cert(&hp("api.pem"), "api.example.com", now).unwrap(),
            SAN_API.as_bytes()
        );
        let e = read_own_cert(&hp("other.pem"), "api.newcomer.test", now).unwrap_err();
        assert_eq!(e.exit, Exit::Configuration);
        assert_eq!(
            e.message,
            format!(
                "CERT_FILE={} is a certificate for other.test, www.other.test, not for DOMAIN=api.newcomer.test: give the certificate for api.newcomer.test (its subjectAltName), or DOMAIN=other.test; then run the same command again",
                t.join("other.pem").display()
            )
        );
        let e = read_own_cert(&hp("old.pem"), "api.example.com", now).unwrap_err();
        assert!(e.message.contains("expired on 2020-01-02"), "{}", e.message);
        // What read_source refuses is refused first, with its words.
        let e = read_own_cert(&hp("none.pem"), "api.example.com", now).unwrap_err();
        assert!(e.message.starts_with("CERT_FILE="), "{}", e.message);
    }

    #[test]
    fn a_second_apply_waits_for_the_lock() {
        let t = TempDir::new("front-lock");
        let d = Dir::open(t.path()).unwrap();
        let d2 = Dir::open(t.path()).unwrap();
        let held = DirLock::take(&d).unwrap();
        let e = DirLock::take(&d2).err().unwrap();
        assert_eq!(e.exit, Exit::Locked);
        drop(held);
        assert!(DirLock::take(&d2).is_ok());
    }

    #[test]
    fn ensure_dir_refuses_a_link() {
        crate::host::testutil::root_or_skip!("ensure_dir sets root ownership");
        let t = TempDir::new("front-dir");
        let parent = Dir::open(t.path()).unwrap();
        std::os::unix::fs::symlink("/tmp", t.join("tribist")).unwrap();
        assert!(ensure_dir(&parent, "tribist", 0o750, 0).is_err());
        let made = ensure_dir(&parent, "made", 0o750, 0).unwrap();
        let st = made.fstat().unwrap();
        assert_eq!((st.uid, st.perm()), (0, 0o750));
    }

    #[test]
    fn storage_names_are_listed_through_the_descriptor() {
        let t = TempDir::new("front-names");
        std::fs::write(t.join("a"), b"").unwrap();
        std::fs::create_dir(t.join("b")).unwrap();
        let d = Dir::open(t.path()).unwrap();
        let mut n = names_in(&d).unwrap();
        n.sort();
        assert_eq!(n, ["a", "b"]);
        rmdir_at(&d, "b").unwrap();
        assert!(!t.join("b").exists());
    }
}
