//! Configuration from the environment, validated once at start.
//!
//! The server reads nothing else at run time: a bad or missing value stops it here with exit 2
//! and one line naming the variable and what to fix. Parsing takes a lookup function instead of
//! reading `std::env` directly, so every rule is unit-tested without touching the process.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use crate::error::Error;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8383";
pub const DEFAULT_WORKERS: usize = 16;
pub const DEFAULT_DB_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_KEEPALIVE_MAX: Duration = Duration::from_secs(600);
/// TRIBIST_KEEPALIVE_MAX is a policy cap on a connection's age, in minutes: shorter, it would
/// make clients that keep their connections reconnect over and over.
pub const MIN_KEEPALIVE_MAX: Duration = Duration::from_secs(60);
/// Longer than the idle timeouts proxies and load balancers use for their upstream
/// connections (60 s is the usual default: nginx, AWS ALB), so that they close first: a server
/// closing an idle connection can cross a request the proxy sends on it at that moment.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(75);
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
const MAX_WORKERS: usize = 256;

/// `server --help` before its variables (crate::settings describes each).
const HELP_HEAD: &str = "\
tribist API server: GET /health checks PostgreSQL, GET /livez checks the process only.

usage: server [--env-file FILE]       serve
       server --check-config [FILE]  check the configuration (FILE, or the environment)
                                     and that the database answers; exit 0 if it does,
                                     2 bad configuration, 4 the database refused the
                                     settings (definite: authentication, unknown database
                                     or role, TLS certificate), 5 it did not answer
                                     (transient: starting, down, unreachable, timeout)
       server --print-config [FILE]  print the effective value of every setting, secrets
                                     masked (exit 2 if the configuration is bad)
       server --describe             print what this binary is and the features the deploy
                                     kit relies on, as one line of JSON (docs/server.md)
       server --help | --version

FILE is in systemd's EnvironmentFile= format (/etc/tribist/env); variables set in the
environment override the file's.

Configuration comes from the environment:
";

/// `server --help` after its variables.
const HELP_TAIL: &str = "
On start the server writes its pid to ./PID; SIGTERM or SIGINT drains in-flight requests,
removes ./PID and exits 0. Exit codes: 1 runtime failure, 2 bad configuration, 3 another
server already runs in this directory; 4 and 5 as --check-config above.
";

/// Help text for `server --help`; it is also the reference of every variable, whose lines
/// come from `settings::SETTINGS`.
pub fn help() -> String {
    format!("{HELP_HEAD}{}{HELP_TAIL}", crate::settings::help())
}

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub workers: usize,
    pub db: DbTarget,
    pub db_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub keepalive_max: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub log_level: log::LevelFilter,
    /// Where to write the address listened on, for whoever started the server
    /// (`TRIBIST_ADDRESS_FILE`, address_file.rs); not a setting of the service.
    pub address_file: Option<std::path::PathBuf>,
}

/// The database to check, with a description that never contains the password.
#[derive(Clone)]
pub struct DbTarget {
    pub config: postgres::Config,
    /// `sslmode`/`sslrootcert` as libpq means them, and the TLS connector they make.
    pub tls: crate::tls::Settings,
    /// `user@host:port/dbname`, safe to log and to show in `/health`.
    pub display: String,
}

