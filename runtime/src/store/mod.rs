//! The realm store: the storage of the object server, embedded by default.
//!
//! It owns realms (objects of the schema's classes keyed by primary key, addressed by
//! [`RealmPath`]), their versions and changeset log, the change feed, the locator (which realm
//! holds an object) and the per-key commit metadata the sync engine keeps its LSNs in. All of it
//! lives in one redb file, `<data_dir>/realms.redb`, stamped with [`FORMAT_VERSION`]; the
//! latest commits may also sit in its write-ahead log `<data_dir>/realms.wal` until the next
//! checkpoint (see `wal.rs`: it is what makes a small commit one sequential write and one sync).
//!
//! A store may instead be a remote object server's ([`Store::connect_remote`], the engine's
//! remote mode): the same API, each operation going through the server's admin endpoints (see
//! `remote.rs` for what that changes — notably, remote reads are not one snapshot).
//!
//! The core is synchronous and cheap to call from `spawn_blocking`: a [`WriteTx`] collects
//! operations without touching the file and applies them in one redb write transaction when it
//! commits; a [`Snapshot`] is a redb read transaction, so readers see one consistent state while
//! writes go on. Only the [`ChangeFeed`] is async.
//!
//! This module never talks to PostgreSQL and never decides conflicts: it stores what it is told,
//! validated against the compiled schema. Only the remote backend talks to the network.

mod changeset;
mod codec;
mod error;
mod feed;
mod group;
mod path;
mod read;
mod remote;
mod remote_stream;
mod streaming;
mod wal;
mod write;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use pgrealm_schema::{Class, CompiledSchema, PrimaryKey, Schema};
use redb::{Database, MultimapTableDefinition, ReadableDatabase, TableDefinition};
use tokio::sync::broadcast;

pub use changeset::{apply, Changeset, Instruction, RealmObjects};
pub use codec::CodecError;
pub(crate) use codec::RecordWriter;
pub use error::StoreError;
pub use feed::{ChangeFeed, Subscription};
pub use group::CommitStats;
pub use path::{PathError, RealmPath, MAX_PATH_LEN, MAX_SEGMENT_LEN};
pub use read::{RealmInfo, RealmView, Snapshot};
pub use streaming::StreamingTx;
pub use wal::WAL_FILE;
pub use write::{CommitInfo, RealmWriter, WriteTx};

/// The on-disk format this build writes and the newest it reads.
///
/// 2: the locator is a plain table (one key per object and realm) instead of a multimap; a
/// format-1 file is converted when it is opened.
///
/// 3: a changeset may be written in parts ([`StreamingTx`], table `log_parts`); a format-2 file
/// is raised to 3 by its first such commit (until then it stays readable by format-2 builds).
pub const FORMAT_VERSION: u64 = 3;

/// The store file's name inside the data directory.
pub const STORE_FILE: &str = "realms.redb";

// Tables. Realms are numbered so object and log keys stay short; the number never leaves the
// store.
/// `format_version`, `next_realm_id`.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// path → (realm id, current version, oldest version kept in the log).
const REALMS: TableDefinition<&str, (u64, u64, u64)> = TableDefinition::new("realms");
/// realm id → path.
const REALM_PATHS: TableDefinition<u64, &str> = TableDefinition::new("realm_paths");
/// (realm id, class) → the class as this realm has it (JSON).
const REALM_CLASSES: TableDefinition<(u64, &str), &str> = TableDefinition::new("realm_classes");
/// realm id (8 bytes BE) ‖ class ‖ 0 ‖ key → object record.
const OBJECTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("objects");
/// (realm id, version) → changeset record.
const LOG: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("log");
/// (realm id, version, part) → the leading instructions of a changeset written in parts
/// (format 3; see `streaming.rs`).
const LOG_PARTS: TableDefinition<(u64, u64, u64), &[u8]> = TableDefinition::new("log_parts");
/// class ‖ 0 ‖ key length (4 bytes BE) ‖ key ‖ realm id (8 bytes BE), one row per realm holding
/// such an object. A plain table: one insert per created object, where redb's multimap cost a
/// lookup and an insert into a nested tree.
const LOCATOR: TableDefinition<&[u8], ()> = TableDefinition::new("locator_rows");
/// Format 1's locator: class ‖ 0 ‖ key → realm ids. Only read to convert a format-1 file.
const LOCATOR_V1: MultimapTableDefinition<&[u8], u64> = MultimapTableDefinition::new("locator");
/// commit metadata key → latest value.
const METADATA: TableDefinition<&str, &[u8]> = TableDefinition::new("metadata");

