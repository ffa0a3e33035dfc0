//! What an executable needs from the machine that runs it, read from its bytes: the ELF
//! machine and the highest `GLIBC_x.y[.z]` symbol version it needs; and the release id of a
//! build of uncommitted changes.
//!
//! Why: a binary the host cannot run is refused before it is uploaded, naming both sides
//! (`tools/elf.sh` did this with od and grep; release.sh still uses it). The versions come
//! from the dynamic linker's own table, `SHT_GNU_verneed`; a file without a section table
//! (a truncated file, a header written by hand) is read as elf.sh read it, by searching its
//! bytes for the names. Nothing here runs the binary.

/// What [`read`] found in an ELF file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Needs {
    /// `x86_64`, `aarch64`, … as `uname -m` says it; `elf-machine-N` for others.
    pub machine: String,
    /// The highest glibc version needed (`2.17`), None for a binary without glibc.
    pub glibc: Option<String>,
}

/// The needs of `bytes`, None when they are not an ELF file (a script, say).
pub fn read(bytes: &[u8]) -> Option<Needs> {
    let f = File::new(bytes)?;
    let machine = match f.u16(18)? {
        62 => "x86_64".to_string(),
        183 => "aarch64".to_string(),
        3 => "i686".to_string(),
        40 => "arm".to_string(),
        243 => "riscv64".to_string(),
        n => format!("elf-machine-{n}"),
    };
    let names = match f.version_needs() {
        Some(names) => names,
        None => scan_glibc(bytes),
    };
    let glibc = names
        .iter()
        .filter_map(|n| n.strip_prefix("GLIBC_"))
        .filter(|v| is_version(v))
        .max_by(|a, b| compare(a, b))
        .map(str::to_string);
    Some(Needs { machine, glibc })
}

/// Whether dotted version `a` <= `b` (`sort -V` on numbers: 2.3.4 > 2.2.5, 2.17 > 2.9).
pub fn version_le(a: &str, b: &str) -> bool {
    compare(a, b) != std::cmp::Ordering::Greater
}

