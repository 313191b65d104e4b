//! Parsing of `schema!`'s attributes: `#[realm_object(…)]` on structs; `#[primary_key]`,
//! `#[column = "…"]`, `#[postgres(…)]` and `#[indexed]` on fields.
//!
//! This module only reads attributes and reports malformed, unknown or repeated ones. Whether
//! the resulting names and types make a valid schema is `pgrealm_schema::validate`'s call, never
//! this module's.

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::meta::ParseNestedMeta;
use syn::{Attribute, Expr, ExprLit, Lit, LitStr, Meta};

use crate::ctxt::Errors;
use crate::symbol::{
    Symbol, CLASS, COLUMN, CUSTOM_TYPE, DOC, FIELD_ATTRIBUTES, INDEXED, POSTGRES, POSTGRES_KEYS,
    PRIMARY_KEY, REALM_OBJECT, REALM_OBJECT_KEYS, STRUCT_ATTRIBUTES, TABLE, TYPE,
};

/// A setting that may be given once; remembers where, to point at the first of two.
struct Once<T> {
    name: Symbol,
    value: Option<(T, TokenStream)>,
}

impl<T> Once<T> {
    fn new(name: Symbol) -> Self {
        Once { name, value: None }
    }

    fn set(&mut self, errors: &mut Errors, at: impl ToTokens, value: T) {
        let at = at.into_token_stream();
        match &self.value {
            Some((_, first)) => errors.duplicate(&at, first, self.name.as_str()),
            None => self.value = Some((value, at)),
        }
    }

    fn get(self) -> Option<(T, TokenStream)> {
        self.value
    }
}

/// What the attributes of a struct say.
pub(crate) struct StructAttrs {
    /// `table = "…"`, with the literal for error spans.
    pub(crate) table: Option<LitStr>,
    /// `class = "…"`.
    pub(crate) class: Option<LitStr>,
    /// Doc comments, passed through to the emitted struct.
    pub(crate) docs: Vec<Attribute>,
}

/// What the attributes of a field say.
pub(crate) struct FieldAttrs {
    /// `#[primary_key]`.
    pub(crate) primary_key: bool,
    /// `#[column = "…"]`.
    pub(crate) column: Option<LitStr>,
    /// `#[postgres(type = "…")]`.
    pub(crate) postgres_type: Option<LitStr>,
    /// `#[postgres(custom_type = "…")]`.
    pub(crate) custom_type: Option<LitStr>,
    /// `#[indexed]`.
    pub(crate) indexed: bool,
    /// Doc comments, passed through to the emitted field.
    pub(crate) docs: Vec<Attribute>,
}

/// Read a struct's attributes, reporting every problem.
pub(crate) fn struct_attrs(attrs: &[Attribute], errors: &mut Errors) -> StructAttrs {
    let mut table = Once::new(TABLE);
    let mut class = Once::new(CLASS);
    let mut docs = Vec::new();
    for attr in attrs {
        if attr.path() == &DOC {
            docs.push(attr.clone());
        } else if attr.path() == &REALM_OBJECT {
            // A bare `#[realm_object]` is allowed: it says what the struct is, with defaults.
            if matches!(attr.meta, Meta::Path(_)) {
                continue;
            }
            let parsed = attr.parse_nested_meta(|meta| {
                if meta.path == TABLE {
                    let lit = string_value(&meta)?;
                    table.set(errors, &meta.path, lit);
                } else if meta.path == CLASS {
                    let lit = string_value(&meta)?;
                    class.set(errors, &meta.path, lit);
                } else {
                    unknown_key(&meta, REALM_OBJECT, REALM_OBJECT_KEYS, errors)?;
                }
                Ok(())
            });
            if let Err(e) = parsed {
                errors.push(e);
            }
        } else {
            errors.spanned(
                attr,
                format!(
                    "unknown attribute `#[{}]` on a realm object; allowed attributes are: \
                     {STRUCT_ATTRIBUTES}",
                    path_text(attr)
                ),
            );
        }
    }
    StructAttrs {
        table: table.get().map(|(v, _)| v),
        class: class.get().map(|(v, _)| v),
        docs,
    }
}

