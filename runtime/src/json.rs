//! The JSON form of realm objects, shared by the HTTP API and its client.
//!
//! Ints are numbers, decimals strings (JSON numbers would go through f64), dates RFC 3339, data
//! base64, uuids strings, links the target's primary key, lists arrays; a float that JSON cannot
//! hold (NaN, ±inf) is the string `"NaN"`, `"inf"` or `"-inf"`. Reading is typed by the schema,
//! so every value is checked as it comes in and an error names the property.

use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, Utc};
use pgrealm_schema::{
    Class, ListItem, Object, PrimaryKey, PropertyType, ScalarType, Schema, Value, ValueError,
};
use rust_decimal::Decimal;
use serde_json::{Map, Number, Value as Json};
use uuid::Uuid;

/// A value as JSON.
pub fn value_to_json(value: &Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => Json::Number((*i).into()),
        Value::Float(f) => float_to_json(f64::from(*f)),
        Value::Double(d) => float_to_json(*d),
        Value::Decimal(d) => Json::String(d.to_string()),
        Value::String(s) => Json::String(s.clone()),
        Value::Data(b) => Json::String(STANDARD.encode(b)),
        Value::Date(d) => Json::String(d.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
        Value::Uuid(u) => Json::String(u.to_string()),
        Value::Link(k) => key_to_json(k),
        Value::List(items) => Json::Array(items.iter().map(value_to_json).collect()),
    }
}

fn float_to_json(f: f64) -> Json {
    if f.is_nan() {
        Json::String("NaN".into())
    } else if f.is_infinite() {
        Json::String(if f > 0.0 { "inf" } else { "-inf" }.into())
    } else {
        Number::from_f64(f).map_or(Json::Null, Json::Number)
    }
}

/// A primary key as JSON.
pub fn key_to_json(key: &PrimaryKey) -> Json {
    match key {
        PrimaryKey::Int(i) => Json::Number((*i).into()),
        PrimaryKey::String(s) => Json::String(s.clone()),
        PrimaryKey::Uuid(u) => Json::String(u.to_string()),
    }
}

/// An object as a JSON object of its properties.
pub fn object_to_json(object: &Object) -> Json {
    Json::Object(
        object
            .values
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect::<Map<_, _>>(),
    )
}