/// Tunables of a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How many changesets each realm keeps in its log (the newest ones). A subscriber further
    /// behind than this gets [`StoreError::Pruned`].
    pub log_retention: u64,
    /// How many commit notifications a slow subscriber may fall behind before it re-reads the
    /// realm list (it never loses changesets, it only does more work).
    pub feed_buffer: usize,
    /// The most memory redb's page cache and write buffer may use, in bytes (redb's default is
    /// 1 GiB). It also bounds what one large [`StreamingTx`] keeps in memory: redb writes dirty
    /// pages past half of it to the file before the commit.
    pub cache_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            log_retention: 100_000,
            feed_buffer: 4096,
            cache_bytes: 1 << 30,
        }
    }
}

/// The realm store. Cheap to clone: clones share one open file.
///
/// ```
/// use pgrealm_runtime::{RealmPath, Store, StoreOptions};
/// use pgrealm_schema::{Class, IntWidth, Object, Property, PropertyType, ScalarType, Schema, Value};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let schema = Schema::new(vec![Class::new("Bus")
///     .property(Property::new("id", PropertyType::Scalar(ScalarType::Int(IntWidth::I64))).primary_key())
///     .property(Property::new("name", PropertyType::Scalar(ScalarType::String)))]);
/// let dir = tempfile::tempdir()?;
/// let store = Store::open(dir.path(), schema, StoreOptions::default())?;
///
/// let realm = RealmPath::parse("/transit")?;
/// let mut tx = store.begin_write("app");
/// tx.put_object(&realm, Object::new("Bus").with("id", Value::Int(5)).with("name", Value::String("5A".into())))?;
/// tx.set_metadata("note", b"hello".to_vec());
/// let commit = tx.commit()?;
/// assert_eq!(commit.version_of(&realm), Some(1));
///
/// let view = store.snapshot()?.realm(&realm)?.expect("the realm exists after a commit");
/// let bus = view.object("Bus", &5.into())?.unwrap();
/// assert_eq!(bus.get("name"), Some(&Value::String("5A".into())));
/// assert_eq!(store.metadata("note")?, Some(b"hello".to_vec()));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    file: PathBuf,
    schema: Schema,
    classes: HashMap<String, usize>,
    /// Each compiled class's definition as `realm_classes` holds it (JSON), by class number:
    /// most realms hold exactly the compiled classes.
    class_json: Vec<String>,
    options: StoreOptions,
    feed: broadcast::Sender<Committed>,
    commits: group::CommitQueue,
    /// The write-ahead log of a local store (see `wal.rs`); whoever holds redb's write
    /// transaction holds this lock too.
    wal: Option<Mutex<wal::Wal>>,
    /// (realm id, class number) of realms a durable commit found holding the whole compiled
    /// class: later commits skip reading (and parsing) the realm's class definition.
    complete_classes: Mutex<HashSet<(u64, usize)>>,
}

impl Inner {
    /// A durable redb commit stamped with the log's last record, if the log holds any: then
    /// the store file alone holds everything.
    fn checkpoint(&self) -> Result<(), StoreError> {
        let (Backend::Local(db), Some(wal)) = (&self.backend, &self.wal) else {
            return Ok(());
        };
        // redb's write lock first, as every writer takes them (an open stream holds the one
        // and takes the other for its batches).
        let txn = db.begin_write()?;
        let mut wal = wal.lock().unwrap_or_else(PoisonError::into_inner);
        if !wal.has_records() {
            drop(wal);
            txn.abort()?;
            return Ok(());
        }
        wal.stamp(&txn)?;
        txn.commit()?;
        wal.checkpointed();
        Ok(())
    }
}

impl Drop for Inner {
    /// A store closed cleanly leaves nothing for the log to replay: one last durable commit,
    /// stamped. (Skipping it is safe, only slower to open.)
    fn drop(&mut self) {
        if let Err(e) = self.checkpoint() {
            tracing::warn!(
                error = %e,
                "realm store: the closing checkpoint failed; the next open replays the log"
            );
        }
    }
}

/// Where the realms live: the redb file, or a remote object server.
enum Backend {
    Local(Database),
    Remote(remote::RemoteBackend),
}

/// A commit notification: realm `path` reached `version`.
#[derive(Debug, Clone)]
struct Committed {
    path: RealmPath,
    version: u64,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Store");
        match &self.inner.backend {
            Backend::Local(_) => d.field("file", &self.inner.file),
            Backend::Remote(r) => d.field("remote", &r.url()),
        };
        d.field("classes", &self.inner.schema.classes.len())
            .field("options", &self.inner.options)
            .finish()
    }
}

