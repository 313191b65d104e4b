//! The runtime of pgrealm: the realm object store, the object server and its client, the
//! PostgreSQL side (replication, catalog, apply), the sync engine that joins them, and the CLI.
//!
//! Modules are private by responsibility; what users and the generated binary need is
//! re-exported here.
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

pub mod auth;
pub mod cli;
pub mod client;
pub mod config;
pub mod json;
pub mod metrics;
pub mod pg;
pub mod replication;
pub mod server;
mod store;
pub mod sync;
pub mod template;
pub mod testing;

pub use store::{
    apply, ChangeFeed, Changeset, CodecError, CommitInfo, CommitStats, Instruction, PathError,
    RealmInfo, RealmObjects, RealmPath, RealmView, RealmWriter, Snapshot, Store, StoreError,
    StoreOptions, StreamingTx, Subscription, WriteTx, FORMAT_VERSION, MAX_PATH_LEN,
    MAX_SEGMENT_LEN, STORE_FILE, WAL_FILE,
};
