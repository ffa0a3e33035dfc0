//! The install bundle as a tar stream (POSIX ustar), written from memory.
//!
//! Why: `make install` sends the units, the scripts, both binaries, the database URL and the
//! deploy key to the host as one file (`tar -x` there), over the ssh connection the checks
//! used. Written here from the bytes the kit read and checked, the URL never lands in a
//! temporary file on the deployer's machine, and what was checked is what is sent.

/// One file of the bundle: its name in the archive (no directories), mode and bytes.
pub struct Entry<'a> {
    pub name: &'a str,
    pub mode: u32,
    pub data: &'a [u8],
}

const BLOCK: usize = 512;

/// `entries` as a tar archive (`./NAME` each, owned by uid 0 with no names, as
/// `tar --no-same-owner` extracts them), ended by two zero blocks.
pub fn archive(entries: &[Entry], mtime: u64) -> Vec<u8> {
    let total: usize = entries
        .iter()
        .map(|e| BLOCK + e.data.len().div_ceil(BLOCK) * BLOCK)
        .sum();
    let mut out = Vec::with_capacity(total + 2 * BLOCK);
    for e in entries {
        out.extend_from_slice(&header(e, mtime));
        out.extend_from_slice(e.data);
        out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
    }
    out.resize(out.len() + 2 * BLOCK, 0);
    out
}

fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(&s.as_bytes()[s.len() - digits..]);
    field[digits] = 0;
}

fn header(e: &Entry, mtime: u64) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    let name = format!("./{}", e.name);
    assert!(
        name.len() < 100 && !e.name.contains('/'),
        "bundle name {name}"
    );
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h[100..108], u64::from(e.mode & 0o7777));
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], e.data.len() as u64);
    octal(&mut h[136..148], mtime);
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    use std::process::{Command, Stdio};

    #[test]
    fn gnu_tar_extracts_names_modes_and_bytes() {
        let big: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        let entries = [
            Entry {
                name: "server",
                mode: 0o755,
                data: &big,
            },
            Entry {
                name: "database_url",
                mode: 0o600,
                data: b"postgres://u:p$ '\"@h/d",
            },
            Entry {
                name: "empty",
                mode: 0o644,
                data: b"",
            },
            Entry {
                name: "exact",
                mode: 0o644,
                data: &[7u8; 512],
            },
        ];
        let tar = archive(&entries, 1_700_000_000);
        assert_eq!(tar.len() % BLOCK, 0);
        let dir = std::env::temp_dir().join(format!("tribist-tar-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("tar")
            .args(["-xf", "-", "-C"])
            .arg(&dir)
            .arg("--no-same-owner")
            .stdin(Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            println!("skipped: no tar here");
            return;
        };
        child.stdin.take().unwrap().write_all(&tar).unwrap();
        assert!(child.wait().unwrap().success());
        for e in &entries {
            let p = dir.join(e.name);
            assert_eq!(std::fs::read(&p).unwrap(), e.data, "{}", e.name);
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            // tar applies the process's umask unless it runs as root.
            assert_eq!(mode & !0o022, e.mode & !0o022, "{}", e.name);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_header_checksum_is_the_sum_of_its_bytes() {
        let h = header(
            &Entry {
                name: "x",
                mode: 0o755,
                data: b"abc",
            },
            0,
        );
        let stored = u32::from_str_radix(std::str::from_utf8(&h[148..154]).unwrap(), 8).unwrap();
        let mut blank = h;
        blank[148..156].copy_from_slice(b"        ");
        assert_eq!(stored, blank.iter().map(|&b| u32::from(b)).sum::<u32>());
        assert_eq!(&h[124..136], b"00000000003\0");
        assert_eq!(&h[..4], b"./x\0");
    }
}
