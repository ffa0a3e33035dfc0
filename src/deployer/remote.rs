//! What each deployment step runs on the host, as words.
//!
//! Why: the host side's interface (tribist-host's commands and options, the few `sh -c`
//! scripts the deployer needs before anything is installed) is the contract between the two
//! sides; written here as data, each step is tested as the exact string ssh sends
//! ([`super::words::remote_line`]), in milliseconds, without a host (Kamal's way).

/// The host program: every deployment command on the host.
pub const DEPLOY: &str = "/home/tribist/bin/tribist-host";

fn words(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

/// `tribist-host --by BY --target HOST OPTIONS… COMMAND ARGS…`, the form of every change.
fn change(by: &str, host: &str, options: &[String], command: &str, args: &[String]) -> Vec<String> {
    let mut w = words(&[DEPLOY, "--by", by, "--target", host]);
    w.extend_from_slice(options);
    w.push(command.to_string());
    w.extend_from_slice(args);
    w
}

/// The host's machine and C library (`uname -m`, then `glibc 2.36` or `none`).
pub fn platform() -> Vec<String> {
    words(&[
        "sh",
        "-c",
        "uname -m; getconf GNU_LIBC_VERSION 2>/dev/null || echo none",
    ])
}

/// The address tribist.socket listens on now (empty before an install).
pub fn socket_listen() -> Vec<String> {
    words(&[
        "sh",
        "-c",
        "systemctl show -p Listen --value tribist.socket 2>/dev/null | head -n 1",
    ])
}

/// sbin/check.sh, fed on standard input; with `domain`, also the front door's checks.
pub fn check_script(listen: &str, machine: &str, glibc: &str, domain: Option<&str>) -> Vec<String> {
    let mut w = words(&["bash", "-s", "--", listen, machine, glibc]);
    w.extend(domain.map(str::to_string));
    w
}

/// Copies the binary on standard input to a private directory; prints the directory.
pub fn check_upload() -> Vec<String> {
    words(&[
        "sh",
        "-c",
        r#"umask 077 && d=$(mktemp -d /tmp/tribist-check.XXXXXX) && cat >"$d/server" && chmod 700 "$d/server" && echo "$d""#,
    ])
}

/// Runs `server --check-config` in `dir` on the environment file given on standard input
/// (the database URL), then removes `dir`.
pub fn check_database(dir: &str, listen: &str) -> Vec<String> {
    words(&[
        "sh",
        "-c",
        r#"cat >"$1/env"; env -i PATH=/usr/bin:/bin TRIBIST_LISTEN="$2" "$1/server" --check-config "$1/env" 2>&1; rc=$?; rm -rf "$1"; exit $rc"#,
        "sh",
        dir,
        listen,
    ])
}

/// Whether the host has a configuration already (install asks for a URL only if not).
pub fn has_configuration() -> Vec<String> {
    words(&["test", "-e", "/etc/tribist/env"])
}

/// Extracts the install bundle (a tar stream on standard input) into a private directory;
/// prints the directory.
pub fn install_upload() -> Vec<String> {
    words(&[
        "sh",
        "-c",
        r#"umask 077 && d=$(mktemp -d /tmp/tribist-install.XXXXXX) && tar -xf - -C "$d" --no-same-owner && echo "$d""#,
    ])
}

/// Installs from the bundle in `dir` with the bundle's own tribist-host, then removes it.
/// `front`: `front apply`'s words for the HTTPS front (`values::FrontGiven::words`), passed
/// after `install DIR` as arguments of the constant script, like every other value.
pub fn install(
    dir: &str,
    by: &str,
    listen: Option<&str>,
    host: &str,
    url_file: &str,
    front: &[String],
) -> Vec<String> {
    let mut w = words(&[
        "sh",
        "-c",
        "d=$1 by=$2 listen=$3 target=$4 file=$5; shift 5\nif [ -n \"$listen\" ]; then set -- --listen \"$listen\" install \"$d\" \"$@\"; else set -- install \"$d\" \"$@\"; fi\n\"$d/tribist-host\" --by \"$by\" --target \"$target\" --url-file \"$file\" \"$@\"; rc=$?; rm -rf \"$d\"; exit $rc",
        "sh",
        dir,
        by,
        listen.unwrap_or(""),
        host,
        url_file,
    ]);
    w.extend_from_slice(front);
    w
}

/// Receives the binary on standard input, checked against `sha256`; prints the upload's name.
pub fn receive(sha256: &str) -> Vec<String> {
    words(&[DEPLOY, "receive", sha256])
}

/// `upgrade UPLOAD SHA256`: the host checks root's copy of the upload against the digest of
/// what was sent.
pub fn upgrade(by: &str, host: &str, options: &[String], upload: &str, sum: &str) -> Vec<String> {
    change(
        by,
        host,
        options,
        "upgrade",
        &[upload.to_string(), sum.to_string()],
    )
}

pub fn rollback(by: &str, host: &str, options: &[String], to: Option<&str>) -> Vec<String> {
    let args: Vec<String> = to
        .map(|t| vec!["--to".into(), t.into()])
        .unwrap_or_default();
    change(by, host, options, "rollback", &args)
}

/// The releaseId serving now.
pub fn serving() -> Vec<String> {
    words(&[DEPLOY, "serving"])
}

/// `status` (one host, with details, `host` naming it in the commands they print) or
/// `summary` (one line, for fleets).
pub fn status(verb: &str, host: &str) -> Vec<String> {
    if verb == "status" {
        return words(&[DEPLOY, "--target", host, verb]);
    }
    words(&[DEPLOY, verb])
}

/// `start` or `stop`.
pub fn start_stop(by: &str, host: &str, command: &str) -> Vec<String> {
    change(by, host, &[], command, &[])
}

pub fn unlock(by: &str, host: &str) -> Vec<String> {
    change(by, host, &[], "unlock", &[])
}

pub fn uninstall(by: &str, host: &str, purge: bool) -> Vec<String> {
    let mut w = words(&[DEPLOY, "--by", by, "--target", host, "uninstall"]);
    if purge {
        w.push("--purge".into());
    }
    w
}

pub fn audit(lines: &str) -> Vec<String> {
    words(&[DEPLOY, "audit", lines])
}

pub fn releases() -> Vec<String> {
    words(&[DEPLOY, "releases"])
}

/// The last `lines` log lines; with SINCE or GREP, both words (`-` for none).
pub fn logs(lines: &str, since: Option<&str>, grep: Option<&str>) -> Vec<String> {
    if since.is_none() && grep.is_none() {
        return words(&[DEPLOY, "logs", lines]);
    }
    words(&[
        DEPLOY,
        "logs",
        lines,
        since.unwrap_or("-"),
        grep.unwrap_or("-"),
    ])
}

pub fn follow(since: Option<&str>, grep: Option<&str>, lines: &str) -> Vec<String> {
    words(&[
        DEPLOY,
        "follow",
        since.unwrap_or("-"),
        grep.unwrap_or("-"),
        lines,
    ])
}

/// The front door's access log (root): the last `lines` lines (holding `grep`), then, with
/// `follow`, the log as it is written; `host` names the host in a message's command.
pub fn access_log(host: &str, lines: &str, grep: Option<&str>, follow: bool) -> Vec<String> {
    let verb = if follow {
        "access-follow"
    } else {
        "access-log"
    };
    let mut w = words(&[DEPLOY, "--target", host, verb, lines]);
    w.extend(grep.map(str::to_string));
    w
}

/// The configuration, masked.
pub fn config_show() -> Vec<String> {
    words(&[DEPLOY, "config"])
}

/// Keeps the database URL on standard input for a `config` to come; prints its name.
pub fn config_stash() -> Vec<String> {
    words(&[DEPLOY, "config-stash"])
}

pub fn config_change(by: &str, host: &str, options: &[String], args: &[String]) -> Vec<String> {
    change(by, host, options, "config", args)
}

#[cfg(test)]
mod tests {
    use super::super::words::{quote, remote_line, GUARD, WRAPPER};
    use super::*;

    /// The part of the remote line after the wrapper and the guard.
    fn sent(w: &[String]) -> String {
        let line = remote_line(w);
        let prefix = format!("sh -c {} tribist-remote {} ", quote(WRAPPER), quote(GUARD));
        line.strip_prefix(&prefix)
            .expect("wrapper and guard first")
            .to_string()
    }

    const HOSTILE: &str = "o'brien `touch /tmp/x` $(touch /tmp/y); touch /tmp/z; \"q\" \\ $HOME";

    #[test]
    fn changes_carry_who_and_where_literally() {
        let opts = vec![
            "--preflight".to_string(),
            "0".into(),
            "--keep".into(),
            "3".into(),
        ];
        assert_eq!(
            sent(&upgrade(
                HOSTILE,
                "root@app1",
                &opts,
                ".upload.AbC123",
                &"ab".repeat(32)
            )),
            format!(
                r#"'/home/tribist/bin/tribist-host' '--by' 'o'\''brien `touch /tmp/x` $(touch /tmp/y); touch /tmp/z; "q" \ $HOME' '--target' 'root@app1' '--preflight' '0' '--keep' '3' 'upgrade' '.upload.AbC123' '{}'"#,
                "ab".repeat(32)
            )
        );
        assert_eq!(
            sent(&rollback("me@desk", "app1", &[], Some("3f2a9c"))),
            "'/home/tribist/bin/tribist-host' '--by' 'me@desk' '--target' 'app1' 'rollback' '--to' '3f2a9c'"
        );
        assert_eq!(
            sent(&rollback("me@desk", "app1", &[], None)),
            "'/home/tribist/bin/tribist-host' '--by' 'me@desk' '--target' 'app1' 'rollback'"
        );
        assert_eq!(
            sent(&start_stop("me", "h", "stop")),
            "'/home/tribist/bin/tribist-host' '--by' 'me' '--target' 'h' 'stop'"
        );
        assert_eq!(
            sent(&unlock("me", "h")),
            "'/home/tribist/bin/tribist-host' '--by' 'me' '--target' 'h' 'unlock'"
        );
        assert_eq!(
            sent(&uninstall("me", "root@app1", true)),
            "'/home/tribist/bin/tribist-host' '--by' 'me' '--target' 'root@app1' 'uninstall' '--purge'"
        );
        assert_eq!(
            sent(&uninstall(HOSTILE, "h", false)),
            r#"'/home/tribist/bin/tribist-host' '--by' 'o'\''brien `touch /tmp/x` $(touch /tmp/y); touch /tmp/z; "q" \ $HOME' '--target' 'h' 'uninstall'"#
        );
        let args = [
            "--set",
            "TRIBIST_WORKERS=8",
            "--database-url-stash",
            "url.Ab12Cd",
        ]
        .map(String::from);
        assert_eq!(
            sent(&config_change("me", "h", &[], &args)),
            "'/home/tribist/bin/tribist-host' '--by' 'me' '--target' 'h' 'config' '--set' 'TRIBIST_WORKERS=8' '--database-url-stash' 'url.Ab12Cd'"
        );
    }

    #[test]
    fn reads_and_uploads() {
        assert_eq!(
            sent(&receive("ab12")),
            "'/home/tribist/bin/tribist-host' 'receive' 'ab12'"
        );
        assert_eq!(
            sent(&serving()),
            "'/home/tribist/bin/tribist-host' 'serving'"
        );
        assert_eq!(
            sent(&status("summary", "app1")),
            "'/home/tribist/bin/tribist-host' 'summary'"
        );
        assert_eq!(
            sent(&status("status", "root@app1")),
            "'/home/tribist/bin/tribist-host' '--target' 'root@app1' 'status'"
        );
        assert_eq!(
            sent(&audit("50")),
            "'/home/tribist/bin/tribist-host' 'audit' '50'"
        );
        assert_eq!(
            sent(&releases()),
            "'/home/tribist/bin/tribist-host' 'releases'"
        );
        assert_eq!(
            sent(&config_show()),
            "'/home/tribist/bin/tribist-host' 'config'"
        );
        assert_eq!(
            sent(&config_stash()),
            "'/home/tribist/bin/tribist-host' 'config-stash'"
        );
        assert_eq!(
            sent(&logs("100", None, None)),
            "'/home/tribist/bin/tribist-host' 'logs' '100'"
        );
        assert_eq!(
            sent(&logs("5", Some("1 hour ago"), None)),
            "'/home/tribist/bin/tribist-host' 'logs' '5' '1 hour ago' '-'"
        );
        assert_eq!(
            sent(&logs("5", None, Some("it's $(x)"))),
            r"'/home/tribist/bin/tribist-host' 'logs' '5' '-' 'it'\''s $(x)'"
        );
        assert_eq!(
            sent(&follow(None, Some("a b"), "20")),
            "'/home/tribist/bin/tribist-host' 'follow' '-' 'a b' '20'"
        );
        assert_eq!(
            sent(&access_log("root@app1", "5", None, false)),
            "'/home/tribist/bin/tribist-host' '--target' 'root@app1' 'access-log' '5'"
        );
        assert_eq!(
            sent(&access_log("app1", "20", Some("GET /x'; id"), true)),
            r"'/home/tribist/bin/tribist-host' '--target' 'app1' 'access-follow' '20' 'GET /x'\''; id'"
        );
        assert_eq!(sent(&has_configuration()), "'test' '-e' '/etc/tribist/env'");
        assert_eq!(
            sent(&platform()),
            "'sh' '-c' 'uname -m; getconf GNU_LIBC_VERSION 2>/dev/null || echo none'"
        );
        assert_eq!(
            sent(&check_script("[::1]:8383", "x86_64", "2.17", None)),
            "'bash' '-s' '--' '[::1]:8383' 'x86_64' '2.17'"
        );
        assert_eq!(
            sent(&check_script(
                "127.0.0.1:8383",
                "any",
                "none",
                Some("api.example.com")
            )),
            "'bash' '-s' '--' '127.0.0.1:8383' 'any' 'none' 'api.example.com'"
        );
        assert_eq!(
            sent(&check_database(
                "/tmp/tribist-check.AbC123",
                "127.0.0.1:8383"
            )),
            r#"'sh' '-c' 'cat >"$1/env"; env -i PATH=/usr/bin:/bin TRIBIST_LISTEN="$2" "$1/server" --check-config "$1/env" 2>&1; rc=$?; rm -rf "$1"; exit $rc' 'sh' '/tmp/tribist-check.AbC123' '127.0.0.1:8383'"#
        );
    }

    #[test]
    fn install_passes_its_values_as_arguments_of_a_constant_script() {
        let w = install(
            "/tmp/tribist-install.AbC123",
            HOSTILE,
            None,
            "root@app1",
            "path",
            &[],
        );
        assert_eq!(&w[..2], ["sh", "-c"]);
        assert_eq!(
            &w[3..],
            [
                "sh",
                "/tmp/tribist-install.AbC123",
                HOSTILE,
                "",
                "root@app1",
                "path"
            ]
        );
        assert!(!w[2].contains("tribist-install.") && !w[2].contains("root@"));
        let w = install("/tmp/d", "me", Some("0.0.0.0:80"), "h", "~/url", &[]);
        assert_eq!(w[6], "0.0.0.0:80");
        assert!(sent(&w).ends_with(" 'sh' '/tmp/d' 'me' '0.0.0.0:80' 'h' '~/url'"));
    }

    /// The front's words follow `install DIR`: the bundle's copies of the files, never a path
    /// of the deployer's machine; a hostile value stays one quoted word.
    #[test]
    fn install_carries_the_front_as_words() {
        use super::super::values::{FrontCerts, FrontGiven};
        let dir = "/tmp/tribist-install.AbC123";
        let acme = FrontGiven {
            domain: "api.example.com".into(),
            certs: FrontCerts::Acme {
                email: "ops@example.com".into(),
                ca: Some("https://127.0.0.1:14000/dir".into()),
                ca_root: Some("/home/me/pebble's root.pem".into()),
            },
        };
        let line = sent(&install(dir, "me", None, "h", "path", &acme.words(dir)));
        assert!(
            line.ends_with(" 'sh' '/tmp/tribist-install.AbC123' 'me' '' 'h' 'path' '--domain' 'api.example.com' '--acme-email' 'ops@example.com' '--acme-ca' 'https://127.0.0.1:14000/dir' '--acme-ca-root' '/tmp/tribist-install.AbC123/front-ca-root.pem'"),
            "{line}"
        );
        assert!(!line.contains("pebble"), "the deployer's path stays here");
        let own = FrontGiven {
            domain: "api.example.com".into(),
            certs: FrontCerts::Own {
                cert: "c.pem".into(),
                key: "/secret/k.pem".into(),
            },
        };
        let line = sent(&install(
            dir,
            "me",
            Some("127.0.0.1:9000"),
            "h",
            "path",
            &own.words(dir),
        ));
        assert!(
            line.ends_with(" 'sh' '/tmp/tribist-install.AbC123' 'me' '127.0.0.1:9000' 'h' 'path' '--domain' 'api.example.com' '--cert-file' '/tmp/tribist-install.AbC123/front-cert.pem' '--key-file' '/tmp/tribist-install.AbC123/front-key.pem'"),
            "{line}"
        );
        assert!(!line.contains("secret"));
        // Were a hostile domain ever to get this far, it would still be one quoted word.
        let hostile = FrontGiven {
            domain: "x{env.HOME}'; touch /tmp/x\nimport /etc/shadow".into(),
            certs: own.certs.clone(),
        };
        let line = sent(&install(dir, "me", None, "h", "path", &hostile.words(dir)));
        assert!(
            line.contains(
                " '--domain' 'x{env.HOME}'\\''; touch /tmp/x\nimport /etc/shadow' '--cert-file' "
            ),
            "{line}"
        );
    }

    /// The scripts sent with `sh -c` run as written, with the arguments they are given.
    #[test]
    fn the_install_script_runs_what_it_says() {
        let tmp = std::env::temp_dir();
        let dir = tmp.join(format!("tribist-install-test-{}", std::process::id()));
        let out = tmp.join(format!("tribist-install-args-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let prog = dir.join("tribist-host");
        std::fs::write(
            &prog,
            "#!/bin/sh\nprintf '[%s]' \"$@\" >\"$ARGS_OUT\"; exit 4\n",
        )
        .unwrap();
        std::fs::set_permissions(&prog, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let front: Vec<String> = ["--domain", HOSTILE, "--acme-email", "o@example.com"]
            .map(String::from)
            .to_vec();
        let w = install(
            dir.to_str().unwrap(),
            HOSTILE,
            Some("[::1]:1"),
            "h",
            "p",
            &front,
        );
        let status = std::process::Command::new(&w[0])
            .args(&w[1..])
            .env("ARGS_OUT", &out)
            .status()
            .unwrap();
        assert_eq!(
            status.code(),
            Some(4),
            "the status is the bundle's tribist-host's"
        );
        assert!(!dir.exists(), "the bundle directory is removed");
        let got = std::fs::read_to_string(&out).unwrap();
        std::fs::remove_file(&out).unwrap();
        assert_eq!(
            got,
            format!(
                "[--by][{HOSTILE}][--target][h][--url-file][p][--listen][[::1]:1][install][{}][--domain][{HOSTILE}][--acme-email][o@example.com]",
                dir.display()
            )
        );
        // Without LISTEN and without a front: install DIR alone.
        let w = install(dir.to_str().unwrap(), "me", None, "h", "p", &[]);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            &prog,
            "#!/bin/sh\nprintf '[%s]' \"$@\" >\"$ARGS_OUT\"; exit 9\n",
        )
        .unwrap();
        std::fs::set_permissions(&prog, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let status = std::process::Command::new(&w[0])
            .args(&w[1..])
            .env("ARGS_OUT", &out)
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(9));
        let got = std::fs::read_to_string(&out).unwrap();
        std::fs::remove_file(&out).unwrap();
        assert_eq!(
            got,
            format!(
                "[--by][me][--target][h][--url-file][p][install][{}]",
                dir.display()
            )
        );
    }
}
