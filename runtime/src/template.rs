//! Realm path templates: `/{user_id}/myRealm`, read forwards (a row's values → the realm path it
//! belongs to) and backwards (a realm path → the column values it stands for).
//!
//! This is the declarative form of the original adapter's `mapPostgresChangeToRealmPath` and
//! `mapRealmChangeToPostgresTable`. It never decides whether a path is a valid realm path: the
//! store's path rules do, on the rendered result.

use std::collections::BTreeMap;
use std::fmt;

/// One piece of a template segment.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Capture(String),
}

/// A parsed realm path template.
#[derive(Clone, PartialEq, Eq)]
pub struct PathTemplate {
    source: String,
    /// Segments between slashes; each a sequence of literals and captures.
    segments: Vec<Vec<Piece>>,
}

/// Why a template is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid realm path template {template:?}: {reason}")]
pub struct TemplateError {
    template: String,
    reason: String,
}

impl PathTemplate {
    /// Parse a template such as `/myRealm` or `/{user_id}/myRealm`.
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        let err = |reason: &str| TemplateError {
            template: template.to_owned(),
            reason: reason.to_owned(),
        };
        let Some(rest) = template.strip_prefix('/') else {
            return Err(err("it must start with `/`"));
        };
        let mut segments = Vec::new();
        let mut names = Vec::<String>::new();
        for segment in rest.split('/') {
            if segment.is_empty() {
                return Err(err("it has an empty segment (`//` or a trailing `/`)"));
            }
            let mut pieces = Vec::new();
            let mut chars = segment.chars().peekable();
            let mut literal = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '{' => {
                        if !literal.is_empty() {
                            pieces.push(Piece::Literal(std::mem::take(&mut literal)));
                        }
                        if matches!(pieces.last(), Some(Piece::Capture(_))) {
                            return Err(err(
                                "two captures touch (`{a}{b}`): put a literal between them",
                            ));
                        }
                        let mut name = String::new();
                        loop {
                            match chars.next() {
                                Some('}') => break,
                                Some(c) if c.is_ascii_alphanumeric() || c == '_' => name.push(c),
                                Some(c) => {
                                    return Err(err(&format!(
                                        "`{c}` in a capture name: use letters, digits and `_`"
                                    )))
                                }
                                None => return Err(err("a `{` is not closed")),
                            }
                        }
                        if name.is_empty() {
                            return Err(err("an empty capture `{}`"));
                        }
                        if names.contains(&name) {
                            return Err(err(&format!("capture `{name}` appears twice")));
                        }
                        names.push(name.clone());
                        pieces.push(Piece::Capture(name));
                    }
                    '}' => return Err(err("a `}` without its `{`")),
                    c if c.is_ascii_alphanumeric() || "_.-~".contains(c) => literal.push(c),
                    c => {
                        return Err(err(&format!(
                        "`{c}` is not allowed in a realm path (use letters, digits, `_`, `.`, `-`)"
                    )))
                    }
                }
            }
            if !literal.is_empty() {
                pieces.push(Piece::Literal(literal));
            }
            segments.push(pieces);
        }
        Ok(PathTemplate {
            source: template.to_owned(),
            segments,
        })
    }

    /// The capture names, in order.
    pub fn captures(&self) -> Vec<&str> {
        self.segments
            .iter()
            .flatten()
            .filter_map(|p| match p {
                Piece::Capture(n) => Some(n.as_str()),
                Piece::Literal(_) => None,
            })
            .collect()
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Render the path for these capture values. A missing value is an error naming it; a value
    /// containing `/` is refused here so it can never address another realm.
    pub fn render(&self, value_of: impl Fn(&str) -> Option<String>) -> Result<String, String> {
        let mut out = String::new();
        self.render_into(&mut out, value_of)?;
        Ok(out)
    }

    /// [`render`](Self::render) into `out` (emptied first), from values given as any string:
    /// the sync engine renders each row's path into one buffer, from the row's own bytes.
    pub fn render_into<V: AsRef<str>>(
        &self,
        out: &mut String,
        value_of: impl Fn(&str) -> Option<V>,
    ) -> Result<(), String> {
        out.clear();
        for segment in &self.segments {
            out.push('/');
            for piece in segment {
                match piece {
                    Piece::Literal(l) => out.push_str(l),
                    Piece::Capture(name) => {
                        let v = value_of(name).ok_or_else(|| {
                            format!("no value for `{{{name}}}` (NULL or missing)")
                        })?;
                        let v = v.as_ref();
                        if v.is_empty() || v.contains('/') {
                            return Err(format!(
                                "value {v:?} of `{{{name}}}` cannot be part of a realm path"
                            ));
                        }
                        out.push_str(v);
                    }
                }
            }
        }
        Ok(())
    }

    /// Read a realm path backwards: the capture values it stands for, or `None` when the path
    /// does not have this template's shape.
    pub fn match_path(&self, path: &str) -> Option<BTreeMap<String, String>> {
        let rest = path.strip_prefix('/')?;
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.len() != self.segments.len() {
            return None;
        }
        let mut out = BTreeMap::new();
        for (part, pieces) in parts.iter().zip(&self.segments) {
            match_segment(part, pieces, &mut out)?;
        }
        Some(out)
    }
}

