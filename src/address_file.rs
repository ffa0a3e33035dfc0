//! The address the server listens on, written to a file for whoever started it.
//!
//! The deploy kit's preflight starts a release on `TRIBIST_LISTEN=127.0.0.1:0` (a port the
//! kernel picks) and must learn which port that was. It used to read it out of the log line
//! `listening on http://…`, so rewording that line broke upgrades. With
//! `TRIBIST_ADDRESS_FILE=PATH` set, the server writes its actual address (`127.0.0.1:PORT`
//! and a newline), once the listener is bound (by itself, or handed over by systemd or a
//! predecessor), before it answers any request. The file is written atomically (a temporary
//! file in the same directory, then rename(2)), so a reader sees no file or the whole
//! address, never part of it. It is left in place at exit (a successor rewrites it; the kit
//! removes the scratch directory it named). `server --describe` lists it as `address-file`.

use std::fs::{self, File};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::Path;

use crate::error::Error;

/// The variable that names the file.
pub const ENV: &str = "TRIBIST_ADDRESS_FILE";

/// This feature's name in `server --describe`.
pub const FEATURE: &str = "address-file";

/// What the file holds: the address and a newline.
pub fn contents(addr: SocketAddr) -> String {
    format!("{addr}\n")
}

/// Writes `addr` to `path` atomically: a temporary file beside it, then rename(2).
pub fn write(path: &Path, addr: SocketAddr) -> Result<(), Error> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(contents(addr).as_bytes())?;
        fs::rename(&tmp, path)
    })();
    result.map_err(|source| {
        let _ = fs::remove_file(&tmp);
        Error::AddressFile {
            path: path.to_path_buf(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_replaces_the_file_whole_and_leaves_no_temporary_file() {
        let dir = std::env::temp_dir().join(format!("tribist-address-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("address");
        fs::write(&path, "stale\n").unwrap();
        write(&path, "127.0.0.1:40123".parse().unwrap()).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "127.0.0.1:40123\n");
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["address"]);
        // A directory that does not exist is an error naming the file.
        let missing = dir.join("nowhere").join("address");
        let err = write(&missing, "127.0.0.1:1".parse().unwrap()).unwrap_err();
        assert!(err.to_string().contains("nowhere/address"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
