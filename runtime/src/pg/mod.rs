//! The PostgreSQL side's conversions and catalog reading.
//!
//! This module owns how one realm value travels to and from PostgreSQL's binary format
//! ([`PgValue`], [`decode`]), how a row becomes an object and an object its row and list
//! subtables ([`object_from_row`], [`upsert_object`], [`read_list`], [`write_list`]), and how
//! a live catalog is read ([`read_catalog`]). The text format (pgoutput, COPY) is read by
//! `pgrealm_schema::pgtext`, and both paths agree on every value (tested against a server).
//! Replication and the sync engine's batched writers live elsewhere.

mod catalog;
mod error;
mod numeric;
mod row;
mod value;

pub use catalog::read_catalog;
pub use error::{describe, PgError};
pub use row::{
    as_params, object_from_row, property_label, read_column, read_list, select_columns,
    upsert_object, upsert_sql, write_list, RowParams,
};
pub use value::{decode, PgValue, RawColumn};
