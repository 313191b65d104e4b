//! Realm paths: the address of a realm (`/myRealm`, `/<userId>/myRealm`).
//!
//! This module owns the rules a path must follow and the expansion of `~` into the caller's user
//! id. Every other part takes a [`RealmPath`], so an invalid path cannot reach the store.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest path accepted, in bytes (after `~` expansion).
pub const MAX_PATH_LEN: usize = 1024;
/// The longest segment accepted, in bytes.
pub const MAX_SEGMENT_LEN: usize = 255;

/// A validated realm path: absolute, `/`-separated segments of `[A-Za-z0-9_.-]`, no empty, `.`
/// or `..` segment, at most [`MAX_PATH_LEN`] bytes.
///
/// ```
/// use pgrealm_runtime::RealmPath;
///
/// let path = RealmPath::parse("/transit/buses").unwrap();
/// assert_eq!(path.segments().collect::<Vec<_>>(), ["transit", "buses"]);
///
/// let mine = RealmPath::parse_for_user("/~/notes", "alice").unwrap();
/// assert_eq!(mine.as_str(), "/alice/notes");
///
/// let err = RealmPath::parse("/a/../b").unwrap_err();
/// assert!(err.to_string().contains("`..`"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RealmPath(
    // Shared, not owned: the sync engine clones a row's realm path into every operation and
    // location it records, so a clone is a count, not a copy.
    Arc<str>,
);

/// Why a string is not a realm path. The message names the rule broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("realm path {path:?} is not absolute: it must start with `/`, as in `/myRealm`")]
    NotAbsolute {
        /// The path given.
        path: String,
    },
    /// An empty segment (`//`, or a trailing `/`, or the bare root `/`).
    #[error(
        "realm path {path:?} has an empty segment: remove doubled or trailing `/` (the root `/` \
         alone is not a realm)"
    )]
    EmptySegment {
        /// The path given.
        path: String,
    },
    /// A `.` or `..` segment.
    #[error("realm path {path:?} has a `{segment}` segment: paths may not be relative")]
    DotSegment {
        /// The path given.
        path: String,
        /// `.` or `..`.
        segment: String,
    },
    /// A character outside `[A-Za-z0-9_.-]`.
    #[error(
        "realm path {path:?} has the character {ch:?} in segment {segment:?}: segments may only \
         use letters, digits, `_`, `.` and `-`"
    )]
    BadCharacter {
        /// The path given.
        path: String,
        /// The segment holding it.
        segment: String,
        /// The character.
        ch: char,
    },
    /// `~` used where no user id is known, or not as the whole first segment.
    #[error(
        "realm path {path:?} uses `~`, which only stands for the caller's user id as the whole \
         first segment (`/~/myRealm`) and only where a user id is known"
    )]
    Tilde {
        /// The path given.
        path: String,
    },
    /// The user id `~` expands to is not a valid segment.
    #[error("user id {user_id:?} cannot stand for `~` in a realm path: {reason}")]
    BadUserId {
        /// The user id.
        user_id: String,
        /// Which segment rule it breaks.
        reason: String,
    },
    /// The path or a segment is too long.
    #[error("realm path {path:?} is too long: at most {MAX_PATH_LEN} bytes, and {MAX_SEGMENT_LEN} per segment")]
    TooLong {
        /// The path given (shortened).
        path: String,
    },
}

impl RealmPath {
    /// Whether `other` is a clone of this very path (one pointer comparison; two equal paths
    /// parsed apart are not).
    pub(crate) fn is_clone_of(&self, other: &RealmPath) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Parse a path that must not contain `~` (no user is known).
    pub fn parse(path: &str) -> Result<RealmPath, PathError> {
        Self::parse_inner(path, None)
    }

    /// Parse a path for a caller with this user id: a first segment `~` becomes `user_id`.
    pub fn parse_for_user(path: &str, user_id: &str) -> Result<RealmPath, PathError> {
        if let Err(e) = check_segment(user_id, user_id) {
            return Err(PathError::BadUserId {
                user_id: user_id.to_owned(),
                reason: e.to_string(),
            });
        }
        Self::parse_inner(path, Some(user_id))
    }

