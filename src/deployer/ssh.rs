//! ssh, as the kit calls it: the user's options, one shared connection per host for the
//! run, a terminal only where a person is and the call is long, and the host's output read
//! bounded.
//!
//! Why: every step of a deployment is one ssh call with one remote line
//! ([`super::words::remote_line`]); the argument vector is built by [`Ssh::argv`] alone and
//! tested as data. Sharing one connection per host (ssh's ControlMaster, in a private
//! directory, ended with the run) is what Capistrano and Kamal do: on a busy machine a second
//! handshake costs as much as the rest of an upgrade.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::term::{Exit, Out};
use super::words::remote_line;
use crate::host::deploy::interrupt;

/// The options for a shared connection in `dir` (after the user's, so theirs win).
pub fn share_options(dir: &Path) -> Vec<String> {
    vec![
        "-o".into(),
        "ControlMaster=auto".into(),
        "-o".into(),
        format!("ControlPath={}/%C", dir.display()),
        "-o".into(),
        "ControlPersist=60".into(),
    ]
}

/// Whether a call gets a terminal: `Long` calls do when a person is at this one (so Ctrl-C
/// reaches the host, which rolls back); calls whose output is read never do (no `\r`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tty {
    Long,
    No,
}

/// What a call reads on its standard input.
pub enum Input<'a> {
    Nothing,
    /// Ours (only where a person may type: `Long` calls at a terminal).
    Keyboard,
    Bytes(&'a [u8]),
}

/// Where a stream of the call goes.
#[derive(Clone, Copy)]
pub enum Sink {
    /// To the output ([`Out`]) as it comes.
    Show,
    /// Kept, at most this many bytes (the first ones for standard output, the last ones for
    /// standard error); the rest is read and dropped.
    Keep(usize),
    Drop,
}

/// How one call is made: its terminal, its input, where its output goes.
pub struct Call<'a> {
    pub tty: Tty,
    pub input: Input<'a>,
    pub stdout: Sink,
    pub stderr: Sink,
}

/// What a call ended with.
#[derive(Debug, Default)]
pub struct Ran {
    /// Its exit status (128 + N when ssh died of signal N).
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Ran {
    pub fn ok(&self) -> bool {
        self.code == 0
    }

    /// Standard output as text, trailing newlines removed (as `$(…)` did).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout)
            .trim_end_matches('\n')
            .to_string()
    }
}

pub struct Ssh {
    program: OsString,
    options: Vec<String>,
    control: Option<PathBuf>,
}

impl Ssh {
    /// `program` (SSH, default ssh) with the user's `options`; with `share`, a private
    /// directory for this run's control sockets (without one if it cannot be made).
    pub fn new(program: OsString, mut options: Vec<String>, share: bool) -> Ssh {
        let control = if share { private_dir() } else { None };
        if let Some(dir) = &control {
            options.extend(share_options(dir));
        }
        Ssh {
            program,
            options,
            control,
        }
    }

    /// ssh's arguments (after its name) for `words` on `host`, `-t` or `-T`.
    pub fn argv(&self, host: &str, terminal: bool, words: &[String]) -> Vec<String> {
        let mut argv = self.options.clone();
        argv.push(if terminal { "-t" } else { "-T" }.into());
        argv.push("--".into());
        argv.push(host.into());
        argv.push(remote_line(words));
        argv
    }

