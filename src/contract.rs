//! What the deploy kit may rely on in a binary, said by the binary itself: `server --describe`.
//!
//! The kit (`tribist-host releases`) used to learn about a release by reading words meant for people:
//! the commit in `--version`'s first line, a line `handover: SIGUSR2`, the error an old
//! binary gives for `--env-file`. A reworded line broke an upgrade. `server --describe`
//! prints one line of JSON instead, read once per binary:
//!
//! `{"contract":1,"name":"tribist","version":"0.1.0","releaseId":"<commit>","features":[…]}`
//!
//! `contract` changes only if the line changes incompatibly; fields and features may be
//! added. So that the kit can check it with `grep` and `sed` (hosts have no `jq`), the line
//! keeps to a plain form: no blanks between tokens, values that are whole numbers, strings
//! without escapes, or arrays of such strings (tested below). Each feature's name is a
//! constant of the module that implements it, so the list cannot name what is not there.

use crate::{address_file, api, build, db, envfile, handover};

/// The version of this contract.
pub const CONTRACT: u32 = 1;

/// What this program is, for a kit that finds a binary of something else.
pub const NAME: &str = "tribist";

/// `server --describe` itself.
pub const DESCRIBE: &str = "describe";

/// What this binary offers the kit: `--env-file`, `--check-config`'s exit codes, the SIGUSR2
/// handover and its `STATUS=` tokens, `/health`'s `failure`, `--describe`, the address file.
pub const FEATURES: &[&str] = &[
    envfile::FEATURE,
    db::CHECK_CONFIG_FEATURE,
    handover::FEATURE,
    api::FAILURE_FEATURE,
    DESCRIBE,
    address_file::FEATURE,
];

/// The line `server --describe` prints (without its newline).
pub fn describe() -> String {
    describe_with(build::VERSION, build::COMMIT, FEATURES)
}

fn describe_with(version: &str, release_id: &str, features: &[&str]) -> String {
    let string = |s: &str| serde_json::Value::from(s).to_string();
    let features: Vec<String> = features.iter().map(|f| string(f)).collect();
    format!(
        "{{\"contract\":{CONTRACT},\"name\":{},\"version\":{},\"releaseId\":{},\"features\":[{}]}}",
        string(NAME),
        string(version),
        string(release_id),
        features.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_is_one_line_of_json_with_every_feature() {
        let line = describe();
        assert!(!line.contains('\n'), "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["contract"], 1);
        assert_eq!(v["name"], "tribist");
        assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(v["releaseId"], build::COMMIT);
        let features: Vec<&str> = v["features"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap())
            .collect();
        assert_eq!(
            features,
            [
                "env-file",
                "check-config",
                "handover",
                "failure",
                "describe",
                "address-file"
            ]
        );
    }

    /// The form `tribist-host releases describe` checks (src/host/releases/describe.rs,
    /// `plain_keys`): keep the two in step.
    #[test]
    fn describe_keeps_to_the_plain_form_the_kit_checks() {
        for line in [describe(), describe_with("1.2.3", "abc-dirty-0f", &[])] {
            assert!(plain(&line), "{line}");
        }
        // Escapes are outside it; the kit then reads the binary as one that predates this.
        assert!(!plain(&describe_with("1\"", "x", FEATURES)));
    }

    /// Whether `line` is `{"key":VALUE,…}` with VALUE a whole number, a string without `"`
    /// or `\`, or an array of such strings, and nothing else.
    fn plain(line: &str) -> bool {
        fn string(s: &str) -> Option<&str> {
            let rest = s.strip_prefix('"')?;
            let end = rest.find('"')?;
            (!rest[..end].contains('\\')).then(|| &rest[end + 1..])
        }
        fn value(s: &str) -> Option<&str> {
            if let Some(rest) = s.strip_prefix('[') {
                if let Some(rest) = rest.strip_prefix(']') {
                    return Some(rest);
                }
                let mut rest = string(rest)?;
                while let Some(r) = rest.strip_prefix(',') {
                    rest = string(r)?;
                }
                return rest.strip_prefix(']');
            }
            let digits = s.len() - s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            if digits > 0 {
                return Some(&s[digits..]);
            }
            string(s)
        }
        let Some(mut rest) = line.strip_prefix('{') else {
            return false;
        };
        loop {
            let Some(r) = string(rest)
                .and_then(|r| r.strip_prefix(':'))
                .and_then(value)
            else {
                return false;
            };
            match (r.strip_prefix(','), r) {
                (Some(next), _) => rest = next,
                (None, "}") => return true,
                _ => return false,
            }
        }
    }
}
