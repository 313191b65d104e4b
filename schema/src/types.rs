//! The realm property types and the one type map between them and PostgreSQL.
//!
//! This module owns which PostgreSQL type a property gets in the DDL we render, and which
//! existing PostgreSQL types a property may be read from. Nothing else in pgrealm decides that.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Width of an integer property. Realm has one `int` type; PostgreSQL has three.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IntWidth {
    /// `i16`, `smallint`.
    I16,
    /// `i32`, `integer`.
    I32,
    /// `i64`, `bigint`.
    I64,
}

impl IntWidth {
    /// The smallest and largest value this width holds.
    pub fn range(self) -> (i64, i64) {
        match self {
            IntWidth::I16 => (i16::MIN.into(), i16::MAX.into()),
            IntWidth::I32 => (i32::MIN.into(), i32::MAX.into()),
            IntWidth::I64 => (i64::MIN, i64::MAX),
        }
    }
}

/// A type that holds one value: every realm property type except links and lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ScalarType {
    /// `bool` / `boolean`.
    Bool,
    /// `i16`/`i32`/`i64` / `smallint`/`integer`/`bigint`.
    Int(IntWidth),
    /// `f32` / `real`.
    Float,
    /// `f64` / `double precision`.
    Double,
    /// `rust_decimal::Decimal` / `numeric`, exact.
    Decimal,
    /// `String` / `text`.
    String,
    /// `Vec<u8>` / `bytea`.
    Data,
    /// `chrono::DateTime<Utc>` / `timestamptz`.
    Date,
    /// `uuid::Uuid` / `uuid`.
    Uuid,
}

impl ScalarType {
    /// Every scalar type, in the order the documentation lists them.
    pub const ALL: [ScalarType; 11] = [
        ScalarType::Bool,
        ScalarType::Int(IntWidth::I16),
        ScalarType::Int(IntWidth::I32),
        ScalarType::Int(IntWidth::I64),
        ScalarType::Float,
        ScalarType::Double,
        ScalarType::Decimal,
        ScalarType::String,
        ScalarType::Data,
        ScalarType::Date,
        ScalarType::Uuid,
    ];

    /// The realm type name (`int`, `string`, …) as Realm's documentation spells it.
    pub fn realm_name(self) -> &'static str {
        match self {
            ScalarType::Bool => "bool",
            ScalarType::Int(_) => "int",
            ScalarType::Float => "float",
            ScalarType::Double => "double",
            ScalarType::Decimal => "decimal",
            ScalarType::String => "string",
            ScalarType::Data => "data",
            ScalarType::Date => "date",
            ScalarType::Uuid => "uuid",
        }
    }

    /// The PostgreSQL type our DDL creates for this type.
    pub fn postgres_type(self) -> &'static str {
        match self {
            ScalarType::Bool => "boolean",
            ScalarType::Int(IntWidth::I16) => "smallint",
            ScalarType::Int(IntWidth::I32) => "integer",
            ScalarType::Int(IntWidth::I64) => "bigint",
            ScalarType::Float => "real",
            ScalarType::Double => "double precision",
            ScalarType::Decimal => "numeric",
            ScalarType::String => "text",
            ScalarType::Data => "bytea",
            ScalarType::Date => "timestamp with time zone",
            ScalarType::Uuid => "uuid",
        }
    }

    /// The Rust type a user writes for this type.
    pub fn rust_type(self) -> &'static str {
        match self {
            ScalarType::Bool => "bool",
            ScalarType::Int(IntWidth::I16) => "i16",
            ScalarType::Int(IntWidth::I32) => "i32",
            ScalarType::Int(IntWidth::I64) => "i64",
            ScalarType::Float => "f32",
            ScalarType::Double => "f64",
            ScalarType::Decimal => "Decimal",
            ScalarType::String => "String",
            ScalarType::Data => "Vec<u8>",
            ScalarType::Date => "DateTime<Utc>",
            ScalarType::Uuid => "Uuid",
        }
    }

    /// Whether this type may be a primary key (the original allowed int and string; we add uuid).
    pub fn can_be_primary_key(self) -> bool {
        matches!(
            self,
            ScalarType::Int(_) | ScalarType::String | ScalarType::Uuid
        )
    }

    /// Whether a column of the existing PostgreSQL type `pg` (as `format_type` or
    /// `information_schema` spells it, or a bare `udt_name`) can hold this property without loss.
    ///
    /// Types outside our DDL's own choice are accepted where DESIGN.md's type map says so.
    pub fn accepts_postgres_type(self, pg: &str) -> bool {
        let pg = normalize_postgres_type(pg);
        let base = pg.split('(').next().unwrap_or(&pg).trim();
        match self {
            ScalarType::Bool => base == "boolean",
            ScalarType::Int(w) => {
                let have = match base {
                    "smallint" => IntWidth::I16,
                    "integer" => IntWidth::I32,
                    "bigint" => IntWidth::I64,
                    _ => return false,
                };
                // Any integer column is accepted: values are range-checked on the way in.
                let _ = (w, have);
                true
            }
            ScalarType::Float => base == "real",
            ScalarType::Double => base == "double precision" || base == "real",
            ScalarType::Decimal => base == "numeric",
            ScalarType::String => matches!(
                base,
                "text"
                    | "character varying"
                    | "character"
                    | "tsvector"
                    | "json"
                    | "jsonb"
                    | "uuid"
                    | "name"
                    | "citext"
            ),
            ScalarType::Data => base == "bytea",
            ScalarType::Date => matches!(
                base,
                "timestamp with time zone" | "timestamp without time zone" | "date"
            ),
            ScalarType::Uuid => base == "uuid",
        }
    }
}

