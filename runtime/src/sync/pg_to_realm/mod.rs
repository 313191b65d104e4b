//! PostgreSQL → realm: the logical replication stream applied to the realm store, exactly once.
//!
//! Owns the setup of this direction (preflight, publication, slot, `reset_postgres_replication_slot`,
//! `initialize_realm_from_postgres`) and the run loop: each PostgreSQL transaction becomes part
//! of one atomic store commit across every realm it maps to, with its commit's end LSN stored in
//! that same commit (store metadata `postgres/<slot>/lsn`); the LSN is confirmed to the server
//! only after that commit is durable, and a restart resumes after the stored LSN.
//!
//! Group commit: consecutive transactions that are already waiting in the stream, or that
//! arrive while the previous store commit runs, share one store commit (bounded by [`PgToRealmOptions::group_max_changes`] and
//! [`PgToRealmOptions::group_max_delay`]); a transaction is never split, and nothing is confirmed
//! or visible to readers before the commit holding it is durable, so no reader sees a version a
//! crash could take back. Commits are pipelined: while one runs on the blocking pool, the next
//! transactions are applied into the next write transaction (reading through the overlay of what
//! is still in flight); commits stay in order, and a session never ends with one in flight.
//! A transaction too large to hold in memory is applied to one store transaction as it streams
//! in ([`crate::store::StreamingTx`]) and committed once at its end, like any other.
//!
//! Bad rows (out of range, NULL into a required property, an invalid realm path, an unknown enum
//! label, unparsable text, a custom type configured as another realm type) are rejections,
//! recorded in the same store commit (`crate::sync::rejections`) and counted; the stream goes on.
//! A later update of the row carries its whole new tuple and heals it — except columns the
//! update did not carry because their TOASTed value did not change: when the realm does not hold
//! the row (it was rejected before), those values are unknown, so the update is rejected too
//! (saying so) rather than writing NULL or guessing; the first update that sets those columns
//! heals the row. A routing column that is an unchanged TOAST value keeps the row where it is.
//!
//! It never writes to PostgreSQL (realm → PostgreSQL does) and never decides conflicts: it applies
//! every committed transaction in WAL order, including the engine's own (counted as echoes).

mod apply;
mod copy;
mod error;
mod mapping;
mod read_ahead;
mod route;
mod session;
mod types;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

pub use apply::{checkpoint_key, stored_checkpoint, ORIGIN};
pub use copy::{LoadReport, Progress};
pub use error::PgToRealmError;
pub use route::{PgRow, RealmRouter, RouteFn};
pub use types::CustomTypes;

use mapping::Mapper;
use types::load_enum_labels;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::replication::{
    drop_slot, ensure_publication, ensure_slot, preflight, slot_info, Lsn, PgConnectOptions,
    QualifiedTable, ReplicationError,
};
use crate::store::{Store, StoreError};
use crate::template::PathTemplate;

/// The replication origin realm → PostgreSQL writes under; transactions carrying it (or a row of
/// `pgrealm.marker`) are the engine's own, counted as echoes (sync.md, decision 2).
pub const ECHO_ORIGIN: &str = "pgrealm";

/// The options of this direction.
#[derive(Debug, Clone)]
pub struct PgToRealmOptions {
    /// The logical slot.
    pub slot: String,
    /// The publication (mapped tables, list subtables, and `pgrealm.marker` when it exists).
    pub publication: String,
    /// Which realm each row belongs to.
    pub router: RealmRouter,
    /// Drop and recreate the slot and the checkpoint at setup.
    pub reset_postgres_replication_slot: bool,
    /// Load the realms from PostgreSQL's contents when the store has no checkpoint (or after a
    /// reset).
    pub initialize_realm_from_postgres: bool,
    /// `[custom_postgres_types]`: PostgreSQL type name → realm type (`mood = "string"`).
    pub custom_postgres_types: BTreeMap<String, String>,
    /// A store commit closes once it holds this many row changes (at a transaction boundary).
    pub group_max_changes: u64,
    /// … or once it has been open this long (at a transaction boundary).
    pub group_max_delay: Duration,
    /// A PostgreSQL transaction with more store operations (about one per row change) than this
    /// is applied to the store as it streams in (one store transaction held open, written in batches, committed at the
    /// transaction's end), so memory stays bounded whatever its size.
    pub stream_after_changes: usize,
    /// How often the position is reported to the server.
    pub status_interval: Duration,
    /// Progress reporting of the initial load.
    pub progress: Progress,
}

impl PgToRealmOptions {
    /// Options with pgrealm's defaults.
    pub fn new(
        slot: impl Into<String>,
        publication: impl Into<String>,
        router: RealmRouter,
    ) -> Self {
        PgToRealmOptions {
            slot: slot.into(),
            publication: publication.into(),
            router,
            reset_postgres_replication_slot: false,
            initialize_realm_from_postgres: false,
            custom_postgres_types: BTreeMap::new(),
            group_max_changes: 20_000,
            group_max_delay: Duration::from_millis(20),
            stream_after_changes: 10_000,
            status_interval: Duration::from_millis(20),
            progress: Progress::Auto,
        }
    }

