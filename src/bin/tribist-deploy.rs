//! `tribist-deploy`: the deployer's side of the deploy kit (`make install|upgrade|…`), built
//! for the developer's own machine by `sbin/remote.sh`, which hands over to it. Its settings
//! come from the environment, as make passes them; `tribist-deploy --help` lists them.
//!
//! `main` only passes the arguments and exits with the status; everything else lives in
//! `tribist::deployer`.

fn main() {
    let code = tribist::deployer::main(std::env::args_os().collect());
    std::process::exit(code);
}
