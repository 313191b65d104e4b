//! The publication and the logical slot: created when absent, kept to exactly the mapped
//! tables, reset on request, and created with an exported snapshot for a consistent initial copy.
//!
//! Uses an ordinary SQL connection (tokio-postgres) for everything except the exported
//! snapshot, which only the replication protocol's CREATE_REPLICATION_SLOT gives; that runs on a
//! gated pgwire-replication session which then becomes the stream. Identifiers are quoted and
//! values bound; the slot name is additionally restricted to what PostgreSQL allows
//! (`[a-z0-9_]`), because the replication commands take it unquoted.

use std::collections::BTreeSet;
use std::fmt;

use pgwire_replication::ReplicationClient;
use tokio_postgres::Client;

use super::connect::PgConnectOptions;
use super::error::ReplicationError;
use super::stream::{replication_config, ChangeStream, StreamOptions};
use super::Lsn;

/// A table by schema and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QualifiedTable {
    /// Schema (`public` unless given).
    pub schema: String,
    /// Table name.
    pub name: String,
}

impl QualifiedTable {
    /// `schema.name`.
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        QualifiedTable {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// A table in `public`.
    pub fn public(name: impl Into<String>) -> Self {
        Self::new("public", name)
    }

    /// The quoted SQL form, `"schema"."name"`.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

impl fmt::Display for QualifiedTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// What [`ensure_publication`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublicationAction {
    /// It did not exist and was created.
    Created,
    /// It existed with other tables or operations and was changed.
    Altered,
    /// It was already right.
    Unchanged,
}

/// Quote an SQL identifier.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Check a slot name the way PostgreSQL does (`ReplicationSlotValidateName`).
pub fn check_slot_name(name: &str) -> Result<(), ReplicationError> {
    let invalid = |reason| ReplicationError::InvalidName {
        kind: "replication slot",
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("it is empty"));
    }
    if name.len() > 63 {
        return Err(invalid("it is longer than 63 bytes"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(invalid(
            "slot names may contain only lower-case letters, digits and underscores",
        ));
    }
    Ok(())
}

fn check_publication_name(name: &str) -> Result<(), ReplicationError> {
    // START_REPLICATION's publication_names is a comma-separated list (see pgwire-replication's
    // Publication), so these characters cannot be represented.
    // The server also folds the names in that list to lower case, so an upper-case name would
    // name another publication there than in CREATE PUBLICATION.
    if name.is_empty()
        || name.len() > 63
        || name.contains([',', ' ', '\'', '"', '\0'])
        || name.chars().any(char::is_uppercase)
    {
        return Err(ReplicationError::InvalidName {
            kind: "publication",
            name: name.to_owned(),
            reason: "use 1 to 63 bytes, lower case, without commas, quotes or spaces",
        });
    }
    Ok(())
}

/// Create `publication` FOR exactly `tables` (all of insert, update, delete, truncate) if it is
/// absent, or change it to exactly those tables and operations if it differs.
pub async fn ensure_publication(
    client: &Client,
    publication: &str,
    tables: &[QualifiedTable],
) -> Result<PublicationAction, ReplicationError> {
    check_publication_name(publication)?;
    if tables.is_empty() {
        return Err(ReplicationError::InvalidName {
            kind: "publication",
            name: publication.to_owned(),
            reason: "it would cover no table; map at least one",
        });
    }
    let wanted: BTreeSet<&QualifiedTable> = tables.iter().collect();
    let table_list = wanted
        .iter()
        .map(|t| t.quoted())
        .collect::<Vec<_>>()
        .join(", ");
    let context = format!("checking publication {publication:?}");
    let existing = client
        .query_opt(
            "SELECT puballtables, pubinsert AND pubupdate AND pubdelete AND pubtruncate \
             FROM pg_catalog.pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(ReplicationError::sql(context.clone()))?;
    let Some(row) = existing else {
        let sql = format!(
            "CREATE PUBLICATION {} FOR TABLE {table_list} \
             WITH (publish = 'insert, update, delete, truncate')",
            quote_ident(publication)
        );
        client
            .batch_execute(&sql)
            .await
            .map_err(ReplicationError::sql(format!(
                "creating publication {publication:?} (the role must own the tables)"
            )))?;
        return Ok(PublicationAction::Created);
    };
    let (all_tables, all_operations): (bool, bool) = (row.get(0), row.get(1));
    if all_tables {
        return Err(ReplicationError::Unusable {
            kind: "publication",
            name: publication.to_owned(),
            reason: "it is FOR ALL TABLES, which pgrealm cannot narrow; \
                     drop it or configure another publication name",
        });
    }
    let current = client
        .query(
            "SELECT schemaname, tablename FROM pg_catalog.pg_publication_tables WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(ReplicationError::sql(context))?;
    let current: BTreeSet<QualifiedTable> = current
        .iter()
        .map(|row| QualifiedTable::new(row.get::<_, String>(0), row.get::<_, String>(1)))
        .collect();
    let same_tables = current.iter().eq(wanted.iter().copied());
    if same_tables && all_operations {
        return Ok(PublicationAction::Unchanged);
    }
    let sql = format!(
        "ALTER PUBLICATION {name} SET TABLE {table_list}; \
         ALTER PUBLICATION {name} SET (publish = 'insert, update, delete, truncate')",
        name = quote_ident(publication)
    );
    client
        .batch_execute(&sql)
        .await
        .map_err(ReplicationError::sql(format!(
            "changing publication {publication:?} to the mapped tables (the role must own it)"
        )))?;
    Ok(PublicationAction::Altered)
}

/// Where a slot stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    /// The slot's output plugin.
    pub plugin: String,
    /// The slot's database.
    pub database: String,
    /// The position the server resumes from.
    pub confirmed_flush_lsn: Option<Lsn>,
    /// A session is streaming from it right now.
    pub active: bool,
}

/// The slot named `slot`, if it exists.
pub async fn slot_info(client: &Client, slot: &str) -> Result<Option<SlotInfo>, ReplicationError> {
    let row = client
        .query_opt(
            "SELECT plugin, database, confirmed_flush_lsn::text, active \
             FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(ReplicationError::sql(format!(
            "reading replication slot {slot:?}"
        )))?;
    Ok(row.map(|row| SlotInfo {
        plugin: row.get::<_, Option<String>>(0).unwrap_or_default(),
        database: row.get::<_, Option<String>>(1).unwrap_or_default(),
        confirmed_flush_lsn: row
            .get::<_, Option<String>>(2)
            .and_then(|text| Lsn::parse(&text).ok()),
        active: row.get(3),
    }))
}

/// Create the logical slot (pgoutput) if it is absent; `true` when it was created. A slot of
/// that name with another plugin or in another database is an error, not silently reused.
pub async fn ensure_slot(client: &Client, slot: &str) -> Result<bool, ReplicationError> {
    check_slot_name(slot)?;
    if let Some(info) = slot_info(client, slot).await? {
        let database: String = client
            .query_one("SELECT current_database()", &[])
            .await
            .map_err(ReplicationError::sql("reading the database name"))?
            .get(0);
        if info.plugin != "pgoutput" || info.database != database {
            return Err(ReplicationError::Unusable {
                kind: "replication slot",
                name: slot.to_owned(),
                reason: "a slot of this name exists for another plugin or database; \
                         configure another slot name or drop that slot",
            });
        }
        return Ok(false);
    }
    client
        .execute(
            "SELECT pg_catalog.pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .map_err(ReplicationError::sql(format!(
            "creating replication slot {slot:?} (needs the REPLICATION attribute and a free slot)"
        )))?;
    Ok(true)
}

