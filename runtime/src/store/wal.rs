//! The write-ahead log: a commit is one sequential write and one `fdatasync`.
//!
//! A durable redb commit rewrites every copy-on-write page on the path to each changed entry
//! (objects, log, realms, the table tree, redb's freed-page lists) and its header, all scattered
//! over the file, then syncs: for a 1-object commit that is nine pages and most of the commit's
//! time. So a group commit instead records the puts and removes it made (a *redo record*),
//! appends that to `realms.wal` beside the store file, syncs the log, and only then commits the
//! redb transaction **non-durably** (`Durability::None`): readers see it after it is durable in
//! the log, never before. Every so often (when the log is full, for a record too large for it,
//! for a [`StreamingTx`](super::StreamingTx), and when the store closes) a commit is made durable
//! in redb instead, stamping in the file the sequence number of the last record it covers
//! (`meta.wal_seq`); the log then starts again from its beginning.
//!
//! After a crash redb holds its last durable commit; opening the store replays the records after
//! its stamp, in order, and makes the result durable. Records are physical (table, key, value),
//! so replaying one whose effect redb already holds writes the same bytes again: a replay can
//! repeat safely, which a crash during recovery needs.
//!
//! On disk: a 64-byte header (magic, format, the store's random id, so a log left beside a
//! replaced store file is never replayed into it), then records `[payload length u32][flags u32]
//! [sequence u64][checksum u64][payload]`. Sequence numbers increase by one; scanning stops at
//! the first record whose checksum or sequence does not follow, which is where the last
//! acknowledged commit ended (a torn write is never acknowledged). The file is grown with zeros
//! ahead of use, so a sync writes data blocks and no file-size change.
//!
//! A [`StreamingTx`](super::StreamingTx) may log itself too (the initial load does, see
//! [`Wal::append_part`]): each batch is a record flagged [`CONTINUED`], which a thread of its
//! own writes (extending the file, no zeros first) and hands to the disk without waiting, and
//! the commit's own writes are the closing record, unflagged, synced once every batch is
//! written. The log's bytes thus reach the disk while the load still copies, and its commit
//! waits only for the last of them; redb writes its pages later, at the next checkpoint. A
//! replay takes a transaction's records only with its closing record; a stream abandoned
//! before its commit is dropped by the next record, flagged [`ABORTS_OPEN`].

use std::borrow::Borrow;
use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::ops::Deref;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use redb::{Database, Key, ReadableDatabase, Table, TableDefinition, Value, WriteTransaction};

use super::error::StoreError;
use super::{LOCATOR, LOG, LOG_PARTS, META, METADATA, OBJECTS, REALMS, REALM_CLASSES, REALM_PATHS};

/// The log's name inside the data directory.
pub const WAL_FILE: &str = "realms.wal";

const MAGIC: &[u8; 8] = b"PGRLMWAL";
/// Format 2 added the flags (a streamed transaction's records) and the `log_parts` table.
const WAL_FORMAT: u32 = 2;
const HEADER_LEN: u64 = 64;
const RECORD_HEADER: usize = 24;
/// A record's payload up to this size is copied behind its header and written with it.
const SMALL_RECORD: usize = 64 << 10;
/// The file grows by this much at a time, written as zeros.
const GROW_STEP: u64 = 1 << 20;
/// The log is checkpointed (a durable redb commit) before it grows past this.
const CAPACITY: u64 = 16 << 20;
/// A record larger than this is not logged: its group commits durably in redb at once.
const LARGEST_RECORD: u64 = CAPACITY / 4;
/// `meta` key of the last record a durable redb commit covers.
pub(super) const WAL_SEQ_KEY: &str = "wal_seq";
/// `meta` key of the store's random id (see the module header).
const STORE_ID_KEY: &str = "store_id";
/// Set on a removal in a record's table byte.
const REMOVE: u8 = 0x80;
/// Record flag: the transaction goes on in the next record (a streamed transaction's batch).
const CONTINUED: u32 = 1;
/// Record flag: the [`CONTINUED`] records right before this one belong to a streamed
/// transaction that was abandoned: a replay drops them.
const ABORTS_OPEN: u32 = 2;
/// A streamed transaction stops logging itself past this many bytes of records (its commit is
/// then a durable redb commit, as without the log): a replay reads the whole log into memory,
/// and beyond this the log's write costs more than the sync it spares.
pub(super) const STREAM_LOG_LIMIT: u64 = 128 << 20;

/// The tables a redo record names, by number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Tag {
    Meta = 1,
    Realms = 2,
    RealmPaths = 3,
    RealmClasses = 4,
    Objects = 5,
    Log = 6,
    Locator = 7,
    Metadata = 8,
    LogParts = 9,
}

/// The puts and removes of one group commit, in the order they were made.
#[derive(Debug, Default)]
pub(super) struct Redo {
    payload: Vec<u8>,
}

impl Redo {
    fn put(&mut self, tag: Tag, key: &[u8], value: &[u8]) {
        self.payload.push(tag as u8);
        push_bytes(&mut self.payload, key);
        push_bytes(&mut self.payload, value);
    }

    fn remove(&mut self, tag: Tag, key: &[u8]) {
        self.payload.push(tag as u8 | REMOVE);
        push_bytes(&mut self.payload, key);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.payload.is_empty()
    }

