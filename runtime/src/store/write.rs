//! Write transactions: collect puts and deletes across any number of realms, then apply them in
//! one durable redb transaction that gives every realm it changed its next version and one
//! changeset.
//!
//! Values are checked against the compiled schema when they are put, so a bad value fails at the
//! call that supplied it; whether a put creates or updates is only known when the commit reads
//! the current object, so "a new object lacks a required property" fails the commit.
//!
//! A changeset is the net change of the commit per object (created, deleted, or the properties
//! whose value differs from before the commit), so a commit whose operations cancel out creates
//! no version.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use chrono::Utc;
use pgrealm_schema::value::check_value;
use pgrealm_schema::{Class, Object, PrimaryKey, RealmObject, Value, ValueError};
use redb::{ReadableTable, WriteTransaction};

use super::changeset::{diff_list, Instruction};
use super::codec::{decode_object, encode_object_into, LogWriter};
use super::error::StoreError;
use super::path::RealmPath;
use super::wal::{Lazy, Logged, Redo, Tag};
use super::{
    locator_row_into, object_key, object_prefix, Store, LOCATOR, LOG, META, METADATA, OBJECTS,
    REALMS, REALM_CLASSES, REALM_PATHS,
};

/// A write transaction under construction. Dropping it without committing discards it.
#[derive(Debug)]
pub struct WriteTx {
    store: Store,
    origin: String,
    ops: Vec<Op>,
    metadata: BTreeMap<String, Vec<u8>>,
    expected: Expected,
}

/// Metadata values a commit expects to find (`None`: no value), see
/// [`WriteTx::expect_metadata`].
pub(super) type Expected = BTreeMap<String, Option<Vec<u8>>>;

/// What a [`WriteTx`] collected, taken out of it to be applied elsewhere.
#[derive(Debug, Default)]
pub(super) struct Collected {
    pub(super) ops: Vec<Op>,
    pub(super) metadata: BTreeMap<String, Vec<u8>>,
    pub(super) expected: Expected,
}

