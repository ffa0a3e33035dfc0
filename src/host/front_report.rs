//! What `make status` says of the HTTPS front door (issue 19): the lines under the service's
//! details, the short marker on the host's one line, and whether clients cannot reach the API
//! through it — all a pure function ([`report`]) of what was seen on the host ([`Seen`],
//! gathered by `front_host::observe_front`) and of the time now.
//!
//! Why apart from `front_plan`: those are the decisions of `front apply|remove`; these are a
//! person's view of a running front (the certificate's expiry in days, the one command that
//! fixes what is wrong), read by the e2e tests in their exact form.

use super::front_plan::{Answer, Served};
use super::text::clean;

/// A certificate with fewer days left than this gets a WARN: Caddy renews an ACME
/// certificate when a third of its life is left (30 days of Let's Encrypt's 90), so under 14
/// its renewals have been failing for two weeks; a team's own certificate is theirs to renew.
pub const WARN_DAYS: i64 = 14;

/// The front as seen on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// No site of tribist's: the Caddyfile does not import one, and root found none.
    None,
    /// The Caddyfile imports tribist's site, which this user may not read (it is root's and
    /// caddy's: tribist runs `make status` without sudo).
    Unreadable,
    Configured(Front),
}

/// A configured front: what its site says and what it answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Front {
    pub domain: String,
    /// The service's address the site proxies to.
    pub upstream: Option<String>,
    /// Whether the site names the team's own certificate (CERT_FILE) rather than ACME.
    pub own_cert: bool,
    /// Whether /etc/caddy/Caddyfile imports the site.
    pub imported: bool,
    /// Whether caddy.service is active.
    pub active: bool,
    /// What `https://DOMAIN/health` on loopback answered; None when not asked (Caddy stopped).
    pub answer: Option<Answer>,
    pub served: Served,
}

/// What `make status` says of the front.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Appended to the host's one line ("" without a front).
    pub marker: String,
    /// Printed under the service's details, each indented as they are.
    pub lines: Vec<String>,
    /// Why clients cannot reach the API through the front, when they cannot.
    pub broken: Option<String>,
}

/// The time (seconds since the epoch) of a date as curl prints a certificate's
/// (`Dec 17 02:33:19 2026 GMT`, `Mar  7 04:45:19 2027 GMT`).
pub fn curl_date(s: &str) -> Option<i64> {
    let w: Vec<&str> = s.split_whitespace().collect();
    let [mon, day, time, year, "GMT"] = w.as_slice() else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m = MONTHS.iter().position(|x| x == mon)? as i64 + 1;
    let d: i64 = day.parse().ok().filter(|d| (1..=31).contains(d))?;
    let y: i64 = year.parse().ok().filter(|y| (1970..=9999).contains(y))?;
    let hms: Vec<i64> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [h, mi, sec] = hms.as_slice() else {
        return None;
    };
    if !(0..24).contains(h) || !(0..60).contains(mi) || !(0..61).contains(sec) {
        return None;
    }
    Some(crate::host::civil::days_from_civil(y, m, d) * 86_400 + h * 3600 + mi * 60 + sec)
}

/// `YYYY-MM-DD` of a time since the epoch.
fn ymd(t: i64) -> String {
    let (y, m, d) = crate::host::civil::civil_from_days(t.div_euclid(86_400));
    format!("{y:04}-{m:02}-{d:02}")
}

/// Whole days from `now` to `until` (negative once past).
pub fn days_left(until: i64, now: i64) -> i64 {
    (until - now).div_euclid(86_400)
}

/// The one fix for a certificate close to its end.
fn renew_fix(f: &Front, host: &str) -> String {
    if f.own_cert {
        format!(
            "fix: renew the team's certificate, then make install HOST={host} DOMAIN={} CERT_FILE=cert.pem KEY_FILE=key.pem",
            f.domain
        )
    } else {
        "fix: Caddy renews it by itself and has not managed to: on the host, journalctl -u caddy --no-pager | grep -E 'tls|acme' says why (the CA must reach this host on 80 and 443)".into()
    }
}

