//! The names and the end date of the certificate a team gives for its front (CERT_FILE), read
//! from its PEM text, so that a certificate for another name, one without subjectAltName or
//! an expired one is refused before it is installed: the front's own check reaches it with
//! `curl -k`, which accepts any certificate, while every real client would refuse it.
//!
//! Only what that takes is read, without a crate: the first CERTIFICATE block (the leaf; a
//! fullchain has more after it), a strict base64 decoder, and a walk of the DER (tags and
//! definite lengths, bounded) to the TBSCertificate's validity, subject and extensions. The
//! signature is not checked (Caddy and the clients do that); nothing here panics on any input.
//!
//! A certificate without subjectAltName is refused, not matched by its subject CN: browsers
//! (since 2017) and Go's crypto/tls (since 1.15) no longer look at the CN.

/// What a leaf certificate says about the names it is for and until when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// The subjectAltName's dNSName entries, as written (None: no subjectAltName at all).
    pub dns_names: Option<Vec<String>>,
    /// The subject's commonName, if printable: for messages only, never matched.
    pub subject_cn: Option<String>,
    /// notAfter, in seconds since 1970-01-01 UTC.
    pub not_after: i64,
}

/// At most this many bytes of DER: a leaf certificate is a few KiB.
const MAX_DER: usize = 48 * 1024;

const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11]; // 2.5.29.17
const OID_CN: &[u8] = &[0x55, 0x04, 0x03]; // 2.5.4.3

/// The leaf (first) certificate of a PEM file.
pub fn leaf(pem: &[u8]) -> Result<Leaf, String> {
    let der = first_der(pem)?;
    parse(&der).map_err(|why| format!("its first certificate is not valid DER: {why}"))
}

/// Whether one of `names` covers `domain`: the same name (letter case aside, a final dot
/// aside), or a wildcard `*.example.com` for exactly one more label (`api.example.com`, not
/// `example.com` nor `a.b.example.com`; and never `*.com`).
pub fn covers(names: &[String], domain: &str) -> bool {
    let norm = |s: &str| s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
    let domain = norm(domain);
    names.iter().any(|n| {
        let n = norm(n);
        if let Some(base) = n.strip_prefix("*.") {
            base.contains('.')
                && !base.contains('*')
                && domain
                    .split_once('.')
                    .is_some_and(|(first, rest)| !first.is_empty() && rest == base)
        } else {
            !n.contains('*') && n == domain
        }
    })
}

/// Whether the certificate file `pem` is one the front can serve for `domain` at `now` (seconds
/// since 1970 UTC). The refusal is a clause that follows "CERT_FILE=path " and says what to do.
pub fn check_for(pem: &[u8], domain: &str, now: i64) -> Result<(), String> {
    let leaf = leaf(pem).map_err(|why| format!("cannot be read as a certificate: {why}"))?;
    let Some(names) = &leaf.dns_names else {
        let cn = leaf
            .subject_cn
            .as_deref()
            .map(|c| format!(" (only its subject CN={c}, which clients no longer match)"))
            .unwrap_or_default();
        return Err(format!(
            "is a certificate without subjectAltName{cn}, so no client accepts it for DOMAIN={domain}: give one with subjectAltName DNS:{domain} (openssl req ... -addext subjectAltName=DNS:{domain})"
        ));
    };
    if !covers(names, domain) {
        let listed = if names.is_empty() {
            "no DNS name".to_string()
        } else {
            names.join(", ")
        };
        let instead = names
            .iter()
            .find(|n| !n.starts_with('*'))
            .cloned()
            .or_else(|| {
                let first = domain.split('.').next().unwrap_or("api");
                names.first().map(|n| n.replacen('*', first, 1))
            })
            .map(|n| format!(", or DOMAIN={n}"))
            .unwrap_or_default();
        return Err(format!(
            "is a certificate for {listed}, not for DOMAIN={domain}: give the certificate for {domain} (its subjectAltName){instead}"
        ));
    }
    if leaf.not_after <= now {
        return Err(format!(
            "is a certificate for {domain} that expired on {}: give a current one",
            date(leaf.not_after)
        ));
    }
    Ok(())
}

