//! The front door's decisions on a host, as pure functions of what is there: which files to
//! write or remove, what becomes of the Caddyfile (Debian's default welcome site taken over,
//! an admin's file edited beside its sites, tribist's lines removed alone), when Caddy is
//! reloaded, started or restarted, who holds ports 80 and 443, and how the answers of
//! `dpkg-query`, `curl -v`, `caddy validate` and `systemd-analyze security` read.
//!
//! Why apart from the commands (`host::front_host`): every decision is tested by `cargo test`
//! without root, Caddy or a network, on the texts those programs print, and a test of a
//! decision fails when the decision is wrong. The commands only observe, call these, and do
//! what they return. `host::front` renders the Caddy texts themselves; values typed on the
//! deployer's side are checked there (domain, e-mail, CA URL, paths).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::front::{self, CaUrl, Domain, Email, FrontError, HostPath, MARKER};
use super::text::clean;

/// Debian's Caddyfile (a dpkg conffile) and where tribist keeps it when it takes it over.
pub const CADDYFILE: &str = "Caddyfile";
pub const CADDYFILE_PREV: &str = "Caddyfile.tribist-prev";
pub const ETC_CADDY: &str = "/etc/caddy";
/// The hardening drop-in of caddy.service (etc/caddy/tribist-hardening.conf).
pub const DROPIN_DIR: &str = "/etc/systemd/system/caddy.service.d";
pub const DROPIN_NAME: &str = "tribist-hardening.conf";
pub const HARDENING: &str = include_str!("../../etc/caddy/tribist-hardening.conf");
/// Where Caddy (Debian's unit: user caddy, HOME=/var/lib/caddy) keeps certificates, one
/// directory per CA, then one per domain.
pub const CADDY_CERTIFICATES: &str = "/var/lib/caddy/.local/share/caddy/certificates";

/// tribist's files in [`front::DIR`], by name. Everything tribist writes for the front is
/// here or is one of the three files above (root's, never tribist's).
pub const SITE: &str = "site.caddy";
pub const SERVERS: &str = "servers.caddy";
pub const CERT: &str = "cert.pem";
pub const KEY: &str = "key.pem";
pub const CA_ROOT: &str = "ca-root.pem";
/// The domain, one line: what `front remove --purge` removes from Caddy's storage after a
/// `front remove` took the site file away.
pub const DOMAIN_NOTE: &str = "domain";
pub const OURS: [&str; 6] = [SITE, SERVERS, CERT, KEY, CA_ROOT, DOMAIN_NOTE];
/// The certificate files among [`OURS`] (and the domain they are for): kept by `front
/// remove`, removed by `--purge`.
pub const KEPT: [&str; 4] = [CERT, KEY, CA_ROOT, DOMAIN_NOTE];

/// The largest certificate, key or CA root file taken (a chain of a few certificates is
/// a few KiB).
pub const MAX_PEM: u64 = 64 * 1024;

/// The path of one of [`OURS`] on a host.
pub fn our_path(name: &str) -> String {
    format!("{}/{name}", front::DIR)
}

// ---------------------------------------------------------------------------------------------
// The command line.

/// How the certificate is had, as the deployer gave it: files on this host to be copied
/// into [`front::DIR`] (root's), never used where they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertSource {
    Acme {
        email: Email,
        ca: Option<CaUrl>,
        /// The PEM file of the CA's own HTTPS root (a private CA such as pebble).
        ca_root: Option<HostPath>,
    },
    Own {
        cert: HostPath,
        key: HostPath,
    },
}

/// `front apply`'s arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyArgs {
    pub domain: Domain,
    pub certs: CertSource,
    /// None: the address tribist.socket listens on.
    pub upstream: Option<SocketAddr>,
    pub by: Option<String>,
}

/// `front remove`'s arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoveArgs {
    pub purge: bool,
    pub by: Option<String>,
}

/// A misuse of the command line: what, and the usage.
pub fn usage_error(what: impl Into<String>) -> FrontError {
    FrontError {
        what: what.into(),
        fix: "usage: tribist-host front apply --domain D (--acme-email E [--acme-ca URL] [--acme-ca-root FILE] | --cert-file F --key-file K) [--upstream ADDR:PORT] [--by WHO]; see: tribist-host help".into(),
    }
}

fn check_by(v: &str) -> Result<String, FrontError> {
    if v.is_empty() || v.len() > 100 || v.chars().any(char::is_control) {
        return Err(usage_error(
            "--by must be 1-100 printable characters (no newline or control character)",
        ));
    }
    Ok(v.to_string())
}

/// Options as `--name VALUE` pairs, each at most once, from `known`.
fn options<'a>(
    args: &'a [String],
    known: &[&str],
    flags: &[&str],
) -> Result<BTreeMap<String, Option<&'a str>>, FrontError> {
    let mut out = BTreeMap::new();
    let mut i = 0;
    while i < args.len() {
        let name = args[i].as_str();
        let (value, step) = if flags.contains(&name) {
            (None, 1)
        } else if known.contains(&name) {
            let v = args
                .get(i + 1)
                .ok_or_else(|| usage_error(format!("{name} needs a value")))?;
            (Some(v.as_str()), 2)
        } else {
            return Err(usage_error(format!(
                "unknown argument {:?}",
                clean(name.as_bytes(), 60)
            )));
        };
        if out.insert(name.to_string(), value).is_some() {
            return Err(usage_error(format!("{name} is given twice")));
        }
        i += step;
    }
    Ok(out)
}

/// Parses `front apply`'s arguments; every value is checked by `host::front`'s rules, so a
/// hostile one is refused here with the reason.
pub fn parse_apply(args: &[String]) -> Result<ApplyArgs, FrontError> {
    let o = options(
        args,
        &[
            "--domain",
            "--acme-email",
            "--acme-ca",
            "--acme-ca-root",
            "--cert-file",
            "--key-file",
            "--upstream",
            "--by",
        ],
        &[],
    )?;
    let get = |k: &str| o.get(k).copied().flatten();
    let domain = Domain::parse(get("--domain").ok_or_else(|| usage_error("--domain is missing"))?)?;
    let certs = match (get("--acme-email"), get("--cert-file"), get("--key-file")) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            return Err(usage_error(
                "--acme-email and --cert-file/--key-file are given together: one or the other",
            ))
        }
        (Some(e), None, None) => CertSource::Acme {
            email: Email::parse(e)?,
            ca: get("--acme-ca").map(CaUrl::parse).transpose()?,
            ca_root: get("--acme-ca-root")
                .map(|v| HostPath::parse("ACME_CA_ROOT", v))
                .transpose()?,
        },
        (None, Some(c), Some(k)) => {
            if get("--acme-ca").is_some() || get("--acme-ca-root").is_some() {
                return Err(usage_error(
                    "--acme-ca and --acme-ca-root go with --acme-email, not with --cert-file",
                ));
            }
            CertSource::Own {
                cert: HostPath::parse("CERT_FILE", c)?,
                key: HostPath::parse("KEY_FILE", k)?,
            }
        }
        (None, Some(_), None) => return Err(usage_error("--key-file is missing")),
        (None, None, Some(_)) => return Err(usage_error("--cert-file is missing")),
        (None, None, None) => return Err(usage_error(
            "how to get the certificate is missing: --acme-email E, or --cert-file F --key-file K",
        )),
    };
    let upstream = match get("--upstream") {
        None => None,
        Some(u) => Some(u.parse::<SocketAddr>().map_err(|_| FrontError {
            what: format!(
                "--upstream {:?} is not an IP address and port",
                clean(u.as_bytes(), 80)
            ),
            fix: "give the service's socket address, e.g. --upstream 127.0.0.1:8383".into(),
        })?),
    };
    let by = get("--by").map(check_by).transpose()?;
    Ok(ApplyArgs {
        domain,
        certs,
        upstream,
        by,
    })
}

