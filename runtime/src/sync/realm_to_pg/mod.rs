//! Realm → PostgreSQL: the store's change feed of every realm matching `realm_regex`, written as
//! SQL transactions with the realm's progress row inside each, so every changeset is applied
//! exactly once across crashes and reconnects.
//!
//! This module owns the follow-write-retry loop ([`RealmToPg::run`]), the bookkeeping tables in
//! schema `pgrealm` ([`ensure_bookkeeping`]), refusals and their compensating store writes, and
//! the setup functions [`create_postgres_db`] and [`apply_realm_schema_changes_to_postgres`].
//! It never applies PostgreSQL's changes to realms (PostgreSQL → realm does, in WAL order), and
//! it skips every changeset whose origin is `postgres`: those carry PostgreSQL's state already.

mod bind;
mod echo;
mod mapping;
mod refusal;
mod setup;
mod sql;
mod writer;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use regex::Regex;
use tokio::sync::{mpsc, watch};

use crate::metrics::Metrics;
use crate::replication::{PgConnectOptions, ReplicationError};
use crate::store::{Changeset, Instruction, RealmPath, Store, StoreError, Subscription};
use crate::sync::rejections::{Direction, RejectionLog};

pub use echo::{ensure_bookkeeping, EchoMark, BOOKKEEPING_DDL, ORIGIN_NAME};
pub use mapping::{MapFn, RealmMapping};
pub use setup::{
    apply_realm_schema_changes_to_postgres, create_postgres_db, CreateDbReport, SchemaReport,
};

use refusal::{compensate, compensated_version, Failure};
use writer::{Item, Outcome, Writer};

/// The origin of store commits that carry PostgreSQL's state (PostgreSQL → realm, and this
/// direction's compensating writes); never written back.
pub const POSTGRES_ORIGIN: &str = "postgres";