/// This machine's clock, in seconds since 1970 UTC.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `YYYY-MM-DD HH:MM UTC`.
pub fn date(t: i64) -> String {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    let (y, m, d) = crate::host::civil::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60
    )
}

// ---------------------------------------------------------------------------------------------
// PEM and base64.

fn first_der(pem: &[u8]) -> Result<Vec<u8>, String> {
    let text = std::str::from_utf8(pem).map_err(|_| "it is not text".to_string())?;
    let begin = "-----BEGIN CERTIFICATE-----";
    let end = "-----END CERTIFICATE-----";
    let start = text
        .find(begin)
        .ok_or("it has no -----BEGIN CERTIFICATE----- line")?
        + begin.len();
    let len = text[start..]
        .find(end)
        .ok_or("its first certificate has no -----END CERTIFICATE----- line")?;
    base64(&text[start..start + len])
        .map_err(|why| format!("its first certificate is not valid base64: {why}"))
}

/// Standard base64 (RFC 4648, `+/`, `=` padding only at the end), whitespace between lines
/// ignored; anything else is refused.
fn base64(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut acc: u32 = 0;
    let mut n = 0usize; // sextets in acc
    let mut pad = 0usize;
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => {
                pad += 1;
                continue;
            }
            b' ' | b'\t' | b'\r' | b'\n' => continue,
            _ => return Err(format!("it has the character {:?}", c as char)),
        };
        if pad > 0 {
            return Err("it has text after its '=' padding".into());
        }
        acc = (acc << 6) | u32::from(v);
        n += 1;
        if n == 4 {
            out.extend_from_slice(&[(acc >> 16) as u8, (acc >> 8) as u8, acc as u8]);
            acc = 0;
            n = 0;
        }
        if out.len() > MAX_DER {
            return Err(format!("it is longer than {MAX_DER} bytes"));
        }
    }
    match (n, pad) {
        (0, 0) => {}
        (2, 2) if acc & 0xf == 0 => out.push((acc >> 4) as u8),
        (3, 1) if acc & 0x3 == 0 => {
            out.extend_from_slice(&[(acc >> 10) as u8, (acc >> 2) as u8]);
        }
        _ => return Err("its length or padding is wrong".into()),
    }
    if out.is_empty() {
        return Err("it is empty".into());
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// DER.

/// One tag-length-value: its tag byte and its contents.
struct Tlv<'a> {
    tag: u8,
    body: &'a [u8],
}

/// The first TLV of `input`, and what follows it.
fn tlv(input: &[u8]) -> Result<(Tlv<'_>, &[u8]), String> {
    let (&tag, rest) = input.split_first().ok_or("it ends where a value was due")?;
    if tag & 0x1f == 0x1f {
        return Err(format!("it has a multi-byte tag (0x{tag:02x})"));
    }
    let (&l0, mut rest) = rest.split_first().ok_or("it ends inside a length")?;
    let len = match l0 {
        0x00..=0x7f => usize::from(l0),
        0x80 => return Err("it has an indefinite length (not DER)".into()),
        0x81..=0x83 => {
            let k = usize::from(l0 & 0x7f);
            if rest.len() < k {
                return Err("it ends inside a length".into());
            }
            let len = rest[..k]
                .iter()
                .fold(0usize, |a, b| (a << 8) | usize::from(*b));
            rest = &rest[k..];
            len
        }
        _ => return Err("it has a length longer than 16 MiB".into()),
    };
    if len > rest.len() {
        return Err(format!(
            "a value of {len} bytes has only {} left",
            rest.len()
        ));
    }
    let (body, rest) = rest.split_at(len);
    Ok((Tlv { tag, body }, rest))
}