/// Match one segment: literals must appear in order; a capture takes the shortest text up to
/// the next literal (or the rest of the segment).
fn match_segment(
    mut text: &str,
    pieces: &[Piece],
    out: &mut BTreeMap<String, String>,
) -> Option<()> {
    let mut i = 0;
    while i < pieces.len() {
        match &pieces[i] {
            Piece::Literal(l) => text = text.strip_prefix(l.as_str())?,
            Piece::Capture(name) => {
                let value = match pieces.get(i + 1) {
                    Some(Piece::Literal(next)) => {
                        let at = text.find(next.as_str())?;
                        let (v, rest) = text.split_at(at);
                        text = rest;
                        v
                    }
                    _ => std::mem::take(&mut text),
                };
                if value.is_empty() {
                    return None;
                }
                out.insert(name.clone(), value.to_owned());
            }
        }
        i += 1;
    }
    text.is_empty().then_some(())
}

impl fmt::Debug for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PathTemplate({:?})", self.source)
    }
}

impl fmt::Display for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_reads_back() {
        let t = PathTemplate::parse("/{user_id}/myRealm").unwrap();
        assert_eq!(t.captures(), ["user_id"]);
        let path = t
            .render(|n| (n == "user_id").then(|| "u1".to_owned()))
            .unwrap();
        assert_eq!(path, "/u1/myRealm");
        let back = t.match_path("/u1/myRealm").unwrap();
        assert_eq!(back.get("user_id").map(String::as_str), Some("u1"));
        assert!(t.match_path("/u1/other").is_none());
        assert!(t.match_path("/a/b/myRealm").is_none());
    }

    #[test]
    fn captures_inside_a_segment() {
        let t = PathTemplate::parse("/org-{org}/u_{user}.data").unwrap();
        let back = t.match_path("/org-7/u_ann.data").unwrap();
        assert_eq!(back["org"], "7");
        assert_eq!(back["user"], "ann");
    }

    #[test]
    fn values_that_would_leave_the_path_are_refused() {
        let t = PathTemplate::parse("/{user_id}/myRealm").unwrap();
        assert!(t.render(|_| Some("../admin".into())).is_err());
        assert!(t.render(|_| Some(String::new())).is_err());
        assert!(t.render(|_| None).is_err());
    }

    #[test]
    fn bad_templates_say_why() {
        for bad in [
            "myRealm", "/a//b", "/{", "/{a}{b}", "/{a}/{a}", "/a b", "/{}",
        ] {
            let err = PathTemplate::parse(bad).unwrap_err().to_string();
            assert!(err.contains("invalid realm path template"), "{bad}: {err}");
        }
    }
}
