//! What the host is in: `status` (one line, then details), `summary` (the line alone, one per
//! host for `make status HOSTS=…`), `serving` (the releaseId `/health` reports) and `releases`
//! (the kept releases, listed by `tribist-host releases list` as tribist).
//!
//! Why apart: the judgement — healthy, stopped, unhealthy, not installed — is [`judge`], a
//! pure function of what was observed (the unit file, the service's and the socket's states,
//! the installed release, `/health`'s code and body), tested by a table; gathering the
//! observations is [`observe`]. remote.sh and the e2e tests read the line's exact form
//! (`healthy release=ID health=200 up=ETIME listen=ADDR`, `stopped …`, `unhealthy …: why`,
//! `not installed (…)`) and its exit code (0, 5, 6, 7).
//!
//! With a front door (issue 19), [`with_front`] adds its marker (` front=https://D`, and
//! ` cert=Nd` under 14 days left) and makes a healthy service behind a front clients cannot
//! get through (Caddy stopped, no TLS answer, an expired certificate) unhealthy: exit 7, as
//! the API is out of their reach; `status` prints the front's lines
//! (`host::front_report`) under the details.
//!
//! A stopped service is never asked `/health`: with its socket listening, asking would start
//! it ([`asks_health`]).

use std::time::Duration;

use super::health::{self, Health};
use super::{interrupt, paths, Exit, Fail, Result};
use crate::host::child::ExitKind;
use crate::host::front_host;
use crate::host::front_report::{self, Report};
use crate::host::text::{clean, printable};

/// The host's state as `status` and `summary` say it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Running, `/health` 200, on the installed release.
    Healthy,
    /// No unit file.
    NotInstalled,
    /// Inactive, or failed with its socket not listening.
    Stopped,
    /// Anything else: starting, stopping, `/health` not 200, another release serving.
    Unhealthy,
}

impl Verdict {
    pub fn exit(self) -> Exit {
        match self {
            Verdict::Healthy => Exit::Ok,
            Verdict::NotInstalled => Exit::NotInstalled,
            Verdict::Stopped => Exit::Stopped,
            Verdict::Unhealthy => Exit::Unhealthy,
        }
    }
}

/// What was seen of the service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Whether `/etc/systemd/system/tribist.service` exists.
    pub unit_file: bool,
    /// The release `api/server` reports, if it runs and says one.
    pub installed: Option<String>,
    /// `ActiveState` of the service and of its socket (`unknown` when systemctl failed).
    pub service: String,
    pub socket: String,
    /// The address the socket listens on.
    pub listen: String,
    /// `/health`'s answer; asked only when [`asks_health`] says so.
    pub health: Option<Health>,
    /// How long the main process has run (`ps`'s etime form), if known.
    pub age: Option<String>,
}

/// Whether the service, in `service` state, is asked `/health` (a stopped one is not: with
/// its socket listening that would start it).
pub fn asks_health(service: &str) -> bool {
    matches!(service, "active" | "reloading")
}

/// Whether a service in `service` state with its socket in `socket` state is stopped:
/// inactive, or failed with nothing to restart it (Restart=always never gives up, so a failed
/// service was stopped, not cleanly: a handed-over process can end in SIGKILL).
pub fn is_stopped(service: &str, socket: &str) -> bool {
    service == "inactive" || (service == "failed" && socket != "active")
}

/// The verdict and its one line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub verdict: Verdict,
    pub line: String,
}

fn or<'a>(s: &'a str, default: &'a str) -> &'a str {
    if s.is_empty() {
        default
    } else {
        s
    }
}

/// `/health`'s code as deploy.sh printed curl's: three digits, `000` when nothing answered.
pub fn code3(code: u16) -> String {
    format!("{code:03}")
}

/// The reason a failing `/health` gives: the text of the last `"output":"…"` on the first
/// line of `body` that has one (as deploy.sh's sed took it).
pub fn health_output(body: &str) -> Option<&str> {
    const KEY: &str = "\"output\":\"";
    body.lines().find_map(|line| {
        let mut from = line.len();
        // The last occurrence whose text is closed by a quote (sed's greedy `.*` first).
        while let Some(i) = line[..from].rfind(KEY) {
            let rest = &line[i + KEY.len()..];
            if let Some(end) = rest.find('"') {
                return Some(&rest[..end]);
            }
            from = i;
        }
        None
    })
}

