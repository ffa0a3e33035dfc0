//! The service's settings, in one place for both binaries: their names, who may set each
//! (`make config`, the database URL's file, `make install LISTEN=`), which are secret, what
//! each means; the listen-address rule; and writing `/etc/tribist/env`.
//!
//! Why: the server (`config.rs`: `--help`, `--print-config`), the host program's `config`
//! and `install`, and deploy.sh's `sed` each had their own copy, so a setting added to one
//! was unknown to another, and the `sed` edits ignored continuation lines (a `NAME=…\`
//! removed left its next line to be read as a setting). Adding a setting is now one row of
//! [`SETTINGS`].
//!
//! Writing follows reading: [`edit`] removes a variable by the exact bytes `envfile::parse`
//! says its assignment spans (continuation lines and quoted newlines included), appends
//! [`env_line`]s (double quotes, with `\ " $ \`` escaped), and then parses its own result and
//! refuses it unless every other variable reads as before and every value written reads
//! back byte for byte.

use crate::envfile;

/// Who sets a variable, and so what `make config` may do with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `make config SET=NAME=VALUE` / `UNSET=NAME` (`tribist-host config --set/--unset`).
    Config,
    /// The database URL: only from a file (`DATABASE_URL_FILE=`), never a command line.
    UrlFile,
    /// A password the kit never takes on a command line; set by editing the file by hand.
    ByHand,
    /// The address: tribist.socket's, set by `make install LISTEN=ADDR:PORT`, never the env
    /// file's (see [`LISTEN`]).
    Listen,
    /// Not a setting of the service: the kit passes it to a binary it runs itself.
    Kit,
}

/// How a value is shown by `server --print-config` and `make config`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Secret {
    No,
    /// A connection string: its password masked, the rest shown.
    Password,
    /// Masked whole.
    Whole,
}

/// One variable the server reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setting {
    pub name: &'static str,
    pub source: Source,
    pub secret: Secret,
    /// Its lines in `server --help` (empty: described with another, as the PG* variables are
    /// under DATABASE_URL).
    pub help: &'static str,
}

impl Setting {
    /// Whether `make config` may set or unset it.
    pub fn settable(&self) -> bool {
        self.source == Source::Config
    }
}

const fn s(name: &'static str, source: Source, secret: Secret, help: &'static str) -> Setting {
    Setting {
        name,
        source,
        secret,
        help,
    }
}

/// The address variable: the server binds it only when systemd passes no socket. On a host
/// the address is tribist.socket's alone, so the env file must not set it (install refuses
/// such a file, `make config` never writes it).
pub const LISTEN: &str = "TRIBIST_LISTEN";
pub const DATABASE_URL: &str = "DATABASE_URL";

use Secret::{No, Password, Whole};
use Source::{ByHand, Config, Kit, Listen, UrlFile};

