//! Uploads (`.upload.XXXXXX` in api/): received and checked, discarded, and pruned when
//! abandoned (issue 18: a partial upload is removed by the next operation).

use std::io::{self, Read, Write};

use crate::host::digest::{Hasher, Sha256};

use super::dir::Dir;
use super::names::{Upload, RELEASES_DIR, UPLOAD_PREFIX};
use super::states::step;
use super::{io_failed, Ctx, Result, Stop, EXIT_CHECKSUM, PROG};

/// An upload nothing has changed for this long is abandoned: the next receive removes it.
pub const STALE_UPLOAD_SECS: i64 = 3600;

/// Removes the uploads whose inode has not changed for [`STALE_UPLOAD_SECS`] (ctime: a write,
/// a chmod or a new link all change it, so an upload being written or just restaged stays);
/// their names.
pub fn prune_stale_uploads(api: &Dir, now: i64) -> Vec<String> {
    let mut removed = Vec::new();
    for name in api.entries().unwrap_or_default() {
        if !name.starts_with(UPLOAD_PREFIX) || !Upload::valid(&name) {
            continue;
        }
        let Some(meta) = api.stat(&name) else {
            continue;
        };
        if meta.is_file() && now - meta.changed() > STALE_UPLOAD_SECS && api.remove(&name).is_ok() {
            removed.push(name);
        }
    }
    removed
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A new, empty upload (`O_EXCL`, mode 0600 until it is checked).
pub fn new_upload(api: &Dir, letters: usize) -> Result<(Upload, std::fs::File)> {
    let mut last = None;
    for _ in 0..100 {
        let up = Upload::random(letters);
        match api.create_new(up.name(), 0o600) {
            Ok(f) => return Ok((up, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                last = Some(e);
                break;
            }
        }
    }
    Err(io_failed(
        format!("cannot create an upload in {}", api.path().display()),
        last.unwrap_or_else(|| io::Error::other("no free name")),
    ))
}

/// A new upload that is a hard link to `name` in `dir` (linkat refuses a name that exists,
/// as `O_EXCL` does).
pub fn new_upload_link(dir: &Dir, name: &str, api: &Dir) -> Result<Upload> {
    let mut last = None;
    for _ in 0..100 {
        let up = Upload::random(8);
        match dir.link_to(name, api, up.name()) {
            Ok(()) => return Ok(up),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                last = Some(e);
                break;
            }
        }
    }
    Err(io_failed(
        format!("cannot link {RELEASES_DIR}/{name} to a new upload"),
        last.unwrap_or_else(|| io::Error::other("no free name")),
    ))
}

/// `receive SHA256`: stdin into a new upload, hashed while written; its name.
pub fn receive(ctx: &Ctx, want: &str, mut input: impl Read) -> Result<String> {
    let want = Sha256::parse(want).ok_or_else(|| {
        Stop::usage(format!(
            "'{}' is not a SHA-256 (64 hex digits)",
            super::names::shown(want)
        ))
    })?;
    let api = &ctx.api;
    for name in prune_stale_uploads(api, now()) {
        eprintln!("{PROG}: removed {name}, an upload unchanged for over an hour");
    }
    let (up, mut file) = new_upload(api, 6)?;
    let discard = |stop: Stop| {
        let _ = api.remove(up.name());
        stop
    };
    let mut hasher = Hasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => {
                return Err(discard(Stop::failed(
                    "the upload was cut off; nothing changed, run it again",
                )))
            }
        };
        hasher.update(&buf[..n]);
        if let Err(e) = file.write_all(&buf[..n]) {
            return Err(discard(io_failed(
                format!(
                    "cannot write the upload in {} (nothing changed; is the disk full?)",
                    api.path().display()
                ),
                e,
            )));
        }
    }
    if let Err(e) = file.sync_all() {
        return Err(discard(io_failed("cannot write the upload to disk", e)));
    }
    if hasher.finish() != want {
        return Err(discard(Stop::with(
            EXIT_CHECKSUM,
            "checksum mismatch: the upload is damaged or incomplete; nothing changed, run make upgrade again",
        )));
    }
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(0o750))
        .map_err(|e| discard(io_failed("cannot make the upload executable", e)))?;
    Ok(up.name().to_string())
}

/// `discard NAME`: removes an upload.
pub fn discard(ctx: &Ctx, name: &str) -> Result<()> {
    let up = Upload::parse(name)?;
    step(ctx.api.remove(up.name()), || {
        format!("cannot remove {}", up.name())
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::Api;
    use super::*;

    #[test]
    fn receive_keeps_a_matching_upload_and_removes_a_damaged_one() {
        let api = Api::new();
        let bin = b"#!/bin/sh\necho 'server 2.0 (commit new)'\n";
        let sum = Sha256::of(bin).to_string();
        let name = receive(&api.ctx, &sum, &bin[..]).unwrap();
        assert!(
            Upload::valid(&name) && name.len() == ".upload.".len() + 6,
            "{name}"
        );
        assert_eq!(std::fs::read(api.path(&name)).unwrap(), bin);
        assert!(api.ctx.api.executable(&name));
        let err = receive(&api.ctx, &sum, &bin[..10]).unwrap_err();
        assert_eq!(err.code, EXIT_CHECKSUM);
        assert!(err.message.contains("checksum mismatch"));
        assert_eq!(api.names(), std::slice::from_ref(&name));
        assert_eq!(receive(&api.ctx, "abc", &bin[..]).unwrap_err().code, 2);
        // A read that fails: the upload is removed.
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("reset"))
            }
        }
        let err = receive(&api.ctx, &sum, Broken).unwrap_err();
        assert!(err.message.contains("cut off"), "{}", err.message);
        assert_eq!(api.names(), [name]);
    }

    #[test]
    fn the_next_receive_removes_uploads_unchanged_for_an_hour() {
        let api = Api::new();
        for n in [".upload.old001", ".upload.new001", "keepme", ".upload.x"] {
            std::fs::write(api.path(n), "partial").unwrap();
        }
        let t = now();
        // Nothing is an hour old yet.
        assert!(prune_stale_uploads(&api.ctx.api, t).is_empty());
        // An hour later: every upload goes, other names stay.
        let removed = prune_stale_uploads(&api.ctx.api, t + STALE_UPLOAD_SECS + 2);
        assert_eq!(removed.len(), 2, "{removed:?}");
        assert_eq!(api.names(), [".upload.x", "keepme"]);
        // A restaged release is a new link to an old file: its ctime is now, so it stays.
        api.binary("releases/r1", "r1");
        let old = api.ctx.api.subdir("releases", None).unwrap();
        old.link_to("r1", &api.ctx.api, ".upload.restag1").unwrap();
        assert!(prune_stale_uploads(&api.ctx.api, t).is_empty());
    }

    #[test]
    fn discard_removes_only_uploads() {
        let api = Api::new();
        api.binary(".upload.abcdef", "x");
        discard(&api.ctx, ".upload.abcdef").unwrap();
        discard(&api.ctx, ".upload.abcdef").unwrap();
        assert!(!api.exists(".upload.abcdef"));
        api.binary("server", "old");
        assert_eq!(discard(&api.ctx, "server").unwrap_err().code, 2);
        assert!(api.exists("server"));
    }
}