/// What `make status` says of the front `seen`, at time `now` (seconds since the epoch);
/// `host` is the deployer's name for the host, for the commands it names (printable ASCII:
/// the deployer drops anything else).
pub fn report(seen: &Seen, now: i64, host: &str) -> Report {
    let f = match seen {
        Seen::None => {
            return Report {
                marker: String::new(),
                lines: vec![format!(
                    "  front: none (the service is reached on its address alone; make install HOST={host} DOMAIN=api.example.com puts HTTPS in front)"
                )],
                broken: None,
            }
        }
        Seen::Unreadable => {
            return Report {
                marker: " front=?".into(),
                lines: vec![
                    "  front: configured, but its site is root's to read: make status as root or a user with sudo shows it".into(),
                ],
                broken: None,
            }
        }
        Seen::Configured(f) => f,
    };
    let d = &f.domain;
    let url = format!("https://{d}");
    let upstream = f.upstream.as_deref().unwrap_or("?");
    let mut r = Report {
        marker: format!(" front={url}"),
        ..Report::default()
    };
    if !f.imported {
        r.lines.push(format!(
            "  WARN front: /etc/caddy/Caddyfile does not import tribist's site for {d}; fix: make install HOST={host} DOMAIN={d}"
        ));
    }
    if !f.active {
        r.lines.push(format!(
            "  front: {url} -> {upstream}, caddy.service not active"
        ));
        r.lines.push(format!(
            "  WARN front: Caddy is stopped: clients cannot reach {url}; fix (on the host): systemctl enable --now caddy"
        ));
        r.broken = Some(format!(
            "the front {url} is down (caddy.service is not active)"
        ));
        return r;
    }
    let served = &f.served;
    match f.answer {
        None | Some(Answer::NoTls(_)) => {
            let how = match f.answer {
                Some(Answer::NoTls(c)) => format!("curl exit {c}"),
                _ => "not asked".into(),
            };
            r.lines.push(format!(
                "  front: {url} -> {upstream}, caddy.service active, no TLS answer on 127.0.0.1:443 ({how})"
            ));
            r.lines.push(format!(
                "  WARN front: {url} does not answer (no certificate yet?): clients cannot reach it; see why (on the host): journalctl -u caddy -n 50 --no-pager | grep -E 'tls|error'"
            ));
            r.broken = Some(format!("the front {url} does not answer TLS"));
            return r;
        }
        Some(Answer::NoUpstream(code)) => {
            r.lines.push(format!(
                "  front: {url} -> {upstream}, caddy.service active, /health {code} through it: Caddy cannot reach the service"
            ));
        }
        Some(Answer::Service(code)) => {
            let version = if served.http_version.is_empty() {
                "?"
            } else {
                &served.http_version
            };
            r.lines.push(format!(
                "  front: serving {url} -> {upstream} (caddy.service active, /health {code} over HTTP/{version})"
            ));
        }
    }
    let issuer = served.issuer.as_deref().unwrap_or("unknown");
    let until = served.expires.as_deref().and_then(curl_date);
    let Some(until) = until else {
        r.lines.push(format!(
            "  certificate: issuer {issuer}, expires {}",
            served.expires.as_deref().unwrap_or("unknown")
        ));
        return r;
    };
    let days = days_left(until, now);
    let source = if f.own_cert { "the team's" } else { "ACME" };
    r.lines.push(format!(
        "  certificate: issuer {}, expires {} ({days} days left; {source})",
        clean(issuer.as_bytes(), 200),
        ymd(until)
    ));
    if until <= now {
        r.lines.push(format!(
            "  WARN certificate: expired on {}: clients refuse {url}; {}",
            ymd(until),
            renew_fix(f, host)
        ));
        r.broken = Some(format!("the front's certificate expired on {}", ymd(until)));
    } else if days < WARN_DAYS {
        r.marker.push_str(&format!(" cert={days}d"));
        r.lines.push(format!(
            "  WARN certificate: {days} days left (under {WARN_DAYS}); {}",
            renew_fix(f, host)
        ));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-07 04:45:19 UTC.
    const NOW: i64 = 1_796_618_719;

    fn front(active: bool, answer: Option<Answer>, expires: &str) -> Front {
        Front {
            domain: "api.example.test".into(),
            upstream: Some("127.0.0.1:8383".into()),
            own_cert: false,
            imported: true,
            active,
            answer,
            served: Served {
                subject: None,
                issuer: Some("CN=Pebble Intermediate CA 2d7bd4".into()),
                expires: Some(expires.into()),
                http_code: 200,
                http_version: "2".into(),
            },
        }
    }

    #[test]
    fn curl_dates() {
        assert_eq!(curl_date("Jan  1 00:00:00 1970 GMT"), Some(0));
        assert_eq!(curl_date("Dec  7 04:45:19 2026 GMT"), Some(NOW));
        assert_eq!(ymd(NOW), "2026-12-07");
        assert_eq!(
            ymd(curl_date("Feb 29 23:59:59 2028 GMT").unwrap()),
            "2028-02-29"
        );
        assert_eq!(
            ymd(curl_date("Mar  1 00:00:00 2100 GMT").unwrap()),
            "2100-03-01"
        );
        for bad in [
            "",
            "Dec 17 02:33:19 2026",
            "Dec 17 02:33:19 2026 UTC",
            "Foo 17 02:33:19 2026 GMT",
            "Dec 32 02:33:19 2026 GMT",
            "Dec 17 25:33:19 2026 GMT",
            "Dec 17 02:33 2026 GMT",
            "Dec 17 02:33:19 x GMT",
        ] {
            assert_eq!(curl_date(bad), None, "{bad}");
        }
        assert_eq!(days_left(NOW + 10 * 86_400 + 5, NOW), 10);
        assert_eq!(days_left(NOW + 86_399, NOW), 0);
        assert_eq!(days_left(NOW - 1, NOW), -1);
    }

    #[test]
    fn serving_with_a_long_lived_certificate() {
        let f = front(true, Some(Answer::Service(200)), "Mar  7 04:45:19 2027 GMT");
        let r = report(&Seen::Configured(f), NOW, "root@app1");
        assert_eq!(r.marker, " front=https://api.example.test");
        assert_eq!(r.broken, None);
        assert_eq!(
            r.lines,
            [
                "  front: serving https://api.example.test -> 127.0.0.1:8383 (caddy.service active, /health 200 over HTTP/2)",
                "  certificate: issuer CN=Pebble Intermediate CA 2d7bd4, expires 2027-03-07 (90 days left; ACME)",
            ]
        );
    }

    #[test]
    fn a_certificate_close_to_its_end_is_a_warning_not_a_failure() {
        let f = front(true, Some(Answer::Service(200)), "Dec 17 02:33:19 2026 GMT");
        let r = report(&Seen::Configured(f.clone()), NOW, "root@app1");
        assert_eq!(r.marker, " front=https://api.example.test cert=9d");
        assert_eq!(r.broken, None);
        assert_eq!(
            r.lines[1..],
            [
                "  certificate: issuer CN=Pebble Intermediate CA 2d7bd4, expires 2026-12-17 (9 days left; ACME)".to_string(),
                "  WARN certificate: 9 days left (under 14); fix: Caddy renews it by itself and has not managed to: on the host, journalctl -u caddy --no-pager | grep -E 'tls|acme' says why (the CA must reach this host on 80 and 443)".to_string(),
            ]
        );
        // The team's own certificate: theirs to renew.
        let own = Front {
            own_cert: true,
            ..f
        };
        let r = report(&Seen::Configured(own), NOW, "root@app1");
        assert_eq!(
            r.lines.last().unwrap(),
            "  WARN certificate: 9 days left (under 14); fix: renew the team's certificate, then make install HOST=root@app1 DOMAIN=api.example.test CERT_FILE=cert.pem KEY_FILE=key.pem"
        );
        // 14 days left: no warning.
        let f = front(true, Some(Answer::Service(200)), "Dec 21 04:45:19 2026 GMT");
        let r = report(&Seen::Configured(f), NOW, "root@app1");
        assert_eq!(r.marker, " front=https://api.example.test");
        assert!(!r.lines.iter().any(|l| l.contains("WARN")), "{:?}", r.lines);
    }

    #[test]
    fn an_expired_certificate_breaks_the_front() {
        let f = front(true, Some(Answer::Service(200)), "Dec  1 00:00:00 2026 GMT");
        let r = report(&Seen::Configured(f), NOW, "root@app1");
        assert_eq!(
            r.broken.as_deref(),
            Some("the front's certificate expired on 2026-12-01")
        );
        assert!(r.lines[2].starts_with(
            "  WARN certificate: expired on 2026-12-01: clients refuse https://api.example.test; fix: "
        ));
    }

    #[test]
    fn caddy_stopped_or_silent_breaks_the_front_and_names_the_fix() {
        let r = report(
            &Seen::Configured(front(false, None, "Mar  7 04:45:19 2027 GMT")),
            NOW,
            "root@app1",
        );
        assert_eq!(r.marker, " front=https://api.example.test");
        assert_eq!(
            r.broken.as_deref(),
            Some("the front https://api.example.test is down (caddy.service is not active)")
        );
        assert_eq!(
            r.lines,
            [
                "  front: https://api.example.test -> 127.0.0.1:8383, caddy.service not active",
                "  WARN front: Caddy is stopped: clients cannot reach https://api.example.test; fix (on the host): systemctl enable --now caddy",
            ]
        );
        let r = report(
            &Seen::Configured(front(true, Some(Answer::NoTls(35)), "")),
            NOW,
            "root@app1",
        );
        assert_eq!(
            r.broken.as_deref(),
            Some("the front https://api.example.test does not answer TLS")
        );
        assert_eq!(
            r.lines,
            [
                "  front: https://api.example.test -> 127.0.0.1:8383, caddy.service active, no TLS answer on 127.0.0.1:443 (curl exit 35)",
                "  WARN front: https://api.example.test does not answer (no certificate yet?): clients cannot reach it; see why (on the host): journalctl -u caddy -n 50 --no-pager | grep -E 'tls|error'",
            ]
        );
    }

    #[test]
    fn caddy_without_the_service_is_the_service_s_problem() {
        // 502 through the front: the service's own line says why; the front itself is fine.
        let r = report(
            &Seen::Configured(front(
                true,
                Some(Answer::NoUpstream(502)),
                "Mar  7 04:45:19 2027 GMT",
            )),
            NOW,
            "root@app1",
        );
        assert_eq!(r.broken, None);
        assert_eq!(
            r.lines[0],
            "  front: https://api.example.test -> 127.0.0.1:8383, caddy.service active, /health 502 through it: Caddy cannot reach the service"
        );
    }

    #[test]
    fn no_front_or_one_root_alone_may_read() {
        let r = report(&Seen::None, NOW, "root@app1");
        assert_eq!(r.marker, "");
        assert_eq!(r.broken, None);
        assert_eq!(
            r.lines,
            ["  front: none (the service is reached on its address alone; make install HOST=root@app1 DOMAIN=api.example.com puts HTTPS in front)"]
        );
        let r = report(&Seen::Unreadable, NOW, "root@app1");
        assert_eq!(r.marker, " front=?");
        assert_eq!(r.broken, None);
        // Not imported: said, with the fix.
        let mut f = front(true, Some(Answer::Service(200)), "Mar  7 04:45:19 2027 GMT");
        f.imported = false;
        let r = report(&Seen::Configured(f), NOW, "root@app1");
        assert_eq!(
            r.lines[0],
            "  WARN front: /etc/caddy/Caddyfile does not import tribist's site for api.example.test; fix: make install HOST=root@app1 DOMAIN=api.example.test"
        );
    }

    #[test]
    fn an_unreadable_date_is_shown_as_curl_said_it() {
        let r = report(
            &Seen::Configured(front(true, Some(Answer::Service(200)), "someday")),
            NOW,
            "root@app1",
        );
        assert_eq!(
            r.lines[1],
            "  certificate: issuer CN=Pebble Intermediate CA 2d7bd4, expires someday"
        );
        assert_eq!(r.broken, None);
    }
}
