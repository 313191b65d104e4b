//! The runtime of pgrealm: the realm object store, the object server and its client, the
//! PostgreSQL side (replication, catalog, apply), the sync engine that joins them, and the CLI.
//!
//! Modules are private by responsibility; what users and the generated binary need is
//! re-exported here.
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

pub mod auth;
pub mod config;
pub mod json;
pub mod replication;
pub mod template;
pub mod testing;
