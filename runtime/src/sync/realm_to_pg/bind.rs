//! Queued rows bound column by column: one array parameter per column
//! (`unnest($1::bigint[], $2::text[], …)`), so a statement of 1,000 rows binds a handful of
//! parameters instead of thousands, and one statement text serves any number of rows. Each
//! element is written by [`PgValue`] in the binary format of the array's element type, with the
//! same range checks and refusals as a single bound value. Nothing here builds SQL.

use bytes::{BufMut, BytesMut};
use pgrealm_schema::{PrimaryKey, Value};
use tokio_postgres::types::{to_sql_checked, IsNull, Kind, ToSql, Type};

use crate::pg::PgValue;

type BoxError = Box<dyn std::error::Error + Sync + Send>;

/// A queued row: its values by column.
pub(super) trait Row {
    /// The value of column `column`.
    fn cell(&self, column: usize) -> &Value;
}

impl Row for Vec<Value> {
    fn cell(&self, column: usize) -> &Value {
        &self[column]
    }
}

impl<const N: usize> Row for [Value; N] {
    fn cell(&self, column: usize) -> &Value {
        &self[column]
    }
}

/// A single value is a row of one column.
impl Row for Value {
    fn cell(&self, _: usize) -> &Value {
        self
    }
}

/// A value of a queued row that its column cannot hold, with the object it belongs to.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub(super) struct RefusedValue {
    pub(super) class: String,
    pub(super) key: PrimaryKey,
    /// The encoder's refusal (a [`pgrealm_schema::ValueError`]).
    #[source]
    pub(super) source: BoxError,
}

impl RefusedValue {
    /// The object whose value `e` refused, when an array parameter named one.
    pub(super) fn object_of(e: &tokio_postgres::Error) -> Option<(String, PrimaryKey)> {
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            if let Some(r) = s.downcast_ref::<RefusedValue>() {
                return Some((r.class.clone(), r.key.clone()));
            }
            source = s.source();
        }
        None
    }
}

/// Column `column` of `rows`, bound as one one-dimensional array.
#[derive(Debug)]
pub(super) struct ColumnArray<'a, R> {
    pub(super) rows: &'a [R],
    pub(super) column: usize,
    /// Names the values in errors: `bus.seats`.
    pub(super) label: &'a str,
    /// Names the row in errors: the class and the primary key of each row's object (`Bus 17`);
    /// empty when the rows are not objects.
    pub(super) class: &'a str,
    pub(super) keys: &'a [PrimaryKey],
}

impl<R: Row + Sync + std::fmt::Debug> ToSql for ColumnArray<'_, R> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        let Kind::Array(member) = ty.kind() else {
            return Err(format!(
                "{} is bound as an array, but the statement expects {}",
                self.label,
                ty.name()
            )
            .into());
        };
        let len = i32::try_from(self.rows.len()).map_err(|_| "too many rows for one array")?;
        let has_null = self
            .rows
            .iter()
            .any(|r| matches!(*r.cell(self.column), Value::Null));
        // Header: dimensions, null flag, element type, then (length, lower bound) of the one
        // dimension.
        out.put_i32(1);
        out.put_i32(i32::from(has_null));
        out.put_u32(member.oid());
        out.put_i32(len);
        out.put_i32(1);
        for (n, row) in self.rows.iter().enumerate() {
            let value = row.cell(self.column);
            let at = out.len();
            out.put_i32(0);
            match PgValue::new(value, self.label).to_sql(member, out) {
                Ok(IsNull::Yes) => {
                    out.truncate(at + 4);
                    out[at..at + 4].copy_from_slice(&(-1i32).to_be_bytes());
                }
                Ok(IsNull::No) => {
                    let size = i32::try_from(out.len() - at - 4)
                        .map_err(|_| format!("{}: a value larger than 2 GiB", self.label))?;
                    out[at..at + 4].copy_from_slice(&size.to_be_bytes());
                }
                Err(e) => {
                    // Say which object the value belongs to: encode it again under a label
                    // that names it (only on this error path, so the label costs nothing
                    // otherwise), and carry the object for the rejection record.
                    let Some(key) = self.keys.get(n) else {
                        return Err(e);
                    };
                    let label = format!("{} of {} {key}", self.label, self.class);
                    let mut scratch = BytesMut::new();
                    let source = PgValue::new(value, &label)
                        .to_sql(member, &mut scratch)
                        .err()
                        .unwrap_or(e);
                    return Err(Box::new(RefusedValue {
                        class: self.class.to_owned(),
                        key: key.clone(),
                        source,
                    }));
                }
            }
        }
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(ty.kind(), Kind::Array(_))
    }

    to_sql_checked!();
}