/// The first TLV of `input`, which must have tag `tag` (`what` names it in the error).
fn expect<'a>(input: &'a [u8], tag: u8, what: &str) -> Result<(Tlv<'a>, &'a [u8]), String> {
    let (t, rest) = tlv(input).map_err(|e| format!("{what}: {e}"))?;
    if t.tag != tag {
        return Err(format!(
            "{what}: tag 0x{:02x} where 0x{tag:02x} was due",
            t.tag
        ));
    }
    Ok((t, rest))
}

fn parse(der: &[u8]) -> Result<Leaf, String> {
    let (cert, _) = expect(der, 0x30, "the certificate")?;
    let (tbs, _) = expect(cert.body, 0x30, "the TBSCertificate")?;
    let mut r = tbs.body;
    if r.first() == Some(&0xa0) {
        r = expect(r, 0xa0, "the version")?.1;
    }
    r = expect(r, 0x02, "the serial number")?.1;
    r = expect(r, 0x30, "the signature algorithm")?.1;
    r = expect(r, 0x30, "the issuer")?.1;
    let (validity, rest) = expect(r, 0x30, "the validity")?;
    let (subject, rest) = expect(rest, 0x30, "the subject")?;
    r = expect(rest, 0x30, "the public key")?.1;

    let not_before = tlv(validity.body).map_err(|e| format!("notBefore: {e}"))?.1;
    let (na, _) = tlv(not_before).map_err(|e| format!("notAfter: {e}"))?;
    let not_after = time(&na).map_err(|e| format!("notAfter: {e}"))?;

    let mut dns_names = None;
    while !r.is_empty() {
        let (t, rest) = tlv(r).map_err(|e| format!("after the public key: {e}"))?;
        r = rest;
        match t.tag {
            0x81 | 0x82 => {} // issuer and subject unique IDs
            0xa3 => dns_names = san(t.body)?,
            other => return Err(format!("unexpected tag 0x{other:02x} after the public key")),
        }
    }
    Ok(Leaf {
        dns_names,
        subject_cn: common_name(subject.body),
        not_after,
    })
}

/// The dNSName entries of the subjectAltName among the extensions ([3] EXPLICIT), None
/// without one.
fn san(explicit: &[u8]) -> Result<Option<Vec<String>>, String> {
    let (exts, _) = expect(explicit, 0x30, "the extensions")?;
    let mut r = exts.body;
    while !r.is_empty() {
        let (ext, rest) = expect(r, 0x30, "an extension")?;
        r = rest;
        let (oid, mut e) = expect(ext.body, 0x06, "an extension's id")?;
        if oid.body != OID_SAN {
            continue;
        }
        if e.first() == Some(&0x01) {
            e = expect(e, 0x01, "the subjectAltName's critical flag")?.1;
        }
        let (value, _) = expect(e, 0x04, "the subjectAltName's value")?;
        let (names, _) = expect(value.body, 0x30, "the subjectAltName")?;
        let mut out = Vec::new();
        let mut g = names.body;
        while !g.is_empty() {
            let (name, rest) = tlv(g).map_err(|e| format!("a subjectAltName entry: {e}"))?;
            g = rest;
            if name.tag == 0x82 {
                // dNSName: IA5String, and a host name is printable ASCII.
                if name.body.is_empty() || !name.body.iter().all(|b| b.is_ascii_graphic()) {
                    return Err("a subjectAltName DNS name is empty or not printable".into());
                }
                out.push(String::from_utf8_lossy(name.body).into_owned());
            }
        }
        return Ok(Some(out));
    }
    Ok(None)
}