impl std::fmt::Debug for DbTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display)
    }
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Config, Error> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `get`, which returns a variable's value if set.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, Error> {
        let nonempty = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let listen = match nonempty("TRIBIST_LISTEN") {
            None => DEFAULT_LISTEN
                .parse()
                .map_err(|_| bad("TRIBIST_LISTEN", "bad default"))?,
            Some(v) => v.trim().parse().map_err(|_| {
                bad(
                    "TRIBIST_LISTEN",
                    format!("{v:?} is not an IP:port address such as 127.0.0.1:8383"),
                )
            })?,
        };
        let workers = match nonempty("TRIBIST_WORKERS") {
            None => DEFAULT_WORKERS,
            Some(v) => match v.trim().parse::<usize>() {
                Ok(n) if (1..=MAX_WORKERS).contains(&n) => n,
                _ => {
                    return Err(bad(
                        "TRIBIST_WORKERS",
                        format!("{v:?} is not a whole number from 1 to {MAX_WORKERS}"),
                    ))
                }
            },
        };
        let db_timeout = duration_var(&nonempty, "TRIBIST_DB_TIMEOUT", DEFAULT_DB_TIMEOUT)?;
        let shutdown_timeout = duration_var(
            &nonempty,
            "TRIBIST_SHUTDOWN_TIMEOUT",
            DEFAULT_SHUTDOWN_TIMEOUT,
        )?;
        let max_header_bytes = match nonempty("TRIBIST_MAX_HEADER_BYTES") {
            None => DEFAULT_MAX_HEADER_BYTES,
            Some(v) => match v.trim().parse::<usize>() {
                Ok(n) if (1024..=1 << 20).contains(&n) => n,
                _ => {
                    return Err(bad(
                        "TRIBIST_MAX_HEADER_BYTES",
                        format!("{v:?} is not a whole number of bytes from 1024 to 1048576"),
                    ))
                }
            },
        };
        let keepalive_max =
            duration_var(&nonempty, "TRIBIST_KEEPALIVE_MAX", DEFAULT_KEEPALIVE_MAX)?;
        if keepalive_max < MIN_KEEPALIVE_MAX {
            return Err(bad(
                "TRIBIST_KEEPALIVE_MAX",
                format!(
                    "{keepalive_max:?} is shorter than 1min: it caps a connection's age (e.g. \
                     10min, the default) and no longer keeps connections from waiting, which \
                     the server sees to itself; remove it or set minutes"
                ),
            ));
        }
        let idle_timeout = duration_var(&nonempty, "TRIBIST_IDLE_TIMEOUT", DEFAULT_IDLE_TIMEOUT)?;
        if idle_timeout < Duration::from_secs(1) {
            return Err(bad(
                "TRIBIST_IDLE_TIMEOUT",
                format!("{idle_timeout:?} is shorter than 1s"),
            ));
        }
        let log_level = match nonempty("TRIBIST_LOG_LEVEL") {
            None => log::LevelFilter::Info,
            Some(v) => match log::LevelFilter::from_str(v.trim()) {
                Ok(l) if l != log::LevelFilter::Off => l,
                _ => {
                    return Err(bad(
                        "TRIBIST_LOG_LEVEL",
                        format!("{v:?} is not one of error, warn, info, debug, trace"),
                    ))
                }
            },
        };
        let db = db_target(&get, db_timeout)?;
        let address_file = nonempty(crate::address_file::ENV).map(std::path::PathBuf::from);
        Ok(Config {
            listen,
            workers,
            db,
            db_timeout,
            shutdown_timeout,
            keepalive_max,
            idle_timeout,
            max_header_bytes,
            log_level,
            address_file,
        })
    }
}

impl Config {
    /// One `NAME=value` line per setting, as this configuration has it: what `get` set (the
    /// database password masked), else the default, marked so. PG* variables appear only when
    /// set, and only matter without DATABASE_URL.
    pub fn effective(&self, get: impl Fn(&str) -> Option<String>) -> Vec<String> {
        let set = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let mut lines = Vec::new();
        let settings = crate::settings::SETTINGS.iter();
        for name in settings
            .filter(|s| s.source != crate::settings::Source::Kit)
            .map(|s| s.name)
        {
            let effective = match name {
                "TRIBIST_LISTEN" => Some(self.listen.to_string()),
                "TRIBIST_WORKERS" => Some(self.workers.to_string()),
                "TRIBIST_DB_TIMEOUT" => Some(format!("{:?}", self.db_timeout)),
                "TRIBIST_SHUTDOWN_TIMEOUT" => Some(format!("{:?}", self.shutdown_timeout)),
                "TRIBIST_KEEPALIVE_MAX" => Some(format!("{:?}", self.keepalive_max)),
                "TRIBIST_IDLE_TIMEOUT" => Some(format!("{:?}", self.idle_timeout)),
                "TRIBIST_MAX_HEADER_BYTES" => Some(self.max_header_bytes.to_string()),
                "TRIBIST_LOG_LEVEL" => Some(self.log_level.to_string().to_lowercase()),
                _ => None,
            };
            match (set(name), effective) {
                (Some(v), Some(e)) if v.trim() == e => lines.push(format!("{name}={e}")),
                (Some(v), Some(e)) => lines.push(format!("{name}={e} (set as {:?})", v.trim())),
                (Some(v), None) => lines.push(format!("{name}={}", mask_secret(name, &v))),
                (None, Some(e)) => lines.push(format!("{name}={e} (default)")),
                (None, None) if name == "DATABASE_URL" => {
                    lines.push("DATABASE_URL= (unset: the PG* variables apply)".into())
                }
                (None, None) => {}
            }
        }
        lines
    }
}

