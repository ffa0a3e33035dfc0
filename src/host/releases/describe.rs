//! What a binary says of itself: `server --describe`'s one line of JSON (src/contract.rs,
//! docs/server.md "The contract with the deploy kit"), read once per binary, and for a binary
//! that predates it, `--version`'s words (`server VERSION (commit ID)`, `handover: SIGUSR2`).

use std::ffi::OsStr;
use std::time::Duration;

use super::dir::Dir;
use super::names::{id_text, Binary, ReleaseId};
use super::run::{self, Spec};

/// The contract this kit reads (`contract` in the line).
pub const CONTRACT: u64 = 1;
/// How long a binary has to answer `--describe` or `--version`.
pub const DEADLINE: Duration = Duration::from_secs(10);
/// The most output read from either.
pub const MAX_OUTPUT: usize = 2000;

/// What `--describe` says, checked.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Described {
    pub release_id: String,
    pub version: String,
    pub features: Vec<String>,
}

impl Described {
    pub fn has(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }

    /// The three lines `describe` prints.
    pub fn lines(&self) -> String {
        format!(
            "releaseId={}\nversion={}\nfeatures={}",
            self.release_id,
            self.version,
            self.features.join(" ")
        )
    }

    /// The line `line` (stdout of `--describe`, its newline included) if it is one this kit
    /// reads: one line of at most [`MAX_OUTPUT`] bytes, in the plain form of src/contract.rs
    /// (no blanks, strings without escapes, no key twice), contract 1, name tribist, a
    /// releaseId and a version of safe characters and features of `[a-z0-9-]`. Unknown fields
    /// and features are fine.
    pub fn parse(out: &[u8]) -> Option<Described> {
        if out.len() > MAX_OUTPUT {
            return None;
        }
        let line = std::str::from_utf8(out).ok()?.trim_end_matches('\n');
        if line.contains('\n') {
            return None;
        }
        let keys = plain_keys(line)?;
        if (1..keys.len()).any(|i| keys[..i].contains(&keys[i])) {
            return None;
        }
        let value: serde_json::Value = serde_json::from_str(line).ok()?;
        let map = value.as_object()?;
        if map.get("contract")?.as_u64()? != CONTRACT || map.get("name")?.as_str()? != "tribist" {
            return None;
        }
        let release_id = map.get("releaseId")?.as_str()?;
        if !ReleaseId::valid(release_id) {
            return None;
        }
        let version = map.get("version")?.as_str()?;
        if version.len() > 40 || !id_text(version) {
            return None;
        }
        let mut features = Vec::new();
        for f in map.get("features")?.as_array()? {
            let f = f.as_str()?;
            let ok = (1..=32).contains(&f.len())
                && f.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok {
                return None;
            }
            features.push(f.to_string());
        }
        Some(Described {
            release_id: release_id.to_string(),
            version: version.to_string(),
            features,
        })
    }
}

/// The keys of `line` if it is `{"key":VALUE,…}` with VALUE a whole number, a string without
/// `"` or `\`, or an array of such strings, and nothing else (no blank anywhere outside a
/// string). The form src/contract.rs promises, so a key is found by its quotes alone.
fn plain_keys(line: &str) -> Option<Vec<&str>> {
    fn string(s: &str) -> Option<(&str, &str)> {
        let rest = s.strip_prefix('"')?;
        let end = rest.find('"')?;
        (!rest[..end].contains('\\')).then(|| (&rest[..end], &rest[end + 1..]))
    }
    fn value(s: &str) -> Option<&str> {
        if let Some(rest) = s.strip_prefix('[') {
            if let Some(rest) = rest.strip_prefix(']') {
                return Some(rest);
            }
            let (_, mut rest) = string(rest)?;
            while let Some(r) = rest.strip_prefix(',') {
                rest = string(r)?.1;
            }
            return rest.strip_prefix(']');
        }
        let digits = s.len() - s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits > 0 {
            return Some(&s[digits..]);
        }
        string(s).map(|(_, rest)| rest)
    }
    let mut rest = line.strip_prefix('{')?;
    let mut keys = Vec::new();
    if let Some(r) = rest.strip_prefix('}') {
        return r.is_empty().then_some(keys);
    }
    loop {
        let (key, r) = string(rest)?;
        keys.push(key);
        rest = value(r.strip_prefix(':')?)?;
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else {
            return (rest == "}").then_some(keys);
        }
    }
}

