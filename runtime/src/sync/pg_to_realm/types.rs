//! PostgreSQL type names and custom types: built-in type oids named as `format_type` names them
//! (user-defined types are named by the stream's Type messages), and `[custom_postgres_types]`
//! (enums, domains) with the labels of the enum types among them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use pgrealm_schema::ScalarType;

use super::PgToRealmError;
use crate::replication::RelationCache;

/// Custom PostgreSQL types (enums, domains): type name → the realm type its values read as.
#[derive(Debug, Clone, Default)]
pub struct CustomTypes {
    /// `mood` → `string` (as in `[custom_postgres_types]`).
    pub targets: BTreeMap<String, String>,
    /// Enum labels by type name, read from the catalog (labels outside are rejected).
    pub enum_labels: HashMap<String, Arc<HashSet<String>>>,
}

impl CustomTypes {
    pub(super) fn target(&self, type_name: &str) -> Option<&str> {
        let short = type_name.rsplit('.').next().unwrap_or(type_name);
        self.targets
            .get(type_name)
            .or_else(|| self.targets.get(short))
            .map(String::as_str)
    }

    pub(super) fn labels(&self, type_name: &str) -> Option<Arc<HashSet<String>>> {
        let short = type_name.rsplit('.').next().unwrap_or(type_name);
        self.enum_labels
            .get(type_name)
            .or_else(|| self.enum_labels.get(short))
            .cloned()
    }
}

/// A realm type name of `[custom_postgres_types]`.
pub(super) fn target_scalar(target: &str) -> Option<ScalarType> {
    Some(match target {
        "string" => ScalarType::String,
        "int" => ScalarType::Int(pgrealm_schema::IntWidth::I64),
        "float" => ScalarType::Float,
        "double" => ScalarType::Double,
        "bool" => ScalarType::Bool,
        "date" => ScalarType::Date,
        _ => return None,
    })
}

/// The name PostgreSQL's `format_type` gives a built-in type oid; user-defined types are named
/// by the stream's Type messages.
pub(crate) fn builtin_type_name(oid: u32) -> Option<&'static str> {
    Some(match oid {
        16 => "boolean",
        17 => "bytea",
        18 => "\"char\"",
        19 => "name",
        20 => "bigint",
        21 => "smallint",
        23 => "integer",
        25 => "text",
        26 => "oid",
        114 => "json",
        700 => "real",
        701 => "double precision",
        1042 => "character",
        1043 => "character varying",
        1082 => "date",
        1114 => "timestamp without time zone",
        1184 => "timestamp with time zone",
        1700 => "numeric",
        2950 => "uuid",
        3614 => "tsvector",
        3802 => "jsonb",
        _ => return None,
    })
}

/// Whether a custom type's configured realm type can fill a property of type `property`.
pub(super) fn same_family(target: ScalarType, property: ScalarType) -> bool {
    match (target, property) {
        (ScalarType::Int(_), ScalarType::Int(_)) => true,
        (a, b) => a == b,
    }
}

/// Type names of a stream's relation cache.
pub(crate) fn stream_type_name(cache: &RelationCache) -> impl Fn(u32) -> Option<String> + '_ {
    move |oid| {
        cache.type_info(oid).map(|t| {
            if t.namespace == "public" || t.namespace.is_empty() {
                t.name.clone()
            } else {
                format!("{}.{}", t.namespace, t.name)
            }
        })
    }
}

/// The labels of the enum types among `names` (schema-qualified or not).
pub(super) async fn load_enum_labels(
    sql: &tokio_postgres::Client,
    names: &[String],
) -> Result<HashMap<String, Arc<HashSet<String>>>, PgToRealmError> {
    if names.is_empty() {
        return Ok(HashMap::new());
    }
    let short: Vec<String> = names
        .iter()
        .map(|n| n.rsplit('.').next().unwrap_or(n).to_owned())
        .collect();
    let rows = sql
        .query(
            "SELECT n.nspname::text, t.typname::text, e.enumlabel::text \
             FROM pg_catalog.pg_type t \
             JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace \
             JOIN pg_catalog.pg_enum e ON e.enumtypid = t.oid \
             WHERE t.typname = ANY($1)",
            &[&short],
        )
        .await
        .map_err(PgToRealmError::sql(
            "reading the labels of custom enum types",
        ))?;
    let mut out: HashMap<String, HashSet<String>> = HashMap::new();
    for row in rows {
        let (namespace, name, label): (String, String, String) =
            (row.get(0), row.get(1), row.get(2));
        out.entry(format!("{namespace}.{name}"))
            .or_default()
            .insert(label.clone());
        if namespace == "public" {
            out.entry(name).or_default().insert(label);
        }
    }
    Ok(out.into_iter().map(|(k, v)| (k, Arc::new(v))).collect())
}
