//! The targets that are one or two calls of tribist-host on one host (or a status line per
//! host): status, start, stop, rollback, releases, logs, audit, unlock, uninstall, config.
//!
//! Why here and not in the host program: these are the deployer's half, the values checked
//! before anything is sent and the one command that gets a host further when it fails;
//! the host's half is tribist-host, whose interface this does not change.

use super::install::database_url;
use super::remote;
use super::ssh::{Call, Input, Sink, Tty};
use super::term::{self, Exit};
use super::upgrade::targets;
use super::values;
use super::words::shown;
use super::Ctx;
use crate::host::text::printable;

/// `Ok` for status 0, else the status as the run's.
fn status_of(rc: i32) -> Result<(), Exit> {
    if rc == 0 {
        Ok(())
    } else {
        Err(Exit(rc))
    }
}

/// make status: one line per host (with HOST, details under it), and an exit status saying
/// whether every host is healthy on its installed release; the highest wins.
pub fn status(ctx: &Ctx) -> Result<(), Exit> {
    let t = targets(ctx)?;
    let verb = if t.many { "summary" } else { "status" };
    let mut worst = 0;
    for h in &t.hosts {
        // The state from standard output only: an sshd banner or a sudo warning is not it.
        let ran = ctx.run(
            &ctx.out,
            h,
            &remote::status(verb, h),
            Call {
                tty: Tty::No,
                input: Input::Nothing,
                stdout: Sink::Keep(64 * 1024),
                stderr: Sink::Keep(16 * 1024),
            },
        )?;
        let (rc, lines) = status_report(h, ran.code, &ran.stdout, &ran.stderr, t.many);
        for l in lines {
            ctx.out.line(&l);
        }
        worst = worst.max(rc);
    }
    status_of(worst)
}

/// What make status prints for a host whose `tribist-host status|summary` ended with `code`,
/// and the status it counts as (8: unreachable, or an answer this kit cannot read).
pub fn status_report(
    host: &str,
    code: i32,
    stdout: &[u8],
    stderr: &[u8],
    many: bool,
) -> (i32, Vec<String>) {
    let mut end = stdout.len();
    while end > 0 && stdout[end - 1] == b'\n' {
        end -= 1;
    }
    let mut out = printable(&stdout[..end], 4000);
    let err_text = printable(stderr, usize::MAX);
    let err: String = err_text
        .lines()
        .rfind(|l| !l.is_empty())
        .map(|l| l.chars().take(200).collect())
        .unwrap_or_default();
    let or = |s: &str, default: &str| {
        if s.is_empty() {
            default.to_string()
        } else {
            s.to_string()
        }
    };
    let rc = match code {
        0 | 6 | 7 => code,
        5 => {
            if out.is_empty() {
                out = format!("not installed ({})", or(&err, "no answer"));
            }
            5
        }
        255 => {
            out = format!(
                "unreachable (ssh: {}); make check HOST={host} says why",
                or(&err, "no answer")
            );
            8
        }
        _ => {
            out = format!(
                "unknown (the host answered exit {code}: {}); make install HOST={host} updates it",
                or(&err, "nothing")
            );
            8
        }
    };
    let mut parts = out.split('\n');
    let mut lines = vec![format!("{host:<24} {}", parts.next().unwrap_or(""))];
    if !many {
        lines.extend(parts.map(str::to_string));
        let next = match rc {
            5 => Some(format!(
                "next: make install HOST={host} DATABASE_URL_FILE=path (a file with the database URL)"
            )),
            6 => Some(format!("next: make start HOST={host}")),
            7 if lines[0].contains(": the front") => Some(format!(
                "next: the WARN line above says what to do; make logs HOST={host} ACCESS=1 shows the front's requests"
            )),
            7 => Some(format!("next: make logs HOST={host} says why")),
            8 => Some(format!("next: make check HOST={host} says why it cannot be reached")),
            _ => None,
        };
        lines.extend(next);
    }
    (rc, lines)
}

/// make start|stop HOST=…: tribist-host start|stop on the host (under the deploy lock,
/// audited), so a stopped service stays down until started again.
pub fn start_stop(ctx: &Ctx) -> Result<(), Exit> {
    let host = ctx.host()?;
    let by = ctx.deployer()?;
    let rc = ctx.short(&host, &remote::start_stop(&by, &host, &ctx.command))?;
    if rc != 0 {
        ctx.out.warn(&format!(
            "make {}: failed on {host} (exit {rc}); the messages above say why",
            ctx.command
        ));
        ctx.next_step(&ctx.out, rc, &host);
    }
    status_of(rc)
}