    /// Take the operations recorded, recording on into `empty`.
    fn take(&mut self, empty: Vec<u8>) -> Vec<u8> {
        std::mem::replace(&mut self.payload, empty)
    }
}

fn push_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// A redb table whose writes are also recorded in a [`Redo`] (when there is one: a durable
/// commit needs no record). Reads go straight to the table.
pub(super) struct Logged<'t, K: Key + 'static, V: Value + 'static> {
    table: Table<'t, K, V>,
    tag: Tag,
    redo: Option<&'t RefCell<Redo>>,
}

impl<'t, K: Key + 'static, V: Value + 'static> Logged<'t, K, V> {
    pub(super) fn open(
        txn: &'t WriteTransaction,
        definition: TableDefinition<K, V>,
        tag: Tag,
        redo: Option<&'t RefCell<Redo>>,
    ) -> Result<Self, redb::TableError> {
        Ok(Logged {
            table: txn.open_table(definition)?,
            tag,
            redo,
        })
    }

    pub(super) fn insert<'k, 'v>(
        &mut self,
        key: impl Borrow<K::SelfType<'k>>,
        value: impl Borrow<V::SelfType<'v>>,
    ) -> Result<(), redb::StorageError> {
        if let Some(redo) = self.redo {
            redo.borrow_mut().put(
                self.tag,
                K::as_bytes(key.borrow()).as_ref(),
                V::as_bytes(value.borrow()).as_ref(),
            );
        }
        self.table.insert(key, value)?;
        Ok(())
    }

    pub(super) fn remove<'k>(
        &mut self,
        key: impl Borrow<K::SelfType<'k>>,
    ) -> Result<(), redb::StorageError> {
        if let Some(redo) = self.redo {
            redo.borrow_mut()
                .remove(self.tag, K::as_bytes(key.borrow()).as_ref());
        }
        self.table.remove(key)?;
        Ok(())
    }
}

impl<'t, K: Key + 'static, V: Value + 'static> Logged<'t, K, V> {
    /// Insert `entries`, sorted by key, run by run: the entries that fall into one gap between
    /// the table's keys (new rows of a serial key, the usual bulk insert; one run per realm
    /// when several realms take rows) go in through one cursor, without a walk from the root
    /// per key. A run ends at the first entry past the key the cursor stands on; that entry
    /// goes in the ordinary way (overwriting an equal key) and the next run starts after it.
    /// When runs turn out short (new keys scattered among existing ones, or keys that exist),
    /// the rest goes in one by one, since each run costs a cursor.
    pub(super) fn insert_sorted<'k, 'v>(
        &mut self,
        entries: &[(K::SelfType<'k>, V::SelfType<'v>)],
    ) -> Result<(), redb::StorageError> {
        /// Runs tried before judging their length, and the mean length that keeps them.
        const RUNS_TRIED: usize = 16;
        const SHORTEST_MEAN_RUN: usize = 4;
        let mut i = 0;
        let mut runs = 0;
        let mut in_runs = 0;
        while i < entries.len() {
            if runs >= RUNS_TRIED && in_runs < runs * SHORTEST_MEAN_RUN {
                for (key, value) in &entries[i..] {
                    self.insert(key, value)?;
                }
                return Ok(());
            }
            {
                let mut cursor = self
                    .table
                    .lower_bound_mut(std::ops::Bound::Included(&entries[i].0))?;
                while let Some((key, value)) = entries.get(i) {
                    match cursor.insert_before(key, value) {
                        Ok(()) => {
                            if let Some(redo) = self.redo {
                                redo.borrow_mut().put(
                                    self.tag,
                                    K::as_bytes(key).as_ref(),
                                    V::as_bytes(value).as_ref(),
                                );
                            }
                            i += 1;
                            in_runs += 1;
                        }
                        Err(redb::CursorError::Storage(e)) => return Err(e),
                        // Past the cursor's key (or an error redb adds later): the ordinary way.
                        Err(_) => break,
                    }
                }
                cursor.close()?;
            }
            runs += 1;
            if let Some((key, value)) = entries.get(i) {
                self.insert(key, value)?;
                i += 1;
            }
        }
        Ok(())
    }
}

/// A [`Logged`] table opened on first use: a small commit touches few of the store's tables,
/// and opening one costs a lookup in redb's table tree (and a root update at commit).
pub(super) struct Lazy<'t, K: Key + 'static, V: Value + 'static> {
    txn: &'t WriteTransaction,
    definition: TableDefinition<'static, K, V>,
    tag: Tag,
    redo: Option<&'t RefCell<Redo>>,
    table: Option<Logged<'t, K, V>>,
}

impl<'t, K: Key + 'static, V: Value + 'static> Lazy<'t, K, V> {
    pub(super) fn new(
        txn: &'t WriteTransaction,
        definition: TableDefinition<'static, K, V>,
        tag: Tag,
        redo: Option<&'t RefCell<Redo>>,
    ) -> Self {
        Lazy {
            txn,
            definition,
            tag,
            redo,
            table: None,
        }
    }

    /// The table, opened now if it was not.
    pub(super) fn open(&mut self) -> Result<&mut Logged<'t, K, V>, redb::TableError> {
        if self.table.is_none() {
            self.table = Some(Logged::open(
                self.txn,
                self.definition,
                self.tag,
                self.redo,
            )?);
        }
        Ok(self.table.as_mut().expect("opened above"))
    }
}

