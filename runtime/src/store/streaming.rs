//! Streaming writes: one atomic, durable commit too large to hold in memory (a 1,000,000-row
//! PostgreSQL transaction).
//!
//! A [`StreamingTx`] holds one redb write transaction open from its start to its commit and
//! applies operations to it in batches as they come (each batch collected in an ordinary
//! [`WriteTx`] and applied by the same code as [`WriteTx::commit`]). redb keeps the dirty pages
//! in its write buffer and writes those past half of [`StoreOptions::cache_bytes`] to the file
//! before the commit, so memory stays bounded by the cache, not by the size of the commit.
//! Nothing is visible to readers before [`StreamingTx::commit`] returns, and nothing survives a
//! crash before it: the commit is as atomic as any other.
//!
//! The changeset of a realm is built as the batches settle. Its instructions stay in memory
//! until they reach [`PART_BYTES`], or until the stream holds [`PENDING_LOG_BYTES`] of them,
//! all realms together; then they go out as the realm's next part (table `log_parts`,
//! `(realm id, version, part)` → a log record whose instructions lead the changeset). The
//! version's own log record, written at the commit, holds the header and the instructions held
//! since the last part (all of them when the realm wrote no part, as in most loads over many
//! realms). Readers
//! ([`Snapshot::changes`](super::Snapshot::changes), the feed) put the parts back in front of
//! the record's instructions. Within one part each object's instructions are its net change;
//! an object touched in several batches gets instructions in each (a create then a set, say),
//! which applied in order give the same state — a streaming changeset is exact, but not always
//! the shortest. A file holding parts is stamped format 3, which older pgrealm refuses to open.
//!
//! It owns nothing else: validation, versions and the locator are [`WriteTx`]'s rules, applied
//! through the hooks of `write.rs`. On a remote store (the engine's remote mode) the same API
//! drives a stream the object server holds open: see `remote_stream.rs`.
//!
//! [`StoreOptions::cache_bytes`]: super::StoreOptions::cache_bytes

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use chrono::Utc;
use pgrealm_schema::{PrimaryKey, Value};
use redb::{
    Durability, ReadOnlyTable, ReadTransaction, ReadableTable, ReadableTableMetadata,
    WriteTransaction,
};

use super::changeset::Instruction;
use super::codec::{decode_log, decode_object, key_from, LogWriter};
use super::error::StoreError;
use super::path::RealmPath;
use super::read::complete;
use super::remote_stream::RemoteStream;
use super::wal::{Logged, Redo, Tag};
use super::write::{
    check_expected, sort_unless_sorted, Applier, Collected, CommitInfo, RealmState, WriteTx,
};
use super::{
    locator_prefix, locator_row_realm, object_key, object_prefix, Committed, Store, FORMAT_VERSION,
    LOCATOR, LOG, LOG_PARTS, META, METADATA, OBJECTS, REALMS, REALM_CLASSES, REALM_PATHS,
};

/// The first format that may hold changesets in parts.
const PARTS_FORMAT: u64 = 3;

/// A write transaction applied as it is built; see the module header.
///
/// ```
/// use pgrealm_runtime::{RealmPath, Store, StoreOptions};
/// use pgrealm_schema::{Class, IntWidth, Object, Property, PropertyType, ScalarType, Schema, Value};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let schema = Schema::new(vec![Class::new("Bus")
///     .property(Property::new("id", PropertyType::Scalar(ScalarType::Int(IntWidth::I64))).primary_key())]);
/// let dir = tempfile::tempdir()?;
/// let store = Store::open(dir.path(), schema, StoreOptions::default())?;
/// let realm = RealmPath::parse("/transit")?;
///
/// let mut streaming = store.begin_streaming("import")?;
/// let mut batch = store.begin_write("import");
/// for id in 0..10_000 {
///     batch.put_object(&realm, Object::new("Bus").with("id", Value::Int(id)))?;
///     if batch.len() == 1_000 {
///         streaming = streaming.apply(&mut batch)?; // into the open transaction, not visible yet
///     }
/// }
/// let streaming = streaming.apply(&mut batch)?;
/// let commit = streaming.commit()?; // one version, durable
/// assert_eq!(commit.version_of(&realm), Some(1));
/// assert_eq!(store.changes(&realm, 0, 10)?[0].instructions.len(), 1 + 10_000); // AddClass + creates
/// # Ok(()) }
/// ```
pub struct StreamingTx {
    inner: Inner,
}

// The local variant is as large as `StreamingTx` always was (a redb write transaction and its
// state) and one stream exists at a time: boxing it would only add an indirection.
#[allow(clippy::large_enum_variant)]
enum Inner {
    Local(LocalStream),
    Remote(RemoteStream),
}

impl std::fmt::Debug for StreamingTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("StreamingTx");
        match &self.inner {
            Inner::Local(local) => d
                .field("origin", &local.origin)
                .field("realms", &local.states.len()),
            Inner::Remote(remote) => d.field("origin", &remote.origin()).field("remote", &true),
        };
        d.finish_non_exhaustive()
    }
}

