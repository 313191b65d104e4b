//! Setup steps of realm → PostgreSQL: `create_postgres_db` (the database, its tables, the realms'
//! existing data) and `apply_realm_schema_changes_to_postgres` (new classes and properties as new
//! tables and columns; never a drop or a rewrite).
//!
//! Both compare the compiled schema with the live catalog (`pgrealm_schema::catalog`) and only
//! ever add, so running them again changes nothing.

use pgrealm_schema::catalog::{check_catalog, CatalogProblem};
use pgrealm_schema::ddl::{quote_ident, render_tables};
use pgrealm_schema::{Schema, TableRef};
use tokio_postgres::Client;

use super::echo::ensure_bookkeeping;
use super::refusal::Failure;
use super::writer::{Item, Outcome, Writer};
use super::{RealmMapping, RealmToPgError};
use crate::pg::read_catalog;
use crate::replication::PgConnectOptions;
use crate::store::{Changeset, Instruction, Store};

/// What [`apply_realm_schema_changes_to_postgres`] did and refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaReport {
    /// The SQL it ran (tables created, columns added), in order.
    pub applied: Vec<String>,
    /// Changes it would not make, each with what to do instead.
    pub refused: Vec<String>,
    /// Differences sync runs with (a column's nullability), for the operator.
    pub warnings: Vec<String>,
}

impl SchemaReport {
    /// Log what happened.
    pub fn log(&self) {
        for sql in &self.applied {
            tracing::info!("schema change applied to PostgreSQL: {sql}");
        }
        for refused in &self.refused {
            tracing::error!("schema change refused: {refused}");
        }
        for warning in &self.warnings {
            tracing::warn!("schema: {warning}");
        }
    }
}

/// Create the tables and columns the compiled `schema` has and the database lacks (in schema
/// `public`), in one transaction. A column whose type cannot hold its property, or a different
/// primary key, is refused with a message and left alone; the additions go ahead regardless.
pub async fn apply_realm_schema_changes_to_postgres(
    client: &Client,
    schema: &Schema,
) -> Result<SchemaReport, RealmToPgError> {
    let catalog = read_catalog(client, "public")
        .await
        .map_err(|e| RealmToPgError::Schema(e.to_string()))?;
    let mut report = SchemaReport::default();
    let mut missing: Vec<TableRef<'_>> = Vec::new();
    let mut columns = Vec::new();
    for problem in check_catalog(schema, &catalog) {
        match &problem {
            CatalogProblem::MissingTable { table, .. } => {
                if let Some(t) = schema.table(table) {
                    missing.push(t);
                }
            }
            CatalogProblem::MissingColumn { fix: Some(sql), .. } => columns.push(sql.clone()),
            p if p.is_warning() => report.warnings.push(p.to_string()),
            p => report.refused.push(format!(
                "{p}; pgrealm only adds tables and columns, so this needs a migration by hand"
            )),
        }
    }
    let mut sql = render_tables(schema, &missing);
    for statement in &columns {
        sql.push_str(statement);
        if !statement.ends_with('\n') {
            sql.push('\n');
        }
    }
    if sql.trim().is_empty() {
        return Ok(report);
    }
    client
        .batch_execute(&format!("BEGIN;\n{sql}COMMIT;"))
        .await
        .map_err(|e| {
            RealmToPgError::sql(format!("applying schema changes to PostgreSQL:\n{sql}"), e)
        })?;
    report.applied = sql
        .split_inclusive(";\n")
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    Ok(report)
}

/// What [`create_postgres_db`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateDbReport {
    /// Whether the database was created (it did not exist).
    pub created_database: bool,
    /// The schema changes made.
    pub schema: SchemaReport,
    /// The realms copied in, with the version copied (realms PostgreSQL already had progress for
    /// are left alone: their changes flow through sync).
    pub copied: Vec<(String, u64)>,
}

/// Create the database of `postgres_url` if it is missing (connecting to database `postgres`
/// first), create the schema's tables and pgrealm's bookkeeping, and copy the data of every realm
/// matching `realm_regex` that PostgreSQL has no progress row for, each realm in one transaction
/// with its progress row. Running it again is harmless.
pub async fn create_postgres_db(
    postgres_url: &str,
    store: &Store,
    realm_regex: &regex::Regex,
    mapping: &RealmMapping,
) -> Result<CreateDbReport, RealmToPgError> {
    let options = PgConnectOptions::from_url(postgres_url)?;
    let database = options.database().to_owned();
    let admin = PgConnectOptions::from_url(&with_database(postgres_url, "postgres"))?;
    let mut report = CreateDbReport::default();
    {
        let client = admin.connect_sql().await?;
        let exists = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&database])
            .await
            .map_err(|e| RealmToPgError::sql("looking for the database", e))?
            .is_some();
        if !exists {
            client
                .batch_execute(&format!("CREATE DATABASE {}", quote_ident(&database)))
                .await
                .map_err(|e| RealmToPgError::sql(format!("creating database \"{database}\""), e))?;
            report.created_database = true;
        }
    }
    let mut writer = Writer::connect(&options, store.schema().clone(), mapping.clone()).await?;
    report.schema = apply_realm_schema_changes_to_postgres(&writer.client, store.schema()).await?;
    if !report.schema.refused.is_empty() {
        return Err(RealmToPgError::Schema(report.schema.refused.join("\n")));
    }
    ensure_bookkeeping(&writer.client).await?;
    let progress = writer.load_progress().await?;
    let snapshot = store.snapshot()?;
    for info in snapshot.realms()? {
        if !realm_regex.is_match(info.path.as_str()) || progress.contains_key(&info.path) {
            continue;
        }
        let Some(view) = snapshot.realm(&info.path)? else {
            continue;
        };
        let mut instructions = Vec::new();
        for class in &store.schema().classes {
            for object in view.objects(&class.name)? {
                let key = object
                    .primary_key(store.schema())
                    .map_err(|e| RealmToPgError::Schema(e.to_string()))?;
                instructions.push(Instruction::Create {
                    class: class.name.clone(),
                    key,
                    values: object.values,
                });
            }
        }
        let changeset = Changeset {
            realm: info.path.clone(),
            version: view.version(),
            origin: "create_postgres_db".into(),
            committed_at: chrono::Utc::now(),
            instructions,
        };
        let item = Item {
            changeset: &changeset,
            progress_only: false,
        };
        match writer.write_batch(&[item]).await {
            Ok(Outcome::Written) => report
                .copied
                .push((info.path.as_str().to_owned(), view.version())),
            Ok(Outcome::AlreadyApplied) => {}
            Err(Failure::Refused(reason)) => {
                return Err(RealmToPgError::Copy {
                    realm: info.path.as_str().to_owned(),
                    reason,
                })
            }
            Err(Failure::Retry(e)) => return Err(e),
        }
    }
    Ok(report)
}

/// `url` naming database `database` instead of its own.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{}", &base[..authority_end], database);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn the_database_is_replaced_and_the_rest_kept() {
        assert_eq!(
            with_database("postgres://u:p@h:5/shop?sslmode=require", "postgres"),
            "postgres://u:p@h:5/postgres?sslmode=require"
        );
        assert_eq!(
            with_database("postgres://u@h", "postgres"),
            "postgres://u@h/postgres"
        );
    }
}