/// What a binary says of itself: its `--describe`, or its `--version`'s output when it
/// does not describe itself (`None`: `--version` failed too).
pub enum Report {
    Described(Described),
    Words(Option<String>),
}

/// Why `version` gives no id.
#[derive(Debug, PartialEq, Eq)]
pub enum NoId {
    /// `--version` failed (and `--describe` did).
    DoesNotRun,
    /// `--version` ran but has no line `server VERSION (commit ID)`.
    NoCommitLine,
}

impl Report {
    /// Runs `binary --describe`, and `--version` only if that says nothing this kit reads.
    pub fn read(api: &Dir, binary: &Binary) -> Report {
        match describe(api, binary) {
            Some(d) => Report::Described(d),
            None => Report::Words(version_output(api, binary)),
        }
    }

    /// The release id: `--describe`'s releaseId, or the commit in `--version`'s line
    /// `server VERSION (commit ID)`.
    pub fn release_id(&self) -> Result<String, NoId> {
        match self {
            Report::Described(d) => Ok(d.release_id.clone()),
            Report::Words(None) => Err(NoId::DoesNotRun),
            Report::Words(Some(out)) => out
                .split('\n')
                .find_map(|line| {
                    let rest = line.strip_prefix("server ")?;
                    let (version, rest) = rest.split_once(' ')?;
                    let commit = rest.strip_prefix("(commit ")?.strip_suffix(')')?;
                    (!version.contains(' ') && id_text(commit)).then(|| commit.to_string())
                })
                .ok_or(NoId::NoCommitLine),
        }
    }

    /// The version: `--describe`'s, or the word after `server` on `--version`'s first line
    /// (only letters, digits and `._+-` of it, at most 40); `None` if there is none.
    pub fn version(&self) -> Option<String> {
        let v = match self {
            Report::Described(d) => d.version.clone(),
            Report::Words(None) => return None,
            Report::Words(Some(out)) => {
                let first = out.split('\n').next().unwrap_or_default();
                let rest = first.strip_prefix("server ")?;
                let (word, _) = rest.split_once(' ')?;
                word.chars()
                    .filter(|c| c.is_ascii_alphanumeric() || "._+-".contains(*c))
                    .take(40)
                    .collect()
            }
        };
        (!v.is_empty()).then_some(v)
    }

    /// Whether it can take over from the serving process: `--describe` lists `handover`, or
    /// (before `--describe`) `--version` has the line `handover: SIGUSR2`.
    pub fn hands_over(&self) -> bool {
        match self {
            Report::Described(d) => d.has(crate::handover::FEATURE),
            Report::Words(Some(out)) => out.split('\n').any(|l| l == crate::handover::VERSION_LINE),
            Report::Words(None) => false,
        }
    }
}

fn run_with(api: &Dir, binary: &Binary, option: &str, stderr: bool) -> Option<run::Ran> {
    // From api/, as the scripts ran it (by its absolute path: api/ is made absolute).
    run::run(
        Spec {
            program: &binary.path(api),
            args: &[OsStr::new(option)],
            env: None,
            dir: api.path(),
            stdin: None,
            stderr,
        },
        DEADLINE,
        MAX_OUTPUT,
    )
    .ok()
}

/// `binary --describe` (standard output only), checked; `None` if it does not run, exits
/// other than 0 (a binary that predates the option exits 2), or says nothing this kit reads.
pub fn describe(api: &Dir, binary: &Binary) -> Option<Described> {
    let ran = run_with(api, binary, "--describe", false)?;
    if !ran.ok_within(MAX_OUTPUT) {
        return None;
    }
    Described::parse(&ran.output)
}

