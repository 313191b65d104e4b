//! Changesets: what one commit did to one realm, as the instruction set the original adapter
//! consumed (create, set, delete, list set/insert/erase/clear, add class, add property).
//!
//! This module owns the instruction types, the diff that turns an old and a new object into
//! instructions, and [`apply`], the inverse that replays instructions onto objects. It does no
//! I/O; the store writes what it returns.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use pgrealm_schema::{Class, Object, PrimaryKey, Property, Value};
use serde::{Deserialize, Serialize};

use super::path::RealmPath;

/// One change to a realm.
///
/// List instructions carry indices into the list as it is when the instruction applies (after
/// the instructions before it), so a consumer replays them in order: the realm → PostgreSQL
/// writer turns them into subtable writes on `(oid, idx)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Instruction {
    /// The realm's schema gains a class (its whole definition as compiled).
    AddClass {
        /// The class definition.
        class: Class,
    },
    /// A class of the realm's schema gains a property.
    AddProperty {
        /// The class.
        class: String,
        /// The new property.
        property: Property,
    },
    /// An object is created; `values` holds every property, lists included.
    Create {
        /// The class.
        class: String,
        /// The primary key.
        key: PrimaryKey,
        /// Every property value.
        values: BTreeMap<String, Value>,
    },
    /// A property that is not a list changed.
    Set {
        /// The class.
        class: String,
        /// The primary key.
        key: PrimaryKey,
        /// The property.
        property: String,
        /// The value before.
        old: Value,
        /// The value after.
        new: Value,
    },
    /// An object is deleted.
    Delete {
        /// The class.
        class: String,
        /// The primary key.
        key: PrimaryKey,
    },
    /// A list item is replaced.
    ListSet {
        /// The class.
        class: String,
        /// The primary key.
        key: PrimaryKey,
        /// The list property.
        property: String,
        /// The item's index.
        index: usize,
        /// The item before.
        old: Value,
        /// The item after.
        new: Value,
    },
    /// An item is inserted before `index` (`index == len` appends); later items shift up.
    ListInsert {
        /// The class.
        class: String,
        /// The primary key.
        key: PrimaryKey,
        /// The list property.
        property: String,
        /// Where the item goes.
        index: usize,
        /// The item.
        value: Value,
    },
    /// The item at `index` is removed; later items shift down.
    ListErase {
        /// The class.
        class: String,
        /// The primary key.
        key: PrimaryKey,
        /// The list property.
        property: String,
        /// The item's index.
        index: usize,
        /// The item removed.
        old: Value,
    },
    /// Every item is removed.
    ListClear {
        /// The class.
        class: String,
        /// The primary key.
        key: PrimaryKey,
        /// The list property.
        property: String,
    },
}

impl Instruction {
    /// The class this instruction is about.
    pub fn class(&self) -> &str {
        match self {
            Instruction::AddClass { class } => &class.name,
            Instruction::AddProperty { class, .. }
            | Instruction::Create { class, .. }
            | Instruction::Set { class, .. }
            | Instruction::Delete { class, .. }
            | Instruction::ListSet { class, .. }
            | Instruction::ListInsert { class, .. }
            | Instruction::ListErase { class, .. }
            | Instruction::ListClear { class, .. } => class,
        }
    }

    /// The object this instruction is about, if it is about one.
    pub fn key(&self) -> Option<&PrimaryKey> {
        match self {
            Instruction::AddClass { .. } | Instruction::AddProperty { .. } => None,
            Instruction::Create { key, .. }
            | Instruction::Set { key, .. }
            | Instruction::Delete { key, .. }
            | Instruction::ListSet { key, .. }
            | Instruction::ListInsert { key, .. }
            | Instruction::ListErase { key, .. }
            | Instruction::ListClear { key, .. } => Some(key),
        }
    }
}

/// What one commit did to one realm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Changeset {
    /// The realm.
    pub realm: RealmPath,
    /// The realm's version this commit created (the first commit makes version 1).
    pub version: u64,
    /// Who wrote it: `app`, `postgres`, … (the sync engine skips its own).
    pub origin: String,
    /// When it was committed.
    pub committed_at: DateTime<Utc>,
    /// The changes, in the order they apply.
    pub instructions: Vec<Instruction>,
}

