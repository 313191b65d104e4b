//! Remote mode, PostgreSQL → realm SIGKILLed under load and restarted, many times, while the
//! object server lives on: afterwards the server's realm equals PostgreSQL, and each bus's
//! counter (its `name`, a zero-padded number every update raises) only ever moved forward in
//! the realm's log. A transaction applied twice would move it back.
//!
//! Killing the engine here leaves whatever it had sent running on the server: a commit may
//! land after the restarted engine read the checkpoint (which `expect` on the checkpoint
//! refuses), and a stream may be left open (which the restart replaces, its owner being the
//! slot). Rounds: `PGREALM_CRASH_ROUNDS` (default 5); the writers' seed is printed and read from
//! `PGREALM_CRASH_SEED`. Many more rounds:
//!
//! ```text
//! PGREALM_CRASH_ROUNDS=200 cargo test --release --test remote_crash -- --nocapture
//! ```
//!
//! The engine runs in a child process: this test binary re-executed with
//! `PGREALM_REMOTE_WORKER` set, running only [`worker`]. The second test streams every
//! transaction of more than 4 changes in batches of 4, so kills also land inside open streams.

mod remote_support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgrealm_runtime::metrics::Metrics;
use pgrealm_runtime::replication::PgConnectOptions;
use pgrealm_runtime::sync::pg_to_realm::{checkpoint_key, PgToRealm, PgToRealmOptions, Progress};
use pgrealm_runtime::testing::{xorshift, CrashPlan, PgCluster, TestDb, Worker};
use pgrealm_runtime::{Instruction, RealmPath, Store};
use pgrealm_schema::{PrimaryKey, Value};
use remote_support::RemoteServer;

const BUSES: i64 = 300;
/// Each writer's pause between statements.
const WRITE_PAUSE: Duration = Duration::from_millis(4);
/// Digits of a counter in `name`: zero-padded, so text order is number order.
const DIGITS: usize = 12;

fn realm() -> RealmPath {
    RealmPath::parse("/myRealm").unwrap()
}

/// The child process: connect to the object server and apply until killed.
#[test]
fn worker() {
    let Ok(spec) = std::env::var("PGREALM_REMOTE_WORKER") else {
        return;
    };
    let parts: Vec<&str> = spec.split('\n').collect();
    let [url, base, token, slot] = parts[..] else {
        panic!("PGREALM_REMOTE_WORKER: {spec:?}");
    };
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    // Before any runtime: the remote store blocks its caller on each request.
    let store = Store::connect_remote(base, token, transit::Schema::schema().clone()).unwrap();
    let mut options = PgToRealmOptions::new(
        slot.to_owned(),
        slot.to_owned(),
        PgToRealmOptions::template("/myRealm").unwrap(),
    );
    options.progress = Progress::Quiet;
    options.initialize_realm_from_postgres = true;
    if let Some(after) = std::env::var("PGREALM_STREAM_AFTER")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        options.stream_after_changes = after;
    }
    let sync = PgToRealm::new(
        PgConnectOptions::from_url(url).unwrap(),
        options,
        store,
        Arc::new(Metrics::default()),
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        sync.setup().await.unwrap();
        let (_stop, stopped) = tokio::sync::watch::channel(false);
        sync.run(stopped).await.unwrap();
    });
}

fn spawn_worker(db: &TestDb, server: &RemoteServer, stream_after: Option<usize>) -> Worker {
    let spec = format!(
        "{}\n{}\n{}\n{}",
        db.url,
        server.base,
        server.keys.admin_token(),
        slot(db)
    );
    let mut env = vec![("PGREALM_REMOTE_WORKER", spec)];
    if let Some(after) = stream_after {
        env.push(("PGREALM_STREAM_AFTER", after.to_string()));
    }
    Worker::spawn("worker", &env).unwrap()
}

fn slot(db: &TestDb) -> String {
    format!("crash_{}", db.name).to_lowercase()
}

/// `name` raised by one.
fn raised() -> String {
    format!("lpad((name::bigint + 1)::text, {DIGITS}, '0')")
}

