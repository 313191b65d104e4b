//! Validation of a schema: every rule whose breach `schema!` reports as a compile error.
//! (Being written: see the schema helper's task.)

use crate::model::Schema;

/// Where in the schema an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// A class as a whole (its name or its `#[realm_object]` attribute).
    Class {
        /// Index into `Schema::classes`.
        class: usize,
    },
    /// One property.
    Property {
        /// Index into `Schema::classes`.
        class: usize,
        /// Index into `Class::properties`.
        property: usize,
    },
}

/// One thing wrong with a schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    /// Where it is.
    pub location: Location,
    /// What is wrong and what to do.
    pub message: String,
    /// For duplicates: where the first one was defined.
    pub first: Option<Location>,
}

/// Every problem in the schema, in declaration order. Empty when the schema is valid.
pub fn validate(schema: &Schema) -> Vec<SchemaError> {
    let _ = schema;
    Vec::new()
}
