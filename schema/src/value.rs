//! The dynamic value model: what a realm object holds when no Rust struct is at hand.
//!
//! The store, the sync engine, the HTTP API and the PostgreSQL converters all speak these types;
//! the generated structs convert to and from them. Values never change silently here: a
//! conversion that would lose information is an error.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::model::{Class, Schema};
use crate::types::{ListItem, PropertyType, ScalarType};

/// A primary key: the identity of an object within its class.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PrimaryKey {
    /// An integer key.
    Int(i64),
    /// A string key.
    String(String),
    /// A uuid key.
    Uuid(Uuid),
}

impl fmt::Display for PrimaryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrimaryKey::Int(i) => write!(f, "{i}"),
            PrimaryKey::String(s) => write!(f, "{s:?}"),
            PrimaryKey::Uuid(u) => write!(f, "{u}"),
        }
    }
}

impl From<i64> for PrimaryKey {
    fn from(v: i64) -> Self {
        PrimaryKey::Int(v)
    }
}
impl From<i32> for PrimaryKey {
    fn from(v: i32) -> Self {
        PrimaryKey::Int(v.into())
    }
}
impl From<i16> for PrimaryKey {
    fn from(v: i16) -> Self {
        PrimaryKey::Int(v.into())
    }
}
impl From<String> for PrimaryKey {
    fn from(v: String) -> Self {
        PrimaryKey::String(v)
    }
}
impl From<&str> for PrimaryKey {
    fn from(v: &str) -> Self {
        PrimaryKey::String(v.to_owned())
    }
}
impl From<Uuid> for PrimaryKey {
    fn from(v: Uuid) -> Self {
        PrimaryKey::Uuid(v)
    }
}

impl PrimaryKey {
    /// The key as a property value.
    pub fn to_value(&self) -> Value {
        match self {
            PrimaryKey::Int(i) => Value::Int(*i),
            PrimaryKey::String(s) => Value::String(s.clone()),
            PrimaryKey::Uuid(u) => Value::Uuid(*u),
        }
    }

    /// The key held by a property value, if it can be one.
    pub fn from_value(value: &Value) -> Option<PrimaryKey> {
        match value {
            Value::Int(i) => Some(PrimaryKey::Int(*i)),
            Value::String(s) => Some(PrimaryKey::String(s.clone())),
            Value::Uuid(u) => Some(PrimaryKey::Uuid(*u)),
            Value::Link(k) => Some(k.clone()),
            _ => None,
        }
    }
}

/// One property value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    /// No value: an optional property that is missing, or a link to nothing.
    Null,
    /// `bool`.
    Bool(bool),
    /// `int` of any width (range-checked against the property on conversion).
    Int(i64),
    /// `float`.
    Float(f32),
    /// `double`.
    Double(f64),
    /// `decimal`, exact.
    Decimal(Decimal),
    /// `string`.
    String(String),
    /// `data`.
    Data(Vec<u8>),
    /// `date`.
    Date(DateTime<Utc>),
    /// `uuid`.
    Uuid(Uuid),
    /// A link: the target's primary key.
    Link(PrimaryKey),
    /// A list: links or primitives, in order.
    List(Vec<Value>),
}

impl Value {
    /// A short name of the value's kind, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Double(_) => "double",
            Value::Decimal(_) => "decimal",
            Value::String(_) => "string",
            Value::Data(_) => "data",
            Value::Date(_) => "date",
            Value::Uuid(_) => "uuid",
            Value::Link(_) => "link",
            Value::List(_) => "list",
        }
    }

    /// Equality that treats NaN as equal to NaN, as a store must when it decides whether a
    /// property changed.
    pub fn same_as(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Float(a), Value::Float(b)) => a.to_bits() == b.to_bits() || a == b,
            (Value::Double(a), Value::Double(b)) => a.to_bits() == b.to_bits() || a == b,
            (Value::List(a), Value::List(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.same_as(y))
            }
            _ => self == other,
        }
    }
}

