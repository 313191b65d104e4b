//! The events a session holds before applying them: the one it peeked at after a commit (is
//! more already waiting? then it joins the same store commit), and, in remote mode, those it
//! read ahead so the locations of their rows are asked in one request per class
//! ([`Group::read_locations_ahead`]) instead of one per row.
//!
//! Reading ahead only takes events the replication client has already received
//! (`now_or_never`): it never waits, so it adds no latency, and the queue is bounded by
//! [`READ_AHEAD`]. It never changes the order in which events are applied. On an embedded store
//! nothing is read ahead: the queue holds at most the one peeked event, as before.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use futures_util::FutureExt;
use pgrealm_schema::PrimaryKey;

use super::apply::Group;
use super::mapping::{Mapper, TableKind, TablePlan};
use super::session::plan_for;
use super::PgToRealmError;
use crate::replication::{Change, ChangeStream, ColumnValue, Relation, StreamEvent};

/// Most events held ahead: about one streamed batch's worth, and what the replication client
/// buffers itself (`StreamOptions::buffer_events`).
const READ_AHEAD: usize = 8_192;

/// The plans of the tables seen on a stream, by relation id.
pub(super) type Plans = HashMap<u32, (Arc<Relation>, Arc<TablePlan>)>;

/// Events received but not yet applied, oldest first (`None`: the stream ended).
#[derive(Debug, Default)]
pub(super) struct ReadAhead {
    queue: VecDeque<Option<StreamEvent>>,
    /// Events at the front of `queue` whose rows' locations were read ahead, at `epoch` of the
    /// group's locations.
    covered: usize,
    epoch: u64,
    /// Whether the event last taken was covered.
    current_covered: bool,
}

impl ReadAhead {
    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Hold an event received after the ones held.
    pub(super) fn push(&mut self, event: Option<StreamEvent>) {
        self.queue.push_back(event);
    }

    /// The oldest event held, if any.
    pub(super) fn pop(&mut self) -> Option<Option<StreamEvent>> {
        let event = self.queue.pop_front()?;
        self.current_covered = self.covered > 0;
        self.covered = self.covered.saturating_sub(1);
        Some(event)
    }

    /// Mark the event just received from the stream (not from the queue): not read ahead.
    pub(super) fn received(&mut self) {
        self.current_covered = false;
    }

    /// Before `change` (the event last taken) is applied: in remote mode, unless its rows'
    /// locations were read ahead and are still valid, take the events already received (up to
    /// [`READ_AHEAD`]) and read the locations of the rows of `change` and of those events, as
    /// many as go into the group's base as it is now.
    pub(super) fn before_change(
        &mut self,
        stream: &mut ChangeStream,
        group: &mut Group,
        mapper: &Mapper,
        plans: &mut Plans,
        change: &Change,
    ) -> Result<(), PgToRealmError> {
        if !group.reads_ahead() || (self.current_covered && self.epoch == group.located_epoch()) {
            return Ok(());
        }
        while self.queue.len() < READ_AHEAD && self.queue.back().is_none_or(Option::is_some) {
            // Unconstrained: tokio's cooperative budget would make the client's channel answer
            // "pending" after 128 events in one go, however many it holds; the loop is bounded
            // by READ_AHEAD instead, and the session spends the budget as it applies them.
            match tokio::task::coop::unconstrained(stream.next_event()).now_or_never() {
                Some(event) => self.queue.push_back(event?),
                None => break,
            }
        }
        let limit = group.changes_before_base_changes();
        let mut objects = Vec::new();
        objects_of(mapper, plans, stream, change, &mut objects);
        let mut changes = 1;
        let mut covered = 0;
        for event in &self.queue {
            if changes >= limit {
                break;
            }
            covered += 1;
            if let Some(StreamEvent::Change(change)) = event {
                objects_of(mapper, plans, stream, change, &mut objects);
                changes += 1;
            }
        }
        group.read_locations_ahead(mapper, objects)?;
        self.covered = covered;
        self.epoch = group.located_epoch();
        self.current_covered = true;
        Ok(())
    }
}

/// The objects (class index, key) whose location applying `change` asks for: a class row's
/// key, and its old key when an update carries one. A row whose key cannot be read is left
/// out (applying it rejects it).
fn objects_of(
    mapper: &Mapper,
    plans: &mut Plans,
    stream: &ChangeStream,
    change: &Change,
    out: &mut Vec<(usize, PrimaryKey)>,
) {
    let (relation, rows): (_, [Option<&[ColumnValue]>; 2]) = match change {
        Change::Insert { relation, new, .. } => (relation, [Some(new), None]),
        Change::Update {
            relation, old, new, ..
        } => (relation, [Some(new), old.as_ref().map(|o| &o.values()[..])]),
        Change::Delete { relation, old, .. } => (relation, [Some(old.values()), None]),
        Change::Truncate { .. } => return,
    };
    let plan = plan_for(plans, mapper, stream, relation);
    let TableKind::Class { class, .. } = &plan.kind else {
        return;
    };
    for values in rows.into_iter().flatten() {
        if let Ok(key) = mapper.key_of(&plan, values) {
            out.push((*class, key));
        }
    }
}
