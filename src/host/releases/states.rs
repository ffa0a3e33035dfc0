//! The binary states of api/ and the steps between them (the table is [`Slot`]'s): stage,
//! commit, revert, swap, promote. Each step is a rename or a hard link in api/, in an order
//! that keeps `server` whole and in place at every instant; the tests stop each command at
//! every step to show it.

use std::io;

use crate::host::digest::Sha256;

use super::dir::Dir;
use super::names::{Slot, Upload};
use super::{io_failed, Ctx, Result, Stop, PROG};

/// A step of a command on api/, failing with what it was.
pub fn step(r: io::Result<()>, what: impl FnOnce() -> String) -> Result<()> {
    r.map_err(|e| io_failed(what(), e))
}

/// `ln -f FROM TO` in api/ for a name nothing else reads meanwhile: TO removed, then linked.
fn relink(api: &Dir, from: Slot, to: Slot) -> Result<()> {
    step(api.remove(to.name()), || {
        format!("cannot remove {}", to.name())
    })?;
    step(api.link_to(from.name(), api, to.name()), || {
        format!("cannot link {} as {}", from.name(), to.name())
    })
}

/// `stage NAME`: the upload becomes server_new, with what a revert needs kept first.
pub fn stage(ctx: &Ctx, name: &str) -> Result<()> {
    let up = Upload::parse(name)?;
    let api = &ctx.api;
    if !api.is_file(up.name()) {
        return Err(Stop::failed(format!("no upload {}", up.name())));
    }
    for s in [Slot::PrevKeep, Slot::Before] {
        step(api.remove(s.name()), || {
            format!("cannot remove {}", s.name())
        })?;
    }
    // Before server_new exists (a start may promote it at once): what revert puts back.
    if api.exists(Slot::ServerPrev.name()) {
        relink(api, Slot::ServerPrev, Slot::PrevKeep)?;
    }
    if api.exists(Slot::Server.name()) {
        relink(api, Slot::Server, Slot::Before)?;
    }
    step(api.rename(up.name(), Slot::ServerNew.name()), || {
        format!("cannot move {} to server_new", up.name())
    })
}

/// `commit`: the staged upgrade succeeded.
pub fn commit(ctx: &Ctx) -> Result<()> {
    for s in [Slot::PrevKeep, Slot::Before] {
        step(ctx.api.remove(s.name()), || {
            format!("cannot remove {}", s.name())
        })?;
    }
    Ok(())
}

/// `revert`: a staged upgrade failed; everything back as it was before `stage`.
pub fn revert(ctx: &Ctx) -> Result<String> {
    let api = &ctx.api;
    let (server, before) = (Slot::Server.name(), Slot::Before.name());
    step(api.remove(Slot::ServerNew.name()), || {
        "cannot remove server_new".into()
    })?;
    if !api.exists(before) || api.same_file(server, api, before) {
        // Interrupted before the promotion: the binary serving before is still in place.
        commit(ctx)?;
        return Ok(format!("{PROG}: server is unchanged"));
    }
    relink(api, Slot::Server, Slot::RolledBack)?;
    step(api.rename(before, server), || {
        "cannot put .server.before back as server".into()
    })?;
    if api.exists(Slot::PrevKeep.name()) {
        step(
            api.rename(Slot::PrevKeep.name(), Slot::ServerPrev.name()),
            || "cannot put .server.prev.keep back as server.prev".into(),
        )?;
    } else {
        step(api.remove(Slot::ServerPrev.name()), || {
            "cannot remove server.prev".into()
        })?;
    }
    step(
        api.rename(Slot::RolledBack.name(), Slot::ServerFailed.name()),
        || "cannot keep the failed binary as server.failed".into(),
    )?;
    Ok(format!(
        "{PROG}: the binary serving before the upgrade is server again; the failed one is kept as server.failed"
    ))
}

/// `swap`: server and server.prev change places (a plain rollback, and its undo).
pub fn swap(ctx: &Ctx) -> Result<()> {
    let api = &ctx.api;
    if !api.exists(Slot::ServerPrev.name()) {
        return Err(Stop::failed(
            "there is no server.prev to roll back to (already rolled back?)",
        ));
    }
    if !api.exists(Slot::Server.name()) {
        return Err(Stop::failed(
            "there is no server to swap with server.prev; make install puts one in place",
        ));
    }
    relink(api, Slot::Server, Slot::RolledBack)?;
    step(
        api.rename(Slot::ServerPrev.name(), Slot::Server.name()),
        || "cannot move server.prev to server".into(),
    )?;
    step(
        api.rename(Slot::RolledBack.name(), Slot::ServerPrev.name()),
        || "cannot keep the binary rolled back from as server.prev".into(),
    )
}