pub fn parse_remove(args: &[String]) -> Result<RemoveArgs, FrontError> {
    let o = options(args, &["--by"], &["--purge"])?;
    Ok(RemoveArgs {
        purge: o.contains_key("--purge"),
        by: o.get("--by").copied().flatten().map(check_by).transpose()?,
    })
}

/// The site as it is rendered for the files root installs: the certificate files are
/// always tribist's copies in [`front::DIR`], never the deployer's paths.
pub fn front_of(args: &ApplyArgs, upstream: SocketAddr) -> front::Front {
    let ours = |name: &str, var: &str| {
        HostPath::parse(var, &our_path(name)).expect("tribist's own paths are plain")
    };
    let certificates = match &args.certs {
        CertSource::Acme { email, ca, ca_root } => front::Certificates::Acme(front::Acme {
            email: email.clone(),
            ca: ca.clone(),
            ca_root: ca_root.as_ref().map(|_| ours(CA_ROOT, "ACME_CA_ROOT")),
        }),
        CertSource::Own { .. } => front::Certificates::OwnCert {
            cert: ours(CERT, "CERT_FILE"),
            key: ours(KEY, "KEY_FILE"),
        },
    };
    front::Front {
        domain: args.domain.clone(),
        certificates,
        upstream,
        limits: front::EdgeLimits::default(),
    }
}

// ---------------------------------------------------------------------------------------------
// Certificate files.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pem {
    Certificate,
    Key,
}

/// Whether `bytes` look like what a PEM file of `kind` must be (Caddy itself checks the pair
/// at `caddy validate`); the reason if not. Nothing of the content is ever printed.
pub fn check_pem(kind: Pem, bytes: &[u8]) -> Result<(), String> {
    if bytes.len() as u64 > MAX_PEM {
        return Err(format!(
            "it has {} bytes, more than the {MAX_PEM} a PEM file here may have",
            bytes.len()
        ));
    }
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Err("it is not text (PEM files are; a DER file converts with: openssl x509 -in F -inform der -out F.pem)".into());
    };
    let ok = match kind {
        Pem::Certificate => {
            text.contains("-----BEGIN CERTIFICATE-----")
                && text.contains("-----END CERTIFICATE-----")
                && !text.contains("PRIVATE KEY-----")
        }
        Pem::Key => {
            text.lines()
                .any(|l| l.starts_with("-----BEGIN ") && l.ends_with("PRIVATE KEY-----"))
                && !text.contains("ENCRYPTED")
        }
    };
    if ok {
        return Ok(());
    }
    Err(match kind {
        Pem::Certificate => "it is not a PEM certificate (-----BEGIN CERTIFICATE-----), or it also holds a private key".into(),
        Pem::Key => "it is not an unencrypted PEM private key (-----BEGIN … PRIVATE KEY-----; an encrypted key decrypts with: openssl pkey -in F -out F.plain)".into(),
    })
}

// ---------------------------------------------------------------------------------------------
// Packages.

/// What to do about the caddy package, from `dpkg-query -W -f='${Status}\n${Version}' caddy`
/// (a newline between them: output read through `text::printable` has no tabs)
/// (None: the query failed: no such package known, or no dpkg).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PackageStep {
    Ready,
    /// Not installed: `apt-get install -y caddy`.
    Install,
    /// Installed but older than 2.6 (the configuration is Caddy 2.6's).
    TooOld(String),
    /// No apt-get on this host.
    NoApt,
}

pub const INSTALL_COMMAND: &str = "apt-get update && apt-get install -y caddy";

pub fn package_step(dpkg: Option<&str>, apt_get: bool) -> PackageStep {
    let (status, version) = dpkg
        .map(|s| s.trim().split_once('\n').unwrap_or((s.trim(), "")))
        .unwrap_or(("", ""));
    // Held (apt-mark hold) is installed all the same.
    if status == "install ok installed" || status == "hold ok installed" {
        return match caddy_version(version) {
            Some(v) if v >= (2, 6) => PackageStep::Ready,
            _ => PackageStep::TooOld(clean(version.as_bytes(), 60)),
        };
    }
    if apt_get {
        PackageStep::Install
    } else {
        PackageStep::NoApt
    }
}

/// `2.6.2-5`, `v2.7.6 h1:…`, `2.6.2` → (major, minor).
pub fn caddy_version(s: &str) -> Option<(u32, u32)> {
    let s = s.trim().trim_start_matches('v');
    let mut it = s.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// The md5 dpkg recorded for `path` in `dpkg-query -W -f='${Conffiles}\n' caddy`'s output
/// (lines ` /etc/caddy/Caddyfile 8cbf… [obsolete]`).
pub fn conffile_md5(conffiles: &str, path: &str) -> Option<String> {
    conffiles.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next()? == path)
            .then(|| w.next())
            .flatten()
            .filter(|m| m.len() == 32 && m.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(str::to_string)
    })
}

/// The md5 in `md5sum`'s output (`8cbf…  -`).
pub fn md5sum_output(out: &str) -> Option<String> {
    out.split_whitespace()
        .next()
        .filter(|m| m.len() == 32 && m.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_ascii_lowercase)
}

// ---------------------------------------------------------------------------------------------
// The Caddyfile.

/// What there is at /etc/caddy/Caddyfile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caddyfile {
    Missing,
    /// Its bytes, and whether they are still exactly Debian's (dpkg's md5 of the conffile).
    Present {
        bytes: Vec<u8>,
        debian_default: bool,
    },
}

/// What apply does to the Caddyfile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaddyfileApply {
    /// It already imports tribist's files.
    Unchanged,
    /// Debian's default (its welcome page on :80), or none at all: replaced by
    /// [`front::main_caddyfile`]; Debian's is kept as [`CADDYFILE_PREV`].
    TakeOver { new: String, keep: Option<Vec<u8>> },
    /// Someone's own Caddyfile: tribist's two lines added beside its sites.
    Edit { new: String },
}

pub fn caddyfile_apply(current: &Caddyfile) -> Result<CaddyfileApply, FrontError> {
    match current {
        Caddyfile::Missing => Ok(CaddyfileApply::TakeOver {
            new: front::main_caddyfile(),
            keep: None,
        }),
        Caddyfile::Present {
            bytes,
            debian_default: true,
        } => Ok(CaddyfileApply::TakeOver {
            new: front::main_caddyfile(),
            keep: Some(bytes.clone()),
        }),
        Caddyfile::Present { bytes, .. } => {
            let text = std::str::from_utf8(bytes).map_err(|_| FrontError {
                what:
                    "/etc/caddy/Caddyfile is not UTF-8 text, so tribist cannot add its lines to it"
                        .into(),
                fix: "run: caddy fmt --overwrite /etc/caddy/Caddyfile, then the same command again"
                    .into(),
            })?;
            // Both of tribist's lines are there (where tribist put them, or moved by an admin:
            // caddy validate judges): left alone, so a second apply changes nothing.
            if imports_site(text) && imports_servers(text) {
                return Ok(CaddyfileApply::Unchanged);
            }
            let new = front::with_front(text)?;
            Ok(if new.as_bytes() == bytes.as_slice() {
                CaddyfileApply::Unchanged
            } else {
                CaddyfileApply::Edit { new }
            })
        }
    }
}

/// What a Caddyfile says when tribist's site was its only content and no default of
/// Debian's was kept (an empty Caddyfile is refused by Caddy: "EOF").
pub const EMPTIED: &str = "# tribist's front was removed (tribist-host front remove); no site is configured.\n# Add sites here (https://caddyserver.com/docs/caddyfile).\n";

