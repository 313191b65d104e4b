//! Which operating-system user runs the test server.
//!
//! PostgreSQL refuses to run as root, and CI and these machines run tests as root. Then the
//! server runs as an existing `postgres` user, or as `pgrealm-test`, created (as a system user
//! without a home or login shell) when missing. As any other user, the server simply runs as
//! that user.

use std::os::unix::fs::MetadataExt;
use std::process::Command;

use super::HarnessError;

/// The user we create when no `postgres` user exists.
const CREATED_USER: &str = "pgrealm-test";

/// Who runs `initdb` and `postgres`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ServerUser {
    /// Ourselves: we are not root.
    Current,
    /// Another user we switch to when spawning the server programs.
    Other {
        /// Its uid.
        uid: u32,
        /// Its primary gid.
        gid: u32,
    },
}

impl ServerUser {
    /// Decide, creating the fallback user when we are root and none exists.
    pub(crate) fn choose() -> Result<ServerUser, HarnessError> {
        if effective_uid()? != 0 {
            return Ok(ServerUser::Current);
        }
        if let Some((uid, gid)) = lookup("postgres")? {
            return Ok(ServerUser::Other { uid, gid });
        }
        if let Some((uid, gid)) = lookup(CREATED_USER)? {
            return Ok(ServerUser::Other { uid, gid });
        }
        let out = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
            ])
            .arg(CREATED_USER)
            .output()
            .map_err(|e| HarnessError::NoUnprivilegedUser {
                reason: format!("no `postgres` user, and `useradd` could not run: {e}"),
            })?;
        // Another test process may have created it at the same moment: look again either way.
        match lookup(CREATED_USER)? {
            Some((uid, gid)) => Ok(ServerUser::Other { uid, gid }),
            None => Err(HarnessError::NoUnprivilegedUser {
                reason: format!(
                    "no `postgres` user, and `useradd --system {CREATED_USER}` failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            }),
        }
    }

    /// Apply this user to a command about to be spawned.
    pub(crate) fn apply(self, command: &mut Command) {
        if let ServerUser::Other { uid, gid } = self {
            use std::os::unix::process::CommandExt;
            // std drops supplementary groups itself when a root process sets a uid.
            command.uid(uid).gid(gid);
        }
    }

    /// Hand a path we created to the server user.
    pub(crate) fn chown(self, path: &std::path::Path) -> Result<(), HarnessError> {
        if let ServerUser::Other { uid, gid } = self {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|e| {
                HarnessError::io(format!("handing {} to uid {uid}", path.display()), e)
            })?;
        }
        Ok(())
    }
}

fn effective_uid() -> Result<u32, HarnessError> {
    // /proc/self is owned by the process's effective uid; `id -u` covers systems without /proc.
    if let Ok(meta) = std::fs::metadata("/proc/self") {
        return Ok(meta.uid());
    }
    let out = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| HarnessError::io("running `id -u` to learn our uid", e))?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| HarnessError::NoUnprivilegedUser {
            reason: "could not learn our own uid from `id -u`".into(),
        })
}

/// uid and gid of a user, from the system's user database (`id`, so NSS sources count too).
fn lookup(user: &str) -> Result<Option<(u32, u32)>, HarnessError> {
    let id = |flag: &str| -> Result<Option<u32>, HarnessError> {
        let out = Command::new("id")
            .args([flag, user])
            .output()
            .map_err(|e| HarnessError::io(format!("running `id {flag} {user}`"), e))?;
        if !out.status.success() {
            return Ok(None);
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse().ok())
    };
    Ok(match (id("-u")?, id("-g")?) {
        (Some(uid), Some(gid)) => Some((uid, gid)),
        _ => None,
    })
}
