//! Schema-level checks: runs `pgrealm_schema::validate` on the schema the structs describe and
//! turns each problem into an error at the struct or field it is about.
//!
//! The rules themselves live in `validate` (the runtime applies the same rules to schemas that
//! do not come from Rust code); this module only maps locations to spans.

use pgrealm_schema::validate::{validate, Location};
use proc_macro2::{Span, TokenStream};
use quote::ToTokens;

use crate::ast::Parsed;
use crate::ctxt::Errors;

/// Report every schema rule the parsed input breaks.
pub(crate) fn schema_errors(parsed: &Parsed, errors: &mut Errors) {
    for problem in validate(&parsed.schema) {
        errors.spanned(tokens_at(parsed, problem.location), &problem.message);
        if let Some(first) = problem.first {
            errors.spanned(tokens_at(parsed, first), "first defined here");
        }
    }
}

/// The syntax a location refers to: a struct's name or a field's `name: Type`.
fn tokens_at(parsed: &Parsed, location: Location) -> TokenStream {
    let found = match location {
        Location::Class { class } => parsed
            .models
            .get(class)
            .map(|m| m.item.ident.to_token_stream()),
        Location::Property { class, property } => parsed
            .models
            .get(class)
            .and_then(|m| m.fields.get(property))
            .map(|f| f.tokens()),
    };
    // validate's locations index the schema built from these very models, so this fallback only
    // guards against a mismatch, pointing at the whole macro call instead of panicking.
    found.unwrap_or_else(|| syn::Ident::new("schema", Span::call_site()).into_token_stream())
}
