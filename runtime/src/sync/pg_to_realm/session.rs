//! One replication session of [`PgToRealm::run`]: connect, stream, apply into groups, hand each
//! group's store commit to the blocking pool, confirm it once durable — until shutdown or the
//! first error. A session never ends with a commit in flight: the checkpoint it would write must
//! be settled before the next session reads it, or transactions could be applied twice. In
//! remote mode it reads ahead the events already received, so that the locations of their rows
//! are asked in batches (`read_ahead.rs`).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::sync::watch;

use super::apply::{self, Group};
use super::mapping::{self, Mapper, TableKind, TablePlan};
use super::read_ahead::{Plans, ReadAhead};
use super::types::{load_enum_labels, stream_type_name};
use super::{stored_checkpoint, PgToRealm, PgToRealmError};
use crate::metrics::Metrics;
use crate::replication::{
    Change, ChangeStream, ColumnValue, Lsn, Relation, ReplicationError, StreamEvent, StreamOptions,
};
use crate::store::{CommitInfo, StoreError};
use crate::sync::rejections::{Direction, RejectionLog};

impl PgToRealm {
    /// One replication session: from connecting to shutdown or the first error.
    pub(super) async fn session(
        &self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), PgToRealmError> {
        let slot = &self.options.slot;
        // On a remote object server, a stream this slot's previous engine left open holds the
        // write lock until its idle timeout, and every ordinary commit would wait for it: free
        // it now. Before reading the checkpoint, which it might have moved.
        let (store, owner) = (self.store.clone(), apply::stream_owner(slot));
        let released = tokio::task::spawn_blocking(move || store.release_stream(&owner))
            .await
            .map_err(|e| PgToRealmError::Task(e.to_string()))??;
        if released {
            tracing::warn!(
                slot,
                "aborted the streamed write a previous engine left open"
            );
        }
        let resume =
            stored_checkpoint(&self.store, slot)?.ok_or_else(|| PgToRealmError::NotSetUp {
                slot: slot.clone(),
                lsn: Lsn::ZERO,
            })?;
        let sql = self.pg.connect_sql().await?;
        let mut mapper = self.mapper.clone();
        let custom_names = self.custom_type_names();
        mapper.custom.enum_labels = load_enum_labels(&sql, &custom_names).await?;
        let mut options =
            StreamOptions::new(slot.clone(), self.options.publication.clone()).resume_after(resume);
        options.status_interval = self.options.status_interval;
        if self.store.remote_url().is_some() {
            // Reading ahead batches its requests from the events already received: keep the
            // client's buffer as large as before for it.
            options.buffer_events = 4_096;
        }
        let stream = ChangeStream::connect(&self.pg, &options).await?;
        self.stats
            .confirmed_lsn
            .fetch_max(resume.as_u64(), Ordering::Relaxed);
        let mut group = Group::new(&self.store, slot)?;
        group.stream_after = self.options.stream_after_changes;
        group.expect_checkpoint(resume);
        let mut session = Session {
            stream,
            log: RejectionLog::open(&self.store, Direction::PostgresToRealm)?,
            group,
            inflight: None,
            hold_reads: false,
        };
        let result = self
            .stream_loop(&mut session, shutdown, &sql, &mut mapper, &custom_names)
            .await;
        // A commit handed over must be finished (durable or failed) before anyone reads the
        // checkpoint again, or a restart could apply its transactions a second time.
        let finished = self.finish_inflight(&mut session).await;
        result.and(finished)?;
        // The replication client sends a raised position at its next status interval, and its
        // shutdown (CopyDone) does not send a pending one first: give it two intervals, so the
        // server learns the last confirmed commit before the session ends.
        tokio::time::sleep(self.options.status_interval * 2).await;
        if let Err(e) = session.stream.shutdown().await {
            tracing::debug!(error = %e, "closing the replication stream");
        }
        Ok(())
    }