#[derive(Debug)]
pub(super) enum Op {
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
    Update {
        realm: RealmPath,
        key: PrimaryKey,
        object: Object,
    },
    /// A put of an object the caller knows the realm does not hold, which no other operation
    /// of the transaction touches (see [`WriteTx::create_typed_object`]): every value of it,
    /// already encoded as its record.
    Create {
        realm: RealmPath,
        class: usize,
        key: PrimaryKey,
        record: Vec<u8>,
    },
    Move {
        from: RealmPath,
        to: RealmPath,
        key: PrimaryKey,
        object: Object,
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
            expected: BTreeMap::new(),
        }
    }

    /// Take what was collected so far, leaving the transaction empty (for `streaming.rs`,
    /// which applies it to its open redb transaction in batches).
    pub(super) fn drain(&mut self) -> Collected {
        Collected {
            ops: std::mem::take(&mut self.ops),
            metadata: std::mem::take(&mut self.metadata),
            expected: std::mem::take(&mut self.expected),
        }
    }

    /// The origin tag this transaction's changesets carry.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Turn the [`create_record`](Self::create_record) at `index` into an ordinary put of the
    /// same object, so that later operations of this transaction may touch the object (the
    /// sync engine's stream, when a row it created so changes again). Any other operation is
    /// left as it is.
    pub(crate) fn demote_create(&mut self, index: usize) -> Result<(), StoreError> {
        let Some(op) = self.ops.get_mut(index) else {
            return Ok(());
        };
        if let Op::Create {
            realm,
            class,
            key,
            record,
        } = op
        {
            let name = &self.store.inner.schema.classes[*class].name;
            let object = decode_object(name, record)?;
            *op = Op::Put {
                realm: realm.clone(),
                key: key.clone(),
                object,
            };
        }
        Ok(())
    }

    /// Make room for `ops` more operations at once (the initial load knows how many rows a
    /// chunk takes), rather than growing the list while they are added.
    pub(crate) fn reserve(&mut self, ops: usize) {
        self.ops.reserve(ops);
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
        let (key, object) = self.checked(realm, object)?;
        self.ops.push(Op::Put {
            realm: realm.clone(),
            key,
            object,
        });
        Ok(())
    }

    /// [`put_object`](Self::put_object) of an object whose key is `key` and whose values are
    /// already of their properties' types (the sync engine's rows: converted and checked when
    /// mapped), so they are not checked again. Debug builds (the tests) check that claim.
    pub(crate) fn put_typed_object(
        &mut self,
        realm: &RealmPath,
        key: PrimaryKey,
        object: Object,
    ) -> Result<(), StoreError> {
        self.check_typed(realm, &key, &object)?;
        self.ops.push(Op::Put {
            realm: realm.clone(),
            key,
            object,
        });
        Ok(())
    }

    /// [`put_typed_object`](Self::put_typed_object) of an object the realm does not hold when
    /// the commit begins and which no other operation of this transaction touches: the initial
    /// load's rows of a class the store held nothing of. The commit then writes it without
    /// noting it among the objects it touched. It still makes sure: a key not past the greatest
    /// the realm held for the class (another writer's object) is put as usual.
    ///
    /// Its record is encoded here, by the caller's thread, not by the commit.
    pub(crate) fn create_typed_object(
        &mut self,
        realm: &RealmPath,
        key: PrimaryKey,
        object: Object,
    ) -> Result<(), StoreError> {
        self.check_typed(realm, &key, &object)?;
        let class = self.store.inner.classes[&object.class];
        let mut values = object.values;
        fill_absent(
            &self.store,
            realm,
            &self.store.inner.schema.classes[class],
            &key,
            &mut values,
        )?;
        let mut record = Vec::new();
        encode_object_into(&values, &mut record);
        self.ops.push(Op::Create {
            realm: realm.clone(),
            class,
            key,
            record,
        });
        Ok(())
    }

    /// [`create_typed_object`](Self::create_typed_object) of an object of the store schema's
    /// class number `index` given as its record: every property of the class, in name order,
    /// each value of its property's type (the initial load encodes a row's columns so, without
    /// building the object). Debug builds check that claim.
    pub(crate) fn create_record(
        &mut self,
        realm: RealmPath,
        index: usize,
        key: PrimaryKey,
        record: Vec<u8>,
    ) -> Result<(), StoreError> {
        #[cfg(debug_assertions)]
        {
            let class = &self.store.inner.schema.classes[index].name;
            let object = decode_object(class, &record).expect("a record the caller encoded");
            assert_eq!(
                object.values.len(),
                self.store.inner.schema.classes[index].properties.len(),
                "{realm}: a record holds every property of {class}"
            );
            self.check_typed(&realm, &key, &object)?;
        }
        self.ops.push(Op::Create {
            realm,
            class: index,
            key,
            record,
        });
        Ok(())
    }

    /// That `object` is of a class of the schema; in debug builds (the tests), also that its
    /// key is `key` and its values are of their properties' types, as the typed puts claim.
    fn check_typed(
        &self,
        realm: &RealmPath,
        key: &PrimaryKey,
        object: &Object,
    ) -> Result<(), StoreError> {
        self.store.class(&object.class)?;
        #[cfg(debug_assertions)]
        {
            let (checked_key, checked) = self.checked(realm, object.clone())?;
            assert_eq!(&checked_key, key, "{realm}: the key given is the object's");
            assert!(
                checked.values.len() == object.values.len()
                    && checked
                        .values
                        .iter()
                        .zip(&object.values)
                        .all(|((_, a), (_, b))| a.same_as(b)),
                "{realm}: {object:?} is not of its properties' types"
            );
        }
        #[cfg(not(debug_assertions))]
        let _ = (realm, key);
        Ok(())
    }

    /// Update an object only if the realm holds it when the commit applies (after this
    /// transaction's earlier operations); otherwise do nothing. For changes to an object that
    /// another writer may delete meanwhile — PostgreSQL's list entries of an owner the app has
    /// just deleted: that delete is on its way to PostgreSQL, whose cascade removes the entries.
    pub fn update_object(&mut self, realm: &RealmPath, object: Object) -> Result<(), StoreError> {
        let (key, object) = self.checked(realm, object)?;
        self.ops.push(Op::Update {
            realm: realm.clone(),
            key,
            object,
        });
        Ok(())
    }

    /// Move an object from realm `from` to realm `to` (a row whose routing column changed),
    /// changing the properties `object` names on the way; the others keep their value from
    /// `from`. When `from` does not hold the object this is a put into `to`.
    pub fn move_object(
        &mut self,
        from: &RealmPath,
        to: &RealmPath,
        object: Object,
    ) -> Result<(), StoreError> {
        let (key, object) = self.checked(to, object)?;
        self.ops.push(Op::Move {
            from: from.clone(),
            to: to.clone(),
            key,
            object,
        });
        Ok(())
    }

    /// Check an object's class, key and the values it names against the compiled schema.
    fn checked(
        &self,
        realm: &RealmPath,
        object: Object,
    ) -> Result<(PrimaryKey, Object), StoreError> {
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
        let mut values = object.values;
        // Checked in place: the map the caller built is the one the commit keeps.
        for (name, value) in values.iter_mut() {
            let property = class.property_named(name).ok_or_else(|| {
                err(
                    key.to_string(),
                    ValueError::UnknownProperty {
                        class: class.name.clone(),
                        property: name.clone(),
                    },
                )
            })?;
            let given = std::mem::replace(value, Value::Null);
            *value = check_value(self.store.schema(), class, property, given)
                .map_err(|e| err(key.to_string(), e))?;
        }
        let object = Object {
            class: object.class,
            values,
        };
        Ok((key, object))
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

    /// Commit only if metadata `key` holds `value` when this commit is applied (`None`: holds
    /// nothing). The check runs under the store's write lock (on a remote store, the object
    /// server's), so of two writers that read the same value and expect it, only the first
    /// commits; the other gets [`StoreError::MetadataChanged`] and writes nothing. The sync
    /// engine expects the checkpoint it started from, so a commit of an engine presumed dead
    /// that lands late can never make its successor apply the same transactions again.
    pub fn expect_metadata(&mut self, key: impl Into<String>, value: Option<Vec<u8>>) {
        self.expected.insert(key.into(), value);
    }

    /// Apply everything in one redb transaction and return when it is on disk.
    ///
    /// A transaction that changes nothing (and sets no metadata) creates no version and does not
    /// touch the disk. On error nothing is applied.
    ///
    /// Transactions committed at the same time from several threads may share one redb
    /// transaction and one fsync (see [`group`](super::group)); each still gets its own versions
    /// and changesets, as if committed alone, and none returns before it is durable.
    pub fn commit(self) -> Result<CommitInfo, StoreError> {
        if self.ops.is_empty() && self.metadata.is_empty() {
            return Ok(CommitInfo::default());
        }
        if let Some(remote) = self.store.remote() {
            // One request: the server rebuilds this transaction and commits it atomically.
            return remote.commit(&self.origin, &self.ops, &self.metadata, &self.expected);
        }
        let store = self.store.clone();
        store.inner.commits.commit(&store, self)
    }

    /// Whether committing this transaction writes anything even if it changes no realm.
    pub(super) fn has_metadata(&self) -> bool {
        !self.metadata.is_empty()
    }

    /// Apply this transaction inside `txn`, which other transactions of the same group commit
    /// share (those before it already applied, so it sees their changes).
    ///
    /// Every check that depends on the data (a value a property refuses, a record that does not
    /// decode) runs before this transaction writes anything: such a failure is
    /// [`ApplyError::Refused`] and leaves `txn` as it was, so the rest of the group commits.
    pub(super) fn apply_in(
        self,
        txn: &WriteTransaction,
        redo: Option<&RefCell<Redo>>,
        learned: &RefCell<Vec<(u64, usize)>>,
    ) -> Result<CommitInfo, ApplyError> {
        let store = &self.store;
        match check_expected(txn, &self.expected) {
            Ok(()) => {}
            Err(e @ StoreError::MetadataChanged { .. }) => return Err(ApplyError::Refused(e)),
            Err(e) => return Err(ApplyError::Storage(e)),
        }
        let mut apply = Applier::open(store, txn, redo, learned).map_err(ApplyError::Storage)?;
        apply.reserve(&self.ops);
        for op in self.ops {
            apply.op(op).map_err(ApplyError::Refused)?;
        }
        let info = apply.finish(&self.origin).map_err(ApplyError::Storage)?;
        if !self.metadata.is_empty() {
            let mut metadata = Logged::open(txn, METADATA, Tag::Metadata, redo)
                .map_err(|e| ApplyError::Storage(e.into()))?;
            for (key, value) in &self.metadata {
                metadata
                    .insert(key.as_str(), value.as_slice())
                    .map_err(|e| ApplyError::Storage(e.into()))?;
            }
        }
        Ok(info)
    }
}