/// What remove does to the Caddyfile: None leaves it as it is; else its new bytes. tribist's
/// lines go; if nothing else remains, Debian's default comes back (as it was before apply
/// took it over) or, without one, a comment ([`EMPTIED`]).
pub fn caddyfile_remove(current: &Caddyfile, prev: Option<&[u8]>) -> Option<Vec<u8>> {
    let Caddyfile::Present { bytes, .. } = current else {
        return None;
    };
    // Not text: tribist never wrote it, so nothing of tribist's is in it.
    let text = std::str::from_utf8(bytes).ok()?;
    let rest = front::without_front(text);
    let new = if has_sites(&rest) {
        rest.into_bytes()
    } else if let Some(p) = prev {
        p.to_vec()
    } else if rest.trim().is_empty() {
        EMPTIED.as_bytes().to_vec()
    } else {
        rest.into_bytes()
    };
    (new != *bytes).then_some(new)
}

/// Whether a Caddyfile has anything but comments and blank lines.
pub fn has_sites(text: &str) -> bool {
    text.lines().any(|l| {
        let t = l.trim();
        !t.is_empty() && !t.starts_with('#')
    })
}

/// Whether the Caddyfile imports tribist's site (a line of tribist's, marked).
pub fn imports_site(text: &str) -> bool {
    text.lines().any(|l| {
        let t = l.trim();
        t.ends_with(MARKER) && t.starts_with("import ") && t.contains(front::SITE_FILE)
    })
}

/// Whether the Caddyfile imports tribist's servers option (a line of tribist's, marked).
pub fn imports_servers(text: &str) -> bool {
    text.lines().any(|l| {
        let t = l.trim();
        t.ends_with(MARKER) && t.starts_with("import ") && t.contains(front::SERVERS_FILE)
    })
}

/// The domain tribist's files are for: the site's, else the note's (after a `front remove`).
pub fn domain_of(ours: &BTreeMap<&'static str, Vec<u8>>) -> Option<Domain> {
    let text = |n| ours.get(n).and_then(|b| std::str::from_utf8(b).ok());
    text(SITE)
        .and_then(site_domain)
        .or_else(|| text(DOMAIN_NOTE).and_then(|t| Domain::parse(t.trim()).ok()))
}

/// Whether a name in Caddy's log directory is tribist's access log or one of its rolled
/// copies (Caddy's roller: `NAME-<time>.log`, gzipped `.log.gz`).
pub fn is_access_log(name: &str) -> bool {
    name == "tribist-access.log"
        || (name.starts_with("tribist-access-")
            && (name.ends_with(".log") || name.ends_with(".log.gz"))
            && !name.contains('/'))
}

/// The domain of tribist's site when there is one (a front configured, not a removed one's
/// note).
pub fn site_of(ours: &BTreeMap<&'static str, Vec<u8>>) -> Option<Domain> {
    ours.get(SITE)
        .and_then(|b| std::str::from_utf8(b).ok())
        .and_then(site_domain)
}

/// The domain of a site file tribist wrote (its first line that is not a comment, `D {`).
pub fn site_domain(site: &str) -> Option<Domain> {
    let line = site
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))?;
    Domain::parse(line.strip_suffix('{')?.trim()).ok()
}

/// The upstream of a site file tribist wrote (`reverse_proxy ADDR {`).
pub fn site_upstream(site: &str) -> Option<SocketAddr> {
    site.lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("reverse_proxy "))
        .and_then(|r| r.trim_end_matches('{').trim().parse().ok())
}

// ---------------------------------------------------------------------------------------------
// tribist's files.

/// One change to a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Write { name: &'static str, bytes: Vec<u8> },
    Remove { name: &'static str },
}

impl Step {
    pub fn name(&self) -> &'static str {
        match self {
            Step::Write { name, .. } | Step::Remove { name } => name,
        }
    }
}

/// The steps that make tribist's files (among `names`) what `desired` says: written when
/// missing or different, removed when present and not desired, untouched when equal. A name
/// outside `names` is never touched.
pub fn file_steps(
    names: &[&'static str],
    current: &BTreeMap<&'static str, Vec<u8>>,
    desired: &BTreeMap<&'static str, Vec<u8>>,
) -> Vec<Step> {
    let mut out = Vec::new();
    for &name in names {
        match (current.get(name), desired.get(name)) {
            (Some(c), Some(d)) if c == d => {}
            (_, Some(d)) => out.push(Step::Write {
                name,
                bytes: d.clone(),
            }),
            (Some(_), None) => out.push(Step::Remove { name }),
            (None, None) => {}
        }
    }
    out
}

/// What `front apply` wants in [`front::DIR`]: the site, the servers option, and the
/// certificate files its certificate source needs (the others are removed: a site that
/// changed from its own certificate to ACME leaves no key behind).
pub fn desired_files(
    domain: &Domain,
    site: &str,
    servers: &str,
    certs: &BTreeMap<&'static str, Vec<u8>>,
) -> BTreeMap<&'static str, Vec<u8>> {
    let mut d = BTreeMap::new();
    d.insert(SITE, site.as_bytes().to_vec());
    d.insert(SERVERS, servers.as_bytes().to_vec());
    d.insert(DOMAIN_NOTE, format!("{}\n", domain.as_str()).into_bytes());
    for name in [CERT, KEY, CA_ROOT] {
        if let Some(b) = certs.get(name) {
            d.insert(name, b.clone());
        }
    }
    d
}

/// What `front remove` wants in [`front::DIR`]: no site and no servers option; the
/// certificate files stay unless purged.
pub fn remaining_files(
    current: &BTreeMap<&'static str, Vec<u8>>,
    purge: bool,
) -> BTreeMap<&'static str, Vec<u8>> {
    current
        .iter()
        .filter(|(n, _)| !purge && KEPT.contains(n))
        .map(|(n, b)| (*n, b.clone()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Caddy's service.

/// What is done to caddy.service once the files are validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceStep {
    /// Nothing changed and it runs: no reload (a reload closes idle keep-alive connections
    /// and loses a request sent at that instant; docs/front-door.md, "Reloads").
    Nothing,
    /// `systemctl reload caddy` (`caddy reload --force`: graceful for busy connections).
    Reload,
    /// `systemctl enable --now caddy`: it does not run.
    Start,
    /// `systemctl restart caddy`: its drop-in changed, which only a restart applies.
    Restart,
}

/// `apply`: the front must serve afterwards, so a stopped Caddy is started. `remove`: a
/// stopped Caddy stays stopped (its files are read at its next start). `dropin_changed`:
/// tribist wrote or removed the hardening drop-in, which only a restart applies.
pub fn service_step(
    apply: bool,
    active: bool,
    files_changed: bool,
    dropin_changed: bool,
) -> ServiceStep {
    match (active, apply) {
        (false, true) => ServiceStep::Start,
        (false, false) => ServiceStep::Nothing,
        (true, _) if dropin_changed => ServiceStep::Restart,
        (true, _) if files_changed => ServiceStep::Reload,
        (true, _) => ServiceStep::Nothing,
    }
}

/// What apply does about the hardening drop-in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropInStep {
    /// It is there, as tribist ships it.
    Same,
    /// Written (new or changed), and Caddy restarted for it.
    Install,
    /// Caddy serves other sites too: its sandbox (`ProtectHome=`, `ProtectSystem=strict`
    /// with two writable paths, `MemoryMax=`…) could break them at Caddy's next start, and
    /// the restart would close all their connections. Left to the admin
    /// ([`HARDENING_ADVICE`]: `front harden`).
    LeaveToAdmin,
}