impl StreamingTx {
    pub(super) fn new(
        store: Store,
        origin: String,
        owner: Option<String>,
    ) -> Result<Self, StoreError> {
        let inner = if store.remote().is_some() {
            Inner::Remote(RemoteStream::open(store, origin, owner)?)
        } else {
            Inner::Local(LocalStream::new(store, origin)?)
        };
        Ok(StreamingTx { inner })
    }

    /// How many realms the batches applied so far changed (0 on a remote store, which does not
    /// say).
    pub(crate) fn realms(&self) -> usize {
        match &self.inner {
            Inner::Local(local) => local.states.len(),
            Inner::Remote(_) => 0,
        }
    }

    /// Log this transaction in the store's write-ahead log as it is applied (each batch handed
    /// to the disk at once, without waiting), so that its commit waits only for the log's last
    /// record; redb writes the pages at the next checkpoint. For a transaction that is mostly
    /// new rows and ends soon, as the initial load: its commit no longer waits for every page to
    /// reach the disk. Past [`STREAM_LOG_LIMIT`](super::wal::STREAM_LOG_LIMIT) of log it stops,
    /// and commits durably in redb as without. A remote store ignores this.
    ///
    /// It must be asked for before the first batch: the batches applied before it were not
    /// recorded, so a transaction that has applied any is left unlogged (it commits durably).
    pub fn log_ahead(mut self) -> Self {
        if let Inner::Local(local) = &mut self.inner {
            if !local.applied {
                local.redo = Some(RefCell::default());
            }
        }
        self
    }

    /// The origin tag this transaction's changesets carry.
    pub fn origin(&self) -> &str {
        match &self.inner {
            Inner::Local(local) => &local.origin,
            Inner::Remote(remote) => remote.origin(),
        }
    }

    /// Apply everything `batch` collected (its operations and metadata) to the open
    /// transaction, leaving `batch` empty to collect the next batch. `batch`'s own origin is
    /// ignored: the changesets carry this transaction's.
    ///
    /// On error the whole transaction is abandoned (it is consumed): nothing of it is applied.
    pub fn apply(self, batch: &mut WriteTx) -> Result<Self, StoreError> {
        let inner = match self.inner {
            Inner::Local(local) => Inner::Local(local.apply(batch)?),
            Inner::Remote(mut remote) => {
                remote.apply(batch.drain())?;
                Inner::Remote(remote)
            }
        };
        Ok(StreamingTx { inner })
    }

    /// The realms holding an object of `class` with this key, as of the batches applied so far.
    pub fn locate(&self, class: &str, key: &PrimaryKey) -> Result<Vec<RealmPath>, StoreError> {
        match &self.inner {
            Inner::Local(local) => local.locate(class, key),
            Inner::Remote(remote) => remote.locate(class, key),
        }
    }

    /// The realms holding each of several objects of `class`, in the order of `keys`, as of the
    /// batches applied so far: [`locate`](Self::locate) for each key, asked in one request per
    /// 10,000 keys on a remote store.
    pub fn locate_many(
        &self,
        class: &str,
        keys: &[PrimaryKey],
    ) -> Result<Vec<Vec<RealmPath>>, StoreError> {
        match &self.inner {
            Inner::Local(local) => keys.iter().map(|key| local.locate(class, key)).collect(),
            Inner::Remote(remote) => remote.locate_many(class, keys),
        }
    }

    /// An object's values (every property of the compiled class present), as of the batches
    /// applied so far.
    pub fn object(
        &self,
        realm: &RealmPath,
        class: &str,
        key: &PrimaryKey,
    ) -> Result<Option<BTreeMap<String, Value>>, StoreError> {
        match &self.inner {
            Inner::Local(local) => local.object(realm, class, key),
            Inner::Remote(remote) => remote.object(realm, class, key),
        }
    }

    /// Several objects' values, each by realm, class and key, in the order asked (`None` for
    /// one the realm does not hold), as of the batches applied so far:
    /// [`object`](Self::object) for each, asked in one request per 10,000 objects on a remote
    /// store.
    pub fn object_many(
        &self,
        objects: &[(RealmPath, String, PrimaryKey)],
    ) -> Result<Vec<Option<BTreeMap<String, Value>>>, StoreError> {
        match &self.inner {
            Inner::Local(local) => objects
                .iter()
                .map(|(realm, class, key)| local.object(realm, class, key))
                .collect(),
            Inner::Remote(remote) => remote.object_many(objects),
        }
    }

    /// The keys of every object of `class` in any realm (a key held by several realms appears
    /// once per realm), as of the batches applied so far.
    pub fn keys(&self, class: &str) -> Result<Vec<PrimaryKey>, StoreError> {
        match &self.inner {
            Inner::Local(local) => local.keys(class),
            Inner::Remote(remote) => remote.keys(class),
        }
    }

    /// The metadata stored under `key`, as of the batches applied so far.
    pub fn metadata(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match &self.inner {
            Inner::Local(local) => local.metadata(key),
            Inner::Remote(remote) => remote.metadata(key),
        }
    }