/// Sort table rows by key, unless they are already (rows usually come in key order).
pub(super) fn sort_unless_sorted<K: Ord + Copy, V>(rows: &mut [(K, V)]) {
    if !rows.is_sorted_by(|a, b| a.0 <= b.0) {
        rows.sort_unstable_by_key(|r| r.0);
    }
}

/// A new object's values: the given ones (already checked) plus NULL or the empty list for
/// every property not given, which a required property refuses.
fn fill_absent(
    store: &Store,
    realm: &RealmPath,
    class: &Class,
    key: &PrimaryKey,
    values: &mut BTreeMap<String, Value>,
) -> Result<(), StoreError> {
    if values.len() == class.properties.len() {
        // Every property given (the values are checked to be the class's own): none to add.
        return Ok(());
    }
    for property in &class.properties {
        if values.contains_key(&property.name) {
            continue;
        }
        let value =
            check_value(store.schema(), class, property, Value::Null).map_err(|source| {
                StoreError::Value {
                    realm: realm.clone(),
                    class: class.name.clone(),
                    key: key.to_string(),
                    source: Box::new(source),
                }
            })?;
        values.insert(property.name.clone(), value);
    }
    Ok(())
}

/// Whether the metadata in `txn` holds what a commit expects; [`StoreError::MetadataChanged`]
/// names the first key that does not.
pub(super) fn check_expected(
    txn: &WriteTransaction,
    expected: &Expected,
) -> Result<(), StoreError> {
    if expected.is_empty() {
        return Ok(());
    }
    let table = txn.open_table(METADATA)?;
    for (key, value) in expected {
        let found = table.get(key.as_str())?.map(|g| g.value().to_vec());
        if found != *value {
            return Err(StoreError::MetadataChanged {
                detail: format!(
                    "store metadata {key:?} holds {}, but this commit expected {}",
                    shown(found.as_deref()),
                    shown(value.as_deref())
                ),
            });
        }
    }
    Ok(())
}