pub fn dropin_step(current: Option<&[u8]>, others_serving: bool) -> DropInStep {
    if current == Some(HARDENING.as_bytes()) {
        DropInStep::Same
    } else if others_serving {
        DropInStep::LeaveToAdmin
    } else {
        DropInStep::Install
    }
}

/// What apply and status say when the drop-in is left to the admin.
pub const HARDENING_ADVICE: &str = "Caddy serves other sites too, so tribist did not sandbox caddy.service: its drop-in (ProtectHome=yes, ProtectSystem=strict with only /var/lib/caddy and /var/log/caddy writable, MemoryMax=1G, UMask=0077) could break them at Caddy's next start. Once they can run under it, install it and restart Caddy (closes every site's connections once): /home/tribist/bin/tribist-host front harden";

/// The address the front's pool dials: the service over loopback only. An unspecified
/// address (the service listening on all of them) is dialled on loopback; any other is
/// refused, so the front never publishes another host's or a metadata endpoint's service.
pub fn upstream(addr: SocketAddr, what: &str) -> Result<SocketAddr, String> {
    use std::net::{Ipv4Addr, Ipv6Addr};
    let ip = addr.ip();
    if ip.is_loopback() {
        return Ok(addr);
    }
    if ip.is_unspecified() {
        let lo: std::net::IpAddr = if addr.is_ipv4() {
            Ipv4Addr::LOCALHOST.into()
        } else {
            Ipv6Addr::LOCALHOST.into()
        };
        return Ok(SocketAddr::new(lo, addr.port()));
    }
    Err(format!(
        "{what} is {addr}: the front reaches the service over loopback only; put the service on loopback: make install HOST=… LISTEN=127.0.0.1:{} DOMAIN=…",
        addr.port()
    ))
}

/// The admin endpoints a running Caddy may have, in the order `reload` tries them: tribist's
/// socket, then Caddy's default.
pub fn admin_addresses() -> [String; 2] {
    [
        format!("unix/{}", front::ADMIN_SOCKET),
        "localhost:2019".to_string(),
    ]
}

/// Whether `caddy reload` failed for want of an admin endpoint at that address (so the
/// next is worth trying), rather than for the configuration.
pub fn admin_unreachable(said: &str) -> bool {
    said.contains("performing request")
        && (said.contains("connection refused") || said.contains("no such file or directory"))
}

/// Whether the Caddyfile serves sites other than tribist's: an admin's own file with sites
/// beside tribist's lines. Debian's untouched default (its welcome page) and no file at all
/// do not count: apply replaces them.
pub fn serves_others(current: &Caddyfile) -> bool {
    match current {
        Caddyfile::Missing => false,
        Caddyfile::Present {
            debian_default: true,
            ..
        } => false,
        Caddyfile::Present { bytes, .. } => std::str::from_utf8(bytes)
            .map(|t| has_sites(&front::without_front(t)))
            .unwrap_or(true),
    }
}

/// Whether the running Caddy has the hardening's descriptor limit: `/proc/PID/limits` of
/// its main process against the drop-in's `LimitNOFILE=`. A drop-in installed but not yet
/// applied (deferred, or a restart that never came) shows as false.
pub fn limits_applied(proc_limits: &str, dropin: &str) -> bool {
    let Some(want) = dropin
        .lines()
        .find_map(|l| l.trim().strip_prefix("LimitNOFILE="))
        .map(str::trim)
    else {
        return true;
    };
    proc_limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .is_some_and(|soft| soft == want)
}

/// What apply says beside other sites: the limits of `servers :443` are the port's, so
/// theirs too (Caddy has no per-site header timeout, idle timeout, header size or
/// protocols).
pub const SHARED_LIMITS: &str = "note: Caddy's other HTTPS sites share tribist's limits on port 443 (a header read in 10 s, idle connections closed at 120 s, headers up to 16 KiB, HTTP/1.1 and HTTP/2 only): Caddy sets these per port, not per site (docs/front-door.md, 'Coexistence')";

/// What status says when the drop-in is installed but the running Caddy started before it.
pub const HARDENING_PENDING: &str = "the hardening drop-in is installed, but the running Caddy started before it and runs without it; apply it (closes every site's connections once): systemctl restart caddy";

// ---------------------------------------------------------------------------------------------
// Ports 80 and 443.

/// A listening TCP socket: its local port and its inode (`/proc/net/tcp`, `tcp6`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listener {
    pub port: u16,
    pub inode: u64,
}

/// The listening sockets in a `/proc/net/tcp` or `/proc/net/tcp6` text (state `0A`).
pub fn listeners(proc_net_tcp: &str) -> Vec<Listener> {
    proc_net_tcp
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                return None;
            }
            let port = u16::from_str_radix(f[1].rsplit(':').next()?, 16).ok()?;
            let inode = f[9].parse().ok()?;
            Some(Listener { port, inode })
        })
        .collect()
}

/// A process, as `/proc/PID/comm` and `/proc/PID/cgroup` name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    pub name: String,
    /// The systemd unit it runs in, if any (`….service`).
    pub unit: Option<String>,
}

/// The unit of a `/proc/PID/cgroup` text (`0::/system.slice/nginx.service`).
pub fn cgroup_unit(cgroup: &str) -> Option<String> {
    cgroup
        .lines()
        .filter_map(|l| l.rsplit(':').next())
        .flat_map(|p| p.split('/'))
        .rfind(|c| c.ends_with(".service"))
        .map(|u| clean(u.as_bytes(), 100))
}

/// Who holds a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holder {
    Free,
    Caddy(u32),
    Other(Process),
    /// Listening, by a process this user cannot see (not root).
    Unseen,
}

impl Holder {
    pub fn describe(&self) -> String {
        match self {
            Holder::Free => "free".into(),
            Holder::Caddy(pid) => format!("caddy's (pid {pid})"),
            Holder::Other(p) => format!(
                "taken by {} (pid {}{})",
                p.name,
                p.pid,
                p.unit
                    .as_deref()
                    .map(|u| format!(", {u}"))
                    .unwrap_or_default()
            ),
            Holder::Unseen => "taken (by whom: run as root to see)".into(),
        }
    }
}

/// Who holds `port`, given the listening sockets and the owner of each socket inode.
pub fn holder(port: u16, listening: &[Listener], owners: &BTreeMap<u64, Process>) -> Holder {
    let mut seen = None;
    let mut any = false;
    for l in listening.iter().filter(|l| l.port == port) {
        any = true;
        match owners.get(&l.inode) {
            // Caddy is the process named caddy in caddy.service: a name alone can be taken.
            Some(p) if p.name == "caddy" && p.unit.as_deref() == Some("caddy.service") => {
                seen = seen.or(Some(Holder::Caddy(p.pid)))
            }
            Some(p) => return Holder::Other(p.clone()),
            None => {}
        }
    }
    match (any, seen) {
        (false, _) => Holder::Free,
        (true, Some(h)) => h,
        (true, None) => Holder::Unseen,
    }
}

/// Why the front cannot have ports 80 and 443, with the command that frees them.
pub fn ports_refusal(h80: &Holder, h443: &Holder) -> Option<String> {
    let (port, p) = match (h80, h443) {
        (_, Holder::Other(p)) => (443, p),
        (Holder::Other(p), _) => (80, p),
        _ => return None,
    };
    let stop = match &p.unit {
        Some(u) => format!("systemctl disable --now {u}"),
        // systemd itself listens for a socket unit (socket activation).
        None if p.pid == 1 => format!(
            "systemctl list-sockets | grep ':{port}' names the socket unit; systemctl disable --now NAME.socket"
        ),
        None => format!("kill {} (it runs outside systemd)", p.pid),
    };
    Some(format!(
        "port {port} is taken by {} (pid {}): the front needs ports 80 and 443 for itself and Caddy's other sites; free it: {stop}, then run the same command again",
        p.name, p.pid
    ))
}

