//! The schema model of pgrealm: realm classes and properties, the Realm ⇄ PostgreSQL type map,
//! DDL rendering, validation, catalog checks, schema diffs and the value model.
//!
//! This crate is pure: no syn, no tokio, no I/O. The `schema!` macro calls it at compile time
//! and the runtime calls the very same functions at run time, so there is one DDL renderer and
//! one type map.
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

pub mod catalog;
pub mod ddl;
pub mod diff;
pub mod model;
pub mod object;
pub mod pgtext;
pub mod types;
pub mod validate;
pub mod value;

pub use model::{Class, Property, Schema, TableRef};
pub use object::{CompiledSchema, FieldValue, KeyType, Link, List, Primitive, RealmObject};
pub use types::{IntWidth, ListItem, PropertyType, ScalarType};
pub use value::{Object, PrimaryKey, Value, ValueError};