/// A metadata value for an error message: its text when it is UTF-8.
fn shown(value: Option<&[u8]>) -> String {
    match value {
        None => "nothing".to_owned(),
        Some(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => format!("{text:?}"),
            Err(_) => format!("{} bytes", bytes.len()),
        },
    }
}

/// Why a transaction could not be applied inside a shared redb transaction.
#[derive(Debug)]
pub(super) enum ApplyError {
    /// The transaction itself is at fault; nothing of it was written.
    Refused(StoreError),
    /// Writing failed: the shared redb transaction must be abandoned.
    Storage(StoreError),
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
pub(super) struct RealmState {
    pub(super) path: RealmPath,
    pub(super) id: u64,
    pub(super) version: u64,
    pub(super) oldest: u64,
    pub(super) is_new: bool,
    /// The realm's classes loaded so far, with this commit's additions (`None`: the realm does
    /// not have the class).
    pub(super) classes: HashMap<String, Option<Class>>,
    /// Compiled classes (by index) this commit already gave the realm, so the per-object check
    /// is one lookup.
    ensured: Vec<bool>,
    /// Per compiled class (by index), once read: the greatest object key the realm held when
    /// the commit began (`Some(None)`: none), and then those it created
    /// ([`Applier::flush_created`]), for a streaming write's later batches. It may stay greater
    /// than the greatest key after a delete: a key not past it is only looked up.
    pub(super) last_keys: Vec<Option<Option<Vec<u8>>>>,
    /// Classes whose definition this commit extends, and the instructions saying so.
    pub(super) changed_classes: Vec<String>,
    pub(super) schema_changes: Vec<Instruction>,
    /// The objects this commit touches, first-touched first (indices into `Applier::touched`).
    pub(super) objects: Vec<usize>,
    /// The instructions of the objects created without being touched ([`Op::Create`]).
    creates: LogWriter,
}

/// Realms of a commit among which [`Applier::realm`] first looks for the very path it is given.
const FEW_REALMS: usize = 16;

/// An object created by this commit, waiting for [`Applier::flush_created`]: where its key,
/// its record and its locator row are in `Applier::created_bytes`.
struct Created {
    /// The realm's index in `Applier::states`, and the class number.
    realm: usize,
    class: usize,
    key: std::ops::Range<usize>,
    record: CreatedRecord,
    locator_row: std::ops::Range<usize>,
}

/// Where a created object's record is.
enum CreatedRecord {
    /// In `Applier::created_bytes` (encoded by the commit).
    InBytes(std::ops::Range<usize>),
    /// As the operation gave it ([`Op::Create`]): kept, not copied.
    Given(Vec<u8>),
}

impl Created {
    fn record<'b>(&'b self, bytes: &'b [u8]) -> &'b [u8] {
        match &self.record {
            CreatedRecord::InBytes(range) => &bytes[range.clone()],
            CreatedRecord::Given(record) => record,
        }
    }
}

/// One object a commit touches: as it was before the commit and as it is now.
struct Touched {
    realm: usize,
    class: usize,
    key: PrimaryKey,
    record_key: Vec<u8>,
    original: Option<BTreeMap<String, Value>>,
    current: Option<BTreeMap<String, Value>>,
}

impl Touched {
    /// The primary key's bytes inside `record_key` (after realm id, class and separator).
    fn object_key(&self, class: &Class) -> &[u8] {
        &self.record_key[8 + class.name.len() + 1..]
    }
}

/// The open tables of one commit.
///
/// Operations edit the touched objects in memory; [`Applier::finish`] compares each with what it
/// was before the commit, so a changeset holds the net change (a create then delete in one
/// commit is nothing, and makes no version) and each object is written once.
pub(super) struct Applier<'t> {
    store: &'t Store,
    realms: Logged<'t, &'static str, (u64, u64, u64)>,
    realm_paths: Lazy<'t, u64, &'static str>,
    realm_classes: Lazy<'t, (u64, &'static str), &'static str>,
    objects: Logged<'t, &'static [u8], &'static [u8]>,
    log: Logged<'t, (u64, u64), &'static [u8]>,
    locator: Lazy<'t, &'static [u8], ()>,
    meta: Lazy<'t, &'static str, u64>,
    /// (realm id, class number) pairs found to hold the whole compiled class, for
    /// [`Inner::complete_classes`](super::Inner) once the commit is durable.
    learned: &'t RefCell<Vec<(u64, usize)>>,
    pub(super) states: Vec<RealmState>,
    pub(super) by_path: HashMap<RealmPath, usize>,
    last_realm: Option<usize>,
    touched: Vec<Touched>,
    by_record: HashMap<Vec<u8>, usize>,
    pub(super) next_id: Option<u64>,
    /// Scratch space for encoding records and keys, reused across objects.
    record: Vec<u8>,
    locator_row: Vec<u8>,
    /// Objects created by this commit and not yet written (see [`Applier::flush_created`]).
    created: Vec<Created>,
    created_bytes: Vec<u8>,
    /// An updated object's instructions, before they go to the changeset.
    changes: Vec<Instruction>,
}

