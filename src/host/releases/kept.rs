//! api/releases/: the releases that served, by releaseId (hard links), with a note each —
//! kept, listed, pruned and restaged to roll back to.

use std::io::Write;

use crate::host::text::clean;

use super::describe::Report;
use super::dir::{Dir, Meta};
use super::names::{shown, Binary, Kept, ReleaseId, Slot, RELEASES_DIR};
use super::uploads::{new_upload_link, prune_stale_uploads};
use super::{io_failed, Ctx, Result, Stop, PROG};

/// The most of a note read back.
const META_MAX: u64 = 4096;

/// The kept releases by their notes, newest kept first (by the note's time; ties by name):
/// `(id, the note's metadata)`.
fn by_age(releases: &Dir) -> Vec<(String, Meta)> {
    let mut notes: Vec<(String, Meta)> = releases
        .entries()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| !n.starts_with('.'))
        .filter_map(|n| {
            let id = n.strip_suffix(".meta")?.to_string();
            let meta = releases.stat(&n)?;
            Some((id, meta))
        })
        .collect();
    notes.sort_by(|(a, ma), (b, mb)| mb.modified().cmp(&ma.modified()).then(a.cmp(b)));
    notes
}

/// `keep ID KEEP BY`: the serving binary kept as releases/ID with a note, then releases/
/// pruned to the newest KEEP (never the serving or the previous one) and of what no release
/// owns. What it did, line by line.
pub fn keep(ctx: &Ctx, id: &str, keep: &str, by: &str) -> Result<String> {
    let id = ReleaseId::parse(id)?;
    let keep: usize = match keep.parse() {
        Ok(n) if (1..=99).contains(&n) && !keep.starts_with('0') && !keep.starts_with('+') => n,
        _ => {
            return Err(Stop::usage(format!(
                "KEEP must be 1 to 99, got '{}'",
                shown(keep)
            )))
        }
    };
    let api = &ctx.api;
    let server = Slot::Server.name();
    if !api.is_file(server) {
        return Err(Stop::failed("no server to keep"));
    }
    let releases = api.subdir(RELEASES_DIR, Some(0o777)).map_err(|e| {
        io_failed(
            format!("{}/{RELEASES_DIR} is not a directory", api.path().display()),
            e,
        )
    })?;
    let mut said = Vec::new();
    let (bin, note) = (
        Kept::Binary(id.as_str()).name(),
        Kept::Meta(id.as_str()).name(),
    );
    let id = id.as_str();
    if releases.is_file(&note) && releases.same_file(&bin, api, server) {
        // Already kept (a rollback to it): it keeps its place and note.
        said.push(format!("{PROG}: release {id} is kept already"));
    } else if releases.exists(&bin) && !releases.same_bytes(&bin, api, server) {
        return Err(Stop::failed(format!(
            "{RELEASES_DIR}/{id} holds other bytes than the serving binary; not replacing it (two binaries are never one release)"
        )));
    } else {
        let version = Report::read(api, &Binary::Slot(Slot::Server)).version();
        let (tmp, note_tmp) = (Kept::BinaryTmp(id).name(), Kept::MetaTmp(id).name());
        let failed = |e| io_failed(format!("cannot keep release {id} in {RELEASES_DIR}/"), e);
        releases.remove(&tmp).map_err(failed)?;
        api.link_to(server, &releases, &tmp).map_err(failed)?;
        releases.rename(&tmp, &bin).map_err(failed)?;
        let text = format!(
            "version={}\nkept={}\nby={}\n",
            version.as_deref().unwrap_or("unknown"),
            utc_now(),
            clean(by.as_bytes(), 120)
        );
        releases.remove(&note_tmp).map_err(failed)?;
        let mut f = releases.create_new(&note_tmp, 0o666).map_err(failed)?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(failed)?;
        drop(f);
        releases.rename(&note_tmp, &note).map_err(failed)?;
    }
    let prev = Slot::ServerPrev.name();
    for (n, (kept_id, _)) in by_age(&releases).into_iter().enumerate() {
        if n < keep
            || releases.same_file(&kept_id, api, server)
            || releases.same_file(&kept_id, api, prev)
        {
            continue;
        }
        let _ = releases.remove(&kept_id);
        let _ = releases.remove(&Kept::Meta(&kept_id).name());
        said.push(format!(
            "{PROG}: pruned release {} (KEEP={keep})",
            clean(kept_id.as_bytes(), 80)
        ));
    }
    said.extend(prune_strays(&releases));
    Ok(said.join("\n"))
}

