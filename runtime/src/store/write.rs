//! Write transactions: collect puts and deletes across any number of realms, then apply them in
//! one durable redb transaction that gives every realm it changed its next version and one
//! changeset.
//!
//! Values are checked against the compiled schema when they are put, so a bad value fails at the
//! call that supplied it; whether a put creates or updates is only known when the commit reads
//! the current object, so "a new object lacks a required property" fails the commit.

use std::collections::{BTreeMap, HashMap};

use chrono::Utc;
use pgrealm_schema::value::check_value;
use pgrealm_schema::{Class, Object, PrimaryKey, RealmObject, Value, ValueError};
use redb::{Durability, MultimapTable, ReadableTable, Table, WriteTransaction};

use super::changeset::{diff_list, Instruction};
use super::codec::{decode_object, encode_log, encode_object};
use super::error::StoreError;
use super::path::RealmPath;
use super::{
    locator_key, object_key, Committed, Store, LOCATOR, LOG, META, METADATA, OBJECTS, REALMS,
    REALM_CLASSES, REALM_PATHS,
};

/// A write transaction under construction. Dropping it without committing discards it.
#[derive(Debug)]
pub struct WriteTx {
    store: Store,
    origin: String,
    ops: Vec<Op>,
    metadata: BTreeMap<String, Vec<u8>>,
}

#[derive(Debug)]
enum Op {
    Put {
        realm: RealmPath,
        key: PrimaryKey,
        object: Object,
    },
    Delete {
        realm: RealmPath,
        class: String,
        key: PrimaryKey,
    },
}

/// What a commit did: the version each changed realm reached.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitInfo {
    /// Every realm the commit changed, with the version it created, in first-touched order.
    pub versions: Vec<(RealmPath, u64)>,
}

impl CommitInfo {
    /// The version the commit gave `realm`, if it changed it.
    pub fn version_of(&self, realm: &RealmPath) -> Option<u64> {
        self.versions
            .iter()
            .find(|(p, _)| p == realm)
            .map(|(_, v)| *v)
    }

    /// Whether the commit changed no realm (it may still have stored metadata).
    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }
}

impl WriteTx {
    pub(super) fn new(store: Store, origin: String) -> Self {
        WriteTx {
            store,
            origin,
            ops: Vec::new(),
            metadata: BTreeMap::new(),
        }
    }

    /// The origin tag this transaction's changesets carry.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Operations collected so far.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether nothing has been put or deleted yet.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Write to one realm through the typed API.
    pub fn realm<'a>(&'a mut self, realm: &'a RealmPath) -> RealmWriter<'a> {
        RealmWriter { tx: self, realm }
    }

    /// Create or update an object. Properties absent from `object` keep their value on update
    /// and are NULL (or an empty list) on create; the primary key must be present.
    pub fn put_object(&mut self, realm: &RealmPath, object: Object) -> Result<(), StoreError> {
        let class = self.store.class(&object.class)?;
        let err = |key: String, source: ValueError| StoreError::Value {
            realm: realm.clone(),
            class: object.class.clone(),
            key,
            source: Box::new(source),
        };
        let key = object
            .primary_key(self.store.schema())
            .map_err(|e| err("(no key)".into(), e))?;
        let mut values = BTreeMap::new();
        for (name, value) in object.values {
            let property = class.property_named(&name).ok_or_else(|| {
                err(
                    key.to_string(),
                    ValueError::UnknownProperty {
                        class: class.name.clone(),
                        property: name.clone(),
                    },
                )
            })?;
            let value = check_value(self.store.schema(), class, property, value)
                .map_err(|e| err(key.to_string(), e))?;
            values.insert(name, value);
        }
        self.ops.push(Op::Put {
            realm: realm.clone(),
            key,
            object: Object {
                class: object.class,
                values,
            },
        });
        Ok(())
    }

