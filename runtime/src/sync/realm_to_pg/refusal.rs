//! When PostgreSQL refuses a realm changeset (a foreign key to a missing row, a check or unique
//! violation, a value out of range, a missing permission): which errors are refusals, and the
//! compensating store write that returns the realm to PostgreSQL's state for the objects the
//! changeset touched, committed together with the rejection record and the
//! `realm_to_pg/compensated/<path>` mark that keeps a restart from redoing it.
//!
//! Everything else (a lost connection, a server shutting down, a serialization failure) is not
//! the changeset's fault: it is retried, never refused.

use std::collections::BTreeSet;

use chrono::Utc;
use pgrealm_schema::{PrimaryKey, ValueError};
use tokio_postgres::error::SqlState;

use super::sql::key_object;
use super::writer::Writer;
use super::RealmToPgError;
use crate::pg::{object_from_row, read_list, select_columns};
use crate::store::{Changeset, RealmPath, Store};
use crate::sync::rejections::{Direction, Rejection, RejectionLog};
use pgrealm_schema::ddl::quote_ident;

/// Why a batch did not commit.
#[derive(Debug)]
pub(crate) enum Failure {
    /// PostgreSQL refused the data: with one changeset in the batch, a rejection.
    Refused(String),
    /// The connection or the server failed: reconnect and try again.
    Retry(RealmToPgError),
}

/// Sort a failed statement into a refusal or a retry.
pub(crate) fn classify(action: &str, e: tokio_postgres::Error) -> Failure {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        let refused = code.starts_with("22") // data exception: out of range, bad text, …
            || code.starts_with("23") // integrity: foreign key, unique, check, not null
            || *db.code() == SqlState::INSUFFICIENT_PRIVILEGE
            || *db.code() == SqlState::UNDEFINED_TABLE
            || *db.code() == SqlState::UNDEFINED_COLUMN
            || *db.code() == SqlState::DATATYPE_MISMATCH
            || *db.code() == SqlState::INVALID_TEXT_REPRESENTATION;
        if refused {
            return Failure::Refused(format!("{action}: {}", crate::pg::describe(&e)));
        }
        return Failure::Retry(RealmToPgError::sql(action.to_owned(), e));
    }
    // A parameter our encoder refused (a value its column cannot hold) never reached the server.
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        if s.downcast_ref::<ValueError>().is_some() {
            return Failure::Refused(format!("{action}: {s}"));
        }
        source = s.source();
    }
    Failure::Retry(RealmToPgError::sql(action.to_owned(), e))
}

/// The store metadata key holding the last version of `realm` that was refused and compensated.
pub(crate) fn compensated_key(realm: &RealmPath) -> String {
    format!("realm_to_pg/compensated/{}", realm.as_str())
}

/// The last compensated version of `realm` (0 when none).
pub(crate) fn compensated_version(store: &Store, realm: &RealmPath) -> Result<u64, RealmToPgError> {
    Ok(store
        .metadata(&compensated_key(realm))?
        .and_then(|b| b.try_into().ok().map(u64::from_be_bytes))
        .unwrap_or(0))
}