impl<'t, K: Key + 'static, V: Value + 'static> Deref for Logged<'t, K, V> {
    type Target = Table<'t, K, V>;

    fn deref(&self) -> &Self::Target {
        &self.table
    }
}

/// The open log of a local store. Only whoever holds redb's write transaction touches it.
#[derive(Debug)]
pub(super) struct Wal {
    /// Shared with the threads writing a streamed transaction's batches.
    file: Arc<File>,
    path: PathBuf,
    /// Where the next record goes.
    tail: u64,
    /// The file's length (zeros past `tail`).
    len: u64,
    /// The next record's sequence number.
    next_seq: u64,
    /// Set when a write or sync of the log failed: what was on disk is then unknown, so no
    /// further commit is accepted until the store is reopened (which replays what is there).
    failed: Option<String>,
    /// Scratch space for a record.
    record: Vec<u8>,
    /// A streamed transaction has logged [`CONTINUED`] records and not its closing one: the
    /// bytes it logged so far. Any other record marks them abandoned ([`ABORTS_OPEN`]).
    open_stream: Option<u64>,
    /// The threads writing a streamed transaction's batches (see [`Wal::append_part`]).
    writing: Vec<std::thread::JoinHandle<std::io::Result<()>>>,
    /// Their buffers once written, for the next batches to record into: a new one of a few
    /// megabytes would be fresh memory, every page of it faulted in again.
    spare: Arc<Mutex<Vec<Vec<u8>>>>,
    /// [`STREAM_LOG_LIMIT`] (smaller in tests).
    stream_limit: u64,
}

/// What [`Wal::append`] did with a group's record.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Appended {
    /// Durable in the log: commit the redb transaction non-durably.
    Logged,
    /// No room (or too large): commit the redb transaction durably, stamped with
    /// [`Wal::stamp`], then call [`Wal::checkpointed`].
    Checkpoint,
}

impl Wal {
    /// Open (or create) the log beside the store file and replay what redb does not hold yet.
    pub(super) fn open(dir: &Path, db: &Database) -> Result<Wal, StoreError> {
        let path = dir.join(WAL_FILE);
        let wal_error = |message: String| StoreError::Wal {
            path: path.clone(),
            message,
        };
        let (store_id, stamped) = store_id_and_stamp(db)?;
        let mut replayed = stamped;
        match read_existing(&path).map_err(|e| wal_error(format!("cannot read it: {e}")))? {
            Some(bytes) if header_matches(&bytes, store_id) => {
                let records = records_after(&bytes, stamped).map_err(wal_error)?;
                if let Some(last) = records.last().map(|r| r.seq) {
                    let committed = committed(&records);
                    // Stamped with the last record read, taken or not, so that no record left
                    // in the log counts as one to replay again.
                    replay(db, &committed, last)?;
                    tracing::info!(
                        records = committed.len(),
                        dropped = records.len() - committed.len(),
                        through = last,
                        "realm store: replayed the commits the write-ahead log held"
                    );
                    replayed = last;
                }
            }
            Some(_) => tracing::warn!(
                path = %path.display(),
                "realm store: the write-ahead log belongs to another store file (left by a \
                 reset?); starting a new one"
            ),
            None => {}
        }
        // Start a fresh log: everything before is durable in redb now.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| wal_error(format!("cannot open it for writing: {e}")))?;
        let mut header = [0u8; HEADER_LEN as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..12].copy_from_slice(&WAL_FORMAT.to_le_bytes());
        header[16..24].copy_from_slice(&store_id.to_le_bytes());
        let mut wal = Wal {
            file: Arc::new(file),
            path: path.clone(),
            tail: HEADER_LEN,
            len: 0,
            next_seq: replayed + 1,
            failed: None,
            record: Vec::new(),
            open_stream: None,
            writing: Vec::new(),
            spare: Arc::default(),
            stream_limit: STREAM_LOG_LIMIT,
        };
        (|| -> std::io::Result<()> {
            // Nothing of the old log is kept: a streamed transaction's parts are written by
            // threads of their own, so a crash can leave later ones (numbered past the stamp)
            // behind a part that never reached the disk, and a new record of the same length
            // in its place would chain them on.
            wal.file.set_len(HEADER_LEN)?;
            wal.len = HEADER_LEN;
            wal.file.write_all_at(&header, 0)?;
            wal.grow_to(HEADER_LEN + GROW_STEP)?;
            wal.file.sync_all()?;
            File::open(dir)?.sync_all()
        })()
        .map_err(|e| wal_error(format!("cannot prepare it: {e}")))?;
        Ok(wal)
    }

    /// Append `redo` as the next record and make it durable, or say the group must commit
    /// durably in redb instead.
    pub(super) fn append(&mut self, redo: &Redo) -> Result<Appended, StoreError> {
        self.settle()?;
        let size = (RECORD_HEADER + redo.payload.len()) as u64;
        if size > LARGEST_RECORD || self.tail + size > CAPACITY {
            return Ok(Appended::Checkpoint);
        }
        let flags = if self.open_stream.take().is_some() {
            ABORTS_OPEN
        } else {
            0
        };
        self.write_record(redo, flags)?;
        Ok(Appended::Logged)
    }