/// Removes from releases/ what no release owns: temporary links and notes a run left
/// (.ID.tmp, .ID.meta.tmp), a binary without its note and a note without its binary.
fn prune_strays(releases: &Dir) -> Vec<String> {
    let mut names = releases.entries().unwrap_or_default();
    names.sort();
    let mut said = Vec::new();
    for name in names {
        let owned = if name.starts_with('.') {
            false
        } else if let Some(id) = name.strip_suffix(".meta") {
            releases.is_file(id)
        } else {
            releases.is_file(&name) && releases.is_file(&Kept::Meta(&name).name())
        };
        if !owned && releases.remove_all(&name).is_ok() {
            said.push(format!(
                "{PROG}: removed {RELEASES_DIR}/{} (no release owns it)",
                clean(name.as_bytes(), 80)
            ));
        }
    }
    said
}

/// `date -u +%Y-%m-%dT%H:%M:%SZ`.
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let t = libc::time_t::try_from(secs).unwrap_or(0);
    // SAFETY: a zeroed tm is a valid buffer that gmtime_r fills; it keeps no pointer.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    if unsafe { libc::gmtime_r(&t, &mut tm) }.is_null() {
        return format!("@{secs}");
    }
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// The value of `key=` on the first line that has it, printable and short.
fn note_value(note: &str, key: &str) -> String {
    note.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(|v| clean(v.as_bytes(), 120))
        .unwrap_or_default()
}

fn row(id: &str, version: &str, kept: &str, by: &str, marks: &str) -> String {
    let or = |s: &str| {
        if s.is_empty() {
            "?".to_string()
        } else {
            s.to_string()
        }
    };
    format!(
        "{:<42} {:<10} {:<21} {}{marks}",
        id,
        or(version),
        or(kept),
        or(by)
    )
}

/// `list`: the kept releases, newest first, and the serving binary if it is not one of them.
pub fn list(ctx: &Ctx) -> Result<String> {
    let api = &ctx.api;
    let releases = if api.exists(RELEASES_DIR) {
        Some(api.subdir(RELEASES_DIR, None).map_err(|e| {
            io_failed(
                format!("{}/{RELEASES_DIR} is not a directory", api.path().display()),
                e,
            )
        })?)
    } else {
        None
    };
    let mut out = Vec::new();
    let Some(releases) = releases else {
        out.push(
            "no release kept yet (one is kept at every successful install and upgrade)".to_string(),
        );
        out.extend(unkept_serving(api, None));
        return Ok(out.join("\n"));
    };
    out.push(format!(
        "{:<42} {:<10} {:<21} BY",
        "RELEASE", "VERSION", "KEPT"
    ));
    for (id, _) in by_age(&releases) {
        if !releases.is_file(&id) {
            continue;
        }
        let note = releases
            .read_head(&Kept::Meta(&id).name(), META_MAX)
            .unwrap_or_default();
        let note = String::from_utf8_lossy(&note);
        let mut marks = String::new();
        if releases.same_file(&id, api, Slot::Server.name()) {
            marks.push_str(" [serving]");
        }
        if releases.same_file(&id, api, Slot::ServerPrev.name()) {
            marks.push_str(" [previous]");
        }
        out.push(row(
            &clean(id.as_bytes(), 64),
            &note_value(&note, "version"),
            &note_value(&note, "kept"),
            &note_value(&note, "by"),
            &marks,
        ));
    }
    out.extend(unkept_serving(api, Some(&releases)));
    Ok(out.join("\n"))
}

/// The installed binary when no kept release is it (promoted by hand: server_new and a
/// restart), so that what serves is always listed.
fn unkept_serving(api: &Dir, releases: Option<&Dir>) -> Option<String> {
    let server = Slot::Server.name();
    if !api.is_file(server) {
        return None;
    }
    if let Some(r) = releases {
        let kept = r.entries().unwrap_or_default();
        if kept
            .iter()
            .any(|n| !n.starts_with('.') && !n.ends_with(".meta") && r.same_file(n, api, server))
        {
            return None;
        }
    }
    let report = Report::read(api, &Binary::Slot(Slot::Server));
    let mut why = "(not kept: installed by hand or not yet healthy)".to_string();
    let id = match report.release_id() {
        Ok(id) => {
            if releases.is_some_and(|r| r.exists(&id)) {
                why = format!("(not kept: {RELEASES_DIR}/{id} holds other bytes)");
            }
            id
        }
        Err(_) => "(does not run)".to_string(),
    };
    let version = report.version().unwrap_or_default();
    Some(row(&id, &version, "-", &why, " [serving]"))
}

