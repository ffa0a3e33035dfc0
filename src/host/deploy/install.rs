//! `install BUNDLE_DIR` (root): install or update everything from the directory remote.sh
//! uploaded (root's, 0700): the layout and users, the scripts and this program, the binary
//! (received as tribist), the env file, the sudoers drop-in, the deploy key, the units and
//! the address; then the binary's preflight with the env file it is about to use, and only
//! then the env file written, the units read and the service (re)started and waited for.
//! Running it again is safe, and it is how a host set up by an older kit gets today's
//! layout (`hostlayout`).
//!
//! With the front door's words after the bundle (`install BUNDLE --domain D …`, `make install
//! DOMAIN=…`), once the service is healthy the front is applied (`front_host::apply`, the
//! certificate files the bundle's); without them a front already there is kept, and said so.
//! A front that fails leaves tribist installed and serving (exit 9, [`Exit::FrontFailed`]).
//!
//! Interrupts (Ctrl-C through ssh -t, a lost connection, `make unlock`): before the lock the
//! run just ends; after it the audit says `interrupted`, and the exit is 130. However the run
//! ends, an upload received but not staged is discarded.

use std::io::Seek;
use std::time::Duration;

use super::envconf::{self, choose_env, install_env, url_from_bundle, EnvUse};
use super::hostlayout::{authorise_keys, make_layout, Quarantine};
use super::listen::{check_listen, dropin_now, wanted_listen, write_listen};
use super::steps::{
    self, discard, drop_verified_next, keep_release, lock, open_for_stdin, preflight, relay_err,
    release_of, restart_and_wait, run_root, stage_verified, systemctl_root, NotHealthy, Refused,
};
use super::{as_tribist, health, interrupt, need_root, paths, say, warn, Ctx, Exit, Fail, Result};
use crate::host::audit::{Action, Outcome};
use crate::host::child::ExitKind;
use crate::host::digest::Sha256;
use crate::host::front_host;
use crate::host::front_plan::{self, ApplyArgs, CertSource};
use crate::host::fsx::{self, Dir, Limits};
use crate::host::text::clean;

/// What the bundle must hold (remote.sh's `cmd_install` puts them there).
pub const BUNDLE: &[&str] = &[
    "server",
    "tribist-host",
    "tribist.service",
    "tribist.socket",
    "tribist.sudoers",
    "tribist.env.example",
    "server.sh",
    "wait_for_it.sh",
];

/// The front door's files in the bundle (`make install DOMAIN=…` with ACME_CA_ROOT, or with
/// CERT_FILE and KEY_FILE): the front's words name them, and only them.
pub const FRONT_CA_ROOT: &str = "front-ca-root.pem";
pub const FRONT_CERT: &str = "front-cert.pem";
pub const FRONT_KEY: &str = "front-key.pem";

/// Installed into bin/ (root's, 0755): this program and the scripts.
pub const TO_BIN: &[&str] = &["tribist-host", "server.sh", "wait_for_it.sh"];

/// What an older kit put in bin/ that nothing runs any more: removed (tribist-host replaced
/// both scripts).
pub const OBSOLETE_IN_BIN: &[&str] = &["releases.sh", "deploy.sh"];

/// The commands the kit runs on the host beyond systemd's and the base system's, checked
/// before anything changes (sbin/check.sh checks the same list): curl for wait_for_it.sh
/// (the seed's), sudo for tribist's systemctl, logger for the journal's copy of the audit, ss
/// for a port in use, pkill/pgrep for uninstall.
const NEEDED: &[&str] = &["curl", "sudo", "logger", "ss", "pkill", "pgrep"];

/// The uploaded bundle: root's directory, read through descriptors.
struct Bundle {
    dir: Dir,
}