pub fn rollback(ctx: &Ctx) -> Result<(), Exit> {
    let host = ctx.host()?;
    let by = ctx.deployer()?;
    let options = ctx.preflight_args()?;
    let to = ctx.check(values::to(ctx.text("TO")?.as_deref(), &host))?;
    match &to {
        Some(t) => ctx.out.say(&format!("rolling back {host} to release {t}…")),
        None => ctx.out.say(&format!("rolling back {host}")),
    }
    let rc = ctx.long(
        &host,
        &remote::rollback(&by, &host, &options, to.as_deref()),
    )?;
    if rc != 0 {
        ctx.next_step(&ctx.out, rc, &host);
    }
    status_of(rc)
}

/// make logs [LINES=] [SINCE=] [GREP=] [FOLLOW=1]: checked here, checked again on the host,
/// and passed to journalctl as words. FOLLOW runs at a terminal where there is one, so
/// Ctrl-C reaches the host and ends it cleanly.
pub fn logs(ctx: &Ctx) -> Result<(), Exit> {
    let host = ctx.host()?;
    let given_lines = ctx.text("LINES")?;
    let lines = ctx.check(values::lines(given_lines.as_deref(), "100"))?;
    let since = ctx.check(values::since(ctx.text("SINCE")?.as_deref()))?;
    let grep = ctx.check(values::grep(ctx.text("GREP")?.as_deref()))?;
    let follow = ctx.check(values::flag("FOLLOW", ctx.text("FOLLOW")?.as_deref()))?;
    if ctx.check(values::flag("ACCESS", ctx.text("ACCESS")?.as_deref()))? {
        return access_log(ctx, &host, given_lines, since, grep, follow);
    }
    if !follow {
        let rc = ctx.short(
            &host,
            &remote::logs(&lines, since.as_deref(), grep.as_deref()),
        )?;
        return status_of(rc);
    }
    let follow_lines = given_lines.unwrap_or_else(|| "20".into());
    let rc = ctx.long(
        &host,
        &remote::follow(since.as_deref(), grep.as_deref(), &follow_lines),
    )?;
    // Ctrl-C reaches the host, which ends following with status 0 (130 if it came first).
    if rc == 130 {
        return Ok(());
    }
    status_of(rc)
}

/// make logs ACCESS=1 [LINES=] [GREP=] [FOLLOW=1]: the front door's access log (root or
/// sudo on the host). SINCE is the journal's: refused here, nothing sent.
fn access_log(
    ctx: &Ctx,
    host: &str,
    lines: Option<String>,
    since: Option<String>,
    grep: Option<String>,
    follow: bool,
) -> Result<(), Exit> {
    if since.is_some() {
        return Err(ctx.out.refuse(&format!(
            "SINCE is for the service's journal; the access log takes LINES= and GREP= (e.g. GREP='\"status\":5'): make logs HOST={host} ACCESS=1 LINES=1000 GREP=…"
        )));
    }
    let lines = lines.unwrap_or_else(|| if follow { "20" } else { "100" }.into());
    let words = remote::access_log(host, &lines, grep.as_deref(), follow);
    let rc = if follow {
        ctx.long(host, &words)?
    } else {
        ctx.short(host, &words)?
    };
    // Ctrl-C reaches the host, which ends following with status 0 (130 if it came first).
    if follow && rc == 130 {
        return Ok(());
    }
    status_of(rc)
}

pub fn audit(ctx: &Ctx) -> Result<(), Exit> {
    let host = ctx.host()?;
    let lines = ctx.check(values::lines(ctx.text("LINES")?.as_deref(), "50"))?;
    status_of(ctx.short(&host, &remote::audit(&lines))?)
}

pub fn releases(ctx: &Ctx) -> Result<(), Exit> {
    let host = ctx.host()?;
    status_of(ctx.short(&host, &remote::releases())?)
}

pub fn unlock(ctx: &Ctx) -> Result<(), Exit> {
    let host = ctx.host()?;
    let by = ctx.deployer()?;
    ctx.out.say(&format!("breaking the deploy lock on {host}"));
    let rc = ctx.short(&host, &remote::unlock(&by, &host))?;
    if rc != 0 {
        ctx.next_step(&ctx.out, rc, &host);
    }
    status_of(rc)
}