    /// Delete an object; deleting one that is not there changes nothing.
    pub fn delete_object(
        &mut self,
        realm: &RealmPath,
        class: &str,
        key: PrimaryKey,
    ) -> Result<(), StoreError> {
        self.store.class(class)?;
        self.ops.push(Op::Delete {
            realm: realm.clone(),
            class: class.to_owned(),
            key,
        });
        Ok(())
    }

    /// Store `value` under `key` atomically with this commit (the latest value per key is kept;
    /// read it back with [`Store::metadata`]). Metadata alone makes a commit that creates no
    /// version but is still durable.
    pub fn set_metadata(&mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) {
        self.metadata.insert(key.into(), value.into());
    }

    /// Apply everything in one redb transaction and return when it is on disk.
    ///
    /// A transaction that changes nothing (and sets no metadata) creates no version and does not
    /// touch the disk. On error nothing is applied.
    pub fn commit(self) -> Result<CommitInfo, StoreError> {
        if self.ops.is_empty() && self.metadata.is_empty() {
            return Ok(CommitInfo::default());
        }
        let store = self.store;
        let mut txn = store.inner.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let info = {
            let mut apply = Applier::open(&store, &txn)?;
            for op in self.ops {
                apply.op(op)?;
            }
            let info = apply.finish(&self.origin)?;
            let mut metadata = txn.open_table(METADATA)?;
            for (key, value) in &self.metadata {
                metadata.insert(key.as_str(), value.as_slice())?;
            }
            info
        };
        if info.is_empty() && self.metadata.is_empty() {
            txn.abort()?;
            return Ok(info);
        }
        txn.commit()?;
        for (path, version) in &info.versions {
            // Nobody listening is fine: subscribers catch up from the log.
            let _ = store.inner.feed.send(Committed {
                path: path.clone(),
                version: *version,
            });
        }
        Ok(info)
    }
}

/// Typed writes to one realm of a [`WriteTx`].
#[derive(Debug)]
pub struct RealmWriter<'a> {
    tx: &'a mut WriteTx,
    realm: &'a RealmPath,
}

impl RealmWriter<'_> {
    /// Create or replace an object with every field of `object`.
    pub fn put<T: RealmObject>(&mut self, object: &T) -> Result<(), StoreError> {
        self.tx.put_object(self.realm, object.to_object())
    }

    /// Delete the object of class `T` with this key.
    pub fn delete<T: RealmObject>(&mut self, key: impl Into<T::Key>) -> Result<(), StoreError> {
        use pgrealm_schema::KeyType;
        self.tx
            .delete_object(self.realm, T::CLASS, key.into().to_key())
    }

    /// Create or update an object from its dynamic form (see [`WriteTx::put_object`]).
    pub fn put_object(&mut self, object: Object) -> Result<(), StoreError> {
        self.tx.put_object(self.realm, object)
    }

    /// Delete an object by class name and key.
    pub fn delete_object(&mut self, class: &str, key: PrimaryKey) -> Result<(), StoreError> {
        self.tx.delete_object(self.realm, class, key)
    }
}

/// A realm as the commit being applied sees it.
struct RealmState {
    path: RealmPath,
    id: u64,
    version: u64,
    oldest: u64,
    is_new: bool,
    /// The realm's classes loaded so far (`None`: the realm does not have the class yet).
    classes: HashMap<String, Option<Class>>,
    instructions: Vec<Instruction>,
}

/// The open tables of one commit.
struct Applier<'t> {
    store: &'t Store,
    realms: Table<'t, &'static str, (u64, u64, u64)>,
    realm_paths: Table<'t, u64, &'static str>,
    realm_classes: Table<'t, (u64, &'static str), &'static str>,
    objects: Table<'t, &'static [u8], &'static [u8]>,
    log: Table<'t, (u64, u64), &'static [u8]>,
    locator: MultimapTable<'t, &'static [u8], u64>,
    meta: Table<'t, &'static str, u64>,
    states: Vec<RealmState>,
    by_path: HashMap<RealmPath, usize>,
    next_id: Option<u64>,
}