    /// The metadata of each of several keys, in the order of `keys` (`None` for a key that
    /// holds nothing), as of the batches applied so far: [`metadata`](Self::metadata) for each
    /// key, asked in one request per 10,000 keys on a remote store.
    pub fn metadata_many<K: AsRef<str>>(
        &self,
        keys: &[K],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        match &self.inner {
            Inner::Local(local) => keys
                .iter()
                .map(|key| local.metadata(key.as_ref()))
                .collect(),
            Inner::Remote(remote) => remote.metadata_many(keys),
        }
    }

    /// Give every changed realm its next version (its changeset: the parts written, in order),
    /// and return once the whole transaction is durable. Only then do readers see any of it.
    pub fn commit(self) -> Result<CommitInfo, StoreError> {
        match self.inner {
            Inner::Local(local) => local.commit(),
            Inner::Remote(remote) => remote.commit(),
        }
    }
}

/// A [`StreamingTx`] of the embedded store: one redb write transaction held open.
struct LocalStream {
    store: Store,
    origin: String,
    txn: WriteTransaction,
    /// The realms touched so far, carried from batch to batch (see `write::Applier`).
    states: Vec<RealmState>,
    by_path: HashMap<RealmPath, usize>,
    next_id: Option<u64>,
    /// Per realm (same index as `states`): its changeset so far, as parts written and
    /// instructions not yet written.
    written: Vec<Written>,
    /// The bytes of every realm's instructions not yet written, and how many it may hold
    /// ([`PENDING_LOG_BYTES`]; less in tests).
    pending_bytes: usize,
    pending_limit: usize,
    metadata_set: bool,
    /// Classes found whole in realms (see `Applier`), for the store once this commits.
    learned: RefCell<Vec<(u64, usize)>>,
    /// Set by [`StreamingTx::log_ahead`] (until the log's limit): every write is recorded, and
    /// each batch's record appended to the write-ahead log.
    redo: Option<RefCell<Redo>>,
    /// Whether a batch's record is in the log.
    logged_parts: bool,
    /// Whether a batch was applied (after which [`StreamingTx::log_ahead`] no longer logs).
    applied: bool,
}

/// A realm's changeset as the batches build it.
#[derive(Default)]
struct Written {
    /// Parts written to `log_parts`.
    parts: u64,
    /// How many of its instructions change objects (a realm whose only instructions are schema
    /// additions gets no version, as in [`WriteTx::commit`]).
    object_instructions: u64,
    /// Instructions of the batches since the last part, in order: written as the next part
    /// once they reach [`PART_BYTES`] or the stream holds [`PENDING_LOG_BYTES`], or else as
    /// the version's own log record at the commit.
    pending: LogWriter,
}

/// The changeset instructions a stream holds in memory, all realms together, before writing
/// them as parts. A batch over many realms changes a few objects in each: writing a part per
/// realm per batch would cost an insert each, scattered over `log_parts`; held, most realms
/// write none, their changeset going whole into the version's log record at the commit.
const PENDING_LOG_BYTES: usize = 16 << 20;

/// A realm's held instructions reaching this size go out as its next part at once: a load over
/// a few realms writes parts of about this size, as before, and its commit no large records.
const PART_BYTES: usize = 64 << 10;

impl LocalStream {
    fn new(store: Store, origin: String) -> Result<Self, StoreError> {
        let mut txn = store.db().begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        Ok(LocalStream {
            store,
            origin,
            txn,
            states: Vec::new(),
            by_path: HashMap::new(),
            next_id: None,
            written: Vec::new(),
            pending_bytes: 0,
            pending_limit: PENDING_LOG_BYTES,
            metadata_set: false,
            learned: RefCell::default(),
            redo: None,
            logged_parts: false,
            applied: false,
        })
    }

    fn apply(mut self, batch: &mut WriteTx) -> Result<Self, StoreError> {
        let Collected {
            ops,
            metadata,
            expected,
        } = batch.drain();
        self.applied = true;
        // The open transaction has held the write lock since the stream began: what it reads
        // no other commit can change before this one.
        check_expected(&self.txn, &expected)?;
        if !ops.is_empty() {
            let settled = {
                let mut apply =
                    Applier::open(&self.store, &self.txn, self.redo.as_ref(), &self.learned)?;
                apply.reserve(&ops);
                apply.states = std::mem::take(&mut self.states);
                apply.by_path = std::mem::take(&mut self.by_path);
                apply.next_id = self.next_id;
                let mut settled = Vec::new();
                for op in ops {
                    apply.op(op)?;
                }
                for i in 0..apply.states.len() {
                    let (log, schema_len) = apply.settle_realm(i)?;
                    if log.len() > 0 {
                        settled.push((i, log.len() - schema_len, log));
                    }
                }
                apply.flush_created()?;
                self.states = std::mem::take(&mut apply.states);
                self.by_path = std::mem::take(&mut apply.by_path);
                self.next_id = apply.next_id;
                settled
            };
            self.written
                .resize_with(self.states.len(), Written::default);
            for (i, object_instructions, log) in settled {
                let written = &mut self.written[i];
                self.pending_bytes += log.bytes();
                written.pending.append(log);
                written.object_instructions += object_instructions;
            }
            // Past the stream's budget every realm writes its part; else a realm holding a
            // large part already (a load over few realms) writes it now.
            let all = self.pending_bytes > self.pending_limit;
            self.write_parts(|pending| all || pending.bytes() >= PART_BYTES)?;
        }
        if !metadata.is_empty() {
            let mut table = Logged::open(&self.txn, METADATA, Tag::Metadata, self.redo.as_ref())?;
            for (key, value) in &metadata {
                table.insert(key.as_str(), value.as_slice())?;
            }
            self.metadata_set = true;
        }
        self.log_batch()?;
        Ok(self)
    }

