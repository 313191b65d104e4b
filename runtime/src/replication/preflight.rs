//! Preflight: everything the server must offer before pgrealm can replicate, checked at once and
//! reported together, each problem with its fix.
//!
//! Only reads the catalog; never changes the server. The comparison of the catalog with the
//! compiled schema belongs to `pgrealm_schema::catalog` and is run by the engine next to this.

use std::fmt;

use tokio_postgres::Client;

use super::error::ReplicationError;
use super::slot::{quote_ident, QualifiedTable};

/// One thing the server lacks, with its fix in the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreflightProblem {
    /// `wal_level` is not `logical`.
    WalLevel {
        /// The current setting.
        current: String,
    },
    /// The role may not replicate.
    NoReplicationRole {
        /// The role.
        role: String,
    },
    /// The slot does not exist yet and every slot is taken.
    NoFreeSlot {
        /// `max_replication_slots`.
        max: i64,
        /// Slots in use.
        used: i64,
    },
    /// No walsender can be started (`max_wal_senders` reached).
    NoFreeWalSender {
        /// `max_wal_senders`.
        max: i64,
        /// Walsenders running.
        used: i64,
    },
    /// A mapped table does not exist.
    TableMissing {
        /// The table.
        table: QualifiedTable,
    },
    /// A mapped table has no primary key (objects are keyed by it, and updates and deletes are
    /// streamed with it).
    NoPrimaryKey {
        /// The table.
        table: QualifiedTable,
    },
}

impl fmt::Display for PreflightProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PreflightProblem::WalLevel { current } => write!(
                f,
                "wal_level is '{current}', logical replication needs 'logical': set \
                 `wal_level = logical` in postgresql.conf (or ALTER SYSTEM SET wal_level = logical; \
                 on RDS set rds.logical_replication = 1 in the parameter group) and restart PostgreSQL"
            ),
            PreflightProblem::NoReplicationRole { role } => write!(
                f,
                "role {role:?} may not replicate: as a superuser run `ALTER ROLE {} REPLICATION;` \
                 (on RDS: `GRANT rds_replication TO {};`)",
                quote_ident(role),
                quote_ident(role)
            ),
            PreflightProblem::NoFreeSlot { max, used } => write!(
                f,
                "all {max} replication slots are in use ({used}); raise max_replication_slots in \
                 postgresql.conf and restart, or drop an unused slot with \
                 SELECT pg_drop_replication_slot('name')"
            ),
            PreflightProblem::NoFreeWalSender { max, used } => write!(
                f,
                "all {max} WAL senders are busy ({used}); raise max_wal_senders in \
                 postgresql.conf and restart"
            ),
            PreflightProblem::TableMissing { table } => write!(
                f,
                "table {table} does not exist: create it (pgrealm's create_postgres_db does) or \
                 fix the table name in the schema"
            ),
            PreflightProblem::NoPrimaryKey { table } => write!(
                f,
                "table {table} has no primary key: add one with \
                 ALTER TABLE {} ADD PRIMARY KEY (…)",
                table.quoted()
            ),
        }
    }
}

/// Check the server for logical replication on `slot` over `tables`; every problem found.
pub async fn check(
    client: &Client,
    slot: &str,
    tables: &[QualifiedTable],
) -> Result<Vec<PreflightProblem>, ReplicationError> {
    let mut problems = Vec::new();

    let row = client
        .query_one(
            "SELECT current_setting('wal_level'), current_user::text, \
                    (SELECT rolreplication OR rolsuper FROM pg_catalog.pg_roles \
                     WHERE rolname = current_user), \
                    current_setting('max_replication_slots')::bigint, \
                    (SELECT count(*) FROM pg_catalog.pg_replication_slots), \
                    EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = $1), \
                    current_setting('max_wal_senders')::bigint, \
                    (SELECT count(*) FROM pg_catalog.pg_stat_replication)",
            &[&slot],
        )
        .await
        .map_err(ReplicationError::sql(
            "reading the server's replication settings",
        ))?;
    let wal_level: String = row.get(0);
    if wal_level != "logical" {
        problems.push(PreflightProblem::WalLevel { current: wal_level });
    }
    if !row.get::<_, Option<bool>>(2).unwrap_or(false) {
        problems.push(PreflightProblem::NoReplicationRole { role: row.get(1) });
    }
    let (max_slots, used_slots, slot_exists): (i64, i64, bool) =
        (row.get(3), row.get(4), row.get(5));
    if !slot_exists && used_slots >= max_slots {
        problems.push(PreflightProblem::NoFreeSlot {
            max: max_slots,
            used: used_slots,
        });
    }
    let (max_senders, used_senders): (i64, i64) = (row.get(6), row.get(7));
    if used_senders >= max_senders {
        problems.push(PreflightProblem::NoFreeWalSender {
            max: max_senders,
            used: used_senders,
        });
    }

    for table in tables {
        let row = client
            .query_opt(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_index i \
                                WHERE i.indrelid = c.oid AND i.indisprimary) \
                 FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
                &[&table.schema, &table.name],
            )
            .await
            .map_err(ReplicationError::sql(format!("looking up table {table}")))?;
        match row {
            None => problems.push(PreflightProblem::TableMissing {
                table: table.clone(),
            }),
            Some(row) if !row.get::<_, bool>(0) => problems.push(PreflightProblem::NoPrimaryKey {
                table: table.clone(),
            }),
            Some(_) => {}
        }
    }
    Ok(problems)
}

/// [`check`], as an error listing every problem when there is any.
pub async fn preflight(
    client: &Client,
    slot: &str,
    tables: &[QualifiedTable],
) -> Result<(), ReplicationError> {
    let problems = check(client, slot, tables).await?;
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ReplicationError::Preflight(problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_says_its_fix() {
        let table = QualifiedTable::public("bus");
        let cases = [
            (
                PreflightProblem::WalLevel {
                    current: "replica".into(),
                },
                "`wal_level = logical` in postgresql.conf",
            ),
            (
                PreflightProblem::NoReplicationRole { role: "app".into() },
                "ALTER ROLE \"app\" REPLICATION",
            ),
            (
                PreflightProblem::NoFreeSlot { max: 2, used: 2 },
                "max_replication_slots",
            ),
            (
                PreflightProblem::NoFreeWalSender { max: 1, used: 1 },
                "max_wal_senders",
            ),
            (
                PreflightProblem::TableMissing {
                    table: table.clone(),
                },
                "public.bus does not exist",
            ),
            (
                PreflightProblem::NoPrimaryKey { table },
                "ALTER TABLE \"public\".\"bus\" ADD PRIMARY KEY",
            ),
        ];
        for (problem, fix) in cases {
            assert!(problem.to_string().contains(fix), "{problem}");
        }
        let err = ReplicationError::Preflight(vec![PreflightProblem::WalLevel {
            current: "minimal".into(),
        }]);
        let text = err.to_string();
        assert!(text.contains("restart"), "{text}");
        assert!(text.contains("  - wal_level is 'minimal'"), "{text}");
    }
}
