//! The errors of PostgreSQL → realm, each saying what to do next.

use crate::replication::{Lsn, ReplicationError};
use crate::store::StoreError;

/// Why PostgreSQL → realm stopped (bad rows never stop it: they become rejections).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgToRealmError {
    /// Connecting, the slot, the publication, preflight or the stream failed.
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    /// The realm store failed; nothing was confirmed past its last durable commit.
    #[error("the realm store failed: {0}; nothing past the last durable commit was confirmed, restart to resume there")]
    Store(#[from] StoreError),
    /// The configuration cannot be used (path template, custom types).
    #[error("invalid PostgreSQL → realm configuration: {0}")]
    Config(String),
    /// An SQL statement of the setup or the initial load failed.
    #[error("{context}: {source}")]
    Sql {
        /// What was being done.
        context: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The initial copy met a line it could not read.
    #[error(
        "initial load of {table}: {message}; the load is repeated from the start at the next run"
    )]
    Copy {
        /// The table.
        table: String,
        /// What was wrong.
        message: String,
    },
    /// The stored checkpoint is not an LSN.
    #[error("store metadata {key:?} does not hold an LSN; run with reset_postgres_replication_slot to start over")]
    BadCheckpoint {
        /// The metadata key.
        key: String,
    },
    /// The applier task panicked or was cancelled.
    #[error("the apply task ended abnormally: {0}")]
    Task(String),
    /// The slot was not set up (or its initial load never finished) before `run`.
    #[error("replication slot {slot:?} has no checkpoint in the store (last position {lsn}); call setup() first")]
    NotSetUp {
        /// The slot.
        slot: String,
        /// What the store holds.
        lsn: Lsn,
    },
}

impl PgToRealmError {
    pub(crate) fn sql(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Self {
        let context = context.into();
        move |source| PgToRealmError::Sql { context, source }
    }
}
