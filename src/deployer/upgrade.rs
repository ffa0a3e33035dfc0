//! make upgrade: the binary to ship (built by make release unless BIN names one), checked
//! against each host's machine and glibc before it is uploaded, then received, checked by
//! its SHA-256 and activated by the host; one host, or a fleet (HOSTS, ENV) in batches of
//! PARALLEL that stops at the first batch with a failure.
//!
//! Why the binary is read once: its machine, its glibc needs, the uncommitted-build warning,
//! its digest and the bytes sent all come from that one read, so what was checked is what
//! is shipped.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use super::commands::is_name;
use super::elf::{self, Needs};
use super::remote;
use super::ssh::{Call, Input, Sink, Tty};
use super::term::{Exit, Out};
use super::values;
use super::words::shown;
use super::{executable, read_bounded, Ctx};
use crate::host::digest::Sha256;

/// The hosts to act on, and whether they came from HOSTS or ENV (a fleet, even of one).
pub struct Targets {
    pub hosts: Vec<String>,
    pub many: bool,
}

/// HOST, HOSTS, or the file of environment ENV (deploy/ENV.hosts), each checked.
pub fn targets(ctx: &Ctx) -> Result<Targets, Exit> {
    let command = &ctx.command;
    if let Some(env) = ctx.text("DEPLOY_ENV")? {
        if ctx.env.is_set("HOST") || ctx.env.is_set("HOSTS") {
            return Err(ctx.out.refuse(&format!(
                "ENV={} and HOST/HOSTS both name hosts: give one of them",
                shown(&env)
            )));
        }
        ctx.check(values::env_name(&env))?;
        let dir = ctx
            .env
            .path("TRIBIST_DEPLOY_DIR")
            .unwrap_or_else(|| ctx.repo.join("deploy"));
        let file = dir.join(format!("{env}.hosts"));
        let text = match file.is_file().then(|| read_bounded(&file, 1 << 20)) {
            Some(Ok(Some(bytes))) => String::from_utf8_lossy(&bytes).into_owned(),
            _ => {
                return Err(ctx.out.refuse(&format!(
                    "ENV={env}: there is no {} (one ssh destination per line, # comments)",
                    shown(&file.to_string_lossy())
                )))
            }
        };
        let hosts = ctx.check(values::hosts_file(&env, &text, command))?;
        return Ok(Targets { hosts, many: true });
    }
    if let Some(hosts) = ctx.text("HOSTS")? {
        let hosts = ctx.check(values::hosts_list(&hosts, command))?;
        return Ok(Targets { hosts, many: true });
    }
    Ok(Targets {
        hosts: vec![ctx.host()?],
        many: false,
    })
}

/// The binary to ship, read once.
pub struct Binary {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    /// None: not an ELF file (a wrapper script), which is not checked.
    pub needs: Option<Needs>,
    pub sha256: String,
    pub mode: u32,
}

/// The largest BIN the kit reads (a release build is about 10 MB).
const MAX_BIN: u64 = 1 << 30;

/// BIN, or the release build made now (make release); an executable file, read.
pub fn ship_bin(ctx: &Ctx) -> Result<Binary, Exit> {
    let release = ctx.release_bin();
    let given = ctx.env.path("BIN");
    let path = match given {
        Some(p) if p != std::path::Path::new(&release) => p,
        _ => {
            ctx.out
                .say_err(&format!("building {release} (make release)"));
            ctx.release_build()?;
            ctx.repo.join(&release)
        }
    };
    let shown_path = shown(&path.to_string_lossy());
    if !(path.is_file() && executable(&path)) {
        return Err(ctx
            .out
            .refuse(&format!("BIN={shown_path} is not an executable file")));
    }
    let bytes = match read_bounded(&path, MAX_BIN) {
        Ok(Some(b)) => b,
        Ok(None) => {
            return Err(ctx.out.refuse(&format!(
                "BIN={shown_path} is larger than 1 GiB: not a server binary"
            )))
        }
        Err(e) => return Err(ctx.out.die(&format!("cannot read BIN={shown_path}: {e}"))),
    };
    // A build of uncommitted changes carries a release id of its own (by build.rs): said
    // before it ships, so nobody takes it for the commit's release.
    if let Some(id) = elf::dirty_release(&bytes) {
        ctx.out.warn(&format!(
            "WARNING: {shown_path} is built from uncommitted changes: it ships as release {id}, a release of its own (commit them to ship a release named by its commit)"
        ));
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path)
        .map(|m| m.permissions().mode())
        .unwrap_or(0o755);
    Ok(Binary {
        needs: elf::read(&bytes),
        sha256: Sha256::of(&bytes).to_string(),
        path,
        bytes,
        mode,
    })
}

