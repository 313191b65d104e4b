//! Code generation for `schema!`: the structs, their `RealmObject` impls, and the `Schema` unit
//! struct with the DDL rendered here, at compile time.
//!
//! Generated code names everything through `::pgrealm::__private`, never through what the user
//! imported. The macro has no side effects: the DDL becomes a string literal, and writing it to
//! a file is a build script's job.

use pgrealm_schema::ddl::render_ddl;
use pgrealm_schema::{Class, IntWidth, ListItem, Property, PropertyType, ScalarType, Schema};
use proc_macro2::TokenStream;
use quote::{quote, ToTokens};

use crate::ast::{self, Input, Model, Parsed};
use crate::check::schema_errors;
use crate::ctxt::Errors;

/// Expand `schema! { … }`.
pub fn expand_schema(input: TokenStream) -> TokenStream {
    let input: Input = match syn::parse2(input) {
        Ok(input) => input,
        Err(e) => return e.to_compile_error(),
    };
    let mut errors = Errors::default();
    let parsed = ast::parse(input, &mut errors);
    schema_errors(&parsed, &mut errors);
    if errors.is_empty() {
        // validate() guarantees one primary key per class; should it ever let a class through
        // without one, say so here rather than emit an impl that cannot work.
        for (model, class) in parsed.models.iter().zip(&parsed.schema.classes) {
            if primary_key_index(class).is_none() {
                errors.spanned(
                    &model.item.ident,
                    "internal error: validation accepted a class without exactly one \
                     `#[primary_key]`; please report this",
                );
            }
        }
    }
    match errors.combined() {
        None => expand_valid(&parsed),
        Some(error) => expand_with_errors(&parsed, error),
    }
}

fn primary_key_index(class: &Class) -> Option<usize> {
    let mut keys = class
        .properties
        .iter()
        .enumerate()
        .filter(|(_, p)| p.primary_key);
    match (keys.next(), keys.next()) {
        (Some((index, _)), None) => Some(index),
        _ => None,
    }
}

fn expand_valid(parsed: &Parsed) -> TokenStream {
    let structs = parsed.models.iter().map(emit_struct);
    let impls = parsed
        .models
        .iter()
        .zip(&parsed.schema.classes)
        .map(|(model, class)| realm_object_impl(model, class));
    let ddl = render_ddl(&parsed.schema);
    let schema_struct = schema_struct(&ddl, build_schema(&parsed.schema));
    quote! {
        #(#structs)*
        #(#impls)*
        #schema_struct
    }
}

/// With errors: the `compile_error!`s, plus the structs and stand-in impls, so that code using
/// them compiles and the user sees the real problems, not a flood of follow-on errors.
fn expand_with_errors(parsed: &Parsed, error: syn::Error) -> TokenStream {
    let errors = error.to_compile_error();
    let others = &parsed.others;
    let structs = parsed.models.iter().map(emit_struct);
    let impls = parsed
        .models
        .iter()
        .zip(&parsed.schema.classes)
        .map(|(model, class)| stand_in_impl(model, class));
    let schema_struct = schema_struct(
        "",
        quote!(::core::unreachable!("schema! reported compile errors")),
    );
    quote! {
        #errors
        #(#others)*
        #(#structs)*
        #(#impls)*
        #schema_struct
    }
}

fn emit_struct(model: &Model) -> TokenStream {
    let item = &model.item;
    quote! {
        #[derive(
            ::core::fmt::Debug,
            ::core::clone::Clone,
            ::core::cmp::PartialEq,
            ::pgrealm::__private::serde::Serialize,
            ::pgrealm::__private::serde::Deserialize,
        )]
        #[serde(crate = "::pgrealm::__private::serde")]
        #item
    }
}

