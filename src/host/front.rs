//! The HTTPS front door as data: tribist's site in Caddy, rendered as Caddyfile text.
//!
//! Why it exists: tiny_http has no request-header or idle timeout and costs a thread per open
//! connection (docs/limits.md), so anything exposed beyond loopback goes through a reverse
//! proxy built for it. Caddy (Debian's `caddy` package) terminates TLS with certificates it
//! obtains and renews itself, and enforces the edge limits below; docs/front-door.md says why
//! Caddy, every limit's value and how each was measured.
//!
//! Kamal-style, the configuration is a value rendered to text and tested as a string: every
//! value that reaches the Caddyfile (a domain, an e-mail address, a URL, a path) is checked
//! here against a character set that cannot carry Caddyfile syntax — no spaces, quotes,
//! braces (and so no `{env.X}` or `{$X}` placeholders), `#` comments or newlines — so a
//! hostile value is refused with a message, never written.
//!
//! The layout on a host, which leaves every other site of an existing Caddy alone:
//! - `/etc/caddy/tribist/site.caddy` ([`Front::site`]): tribist's site block, including its
//!   own certificate issuer (`tls`), so other sites keep theirs.
//! - `/etc/caddy/tribist/servers.caddy` ([`EdgeLimits::servers`]): the `servers :443` global
//!   option (header timeout, idle timeout, header size). Caddy has one HTTP server per
//!   listener, so these apply to every site on :443; they are imported inside the global
//!   options block, where Caddy allows them.
//! - `/etc/caddy/Caddyfile` gets two marked `import` lines ([`with_front`]), removed again by
//!   [`without_front`]; a Caddyfile that is still Debian's default is replaced by
//!   [`main_caddyfile`] instead (the caller knows, from dpkg's checksum of the conffile).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use super::text::clean;

/// Where tribist's files live on a host.
pub const DIR: &str = "/etc/caddy/tribist";
pub const SITE_FILE: &str = "/etc/caddy/tribist/site.caddy";
pub const SERVERS_FILE: &str = "/etc/caddy/tribist/servers.caddy";
pub const ACCESS_LOG: &str = "/var/log/caddy/tribist-access.log";
/// Ends every line tribist adds to a Caddyfile that is not its own.
pub const MARKER: &str = "# tribist-front";

/// A value refused before anything is written: what was wrong, and the command that fixes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontError {
    pub what: String,
    pub fix: String,
}

impl fmt::Display for FrontError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; {}", self.what, self.fix)
    }
}

impl std::error::Error for FrontError {}

fn refuse(var: &str, value: &str, why: impl fmt::Display, fix: &str) -> FrontError {
    FrontError {
        what: format!("{var}={:?} is refused: {why}", clean(value.as_bytes(), 80)),
        fix: format!("run: make install HOST=... {var}={fix}"),
    }
}

/// The first character of `s` that `ok` rejects, named for a person.
fn first_bad(s: &str, ok: impl Fn(char) -> bool) -> Option<String> {
    s.chars().find(|c| !ok(*c)).map(|c| match c {
        ' ' => "a space".to_string(),
        '\n' => "a newline".to_string(),
        '\r' => "a carriage return".to_string(),
        '\t' => "a tab".to_string(),
        '{' | '}' => format!("'{c}' (Caddyfile blocks and placeholders such as {{env.X}})"),
        c if c.is_ascii_graphic() => format!("'{c}'"),
        c if c.is_ascii() => format!("the control character 0x{:02x}", c as u32),
        _ => "a character outside ASCII".to_string(),
    })
}

/// A public DNS name for the site: lowercase letters, digits and `-` in labels of 1 to 63,
/// joined by dots, at least two labels, 253 characters at most. No wildcard (it would need
/// the DNS challenge), no IP address, no trailing dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain(String);