// ---------------------------------------------------------------------------------------------
// What the programs say.

/// How the front answered `curl -sk --resolve D:443:127.0.0.1 https://D/health`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// No TLS handshake (no certificate yet, or nothing on 443): curl's exit code.
    NoTls(i32),
    /// Caddy answered but could not reach the service (502, 504).
    NoUpstream(u16),
    /// The service answered through the front.
    Service(u16),
}

pub fn answer(curl_exit: i32, http_code: u16) -> Answer {
    match (curl_exit, http_code) {
        (_, 0) => Answer::NoTls(curl_exit),
        (_, 502 | 504) => Answer::NoUpstream(http_code),
        (_, c) => Answer::Service(c),
    }
}

/// What `curl -skv -w '%{http_code} %{http_version}'` said of the served certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Served {
    pub subject: Option<String>,
    pub issuer: Option<String>,
    pub expires: Option<String>,
    pub http_code: u16,
    pub http_version: String,
}

pub fn served(verbose: &str, written: &str) -> Served {
    let field = |key: &str| {
        verbose.lines().find_map(|l| {
            l.trim_start_matches('*')
                .trim_start()
                .strip_prefix(key)
                .map(|v| clean(v.trim().as_bytes(), 200))
        })
    };
    let mut w = written.split_whitespace();
    Served {
        subject: field("subject:"),
        issuer: field("issuer:"),
        expires: field("expire date:"),
        http_code: w.next().and_then(|c| c.parse().ok()).unwrap_or(0),
        http_version: w.next().map(|v| clean(v.as_bytes(), 8)).unwrap_or_default(),
    }
}

/// `systemd-analyze security UNIT`'s verdict (`1.5 OK`), from its last line.
pub fn exposure(out: &str) -> Option<String> {
    out.lines().find_map(|l| {
        let (_, rest) = l.split_once("Overall exposure level for ")?;
        let (_, v) = rest.split_once(": ")?;
        let v = v
            .trim()
            .trim_end_matches(":-)")
            .trim_end_matches(":-(")
            .trim();
        (!v.is_empty()).then(|| clean(v.as_bytes(), 40))
    })
}

/// The lines worth showing of `caddy validate`'s output (its `Error:` line, else its last
/// lines), bounded.
pub fn validate_error(out: &str) -> String {
    let error: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("Error:") || l.contains("\"level\":\"error\""))
        .collect();
    let lines: Vec<&str> = if error.is_empty() {
        let all: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
        all[all.len().saturating_sub(3)..].to_vec()
    } else {
        error
    };
    clean(lines.join(" | ").as_bytes(), 600)
}

