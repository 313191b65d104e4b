//! Remote mode, the reads that were one request per row: rows of a class with a list property
//! moving to another realm or changing their key read their stored objects in batches
//! (`object_many`) instead of one request per row, and the initial load of a class with lists
//! reads no list entries per created object, nor a location per row when the realms already hold
//! the class; afterwards the realms hold what PostgreSQL holds.
//! And the server's `object_many` read itself.

mod remote_support;

use std::sync::atomic::{AtomicU64, Ordering};

use pgrealm_runtime::testing::{PgCluster, TestDb};
use pgrealm_runtime::RealmPath;
use pgrealm_schema::{Object, PrimaryKey, Value};
use remote_support::lists::{apply, assert_lists_match_postgresql};
use remote_support::{
    engine_options, run_engine, setup_engine, setup_engine_as, setup_engine_with, wait_for,
    RemoteServer,
};

/// Routes with lists, and entries each.
const OWNERS: i64 = 2_000;
const ENTRIES: i64 = 3;
/// Past the moves (2,000 rows, 4,000 operations: a delete and a put each) but under the setup
/// and the key changes (over 8,000 operations each): those stream, and read ahead from the
/// open store transaction.
const STREAM_AFTER: usize = 5_000;
/// The admin reads a transaction of 2,000 moved rows (or the load of 2,000 owners) may take: a
/// few per thousand rows, not one or two per row.
const FEW_READS: u64 = 40;

fn counter(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// A database with the transit schema, every table routed by a `user_id` column.
fn transit_db() -> TestDb {
    let db = PgCluster::shared().fresh_database().unwrap();
    PgCluster::shared()
        .batch_execute(&db.name, transit::Schema::DDL)
        .unwrap();
    for table in ["route", "schedule", "bus", "driver"] {
        PgCluster::shared()
            .batch_execute(
                &db.name,
                &format!("ALTER TABLE {table} ADD COLUMN user_id text NOT NULL DEFAULT 'u0'"),
            )
            .unwrap();
    }
    db
}

/// `OWNERS` routes in four realms, `ENTRIES` schedules in each one's list.
fn owners_with_lists() -> String {
    format!(
        "INSERT INTO route (id, name, user_id) \
           SELECT 'r' || i, 'route ' || i, 'u' || (i % 4) FROM generate_series(0, {last}) i;
         INSERT INTO schedule (id, day, departure, user_id) \
           SELECT 's' || j, 'Mon', timestamptz '2026-01-05 06:00Z' + j * interval '1 minute', \
                  'u' || (j % 4) \
           FROM generate_series(0, {last_schedule}) j;
         INSERT INTO route_schedules (oid, idx, target) \
           SELECT 'r' || o, k, 's' || (o * {ENTRIES} + k) \
           FROM generate_series(0, {last}) o, generate_series(0, {last_k}) k",
        last = OWNERS - 1,
        last_schedule = OWNERS * ENTRIES - 1,
        last_k = ENTRIES - 1
    )
}

/// Every route's name in every realm equals PostgreSQL's (the lists are checked apart).
async fn assert_names_match_postgresql(db: &TestDb, server: &RemoteServer, after: &str) {
    let client = db.connect().await.unwrap();
    let mut expected = Vec::new();
    for row in client
        .query("SELECT id, name, user_id FROM route ORDER BY id", &[])
        .await
        .unwrap()
    {
        let (id, name, user): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        expected.push((format!("/{user}/myRealm"), id, name));
    }
    let store = server.store.clone();
    let mut actual = tokio::task::spawn_blocking(move || {
        let snapshot = store.snapshot().unwrap();
        let mut out = Vec::new();
        for info in snapshot.realms().unwrap() {
            let view = snapshot.realm(&info.path).unwrap().unwrap();
            for route in view.objects("Route").unwrap() {
                let (Some(Value::String(id)), Some(Value::String(name))) =
                    (route.get("id"), route.get("name"))
                else {
                    panic!("a route without an id or name: {route:?}");
                };
                out.push((info.path.to_string(), id.clone(), name.clone()));
            }
        }
        out
    })
    .await
    .unwrap();
    actual.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(actual.len(), expected.len(), "after {after}: routes");
    for (a, e) in actual.iter().zip(&expected) {
        assert_eq!(a, e, "after {after}");
    }
}

/// 2,000 routes with lists move to another realm in one transaction, then change their keys
/// (their list rows following) in another that streams: each takes a bounded number of admin
/// reads — the stored objects are read in batches, where each moved route read its own (about
/// 4,000 reads before, a realm and an object per row) — and the realms end as PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rows_with_lists_moving_or_changing_keys_read_their_objects_in_batches() {
    let db = transit_db();
    let server = RemoteServer::start();
    let remote = server.connect().await;
    let engine = run_engine(setup_engine(&db, &remote, "/{user_id}/myRealm", STREAM_AFTER).await);
    let reads = || counter(&server.metrics.admin_reads);

    apply(&db, &server, "m0", &owners_with_lists()).await;
    assert_lists_match_postgresql(&db, &server, "the setup").await;

    // Every route moves to the next realm, in one transaction (not streamed).
    let before = reads();
    apply(
        &db,
        &server,
        "m1",
        "UPDATE route SET user_id = 'u' || ((substr(id, 2)::int + 1) % 4), name = 'moved ' || id \
           WHERE id LIKE 'r%'",
    )
    .await;
    let taken = reads() - before;
    println!("{taken} admin reads for {OWNERS} routes with lists moving to another realm");
    assert!(
        taken <= FEW_READS,
        "{taken} admin reads for {OWNERS} moved routes"
    );
    assert_lists_match_postgresql(&db, &server, "the moves").await;
    assert_names_match_postgresql(&db, &server, "the moves").await;

    // Every schedule changes, then every route changes its key, its list rows following (the
    // foreign key is deferred), and half of them move as well: the transaction streams, the
    // key changes reading from the open store transaction.
    let before = reads();
    apply(
        &db,
        &server,
        "m2",
        "UPDATE schedule SET day = 'Tue';
         UPDATE route SET id = 'k' || id, \
             user_id = CASE WHEN substr(id, 2)::int % 2 = 0 THEN 'u3' ELSE user_id END \
           WHERE id LIKE 'r%';
         UPDATE route_schedules SET oid = 'k' || oid WHERE oid LIKE 'r%'",
    )
    .await;
    let taken = reads() - before;
    println!("{taken} admin reads for {OWNERS} routes with lists changing their keys (streamed)");
    assert!(
        taken <= FEW_READS,
        "{taken} admin reads for {OWNERS} key changes"
    );
    // The server counts a stream once its thread ends, a moment after the commit the marker
    // showed.
    let streams = server.metrics.clone();
    wait_for("the setup and the key changes streamed", move || {
        (counter(&streams.admin_streams_committed) >= 2).then_some(())
    })
    .await;
    assert_lists_match_postgresql(&db, &server, "the key changes").await;
    assert_names_match_postgresql(&db, &server, "the key changes").await;

    assert_eq!(counter(&engine.stats.rejections), 0, "every change applies");
    engine.stop().await;
}