fn bad(property: &str, ty: &str, json: &Json, reason: &str) -> ValueError {
    ValueError::Unparsable {
        property: property.to_owned(),
        text: json.to_string(),
        ty: ty.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Read a scalar of type `ty` from JSON.
pub fn scalar_from_json(ty: ScalarType, json: &Json, property: &str) -> Result<Value, ValueError> {
    if json.is_null() {
        return Ok(Value::Null);
    }
    let name = ty.realm_name();
    let v = match ty {
        ScalarType::Bool => Value::Bool(
            json.as_bool()
                .ok_or_else(|| bad(property, name, json, "expected true or false"))?,
        ),
        ScalarType::Int(_) => Value::Int(json.as_i64().ok_or_else(|| {
            bad(
                property,
                name,
                json,
                "expected an integer that fits 64 bits",
            )
        })?),
        ScalarType::Float | ScalarType::Double => {
            let f = match json {
                Json::Number(n) => n
                    .as_f64()
                    .ok_or_else(|| bad(property, name, json, "not a number"))?,
                Json::String(s) => match s.as_str() {
                    "NaN" => f64::NAN,
                    "inf" | "Infinity" => f64::INFINITY,
                    "-inf" | "-Infinity" => f64::NEG_INFINITY,
                    _ => {
                        return Err(bad(
                            property,
                            name,
                            json,
                            "expected a number, \"NaN\", \"inf\" or \"-inf\"",
                        ))
                    }
                },
                _ => return Err(bad(property, name, json, "expected a number")),
            };
            if ty == ScalarType::Float {
                let narrowed = f as f32;
                // Decimal text rounds to the nearest f32 as it would to f64; only overflow is
                // a changed value.
                if f.is_finite() && narrowed.is_infinite() {
                    return Err(bad(property, name, json, "does not fit a 32-bit float"));
                }
                Value::Float(narrowed)
            } else {
                Value::Double(f)
            }
        }
        ScalarType::Decimal => {
            let text = match json {
                Json::String(s) => s.clone(),
                // Integers are exact in JSON; fractions are not, so they must come as strings.
                Json::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
                _ => {
                    return Err(bad(
                        property,
                        name,
                        json,
                        "send decimals as strings, e.g. \"12.50\"",
                    ))
                }
            };
            Value::Decimal(
                Decimal::from_str_exact(&text)
                    .or_else(|_| Decimal::from_scientific(&text))
                    .map_err(|e| bad(property, name, json, &e.to_string()))?,
            )
        }
        ScalarType::String => Value::String(
            json.as_str()
                .ok_or_else(|| bad(property, name, json, "expected a string"))?
                .to_owned(),
        ),
        ScalarType::Data => Value::Data(
            STANDARD
                .decode(
                    json.as_str()
                        .ok_or_else(|| bad(property, name, json, "expected base64 text"))?,
                )
                .map_err(|e| bad(property, name, json, &format!("not base64: {e}")))?,
        ),
        ScalarType::Date => Value::Date(
            DateTime::parse_from_rfc3339(
                json.as_str()
                    .ok_or_else(|| bad(property, name, json, "expected an RFC 3339 date"))?,
            )
            .map_err(|e| bad(property, name, json, &format!("not an RFC 3339 date: {e}")))?
            .with_timezone(&Utc),
        ),
        ScalarType::Uuid => Value::Uuid(
            Uuid::from_str(
                json.as_str()
                    .ok_or_else(|| bad(property, name, json, "expected a uuid string"))?,
            )
            .map_err(|e| bad(property, name, json, &e.to_string()))?,
        ),
    };
    Ok(v)
}

fn link_from_json(
    schema: &Schema,
    target: &str,
    json: &Json,
    property: &str,
) -> Result<Value, ValueError> {
    if json.is_null() {
        return Ok(Value::Null);
    }
    let key_ty = schema
        .key_type(target)
        .ok_or_else(|| ValueError::UnknownClass {
            class: target.to_owned(),
        })?;
    let key = scalar_from_json(key_ty, json, property)?;
    Ok(Value::Link(PrimaryKey::from_value(&key).ok_or_else(
        || bad(property, "link", json, "not a primary key"),
    )?))
}

/// Read an object of `class` from a JSON object, checking every value against the schema.
/// Properties absent from the JSON are absent from the result (a partial object), so a caller can
/// tell "unchanged" from "set to null".
pub fn object_from_json(schema: &Schema, class: &Class, json: &Json) -> Result<Object, ValueError> {
    let Json::Object(map) = json else {
        return Err(bad(
            &class.name,
            "object",
            json,
            "expected a JSON object of properties",
        ));
    };
    let mut object = Object::new(class.name.clone());
    for (name, v) in map {
        let property = class
            .property_named(name)
            .ok_or_else(|| ValueError::UnknownProperty {
                class: class.name.clone(),
                property: name.clone(),
            })?;
        let label = format!("{}.{}", class.name, name);
        let value = match &property.ty {
            PropertyType::Scalar(s) => scalar_from_json(*s, v, &label)?,
            PropertyType::Link(target) => link_from_json(schema, target, v, &label)?,
            PropertyType::List(item) => {
                let items = match v {
                    Json::Null => Vec::new(),
                    Json::Array(items) => items.clone(),
                    other => return Err(bad(&label, "list", other, "expected an array")),
                };
                Value::List(
                    items
                        .iter()
                        .map(|i| match item {
                            ListItem::Scalar(s) => scalar_from_json(*s, i, &label),
                            ListItem::Object(target) => link_from_json(schema, target, i, &label),
                        })
                        .collect::<Result<_, _>>()?,
                )
            }
        };
        let value = pgrealm_schema::value::check_value(schema, class, property, value)?;
        object.values.insert(name.clone(), value);
    }
    Ok(object)
}

/// Read a primary key of `class` from JSON (a path segment is passed as a JSON string).
pub fn key_from_json(
    schema: &Schema,
    class: &Class,
    json: &Json,
) -> Result<PrimaryKey, ValueError> {
    let pk = class
        .primary_key()
        .ok_or_else(|| ValueError::MissingPrimaryKey {
            class: class.name.clone(),
        })?;
    let ty = schema
        .column_type(pk)
        .ok_or_else(|| ValueError::MissingPrimaryKey {
            class: class.name.clone(),
        })?;
    let label = format!("{}.{}", class.name, pk.name);
    // A key taken from a URL arrives as text; read integers from it too.
    let json = match (ty, json) {
        (ScalarType::Int(_), Json::String(s)) => {
            s.parse::<i64>()
                .map(|i| Json::Number(i.into()))
                .map_err(|_| bad(&label, "int", json, "expected an integer key"))?
        }
        _ => json.clone(),
    };
    let value =
        pgrealm_schema::value::check_scalar(ty, scalar_from_json(ty, &json, &label)?, &label)?;
    PrimaryKey::from_value(&value).ok_or_else(|| ValueError::MissingPrimaryKey {
        class: class.name.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgrealm_schema::{IntWidth, Property};
    use serde_json::json;

    fn schema() -> Schema {
        let int = PropertyType::Scalar(ScalarType::Int(IntWidth::I64));
        Schema::new(vec![
            Class::new("Route").property(
                Property::new("id", PropertyType::Scalar(ScalarType::String)).primary_key(),
            ),
            Class::new("Bus")
                .property(Property::new("id", int.clone()).primary_key())
                .property(Property::new(
                    "seats",
                    PropertyType::Scalar(ScalarType::Int(IntWidth::I16)),
                ))
                .property(
                    Property::new("fare", PropertyType::Scalar(ScalarType::Decimal)).optional(),
                )
                .property(Property::new("photo", PropertyType::Scalar(ScalarType::Data)).optional())
                .property(Property::new("seen", PropertyType::Scalar(ScalarType::Date)).optional())
                .property(
                    Property::new("speed", PropertyType::Scalar(ScalarType::Double)).optional(),
                )
                .property(Property::new("route", PropertyType::Link("Route".into())).optional())
                .property(Property::new(
                    "stops",
                    PropertyType::List(ListItem::Object("Route".into())),
                )),
        ])
    }

    #[test]
    fn round_trips_every_kind() {
        let s = schema();
        let bus = s.class("Bus").unwrap();
        let j = json!({"id": 5, "seats": 40, "fare": "0.1000000000000000000000000001", "photo": "AAEC",
                       "seen": "1969-07-20T20:17:40.123456Z", "speed": "NaN", "route": "r1", "stops": ["r1", "r2"]});
        let o = object_from_json(&s, bus, &j).unwrap();
        assert_eq!(
            o.get("fare"),
            Some(&Value::Decimal(
                Decimal::from_str_exact("0.1000000000000000000000000001").unwrap()
            ))
        );
        assert_eq!(o.get("photo"), Some(&Value::Data(vec![0, 1, 2])));
        assert_eq!(
            o.get("route"),
            Some(&Value::Link(PrimaryKey::String("r1".into())))
        );
        let back = object_to_json(&o);
        assert_eq!(back["fare"], j["fare"]);
        assert_eq!(back["seen"], j["seen"]);
        assert_eq!(back["speed"], json!("NaN"));
        assert_eq!(back["stops"], j["stops"]);
        assert_eq!(
            object_from_json(&s, bus, &back).unwrap().get("seen"),
            o.get("seen")
        );
    }

    #[test]
    fn bad_values_name_the_property() {
        let s = schema();
        let bus = s.class("Bus").unwrap();
        let err = object_from_json(&s, bus, &json!({"id": 5, "seats": 70000}))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("Bus.seats") && err.contains("out of range"),
            "{err}"
        );
        let err = object_from_json(&s, bus, &json!({"id": 5, "fare": 0.1}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("strings"), "{err}");
        let err = object_from_json(&s, bus, &json!({"id": 5, "wheels": 4}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("wheels"), "{err}");
        assert!(object_from_json(&s, bus, &json!({"id": 5, "route": 7})).is_err());
        assert_eq!(
            key_from_json(&s, bus, &json!("12")).unwrap(),
            PrimaryKey::Int(12)
        );
        assert!(key_from_json(&s, bus, &json!("x")).is_err());
    }
}