/// Every variable, in `server --help`'s and `--print-config`'s order.
#[rustfmt::skip]
pub const SETTINGS: &[Setting] = &[
    s(DATABASE_URL, UrlFile, Password, "\
PostgreSQL connection, URL (postgres://user:pass@host:5432/db)
or key=value form (host=/run/postgresql user=tribist dbname=tribist).
When unset, the libpq variables PGHOST, PGPORT, PGUSER, PGPASSWORD
and PGDATABASE are used instead (PGHOST defaults to
/var/run/postgresql, PGUSER to $USER).
TLS as libpq means it: sslmode=disable|allow|prefer (default)|
require|verify-ca|verify-full and sslrootcert=PATH|system in the
URL's parameters (PGSSLMODE, PGSSLROOTCERT with the PG* variables);
the verify modes use the system's CA store without sslrootcert."),
    s("PGHOST", Config, No, ""),
    s("PGPORT", Config, No, ""),
    s("PGUSER", Config, No, ""),
    s("PGPASSWORD", ByHand, Whole, ""),
    s("PGDATABASE", Config, No, ""),
    s("PGSSLMODE", Config, No, ""),
    s("PGSSLROOTCERT", Config, No, ""),
    s(LISTEN, Listen, No, "\
address to listen on            (default 127.0.0.1:8383)
when systemd passes no socket; under tribist.socket the
socket's address applies (make install LISTEN=ADDR:PORT)"),
    s("TRIBIST_WORKERS", Config, No, "request worker threads, 1-256   (default 16)"),
    s("TRIBIST_DB_TIMEOUT", Config, No, "bound on each database check    (default 2s; e.g. 500ms, 1.5s)"),
    s("TRIBIST_SHUTDOWN_TIMEOUT", Config, No, "bound on graceful shutdown      (default 10s)"),
    s("TRIBIST_KEEPALIVE_MAX", Config, No, "\
a keep-alive connection's first request this long ago, the
next answer says Connection: close (default 10min; 1min-1h)"),
    s("TRIBIST_IDLE_TIMEOUT", Config, No, "\
a connection that sent and received nothing this long is
closed (default 75s; 1s-1h)"),
    s("TRIBIST_MAX_HEADER_BYTES", Config, No, "\
a larger request header section is answered 431
(default 16384; 1024-1048576)"),
    s("TRIBIST_LOG_LEVEL", Config, No, "error, warn, info, debug, trace (default info)"),
    s(crate::address_file::ENV, Kit, No, "\
for the deploy kit, not a setting: once listening, write the
address listened on (127.0.0.1:PORT) to this file, atomically"),
];

/// The setting named `name`.
pub fn get(name: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.name == name)
}

/// The names `make config` may set or unset, in order.
pub fn settable() -> impl Iterator<Item = &'static str> {
    SETTINGS.iter().filter(|s| s.settable()).map(|s| s.name)
}

/// The variables section of `server --help`: each described setting, its name in a column
/// of 26 and its lines after it.
pub fn help() -> String {
    let mut out = String::new();
    for s in SETTINGS.iter().filter(|s| !s.help.is_empty()) {
        for (i, line) in s.help.lines().enumerate() {
            let name = if i == 0 { s.name } else { "" };
            out.push_str(&format!("  {name:<26}{line}\n"));
        }
    }
    out
}

/// Whether `s` is `IPv4:PORT` or `[IPv6]:PORT` with a port from 1 to 65535: the form
/// `make install LISTEN=` takes and tribist.socket's `ListenStream=` is written in.
pub fn valid_listen(s: &str) -> bool {
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    let port_ok = !port.is_empty()
        && port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit())
        && matches!(port.parse::<u32>(), Ok(1..=65535));
    let host_ok = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        (2..=45).contains(&inner.len())
            && inner
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
    } else {
        let parts: Vec<&str> = host.split('.').collect();
        parts.len() == 4
            && parts
                .iter()
                .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
    };
    port_ok && host_ok
}

/// The name an entry's key assigns, for editing: the key itself, or the name after
/// `export` (which systemd skips; the kit's edits remove such lines too, as deploy.sh's
/// did, so no stale `export NAME=` stays beside the real one).
fn assigned(key: &str) -> &str {
    match key.strip_prefix("export") {
        Some(rest) if rest.starts_with([' ', '\t']) => rest.trim_start(),
        _ => key,
    }
}

/// Whether env-file text assigns the address ([`LISTEN`], with or without `export`): the
/// address is tribist.socket's, and install refuses such a file.
pub fn sets_listen(text: &str) -> bool {
    envfile::parse(text)
        .entries
        .iter()
        .any(|e| assigned(&e.key) == LISTEN)
}

/// Whether systemd can carry `value` to the service exactly: no control character (a
/// newline would end it; systemd refuses the others). Being a `str`, it is UTF-8.
pub fn representable(value: &str) -> bool {
    !value.chars().any(|c| c < ' ' || c == '\x7f')
}

/// `NAME="VALUE"` with `\ " $ \`` escaped, and a newline: what systemd's `EnvironmentFile=`
/// reads back as exactly VALUE. None for a value it cannot carry ([`representable`]) or a
/// name that is not a variable's.
pub fn env_line(name: &str, value: &str) -> Option<String> {
    let name_ok = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !name_ok || !representable(value) {
        return None;
    }
    let mut line = String::with_capacity(name.len() + value.len() + 4);
    line.push_str(name);
    line.push_str("=\"");
    for c in value.chars() {
        if matches!(c, '\\' | '"' | '$' | '`') {
            line.push('\\');
        }
        line.push(c);
    }
    line.push_str("\"\n");
    Some(line)
}

/// Why [`edit`] wrote nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EditError {
    /// A value systemd cannot carry, or a name that is not a variable's.
    NotRepresentable { name: String },
    /// The result would not read as intended (what the file holds defeats the edit, e.g. an
    /// unterminated quote at its end): never written.
    WouldNotReadBack { name: String },
}

impl std::fmt::Display for EditError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EditError::NotRepresentable { name } => write!(
                f,
                "the value of {name} holds a control character (a newline, say): systemd cannot pass it on"
            ),
            EditError::WouldNotReadBack { name } => write!(
                f,
                "the file would not read back with {name} as written (an unterminated quote or a comment ending in a backslash at its end?)"
            ),
        }
    }
}

