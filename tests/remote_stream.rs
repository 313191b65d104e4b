//! Remote mode with PostgreSQL transactions too large to hold in memory: the engine streams them
//! into a stream the object server holds open (`/v1/admin/streams`), committed once, atomically,
//! with the LSN checkpoint; and the server's rules for streams — one at a time, a silent one
//! aborted after its idle timeout, a bad batch aborting all of it — on the real PostgreSQL of
//! the test harness.

mod remote_support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pgrealm_runtime::replication::Lsn;
use pgrealm_runtime::server::ServerOptions;
use pgrealm_runtime::sync::pg_to_realm::checkpoint_key;
use pgrealm_runtime::testing::{PgCluster, TestDb};
use pgrealm_runtime::{RealmPath, Store, StoreError};
use pgrealm_schema::{Object, PrimaryKey, Value};
use remote_support::{run_engine, setup_engine, wait_for, Engine, RemoteServer};

/// Rows of the large transaction: 20 batches of [`STREAM_AFTER`].
const ROWS: i64 = 20_000;
const STREAM_AFTER: usize = 1_000;

fn realm() -> RealmPath {
    RealmPath::parse("/myRealm").unwrap()
}

fn bus(id: i64) -> Object {
    Object::new("Bus")
        .with("id", Value::Int(id))
        .with("name", Value::String(format!("bus {id}")))
}

fn counter(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// The server's counters of streamed writes: (batches, committed, aborted).
fn streams(server: &RemoteServer) -> (u64, u64, u64) {
    let m = &server.metrics;
    (
        counter(&m.admin_stream_batches),
        counter(&m.admin_streams_committed),
        counter(&m.admin_streams_aborted),
    )
}

async fn start_engine(db: &TestDb, remote: &Store) -> Engine {
    run_engine(setup_engine(db, remote, "/myRealm", STREAM_AFTER).await)
}

fn checkpoint(server: &RemoteServer, db: &TestDb) -> Option<Vec<u8>> {
    let slot = format!("stream_{}", db.name).to_lowercase();
    server.store.metadata(&checkpoint_key(&slot)).unwrap()
}

fn version(server: &RemoteServer) -> u64 {
    server
        .store
        .realm(&realm())
        .unwrap()
        .map_or(0, |v| v.version())
}

/// Wait until the server's realm holds bus `id`.
async fn wait_for_bus(server: &RemoteServer, id: i64, what: &str) {
    let probe = server.store.clone();
    wait_for(what, move || {
        let view = probe.realm(&realm()).unwrap()?;
        view.object("Bus", &PrimaryKey::Int(id)).unwrap()
    })
    .await;
}

fn buses(server: &RemoteServer) -> usize {
    server
        .store
        .realm(&realm())
        .unwrap()
        .map_or(0, |v| v.count("Bus").unwrap())
}

async fn current_wal_lsn(db: &TestDb) -> String {
    let client = db.connect().await.unwrap();
    client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0)
}

