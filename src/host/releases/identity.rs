//! What a binary is: what it says of itself (describe, version, hands-over) and what its
//! bytes are against what is installed and kept (identity).

use std::fmt;

use super::describe::{self, NoId, Report};
use super::names::{Accept, Binary, Kept, ReleaseId, Slot, RELEASES_DIR};
use super::{Ctx, Result, Stop};

/// `describe NAME`.
pub fn describe(ctx: &Ctx, name: &str) -> Result<String> {
    let b = ctx.binary(name, Accept::AnyOrVerified)?;
    let shown = b.shown();
    describe::describe(&ctx.api, &b)
        .map(|d| d.lines())
        .ok_or_else(|| {
            Stop::failed(format!(
                "{shown} does not describe itself ('{shown} --describe' failed or printed no line this kit reads: it predates --describe, or does not run)"
            ))
        })
}

/// `version NAME`.
pub fn version(ctx: &Ctx, name: &str) -> Result<String> {
    let b = ctx.binary(name, Accept::AnyOrVerified)?;
    let shown = b.shown();
    Report::read(&ctx.api, &b)
        .release_id()
        .map_err(|why| match why {
            NoId::DoesNotRun => Stop::failed(format!(
                "{shown} does not run on this host ('{shown} --version' failed)"
            )),
            NoId::NoCommitLine => Stop::failed(format!(
                "{shown} --version did not print 'server VERSION (commit ID)'"
            )),
        })
}

/// `hands-over NAME`: Ok for yes, a silent exit 1 for no.
pub fn hands_over(ctx: &Ctx, name: &str) -> Result<()> {
    let b = ctx.binary(name, Accept::AnyOrVerified)?;
    if Report::read(&ctx.api, &b).hands_over() {
        Ok(())
    } else {
        Err(Stop::no())
    }
}

/// What an upload is, against what is installed and kept.
#[derive(Debug, PartialEq, Eq)]
pub enum Identity {
    /// The same bytes as `server`.
    Installed,
    /// The installed binary reports this id with other bytes: old and new could not be told
    /// apart.
    Conflict {
        id: String,
    },
    /// A kept release has this id with other bytes: it may serve, never be kept under it.
    KeptOther {
        id: String,
    },
    New,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Installed => write!(f, "installed"),
            Identity::Conflict { id } => {
                write!(
                    f,
                    "conflict: the installed binary is release {id} with other bytes"
                )
            }
            Identity::KeptOther { id } => write!(
                f,
                "kept-other: release {id} is kept with other bytes ({RELEASES_DIR}/{id})"
            ),
            Identity::New => write!(f, "new"),
        }
    }
}

/// `identity NAME ID`.
pub fn identity(ctx: &Ctx, name: &str, id: &str) -> Result<Identity> {
    let b = ctx.binary(name, Accept::Any)?;
    let id = ReleaseId::parse(id)?;
    let api = &ctx.api;
    let name = b.api_name().unwrap_or_default();
    let server = Slot::Server.name();
    if api.is_file(server) && api.same_bytes(name, api, server) {
        return Ok(Identity::Installed);
    }
    if api.is_file(server)
        && Report::read(api, &Binary::Slot(Slot::Server))
            .release_id()
            .as_deref()
            == Ok(id.as_str())
    {
        return Ok(Identity::Conflict {
            id: id.as_str().into(),
        });
    }
    let kept = Kept::Binary(id.as_str()).name();
    if let Ok(releases) = api.subdir(RELEASES_DIR, None) {
        if releases.exists(&kept) && !api.same_bytes(name, &releases, &kept) {
            return Ok(Identity::KeptOther {
                id: id.as_str().into(),
            });
        }
    }
    Ok(Identity::New)
}

#[cfg(test)]
mod tests {
    use super::super::tests::Api;
    use super::*;

    #[test]
    fn identity_installed_new_conflict_kept_other() {
        let api = Api::new();
        api.binary("server", "old");
        std::fs::copy(api.path("server"), api.path(".upload.same01")).unwrap();
        api.binary(".upload.new001", "new");
        api.script(
            ".upload.other1",
            "# other bytes\n[ \"$1\" = --version ] && echo 'server 1.0 (commit old)'",
        );
        let id = |n: &str, i: &str| identity(&api.ctx, n, i).unwrap();
        assert_eq!(id(".upload.same01", "old"), Identity::Installed);
        assert_eq!(id(".upload.new001", "new"), Identity::New);
        assert_eq!(
            id(".upload.other1", "old").to_string(),
            "conflict: the installed binary is release old with other bytes"
        );
        // Release old kept, release new installed: other bytes under old may serve.
        std::fs::create_dir(api.path("releases")).unwrap();
        std::fs::hard_link(api.path("server"), api.path("releases/old")).unwrap();
        std::fs::copy(api.path(".upload.new001"), api.path("server")).unwrap();
        assert_eq!(
            id(".upload.other1", "old").to_string(),
            "kept-other: release old is kept with other bytes (releases/old)"
        );
        assert_eq!(
            identity(&api.ctx, ".upload.other1", "../x")
                .unwrap_err()
                .code,
            2
        );
        assert_eq!(
            identity(&api.ctx, ".upload.none01", "x").unwrap_err().code,
            1
        );
    }

    #[test]
    fn version_describe_and_hands_over_read_the_binary() {
        let api = Api::new();
        api.script(
            "server",
            r#"[ "$1" = --describe ] && echo '{"contract":1,"name":"tribist","version":"0.2.0","releaseId":"rel-new","features":["handover"]}' && exit 0
[ "$1" = --version ] && echo 'server 0.2.0 (commit words)' && exit 0"#,
        );
        assert_eq!(version(&api.ctx, "server").unwrap(), "rel-new");
        assert!(hands_over(&api.ctx, "server").is_ok());
        assert_eq!(
            describe(&api.ctx, "server").unwrap(),
            "releaseId=rel-new\nversion=0.2.0\nfeatures=handover"
        );
        // Predates --describe.
        api.script(
            "server.prev",
            "[ \"$1\" = --version ] && printf 'server 0.1.0 (commit old-one)\\nhandover: SIGUSR2\\n' && exit 0\nexit 2",
        );
        assert_eq!(version(&api.ctx, "server.prev").unwrap(), "old-one");
        assert!(hands_over(&api.ctx, "server.prev").is_ok());
        let err = describe(&api.ctx, "server.prev").unwrap_err();
        assert!(
            err.message.contains("predates --describe"),
            "{}",
            err.message
        );
        // Output that is not the line: refused, never echoed.
        api.script(
            "server_new",
            "printf 'server 1.0 (commit a\\nb)\\n* * * * * root touch /tmp/x\\n\\033[2J'",
        );
        let err = version(&api.ctx, "server_new").unwrap_err();
        assert!(err
            .message
            .contains("did not print 'server VERSION (commit ID)'"));
        assert!(!err.message.contains("* * *") && !err.message.contains('\x1b'));
        assert!(hands_over(&api.ctx, "server_new").is_err());
        // Does not run at all.
        api.script("server.failed", "exit 1");
        let err = version(&api.ctx, "server.failed").unwrap_err();
        assert!(
            err.message.contains("does not run on this host"),
            "{}",
            err.message
        );
        assert_eq!(version(&api.ctx, "/bin/sh").unwrap_err().code, 2);
        assert_eq!(version(&api.ctx, "server_nope").unwrap_err().code, 2);
    }
}
