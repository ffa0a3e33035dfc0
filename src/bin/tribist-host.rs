//! `tribist-host`: the deploy kit's program on a host (docs/deploying.md). Installed
//! root-owned in /home/tribist/bin by `make install`; run by the unit's `ExecStartPre=+` and
//! `ExecReload=+` steps, by root's deployments over ssh, and by user tribist.
//!
//! `main` only maps the outcome to an exit code; each command lives in `tribist::host`.

use std::process::ExitCode;

const USAGE: &str =
    "usage: tribist-host [--by WHO] [--target HOST] [--url-file NAME] [--preflight SECONDS]
                    [--listen ADDR:PORT] [--keep N] COMMAND [ARG...]

The deploy kit on this host (make install, upgrade, … run these over ssh; docs/deploying.md):
  install BUNDLE_DIR [--domain D (--acme-email E [--acme-ca URL] [--acme-ca-root FILE]
                     | --cert-file F --key-file K)]
                         (root) install or update everything from BUNDLE_DIR; with --domain,
                         then the HTTPS front (front apply; its files are BUNDLE_DIR's); without,
                         a front already there is kept
  receive SHA256         read a binary from stdin into api/ (as tribist), check its SHA-256,
                         print the upload's name
  upgrade UPLOAD         preflight UPLOAD, switch to it (a handover, or a restart), wait for
                         the new release; roll back on failure or Ctrl-C
  rollback [--to PREFIX] put server.prev back (or the kept release whose id starts with PREFIX)
  releases               the kept releases, which serves and which is the previous one
  status | summary       the service, its releases, /health and the front door (summary: one
                         line); exit 0 healthy, 5 not installed, 6 stopped, 7 unhealthy or
                         behind a front clients cannot get through
  serving                the releaseId /health reports now
  logs [LINES [SINCE [GREP]]]   the service's log (as tribist: systemctl status's view)
  follow [SINCE [GREP]]  (root) the log as it is written, until Ctrl-C
  access-log [LINES [GREP]]     (root) the front door's access log (Caddy's JSON lines), the
                         last LINES (100) holding GREP; access-follow: then as it is written
  audit [LINES]          (root) the last deployments recorded on this host, newest last
  unlock                 break the deploy lock on purpose (stops its holder)
  start | stop           the service and its socket, under the lock, audited
  config                 every setting as the installed binary reads /etc/tribist/env
  config [--set NAME=VALUE]... [--unset NAME]... [--database-url-stash NAME|--database-url-stdin]
                         (root) change the configuration: checked, applied by a restart,
                         taken back if the server is not healthy or on Ctrl-C
  config-stash           (root) keep the database URL on stdin for the next config
  on-start | on-reload   (root) the unit's pre-start and reload steps: promote server_new,
                         copy it into root's /var/lib/tribist-deploy/bin, audit, start or hand
                         over
  uninstall [--purge]    (root) remove the front (front remove), stop and remove the service;
                         --purge also its files, users and the front's certificates

Exit codes of these: 0 done, 1 failed, 2 misuse, 3 the deploy lock is held, 4 the
configuration cannot work, 5 not installed, 9 installed and healthy but the front failed,
130 interrupted (what was promised put back).