impl<'t> Applier<'t> {
    fn open(store: &'t Store, txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(Applier {
            store,
            realms: txn.open_table(REALMS)?,
            realm_paths: txn.open_table(REALM_PATHS)?,
            realm_classes: txn.open_table(REALM_CLASSES)?,
            objects: txn.open_table(OBJECTS)?,
            log: txn.open_table(LOG)?,
            locator: txn.open_multimap_table(LOCATOR)?,
            meta: txn.open_table(META)?,
            states: Vec::new(),
            by_path: HashMap::new(),
            next_id: None,
        })
    }

    /// The realm's state; `create` makes a new realm when there is none.
    fn realm(&mut self, path: &RealmPath, create: bool) -> Result<Option<usize>, StoreError> {
        if let Some(i) = self.by_path.get(path) {
            return Ok(Some(*i));
        }
        let existing = self.realms.get(path.as_str())?.map(|g| g.value());
        let (id, version, oldest, is_new) = match existing {
            Some((id, version, oldest)) => (id, version, oldest, false),
            None if create => {
                let id = match self.next_id {
                    Some(id) => id,
                    None => self
                        .meta
                        .get("next_realm_id")?
                        .map(|g| g.value())
                        .unwrap_or(1),
                };
                self.next_id = Some(id + 1);
                (id, 0, 1, true)
            }
            None => return Ok(None),
        };
        self.states.push(RealmState {
            path: path.clone(),
            id,
            version,
            oldest,
            is_new,
            classes: HashMap::new(),
            instructions: Vec::new(),
        });
        self.by_path.insert(path.clone(), self.states.len() - 1);
        Ok(Some(self.states.len() - 1))
    }

    fn op(&mut self, op: Op) -> Result<(), StoreError> {
        match op {
            Op::Put { realm, key, object } => {
                let i = self.realm(&realm, true)?.expect("created on demand");
                self.put(i, key, object)
            }
            Op::Delete { realm, class, key } => match self.realm(&realm, false)? {
                Some(i) => self.delete(i, &class, key),
                None => Ok(()),
            },
        }
    }

    /// Give the realm the compiled definition of `class` (recording what it adds).
    fn ensure_class(&mut self, i: usize, class: &Class) -> Result<(), StoreError> {
        let state = &mut self.states[i];
        if !state.classes.contains_key(&class.name) {
            let stored = self
                .realm_classes
                .get((state.id, class.name.as_str()))?
                .map(|g| serde_json::from_str::<Class>(g.value()));
            let stored = match stored {
                None => None,
                Some(Ok(c)) => Some(c),
                Some(Err(e)) => {
                    return Err(StoreError::Corrupt(super::codec::CodecError {
                        what: "realm class",
                        reason: e.to_string(),
                    }))
                }
            };
            state.classes.insert(class.name.clone(), stored);
        }
        let known = state.classes.get_mut(&class.name).expect("inserted above");
        let changed = match known {
            None => {
                state.instructions.push(Instruction::AddClass {
                    class: class.clone(),
                });
                *known = Some(class.clone());
                true
            }
            Some(have) => {
                let mut changed = false;
                for property in &class.properties {
                    if have.property_named(&property.name).is_none() {
                        state.instructions.push(Instruction::AddProperty {
                            class: class.name.clone(),
                            property: property.clone(),
                        });
                        have.properties.push(property.clone());
                        changed = true;
                    }
                }
                changed
            }
        };
        if changed {
            let def = serde_json::to_string(known.as_ref().expect("set above"))
                .expect("a class serializes to JSON");
            self.realm_classes
                .insert((state.id, class.name.as_str()), def.as_str())?;
        }
        Ok(())
    }

    fn put(&mut self, i: usize, key: PrimaryKey, object: Object) -> Result<(), StoreError> {
        let store = self.store;
        let class = store.class(&object.class)?;
        self.ensure_class(i, class)?;
        let state = &mut self.states[i];
        let okey = object_key(state.id, &class.name, &key);
        let existing = match self.objects.get(okey.as_slice())? {
            Some(g) => Some(decode_object(&class.name, g.value())?),
            None => None,
        };
        match existing {
            None => {
                let mut given = object.values;
                let mut values = BTreeMap::new();
                for property in &class.properties {
                    let value = match given.remove(&property.name) {
                        Some(v) => v,
                        None => check_value(store.schema(), class, property, Value::Null).map_err(
                            |source| StoreError::Value {
                                realm: state.path.clone(),
                                class: class.name.clone(),
                                key: key.to_string(),
                                source: Box::new(source),
                            },
                        )?,
                    };
                    values.insert(property.name.clone(), value);
                }
                self.objects
                    .insert(okey.as_slice(), encode_object(&values).as_slice())?;
                self.locator
                    .insert(locator_key(&class.name, &key).as_slice(), state.id)?;
                state.instructions.push(Instruction::Create {
                    class: class.name.clone(),
                    key,
                    values,
                });
            }
            Some(mut current) => {
                let before = state.instructions.len();
                for (name, new) in object.values {
                    let old = current.values.remove(&name).unwrap_or_else(|| {
                        // A property the realm gained after this object was written.
                        let is_list = class.property_named(&name).is_some_and(|p| p.ty.is_list());
                        if is_list {
                            Value::List(Vec::new())
                        } else {
                            Value::Null
                        }
                    });
                    match (&old, &new) {
                        (_, _) if old.same_as(&new) => {}
                        (Value::List(a), Value::List(b)) => {
                            diff_list(&class.name, &key, &name, a, b, &mut state.instructions)
                        }
                        _ => state.instructions.push(Instruction::Set {
                            class: class.name.clone(),
                            key: key.clone(),
                            property: name.clone(),
                            old: old.clone(),
                            new: new.clone(),
                        }),
                    }
                    current.values.insert(name, new);
                }
                if state.instructions.len() > before {
                    self.objects
                        .insert(okey.as_slice(), encode_object(&current.values).as_slice())?;
                }
            }
        }
        Ok(())
    }

    fn delete(&mut self, i: usize, class: &str, key: PrimaryKey) -> Result<(), StoreError> {
        let state = &mut self.states[i];
        let okey = object_key(state.id, class, &key);
        if self.objects.remove(okey.as_slice())?.is_some() {
            self.locator
                .remove(locator_key(class, &key).as_slice(), state.id)?;
            state.instructions.push(Instruction::Delete {
                class: class.to_owned(),
                key,
            });
        }
        Ok(())
    }

    /// Give every changed realm its next version and changeset, and prune old changesets.
    fn finish(mut self, origin: &str) -> Result<CommitInfo, StoreError> {
        let now = Utc::now();
        let retention = self.store.inner.options.log_retention.max(1);
        let mut info = CommitInfo::default();
        let mut any_new = false;
        for state in &mut self.states {
            if state.instructions.is_empty() {
                continue;
            }
            state.version += 1;
            let record = encode_log(now, origin, &state.instructions);
            self.log
                .insert((state.id, state.version), record.as_slice())?;
            let keep_from = (state.version + 1).saturating_sub(retention).max(1);
            while state.oldest < keep_from {
                self.log.remove((state.id, state.oldest))?;
                state.oldest += 1;
            }
            self.realms
                .insert(state.path.as_str(), (state.id, state.version, state.oldest))?;
            if state.is_new {
                self.realm_paths.insert(state.id, state.path.as_str())?;
                any_new = true;
            }
            info.versions.push((state.path.clone(), state.version));
        }
        if any_new {
            let next = self.next_id.expect("a new realm took an id");
            self.meta.insert("next_realm_id", next)?;
        }
        Ok(info)
    }
}