/// Why a host cannot run a binary, from the binary's needs and the host's answer to
/// [`remote::platform`] (`uname -m`, then `glibc X.Y` or `none`): Err(exit, message).
pub fn platform_verdict(
    bin: &str,
    host: &str,
    needs: &Needs,
    answer: &str,
) -> Result<(), (Exit, String)> {
    let mut lines = answer.split('\n');
    let first = lines.next().unwrap_or("");
    let second: String = lines.next().unwrap_or("").chars().take(200).collect();
    let machine: String = first
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        .collect();
    let glibc = second
        .strip_prefix("glibc ")
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit() || b == b'.'));
    if machine.is_empty() {
        return Err((
            Exit::FAILED,
            format!("{host} did not say what machine it is (uname -m answered nothing); nothing was sent"),
        ));
    }
    if needs.machine != machine {
        return Err((
            Exit::USAGE,
            format!(
                "BIN={bin} is built for {}, but {host} is {machine}: build for {machine}, then ship that; nothing was sent",
                needs.machine
            ),
        ));
    }
    let Some(needed) = &needs.glibc else {
        return Ok(());
    };
    match glibc {
        None => Err((
            Exit::USAGE,
            format!(
                "BIN={bin} needs glibc {needed}, but {host} has no glibc (getconf GNU_LIBC_VERSION: {}); nothing was sent",
                shown(&second)
            ),
        )),
        Some(have) if !elf::version_le(needed, have) => Err((
            Exit::USAGE,
            format!(
                "BIN={bin} needs glibc {needed}, but {host} has glibc {have}: ship the portable build (make release: glibc 2.17 or newer) or build on a system as old as the host; nothing was sent"
            ),
        )),
        Some(_) => Ok(()),
    }
}

/// Refuses (exit 2) a binary that `host` cannot run, before anything is uploaded: one
/// short command on the connection the upload then uses.
pub fn check_platform(ctx: &Ctx, out: &Out, host: &str, bin: &Binary) -> Result<(), Exit> {
    let Some(needs) = &bin.needs else {
        return Ok(());
    };
    let ran = ctx.run(
        out,
        host,
        &remote::platform(),
        Call {
            tty: Tty::No,
            input: Input::Nothing,
            stdout: Sink::Keep(4096),
            stderr: Sink::Show,
        },
    )?;
    if !ran.ok() {
        return Err(out.die(&format!(
            "cannot ask {host} for its machine and C library (the ssh messages above say why); nothing was sent"
        )));
    }
    platform_verdict(
        &shown(&bin.path.to_string_lossy()),
        host,
        needs,
        &ran.text(),
    )
    .map_err(|(exit, msg)| {
        out.warn(&msg);
        exit
    })
}