fn compare(a: &str, b: &str) -> std::cmp::Ordering {
    let parts = |s: &str| -> Vec<u64> { s.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    parts(a).cmp(&parts(b))
}

/// `N.N` or `N.N.N`.
fn is_version(v: &str) -> bool {
    let parts: Vec<&str> = v.split('.').collect();
    (2..=3).contains(&parts.len())
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 9 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Every `GLIBC_N.N[.N]` in `bytes` (what `grep -ao` found).
fn scan_glibc(bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let pat = b"GLIBC_";
    let mut i = 0;
    while let Some(pos) = find(&bytes[i..], pat) {
        let start = i + pos + pat.len();
        let mut end = start;
        let mut dots = 0;
        // digits, then up to two ".digits" groups
        loop {
            let digits = bytes[end..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            if digits == 0 {
                break;
            }
            end += digits;
            if dots < 2
                && bytes.get(end) == Some(&b'.')
                && bytes.get(end + 1).is_some_and(u8::is_ascii_digit)
            {
                end += 1;
                dots += 1;
            } else {
                break;
            }
        }
        if dots >= 1 {
            out.push(format!(
                "GLIBC_{}",
                String::from_utf8_lossy(&bytes[start..end])
            ));
        }
        i = start;
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The release id of a build of uncommitted changes (`<40 hex>-dirty-<12 hex|unknown>`, as
/// build.rs names them) if `bytes` carry one.
pub fn dirty_release(bytes: &[u8]) -> Option<String> {
    let hex = |b: &u8| b.is_ascii_digit() || (b'a'..=b'f').contains(b);
    let mut from = 0;
    while let Some(pos) = find(&bytes[from..], b"-dirty-") {
        let at = from + pos;
        from = at + 1;
        if at < 40 || !bytes[at - 40..at].iter().all(hex) {
            continue;
        }
        let tail = &bytes[at + 7..];
        let suffix_len = if tail.len() >= 12 && tail[..12].iter().all(hex) {
            12
        } else if tail.starts_with(b"unknown") {
            7
        } else {
            continue;
        };
        return Some(String::from_utf8_lossy(&bytes[at - 40..at + 7 + suffix_len]).into_owned());
    }
    None
}

/// An ELF file's bytes, read by its class (32/64 bit) and byte order, every offset checked.
struct File<'a> {
    b: &'a [u8],
    wide: bool,
    little: bool,
}

const SHT_GNU_VERNEED: u32 = 0x6fff_fffe;

impl<'a> File<'a> {
    fn new(b: &'a [u8]) -> Option<File<'a>> {
        if b.len() < 20 || &b[..4] != b"\x7fELF" {
            return None;
        }
        Some(File {
            b,
            wide: b[4] == 2,
            little: b[5] != 2,
        })
    }

    fn bytes<const N: usize>(&self, at: usize) -> Option<[u8; N]> {
        self.b.get(at..at.checked_add(N)?)?.try_into().ok()
    }

    fn u16(&self, at: usize) -> Option<u16> {
        let a = self.bytes::<2>(at)?;
        Some(if self.little {
            u16::from_le_bytes(a)
        } else {
            u16::from_be_bytes(a)
        })
    }

    fn u32(&self, at: usize) -> Option<u32> {
        let a = self.bytes::<4>(at)?;
        Some(if self.little {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        })
    }

    /// A word: 8 bytes in a 64-bit file, 4 in a 32-bit one.
    fn word(&self, at: usize) -> Option<usize> {
        if self.wide {
            let a = self.bytes::<8>(at)?;
            let v = if self.little {
                u64::from_le_bytes(a)
            } else {
                u64::from_be_bytes(a)
            };
            usize::try_from(v).ok()
        } else {
            self.u32(at).map(|v| v as usize)
        }
    }

    /// (type, link, info, offset, size) of section `i`.
    fn section(&self, i: usize) -> Option<(u32, usize, usize, usize, usize)> {
        let (shoff, shentsize) = if self.wide {
            (self.word(0x28)?, self.u16(0x3a)? as usize)
        } else {
            (self.word(0x20)?, self.u16(0x2e)? as usize)
        };
        let at = shoff.checked_add(i.checked_mul(shentsize)?)?;
        // The whole header within the file, so that no offset below can overflow.
        let len = if self.wide { 0x40 } else { 0x28 };
        self.b.get(at..at.checked_add(len)?)?;
        let kind = self.u32(at + 4)?;
        if self.wide {
            Some((
                kind,
                self.u32(at + 0x28)? as usize,
                self.u32(at + 0x2c)? as usize,
                self.word(at + 0x18)?,
                self.word(at + 0x20)?,
            ))
        } else {
            Some((
                kind,
                self.u32(at + 0x18)? as usize,
                self.u32(at + 0x1c)? as usize,
                self.word(at + 0x10)?,
                self.word(at + 0x14)?,
            ))
        }
    }

    fn section_count(&self) -> Option<usize> {
        let (shoff, n) = if self.wide {
            (self.word(0x28)?, self.u16(0x3c)?)
        } else {
            (self.word(0x20)?, self.u16(0x30)?)
        };
        (shoff != 0 && n != 0).then_some(n as usize)
    }

    /// The version names in the file's version-needs table (every `vna_name`); None when the
    /// file has no section table this can read (then the bytes are searched instead).
    fn version_needs(&self) -> Option<Vec<String>> {
        let count = self.section_count()?;
        let mut names = Vec::new();
        for i in 0..count {
            let (kind, link, entries, offset, size) = self.section(i)?;
            if kind != SHT_GNU_VERNEED {
                continue;
            }
            let (_, _, _, str_off, str_size) = self.section(link)?;
            let strtab = self.b.get(str_off..str_off.checked_add(str_size)?)?;
            let end = offset.checked_add(size)?;
            let mut need = offset;
            // Bounded by the section's entry count and its size, whatever the links say.
            for _ in 0..entries.min(4096) {
                if need.checked_add(16)? > end {
                    break;
                }
                let (cnt, aux, next) = (
                    self.u16(need + 2)?,
                    self.u32(need + 8)?,
                    self.u32(need + 12)?,
                );
                let mut a = need.checked_add(aux as usize)?;
                for _ in 0..cnt.min(4096) {
                    if a.checked_add(16)? > end {
                        break;
                    }
                    let name = self.u32(a + 8)? as usize;
                    if let Some(s) = strtab.get(name..) {
                        let len = s.iter().position(|&b| b == 0).unwrap_or(s.len()).min(64);
                        names.push(String::from_utf8_lossy(&s[..len]).into_owned());
                    }
                    let an = self.u32(a + 12)?;
                    if an == 0 {
                        break;
                    }
                    a = a.checked_add(an as usize)?;
                }
                if next == 0 {
                    break;
                }
                need = need.checked_add(next as usize)?;
            }
        }
        Some(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 64-bit little-endian ELF with a version-needs table naming `versions` (for
    /// libc.so.6), a string table, and `extra` bytes in a section of its own.
    fn elf_with(machine: u16, versions: &[&str], extra: &[u8]) -> Vec<u8> {
        let mut strtab = vec![0u8];
        let libc = strtab.len();
        strtab.extend_from_slice(b"libc.so.6\0");
        let mut name_at = Vec::new();
        for v in versions {
            name_at.push(strtab.len());
            strtab.extend_from_slice(v.as_bytes());
            strtab.push(0);
        }
        let mut verneed = Vec::new();
        // Verneed: version, cnt, file, aux, next
        verneed.extend_from_slice(&1u16.to_le_bytes());
        verneed.extend_from_slice(&(versions.len() as u16).to_le_bytes());
        verneed.extend_from_slice(&(libc as u32).to_le_bytes());
        verneed.extend_from_slice(&16u32.to_le_bytes());
        verneed.extend_from_slice(&0u32.to_le_bytes());
        for (i, at) in name_at.iter().enumerate() {
            // Vernaux: hash, flags, other, name, next
            verneed.extend_from_slice(&0u32.to_le_bytes());
            verneed.extend_from_slice(&0u16.to_le_bytes());
            verneed.extend_from_slice(&(i as u16 + 2).to_le_bytes());
            verneed.extend_from_slice(&(*at as u32).to_le_bytes());
            let next: u32 = if i + 1 < versions.len() { 16 } else { 0 };
            verneed.extend_from_slice(&next.to_le_bytes());
        }
        let mut f = vec![0u8; 64];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[6] = 1;
        f[18..20].copy_from_slice(&machine.to_le_bytes());
        let str_off = f.len();
        f.extend_from_slice(&strtab);
        let need_off = f.len();
        f.extend_from_slice(&verneed);
        let extra_off = f.len();
        f.extend_from_slice(extra);
        while !f.len().is_multiple_of(8) {
            f.push(0);
        }
        let shoff = f.len();
        // Sections: null, .dynstr, .gnu.version_r, .rodata
        let mut sh = |kind: u32, link: u32, info: u32, off: usize, size: usize| {
            let mut s = vec![0u8; 64];
            s[4..8].copy_from_slice(&kind.to_le_bytes());
            s[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            s[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            s[0x28..0x2c].copy_from_slice(&link.to_le_bytes());
            s[0x2c..0x30].copy_from_slice(&info.to_le_bytes());
            f.extend_from_slice(&s);
        };
        sh(0, 0, 0, 0, 0);
        sh(3, 0, 0, str_off, strtab.len());
        sh(SHT_GNU_VERNEED, 1, 1, need_off, verneed.len());
        sh(1, 0, 0, extra_off, extra.len());
        f[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        f[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        f[0x3c..0x3e].copy_from_slice(&4u16.to_le_bytes());
        f
    }

    #[test]
    fn the_highest_glibc_version_the_linker_table_names() {
        let f = elf_with(
            62,
            &["GLIBC_2.2.5", "GLIBC_2.17", "GLIBC_2.3.4", "GLIBC_PRIVATE"],
            b"",
        );
        assert_eq!(
            read(&f),
            Some(Needs {
                machine: "x86_64".into(),
                glibc: Some("2.17".into())
            })
        );
        // A string elsewhere in the file is not a need when the table says otherwise.
        let f = elf_with(183, &["GLIBC_2.17"], b"GLIBC_2.99\0");
        assert_eq!(read(&f).unwrap().glibc.as_deref(), Some("2.17"));
        assert_eq!(read(&f).unwrap().machine, "aarch64");
        // A table that names no glibc version: a binary that needs none.
        let f = elf_with(62, &[], b"GLIBC_2.99\0");
        assert_eq!(read(&f).unwrap().glibc, None);
    }

    #[test]
    fn a_file_without_sections_is_searched_as_elf_sh_did() {
        // tests/e2e.bats's headers: an aarch64 one, an x86-64 one needing a future glibc.
        let mut arm = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x02\0\xb7\0".to_vec();
        arm.extend_from_slice(&[0; 64]);
        assert_eq!(
            read(&arm),
            Some(Needs {
                machine: "aarch64".into(),
                glibc: None
            })
        );
        let mut new = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x02\0\x3e\0".to_vec();
        new.extend_from_slice(&[0; 200]);
        new.extend_from_slice(b"GLIBC_2.17\0GLIBC_2.99\0GLIBC_2.2.5\0GLIBC_PRIVATE\0GLIBC_3\0");
        assert_eq!(read(&new).unwrap().glibc.as_deref(), Some("2.99"));
        assert_eq!(read(b"#!/bin/sh\necho hi\n"), None);
        assert_eq!(read(b"\x7fEL"), None);
        let mut odd = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x02\0\x99\0".to_vec();
        odd.extend_from_slice(&[0xff; 64]);
        assert_eq!(read(&odd).unwrap().machine, "elf-machine-153");
    }

    #[test]
    fn damaged_files_are_read_without_a_panic() {
        let f = elf_with(62, &["GLIBC_2.2.5", "GLIBC_2.17"], b"GLIBC_2.3\0");
        for len in 0..f.len() {
            let _ = read(&f[..len]);
        }
        for i in 4..f.len() {
            for byte in [0x00, 0x7f, 0xff] {
                let mut g = f.clone();
                g[i] = byte;
                let _ = read(&g);
            }
        }
    }

    #[test]
    fn this_test_binary_reads_as_the_machine_it_runs_on() {
        let me = std::fs::read("/proc/self/exe").unwrap();
        let needs = read(&me).unwrap();
        assert_eq!(needs.machine, std::env::consts::ARCH);
        if cfg!(target_env = "gnu") {
            let v = needs.glibc.expect("a glibc build needs glibc");
            assert!(version_le("2.2.5", &v), "{v}");
        }
    }

    #[test]
    fn versions_compare_by_number() {
        assert!(version_le("2.17", "2.36"));
        assert!(version_le("2.17", "2.17"));
        assert!(!version_le("2.39", "2.31"));
        assert!(!version_le("2.3.4", "2.2.5"));
        assert!(version_le("2.9", "2.17"));
        assert!(version_le("2.17", "2.17.1"));
    }

    #[test]
    fn a_build_of_uncommitted_changes_is_named_by_its_bytes() {
        let id = format!("{}-dirty-0123456789ab", "a".repeat(40));
        let bin = [b"xx\0".as_slice(), id.as_bytes(), b"cdef\0"].concat();
        assert_eq!(dirty_release(&bin), Some(id));
        let unknown = format!("{}-dirty-unknown", "f".repeat(40));
        assert_eq!(dirty_release(unknown.as_bytes()), Some(unknown.clone()));
        assert_eq!(
            dirty_release(format!("{}-dirty-0123", "a".repeat(40)).as_bytes()),
            None
        );
        assert_eq!(
            dirty_release(format!("{}-dirty-0123456789ab", "a".repeat(39)).as_bytes()),
            None
        );
        assert_eq!(dirty_release(b"-dirty-"), None);
    }
}