    /// Append a batch of a streamed transaction (its `first`, or the next), flagged
    /// [`CONTINUED`], taking what `redo` recorded. A thread of its own writes it and starts its
    /// write to the disk, without waiting for either: the stream goes on meanwhile (the
    /// initial load's apply bounds its copy). The closing record waits for them all. False,
    /// writing nothing, when the transaction's records would pass [`STREAM_LOG_LIMIT`]: it
    /// must then commit durably in redb.
    pub(super) fn append_part(&mut self, redo: &mut Redo, first: bool) -> Result<bool, StoreError> {
        self.usable()?;
        let size = (RECORD_HEADER + redo.payload.len()) as u64;
        let mut flags = CONTINUED;
        let mut logged = self.open_stream.unwrap_or(0);
        if first && self.open_stream.is_some() {
            // Another stream's parts, never closed.
            flags |= ABORTS_OPEN;
            logged = 0;
        }
        if logged + size > self.stream_limit {
            return Ok(false);
        }
        let (offset, seq) = (self.tail, self.next_seq);
        let recorded = redo.payload.len();
        let empty = self
            .spare
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(recorded + recorded / 4));
        let payload = redo.take(empty);
        let file = self.file.clone();
        let spare = self.spare.clone();
        let write = move || -> std::io::Result<()> {
            let mut head = [0u8; RECORD_HEADER];
            head[0..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
            head[4..8].copy_from_slice(&flags.to_le_bytes());
            head[8..16].copy_from_slice(&seq.to_le_bytes());
            head[16..24].copy_from_slice(&checksum(seq, &payload).to_le_bytes());
            file.write_all_at(&head, offset)?;
            file.write_all_at(&payload, offset + RECORD_HEADER as u64)?;
            start_writeback(&file, offset, size)?;
            let mut payload = payload;
            payload.clear();
            let mut spare = spare.lock().unwrap_or_else(PoisonError::into_inner);
            if spare.len() < 2 {
                spare.push(payload);
            }
            Ok(())
        };
        // The record extends the file itself: zeros written first would be as many bytes again.
        self.tail += size;
        self.next_seq += 1;
        self.len = self.len.max(self.tail);
        self.open_stream = Some(logged + size);
        match std::thread::Builder::new()
            .name("pgrealm-wal".into())
            .spawn(write)
        {
            Ok(thread) => self.writing.push(thread),
            Err(e) => {
                self.failed = Some(e.to_string());
                return Err(self.error(format!("cannot start a thread to write it: {e}")));
            }
        }
        Ok(true)
    }

