//! TLS to PostgreSQL with libpq's meaning of `sslmode` and `sslrootcert`, in pure Rust.
//!
//! Managed databases that enforce encryption need `sslmode=require` or stricter, and a remote
//! database reached with the default `prefer` must be encrypted whenever it can be. The
//! postgres crate knows only `disable`, `prefer` and `require`, verifies nothing itself, and
//! rejects `verify-ca`, `verify-full` and `sslrootcert` as unknown. So those parameters are
//! taken out of the connection string here ([`split_params`]) and become a rustls
//! configuration ([`Settings::connector`]):
//!
//! | sslmode | encrypted | certificate checked |
//! | --- | --- | --- |
//! | `disable` | never | — |
//! | `allow`, `prefer` (default) | if the server offers it | only with `sslrootcert=` (as verify-ca) |
//! | `require` | always | only with `sslrootcert=` (as verify-ca, as libpq does) |
//! | `verify-ca` | always | chain against `sslrootcert`, else the system's CA store |
//! | `verify-full` | always | chain, and the host name |
//!
//! Differences from libpq, on purpose: without `sslrootcert` the verify modes use the
//! system's CA store (`/etc/ssl/certs`) rather than failing for want of
//! `~/.postgresql/root.crt` (the service has no such home); `allow` is treated as `prefer`
//! (it may encrypt where libpq would not). `sslrootcert=system` is libpq 16's: the system store
//! and at least `verify-full`. Client certificates (`sslcert`, `sslkey`) and revocation lists
//! (`sslcrl`) are refused rather than ignored. Connections over a Unix socket are never
//! encrypted, as in libpq. rustls with the ring provider needs no libssl on the host, so the
//! portable binary stays portable.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(text: &str) -> Result<SslMode, String> {
        Ok(match text {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => {
                return Err(format!(
                    "sslmode {} is not one of disable, allow, prefer, require, verify-ca, \
                     verify-full",
                    shown(text)
                ))
            }
        })
    }

    /// What the postgres crate is told: whether TLS is tried, and whether it is a must.
    pub fn for_client(self) -> postgres::config::SslMode {
        use postgres::config::SslMode as Crate;
        match self {
            SslMode::Disable => Crate::Disable,
            SslMode::Allow | SslMode::Prefer => Crate::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Crate::Require,
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        })
    }
}

/// A value from the connection string, quoted in an error only when it cannot be a password
/// that an empty value swallowed (`sslmode= password=…` gives sslmode the next word, as in
/// libpq): a short word of lowercase letters and dashes, or an absolute path without `=`.
fn shown(value: &str) -> String {
    let word = value.len() <= 20 && value.bytes().all(|b| b.is_ascii_lowercase() || b == b'-');
    let path = value.starts_with('/') && !value.contains('=');
    if word || path {
        format!("{:?}", value.escape_debug().to_string())
    } else {
        "(value not shown)".into()
    }
}

/// Where trusted CA certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// `sslrootcert=PATH`: the PEM certificates in that file.
    File(PathBuf),
    /// `sslrootcert=system`, or a verify mode without `sslrootcert`.
    System,
}

/// Which of the two settings a refusal is about, so the error names the variable to fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    Mode,
    RootCert,
}

/// A refused setting: which one, and why.
pub type Refused = (Param, String);

/// How the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Encryption only: any certificate (its handshake signatures are still verified).
    Nothing,
    /// The chain up to a trusted CA, whatever host name it is for.
    Chain,
    /// The chain and the host name.
    ChainAndName,
}

/// The TLS part of the database configuration, read once at start (exit 2 if wrong).
#[derive(Clone)]
pub struct Settings {
    pub mode: SslMode,
    pub roots: Option<Roots>,
    connector: MakeRustlsConnect,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sslmode={}", self.mode)?;
        match &self.roots {
            Some(Roots::File(p)) => write!(f, " sslrootcert={}", p.display()),
            Some(Roots::System) => f.write_str(" sslrootcert=system"),
            None => Ok(()),
        }
    }
}

