//! Bakes the git commit into the binary, so `/health` reports which release is serving.
//! `TRIBIST_RELEASE_ID` overrides it (builds outside a git checkout).
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=TRIBIST_RELEASE_ID");
    let commit = std::env::var("TRIBIST_RELEASE_ID")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            let out = Command::new("git")
                .args(["rev-parse", "HEAD"])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        });
    if let Ok(out) = Command::new("git")
        .args(["rev-parse", "--git-dir"])
        .output()
    {
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && !dir.is_empty() {
            // HEAD moves on checkout; the ref it points at moves on commit. Only existing
            // paths: cargo reruns the script every build for a missing one.
            for path in ["HEAD", "refs/heads", "packed-refs"] {
                let path = std::path::Path::new(&dir).join(path);
                if path.exists() {
                    println!("cargo:rerun-if-changed={}", path.display());
                }
            }
        }
    }
    println!(
        "cargo:rustc-env=TRIBIST_COMMIT={}",
        commit.unwrap_or_else(|| "unknown".into())
    );
}
