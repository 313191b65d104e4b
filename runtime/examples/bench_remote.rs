//! Benchmark of remote mode (issue 6): PostgreSQL → realm applied through a remote object
//! server's admin API, next to the embedded store on the same WAL in the same run:
//!
//! ```text
//! cargo run --release -p pgrealm-runtime --example bench_remote
//! ```
//!
//! For each workload two slots are created before writing, so both appliers see identical WAL:
//! one applies into an embedded store, the other into a store reached with
//! [`Store::connect_remote`] (an object server on 127.0.0.1, in this process but on a runtime
//! and thread of its own, so the HTTP, JSON and the server's own commit are all paid). Each is
//! timed from its start until it has confirmed the end LSN (every change durable in the realms).
//!
//! Workloads: (a) 1,000-row transactions, (b) single-row transactions from 8 concurrent
//! clients. Sizes: `BENCH_ROWS` (default 20,000 changes per workload). Uses the test harness's
//! PostgreSQL (127.0.0.1 only). Not a test: figures go in BENCHMARKS.md.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgrealm_runtime::auth::Keys;
use pgrealm_runtime::metrics::Metrics;
use pgrealm_runtime::replication::{
    ensure_publication, ensure_slot, Lsn, PgConnectOptions, QualifiedTable,
};
use pgrealm_runtime::server::{Server, ServerOptions};
use pgrealm_runtime::sync::pg_to_realm::{PgToRealm, PgToRealmOptions, Progress};
use pgrealm_runtime::testing::PgCluster;
use pgrealm_runtime::{Store, StoreOptions};

mod item_bench;

use item_bench::{schema, DDL};

fn rows() -> i64 {
    item_bench::rows(20_000)
}

/// An object server over a fresh store, on a runtime thread of its own (as another process
/// would be); returns its URL and admin token. It runs until the process exits.
fn start_server(dir: &std::path::Path) -> (String, String) {
    let store = Store::open(dir.join("server"), schema(), StoreOptions::default()).unwrap();
    let keys = Keys::load_or_create(&dir.join("server"), None).unwrap();
    let token = keys.admin_token().to_owned();
    let server = Server::new(
        store,
        keys,
        Arc::new(Metrics::default()),
        ServerOptions::default(),
    );
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            server
                .serve(listener, std::future::pending())
                .await
                .unwrap();
        });
    });
    (format!("http://{}", addr_rx.recv().unwrap()), token)
}

/// Apply `slot` from its start into `store` until `end` is confirmed; the time and the number
/// of changes applied.
async fn apply(pg: &PgConnectOptions, slot: &str, store: Store, end: Lsn) -> (Duration, u64) {
    let mut options = PgToRealmOptions::new(
        slot,
        "pgrealm",
        PgToRealmOptions::template("/{user_id}/bench").unwrap(),
    );
    options.progress = Progress::Quiet;
    let sync = PgToRealm::new(pg.clone(), options, store, Arc::new(Metrics::default()));
    sync.setup().await.unwrap();
    let stats = sync.stats();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let task = tokio::spawn(sync.run(stopped));
    while stats.confirmed_lsn.load(Ordering::Relaxed) < end.as_u64() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = started.elapsed();
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
    (elapsed, stats.changes.load(Ordering::Relaxed))
}

struct Bench {
    pg: PgConnectOptions,
    url: String,
    sql: tokio_postgres::Client,
    remote: Store,
    dir: tempfile::TempDir,
}

impl Bench {
    async fn workload(&self, label: &str, tag: &str, write: impl std::future::Future<Output = ()>) {
        let (embedded_slot, remote_slot) = (format!("embedded_{tag}"), format!("remote_{tag}"));
        ensure_slot(&self.sql, &embedded_slot).await.unwrap();
        ensure_slot(&self.sql, &remote_slot).await.unwrap();
        write.await;
        let end: String = self
            .sql
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .unwrap()
            .get(0);
        let end = Lsn::parse(&end).unwrap();
        let embedded = Store::open(
            self.dir.path().join(&embedded_slot),
            schema(),
            StoreOptions::default(),
        )
        .unwrap();
        let (local, local_changes) = apply(&self.pg, &embedded_slot, embedded, end).await;
        let (remote, remote_changes) =
            apply(&self.pg, &remote_slot, self.remote.clone(), end).await;
        assert_eq!(local_changes, remote_changes, "both applied the same WAL");
        let n = local_changes as f64;
        println!(
            "{label}: {n} changes\n  \
             embedded store          {:>9.0} changes/s\n  \
             remote object server    {:>9.0} changes/s   → remote / embedded = {:.2}×",
            n / local.as_secs_f64(),
            n / remote.as_secs_f64(),
            local.as_secs_f64() / remote.as_secs_f64(),
        );
        for slot in [&embedded_slot, &remote_slot] {
            self.sql
                .execute("SELECT pg_drop_replication_slot($1)", &[slot])
                .await
                .unwrap();
        }
    }
}

#[tokio::main]
async fn main() {
    // As the generated binary does.
    pgrealm_runtime::cli::disable_transparent_huge_pages();
    let cluster = PgCluster::shared();
    let db = cluster.fresh_database().unwrap();
    let pg = PgConnectOptions::from_url(&db.url).unwrap();
    let sql = pg.connect_sql().await.unwrap();
    sql.batch_execute(DDL).await.unwrap();
    ensure_publication(&sql, "pgrealm", &[QualifiedTable::public("item")])
        .await
        .unwrap();
    let dir = tempfile::tempdir_in(".").unwrap();
    let (base, token) = start_server(dir.path());
    let remote =
        tokio::task::spawn_blocking(move || Store::connect_remote(&base, &token, schema()))
            .await
            .unwrap()
            .unwrap();
    let b = Bench {
        pg,
        url: db.url.clone(),
        sql,
        remote,
        dir,
    };
    let n = rows();
    println!("remote mode benchmark (PostgreSQL → realm), {n} changes per workload\n");

    b.workload("(a) 1,000-row transactions", "a", async {
        for start in (0..n).step_by(1000) {
            b.sql
                .execute(
                    "INSERT INTO item SELECT i, 'item ' || i, i, 'u' || (i % 8) \
                     FROM generate_series($1::bigint, $1::bigint + 999) i",
                    &[&start],
                )
                .await
                .unwrap();
        }
    })
    .await;

    b.workload("(b) single-row transactions, 8 clients", "b", async {
        let per_client = n / 8;
        let mut clients = Vec::new();
        for c in 0..8i64 {
            let url = b.url.clone();
            clients.push(tokio::spawn(async move {
                let sql = pgrealm_runtime::testing::connect(&url).await.unwrap();
                let insert = sql
                    .prepare("INSERT INTO item VALUES ($1, 'single', $1, $2)")
                    .await
                    .unwrap();
                for i in 0..per_client {
                    let id = 10_000_000 + c * per_client + i;
                    sql.execute(&insert, &[&id, &format!("u{c}")])
                        .await
                        .unwrap();
                }
            }));
        }
        for c in clients {
            c.await.unwrap();
        }
    })
    .await;
}
