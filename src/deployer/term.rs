//! Where the deployer's messages and the host's output go, and the two questions the kit
//! asks at a terminal (the database URL, without echo; PURGE's confirmation).
//!
//! Why: a rolling upgrade of several hosts at once prefixes every line of one host, its own
//! messages and those of its ssh calls alike, with `[host] ` (`Out::Pipe`, one pipe per host
//! read by a thread); everywhere else they go straight to the terminal (`Out::Term`), where
//! ssh -t carries Ctrl-C to the host. Questions poll for an interrupt, so Ctrl-C at a prompt
//! ends the run (exit 130) with the terminal's echo put back.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::process::Stdio;
use std::sync::Arc;

use crate::host::deploy::interrupt;

/// How a run ends early: the exit status, its message already printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit(pub i32);

impl Exit {
    pub const FAILED: Exit = Exit(1);
    pub const USAGE: Exit = Exit(2);
    pub const INTERRUPTED: Exit = Exit(130);
}

pub const PROG: &str = "tribist-deploy";

#[derive(Clone)]
pub enum Out {
    /// This process's standard output and error.
    Term,
    /// One host of several at once: everything into a pipe, read and prefixed elsewhere.
    Pipe(Arc<io::PipeWriter>),
}

impl Out {
    fn write(&self, to_stderr: bool, text: &str) {
        // A closed terminal or pipe ends nothing here: the host's work goes on or is
        // interrupted by its own signals.
        match self {
            Out::Term if to_stderr => {
                let _ = io::stderr().write_all(text.as_bytes());
            }
            Out::Term => {
                let mut o = io::stdout().lock();
                let _ = o.write_all(text.as_bytes());
                let _ = o.flush();
            }
            Out::Pipe(w) => {
                let _ = (&**w).write_all(text.as_bytes());
            }
        }
    }

    /// `==> msg` on standard output.
    pub fn say(&self, msg: &str) {
        self.write(false, &format!("==> {msg}\n"));
    }

    /// `==> msg` on standard error (while standard output is someone else's).
    pub fn say_err(&self, msg: &str) {
        self.write(true, &format!("==> {msg}\n"));
    }

    /// `tribist-deploy: msg` on standard error.
    pub fn warn(&self, msg: &str) {
        self.write(true, &format!("{PROG}: {msg}\n"));
    }

    /// A line of standard output as it is.
    pub fn line(&self, text: &str) {
        self.write(false, &format!("{text}\n"));
    }

    /// A line of standard error as it is.
    pub fn err_line(&self, text: &str) {
        self.write(true, &format!("{text}\n"));
    }

    /// Refused (exit 2): said, and nothing sent.
    pub fn refuse(&self, msg: &str) -> Exit {
        self.warn(msg);
        Exit::USAGE
    }

    /// Failed (exit 1).
    pub fn die(&self, msg: &str) -> Exit {
        self.warn(msg);
        Exit::FAILED
    }

    /// A child's standard output: ours, or the pipe.
    pub fn stdout(&self) -> io::Result<Stdio> {
        match self {
            Out::Term => Ok(Stdio::inherit()),
            Out::Pipe(w) => Ok(w.try_clone()?.into()),
        }
    }

    pub fn stderr(&self) -> io::Result<Stdio> {
        self.stdout()
    }

    /// Whether a person is at this output's keyboard (ssh -t then, so Ctrl-C reaches the
    /// host).
    pub fn at_terminal(&self) -> bool {
        matches!(self, Out::Term) && stdin_is_terminal()
    }
}

pub fn stdin_is_terminal() -> bool {
    // SAFETY: isatty only reads the descriptor's state.
    unsafe { libc::isatty(0) == 1 }
}

/// The controlling terminal, if this process has one it may read.
fn tty() -> Option<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .ok()
}

/// Whether the kit may ask here: standard input is a terminal and /dev/tty opens.
pub fn can_ask() -> bool {
    stdin_is_terminal() && tty().is_some()
}

/// Asks `prompt` on standard error and reads one line from the terminal (without echo when
/// `echo` is false), polling for Ctrl-C. None when there is no terminal.
pub fn ask(prompt: &str, echo: bool) -> Result<Option<Vec<u8>>, Exit> {
    let Some(mut tty) = tty() else {
        return Ok(None);
    };
    let _ = io::stderr().write_all(prompt.as_bytes());
    let fd = tty.as_raw_fd();
    // SAFETY: termios is plain data; tcgetattr fills it for a valid descriptor.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    let have_termios = unsafe { libc::tcgetattr(fd, &mut saved) } == 0;
    if !echo && have_termios {
        let mut quiet = saved;
        quiet.c_lflag &= !(libc::ECHO | libc::ECHONL);
        // SAFETY: as above.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) };
    }
    let result = read_line(&mut tty);
    if !echo && have_termios {
        // SAFETY: puts back what tcgetattr read.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
        let _ = io::stderr().write_all(b"\n");
    }
    match result {
        Some(line) => Ok(Some(line)),
        None if interrupt::interrupted() => {
            if echo {
                let _ = io::stderr().write_all(b"\n");
            }
            Err(Exit::INTERRUPTED)
        }
        None => Ok(Some(Vec::new())),
    }
}

/// One line (without its newline, at most 64 KiB) from `tty`, None if interrupted first;
/// end of input is an empty line.
fn read_line(tty: &mut File) -> Option<Vec<u8>> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if interrupt::interrupted() {
            return None;
        }
        let mut p = libc::pollfd {
            fd: tty.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut p, 1, 100) };
        if ready <= 0 {
            continue;
        }
        match tty.read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if line.len() < 64 * 1024 => line.push(byte[0]),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    Some(line)
}