/// The initial load of 2,000 routes with 3 list entries each, in remote mode, takes a bounded
/// number of admin reads (2,005 before: a list read per created route), and the realms hold
/// PostgreSQL's routes and lists afterwards — and after changes streamed on top; and so does
/// loading it all again over those realms (8,184 reads before: a location per row; then 186,
/// the routes that changed realm reading their stored objects one at a time).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_initial_load_of_owners_with_lists_reads_in_batches() {
    let db = transit_db();
    PgCluster::shared()
        .batch_execute(&db.name, &owners_with_lists())
        .unwrap();
    let server = RemoteServer::start();
    let remote = server.connect().await;
    let before = counter(&server.metrics.admin_reads);
    let sync = setup_engine_with(&db, &remote, "/{user_id}/myRealm", STREAM_AFTER, true).await;
    let taken = counter(&server.metrics.admin_reads) - before;
    println!(
        "{taken} admin reads for the initial load of {OWNERS} routes × {ENTRIES} list entries"
    );
    assert!(taken <= FEW_READS, "{taken} admin reads for the load");
    assert_lists_match_postgresql(&db, &server, "the load").await;
    assert_names_match_postgresql(&db, &server, "the load").await;

    let engine = run_engine(sync);
    apply(
        &db,
        &server,
        "m1",
        "DELETE FROM route_schedules WHERE idx = 1 AND substr(oid, 2)::int < 100;
         UPDATE route SET user_id = 'u2' WHERE substr(id, 2)::int BETWEEN 100 AND 199",
    )
    .await;
    assert_lists_match_postgresql(&db, &server, "changes after the load").await;
    assert_names_match_postgresql(&db, &server, "changes after the load").await;
    assert_eq!(counter(&engine.stats.rejections), 0, "every row applies");
    engine.stop().await;

    // Loading again into realms that already hold the rows (`reset_postgres_replication_slot`
    // with `initialize_realm_from_postgres`) locates them a batch at a time, where every row
    // of every class table took a read before, and reads the stored objects of the rows that
    // moved realm with each batch. First, changes while no engine runs, for the second load to
    // find.
    PgCluster::shared()
        .batch_execute(
            &db.name,
            "UPDATE route SET name = 'renamed' WHERE substr(id, 2)::int < 500;
             UPDATE route SET user_id = 'u3' WHERE substr(id, 2)::int BETWEEN 500 AND 599",
        )
        .unwrap();

    let mut options = engine_options(&db, "/{user_id}/myRealm", STREAM_AFTER);
    options.initialize_realm_from_postgres = true;
    options.reset_postgres_replication_slot = true;
    let before = counter(&server.metrics.admin_reads);
    setup_engine_as(&db, &remote, options).await;
    let taken = counter(&server.metrics.admin_reads) - before;
    println!("{taken} admin reads to load {OWNERS} routes again");
    // 8,184 before (a location per row of every class table); 186 with locations in batches,
    // 150 of them the stored objects (and realms) of the 75 routes that changed realm between
    // the loads, read one at a time; 37 measured once those are read with each batch (one
    // `object_many`); 22 once whether a class is held is one `holds_any` per class, where it
    // was a realm read and a count per realm.
    assert!(taken <= 30, "{taken} admin reads for the second load");
    assert_lists_match_postgresql(&db, &server, "the second load").await;
    assert_names_match_postgresql(&db, &server, "the second load").await;
}