    /// Wait for the threads writing a streamed transaction's batches; a write that failed
    /// fails the log (see `failed`).
    fn settle(&mut self) -> Result<(), StoreError> {
        for thread in self.writing.drain(..) {
            let result = thread
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("the writing thread panicked")));
            if let Err(e) = result {
                self.failed.get_or_insert_with(|| e.to_string());
            }
        }
        self.usable()
    }

    /// Append the closing record of the streamed transaction whose parts were logged, and make
    /// it durable with them: then the transaction may commit non-durably in redb.
    pub(super) fn append_closing(&mut self, redo: &Redo) -> Result<(), StoreError> {
        self.settle()?;
        self.spare
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        debug_assert!(
            self.open_stream.is_some(),
            "a streamed transaction was logged"
        );
        self.open_stream = None;
        self.write_record(redo, 0)
    }

    fn usable(&self) -> Result<(), StoreError> {
        match &self.failed {
            Some(reason) => Err(self.error(format!(
                "an earlier write of the log failed ({reason}); no commit is accepted until the \
                 store is reopened (restart pgrealm; the log is replayed on open)"
            ))),
            None => Ok(()),
        }
    }

    fn write_record(&mut self, redo: &Redo, flags: u32) -> Result<(), StoreError> {
        let size = (RECORD_HEADER + redo.payload.len()) as u64;
        let seq = self.next_seq;
        self.record.clear();
        self.record
            .extend_from_slice(&(redo.payload.len() as u32).to_le_bytes());
        self.record.extend_from_slice(&flags.to_le_bytes());
        self.record.extend_from_slice(&seq.to_le_bytes());
        self.record
            .extend_from_slice(&checksum(seq, &redo.payload).to_le_bytes());
        // A small record goes in one write; a large one (a streamed batch) is not copied.
        let whole = redo.payload.len() <= SMALL_RECORD;
        if whole {
            self.record.extend_from_slice(&redo.payload);
        }
        let result = (|| -> std::io::Result<()> {
            // Whatever an older log left after this record has a sequence number at most the
            // stamp, or a checksum that fails: a scan stops there.
            let end = self.tail + size;
            if end > self.len {
                self.grow_to(end.div_ceil(GROW_STEP) * GROW_STEP)?;
            }
            self.file.write_all_at(&self.record, self.tail)?;
            if !whole {
                self.file
                    .write_all_at(&redo.payload, self.tail + RECORD_HEADER as u64)?;
            }
            self.file.sync_data()
        })();
        match result {
            Ok(()) => {
                self.tail += size;
                self.next_seq += 1;
                Ok(())
            }
            Err(e) => {
                // The record may have reached the disk all the same: its number is used up, so
                // that the next durable commit's stamp covers it and no replay takes it.
                self.tail += size;
                self.next_seq += 1;
                self.failed = Some(e.to_string());
                Err(self.error(format!("cannot write it: {e}; check the disk")))
            }
        }
    }

    /// Refuse every further commit until the store is reopened: the log holds a record whose
    /// redb commit failed.
    pub(super) fn poison(&mut self, reason: &str) {
        self.failed = Some(format!(
            "a commit logged here failed in the store file ({reason}); its callers were told it \
             failed, but reopening the store applies it"
        ));
    }

    /// Let a streamed transaction log at most `bytes` (a test of the limit).
    #[cfg(test)]
    pub(super) fn limit_streams(&mut self, bytes: u64) {
        self.stream_limit = bytes;
    }

    /// Whether records were appended since the last checkpoint.
    pub(super) fn has_records(&self) -> bool {
        self.tail > HEADER_LEN
    }

    /// Record in `txn` (to be committed durably) that it covers every record so far.
    pub(super) fn stamp(&self, txn: &WriteTransaction) -> Result<(), StoreError> {
        let mut meta = txn.open_table(META)?;
        meta.insert(WAL_SEQ_KEY, self.next_seq - 1)?;
        Ok(())
    }

    /// A stamped durable redb commit has landed: the log starts again from its beginning.
    pub(super) fn checkpointed(&mut self) {
        // A stream's parts are covered by the stamp too: nothing of them is replayed. (A
        // failed write of one is of no consequence now.)
        for thread in self.writing.drain(..) {
            let _ = thread.join();
        }
        self.open_stream = None;
        if self.tail == HEADER_LEN {
            return;
        }
        // A streamed transaction may have grown the log far past its capacity: give the space
        // back (each open reads the whole log).
        if self.len > CAPACITY + GROW_STEP && self.file.set_len(CAPACITY).is_ok() {
            self.len = CAPACITY;
        }
        // The old records stay on disk until overwritten; their sequence numbers are at most
        // the stamp, so neither a scan nor a replay takes them. Zero the first record header
        // so a scan stops at once.
        match self.file.write_all_at(&[0u8; RECORD_HEADER], HEADER_LEN) {
            Ok(()) => self.tail = HEADER_LEN,
            Err(e) => self.failed = Some(e.to_string()),
        }
    }

    fn grow_to(&mut self, len: u64) -> std::io::Result<()> {
        let zeros = vec![0u8; 64 << 10];
        while self.len < len {
            let n = (len - self.len).min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..n], self.len)?;
            self.len += n as u64;
        }
        Ok(())
    }

    fn error(&self, message: String) -> StoreError {
        StoreError::Wal {
            path: self.path.clone(),
            message,
        }
    }
}

/// Start writing `len` bytes of `file` at `offset` to the disk and return at once (Linux's
/// `sync_file_range`): a later `fdatasync` then finds most of them written.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // one sync_file_range(2) call
fn start_writeback(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain system call on an open descriptor; it reads no memory of ours.
    let done = unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
    if done == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) -> std::io::Result<()> {
    // The closing record's sync writes everything.
    Ok(())
}

/// The store's random id (given one now if it has none) and the last record redb holds.
fn store_id_and_stamp(db: &Database) -> Result<(u64, u64), StoreError> {
    {
        let read = db.begin_read()?;
        let meta = read.open_table(META)?;
        let id = meta.get(STORE_ID_KEY)?.map(|g| g.value());
        let stamp = meta.get(WAL_SEQ_KEY)?.map(|g| g.value()).unwrap_or(0);
        if let Some(id) = id {
            return Ok((id, stamp));
        }
    }
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| StoreError::GroupCommit(e.to_string()))?;
    // Never 0, so a zeroed header is never a match.
    let id = u64::from_le_bytes(bytes) | 1;
    let txn = db.begin_write()?;
    {
        let mut meta = txn.open_table(META)?;
        meta.insert(STORE_ID_KEY, id)?;
    }
    txn.commit()?;
    Ok((id, 0))
}

fn read_existing(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}

fn header_matches(bytes: &[u8], store_id: u64) -> bool {
    bytes.len() >= HEADER_LEN as usize
        && &bytes[..8] == MAGIC
        && bytes[16..24] == store_id.to_le_bytes()
}

/// One record of the log.
#[derive(Debug, Clone, Copy)]
struct Record<'a> {
    seq: u64,
    flags: u32,
    payload: &'a [u8],
}

/// The records whose transactions committed: every ordinary record, and a streamed
/// transaction's [`CONTINUED`] records only with the closing record after them (those a record
/// flagged [`ABORTS_OPEN`] follows, or that end the log, are dropped).
fn committed<'a>(records: &[Record<'a>]) -> Vec<(u64, &'a [u8])> {
    let mut out = Vec::with_capacity(records.len());
    let mut open = Vec::new();
    for record in records {
        if record.flags & ABORTS_OPEN != 0 {
            open.clear();
        }
        if record.flags & CONTINUED != 0 {
            open.push((record.seq, record.payload));
            continue;
        }
        out.append(&mut open);
        out.push((record.seq, record.payload));
    }
    out
}

