//! The SQL text realm → PostgreSQL runs, built from the schema and the row targets: multi-row
//! upserts, placeholders with the casts some columns need, list subtables. Pure functions and
//! the shapes of queued rows; nothing here talks to a server. Identifiers are always quoted
//! ([`quote_ident`]); values are never part of the text.

use std::collections::{BTreeMap, HashSet};

use pgrealm_schema::ddl::quote_ident;
use pgrealm_schema::types::normalize_postgres_type;
use pgrealm_schema::{Class, ListItem, Object, PrimaryKey, Property, PropertyType, Schema, Value};

use super::refusal::Failure;

/// A row value with the column it goes to and how it is written.
#[derive(Debug, Clone)]
pub(super) struct Cell {
    pub(super) column: String,
    pub(super) value: Value,
    /// `$n::text::tsvector`, or `CAST($n::text AS <type>)` for a path capture.
    pub(super) cast: Option<String>,
}

/// Consecutive creates waiting to be written together.
#[derive(Debug, Default)]
pub(super) struct Creates {
    /// (table, key column, shape) → rows, in arrival order of the shapes.
    pub(super) groups: Vec<RowGroup>,
    pub(super) keys: HashSet<(String, PrimaryKey)>,
    /// subtable → (item column, owners, rows of (owner, idx, item)).
    pub(super) lists: BTreeMap<String, ListGroup>,
}

#[derive(Debug)]
pub(super) struct RowGroup {
    pub(super) table: String,
    pub(super) key_column: String,
    pub(super) columns: Vec<(String, Option<String>)>,
    pub(super) rows: Vec<Vec<Value>>,
}

#[derive(Debug)]
pub(super) struct ListGroup {
    pub(super) item_column: &'static str,
    pub(super) owners: Vec<Value>,
    pub(super) rows: Vec<[Value; 3]>,
}

impl Creates {
    pub(super) fn is_empty(&self) -> bool {
        self.groups.is_empty() && self.lists.is_empty()
    }
}

/// A list property's subtable.
#[derive(Debug)]
pub(super) struct ListTarget {
    pub(super) table: String,
    pub(super) item_column: &'static str,
}

pub(super) fn list_target(class: &Class, table: &str, property: &Property) -> ListTarget {
    let item_column = match &property.ty {
        PropertyType::List(ListItem::Object(_)) => "target",
        _ => "value",
    };
    let table = if table == class.table {
        class.list_table(property)
    } else {
        format!("{table}_{}", property.column)
    };
    ListTarget { table, item_column }
}

/// An object holding only its primary key, as mapping closures are given for non-creates.
pub(crate) fn key_object(schema: &Schema, class: &str, key: &PrimaryKey) -> Object {
    let mut object = Object::new(class);
    if let Some(p) = schema.class(class).and_then(Class::primary_key) {
        object.values.insert(p.name.clone(), key.to_value());
    }
    object
}

pub(super) fn key_column(class: &Class) -> Result<String, Failure> {
    class
        .primary_key()
        .map(|p| p.column.clone())
        .ok_or_else(|| Failure::Refused(format!("class `{}` has no primary key", class.name)))
}

pub(super) fn tsvector_cast(property: &Property) -> Option<String> {
    property
        .postgres_type
        .as_deref()
        .filter(|t| normalize_postgres_type(t) == "tsvector")
        .map(|_| "tsvector".to_owned())
}

/// `$n`, or `CAST($n::text AS <type>)` for values PostgreSQL converts from text.
pub(super) fn placeholder(n: usize, cast: Option<&str>) -> String {
    match cast {
        None => format!("${n}"),
        Some(ty) => format!("CAST(${n}::text AS {ty})"),
    }
}

/// The multi-row upsert of `rows` rows of `group`: the realm's values win over a row
/// PostgreSQL already has (PostgreSQL's commit order decides, and this commit is later).
pub(super) fn upsert_sql(group: &RowGroup, rows: usize) -> String {
    let columns: Vec<String> = group.columns.iter().map(|(c, _)| quote_ident(c)).collect();
    let mut sql = format!(
        "INSERT INTO {} ({}) VALUES ",
        quote_ident(&group.table),
        columns.join(", ")
    );
    let width = group.columns.len();
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for (c, (_, cast)) in group.columns.iter().enumerate() {
            if c > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&placeholder(r * width + c + 1, cast.as_deref()));
        }
        sql.push(')');
    }
    let updates: Vec<String> = group
        .columns
        .iter()
        .filter(|(c, _)| *c != group.key_column)
        .map(|(c, _)| format!("{0} = EXCLUDED.{0}", quote_ident(c)))
        .collect();
    sql.push_str(&format!(
        " ON CONFLICT ({}) ",
        quote_ident(&group.key_column)
    ));
    if updates.is_empty() {
        sql.push_str("DO NOTHING");
    } else {
        sql.push_str("DO UPDATE SET ");
        sql.push_str(&updates.join(", "));
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upserts_quote_cast_and_number_parameters_row_by_row() {
        let group = RowGroup {
            table: "my item".into(),
            key_column: "id".into(),
            columns: vec![
                ("id".into(), None),
                ("user_id".into(), Some("bigint".into())),
            ],
            rows: Vec::new(),
        };
        assert_eq!(
            upsert_sql(&group, 2),
            "INSERT INTO \"my item\" (\"id\", \"user_id\") VALUES ($1, CAST($2::text AS bigint)), \
             ($3, CAST($4::text AS bigint)) ON CONFLICT (\"id\") DO UPDATE SET \"user_id\" = \
             EXCLUDED.\"user_id\""
        );
    }
}
