//! The change stream: one logical replication session on a slot, read as transactions.
//!
//! Owns the session's state machine — Begin, its Origin, the changes, Commit — and the position
//! reported to the server. It streams: a transaction's changes are handed out one at a time as
//! they arrive, so a 1,000,000-row transaction takes the memory of the replication client's
//! bounded event buffer, not of the transaction. It never reports a position the consumer has
//! not confirmed as durable, except a keepalive's position while nothing is in flight and
//! everything delivered is confirmed (what PostgreSQL's own subscriber does), so an idle slot
//! does not hold WAL.
//!
//! Exactly-once is the consumer's: the server resumes at the slot's `confirmed_flush_lsn`, which
//! may be before what the consumer holds; transactions that committed before
//! [`StreamOptions::resume_after`] are skipped here by comparing LSNs.

use std::sync::Arc;
use std::time::Duration;

use pgwire_replication::{ReplicationClient, ReplicationEvent};

use super::assembler::Assembler;
use super::connect::PgConnectOptions;
use super::error::ReplicationError;
use super::pgoutput::{LogicalMessage, OldTuple, Origin, PgTimestamp, Relation, TupleData};
use super::relations::RelationCache;
use super::slot::check_slot_name;
use super::Lsn;

/// How to open a [`ChangeStream`].
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// The logical slot (pgoutput) to read.
    pub slot: String,
    /// The publication whose tables are streamed.
    pub publication: String,
    /// The end LSN of the last transaction the consumer holds durably (`Lsn::ZERO` when it
    /// holds none): transactions committed before it are skipped, and the server is told it.
    pub resume_after: Lsn,
    /// How often the replication client reports its position. pgwire-replication's default of
    /// 10 s would keep the slot's `confirmed_flush_lsn` seconds behind; tens of milliseconds
    /// keep it within the issue's 100 ms of the last applied commit.
    pub status_interval: Duration,
    /// How many raw events the replication client buffers ahead of the consumer; with one row
    /// per event, this bounds the memory of a transaction of any size. Few by default: a
    /// consumer that stops reading for a moment (the sync engine while a bulk group commits)
    /// then soon stops the client from reading the socket too, so the server's sends collect
    /// into large ones instead of one send and wakeup per message.
    pub buffer_events: usize,
}

impl StreamOptions {
    /// Options for `slot` and `publication`, from the beginning of the slot.
    pub fn new(slot: impl Into<String>, publication: impl Into<String>) -> Self {
        StreamOptions {
            slot: slot.into(),
            publication: publication.into(),
            resume_after: Lsn::ZERO,
            status_interval: Duration::from_millis(20),
            buffer_events: 256,
        }
    }

    /// Resume after the transaction whose commit ended at `lsn`.
    pub fn resume_after(mut self, lsn: Lsn) -> Self {
        self.resume_after = lsn;
        self
    }
}

/// The start of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionBegin {
    /// The LSN of its commit record (known up front: pgoutput v1 sends committed transactions).
    pub final_lsn: Lsn,
    /// Commit time, microseconds since 2000-01-01 UTC.
    pub commit_time: PgTimestamp,
    /// Transaction id.
    pub xid: u32,
    /// The replication origin it was written under, if any (how pgrealm recognises its own
    /// writes).
    pub origin: Option<Origin>,
}

/// The end of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransactionCommit {
    /// The LSN of the commit record.
    pub commit_lsn: Lsn,
    /// The end of the commit record: store it with the applied transaction, pass it to
    /// [`ChangeStream::confirm`] once that is durable, and as
    /// [`StreamOptions::resume_after`] on restart.
    pub end_lsn: Lsn,
    /// Commit time, microseconds since 2000-01-01 UTC.
    pub commit_time: PgTimestamp,
}

/// One row change (or a truncate) inside a transaction, with its table's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A row inserted.
    Insert {
        /// The table.
        relation: Arc<Relation>,
        /// The new row, one value per column of `relation`.
        new: TupleData,
    },
    /// A row updated.
    Update {
        /// The table.
        relation: Arc<Relation>,
        /// The old key when the key changed (or the old row with REPLICA IDENTITY FULL).
        old: Option<OldTuple>,
        /// The new row; TOASTed values that did not change are `UnchangedToast`.
        new: TupleData,
    },
    /// A row deleted.
    Delete {
        /// The table.
        relation: Arc<Relation>,
        /// The old key (or row).
        old: OldTuple,
    },
    /// Tables emptied.
    Truncate {
        /// The tables.
        relations: Vec<Arc<Relation>>,
        /// `CASCADE` was given.
        cascade: bool,
        /// `RESTART IDENTITY` was given.
        restart_identity: bool,
    },
}

/// What [`ChangeStream::next_event`] yields: transactions as Begin, Change…, Commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// A transaction starts.
    Begin(TransactionBegin),
    /// A change of the current transaction.
    Change(Change),
    /// A `pg_logical_emit_message` message: inside the current transaction when
    /// `transactional`, otherwise between transactions.
    Message(LogicalMessage),
    /// The current transaction ends.
    Commit(TransactionCommit),
}

