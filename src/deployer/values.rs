//! Every value the deployer gives (make's variables, through the environment), checked
//! before anything is sent: a value that cannot be carried literally is refused with exit 2
//! and a message naming it and what it should be.
//!
//! Why a module of its own: these are the kit's promises to the person typing ("a value is
//! data, never code"; "refused: nothing was sent"), and each is a pure function of the text,
//! tested here without ssh.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;

use super::words::shown;

/// A refusal: the message (without the program's name) for exit 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

pub type Checked<T> = Result<T, Refused>;

fn refuse<T>(msg: impl Into<String>) -> Checked<T> {
    Err(Refused(msg.into()))
}

/// The variables the kit reads, taken once (from the process's environment, or a map in
/// tests). An empty value is the same as an unset one, as in the shell.
#[derive(Clone, Debug, Default)]
pub struct Env {
    vars: HashMap<String, OsString>,
}

impl Env {
    pub fn from_process() -> Env {
        Env {
            vars: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v)))
                .collect(),
        }
    }

    pub fn from_pairs(pairs: &[(&str, &str)]) -> Env {
        Env {
            vars: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), OsString::from(v)))
                .collect(),
        }
    }

    /// The text of `name` (None when unset or empty); refused when it is not UTF-8.
    pub fn text(&self, name: &str) -> Checked<Option<String>> {
        match self.vars.get(name) {
            None => Ok(None),
            Some(v) if v.is_empty() => Ok(None),
            Some(v) => match v.to_str() {
                Some(s) => Ok(Some(s.to_string())),
                None => refuse(format!(
                    "{name} is not UTF-8 text: {}",
                    shown(&v.to_string_lossy())
                )),
            },
        }
    }

    /// `name` as a path (any bytes), None when unset or empty.
    pub fn path(&self, name: &str) -> Option<PathBuf> {
        self.vars
            .get(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    }

    /// Whether `name` is set to a non-empty value.
    pub fn is_set(&self, name: &str) -> bool {
        self.vars.get(name).is_some_and(|v| !v.is_empty())
    }
}

fn has_control(s: &str) -> bool {
    s.bytes().any(|b| b < 0x20 || b == 0x7f)
}

fn all_in(s: &str, ok: impl Fn(u8) -> bool) -> bool {
    s.bytes().all(ok)
}

/// A whole number of `1..=max_digits` digits without a leading zero.
fn whole(s: &str, max_digits: usize) -> bool {
    !s.is_empty()
        && s.len() <= max_digits
        && all_in(s, |b| b.is_ascii_digit())
        && !s.starts_with('0')
}

/// An ssh destination, `[user@]host`: letters, digits and `. _ - @ : [ ] %`, not starting
/// with `-` (ssh would read it as an option). `name` is the variable (or file line) it came
/// from; `command` the target, for the example.
pub fn check_host(name: &str, host: &str, command: &str) -> Checked<()> {
    if host.is_empty() {
        return refuse(format!(
            "set {name}, the ssh destination: make {command} {name}=root@app1"
        ));
    }
    let ok = all_in(host, |b| {
        b.is_ascii_alphanumeric() || b"_.@:%[]-".contains(&b)
    });
    if !ok || host.starts_with('-') {
        return refuse(format!(
            "{name}={} is not an ssh destination ([user@]host: letters, digits and . _ - @ : [ ] % only)",
            shown(host)
        ));
    }
    Ok(())
}

/// ssh's options that take an argument (the next word, when given as a word of their own).
const SSH_ARG_OPTS: &str = "BbcDEeFIiJLlmOoPpQRSWw";

/// SSH_OPTS as words, split as xargs does (blanks separate, `'` and `"` group, `\` escapes
/// outside quotes) with nothing expanded and nothing run; a leading `~/` is `home`. Every
/// word must be an option or the argument of the option before it, so that no stray word
/// can become the destination or the remote command.
pub fn ssh_opts(opts: &str, home: &str) -> Checked<Vec<String>> {
    if opts.is_empty() {
        return Ok(Vec::new());
    }
    if has_control(opts) {
        return refuse(format!(
            "SSH_OPTS holds a newline or control character: {}",
            shown(opts)
        ));
    }
    let Some(words) = split_like_xargs(opts) else {
        return refuse(format!(
            "SSH_OPTS={} does not split into words (an unmatched quote?)",
            shown(opts)
        ));
    };
    let mut out = Vec::with_capacity(words.len());
    let mut expect_arg = false;
    for word in words {
        if expect_arg {
            expect_arg = false;
        } else if word.len() >= 2 && word.starts_with('-') {
            // -i KEY takes the next word; -iKEY and flags such as -4 or -vv do not.
            let b = word.as_bytes();
            expect_arg = b.len() == 2 && SSH_ARG_OPTS.as_bytes().contains(&b[1]);
        } else {
            return refuse(format!(
                "SSH_OPTS={}: {} is neither an option nor an option's argument",
                shown(opts),
                shown(&word)
            ));
        }
        match word.strip_prefix("~/") {
            Some(rest) => out.push(format!("{home}/{rest}")),
            None => out.push(word),
        }
    }
    if expect_arg {
        return refuse(format!(
            "SSH_OPTS={} ends with an option that needs an argument",
            shown(opts)
        ));
    }
    Ok(out)
}

/// xargs's word splitting (GNU, without -0 or -d); None for an unmatched quote.
fn split_like_xargs(s: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\\' => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
                in_word = true;
            }
            '\'' | '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        None => return None,
                        Some(q) if q == c => break,
                        Some(other) => word.push(other),
                    }
                }
            }
            other => {
                word.push(other);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Some(words)
}

/// deploy.sh's `--preflight SECONDS` and `--keep N` from PREFLIGHT and KEEP.
pub fn preflight_args(preflight: Option<&str>, keep: Option<&str>) -> Checked<Vec<String>> {
    let mut args = Vec::new();
    if let Some(p) = preflight {
        if !(p == "0" || whole(p, 3)) {
            return refuse(format!(
                "PREFLIGHT must be a whole number of seconds from 0 (skip) to 999, got {}",
                shown(p)
            ));
        }
        args.extend(["--preflight".to_string(), p.to_string()]);
    }
    if let Some(k) = keep {
        if !whole(k, 2) {
            return refuse(format!(
                "KEEP must be a number of releases from 1 to 99, got {}",
                shown(k)
            ));
        }
        args.extend(["--keep".to_string(), k.to_string()]);
    }
    Ok(args)
}

/// Who deploys, for the lock and the audit: DEPLOYER, else `fallback` (user@machine);
/// printable text of at most 100 bytes.
pub fn deployer(given: Option<&str>, fallback: &str) -> Checked<String> {
    let d = given.unwrap_or(fallback);
    if has_control(d) || d.len() > 100 {
        return refuse(format!(
            "DEPLOYER must be printable text of at most 100 characters (no newline): {}",
            shown(d)
        ));
    }
    Ok(d.to_string())
}

/// LISTEN (install, check): IPv4:PORT or [IPv6]:PORT.
pub fn listen(given: Option<&str>) -> Checked<Option<String>> {
    match given {
        None => Ok(None),
        Some(l) if crate::host::deploy::health::valid_listen(l) => Ok(Some(l.to_string())),
        Some(l) => refuse(format!(
            "LISTEN={} is not an address such as 127.0.0.1:8383, 0.0.0.0:80 or [::1]:8383",
            shown(l)
        )),
    }
}

