//! make install and make check: the host's readiness (sbin/check.sh sent on ssh's standard
//! input, so nothing needs to be installed there; with DATABASE_URL_FILE, the binary itself
//! asks the database from the host; with DOMAIN, ports 80/443, the name and the caddy
//! package for the front door), the database URL and the deploy key, and the install
//! bundle sent as one tar stream and installed by the bundle's own tribist-host.
//!
//! Why the URL never touches this machine's disk: it is read from DATABASE_URL_FILE (or
//! asked at a terminal, without echo) and written straight into the tar stream or ssh's
//! standard input.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::commands::is_name;
use super::remote;
use super::ssh::{Call, Input, Sink, Tty};
use super::tar::{self, Entry};
use super::term::{self, Exit};
use super::upgrade::{ship_bin, Binary};
use super::values::{self, FrontCerts, FrontGiven};
use super::words::shown;
use super::{executable, read_bounded, Ctx};
use crate::host::front_plan::{Pem, MAX_PEM};
use crate::host::text::clean;

/// The kit's files in the bundle, from the checkout (the server and tribist-host come
/// beside them, the URL and the key when given).
const BUNDLE: &[&str] = &[
    "etc/tribist.service",
    "etc/tribist.socket",
    "etc/tribist.sudoers",
    "etc/tribist.env.example",
    "sbin/server.sh",
    "sbin/wait_for_it.sh",
];

const DEFAULT_LISTEN: &str = "127.0.0.1:8383";

/// A file's mode as `cp` under umask 022 makes it.
fn copied_mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o755)
        .unwrap_or(0o644)
}

/// The database URL: from DATABASE_URL_FILE, or asked at a terminal for a host that has no
/// configuration yet; never from a command line. None: keep the host's.
pub fn database_url(ctx: &Ctx, host: &str) -> Result<Option<String>, Exit> {
    let out = &ctx.out;
    let bytes = if let Some(file) = ctx.env.path("DATABASE_URL_FILE") {
        let name = shown(&file.to_string_lossy());
        let read = if file.is_file() {
            read_bounded(&file, 64 * 1024)
        } else {
            Err(std::io::ErrorKind::NotFound.into())
        };
        let mut bytes = match read {
            Ok(Some(b)) => b,
            Ok(None) => {
                return Err(out.refuse(&format!(
                    "DATABASE_URL_FILE={name} is larger than 64 KiB: not a database URL"
                )))
            }
            Err(_) => {
                return Err(out.refuse(&format!("DATABASE_URL_FILE={name} is not a readable file")))
            }
        };
        let mode = std::fs::metadata(&file)
            .map(|m| m.permissions().mode())
            .unwrap_or(0o600);
        if mode & 0o077 != 0 {
            out.warn(&format!(
                "warning: DATABASE_URL_FILE={name} can be read by other users of this machine (a password in it?): chmod 600 {name}"
            ));
        }
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
        }
        if bytes.is_empty() {
            return Err(out.refuse(&format!("DATABASE_URL_FILE={name} is empty")));
        }
        bytes
    } else if term::can_ask() && !has_configuration(ctx, host)? {
        let answer = term::ask(
            &format!(
                "DATABASE_URL for {host} (postgres://USER:PASSWORD@HOST:5432/DB; not echoed): "
            ),
            false,
        )?
        .unwrap_or_default();
        if answer.is_empty() {
            return Err(out.refuse(&format!(
                "no database URL given, and {host} has none yet: nothing was sent. Put it in a file (chmod 600) and run: {}",
                values::retyped(
                    &ctx.command,
                    &ctx.env,
                    &[("DATABASE_URL_FILE", Some(values::EXAMPLE_URL_FILE))]
                )
            )));
        }
        answer
    } else {
        return Ok(None);
    };
    ctx.check(values::database_url(&bytes)).map(Some)
}

fn has_configuration(ctx: &Ctx, host: &str) -> Result<bool, Exit> {
    let ran = ctx.run(
        &ctx.out,
        host,
        &remote::has_configuration(),
        Call {
            tty: Tty::No,
            input: Input::Nothing,
            stdout: Sink::Drop,
            stderr: Sink::Show,
        },
    )?;
    Ok(ran.ok())
}