Other commands:
  front apply --domain D (--acme-email E [--acme-ca URL] [--acme-ca-root FILE]
                          | --cert-file F --key-file K) [--upstream ADDR:PORT] [--by WHO]
             (root) put tribist's HTTPS site in Caddy, installing caddy if missing: files
             root's, checked by caddy validate, reloaded only if changed; waits for
             https://D/health (docs/front-door.md)
  front remove [--purge] [--by WHO]
             (root) remove tribist's site alone (other sites keep serving); --purge also
             its certificates (and the drop-in when no other site remains)
  front status
             caddy, the front's site, its certificate's issuer and expiry, ports 80/443;
             exit 0 serving, 5 no front, 6 caddy stopped, 7 not answering
  front-render site|servers KEY=VALUE...
             print tribist's Caddy site block (DOMAIN=, UPSTREAM=, ACME_EMAIL= [ACME_CA=,
             ACME_CA_ROOT=] or CERT_FILE= KEY_FILE=) or the servers option (edge limits)
  front-render caddyfile-main
             print the whole Caddyfile that replaces Debian's default one
  front-render caddyfile-add|caddyfile-remove
             read a Caddyfile on stdin, print it with tribist's import lines added/removed
  help       this text
  layout [PREFIX]
             check every path of the ownership table (docs/deploying.md, \"Who owns what
             on the host\") on this host, or under PREFIX: one line per path that is wrong
  releases   every binary state and rename in /home/tribist/api, as user tribist
             (tribist-host releases --help)

Exit codes: 0 done, 1 failed (the message says why), 2 misuse.";

fn main() -> ExitCode {
    // Every argument must be text: one that is not (a hostile deployer's GREP=, say) is
    // refused, not a panic.
    let Ok(args) = std::env::args_os()
        .skip(1)
        .map(|a| a.into_string())
        .collect::<Result<Vec<String>, _>>()
    else {
        eprintln!("tribist-host: an argument is not UTF-8 text; nothing was done");
        return ExitCode::from(2);
    };
    let Some((command, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    // The deployment commands and their options (remote.sh's, the unit's steps).
    if tribist::host::deploy::cli::handles(command, rest) {
        return tribist::host::deploy::cli::main(&args);
    }
    match command.as_str() {
        "releases" => ExitCode::from(tribist::host::releases::main(rest)),
        "front-render" => front_render(rest),
        "front" => tribist::host::front_host::main(rest),
        "help" | "-h" | "--help" => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        "layout" => match rest {
            [] => layout("/"),
            [prefix] => layout(prefix),
            _ => {
                eprintln!("tribist-host: layout takes at most one PREFIX; try: tribist-host help");
                ExitCode::from(2)
            }
        },
        other => {
            eprintln!(
                "tribist-host: unknown command {:?}; try: tribist-host help",
                tribist::host::text::clean(other.as_bytes(), 40)
            );
            ExitCode::from(2)
        }
    }
}

fn layout(prefix: &str) -> ExitCode {
    use tribist::host::layout;
    let ids = match layout::Ids::host() {
        Ok(ids) => ids,
        Err(user) => {
            eprintln!(
                "tribist-host: there is no user {user} on this host; make install creates it"
            );
            return ExitCode::from(1);
        }
    };
    let errors = layout::check_all(std::path::Path::new(prefix), &ids);
    for e in &errors {
        println!("{e}");
    }
    if errors.is_empty() {
        println!(
            "the layout under {} is as the ownership table says",
            tribist::host::text::clean(prefix.as_bytes(), 200)
        );
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `tribist-host front-render …`: the front's Caddy files as text (src/host/front.rs).
fn front_render(rest: &[String]) -> ExitCode {
    use std::io::Read;
    use tribist::host::front;
    let out = match rest.split_first() {
        Some((what, words)) if what == "site" => front::from_settings(words).and_then(|f| f.site()),
        Some((what, [])) if what == "servers" => front::EdgeLimits::default().servers(),
        Some((what, [])) if what == "caddyfile-main" => Ok(front::main_caddyfile()),
        Some((what, [])) if what == "caddyfile-add" || what == "caddyfile-remove" => {
            let mut text = String::new();
            // A Caddyfile is small; more than 1 MiB is not one.
            if let Err(e) = std::io::stdin().take(1 << 20).read_to_string(&mut text) {
                eprintln!("tribist-host: cannot read the Caddyfile on stdin: {e}; pipe it in: tribist-host front-render {what} </etc/caddy/Caddyfile");
                return ExitCode::FAILURE;
            }
            if what == "caddyfile-add" {
                front::with_front(&text)
            } else {
                Ok(front::without_front(&text))
            }
        }
        _ => {
            eprintln!("usage: tribist-host front-render site|servers|caddyfile-main|caddyfile-add|caddyfile-remove [KEY=VALUE...]; see: tribist-host help");
            return ExitCode::from(2);
        }
    };
    match out {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tribist-host: {e}");
            ExitCode::FAILURE
        }
    }
}
