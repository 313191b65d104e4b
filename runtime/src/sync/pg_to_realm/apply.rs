//! The apply step: PostgreSQL changes into one store write transaction (a *group* of one or more
//! whole PostgreSQL transactions), with the group's last commit LSN stored in the same commit.
//!
//! Owns what the store must look like after each change: routing (and moving rows between
//! realms through the store's locator), key changes, TOAST "unchanged" values, list entries in
//! `idx` order, TRUNCATE, and rejections. It reads the store as of the group's start and keeps
//! an overlay of what the group changed, because the write transaction's own operations are not
//! readable before it commits.
//!
//! It never commits, confirms or talks to PostgreSQL: the run loop does, in that order.
//!
//! Memory: rows go into the [`WriteTx`] as they arrive (nothing is buffered per transaction
//! besides list entries of the owners it touched). The overlay keeps each touched object's
//! location, and — for the first [`PATCH_LIMIT`] touched objects of a group — the values the
//! group gave it, needed only when a row touched earlier in the same group later moves to
//! another realm or changes its key. A transaction larger than
//! [`PgToRealmOptions::stream_after_changes`](super::PgToRealmOptions::stream_after_changes)
//! makes the group *stream* (see [`Group`]): its operations go in batches into one open store
//! transaction that also answers its reads, and the overlay and list entries start afresh after
//! each batch, so a 1,000,000-row transaction costs a few batches and the store's cache, not a
//! copy of every row.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use chrono::Utc;
use pgrealm_schema::{Object, PrimaryKey, Value};

use super::mapping::{raw_values, Mapper, RecordFields, SeenValue, TableKind, TablePlan};
use super::route::Route;
use crate::replication::{Change, ColumnValue, Lsn, OldTuple};
use crate::store::{CommitInfo, RealmPath, Snapshot, Store, StoreError, StreamingTx, WriteTx};
use crate::sync::rejections::{Direction, Rejection, RejectionLog};

/// Touched objects per group whose values the overlay keeps (see the module header).
pub(crate) const PATCH_LIMIT: usize = 100_000;

/// Operations a streaming group collects before applying them to its open store transaction
/// (this bounds the write buffer, the overlay and the list entries kept in memory); smaller
/// when `stream_after` is smaller, so a test can stream small transactions in many batches.
const STREAM_BATCH: usize = 8_192;

/// The origin of every store commit PostgreSQL → realm makes (sync.md, decision 1).
pub const ORIGIN: &str = "postgres";

/// The store metadata key of a slot's checkpoint: the end LSN of the last applied transaction.
pub fn checkpoint_key(slot: &str) -> String {
    format!("postgres/{slot}/lsn")
}

/// The owner of the streamed writes of the engine that follows `slot`: on a remote object
/// server, a new stream of the same owner replaces one a crashed engine left open.
pub(crate) fn stream_owner(slot: &str) -> String {
    format!("postgres→realm slot {slot}")
}

/// The checkpoint a store holds for `slot`.
pub fn stored_checkpoint(store: &Store, slot: &str) -> Result<Option<Lsn>, super::PgToRealmError> {
    let key = checkpoint_key(slot);
    match store.metadata(&key)? {
        // Empty: a load began over an earlier checkpoint and has not finished (see `setup`).
        None => Ok(None),
        Some(bytes) if bytes.is_empty() => Ok(None),
        Some(bytes) => std::str::from_utf8(&bytes)
            .ok()
            .and_then(|t| Lsn::parse(t).ok())
            .map(Some)
            .ok_or(super::PgToRealmError::BadCheckpoint { key }),
    }
}

/// Where a touched object is after the group's operations so far.
#[derive(Debug, Clone)]
struct Located {
    realms: Vec<RealmPath>,
    /// Its values read from the snapshot are the base of `patch`.
    base_from_snapshot: bool,
    /// What the group set on it; `None` when past [`PATCH_LIMIT`] (unknown).
    patch: Option<Patch>,
    /// Created by the operation at this index of the write transaction of this generation
    /// (see [`Group::create_inserted`]), which no other operation touches yet.
    created: Option<(u64, usize)>,
}

/// Values a group set on an object, by the property's index in its class, one entry per
/// property. Kept by index rather than as a map by name: the overlay holds one for each of up
/// to [`PATCH_LIMIT`] objects, and property names cloned into each cost as much as the values.
///
/// Only values a later row of the object may lack are kept: a later change needs the earlier
/// values (when it moves the row or changes its key) only for what its own row does not carry.
/// A row carries every column of its table except unchanged TOAST values, and PostgreSQL keeps
/// out of line only values over 24 bytes, so a value of a column that is fixed-width or short
/// is carried again by any later row; only long values, and properties without a column (list
/// entries among them), are kept.
type Patch = Vec<(usize, Value)>;

/// Bytes of text or data at most that PostgreSQL never stores out of line (it moves a value out
/// only when it takes more than 24 bytes with its header), so a later row never leaves it
/// unchanged. With a margin below that.
const ALWAYS_INLINE: usize = 16;

/// Whether PostgreSQL may send `value` as an unchanged TOAST value in a later row (see
/// [`Patch`]): not when it is NULL, fixed-width, or short text or data.
fn may_stay_out_of_line(value: &Value) -> bool {
    match value {
        Value::Null
        | Value::Bool(_)
        | Value::Int(_)
        | Value::Float(_)
        | Value::Double(_)
        | Value::Date(_)
        | Value::Uuid(_)
        | Value::Link(PrimaryKey::Int(_)) => false,
        Value::String(s) | Value::Link(PrimaryKey::String(s)) => s.len() > ALWAYS_INLINE,
        Value::Data(b) => b.len() > ALWAYS_INLINE,
        _ => true,
    }
}

