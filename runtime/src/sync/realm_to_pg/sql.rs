//! The SQL text realm → PostgreSQL runs, built from the schema and the row targets: upserts
//! and list rows bound column by column as arrays (`unnest`), multi-row upserts for columns that
//! have no array type, placeholders with the casts some columns need, list subtables. Pure functions and
//! the shapes of queued rows; nothing here talks to a server. Identifiers are always quoted
//! ([`quote_ident`]); values are never part of the text.

use std::collections::{BTreeMap, HashMap, HashSet};

use pgrealm_schema::ddl::quote_ident;
use pgrealm_schema::types::normalize_postgres_type;
use pgrealm_schema::{Class, ListItem, Object, PrimaryKey, Property, PropertyType, Schema, Value};

use super::mapping::Target;
use super::refusal::Failure;
use crate::store::RealmPath;

/// Consecutive creates waiting to be written together.
#[derive(Debug, Default)]
pub(super) struct Creates {
    /// (table, class, extra columns) → rows, in arrival order of the groups.
    pub(super) groups: Vec<RowGroup>,
    /// The keys queued per table: the same row twice in one upsert is refused by ON CONFLICT.
    pub(super) keys: HashMap<String, HashSet<PrimaryKey>>,
    /// subtable → (item column, owners, rows of (owner, idx, item)).
    pub(super) lists: BTreeMap<String, ListGroup>,
    /// The last (realm, class table) → row target, for mappings that do not look at the object
    /// (a run of creates in one realm maps them all the same way).
    pub(super) target: Option<(RealmPath, String, Target)>,
}

/// Created rows of one table and shape.
#[derive(Debug)]
pub(super) struct RowGroup {
    pub(super) table: String,
    pub(super) class: String,
    pub(super) key_column: String,
    /// Column name and, for values PostgreSQL converts from text, the type to cast to.
    pub(super) columns: Vec<(String, Option<String>)>,
    /// The extra columns of the realm path among `columns` (part of the group's identity).
    pub(super) extras: Vec<String>,
    /// How each column's values are named in errors (`Bus.seats`).
    pub(super) labels: Vec<String>,
    pub(super) rows: Vec<Vec<Value>>,
    /// The primary key of each row, to name the object a refused value belongs to.
    pub(super) keys: Vec<PrimaryKey>,
}

/// Rows of one list subtable, rewritten for created owners.
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

    /// Forget the queued rows (the cached target stays).
    pub(super) fn clear(&mut self) {
        self.groups.clear();
        self.keys.clear();
        self.lists.clear();
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

/// The multi-row upsert of `rows` rows of `group`, one parameter per value: for tables whose
/// column types the writer cannot bind as arrays (see [`unnest_upsert_sql`]).
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
    push_on_conflict(&mut sql, group);
    sql
}

/// The upsert of `group` with each column bound as one array (`types`: the element type of each
/// column's parameter, `text` for a column with a cast): one text for any number of rows, so it
/// is prepared once. The casts apply after `unnest`, as the multi-row form applies them to each
/// value.
pub(super) fn unnest_upsert_sql(group: &RowGroup, types: &[String]) -> String {
    let columns: Vec<String> = group.columns.iter().map(|(c, _)| quote_ident(c)).collect();
    let mut sql = format!(
        "INSERT INTO {} ({}) ",
        quote_ident(&group.table),
        columns.join(", ")
    );
    push_unnest_select(&mut sql, &group.columns, types);
    push_on_conflict(&mut sql, group);
    sql
}

/// The insert of list rows `(oid, idx, item)` bound as three arrays.
pub(super) fn unnest_list_insert_sql(table: &str, item_column: &str, types: &[String]) -> String {
    let columns = [
        ("oid".to_owned(), None),
        ("idx".to_owned(), None),
        (item_column.to_owned(), None),
    ];
    let mut sql = format!(
        "INSERT INTO {} (\"oid\", \"idx\", {}) ",
        quote_ident(table),
        quote_ident(item_column)
    );
    push_unnest_select(&mut sql, &columns, types);
    sql
}

/// `SELECT u.c1, CAST(u.c2 AS t), … FROM unnest($1::a[], $2::b[], …) AS u(c1, c2, …)`.
fn push_unnest_select(sql: &mut String, columns: &[(String, Option<String>)], types: &[String]) {
    let selected: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, (_, cast))| match cast {
            None => format!("u.c{}", i + 1),
            Some(ty) => format!("CAST(u.c{} AS {ty})", i + 1),
        })
        .collect();
    let arrays: Vec<String> = types
        .iter()
        .enumerate()
        .map(|(i, ty)| format!("${}::{ty}[]", i + 1))
        .collect();
    let names: Vec<String> = (1..=columns.len()).map(|i| format!("c{i}")).collect();
    sql.push_str(&format!(
        "SELECT {} FROM unnest({}) AS u({})",
        selected.join(", "),
        arrays.join(", "),
        names.join(", ")
    ));
}

/// ` ON CONFLICT (key) DO UPDATE SET …`: the realm's values win over a row PostgreSQL already
/// has (PostgreSQL's commit order decides, and this commit is later).
fn push_on_conflict(sql: &mut String, group: &RowGroup) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upserts_quote_cast_and_number_parameters_row_by_row() {
        let group = RowGroup {
            table: "my item".into(),
            class: "Item".into(),
            key_column: "id".into(),
            columns: vec![
                ("id".into(), None),
                ("user_id".into(), Some("bigint".into())),
            ],
            extras: vec!["user_id".into()],
            labels: vec!["Item.id".into(), "user_id".into()],
            rows: Vec::new(),
            keys: Vec::new(),
        };
        assert_eq!(
            upsert_sql(&group, 2),
            "INSERT INTO \"my item\" (\"id\", \"user_id\") VALUES ($1, CAST($2::text AS bigint)), \
             ($3, CAST($4::text AS bigint)) ON CONFLICT (\"id\") DO UPDATE SET \"user_id\" = \
             EXCLUDED.\"user_id\""
        );
        assert_eq!(
            unnest_upsert_sql(&group, &["bigint".into(), "text".into()]),
            "INSERT INTO \"my item\" (\"id\", \"user_id\") SELECT u.c1, CAST(u.c2 AS bigint) \
             FROM unnest($1::bigint[], $2::text[]) AS u(c1, c2) ON CONFLICT (\"id\") DO UPDATE \
             SET \"user_id\" = EXCLUDED.\"user_id\""
        );
        assert_eq!(
            unnest_list_insert_sql(
                "route_stops",
                "target",
                &["text".into(), "bigint".into(), "text".into()]
            ),
            "INSERT INTO \"route_stops\" (\"oid\", \"idx\", \"target\") SELECT u.c1, u.c2, u.c3 \
             FROM unnest($1::text[], $2::bigint[], $3::text[]) AS u(c1, c2, c3)"
        );
    }
}