impl std::error::Error for EditError {}

/// `text` (an env file) without any assignment of the names in `unset` or `set`, with
/// `set`'s assignments appended in order. Checked by parsing the result: every variable not
/// named reads as before, those unset are gone, those set read back byte for byte.
pub fn edit(text: &str, unset: &[&str], set: &[(&str, &str)]) -> Result<String, EditError> {
    let names: Vec<&str> = unset
        .iter()
        .copied()
        .chain(set.iter().map(|(n, _)| *n))
        .collect();
    let before = envfile::parse(text);
    let mut kept = String::with_capacity(text.len());
    let mut from = 0;
    for e in &before.entries {
        if names.contains(&assigned(&e.key)) {
            kept.push_str(&text[from..e.span.start]);
            from = e.span.end;
        }
    }
    kept.push_str(&text[from..]);
    let mut lines = String::new();
    for (name, value) in set {
        lines.push_str(
            &env_line(name, value).ok_or_else(|| EditError::NotRepresentable {
                name: (*name).to_string(),
            })?,
        );
    }
    let mut want: Vec<(String, String)> = before
        .vars
        .iter()
        .filter(|(k, _)| !names.contains(&k.as_str()))
        .cloned()
        .collect();
    want.extend(set.iter().map(|(n, v)| (n.to_string(), v.to_string())));
    // A file that does not end its last line gets one; if its end still swallows what
    // follows (a comment continued by a backslash), one more newline ends that.
    let mut out = kept;
    if !out.is_empty() && !out.ends_with(['\n', '\r']) {
        out.push('\n');
    }
    for _ in 0..2 {
        let candidate = format!("{out}{lines}");
        if envfile::parse(&candidate).vars == want {
            return Ok(candidate);
        }
        out.push('\n');
    }
    Err(EditError::WouldNotReadBack {
        name: set
            .first()
            .map(|(n, _)| *n)
            .or(unset.first().copied())
            .unwrap_or("?")
            .to_string(),
    })
}