/// LINES (logs, audit): 1 to 999999, `default` when unset.
pub fn lines(given: Option<&str>, default: &str) -> Checked<String> {
    let l = given.unwrap_or(default);
    if !whole(l, 6) {
        return refuse(format!(
            "LINES must be a whole number from 1 to 999999, got {}",
            shown(l)
        ));
    }
    Ok(l.to_string())
}

/// SINCE (logs): a time for journalctl, of letters, digits, spaces and `: . + -`.
pub fn since(given: Option<&str>) -> Checked<Option<String>> {
    let Some(s) = given else { return Ok(None) };
    let ok = (1..=40).contains(&s.len())
        && all_in(s, |b| b.is_ascii_alphanumeric() || b" :.+-".contains(&b))
        && !s.starts_with('-');
    if !ok {
        return refuse(format!(
            "SINCE must be a time journalctl understands ('1 hour ago', today, '2026-12-01 10:00'), got {}",
            shown(s)
        ));
    }
    Ok(Some(s.to_string()))
}

/// GREP (logs): a pattern of at most 200 printable characters.
pub fn grep(given: Option<&str>) -> Checked<Option<String>> {
    let Some(g) = given else { return Ok(None) };
    if g.len() > 200 || has_control(g) || g == "-" {
        return refuse(format!(
            "GREP must be a pattern of at most 200 printable characters, got {}",
            shown(g)
        ));
    }
    Ok(Some(g.to_string()))
}

/// A variable that is 1 or unset (0 counts as unset): FOLLOW, PURGE, YES.
pub fn flag(name: &str, given: Option<&str>) -> Checked<bool> {
    match given {
        None | Some("0") => Ok(false),
        Some("1") => Ok(true),
        Some(other) => refuse(format!("{name} must be 1 (or empty), got {}", shown(other))),
    }
}

/// TO (rollback): a release id or a prefix of one.
pub fn to(given: Option<&str>, host: &str) -> Checked<Option<String>> {
    let Some(t) = given else { return Ok(None) };
    let ok = (1..=64).contains(&t.len())
        && all_in(t, |b| b.is_ascii_alphanumeric() || b"._+-".contains(&b));
    if !ok {
        return refuse(format!(
            "TO={} is not a release id or a prefix of one (make releases HOST={host} lists them)",
            shown(t)
        ));
    }
    Ok(Some(t.to_string()))
}

/// PARALLEL (upgrade of several hosts): 1 to 99, default 1.
pub fn parallel(given: Option<&str>) -> Checked<usize> {
    let p = given.unwrap_or("1");
    if !whole(p, 2) {
        return refuse(format!(
            "PARALLEL must be a whole number from 1 to 99, got {}",
            shown(p)
        ));
    }
    Ok(p.parse().unwrap_or(1))
}

/// An environment's name (ENV=staging: deploy/staging.hosts).
pub fn env_name(env: &str) -> Checked<()> {
    let b = env.as_bytes();
    let ok = (1..=40).contains(&b.len())
        && b[0].is_ascii_alphanumeric()
        && all_in(env, |c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-');
    if !ok {
        return refuse(format!(
            "ENV={} is not an environment name (letters, digits, _ and -)",
            shown(env)
        ));
    }
    Ok(())
}

/// The hosts of deploy/ENV.hosts: one ssh destination per line, `#` starts a comment.
pub fn hosts_file(env: &str, text: &str, command: &str) -> Checked<Vec<String>> {
    let mut hosts = Vec::new();
    for (i, line) in text.split_terminator('\n').enumerate() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split([' ', '\t']).filter(|w| !w.is_empty());
        let Some(host) = words.next() else { continue };
        let rest: Vec<&str> = words.collect();
        let n = i + 1;
        if !rest.is_empty() {
            return refuse(format!(
                "deploy/{env}.hosts line {n}: one ssh destination per line, got {}",
                shown(&format!("{host} {}", rest.join(" ")))
            ));
        }
        check_host(&format!("deploy/{env}.hosts line {n}"), host, command)?;
        hosts.push(host.to_string());
    }
    if hosts.is_empty() {
        return refuse(format!("deploy/{env}.hosts names no host"));
    }
    Ok(hosts)
}

/// HOSTS: destinations separated by blanks.
pub fn hosts_list(hosts: &str, command: &str) -> Checked<Vec<String>> {
    let list: Vec<String> = hosts
        .split([' ', '\t', '\n'])
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect();
    if list.is_empty() {
        return refuse("HOSTS is empty: name the ssh destinations, e.g. HOSTS=\"app1 app2\"");
    }
    for h in &list {
        check_host("HOSTS", h, command)?;
    }
    Ok(list)
}

/// The settings `make config` may set or unset: never the address (LISTEN=) or a password
/// (DATABASE_URL_FILE=). The one list is `crate::settings`, which the server and the host's
/// `config` read too.
pub fn settable(name: &str) -> bool {
    crate::settings::settable().any(|n| n == name)
}

/// deploy.sh's `--set NAME=VALUE` and `--unset NAME` words from SET and UNSET.
pub fn config_args(set: Option<&str>, unset: Option<&str>, host: &str) -> Checked<Vec<String>> {
    let (set, unset) = (set.unwrap_or(""), unset.unwrap_or(""));
    if has_control(set) || has_control(unset) {
        return refuse("SET or UNSET holds a newline or control character");
    }
    let mut args = Vec::new();
    for word in set.split(' ').filter(|w| !w.is_empty()) {
        let Some((name, _)) = word.split_once('=') else {
            return refuse(format!("SET: {} is not NAME=VALUE", shown(word)));
        };
        match name {
            "TRIBIST_LISTEN" => return refuse(format!(
                "SET: the address is not an environment setting: make install HOST={host} LISTEN=ADDR:PORT sets it (tribist.socket)"
            )),
            "DATABASE_URL" | "PGPASSWORD" => return refuse(
                "SET: a password never goes on a command line (ps, shell history): put the URL in a file and pass DATABASE_URL_FILE=path"
            ),
            _ => {}
        }
        if !settable(name) {
            return refuse(format!(
                "SET: {} is not a setting tribist reads (make config HOST={host} lists them)",
                shown(name)
            ));
        }
        args.extend(["--set".to_string(), word.to_string()]);
    }
    for word in unset.split(' ').filter(|w| !w.is_empty()) {
        if !settable(word) {
            return refuse(format!(
                "UNSET: {} is not a setting that can be unset (make config HOST={host} lists them)",
                shown(word)
            ));
        }
        args.extend(["--unset".to_string(), word.to_string()]);
    }
    Ok(args)
}

/// DATABASE_URL_FILE as typed, for the host's next-command lines (a file name, never its
/// content); "path" when it cannot be shown as it is.
pub fn url_file_label(file: Option<&str>) -> String {
    match file {
        Some(f)
            if (1..=300).contains(&f.len())
                && all_in(f, |b| b.is_ascii_alphanumeric() || b"_./~+-".contains(&b)) =>
        {
            f.to_string()
        }
        _ => "path".to_string(),
    }
}

/// A database URL's text, as systemd's environment file can carry it.
pub fn database_url(url: &[u8]) -> Checked<String> {
    if url.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return refuse(
            "the database URL holds a newline or control character: systemd's environment file cannot carry it",
        );
    }
    match std::str::from_utf8(url) {
        Ok(s) => Ok(s.to_string()),
        Err(_) => {
            refuse("the database URL is not UTF-8: systemd's environment file cannot carry it")
        }
    }
}

