//! Realm → PostgreSQL throughput and lag, each next to its limit measured in the same run on the
//! same private PostgreSQL cluster (started by the test harness).
//!
//! ```text
//! cargo run --release -p pgrealm-runtime --example bench_realm2pg
//! ```
//!
//! - (a) rows/s writing 1,000-object realm commits, and (b) rows/s writing single-object
//!   commits from 1,000 realms, both against the fastest client-side bulk path for the same rows
//!   (batched `INSERT … ON CONFLICT` of 1,000 rows per statement and transaction, as `unnest`
//!   arrays or multi-row VALUES, or `COPY` into a staging table then one merge). The engine is
//!   connected, set up and idle (one warm-up object written) before the clock starts, as the
//!   client-side paths connect and prepare before theirs: (a) is timed from the store commit
//!   that holds all the realm commits, (b) from the release of a table lock that held the
//!   engine back while the store wrote, each to the engine's SQL commit of the last changeset;
//! - lag p50/p99 from a realm commit (durable) to its PostgreSQL commit at a steady 1,000
//!   commits/s, against PostgreSQL's own single-row commit latency.
//!
//! Sizes: `BENCH_R2P_COMMITS` 1,000-object commits (one realm each) for (a) (default 200, so
//! each side is timed over a second or more of a shared machine), and 1,000 realms ×
//! `BENCH_R2P_PER_REALM` single-object changesets for (b) (default 10); `BENCH_R2P_LAG_SECS`
//! (default 5). Not a test: figures go in BENCHMARKS.md.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgrealm_runtime::sync::realm_to_pg::{RealmToPg, RealmToPgOptions, BOOKKEEPING_DDL};
use pgrealm_runtime::testing::{PgCluster, TestDb};
use pgrealm_runtime::{RealmPath, Store, StoreOptions};
use pgrealm_schema::ddl::render_ddl;
use pgrealm_schema::{Class, IntWidth, Object, Property, PropertyType, ScalarType, Schema, Value};
use tokio_postgres::Client;

/// The allocator the generated binary uses (`pgrealm::main!`), so the figures are its.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn schema() -> Schema {
    let scalar = PropertyType::Scalar;
    Schema::new(vec![Class::new("Bus")
        .property(Property::new("id", scalar(ScalarType::Int(IntWidth::I64))).primary_key())
        .property(Property::new("name", scalar(ScalarType::String)))
        .property(Property::new(
            "seats",
            scalar(ScalarType::Int(IntWidth::I64)),
        ))
        .property(Property::new("speed", scalar(ScalarType::Double)))])
}

fn bus(id: i64) -> Object {
    Object::new("Bus")
        .with("id", Value::Int(id))
        .with("name", Value::String(format!("bus number {id}")))
        .with("seats", Value::Int(id % 90))
        .with("speed", Value::Double(id as f64 * 0.5))
}

/// A fresh database with the schema's tables.
async fn database(cluster: &PgCluster) -> (TestDb, Client) {
    let db = cluster.fresh_database().expect("a database");
    let client = db.connect().await.expect("a connection");
    client
        .batch_execute(&render_ddl(&schema()))
        .await
        .expect("the tables");
    client
        .batch_execute(BOOKKEEPING_DDL)
        .await
        .expect("pgrealm's tables");
    (db, client)
}

/// An engine running on a store, with the time and size of each of its SQL commits.
struct Running {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), pgrealm_runtime::sync::realm_to_pg::RealmToPgError>>,
    commits: Arc<Mutex<Vec<(Instant, usize)>>>,
}

impl Running {
    /// Start the engine and let it connect, set up and write one warm-up object (so its
    /// statements are prepared, as the client-side paths prepare theirs before timing).
    async fn start(store: &Store, db: &TestDb) -> Running {
        let commits: Arc<Mutex<Vec<(Instant, usize)>>> = Arc::default();
        let seen = commits.clone();
        let engine = RealmToPg::new(store.clone(), &db.url, RealmToPgOptions::default())
            .expect("engine")
            .on_commit(move |applied| {
                let now = Instant::now();
                seen.lock().expect("lock").push((now, applied.len()));
            });
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(engine.run(shutdown));
        let running = Running {
            stop,
            task,
            commits,
        };
        let mut tx = store.begin_write("app");
        tx.put_object(&RealmPath::parse("/warmup").expect("path"), bus(-1))
            .expect("put");
        tx.commit().expect("commit");
        running.wait_for(1).await;
        running
    }

