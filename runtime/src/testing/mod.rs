//! A private PostgreSQL for tests and for the `demo` command.
//!
//! This module owns starting, stopping and removing throwaway clusters. It never touches a
//! PostgreSQL it did not create, binds 127.0.0.1 only, and leaves nothing behind: the server
//! and its directory go away when the [`PgCluster`] drops or when the process ends in any way.
//!
//! Tests share one cluster per test binary and take a fresh database each:
//!
//! ```no_run
//! # async fn demo() -> Result<(), pgrealm_runtime::testing::HarnessError> {
//! let db = pgrealm_runtime::testing::PgCluster::shared().fresh_database()?;
//! let client = db.connect().await?;
//! # Ok(()) }
//! ```

mod binaries;
mod cluster;
mod crash;
mod error;
mod user;

pub use cluster::{connect, PasswordAuth, PgCluster, TestDb, SUPERUSER};
pub use crash::{status_kib, xorshift, CrashPlan, Worker};
pub use error::HarnessError;

#[cfg(test)]
mod tests;
