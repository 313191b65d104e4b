//! Remote mode with a PostgreSQL transaction too large to hold in memory: the engine streams it
//! into the object server, and neither side holds the whole transaction. Alone in its test
//! binary, so the process's peak resident set measures this one transaction.
//!
//! The object server runs in this process (see `remote_support`), so the growth measured is the
//! engine's and the server's together: the engine's batch in flight and the server's open store
//! transaction, whose dirty pages its cache bounds. Either side holding every row (the engine
//! sending one commit, or the server collecting the stream before applying it) would grow by
//! far more. `PGREALM_REMOTE_BIG_ROWS` sets the rows (default 120,000); the full million:
//!
//! ```text
//! PGREALM_REMOTE_BIG_ROWS=1000000 cargo test --release --test remote_big -- --nocapture
//! ```

mod remote_support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgrealm_runtime::metrics::Metrics;
use pgrealm_runtime::replication::PgConnectOptions;
use pgrealm_runtime::server::ServerOptions;
use pgrealm_runtime::sync::pg_to_realm::{PgToRealm, PgToRealmOptions, Progress};
use pgrealm_runtime::testing::{status_kib, PgCluster};
use pgrealm_runtime::{RealmPath, StoreOptions};
use remote_support::RemoteServer;
use tokio::sync::watch;

/// Growth of the peak resident set allowed while the transaction is applied: the server's store
/// cache ([`CACHE`]), the engine's batch and its JSON, and the allocators' slack. Holding the
/// rows instead costs over 1 KB each (well past the bound at the default row count).
const BOUND_MIB: u64 = 120;
const CACHE: usize = 32 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_transaction_streams_into_a_remote_server_in_bounded_memory() {
    let rows: i64 = std::env::var("PGREALM_REMOTE_BIG_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120_000);
    let db = PgCluster::shared().fresh_database().unwrap();
    PgCluster::shared()
        .batch_execute(&db.name, transit::Schema::DDL)
        .unwrap();
    let server = RemoteServer::start_with_store(
        ServerOptions::default(),
        StoreOptions {
            cache_bytes: CACHE,
            ..StoreOptions::default()
        },
    );
    let remote = server.connect().await;

    let slot = format!("big_{}", db.name).to_lowercase();
    let mut options = PgToRealmOptions::new(
        slot.clone(),
        slot,
        PgToRealmOptions::template("/myRealm").unwrap(),
    );
    options.progress = Progress::Log;
    let sync = PgToRealm::new(
        PgConnectOptions::from_url(&db.url).unwrap(),
        options,
        remote,
        Arc::new(Metrics::default()),
    );
    sync.setup().await.unwrap();
    let stats = sync.stats();
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(sync.run(stopped));

    PgCluster::shared()
        .batch_execute(
            &db.name,
            &format!(
                "INSERT INTO bus (id, name) SELECT i, 'bus ' || i FROM generate_series(1, {rows}) i"
            ),
        )
        .unwrap();
    let rss_before = status_kib("VmRSS:");
    let started = Instant::now();
    let deadline = started + Duration::from_secs(900);
    while stats.streamed_commits.load(Ordering::Relaxed) < 1 {
        assert!(Instant::now() < deadline, "the transaction was not applied");
        assert!(!task.is_finished(), "the engine stopped: {:?}", task.await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = started.elapsed();
    let growth_mib = status_kib("VmHWM:").saturating_sub(rss_before) / 1024;
    println!(
        "{rows} rows in one transaction through the object server: applied in {took:.2?}, peak \
         RSS grew by {growth_mib} MiB (bound {BOUND_MIB} MiB, server store cache {} MiB)",
        CACHE >> 20
    );
    assert!(
        growth_mib <= BOUND_MIB,
        "peak RSS grew by {growth_mib} MiB applying {rows} rows; the bound is {BOUND_MIB} MiB"
    );

    // One version holding every row.
    let view = server
        .store
        .realm(&RealmPath::parse("/myRealm").unwrap())
        .unwrap()
        .expect("the realm");
    assert_eq!(view.version(), 1);
    assert_eq!(view.count("Bus").unwrap(), rows as usize);
    assert_eq!(
        server
            .metrics
            .admin_streams_committed
            .load(Ordering::Relaxed),
        1
    );
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
}