impl Settings {
    /// `sslmode` and `sslrootcert` as given (either may be absent), checked and loaded: the CA
    /// certificates are read now, so a missing or empty file stops the start with a reason.
    pub fn new(mode: Option<&str>, rootcert: Option<&str>) -> Result<Settings, Refused> {
        let roots = match rootcert.map(str::trim).filter(|r| !r.is_empty()) {
            None => None,
            Some("system") => Some(Roots::System),
            Some(path) => Some(Roots::File(PathBuf::from(path))),
        };
        let mode = match mode.map(str::trim).filter(|m| !m.is_empty()) {
            Some(m) => SslMode::parse(m).map_err(|e| (Param::Mode, e))?,
            None if roots == Some(Roots::System) => SslMode::VerifyFull,
            None => SslMode::Prefer,
        };
        if roots == Some(Roots::System) && mode != SslMode::VerifyFull {
            return Err((
                Param::Mode,
                format!(
                    "weak sslmode {mode} may not be used with sslrootcert=system (use verify-full)"
                ),
            ));
        }
        if mode == SslMode::VerifyCa && roots.is_none() {
            // Any certificate a public CA issued, for any name, would pass.
            return Err((
                Param::Mode,
                "sslmode verify-ca needs sslrootcert=PATH (the CA that signed the server's \
                 certificate); with the system's CA store use verify-full"
                    .into(),
            ));
        }
        let check = match (mode, &roots) {
            (SslMode::Disable, _) => Check::Nothing,
            (SslMode::VerifyFull, _) => Check::ChainAndName,
            (SslMode::VerifyCa, _) => Check::Chain,
            // libpq: a root certificate given makes require (and prefer) check the chain.
            (_, Some(_)) => Check::Chain,
            (_, None) => Check::Nothing,
        };
        let connector = MakeRustlsConnect::new(client_config(check, roots.as_ref())?);
        Ok(Settings {
            mode,
            roots,
            connector,
        })
    }

    pub fn connector(&self) -> MakeRustlsConnect {
        self.connector.clone()
    }

    /// A hint to add to a failed TLS handshake's reason.
    pub fn hint(&self, reason: &str) -> String {
        if reason.contains("CaUsedAsEndEntity") {
            return "the server presents a CA certificate (basicConstraints CA:TRUE) as its own; \
                    rustls accepts only a server certificate signed by a CA: make one with the \
                    CA and name the CA in sslrootcert"
                .into();
        }
        let roots = match &self.roots {
            Some(Roots::File(p)) => {
                format!("the CA certificates in {}", shown(&p.to_string_lossy()))
            }
            _ => "the system's CA certificates (/etc/ssl/certs)".into(),
        };
        match self.mode {
            SslMode::VerifyFull => {
                format!(
                    "sslmode=verify-full checks the certificate against {roots} and the host name"
                )
            }
            SslMode::VerifyCa => {
                format!("sslmode=verify-ca checks the certificate against {roots}")
            }
            m if self.roots.is_some() => {
                format!("sslmode={m} with sslrootcert checks the certificate against {roots}")
            }
            m => format!("sslmode={m}"),
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(check: Check, roots: Option<&Roots>) -> Result<ClientConfig, Refused> {
    let set_up = |e: rustls::Error| (Param::Mode, format!("TLS set-up: {e}"));
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(set_up)?;
    let verifier: Arc<dyn ServerCertVerifier> = match check {
        Check::Nothing => Arc::new(AnyCertificate(provider)),
        Check::Chain | Check::ChainAndName => {
            let store =
                root_store(roots.unwrap_or(&Roots::System)).map_err(|e| (Param::RootCert, e))?;
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider)
                .build()
                .map_err(|e| (Param::Mode, format!("TLS set-up: {e}")))?;
            if check == Check::Chain {
                Arc::new(AnyName(webpki))
            } else {
                webpki
            }
        }
    };
    let mut config = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    // PostgreSQL 17 requires it with sslnegotiation=direct; earlier servers ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(config)
}

fn root_store(roots: &Roots) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    match roots {
        Roots::File(path) => {
            let certs = read_pem_certs(path)?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!(
                    "sslrootcert {} holds no usable CA certificate",
                    shown(&path.to_string_lossy())
                ));
            }
        }
        Roots::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(
                    "the system's CA store (/etc/ssl/certs) holds no certificate: install \
                     ca-certificates, or name the CA file with sslrootcert=PATH"
                        .into(),
                );
            }
        }
    }
    Ok(store)
}

fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let name = shown(&path.to_string_lossy());
    let bytes = std::fs::read(path).map_err(|e| {
        format!("sslrootcert {name}: {e} (the file must be readable by the service's user)")
    })?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("sslrootcert {name}: not PEM certificates ({e:?})"))?;
    if certs.is_empty() {
        return Err(format!(
            "sslrootcert {name} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        ));
    }
    Ok(certs)
}

/// `require`/`prefer` without a root certificate: encryption against passive eavesdropping,
/// as libpq gives; the certificate itself is not trusted, but the handshake must still be
/// signed by its key.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the full WebPKI check except the host name. rustls checks the name only
/// after the chain, so a name mismatch means the chain was good.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The TLS parameters the postgres crate does not know, taken out of a connection string.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Taken {
    pub sslmode: Option<String>,
    pub sslrootcert: Option<String>,
}

/// Parameters libpq has that change what "secure" means and that this server does not
/// implement: refused, never silently ignored.
const UNSUPPORTED: &[&str] = &["sslcert", "sslkey", "sslpassword", "sslcrl", "sslcrldir"];

/// Splits `sslmode` and `sslrootcert` out of a connection string in either form, reading it
/// exactly as the postgres crate does (so that what we take is what it would have seen): a
/// `postgres://` URL's query parameters (after the credentials, which end at the first `@`),
/// percent-decoded; or libpq's `key = value` words, quoted or with backslash escapes, separated
/// by any Unicode white space. Returns the rest for the crate; `config.rs` then checks that
/// the crate found no `sslmode` of its own in it.
pub fn split_params(conn: &str) -> Result<(String, Taken), String> {
    let mut taken = Taken::default();
    let mut take = |key: &str, value: String| -> Result<bool, String> {
        match key {
            "sslmode" => taken.sslmode = Some(value),
            "sslrootcert" => taken.sslrootcert = Some(value),
            k if UNSUPPORTED.contains(&k) => {
                return Err(format!(
                    "{k} is not supported (client certificates and revocation lists are not \
                     implemented); remove it"
                ))
            }
            _ => return Ok(false),
        }
        Ok(true)
    };
    let rest = if conn.starts_with("postgres://") || conn.starts_with("postgresql://") {
        // The crate: credentials up to the first `@`, then host up to `/` or `?`, then the
        // path up to `?`: the query starts at the first `?` after the credentials.
        let after_creds = conn.find('@').map_or(0, |at| at + 1);
        match conn[after_creds..].find('?') {
            None => conn.to_string(),
            Some(q) => {
                let (base, query) = conn.split_at(after_creds + q);
                let mut kept = Vec::new();
                for (key, value) in url_params(&query[1..]) {
                    if !take(&percent_decode(key), percent_decode(value))? {
                        kept.push(format!("{key}={value}"));
                    }
                }
                if kept.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        let mut rest = String::new();
        let mut last = 0;
        for (start, end, key, value) in keyword_pairs(conn)? {
            if take(&key, value)? {
                rest.push_str(&conn[last..start]);
                last = end;
            }
        }
        rest.push_str(&conn[last..]);
        rest
    };
    Ok((rest, taken))
}

/// A URL's query as the crate splits it: a key runs to the next `=` (a `&` before it is part
/// of the key), its value to the next `&`.
fn url_params(query: &str) -> Vec<(&str, &str)> {
    let mut params = Vec::new();
    let mut rest = query;
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else {
            // The crate refuses this ("unterminated parameter"); keep it for it to say so.
            params.push((rest, ""));
            break;
        };
        let key = &rest[..eq];
        let after = &rest[eq + 1..];
        let (value, next) = match after.find('&') {
            Some(amp) => (&after[..amp], &after[amp + 1..]),
            None => (after, ""),
        };
        params.push((key, value));
        rest = next;
    }
    params
}

/// Percent-decoding as the crate does it: a bad escape stays as it is.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// libpq's `key = value` words as the crate reads them: (start, end, key, value) for each,
/// `end` past the value. Errors never quote the string (it may hold a password).
fn keyword_pairs(conn: &str) -> Result<Vec<(usize, usize, String, String)>, String> {
    let mut it = conn.char_indices().peekable();
    let mut pairs = Vec::new();
    let skip_blanks = |it: &mut std::iter::Peekable<std::str::CharIndices<'_>>| {
        while it.next_if(|&(_, c)| c.is_whitespace()).is_some() {}
    };
    loop {
        skip_blanks(&mut it);
        let Some(&(start, _)) = it.peek() else {
            return Ok(pairs);
        };
        let mut key = String::new();
        while let Some((_, c)) = it.next_if(|&(_, c)| !c.is_whitespace() && c != '=') {
            key.push(c);
        }
        skip_blanks(&mut it);
        if it.next_if(|&(_, c)| c == '=').is_none() {
            return Err("a word without \"=\" (libpq's form is key=value ...)".into());
        }
        skip_blanks(&mut it);
        let quoted = it.next_if(|&(_, c)| c == '\'').is_some();
        let mut value = String::new();
        let end = loop {
            match it.peek().copied() {
                None if quoted => return Err("a quoted value has no closing quote".into()),
                None => break conn.len(),
                Some((_, '\\')) => {
                    it.next();
                    if let Some((_, c)) = it.next() {
                        value.push(c);
                    }
                }
                Some((i, '\'')) if quoted => {
                    it.next();
                    break i + 1;
                }
                Some((i, c)) if !quoted && c.is_whitespace() => break i,
                Some((_, c)) => {
                    value.push(c);
                    it.next();
                }
            }
        };
        pairs.push((start, end, key, value));
    }
}

