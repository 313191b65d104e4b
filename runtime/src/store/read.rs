//! Reads: a [`Snapshot`] is one redb read transaction, so everything read through it (and the
//! [`RealmView`]s it hands out) is one consistent state, whatever commits meanwhile.
//!
//! On a remote store ([`Store::connect_remote`]) each read is one request to the server and
//! sees the server's state as of that request: see [`Snapshot`].

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use pgrealm_schema::{Class, KeyType, Object, PrimaryKey, RealmObject, Schema, Value};
use redb::{ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable};

use super::changeset::Changeset;
use super::codec::{decode_log, decode_log_header, decode_object};
use super::error::StoreError;
use super::path::RealmPath;
use super::{
    locator_class_bounds, locator_prefix, locator_row_realm, object_key, object_prefix, Store,
    LOCATOR, LOG, METADATA, OBJECTS, REALMS, REALM_CLASSES, REALM_PATHS,
};

/// A consistent read-only view of the whole store.
///
/// On a remote store it is not one state: each read answers as of its own request, so two
/// reads may see different commits in between. The sync engine tolerates that because it is the
/// only writer of origin `postgres` and already treats its snapshot as possibly older than the
/// commit it prepares (operations such as update-if-present and move re-read the object when
/// the commit applies, on the server).
#[derive(Clone)]
pub struct Snapshot {
    store: Store,
    /// `None` on a remote store.
    txn: Option<Arc<ReadTransaction>>,
    /// The locator's tables, opened on the first [`Snapshot::locate`]: the sync engine asks
    /// once per row change, and opening a table costs more than the lookup.
    locate_tables: Arc<OnceLock<LocateTables>>,
}

struct LocateTables {
    locator: ReadOnlyTable<&'static [u8], ()>,
    paths: ReadOnlyTable<u64, &'static str>,
    /// Per class (by index), once read: the class's greatest locator row (`None`: it has none).
    last_rows: Vec<OnceLock<Option<Vec<u8>>>>,
}

impl LocateTables {
    /// Whether no locator row of `class` (index `index`) can start with `prefix`, because every
    /// row of the class sorts before it: a key past the greatest held, such as a new row of a
    /// serial key (most inserts), is answered without a walk of the locator.
    fn past_last_row(&self, index: usize, class: &str, prefix: &[u8]) -> Result<bool, StoreError> {
        let last = self.last_row(index, class)?;
        Ok(last.is_none_or(|last| prefix > last))
    }

    /// The greatest locator row of `class` (index `index`), read once per snapshot.
    fn last_row(&self, index: usize, class: &str) -> Result<Option<&[u8]>, StoreError> {
        let last = match self.last_rows[index].get() {
            Some(last) => last,
            None => {
                let (start, end) = locator_class_bounds(class);
                let last = match self
                    .locator
                    .range(start.as_slice()..end.as_slice())?
                    .next_back()
                {
                    Some(row) => Some(row?.0.value().to_vec()),
                    None => None,
                };
                // Another clone may have read it meanwhile: the same snapshot, the same row.
                self.last_rows[index].get_or_init(|| last)
            }
        };
        Ok(last.as_deref())
    }
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("store", &self.store)
            .finish()
    }
}

/// A realm's name and position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealmInfo {
    /// The realm.
    pub path: RealmPath,
    /// Its current version (the number of commits that changed it).
    pub version: u64,
    /// The oldest version whose changeset is still in the log.
    pub oldest: u64,
}

impl Snapshot {
    pub(super) fn new(store: Store) -> Result<Snapshot, StoreError> {
        if store.remote().is_some() {
            return Ok(Snapshot {
                store,
                txn: None,
                locate_tables: Arc::default(),
            });
        }
        let txn = store.db().begin_read()?;
        Ok(Snapshot {
            store,
            txn: Some(Arc::new(txn)),
            locate_tables: Arc::default(),
        })
    }

    fn locate_tables(&self) -> Result<&LocateTables, StoreError> {
        if let Some(tables) = self.locate_tables.get() {
            return Ok(tables);
        }
        let tables = LocateTables {
            locator: self.txn().open_table(LOCATOR)?,
            paths: self.txn().open_table(REALM_PATHS)?,
            last_rows: (0..self.store.schema().classes.len())
                .map(|_| OnceLock::new())
                .collect(),
        };
        // Another clone may have opened them meanwhile: either is the same snapshot.
        let _ = self.locate_tables.set(tables);
        Ok(self.locate_tables.get().expect("set above"))
    }

