//! The initial load (`initialize_realm_from_postgres`) and `reset_postgres_replication_slot`
//! against a real PostgreSQL 15: a consistent copy under concurrent writes (no row missed or
//! doubled between copy and stream), lists loaded in idx order, and a reset that starts over.

mod pg2realm_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use pg2realm_support::*;
use pgrealm_runtime::sync::pg_to_realm::{stored_checkpoint, PgToRealm};
use pgrealm_runtime::sync::rejections::{self, Direction};
use pgrealm_runtime::Instruction;
use pgrealm_schema::{PrimaryKey, Value};

const ROWS: i64 = 30_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_initial_load_is_consistent_under_concurrent_writes() {
    let mut f = Fixture::new().await;
    f.exec(&format!(
        "INSERT INTO route (id, name, user_id) SELECT 'r' || u, 'route ' || u, 'u' || u
             FROM generate_series(0, 3) u;
         INSERT INTO bus (id, name, seats, route_id, user_id)
             SELECT i, 'bus ' || i, i % 100, 'r' || (i % 4), 'u' || (i % 4)
             FROM generate_series(1, {ROWS}) i;
         INSERT INTO route_buses SELECT 'r' || (i % 4), 100 - i, i FROM generate_series(1, 40) i;
         ANALYZE;"
    ))
    .await;
    // Writers keep changing rows while the load copies them.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let url = f.db.url.clone();
        tokio::spawn(async move {
            let sql = pgrealm_runtime::testing::connect(&url).await.unwrap();
            let mut i = 0i64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let id = (i * 7919) % ROWS + 1;
                sql.batch_execute(&format!(
                    "UPDATE bus SET counter = counter + 1 WHERE id = {id};
                     INSERT INTO bus (id, name, user_id) VALUES ({}, 'new', 'u1');
                     DELETE FROM bus WHERE id = {};",
                    ROWS + i,
                    (i * 104_729) % ROWS + 1
                ))
                .await
                .unwrap();
            }
            i
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut options = f.options();
    options.initialize_realm_from_postgres = true;
    let started = std::time::Instant::now();
    let running = f.start(options).await;
    let elapsed = started.elapsed();
    let load = running.setup.load.expect("the load ran");
    assert!(load.rows >= ROWS as u64, "{load:?}");
    assert_eq!(load.rejections, 0);
    // The report times its two phases, both within the whole setup.
    assert!(
        !load.copied_in.is_zero()
            && !load.committed_in.is_zero()
            && load.copied_in + load.committed_in <= elapsed,
        "{load:?}, setup took {elapsed:?}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let writes = writer.await.unwrap();
    assert!(
        writes > 10,
        "the writer ran during the load ({writes} rounds)"
    );
    f.sync_point().await;
    let pg = f.pg_buses().await;
    let realm = f.realm_buses();
    assert_eq!(pg.len(), realm.len());
    assert!(pg == realm, "realms differ from PostgreSQL");
    // Lists were loaded in idx order (idx descends as the target ascends).
    match f.object("/u1/transit", "Route", "r1").unwrap().get("buses") {
        Some(Value::List(items)) => {
            let expected: Vec<Value> = (1..=40)
                .rev()
                .filter(|i| i % 4 == 1)
                .map(|i| Value::Link(PrimaryKey::Int(i)))
                .collect();
            assert_eq!(*items, expected);
        }
        other => panic!("{other:?}"),
    }
    running.stop().await;
}

#[tokio::test]
async fn reset_drops_the_slot_and_the_checkpoint_and_starts_over() {
    let mut f = Fixture::new().await;
    let running = f.start(f.options()).await;
    f.exec("INSERT INTO bus (id, name, user_id) VALUES (1, 'a', 'alice')")
        .await;
    f.sync_point().await;
    running.stop().await;
    let before = stored_checkpoint(&f.store, &f.slot).unwrap().unwrap();

    // Written while stopped; a reset without a load skips it (the new slot starts now)…
    f.exec("INSERT INTO bus (id, name, user_id) VALUES (2, 'b', 'alice')")
        .await;
    let mut options = f.options();
    options.reset_postgres_replication_slot = true;
    let running = f.start(options.clone()).await;
    assert!(running.setup.checkpoint > before);
    assert!(running.setup.load.is_none());
    f.exec("INSERT INTO bus (id, name, user_id) VALUES (3, 'c', 'alice')")
        .await;
    f.sync_point().await;
    assert!(
        f.object("/alice/transit", "Bus", 2).is_none(),
        "skipped by the reset"
    );
    assert!(f.object("/alice/transit", "Bus", 3).is_some());
    running.stop().await;

    // …and a reset with the load brings everything in again.
    options.initialize_realm_from_postgres = true;
    let running = f.start(options).await;
    let load = running.setup.load.expect("loaded again");
    let pg_rows: i64 = f
        .sql
        .query_one(
            "SELECT (SELECT count(*) FROM bus) + (SELECT count(*) FROM route) \
                    + (SELECT count(*) FROM route_buses)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(load.rows, pg_rows as u64, "{load:?}");
    f.sync_point().await;
    assert!(f.object("/alice/transit", "Bus", 2).is_some(), "loaded");
    assert_eq!(f.realm_buses(), f.pg_buses().await);
    running.stop().await;
}

/// Rows the load cannot apply are rejected as the stream rejects them, each with its reason
/// and raw values, and the rows around them load (in a fresh class, rows go in as records
/// built straight from their columns; a row that does not make one is applied, or rejected,
/// the general way).
#[tokio::test]
async fn the_initial_load_rejects_the_rows_it_cannot_apply_and_loads_the_rest() {
    let f = Fixture::new().await;
    let cases = [
        // (key, values, what the reason says)
        (1, "(1, 'big', 70000, 'alice', NULL)", "out of range"),
        (2, "(2, NULL, 1, 'alice', NULL)", "required"),
        (3, "(3, 'dots', 1, '..', NULL)", "realm path"),
        (4, "(4, 'nan', 1, 'alice', 'abc')", "not an integer"),
    ];
    f.exec(
        "INSERT INTO bus (id, name, seats, user_id, level)
             SELECT i, 'bus ' || i, i % 100, 'u' || (i % 3), NULL FROM generate_series(10, 1009) i",
    )
    .await;
    for (_, values, _) in &cases {
        f.exec(&format!(
            "INSERT INTO bus (id, name, seats, user_id, level) VALUES {values}"
        ))
        .await;
    }
    let mut options = f.options();
    options.initialize_realm_from_postgres = true;
    let running = f.start(options).await;
    let load = running.setup.load.expect("the load ran");
    assert_eq!(load.rows, 1_004, "{load:?}");
    assert_eq!(load.rejections, cases.len() as u64, "{load:?}");
    let rejected = rejections::recent(&f.store, Direction::PostgresToRealm, 100).unwrap();
    assert_eq!(rejected.len(), cases.len(), "{rejected:#?}");
    for (key, _, reason) in &cases {
        assert_bus_rejected(&f, &rejected, *key, reason);
    }
    let buses = f.objects("Bus");
    assert_eq!(buses.len(), 1_000);
    let bus = f.object("/u1/transit", "Bus", 10).expect("bus 10 loaded");
    assert_eq!(bus.get("name"), Some(&text("bus 10")));
    assert_eq!(bus.get("seats"), Some(&Value::Int(10)));
    assert_eq!(bus.get("level"), Some(&Value::Null));
    assert_eq!(bus.get("counter"), Some(&Value::Int(0)));
    running.stop().await;
}

/// A load into the embedded store is one store commit, however many realms it fills and however
/// many chunks it was mapped in: 100,000 rows over 2,000 realms (chunks of 20,000, 20,000, then
/// the other 60,000) leave every realm at version 1, its one changeset creating its 50 buses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_over_many_realms_is_one_store_commit() {
    const BUSES: i64 = 100_000;
    const USERS: i64 = 2_000;
    let f = Fixture::new().await;
    f.exec(&format!(
        "INSERT INTO bus (id, name, seats, user_id)
             SELECT i, 'bus ' || i, i % 100, 'u' || (i % {USERS}) FROM generate_series(1, {BUSES}) i"
    ))
    .await;
    let mut options = f.options();
    options.initialize_realm_from_postgres = true;
    let running = f.start(options).await;
    let load = running.setup.load.expect("the load ran");
    assert_eq!((load.rows, load.rejections), (BUSES as u64, 0), "{load:?}");
    let realms = f.store.snapshot().unwrap().realms().unwrap();
    assert_eq!(realms.len(), USERS as usize);
    let versions: std::collections::BTreeSet<u64> = realms.iter().map(|r| r.version).collect();
    assert_eq!(
        versions,
        [1].into(),
        "versions of the realms after the load"
    );
    let changes = f.store.changes(&path("/u7/transit"), 0, 10).unwrap();
    assert_eq!(changes.len(), 1);
    let creates = changes[0]
        .instructions
        .iter()
        .filter(|i| matches!(i, Instruction::Create { .. }))
        .count();
    assert_eq!(creates, (BUSES / USERS) as usize);
    assert_eq!(f.objects("Bus").len(), BUSES as usize);
    let bus = f
        .object("/u7/transit", "Bus", 4_007)
        .expect("bus 4007 loaded");
    assert_eq!(bus.get("name"), Some(&text("bus 4007")));
    // What a crash right after the load leaves holds all of it: the load's commit is durable
    // in the store's write-ahead log before redb writes its pages (at the next checkpoint).
    let image = tempfile::tempdir().unwrap();
    for name in [pgrealm_runtime::STORE_FILE, pgrealm_runtime::WAL_FILE] {
        std::fs::copy(f.dir.path().join(name), image.path().join(name)).unwrap();
    }
    running.stop().await;
    let reopened = pgrealm_runtime::Store::open(
        image.path(),
        f.store.schema().clone(),
        pgrealm_runtime::StoreOptions::default(),
    )
    .unwrap();
    let snapshot = reopened.snapshot().unwrap();
    assert_eq!(snapshot.realms().unwrap().len(), USERS as usize);
    let view = snapshot.realm(&path("/u7/transit")).unwrap().unwrap();
    assert_eq!(view.objects("Bus").unwrap().len(), (BUSES / USERS) as usize);
    assert!(stored_checkpoint(&reopened, &f.slot).unwrap().is_some());
}

/// A list subtable of more rows than a chunk loads whole (the group applies them to the load's
/// transaction itself, batch by batch), and the route refused for its realm path is counted
/// once, as the one rejection kept; its list rows have no owner to go to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_longer_than_a_chunk_loads_whole() {
    const ENTRIES: i64 = 45_000;
    let f = Fixture::new().await;
    f.exec(&format!(
        "INSERT INTO route (id, name, user_id) VALUES ('r1', 'one', 'u1'), ('bad', 'bad', '..');
         INSERT INTO bus (id, name, user_id) SELECT i, 'bus ' || i, 'u1' FROM generate_series(1, 10) i;
         INSERT INTO route_buses SELECT 'r1', i, 1 + i % 10 FROM generate_series(1, {ENTRIES}) i;
         INSERT INTO route_buses SELECT 'bad', i, 1 + i % 10 FROM generate_series(1, 3) i;"
    ))
    .await;
    let mut options = f.options();
    options.initialize_realm_from_postgres = true;
    let running = f.start(options).await;
    let load = running.setup.load.expect("the load ran");
    let rejected = rejections::recent(&f.store, Direction::PostgresToRealm, 100).unwrap();
    assert_eq!((load.rejections, rejected.len()), (1, 1), "{rejected:#?}");
    assert_eq!(load.rows, 2 + 10 + ENTRIES as u64 + 3, "{load:?}");
    match f.object("/u1/transit", "Route", "r1").unwrap().get("buses") {
        Some(Value::List(items)) => {
            // In idx order: entry i links bus 1 + i % 10.
            assert_eq!(items.len(), ENTRIES as usize);
            assert_eq!(items[0], Value::Link(PrimaryKey::Int(2)));
            assert_eq!(items[ENTRIES as usize - 1], Value::Link(PrimaryKey::Int(1)));
        }
        other => panic!("{other:?}"),
    }
    running.stop().await;
}

/// A load again over realms that hold an earlier checkpoint (here the slot was dropped behind
/// the engine's back), cut short after it created its new slot: the next start loads again,
/// rather than streaming from the new slot as if from the old checkpoint, which would lose
/// what was written between the two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_again_cut_short_is_done_again_at_the_next_start() {
    let mut f = Fixture::new().await;
    let mut options = f.options();
    options.initialize_realm_from_postgres = true;
    f.exec("INSERT INTO bus (id, name, user_id) VALUES (1, 'a', 'alice')")
        .await;
    let running = f.start(options.clone()).await;
    assert!(running.setup.load.is_some());
    running.stop().await;

    // Written while the engine was stopped, and its slot dropped: only a load brings it in.
    f.exec("INSERT INTO bus (id, name, user_id) VALUES (2, 'b', 'alice')")
        .await;
    f.exec(&format!("SELECT pg_drop_replication_slot('{}')", f.slot))
        .await;
    // The load stops at the list subtable (copied last), locked by another session, and is
    // cut short there: its new slot exists by then.
    let locker = pgrealm_runtime::testing::connect(&f.db.url).await.unwrap();
    locker
        .batch_execute("BEGIN; LOCK TABLE route_buses IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let sync = PgToRealm::new(
        f.pg.clone(),
        options.clone(),
        f.store.clone(),
        Arc::new(pgrealm_runtime::metrics::Metrics::default()),
    );
    let cut = tokio::time::timeout(std::time::Duration::from_secs(3), sync.setup()).await;
    assert!(cut.is_err(), "the load waited for the lock");
    drop(sync);
    let slots: i64 = f
        .sql
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            &[&f.slot],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 1, "the cut load had created its slot");
    assert_eq!(stored_checkpoint(&f.store, &f.slot).unwrap(), None);
    locker.batch_execute("ROLLBACK").await.unwrap();
    // Its replication connection is closed; PostgreSQL lets the slot go when it sees that.
    for _ in 0..100 {
        let active: bool = f
            .sql
            .query_one(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&f.slot],
            )
            .await
            .unwrap()
            .get(0);
        if !active {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    let running = f.start(options).await;
    assert!(running.setup.load.is_some(), "loaded again");
    f.sync_point().await;
    assert!(f.object("/alice/transit", "Bus", 2).is_some());
    assert_eq!(f.realm_buses(), f.pg_buses().await);
    running.stop().await;
}
