//! systemd's `EnvironmentFile=` format, read the way systemd reads it.
//!
//! Before an upgrade promotes a binary, `releases.sh preflight` runs it beside the serving one
//! with the service's real configuration, `/etc/tribist/env`; `server --check-config` checks
//! such a file before it is installed. Both must see exactly the values systemd will hand the
//! service, so this follows systemd's parser (`src/basic/env-file.c`): `#` or `;` starts a
//! comment line; `KEY=VALUE` with blanks around both trimmed; a value in `"…"` keeps
//! everything but `\` before one of `"\`$` and newline, a value in `'…'` keeps everything,
//! an unquoted value drops a `\` before any character and its trailing blanks; a `\` at the
//! end of a line continues it.

use crate::error::Error;

/// The assignments in `text`, in order (a later one of the same name wins, as in systemd).
pub fn parse(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut vars = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    loop {
        // Start of a line: blanks, then a comment, an empty line or a key.
        while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
            chars.next();
        }
        match chars.peek() {
            None => break,
            Some('\n') | Some('\r') => {
                if chars.next() == Some('\n') {
                    line += 1;
                }
                continue;
            }
            Some('#') | Some(';') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        line += 1;
                        break;
                    }
                }
                continue;
            }
            _ => {}
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == '\n' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(format!("line {line}: {:?} is not KEY=VALUE", key.trim()));
        }
        let key = key.trim_end().to_string();
        if !valid_name(&key) {
            return Err(format!("line {line}: {key:?} is not a variable name"));
        }
        vars.push((key.clone(), value(&mut chars, &mut line, &key)?));
    }
    Ok(vars)
}

/// One value, up to the end of its line, with systemd's states: blanks before it are
/// skipped; then `"…"`, `'…'` and unquoted stretches may follow each other (`"a b"c` is
/// `a bc`); only blanks at the end of an unquoted stretch that ends the line are dropped.
fn value(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    line: &mut usize,
    key: &str,
) -> Result<String, String> {
    enum State {
        Pre,
        Unquoted,
        Double,
        Single,
    }
    let mut state = State::Pre;
    let mut value = String::new();
    // Length of `value` before the blanks that end it, if it ends in unquoted blanks.
    let mut blanks_from: Option<usize> = None;
    loop {
        let Some(c) = chars.next() else {
            return match state {
                State::Double | State::Single => {
                    Err(format!("line {line}: {key}: a quote is never closed"))
                }
                _ => Ok(finish(value, blanks_from)),
            };
        };
        match state {
            State::Pre | State::Unquoted => match c {
                '\n' => {
                    *line += 1;
                    return Ok(finish(value, blanks_from));
                }
                '"' if matches!(state, State::Pre) => state = State::Double,
                '\'' if matches!(state, State::Pre) => state = State::Single,
                ' ' | '\t' if matches!(state, State::Pre) => {}
                '\\' => {
                    state = State::Unquoted;
                    blanks_from = None;
                    match chars.next() {
                        None => return Ok(finish(value, None)),
                        Some('\n') => *line += 1,
                        Some(c) => value.push(c),
                    }
                }
                c => {
                    state = State::Unquoted;
                    if c == ' ' || c == '\t' || c == '\r' {
                        blanks_from.get_or_insert(value.len());
                    } else {
                        blanks_from = None;
                    }
                    value.push(c);
                }
            },
            State::Double => match c {
                '"' => state = State::Unquoted,
                '\\' => match chars.next() {
                    None => return Err(format!("line {line}: {key}: ends in a \\")),
                    Some('\n') => *line += 1,
                    Some(c @ ('"' | '\\' | '`' | '$')) => value.push(c),
                    Some(c) => {
                        value.push('\\');
                        value.push(c);
                    }
                },
                c => {
                    if c == '\n' {
                        *line += 1;
                    }
                    blanks_from = None;
                    value.push(c);
                }
            },
            State::Single => match c {
                '\'' => state = State::Unquoted,
                c => {
                    if c == '\n' {
                        *line += 1;
                    }
                    blanks_from = None;
                    value.push(c);
                }
            },
        }
    }
}

fn finish(mut value: String, blanks_from: Option<usize>) -> String {
    if let Some(at) = blanks_from {
        value.truncate(at);
    }
    value
}

fn valid_name(key: &str) -> bool {
    let mut bytes = key.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Reads `path` as systemd would; the error names the file and the line.
pub fn read(path: &str) -> Result<Vec<(String, String)>, Error> {
    let text = std::fs::read(path)
        .map_err(|e| Error::Usage(format!("cannot read the environment file {path}: {e}")))?;
    let text = String::from_utf8(text)
        .map_err(|_| Error::Usage(format!("{path}: not UTF-8 (systemd ignores such values)")))?;
    parse(&text).map_err(|problem| Error::Usage(format!("{path}: {problem}")))
}

#[cfg(test)]
mod tests {
    use super::parse;

    fn one(text: &str) -> String {
        let vars = parse(text).unwrap();
        assert_eq!(vars.len(), 1, "{vars:?}");
        vars[0].1.clone()
    }

    #[test]
    fn what_make_install_writes_reads_back_byte_for_byte() {
        assert_eq!(
            one(r#"DATABASE_URL="p$ \\ ' \" # %x \` \$HOME ""#),
            "p$ \\ ' \" # %x ` $HOME "
        );
        assert_eq!(one("A=\"a\\qb\""), "a\\qb");
    }

    #[test]
    fn comments_blanks_and_quotes_as_systemd_has_them() {
        let vars = parse("# c\n; c\n\n  A = 1  \nB='x \\ \" y'\nC=a\\ b\\\\c  \nD=\"multi\nline\"\nE=x\\\ny\nF=\"a b\"c # d  \nG=\n").unwrap();
        let get = |k: &str| {
            vars.iter()
                .rev()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("A"), Some("1"));
        assert_eq!(get("B"), Some("x \\ \" y"));
        assert_eq!(get("C"), Some("a b\\c"));
        assert_eq!(get("D"), Some("multi\nline"));
        assert_eq!(get("E"), Some("xy"));
        assert_eq!(get("F"), Some("a bc # d"));
        assert_eq!(get("G"), Some(""));
        assert_eq!(parse("A=1\nA=2\n").unwrap().last().unwrap().1, "2");
    }

    #[test]
    fn malformed_lines_name_their_line() {
        assert!(parse("A=1\nnonsense\n").unwrap_err().contains("line 2"));
        assert!(parse("1A=x\n").unwrap_err().contains("not a variable name"));
        assert!(parse("A=\"open\n").unwrap_err().contains("never closed"));
    }
}
