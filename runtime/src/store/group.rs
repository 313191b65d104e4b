//! Group commit: transactions committed at the same time share one redb write transaction and
//! one fsync (of the write-ahead log, `wal.rs`, or of redb's file at a checkpoint).
//!
//! This module owns the queue of transactions waiting to commit. A committer that finds no
//! commit in flight becomes the leader: it takes every queued transaction, applies them one after
//! another in one redb write transaction (each gets its own versions and changesets, in queue
//! order, exactly as if they had committed alone in that order), makes that durable with one
//! fsync, and hands every caller its own result. Callers arriving meanwhile queue up and the next
//! leader takes them all, so the fsync a commit waits for is shared by everyone who arrived while
//! the previous one ran; a lone committer commits alone, as before.
//!
//! It must never let a caller return before the redb transaction holding its changes is durable,
//! and never let one transaction's bad data fail the others: the data-dependent checks of a
//! transaction run before it writes anything ([`WriteTx::apply_in`]), so it fails alone. Only a
//! storage failure fails the whole group, and then none of it is committed.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use redb::Durability;

use super::error::StoreError;
use super::wal::{Appended, Redo};
use super::write::{ApplyError, CommitInfo, WriteTx};
use super::{Committed, Store};

/// Each caller's result, by ticket.
type Results = Vec<(u64, Result<CommitInfo, StoreError>)>;

/// The queue of transactions waiting to commit; one per store.
#[derive(Debug, Default)]
pub(super) struct CommitQueue {
    state: Mutex<QueueState>,
    /// Signalled when a leader finishes: results are ready and someone may lead next.
    finished: Condvar,
    /// Durable redb commits so far, and the transactions they carried.
    groups: AtomicU64,
    transactions: AtomicU64,
}

/// How the store's commits were grouped since it was opened (see [`Store::commit_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Durable redb transactions (one fsync each).
    pub groups: u64,
    /// Transactions they carried; `transactions / groups` is the average group size.
    pub transactions: u64,
}

#[derive(Debug, Default)]
struct QueueState {
    /// Transactions no leader has taken yet, in arrival order.
    queued: Vec<(u64, WriteTx)>,
    /// Whether a leader is committing a group right now.
    leading: bool,
    next_ticket: u64,
    /// Results of finished groups whose callers have not picked them up yet.
    done: HashMap<u64, Result<CommitInfo, StoreError>>,
}