/// The records after sequence number `stamped`, in order: scanning stops at the first record
/// that is torn, zeroed or not the next in sequence.
fn records_after(bytes: &[u8], stamped: u64) -> Result<Vec<Record<'_>>, String> {
    let format = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if format > WAL_FORMAT {
        return Err(format!(
            "it has format {format}, newer than this pgrealm's {WAL_FORMAT}; run a pgrealm at \
             least as new as the one that wrote it"
        ));
    }
    let mut out = Vec::new();
    let mut at = HEADER_LEN as usize;
    let mut previous: Option<u64> = None;
    while at + RECORD_HEADER <= bytes.len() {
        let head = &bytes[at..at + RECORD_HEADER];
        let len = u32::from_le_bytes(head[0..4].try_into().expect("4 bytes")) as usize;
        let flags = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
        let seq = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
        let sum = u64::from_le_bytes(head[16..24].try_into().expect("8 bytes"));
        let start = at + RECORD_HEADER;
        if seq == 0 || start + len > bytes.len() {
            break;
        }
        if previous.is_some_and(|p| seq != p + 1) {
            break;
        }
        let payload = &bytes[start..start + len];
        if checksum(seq, payload) != sum {
            break;
        }
        if seq > stamped {
            if out.is_empty() && seq != stamped + 1 {
                return Err(format!(
                    "its first record after the store's last durable commit (number {stamped}) \
                     is number {seq}: records are missing, so the log does not belong with this \
                     store file; restore both from one backup, or move the log away to open the \
                     store as of its last durable commit"
                ));
            }
            out.push(Record {
                seq,
                flags,
                payload,
            });
        }
        previous = Some(seq);
        at = start + len;
    }
    Ok(out)
}

/// Apply `records` in one durable redb commit stamped with `last`.
fn replay(db: &Database, records: &[(u64, &[u8])], last: u64) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    {
        let mut tables = ReplayTables {
            meta: txn.open_table(META)?,
            realms: txn.open_table(REALMS)?,
            realm_paths: txn.open_table(REALM_PATHS)?,
            realm_classes: txn.open_table(REALM_CLASSES)?,
            objects: txn.open_table(OBJECTS)?,
            log: txn.open_table(LOG)?,
            locator: txn.open_table(LOCATOR)?,
            metadata: txn.open_table(METADATA)?,
            log_parts: txn.open_table(LOG_PARTS)?,
        };
        for (seq, payload) in records {
            tables.apply(payload).map_err(|reason| {
                StoreError::Corrupt(super::codec::CodecError {
                    what: "write-ahead log record",
                    reason: format!("record {seq}: {reason}"),
                })
            })??;
        }
        tables.meta.insert(WAL_SEQ_KEY, last)?;
    }
    txn.commit()?;
    Ok(())
}

struct ReplayTables<'t> {
    meta: Table<'t, &'static str, u64>,
    realms: Table<'t, &'static str, (u64, u64, u64)>,
    realm_paths: Table<'t, u64, &'static str>,
    realm_classes: Table<'t, (u64, &'static str), &'static str>,
    objects: Table<'t, &'static [u8], &'static [u8]>,
    log: Table<'t, (u64, u64), &'static [u8]>,
    locator: Table<'t, &'static [u8], ()>,
    metadata: Table<'t, &'static str, &'static [u8]>,
    log_parts: Table<'t, (u64, u64, u64), &'static [u8]>,
}

impl ReplayTables<'_> {
    /// Apply one record's operations. The outer error is a record that does not decode, the
    /// inner one a failed write.
    fn apply(&mut self, mut payload: &[u8]) -> Result<Result<(), redb::StorageError>, String> {
        while let Some((&op, rest)) = payload.split_first() {
            let (key, rest) = take_bytes(rest)?;
            let remove = op & REMOVE != 0;
            let (value, rest) = if remove {
                (&[][..], rest)
            } else {
                take_bytes(rest)?
            };
            payload = rest;
            let result = match op & !REMOVE {
                1 => write(&mut self.meta, key, value, remove),
                2 => write(&mut self.realms, key, value, remove),
                3 => write(&mut self.realm_paths, key, value, remove),
                4 => write(&mut self.realm_classes, key, value, remove),
                5 => write(&mut self.objects, key, value, remove),
                6 => write(&mut self.log, key, value, remove),
                7 => write(&mut self.locator, key, value, remove),
                8 => write(&mut self.metadata, key, value, remove),
                9 => write(&mut self.log_parts, key, value, remove),
                other => return Err(format!("unknown table number {other}")),
            };
            if let Err(e) = result {
                return Ok(Err(e));
            }
        }
        Ok(Ok(()))
    }
}

fn take_bytes(bytes: &[u8]) -> Result<(&[u8], &[u8]), String> {
    if bytes.len() < 4 {
        return Err("it ends inside a length".into());
    }
    let len = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")) as usize;
    let rest = &bytes[4..];
    if rest.len() < len {
        return Err("it ends inside a key or value".into());
    }
    Ok(rest.split_at(len))
}

fn write<K: Key + 'static, V: Value + 'static>(
    table: &mut Table<'_, K, V>,
    key: &[u8],
    value: &[u8],
    remove: bool,
) -> Result<(), redb::StorageError> {
    if remove {
        table.remove(K::from_bytes(key))?;
    } else {
        table.insert(K::from_bytes(key), V::from_bytes(value))?;
    }
    Ok(())
}

