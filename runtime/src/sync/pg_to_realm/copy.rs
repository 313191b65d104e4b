//! The initial load (`initialize_realm_from_postgres`): every mapped table copied inside the
//! exported snapshot of a newly created slot, streamed (`COPY … TO STDOUT`, text format) and
//! applied through the same mapping as the stream, in chunks of bounded size. Into an embedded
//! store the chunks go into one streamed store transaction, committed with the slot's consistent
//! point as the checkpoint; into a remote object server, each in a commit of its own, the last
//! with the checkpoint (see [`Chunks`]). Streaming resumes exactly after the snapshot: no row
//! missed, none twice.
//!
//! The chunks are pipelined: while one is applied (or committed) on the blocking pool, the
//! next is read and mapped. A load spread over many realms takes larger chunks ([`chunk_rows`]).
//!
//! List entries come only from the list subtables, copied after every class table: each starts
//! with a TRUNCATE (a new generation, every owner's list empty) and writes every owner's list
//! from PostgreSQL's rows, so an object created before reads no entries from the store (in
//! remote mode that was one request per object of a class with lists).
//!
//! A crash before the last commit leaves no checkpoint (a load over an earlier one blanks it
//! first, see `PgToRealm::setup`; embedded, nothing of the load is left either):
//! the next start drops the slot and loads again from a new snapshot (rows are upserts, so the
//! repeat converges).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{pin_mut, TryStreamExt};
use tokio_postgres::Client;

use super::apply::{stream_owner, Group, UpdateAhead, ORIGIN, PATCH_LIMIT};
use super::mapping::{Mapper, TableKind};
use super::PgToRealmError;
use crate::replication::{
    import_snapshot, Change, ColumnValue, Lsn, PgConnectOptions, Relation, RelationColumn,
    ReplicaIdentity, SnapshotSlot, StreamOptions,
};
use crate::store::{CommitInfo, Store, StoreError, StreamingTx};
use crate::sync::rejections::RejectionLog;

/// Rows per chunk of the load (a commit, or a batch of its streamed transaction), at least.
const ROWS_PER_COMMIT: usize = 20_000;

/// Rows per chunk of the load, at most: this bounds the memory a chunk takes (its operations
/// while it is mapped, then their application's buffers: about 250 bytes a row). Over many
/// realms larger chunks were faster; committed one by one, each also rewrote pages all over the
/// objects table, which filled redb's cache: 1,000,000 rows over 10,000 realms loaded at 81,973
/// rows/s with at most 100,000 rows a commit (peak RSS 1,209 MiB), 147,334 with 250,000 (696
/// MiB), 165,616 with 500,000 (558 MiB). BENCHMARKS.md has these figures.
const MAX_ROWS_PER_COMMIT: usize = 250_000;

/// Rows per realm a chunk of the load aims at. A chunk costs something per realm it changes
/// (the B-tree path down to its objects, which sit apart from every other realm's, and, when
/// committed, its next version), so a load spread over many realms
/// (one per user) takes larger chunks: this many rows for each realm changed so far (streamed)
/// or by the last commit, within [`ROWS_PER_COMMIT`]..=[`MAX_ROWS_PER_COMMIT`]. With 10,000
/// realms, commits of 20,000 rows (two per realm) loaded a third as fast as commits of 100,000.
const ROWS_PER_REALM: usize = 64;

/// Rows of a class the store already holds that a remote load locates at once (and whose stored
/// objects it reads at once, for those that move to another realm). It divides every chunk size
/// the load commits ([`chunk_rows`]), so the store is read afresh (after a large overlay)
/// between batches, not between a batch's reading ahead and its rows (which would only read
/// those rows again, one at a time).
const LOCATE_BATCH: usize = 5_000;

