//! Where a realm object goes in PostgreSQL: its table and the extra column values its realm path
//! stands for (the original adapter's `mapRealmChangeToPostgresTable` with `extraProperties`).
//!
//! Two forms: the realm path template read backwards (`/{user_id}/myRealm` gives the column
//! `user_id` the text of that segment, converted by PostgreSQL to the column's type), or a closure
//! given the realm path and the object. This module decides nothing about SQL.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use pgrealm_schema::{Object, Value};

use crate::store::RealmPath;
use crate::template::PathTemplate;

/// The closure form: given the realm path and the object (see [`RealmMapping::closure`] for
/// what the object holds), the table and extra column values, or `None` to leave the object
/// out of PostgreSQL.
pub type MapFn =
    dyn Fn(&RealmPath, &Object) -> Option<(String, BTreeMap<String, Value>)> + Send + Sync;

/// How a realm object maps to a PostgreSQL row.
#[derive(Clone)]
pub enum RealmMapping {
    /// Every object goes to its class's table; no extra columns.
    Plain,
    /// The template read backwards: each named capture becomes a column value (written as text
    /// and converted by PostgreSQL to the column's type). A realm path that does not have the
    /// template's shape maps to its class's table without extra columns.
    Template(PathTemplate),
    /// A closure; see [`RealmMapping::closure`].
    Closure(Arc<MapFn>),
}

impl fmt::Debug for RealmMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RealmMapping::Plain => f.write_str("Plain"),
            RealmMapping::Template(t) => f.debug_tuple("Template").field(t).finish(),
            RealmMapping::Closure(_) => f.write_str("Closure(..)"),
        }
    }
}

/// One extra column value of a row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Extra {
    pub(crate) column: String,
    pub(crate) value: Value,
    /// The value is text read from a realm path: PostgreSQL converts it to the column's type.
    pub(crate) from_text: bool,
}

/// Where one object's row lives.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Target {
    pub(crate) table: String,
    pub(crate) extras: Vec<Extra>,
}

impl RealmMapping {
    /// The closure form. The object it is given holds every property for a created object;
    /// for other changes only its primary key (and, for a changed property, that property):
    /// the mapping must be decidable from the realm path and the key, as in the original.
    ///
    /// ```
    /// use std::collections::BTreeMap;
    /// use pgrealm_runtime::sync::realm_to_pg::RealmMapping;
    /// use pgrealm_schema::Value;
    ///
    /// // `/42/inbox` writes 42 into both `owner_id` and `created_by` of table `message`.
    /// let mapping = RealmMapping::closure(|path, _object| {
    ///     let owner: i64 = path.segments().next()?.parse().ok()?;
    ///     let mut extra = BTreeMap::new();
    ///     extra.insert("owner_id".to_owned(), Value::Int(owner));
    ///     extra.insert("created_by".to_owned(), Value::Int(owner));
    ///     Some(("message".to_owned(), extra))
    /// });
    /// # let _ = mapping;
    /// ```
    pub fn closure(
        f: impl Fn(&RealmPath, &Object) -> Option<(String, BTreeMap<String, Value>)>
            + Send
            + Sync
            + 'static,
    ) -> Self {
        RealmMapping::Closure(Arc::new(f))
    }

    /// The template form, or [`RealmMapping::Plain`] for a template without captures.
    pub fn template(template: PathTemplate) -> Self {
        if template.captures().is_empty() {
            RealmMapping::Plain
        } else {
            RealmMapping::Template(template)
        }
    }

    /// The row target of `object` (of a class whose table is `table`) in realm `path`; `None`
    /// when the closure leaves it out.
    pub(crate) fn target(&self, path: &RealmPath, table: &str, object: &Object) -> Option<Target> {
        match self {
            RealmMapping::Plain => Some(Target {
                table: table.to_owned(),
                extras: Vec::new(),
            }),
            RealmMapping::Template(template) => {
                let extras = template
                    .match_path(path.as_str())
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(column, text)| Extra {
                        column,
                        value: Value::String(text),
                        from_text: true,
                    })
                    .collect();
                Some(Target {
                    table: table.to_owned(),
                    extras,
                })
            }
            RealmMapping::Closure(f) => {
                let (table, extra) = f(path, object)?;
                Some(Target {
                    table,
                    extras: extra
                        .into_iter()
                        .map(|(column, value)| Extra {
                            column,
                            value,
                            from_text: false,
                        })
                        .collect(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_read_backwards_gives_text_columns() {
        let mapping = RealmMapping::template(PathTemplate::parse("/{user_id}/myRealm").unwrap());
        let path = RealmPath::parse("/u7/myRealm").unwrap();
        let target = mapping.target(&path, "item", &Object::new("Item")).unwrap();
        assert_eq!(target.table, "item");
        assert_eq!(
            target.extras,
            vec![Extra {
                column: "user_id".into(),
                value: Value::String("u7".into()),
                from_text: true
            }]
        );
        // Another shape: no extra columns.
        let other = RealmPath::parse("/shared").unwrap();
        assert!(mapping
            .target(&other, "item", &Object::new("Item"))
            .unwrap()
            .extras
            .is_empty());
    }

    #[test]
    fn a_closure_may_write_one_value_to_two_columns_or_skip() {
        let mapping = RealmMapping::closure(|path, _| {
            let id = path.segments().next()?.to_owned();
            if id == "skip" {
                return None;
            }
            let mut extra = BTreeMap::new();
            extra.insert("a".to_owned(), Value::String(id.clone()));
            extra.insert("b".to_owned(), Value::String(id));
            Some(("t2".to_owned(), extra))
        });
        let target = mapping
            .target(&RealmPath::parse("/x/r").unwrap(), "t", &Object::new("C"))
            .unwrap();
        assert_eq!(target.table, "t2");
        assert_eq!(target.extras.len(), 2);
        assert!(mapping
            .target(
                &RealmPath::parse("/skip/r").unwrap(),
                "t",
                &Object::new("C")
            )
            .is_none());
    }
}
