//! The transaction assembler: the state machine between the replication client's raw events
//! and [`StreamEvent`]s, and the rule for which position may be reported to the server.
//!
//! Pure (no I/O) so every rule is unit-tested on hand-made events: a Begin is held back until
//! the next message says whether an Origin belongs to it; transactions the consumer already
//! holds are skipped by LSN; a keepalive position is reported only while no transaction is in
//! flight and everything delivered is confirmed.

use std::collections::VecDeque;
use std::sync::Arc;

use pgwire_replication::ReplicationEvent;

use super::error::ReplicationError;
use super::pgoutput::{self, LogicalMessage, PgOutputMessage, Relation};
use super::relations::RelationCache;
use super::stream::{Change, StreamEvent, TransactionBegin, TransactionCommit};
use super::Lsn;

#[derive(Debug)]
pub(crate) struct Assembler {
    relations: RelationCache,
    resume_after: Lsn,
    /// Between a Begin and its Commit on the wire.
    in_transaction: bool,
    /// The current transaction is one the consumer already holds.
    skipping: bool,
    /// A Begin held back until the next message says whether an Origin belongs to it.
    pending_begin: Option<TransactionBegin>,
    ready: VecDeque<StreamEvent>,
    /// End LSN of the last Commit handed out.
    delivered_end: Lsn,
    /// The position that may be reported to the server (monotonic).
    confirmed: Lsn,
    /// A keepalive position seen while idle, waiting for the consumer to confirm what it has.
    idle_wal_end: Option<Lsn>,
    /// The last WAL position seen on the wire, for error messages.
    last_seen: Lsn,
}

impl Assembler {
    /// Skip transactions committed before `resume_after`; `confirmed` is what the server may
    /// already be told.
    pub(crate) fn new(resume_after: Lsn, confirmed: Lsn) -> Self {
        Assembler {
            relations: RelationCache::new(),
            resume_after,
            in_transaction: false,
            skipping: false,
            pending_begin: None,
            ready: VecDeque::new(),
            delivered_end: Lsn::ZERO,
            confirmed,
            idle_wal_end: None,
            last_seen: confirmed,
        }
    }

    /// The next assembled event, if any.
    pub(crate) fn pop(&mut self) -> Option<StreamEvent> {
        self.ready.pop_front()
    }

    /// The position that may be reported to the server.
    pub(crate) fn confirmed(&self) -> Lsn {
        self.confirmed
    }

    pub(crate) fn relations(&self) -> &RelationCache {
        &self.relations
    }

    /// The consumer holds everything up to `lsn` durably.
    pub(crate) fn confirm(&mut self, lsn: Lsn) {
        self.report(lsn);
        if !self.in_transaction && self.confirmed >= self.delivered_end {
            if let Some(wal_end) = self.idle_wal_end.take() {
                self.report(wal_end);
            }
        }
    }

    fn report(&mut self, lsn: Lsn) {
        self.confirmed = self.confirmed.max(lsn);
    }