/// The rows of the load's next chunk, with `realms` realms changed: see [`ROWS_PER_REALM`]. A
/// multiple of [`LOCATE_BATCH`].
fn chunk_rows(realms: usize) -> usize {
    let rows = realms
        .saturating_mul(ROWS_PER_REALM)
        .clamp(ROWS_PER_COMMIT, MAX_ROWS_PER_COMMIT);
    rows.div_ceil(LOCATE_BATCH) * LOCATE_BATCH
}

/// How the load reports progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Progress {
    /// A progress bar when stderr is a terminal, log lines otherwise.
    #[default]
    Auto,
    /// Log lines only.
    Log,
    /// Nothing.
    Quiet,
}

struct Reporter {
    bar: Option<indicatif::ProgressBar>,
    log: bool,
    rows: u64,
    total: u64,
    started: Instant,
    last_log: Instant,
}

impl Reporter {
    fn new(progress: Progress, total: u64) -> Self {
        let bar = (progress == Progress::Auto && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(total.max(1));
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "initial load {bar:40} {pos}/{len} rows ({per_sec}, eta {eta}) {msg}",
                )
                .expect("a valid template"),
            );
            bar
        });
        Reporter {
            log: bar.is_none() && progress != Progress::Quiet,
            bar,
            rows: 0,
            total,
            started: Instant::now(),
            last_log: Instant::now(),
        }
    }

    fn table(&self, table: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(table.to_owned()),
            None if self.log => tracing::info!(table, "initial load: copying"),
            None => {}
        }
    }

    fn add(&mut self, n: u64) {
        self.rows += n;
        if let Some(bar) = &self.bar {
            bar.set_position(self.rows);
        } else if self.log && self.last_log.elapsed() >= Duration::from_secs(2) {
            self.last_log = Instant::now();
            tracing::info!(
                rows = self.rows,
                estimated_total = self.total,
                "initial load: progress"
            );
        }
    }

    /// Every row is copied; the load's last commit makes it durable (for a large load, a
    /// visible part of its time: every page it wrote goes to disk then).
    fn committing(&self) {
        if let Some(bar) = &self.bar {
            bar.set_message("writing to disk");
        } else if self.log {
            tracing::info!(
                rows = self.rows,
                seconds = self.started.elapsed().as_secs_f64(),
                "initial load: every row copied; writing to disk"
            );
        }
    }

    fn finish(&self) {
        let seconds = self.started.elapsed().as_secs_f64();
        let rows_per_second = (self.rows as f64 / seconds.max(1e-9)).round();
        if let Some(bar) = &self.bar {
            bar.finish_with_message(format!("done in {seconds:.1} s"));
        } else if self.log {
            tracing::info!(
                rows = self.rows,
                seconds,
                rows_per_second,
                "initial load: done"
            );
        }
    }
}

/// What the load did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadReport {
    /// Rows copied (class tables and list subtables).
    pub rows: u64,
    /// Rows refused (kept as rejections).
    pub rejections: u64,
    /// Where streaming starts.
    pub consistent_point: Lsn,
    /// From creating the slot until every row was copied and mapped.
    pub copied_in: Duration,
    /// From then until the load's last commit was durable: the last chunk's apply, then the
    /// commit (into an embedded store, every page the load wrote goes to disk then).
    pub committed_in: Duration,
}