    fn parse_inner(path: &str, user_id: Option<&str>) -> Result<RealmPath, PathError> {
        let Some(rest) = path.strip_prefix('/') else {
            return Err(PathError::NotAbsolute {
                path: shorten(path),
            });
        };
        let mut out = String::with_capacity(path.len());
        for (i, segment) in rest.split('/').enumerate() {
            let segment = match (i, segment, user_id) {
                (0, "~", Some(user)) => user,
                (_, s, _) if s.contains('~') => {
                    return Err(PathError::Tilde {
                        path: shorten(path),
                    })
                }
                (_, s, _) => s,
            };
            check_segment(segment, path)?;
            out.push('/');
            out.push_str(segment);
        }
        if out.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong {
                path: shorten(path),
            });
        }
        Ok(RealmPath(out.into()))
    }

    /// The path as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The segments, without the separators.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0[1..].split('/')
    }
}

fn check_segment(segment: &str, path: &str) -> Result<(), PathError> {
    if segment.is_empty() {
        return Err(PathError::EmptySegment {
            path: shorten(path),
        });
    }
    if segment == "." || segment == ".." {
        return Err(PathError::DotSegment {
            path: shorten(path),
            segment: segment.to_owned(),
        });
    }
    if segment.len() > MAX_SEGMENT_LEN {
        return Err(PathError::TooLong {
            path: shorten(path),
        });
    }
    if let Some(ch) = segment
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(PathError::BadCharacter {
            path: shorten(path),
            segment: shorten(segment),
            ch,
        });
    }
    Ok(())
}

/// Error messages quote the path; a megabyte of garbage should not become a megabyte of log.
fn shorten(s: &str) -> String {
    const KEEP: usize = 80;
    if s.len() <= KEEP {
        return s.to_owned();
    }
    let mut end = KEEP;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl fmt::Display for RealmPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for RealmPath {
    type Err = PathError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RealmPath::parse(s)
    }
}

impl AsRef<str> for RealmPath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for RealmPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RealmPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        RealmPath::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_paths_parse() {
        for p in ["/a", "/myRealm", "/u-1/my_realm.v2", "/A/B/C"] {
            assert_eq!(RealmPath::parse(p).unwrap().as_str(), p);
        }
    }

    #[test]
    fn each_rule_is_named() {
        let cases = [
            ("a", "not absolute"),
            ("/", "empty segment"),
            ("/a//b", "empty segment"),
            ("/a/", "empty segment"),
            ("/a/./b", "`.` segment"),
            ("/a/..", "`..` segment"),
            ("/a b", "character ' '"),
            ("/ä", "character 'ä'"),
            ("/~/x", "uses `~`"),
            ("/a/~", "uses `~`"),
        ];
        for (path, needle) in cases {
            let err = RealmPath::parse(path).unwrap_err().to_string();
            assert!(err.contains(needle), "{path}: {err}");
        }
        let long = format!("/{}", "a".repeat(300));
        assert!(matches!(
            RealmPath::parse(&long),
            Err(PathError::TooLong { .. })
        ));
        let many = "/abcdefghij".repeat(120);
        assert!(matches!(
            RealmPath::parse(&many),
            Err(PathError::TooLong { .. })
        ));
    }

    #[test]
    fn tilde_expands_only_first_segment() {
        let p = RealmPath::parse_for_user("/~/notes", "u42").unwrap();
        assert_eq!(p.as_str(), "/u42/notes");
        assert!(RealmPath::parse_for_user("/x/~", "u42").is_err());
        assert!(RealmPath::parse_for_user("/~x", "u42").is_err());
        let err = RealmPath::parse_for_user("/~/n", "a/b").unwrap_err();
        assert!(matches!(err, PathError::BadUserId { .. }), "{err}");
    }

    #[test]
    fn serde_validates() {
        let p: RealmPath = serde_json::from_str("\"/a/b\"").unwrap();
        assert_eq!(p.as_str(), "/a/b");
        assert!(serde_json::from_str::<RealmPath>("\"/a/../b\"").is_err());
    }
}