/// `restage PREFIX`: the kept release whose id starts with PREFIX (one only; a whole id wins
/// over the longer ids it begins) linked to a new upload; its name.
pub fn restage(ctx: &Ctx, prefix: &str) -> Result<String> {
    if !ReleaseId::valid(prefix) {
        return Err(Stop::usage(format!(
            "'{}' is not a release id or a prefix of one",
            shown(prefix)
        )));
    }
    let api = &ctx.api;
    if !api.exists(RELEASES_DIR) {
        return Err(Stop::failed("no release is kept here yet"));
    }
    let releases = api.subdir(RELEASES_DIR, None).map_err(|e| {
        io_failed(
            format!("{}/{RELEASES_DIR} is not a directory", api.path().display()),
            e,
        )
    })?;
    let mut matches: Vec<String> = releases
        .entries()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.starts_with(prefix) && !n.ends_with(".meta") && releases.is_file(n))
        .collect();
    matches.sort();
    if matches.is_empty() {
        return Err(Stop::failed(format!(
            "no kept release starts with '{prefix}' (make releases lists them)"
        )));
    }
    if releases.is_file(prefix) {
        matches = vec![prefix.to_string()];
    }
    if matches.len() > 1 {
        let names: Vec<String> = matches.iter().map(|m| clean(m.as_bytes(), 64)).collect();
        return Err(Stop::failed(format!(
            "'{prefix}' names {} kept releases ({}): give more of the id",
            matches.len(),
            names.join(" ")
        )));
    }
    for name in prune_stale_uploads(api, super::uploads::now()) {
        eprintln!("{PROG}: removed {name}, an upload unchanged for over an hour");
    }
    let up = new_upload_link(&releases, &matches[0], api)?;
    Ok(up.name().to_string())
}

#[cfg(test)]
mod tests {
    use super::super::tests::Api;
    use super::*;

    /// Makes `id` serve as an upgrade would: server -> server.prev, the new one linked in.
    fn serve(api: &Api, id: &str) {
        api.binary(&format!("bin-{id}"), id);
        if api.exists("server") {
            let _ = std::fs::remove_file(api.path("server.prev"));
            std::fs::hard_link(api.path("server"), api.path("server.prev")).unwrap();
        }
        let _ = std::fs::remove_file(api.path("server"));
        std::fs::hard_link(api.path(&format!("bin-{id}")), api.path("server")).unwrap();
        std::fs::remove_file(api.path(&format!("bin-{id}"))).unwrap();
    }

    fn keep_ok(api: &Api, id: &str, n: &str) -> String {
        // Kept times one apart at least in their nanoseconds.
        std::thread::sleep(std::time::Duration::from_millis(5));
        keep(&api.ctx, id, n, "alice@laptop (tribist)").unwrap()
    }