/// Whether `line` of a DEPLOY_KEY file is a public key (`type base64 [comment]`, no
/// options), a comment or empty.
pub fn public_key_line(line: &[u8]) -> bool {
    if line.is_empty() || line[0] == b'#' {
        return true;
    }
    let Some(space) = line.iter().position(|&b| b == b' ') else {
        return false;
    };
    let (kind, rest) = (&line[..space], &line[space + 1..]);
    let lower = |s: &[u8], extra: &[u8]| {
        !s.is_empty()
            && s.iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || extra.contains(b))
    };
    let kind_ok = [
        ("ssh-", b"-".as_slice()),
        ("ecdsa-sha2-", b"-".as_slice()),
        ("sk-", b"-@.".as_slice()),
    ]
    .iter()
    .any(|(prefix, extra)| {
        kind.strip_prefix(prefix.as_bytes())
            .is_some_and(|r| lower(r, extra))
    });
    if !kind_ok {
        return false;
    }
    let b64 = rest
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || **b == b'+' || **b == b'/')
        .count();
    if b64 == 0 {
        return false;
    }
    let rest = &rest[b64..];
    let pad = rest.iter().take_while(|b| **b == b'=').count();
    let rest = &rest[pad..];
    rest.is_empty() || (rest[0] == b' ' && rest[1..].iter().all(|b| (0x20..0x7f).contains(b)))
}

/// The variables a suggested command gives again, in this order, when they were given:
/// the ones `make install` (and `make check`) read.
const RETYPED: &[&str] = &[
    "HOST",
    "DOMAIN",
    "ACME_EMAIL",
    "ACME_CA",
    "ACME_CA_ROOT",
    "CERT_FILE",
    "KEY_FILE",
    "DATABASE_URL_FILE",
    "LISTEN",
    "DEPLOY_KEY",
    "DEPLOYER",
    "BIN",
    "SSH_OPTS",
];

/// The placeholders a suggested command has where no value can be guessed.
pub const EXAMPLE_DOMAIN: &str = "api.example.com";
pub const EXAMPLE_EMAIL: &str = "you@example.com";
pub const EXAMPLE_CA: &str = "https://ca.example.com/acme/directory";
pub const EXAMPLE_CA_ROOT: &str = "path/to/root.pem";
pub const EXAMPLE_CERT: &str = "path/to/fullchain.pem";
pub const EXAMPLE_KEY: &str = "path/to/key.pem";
pub const EXAMPLE_URL_FILE: &str = "path/to/database_url";

/// The one command a refusal suggests: `make COMMAND` and every variable of [`RETYPED`] the
/// person gave, as given, except `changes`: `(NAME, Some(v))` gives NAME the value `v` (in
/// its place, added if it was not given), `(NAME, None)` leaves NAME out. Each value is
/// written as [`shown`] writes it, so that the line, pasted into a shell, gives make exactly
/// these values and runs none of them.
pub fn retyped(command: &str, env: &Env, changes: &[(&str, Option<&str>)]) -> String {
    let mut line = format!("make {command}");
    for name in RETYPED {
        let value = match changes.iter().find(|(n, _)| n == name) {
            Some((_, v)) => v.map(str::to_string),
            None => env
                .vars
                .get(*name)
                .filter(|v| !v.is_empty())
                .map(|v| v.to_string_lossy().into_owned()),
        };
        if let Some(v) = value {
            line.push_str(&format!(" {name}={}", shown(&v)));
        }
    }
    line
}

/// DOMAIN as a person may have meant it: lowercase, without `http(s)://`, a path, a `:port`
/// and one final dot, when that is a name the host's rules take (None otherwise).
pub fn domain_meant(typed: &str) -> Option<String> {
    let lower = typed.to_ascii_lowercase();
    let mut d = lower.as_str();
    for scheme in ["https://", "http://"] {
        if let Some(rest) = d.strip_prefix(scheme) {
            d = rest;
        }
    }
    if let Some((name, _path)) = d.split_once('/') {
        d = name;
    }
    if let Some((name, port)) = d.rsplit_once(':') {
        if whole(port, 5) {
            d = name;
        }
    }
    let d = d.strip_suffix('.').unwrap_or(d);
    let ok = crate::host::front::Domain::parse(d).is_ok();
    (ok && d != typed).then(|| d.to_string())
}

/// DOMAIN (check, install): the front door's name, checked with the host's own rules
/// (`host::front::Domain`); None when unset. Refused with the command `command` again,
/// DOMAIN corrected when the correction is plain ([`domain_meant`]), else a placeholder.
pub fn domain(env: &Env, command: &str) -> Checked<Option<String>> {
    let Some(d) = env.text("DOMAIN")? else {
        return Ok(None);
    };
    match crate::host::front::Domain::parse(&d) {
        Ok(d) => Ok(Some(d.as_str().to_string())),
        Err(e) => {
            let (fix, note) = match domain_meant(&d) {
                Some(m) => (
                    m,
                    " (the name alone: no scheme, port, path or final dot; nothing was sent)",
                ),
                None => (
                    EXAMPLE_DOMAIN.to_string(),
                    " (the name clients use; nothing was sent)",
                ),
            };
            refuse(format!(
                "{}; run: {}{note}",
                e.what,
                retyped(command, env, &[("DOMAIN", Some(&fix))])
            ))
        }
    }
}

/// The front door's variables as typed (DOMAIN, ACME_EMAIL, ACME_CA, ACME_CA_ROOT,
/// CERT_FILE, KEY_FILE); the three files are paths on this machine.
#[derive(Clone, Debug, Default)]
pub struct FrontVars {
    pub domain: Option<String>,
    pub acme_email: Option<String>,
    pub acme_ca: Option<String>,
    pub acme_ca_root: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl FrontVars {
    pub fn from_env(env: &Env) -> Checked<FrontVars> {
        Ok(FrontVars {
            domain: env.text("DOMAIN")?,
            acme_email: env.text("ACME_EMAIL")?,
            acme_ca: env.text("ACME_CA")?,
            acme_ca_root: env.path("ACME_CA_ROOT"),
            cert_file: env.path("CERT_FILE"),
            key_file: env.path("KEY_FILE"),
        })
    }
}

/// How the front's certificate is had, as given: files on this machine, sent in the bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrontCerts {
    Acme {
        email: String,
        ca: Option<String>,
        ca_root: Option<PathBuf>,
    },
    Own {
        cert: PathBuf,
        key: PathBuf,
    },
}

/// `make install DOMAIN=…`, checked: the host's `front apply` takes [`FrontGiven::words`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontGiven {
    pub domain: String,
    pub certs: FrontCerts,
}

/// The names of the front's files in the install bundle (the host's side reads them there).
pub use crate::host::deploy::install::{FRONT_CA_ROOT, FRONT_CERT, FRONT_KEY};

fn path_shown(p: &std::path::Path) -> String {
    shown(&p.to_string_lossy())
}

impl FrontGiven {
    /// `front apply`'s words for a bundle extracted in `dir` on the host: the certificate
    /// files are the bundle's copies, never a path of this machine.
    pub fn words(&self, dir: &str) -> Vec<String> {
        let mut w = vec!["--domain".to_string(), self.domain.clone()];
        match &self.certs {
            FrontCerts::Acme { email, ca, ca_root } => {
                w.extend(["--acme-email".to_string(), email.clone()]);
                if let Some(ca) = ca {
                    w.extend(["--acme-ca".to_string(), ca.clone()]);
                }
                if ca_root.is_some() {
                    w.extend([
                        "--acme-ca-root".to_string(),
                        format!("{dir}/{FRONT_CA_ROOT}"),
                    ]);
                }
            }
            FrontCerts::Own { .. } => w.extend([
                "--cert-file".to_string(),
                format!("{dir}/{FRONT_CERT}"),
                "--key-file".to_string(),
                format!("{dir}/{FRONT_KEY}"),
            ]),
        }
        w
    }
}

