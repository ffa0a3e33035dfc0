//! `tribist-host`: the deploy kit's program on a host (docs/deploying.md). Installed
//! root-owned in /home/tribist/bin by `make install`; run by the unit's `ExecStartPre=+` and
//! `ExecReload=+` steps, by root's deployments over ssh, and by user tribist.
//!
//! `main` only maps the outcome to an exit code; each command lives in `tribist::host`.

use std::process::ExitCode;

const USAGE: &str = "usage: tribist-host COMMAND [ARG...]

commands:
  help       this text
  layout [PREFIX]
             check every path of the ownership table (docs/deploying.md, \"Who owns what
             on the host\") on this host, or under PREFIX: one line per path that is wrong
  releases   every binary state and rename in /home/tribist/api, as user tribist
             (tribist-host releases --help)

Exit codes: 0 done, 1 failed (the message says why), 2 misuse.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    // The deployment commands and their options (remote.sh's, the unit's steps).
    if command.starts_with("--") && command != "--help"
        || tribist::host::deploy::cli::COMMANDS.contains(&command.as_str())
    {
        return tribist::host::deploy::cli::main(&args);
    }
    match command.as_str() {
        "releases" => ExitCode::from(tribist::host::releases::main(rest)),
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