/// A logical replication session on one slot, yielding whole transactions in commit order.
///
/// ```no_run
/// # async fn run() -> Result<(), pgrealm_runtime::replication::ReplicationError> {
/// use pgrealm_runtime::replication::{ChangeStream, PgConnectOptions, StreamEvent, StreamOptions};
/// let pg = PgConnectOptions::from_url("postgres://sync:secret@db:5432/app?sslmode=require")?;
/// let mut stream = ChangeStream::connect(&pg, &StreamOptions::new("pgrealm", "pgrealm")).await?;
/// while let Some(event) = stream.next_event().await? {
///     match event {
///         StreamEvent::Begin(_) | StreamEvent::Message(_) => {}
///         StreamEvent::Change(change) => { /* apply into the open store write */ }
///         StreamEvent::Commit(commit) => {
///             /* commit the store write with commit.end_lsn, wait until durable, then: */
///             stream.confirm(commit.end_lsn);
///         }
///     }
/// }
/// # Ok(()) }
/// ```
pub struct ChangeStream {
    client: ReplicationClient,
    state: Assembler,
    /// The last position handed to the replication client.
    reported: Lsn,
}

impl std::fmt::Debug for ChangeStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeStream")
            .field("state", &self.state)
            .field("reported", &self.reported)
            .finish_non_exhaustive()
    }
}

impl ChangeStream {
    /// Open a session on an existing slot and start streaming after
    /// [`StreamOptions::resume_after`] (or the slot's confirmed position, if later).
    pub async fn connect(
        pg: &PgConnectOptions,
        options: &StreamOptions,
    ) -> Result<Self, ReplicationError> {
        check_slot_name(&options.slot)?;
        let mut client = ReplicationClient::connect_gated(replication_config(pg, options))
            .await
            .map_err(ReplicationError::stream(format!(
                "cannot open a replication connection to {}",
                pg.target()
            )))?;
        let rows = client
            .simple_query(&format!(
                "SELECT confirmed_flush_lsn FROM pg_catalog.pg_replication_slots \
                 WHERE slot_name = '{}'",
                options.slot
            ))
            .await
            .map_err(ReplicationError::stream(format!(
                "cannot open a replication connection to {} (the role needs REPLICATION)",
                pg.target()
            )))?;
        let slot_position = match rows.first() {
            None => return Err(ReplicationError::SlotMissing(options.slot.clone())),
            Some(row) => row
                .first()
                .cloned()
                .flatten()
                .and_then(|text| Lsn::parse(&String::from_utf8_lossy(&text)).ok())
                .unwrap_or(Lsn::ZERO),
        };
        let confirmed = slot_position.max(options.resume_after);
        // Reported from the first status update on: never less than the slot already has.
        client.update_applied_lsn(confirmed);
        Self::start(client, options.resume_after, confirmed).await
    }

    /// Send START_REPLICATION on a gated client and wait until the server accepted it.
    pub(crate) async fn start(
        mut client: ReplicationClient,
        resume_after: Lsn,
        confirmed: Lsn,
    ) -> Result<Self, ReplicationError> {
        let context = "the server refused START_REPLICATION (does the publication exist?)";
        client
            .start()
            .await
            .map_err(ReplicationError::stream(context))?;
        client
            .wait_started()
            .await
            .map_err(ReplicationError::stream(context))?;
        Ok(ChangeStream {
            client,
            state: Assembler::new(resume_after, confirmed),
            reported: confirmed,
        })
    }

    /// The next event, in commit order; `None` once the stream was stopped.
    ///
    /// Cancellation-safe: dropping the future loses nothing.
    pub async fn next_event(&mut self) -> Result<Option<StreamEvent>, ReplicationError> {
        loop {
            if let Some(event) = self.state.pop() {
                return Ok(Some(event));
            }
            let received = self
                .client
                .recv()
                .await
                .map_err(ReplicationError::stream("the replication stream failed"))?;
            match received {
                None | Some(ReplicationEvent::StoppedAt { .. }) => return Ok(None),
                Some(event) => {
                    self.state.handle(event)?;
                    self.sync_position();
                }
            }
        }
    }

    /// Tell the server everything up to `lsn` (a [`TransactionCommit::end_lsn`]) is durable in
    /// the consumer; call it only after the apply of that transaction is durable. Cheap and
    /// monotonic; the report reaches the server within [`StreamOptions::status_interval`].
    pub fn confirm(&mut self, lsn: Lsn) {
        self.state.confirm(lsn);
        self.sync_position();
    }

    /// The position reported (or about to be reported) to the server.
    pub fn confirmed(&self) -> Lsn {
        self.reported
    }

    /// Tables and types announced on this stream so far.
    pub fn relations(&self) -> &RelationCache {
        self.state.relations()
    }

    /// End the session cleanly (CopyDone). A position confirmed within the last
    /// [`StreamOptions::status_interval`] may not have reached the server yet; that is safe,
    /// as the next session skips what the consumer holds by [`StreamOptions::resume_after`].
    ///
    /// Keep calling [`next_event`](Self::next_event) while the stream is open: keepalives are
    /// confirmed as they are read, and PostgreSQL's own shutdown waits for that confirmation.
    pub async fn shutdown(mut self) -> Result<(), ReplicationError> {
        self.client
            .shutdown()
            .await
            .map_err(ReplicationError::stream(
                "closing the replication stream failed",
            ))
    }

    fn sync_position(&mut self) {
        let confirmed = self.state.confirmed();
        if confirmed > self.reported {
            self.reported = confirmed;
            self.client.update_applied_lsn(confirmed);
        }
    }
}

pub(crate) fn replication_config(
    pg: &PgConnectOptions,
    options: &StreamOptions,
) -> pgwire_replication::ReplicationConfig {
    pg.replication_config(&options.slot, &options.publication)
        .with_start_lsn(options.resume_after)
        .with_ack_lsn(options.resume_after)
        .with_status_interval(options.status_interval)
        // While idle, answer the server at least this often (it drops a silent client after
        // wal_sender_timeout, 60 s by default).
        .with_wakeup_interval(Duration::from_secs(1))
        .with_buffer_size(options.buffer_events.max(1))
}
