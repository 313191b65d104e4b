//! Classification of field types into realm property types.
//!
//! Types are recognised by the last segment of their path, so `Uuid`, `uuid::Uuid` and
//! `pgrealm::Uuid` are all the uuid type: the macro cannot resolve names, and the emitted field
//! keeps the type exactly as written, so whichever `Uuid` the user imported is the one used.
//! The emitted `FieldValue` conversions make rustc check that the written type really is the one
//! the name says.

use std::collections::HashMap;

use pgrealm_schema::types::SUPPORTED_RUST_TYPES;
use pgrealm_schema::{IntWidth, ListItem, PropertyType, ScalarType};
use syn::{GenericArgument, PathArguments, Type, TypePath};

/// A field's realm type.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FieldType {
    /// The property type.
    pub(crate) ty: PropertyType,
    /// Written as `Option<T>`.
    pub(crate) optional: bool,
}

/// Struct names of the schema and the class each one defines, to resolve `Link<T>`/`List<T>`.
pub(crate) type ClassNames = HashMap<String, String>;

/// Classify a field type, or say why it is not supported.
pub(crate) fn classify(ty: &Type, classes: &ClassNames) -> syn::Result<FieldType> {
    if let Some(inner) = single_arg(ty, "Option") {
        if single_arg(inner, "Option").is_some() {
            return Err(syn::Error::new_spanned(
                ty,
                "`Option<Option<T>>` is not supported: a property is either missing (NULL) or \
                 has a value; use `Option<T>`",
            ));
        }
        let ty = required(inner, classes)?;
        if ty.is_list() {
            return Err(syn::Error::new_spanned(
                inner,
                "a list cannot be optional: an empty list already stands for none; remove the \
                 `Option`",
            ));
        }
        return Ok(FieldType { ty, optional: true });
    }
    Ok(FieldType {
        ty: required(ty, classes)?,
        optional: false,
    })
}

fn required(ty: &Type, classes: &ClassNames) -> syn::Result<PropertyType> {
    if let Some(scalar) = scalar(ty)? {
        return Ok(PropertyType::Scalar(scalar));
    }
    if let Some(target) = single_arg(ty, "Link") {
        return Ok(PropertyType::Link(class_of(target, classes)?));
    }
    if let Some(target) = single_arg(ty, "List") {
        return Ok(PropertyType::List(ListItem::Object(class_of(
            target, classes,
        )?)));
    }
    if let Some(item) = single_arg(ty, "Vec") {
        if single_arg(item, "Link").is_some() {
            return Err(syn::Error::new_spanned(
                ty,
                "a list of links is written `List<T>`, not `Vec<Link<T>>`",
            ));
        }
        // `Vec<u8>` itself is data (handled by `scalar`), so a `Vec<Vec<u8>>` is not a primitive.
        if let Some(item_type) = scalar(item)? {
            if item_type != ScalarType::Data {
                return Ok(PropertyType::List(ListItem::Scalar(item_type)));
            }
        }
    }
    Err(unsupported(ty))
}

/// The scalar type a type names, `None` when it names something else, an error for a
/// `DateTime` in another time zone.
fn scalar(ty: &Type) -> syn::Result<Option<ScalarType>> {
    if let Some(item) = single_arg(ty, "Vec") {
        return Ok(bare_name(item)
            .filter(|name| name == "u8")
            .map(|_| ScalarType::Data));
    }
    if let Some(zone) = single_arg(ty, "DateTime") {
        return match bare_name(zone).as_deref() {
            Some("Utc") => Ok(Some(ScalarType::Date)),
            _ => Err(syn::Error::new_spanned(
                ty,
                "dates are stored in UTC: use `DateTime<Utc>` and convert with \
                 `.with_timezone(&Utc)`",
            )),
        };
    }
    let Some(name) = bare_name(ty) else {
        return Ok(None);
    };
    Ok(match name.as_str() {
        "bool" => Some(ScalarType::Bool),
        "i16" => Some(ScalarType::Int(IntWidth::I16)),
        "i32" => Some(ScalarType::Int(IntWidth::I32)),
        "i64" => Some(ScalarType::Int(IntWidth::I64)),
        "f32" => Some(ScalarType::Float),
        "f64" => Some(ScalarType::Double),
        "Decimal" => Some(ScalarType::Decimal),
        "String" => Some(ScalarType::String),
        "Uuid" => Some(ScalarType::Uuid),
        _ => None,
    })
}