impl Bundle {
    fn open(path: &str) -> Result<Bundle> {
        let dir =
            Dir::open(path).map_err(|e| Fail::failed(format!("{e}; run make install again")))?;
        let st = dir.fstat().map_err(|e| Fail::failed(e.to_string()))?;
        if st.uid != 0 || st.mode & 0o022 != 0 {
            return Err(Fail::failed(format!(
                "the upload directory {} is not root's alone (uid {}, mode {:04o}); run make install again",
                clean(path.as_bytes(), 200),
                st.uid,
                st.perm()
            )));
        }
        Ok(Bundle { dir })
    }

    fn has(&self, name: &str) -> bool {
        self.dir.lstat_at(name).is_ok_and(|st| st.is_regular())
    }

    /// A file of the bundle (root's), at most `max` bytes.
    fn read(&self, name: &str, max: u64) -> Result<Vec<u8>> {
        let r = fsx::open_regular_at(
            &self.dir,
            name,
            Limits {
                owner: Some(0),
                max_size: max,
            },
        )
        .map_err(|e| Fail::failed(format!("{e}; run make install again")))?;
        fsx::read_bounded(&r.file, max, &self.dir.shown_name(name))
            .map_err(|e| Fail::failed(e.to_string()))
    }
}

/// Where an install is, for what an interrupt or a failure must undo.
enum Installing {
    /// Nothing of the release received yet.
    Preparing,
    /// The binary is an upload in api/, not yet staged: discarded if the run ends here.
    Received { upload: String },
    /// Staged or in place: nothing to take back (as deploy.sh had it).
    Staged,
}

/// The install's state; when the run ends (success, refusal, failure or interrupt) with an
/// upload received but not staged, the upload is discarded.
struct Run {
    state: Installing,
}

impl Run {
    /// On an interrupt: said and audited (the upload goes when the run ends).
    fn interrupted(&self, ctx: &Ctx) -> Fail {
        warn("interrupted");
        ctx.audit(Outcome::Interrupted);
        Fail::quiet(Exit::Interrupted)
    }

    fn check_interrupt(&self, ctx: &Ctx) -> Result<()> {
        if interrupt::interrupted() {
            return Err(self.interrupted(ctx));
        }
        Ok(())
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Installing::Received { upload } = &self.state {
            discard(upload);
        }
    }
}

/// Removes what a run leaves only for itself: root's copy of an upload no start step took.
struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        drop_verified_next();
    }
}

/// `install BUNDLE_DIR [FRONT-WORDS…]`: the front's words are `front apply`'s (parsed by
/// its parser), without `--upstream` (the service's own address) or `--by` (the
/// deployment's), and every file they name is one of the bundle's [`FRONT_CA_ROOT`],
/// [`FRONT_CERT`], [`FRONT_KEY`]. None: no words, no front asked for.
pub fn front_args(bundle: &str, words: &[String]) -> Result<Option<ApplyArgs>> {
    if words.is_empty() {
        return Ok(None);
    }
    if words.iter().any(|w| w == "--upstream" || w == "--by") {
        return Err(Fail::usage(
            "install's front takes no --upstream (the service's own address) or --by (the deployment's)",
        ));
    }
    let args = front_plan::parse_apply(words).map_err(|e| Fail::usage(e.to_string()))?;
    for (path, name) in front_files(&args) {
        let want = format!("{bundle}/{name}");
        if path.as_path() != std::path::Path::new(&want) {
            return Err(Fail::usage(format!(
                "install's front files come in the bundle: {} is not {want}; run make install again",
                clean(path.as_path().as_os_str().as_encoded_bytes(), 200)
            )));
        }
    }
    Ok(Some(args))
}

/// The files a front's arguments name, each with the bundle's name for it.
fn front_files(args: &ApplyArgs) -> Vec<(&crate::host::front::HostPath, &'static str)> {
    match &args.certs {
        CertSource::Acme { ca_root, .. } => ca_root.iter().map(|p| (p, FRONT_CA_ROOT)).collect(),
        CertSource::Own { cert, key } => vec![(cert, FRONT_CERT), (key, FRONT_KEY)],
    }
}