async fn writer(
    url: String,
    seed: u64,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    next_id: Arc<AtomicU64>,
) {
    let sql = pgrealm_runtime::testing::connect(&url).await.unwrap();
    let mut state = seed | 1;
    while !stop.load(Ordering::Relaxed) {
        let r = xorshift(&mut state);
        let id = (r % BUSES as u64) as i64 + 1;
        let statement = match r % 20 {
            0..=12 => format!("UPDATE bus SET name = {} WHERE id = {id}", raised()),
            13 | 14 => format!(
                "INSERT INTO bus (id, name) VALUES ({}, '{}')",
                next_id.fetch_add(1, Ordering::Relaxed),
                "0".repeat(DIGITS)
            ),
            15 => {
                format!("DELETE FROM bus WHERE id = (SELECT max(id) FROM bus WHERE id > {BUSES})")
            }
            _ => format!(
                "BEGIN; UPDATE bus SET name = {} WHERE id BETWEEN {id} AND {id} + 20; COMMIT;",
                raised()
            ),
        };
        sql.batch_execute(&statement).await.unwrap();
        done.fetch_add(1, Ordering::Relaxed);
        // A steady load rather than PostgreSQL's fastest: every round still kills the engine
        // with work in flight, and the last worker catches up in seconds, not minutes (remote
        // mode in a debug build applies a few thousand changes a second).
        tokio::time::sleep(WRITE_PAUSE).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_and_restarted_against_a_remote_server_it_applies_everything_exactly_once() {
    crash_rounds(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_inside_remote_streams_it_applies_everything_exactly_once() {
    crash_rounds(Some(4)).await;
}

async fn crash_rounds(stream_after: Option<usize>) {
    let plan = CrashPlan::from_env(5);
    let seed = plan.seed;
    println!("streaming after {stream_after:?}");
    let db = PgCluster::shared().fresh_database().unwrap();
    let cluster = PgCluster::shared();
    cluster
        .batch_execute(&db.name, transit::Schema::DDL)
        .unwrap();
    cluster
        .batch_execute(
            &db.name,
            &format!(
                "INSERT INTO bus (id, name) SELECT i, '{}' FROM generate_series(1, {BUSES}) i",
                "0".repeat(DIGITS)
            ),
        )
        .unwrap();
    let server = RemoteServer::start();

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let next_id = Arc::new(AtomicU64::new(BUSES as u64 + 1));
    // The first worker sets up: slot, and the initial load of the buses above.
    let child = spawn_worker(&db, &server, stream_after);
    let writers: Vec<_> = (0..4)
        .map(|i| {
            tokio::spawn(writer(
                db.url.clone(),
                seed.wrapping_add(i * 0x9E37_79B9),
                stop.clone(),
                done.clone(),
                next_id.clone(),
            ))
        })
        .collect();
    let mut child = plan
        .kill_rounds(child, || spawn_worker(&db, &server, stream_after), &done)
        .await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    // Let the last worker catch up with everything written, then stop it.
    let sql = db.connect().await.unwrap();
    let target: String = sql
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    // Caught up: the store holds a checkpoint, so the worker streams (a worker that finds none
    // loads again, from a new slot whose position is past the target before the load has
    // committed anything), and its slot has confirmed the target. On a slow machine every
    // round may kill a worker before its load commits; the slot is missing while the last
    // worker drops and creates it again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        let checkpoint = server.store.metadata(&checkpoint_key(&slot(&db))).unwrap();
        let confirmed: Option<bool> = sql
            .query_opt(
                "SELECT confirmed_flush_lsn >= $1::text::pg_lsn FROM pg_replication_slots \
                 WHERE slot_name = $2",
                &[&target, &slot(&db)],
            )
            .await
            .unwrap()
            .and_then(|row| row.get(0));
        if checkpoint.is_some() && confirmed == Some(true) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker did not catch up (seed {seed})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill();
    assert!(server
        .store
        .metadata(&checkpoint_key(&slot(&db)))
        .unwrap()
        .is_some());

    // The realm equals PostgreSQL.
    let pg: BTreeMap<i64, String> = sql
        .query("SELECT id, name FROM bus", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let view = server.store.realm(&realm()).unwrap().expect("the realm");
    let ours: BTreeMap<i64, String> = view
        .objects("Bus")
        .unwrap()
        .into_iter()
        .map(|o| match (o.get("id"), o.get("name")) {
            (Some(Value::Int(id)), Some(Value::String(name))) => (*id, name.clone()),
            other => panic!("a bus without id or name: {other:?}"),
        })
        .collect();
    assert_eq!(pg.len(), ours.len(), "seed {seed}");
    for (id, name) in &pg {
        assert_eq!(ours.get(id), Some(name), "bus {id}, seed {seed}");
    }

    // Every counter only moved forward in the realm's log.
    let changes = server.store.changes(&realm(), 0, usize::MAX).unwrap();
    assert_eq!(changes.len() as u64, view.version(), "the log is complete");
    let mut last: BTreeMap<PrimaryKey, String> = BTreeMap::new();
    let mut sets = 0;
    for changeset in changes {
        for instruction in changeset.instructions {
            let (key, name) = match instruction {
                Instruction::Create { class, key, values } if class == "Bus" => {
                    match values.get("name") {
                        Some(Value::String(name)) => (key, name.clone()),
                        _ => continue,
                    }
                }
                Instruction::Set {
                    class,
                    key,
                    property,
                    old,
                    new: Value::String(name),
                } if class == "Bus" && property == "name" => {
                    assert!(
                        matches!(&old, Value::String(o) if *o < name),
                        "bus {key}: name went from {old:?} to {name} (seed {seed})"
                    );
                    sets += 1;
                    (key, name)
                }
                _ => continue,
            };
            if let Some(previous) = last.get(&key) {
                assert!(
                    name >= *previous,
                    "bus {key}: counter {previous} then {name} (seed {seed})"
                );
            }
            last.insert(key, name);
        }
    }
    assert!(sets > 0);
    println!(
        "{sets} counter changes checked, {} writes",
        done.load(Ordering::Relaxed)
    );
}
