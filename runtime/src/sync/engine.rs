//! The one engine: both sync directions and the embedded object server in one process — or,
//! with `realm.url` (remote mode), both directions against a remote object server's store
//! through its admin API ([`Store::connect_remote`]), with no server of its own.
//!
//! Start order matters: realm → PostgreSQL's bookkeeping tables (`pgrealm.progress`,
//! `pgrealm.marker`) exist before PostgreSQL → realm builds its publication, so the marker rows
//! that identify the engine's own transactions are streamed. Stopping asks every part to finish
//! the transaction in hand, confirm and return; the server finishes requests in flight.

use std::net::SocketAddr;
use std::sync::Arc;

use regex::Regex;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use pgrealm_schema::Schema;

use crate::auth::Keys;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::replication::PgConnectOptions;
use crate::server::{Server, ServerOptions};
use crate::store::{Store, StoreOptions};
use crate::sync::pg_to_realm::{PgToRealm, PgToRealmOptions, PgToRealmStats};
use crate::sync::realm_to_pg::{
    apply_realm_schema_changes_to_postgres, create_postgres_db, ensure_bookkeeping, RealmMapping,
    RealmToPg, RealmToPgOptions,
};

/// Why the engine could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The configuration cannot run the engine.
    #[error("{0}")]
    Config(String),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The keys could not be read or created.
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    /// PostgreSQL → realm failed.
    #[error("PostgreSQL → realm: {0}")]
    PgToRealm(#[from] crate::sync::pg_to_realm::PgToRealmError),
    /// Realm → PostgreSQL failed.
    #[error("realm → PostgreSQL: {0}")]
    RealmToPg(#[from] crate::sync::realm_to_pg::RealmToPgError),
    /// Connecting to PostgreSQL failed.
    #[error(transparent)]
    Replication(#[from] crate::replication::ReplicationError),
    /// The object server could not listen.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A part of the engine panicked.
    #[error("an engine task failed: {0}")]
    Task(String),
}

/// A running engine; [`RunningEngine::stop`] stops it cleanly.
#[derive(Debug)]
pub struct RunningEngine {
    /// The object server's address: the embedded server's, or in remote mode the remote
    /// server's (as resolved at start).
    pub addr: SocketAddr,
    /// The store the engine syncs (a remote one in remote mode).
    pub store: Store,
    /// The embedded server's keys (admin token, user tokens); `None` in remote mode, where
    /// the keys live with the remote server.
    pub keys: Option<Keys>,
    /// Where this process listens (`realm.listen`): the embedded object server, or in remote
    /// mode only `/healthz` and `/metrics`.
    pub listen_addr: SocketAddr,
    /// The process's metrics.
    pub metrics: Arc<Metrics>,
    /// PostgreSQL → realm's counters.
    pub pg_to_realm: Arc<PgToRealmStats>,
    stop: watch::Sender<bool>,
    tasks: Vec<(&'static str, JoinHandle<Result<(), EngineError>>)>,
}

/// Open the store of the embedded object server (`realm.data_dir`, `realm.log_retention`).
pub fn open_store(schema: &Schema, config: &Config) -> Result<Store, crate::store::StoreError> {
    Store::open(
        &config.realm.data_dir,
        schema.clone(),
        StoreOptions {
            log_retention: config.realm.log_retention,
            ..StoreOptions::default()
        },
    )
}

/// The store the configuration names: the remote object server's when `realm.url` is set
/// (its admin token from `PGREALM_ADMIN_TOKEN` or `realm.admin_token_file`), else the embedded
/// one in `realm.data_dir`.
pub async fn store_for(schema: &Schema, config: &Config) -> Result<Store, EngineError> {
    let Some(url) = config.realm.url.clone() else {
        return Ok(open_store(schema, config)?);
    };
    let token = given_admin_token(config)?.ok_or_else(|| {
        EngineError::Config(
            "realm.url names a remote object server: give its admin token (keys/admin.token in \
             its data_dir) with realm.admin_token_file or PGREALM_ADMIN_TOKEN"
                .into(),
        )
    })?;
    let schema = schema.clone();
    // Connecting blocks on the network: off the async threads.
    tokio::task::spawn_blocking(move || Store::connect_remote(&url, &token, schema))
        .await
        .map_err(|e| EngineError::Task(e.to_string()))?
        .map_err(EngineError::from)
}

/// The socket address of a remote object server's `http://host:port` URL.
async fn remote_addr(url: &str) -> Result<SocketAddr, EngineError> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| EngineError::Config(format!("realm.url = {url}: {e}")))?;
    let host = uri.host().unwrap_or_default().to_owned();
    let port = uri.port_u16().unwrap_or(80);
    tokio::net::lookup_host((host.as_str(), port))
        .await
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| EngineError::Config(format!("realm.url = {url}: cannot resolve {host}")))
}