/// What of `values` (of an object of `class`) a [`Patch`] keeps: every value, or with `plan`
/// (the table whose row set them), those a later row of that table may not carry. A name the
/// class does not have is left out: the store refuses the object that carries it, which fails
/// the group before the patch is read.
fn patch_of<'v>(
    class: &pgrealm_schema::Class,
    plan: Option<&TablePlan>,
    values: impl IntoIterator<Item = (&'v String, &'v Value)>,
) -> Patch {
    values
        .into_iter()
        .filter_map(|(name, value)| {
            let index = class.properties.iter().position(|p| p.name == *name)?;
            let carried = plan.is_some_and(|plan| plan.carries(index));
            (!carried || may_stay_out_of_line(value)).then(|| (index, value.clone()))
        })
        .collect()
}

/// A list of one owner: `(class index, property, owner key)`.
pub(super) type ListKey = (usize, String, PrimaryKey);

/// An update of a class row read ahead (remote mode): by the stream (`read_ahead.rs`), or by a
/// load over realms that may hold the row already (`copy.rs`, where each row is applied as an
/// upsert). What decides, once the row's locations are known, whether applying it reads the
/// stored object (see [`Group::read_ahead`]).
#[derive(Debug)]
pub(super) struct UpdateAhead {
    pub(super) class: usize,
    pub(super) key: PrimaryKey,
    /// The old key, when the update changes it.
    pub(super) old_key: Option<PrimaryKey>,
    /// The realm the row goes to, when its routing columns came with it.
    pub(super) target: Option<RealmPath>,
    /// Whether the row's values may fall short of the whole object (see
    /// `Group::carries_everything`).
    pub(super) partial: bool,
}

impl UpdateAhead {
    /// The update that applying the row `new` of a class table makes (`old`: its old tuple,
    /// when it came with one): its key, old key (when it changes), the realm it goes to (when
    /// its routing columns came with it) and whether its values alone may fall short of the
    /// whole object — a class with lists, an unchanged TOAST value, a property the table does
    /// not map — as `Group::upsert` judges it. `None` for a row of another table, or whose key
    /// cannot be read (applying it rejects it).
    pub(super) fn of(
        mapper: &Mapper,
        plan: &TablePlan,
        new: &[ColumnValue],
        old: Option<&OldTuple>,
    ) -> Option<Self> {
        let TableKind::Class { class, columns, .. } = &plan.kind else {
            return None;
        };
        let key = mapper.key_of(plan, new).ok()?;
        let old_key = old
            .and_then(|o| mapper.key_of(plan, o.values()).ok())
            .filter(|k| *k != key);
        let target = match mapper.route(plan, new) {
            Ok(Route::Path(path)) => Some(path),
            _ => None,
        };
        let class_def = &mapper.schema.classes[*class];
        let partial = class_def.list_properties().next().is_some()
            || columns.len() + 1 < class_def.properties.len()
            || new.iter().any(|v| matches!(v, ColumnValue::UnchangedToast));
        Some(UpdateAhead {
            class: *class,
            key,
            old_key,
            target,
            partial,
        })
    }
}

/// Counts of one group, for metrics and the run loop's bounds.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct GroupCounts {
    pub(crate) transactions: u64,
    pub(crate) changes: u64,
    pub(crate) rejections: u64,
    pub(crate) echoes: u64,
}

#[path = "lists.rs"]
mod lists;
#[path = "prefetch.rs"]
mod prefetch;

/// A write transaction handed over for committing.
#[derive(Debug)]
pub(crate) struct Handover {
    pub(crate) tx: WriteTx,
    /// The open store transaction `tx`'s earlier batches went into, for a streaming group.
    pub(crate) streaming: Option<StreamingTx>,
    pub(crate) counts: GroupCounts,
    pub(crate) end_lsn: Option<Lsn>,
    pub(crate) first_commit_time: Option<i64>,
}

impl Handover {
    /// Commit (blocking: run it on the blocking pool) and return once durable.
    pub(crate) fn commit(self) -> Result<CommitInfo, StoreError> {
        match self.streaming {
            Some(streaming) => streaming.apply(&mut { self.tx })?.commit(),
            None => self.tx.commit(),
        }
    }
}