pub fn uninstall(ctx: &Ctx) -> Result<(), Exit> {
    let host = ctx.host()?;
    let by = ctx.deployer()?;
    let purge = ctx.check(values::flag("PURGE", ctx.text("PURGE")?.as_deref()))?;
    if purge {
        confirm_purge(ctx, &host)?;
    }
    ctx.out.say(&format!("uninstalling from {host}"));
    let rc = ctx.long(&host, &remote::uninstall(&by, &host, purge))?;
    if rc != 0 {
        ctx.next_step(&ctx.out, rc, &host);
    }
    status_of(rc)
}

/// PURGE=1 deletes what cannot be had back: asked at a terminal; YES=1 answers for a
/// script; neither: refused, nothing sent.
fn confirm_purge(ctx: &Ctx, host: &str) -> Result<(), Exit> {
    if ctx.check(values::flag("YES", ctx.text("YES")?.as_deref()))? {
        return Ok(());
    }
    if !term::can_ask() {
        return Err(ctx.out.refuse(&format!(
            "PURGE=1 deletes on {host} the configuration (the database URL), the audit log, user tribist and /home/tribist with every kept release, and the HTTPS front's certificates; without a terminal to ask, say so with YES=1: make uninstall HOST={host} PURGE=1 YES=1 (nothing was sent)"
        )));
    }
    let out = &ctx.out;
    out.err_line(&format!(
        "make uninstall PURGE=1 deletes on {host}, for good:"
    ));
    out.err_line("  /etc/tribist (the configuration, with the database URL), /var/lib/tribist-deploy (the audit log),");
    out.err_line("  user tribist and /home/tribist (every kept release, the deploy key), the address drop-ins,");
    out.err_line("  and the HTTPS front's certificates (a new front gets new ones; Caddy and its other sites stay).");
    let answer = term::ask("Type yes to delete them: ", true)?.unwrap_or_default();
    if answer != b"yes" {
        return Err(out.refuse(&format!(
            "not confirmed: nothing was sent (plain make uninstall HOST={host} keeps them)"
        )));
    }
    Ok(())
}

/// make config HOST=… [SET="NAME=VALUE …"] [UNSET="NAME …"] [DATABASE_URL_FILE=…]: without
/// a change, prints the configuration (passwords masked); with one, tribist-host checks,
/// applies and, if need be, takes it back. The database URL travels on ssh's standard input
/// of a connection of its own, never on a command line, so that the change itself can run
/// at a terminal, where Ctrl-C reaches the host and puts the previous configuration back.
pub fn config(ctx: &Ctx) -> Result<(), Exit> {
    let options = ctx.preflight_args()?;
    let host = ctx.host()?;
    ctx.refuse_url_on_command_line()?;
    let (set, unset) = (ctx.text("SET")?, ctx.text("UNSET")?);
    let url_file = ctx.env.is_set("DATABASE_URL_FILE");
    if set.is_none() && unset.is_none() && !url_file {
        return status_of(ctx.short(&host, &remote::config_show())?);
    }
    let by = ctx.deployer()?;
    let mut args = ctx.check(values::config_args(set.as_deref(), unset.as_deref(), &host))?;
    if url_file {
        let url = database_url(ctx, &host)?.unwrap_or_default();
        let ran = ctx.run(
            &ctx.out,
            &host,
            &remote::config_stash(),
            Call {
                tty: Tty::No,
                input: Input::Bytes(url.as_bytes()),
                stdout: Sink::Keep(200),
                stderr: Sink::Show,
            },
        )?;
        if !ran.ok() {
            ctx.out.warn(&format!(
                "make config: could not send the database URL to {host} (exit {}); nothing changed",
                ran.code
            ));
            ctx.next_step(&ctx.out, ran.code, &host);
            return Err(Exit(ran.code));
        }
        let stash = ran.text();
        if !is_name(&stash, "url.", 6..=16) {
            return Err(ctx.out.die(&format!(
                "{host} answered an unexpected stash name: {}; nothing changed",
                shown(&stash)
            )));
        }
        args.extend(["--database-url-stash".to_string(), stash]);
    }
    ctx.out
        .say(&format!("changing the configuration on {host}"));
    let rc = ctx.long(&host, &remote::config_change(&by, &host, &options, &args))?;
    if rc != 0 {
        ctx.out.warn(&format!(
            "make config: failed on {host} (exit {rc}); the messages above say why (nothing changed unless they say so)"
        ));
        ctx.next_step(&ctx.out, rc, &host);
        return Err(Exit(rc));
    }
    ctx.out.say(&format!("configuration of {host} done"));
    Ok(())
}

