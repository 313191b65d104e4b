//! The realm → PostgreSQL writer's bookkeeping in PostgreSQL (schema `pgrealm`: the progress
//! table and the marker table) and how its transactions are made recognisable in the WAL, so
//! PostgreSQL → realm can count them as echoes.
//!
//! A replication origin named `pgrealm` is used when the role may (superuser, or granted
//! `pg_replication_origin_session_setup`): it costs nothing per transaction. Otherwise every
//! transaction inserts a row into `pgrealm.marker`, which the publication includes; old marker
//! rows are deleted now and then, inside a marked transaction too. This module never writes
//! user tables.

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use super::RealmToPgError;

/// The replication origin the writer's transactions carry when the role may use one.
pub const ORIGIN_NAME: &str = "pgrealm";

/// What the bookkeeping needs; each statement is harmless when the object exists.
pub const BOOKKEEPING_DDL: &str = "\
CREATE SCHEMA IF NOT EXISTS pgrealm;
CREATE TABLE IF NOT EXISTS pgrealm.progress (
    realm_path text PRIMARY KEY,
    version bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS pgrealm.marker (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now()
);";

/// How often (in marked transactions) old marker rows are deleted.
const MARKER_CLEANUP_EVERY: u64 = 1024;

/// How the writer's transactions are recognised in the WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EchoMark {
    /// The session carries replication origin `pgrealm`: each commit has an Origin message.
    Origin,
    /// Each transaction inserts a row into `pgrealm.marker`.
    Marker,
}

/// Create schema `pgrealm` with its progress and marker tables unless they exist. Only reads
/// the catalog when they do, so a role without CREATE privileges can run once an administrator
/// has created them (with [`BOOKKEEPING_DDL`]).
pub async fn ensure_bookkeeping(client: &Client) -> Result<(), RealmToPgError> {
    let row = client
        .query_one(
            "SELECT to_regclass('pgrealm.progress') IS NOT NULL \
                AND to_regclass('pgrealm.marker') IS NOT NULL",
            &[],
        )
        .await
        .map_err(|e| RealmToPgError::sql("looking for pgrealm's bookkeeping tables", e))?;
    if row.get::<_, bool>(0) {
        return Ok(());
    }
    client.batch_execute(BOOKKEEPING_DDL).await.map_err(|e| {
        RealmToPgError::sql(
            format!(
                "creating pgrealm's bookkeeping tables (if the role may not create them, have \
                 an administrator run:\n{BOOKKEEPING_DDL}\nand grant the role SELECT, INSERT, \
                 UPDATE, DELETE on them and USAGE on schema pgrealm and its sequence)"
            ),
            e,
        )
    })
}

/// Set up the session's echo mark: the replication origin when the role may use it (creating
/// the origin if missing), the marker table otherwise.
pub(crate) async fn set_up_echo_mark(client: &Client) -> EchoMark {
    let may = client
        .query_one(
            "SELECT has_function_privilege(\
                'pg_catalog.pg_replication_origin_session_setup(text)', 'EXECUTE')",
            &[],
        )
        .await
        .map(|row| row.get::<_, bool>(0))
        .unwrap_or(false);
    if !may {
        return EchoMark::Marker;
    }
    let setup = "SELECT pg_catalog.pg_replication_origin_session_setup('pgrealm')";
    match client.batch_execute(setup).await {
        Ok(()) => return EchoMark::Origin,
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_OBJECT) => {}
        Err(e) => {
            tracing::info!(
                "replication origin `{ORIGIN_NAME}` cannot be used ({}); marking transactions \
                 with rows in pgrealm.marker instead",
                crate::pg::describe(&e)
            );
            return EchoMark::Marker;
        }
    }
    // Missing: create it (another process may be doing the same; then it exists).
    if let Err(e) = client
        .batch_execute("SELECT pg_catalog.pg_replication_origin_create('pgrealm')")
        .await
    {
        if e.code() != Some(&SqlState::UNIQUE_VIOLATION) {
            tracing::info!(
                "replication origin `{ORIGIN_NAME}` cannot be created ({}); marking \
                 transactions with rows in pgrealm.marker instead",
                crate::pg::describe(&e)
            );
            return EchoMark::Marker;
        }
    }
    match client.batch_execute(setup).await {
        Ok(()) => EchoMark::Origin,
        Err(_) => EchoMark::Marker,
    }
}

/// Marks the transaction in progress, when the marker table is the mark.
#[derive(Debug)]
pub(crate) struct Marker {
    mark: EchoMark,
    marked: u64,
}

impl Marker {
    pub(crate) fn new(mark: EchoMark) -> Self {
        Marker { mark, marked: 0 }
    }

    pub(crate) fn mark(&self) -> EchoMark {
        self.mark
    }

    /// The statements that mark the open transaction (none under a replication origin), every
    /// `MARKER_CLEANUP_EVERY`th time with the older marks' removal.
    pub(crate) fn statements(&mut self) -> &'static [&'static str] {
        const MARK: &str = "INSERT INTO pgrealm.marker DEFAULT VALUES";
        const CLEAN: &str =
            "DELETE FROM pgrealm.marker WHERE id < currval('pgrealm.marker_id_seq')";
        if self.mark == EchoMark::Origin {
            return &[];
        }
        self.marked += 1;
        if self.marked.is_multiple_of(MARKER_CLEANUP_EVERY) {
            &[MARK, CLEAN]
        } else {
            &[MARK]
        }
    }
}