/// One host: platform check, upload (checked by its SHA-256 there), activation.
pub fn upgrade_host(
    ctx: &Ctx,
    out: &Out,
    host: &str,
    bin: &Binary,
    by: &str,
    options: &[String],
) -> Result<(), Exit> {
    check_platform(ctx, out, host, bin)?;
    out.say(&format!("uploading {} to {host}", bin.path.display()));
    let ran = ctx.run(
        out,
        host,
        &remote::receive(&bin.sha256),
        Call {
            tty: Tty::No,
            input: Input::Bytes(&bin.bytes),
            stdout: Sink::Keep(200),
            stderr: Sink::Show,
        },
    )?;
    if !ran.ok() {
        out.warn(&format!(
            "make upgrade: the upload to {host} failed (exit {}); nothing changed there",
            ran.code
        ));
        ctx.next_step(out, ran.code, host);
        return Err(Exit(ran.code));
    }
    let upload = ran.text();
    if !is_name(&upload, ".upload.", 6..=16) {
        return Err(out.die(&format!(
            "the host answered an unexpected upload name: {}",
            shown(&upload)
        )));
    }
    out.say(&format!("activating on {host}"));
    let ran = ctx.run(
        out,
        host,
        &remote::upgrade(by, host, options, &upload, &bin.sha256),
        Call {
            tty: Tty::Long,
            input: Input::Keyboard,
            stdout: Sink::Show,
            stderr: Sink::Show,
        },
    )?;
    if !ran.ok() {
        out.warn(&format!(
            "make upgrade: FAILED on {host} (exit {}); see the messages above",
            ran.code
        ));
        ctx.next_step(out, ran.code, host);
        return Err(Exit(ran.code));
    }
    out.say(&format!("upgrade of {host} done"));
    Ok(())
}

pub fn upgrade(ctx: &Ctx) -> Result<(), Exit> {
    let t = targets(ctx)?;
    let width = ctx.check(values::parallel(ctx.text("PARALLEL")?.as_deref()))?;
    let by = ctx.deployer()?;
    let options = ctx.preflight_args()?;
    let bin = ship_bin(ctx)?;
    if !t.many {
        return upgrade_host(ctx, &ctx.out, &t.hosts[0], &bin, &by, &options);
    }
    let mut failed: Vec<&str> = Vec::new();
    let mut rc = 0;
    for batch in t.hosts.chunks(width) {
        ctx.out
            .say(&format!("rolling upgrade: {}", batch.join(" ")));
        let results = if width == 1 {
            vec![upgrade_host(ctx, &ctx.out, &batch[0], &bin, &by, &options)]
        } else {
            in_parallel(ctx, batch, &bin, &by, &options)
        };
        for (host, r) in batch.iter().zip(results) {
            match r {
                Err(Exit::INTERRUPTED) => return Err(Exit::INTERRUPTED),
                Err(Exit(code)) => {
                    rc = code;
                    failed.push(host);
                }
                Ok(()) => {}
            }
        }
        if !failed.is_empty() {
            break;
        }
    }
    ctx.out.say("releases now serving:");
    for h in &t.hosts {
        let ran = ctx.run(
            &ctx.out,
            h,
            &remote::serving(),
            Call {
                tty: Tty::No,
                input: Input::Nothing,
                stdout: Sink::Keep(4096),
                stderr: Sink::Drop,
            },
        )?;
        let r: String = ran
            .stdout
            .iter()
            .filter(|b| b.is_ascii_alphanumeric() || b"._+-".contains(b))
            .take(64)
            .map(|&b| char::from(b))
            .collect();
        let r = if r.is_empty() {
            "unreachable or not healthy".to_string()
        } else {
            r
        };
        ctx.out.line(&format!("    {h:<24} {r}"));
    }
    if !failed.is_empty() {
        ctx.out.warn(&format!(
            "make upgrade: stopped at {} (it serves its previous release); hosts after it were not touched",
            failed.join(" ")
        ));
        return Err(Exit(rc));
    }
    Ok(())
}

/// The hosts of one batch at once, each one's lines (its messages and its ssh calls')
/// prefixed with `[host] ` on standard output, in the order they come.
fn in_parallel(
    ctx: &Ctx,
    batch: &[String],
    bin: &Binary,
    by: &str,
    options: &[String],
) -> Vec<Result<(), Exit>> {
    std::thread::scope(|s| {
        let running: Vec<_> = batch
            .iter()
            .map(|host| {
                let (reader, writer) = match std::io::pipe() {
                    Ok(p) => p,
                    Err(e) => {
                        let msg = format!("cannot make a pipe for {host}: {e}");
                        return (s.spawn(move || Err(Out::Term.die(&msg))), None);
                    }
                };
                let printer =
                    s.spawn(move || prefix_lines(reader, &format!("[{host}] "), to_stdout));
                let out = Out::Pipe(Arc::new(writer));
                let work = s.spawn(move || upgrade_host(ctx, &out, host, bin, by, options));
                (work, Some(printer))
            })
            .collect();
        running
            .into_iter()
            .map(|(work, printer)| {
                let r = work.join().unwrap_or(Err(Exit::FAILED));
                if let Some(p) = printer {
                    let _ = p.join();
                }
                r
            })
            .collect()
    })
}