/// Spell a PostgreSQL type the way `format_type()` does, so aliases compare equal
/// (`int8` → `bigint`, `timestamptz` → `timestamp with time zone`, `varchar(5)` →
/// `character varying(5)`).
pub fn normalize_postgres_type(pg: &str) -> String {
    let lower = pg.trim().to_ascii_lowercase();
    let (base, rest) = match lower.find('(') {
        Some(i) => (lower[..i].trim().to_string(), lower[i..].to_string()),
        None => (lower.clone(), String::new()),
    };
    let canonical = match base.as_str() {
        "int2" => "smallint",
        "int" | "int4" => "integer",
        "int8" => "bigint",
        "float4" => "real",
        "float8" | "double" => "double precision",
        "bool" => "boolean",
        "decimal" => "numeric",
        "varchar" => "character varying",
        "char" | "bpchar" => "character",
        "timestamptz" => "timestamp with time zone",
        "timestamp" => "timestamp without time zone",
        other => other,
    };
    format!("{canonical}{rest}")
}

impl fmt::Display for ScalarType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.rust_type())
    }
}

/// What a list holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ListItem {
    /// Links to objects of the named class (`List<T>`), stored as `(oid, idx, target)`.
    Object(String),
    /// Primitive values (`Vec<T>`), stored as `(oid, idx, value)`.
    Scalar(ScalarType),
}

/// The type of a property.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PropertyType {
    /// A single value.
    Scalar(ScalarType),
    /// A link to an object of the named class, by its primary key.
    Link(String),
    /// An ordered list.
    List(ListItem),
}

impl PropertyType {
    /// The scalar type, when this is one.
    pub fn scalar(&self) -> Option<ScalarType> {
        match self {
            PropertyType::Scalar(s) => Some(*s),
            _ => None,
        }
    }

    /// Whether this property lives in a subtable rather than a column.
    pub fn is_list(&self) -> bool {
        matches!(self, PropertyType::List(_))
    }
}

/// The field types `schema!` understands, for error messages that list them.
pub const SUPPORTED_RUST_TYPES: &str = "bool, i16, i32, i64, f32, f64, String, Vec<u8>, \
     DateTime<Utc>, Decimal, Uuid, Option<T>, Link<T>, List<T>, Vec<T> of a primitive";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_normalize_to_format_type_spelling() {
        assert_eq!(normalize_postgres_type("INT8"), "bigint");
        assert_eq!(
            normalize_postgres_type("varchar(64)"),
            "character varying(64)"
        );
        assert_eq!(
            normalize_postgres_type("timestamptz"),
            "timestamp with time zone"
        );
    }

    #[test]
    fn existing_columns_are_accepted_per_the_type_map() {
        assert!(ScalarType::String.accepts_postgres_type("character varying(64)"));
        assert!(ScalarType::String.accepts_postgres_type("jsonb"));
        assert!(ScalarType::Int(IntWidth::I16).accepts_postgres_type("bigint"));
        assert!(ScalarType::Date.accepts_postgres_type("date"));
        assert!(!ScalarType::Int(IntWidth::I64).accepts_postgres_type("text"));
        assert!(!ScalarType::Double.accepts_postgres_type("numeric"));
    }
}