/// One store write under construction.
///
/// A group that grows past `stream_after` operations inside one PostgreSQL transaction becomes
/// a *streaming* group ([`Group::start_streaming`]): from then on its operations go, every
/// [`STREAM_BATCH`], into one open store transaction ([`StreamingTx`]), which it also reads
/// from instead of the snapshot, and its overlay and list entries start afresh after each
/// batch. Memory then stays bounded whatever the size of the PostgreSQL transaction, which
/// still becomes one atomic, durable store commit holding its LSN.
pub(crate) struct Group {
    tx: WriteTx,
    /// Moves on whenever `tx` is taken or its operations are applied: an operation's index in
    /// it is valid for one generation.
    tx_generation: u64,
    streaming: Option<StreamingTx>,
    /// Operations in one PostgreSQL transaction past which the group streams (on a remote
    /// store too: the object server then holds the store transaction open, see
    /// `store/remote_stream.rs`).
    pub(crate) stream_after: usize,
    /// The initial load (`copy.rs`): classes the store held no object of when it began. A row
    /// of such a class table is not looked up in the store: the table's primary key gives each
    /// key once, so only an app's write racing the load could have put it there — which a
    /// lookup in the group's snapshot would miss as well. For the same reason it is not noted
    /// in the overlay either: nothing of the load looks it up before the load has committed it
    /// and started afresh from the store (`copy.rs` does so before the list subtables, whose
    /// rows locate their owners).
    pub(crate) fresh_classes: Vec<bool>,
    /// The initial load: every list subtable is truncated and copied after every class table
    /// (`copy.rs`), which writes every owner's list from PostgreSQL's rows. An object created
    /// before that takes no entries from the store: whatever the store held for it is replaced
    /// then anyway, and reading it cost one request per object in remote mode.
    pub(crate) lists_copied_later: bool,
    /// Whether the overlay keeps the values the group gave each object (not during the initial
    /// load: no row comes twice, so none moves after an earlier change of the same group).
    pub(crate) keep_values: bool,
    snapshot: Snapshot,
    slot: String,
    /// The checkpoint the store holds when the next handed-over commit applies, if known: that
    /// commit expects it (see [`Group::expect_checkpoint`]).
    expected_checkpoint: Option<Lsn>,
    overlay: HashMap<(usize, PrimaryKey), Located>,
    patched: usize,
    /// Whether the store is a remote one: only then are locations and metadata read ahead.
    remote: bool,
    /// Locations read ahead from the base, in remote mode (see `prefetch.rs`); valid as long
    /// as the base, cleared with it.
    located: HashMap<(usize, PrimaryKey), Vec<RealmPath>>,
    /// Metadata read ahead from the base (lists' entries and generations), in remote mode, by
    /// key; `None`: the key holds nothing. Valid as long as the base, cleared with `located`.
    metadata_ahead: HashMap<String, Option<Vec<u8>>>,
    /// Stored objects read ahead from the base (of rows that move to another realm or change
    /// their key), in remote mode, by class, key and realm; `None`: the realm does not hold
    /// it. Valid as long as the base, cleared with `located`.
    objects_ahead: HashMap<(usize, PrimaryKey, RealmPath), Option<BTreeMap<String, Value>>>,
    /// Moves on each time what was read ahead is cleared.
    read_ahead_epoch: u64,
    lists: HashMap<ListKey, BTreeMap<i64, Value>>,
    /// Truncated list properties: their stored entries are gone.
    list_generation: HashMap<(usize, String), u64>,
    pub(crate) counts: GroupCounts,
    pub(crate) started: Instant,
    /// The end LSN of the last whole transaction in the group.
    pub(crate) end_lsn: Option<Lsn>,
    /// Commit time (µs since 2000) of the group's first transaction.
    pub(crate) first_commit_time: Option<i64>,
    // The PostgreSQL transaction in hand.
    in_tx: bool,
    tx_lsn: Lsn,
    tx_echo: bool,
    /// Operations the group held when the transaction in hand began.
    tx_first_op: usize,
    dirty: Vec<ListKey>,
    dirty_set: HashSet<ListKey>,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("counts", &self.counts)
            .field("end_lsn", &self.end_lsn)
            .finish_non_exhaustive()
    }
}

impl Group {
    pub(crate) fn new(store: &Store, slot: &str) -> Result<Self, StoreError> {
        Ok(Group {
            tx: store.begin_write(ORIGIN),
            tx_generation: 0,
            streaming: None,
            stream_after: usize::MAX,
            fresh_classes: Vec::new(),
            keep_values: true,
            lists_copied_later: false,
            snapshot: store.snapshot()?,
            slot: slot.to_owned(),
            expected_checkpoint: None,
            overlay: HashMap::new(),
            patched: 0,
            remote: store.remote_url().is_some(),
            located: HashMap::new(),
            metadata_ahead: HashMap::new(),
            objects_ahead: HashMap::new(),
            read_ahead_epoch: 0,
            lists: HashMap::new(),
            list_generation: HashMap::new(),
            counts: GroupCounts::default(),
            started: Instant::now(),
            end_lsn: None,
            first_commit_time: None,
            in_tx: false,
            tx_lsn: Lsn::ZERO,
            tx_echo: false,
            tx_first_op: 0,
            dirty: Vec::new(),
            dirty_set: HashSet::new(),
        })
    }

    /// Make every commit this group hands over expect the store to hold `checkpoint` (the one
    /// the session resumed after), then each the checkpoint of the commit before it. Another
    /// writer's commit in between — above all, the last commit of an engine presumed dead,
    /// landing on a remote object server after this engine read the checkpoint — then refuses
    /// this engine's commit ([`StoreError::MetadataChanged`]) instead of letting it apply the
    /// same PostgreSQL transactions a second time.
    pub(crate) fn expect_checkpoint(&mut self, checkpoint: Lsn) {
        self.expected_checkpoint = Some(checkpoint);
    }

    /// Make `tx` expect the checkpoint the store holds before this group, if known.
    fn expect_checkpoint_in(expected: Option<Lsn>, slot: &str, tx: &mut WriteTx) {
        if let Some(expected) = expected {
            tx.expect_metadata(
                checkpoint_key(slot),
                Some(expected.to_pg_string().into_bytes()),
            );
        }
    }

    /// Whether a PostgreSQL transaction is open in this group.
    pub(crate) fn in_transaction(&self) -> bool {
        self.in_tx
    }

    /// Whether the group holds anything to commit.
    pub(crate) fn is_empty(&self) -> bool {
        self.end_lsn.is_none()
    }

    /// Hand the write transaction over for committing, with what it holds, and go on with a
    /// new one on top of the same state: reads of the next transactions still see everything
    /// handed over (through the overlay), so they can be applied while the commit runs.
    pub(crate) fn take_commit(&mut self, store: &Store) -> Handover {
        debug_assert!(
            !self.in_tx,
            "a group is committed only between transactions"
        );
        self.started = Instant::now();
        self.tx_generation += 1;
        let mut tx = std::mem::replace(&mut self.tx, store.begin_write(ORIGIN));
        if self.expected_checkpoint.is_some() && self.end_lsn.is_some() {
            // A streamed group checked it with its first batch: its own earlier batches may
            // have stored checkpoints of the whole transactions it began with.
            if self.streaming.is_none() {
                Self::expect_checkpoint_in(self.expected_checkpoint, &self.slot, &mut tx);
            }
            self.expected_checkpoint = self.end_lsn;
        }
        Handover {
            tx,
            streaming: self.streaming.take(),
            counts: std::mem::take(&mut self.counts),
            end_lsn: self.end_lsn.take(),
            first_commit_time: self.first_commit_time.take(),
        }
    }