    async fn stream_loop(
        &self,
        s: &mut Session,
        shutdown: &mut watch::Receiver<bool>,
        sql: &tokio_postgres::Client,
        mapper: &mut Mapper,
        custom_names: &[String],
    ) -> Result<(), PgToRealmError> {
        let mut plans: Plans = HashMap::new();
        // The events received and not yet applied: on an embedded store at most the one peeked
        // at after a commit; in remote mode also those read ahead.
        let mut ahead = ReadAhead::default();
        let mut stopping = *shutdown.borrow();
        let mut labels_reloaded: Option<Instant> = None;
        loop {
            if stopping && !s.group.in_transaction() {
                if !s.group.is_empty() {
                    self.hand_over(s).await?;
                }
                return self.finish_inflight(s).await;
            }
            let listen = !s.group.in_transaction() && !stopping;
            let event = match ahead.pop() {
                Some(event) => {
                    if s.group.reads_ahead() {
                        // Events read ahead came without the runtime's budget: spend it here,
                        // one unit an event as the stream's own receive does, so the task still
                        // yields (and can be stopped) as often as without reading ahead.
                        tokio::task::coop::consume_budget().await;
                    }
                    event
                }
                None => tokio::select! {
                    biased;
                    done = async { (&mut s.inflight.as_mut().expect("guarded").handle).await },
                        if s.inflight.is_some() =>
                    {
                        let inflight = s.inflight.take().expect("guarded");
                        self.finished(s, inflight, done)?;
                        if !s.group.in_transaction() && !s.group.is_empty() {
                            // What arrived while that commit ran goes now, as one commit;
                            // unless more is waiting already and the group has room: then the
                            // group takes it, and the next transaction's end hands it over.
                            // Under a backlog, groups so stay as large as their bounds allow,
                            // however fast a commit runs.
                            if !stopping && !self.group_full(s) {
                                if let Some(next) = s.stream.next_event().now_or_never() {
                                    ahead.push(next?);
                                    continue;
                                }
                            }
                            self.hand_over(s).await?;
                        }
                        continue;
                    }
                    event = s.stream.next_event(), if !(s.hold_reads && s.inflight.is_some()) => {
                        ahead.received();
                        event?
                    }
                    changed = shutdown.changed(), if listen => {
                        if changed.is_err() || *shutdown.borrow() {
                            stopping = true;
                        }
                        continue;
                    }
                },
            };
            let Some(event) = event else {
                return Err(ReplicationError::Protocol {
                    lsn: s.stream.confirmed(),
                    message: "the server ended the replication stream".into(),
                }
                .into());
            };
            match event {
                StreamEvent::Begin(begin) => {
                    if s.inflight.is_none() && s.group.is_empty() {
                        // Everything handed over is durable: read the store afresh.
                        s.group.refresh(&self.store)?;
                    }
                    let origin = begin.origin.as_ref().map(|o| o.name.as_str());
                    s.group.begin(begin.final_lsn, origin, begin.commit_time);
                }
                StreamEvent::Change(change) => {
                    ahead.before_change(
                        &mut s.stream,
                        &mut s.group,
                        mapper,
                        &mut plans,
                        &change,
                    )?;
                    let relations: Vec<Arc<Relation>> = match &change {
                        Change::Insert { relation, .. }
                        | Change::Update { relation, .. }
                        | Change::Delete { relation, .. } => vec![relation.clone()],
                        Change::Truncate { relations, .. } => relations.clone(),
                    };
                    for relation in relations {
                        let mut plan = plan_for(&mut plans, mapper, &s.stream, &relation);
                        if let Some(type_name) = unknown_label(&plan, &change) {
                            // A label added since the labels were read: read them again (at
                            // most once a second), then decide.
                            if labels_reloaded.is_none_or(|t| t.elapsed() > Duration::from_secs(1))
                            {
                                labels_reloaded = Some(Instant::now());
                                tracing::info!(type_name, "re-reading enum labels");
                                mapper.custom.enum_labels =
                                    load_enum_labels(sql, custom_names).await?;
                                plans.clear();
                                plan = plan_for(&mut plans, mapper, &s.stream, &relation);
                            }
                        }
                        s.group.change(mapper, &mut s.log, &plan, &change)?;
                    }
                    if s.group.wants_streaming() {
                        // The store transaction it streams into takes the write lock the
                        // commit in flight holds.
                        self.finish_inflight(s).await?;
                        s.group.start_streaming(&self.store)?;
                    }
                }
                StreamEvent::Message(_) => {}
                StreamEvent::Commit(commit) => {
                    s.group.commit(mapper, &mut s.log, commit.end_lsn)?;
                    if !self.group_full(s) && !stopping && !s.group.is_streaming() {
                        // More already waiting? Then it joins this store commit.
                        if !ahead.is_empty() {
                            continue;
                        }
                        if let Some(next) = s.stream.next_event().now_or_never() {
                            ahead.push(next?);
                            continue;
                        }
                        if s.inflight.is_some() {
                            // A commit is running: this group is handed over the moment that
                            // one is durable (above), with whatever arrives meanwhile, and the
                            // stream is read on instead of waiting.
                            continue;
                        }
                        // Caught up with the stream. After a large group, the stream is read
                        // again once its commit is durable (see `Session::hold_reads`). Not on
                        // a remote store: reading ahead batches its requests from the events
                        // read meanwhile.
                        s.hold_reads = self.store.remote_url().is_none()
                            && s.group.counts.changes >= BULK_GROUP_CHANGES;
                    }
                    self.hand_over(s).await?;
                }
            }
        }
    }