/// A 64-bit checksum of a record (its sequence number, length and payload): enough to tell a
/// record from a torn or stale one, cheap enough for hundreds of kilobytes per commit.
fn checksum(seq: u64, payload: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = 0x243F_6A88_85A3_08D3 ^ seq.wrapping_mul(K) ^ payload.len() as u64;
    let mut words = payload.chunks_exact(8);
    for w in &mut words {
        h = (h ^ u64::from_le_bytes(w.try_into().expect("8 bytes"))).wrapping_mul(K);
        h ^= h >> 29;
    }
    let mut last = [0u8; 8];
    last[..words.remainder().len()].copy_from_slice(words.remainder());
    h = (h ^ u64::from_le_bytes(last)).wrapping_mul(K);
    h ^ (h >> 32)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use redb::ReadableTable;

    use super::*;

    fn record(seq: u64, payload: &[u8]) -> Vec<u8> {
        flagged(seq, 0, payload)
    }

    fn flagged(seq: u64, flags: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(&checksum(seq, payload).to_le_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn file(records: &[Vec<u8>]) -> Vec<u8> {
        let mut out = vec![0u8; HEADER_LEN as usize];
        out[..8].copy_from_slice(MAGIC);
        out[8..12].copy_from_slice(&WAL_FORMAT.to_le_bytes());
        for r in records {
            out.extend_from_slice(r);
        }
        out.extend_from_slice(&[0u8; 100]);
        out
    }

    #[test]
    fn a_scan_takes_the_records_after_the_stamp_and_stops_at_a_torn_or_stale_one() {
        let bytes = file(&[record(4, b"a"), record(5, b"bb"), record(6, b"ccc")]);
        let seqs = |v: Vec<Record>| v.into_iter().map(|r| r.seq).collect::<Vec<_>>();
        assert_eq!(seqs(records_after(&bytes, 3).unwrap()), [4, 5, 6]);
        assert_eq!(seqs(records_after(&bytes, 5).unwrap()), [6]);
        assert!(records_after(&bytes, 6).unwrap().is_empty());

        // A torn last record (one payload byte changed) ends the scan before it.
        let mut torn = bytes.clone();
        let last = torn.len() - 100 - 1;
        torn[last] ^= 0xff;
        assert_eq!(seqs(records_after(&torn, 3).unwrap()), [4, 5]);

        // New records over old ones: the old tail's numbers do not follow, so it is not taken.
        let reused = file(&[record(7, b"x"), record(2, b"old")]);
        assert_eq!(seqs(records_after(&reused, 6).unwrap()), [7]);

        // A gap between the stamp and the first record is refused, not skipped.
        let err = records_after(&bytes, 1).unwrap_err();
        assert!(err.contains("records are missing"), "{err}");
    }

    /// Every row of `table`, in key order.
    fn contents<C: FromIterator<(Vec<u8>, Vec<u8>)>>(table: &Logged<&[u8], &[u8]>) -> C {
        table
            .range::<&[u8]>(..)
            .unwrap()
            .map(|e| {
                let (k, v) = e.unwrap();
                (k.value().to_vec(), v.value().to_vec())
            })
            .collect()
    }

    /// Sorted inserts through a cursor: keys between, before, after and equal to existing ones
    /// all land (an equal one overwrites), and each is recorded once for the log.
    #[test]
    fn sorted_inserts_fill_gaps_overwrite_equal_keys_and_record_every_put() {
        const T: TableDefinition<&[u8], &[u8]> = TableDefinition::new("t");
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("t.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        let redo = RefCell::new(Redo::default());
        {
            let mut table = Logged::open(&txn, T, Tag::Objects, Some(&redo)).unwrap();
            for k in [b"b", b"d", b"f"] {
                table.insert(&k[..], &b"old"[..]).unwrap();
            }
            let entries: Vec<(&[u8], &[u8])> = vec![
                (b"a", b"1"),
                (b"b", b"2"),
                (b"c", b"3"),
                (b"e", b"5"),
                (b"g", b"7"),
                (b"h", b"8"),
            ];
            table.insert_sorted(&entries).unwrap();
            let all: Vec<(Vec<u8>, Vec<u8>)> = contents(&table);
            let expected: Vec<(Vec<u8>, Vec<u8>)> = [
                ("a", "1"),
                ("b", "2"),
                ("c", "3"),
                ("d", "old"),
                ("e", "5"),
                ("f", "old"),
                ("g", "7"),
                ("h", "8"),
            ]
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
            assert_eq!(all, expected);
        }
        // 3 ordinary puts + 6 sorted ones, each `tag, len, key, len, value`.
        let put = |value_len: usize| 1 + 4 + 1 + 4 + value_len;
        assert_eq!(redo.borrow().payload.len(), 3 * put(3) + 6 * put(1));

        // Keys that all fall into one gap go through the cursor, between existing neighbours.
        const U: TableDefinition<&[u8], &[u8]> = TableDefinition::new("u");
        let redo = RefCell::new(Redo::default());
        {
            let mut table = Logged::open(&txn, U, Tag::Objects, Some(&redo)).unwrap();
            table.insert(&b"a"[..], &b"first"[..]).unwrap();
            table.insert(&b"z"[..], &b"last"[..]).unwrap();
            let entries: Vec<(&[u8], &[u8])> = vec![(b"m", b"1"), (b"n", b"2"), (b"o", b"3")];
            table.insert_sorted(&entries).unwrap();
            let keys: Vec<Vec<u8>> = table
                .range::<&[u8]>(..)
                .unwrap()
                .map(|e| e.unwrap().0.value().to_vec())
                .collect();
            assert_eq!(keys, [&b"a"[..], b"m", b"n", b"o", b"z"]);
            assert_eq!(table.get(&b"n"[..]).unwrap().unwrap().value(), b"2");
        }
        assert_eq!(redo.borrow().payload.len(), put(5) + put(4) + 3 * put(1));
        txn.abort().unwrap();
    }

    /// Runs in several gaps (one per realm, say), and keys scattered among existing ones past
    /// the point where runs are tried: every key lands once, with its value, and is recorded once.
    #[test]
    fn sorted_inserts_go_in_by_gaps_and_scattered_keys_one_by_one() {
        const GAPS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("gaps");
        const SCATTERED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("scattered");
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("t.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        let key = |realm: u8, n: u32| {
            let mut k = vec![realm];
            k.extend_from_slice(&n.to_be_bytes());
            k
        };
        for scattered in [false, true] {
            let redo = RefCell::new(Redo::default());
            let definition = if scattered { SCATTERED } else { GAPS };
            let mut table = Logged::open(&txn, definition, Tag::Objects, Some(&redo)).unwrap();
            // Held: realms 1..=8 with keys 0..100 (even ones only when scattered).
            let held: Vec<Vec<u8>> = (1..=8u8)
                .flat_map(|r| {
                    (0..100)
                        .filter(move |n| !scattered || n % 2 == 0)
                        .map(move |n| key(r, n))
                })
                .collect();
            for k in &held {
                table.table.insert(k.as_slice(), &b"old"[..]).unwrap();
            }
            // New: keys 100..150 of every realm, or the odd keys below 100 and a few held ones.
            let new: Vec<Vec<u8>> = (1..=8u8)
                .flat_map(|r| {
                    let numbers: Vec<u32> = if scattered {
                        (0..100).filter(|n| n % 2 == 1 || n % 10 == 0).collect()
                    } else {
                        (100..150).collect()
                    };
                    numbers.into_iter().map(move |n| key(r, n))
                })
                .collect();
            let entries: Vec<(&[u8], &[u8])> =
                new.iter().map(|k| (k.as_slice(), &b"new"[..])).collect();
            table.insert_sorted(&entries).unwrap();
            let mut expected: BTreeMap<Vec<u8>, &[u8]> =
                held.iter().map(|k| (k.clone(), &b"old"[..])).collect();
            expected.extend(new.iter().map(|k| (k.clone(), &b"new"[..])));
            let all: BTreeMap<Vec<u8>, Vec<u8>> = contents(&table);
            assert_eq!(all.len(), expected.len(), "scattered: {scattered}");
            for (k, v) in &expected {
                assert_eq!(all[k].as_slice(), *v, "scattered: {scattered}");
            }
            // Only the sorted inserts were recorded (the held keys went in around the log).
            let put = 1 + 4 + 5 + 4 + 3;
            assert_eq!(redo.borrow().payload.len(), new.len() * put);
        }
        txn.abort().unwrap();
    }

    /// A streamed transaction's records count only with their closing record: not when the log
    /// ends before it, nor when the next record says they were abandoned.
    #[test]
    fn streamed_records_replay_only_with_their_closing_record() {
        let taken = |records: &[Vec<u8>]| {
            let bytes = file(records);
            let scanned = records_after(&bytes, 0).unwrap();
            committed(&scanned)
                .into_iter()
                .map(|(seq, _)| seq)
                .collect::<Vec<_>>()
        };
        let part = |seq| flagged(seq, CONTINUED, b"part");
        // Closed: every part, then the closing record.
        assert_eq!(
            taken(&[record(1, b"a"), part(2), part(3), record(4, b"close")]),
            [1, 2, 3, 4]
        );
        // The log ends inside the transaction (a crash before its commit): none of it.
        assert_eq!(taken(&[record(1, b"a"), part(2), part(3)]), [1]);
        // Abandoned, then an ordinary commit: that commit alone.
        assert_eq!(
            taken(&[
                record(1, b"a"),
                part(2),
                flagged(3, ABORTS_OPEN, b"b"),
                record(4, b"c")
            ]),
            [1, 3, 4]
        );
        // Abandoned, then another stream that closes.
        assert_eq!(
            taken(&[
                part(1),
                part(2),
                flagged(3, CONTINUED | ABORTS_OPEN, b"p"),
                record(4, b"close")
            ]),
            [3, 4]
        );
    }

    #[test]
    fn the_checksum_sees_the_sequence_the_length_and_every_byte() {
        let base = checksum(1, b"hello world, a record");
        assert_ne!(base, checksum(2, b"hello world, a record"));
        assert_ne!(base, checksum(1, b"hello world, a record\0"));
        assert_ne!(base, checksum(1, b"hello world, a recorD"));
        assert_ne!(base, checksum(1, b"Hello world, a record"));
    }
}