/// Why realm → PostgreSQL stopped or a setup step failed.
#[derive(Debug, thiserror::Error)]
pub enum RealmToPgError {
    /// The connection could not be opened, or the URL is not valid.
    #[error(transparent)]
    Connect(#[from] ReplicationError),
    /// A statement failed.
    #[error("{action}: {message}")]
    Sql {
        /// What we were doing.
        action: String,
        /// The server's message with its detail and hint.
        message: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The realm store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A background task ended unexpectedly.
    #[error("a realm → PostgreSQL task failed: {0}; restart the engine")]
    Task(String),
    /// The schema and the database disagree in a way that pgrealm does not fix by itself.
    #[error("{0}")]
    Schema(String),
    /// A changeset could not be written while copying realms into PostgreSQL.
    #[error("copying realm {realm} into PostgreSQL: {reason}")]
    Copy {
        /// The realm.
        realm: String,
        /// PostgreSQL's refusal.
        reason: String,
    },
}

impl RealmToPgError {
    pub(crate) fn sql(action: impl Into<String>, source: tokio_postgres::Error) -> Self {
        RealmToPgError::Sql {
            action: action.into(),
            message: crate::pg::describe(&source),
            source,
        }
    }
}

/// One changeset now committed in PostgreSQL, for [`RealmToPg::on_commit`].
#[derive(Debug, Clone)]
pub struct Applied {
    /// The realm.
    pub realm: RealmPath,
    /// Its version.
    pub version: u64,
    /// When the realm committed it.
    pub committed_at: DateTime<Utc>,
}

/// Called after each SQL commit with the changesets it held.
pub type CommitHook = dyn Fn(&[Applied]) + Send + Sync;

/// Options of [`RealmToPg`].
#[derive(Debug, Clone)]
pub struct RealmToPgOptions {
    /// Which realms to follow (`realm_regex`; matched anywhere in the path, as the original).
    pub realm_regex: Regex,
    /// Realm path → table and extra column values.
    pub mapping: RealmMapping,
    /// Create tables and add columns when a realm gains a class or a property
    /// (`apply_realm_schema_changes_to_postgres`).
    pub apply_schema_changes: bool,
    /// At most this many changesets share one SQL transaction.
    pub max_batch_changesets: usize,
    /// A batch stops growing once it holds this many instructions.
    pub max_batch_instructions: usize,
    /// First wait before reconnecting; doubled up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
}

impl Default for RealmToPgOptions {
    fn default() -> Self {
        RealmToPgOptions {
            realm_regex: Regex::new("").expect("the empty pattern is valid"),
            mapping: RealmMapping::Plain,
            apply_schema_changes: false,
            max_batch_changesets: 512,
            max_batch_instructions: 20_000,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// Realm → PostgreSQL: follows the store and writes to PostgreSQL until shut down.
///
/// ```no_run
/// use pgrealm_runtime::sync::realm_to_pg::{RealmMapping, RealmToPg, RealmToPgOptions};
/// use pgrealm_runtime::template::PathTemplate;
/// # async fn demo(store: pgrealm_runtime::Store) -> Result<(), Box<dyn std::error::Error>> {
/// let options = RealmToPgOptions {
///     realm_regex: regex::Regex::new("^/[^/]+/myRealm$")?,
///     mapping: RealmMapping::template(PathTemplate::parse("/{user_id}/myRealm")?),
///     ..RealmToPgOptions::default()
/// };
/// let (stop, shutdown) = tokio::sync::watch::channel(false);
/// let task = tokio::spawn(RealmToPg::new(store, "postgres://app@db/shop", options)?.run(shutdown));
/// // … later: finish the transaction in hand and return.
/// stop.send(true)?;
/// task.await??;
/// # Ok(()) }
/// ```
pub struct RealmToPg {
    store: Store,
    connect: PgConnectOptions,
    options: RealmToPgOptions,
    metrics: Option<Arc<Metrics>>,
    on_commit: Option<Arc<CommitHook>>,
}

impl std::fmt::Debug for RealmToPg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealmToPg")
            .field("postgres", &self.connect)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl RealmToPg {
    /// Write the realms of `store` to the database at `postgres_url`.
    pub fn new(
        store: Store,
        postgres_url: &str,
        options: RealmToPgOptions,
    ) -> Result<RealmToPg, RealmToPgError> {
        Ok(RealmToPg {
            store,
            connect: PgConnectOptions::from_url(postgres_url)?,
            options,
            metrics: None,
            on_commit: None,
        })
    }

    /// Count written changes and rejections in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Call `hook` after each SQL commit (for lag measurements and tests).
    pub fn on_commit(mut self, hook: impl Fn(&[Applied]) + Send + Sync + 'static) -> Self {
        self.on_commit = Some(Arc::new(hook));
        self
    }

    /// Follow and write until `shutdown` becomes true (or its sender is dropped); then finish
    /// the transaction in hand and return `Ok`. Connection losses are retried with backoff
    /// without losing or repeating a changeset.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), RealmToPgError> {
        let mut backoff = Backoff::new(self.options.min_backoff, self.options.max_backoff);
        let Some(writer) = self.connect(&mut backoff, &mut shutdown, true).await? else {
            return Ok(());
        };
        let mut progress = writer.load_progress().await?;
        // PostgreSQL's own changes are skipped below: they come without their instructions, so
        // a large PostgreSQL transaction is never read whole here.
        let mut subscription =
            Subscription::new(self.options.realm_regex.clone()).headers_only_from(POSTGRES_ORIGIN);
        for (path, version) in &progress {
            subscription = subscription.resume_from(path.clone(), *version);
        }
        let (tx, mut rx) = mpsc::channel::<Changeset>(8192);
        let feed = AbortOnDrop(tokio::spawn(forward(
            self.store.subscribe(subscription),
            tx,
        )));
        let mut log = RejectionLog::open(&self.store, Direction::RealmToPostgres)?;
        let mut compensated: HashMap<RealmPath, u64> = HashMap::new();
        // A compensation mark is stored in the same commit as its rejection: with no rejection
        // recorded there is no mark to read (later ones are remembered as they are made).
        let marks_stored =
            crate::sync::rejections::count(&self.store, Direction::RealmToPostgres)? > 0;
        let mut writer = Some(writer);
        let mut pending: VecDeque<Changeset> = VecDeque::new();
        // After a refused batch, its changesets go one at a time to isolate the bad one.
        let mut one_at_a_time = 0usize;
        loop {
            if pending.is_empty() {
                if *shutdown.borrow() {
                    return Ok(());
                }
                tokio::select! {
                    biased;
                    changed = shutdown.changed() => {
                        if changed.is_err() || *shutdown.borrow() {
                            return Ok(());
                        }
                        continue;
                    }
                    next = rx.recv() => match next {
                        Some(cs) => pending.push_back(cs),
                        None => return Err(RealmToPgError::Task(format!(
                            "the change feed stopped{}", feed_end(&feed))))
                    },
                }
            }
            while pending.len() < self.options.max_batch_changesets * 2 {
                match rx.try_recv() {
                    Ok(cs) => pending.push_back(cs),
                    Err(_) => break,
                }
            }
            pending.retain(|cs| {
                cs.origin != POSTGRES_ORIGIN
                    && cs.version > progress.get(&cs.realm).copied().unwrap_or(0)
            });
            if pending.is_empty() {
                continue;
            }
            let w = match writer.as_mut() {
                Some(w) => w,
                None => match self.connect(&mut backoff, &mut shutdown, false).await? {
                    Some(w) => {
                        let w = writer.insert(w);
                        // A commit may have landed before the connection was lost.
                        progress = match w.load_progress().await {
                            Ok(p) => p,
                            Err(e) => {
                                tracing::warn!("realm → PostgreSQL: {e}");
                                writer = None;
                                continue;
                            }
                        };
                        continue;
                    }
                    None => return Ok(()),
                },
            };
            let n = if one_at_a_time > 0 {
                1
            } else {
                self.batch_len(&pending)
            };
            if self.options.apply_schema_changes && has_schema_change(pending.iter().take(n)) {
                match apply_realm_schema_changes_to_postgres(&w.client, w.schema()).await {
                    Ok(report) => report.log(),
                    Err(e) => {
                        tracing::warn!("realm → PostgreSQL: applying schema changes: {e}");
                    }
                }
                w.forget_catalog();
            }
            let mut items = Vec::with_capacity(n);
            for cs in pending.iter().take(n) {
                let done = match compensated.get(&cs.realm) {
                    Some(v) => *v,
                    None if !marks_stored => 0,
                    None => {
                        let v = compensated_version(&self.store, &cs.realm)?;
                        compensated.insert(cs.realm.clone(), v);
                        v
                    }
                };
                items.push(Item {
                    changeset: cs,
                    progress_only: cs.version <= done,
                });
            }
            match w.write_batch(&items).await {
                Ok(Outcome::Written) => {
                    backoff.reset();
                    let mut applied = Vec::with_capacity(n);
                    let mut changes = 0u64;
                    for cs in pending.drain(..n) {
                        changes += cs.instructions.len() as u64;
                        progress.insert(cs.realm.clone(), cs.version);
                        applied.push(Applied {
                            realm: cs.realm,
                            version: cs.version,
                            committed_at: cs.committed_at,
                        });
                    }
                    one_at_a_time = one_at_a_time.saturating_sub(n);
                    if let Some(m) = &self.metrics {
                        Metrics::add(&m.changes_realm_to_postgres, changes);
                    }
                    if let Some(hook) = &self.on_commit {
                        hook(&applied);
                    }
                }
                Ok(Outcome::AlreadyApplied) => match w.load_progress().await {
                    Ok(p) => progress = p,
                    Err(e) => {
                        tracing::warn!("realm → PostgreSQL: {e}");
                        writer = None;
                    }
                },
                Err(Failure::Refused(reason)) if n > 1 => {
                    tracing::debug!("realm → PostgreSQL: a batch of {n} was refused ({reason}); writing it one changeset at a time");
                    one_at_a_time = n;
                }
                Err(Failure::Refused(reason)) if items[0].progress_only => {
                    // Only the progress row and the mark were left to write: not the data's
                    // fault, but the bookkeeping's (permissions on schema pgrealm).
                    tracing::error!("realm → PostgreSQL: writing pgrealm.progress was refused: {reason}; grant the role INSERT and UPDATE on pgrealm.progress and pgrealm.marker");
                    backoff.wait(&mut shutdown).await;
                }
                Err(Failure::Refused(reason)) => {
                    let cs = pending.front().expect("a batch of one changeset").clone();
                    tracing::warn!(
                        "realm → PostgreSQL: PostgreSQL refused {} version {}: {reason}; returning the realm to PostgreSQL's state",
                        cs.realm, cs.version
                    );
                    match compensate(w, &self.store, &mut log, &cs, &reason).await {
                        Ok(()) => {
                            compensated.insert(cs.realm.clone(), cs.version);
                            if let Some(m) = &self.metrics {
                                Metrics::add(&m.rejections, 1);
                            }
                        }
                        Err(e) => {
                            tracing::warn!("realm → PostgreSQL: compensating: {e}");
                            writer = None;
                            backoff.wait(&mut shutdown).await;
                        }
                    }
                }
                Err(Failure::Retry(e)) => {
                    tracing::warn!("realm → PostgreSQL: {e}; reconnecting");
                    writer = None;
                    if !backoff.wait(&mut shutdown).await {
                        return Ok(());
                    }
                }
            }
            if *shutdown.borrow() {
                return Ok(());
            }
        }
    }

    /// How many changesets from the front of `pending` go into the next transaction.
    fn batch_len(&self, pending: &VecDeque<Changeset>) -> usize {
        let mut instructions = 0;
        let mut n = 0;
        for cs in pending.iter().take(self.options.max_batch_changesets) {
            if n > 0 && instructions + cs.instructions.len() > self.options.max_batch_instructions {
                break;
            }
            instructions += cs.instructions.len();
            n += 1;
        }
        n.max(1)
    }

    /// Connect (retrying with backoff); `None` when shut down while waiting. The first
    /// connection also makes sure the bookkeeping tables exist.
    async fn connect(
        &self,
        backoff: &mut Backoff,
        shutdown: &mut watch::Receiver<bool>,
        first: bool,
    ) -> Result<Option<Writer>, RealmToPgError> {
        loop {
            if *shutdown.borrow() {
                return Ok(None);
            }
            let attempt = async {
                let w = Writer::connect(
                    &self.connect,
                    self.store.schema().clone(),
                    self.options.mapping.clone(),
                )
                .await?;
                if first {
                    ensure_bookkeeping(&w.client).await?;
                }
                Ok::<_, RealmToPgError>(w)
            };
            match attempt.await {
                Ok(w) => {
                    tracing::info!(
                        "realm → PostgreSQL: connected to {} (echo mark: {:?})",
                        self.connect.target(),
                        w.echo_mark()
                    );
                    return Ok(Some(w));
                }
                Err(e) => {
                    tracing::warn!("realm → PostgreSQL: {e}; retrying");
                    if !backoff.wait(shutdown).await {
                        return Ok(None);
                    }
                }
            }
        }
    }
}

fn has_schema_change<'a>(mut changesets: impl Iterator<Item = &'a Changeset>) -> bool {
    changesets.any(|cs| {
        cs.instructions.iter().any(|i| {
            matches!(
                i,
                Instruction::AddClass { .. } | Instruction::AddProperty { .. }
            )
        })
    })
}

/// Move the change feed into the writer's channel; the feed is not cancel-safe, so it runs
/// in its own task and is only ever dropped whole.
async fn forward(mut feed: crate::store::ChangeFeed, tx: mpsc::Sender<Changeset>) {
    loop {
        match feed.next().await {
            Ok(cs) => {
                if tx.send(cs).await.is_err() {
                    return;
                }
            }
            Err(e @ StoreError::Pruned { .. }) => {
                tracing::error!(
                    "realm → PostgreSQL: {e}; that realm is no longer followed (copy it again \
                     with create_postgres_db after deleting its pgrealm.progress row)"
                );
            }
            Err(e) => {
                tracing::error!("realm → PostgreSQL: reading the change feed: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

fn feed_end(feed: &AbortOnDrop) -> &'static str {
    if feed.0.is_finished() {
        " (its task ended)"
    } else {
        ""
    }
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Exponential backoff between reconnection attempts.
#[derive(Debug)]
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    fn reset(&mut self) {
        self.next = self.min;
    }

    /// Sleep; false when shut down meanwhile.
    async fn wait(&mut self, shutdown: &mut watch::Receiver<bool>) -> bool {
        let sleep = self.next;
        self.next = (self.next * 2).min(self.max);
        tokio::select! {
            _ = tokio::time::sleep(sleep) => !*shutdown.borrow(),
            changed = shutdown.changed() => changed.is_ok() && !*shutdown.borrow(),
        }
    }
}