    /// Runs `words` on `host`. Err only when ssh cannot be started or an interrupt came
    /// meanwhile (the run then ends: 130); a failure on the host is `Ran::code`.
    pub fn run(&self, out: &Out, host: &str, words: &[String], call: Call) -> Result<Ran, Exit> {
        let Call {
            tty,
            input,
            stdout,
            stderr,
        } = call;
        if interrupt::interrupted() {
            return Err(Exit::INTERRUPTED);
        }
        let terminal = tty == Tty::Long && out.at_terminal();
        let mut cmd = Command::new(&self.program);
        cmd.args(self.argv(host, terminal, words));
        cmd.stdin(match input {
            Input::Keyboard if terminal => Stdio::inherit(),
            Input::Bytes(_) => Stdio::piped(),
            _ => Stdio::null(),
        });
        let stdio = |sink: Sink| -> std::io::Result<Stdio> {
            Ok(match sink {
                Sink::Show => out.stdout()?,
                Sink::Keep(_) => Stdio::piped(),
                Sink::Drop => Stdio::null(),
            })
        };
        let started = stdio(stdout).and_then(|o| {
            cmd.stdout(o);
            cmd.stderr(stdio(stderr)?);
            cmd.spawn()
        });
        let mut child = match started {
            Ok(c) => c,
            Err(e) => {
                return Err(out.die(&format!(
                    "cannot run {} ({e}); install OpenSSH's client, or set SSH to it",
                    self.program.to_string_lossy()
                )))
            }
        };
        let mut ran = Ran::default();
        std::thread::scope(|s| {
            if let (Input::Bytes(bytes), Some(mut pipe)) = (&input, child.stdin.take()) {
                // ssh may end without reading it all: the error is its, said by it.
                s.spawn(move || {
                    let _ = pipe.write_all(bytes);
                });
            }
            let err = match (stderr, child.stderr.take()) {
                (Sink::Keep(max), Some(e)) => Some(s.spawn(move || read_tail(e, max))),
                _ => None,
            };
            if let (Sink::Keep(max), Some(o)) = (stdout, child.stdout.take()) {
                ran.stdout = read_head(o, max);
            }
            if let Some(h) = err {
                ran.stderr = h.join().unwrap_or_default();
            }
            ran.code = match child.wait() {
                Ok(st) => st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0)),
                Err(_) => 255,
            };
        });
        if interrupt::interrupted() {
            out.warn("interrupted; what the host said above is what it did");
            return Err(Exit::INTERRUPTED);
        }
        Ok(ran)
    }

    /// Ends this run's shared connections and removes their directory.
    pub fn close(&mut self) {
        let Some(dir) = self.control.take() else {
            return;
        };
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let is_socket = e.file_type().is_ok_and(|t| {
                    use std::os::unix::fs::FileTypeExt;
                    t.is_socket()
                });
                if is_socket {
                    let _ = Command::new(&self.program)
                        .arg("-o")
                        .arg(format!("ControlPath={}", e.path().display()))
                        .args(["-O", "exit", "tribist-remote"])
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

impl Drop for Ssh {
    fn drop(&mut self) {
        self.close();
    }
}

/// A new directory /tmp/tribist-ssh.XXXXXX, mode 0700 (/tmp: a control socket's path must
/// be short).
fn private_dir() -> Option<PathBuf> {
    for _ in 0..16 {
        let dir = PathBuf::from(format!("/tmp/tribist-ssh.{}", random_name(6)));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Some(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(_) => return None,
        }
    }
    None
}

fn random_name(n: usize) -> String {
    use ring::rand::SecureRandom;
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = vec![0u8; n];
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    bytes
        .iter()
        .map(|b| char::from(ALNUM[*b as usize % ALNUM.len()]))
        .collect()
}

/// The first `max` bytes of `r`, reading (and dropping) the rest to its end.
fn read_head(mut r: impl Read, max: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return kept,
            Ok(n) => {
                let room = max.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return kept,
        }
    }
}

/// The last `max` bytes of `r`.
fn read_tail(mut r: impl Read, max: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return kept,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > 2 * max {
                    kept.drain(..kept.len() - max);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    if kept.len() > max {
        kept.drain(..kept.len() - max);
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_argument_vector_is_options_sharing_tty_destination_and_one_line() {
        let mut ssh = Ssh::new("ssh".into(), vec!["-o".into(), "User=a b".into()], true);
        let dir = ssh.control.clone().expect("a private directory");
        let name = dir.file_name().unwrap().to_str().unwrap().to_string();
        assert!(name.starts_with("tribist-ssh.") && name.len() == "tribist-ssh.".len() + 6);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let words = vec!["/home/tribist/bin/deploy.sh".to_string(), "serving".into()];
        let argv = ssh.argv("root@app1", false, &words);
        assert_eq!(
            argv[..10],
            [
                "-o".to_string(),
                "User=a b".into(),
                "-o".into(),
                "ControlMaster=auto".into(),
                "-o".into(),
                format!("ControlPath={}/%C", dir.display()),
                "-o".into(),
                "ControlPersist=60".into(),
                "-T".into(),
                "--".into(),
            ]
        );
        assert_eq!(argv[10], "root@app1");
        assert_eq!(argv[11], remote_line(&words));
        assert_eq!(argv.len(), 12);
        assert_eq!(ssh.argv("h", true, &words)[8], "-t");
        ssh.close();
        assert!(!dir.exists(), "the private directory is gone with the run");
        let plain = Ssh::new("ssh".into(), vec![], false);
        assert_eq!(
            plain.argv("h", false, &[])[..2],
            ["-T".to_string(), "--".into()]
        );
    }

    #[test]
    fn reads_are_bounded() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 256) as u8).collect();
        assert_eq!(read_head(&data[..], 10), data[..10]);
        assert_eq!(read_tail(&data[..], 10), data[data.len() - 10..]);
        assert_eq!(read_tail(&b"abc"[..], 10), b"abc");
    }

    #[test]
    fn a_stub_ssh_gets_the_words_input_and_gives_its_status() {
        // SAFETY: geteuid only reads.
        if unsafe { libc::geteuid() } != 0 {
            println!("skipped: the remote line's wrapper runs as root, tribist or with sudo only");
            return;
        }
        // The "ssh" runs its last argument (the remote line) with sh, as the login shell on
        // the host would.
        let dir = std::env::temp_dir().join(format!("tribist-ssh-stub-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let stub = dir.join("ssh");
        std::fs::write(
            &stub,
            "#!/bin/sh\nfor a; do line=$a; done\nexec sh -c \"$line\"\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
        let ssh = Ssh::new(stub.into_os_string(), vec![], false);
        let words: Vec<String> = ["sh", "-c", "cat; echo err >&2; exit 3"]
            .map(String::from)
            .to_vec();
        let ran = ssh
            .run(
                &Out::Term,
                "h",
                &words,
                Call {
                    tty: Tty::No,
                    input: Input::Bytes(b"in\n"),
                    stdout: Sink::Keep(100),
                    stderr: Sink::Keep(100),
                },
            )
            .unwrap();
        assert_eq!(ran.code, 3, "{ran:?}");
        assert_eq!(ran.stdout, b"in\n");
        assert_eq!(ran.stderr, b"err\n");
        let ran = ssh
            .run(
                &Out::Term,
                "h",
                &words,
                Call {
                    tty: Tty::No,
                    input: Input::Bytes(&[b'x'; 200_000]),
                    stdout: Sink::Keep(10),
                    stderr: Sink::Drop,
                },
            )
            .unwrap();
        assert_eq!((ran.code, ran.stdout.len()), (3, 10));
        // A program in /home/tribist/bin that is not there: tribist is not installed (5).
        let ran = ssh
            .run(
                &Out::Term,
                "h",
                &["/home/tribist/bin/nope".to_string()],
                Call {
                    tty: Tty::No,
                    input: Input::Nothing,
                    stdout: Sink::Drop,
                    stderr: Sink::Keep(300),
                },
            )
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(ran.code, 5);
        assert!(String::from_utf8_lossy(&ran.stderr)
            .contains("tribist is not installed (no /home/tribist/bin/nope): make install"));
    }
}