/// Whether `s` is `prefix` and then letters and digits, as many as `len` allows (the names
/// the host answers: `.upload.XXXXXX`, `url.XXXXXX`, `/tmp/tribist-install.XXXXXX`).
pub fn is_name(s: &str, prefix: &str, len: std::ops::RangeInclusive<usize>) -> bool {
    s.strip_prefix(prefix)
        .is_some_and(|r| len.contains(&r.len()) && r.bytes().all(|b| b.is_ascii_alphanumeric()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_host_and_details_for_one() {
        let (rc, lines) = status_report(
            "root@app1",
            0,
            b"active release=r1 health=200 up=01:02 listen=127.0.0.1:8383\n  service: active (running)\n\n",
            b"",
            false,
        );
        assert_eq!(rc, 0);
        assert_eq!(
            lines,
            [
                "root@app1                active release=r1 health=200 up=01:02 listen=127.0.0.1:8383",
                "  service: active (running)"
            ]
        );
        let (rc, lines) = status_report("app2", 6, b"stopped release=r1\nmore\n", b"", true);
        assert_eq!((rc, lines.len()), (6, 1));
        let (_, lines) = status_report("app2", 6, b"stopped release=r1\n", b"", false);
        assert_eq!(lines[1], "next: make start HOST=app2");
        let (_, lines) = status_report("app2", 7, b"unhealthy\n", b"", false);
        assert_eq!(lines[1], "next: make logs HOST=app2 says why");
    }

    #[test]
    fn not_installed_unreachable_and_unknown() {
        let (rc, lines) = status_report(
            "h",
            5,
            b"",
            b"banner\non h: tribist is not installed (no /home/tribist/bin/tribist-host): make install\n\n",
            false,
        );
        assert_eq!(rc, 5);
        assert_eq!(
            lines[0],
            "h                        not installed (on h: tribist is not installed (no /home/tribist/bin/tribist-host): make install)"
        );
        assert_eq!(
            lines[1],
            "next: make install HOST=h DATABASE_URL_FILE=path (a file with the database URL)"
        );
        let (rc, lines) = status_report(
            "root@nohost",
            255,
            b"",
            b"ssh: Could not resolve hostname nohost\r\n",
            true,
        );
        assert_eq!(rc, 8);
        assert_eq!(
            lines,
            ["root@nohost              unreachable (ssh: ssh: Could not resolve hostname nohost); make check HOST=root@nohost says why"]
        );
        let (rc, lines) = status_report("bob@h", 1, b"", b"", false);
        assert_eq!(rc, 8);
        assert!(lines[0].ends_with(
            "unknown (the host answered exit 1: nothing); make install HOST=bob@h updates it"
        ));
        assert_eq!(
            lines[1],
            "next: make check HOST=bob@h says why it cannot be reached"
        );
    }

    #[test]
    fn the_hosts_bytes_are_bounded_and_printable() {
        let mut hostile = b"active \x1b]0;owned\x07release=\x1b[2Jr1".to_vec();
        hostile.extend(std::iter::repeat_n(b'x', 10_000));
        let (_, lines) = status_report("h", 0, &hostile, &[b'e'; 100_000], false);
        assert!(lines[0].starts_with("h                        active ]0;ownedrelease=[2Jr1xx"));
        assert!(lines.iter().map(String::len).sum::<usize>() <= 4000 + 25);
        assert!(lines
            .iter()
            .all(|l| l.bytes().all(|b| (0x20..0x7f).contains(&b))));
        let (_, lines) = status_report("h", 255, b"", &[b'e'; 100_000], true);
        assert!(lines[0].contains(&"e".repeat(200)) && !lines[0].contains(&"e".repeat(201)));
    }

    #[test]
    fn names_the_host_answers() {
        assert!(is_name(".upload.AbC123", ".upload.", 6..=16));
        assert!(!is_name(".upload.AbC12", ".upload.", 6..=16));
        assert!(!is_name(".upload.../../x", ".upload.", 6..=16));
        assert!(is_name("url.abcdef", "url.", 6..=16));
        assert!(!is_name("url.abcdef\n", "url.", 6..=16));
    }
}
