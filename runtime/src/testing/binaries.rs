//! Finding the PostgreSQL server programs (`initdb`, `pg_ctl`, `postgres`).
//!
//! Order: `PGREALM_PG_BIN_DIR`, then PATH, then `pg_config --bindir`, then Debian's
//! `/usr/lib/postgresql/<highest version>/bin`. A program found on PATH through a symlink
//! resolves to its real directory, so `bin_dir()` also holds the client tools
//! (`pg_recvlogical`, `psql`, `pg_isready`) that distributions rarely link onto PATH.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::HarnessError;

/// The programs the harness itself runs; a directory counts only when it has all of them.
const REQUIRED: [&str; 3] = ["initdb", "pg_ctl", "postgres"];

/// The directory of the PostgreSQL server programs.
pub(crate) fn find_bin_dir() -> Result<PathBuf, HarnessError> {
    find_bin_dir_from(std::env::var_os("PGREALM_PG_BIN_DIR").map(PathBuf::from))
}

/// [`find_bin_dir`] with the override passed in, so tests need not change the environment.
pub(crate) fn find_bin_dir_from(configured: Option<PathBuf>) -> Result<PathBuf, HarnessError> {
    if let Some(dir) = configured {
        return if has_all(&dir) {
            Ok(dir)
        } else {
            Err(HarnessError::BinariesNotFound)
        };
    }
    from_path()
        .or_else(from_pg_config)
        .or_else(from_debian_layout)
        .ok_or(HarnessError::BinariesNotFound)
}

fn has_all(dir: &Path) -> bool {
    REQUIRED.iter().all(|p| dir.join(p).is_file())
}

fn from_path() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        let initdb = dir.join("initdb");
        if !initdb.is_file() {
            continue;
        }
        // /usr/local/bin/initdb -> /usr/lib/postgresql/15/bin/initdb: prefer the real
        // directory, which also has the client tools.
        if let Some(real) = initdb
            .canonicalize()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
        {
            if has_all(&real) {
                return Some(real);
            }
        }
        if has_all(&dir) {
            return Some(dir);
        }
    }
    None
}

fn from_pg_config() -> Option<PathBuf> {
    let out = Command::new("pg_config").arg("--bindir").output().ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    has_all(&dir).then_some(dir)
}

fn from_debian_layout() -> Option<PathBuf> {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, bin)| has_all(bin))
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}