/// A refusal of `front`'s: what is wrong, `make install` again with `changes`, and that
/// nothing was sent.
fn front_refusal<T>(what: String, env: &Env, changes: &[(&str, Option<&str>)]) -> Checked<T> {
    refuse(format!(
        "{what}; run: {} (nothing was sent)",
        retyped("install", env, changes)
    ))
}

/// The front door's variables for `make install` (from `env`, with HOST and the rest for
/// the suggested command), checked by the host's own parser (`front_plan::parse_apply`,
/// `front::Domain` and the rest) before anything is sent. None: no DOMAIN, so no front is
/// asked for (the host keeps one it has).
pub fn front(env: &Env) -> Checked<Option<FrontGiven>> {
    let v = FrontVars::from_env(env)?;
    let Some(domain) = &v.domain else {
        let names: Vec<&str> = [
            ("ACME_EMAIL", v.acme_email.is_some()),
            ("ACME_CA", v.acme_ca.is_some()),
            ("ACME_CA_ROOT", v.acme_ca_root.is_some()),
            ("CERT_FILE", v.cert_file.is_some()),
            ("KEY_FILE", v.key_file.is_some()),
        ]
        .iter()
        .filter_map(|(n, set)| set.then_some(*n))
        .collect();
        if names.is_empty() {
            return Ok(None);
        }
        return front_refusal(
            format!(
                "{} given without DOMAIN: the front needs the name its clients use (without DOMAIN install sets up no front)",
                names.join(", ")
            ),
            env,
            &[("DOMAIN", Some(EXAMPLE_DOMAIN))],
        );
    };
    self::domain(env, "install")?;
    let d = shown(domain);
    let email = v.acme_email.as_deref();
    let acme_extra = v.acme_ca.is_some() || v.acme_ca_root.is_some();
    let certs = match (&v.cert_file, &v.key_file) {
        (None, None) => {
            if v.acme_ca_root.is_some() && v.acme_ca.is_none() {
                // Caddy would take it for Let's Encrypt's and fail there after a minute or two.
                let mut changes = vec![("ACME_CA_ROOT", None)];
                if email.is_none() {
                    changes.push(("ACME_EMAIL", Some(EXAMPLE_EMAIL)));
                }
                return front_refusal(
                    "ACME_CA_ROOT is the root of ACME_CA's HTTPS: give ACME_CA too, or drop ACME_CA_ROOT (for Let's Encrypt)".into(),
                    env,
                    &changes,
                );
            }
            let Some(email) = email else {
                if acme_extra {
                    return front_refusal(
                        format!("ACME_CA and ACME_CA_ROOT go with ACME_EMAIL, the CA account's address, which is missing (DOMAIN={d})"),
                        env,
                        &[("ACME_EMAIL", Some(EXAMPLE_EMAIL))],
                    );
                }
                return front_refusal(
                    format!("DOMAIN={d} needs a way to get its certificate: ACME_EMAIL= (from Let's Encrypt, or the CA in ACME_CA), or CERT_FILE= and KEY_FILE= (your own)"),
                    env,
                    &[("ACME_EMAIL", Some(EXAMPLE_EMAIL))],
                );
            };
            FrontCerts::Acme {
                email: email.to_string(),
                ca: v.acme_ca.clone(),
                ca_root: v.acme_ca_root.clone(),
            }
        }
        (Some(c), Some(k)) => {
            if email.is_some() || acme_extra {
                return front_refusal(
                    "ACME_* and CERT_FILE/KEY_FILE are both given: the certificate comes from the CA or from your files, not both".into(),
                    env,
                    &[("ACME_EMAIL", None), ("ACME_CA", None), ("ACME_CA_ROOT", None)],
                );
            }
            FrontCerts::Own {
                cert: c.clone(),
                key: k.clone(),
            }
        }
        (Some(c), None) => {
            return front_refusal(
                format!(
                    "CERT_FILE={} is given without KEY_FILE, its private key",
                    path_shown(c)
                ),
                env,
                &[("KEY_FILE", Some(EXAMPLE_KEY))],
            )
        }
        (None, Some(k)) => {
            return front_refusal(
                format!(
                    "KEY_FILE={} is given without CERT_FILE, its certificate",
                    path_shown(k)
                ),
                env,
                &[("CERT_FILE", Some(EXAMPLE_CERT))],
            )
        }
    };
    if let FrontCerts::Acme { email, ca, .. } = &certs {
        if let Err(e) = crate::host::front::Email::parse(email) {
            return front_refusal(e.what, env, &[("ACME_EMAIL", Some(EXAMPLE_EMAIL))]);
        }
        if let Some(Err(e)) = ca.as_deref().map(crate::host::front::CaUrl::parse) {
            return front_refusal(e.what, env, &[("ACME_CA", Some(EXAMPLE_CA))]);
        }
    }
    let given = FrontGiven {
        domain: domain.clone(),
        certs,
    };
    // The host's parser, on the very words the host will get (for a bundle directory shaped
    // as the host names it): what it refuses there is refused here, with its reason.
    match crate::host::front_plan::parse_apply(&given.words("/tmp/tribist-install.XXXXXX")) {
        Ok(_) => Ok(Some(given)),
        Err(e) => front_refusal(e.what, env, &[]),
    }
}

/// The placeholder for a front file's variable.
pub fn example_file(var: &str) -> &'static str {
    match var {
        "CERT_FILE" => EXAMPLE_CERT,
        "KEY_FILE" => EXAMPLE_KEY,
        _ => EXAMPLE_CA_ROOT,
    }
}

/// A front file's bytes as read here (at most 64 KiB, `None` when larger), checked as the
/// host checks them (`front_plan::check_pem`).
pub fn front_file(
    var: &str,
    path: &std::path::Path,
    bytes: Option<&[u8]>,
    kind: crate::host::front_plan::Pem,
    env: &Env,
) -> Checked<()> {
    let name = path_shown(path);
    let why = match bytes {
        None => format!(
            "it is larger than {} KiB: not a PEM file",
            crate::host::front_plan::MAX_PEM / 1024
        ),
        Some(b) => match crate::host::front_plan::check_pem(kind, b) {
            Ok(()) if var == "CERT_FILE" => {
                let domain = env.text("DOMAIN").ok().flatten().unwrap_or_default();
                return match crate::host::x509::check_for(b, &domain, crate::host::x509::now()) {
                    Ok(()) => Ok(()),
                    Err(why) => front_refusal(
                        format!("CERT_FILE={name} {why}"),
                        env,
                        &[(var, Some(example_file(var)))],
                    ),
                };
            }
            Ok(()) => return Ok(()),
            Err(why) => why,
        },
    };
    front_refusal(
        format!("{var}={name}: {why}; give the right file"),
        env,
        &[(var, Some(example_file(var)))],
    )
}

/// Whether a LISTEN address is reachable from this host only.
pub fn loopback_listen(listen: &str) -> bool {
    listen.starts_with("127.") || listen.starts_with("[::1]:")
}