    /// The options a configuration file gives (the router is its `realm_path` template).
    pub fn from_config(config: &Config) -> Self {
        let mut options = PgToRealmOptions::new(
            config.postgres.slot.clone(),
            config.postgres.publication.clone(),
            RealmRouter::Template(config.realm_path_template()),
        );
        options.reset_postgres_replication_slot = config.sync.reset_postgres_replication_slot;
        options.initialize_realm_from_postgres = config.sync.initialize_realm_from_postgres;
        options.custom_postgres_types = config.custom_postgres_types.clone();
        options
    }

    /// Route every row with a path template such as `/{user_id}/myRealm`.
    pub fn template(template: &str) -> Result<RealmRouter, PgToRealmError> {
        PathTemplate::parse(template)
            .map(RealmRouter::Template)
            .map_err(|e| PgToRealmError::Config(e.to_string()))
    }
}

/// Counters of this direction, readable while it runs (tests, `status`).
#[derive(Debug, Default)]
pub struct PgToRealmStats {
    /// PostgreSQL transactions applied.
    pub transactions: AtomicU64,
    /// Row changes applied (rejected ones included).
    pub changes: AtomicU64,
    /// Changes rejected.
    pub rejections: AtomicU64,
    /// Transactions that were the engine's own writes coming back.
    pub echoes: AtomicU64,
    /// Store commits made.
    pub store_commits: AtomicU64,
    /// Store commits that were streamed (see [`PgToRealmOptions::stream_after_changes`]).
    pub streamed_commits: AtomicU64,
    /// The checkpoint confirmed last (an LSN as u64).
    pub confirmed_lsn: AtomicU64,
    /// Reconnections after a lost connection.
    pub reconnects: AtomicU64,
}

/// What [`PgToRealm::setup`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupReport {
    /// The slot was created now.
    pub slot_created: bool,
    /// The initial load, when it ran.
    pub load: Option<LoadReport>,
    /// Where streaming will resume.
    pub checkpoint: Lsn,
}

/// PostgreSQL → realm.
///
/// ```no_run
/// # async fn run(store: pgrealm_runtime::Store) -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use pgrealm_runtime::metrics::Metrics;
/// use pgrealm_runtime::replication::PgConnectOptions;
/// use pgrealm_runtime::sync::pg_to_realm::{PgToRealm, PgToRealmOptions};
///
/// let pg = PgConnectOptions::from_url("postgres://sync:secret@db/app")?;
/// let router = PgToRealmOptions::template("/{user_id}/myRealm")?;
/// let options = PgToRealmOptions::new("pgrealm", "pgrealm", router);
/// let sync = PgToRealm::new(pg, options, store, Arc::new(Metrics::default()));
/// sync.setup().await?;
/// let (stop, stopped) = tokio::sync::watch::channel(false);
/// let task = tokio::spawn(sync.run(stopped));
/// // … later:
/// stop.send(true)?;
/// task.await??;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PgToRealm {
    pg: PgConnectOptions,
    options: PgToRealmOptions,
    store: Store,
    mapper: Mapper,
    metrics: Arc<Metrics>,
    stats: Arc<PgToRealmStats>,
}

impl PgToRealm {
    /// This direction for `store` (whose schema is the mapped schema).
    pub fn new(
        pg: PgConnectOptions,
        options: PgToRealmOptions,
        store: Store,
        metrics: Arc<Metrics>,
    ) -> Self {
        let mapper = Mapper {
            schema: store.schema().clone(),
            router: options.router.clone(),
            custom: CustomTypes {
                targets: options.custom_postgres_types.clone(),
                enum_labels: HashMap::new(),
            },
        };
        PgToRealm {
            pg,
            options,
            store,
            mapper,
            metrics,
            stats: Arc::new(PgToRealmStats::default()),
        }
    }

    /// The counters of this direction.
    pub fn stats(&self) -> Arc<PgToRealmStats> {
        self.stats.clone()
    }

    /// The tables this direction streams: every class table and list subtable.
    pub fn tables(&self) -> Vec<QualifiedTable> {
        self.mapper
            .schema
            .tables()
            .iter()
            .map(|t| QualifiedTable::public(t.name()))
            .collect()
    }