    /// When the engine's SQL commits reached `changesets` changesets in all.
    async fn wait_for(&self, changesets: usize) -> Instant {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            {
                let commits = self.commits.lock().expect("lock");
                let mut total = 0;
                for (at, n) in commits.iter() {
                    total += n;
                    if total >= changesets {
                        return *at;
                    }
                }
            }
            assert!(Instant::now() < deadline, "the engine did not catch up");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    async fn stop(self) {
        self.stop.send(true).expect("stop");
        self.task.await.expect("join").expect("engine");
    }
}

/// The fastest client-side bulk path for rows `ids`, 1,000 rows per statement and transaction:
/// (`unnest` arrays, multi-row VALUES, COPY + merge), each on a fresh database.
async fn bulk_baselines(cluster: &PgCluster, ids: &[i64]) -> Vec<(&'static str, Duration)> {
    let mut out = Vec::new();
    let names: Vec<String> = ids.iter().map(|id| format!("bus number {id}")).collect();
    let seats: Vec<i64> = ids.iter().map(|id| id % 90).collect();
    let speeds: Vec<f64> = ids.iter().map(|id| *id as f64 * 0.5).collect();

    let (_db, client) = database(cluster).await;
    let statement = client
        .prepare(
            "INSERT INTO bus (id, name, seats, speed) \
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::float8[]) \
             ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, seats = EXCLUDED.seats, \
             speed = EXCLUDED.speed",
        )
        .await
        .expect("prepare");
    let start = Instant::now();
    for chunk in (0..ids.len()).collect::<Vec<_>>().chunks(1000) {
        let (a, b) = (chunk[0], chunk[chunk.len() - 1] + 1);
        client.batch_execute("BEGIN").await.expect("begin");
        client
            .execute(
                &statement,
                &[&&ids[a..b], &&names[a..b], &&seats[a..b], &&speeds[a..b]],
            )
            .await
            .expect("insert");
        client.batch_execute("COMMIT").await.expect("commit");
    }
    out.push(("INSERT … SELECT unnest(…) ON CONFLICT", start.elapsed()));

    let (_db, client) = database(cluster).await;
    let mut sql = String::from("INSERT INTO bus (id, name, seats, speed) VALUES ");
    for r in 0..1000 {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!(
            "(${}, ${}, ${}, ${})",
            4 * r + 1,
            4 * r + 2,
            4 * r + 3,
            4 * r + 4
        ));
    }
    sql.push_str(" ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, seats = EXCLUDED.seats, speed = EXCLUDED.speed");
    let statement = client.prepare(&sql).await.expect("prepare");
    let start = Instant::now();
    for chunk in (0..ids.len()).collect::<Vec<_>>().chunks(1000) {
        if chunk.len() < 1000 {
            break; // sizes are multiples of 1,000
        }
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = Vec::new();
        for i in chunk {
            params.push(&ids[*i]);
            params.push(&names[*i]);
            params.push(&seats[*i]);
            params.push(&speeds[*i]);
        }
        client.batch_execute("BEGIN").await.expect("begin");
        client.execute(&statement, &params).await.expect("insert");
        client.batch_execute("COMMIT").await.expect("commit");
    }
    out.push(("INSERT … VALUES (1,000 rows) ON CONFLICT", start.elapsed()));

    let (_db, client) = database(cluster).await;
    let start = Instant::now();
    for chunk in (0..ids.len()).collect::<Vec<_>>().chunks(1000) {
        client
            .batch_execute(
                "BEGIN; CREATE TEMP TABLE IF NOT EXISTS staging (LIKE bus) ON COMMIT DELETE ROWS;",
            )
            .await
            .expect("staging");
        let mut text = String::new();
        for i in chunk {
            text.push_str(&format!(
                "{}\t{}\t{}\t{}\n",
                ids[*i], names[*i], seats[*i], speeds[*i]
            ));
        }
        let sink = client
            .copy_in("COPY staging (id, name, seats, speed) FROM STDIN")
            .await
            .expect("copy");
        use futures_util::SinkExt;
        let mut sink = Box::pin(sink);
        sink.send(bytes::Bytes::from(text))
            .await
            .expect("copy data");
        sink.as_mut().finish().await.expect("copy end");
        client
            .batch_execute(
                "INSERT INTO bus SELECT * FROM staging ON CONFLICT (id) DO UPDATE SET \
                 name = EXCLUDED.name, seats = EXCLUDED.seats, speed = EXCLUDED.speed; COMMIT;",
            )
            .await
            .expect("merge");
    }
    out.push(("COPY into staging + merge", start.elapsed()));
    out
}

