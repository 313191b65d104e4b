//! The sync engine: PostgreSQL → realm (logical replication applied as store commits) and
//! realm → PostgreSQL (the store's change feed written as SQL transactions), joined in one
//! process.
//!
//! Each direction lives in its own module and owns its own bookkeeping; this module only joins
//! them. Neither direction ever decides a conflict on its own: PostgreSQL's commit order does
//! (DESIGN.md, "Conflicts").

pub mod engine;
pub mod pg_to_realm;
pub mod realm_to_pg;
pub mod rejections;