/// Record the refusal of `changeset` and return its realm to PostgreSQL's state for every
/// object it touched, in one store commit (origin `postgres`).
pub(crate) async fn compensate(
    writer: &mut Writer,
    store: &Store,
    log: &mut RejectionLog,
    changeset: &Changeset,
    reason: &str,
) -> Result<(), RealmToPgError> {
    let touched: BTreeSet<(String, PrimaryKey)> = changeset
        .instructions
        .iter()
        .filter_map(|i| Some((i.class().to_owned(), i.key()?.clone())))
        .collect();
    // One consistent view of PostgreSQL for every object read back.
    writer
        .client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(|e| RealmToPgError::sql("reading PostgreSQL's state back", e))?;
    let read = read_back(writer, &changeset.realm, &touched).await;
    let _ = writer.client.batch_execute("COMMIT").await;
    let (state, notes) = read?;

    let mut tx = store.begin_write("postgres");
    for (class, key, object) in state {
        match object {
            Some(object) => tx.put_object(&changeset.realm, object)?,
            None => tx.delete_object(&changeset.realm, &class, key)?,
        }
    }
    // The object the refusal named when the encoder knew it, else the first one touched.
    let named = writer
        .refused_object()
        .filter(|object| touched.contains(*object))
        .cloned();
    let first = named.as_ref().or(touched.iter().next());
    let class = first.map(|(c, _)| c.clone());
    let table = class
        .as_deref()
        .and_then(|c| writer.schema().class(c))
        .map(|c| c.table.clone());
    let mut reason = reason.to_owned();
    for note in notes {
        reason.push_str("; ");
        reason.push_str(&note);
    }
    let rejection = Rejection {
        direction: Direction::RealmToPostgres,
        at: Utc::now(),
        realm: Some(changeset.realm.as_str().to_owned()),
        version: Some(changeset.version),
        table,
        class,
        key: first.map(|(_, k)| k.to_string()),
        lsn: None,
        reason,
        raw: serde_json::to_value(&changeset.instructions).unwrap_or(serde_json::Value::Null),
    };
    log.record(&mut tx, &rejection);
    tx.set_metadata(
        compensated_key(&changeset.realm),
        changeset.version.to_be_bytes().to_vec(),
    );
    let committed = tokio::task::spawn_blocking(move || tx.commit())
        .await
        .map_err(|e| RealmToPgError::Task(e.to_string()))?;
    if let Err(e) = committed {
        log.reload(store)?;
        return Err(e.into());
    }
    Ok(())
}

/// Each touched object as PostgreSQL has it in this realm (`None`: not there), and notes about
/// objects that could not be read back.
#[allow(clippy::type_complexity)] // a local result shape, named once here
async fn read_back(
    writer: &mut Writer,
    realm: &RealmPath,
    touched: &BTreeSet<(String, PrimaryKey)>,
) -> Result<
    (
        Vec<(String, PrimaryKey, Option<pgrealm_schema::Object>)>,
        Vec<String>,
    ),
    RealmToPgError,
> {
    let mut state = Vec::new();
    let mut notes = Vec::new();
    let schema = writer.schema().clone();
    for (class, key) in touched {
        let Some(class_def) = schema.class(class) else {
            continue;
        };
        let Some(key_property) = class_def.primary_key() else {
            continue;
        };
        let object = key_object(&schema, class, key);
        let Some(target) = writer.mapping().target(realm, &class_def.table, &object) else {
            continue;
        };
        let mut sql = format!(
            "SELECT {} FROM {} WHERE {} = $1",
            select_columns(class_def),
            quote_ident(&target.table),
            quote_ident(&key_property.column)
        );
        let mut values = vec![(key.to_value(), None)];
        if let Err(f) = writer.where_extras(&target, &mut sql, &mut values).await {
            notes.push(format!(
                "{class} {key} was not read back: {}",
                failure_text(f)
            ));
            continue;
        }
        let rows = match writer.query(&sql, &values).await {
            Ok(rows) => rows,
            Err(Failure::Retry(e)) => return Err(e),
            Err(f) => {
                notes.push(format!(
                    "{class} {key} was not read back: {}",
                    failure_text(f)
                ));
                continue;
            }
        };
        let Some(row) = rows.first() else {
            state.push((class.clone(), key.clone(), None));
            continue;
        };
        let mut object = match object_from_row(&schema, class_def, row) {
            Ok(o) => o,
            Err(e) => {
                notes.push(format!(
                    "{class} {key} in PostgreSQL cannot be a realm object: {e}"
                ));
                continue;
            }
        };
        let mut readable = true;
        for p in class_def.list_properties() {
            match read_list(&writer.client, &schema, class_def, p, key).await {
                Ok(items) => {
                    object.values.insert(p.name.clone(), items);
                }
                Err(e) => {
                    notes.push(format!(
                        "{class} {key}: list `{}` not read back: {e}",
                        p.name
                    ));
                    readable = false;
                }
            }
        }
        if readable {
            object
                .values
                .entry(key_property.name.clone())
                .or_insert_with(|| key.to_value());
            state.push((class.clone(), key.clone(), Some(object)));
        }
    }
    Ok((state, notes))
}

fn failure_text(f: Failure) -> String {
    match f {
        Failure::Refused(r) => r,
        Failure::Retry(e) => e.to_string(),
    }
}