fn rate(rows: usize, took: Duration) -> f64 {
    rows as f64 / took.as_secs_f64()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // As the generated binary does.
    pgrealm_runtime::cli::disable_transparent_huge_pages();
    let cluster = PgCluster::start().expect("a PostgreSQL cluster (see the testing harness)");
    let commits_a = env_or("BENCH_R2P_COMMITS", 200);
    let per_realm = env_or("BENCH_R2P_PER_REALM", 10);
    let lag_secs = env_or("BENCH_R2P_LAG_SECS", 5);

    // (a) 1,000-object realm commits: the engine is running and idle, then one store commit
    // gives each of `commits_a` realms a changeset of 1,000 created objects; timed from that
    // store commit's return to the engine's SQL commit holding the last of them.
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), schema(), StoreOptions::default()).expect("store");
    let (db, _client) = database(&cluster).await;
    let engine = Running::start(&store, &db).await;
    let mut tx = store.begin_write("app");
    for c in 0..commits_a {
        let realm = RealmPath::parse(&format!("/bench{c}")).expect("path");
        for i in 0..1000 {
            tx.put_object(&realm, bus((c * 1000 + i) as i64))
                .expect("put");
        }
    }
    tx.commit().expect("commit");
    let start = Instant::now();
    let took_a = engine.wait_for(1 + commits_a as usize).await - start;
    engine.stop().await;
    let rows_a = (commits_a * 1000) as usize;
    // How fast the change feed alone delivers these changesets (no PostgreSQL at all).
    let mut feed = store.subscribe(pgrealm_runtime::Subscription::all());
    feed.next().await.expect("the warm-up changeset");
    let start = Instant::now();
    for _ in 0..commits_a {
        feed.next().await.expect("a changeset");
    }
    let feed_a = start.elapsed();
    drop(feed);
    let ids: Vec<i64> = (0..rows_a as i64).collect();
    let baselines_a = bulk_baselines(&cluster, &ids).await;
    drop(store);

    // (b) single-object changesets from 1,000 realms: the engine is running and idle; a lock
    // on the table holds its writes back while `per_realm` store commits each give every realm
    // a changeset of one created object (the engine sees 1,000 changesets per store commit);
    // timed from the lock's release to the engine's SQL commit holding the last changeset. (The
    // engine may have read, and encoded the first statement of, its first batch before that.)
    let dir_b = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir_b.path(), schema(), StoreOptions::default()).expect("store");
    let (db, client) = database(&cluster).await;
    let engine = Running::start(&store, &db).await;
    let realms: Vec<RealmPath> = (0..1000)
        .map(|r| RealmPath::parse(&format!("/user{r}/bench")).expect("path"))
        .collect();
    client
        .batch_execute("BEGIN; LOCK TABLE bus IN SHARE ROW EXCLUSIVE MODE")
        .await
        .expect("lock");
    let start = Instant::now();
    for round in 0..per_realm {
        let mut tx = store.begin_write("app");
        for (r, realm) in realms.iter().enumerate() {
            tx.put_object(realm, bus((round * 1000) as i64 + r as i64))
                .expect("put");
        }
        tx.commit().expect("commit");
    }
    let store_b = start.elapsed();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = Instant::now();
    client.batch_execute("COMMIT").await.expect("unlock");
    let rows_b = (per_realm * 1000) as usize;
    let took_b = engine.wait_for(1 + rows_b).await - start;
    engine.stop().await;
    let mut feed = store.subscribe(pgrealm_runtime::Subscription::all());
    feed.next().await.expect("the warm-up changeset");
    let start = Instant::now();
    for _ in 0..rows_b {
        feed.next().await.expect("a changeset");
    }
    let feed_b = start.elapsed();
    drop(feed);
    let ids: Vec<i64> = (0..rows_b as i64).collect();
    let baselines_b = bulk_baselines(&cluster, &ids).await;
    drop(store);

    // Lag at a steady 1,000 commits/s, against PostgreSQL's single-row commit latency.
    let (db, client) = database(&cluster).await;
    let mut single = Vec::new();
    for i in 0..2000i64 {
        let start = Instant::now();
        client
            .execute(
                "INSERT INTO bus (id, name, seats, speed) VALUES ($1, 'x', 1, 1.0)",
                &[&(1_000_000 + i)],
            )
            .await
            .expect("insert");
        single.push(start.elapsed());
    }
    single.sort();
    let dir_c = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir_c.path(), schema(), StoreOptions::default()).expect("store");
    let arrived: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let seen = arrived.clone();
    let engine = RealmToPg::new(store.clone(), &db.url, RealmToPgOptions::default())
        .expect("engine")
        .on_commit(move |applied| {
            let now = Instant::now();
            let mut seen = seen.lock().expect("lock");
            for a in applied {
                seen.insert(a.version, now);
            }
        });
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(engine.run(shutdown));
    tokio::time::sleep(Duration::from_millis(300)).await; // connected and following
    let writer_store = store.clone();
    let total = lag_secs * 1000;
    let committed = tokio::task::spawn_blocking(move || {
        let realm = RealmPath::parse("/lag").expect("path");
        let mut out = Vec::with_capacity(total as usize);
        let start = Instant::now();
        for i in 0..total {
            let due = start + Duration::from_micros(i * 1000);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let mut tx = writer_store.begin_write("app");
            tx.put_object(&realm, bus(i as i64 % 5000)).expect("put");
            let info = tx.commit().expect("commit");
            out.push((info.version_of(&realm).unwrap_or(0), Instant::now()));
        }
        (out, start.elapsed())
    })
    .await
    .expect("writer");
    let (committed, wrote_for) = committed;
    let deadline = Instant::now() + Duration::from_secs(30);
    while arrived.lock().expect("lock").len() < committed.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send(true).expect("stop");
    task.await.expect("join").expect("engine");
    let arrived = arrived.lock().expect("lock");
    let mut lags: Vec<Duration> = committed
        .iter()
        .filter_map(|(v, at)| arrived.get(v).map(|pg| pg.saturating_duration_since(*at)))
        .collect();
    lags.sort();

    println!("realm → PostgreSQL (one run, one machine, release build)\n");
    let report = |label: &str, rows: usize, took: Duration, baselines: &[(&str, Duration)]| {
        let ours = rate(rows, took);
        println!("{label}: {rows} rows in {took:.2?} = {ours:.0} rows/s");
        let mut best = 0.0f64;
        for (name, t) in baselines {
            let r = rate(rows, *t);
            best = best.max(r);
            println!("    client-side {name}: {r:.0} rows/s");
        }
        println!("    ratio to the fastest bulk path: {:.2}×\n", ours / best);
    };
    report(
        "(a) 1,000-object realm commits",
        rows_a,
        took_a,
        &baselines_a,
    );
    println!(
        "    the change feed alone delivers these changesets at {:.0} rows/s\n",
        rate(rows_a, feed_a)
    );
    report(
        "(b) single-object commits from 1,000 realms",
        rows_b,
        took_b,
        &baselines_b,
    );
    println!(
        "    the store wrote them in {store_b:.2?} (not timed); the change feed alone delivers them at {:.0} /s\n",
        rate(rows_b, feed_b)
    );
    println!(
        "lag realm commit → PostgreSQL commit at {:.0} commits/s ({} commits, {} arrived): p50 {}, p99 {}, max {}",
        committed.len() as f64 / wrote_for.as_secs_f64(),
        committed.len(),
        lags.len(),
        ms(percentile(&lags, 0.5)),
        ms(percentile(&lags, 0.99)),
        ms(lags.last().copied().unwrap_or_default())
    );
    println!(
        "    PostgreSQL single-row INSERT commit latency: p50 {}, p99 {}; lag p99 / commit p99 = {:.2}×",
        ms(percentile(&single, 0.5)),
        ms(percentile(&single, 0.99)),
        percentile(&lags, 0.99).as_secs_f64() / percentile(&single, 0.99).as_secs_f64()
    );
}