/// The one thing to do when `caddy validate` refused the files (they were put back).
pub fn validate_fix(out: &str) -> String {
    if out.contains("duplicate listener addresses") {
        format!(
            "/etc/caddy/Caddyfile has its own `servers :443` options, and Caddy takes one block per listener: remove yours (tribist's {} sets the :443 server's protocols, timeouts and header size for every site on it; docs/front-door.md), then run the same command again",
            front::SERVERS_FILE
        )
    } else if out.contains("ambiguous site definition") {
        "another site of /etc/caddy/Caddyfile already serves this domain: remove it (or give tribist another DOMAIN), then run the same command again".into()
    } else {
        "fix what Caddy names (the previous files are back, and Caddy serves them unchanged), then run the same command again; check by hand: runuser -u caddy -- caddy validate --adapter caddyfile --config /etc/caddy/Caddyfile".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn apply_arguments_acme_and_own() {
        let a = parse_apply(&s(&[
            "--domain",
            "API.Example.test",
            "--acme-email",
            "ops@example.test",
            "--acme-ca",
            "https://127.0.0.1:14000/dir",
            "--acme-ca-root",
            "/root/pebble/cert.pem",
            "--upstream",
            "127.0.0.1:8383",
            "--by",
            "alice",
        ]))
        .unwrap();
        assert_eq!(a.domain.as_str(), "api.example.test");
        assert_eq!(a.upstream, Some("127.0.0.1:8383".parse().unwrap()));
        assert_eq!(a.by.as_deref(), Some("alice"));
        // The site names tribist's copy of the CA root, never the deployer's path.
        let site = front_of(&a, a.upstream.unwrap()).site().unwrap();
        assert!(
            site.contains("ca_root /etc/caddy/tribist/ca-root.pem"),
            "{site}"
        );
        assert!(!site.contains("/root/pebble"));

        let own = parse_apply(&s(&[
            "--domain",
            "api.example.test",
            "--cert-file",
            "/tmp/up/c.pem",
            "--key-file",
            "/tmp/up/k.pem",
        ]))
        .unwrap();
        assert_eq!(own.upstream, None);
        let site = front_of(&own, "127.0.0.1:9000".parse().unwrap())
            .site()
            .unwrap();
        assert!(site.contains("tls /etc/caddy/tribist/cert.pem /etc/caddy/tribist/key.pem"));
        assert!(!site.contains("/tmp/up"));
    }

    #[test]
    fn hostile_and_wrong_arguments_are_refused() {
        for (args, why) in [
            (&["--acme-email", "a@b.example"][..], "--domain is missing"),
            (
                &["--domain", "a.example", "--domain", "b.example"][..],
                "twice",
            ),
            (&["--domain", "a.example"][..], "how to get the certificate"),
            (
                &[
                    "--domain",
                    "a.example { respond x }",
                    "--acme-email",
                    "a@b.example",
                ][..],
                "a space",
            ),
            (
                &[
                    "--domain",
                    "{env.HOME}.example",
                    "--acme-email",
                    "a@b.example",
                ][..],
                "{env.X}",
            ),
            (
                &[
                    "--domain",
                    "a.example",
                    "--acme-email",
                    "a@b.example\nimport /x",
                ][..],
                "a newline",
            ),
            (
                &[
                    "--domain",
                    "a.example",
                    "--acme-email",
                    "a@b.example",
                    "--cert-file",
                    "/c",
                ][..],
                "together",
            ),
            (
                &["--domain", "a.example", "--cert-file", "/c"][..],
                "--key-file is missing",
            ),
            (
                &[
                    "--domain",
                    "a.example",
                    "--cert-file",
                    "/c",
                    "--key-file",
                    "/k",
                    "--acme-ca",
                    "https://x.example/d",
                ][..],
                "go with --acme-email",
            ),
            (
                &[
                    "--domain",
                    "a.example",
                    "--cert-file",
                    "/etc/../shadow",
                    "--key-file",
                    "/k",
                ][..],
                "'..'",
            ),
            (
                &[
                    "--domain",
                    "a.example",
                    "--acme-email",
                    "a@b.example",
                    "--acme-ca",
                    "http://x.example/d",
                ][..],
                "https:// only",
            ),
            (
                &[
                    "--domain",
                    "a.example",
                    "--acme-email",
                    "a@b.example",
                    "--upstream",
                    "localhost:80",
                ][..],
                "not an IP address",
            ),
            (
                &[
                    "--domain",
                    "a.example",
                    "--acme-email",
                    "a@b.example",
                    "--by",
                    "a\u{1b}[2J",
                ][..],
                "--by",
            ),
            (&["--domain"][..], "needs a value"),
            (&["--frobnicate", "x"][..], "unknown argument"),
        ] {
            let e = parse_apply(&s(args)).unwrap_err().to_string();
            assert!(e.contains(why), "{args:?}: {e}");
            assert!(!e.contains('\n') && !e.contains('\x1b'), "{e:?}");
        }
        assert!(parse_remove(&s(&["--purge"])).unwrap().purge);
        assert!(!parse_remove(&s(&[])).unwrap().purge);
        assert!(parse_remove(&s(&["--purge", "--purge"])).is_err());
        assert!(parse_remove(&s(&["--all"])).is_err());
    }

    #[test]
    fn pem_files_are_checked_for_kind() {
        let cert = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let key = b"-----BEGIN EC PRIVATE KEY-----\nMHc\n-----END EC PRIVATE KEY-----\n";
        let pkcs8 = b"-----BEGIN PRIVATE KEY-----\nMIG\n-----END PRIVATE KEY-----\n";
        assert!(check_pem(Pem::Certificate, cert).is_ok());
        assert!(check_pem(Pem::Key, key).is_ok());
        assert!(check_pem(Pem::Key, pkcs8).is_ok());
        assert!(check_pem(Pem::Certificate, key).is_err());
        assert!(check_pem(Pem::Key, cert).is_err());
        let both = [&cert[..], &key[..]].concat();
        assert!(
            check_pem(Pem::Certificate, &both).is_err(),
            "a key never goes where a certificate is read"
        );
        assert!(check_pem(Pem::Key, b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nx\n").is_err());
        assert!(check_pem(Pem::Certificate, &[0xff, 0xfe]).is_err());
        let big = vec![b'a'; MAX_PEM as usize + 1];
        assert!(check_pem(Pem::Certificate, &big)
            .unwrap_err()
            .contains("more than"));
    }

    #[test]
    fn packages() {
        assert_eq!(
            package_step(Some("install ok installed\n2.6.2-5\n"), true),
            PackageStep::Ready
        );
        assert_eq!(
            package_step(Some("install ok installed\n2.4.6-1"), true),
            PackageStep::TooOld("2.4.6-1".into())
        );
        assert_eq!(
            package_step(Some("deinstall ok config-files\n2.6.2-5"), true),
            PackageStep::Install
        );
        assert_eq!(package_step(None, true), PackageStep::Install);
        // What the host program reads has no tabs (text::printable): never "installed".
        assert_eq!(
            package_step(Some("install ok installed2.6.2-5"), true),
            PackageStep::Install
        );
        assert_eq!(package_step(None, false), PackageStep::NoApt);
        // apt-mark hold: installed all the same.
        assert_eq!(
            package_step(Some("hold ok installed\n2.6.2-5"), true),
            PackageStep::Ready
        );
        assert_eq!(caddy_version("v2.7.6 h1:w0NymbG2"), Some((2, 7)));
        assert_eq!(caddy_version("2.6.2-12+deb13u1"), Some((2, 6)));
        assert_eq!(caddy_version("garbage"), None);
        assert!(INSTALL_COMMAND.contains("apt-get install -y caddy"));
    }

    #[test]
    fn dpkg_and_md5sum_texts() {
        let conffiles = " /etc/caddy/Caddyfile 8cbf072a3e390217a88c242a7f18ee76\n /etc/caddy/other 0123456789abcdef0123456789abcdef obsolete\n";
        assert_eq!(
            conffile_md5(conffiles, "/etc/caddy/Caddyfile").as_deref(),
            Some("8cbf072a3e390217a88c242a7f18ee76")
        );
        assert_eq!(
            conffile_md5(conffiles, "/etc/caddy/other").as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        assert_eq!(conffile_md5(conffiles, "/etc/caddy/none"), None);
        assert_eq!(
            conffile_md5(
                " /etc/caddy/Caddyfile newconffile\n",
                "/etc/caddy/Caddyfile"
            ),
            None
        );
        assert_eq!(
            md5sum_output("8CBF072A3E390217A88C242A7F18EE76  -\n").as_deref(),
            Some("8cbf072a3e390217a88c242a7f18ee76")
        );
        assert_eq!(md5sum_output("md5sum: error\n"), None);
    }

    const DEBIAN: &str = "# The Caddyfile is an easy way to configure your Caddy web server.\n:80 {\n\troot * /usr/share/caddy\n\tfile_server\n}\n";
    const ADMIN: &str = "blog.example.org {\n\trespond hi\n}\n";

    fn present(t: &str, debian_default: bool) -> Caddyfile {
        Caddyfile::Present {
            bytes: t.as_bytes().to_vec(),
            debian_default,
        }
    }

    #[test]
    fn debian_default_is_taken_over_and_given_back() {
        let plan = caddyfile_apply(&present(DEBIAN, true)).unwrap();
        let CaddyfileApply::TakeOver { new, keep } = plan else {
            panic!("{plan:?}")
        };
        assert_eq!(new, front::main_caddyfile());
        assert!(!new.contains(":80"), "the welcome site is gone");
        assert_eq!(keep.as_deref(), Some(DEBIAN.as_bytes()));
        // Applied again: the file is tribist's now, not Debian's: unchanged.
        assert_eq!(
            caddyfile_apply(&present(&new, false)).unwrap(),
            CaddyfileApply::Unchanged
        );
        // Removed: Debian's file comes back byte for byte.
        assert_eq!(
            caddyfile_remove(&present(&new, false), Some(DEBIAN.as_bytes())).as_deref(),
            Some(DEBIAN.as_bytes())
        );
        // Without a kept default, a comment (an empty Caddyfile is refused by Caddy).
        let emptied = caddyfile_remove(&present(&new, false), None).unwrap();
        assert_eq!(emptied, EMPTIED.as_bytes());
        assert!(!has_sites(EMPTIED));
    }

    #[test]
    fn an_edited_default_is_someone_s_own() {
        // The same text, but dpkg's checksum says it was edited (e.g. whitespace): added to.
        let edited = format!("{DEBIAN}\n");
        let plan = caddyfile_apply(&present(&edited, false)).unwrap();
        let CaddyfileApply::Edit { new } = plan else {
            panic!("{plan:?}")
        };
        assert!(new.contains(":80 {"), "the admin's site stays: {new}");
        assert!(imports_site(&new));
        assert_eq!(
            caddyfile_remove(&present(&new, false), None),
            Some(front::without_front(&new).into_bytes())
        );
    }

    #[test]
    fn other_sites_stay_on_apply_and_remove() {
        let CaddyfileApply::Edit { new } = caddyfile_apply(&present(ADMIN, false)).unwrap() else {
            panic!()
        };
        assert!(
            new.starts_with("{\n\timport /etc/caddy/tribist/servers.caddy # tribist-front\n}\n")
        );
        assert!(new.contains(ADMIN));
        assert_eq!(
            caddyfile_apply(&present(&new, false)).unwrap(),
            CaddyfileApply::Unchanged,
            "idempotent"
        );
        // Removed alone, even with Debian's default kept from an earlier take-over.
        assert_eq!(
            caddyfile_remove(&present(&new, false), Some(DEBIAN.as_bytes())).as_deref(),
            Some(ADMIN.as_bytes())
        );
        // Sites the admin added after a take-over stay too, and a new apply changes nothing.
        let later = format!("{}\n{ADMIN}", front::main_caddyfile());
        assert_eq!(
            caddyfile_apply(&present(&later, false)).unwrap(),
            CaddyfileApply::Unchanged
        );
        assert_eq!(
            caddyfile_remove(&present(&later, false), Some(DEBIAN.as_bytes())).as_deref(),
            Some(ADMIN.as_bytes())
        );
        // Nothing of tribist's: nothing to do.
        assert_eq!(caddyfile_remove(&present(ADMIN, false), None), None);
        assert_eq!(caddyfile_remove(&Caddyfile::Missing, None), None);
    }

    #[test]
    fn a_missing_caddyfile_is_made_and_a_strange_one_refused() {
        assert!(matches!(
            caddyfile_apply(&Caddyfile::Missing).unwrap(),
            CaddyfileApply::TakeOver { keep: None, .. }
        ));
        let e = caddyfile_apply(&Caddyfile::Present {
            bytes: vec![0xff, b'\n'],
            debian_default: false,
        })
        .unwrap_err();
        assert!(e.fix.contains("caddy fmt"), "{e}");
        assert!(caddyfile_apply(&present("{ email a@b.example\n}\n", false)).is_err());
    }

    #[test]
    fn site_file_names_its_domain_and_upstream() {
        let a = parse_apply(&s(&[
            "--domain",
            "api.example.test",
            "--acme-email",
            "a@b.example",
        ]))
        .unwrap();
        let site = front_of(&a, "[::1]:8383".parse().unwrap()).site().unwrap();
        assert_eq!(site_domain(&site).unwrap().as_str(), "api.example.test");
        assert_eq!(site_upstream(&site), Some("[::1]:8383".parse().unwrap()));
        assert_eq!(site_domain("# only\n"), None);
        assert_eq!(site_domain("{env.X} {\n"), None);
    }

    fn files(v: &[(&'static str, &str)]) -> BTreeMap<&'static str, Vec<u8>> {
        v.iter().map(|(n, b)| (*n, b.as_bytes().to_vec())).collect()
    }

    #[test]
    fn files_written_only_when_different_and_stale_ones_removed() {
        let d = Domain::parse("api.example.test").unwrap();
        let current = files(&[
            (SITE, "old site"),
            (SERVERS, "servers"),
            (CERT, "c"),
            (KEY, "k"),
            (DOMAIN_NOTE, "api.example.test\n"),
        ]);
        // Now by ACME: the site changes, servers stays, the own certificate's files go.
        let desired = desired_files(&d, "new site", "servers", &BTreeMap::new());
        let steps = file_steps(&OURS, &current, &desired);
        assert_eq!(
            steps,
            vec![
                Step::Write {
                    name: SITE,
                    bytes: b"new site".to_vec()
                },
                Step::Remove { name: CERT },
                Step::Remove { name: KEY },
            ]
        );
        // Everything as desired: no step, so no reload.
        assert!(file_steps(&OURS, &desired, &desired).is_empty());
        // A name that is not tribist's is never touched.
        let mut odd = current.clone();
        odd.insert("admin.pem", b"x".to_vec());
        assert!(!file_steps(&OURS, &odd, &desired)
            .iter()
            .any(|s| s.name() == "admin.pem"));
    }

    #[test]
    fn remove_keeps_certificates_unless_purged() {
        let current = files(&[
            (SITE, "api.example.test {\n}\n"),
            (SERVERS, "v"),
            (CERT, "c"),
            (KEY, "k"),
            (CA_ROOT, "r"),
            (DOMAIN_NOTE, "api.example.test\n"),
        ]);
        let keep = remaining_files(&current, false);
        assert_eq!(
            keep.keys().copied().collect::<Vec<_>>(),
            vec![CA_ROOT, CERT, DOMAIN_NOTE, KEY]
        );
        let steps = file_steps(&OURS, &current, &keep);
        assert_eq!(
            steps,
            vec![Step::Remove { name: SITE }, Step::Remove { name: SERVERS }]
        );
        // A later purge still knows the domain whose certificates to remove.
        assert_eq!(domain_of(&keep).unwrap().as_str(), "api.example.test");
        assert_eq!(domain_of(&current).unwrap().as_str(), "api.example.test");
        assert_eq!(domain_of(&files(&[(DOMAIN_NOTE, "{env.X}\n")])), None);
        let purged = file_steps(&OURS, &current, &remaining_files(&current, true));
        assert_eq!(purged.len(), 6);
        assert!(purged.iter().all(|s| matches!(s, Step::Remove { .. })));
    }

    #[test]
    fn reload_only_when_something_changed() {
        use ServiceStep::*;
        assert_eq!(service_step(true, true, false, false), Nothing);
        assert_eq!(service_step(true, true, true, false), Reload);
        assert_eq!(service_step(true, true, true, true), Restart);
        assert_eq!(service_step(true, true, false, true), Restart);
        assert_eq!(service_step(true, false, false, false), Start);
        assert_eq!(service_step(true, false, true, true), Start);
        assert_eq!(service_step(false, false, true, true), Nothing);
        assert_eq!(service_step(false, true, true, false), Reload);
        assert_eq!(service_step(false, true, false, false), Nothing);
    }

    #[test]
    fn the_drop_in_is_installed_only_where_caddy_serves_tribist_alone() {
        use DropInStep::*;
        assert_eq!(dropin_step(None, false), Install);
        assert_eq!(dropin_step(Some(b"[Service]\nOld=1\n"), false), Install);
        assert_eq!(dropin_step(Some(HARDENING.as_bytes()), false), Same);
        assert_eq!(dropin_step(Some(HARDENING.as_bytes()), true), Same);
        assert_eq!(dropin_step(None, true), LeaveToAdmin);
        assert_eq!(dropin_step(Some(b"[Service]\nOld=1\n"), true), LeaveToAdmin);
        assert!(HARDENING_ADVICE.ends_with("tribist-host front harden"));
    }

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1 0000000000000000 100 0 0 10 0
   1: 0100007F:20BF 00000000:0000 0A 00000000:00000000 00:00000000 00000000   998        0 2222 1 0000000000000000 100 0 0 10 0
   2: 0100007F:20BF 0100007F:C350 01 00000000:00000000 00:00000000 00000000   998        0 3333 1 0000000000000000 20 4 30 10 -1
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:01BB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000   997        0 4444 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn listening_sockets_from_proc() {
        let mut l = listeners(TCP);
        l.extend(listeners(TCP6));
        assert_eq!(
            l,
            vec![
                Listener {
                    port: 80,
                    inode: 1111
                },
                Listener {
                    port: 8383,
                    inode: 2222
                },
                Listener {
                    port: 443,
                    inode: 4444
                },
            ]
        );
        assert!(listeners("garbage\nmore garbage 0A\n").is_empty());
    }

    #[test]
    fn who_holds_80_and_443() {
        let l = vec![
            Listener { port: 80, inode: 1 },
            Listener {
                port: 443,
                inode: 2,
            },
            Listener {
                port: 443,
                inode: 3,
            },
        ];
        let caddy = Process {
            pid: 10,
            name: "caddy".into(),
            unit: Some("caddy.service".into()),
        };
        let nginx = Process {
            pid: 20,
            name: "nginx".into(),
            unit: Some("nginx.service".into()),
        };
        let mut owners = BTreeMap::from([(1, caddy.clone()), (2, caddy.clone())]);
        assert_eq!(holder(80, &l, &owners), Holder::Caddy(10));
        assert_eq!(
            holder(443, &l, &owners),
            Holder::Caddy(10),
            "inode 3 unseen, 2 caddy's"
        );
        assert_eq!(holder(8443, &l, &owners), Holder::Free);
        assert_eq!(holder(443, &l, &BTreeMap::new()), Holder::Unseen);
        assert_eq!(ports_refusal(&Holder::Caddy(10), &Holder::Free), None);
        owners.insert(3, nginx.clone());
        let h443 = holder(443, &l, &owners);
        assert_eq!(h443, Holder::Other(nginx));
        let why = ports_refusal(&Holder::Free, &h443).unwrap();
        assert!(
            why.starts_with("port 443 is taken by nginx (pid 20)"),
            "{why}"
        );
        assert!(
            why.contains("systemctl disable --now nginx.service"),
            "{why}"
        );
        let stray = Holder::Other(Process {
            pid: 7,
            name: "python3".into(),
            unit: None,
        });
        assert!(ports_refusal(&stray, &Holder::Free)
            .unwrap()
            .contains("kill 7"));
        // A process that calls itself caddy outside caddy.service is not Caddy.
        let fake = Process {
            pid: 30,
            name: "caddy".into(),
            unit: Some("evil.service".into()),
        };
        let owners = BTreeMap::from([(1, fake.clone())]);
        assert_eq!(holder(80, &l, &owners), Holder::Other(fake));
        // systemd's own listener for a socket unit: the socket unit is the fix, not pid 1.
        let pid1 = Holder::Other(Process {
            pid: 1,
            name: "systemd".into(),
            unit: None,
        });
        let why = ports_refusal(&pid1, &Holder::Free).unwrap();
        assert!(why.contains("systemctl list-sockets | grep ':80'"), "{why}");
        assert!(!why.contains("kill 1"), "{why}");
    }

    #[test]
    fn access_logs_by_name() {
        assert!(is_access_log("tribist-access.log"));
        assert!(is_access_log(
            "tribist-access-2026-12-07T05-40-00.000.log.gz"
        ));
        assert!(is_access_log("tribist-access-2026-12-07T05-40-00.000.log"));
        assert!(!is_access_log("access.log"));
        assert!(!is_access_log("tribist-access.log.bak"));
        assert!(!is_access_log("admin-access-1.log"));
    }

    #[test]
    fn the_upstream_is_loopback() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(upstream(a("127.0.0.1:8383"), "x"), Ok(a("127.0.0.1:8383")));
        assert_eq!(upstream(a("[::1]:9000"), "x"), Ok(a("[::1]:9000")));
        assert_eq!(upstream(a("0.0.0.0:8383"), "x"), Ok(a("127.0.0.1:8383")));
        assert_eq!(upstream(a("[::]:8383"), "x"), Ok(a("[::1]:8383")));
        assert_eq!(
            upstream(a("169.254.169.254:80"), "--upstream").unwrap_err(),
            "--upstream is 169.254.169.254:80: the front reaches the service over loopback only; put the service on loopback: make install HOST=… LISTEN=127.0.0.1:80 DOMAIN=…"
        );
        assert!(upstream(a("10.0.0.5:8383"), "x").is_err());
    }

    #[test]
    fn reload_tries_the_socket_then_the_default() {
        assert_eq!(
            admin_addresses(),
            ["unix//var/lib/caddy/admin.sock", "localhost:2019"]
        );
        assert!(admin_unreachable(
            "Error: sending configuration to instance: performing request: Post \"http://%20/load\": dial unix /var/lib/caddy/admin.sock: connect: no such file or directory"
        ));
        assert!(admin_unreachable(
            "Error: sending configuration to instance: performing request: Post \"http://localhost:2019/load\": dial tcp [::1]:2019: connect: connection refused"
        ));
        assert!(!admin_unreachable(
            "Error: sending configuration to instance: caddy responded with error: HTTP 400: {\"error\":\"loading config: ...\"}"
        ));
    }

    #[test]
    fn other_sites_are_what_remains_without_tribists_lines() {
        let present = |t: &str, d| Caddyfile::Present {
            bytes: t.as_bytes().to_vec(),
            debian_default: d,
        };
        assert!(!serves_others(&Caddyfile::Missing));
        assert!(!serves_others(&present(
            ":80 {\n\troot * /usr/share/caddy\n}\n",
            true
        )));
        assert!(!serves_others(&present(&front::main_caddyfile(), false)));
        let admin = front::with_front(":8081 {\n\trespond ok\n}\n").unwrap();
        assert!(serves_others(&present(&admin, false)));
        assert!(serves_others(&present(":8081 {\n}\n", false)));
        assert!(serves_others(&Caddyfile::Present {
            bytes: vec![0xff, b'x'],
            debian_default: false
        }));
    }

    #[test]
    fn the_running_caddy_has_the_hardening_or_not() {
        let limits = |soft: &str| {
            format!(
                "Limit                     Soft Limit           Hard Limit           Units     \n\
                 Max processes             63704                63704                processes \n\
                 Max open files            {soft}                524288               files     \n"
            )
        };
        assert!(limits_applied(&limits("16384"), HARDENING));
        assert!(!limits_applied(&limits("1024"), HARDENING));
        assert!(!limits_applied("", HARDENING));
        assert!(limits_applied("", "[Service]\nUMask=0077\n"));
    }

    #[test]
    fn cgroup_names_the_unit() {
        assert_eq!(
            cgroup_unit("0::/system.slice/nginx.service\n").as_deref(),
            Some("nginx.service")
        );
        assert_eq!(
            cgroup_unit("0::/user.slice/user-0.slice/session-3.scope\n"),
            None
        );
        assert_eq!(
            cgroup_unit("0::/system.slice/system-getty.slice/getty@tty1.service\n").as_deref(),
            Some("getty@tty1.service")
        );
    }

    #[test]
    fn answers_and_certificates_as_curl_says() {
        assert_eq!(answer(35, 0), Answer::NoTls(35));
        assert_eq!(answer(0, 502), Answer::NoUpstream(502));
        assert_eq!(answer(0, 200), Answer::Service(200));
        assert_eq!(answer(22, 503), Answer::Service(503));
        let v = "*   Trying 127.0.0.1:443...\n* Server certificate:\n*  subject: [NONE]\n*  start date: Dec 10 02:33:19 2026 GMT\n*  expire date: Dec 17 02:33:19 2026 GMT\n*  subjectAltName: host \"api.example.test\" matched cert's \"api.example.test\"\n*  issuer: CN=Pebble Intermediate CA 2d7bd4\n*  SSL certificate verify result: unable to get local issuer certificate (20), continuing anyway.\n";
        let s = served(v, "200 2");
        assert_eq!(
            s.issuer.as_deref(),
            Some("CN=Pebble Intermediate CA 2d7bd4")
        );
        assert_eq!(s.expires.as_deref(), Some("Dec 17 02:33:19 2026 GMT"));
        assert_eq!(s.http_code, 200);
        assert_eq!(s.http_version, "2");
        let hostile = served("*  issuer: CN=\x1b]0;x\x07evil\n", "000 0");
        assert_eq!(hostile.issuer.as_deref(), Some("CN=]0;xevil"));
        assert_eq!(hostile.http_code, 0);
    }

    #[test]
    fn exposure_from_systemd_analyze() {
        let out = "  NAME  DESCRIPTION  EXPOSURE\n\u{2192} Overall exposure level for caddy.service: 1.5 OK :-)\n";
        assert_eq!(exposure(out).as_deref(), Some("1.5 OK"));
        assert_eq!(
            exposure("-> Overall exposure level for caddy.service: 9.6 UNSAFE :-(\n").as_deref(),
            Some("9.6 UNSAFE")
        );
        assert_eq!(exposure("nothing\n"), None);
    }

    #[test]
    fn validate_failures_name_their_fix() {
        let dup = "{\"level\":\"info\",\"msg\":\"using provided configuration\"}\nError: adapting config using caddyfile: cannot have 'servers' global options with duplicate listener addresses: :443\n";
        assert_eq!(
            validate_error(dup),
            "Error: adapting config using caddyfile: cannot have 'servers' global options with duplicate listener addresses: :443"
        );
        assert!(validate_fix(dup).contains("remove yours"));
        let other = "Error: loading initial config: loading new config: loading http app module: provision http: getting tls app: loading tls app module: provision tls: loading certificates: open /etc/caddy/tribist/cert.pem: permission denied\n";
        assert!(validate_fix(other).contains("the previous files are back"));
        assert!(validate_error(other).contains("permission denied"));
        assert!(validate_error(&"x\n".repeat(10_000)).len() <= 600);
    }
}