/// The subject's first commonName, if it is a printable string (for messages only).
fn common_name(name: &[u8]) -> Option<String> {
    let mut r = name;
    while !r.is_empty() {
        let (set, rest) = tlv(r).ok()?;
        r = rest;
        let mut s = set.body;
        while !s.is_empty() {
            let (atv, rest) = tlv(s).ok()?;
            s = rest;
            let (oid, v) = tlv(atv.body).ok()?;
            if oid.tag == 0x06 && oid.body == OID_CN {
                let (v, _) = tlv(v).ok()?;
                let ok = matches!(v.tag, 0x0c | 0x13 | 0x16 | 0x14)
                    && !v.body.is_empty()
                    && v.body.len() <= 253
                    && v.body.iter().all(|b| b.is_ascii_graphic());
                return ok.then(|| String::from_utf8_lossy(v.body).into_owned());
            }
        }
    }
    None
}

/// UTCTime (`YYMMDDHHMMSSZ`, 1950–2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`), as DER has
/// them, in seconds since 1970 UTC.
fn time(t: &Tlv) -> Result<i64, String> {
    let b = t.body;
    let digits = |s: &[u8]| -> Result<i64, String> {
        if s.iter().all(u8::is_ascii_digit) {
            Ok(s.iter().fold(0i64, |a, d| a * 10 + i64::from(d - b'0')))
        } else {
            Err("it is not digits and Z".into())
        }
    };
    let (year, rest) = match (t.tag, b.len()) {
        (0x17, 13) => {
            let yy = digits(&b[..2])?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &b[2..])
        }
        (0x18, 15) => (digits(&b[..4])?, &b[4..]),
        _ => return Err("it is not a UTCTime or GeneralizedTime as DER writes them".into()),
    };
    if rest[10] != b'Z' {
        return Err("it does not end in Z".into());
    }
    let (mo, d, h, mi, s) = (
        digits(&rest[0..2])?,
        digits(&rest[2..4])?,
        digits(&rest[4..6])?,
        digits(&rest[6..8])?,
        digits(&rest[8..10])?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return Err("it is not a date and time".into());
    }
    Ok(crate::host::civil::days_from_civil(year, mo, d) * 86_400 + h * 3600 + mi * 60 + s)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    // Made with openssl 3.0 (one EC P-256 key) when these tests were written:
    //   openssl req -x509 -key k.pem -days 36500 -subj /CN=... -addext subjectAltName=...
    // NO_SAN with -addext keyUsage=critical,digitalSignature and no subjectAltName;
    // EXPIRED with openssl ca -selfsign -startdate 20200101000000Z -enddate 20200102000000Z.
    // notAfter 2126-11-13 05:57:03 UTC (GeneralizedTime) but EXPIRED's (UTCTime).

    pub(crate) const SAN_API: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIBpzCCAU2gAwIBAgIUYjx9HdCjMziceP/tgAbdPa30fZUwCgYIKoZIzj0EAwIw\n\
GjEYMBYGA1UEAwwPYXBpLmV4YW1wbGUuY29tMCAXDTI2MTIwNzA1NTcwM1oYDzIx\n\
MjYxMTEzMDU1NzAzWjAaMRgwFgYDVQQDDA9hcGkuZXhhbXBsZS5jb20wWTATBgcq\n\
hkjOPQIBBggqhkjOPQMBBwNCAATrTeiQ/uGrxfBQ96uFoBGES1WjmoBmR4rhd2hL\n\
hCCv6B+1bfHA3cJeveVX/TiGQDGwRAGv2/NgT4KAVfI7BwLgo28wbTAdBgNVHQ4E\n\
FgQUn1TfXKeVlt17LaZNncP8rGYvDhMwHwYDVR0jBBgwFoAUn1TfXKeVlt17LaZN\n\
ncP8rGYvDhMwDwYDVR0TAQH/BAUwAwEB/zAaBgNVHREEEzARgg9hcGkuZXhhbXBs\n\
ZS5jb20wCgYIKoZIzj0EAwIDSAAwRQIhAM3naTSN8qhiG4ogP8zWtZc4rp1Ozp+S\n\
Xzb7i34KvgwfAiBEuYzesJDN4BBEkb4EK2Yfrw35TWOfZ/Arg950I0krfQ==\n\
-----END CERTIFICATE-----\n\
";

    pub(crate) const OTHER: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIBpzCCAU6gAwIBAgIURFFsdmXMviAxtqwG/PWMIfX/VEIwCgYIKoZIzj0EAwIw\n\
