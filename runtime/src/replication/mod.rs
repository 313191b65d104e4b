//! The PostgreSQL → realm replication side, up to (not including) the apply into the store:
//! connection settings, the publication and the logical slot, preflight checks, our pgoutput
//! decoder, and the change stream that yields whole transactions and confirms positions.
//!
//! It must never write to the store or interpret column values: changes leave here as text (see
//! [`pgoutput::ColumnValue`]) with their table's shape, and the sync engine applies them and
//! calls [`ChangeStream::confirm`] once the apply is durable.

mod assembler;
mod connect;
mod error;
pub mod pgoutput;
pub mod preflight;
mod relations;
mod slot;
mod stream;
mod tls;

pub use connect::{PgConnectOptions, SslMode};
pub use error::ReplicationError;
pub use pgoutput::{
    ColumnValue, DecodeError, LogicalMessage, OldTuple, Origin, PgTimestamp, Relation,
    RelationColumn, ReplicaIdentity, TupleData,
};
pub use preflight::{preflight, PreflightProblem};
pub use relations::RelationCache;
pub use slot::{
    check_slot_name, drop_slot, ensure_publication, ensure_slot, import_snapshot, reset_slot,
    slot_info, PublicationAction, QualifiedTable, SlotInfo, SnapshotSlot,
};
pub use stream::{
    Change, ChangeStream, StreamEvent, StreamOptions, TransactionBegin, TransactionCommit,
};

/// A WAL position (log sequence number), displayed as PostgreSQL does (`16/B374D848`).
pub use pgwire_replication::Lsn;
