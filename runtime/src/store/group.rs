//! Group commit: transactions committed at the same time share one redb write transaction and
//! one fsync.
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

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use redb::Durability;

use super::error::StoreError;
use super::write::{ApplyError, CommitInfo, WriteTx};
use super::{Committed, Store};

/// The queue of transactions waiting to commit; one per store.
#[derive(Debug, Default)]
pub(super) struct CommitQueue {
    state: Mutex<QueueState>,
    /// Signalled when a leader finishes: results are ready and someone may lead next.
    finished: Condvar,
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
                state = self.lock();
                state.leading = false;
                state.done.extend(results);
                leading.finished = true;
                self.finished.notify_all();
                continue;
            }
            state = self
                .finished
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
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

/// Apply a group in one durable redb transaction; one result per ticket.
fn commit_group(
    store: &Store,
    group: Vec<(u64, WriteTx)>,
) -> Vec<(u64, Result<CommitInfo, StoreError>)> {
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

fn try_commit_group(
    store: &Store,
    group: Vec<(u64, WriteTx)>,
) -> Result<Vec<(u64, Result<CommitInfo, StoreError>)>, StoreError> {
    let mut txn = store.inner.db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    let mut results = Vec::with_capacity(group.len());
    let mut writes = false;
    for (ticket, tx) in group {
        let has_metadata = tx.has_metadata();
        match tx.apply_in(&txn) {
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
    txn.commit()?;
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
