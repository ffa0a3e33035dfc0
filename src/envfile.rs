//! systemd's `EnvironmentFile=` format, read the way systemd reads it.
//!
//! Before an upgrade promotes a binary, `tribist-host releases preflight` runs it beside the serving one
//! with the service's real configuration, `/etc/tribist/env`; `server --check-config` checks
//! such a file before it is installed. Both must see exactly the values systemd will hand the
//! service, so this follows systemd's parser (`src/basic/env-file.c`): `#` or `;` starts a
//! comment line; `KEY=VALUE` with blanks around both trimmed; a value in `"…"` keeps
//! everything but `\` before one of `"\`$` and newline, a value in `'…'` keeps everything,
//! an unquoted value drops a `\` before any character and its trailing blanks; a `\` at the
//! end of a line continues it.

use crate::error::Error;

/// `server --env-file FILE` (and `--check-config FILE`, `--print-config FILE`) reads FILE
/// with this parser: the feature's name in `server --describe`.
pub const FEATURE: &str = "env-file";

/// What a file holds, as systemd reads it.
#[derive(Debug, Default)]
pub struct EnvFile {
    /// The assignments in order (a later one of the same name wins, as in systemd).
    pub vars: Vec<(String, String)>,
    /// Lines systemd skips (no `=`, or not a variable name): by number, never by content,
    /// which may hold a secret.
    pub ignored: Vec<usize>,
    /// Every `KEY=…` of the text, valid name or not, with the bytes it spans as the parser
    /// read them (continuation lines and quoted newlines included): what `settings::edit`
    /// removes when it replaces or unsets a variable.
    pub entries: Vec<Entry>,
}

/// One `KEY=VALUE` as the parser read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The key, blanks around it trimmed; systemd takes it only if it is a variable's name
    /// (`export NAME`, for one, it skips).
    pub key: String,
    /// From the key's first character to just after the line end that ends the value (or
    /// the end of the text): removing these bytes leaves the rest of the file read as before.
    pub span: std::ops::Range<usize>,
}

/// A port of systemd 252's `parse_env_file_internal` state machine (`src/basic/env-file.c`).
pub fn parse(text: &str) -> EnvFile {
    #[derive(Clone, Copy, PartialEq)]
    enum S {
        PreKey,
        Key,
        PreValue,
        Value,
        ValueEscape,
        Single,
        Double,
        DoubleEscape,
        Comment,
        CommentEscape,
    }
    const NEWLINE: [char; 2] = ['\n', '\r'];
    const WHITESPACE: [char; 4] = [' ', '\t', '\n', '\r'];
    let mut out = EnvFile::default();
    let (mut state, mut line) = (S::PreKey, 1usize);
    let (mut key, mut value) = (String::new(), String::new());
    // Where trailing blanks of the key and of an unquoted value begin (systemd's
    // last_key_whitespace and last_value_whitespace).
    let (mut key_blanks, mut value_blanks): (Option<usize>, Option<usize>) = (None, None);
    // Where the current key began, in bytes.
    let mut key_start = 0usize;
    let push = |out: &mut EnvFile,
                key: &mut String,
                value: &mut String,
                key_blanks: Option<usize>,
                line: usize,
                span: std::ops::Range<usize>| {
        if let Some(at) = key_blanks {
            key.truncate(at);
        }
        out.entries.push(Entry {
            key: key.clone(),
            span,
        });
        if valid_name(key) {
            out.vars.push((std::mem::take(key), std::mem::take(value)));
        } else {
            out.ignored.push(line);
            key.clear();
            value.clear();
        }
    };
    for (at, c) in text.char_indices() {
        let after = at + c.len_utf8();
        match state {
            S::PreKey => {
                if c == '#' || c == ';' {
                    state = S::Comment;
                } else if !WHITESPACE.contains(&c) {
                    state = S::Key;
                    key_start = at;
                    key_blanks = None;
                    key.push(c);
                } else if c == '\n' {
                    line += 1;
                }
            }
            S::Key => {
                if NEWLINE.contains(&c) {
                    out.ignored.push(line);
                    state = S::PreKey;
                    line += usize::from(c == '\n');
                    key.clear();
                } else if c == '=' {
                    state = S::PreValue;
                    value_blanks = None;
                } else {
                    if !WHITESPACE.contains(&c) {
                        key_blanks = None;
                    } else if key_blanks.is_none() {
                        key_blanks = Some(key.len());
                    }
                    key.push(c);
                }
            }
            S::PreValue => {
                if NEWLINE.contains(&c) {
                    push(
                        &mut out,
                        &mut key,
                        &mut value,
                        key_blanks,
                        line,
                        key_start..after,
                    );
                    state = S::PreKey;
                    line += usize::from(c == '\n');
                } else if c == '\'' {
                    state = S::Single;
                } else if c == '"' {
                    state = S::Double;
                } else if c == '\\' {
                    state = S::ValueEscape;
                } else if !WHITESPACE.contains(&c) {
                    state = S::Value;
                    value.push(c);
                }
            }
            S::Value => {
                if NEWLINE.contains(&c) {
                    if let Some(at) = value_blanks {
                        value.truncate(at);
                    }
                    push(
                        &mut out,
                        &mut key,
                        &mut value,
                        key_blanks,
                        line,
                        key_start..after,
                    );
                    state = S::PreKey;
                    line += usize::from(c == '\n');
                } else if c == '\\' {
                    state = S::ValueEscape;
                    value_blanks = None;
                } else {
                    if !WHITESPACE.contains(&c) {
                        value_blanks = None;
                    } else if value_blanks.is_none() {
                        value_blanks = Some(value.len());
                    }
                    value.push(c);
                }
            }
            S::ValueEscape => {
                state = S::Value;
                if !NEWLINE.contains(&c) {
                    value.push(c);
                } else if c == '\n' {
                    line += 1;
                }
            }
            S::Single => {
                if c == '\'' {
                    state = S::PreValue;
                } else {
                    line += usize::from(c == '\n');
                    value.push(c);
                }
            }
            S::Double => {
                if c == '"' {
                    state = S::PreValue;
                } else if c == '\\' {
                    state = S::DoubleEscape;
                } else {
                    line += usize::from(c == '\n');
                    value.push(c);
                }
            }
            S::DoubleEscape => {
                state = S::Double;
                if matches!(c, '"' | '\\' | '`' | '$') {
                    value.push(c);
                } else if c != '\n' {
                    value.push('\\');
                    value.push(c);
                } else {
                    line += 1;
                }
            }
            S::Comment => {
                if c == '\\' {
                    state = S::CommentEscape;
                } else if NEWLINE.contains(&c) {
                    state = S::PreKey;
                    line += usize::from(c == '\n');
                }
            }
            // systemd 252: an escaped character, newline included, stays in the comment.
            S::CommentEscape => {
                state = S::Comment;
                line += usize::from(c == '\n');
            }
        }
    }
    match state {
        S::PreValue | S::Value | S::ValueEscape | S::Single | S::Double | S::DoubleEscape => {
            if state == S::Value {
                if let Some(at) = value_blanks {
                    value.truncate(at);
                }
            }
            push(
                &mut out,
                &mut key,
                &mut value,
                key_blanks,
                line,
                key_start..text.len(),
            );
        }
        S::Key => out.ignored.push(line),
        _ => {}
    }
    out
}

