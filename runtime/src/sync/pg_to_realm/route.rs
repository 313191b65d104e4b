//! Routing: which realm a row of a class table belongs to — a path template read forwards or a
//! closure (the original's `mapPostgresChangeToRealmPath`). A value that would make an invalid
//! realm path is an error here, so the row is rejected, never written elsewhere.

use std::fmt;
use std::sync::Arc;

use crate::replication::ColumnValue;
use crate::store::RealmPath;
use crate::template::PathTemplate;

/// A row's column values as text, for a routing closure: `get("user_id")`.
#[derive(Debug)]
pub struct PgRow<'a> {
    columns: &'a [String],
    values: &'a [ColumnValue],
}

impl<'a> PgRow<'a> {
    pub(crate) fn new(columns: &'a [String], values: &'a [ColumnValue]) -> Self {
        PgRow { columns, values }
    }

    /// The text of `column`; `None` when it is NULL, absent, or a TOASTed value the change did
    /// not carry because it did not change.
    pub fn get(&self, column: &str) -> Option<&str> {
        let i = self.columns.iter().position(|c| c == column)?;
        self.values.get(i)?.as_text()
    }

    /// Whether `column` is a TOASTed value this change did not carry (it did not change).
    pub fn is_unchanged(&self, column: &str) -> bool {
        let i = self.columns.iter().position(|c| c == column);
        matches!(
            i.and_then(|i| self.values.get(i)),
            Some(ColumnValue::UnchangedToast)
        )
    }
}

/// A routing closure: `(table, row) → realm path`, the original's `mapPostgresChangeToRealmPath`.
pub type RouteFn = dyn Fn(&str, &PgRow<'_>) -> Result<RealmPath, String> + Send + Sync;

/// Which realm a row of a class table belongs to.
#[derive(Clone)]
pub enum RealmRouter {
    /// A template such as `/myRealm` or `/{user_id}/myRealm` (captures name columns).
    Template(PathTemplate),
    /// A closure.
    Closure(Arc<RouteFn>),
}

impl fmt::Debug for RealmRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RealmRouter::Template(t) => write!(f, "Template({:?})", t.as_str()),
            RealmRouter::Closure(_) => f.write_str("Closure(..)"),
        }
    }
}

impl RealmRouter {
    /// Route with a closure.
    pub fn closure(
        f: impl Fn(&str, &PgRow<'_>) -> Result<RealmPath, String> + Send + Sync + 'static,
    ) -> Self {
        RealmRouter::Closure(Arc::new(f))
    }
}

/// Where a row goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// This realm.
    Path(RealmPath),
    /// A routing column is a TOASTed value that did not change: the row stays where it is.
    Unchanged,
}