/// One whole line to standard output, at once.
fn to_stdout(line: &[u8]) {
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(line);
    let _ = o.flush();
}

/// Hands each line of `r` to `emit` prefixed, newline included (`sed -u "s|^|$prefix|"`).
fn prefix_lines(mut r: impl Read, prefix: &str, mut emit_line: impl FnMut(&[u8])) {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 8192];
    let mut emit = |line: &[u8]| {
        let mut l = Vec::with_capacity(prefix.len() + line.len() + 1);
        l.extend_from_slice(prefix.as_bytes());
        l.extend_from_slice(line);
        l.push(b'\n');
        emit_line(&l);
    };
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                pending.extend_from_slice(&buf[..n]);
                while let Some(i) = pending.iter().position(|&b| b == b'\n') {
                    emit(&pending[..i]);
                    pending.drain(..=i);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    if !pending.is_empty() {
        emit(&pending);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needs(machine: &str, glibc: Option<&str>) -> Needs {
        Needs {
            machine: machine.into(),
            glibc: glibc.map(String::from),
        }
    }

    #[test]
    fn a_host_that_cannot_run_the_binary_is_named_with_it() {
        let x86 = needs("x86_64", Some("2.17"));
        assert_eq!(
            platform_verdict("b", "h", &x86, "x86_64\nglibc 2.36"),
            Ok(())
        );
        assert_eq!(
            platform_verdict("b", "h", &x86, "x86_64\nglibc 2.17"),
            Ok(())
        );
        assert_eq!(
            platform_verdict("b", "h", &needs("x86_64", None), "x86_64\nnone"),
            Ok(())
        );
        assert_eq!(
            platform_verdict("/b", "root@a", &needs("aarch64", None), "x86_64\nglibc 2.36"),
            Err((
                Exit::USAGE,
                "BIN=/b is built for aarch64, but root@a is x86_64: build for x86_64, then ship that; nothing was sent".into()
            ))
        );
        let (exit, msg) = platform_verdict(
            "b",
            "root@a",
            &needs("x86_64", Some("2.99")),
            "x86_64\nglibc 2.36",
        )
        .unwrap_err();
        assert_eq!(exit, Exit::USAGE);
        assert!(
            msg.starts_with(
                "BIN=b needs glibc 2.99, but root@a has glibc 2.36: ship the portable build"
            ),
            "{msg}"
        );
        let (_, msg) = platform_verdict("b", "h", &x86, "x86_64\nnone").unwrap_err();
        assert_eq!(msg, "BIN=b needs glibc 2.17, but h has no glibc (getconf GNU_LIBC_VERSION: none); nothing was sent");
        let (_, msg) = platform_verdict("b", "h", &x86, "x86_64\n\x1b[2Jglibc 9").unwrap_err();
        assert!(
            msg.contains("(getconf GNU_LIBC_VERSION: $'\\033[2Jglibc 9')"),
            "{msg}"
        );
        assert_eq!(
            platform_verdict("b", "h", &x86, "").unwrap_err().0,
            Exit::FAILED
        );
        // The machine's name is taken only of the characters a machine name has.
        assert_eq!(
            platform_verdict("b", "h", &x86, "x86_64\r\x1b\nglibc 2.31"),
            Ok(())
        );
    }

    #[test]
    fn every_line_of_a_host_gets_its_prefix() {
        let mut got = Vec::new();
        prefix_lines(&b"one\ntwo\n\nlast"[..], "[h1] ", |l| {
            got.extend_from_slice(l)
        });
        assert_eq!(got, b"[h1] one\n[h1] two\n[h1] \n[h1] last\n");
    }
}