FTETMBEGA1UEAwwKb3RoZXIudGVzdDAgFw0yNjEyMDcwNTU3MDNaGA8yMTI2MTEx\n\
MzA1NTcwM1owFTETMBEGA1UEAwwKb3RoZXIudGVzdDBZMBMGByqGSM49AgEGCCqG\n\
SM49AwEHA0IABOtN6JD+4avF8FD3q4WgEYRLVaOagGZHiuF3aEuEIK/oH7Vt8cDd\n\
wl695Vf9OIZAMbBEAa/b82BPgoBV8jsHAuCjejB4MB0GA1UdDgQWBBSfVN9cp5WW\n\
3Xstpk2dw/ysZi8OEzAfBgNVHSMEGDAWgBSfVN9cp5WW3Xstpk2dw/ysZi8OEzAP\n\
BgNVHRMBAf8EBTADAQH/MCUGA1UdEQQeMByCCm90aGVyLnRlc3SCDnd3dy5vdGhl\n\
ci50ZXN0MAoGCCqGSM49BAMCA0cAMEQCIErtlMrp0y3ZWp7IDXrTkNeNvYNJj2he\n\
5y9SuqTm4a5mAiABiZ+zhWWyChf7r0t2FoGFezGUNQ5AfergNI/X4Y3Iow==\n\
-----END CERTIFICATE-----\n\
";

    pub(crate) const WILDCARD: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIBozCCAUmgAwIBAgIUGJxrGRqvyy1kVahJQ7HoOqwX8n4wCgYIKoZIzj0EAwIw\n\
FjEUMBIGA1UEAwwLZXhhbXBsZS5jb20wIBcNMjYxMjA3MDU1NzAzWhgPMjEyNjEx\n\
MTMwNTU3MDNaMBYxFDASBgNVBAMMC2V4YW1wbGUuY29tMFkwEwYHKoZIzj0CAQYI\n\
KoZIzj0DAQcDQgAE603okP7hq8XwUPerhaARhEtVo5qAZkeK4XdoS4Qgr+gftW3x\n\
wN3CXr3lV/04hkAxsEQBr9vzYE+CgFXyOwcC4KNzMHEwHQYDVR0OBBYEFJ9U31yn\n\
lZbdey2mTZ3D/KxmLw4TMB8GA1UdIwQYMBaAFJ9U31ynlZbdey2mTZ3D/KxmLw4T\n\
MA8GA1UdEwEB/wQFMAMBAf8wHgYDVR0RBBcwFYINKi5leGFtcGxlLmNvbYcEfwAA\n\
ATAKBggqhkjOPQQDAgNIADBFAiEA9DfAC6SYDvGqUneS+POt3P0Tb9F7sjeLOuGN\n\
z5aWCcICIGbAeF/jl7cJsatzL5REj9grNIY83q6sKXhPRoEKx/zZ\n\
-----END CERTIFICATE-----\n\
";

    pub(crate) const NO_SAN: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIBnDCCAUGgAwIBAgIUAQHMewe/4PTmliJ1P8Tu7b0ilWkwCgYIKoZIzj0EAwIw\n\