/// Drop the slot if it exists; `true` when it did.
pub async fn drop_slot(client: &Client, slot: &str) -> Result<bool, ReplicationError> {
    check_slot_name(slot)?;
    let Some(info) = slot_info(client, slot).await? else {
        return Ok(false);
    };
    if info.active {
        return Err(ReplicationError::Unusable {
            kind: "replication slot",
            name: slot.to_owned(),
            reason: "a session is streaming from it; stop the other pgrealm engine first",
        });
    }
    client
        .execute("SELECT pg_catalog.pg_drop_replication_slot($1)", &[&slot])
        .await
        .map_err(ReplicationError::sql(format!(
            "dropping replication slot {slot:?}"
        )))?;
    Ok(true)
}

/// `reset_postgres_replication_slot`: drop the slot and create it afresh at the current WAL
/// position (changes made before it are not streamed).
pub async fn reset_slot(client: &Client, slot: &str) -> Result<(), ReplicationError> {
    drop_slot(client, slot).await?;
    ensure_slot(client, slot).await?;
    Ok(())
}

/// A slot just created with an exported snapshot: copy the tables inside the snapshot (with
/// [`import_snapshot`] on any number of SQL connections), then [`start`](Self::start) streaming
/// from the slot's consistent point. Rows committed before that point are in the snapshot,
/// rows committed after it come through the stream: none missed, none twice.
///
/// The snapshot lives only until the replication session runs its next command, so `start`
/// must wait until every copy is done.
pub struct SnapshotSlot {
    client: ReplicationClient,
    slot: String,
    consistent_point: Lsn,
    snapshot_name: String,
}