/// Where the front dials the service listening on `listen`: the address itself, or
/// loopback for an unspecified one (0.0.0.0, [::]).
pub fn dial(listen: &str) -> Option<std::net::SocketAddr> {
    let mut a: std::net::SocketAddr = listen.parse().ok()?;
    if a.ip().is_unspecified() {
        a.set_ip(match a {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Some(a)
}

/// Whether the service on `listen` is reachable from this host only.
pub fn loopback(listen: &str) -> bool {
    listen
        .parse::<std::net::SocketAddr>()
        .is_ok_and(|a| a.ip().is_loopback())
}

/// `install BUNDLE_DIR [FRONT-WORDS…]`.
pub fn install(ctx: &mut Ctx, bundle_path: &str, front_words: &[&str]) -> Result<Exit> {
    let front_words: Vec<String> = front_words.iter().map(|w| w.to_string()).collect();
    let front = front_args(bundle_path, &front_words)?;
    need_root("install")?;
    if fsx::lstat(std::path::Path::new("/run/systemd/system")).is_err() {
        return Err(Fail::failed(
            "systemd is not running on this host; tribist needs it",
        ));
    }
    let bundle = Bundle::open(bundle_path)?;
    for f in BUNDLE {
        if !bundle.has(f) {
            return Err(Fail::failed(format!(
                "the upload is incomplete: {bundle_path}/{f} is missing; run make install again"
            )));
        }
    }
    for (_, name) in front.as_ref().map(front_files).unwrap_or_default() {
        if !bundle.has(name) {
            return Err(Fail::failed(format!(
                "the upload is incomplete: {bundle_path}/{name} is missing; run make install again"
            )));
        }
    }
    let url = if bundle.has("database_url") {
        Some(url_from_bundle(
            &bundle.read("database_url", envconf::MAX_URL as u64 + 1)?,
        )?)
    } else {
        None
    };
    if url.is_none() && envconf::read_env()?.is_none() {
        return Err(Fail::new(
            Exit::Configuration,
            format!(
                "no DATABASE_URL given and there is no {} yet: nothing installed; give the URL in a file (DATABASE_URL_FILE=path)",
                paths::ENV_FILE
            ),
        ));
    }
    let listen = wanted_listen(ctx.listen.as_deref(), dropin_now().as_deref());
    check_listen(&listen)?;
    for cmd in NEEDED {
        let found = ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
            .iter()
            .any(|d| std::path::Path::new(d).join(cmd).exists());
        if !found {
            return Err(Fail::failed(format!(
                "{cmd} is missing on this host: install it (Debian: apt-get install curl sudo bsdutils iproute2 procps)"
            )));
        }
    }
    if interrupt::interrupted() {
        return Err(Fail::quiet(Exit::Interrupted));
    }
    let mut quarantine = Quarantine::default();
    make_layout(&mut quarantine)?;
    let bin = Dir::open(paths::BIN_DIR)
        .map_err(|e| Fail::failed(format!("{e}; run make install again")))?;
    for name in TO_BIN {
        let bytes = bundle.read(name, steps::MAX_BINARY)?;
        fsx::write_atomic_at(&bin, name, &bytes, 0o755, Some((0, 0)))
            .map_err(|e| Fail::failed(e.to_string()))?;
    }
    for name in OBSOLETE_IN_BIN {
        if bin.lstat_at(name).is_ok() {
            fsx::unlinkat(&bin, name).map_err(|e| Fail::failed(e.to_string()))?;
        }
    }
    let works = run_root(paths::HOST_PROGRAM, &["help"], Duration::from_secs(10))
        .is_ok_and(|o| o.status == ExitKind::Exited(0));
    if !works {
        return Err(Fail::failed(format!(
            "the host program {} does not run on this host; run make install again with a build from make release",
            paths::HOST_PROGRAM
        )));
    }
    if interrupt::interrupted() {
        return Err(Fail::quiet(Exit::Interrupted));
    }
    let _lock = lock(ctx, Action::Install)?;
    let _cleanup = Cleanup;
    let mut run = Run {
        state: Installing::Preparing,
    };
    run.check_interrupt(ctx)?;
    ctx.release_from = release_of("server");

    // The binary, received as tribist from the bundle's file (its SHA-256 read here first).
    let mut server = open_for_stdin(&bundle.dir, "server", steps::MAX_BINARY)?;
    let sum = Sha256::of_reader(&mut server)
        .map_err(|e| Fail::failed(format!("cannot read the binary: {e}")))?;
    server
        .rewind()
        .map_err(|e| Fail::failed(format!("cannot read the binary: {e}")))?;
    let sum = sum.to_string();
    let o = as_tribist(
        paths::HOST_PROGRAM,
        &["releases", "receive", &sum],
        Some(server),
        Duration::from_secs(120),
    )?;
    let upload = o.stdout.trim_end_matches('\n').to_string();
    if o.status != ExitKind::Exited(0)
        || upload.is_empty()
        || upload.len() > 100
        || upload.contains('\n')
    {
        relay_err(&o, "");
        return Err(Fail::failed(format!(
            "could not store the binary in {} (as tribist); nothing installed",
            paths::API_DIR
        )));
    }
    run.state = Installing::Received {
        upload: upload.clone(),
    };
    run.check_interrupt(ctx)?;
    let Some(to) = release_of(&upload) else {
        ctx.audit(Outcome::RefusedDoesNotRun);
        return Err(Fail::failed(
            "the binary to install does not run on this host ('server --version' failed); nothing installed",
        ));
    };
    ctx.release_to = Some(to.clone());
    let example = bundle.read("tribist.env.example", 1 << 20)?;
    let conf = Dir::open(paths::CONF_DIR).map_err(|e| Fail::failed(e.to_string()))?;
    fsx::write_atomic_at(&conf, "env.example", &example, 0o644, Some((0, 0)))
        .map_err(|e| Fail::failed(e.to_string()))?;
    let env = choose_env(url.as_deref())?;
    // Install is the repair path: the binary given replaces whatever claims its id (said);
    // the very bytes installed already are not staged again, so server.prev stays the
    // previous release.
    let mut check_name = upload.clone();
    let ident = steps::tribist_run(
        paths::HOST_PROGRAM,
        &["releases", "identity", &upload, &to],
        None,
        15,
    )
    .ok()
    .filter(|o| o.status == ExitKind::Exited(0))
    .map_or_else(|| "new".to_string(), |o| o.stdout.trim_end().to_string());
    if ident == "installed" {
        check_name = "server".into();
    } else if let Some(what) = ident
        .strip_prefix("conflict: ")
        .or_else(|| ident.strip_prefix("kept-other: "))
    {
        warn(&format!(
            "warning: {} (built elsewhere, from uncommitted changes, or tampered with): installing the binary given",
            clean(what.as_bytes(), 200)
        ));
    }
    run.check_interrupt(ctx)?;

    install_sudoers(&bundle)?;
    if bundle.has("deploy_key.pub") {
        let text = bundle.read("deploy_key.pub", 1 << 20)?;
        authorise_keys(&String::from_utf8_lossy(&text))?;
    }

    // The same preflight as an upgrade's: the binary, with the configuration now in place,
    // must answer /health 200 beside whatever serves before anything (re)starts.
    match preflight(ctx, &check_name, &to, &env.path()) {
        Ok(()) => {}
        Err(Refused::Interrupted) => return Err(run.interrupted(ctx)),
        Err(r) => {
            ctx.audit(Outcome::RefusedPreflight);
            let env_exists = envconf::read_env().ok().flatten().is_some();
            if r == Refused::Configuration {
                warn(&format!(
                    "refused: release {to} cannot work with this configuration (above): nothing was (re)started, {}",
                    if env_exists {
                        format!("{} is as it was", paths::ENV_FILE)
                    } else {
                        format!("no {} was written", paths::ENV_FILE)
                    }
                ));
                let host = ctx.host().to_string();
                let file = ctx.url_file.clone();
                if matches!(env, EnvUse::Existing) && envconf::env_served() {
                    warn(&format!(
                        "next: {} has served and is kept by install; change it: make config HOST={host} DATABASE_URL_FILE={} (or SET=NAME=VALUE for the setting named above)",
                        paths::ENV_FILE,
                        file.as_deref().unwrap_or("path")
                    ));
                } else {
                    let f = file.as_deref().unwrap_or("path");
                    warn(&format!(
                        "next: put the right database URL in {} and run: make install HOST={host} DATABASE_URL_FILE={f} (make check HOST={host} DATABASE_URL_FILE={f} tries it first)",
                        file.as_deref().unwrap_or("a file (chmod 600)")
                    ));
                }
                return Err(Fail::quiet(Exit::Configuration));
            }
            return Err(Fail::failed(format!(
                "refused: release {to} failed its preflight (above), so the service was not (re)started and {} is as it was",
                paths::ENV_FILE
            )));
        }
    }
    run.check_interrupt(ctx)?;
    install_env(env)?;

    // The binary becomes server_new; the restart below promotes it (first install included).
    if check_name == "server" {
        discard(&upload);
        run.state = Installing::Staged;
        say(&format!(
            "release {to} is installed already (the same bytes); the files and units are updated"
        ));
    } else {
        stage_verified(&upload)?;
        run.state = Installing::Staged;
    }
    run.check_interrupt(ctx)?;

    // The address the socket has now, before the new units are read (then it reads the new one).
    let was = health::listen_address();
    let system = Dir::open("/etc/systemd/system").map_err(|e| Fail::failed(e.to_string()))?;
    for (from, to_name) in [
        ("tribist.service", "tribist.service"),
        ("tribist.socket", "tribist.socket"),
    ] {
        let bytes = bundle.read(from, 1 << 20)?;
        fsx::write_atomic_at(&system, to_name, &bytes, 0o644, Some((0, 0)))
            .map_err(|e| Fail::failed(e.to_string()))?;
    }
    write_listen(&listen)?;
    let t = Duration::from_secs(90);
    let socket = format!("{}.socket", paths::UNIT);
    let service = format!("{}.service", paths::UNIT);
    // Read at once, so no systemctl call below warns that the files changed on disk.
    systemctl_root(&["daemon-reload"], t, false);
    if steps::unit_active(&socket) && was != listen {
        // A new address: the socket is made anew, and the server holding the old one goes.
        say(&format!("moving {} from {was} to {listen}", paths::UNIT));
        systemctl_root(&["stop", &service, &socket], t, false);
    }
    systemctl_root(&["enable", "--quiet", &socket, &service], t, false);
    if !steps::unit_active(&socket) {
        // A server that bound the port itself must let go of it before the socket takes it.
        systemctl_root(&["stop", &service], t, false);
        if !systemctl_root(&["start", &socket], t, false) {
            return Err(Fail::failed(format!(
                "cannot start {socket} on {listen} (is the port taken?); see: journalctl -u {socket}"
            )));
        }
    }
    run.check_interrupt(ctx)?;
    say(&format!(
        "starting {} and waiting up to {}s for {}",
        paths::UNIT,
        ctx.wait,
        health::health_url()
    ));
    match restart_and_wait(ctx, Some(&to), true) {
        Ok(()) => {}
        Err(NotHealthy::Interrupted) => return Err(run.interrupted(ctx)),
        Err(NotHealthy::Failed) => {
            ctx.audit(Outcome::Failed);
            return Err(Fail::failed(format!(
                "installed, but {} is not healthy (see above) although its preflight passed; once the cause above is fixed, run make install again",
                paths::UNIT
            )));
        }
    }
    if let Ok(o) = steps::tribist_run(paths::HOST_PROGRAM, &["releases", "commit"], None, 15) {
        if o.status != ExitKind::Exited(0) {
            relay_err(&o, "");
        }
    }
    envconf::mark_env_served();
    ctx.audit(Outcome::Ok);
    keep_release(ctx, &to);
    say(&format!(
        "installed: {} is healthy, release {}",
        paths::UNIT,
        health::serving_release().unwrap_or_default()
    ));
    match &front {
        Some(args) => apply_front(ctx, args, &listen),
        None => {
            keep_front(ctx, &listen);
            Ok(Exit::Ok)
        }
    }
}

/// The front asked for, applied once the service is healthy, with the deployment's `--by`
/// and `--target` (its own audit record: `action=front op=apply`). A failure leaves tribist
/// installed and serving: exit [`Exit::FrontFailed`], saying so.
fn apply_front(ctx: &Ctx, args: &ApplyArgs, listen: &str) -> Result<Exit> {
    let domain = args.domain.as_str().to_string();
    let serving = format!(
        "tribist is installed and serving on {listen}{}",
        if loopback(listen) {
            " (loopback: this host only)"
        } else {
            ""
        }
    );
    let Some(upstream) = dial(listen) else {
        return Err(Fail::new(
            Exit::FrontFailed,
            format!("{serving}; but the front cannot dial {listen}: give an IP address and port, e.g. make install HOST={} LISTEN=127.0.0.1:8383 with the same DOMAIN= and certificate variables", ctx.host()),
        ));
    };
    if ctx.listen.is_none() && !loopback(listen) {
        warn(&format!(
            "warning: tribist listens on {listen}, not on loopback: clients can reach it around the front (make install HOST={} LISTEN=127.0.0.1:{} DOMAIN={domain} … puts it behind the front only)",
            ctx.host(),
            upstream.port()
        ));
    }
    let mut args = args.clone();
    args.upstream = Some(upstream);
    let mut fctx = ctx.clone();
    fctx.release_from = None;
    fctx.release_to = None;
    fctx.extra.clear();
    say(&format!(
        "the front: https://{domain} -> {upstream} (Caddy)"
    ));
    match front_host::apply(&mut fctx, &args) {
        Ok(Exit::Ok) => {
            say(&format!(
                "front: https://{domain} serves tribist (make uninstall removes it)"
            ));
            Ok(Exit::Ok)
        }
        Ok(_) => Err(Fail::new(
            Exit::FrontFailed,
            format!("{serving}; the front https://{domain} is configured but does not answer (above): fix what it names, then run the same make install again"),
        )),
        Err(f) => {
            if !f.message.is_empty() {
                warn(&f.message);
            }
            let exit = if f.exit == Exit::Interrupted {
                Exit::Interrupted
            } else {
                Exit::FrontFailed
            };
            Err(Fail::new(
                exit,
                format!("{serving}; setting up the front https://{domain} failed (above, with what is in place now): fix what it names, then run the same make install again"),
            ))
        }
    }
}

/// No front asked for: one already there is kept (a re-install never drops it), and said
/// so; warned when it dials another address than the service's now.
fn keep_front(ctx: &Ctx, listen: &str) {
    let Some((domain, upstream)) = front_host::configured() else {
        return;
    };
    say(&format!(
        "front: https://{domain} kept (make uninstall removes it)"
    ));
    if let (Some(up), Some(now)) = (upstream, dial(listen)) {
        if up != now {
            warn(&format!(
                "warning: the front https://{domain} dials {up}, but tribist now listens on {listen}: run make install HOST={} DOMAIN={domain} with its ACME_EMAIL= or CERT_FILE= KEY_FILE= again",
                ctx.host()
            ));
        }
    }
}

/// The sudoers drop-in: checked by `visudo -c` first, then written (root, 0440) atomically
/// (its temporary's name has a dot, which sudo skips).
fn install_sudoers(bundle: &Bundle) -> Result<()> {
    let bytes = bundle.read("tribist.sudoers", 1 << 20)?;
    let path = format!("{}/tribist.sudoers", bundle.dir.shown());
    let visudo = steps::find_program(&["/usr/sbin/visudo", "/sbin/visudo", "/usr/bin/visudo"])
        .ok_or_else(|| {
            Fail::failed("visudo is missing on this host: install sudo (apt-get install sudo)")
        })?;
    let ok = run_root(visudo, &["-c", "-q", "-f", &path], Duration::from_secs(30))?;
    if ok.status != ExitKind::Exited(0) {
        relay_err(&ok, "");
        return Err(Fail::failed(
            "the sudoers drop-in does not parse; nothing installed for sudo",
        ));
    }
    let dir =
        Dir::open("/etc/sudoers.d").map_err(|e| Fail::failed(format!("{e}; install sudo")))?;
    fsx::write_atomic_at(&dir, "tribist", &bytes, 0o440, Some((0, 0)))
        .map_err(|e| Fail::failed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_front_s_words_name_the_bundle_s_files_only() {
        let b = "/tmp/tribist-install.AbC123";
        assert_eq!(front_args(b, &[]), Ok(None));
        let a = front_args(
            b,
            &words(&[
                "--domain",
                "api.example.com",
                "--acme-email",
                "ops@example.com",
                "--acme-ca",
                "https://127.0.0.1:14000/dir",
                "--acme-ca-root",
                "/tmp/tribist-install.AbC123/front-ca-root.pem",
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(a.domain.as_str(), "api.example.com");
        assert_eq!(a.upstream, None);
        let own = front_args(
            b,
            &words(&[
                "--domain",
                "api.example.com",
                "--cert-file",
                "/tmp/tribist-install.AbC123/front-cert.pem",
                "--key-file",
                "/tmp/tribist-install.AbC123/front-key.pem",
            ]),
        )
        .unwrap()
        .unwrap();
        assert!(matches!(own.certs, CertSource::Own { .. }));
        for bad in [
            &[
                "--domain",
                "api.example.com",
                "--cert-file",
                "/etc/shadow",
                "--key-file",
                "/tmp/tribist-install.AbC123/front-key.pem",
            ][..],
            &[
                "--domain",
                "api.example.com",
                "--cert-file",
                "/tmp/tribist-install.AbC123/front-key.pem",
                "--key-file",
                "/tmp/tribist-install.AbC123/front-cert.pem",
            ],
            &[
                "--domain",
                "api.example.com",
                "--acme-email",
                "o@example.com",
                "--upstream",
                "10.0.0.1:80",
            ],
            &[
                "--domain",
                "api.example.com",
                "--acme-email",
                "o@example.com",
                "--by",
                "x",
            ],
            &[
                "--domain",
                "x{env.HOME}.example",
                "--acme-email",
                "o@example.com",
            ],
            &[
                "--domain",
                "api.example.com\nimport /etc/shadow",
                "--acme-email",
                "o@example.com",
            ],
            &["--domain", "api.example.com"],
        ] {
            let e = front_args(b, &words(bad)).unwrap_err();
            assert_eq!(e.exit, Exit::Usage, "{bad:?}: {}", e.message);
        }
    }

    #[test]
    fn the_front_dials_loopback_for_an_unspecified_address() {
        assert_eq!(
            dial("127.0.0.1:8383"),
            Some("127.0.0.1:8383".parse().unwrap())
        );
        assert_eq!(
            dial("0.0.0.0:9000"),
            Some("127.0.0.1:9000".parse().unwrap())
        );
        assert_eq!(dial("[::]:9000"), Some("[::1]:9000".parse().unwrap()));
        assert_eq!(dial("10.1.2.3:80"), Some("10.1.2.3:80".parse().unwrap()));
        assert_eq!(dial("/run/x.sock"), None);
        assert!(loopback("127.0.0.1:8383") && loopback("[::1]:1"));
        assert!(!loopback("0.0.0.0:8383") && !loopback("10.0.0.1:80"));
    }

    #[test]
    fn the_bundle_and_bin() {
        // Everything bin/ needs is in the bundle, and bin/ holds what the layout lists there.
        for name in TO_BIN {
            assert!(BUNDLE.contains(name), "{name}");
            assert!(!OBSOLETE_IN_BIN.contains(name), "{name}");
        }
        for e in crate::host::layout::LAYOUT {
            if let Some(name) = e.path.strip_prefix("/home/tribist/bin/") {
                assert!(TO_BIN.contains(&name), "{name}");
            }
        }
    }
}