/// Read a field's attributes, reporting every problem.
pub(crate) fn field_attrs(attrs: &[Attribute], errors: &mut Errors) -> FieldAttrs {
    let mut primary_key = Once::new(PRIMARY_KEY);
    let mut column = Once::new(COLUMN);
    let mut postgres_type = Once::new(TYPE);
    let mut custom_type = Once::new(CUSTOM_TYPE);
    let mut indexed = Once::new(INDEXED);
    let mut docs = Vec::new();
    for attr in attrs {
        let path = attr.path();
        if path == &DOC {
            docs.push(attr.clone());
        } else if path == &PRIMARY_KEY {
            if flag(attr, PRIMARY_KEY, errors) {
                primary_key.set(errors, attr, ());
            }
        } else if path == &INDEXED {
            if flag(attr, INDEXED, errors) {
                indexed.set(errors, attr, ());
            }
        } else if path == &COLUMN {
            match &attr.meta {
                Meta::NameValue(nv) => match &nv.value {
                    Expr::Lit(ExprLit {
                        lit: Lit::Str(lit), ..
                    }) => column.set(errors, attr, lit.clone()),
                    other => {
                        errors.spanned(other, "expected a string literal: `#[column = \"name\"]`")
                    }
                },
                _ => errors.spanned(attr, "expected `#[column = \"name\"]`"),
            }
        } else if path == &POSTGRES {
            let parsed = attr.parse_nested_meta(|meta| {
                if meta.path == TYPE {
                    let lit = string_value(&meta)?;
                    postgres_type.set(errors, &meta.path, lit);
                } else if meta.path == CUSTOM_TYPE {
                    let lit = string_value(&meta)?;
                    custom_type.set(errors, &meta.path, lit);
                } else {
                    unknown_key(&meta, POSTGRES, POSTGRES_KEYS, errors)?;
                }
                Ok(())
            });
            if let Err(e) = parsed {
                errors.push(e);
            }
        } else {
            errors.spanned(
                attr,
                format!(
                    "unknown attribute `#[{}]` on a field; allowed attributes are: \
                     {FIELD_ATTRIBUTES}",
                    path_text(attr)
                ),
            );
        }
    }
    FieldAttrs {
        primary_key: primary_key.get().is_some(),
        column: column.get().map(|(v, _)| v),
        postgres_type: postgres_type.get().map(|(v, _)| v),
        custom_type: custom_type.get().map(|(v, _)| v),
        indexed: indexed.get().is_some(),
        docs,
    }
}

/// A word attribute such as `#[indexed]`. Arguments are reported as malformed, but the intent
/// is clear, so the flag still counts: a `#[primary_key = "yes"]` must not also read as "no
/// primary key".
fn flag(attr: &Attribute, name: Symbol, errors: &mut Errors) -> bool {
    if !matches!(attr.meta, Meta::Path(_)) {
        errors.spanned(attr, format!("`#[{name}]` takes no arguments"));
    }
    true
}

/// The `"…"` of `key = "…"`. Whether the name is usable (empty, too long) is `validate`'s call.
fn string_value(meta: &ParseNestedMeta<'_>) -> syn::Result<LitStr> {
    let name = meta.path.to_token_stream();
    meta.value()
        .and_then(|v| v.parse())
        .map_err(|e| syn::Error::new(e.span(), format!("expected `{name} = \"…\"`")))
}

/// Report an unknown `key` inside `#[attribute(…)]` and skip its value, so the keys after it
/// are still checked.
fn unknown_key(
    meta: &ParseNestedMeta<'_>,
    attribute: Symbol,
    allowed: &str,
    errors: &mut Errors,
) -> syn::Result<()> {
    let key = meta.path.to_token_stream();
    errors.spanned(
        &meta.path,
        format!("unknown key `{key}` in `#[{attribute}(…)]`; allowed keys are: {allowed}"),
    );
    if meta.input.peek(syn::Token![=]) {
        meta.value()?.parse::<Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        let content;
        syn::parenthesized!(content in meta.input);
        content.parse::<TokenStream>()?;
    }
    Ok(())
}

/// An attribute's path as the user wrote it, for messages.
fn path_text(attr: &Attribute) -> String {
    attr.path()
        .segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect::<Vec<_>>()
        .join("::")
}