/// The judgement, from what was observed.
pub fn judge(o: &Observed) -> Summary {
    let listen = &o.listen;
    if !o.unit_file {
        return Summary {
            verdict: Verdict::NotInstalled,
            line: format!("not installed (no {}; make install)", paths::UNIT_FILE),
        };
    }
    let installed = o.installed.as_deref().unwrap_or("none");
    let (service, socket) = (o.service.as_str(), o.socket.as_str());
    if is_stopped(service, socket) {
        return Summary {
            verdict: Verdict::Stopped,
            line: format!(
                "stopped release={installed} service={service} socket={} listen={listen}",
                or(socket, "unknown")
            ),
        };
    }
    if !asks_health(service) {
        return Summary {
            verdict: Verdict::Unhealthy,
            line: format!(
                "unhealthy release={installed} service={} listen={listen}: the service is {}",
                or(service, "unknown"),
                or(service, "in an unknown state")
            ),
        };
    }
    let none = Health {
        code: 0,
        body: String::new(),
    };
    let h = o.health.as_ref().unwrap_or(&none);
    let age = o.age.as_deref().unwrap_or("-");
    let serving: Option<String> = h.release().map(|r| r.chars().take(64).collect());
    if h.code == 200 && o.installed.is_some() && serving.as_deref() == o.installed.as_deref() {
        return Summary {
            verdict: Verdict::Healthy,
            line: format!("healthy release={installed} health=200 up={age} listen={listen}"),
        };
    }
    let why = match h.code {
        0 => format!("/health does not answer on {listen}"),
        200 => format!(
            "serving release {}, not the installed {installed}",
            serving.as_deref().unwrap_or("unknown")
        ),
        _ => health_output(&h.body).unwrap_or("").to_string(),
    };
    Summary {
        verdict: Verdict::Unhealthy,
        line: format!(
            "unhealthy release={installed} health={} up={age} listen={listen}: {}",
            code3(h.code),
            clean(why.as_bytes(), 200)
        ),
    }
}

/// Whether `out` (a `releases version` answer) is a release id: one line of
/// `[A-Za-z0-9._+-]`, 1 to 64 long.
pub fn release_id(out: &str) -> Option<String> {
    let id = out.strip_suffix('\n').unwrap_or(out);
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b));
    ok.then(|| id.to_string())
}

/// The release binary `name` in api/ reports (`tribist-host releases version NAME`, as
/// tribist), if it runs and says one.
pub fn release_of(name: &str) -> Option<String> {
    let out = super::releases(&["version", name]).ok()?;
    if out.status != ExitKind::Exited(0) {
        return None;
    }
    release_id(&out.stdout)
}

/// `KEY=VALUE` lines of `systemctl show`, the value of `key` (empty if absent).
pub fn show_value<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .unwrap_or("")
}

/// `systemctl show -p NAME… UNIT` in one call, bounded; empty when it fails.
fn show(unit: &str, props: &[&str]) -> Option<String> {
    let mut args = vec!["show", unit];
    for p in props {
        args.push("-p");
        args.push(p);
    }
    let out = crate::host::child::Spawn::new("/usr/bin/systemctl")
        .args(&args)
        .run(Duration::from_secs(10), 64 * 1024)
        .ok()?;
    (out.status == ExitKind::Exited(0)).then_some(out.stdout)
}

/// A state word from systemctl, fit to print.
fn word(s: &str) -> String {
    clean(s.as_bytes(), 40).replace(' ', "")
}

/// Elapsed time in `ps -o etime` form: `[[DD-]HH:]MM:SS`.
pub fn etime(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    match (d, h) {
        (0, 0) => format!("{m:02}:{s:02}"),
        (0, _) => format!("{h:02}:{m:02}:{s:02}"),
        _ => format!("{d}-{h:02}:{m:02}:{s:02}"),
    }
}

/// The start of process `pid`, in clock ticks after boot (`/proc/PID/stat`'s 22nd field,
/// counted after the command name, which may hold spaces and parentheses).
pub fn start_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(") ")?;
    // rest starts at field 3 (state): field 22 is its 20th word.
    rest.split(' ').nth(19)?.parse().ok()
}

