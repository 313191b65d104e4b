//! The error collector: every check pushes into it, and expansion reports them all at once.
//!
//! Stopping at the first mistake would make a user fix a schema one compile at a time; instead
//! each problem becomes its own `compile_error!` at the tokens at fault.

use proc_macro2::TokenStream;
use quote::ToTokens;

/// The errors found so far, in the order they were found.
#[derive(Default)]
pub(crate) struct Errors {
    errors: Vec<syn::Error>,
}

impl Errors {
    /// Report an error.
    pub(crate) fn push(&mut self, error: syn::Error) {
        self.errors.push(error);
    }

    /// Report an error spanning `tokens`.
    pub(crate) fn spanned(&mut self, tokens: impl ToTokens, message: impl std::fmt::Display) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    /// Report a duplicate: the error at the second occurrence, a pointer at the first.
    pub(crate) fn duplicate(&mut self, second: &TokenStream, first: &TokenStream, name: &str) {
        self.spanned(
            second,
            format!("duplicate attribute `{name}`; remove one of them"),
        );
        self.spanned(first, format!("`{name}` is first defined here"));
    }

    /// Whether anything was reported.
    pub(crate) fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// All errors as one `syn::Error` (its `to_compile_error` emits one `compile_error!` each).
    pub(crate) fn combined(self) -> Option<syn::Error> {
        self.errors.into_iter().reduce(|mut all, next| {
            all.combine(next);
            all
        })
    }
}