GjEYMBYGA1UEAwwPYXBpLmV4YW1wbGUuY29tMCAXDTI2MTIwNzA1NTgwMFoYDzIx\n\
MjYxMTEzMDU1ODAwWjAaMRgwFgYDVQQDDA9hcGkuZXhhbXBsZS5jb20wWTATBgcq\n\
hkjOPQIBBggqhkjOPQMBBwNCAATrTeiQ/uGrxfBQ96uFoBGES1WjmoBmR4rhd2hL\n\
hCCv6B+1bfHA3cJeveVX/TiGQDGwRAGv2/NgT4KAVfI7BwLgo2MwYTAdBgNVHQ4E\n\
FgQUn1TfXKeVlt17LaZNncP8rGYvDhMwHwYDVR0jBBgwFoAUn1TfXKeVlt17LaZN\n\
ncP8rGYvDhMwDwYDVR0TAQH/BAUwAwEB/zAOBgNVHQ8BAf8EBAMCB4AwCgYIKoZI\n\
zj0EAwIDSQAwRgIhALu8xTeaORluUaDKEPKJAyg5H29w0ZdyZbsPkK/bik5ZAiEA\n\
qQ7pnlzN2aRETdyu1fgbfdfxc1H32p1uDr8AnUh53/w=\n\
-----END CERTIFICATE-----\n\
";

    pub(crate) const EXPIRED: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIBYTCCAQagAwIBAgIBATAKBggqhkjOPQQDAjAaMRgwFgYDVQQDDA9hcGkuZXhh\n\