/// Objects of one realm by (class, primary key): what [`apply`] replays instructions onto.
pub type RealmObjects = BTreeMap<(String, PrimaryKey), Object>;

/// Replay instructions onto a realm's objects, as a subscriber keeping a replica would.
///
/// Schema instructions add nothing here; an instruction about an object that is not there is an
/// error naming it, since it means the replica missed a changeset.
pub fn apply(objects: &mut RealmObjects, instructions: &[Instruction]) -> Result<(), String> {
    for ins in instructions {
        let id = |class: &str, key: &PrimaryKey| (class.to_owned(), key.clone());
        let missing =
            |class: &str, key: &PrimaryKey| format!("{class} {key} is not in the replica");
        match ins {
            Instruction::AddClass { .. } | Instruction::AddProperty { .. } => {}
            Instruction::Create { class, key, values } => {
                let object = Object {
                    class: class.clone(),
                    values: values.clone(),
                };
                if objects.insert(id(class, key), object).is_some() {
                    return Err(format!("{class} {key} is created twice"));
                }
            }
            Instruction::Delete { class, key } => {
                objects
                    .remove(&id(class, key))
                    .ok_or_else(|| missing(class, key))?;
            }
            Instruction::Set {
                class,
                key,
                property,
                new,
                ..
            } => {
                let object = objects
                    .get_mut(&id(class, key))
                    .ok_or_else(|| missing(class, key))?;
                object.values.insert(property.clone(), new.clone());
            }
            Instruction::ListSet {
                class,
                key,
                property,
                index,
                new,
                ..
            }
            | Instruction::ListInsert {
                class,
                key,
                property,
                index,
                value: new,
            }
            | Instruction::ListErase {
                class,
                key,
                property,
                index,
                old: new,
            } => {
                let object = objects
                    .get_mut(&id(class, key))
                    .ok_or_else(|| missing(class, key))?;
                let entry = object
                    .values
                    .entry(property.clone())
                    .or_insert_with(|| Value::List(Vec::new()));
                let Value::List(items) = entry else {
                    return Err(format!("{class}.{property} of {key} is not a list"));
                };
                let bad = || format!("{class}.{property} of {key}: index {index} out of range");
                match ins {
                    Instruction::ListSet { .. } => {
                        *items.get_mut(*index).ok_or_else(bad)? = new.clone();
                    }
                    Instruction::ListInsert { .. } if *index <= items.len() => {
                        items.insert(*index, new.clone());
                    }
                    Instruction::ListErase { .. } if *index < items.len() => {
                        items.remove(*index);
                    }
                    _ => return Err(bad()),
                }
            }
            Instruction::ListClear {
                class,
                key,
                property,
            } => {
                let object = objects
                    .get_mut(&id(class, key))
                    .ok_or_else(|| missing(class, key))?;
                object
                    .values
                    .insert(property.clone(), Value::List(Vec::new()));
            }
        }
    }
    Ok(())
}