    /// The initial load into an embedded store (`copy.rs`): take the operations collected so
    /// far, to be applied to the load's streamed store transaction while the group goes on
    /// collecting. The overlay starts afresh: every row of a class table comes once, so no later
    /// row of one looks up what it noted, and the list rows, which locate their owners, read
    /// the streamed transaction itself (see [`Group::stream_into`]).
    pub(crate) fn take_batch(&mut self, store: &Store) -> WriteTx {
        debug_assert!(!self.in_tx && self.streaming.is_none());
        // The group's counts are the caller's to take (`copy.rs` adds them to its report).
        self.overlay.clear();
        self.patched = 0;
        self.tx_generation += 1;
        std::mem::replace(&mut self.tx, store.begin_write(ORIGIN))
    }

    /// The initial load into an embedded store: from now on the group reads through `streaming`
    /// (every batch taken so far applied to it) and applies its operations to it itself, every
    /// [`STREAM_BATCH`]; its last batch goes with the commit it hands over.
    pub(crate) fn stream_into(&mut self, streaming: StreamingTx) {
        debug_assert!(self.streaming.is_none());
        self.streaming = Some(streaming);
        self.overlay.clear();
        self.patched = 0;
        self.clear_read_ahead();
    }

    /// Make room in the transaction in hand for `rows` more rows, one operation each (the
    /// initial load's chunk size).
    pub(crate) fn reserve_rows(&mut self, rows: usize) {
        self.tx.reserve(rows);
    }

    /// Make room in the overlay for `objects` more touched objects at once, rather than growing
    /// it by rehashing while rows arrive (the initial load knows about how many will).
    pub(crate) fn reserve_overlay(&mut self, objects: usize) {
        self.overlay.reserve(objects);
    }

    /// Whether the state carried since the last refresh is large enough to start afresh.
    pub(crate) fn overlay_is_large(&self) -> bool {
        self.overlay.len() > PATCH_LIMIT
    }

    /// Whether the transaction in hand has grown large enough to stream (see [`Group`]). The
    /// caller then waits for the commit in flight and calls [`Group::start_streaming`].
    pub(crate) fn wants_streaming(&self) -> bool {
        self.streaming.is_none()
            && self.in_tx
            && self.tx.len().saturating_sub(self.tx_first_op) >= self.stream_after
    }

    /// Open the store transaction this group streams into. Only when no commit is in flight
    /// (it takes the store's write lock, which that commit holds).
    pub(crate) fn start_streaming(&mut self, store: &Store) -> Result<(), StoreError> {
        if self.streaming.is_none() {
            tracing::info!(
                operations = self.tx.len(),
                "a large PostgreSQL transaction: applying it to the store as it streams"
            );
            // Owned by the slot, which one engine streams at a time: on a remote server, a
            // stream a crashed engine left open is replaced instead of waited out.
            self.streaming = Some(store.begin_streaming_as(ORIGIN, stream_owner(&self.slot))?);
            // Checked with the first batch, before anything of the group is written.
            Self::expect_checkpoint_in(self.expected_checkpoint, &self.slot, &mut self.tx);
            // The base is the open store transaction from now on.
            self.clear_read_ahead();
        }
        Ok(())
    }

    /// Whether the group streams (its commit must be durable before the next group reads the
    /// store again: see `session.rs`).
    pub(crate) fn is_streaming(&self) -> bool {
        self.streaming.is_some()
    }

    /// A streaming group: once a batch is collected, apply it to the open store transaction
    /// (with the lists the transaction touched so far) and start the overlay afresh, since the
    /// store transaction now answers every read.
    fn stream_batch(&mut self, mapper: &Mapper, log: &mut RejectionLog) -> Result<(), StoreError> {
        if self.streaming.is_none() || self.tx.len() < self.stream_batch_size() {
            return Ok(());
        }
        // The lists written now are written again at the transaction's end if it changes them
        // further; only the last write is PostgreSQL's state, the earlier ones are never
        // visible (the commit is atomic).
        self.write_dirty_lists(mapper, log)?;
        let streaming = self.streaming.take().expect("checked above");
        self.streaming = Some(streaming.apply(&mut self.tx)?);
        self.tx_generation += 1;
        self.overlay.clear();
        self.patched = 0;
        self.lists.clear();
        self.clear_read_ahead();
        Ok(())
    }

    /// Operations a streaming group collects before applying them (see [`STREAM_BATCH`]).
    fn stream_batch_size(&self) -> usize {
        STREAM_BATCH.min(self.stream_after).max(1)
    }

    /// Where an object is, as of the group's start (or, streaming, its last applied batch):
    /// read ahead (remote mode, see `prefetch.rs`), else asked now.
    fn base_locate(
        &self,
        mapper: &Mapper,
        class: usize,
        key: &PrimaryKey,
    ) -> Result<Vec<RealmPath>, StoreError> {
        if let Some(realms) = self.located(class, key) {
            return Ok(realms.clone());
        }
        let name = &mapper.schema.classes[class].name;
        match &self.streaming {
            Some(streaming) => streaming.locate(name, key),
            None => self.snapshot.locate(name, key),
        }
    }