    /// The read transaction of a local store (remote reads dispatch before this).
    fn txn(&self) -> &ReadTransaction {
        self.txn
            .as_deref()
            .expect("a local store's snapshot holds a read transaction")
    }

    fn info(&self, path: &RealmPath) -> Result<Option<(u64, RealmInfo)>, StoreError> {
        if let Some(remote) = self.store.remote() {
            // The realm number never leaves a store; remote views do not use it.
            return Ok(remote.realm(path)?.map(|info| (0, info)));
        }
        let realms = self.txn().open_table(REALMS)?;
        let found = realms.get(path.as_str())?.map(|g| g.value());
        Ok(found.map(|(id, version, oldest)| {
            (
                id,
                RealmInfo {
                    path: path.clone(),
                    version,
                    oldest,
                },
            )
        }))
    }

    /// A realm, if it has any commit.
    pub fn realm(&self, path: &RealmPath) -> Result<Option<RealmView>, StoreError> {
        Ok(self.info(path)?.map(|(id, info)| RealmView {
            snapshot: self.clone(),
            id,
            info,
        }))
    }

    /// Every realm, in path order.
    pub fn realms(&self) -> Result<Vec<RealmInfo>, StoreError> {
        if let Some(remote) = self.store.remote() {
            return remote.realms();
        }
        let realms = self.txn().open_table(REALMS)?;
        let mut out = Vec::new();
        for row in realms.iter()? {
            let (path, value) = row?;
            let (_, version, oldest) = value.value();
            out.push(RealmInfo {
                path: RealmPath::parse(path.value())?,
                version,
                oldest,
            });
        }
        Ok(out)
    }

    /// The latest metadata a commit stored under `key`.
    pub fn metadata(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(remote) = self.store.remote() {
            return remote.metadata(key);
        }
        let table = self.txn().open_table(METADATA)?;
        Ok(table.get(key)?.map(|g| g.value().to_vec()))
    }

    /// The latest metadata of each of several keys, in the order of `keys` (`None` for a key
    /// that holds nothing): what [`metadata`](Self::metadata) answers for each. On a remote
    /// store they are asked in one request per `metadata_many` bound of keys (10,000) instead
    /// of one request per key, each answered as of its own request.
    pub fn metadata_many<K: AsRef<str>>(
        &self,
        keys: &[K],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        if let Some(remote) = self.store.remote() {
            return remote.metadata_many(keys);
        }
        let table = self.txn().open_table(METADATA)?;
        keys.iter()
            .map(|key| Ok(table.get(key.as_ref())?.map(|g| g.value().to_vec())))
            .collect()
    }