    #[test]
    fn keep_prunes_to_the_newest_never_the_serving_or_the_previous() {
        let api = Api::new();
        for id in ["r1", "r2", "r3", "r4"] {
            serve(&api, id);
            let said = keep_ok(&api, id, "2");
            if id == "r4" {
                assert!(said.contains("pruned release r2 (KEEP=2)"), "{said}");
            }
        }
        let out = list(&api.ctx).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].starts_with("RELEASE") && lines[0].ends_with("BY"));
        assert!(
            lines[1].starts_with("r4 ") && lines[1].ends_with("alice@laptop (tribist) [serving]"),
            "{out}"
        );
        assert!(
            lines[1].contains(" 1.0 ") && lines[1].contains("Z "),
            "{out}"
        );
        assert!(
            lines[2].starts_with("r3 ") && lines[2].ends_with("[previous]"),
            "{out}"
        );
        let mut names = api
            .ctx
            .api
            .subdir("releases", None)
            .unwrap()
            .entries()
            .unwrap();
        names.sort();
        assert_eq!(names, ["r3", "r3.meta", "r4", "r4.meta"]);
        // Keep 1: the previous one stays all the same.
        let said = keep_ok(&api, "r4", "1");
        assert!(
            said.contains("release r4 is kept already") && !said.contains("pruned"),
            "{said}"
        );
        for bad in ["0", "100", "01", "x", "+1", ""] {
            assert_eq!(keep(&api.ctx, "r4", bad, "x").unwrap_err().code, 2, "{bad}");
        }
        assert_eq!(keep(&api.ctx, "../../etc", "2", "x").unwrap_err().code, 2);
    }

    #[test]
    fn keep_after_a_rollback_is_the_same_file_and_strays_are_pruned() {
        let api = Api::new();
        serve(&api, "old");
        keep_ok(&api, "old", "5");
        serve(&api, "r2");
        keep_ok(&api, "r2", "5");
        super::super::states::swap(&api.ctx).unwrap();
        let r = api.ctx.api.subdir("releases", None).unwrap();
        api.ctx.api.link_to("server", &r, ".old.tmp").unwrap();
        std::fs::write(api.path("releases/lone.meta"), "x").unwrap();
        std::fs::write(api.path("releases/nometa"), "x").unwrap();
        std::fs::create_dir_all(api.path("releases/.dir/sub")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", api.path("releases/link")).unwrap();
        std::fs::write(api.path("releases/link.meta"), "x").unwrap();
        let said = keep_ok(&api, "old", "5");
        assert!(said.contains("release old is kept already"), "{said}");
        for stray in [
            ".old.tmp",
            "lone.meta",
            "nometa",
            ".dir",
            "link",
            "link.meta",
        ] {
            assert!(
                said.contains(&format!("removed releases/{stray} (no release owns it)")),
                "{stray}: {said}"
            );
        }
        let mut names = r.entries().unwrap();
        names.sort();
        assert_eq!(names, ["old", "old.meta", "r2", "r2.meta"]);
        assert!(std::fs::read("/etc/passwd").is_ok());
        let out = list(&api.ctx).unwrap();
        assert!(
            out.lines()
                .any(|l| l.starts_with("old ") && l.ends_with("[serving]")),
            "{out}"
        );
        assert!(
            out.lines()
                .any(|l| l.starts_with("r2 ") && l.ends_with("[previous]")),
            "{out}"
        );
    }

    #[test]
    fn keep_never_replaces_other_bytes_and_list_says_what_serves() {
        let api = Api::new();
        let out = list(&api.ctx).unwrap();
        assert_eq!(
            out,
            "no release kept yet (one is kept at every successful install and upgrade)"
        );
        serve(&api, "old");
        let out = list(&api.ctx).unwrap();
        let want = format!(
            "{:<42} {:<10} {:<21} (not kept: installed by hand or not yet healthy) [serving]",
            "old", "1.0", "-"
        );
        assert_eq!(out.lines().nth(1), Some(want.as_str()), "{out}");
        keep_ok(&api, "old", "5");
        // Other bytes that also say they are release old.
        api.script(
            "other",
            "# other bytes\n[ \"$1\" = --version ] && echo 'server 1.0 (commit old)'",
        );
        std::fs::rename(api.path("other"), api.path("server")).unwrap();
        let err = keep(&api.ctx, "old", "5", "x").unwrap_err();
        assert!(err
            .message
            .contains("holds other bytes than the serving binary; not replacing it"));
        assert!(!api.read("releases/old").unwrap().contains("other bytes"));
        let out = list(&api.ctx).unwrap();
        assert!(
            out.lines().any(|l| l.starts_with("old ")
                && l.ends_with("(not kept: releases/old holds other bytes) [serving]")),
            "{out}"
        );
        // The same bytes as a kept release, in another file: kept as that file.
        std::fs::copy(api.path("releases/old"), api.path("server")).unwrap();
        keep_ok(&api, "old", "5");
        assert!(api.ctx.api.same_file(
            "server",
            &api.ctx.api.subdir("releases", None).unwrap(),
            "old"
        ));
    }

    #[test]
    fn notes_are_printed_clean() {
        let api = Api::new();
        serve(&api, "old");
        keep(&api.ctx, "old", "5", "eve\x1b]0;title\x07\n").unwrap();
        let note = api.read("releases/old.meta").unwrap();
        assert!(note.ends_with("by=eve]0;title\n"), "{note:?}");
        std::fs::write(api.path("releases/old.meta"), "version=\x1b[2J1\nkept=x\n").unwrap();
        let out = list(&api.ctx).unwrap();
        assert!(!out.contains('\x1b') && out.contains(" [2J1 "), "{out}");
    }

    #[test]
    fn restage_links_one_kept_release_to_a_new_upload() {
        let api = Api::new();
        assert!(restage(&api.ctx, "x")
            .unwrap_err()
            .message
            .contains("no release is kept here yet"));
        for id in ["old", "old-dirty-0123456789ab", "r3"] {
            serve(&api, id);
            keep_ok(&api, id, "5");
        }
        let up = restage(&api.ctx, "r").unwrap();
        assert!(
            up.starts_with(".upload.") && up.len() == ".upload.".len() + 8,
            "{up}"
        );
        let r = api.ctx.api.subdir("releases", None).unwrap();
        assert!(api.ctx.api.same_file(&up, &r, "r3"));
        // A whole id wins over the longer ids it begins.
        let up = restage(&api.ctx, "old").unwrap();
        assert!(api.ctx.api.same_file(&up, &r, "old"));
        let err = restage(&api.ctx, "ol").unwrap_err();
        assert!(
            err.message
                .contains("'ol' names 2 kept releases (old old-dirty-0123456789ab)"),
            "{}",
            err.message
        );
        assert!(restage(&api.ctx, "zz")
            .unwrap_err()
            .message
            .contains("no kept release starts with 'zz'"));
        assert_eq!(restage(&api.ctx, "../x").unwrap_err().code, 2);
        assert_eq!(restage(&api.ctx, ".x").unwrap_err().code, 2);
    }
}