/// `holds_any` says whether any realm holds an object of a class, in one read, as the embedded
/// store does: before any object, with one, after its delete; an unknown class is an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_any_says_whether_a_class_has_objects_in_one_read() {
    let server = RemoteServer::start();
    let remote = server.connect().await;
    let reads = || counter(&server.metrics.admin_reads);
    let held = |class: &'static str| {
        let (r, local) = (remote.clone(), server.store.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                let remotely = r.snapshot().unwrap().holds_any(class).unwrap();
                let locally = local.snapshot().unwrap().holds_any(class).unwrap();
                assert_eq!(
                    remotely, locally,
                    "{class}: the embedded store answers the same"
                );
                remotely
            })
            .await
            .unwrap()
        }
    };
    let commit = |tx: pgrealm_runtime::WriteTx| async move {
        tokio::task::spawn_blocking(move || tx.commit())
            .await
            .unwrap()
            .unwrap()
    };
    assert!(!held("Route").await, "no object yet");
    let a = RealmPath::parse("/a").unwrap();
    let mut tx = server.store.begin_write("app");
    tx.put_object(
        &a,
        Object::new("Route")
            .with("id", Value::String("r1".into()))
            .with("name", Value::String("one".into())),
    )
    .unwrap();
    commit(tx).await;
    let before = reads();
    assert!(held("Route").await);
    assert_eq!(reads() - before, 1, "one request");
    assert!(!held("Bus").await, "another class");
    let mut tx = server.store.begin_write("app");
    tx.delete_object(&a, "Route", PrimaryKey::String("r1".into()))
        .unwrap();
    commit(tx).await;
    assert!(!held("Route").await, "its only object deleted");
    let r = remote.clone();
    let unknown = tokio::task::spawn_blocking(move || r.snapshot().unwrap().holds_any("Nope"))
        .await
        .unwrap();
    assert!(unknown.is_err(), "{unknown:?}");
}