const BIG_INSERT: &str =
    "INSERT INTO bus (id, name) SELECT i, 'bus ' || i FROM generate_series(1, 20000) i";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_large_transaction_streams_into_the_remote_server_as_one_version_with_its_checkpoint() {
    let db = PgCluster::shared().fresh_database().unwrap();
    PgCluster::shared()
        .batch_execute(&db.name, transit::Schema::DDL)
        .unwrap();
    let server = RemoteServer::start();
    let remote = server.connect().await;
    let engine = start_engine(&db, &remote).await;

    // A small transaction first: an ordinary commit.
    PgCluster::shared()
        .batch_execute(
            &db.name,
            "INSERT INTO route (id, name) VALUES ('r1', 'Loop')",
        )
        .unwrap();
    let store = server.store.clone();
    wait_for("route r1", move || {
        store
            .realm(&realm())
            .unwrap()
            .filter(|v| v.version() == 1)
            .map(|_| ())
    })
    .await;
    assert_eq!(
        streams(&server),
        (0, 0, 0),
        "a small transaction does not stream"
    );

    let before_lsn = pgrealm_runtime::replication::Lsn::parse(&current_wal_lsn(&db).await)
        .unwrap()
        .as_u64();
    let reads_before = counter(&server.metrics.admin_reads);
    PgCluster::shared()
        .batch_execute(&db.name, BIG_INSERT)
        .unwrap();
    let end = current_wal_lsn(&db).await;
    let stats = engine.stats.clone();
    let deadline = Instant::now() + Duration::from_secs(300);
    while counter(&stats.streamed_commits) < 1 {
        assert!(
            Instant::now() < deadline,
            "the large transaction never committed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Where each row lives was asked in batches, not one read per row.
    let reads = counter(&server.metrics.admin_reads) - reads_before;
    println!("{reads} admin reads for {ROWS} rows");
    assert!(
        reads < ROWS as u64 / 100,
        "{reads} admin reads for {ROWS} rows"
    );
    // It arrived through a stream the server held open, in batches, committed once.
    let (batches, committed, aborted) = streams(&server);
    assert_eq!((committed, aborted), (1, 0));
    assert!(
        batches >= ROWS as u64 / STREAM_AFTER as u64,
        "{batches} batches for {ROWS} rows"
    );
    // One new version holding every row, and the checkpoint written by that same commit.
    assert_eq!(version(&server), 2);
    assert_eq!(buses(&server), ROWS as usize);
    let changes = server.store.changes(&realm(), 1, 10).unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].origin, "postgres");
    let creates = changes[0]
        .instructions
        .iter()
        .filter(
            |i| matches!(i, pgrealm_runtime::Instruction::Create { class, .. } if class == "Bus"),
        )
        .count();
    assert_eq!(creates, ROWS as usize);
    let lsn = String::from_utf8(checkpoint(&server, &db).unwrap()).unwrap();
    let parse = |t: &str| {
        pgrealm_runtime::replication::Lsn::parse(t)
            .unwrap()
            .as_u64()
    };
    assert!(
        parse(&lsn) > before_lsn && parse(&lsn) <= parse(&end),
        "checkpoint {lsn}: not the large transaction's (it ends by {end})"
    );

    // The stream goes on normally after it.
    PgCluster::shared()
        .batch_execute(&db.name, "UPDATE bus SET name = 'later' WHERE id = 7")
        .unwrap();
    let store = server.store.clone();
    wait_for("bus 7 renamed", move || {
        let view = store.realm(&realm()).unwrap()?;
        let bus = view.object("Bus", &PrimaryKey::Int(7)).unwrap()?;
        (bus.get("name") == Some(&Value::String("later".into()))).then_some(())
    })
    .await;
    assert_eq!(version(&server), 3);
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_engine_dropped_mid_stream_commits_nothing_and_its_restart_applies_the_transaction_once()
{
    let db = PgCluster::shared().fresh_database().unwrap();
    PgCluster::shared()
        .batch_execute(&db.name, transit::Schema::DDL)
        .unwrap();
    let server = RemoteServer::start_with(ServerOptions {
        stream_idle_timeout: Duration::from_secs(2),
        ..ServerOptions::default()
    });
    let remote = server.connect().await;
    let engine = start_engine(&db, &remote).await;
    let before = checkpoint(&server, &db).expect("setup stores a checkpoint");

    PgCluster::shared()
        .batch_execute(&db.name, BIG_INSERT)
        .unwrap();
    // Mid-stream: batches applied on the server, nothing committed.
    let deadline = Instant::now() + Duration::from_secs(120);
    while streams(&server).0 < 2 {
        assert!(Instant::now() < deadline, "the stream never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    engine.abort().await;
    let (_, committed, _) = streams(&server);
    assert_eq!(
        committed, 0,
        "the engine was stopped too late to test anything"
    );
    // The server lets the stream go (the dropped engine's abort, or at worst its idle timeout)
    // and nothing of it is visible: no realm, the checkpoint as it was.
    let deadline = Instant::now() + Duration::from_secs(10);
    while streams(&server).2 < 1 {
        assert!(Instant::now() < deadline, "the stream was never aborted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(buses(&server), 0);
    assert_eq!(version(&server), 0);
    assert_eq!(checkpoint(&server, &db), Some(before));

    // A new engine applies the whole transaction, once.
    let engine = start_engine(&db, &remote).await;
    let stats = engine.stats.clone();
    let deadline = Instant::now() + Duration::from_secs(300);
    while counter(&stats.streamed_commits) < 1 {
        assert!(
            Instant::now() < deadline,
            "the restarted engine never committed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(version(&server), 1);
    assert_eq!(buses(&server), ROWS as usize);
    assert_eq!(streams(&server).1, 1);
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stream_at_a_time_and_a_silent_one_is_aborted_after_the_idle_timeout() {
    let idle = Duration::from_secs(2);
    let server = RemoteServer::start_with(ServerOptions {
        stream_idle_timeout: idle,
        ..ServerOptions::default()
    });
    let a = server.connect().await;
    let b = server.connect().await;
    let (r, server_store) = (realm(), server.store.clone());
    let metadata_a = b"a".to_vec();
    tokio::task::spawn_blocking(move || {
        // A stream reads its own batches; nothing is visible outside it.
        let mut batch = a.begin_write("postgres");
        for id in 1..=10 {
            batch.put_object(&r, bus(id)).unwrap();
        }
        batch.set_metadata("k", metadata_a.clone());
        let stream = a
            .begin_streaming("postgres")
            .unwrap()
            .apply(&mut batch)
            .unwrap();
        assert_eq!(
            stream.locate("Bus", &PrimaryKey::Int(3)).unwrap(),
            vec![r.clone()]
        );
        assert_eq!(stream.keys("Bus").unwrap().len(), 10);
        let five = stream
            .object(&r, "Bus", &PrimaryKey::Int(5))
            .unwrap()
            .unwrap();
        assert_eq!(five.get("name"), Some(&Value::String("bus 5".into())));
        assert_eq!(
            five.get("route"),
            Some(&Value::Null),
            "every property present"
        );
        assert_eq!(stream.metadata("k").unwrap(), Some(metadata_a));
        assert!(stream
            .object(&r, "Bus", &PrimaryKey::Int(11))
            .unwrap()
            .is_none());
        assert!(server_store.realm(&r).unwrap().is_none());
        assert!(a.locate("Bus", &PrimaryKey::Int(3)).unwrap().is_empty());

        // A second stream is refused while the first holds the write lock, saying why.
        let err = b.begin_streaming("postgres").unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, StoreError::RemoteStream { .. }), "{text}");
        assert!(
            text.contains("only one stream may be open at a time") && text.contains("idle"),
            "{text}"
        );

        // The first one's engine dies: nothing is sent any more (no abort either).
        std::mem::forget(stream);
        let started = Instant::now();
        let opened = loop {
            match b.begin_streaming("postgres") {
                Ok(stream) => break stream,
                Err(StoreError::RemoteStream { .. }) => {
                    assert!(started.elapsed() < idle * 5, "the lock was never released");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert!(
            started.elapsed() >= idle / 2,
            "released after {:?}, before the idle timeout",
            started.elapsed()
        );
        // Nothing of the dead stream: its rows and metadata are gone with it.
        assert!(opened
            .locate("Bus", &PrimaryKey::Int(3))
            .unwrap()
            .is_empty());
        assert_eq!(opened.metadata("k").unwrap(), None);
        let mut batch = b.begin_write("postgres");
        batch.put_object(&r, bus(100)).unwrap();
        batch.set_metadata("k", b"b".to_vec());
        let info = opened.apply(&mut batch).unwrap().commit().unwrap();
        assert_eq!(info.version_of(&r), Some(1));
        assert_eq!(
            server_store
                .realm(&r)
                .unwrap()
                .unwrap()
                .count("Bus")
                .unwrap(),
            1
        );
        assert_eq!(server_store.metadata("k").unwrap(), Some(b"b".to_vec()));
    })
    .await
    .unwrap();
    assert_eq!(streams(&server), (2, 1, 1));
    let text = server.metrics.render();
    assert!(
        text.contains("pgrealm_admin_streams_aborted_total 1"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_stream_of_the_same_owner_replaces_a_dead_one_without_waiting() {
    // The default idle timeout (60 s): a replacement that waited for it would fail the test.
    let server = RemoteServer::start();
    let dead = server.connect().await;
    let restarted = server.connect().await;
    let (r, server_store) = (realm(), server.store.clone());
    tokio::task::spawn_blocking(move || {
        let mut batch = dead.begin_write("postgres");
        batch.put_object(&r, bus(1)).unwrap();
        let stream = dead
            .begin_streaming_as("postgres", "slot one")
            .unwrap()
            .apply(&mut batch)
            .unwrap();
        // Its engine dies without a word.
        std::mem::forget(stream);

        // Another owner, or none, is refused as before.
        for owner in [None, Some("slot two")] {
            let err = match owner {
                None => restarted.begin_streaming("postgres"),
                Some(owner) => restarted.begin_streaming_as("postgres", owner),
            }
            .unwrap_err();
            assert!(
                err.to_string()
                    .contains("only one stream may be open at a time"),
                "{err}"
            );
        }

        // The same owner takes its place at once; nothing of the dead stream is left.
        let started = Instant::now();
        let stream = restarted
            .begin_streaming_as("postgres", "slot one")
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(stream
            .locate("Bus", &PrimaryKey::Int(1))
            .unwrap()
            .is_empty());
        let mut batch = restarted.begin_write("postgres");
        batch.put_object(&r, bus(2)).unwrap();
        let info = stream.apply(&mut batch).unwrap().commit().unwrap();
        assert_eq!(info.version_of(&r), Some(1));
        let view = server_store.realm(&r).unwrap().unwrap();
        assert_eq!(view.count("Bus").unwrap(), 1);
        assert!(view.object("Bus", &PrimaryKey::Int(2)).unwrap().is_some());
    })
    .await
    .unwrap();
    assert_eq!(streams(&server), (2, 1, 1), "one replaced, one committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_batch_aborts_the_whole_stream_and_says_so() {
    let server = RemoteServer::start();
    let admin = server.keys.admin_token().to_owned();
    let id = server.open_stream().await;
    let good = r#"{"ops":[{"put":{"realm":"/a","class":"Bus","object":{"id":1,"name":"one"}}}]}"#;
    let (status, text) = server
        .raw(
            "POST",
            &format!("/v1/admin/streams/{id}/ops"),
            Some(&admin),
            "",
            good,
        )
        .await;
    assert_eq!(status, 200, "{text}");
    let bad = r#"{"ops":[{"put":{"realm":"/a","class":"Bus","object":{"id":2,"name":"two"}}},{"put":{"realm":"/a","class":"Bus","object":{"id":"three"}}}]}"#;
    let (status, text) = server
        .raw(
            "POST",
            &format!("/v1/admin/streams/{id}/ops"),
            Some(&admin),
            "",
            bad,
        )
        .await;
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("ops[1]") && text.contains("nothing of it was committed"),
        "{text}"
    );
    // The stream is gone: its commit is refused, and nothing of either batch landed.
    let (status, text) = server
        .raw(
            "POST",
            &format!("/v1/admin/streams/{id}/commit"),
            Some(&admin),
            "",
            "{}",
        )
        .await;
    assert_eq!(status, 404, "{text}");
    assert!(
        text.contains("no_stream") && text.contains("open a new stream"),
        "{text}"
    );
    assert!(server
        .store
        .snapshot()
        .unwrap()
        .realms()
        .unwrap()
        .is_empty());
    assert_eq!(streams(&server), (1, 0, 1));

    // The lock went with it: a new stream opens at once and an abort leaves nothing either.
    let id = server.open_stream().await;
    let (status, text) = server
        .raw(
            "POST",
            &format!("/v1/admin/streams/{id}/ops"),
            Some(&admin),
            "",
            good,
        )
        .await;
    assert_eq!(status, 200, "{text}");
    let (status, text) = server.abort_stream(&id).await;
    assert_eq!(status, 200, "{text}");
    assert!(server
        .store
        .snapshot()
        .unwrap()
        .realms()
        .unwrap()
        .is_empty());
    assert_eq!(streams(&server), (2, 0, 2));
}

/// The window `expect` closes: an engine is killed while its last commit is still on its way
/// into the server (here: queued behind the server's write lock, which the test holds), and its
/// successor reads the checkpoint before that commit lands. Both then hold the same PostgreSQL
/// transaction, both expecting the checkpoint they started from; exactly one of the two commits
/// may land. (The dead engine's commit is built here by hand, as the engine builds it: the
/// transaction's rows, its end LSN as the checkpoint, and the checkpoint it started from as
/// the expectation.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_engines_commit_landing_late_is_not_applied_again_by_its_successor() {
    let db = PgCluster::shared().fresh_database().unwrap();
    PgCluster::shared()
        .batch_execute(&db.name, transit::Schema::DDL)
        .unwrap();
    let server = RemoteServer::start();
    let remote = server.connect().await;
    let slot = format!("stream_{}", db.name).to_lowercase();

    let first = start_engine(&db, &remote).await;
    PgCluster::shared()
        .batch_execute(&db.name, "INSERT INTO bus (id, name) VALUES (1, 'first')")
        .unwrap();
    wait_for_bus(&server, 1, "the first row").await;
    first.stop().await;
    let started_from = checkpoint(&server, &db).expect("a checkpoint after the first row");

    // The transaction the dead engine had in hand, committed in PostgreSQL.
    PgCluster::shared()
        .batch_execute(
            &db.name,
            "BEGIN; UPDATE bus SET name = 'late' WHERE id = 1; \
             INSERT INTO bus (id, name) VALUES (2, 'bus 2'); COMMIT",
        )
        .unwrap();
    let end_lsn = current_wal_lsn(&db).await;

    // The server's write lock, held: every commit waits in the server.
    let server_store = server.store.clone();
    let lock = tokio::task::spawn_blocking(move || server_store.begin_streaming("test").unwrap())
        .await
        .unwrap();
    // The dead engine's commit, sent before its successor starts: it waits for the lock.
    let late = {
        let (remote, key, expected) = (remote.clone(), checkpoint_key(&slot), started_from.clone());
        let end_lsn = end_lsn.clone();
        tokio::task::spawn_blocking(move || {
            let mut tx = remote.begin_write("postgres");
            tx.put_object(&realm(), bus(1).with("name", Value::String("late".into())))
                .unwrap();
            tx.put_object(&realm(), bus(2)).unwrap();
            tx.expect_metadata(key.clone(), Some(expected));
            tx.set_metadata(key, end_lsn.into_bytes());
            tx.commit()
        })
    };
    // The successor starts and reads the checkpoint the late commit has not moved yet.
    let successor = start_engine(&db, &remote).await;
    let stats = successor.stats.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    while counter(&stats.confirmed_lsn) == 0 {
        assert!(Instant::now() < deadline, "the successor never resumed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Let the commits go; then a transaction after them shows the successor went on.
    drop(lock);
    let late = late.await.unwrap();
    PgCluster::shared()
        .batch_execute(&db.name, "INSERT INTO bus (id, name) VALUES (3, 'bus 3')")
        .unwrap();
    wait_for_bus(&server, 3, "the row after the late commit").await;
    // The engine counts a commit's transactions just after it is durable, so the store can show
    // bus 3 a moment before the count does (every earlier commit was counted before bus 3's
    // began). Wait for the count to hold bus 3's transaction, then give that moment time.
    while counter(&stats.transactions) == 0 {
        assert!(
            Instant::now() < deadline,
            "bus 3's transaction never counted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Exactly one of the two commits holding the transaction landed; the other was refused.
    let successor_applied_it = counter(&stats.transactions) - 1;
    match &late {
        Ok(_) => {
            assert_eq!(successor_applied_it, 0, "applied twice");
            assert!(
                counter(&stats.reconnects) >= 1,
                "the successor's refused commit makes it resume from the new checkpoint"
            );
        }
        Err(StoreError::MetadataChanged { .. }) => assert_eq!(successor_applied_it, 1),
        Err(e) => panic!("the late commit failed otherwise: {e}"),
    }
    let view = server.store.realm(&realm()).unwrap().unwrap();
    assert_eq!(view.count("Bus").unwrap(), 3);
    let renamed = view.object("Bus", &PrimaryKey::Int(1)).unwrap().unwrap();
    assert_eq!(renamed.values["name"], Value::String("late".into()));
    // The checkpoint is the successor's last confirmed position, past the late transaction.
    let stored = checkpoint(&server, &db).unwrap();
    let stored = Lsn::parse(std::str::from_utf8(&stored).unwrap()).unwrap();
    assert_eq!(stored.as_u64(), counter(&stats.confirmed_lsn));
    assert!(stored > Lsn::parse(&end_lsn).unwrap());
    successor.stop().await;
}
/// Buses of the load of small transactions, and how many transactions it has.
const FLEET: i64 = 1_000;
const SMALL_TRANSACTIONS: usize = 600;

/// A xorshift generator: the load is random, and repeatable from its printed seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// One small transaction of the load (number `t`): eight statements over random buses, most
/// of them moving a bus to another user's realm or changing its key. `next_id` is the next
/// unused bus id.
fn small_transaction(rng: &mut Rng, t: usize, next_id: &mut i64) -> String {
    let mut sql = String::from("BEGIN;");
    for _ in 0..8 {
        let id = 1 + rng.below(*next_id as u64 - 1) as i64;
        let user = rng.below(4);
        let mut new_id = || {
            *next_id += 1;
            *next_id - 1
        };
        let statement = match rng.below(10) {
            0..=3 => {
                format!(
                    "UPDATE bus SET user_id = 'u{user}', name = 'moved in {t}' WHERE id = {id};"
                )
            }
            4 | 5 => format!("UPDATE bus SET name = 'renamed in {t}' WHERE id = {id};"),
            6 => format!(
                "INSERT INTO bus (id, name, user_id) VALUES ({}, 'new in {t}', 'u{user}');",
                new_id()
            ),
            7 => format!("DELETE FROM bus WHERE id = {id};"),
            8 => format!("UPDATE bus SET id = {} WHERE id = {id};", new_id()),
            _ => format!(
                "UPDATE bus SET id = {}, user_id = 'u{user}' WHERE id = {id};",
                new_id()
            ),
        };
        sql.push_str(&statement);
    }
    sql.push_str("COMMIT;");
    sql
}

/// Wait until bus `id` is in `/u0/myRealm` (the load's marker: everything before it is applied).
/// `counter` once it has stopped moving for a quarter of a second.
async fn settled(counter: &AtomicU64) -> u64 {
    let mut last = counter.load(Ordering::Relaxed);
    let mut still = 0;
    while still < 10 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        let now = counter.load(Ordering::Relaxed);
        if now == last {
            still += 1;
        } else {
            (last, still) = (now, 0);
        }
    }
    last
}

async fn wait_for_marker(server: &RemoteServer, id: i64) {
    let store = server.store.clone();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let probe = store.clone();
        let found = tokio::task::spawn_blocking(move || {
            probe
                .realm(&RealmPath::parse("/u0/myRealm").unwrap())
                .unwrap()
                .and_then(|view| view.object("Bus", &PrimaryKey::Int(id)).unwrap())
        })
        .await
        .unwrap();
        if found.is_some() {
            return;
        }
        assert!(Instant::now() < deadline, "the load was never applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Assert that the realms hold exactly PostgreSQL's buses, each in the realm of its user.
async fn assert_realms_match_postgresql(db: &TestDb, server: &RemoteServer, seed: u64) {
    let client = db.connect().await.unwrap();
    let mut expected: BTreeMap<String, BTreeMap<i64, String>> = BTreeMap::new();
    for row in client
        .query("SELECT id, name, user_id FROM bus", &[])
        .await
        .unwrap()
    {
        let user: String = row.get(2);
        expected
            .entry(format!("/{user}/myRealm"))
            .or_default()
            .insert(row.get(0), row.get(1));
    }
    let store = server.store.clone();
    let actual = tokio::task::spawn_blocking(move || {
        // What the realms hold of class Bus: realm → id → name (realms holding none left out).
        let snapshot = store.snapshot().unwrap();
        let mut out = BTreeMap::new();
        for info in snapshot.realms().unwrap() {
            let view = snapshot.realm(&info.path).unwrap().unwrap();
            let buses: BTreeMap<i64, String> = view
                .objects("Bus")
                .unwrap()
                .into_iter()
                .map(|bus| match (bus.get("id"), bus.get("name")) {
                    (Some(Value::Int(id)), Some(Value::String(name))) => (*id, name.clone()),
                    other => panic!("a bus without id or name: {other:?}"),
                })
                .collect();
            if !buses.is_empty() {
                out.insert(info.path.to_string(), buses);
            }
        }
        out
    })
    .await
    .unwrap();
    assert_eq!(actual, expected, "PGREALM_LOAD_SEED={seed}");
}

/// Many small PostgreSQL transactions, routed to four realms by a column, moving rows between
/// them, changing keys, inserting and deleting. First as a backlog that arrives faster than the
/// engine applies it (committed before it runs, as after a restart or under a steady load it
/// falls behind on): the remote engine reads where their rows live in batches, far fewer reads
/// than rows. Then live, one transaction at a time, as the engine keeps up: at most about a
/// read per transaction, not per row. Then a TRUNCATE of them all. Each time the realms end as
/// PostgreSQL's rows are.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn small_transactions_moving_rows_between_realms_read_locations_in_batches() {
    let db = PgCluster::shared().fresh_database().unwrap();
    PgCluster::shared()
        .batch_execute(&db.name, transit::Schema::DDL)
        .unwrap();
    PgCluster::shared()
        .batch_execute(
            &db.name,
            "ALTER TABLE bus ADD COLUMN user_id text NOT NULL DEFAULT 'u0'",
        )
        .unwrap();
    let server = RemoteServer::start();
    let remote = server.connect().await;
    let sync = setup_engine(&db, &remote, "/{user_id}/myRealm", STREAM_AFTER).await;

    let seed = std::env::var("PGREALM_LOAD_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("PGREALM_LOAD_SEED={seed}");
    let mut rng = Rng(seed);
    let mut sql = format!(
        "INSERT INTO bus (id, name, user_id) SELECT i, 'bus ' || i, 'u' || (i % 4) \
         FROM generate_series(1, {FLEET}) i;"
    );
    let mut next_id = FLEET + 1;
    for t in 0..SMALL_TRANSACTIONS {
        sql.push_str(&small_transaction(&mut rng, t, &mut next_id));
    }
    // The marker: once it is in its realm, everything before it is too.
    sql.push_str("INSERT INTO bus (id, name, user_id) VALUES (0, 'last', 'u0');");
    PgCluster::shared().batch_execute(&db.name, &sql).unwrap();

    let reads_before = counter(&server.metrics.admin_reads);
    let engine = run_engine(sync);
    wait_for_marker(&server, 0).await;
    let reads = counter(&server.metrics.admin_reads) - reads_before;
    // The server shows the last commit before the engine has heard back and counted it.
    let changes = settled(&engine.stats.changes).await;
    println!("backlog: {reads} admin reads for {changes} changes");
    assert!(
        changes > FLEET as u64 + SMALL_TRANSACTIONS as u64,
        "{changes} changes"
    );
    // A read per row would be thousands. How many events each read-ahead finds received
    // depends on how fast the stream comes in, so a loaded machine takes more reads (up to 79
    // seen for ~5,800 changes): the bound leaves room for that.
    assert!(
        reads < changes / 20,
        "{reads} admin reads for {changes} changes"
    );
    assert_eq!(counter(&engine.stats.rejections), 0, "every change applies");
    assert_realms_match_postgresql(&db, &server, seed).await;

    // Live: one transaction at a time while the engine runs.
    let live = 100;
    let (reads_before, changes_before) = (
        counter(&server.metrics.admin_reads),
        counter(&engine.stats.changes),
    );
    let client = db.connect().await.unwrap();
    for t in 0..live {
        let sql = small_transaction(&mut rng, SMALL_TRANSACTIONS + t, &mut next_id);
        client.batch_execute(&sql).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    client
        .batch_execute("INSERT INTO bus (id, name, user_id) VALUES (-1, 'last', 'u0')")
        .await
        .unwrap();
    wait_for_marker(&server, -1).await;
    let reads = counter(&server.metrics.admin_reads) - reads_before;
    let changes = counter(&engine.stats.changes) - changes_before;
    println!("live: {reads} admin reads for {changes} changes in {live} transactions");
    assert!(
        reads <= 2 * live as u64,
        "{reads} admin reads for {changes} changes in {live} transactions"
    );
    assert_eq!(counter(&engine.stats.rejections), 0, "every change applies");
    assert_realms_match_postgresql(&db, &server, seed).await;

    // A TRUNCATE deletes every bus: their locations are read a chunk at a time, not per row.
    let rows: i64 = client
        .query_one("SELECT count(*) FROM bus", &[])
        .await
        .unwrap()
        .get(0);
    let reads_before = counter(&server.metrics.admin_reads);
    client
        .batch_execute(
            "TRUNCATE bus CASCADE; INSERT INTO bus (id, name, user_id) VALUES (-2, 'last', 'u0')",
        )
        .await
        .unwrap();
    wait_for_marker(&server, -2).await;
    let reads = counter(&server.metrics.admin_reads) - reads_before;
    println!("truncate: {reads} admin reads for {rows} rows");
    // Listing the keys costs two reads per realm and class (bus, and driver by the cascade);
    // their locations one read, and the marker's one or two: a few dozen at most, not a read
    // per row.
    assert!(rows > 1_000, "{rows} rows");
    assert!(
        reads <= 30,
        "{reads} admin reads for a TRUNCATE of {rows} rows"
    );
    assert_realms_match_postgresql(&db, &server, seed).await;
    engine.stop().await;
}

/// An engine killed mid-stream leaves its stream open on the server, holding the write lock
/// until the idle timeout (60 s by default). Its restart releases that stream as it starts
/// (`POST /v1/admin/streams/release` with its owner, the slot), so its ordinary commits do not
/// wait out the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_engine_frees_the_stream_its_dead_predecessor_left_open() {
    let db = PgCluster::shared().fresh_database().unwrap();
    PgCluster::shared()
        .batch_execute(&db.name, transit::Schema::DDL)
        .unwrap();
    let server = RemoteServer::start();
    let remote = server.connect().await;
    start_engine(&db, &remote).await.stop().await;

    // What the dead engine left: an open stream of its owner, with a batch in it.
    let admin = server.keys.admin_token().to_owned();
    let owner = format!("postgres→realm slot stream_{}", db.name).to_lowercase();
    let (status, text) = server
        .raw(
            "POST",
            "/v1/admin/streams",
            Some(&admin),
            "",
            &format!(r#"{{"origin":"postgres","owner":"{owner}"}}"#),
        )
        .await;
    assert_eq!(status, 200, "{text}");
    let id = remote_support::stream_id(&text);
    let (status, text) = server
        .raw(
            "POST",
            &format!("/v1/admin/streams/{id}/ops"),
            Some(&admin),
            "",
            r#"{"ops":[{"put":{"realm":"/myRealm","class":"Bus","object":{"id":99,"name":"ghost"}}}]}"#,
        )
        .await;
    assert_eq!(status, 200, "{text}");

    let engine = start_engine(&db, &remote).await;
    let started = Instant::now();
    PgCluster::shared()
        .batch_execute(&db.name, "INSERT INTO bus (id, name) VALUES (1, 'bus 1')")
        .unwrap();
    wait_for_bus(&server, 1, "the row, long before the idle timeout").await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the commit waited {:?}",
        started.elapsed()
    );
    // Nothing of the dead stream was committed.
    assert_eq!(buses(&server), 1);
    let (_, committed, aborted) = streams(&server);
    assert_eq!((committed, aborted), (0, 1));
    engine.stop().await;
}