/// `binary --version` (output and errors), if it exits 0 with at most [`MAX_OUTPUT`] bytes;
/// never printed itself (only what is checked of it).
fn version_output(api: &Dir, binary: &Binary) -> Option<String> {
    let ran = run_with(api, binary, "--version", true)?;
    ran.ok_within(MAX_OUTPUT)
        .then(|| String::from_utf8_lossy(&ran.output).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"contract":1,"name":"tribist","version":"0.2.0","releaseId":"rel-new","features":["env-file","check-config","handover","failure","describe","address-file"]}"#;

    #[test]
    fn the_servers_own_line_is_read() {
        let d = Described::parse(format!("{}\n", crate::contract::describe()).as_bytes()).unwrap();
        assert_eq!(d.release_id, crate::build::COMMIT);
        assert_eq!(d.features.len(), crate::contract::FEATURES.len());
        let d = Described::parse(LINE.as_bytes()).unwrap();
        assert_eq!(
            d.lines(),
            "releaseId=rel-new\nversion=0.2.0\nfeatures=env-file check-config handover failure describe address-file"
        );
        assert!(d.has("handover") && !d.has("hand"));
        // Any order, unknown fields and features, no features at all.
        let d = Described::parse(
            br#"{"features":["handover","x-new"],"releaseId":"r1","later":[],"n":7,"version":"1.0","name":"tribist","contract":1}"#,
        )
        .unwrap();
        assert_eq!((d.release_id.as_str(), d.features.len()), ("r1", 2));
        let d = Described::parse(
            br#"{"contract":1,"name":"tribist","version":"1","releaseId":"r","features":[]}"#,
        );
        assert!(d.unwrap().features.is_empty());
    }

    #[test]
    fn lines_this_kit_cannot_read_are_refused() {
        let pad = format!(
            r#"{{"contract":1,"name":"tribist","version":"1","releaseId":"r","features":[],"pad":"{}"}}"#,
            "x".repeat(2100)
        );
        for bad in [
            r#"{"contract":2,"name":"tribist","version":"1","releaseId":"r","features":[]}"#,
            r#"{"contract":"1","name":"tribist","version":"1","releaseId":"r","features":[]}"#,
            r#"{"contract":1,"name":"other","version":"1","releaseId":"r","features":[]}"#,
            r#"{"contract":1,"name":"tribist","version":"1","releaseId":"r","releaseId":"s","features":[]}"#,
            r#"{"contract":1,"name":"tribist","version":"1","releaseId":"a\"b","features":[]}"#,
            r#"{"contract":1,"name":"tribist","version":"1","releaseId":"../x","features":[]}"#,
            r#"{"contract":1,"name":"tribist","version":"1","releaseId":".x","features":[]}"#,
            r#"{"contract":1,"name":"tribist","version":"1","releaseId":"r","features":["UPPER"]}"#,
            r#"{"contract":1,"name":"tribist","version":"1","releaseId":"r","features":"handover"}"#,
            r#"{"contract":1, "name":"tribist","version":"1","releaseId":"r","features":[]}"#,
            r#"{"contract":1,"name":"tribist","version":"1","releaseId":"r"}"#,
            "{\"contract\":1,\"name\":\"tribist\",\"version\":\"1\",\"releaseId\":\"r\",\"features\":[]}\n* * * * * root x",
            "{\"contract\":1,\"name\":\"tribist\",\"version\":\"1\",\"releaseId\":\"\x1b[2Jr\",\"features\":[]}",
            "{\"contract\":1,\"name\":\"tribist\",\"version\":\"1\",\"releaseId\":\"r\",\"features\":[]}\r",
            &pad,
            "",
            "server 0.1.0 (commit old)",
        ] {
            assert_eq!(Described::parse(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(plain_keys("{}"), Some(vec![]));
        assert_eq!(plain_keys("{}x"), None);
    }

    #[test]
    fn words_of_a_binary_that_predates_describe() {
        let words = |s: &str| Report::Words(Some(s.to_string()));
        let r = words("server 0.1.0 (commit old-one)\nhandover: SIGUSR2\n");
        assert_eq!(r.release_id(), Ok("old-one".into()));
        assert_eq!(r.version().as_deref(), Some("0.1.0"));
        assert!(r.hands_over());
        let r = words("server 0.0.9 (commit older)\n");
        assert!(!r.hands_over());
        // Not the line, or an id with other characters: no id, and nothing of it echoed.
        for bad in [
            "server 1.0 (commit a\nb)\n* * * * * root touch /tmp/x\n",
            "server 1.0 (commit a b)",
            "tribist 1.0 (commit x)",
            "server 1 0 (commit x)",
        ] {
            assert_eq!(words(bad).release_id(), Err(NoId::NoCommitLine), "{bad}");
        }
        assert_eq!(Report::Words(None).release_id(), Err(NoId::DoesNotRun));
        assert!(!Report::Words(None).hands_over());
        // The version is read from the first line only, filtered.
        assert_eq!(
            words("server 1.<x>2 (commit c)").version().as_deref(),
            Some("1.x2")
        );
        assert_eq!(words("x\nserver 1.0 (commit c)").version(), None);
        // A described binary: its features decide, not its words.
        let d = Described::parse(br#"{"contract":1,"name":"tribist","version":"0.2.0","releaseId":"r2","features":["env-file"]}"#).unwrap();
        assert!(!Report::Described(d).hands_over());
    }
}