impl fmt::Debug for SnapshotSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotSlot")
            .field("slot", &self.slot)
            .field("consistent_point", &self.consistent_point)
            .field("snapshot_name", &self.snapshot_name)
            .finish_non_exhaustive()
    }
}

impl SnapshotSlot {
    /// Create `options.slot` (it must not exist: [`drop_slot`] first to start over) with an
    /// exported snapshot, on a replication session that will then stream from it.
    pub async fn create(
        pg: &PgConnectOptions,
        options: &StreamOptions,
    ) -> Result<Self, ReplicationError> {
        check_slot_name(&options.slot)?;
        let config = replication_config(pg, options).with_start_lsn(Lsn::ZERO);
        let mut client =
            ReplicationClient::connect_gated(config)
                .await
                .map_err(ReplicationError::stream(format!(
                    "cannot open a replication connection to {}",
                    pg.target()
                )))?;
        let rows = client
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT 'export')",
                options.slot
            ))
            .await
            .map_err(ReplicationError::stream(format!(
                "creating replication slot {:?} with an exported snapshot \
                 (it must not exist yet; the role needs REPLICATION)",
                options.slot
            )))?;
        let column = |i: usize| -> Option<String> {
            rows.first()
                .and_then(|row| row.get(i).cloned().flatten())
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        };
        let bad_answer = |what: &str| ReplicationError::Protocol {
            lsn: Lsn::ZERO,
            message: format!("CREATE_REPLICATION_SLOT answered without a valid {what}"),
        };
        let consistent_point = column(1)
            .and_then(|text| Lsn::parse(&text).ok())
            .ok_or_else(|| bad_answer("consistent point"))?;
        let snapshot_name = column(2).ok_or_else(|| bad_answer("snapshot name"))?;
        check_snapshot_name(&snapshot_name)?;
        Ok(SnapshotSlot {
            client,
            slot: options.slot.clone(),
            consistent_point,
            snapshot_name,
        })
    }

    /// The slot's name.
    pub fn slot(&self) -> &str {
        &self.slot
    }

    /// Where the stream starts: the snapshot holds every transaction committed before it.
    pub fn consistent_point(&self) -> Lsn {
        self.consistent_point
    }

    /// The exported snapshot's name, for `SET TRANSACTION SNAPSHOT`.
    pub fn snapshot_name(&self) -> &str {
        &self.snapshot_name
    }

    /// End the snapshot and start streaming from the consistent point.
    pub async fn start(self) -> Result<ChangeStream, ReplicationError> {
        self.client.update_applied_lsn(self.consistent_point);
        ChangeStream::start(self.client, self.consistent_point, self.consistent_point).await
    }
}

fn check_snapshot_name(name: &str) -> Result<(), ReplicationError> {
    // Snapshot names are hex words joined by dashes (e.g. 00000003-0000001B-1); anything else
    // is refused so the name can be written as a literal safely.
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return Err(ReplicationError::Protocol {
            lsn: Lsn::ZERO,
            message: format!("unexpected snapshot name {name:?}"),
        });
    }
    Ok(())
}

/// Start a read-only REPEATABLE READ transaction on `client` that sees exactly the exported
/// snapshot `snapshot_name`; copy inside it, then COMMIT. Must be called while the
/// [`SnapshotSlot`] has not started.
pub async fn import_snapshot(client: &Client, snapshot_name: &str) -> Result<(), ReplicationError> {
    check_snapshot_name(snapshot_name)?;
    // SET TRANSACTION SNAPSHOT takes no bind parameters; the name was checked above.
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; \
             SET TRANSACTION SNAPSHOT '{snapshot_name}'"
        ))
        .await
        .map_err(ReplicationError::sql(format!(
            "importing snapshot {snapshot_name} (it ends when the slot starts streaming)"
        )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_follow_postgres_rules() {
        assert!(check_slot_name("pgrealm_1").is_ok());
        for bad in ["", "Upper", "with space", "semi;colon", &"x".repeat(64)] {
            let err = check_slot_name(bad).unwrap_err().to_string();
            assert!(err.contains("replication slot"), "{err}");
        }
        assert!(check_publication_name("pgrealm-pub").is_ok());
        assert!(check_publication_name("a,b").is_err());
        assert!(check_publication_name("PgRealm").is_err());
        assert!(check_snapshot_name("00000003-0000001B-1").is_ok());
        assert!(check_snapshot_name("x'; DROP").is_err());
    }

    #[test]
    fn tables_quote_their_names() {
        let table = QualifiedTable::new("my schema", "we\"ird");
        assert_eq!(table.quoted(), "\"my schema\".\"we\"\"ird\"");
        assert_eq!(QualifiedTable::public("bus").to_string(), "public.bus");
    }
}