/// How long process `pid` has run, as `ps -o etime` says it.
pub fn process_age(pid: u32) -> Option<String> {
    if pid == 0 {
        return None;
    }
    let read = |p: &str| -> Option<String> {
        let f = std::fs::File::open(p).ok()?;
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::Read::take(f, 4096), &mut s).ok()?;
        Some(s)
    };
    let started = start_ticks(&read(&format!("/proc/{pid}/stat"))?)?;
    let uptime: f64 = read("/proc/uptime")?.split(' ').next()?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        return None;
    }
    let age = (uptime - started as f64 / hz as f64).max(0.0);
    Some(etime(age as u64))
}

fn interrupted() -> Result<()> {
    if interrupt::interrupted() {
        return Err(Fail::quiet(Exit::Interrupted));
    }
    Ok(())
}

/// Observes the service, asking `/health` only when it runs.
pub fn observe() -> Result<Observed> {
    let mut o = Observed {
        unit_file: std::path::Path::new(paths::UNIT_FILE).exists(),
        listen: health::listen_address(),
        ..Observed::default()
    };
    if !o.unit_file {
        return Ok(o);
    }
    o.installed = release_of("server");
    interrupted()?;
    let state = |unit: &str| {
        show(unit, &["ActiveState"])
            .map(|t| word(show_value(&t, "ActiveState")))
            .unwrap_or_else(|| "unknown".into())
    };
    o.service = state(paths::UNIT);
    o.socket = state(&format!("{}.socket", paths::UNIT));
    interrupted()?;
    if asks_health(&o.service) {
        let pid = show(paths::UNIT, &["MainPID"])
            .and_then(|t| show_value(&t, "MainPID").parse().ok())
            .unwrap_or(0);
        o.age = process_age(pid);
        o.health = Some(health::fetch_at(&o.listen, Duration::from_secs(5)));
        interrupted()?;
    }
    Ok(o)
}

/// The service's judgement with the front's: its marker on the line (before a `: why`), and
/// a healthy service behind a front clients cannot get through is unhealthy (exit 7), since
/// they cannot reach the API; the why names the front.
pub fn with_front(s: Summary, front: &Report) -> Summary {
    if s.verdict == Verdict::NotInstalled {
        return s;
    }
    if let (Verdict::Healthy, Some(why)) = (s.verdict, &front.broken) {
        let rest = s.line.strip_prefix("healthy").unwrap_or(&s.line);
        return Summary {
            verdict: Verdict::Unhealthy,
            line: format!("unhealthy{rest}{}: {why}", front.marker),
        };
    }
    let line = match s.line.split_once(": ") {
        Some((head, why)) => format!("{head}{}: {why}", front.marker),
        None => format!("{}{}", s.line, front.marker),
    };
    Summary { line, ..s }
}