impl CommitQueue {
    /// Commit `tx` (which changes something), alone or with whoever commits at the same time;
    /// returns once it is durable.
    pub(super) fn commit(&self, store: &Store, tx: WriteTx) -> Result<CommitInfo, StoreError> {
        let mut state = self.lock();
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.queued.push((ticket, tx));
        loop {
            if let Some(result) = state.done.remove(&ticket) {
                return result;
            }
            if !state.leading {
                state.leading = true;
                let group = std::mem::take(&mut state.queued);
                drop(state);
                let mut leading = Leading {
                    queue: self,
                    tickets: group.iter().map(|(t, _)| *t).collect(),
                    own: ticket,
                    finished: false,
                };
                let results = commit_group(store, group);
                // Done before taking the lock again: the guard's drop takes it too.
                leading.finished = true;
                drop(leading);
                state = self.lock();
                state.leading = false;
                state.done.extend(results);
                self.finished.notify_all();
                continue;
            }
            state = self
                .finished
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    pub(super) fn stats(&self) -> CommitStats {
        CommitStats {
            groups: self.groups.load(Ordering::Relaxed),
            transactions: self.transactions.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // The state is consistent after every statement, so a panic elsewhere does not spoil it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A leader's duty to hand over: if applying the group panics, the waiting callers get an error
/// instead of waiting forever, and someone else may lead.
struct Leading<'q> {
    queue: &'q CommitQueue,
    tickets: Vec<u64>,
    own: u64,
    finished: bool,
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut state = self.queue.lock();
        state.leading = false;
        for ticket in self.tickets.iter().filter(|t| **t != self.own) {
            // The redb transaction was dropped unfinished, so nothing of it was committed.
            state.done.insert(
                *ticket,
                Err(StoreError::GroupCommit(
                    "the thread committing it panicked; nothing was applied".into(),
                )),
            );
        }
        self.queue.finished.notify_all();
    }
}

/// Groups of at most this many operations go through the write-ahead log.
const LOGGED_OPERATIONS: usize = 256;

/// Apply a group in one durable redb transaction; one result per ticket.
fn commit_group(store: &Store, group: Vec<(u64, WriteTx)>) -> Results {
    let tickets: Vec<u64> = group.iter().map(|(t, _)| *t).collect();
    match try_commit_group(store, group) {
        Ok(results) => results,
        Err(error) => {
            // A storage failure: nothing of the group was committed. The first caller gets the
            // error itself, the others its description.
            let shared = error.to_string();
            let mut error = Some(error);
            tickets
                .into_iter()
                .map(|t| {
                    let e = error
                        .take()
                        .unwrap_or_else(|| StoreError::GroupCommit(shared.clone()));
                    (t, Err(e))
                })
                .collect()
        }
    }
}

fn try_commit_group(store: &Store, group: Vec<(u64, WriteTx)>) -> Result<Results, StoreError> {
    let mut txn = store.db().begin_write()?;
    let mut wal = store.wal();
    // A large group goes straight to a durable redb commit: its scattered pages cost little
    // more than logging the same bytes, and recording them would cost CPU, which is what bounds
    // large commits.
    let operations: usize = group.iter().map(|(_, tx)| tx.len()).sum();
    let logged = operations <= LOGGED_OPERATIONS;
    let redo = RefCell::new(Redo::default());
    let learned = RefCell::new(Vec::new());
    let mut results = Vec::with_capacity(group.len());
    let mut writes = false;
    for (ticket, tx) in group {
        let has_metadata = tx.has_metadata();
        match tx.apply_in(&txn, logged.then_some(&redo), &learned) {
            Ok(info) => {
                writes |= has_metadata || !info.is_empty();
                results.push((ticket, Ok(info)));
            }
            Err(ApplyError::Refused(e)) => results.push((ticket, Err(e))),
            Err(ApplyError::Storage(e)) => return Err(e),
        }
    }
    if !writes {
        txn.abort()?;
        return Ok(results);
    }
    // Durable first in the log, then visible in redb: no reader sees what a crash could take
    // back. When the log has no room, this commit is the checkpoint instead.
    let appended = if logged {
        wal.append(&redo.borrow())?
    } else {
        Appended::Checkpoint
    };
    match appended {
        Appended::Logged => {
            txn.set_durability(Durability::None)?;
            if let Err(e) = txn.commit() {
                // The record is durable in the log, so a reopen would apply it although its
                // callers hear it failed: accept nothing more until then.
                wal.poison(&e.to_string());
                return Err(e.into());
            }
        }
        Appended::Checkpoint => {
            txn.set_durability(Durability::Immediate)?;
            wal.stamp(&txn)?;
            txn.commit()?;
            wal.checkpointed();
        }
    }
    drop(wal);
    store.learn_complete_classes(learned.into_inner());
    let queue = &store.inner.commits;
    queue.groups.fetch_add(1, Ordering::Relaxed);
    let committed = results.iter().filter(|(_, r)| r.is_ok()).count() as u64;
    queue.transactions.fetch_add(committed, Ordering::Relaxed);
    for (_, result) in &results {
        let Ok(info) = result else { continue };
        for (path, version) in &info.versions {
            // Nobody listening is fine: subscribers catch up from the log.
            let _ = store.inner.feed.send(Committed {
                path: path.clone(),
                version: *version,
            });
        }
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use pgrealm_schema::{Class, IntWidth, Object, Property, PropertyType, ScalarType, Schema};
    use pgrealm_schema::{PrimaryKey, Value};

    use super::*;
    use crate::store::{RealmPath, StoreOptions};

    fn store(dir: &std::path::Path) -> Store {
        let schema = Schema::new(vec![Class::new("Bus")
            .property(
                Property::new("id", PropertyType::Scalar(ScalarType::Int(IntWidth::I64)))
                    .primary_key(),
            )
            .property(Property::new(
                "name",
                PropertyType::Scalar(ScalarType::String),
            ))]);
        Store::open(dir, schema, StoreOptions::default()).unwrap()
    }

    fn bus(id: i64, name: Option<&str>) -> Object {
        let o = Object::new("Bus").with("id", Value::Int(id));
        match name {
            Some(n) => o.with("name", Value::String(n.into())),
            None => o,
        }
    }

    /// One group of three where the middle transaction is refused while being applied (a new
    /// object without its required `name`, after a valid put): the other two commit in the same
    /// redb transaction with their own versions, and nothing of the refused one is visible.
    #[test]
    fn a_refused_transaction_fails_alone_inside_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let shared = RealmPath::parse("/shared").unwrap();
        let bad_only = RealmPath::parse("/bad").unwrap();

        let mut first = store.begin_write("app");
        first.put_object(&shared, bus(1, Some("one"))).unwrap();
        first.set_metadata("m", b"first".to_vec());
        let mut refused = store.begin_write("app");
        refused.put_object(&shared, bus(2, Some("two"))).unwrap();
        refused
            .put_object(&bad_only, bus(3, Some("three")))
            .unwrap();
        refused.put_object(&shared, bus(4, None)).unwrap();
        refused.set_metadata("m", b"refused".to_vec());
        let mut last = store.begin_write("postgres");
        last.put_object(&shared, bus(5, Some("five"))).unwrap();

        let results = commit_group(&store, vec![(10, first), (11, refused), (12, last)]);
        let tickets: Vec<u64> = results.iter().map(|(t, _)| *t).collect();
        assert_eq!(tickets, [10, 11, 12]);
        let versions = |i: usize| match &results[i].1 {
            Ok(info) => info.versions.clone(),
            Err(e) => panic!("transaction {i} failed: {e}"),
        };
        assert_eq!(versions(0), [(shared.clone(), 1)]);
        assert_eq!(versions(2), [(shared.clone(), 2)]);
        match &results[1].1 {
            Err(StoreError::Value { class, key, .. }) => {
                assert_eq!((class.as_str(), key.as_str()), ("Bus", "4"));
            }
            other => panic!("the refused transaction gave {other:?}"),
        }
        // One fsync for the two that committed.
        assert_eq!(
            store.commit_stats(),
            CommitStats {
                groups: 1,
                transactions: 2
            }
        );

        let view = store.realm(&shared).unwrap().unwrap();
        assert_eq!(view.version(), 2);
        let ids: Vec<PrimaryKey> = view
            .objects("Bus")
            .unwrap()
            .iter()
            .map(|o| o.primary_key(store.schema()).unwrap())
            .collect();
        assert_eq!(ids, [PrimaryKey::Int(1), PrimaryKey::Int(5)]);
        assert!(store.realm(&bad_only).unwrap().is_none());
        assert_eq!(store.metadata("m").unwrap(), Some(b"first".to_vec()));
        let origins: Vec<String> = store
            .changes(&shared, 0, 10)
            .unwrap()
            .into_iter()
            .map(|c| c.origin)
            .collect();
        assert_eq!(origins, ["app", "postgres"]);
    }

    /// Transactions of one group see each other's metadata: the second expects the value the
    /// store held before the group and is refused, since the first changed it in the same redb
    /// transaction; the third expects the first's value and commits.
    #[test]
    fn an_expectation_sees_the_metadata_of_earlier_transactions_in_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let realm = RealmPath::parse("/r").unwrap();
        let mut first = store.begin_write("postgres");
        first.expect_metadata("lsn", None);
        first.set_metadata("lsn", b"1".to_vec());
        let mut stale = store.begin_write("postgres");
        stale.expect_metadata("lsn", None);
        stale.put_object(&realm, bus(1, Some("one"))).unwrap();
        stale.set_metadata("lsn", b"stale".to_vec());
        let mut next = store.begin_write("postgres");
        next.expect_metadata("lsn", Some(b"1".to_vec()));
        next.put_object(&realm, bus(2, Some("two"))).unwrap();
        next.set_metadata("lsn", b"2".to_vec());

        let results = commit_group(&store, vec![(0, first), (1, stale), (2, next)]);
        assert!(results[0].1.is_ok());
        assert!(
            matches!(&results[1].1, Err(StoreError::MetadataChanged { .. })),
            "{:?}",
            results[1].1
        );
        assert_eq!(results[2].1.as_ref().unwrap().version_of(&realm), Some(1));
        assert_eq!(store.metadata("lsn").unwrap(), Some(b"2".to_vec()));
        let view = store.realm(&realm).unwrap().unwrap();
        assert_eq!(view.version(), 1);
        assert!(view.object("Bus", &PrimaryKey::Int(1)).unwrap().is_none());
    }

    /// A group whose transactions all cancel out writes nothing and counts no fsync.
    #[test]
    fn a_group_that_changes_nothing_touches_no_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let realm = RealmPath::parse("/r").unwrap();
        let mut tx = store.begin_write("app");
        tx.put_object(&realm, bus(1, Some("one"))).unwrap();
        tx.delete_object(&realm, "Bus", PrimaryKey::Int(1)).unwrap();
        let results = commit_group(&store, vec![(0, tx)]);
        assert!(matches!(&results[0].1, Ok(info) if info.is_empty()));
        assert_eq!(store.commit_stats(), CommitStats::default());
        assert!(store.realm(&realm).unwrap().is_none());
    }
}
