//! The attribute names `schema!` understands, in one place, so parsing, error messages and the
//! lists of allowed attributes never disagree.

use std::fmt;

use syn::{Ident, Path};

/// An attribute or attribute-key name.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Symbol(&'static str);

/// `#[realm_object(…)]` on a struct.
pub(crate) const REALM_OBJECT: Symbol = Symbol("realm_object");
/// `table = "…"` inside `#[realm_object]`.
pub(crate) const TABLE: Symbol = Symbol("table");
/// `class = "…"` inside `#[realm_object]`.
pub(crate) const CLASS: Symbol = Symbol("class");

/// `#[primary_key]` on a field.
pub(crate) const PRIMARY_KEY: Symbol = Symbol("primary_key");
/// `#[column = "…"]` on a field.
pub(crate) const COLUMN: Symbol = Symbol("column");
/// `#[postgres(…)]` on a field.
pub(crate) const POSTGRES: Symbol = Symbol("postgres");
/// `type = "…"` inside `#[postgres]`.
pub(crate) const TYPE: Symbol = Symbol("type");
/// `custom_type = "…"` inside `#[postgres]`.
pub(crate) const CUSTOM_TYPE: Symbol = Symbol("custom_type");
/// `#[indexed]` on a field.
pub(crate) const INDEXED: Symbol = Symbol("indexed");

/// Doc comments, allowed everywhere and passed through.
pub(crate) const DOC: Symbol = Symbol("doc");

/// What may appear on a struct, as the "allowed attributes" part of an error message.
pub(crate) const STRUCT_ATTRIBUTES: &str = "`#[realm_object(table = \"…\", class = \"…\")]` \
     and doc comments";
/// What may appear inside `#[realm_object(…)]`.
pub(crate) const REALM_OBJECT_KEYS: &str = "`table = \"…\"` and `class = \"…\"`";
/// What may appear on a field.
pub(crate) const FIELD_ATTRIBUTES: &str = "`#[primary_key]`, `#[column = \"…\"]`, \
     `#[postgres(type = \"…\")]`, `#[postgres(custom_type = \"…\")]`, `#[indexed]` and doc \
     comments";
/// What may appear inside `#[postgres(…)]`.
pub(crate) const POSTGRES_KEYS: &str = "`type = \"…\"` and `custom_type = \"…\"`";

impl Symbol {
    pub(crate) fn as_str(self) -> &'static str {
        self.0
    }
}

impl PartialEq<Symbol> for Ident {
    fn eq(&self, word: &Symbol) -> bool {
        self == word.0
    }
}

impl PartialEq<Symbol> for Path {
    fn eq(&self, word: &Symbol) -> bool {
        self.is_ident(word.0)
    }
}

impl fmt::Display for Symbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}