/// `value` of variable `name` with its password replaced by `***`: all of PGPASSWORD; in a
/// `postgres://` URL the user info's password (everything from its first `:` to the last `@`
/// of the string, so that no reading of where a password with `@`, `/` or `?` ends can leave
/// part of it) and every `password=` query parameter; in a `key=value` string the value of
/// `password`, quoted or with backslash escapes. Masking more than needed is fine; less is not.
pub fn mask_secret(name: &str, value: &str) -> String {
    use crate::settings::Secret;
    match crate::settings::get(name).map(|s| s.secret) {
        Some(Secret::Whole) => return "***".into(),
        Some(Secret::Password) => {}
        Some(Secret::No) | None => return value.to_string(),
    }
    for scheme in ["postgres://", "postgresql://"] {
        if let Some(rest) = value.strip_prefix(scheme) {
            let rest = match rest.rfind('@') {
                Some(at) => match rest[..at].find(':') {
                    Some(colon) => format!("{}***{}", &rest[..=colon], &rest[at..]),
                    None => rest.to_string(),
                },
                None => rest.to_string(),
            };
            return format!("{scheme}{}", mask_query_passwords(&rest));
        }
    }
    mask_keyword_password(value)
}

/// Every `password=…` parameter after the `?` of a URL, up to the next `&`.
fn mask_query_passwords(url: &str) -> String {
    let Some(q) = url.find('?') else {
        return url.to_string();
    };
    let params: Vec<String> = url[q + 1..]
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => p.to_string(),
        })
        .collect();
    format!("{}?{}", &url[..q], params.join("&"))
}

/// `password=…` in a libpq `key=value` string, the value quoted ('…' with \ escapes) or not
/// (ending at the first unescaped blank).
fn mask_keyword_password(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(pos) = rest.find("password") {
        let before_ok = pos == 0 || rest[..pos].ends_with(char::is_whitespace);
        let after = rest[pos + "password".len()..].trim_start();
        out.push_str(&rest[..pos + "password".len()]);
        rest = &rest[pos + "password".len()..];
        if !before_ok || !after.starts_with('=') {
            continue;
        }
        let skipped = rest.len() - after.len();
        out.push_str(&rest[..skipped + 1]);
        let val = after[1..].trim_start();
        out.push_str(&after[1..][..after[1..].len() - val.len()]);
        let quoted = val.starts_with('\'');
        let mut end = val.len();
        let mut escaped = false;
        for (i, c) in val.char_indices().skip(usize::from(quoted)) {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '\'') if quoted => {
                    end = i + 1;
                    break;
                }
                (false, c) if !quoted && c.is_whitespace() => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        out.push_str("***");
        rest = &val[end..];
    }
    out.push_str(rest);
    out
}

fn bad(var: &'static str, problem: impl Into<String>) -> Error {
    Error::Config {
        var,
        problem: problem.into(),
    }
}

fn duration_var(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: Duration,
) -> Result<Duration, Error> {
    match get(var) {
        None => Ok(default),
        Some(v) => parse_duration(&v).ok_or_else(|| {
            bad(
                var,
                format!("{v:?} is not a duration from 1ms to 1h such as 2s, 1.5s or 500ms"),
            )
        }),
    }
}

/// Parses `500ms`, `2s`, `1.5s` or a bare number of seconds; 1 ms to 1 hour.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix("min") {
        (n, 60.0)
    } else if let Some(n) = text.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number.trim().parse().ok()?;
    let secs = value * scale;
    if !secs.is_finite() || !(0.001..=3600.0).contains(&secs) {
        return None;
    }
    Some(Duration::from_secs_f64(secs))
}