/// The admin token the operator gives: `PGREALM_ADMIN_TOKEN`, else `realm.admin_token_file`;
/// `None` lets the server use (or create) `<data_dir>/keys/admin.token`.
pub(crate) fn given_admin_token(config: &Config) -> Result<Option<String>, EngineError> {
    if let Ok(t) = std::env::var("PGREALM_ADMIN_TOKEN") {
        return Ok(Some(t));
    }
    match &config.realm.admin_token_file {
        Some(path) => std::fs::read_to_string(path)
            .map(|t| Some(t.trim().to_owned()))
            .map_err(|e| {
                EngineError::Config(format!(
                    "realm.admin_token_file {}: cannot read it: {e}",
                    path.display()
                ))
            }),
        None => Ok(None),
    }
}

/// Start the engine: set up both directions (creating the database, applying schema changes
/// and loading the realms as the configuration asks), then run them and the object server.
pub async fn start(schema: &Schema, config: &Config) -> Result<RunningEngine, EngineError> {
    let url = config.postgres.url.clone().ok_or_else(|| {
        EngineError::Config(
            "no PostgreSQL to sync with: set [postgres] url in pgrealm.toml, or PGREALM_POSTGRES_URL".into(),
        )
    })?;
    let store = store_for(schema, config).await?;
    let keys = match store.remote_url() {
        Some(remote) => {
            tracing::info!(
                url = remote,
                "remote mode: syncing the object server at {remote}; no embedded object server"
            );
            None
        }
        None => Some(Keys::load_or_create(
            &config.realm.data_dir,
            given_admin_token(config)?,
        )?),
    };
    let metrics = Arc::new(Metrics::default());
    let realm_regex = Regex::new(&config.sync.realm_regex)
        .map_err(|e| EngineError::Config(format!("sync.realm_regex: {e}")))?;
    let mapping = RealmMapping::template(config.realm_path_template());

    if config.sync.create_postgres_db {
        let report = create_postgres_db(&url, &store, &realm_regex, &mapping).await?;
        if report.created_database {
            tracing::info!("created the PostgreSQL database");
        }
        report.schema.log();
    }
    let pg = PgConnectOptions::from_url(&url)?;
    {
        let client = pg.connect_sql().await?;
        if config.sync.apply_realm_schema_changes_to_postgres && !config.sync.create_postgres_db {
            apply_realm_schema_changes_to_postgres(&client, schema)
                .await?
                .log();
        }
        // Preflight: the live catalog must hold the compiled schema (after any additive
        // changes above); a difference is named in plain words rather than found row by row.
        let catalog = crate::pg::read_catalog(&client, "public")
            .await
            .map_err(|e| EngineError::Config(format!("reading the PostgreSQL catalog: {e}")))?;
        let problems: Vec<String> = pgrealm_schema::catalog::check_catalog(schema, &catalog)
            .into_iter()
            .filter(|p| !p.is_warning())
            .map(|p| format!("  - {p}"))
            .collect();
        if !problems.is_empty() {
            return Err(EngineError::Config(format!(
                "the database does not match the compiled schema:\n{}\n(set sync.apply_realm_schema_changes_to_postgres = true to add missing tables and columns, or migrate by hand)",
                problems.join("\n")
            )));
        }
        ensure_bookkeeping(&client).await?;
    }

    let pg_to_realm = PgToRealm::new(
        pg,
        PgToRealmOptions::from_config(config),
        store.clone(),
        metrics.clone(),
    );
    let setup = pg_to_realm.setup().await?;
    tracing::info!(checkpoint = %setup.checkpoint, slot_created = setup.slot_created, "PostgreSQL → realm ready");
    let pg_stats = pg_to_realm.stats();

    let realm_to_pg = RealmToPg::new(
        store.clone(),
        &url,
        RealmToPgOptions {
            realm_regex,
            mapping,
            apply_schema_changes: config.sync.apply_realm_schema_changes_to_postgres,
            ..RealmToPgOptions::default()
        },
    )?
    .with_metrics(metrics.clone());

    // What this process serves on realm.listen: the embedded object server, or in remote mode
    // only /healthz and /metrics (the realms' API is on the remote server).
    let listener = tokio::net::TcpListener::bind(&config.realm.listen)
        .await
        .map_err(|source| EngineError::Listen {
            addr: config.realm.listen.clone(),
            source,
        })?;
    let listen_addr = listener
        .local_addr()
        .map_err(|source| EngineError::Listen {
            addr: config.realm.listen.clone(),
            source,
        })?;
    let (addr, router) = match (&keys, store.remote_url()) {
        (Some(keys), _) => {
            let readable = config
                .realm
                .readable
                .iter()
                .map(|r| Regex::new(r))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| EngineError::Config(format!("realm.readable: {e}")))?;
            let server = Server::new(
                store.clone(),
                keys.clone(),
                metrics.clone(),
                ServerOptions {
                    readable,
                    ..ServerOptions::default()
                },
            );
            (listen_addr, server.router())
        }
        (None, remote) => {
            tracing::info!("remote mode: /healthz and /metrics on http://{listen_addr}");
            (
                remote_addr(remote.unwrap_or_default()).await?,
                crate::server::health_and_metrics_router(metrics.clone()),
            )
        }
    };

    let (stop, stopped) = watch::channel(false);
    let mut tasks: Vec<(&'static str, JoinHandle<Result<(), EngineError>>)> = Vec::new();
    let s = stopped.clone();
    tasks.push((
        "PostgreSQL → realm",
        tokio::spawn(async move { pg_to_realm.run(s).await.map_err(EngineError::from) }),
    ));
    let s = stopped.clone();
    tasks.push((
        "realm → PostgreSQL",
        tokio::spawn(async move { realm_to_pg.run(s).await.map_err(EngineError::from) }),
    ));
    let s = stopped.clone();
    let monitor_pg = PgConnectOptions::from_url(&url)?;
    let (monitor_metrics, slot) = (metrics.clone(), config.postgres.slot.clone());
    tasks.push((
        "slot monitor",
        tokio::spawn(async move {
            monitor_slot(monitor_pg, slot, monitor_metrics, s).await;
            Ok(())
        }),
    ));
    let mut s = stopped;
    tasks.push((
        "object server",
        tokio::spawn(async move {
            let shutdown = async move {
                while !*s.borrow_and_update() {
                    if s.changed().await.is_err() {
                        break;
                    }
                }
            };
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
                .map_err(|source| EngineError::Listen {
                    addr: "the object server".into(),
                    source,
                })
        }),
    ));
    Ok(RunningEngine {
        addr,
        store,
        keys,
        listen_addr,
        metrics,
        pg_to_realm: pg_stats,
        stop,
        tasks,
    })
}