/// DEPLOY_KEY: a public key file (no options, no private key), with its mode.
fn deploy_key(ctx: &Ctx) -> Result<Option<(Vec<u8>, u32)>, Exit> {
    let Some(mut key) = ctx.env.path("DEPLOY_KEY") else {
        return Ok(None);
    };
    if let Some(rest) = key.as_os_str().as_bytes().strip_prefix(b"~/") {
        key = PathBuf::from(ctx.home()).join(std::ffi::OsStr::from_bytes(rest));
    }
    let name = shown(&key.to_string_lossy());
    let bytes = match key.is_file().then(|| read_bounded(&key, 1 << 20)) {
        Some(Ok(Some(b))) => b,
        _ => {
            return Err(ctx
                .out
                .refuse(&format!("DEPLOY_KEY={name} is not a readable file")))
        }
    };
    if bytes.windows(11).any(|w| w == b"PRIVATE KEY") {
        return Err(ctx.out.refuse(&format!(
            "DEPLOY_KEY={name} is a private key: give the .pub file"
        )));
    }
    if !bytes.split(|&b| b == b'\n').all(values::public_key_line) {
        return Err(ctx.out.refuse(&format!(
            "DEPLOY_KEY={name} is not a public key file (lines 'ssh-ed25519 AAAA… comment', no options)"
        )));
    }
    Ok(Some((bytes, copied_mode(&key))))
}

/// The host program install puts on the host: the release build's (made by make release
/// with the server; built now if missing, whatever BIN is).
fn host_program(ctx: &Ctx) -> Result<(Vec<u8>, u32), Exit> {
    let rel = ctx.release_host_bin();
    let path = ctx.repo.join(&rel);
    if !executable(&path) {
        ctx.out
            .say_err(&format!("building {rel}, the host program (make release)"));
        ctx.release_build()?;
    }
    match read_bounded(&path, 1 << 30) {
        Ok(Some(b)) => Ok((b, copied_mode(&path))),
        _ => Err(ctx.out.die(&format!(
            "cannot read {}, the host program; make release builds it",
            path.display()
        ))),
    }
}

/// check.sh's output as it may be shown: tabs, newlines and printable ASCII only.
fn check_output(bytes: &[u8]) -> Vec<String> {
    let kept: String = bytes
        .iter()
        .filter(|&&b| b == b'\t' || b == b'\n' || (0x20..0x7f).contains(&b))
        .map(|&b| char::from(b))
        .collect();
    kept.lines().map(|l| format!("    {l}")).collect()
}

/// The address for the checks: LISTEN, else what the host's socket has (`Listen=` of
/// tribist.socket, first word), else the default.
pub fn listen_of_socket(answer: &str) -> String {
    let first = answer
        .lines()
        .next()
        .unwrap_or("")
        .split(' ')
        .next()
        .unwrap_or("");
    let ok = first.rsplit_once(':').is_some_and(|(addr, port)| {
        !addr.is_empty()
            && addr
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b"[]:.".contains(&b))
            && !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
    });
    if ok {
        first.to_string()
    } else {
        DEFAULT_LISTEN.to_string()
    }
}

