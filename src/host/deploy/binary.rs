//! What a binary says of itself, asked once per binary per deployment and kept: its release
//! id, its version and whether it takes over by handover.
//!
//! Why: deploy.sh ran a new binary's `--version` three times per upgrade (its id, whether it
//! hands over, its version when kept). `tribist-host releases describe` runs `--describe`
//! once (docs/server.md, "The contract with the deploy kit") and prints what it says, checked;
//! only a binary that predates `--describe` costs more (`releases version`, and
//! `releases hands-over` if a switch asks). The binary runs as tribist, as `releases` runs it
//! (api/ is tribist's; root's copies are run by their root-owned path).

use super::{releases, Result};
use crate::host::child::ExitKind;

/// What a binary said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    /// The name `releases` knows it by (a slot of api/, an upload, or root's copy's path).
    pub name: String,
    pub release: String,
    pub version: Option<String>,
    /// Whether it takes over by handover; `None` until asked (a binary that predates
    /// `--describe`).
    hands_over: Option<bool>,
}

impl Facts {
    /// A binary known by its name only (it did not describe itself): asked when it matters.
    pub fn named(name: &str) -> Facts {
        Facts {
            name: name.to_string(),
            release: String::new(),
            version: None,
            hands_over: None,
        }
    }

    /// Whether it takes over by handover (asked of the binary once, if its description did
    /// not say).
    pub fn hands_over(&mut self) -> bool {
        if let Some(yes) = self.hands_over {
            return yes;
        }
        let yes =
            releases(&["hands-over", &self.name]).is_ok_and(|o| o.status == ExitKind::Exited(0));
        self.hands_over = Some(yes);
        yes
    }
}

/// A release id as deploy.sh's `release_of` took it: 1 to 64 of `[A-Za-z0-9._+-]`.
pub fn release_id_ok(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
}

/// `releases describe`'s three lines (`releaseId=`, `version=`, `features=`).
pub fn parse_described(name: &str, out: &str) -> Option<Facts> {
    let mut release = None;
    let mut version = None;
    let mut features = None;
    for line in out.lines() {
        if let Some(v) = line.strip_prefix("releaseId=") {
            release = Some(v);
        } else if let Some(v) = line.strip_prefix("version=") {
            version = Some(v);
        } else if let Some(v) = line.strip_prefix("features=") {
            features = Some(v);
        }
    }
    let release = release.filter(|r| release_id_ok(r))?;
    Some(Facts {
        name: name.to_string(),
        release: release.to_string(),
        version: version.filter(|v| release_id_ok(v)).map(str::to_string),
        hands_over: Some(features?.split(' ').any(|f| f == crate::handover::FEATURE)),
    })
}

/// What binary `name` says of itself (as `releases` names binaries), or `None` when it does
/// not run or says no valid release id.
pub fn describe(name: &str) -> Result<Option<Facts>> {
    let o = releases(&["describe", name])?;
    if o.status == ExitKind::Exited(0) {
        if let Some(f) = parse_described(name, &o.stdout) {
            return Ok(Some(f));
        }
    }
    // One that predates --describe: its --version.
    let o = releases(&["version", name])?;
    let id = o.stdout.trim_end_matches('\n');
    if o.status != ExitKind::Exited(0) || !release_id_ok(id) {
        return Ok(None);
    }
    Ok(Some(Facts {
        name: name.to_string(),
        release: id.to_string(),
        version: None,
        hands_over: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_description_is_read_once_and_checked() {
        let f = parse_described(
            "/var/lib/tribist-deploy/bin/next",
            "releaseId=abc123-dirty-0123\nversion=0.1.0\nfeatures=env-file handover check-config\n",
        )
        .unwrap();
        assert_eq!(f.release, "abc123-dirty-0123");
        assert_eq!(f.version.as_deref(), Some("0.1.0"));
        assert_eq!(f.hands_over, Some(true));
        let mut f =
            parse_described("server", "releaseId=r1\nversion=1\nfeatures=env-file\n").unwrap();
        // Said already: no binary is run to ask.
        assert!(!f.hands_over());
        assert_eq!(
            parse_described("server", "releaseId=r1\nversion=1\nfeatures=\n")
                .unwrap()
                .hands_over,
            Some(false)
        );
        for bad in [
            "",
            "releaseId=\nversion=1\nfeatures=handover",
            "releaseId=a b\nversion=1\nfeatures=handover",
            "releaseId=r1\nversion=1",
            &format!("releaseId={}\nversion=1\nfeatures=", "x".repeat(65)),
        ] {
            assert_eq!(parse_described("server", bad), None, "{bad:?}");
        }
    }

    #[test]
    fn release_ids() {
        assert!(release_id_ok("0123abcd-dirty-ff.1+x_y"));
        assert!(!release_id_ok(""));
        assert!(!release_id_ok("a;b"));
        assert!(!release_id_ok(&"a".repeat(65)));
    }
}