impl Store {
    /// Open (or create) the store in `data_dir`, for the classes of `schema`.
    pub fn open(
        data_dir: impl AsRef<Path>,
        schema: Schema,
        options: StoreOptions,
    ) -> Result<Store, StoreError> {
        let dir = data_dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
            path: dir.to_owned(),
            source,
        })?;
        let file = dir.join(STORE_FILE);
        if !file.exists() {
            create_file(dir, &file)?;
        }
        let db = open_db(&file, options.cache_bytes)?;
        stamp_format(&db, &file)?;
        let wal = wal::Wal::open(dir, &db)?;
        let classes = schema
            .classes
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), i))
            .collect();
        let (feed, _) = broadcast::channel(options.feed_buffer.max(1));
        Ok(Store {
            inner: Arc::new(Inner {
                backend: Backend::Local(db),
                file,
                class_json: class_json(&schema),
                schema,
                classes,
                options,
                feed,
                commits: group::CommitQueue::default(),
                wal: Some(Mutex::new(wal)),
                complete_classes: Mutex::default(),
            }),
        })
    }

    /// The realms of the object server at `url` (`http://host:9080`), for the classes of
    /// `schema`, through its admin API with `admin_token` — the sync engine's remote mode.
    ///
    /// Checks at once that the server answers, takes the token as the admin's, has the admin API
    /// and serves the same compiled schema; each failure says what to do. The operations block
    /// the calling thread on a small runtime of the store's own (so they may be called from
    /// async code, like the embedded store's, but not inside `block_on`). Reads are not one
    /// snapshot: see [`Snapshot`].
    pub fn connect_remote(
        url: &str,
        admin_token: &str,
        schema: Schema,
    ) -> Result<Store, StoreError> {
        let backend = remote::RemoteBackend::connect(url, admin_token, &schema)?;
        let classes = schema
            .classes
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), i))
            .collect();
        let options = StoreOptions::default();
        let (feed, _) = broadcast::channel(1);
        Ok(Store {
            inner: Arc::new(Inner {
                backend: Backend::Remote(backend),
                file: PathBuf::new(),
                class_json: class_json(&schema),
                schema,
                classes,
                options,
                feed,
                // Unused: a remote commit is one request, grouped (or not) by the server.
                commits: group::CommitQueue::default(),
                wal: None,
                complete_classes: Mutex::default(),
            }),
        })
    }

    /// `class`'s definition as `realm_classes` holds it (JSON); computed once for a compiled
    /// class.
    pub(super) fn class_definition(&self, class: &Class) -> std::borrow::Cow<'_, str> {
        match self.inner.classes.get(&class.name) {
            Some(&i) if self.inner.schema.classes[i] == *class => {
                std::borrow::Cow::Borrowed(&self.inner.class_json[i])
            }
            _ => std::borrow::Cow::Owned(
                serde_json::to_string(class).expect("a class serializes to JSON"),
            ),
        }
    }

    /// The remote object server's URL when this store is one ([`Store::connect_remote`]).
    pub fn remote_url(&self) -> Option<&str> {
        match &self.inner.backend {
            Backend::Local(_) => None,
            Backend::Remote(r) => Some(r.url()),
        }
    }

    fn remote(&self) -> Option<&remote::RemoteBackend> {
        match &self.inner.backend {
            Backend::Local(_) => None,
            Backend::Remote(r) => Some(r),
        }
    }

    /// The redb file of a local store. Remote stores dispatch before any file access.
    fn db(&self) -> &Database {
        match &self.inner.backend {
            Backend::Local(db) => db,
            Backend::Remote(r) => {
                panic!(
                    "a remote store ({}) has no local file; this is a dispatch bug",
                    r.url()
                )
            }
        }
    }

    /// Open the store for a schema compiled by `schema!`.
    pub fn open_compiled<S: CompiledSchema>(
        data_dir: impl AsRef<Path>,
        options: StoreOptions,
    ) -> Result<Store, StoreError> {
        Store::open(data_dir, S::schema().clone(), options)
    }

    /// The write-ahead log of a local store, locked (take redb's write transaction first).
    fn wal(&self) -> MutexGuard<'_, wal::Wal> {
        self.inner
            .wal
            .as_ref()
            .expect("a local store has a write-ahead log; remote stores dispatch before")
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a durable commit found realm `realm_id` holding the whole class number `class`.
    fn class_is_complete(&self, realm_id: u64, class: usize) -> bool {
        self.inner
            .complete_classes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&(realm_id, class))
    }

    /// Remember what a commit, now durable, found (see [`Store::class_is_complete`]).
    fn learn_complete_classes(&self, learned: Vec<(u64, usize)>) {
        if learned.is_empty() {
            return;
        }
        self.inner
            .complete_classes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(learned);
    }

    /// The compiled schema: every class a realm may hold.
    pub fn schema(&self) -> &Schema {
        &self.inner.schema
    }

    /// The store file (empty for a remote store).
    pub fn file(&self) -> &Path {
        &self.inner.file
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &StoreOptions {
        &self.inner.options
    }

    /// Make the store file alone hold every commit (a durable redb commit, stamped), as the
    /// store does by itself when its write-ahead log fills and when it closes. A commit after
    /// a logged [`StreamingTx`] (see [`StreamingTx::log_ahead`]) writes that transaction's pages
    /// then; this does it now. Nothing to do for a remote store.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.inner.checkpoint()
    }

    /// Start a write transaction. Nothing touches the file until [`WriteTx::commit`].
    pub fn begin_write(&self, origin: impl Into<String>) -> WriteTx {
        WriteTx::new(self.clone(), origin.into())
    }

    /// Start a write transaction for a change too large to hold in memory: it takes the store's
    /// write lock now (waiting for a commit in progress) and applies operations as they come.
    /// See [`StreamingTx`]. On a remote store the object server holds the transaction open (and
    /// aborts it if this side goes silent past its idle timeout); it refuses a second stream
    /// while one is open ([`StoreError::RemoteStream`]).
    pub fn begin_streaming(&self, origin: impl Into<String>) -> Result<StreamingTx, StoreError> {
        StreamingTx::new(self.clone(), origin.into(), None)
    }

    /// [`begin_streaming`](Self::begin_streaming), naming who streams. On a remote store a new
    /// stream of the same `owner` replaces one still open (it is aborted, nothing of it
    /// committed), so a process restarted after a crash does not wait for the server's idle
    /// timeout. Give an owner only one process can be at a time (the sync engine uses its
    /// replication slot, which PostgreSQL lets one consumer use). If the replaced stream was
    /// committing, this fails with [`StoreError::RemoteStream`]: read what it may have written
    /// (the checkpoint) again before streaming.
    pub fn begin_streaming_as(
        &self,
        origin: impl Into<String>,
        owner: impl Into<String>,
    ) -> Result<StreamingTx, StoreError> {
        StreamingTx::new(self.clone(), origin.into(), Some(owner.into()))
    }

    /// On a remote store, abort the streamed write `owner` left open on the object server, if
    /// any, and say whether there was one: an engine starting where a crashed one of the same
    /// slot left a stream holding the server's write lock frees it at once, instead of letting
    /// its commits wait out the idle timeout. Fails with [`StoreError::RemoteStream`] if that
    /// stream may have been committing (read the checkpoint afterwards in any case). An
    /// embedded store has nothing to release: a crashed process's transaction ended with it.
    pub fn release_stream(&self, owner: &str) -> Result<bool, StoreError> {
        match self.remote() {
            Some(remote) => remote.release_stream(owner),
            None => Ok(false),
        }
    }

    /// A consistent read-only view of every realm as of now.
    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        Snapshot::new(self.clone())
    }

    /// A realm as of now, if it has any commit.
    pub fn realm(&self, path: &RealmPath) -> Result<Option<RealmView>, StoreError> {
        self.snapshot()?.realm(path)
    }

    /// The latest metadata a commit stored under `key`.
    pub fn metadata(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.snapshot()?.metadata(key)
    }

    /// The realms holding an object of `class` with this key.
    pub fn locate(&self, class: &str, key: &PrimaryKey) -> Result<Vec<RealmPath>, StoreError> {
        self.snapshot()?.locate(class, key)
    }

    /// The changesets of a realm after version `after`, oldest first, at most `limit`.
    pub fn changes(
        &self,
        realm: &RealmPath,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Changeset>, StoreError> {
        self.snapshot()?.changes(realm, after, limit)
    }

    /// How many durable redb commits (fsyncs) the store made since it was opened and how many
    /// transactions they carried: concurrent commits share one (group commit).
    pub fn commit_stats(&self) -> CommitStats {
        self.inner.commits.stats()
    }

    /// Follow the changesets of every realm the subscription matches.
    pub fn subscribe(&self, subscription: Subscription) -> ChangeFeed {
        ChangeFeed::new(self.clone(), subscription)
    }

    fn class(&self, name: &str) -> Result<&Class, StoreError> {
        self.class_index(name)
            .map(|i| &self.inner.schema.classes[i])
    }

    /// The index of class `name` in the compiled schema.
    fn class_index(&self, name: &str) -> Result<usize, StoreError> {
        self.inner
            .classes
            .get(name)
            .copied()
            .ok_or_else(|| StoreError::UnknownClass {
                class: name.to_owned(),
                known: self.known_classes(),
            })
    }

    fn known_classes(&self) -> String {
        let names: Vec<_> = self
            .inner
            .schema
            .classes
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    }
}