/// `text` with every secret's value replaced by `(masked)` (comments and the rest as they
/// are): what `make config` shows of a file when no binary can read it.
pub fn masked(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut from = 0;
    for e in &envfile::parse(text).entries {
        let name = assigned(&e.key);
        if get(name).is_some_and(|s| s.secret != Secret::No) {
            out.push_str(&text[from..e.span.start]);
            out.push_str(&e.key);
            out.push_str("=(masked)\n");
            from = e.span.end;
        }
    }
    out.push_str(&text[from..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Vec<(String, String)> {
        envfile::parse(text).vars
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    /// Values that need every escape, and those that need none.
    const HARD: &[&str] = &[
        "",
        "plain",
        "p$ \\ ' \" # %x ` $HOME ",
        "host=localhost dbname=tribist user=tribist password='p$ \\\\ \\' \" # %x ' ",
        "\\",
        "\\\\\"",
        "trailing\\",
        "$",
        "${X}",
        "#not a comment",
        ";",
        "  leading and trailing  ",
        "'single'",
        "\"double\"",
        "`cmd`",
        "ünïcödé €",
        "a=b=c",
        "postgres://u:p%40ss@h:5432/d?sslmode=verify-full&sslrootcert=/a b",
    ];

    #[test]
    fn every_value_written_reads_back_byte_for_byte() {
        for v in HARD {
            let line = env_line("V", v).unwrap();
            assert_eq!(read(&line), pairs(&[("V", v)]), "{line:?}");
            // Also after other content, and as the file's last line without its newline.
            let text = format!("# c\nA=1\n{}", line.trim_end_matches('\n'));
            assert_eq!(read(&text), pairs(&[("A", "1"), ("V", v)]), "{text:?}");
        }
        for v in HARD {
            let text = edit("A=1\n", &[], &[("V", v)]).unwrap();
            assert_eq!(read(&text), pairs(&[("A", "1"), ("V", v)]));
        }
    }

    /// Many values made of the characters that matter, each written into a file that already
    /// holds awkward assignments, then read back.
    #[test]
    fn generated_values_read_back_byte_for_byte() {
        const ABC: &[char] = &[
            '$', '\\', '"', '\'', '`', '#', ';', ' ', '=', 'a', 'Z', '{', '}', '%', 'é', '€',
        ];
        let base = "A=1\nB=\"two\nlines\"\nC=x\\\ny\n# note\n";
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..3000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 12) as usize;
            let v: String = (0..len)
                .map(|i| ABC[((seed >> (i * 4)) % ABC.len() as u64) as usize])
                .collect();
            let out = edit(base, &["C"], &[("B", &v), ("V", &v)]).unwrap();
            assert_eq!(
                read(&out),
                pairs(&[("A", "1"), ("B", &v), ("V", &v)]),
                "{v:?} in {out:?}"
            );
        }
    }

    #[test]
    fn what_systemd_cannot_carry_is_refused() {
        for bad in [
            "a\nb",
            "a\rb",
            "tab\there",
            "nul\0",
            "del\x7f",
            "esc\x1b[2J",
        ] {
            assert!(!representable(bad), "{bad:?}");
            assert_eq!(env_line("V", bad), None);
            assert_eq!(
                edit("", &[], &[("V", bad)]),
                Err(EditError::NotRepresentable { name: "V".into() })
            );
        }
        assert_eq!(env_line("1X", "v"), None);
        assert_eq!(env_line("A B", "v"), None);
        assert!(representable("ünïcödé"));
    }

    #[test]
    fn an_edit_replaces_every_assignment_of_a_name_whatever_its_form() {
        let text = "\
# Written by hand.
export TRIBIST_WORKERS=9
TRIBIST_WORKERS=4\\
TRIBIST_LOG_LEVEL=debug
 TRIBIST_DB_TIMEOUT = 3s
DATABASE_URL=\"postgres://u:old\\\"pw@h/d
still the url\"
PGHOST='a
b'
KEEP=yes # not a comment
TRIBIST_WORKERS=5
";
        // As systemd reads it: the continuation makes TRIBIST_LOG_LEVEL part of a value.
        assert_eq!(
            read(text),
            pairs(&[
                ("TRIBIST_WORKERS", "4TRIBIST_LOG_LEVEL=debug"),
                ("TRIBIST_DB_TIMEOUT", "3s"),
                ("DATABASE_URL", "postgres://u:old\"pw@h/d\nstill the url"),
                ("PGHOST", "a\nb"),
                ("KEEP", "yes # not a comment"),
                ("TRIBIST_WORKERS", "5"),
            ])
        );
        let out = edit(
            text,
            &["PGHOST"],
            &[
                ("TRIBIST_WORKERS", "6"),
                ("DATABASE_URL", "postgres://u:n$w@h/d"),
            ],
        )
        .unwrap();
        assert_eq!(
            out,
            "\
# Written by hand.
 TRIBIST_DB_TIMEOUT = 3s
KEEP=yes # not a comment
TRIBIST_WORKERS=\"6\"
DATABASE_URL=\"postgres://u:n\\$w@h/d\"
"
        );
        assert_eq!(
            read(&out),
            pairs(&[
                ("TRIBIST_DB_TIMEOUT", "3s"),
                ("KEEP", "yes # not a comment"),
                ("TRIBIST_WORKERS", "6"),
                ("DATABASE_URL", "postgres://u:n$w@h/d"),
            ])
        );
        // deploy.sh's line-wise sed left "TRIBIST_LOG_LEVEL=debug" to be read on its own and
        // "still the url\"" to open a quote: neither is left here.
        assert!(!out.contains("debug") && !out.contains("still"));
    }

    #[test]
    fn unset_only_and_nothing_to_do() {
        assert_eq!(edit("A=1\nB=2\n", &["A"], &[]).unwrap(), "B=2\n");
        assert_eq!(edit("A=1\nB=2\n", &["C"], &[]).unwrap(), "A=1\nB=2\n");
        assert_eq!(edit("", &[], &[]).unwrap(), "");
        // CRLF files: a line ends at \r too, and so does the entry removed.
        assert_eq!(edit("A=1\r\nB=2\r\n", &["A"], &[]).unwrap(), "\nB=2\r\n");
    }

    #[test]
    fn the_end_of_a_file_never_swallows_what_is_appended() {
        // No final newline.
        assert_eq!(edit("A=1", &[], &[("B", "2")]).unwrap(), "A=1\nB=\"2\"\n");
        // A comment continued by a backslash swallows the next line (systemd 252).
        let out = edit("A=1\n# note \\", &[], &[("B", "2")]).unwrap();
        assert_eq!(read(&out), pairs(&[("A", "1"), ("B", "2")]), "{out:?}");
        let out = edit("A=1\n# note \\\n", &[], &[("B", "2")]).unwrap();
        assert_eq!(read(&out), pairs(&[("A", "1"), ("B", "2")]), "{out:?}");
        // An unterminated quote: nothing appended could be read; refused.
        assert_eq!(
            edit("A=\"open\n", &[], &[("B", "2")]),
            Err(EditError::WouldNotReadBack { name: "B".into() })
        );
    }

    #[test]
    fn the_address_is_never_the_env_files() {
        assert!(sets_listen("A=1\nTRIBIST_LISTEN=127.0.0.1:9\n"));
        assert!(sets_listen("  export   TRIBIST_LISTEN=x\n"));
        assert!(sets_listen("TRIBIST_LISTEN = x"));
        assert!(!sets_listen("#TRIBIST_LISTEN=127.0.0.1:8383\n"));
        assert!(!sets_listen("A=\"x\nTRIBIST_LISTEN=y\"\n"));
        assert!(!sets_listen(
            "exportTRIBIST_LISTEN=1\nMY_TRIBIST_LISTEN=1\n"
        ));
        assert!(!get(LISTEN).unwrap().settable());
        for ok in ["127.0.0.1:8383", "0.0.0.0:80", "[::1]:8383", "[::]:1"] {
            assert!(valid_listen(ok), "{ok}");
        }
        for bad in [
            "127.0.0.1",
            "127.0.0.1:0",
            "127.0.0.1:65536",
            "localhost:80",
            "[x]:80",
            "1.2.3:4",
            "1.2.3.4:8a",
        ] {
            assert!(!valid_listen(bad), "{bad}");
        }
    }

    #[test]
    fn secrets_are_masked_whole_lines_and_all() {
        let text = "# c\nDATABASE_URL=\"postgres://u:pw@h/d\ncontinued\"\nexport PGPASSWORD=pw\nPGUSER=u\n";
        let m = masked(text);
        assert_eq!(
            m,
            "# c\nDATABASE_URL=(masked)\nexport PGPASSWORD=(masked)\nPGUSER=u\n"
        );
        assert!(!m.contains("pw") && !m.contains("continued"));
    }

    #[test]
    fn the_table() {
        let mut seen = std::collections::HashSet::new();
        for s in SETTINGS {
            assert!(seen.insert(s.name), "{} twice", s.name);
            assert!(env_line(s.name, "x").is_some(), "{}", s.name);
            // Only the connection's own settings hold secrets, and none is settable.
            assert!(s.secret == Secret::No || !s.settable(), "{}", s.name);
        }
        // make config's names, as deploy.sh's config_name_ok had them.
        assert_eq!(
            settable().collect::<Vec<_>>(),
            [
                "PGHOST",
                "PGPORT",
                "PGUSER",
                "PGDATABASE",
                "PGSSLMODE",
                "PGSSLROOTCERT",
                "TRIBIST_WORKERS",
                "TRIBIST_DB_TIMEOUT",
                "TRIBIST_SHUTDOWN_TIMEOUT",
                "TRIBIST_KEEPALIVE_MAX",
                "TRIBIST_IDLE_TIMEOUT",
                "TRIBIST_MAX_HEADER_BYTES",
                "TRIBIST_LOG_LEVEL",
            ]
        );
        assert!(help().contains(
            "  TRIBIST_WORKERS           request worker threads, 1-256   (default 16)\n"
        ));
    }

    /// The deployer's side refuses unknown names before anything is sent, from this table.
    #[test]
    fn the_deployer_refuses_exactly_what_this_table_does_not_allow() {
        for s in SETTINGS {
            assert_eq!(
                crate::deployer::values::settable(s.name),
                s.settable(),
                "{}",
                s.name
            );
        }
        assert!(!crate::deployer::values::settable("TRIBIST_LISTEN"));
        assert!(!crate::deployer::values::settable("DATABASE_URL"));
    }
}