    /// Whether the group reached a bound of its own (`group_max_changes`, `group_max_delay`).
    fn group_full(&self, s: &Session) -> bool {
        s.group.counts.changes >= self.options.group_max_changes
            || s.group.started.elapsed() >= self.options.group_max_delay
    }

    /// Start committing the group on the blocking pool, after the previous commit finished
    /// (commits stay in order); the stream goes on into the next group meanwhile.
    async fn hand_over(&self, s: &mut Session) -> Result<(), PgToRealmError> {
        self.finish_inflight(s).await?;
        let streamed = s.group.is_streaming();
        let mut handover = s.group.take_commit(&self.store);
        let counts = std::mem::take(&mut handover.counts);
        let end_lsn = handover.end_lsn.take();
        let first_commit_time = handover.first_commit_time.take();
        s.inflight = Some(InFlight {
            handle: tokio::task::spawn_blocking(move || handover.commit()),
            counts,
            end_lsn,
            first_commit_time,
            streamed,
        });
        if streamed || s.group.overlay_is_large() {
            // Keep the carried state bounded: wait for the commit, then start afresh. A
            // streamed group carries no overlay of what it wrote: the next reads need the
            // store as that commit leaves it.
            self.finish_inflight(s).await?;
            s.group.refresh(&self.store)?;
        }
        Ok(())
    }

    /// Wait for the commit in flight, if any, and confirm it.
    async fn finish_inflight(&self, s: &mut Session) -> Result<(), PgToRealmError> {
        if let Some(mut inflight) = s.inflight.take() {
            let done = (&mut inflight.handle).await;
            self.finished(s, inflight, done)?;
        }
        Ok(())
    }