/// Whether a failed connection's reason is about TLS (to add `Settings::hint`).
pub fn is_tls_failure(reason: &str) -> bool {
    reason.contains("TLS") || reason.contains("certificate")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parameters_are_split_out_and_the_rest_kept() {
        let (rest, taken) = split_params(
            "postgres://u:p@db:5432/x?application_name=a&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p@db:5432/x?application_name=a");
        assert_eq!(taken.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(taken.sslrootcert.as_deref(), Some("/etc/ca.pem"));
        let (rest, taken) = split_params("postgresql://u@db/x?sslmode=require").unwrap();
        assert_eq!(rest, "postgresql://u@db/x");
        assert_eq!(taken.sslmode.as_deref(), Some("require"));
        assert_eq!(
            split_params("postgres://u@db/x").unwrap().1,
            Taken::default()
        );
    }

    #[test]
    fn keyword_parameters_are_split_out_quoted_or_escaped() {
        let (rest, taken) = split_params(
            "host=db user=u sslmode = verify-ca  sslrootcert='/etc/my ca\\'s.pem' password=a\\ b",
        )
        .unwrap();
        assert_eq!(rest, "host=db user=u    password=a\\ b");
        assert_eq!(taken.sslmode.as_deref(), Some("verify-ca"));
        assert_eq!(taken.sslrootcert.as_deref(), Some("/etc/my ca's.pem"));
        assert!(split_params("host=db sslmode").is_err());
        assert!(split_params("host=db sslrootcert='x").is_err());
    }

    /// Read as the postgres crate reads them: the query starts after the credentials (a raw
    /// `?` in a password is the password's), and any Unicode white space separates words.
    #[test]
    fn strings_are_read_as_the_crate_reads_them() {
        let (rest, taken) =
            split_params("postgres://q:pw?x@127.0.0.1:5432/db?sslmode=require").unwrap();
        assert_eq!(rest, "postgres://q:pw?x@127.0.0.1:5432/db");
        assert_eq!(taken.sslmode.as_deref(), Some("require"));
        for blank in ["\u{a0}", "\u{b}", "\u{2003}"] {
            let conn = format!("host=db dbname=x{blank}sslmode=require");
            let (rest, taken) = split_params(&conn).unwrap();
            assert_eq!(taken.sslmode.as_deref(), Some("require"), "{conn:?}");
            assert_eq!(rest, format!("host=db dbname=x{blank}"));
        }
        // A bad %-escape elsewhere is the crate's business, as it is.
        let (rest, _) =
            split_params("postgres://u@db/x?application_name=%zz&sslmode=disable").unwrap();
        assert_eq!(rest, "postgres://u@db/x?application_name=%zz");
    }

    /// An empty value takes the next word, as in libpq: `sslmode= password=…` must not put
    /// the password into an error message.
    #[test]
    fn values_that_may_be_passwords_are_not_quoted_in_errors() {
        let (_, taken) = split_params("host=db sslmode= password=hunter2").unwrap();
        let err = Settings::new(taken.sslmode.as_deref(), None).unwrap_err().1;
        assert!(!err.contains("hunter2"), "{err}");
        let (_, taken) =
            split_params("host=db sslrootcert= password=hunter2 sslmode=require").unwrap();
        let err = Settings::new(taken.sslmode.as_deref(), taken.sslrootcert.as_deref())
            .unwrap_err()
            .1;
        assert!(!err.contains("hunter2"), "{err}");
        let err = split_params("host=db password='hunter2 x").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        let err = Settings::new(Some("verify-ful"), None).unwrap_err().1;
        assert!(err.contains("\"verify-ful\""), "{err}");
    }

    #[test]
    fn verify_ca_needs_its_own_ca() {
        let (param, err) = Settings::new(Some("verify-ca"), None).unwrap_err();
        assert!(err.contains("sslrootcert=PATH"), "{err}");
        // The mode is what to change: PGSSLMODE, not PGSSLROOTCERT, is named.
        assert_eq!(param, Param::Mode);
    }

    #[test]
    fn unsupported_parameters_are_refused_not_ignored() {
        for conn in ["postgres://u@db/x?sslcert=a", "host=db sslcrl=/x"] {
            let err = split_params(conn).unwrap_err();
            assert!(err.contains("not supported"), "{err}");
        }
    }

    #[test]
    fn modes_as_libpq_has_them() {
        assert_eq!(Settings::new(None, None).unwrap().mode, SslMode::Prefer);
        for m in [
            "disable",
            "allow",
            "prefer",
            "require",
            "verify-ca",
            "verify-full",
        ] {
            let mode = SslMode::parse(m).unwrap();
            assert_eq!(mode.to_string(), m);
        }
        let err = SslMode::parse("verify_full").unwrap_err();
        assert!(err.contains("verify-full"), "{err}");
        assert_eq!(
            SslMode::parse("require").unwrap().for_client(),
            postgres::config::SslMode::Require
        );
        assert_eq!(
            SslMode::parse("verify-full").unwrap().for_client(),
            postgres::config::SslMode::Require
        );
        assert_eq!(
            SslMode::parse("allow").unwrap().for_client(),
            postgres::config::SslMode::Prefer
        );
    }

    #[test]
    fn sslrootcert_system_means_verify_full() {
        // The system store may be empty on a build machine; only the mode rules are checked.
        match Settings::new(None, Some("system")) {
            Ok(s) => assert_eq!(s.mode, SslMode::VerifyFull),
            Err((_, e)) => assert!(e.contains("CA store"), "{e}"),
        }
        let err = Settings::new(Some("require"), Some("system"))
            .unwrap_err()
            .1;
        assert!(err.contains("verify-full"), "{err}");
    }

    #[test]
    fn a_missing_or_empty_root_file_is_refused_with_its_path() {
        let (param, err) =
            Settings::new(Some("verify-full"), Some("/nonexistent/ca.pem")).unwrap_err();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
        assert_eq!(param, Param::RootCert);
        let dir = std::env::temp_dir().join(format!("tribist-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = Settings::new(Some("verify-ca"), empty.to_str())
            .unwrap_err()
            .1;
        assert!(err.contains("no PEM certificate"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