/// Why a value does not fit a property.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// A required property got no value.
    #[error("property `{property}` is required but the value is NULL")]
    NullIntoRequired {
        /// The property.
        property: String,
    },
    /// An integer outside the property's width.
    #[error("value {value} is out of range for `{property}` ({ty}: {min}..={max})")]
    OutOfRange {
        /// The property.
        property: String,
        /// The value.
        value: String,
        /// The property's Rust type.
        ty: String,
        /// Smallest allowed.
        min: i64,
        /// Largest allowed.
        max: i64,
    },
    /// A value of another kind.
    #[error("property `{property}` expects {expected}, got {got}")]
    WrongKind {
        /// The property.
        property: String,
        /// What the property holds.
        expected: String,
        /// What was given.
        got: String,
    },
    /// Text that does not parse as the column's type.
    #[error("cannot read {text:?} as {ty} for `{property}`: {reason}")]
    Unparsable {
        /// The property or column.
        property: String,
        /// The text.
        text: String,
        /// The target type.
        ty: String,
        /// Why.
        reason: String,
    },
    /// The object names a property its class does not have.
    #[error("class `{class}` has no property `{property}`")]
    UnknownProperty {
        /// The class.
        class: String,
        /// The property.
        property: String,
    },
    /// The object names a class the schema does not have.
    #[error("the schema has no class `{class}`")]
    UnknownClass {
        /// The class.
        class: String,
    },
    /// The object lacks its primary key.
    #[error("object of class `{class}` has no primary key value")]
    MissingPrimaryKey {
        /// The class.
        class: String,
    },
}