    /// A commit finished: once durable, confirm its end LSN and count it.
    fn finished(
        &self,
        s: &mut Session,
        inflight: InFlight,
        done: Result<
            Result<crate::store::CommitInfo, crate::store::StoreError>,
            tokio::task::JoinError,
        >,
    ) -> Result<(), PgToRealmError> {
        s.hold_reads = false;
        let result = done.map_err(|e| PgToRealmError::Task(e.to_string()))?;
        if let Err(e) = result {
            s.log.reload(&self.store)?;
            return Err(e.into());
        }
        if let Some(lsn) = inflight.end_lsn {
            s.stream.confirm(lsn);
            self.stats
                .confirmed_lsn
                .fetch_max(lsn.as_u64(), Ordering::Relaxed);
        }
        let counts = inflight.counts;
        let stats = &self.stats;
        stats
            .transactions
            .fetch_add(counts.transactions, Ordering::Relaxed);
        stats.changes.fetch_add(counts.changes, Ordering::Relaxed);
        stats
            .rejections
            .fetch_add(counts.rejections, Ordering::Relaxed);
        stats.echoes.fetch_add(counts.echoes, Ordering::Relaxed);
        stats.store_commits.fetch_add(1, Ordering::Relaxed);
        if inflight.streamed {
            stats.streamed_commits.fetch_add(1, Ordering::Relaxed);
        }
        Metrics::add(&self.metrics.changes_postgres_to_realm, counts.changes);
        Metrics::add(&self.metrics.rejections, counts.rejections);
        if let Some(commit_time) = inflight.first_commit_time {
            Metrics::set(
                &self.metrics.replication_lag_millis,
                lag_millis(commit_time),
            );
        }
        Ok(())
    }
}

/// One replication session's state.
struct Session {
    stream: ChangeStream,
    log: RejectionLog,
    group: Group,
    /// The store commit running on the blocking pool, at most one.
    inflight: Option<InFlight>,
    /// Read no event while `inflight` runs: set when a group of at least
    /// [`BULK_GROUP_CHANGES`] was handed over with nothing else waiting. A stream read the
    /// moment each message arrives costs the walsender a send and a wakeup a message, and
    /// keeps every group to one transaction; left to fill the socket while the commit runs,
    /// it comes in large reads, and the next group takes all of it. Never set for a remote
    /// store (measured only embedded; its reading ahead wants the events read meanwhile).
    hold_reads: bool,
}

/// Changes in a group past which the stream counts as a bulk one (see `Session::hold_reads`).
/// The lag workload's single-row transactions stay far below, so their reads are never held.
const BULK_GROUP_CHANGES: u64 = 1_000;

/// A store commit in flight, and what to confirm and count once it is durable.
struct InFlight {
    handle: tokio::task::JoinHandle<Result<CommitInfo, StoreError>>,
    counts: apply::GroupCounts,
    end_lsn: Option<Lsn>,
    first_commit_time: Option<i64>,
    streamed: bool,
}

/// Milliseconds from a PostgreSQL commit time (µs since 2000-01-01 UTC) to now.
fn lag_millis(commit_time: i64) -> i64 {
    const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;
    let now = chrono::Utc::now().timestamp_micros();
    (now - (commit_time + PG_EPOCH_UNIX_MICROS)) / 1000
}

pub(super) fn plan_for(
    plans: &mut Plans,
    mapper: &Mapper,
    stream: &ChangeStream,
    relation: &Arc<Relation>,
) -> Arc<TablePlan> {
    if let Some((known, plan)) = plans.get(&relation.id) {
        if Arc::ptr_eq(known, relation) {
            return plan.clone();
        }
    }
    let plan = Arc::new(mapper.plan(relation, &stream_type_name(stream.relations())));
    plans.insert(relation.id, (relation.clone(), plan.clone()));
    plan
}

/// The type of an enum label in `change` that the loaded labels do not know.
fn unknown_label(plan: &TablePlan, change: &Change) -> Option<String> {
    let new = match change {
        Change::Insert { new, .. } | Change::Update { new, .. } => new,
        _ => return None,
    };
    let columns: Vec<&mapping::ColumnPlan> = match &plan.kind {
        TableKind::Class { columns, .. } => columns.iter().collect(),
        TableKind::List { item, .. } => vec![item],
        _ => return None,
    };
    columns.into_iter().find_map(|column| {
        let (type_name, labels) = column.enum_labels.as_ref()?;
        let text = new.get(column.index).and_then(ColumnValue::as_text)?;
        (!labels.contains(text)).then(|| type_name.clone())
    })
}
