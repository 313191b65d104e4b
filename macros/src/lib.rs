//! The `schema!` macro of pgrealm. Use it through the `pgrealm` crate (`pgrealm::schema!`),
//! which re-exports it with its documentation and provides the paths the generated code uses.
//!
//! A thin layer: [`attr`](crate::attr) and [`ty`](crate::ty) read the syntax, `ast` builds the
//! `pgrealm_schema` model from it, `check` maps `pgrealm_schema::validate`'s findings to spans,
//! and `expand` emits code. This file only wraps `expand::expand_schema`, so that expansion is
//! testable in-process.

mod ast;
mod attr;
mod check;
mod ctxt;
mod expand;
mod symbol;
mod ty;

#[cfg(test)]
mod tests;

use proc_macro::TokenStream;

/// Compile a realm schema: model structs, PostgreSQL DDL and typed converters.
///
/// See `pgrealm::schema!` for the documentation and an example.
#[proc_macro]
pub fn schema(input: TokenStream) -> TokenStream {
    expand::expand_schema(input.into()).into()
}