    /// Append what the batch wrote to the write-ahead log, if this stream logs itself; past
    /// the log's limit, stop (the commit is then durable in redb).
    fn log_batch(&mut self) -> Result<(), StoreError> {
        let Some(redo) = &self.redo else {
            return Ok(());
        };
        if redo.borrow().is_empty() {
            return Ok(());
        }
        let appended = self
            .store
            .wal()
            .append_part(&mut redo.borrow_mut(), !self.logged_parts)?;
        if appended {
            self.logged_parts = true;
        } else {
            self.redo = None;
        }
        Ok(())
    }

    /// Write the pending instructions of each realm `chosen` picks as its changeset's next
    /// part, in realm id order (the order of `log_parts`' keys).
    fn write_parts(&mut self, chosen: impl Fn(&LogWriter) -> bool) -> Result<(), StoreError> {
        let now = Utc::now();
        let mut order: Vec<usize> = (0..self.written.len())
            .filter(|i| {
                let pending = &self.written[*i].pending;
                pending.len() > 0 && chosen(pending)
            })
            .collect();
        if order.is_empty() {
            return Ok(());
        }
        order.sort_unstable_by_key(|i| self.states[*i].id);
        let mut parts = Logged::open(&self.txn, LOG_PARTS, Tag::LogParts, self.redo.as_ref())?;
        for i in order {
            let state = &self.states[i];
            let written = &mut self.written[i];
            let pending = std::mem::take(&mut written.pending);
            self.pending_bytes -= pending.bytes();
            let record = pending.finish(now, &self.origin);
            parts.insert(
                (state.id, state.version + 1, written.parts),
                record.as_slice(),
            )?;
            written.parts += 1;
        }
        Ok(())
    }