/// The SHA-256 of `server` as read now, or "unknown".
fn server_digest(api: &Dir) -> String {
    api.open_read(Slot::Server.name())
        .and_then(Sha256::of_reader)
        .map_or_else(|_| "unknown".to_string(), |d| d.to_string())
}

/// `promote`: server_new becomes server, server server.prev (the unit's pre-start step).
pub fn promote(ctx: &Ctx) -> Result<String> {
    let api = &ctx.api;
    let (server, new) = (Slot::Server.name(), Slot::ServerNew.name());
    if !api.exists(new) {
        return Ok(format!(
            "{PROG}: nothing to promote; sha256 {}",
            server_digest(api)
        ));
    }
    if !api.is_file(new) || !api.executable(new) {
        return Err(Stop::failed(format!(
            "{}/server_new is not an executable file; fix or remove it",
            api.path().display()
        )));
    }
    let had_prev = api.exists(server);
    if had_prev {
        // A second name first, then one rename: server stays in place, and server.prev is
        // the old or the new rollback target at every instant.
        relink(api, Slot::Server, Slot::PrevNext)
            .and_then(|()| {
                step(
                    api.rename(Slot::PrevNext.name(), Slot::ServerPrev.name()),
                    String::new,
                )
            })
            .map_err(|e| {
                Stop::failed(format!("cannot keep server as server.prev ({})", e.message))
            })?;
    }
    // rename(2): `server` is the old or the new binary at every instant, never missing.
    step(api.rename(new, server), || {
        "cannot move server_new to server".into()
    })?;
    Ok(format!(
        "{PROG}: promoted server_new to server{}; sha256 {}",
        if had_prev {
            " (previous binary kept as server.prev)"
        } else {
            ""
        },
        server_digest(api)
    ))
}

#[cfg(test)]
mod tests {
    use super::super::dir::{fail_at, steps};
    use super::super::tests::Api;
    use super::*;

    const FILES: [&str; 6] = [
        "server",
        "server_new",
        "server.prev",
        "server.failed",
        ".server.before",
        ".server.prev.keep",
    ];

    #[test]
    fn stage_promote_commit() {
        let api = Api::new();
        api.binary("server", "old");
        api.binary("server.prev", "prev");
        api.binary(".upload.abcdef", "new");
        fail_at(None);
        stage(&api.ctx, ".upload.abcdef").unwrap();
        assert_eq!(
            steps(),
            [
                "link server.prev .server.prev.keep",
                "link server .server.before",
                "rename .upload.abcdef server_new"
            ]
        );
        assert_eq!(api.ids(&FILES), ["old", "new", "prev", "-", "old", "prev"]);
        assert!(api
            .ctx
            .api
            .same_file("server", &api.ctx.api, ".server.before"));
        let out = promote(&api.ctx).unwrap();
        assert!(
            out.contains(
                "promoted server_new to server (previous binary kept as server.prev); sha256 "
            ),
            "{out}"
        );
        let digest = Sha256::of(api.read("server").unwrap().as_bytes()).to_string();
        assert!(out.ends_with(&digest), "{out}");
        assert_eq!(api.ids(&FILES), ["new", "-", "old", "-", "old", "prev"]);
        commit(&api.ctx).unwrap();
        assert_eq!(api.ids(&FILES), ["new", "-", "old", "-", "-", "-"]);
        // Nothing to promote: nothing changes, the digest is said.
        fail_at(None);
        let out = promote(&api.ctx).unwrap();
        assert_eq!(out, format!("{PROG}: nothing to promote; sha256 {digest}"));
        assert!(steps().is_empty());
        // Refusals.
        assert_eq!(stage(&api.ctx, ".upload.zzzzzz").unwrap_err().code, 1);
        assert_eq!(stage(&api.ctx, "../../etc/passwd").unwrap_err().code, 2);
    }

    #[test]
    fn a_first_promotion_has_no_previous_binary() {
        let api = Api::new();
        api.binary("server_new", "first");
        let out = promote(&api.ctx).unwrap();
        assert!(
            out.starts_with(&format!("{PROG}: promoted server_new to server; sha256 ")),
            "{out}"
        );
        assert_eq!(api.ids(&["server", "server.prev"]), ["first", "-"]);
    }

    #[test]
    fn a_server_new_that_is_not_an_executable_file_is_refused_and_nothing_moves() {
        let api = Api::new();
        api.binary("server", "old");
        std::fs::write(api.path("server_new"), "junk").unwrap();
        let err = promote(&api.ctx).unwrap_err();
        assert!(
            err.message.contains("not an executable file"),
            "{}",
            err.message
        );
        std::fs::remove_file(api.path("server_new")).unwrap();
        std::os::unix::fs::symlink(api.path("server"), api.path("server_new")).unwrap();
        assert!(promote(&api.ctx).is_err());
        assert_eq!(api.ids(&["server", "server.prev"]), ["old", "-"]);
    }