    /// An object's values in `realm`, as of the group's start (or its last applied batch):
    /// read ahead (remote mode, see `prefetch.rs`), else asked now.
    fn base_values(
        &self,
        mapper: &Mapper,
        class: usize,
        key: &PrimaryKey,
        realm: &RealmPath,
    ) -> Result<Option<BTreeMap<String, Value>>, StoreError> {
        if let Some(values) = self.object_read_ahead(class, key, realm) {
            return Ok(values.clone());
        }
        let name = &mapper.schema.classes[class].name;
        match &self.streaming {
            Some(streaming) => streaming.object(realm, name, key),
            None => Ok(match self.snapshot.realm(realm)? {
                Some(view) => view.object(name, key)?.map(|o| o.values),
                None => None,
            }),
        }
    }

    /// Store metadata as of the group's start (or its last applied batch): read ahead (remote
    /// mode, see `prefetch.rs`), else asked now.
    pub(super) fn base_metadata(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(value) = self.metadata_read_ahead(key) {
            return Ok(value.clone());
        }
        match &self.streaming {
            Some(streaming) => streaming.metadata(key),
            None => self.snapshot.metadata(key),
        }
    }

    /// Start afresh from the store as it is now. Only when every handed-over commit is
    /// durable and nothing is pending.
    pub(crate) fn refresh(&mut self, store: &Store) -> Result<(), StoreError> {
        debug_assert!(!self.in_tx && self.tx.is_empty() && self.streaming.is_none());
        self.snapshot = store.snapshot()?;
        self.overlay.clear();
        self.patched = 0;
        self.lists.clear();
        self.list_generation.clear();
        self.clear_read_ahead();
        Ok(())
    }

    pub(crate) fn begin(&mut self, final_lsn: Lsn, origin: Option<&str>, commit_time: i64) {
        self.in_tx = true;
        self.tx_first_op = self.tx.len();
        self.tx_lsn = final_lsn;
        self.tx_echo = origin == Some(super::ECHO_ORIGIN);
        self.first_commit_time.get_or_insert(commit_time);
    }

    /// End the transaction in hand: write its lists and the checkpoint.
    pub(crate) fn commit(
        &mut self,
        mapper: &Mapper,
        log: &mut RejectionLog,
        end_lsn: Lsn,
    ) -> Result<(), StoreError> {
        self.end_chunk(mapper, log)?;
        self.counts.transactions += 1;
        if self.tx_echo {
            self.counts.echoes += 1;
        }
        self.end_lsn = Some(end_lsn);
        self.tx.set_metadata(
            checkpoint_key(&self.slot),
            end_lsn.to_pg_string().into_bytes(),
        );
        Ok(())
    }

    /// Write the lists the changes so far touched and leave the transaction (the initial load
    /// commits in chunks this way, storing no checkpoint until its last chunk).
    pub(crate) fn end_chunk(
        &mut self,
        mapper: &Mapper,
        log: &mut RejectionLog,
    ) -> Result<(), StoreError> {
        self.write_dirty_lists(mapper, log)?;
        self.in_tx = false;
        Ok(())
    }

    /// Apply one change of the transaction in hand.
    pub(crate) fn change(
        &mut self,
        mapper: &Mapper,
        log: &mut RejectionLog,
        plan: &TablePlan,
        change: &Change,
    ) -> Result<(), StoreError> {
        self.apply_change(mapper, log, plan, change)?;
        self.stream_batch(mapper, log)
    }

    fn apply_change(
        &mut self,
        mapper: &Mapper,
        log: &mut RejectionLog,
        plan: &TablePlan,
        change: &Change,
    ) -> Result<(), StoreError> {
        match (&plan.kind, change) {
            (TableKind::Marker, _) => {
                self.tx_echo = true;
                Ok(())
            }
            (TableKind::Ignored, _) => Ok(()),
            (TableKind::Class { class, .. }, Change::Insert { new, .. }) => {
                self.counts.changes += 1;
                self.upsert(mapper, log, plan, *class, None, new)
            }
            (TableKind::Class { class, .. }, Change::Update { old, new, .. }) => {
                self.counts.changes += 1;
                self.upsert(mapper, log, plan, *class, old.as_ref(), new)
            }
            (TableKind::Class { class, .. }, Change::Delete { old, .. }) => {
                self.counts.changes += 1;
                match mapper.key_of(plan, old.values()) {
                    Ok(key) => self.delete(mapper, *class, key),
                    Err(reason) => {
                        self.reject(log, plan, mapper, None, None, reason, old.values());
                        Ok(())
                    }
                }
            }
            (TableKind::List { .. }, Change::Insert { new, .. }) => {
                self.counts.changes += 1;
                self.list_row(mapper, log, plan, None, Some(new))
            }
            (TableKind::List { .. }, Change::Update { old, new, .. }) => {
                self.counts.changes += 1;
                self.list_row(mapper, log, plan, old.as_ref(), Some(new))
            }
            (TableKind::List { .. }, Change::Delete { old, .. }) => {
                self.counts.changes += 1;
                self.list_row(mapper, log, plan, Some(old), None)
            }
            (_, Change::Truncate { .. }) => {
                self.counts.changes += 1;
                self.truncate(mapper, plan)
            }
        }
    }

    /// Where an object is now (after this group's operations so far).
    fn locate(
        &self,
        mapper: &Mapper,
        class: usize,
        key: &PrimaryKey,
    ) -> Result<Vec<RealmPath>, StoreError> {
        if let Some(found) = self.overlay.get(&(class, key.clone())) {
            return Ok(found.realms.clone());
        }
        self.base_locate(mapper, class, key)
    }

