//! Text from elsewhere (user tribist, a binary, the server's `/health`, the deployer), made
//! safe to print to a terminal and to log: bounded, and printable ASCII plus newlines only.
//!
//! Not even the bytes of a UTF-8 sequence pass: C1 controls such as CSI and OSC arrive as
//! UTF-8 and terminals obey them (docs/deploying.md, "Who owns what on the host").

/// `bytes` with every byte outside printable ASCII (0x20..=0x7e) and `\n` removed, cut to at
/// most `max` bytes.
pub fn printable(bytes: &[u8], max: usize) -> String {
    bytes
        .iter()
        .copied()
        .filter(|b| *b == b'\n' || (0x20..=0x7e).contains(b))
        .take(max)
        .map(char::from)
        .collect()
}

/// One line's worth: as [`printable`], without newlines either.
pub fn clean(bytes: &[u8], max: usize) -> String {
    bytes
        .iter()
        .copied()
        .filter(|b| (0x20..=0x7e).contains(b))
        .take(max)
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_utf8_are_removed() {
        let hostile = "ok\x1b]0;title\x07\r\x1b[2Kforged \u{9b}31m\n";
        assert_eq!(
            printable(hostile.as_bytes(), 100),
            "ok]0;title[2Kforged 31m\n"
        );
        assert_eq!(clean(hostile.as_bytes(), 100), "ok]0;title[2Kforged 31m");
    }

    #[test]
    fn bounded() {
        assert_eq!(printable(&[b'a'; 10_000], 7).len(), 7);
        assert_eq!(clean(b"\x00\x01abc", 2), "ab");
    }
}