impl Domain {
    pub fn parse(s: &str) -> Result<Self, FrontError> {
        check_domain("DOMAIN", s, "api.example.com")?;
        Ok(Domain(s.to_ascii_lowercase()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn check_domain(var: &str, s: &str, fix: &str) -> Result<(), FrontError> {
    let bad = |why: String| Err(refuse(var, s, why, fix));
    if s.is_empty() {
        return bad("it is empty".into());
    }
    if let Some(c) = first_bad(s, |c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
        return bad(format!(
            "it has {c} (a host name has letters, digits, '-' and '.' only)"
        ));
    }
    if s.len() > 253 {
        return bad(format!("it is {} characters long (253 at most)", s.len()));
    }
    let labels: Vec<&str> = s.split('.').collect();
    if labels.len() < 2 {
        return bad("a public name has at least two labels (a certificate authority will not issue one for a bare host name)".into());
    }
    for label in &labels {
        if label.is_empty() {
            return bad("it has an empty label (two dots in a row, or a dot at an end)".into());
        }
        if label.len() > 63 {
            return bad(format!(
                "a label is {} characters long (63 at most)",
                label.len()
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad(format!("the label {label:?} starts or ends with '-'"));
        }
    }
    if labels
        .last()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return bad("it is an IP address, not a name (certificates are issued for names)".into());
    }
    Ok(())
}

/// The ACME account's e-mail address: `local@domain`, with letters, digits and `. _ % + -`
/// in the local part and a [`Domain`]-shaped domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(s: &str) -> Result<Self, FrontError> {
        const FIX: &str = "ops@example.com";
        let bad = |why: String| Err(refuse("ACME_EMAIL", s, why, FIX));
        if let Some(c) = first_bad(s, |c| {
            c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '%' | '+' | '-' | '@')
        }) {
            return bad(format!("it has {c} (letters, digits and . _ % + - @ only)"));
        }
        let Some((local, domain)) = s.split_once('@') else {
            return bad("it has no '@'".into());
        };
        if local.is_empty() || local.len() > 64 {
            return bad("the part before '@' must have 1 to 64 characters".into());
        }
        check_domain("ACME_EMAIL", domain, FIX)?;
        Ok(Email(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An ACME directory URL: `https://`, a host (with an optional port) and a path, in
/// characters that need no quoting in a Caddyfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaUrl(String);

impl CaUrl {
    pub fn parse(s: &str) -> Result<Self, FrontError> {
        const FIX: &str = "https://ca.example.com/acme/directory";
        let bad = |why: String| Err(refuse("ACME_CA", s, why, FIX));
        let Some(rest) = s.strip_prefix("https://") else {
            return bad("an ACME directory is reached over https:// only".into());
        };
        if let Some(c) = first_bad(rest, |c| {
            c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '~' | ':' | '/' | '%')
        }) {
            return bad(format!(
                "it has {c} (a URL here has letters, digits and . - _ ~ : / % only)"
            ));
        }
        let host = rest.split('/').next().unwrap_or("");
        if host.is_empty() || host.starts_with(':') {
            return bad("it has no host".into());
        }
        if s.len() > 2048 {
            return bad(format!("it is {} characters long (2048 at most)", s.len()));
        }
        Ok(CaUrl(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An absolute path on the host, in characters that need no quoting in a Caddyfile, with no
/// `.` or `..` component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPath(PathBuf);

impl HostPath {
    /// `var` names the setting in the message (`CERT_FILE`, `ACME_CA_ROOT`, …).
    pub fn parse(var: &str, s: &str) -> Result<Self, FrontError> {
        const FIX: &str = "/etc/caddy/tribist/file.pem";
        let bad = |why: String| Err(refuse(var, s, why, FIX));
        if !s.starts_with('/') {
            return bad("the path on the host must be absolute".into());
        }
        if let Some(c) = first_bad(s, |c| {
            c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+' | '@')
        }) {
            return bad(format!(
                "it has {c} (a path here has letters, digits and / . _ - + @ only)"
            ));
        }
        if s.len() > 1024 {
            return bad(format!("it is {} characters long (1024 at most)", s.len()));
        }
        let p = Path::new(s);
        if s.ends_with('/')
            || s.contains("//")
            || p.components()
                .any(|c| matches!(c, Component::CurDir | Component::ParentDir))
            || s.split('/').any(|c| c == "." || c == "..")
        {
            return bad(
                "it must name a file plainly: no '.' or '..' component, no '//', no trailing '/'"
                    .into(),
            );
        }
        Ok(HostPath(p.to_path_buf()))
    }
    pub fn as_path(&self) -> &Path {
        &self.0
    }
    fn text(&self) -> &str {
        // Checked ASCII at parse.
        self.0.to_str().unwrap_or_default()
    }
}

/// How the site gets its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Certificates {
    /// Obtained and renewed by Caddy from an ACME CA: Let's Encrypt (with ZeroSSL as Caddy's
    /// fallback) unless `ca` names another; `ca_root` is the PEM file of the root that CA's
    /// own HTTPS certificate chains to (a private CA, pebble in the tests).
    Acme(Acme),
    /// A certificate and key the team already has, installed on the host.
    OwnCert { cert: HostPath, key: HostPath },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acme {
    pub email: Email,
    pub ca: Option<CaUrl>,
    pub ca_root: Option<HostPath>,
}

/// What the front enforces so that clients cannot reach the service's own limits. Values and
/// reasons: docs/front-door.md ("Edge limits"); each is measured there against Caddy 2.6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeLimits {
    /// The whole request header (and, on a new connection, the TLS handshake) must arrive
    /// within this (`servers { timeouts { read_header } }`): a slowloris client is cut.
    pub read_header: Duration,
    /// A keep-alive client connection with no request in flight is closed after this
    /// (`servers { timeouts { idle } }`).
    pub idle: Duration,
    /// The largest request header section (`servers { max_header_size }`): 431 over HTTP/1.1.
    pub max_header_bytes: u32,
    /// The largest request body (`request_body { max_size }`, this site only).
    pub max_body_bytes: u64,
    /// At most this many connections to the service (`transport http { max_conns_per_host }`),
    /// all kept alive between requests; further requests wait at the front for one.
    pub upstream_conns: u16,
    /// An idle connection to the service is closed by the front after this, before the
    /// service's own `TRIBIST_IDLE_TIMEOUT` (75 s) would close it under a request.
    pub upstream_idle: Duration,
}

impl Default for EdgeLimits {
    fn default() -> Self {
        EdgeLimits {
            read_header: Duration::from_secs(10),
            idle: Duration::from_secs(120),
            max_header_bytes: 16 * 1024,
            max_body_bytes: 1024 * 1024,
            upstream_conns: 16,
            upstream_idle: Duration::from_secs(60),
        }
    }
}

/// The service's idle timeout by default (`TRIBIST_IDLE_TIMEOUT`, docs/server.md).
const SERVICE_IDLE_DEFAULT: Duration = Duration::from_secs(75);

impl EdgeLimits {
    /// Refuses values Caddy would take but that defeat their purpose.
    pub fn check(&self) -> Result<(), FrontError> {
        let bad = |what: String| {
            Err(FrontError {
                what,
                fix: "use the defaults: EdgeLimits::default() (docs/front-door.md)".into(),
            })
        };
        for (name, d) in [
            ("read_header", self.read_header),
            ("idle", self.idle),
            ("upstream_idle", self.upstream_idle),
        ] {
            if d.as_secs() == 0 || d.subsec_nanos() != 0 || d.as_secs() > 3600 {
                return bad(format!(
                    "edge limit {name} is {d:?}: whole seconds from 1 to 3600 only"
                ));
            }
        }
        if self.upstream_idle >= SERVICE_IDLE_DEFAULT {
            return bad(format!(
                "edge limit upstream_idle is {:?}: it must be below the service's idle timeout ({:?}), or the front may send a request on a connection the service is closing",
                self.upstream_idle, SERVICE_IDLE_DEFAULT
            ));
        }
        if !(1024..=1024 * 1024).contains(&self.max_header_bytes) {
            return bad(format!(
                "edge limit max_header_bytes is {}: 1 KiB to 1 MiB only",
                self.max_header_bytes
            ));
        }
        if self.max_body_bytes == 0 || self.max_body_bytes > 1 << 30 {
            return bad(format!(
                "edge limit max_body_bytes is {}: 1 byte to 1 GiB only",
                self.max_body_bytes
            ));
        }
        if self.upstream_conns == 0 || self.upstream_conns > 512 {
            return bad(format!(
                "edge limit upstream_conns is {}: 1 to 512 only (the service's TasksMax is 1024)",
                self.upstream_conns
            ));
        }
        Ok(())
    }

    /// The `servers :443` global option (HTTP/1.1 and HTTP/2 only: HTTP/3 would open UDP 443,
    /// and a QUIC stack, measured nowhere here), to be imported inside the Caddyfile's global
    /// options block (its own file: [`SERVERS_FILE`]); with it, Caddy's admin endpoint on
    /// [`ADMIN_SOCKET`].
    pub fn servers(&self) -> Result<String, FrontError> {
        self.check()?;
        Ok(format!(
            "# Written by tribist's make install: edge limits of Caddy's :443 server, shared by\n\
             # every site on that port (docs/front-door.md). Imported in /etc/caddy/Caddyfile's\n\
             # global options block.\n\
             # Caddy's admin endpoint on a unix socket only caddy and root may use: the default,\n\
             # localhost:2019, takes a whole new configuration from any local user.\n\
             admin unix/{ADMIN_SOCKET}\n\
             servers :443 {{\n\
             \tprotocols h1 h2\n\
             \ttimeouts {{\n\
             \t\tread_header {}\n\
             \t\tidle {}\n\
             \t}}\n\
             \tmax_header_size {}\n\
             }}\n",
            secs(self.read_header),
            secs(self.idle),
            size(u64::from(self.max_header_bytes)),
        ))
    }
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

/// A byte count as Caddy reads it: `KiB`/`MiB` are powers of 1024 (`KB` would be 1000).
fn size(n: u64) -> String {
    if n.is_multiple_of(1024 * 1024) {
        format!("{}MiB", n / (1024 * 1024))
    } else if n.is_multiple_of(1024) {
        format!("{}KiB", n / 1024)
    } else {
        n.to_string()
    }
}

/// tribist's site in Caddy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Front {
    pub domain: Domain,
    pub certificates: Certificates,
    /// The service's socket address (`tribist.socket`'s); an unspecified address (0.0.0.0,
    /// [::]) is reached on the loopback address of its family.
    pub upstream: SocketAddr,
    pub limits: EdgeLimits,
}

impl Front {
    /// The address the front dials.
    pub fn upstream_dial(&self) -> SocketAddr {
        let ip = match self.upstream.ip() {
            IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        SocketAddr::new(ip, self.upstream.port())
    }

    /// The site block ([`SITE_FILE`]).
    pub fn site(&self) -> Result<String, FrontError> {
        self.limits.check()?;
        if self.upstream.port() == 0 {
            return Err(FrontError {
                what: "the service's address has port 0".into(),
                fix: "run: make install HOST=... LISTEN=127.0.0.1:8383".into(),
            });
        }
        let l = &self.limits;
        let tls = match &self.certificates {
            Certificates::Acme(Acme { email, ca, ca_root }) => {
                // Always one CA, named: without `ca`, Caddy 2.6 also registers the e-mail
                // with ZeroSSL and falls back to it, a second company the team never chose.
                let mut block = format!(
                    "\t\tca {}\n",
                    ca.as_ref().map_or(LETS_ENCRYPT, |c| c.as_str())
                );
                if let Some(root) = ca_root {
                    block.push_str(&format!("\t\tca_root {}\n", root.text()));
                }
                format!("\ttls {} {{\n{block}\t}}\n", email.as_str())
            }
            Certificates::OwnCert { cert, key } => {
                format!("\ttls {} {}\n", cert.text(), key.text())
            }
        };
        Ok(format!(
            "# Written by tribist's make install: tribist's site (docs/front-door.md). Removed by\n\
             # make uninstall; any other site of this Caddy is left alone.\n\
             {domain} {{\n\
             {tls}\
             \tlog {{\n\
             \t\toutput file {ACCESS_LOG} {{\n\
             \t\t\troll_size 10MiB\n\
             \t\t\troll_keep 5\n\
             \t\t}}\n\
             \t}}\n\
             \trequest_body {{\n\
             \t\tmax_size {body}\n\
             \t}}\n\
             \treverse_proxy {upstream} {{\n\
             \t\ttransport http {{\n\
             \t\t\tmax_conns_per_host {conns}\n\
             \t\t\tkeepalive {keepalive}\n\
             \t\t\tkeepalive_idle_conns {conns}\n\
             \t\t\tkeepalive_idle_conns_per_host {conns}\n\
             \t\t}}\n\
             \t}}\n\
             }}\n",
            domain = self.domain.as_str(),
            body = size(l.max_body_bytes),
            upstream = self.upstream_dial(),
            conns = l.upstream_conns,
            keepalive = secs(l.upstream_idle),
        ))
    }
}

/// A [`Front`] from `KEY=VALUE` words, as `make install` passes them to `tribist-host
/// front-render`: `DOMAIN`, `UPSTREAM` (the service's socket address), and either
/// `ACME_EMAIL` (with optional `ACME_CA`, `ACME_CA_ROOT`) or `CERT_FILE` and `KEY_FILE`.
/// The limits are [`EdgeLimits::default`].
pub fn from_settings(words: &[String]) -> Result<Front, FrontError> {
    let mut get = std::collections::BTreeMap::new();
    for w in words {
        let Some((k, v)) = w.split_once('=') else {
            return Err(FrontError {
                what: format!("{:?} is not KEY=VALUE", clean(w.as_bytes(), 80)),
                fix: "run: tribist-host help".into(),
            });
        };
        const KNOWN: [&str; 7] = [
            "DOMAIN",
            "UPSTREAM",
            "ACME_EMAIL",
            "ACME_CA",
            "ACME_CA_ROOT",
            "CERT_FILE",
            "KEY_FILE",
        ];
        if !KNOWN.contains(&k) {
            return Err(FrontError {
                what: format!("unknown setting {:?}", clean(k.as_bytes(), 40)),
                fix: format!("use one of {}", KNOWN.join(", ")),
            });
        }
        if get.insert(k, v).is_some() {
            return Err(FrontError {
                what: format!("{k} is given twice"),
                fix: format!("give {k}= once"),
            });
        }
    }
    let missing = |k: &str, example: &str| FrontError {
        what: format!("{k} is missing"),
        fix: format!("run: make install HOST=... {k}={example}"),
    };
    let domain = Domain::parse(
        get.get("DOMAIN")
            .ok_or_else(|| missing("DOMAIN", "api.example.com"))?,
    )?;
    let up = get
        .get("UPSTREAM")
        .ok_or_else(|| missing("UPSTREAM", "127.0.0.1:8383"))?;
    let upstream: SocketAddr = up.parse().map_err(|_| FrontError {
        what: format!(
            "UPSTREAM={:?} is not an IP address and port",
            clean(up.as_bytes(), 80)
        ),
        fix: "run: make install HOST=... LISTEN=127.0.0.1:8383".into(),
    })?;
    let own = (get.get("CERT_FILE"), get.get("KEY_FILE"));
    let acme = get.get("ACME_EMAIL");
    let certificates = match (acme, own) {
        (Some(_), (Some(_), _) | (_, Some(_))) => {
            return Err(FrontError {
                what: "ACME_EMAIL and CERT_FILE/KEY_FILE are given together".into(),
                fix: "give ACME_EMAIL= for certificates from a CA, or CERT_FILE= and KEY_FILE= for your own, not both".into(),
            })
        }
        (None, (Some(c), Some(k))) => Certificates::OwnCert {
            cert: HostPath::parse("CERT_FILE", c)?,
            key: HostPath::parse("KEY_FILE", k)?,
        },
        (None, (Some(_), None)) => return Err(missing("KEY_FILE", "~/certs/api.key")),
        (None, (None, Some(_))) => return Err(missing("CERT_FILE", "~/certs/api.pem")),
        (Some(email), (None, None)) => Certificates::Acme(Acme {
            email: Email::parse(email)?,
            ca: get.get("ACME_CA").map(|v| CaUrl::parse(v)).transpose()?,
            ca_root: get
                .get("ACME_CA_ROOT")
                .map(|v| HostPath::parse("ACME_CA_ROOT", v))
                .transpose()?,
        }),
        (None, (None, None)) => return Err(missing("ACME_EMAIL", "ops@example.com")),
    };
    if !matches!(certificates, Certificates::Acme(_))
        && (get.contains_key("ACME_CA") || get.contains_key("ACME_CA_ROOT"))
    {
        return Err(FrontError {
            what: "ACME_CA/ACME_CA_ROOT are given without ACME_EMAIL".into(),
            fix: "give ACME_EMAIL= with them, or drop them".into(),
        });
    }
    Ok(Front {
        domain,
        certificates,
        upstream,
        limits: EdgeLimits::default(),
    })
}

/// The whole `/etc/caddy/Caddyfile` when tribist owns it (it was still Debian's default).
pub fn main_caddyfile() -> String {
    format!(
        "{}\n{}\n\
         {{\n\
         \timport {SERVERS_FILE} {MARKER}\n\
         }}\n\
         \n\
         import {SITE_FILE} {MARKER}\n",
        MAIN_HEADER[0], MAIN_HEADER[1]
    )
}

/// The ACME directory used when `ACME_CA` is not given: Let's Encrypt's production CA.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// Where Caddy's admin endpoint listens once tribist's options are imported: in caddy's
/// home (`/var/lib/caddy`, caddy's, and writable under the hardening's `ProtectSystem=`);
/// Caddy makes the socket with its umask, so only caddy (and root) may connect: connecting
/// to a unix socket needs write permission on it. Caddy replaces a stale one at its start.
pub const ADMIN_SOCKET: &str = "/var/lib/caddy/admin.sock";

/// The comment heading [`main_caddyfile`], removed with tribist's lines.
const MAIN_HEADER: [&str; 2] = [
    "# Written by tribist's make install, which replaced Debian's default welcome site.",
    "# Other sites may be added below; keep the two import lines (docs/front-door.md).",
];

fn significant(line: &str) -> bool {
    let t = line.trim();
    !t.is_empty() && !t.starts_with('#')
}

/// `existing` (someone's Caddyfile) with tribist's two import lines: the servers file inside
/// the global options block (made if there is none) and the site file at the end. Lines
/// tribist added before are replaced, so running it again changes nothing.
pub fn with_front(existing: &str) -> Result<String, FrontError> {
    let base = without_front(existing);
    let lines: Vec<&str> = base.lines().collect();
    let first = lines.iter().position(|l| significant(l));
    let servers_line = format!("\timport {SERVERS_FILE} {MARKER}");
    let mut out: Vec<String> = Vec::with_capacity(lines.len() + 5);
    match first {
        Some(i) if lines[i].trim() == "{" => {
            out.extend(lines[..=i].iter().map(|s| s.to_string()));
            out.push(servers_line);
            out.extend(lines[i + 1..].iter().map(|s| s.to_string()));
        }
        Some(i) if lines[i].trim_start().starts_with('{') => {
            return Err(FrontError {
                what: format!(
                    "/etc/caddy/Caddyfile's global options block does not open with '{{' alone on line {}, so tribist cannot add its line to it",
                    i + 1
                ),
                fix: "run: caddy fmt --overwrite /etc/caddy/Caddyfile, then make install again".into(),
            });
        }
        _ => {
            out.push("{".into());
            out.push(servers_line);
            out.push("}".into());
            out.extend(lines.iter().map(|s| s.to_string()));
        }
    }
    while out.last().is_some_and(|l| l.trim().is_empty()) {
        out.pop();
    }
    out.push(String::new());
    out.push(format!("import {SITE_FILE} {MARKER}"));
    Ok(out.join("\n") + "\n")
}

/// `existing` without what [`with_front`] added: the marked lines, and a global options block
/// left empty by their removal.
pub fn without_front(existing: &str) -> String {
    let kept: Vec<&str> = existing
        .lines()
        .filter(|l| !l.trim_end().ends_with(MARKER) && !MAIN_HEADER.contains(l))
        .collect();
    let sig: Vec<usize> = (0..kept.len()).filter(|&i| significant(kept[i])).collect();
    let mut drop = Vec::new();
    if let [a, b, ..] = sig[..] {
        if kept[a].trim() == "{" && kept[b].trim() == "}" {
            drop.extend([a, b]);
            if kept.get(b + 1).is_some_and(|l| l.trim().is_empty()) {
                drop.push(b + 1);
            }
        }
    }
    let mut out: Vec<&str> = (0..kept.len())
        .filter(|i| !drop.contains(i))
        .map(|i| kept[i])
        .collect();
    while out.last().is_some_and(|l| l.trim().is_empty()) {
        out.pop();
    }
    let lead = out.iter().take_while(|l| l.trim().is_empty()).count();
    out.drain(..lead);
    if out.is_empty() {
        String::new()
    } else {
        out.join("\n") + "\n"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn front(certificates: Certificates) -> Front {
        Front {
            domain: Domain::parse("api.example.test").unwrap(),
            certificates,
            upstream: "127.0.0.1:8383".parse().unwrap(),
            limits: EdgeLimits::default(),
        }
    }

    fn pebble() -> Certificates {
        Certificates::Acme(Acme {
            email: Email::parse("ops@example.test").unwrap(),
            ca: Some(CaUrl::parse("https://127.0.0.1:14000/dir").unwrap()),
            ca_root: Some(
                HostPath::parse("ACME_CA_ROOT", "/etc/caddy/tribist/ca-root.pem").unwrap(),
            ),
        })
    }

    #[test]
    fn site_with_a_private_acme_ca() {
        let site = front(pebble()).site().unwrap();
        let expected = "\
api.example.test {
\ttls ops@example.test {
\t\tca https://127.0.0.1:14000/dir
\t\tca_root /etc/caddy/tribist/ca-root.pem
\t}
\tlog {
\t\toutput file /var/log/caddy/tribist-access.log {
\t\t\troll_size 10MiB
\t\t\troll_keep 5
\t\t}
\t}
\trequest_body {
\t\tmax_size 1MiB
\t}
\treverse_proxy 127.0.0.1:8383 {
\t\ttransport http {
\t\t\tmax_conns_per_host 16
\t\t\tkeepalive 60s
\t\t\tkeepalive_idle_conns 16
\t\t\tkeepalive_idle_conns_per_host 16
\t\t}
\t}
}
";
        let body: String = site
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(body, expected);
        assert!(site.starts_with("# Written by tribist"));
    }

    #[test]
    fn site_with_the_public_ca_and_with_own_certificate() {
        let public = front(Certificates::Acme(Acme {
            email: Email::parse("ops@example.test").unwrap(),
            ca: None,
            ca_root: None,
        }))
        .site()
        .unwrap();
        assert!(
            public.contains(
                "\n\ttls ops@example.test {\n\t\tca https://acme-v02.api.letsencrypt.org/directory\n\t}\n"
            ),
            "Let's Encrypt alone, named (no ZeroSSL fallback): {public}"
        );
        assert!(!public.contains("ca_root"));

        let own = front(Certificates::OwnCert {
            cert: HostPath::parse("CERT_FILE", "/etc/caddy/tribist/cert.pem").unwrap(),
            key: HostPath::parse("KEY_FILE", "/etc/caddy/tribist/key.pem").unwrap(),
        })
        .site()
        .unwrap();
        assert!(
            own.contains("\n\ttls /etc/caddy/tribist/cert.pem /etc/caddy/tribist/key.pem\n"),
            "{own}"
        );
    }

    #[test]
    fn upstream_unspecified_is_reached_on_loopback() {
        let mut f = front(pebble());
        f.upstream = "0.0.0.0:9000".parse().unwrap();
        assert!(f.site().unwrap().contains("reverse_proxy 127.0.0.1:9000 {"));
        f.upstream = "[::]:9000".parse().unwrap();
        assert!(f.site().unwrap().contains("reverse_proxy [::1]:9000 {"));
        f.upstream = "[::1]:8383".parse().unwrap();
        assert!(f.site().unwrap().contains("reverse_proxy [::1]:8383 {"));
        f.upstream = "127.0.0.1:0".parse().unwrap();
        assert!(f.site().unwrap_err().fix.contains("LISTEN="));
    }

    #[test]
    fn servers_option() {
        let text = EdgeLimits::default().servers().unwrap();
        let body: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            body,
            [
                "admin unix//var/lib/caddy/admin.sock",
                "servers :443 {",
                "\tprotocols h1 h2",
                "\ttimeouts {",
                "\t\tread_header 10s",
                "\t\tidle 120s",
                "\t}",
                "\tmax_header_size 16KiB",
                "}"
            ]
        );
    }

    #[test]
    fn sizes_as_caddy_reads_them() {
        assert_eq!(size(16384), "16KiB");
        assert_eq!(size(1 << 20), "1MiB");
        assert_eq!(size(1500), "1500");
    }

    #[test]
    fn limits_that_defeat_their_purpose_are_refused() {
        let d = EdgeLimits::default();
        let cases = [
            EdgeLimits {
                read_header: Duration::ZERO,
                ..d
            },
            EdgeLimits {
                idle: Duration::from_millis(1500),
                ..d
            },
            EdgeLimits {
                upstream_idle: Duration::from_secs(75),
                ..d
            },
            EdgeLimits {
                max_header_bytes: 100,
                ..d
            },
            EdgeLimits {
                max_body_bytes: 0,
                ..d
            },
            EdgeLimits {
                upstream_conns: 0,
                ..d
            },
            EdgeLimits {
                upstream_conns: 2000,
                ..d
            },
        ];
        for l in cases {
            let e = l.servers().unwrap_err();
            assert!(e.what.starts_with("edge limit "), "{e}");
            let mut f = front(pebble());
            f.limits = l;
            assert!(f.site().is_err(), "{l:?}");
        }
        assert!(d.check().is_ok());
    }

    #[test]
    fn hostile_domains_are_refused() {
        for (value, why) in [
            ("api example.com", "a space"),
            ("api.example.com {\n\trespond pwned\n}\nx.com", "a space"),
            ("api.example.com{\n\trespond pwned\n}", "'{'"),
            ("api.example.com\nimport /etc/passwd", "a newline"),
            ("{env.HOME}.example.com", "{env.X}"),
            ("{$HOME}", "'{'"),
            ("api.example.com}", "'}'"),
            ("api.example.com#", "'#'"),
            ("*.example.com", "'*'"),
            ("api.example.com:443", "':'"),
            ("", "empty"),
            ("localhost", "two labels"),
            ("api..example.com", "empty label"),
            ("api.example.com.", "empty label"),
            ("-api.example.com", "starts or ends"),
            ("10.0.0.1", "IP address"),
            ("apí.example.com", "outside ASCII"),
            ("api.example.com\u{7}", "0x07"),
        ] {
            let e = Domain::parse(value).unwrap_err();
            let text = e.to_string();
            assert!(text.contains(why), "{value:?}: {text}");
            assert!(text.starts_with("DOMAIN="), "{text}");
            assert!(text.ends_with("run: make install HOST=... DOMAIN=api.example.com"));
            assert!(!text.contains('\n'), "{text}");
        }
        let long = format!("{}.com", "a".repeat(64));
        assert!(Domain::parse(&long)
            .unwrap_err()
            .what
            .contains("63 at most"));
        assert_eq!(
            Domain::parse("API.Example.COM").unwrap().as_str(),
            "api.example.com"
        );
        assert!(Domain::parse("xn--bcher-kva.example").is_ok());
    }

    #[test]
    fn hostile_emails_urls_and_paths_are_refused() {
        for (value, why) in [
            ("ops@example.com\n}", "a newline"),
            ("ops example@example.com", "a space"),
            ("{env.X}@example.com", "{env.X}"),
            ("ops\"@example.com", "'\"'"),
            ("ops.example.com", "no '@'"),
            ("@example.com", "1 to 64"),
            ("ops@localhost", "two labels"),
            ("ops@a@example.com", "'@'"),
        ] {
            let e = Email::parse(value).unwrap_err().to_string();
            assert!(e.contains(why), "{value:?}: {e}");
            assert!(e.starts_with("ACME_EMAIL="), "{e}");
        }
        assert!(Email::parse("ops+tribist@example.com").is_ok());

        for (value, why) in [
            ("http://ca.example/dir", "https:// only"),
            ("https://ca.example/dir {", "a space"),
            ("https://ca.example/{env.X}", "{env.X}"),
            ("https://ca.example/dir\nimport x", "a newline"),
            ("https:///dir", "no host"),
        ] {
            let e = CaUrl::parse(value).unwrap_err().to_string();
            assert!(e.contains(why), "{value:?}: {e}");
            assert!(e.starts_with("ACME_CA="), "{e}");
        }

        for (value, why) in [
            ("cert.pem", "absolute"),
            ("/etc/caddy/my cert.pem", "a space"),
            ("/etc/caddy/{env.X}", "{env.X}"),
            ("/etc/caddy/../shadow", "'..'"),
            ("/etc/caddy/./c.pem", "'.'"),
            ("/etc/caddy//c.pem", "'//'"),
            ("/etc/caddy/c.pem\n", "a newline"),
            ("/etc/caddy/", "trailing"),
        ] {
            let e = HostPath::parse("CERT_FILE", value).unwrap_err().to_string();
            assert!(e.contains(why), "{value:?}: {e}");
            assert!(e.starts_with("CERT_FILE="), "{e}");
        }
    }

    #[test]
    fn refused_values_are_printed_clean_and_bounded() {
        let hostile = format!("a\x1b[2J{}\n.com", "b".repeat(500));
        let e = Domain::parse(&hostile).unwrap_err();
        assert!(!e.what.contains('\x1b') && !e.what.contains('\n'));
        assert!(e.what.len() < 300, "{}", e.what);
    }

    fn words(ws: &[&str]) -> Vec<String> {
        ws.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn settings_make_a_front() {
        let f = from_settings(&words(&[
            "DOMAIN=api.example.test",
            "UPSTREAM=127.0.0.1:8383",
            "ACME_EMAIL=ops@example.test",
            "ACME_CA=https://127.0.0.1:14000/dir",
            "ACME_CA_ROOT=/etc/caddy/tribist/ca-root.pem",
        ]))
        .unwrap();
        assert_eq!(f, front(pebble()));
        let own = from_settings(&words(&[
            "DOMAIN=api.example.test",
            "UPSTREAM=127.0.0.1:8383",
            "CERT_FILE=/etc/caddy/tribist/cert.pem",
            "KEY_FILE=/etc/caddy/tribist/key.pem",
        ]))
        .unwrap();
        assert!(matches!(own.certificates, Certificates::OwnCert { .. }));
        for (ws, why) in [
            (
                &["DOMAIN=a.example", "UPSTREAM=127.0.0.1:1"][..],
                "ACME_EMAIL is missing",
            ),
            (
                &["UPSTREAM=127.0.0.1:1", "ACME_EMAIL=a@b.example"][..],
                "DOMAIN is missing",
            ),
            (
                &["DOMAIN=a.example", "ACME_EMAIL=a@b.example"][..],
                "UPSTREAM is missing",
            ),
            (
                &[
                    "DOMAIN=a.example",
                    "UPSTREAM=localhost:1",
                    "ACME_EMAIL=a@b.example",
                ][..],
                "not an IP address",
            ),
            (&["DOMAIN=a.example", "DOMAIN=b.example"][..], "twice"),
            (&["DOMAIN=a.example", "LISTEN=x"][..], "unknown setting"),
            (&["DOMAIN"][..], "not KEY=VALUE"),
            (
                &[
                    "DOMAIN=a.example",
                    "UPSTREAM=127.0.0.1:1",
                    "ACME_EMAIL=a@b.example",
                    "CERT_FILE=/c",
                ][..],
                "together",
            ),
            (
                &["DOMAIN=a.example", "UPSTREAM=127.0.0.1:1", "CERT_FILE=/c"][..],
                "KEY_FILE is missing",
            ),
            (
                &[
                    "DOMAIN=a.example",
                    "UPSTREAM=127.0.0.1:1",
                    "CERT_FILE=/c",
                    "KEY_FILE=/k",
                    "ACME_CA=https://x.example/d",
                ][..],
                "without ACME_EMAIL",
            ),
            (
                &[
                    "DOMAIN=a b.example",
                    "UPSTREAM=127.0.0.1:1",
                    "ACME_EMAIL=a@b.example",
                ][..],
                "a space",
            ),
        ] {
            let e = from_settings(&words(ws)).unwrap_err().to_string();
            assert!(e.contains(why), "{ws:?}: {e}");
        }
    }

    const ADMIN: &str = "\
# the admin's own
{
\temail admin@example.org
}

blog.example.org {
\troot * /srv/blog
\tfile_server
}
";

    #[test]
    fn added_beside_other_sites_and_removed_alone() {
        let with = with_front(ADMIN).unwrap();
        assert_eq!(
            with,
            format!(
                "# the admin's own\n{{\n\timport {SERVERS_FILE} {MARKER}\n\temail admin@example.org\n}}\n\nblog.example.org {{\n\troot * /srv/blog\n\tfile_server\n}}\n\nimport {SITE_FILE} {MARKER}\n"
            )
        );
        assert_eq!(with_front(&with).unwrap(), with, "idempotent");
        assert_eq!(without_front(&with), ADMIN);
    }

    #[test]
    fn a_global_block_is_made_and_removed_when_there_was_none() {
        let admin = ":8080 {\n\trespond hi\n}\n";
        let with = with_front(admin).unwrap();
        assert_eq!(
            with,
            format!("{{\n\timport {SERVERS_FILE} {MARKER}\n}}\n:8080 {{\n\trespond hi\n}}\n\nimport {SITE_FILE} {MARKER}\n")
        );
        assert_eq!(without_front(&with), admin);
        assert_eq!(without_front(&with_front("").unwrap()), "");
        assert_eq!(without_front(&main_caddyfile()), "");
        let admin_later = format!(
            "{}\nblog.example.org {{\n\trespond hi\n}}\n",
            main_caddyfile()
        );
        assert_eq!(
            without_front(&admin_later),
            "blog.example.org {\n\trespond hi\n}\n"
        );
    }

    #[test]
    fn an_unusual_global_block_is_refused() {
        let e = with_front("{ email a@b.example\n}\n").unwrap_err();
        assert!(e.what.contains("line 1"), "{e}");
        assert!(e.fix.contains("caddy fmt"), "{e}");
    }

    /// The rendered text as Caddy 2.6 itself reads it, when `caddy` is installed.
    #[test]
    fn caddy_accepts_the_rendered_files() {
        use std::process::Command;
        if Command::new("caddy").arg("version").output().is_err() {
            eprintln!("skipped: caddy is not installed (apt-get install caddy)");
            return;
        }
        let dir = std::env::temp_dir().join(format!("tribist-front-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let servers = dir.join("servers.caddy");
        let site = dir.join("site.caddy");
        std::fs::write(&servers, EdgeLimits::default().servers().unwrap()).unwrap();
        std::fs::write(&site, front(pebble()).site().unwrap()).unwrap();
        let main = with_front(ADMIN)
            .unwrap()
            .replace(SERVERS_FILE, servers.to_str().unwrap())
            .replace(SITE_FILE, site.to_str().unwrap());
        let caddyfile = dir.join("Caddyfile");
        std::fs::write(&caddyfile, main).unwrap();
        let out = Command::new("caddy")
            .args(["adapt", "--adapter", "caddyfile", "--config"])
            .arg(&caddyfile)
            .output()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let json = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for expected in [
            "\"read_header_timeout\":10000000000",
            "\"idle_timeout\":120000000000",
            "\"max_header_bytes\":16384",
            "\"protocols\":[\"h1\",\"h2\"]",
            "\"max_size\":1048576",
            "\"max_conns_per_host\":16",
            "\"dial\":\"127.0.0.1:8383\"",
            "\"ca\":\"https://127.0.0.1:14000/dir\"",
            "\"blog.example.org\"",
        ] {
            assert!(json.contains(expected), "{expected} not in {json}");
        }
    }
}