/// The front's report now (nothing without a unit: not installed says it all); `host` is
/// the deployer's name for this host, for the commands it names.
fn front_now(o: &Observed, host: &str) -> Report {
    if !o.unit_file {
        return Report::default();
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    front_report::report(&front_host::observe_front(), now, host)
}

/// `summary`: the one line, and its exit code.
pub fn cmd_summary() -> Result<Exit> {
    let o = observe()?;
    let front = front_now(&o, "HOST");
    interrupted()?;
    let s = with_front(judge(&o), &front);
    println!("{}", s.line);
    Ok(s.verdict.exit())
}

/// `status`: the line, then what a person looks at next.
pub fn cmd_status(host: Option<&str>) -> Result<Exit> {
    let mut o = observe()?;
    let front = front_now(&o, host.unwrap_or("HOST"));
    interrupted()?;
    let s = with_front(judge(&o), &front);
    println!("{}", s.line);
    if s.verdict == Verdict::NotInstalled {
        return Ok(s.verdict.exit());
    }
    let props = show(
        paths::UNIT,
        &[
            "ActiveState",
            "SubState",
            "MainPID",
            "NRestarts",
            "ExecMainStartTimestamp",
        ],
    )
    .unwrap_or_default();
    let v = |k: &str| clean(show_value(&props, k).as_bytes(), 100);
    println!(
        "  service: {} ({}), pid {}, started {}, restarts {}",
        v("ActiveState"),
        v("SubState"),
        v("MainPID"),
        or(&v("ExecMainStartTimestamp"), "-"),
        v("NRestarts")
    );
    println!(
        "  socket: {}, {} (make install LISTEN=ADDR:PORT changes it)",
        o.socket, o.listen
    );
    interrupted()?;
    let prev =
        release_of("server.prev").unwrap_or_else(|| "none (nothing to roll back to yet)".into());
    println!(
        "  installed release: {}; previous: {prev}",
        o.installed.as_deref().unwrap_or("none")
    );
    if s.verdict != Verdict::Stopped {
        // The answer the line judged, not a second one that may differ from it.
        let h = o
            .health
            .get_or_insert_with(|| health::fetch_at(&o.listen, Duration::from_secs(5)));
        let text = format!("{} (HTTP {})", h.body, code3(h.code));
        println!("  health: {}", printable(text.as_bytes(), 600));
    }
    for l in &front.lines {
        println!("{l}");
    }
    Ok(s.verdict.exit())
}

/// `serving`: the releaseId `/health` reports now (exit 1, saying nothing, when nothing
/// answers; nothing printed when the answer names no release).
pub fn cmd_serving() -> Result<Exit> {
    let h = health::fetch();
    if let Some(r) = h.release() {
        println!("{r}");
    }
    if h.code == 0 {
        return Err(Fail::quiet(Exit::Failed));
    }
    Ok(Exit::Ok)
}

/// `releases`: `tribist-host releases list`, as tribist.
pub fn cmd_releases() -> Result<Exit> {
    let out = super::releases(&["list"])?;
    print!("{}", out.stdout);
    eprint!("{}", out.stderr);
    match out.status {
        ExitKind::Exited(0) => Ok(Exit::Ok),
        ExitKind::TimedOut => Err(Fail::failed(
            "listing the releases (tribist-host releases list, as tribist) did not finish within 15 s; make status shows what serves",
        )),
        other => Err(Fail::failed(format!(
            "listing the releases failed ({other}); make install HOST=… puts the host program in place"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(service: &str, socket: &str, health: Option<(u16, &str)>) -> Observed {
        Observed {
            unit_file: true,
            installed: Some("abc123".into()),
            service: service.into(),
            socket: socket.into(),
            listen: "127.0.0.1:8383".into(),
            health: health.map(|(code, body)| Health {
                code,
                body: body.into(),
            }),
            age: Some("01:02:03".into()),
        }
    }

    const PASS: &str = r#"{"status":"pass","releaseId":"abc123","version":"0.1.0"}"#;
    const OTHER: &str = r#"{"status":"pass","releaseId":"def456"}"#;
    const FAIL: &str = r#"{"status":"fail","releaseId":"abc123","checks":{"database":[{"status":"fail","output":"first"},{"status":"fail","output":"connection refused"}]}}"#;

    /// Every case of the judgement: the line exactly as remote.sh and the tests read it, and
    /// the exit code.
    #[test]
    fn the_judgement_table() {
        let not_installed = Observed {
            listen: "127.0.0.1:8383".into(),
            ..Observed::default()
        };
        let mut unknown_installed = obs("active", "active", Some((200, PASS)));
        unknown_installed.installed = None;
        let mut no_age = obs("active", "active", Some((200, PASS)));
        no_age.age = None;
        let cases: Vec<(Observed, Verdict, &str)> = vec![
            (
                not_installed,
                Verdict::NotInstalled,
                "not installed (no /etc/systemd/system/tribist.service; make install)",
            ),
            (
                obs("active", "active", Some((200, PASS))),
                Verdict::Healthy,
                "healthy release=abc123 health=200 up=01:02:03 listen=127.0.0.1:8383",
            ),
            (
                obs("reloading", "active", Some((200, PASS))),
                Verdict::Healthy,
                "healthy release=abc123 health=200 up=01:02:03 listen=127.0.0.1:8383",
            ),
            (
                no_age,
                Verdict::Healthy,
                "healthy release=abc123 health=200 up=- listen=127.0.0.1:8383",
            ),
            (
                obs("inactive", "inactive", None),
                Verdict::Stopped,
                "stopped release=abc123 service=inactive socket=inactive listen=127.0.0.1:8383",
            ),
            // Stopped with its socket listening (systemctl stop tribist): still stopped.
            (
                obs("inactive", "active", None),
                Verdict::Stopped,
                "stopped release=abc123 service=inactive socket=active listen=127.0.0.1:8383",
            ),
            // A failed service with its socket stopped counts as stopped.
            (
                obs("failed", "inactive", None),
                Verdict::Stopped,
                "stopped release=abc123 service=failed socket=inactive listen=127.0.0.1:8383",
            ),
            (
                obs("failed", "", None),
                Verdict::Stopped,
                "stopped release=abc123 service=failed socket=unknown listen=127.0.0.1:8383",
            ),
            // Failed with the socket active: the next connection starts it; not stopped.
            (
                obs("failed", "active", None),
                Verdict::Unhealthy,
                "unhealthy release=abc123 service=failed listen=127.0.0.1:8383: the service is failed",
            ),
            (
                obs("activating", "active", None),
                Verdict::Unhealthy,
                "unhealthy release=abc123 service=activating listen=127.0.0.1:8383: the service is activating",
            ),
            (
                obs("", "active", None),
                Verdict::Unhealthy,
                "unhealthy release=abc123 service=unknown listen=127.0.0.1:8383: the service is in an unknown state",
            ),
            (
                obs("active", "active", Some((503, FAIL))),
                Verdict::Unhealthy,
                "unhealthy release=abc123 health=503 up=01:02:03 listen=127.0.0.1:8383: connection refused",
            ),
            (
                obs("active", "active", Some((0, "no answer"))),
                Verdict::Unhealthy,
                "unhealthy release=abc123 health=000 up=01:02:03 listen=127.0.0.1:8383: /health does not answer on 127.0.0.1:8383",
            ),
            (
                obs("active", "active", Some((200, OTHER))),
                Verdict::Unhealthy,
                "unhealthy release=abc123 health=200 up=01:02:03 listen=127.0.0.1:8383: serving release def456, not the installed abc123",
            ),
            (
                obs("active", "active", Some((200, r#"{"status":"pass"}"#))),
                Verdict::Unhealthy,
                "unhealthy release=abc123 health=200 up=01:02:03 listen=127.0.0.1:8383: serving release unknown, not the installed abc123",
            ),
            // An installed binary that says no release: never healthy, even if the server
            // claims the id "none".
            (
                unknown_installed,
                Verdict::Unhealthy,
                "unhealthy release=none health=200 up=01:02:03 listen=127.0.0.1:8383: serving release abc123, not the installed none",
            ),
            (
                obs("active", "active", Some((500, "{}"))),
                Verdict::Unhealthy,
                "unhealthy release=abc123 health=500 up=01:02:03 listen=127.0.0.1:8383: ",
            ),
        ];
        for (o, verdict, line) in cases {
            let s = judge(&o);
            assert_eq!((s.verdict, s.line.as_str()), (verdict, line), "{o:?}");
        }
        assert_eq!(Verdict::Healthy.exit() as u8, 0);
        assert_eq!(Verdict::NotInstalled.exit() as u8, 5);
        assert_eq!(Verdict::Stopped.exit() as u8, 6);
        assert_eq!(Verdict::Unhealthy.exit() as u8, 7);
    }

    #[test]
    fn the_front_on_the_line_and_in_the_exit_code() {
        let serving = Report {
            marker: " front=https://api.example.test".into(),
            lines: vec![],
            broken: None,
        };
        let down = Report {
            broken: Some(
                "the front https://api.example.test is down (caddy.service is not active)".into(),
            ),
            ..serving.clone()
        };
        let healthy = || judge(&obs("active", "active", Some((200, PASS))));
        let s = with_front(healthy(), &serving);
        assert_eq!(
            (s.verdict, s.line.as_str()),
            (
                Verdict::Healthy,
                "healthy release=abc123 health=200 up=01:02:03 listen=127.0.0.1:8383 front=https://api.example.test"
            )
        );
        // Without a front the line is as it always was.
        assert_eq!(with_front(healthy(), &Report::default()), healthy());
        // A front clients cannot get through: unhealthy, exit 7, the why names it.
        let s = with_front(healthy(), &down);
        assert_eq!(
            (s.verdict, s.line.as_str()),
            (
                Verdict::Unhealthy,
                "unhealthy release=abc123 health=200 up=01:02:03 listen=127.0.0.1:8383 front=https://api.example.test: the front https://api.example.test is down (caddy.service is not active)"
            )
        );
        assert_eq!(s.verdict.exit() as u8, 7);
        // An unhealthy or stopped service keeps its own why; the marker goes before it.
        let s = with_front(judge(&obs("active", "active", Some((503, FAIL)))), &down);
        assert_eq!(
            s.line,
            "unhealthy release=abc123 health=503 up=01:02:03 listen=127.0.0.1:8383 front=https://api.example.test: connection refused"
        );
        let s = with_front(judge(&obs("inactive", "active", None)), &down);
        assert_eq!(
            (s.verdict, s.line.as_str()),
            (
                Verdict::Stopped,
                "stopped release=abc123 service=inactive socket=active listen=127.0.0.1:8383 front=https://api.example.test"
            )
        );
        let none = judge(&Observed::default());
        assert_eq!(with_front(none.clone(), &down), none);
    }

    #[test]
    fn only_a_running_service_is_asked() {
        for (service, socket, stopped, asked) in [
            ("active", "active", false, true),
            ("reloading", "active", false, true),
            ("inactive", "active", true, false),
            ("failed", "inactive", true, false),
            ("failed", "active", false, false),
            ("activating", "active", false, false),
            ("deactivating", "active", false, false),
        ] {
            assert_eq!(is_stopped(service, socket), stopped, "{service} {socket}");
            assert_eq!(asks_health(service), asked, "{service}");
        }
    }

    #[test]
    fn a_hostile_health_body_cannot_forge_the_line() {
        let body = format!(
            "{{\"releaseId\":\"abc123\",\"output\":\"\u{1b}]0;x\u{7}{}\nhealthy release=abc123\"}}",
            "y".repeat(500)
        );
        let s = judge(&obs("active", "active", Some((503, &body))));
        assert_eq!(s.verdict, Verdict::Unhealthy);
        let why = s.line.split_once(": ").unwrap().1;
        assert!(why.len() <= 200, "{}", why.len());
        assert!(!s.line.contains('\u{1b}') && !s.line.contains('\n'));
    }

    #[test]
    fn the_reason_in_a_health_body() {
        assert_eq!(health_output(FAIL), Some("connection refused"));
        assert_eq!(health_output(r#"{"output":"a"}"#), Some("a"));
        assert_eq!(health_output(r#"{"output":"unclosed"#), None);
        assert_eq!(
            health_output("no\n{\"output\":\"second line\"}"),
            Some("second line")
        );
        assert_eq!(health_output("{}"), None);
    }

    #[test]
    fn release_ids() {
        assert_eq!(release_id("abc-1.2+x\n").as_deref(), Some("abc-1.2+x"));
        assert_eq!(release_id("abc").as_deref(), Some("abc"));
        assert_eq!(release_id(""), None);
        assert_eq!(release_id("a b\n"), None);
        assert_eq!(release_id("a\nb\n"), None);
        assert_eq!(release_id(&"a".repeat(65)), None);
        assert_eq!(release_id(&"a".repeat(64)).map(|r| r.len()), Some(64));
    }

    #[test]
    fn elapsed_as_ps_says_it() {
        assert_eq!(etime(0), "00:00");
        assert_eq!(etime(62), "01:02");
        assert_eq!(etime(3723), "01:02:03");
        assert_eq!(etime(86_400 + 3723), "1-01:02:03");
        assert_eq!(etime(12 * 86_400), "12-00:00:00");
    }

    #[test]
    fn process_start_and_age() {
        let stat = "812 (a b) c) S 1 812 812 0 -1 4194560 1 0 0 0 5 6 0 0 20 0 3 0 987654 1000 10";
        assert_eq!(start_ticks(stat), Some(987_654));
        assert_eq!(start_ticks("garbage"), None);
        // This test process: a few seconds old at most, in mm:ss form.
        let age = process_age(std::process::id()).expect("own age");
        assert!(age.len() == 5 && age.starts_with("0"), "{age}");
        assert_eq!(process_age(0), None);
    }

    #[test]
    fn systemctl_show_values() {
        let t = "ActiveState=active\nSubState=running\nMainPID=812\nExecMainStartTimestamp=\n";
        assert_eq!(show_value(t, "ActiveState"), "active");
        assert_eq!(show_value(t, "MainPID"), "812");
        assert_eq!(show_value(t, "ExecMainStartTimestamp"), "");
        assert_eq!(show_value(t, "Sub"), "");
        assert_eq!(show_value(t, "NRestarts"), "");
    }
}
