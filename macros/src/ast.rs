//! The input of `schema!` read into the schema model, keeping the syntax each class and
//! property came from so that errors can point at it.
//!
//! Class `i` of the built [`Schema`] is `models[i]`, and property `j` of that class is
//! `models[i].fields[j]`: `validate`'s locations index both. This module reports only what it can
//! see in the syntax (attributes, types, struct shapes); schema rules belong to `validate`.

use pgrealm_schema::{Class, Property, PropertyType, ScalarType, Schema};
use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::{Fields, Ident, Item, ItemStruct, Type};

use crate::attr::{field_attrs, struct_attrs};
use crate::ctxt::Errors;
use crate::symbol::DOC;
use crate::ty::{classify, ClassNames, FieldType};

/// The name `schema!` gives the unit struct it defines; no class struct may take it.
pub(crate) const SCHEMA_STRUCT: &str = "Schema";

/// The tokens inside `schema! { … }`: items, which should all be structs.
pub(crate) struct Input {
    items: Vec<Item>,
}

impl Parse for Input {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut items = Vec::new();
        while !input.is_empty() {
            items.push(input.parse()?);
        }
        Ok(Input { items })
    }
}

/// One realm object struct.
pub(crate) struct Model {
    /// The struct as it is emitted: doc comments kept, our attributes removed.
    pub(crate) item: ItemStruct,
    /// Its fields, one per property of its class.
    pub(crate) fields: Vec<ModelField>,
}

/// One field of a realm object struct.
pub(crate) struct ModelField {
    /// The field's name.
    pub(crate) ident: Ident,
    /// The field's type, exactly as written.
    pub(crate) ty: Type,
    /// The realm type, `None` when the type is unsupported (already reported).
    pub(crate) field_type: Option<FieldType>,
}

impl ModelField {
    /// `name: Type`, for errors about the whole field.
    pub(crate) fn tokens(&self) -> TokenStream {
        let mut tokens = self.ident.to_token_stream();
        self.ty.to_tokens(&mut tokens);
        tokens
    }
}

/// The whole input, read.
pub(crate) struct Parsed {
    /// The realm object structs, in order; index-aligned with `schema.classes`.
    pub(crate) models: Vec<Model>,
    /// Items that are not realm objects (already reported), emitted as written so that code
    /// using them does not fail a second time.
    pub(crate) others: Vec<TokenStream>,
    /// The schema the structs describe.
    pub(crate) schema: Schema,
}

/// Read the input, reporting every syntactic problem into `errors`.
pub(crate) fn parse(input: Input, errors: &mut Errors) -> Parsed {
    let mut structs = Vec::new();
    let mut others = Vec::new();
    for item in input.items {
        match item {
            Item::Struct(item) => structs.push(item),
            other => {
                errors.spanned(
                    &other,
                    "schema! holds only realm object structs; move this item outside the macro",
                );
                others.push(other.into_token_stream());
            }
        }
    }

    // Links may point forward, so every class name is known before any field is read.
    let mut class_names = ClassNames::new();
    let mut classes = Vec::new();
    let mut accepted = Vec::new();
    for item in structs {
        let attrs = struct_attrs(&item.attrs, errors);
        let shape_ok = check_shape(&item, errors);
        let mut stripped = item;
        stripped.attrs = attrs.docs;
        if !shape_ok {
            strip_field_attrs(&mut stripped);
            others.push(stripped.into_token_stream());
            continue;
        }
        let name = attrs
            .class
            .map(|lit| lit.value())
            .unwrap_or_else(|| stripped.ident.unraw().to_string());
        class_names.insert(stripped.ident.unraw().to_string(), name.clone());
        let mut class = Class::new(name);
        if let Some(table) = attrs.table {
            class = class.table(table.value());
        }
        classes.push(class);
        accepted.push(stripped);
    }

    let mut models = Vec::new();
    for (mut item, class) in accepted.into_iter().zip(&mut classes) {
        let mut fields = Vec::new();
        for field in item.fields.iter_mut() {
            let attrs = field_attrs(&field.attrs, errors);
            field.attrs = attrs.docs;
            let ident = field
                .ident
                .clone()
                .expect("check_shape admits named fields only");
            let field_type = match classify(&field.ty, &class_names) {
                Ok(t) => Some(t),
                Err(e) => {
                    errors.push(e);
                    None
                }
            };
            // An unsupported field still becomes a property (as a string), so that validation
            // checks its names and a `#[primary_key]` on it does not also read as "no primary
            // key"; the schema is never rendered when there are errors.
            let (ty, optional) = match &field_type {
                Some(t) => (t.ty.clone(), t.optional),
                None => (PropertyType::Scalar(ScalarType::String), false),
            };
            let mut property = Property::new(ident.unraw().to_string(), ty);
            if optional {
                property = property.optional();
            }
            if attrs.primary_key {
                property = property.primary_key();
            }
            if let Some(column) = attrs.column {
                property = property.column(column.value());
            }
            if attrs.indexed {
                property = property.indexed();
            }
            if let Some(pg) = attrs.postgres_type {
                property = property.postgres_type(pg.value());
            }
            if let Some(custom) = attrs.custom_type {
                property = property.custom_type(custom.value());
            }
            class.properties.push(property);
            fields.push(ModelField {
                ident,
                ty: field.ty.clone(),
                field_type,
            });
        }
        models.push(Model { item, fields });
    }

    Parsed {
        models,
        others,
        schema: Schema::new(classes),
    }
}

/// A realm object is a plain struct with named fields and a name of its own.
fn check_shape(item: &ItemStruct, errors: &mut Errors) -> bool {
    let mut ok = true;
    if !item.generics.params.is_empty() || item.generics.where_clause.is_some() {
        errors.spanned(
            &item.generics,
            "a realm object struct cannot be generic: each struct is one realm class",
        );
        ok = false;
    }
    if !matches!(item.fields, Fields::Named(_)) {
        errors.spanned(
            &item.ident,
            "a realm object needs named fields, one per property: `struct Name { id: i64, … }`",
        );
        ok = false;
    }
    if item.ident == SCHEMA_STRUCT {
        errors.spanned(
            &item.ident,
            "schema! defines `Schema` itself; give this struct another name and keep the class \
             name with `#[realm_object(class = \"Schema\")]`",
        );
        ok = false;
    }
    ok
}

fn strip_field_attrs(item: &mut ItemStruct) {
    for field in item.fields.iter_mut() {
        field.attrs.retain(|a| a.path() == &DOC);
    }
}
