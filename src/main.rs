//! `server`: parse the command line and the environment, run, map the outcome to an exit code.

use std::process::ExitCode;

use tribist::config::{self, Config};
use tribist::error::{self, Error};
use tribist::{build, logging, server};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Under journald, `<3>` marks the line as an error (see logging.rs).
            let prefix = if std::env::var_os("JOURNAL_STREAM").is_some() { "<3>" } else { "" };
            eprintln!("{prefix}server: error: {}", error::chain(&err));
            ExitCode::from(err.exit_code() as u8)
        }
    }
}

fn run() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    match (args.next().as_deref(), args.next()) {
        (None, _) => {}
        (Some("-h" | "--help"), None) => {
            print!("{}", config::HELP);
            return Ok(());
        }
        (Some("-V" | "--version"), None) => {
            println!("server {} (commit {})", build::VERSION, build::COMMIT);
            return Ok(());
        }
        (Some(arg), _) => return Err(Error::Usage(format!("unexpected argument {arg:?}"))),
    }
    let config = Config::from_env()?;
    logging::init(config.log_level);
    server::run(config)
}
