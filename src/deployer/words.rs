//! The one command line ssh hands to the host's login shell, built from words.
//!
//! Why: ssh joins its arguments with spaces and the remote login shell parses the result, so
//! every value of the deployer's (`DEPLOYER`, `TO`, a path) would be code there unless it is
//! quoted. Everything the kit sends is a `Vec` of words; [`remote_line`] alone turns it into
//! the string ssh sends, quoting each word for any POSIX shell, so that the host's shell
//! rebuilds exactly that argument vector. [`shown`] is the other direction: a value the kit
//! refuses, shown to the deployer without letting it act on the terminal.

/// `/bin/sh` script run first on the host: as root or tribist directly, else through
/// `sudo -n` (so a sudo user needs no terminal for a password). `$1` is [`GUARD`].
pub const WRAPPER: &str = r#"guard=$1
shift
if [ "$(id -u)" -eq 0 ] || [ "$(id -un)" = tribist ]; then exec sh -c "$guard" tribist-guard "$@"; fi
if ! sudo -n true 2>/dev/null; then
  echo "on $(hostname), $(id -un) is neither root nor tribist and has no password-less sudo: use HOST=root@…, a user with sudo, or tribist@… for upgrades" >&2
  exit 1
fi
exec sudo -n -- sh -c "$guard" tribist-guard "$@""#;

/// `/bin/sh` script that runs the words: a program in /home/tribist/bin that is missing means
/// tribist is not installed (exit 5); as root, such a program runs only if it, bin/ and the
/// home directory are root's alone (a host with an older layout, or one tampered with, is
/// refused instead of running what tribist may have put there).
pub const GUARD: &str = r#"if [ ! -e "$1" ] && [ "${1#/home/tribist/bin/}" != "$1" ]; then
  echo "on $(hostname): tribist is not installed (no $1): make install" >&2
  exit 5
fi
if [ "$(id -u)" -eq 0 ]; then
  case "$1" in /home/tribist/bin/*)
    for p in /home/tribist /home/tribist/bin "$1"; do
      if [ -z "$(find "$p" -maxdepth 0 -user root ! -perm /022 2>/dev/null)" ]; then
        echo "on $(hostname): $p is not root's alone (a layout from before tribist 0.2, or tampered with): not running it as root; make install fixes the layout" >&2
        exit 1
      fi
    done ;;
  esac
fi
exec "$@""#;

/// One word for a POSIX shell (sh, dash, bash, zsh): inside single quotes nothing is
/// special, and a `'` is closed, escaped and reopened.
pub fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// The string ssh sends for `words`: [`WRAPPER`] and [`GUARD`], then each word quoted.
pub fn remote_line<S: AsRef<str>>(words: &[S]) -> String {
    let mut line = format!("sh -c {} tribist-remote {}", quote(WRAPPER), quote(GUARD));
    for w in words {
        line.push(' ');
        line.push_str(&quote(w.as_ref()));
    }
    line
}

/// `words` as owned strings (the steps in `remote.rs` are written with `&str`s).
pub fn owned(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

/// A refused value as bash's `printf %q` would show it: as it is when it is plain, with
/// shell characters escaped by `\`, and in `$'…'` with escapes when it holds a control
/// character or a byte outside ASCII, so that nothing of it acts on the terminal.
pub fn shown(value: &str) -> String {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"_./:@%+,=-".contains(&b);
    if value.is_empty() {
        return "''".to_string();
    }
    let bytes = value.as_bytes();
    if bytes.iter().all(|b| (0x20..0x7f).contains(b)) {
        let mut s = String::with_capacity(value.len() + 8);
        for &b in bytes {
            if !plain(b) {
                s.push('\\');
            }
            s.push(char::from(b));
        }
        return s;
    }
    let mut s = String::from("$'");
    for &b in bytes {
        match b {
            b'\n' => s.push_str("\\n"),
            b'\t' => s.push_str("\\t"),
            b'\r' => s.push_str("\\r"),
            b'\\' => s.push_str("\\\\"),
            b'\'' => s.push_str("\\'"),
            0x20..=0x7e => s.push(char::from(b)),
            _ => s.push_str(&format!("\\{b:03o}")),
        }
    }
    s.push('\'');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Runs `line` with `shell -c` after replacing the remote program by printf.
    fn rebuilt(shell: &str, words: &[&str]) -> Option<String> {
        let mut all = vec!["printf", "[%s]\\n"];
        all.extend_from_slice(words);
        let line = remote_line(&all);
        // The wrapper needs root, tribist or sudo; as anyone else, run the guard's words alone.
        let mut args = vec!["-c".to_string()];
        let root = unsafe { libc::geteuid() } == 0;
        if root {
            args.push(line);
        } else {
            let mut direct = String::new();
            for w in &all {
                direct.push_str(&quote(w));
                direct.push(' ');
            }
            args.push(direct);
        }
        let out = Command::new(shell).args(&args).output().ok()?;
        assert!(out.status.success(), "{shell}: {out:?}");
        Some(String::from_utf8(out.stdout).unwrap())
    }

    #[test]
    fn hostile_words_come_back_exactly_in_sh_and_bash() {
        let mark = std::env::temp_dir().join(format!("tribist-pwned-{}", std::process::id()));
        let touch = format!("$(touch {})", mark.display());
        let backtick = format!("`touch {}`", mark.display());
        let words = [
            "o'brien",
            touch.as_str(),
            backtick.as_str(),
            "a;b",
            "new\nline",
            " x ",
            "\\",
            "\"",
            "",
            "*",
            "'",
            "''\\''",
            "$HOME",
            "a\tb",
        ];
        let expected: String = words.iter().map(|w| format!("[{w}]\n")).collect();
        for shell in ["sh", "bash"] {
            match rebuilt(shell, &words) {
                Some(got) => assert_eq!(got, expected, "{shell}"),
                None => println!("skipped: no {shell} here"),
            }
        }
        assert!(!mark.exists(), "a word ran as code");
    }

    #[test]
    fn the_line_is_the_wrapper_the_guard_and_the_words() {
        let line = remote_line(&["/home/tribist/bin/deploy.sh", "--by", "o'brien"]);
        let prefix = format!("sh -c {} tribist-remote {} ", quote(WRAPPER), quote(GUARD));
        assert_eq!(
            line.strip_prefix(&prefix),
            Some(r"'/home/tribist/bin/deploy.sh' '--by' 'o'\''brien'")
        );
        assert_eq!(quote(""), "''");
        assert_eq!(quote("a b"), "'a b'");
        // The constants hold no quote of their own that the single quotes would end at
        // without the escape.
        assert!(quote(GUARD).contains(r"root'\''"));
    }

    #[test]
    fn shown_values_cannot_act_on_a_terminal() {
        assert_eq!(shown("root@app1"), "root@app1");
        assert_eq!(shown(""), "''");
        assert_eq!(shown("a b;c"), r"a\ b\;c");
        assert_eq!(shown("$(id)"), r"\$\(id\)");
        assert_eq!(shown("alice\nresult=ok"), r"$'alice\nresult=ok'");
        assert_eq!(shown("\x1b]0;x\x07"), r"$'\033]0;x\007'");
        assert_eq!(shown("caf\u{e9}"), r"$'caf\303\251'");
        for s in ["\x1b[2J", "a\rb", "\u{9b}31m"] {
            assert!(shown(s).bytes().all(|b| (0x20..0x7f).contains(&b)), "{s:?}");
        }
    }
}