    /// Stopped at every step (a kill, a full disk), promote leaves server in place (checked
    /// after each step by dir.rs) and server.prev whole: the old or the new rollback target.

    #[test]
    fn promote_stopped_at_any_step_leaves_a_whole_server_and_server_prev() {
        for n in 0..4 {
            let api = Api::new();
            api.binary("server", "old");
            api.binary("server.prev", "prev");
            api.binary("server_new", "new");
            fail_at(Some(n));
            let r = promote(&api.ctx);
            let ids = api.ids(&["server", "server.prev", "server_new"]);
            match n {
                0..=2 => {
                    assert!(r.is_err());
                    assert_eq!(ids[0], "old", "step {n}");
                    assert!(ids[1] == "prev" || ids[1] == "old", "step {n}: {ids:?}");
                }
                _ => assert_eq!(ids, ["new", "old", "-"], "{r:?}"),
            }
            fail_at(None);
        }
    }

    /// Stopped at every step, stage never leaves a server_new that revert could not undo:
    /// once server_new is there, so are .server.before and .server.prev.keep. Before that,
    /// nothing that serves or is rolled back to has changed.

    #[test]
    fn stage_stopped_at_any_step_can_be_reverted() {
        for n in 0..4 {
            let api = Api::new();
            api.binary("server", "old");
            api.binary("server.prev", "prev");
            api.binary(".upload.abcdef", "new");
            fail_at(Some(n));
            let r = stage(&api.ctx, ".upload.abcdef");
            fail_at(None);
            if api.exists("server_new") {
                assert_eq!(
                    api.ids(&[".server.before", ".server.prev.keep"]),
                    ["old", "prev"],
                    "step {n}"
                );
                // The unit promotes; the upgrade fails; revert puts everything back.
                promote(&api.ctx).unwrap();
            } else {
                assert!(r.is_err(), "step {n}");
                assert_eq!(
                    api.ids(&["server", "server.prev"]),
                    ["old", "prev"],
                    "step {n}"
                );
            }
            revert(&api.ctx).unwrap();
            assert_eq!(
                api.ids(&FILES),
                [
                    "old",
                    "-",
                    "prev",
                    if n < 3 { "-" } else { "new" },
                    "-",
                    "-"
                ],
                "step {n}"
            );
        }
    }

    #[test]
    fn revert_after_a_promotion_puts_everything_back() {
        let api = Api::new();
        api.binary("server", "old");
        api.binary("server.prev", "prev");
        api.binary(".upload.abcdef", "new");
        stage(&api.ctx, ".upload.abcdef").unwrap();
        promote(&api.ctx).unwrap();
        fail_at(None);
        let out = revert(&api.ctx).unwrap();
        assert!(out.contains("is server again; the failed one is kept as server.failed"));
        assert_eq!(
            steps(),
            [
                "link server .server.rolled-back",
                "rename .server.before server",
                "rename .server.prev.keep server.prev",
                "rename .server.rolled-back server.failed"
            ]
        );
        assert_eq!(api.ids(&FILES), ["old", "-", "prev", "new", "-", "-"]);
        assert!(!api.exists(".server.rolled-back"));
    }

    #[test]
    fn revert_before_the_promotion_changes_nothing_that_serves() {
        let api = Api::new();
        api.binary("server", "old");
        api.binary(".upload.ghijkl", "new");
        stage(&api.ctx, ".upload.ghijkl").unwrap();
        let out = revert(&api.ctx).unwrap();
        assert!(out.ends_with("server is unchanged"), "{out}");
        assert_eq!(api.names(), ["server"]);
        // A first upgrade with no server.prev before it: the promoted one is not kept as
        // server.prev after the revert.
        api.binary(".upload.abcdef", "new");
        stage(&api.ctx, ".upload.abcdef").unwrap();
        promote(&api.ctx).unwrap();
        revert(&api.ctx).unwrap();
        assert_eq!(api.ids(&FILES), ["old", "-", "-", "new", "-", "-"]);
    }

    #[test]
    fn swap_twice_is_no_change() {
        let api = Api::new();
        api.binary("server", "old");
        let err = swap(&api.ctx).unwrap_err();
        assert!(err.message.contains("no server.prev to roll back to"));
        api.binary("server.prev", "prev");
        fail_at(None);
        swap(&api.ctx).unwrap();
        assert_eq!(
            steps(),
            [
                "link server .server.rolled-back",
                "rename server.prev server",
                "rename .server.rolled-back server.prev"
            ]
        );
        assert_eq!(api.ids(&["server", "server.prev"]), ["prev", "old"]);
        swap(&api.ctx).unwrap();
        assert_eq!(api.ids(&["server", "server.prev"]), ["old", "prev"]);
        assert_eq!(api.names(), ["server", "server.prev"]);
    }
}
