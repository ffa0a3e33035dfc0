//! The address, as install sets it (`make install LISTEN=`): written in one place,
//! tribist.socket's drop-in, with the server's fallback beside it in the service's drop-in;
//! everything else reads it back from systemd (`health::listen_address`). An address
//! something else listens on, or an env file that sets `TRIBIST_LISTEN` (the listen rule of
//! `crate::settings`), is refused before anything changes.

use std::time::Duration;

use super::steps::{find_program, read_root_file, run_root, unit_active};
use super::{health, paths, unit_property, warn, Exit, Fail, Result};
use crate::host::fsx::{self, Dir};
use crate::host::text::printable;
use crate::settings;

/// The address install is to set: `--listen`, else the one the socket's drop-in holds (its
/// last `ListenStream=` with a value), else the default.
pub fn wanted_listen(flag: Option<&str>, dropin: Option<&str>) -> String {
    if let Some(l) = flag {
        return l.to_string();
    }
    let set = dropin
        .into_iter()
        .flat_map(str::lines)
        .filter_map(|l| l.strip_prefix("ListenStream="))
        .rfind(|v| !v.is_empty());
    match set {
        Some(v) if settings::valid_listen(v) => v.to_string(),
        _ => paths::DEFAULT_LISTEN.to_string(),
    }
}

/// The socket's drop-in as it is now, if any (root's file, read without following a link).
pub fn dropin_now() -> Option<String> {
    read_root_file(paths::SOCKET_DROPIN, 64 * 1024)
        .ok()
        .flatten()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Whether every listener `ss -ltnp` shows in `ss` belongs to tribist: systemd's (pid 1, its
/// socket) or the service's main process `main` (a server that bound the port itself).
pub fn only_ours(ss: &str, main: &str) -> bool {
    let mut pids: Vec<&str> = Vec::new();
    for part in ss.split("pid=").skip(1) {
        let pid: &str = &part[..part
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(part.len())];
        if !pid.is_empty() && !pids.contains(&pid) {
            pids.push(pid);
        }
    }
    !pids.is_empty() && pids.iter().all(|p| *p == "1" || *p == main)
}

/// Refuses (exit 2, before anything changes) an address something else already uses, and
/// an env file that sets TRIBIST_LISTEN, which would contradict the socket's.
pub fn check_listen(listen: &str) -> Result<()> {
    if let Some(env) = read_root_file(paths::ENV_FILE, 1 << 20)? {
        if settings::sets_listen(&String::from_utf8_lossy(&env)) {
            warn(&format!(
                "{} sets TRIBIST_LISTEN, but the address is tribist.socket's, set by 'make install LISTEN=ADDR:PORT' ({}): remove that line, then install again (nothing changed)",
                paths::ENV_FILE,
                paths::SOCKET_DROPIN
            ));
            return Err(Fail::quiet(Exit::Usage));
        }
    }
    if listen == health::listen_address() && unit_active(&format!("{}.socket", paths::UNIT)) {
        return Ok(());
    }
    let port = listen.rsplit_once(':').map_or("", |(_, p)| p);
    let Some(ss) = find_program(&["/usr/bin/ss", "/bin/ss", "/usr/sbin/ss", "/sbin/ss"]) else {
        return Ok(());
    };
    let filter = format!("sport = :{port}");
    let out = run_root(ss, &["-Hltnp", &filter], Duration::from_secs(10))?;
    let users: String = out.stdout.lines().take(3).collect::<Vec<_>>().join("\n");
    if !users.is_empty() && !only_ours(&users, &unit_property(paths::UNIT, "MainPID")) {
        let shown = printable(users.as_bytes(), 300);
        warn(&format!(
            "port {port} is taken on this host (ss -ltnp: {shown}); choose another LISTEN= or stop what uses it (nothing changed)"
        ));
        return Err(Fail::quiet(Exit::Usage));
    }
    Ok(())
}

/// The two drop-ins for `listen`: tribist.socket's (the one place the address is set) and
/// the service's (the server's fallback when started without the socket).
pub fn dropins(listen: &str) -> (String, String) {
    (
        format!("# Written by make install (LISTEN={listen}); the one place the address is set.\n[Socket]\nListenStream=\nListenStream={listen}\n"),
        format!("# Written by make install with listen.conf: where the server listens if started without the socket.\n[Service]\nEnvironment=TRIBIST_LISTEN={listen}\n"),
    )
}

/// Writes both drop-ins (root's, 0644, atomically; their directories are the layout's).
pub fn write_listen(listen: &str) -> Result<()> {
    let (socket, service) = dropins(listen);
    for (path, text) in [
        (paths::SOCKET_DROPIN, socket),
        (paths::SERVICE_DROPIN, service),
    ] {
        let p = std::path::Path::new(path);
        let dir = Dir::open(p.parent().expect("a drop-in has a directory"))
            .map_err(|e| Fail::failed(format!("{e}; make install puts the layout right")))?;
        fsx::write_atomic_at(&dir, "listen.conf", text.as_bytes(), 0o644, Some((0, 0)))
            .map_err(|e| Fail::failed(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_to_set() {
        assert_eq!(
            wanted_listen(Some("0.0.0.0:9000"), Some("ListenStream=1.2.3.4:5")),
            "0.0.0.0:9000"
        );
        let (dropin, _) = dropins("127.0.0.1:9001");
        assert_eq!(wanted_listen(None, Some(&dropin)), "127.0.0.1:9001");
        assert_eq!(wanted_listen(None, None), paths::DEFAULT_LISTEN);
        assert_eq!(
            wanted_listen(None, Some("ListenStream=\nListenStream=localhost:1\n")),
            paths::DEFAULT_LISTEN
        );
        assert_eq!(
            wanted_listen(None, Some("ListenStream=[::1]:80\nListenStream=\n")),
            "[::1]:80"
        );
    }

    #[test]
    fn listeners_of_ours_and_of_others() {
        let systemd = r#"LISTEN 0 4096 127.0.0.1:8383 0.0.0.0:* users:(("systemd",pid=1,fd=52),("server",pid=812,fd=3))"#;
        assert!(only_ours(systemd, "812"));
        assert!(!only_ours(systemd, "0"));
        let sshd = r#"LISTEN 0 128 0.0.0.0:22 0.0.0.0:* users:(("sshd",pid=401,fd=3))"#;
        assert!(!only_ours(sshd, "812"));
        assert!(!only_ours("LISTEN 0 128 0.0.0.0:22 0.0.0.0:*", "812"));
        assert!(!only_ours(r#"users:(("x",pid=11,fd=3))"#, "1"));
    }

    #[test]
    fn the_dropins_say_the_same_address() {
        let (socket, service) = dropins("[::1]:8383");
        assert!(socket.contains("\n[Socket]\nListenStream=\nListenStream=[::1]:8383\n"));
        assert!(service.ends_with("\n[Service]\nEnvironment=TRIBIST_LISTEN=[::1]:8383\n"));
    }
}