/// `object_many` answers each object in order (null for one its realm does not hold, or an
/// unknown realm) in one read, in a stream as of its own batches too; more objects than one
/// request takes go in several; too many in one request, or one that does not fit, are refused
/// saying what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_many_answers_each_object_in_order_in_one_read_and_bounds_its_objects() {
    let server = RemoteServer::start();
    let admin = server.keys.admin_token().to_owned();
    let a = RealmPath::parse("/a").unwrap();
    let b = RealmPath::parse("/b").unwrap();
    let route = |id: &str, name: &str| {
        Object::new("Route")
            .with("id", Value::String(id.into()))
            .with("name", Value::String(name.into()))
    };
    let mut tx = server.store.begin_write("app");
    tx.put_object(&a, route("r1", "one")).unwrap();
    tx.put_object(&b, route("r2", "two")).unwrap();
    tokio::task::spawn_blocking(move || tx.commit())
        .await
        .unwrap()
        .unwrap();
    let reads = || counter(&server.metrics.admin_reads);
    let remote = server.connect().await;
    let key = |id: &str| PrimaryKey::String(id.into());
    let asked = vec![
        (a.clone(), "Route".to_owned(), key("r1")),
        (a.clone(), "Route".to_owned(), key("r2")),
        (
            RealmPath::parse("/none").unwrap(),
            "Route".to_owned(),
            key("r1"),
        ),
        (b.clone(), "Route".to_owned(), key("r2")),
        (a.clone(), "Route".to_owned(), key("r1")),
    ];

    let before = reads();
    let (r, local, objects) = (remote.clone(), server.store.clone(), asked.clone());
    let (found, found_locally, empty) = tokio::task::spawn_blocking(move || {
        let found = r.snapshot().unwrap().object_many(&objects).unwrap();
        let found_locally = local.snapshot().unwrap().object_many(&objects).unwrap();
        let empty = r.snapshot().unwrap().object_many(&[]).unwrap();
        (found, found_locally, empty)
    })
    .await
    .unwrap();
    assert_eq!(reads() - before, 1, "one request, none for no objects");
    let names: Vec<Option<Value>> = found
        .iter()
        .map(|o| o.as_ref().map(|o| o.get("name").unwrap().clone()))
        .collect();
    assert_eq!(
        names,
        vec![
            Some(Value::String("one".into())),
            None,
            None,
            Some(Value::String("two".into())),
            Some(Value::String("one".into())),
        ],
        "present, absent, unknown realm, repeated"
    );
    assert_eq!(found, found_locally, "the embedded store answers the same");
    assert!(empty.is_empty());

    // More objects than one request takes: several requests, answers in order.
    let many: Vec<_> = (0..25_000)
        .map(|i| (a.clone(), "Route".to_owned(), key(&format!("r{i}"))))
        .collect();
    let before = reads();
    let r = remote.clone();
    let found =
        tokio::task::spawn_blocking(move || r.snapshot().unwrap().object_many(&many).unwrap())
            .await
            .unwrap();
    assert_eq!(
        reads() - before,
        3,
        "25,000 objects in 3 requests of at most 10,000"
    );
    assert_eq!(found.len(), 25_000);
    assert!(found[1].is_some() && found[0].is_none() && found[2].is_none());

    // A stream answers as of its own batches.
    let (r, objects) = (remote.clone(), asked.clone());
    let (in_stream, outside) = tokio::task::spawn_blocking(move || {
        let mut batch = r.begin_write("postgres");
        batch.put_object(&a, route("r2", "streamed")).unwrap();
        let stream = r
            .begin_streaming("postgres")
            .unwrap()
            .apply(&mut batch)
            .unwrap();
        let found = stream.object_many(&objects[..2]).unwrap();
        drop(stream);
        let outside = r.snapshot().unwrap().object_many(&objects[1..2]).unwrap();
        (found, outside)
    })
    .await
    .unwrap();
    let name = |o: &Option<_>| {
        o.as_ref()
            .map(|v: &std::collections::BTreeMap<String, Value>| v["name"].clone())
    };
    assert_eq!(
        in_stream.iter().map(name).collect::<Vec<_>>(),
        vec![
            Some(Value::String("one".into())),
            Some(Value::String("streamed".into()))
        ]
    );
    assert_eq!(outside, vec![None], "an aborted stream left nothing");

    // Raw requests: the answer's form, too many objects, one that does not fit.
    let read = |body: String| {
        let server = &server;
        let admin = admin.clone();
        async move {
            server
                .raw("POST", "/v1/admin/read", Some(&admin), "", &body)
                .await
        }
    };
    let (status, text) = read(
        r#"{"object_many":{"objects":[{"path":"/b","class":"Route","key":"r2"},{"path":"/b","class":"Route","key":"r1"}]}}"#
            .into(),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains(r#""objects":[{"#) && text.contains(r#""two""#) && text.ends_with("null]}"),
        "{text}"
    );
    let too_many = (0..10_001)
        .map(|i| format!(r#"{{"path":"/a","class":"Route","key":"r{i}"}}"#))
        .collect::<Vec<_>>()
        .join(",");
    let body = format!(r#"{{"object_many":{{"objects":[{too_many}]}}}}"#);
    let (status, text) = read(body.clone()).await;
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("at most 10000 objects")
            && text.contains("10001")
            && text.contains("several"),
        "{text}"
    );
    for (bad, says) in [
        (r#"{"path":"/a","class":"Route","key":7}"#, "objects[1]"),
        (r#"{"path":"a","class":"Route","key":"r1"}"#, "objects[1]"),
        (
            r#"{"path":"/a","class":"Nope","key":"r1"}"#,
            "no class `Nope`",
        ),
    ] {
        let (status, text) = read(format!(
            r#"{{"object_many":{{"objects":[{{"path":"/a","class":"Route","key":"r1"}},{bad}]}}}}"#
        ))
        .await;
        assert_eq!(status, 400, "{bad}: {text}");
        assert!(text.contains(says), "{bad}: {text}");
    }
    // The same in a stream's reads, which stays open after a refused read.
    let id = server.open_stream().await;
    let target = format!("/v1/admin/streams/{id}/read");
    let (status, text) = server.raw("POST", &target, Some(&admin), "", &body).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("at most 10000 objects"), "{text}");
    let body = r#"{"object_many":{"objects":[{"path":"/a","class":"Route","key":"r2"},{"path":"/a","class":"Route","key":"r1"}]}}"#;
    let (status, text) = server.raw("POST", &target, Some(&admin), "", body).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains(r#""objects":[null,{"#), "{text}");
    let (status, text) = server.abort_stream(&id).await;
    assert_eq!(status, 200, "{text}");
}