/// The warning for a LISTEN given with DOMAIN that is not loopback: clients can go around
/// the front. None for a loopback address.
pub fn around_the_front(listen: &str) -> Option<String> {
    (!loopback_listen(listen)).then(|| {
        format!(
            "warning: LISTEN={listen} is not a loopback address: clients can reach the service around the front (plain HTTP, none of its limits); LISTEN=127.0.0.1:{} keeps it behind the front",
            listen.rsplit(':').next().unwrap_or("8383")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused<T: std::fmt::Debug>(r: Checked<T>) -> String {
        match r {
            Err(Refused(m)) => m,
            Ok(v) => panic!("accepted: {v:?}"),
        }
    }

    #[test]
    fn hosts_are_ssh_destinations_only() {
        for ok in [
            "app1",
            "root@app1",
            "alice@10.0.0.1",
            "root@[::1]",
            "h%eth0",
            "a_b.c-d",
        ] {
            assert_eq!(check_host("HOST", ok, "status"), Ok(()), "{ok}");
        }
        for bad in [
            "root@app1; touch /tmp/x",
            "-oProxyCommand=touch /tmp/x",
            "app$(id)",
            "a b",
            "a\nb",
            "`id`",
            "h/x",
        ] {
            assert!(
                refused(check_host("HOST", bad, "status")).contains("is not an ssh destination"),
                "{bad}"
            );
        }
        assert_eq!(
            refused(check_host("HOST", "", "upgrade")),
            "set HOST, the ssh destination: make upgrade HOST=root@app1"
        );
    }

    #[test]
    fn ssh_opts_split_as_xargs_and_every_word_is_an_option() {
        assert_eq!(
            ssh_opts(r#"-o "User=a b" -p 2222"#, "/h"),
            Ok(vec![
                "-o".into(),
                "User=a b".into(),
                "-p".into(),
                "2222".into()
            ])
        );
        assert_eq!(
            ssh_opts(
                r"-F '/x y/cfg' -i ~/.ssh/k -vv -4 -iKEY -o a\ b",
                "/home/me"
            ),
            Ok(vec![
                "-F".into(),
                "/x y/cfg".into(),
                "-i".into(),
                "/home/me/.ssh/k".into(),
                "-vv".into(),
                "-4".into(),
                "-iKEY".into(),
                "-o".into(),
                "a b".into()
            ])
        );
        // Quotes group and concatenate; inside them \ is literal; '' is an empty argument.
        assert_eq!(
            ssh_opts(r#"-o a'b c'"d" -o 'x\y' -o ''"#, "/h"),
            Ok(vec![
                "-o".into(),
                "ab cd".into(),
                "-o".into(),
                r"x\y".into(),
                "-o".into(),
                "".into()
            ])
        );
        assert_eq!(ssh_opts("", "/h"), Ok(vec![]));
        assert!(refused(ssh_opts("-o 'User=x", "/h")).contains("unmatched quote"));
        assert!(refused(ssh_opts("-p 22 evil-host", "/h"))
            .contains("evil-host is neither an option nor an option's argument"));
        assert!(refused(ssh_opts("-i", "/h")).contains("ends with an option that needs"));
        assert!(refused(ssh_opts("-o\nProxyCommand=x", "/h")).contains("control character"));
        assert!(refused(ssh_opts("-v ''", "/h")).contains("neither an option"));
    }

    #[test]
    fn numbers_and_names() {
        assert_eq!(
            preflight_args(Some("0"), Some("5")),
            Ok(vec![
                "--preflight".into(),
                "0".into(),
                "--keep".into(),
                "5".into()
            ])
        );
        assert_eq!(preflight_args(None, None), Ok(vec![]));
        for bad in ["01", "1000", "-1", "1 ", "x"] {
            assert!(preflight_args(Some(bad), None).is_err(), "{bad}");
        }
        for bad in ["0", "100", "1x"] {
            assert!(preflight_args(None, Some(bad)).is_err(), "{bad}");
        }
        assert_eq!(lines(None, "100"), Ok("100".into()));
        assert_eq!(lines(Some("999999"), "100"), Ok("999999".into()));
        assert!(refused(lines(Some("5; id"), "100")).starts_with("LINES must be a whole number"));
        assert!(lines(Some("1000000"), "100").is_err());
        assert_eq!(parallel(None), Ok(1));
        assert_eq!(parallel(Some("12")), Ok(12));
        assert!(
            refused(parallel(Some("0"))).contains("PARALLEL must be a whole number from 1 to 99")
        );
        assert_eq!(to(Some("3f2a9c"), "h"), Ok(Some("3f2a9c".into())));
        assert!(refused(to(Some("x;id"), "h")).contains("make releases HOST=h lists them"));
        assert_eq!(flag("PURGE", Some("0")), Ok(false));
        assert_eq!(flag("PURGE", Some("1")), Ok(true));
        assert_eq!(
            refused(flag("PURGE", Some("yes"))),
            "PURGE must be 1 (or empty), got yes"
        );
        assert_eq!(since(Some("1 hour ago")), Ok(Some("1 hour ago".into())));
        assert!(since(Some("now; id")).is_err());
        assert!(since(Some("-1d")).is_err());
        assert_eq!(grep(Some("listening on")), Ok(Some("listening on".into())));
        assert!(grep(Some("-")).is_err());
        assert!(grep(Some(&"x".repeat(201))).is_err());
        assert_eq!(listen(Some("[::1]:8383")), Ok(Some("[::1]:8383".into())));
        assert!(refused(listen(Some("localhost:80; id"))).contains("is not an address such as"));
        assert_eq!(deployer(None, "me@desk"), Ok("me@desk".to_string()));
        assert_eq!(
            deployer(Some("o'brien `x` $(y); z"), "me@desk"),
            Ok("o'brien `x` $(y); z".to_string())
        );
        assert!(refused(deployer(Some("alice\nresult=ok"), "x"))
            .starts_with("DEPLOYER must be printable"));
        assert!(deployer(Some(&"x".repeat(101)), "x").is_err());
        assert!(env_name("staging").is_ok());
        assert!(refused(env_name("../x")).contains("is not an environment name"));
        assert!(env_name("-x").is_err());
    }

    #[test]
    fn hosts_files_and_lists() {
        assert_eq!(
            hosts_file(
                "staging",
                "# staging\napp1   # the first\n\n  app2",
                "status"
            ),
            Ok(vec!["app1".into(), "app2".into()])
        );
        assert_eq!(
            refused(hosts_file("bad", "app1\napp2; id\n", "status")),
            "deploy/bad.hosts line 2: one ssh destination per line, got app2\\;\\ id"
        );
        assert_eq!(
            refused(hosts_file("x", "app1 app2\n", "status")),
            "deploy/x.hosts line 1: one ssh destination per line, got app1\\ app2"
        );
        assert_eq!(
            refused(hosts_file("e", "# nothing\n", "status")),
            "deploy/e.hosts names no host"
        );
        assert!(refused(hosts_file("e", "app$(id)\n", "status"))
            .starts_with("deploy/e.hosts line 1=app\\$\\(id\\) is not an ssh destination"));
        assert_eq!(
            hosts_list(" a\tb\nc ", "upgrade"),
            Ok(vec!["a".into(), "b".into(), "c".into()])
        );
        assert!(refused(hosts_list(" ", "upgrade")).starts_with("HOSTS is empty"));
        assert!(hosts_list("app1 app$(id)", "upgrade").is_err());
    }

    #[test]
    fn config_changes_name_settings_only() {
        assert_eq!(
            config_args(
                Some("TRIBIST_WORKERS=8 TRIBIST_DB_TIMEOUT=3s"),
                Some("TRIBIST_LOG_LEVEL"),
                "h"
            ),
            Ok([
                "--set",
                "TRIBIST_WORKERS=8",
                "--set",
                "TRIBIST_DB_TIMEOUT=3s",
                "--unset",
                "TRIBIST_LOG_LEVEL"
            ]
            .map(String::from)
            .to_vec())
        );
        assert!(
            refused(config_args(Some("TRIBIST_LISTEN=127.0.0.1:1"), None, "h"))
                .contains("make install HOST=h LISTEN=ADDR:PORT sets it")
        );
        assert!(refused(config_args(Some("PGPASSWORD=x"), None, "h"))
            .contains("DATABASE_URL_FILE=path"));
        assert!(refused(config_args(Some("X=$(id)"), None, "h"))
            .contains("is not a setting tribist reads"));
        assert!(
            refused(config_args(Some("TRIBIST_WORKERS"), None, "h")).contains("is not NAME=VALUE")
        );
        assert!(refused(config_args(None, Some("DATABASE_URL"), "h"))
            .contains("is not a setting that can be unset"));
        assert!(config_args(Some("TRIBIST_WORKERS=1\nX=1"), None, "h").is_err());
    }

    #[test]
    fn urls_labels_and_keys() {
        assert_eq!(url_file_label(Some("~/.tribist-db")), "~/.tribist-db");
        assert_eq!(url_file_label(Some("/my dir/url")), "path");
        assert_eq!(url_file_label(None), "path");
        assert_eq!(
            database_url(b"postgres://u:p@h/d"),
            Ok("postgres://u:p@h/d".into())
        );
        assert!(database_url(b"postgres://u:p@h/d\nX=1").is_err());
        assert!(database_url(b"postgres://u:\xff@h/d").is_err());
        assert!(public_key_line(
            b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI+/= alice@desk"
        ));
        assert!(public_key_line(b"ecdsa-sha2-nistp256 AAAA=="));
        assert!(public_key_line(b"sk-ssh-ed25519@openssh.com AAAA x"));
        assert!(public_key_line(b"# a comment"));
        assert!(public_key_line(b""));
        assert!(!public_key_line(b"command=\"touch x\" ssh-ed25519 AAAA"));
        assert!(!public_key_line(b"ssh-ed25519 AAAA=B"));
        assert!(!public_key_line(b"ssh-ed25519"));
        assert!(!public_key_line(b"ssh-ed25519 AAAA \x1b[2J"));
        assert!(!public_key_line(b"-----BEGIN OPENSSH PRIVATE KEY-----"));
        assert_eq!(
            crate::settings::env_line("DATABASE_URL", "p$ \\ ' \" `x` ").as_deref(),
            Some("DATABASE_URL=\"p\\$ \\\\ ' \\\" \\`x\\` \"\n")
        );
    }

    #[test]
    fn env_values_must_be_text() {
        use std::os::unix::ffi::OsStringExt;
        let mut env = Env::from_pairs(&[("HOST", "app1"), ("LINES", "")]);
        assert_eq!(env.text("HOST"), Ok(Some("app1".into())));
        assert_eq!(env.text("LINES"), Ok(None));
        assert_eq!(env.text("NOPE"), Ok(None));
        env.vars
            .insert("DEPLOYER".into(), OsString::from_vec(b"caf\xe9".to_vec()));
        assert!(refused(env.text("DEPLOYER")).starts_with("DEPLOYER is not UTF-8 text"));
    }

    fn fr(pairs: &[(&str, &str)]) -> Checked<Option<FrontGiven>> {
        front(&Env::from_pairs(pairs))
    }

    /// The suggested command: every variable given, in one order, each value shown so that
    /// a shell gives it to make as it is and runs nothing of it.
    #[test]
    fn the_suggested_command_retypes_every_variable_quoted() {
        let env = Env::from_pairs(&[
            ("SSH_OPTS", "-F /tmp/my cfg"),
            ("KEY_FILE", "k.pem"),
            ("HOST", "root@app1"),
            ("DEPLOYER", "o'brien $(id)"),
            ("LISTEN", ""),
            ("LINES", "5"),
            ("CERT_FILE", "c.pem"),
            ("DOMAIN", "api.example.com"),
            ("DATABASE_URL_FILE", "~/db url"),
        ]);
        assert_eq!(
            retyped("install", &env, &[]),
            r"make install HOST=root@app1 DOMAIN=api.example.com CERT_FILE=c.pem KEY_FILE=k.pem DATABASE_URL_FILE=\~/db\ url DEPLOYER=o\'brien\ \$\(id\) SSH_OPTS=-F\ /tmp/my\ cfg"
        );
        assert_eq!(
            retyped(
                "check",
                &env,
                &[("KEY_FILE", None), ("ACME_EMAIL", Some(EXAMPLE_EMAIL))]
            ),
            r"make check HOST=root@app1 DOMAIN=api.example.com ACME_EMAIL=you@example.com CERT_FILE=c.pem DATABASE_URL_FILE=\~/db\ url DEPLOYER=o\'brien\ \$\(id\) SSH_OPTS=-F\ /tmp/my\ cfg"
        );
        // Pasted into sh, the line gives make exactly the values, and runs none of them.
        let mark = std::env::temp_dir().join(format!("tribist-retyped-{}", std::process::id()));
        let hostile = format!("$(touch {}) `x` \"q\" 'a' ;b", mark.display());
        let env = Env::from_pairs(&[("HOST", "h"), ("ACME_CA", &hostile)]);
        let line = retyped("install", &env, &[]);
        let line = line.replacen("make install", "printf '[%s]\\n'", 1);
        if let Ok(out) = std::process::Command::new("sh")
            .args(["-c", &line])
            .output()
        {
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                format!("[HOST=h]\n[ACME_CA={hostile}]\n")
            );
        }
        assert!(!mark.exists(), "a value ran as code");
    }

    #[test]
    fn a_domain_is_corrected_only_when_the_correction_is_plain() {
        for (typed, meant) in [
            ("api.newcomer.test.", Some("api.newcomer.test")),
            ("https://api.newcomer.test", Some("api.newcomer.test")),
            ("HTTP://API.Newcomer.test/", Some("api.newcomer.test")),
            ("api.newcomer.test:443", Some("api.newcomer.test")),
            ("api.newcomer.test/", Some("api.newcomer.test")),
            (
                "https://api.newcomer.test:8443/v1/x?y",
                Some("api.newcomer.test"),
            ),
            ("api.newcomer.test..", None),
            ("localhost.", None),
            ("https://10.0.0.1", None),
            ("api.newcomer.test:http", None),
            ("x{env.HOME}", None),
            ("$(id).example.com/", None),
        ] {
            assert_eq!(domain_meant(typed).as_deref(), meant, "{typed}");
        }
    }

    #[test]
    fn the_domain_by_the_host_s_rules() {
        let d = |pairs: &[(&str, &str)]| domain(&Env::from_pairs(pairs), "check");
        assert_eq!(d(&[("HOST", "app1")]), Ok(None));
        assert_eq!(
            d(&[("HOST", "app1"), ("DOMAIN", "API.Example.com")]),
            Ok(Some("api.example.com".into()))
        );
        assert_eq!(
            refused(d(&[("HOST", "root@app1"), ("DOMAIN", "api.example.com; id")])),
            "DOMAIN=\"api.example.com; id\" is refused: it has ';' (a host name has letters, digits, '-' and '.' only); run: make check HOST=root@app1 DOMAIN=api.example.com (the name clients use; nothing was sent)"
        );
        for bad in [
            "-x.example.com",
            "localhost",
            "10.0.0.1",
            "a..b",
            "*.example.com",
            "{env.X}.com",
        ] {
            assert!(
                refused(d(&[("HOST", "h"), ("DOMAIN", bad)])).contains("is refused"),
                "{bad}"
            );
        }
    }

    /// The newcomer's trial: each refusal's command, typed as printed, is the next try.
    #[test]
    fn a_refused_domain_suggests_the_whole_command_corrected() {
        for typed in [
            "api.newcomer.test.",
            "https://api.newcomer.test",
            "api.newcomer.test:443",
            "api.newcomer.test/",
        ] {
            let m = refused(fr(&[
                ("HOST", "root@wf"),
                ("DOMAIN", typed),
                ("ACME_EMAIL", "ops@newcomer.test"),
                ("ACME_CA", "https://ca.newcomer.test/dir"),
                ("ACME_CA_ROOT", "/tmp/root ca.pem"),
            ]));
            assert!(
                m.ends_with("; run: make install HOST=root@wf DOMAIN=api.newcomer.test ACME_EMAIL=ops@newcomer.test ACME_CA=https://ca.newcomer.test/dir ACME_CA_ROOT=/tmp/root\\ ca.pem (the name alone: no scheme, port, path or final dot; nothing was sent)"),
                "{m}"
            );
        }
        assert_eq!(
            refused(fr(&[
                ("HOST", "root@wf"),
                ("DOMAIN", "api.newcomer.test."),
                ("CERT_FILE", "c.pem"),
                ("KEY_FILE", "k.pem"),
                ("LISTEN", "127.0.0.1:9000"),
                ("DEPLOY_KEY", "~/.ssh/d.pub"),
            ])),
            "DOMAIN=\"api.newcomer.test.\" is refused: it has an empty label (two dots in a row, or a dot at an end); run: make install HOST=root@wf DOMAIN=api.newcomer.test CERT_FILE=c.pem KEY_FILE=k.pem LISTEN=127.0.0.1:9000 DEPLOY_KEY=\\~/.ssh/d.pub (the name alone: no scheme, port, path or final dot; nothing was sent)"
        );
        // No plain correction: the placeholder, the rest kept; hostile text shown, not run.
        assert_eq!(
            refused(fr(&[
                ("HOST", "root@app1"),
                ("DOMAIN", "x{env.HOME}"),
                ("ACME_EMAIL", "o@example.com"),
            ])),
            "DOMAIN=\"x{env.HOME}\" is refused: it has '{' (Caddyfile blocks and placeholders such as {env.X}) (a host name has letters, digits, '-' and '.' only); run: make install HOST=root@app1 DOMAIN=api.example.com ACME_EMAIL=o@example.com (the name clients use; nothing was sent)"
        );
        assert!(refused(fr(&[
            ("HOST", "h"),
            ("DOMAIN", "$(id)"),
            ("ACME_EMAIL", "a b@x.com")
        ]))
        .ends_with(r"run: make install HOST=h DOMAIN=api.example.com ACME_EMAIL=a\ b@x.com (the name clients use; nothing was sent)"));
    }

    #[test]
    fn the_front_is_asked_for_with_domain_only() {
        assert_eq!(fr(&[("HOST", "h")]), Ok(None));
        assert_eq!(
            refused(fr(&[("HOST", "root@app1"), ("ACME_EMAIL", "ops@example.com")])),
            "ACME_EMAIL given without DOMAIN: the front needs the name its clients use (without DOMAIN install sets up no front); run: make install HOST=root@app1 DOMAIN=api.example.com ACME_EMAIL=ops@example.com (nothing was sent)"
        );
        let m = refused(fr(&[
            ("HOST", "h"),
            ("CERT_FILE", "my cert.pem"),
            ("KEY_FILE", "k.pem"),
            ("DATABASE_URL_FILE", "db"),
        ]));
        assert!(
            m.starts_with("CERT_FILE, KEY_FILE given without DOMAIN")
                && m.ends_with("run: make install HOST=h DOMAIN=api.example.com CERT_FILE=my\\ cert.pem KEY_FILE=k.pem DATABASE_URL_FILE=db (nothing was sent)"),
            "{m}"
        );
        assert!(refused(fr(&[("HOST", "h"), ("ACME_CA_ROOT", "r.pem")]))
            .starts_with("ACME_CA_ROOT given without DOMAIN"));
    }

    #[test]
    fn the_front_s_certificate_comes_one_way() {
        assert_eq!(
            refused(fr(&[("HOST", "h"), ("DOMAIN", "api.example.com")])),
            "DOMAIN=api.example.com needs a way to get its certificate: ACME_EMAIL= (from Let's Encrypt, or the CA in ACME_CA), or CERT_FILE= and KEY_FILE= (your own); run: make install HOST=h DOMAIN=api.example.com ACME_EMAIL=you@example.com (nothing was sent)"
        );
        assert_eq!(
            refused(fr(&[
                ("HOST", "h"),
                ("DOMAIN", "api.example.com"),
                ("CERT_FILE", "c.pem")
            ])),
            "CERT_FILE=c.pem is given without KEY_FILE, its private key; run: make install HOST=h DOMAIN=api.example.com CERT_FILE=c.pem KEY_FILE=path/to/key.pem (nothing was sent)"
        );
        assert!(refused(fr(&[
            ("HOST", "h"),
            ("DOMAIN", "api.example.com"),
            ("KEY_FILE", "k.pem")
        ]))
        .ends_with("run: make install HOST=h DOMAIN=api.example.com CERT_FILE=path/to/fullchain.pem KEY_FILE=k.pem (nothing was sent)"));
        for extra in [
            ("ACME_EMAIL", "o@example.com"),
            ("ACME_CA", "https://ca.example/dir"),
        ] {
            assert_eq!(
                refused(fr(&[
                    ("HOST", "h"),
                    ("DOMAIN", "api.example.com"),
                    ("CERT_FILE", "c.pem"),
                    ("KEY_FILE", "k.pem"),
                    extra
                ])),
                "ACME_* and CERT_FILE/KEY_FILE are both given: the certificate comes from the CA or from your files, not both; run: make install HOST=h DOMAIN=api.example.com CERT_FILE=c.pem KEY_FILE=k.pem (nothing was sent)"
            );
        }
        assert_eq!(
            refused(fr(&[
                ("HOST", "h"),
                ("DOMAIN", "api.example.com"),
                ("ACME_CA", "https://ca.example/dir")
            ])),
            "ACME_CA and ACME_CA_ROOT go with ACME_EMAIL, the CA account's address, which is missing (DOMAIN=api.example.com); run: make install HOST=h DOMAIN=api.example.com ACME_EMAIL=you@example.com ACME_CA=https://ca.example/dir (nothing was sent)"
        );
        // A root without its CA would be taken for Let's Encrypt's: refused here.
        assert_eq!(
            refused(fr(&[
                ("HOST", "h"),
                ("DOMAIN", "api.example.com"),
                ("ACME_EMAIL", "o@example.com"),
                ("ACME_CA_ROOT", "root.pem")
            ])),
            "ACME_CA_ROOT is the root of ACME_CA's HTTPS: give ACME_CA too, or drop ACME_CA_ROOT (for Let's Encrypt); run: make install HOST=h DOMAIN=api.example.com ACME_EMAIL=o@example.com (nothing was sent)"
        );
        assert!(refused(fr(&[
            ("HOST", "h"),
            ("DOMAIN", "api.example.com"),
            ("ACME_CA_ROOT", "root.pem")
        ]))
        .ends_with("run: make install HOST=h DOMAIN=api.example.com ACME_EMAIL=you@example.com (nothing was sent)"));
        assert!(fr(&[
            ("HOST", "h"),
            ("DOMAIN", "api.example.com"),
            ("ACME_EMAIL", "o@example.com"),
            ("ACME_CA", "https://ca.example/dir"),
            ("ACME_CA_ROOT", "root.pem")
        ])
        .is_ok());
    }

    /// The host's own rules refuse, with its reason and the whole command, the bad value
    /// replaced by a placeholder.
    #[test]
    fn hostile_front_values_are_refused_by_the_host_s_rules() {
        let acme = |d: &str, e: &str, ca: &str| {
            let mut p = vec![("HOST", "root@app1"), ("DOMAIN", d), ("ACME_EMAIL", e)];
            if !ca.is_empty() {
                p.push(("ACME_CA", ca));
            }
            fr(&p)
        };
        assert!(refused(acme(
            "api.example.com\nimport /etc/shadow",
            "o@example.com",
            ""
        ))
        .contains("it has a newline"));
        assert!(refused(acme("localhost", "o@example.com", "")).contains("at least two labels"));
        assert!(refused(acme("10.0.0.1", "o@example.com", "")).contains("IP address"));
        assert_eq!(
            refused(acme("api.example.com", "o@x.com\"; $(id)", "")),
            "ACME_EMAIL=\"o@x.com\\\"; $(id)\" is refused: it has '\"' (letters, digits and . _ % + - @ only); run: make install HOST=root@app1 DOMAIN=api.example.com ACME_EMAIL=you@example.com (nothing was sent)"
        );
        assert_eq!(
            refused(acme(
                "api.example.com",
                "o@example.com",
                "http://ca.example/dir"
            )),
            "ACME_CA=\"http://ca.example/dir\" is refused: an ACME directory is reached over https:// only; run: make install HOST=root@app1 DOMAIN=api.example.com ACME_EMAIL=o@example.com ACME_CA=https://ca.example.com/acme/directory (nothing was sent)"
        );
        assert!(
            refused(acme("api.example.com", "o@example.com", "https://ca/{$X}"))
                .starts_with("ACME_CA=")
        );
        // Uppercase is the same name.
        let ok = acme(
            "API.Example.com",
            "o@example.com",
            "https://127.0.0.1:14000/dir",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            ok.words("/tmp/tribist-install.AbC123"),
            [
                "--domain",
                "API.Example.com",
                "--acme-email",
                "o@example.com",
                "--acme-ca",
                "https://127.0.0.1:14000/dir"
            ]
        );
    }

    #[test]
    fn front_files_are_checked_as_the_host_checks_them() {
        use crate::host::front_plan::Pem;
        let env = Env::from_pairs(&[
            ("HOST", "h"),
            ("DOMAIN", "api.example.com"),
            ("CERT_FILE", "c.pem"),
            ("KEY_FILE", "k.pem"),
            ("DATABASE_URL_FILE", "db"),
        ]);
        let cert = crate::host::x509::tests::SAN_API.as_bytes();
        let key = b"-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n";
        let p = std::path::Path::new("c.pem");
        assert_eq!(
            front_file("CERT_FILE", p, Some(cert), Pem::Certificate, &env),
            Ok(())
        );
        assert_eq!(front_file("KEY_FILE", p, Some(key), Pem::Key, &env), Ok(()));
        let m = refused(front_file(
            "CERT_FILE",
            p,
            Some(key),
            Pem::Certificate,
            &env,
        ));
        assert!(
            m.starts_with("CERT_FILE=c.pem: it is not a PEM certificate"),
            "{m}"
        );
        assert!(m.ends_with("; give the right file; run: make install HOST=h DOMAIN=api.example.com CERT_FILE=path/to/fullchain.pem KEY_FILE=k.pem DATABASE_URL_FILE=db (nothing was sent)"), "{m}");
        assert!(!m.contains("MIIE"), "nothing of a key is shown");
        let m = refused(front_file("KEY_FILE", p, Some(cert), Pem::Key, &env));
        assert!(m.contains("not an unencrypted PEM private key"), "{m}");
        assert!(m.contains(" KEY_FILE=path/to/key.pem "), "{m}");
        assert!(
            refused(front_file("KEY_FILE", p, None, Pem::Key, &env)).contains("larger than 64 KiB")
        );
        // A certificate for other names, for none (only a CN), or expired, is refused.
        {
            use crate::host::x509::tests::{EXPIRED, NO_SAN, OTHER};
            let env = Env::from_pairs(&[
                ("HOST", "h"),
                ("DOMAIN", "api.example.com"),
                ("CERT_FILE", "ocert.pem"),
                ("KEY_FILE", "k.pem"),
            ]);
            let o = std::path::Path::new("ocert.pem");
            let c = |b: &[u8]| refused(front_file("CERT_FILE", o, Some(b), Pem::Certificate, &env));
            assert_eq!(
                c(OTHER.as_bytes()),
                "CERT_FILE=ocert.pem is a certificate for other.test, www.other.test, not for DOMAIN=api.example.com: give the certificate for api.example.com (its subjectAltName), or DOMAIN=other.test; run: make install HOST=h DOMAIN=api.example.com CERT_FILE=path/to/fullchain.pem KEY_FILE=k.pem (nothing was sent)"
            );
            assert!(c(NO_SAN.as_bytes()).contains("without subjectAltName"));
            assert!(c(EXPIRED.as_bytes()).contains("expired on 2020-01-02 00:00 UTC"));
            assert!(
                c(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
                    .starts_with("CERT_FILE=ocert.pem cannot be read as a certificate: ")
            );
            // ACME_CA_ROOT is a CA's root, not a certificate for DOMAIN: PEM is enough.
            assert_eq!(
                front_file(
                    "ACME_CA_ROOT",
                    o,
                    Some(OTHER.as_bytes()),
                    Pem::Certificate,
                    &env
                ),
                Ok(())
            );
        }
        let env = Env::from_pairs(&[
            ("HOST", "h"),
            ("DOMAIN", "api.example.com"),
            ("ACME_EMAIL", "o@example.com"),
            ("ACME_CA", "https://ca.example/dir"),
            ("ACME_CA_ROOT", "r.pem"),
        ]);
        assert!(refused(front_file(
            "ACME_CA_ROOT",
            p,
            Some(key),
            Pem::Certificate,
            &env
        ))
        .ends_with(
            " ACME_CA=https://ca.example/dir ACME_CA_ROOT=path/to/root.pem (nothing was sent)"
        ));
        assert!(loopback_listen("127.0.0.1:8383") && loopback_listen("[::1]:1"));
        assert!(!loopback_listen("0.0.0.0:8383") && !loopback_listen("[::]:1"));
        assert_eq!(around_the_front("127.0.0.2:9000"), None);
        assert_eq!(
            around_the_front("0.0.0.0:9000").as_deref(),
            Some("warning: LISTEN=0.0.0.0:9000 is not a loopback address: clients can reach the service around the front (plain HTTP, none of its limits); LISTEN=127.0.0.1:9000 keeps it behind the front")
        );
    }
}