    /// Preflight, the publication and the slot; the reset and the initial load when asked.
    /// Run it at every start, before [`run`](Self::run).
    pub async fn setup(&self) -> Result<SetupReport, PgToRealmError> {
        let sql = self.pg.connect_sql().await?;
        let slot = &self.options.slot;
        let tables = self.tables();
        preflight(&sql, slot, &tables).await?;
        let mut published = tables.clone();
        let marker: bool = sql
            .query_one("SELECT to_regclass('pgrealm.marker') IS NOT NULL", &[])
            .await
            .map_err(PgToRealmError::sql("looking for pgrealm.marker"))?
            .get(0);
        if marker {
            published.push(QualifiedTable::new("pgrealm", "marker"));
        }
        ensure_publication(&sql, &self.options.publication, &published).await?;

        let stored = stored_checkpoint(&self.store, slot)?;
        let reset = self.options.reset_postgres_replication_slot;
        if reset {
            drop_slot(&sql, slot).await?;
        }
        let mut mapper = self.mapper.clone();
        mapper.custom.enum_labels = load_enum_labels(&sql, &self.custom_type_names()).await?;
        let slot_missing = slot_info(&sql, slot).await?.is_none();
        if slot_missing && stored.is_some() && !reset {
            // The slot was dropped behind pgrealm's back: changes since the checkpoint are gone
            // from the WAL it kept.
            tracing::warn!(
                slot,
                "the replication slot is gone but the store has a checkpoint: changes made \
                 meanwhile were not streamed; {}",
                if self.options.initialize_realm_from_postgres {
                    "loading the realms again from PostgreSQL"
                } else {
                    "set initialize_realm_from_postgres to load them again"
                }
            );
        }
        if self.options.initialize_realm_from_postgres
            && (reset || stored.is_none() || slot_missing)
        {
            // A slot without a checkpoint is a load that never finished: start it over.
            drop_slot(&sql, slot).await?;
            if stored.is_some() {
                // The new slot starts past the old checkpoint: were the load cut short, the next
                // start must load again, not stream from the new slot as if from the old
                // checkpoint (what lies between would be lost).
                let mut tx = self.store.begin_write(ORIGIN);
                tx.set_metadata(checkpoint_key(slot), Vec::new());
                tokio::task::spawn_blocking(move || tx.commit())
                    .await
                    .map_err(|e| PgToRealmError::Task(e.to_string()))??;
            }
            let load = copy::initial_load(
                &self.pg,
                &self.store,
                &mapper,
                slot,
                &self.options.publication,
                self.options.progress,
            )
            .await?;
            Metrics::add(&self.metrics.rejections, load.rejections);
            Metrics::add(&self.stats.rejections, load.rejections);
            return Ok(SetupReport {
                slot_created: true,
                load: Some(load),
                checkpoint: load.consistent_point,
            });
        }
        let slot_created = ensure_slot(&sql, slot).await?;
        let checkpoint = match stored {
            Some(lsn) if !reset && !slot_created => lsn,
            _ => {
                // A new (or reset) slot starts at its own position; record that as the
                // checkpoint so `run` knows setup happened.
                let lsn = slot_info(&sql, slot)
                    .await?
                    .and_then(|info| info.confirmed_flush_lsn)
                    .unwrap_or(Lsn::ZERO);
                let mut tx = self.store.begin_write(ORIGIN);
                tx.set_metadata(checkpoint_key(slot), lsn.to_pg_string().into_bytes());
                tokio::task::spawn_blocking(move || tx.commit())
                    .await
                    .map_err(|e| PgToRealmError::Task(e.to_string()))??;
                lsn
            }
        };
        Ok(SetupReport {
            slot_created,
            load: None,
            checkpoint,
        })
    }

    fn custom_type_names(&self) -> Vec<String> {
        let mut names: HashSet<String> =
            self.options.custom_postgres_types.keys().cloned().collect();
        for class in &self.mapper.schema.classes {
            for property in &class.properties {
                if let Some(custom) = &property.custom_type {
                    names.insert(custom.clone());
                }
            }
        }
        names.into_iter().collect()
    }

    /// Stream and apply until `shutdown` becomes `true` (or its sender is dropped); then finish
    /// the transaction in hand, commit, confirm and return `Ok`. A lost connection is retried
    /// with backoff, resuming after the stored checkpoint, losing nothing.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), PgToRealmError> {
        let mut backoff = Duration::from_millis(100);
        loop {
            let started = Instant::now();
            match self.session(&mut shutdown).await {
                Ok(()) => return Ok(()),
                Err(e) if retryable(&e) => {
                    if started.elapsed() > Duration::from_secs(10) {
                        backoff = Duration::from_millis(100);
                    }
                    tracing::warn!(error = %e, retry_in = ?backoff, "PostgreSQL → realm: connection lost, reconnecting");
                    self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => {}
                    }
                    if *shutdown.borrow() {
                        return Ok(());
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn retryable(e: &PgToRealmError) -> bool {
    matches!(
        e,
        PgToRealmError::Replication(
            ReplicationError::Stream { .. }
                | ReplicationError::Connect { .. }
                | ReplicationError::Sql { .. }
                | ReplicationError::Protocol { .. }
        ) | PgToRealmError::Sql { .. }
            // Remote mode: the object server restarted or the network dropped. The session
            // starts again from the checkpoint the server holds, so a commit whose answer was
            // lost is skipped if it landed and applied if it did not.
            | PgToRealmError::Store(StoreError::RemoteUnreachable { .. })
            // Remote mode: a streamed write could not open (the stream of an engine that died
            // holds the server's write lock until its idle timeout) or was lost; nothing of it
            // was committed.
            | PgToRealmError::Store(StoreError::RemoteStream { .. })
            // Another commit moved the checkpoint since the session read it (a dead engine's
            // last commit landing late on a remote server): nothing of this one was written,
            // and the next session resumes after the checkpoint the store now holds.
            | PgToRealmError::Store(StoreError::MetadataChanged { .. })
    )
}