/// The host checks for `bin` and the address LISTEN names, printed indented; with
/// `database`, also whether the database in DATABASE_URL_FILE answers from the host: the
/// binary itself, copied to a private temporary directory there, runs `server
/// --check-config` on an environment file holding the URL, then both are removed.
/// Ok(false) if any check failed.
fn host_checks(ctx: &Ctx, host: &str, bin: &Binary, database: bool) -> Result<bool, Exit> {
    let out = &ctx.out;
    let listen = match ctx.check(values::listen(ctx.text("LISTEN")?.as_deref()))? {
        Some(l) => l,
        None => {
            let ran = ctx.run(
                out,
                host,
                &remote::socket_listen(),
                Call {
                    tty: Tty::No,
                    input: Input::Nothing,
                    stdout: Sink::Keep(4096),
                    stderr: Sink::Show,
                },
            )?;
            if !ran.ok() {
                out.line(&format!(
                    "    FAIL ssh: {host} does not answer (exit {}; the ssh messages above say why); fix: check HOST, SSH_OPTS and ~/.ssh/config",
                    ran.code
                ));
                return Ok(false);
            }
            listen_of_socket(&ran.text())
        }
    };
    out.line(&format!("    PASS ssh: {host} answers"));
    let machine = bin.needs.as_ref().map_or("any", |n| n.machine.as_str());
    let glibc = bin
        .needs
        .as_ref()
        .and_then(|n| n.glibc.as_deref())
        .unwrap_or("none");
    let script = ctx.repo.join("sbin/check.sh");
    let Ok(Some(script)) = read_bounded(&script, 1 << 20) else {
        return Err(out.die(&format!(
            "cannot read {}; run from a whole checkout of tribist",
            script.display()
        )));
    };
    let domain = front_domain(ctx)?;
    let ran = ctx.run(
        out,
        host,
        &remote::check_script(&listen, machine, glibc, domain.as_deref()),
        Call {
            tty: Tty::No,
            input: Input::Bytes(&script),
            stdout: Sink::Keep(256 * 1024),
            stderr: Sink::Show,
        },
    )?;
    for l in check_output(&ran.stdout) {
        out.line(&l);
    }
    let mut ok = ran.ok();
    if !database {
        return Ok(ok);
    }
    if !ctx.env.is_set("DATABASE_URL_FILE") {
        out.line("    SKIP database: no DATABASE_URL_FILE given");
        return Ok(ok);
    }
    let url = database_url(ctx, host)?.unwrap_or_default();
    let ran = ctx.run(
        out,
        host,
        &remote::check_upload(),
        Call {
            tty: Tty::No,
            input: Input::Bytes(&bin.bytes),
            stdout: Sink::Keep(200),
            stderr: Sink::Show,
        },
    )?;
    let dir = if ran.ok() { ran.text() } else { String::new() };
    if !is_name(&dir, "/tmp/tribist-check.", 6..=6) {
        out.line(&format!(
            "    FAIL database: could not copy the binary to {host} to ask from there; fix: free space in /tmp there"
        ));
        return Ok(false);
    }
    let Some(env) = crate::settings::env_line("DATABASE_URL", &url) else {
        out.line("    FAIL database: the URL holds a control character or is not UTF-8, which systemd cannot pass on; fix: put the URL alone on the first line of the file");
        return Ok(false);
    };
    let ran = ctx.run(
        out,
        host,
        &remote::check_database(&dir, &listen),
        Call {
            tty: Tty::No,
            input: Input::Bytes(env.as_bytes()),
            stdout: Sink::Keep(64 * 1024),
            stderr: Sink::Show,
        },
    )?;
    let answer = clean(&ran.stdout, 2000);
    if ran.ok() {
        let said = answer.strip_prefix("configuration OK: ").unwrap_or(&answer);
        out.line(&format!("    PASS database: {said}"));
    } else {
        let said = answer.strip_prefix("server: error: ").unwrap_or(&answer);
        out.line(&format!(
            "    FAIL database: {said}; fix: the URL in DATABASE_URL_FILE, the database's pg_hba.conf, or a firewall between them"
        ));
        ok = false;
    }
    Ok(ok)
}

fn front_domain(ctx: &Ctx) -> Result<Option<String>, Exit> {
    ctx.check(values::domain(&ctx.env, &ctx.command))
}

/// make check HOST=… [DOMAIN=…]: one PASS/FAIL/WARN line per check; changes nothing.
pub fn check(ctx: &Ctx) -> Result<(), Exit> {
    let host = ctx.host()?;
    ctx.refuse_url_on_command_line()?;
    ctx.check(values::listen(ctx.text("LISTEN")?.as_deref()))?;
    front_domain(ctx)?;
    let bin = ship_bin(ctx)?;
    ctx.out.say(&format!(
        "checking {host} for {}",
        shown(&bin.path.to_string_lossy())
    ));
    if host_checks(ctx, &host, &bin, true)? {
        ctx.out.say(&format!("{host} is ready for tribist"));
        Ok(())
    } else {
        Err(ctx.out.die(&format!(
            "make check: {host} is not ready; next: do what each FAIL line above says after 'fix:', then make check HOST={host} again"
        )))
    }
}