    /// Several objects, each by realm, class and key, in the order asked (`None` for one the
    /// realm does not hold, or a realm that does not exist): what
    /// [`RealmView::object`] answers for each. On a remote store they are asked in one request
    /// per `object_many` bound (10,000 objects) instead of two requests per object (the realm,
    /// then the object), each answered as of its own request.
    pub fn object_many(
        &self,
        objects: &[(RealmPath, String, PrimaryKey)],
    ) -> Result<Vec<Option<Object>>, StoreError> {
        for (_, class, _) in objects {
            self.store.class(class)?;
        }
        if let Some(remote) = self.store.remote() {
            return remote.object_many(objects);
        }
        // Each realm is looked up once: the objects asked together are mostly of a few realms.
        let mut views: HashMap<&RealmPath, Option<RealmView>> = HashMap::new();
        let mut out = Vec::with_capacity(objects.len());
        for (path, class, key) in objects {
            let view = match views.entry(path) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => e.insert(self.realm(path)?),
            };
            out.push(match view {
                Some(view) => view.object(class, key)?,
                None => None,
            });
        }
        Ok(out)
    }

    /// The realms holding an object of `class` with this key (usually one).
    pub fn locate(&self, class: &str, key: &PrimaryKey) -> Result<Vec<RealmPath>, StoreError> {
        self.store.class(class)?;
        if let Some(remote) = self.store.remote() {
            return remote.locate(class, key);
        }
        let tables = self.locate_tables()?;
        let prefix = locator_prefix(class, key);
        if tables.past_last_row(self.store.inner.classes[class], class, &prefix)? {
            return Ok(Vec::new());
        }
        let LocateTables { locator, paths, .. } = tables;
        let mut out = Vec::new();
        for row in locator.range(prefix.as_slice()..)? {
            let (row, _) = row?;
            // Rows sort by prefix, so the first that does not start with it ends the object's.
            let Some(id) = locator_row_realm(&prefix, row.value()) else {
                break;
            };
            if let Some(path) = paths.get(id)? {
                out.push(RealmPath::parse(path.value())?);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Whether any realm holds an object of `class`: one look at the end of the class's rows
    /// in the locator (on a remote store, one request), not a count of any realm's objects.
    pub fn holds_any(&self, class: &str) -> Result<bool, StoreError> {
        self.store.class(class)?;
        if let Some(remote) = self.store.remote() {
            return remote.holds_any(class);
        }
        let index = self.store.inner.classes[class];
        Ok(self.locate_tables()?.last_row(index, class)?.is_some())
    }

    /// The realms holding each of several objects of `class`, in the order of `keys`: what
    /// [`locate`](Self::locate) answers for each key. On a remote store they are asked in one
    /// request per `locate_many` bound of keys (10,000) instead of one request per key, each
    /// answered as of its own request.
    pub fn locate_many(
        &self,
        class: &str,
        keys: &[PrimaryKey],
    ) -> Result<Vec<Vec<RealmPath>>, StoreError> {
        self.store.class(class)?;
        if let Some(remote) = self.store.remote() {
            return remote.locate_many(class, keys);
        }
        keys.iter().map(|key| self.locate(class, key)).collect()
    }

    /// The realms holding the object a row of `table` (a class's table) with this key maps to.
    pub fn locate_table(
        &self,
        table: &str,
        key: &PrimaryKey,
    ) -> Result<Vec<RealmPath>, StoreError> {
        let schema = self.store.schema();
        let class = schema
            .class_by_table(table)
            .ok_or_else(|| StoreError::UnknownTable {
                table: table.to_owned(),
                known: schema
                    .classes
                    .iter()
                    .map(|c| c.table.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        self.locate(&class.name, key)
    }

    /// The changesets of `realm` after version `after`, oldest first, at most `limit`.
    ///
    /// An unknown realm or `after` at or past the current version gives none; `after` older than
    /// the log keeps is [`StoreError::Pruned`].
    pub fn changes(
        &self,
        realm: &RealmPath,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Changeset>, StoreError> {
        self.changes_skipping(realm, after, limit, None)
    }

    /// [`changes`](Self::changes), but a changeset committed with origin `headers_only` comes
    /// without its instructions, which are not read (a commit streamed in parts can hold a
    /// million of them). A remote store answers with whole changesets (its feed honours the
    /// origin; see `remote.rs`).
    pub(super) fn changes_skipping(
        &self,
        realm: &RealmPath,
        after: u64,
        limit: usize,
        headers_only: Option<&str>,
    ) -> Result<Vec<Changeset>, StoreError> {
        if let Some(remote) = self.store.remote() {
            return remote.changes(realm, after, limit);
        }
        let Some((id, info)) = self.info(realm)? else {
            return Ok(Vec::new());
        };
        if after >= info.version {
            return Ok(Vec::new());
        }
        if after + 1 < info.oldest {
            return Err(StoreError::Pruned {
                realm: realm.clone(),
                asked: after + 1,
                oldest: info.oldest,
            });
        }
        let log = self.txn().open_table(LOG)?;
        let parts = super::streaming::PartReader::open(self.txn())?;
        let mut out = Vec::new();
        for row in log.range((id, after + 1)..=(id, info.version))?.take(limit) {
            let (k, v) = row?;
            let version = k.value().1;
            let (committed_at, origin) = decode_log_header(v.value())?;
            let instructions = if headers_only == Some(origin.as_str()) {
                Vec::new()
            } else {
                let (_, _, mut instructions) = decode_log(v.value())?;
                parts.prepend(id, version, &mut instructions)?;
                instructions
            };
            out.push(Changeset {
                realm: realm.clone(),
                version,
                origin,
                committed_at,
                instructions,
            });
        }
        Ok(out)
    }
}

/// One realm inside a [`Snapshot`].
#[derive(Debug, Clone)]
pub struct RealmView {
    snapshot: Snapshot,
    id: u64,
    info: RealmInfo,
}

impl RealmView {
    /// The realm's path.
    pub fn path(&self) -> &RealmPath {
        &self.info.path
    }

    /// The realm's version in this snapshot.
    pub fn version(&self) -> u64 {
        self.info.version
    }

    /// The oldest version whose changeset the log still keeps.
    pub fn oldest_version(&self) -> u64 {
        self.info.oldest
    }

    /// The realm's own schema: the classes (and properties) it has been given so far.
    pub fn schema(&self) -> Result<Schema, StoreError> {
        if let Some(remote) = self.snapshot.store.remote() {
            return remote.realm_schema(&self.info.path);
        }
        let table = self.snapshot.txn().open_table(REALM_CLASSES)?;
        let mut classes = Vec::new();
        for row in table.range((self.id, "")..(self.id + 1, ""))? {
            let (_, def) = row?;
            let class: Class =
                serde_json::from_str(def.value()).map_err(|e| super::codec::CodecError {
                    what: "realm class",
                    reason: e.to_string(),
                })?;
            classes.push(class);
        }
        Ok(Schema::new(classes))
    }

    /// An object by class name and key. Every property of the compiled class is present.
    pub fn object(&self, class: &str, key: &PrimaryKey) -> Result<Option<Object>, StoreError> {
        let def = self.snapshot.store.class(class)?;
        if let Some(remote) = self.snapshot.store.remote() {
            return remote.object(&self.info.path, class, key);
        }
        let objects = self.snapshot.txn().open_table(OBJECTS)?;
        let found = objects.get(object_key(self.id, class, key).as_slice())?;
        match found {
            Some(g) => Ok(Some(complete(def, decode_object(class, g.value())?))),
            None => Ok(None),
        }
    }

    /// Every object of a class, in key order.
    pub fn objects(&self, class: &str) -> Result<Vec<Object>, StoreError> {
        let def = self.snapshot.store.class(class)?;
        if let Some(remote) = self.snapshot.store.remote() {
            return remote.objects(&self.info.path, class);
        }
        let objects = self.snapshot.txn().open_table(OBJECTS)?;
        let prefix = object_prefix(self.id, class);
        let mut end = prefix.clone();
        *end.last_mut().expect("the prefix ends with a separator") += 1;
        let mut out = Vec::new();
        for row in objects.range(prefix.as_slice()..end.as_slice())? {
            let (_, v) = row?;
            out.push(complete(def, decode_object(class, v.value())?));
        }
        Ok(out)
    }

    /// How many objects of a class the realm holds.
    pub fn count(&self, class: &str) -> Result<usize, StoreError> {
        self.snapshot.store.class(class)?;
        if let Some(remote) = self.snapshot.store.remote() {
            return remote.count(&self.info.path, class);
        }
        let objects = self.snapshot.txn().open_table(OBJECTS)?;
        let prefix = object_prefix(self.id, class);
        let mut end = prefix.clone();
        *end.last_mut().expect("the prefix ends with a separator") += 1;
        let mut n = 0;
        for row in objects.range(prefix.as_slice()..end.as_slice())? {
            row?;
            n += 1;
        }
        Ok(n)
    }

    /// A typed object by key: `realm.get::<Bus>(5)`.
    pub fn get<T: RealmObject>(&self, key: impl Into<T::Key>) -> Result<Option<T>, StoreError> {
        let key = key.into().to_key();
        match self.object(T::CLASS, &key)? {
            Some(o) => Ok(Some(self.typed(&o, &key)?)),
            None => Ok(None),
        }
    }

    /// Every object of class `T`, in key order.
    pub fn all<T: RealmObject>(&self) -> Result<Vec<T>, StoreError> {
        let schema = self.snapshot.store.schema();
        self.objects(T::CLASS)?
            .iter()
            .map(|o| {
                let key = o
                    .primary_key(schema)
                    .map_err(|source| self.value_error(T::CLASS, "(no key)".into(), source))?;
                self.typed(o, &key)
            })
            .collect()
    }

    fn typed<T: RealmObject>(&self, o: &Object, key: &PrimaryKey) -> Result<T, StoreError> {
        T::from_object(o).map_err(|source| self.value_error(T::CLASS, key.to_string(), source))
    }

    fn value_error(
        &self,
        class: &str,
        key: String,
        source: pgrealm_schema::ValueError,
    ) -> StoreError {
        StoreError::Value {
            realm: self.info.path.clone(),
            class: class.to_owned(),
            key,
            source: Box::new(source),
        }
    }
}

/// Fill properties an object predates (added to its class later) with NULL or the empty list.
pub(super) fn complete(class: &Class, mut object: Object) -> Object {
    for property in &class.properties {
        if !object.values.contains_key(&property.name) {
            let empty = if property.ty.is_list() {
                Value::List(Vec::new())
            } else {
                Value::Null
            };
            object.values.insert(property.name.clone(), empty);
        }
    }
    object
}
