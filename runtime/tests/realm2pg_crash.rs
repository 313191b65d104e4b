//! Exactly once across a SIGKILL of the writer and a PostgreSQL restart: a child process (this
//! test binary re-executed) commits a deterministic stream of realm changes that are not
//! idempotent in SQL (list inserts in the middle, erases, updates, creates, deletes) while its
//! engine writes them to PostgreSQL; the parent kills it at random moments, restarts
//! PostgreSQL once, then lets a last child finish and compares the realm with PostgreSQL.
//! Rounds: `PGREALM_CRASH_ROUNDS` (default 3); the seed is printed.

mod realm2pg_support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pgrealm_runtime::sync::realm_to_pg::{RealmToPg, RealmToPgOptions};
use pgrealm_runtime::testing::PgCluster;
use pgrealm_runtime::{Store, StoreOptions};
use pgrealm_schema::ddl::render_ddl;
use pgrealm_schema::{PrimaryKey, Value};
use realm2pg_support::*;

const CHILD_DIR: &str = "REALM2PG_CHILD_DIR";
const CHILD_URL: &str = "REALM2PG_CHILD_URL";
const CHILD_FINISH: &str = "REALM2PG_CHILD_FINISH";
const COMMITS: u64 = 400;
const DONE_KEY: &str = "test/commits_done";

/// Commit number `i` (1-based) of the stream, with the counter in the same store commit.
fn commit_number(store: &Store, i: u64) {
    let r = path("/crash");
    let mut tx = store.begin_write("app");
    let current = store.realm(&r).unwrap().and_then(|v| {
        v.object("Route", &PrimaryKey::String("acc".into()))
            .unwrap()
    });
    let mut stops: Vec<Value> = match current.as_ref().and_then(|o| o.get("stops")) {
        Some(Value::List(items)) => items.clone(),
        _ => Vec::new(),
    };
    let at = (i as usize * 7) % (stops.len() + 1);
    stops.insert(at, Value::Int(i as i64));
    if i.is_multiple_of(3) && stops.len() > 2 {
        stops.remove((i as usize) % stops.len());
    }
    let stops: Vec<i64> = stops
        .into_iter()
        .map(|v| match v {
            Value::Int(n) => n,
            other => panic!("not an int: {other:?}"),
        })
        .collect();
    tx.put_object(&r, route("acc", &format!("after {i}"), &[], &stops))
        .unwrap();
    tx.put_object(
        &r,
        bus((i % 13) as i64, &format!("bus {i}"), i as i64, None),
    )
    .unwrap();
    if i.is_multiple_of(5) {
        tx.delete_object(&r, "Bus", PrimaryKey::Int(((i + 6) % 13) as i64))
            .unwrap();
    }
    tx.set_metadata(DONE_KEY, i.to_be_bytes().to_vec());
    tx.commit().unwrap();
}

/// The child: commit the rest of the stream while the engine runs; with `CHILD_FINISH`, wait
/// until PostgreSQL caught up and stop cleanly.
#[test]
fn crash_child() {
    let (Ok(dir), Ok(url)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_URL)) else {
        return; // Not re-executed by the parent: nothing to do.
    };
    let finish = std::env::var(CHILD_FINISH).is_ok();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let store = Store::open(&dir, schema(), StoreOptions::default()).unwrap();
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let engine = RealmToPg::new(store.clone(), &url, RealmToPgOptions::default()).unwrap();
        let task = tokio::spawn(engine.run(shutdown));
        let done = store
            .metadata(DONE_KEY)
            .unwrap()
            .map_or(0, |b| u64::from_be_bytes(b.try_into().unwrap()));
        for i in done + 1..=COMMITS {
            let s = store.clone();
            tokio::task::spawn_blocking(move || commit_number(&s, i))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if finish {
            let client = pgrealm_runtime::replication::PgConnectOptions::from_url(&url)
                .unwrap()
                .connect_sql()
                .await
                .unwrap();
            wait_synced(&store, &client).await;
            stop.send(true).unwrap();
            task.await.unwrap().unwrap();
            println!("CHILD FINISHED");
        } else {
            // Wait to be killed (bounded, should the parent be gone).
            tokio::time::sleep(Duration::from_secs(120)).await;
        }
    });
}

fn spawn_child(dir: &std::path::Path, url: &str, finish: bool) -> std::process::Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, dir)
        .env(CHILD_URL, url)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if finish {
        cmd.env(CHILD_FINISH, "1");
    }
    cmd.spawn().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_across_sigkill_and_postgres_restart() {
    if std::env::var(CHILD_DIR).is_ok() {
        return;
    }
    let rounds: u64 = std::env::var("PGREALM_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let seed = seed("PGREALM_CRASH_SEED");
    let mut rng = Rng::new(seed);
    let cluster = PgCluster::shared();
    let db = cluster.fresh_database().unwrap();
    let client = db.connect().await.unwrap();
    client.batch_execute(&render_ddl(&schema())).await.unwrap();
    drop(client);
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    for round in 0..rounds {
        let mut child = spawn_child(dir.path(), &db.url, false);
        tokio::time::sleep(Duration::from_millis(150 + rng.below(500))).await;
        if round == 1 {
            // PostgreSQL goes away under the running writer, and comes back.
            cluster.restart().unwrap();
            tokio::time::sleep(Duration::from_millis(100 + rng.below(300))).await;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        eprintln!("round {round}: killed after {:?}", started.elapsed());
    }
    let child = spawn_child(dir.path(), &db.url, true);
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("CHILD FINISHED"),
        "the last child failed: {stdout}"
    );
    let store = Store::open(dir.path(), schema(), StoreOptions::default()).unwrap();
    let done = store
        .metadata(DONE_KEY)
        .unwrap()
        .map(|b| u64::from_be_bytes(b.try_into().unwrap()));
    assert_eq!(done, Some(COMMITS));
    let client = db.connect().await.unwrap();
    assert_realm_equals_postgres(&store, &client, "/crash", "Route", None).await;
    assert_realm_equals_postgres(&store, &client, "/crash", "Bus", None).await;
    let version: i64 = client
        .query_one(
            "SELECT version FROM pgrealm.progress WHERE realm_path = '/crash'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(version as u64, COMMITS);
}
