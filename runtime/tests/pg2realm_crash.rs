//! PostgreSQL → realm SIGKILLed mid-stream under load, restarted, many times: afterwards every
//! realm equals PostgreSQL, and each bus's change counter only ever moved forward in the realm
//! logs (a transaction applied twice after a crash would move it back). Rounds:
//! `PGREALM_CRASH_ROUNDS` (default 5); the writers' seed is printed and read from
//! `PGREALM_CRASH_SEED`.
//!
//! The applier runs in a child process: this test binary re-executed with `PG2REALM_WORKER`
//! set, running only [`worker`]. The second test runs the same with every transaction of more
//! than 4 changes streamed in batches of 4 (`PgToRealmOptions::stream_after_changes`), so the
//! kills also land inside open streaming store transactions.

mod pg2realm_support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pg2realm_support::*;
use pgrealm_runtime::metrics::Metrics;
use pgrealm_runtime::replication::PgConnectOptions;
use pgrealm_runtime::sync::pg_to_realm::{PgToRealm, PgToRealmOptions, Progress};
use pgrealm_runtime::testing::{xorshift, CrashPlan, Worker};
use pgrealm_runtime::{Instruction, Store, StoreOptions};
use pgrealm_schema::{PrimaryKey, Value};

const BUSES: i64 = 300;

/// The child process: open the store and apply until killed.
#[test]
fn worker() {
    let Ok(spec) = std::env::var("PG2REALM_WORKER") else {
        return;
    };
    let mut parts = spec.splitn(3, '\n');
    let (url, dir, slot) = (
        parts.next().unwrap().to_owned(),
        parts.next().unwrap().to_owned(),
        parts.next().unwrap().to_owned(),
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let store = Store::open(&dir, schema(), StoreOptions::default()).unwrap();
        let mut options = PgToRealmOptions::new(
            slot,
            "pgrealm",
            PgToRealmOptions::template("/{user_id}/transit").unwrap(),
        );
        options.progress = Progress::Quiet;
        options.initialize_realm_from_postgres = true;
        if let Some(after) = std::env::var("PG2REALM_STREAM_AFTER")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            options.stream_after_changes = after;
        }
        let sync = PgToRealm::new(
            PgConnectOptions::from_url(&url).unwrap(),
            options,
            store,
            Arc::new(Metrics::default()),
        );
        sync.setup().await.unwrap();
        println!("ready");
        let (_stop, stopped) = tokio::sync::watch::channel(false);
        sync.run(stopped).await.unwrap();
    });
}

fn spawn_worker(f: &Fixture, stream_after: Option<usize>) -> Worker {
    let mut env = vec![(
        "PG2REALM_WORKER",
        format!("{}\n{}\n{}", f.db.url, f.dir.path().display(), f.slot),
    )];
    if let Some(after) = stream_after {
        env.push(("PG2REALM_STREAM_AFTER", after.to_string()));
    }
    Worker::spawn("worker", &env).unwrap()
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
            0..=10 => format!("UPDATE bus SET counter = counter + 1 WHERE id = {id}"),
            11..=13 => format!(
                "UPDATE bus SET counter = counter + 1, user_id = 'u{}' WHERE id = {id}",
                (r >> 20) % 4
            ),
            14 | 15 => format!(
                "INSERT INTO bus (id, name, user_id) VALUES ({}, 'new', 'u{}')",
                next_id.fetch_add(1, Ordering::Relaxed),
                (r >> 20) % 4
            ),
            16 => {
                format!("DELETE FROM bus WHERE id = (SELECT max(id) FROM bus WHERE id > {BUSES})")
            }
            _ => format!(
                "BEGIN; UPDATE bus SET counter = counter + 1, name = 'n{r}' \
                 WHERE id BETWEEN {id} AND {id} + 20; COMMIT;"
            ),
        };
        sql.batch_execute(&statement).await.unwrap();
        done.fetch_add(1, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_mid_stream_and_restarted_it_applies_everything_exactly_once() {
    crash_rounds(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_inside_streamed_transactions_it_applies_everything_exactly_once() {
    crash_rounds(Some(4)).await;
}

async fn crash_rounds(stream_after: Option<usize>) {
    let plan = CrashPlan::from_env(5);
    let seed = plan.seed;
    println!("streaming after {stream_after:?}");
    let mut f = Fixture::new().await;
    f.exec(&format!(
        "INSERT INTO bus (id, name, user_id) SELECT i, 'bus ' || i, 'u' || (i % 4)
             FROM generate_series(1, {BUSES}) i;"
    ))
    .await;
    // The store the child uses must not be open here while it runs.
    let dir = f.dir.path().to_owned();
    drop(std::mem::replace(
        &mut f.store,
        Store::open(
            tempfile::tempdir().unwrap().keep(),
            schema(),
            StoreOptions::default(),
        )
        .unwrap(),
    ));
    // The first worker does the setup (slot, initial load).
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let next_id = Arc::new(AtomicU64::new(BUSES as u64 + 1));
    // The first worker sets up: slot, and the initial load of the buses above.
    let child = spawn_worker(&f, stream_after);
    let writers: Vec<_> = (0..4)
        .map(|i| {
            tokio::spawn(writer(
                f.db.url.clone(),
                seed.wrapping_add(i * 0x9E37_79B9),
                stop.clone(),
                done.clone(),
                next_id.clone(),
            ))
        })
        .collect();
    let mut child = plan
        .kill_rounds(child, || spawn_worker(&f, stream_after), &done)
        .await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    // Let the last worker catch up with everything written, then stop it.
    let target = f.current_wal_lsn().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while f.confirmed_flush_lsn().await < target {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill();

    f.store = Store::open(&dir, schema(), StoreOptions::default()).unwrap();
    let pg = f.pg_buses().await;
    let realm = f.realm_buses();
    assert_eq!(pg.len(), realm.len(), "seed {seed}");
    for (key, value) in &pg {
        assert_eq!(realm.get(key), Some(value), "bus {key:?}, seed {seed}");
    }
    // Every counter only moved forward in every realm's log.
    let snapshot = f.store.snapshot().unwrap();
    let mut sets = 0;
    for info in snapshot.realms().unwrap() {
        let mut last: BTreeMap<PrimaryKey, i64> = BTreeMap::new();
        let changes = f.store.changes(&info.path, 0, usize::MAX).unwrap();
        assert_eq!(changes.len() as u64, info.version, "the log is complete");
        for changeset in changes {
            for instruction in changeset.instructions {
                let (key, counter) = match instruction {
                    Instruction::Create { class, key, values } if class == "Bus" => {
                        match values.get("counter") {
                            Some(Value::Int(c)) => (key, *c),
                            _ => continue,
                        }
                    }
                    Instruction::Set {
                        class,
                        key,
                        property,
                        old,
                        new: Value::Int(c),
                    } if class == "Bus" && property == "counter" => {
                        assert!(
                            matches!(old, Value::Int(o) if o < c),
                            "bus {key} in {}: counter went from {old:?} to {c} (seed {seed})",
                            info.path
                        );
                        sets += 1;
                        (key, c)
                    }
                    _ => continue,
                };
                if let Some(previous) = last.get(&key) {
                    assert!(
                        counter >= *previous,
                        "bus {key} in {}: counter {previous} then {counter} (seed {seed})",
                        info.path
                    );
                }
                last.insert(key, counter);
            }
        }
    }
    assert!(sets > 0);
    println!(
        "{sets} counter changes checked, {} writes",
        done.load(Ordering::Relaxed)
    );
}
