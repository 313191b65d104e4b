//! Who may use which realm: the admin token, signed expiring user tokens, and the access rule.
//!
//! The admin token is a random secret created on first start at `<data_dir>/keys/admin.token`
//! (like the original server's `/data/keys`), or given by `PGREALM_ADMIN_TOKEN` / a file. User
//! tokens are `pgr1.<payload>.<signature>`: base64url JSON `{"sub","exp"}` signed with
//! HMAC-SHA256 under a key kept in `<data_dir>/keys/signing.key`. This module never logs a token
//! or a key, and compares secrets in constant time.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

const TOKEN_PREFIX: &str = "pgr1";
/// The longest token accepted; anything longer is malformed before any parsing.
const MAX_TOKEN_LEN: usize = 4096;
/// The longest user id (one realm path segment).
pub const MAX_USER_ID_LEN: usize = 128;

/// The caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// The admin: every realm, every endpoint.
    Admin,
    /// A user: realms under `/<user id>/`, plus realms the configuration marks readable.
    User(String),
}

impl Identity {
    /// The user id `~` expands to; the admin's `~` is `admin`, a segment no user id can take
    /// by accident because user tokens for it are refused.
    pub fn user_id(&self) -> &str {
        match self {
            Identity::Admin => "admin",
            Identity::User(id) => id,
        }
    }
}

/// Read or write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reading objects, schema, changes.
    Read,
    /// Writing transactions.
    Write,
}

/// Why a request is refused. `Unauthenticated` maps to 401, `Forbidden` to 403.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token, or one that is malformed, forged or expired.
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid token that may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The keys could not be read or created.
    #[error("{0}")]
    Keys(String),
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
}

/// Checks a user id: one realm path segment (`[A-Za-z0-9_.-]`, not `.` or `..`), bounded.
pub fn check_user_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_USER_ID_LEN {
        return Err(format!("a user id has 1 to {MAX_USER_ID_LEN} characters"));
    }
    if id == "." || id == ".." || id == "admin" {
        return Err(format!("{id:?} cannot be a user id"));
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(format!(
            "user id {id:?} may only contain letters, digits, `_`, `.` and `-`"
        ));
    }
    Ok(())
}

/// The keys of one object server.
#[derive(Clone)]
pub struct Keys {
    admin_token: String,
    signing_key: Vec<u8>,
    admin_token_path: Option<PathBuf>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("admin_token_path", &self.admin_token_path)
            .finish_non_exhaustive()
    }
}

fn random_bytes(n: usize) -> Result<Vec<u8>, AuthError> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf)
        .map_err(|e| AuthError::Keys(format!("the system has no randomness to make keys: {e}")))?;
    Ok(buf)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Write a secret file readable by its owner only, atomically (a crash leaves no half file).