impl<'t> Applier<'t> {
    /// Open the tables in `txn`; every write is also recorded in `redo` when there is one (a
    /// commit that goes through the write-ahead log). Realms found to hold a whole compiled
    /// class are added to `learned`.
    pub(super) fn open(
        store: &'t Store,
        txn: &'t WriteTransaction,
        redo: Option<&'t RefCell<Redo>>,
        learned: &'t RefCell<Vec<(u64, usize)>>,
    ) -> Result<Self, StoreError> {
        Ok(Applier {
            store,
            realms: Logged::open(txn, REALMS, Tag::Realms, redo)?,
            realm_paths: Lazy::new(txn, REALM_PATHS, Tag::RealmPaths, redo),
            realm_classes: Lazy::new(txn, REALM_CLASSES, Tag::RealmClasses, redo),
            objects: Logged::open(txn, OBJECTS, Tag::Objects, redo)?,
            log: Logged::open(txn, LOG, Tag::Log, redo)?,
            locator: Lazy::new(txn, LOCATOR, Tag::Locator, redo),
            meta: Lazy::new(txn, META, Tag::Meta, redo),
            learned,
            states: Vec::new(),
            by_path: HashMap::new(),
            last_realm: None,
            touched: Vec::new(),
            by_record: HashMap::new(),
            next_id: None,
            record: Vec::new(),
            locator_row: Vec::new(),
            created: Vec::new(),
            created_bytes: Vec::new(),
            changes: Vec::new(),
        })
    }

    /// Make room for `ops` at once: a batch of the initial load creates tens of thousands of
    /// objects, and growing their lists step by step copied them over and over.
    pub(super) fn reserve(&mut self, ops: &[Op]) {
        let created = ops
            .iter()
            .filter(|op| matches!(op, Op::Create { .. }))
            .count();
        let touching = ops.len() - created;
        self.touched.reserve(touching);
        self.by_record.reserve(touching);
        self.created.reserve(created);
        if let Some(Op::Create { class, key, .. }) = ops.first() {
            // The record key (realm id, class name, 0, key) and the locator row (class name,
            // 0, the key's length in 4 bytes, key, realm id); the first create's sizes stand
            // for the others.
            let name = self.store.inner.schema.classes[*class].name.len();
            let each = 2 * (8 + name + 1 + super::codec::key_len(key)) + 4;
            self.created_bytes.reserve(created * each);
        }
    }