/// The class a `Link<T>`/`List<T>` points at: the class defined by struct `T` when `T` is in
/// the schema, else `T`'s name (which validation then reports as outside the schema).
fn class_of(target: &Type, classes: &ClassNames) -> syn::Result<String> {
    let name = bare_name(target).ok_or_else(|| {
        syn::Error::new_spanned(
            target,
            "a link or list points at a realm object struct of this schema, written by name",
        )
    })?;
    Ok(classes.get(&name).cloned().unwrap_or(name))
}

fn unsupported(ty: &Type) -> syn::Error {
    syn::Error::new_spanned(
        ty,
        format!("unsupported field type; schema! supports {SUPPORTED_RUST_TYPES}"),
    )
}

/// The last path segment of a plain path type, and its generic arguments.
fn last_segment(ty: &Type) -> Option<&syn::PathSegment> {
    match ty {
        Type::Path(TypePath { qself: None, path }) => path.segments.last(),
        Type::Group(group) => last_segment(&group.elem),
        Type::Paren(paren) => last_segment(&paren.elem),
        _ => None,
    }
}

/// The name of a path type without generic arguments (`uuid::Uuid` → `Uuid`).
fn bare_name(ty: &Type) -> Option<String> {
    let segment = last_segment(ty)?;
    matches!(segment.arguments, PathArguments::None).then(|| segment.ident.to_string())
}

/// `T` of `Name<T>` (with any path before `Name`).
fn single_arg<'a>(ty: &'a Type, name: &str) -> Option<&'a Type> {
    let segment = last_segment(ty)?;
    if segment.ident != name {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &segment.arguments else {
        return None;
    };
    match args.args.iter().collect::<Vec<_>>().as_slice() {
        [GenericArgument::Type(inner)] => Some(inner),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(ty: &str) -> Result<FieldType, String> {
        let classes = ClassNames::from([("Route".to_owned(), "TransitRoute".to_owned())]);
        classify(&syn::parse_str(ty).unwrap(), &classes).map_err(|e| e.to_string())
    }

    fn required_scalar(s: ScalarType) -> Result<FieldType, String> {
        Ok(FieldType {
            ty: PropertyType::Scalar(s),
            optional: false,
        })
    }

    #[test]
    fn types_are_recognised_with_or_without_their_crate_path() {
        assert_eq!(class("uuid::Uuid"), required_scalar(ScalarType::Uuid));
        assert_eq!(class("::pgrealm::Uuid"), required_scalar(ScalarType::Uuid));
        assert_eq!(class("Decimal"), required_scalar(ScalarType::Decimal));
        assert_eq!(
            class("chrono::DateTime<chrono::Utc>"),
            required_scalar(ScalarType::Date)
        );
        assert_eq!(
            class("std::vec::Vec<u8>"),
            required_scalar(ScalarType::Data)
        );
        assert_eq!(
            class("std::string::String"),
            required_scalar(ScalarType::String)
        );
    }

    #[test]
    fn links_and_lists_resolve_struct_names_to_class_names() {
        assert_eq!(
            class("Option<pgrealm::Link<Route>>"),
            Ok(FieldType {
                ty: PropertyType::Link("TransitRoute".into()),
                optional: true
            })
        );
        assert_eq!(
            class("List<Elsewhere>").unwrap().ty,
            PropertyType::List(ListItem::Object("Elsewhere".into()))
        );
        assert_eq!(
            class("Vec<i16>").unwrap().ty,
            PropertyType::List(ListItem::Scalar(ScalarType::Int(IntWidth::I16)))
        );
    }

    #[test]
    fn unsupported_types_say_what_is_supported() {
        for ty in [
            "u64",
            "HashMap<String, i64>",
            "&str",
            "(i64, i64)",
            "Vec<Vec<u8>>",
        ] {
            let err = class(ty).unwrap_err();
            assert!(err.contains("supports bool, i16"), "{ty}: {err}");
        }
        assert!(class("Option<List<Route>>")
            .unwrap_err()
            .contains("cannot be optional"));
        assert!(class("DateTime<Local>")
            .unwrap_err()
            .contains("DateTime<Utc>"));
        assert!(class("Vec<Link<Route>>").unwrap_err().contains("List<T>"));
    }
}
