//! `server`: parse the command line and the environment, run, map the outcome to an exit code.

use std::process::ExitCode;

use tribist::config::{self, Config};
use tribist::error::{self, Error};
use tribist::{build, contract, db, envfile, handover, logging, server};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Under journald, `<3>` marks the line as an error (see logging.rs).
            let prefix = logging::prefix(log::Level::Error);
            eprintln!("{prefix}server: error: {}", error::chain(&err));
            ExitCode::from(err.exit_code() as u8)
        }
    }
}

/// What the command line asks for.
enum Command {
    Serve { env_file: Option<String> },
    CheckConfig { env_file: Option<String> },
    PrintConfig { env_file: Option<String> },
    Help,
    Version,
    Describe,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Command, Error> {
    let first = args.next();
    let second = args.next();
    if let Some(extra) = args.next() {
        return Err(Error::Usage(format!("unexpected argument {extra:?}")));
    }
    match (first.as_deref(), second) {
        (None, _) => Ok(Command::Serve { env_file: None }),
        (Some("-h" | "--help"), None) => Ok(Command::Help),
        (Some("-V" | "--version"), None) => Ok(Command::Version),
        (Some("--describe"), None) => Ok(Command::Describe),
        (Some("--env-file"), Some(file)) => Ok(Command::Serve {
            env_file: Some(file),
        }),
        (Some("--check-config"), file) => Ok(Command::CheckConfig { env_file: file }),
        (Some("--print-config"), file) => Ok(Command::PrintConfig { env_file: file }),
        (Some(arg), _) => Err(Error::Usage(format!("unexpected argument {arg:?}"))),
    }
}

/// The variables of the environment, or of an environment file in systemd's format whose
/// variables the process environment overrides (so a preflight can move the port).
struct Settings(Vec<(String, String)>);

impl Settings {
    fn read(env_file: Option<&str>) -> Result<Settings, Error> {
        Ok(Settings(match env_file {
            Some(path) => envfile::read(path)?,
            None => Vec::new(),
        }))
    }

    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().or_else(|| {
            self.0
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        })
    }

    fn config(&self) -> Result<Config, Error> {
        Config::from_lookup(|name| self.get(name))
    }
}

fn load_config(env_file: Option<&str>) -> Result<Config, Error> {
    Settings::read(env_file)?.config()
}

fn run() -> Result<(), Error> {
    match parse_args(std::env::args().skip(1))? {
        Command::Help => {
            print!("{}", config::help());
            Ok(())
        }
        Command::Version => {
            println!("server {} (commit {})", build::VERSION, build::COMMIT);
            // What kits that predate --describe ask before they hand over rather than restart.
            println!("{}", handover::VERSION_LINE);
            Ok(())
        }
        Command::Describe => {
            println!("{}", contract::describe());
            Ok(())
        }
        Command::CheckConfig { env_file } => {
            let config = load_config(env_file.as_deref())?;
            let outcome = db::check_once(&config);
            match outcome.result {
                Ok(()) => {
                    println!(
                        "configuration OK: {} workers, listen {}, database {} answered in {:.1} ms \
                         ({}, {:?})",
                        config.workers,
                        config.listen,
                        config.db.display,
                        outcome.elapsed.as_secs_f64() * 1e3,
                        db::encryption(outcome.encrypted),
                        config.db.tls
                    );
                    Ok(())
                }
                Err(failed) => Err(Error::CheckFailed {
                    failure: failed.kind,
                    message: format!("database {}: {}", config.db.display, failed.reason),
                }),
            }
        }
        Command::PrintConfig { env_file } => {
            let settings = Settings::read(env_file.as_deref())?;
            for line in settings.config()?.effective(|name| settings.get(name)) {
                println!("{line}");
            }
            Ok(())
        }
        Command::Serve { env_file } => {
            let config = load_config(env_file.as_deref())?;
            logging::init(config.log_level);
            server::run(config)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, Error> {
        parse_args(args.iter().map(|a| a.to_string()))
    }

    /// The features `--describe` lists that are command-line options are options here.
    #[test]
    fn every_described_option_is_accepted() {
        assert!(matches!(parse(&["--describe"]), Ok(Command::Describe)));
        assert!(parse(&["--describe", "x"]).is_err());
        for feature in [
            envfile::FEATURE,
            db::CHECK_CONFIG_FEATURE,
            contract::DESCRIBE,
        ] {
            assert!(contract::FEATURES.contains(&feature));
            let option = format!("--{feature}");
            let args: &[&str] = if feature == contract::DESCRIBE {
                &[&option]
            } else {
                &[&option, "/etc/tribist/env"]
            };
            assert!(parse(args).is_ok(), "{option}");
        }
    }
}