/// Create `slot` with an exported snapshot, copy every mapped table inside it, and store the
/// consistent point as the checkpoint. The slot must not exist.
pub(crate) async fn initial_load(
    pg: &PgConnectOptions,
    store: &Store,
    mapper: &Mapper,
    slot: &str,
    publication: &str,
    progress: Progress,
) -> Result<LoadReport, PgToRealmError> {
    let started = Instant::now();
    let snapshot_slot = SnapshotSlot::create(pg, &StreamOptions::new(slot, publication)).await?;
    let consistent_point = snapshot_slot.consistent_point();
    let sql = pg.connect_sql().await?;
    import_snapshot(&sql, snapshot_slot.snapshot_name()).await?;

    let tables: Vec<String> = mapper.schema.tables().iter().map(|t| t.name()).collect();
    let total: i64 = sql
        .query_one(
            "SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'public' AND c.relname = ANY($1)",
            &[&tables],
        )
        .await
        .map_err(PgToRealmError::sql("estimating the rows to load"))?
        .get(0);
    let mut reporter = Reporter::new(progress, total.max(0) as u64);
    let mut log = RejectionLog::open(store, crate::sync::rejections::Direction::PostgresToRealm)?;
    let mut report = LoadReport {
        rows: 0,
        rejections: 0,
        consistent_point,
        copied_in: Duration::ZERO,
        committed_in: Duration::ZERO,
    };
    let mut group = Group::new(store, slot)?;
    group.fresh_classes = fresh_classes(store, mapper)?;
    group.keep_values = false;
    // The list subtables are copied after the class tables (below), each after a TRUNCATE that
    // empties every owner's list: the objects created before take their entries then.
    group.lists_copied_later = true;
    // The overlay holds the location of every row loaded into a class the store held before
    // (rows of a fresh class are not noted there) until it passes PATCH_LIMIT.
    if group.fresh_classes.contains(&false) {
        group.reserve_overlay((total.max(0) as usize).min(PATCH_LIMIT + MAX_ROWS_PER_COMMIT));
    }
    let mut chunks = if store.remote_url().is_none() {
        Chunks::Streamed {
            // Logged as it goes: the commit then waits for the log's last batch, not for
            // every page the load wrote (see `StreamingTx::log_ahead`).
            idle: Some(
                store
                    .begin_streaming_as(ORIGIN, stream_owner(slot))?
                    .log_ahead(),
            ),
            applying: None,
        }
    } else {
        Chunks::Committed { inflight: None }
    };
    group.begin(consistent_point, None, 0);
    // Room for the first chunk's operations (no more than the tables are estimated to hold).
    let estimated = total.max(0) as usize;
    group.reserve_rows(estimated.min(ROWS_PER_COMMIT));
    // Class tables first, so list entries find their owners.
    let mut ordered: Vec<&String> = tables
        .iter()
        .filter(|t| mapper.schema.class_by_table(t).is_some())
        .collect();
    ordered.extend(
        tables
            .iter()
            .filter(|t| mapper.schema.class_by_table(t).is_none()),
    );
    let mut rows_in_group = 0usize;
    let mut rows_per_commit = ROWS_PER_COMMIT;
    let mut lists_begun = false;
    for table in ordered {
        reporter.table(table);
        let relation = Arc::new(relation_of(&sql, table).await?);
        let type_names = column_types(&sql, table).await?;
        let plan = mapper.plan(&relation, &|oid| type_names.get(&oid).cloned());
        if matches!(plan.kind, TableKind::List { .. }) && !lists_begun {
            lists_begun = true;
            rows_in_group = 0;
            report.rejections += std::mem::take(&mut group.counts).rejections;
            chunks
                .lists_begin(&mut group, mapper, store, &mut log)
                .await?;
            group.begin(consistent_point, None, 0);
        }
        if matches!(plan.kind, TableKind::List { .. }) {
            // Lists are PostgreSQL's whole state: forget entries a previous load left.
            let truncate = Change::Truncate {
                relations: vec![relation.clone()],
                cascade: false,
                restart_identity: false,
            };
            group.change(mapper, &mut log, &plan, &truncate)?;
        }
        let columns = relation
            .columns
            .iter()
            .map(|c| pgrealm_schema::ddl::quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let copy_sql = format!(
            "COPY \"public\".{} ({columns}) TO STDOUT",
            pgrealm_schema::ddl::quote_ident(table)
        );
        let copying = format!("copying table {table}");
        let stream = sql
            .copy_out(copy_sql.as_str())
            .await
            .map_err(PgToRealmError::sql(copying.as_str()))?;
        pin_mut!(stream);
        let mut lines_of = CopyLines::default();
        let width = relation.columns.len();
        // In remote mode, rows of a class the store already holds are located a batch at a
        // time (one `locate_many`) rather than one request each, and the stored objects of
        // those that move to another realm read in one `object_many`.
        let locate_class = match plan.kind {
            TableKind::Class { class, .. }
                if group.reads_ahead() && group.fresh_classes.get(class) != Some(&true) =>
            {
                Some(class)
            }
            _ => None,
        };
        // Rows of a fresh class whose every property has a column go in as records.
        let fields = plan.record_fields.as_ref();
        let mut batch: Vec<Vec<ColumnValue>> = Vec::new();
        let mut ended = false;
        while !ended {
            let chunk = stream
                .try_next()
                .await
                .map_err(|source| PgToRealmError::Sql {
                    context: copying.clone(),
                    source,
                })?;
            match chunk {
                Some(chunk) => {
                    let mut data = lines_of.push(chunk);
                    while let Some(line) = CopyLines::next_line(&mut data) {
                        let values = parse_copy_line(&line, width).map_err(|message| {
                            PgToRealmError::Copy {
                                table: table.clone(),
                                message,
                            }
                        })?;
                        if values.len() != width {
                            return Err(PgToRealmError::Copy {
                                table: table.clone(),
                                message: format!(
                                    "a line has {} fields, expected {width}",
                                    values.len()
                                ),
                            });
                        }
                        batch.push(values);
                    }
                    lines_of.keep(data);
                    if batch.len() < LOCATE_BATCH && locate_class.is_some() {
                        continue;
                    }
                }
                None => ended = true,
            }
            if let Some(class) = locate_class {
                // Each row is applied as an update of the object the realms may hold, and is
                // read ahead as the stream reads one: the rows that move to another realm
                // (their routing columns changed since the realms were loaded) have their
                // stored objects read in one `object_many` too, not one request each.
                let updates: Vec<UpdateAhead> = batch
                    .iter()
                    .filter_map(|values| UpdateAhead::of(mapper, &plan, values, None))
                    .collect();
                let objects = updates.iter().map(|u| (class, u.key.clone())).collect();
                group.read_ahead(mapper, objects, Vec::new(), updates)?;
            }
            let lines = batch.len() as u64;
            for values in batch.drain(..) {
                let loaded = match fields {
                    Some(fields) => group.load_row(mapper, &plan, fields, &values)?,
                    None => false,
                };
                if !loaded {
                    let change = Change::Insert {
                        relation: relation.clone(),
                        new: values,
                    };
                    group.change(mapper, &mut log, &plan, &change)?;
                }
                rows_in_group += 1;
                if rows_in_group >= rows_per_commit {
                    rows_in_group = 0;
                    report.rejections += std::mem::take(&mut group.counts).rejections;
                    let realms = chunks
                        .hand_over(&mut group, mapper, store, &mut log)
                        .await?;
                    if let Some(realms) = realms {
                        rows_per_commit = chunk_rows(realms);
                    }
                    group.begin(consistent_point, None, 0);
                    let left = estimated.saturating_sub(report.rows as usize);
                    group.reserve_rows(left.min(rows_per_commit));
                }
            }
            report.rows += lines;
            reporter.add(lines);
        }
        if !lines_of.is_empty() {
            return Err(PgToRealmError::Copy {
                table: table.clone(),
                message: "the copy ended inside a line".into(),
            });
        }
    }
    sql.batch_execute("COMMIT")
        .await
        .map_err(PgToRealmError::sql("ending the snapshot transaction"))?;
    report.rejections += std::mem::take(&mut group.counts).rejections;
    group.commit(mapper, &mut log, consistent_point)?;
    report.copied_in = started.elapsed();
    reporter.committing();
    chunks.finish(&mut group, store, &mut log).await?;
    report.committed_in = started.elapsed() - report.copied_in;
    reporter.finish();
    // The snapshot is no longer needed; the slot stays and `run` streams from its consistent
    // point.
    drop(snapshot_slot);
    Ok(report)
}

/// A chunk's store commit running on the blocking pool.
type Inflight = tokio::task::JoinHandle<Result<CommitInfo, StoreError>>;

/// A batch applied to the load's streamed transaction on the blocking pool.
type Applying = tokio::task::JoinHandle<Result<StreamingTx, StoreError>>;

/// Where the load's chunks go.
// One per load, and the idle transaction is its large part: boxing it would only add an
// indirection.
#[allow(clippy::large_enum_variant)]
enum Chunks {
    /// An embedded store: into one streamed store transaction ([`StreamingTx`]), committed
    /// once at the end with the checkpoint. Every page of the store is then written once, not
    /// once per chunk (a chunk over many realms touched pages all over the objects table), and
    /// no reader sees part of the load. Holding the store's write lock meanwhile costs nothing:
    /// the engine loads before its object server listens. The transaction is `idle`, or
    /// `applying` a batch while the next is mapped, or the group's (from the list subtables on).
    Streamed {
        idle: Option<StreamingTx>,
        applying: Option<Applying>,
    },
    /// A remote store, which apps keep writing to during the load: a commit per chunk, one in
    /// flight at most (the object server would hold a streamed transaction's write lock for
    /// the whole load).
    Committed { inflight: Option<Inflight> },
}

impl Chunks {
    /// End the group's chunk and hand it over: to the streamed transaction once it has
    /// applied the chunk before, or to a commit after the one in flight. Says how many realms
    /// the transaction (or the commit before) changed, if known, to size the next chunks.
    async fn hand_over(
        &mut self,
        group: &mut Group,
        mapper: &Mapper,
        store: &Store,
        log: &mut RejectionLog,
    ) -> Result<Option<usize>, PgToRealmError> {
        group.end_chunk(mapper, log)?;
        match self {
            Chunks::Streamed { .. } => {
                // From the list subtables on, the group applies its batches itself.
                let Some(streaming) = self.stream(store, log).await? else {
                    return Ok(None);
                };
                let realms = streaming.realms();
                let mut batch = group.take_batch(store);
                if let Chunks::Streamed { applying, .. } = self {
                    *applying = Some(tokio::task::spawn_blocking(move || {
                        streaming.apply(&mut batch)
                    }));
                }
                Ok(Some(realms))
            }
            Chunks::Committed { inflight } => {
                let before = finish(inflight.take(), store, log).await?;
                let handover = group.take_commit(store);
                *inflight = Some(tokio::task::spawn_blocking(move || handover.commit()));
                if group.overlay_is_large() {
                    finish(inflight.take(), store, log).await?;
                    group.refresh(store)?;
                }
                Ok(before.map(|info| info.versions.len()))
            }
        }
    }

    /// Before the first list subtable: its rows locate their owners, which the group must then
    /// read. Streamed, the group takes the transaction, every class row applied to it. Else,
    /// when some class was fresh (its rows are not in the overlay, see
    /// `Group::fresh_classes`), commit and start afresh from the store; the overlay holds the
    /// others' rows, or the store once the overlay grew large.
    async fn lists_begin(
        &mut self,
        group: &mut Group,
        mapper: &Mapper,
        store: &Store,
        log: &mut RejectionLog,
    ) -> Result<(), PgToRealmError> {
        match self {
            Chunks::Streamed { .. } => {
                self.hand_over(group, mapper, store, log).await?;
                if let Some(streaming) = self.stream(store, log).await? {
                    group.stream_into(streaming);
                }
            }
            Chunks::Committed { inflight } => {
                if group.fresh_classes.contains(&true) {
                    group.end_chunk(mapper, log)?;
                    finish(inflight.take(), store, log).await?;
                    commit_now(group, store, log).await?;
                    group.refresh(store)?;
                }
            }
        }
        Ok(())
    }

    /// The streamed transaction, once it has applied the batch in hand, unless the group
    /// holds it (`None`, as for a remote store's commits).
    async fn stream(
        &mut self,
        store: &Store,
        log: &mut RejectionLog,
    ) -> Result<Option<StreamingTx>, PgToRealmError> {
        let Chunks::Streamed { idle, applying } = self else {
            return Ok(None);
        };
        if let Some(streaming) = idle.take() {
            return Ok(Some(streaming));
        }
        let Some(applying) = applying.take() else {
            return Ok(None);
        };
        match applying
            .await
            .map_err(|e| PgToRealmError::Task(e.to_string()))?
        {
            Ok(streaming) => Ok(Some(streaming)),
            Err(e) => {
                log.reload(store)?;
                Err(e.into())
            }
        }
    }

    /// Commit what the group holds (its last operations and the checkpoint), with every
    /// chunk before it, and return once it is durable.
    async fn finish(
        mut self,
        group: &mut Group,
        store: &Store,
        log: &mut RejectionLog,
    ) -> Result<(), PgToRealmError> {
        match &mut self {
            Chunks::Streamed { .. } => {
                if let Some(streaming) = self.stream(store, log).await? {
                    group.stream_into(streaming);
                }
            }
            Chunks::Committed { inflight } => {
                finish(inflight.take(), store, log).await?;
            }
        }
        commit_now(group, store, log).await
    }
}

/// Commit what the group holds, on the blocking pool, and return once it is durable (nothing
/// else in flight).
async fn commit_now(
    group: &mut Group,
    store: &Store,
    log: &mut RejectionLog,
) -> Result<(), PgToRealmError> {
    let handover = group.take_commit(store);
    let committing = tokio::task::spawn_blocking(move || handover.commit());
    finish(Some(committing), store, log).await?;
    Ok(())
}

/// Wait for the commit in flight, if any, and say what it committed.
async fn finish(
    inflight: Option<Inflight>,
    store: &Store,
    log: &mut RejectionLog,
) -> Result<Option<CommitInfo>, PgToRealmError> {
    let Some(inflight) = inflight else {
        return Ok(None);
    };
    let result = inflight
        .await
        .map_err(|e| PgToRealmError::Task(e.to_string()))?;
    match result {
        Ok(info) => Ok(Some(info)),
        Err(e) => {
            log.reload(store)?;
            Err(e.into())
        }
    }
}

/// For each class of the schema, whether the store holds no object of it in any realm.
fn fresh_classes(store: &Store, mapper: &Mapper) -> Result<Vec<bool>, StoreError> {
    let snapshot = store.snapshot()?;
    if snapshot.realms()?.is_empty() {
        // A first load: no realm yet (on a remote store, one request for every class).
        return Ok(vec![true; mapper.schema.classes.len()]);
    }
    mapper
        .schema
        .classes
        .iter()
        .map(|class| Ok(!snapshot.holds_any(&class.name)?))
        .collect()
}

/// The shape of `public.<table>` as a pgoutput Relation would give it.
async fn relation_of(sql: &Client, table: &str) -> Result<Relation, PgToRealmError> {
    let rows = sql
        .query(
            "SELECT a.attname::text, a.atttypid, a.atttypmod, \
                    coalesce(a.attnum = ANY(i.indkey), false) \
             FROM pg_catalog.pg_attribute a \
             JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             LEFT JOIN pg_catalog.pg_index i ON i.indrelid = c.oid AND i.indisprimary \
             WHERE n.nspname = 'public' AND c.relname = $1 AND a.attnum > 0 \
               AND NOT a.attisdropped AND a.attgenerated = '' \
             ORDER BY a.attnum",
            &[&table],
        )
        .await
        .map_err(PgToRealmError::sql(format!(
            "reading the columns of {table}"
        )))?;
    Ok(Relation {
        id: 0,
        namespace: "public".into(),
        name: table.to_owned(),
        replica_identity: ReplicaIdentity::Default,
        columns: rows
            .iter()
            .map(|row| RelationColumn {
                is_key: row.get(3),
                name: row.get(0),
                type_oid: row.get(1),
                type_modifier: row.get(2),
            })
            .collect(),
    })
}

/// `format_type` of every column type of `public.<table>`, by oid.
async fn column_types(sql: &Client, table: &str) -> Result<HashMap<u32, String>, PgToRealmError> {
    let rows = sql
        .query(
            "SELECT DISTINCT a.atttypid, pg_catalog.format_type(a.atttypid, NULL) \
             FROM pg_catalog.pg_attribute a \
             JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'public' AND c.relname = $1 AND a.attnum > 0",
            &[&table],
        )
        .await
        .map_err(PgToRealmError::sql(format!(
            "reading the column types of {table}"
        )))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The lines of a `COPY … TO STDOUT` stream, cut from its chunks without copying them.
///
/// PostgreSQL sends one row per CopyData message, so a chunk is normally whole lines and is
/// used as it is; only a line split across chunks is gathered into the buffer.
#[derive(Debug, Default)]
struct CopyLines {
    /// The start of a line whose end has not arrived yet.
    partial: BytesMut,
}

impl CopyLines {
    /// The data to cut lines from: `chunk`, after the partial line the previous chunk left.
    fn push(&mut self, chunk: Bytes) -> Bytes {
        if self.partial.is_empty() {
            return chunk;
        }
        self.partial.extend_from_slice(&chunk);
        self.partial.split().freeze()
    }

    /// The next whole line of `data` (without its newline), taken off its front.
    fn next_line(data: &mut Bytes) -> Option<Bytes> {
        let end = data.iter().position(|b| *b == b'\n')?;
        let line = data.split_to(end);
        data.advance(1);
        Some(line)
    }

    /// Keep what is left of `data` (a line without its end yet) for the next chunk.
    fn keep(&mut self, data: Bytes) {
        self.partial.extend_from_slice(&data);
    }

    /// Whether no partial line is kept.
    fn is_empty(&self) -> bool {
        self.partial.is_empty()
    }
}

/// One line of `COPY … TO STDOUT` text format (without its newline) into column values. A
/// field without escapes is a slice of `line` (no copy).
pub(crate) fn parse_copy_line(line: &Bytes, width: usize) -> Result<Vec<ColumnValue>, String> {
    let mut out = Vec::with_capacity(width);
    let mut start = 0;
    for field in line.split(|b| *b == b'\t') {
        let range = start..start + field.len();
        start = range.end + 1;
        if field == b"\\N" {
            out.push(ColumnValue::Null);
            continue;
        }
        if !field.contains(&b'\\') {
            out.push(ColumnValue::Text(line.slice(range)));
            continue;
        }
        let mut value = Vec::with_capacity(field.len());
        let mut i = 0;
        while i < field.len() {
            let b = field[i];
            if b != b'\\' {
                value.push(b);
                i += 1;
                continue;
            }
            let Some(&next) = field.get(i + 1) else {
                return Err("a line ends with a lone backslash".into());
            };
            i += 2;
            match next {
                b'b' => value.push(8),
                b'f' => value.push(12),
                b'n' => value.push(b'\n'),
                b'r' => value.push(b'\r'),
                b't' => value.push(b'\t'),
                b'v' => value.push(11),
                b'0'..=b'7' => {
                    let mut n = u32::from(next - b'0');
                    let mut digits = 1;
                    while digits < 3 && i < field.len() && (b'0'..=b'7').contains(&field[i]) {
                        n = n * 8 + u32::from(field[i] - b'0');
                        i += 1;
                        digits += 1;
                    }
                    value.push((n & 0xff) as u8);
                }
                b'x' => {
                    let mut n = 0u32;
                    let mut digits = 0;
                    while digits < 2 && i < field.len() && field[i].is_ascii_hexdigit() {
                        n = n * 16 + (field[i] as char).to_digit(16).expect("a hex digit");
                        i += 1;
                        digits += 1;
                    }
                    if digits == 0 {
                        value.push(b'x');
                    } else {
                        value.push(n as u8);
                    }
                }
                other => value.push(other),
            }
        }
        out.push(ColumnValue::Text(Bytes::from(value)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_grow_with_the_realms_a_commit_changed_within_their_bounds() {
        // A few realms: the smallest chunk.
        assert_eq!(chunk_rows(0), ROWS_PER_COMMIT);
        assert_eq!(chunk_rows(8), ROWS_PER_COMMIT);
        // 64 rows for each realm the last commit changed, in whole locate batches.
        assert_eq!(chunk_rows(1_000), 65_000);
        // One realm per user: the largest chunk, however many.
        assert_eq!(chunk_rows(10_000), MAX_ROWS_PER_COMMIT);
        assert_eq!(chunk_rows(usize::MAX), MAX_ROWS_PER_COMMIT);
        for realms in [0, 1, 313, 1_000, 1_563, 20_000] {
            assert_eq!(chunk_rows(realms) % LOCATE_BATCH, 0, "{realms} realms");
        }
    }

    fn text(v: &ColumnValue) -> &[u8] {
        match v {
            ColumnValue::Text(b) => b,
            other => panic!("not text: {other:?}"),
        }
    }

    #[test]
    fn copy_text_lines_unescape_exactly() {
        let values = parse_copy_line(
            &Bytes::from_static(b"1\t\\N\ta\\tb\\\\c\\nd\t\\101\\x42\t"),
            5,
        )
        .unwrap();
        assert_eq!(values.len(), 5);
        assert_eq!(text(&values[0]), b"1");
        assert_eq!(values[1], ColumnValue::Null);
        assert_eq!(text(&values[2]), b"a\tb\\c\nd");
        assert_eq!(text(&values[3]), b"AB");
        assert_eq!(text(&values[4]), b"");
        assert!(parse_copy_line(&Bytes::from_static(b"x\\"), 1).is_err());
        // Every field, the first and the last included, is cut at its own bounds.
        let values = parse_copy_line(&Bytes::from_static(b"\tab\t\\N\tcd"), 4).unwrap();
        assert_eq!(values.len(), 4);
        assert_eq!(text(&values[0]), b"");
        assert_eq!(text(&values[1]), b"ab");
        assert_eq!(values[2], ColumnValue::Null);
        assert_eq!(text(&values[3]), b"cd");
        let one = parse_copy_line(&Bytes::from_static(b"only"), 1).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(text(&one[0]), b"only");
        // Escapes: the other control characters, octal of 1 to 3 digits, `\x` without digits.
        let values =
            parse_copy_line(&Bytes::from_static(b"\\b\\f\\r\\v\\7\\0128\\xg\\x4a"), 1).unwrap();
        assert_eq!(text(&values[0]), b"\x08\x0c\r\x0b\x07\n8xgJ");
    }

    #[test]
    fn copy_lines_are_cut_across_chunks() {
        let mut lines = CopyLines::default();
        let mut seen = Vec::new();
        for chunk in ["1\ta\n2\tb", "b\n", "3\t", "c\n4\td\n"] {
            let mut data = lines.push(Bytes::from_static(chunk.as_bytes()));
            while let Some(line) = CopyLines::next_line(&mut data) {
                seen.push(String::from_utf8(line.to_vec()).unwrap());
            }
            lines.keep(data);
        }
        assert!(lines.is_empty());
        assert_eq!(seen, ["1\ta", "2\tbb", "3\tc", "4\td"]);
        // A chunk ending inside a line leaves it kept.
        let mut data = lines.push(Bytes::from_static(b"5\te"));
        assert_eq!(CopyLines::next_line(&mut data), None);
        lines.keep(data);
        assert!(!lines.is_empty());
    }
}