    /// The realm's state; `create` makes a new realm when there is none.
    fn realm(&mut self, path: &RealmPath, create: bool) -> Result<Option<usize>, StoreError> {
        // Consecutive operations usually name the same realm: one comparison, not a hash.
        if let Some(i) = self.last_realm {
            if self.states[i].path == *path {
                return Ok(Some(i));
            }
        }
        // The sync engine's operations share one path per realm: among a few realms, the one
        // it names is found by pointer, without comparing or hashing the text.
        if let Some(i) = self.states[..self.states.len().min(FEW_REALMS)]
            .iter()
            .position(|s| s.path.is_clone_of(path))
        {
            self.last_realm = Some(i);
            return Ok(Some(i));
        }
        if let Some(i) = self.by_path.get(path) {
            self.last_realm = Some(*i);
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
                        .open()?
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
            ensured: Vec::new(),
            last_keys: Vec::new(),
            changed_classes: Vec::new(),
            schema_changes: Vec::new(),
            objects: Vec::new(),
            creates: LogWriter::new(),
        });
        self.by_path.insert(path.clone(), self.states.len() - 1);
        self.last_realm = Some(self.states.len() - 1);
        Ok(Some(self.states.len() - 1))
    }

    pub(super) fn op(&mut self, op: Op) -> Result<(), StoreError> {
        match op {
            Op::Put { realm, key, object } => {
                let i = self.realm(&realm, true)?.expect("created on demand");
                self.put(i, key, object)
            }
            Op::Create {
                realm,
                class,
                key,
                record,
            } => {
                let i = self.realm(&realm, true)?.expect("created on demand");
                self.create(i, class, key, record)
            }
            Op::Delete { realm, class, key } => match self.realm(&realm, false)? {
                Some(i) => {
                    let class = self.store.inner.classes[&class];
                    let t = self.touch(i, class, key)?;
                    self.touched[t].current = None;
                    Ok(())
                }
                None => Ok(()),
            },
            Op::Update { realm, key, object } => match self.realm(&realm, false)? {
                Some(i) => {
                    let class = self.store.inner.classes[&object.class];
                    let t = self.touch(i, class, key.clone())?;
                    if self.touched[t].current.is_some() {
                        self.put(i, key, object)
                    } else {
                        Ok(())
                    }
                }
                None => Ok(()),
            },
            Op::Move {
                from,
                to,
                key,
                mut object,
            } => {
                let class = self.store.inner.classes[&object.class];
                let carried = match self.realm(&from, false)? {
                    Some(i) => {
                        let t = self.touch(i, class, key.clone())?;
                        self.touched[t].current.take()
                    }
                    None => None,
                };
                if let Some(mut values) = carried {
                    values.append(&mut object.values);
                    object.values = values;
                }
                let i = self.realm(&to, true)?.expect("created on demand");
                self.put(i, key, object)
            }
        }
    }

    /// The touched-object entry of an object, reading it on first touch.
    fn touch(&mut self, realm: usize, class: usize, key: PrimaryKey) -> Result<usize, StoreError> {
        let class_name = &self.store.inner.schema.classes[class].name;
        let record_key = object_key(self.states[realm].id, class_name, &key);
        if let Some(t) = self.by_record.get(&record_key) {
            return Ok(*t);
        }
        // A key past the last one the realm holds for the class (new rows of a serial key, the
        // usual bulk insert) cannot be there: no lookup needed.
        let past_last = match self.last_key(realm, class)? {
            Some(last) => record_key.as_slice() > last,
            None => true,
        };
        let class_name = &self.store.inner.schema.classes[class].name;
        let original = if past_last {
            None
        } else {
            match self.objects.get(record_key.as_slice())? {
                Some(g) => Some(decode_object(class_name, g.value())?.values),
                None => None,
            }
        };
        self.touched.push(Touched {
            realm,
            class,
            key,
            record_key: record_key.clone(),
            current: original.clone(),
            original,
        });
        let t = self.touched.len() - 1;
        self.by_record.insert(record_key, t);
        self.states[realm].objects.push(t);
        Ok(t)
    }

    /// The greatest object key the realm holds for class number `class` as the commit began
    /// (nothing is written before [`Applier::finish`]), read once per commit; in a streaming
    /// write, as the batch began.
    fn last_key(&mut self, realm: usize, class: usize) -> Result<Option<&[u8]>, StoreError> {
        let state = &mut self.states[realm];
        if state.last_keys.len() <= class {
            state.last_keys.resize(class + 1, None);
        }
        if state.last_keys[class].is_none() {
            let last = if state.is_new {
                None
            } else {
                let class_name = &self.store.inner.schema.classes[class].name;
                let prefix = object_prefix(state.id, class_name);
                let mut end = prefix.clone();
                *end.last_mut().expect("the prefix ends with a separator") += 1;
                let last = self
                    .objects
                    .range(prefix.as_slice()..end.as_slice())?
                    .next_back()
                    .transpose()?;
                last.map(|(k, _)| k.value().to_vec())
            };
            state.last_keys[class] = Some(last);
        }
        Ok(state.last_keys[class]
            .as_ref()
            .and_then(|last| last.as_deref()))
    }

    /// Give the realm the compiled definition of class number `index` (recording what it adds).
    fn ensure_class(&mut self, i: usize, index: usize) -> Result<(), StoreError> {
        let class = &self.store.inner.schema.classes[index];
        let state = &mut self.states[i];
        if state.ensured.get(index).copied().unwrap_or(false) {
            return Ok(());
        }
        if state.ensured.len() <= index {
            state.ensured.resize(index + 1, false);
        }
        state.ensured[index] = true;
        if !state.is_new && self.store.class_is_complete(state.id, index) {
            // A durable commit found this realm holding the whole compiled class: nothing to
            // read or add (a realm's classes only ever grow).
            return Ok(());
        }
        if !state.classes.contains_key(&class.name) {
            // A realm new in this commit holds no class yet.
            let stored = match state.is_new {
                true => None,
                false => self
                    .realm_classes
                    .open()?
                    .get((state.id, class.name.as_str()))?
                    .map(|g| serde_json::from_str::<Class>(g.value())),
            };
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
        let mut changed = false;
        match known {
            None => {
                state.schema_changes.push(Instruction::AddClass {
                    class: class.clone(),
                });
                *known = Some(class.clone());
                changed = true;
            }
            Some(have) => {
                for property in &class.properties {
                    if have.property_named(&property.name).is_none() {
                        state.schema_changes.push(Instruction::AddProperty {
                            class: class.name.clone(),
                            property: property.clone(),
                        });
                        have.properties.push(property.clone());
                        changed = true;
                    }
                }
            }
        }
        if changed && !state.changed_classes.contains(&class.name) {
            state.changed_classes.push(class.name.clone());
        }
        if !changed && !state.is_new {
            self.learned.borrow_mut().push((state.id, index));
        }
        Ok(())
    }

    fn put(&mut self, i: usize, key: PrimaryKey, object: Object) -> Result<(), StoreError> {
        let store = self.store;
        let class_index = store.inner.classes[&object.class];
        let class = &store.inner.schema.classes[class_index];
        self.ensure_class(i, class_index)?;
        let t = self.touch(i, class_index, key)?;
        let touched = &mut self.touched[t];
        match &mut touched.current {
            Some(current) => current.extend(object.values),
            None => {
                let mut values = object.values;
                fill_absent(
                    store,
                    &self.states[i].path,
                    class,
                    &touched.key,
                    &mut values,
                )?;
                touched.current = Some(values);
            }
        }
        Ok(())
    }

    /// [`Op::Create`]: an object past the greatest key the realm held for its class as the
    /// commit began (or of a realm new in it) is new, and goes straight to the changeset and to
    /// the objects [`Applier::flush_created`] writes, without the touched-object entry a put
    /// keeps to net out later operations (the caller promised there are none). Any other is put.
    fn create(
        &mut self,
        i: usize,
        class_index: usize,
        key: PrimaryKey,
        record: Vec<u8>,
    ) -> Result<(), StoreError> {
        let store = self.store;
        let class = &store.inner.schema.classes[class_index];
        let realm_id = self.states[i].id;
        let record_key_start = self.created_bytes.len();
        self.created_bytes
            .extend_from_slice(&realm_id.to_be_bytes());
        self.created_bytes.extend_from_slice(class.name.as_bytes());
        self.created_bytes.push(0);
        let object_key_start = self.created_bytes.len();
        super::codec::key_into(&key, &mut self.created_bytes);
        let record_key = record_key_start..self.created_bytes.len();
        self.last_key(i, class_index)?;
        let past_last = match &self.states[i].last_keys[class_index] {
            Some(Some(last)) => self.created_bytes[record_key.clone()] > last[..],
            _ => true,
        };
        if !past_last {
            self.created_bytes.truncate(record_key_start);
            let object = decode_object(&class.name, &record)?;
            return self.put(i, key, object);
        }
        debug_assert!(
            !self
                .by_record
                .contains_key(&self.created_bytes[record_key.clone()]),
            "{}: {key} was created and touched by one commit",
            self.states[i].path
        );
        self.ensure_class(i, class_index)?;
        let Applier {
            states,
            created_bytes,
            locator_row,
            created,
            ..
        } = self;
        states[i].creates.create(&class.name, &key, &record);
        locator_row_into(
            class.name.as_bytes(),
            &created_bytes[object_key_start..record_key.end],
            realm_id,
            locator_row,
        );
        let row_start = created_bytes.len();
        created_bytes.extend_from_slice(locator_row);
        created.push(Created {
            realm: i,
            class: class_index,
            key: record_key,
            record: CreatedRecord::Given(record),
            locator_row: row_start..created_bytes.len(),
        });
        Ok(())
    }

    /// Write the net instructions of one touched object to the changeset, and the object and
    /// the locator to their tables.
    pub(super) fn settle(&mut self, t: usize, log: &mut LogWriter) -> Result<(), StoreError> {
        // Each object settles once: its new state is written and dropped.
        let current = self.touched[t].current.take();
        let touched = &self.touched[t];
        let class = &self.store.inner.schema.classes[touched.class];
        let realm_id = self.states[touched.realm].id;
        let key = &touched.key;
        match (&touched.original, current) {
            (None, None) => {}
            (None, Some(values)) => {
                encode_object_into(&values, &mut self.record);
                locator_row_into(
                    class.name.as_bytes(),
                    touched.object_key(class),
                    realm_id,
                    &mut self.locator_row,
                );
                log.create(&class.name, key, &self.record);
                // Written by `flush_created`, sorted, with the other objects created.
                let key_start = self.created_bytes.len();
                self.created_bytes.extend_from_slice(&touched.record_key);
                let start = self.created_bytes.len();
                self.created_bytes.extend_from_slice(&self.record);
                let middle = self.created_bytes.len();
                self.created_bytes.extend_from_slice(&self.locator_row);
                self.created.push(Created {
                    realm: touched.realm,
                    class: touched.class,
                    key: key_start..start,
                    record: CreatedRecord::InBytes(start..middle),
                    locator_row: middle..self.created_bytes.len(),
                });
            }
            (Some(_), None) => {
                self.objects.remove(touched.record_key.as_slice())?;
                locator_row_into(
                    class.name.as_bytes(),
                    touched.object_key(class),
                    realm_id,
                    &mut self.locator_row,
                );
                self.locator.open()?.remove(self.locator_row.as_slice())?;
                log.delete(&class.name, key);
            }
            (Some(old), Some(new)) => {
                let out = &mut self.changes;
                out.clear();
                for (name, new_value) in &new {
                    let old_value = match old.get(name) {
                        Some(v) => v,
                        // A property the realm gained after this object was written.
                        None if class.property_named(name).is_some_and(|p| p.ty.is_list()) => {
                            &Value::List(Vec::new())
                        }
                        None => &Value::Null,
                    };
                    match (old_value, new_value) {
                        _ if old_value.same_as(new_value) => {}
                        (Value::List(a), Value::List(b)) => {
                            diff_list(&class.name, key, name, a, b, out)
                        }
                        _ => out.push(Instruction::Set {
                            class: class.name.clone(),
                            key: key.clone(),
                            property: name.clone(),
                            old: old_value.clone(),
                            new: new_value.clone(),
                        }),
                    }
                }
                if !out.is_empty() {
                    for ins in out.iter() {
                        log.push(ins);
                    }
                    encode_object_into(&new, &mut self.record);
                    self.objects
                        .insert(touched.record_key.as_slice(), self.record.as_slice())?;
                }
            }
        }
        Ok(())
    }

    /// The changeset of realm `i` so far: its schema changes (how many: the second value), then
    /// the net instructions of the objects it touched and of those it created.
    pub(super) fn settle_realm(&mut self, i: usize) -> Result<(LogWriter, u64), StoreError> {
        let mut log = LogWriter::new();
        for ins in std::mem::take(&mut self.states[i].schema_changes) {
            log.push(&ins);
        }
        let schema_len = log.len();
        for t in std::mem::take(&mut self.states[i].objects) {
            self.settle(t, &mut log)?;
        }
        log.append(std::mem::replace(
            &mut self.states[i].creates,
            LogWriter::new(),
        ));
        Ok((log, schema_len))
    }

    /// Write the objects [`Applier::settle`] and [`Applier::create`] created, and their locator rows, each table's in
    /// key order: runs of new keys go in through one cursor (see `Logged::insert_sorted`).
    pub(super) fn flush_created(&mut self) -> Result<(), StoreError> {
        if self.created.is_empty() {
            return Ok(());
        }
        let bytes = &self.created_bytes;
        // The greatest keys, past which a later batch of a stream takes a key as new without a
        // lookup, now include these (kept only where known: one not read yet is read when
        // needed, then from the objects written here).
        for c in &self.created {
            let state = &mut self.states[c.realm];
            if state.last_keys.len() <= c.class {
                state.last_keys.resize(c.class + 1, None);
            }
            let key = &bytes[c.key.clone()];
            match &mut state.last_keys[c.class] {
                Some(Some(last)) if key > &last[..] => {
                    last.clear();
                    last.extend_from_slice(key);
                }
                Some(Some(_)) => {}
                // The realm held none of the class, or is new in this commit.
                slot @ Some(None) => *slot = Some(Some(key.to_vec())),
                slot @ None if state.is_new => *slot = Some(Some(key.to_vec())),
                None => {}
            }
        }
        // New objects usually come in key order within each realm (a table's rows, new rows of
        // a serial key), and an object's key begins with its realm's id: gathered realm by
        // realm in id order, they are usually sorted already, and the locator rows (by object
        // key, then realm) in the order they came. Only rows not in order are sorted.
        let mut by_realm: Vec<Vec<(&[u8], &[u8])>> = vec![Vec::new(); self.states.len()];
        for c in &self.created {
            by_realm[c.realm].push((&bytes[c.key.clone()], c.record(bytes)));
        }
        let mut realms: Vec<usize> = (0..self.states.len()).collect();
        realms.sort_unstable_by_key(|i| self.states[*i].id);
        let mut objects = Vec::with_capacity(self.created.len());
        for i in realms {
            objects.append(&mut by_realm[i]);
        }
        sort_unless_sorted(&mut objects);
        self.objects.insert_sorted(&objects)?;
        let mut rows: Vec<(&[u8], ())> = self
            .created
            .iter()
            .map(|c| (&bytes[c.locator_row.clone()], ()))
            .collect();
        sort_unless_sorted(&mut rows);
        self.locator.open()?.insert_sorted(&rows)?;
        self.created.clear();
        self.created_bytes.clear();
        Ok(())
    }

    /// Give every changed realm its next version and changeset, and prune old changesets.
    fn finish(mut self, origin: &str) -> Result<CommitInfo, StoreError> {
        let now = Utc::now();
        let retention = self.store.inner.options.log_retention.max(1);
        let mut info = CommitInfo::default();
        let mut any_new = false;
        for i in 0..self.states.len() {
            let (log, schema_len) = self.settle_realm(i)?;
            if log.len() == schema_len {
                // Nothing happened to any object: no version, and the realm's schema stays as
                // it was.
                continue;
            }
            let state = &mut self.states[i];
            for name in &state.changed_classes {
                let class = state.classes[name]
                    .as_ref()
                    .expect("a changed class is known");
                let def = self.store.class_definition(class);
                self.realm_classes
                    .open()?
                    .insert((state.id, name.as_str()), def.as_ref())?;
            }
            state.version += 1;
            let record = log.finish(now, origin);
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
                self.realm_paths
                    .open()?
                    .insert(state.id, state.path.as_str())?;
                any_new = true;
            }
            info.versions.push((state.path.clone(), state.version));
        }
        self.flush_created()?;
        if any_new {
            let next = self.next_id.expect("a new realm took an id");
            self.meta.open()?.insert("next_realm_id", next)?;
        }
        Ok(info)
    }
}