/// The instructions that turn list `old` into list `new`.
///
/// Common edits come out minimal: an append is one insert per new item, removing one item is one
/// erase, emptying is one clear, replacing items in place is one set each. Anything else is
/// edited in place over the differing middle (after the common prefix and suffix), or, when that
/// would take more instructions, cleared and rebuilt.
pub(crate) fn diff_list(
    class: &str,
    key: &PrimaryKey,
    property: &str,
    old: &[Value],
    new: &[Value],
    out: &mut Vec<Instruction>,
) {
    if new.is_empty() {
        if !old.is_empty() {
            out.push(Instruction::ListClear {
                class: class.to_owned(),
                key: key.clone(),
                property: property.to_owned(),
            });
        }
        return;
    }
    let prefix = old
        .iter()
        .zip(new)
        .take_while(|(a, b)| a.same_as(b))
        .count();
    let max_suffix = old.len().min(new.len()) - prefix;
    let suffix = old
        .iter()
        .rev()
        .zip(new.iter().rev())
        .take(max_suffix)
        .take_while(|(a, b)| a.same_as(b))
        .count();
    let old_mid = &old[prefix..old.len() - suffix];
    let new_mid = &new[prefix..new.len() - suffix];
    let common = old_mid.len().min(new_mid.len());
    let sets = old_mid[..common]
        .iter()
        .zip(&new_mid[..common])
        .filter(|(a, b)| !a.same_as(b))
        .count();
    let in_place = sets + old_mid.len().abs_diff(new_mid.len());
    let rebuild = 1 + new.len();
    let ins = |f: &dyn Fn(String, PrimaryKey, String) -> Instruction| {
        f(class.to_owned(), key.clone(), property.to_owned())
    };
    if rebuild < in_place {
        out.push(ins(&|class, key, property| Instruction::ListClear {
            class,
            key,
            property,
        }));
        for (index, value) in new.iter().enumerate() {
            out.push(ins(&|class, key, property| Instruction::ListInsert {
                class,
                key,
                property,
                index,
                value: value.clone(),
            }));
        }
        return;
    }
    for (i, (a, b)) in old_mid[..common].iter().zip(&new_mid[..common]).enumerate() {
        if !a.same_as(b) {
            out.push(ins(&|class, key, property| Instruction::ListSet {
                class,
                key,
                property,
                index: prefix + i,
                old: a.clone(),
                new: b.clone(),
            }));
        }
    }
    for (i, value) in new_mid[common..].iter().enumerate() {
        out.push(ins(&|class, key, property| Instruction::ListInsert {
            class,
            key,
            property,
            index: prefix + common + i,
            value: value.clone(),
        }));
    }
    // Erasing at the same index repeatedly removes the run after the common part.
    for old_item in &old_mid[common..] {
        out.push(ins(&|class, key, property| Instruction::ListErase {
            class,
            key,
            property,
            index: prefix + common,
            old: old_item.clone(),
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ints(v: &[i64]) -> Vec<Value> {
        v.iter().map(|i| Value::Int(*i)).collect()
    }

    fn diff(old: &[i64], new: &[i64]) -> Vec<Instruction> {
        let mut out = Vec::new();
        diff_list(
            "C",
            &PrimaryKey::Int(1),
            "l",
            &ints(old),
            &ints(new),
            &mut out,
        );
        out
    }

    fn replay(old: &[i64], ins: &[Instruction]) -> Value {
        let mut objects = RealmObjects::new();
        objects.insert(
            ("C".into(), PrimaryKey::Int(1)),
            Object::new("C").with("l", Value::List(ints(old))),
        );
        apply(&mut objects, ins).unwrap();
        objects[&("C".into(), PrimaryKey::Int(1))].values["l"].clone()
    }

    #[test]
    fn common_edits_are_minimal() {
        assert!(matches!(
            &diff(&[1, 2], &[1, 2, 3])[..],
            [Instruction::ListInsert { index: 2, .. }]
        ));
        assert!(matches!(
            &diff(&[1, 2, 3], &[1, 3])[..],
            [Instruction::ListErase { index: 1, .. }]
        ));
        assert!(matches!(
            &diff(&[1, 2, 3], &[])[..],
            [Instruction::ListClear { .. }]
        ));
        assert!(matches!(
            &diff(&[1, 2, 3], &[1, 9, 3])[..],
            [Instruction::ListSet { index: 1, .. }]
        ));
        assert!(matches!(
            &diff(&[2, 3], &[1, 2, 3])[..],
            [Instruction::ListInsert { index: 0, .. }]
        ));
        assert!(diff(&[1, 2], &[1, 2]).is_empty());
    }

    #[test]
    fn every_diff_replays_to_the_new_list() {
        let lists: [&[i64]; 8] = [
            &[],
            &[1],
            &[1, 2],
            &[2, 1],
            &[1, 2, 3],
            &[3, 3, 3],
            &[1, 1],
            &[4, 5, 6, 7],
        ];
        for old in lists {
            for new in lists {
                let ins = diff(old, new);
                assert_eq!(
                    replay(old, &ins),
                    Value::List(ints(new)),
                    "{old:?} -> {new:?}: {ins:?}"
                );
            }
        }
    }

    #[test]
    fn instructions_serialize_with_an_op_tag() {
        let json = serde_json::to_value(&diff(&[1], &[1, 2])[0]).unwrap();
        assert_eq!(json["op"], "list_insert");
        assert_eq!(json["index"], 1);
    }
}