/// Builds the PostgreSQL target from DATABASE_URL, or from the libpq PG* variables.
fn db_target(get: &impl Fn(&str) -> Option<String>, timeout: Duration) -> Result<DbTarget, Error> {
    let url = get("DATABASE_URL").filter(|v| !v.trim().is_empty());
    let (mut config, var, taken) = match url {
        Some(url) => {
            let (rest, taken) =
                crate::tls::split_params(url.trim()).map_err(|e| bad("DATABASE_URL", e))?;
            // The crate's own error can quote the string; never echo it (it may hold a password).
            let config = postgres::Config::from_str(&rest).map_err(|_| {
                bad(
                    "DATABASE_URL",
                    "is not a valid PostgreSQL connection string; use \
                     postgres://user:password@host:5432/dbname or \
                     host=... user=... password=... dbname=...",
                )
            })?;
            // Whatever sslmode the crate found itself is one the split above did not see: the
            // two read the string differently, and the crate's would override ours.
            if config.get_ssl_mode() != postgres::config::SslMode::Prefer {
                return Err(bad(
                    "DATABASE_URL",
                    "has an sslmode that cannot be read unambiguously (an unusual character \
                     before it?); write ?sslmode=MODE in a URL, or sslmode=MODE as a word of its \
                     own",
                ));
            }
            (config, "DATABASE_URL", taken)
        }
        None => (from_libpq_vars(get)?, "PGHOST", Default::default()),
    };
    // As in libpq, PGSSLMODE and PGSSLROOTCERT are the defaults of what the string leaves out.
    let nonempty = |name: &str| get(name).filter(|v| !v.trim().is_empty());
    let (sslmode, mode_var) = match (taken.sslmode, nonempty("PGSSLMODE")) {
        (Some(m), _) => (Some(m), var),
        (None, env) => (env, "PGSSLMODE"),
    };
    let (sslrootcert, root_var) = match (taken.sslrootcert, nonempty("PGSSLROOTCERT")) {
        (Some(r), _) => (Some(r), var),
        (None, env) => (env, "PGSSLROOTCERT"),
    };
    let tls = crate::tls::Settings::new(sslmode.as_deref(), sslrootcert.as_deref()).map_err(
        |(param, e)| match param {
            crate::tls::Param::Mode => bad(mode_var, e),
            crate::tls::Param::RootCert => bad(root_var, e),
        },
    )?;
    let hostaddrs: Vec<String> = config
        .get_hostaddrs()
        .iter()
        .map(|a| a.to_string())
        .collect();
    if config.get_hosts().is_empty() {
        if hostaddrs.is_empty() {
            config.host("/var/run/postgresql");
        } else {
            // The crate would verify TLS against no name at all: the address is the name.
            for addr in &hostaddrs {
                config.host(addr);
            }
        }
    }
    let unix_with_addr = config
        .get_hosts()
        .iter()
        .zip(&hostaddrs)
        .any(|(h, _)| matches!(h, postgres::config::Host::Unix(_)));
    if unix_with_addr {
        return Err(bad(
            var,
            "pairs a socket directory (host=/…) with a hostaddr; with hostaddr, host is the \
             server's name for TLS: give a host name or leave host out",
        ));
    }
    if config.get_user().is_none() {
        return Err(bad(
            var,
            "names no database user; add one (user=... or postgres://USER@...)",
        ));
    }
    if config.get_ports().contains(&0) {
        return Err(bad(
            var,
            "has port 0; use the PostgreSQL port, usually 5432",
        ));
    }
    // libpq never encrypts over a Unix socket, whatever sslmode says.
    let all_unix = hostaddrs.is_empty()
        && config
            .get_hosts()
            .iter()
            .all(|h| matches!(h, postgres::config::Host::Unix(_)));
    config.ssl_mode(if all_unix {
        postgres::config::SslMode::Disable
    } else {
        tls.mode.for_client()
    });
    let display = describe(&config);
    harden(&mut config, timeout);
    Ok(DbTarget {
        config,
        tls,
        display,
    })
}

fn from_libpq_vars(get: &impl Fn(&str) -> Option<String>) -> Result<postgres::Config, Error> {
    let var = |name: &str| get(name).filter(|v| !v.is_empty());
    let any_set = ["PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE"]
        .iter()
        .any(|n| var(n).is_some());
    if !any_set {
        return Err(bad(
            "DATABASE_URL",
            "is not set (nor any of PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE); set it to \
             postgres://user:password@host:5432/dbname",
        ));
    }
    let mut config = postgres::Config::new();
    if let Some(host) = var("PGHOST") {
        config.host(&host);
    }
    if let Some(port) = var("PGPORT") {
        let port: u16 = port
            .trim()
            .parse()
            .map_err(|_| bad("PGPORT", format!("{port:?} is not a TCP port number")))?;
        config.port(port);
    }
    if let Some(user) = var("PGUSER").or_else(|| var("USER")) {
        config.user(&user);
    }
    if let Some(password) = var("PGPASSWORD") {
        config.password(password);
    }
    if let Some(db) = var("PGDATABASE") {
        config.dbname(&db);
    }
    Ok(config)
}