    pub(crate) fn handle(&mut self, event: ReplicationEvent) -> Result<(), ReplicationError> {
        match event {
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                if !self.in_transaction {
                    if self.confirmed >= self.delivered_end {
                        self.report(wal_end);
                    } else {
                        self.idle_wal_end = Some(wal_end);
                    }
                }
            }
            ReplicationEvent::Begin {
                final_lsn,
                xid,
                commit_time_micros,
            } => {
                self.last_seen = final_lsn;
                if self.in_transaction {
                    return Err(self.violation("Begin inside a transaction"));
                }
                self.in_transaction = true;
                self.idle_wal_end = None;
                // A transaction whose commit record starts before the consumer's durable end
                // LSN is one it holds: the commit record of that transaction ends there.
                self.skipping = final_lsn < self.resume_after;
                if !self.skipping {
                    self.pending_begin = Some(TransactionBegin {
                        final_lsn,
                        commit_time: commit_time_micros,
                        xid,
                        origin: None,
                    });
                }
            }
            ReplicationEvent::Commit {
                lsn,
                end_lsn,
                commit_time_micros,
            } => {
                self.last_seen = end_lsn;
                if !self.in_transaction {
                    return Err(self.violation("Commit outside a transaction"));
                }
                self.in_transaction = false;
                if std::mem::take(&mut self.skipping) {
                    return Ok(());
                }
                self.flush_begin();
                self.delivered_end = end_lsn;
                self.ready.push_back(StreamEvent::Commit(TransactionCommit {
                    commit_lsn: lsn,
                    end_lsn,
                    commit_time: commit_time_micros,
                }));
            }
            ReplicationEvent::Message {
                transactional,
                lsn,
                prefix,
                content,
            } => {
                self.last_seen = lsn;
                self.message(LogicalMessage {
                    transactional,
                    lsn,
                    prefix,
                    content,
                })?;
            }
            ReplicationEvent::XLogData {
                wal_start, data, ..
            } => {
                self.last_seen = wal_start;
                let message =
                    pgoutput::decode(&data).map_err(|source| ReplicationError::Decode {
                        lsn: wal_start,
                        source,
                    })?;
                self.pgoutput(message)?;
            }
            ReplicationEvent::StoppedAt { .. } => {}
        }
        Ok(())
    }

    fn pgoutput(&mut self, message: PgOutputMessage) -> Result<(), ReplicationError> {
        match message {
            PgOutputMessage::Relation(relation) => {
                self.relations.insert_relation(relation);
            }
            PgOutputMessage::Type(info) => self.relations.insert_type(info),
            PgOutputMessage::Origin(origin) => {
                if !self.in_transaction {
                    return Err(self.violation("Origin outside a transaction"));
                }
                if let Some(begin) = &mut self.pending_begin {
                    begin.origin = Some(origin);
                }
            }
            PgOutputMessage::Message(message) => self.message(message)?,
            PgOutputMessage::Insert(insert) => {
                let relation = self.relation(insert.relation_id)?;
                self.change(Change::Insert {
                    relation,
                    new: insert.new,
                })?;
            }
            PgOutputMessage::Update(update) => {
                let relation = self.relation(update.relation_id)?;
                self.change(Change::Update {
                    relation,
                    old: update.old,
                    new: update.new,
                })?;
            }
            PgOutputMessage::Delete(delete) => {
                let relation = self.relation(delete.relation_id)?;
                self.change(Change::Delete {
                    relation,
                    old: delete.old,
                })?;
            }
            PgOutputMessage::Truncate(truncate) => {
                let relations = truncate
                    .relation_ids
                    .iter()
                    .map(|&id| self.relation(id))
                    .collect::<Result<Vec<_>, _>>()?;
                self.change(Change::Truncate {
                    relations,
                    cascade: truncate.cascade,
                    restart_identity: truncate.restart_identity,
                })?;
            }
            // The replication client turns these into its own events before we see them.
            PgOutputMessage::Begin(_) | PgOutputMessage::Commit(_) => {
                return Err(self.violation("a raw Begin or Commit message"));
            }
        }
        Ok(())
    }

    fn change(&mut self, change: Change) -> Result<(), ReplicationError> {
        if !self.in_transaction {
            return Err(self.violation("a row change outside a transaction"));
        }
        if !self.skipping {
            self.flush_begin();
            self.ready.push_back(StreamEvent::Change(change));
        }
        Ok(())
    }

    fn message(&mut self, message: LogicalMessage) -> Result<(), ReplicationError> {
        if message.transactional {
            if !self.in_transaction {
                return Err(self.violation("a transactional message outside a transaction"));
            }
            if self.skipping {
                return Ok(());
            }
            self.flush_begin();
        }
        self.ready.push_back(StreamEvent::Message(message));
        Ok(())
    }

    fn flush_begin(&mut self) {
        if let Some(begin) = self.pending_begin.take() {
            self.ready.push_back(StreamEvent::Begin(begin));
        }
    }

    fn relation(&self, id: u32) -> Result<Arc<Relation>, ReplicationError> {
        self.relations.relation(id).cloned().ok_or_else(|| {
            self.violation(&format!(
                "a change of table oid {id} before its Relation message"
            ))
        })
    }

    fn violation(&self, what: &str) -> ReplicationError {
        ReplicationError::Protocol {
            lsn: self.last_seen,
            message: format!("got {what}"),
        }
    }
}

#[cfg(test)]
#[path = "assembler_tests.rs"]
mod tests;
