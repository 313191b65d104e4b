//! The store's error type. Every message says what went wrong and what to do next.

use std::path::PathBuf;

use pgrealm_schema::ValueError;

use super::codec::CodecError;
use super::path::{PathError, RealmPath};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A string that is not a realm path.
    #[error(transparent)]
    Path(#[from] PathError),
    /// Another process holds the store file.
    #[error(
        "the realm store {path} is open in another process (is another pgrealm running with the \
         same data_dir?); stop it, or give this one its own data_dir"
    )]
    Locked {
        /// The store file.
        path: PathBuf,
    },
    /// The file was written by a newer pgrealm.
    #[error(
        "the realm store {path} has format version {found}, but this pgrealm reads format \
         {supported} at most; run a pgrealm at least as new as the one that wrote it"
    )]
    NewerFormat {
        /// The store file.
        path: PathBuf,
        /// The version stamped in the file.
        found: u64,
        /// The newest version this build reads.
        supported: u64,
    },
    /// The data directory, or the store file in it, cannot be created.
    #[error(
        "cannot create the data directory {path} or the realm store in it: {source}; check that \
         the directory is writable"
    )]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// redb refused to open the file.
    #[error("cannot open the realm store {path}: {source}")]
    Open {
        /// The store file.
        path: PathBuf,
        /// What redb said.
        source: redb::DatabaseError,
    },
    /// A read or write of the store file failed.
    #[error("realm store I/O failed: {0}; check the disk and the data directory's permissions")]
    Storage(#[from] redb::Error),
    /// The group commit this transaction was part of failed (see [`StoreError::Storage`]).
    #[error(
        "realm store commit failed for this transaction and the others committed with it: {0}; \
         check the disk and the data directory's permissions, then retry"
    )]
    GroupCommit(String),
    /// The store's write-ahead log (`realms.wal` beside the store file) could not be read,
    /// written or replayed; the message says what to do.
    #[error("realm store write-ahead log {path}: {message}")]
    Wal {
        /// The log file.
        path: PathBuf,
        /// What happened and what to do next.
        message: String,
    },
    /// A class the compiled schema does not have.
    #[error("the schema has no class `{class}` (classes: {known}); add it to the schema! block")]
    UnknownClass {
        /// The class asked for.
        class: String,
        /// The classes the schema has.
        known: String,
    },
    /// A table the compiled schema does not map.
    #[error("no class of the schema maps to table `{table}` (tables: {known})")]
    UnknownTable {
        /// The table asked for.
        table: String,
        /// The tables the schema maps.
        known: String,
    },
    /// A value that does not fit its property.
    #[error("realm {realm}: {class} {key}: {source}")]
    Value {
        /// The realm.
        realm: RealmPath,
        /// The class.
        class: String,
        /// The object's key, as far as it is known.
        key: String,
        /// What is wrong with the value (boxed: it is large and rare).
        source: Box<ValueError>,
    },
    /// A changeset that log retention has already dropped.
    #[error(
        "realm {realm} keeps changesets from version {oldest} on (log retention) and version \
         {asked} is gone; resynchronize the realm from a snapshot and resume from its current \
         version"
    )]
    Pruned {
        /// The realm.
        realm: RealmPath,
        /// The first version asked for.
        asked: u64,
        /// The oldest version kept.
        oldest: u64,
    },
    /// A record that does not decode.
    #[error("{0}; the store file is damaged: restore it from a backup or resync from PostgreSQL")]
    Corrupt(#[from] CodecError),
    /// A blocking store task of the change feed panicked or was cancelled.
    #[error("a change feed read was cancelled: {0}")]
    FeedTask(String),
    /// The remote object server (remote mode) could not be reached, refused, or answered
    /// something unexpected; the message says which and what to do.
    #[error("object server {url}: {message}")]
    Remote {
        /// The server's base URL.
        url: String,
        /// What happened and what to do next.
        message: String,
    },
    /// The remote object server (remote mode) could not be reached, or the connection broke
    /// before it answered: worth retrying once the server is back. A commit that failed this
    /// way may or may not have landed; whoever retries re-reads what the server holds first.
    #[error("object server {url}: {message}")]
    RemoteUnreachable {
        /// The server's base URL.
        url: String,
        /// What happened and what to do next.
        message: String,
    },
    /// The remote object server (remote mode) cannot take this streamed write: another stream
    /// holds its write lock, or it no longer holds this one (aborted after its idle timeout, or
    /// the server restarted). Nothing of the stream was committed; worth retrying from the
    /// checkpoint the server holds.
    #[error("object server {url}: {message}")]
    RemoteStream {
        /// The server's base URL.
        url: String,
        /// What happened and what to do next.
        message: String,
    },
    /// A commit expected a metadata value that another commit changed first
    /// ([`WriteTx::expect_metadata`](super::WriteTx::expect_metadata)); nothing of it was
    /// written.
    #[error(
        "{detail}: another writer committed first, and nothing of this commit was written; read \
         it again and start over from what it holds"
    )]
    MetadataChanged {
        /// Which key held what, against what the commit expected.
        detail: String,
    },
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Storage(e.into())
            }
        }
    )*};
}

from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);