    /// The object's current values in `realm`, when they can be known.
    fn current_values(
        &self,
        mapper: &Mapper,
        class: usize,
        key: &PrimaryKey,
        realm: &RealmPath,
    ) -> Result<Option<BTreeMap<String, Value>>, StoreError> {
        let from_snapshot = || self.base_values(mapper, class, key, realm);
        match self.overlay.get(&(class, key.clone())) {
            None => from_snapshot(),
            Some(found) => match &found.patch {
                None => Ok(None),
                Some(patch) => {
                    let mut values = if found.base_from_snapshot {
                        match from_snapshot()? {
                            Some(v) => v,
                            None => return Ok(None),
                        }
                    } else {
                        BTreeMap::new()
                    };
                    let properties = &mapper.schema.classes[class].properties;
                    values.extend(
                        patch
                            .iter()
                            .map(|(i, v)| (properties[*i].name.clone(), v.clone())),
                    );
                    Ok(Some(values))
                }
            },
        }
    }

    /// Note in the overlay that the group put the object in `realms` (none: deleted) and set
    /// `values` on it (by a row of `plan`'s table, if any): the values it now has (`replace`),
    /// or some of them over what it had. Of the values, what a later row may lack (see
    /// [`Patch`]) is kept while the overlay keeps the object's values (the first
    /// [`PATCH_LIMIT`] objects of the group, not during the initial load).
    #[allow(clippy::too_many_arguments)] // what one change did; a struct would only rename them
    fn record<'v>(
        &mut self,
        mapper: &Mapper,
        plan: Option<&TablePlan>,
        class: usize,
        key: PrimaryKey,
        realms: Vec<RealmPath>,
        values: impl IntoIterator<Item = (&'v String, &'v Value)>,
        replace: bool,
    ) {
        let keep_patch = self.keep_values && self.patched < PATCH_LIMIT;
        let patch_of = |values| patch_of(&mapper.schema.classes[class], plan, values);
        match self.overlay.entry((class, key)) {
            std::collections::hash_map::Entry::Occupied(mut e) => {
                let found = e.get_mut();
                found.realms = realms;
                if replace {
                    found.base_from_snapshot = false;
                    found.patch = (found.patch.is_some() || keep_patch).then(|| patch_of(values));
                } else if let Some(kept) = &mut found.patch {
                    for (index, value) in patch_of(values) {
                        match kept.iter_mut().find(|(i, _)| *i == index) {
                            Some(entry) => entry.1 = value,
                            None => kept.push((index, value)),
                        }
                    }
                }
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                self.patched += 1;
                e.insert(Located {
                    realms,
                    base_from_snapshot: !replace,
                    patch: keep_patch.then(|| patch_of(values)),
                    created: None,
                });
            }
        }
    }

    #[allow(clippy::too_many_arguments)] // one call site per change kind; a struct would only rename them
    fn reject(
        &mut self,
        log: &mut RejectionLog,
        plan: &TablePlan,
        mapper: &Mapper,
        realm: Option<&RealmPath>,
        key: Option<String>,
        reason: String,
        values: &[ColumnValue],
    ) {
        let class = match &plan.kind {
            TableKind::Class { class, .. } | TableKind::List { class, .. } => {
                Some(mapper.schema.classes[*class].name.clone())
            }
            _ => None,
        };
        let rejection = Rejection {
            direction: Direction::PostgresToRealm,
            at: Utc::now(),
            realm: realm.map(|r| r.as_str().to_owned()),
            version: None,
            table: Some(plan.table.clone()),
            class,
            key,
            lsn: Some(self.tx_lsn.to_pg_string()),
            reason,
            raw: raw_values(&plan.columns, values),
        };
        tracing::warn!(table = %plan.table, key = ?rejection.key, lsn = %self.tx_lsn, reason = %rejection.reason, "PostgreSQL change rejected");
        log.record(&mut self.tx, &rejection);
        self.counts.rejections += 1;
    }

    /// An inserted row of a class table that no realm holds and that the group has not touched:
    /// created from its record, without building the map of its values or noting it among the
    /// objects the commit touches ([`WriteTx::create_record`]), as the initial load does. Only
    /// in an embedded store, for a table whose columns feed every property of the class, and a
    /// row that converts and routes without a word to say. `false`: the row takes the general
    /// way (which also gives the reason it is refused, if it is).
    ///
    /// A later change of the same object in the same write transaction first turns the create
    /// into an ordinary put ([`Group::touch_created`]), so no other operation touches an object
    /// created so, as `create_record` requires.
    fn create_inserted(
        &mut self,
        mapper: &Mapper,
        plan: &TablePlan,
        class: usize,
        new: &[ColumnValue],
    ) -> Result<bool, StoreError> {
        if self.remote || self.fresh_classes.get(class) == Some(&true) {
            return Ok(false);
        }
        let Some(fields) = &plan.record_fields else {
            return Ok(false);
        };
        let keep_patch = self.keep_values && self.patched < PATCH_LIMIT;
        let mut patch = Patch::new();
        let mut keep = |index, value: &Value| {
            // Every property has a column: what `patch_of` keeps is the long values.
            if may_stay_out_of_line(value) {
                patch.push((index, value.clone()));
            }
        };
        let seen: Option<SeenValue<'_>> = if keep_patch { Some(&mut keep) } else { None };
        let Some((key, record, target)) = mapper.routed_record(plan, fields, new, seen) else {
            return Ok(false);
        };
        let overlay_key = (class, key);
        if self.overlay.contains_key(&overlay_key)
            || !self.base_locate(mapper, class, &overlay_key.1)?.is_empty()
        {
            return Ok(false);
        }
        let index = self.tx.len();
        self.tx
            .create_record(target.clone(), class, overlay_key.1.clone(), record)?;
        self.patched += 1;
        self.overlay.insert(
            overlay_key,
            Located {
                realms: vec![target],
                base_from_snapshot: false,
                patch: keep_patch.then_some(patch),
                created: Some((self.tx_generation, index)),
            },
        );
        Ok(true)
    }

    /// Before a change of an object: if [`Group::create_inserted`] created it in the write
    /// transaction in hand, that operation becomes an ordinary put, which later operations of
    /// the same transaction may follow.
    fn touch_created(&mut self, class: usize, key: &PrimaryKey) -> Result<(), StoreError> {
        let Some(found) = self.overlay.get_mut(&(class, key.clone())) else {
            return Ok(());
        };
        if let Some((generation, index)) = found.created.take() {
            if generation == self.tx_generation {
                self.tx.demote_create(index)?;
            }
        }
        Ok(())
    }

    /// An insert, or an update (`old` is the old key when the key changed).
    fn upsert(
        &mut self,
        mapper: &Mapper,
        log: &mut RejectionLog,
        plan: &TablePlan,
        class: usize,
        old: Option<&OldTuple>,
        new: &[ColumnValue],
    ) -> Result<(), StoreError> {
        if old.is_none() && self.create_inserted(mapper, plan, class, new)? {
            return Ok(());
        }
        let image = match mapper.row_image(plan, new) {
            Ok(image) => image,
            Err(e) => {
                // The row cannot be applied; if its key changed, the old key's object is gone
                // from PostgreSQL all the same.
                if let Some(old_key) = old.and_then(|o| mapper.key_of(plan, o.values()).ok()) {
                    self.delete(mapper, class, old_key)?;
                }
                self.reject(log, plan, mapper, None, e.key, e.reason, new);
                return Ok(());
            }
        };
        let route = match mapper.route(plan, new) {
            Ok(route) => route,
            Err(reason) => {
                if let Some(old_key) = old.and_then(|o| mapper.key_of(plan, o.values()).ok()) {
                    self.delete(mapper, class, old_key)?;
                }
                let reason = format!("no valid realm path for this row: {reason}");
                self.reject(
                    log,
                    plan,
                    mapper,
                    None,
                    Some(image.key.to_string()),
                    reason,
                    new,
                );
                return Ok(());
            }
        };
        // A key change: the object under the old key moves to the new key.
        let old_key = old
            .and_then(|o| mapper.key_of(plan, o.values()).ok())
            .filter(|k| *k != image.key);
        self.touch_created(class, &image.key)?;
        if let Some(old_key) = &old_key {
            self.touch_created(class, old_key)?;
        }
        let mut base: Option<BTreeMap<String, Value>> = None;
        let mut previous_realms = Vec::new();
        let complete = self.carries_everything(mapper, class, &image.values);
        if let Some(old_key) = &old_key {
            let realms = self.locate(mapper, class, old_key)?;
            if let Some(first) = realms.first().filter(|_| !complete) {
                base = self.current_values(mapper, class, old_key, first)?;
                if let Some(values) = &mut base {
                    // List entries follow the subtable rows (their oid changes with the key).
                    let class_def = &mapper.schema.classes[class];
                    for property in class_def.list_properties() {
                        values.remove(&property.name);
                    }
                }
            }
            previous_realms = realms.clone();
            self.delete(mapper, class, old_key.clone())?;
        }
        let fresh = old.is_none() && self.fresh_classes.get(class) == Some(&true);
        let held = if fresh {
            Vec::new()
        } else {
            self.locate(mapper, class, &image.key)?
        };
        let target = match route {
            Route::Path(path) => path,
            Route::Unchanged => match (held.as_slice(), previous_realms.as_slice()) {
                ([one], _) | ([], [one]) => one.clone(),
                _ => {
                    let reason = "a routing column is an unchanged TOAST value and the row is not \
                                  held in exactly one realm; an update that sets the column heals it"
                        .to_owned();
                    self.reject(
                        log,
                        plan,
                        mapper,
                        None,
                        Some(image.key.to_string()),
                        reason,
                        new,
                    );
                    return Ok(());
                }
            },
        };
        let in_place = held.contains(&target);
        if in_place && held.len() == 1 {
            // The common case: an update (or a repeated insert) in the row's own realm.
            self.record(
                mapper,
                Some(plan),
                class,
                image.key.clone(),
                held,
                &image.values,
                false,
            );
            let object = Object {
                class: mapper.schema.classes[class].name.clone(),
                values: image.values,
            };
            self.tx.put_typed_object(&target, image.key, object)?;
            return Ok(());
        }
        // The object is created in `target`: from the realm it leaves, the old key, or nothing.
        if base.is_none() && !complete {
            if let Some(from) = held.iter().find(|r| **r != target).or(held.first()) {
                base = self.current_values(mapper, class, &image.key, from)?;
                if base.is_none() && !image.unchanged.is_empty() {
                    let reason = format!(
                        "the row moves to {target} and its unchanged TOAST values ({}) could not be \
                         read: it moved before in this same large transaction; an update that sets \
                         them heals it",
                        image.unchanged.join(", ")
                    );
                    self.reject(
                        log,
                        plan,
                        mapper,
                        Some(&target),
                        Some(image.key.to_string()),
                        reason,
                        new,
                    );
                    return Ok(());
                }
            }
        }
        let missing: Vec<&String> = image
            .unchanged
            .iter()
            .filter(|p| !base.as_ref().is_some_and(|b| b.contains_key(*p)))
            .collect();
        if !missing.is_empty() {
            let reason = format!(
                "the realm does not hold this row, and the change did not carry its unchanged \
                 TOAST values ({}); an update that sets them heals it",
                missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            self.reject(
                log,
                plan,
                mapper,
                Some(&target),
                Some(image.key.to_string()),
                reason,
                new,
            );
            return Ok(());
        }
        // The row's values (its key among them: `row_image` puts it there) over the base's; a
        // row created from nothing takes them as they are, without building the map again.
        let mut values = match base {
            Some(mut base) => {
                base.extend(image.values);
                base
            }
            None => image.values,
        };
        let class_def = &mapper.schema.classes[class];
        // A row created (not moved) gets the list entries PostgreSQL already holds for it
        // (during the initial load, from its list subtables' copy, later).
        for property in class_def.list_properties() {
            if !self.lists_copied_later && !values.contains_key(&property.name) {
                let list_key = (class, property.name.clone(), image.key.clone());
                let entries = self.list_entries(mapper, &list_key)?;
                if !entries.is_empty() {
                    values.insert(
                        property.name.clone(),
                        Value::List(entries.values().cloned().collect()),
                    );
                }
            }
        }
        for realm in held.iter().filter(|r| **r != target) {
            self.tx
                .delete_object(realm, &class_def.name, image.key.clone())?;
        }
        if !fresh {
            self.record(
                mapper,
                Some(plan),
                class,
                image.key.clone(),
                vec![target.clone()],
                &values,
                true,
            );
        }
        let object = Object {
            class: class_def.name.clone(),
            values,
        };
        if fresh {
            // No other operation of the load's commits touches it (see `fresh_classes`).
            self.tx.create_typed_object(&target, image.key, object)?;
        } else {
            self.tx.put_typed_object(&target, image.key, object)?;
        }
        Ok(())
    }

    /// The initial load's row of a fresh class (see [`Group::fresh_classes`]), created from
    /// its record (`fields` from [`Mapper::record_fields`] for `plan`) without building its
    /// object. `false`: the row needs [`Group::change`], which applies or rejects it with its
    /// reason (a value that does not convert, no valid realm path, a class not fresh).
    pub(crate) fn load_row(
        &mut self,
        mapper: &Mapper,
        plan: &TablePlan,
        fields: &RecordFields,
        values: &[ColumnValue],
    ) -> Result<bool, StoreError> {
        let TableKind::Class { class, .. } = &plan.kind else {
            return Ok(false);
        };
        if self.fresh_classes.get(*class) != Some(&true) {
            return Ok(false);
        }
        let Some((key, record, target)) = mapper.routed_record(plan, fields, values, None) else {
            return Ok(false);
        };
        self.counts.changes += 1;
        // The mapper's schema is the store's (`PgToRealm::new`): the same class numbers.
        self.tx.create_record(target, *class, key, record)?;
        Ok(true)
    }

    /// Whether a row's values hold every property of its class, in remote mode: the values
    /// stored for the object would then add nothing to them, so a move or a key change need not
    /// read them (on a remote store, two requests per row). The outcome is the same either way;
    /// an embedded store's read is cheap, and its path stays as it was.
    fn carries_everything(
        &self,
        mapper: &Mapper,
        class: usize,
        values: &BTreeMap<String, Value>,
    ) -> bool {
        self.remote
            && mapper.schema.classes[class]
                .properties
                .iter()
                .all(|p| values.contains_key(&p.name))
    }

    fn delete(&mut self, mapper: &Mapper, class: usize, key: PrimaryKey) -> Result<(), StoreError> {
        self.touch_created(class, &key)?;
        let realms = self.locate(mapper, class, &key)?;
        let name = &mapper.schema.classes[class].name;
        for realm in &realms {
            self.tx.delete_object(realm, name, key.clone())?;
        }
        self.record(mapper, None, class, key, Vec::new(), [], true);
        Ok(())
    }

    /// The keys of every object of `class` in any realm: those committed before the group
    /// and those this group created (a key held by several realms may appear more than once).
    fn keys_of_class(&self, mapper: &Mapper, class: usize) -> Result<Vec<PrimaryKey>, StoreError> {
        let name = &mapper.schema.classes[class].name;
        let mut keys = Vec::new();
        if let Some(streaming) = &self.streaming {
            keys = streaming.keys(name)?;
        } else {
            for info in self.snapshot.realms()? {
                if let Some(view) = self.snapshot.realm(&info.path)? {
                    for object in view.objects(name)? {
                        if let Ok(key) = object.primary_key(&mapper.schema) {
                            keys.push(key);
                        }
                    }
                }
            }
        }
        keys.extend(
            self.overlay
                .iter()
                .filter(|((c, _), found)| *c == class && !found.realms.is_empty())
                .map(|((_, k), _)| k.clone()),
        );
        Ok(keys)
    }

    fn truncate(&mut self, mapper: &Mapper, plan: &TablePlan) -> Result<(), StoreError> {
        match &plan.kind {
            TableKind::Class { class, .. } => {
                let class = *class;
                let keys = self.keys_of_class(mapper, class)?;
                if self.remote {
                    return self.delete_all_read_ahead(mapper, class, keys);
                }
                let mut seen = HashSet::new();
                for key in keys {
                    if seen.insert(key.clone()) {
                        self.delete(mapper, class, key)?;
                    }
                }
            }
            TableKind::List {
                class, property, ..
            } => {
                let class = *class;
                let generation = self.list_generation_of(mapper, class, property)? + 1;
                self.list_generation
                    .insert((class, property.clone()), generation);
                let gen_key = self.generation_key(mapper, class, property);
                self.tx
                    .set_metadata(gen_key, generation.to_be_bytes().to_vec());
                self.lists
                    .retain(|(c, p, _), _| !(*c == class && p == property));
                // Every owner's list is now empty.
                for owner in self.keys_of_class(mapper, class)? {
                    let list = (class, property.clone(), owner);
                    self.lists.insert(list.clone(), BTreeMap::new());
                    self.mark(list);
                }
            }
            TableKind::Marker | TableKind::Ignored => {}
        }
        Ok(())
    }
}