    fn locate(&self, class: &str, key: &PrimaryKey) -> Result<Vec<RealmPath>, StoreError> {
        self.store.class(class)?;
        let locator = self.txn.open_table(LOCATOR)?;
        let prefix = locator_prefix(class, key);
        let mut ids = Vec::new();
        for row in locator.range(prefix.as_slice()..)? {
            let (row, _) = row?;
            // Rows sort by prefix, so the first that does not start with it ends the object's.
            let Some(id) = locator_row_realm(&prefix, row.value()) else {
                break;
            };
            ids.push(id);
        }
        drop(locator);
        let paths = self.txn.open_table(REALM_PATHS)?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            match self.states.iter().find(|s| s.id == id) {
                Some(state) => out.push(state.path.clone()),
                None => {
                    if let Some(path) = paths.get(id)? {
                        out.push(RealmPath::parse(path.value())?);
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn object(
        &self,
        realm: &RealmPath,
        class: &str,
        key: &PrimaryKey,
    ) -> Result<Option<BTreeMap<String, Value>>, StoreError> {
        let def = self.store.class(class)?;
        let Some(id) = self.realm_id(realm)? else {
            return Ok(None);
        };
        let objects = self.txn.open_table(OBJECTS)?;
        let found = objects.get(object_key(id, class, key).as_slice())?;
        match found {
            Some(g) => Ok(Some(complete(def, decode_object(class, g.value())?).values)),
            None => Ok(None),
        }
    }

    fn keys(&self, class: &str) -> Result<Vec<PrimaryKey>, StoreError> {
        self.store.class(class)?;
        let mut ids: Vec<u64> = Vec::new();
        for row in self.txn.open_table(REALMS)?.iter()? {
            ids.push(row?.1.value().0);
        }
        ids.extend(self.states.iter().filter(|s| s.is_new).map(|s| s.id));
        let objects = self.txn.open_table(OBJECTS)?;
        let mut keys = Vec::new();
        for id in ids {
            let prefix = object_prefix(id, class);
            let mut end = prefix.clone();
            *end.last_mut().expect("the prefix ends with a separator") += 1;
            for row in objects.range(prefix.as_slice()..end.as_slice())? {
                let (k, _) = row?;
                keys.push(key_from(&k.value()[prefix.len()..])?);
            }
        }
        Ok(keys)
    }

    fn metadata(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let table = self.txn.open_table(METADATA)?;
        let found = table.get(key)?.map(|g| g.value().to_vec());
        Ok(found)
    }

    fn realm_id(&self, realm: &RealmPath) -> Result<Option<u64>, StoreError> {
        if let Some(i) = self.by_path.get(realm) {
            return Ok(Some(self.states[*i].id));
        }
        let realms = self.txn.open_table(REALMS)?;
        let found = realms.get(realm.as_str())?.map(|g| g.value().0);
        Ok(found)
    }

    fn commit(self) -> Result<CommitInfo, StoreError> {
        let LocalStream {
            store,
            origin,
            mut txn,
            mut states,
            next_id,
            written,
            metadata_set,
            learned,
            redo,
            logged_parts,
            ..
        } = self;
        // Logged to the end? Then the commit's own writes are the closing record.
        let redo = redo.filter(|_| logged_parts);
        let redo = redo.as_ref();
        let now = Utc::now();
        let retention = store.inner.options.log_retention.max(1);
        let mut info = CommitInfo::default();
        {
            let mut log = Logged::open(&txn, LOG, Tag::Log, redo)?;
            let mut parts = Logged::open(&txn, LOG_PARTS, Tag::LogParts, redo)?;
            let mut meta = Logged::open(&txn, META, Tag::Meta, redo)?;
            let mut any_new = false;
            let mut any_parts = false;
            // Each realm's version record; what a new version changes in the realm tables is
            // written below, each table's rows in key order (over many realms, runs through
            // one cursor rather than a walk from the root per row).
            let mut records = Vec::with_capacity(states.len());
            for (i, (state, written)) in states.iter_mut().zip(written).enumerate() {
                let next = state.version + 1;
                if written.object_instructions == 0 {
                    // Nothing happened to any object: no version, and the realm's schema stays
                    // as it was.
                    if written.parts > 0 {
                        remove_parts(&mut parts, state.id, next..next + 1)?;
                    }
                    continue;
                }
                any_parts |= written.parts > 0;
                any_new |= state.is_new;
                state.version = next;
                // The last instructions, after those of the parts.
                records.push((i, written.pending.finish(now, &origin)));
                let keep_from = (state.version + 1).saturating_sub(retention).max(1);
                while state.oldest < keep_from {
                    log.remove((state.id, state.oldest))?;
                    state.oldest += 1;
                }
                // Also the parts of versions an ordinary commit pruned (it does not look for
                // parts): they are never read, this only gives their space back.
                if !state.is_new {
                    remove_parts(&mut parts, state.id, 0..state.oldest)?;
                }
            }
            drop((log, parts));
            let mut log_rows = Vec::with_capacity(records.len());
            let mut realm_rows = Vec::with_capacity(records.len());
            let mut path_rows = Vec::new();
            let mut class_rows = Vec::new();
            for (i, record) in &records {
                let state = &states[*i];
                for name in &state.changed_classes {
                    let class = state.classes[name]
                        .as_ref()
                        .expect("a changed class is known");
                    class_rows.push(((state.id, name.as_str()), store.class_definition(class)));
                }
                log_rows.push(((state.id, state.version), record.as_slice()));
                realm_rows.push((state.path.as_str(), (state.id, state.version, state.oldest)));
                if state.is_new {
                    path_rows.push((state.id, state.path.as_str()));
                }
                info.versions.push((state.path.clone(), state.version));
            }
            // Realms are in id order but for those the store held, first touched first.
            sort_unless_sorted(&mut log_rows);
            sort_unless_sorted(&mut path_rows);
            sort_unless_sorted(&mut class_rows);
            sort_unless_sorted(&mut realm_rows);
            let class_rows: Vec<_> = class_rows
                .iter()
                .map(|(key, def)| (*key, def.as_ref()))
                .collect();
            Logged::open(&txn, LOG, Tag::Log, redo)?.insert_sorted(&log_rows)?;
            Logged::open(&txn, REALMS, Tag::Realms, redo)?.insert_sorted(&realm_rows)?;
            Logged::open(&txn, REALM_PATHS, Tag::RealmPaths, redo)?.insert_sorted(&path_rows)?;
            Logged::open(&txn, REALM_CLASSES, Tag::RealmClasses, redo)?
                .insert_sorted(&class_rows)?;
            if any_new {
                meta.insert("next_realm_id", next_id.expect("a new realm took an id"))?;
            }
            if any_parts {
                let stamped = meta.get("format_version")?.map(|g| g.value()).unwrap_or(1);
                if stamped < PARTS_FORMAT {
                    meta.insert("format_version", PARTS_FORMAT.min(FORMAT_VERSION))?;
                }
            }
        }
        if info.is_empty() && !metadata_set {
            // Any parts logged are dropped by the next record (see `wal.rs`).
            txn.abort()?;
            return Ok(info);
        }
        let mut wal = store.wal();
        if let Some(redo) = redo {
            // Durable in the log, every batch with it; then visible in redb, whose pages the
            // next checkpoint writes.
            wal.append_closing(&redo.borrow())?;
            txn.set_durability(Durability::None)?;
            if let Err(e) = txn.commit() {
                // As for a group commit (`group.rs`): a reopen would apply it.
                wal.poison(&e.to_string());
                return Err(e.into());
            }
        } else {
            // A durable redb commit: it covers every record of the write-ahead log so far.
            wal.stamp(&txn)?;
            txn.commit()?;
            wal.checkpointed();
        }
        drop(wal);
        store.learn_complete_classes(learned.into_inner());
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

/// Remove the parts of `realm`'s versions in `versions`.
fn remove_parts(
    parts: &mut Logged<'_, (u64, u64, u64), &'static [u8]>,
    realm: u64,
    versions: std::ops::Range<u64>,
) -> Result<(), StoreError> {
    if versions.is_empty() || parts.is_empty()? {
        return Ok(());
    }
    let mut keys = Vec::new();
    for row in parts.range((realm, versions.start, 0)..(realm, versions.end, 0))? {
        keys.push(row?.0.value());
    }
    for key in keys {
        parts.remove(key)?;
    }
    Ok(())
}

/// `log_parts` opened for reading.
type PartsTable = ReadOnlyTable<(u64, u64, u64), &'static [u8]>;

/// Reads the parts of changesets written by a [`StreamingTx`] (none in a format-1 file).
pub(super) struct PartReader {
    table: Option<PartsTable>,
}

impl PartReader {
    pub(super) fn open(txn: &ReadTransaction) -> Result<Self, StoreError> {
        let table = match txn.open_table(LOG_PARTS) {
            Ok(table) => Some(table),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(e.into()),
        };
        Ok(PartReader { table })
    }

    /// Put the parts of `realm`'s `version` (if any) in front of `instructions`.
    pub(super) fn prepend(
        &self,
        realm: u64,
        version: u64,
        instructions: &mut Vec<Instruction>,
    ) -> Result<(), StoreError> {
        let Some(table) = &self.table else {
            return Ok(());
        };
        let mut leading = Vec::new();
        for row in table.range((realm, version, 0)..(realm, version + 1, 0))? {
            let (_, record) = row?;
            let (_, _, part) = decode_log(record.value())?;
            leading.extend(part);
        }
        if !leading.is_empty() {
            leading.append(instructions);
            *instructions = leading;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use pgrealm_schema::{Class, IntWidth, Object, Property, PropertyType, ScalarType, Schema};

    use super::*;
    use crate::store::{StoreOptions, FORMAT_VERSION};

    fn store(dir: &std::path::Path, retention: u64) -> Store {
        let schema = Schema::new(vec![Class::new("Bus")
            .property(
                Property::new("id", PropertyType::Scalar(ScalarType::Int(IntWidth::I64)))
                    .primary_key(),
            )
            .property(Property::new(
                "n",
                PropertyType::Scalar(ScalarType::Int(IntWidth::I64)),
            ))]);
        let options = StoreOptions {
            log_retention: retention,
            ..StoreOptions::default()
        };
        Store::open(dir, schema, options).unwrap()
    }

    fn bus(id: i64, n: i64) -> Object {
        Object::new("Bus")
            .with("id", Value::Int(id))
            .with("n", Value::Int(n))
    }

    /// A logged stream that reaches the log's limit stops logging and commits durably in
    /// redb, as one not logged: the store file alone then holds it, and a later small commit
    /// (logged) is not mistaken for the end of the stream's records.
    #[test]
    fn a_logged_stream_past_the_limit_commits_durably_in_redb() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), 100);
        store.wal().limit_streams(100_000);
        let realm = RealmPath::parse("/big").unwrap();
        let mut streaming = store.begin_streaming("load").unwrap().log_ahead();
        let mut batch = store.begin_write("load");
        for b in 0..10 {
            for id in b * 1_000..(b + 1) * 1_000 {
                batch.realm(&realm).put_object(bus(id, b)).unwrap();
            }
            streaming = streaming.apply(&mut batch).unwrap();
        }
        match &streaming.inner {
            Inner::Local(local) => {
                assert!(local.logged_parts, "the first batches were logged");
                assert!(local.redo.is_none(), "logging stopped at the limit");
            }
            Inner::Remote(_) => unreachable!("a local store"),
        }
        assert_eq!(streaming.commit().unwrap().version_of(&realm), Some(1));
        let mut tx = store.begin_write("app");
        tx.realm(&realm).put_object(bus(1, 77)).unwrap();
        tx.commit().unwrap();

        let copy = |names: &[&str]| {
            let to = tempfile::tempdir().unwrap();
            for name in names {
                std::fs::copy(dir.path().join(name), to.path().join(name)).unwrap();
            }
            to
        };
        // The store file alone: the stream, durable in redb.
        let alone = copy(&[crate::store::STORE_FILE]);
        let view = store_at(alone.path()).realm(&realm).unwrap().unwrap();
        assert_eq!(view.version(), 1);
        assert!(view
            .object("Bus", &PrimaryKey::Int(9_999))
            .unwrap()
            .is_some());
        // With the log: the small commit after it too.
        let both = copy(&[crate::store::STORE_FILE, crate::store::WAL_FILE]);
        let reopened = store_at(both.path());
        let view = reopened.realm(&realm).unwrap().unwrap();
        assert_eq!(view.version(), 2);
        assert_eq!(
            view.object("Bus", &PrimaryKey::Int(1))
                .unwrap()
                .unwrap()
                .get("n"),
            Some(&Value::Int(77))
        );
        drop(store);
    }

    fn store_at(dir: &std::path::Path) -> Store {
        store(dir, 100)
    }

    /// `streaming` writes its instructions as parts once it holds more than `limit` bytes.
    fn hold_at_most(streaming: &mut StreamingTx, limit: usize) {
        match &mut streaming.inner {
            Inner::Local(local) => local.pending_limit = limit,
            Inner::Remote(_) => unreachable!("a local store"),
        }
    }

    /// The keys of `log_parts`.
    fn parts_of(store: &Store) -> Vec<(u64, u64, u64)> {
        let read = redb::ReadableDatabase::begin_read(store.db()).unwrap();
        match read.open_table(LOG_PARTS) {
            Ok(parts) => parts
                .iter()
                .unwrap()
                .map(|row| row.unwrap().0.value())
                .collect(),
            Err(redb::TableError::TableDoesNotExist(_)) => Vec::new(),
            Err(e) => panic!("{e}"),
        }
    }

    fn stored_format(store: &Store) -> u64 {
        let read = redb::ReadableDatabase::begin_read(store.db()).unwrap();
        let meta = read.open_table(META).unwrap();
        let format = meta.get("format_version").unwrap().unwrap().value();
        format
    }

    #[test]
    fn batches_read_their_own_writes_and_commit_as_one_version() {
        // Each batch's instructions written as a part, or all held for the version's record.
        for (limit, parts) in [(0, vec![(1, 1, 0), (1, 1, 1)]), (PENDING_LOG_BYTES, vec![])] {
            batches_read_their_own_writes(limit, parts);
        }
    }

    fn batches_read_their_own_writes(limit: usize, parts: Vec<(u64, u64, u64)>) {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), 100);
        let realm = RealmPath::parse("/r").unwrap();
        let mut streaming = store.begin_streaming("test").unwrap();
        hold_at_most(&mut streaming, limit);
        let mut batch = store.begin_write("ignored");
        for id in 0..5 {
            batch.put_object(&realm, bus(id, 0)).unwrap();
        }
        streaming = streaming.apply(&mut batch).unwrap();
        assert_eq!(
            streaming.locate("Bus", &PrimaryKey::Int(3)).unwrap(),
            vec![realm.clone()]
        );
        assert_eq!(streaming.keys("Bus").unwrap().len(), 5);
        // Not visible to readers before the commit.
        assert!(store.realm(&realm).unwrap().is_none());
        // A second batch changes and deletes objects of the first.
        batch.put_object(&realm, bus(1, 7)).unwrap();
        batch
            .delete_object(&realm, "Bus", PrimaryKey::Int(2))
            .unwrap();
        batch.set_metadata("k", b"v".to_vec());
        streaming = streaming.apply(&mut batch).unwrap();
        let one = streaming
            .object(&realm, "Bus", &PrimaryKey::Int(1))
            .unwrap()
            .unwrap();
        assert_eq!(one.get("n"), Some(&Value::Int(7)));
        assert_eq!(streaming.metadata("k").unwrap(), Some(b"v".to_vec()));
        let info = streaming.commit().unwrap();
        assert_eq!(info.version_of(&realm), Some(1));
        assert_eq!(stored_format(&store), FORMAT_VERSION);
        assert_eq!(parts_of(&store), parts);

        // The parts come back in order, in front of the record's own instructions, and replay
        // to what the realm holds.
        let changes = store.changes(&realm, 0, 10).unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].origin, "test");
        let mut replica = crate::store::RealmObjects::new();
        crate::store::apply(&mut replica, &changes[0].instructions).unwrap();
        let view = store.realm(&realm).unwrap().unwrap();
        assert_eq!(replica.len(), view.count("Bus").unwrap());
        assert_eq!(replica.len(), 4);
        let replayed = &replica[&("Bus".to_owned(), PrimaryKey::Int(1))];
        assert_eq!(replayed.get("n"), Some(&Value::Int(7)));
    }

    /// A realm whose held instructions reach [`PART_BYTES`] writes them as a part at once; the
    /// others hold theirs for the version's record. Both replay to what the realms hold.
    #[test]
    fn a_realm_holding_a_large_part_writes_it_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), 100);
        let (large, small) = (
            RealmPath::parse("/large").unwrap(),
            RealmPath::parse("/small").unwrap(),
        );
        let mut streaming = store.begin_streaming("test").unwrap();
        let mut batch = store.begin_write("ignored");
        for id in 0..5_000 {
            batch.put_object(&large, bus(id, 0)).unwrap();
        }
        batch.put_object(&small, bus(1_000_000, 0)).unwrap();
        streaming = streaming.apply(&mut batch).unwrap();
        batch.put_object(&large, bus(5_000, 0)).unwrap();
        batch.put_object(&small, bus(1_000_001, 0)).unwrap();
        streaming.apply(&mut batch).unwrap().commit().unwrap();
        // `/large` is realm 1, `/small` realm 2.
        assert_eq!(parts_of(&store), vec![(1, 1, 0)]);
        for (realm, count) in [(&large, 5_001), (&small, 2)] {
            let changes = store.changes(realm, 0, 10).unwrap();
            assert_eq!(changes.len(), 1);
            let mut replica = crate::store::RealmObjects::new();
            crate::store::apply(&mut replica, &changes[0].instructions).unwrap();
            assert_eq!(replica.len(), count);
            let view = store.realm(realm).unwrap().unwrap();
            assert_eq!(view.count("Bus").unwrap(), count);
        }
    }

    /// A batch takes a key past the greatest its realm held as new, without a lookup: that
    /// greatest key must include the objects earlier batches created, put or created alike, in
    /// a new realm and in one the store held. A key an earlier batch wrote is then an update.
    #[test]
    fn a_later_batch_updates_the_objects_earlier_batches_created() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), 100);
        let (new, held) = (
            RealmPath::parse("/new").unwrap(),
            RealmPath::parse("/held").unwrap(),
        );
        let mut batch = store.begin_write("test");
        batch.put_object(&held, bus(10, 0)).unwrap();
        batch.commit().unwrap();
        let create = |batch: &mut WriteTx, realm: &RealmPath, id: i64, n: i64| {
            batch
                .create_typed_object(realm, PrimaryKey::Int(id), bus(id, n))
                .unwrap();
        };

        let mut streaming = store.begin_streaming("test").unwrap();
        let mut batch = store.begin_write("ignored");
        batch.put_object(&new, bus(5, 0)).unwrap();
        create(&mut batch, &new, 2, 0);
        create(&mut batch, &held, 11, 0);
        streaming = streaming.apply(&mut batch).unwrap();
        create(&mut batch, &new, 3, 0);
        create(&mut batch, &new, 5, 1);
        create(&mut batch, &held, 11, 1);
        streaming = streaming.apply(&mut batch).unwrap();
        create(&mut batch, &new, 2, 2);
        create(&mut batch, &new, 6, 0);
        streaming.apply(&mut batch).unwrap().commit().unwrap();

        let ops = |realm: &RealmPath, version: u64| -> Vec<String> {
            let changes = store.changes(realm, version - 1, 1).unwrap();
            changes[0]
                .instructions
                .iter()
                .filter_map(|i| match i {
                    Instruction::Create { key, .. } => Some(format!("create {key}")),
                    Instruction::Set { key, new, .. } => Some(format!("set {key} {new:?}")),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(
            ops(&new, 1),
            [
                "create 5",
                "create 2",
                "create 3",
                "set 5 Int(1)",
                "set 2 Int(2)",
                "create 6"
            ]
        );
        assert_eq!(ops(&held, 2), ["create 11", "set 11 Int(1)"]);
        for (realm, id) in [(&new, 2), (&new, 5), (&held, 11)] {
            assert_eq!(
                store.locate("Bus", &PrimaryKey::Int(id)).unwrap(),
                std::slice::from_ref(realm),
                "one locator row for {id}"
            );
        }
        let view = store.realm(&new).unwrap().unwrap();
        assert_eq!(view.count("Bus").unwrap(), 4);
        assert_eq!(
            view.object("Bus", &PrimaryKey::Int(2)).unwrap().unwrap(),
            bus(2, 2)
        );
    }

    #[test]
    fn an_abandoned_transaction_leaves_nothing_and_parts_are_pruned_with_their_version() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), 1);
        let realm = RealmPath::parse("/r").unwrap();
        let mut batch = store.begin_write("test");
        batch.put_object(&realm, bus(1, 0)).unwrap();
        let streaming = store
            .begin_streaming("test")
            .unwrap()
            .apply(&mut batch)
            .unwrap();
        drop(streaming);
        assert!(store.realm(&realm).unwrap().is_none());
        assert!(store.locate("Bus", &PrimaryKey::Int(1)).unwrap().is_empty());

        for n in 0..3 {
            batch.put_object(&realm, bus(1, n)).unwrap();
            let mut streaming = store.begin_streaming("test").unwrap();
            hold_at_most(&mut streaming, 0);
            streaming.apply(&mut batch).unwrap().commit().unwrap();
        }
        // Retention 1: only version 3 and its one part remain.
        assert_eq!(parts_of(&store), vec![(1, 3, 0)]);
        assert!(matches!(
            store.changes(&realm, 1, 10),
            Err(StoreError::Pruned { .. })
        ));
        assert_eq!(store.changes(&realm, 2, 10).unwrap().len(), 1);
    }
}