fn valid_name(key: &str) -> bool {
    let mut bytes = key.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Reads `path` as systemd would. Lines systemd would skip are reported on stderr by number.
pub fn read(path: &str) -> Result<Vec<(String, String)>, Error> {
    let text = std::fs::read(path)
        .map_err(|e| Error::Usage(format!("cannot read the environment file {path}: {e}")))?;
    let text = String::from_utf8(text)
        .map_err(|_| Error::Usage(format!("{path}: not UTF-8 (systemd ignores such values)")))?;
    let file = parse(&text);
    for line in &file.ignored {
        eprintln!("server: warning: {path}: line {line} is not KEY=VALUE with a valid name; systemd ignores it");
    }
    Ok(file.vars)
}

#[cfg(test)]
mod tests {
    use super::parse;

    fn get<'a>(vars: &'a [(String, String)], k: &str) -> Option<&'a str> {
        vars.iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }

    fn one(text: &str) -> String {
        let file = parse(text);
        assert_eq!(file.vars.len(), 1, "{file:?}");
        file.vars[0].1.clone()
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
        let f = parse("# c\n; c\n\n  A = 1  \nB='x \\ \" y'\nC=a\\ b\\\\c  \nD=\"multi\nline\"\nE=x\\\ny\nF=\"a b\"c # d  \nG=\nH=\"x\" y\nI=\"a\"'b'\n");
        let v = &f.vars;
        assert_eq!(get(v, "A"), Some("1"));
        assert_eq!(get(v, "B"), Some("x \\ \" y"));
        assert_eq!(get(v, "C"), Some("a b\\c"));
        assert_eq!(get(v, "D"), Some("multi\nline"));
        assert_eq!(get(v, "E"), Some("xy"));
        assert_eq!(get(v, "F"), Some("a bc # d"));
        assert_eq!(get(v, "G"), Some(""));
        // After a closing quote systemd skips blanks and may open another quote.
        assert_eq!(get(v, "H"), Some("xy"));
        assert_eq!(get(v, "I"), Some("ab"));
        assert_eq!(parse("A=1\nA=2\n").vars.last().unwrap().1, "2");
    }

    #[test]
    fn carriage_returns_and_escaped_comment_ends_as_in_systemd_252() {
        // \r ends a line; a comment ending in \ swallows the next line (systemd 252).
        let f = parse("A=x\ry\n# note \\\nB=hidden\nC=z\n");
        assert_eq!(get(&f.vars, "A"), Some("x"));
        assert_eq!(get(&f.vars, "B"), None);
        assert_eq!(get(&f.vars, "C"), Some("z"));
    }

    #[test]
    fn each_assignment_spans_exactly_its_bytes() {
        let text = "# c\n  A=1\nexport B=2\nC=\"x\ny\" \nD=a\\\nb\nE='q'";
        let f = parse(text);
        let spans: Vec<(&str, &str)> = f
            .entries
            .iter()
            .map(|e| (e.key.as_str(), &text[e.span.clone()]))
            .collect();
        assert_eq!(
            spans,
            [
                ("A", "A=1\n"),
                ("export B", "export B=2\n"),
                ("C", "C=\"x\ny\" \n"),
                ("D", "D=a\\\nb\n"),
                ("E", "E='q'"),
            ]
        );
        // systemd skips `export B`; the entry is there all the same, for an edit to remove.
        assert_eq!(get(&f.vars, "B"), None);
        assert_eq!(get(&f.vars, "D"), Some("ab"));
    }

    #[test]
    fn lines_systemd_skips_are_skipped_and_reported_by_number_only() {
        let f = parse("A=1\npostgres://u:secret@h/d\n1A=x\nB B=2\nC=\"open");
        assert_eq!(
            f.vars,
            vec![
                ("A".to_string(), "1".to_string()),
                ("C".to_string(), "open".to_string())
            ]
        );
        assert_eq!(f.ignored, vec![2, 3, 4]);
    }
}