fn open_db(file: &Path, cache_bytes: usize) -> Result<Database, StoreError> {
    Database::builder()
        .set_cache_size(cache_bytes)
        .create(file)
        .map_err(|source| match source {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked {
                path: file.to_owned(),
            },
            source => StoreError::Open {
                path: file.to_owned(),
                source,
            },
        })
}

/// Create the store file whole: redb initializes it and [`stamp_format`] stamps it under a
/// name of this process's own, then it is linked into place. A process killed while redb
/// initializes a file leaves one redb cannot open ("magic number mismatch"); this way such a
/// leftover is only ever the temporary file, which held nothing, and the next open starts again.
fn create_file(dir: &Path, file: &Path) -> Result<(), StoreError> {
    let data_dir_error = |source| StoreError::DataDir {
        path: dir.to_owned(),
        source,
    };
    let temp = dir.join(format!("{STORE_FILE}.creating.{}", std::process::id()));
    match std::fs::remove_file(&temp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(data_dir_error(e)),
    }
    {
        let db = open_db(&temp, StoreOptions::default().cache_bytes)?;
        stamp_format(&db, &temp)?;
    }
    // A link, not a rename: if another process created the file meanwhile, keep theirs.
    match std::fs::hard_link(&temp, file) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(data_dir_error(e)),
    }
    std::fs::remove_file(&temp).map_err(data_dir_error)?;
    // The new name must be as durable as the commits that will be acknowledged in the file.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(data_dir_error)
}

