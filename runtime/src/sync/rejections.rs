//! Rejections: changes that could not be applied, kept with their reason where the operator
//! (`status`, `/v1/rejections`) and the app can read them. Nothing is dropped silently.
//!
//! A rejection is stored in the realm store's commit metadata, atomically with the commit that
//! decided it (the PostgreSQL → realm apply commit that skipped a bad row, or the compensating
//! write that returned a realm to PostgreSQL's state), so a crash can neither lose it nor record
//! it for a change that is later applied. Each direction has one writer task, which numbers its
//! rejections with a counter kept in the same metadata.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError, WriteTx};

/// Which way the refused change was going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// A PostgreSQL change that could not become a realm change.
    PostgresToRealm,
    /// A realm change PostgreSQL refused.
    RealmToPostgres,
}

impl Direction {
    fn prefix(self) -> &'static str {
        match self {
            Direction::PostgresToRealm => "rejections/postgres_to_realm",
            Direction::RealmToPostgres => "rejections/realm_to_postgres",
        }
    }
}

/// One refused change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rejection {
    /// Which way it was going.
    pub direction: Direction,
    /// When it was refused.
    pub at: DateTime<Utc>,
    /// The realm it came from or was going to, when known.
    pub realm: Option<String>,
    /// The realm version it came from (realm → PostgreSQL).
    pub version: Option<u64>,
    /// The PostgreSQL table.
    pub table: Option<String>,
    /// The realm class.
    pub class: Option<String>,
    /// The object's primary key, as text.
    pub key: Option<String>,
    /// The commit LSN of the PostgreSQL transaction (PostgreSQL → realm).
    pub lsn: Option<String>,
    /// Why it was refused, in words (the SQL error, the conversion error, …).
    pub reason: String,
    /// The values as they came (column → text, or the realm object as JSON).
    pub raw: serde_json::Value,
}

fn count_key(direction: Direction) -> String {
    format!("{}/count", direction.prefix())
}

fn item_key(direction: Direction, n: u64) -> String {
    format!("{}/{n:020}", direction.prefix())
}

/// How many rejections of `direction` the store holds.
pub fn count(store: &Store, direction: Direction) -> Result<u64, StoreError> {
    Ok(store
        .metadata(&count_key(direction))?
        .and_then(|b| b.try_into().ok().map(u64::from_be_bytes))
        .unwrap_or(0))
}

/// Adds rejections to a write transaction. One per direction, owned by that direction's
/// single writer task, so its counter needs no further coordination.
#[derive(Debug)]
pub struct RejectionLog {
    direction: Direction,
    next: u64,
}

impl RejectionLog {
    /// The log of `direction`, continuing after what `store` holds.
    pub fn open(store: &Store, direction: Direction) -> Result<RejectionLog, StoreError> {
        Ok(RejectionLog {
            direction,
            next: count(store, direction)? + 1,
        })
    }

    /// Record `rejection` in `tx`; it becomes durable (and counted) when `tx` commits. If `tx`
    /// is dropped instead, call [`RejectionLog::reload`] before recording more.
    pub fn record(&mut self, tx: &mut WriteTx, rejection: &Rejection) {
        let json = serde_json::to_vec(rejection).expect("rejections serialize");
        tx.set_metadata(item_key(self.direction, self.next), json);
        tx.set_metadata(count_key(self.direction), self.next.to_be_bytes().to_vec());
        self.next += 1;
    }

    /// Re-read the counter after a transaction with recorded rejections was abandoned.
    pub fn reload(&mut self, store: &Store) -> Result<(), StoreError> {
        self.next = count(store, self.direction)? + 1;
        Ok(())
    }
}

/// The newest `limit` rejections of `direction`, newest first.
pub fn recent(
    store: &Store,
    direction: Direction,
    limit: u64,
) -> Result<Vec<Rejection>, StoreError> {
    let snapshot = store.snapshot()?;
    let total = snapshot
        .metadata(&count_key(direction))?
        .and_then(|b| b.try_into().ok().map(u64::from_be_bytes))
        .unwrap_or(0);
    let mut out = Vec::new();
    let mut n = total;
    while n > 0 && (out.len() as u64) < limit {
        if let Some(bytes) = snapshot.metadata(&item_key(direction, n))? {
            if let Ok(r) = serde_json::from_slice(&bytes) {
                out.push(r);
            }
        }
        n -= 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreOptions;
    use pgrealm_schema::Schema;

    fn rejection(reason: &str) -> Rejection {
        Rejection {
            direction: Direction::PostgresToRealm,
            at: Utc::now(),
            realm: None,
            version: None,
            table: Some("bus".into()),
            class: Some("Bus".into()),
            key: Some("5".into()),
            lsn: Some("0/16B3748".into()),
            reason: reason.into(),
            raw: serde_json::json!({"seats": "70000"}),
        }
    }

    #[test]
    fn rejections_are_durable_numbered_and_listed_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Schema::default(), StoreOptions::default()).unwrap();
        let mut log = RejectionLog::open(&store, Direction::PostgresToRealm).unwrap();
        let mut tx = store.begin_write("postgres");
        log.record(&mut tx, &rejection("first"));
        log.record(&mut tx, &rejection("second"));
        tx.commit().unwrap();
        // An abandoned transaction records nothing.
        let mut tx = store.begin_write("postgres");
        log.record(&mut tx, &rejection("lost"));
        drop(tx);
        log.reload(&store).unwrap();
        let mut tx = store.begin_write("postgres");
        log.record(&mut tx, &rejection("third"));
        tx.commit().unwrap();

        assert_eq!(count(&store, Direction::PostgresToRealm).unwrap(), 3);
        assert_eq!(count(&store, Direction::RealmToPostgres).unwrap(), 0);
        let reasons: Vec<String> = recent(&store, Direction::PostgresToRealm, 10)
            .unwrap()
            .into_iter()
            .map(|r| r.reason)
            .collect();
        assert_eq!(reasons, ["third", "second", "first"]);
        // Reopened, the log continues after what is stored.
        let log = RejectionLog::open(&store, Direction::PostgresToRealm).unwrap();
        assert_eq!(log.next, 4);
    }
}