/// `user@host:port/dbname`: enough to find the database, never the password.
fn describe(config: &postgres::Config) -> String {
    use postgres::config::Host;
    let user = config.get_user().unwrap_or("?");
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "?".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or(user);
    format!("{user}@{host}:{port}/{db}")
}

/// Bounds what the client can bound itself: TCP connect, dead peers, and (server-side) queries.
/// Start-up/authentication and a peer that accepts but never answers are bounded by the
/// caller (see `db.rs`).
fn harden(config: &mut postgres::Config, timeout: Duration) {
    let ms = timeout.as_millis().max(1);
    let options = match config.get_options() {
        Some(existing) if !existing.trim().is_empty() => {
            format!("{existing} -c statement_timeout={ms}")
        }
        _ => format!("-c statement_timeout={ms}"),
    };
    config
        .options(&options)
        .connect_timeout(timeout)
        .tcp_user_timeout(timeout.max(Duration::from_secs(1)))
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .keepalives_interval(Duration::from_secs(2))
        .keepalives_retries(3);
    if config.get_application_name().is_none() {
        config.application_name("tribist");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)]) -> Result<Config, Error> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    fn var_of(err: Error) -> &'static str {
        match err {
            Error::Config { var, .. } => var,
            other => panic!("expected a config error, got {other}"),
        }
    }

    #[test]
    fn defaults_with_only_a_url() {
        let c = parse(&[("DATABASE_URL", "postgres://u:secret@db.example:5433/app")]).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.workers, DEFAULT_WORKERS);
        assert_eq!(c.db_timeout, DEFAULT_DB_TIMEOUT);
        assert_eq!(c.shutdown_timeout, DEFAULT_SHUTDOWN_TIMEOUT);
        assert_eq!(c.db.display, "u@db.example:5433/app");
        assert!(!format!("{:?}", c).contains("secret"));
        assert_eq!(c.db.config.get_connect_timeout(), Some(&DEFAULT_DB_TIMEOUT));
        assert_eq!(c.db.config.get_options(), Some("-c statement_timeout=2000"));
    }

    #[test]
    fn key_value_form_and_existing_options() {
        let c = parse(&[(
            "DATABASE_URL",
            "host=/run/postgresql user=t dbname=d options='-c search_path=x'",
        )])
        .unwrap();
        assert_eq!(c.db.display, "t@/run/postgresql:5432/d");
        assert_eq!(
            c.db.config.get_options(),
            Some("-c search_path=x -c statement_timeout=2000")
        );
    }

    #[test]
    fn libpq_variables_when_url_unset() {
        let c = parse(&[
            ("PGHOST", "127.0.0.1"),
            ("PGPORT", "6543"),
            ("PGUSER", "pg"),
            ("PGPASSWORD", "pw"),
            ("PGDATABASE", "app"),
        ])
        .unwrap();
        assert_eq!(c.db.display, "pg@127.0.0.1:6543/app");
        assert_eq!(c.db.config.get_password(), Some(&b"pw"[..]));
        assert_eq!(
            var_of(parse(&[("PGHOST", "h"), ("PGUSER", "u"), ("PGPORT", "x")]).unwrap_err()),
            "PGPORT"
        );
    }

    #[test]
    fn missing_database_is_an_error_naming_the_variable() {
        assert_eq!(var_of(parse(&[]).unwrap_err()), "DATABASE_URL");
        assert_eq!(
            var_of(parse(&[("DATABASE_URL", "postgres://[bad")]).unwrap_err()),
            "DATABASE_URL"
        );
        assert_eq!(
            var_of(parse(&[("DATABASE_URL", "host=h dbname=d")]).unwrap_err()),
            "DATABASE_URL"
        );
    }

    #[test]
    fn bad_url_message_does_not_echo_the_password() {
        let err = parse(&[("DATABASE_URL", "postgres://u:hunter2@h:notaport/d")]).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn each_bad_value_names_its_variable() {
        let url = ("DATABASE_URL", "postgres://u@h/d");
        for (var, value) in [
            ("TRIBIST_LISTEN", "localhost"),
            ("TRIBIST_WORKERS", "0"),
            ("TRIBIST_WORKERS", "1000"),
            ("TRIBIST_WORKERS", "four"),
            ("TRIBIST_DB_TIMEOUT", "0s"),
            ("TRIBIST_DB_TIMEOUT", "2 minutes"),
            ("TRIBIST_SHUTDOWN_TIMEOUT", "-1"),
            ("TRIBIST_KEEPALIVE_MAX", "50ms"),
            ("TRIBIST_KEEPALIVE_MAX", "59s"),
            ("TRIBIST_IDLE_TIMEOUT", "500ms"),
            ("TRIBIST_IDLE_TIMEOUT", "2h"),
            ("TRIBIST_LOG_LEVEL", "loud"),
            ("TRIBIST_LOG_LEVEL", "off"),
        ] {
            let err = parse(&[url, (var, value)]).unwrap_err();
            assert_eq!(var_of(err), var, "{var}={value}");
        }
    }

    #[test]
    fn connection_lifetimes_default_to_minutes_and_take_minutes() {
        let url = ("DATABASE_URL", "postgres://u@h/d");
        let c = parse(&[url]).unwrap();
        assert_eq!(c.keepalive_max, Duration::from_secs(600));
        assert_eq!(c.idle_timeout, Duration::from_secs(75));
        let c = parse(&[
            url,
            ("TRIBIST_KEEPALIVE_MAX", "1min"),
            ("TRIBIST_IDLE_TIMEOUT", "1s"),
        ])
        .unwrap();
        assert_eq!(c.keepalive_max, Duration::from_secs(60));
        assert_eq!(c.idle_timeout, Duration::from_secs(1));
        let err = parse(&[url, ("TRIBIST_KEEPALIVE_MAX", "50ms")]).unwrap_err();
        assert!(err.to_string().contains("shorter than 1min"), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), None);
        assert_eq!(parse_duration("2h"), None);
        // The error message offers 1h as the bound: it must parse.
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("30min"), Some(Duration::from_secs(1800)));
        assert_eq!(parse_duration("NaN"), None);
    }

    #[test]
    fn secrets_are_masked_in_both_forms_and_nothing_else() {
        assert_eq!(
            mask_secret(
                "DATABASE_URL",
                "postgres://u:p%40ss@h:5432/d?sslmode=require"
            ),
            "postgres://u:***@h:5432/d?sslmode=require"
        );
        assert_eq!(
            mask_secret("DATABASE_URL", "postgres://u@h/d"),
            "postgres://u@h/d"
        );
        assert_eq!(
            mask_secret("DATABASE_URL", "host=h user=u password='a b\\' c' dbname=d"),
            "host=h user=u password=*** dbname=d"
        );
        assert_eq!(
            mask_secret("DATABASE_URL", "host=h password = secret dbname=d"),
            "host=h password = *** dbname=d"
        );
        // Passwords with @ / ? in them, and a password given as a query parameter.
        for (url, shown) in [
            ("postgres://u:pa/ss@h/d", "postgres://u:***@h/d"),
            ("postgres://u:pa?ss@h/d", "postgres://u:***@h/d"),
            (
                "postgresql://u:p@ss@h:5432/d",
                "postgresql://u:***@h:5432/d",
            ),
            (
                "postgres://u@h/d?sslmode=require&password=secret",
                "postgres://u@h/d?sslmode=require&password=***",
            ),
        ] {
            assert_eq!(mask_secret("DATABASE_URL", url), shown);
        }
        assert_eq!(
            mask_secret("DATABASE_URL", "host=h password=a\\ b dbname=d"),
            "host=h password=*** dbname=d"
        );
        assert_eq!(
            mask_secret("DATABASE_URL", "host=h password=x://y dbname=d"),
            "host=h password=*** dbname=d"
        );
        assert_eq!(mask_secret("PGPASSWORD", "secret"), "***");
        assert_eq!(mask_secret("PGUSER", "tribist"), "tribist");
    }

    #[test]
    fn effective_configuration_names_defaults_and_masks_the_password() {
        let vars = [
            ("DATABASE_URL", "postgres://u:secret@h/d"),
            ("TRIBIST_WORKERS", "8"),
        ];
        let get = |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        };
        let c = Config::from_lookup(get).unwrap();
        let lines = c.effective(get).join("\n");
        assert!(
            lines.contains("DATABASE_URL=postgres://u:***@h/d"),
            "{lines}"
        );
        assert!(!lines.contains("secret"), "{lines}");
        assert!(lines.contains("TRIBIST_WORKERS=8\n"), "{lines}");
        assert!(lines.contains("TRIBIST_DB_TIMEOUT=2s (default)"), "{lines}");
        assert!(
            lines.contains("TRIBIST_LISTEN=127.0.0.1:8383 (default)"),
            "{lines}"
        );
        assert!(!lines.contains("PGHOST"), "{lines}");
    }
}
