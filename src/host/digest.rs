//! SHA-256 of a binary, as the audit names it: computed from the bytes root actually read
//! (one descriptor), never from a path read again later.

use std::io::{self, Read};

/// A SHA-256, printed as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Sha256(pub [u8; 32]);

impl Sha256 {
    pub fn of(bytes: &[u8]) -> Self {
        let mut h = Hasher::new();
        h.update(bytes);
        h.finish()
    }

    /// Reads `r` to its end, hashing as it goes.
    pub fn of_reader(mut r: impl Read) -> io::Result<Self> {
        let mut h = Hasher::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match r.read(&mut buf) {
                Ok(0) => return Ok(h.finish()),
                Ok(n) => h.update(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// `s` if it is 64 lowercase hex digits.
    pub fn parse(s: &str) -> Option<Self> {
        if s.len() != 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Sha256(out))
    }
}

impl std::fmt::Display for Sha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// Incremental SHA-256 (ring's, already linked for TLS).
pub struct Hasher(ring::digest::Context);

impl Hasher {
    pub fn new() -> Self {
        Hasher(ring::digest::Context::new(&ring::digest::SHA256))
    }
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    pub fn finish(self) -> Sha256 {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.0.finish().as_ref());
        Sha256(out)
    }
}

impl Default for Hasher {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digest_and_round_trip() {
        let d = Sha256::of(b"abc");
        let hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(d.to_string(), hex);
        assert_eq!(Sha256::parse(hex), Some(d));
        assert_eq!(Sha256::of_reader(&b"abc"[..]).unwrap(), d);
        assert_eq!(Sha256::parse(&hex.to_uppercase()), None);
        assert_eq!(Sha256::parse(&hex[1..]), None);
    }
}
