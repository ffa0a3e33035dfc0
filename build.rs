//! Bakes the release id into the binary, so `/health` reports which release is serving.
//!
//! The id is the git commit, and a release must be its bytes: a build from a tree whose
//! sources (src/, build.rs, Cargo.toml, Cargo.lock) differ from that commit gets an id of its
//! own, `<commit>-dirty-<12 hex digits>`, the digits naming those changes (git hash-object of
//! the diff and the untracked source files), so two such builds never pose as one release;
//! when the changes cannot be read (an unreadable or dangling untracked file), the id is
//! `<commit>-dirty-unknown`, never the clean commit's.
//! `TRIBIST_RELEASE_ID` overrides it (builds outside a git checkout).
use std::io::Write;
use std::process::{Command, Stdio};

/// The paths whose content goes into the binary: a change elsewhere (README, tests) leaves
/// the bytes, and so the id, as the commit's.
const SOURCES: [&str; 4] = ["src", "build.rs", "Cargo.toml", "Cargo.lock"];

fn git(args: &[&str]) -> Option<Vec<u8>> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status.success().then_some(out.stdout)
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8_lossy(&bytes).trim().to_string()
}

/// The uncommitted changes to SOURCES: None when there are none, else a short name for them
/// ("unknown" when they cannot be read: a modified tree is never taken for a clean one).
fn dirty_hash() -> Option<String> {
    // No user configuration (external diff drivers, text conversion, colour) in the bytes.
    let mut args = vec![
        "diff",
        "HEAD",
        "--binary",
        "--no-ext-diff",
        "--no-textconv",
        "--no-color",
        "--",
    ];
    args.extend(SOURCES);
    let mut untracked = vec!["ls-files", "-z", "--others", "--exclude-standard", "--"];
    untracked.extend(SOURCES);
    let (Some(mut changes), Some(names)) = (git(&args), git(&untracked)) else {
        return Some("unknown".into());
    };
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        changes.extend_from_slice(b"\0untracked ");
        changes.extend_from_slice(name);
        changes.push(0);
        match std::fs::read(String::from_utf8_lossy(name).as_ref()) {
            Ok(bytes) => changes.extend(bytes),
            Err(_) => return Some("unknown".into()),
        }
    }
    if changes.is_empty() {
        return None;
    }
    Some(hash_object(&changes).unwrap_or_else(|| "unknown".into()))
}

/// The first 12 hex digits of git's hash of BYTES.
fn hash_object(bytes: &[u8]) -> Option<String> {
    let mut child = Command::new("git")
        .args(["hash-object", "--stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(bytes).ok()?;
    let out = child.wait_with_output().ok()?;
    let hash = text(out.stdout);
    (out.status.success() && hash.len() >= 12).then(|| hash[..12].to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=TRIBIST_RELEASE_ID");
    let id = std::env::var("TRIBIST_RELEASE_ID")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            let commit = text(git(&["rev-parse", "HEAD"])?);
            Some(match dirty_hash() {
                Some(hash) => {
                    println!(
                        "cargo:warning=building from uncommitted changes: release id {commit}-dirty-{hash} (commit them for a release named by its commit)"
                    );
                    format!("{commit}-dirty-{hash}")
                }
                None => commit,
            })
        });
    // HEAD moves on checkout; the ref it points at moves on commit (HEAD's log with it); the
    // index on add. In a worktree (git worktree add) HEAD, its log and the index are in the
    // worktree's git dir, the refs in the common one: both are watched. Only existing paths:
    // cargo reruns the script every build for a missing one.
    for (flag, paths) in [
        ("--git-dir", &["HEAD", "logs/HEAD", "index"][..]),
        ("--git-common-dir", &["refs/heads", "packed-refs"][..]),
    ] {
        let Some(dir) = git(&["rev-parse", flag]).map(text) else {
            continue;
        };
        if dir.is_empty() {
            continue;
        }
        for path in paths {
            let path = std::path::Path::new(&dir).join(path);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    // Any change to the sources may make the tree dirty (or clean again).
    for path in SOURCES {
        println!("cargo:rerun-if-changed={path}");
    }
    println!(
        "cargo:rustc-env=TRIBIST_COMMIT={}",
        id.unwrap_or_else(|| "unknown".into())
    );
}
