//! The deployment commands' command line: the options remote.sh passes before the command
//! (`--by`, `--preflight`, `--keep`, `--target`, `--url-file`, `--listen`), each checked as
//! deploy.sh checked it, then one command with its arguments. Each command is a function of
//! a [`Ctx`] returning `Result<Exit>`; this maps a [`Fail`] to its message and exit code.

use std::process::ExitCode;

use crate::host::digest::Sha256;

use super::{health, interrupt, switch, unit, warn, Ctx, Exit, Fail, Result, PROG};

/// The commands this module runs; `tribist-host` hands these to [`main`].
pub const COMMANDS: &[&str] = &[
    "install",
    "uninstall",
    "config",
    "config-stash",
    "status",
    "summary",
    "serving",
    "releases",
    "logs",
    "follow",
    "access-log",
    "access-follow",
    "audit",
    "unlock",
    "receive",
    "upgrade",
    "rollback",
    "start",
    "stop",
    "on-start",
    "on-reload",
];

/// Whether `tribist-host COMMAND REST…` is a deployment command ([`main`]'s): a name in
/// [`COMMANDS`], or an option before one. `releases` alone is the deployment command (the
/// list, run as tribist); `releases ARG…` is the releases module's own command line, which
/// the list itself runs.
pub fn handles(command: &str, rest: &[String]) -> bool {
    (command.starts_with("--") && command != "--help")
        || (COMMANDS.contains(&command) && (command != "releases" || rest.is_empty()))
}

/// Parses the options into `ctx`; returns the command and its arguments.
pub fn parse(ctx: &mut Ctx, args: &[String]) -> Result<(String, Vec<String>)> {
    let mut i = 0;
    let value = |i: usize, opt: &str| -> Result<String> {
        args.get(i + 1)
            .cloned()
            .ok_or_else(|| Fail::usage(format!("{opt} needs a value")))
    };
    while i < args.len() {
        let opt = args[i].as_str();
        match opt {
            "--by" => {
                let v = value(i, opt)?;
                if v.is_empty() || v.len() > 100 || v.chars().any(char::is_control) {
                    return Err(Fail::usage(
                        "--by must be 1-100 printable characters (no newline or control character)",
                    ));
                }
                ctx.by = v;
            }
            "--preflight" => {
                let v = value(i, opt).unwrap_or_default();
                ctx.preflight = whole(&v, 0, 999).ok_or_else(|| {
                    Fail::usage("--preflight needs a whole number of seconds, 0 (skip) to 999")
                })?;
            }
            "--keep" => {
                let v = value(i, opt).unwrap_or_default();
                ctx.keep = whole(&v, 1, 99)
                    .ok_or_else(|| Fail::usage("--keep needs a number of releases, 1 to 99"))?;
            }
            "--target" => {
                let v = value(i, opt).unwrap_or_default();
                let ok = (1..=255).contains(&v.len())
                    && !v.starts_with('-')
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_.@:%[]-".contains(&b));
                if !ok {
                    return Err(Fail::usage("--target needs an ssh destination"));
                }
                ctx.target = Some(v);
            }
            "--url-file" => {
                let v = value(i, opt).unwrap_or_default();
                if v.is_empty() || v.len() > 300 || !v.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                    return Err(Fail::usage(
                        "--url-file needs a file name (printable ASCII)",
                    ));
                }
                ctx.url_file = Some(v);
            }
            "--listen" => {
                let v = value(i, opt).unwrap_or_default();
                if !health::valid_listen(&v) {
                    return Err(Fail::usage(format!(
                        "--listen needs IPv4:PORT or [IPv6]:PORT (port 1-65535), got '{}'",
                        super::shown(&v, 60)
                    )));
                }
                ctx.listen = Some(v);
            }
            _ => break,
        }
        i += 2;
    }
    let cmd = args.get(i).cloned().unwrap_or_default();
    Ok((cmd, args.get(i + 1..).unwrap_or_default().to_vec()))
}

fn whole(s: &str, min: u32, max: u32) -> Option<u32> {
    if s.is_empty()
        || s.len() > 3
        || !s.bytes().all(|b| b.is_ascii_digit())
        || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok().filter(|n| (min..=max).contains(n))
}

/// Runs one deployment command (`args`: everything after the program's name).
pub fn main(args: &[String]) -> ExitCode {
    let mut ctx = Ctx::new();
    let outcome = parse(&mut ctx, args).and_then(|(cmd, rest)| {
        interrupt::install();
        dispatch(&mut ctx, &cmd, &rest)
    });
    match outcome {
        Ok(exit) => ExitCode::from(exit as u8),
        Err(fail) => {
            if !fail.message.is_empty() {
                warn(&fail.message);
            }
            if fail.exit == Exit::Usage && !fail.message.is_empty() {
                eprintln!("try: {PROG} --help");
            }
            ExitCode::from(fail.exit as u8)
        }
    }
}

