//! The JSON form of changesets, as `changes` and `watch` send them.

use serde_json::{json, Map, Value as Json};

use pgrealm_schema::{Schema, Value};

use crate::json::{key_from_json, key_to_json, object_from_json, value_to_json};
use crate::store::{Changeset, Instruction, RealmPath};

/// A changeset as the API sends it: `{"realm","version","origin","committed_at","instructions"}`
/// with each instruction `{"op": "create" | "set" | "delete" | "list_set" | "list_insert" |
/// "list_erase" | "list_clear" | "add_class" | "add_property", …}` and values in the API's JSON
/// form.
pub fn changeset_to_json(changeset: &Changeset) -> Json {
    let instructions: Vec<Json> = changeset
        .instructions
        .iter()
        .map(instruction_to_json)
        .collect();
    json!({
        "realm": changeset.realm.as_str(),
        "version": changeset.version,
        "origin": changeset.origin,
        "committed_at": changeset.committed_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "instructions": instructions,
    })
}

fn instruction_to_json(i: &Instruction) -> Json {
    match i {
        Instruction::AddClass { class } => json!({"op": "add_class", "class": class}),
        Instruction::AddProperty { class, property } => {
            json!({"op": "add_property", "class": class, "property": property})
        }
        Instruction::Create { class, key, values } => {
            let values: Map<String, Json> = values
                .iter()
                .map(|(k, v)| (k.clone(), value_to_json(v)))
                .collect();
            json!({"op": "create", "class": class, "key": key_to_json(key), "values": values})
        }
        Instruction::Set {
            class,
            key,
            property,
            old,
            new,
        } => json!({
            "op": "set", "class": class, "key": key_to_json(key), "property": property,
            "old": value_to_json(old), "new": value_to_json(new),
        }),
        Instruction::Delete { class, key } => {
            json!({"op": "delete", "class": class, "key": key_to_json(key)})
        }
        Instruction::ListSet {
            class,
            key,
            property,
            index,
            old,
            new,
        } => json!({
            "op": "list_set", "class": class, "key": key_to_json(key), "property": property,
            "index": index, "old": value_to_json(old), "new": value_to_json(new),
        }),
        Instruction::ListInsert {
            class,
            key,
            property,
            index,
            value,
        } => json!({
            "op": "list_insert", "class": class, "key": key_to_json(key), "property": property,
            "index": index, "value": value_to_json(value),
        }),
        Instruction::ListErase {
            class,
            key,
            property,
            index,
            old,
        } => json!({
            "op": "list_erase", "class": class, "key": key_to_json(key), "property": property,
            "index": index, "old": value_to_json(old),
        }),
        Instruction::ListClear {
            class,
            key,
            property,
        } => json!({
            "op": "list_clear", "class": class, "key": key_to_json(key), "property": property,
        }),
    }
}

/// Read a changeset sent by [`changeset_to_json`] back, typing every value by `schema`.
pub fn changeset_from_json(schema: &Schema, json: &Json) -> Result<Changeset, String> {
    let field = |name: &str| {
        json.get(name)
            .ok_or_else(|| format!("changeset without `{name}`"))
    };
    let realm = RealmPath::parse(field("realm")?.as_str().ok_or("`realm` is not a string")?)
        .map_err(|e| e.to_string())?;
    let version = field("version")?
        .as_u64()
        .ok_or("`version` is not a number")?;
    let origin = field("origin")?
        .as_str()
        .ok_or("`origin` is not a string")?
        .to_owned();
    let committed_at = chrono::DateTime::parse_from_rfc3339(
        field("committed_at")?
            .as_str()
            .ok_or("`committed_at` is not a string")?,
    )
    .map_err(|e| format!("`committed_at`: {e}"))?
    .with_timezone(&chrono::Utc);
    let instructions = field("instructions")?
        .as_array()
        .ok_or("`instructions` is not an array")?
        .iter()
        .map(|i| instruction_from_json(schema, i))
        .collect::<Result<_, _>>()?;
    Ok(Changeset {
        realm,
        version,
        origin,
        committed_at,
        instructions,
    })
}

fn instruction_from_json(schema: &Schema, json: &Json) -> Result<Instruction, String> {
    let text = |name: &str| -> Result<String, String> {
        json.get(name)
            .and_then(Json::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("instruction without string `{name}`"))
    };
    let op = text("op")?;
    if op == "add_class" {
        let class = serde_json::from_value(json.get("class").cloned().unwrap_or_default())
            .map_err(|e| format!("add_class: {e}"))?;
        return Ok(Instruction::AddClass { class });
    }
    let class_name = text("class")?;
    if op == "add_property" {
        let property = serde_json::from_value(json.get("property").cloned().unwrap_or_default())
            .map_err(|e| format!("add_property: {e}"))?;
        return Ok(Instruction::AddProperty {
            class: class_name,
            property,
        });
    }
    let class = schema
        .class(&class_name)
        .ok_or_else(|| format!("the schema has no class `{class_name}`"))?;
    let key = key_from_json(schema, class, json.get("key").unwrap_or(&Json::Null))
        .map_err(|e| e.to_string())?;
    // One property's value, typed by reading it as a one-property object.
    let value_of = |property: &str, name: &str| -> Result<Value, String> {
        let raw = json.get(name).cloned().unwrap_or(Json::Null);
        let object = object_from_json(schema, class, &json!({ property: raw }))
            .map_err(|e| e.to_string())?;
        Ok(object.values.into_values().next().unwrap_or(Value::Null))
    };
    let item_of = |property: &str, name: &str| -> Result<Value, String> {
        let raw = json.get(name).cloned().unwrap_or(Json::Null);
        let object = object_from_json(schema, class, &json!({ property: [raw] }))
            .map_err(|e| e.to_string())?;
        match object.values.into_values().next() {
            Some(Value::List(mut items)) if items.len() == 1 => Ok(items.remove(0)),
            _ => Err(format!("`{name}` is not an item of list `{property}`")),
        }
    };
    let index = || -> Result<usize, String> {
        json.get("index")
            .and_then(Json::as_u64)
            .map(|i| i as usize)
            .ok_or_else(|| "list instruction without `index`".to_owned())
    };
    Ok(match op.as_str() {
        "create" => {
            let values = json.get("values").cloned().unwrap_or_default();
            let object = object_from_json(schema, class, &values).map_err(|e| e.to_string())?;
            Instruction::Create {
                class: class_name,
                key,
                values: object.values,
            }
        }
        "delete" => Instruction::Delete {
            class: class_name,
            key,
        },
        "set" => {
            let property = text("property")?;
            Instruction::Set {
                old: value_of(&property, "old")?,
                new: value_of(&property, "new")?,
                class: class_name,
                key,
                property,
            }
        }
        "list_set" => {
            let property = text("property")?;
            Instruction::ListSet {
                index: index()?,
                old: item_of(&property, "old")?,
                new: item_of(&property, "new")?,
                class: class_name,
                key,
                property,
            }
        }
        "list_insert" => {
            let property = text("property")?;
            Instruction::ListInsert {
                index: index()?,
                value: item_of(&property, "value")?,
                class: class_name,
                key,
                property,
            }
        }
        "list_erase" => {
            let property = text("property")?;
            Instruction::ListErase {
                index: index()?,
                old: item_of(&property, "old")?,
                class: class_name,
                key,
                property,
            }
        }
        "list_clear" => Instruction::ListClear {
            property: text("property")?,
            class: class_name,
            key,
        },
        other => return Err(format!("unknown instruction `{other}`")),
    })
}