fn realm_object_impl(model: &Model, class: &Class) -> TokenStream {
    let ident = &model.item.ident;
    let class_name = &class.name;
    let key = primary_key_index(class).expect("checked before expanding");
    let key_field = &model.fields[key].ident;
    let key_type = &model.fields[key].ty;
    let to_values = model.fields.iter().zip(&class.properties).map(|(f, p)| {
        let field = &f.ident;
        let name = &p.name;
        quote! {
            .with(#name, ::pgrealm::__private::schema::FieldValue::to_value(&self.#field))
        }
    });
    let from_values = model.fields.iter().zip(&class.properties).map(|(f, p)| {
        let field = &f.ident;
        let name = &p.name;
        let qualified = format!("{}.{}", class.name, p.name);
        quote! {
            #field: ::pgrealm::__private::schema::FieldValue::from_value(
                object.get(#name).unwrap_or(&::pgrealm::__private::schema::Value::Null),
                #qualified,
            )?
        }
    });
    let expected = format!("an object of class `{class_name}`");
    quote! {
        impl ::pgrealm::__private::schema::RealmObject for #ident {
            const CLASS: &'static str = #class_name;
            type Key = #key_type;

            fn primary_key(&self) -> ::pgrealm::__private::schema::PrimaryKey {
                ::pgrealm::__private::schema::KeyType::to_key(&self.#key_field)
            }

            fn to_object(&self) -> ::pgrealm::__private::schema::Object {
                ::pgrealm::__private::schema::Object::new(#class_name)
                    #(#to_values)*
            }

            fn from_object(
                object: &::pgrealm::__private::schema::Object,
            ) -> ::core::result::Result<Self, ::pgrealm::__private::schema::ValueError> {
                if object.class != #class_name {
                    return ::core::result::Result::Err(
                        ::pgrealm::__private::schema::ValueError::WrongKind {
                            property: ::std::string::String::from(#class_name),
                            expected: ::std::string::String::from(#expected),
                            got: ::std::format!("an object of class `{}`", object.class),
                        },
                    );
                }
                ::core::result::Result::Ok(#ident {
                    #(#from_values,)*
                })
            }
        }
    }
}

/// An impl that type-checks whatever the fields are, for `Link<T>`s to this struct and other
/// code to compile while the user fixes the reported errors. It never runs: the crate does not
/// build.
fn stand_in_impl(model: &Model, class: &Class) -> TokenStream {
    let ident = &model.item.ident;
    let class_name = &class.name;
    // The written key type when it can be one, so that `Link::<T>::new(key)` in user code does
    // not fail a second time.
    let key_type = primary_key_index(class)
        .map(|i| &model.fields[i])
        .filter(|f| {
            f.field_type.as_ref().is_some_and(|t| {
                !t.optional && t.ty.scalar().is_some_and(ScalarType::can_be_primary_key)
            })
        })
        .map(|f| f.ty.to_token_stream())
        .unwrap_or_else(|| quote!(::std::string::String));
    let unreachable = quote!(::core::unreachable!("schema! reported compile errors"));
    quote! {
        impl ::pgrealm::__private::schema::RealmObject for #ident {
            const CLASS: &'static str = #class_name;
            type Key = #key_type;

            fn primary_key(&self) -> ::pgrealm::__private::schema::PrimaryKey {
                #unreachable
            }

            fn to_object(&self) -> ::pgrealm::__private::schema::Object {
                #unreachable
            }

            fn from_object(
                _: &::pgrealm::__private::schema::Object,
            ) -> ::core::result::Result<Self, ::pgrealm::__private::schema::ValueError> {
                #unreachable
            }
        }
    }
}

/// `pub struct Schema;` with its DDL and run-time model.
fn schema_struct(ddl: &str, build: TokenStream) -> TokenStream {
    quote! {
        /// The realm schema of this module's classes, compiled by `pgrealm::schema!`.
        #[derive(::core::fmt::Debug, ::core::clone::Clone, ::core::marker::Copy)]
        pub struct Schema;

        impl Schema {
            /// The PostgreSQL DDL that creates this schema's tables in an empty database,
            /// rendered at compile time.
            pub const DDL: &'static str = #ddl;

            /// The schema model: classes, properties and the tables they map to.
            pub fn schema() -> &'static ::pgrealm::__private::schema::Schema {
                static SCHEMA: ::pgrealm::__private::OnceLock<
                    ::pgrealm::__private::schema::Schema,
                > = ::pgrealm::__private::OnceLock::new();
                SCHEMA.get_or_init(|| #build)
            }
        }

        impl ::pgrealm::__private::schema::CompiledSchema for Schema {
            const DDL: &'static str = Schema::DDL;

            fn schema() -> &'static ::pgrealm::__private::schema::Schema {
                Schema::schema()
            }
        }
    }
}

/// An expression that builds `schema` at run time, equal to the one the DDL was rendered from.
fn build_schema(schema: &Schema) -> TokenStream {
    let classes = schema.classes.iter().map(|class| {
        let name = &class.name;
        let table = &class.table;
        let properties = class.properties.iter().map(build_property);
        quote! {
            ::pgrealm::__private::schema::Class::new(#name)
                .table(#table)
                #(.property(#properties))*
        }
    });
    quote! {
        ::pgrealm::__private::schema::Schema::new(::std::vec![#(#classes),*])
    }
}

fn build_property(property: &Property) -> TokenStream {
    let name = &property.name;
    let column = &property.column;
    let ty = property_type(&property.ty);
    let mut tokens = quote! {
        ::pgrealm::__private::schema::Property::new(#name, #ty).column(#column)
    };
    if property.optional {
        tokens.extend(quote!(.optional()));
    }
    if property.primary_key {
        tokens.extend(quote!(.primary_key()));
    }
    if property.indexed {
        tokens.extend(quote!(.indexed()));
    }
    if let Some(pg) = &property.postgres_type {
        tokens.extend(quote!(.postgres_type(#pg)));
    }
    if let Some(custom) = &property.custom_type {
        tokens.extend(quote!(.custom_type(#custom)));
    }
    tokens
}

fn property_type(ty: &PropertyType) -> TokenStream {
    let path = quote!(::pgrealm::__private::schema);
    match ty {
        PropertyType::Scalar(s) => {
            let s = scalar_type(*s);
            quote!(#path::PropertyType::Scalar(#s))
        }
        PropertyType::Link(class) => quote!(#path::PropertyType::Link(
            ::std::string::String::from(#class)
        )),
        PropertyType::List(ListItem::Object(class)) => quote!(#path::PropertyType::List(
            #path::ListItem::Object(::std::string::String::from(#class))
        )),
        PropertyType::List(ListItem::Scalar(s)) => {
            let s = scalar_type(*s);
            quote!(#path::PropertyType::List(#path::ListItem::Scalar(#s)))
        }
    }
}

fn scalar_type(ty: ScalarType) -> TokenStream {
    let path = quote!(::pgrealm::__private::schema::ScalarType);
    match ty {
        ScalarType::Bool => quote!(#path::Bool),
        ScalarType::Int(width) => {
            let width = match width {
                IntWidth::I16 => quote!(I16),
                IntWidth::I32 => quote!(I32),
                IntWidth::I64 => quote!(I64),
            };
            quote!(#path::Int(::pgrealm::__private::schema::IntWidth::#width))
        }
        ScalarType::Float => quote!(#path::Float),
        ScalarType::Double => quote!(#path::Double),
        ScalarType::Decimal => quote!(#path::Decimal),
        ScalarType::String => quote!(#path::String),
        ScalarType::Data => quote!(#path::Data),
        ScalarType::Date => quote!(#path::Date),
        ScalarType::Uuid => quote!(#path::Uuid),
    }
}