/// One arm per command, as deploy.sh's `main` had them.
fn dispatch(ctx: &mut Ctx, cmd: &str, rest: &[String]) -> Result<Exit> {
    use super::{logs, records, report, unlock};
    let words: Vec<&str> = rest.iter().map(String::as_str).collect();
    match (cmd, words.as_slice()) {
        ("install", [bundle, front @ ..]) => super::install::install(ctx, bundle, front),
        ("uninstall", []) => super::uninstall::uninstall(ctx, false),
        ("uninstall", ["--purge"]) => super::uninstall::uninstall(ctx, true),
        ("uninstall", [_]) => Err(Fail::usage("uninstall takes only --purge")),
        ("config", []) => super::envconf::config_show(),
        ("config", _) => super::envconf::config_change(ctx, rest),
        ("config-stash", []) => super::envconf::config_stash(),
        ("status", []) => report::cmd_status(ctx.target.as_deref()),
        ("summary", []) => report::cmd_summary(),
        ("serving", []) => report::cmd_serving(),
        ("releases", []) => report::cmd_releases(),
        ("logs", r) if r.len() <= 3 => logs::cmd_logs(rest),
        ("follow", r) if r.len() <= 3 => logs::cmd_follow(rest),
        ("access-log", r) if r.len() <= 2 => {
            super::access::cmd_access(rest, false, ctx.target.as_deref())
        }
        ("access-follow", r) if r.len() <= 2 => {
            super::access::cmd_access(rest, true, ctx.target.as_deref())
        }
        ("audit", r) if r.len() <= 1 => records::cmd_audit(rest),
        ("unlock", []) => unlock::cmd_unlock(ctx),
        ("receive", [sum]) => switch::receive(ctx, sum),
        ("upgrade", [upload]) => switch::upgrade(ctx, upload, None),
        ("upgrade", [upload, sum]) => match Sha256::parse(sum) {
            Some(sum) => switch::upgrade(ctx, upload, Some(sum)),
            None => Err(Fail::usage(format!(
                "'{}' is not a SHA-256 (64 lowercase hex digits)",
                super::shown(sum, 70)
            ))),
        },
        ("rollback", []) => switch::rollback(ctx),
        ("rollback", ["--to", prefix]) => switch::rollback_to(ctx, prefix),
        ("rollback", [_, _]) => Err(Fail::usage("rollback takes only --to PREFIX")),
        ("start", []) => switch::service(ctx, true),
        ("stop", []) => switch::service(ctx, false),
        ("on-start", []) => unit::on_start(ctx),
        ("on-reload", []) => unit::on_reload(ctx),
        _ => Err(Fail::usage(format!(
            "unknown command or wrong arguments: '{}'",
            super::shown(cmd, 40)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_then_the_command() {
        let mut ctx = Ctx::new();
        let (cmd, rest) = parse(
            &mut ctx,
            &strings(&[
                "--by",
                "alice@laptop",
                "--target",
                "root@app1",
                "--preflight",
                "0",
                "upgrade",
                ".upload.abc123",
            ]),
        )
        .unwrap();
        assert_eq!(
            (cmd.as_str(), rest),
            ("upgrade", strings(&[".upload.abc123"]))
        );
        assert_eq!(ctx.by, "alice@laptop");
        assert_eq!(ctx.host(), "root@app1");
        assert_eq!(ctx.preflight, 0);
    }

    #[test]
    fn which_command_lines_are_deployment_commands() {
        let none: &[String] = &[];
        for (cmd, rest, ours) in [
            ("status", none, true),
            ("--by", &strings(&["x", "status"])[..], true),
            ("releases", none, true),
            // The releases module's command line, which the list runs as tribist.
            ("releases", &strings(&["list"])[..], false),
            ("layout", none, false),
            ("--help", none, false),
        ] {
            assert_eq!(handles(cmd, rest), ours, "{cmd} {rest:?}");
        }
    }

    #[test]
    fn misuse_of_a_command_is_refused_before_anything_runs() {
        for bad in [
            &["upgrade", "onlyone"][..],
            &["upgrade"],
            &["upgrade", ".upload.abc123", "x"],
            &["receive", "not-a-sha"],
            &["receive", &"A".repeat(64)],
            &["rollback", "--from", "abc"],
            &["rollback", "--to", "x;id"],
            &["start", "now"],
            &["on-start", "x"],
            &["frobnicate"],
        ] {
            let mut ctx = Ctx::new();
            let (cmd, rest) = parse(&mut ctx, &strings(bad)).unwrap();
            let err = dispatch(&mut ctx, &cmd, &rest).unwrap_err();
            assert_eq!(err.exit, Exit::Usage, "{bad:?}: {}", err.message);
        }
    }

    #[test]
    fn bad_options_are_usage_errors() {
        for bad in [
            &["--by", "a\nb", "status"][..],
            &["--by"],
            &["--preflight", "1000", "status"],
            &["--preflight", "07", "status"],
            &["--keep", "0", "status"],
            &["--target", "-oProxyCommand=x", "status"],
            &["--target", "a b", "status"],
            &["--url-file", "a\u{1b}b", "status"],
            &["--listen", "localhost:80", "install"],
        ] {
            let mut ctx = Ctx::new();
            let err = parse(&mut ctx, &strings(bad)).unwrap_err();
            assert_eq!(err.exit, Exit::Usage, "{bad:?}");
        }
    }
}