impl RunningEngine {
    /// Whether a part of the engine has ended (with an error, since parts only end when asked).
    pub fn any_finished(&self) -> bool {
        self.tasks.iter().any(|(_, t)| t.is_finished())
    }

    /// Ask every part to finish what it has in hand and wait for them; the first error wins.
    pub async fn stop(self) -> Result<(), EngineError> {
        let _ = self.stop.send(true);
        let mut first = None;
        for (name, task) in self.tasks {
            let result = match task.await {
                Ok(r) => r,
                Err(e) => Err(EngineError::Task(format!("{name}: {e}"))),
            };
            if let Err(e) = result {
                tracing::error!("{name} stopped with an error: {e}");
                first.get_or_insert(e);
            }
        }
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Run until `shutdown` resolves or a part fails, then stop cleanly.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), EngineError> {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {
                    if self.any_finished() {
                        tracing::error!("a part of the engine ended; stopping the rest");
                        break;
                    }
                }
            }
        }
        self.stop().await
    }
}

/// Every second, read how far the slot is behind the server's WAL and how much WAL it holds
/// back, for `/metrics`. A failed read only skips a sample: the sync directions report their
/// own connection problems.
async fn monitor_slot(
    pg: PgConnectOptions,
    slot: String,
    metrics: Arc<Metrics>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut client = None;
    loop {
        if *stopped.borrow() {
            return;
        }
        if client.is_none() {
            client = pg.connect_sql().await.ok();
        }
        if let Some(c) = &client {
            let row = c
                .query_opt(
                    "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint, \
                            (pg_current_wal_lsn() - restart_lsn)::bigint \
                     FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
                    &[&slot],
                )
                .await;
            match row {
                Ok(Some(row)) => {
                    Metrics::set(
                        &metrics.replication_lag_bytes,
                        row.get::<_, Option<i64>>(0).unwrap_or(0),
                    );
                    Metrics::set(
                        &metrics.slot_retained_wal_bytes,
                        row.get::<_, Option<i64>>(1).unwrap_or(0),
                    );
                }
                Ok(None) => {}
                Err(_) => client = None,
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            _ = stopped.changed() => {}
        }
    }
}