/// Stamp a new file with the format version (creating every table, so readers never meet a
/// missing one), convert an older format, or refuse a file from a newer pgrealm.
fn stamp_format(db: &Database, file: &Path) -> Result<(), StoreError> {
    {
        let read = db.begin_read()?;
        match read.open_table(META) {
            Ok(meta) => {
                if let Some(found) = meta.get("format_version")?.map(|v| v.value()) {
                    if found > FORMAT_VERSION {
                        return Err(StoreError::NewerFormat {
                            path: file.to_owned(),
                            found,
                            supported: FORMAT_VERSION,
                        });
                    }
                    if found == 1 {
                        drop(meta);
                        drop(read);
                        return convert_from_format_1(db);
                    }
                    return Ok(());
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let tx = db.begin_write()?;
    {
        let mut meta = tx.open_table(META)?;
        meta.insert("format_version", FORMAT_VERSION)?;
        meta.insert("next_realm_id", 1)?;
        tx.open_table(REALMS)?;
        tx.open_table(REALM_PATHS)?;
        tx.open_table(REALM_CLASSES)?;
        tx.open_table(OBJECTS)?;
        tx.open_table(LOG)?;
        tx.open_table(LOG_PARTS)?;
        tx.open_table(LOCATOR)?;
        tx.open_table(METADATA)?;
    }
    tx.commit()?;
    Ok(())
}

/// Format 1 → 2: move the multimap locator's entries into the plain locator table, in one
/// durable transaction (a crash leaves the file at format 1, converted again on the next open).
fn convert_from_format_1(db: &Database) -> Result<(), StoreError> {
    use redb::ReadableMultimapTable;
    let mut tx = db.begin_write()?;
    tx.set_durability(redb::Durability::Immediate)?;
    {
        let old = tx.open_multimap_table(LOCATOR_V1)?;
        let mut new = tx.open_table(LOCATOR)?;
        let mut row = Vec::new();
        for entry in old.iter()? {
            let (key, ids) = entry?;
            let key = key.value();
            let split = key.iter().position(|b| *b == 0).ok_or_else(|| {
                StoreError::Corrupt(CodecError {
                    what: "format-1 locator key",
                    reason: "no class separator".into(),
                })
            })?;
            let (class, object_key) = (&key[..split], &key[split + 1..]);
            for id in ids {
                locator_row_into(class, object_key, id?.value(), &mut row);
                new.insert(row.as_slice(), ())?;
            }
        }
    }
    tx.delete_multimap_table(LOCATOR_V1)?;
    {
        let mut meta = tx.open_table(META)?;
        meta.insert("format_version", FORMAT_VERSION)?;
    }
    tx.commit()?;
    Ok(())
}

/// The key of an object in [`OBJECTS`]; `object_prefix` alone is the prefix of its class.
fn object_key(realm_id: u64, class: &str, key: &PrimaryKey) -> Vec<u8> {
    let mut out = object_prefix(realm_id, class);
    codec::key_into(key, &mut out);
    out
}

fn object_prefix(realm_id: u64, class: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + class.len() + 24);
    out.extend_from_slice(&realm_id.to_be_bytes());
    out.extend_from_slice(class.as_bytes());
    out.push(0);
    out
}

/// The prefix of every [`LOCATOR`] row of an object: class ‖ 0 ‖ key length ‖ key. The length
/// makes it exact: no other object's rows start with it.
fn locator_prefix(class: &str, key: &PrimaryKey) -> Vec<u8> {
    let mut object_key = Vec::with_capacity(24);
    codec::key_into(key, &mut object_key);
    let mut out = Vec::with_capacity(class.len() + object_key.len() + 13);
    locator_prefix_into(class.as_bytes(), &object_key, &mut out);
    out
}

fn locator_prefix_into(class: &[u8], object_key: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(class);
    out.push(0);
    let len = u32::try_from(object_key.len()).expect("a primary key is shorter than 4 GiB");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(object_key);
}

/// Bounds of every [`LOCATOR`] row of `class`: from `class ‖ 0` (as [`locator_prefix_into`]
/// starts them) up to, not including, `class ‖ 1`.
fn locator_class_bounds(class: &str) -> (Vec<u8>, Vec<u8>) {
    (
        [class.as_bytes(), &[0]].concat(),
        [class.as_bytes(), &[1]].concat(),
    )
}

/// The [`LOCATOR`] row saying realm `realm_id` holds the object (`object_key` as
/// [`codec::key_into`] writes it), into a buffer the caller reuses.
fn locator_row_into(class: &[u8], object_key: &[u8], realm_id: u64, out: &mut Vec<u8>) {
    locator_prefix_into(class, object_key, out);
    out.extend_from_slice(&realm_id.to_be_bytes());
}

/// The realm id at the end of a [`LOCATOR`] row that starts with `prefix`.
fn locator_row_realm(prefix: &[u8], row: &[u8]) -> Option<u64> {
    let id = row.strip_prefix(prefix)?;
    Some(u64::from_be_bytes(id.try_into().ok()?))
}

/// Each class's definition as `realm_classes` holds it (see [`Store::class_definition`]).
fn class_json(schema: &Schema) -> Vec<String> {
    schema
        .classes
        .iter()
        .map(|c| serde_json::to_string(c).expect("a class serializes to JSON"))
        .collect()
}

#[cfg(test)]
mod tests {
    use pgrealm_schema::{IntWidth, Object, Property, PropertyType, ScalarType, Value};
    use redb::{ReadableTable, ReadableTableMetadata};

    use super::*;

    fn schema() -> Schema {
        Schema::new(vec![Class::new("Stop").property(
            Property::new("id", PropertyType::Scalar(ScalarType::String)).primary_key(),
        )])
    }

    fn stop(id: &str) -> Object {
        Object::new("Stop").with("id", Value::String(id.into()))
    }

    /// Keys that are prefixes of each other ("a", "ab") and one object held by two realms: the
    /// plain locator must keep them apart.
    #[test]
    fn locator_rows_keep_prefix_keys_apart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), schema(), StoreOptions::default()).unwrap();
        let (x, y) = (
            RealmPath::parse("/x").unwrap(),
            RealmPath::parse("/y").unwrap(),
        );
        let mut tx = store.begin_write("app");
        tx.put_object(&x, stop("a")).unwrap();
        tx.put_object(&x, stop("ab")).unwrap();
        tx.put_object(&y, stop("ab")).unwrap();
        tx.put_object(&y, stop("b")).unwrap();
        tx.commit().unwrap();
        let key = |k: &str| PrimaryKey::String(k.into());
        assert_eq!(
            store.locate("Stop", &key("a")).unwrap(),
            std::slice::from_ref(&x)
        );
        assert_eq!(
            store.locate("Stop", &key("ab")).unwrap(),
            [x.clone(), y.clone()]
        );
        assert_eq!(
            store.locate("Stop", &key("b")).unwrap(),
            std::slice::from_ref(&y)
        );
        assert!(store.locate("Stop", &key("")).unwrap().is_empty());

        let mut tx = store.begin_write("app");
        tx.delete_object(&x, "Stop", key("ab")).unwrap();
        tx.commit().unwrap();
        assert_eq!(store.locate("Stop", &key("ab")).unwrap(), [y]);
        assert_eq!(store.locate("Stop", &key("a")).unwrap(), [x]);
    }

    /// An object the caller says is new goes to the changeset, the objects and the locator
    /// without being touched, after the realm's schema changes, with NULL for what it was not
    /// given; one whose key is not past the greatest the realm held (the promise cannot be
    /// checked without a read) is put as usual: created if absent, its changes set if present.
    #[test]
    fn creates_of_new_objects_are_written_and_others_put() {
        let schema = Schema::new(vec![Class::new("Stop")
            .property(Property::new("id", PropertyType::Scalar(ScalarType::String)).primary_key())
            .property(
                Property::new("name", PropertyType::Scalar(ScalarType::String)).optional(),
            )]);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), schema, StoreOptions::default()).unwrap();
        let (x, y) = (
            RealmPath::parse("/x").unwrap(),
            RealmPath::parse("/y").unwrap(),
        );
        let key = |k: &str| PrimaryKey::String(k.into());
        let named = |id: &str, name: &str| stop(id).with("name", Value::String(name.into()));
        let ops = |realm: &RealmPath, version: u64| -> Vec<String> {
            let changes = store
                .snapshot()
                .unwrap()
                .changes(realm, version - 1, 1)
                .unwrap();
            assert_eq!(changes[0].version, version);
            changes[0]
                .instructions
                .iter()
                .map(|i| match i {
                    Instruction::AddClass { class } => format!("add {}", class.name),
                    Instruction::Create { key, values, .. } => format!(
                        "create {} {:?}",
                        key.to_string().trim_matches('"'),
                        values.get("name").expect("every property is in a create")
                    ),
                    Instruction::Set {
                        key, property, new, ..
                    } => {
                        format!(
                            "set {}.{property} {new:?}",
                            key.to_string().trim_matches('"')
                        )
                    }
                    other => format!("{other:?}"),
                })
                .collect()
        };

        let mut tx = store.begin_write("load");
        tx.create_typed_object(&x, key("b"), stop("b")).unwrap();
        tx.put_object(&x, stop("c")).unwrap();
        tx.create_typed_object(&y, key("a"), named("a", "A"))
            .unwrap();
        tx.commit().unwrap();
        assert_eq!(
            ops(&x, 1),
            ["add Stop", "create c Null", "create b Null"],
            "the put's object settles first, the created ones follow"
        );
        assert_eq!(ops(&y, 1), ["add Stop", "create a String(\"A\")"]);
        assert_eq!(
            store.locate("Stop", &key("b")).unwrap(),
            std::slice::from_ref(&x)
        );
        assert_eq!(
            store.locate("Stop", &key("a")).unwrap(),
            std::slice::from_ref(&y)
        );

        // `/x` holds b and c: a and b are not past c, so they are put; d is created.
        let mut tx = store.begin_write("load");
        tx.create_typed_object(&x, key("a"), named("a", "new"))
            .unwrap();
        tx.create_typed_object(&x, key("b"), named("b", "again"))
            .unwrap();
        tx.create_typed_object(&x, key("d"), stop("d")).unwrap();
        tx.commit().unwrap();
        assert_eq!(
            ops(&x, 2),
            [
                "create a String(\"new\")",
                "set b.name String(\"again\")",
                "create d Null"
            ]
        );
        let view = store.snapshot().unwrap().realm(&x).unwrap().unwrap();
        assert_eq!(view.count("Stop").unwrap(), 4);
        assert_eq!(
            view.object("Stop", &key("b")).unwrap().unwrap(),
            named("b", "again")
        );
        assert_eq!(
            view.object("Stop", &key("d")).unwrap().unwrap().values["name"],
            Value::Null
        );
        assert_eq!(
            store.locate("Stop", &key("a")).unwrap(),
            [x.clone(), y.clone()]
        );
        assert_eq!(store.locate("Stop", &key("d")).unwrap(), [x]);
    }

    /// Keys past the greatest a class's locator holds are answered without a walk: around
    /// them (below, between, equal, past; in another class sorting after it; in a class with
    /// none) every answer is the full one, and a snapshot answers as of its own state.
    #[test]
    fn keys_past_the_greatest_held_are_located_nowhere() {
        let schema = Schema::new(vec![
            Class::new("Line").property(
                Property::new("id", PropertyType::Scalar(ScalarType::Int(IntWidth::I64)))
                    .primary_key(),
            ),
            Class::new("LineStop").property(
                Property::new("id", PropertyType::Scalar(ScalarType::Int(IntWidth::I64)))
                    .primary_key(),
            ),
            Class::new("Stop").property(
                Property::new("id", PropertyType::Scalar(ScalarType::String)).primary_key(),
            ),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), schema, StoreOptions::default()).unwrap();
        let (x, y) = (
            RealmPath::parse("/x").unwrap(),
            RealmPath::parse("/y").unwrap(),
        );
        let line = |id: i64| Object::new("Line").with("id", Value::Int(id));
        let mut tx = store.begin_write("app");
        tx.put_object(&x, line(1)).unwrap();
        tx.put_object(&y, line(5)).unwrap();
        tx.put_object(&y, Object::new("LineStop").with("id", Value::Int(100)))
            .unwrap();
        tx.commit().unwrap();
        let before = store.snapshot().unwrap();
        let int = PrimaryKey::Int;
        for (key, held) in [
            (0, vec![]),
            (1, vec![x.clone()]),
            (3, vec![]),
            (5, vec![y.clone()]),
            (6, vec![]),
            (100, vec![]),
        ] {
            assert_eq!(
                before.locate("Line", &int(key)).unwrap(),
                held,
                "Line {key}"
            );
        }
        assert_eq!(
            before.locate("LineStop", &int(100)).unwrap(),
            std::slice::from_ref(&y)
        );
        assert!(before.locate("LineStop", &int(101)).unwrap().is_empty());
        assert!(before
            .locate("Stop", &PrimaryKey::String("a".into()))
            .unwrap()
            .is_empty());

        let mut tx = store.begin_write("app");
        tx.put_object(&x, line(9)).unwrap();
        tx.put_object(&x, stop("a")).unwrap();
        tx.commit().unwrap();
        assert!(
            before.locate("Line", &int(9)).unwrap().is_empty(),
            "as of its state"
        );
        let after = store.snapshot().unwrap();
        assert_eq!(
            after.locate("Line", &int(9)).unwrap(),
            std::slice::from_ref(&x)
        );
        assert_eq!(after.locate("Line", &int(5)).unwrap(), [y]);
        assert!(after.locate("Line", &int(10)).unwrap().is_empty());
        assert_eq!(
            after
                .locate("Stop", &PrimaryKey::String("a".into()))
                .unwrap(),
            [x]
        );
        assert!(after
            .locate("Stop", &PrimaryKey::String("b".into()))
            .unwrap()
            .is_empty());
    }

    /// A file written in format 1 (multimap locator) opens as format 2 with every location kept.
    #[test]
    fn format_1_files_are_converted() {
        let dir = tempfile::tempdir().unwrap();
        let (x, y) = (
            RealmPath::parse("/x").unwrap(),
            RealmPath::parse("/y").unwrap(),
        );
        {
            let store = Store::open(dir.path(), schema(), StoreOptions::default()).unwrap();
            let mut tx = store.begin_write("app");
            tx.put_object(&x, stop("a")).unwrap();
            tx.put_object(&x, stop("ab")).unwrap();
            tx.put_object(&y, stop("ab")).unwrap();
            tx.commit().unwrap();
        }
        // Rewrite the locator as format 1 laid it out: class ‖ 0 ‖ key → realm ids.
        {
            let db = Database::create(dir.path().join(STORE_FILE)).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let rows = tx.open_table(LOCATOR).unwrap();
                let mut old = tx.open_multimap_table(LOCATOR_V1).unwrap();
                for row in rows.iter().unwrap() {
                    let row = row.unwrap().0.value().to_vec();
                    let (prefix, id) = row.split_at(row.len() - 8);
                    let class_end = prefix.iter().position(|b| *b == 0).unwrap();
                    let mut v1 = prefix[..class_end + 1].to_vec();
                    v1.extend_from_slice(&prefix[class_end + 5..]);
                    old.insert(v1.as_slice(), u64::from_be_bytes(id.try_into().unwrap()))
                        .unwrap();
                }
            }
            tx.delete_table(LOCATOR).unwrap();
            tx.open_table(META)
                .unwrap()
                .insert("format_version", 1)
                .unwrap();
            tx.commit().unwrap();
        }
        let store = Store::open(dir.path(), schema(), StoreOptions::default()).unwrap();
        let key = |k: &str| PrimaryKey::String(k.into());
        assert_eq!(
            store.locate("Stop", &key("a")).unwrap(),
            std::slice::from_ref(&x)
        );
        assert_eq!(store.locate("Stop", &key("ab")).unwrap(), [x, y]);
        let read = store.db().begin_read().unwrap();
        let meta = read.open_table(META).unwrap();
        assert_eq!(
            meta.get("format_version").unwrap().unwrap().value(),
            FORMAT_VERSION
        );
        assert_eq!(read.open_table(LOCATOR).unwrap().len().unwrap(), 3);
        assert!(read.open_multimap_table(LOCATOR_V1).is_err());
    }

    /// A creation killed half-way leaves only the temporary file (here: garbage under this
    /// process's temporary name); the next open creates the store afresh.
    #[test]
    fn a_half_made_store_file_does_not_block_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let temp = dir
            .path()
            .join(format!("{STORE_FILE}.creating.{}", std::process::id()));
        std::fs::write(&temp, b"not a redb file").unwrap();
        let store = Store::open(dir.path(), schema(), StoreOptions::default()).unwrap();
        let realm = RealmPath::parse("/x").unwrap();
        let mut tx = store.begin_write("app");
        tx.put_object(&realm, stop("a")).unwrap();
        assert_eq!(tx.commit().unwrap().version_of(&realm), Some(1));
        assert!(!temp.exists());
        drop(store);
        let store = Store::open(dir.path(), schema(), StoreOptions::default()).unwrap();
        assert_eq!(store.realm(&realm).unwrap().unwrap().version(), 1);
    }
}