/// A front file for the bundle: its name there, its bytes, its mode.
type FrontFile = (&'static str, Vec<u8>, u32);

/// DOMAIN and the rest of the front's variables: checked by the host's own rules, the files
/// read here (64 KiB at most) and checked as PEM, all before anything is sent. None: no
/// DOMAIN (a front already on the host is kept there).
fn front(ctx: &Ctx, listen: Option<&str>) -> Result<Option<(FrontGiven, Vec<FrontFile>)>, Exit> {
    let Some(given) = ctx.check(values::front(&ctx.env))? else {
        return Ok(None);
    };
    let wanted: Vec<(&str, &Path, &'static str, Pem, u32)> = match &given.certs {
        FrontCerts::Acme {
            ca_root: Some(r), ..
        } => vec![(
            "ACME_CA_ROOT",
            r,
            values::FRONT_CA_ROOT,
            Pem::Certificate,
            0o644,
        )],
        FrontCerts::Acme { .. } => vec![],
        FrontCerts::Own { cert, key } => vec![
            (
                "CERT_FILE",
                cert,
                values::FRONT_CERT,
                Pem::Certificate,
                0o644,
            ),
            ("KEY_FILE", key, values::FRONT_KEY, Pem::Key, 0o600),
        ],
    };
    let mut files = Vec::new();
    for (var, path, name, kind, mode) in wanted {
        let label = shown(&path.to_string_lossy());
        let bytes = match path.is_file().then(|| read_bounded(path, MAX_PEM)) {
            Some(Ok(b)) => b,
            _ => {
                return Err(ctx.out.refuse(&format!(
                    "{var}={label} is not a readable file; give the right one; run: {} (nothing was sent)",
                    values::retyped("install", &ctx.env, &[(var, Some(values::example_file(var)))])
                )))
            }
        };
        ctx.check(values::front_file(
            var,
            path,
            bytes.as_deref(),
            kind,
            &ctx.env,
        ))?;
        if kind == Pem::Key {
            let mode = std::fs::metadata(path)
                .map(|m| m.permissions().mode())
                .unwrap_or(0o600);
            if mode & 0o077 != 0 {
                ctx.out.warn(&format!(
                    "warning: KEY_FILE={label} can be read by other users of this machine (a private key): chmod 600 {label}"
                ));
            }
        }
        files.push((name, bytes.unwrap_or_default(), mode));
    }
    if let Some(w) = listen.and_then(values::around_the_front) {
        ctx.out.warn(&w);
    }
    Ok(Some((given, files)))
}

/// After exit 9 (tribist installed and serving, its front not): the same command, once the
/// host's reason is fixed.
pub fn front_next(env: &values::Env) -> String {
    format!(
        "next: once what is said above is fixed: {}",
        values::retyped("install", env, &[])
    )
}

/// make install HOST=…: checks, then the bundle, then the bundle's tribist-host install.
pub fn install(ctx: &Ctx) -> Result<(), Exit> {
    let host = ctx.host()?;
    ctx.refuse_url_on_command_line()?;
    let by = ctx.deployer()?;
    let listen = ctx.check(values::listen(ctx.text("LISTEN")?.as_deref()))?;
    let front = front(ctx, listen.as_deref())?;
    let key = deploy_key(ctx)?;
    let bin = ship_bin(ctx)?;
    let (host_bin, host_mode) = host_program(ctx)?;
    let mut files = Vec::new();
    for f in BUNDLE {
        let path = ctx.repo.join(f);
        match read_bounded(&path, 1 << 20) {
            Ok(Some(bytes)) => files.push((*f, bytes, copied_mode(&path))),
            _ => {
                return Err(ctx.out.die(&format!(
                    "cannot read {}; run from a whole checkout of tribist",
                    path.display()
                )))
            }
        }
    }
    let url = database_url(ctx, &host)?;
    ctx.out.say(&format!("checking {host}"));
    if !host_checks(ctx, &host, &bin, false)? {
        return Err(ctx.out.die(&format!(
            "make install: {host} is not ready (the FAIL lines above say what to do); nothing was installed"
        )));
    }
    ctx.out.say(&format!("uploading to {host}"));
    let mut entries: Vec<Entry> = files
        .iter()
        .map(|(f, bytes, mode)| Entry {
            name: f.rsplit('/').next().unwrap_or(f),
            mode: *mode,
            data: bytes,
        })
        .collect();
    entries.push(Entry {
        name: "server",
        mode: bin.mode & 0o755,
        data: &bin.bytes,
    });
    entries.push(Entry {
        name: "tribist-host",
        mode: host_mode,
        data: &host_bin,
    });
    if let Some(url) = &url {
        entries.push(Entry {
            name: "database_url",
            mode: 0o600,
            data: url.as_bytes(),
        });
    }
    if let Some((key, mode)) = &key {
        entries.push(Entry {
            name: "deploy_key.pub",
            mode: *mode,
            data: key,
        });
    }
    if let Some((_, front_files)) = &front {
        for (name, bytes, mode) in front_files {
            entries.push(Entry {
                name,
                mode: *mode,
                data: bytes,
            });
        }
    }
    let mtime = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let bundle = tar::archive(&entries, mtime);
    let ran = ctx.run(
        &ctx.out,
        &host,
        &remote::install_upload(),
        Call {
            tty: Tty::No,
            input: Input::Bytes(&bundle),
            stdout: Sink::Keep(200),
            stderr: Sink::Show,
        },
    )?;
    if !ran.ok() {
        return Err(ctx.out.die(&format!(
            "could not upload to {host} (exit {}); the ssh messages above say why",
            ran.code
        )));
    }
    let dir = ran.text();
    if !is_name(&dir, "/tmp/tribist-install.", 6..=6) {
        return Err(ctx.out.die(&format!(
            "the host answered an unexpected upload directory: {}",
            shown(&dir)
        )));
    }
    ctx.out.say(&format!("installing on {host}"));
    let label = ctx.url_file_label();
    let front_words = front
        .as_ref()
        .map(|(g, _)| g.words(&dir))
        .unwrap_or_default();
    let rc = ctx.long(
        &host,
        &remote::install(&dir, &by, listen.as_deref(), &host, &label, &front_words),
    )?;
    if let (9, Some(_)) = (rc, &front) {
        ctx.out.warn(&format!(
            "make install: tribist is installed and serving on {host}, but setting up its front failed (exit 9); the messages above say why"
        ));
        ctx.out.warn(&front_next(&ctx.env));
        return Err(Exit(rc));
    }
    if rc != 0 {
        // For 4 the host named the command (it knows whether it kept a configuration that
        // served).
        if rc != 4 {
            ctx.out.warn(&format!(
                "make install: failed on {host} (exit {rc}); the messages above say why"
            ));
        }
        ctx.next_step(&ctx.out, rc, &host);
        return Err(Exit(rc));
    }
    match &front {
        Some((g, _)) => ctx
            .out
            .say(&format!("installed on {host}, behind https://{}", g.domain)),
        None => ctx.out.say(&format!("installed on {host}")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_address_or_the_default() {
        assert_eq!(
            listen_of_socket("127.0.0.1:9000 (Stream)\n"),
            "127.0.0.1:9000"
        );
        assert_eq!(listen_of_socket("[::1]:8383 (Stream)"), "[::1]:8383");
        assert_eq!(listen_of_socket(""), DEFAULT_LISTEN);
        assert_eq!(listen_of_socket("/run/x.sock (Stream)"), DEFAULT_LISTEN);
        assert_eq!(listen_of_socket("1.2.3.4:80;id"), DEFAULT_LISTEN);
    }

    #[test]
    fn after_a_failed_front_the_same_front_again() {
        let env = values::Env::from_pairs(&[
            ("HOST", "root@app1"),
            ("DOMAIN", "api.example.com"),
            ("CERT_FILE", "my certs/c.pem"),
            ("KEY_FILE", "k.pem"),
            ("LISTEN", "127.0.0.1:9000"),
        ]);
        assert_eq!(
            front_next(&env),
            "next: once what is said above is fixed: make install HOST=root@app1 DOMAIN=api.example.com CERT_FILE=my\\ certs/c.pem KEY_FILE=k.pem LISTEN=127.0.0.1:9000"
        );
    }

    #[test]
    fn check_lines_are_indented_and_printable() {
        assert_eq!(
            check_output(b"PASS a\tb\nFAIL \x1b[31mc\r\n"),
            ["    PASS a\tb", "    FAIL [31mc"]
        );
    }
}
