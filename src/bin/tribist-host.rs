//! `tribist-host`: the deploy kit's program on a host (docs/deploying.md). Installed
//! root-owned in /home/tribist/bin by `make install`; run by the unit's `ExecStartPre=+` and
//! `ExecReload=+` steps, by root's deployments over ssh, and by user tribist.
//!
//! `main` only maps the outcome to an exit code; each command lives in `tribist::host`.

use std::process::ExitCode;

const USAGE: &str = "usage: tribist-host COMMAND [ARG...]

commands:
  help       this text

Exit codes: 0 done, 1 failed (the message says why), 2 misuse.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let _ = rest;
    match command.as_str() {
        "help" | "-h" | "--help" => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        other => {
            eprintln!(
                "tribist-host: unknown command {:?}; try: tribist-host help",
                tribist::host::text::clean(other.as_bytes(), 40)
            );
            ExitCode::from(2)
        }
    }
}
