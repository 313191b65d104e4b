//! The events a session holds before applying them: the one it peeked at after a commit (is
//! more already waiting? then it joins the same store commit), and, in remote mode, those it
//! read ahead so the locations of their rows are asked in one request per class
//! ([`Group::read_locations_ahead`]) instead of one per row, and the stored entries of the lists
//! their list subtable rows change in one request (after one for the lists' generations when
//! they are not known yet: [`Group::read_lists_ahead`]) instead of one per owner, and the
//! stored objects of the rows whose update moves them to another realm or changes their key
//! in one request ([`Group::read_objects_ahead`]) instead of one or two per row.
//!
//! Reading ahead only takes events the replication client has already received
//! (`now_or_never`): it never waits, so it adds no latency, and the queue is bounded by
//! [`READ_AHEAD`]. It never changes the order in which events are applied. It stops at a
//! TRUNCATE: truncating a list subtable starts a new generation of its lists, which names the
//! keys of the entries read after it, so the events after a TRUNCATE are read ahead once it is
//! applied. On an embedded store nothing is read ahead: the queue holds at most the one peeked
//! event, as before.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use futures_util::FutureExt;
use pgrealm_schema::PrimaryKey;

use super::apply::{Group, ListKey, UpdateAhead};
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
    /// Events at the front of `queue` whose rows' locations and lists were read ahead, at
    /// `epoch` of what the group read ahead.
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
    /// locations and lists were read ahead and are still valid, take the events already
    /// received (up to [`READ_AHEAD`]) and read the locations and lists of the rows of `change`
    /// and of those events, as many as go into the group's base as it is now and up to the next
    /// TRUNCATE. A TRUNCATE itself reads nothing ahead (it reads what it deletes in chunks,
    /// `prefetch.rs`), and the events after it are read ahead once it is applied.
    pub(super) fn before_change(
        &mut self,
        stream: &mut ChangeStream,
        group: &mut Group,
        mapper: &Mapper,
        plans: &mut Plans,
        change: &Change,
    ) -> Result<(), PgToRealmError> {
        if !group.reads_ahead() || (self.current_covered && self.epoch == group.read_ahead_epoch())
        {
            return Ok(());
        }
        if matches!(change, Change::Truncate { .. }) {
            self.covered = 0;
            self.current_covered = false;
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
        let mut wanted = Wanted::default();
        // The class rows read ahead (the changes that bring the base's change nearer), `change`
        // among them when it is one: a list subtable row just before the batch is applied
        // would otherwise read ahead nothing past itself, and each following list row ask on
        // its own.
        let mut changes = usize::from(wanted.add(mapper, plans, stream, change));
        let mut covered = 0;
        for event in &self.queue {
            if changes >= limit {
                break;
            }
            if let Some(StreamEvent::Change(change)) = event {
                if matches!(change, Change::Truncate { .. }) {
                    break;
                }
                // A list subtable row writes nothing before its transaction ends (or the
                // group's batch is applied): it does not bring the base's change nearer.
                if wanted.add(mapper, plans, stream, change) {
                    changes += 1;
                }
            }
            covered += 1;
        }
        group.read_ahead(mapper, wanted.objects, wanted.lists, wanted.updates)?;
        self.covered = covered;
        self.epoch = group.read_ahead_epoch();
        self.current_covered = true;
        Ok(())
    }
}

/// What applying some changes will ask of the group's base.
#[derive(Debug, Default)]
struct Wanted {
    /// The objects (class index, key) whose location is asked.
    objects: Vec<(usize, PrimaryKey)>,
    /// The lists (class index, property, owner) whose stored entries are asked.
    lists: Vec<ListKey>,
    /// The updates of class rows: once their locations are known, those that move the row to
    /// another realm or change its key ask for the stored object (`Group::read_ahead`).
    updates: Vec<UpdateAhead>,
}

impl Wanted {
    /// What applying `change` asks for: a class row's key, and its old key when an update
    /// carries one; a list subtable row's lists (of its new and old owner) and where their
    /// owners live (their lists are written there); and the lists of an inserted object of a
    /// class with lists (an object created takes the entries PostgreSQL holds for it). A row
    /// whose key cannot be read is left out (applying it rejects it). Whether it is a row of a
    /// class table, which goes into the store transaction as it is applied.
    fn add(
        &mut self,
        mapper: &Mapper,
        plans: &mut Plans,
        stream: &ChangeStream,
        change: &Change,
    ) -> bool {
        let (relation, rows): (_, [Option<&[ColumnValue]>; 2]) = match change {
            Change::Insert { relation, new, .. } => (relation, [Some(new), None]),
            Change::Update {
                relation, old, new, ..
            } => (relation, [Some(new), old.as_ref().map(|o| &o.values()[..])]),
            Change::Delete { relation, old, .. } => (relation, [Some(old.values()), None]),
            Change::Truncate { .. } => return false,
        };
        let plan = plan_for(plans, mapper, stream, relation);
        match &plan.kind {
            TableKind::Class { class, .. } => {
                if let Change::Update { new, old, .. } = change {
                    self.updates
                        .extend(UpdateAhead::of(mapper, &plan, new, old.as_ref()));
                }
                for values in rows.into_iter().flatten() {
                    let Ok(key) = mapper.key_of(&plan, values) else {
                        continue;
                    };
                    if matches!(change, Change::Insert { .. }) {
                        for property in mapper.schema.classes[*class].list_properties() {
                            self.lists
                                .push((*class, property.name.clone(), key.clone()));
                        }
                    }
                    self.objects.push((*class, key));
                }
                true
            }
            TableKind::List {
                class, property, ..
            } => {
                for values in rows.into_iter().flatten() {
                    let Ok((owner, _, _)) = mapper.list_entry(&plan, values, false) else {
                        continue;
                    };
                    self.lists.push((*class, property.clone(), owner.clone()));
                    self.objects.push((*class, owner));
                }
                false
            }
            TableKind::Marker | TableKind::Ignored => false,
        }
    }
}