/// Check (and normalize) a value for a property of `class`: NULLs, integer ranges, kinds,
/// list items. Returns the value to store.
pub fn check_value(
    schema: &Schema,
    class: &Class,
    property: &crate::model::Property,
    value: Value,
) -> Result<Value, ValueError> {
    // The name is only formatted when there is an error to report: the store calls this for
    // every value it is given, so an eager `format!` was a measurable share of a commit.
    let name = || format!("{}.{}", class.name, property.name);
    if matches!(value, Value::Null) {
        if property.optional || property.ty.is_list() {
            return Ok(if property.ty.is_list() {
                Value::List(Vec::new())
            } else {
                Value::Null
            });
        }
        return Err(ValueError::NullIntoRequired { property: name() });
    }
    match &property.ty {
        PropertyType::Scalar(s) => scalar(*s, value, &name),
        PropertyType::Link(target) => {
            let key_ty = schema
                .key_type(target)
                .ok_or_else(|| ValueError::UnknownClass {
                    class: target.clone(),
                })?;
            link(key_ty, value, &name)
        }
        PropertyType::List(item) => {
            let Value::List(items) = value else {
                return Err(ValueError::WrongKind {
                    property: name(),
                    expected: "list".into(),
                    got: value.kind().into(),
                });
            };
            let out = items
                .into_iter()
                .map(|v| match item {
                    ListItem::Scalar(s) => scalar(*s, v, &name),
                    ListItem::Object(target) => {
                        let key_ty =
                            schema
                                .key_type(target)
                                .ok_or_else(|| ValueError::UnknownClass {
                                    class: target.clone(),
                                })?;
                        if matches!(v, Value::Null) {
                            return Err(ValueError::NullIntoRequired { property: name() });
                        }
                        link(key_ty, v, &name)
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Value::List(out))
        }
    }
}

fn link(
    key_ty: ScalarType,
    value: Value,
    property: &dyn Fn() -> String,
) -> Result<Value, ValueError> {
    let key = match value {
        Value::Link(k) => k.to_value(),
        other => other,
    };
    let key = scalar(key_ty, key, property)?;
    Ok(Value::Link(
        PrimaryKey::from_value(&key).expect("key types are int, string, uuid"),
    ))
}

/// Check a non-null value against a scalar type.
pub fn check_scalar(ty: ScalarType, value: Value, property: &str) -> Result<Value, ValueError> {
    scalar(ty, value, &|| property.to_owned())
}

/// [`check_scalar`] with the property's name made only when it is needed for an error.
fn scalar(
    ty: ScalarType,
    value: Value,
    property: &dyn Fn() -> String,
) -> Result<Value, ValueError> {
    let wrong = |v: &Value| ValueError::WrongKind {
        property: property(),
        expected: ty.realm_name().to_owned(),
        got: v.kind().to_owned(),
    };
    match (ty, value) {
        (ScalarType::Bool, v @ Value::Bool(_)) => Ok(v),
        (ScalarType::Int(w), Value::Int(i)) => {
            let (min, max) = w.range();
            if i < min || i > max {
                return Err(ValueError::OutOfRange {
                    property: property(),
                    value: i.to_string(),
                    ty: ty.rust_type().to_owned(),
                    min,
                    max,
                });
            }
            Ok(Value::Int(i))
        }
        (ScalarType::Float, v @ Value::Float(_)) => Ok(v),
        (ScalarType::Double, v @ Value::Double(_)) => Ok(v),
        // A float widens to double exactly.
        (ScalarType::Double, Value::Float(f)) => Ok(Value::Double(f.into())),
        (ScalarType::Decimal, v @ Value::Decimal(_)) => Ok(v),
        (ScalarType::String, v @ Value::String(_)) => Ok(v),
        (ScalarType::Data, v @ Value::Data(_)) => Ok(v),
        (ScalarType::Date, v @ Value::Date(_)) => Ok(v),
        (ScalarType::Uuid, v @ Value::Uuid(_)) => Ok(v),
        (_, v) => Err(wrong(&v)),
    }
}

/// A dynamic realm object: a class name and its property values, keyed by property name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Object {
    /// The class name.
    pub class: String,
    /// Property values by property name. Every property of the class is present in objects the
    /// store hands out; a property missing from an object given to the store is left unchanged
    /// on update and NULL (or empty) on create.
    pub values: BTreeMap<String, Value>,
}

impl Object {
    /// An empty object of a class.
    pub fn new(class: impl Into<String>) -> Self {
        Object {
            class: class.into(),
            values: BTreeMap::new(),
        }
    }

    /// Set a property (builder style).
    pub fn with(mut self, property: impl Into<String>, value: Value) -> Self {
        self.values.insert(property.into(), value);
        self
    }

    /// A property's value, if present.
    pub fn get(&self, property: &str) -> Option<&Value> {
        self.values.get(property)
    }

    /// The object's primary key under `schema`.
    pub fn primary_key(&self, schema: &Schema) -> Result<PrimaryKey, ValueError> {
        let class = schema
            .class(&self.class)
            .ok_or_else(|| ValueError::UnknownClass {
                class: self.class.clone(),
            })?;
        let pk = class
            .primary_key()
            .ok_or_else(|| ValueError::MissingPrimaryKey {
                class: self.class.clone(),
            })?;
        self.values
            .get(&pk.name)
            .and_then(PrimaryKey::from_value)
            .ok_or_else(|| ValueError::MissingPrimaryKey {
                class: self.class.clone(),
            })
    }

    /// Check every value against the class, filling absent properties with NULL or the empty
    /// list, and refusing unknown properties.
    pub fn normalize(self, schema: &Schema) -> Result<Object, ValueError> {
        let class = schema
            .class(&self.class)
            .ok_or_else(|| ValueError::UnknownClass {
                class: self.class.clone(),
            })?;
        let mut values = self.values;
        for name in values.keys() {
            if class.property_named(name).is_none() {
                return Err(ValueError::UnknownProperty {
                    class: class.name.clone(),
                    property: name.clone(),
                });
            }
        }
        let mut out = BTreeMap::new();
        for property in &class.properties {
            let v = values.remove(&property.name).unwrap_or(Value::Null);
            out.insert(
                property.name.clone(),
                check_value(schema, class, property, v)?,
            );
        }
        Ok(Object {
            class: self.class,
            values: out,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Property;
    use crate::types::IntWidth;

    fn schema() -> Schema {
        Schema::new(vec![Class::new("Bus")
            .property(
                Property::new("id", PropertyType::Scalar(ScalarType::Int(IntWidth::I64)))
                    .primary_key(),
            )
            .property(Property::new(
                "seats",
                PropertyType::Scalar(ScalarType::Int(IntWidth::I16)),
            ))
            .property(
                Property::new("name", PropertyType::Scalar(ScalarType::String)).optional(),
            )])
    }

    #[test]
    fn normalize_fills_missing_optionals_and_range_checks() {
        let s = schema();
        let o = Object::new("Bus")
            .with("id", Value::Int(1))
            .with("seats", Value::Int(40));
        let o = o.normalize(&s).unwrap();
        assert_eq!(o.get("name"), Some(&Value::Null));
        let bad = Object::new("Bus")
            .with("id", Value::Int(1))
            .with("seats", Value::Int(40_000));
        let err = bad.normalize(&s).unwrap_err().to_string();
        assert!(err.contains("out of range"), "{err}");
        let null = Object::new("Bus").with("id", Value::Int(1));
        assert!(matches!(
            null.normalize(&s),
            Err(ValueError::NullIntoRequired { .. })
        ));
    }

    #[test]
    fn nan_is_the_same_as_nan() {
        assert!(Value::Double(f64::NAN).same_as(&Value::Double(f64::NAN)));
        assert!(!Value::Double(1.0).same_as(&Value::Double(2.0)));
    }
}