fn write_secret(path: &Path, contents: &str) -> Result<(), AuthError> {
    let err = |e: std::io::Error| AuthError::Keys(format!("cannot write {}: {e}", path.display()));
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(err)?;
    let tmp = path.with_extension("tmp");
    {
        let mut options = fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut f = options.open(&tmp).map_err(err)?;
        f.write_all(contents.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    fs::rename(&tmp, path).map_err(err)
}

fn read_or_create(
    path: &Path,
    make: impl FnOnce() -> Result<String, AuthError>,
) -> Result<String, AuthError> {
    match fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
        Ok(_) => Err(AuthError::Keys(format!(
            "{} is empty; delete it to have a new one made",
            path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let value = make()?;
            write_secret(path, &format!("{value}\n"))?;
            Ok(value)
        }
        Err(e) => Err(AuthError::Keys(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

impl Keys {
    /// The keys of the server whose data lives in `data_dir`: `keys/admin.token` and
    /// `keys/signing.key`, created on first start. `admin_token` (from `PGREALM_ADMIN_TOKEN` or a
    /// file the operator names) replaces the stored admin token when given.
    pub fn load_or_create(data_dir: &Path, admin_token: Option<String>) -> Result<Keys, AuthError> {
        let keys_dir = data_dir.join("keys");
        let admin_path = keys_dir.join("admin.token");
        let admin_token =
            match admin_token {
                Some(t) if t.trim().len() >= 16 => t.trim().to_owned(),
                Some(_) => return Err(AuthError::Keys(
                    "the admin token given is shorter than 16 characters; use a long random secret"
                        .into(),
                )),
                None => read_or_create(&admin_path, || Ok(hex(&random_bytes(32)?)))?,
            };
        let signing = read_or_create(&keys_dir.join("signing.key"), || {
            Ok(hex(&random_bytes(32)?))
        })?;
        Ok(Keys {
            admin_token,
            signing_key: signing.into_bytes(),
            admin_token_path: Some(admin_path),
        })
    }

    /// Keys held in memory only (tests, remote clients that only verify nothing).
    pub fn ephemeral() -> Result<Keys, AuthError> {
        Ok(Keys {
            admin_token: hex(&random_bytes(32)?),
            signing_key: random_bytes(32)?,
            admin_token_path: None,
        })
    }

    /// The admin token (to hand to the operator; never log it).
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// Where the admin token is stored, when it is.
    pub fn admin_token_path(&self) -> Option<&Path> {
        self.admin_token_path.as_deref()
    }

    fn mac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as KeyInit>::new_from_slice(&self.signing_key)
            .expect("HMAC takes keys of any length")
    }

    /// Issue a token for `user_id`, valid for `ttl_seconds` from `now` (unix seconds).
    pub fn issue(&self, user_id: &str, ttl_seconds: i64, now: i64) -> Result<String, AuthError> {
        check_user_id(user_id).map_err(AuthError::Forbidden)?;
        let claims = Claims {
            sub: user_id.to_owned(),
            exp: now.saturating_add(ttl_seconds),
        };
        let payload =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("claims serialize"));
        let signed = format!("{TOKEN_PREFIX}.{payload}");
        let mut mac = self.mac();
        mac.update(signed.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        Ok(format!("{signed}.{sig}"))
    }

    /// Who presents `token` at `now` (unix seconds).
    pub fn verify(&self, token: &str, now: i64) -> Result<Identity, AuthError> {
        let bad = |why: &str| Err(AuthError::Unauthenticated(why.to_owned()));
        if token.is_empty() {
            return bad("no token: send Authorization: Bearer <token>");
        }
        if token.len() > MAX_TOKEN_LEN {
            return bad("malformed token");
        }
        if constant_time_eq(token.as_bytes(), self.admin_token.as_bytes()) {
            return Ok(Identity::Admin);
        }
        let mut parts = token.split('.');
        let (Some(prefix), Some(payload), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return bad("malformed token");
        };
        if prefix != TOKEN_PREFIX {
            return bad("malformed token");
        }
        let Ok(sig) = URL_SAFE_NO_PAD.decode(sig) else {
            return bad("malformed token");
        };
        let mut mac = self.mac();
        mac.update(format!("{prefix}.{payload}").as_bytes());
        if mac.verify_slice(&sig).is_err() {
            return bad("invalid token signature");
        }
        let Ok(claims) = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| ())
            .and_then(|b| serde_json::from_slice::<Claims>(&b).map_err(|_| ()))
        else {
            return bad("malformed token");
        };
        if claims.exp <= now {
            return bad("token expired; ask for a new one");
        }
        check_user_id(&claims.sub).map_err(AuthError::Unauthenticated)?;
        Ok(Identity::User(claims.sub))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether `who` may `access` the realm at `path` (already validated, `~` already expanded).
/// Users own the realms under `/<user id>/`; `readable` lists regexes of realms every user may
/// read.
pub fn authorize(
    who: &Identity,
    path: &str,
    access: Access,
    readable: &[regex::Regex],
) -> Result<(), AuthError> {
    let user = match who {
        Identity::Admin => return Ok(()),
        Identity::User(u) => u,
    };
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    if first == user {
        return Ok(());
    }
    if access == Access::Read && readable.iter().any(|r| r.is_match(path)) {
        return Ok(());
    }
    Err(AuthError::Forbidden(format!(
        "user {user:?} may not {} realm {path}",
        match access {
            Access::Read => "read",
            Access::Write => "write",
        }
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_and_expire() {
        let keys = Keys::ephemeral().unwrap();
        let t = keys.issue("u1", 60, 1_000).unwrap();
        assert_eq!(keys.verify(&t, 1_030).unwrap(), Identity::User("u1".into()));
        assert!(
            matches!(keys.verify(&t, 1_060), Err(AuthError::Unauthenticated(m)) if m.contains("expired"))
        );
        assert_eq!(keys.verify(keys.admin_token(), 0).unwrap(), Identity::Admin);
    }

    #[test]
    fn forged_and_malformed_tokens_are_refused() {
        let keys = Keys::ephemeral().unwrap();
        let other = Keys::ephemeral().unwrap();
        let forged = other.issue("u1", 60, 0).unwrap();
        assert!(
            matches!(keys.verify(&forged, 1), Err(AuthError::Unauthenticated(m)) if m.contains("signature"))
        );
        // A payload swapped under a valid signature.
        let t = keys.issue("u1", 60, 0).unwrap();
        let evil = keys.issue("u2", 60, 0).unwrap();
        let mixed = format!(
            "{}.{}.{}",
            TOKEN_PREFIX,
            evil.split('.').nth(1).unwrap(),
            t.split('.').nth(2).unwrap()
        );
        assert!(keys.verify(&mixed, 1).is_err());
        for bad in [
            "",
            "x",
            "pgr1.a",
            "pgr1.a.b.c",
            "pgr2.a.b",
            &"a".repeat(5000),
        ] {
            assert!(
                matches!(keys.verify(bad, 1), Err(AuthError::Unauthenticated(_))),
                "{bad:?}"
            );
        }
        assert!(keys.issue("..", 60, 0).is_err());
        assert!(keys.issue("a/b", 60, 0).is_err());
    }

    #[test]
    fn users_own_their_realms_only() {
        let u1 = Identity::User("u1".into());
        let readable = [regex::Regex::new("^/shared/").unwrap()];
        assert!(authorize(&u1, "/u1/myRealm", Access::Write, &readable).is_ok());
        assert!(matches!(
            authorize(&u1, "/u2/myRealm", Access::Read, &readable),
            Err(AuthError::Forbidden(_))
        ));
        assert!(authorize(&u1, "/shared/news", Access::Read, &readable).is_ok());
        assert!(authorize(&u1, "/shared/news", Access::Write, &readable).is_err());
        assert!(authorize(&u1, "/u1x/myRealm", Access::Read, &readable).is_err());
        assert!(authorize(&Identity::Admin, "/u2/myRealm", Access::Write, &[]).is_ok());
    }

    #[test]
    fn keys_persist_in_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let a = Keys::load_or_create(dir.path(), None).unwrap();
        let b = Keys::load_or_create(dir.path(), None).unwrap();
        assert_eq!(a.admin_token(), b.admin_token());
        let t = a.issue("u1", 60, 0).unwrap();
        assert!(b.verify(&t, 1).is_ok());
        let on_disk = std::fs::read_to_string(dir.path().join("keys/admin.token")).unwrap();
        assert_eq!(on_disk.trim(), a.admin_token());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("keys/admin.token"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let given =
            Keys::load_or_create(dir.path(), Some("0123456789abcdef-given".into())).unwrap();
        assert_eq!(
            given.verify("0123456789abcdef-given", 0).unwrap(),
            Identity::Admin
        );
        assert!(Keys::load_or_create(dir.path(), Some("short".into())).is_err());
    }
}