bXBsZS5jb20wHhcNMjAwMTAxMDAwMDAwWhcNMjAwMTAyMDAwMDAwWjAaMRgwFgYD\n\
VQQDDA9hcGkuZXhhbXBsZS5jb20wWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAATr\n\
TeiQ/uGrxfBQ96uFoBGES1WjmoBmR4rhd2hLhCCv6B+1bfHA3cJeveVX/TiGQDGw\n\
RAGv2/NgT4KAVfI7BwLgoz0wOzAaBgNVHREEEzARgg9hcGkuZXhhbXBsZS5jb20w\n\
HQYDVR0OBBYEFJ9U31ynlZbdey2mTZ3D/KxmLw4TMAoGCCqGSM49BAMCA0kAMEYC\n\
IQCo9Zd/v3gA4hl+bPI7VaOpTPTuC7m55byKqb3IPpy2ZAIhAMsWihP1tDp4A9ia\n\
CeEmBbSfXuxo2JLjw0zVKpRDQgkz\n\
-----END CERTIFICATE-----\n\
";

    const NOW: i64 = 1_796_000_000; // 2026-12-01

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn real_certificates_are_read() {
        let l = leaf(SAN_API.as_bytes()).unwrap();
        assert_eq!(l.dns_names, Some(names(&["api.example.com"])));
        assert_eq!(l.subject_cn.as_deref(), Some("api.example.com"));
        assert_eq!(l.not_after, 4_950_223_023);
        assert_eq!(date(l.not_after), "2126-11-13 05:57 UTC");
        let l = leaf(OTHER.as_bytes()).unwrap();
        assert_eq!(l.dns_names, Some(names(&["other.test", "www.other.test"])));
        // An IP address entry is not a DNS name.
        let l = leaf(WILDCARD.as_bytes()).unwrap();
        assert_eq!(l.dns_names, Some(names(&["*.example.com"])));
        let l = leaf(NO_SAN.as_bytes()).unwrap();
        assert_eq!(l.dns_names, None);
        assert_eq!(l.subject_cn.as_deref(), Some("api.example.com"));
        let l = leaf(EXPIRED.as_bytes()).unwrap();
        assert_eq!(date(l.not_after), "2020-01-02 00:00 UTC");
        // A fullchain: the first block is the leaf.
        let chain = format!("{OTHER}{SAN_API}");
        assert_eq!(
            leaf(chain.as_bytes()).unwrap().dns_names,
            Some(names(&["other.test", "www.other.test"]))
        );
    }

    #[test]
    fn names_are_covered_exactly_or_by_a_one_label_wildcard() {
        let n = names(&["API.Example.com", "*.other.test", "*.com", "a*.x.test"]);
        assert!(covers(&n, "api.example.com"));
        assert!(covers(&n, "api.example.com."));
        assert!(!covers(&n, "example.com"));
        assert!(!covers(&n, "v2.api.example.com"));
        assert!(covers(&n, "WWW.other.test"));
        assert!(!covers(&n, "other.test"));
        assert!(!covers(&n, "a.b.other.test"));
        assert!(!covers(&n, ".other.test"));
        assert!(!covers(&n, "example.com"), "no *.com");
        assert!(!covers(&n, "ab.x.test"), "no partial wildcards");
        assert!(!covers(&[], "api.example.com"));
    }

    #[test]
    fn certificates_are_checked_for_the_domain_and_the_date() {
        assert_eq!(
            check_for(SAN_API.as_bytes(), "api.example.com", NOW),
            Ok(())
        );
        assert_eq!(
            check_for(WILDCARD.as_bytes(), "api.example.com", NOW),
            Ok(())
        );
        assert_eq!(
            check_for(OTHER.as_bytes(), "api.newcomer.test", NOW).unwrap_err(),
            "is a certificate for other.test, www.other.test, not for DOMAIN=api.newcomer.test: give the certificate for api.newcomer.test (its subjectAltName), or DOMAIN=other.test"
        );
        assert!(check_for(WILDCARD.as_bytes(), "api.newcomer.test", NOW)
            .unwrap_err()
            .ends_with("(its subjectAltName), or DOMAIN=api.example.com"));
        let e = check_for(NO_SAN.as_bytes(), "api.example.com", NOW).unwrap_err();
        assert!(
            e.starts_with("is a certificate without subjectAltName (only its subject CN=api.example.com, which clients no longer match)"),
            "{e}"
        );
        assert_eq!(
            check_for(EXPIRED.as_bytes(), "api.example.com", NOW).unwrap_err(),
            "is a certificate for api.example.com that expired on 2020-01-02 00:00 UTC: give a current one"
        );
        let e = check_for(
            b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
            "a.test",
            NOW,
        )
        .unwrap_err();
        assert!(e.starts_with("cannot be read as a certificate: "), "{e}");
    }

    #[test]
    fn base64_is_strict() {
        assert_eq!(base64("TWFu").unwrap(), b"Man");
        assert_eq!(base64("TWE=\n").unwrap(), b"Ma");
        assert_eq!(base64("TQ==").unwrap(), b"M");
        for bad in ["TWF", "TQ=", "TQ==TQ==", "TW-u", "TR==", "", "===="] {
            assert!(base64(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dates_are_counted_in_utc() {
        assert_eq!(crate::host::civil::days_from_civil(1970, 1, 1), 0);
        assert_eq!(crate::host::civil::days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(crate::host::civil::civil_from_days(11_017), (2000, 3, 1));
        assert_eq!(date(0), "1970-01-01 00:00 UTC");
    }

    /// Truncated and mutated certificates are refused or read, never a panic.
    #[test]
    fn no_input_panics() {
        let pems = [SAN_API, OTHER, WILDCARD, NO_SAN, EXPIRED];
        for pem in pems {
            let der = first_der(pem.as_bytes()).unwrap();
            for n in 0..der.len() {
                assert!(parse(&der[..n]).is_err(), "truncated at {n}");
            }
            let mut seed: u32 = 0x9e37_79b9;
            for i in 0..der.len() {
                for x in [0x00, 0x01, 0x7f, 0x80, 0x81, 0x84, 0xff, der[i] ^ 0x20] {
                    let mut m = der.clone();
                    m[i] = x;
                    let _ = parse(&m);
                }
                // And a few random bytes at random places.
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                let mut m = der.clone();
                for k in 0..4 {
                    let j = (seed as usize).wrapping_add(k * 7919) % m.len();
                    m[j] = (seed >> (k * 8)) as u8;
                }
                let _ = parse(&m);
            }
            for n in 0..pem.len() {
                let _ = leaf(&pem.as_bytes()[..n]);
                let _ = check_for(&pem.as_bytes()[..n], "api.example.com", NOW);
            }
        }
    }
}
